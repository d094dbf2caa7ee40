"""What the name rules may know besides a tensor's own name: the checkpoint's other tensors.

:class:`NameContext` holds every name, shape and dtype of the checkpoint and its format hint.
The rules of :data:`~netinit_cli.classify.names.NAME_RULES` refer to the *conditions* here
(is there a sibling ``running_mean``? is ``c_fc`` wider than the model?) and to the *layout
builders*, which read a layout off the shape when it depends on it (grouped or depthwise
convolutions, packed gates, MoE stack orientation).

Conventions: PyTorch Linear ``[out, in]`` and Conv ``[out, in/g, k…]``; GPT-2 Conv1D
``[in, out]``; Flax/TF kernels ``[in, out]`` / ``[k…, in, out]``; MLX conv ``[out, k…, in]``;
MoE stacks keep the expert axis as a batch axis.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from netinit_cli.classify.families import hidden_size
from netinit_cli.classify.layouts import MOE_IN_OUT, MOE_OUT_IN, conv_layout, conv_transpose_layout
from netinit_cli.dtypes import FLOAT_DTYPES
from netinit_cli.model import Layout, Param

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NameContext:
    """What the rules may know besides the tensor itself: the other names and the format hint."""

    shapes: dict[str, Shape]
    dtypes: dict[str, str]
    format_hint: str | None
    families: frozenset[str]

    def has(self, name: str) -> bool:
        return name in self.shapes


# ---------------------------------------------------------------------------------------------
# Layout builders: shape -> (layout, extra words for the reason).  Layout depends on the shape
# for grouped convolutions and packed gates; everything else is a constant.
# ---------------------------------------------------------------------------------------------
LayoutFn = Callable[[Param, NameContext], tuple[Layout, str]]


def fixed(layout: Layout) -> LayoutFn:
    return lambda param, ctx: (layout, "")


def torch_conv(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    out_channels, in_per_group = param.shape[0], param.shape[1]
    if in_per_group == 1 and out_channels > 1:
        return conv_layout(len(param.shape), groups=out_channels), f", depthwise: groups = {out_channels}"
    return conv_layout(len(param.shape)), ""


def torch_conv_transpose(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    # [in, out/g, k…]: torch's fan formula reads size(1) as fan_in anyway (torch_perm=None).
    return conv_transpose_layout(len(param.shape)), ""


def hwio_conv(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    rank = len(param.shape)
    in_axis, out_axis = rank - 2, rank - 1
    groups = param.shape[out_axis] if param.shape[in_axis] == 1 and param.shape[out_axis] > 1 else 1
    perm = (out_axis, in_axis, *range(rank - 2))
    layout = Layout((in_axis,), (out_axis,), out_divisor=groups, torch_perm=perm, label="[k…, in, out]")
    return layout, (f", depthwise: groups = {groups}" if groups > 1 else "")


def mlx_conv(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    rank = len(param.shape)
    groups = param.shape[0] if param.shape[-1] == 1 and param.shape[0] > 1 else 1
    perm = (0, rank - 1, *range(1, rank - 1))
    layout = Layout((rank - 1,), (0,), out_divisor=groups, torch_perm=perm, label="[out, k…, in]")
    return layout, (f", depthwise: groups = {groups}" if groups > 1 else "")


def packed(blocks: int, what: str) -> LayoutFn:
    layout = Layout((1,), (0,), out_divisor=blocks, blocks=blocks, label=f"[{blocks}·E, in] ({what})")
    return fixed(layout)


_RNN_GATES = {4: "LSTM gates i, f, g, o", 3: "GRU gates r, z, n", 1: "RNN"}


def rnn_weight(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    """``weight_ih_lK`` / ``weight_hh_lK`` ``[G·H, in]``: G from the recurrent matrix ``[G·H, H]``."""
    hh_name = re.sub(r"weight_(ih|hh)_l", "weight_hh_l", param.name)
    hh_shape = ctx.shapes.get(hh_name, param.shape)
    gates = hh_shape[0] // hh_shape[1] if len(hh_shape) == 2 and hh_shape[1] else 1
    if gates not in _RNN_GATES or param.shape[0] % gates:
        gates = 1
    label = f"[{gates}·H, in]" if gates > 1 else "[H, in]"
    layout = Layout((1,), (0,), out_divisor=gates, blocks=gates, label=label)
    return layout, f" ({_RNN_GATES[gates]})"


def rnn_bias(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    """``bias_ih_lK`` / ``bias_hh_lK`` ``[G·H]``.  torch's LSTM gates are i, f, g, o; the
    forget-gate bias goes into ``bias_ih`` only (block 1), so ``--forget-bias`` is not doubled."""
    hh_name = re.sub(r"bias_(ih|hh)_l", "weight_hh_l", param.name)
    hh_shape = ctx.shapes.get(hh_name, ())
    gates = hh_shape[0] // hh_shape[1] if len(hh_shape) == 2 and hh_shape[1] else 1
    if gates not in _RNN_GATES or param.shape[0] % gates:
        gates = 1
    forget = 1 if gates == 4 and "bias_ih_l" in param.name else None
    layout = Layout((), (0,), blocks=gates, forget_block=forget, label=f"[{gates}·H]" if gates > 1 else "[H]")
    return layout, f" ({_RNN_GATES[gates]})"


_MOE_DOWN = frozenset({"down_proj", "w2"})


def moe_stack(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    """Fused expert stacks come both ways: gpt-oss stores ``[E, in, out]`` (``gate_up_proj``
    ``[E, d, 2I]``, ``down_proj`` ``[E, I, d]``), a transformers-5 ``state_dict()`` of Mixtral or
    Qwen-MoE ``[E, out, in]`` (``[E, 2I, d]``, ``[E, d, I]``).  The model width d (from the token
    table) says which axis is the input; without it, or when I = d, gpt-oss's order is assumed."""
    hidden = hidden_size(ctx.shapes)
    projection = param.name.rsplit(".", 1)[-1]
    d_axis = 2 if projection in _MOE_DOWN else 1  # where d sits in [E, in, out]
    if hidden is not None and param.shape[d_axis] != hidden and param.shape[3 - d_axis] == hidden:
        return MOE_OUT_IN, f" {MOE_OUT_IN.label} (d = {hidden} on dim {3 - d_axis})"
    return MOE_IN_OUT, f" {MOE_IN_OUT.label}"


