"""Warnings, not decisions: names and values that suggest a fixed buffer in a learnable slot.

A tensor the topology calls learnable may still be a buffer the exporter stored as an
initializer (rotary frequencies, a DFT basis, position ids).  Its role stays what the slot says;
these notes ask the user to check it.
"""

from __future__ import annotations

import re

import numpy as np

from netinit_cli.model import Role

# Names that suggest a fixed buffer.
_BUFFER_NAME = re.compile(
    r"buffer|running_|num_batches|inv_freq|position_ids|cos_cached|sin_cached|mask", re.I
)

# Roles whose name may legitimately say "running_": the statistics themselves.
_RUNNING_ROLES = frozenset({Role.RUNNING_MEAN, Role.RUNNING_VAR})
VALUE_SAMPLE = 4096  # elements read from the start of a tensor for the value checks
ROW_SAMPLE = (16, 1024)  # rows × leading elements per row for the DFT check
_DFT_MIN_ROW = 16
_DFT_MIN_ROWS = 4
_DFT_ENERGY = 0.8  # share of a row's energy in 3 adjacent frequency bins


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


def structured_value_note(name: str, role: Role, values: np.ndarray) -> str | None:
    """A note when a weight-slot tensor holds values no training produces: constant,
    integer-valued, arange-like, or rows that are a DFT (sine/cosine) basis.

    Reads at most :data:`VALUE_SAMPLE` leading elements and :data:`ROW_SAMPLE` rows, so the
    cost is bounded whatever the tensor's size (external data is memory-mapped).
    """
    if values.size < 2:
        return None
    flat = np.asarray(values.reshape(-1)[:VALUE_SAMPLE], dtype=np.float64)
    if not np.isfinite(flat).all():
        return None
    what = None
    steps = np.diff(flat)
    if np.all(flat == flat[0]):
        what = f"every sampled value is {flat[0]:g}"
    elif flat.size >= 3 and steps[0] != 0 and np.allclose(steps, steps[0], rtol=1e-3, atol=0):
        what = f"arange-like values ({flat[0]:g}, {flat[1]:g}, {flat[2]:g}, …)"
    elif np.all(flat == np.round(flat)):
        what = "integer-valued"
    elif _dft_rows(values):
        what = "rows that are a sine/cosine (DFT) basis"
    if what is None:
        return None
    return (
        f"{name}: a {role.value} with {what}, which looks like a fixed buffer rather than a trained "
        "parameter; check it, and exclude it if it is one"
    )


def _dft_rows(values: np.ndarray) -> bool:
    """Each sampled row concentrates its energy in one frequency (± a leakage bin)."""
    if values.ndim < 2:
        return False
    rows, length = ROW_SAMPLE
    matrix = values.reshape(values.shape[0], -1)
    if matrix.shape[0] < _DFT_MIN_ROWS or matrix.shape[1] < _DFT_MIN_ROW:
        return False
    sample = np.asarray(matrix[:rows, :length], dtype=np.float64)
    power = np.abs(np.fft.rfft(sample, axis=1)) ** 2
    total = power.sum(axis=1)
    if np.any(total == 0):
        return False
    padded = np.pad(power, ((0, 0), (1, 1)))
    peak = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]).max(axis=1)
    return bool(np.all(peak >= _DFT_ENERGY * total))
