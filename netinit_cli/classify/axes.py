"""Pure axis algebra: how reshapes, transposes and einsum equations move and name a tensor's axes.

The ONNX walk follows a stored tensor through the ops between it and its use; these functions
say what each op does to the tensor's axes, and carry the layout found at the use back onto the
stored axes.  No protobuf here: shapes, permutations and equations only.
"""

from __future__ import annotations

import math

from netinit_cli.model import Layout

# For each axis of a value: the stored axes it came from (several after a merge, none for an
# inserted unit axis).
Axes = tuple[tuple[int, ...], ...]
Shape = tuple[int, ...]


def transpose_order(perm: object, rank: int) -> list[int] | None:
    """Transpose's ``perm`` as a list (reversed axes by default), or None when it is not one."""
    order = list(perm) if isinstance(perm, list) else list(reversed(range(rank)))
    return order if sorted(order) == list(range(rank)) else None


def flatten_target(shape: Shape, axis: int) -> Shape:
    axis = axis + len(shape) if axis < 0 else axis
    return (math.prod(shape[:axis]), math.prod(shape[axis:]))


def reshape_target(shape: Shape, spec: list[int], allowzero: object) -> Shape | None:
    """Reshape's output shape from its constant ``shape`` input (0 copies, one -1 infers)."""
    dims = [shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(spec)]
    if dims.count(-1) == 1:
        known = math.prod(d for d in dims if d != -1)
        if known == 0:
            return None
        dims[dims.index(-1)] = math.prod(shape) // known
    if any(d < 0 for d in dims) or math.prod(dims) != math.prod(shape):
        return None
    return tuple(dims)


def squeeze_target(shape: Shape, axes: list[int] | None) -> Shape:
    """Squeeze drops the given axes, or every unit axis when none are given."""
    rank = len(shape)
    drop = {a + rank if a < 0 else a for a in axes} if axes else {i for i, d in enumerate(shape) if d == 1}
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def unsqueeze_target(shape: Shape, axes: list[int]) -> Shape:
    rank = len(shape) + len(axes)
    insert = sorted(a + rank if a < 0 else a for a in axes)
    dims = list(shape)
    for a in insert:
        dims.insert(a, 1)
    return tuple(dims)


def squeeze_axes(axes: Axes, explicit: list[int]) -> Axes:
    """Squeeze with explicit axes when only the rank is known (after a gate reorder)."""
    drop = {a + len(axes) if a < 0 else a for a in explicit}
    return tuple(a for i, a in enumerate(axes) if i not in drop)


def unsqueeze_axes(axes: Axes, explicit: list[int]) -> Axes:
    rank = len(axes) + len(explicit)
    out: list[tuple[int, ...]] = list(axes)
    for a in sorted(a + rank if a < 0 else a for a in explicit):
        out.insert(a, ())
    return tuple(out)


def map_reshape(axes: Axes, shape: Shape, target: Shape) -> Axes | None:
    """Map axes across a reshape.  Unit axes come and go; otherwise the source and target sizes
    are cut into the smallest groups with equal products, and every target axis of a group
    comes from all the stored axes of that group: a merge ``[C, k] → [C·k]`` gives one axis
    from two, a split ``[h·d] → [h, d]`` two from one.  Whether that is still unambiguous is
    decided by :func:`map_layout`, once the terminal says what each axis means."""
    if 0 in shape or 0 in target:
        return None
    source = [(size, axis) for size, axis in zip(shape, axes, strict=True) if size != 1]
    wide = [k for k, size in enumerate(target) if size != 1]
    out: list[tuple[int, ...]] = [() for _ in target]
    i = j = 0
    while i < len(source) or j < len(wide):
        if i >= len(source) or j >= len(wide):
            return None
        group_source, group_target = [i], [j]
        have, want = source[i][0], target[wide[j]]
        i, j = i + 1, j + 1
        while have != want:
            if have < want:
                if i >= len(source):
                    return None
                have *= source[i][0]
                group_source.append(i)
                i += 1
            else:
                if j >= len(wide):
                    return None
                want *= target[wide[j]]
                group_target.append(j)
                j += 1
        stored = tuple(axis for k in group_source for axis in source[k][1])
        for k in group_target:
            out[wide[k]] = stored
    return tuple(out)


