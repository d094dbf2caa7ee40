"""Classify every stored tensor of an ONNX model from the graph's topology.

Per use, not per name (reference onnx.md §1): from each stored tensor walk forward through
pass-through ops (Identity, Cast, Transpose, Reshape, …), recording how its axes move, to a
terminal *slot* ``(op, input index, attributes)``; look the slot up in :data:`SLOTS`; compute
the layout on the terminal's axes and map it back onto the *stored* tensor's axes.  The roles
of all uses are merged: agreeing uses give one role (tied weights), disagreeing uses a
``CONFLICT``.

Stored tensors come from several places, each with a unique *scoped name*:

* main-graph initializers, sparse initializers, and Constant nodes keep their own name
  (a Constant node is named by its output);
* tensors in a subgraph (If/Loop/Scan bodies) are ``<node>/<attribute>::<name>``, with
  ``<node>`` the node's name or ``<op>_<index>`` when it has none, nested scopes joined by ``/``:
  ``If_0/then_branch::W``, ``Loop_3/body/If_1/else_branch::c``;
* Constant nodes in a function body are ``<domain>.<function>()::<name>``: a function is
  classified once, in its own namespace, whatever its call sites;
* main-graph inputs without an initializer that feed a parameter slot are listed with
  ``has_data=False`` (what ``export_params=False`` produces).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

from netinit_cli.dtypes import is_float, onnx_to_name
from netinit_cli.errors import InputError
from netinit_cli.model import (
    LINEAR_OUT_IN,
    MATRIX_IN_OUT,
    Layout,
    Param,
    Role,
    conv_layout,
    conv_transpose_layout,
)

MS = "com.microsoft"
ML = "ai.onnx.ml"

# Param.source values
INITIALIZER = "initializer"
CONSTANT_NODE = "constant_node"
SPARSE_INITIALIZER = "sparse_initializer"
GRAPH_INPUT = "graph_input"
SUBGRAPH_INITIALIZER = "subgraph_initializer"
FUNCTION_CONSTANT = "function_constant"


# --------------------------------------------------------------------------------------------
# Scopes and stored tensors
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Scope:
    """A graph (main graph, subgraph, or function body) and the names it defines."""

    prefix: str  # "" for the main graph
    nodes: Sequence[onnx.NodeProto]
    parent: Scope | None
    graph: onnx.GraphProto | None = None
    function: onnx.FunctionProto | None = None
    defined: set[str] = field(default_factory=set)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)

    def scoped(self, value: str) -> str:
        return f"{self.prefix}::{value}" if self.prefix else value

    def resolve(self, value: str) -> Scope | None:
        """The scope that defines ``value`` as seen from this scope (outer scopes included)."""
        scope: Scope | None = self
        while scope is not None:
            if value in scope.defined:
                return scope
            scope = scope.parent
        return None


@dataclass(eq=False)
class StoredTensor:
    """Where one stored tensor lives in the proto, so that it can be read and replaced."""

    name: str  # unique scoped name (Param.name)
    value: str  # the value name inside its own graph
    scope: Scope
    source: str
    elem_type: int
    shape: tuple[int, ...]  # -1 for a dimension without a static size (graph inputs only)
    tensor: TensorProto | None = None  # initializer, Constant `value`, or sparse `values`
    node: onnx.NodeProto | None = None  # the Constant node
    attribute: AttributeProto | None = None  # the Constant node's value attribute
    sparse: onnx.SparseTensorProto | None = None
    graph_input: onnx.ValueInfoProto | None = None
    ranked: bool = True  # False for a graph input whose type has no shape at all

    @property
    def dtype(self) -> str:
        return onnx_to_name(self.elem_type)

    @property
    def static(self) -> bool:
        return all(d >= 0 for d in self.shape)


def _node_label(node: onnx.NodeProto, index: int, taken: set[str]) -> str:
    label = node.name if node.name and node.name not in taken else f"{node.op_type}_{index}"
    taken.add(label)
    return label


def _join(prefix: str, part: str) -> str:
    return f"{prefix}/{part}" if prefix else part


class Graphs:
    """All scopes of a model and every stored tensor in them, with unique scoped names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.scopes: list[Scope] = []
        self.stored: list[StoredTensor] = []
        self.functions: dict[tuple[str, str], Scope] = {}
        self.opsets = {_domain(o.domain): o.version for o in model.opset_import}
        self._names: set[str] = set()
        self.main = self._add_graph(model.graph, "", None)
        for function in model.functions:
            prefix = f"{function.domain}.{function.name}()"
            scope = self._add_scope(Scope(prefix, function.node, None, function=function))
            scope.defined.update(function.input)
            self.functions[(_domain(function.domain), function.name)] = scope
            self._add_nodes(scope)

    def _unique(self, name: str) -> str:
        unique, count = name, 1
        while unique in self._names:
            count += 1
            unique = f"{name}#{count}"
        self._names.add(unique)
        return unique

    def _add_scope(self, scope: Scope) -> Scope:
        self.scopes.append(scope)
        return scope

    def _add_graph(self, graph: onnx.GraphProto, prefix: str, parent: Scope | None) -> Scope:
        scope = self._add_scope(Scope(prefix, graph.node, parent, graph=graph))
        initializer_names = {t.name for t in graph.initializer}
        scope.defined.update(vi.name for vi in graph.input)
        source = INITIALIZER if parent is None else SUBGRAPH_INITIALIZER
        for tensor in graph.initializer:
            scope.defined.add(tensor.name)
            self.stored.append(
                StoredTensor(
                    self._unique(scope.scoped(tensor.name)),
                    tensor.name,
                    scope,
                    source,
                    tensor.data_type,
                    tuple(tensor.dims),
                    tensor=tensor,
                )
            )
        for sparse in graph.sparse_initializer:
            scope.defined.add(sparse.values.name)
            self.stored.append(
                StoredTensor(
                    self._unique(scope.scoped(sparse.values.name)),
                    sparse.values.name,
                    scope,
                    SPARSE_INITIALIZER,
                    sparse.values.data_type,
                    tuple(sparse.dims),
                    tensor=sparse.values,
                    sparse=sparse,
                )
            )
        if parent is None:
            for vi in graph.input:
                if vi.name in initializer_names or not vi.type.HasField("tensor_type"):
                    continue
                tensor_type = vi.type.tensor_type
                dims = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else -1
                    for d in tensor_type.shape.dim
                )
                ranked = tensor_type.HasField("shape")
                self.stored.append(
                    StoredTensor(
                        self._unique(vi.name),
                        vi.name,
                        scope,
                        GRAPH_INPUT,
                        tensor_type.elem_type,
                        dims if ranked else (-1,),
                        graph_input=vi,
                        ranked=ranked,
                    )
                )
        self._add_nodes(scope)
        return scope

    def _add_nodes(self, scope: Scope) -> None:
        taken: set[str] = set()
        for index, node in enumerate(scope.nodes):
            for output in node.output:
                if output:
                    scope.defined.add(output)
                    scope.producer[output] = node
            if node.op_type == "Constant" and _domain(node.domain) == "" and node.output:
                self._add_constant(scope, node)
            label = None
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.type == AttributeProto.GRAPH else []
                if attribute.type == AttributeProto.GRAPHS:
                    subgraphs = list(attribute.graphs)
                for number, subgraph in enumerate(subgraphs):
                    label = label or _node_label(node, index, taken)
                    part = attribute.name if len(subgraphs) == 1 else f"{attribute.name}[{number}]"
                    self._add_graph(subgraph, _join(_join(scope.prefix, label), part), scope)

    def _add_constant(self, scope: Scope, node: onnx.NodeProto) -> None:
        if not node.attribute:
            return
        attribute = node.attribute[0]
        value = node.output[0]
        source = FUNCTION_CONSTANT if scope.function is not None else CONSTANT_NODE
        tensor: TensorProto | None = None
        sparse = None
        if attribute.type == AttributeProto.TENSOR:
            tensor = attribute.t
            elem_type, shape = tensor.data_type, tuple(tensor.dims)
        elif attribute.type == AttributeProto.SPARSE_TENSOR:
            sparse = attribute.sparse_tensor
            tensor = sparse.values
            elem_type, shape = tensor.data_type, tuple(sparse.dims)
        elif attribute.type == AttributeProto.FLOAT:
            elem_type, shape = TensorProto.FLOAT, ()
        elif attribute.type == AttributeProto.FLOATS:
            elem_type, shape = TensorProto.FLOAT, (len(attribute.floats),)
        elif attribute.type == AttributeProto.INT:
            elem_type, shape = TensorProto.INT64, ()
        elif attribute.type == AttributeProto.INTS:
            elem_type, shape = TensorProto.INT64, (len(attribute.ints),)
        elif attribute.type == AttributeProto.STRING:
            elem_type, shape = TensorProto.STRING, ()
        elif attribute.type == AttributeProto.STRINGS:
            elem_type, shape = TensorProto.STRING, (len(attribute.strings),)
        else:
            return
        self.stored.append(
            StoredTensor(
                self._unique(scope.scoped(value)),
                value,
                scope,
                source,
                elem_type,
                shape,
                tensor=tensor,
                node=node,
                attribute=attribute,
                sparse=sparse,
            )
        )

    def iter_tensors(self) -> Iterator[TensorProto]:
        """Every TensorProto that may carry external data (for validation and rewriting)."""
        for stored in self.stored:
            if stored.tensor is not None:
                yield stored.tensor
            if stored.sparse is not None:
                yield stored.sparse.indices
        for scope in self.scopes:
            for node in scope.nodes:
                if node.op_type == "Constant":
                    continue
                for attribute in node.attribute:
                    if attribute.type == AttributeProto.TENSOR:
                        yield attribute.t
                    elif attribute.type == AttributeProto.TENSORS:
                        yield from attribute.tensors


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


