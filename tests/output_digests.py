"""Digests of everything netinit writes and plans, over every committed fixture and method.

Recorded once before a restructuring (``--write``) and compared after it (``--check``, and
``tests/test_output_digests.py``): a move that changes one byte of any output, or one role,
layout, fan or reason of any plan, fails here.  Orthogonal values come from the BLAS that NumPy
ships, so they are recorded too but only compared with ``--with-orthogonal`` (same machine).

    .venv/bin/python tests/output_digests.py --write     # record tests/golden/output_digests.json
    .venv/bin/python tests/output_digests.py --check     # compare
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "output_digests.json"

METHODS = (
    "kaiming",
    "kaiming(distribution=uniform)",
    "xavier(distribution=truncated_normal)",
    "random(weights=normal(0,0.02), biases=0.01)",
    "identity",
    "orthogonal",
    "lsuv",
)
# Orthogonal values come from NumPy's BLAS; LSUV's scales also from onnxruntime's kernels.
BLAS_DEPENDENT = ("orthogonal", "lsuv")
# Fields of a plan entry that depend only on classification and planning.
PLAN_KEYS = ("name", "aliases", "role", "reason", "source", "shape", "dtype", "layout", "has_data")
PLAN_KEYS += ("fan_in", "fan_out", "action", "why", "init", "rule", "expected_mean", "expected_std")


def fixtures() -> list[Path]:
    found = sorted((ROOT / "fixtures").glob("*.onnx")) + sorted((ROOT / "fixtures").glob("*.safetensors"))
    found += sorted((ROOT / "fixtures" / "onnx").glob("*.onnx"))
    found += sorted(path for path in (ROOT / "fixtures" / "families").iterdir() if path.is_dir())
    return found


def _hash_files(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def _plan_digest(report_json: dict[str, object]) -> str:
    tensors = report_json["tensors"]
    assert isinstance(tensors, list)
    kept = [{key: entry.get(key) for key in PLAN_KEYS} for entry in tensors]
    text = json.dumps({"tensors": kept, "notes": report_json["notes"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def record(methods: tuple[str, ...]) -> dict[str, dict[str, object]]:
    from netinit_cli import initialize, inspect

    results: dict[str, dict[str, object]] = {}
    for fixture in fixtures():
        key = str(fixture.relative_to(ROOT))
        entry: dict[str, object] = {"plan": _plan_digest(inspect(fixture, all=True).to_json())}
        for method in methods:
            with tempfile.TemporaryDirectory() as tmp:
                out_dir = Path(tmp) / "out"
                out_dir.mkdir()
                if fixture.is_dir():
                    out = out_dir / "model.safetensors.index.json"
                    if not (fixture / "model.safetensors.index.json").exists():
                        out = out_dir / "model.safetensors"
                else:
                    out = out_dir / fixture.name
                try:
                    initialize(fixture, out=out, method=method, all=True, seed=7)
                except Exception as exc:  # an error is part of the behaviour too
                    entry[method] = f"error: {type(exc).__name__}: {exc}".replace(tmp, "<tmp>")
                    continue
                entry[method] = _hash_files(out_dir)
        results[key] = entry
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--with-orthogonal", action="store_true")
    args = parser.parse_args()
    if args.write:
        GOLDEN.write_text(json.dumps(record(METHODS), indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
        return 0
    methods = METHODS if args.with_orthogonal else tuple(m for m in METHODS if m not in BLAS_DEPENDENT)
    expected = json.loads(GOLDEN.read_text())
    actual = record(methods)
    bad = [
        f"{fixture} {what}"
        for fixture, entry in actual.items()
        for what, value in entry.items()
        if expected.get(fixture, {}).get(what) != value
    ]
    print("\n".join(bad) or f"all {sum(len(e) for e in actual.values())} digests equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