# ---------------------------------------------------------------------------------------------
# Context conditions: named predicates the table refers to.
# ---------------------------------------------------------------------------------------------
Condition = Callable[[Param, NameContext, "re.Match[str]"], bool]


def in_family(family: str) -> Condition:
    return lambda param, ctx, match: family in ctx.families


def sibling(suffix: str) -> Condition:
    """A tensor beside this one (same module) named ``suffix`` exists."""

    def check(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
        module = param.name.rsplit(".", 1)[0] if "." in param.name else ""
        return ctx.has(f"{module}.{suffix}" if module else suffix)

    return check


def scaled_fp8(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """FP8 block-scaled (DeepSeek/compressed-tensors): ``X.weight`` with ``X.weight_scale(_inv)``."""
    return param.dtype.startswith("F8") and any(
        ctx.has(param.name + suffix) for suffix in ("_scale_inv", "_scale", "_scale_2")
    )


def int_quantized_sibling(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """MLX / AWQ style: float ``scales``/``biases`` beside an integer-packed ``weight``."""
    module = param.name.rsplit(".", 1)[0] if "." in param.name else ""
    for candidate in ("weight", "qweight"):
        name = f"{module}.{candidate}" if module else candidate
        if name in ctx.dtypes and ctx.dtypes[name] not in FLOAT_DTYPES:
            return True
    return False


def norm_parent(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """1-D weight/bias under a norm-like module, or beside BatchNorm running statistics."""
    return (
        bool(_NORM_PARENT.search(param.name))
        or sibling("running_mean")(param, ctx, match)
        or affine_pair(param, ctx, match)
    )


def gpt2_conv1d(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """GPT-2's ``h.N.{attn,mlp}.c_*`` are Conv1D ``[in, out]``; GPTBigCode (StarCoder) uses the
    same names for nn.Linear ``[out, in]``.  The block's ``mlp.c_fc`` ``[d, 4d]`` vs ``[4d, d]``
    tells them apart (d from the token table; without one, Conv1D widens along dim 1)."""
    block = param.name[: match.start("m")].rsplit(".", 2)[0]
    c_fc = ctx.shapes.get(f"{block}.mlp.c_fc.weight")
    if c_fc is None or len(c_fc) != 2 or c_fc[0] == c_fc[1]:
        return True  # nothing to tell by: GPT-2's own convention
    hidden = hidden_size(ctx.shapes)
    if hidden is not None and hidden in c_fc:
        return c_fc[0] == hidden
    return c_fc[0] < c_fc[1]


def affine_pair(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """A 1-D ``weight`` and ``bias`` of one shape and nothing else in the module: an affine norm
    whose name lacks "norm" (ConvNeXt ``downsampling_layer.0``, timm ``stem.1``).  PReLU and
    layer scales have no bias; Linear and Conv weights are never 1-D."""
    module, _, leaf = param.name.rpartition(".")
    other = f"{module}.{'bias' if leaf == 'weight' else 'weight'}" if module else ""
    if len(param.shape) != 1 or ctx.shapes.get(other) != param.shape:
        return False
    prefix = module + "."
    return sum(1 for name in ctx.shapes if name.startswith(prefix) and "." not in name[len(prefix) :]) == 2


_NORM_PARENT = re.compile(
    r"(?i)(?:^|\.)(?:[\w]*norm[\w]*|[\w]*layrnorm[\w]*|ln(?:_?\w*)?|\w+_ln|bn\d*|\w+_bn|normalization"
    r"|(?:in|out)_layers\.0|norm\d*)\.(?:weight|bias|gamma|beta|scale|g|b)$"
)
