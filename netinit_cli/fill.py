"""Generate one planned tensor's values on demand, and record what came out.

The writer calls :meth:`Filler.produce` once per filled tensor, in write order, so at most one
generated tensor is alive at a time: memory is bounded by the largest tensor, not the model.
"""

from __future__ import annotations

import numpy as np

from netinit_cli import dtypes
from netinit_cli.errors import NetinitError
from netinit_cli.methods import TensorInit
from netinit_cli.model import Action, Planned
from netinit_cli.seeding import Seed

# Statistics of big tensors come from an evenly strided sample of about this many elements:
# exact enough for a mean/std check (relative error ~1e-3) and cheap next to generation.
STATS_SAMPLE = 1 << 20
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
        values = np.empty(param.shape, dtype=dtypes.compute_dtype(param.dtype))
        init.fill(values, self.seed, param.name)
        stored = dtypes.cast_checked(values, param.dtype, param.name)
        del values
        record_stats(planned, stored)
        self.bytes_generated += stored.nbytes
        return stored


def record_stats(planned: Planned, stored: np.ndarray) -> None:
    """Mean, std and a coarse histogram of the values as stored (after rounding)."""
    flat = stored.reshape(-1)
    if flat.size > STATS_SAMPLE:
        flat = flat[:: flat.size // STATS_SAMPLE]
    sample = flat.astype(np.float64)
    planned.mean = float(sample.mean()) if sample.size else 0.0
    planned.std = float(sample.std()) if sample.size else 0.0
    if sample.size and np.isfinite(sample).all():
        low, high = float(sample.min()), float(sample.max())
        if high > low:
            planned.histogram = np.histogram(sample, bins=HISTOGRAM_BINS, range=(low, high))[0].tolist()
        else:
            planned.histogram = [sample.size]
