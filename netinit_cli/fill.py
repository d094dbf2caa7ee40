"""Generate one planned tensor's values on demand, and record what came out.

The writer calls :meth:`Filler.produce` once per filled tensor, in write order, so at most one
generated tensor is alive at a time: memory is bounded by the largest tensor, not the model.

Direct output.  A writer that knows where a tensor's bytes go (an open file and a byte offset)
may offer that place as a :class:`DirectOutput`, the second argument of ``produce``.  A large tensor
drawn from a plain distribution is then never held in memory: the sampler threads generate it
span by span into per-thread reused buffers (a few MiB, never page-faulted again), round each
span to the stored dtype and ``pwrite`` it at its offset, so both cores generate *and* write.
``produce`` then returns a zero-stride stand-in of the right shape and dtype, and the writer,
seeing ``DirectOutput.written``, writes nothing.  The bytes are the same as ``produce`` without
it (the blocks are those of the chunk streams), for any thread count.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from netinit_cli import dtypes, libc
from netinit_cli.distributions import Distribution
from netinit_cli.errors import InputError, NetinitError, OutputError
from netinit_cli.initializers import TensorInit
from netinit_cli.model import Action, Planned
from netinit_cli.sampling import SPAN_ELEMENTS, generate_span, run_parallel, spans
from netinit_cli.seeding import Seed

# Statistics of big tensors come from STATS_RUNS contiguous runs of STATS_RUN elements spread
# evenly over the tensor (65,536 values): the std's relative sampling error is ~0.3%, enough to
# flag a wrong gain or fan, and reading 256 KiB costs nothing next to generation.  (An evenly
# strided sample would touch every cache line of the tensor.)
STATS_RUN = 1024
STATS_RUNS = 64
STATS_SAMPLE = STATS_RUN * STATS_RUNS
HISTOGRAM_BINS = 8


# Tensors smaller than this are generated in memory even when direct output is offered: a
# handful of blocks gains nothing from the thread pool.
DIRECT_MIN_BYTES = 1 << 20


@dataclass
class DirectOutput:
    """A place offered by a writer for one tensor's bytes: ``fd`` at byte ``offset``."""

    fd: int
    offset: int
    target: Path  # named in write errors
    written: bool = False  # set by produce() when it wrote the bytes itself


class Filler:
    def __init__(self, seed: Seed) -> None:
        self.seed = seed
        self.bytes_generated = 0

    def produce(self, planned: Planned, place: DirectOutput | None = None) -> np.ndarray:
        """The values of ``planned`` in its stored dtype; or, when ``place`` is given and the
        tensor is large and distribution-drawn, write them there and return a stand-in."""
        if planned.action is not Action.FILL or planned.initializer is None:
            raise NetinitError(f"internal: {planned.param.name} is not planned to be filled")
        param = planned.param
        init: TensorInit = planned.initializer
        direct = place
        stored_dtype = dtypes.numpy_dtype(param.dtype)
        if (
            direct is not None
            and init.distribution is not None
            and param.numel * stored_dtype.itemsize >= DIRECT_MIN_BYTES
        ):
            self._write_direct(planned, init.distribution, direct)
            return np.broadcast_to(np.zeros((), stored_dtype), param.shape)
        try:
            values = np.empty(param.shape, dtype=dtypes.compute_dtype(param.dtype))
            init.fill(values, self.seed, param.name)
        except MemoryError:
            raise InputError(
                f"tensor {param.name!r}: out of memory generating shape {list(param.shape)} "
                f"({generation_bytes(param.numel, param.dtype) / 2**30:.1f} GiB); free memory or check the declared shape"
            ) from None
        stored = dtypes.cast_checked(values, param.dtype, param.name)
        del values
        record_stats(planned, stored)
        self.bytes_generated += stored.nbytes
        return stored

    def _write_direct(self, planned: Planned, dist: Distribution, direct: DirectOutput) -> None:
        param = planned.param
        compute = dtypes.compute_dtype(param.dtype)
        itemsize = dtypes.itemsize(param.dtype)
        same = dtypes.numpy_dtype(param.dtype) == compute
        sample = StatsSample(param.numel, dtypes.numpy_dtype(param.dtype))

        def scratch(start: int, count: int) -> np.ndarray:
            return _block_buffer(compute)[:count]

        def write_block(start: int, block: np.ndarray) -> None:
            values = block if same else dtypes.cast_checked(block, param.dtype, param.name)
            sample.take(start, values)
            pwrite_all(direct.fd, values, direct.offset + start * itemsize, direct.target)

        tasks = [
            partial(generate_span, dist, span, compute, self.seed, param.name, scratch, write_block)
            for span in spans(dist, param.numel)
        ]
        run_parallel(tasks)
        direct.written = True
        record_stats(planned, sample.values)
        self.bytes_generated += param.numel * itemsize


