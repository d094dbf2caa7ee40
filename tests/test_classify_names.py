"""Name-rule classification, table-driven: real state-dict names of tiny transformers models of
each family (built from the fixture generator's configs, no network), plus synthetic names for the conventions the tiny
models do not cover (Flax, MLX, LoRA, MoE, RNN, quantized, buffers)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache

import pytest
from conftest import FIXTURES

from netinit_cli.classify.names import NAME_RULES, classify_params
from netinit_cli.model import Param, Role

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TORCH_DTYPES = {"torch.float32": "F32", "torch.int64": "I64", "torch.bool": "BOOL"}


def _tiny(family: str):  # type: ignore[no-untyped-def]
    """The tiny model of ``family``, with the very configs the committed fixtures were made from."""
    path = FIXTURES / "generate_families.py"
    spec = importlib.util.spec_from_file_location("generate_families", path)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator.configs()[family]()


@cache
def family_params(family: str) -> tuple[Param, ...]:
    torch.manual_seed(0)
    state = _tiny(family).state_dict()
    params = [
        Param(name, tuple(value.shape), TORCH_DTYPES[str(value.dtype)]) for name, value in state.items()
    ]
    return tuple(classify_params(params, "pt"))


# For every family: ordered (regex on the name, expected role).  Every name must match one.
EXPECTED: dict[str, list[tuple[str, Role]]] = {
    "gpt2": [
        (r"(wte|wpe)\.weight$", Role.EMBEDDING),
        (r"ln_(1|2|f)\.weight$", Role.NORM_SCALE),
        (r"ln_(1|2|f)\.bias$", Role.NORM_SHIFT),
        (r"\.(c_attn|c_proj|c_fc)\.weight$", Role.WEIGHT),
        (r"\.bias$", Role.BIAS),
        (r"^lm_head\.weight$", Role.WEIGHT),
    ],
    "llama": [
        (r"embed_tokens\.weight$", Role.EMBEDDING),
        (r"(layernorm|norm)\.weight$", Role.NORM_SCALE),
        (r"(proj|lm_head)\.weight$", Role.WEIGHT),
    ],
    "bert": [
        (r"_embeddings\.weight$", Role.EMBEDDING),
        (r"LayerNorm\.weight$", Role.NORM_SCALE),
        (r"LayerNorm\.bias$", Role.NORM_SHIFT),
        (r"\.weight$", Role.WEIGHT),
        (r"\.bias$", Role.BIAS),
        (r"position_ids$|token_type_ids$", Role.CONSTANT),
    ],
    "t5": [
        (r"(shared|embed_tokens|relative_attention_bias)\.weight$", Role.EMBEDDING),
        (r"layer_norm\.weight$", Role.NORM_SCALE),
        (r"\.(q|k|v|o|wi|wo|wi_0|wi_1)\.weight$|^lm_head\.weight$", Role.WEIGHT),
    ],
    "vit": [
        (r"(cls_token|position_embeddings)$", Role.TOKEN),
        (r"layernorm\w*\.weight$", Role.NORM_SCALE),
        (r"layernorm\w*\.bias$", Role.NORM_SHIFT),
        (r"\.weight$", Role.WEIGHT),
        (r"\.bias$", Role.BIAS),
    ],
    "resnet": [
        (r"normalization\.weight$", Role.NORM_SCALE),
        (r"normalization\.bias$", Role.NORM_SHIFT),
        (r"running_mean$", Role.RUNNING_MEAN),
        (r"running_var$", Role.RUNNING_VAR),
        (r"num_batches_tracked$", Role.CONSTANT),
        (r"\.weight$", Role.WEIGHT),
        (r"\.bias$", Role.BIAS),
    ],
    "whisper": [
        (r"encoder\.embed_positions\.weight$", Role.CONSTANT),
        (r"(embed_tokens|embed_positions)\.weight$", Role.EMBEDDING),
        (r"layer_norm\.weight$", Role.NORM_SCALE),
        (r"layer_norm\.bias$", Role.NORM_SHIFT),
        (r"\.weight$", Role.WEIGHT),
        (r"\.bias$", Role.BIAS),
    ],
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_name_of_a_real_family_gets_its_role(family: str) -> None:
    params = family_params(family)
    assert len(params) > 10
    wrong = []
    for param in params:
        expected = next((role for pattern, role in EXPECTED[family] if re.search(pattern, param.name)), None)
        assert expected is not None, f"{param.name} has no expectation in the test table"
        if param.role != expected:
            wrong.append(f"{param.name}: {param.role} ({param.reason}), expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_gpt2_conv1d_fan_in_is_dim_0() -> None:
    conv1d = [p for p in family_params("gpt2") if re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", p.name)]
    assert len(conv1d) == 8
    for param in conv1d:
        assert param.layout is not None
        assert param.layout.fans(param.shape) == (param.shape[0], param.shape[1]), param.name
        assert param.layout.torch_fans(param.shape) == (param.shape[0], param.shape[1])
    c_fc = next(p for p in conv1d if p.name.endswith("h.0.mlp.c_fc.weight"))
    assert c_fc.shape == (32, 128) and c_fc.layout is not None and c_fc.layout.fans(c_fc.shape) == (32, 128)
    assert c_fc.reason == "GPT-2 Conv1D [in, out] (c_fc)"


def test_linear_and_conv_fans_of_real_models() -> None:
    llama_down = next(p for p in family_params("llama") if p.name.endswith("layers.0.mlp.down_proj.weight"))
    assert llama_down.shape == (32, 64)
    assert llama_down.layout is not None and llama_down.layout.fans(llama_down.shape) == (64, 32)
    conv = next(p for p in family_params("whisper") if p.name.endswith("encoder.conv1.weight"))
    assert conv.shape == (32, 8, 3) and conv.reason == "Conv1d [out, in/g, k…]"
    assert conv.layout is not None and conv.layout.fans(conv.shape) == (8 * 3, 32 * 3)


def _one(
    name: str, shape: tuple[int, ...], dtype: str = "F32", hint: str | None = None, *others: Param
) -> Param:
    return classify_params([Param(name, shape, dtype), *others], hint)[0]


# name, shape, dtype, format hint, expected role, expected (fan_in, fan_out) or None, reason fragment
SYNTHETIC = [
    ("features.3.weight", (64, 1, 3, 3), "F32", "pt", Role.WEIGHT, (9, 9), "depthwise: groups = 64"),
    ("up.0.conv_transpose.weight", (16, 8, 4, 4), "F32", "pt", Role.WEIGHT, (256, 128), "ConvTranspose2d"),
    ("Dense_0.kernel", (16, 8), "F32", "flax", Role.WEIGHT, (16, 8), "Dense kernel [in, out]"),
    ("Conv_0.kernel", (3, 3, 4, 8), "F32", "flax", Role.WEIGHT, (36, 72), "HWIO"),
    ("layers.0.conv.weight", (8, 3, 3, 4), "F32", "mlx", Role.WEIGHT, (36, 72), "MLX conv"),
    ("dense.weight", (16, 8), "F32", "tf", Role.WEIGHT, (16, 8), "[in, out]"),
    ("q_proj.lora_A.default.weight", (4, 32), "F32", "pt", Role.WEIGHT, (32, 4), "LoRA A"),
    ("q_proj.lora_B.default.weight", (32, 4), "F32", "pt", Role.ZERO, None, "LoRA B is zero"),
    ("unet.lora_up.weight", (32, 4), "F32", "pt", Role.ZERO, None, "LoRA B"),
    (
        "model.layers.0.mlp.experts.gate_up_proj",
        (4, 32, 128),
        "BF16",
        "pt",
        Role.WEIGHT,
        (32, 128),
        "[experts, in, out]",
    ),
    ("model.layers.0.mlp.experts.gate_up_proj_bias", (4, 128), "BF16", "pt", Role.BIAS, None, "_bias"),
    ("lstm.weight_hh_l0", (64, 16), "F32", "pt", Role.RECURRENT, (16, 16), "LSTM gates"),
    ("attn.in_proj_weight", (96, 32), "F32", "pt", Role.WEIGHT, (32, 32), "packed q, k, v"),
    ("attn.in_proj_bias", (96,), "F32", "pt", Role.BIAS, None, "_bias"),
    ("h.0.attn.bias", (1, 1, 16, 16), "BOOL", "pt", Role.CONSTANT, None, "BOOL tensor"),
    ("h.0.attn.bias", (1, 1, 16, 16), "F32", "pt", Role.CONSTANT, None, "causal mask"),
    ("h.0.attn.masked_bias", (), "F32", "pt", Role.CONSTANT, None, "masked_bias"),
    ("model.layers.0.self_attn.rotary_emb.inv_freq", (8,), "F32", "pt", Role.CONSTANT, None, "inv_freq"),
    ("bert.embeddings.position_ids", (1, 512), "I64", "pt", Role.CONSTANT, None, "I64 tensor"),
    ("bn1.num_batches_tracked", (), "I64", "pt", Role.CONSTANT, None, "step counter"),
    ("stages.0.blocks.0.gamma", (64,), "F32", "pt", Role.LAYER_SCALE, None, "layer scale (gamma)"),
    ("encoder.layer.0.layer_scale_parameter", (64,), "F32", "pt", Role.LAYER_SCALE, None, "layer scale"),
    ("blocks.0.ls1.gamma", (64,), "F32", "pt", Role.LAYER_SCALE, None, "layer scale"),
    ("bert.embeddings.LayerNorm.gamma", (64,), "F32", "pt", Role.NORM_SCALE, None, "norm layer"),
    ("bert.embeddings.LayerNorm.beta", (64,), "F32", "pt", Role.NORM_SHIFT, None, "norm layer"),
    ("cls_token", (1, 1, 32), "F32", "pt", Role.TOKEN, None, "cls_token"),
    ("pos_embed", (1, 17, 32), "F32", "pt", Role.TOKEN, None, "pos_embed"),
    (
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        (32,),
        "F16",
        "pt",
        Role.NORM_SCALE,
        None,
        "norm",
    ),
    ("model.layers.0.mlp.down_proj.weight_packed", (8, 4), "I32", "pt", Role.QUANTIZED, None, "quantized"),
    ("layers.0.qweight", (8, 32), "I32", "pt", Role.QUANTIZED, None, "qweight"),
    ("layers.0.mlp.weight_scale_inv", (1, 1), "F32", "pt", Role.QUANTIZED, None, "weight_scale_inv"),
    ("blocks.0.mx_scales", (4, 2), "F8_E8M0", "pt", Role.QUANTIZED, None, "F8_E8M0"),
    ("logit_scale", (), "F32", "pt", Role.SCALAR, None, "scalar"),
    ("mystery", (7,), "F32", "pt", Role.UNKNOWN, None, "no name rule matched"),
    ("model.layers.0.self_attn.sinks", (4,), "BF16", "pt", Role.TOKEN, None, "sinks"),
]


@pytest.mark.parametrize(("name", "shape", "dtype", "hint", "role", "fans", "reason"), SYNTHETIC)
def test_synthetic_names(
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    hint: str | None,
    role: Role,
    fans: tuple[int, int] | None,
    reason: str,
) -> None:
    param = _one(name, shape, dtype, hint)
    assert param.role == role, param.reason
    assert reason in param.reason
    if fans is not None:
        assert param.layout is not None
        assert param.layout.fans(shape) == fans


def test_context_rules_see_the_other_names() -> None:
    # timm BatchNorm under a name without "norm": recognised by its running_mean sibling.
    siblings = [Param("layer1.0.downsample.1.running_mean", (8,), "F32")]
    assert _one("layer1.0.downsample.1.weight", (8,), "F32", "pt", *siblings).role == Role.NORM_SCALE
    assert _one("layer1.0.downsample.1.weight", (8,), "F32", "pt").role == Role.UNKNOWN
    # FP8 block-scaled weights are quantized only when their scale tensor is present.
    scale = Param("mlp.down_proj.weight_scale_inv", (2, 2), "F32")
    assert _one("mlp.down_proj.weight", (256, 256), "F8_E4M3", "pt", scale).role == Role.QUANTIZED
    assert _one("mlp.down_proj.weight", (256, 256), "F8_E4M3", "pt").role == Role.WEIGHT
    # MLX quantized: float scales/biases beside a U32 packed weight.
    packed = Param("q_proj.weight", (32, 4), "U32")
    assert _one("q_proj.scales", (32, 1), "F16", "mlx", packed).role == Role.QUANTIZED
    assert _one("q_proj.biases", (32, 1), "F16", "mlx", packed).role == Role.QUANTIZED
    # GRU: 3 gates, read from weight_hh.
    hh = Param("gru.weight_hh_l0", (48, 16), "F32")
    ih = _one("gru.weight_ih_l0", (48, 10), "F32", "pt", hh)
    assert ih.layout is not None and ih.layout.blocks == 3 and ih.layout.fans(ih.shape) == (10, 16)
    # Whisper's fixed encoder positions: only in a Whisper-like bundle; BART's are learned.
    conv2 = Param("model.encoder.conv2.weight", (8, 8, 3), "F32")
    assert _one("model.encoder.embed_positions.weight", (16, 8), "F32", "pt", conv2).role == Role.CONSTANT
    assert _one("model.encoder.embed_positions.weight", (16, 8), "F32", "pt").role == Role.EMBEDDING


def test_openclip_c_fc_is_linear_not_gpt2_conv1d() -> None:
    param = _one("transformer.resblocks.0.mlp.c_fc.weight", (128, 32))
    assert param.reason == "Linear [out, in] (2-D .weight)"
    assert param.layout is not None and param.layout.fans(param.shape) == (32, 128)


def test_integers_and_bools_are_never_learnable() -> None:
    for dtype in ("I64", "I32", "I8", "U8", "BOOL", "U32", "I16"):
        for name in ("h.0.mlp.c_fc.weight", "encoder.weight", "x.bias", "norm.weight"):
            param = _one(name, (4, 4) if "weight" in name else (4,), dtype)
            assert not param.role.learnable, (name, dtype, param.role)


def test_last_rule_matches_everything_and_rules_are_data() -> None:
    assert NAME_RULES[-1].role == Role.UNKNOWN and NAME_RULES[-1].pattern == ""
    assert all(rule.reason for rule in NAME_RULES)


def test_classification_is_pure_and_keeps_order() -> None:
    params = [Param("b.weight", (4, 4), "F32"), Param("a.bias", (4,), "F32")]
    result = classify_params(params, None)
    assert [p.name for p in result] == ["b.weight", "a.bias"]
    assert params[0].role == Role.UNKNOWN  # inputs untouched


# Names the family tests and a scan of more transformers models revealed.  name, shape, the other
# tensors of the bundle (name, shape), expected role, (fan_in, fan_out) or None, reason fragment.
CONTEXT_CASES = [
    # GPTBigCode (StarCoder) reuses GPT-2's c_attn/c_fc/c_proj names for nn.Linear [out, in].
    (
        "transformer.h.0.attn.c_attn.weight",
        (64, 32),
        [("transformer.h.0.mlp.c_fc.weight", (128, 32)), ("transformer.wte.weight", (64, 32))],
        Role.WEIGHT,
        (32, 64),
        "Linear [out, in]",
    ),
    (
        "transformer.h.0.mlp.c_proj.weight",
        (32, 128),
        [("transformer.h.0.mlp.c_fc.weight", (128, 32))],
        Role.WEIGHT,
        (128, 32),
        "Linear [out, in]",
    ),
    (
        "transformer.h.0.attn.c_attn.weight",
        (32, 96),
        [("transformer.h.0.mlp.c_fc.weight", (32, 128)), ("transformer.wte.weight", (64, 32))],
        Role.WEIGHT,
        (32, 96),
        "GPT-2 Conv1D [in, out] (c_attn)",
    ),
    ("h.0.attn.c_proj.weight", (32, 32), [], Role.WEIGHT, (32, 32), "GPT-2 Conv1D"),
    # GPT-NeoX / Pythia token table.
    ("gpt_neox.embed_in.weight", (64, 32), [], Role.EMBEDDING, None, "embed_in"),
    # ConvNeXt's LayerNorm without "norm" in its name: a 1-D weight + bias pair, nothing else.
    (
        "encoder.stages.1.downsampling_layer.0.weight",
        (8,),
        [("encoder.stages.1.downsampling_layer.0.bias", (8,))],
        Role.NORM_SCALE,
        None,
        "norm layer",
    ),
    (
        "encoder.stages.1.downsampling_layer.0.bias",
        (8,),
        [("encoder.stages.1.downsampling_layer.0.weight", (8,))],
        Role.NORM_SHIFT,
        None,
        "norm layer",
    ),
    (
        "block.1.weight",
        (8,),
        [("block.1.bias", (8,)), ("block.1.scale", (8,))],
        Role.UNKNOWN,
        None,
        "no name",
    ),
    ("block.1.weight", (8,), [("block.1.bias", (4,))], Role.UNKNOWN, None, "no name rule"),
    # Special learnables of Swin, DeiT, Wav2Vec2, DINOv2.
    (
        "encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table",
        (9, 2),
        [],
        Role.TOKEN,
        None,
        "relative_position_bias_table",
    ),
    ("deit.embeddings.distillation_token", (1, 1, 32), [], Role.TOKEN, None, "distillation_token"),
    ("masked_spec_embed", (32,), [], Role.TOKEN, None, "masked_spec_embed"),
    ("encoder.layer.0.layer_scale1.lambda1", (32,), [], Role.LAYER_SCALE, None, "layer_scale1"),
    # Fused expert stacks both ways, told apart by the model width d of the token table.
    (
        "model.layers.0.mlp.experts.gate_up_proj",
        (4, 128, 32),
        [("model.embed_tokens.weight", (64, 32))],
        Role.WEIGHT,
        (32, 128),
        "[experts, out, in] (d = 32 on dim 2)",
    ),
    (
        "model.layers.0.mlp.experts.down_proj",
        (4, 32, 64),
        [("model.embed_tokens.weight", (64, 32))],
        Role.WEIGHT,
        (64, 32),
        "[experts, out, in] (d = 32 on dim 1)",
    ),
    (
        "model.layers.0.mlp.experts.gate_up_proj",
        (4, 32, 128),
        [("model.embed_tokens.weight", (64, 32))],
        Role.WEIGHT,
        (32, 128),
        "[experts, in, out]",
    ),
    (
        "model.layers.0.mlp.experts.down_proj",
        (4, 64, 32),
        [("model.embed_tokens.weight", (64, 32))],
        Role.WEIGHT,
        (64, 32),
        "[experts, in, out]",
    ),
]


@pytest.mark.parametrize(("name", "shape", "others", "role", "fans", "reason"), CONTEXT_CASES)
def test_names_read_with_their_bundle(
    name: str,
    shape: tuple[int, ...],
    others: list[tuple[str, tuple[int, ...]]],
    role: Role,
    fans: tuple[int, int] | None,
    reason: str,
) -> None:
    param = _one(
        name, shape, "F32", "pt", *(Param(other, other_shape, "F32") for other, other_shape in others)
    )
    assert param.role == role, param.reason
    assert reason in param.reason, param.reason
    if fans is not None:
        assert param.layout is not None
        assert param.layout.fans(shape) == fans


def test_gpt_bigcode_linear_fans_from_a_real_model() -> None:
    """StarCoder's ``c_attn`` is nn.Linear ``[d + 2·head_dim, d]``: fan_in is dim 1, unlike GPT-2."""
    model = transformers.GPTBigCodeForCausalLM(
        transformers.GPTBigCodeConfig(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=64)
    )
    state = model.state_dict()
    params = classify_params(
        [Param(name, tuple(value.shape), TORCH_DTYPES[str(value.dtype)]) for name, value in state.items()],
        "pt",
    )
    for param in params:
        module = model.get_submodule(param.name.rsplit(".", 1)[0])
        if isinstance(module, torch.nn.Linear) and param.name.endswith(".weight"):
            assert param.layout is not None, param.name
            assert param.layout.fans(param.shape) == (param.shape[1], param.shape[0]), param.reason


def test_torch_lstm_forget_bias_goes_into_bias_ih_only() -> None:
    import numpy as np

    from netinit_cli.methods import parse_method
    from netinit_cli.roles import initializer_for
    from netinit_cli.seeding import parse_seed

    names = {
        "lstm.weight_ih_l0": (16, 8),
        "lstm.weight_hh_l0": (16, 4),
        "lstm.bias_ih_l0": (16,),
        "lstm.bias_hh_l0": (16,),
    }
    classified = {p.name: p for p in classify_params([Param(n, s, "F32") for n, s in names.items()], "pt")}
    spec = parse_method("kaiming", {"forget_bias": "1"})
    effective = np.zeros(16, np.float32)
    for name in ("lstm.bias_ih_l0", "lstm.bias_hh_l0"):
        out = np.empty(16, np.float32)
        initializer_for(classified[name], spec).fill(out, parse_seed(None), name)
        effective += out
    # torch gates i, f, g, o: the forget block [H:2H] sums to exactly 1, everything else 0.
    assert effective.tolist() == [0.0] * 4 + [1.0] * 4 + [0.0] * 8
