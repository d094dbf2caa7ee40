"""The cost of LSUV through onnxruntime on a ResNet-sized model, against plain orthogonal init.

Exports a ResNet-18 (11.7 M parameters, BatchNormalization kept, dynamic batch) from torch into
``bench/data/lsuv/`` once, then in the same run:

1. end to end, each in a fresh process (``python -m netinit_cli``, wall time and peak RSS from
   ``os.wait4``): ``--method orthogonal --all`` and ``--method lsuv --all --batch-size N``, with the
   sessions and passes of the LSUV run from its JSON report;
2. the engine alone on the orthogonal output: ORT sessions, passes, passes per rescaled layer,
   session-creation time, pass time and the total (load + find layers + batch + LSUV);
3. with ``--rebuild``, the same LSUV re-creating the session for every pass instead of feeding the
   weights, to show what one session saves.

``make bench`` runs it after ``bench/run.py``.

    python bench/lsuv_bench.py [--batch-size 8] [--image 224] [--threads 1] [--rebuild] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

import netinit_cli
from netinit_cli.lsuv.data import load_batch
from netinit_cli.lsuv.engine import run_lsuv
from netinit_cli.lsuv.layers import find_layers
from netinit_cli.lsuv.options import LsuvOptions
from netinit_cli.model import Action, Role

DATA = Path(__file__).resolve().parent / "data" / "lsuv"
REPO = Path(__file__).resolve().parents[1]


class BasicBlock(torch.nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.downsample: torch.nn.Module | None = None
        if stride != 1 or channels_in != channels:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(channels_in, channels, 1, stride, bias=False), torch.nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(torch.nn.Module):
    """torchvision's resnet18 layout (torchvision is not a dependency)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        widths, blocks, channels = [64, 128, 256, 512], [], 64
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
            channels = width
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.pool(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def exported_model(image: int) -> Path:
    path = DATA / f"resnet18-{image}.onnx"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            ResNet18().eval(),
            (torch.zeros(1, 3, image, image),),
            buffer,
            dynamo=False,
            do_constant_folding=False,  # keep BatchNormalization, as a model saved for training would
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    path.write_bytes(buffer.getvalue())
    return path


def lsuv_once(ortho: Path, weights: set[str], args: argparse.Namespace, feed: bool) -> dict[str, Any]:
    started = time.perf_counter()
    model = onnx.load(ortho)
    layers = find_layers(model, weights)
    batch = load_batch(model, None, batch_size=args.batch_size, seed=0)
    prepared = time.perf_counter()
    run = run_lsuv(model, layers, batch, LsuvOptions(), threads=args.threads, feed_weights=feed)
    finished = time.perf_counter()
    rescaled = run.rescaled
    return {
        "strategy": "feed weights, one session" if feed else "new session per pass",
        "layers": len(layers),
        "rescaled": len(rescaled),
        "corrections": sum(result.iterations for result in rescaled),
        "sessions": run.sessions,
        "passes": run.passes,
        "passes_per_layer": round(run.passes / max(len(rescaled), 1), 3),
        "session_seconds": round(run.session_seconds, 3),
        "pass_seconds": round(run.pass_seconds, 3),
        "seconds_per_pass": round(run.pass_seconds / max(run.passes, 1), 3),
        "prepare_seconds": round(prepared - started, 3),
        "total_seconds": round(finished - started, 3),
        "worst_std_after": max(abs((result.std_after or 0.0) - 1.0) for result in rescaled)
        if rescaled
        else None,
    }


def end_to_end(source: Path, method: str, extra: list[str]) -> dict[str, Any]:
    """``netinit SOURCE --method METHOD --all`` in a fresh process: wall seconds, peak RSS, report."""
    out, report = DATA / f"e2e-{method}.onnx", DATA / f"e2e-{method}.json"
    argv = [sys.executable, "-m", "netinit_cli", str(source), "--method", method, "--all", "-q"]
    argv += ["-f", "-o", str(out), "--report", str(report), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed")
    lsuv = json.loads(report.read_text()).get("lsuv")
    for path in DATA.glob("e2e-*"):
        path.unlink()
    return {
        "method": method,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "lsuv": lsuv,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument(
        "--threads", type=int, default=1, help="ORT intra-op threads (the engine's default is 1)"
    )
    parser.add_argument("--rebuild", action="store_true", help="also time one new session per pass")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    source = exported_model(args.image)
    e2e = [
        end_to_end(source, "orthogonal", []),
        end_to_end(source, "lsuv", ["--batch-size", str(args.batch_size)]),
    ]
    ortho = DATA / f"resnet18-{args.image}.ortho.onnx"
    started = time.perf_counter()
    report = netinit_cli.initialize(source, out=ortho, method="orthogonal", all=True, force=True, fsync=False)
    plain_seconds = time.perf_counter() - started
    weights = {
        name
        for entry in report.entries
        if entry.action == Action.FILL and entry.param.role == Role.WEIGHT
        for name in (entry.param.name, *entry.param.aliases)
    }
    parameters = sum(entry.param.numel for entry in report.entries)
    results = [lsuv_once(ortho, weights, args, feed=True)]
    if args.rebuild:
        results.append(lsuv_once(ortho, weights, args, feed=False))
    summary = {
        "model": f"ResNet-18, {parameters / 1e6:.1f} M parameters, input {args.batch_size}x3x{args.image}x{args.image}",
        "threads": args.threads,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "end_to_end": e2e,
        "plain_orthogonal_seconds": round(plain_seconds, 3),
        "lsuv": results,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    print(f"{summary['model']}, ORT threads {args.threads}")
    for run in e2e:
        cost = run["lsuv"]
        detail = (
            f"; {cost['sessions']} session, {cost['passes']} passes, {cost['rescaled']} layers rescaled"
            if cost
            else ""
        )
        print(
            f"end to end, netinit --method {run['method']} --all: {run['seconds']:.2f} s, "
            f"peak RSS {run['peak_rss_mb']} MB{detail}"
        )
    print(f"plain orthogonal init (netinit --all, write included): {plain_seconds:.2f} s")
    for result in results:
        print(
            f"LSUV [{result['strategy']}]: {result['rescaled']}/{result['layers']} layers rescaled, "
            f"{result['corrections']} corrections, {result['sessions']} sessions, {result['passes']} passes "
            f"({result['passes_per_layer']} per layer); sessions {result['session_seconds']:.2f} s, "
            f"passes {result['pass_seconds']:.2f} s ({result['seconds_per_pass']:.3f} s each), "
            f"total {result['total_seconds']:.2f} s; worst |std - 1| {result['worst_std_after']:.2g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
