"""The ``hf`` preset: what transformers' ``_init_weights`` gives (transformers 5.24).

The generic ``PreTrainedModel._init_weights`` (modeling_utils.py): Linear, Conv1-3d and
ConvTranspose1-2d weights N(0, σ), biases 0; Embedding N(0, σ) with the padding row 0; nn.LSTM
xavier_uniform weights, biases 0; MultiheadAttention torch's own reset; norms 1/0; BatchNorm
statistics 0/1.  σ = ``initializer_range`` (or 0.02 if it is 0), else ``init_std``, else
``initializer_factor``, else the text config's ``initializer_range``, else 0.02.  Families
override parts of it; a family netinit does not know gets the generic rule and a note, as a
model without its own ``_init_weights`` does in transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from netinit_cli.distributions import Distribution
from netinit_cli.model import Param, Role

from .choice import ModelContext, PresetChoice, TensorContext, constant, draw, keep, normal, short
from .frameworks import decide_torch, fans, norm_and_buffers, shared_roles, xavier_uniform

Options = Mapping[str, object]

DEFAULT_STD = 0.02
# model_type → family.  Families with no override of their own ("generic") are listed so that
# they do not get the "unknown family" note.
FAMILIES: dict[str, str] = {
    "gpt2": "gpt2",
    "t5": "t5",
    "mt5": "t5",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "vit": "vit",
    "whisper": "whisper",
    "resnet": "resnet",
    **{name: "generic" for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "bert")},
}
FAMILY_CHOICES = ("auto", "generic", "gpt2", "t5", "gemma", "vit", "whisper", "resnet")
# Without a config: a name that only one family uses.
FAMILY_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gpt2", re.compile(r"(?:^|\.)h\.\d+\.attn\.c_attn\.weight$")),
    ("t5", re.compile(r"\.SelfAttention\.q\.weight$")),
    ("whisper", re.compile(r"(?:^|\.)encoder\.conv2\.weight$")),
    ("vit", re.compile(r"(?:^|\.)embeddings\.patch_embeddings\.projection\.weight$")),
    ("resnet", re.compile(r"(?:^|\.)embedder\.embedder\.convolution\.weight$")),
)
# Families whose token table is an nn.Embedding built without padding_idx.
NO_PADDING_ROW = frozenset({"gpt2", "t5"})
TOKEN_TABLE = re.compile(r"(?:^|\.)(?:embed_tokens|word_embeddings|wte|tok_embeddings|embed_in)\.weight$")
T5_DEFAULTS = {"d_model": 512.0, "d_kv": 64.0, "d_ff": 2048.0, "num_heads": 8.0}


def family(model: ModelContext, options: Options) -> tuple[str, str]:
    """(family, how it was found): the option, the config's model_type, or a marker name."""
    chosen = str(options.get("family") or "auto")
    if chosen != "auto":
        return chosen, "hf(family=…)"
    model_type = model.model_type
    if model_type is not None:
        return FAMILIES.get(model_type, "generic"), f"model_type {model_type}"
    for name, marker in FAMILY_MARKERS:
        if any(marker.search(n) for n in model.names):
            return name, "tensor names"
    return "generic", ""


def sigma(model: ModelContext, options: Options) -> float:
    """σ in transformers' fallback order (modeling_utils.py ``_init_weights``)."""
    given = options.get("initializer_range")
    if given is not None:
        return float(given)  # type: ignore[arg-type]
    config = model.config
    for key in ("initializer_range", "init_std", "initializer_factor"):
        if key in config and isinstance(config[key], int | float):
            value = float(config[key])
            return (value or DEFAULT_STD) if key == "initializer_range" else value
    text = config.get("text_config")
    if isinstance(text, Mapping) and isinstance(text.get("initializer_range"), int | float):
        return float(text["initializer_range"]) or DEFAULT_STD
    return DEFAULT_STD


