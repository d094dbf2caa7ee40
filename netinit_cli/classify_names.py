"""Classify stored tensors by name, rank and dtype alone (safetensors bundles have no graph).

The rules are one ordered table, :data:`NAME_RULES`; the first rule whose pattern, rank, dtype,
format and context conditions all hold decides a tensor's role, its layout (which axes are in,
out, batch) and the human reason shown in the table.  Order matters: buffers and quantization
tensors come before anything that could make them look learnable, norms before biases, special
learnables before the generic Linear/Conv rules, and the fallback "unknown" comes last.

Conventions (see shared/reference/safetensors.md §10–11): PyTorch Linear ``[out, in]`` and Conv
``[out, in/g, k…]``; GPT-2 Conv1D ``[in, out]``; Flax/TF kernels ``[in, out]`` / ``[k…, in, out]``;
MLX conv ``[out, k…, in]``; MoE stacks keep the expert axis as a batch axis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from netinit_cli.dtypes import FLOAT_DTYPES
from netinit_cli.model import LINEAR_OUT_IN, MATRIX_IN_OUT, Layout, Param, Role, conv_layout

Shape = tuple[int, ...]

# Scale and packed formats: never generated (E8M0 cannot even hold 0).
_PACKED_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0"})


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

EMBEDDING_LAYOUT = Layout((1,), (0,), label="[vocab, dim]")


def _fixed(layout: Layout) -> LayoutFn:
    return lambda param, ctx: (layout, "")


def _torch_conv(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    out_channels, in_per_group = param.shape[0], param.shape[1]
    if in_per_group == 1 and out_channels > 1:
        return conv_layout(len(param.shape), groups=out_channels), f", depthwise: groups = {out_channels}"
    return conv_layout(len(param.shape)), ""


def _torch_conv_transpose(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    # [in, out/g, k…]: torch's fan formula reads size(1) as fan_in anyway (torch_perm=None).
    return Layout((0,), (1,), label="[in, out/g, k…]"), ""


def _hwio_conv(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    rank = len(param.shape)
    in_axis, out_axis = rank - 2, rank - 1
    groups = param.shape[out_axis] if param.shape[in_axis] == 1 and param.shape[out_axis] > 1 else 1
    perm = (out_axis, in_axis, *range(rank - 2))
    layout = Layout((in_axis,), (out_axis,), out_divisor=groups, torch_perm=perm, label="[k…, in, out]")
    return layout, (f", depthwise: groups = {groups}" if groups > 1 else "")


def _mlx_conv(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    rank = len(param.shape)
    groups = param.shape[0] if param.shape[-1] == 1 and param.shape[0] > 1 else 1
    perm = (0, rank - 1, *range(1, rank - 1))
    layout = Layout((rank - 1,), (0,), out_divisor=groups, torch_perm=perm, label="[out, k…, in]")
    return layout, (f", depthwise: groups = {groups}" if groups > 1 else "")


def _packed(blocks: int, what: str) -> LayoutFn:
    layout = Layout((1,), (0,), out_divisor=blocks, blocks=blocks, label=f"[{blocks}·E, in] ({what})")
    return _fixed(layout)


_RNN_GATES = {4: "LSTM gates i, f, g, o", 3: "GRU gates r, z, n", 1: "RNN"}


def _rnn(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    """``weight_ih_lK`` / ``weight_hh_lK`` ``[G·H, in]``: G from the recurrent matrix ``[G·H, H]``."""
    hh_name = re.sub(r"weight_(ih|hh)_l", "weight_hh_l", param.name)
    hh_shape = ctx.shapes.get(hh_name, param.shape)
    gates = hh_shape[0] // hh_shape[1] if len(hh_shape) == 2 and hh_shape[1] else 1
    if gates not in _RNN_GATES or param.shape[0] % gates:
        gates = 1
    label = f"[{gates}·H, in]" if gates > 1 else "[H, in]"
    layout = Layout((1,), (0,), out_divisor=gates, blocks=gates, label=label)
    return layout, f" ({_RNN_GATES[gates]})"


def _rnn_bias(param: Param, ctx: NameContext) -> tuple[Layout, str]:
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


_MOE_IN_OUT = Layout((1,), (2,), batch_axes=(0,), torch_perm=(1, 0), label="[experts, in, out]")
_MOE_OUT_IN = Layout((2,), (1,), batch_axes=(0,), label="[experts, out, in]")
_MOE_DOWN = frozenset({"down_proj", "w2"})


def _moe_stack(param: Param, ctx: NameContext) -> tuple[Layout, str]:
    """Fused expert stacks come both ways: gpt-oss stores ``[E, in, out]`` (``gate_up_proj``
    ``[E, d, 2I]``, ``down_proj`` ``[E, I, d]``), a transformers-5 ``state_dict()`` of Mixtral or
    Qwen-MoE ``[E, out, in]`` (``[E, 2I, d]``, ``[E, d, I]``).  The model width d (from the token
    table) says which axis is the input; without it, or when I = d, gpt-oss's order is assumed."""
    hidden = _hidden_size(ctx)
    projection = param.name.rsplit(".", 1)[-1]
    d_axis = 2 if projection in _MOE_DOWN else 1  # where d sits in [E, in, out]
    if hidden is not None and param.shape[d_axis] != hidden and param.shape[3 - d_axis] == hidden:
        return _MOE_OUT_IN, f" {_MOE_OUT_IN.label} (d = {hidden} on dim {3 - d_axis})"
    return _MOE_IN_OUT, f" {_MOE_IN_OUT.label}"


