"""A preset's choice as a :class:`~netinit_cli.initializers.TensorInit` the filler runs.

Draws are :func:`~netinit_cli.initializers.distribution_init` (streamed into the output file
when large).  A padding row set to 0 or a gate block set to a constant (Keras
``unit_forget_bias``) is an edit after the draw: those tensors are generated in memory (the
TensorInit has no ``distribution``, which turns the streaming path off) and their expected
moments are those of the mixture.  Orthogonal is :func:`~netinit_cli.initializers.orthogonal`,
per gate block / group or on the whole matrix as the choice says.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from netinit_cli.initializers import TensorInit, distribution_init, orthogonal
from netinit_cli.model import Param
from netinit_cli.seeding import Seed

from .choice import PresetChoice


def tensor_init(choice: PresetChoice, param: Param) -> TensorInit:
    """How ``param`` is filled under ``choice`` (not for ``keep``; ``derived`` is a placeholder
    that the planner replaces with g = ‖v‖)."""
    if choice.kind == "orthogonal":
        layout = param.layout
        if not choice.per_block and layout is not None:
            layout = replace(layout, blocks=1, in_divisor=1, out_divisor=1)
        return replace(orthogonal(replace(param, layout=layout), "semantic", choice.gain), label=choice.label)
    if choice.kind in ("keep", "derived") or choice.distribution is None:
        return TensorInit(choice.label, None, None, None, None, _unreachable)
    base = distribution_init(choice.distribution, choice.label)
    edits = _edits(choice, param)
    if not edits:
        return base
    mean, std = _mixture(base, edits, param)

    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        base.fill(out, seed, name)
        for index, value in edits:
            out[index] = value

    base_reach, edit_peak = base.reach, max(abs(value) for _, value in edits)

    def reach(dtype: np.dtype[np.floating]) -> float:
        return max(base_reach(dtype) if base_reach is not None else 0.0, edit_peak)

    return TensorInit(choice.label, None, None, mean, std, fill, reach=reach)


Edit = tuple[tuple[slice | int, ...], float]


def _edits(choice: PresetChoice, param: Param) -> list[Edit]:
    """(index, value) of each padding row (axis 0) and constant gate block (the packed axis)."""
    edits: list[Edit] = [((row,), 0.0) for row in choice.zero_rows if param.shape and row < param.shape[0]]
    layout = param.layout
    if choice.block_values and layout is not None and layout.out_axes:
        axis = layout.out_axes[0]
        size = param.shape[axis] // max(layout.blocks, 1)
        for block, value in choice.block_values:
            index: list[slice | int] = [slice(None)] * len(param.shape)
            index[axis] = slice(block * size, (block + 1) * size)
            edits.append((tuple(index), value))
    return edits


def _mixture(base: TensorInit, edits: list[Edit], param: Param) -> tuple[float | None, float | None]:
    """Exact mean and std of an element: the draw's on the untouched share, each edit's value on
    its own (the edited regions are disjoint: rows of a table, or blocks of a bias)."""
    if base.expected_mean is None or base.expected_std is None or not param.numel:
        return None, None
    mark = np.zeros(param.shape, bool)
    first = second = 0.0
    for index, value in edits:
        share = (~mark[index]).sum() / param.numel
        mark[index] = True
        first += share * value
        second += share * value * value
    rest = 1.0 - mark.sum() / param.numel
    mean, std = base.expected_mean, base.expected_std
    first += rest * mean
    second += rest * (std * std + mean * mean)
    return first, math.sqrt(max(second - first * first, 0.0))


def _unreachable(out: np.ndarray, seed: Seed, name: str) -> None:
    raise AssertionError(f"{name}: a kept or derived preset choice was filled directly")


__all__ = ["tensor_init"]