# Every field of a TensorProto that can hold its values.
DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def has_data(tensor: TensorProto) -> bool:
    """False for a tensor whose data is absent: no bytes at all for a non-empty shape."""
    if math.prod(tensor.dims) == 0 or tensor.data_location == TensorProto.EXTERNAL:
        return True
    return any(len(getattr(tensor, name)) for name in DATA_FIELDS)


# --------------------------------------------------------------------------------------------
# The slot table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotContext:
    """What a layout rule may look at: the terminal node and the value's shape there."""

    node: onnx.NodeProto
    index: int
    shape: tuple[int, ...]
    attrs: dict[str, object]
    # Static shape of another input of the node (stored tensors and declared graph values).
    shape_of: Callable[[int], tuple[int, ...] | None] = lambda index: None


# A layout, None for an unexpected rank, or the reason the layout cannot be decided.
LayoutRule = Callable[[SlotContext], Layout | str | None]


@dataclass(frozen=True)
class Slot:
    """One row of the slot table: input ``index`` of ``op`` is a ``role`` with this layout."""

    role: Role
    layout: LayoutRule | None = None
    partner: int | None = None  # this input is a weight only if that input is dynamic
    what: str = ""  # name of the input in the op's spec, for the reason


def _conv_weight(ctx: SlotContext) -> Layout:
    return conv_layout(len(ctx.shape), int(_int_attr(ctx, "group", 1)))


def _conv_transpose_weight(ctx: SlotContext) -> Layout:
    return conv_transpose_layout(len(ctx.shape), int(_int_attr(ctx, "group", 1)))


def _gemm_b(ctx: SlotContext) -> Layout:
    return LINEAR_OUT_IN if _int_attr(ctx, "transB", 0) else MATRIX_IN_OUT


def _gemm_a(ctx: SlotContext) -> Layout:
    # A is [M, K] (rows are outputs): out = axis 0.  With transA it is stored [K, M].
    if _int_attr(ctx, "transA", 0):
        return Layout((0,), (1,), label="[in, out]")
    return Layout((1,), (0,), torch_perm=None, label="[out, in]")


def _matmul_right(ctx: SlotContext) -> Layout | None:
    """``x @ W``: W is ``[…, K, N]`` — the leading axes are batches (heads, experts)."""
    rank = len(ctx.shape)
    if rank < 2:
        return Layout((0,), (), label="[in]") if rank == 1 else None
    if _int_attr(ctx, "transB", 0):  # FusedMatMul
        return Layout((rank - 1,), (rank - 2,), tuple(range(rank - 2)), label=_batched("[out, in]", rank))
    return Layout(
        (rank - 2,), (rank - 1,), tuple(range(rank - 2)), torch_perm=(1, 0), label=_batched("[in, out]", rank)
    )


def _batched(label: str, rank: int) -> str:
    return label if rank == 2 else "[…, " + label[1:]


def _matmul_left(ctx: SlotContext) -> Layout | None:
    """``W @ x``: W is ``[…, M, K]``."""
    rank = len(ctx.shape)
    if rank < 2:
        return Layout((0,), (), label="[in]") if rank == 1 else None
    return Layout((rank - 1,), (rank - 2,), tuple(range(rank - 2)), label=_batched("[out, in]", rank))


def _rnn_layout(gates: int, recurrent: bool) -> LayoutRule:
    def rule(ctx: SlotContext) -> Layout:
        what = "H" if recurrent else "in"
        label = f"[dirs, {gates}H, {what}]" if gates > 1 else f"[dirs, H, {what}]"
        return Layout((2,), (1,), (0,), out_divisor=gates, blocks=gates, torch_perm=None, label=label)

    return rule


def _rnn_bias(gates: int) -> LayoutRule:
    def rule(ctx: SlotContext) -> Layout:
        blocks = 2 * gates
        return Layout(
            (), (1,), (0,), out_divisor=blocks, blocks=blocks, label=f"[dirs, {blocks}H] = [Wb, Rb]"
        )

    return rule


def _peephole(ctx: SlotContext) -> Layout:
    return Layout((), (1,), (0,), out_divisor=3, blocks=3, label="[dirs, 3H] (i, o, f)")


