"""Fill: each planned tensor becomes a :class:`LazyTensor`, whose values are produced only when a
writer asks for them, and the filler records what came out (:class:`~netinit_cli.model.Filled`).

A writer lays out its file from the lazy tensors' shapes and dtypes, then asks each one, in write
order, for its bytes: :meth:`LazyTensor.array` for values stored in memory (inline ONNX tensors,
attributes), :meth:`LazyTensor.write_into` for bytes at an offset of an open file.  At most one
generated tensor is alive at a time: memory is bounded by the largest tensor, not the model.

Written into a file, a large tensor drawn from a plain distribution is never held in memory: the
sampler threads generate it span by span into per-thread reused buffers (a few MiB, never
page-faulted again), round each span to the stored dtype and ``pwrite`` it at its offset, so both
cores generate *and* write.  The bytes are those of the in-memory path (the blocks are those of
the chunk streams), for any thread count.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np

from netinit_cli import dtypes, libc
from netinit_cli.distributions import Distribution
from netinit_cli.errors import InputError, NetinitError
from netinit_cli.fileio import pwrite_all
from netinit_cli.initializers import TensorInit
from netinit_cli.model import Action, Filled, Planned
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


# Tensors smaller than this are generated in memory even when written into a file: a handful of
# blocks gains nothing from the thread pool.
DIRECT_MIN_BYTES = 1 << 20


class LazyTensor:
    """A tensor whose name, shape and dtype are known now and whose values are produced later.

    ``values`` is called once, when a writer asks for the bytes through :meth:`array` or
    :meth:`write_into`; a writer uses exactly one of them per tensor.
    """

    def __init__(
        self, name: str, shape: tuple[int, ...], dtype: str, values: Callable[[], np.ndarray]
    ) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype  # safetensors-style name: F32, BF16, …
        self._values = values

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtypes.itemsize(self.dtype)

    def array(self) -> np.ndarray:
        """The values in the tensor's own dtype and shape, C-contiguous and little-endian."""
        values = self._values()
        expected = dtypes.numpy_dtype(self.dtype)
        if (
            not isinstance(values, np.ndarray)
            or values.shape != self.shape
            or values.dtype.name != expected.name
        ):
            got = f"{getattr(values, 'dtype', type(values).__name__)} {getattr(values, 'shape', '')}"
            raise NetinitError(
                f"internal error: the values produced for tensor {self.name!r} are {got}, "
                f"expected {expected.name} {list(self.shape)}"
            )
        values = np.ascontiguousarray(values)
        if values.dtype.byteorder == ">":
            values = values.astype(values.dtype.newbyteorder("<"))
        return values

    def write_into(self, fd: int, offset: int, target: Path) -> None:
        """Write the tensor's bytes at ``offset`` of ``fd`` (``target`` is named in errors)."""
        pwrite_all(fd, self.array(), offset, target)


def lazy_tensors(plan: Iterable[Planned], values: Callable[[Planned], np.ndarray]) -> dict[str, LazyTensor]:
    """The plan's FILL entries as lazy tensors, by name, whose values are ``values(entry)``."""
    return {
        entry.param.name: LazyTensor(
            entry.param.name, entry.param.shape, entry.param.dtype, partial(values, entry)
        )
        for entry in plan
        if entry.action is Action.FILL
    }


class _GeneratedTensor(LazyTensor):
    """A planned tensor's values from its initializer; written into a file directly by the
    sampler threads when it is large and drawn from a distribution."""

    def __init__(self, filler: Filler, planned: Planned) -> None:
        param = planned.param
        super().__init__(param.name, param.shape, param.dtype, partial(filler.generate, planned))
        self._filler = filler
        self._planned = planned

    def write_into(self, fd: int, offset: int, target: Path) -> None:
        init: TensorInit = self._planned.initializer
        if init.distribution is not None and self.nbytes >= DIRECT_MIN_BYTES:
            self._filler.generate_into(self._planned, init.distribution, fd, offset, target)
        else:
            super().write_into(fd, offset, target)


