"""ONNX op patterns: uses whose meaning depends on the graph around the op, one recognizer each.

An Add after a linear op holds its bias; a Mul by a normalized activation holds a norm's scale; a
Gather with data indices reads an embedding table; an Einsum operand is a weight whose layout the
equation gives.  :data:`PATTERNS` maps an op to its recognizers, tried in order after the op's
:data:`~netinit_cli.classify.onnx_slots.SLOTS` row; the first that returns a finding decides.
:data:`SLOT_OVERRIDES` are tried before the slot row, for a slot that the graph around it makes
something else.  A recognizer that returns ``None`` leaves the use to the next one, and in the
end to the op's schema (non-differentiable inputs are constants, others unknown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import onnx

from netinit_cli.classify.axes import Axes, broadcasts_as_bias, einsum_layout, map_layout
from netinit_cli.classify.layouts import EMBEDDING_LAYOUT
from netinit_cli.classify.onnx_slots import OpKey, Trait, node_attrs, traits
from netinit_cli.formats.onnx.graph import Scope, StoredTensor
from netinit_cli.model import Layer, Layout, Role


@dataclass(frozen=True)
class Finding:
    """What one use of a stored tensor says about it."""

    kind: str  # "slot", "quantized", "constant", "unknown"
    role: Role
    reason: str
    layout: Layout | None = None
    layer: Layer | None = None  # the op of a slot use (and, for a bias, its layer's weight)


@dataclass(frozen=True)
class Path:
    """A stored tensor on its way to a use: the value it has become, and how its axes moved."""

    scope: Scope
    value: str
    # For each axis of the value: the stored axes it came from.
    axes: Axes
    shape: tuple[int, ...] | None
    steps: tuple[str, ...]
    rank: int  # the stored tensor's rank
    reorder: bool = False  # went through a Slice/Split/Concat

    def moved(self, scope: Scope, value: str, step: str, axes: Axes, shape: tuple[int, ...] | None) -> Path:
        """This path one node further on: ``value`` now, its axes moved to ``axes`` by ``step``."""
        return replace(self, scope=scope, value=value, axes=axes, shape=shape, steps=(*self.steps, step))


Use = tuple[Scope, onnx.NodeProto, int]  # the node that reads a value, and at which input


class Walk(Protocol):
    """The graph queries a recognizer may make (implemented by the classifier's walk)."""

    uses: dict[tuple[int, str], list[Use]]

    def producer(self, scope: Scope, value: str) -> tuple[Scope, onnx.NodeProto] | None: ...

    def is_dynamic(self, scope: Scope, value: str) -> bool: ...

    def stored_shape(self, scope: Scope, value: str) -> tuple[int, ...] | None: ...

    def weight_shape_through(self, scope: Scope, value: str) -> tuple[int, ...] | None: ...

    def stored_behind(self, scope: Scope, value: str) -> StoredTensor | None: ...


Recognizer = Callable[[Walk, Path, Scope, onnx.NodeProto, int], Finding | None]


def via(path: Path) -> str:
    return f" via {' → '.join(path.steps)}" if path.steps else ""


def mapped(path: Path, role: Role, where: str, terminal: Layout) -> Finding:
    """A slot finding with the terminal layout carried back to the stored axes, or UNKNOWN
    when a reshape on the way makes that ambiguous."""
    layout = map_layout(terminal, path.axes, path.rank, bool(path.steps))
    if isinstance(layout, str):
        return Finding("unknown", Role.UNKNOWN, f"{where}: {layout}")
    return Finding("slot", role, where, layout)


def _dequant_scale(walk: Walk, scope: Scope, mul: onnx.NodeProto) -> bool:
    """Is this Mul part of dynamic dequantization (``Cast(MatMulInteger) * (x_scale * w_scale)``)?
    Its float operands are quantization scales, not learnable."""

    def from_quant(owner: Scope, value: str) -> bool:
        found = walk.producer(owner, value)
        while found is not None and found[1].op_type == "Cast":
            found = walk.producer(found[0], found[1].input[0])
        return found is not None and Trait.DEQUANTIZED_AFTER in traits(found[1].op_type)

    if any(from_quant(scope, v) for v in mul.input if v):
        return True
    for owner, user, _ in walk.uses.get((id(scope), mul.output[0]), []):
        if user.op_type == "Mul" and any(from_quant(owner, v) for v in user.input if v):
            return True
    return False


def _inside_groupnorm(walk: Walk, scope: Scope, node: onnx.NodeProto) -> bool:
    """GroupNorm below opset 18: Reshape([0, G, -1]) → InstanceNormalization → Reshape."""
    before = walk.producer(scope, node.input[0])
    after = walk.uses.get((id(scope), node.output[0]), [])
    return (
        before is not None
        and before[1].op_type == "Reshape"
        and bool(after)
        and all(use.op_type == "Reshape" for _, use, _ in after)
    )


def _linear_producer(walk: Walk, scope: Scope, value: str) -> tuple[Scope, onnx.NodeProto] | None:
    """The linear op that computes ``value``, looking through reshapes, casts and the
    dynamic-quantization ``MatMulInteger → Cast → Mul(scale)``."""
    found = walk.producer(scope, value)
    for _ in range(8):
        if found is None:
            return None
        owner, node = found
        if Trait.LINEAR in traits(node.op_type):
            return found
        if Trait.KEEPS_VALUES in traits(node.op_type) and node.input:
            found = walk.producer(owner, node.input[0])
            continue
        if node.op_type == "Mul":
            for operand in node.input:
                inner = walk.producer(owner, operand)
                while inner is not None and inner[1].op_type == "Cast":
                    inner = walk.producer(inner[0], inner[1].input[0])
                if inner is not None and (Trait.LINEAR | Trait.DEQUANTIZED_AFTER) in traits(inner[1].op_type):
                    return inner
        return None
    return None


def _bias(walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | None:
    shape = path.shape
    if shape is None:
        return None
    for other_index, other in enumerate(node.input):
        if other_index == index or not other:
            continue
        found = _linear_producer(walk, scope, other)
        if found is None:
            continue
        owner, linear = found
        width, channel_first = _output_width(walk, owner, linear)
        if broadcasts_as_bias(shape, width, channel_first):
            weights = (walk.stored_behind(owner, value) for value in linear.input if value)
            weight = next((stored.name for stored in weights if stored is not None), None)
            layer = Layer(linear.op_type, weight)
            return Finding(
                "slot", Role.BIAS, f"{node.op_type} input {index} after {linear.op_type}", layer=layer
            )
    return None


def _output_width(walk: Walk, scope: Scope, node: onnx.NodeProto) -> tuple[int | None, int | None]:
    """(number of outputs N, rank of a Conv output or None for last-axis outputs)."""
    op, attrs = node.op_type, node_attrs(node)
    if op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        weight_index = 3 if op == "QLinearConv" else 1
        weight = (
            walk.stored_shape(scope, node.input[weight_index]) if len(node.input) > weight_index else None
        )
        if weight is None:
            return None, None
        if op == "ConvTranspose":
            return weight[1] * int(attrs.get("group", 1)), len(weight)  # type: ignore[call-overload]
        return weight[0], len(weight)
    if op in ("Gemm",):
        weight = walk.stored_shape(scope, node.input[1])
        if weight is None or len(weight) != 2:
            return None, None
        return (weight[0] if attrs.get("transB", 0) else weight[1]), None
    if op in ("MatMul", "FusedMatMul", "MatMulInteger"):
        weight = walk.weight_shape_through(scope, node.input[1])
        if weight is None or len(weight) < 1:
            return None, None
        if op == "FusedMatMul" and attrs.get("transB", 0):
            return weight[-2], None
        return weight[-1], None
    if op == "QLinearMatMul":
        weight = walk.stored_shape(scope, node.input[3])
        return (weight[-1] if weight else None), None
    return None, None


def _norm_affine(
    walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int, *, scale: bool
) -> Finding | None:
    """``Mul(x̂, scale)`` / ``Add(·, shift)`` after a decomposed normalization."""
    if len(node.input) != 2:
        return None
    other = node.input[1 - index]
    if scale and walk.is_dynamic(scope, other) and _normalized(walk, scope, other):
        return Finding("slot", Role.NORM_SCALE, f"Mul input {index} after a decomposed normalization")
    if not scale and walk.is_dynamic(scope, other):
        found = _skip_shape(walk, scope, other)
        if found is not None and found[1].op_type == "Mul" and len(found[1].input) == 2:
            mul_owner, mul = found
            for operand in mul.input:
                if not walk.is_dynamic(mul_owner, operand):
                    partner = mul.input[1] if operand == mul.input[0] else mul.input[0]
                    if _normalized(walk, mul_owner, partner):
                        reason = f"Add input {index} after a decomposed normalization's scale"
                        return Finding("slot", Role.NORM_SHIFT, reason)
        if _normalized(walk, scope, other):
            return Finding("slot", Role.NORM_SHIFT, f"Add input {index} after a decomposed normalization")
    return None


def _skip_shape(walk: Walk, scope: Scope, value: str) -> tuple[Scope, onnx.NodeProto] | None:
    found = walk.producer(scope, value)
    while found is not None and found[1].op_type in (
        "Cast",
        "Identity",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
    ):
        found = walk.producer(found[0], found[1].input[0])
    return found


def _normalized(walk: Walk, scope: Scope, value: str) -> bool:
    """Is ``value`` a normalized activation: Div/Mul by Reciprocal(Sqrt(ReduceMean(…)+eps)),
    or the Reshape→InstanceNormalization→Reshape form of GroupNorm?"""
    found = walk.producer(scope, value)
    while found is not None and found[1].op_type in ("Cast", "Identity", "Reshape"):
        if found[1].op_type == "Reshape":
            inner = walk.producer(found[0], found[1].input[0])
            if inner is not None and inner[1].op_type == "InstanceNormalization":
                return True
        found = walk.producer(found[0], found[1].input[0])
    if found is None or found[1].op_type not in ("Div", "Mul"):
        return False
    seen_ops: set[str] = set()
    frontier = [found]
    for _ in range(6):
        nxt = []
        for owner, node in frontier:
            seen_ops.add(node.op_type)
            for operand in node.input:
                inner = walk.producer(owner, operand) if operand else None
                if inner is not None:
                    nxt.append(inner)
        frontier = nxt
    return "ReduceMean" in seen_ops and bool(seen_ops & {"Sqrt", "Reciprocal", "Rsqrt"})


def _gather(walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | None:
    """``Gather(table, ids)`` along axis 0 with ids from data: an embedding table."""
    if index != 0:
        return None
    axis = node_attrs(node).get("axis", 0)
    rank = len(path.axes)
    where = f"Gather input 0{via(path)}"
    if axis not in (0, -rank):
        return Finding("unknown", Role.UNKNOWN, f"{where} along axis {axis}")
    if len(node.input) < 2 or not walk.is_dynamic(scope, node.input[1]):
        return Finding("unknown", Role.UNKNOWN, f"{where} with constant indices (a lookup table or folding)")
    if rank < 2 or path.shape is None:
        return Finding("unknown", Role.UNKNOWN, f"{where} of rank {rank}")
    return mapped(
        path,
        Role.EMBEDDING,
        f"{where} (embedding table)",
        EMBEDDING_LAYOUT,
    )


def _einsum(walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | None:
    """An Einsum operand with another, dynamic operand: a weight, its layout from the equation."""
    where = f"Einsum input {index}{via(path)}"
    equation = str(node_attrs(node).get("equation", "")).replace(" ", "")
    others = [v for i, v in enumerate(node.input) if i != index and v]
    if not any(walk.is_dynamic(scope, v) for v in others):
        return Finding("unknown", Role.UNKNOWN, f"{where}, but no other operand is dynamic")
    if path.shape is None:
        return Finding("unknown", Role.UNKNOWN, f"{where}, with a shape netinit cannot follow")
    layout = einsum_layout(equation, index, len(path.axes))
    if isinstance(layout, str):
        return Finding("unknown", Role.UNKNOWN, f"{where}: equation {equation!r}: {layout}")
    return mapped(path, Role.WEIGHT, f"{where} ({equation})", layout)


def _groupnorm_instance_norm(
    walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int
) -> Finding | None:
    if index not in (1, 2) or not _inside_groupnorm(walk, scope, node):
        return None
    reason = (
        f"{node.op_type} input {index} inside a decomposed GroupNorm "
        "(its learnable scale/shift are the Mul/Add after it)"
    )
    return Finding("constant", Role.CONSTANT, reason)


def _dequantization_scale(
    walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int
) -> Finding | None:
    if not _dequant_scale(walk, scope, node):
        return None
    return Finding("quantized", Role.QUANTIZED, f"Mul input {index} (dynamic-quantization scale)")


def _norm_scale(walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | None:
    return _norm_affine(walk, path, scope, node, index, scale=True)


def _norm_shift(walk: Walk, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | None:
    return _norm_affine(walk, path, scope, node, index, scale=False)


# Tried before the op's SLOTS row.
SLOT_OVERRIDES: dict[OpKey, tuple[Recognizer, ...]] = {
    ("", "InstanceNormalization"): (_groupnorm_instance_norm,),
}

# Tried, in order, for an input the op's SLOTS row does not name.
PATTERNS: dict[OpKey, tuple[Recognizer, ...]] = {
    ("", "Add"): (_bias, _norm_shift),
    ("", "Sum"): (_bias,),
    ("", "Mul"): (_dequantization_scale, _norm_scale),
    ("", "Gather"): (_gather,),
    ("", "Einsum"): (_einsum,),
}