def _embedding(ctx: SlotContext) -> Layout:
    return Layout((1,), (0,), label="[vocab, dim]")


def _attention_weight(ctx: SlotContext) -> Layout:
    return replace(MATRIX_IN_OUT, label="[in, q+k+v]")


# com.microsoft MoE: fc1 (input 2), fc2 (4), fc3 (6).  ORT ≥ 1.22 stores per-expert [out, in]
# (fc1 [E, fusion·inter, hidden], fc2 [E, hidden, inter]); older releases stored [E, in, out].
_MOE_FC1, _MOE_FC2 = 2, 4


def _moe_weight(fc: int) -> LayoutRule:
    def rule(ctx: SlotContext) -> Layout | str | None:
        if len(ctx.shape) != 3:
            return None
        fc1, fc2 = ctx.shape_of(_MOE_FC1), ctx.shape_of(_MOE_FC2)
        if fc1 is None or fc2 is None or len(fc1) != 3 or len(fc2) != 3 or min(*fc1, *fc2) <= 0:
            return "MoE fc1/fc2 weights without static [experts, ·, ·] shapes"
        data = ctx.shape_of(0)
        hidden = data[-1] if data and data[-1] > 0 else None
        # fusion = fc1's inter axis over fc2's (2 for a fused SwiGLU gate+up).
        orientations = {
            "[experts, out, in]": fc1[2] == fc2[1] and fc2[2] > 0 and fc1[1] % fc2[2] == 0,
            "[experts, in, out]": fc1[1] == fc2[2] and fc2[1] > 0 and fc1[2] % fc2[1] == 0,
        }
        if hidden is not None:
            orientations["[experts, out, in]"] &= fc1[2] == hidden
            orientations["[experts, in, out]"] &= fc1[1] == hidden
        found = [label for label, ok in orientations.items() if ok]
        if len(found) != 1:
            return (
                f"fc1 {list(fc1)} and fc2 {list(fc2)} fit "
                f"{'both' if found else 'neither'} [experts, out, in] and [experts, in, out]"
                + ("" if hidden is not None else " (hidden size unknown)")
            )
        out_in = found[0] == "[experts, out, in]"
        fusion = 1
        if fc == _MOE_FC1:
            fusion = fc1[1] // fc2[2] if out_in else fc1[2] // fc2[1]
        if out_in:
            return Layout((2,), (1,), (0,), out_divisor=fusion, blocks=fusion, label=found[0])
        return Layout((1,), (2,), (0,), out_divisor=fusion, blocks=fusion, torch_perm=(1, 0), label=found[0])

    return rule


def _rnn_slots(gates: int, peephole: bool) -> dict[int, Slot]:
    slots = {
        1: Slot(Role.WEIGHT, _rnn_layout(gates, False), what="W"),
        2: Slot(Role.RECURRENT, _rnn_layout(gates, True), what="R"),
        3: Slot(Role.BIAS, _rnn_bias(gates), what="B"),
        4: Slot(Role.CONSTANT, what="sequence_lens"),
        5: Slot(Role.CONSTANT, what="initial_h (initial state)"),
    }
    if peephole:
        slots[6] = Slot(Role.CONSTANT, what="initial_c (initial state)")
        slots[7] = Slot(Role.BIAS, _peephole, what="P (peephole)")
    return slots


_QUANTIZED_OPS = frozenset(
    {
        ("", "QuantizeLinear"),
        ("", "DequantizeLinear"),
        ("", "DynamicQuantizeLinear"),
        ("", "QLinearConv"),
        ("", "QLinearMatMul"),
        ("", "MatMulInteger"),
        ("", "ConvInteger"),
        (MS, "QuantizeLinear"),
        (MS, "DequantizeLinear"),
        (MS, "QGemm"),
        (MS, "QAttention"),
        (MS, "MatMulNBits"),
        (MS, "MatMulBnb4"),
        (MS, "DynamicQuantizeLSTM"),
        (MS, "DynamicQuantizeMatMul"),
        (MS, "MatMulIntegerToFloat"),
        (MS, "GatherBlockQuantized"),
        (MS, "QLinearAdd"),
        (MS, "QLinearMul"),
        (MS, "QLinearConcat"),
        (MS, "QLinearSigmoid"),
        (MS, "QLinearLeakyRelu"),
        (MS, "QLinearGlobalAveragePool"),
        (MS, "QLinearAveragePool"),
        (MS, "QLinearSoftmax"),
        (MS, "QOrderedMatMul"),
        (MS, "QEmbedLayerNormalization"),
    }
)

