"""What the ONNX walk knows about ops, as data.

* :data:`SLOTS`: ``(domain, op) -> {input index: Slot}``: the role of a stored tensor that ends
  in that input, the rule that computes its layout on the op's axes, and the input's name for
  the reason shown to the user.
* :data:`OPS`: by op type, what the walk does with a parameter on its way (follow it through
  an axis move or a gate reorder, ignore a shape read) and what an op's output is (a linear map,
  after which an Add may hold a bias), and in which domains every stored input of the op is
  quantization data.

Ops whose meaning depends on the graph around them (Add as a bias, Mul as a norm scale, Gather
as an embedding, Einsum) are recognized by :mod:`netinit_cli.classify.onnx_patterns`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Flag, auto

import onnx
from onnx import AttributeProto

from netinit_cli.classify.layouts import (
    ATTENTION_QKV,
    EMBEDDING_LAYOUT,
    GEMM_A_TRANSPOSED,
    LINEAR_OUT_IN,
    MATRIX_IN_OUT,
    MOE_IN_OUT,
    MOE_OUT_IN,
    conv_layout,
    conv_transpose_layout,
)
from netinit_cli.model import Layout, Role

MS = "com.microsoft"
ML = "ai.onnx.ml"

OpKey = tuple[str, str]  # (domain, op type), the default domain as ""


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


def node_attrs(node: onnx.NodeProto) -> dict[str, object]:
    """A node's int, ints, string and float attributes by name."""
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


def _int_attr(ctx: SlotContext, name: str, default: int) -> int:
    value = ctx.attrs.get(name, default)
    return int(value) if isinstance(value, int) else default


# --------------------------------------------------------------------------------------------
# Layout rules
# --------------------------------------------------------------------------------------------


def _conv_weight(ctx: SlotContext) -> Layout:
    return conv_layout(len(ctx.shape), int(_int_attr(ctx, "group", 1)))


def _conv_transpose_weight(ctx: SlotContext) -> Layout:
    return conv_transpose_layout(len(ctx.shape), int(_int_attr(ctx, "group", 1)))


def _gemm_b(ctx: SlotContext) -> Layout:
    return LINEAR_OUT_IN if _int_attr(ctx, "transB", 0) else MATRIX_IN_OUT


def _gemm_a(ctx: SlotContext) -> Layout:
    # A is [M, K] (rows are outputs): out = axis 0.  With transA it is stored [K, M].
    return GEMM_A_TRANSPOSED if _int_attr(ctx, "transA", 0) else LINEAR_OUT_IN


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


# ONNX LSTM gates are i, o, f, c: the forget gate of B = [Wb, Rb] is Wb's block 2.  Only Wb's gets
# --forget-bias, so the effective bias Wb + Rb is exactly its value.
LSTM_FORGET_BLOCK = 2


def _rnn_bias(gates: int) -> LayoutRule:
    def rule(ctx: SlotContext) -> Layout:
        blocks = 2 * gates
        return Layout(
            (),
            (1,),
            (0,),
            out_divisor=blocks,
            blocks=blocks,
            label=f"[dirs, {blocks}H] = [Wb, Rb]",
            forget_block=LSTM_FORGET_BLOCK if gates == 4 else None,
        )

    return rule


def _peephole(ctx: SlotContext) -> Layout:
    return Layout((), (1,), (0,), out_divisor=3, blocks=3, label="[dirs, 3H] (i, o, f)")


def _embedding(ctx: SlotContext) -> Layout:
    return EMBEDDING_LAYOUT


def _attention_weight(ctx: SlotContext) -> Layout:
    return ATTENTION_QKV


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
        return replace(MOE_OUT_IN if out_in else MOE_IN_OUT, out_divisor=fusion, blocks=fusion)

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