_buffers = threading.local()

# glibc's malloc serves blocks above its mmap threshold (128 KiB, raised only as such blocks are
# freed) with fresh mmap()s and returns the top of the heap past the trim threshold: every 2 MiB
# span's words (``random_raw`` allocates them) and every statistics temporary then costs page
# faults, which are slow in these VMs.  Larger thresholds keep freed blocks for reuse (the heap
# keeps at most what was in use at once).  Bundle kaiming uniform 0.71 -> 0.65 s.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_THRESHOLDS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 128 << 20))
_malloc_tuned = False


def keep_freed_buffers() -> None:
    """Raise glibc's mmap and trim thresholds once per process (nothing elsewhere).

    Process-wide, so only the command-line tool calls it (``netinit`` owns its process); the
    Python API leaves the host program's allocator alone."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    mallopt = libc.function("mallopt", "ii")
    if mallopt is None:
        return
    for option, value in _MALLOC_THRESHOLDS:
        mallopt(option, value)


def _block_buffer(dtype: np.dtype[np.floating]) -> np.ndarray:
    """This thread's reusable block buffer of ``dtype`` (allocated once per thread)."""
    found: dict[str, np.ndarray] = _buffers.__dict__.setdefault("by_dtype", {})
    buffer = found.get(dtype.str)
    if buffer is None:
        buffer = found[dtype.str] = np.empty(SPAN_ELEMENTS, dtype)
    return buffer


def pwrite_all(fd: int, values: np.ndarray, offset: int, target: Path) -> None:
    """Write ``values``' bytes at ``offset`` (``pwrite`` may write less than asked)."""
    view = values.reshape(-1).view(np.uint8).data
    try:
        while view.nbytes:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason += " (free some space or choose another -o)"
        raise OutputError(f"{target}: write failed: {reason}") from exc


class StatsSample:
    """Collects, from blocks arriving in any order, the same values :func:`stats_sample` takes."""

    def __init__(self, size: int, dtype: np.dtype) -> None:
        if size <= STATS_SAMPLE:
            self.starts, self.run = [0], size
        else:
            self.starts = np.linspace(0, size - STATS_RUN, STATS_RUNS).astype(np.int64).tolist()
            self.run = STATS_RUN
        self.ends = [start + self.run for start in self.starts]
        self.values = np.empty(len(self.starts) * self.run, dtype)

    def take(self, start: int, block: np.ndarray) -> None:
        stop = start + block.size
        for index in range(bisect.bisect_right(self.ends, start), bisect.bisect_left(self.starts, stop)):
            run_start = self.starts[index]
            low, high = max(run_start, start), min(run_start + self.run, stop)
            at = index * self.run + low - run_start
            self.values[at : at + high - low] = block[low - start : high - start]