# (domain, op) -> {input index: Slot}.  Ops whose every stored input is quantized are in
# _QUANTIZED_OPS; Add/Sum (bias), Mul (decomposed norm scale), Gather (embedding) and Einsum
# need the graph around them and are handled by the walk.
SLOTS: dict[tuple[str, str], dict[int, Slot]] = {
    ("", "Conv"): {1: Slot(Role.WEIGHT, _conv_weight, what="W"), 2: Slot(Role.BIAS, what="B")},
    ("", "ConvTranspose"): {
        1: Slot(Role.WEIGHT, _conv_transpose_weight, what="W"),
        2: Slot(Role.BIAS, what="B"),
    },
    ("", "Gemm"): {
        0: Slot(Role.WEIGHT, _gemm_a, partner=1, what="A"),
        1: Slot(Role.WEIGHT, _gemm_b, partner=0, what="B"),
        2: Slot(Role.BIAS, what="C"),
    },
    ("", "MatMul"): {
        0: Slot(Role.WEIGHT, _matmul_left, partner=1, what="A"),
        1: Slot(Role.WEIGHT, _matmul_right, partner=0, what="B"),
    },
    ("", "BatchNormalization"): {
        1: Slot(Role.NORM_SCALE, what="scale"),
        2: Slot(Role.NORM_SHIFT, what="B"),
        3: Slot(Role.RUNNING_MEAN, what="input_mean"),
        4: Slot(Role.RUNNING_VAR, what="input_var"),
    },
    ("", "InstanceNormalization"): {
        1: Slot(Role.NORM_SCALE, what="scale"),
        2: Slot(Role.NORM_SHIFT, what="B"),
    },
    ("", "LayerNormalization"): {
        1: Slot(Role.NORM_SCALE, what="Scale"),
        2: Slot(Role.NORM_SHIFT, what="B"),
    },
    ("", "GroupNormalization"): {
        1: Slot(Role.NORM_SCALE, what="scale"),
        2: Slot(Role.NORM_SHIFT, what="bias"),
    },
    ("", "RMSNormalization"): {1: Slot(Role.NORM_SCALE, what="scale")},
    ("", "SimplifiedLayerNormalization"): {1: Slot(Role.NORM_SCALE, what="scale")},
    ("", "LSTM"): _rnn_slots(4, peephole=True),
    ("", "GRU"): _rnn_slots(3, peephole=False),
    ("", "RNN"): _rnn_slots(1, peephole=False),
    ("", "PRelu"): {1: Slot(Role.PRELU_SLOPE, what="slope")},
    (MS, "Attention"): {
        1: Slot(Role.WEIGHT, _attention_weight, what="weights"),
        2: Slot(Role.BIAS, what="bias"),
    },
    (MS, "MultiHeadAttention"): {3: Slot(Role.BIAS, what="bias")},
    (MS, "PackedMultiHeadAttention"): {3: Slot(Role.BIAS, what="bias")},
    (MS, "DecoderMaskedMultiHeadAttention"): {10: Slot(Role.BIAS, what="bias")},
    (MS, "GroupQueryAttention"): {
        7: Slot(Role.CONSTANT, what="cos_cache"),
        8: Slot(Role.CONSTANT, what="sin_cache"),
        14: Slot(Role.NORM_SCALE, what="q_norm_weight"),
        15: Slot(Role.NORM_SCALE, what="k_norm_weight"),
    },
    (MS, "SkipLayerNormalization"): {
        2: Slot(Role.NORM_SCALE, what="gamma"),
        3: Slot(Role.NORM_SHIFT, what="beta"),
        4: Slot(Role.BIAS, what="bias"),
    },
    (MS, "SkipSimplifiedLayerNormalization"): {
        2: Slot(Role.NORM_SCALE, what="gamma"),
        3: Slot(Role.BIAS, what="bias"),
    },
    (MS, "SimplifiedLayerNormalization"): {1: Slot(Role.NORM_SCALE, what="scale")},
    (MS, "LayerNormalization"): {
        1: Slot(Role.NORM_SCALE, what="Scale"),
        2: Slot(Role.NORM_SHIFT, what="B"),
    },
    (MS, "EmbedLayerNormalization"): {
        2: Slot(Role.EMBEDDING, _embedding, what="word_embedding"),
        3: Slot(Role.EMBEDDING, _embedding, what="position_embedding"),
        4: Slot(Role.EMBEDDING, _embedding, what="segment_embedding"),
        5: Slot(Role.NORM_SCALE, what="gamma"),
        6: Slot(Role.NORM_SHIFT, what="beta"),
    },
    (MS, "FusedConv"): {1: Slot(Role.WEIGHT, _conv_weight, what="W"), 2: Slot(Role.BIAS, what="B")},
    (MS, "FusedGemm"): {
        0: Slot(Role.WEIGHT, _gemm_a, partner=1, what="A"),
        1: Slot(Role.WEIGHT, _gemm_b, partner=0, what="B"),
        2: Slot(Role.BIAS, what="C"),
    },
    (MS, "FusedMatMul"): {
        0: Slot(Role.WEIGHT, _matmul_left, partner=1, what="A"),
        1: Slot(Role.WEIGHT, _matmul_right, partner=0, what="B"),
    },
    (MS, "MoE"): {
        2: Slot(Role.WEIGHT, _moe_weight(_MOE_FC1), what="fc1_experts_weights"),
        3: Slot(Role.BIAS, what="fc1_experts_bias"),
        4: Slot(Role.WEIGHT, _moe_weight(_MOE_FC2), what="fc2_experts_weights"),
        5: Slot(Role.BIAS, what="fc2_experts_bias"),
        6: Slot(Role.WEIGHT, _moe_weight(6), what="fc3_experts_weights"),
        7: Slot(Role.BIAS, what="fc3_experts_bias"),
    },
    # QMoE: weights, scales and zero points are quantized (every other stored input); the
    # float biases stay biases.
    (MS, "QMoE"): {
        4: Slot(Role.BIAS, what="fc1_experts_bias"),
        7: Slot(Role.BIAS, what="fc2_experts_bias"),
        10: Slot(Role.BIAS, what="fc3_experts_bias"),
    },
    (MS, "BiasGelu"): {1: Slot(Role.BIAS, what="bias")},
    (MS, "FastGelu"): {1: Slot(Role.BIAS, what="bias")},
    (MS, "BiasAdd"): {1: Slot(Role.BIAS, what="bias")},
    (MS, "BiasSplitGelu"): {1: Slot(Role.BIAS, what="bias")},
}

