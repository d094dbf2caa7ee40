"""Classify stored tensors by name, rank and dtype alone (safetensors bundles have no graph).

The rules are one ordered table, :data:`NAME_RULES`; the first rule whose pattern, rank, dtype,
format and context conditions all hold decides a tensor's role, its layout (which axes are in,
out, batch) and the human reason shown in the table.  Order matters: buffers and quantization
tensors come before anything that could make them look learnable, norms before biases, special
learnables before the generic Linear/Conv rules, and the fallback "unknown" comes last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from netinit_cli.classify.families import EMBEDDING_TABLE, WeightNormPair, detect_families, weight_norm_pair
from netinit_cli.classify.layouts import EMBEDDING_LAYOUT, LINEAR_OUT_IN, MATRIX_IN_OUT, MOE_OUT_IN
from netinit_cli.classify.name_context import (
    Condition,
    LayoutFn,
    NameContext,
    fixed,
    gpt2_conv1d,
    hwio_conv,
    in_family,
    int_quantized_sibling,
    mlx_conv,
    moe_stack,
    norm_parent,
    packed,
    rnn_bias,
    rnn_weight,
    scaled_fp8,
    torch_conv,
    torch_conv_transpose,
)
from netinit_cli.dtypes import FLOAT_DTYPES
from netinit_cli.model import Param, Role

# Scale and packed formats: never generated (E8M0 cannot even hold 0).
_PACKED_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0"})


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
        when=(in_family("whisper"),),
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
        r"\.weight$", Role.QUANTIZED, "FP8 block-scaled weight (has a scale tensor)", when=(scaled_fp8,)
    ),
    NameRule(
        r"(?:^|\.)(?P<m>scales|biases)$",
        Role.QUANTIZED,
        "quantization {m} of an integer-packed weight",
        when=(int_quantized_sibling,),
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
        layout=fixed(LINEAR_OUT_IN),
    ),
    NameRule(
        r"(?:^|\.)(?P<m>lora_A|lora_down)(?:\.[\w]+)*\.weight$",
        Role.WEIGHT,
        "LoRA A ({m}) as a conv [r, in, k…]",
        ranks=CONV_RANKS,
        layout=torch_conv,
    ),
    NameRule(
        r"lora_embedding_A(?:\.\w+)?$",
        Role.WEIGHT,
        "LoRA embedding A [r, vocab]",
        ranks=_ranks(2),
        layout=fixed(LINEAR_OUT_IN),
    ),
    NameRule(r"(?:^|\.)alpha$", Role.CONSTANT, "LoRA alpha scalar", ranks=_ranks(0)),
    # --- norms (1-D; before biases and layer scales) -----------------------------------------
    NameRule(
        r"\.(?:weight|gamma|scale|g)$",
        Role.NORM_SCALE,
        "1-D {leaf} of a norm layer",
        ranks=_ranks(1),
        when=(norm_parent,),
    ),
    NameRule(
        r"\.(?:bias|beta|b)$",
        Role.NORM_SHIFT,
        "1-D {leaf} of a norm layer",
        ranks=_ranks(1),
        when=(norm_parent,),
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
        EMBEDDING_TABLE,
        Role.EMBEDDING,
        "embedding table {m} [vocab, dim]",
        ranks=_ranks(2),
        layout=fixed(EMBEDDING_LAYOUT),
    ),
    NameRule(
        r"(?:^|\.)(?P<m>embedding|embeddings)$",
        Role.EMBEDDING,
        "Flax/Keras embedding [vocab, dim]",
        ranks=_ranks(2),
        layout=fixed(EMBEDDING_LAYOUT),
    ),
    # --- biases ------------------------------------------------------------------------------
    NameRule(
        r"(?:^|[._])bias_(?:ih|hh)_l\d+(?:_reverse)?$",
        Role.BIAS,
        "torch RNN bias",
        ranks=_ranks(1),
        layout=rnn_bias,
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
        layout=packed(3, "q, k, v"),
    ),
    NameRule(
        r"(?:^|\.)weight_hh_l\d+(?:_reverse)?$",
        Role.RECURRENT,
        "recurrent weight_hh",
        ranks=_ranks(2),
        layout=rnn_weight,
    ),
    NameRule(
        r"(?:^|\.)weight_(?:ih|hr)_l\d+(?:_reverse)?$",
        Role.WEIGHT,
        "RNN input weight_ih",
        ranks=_ranks(2),
        layout=rnn_weight,
    ),
    # --- GPT-2 Conv1D [in, out] --------------------------------------------------------------
    NameRule(
        r"(?:^|\.)h\.\d+\.(?:attn|mlp|crossattention)\.(?P<m>c_attn|c_proj|c_fc|q_attn)\.weight$",
        Role.WEIGHT,
        "GPT-2 Conv1D [in, out] ({m})",
        ranks=_ranks(2),
        when=(gpt2_conv1d,),
        layout=fixed(MATRIX_IN_OUT),
    ),
    # --- mixture-of-experts stacks -----------------------------------------------------------
    NameRule(
        r"(?:^|\.)experts\.(?P<m>gate_up_proj|down_proj|up_proj|gate_proj|w1|w2|w3)$",
        Role.WEIGHT,
        "MoE expert stack {m}",
        ranks=_ranks(3),
        layout=moe_stack,
    ),
    NameRule(
        r"(?:^|\.)experts\.(?P<m>\w+)\.weight$",
        Role.WEIGHT,
        "MoE expert stack {m} [experts, out, in]",
        ranks=_ranks(3),
        layout=fixed(MOE_OUT_IN),
    ),
    # --- Flax / TF kernels -------------------------------------------------------------------
    NameRule(
        r"(?:^|[./])kernel$",
        Role.WEIGHT,
        "Flax/Keras Dense kernel [in, out]",
        ranks=_ranks(2),
        layout=fixed(MATRIX_IN_OUT),
    ),
    NameRule(
        r"(?:^|[./])kernel$",
        Role.WEIGHT,
        "Flax/Keras conv kernel [k…, in, out] (HWIO)",
        ranks=CONV_RANKS,
        layout=hwio_conv,
    ),
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "{format} 2-D weight [in, out]",
        ranks=_ranks(2),
        formats=COLUMN_MAJOR_FORMATS,
        layout=fixed(MATRIX_IN_OUT),
    ),
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "{format} conv [k…, in, out]",
        ranks=CONV_RANKS,
        formats=COLUMN_MAJOR_FORMATS,
        layout=hwio_conv,
    ),
    # --- MLX conv [out, k…, in] --------------------------------------------------------------
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "MLX conv [out, k…, in]",
        ranks=CONV_RANKS,
        formats=frozenset({"mlx"}),
        layout=mlx_conv,
    ),
    # --- PyTorch Conv / ConvTranspose / Linear -----------------------------------------------
    NameRule(
        r"(?i)(?:conv_?transpose|deconv|upconv|convtranspose)\w*\.weight$",
        Role.WEIGHT,
        "ConvTranspose{dim} [in, out/g, k…]",
        ranks=CONV_RANKS,
        layout=torch_conv_transpose,
    ),
    NameRule(r"\.weight$", Role.WEIGHT, "Conv{dim} [out, in/g, k…]", ranks=CONV_RANKS, layout=torch_conv),
    NameRule(
        r"\.weight$",
        Role.WEIGHT,
        "Linear [out, in] (2-D .weight)",
        ranks=_ranks(2),
        layout=fixed(LINEAR_OUT_IN),
    ),
    NameRule(r"(?:^|\.)(?P<m>prelu|act\w*)\.weight$", Role.PRELU_SLOPE, "PReLU slope", ranks=_ranks(0, 1)),
    # --- what is left ------------------------------------------------------------------------
    NameRule(r"", Role.SCALAR, "0-D float scalar (e.g. logit_scale)", ranks=_ranks(0)),
    NameRule(r"", Role.UNKNOWN, "no name rule matched"),
)


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