class EarlyWriteback:
    """Starts the kernel's writeback of an output while it is still being written.

    Every :data:`WRITEBACK_BYTES` written, a background thread (at most one at a time) asks the
    kernel to start writing the file's dirty pages to disk: ``sync_file_range(WRITE)`` on Linux,
    which queues them and returns, else ``fdatasync`` every :data:`FDATASYNC_BYTES`.  The disk then
    works during generation and the fsync of the commit, which alone makes the file durable and
    reports any error, finds little left to do.  Call :meth:`finish` before the file is closed.
    Not ``active`` (an output written without fsync): nothing is done.
    """

    def __init__(self, fd: int, *, active: bool = True) -> None:
        self.fd = fd
        self.active = active
        self.pending = 0
        self.thread: threading.Thread | None = None
        self.start_writeback = _sync_file_range_function()
        self.every = WRITEBACK_BYTES if self.start_writeback is not None else FDATASYNC_BYTES

    def wrote(self, nbytes: int) -> None:
        self.pending += nbytes
        if (
            not self.active
            or self.pending < self.every
            or (self.thread is not None and self.thread.is_alive())
        ):
            return
        self.pending = 0
        self.thread = threading.Thread(target=self._sync, name="netinit-writeback", daemon=True)
        self.thread.start()

    def _sync(self) -> None:
        if self.start_writeback is not None:
            self.start_writeback(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # errors: the final fsync's
            return
        with contextlib.suppress(OSError):
            getattr(os, "fdatasync", os.fsync)(self.fd)

    def finish(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


# With sync_file_range, writeback starts every 32 MiB; fdatasync (which also waits, and flushes
# the disk's cache) every 128 MiB.  Bundle kaiming normal with preallocation: 0.74 s with
# fdatasync every 128 MiB, 0.71 s with sync_file_range every 32 MiB (medians of 7 alternating runs).
WRITEBACK_BYTES = 32 << 20
FDATASYNC_BYTES = 128 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _sync_file_range_function() -> Callable[..., int] | None:
    """Linux's ``sync_file_range(2)``, or None."""
    return libc.function("sync_file_range", "iqqI")


def generation_bytes(numel: int, dtype: str) -> int:
    """Memory one tensor needs while it is generated: the float32/float64 buffer, plus the
    rounded copy for low-precision dtypes."""
    compute = dtypes.compute_dtype(dtype).itemsize
    stored = dtypes.itemsize(dtype)
    return numel * (compute + (stored if stored != compute else 0))


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(plan: list[Planned]) -> None:
    """Refuse, before anything is written, a tensor whose declared shape could never be
    generated here (a hostile or broken file declaring terabytes)."""
    limit = physical_memory()
    if limit is None:
        return
    for entry in plan:
        if entry.action is not Action.FILL:
            continue
        need = generation_bytes(entry.param.numel, entry.param.dtype)
        if need > limit:
            raise InputError(
                f"tensor {entry.param.name!r}: declared shape {list(entry.param.shape)} needs "
                f"{need / 2**30:,.1f} GiB to generate, more than this machine's {limit / 2**30:,.1f} GiB "
                "of memory; check the model's declared shape"
            )


def stats_sample(flat: np.ndarray) -> np.ndarray:
    """At most STATS_SAMPLE values: the whole tensor if small, else evenly spread runs."""
    if flat.size <= STATS_SAMPLE:
        return flat
    starts = np.linspace(0, flat.size - STATS_RUN, STATS_RUNS).astype(np.int64)
    return np.concatenate([flat[start : start + STATS_RUN] for start in starts])


def record_stats(planned: Planned, stored: np.ndarray) -> None:
    """Mean, std and a coarse histogram of the values as stored (after rounding)."""
    sample = stats_sample(stored.reshape(-1)).astype(np.float64)
    planned.mean = float(sample.mean()) if sample.size else 0.0
    planned.std = float(sample.std()) if sample.size else 0.0
    if sample.size and np.isfinite(sample).all():
        low, high = float(sample.min()), float(sample.max())
        if high > low:
            planned.histogram = histogram(sample, low, high).tolist()
        else:
            planned.histogram = [sample.size]


def histogram(sample: np.ndarray, low: float, high: float, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """``np.histogram(sample, bins, range=(low, high))[0]`` for float64 ``sample`` within
    [low, high], about 5x faster (its bin-edge corrections, which cost ~1 ms per tensor on the main
    thread while the sampler threads wait, are only applied to the few values near an edge)."""
    if (abs(low) + abs(high)) / (high - low) > 1e6:  # edges not resolvable to 1e-6 of a bin
        counts: np.ndarray = np.histogram(sample, bins=bins, range=(low, high))[0]
        return counts
    position = (sample - low) / (high - low) * bins  # NumPy's own index formula
    index = position.astype(np.intp)
    np.minimum(index, bins - 1, out=index)  # the last bin includes ``high``
    fraction = position - index
    near = np.flatnonzero((fraction < 1e-6) | (fraction > 1 - 1e-6))
    if near.size:  # NumPy's corrections: compare with the edges themselves
        edges = np.linspace(low, high, bins + 1)
        values, moved = sample[near], index[near]
        moved -= values < edges[moved]
        moved += (values >= edges[moved + 1]) & (moved != bins - 1)
        index[near] = moved
    return np.bincount(index, minlength=bins)
