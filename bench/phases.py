"""Where netinit's time goes on one benchmark input: a phase breakdown from cProfile plus rusage.

    .venv/bin/python bench/phases.py [--method SPEC] [--quick] [--input onnx|sharded|bundle]

Runs ``python -m cProfile -m netinit_cli MODEL --all …`` in a fresh process and sums the cumulative
time of the functions that mark each phase (matched by name, so a phase whose function was renamed
shows as "–").  Threads other than the main one are not profiled: "generation" is the main thread's
wait for the sampler pool, which is the wall time the pool took.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_data
import run

# phase -> (file name ending, function name) pairs; cumulative times are summed.
PHASES: dict[str, list[tuple[str, str]]] = {
    "imports (all modules)": [("<frozen importlib._bootstrap>", "_find_and_load")],
    "open + classify": [("api.py", "_open")],
    "plan": [("plan.py", "make_plan")],
    "generation (sampler pool)": [
        ("sampling.py", "sample_into"),
        ("matrices.py", "orthogonal_fill"),
        ("fill.py", "generate_into"),  # generation and pwrite together, in the sampler threads
    ],
    "cast to stored dtype": [("dtypes.py", "cast_checked")],
    "statistics for the table": [("fill.py", "observed_stats")],
    "write (os.write/pwrite/file.write)": [("~", "posix.write"), ("~", "posix.pwrite"), ("~", "write")],
    "fsync": [("~", "posix.fsync")],
    "onnx.checker": [("checker.py", "check_model")],
    "report rendering": [("report.py", "render")],
}


def _matches(filename: str, func: str, file_end: str, name: str) -> bool:
    """Python functions match by file and name; C functions (file "~") by a word of their name,
    e.g. "<built-in method posix.write>" or "<method 'write' of '_io.BufferedWriter' objects>"."""
    if file_end != "~":
        return filename.endswith(file_end) and func == name
    return filename == "~" and re.search(rf"[ .']{re.escape(name)}[>' ]", func) is not None


def phase_times(stats: pstats.Stats) -> dict[str, float | None]:
    table = stats.stats  # type: ignore[attr-defined]
    found: dict[str, float | None] = {}
    for phase, keys in PHASES.items():
        total, hit = 0.0, False
        for (filename, _line, func), (_cc, _nc, _tt, cumulative, _callers) in table.items():
            if any(_matches(filename, func, f, name) for f, name in keys):
                total, hit = total + cumulative, True
        found[phase] = total if hit else None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="kaiming(distribution=uniform)")
    parser.add_argument("--input", choices=["bundle", "onnx", "sharded"], default="bundle")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    data = {"bundle": make_data.bundle, "onnx": make_data.onnx_model, "sharded": make_data.sharded}[
        args.input
    ](args.quick)
    out = run.OUT_ROOT / "profile"
    out.mkdir(parents=True, exist_ok=True)
    target = out / data.model.name
    prof = out.parent / "profile.prof"
    argv = [run.PYTHON, "-m", "cProfile", "-o", str(prof), "-m", "netinit_cli", str(data.model), "--all"]
    argv += ["--method", args.method, "-o", str(target), "--force", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=run.REPO, env=run.child_env({}))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for path in out.iterdir():
        path.unlink()
    if proc.returncode:
        raise SystemExit(f"netinit exited {proc.returncode}")
    stats = pstats.Stats(str(prof))
    profiled = stats.total_tt  # type: ignore[attr-defined]
    print(f"netinit --all --method '{args.method}' on {data.key} ({data.total_bytes / 1e9:.2f} GB)")
    print(f"  wall {wall:.2f} s (profiled main thread {profiled:.2f} s), user {usage.ru_utime:.2f} s, ")
    print(
        f"  system {usage.ru_stime:.2f} s, minor faults {usage.ru_minflt:,}, peak RSS {usage.ru_maxrss / 1024:.0f} MiB"
    )
    for phase, seconds in phase_times(stats).items():
        print(f"  {phase:36} {'–' if seconds is None else f'{seconds:6.2f} s'}")


if __name__ == "__main__":
    main()
