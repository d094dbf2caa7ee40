"""The torch, keras, flax and megatron presets: one function per preset, role by role.

Each function takes the classified Param, its :class:`TensorContext` and the preset's option
values and returns a :class:`PresetChoice` (without the ``preset:`` label prefix).  Sources:
torch/nn/modules (linear.py, conv.py, rnn.py, activation.py, sparse.py), keras/src/layers and
keras/src/initializers/random_initializers.py, flax/linen (linear.py, recurrent.py) with
jax/_src/nn/initializers.py, megatron/core/utils.py (init_method_normal, scaled_init_method_normal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from netinit_cli.distributions import Distribution
from netinit_cli.model import Layout, Param, Role

from .choice import (
    PresetChoice,
    TensorContext,
    constant,
    derived,
    draw,
    keep,
    normal,
    orthogonal,
    short,
    uniform,
)

Options = Mapping[str, object]

# std of N(0, 1) cut at ±2: Keras/JAX truncated variance scaling draws N(0, s/c) cut at ±2·s/c so
# that the std is s (keras random_initializers.py:304-306; jax nn/initializers.py).
TRUNCATED_STD = 0.87962566103423978
# Roles a framework's module defaults never define: netinit's own role defaults (methods.py).
NETINIT_LAYER_SCALE = 1e-6
NETINIT_TOKEN = Distribution("truncated_normal", (0.0, 0.02, -0.04, 0.04))
ONNX_LSTM_BIAS_BLOCKS, ONNX_LSTM_FORGET_BLOCK = 8, 2  # ONNX B = [Wb, Rb], gates i, o, f, c


def shared_roles(param: Param) -> PresetChoice | None:
    """Roles every preset treats alike; None for the roles the preset decides."""
    role = param.role
    if role in (Role.CONSTANT, Role.QUANTIZED):
        return keep("never initialized")
    if role in (Role.SCALAR, Role.UNKNOWN, Role.CONFLICT):
        return keep(f"{role.value}: opt in with --rule")
    if role is Role.WEIGHT_NORM_G:
        return derived()
    if role is Role.ZERO:
        return constant(0.0, "(LoRA B convention)")
    if role is Role.LAYER_SCALE:
        return constant(NETINIT_LAYER_SCALE, "(netinit default: no framework default for layer scale)")
    if role is Role.TOKEN:
        return draw(NETINIT_TOKEN, "(netinit default: no framework default for tokens)")
    return None


def norm_and_buffers(param: Param, scale: float = 1.0) -> PresetChoice | None:
    values = {
        Role.NORM_SCALE: scale,
        Role.NORM_SHIFT: 0.0,
        Role.RUNNING_MEAN: 0.0,
        Role.RUNNING_VAR: 1.0,
    }
    return constant(values[param.role]) if param.role in values else None


def fans(param: Param, ctx: TensorContext, *, torch: bool) -> tuple[int, int]:
    """(fan_in, fan_out), at least 1: the torch-parity or semantic fans of the context, else
    torch's reading of the stored shape ``[out, in, k…]``, else the element count."""
    chosen = ctx.torch_fans if torch else ctx.fans
    if chosen is None and len(param.shape) >= 2:
        field = math.prod(param.shape[2:])
        chosen = (param.shape[1] * field, param.shape[0] * field)
    if chosen is None:
        size = max(math.prod(param.shape), 1)
        chosen = (size, size)
    return max(chosen[0], 1), max(chosen[1], 1)


