"""Stored values that tell what a weight-slot tensor is, and names that suggest a fixed buffer.

A tensor the topology calls learnable may still be a buffer the exporter stored as an
initializer (rotary frequencies, a DFT basis, position ids).  Two outcomes:

* :func:`fixed_transform` — values no training or initializer produces and that *are* a known
  fixed computation (a DFT basis, an arange such as YOLO's DFL kernel, a constant averaging
  kernel).  The classify stage gives such a weight the role ``fixed_transform``: kept unless a
  ``--rule`` names it, since re-initializing it breaks the model.
* :func:`structured_value_note` and :func:`buffer_name_note` — values or names that only
  *suggest* a buffer (constant, integer-valued, a buffer-like name).  The role stays what the
  slot says; a note asks the user to check it.

Every check reads a bounded sample (:data:`VALUE_SAMPLE` leading elements, :data:`SPREAD`
elements spread over the tensor, :data:`ROW_SAMPLE` rows), whatever the tensor's size.
"""

from __future__ import annotations

import math
import re

import numpy as np

from netinit_cli.model import Layout, Role

# Names that suggest a fixed buffer.
_BUFFER_NAME = re.compile(
    r"buffer|running_|num_batches|inv_freq|position_ids|cos_cached|sin_cached|mask", re.I
)

# Roles whose name may legitimately say "running_": the statistics themselves.
_RUNNING_ROLES = frozenset({Role.RUNNING_MEAN, Role.RUNNING_VAR})
VALUE_SAMPLE = 4096  # elements read from the start of a tensor for the value checks
SPREAD = 64  # elements read evenly spread over a tensor (its last one included) to confirm a pattern
ROW_SAMPLE = (16, 1024)  # rows (evenly spread) × leading elements per row for the DFT check
SAMPLED_FROM = 1 << 16  # elements: smaller tensors are read whole
_CONTIGUOUS_ROWS = 1 << 14  # elements: leading rows up to this many are read as one range
FIXED_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})  # dtypes whose values are checked for a transform
_DFT_MIN_ROW = 16
_DFT_MIN_ROWS = 4
_DFT_MIN_FREQUENCIES = 3  # distinct peak frequencies among the sampled rows: a basis, not smooth kernels
_DFT_ENERGY = 0.8  # share of a row's energy in 3 adjacent frequency bins
_ARANGE_MIN = 4
_AVERAGE_TOLERANCE = 1e-3  # |c · n − 1| for a constant kernel c over n inputs


def buffer_name_note(name: str, value: str, role: Role) -> str | None:
    """A note when a tensor classified as learnable has a name that suggests a fixed buffer."""
    match = _BUFFER_NAME.search(value)
    if not role.learnable or match is None:
        return None
    if match.group(0).lower() == "running_" and role in _RUNNING_ROLES:
        return None
    return (
        f"{name}: classified {role.value} but its name ({match.group(0)!r}) suggests a fixed buffer; "
        "check it, and exclude it if it is one"
    )


def fixed_transform(values: np.ndarray, layout: Layout | None) -> str | None:
    """What fixed transform a weight's stored ``values`` are, or ``None``.

    * an arange — ``a, a+d, a+2d, …`` over the whole tensor, at least 4 values (YOLO's DFL
      1×1 Conv holds 0, 1, …, 15 to take the expectation of a softmax over 16 bins);
    * a constant averaging kernel — every value ``1/n`` with ``n ≥ 2`` the inputs of one output
      (the layout's fan-in: a box filter or a mean as a Conv or MatMul);
    * a DFT basis — each row (along axis 0) concentrates its energy in one frequency ± a
      leakage bin, the rows spanning at least 3 frequencies: an STFT front end as a Conv1d
      ``[2F, 1, n_fft]`` of cosine and sine rows, windowed or not, an inverse STFT as a
      ConvTranspose1d, or the same basis as a MatMul weight.

    Cost is bounded whatever the tensor's size, and small for ordinary weights: the leading
    :data:`VALUE_SAMPLE` values and the leading parts of the first :data:`ROW_SAMPLE` rows
    decide whether a tensor is a candidate; only a candidate is confirmed on :data:`SPREAD`
    values or rows spread over it (:func:`sample_elements`: what a reader reads).
    """
    if values.size < _ARANGE_MIN:
        return None
    flat = _leading(values)
    if flat is None:
        return None
    step = flat[1] - flat[0]
    eps = _eps(values.dtype)
    if step != 0 and _near(flat, flat[0] + step * np.arange(flat.size), step, eps):
        positions, spread = _spread(values)
        if _near(spread, flat[0] + step * positions, step, eps):
            return f"arange {_g(flat[0])}, {_g(flat[1])}, …, {_g(spread[-1])}"
        return None
    if np.all(flat == flat[0]):
        fan = _fan_in(values.shape, layout)
        if flat[0] == 0 or fan < 2 or abs(flat[0] * fan - 1) > _AVERAGE_TOLERANCE:
            return None
        if np.all(_spread(values)[1] == flat[0]):
            return f"averaging kernel (every value 1/{fan})"
        return None
    return _dft_basis(values)


