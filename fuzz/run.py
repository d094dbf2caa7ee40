"""Run both atheris harnesses side by side for N seconds each and print their figures.

    .venv/bin/python fuzz/run.py --seconds 180          # what the README quotes
    .venv/bin/python fuzz/run.py --seconds 20 --json    # machine-readable

Seeds: the committed corpora (tests/corpus/*), the fixtures, and the suite's valid seed files.
Crashes (exceptions other than NetinitError) are saved under fuzz/crashes/<target>/ with their
traceback; a libFuzzer timeout (-timeout, a hang) or RSS overrun (-rss_limit_mb) stops that run
and is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import hostile_cases  # noqa: E402

TARGETS = {
    "safetensors": (
        HERE / "fuzz_safetensors.py",
        [ROOT / "tests/corpus/safetensors", ROOT / "fixtures"],
        ".safetensors",
    ),
    "onnx": (HERE / "fuzz_onnx.py", [ROOT / "tests/corpus/onnx", ROOT / "fixtures"], ".onnx"),
}


def seed_corpus(kind: str, folder: Path) -> int:
    _, sources, suffix = TARGETS[kind]
    folder.mkdir(parents=True)
    count = 0
    for source in sources:
        for path in sorted(source.glob(f"*{suffix}")):
            shutil.copy(path, folder / f"{source.name}-{path.name}")
            count += 1
    seed = hostile_cases.st_seed() if kind == "safetensors" else hostile_cases.onnx_seed()
    (folder / f"seed{suffix}").write_bytes(seed)
    return count + 1


def start(kind: str, seconds: int, scratch: Path) -> tuple[subprocess.Popen[str], int]:
    script, _, _ = TARGETS[kind]
    corpus = scratch / kind / "corpus"
    seeds = seed_corpus(kind, corpus)
    crashes = HERE / "crashes" / kind
    shutil.rmtree(crashes, ignore_errors=True)
    args = [
        sys.executable,
        str(script),
        str(corpus),
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
        "-timeout=10",
        f"-artifact_prefix={scratch / kind}/",
        "-close_fd_mask=1",
    ]
    env = {**os.environ, "NETINIT_FUZZ_CRASHES": str(crashes), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=scratch
    )
    return proc, seeds


def figures(kind: str, proc: subprocess.Popen[str], seeds: int) -> dict[str, object]:
    _, stderr = proc.communicate()
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", stderr))
    coverage = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", stderr)
    crashes = sorted(set(re.findall(r"NETINIT-CRASH (.+)", stderr)))
    return {
        "target": kind,
        "seed_inputs": seeds,
        "executions": int(stats.get("number_of_executed_units", 0)),
        "exec_per_sec": int(stats.get("average_exec_per_sec", 0)),
        "coverage_edges": int(coverage[-1][0]) if coverage else 0,
        "features": int(coverage[-1][1]) if coverage else 0,
        "corpus_size": int(coverage[-1][2]) if coverage else 0,
        "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
        "crashes": crashes,
        "hang_or_oom": bool(re.search(r"ERROR: libFuzzer: (timeout|out-of-memory)", stderr)),
        "libfuzzer_exit": proc.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="netinit-fuzz-run-"))
    running = {kind: start(kind, options.seconds, scratch) for kind in TARGETS}
    results = [figures(kind, proc, seeds) for kind, (proc, seeds) in running.items()]
    shutil.rmtree(scratch, ignore_errors=True)
    if options.json:
        print(json.dumps(results, indent=2))
        return
    print(f"atheris, {options.seconds} s per target (2 in parallel), RSS limit 2 GiB, 10 s per input")
    for r in results:
        print(
            f"  {r['target']:<12} {r['executions']:>9,} executions ({r['exec_per_sec']}/s)  "
            f"coverage {r['coverage_edges']} edges / {r['features']} features  corpus {r['seed_inputs']} -> "
            f"{r['corpus_size']}  peak RSS {r['peak_rss_mb']} MB  crashes {len(r['crashes'])}  "
            f"hang/OOM {'yes' if r['hang_or_oom'] else 'no'}"
        )
        for crash in r["crashes"]:  # type: ignore[union-attr]
            print(f"      crash: {crash}  (input and traceback in fuzz/crashes/{r['target']}/)")


if __name__ == "__main__":
    main()
