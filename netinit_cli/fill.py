"""Generate one planned tensor's values on demand, and record what came out.

The writer calls :meth:`Filler.produce` once per filled tensor, in write order, so at most one
generated tensor is alive at a time: memory is bounded by the largest tensor, not the model.
"""

from __future__ import annotations

import os

import numpy as np

from netinit_cli import dtypes
from netinit_cli.errors import InputError, NetinitError
from netinit_cli.methods import TensorInit
from netinit_cli.model import Action, Planned
from netinit_cli.seeding import Seed

# Statistics of big tensors come from STATS_RUNS contiguous runs of STATS_RUN elements spread
# evenly over the tensor (65,536 values): the std's relative sampling error is ~0.3%, enough to
# flag a wrong gain or fan, and reading 256 KiB costs nothing next to generation.  (An evenly
# strided sample would touch every cache line of the tensor.)
STATS_RUN = 1024
STATS_RUNS = 64
STATS_SAMPLE = STATS_RUN * STATS_RUNS
HISTOGRAM_BINS = 8


class Filler:
    def __init__(self, seed: Seed) -> None:
        self.seed = seed
        self.bytes_generated = 0

    def produce(self, planned: Planned) -> np.ndarray:
        if planned.action is not Action.FILL or planned.initializer is None:
            raise NetinitError(f"internal: {planned.param.name} is not planned to be filled")
        param = planned.param
        init: TensorInit = planned.initializer
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
            planned.histogram = np.histogram(sample, bins=HISTOGRAM_BINS, range=(low, high))[0].tolist()
        else:
            planned.histogram = [sample.size]