def map_layout(terminal: Layout, axes: Axes, rank: int, moved: bool) -> Layout | str:
    """Express a layout found on the terminal value's axes on the stored tensor's axes, or say
    why it cannot be: a stored axis that a reshape spread over axes of different kinds."""
    if not moved:
        return terminal

    def kind_of(axis: int) -> str:
        if axis in terminal.in_axes:
            return "in"
        if axis in terminal.out_axes:
            return "out"
        return "batch" if axis in terminal.batch_axes else "k"

    kinds: dict[int, str] = {}
    for axis, stored_axes in enumerate(axes):
        kind = kind_of(axis)
        for stored in stored_axes:
            if kinds.setdefault(stored, kind) != kind:
                return (
                    f"a reshape spreads stored axis {stored} over {_KIND_NAMES[kinds[stored]]} and "
                    f"{_KIND_NAMES[kind]} axes (fans ambiguous)"
                )

    def back(group: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(a for i in group for a in axes[i]))

    in_axes, out_axes, batch_axes = back(terminal.in_axes), back(terminal.out_axes), back(terminal.batch_axes)
    # torch orientation: the terminal's torch order of its non-batch axes, mapped back.
    terminal_rest = [a for a in range(len(axes)) if a not in terminal.batch_axes]
    torch_order = [terminal_rest[i] for i in terminal.torch_perm] if terminal.torch_perm else terminal_rest
    stored_rest = [a for a in range(rank) if a not in batch_axes]
    stored_order = [a for a in back(tuple(torch_order)) if a in stored_rest]
    stored_order += [a for a in stored_rest if a not in stored_order]
    perm = tuple(stored_rest.index(a) for a in stored_order)
    names = [kinds.get(a, "k") for a in range(rank)]
    return Layout(
        in_axes,
        out_axes,
        batch_axes,
        in_divisor=terminal.in_divisor,
        out_divisor=terminal.out_divisor,
        blocks=terminal.blocks,
        torch_perm=None if perm == tuple(range(len(perm))) else perm,
        label=f"[{', '.join(names)}]",
    )


_KIND_NAMES = {"in": "input", "out": "output", "batch": "batch", "k": "receptive-field"}


def broadcasts_as_bias(shape: Shape, width: int | None, conv_rank: int | None) -> bool:
    """A bias holds one value per output: along the last axis (matmul-like) or the channel
    axis (conv)."""
    numel = math.prod(shape)
    if width is not None and numel != width:
        return False
    if width is None and numel <= 1:
        return False
    wide = [i for i, d in enumerate(shape) if d != 1]
    if conv_rank is None:
        return all(i == len(shape) - 1 for i in wide)
    spatial = conv_rank - 2
    channel = len(shape) - spatial - 1
    return channel >= 0 and all(i == channel for i in wide)


_ELLIPSIS = "..."


def einsum_layout(equation: str, index: int, rank: int) -> Layout | str:
    """An einsum operand's layout: contracted letters are inputs, letters kept in the output
    (only here) outputs, letters shared with another operand and the output are batches.

    ``...`` stands for the axes not named by letters; in the weight they are batches when the
    output keeps ``...`` (like MatMul's leading axes), inputs when it sums them away.  Implicit
    mode (no ``->``) keeps ``...`` and the letters used once, in alphabetical order.  A letter
    repeated inside the weight reads its diagonal: not a weight layout (a reason is returned).
    """
    lhs, arrow, output = equation.partition("->")
    operands = lhs.split(",")
    if index >= len(operands):
        return f"no operand {index}"
    if not arrow:
        letters = "".join(o.replace(_ELLIPSIS, "") for o in operands)
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        output = (_ELLIPSIS if any(_ELLIPSIS in o for o in operands) else "") + "".join(once)
    mine = operands[index]
    named = mine.replace(_ELLIPSIS, "", 1)
    if mine.count(_ELLIPSIS) > 1 or not all(c.isalpha() for c in named):
        return f"operand {mine!r} is not a list of letters"
    spread = rank - len(named) if _ELLIPSIS in mine else 0
    if spread < 0 or (_ELLIPSIS not in mine and len(named) != rank):
        return f"operand {mine!r} does not match the tensor's rank {rank}"
    repeated = sorted(c for c in set(named) if named.count(c) > 1)
    if repeated:
        return f"letter {repeated[0]!r} repeats in operand {mine!r} (only its diagonal is used)"
    before, _, after = mine.partition(_ELLIPSIS) if _ELLIPSIS in mine else (named, "", "")
    expanded = [*before, *([_ELLIPSIS] * spread), *after]
    others = set("".join(o.replace(_ELLIPSIS, "") for i, o in enumerate(operands) if i != index))
    in_axes: list[int] = []
    out_axes: list[int] = []
    batch_axes: list[int] = []
    for axis, letter in enumerate(expanded):
        in_other, in_output = letter in others, letter in output
        if letter == _ELLIPSIS:
            (batch_axes if _ELLIPSIS in output else in_axes).append(axis)
        elif in_other and in_output:
            batch_axes.append(axis)
        elif in_output:
            out_axes.append(axis)
        else:
            in_axes.append(axis)
    return Layout(tuple(in_axes), tuple(out_axes), tuple(batch_axes), label=f"einsum {mine}")
