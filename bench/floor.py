"""The machine's floor for re-initializing N float32 values: generate N uniform float32 values with
numpy on every core and write their bytes to a file in the page cache, nothing else.

Each thread owns a contiguous range of the file and an independent stream; it fills one small buffer
(it stays in the core's L2 cache) and writes it with pwrite.  numpy's generators and os.pwrite release
the GIL, so the threads run in parallel.

    python bench/floor.py OUT COUNT [--threads N]
"""

from __future__ import annotations

import argparse
import os
import threading

import numpy as np

FLOAT32_BYTES = 4
CHUNK_VALUES = 256 * 1024  # 1 MiB buffers: half the L2 cache of one core here


def fill_range(fd: int, rng: np.random.Generator, start: int, stop: int) -> None:
    """Write uniform float32 values number start..stop-1 of the file."""
    buf = np.empty(CHUNK_VALUES, dtype=np.float32)
    for first in range(start, stop, CHUNK_VALUES):
        part = buf[: min(CHUNK_VALUES, stop - first)]
        rng.random(out=part, dtype=np.float32)
        view = memoryview(part).cast("B")
        offset = first * FLOAT32_BYTES
        while view:  # pwrite may write less than asked
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written


def write_floor(path: str, count: int, threads: int, seed: int = 0) -> None:
    streams = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(threads)]
    bounds = [count * k // threads for k in range(threads + 1)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        workers = [
            threading.Thread(target=fill_range, args=(fd, streams[k], bounds[k], bounds[k + 1]))
            for k in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        os.close(fd)
    if os.path.getsize(path) != count * FLOAT32_BYTES:
        raise SystemExit(f"floor: wrote {os.path.getsize(path)} bytes, expected {count * FLOAT32_BYTES}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("destination")
    parser.add_argument("count", type=int, help="number of float32 values")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    write_floor(args.destination, args.count, args.threads)


if __name__ == "__main__":
    main()