def notes(model: ModelContext, options: Options) -> list[str]:
    """Model-level notes: no config, unknown family (each said once, not per tensor)."""
    found: list[str] = []
    if model.config_path is None and options.get("initializer_range") is None:
        found.append(f"hf: no config.json beside the model: transformers' defaults (σ = {DEFAULT_STD})")
    name, how = family(model, options)
    if how == "tensor names":
        found.append(f"hf: family {name} recognized from the tensor names (no model_type)")
    if name == "generic" and not how.startswith("hf(") and model.model_type not in FAMILIES:
        what = f"model_type {model.model_type!r}" if model.model_type else "the model family"
        found.append(
            f"hf: {what} is not in netinit's table: the generic _init_weights rule (N(0, σ), biases 0, "
            "norms 1/0), as transformers uses for a model without its own _init_weights"
        )
    return found


def decide_hf(param: Param, ctx: TensorContext, options: Options) -> PresetChoice:
    model = ctx.model
    name, _ = family(model, options)
    std = sigma(model, options)
    special = {
        "gpt2": _gpt2,
        "t5": _t5,
        "gemma": _gemma,
        "vit": _vit,
        "whisper": _whisper,
        "resnet": _resnet,
    }.get(name)
    choice = special(param, ctx, options, std) if special is not None else None
    return choice or _generic(param, ctx, name, std)


def _generic(param: Param, ctx: TensorContext, name: str, std: float) -> PresetChoice:
    role, tags = param.role, ctx.tags
    if "mha_in_proj" in tags or "mha_bias_kv" in tags:
        return decide_torch(param, ctx, {})  # MultiheadAttention: torch's own _reset_parameters
    if role is Role.PRELU_SLOPE:
        return constant(0.25, "(nn.PReLU default, not touched by _init_weights)")
    fixed = shared_roles(param) or norm_and_buffers(param)
    if fixed is not None:
        return fixed
    if "rnn" in tags or role is Role.RECURRENT:
        if not _is_lstm(param):
            return decide_torch(param, ctx, {})  # GRU/RNN: not touched by _init_weights
        if role is Role.BIAS:
            return constant(0.0, "(nn.LSTM bias)")
        fan_in, fan_out = fans(param, ctx, torch=True)
        return xavier_uniform(fan_in, fan_out, "xavier_uniform (nn.LSTM)")
    if role is Role.BIAS:
        return constant(0.0)
    if role is Role.EMBEDDING:
        return _embedding(param, ctx, name, std)
    return normal(std, f"(σ = {short(std)})")


def _is_lstm(param: Param) -> bool:
    """An LSTM tensor: 4 gate blocks (torch weights and biases, ONNX W/R), or ONNX B's 8."""
    return param.layout is not None and param.layout.blocks in (4, 8)


def _embedding(param: Param, ctx: TensorContext, name: str, std: float) -> PresetChoice:
    choice = normal(std, f"(σ = {short(std)})")
    pad = ctx.model.number("pad_token_id")
    if name in NO_PADDING_ROW or pad is None or not TOKEN_TABLE.search(param.name):
        return choice
    if not (0 <= pad < param.shape[0]) or pad != int(pad):
        return choice
    return PresetChoice(
        choice.kind,
        f"{choice.label}, padding row {int(pad)} = 0",
        choice.distribution,
        zero_rows=(int(pad),),
    )


Special = PresetChoice | None


def _gpt2(param: Param, ctx: TensorContext, options: Options, std: float) -> Special:
    """modeling_gpt2.py: every attn/mlp ``c_proj.weight`` N(0, σ/√(2·n_layer))."""
    if param.role is not Role.WEIGHT or not re.search(
        r"\.(?:attn|crossattention|mlp)\.c_proj\.weight$", param.name
    ):
        return None
    layers = (
        options.get("num_layers") or ctx.model.number("n_layer", "num_hidden_layers") or ctx.model.num_layers
    )
    if not layers:
        return normal(std, "(c_proj: n_layer unknown, give hf(num_layers=N))")
    scaled = std / math.sqrt(2.0 * float(layers))  # type: ignore[arg-type]
    return normal(scaled, f"scaled residual σ/√(2·{int(layers)})")  # type: ignore[call-overload]


def _t5_dims(ctx: TensorContext) -> dict[str, float]:
    return {key: ctx.model.number(key) or default for key, default in T5_DEFAULTS.items()}