# ---------------------------------------------------------------------------------------------
# Context conditions: named predicates the table refers to.
# ---------------------------------------------------------------------------------------------
Condition = Callable[[Param, NameContext, "re.Match[str]"], bool]


def _in_family(family: str) -> Condition:
    return lambda param, ctx, match: family in ctx.families


def _sibling(suffix: str) -> Condition:
    """A tensor beside this one (same module) named ``suffix`` exists."""

    def check(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
        module = param.name.rsplit(".", 1)[0] if "." in param.name else ""
        return ctx.has(f"{module}.{suffix}" if module else suffix)

    return check


def _scaled_fp8(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """FP8 block-scaled (DeepSeek/compressed-tensors): ``X.weight`` with ``X.weight_scale(_inv)``."""
    return param.dtype.startswith("F8") and any(
        ctx.has(param.name + suffix) for suffix in ("_scale_inv", "_scale", "_scale_2")
    )


def _int_quantized_sibling(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """MLX / AWQ style: float ``scales``/``biases`` beside an integer-packed ``weight``."""
    module = param.name.rsplit(".", 1)[0] if "." in param.name else ""
    for candidate in ("weight", "qweight"):
        name = f"{module}.{candidate}" if module else candidate
        if name in ctx.dtypes and ctx.dtypes[name] not in FLOAT_DTYPES:
            return True
    return False


def _norm_parent(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """1-D weight/bias under a norm-like module, or beside BatchNorm running statistics."""
    return (
        bool(_NORM_PARENT.search(param.name))
        or _sibling("running_mean")(param, ctx, match)
        or _affine_pair(param, ctx, match)
    )


def _hidden_size(ctx: NameContext) -> int | None:
    """The model width d, from the token embedding table ``[vocab, d]`` when there is one."""
    for name, shape in ctx.shapes.items():
        if len(shape) == 2 and _TOKEN_TABLE.search(name):
            return shape[1]
    return None


_TOKEN_TABLE = re.compile(
    r"(?:^|\.)(?:wte|embed_tokens|embed_in|word_embeddings|shared|tok_embeddings)\.weight$"
)


def _gpt2_conv1d(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
    """GPT-2's ``h.N.{attn,mlp}.c_*`` are Conv1D ``[in, out]``; GPTBigCode (StarCoder) uses the
    same names for nn.Linear ``[out, in]``.  The block's ``mlp.c_fc`` ``[d, 4d]`` vs ``[4d, d]``
    tells them apart (d from the token table; without one, Conv1D widens along dim 1)."""
    block = param.name[: match.start("m")].rsplit(".", 2)[0]
    c_fc = ctx.shapes.get(f"{block}.mlp.c_fc.weight")
    if c_fc is None or len(c_fc) != 2 or c_fc[0] == c_fc[1]:
        return True  # nothing to tell by: GPT-2's own convention
    hidden = _hidden_size(ctx)
    if hidden is not None and hidden in c_fc:
        return c_fc[0] == hidden
    return c_fc[0] < c_fc[1]


def _affine_pair(param: Param, ctx: NameContext, match: re.Match[str]) -> bool:
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


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NameRule:
    """``pattern`` is searched in the full name; ``ranks``/``floats`` restrict shape and dtype;
    ``formats`` restricts the ``__metadata__["format"]`` hint; ``when`` are context conditions.
    ``reason`` may use the pattern's named groups (``{m}``) and ``{rank}``/``{dtype}``."""

    pattern: str
    role: Role
    reason: str
    ranks: frozenset[int] | None = None
    floats: bool | None = True  # True: float dtypes only; False: non-float only; None: any
    formats: frozenset[str | None] | None = None
    when: tuple[Condition, ...] = ()
    layout: LayoutFn | None = None
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", re.compile(self.pattern))


def _ranks(*values: int) -> frozenset[int]:
    return frozenset(values)


ANY_RANK_2PLUS = frozenset(range(2, 9))
CONV_RANKS = _ranks(3, 4, 5)
COLUMN_MAJOR_FORMATS: frozenset[str | None] = frozenset({"flax", "tf", "jax"})

NAME_RULES: tuple[NameRule, ...] = (
    # --- integers, bools and exotic storage: never learnable -------------------------------
    NameRule(r"num_batches_tracked$", Role.CONSTANT, "BatchNorm step counter (integer buffer)", floats=None),
    NameRule(
        r"(?:^|[._])(?P<m>qweight|qzeros|g_idx|absmax|quant_map|SCB|weight_packed|weight_shape)$",
        Role.QUANTIZED,
        "quantized storage ({m})",
        floats=None,
    ),
    NameRule(r"", Role.CONSTANT, "{dtype} tensor: only real float tensors are initialized", floats=False),
    # --- buffers that must never be randomized ---------------------------------------------
    NameRule(r"(?:^|\.)(?P<m>(?:original_)?inv_freq)$", Role.CONSTANT, "rotary {m} buffer (from config)"),
    NameRule(r"(?:^|\.)(?P<m>position_ids|token_type_ids)$", Role.CONSTANT, "{m} buffer"),
    NameRule(r"(?:^|\.)attn\.bias$", Role.CONSTANT, "GPT-2 causal mask buffer attn.bias", ranks=_ranks(4)),
    NameRule(r"(?:^|\.)masked_bias$", Role.CONSTANT, "GPT-2 masked_bias buffer"),
    NameRule(r"(?:^|[._])(?P<m>\w*mask)$", Role.CONSTANT, "mask buffer ({m})"),
    NameRule(r"(?:^|\.)(?P<m>\w*_index)$", Role.CONSTANT, "index buffer ({m})"),
    NameRule(
        r"(?:^|\.)encoder\.embed_positions\.weight$",
        Role.CONSTANT,
        "Whisper encoder sinusoidal positions (fixed, not trained)",
        when=(_in_family("whisper"),),
    ),
    # --- quantization scales and zero points -----------------------------------------------
    NameRule(
        r"(?:^|[._])(?P<m>weight_scale_inv|weight_scale(?:_2)?|input_scale|output_scale|k_scale|v_scale"
        r"|weight_zero_point|input_zero_point|weight_global_scale|quant_state\.\w+)$",
        Role.QUANTIZED,
        "quantization tensor ({m})",
        floats=None,
    ),
    NameRule(
        r"\.weight$", Role.QUANTIZED, "FP8 block-scaled weight (has a scale tensor)", when=(_scaled_fp8,)
    ),
    NameRule(
        r"(?:^|\.)(?P<m>scales|biases)$",
        Role.QUANTIZED,
        "quantization {m} of an integer-packed weight",
        when=(_int_quantized_sibling,),
    ),
    NameRule(
        r"",
        Role.QUANTIZED,
        "{dtype} is a scale or packed format, never initialized",
        floats=None,
        when=(lambda p, c, m: p.dtype in _PACKED_DTYPES,),
    ),
    # --- BatchNorm running statistics --------------------------------------------------------
    NameRule(r"(?:^|[._])(?:running_mean|moving_mean)$", Role.RUNNING_MEAN, "BatchNorm running mean"),
    NameRule(
        r"(?:^|[._])(?:running_var|moving_var(?:iance)?)$", Role.RUNNING_VAR, "BatchNorm running variance"
    ),
    # --- LoRA adapters -----------------------------------------------------------------------
    NameRule(
        r"(?:^|\.)(?P<m>lora_B|lora_up|lora_embedding_B)(?:\.[\w]+)*\.weight$|lora_embedding_B(?:\.\w+)?$",
        Role.ZERO,
        "LoRA B is zero by convention (randomizing it changes the base model)",
    ),
    NameRule(
        r"(?:^|\.)(?P<m>lora_A|lora_down)(?:\.[\w]+)*\.weight$",
        Role.WEIGHT,
        "LoRA A ({m}) [r, in]",
        ranks=_ranks(2),
        layout=_fixed(LINEAR_OUT_IN),
    ),
    NameRule(
        r"(?:^|\.)(?P<m>lora_A|lora_down)(?:\.[\w]+)*\.weight$",
        Role.WEIGHT,
        "LoRA A ({m}) as a conv [r, in, k…]",
        ranks=CONV_RANKS,
        layout=_torch_conv,
    ),
    NameRule(
        r"lora_embedding_A(?:\.\w+)?$",
        Role.WEIGHT,
        "LoRA embedding A [r, vocab]",
        ranks=_ranks(2),
        layout=_fixed(LINEAR_OUT_IN),
    ),
    NameRule(r"(?:^|\.)alpha$", Role.CONSTANT, "LoRA alpha scalar", ranks=_ranks(0)),
    # --- norms (1-D; before biases and layer scales) -----------------------------------------
    NameRule(
        r"\.(?:weight|gamma|scale|g)$",
        Role.NORM_SCALE,
        "1-D {leaf} of a norm layer",
        ranks=_ranks(1),
        when=(_norm_parent,),
    ),
    NameRule(
        r"\.(?:bias|beta|b)$",
        Role.NORM_SHIFT,
        "1-D {leaf} of a norm layer",
        ranks=_ranks(1),
        when=(_norm_parent,),
    ),
    # --- special learnables ------------------------------------------------------------------
    NameRule(
        r"(?:^|\.)(?P<m>layer_scale\w*|ls\d\.gamma|gamma_?\d*)(?:\.(?:weight|gamma|scale|lambda1))?$",
        Role.LAYER_SCALE,
        "layer scale ({m})",
        ranks=_ranks(1, 3, 4),
    ),
    NameRule(
        r"(?:^|\.)(?P<m>cls_token|dist_token|reg_token|register_tokens|mask_token|pos_embed|"
        r"absolute_pos_embed|pos_embedding|position_embeddings|class_embedding|distillation_token|"
        r"relative_position_bias_table|masked_spec_embed)$",
        Role.TOKEN,
        "learned token/position parameter ({m})",
    ),
    NameRule(r"(?:^|\.)sinks$", Role.TOKEN, "attention sinks (gpt-oss)", ranks=_ranks(1)),
    # --- embeddings --------------------------------------------------------------------------
    NameRule(
        r"(?:^|\.)(?P<m>\w*embed_tokens|\w*embed_positions|tok_embeddings|\w*_embeddings?|embeddings?|"
        r"wte|wpe|shared|relative_attention_bias|embed|embed_in|word_emb)\.weight$",
        Role.EMBEDDING,
        "embedding table {m} [vocab, dim]",
        ranks=_ranks(2),
        layout=_fixed(EMBEDDING_LAYOUT),
    ),
    NameRule(
        r"(?:^|\.)(?P<m>embedding|embeddings)$",
        Role.EMBEDDING,
        "Flax/Keras embedding [vocab, dim]",
        ranks=_ranks(2),
        layout=_fixed(EMBEDDING_LAYOUT),
    ),
    # --- biases ------------------------------------------------------------------------------
    NameRule(
        r"(?:^|[._])bias_(?:ih|hh)_l\d+(?:_reverse)?$",
        Role.BIAS,
        "torch RNN bias",
        ranks=_ranks(1),
        layout=_rnn_bias,
    ),
    NameRule(r"(?:^|[._])bias$", Role.BIAS, "name ends in {leaf}"),
    NameRule(r"_bias$", Role.BIAS, "name ends in _bias"),
    NameRule(r"(?:^|\.)(?:bias_k|bias_v)$", Role.BIAS, "attention bias_k/bias_v"),
    # --- packed and recurrent matrices -------------------------------------------------------
    NameRule(
        r"(?:^|\.)in_proj_weight$",
        Role.WEIGHT,
        "MultiheadAttention packed q, k, v [3E, E]",
        ranks=_ranks(2),
        layout=_packed(3, "q, k, v"),
    ),
    NameRule(
        r"(?:^|\.)weight_hh_l\d+(?:_reverse)?$",
        Role.RECURRENT,
        "recurrent weight_hh",
        ranks=_ranks(2),
        layout=_rnn,
    ),
    NameRule(
        r"(?:^|\.)weight_(?:ih|hr)_l\d+(?:_reverse)?$",
        Role.WEIGHT,
        "RNN input weight_ih",
        ranks=_ranks(2),
        layout=_rnn,
    ),
    # --- GPT-2 Conv1D [in, out] --------------------------------------------------------------
    NameRule(
        r"(?:^|\.)h\.\d+\.(?:attn|mlp|crossattention)\.(?P<m>c_attn|c_proj|c_fc|q_attn)\.weight$",
        Role.WEIGHT,
        "GPT-2 Conv1D [in, out] ({m})",
        ranks=_ranks(2),
        when=(_gpt2_conv1d,),
        layout=_fixed(MATRIX_IN_OUT),
    ),
    # --- mixture-of-experts stacks -----------------------------------------------------------
    NameRule(
        r"(?:^|\.)experts\.(?P<m>gate_up_proj|down_proj|up_proj|gate_proj|w1|w2|w3)$",
        Role.WEIGHT,
        "MoE expert stack {m}",
        ranks=_ranks(3),
        layout=_moe_stack,
    ),
    NameRule(
        r"(?:^|\.)experts\.(?P<m>\w+)\.weight$",
        Role.WEIGHT,
        "MoE expert stack {m} [experts, out, in]",
        ranks=_ranks(3),
        layout=_fixed(_MOE_OUT_IN),
    ),
    # --- Flax / TF kernels -------------------------------------------------------------------
    NameRule(
        r"(?:^|[./])kernel$",
        Role.WEIGHT,
        "Flax/Keras Dense kernel [in, out]",
        ranks=_ranks(2),
        layout=_fixed(MATRIX_IN_OUT),
    ),
    NameRule(
        r"(?:^|[./])kernel$",
        Role.WEIGHT,
        "Flax/Keras conv kernel [k…, in, out] (HWIO)",
        ranks=CONV_RANKS,
        layout=_hwio_conv,
    ),
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "{format} 2-D weight [in, out]",
        ranks=_ranks(2),
        formats=COLUMN_MAJOR_FORMATS,
        layout=_fixed(MATRIX_IN_OUT),
    ),
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "{format} conv [k…, in, out]",
        ranks=CONV_RANKS,
        formats=COLUMN_MAJOR_FORMATS,
        layout=_hwio_conv,
    ),
    # --- MLX conv [out, k…, in] --------------------------------------------------------------
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "MLX conv [out, k…, in]",
        ranks=CONV_RANKS,
        formats=frozenset({"mlx"}),
        layout=_mlx_conv,
    ),
    # --- PyTorch Conv / ConvTranspose / Linear -----------------------------------------------
    NameRule(
        r"(?i)(?:conv_?transpose|deconv|upconv|convtranspose)\w*\.weight$",
        Role.WEIGHT,
        "ConvTranspose{dim} [in, out/g, k…]",
        ranks=CONV_RANKS,
        layout=_torch_conv_transpose,
    ),
    NameRule(r"\.weight$", Role.WEIGHT, "Conv{dim} [out, in/g, k…]", ranks=CONV_RANKS, layout=_torch_conv),
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "Linear [out, in] (2-D .weight)",
        ranks=_ranks(2),
        layout=_fixed(LINEAR_OUT_IN),
    ),
    NameRule(r"(?:^|\.)(?P<m>prelu|act\w*)\.weight$", Role.PRELU_SLOPE, "PReLU slope", ranks=_ranks(0, 1)),
    # --- what is left ------------------------------------------------------------------------
    NameRule(r"", Role.SCALAR, "0-D float scalar (e.g. logit_scale)", ranks=_ranks(0)),
    NameRule(r"", Role.UNKNOWN, "no name rule matched"),
)


# ---------------------------------------------------------------------------------------------
# Family detection: a few checkpoint families change how a name is read.
# ---------------------------------------------------------------------------------------------
FAMILY_MARKERS: dict[str, re.Pattern[str]] = {
    "whisper": re.compile(r"(?:^|\.)encoder\.conv2\.weight$"),
}


def detect_families(names: Iterable[str]) -> frozenset[str]:
    names = list(names)
    return frozenset(family for family, marker in FAMILY_MARKERS.items() if any(map(marker.search, names)))


def _matches(rule: NameRule, param: Param, ctx: NameContext) -> re.Match[str] | None:
    if rule.ranks is not None and len(param.shape) not in rule.ranks:
        return None
    is_float = param.dtype in FLOAT_DTYPES
    if rule.floats is True and not is_float:
        return None
    if rule.floats is False and (is_float or param.dtype in _PACKED_DTYPES):
        return None
    if rule.formats is not None and ctx.format_hint not in rule.formats:
        return None
    match = rule.compiled.search(param.name)
    if match is None:
        return None
    if not all(condition(param, ctx, match) for condition in rule.when):
        return None
    return match


def classify_one(param: Param, ctx: NameContext) -> Param:
    for rule in NAME_RULES:
        match = _matches(rule, param, ctx)
        if match is None:
            continue
        layout, extra = rule.layout(param, ctx) if rule.layout is not None else (None, "")
        words = {key: value for key, value in match.groupdict().items() if value is not None}
        words.setdefault("m", "")
        reason = rule.reason.format(
            **words,
            leaf="." + param.name.rsplit(".", 1)[-1] if "." in param.name else param.name,
            dtype=param.dtype,
            rank=len(param.shape),
            dim=f"{len(param.shape) - 2}d" if len(param.shape) > 2 else "",
            format=(ctx.format_hint or "").upper() or "TF/Flax",
        )
        return param.classified(rule.role, reason + extra, layout)
    raise AssertionError("the last rule matches every tensor")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Weight normalization (torch.nn.utils.weight_norm, or its parametrization form): a stored pair
# (g, v) stands for weight = g · v / ‖v‖, the norm taken over every axis but one (``dim``, whose
# size g keeps) or over all of them (g a single value).  v is the layer's weight as the method
# sees it; g is derived from the new v (see plan.py), so that the effective weight is v itself.
# ---------------------------------------------------------------------------------------------
WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class WeightNormPair:
    prefix: str  # the module: its weight would be ``prefix + ".weight"``
    magnitude: str  # g
    direction: str  # v
    axes: tuple[int, ...]  # the axes of v the norm sums over


def weight_norm_pair(name: str, shapes: dict[str, Shape]) -> WeightNormPair | None:
    """The stored weight-norm pair ``name`` belongs to, if both halves are there and their
    shapes fit (g: v's shape with every axis 1 but the kept one, or a single value)."""
    for g_suffix, v_suffix in WEIGHT_NORM_SUFFIXES:
        if name.endswith(g_suffix):
            prefix = name[: -len(g_suffix)]
        elif name.endswith(v_suffix):
            prefix = name[: -len(v_suffix)]
        else:
            continue
        g, v = prefix + g_suffix, prefix + v_suffix
        if g not in shapes or v not in shapes:
            return None
        axes = _norm_axes(shapes[g], shapes[v])
        return None if axes is None else WeightNormPair(prefix, g, v, axes)
    return None


def _norm_axes(g: Shape, v: Shape) -> tuple[int, ...] | None:
    if not v or math.prod(v) == 0:
        return None
    if math.prod(g) == 1 and (len(g) in (0, len(v))):
        return tuple(range(len(v)))  # dim=None: one norm over the whole tensor
    if len(g) != len(v):
        return None
    kept = [axis for axis, size in enumerate(g) if size != 1]
    if len(kept) != 1 or g[kept[0]] != v[kept[0]]:
        return None
    return tuple(axis for axis in range(len(v)) if axis != kept[0])


def _classify_weight_norm(param: Param, pair: WeightNormPair, ctx: NameContext) -> Param:
    if param.name == pair.direction:
        as_weight = classify_one(replace(param, name=pair.prefix + ".weight"), ctx)
        return param.classified(
            as_weight.role,
            f"weight-norm direction v of {pair.prefix}.weight; {as_weight.reason}",
            as_weight.layout,
        )
    over = "all axes" if len(pair.axes) == len(ctx.shapes[pair.direction]) else f"axes {list(pair.axes)}"
    return param.classified(
        Role.WEIGHT_NORM_G,
        f"weight-norm magnitude g of {pair.prefix}.weight: ‖{pair.direction.rsplit('.', 1)[-1]}‖ over {over}",
    )


def classify_params(params: list[Param], format_hint: str | None) -> list[Param]:
    """Give every param a role, a layout and a reason from :data:`NAME_RULES` (first match wins);
    the halves of a weight-norm pair as the layer's weight (v) and its derived magnitude (g).

    ``format_hint`` is the bundle's ``__metadata__["format"]`` (pt, tf, flax, mlx, np or None); it
    switches the layout conventions of 2-D weights and convolutions.  Pure: returns new records.
    """
    ctx = NameContext(
        shapes={p.name: p.shape for p in params},
        dtypes={p.name: p.dtype for p in params},
        format_hint=(format_hint or None) and format_hint.lower(),
        families=detect_families(p.name for p in params),
    )
    classified = []
    for param in params:
        pair = weight_norm_pair(param.name, ctx.shapes) if param.dtype in FLOAT_DTYPES else None
        if pair is not None and all(
            ctx.dtypes[name] in FLOAT_DTYPES for name in (pair.magnitude, pair.direction)
        ):
            classified.append(_classify_weight_norm(param, pair, ctx))
        else:
            classified.append(classify_one(param, ctx))
    return classified


__all__ = [
    "NAME_RULES",
    "NameContext",
    "NameRule",
    "WeightNormPair",
    "classify_one",
    "classify_params",
    "detect_families",
    "weight_norm_pair",
]