# Ops whose stored inputs are quantized except those in their SLOTS row.
_PARTLY_QUANTIZED_OPS = frozenset({(MS, "QMoE")})
# Ops a parameter passes through unchanged in meaning; the walk records what they do to its axes.
_PASS_THROUGH = frozenset(
    {"Identity", "Cast", "CastLike", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
)
# Gate reorder (TorchScript without folding): followed only when the path ends in an RNN slot.
_GATE_REORDER = frozenset({"Slice", "Split", "Concat"})
_RNN_OPS = frozenset({"LSTM", "GRU", "RNN"})
# Uses that read only a tensor's shape: they say nothing about its role.
_SHAPE_ONLY = frozenset({"Shape", "Size"})
# Ops whose output is a linear map of their input: an Add after them may hold a bias.
_LINEAR_OPS = frozenset({"MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose", "FusedConv", "FusedMatMul"})
_LINEAR_QUANT_OPS = frozenset({"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "MatMulNBits"})
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Identity", "CastLike"})
# Names that suggest a fixed buffer: warned about, never decided on (onnx.md §16.9).
_BUFFER_NAME = re.compile(
    r"buffer|running_|num_batches|inv_freq|position_ids|cos_cached|sin_cached|mask", re.I
)

_NON_DIFFERENTIABLE = onnx.defs.OpSchema.DifferentiationCategory.NonDifferentiable


def _int_attr(ctx: SlotContext, name: str, default: int) -> int:
    value = ctx.attrs.get(name, default)
    return int(value) if isinstance(value, int) else default


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for attribute in node.attribute:
        if attribute.type == AttributeProto.INT:
            out[attribute.name] = attribute.i
        elif attribute.type == AttributeProto.INTS:
            out[attribute.name] = list(attribute.ints)
        elif attribute.type == AttributeProto.STRING:
            out[attribute.name] = attribute.s.decode("utf-8", "replace")
        elif attribute.type == AttributeProto.FLOAT:
            out[attribute.name] = attribute.f
    return out


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


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What one use of a stored tensor says about it."""

    kind: str  # "slot", "quantized", "constant", "unknown"
    role: Role
    reason: str
    layout: Layout | None = None
    fans: tuple[int, int] | None = None


Axes = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class _Path:
    scope: Scope
    value: str
    # For each axis of the value: the stored axes it came from (several after a merge, none
    # for an inserted unit axis).
    axes: Axes
    shape: tuple[int, ...] | None
    steps: tuple[str, ...]
    rank: int  # the stored tensor's rank
    reorder: bool = False


class Classifier:
    def __init__(self, graphs: Graphs, data_inputs: set[str]) -> None:
        self.g = graphs
        self.opset = graphs.opsets.get("", 1)
        self.by_scope_value: dict[tuple[int, str], StoredTensor] = {
            (id(s.scope), s.value): s for s in graphs.stored
        }
        self.uses: dict[tuple[int, str], list[tuple[Scope, onnx.NodeProto, int]]] = {}
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
        start = _Path(
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

    def _step(self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | list[_Path]:
        op, domain = node.op_type, _domain(node.domain)
        where = f"{op} input {index}"
        if (domain, op) in _QUANTIZED_OPS or (
            (domain, op) in _PARTLY_QUANTIZED_OPS and index not in SLOTS.get((domain, op), {})
        ):
            return Finding("quantized", Role.QUANTIZED, f"{where} (quantized)")
        if op in _SHAPE_ONLY:
            return []
        function = self.g.functions.get((domain, op))
        if function is not None and function.function is not None:
            if index < len(function.function.input):
                inner = function.function.input[index]
                step = f"{op}() as {inner}"
                return [replace(path, scope=function, value=inner, steps=(*path.steps, step))]
            return Finding("unknown", Role.UNKNOWN, f"{where} (no such function input)")
        if domain == "" and (op in _PASS_THROUGH or op in _GATE_REORDER):
            if index != 0 and op != "Concat":  # shapes, axes, starts…: not the data operand
                return self._fixed_input(path, scope, node, index)
            moved = self._pass(path, scope, node, index)
            if moved is not None:
                return moved
            return Finding("unknown", Role.UNKNOWN, f"{where} (cannot follow its axes)")
        if (
            op == "InstanceNormalization"
            and domain == ""
            and index in (1, 2)
            and self._inside_groupnorm(scope, node)
        ):
            reason = (
                f"{where} inside a decomposed GroupNorm (its learnable scale/shift are the Mul/Add after it)"
            )
            return Finding("constant", Role.CONSTANT, reason)
        slots = SLOTS.get((domain, op))
        if slots is not None and index in slots:
            return self._slot(path, scope, node, index, slots[index])
        if path.reorder:
            return Finding("unknown", Role.UNKNOWN, f"{where} after a Slice/Concat")
        if domain == "" and op in ("Add", "Sum"):
            bias = self._bias(path, scope, node, index)
            if bias is not None:
                return bias
        if domain == "" and op == "Mul" and self._dequant_scale(scope, node):
            return Finding("quantized", Role.QUANTIZED, f"Mul input {index} (dynamic-quantization scale)")
        if domain == "" and op == "Mul":
            norm = self._norm_affine(path, scope, node, index, scale=True)
            if norm is not None:
                return norm
        if domain == "" and op == "Add":
            norm = self._norm_affine(path, scope, node, index, scale=False)
            if norm is not None:
                return norm
        if domain == "" and op == "Gather" and index == 0:
            return self._gather(path, scope, node)
        if domain == "" and op == "Einsum":
            return self._einsum(path, scope, node, index)
        return self._fixed_input(path, scope, node, index)

    def _dequant_scale(self, scope: Scope, mul: onnx.NodeProto) -> bool:
        """Is this Mul part of dynamic dequantization (``Cast(MatMulInteger) * (x_scale * w_scale)``)?
        Its float operands are quantization scales, not learnable."""
        quant_sources = _LINEAR_QUANT_OPS | {"DynamicQuantizeLinear"}

        def from_quant(owner: Scope, value: str) -> bool:
            found = self.producer(owner, value)
            while found is not None and found[1].op_type == "Cast":
                found = self.producer(found[0], found[1].input[0])
            return found is not None and found[1].op_type in quant_sources

        if any(from_quant(scope, v) for v in mul.input if v):
            return True
        for owner, user, _ in self.uses.get((id(scope), mul.output[0]), []):
            if user.op_type == "Mul" and any(from_quant(owner, v) for v in user.input if v):
                return True
        return False

    def _inside_groupnorm(self, scope: Scope, node: onnx.NodeProto) -> bool:
        """GroupNorm below opset 18: Reshape([0, G, -1]) → InstanceNormalization → Reshape."""
        before = self.producer(scope, node.input[0])
        after = self.uses.get((id(scope), node.output[0]), [])
        return (
            before is not None
            and before[1].op_type == "Reshape"
            and bool(after)
            and all(use.op_type == "Reshape" for _, use, _ in after)
        )

    def _fixed_input(self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding:
        where = f"{node.op_type} input {index}"
        if _non_differentiable(node.domain, node.op_type, self.g.opsets.get(_domain(node.domain), 1), index):
            return Finding("constant", Role.CONSTANT, f"{where} (non-differentiable)")
        return Finding("unknown", Role.UNKNOWN, f"{where}{_via(path)}")

    # -- pass-through ops ---------------------------------------------------------------------

    def _pass(self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int) -> list[_Path] | None:
        op = node.op_type
        attrs = _attrs(node)
        axes, shape = path.axes, path.shape
        if op in ("Identity", "Cast", "CastLike"):
            return [replace(path, scope=scope, value=node.output[0])]
        if op == "Transpose":
            perm = attrs.get("perm")
            rank = len(axes)
            order = list(perm) if isinstance(perm, list) else list(reversed(range(rank)))
            if sorted(order) != list(range(rank)):
                return None
            new_axes = tuple(axes[p] for p in order)
            new_shape = tuple(shape[p] for p in order) if shape is not None else None
            step = f"Transpose(perm={order})"
            return [
                replace(
                    path,
                    scope=scope,
                    value=node.output[0],
                    axes=new_axes,
                    shape=new_shape,
                    steps=(*path.steps, step),
                )
            ]
        if op in ("Squeeze", "Unsqueeze") and shape is None:
            # After a gate reorder only the rank is known; explicit axes still map.
            ranked = self._rank_only(scope, node, attrs, axes)
            if ranked is None:
                return None
            return [replace(path, scope=scope, value=node.output[0], axes=ranked, steps=(*path.steps, op))]
        if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            target = self._reshaped(scope, node, attrs, shape)
            if target is None:
                return None
            mapped = _map_reshape(axes, shape, target) if shape is not None else None
            if mapped is None:
                return None
            step = f"{op}({list(shape or ())}→{list(target)})"
            return [
                replace(
                    path,
                    scope=scope,
                    value=node.output[0],
                    axes=mapped,
                    shape=target,
                    steps=(*path.steps, step),
                )
            ]
        if op in _GATE_REORDER:
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
            drop = {a + len(axes) if a < 0 else a for a in explicit}
            return tuple(a for i, a in enumerate(axes) if i not in drop)
        rank = len(axes) + len(explicit)
        out: list[tuple[int, ...]] = list(axes)
        for a in sorted(a + rank if a < 0 else a for a in explicit):
            out.insert(a, ())
        return tuple(out)

    def _reshaped(
        self, scope: Scope, node: onnx.NodeProto, attrs: dict[str, object], shape: tuple[int, ...] | None
    ) -> tuple[int, ...] | None:
        if shape is None:
            return None
        op = node.op_type
        if op == "Flatten":
            axis = int(attrs.get("axis", 1))  # type: ignore[call-overload]
            axis = axis + len(shape) if axis < 0 else axis
            return (math.prod(shape[:axis]), math.prod(shape[axis:]))
        if op == "Reshape":
            if len(node.input) < 2:
                return None
            spec = self.constant_ints(scope, node.input[1])
            if spec is None:
                return None
            allowzero = attrs.get("allowzero", 0)
            dims = [
                shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(spec)
            ]
            if dims.count(-1) == 1:
                known = math.prod(d for d in dims if d != -1)
                if known == 0:
                    return None
                dims[dims.index(-1)] = math.prod(shape) // known
            if any(d < 0 for d in dims) or math.prod(dims) != math.prod(shape):
                return None
            return tuple(dims)
        axes = self._axes_operand(scope, node, attrs)
        if axes is None and len(node.input) > 1 and node.input[1]:
            return None  # axes computed at run time
        if op == "Squeeze":
            rank = len(shape)
            drop = (
                {a + rank if a < 0 else a for a in axes}
                if axes
                else {i for i, d in enumerate(shape) if d == 1}
            )
            return tuple(d for i, d in enumerate(shape) if i not in drop)
        if axes is None:  # Unsqueeze needs axes
            return None
        rank = len(shape) + len(axes)
        insert = sorted(a + rank if a < 0 else a for a in axes)
        dims = list(shape)
        for a in insert:
            dims.insert(a, 1)
        return tuple(dims)

    # -- terminal slots -----------------------------------------------------------------------

    def _slot(self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int, slot: Slot) -> Finding:
        op = node.op_type
        where = f"{op} input {index}{f' ({slot.what})' if slot.what else ''}{_via(path)}"
        if path.reorder and op not in _RNN_OPS:
            return Finding("unknown", Role.UNKNOWN, f"{where}: a Slice/Concat not leading to an RNN")
        if slot.partner is not None:
            partner = node.input[slot.partner] if slot.partner < len(node.input) else ""
            if not partner or not self.is_dynamic(scope, partner):
                return Finding("unknown", Role.UNKNOWN, f"{where}, but its other operand is constant too")
        if slot.layout is None:
            return Finding("slot", slot.role, where)
        if path.shape is None and not path.reorder:
            return Finding("unknown", Role.UNKNOWN, f"{where}, with a shape netinit cannot follow")
        shape = path.shape if path.shape is not None else tuple(1 for _ in path.axes)

        def shape_of(other: int) -> tuple[int, ...] | None:
            if other >= len(node.input) or not node.input[other]:
                return None
            return self._weight_shape_through(scope, node.input[other]) or self.declared_shape(
                scope, node.input[other]
            )

        terminal = slot.layout(SlotContext(node, index, shape, _attrs(node), shape_of))
        if terminal is None:
            return Finding("unknown", Role.UNKNOWN, f"{where}, with an unexpected rank {len(shape)}")
        if isinstance(terminal, str):
            return Finding("unknown", Role.UNKNOWN, f"{where}: {terminal}")
        return self._mapped(path, slot.role, where, terminal)

    def _mapped(self, path: _Path, role: Role, where: str, terminal: Layout) -> Finding:
        """A slot finding with the terminal layout carried back to the stored axes, or UNKNOWN
        when a reshape on the way makes that ambiguous."""
        layout = _map_layout(terminal, path.axes, path.rank, bool(path.steps))
        if isinstance(layout, str):
            return Finding("unknown", Role.UNKNOWN, f"{where}: {layout}")
        return Finding("slot", role, where, layout)

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

    def _linear_producer(self, scope: Scope, value: str) -> tuple[Scope, onnx.NodeProto] | None:
        """The linear op that computes ``value``, looking through reshapes, casts and the
        dynamic-quantization ``MatMulInteger → Cast → Mul(scale)``."""
        found = self.producer(scope, value)
        for _ in range(8):
            if found is None:
                return None
            owner, node = found
            if node.op_type in _LINEAR_OPS or node.op_type in _LINEAR_QUANT_OPS:
                return found
            if node.op_type in _SHAPE_OPS and node.input:
                found = self.producer(owner, node.input[0])
                continue
            if node.op_type == "Mul":
                for operand in node.input:
                    inner = self.producer(owner, operand)
                    while inner is not None and inner[1].op_type == "Cast":
                        inner = self.producer(inner[0], inner[1].input[0])
                    if inner is not None and inner[1].op_type in _LINEAR_QUANT_OPS:
                        return inner
            return None
        return None

    def _bias(self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding | None:
        shape = path.shape
        if shape is None:
            return None
        for other_index, other in enumerate(node.input):
            if other_index == index or not other:
                continue
            found = self._linear_producer(scope, other)
            if found is None:
                continue
            owner, linear = found
            width, channel_first = self._output_width(owner, linear)
            if _broadcasts_as_bias(shape, width, channel_first):
                return Finding("slot", Role.BIAS, f"{node.op_type} input {index} after {linear.op_type}")
        return None

    def _output_width(self, scope: Scope, node: onnx.NodeProto) -> tuple[int | None, int | None]:
        """(number of outputs N, rank of a Conv output or None for last-axis outputs)."""
        op, attrs = node.op_type, _attrs(node)
        if op in ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose"):
            weight_index = 3 if op == "QLinearConv" else 1
            weight = (
                self.stored_shape(scope, node.input[weight_index]) if len(node.input) > weight_index else None
            )
            if weight is None:
                return None, None
            if op == "ConvTranspose":
                return weight[1] * int(attrs.get("group", 1)), len(weight)  # type: ignore[call-overload]
            return weight[0], len(weight)
        if op in ("Gemm",):
            weight = self.stored_shape(scope, node.input[1])
            if weight is None or len(weight) != 2:
                return None, None
            return (weight[0] if attrs.get("transB", 0) else weight[1]), None
        if op in ("MatMul", "FusedMatMul", "MatMulInteger"):
            weight = self._weight_shape_through(scope, node.input[1])
            if weight is None or len(weight) < 1:
                return None, None
            if op == "FusedMatMul" and attrs.get("transB", 0):
                return weight[-2], None
            return weight[-1], None
        if op == "QLinearMatMul":
            weight = self.stored_shape(scope, node.input[3])
            return (weight[-1] if weight else None), None
        return None, None

    def _weight_shape_through(self, scope: Scope, value: str) -> tuple[int, ...] | None:
        """Static shape of a weight operand, also when it reaches the op through a Transpose."""
        shape = self.stored_shape(scope, value)
        if shape is not None:
            return shape
        found = self.producer(scope, value)
        if found is None:
            return None
        owner, node = found
        if node.op_type in ("Identity", "Cast", "DequantizeLinear"):
            return self._weight_shape_through(owner, node.input[0])
        if node.op_type == "Transpose":
            inner = self._weight_shape_through(owner, node.input[0])
            perm = _attrs(node).get("perm")
            if inner is None:
                return None
            order = list(perm) if isinstance(perm, list) else list(reversed(range(len(inner))))
            return tuple(inner[p] for p in order)
        return None

    def _norm_affine(
        self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int, *, scale: bool
    ) -> Finding | None:
        """``Mul(x̂, scale)`` / ``Add(·, shift)`` after a decomposed normalization (§5)."""
        if len(node.input) != 2:
            return None
        other = node.input[1 - index]
        if scale and self.is_dynamic(scope, other) and self._normalized(scope, other):
            return Finding("slot", Role.NORM_SCALE, f"Mul input {index} after a decomposed normalization")
        if not scale and self.is_dynamic(scope, other):
            found = self._skip_shape(scope, other)
            if found is not None and found[1].op_type == "Mul" and len(found[1].input) == 2:
                mul_owner, mul = found
                for operand in mul.input:
                    if not self.is_dynamic(mul_owner, operand):
                        partner = mul.input[1] if operand == mul.input[0] else mul.input[0]
                        if self._normalized(mul_owner, partner):
                            reason = f"Add input {index} after a decomposed normalization's scale"
                            return Finding("slot", Role.NORM_SHIFT, reason)
            if self._normalized(scope, other):
                return Finding("slot", Role.NORM_SHIFT, f"Add input {index} after a decomposed normalization")
        return None

    def _skip_shape(self, scope: Scope, value: str) -> tuple[Scope, onnx.NodeProto] | None:
        found = self.producer(scope, value)
        while found is not None and found[1].op_type in (
            "Cast",
            "Identity",
            "Reshape",
            "Unsqueeze",
            "Squeeze",
        ):
            found = self.producer(found[0], found[1].input[0])
        return found

    def _normalized(self, scope: Scope, value: str) -> bool:
        """Is ``value`` a normalized activation: Div/Mul by Reciprocal(Sqrt(ReduceMean(…)+eps)),
        or the Reshape→InstanceNormalization→Reshape form of GroupNorm?"""
        found = self.producer(scope, value)
        while found is not None and found[1].op_type in ("Cast", "Identity", "Reshape"):
            if found[1].op_type == "Reshape":
                inner = self.producer(found[0], found[1].input[0])
                if inner is not None and inner[1].op_type == "InstanceNormalization":
                    return True
            found = self.producer(found[0], found[1].input[0])
        if found is None or found[1].op_type not in ("Div", "Mul"):
            return False
        seen_ops: set[str] = set()
        frontier = [found]
        for _ in range(6):
            nxt = []
            for owner, node in frontier:
                seen_ops.add(node.op_type)
                for operand in node.input:
                    inner = self.producer(owner, operand) if operand else None
                    if inner is not None:
                        nxt.append(inner)
            frontier = nxt
        return "ReduceMean" in seen_ops and bool(seen_ops & {"Sqrt", "Reciprocal", "Rsqrt"})

    def _gather(self, path: _Path, scope: Scope, node: onnx.NodeProto) -> Finding:
        axis = _attrs(node).get("axis", 0)
        rank = len(path.axes)
        where = f"Gather input 0{_via(path)}"
        if axis not in (0, -rank):
            return Finding("unknown", Role.UNKNOWN, f"{where} along axis {axis}")
        if len(node.input) < 2 or not self.is_dynamic(scope, node.input[1]):
            return Finding(
                "unknown", Role.UNKNOWN, f"{where} with constant indices (a lookup table or folding)"
            )
        if rank < 2 or path.shape is None:
            return Finding("unknown", Role.UNKNOWN, f"{where} of rank {rank}")
        return self._mapped(
            path,
            Role.EMBEDDING,
            f"{where} (embedding table)",
            _embedding(SlotContext(node, 0, path.shape, {})),
        )

    def _einsum(self, path: _Path, scope: Scope, node: onnx.NodeProto, index: int) -> Finding:
        where = f"Einsum input {index}{_via(path)}"
        equation = str(_attrs(node).get("equation", "")).replace(" ", "")
        others = [v for i, v in enumerate(node.input) if i != index and v]
        if not any(self.is_dynamic(scope, v) for v in others):
            return Finding("unknown", Role.UNKNOWN, f"{where}, but no other operand is dynamic")
        if path.shape is None:
            return Finding("unknown", Role.UNKNOWN, f"{where}, with a shape netinit cannot follow")
        layout = _einsum_layout(equation, index, len(path.axes))
        if isinstance(layout, str):
            return Finding("unknown", Role.UNKNOWN, f"{where}: equation {equation!r}: {layout}")
        return self._mapped(path, Role.WEIGHT, f"{where} ({equation})", layout)


def _via(path: _Path) -> str:
    return f" via {' → '.join(path.steps)}" if path.steps else ""


def _map_reshape(axes: Axes, shape: tuple[int, ...], target: tuple[int, ...]) -> Axes | None:
    """Map axes across a reshape.  Unit axes come and go; otherwise the source and target sizes
    are cut into the smallest groups with equal products, and every target axis of a group
    comes from all the stored axes of that group: a merge ``[C, k] → [C·k]`` gives one axis
    from two, a split ``[h·d] → [h, d]`` two from one.  Whether that is still unambiguous is
    decided by :func:`_map_layout`, once the terminal says what each axis means."""
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


def _map_layout(terminal: Layout, axes: Axes, rank: int, moved: bool) -> Layout | str:
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


def _broadcasts_as_bias(shape: tuple[int, ...], width: int | None, conv_rank: int | None) -> bool:
    """§4: one value per output — along the last axis (matmul-like) or the channel axis (conv)."""
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


def _einsum_layout(equation: str, index: int, rank: int) -> Layout | str:
    """§8: contracted letters are inputs, letters kept in the output (only here) outputs,
    letters shared with another operand and the output are batches.

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


# --------------------------------------------------------------------------------------------
# Warnings, not decisions (onnx.md §16 step 9): names and values that suggest a fixed buffer
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Merging the uses of one tensor
# --------------------------------------------------------------------------------------------


def _merge(stored: StoredTensor, findings: list[Finding]) -> tuple[Role, str, Layout | None, list[str]]:
    notes: list[str] = []
    floating = is_float(stored.dtype)
    if any(f.kind == "quantized" for f in findings):
        first = next(f for f in findings if f.kind == "quantized")
        return Role.QUANTIZED, first.reason, None, notes
    if not floating:
        return Role.CONSTANT, f"{stored.dtype} tensor (never re-initialized)", None, notes
    slots = [f for f in findings if f.kind == "slot"]
    fixed = [f for f in findings if f.kind == "constant"]
    unknown = [f for f in findings if f.kind == "unknown"]
    if stored.static:
        # onnx.checker checks neither ranks nor attribute values such as Conv group=0: a
        # tensor that its slot cannot read makes the model invalid, said in one line.
        for finding in slots:
            problem = finding.layout.problem(stored.shape) if finding.layout is not None else None
            if problem is not None:
                raise InputError(
                    f"tensor {stored.name!r} {list(stored.shape)} used as {finding.reason}: {problem}; "
                    "the model is inconsistent (fix the exporter's output)"
                )
    if slots:
        learnable = [f for f in slots if f.role.learnable]
        roles = {f.role for f in slots}
        if fixed and learnable:
            return Role.CONFLICT, _list_reasons([*learnable, *fixed]), None, notes
        if roles == {Role.EMBEDDING, Role.WEIGHT}:
            embedding = next(f for f in slots if f.role is Role.EMBEDDING)
            reason = f"{embedding.reason}; tied with " + "; ".join(
                f.reason for f in slots if f.role is Role.WEIGHT
            )
            return Role.EMBEDDING, reason, embedding.layout, notes
        if len(roles) > 1:
            return Role.CONFLICT, _list_reasons(slots), None, notes
        role = slots[0].role
        layout = slots[0].layout
        if stored.static and layout is not None:
            fans = {f.layout.fans(stored.shape) for f in slots if f.layout is not None}
            if len(fans) > 1:
                return Role.CONFLICT, _list_reasons(slots) + " (different fans)", None, notes
        reason = slots[0].reason if len(slots) == 1 else f"{slots[0].reason} (shared by {len(slots)} uses)"
        if unknown:
            reason += f"; also {unknown[0].reason}"
        note = buffer_name_note(stored.name, stored.value, role)
        if note:
            notes.append(note)
        return role, reason, layout, notes
    if fixed:
        return Role.CONSTANT, fixed[0].reason, None, notes
    if math.prod(stored.shape) <= 1 and stored.static:
        reason = unknown[0].reason if unknown else "unused"
        return Role.SCALAR, f"float scalar in {reason}" if unknown else "unused float scalar", None, notes
    if not unknown:
        return Role.UNKNOWN, "unused float tensor", None, notes
    return Role.UNKNOWN, "float tensor in " + "; ".join(dict.fromkeys(f.reason for f in unknown)), None, notes


def _list_reasons(findings: Sequence[Finding]) -> str:
    parts = list(dict.fromkeys(f"{f.role.value}: {f.reason}" for f in findings))
    return "conflicting uses — " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def classify_model(model: onnx.ModelProto) -> tuple[list[Param], list[str]]:
    """Every stored tensor of ``model`` as a classified :class:`Param`, and notes for the user."""
    return classify_graphs(Graphs(model))


def classify_graphs(graphs: Graphs) -> tuple[list[Param], list[str]]:
    model = graphs.model
    inputs = [s for s in graphs.stored if s.source == GRAPH_INPUT]
    first_input = model.graph.input[0].name if model.graph.input else ""
    # Graph inputs without data are parameters only if they are not the first input and are
    # floats; all others are data.  Candidates that reach no parameter slot are data after all.
    candidates = {s.value for s in inputs if s.value != first_input and is_float(s.dtype)}
    data_inputs = {s.value for s in inputs} - candidates
    while True:
        classifier = Classifier(graphs, data_inputs)
        results = {id(s): _merge(s, classifier.findings(s)) for s in graphs.stored}
        rejected = {s.value for s in inputs if s.value in candidates and not results[id(s)][0].learnable}
        if not rejected:
            break
        candidates -= rejected
        data_inputs |= rejected

    trainable = _training_bindings(model)
    params: list[Param] = []
    notes: list[str] = []
    for stored in graphs.stored:
        role, reason, layout, extra = results[id(stored)]
        if stored.source == GRAPH_INPUT:
            if stored.value not in candidates:
                continue
            declared = _declared_dims(stored)
            if any(isinstance(d, int) and d < 0 for d in declared):
                raise InputError(
                    f"graph input {stored.value!r} feeds a parameter slot ({reason}) but declares a "
                    f"negative dimension in its shape {declared}; the model is malformed (re-export it)"
                )
            if not stored.static:
                raise InputError(
                    f"graph input {stored.value!r} feeds a parameter slot ({reason}) but has no static "
                    f"shape ({_dims_text(stored)}); export it with fixed dimensions"
                )
        if trainable is not None and role.learnable and stored.value not in trainable:
            reason = f"not in training_info bindings (frozen); topology: {role.value}, {reason}"
            role, layout = Role.CONSTANT, None
        elif trainable is not None and stored.value in trainable and role in _UNRECOGNISED:
            role, layout, reason = _bound_fallback(stored, role, reason)
            extra.append(f"{stored.name}: {reason}; check it, or exclude it")
        notes.extend(extra)
        data = stored.source != GRAPH_INPUT and (stored.tensor is None or has_data(stored.tensor))
        params.append(
            Param(
                name=stored.name,
                shape=tuple(max(d, 0) for d in stored.shape),
                dtype=stored.dtype,
                has_data=data,
                role=role,
                layout=layout,
                reason=reason,
                source=stored.source,
            )
        )
    if not any(p.role.learnable for p in params):
        notes.append(_nothing_to_initialize(graphs))
    return params, notes


def _nothing_to_initialize(graphs: Graphs) -> str:
    """The note for a model without parameters; names the ops that hold them in attributes
    (skl2onnx tree and linear models: ai.onnx.ml TreeEnsemble*, Linear*, SVM*)."""
    attribute_ops = sorted(
        {node.op_type for scope in graphs.scopes for node in scope.nodes if _domain(node.domain) == ML}
    )
    text = "no tensor of this model is a recognised parameter: nothing to re-initialize"
    if attribute_ops:
        text += (
            f" (its parameters are attributes of {', '.join(attribute_ops)} ({ML}), which netinit "
            "does not change; the output is the same graph)"
        )
    return text


_UNRECOGNISED = frozenset({Role.UNKNOWN, Role.SCALAR})
# torch's own assumption (torch.nn.init._calculate_fan_in_and_fan_out): [out, in, k…].
_TORCH_CONVENTION = Layout((1,), (0,), label="[out, in, k…] (torch convention, assumed)")


def _bound_fallback(stored: StoredTensor, role: Role, reason: str) -> tuple[Role, Layout | None, str]:
    """training_info is authoritative for the learnable set (onnx.md §13): a bound float
    tensor whose slot netinit does not recognise is still learnable.  Rank ≥ 2 becomes a weight
    with torch's [out, in, k…] convention, rank ≤ 1 a bias; integer tensors stay constants."""
    if not is_float(stored.dtype):
        return role, None, reason
    why = f"bound by training_info but {reason}"
    if len(stored.shape) >= 2:
        return (
            Role.WEIGHT,
            _TORCH_CONVENTION,
            f"{why}: a weight with fans by torch's [out, in, k…] convention",
        )
    return Role.BIAS, None, f"{why}: a bias"


def _training_bindings(model: onnx.ModelProto) -> set[str] | None:
    if not model.training_info:
        return None
    names: set[str] = set()
    for info in model.training_info:
        names.update(b.key for b in info.initialization_binding)
        names.update(b.key for b in info.update_binding)
    return names


def _declared_dims(stored: StoredTensor) -> list[int | str]:
    """A graph input's dimensions as declared: sizes (negative ones too), names, or "?"."""
    if stored.graph_input is None:
        return list(stored.shape)
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in stored.graph_input.type.tensor_type.shape.dim
    ]


def _dims_text(stored: StoredTensor) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in stored.shape) + "]"