# (pattern, which std): "f" = f, "d" = f·d_model^-½, "ff" = f·d_ff^-½, "q" = f·(d_model·d_kv)^-½,
# "o" = f·(num_heads·d_kv)^-½ (modeling_t5.py _init_weights).
T5_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), which)
    for pattern, which in (
        (r"Attention\.q\.weight$", "q"),
        (r"Attention\.[kv]\.weight$", "d"),
        (r"Attention\.o\.weight$", "o"),
        (r"(?:^|\.)relative_attention_bias\.weight$", "d"),
        (r"\.wi(?:_0|_1)?\.weight$", "d"),
        (r"\.wo\.weight$", "ff"),
        (r"(?:^|\.)(?:shared|embed_tokens)\.weight$", "f"),
        (r"(?:^|\.)lm_head\.weight$", "f"),
        (r"(?:^|\.)qa_outputs\.weight$", "d"),
        (r"(?:^|\.)classification_head\.(?:dense|out_proj)\.weight$", "d"),
        (r"(?:^|\.)classifier\.weight$", "f"),
    )
)


def _t5(param: Param, ctx: TensorContext, options: Options, std: float) -> Special:
    given = options.get("initializer_factor")
    factor = float(given) if given is not None else (ctx.model.number("initializer_factor") or 1.0)  # type: ignore[arg-type]
    if param.role is Role.NORM_SCALE:
        return constant(factor, "(T5LayerNorm: initializer_factor)")
    dims = _t5_dims(ctx)
    scale = {
        "f": (1.0, "f"),
        "d": (dims["d_model"] ** -0.5, "f·d_model^-½"),
        "ff": (dims["d_ff"] ** -0.5, "f·d_ff^-½"),
        "q": ((dims["d_model"] * dims["d_kv"]) ** -0.5, "f·(d_model·d_kv)^-½"),
        "o": ((dims["num_heads"] * dims["d_kv"]) ** -0.5, "f·(num_heads·d_kv)^-½"),
    }
    for pattern, which in T5_RULES:
        if pattern.search(param.name):
            value, formula = scale[which]
            return normal(factor * value, f"T5 {formula}")
    return None


def _gemma(param: Param, ctx: TensorContext, options: Options, std: float) -> Special:
    """modeling_gemma.py: RMSNorm computes x·(1 + w), so its weight starts at 0."""
    return constant(0.0, "(Gemma RMSNorm x·(1+w))") if param.role is Role.NORM_SCALE else None


def _vit(param: Param, ctx: TensorContext, options: Options, std: float) -> Special:
    """modeling_vit.py: position_embeddings and cls_token trunc_normal_(0, σ) with torch's absolute
    bounds ±2; mask_token 0.  (5.x: Linear/Conv are the generic N(0, σ); 4.x drew them truncated.)"""
    leaf = param.name.rsplit(".", 1)[-1]
    if leaf in ("position_embeddings", "cls_token"):
        return draw(Distribution("truncated_normal", (0.0, std, -2.0, 2.0)), "(trunc_normal_, bounds ±2)")
    if leaf == "mask_token":
        return constant(0.0, "(mask_token)")
    return None


def _whisper(param: Param, ctx: TensorContext, options: Options, std: float) -> Special:
    """modeling_whisper.py: the encoder's positions are fixed sinusoids, copied, never drawn."""
    if re.search(r"(?:^|\.)encoder\.embed_positions\.weight$", param.name):
        return keep("Whisper encoder sinusoidal positions are fixed")
    return None


def _resnet(param: Param, ctx: TensorContext, options: Options, std: float) -> Special:
    """modeling_resnet.py: Conv2d kaiming_normal_(fan_out, relu); Linear torch's default."""
    if param.role is Role.WEIGHT and len(param.shape) >= 3:
        _, fan_out = fans(param, ctx, torch=True)
        return normal(math.sqrt(2.0 / fan_out), f"kaiming_normal(fan_out, relu), fan_out {fan_out}")
    if param.role is Role.WEIGHT or (param.role is Role.BIAS and ctx.layer_fan_in):
        return decide_torch(param, ctx, {})
    return None


__all__ = ["FAMILIES", "FAMILY_CHOICES", "decide_hf", "family", "notes", "sigma"]
