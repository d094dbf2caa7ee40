"""The hostile-input figures for the README, measured: every case of the suite (malformed
models; hostile option values, config files, seeds and tensor names) plus seeded random
mutations, each run through the real CLI in a worker under RLIMIT_AS = 2 GiB with a per-case
time limit.

    .venv/bin/python fuzz/summary.py                    # suite cases + 1000 mutations per format
    .venv/bin/python fuzz/summary.py --mutations 0      # only the suite's cases

A "traceback" is exit 1 (internal error) or any traceback text on stderr; a "hang" is a case
over the time limit or a worker that stopped answering; a "partial output" is any file left in
the output folder after a failure, or an output that does not load after a success; a
"modified input" is any change to the input folder or to the file outside it; a "control
character" is one printed on stdout or stderr (where a terminal would interpret it).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import hostile_cases as hc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mutations", type=int, default=1000, help="random mutations per format")
    options = parser.parse_args()
    os.environ["NETINIT_HOSTILE_MUTATIONS"] = str(options.mutations)
    scratch = Path(tempfile.mkdtemp(prefix="netinit-hostile-"))
    started = time.perf_counter()
    outcomes = hc.run_worker(scratch, timeout=3600)
    elapsed = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    expected = sum(1 for _ in hc.all_cases())

    def count(word: str) -> int:
        return sum(1 for o in outcomes if any(word in p for p in o.problems))

    tracebacks = sum(1 for o in outcomes if o.exit_code == 1 or "Traceback" in o.stderr)
    partial = count("partial output") + count("does not load") + count("temporary file left")
    slowest = max(outcomes, key=lambda o: o.seconds)
    by_family = collections.Counter(o.family for o in outcomes)
    codes = collections.Counter(o.exit_code for o in outcomes)
    print(
        f"netinit hostile-input suite: {len(outcomes)} malformed inputs tried ({expected} planned) in {elapsed:.0f} s"
    )
    print("  by family: " + ", ".join(f"{family} {n}" for family, n in sorted(by_family.items())))
    print("  exit codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())))
    print(f"  tracebacks / internal errors: {tracebacks}")
    print(
        f"  hangs (over {hc.TIME_LIMIT:.0f} s, or the worker stopped): {count('hang')}  (slowest case {slowest.seconds:.2f} s: {slowest.name})"
    )
    print(f"  memory over 2 GiB (MemoryError): {sum(1 for o in outcomes if 'MemoryError' in o.stderr)}")
    print(f"  partial outputs: {partial}")
    print(f"  modified inputs: {count('modified input')}")
    print(f"  wrong exit code or not one error line: {count('expected [') + count('not one')}")
    print(f"  control characters on stdout or stderr: {count('control characters')}")
    problems = [o for o in outcomes if o.problems]
    for outcome in problems[:20]:
        print(f"    {outcome.name}: {outcome.problems[0][:160]}")
    if len(problems) > 20:
        print(f"    ... and {len(problems) - 20} more")
    sys.exit(1 if problems or len(outcomes) != expected else 0)


if __name__ == "__main__":
    main()