def rnn_hidden(param: Param, ctx: TensorContext) -> int:
    """H of an RNN tensor: the context's, else the gate axis of the layout split in its blocks."""
    if ctx.rnn_hidden:
        return ctx.rnn_hidden
    layout = param.layout
    if layout is not None and layout.out_axes:
        return max(param.shape[layout.out_axes[0]] // max(layout.blocks, 1), 1)
    return max(param.shape[0] if param.shape else 1, 1)


def forget_block(layout: Layout | None) -> int | None:
    """Which gate block of an LSTM bias holds the forget gate (set on one bias vector only)."""
    if layout is None or not layout.out_axes:
        return None
    if layout.forget_block is not None:
        return layout.forget_block
    return ONNX_LSTM_FORGET_BLOCK if layout.blocks == ONNX_LSTM_BIAS_BLOCKS else None


def xavier_uniform(fan_in: int, fan_out: int, why: str) -> PresetChoice:
    return uniform(math.sqrt(6.0 / (fan_in + fan_out)), f"{why}, fans {fan_in}/{fan_out}")


# ---------------------------------------------------------------------------------------------
# torch: module defaults (torch/nn/modules/*, 2.13.0).


def decide_torch(param: Param, ctx: TensorContext, options: Options) -> PresetChoice:
    fixed = shared_roles(param) or norm_and_buffers(param)
    if fixed is not None:
        return fixed
    role, tags = param.role, ctx.tags
    if role is Role.PRELU_SLOPE:
        return constant(0.25, "(nn.PReLU)")
    if "rnn" in tags or role is Role.RECURRENT:
        hidden = rnn_hidden(param, ctx)
        return uniform(1.0 / math.sqrt(hidden), f"(RNN: 1/√hidden, hidden {hidden})")
    if "mha_in_proj" in tags:
        if role is Role.BIAS:
            return constant(0.0, "(MultiheadAttention in_proj_bias)")
        fan_in, fan_out = fans(param, ctx, torch=True)
        return xavier_uniform(fan_in, fan_out, "xavier_uniform (MultiheadAttention in_proj)")
    if "mha_out_proj_bias" in tags:
        return constant(0.0, "(MultiheadAttention out_proj.bias)")
    if "mha_bias_kv" in tags:
        fan_in, fan_out = fans(param, ctx, torch=True)
        std = math.sqrt(2.0 / (fan_in + fan_out))
        return normal(std, f"xavier_normal (MultiheadAttention bias_k/v), fans {fan_in}/{fan_out}")
    if role is Role.EMBEDDING:
        return normal(1.0, "(nn.Embedding; padding_idx is not stored)")
    if role is Role.BIAS:
        if ctx.layer_fan_in is None:
            return constant(0.0, "(its layer's weight was not found; torch uses U(±1/√fan_in))")
        if ctx.layer_fan_in == 0:
            return constant(0.0, "(layer fan_in 0)")
        return uniform(
            1.0 / math.sqrt(ctx.layer_fan_in), f"1/√fan_in of the layer, fan_in {ctx.layer_fan_in}"
        )
    fan_in, _ = fans(param, ctx, torch=True)
    return uniform(1.0 / math.sqrt(fan_in), f"kaiming_uniform(a=√5), torch fan_in {fan_in}")


# ---------------------------------------------------------------------------------------------
# keras: Keras 3 layer defaults.  Fans are Keras's compute_fans, which for every kernel Keras
# stores equal torch's fans of the same parameter in torch's orientation (Dense [in, out] ↔
# Linear [out, in]; Conv [k…, in/g, out]; Conv*Transpose [k…, out, in] ↔ torch [in, out/g, k…];
# LSTM kernel [in, 4u] and recurrent kernel [u, 4u] whole) — so torch_fans is Keras parity.


def decide_keras(param: Param, ctx: TensorContext, options: Options) -> PresetChoice:
    fixed = shared_roles(param) or norm_and_buffers(param)
    if fixed is not None:
        return fixed
    role = param.role
    if role is Role.PRELU_SLOPE:
        return constant(0.0, "(PReLU alpha_initializer zeros)")
    if role is Role.RECURRENT:
        return orthogonal(1.0, per_block=False, why="(recurrent_kernel)")
    if role is Role.EMBEDDING:
        return uniform(0.05, "(Embedding 'uniform')")
    if role is Role.BIAS:
        block = forget_block(param.layout) if options.get("unit_forget_bias") else None
        if block is None:
            return constant(0.0)
        return PresetChoice(
            "constant",
            f"constant 0, forget-gate block {block} = 1 (unit_forget_bias)",
            Distribution("constant", (0.0,)),
            block_values=((block, 1.0),),
        )
    fan_in, fan_out = fans(param, ctx, torch=True)
    return xavier_uniform(fan_in, fan_out, "glorot_uniform")


# ---------------------------------------------------------------------------------------------
# flax: linen defaults.  Fans are semantic: Flax kernels are [k…, in/g, out] (ConvTranspose
# [k…, in, out]), so fan_in = in/g·∏k, which is Layout.fans' per-group fan_in.


def lecun_normal(fan_in: int) -> Distribution:
    """variance_scaling(1, fan_in, truncated_normal): N(0, s/c) cut at ±2s/c, s = √(1/fan_in)."""
    wide = math.sqrt(1.0 / fan_in) / TRUNCATED_STD
    return Distribution("truncated_normal", (0.0, wide, -2.0 * wide, 2.0 * wide))


def decide_flax(param: Param, ctx: TensorContext, options: Options) -> PresetChoice:
    fixed = shared_roles(param) or norm_and_buffers(param)
    if fixed is not None:
        return fixed
    role = param.role
    if role is Role.PRELU_SLOPE:
        return constant(0.01, "(nn.PReLU negative_slope_init)")
    if role is Role.RECURRENT:
        return orthogonal(1.0, per_block=True, why="(LSTMCell/GRUCell recurrent_kernel_init)")
    if role is Role.BIAS:
        return constant(0.0)
    if role is Role.EMBEDDING:
        dim = max(param.shape[-1], 1) if param.shape else 1
        return normal(1.0 / math.sqrt(dim), f"(Embed: variance_scaling(1, fan_in, normal), features {dim})")
    fan_in, _ = fans(param, ctx, torch=False)
    return draw(lecun_normal(fan_in), f"lecun_normal, fan_in {fan_in}")


# ---------------------------------------------------------------------------------------------
# megatron: Megatron-LM core (init_method_normal / scaled_init_method_normal).

# Attention output projection and MLP down projection, inside a numbered transformer layer.
IN_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.\d+\.")
OUTPUT_MODULES = frozenset(
    {
        "o_proj",
        "c_proj",
        "fc2",
        "down_proj",
        "linear_proj",
        "linear_fc2",
        "w2",
        "wo",
        "out_proj",
        "dense_4h_to_h",
    }
)


def is_output_layer(name: str) -> bool:
    """``…layers.3.self_attn.o_proj.weight``, ``h.3.mlp.c_proj.weight``, ``layers.3.mlp.experts.down_proj``,
    GPT-NeoX/Falcon ``…attention.dense``, BERT ``layer.3.attention.output.dense`` and ``layer.3.output.dense``."""
    if not IN_LAYER.search(name):
        return False
    parts = name.split(".")
    if parts[-1] == "weight":
        parts = parts[:-1]
    if parts[-1] in OUTPUT_MODULES:
        return True
    if parts[-1] != "dense" or len(parts) < 3:
        return False
    parent, grandparent = parts[-2], parts[-3]
    return parent.endswith("attention") or (
        parent == "output" and (grandparent == "attention" or grandparent.isdigit())
    )


def decide_megatron(param: Param, ctx: TensorContext, options: Options) -> PresetChoice:
    fixed = shared_roles(param) or norm_and_buffers(param)
    if fixed is not None:
        return fixed
    std = float(options["std"])  # type: ignore[arg-type]
    role = param.role
    if role is Role.BIAS:
        return constant(0.0, "(bias is always set to zero)")
    if role is Role.PRELU_SLOPE:
        return constant(0.25, "(torch nn.PReLU: Megatron has none)")
    if role is Role.EMBEDDING:
        embedding_std = options.get("embedding_std")
        return normal(std if embedding_std is None else float(embedding_std), "(embedding_init_method_std)")  # type: ignore[arg-type]
    if is_output_layer(param.name):
        layers = options.get("num_layers") or ctx.model.num_layers
        if not layers:
            return normal(std, "(output layer, but the layer count is unknown: give megatron(num_layers=N))")
        scaled = std / math.sqrt(2.0 * float(layers))  # type: ignore[arg-type]
        return normal(scaled, f"output layer σ/√(2L), L = {int(layers)}")  # type: ignore[call-overload]
    return normal(std, f"(init_method_std {short(std)})")
