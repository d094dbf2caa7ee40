"""Tensors read as stacks of matrices (rows = outputs, columns = the rest): orthogonal and identity.

A :class:`MatrixPlan` says how the stored axes are permuted and reshaped into (batch, rows, cols),
and which diagonal blocks (groups, gate blocks) are independent, from the tensor's
:class:`~netinit_cli.model.Layout`; orthogonal fills each block with an orthonormal matrix,
identity puts ones on each block's leading diagonal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .distributions import Distribution
from .linalg import orthonormalize, orthonormalize_in_place
from .model import Layout
from .sampling import sample_into
from .seeding import Seed


@dataclass(frozen=True)
class MatrixPlan:
    """How a stored tensor is read as a stack of (rows × cols) matrices.

    ``perm`` orders the stored axes as batch, row axes, column axes; the matrix of batch item b
    is ``transpose(perm).reshape(batch, rows, cols)[b]``, split into ``row_blocks`` ×
    ``col_blocks`` independent blocks (groups, gate blocks) that lie on the block diagonal.
    ``centre`` lists, for each column axis, the centre tap used by identity (-1: every index).
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    batch: int
    rows: int
    cols: int
    row_axes: int  # how many axes of perm (after the batch axes) form the rows
    batch_axes: int
    in_axes: int  # how many column axes (first ones) are inputs; the rest are receptive field
    row_blocks: int = 1
    col_blocks: int = 1

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.rows // self.row_blocks, self.cols // self.col_blocks


def matrix_plan(shape: tuple[int, ...], layout: Layout | None, fan_mode: str) -> MatrixPlan:
    rank = len(shape)
    if rank == 0:
        return MatrixPlan(shape, (), 1, 1, 1, 0, 0, 0)
    if layout is None or rank == 1:
        # torch convention [out, in, k…]; a vector is a single column.
        perm = tuple(range(rank))
        rows = shape[0]
        return MatrixPlan(shape, perm, 1, rows, math.prod(shape[1:]), 1, 0, min(rank - 1, 1))
    batch_axes = tuple(layout.batch_axes)
    batch = math.prod(shape[a] for a in batch_axes)
    if fan_mode == "torch":
        rest = [a for a in range(rank) if a not in batch_axes]
        torch_order = [rest[p] for p in layout.torch_perm] if layout.torch_perm is not None else rest
        perm = (*batch_axes, *torch_order)
        rows = shape[torch_order[0]]
        cols = math.prod(shape[a] for a in torch_order[1:])
        return MatrixPlan(shape, perm, batch, rows, cols, 1, len(batch_axes), 1)
    out_axes, in_axes = tuple(layout.out_axes), tuple(layout.in_axes)
    field_axes = layout.rf_axes(rank)
    perm = (*batch_axes, *out_axes, *in_axes, *field_axes)
    rows = math.prod(shape[a] for a in out_axes)
    cols = math.prod(shape[a] for a in (*in_axes, *field_axes))
    row_blocks = layout.blocks if layout.blocks > 1 else layout.out_divisor
    col_blocks = layout.in_divisor if row_blocks == 1 else 1
    if rows % row_blocks or cols % col_blocks:
        row_blocks = col_blocks = 1
    return MatrixPlan(
        shape, perm, batch, rows, cols, len(out_axes), len(batch_axes), len(in_axes), row_blocks, col_blocks
    )


def identity_indices(plan: MatrixPlan) -> np.ndarray:
    """Flat indices (into the stored tensor) of the ones of the identity.

    Each (row block, column block) pair on the diagonal gets eye on its leading square; the
    receptive field contributes its centre tap k//2 (torch ``dirac_``); batch items all get one.
    A vector (or scalar) is all ones: its identity is a unit scale.
    """
    shape = plan.shape
    if len(shape) <= 1:
        return np.arange(math.prod(shape))
    groups = max(plan.row_blocks, plan.col_blocks)
    permuted = [shape[a] for a in plan.perm]
    nb, nr = plan.batch_axes, plan.row_axes
    batch_dims, row_dims = permuted[:nb], permuted[nb : nb + nr]
    col_dims = permuted[nb + nr :]
    in_dims, field_dims = col_dims[: plan.in_axes], col_dims[plan.in_axes :]
    block_rows = plan.rows // plan.row_blocks
    block_inputs = math.prod(in_dims) // plan.col_blocks
    diagonal = np.arange(min(block_rows, block_inputs))
    group = np.arange(groups)[:, None]
    row = (group * block_rows * (plan.row_blocks > 1) + diagonal).reshape(-1)
    col_in = (group * block_inputs * (plan.col_blocks > 1) + diagonal).reshape(-1)
    batch = np.arange(plan.batch)
    # Column index = input index × field size + the field's centre tap.
    field_size = math.prod(field_dims)
    centre = np.ravel_multi_index(tuple(d // 2 for d in field_dims), field_dims) if field_dims else 0
    col = col_in * field_size + centre
    b, r = np.meshgrid(batch, np.arange(row.size), indexing="ij")
    coords: list[np.ndarray] = []
    coords += list(np.unravel_index(b.reshape(-1), batch_dims)) if batch_dims else []
    coords += list(np.unravel_index(row[r.reshape(-1)], row_dims))
    coords += list(np.unravel_index(col[r.reshape(-1)], col_dims)) if col_dims else []
    stored = [np.empty(0, np.intp)] * len(shape)
    for position, axis in enumerate(plan.perm):
        stored[axis] = coords[position]
    flat: np.ndarray = np.ravel_multi_index(tuple(stored), shape)
    return flat


def orthogonal_fill(out: np.ndarray, plan: MatrixPlan, gain: float, seed: Seed, name: str) -> None:
    """Haar-distributed orthogonal blocks × gain (rows ≤ cols: W·Wᵀ = gain²·I, else Wᵀ·W = gain²·I).

    Draws a N(0, 1) matrix from the tensor's streams, takes the Q factor of its QR decomposition
    with R's diagonal made positive (Mezzadri 2007; wide blocks via the transpose), computed
    with CholeskyQR2 (:func:`orthonormalize`).
    """
    permuted_shape = tuple(plan.shape[a] for a in plan.perm)
    normal = Distribution("normal", (0.0, 1.0))
    single = plan.batch == 1 and plan.row_blocks == plan.col_blocks == 1
    if single and plan.perm == tuple(range(len(plan.shape))) and out.flags.c_contiguous:
        # The stored tensor *is* the matrix: draw and orthonormalize in place, no copies.
        matrix = out.reshape(plan.rows, plan.cols)
        sample_into(normal, matrix, seed, name)
        if not orthonormalize_in_place(matrix):
            matrix[...] = orthonormalize(matrix)
        if gain != 1.0:
            matrix *= out.dtype.type(gain)
        return
    matrices = np.empty((plan.batch, plan.rows, plan.cols), out.dtype)
    sample_into(normal, matrices, seed, name)
    block_rows, block_cols = plan.block_shape
    for b in range(plan.batch):
        for g in range(max(plan.row_blocks, plan.col_blocks)):
            r0 = g * block_rows if plan.row_blocks > 1 else 0
            c0 = g * block_cols if plan.col_blocks > 1 else 0
            block = matrices[b, r0 : r0 + block_rows, c0 : c0 + block_cols]
            block[...] = orthonormalize(block)
    if gain != 1.0:
        matrices *= out.dtype.type(gain)
    inverse = np.argsort(plan.perm)
    out[...] = matrices.reshape(permuted_shape).transpose(inverse)