def _near(found: np.ndarray, expected: np.ndarray, step: float, eps: float) -> bool:
    """``found`` is ``expected`` up to a thousandth of a step and the dtype's rounding."""
    tolerance = 1e-3 * abs(step) + 4 * eps * np.abs(expected)
    return bool(np.isfinite(found).all() and np.all(np.abs(found - expected) <= tolerance))


def structured_value_note(name: str, role: Role, values: np.ndarray) -> str | None:
    """A note when a weight-slot tensor holds values no training produces: constant,
    integer-valued, arange-like, or rows that are a DFT (sine/cosine) basis.

    Reads at most :data:`VALUE_SAMPLE` leading elements and :data:`ROW_SAMPLE` rows, so the
    cost is bounded whatever the tensor's size (:func:`sample_elements`).
    """
    if values.size < 2:
        return None
    flat = _leading(values)
    if flat is None:
        return None
    what = None
    steps = np.diff(flat)
    if np.all(flat == flat[0]):
        what = f"every sampled value is {flat[0]:g}"
    elif flat.size >= 3 and steps[0] != 0 and np.allclose(steps, steps[0], rtol=1e-3, atol=0):
        what = f"arange-like values ({flat[0]:g}, {flat[1]:g}, {flat[2]:g}, …)"
    elif np.all(flat == np.round(flat)):
        what = "integer-valued"
    elif _dft_basis(values) is not None:
        what = "rows that are a sine/cosine (DFT) basis"
    if what is None:
        return None
    return (
        f"{name}: a {role.value} with {what}, which looks like a fixed buffer rather than a trained "
        "parameter; check it, and exclude it if it is one"
    )


def _leading(values: np.ndarray) -> np.ndarray | None:
    """The leading :data:`VALUE_SAMPLE` values in float64, or ``None`` if one is not finite."""
    flat = np.asarray(values.reshape(-1)[:VALUE_SAMPLE], dtype=np.float64)
    return flat if np.isfinite(flat).all() else None


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and float64 values of up to :data:`SPREAD` elements evenly spread over the
    tensor, the first and last included."""
    positions = _spread_positions(values.size)
    return positions, np.asarray(values.reshape(-1)[positions], dtype=np.float64)


def _spread_positions(size: int) -> np.ndarray:
    return np.unique(np.linspace(0, size - 1, min(size, SPREAD)).round().astype(np.int64))


def _spread_rows(count: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, ROW_SAMPLE[0])).round().astype(np.int64))


def leading_elements(shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """The ranges :func:`is_candidate` needs: the leading :data:`VALUE_SAMPLE` elements and the
    leading parts of the first :data:`ROW_SAMPLE` rows, as one contiguous range where the rows are
    short (one sequential read instead of a seek per row).  ``None``: read it whole, as
    :func:`sample_elements`."""
    size = math.prod(shape)
    if size <= SAMPLED_FROM:
        return None
    ranges = [(0, VALUE_SAMPLE)]
    if len(shape) >= 2 and shape[0]:
        row = size // shape[0]
        rows = min(shape[0], ROW_SAMPLE[0])
        if rows * row <= _CONTIGUOUS_ROWS:
            ranges.append((0, rows * row))
        else:
            ranges += [(r * row, min(row, ROW_SAMPLE[1])) for r in range(rows)]
    return ranges


def is_candidate(values: np.ndarray) -> bool:
    """Whether the leading values (:func:`leading_elements`) could belong to a fixed transform or
    earn a note: constant, arange-like or integer-valued, or leading rows that look like a DFT
    basis.  Trained and initialized weights are none of these, so only candidates are read again,
    on the sample spread over the whole tensor (:func:`sample_elements`)."""
    if values.size < 2:
        return False
    flat = _leading(values)
    if flat is None:
        return False
    steps = np.diff(flat)
    if np.all(flat == flat[0]) or np.all(flat == np.round(flat)):
        return True
    if flat.size >= 3 and steps[0] != 0 and np.allclose(steps, steps[0], rtol=1e-3, atol=0):
        return True
    step = flat[1] - flat[0]  # fixed_transform's own arange test
    if step != 0 and _near(flat, flat[0] + step * np.arange(flat.size), step, _eps(values.dtype)):
        return True
    if values.ndim < 2 or values.shape[0] < _DFT_MIN_ROWS or values.size // values.shape[0] < _DFT_MIN_ROW:
        return False
    return _dft_frequencies(values, np.arange(min(values.shape[0], ROW_SAMPLE[0]))) is not None


def sample_elements(shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Every ``(start, count)`` range of the flattened tensor the checks here read: a reader
    reads only these (:meth:`~netinit_cli.formats.base.ModelFile.read_array`), so a sample of a
    tensor of any size costs a few pages.  ``None`` (read it whole) for a tensor of at most
    :data:`SAMPLED_FROM` elements, which one read costs less than the ranges cost to list."""
    size = math.prod(shape)
    if size <= SAMPLED_FROM:
        return None
    ranges = [(0, VALUE_SAMPLE)] + [(int(p), 1) for p in _spread_positions(size)] if size else []
    if len(shape) >= 2 and shape[0]:
        row = size // shape[0]
        rows = {*range(min(shape[0], ROW_SAMPLE[0])), *_spread_rows(shape[0]).tolist()}
        ranges += [(r * row, min(row, ROW_SAMPLE[1])) for r in sorted(rows)]
    return ranges