# (domain, op) -> {input index: Slot}.  An op quantized in its domain (see OPS) has rows only
# for the inputs that stay float (QMoE's biases).
SLOTS: dict[OpKey, dict[int, Slot]] = {
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


# --------------------------------------------------------------------------------------------
# What an op does to a parameter on its way, and what its output is
# --------------------------------------------------------------------------------------------


class Trait(Flag):
    NONE = 0
    # Passes its data input on with its axes moved (default domain): the walk follows it.
    MOVES_AXES = auto()
    # Slice/Split/Concat (default domain): followed only when the path ends in an RNN slot; they
    # keep every axis's meaning, and the sizes they change are the gate blocks the RNN splits.
    REORDERS_GATES = auto()
    # An RNN: the only end a gate reorder may lead to.
    RNN = auto()
    # Reads only the shape: the use says nothing about the role.
    READS_SHAPE = auto()
    # The search for the linear op before an Add looks through it.
    KEEPS_VALUES = auto()
    # Its output is a linear map of an input: an Add after it may hold a bias.
    LINEAR = auto()
    # A Mul after it (through Casts) may apply quantization scales, which are not learnable.
    DEQUANTIZED_AFTER = auto()


_ONNX, _BOTH = frozenset({""}), frozenset({"", MS})
_MS_ONLY = frozenset({MS})


@dataclass(frozen=True)
class Op:
    traits: Trait = Trait.NONE
    # Domains in which every stored input of the op, except those with a SLOTS row, is
    # quantization data (weights, scales, zero points): never re-initialized.
    quantized_in: frozenset[str] = frozenset()


_FOLLOWED = Op(Trait.MOVES_AXES | Trait.KEEPS_VALUES)
_LINEAR = Op(Trait.LINEAR)
_QUANTIZED_LINEAR = Trait.LINEAR | Trait.DEQUANTIZED_AFTER
_QUANTIZED_MS = Op(quantized_in=_MS_ONLY)

# By op type; the traits hold in any domain (MOVES_AXES and REORDERS_GATES: the default one only).
OPS: dict[str, Op] = {
    "Identity": _FOLLOWED,
    "Cast": _FOLLOWED,
    "CastLike": _FOLLOWED,
    "Transpose": _FOLLOWED,
    "Reshape": _FOLLOWED,
    "Squeeze": _FOLLOWED,
    "Unsqueeze": _FOLLOWED,
    "Flatten": Op(Trait.MOVES_AXES),
    "Slice": Op(Trait.REORDERS_GATES),
    "Split": Op(Trait.REORDERS_GATES),
    "Concat": Op(Trait.REORDERS_GATES),
    "LSTM": Op(Trait.RNN),
    "GRU": Op(Trait.RNN),
    "RNN": Op(Trait.RNN),
    "Shape": Op(Trait.READS_SHAPE),
    "Size": Op(Trait.READS_SHAPE),
    "MatMul": _LINEAR,
    "Gemm": _LINEAR,
    "Einsum": _LINEAR,
    "Conv": _LINEAR,
    "ConvTranspose": _LINEAR,
    "FusedConv": _LINEAR,
    "FusedMatMul": _LINEAR,
    "MatMulInteger": Op(_QUANTIZED_LINEAR, _ONNX),
    "ConvInteger": Op(_QUANTIZED_LINEAR, _ONNX),
    "QLinearMatMul": Op(_QUANTIZED_LINEAR, _ONNX),
    "QLinearConv": Op(_QUANTIZED_LINEAR, _ONNX),
    "MatMulNBits": Op(_QUANTIZED_LINEAR, _MS_ONLY),
    "DynamicQuantizeLinear": Op(Trait.DEQUANTIZED_AFTER, _ONNX),
    "QuantizeLinear": Op(quantized_in=_BOTH),
    "DequantizeLinear": Op(quantized_in=_BOTH),
    "QGemm": _QUANTIZED_MS,
    "QAttention": _QUANTIZED_MS,
    "MatMulBnb4": _QUANTIZED_MS,
    "DynamicQuantizeLSTM": _QUANTIZED_MS,
    "DynamicQuantizeMatMul": _QUANTIZED_MS,
    "MatMulIntegerToFloat": _QUANTIZED_MS,
    "GatherBlockQuantized": _QUANTIZED_MS,
    "QLinearAdd": _QUANTIZED_MS,
    "QLinearMul": _QUANTIZED_MS,
    "QLinearConcat": _QUANTIZED_MS,
    "QLinearSigmoid": _QUANTIZED_MS,
    "QLinearLeakyRelu": _QUANTIZED_MS,
    "QLinearGlobalAveragePool": _QUANTIZED_MS,
    "QLinearAveragePool": _QUANTIZED_MS,
    "QLinearSoftmax": _QUANTIZED_MS,
    "QOrderedMatMul": _QUANTIZED_MS,
    "QEmbedLayerNormalization": _QUANTIZED_MS,
    "QMoE": _QUANTIZED_MS,  # its float biases have SLOTS rows
}
_PLAIN = Op()


def traits(op: str) -> Trait:
    return OPS.get(op, _PLAIN).traits


def quantized_input(domain: str, op: str, index: int) -> bool:
    """Is input ``index`` of this op quantization data?"""
    return domain in OPS.get(op, _PLAIN).quantized_in and index not in SLOTS.get((domain, op), {})