# Told each tensor and its size once its bytes are produced (the CLI's progress bar).
Done = Callable[[Planned, int], None]


class Filler:
    """Generates the planned tensors' values and keeps the statistics observed in them."""

    def __init__(self, seed: Seed, done: Done | None = None) -> None:
        self.seed = seed
        self.observed: dict[str, Filled] = {}  # by tensor name, once generated
        self._done = done

    def tensors(self, plan: Iterable[Planned]) -> dict[str, LazyTensor]:
        """The plan's FILL entries as lazy tensors, by name: nothing is generated yet."""
        return {entry.param.name: self.lazy(entry) for entry in plan if entry.action is Action.FILL}

    def lazy(self, planned: Planned) -> LazyTensor:
        if planned.action is not Action.FILL or planned.initializer is None:
            raise NetinitError(f"internal: {planned.param.name} is not planned to be filled")
        return _GeneratedTensor(self, planned)

    def generate(self, planned: Planned) -> np.ndarray:
        """The values of ``planned``, generated in memory, in its stored dtype."""
        param = planned.param
        init: TensorInit = planned.initializer
        try:
            values = np.empty(param.shape, dtype=dtypes.compute_dtype(param.dtype))
            with np.errstate(all="ignore"):  # no warning text: cast_checked refuses what overflowed
                init.fill(values, self.seed, param.name)
        except MemoryError:
            raise InputError(
                f"tensor {param.name!r}: out of memory generating shape {list(param.shape)} "
                f"({generation_bytes(param.numel, param.dtype) / 2**30:.1f} GiB); free memory or check the declared shape"
            ) from None
        stored = dtypes.cast_checked(values, param.dtype, param.name)
        del values
        self._record(planned, observed_stats(stored), stored.nbytes)
        return stored

    def generate_into(self, planned: Planned, dist: Distribution, fd: int, offset: int, target: Path) -> None:
        """Generate ``planned`` span by span in the sampler threads, each span rounded to the
        stored dtype and written at its place from ``offset`` of ``fd``."""
        param = planned.param
        compute = dtypes.compute_dtype(param.dtype)
        itemsize = dtypes.itemsize(param.dtype)
        sample = StatsSample(param.numel, dtypes.numpy_dtype(param.dtype))

        def scratch(start: int, count: int) -> np.ndarray:
            return _block_buffer(compute)[:count]

        def write_block(start: int, block: np.ndarray) -> None:
            # Rounded and checked (finite, in range) before the block reaches the file.
            values = dtypes.cast_checked(block, param.dtype, param.name)
            sample.take(start, values)
            pwrite_all(fd, values, offset + start * itemsize, target)

        tasks = [
            partial(generate_span, dist, span, compute, self.seed, param.name, scratch, write_block)
            for span in spans(dist, param.numel)
        ]
        run_parallel(tasks)
        self._record(planned, observed_stats(sample.values), param.numel * itemsize)

    def _record(self, planned: Planned, filled: Filled, nbytes: int) -> None:
        self.observed[planned.param.name] = filled
        if self._done is not None:
            self._done(planned, nbytes)


_buffers = threading.local()

# glibc's malloc serves blocks above its mmap threshold (128 KiB, raised only as such blocks are
# freed) with fresh mmap()s and returns the top of the heap past the trim threshold: every 2 MiB
# span's words (``random_raw`` allocates them) and every statistics temporary then costs page
# faults, which are slow in these VMs.  Larger thresholds keep freed blocks for reuse (the heap
# keeps at most what was in use at once).
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


def observed_stats(stored: np.ndarray) -> Filled:
    """Mean, std and a coarse histogram of the values as stored (after rounding)."""
    sample = stats_sample(stored.reshape(-1)).astype(np.float64)
    mean = float(sample.mean()) if sample.size else 0.0
    std = float(sample.std()) if sample.size else 0.0
    counts: tuple[int, ...] | None = None
    if sample.size and np.isfinite(sample).all():
        low, high = float(sample.min()), float(sample.max())
        counts = tuple(histogram(sample, low, high).tolist()) if high > low else (sample.size,)
    return Filled(mean, std, counts)


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
