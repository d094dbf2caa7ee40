"""The walk over an ONNX model: every use of every stored tensor, as a finding.

From each stored tensor the walk goes forward through pass-through ops (Identity, Cast,
Transpose, Reshape, …), recording how its axes move, to a terminal use: a slot of
:data:`~netinit_cli.classify.onnx_slots.SLOTS`, a pattern of
:data:`~netinit_cli.classify.onnx_patterns.PATTERNS`, or an input the op's schema calls
non-differentiable.  It also knows which values are *dynamic* (computed from data), which the
slots and patterns ask: a MatMul operand is a weight only if the other operand is dynamic.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import onnx
from onnx import AttributeProto, TensorProto

from netinit_cli.classify.axes import (
    Axes,
    flatten_target,
    map_reshape,
    reshape_target,
    squeeze_axes,
    squeeze_target,
    transpose_order,
    unsqueeze_axes,
    unsqueeze_target,
)
from netinit_cli.classify.onnx_patterns import PATTERNS, SLOT_OVERRIDES, Finding, Path, Use, mapped, via
from netinit_cli.classify.onnx_slots import (
    SLOTS,
    Slot,
    SlotContext,
    Trait,
    node_attrs,
    quantized_input,
    traits,
)
from netinit_cli.formats.onnx.graph import Graphs, Scope, StoredTensor, op_domain
from netinit_cli.model import Layer, Role

_NON_DIFFERENTIABLE = onnx.defs.OpSchema.DifferentiationCategory.NonDifferentiable


@cache
def _non_differentiable(domain: str, op: str, opset: int, index: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except Exception:  # unknown op or domain: the schema cannot tell
        return False
    inputs = schema.inputs
    if not inputs:
        return False
    formal = inputs[min(index, len(inputs) - 1)]
    if index >= len(inputs) and formal.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return False
    return bool(formal.differentiation_category == _NON_DIFFERENTIABLE)


class Classifier:
    """The walk over one model: every use of every stored tensor, as findings."""

    def __init__(self, graphs: Graphs, data_inputs: set[str]) -> None:
        self.g = graphs
        self.by_scope_value: dict[tuple[int, str], StoredTensor] = {
            (id(s.scope), s.value): s for s in graphs.stored
        }
        self.uses: dict[tuple[int, str], list[Use]] = {}
        for scope in graphs.scopes:
            for node in scope.nodes:
                for index, value in enumerate(node.input):
                    if not value:
                        continue
                    owner = scope.resolve(value)
                    if owner is not None:
                        self.uses.setdefault((id(owner), value), []).append((scope, node, index))
                # Outer-scope names used inside subgraphs count as uses by this node's subgraph
                # nodes; they are found through the subgraph's own node list.
        self.dynamic = self._dynamic_values(data_inputs)

    # -- dynamic values -----------------------------------------------------------------------

    def _dynamic_values(self, data_inputs: set[str]) -> set[tuple[int, str]]:
        """Values computed from data: graph inputs that are not parameters, and what follows."""
        dynamic: set[tuple[int, str]] = set()
        main = self.g.main
        for vi in self.g.model.graph.input:
            if vi.name in data_inputs:
                dynamic.add((id(main), vi.name))
        for scope in self.g.scopes:
            if scope is not main:
                inputs = scope.graph.input if scope.graph is not None else []
                for vi in inputs:
                    dynamic.add((id(scope), vi.name))
                if scope.function is not None:
                    for name in scope.function.input:
                        dynamic.add((id(scope), name))
        for scope in self.g.scopes:  # parents come before their subgraphs
            for node in scope.nodes:
                inputs_dynamic = any(
                    (id(owner), value) in dynamic
                    for value in node.input
                    if value and (owner := scope.resolve(value)) is not None
                )
                has_subgraph = any(
                    a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute
                )
                random = node.op_type.startswith("Random") or node.op_type in ("Multinomial", "Bernoulli")
                if inputs_dynamic or has_subgraph or random:
                    dynamic.update((id(scope), out) for out in node.output if out)
        return dynamic

    def is_dynamic(self, scope: Scope, value: str) -> bool:
        owner = scope.resolve(value)
        return owner is not None and (id(owner), value) in self.dynamic

    # -- helpers on the graph -----------------------------------------------------------------

    def producer(self, scope: Scope, value: str) -> tuple[Scope, onnx.NodeProto] | None:
        owner = scope.resolve(value)
        if owner is None or value not in owner.producer:
            return None
        return owner, owner.producer[value]

    def stored_shape(self, scope: Scope, value: str) -> tuple[int, ...] | None:
        owner = scope.resolve(value)
        if owner is None:
            return None
        stored = self.by_scope_value.get((id(owner), value))
        return stored.shape if stored is not None and stored.static else None

    def constant_ints(self, scope: Scope, value: str) -> list[int] | None:
        """The values of a small integer constant (a Reshape shape, Squeeze axes), if stored inline."""
        owner = scope.resolve(value)
        if owner is None:
            return None
        stored = self.by_scope_value.get((id(owner), value))
        if stored is None:
            return None
        if stored.attribute is not None and stored.attribute.type == AttributeProto.INTS:
            return list(stored.attribute.ints)
        if stored.attribute is not None and stored.attribute.type == AttributeProto.INT:
            return [stored.attribute.i]
        tensor = stored.tensor
        if tensor is None or stored.sparse is not None or tensor.data_location == TensorProto.EXTERNAL:
            return None
        if tensor.data_type not in (TensorProto.INT64, TensorProto.INT32) or math.prod(tensor.dims) > 64:
            return None
        return [int(v) for v in onnx.numpy_helper.to_array(tensor).reshape(-1)]

    # -- per stored tensor --------------------------------------------------------------------

    def findings(self, stored: StoredTensor) -> list[Finding]:
        start = Path(
            stored.scope,
            stored.value,
            tuple((axis,) for axis in range(len(stored.shape))),
            stored.shape if stored.ranked else None,
            (),
            len(stored.shape),
        )
        out: list[Finding] = []
        seen: set[tuple[int, str]] = set()
        stack = [start]
        while stack:
            path = stack.pop()
            owner = path.scope.resolve(path.value) or path.scope
            key = (id(owner), path.value)
            if key in seen:
                continue
            seen.add(key)
            for scope, node, index in self.uses.get(key, []):
                follow = self._step(path, scope, node, index)
                if isinstance(follow, Finding):
                    out.append(follow)
                else:
                    stack.extend(follow)
        return out

    def _step(self, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | list[Path]:
        op, domain = node.op_type, op_domain(node.domain)
        key = (domain, op)
        where = f"{op} input {index}"
        if quantized_input(domain, op, index):
            return Finding("quantized", Role.QUANTIZED, f"{where} (quantized)")
        op_traits = traits(op)
        if Trait.READS_SHAPE in op_traits:
            return []
        function = self.g.functions.get(key)
        if function is not None and function.function is not None:
            if index < len(function.function.input):
                inner = function.function.input[index]
                step = f"{op}() as {inner}"
                return [replace(path, scope=function, value=inner, steps=(*path.steps, step))]
            return Finding("unknown", Role.UNKNOWN, f"{where} (no such function input)")
        if domain == "" and op_traits & (Trait.MOVES_AXES | Trait.REORDERS_GATES):
            if index != 0 and op != "Concat":  # shapes, axes, starts…: not the data operand
                return self._fixed_input(path, scope, node, index)
            moved = self._pass(path, scope, node)
            if moved is not None:
                return moved
            return Finding("unknown", Role.UNKNOWN, f"{where} (cannot follow its axes)")
        for recognize in SLOT_OVERRIDES.get(key, ()):
            found = recognize(self, path, scope, node, index)
            if found is not None:
                return found
        slot = SLOTS.get(key, {}).get(index)
        if slot is not None:
            return self._slot(path, scope, node, index, slot)
        if path.reorder:
            return Finding("unknown", Role.UNKNOWN, f"{where} after a Slice/Concat")
        for recognize in PATTERNS.get(key, ()):
            found = recognize(self, path, scope, node, index)
            if found is not None:
                return found
        return self._fixed_input(path, scope, node, index)

    def _fixed_input(self, path: Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding:
        where = f"{node.op_type} input {index}"
        if _non_differentiable(
            node.domain, node.op_type, self.g.opsets.get(op_domain(node.domain), 1), index
        ):
            return Finding("constant", Role.CONSTANT, f"{where} (non-differentiable)")
        return Finding("unknown", Role.UNKNOWN, f"{where}{via(path)}")

    # -- pass-through ops ---------------------------------------------------------------------

    def _pass(self, path: Path, scope: Scope, node: onnx.NodeProto) -> list[Path] | None:
        op = node.op_type
        attrs = node_attrs(node)
        axes, shape = path.axes, path.shape
        if op in ("Identity", "Cast", "CastLike"):
            return [replace(path, scope=scope, value=node.output[0])]
        if op == "Transpose":
            order = transpose_order(attrs.get("perm"), len(axes))
            if order is None:
                return None
            new_axes = tuple(axes[p] for p in order)
            new_shape = tuple(shape[p] for p in order) if shape is not None else None
            return [path.moved(scope, node.output[0], f"Transpose(perm={order})", new_axes, new_shape)]
        if op in ("Squeeze", "Unsqueeze") and shape is None:
            # After a gate reorder only the rank is known; explicit axes still map.
            ranked = self._rank_only(scope, node, attrs, axes)
            if ranked is None:
                return None
            return [path.moved(scope, node.output[0], op, ranked, None)]
        if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            target = self._reshaped(scope, node, attrs, shape)
            if target is None:
                return None
            moved = map_reshape(axes, shape, target) if shape is not None else None
            if moved is None:
                return None
            step = f"{op}({list(shape or ())}→{list(target)})"
            return [path.moved(scope, node.output[0], step, moved, target)]
        if Trait.REORDERS_GATES in traits(op):
            # Slices and concatenations keep the rank and the meaning of every axis; the sizes
            # they change are the gate blocks the RNN slot splits anyway.
            outputs = [o for o in node.output if o]
            return [
                replace(path, scope=scope, value=out, shape=None, steps=(*path.steps, op), reorder=True)
                for out in outputs
            ]
        return None

    def _axes_operand(self, scope: Scope, node: onnx.NodeProto, attrs: dict[str, object]) -> list[int] | None:
        """Squeeze/Unsqueeze axes: an attribute before opset 13, input 1 since."""
        axes_attr = attrs.get("axes")
        if isinstance(axes_attr, list):
            return [int(a) for a in axes_attr]
        if len(node.input) > 1 and node.input[1]:
            return self.constant_ints(scope, node.input[1])
        return None

    def _rank_only(
        self, scope: Scope, node: onnx.NodeProto, attrs: dict[str, object], axes: Axes
    ) -> Axes | None:
        explicit = self._axes_operand(scope, node, attrs)
        if explicit is None:
            return None
        if node.op_type == "Squeeze":
            return squeeze_axes(axes, explicit)
        return unsqueeze_axes(axes, explicit)

    def _reshaped(
        self, scope: Scope, node: onnx.NodeProto, attrs: dict[str, object], shape: tuple[int, ...] | None
    ) -> tuple[int, ...] | None:
        if shape is None:
            return None
        op = node.op_type
        if op == "Flatten":
            return flatten_target(shape, int(attrs.get("axis", 1)))  # type: ignore[call-overload]
        if op == "Reshape":
            if len(node.input) < 2:
                return None
            spec = self.constant_ints(scope, node.input[1])
            if spec is None:
                return None
            return reshape_target(shape, spec, attrs.get("allowzero", 0))
        axes = self._axes_operand(scope, node, attrs)
        if axes is None and len(node.input) > 1 and node.input[1]:
            return None  # axes computed at run time
        if op == "Squeeze":
            return squeeze_target(shape, axes)
        if axes is None:  # Unsqueeze needs axes
            return None
        return unsqueeze_target(shape, axes)

    # -- terminal slots -----------------------------------------------------------------------

    def _slot(self, path: Path, scope: Scope, node: onnx.NodeProto, index: int, slot: Slot) -> Finding:
        op = node.op_type
        where = f"{op} input {index}{f' ({slot.what})' if slot.what else ''}{via(path)}"
        if path.reorder and Trait.RNN not in traits(op):
            return Finding("unknown", Role.UNKNOWN, f"{where}: a Slice/Concat not leading to an RNN")
        if slot.partner is not None:
            partner = node.input[slot.partner] if slot.partner < len(node.input) else ""
            if not partner or not self.is_dynamic(scope, partner):
                return Finding("unknown", Role.UNKNOWN, f"{where}, but its other operand is constant too")
        if slot.layout is None:
            return Finding("slot", slot.role, where, layer=self._layer(scope, node, index, slot))
        if path.shape is None and not path.reorder:
            return Finding("unknown", Role.UNKNOWN, f"{where}, with a shape netinit cannot follow")
        shape = path.shape if path.shape is not None else tuple(1 for _ in path.axes)

        def shape_of(other: int) -> tuple[int, ...] | None:
            if other >= len(node.input) or not node.input[other]:
                return None
            return self.weight_shape_through(scope, node.input[other]) or self.declared_shape(
                scope, node.input[other]
            )

        terminal = slot.layout(SlotContext(node, index, shape, node_attrs(node), shape_of))
        if terminal is None:
            return Finding("unknown", Role.UNKNOWN, f"{where}, with an unexpected rank {len(shape)}")
        if isinstance(terminal, str):
            return Finding("unknown", Role.UNKNOWN, f"{where}: {terminal}")
        return replace(mapped(path, slot.role, where, terminal), layer=self._layer(scope, node, index, slot))

    def _layer(self, scope: Scope, node: onnx.NodeProto, index: int, slot: Slot) -> Layer:
        """The op a slot belongs to; for a bias, the stored weight of that op: the nearest weight
        slot before the bias (Conv/Gemm B, MoE fc_k) that holds a stored tensor."""
        hidden = node_attrs(node).get("hidden_size")
        weight = None
        if slot.role is Role.BIAS:
            rows = SLOTS.get((op_domain(node.domain), node.op_type), {})
            for other in sorted(
                (i for i, s in rows.items() if s.role is Role.WEIGHT and i < index), reverse=True
            ):
                stored = self.stored_behind(scope, node.input[other]) if other < len(node.input) else None
                if stored is not None:
                    weight = stored.name
                    break
        return Layer(node.op_type, weight, hidden if isinstance(hidden, int) else None)

    def declared_shape(self, scope: Scope, value: str) -> tuple[int, ...] | None:
        """The shape declared for ``value`` (graph input, output or value_info), -1 for a
        dimension without a static size."""
        owner = scope.resolve(value)
        graph = owner.graph if owner is not None else None
        if graph is None:
            return None
        for info in (*graph.input, *graph.value_info, *graph.output):
            if info.name == value and info.type.HasField("tensor_type"):
                if not info.type.tensor_type.HasField("shape"):
                    return None
                dims = info.type.tensor_type.shape.dim
                return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        return None

    def stored_behind(self, scope: Scope, value: str) -> StoredTensor | None:
        """The stored tensor a value is, also through Identity, Cast, Transpose or DequantizeLinear."""
        if not value:
            return None
        owner = scope.resolve(value)
        stored = self.by_scope_value.get((id(owner), value)) if owner is not None else None
        if stored is not None:
            return stored
        found = self.producer(scope, value)
        if found is None or found[1].op_type not in ("Identity", "Cast", "Transpose", "DequantizeLinear"):
            return None
        return self.stored_behind(found[0], found[1].input[0])

    def weight_shape_through(self, scope: Scope, value: str) -> tuple[int, ...] | None:
        """Static shape of a weight operand, also when it reaches the op through a Transpose."""
        shape = self.stored_shape(scope, value)
        if shape is not None:
            return shape
        found = self.producer(scope, value)
        if found is None:
            return None
        owner, node = found
        if node.op_type in ("Identity", "Cast", "DequantizeLinear"):
            return self.weight_shape_through(owner, node.input[0])
        if node.op_type == "Transpose":
            inner = self.weight_shape_through(owner, node.input[0])
            perm = node_attrs(node).get("perm")
            if inner is None:
                return None
            order = list(perm) if isinstance(perm, list) else list(reversed(range(len(inner))))
            return tuple(inner[p] for p in order)
        return None