def _eps(dtype: np.dtype) -> float:
    """Machine epsilon of a float dtype (bfloat16 and the float8 kinds through ml_dtypes)."""
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).eps)  # type: ignore[no-untyped-call]


def _g(value: float) -> str:
    return f"{value:.4g}"


def _fan_in(shape: tuple[int, ...], layout: Layout | None) -> int:
    if layout is not None and len(shape) >= 2 and layout.problem(shape) is None:
        return layout.fans(shape)[0]
    return int(np.prod(shape[1:])) if len(shape) >= 2 else int(np.prod(shape))


def _dft_basis(values: np.ndarray) -> str | None:
    """A DFT basis along axis 0: first on the leading rows, then confirmed on rows spread over
    the tensor.  (A transposed basis ``W[n, k]`` for ``x @ W`` passes too: a DFT matrix is
    symmetric in ``n`` and ``k``, and a window on ``n`` scales each of its rows.)"""
    if values.ndim < 2:
        return None
    count = values.shape[0]
    if count < _DFT_MIN_ROWS or values.size // count < _DFT_MIN_ROW:
        return None
    picks = min(count, ROW_SAMPLE[0])
    leading = _dft_frequencies(values, np.arange(picks))
    if leading is None:
        return None
    others = _dft_frequencies(values, _spread_rows(count))
    if others is None or len({*leading, *others}) < _DFT_MIN_FREQUENCIES:
        return None
    return f"DFT basis ({count} sine/cosine rows of {values.size // count} samples)"


def _dft_frequencies(values: np.ndarray, picked: np.ndarray) -> list[int] | None:
    """The peak frequency of each picked row that is not zero, if every such row concentrates
    its energy in one frequency (± a leakage bin) and there are enough of them."""
    rows = values.reshape(values.shape[0], -1)[picked, : ROW_SAMPLE[1]]
    sample = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(sample).all():
        return None
    power = np.abs(np.fft.rfft(sample, axis=1)) ** 2
    total = power.sum(axis=1)
    # Zero vectors (the sine of frequency 0 and of Nyquist in a real DFT basis) carry no frequency.
    live = total > 1e-12 * total.max() if total.max() > 0 else np.zeros_like(total, dtype=bool)
    if live.sum() < _DFT_MIN_ROWS:
        return None
    power, total = power[live], total[live]
    padded = np.pad(power, ((0, 0), (1, 1)))
    window = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    if not np.all(window.max(axis=1) >= _DFT_ENERGY * total):
        return None
    return [int(bin_) for bin_ in power.argmax(axis=1)]
