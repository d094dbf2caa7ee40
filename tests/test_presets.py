"""Framework presets against the frameworks themselves.

``torch`` and ``hf``: the framework builds the model (torch modules here; transformers
``from_config`` on tiny configs written to tmp_path), netinit classifies its state_dict names,
the preset decides, the test samples the chosen distribution with NumPy/SciPy and compares, tensor
by tensor: two-sample Kolmogorov–Smirnov for random tensors (Bonferroni over the test's
comparisons, α = 1e-3), exact values for constants, padding rows and gate blocks.  ``keras`` and
``flax`` are not installed: their choices are checked against the formulas, computed here with
the frameworks' own fan conventions, sources cited at each test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from netinit_cli.classify import classify_params
from netinit_cli.distributions import Distribution
from netinit_cli.errors import UsageError
from netinit_cli.model import Param, Role
from netinit_cli.presets import (
    PresetChoice,
    decide,
    describe_presets,
    model_context,
    parse_preset,
    preset_notes,
    tensor_contexts,
)

torch = pytest.importorskip("torch")
nn = torch.nn

ALPHA = 1e-3  # family-wise false-alarm rate of one test function
REFERENCE_FACTOR = 4  # the reference sample is this many times the framework's
TORCH_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.bool: "BOOL"}


def classified(state: dict[str, object], hint: str | None = "pt") -> list[Param]:
    params = [Param(name, tuple(t.shape), TORCH_DTYPES[t.dtype]) for name, t in state.items()]  # type: ignore[attr-defined]
    return classify_params(params, hint)


def sample(dist: Distribution, size: int, rng: np.random.Generator) -> np.ndarray:
    kind, p = dist.kind, dist.params
    if kind == "normal":
        return rng.normal(p[0], p[1], size)
    if kind == "uniform":
        return rng.uniform(p[0], p[1], size)
    assert kind == "truncated_normal", kind
    mean, std, low, high = p
    law = stats.truncnorm((low - mean) / std, (high - mean) / std, loc=mean, scale=std)
    return np.asarray(law.rvs(size=size, random_state=rng))


class Comparisons:
    """Collects one p-value per random tensor; exact checks assert at once."""

    def __init__(self) -> None:
        self.pvalues: list[tuple[str, float, str]] = []
        self.rng = np.random.default_rng(20240615)

    def check(self, name: str, param: Param, choice: PresetChoice, draws: list[np.ndarray]) -> None:
        """``draws``: the framework's tensor from each of several independent constructions."""
        values = [np.asarray(d, np.float64) for d in draws]
        if choice.kind == "keep":
            assert param.role in (Role.CONSTANT, Role.QUANTIZED), (name, choice.label)
            return
        assert choice.kind in ("normal", "uniform", "truncated_normal", "constant"), (name, choice)
        fixed = np.zeros(values[0].shape, bool)
        for row in choice.zero_rows:
            fixed[row] = True
            for v in values:
                assert np.all(v[row] == 0), f"{name}: row {row} is not zero"
        for block, value in choice.block_values:
            size = param.shape[0] // param.layout.blocks  # type: ignore[union-attr]
            fixed[block * size : (block + 1) * size] = True
            for v in values:
                assert np.all(v[block * size : (block + 1) * size] == np.float32(value)), name
        observed = np.concatenate([v[~fixed] for v in values])
        dist = choice.distribution
        assert dist is not None
        if dist.kind == "constant":
            assert np.all(observed == np.float32(dist.params[0])), (
                f"{name}: {choice.label}, got {observed[:4]}"
            )
            return
        if dist.kind in ("uniform", "truncated_normal"):
            low, high = dist.params[-2:]
            slack = 1e-6 * max(abs(low), abs(high))
            assert observed.min() >= low - slack and observed.max() <= high + slack, (name, choice.label)
        expected = sample(dist, REFERENCE_FACTOR * observed.size, self.rng)
        self.pvalues.append((name, float(stats.ks_2samp(observed, expected).pvalue), choice.label))

    def assert_all(self) -> None:
        threshold = ALPHA / max(len(self.pvalues), 1)
        failed = [f"{n}: p = {p:.2e} ({label})" for n, p, label in self.pvalues if p <= threshold]
        assert not failed, f"KS p ≤ {threshold:.1e}:\n" + "\n".join(failed)


def run(
    build: Callable[[], object],
    preset: str,
    *,
    seeds: int,
    model_path: Path | None = None,
    hint: str | None = "pt",
    check_names: Callable[[dict[str, Param]], None] | None = None,
) -> dict[str, PresetChoice]:
    """Build the framework model ``seeds`` times, decide every tensor, compare; return the choices."""
    states = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        module = build()
        states.append({k: v.detach().clone() for k, v in module.state_dict().items()})  # type: ignore[attr-defined]
    params = classified(states[0], hint)
    by_name = {p.name: p for p in params}
    if check_names is not None:
        check_names(by_name)
    model = model_context(by_name, model_path)
    contexts = tensor_contexts(params, model)
    spec = parse_preset(preset)
    comparisons = Comparisons()
    choices = {}
    for param in params:
        choice = decide(spec, param, contexts[param.name])
        choices[param.name] = choice
        if not states[0][param.name].dtype.is_floating_point:
            continue
        comparisons.check(param.name, param, choice, [s[param.name].numpy() for s in states])
    comparisons.assert_all()
    return choices


# ---------------------------------------------------------------------------------------------
# torch: module defaults.


class Zoo(nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 24)
        self.conv1d = nn.Conv1d(6, 10, 5)
        self.conv = nn.Conv2d(8, 12, 3, groups=4)
        self.deconv = nn.ConvTranspose2d(8, 12, 3, groups=2)
        self.embed = nn.Embedding(50, 16)
        self.ln = nn.LayerNorm(16)
        self.bn = nn.BatchNorm2d(12)
        self.lstm = nn.LSTM(10, 16, num_layers=2)
        self.gru = nn.GRU(10, 12, bidirectional=True)
        self.mha = nn.MultiheadAttention(16, 4, add_bias_kv=True)
        self.prelu = nn.PReLU(12)


def test_torch_preset_matches_torch_modules() -> None:
    def roles(by_name: dict[str, Param]) -> None:
        assert (
            by_name["deconv.weight"].role is Role.WEIGHT and by_name["prelu.weight"].role is Role.PRELU_SLOPE
        )
        assert by_name["lstm.weight_hh_l1"].role is Role.RECURRENT
        assert by_name["mha.bias_k"].role is Role.BIAS

    choices = run(Zoo, "torch", seeds=30, check_names=roles)
    # The exact formulas behind the KS checks (torch/nn/modules/conv.py:182-203, init.py:458-476):
    # ConvTranspose2d(8, 12, groups=2) stores [8, 6, 3, 3]; torch's fan_in = 6·9 = 54.
    assert choices["deconv.weight"].distribution == Distribution(
        "uniform", (-1 / math.sqrt(54), 1 / math.sqrt(54))
    )
    assert choices["deconv.bias"].distribution == choices["deconv.weight"].distribution
    assert choices["conv.weight"].distribution == Distribution(
        "uniform", (-1 / math.sqrt(18), 1 / math.sqrt(18))
    )
    assert choices["gru.bias_hh_l0_reverse"].distribution == Distribution(
        "uniform", (-1 / math.sqrt(12), 1 / math.sqrt(12))
    )
    assert choices["mha.in_proj_weight"].distribution == Distribution(
        "uniform", (-math.sqrt(6 / 64), math.sqrt(6 / 64))
    )
    assert choices["mha.out_proj.bias"].distribution == Distribution("constant", (0.0,))
    assert choices["fc.weight"].label.startswith("torch: uniform(±0.1581)")


# ---------------------------------------------------------------------------------------------
# hf: transformers from_config on tiny configs, config.json written beside the "checkpoint".


def _hf_case(name: str) -> tuple[Callable[[], object], object]:
    import transformers as tf

    tiny = {"vocab_size": 300}
    cases: dict[str, tuple[object, object]] = {
        "gpt2": (tf.GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=64, **tiny), tf.AutoModel),
        "t5": (
            tf.T5Config(
                d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, tie_word_embeddings=False, **tiny
            ),
            tf.AutoModelForSeq2SeqLM,
        ),
        "t5-gated": (
            tf.T5Config(
                d_model=48, d_kv=8, d_ff=96, num_layers=1, num_heads=3, feed_forward_proj="gated-gelu", **tiny
            ),
            tf.AutoModel,
        ),
        "gemma": (
            tf.GemmaConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=16,
                pad_token_id=0,
                **tiny,
            ),
            tf.AutoModel,
        ),
        "gemma3": (
            tf.Gemma3TextConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=16,
                pad_token_id=3,
                **tiny,
            ),
            tf.AutoModel,
        ),
        "llama": (
            tf.LlamaConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                pad_token_id=5,
                initializer_range=0.03,
                **tiny,
            ),
            tf.AutoModelForCausalLM,
        ),
        "bert": (
            tf.BertConfig(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=64,
                **tiny,
            ),
            tf.AutoModel,
        ),
        "vit": (
            tf.ViTConfig(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                image_size=32,
                patch_size=8,
            ),
            tf.AutoModel,
        ),
        "whisper": (
            tf.WhisperConfig(
                d_model=64,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=128,
                decoder_ffn_dim=128,
                num_mel_bins=16,
                max_source_positions=32,
                max_target_positions=32,
                pad_token_id=1,
                bos_token_id=2,
                eos_token_id=2,
                decoder_start_token_id=2,
                **tiny,
            ),
            tf.AutoModel,
        ),
        "resnet": (
            tf.ResNetConfig(
                embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=5
            ),
            tf.AutoModelForImageClassification,
        ),
    }
    config, auto = cases[name]

    def build() -> object:
        return auto.from_config(config)  # type: ignore[attr-defined]

    return build, config


HF_CASES = ("gpt2", "t5", "t5-gated", "gemma", "gemma3", "llama", "bert", "vit", "whisper", "resnet")


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_preset_matches_transformers_from_config(case: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    build, config = _hf_case(case)
    config.save_pretrained(tmp_path)  # type: ignore[attr-defined]
    choices = run(build, "hf", seeds=3, model_path=tmp_path / "model.safetensors")
    labels = {name: choice.label for name, choice in choices.items()}
    if case == "gpt2":  # modeling_gpt2.py: c_proj N(0, σ/√(2·n_layer)), n_layer = 3
        assert choices["h.2.mlp.c_proj.weight"].distribution == Distribution(
            "normal", (0.0, 0.02 / math.sqrt(6))
        )
        assert choices["h.2.mlp.c_fc.weight"].distribution == Distribution("normal", (0.0, 0.02))
    if case == "t5":  # modeling_t5.py: q f·(d_model·d_kv)^-½, o f·(heads·d_kv)^-½, wo f·d_ff^-½
        assert choices["encoder.block.0.layer.0.SelfAttention.q.weight"].distribution == Distribution(
            "normal", (0.0, (64 * 16) ** -0.5)
        )
        assert choices["decoder.block.1.layer.1.EncDecAttention.o.weight"].distribution == Distribution(
            "normal", (0.0, (4 * 16) ** -0.5)
        )
        assert choices["lm_head.weight"].distribution == Distribution("normal", (0.0, 1.0))
    if case in ("gemma", "gemma3"):  # modeling_gemma.py: RMSNorm weight 0
        assert choices["norm.weight"].distribution == Distribution("constant", (0.0,))
    if case == "llama":
        assert choices["model.embed_tokens.weight"].zero_rows == (5,)
        assert "normal(0, 0.03)" in labels["lm_head.weight"]
    if case == "whisper":
        assert choices["encoder.embed_positions.weight"].kind == "keep"


def test_hf_without_config_uses_defaults_and_says_so() -> None:
    params = classified({"foo.dense.weight": torch.zeros(4, 4), "foo.dense.bias": torch.zeros(4)}, "pt")
    model = model_context([p.name for p in params], None)
    spec = parse_preset("hf")
    notes = preset_notes(spec, model)
    assert any("no config.json" in n for n in notes) and any("generic _init_weights" in n for n in notes)
    choice = decide(spec, params[0], tensor_contexts(params, model)[params[0].name])
    assert choice.label == "hf: normal(0, 0.02) (σ = 0.02)"
    assert decide(
        parse_preset("hf(initializer_range=0.01)"), params[0], tensor_contexts(params, model)[params[0].name]
    ).distribution == Distribution("normal", (0.0, 0.01))


def test_hf_unknown_model_type_gets_generic_rule_and_a_note(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "brand_new", "initializer_range": 0.05}))
    params = classified({"blocks.0.mlp.weight": torch.zeros(8, 4)}, "pt")
    model = model_context([p.name for p in params], tmp_path / "model.safetensors")
    spec = parse_preset("hf")
    assert any("'brand_new' is not in netinit's table" in n for n in preset_notes(spec, model))
    choice = decide(spec, params[0], tensor_contexts(params, model)[params[0].name])
    assert choice.distribution == Distribution("normal", (0.0, 0.05))


# ---------------------------------------------------------------------------------------------
# megatron: megatron/core/utils.py:862-891 (init_method_normal, scaled_init_method_normal).


def test_megatron_scales_output_layers_by_layer_count_from_names() -> None:
    shapes = {
        "model.layers.0.self_attn.o_proj.weight": (16, 16),
        "model.layers.3.mlp.down_proj.weight": (16, 32),
        "model.layers.3.mlp.up_proj.weight": (32, 16),
        "model.layers.3.mlp.up_proj.bias": (32,),
        "model.embed_tokens.weight": (100, 16),
        "lm_head.weight": (100, 16),
        "bert.encoder.layer.1.attention.output.dense.weight": (16, 16),
        "bert.encoder.layer.1.output.dense.weight": (16, 32),
        "bert.encoder.layer.1.intermediate.dense.weight": (32, 16),
    }
    params = classified({n: torch.zeros(s) for n, s in shapes.items()}, "pt")
    model = model_context([p.name for p in params], None)
    assert model.num_layers == 4
    contexts = tensor_contexts(params, model)
    spec = parse_preset("megatron(std=0.006)")
    got = {p.name: decide(spec, p, contexts[p.name]).distribution for p in params}
    scaled = Distribution("normal", (0.0, 0.006 / math.sqrt(8)))
    plain = Distribution("normal", (0.0, 0.006))
    for name in shapes:
        output = name.endswith(("o_proj.weight", "down_proj.weight", "output.dense.weight"))
        expected = Distribution("constant", (0.0,)) if name.endswith(".bias") else scaled if output else plain
        assert got[name] == expected, name
    assert preset_notes(spec, model) == ["megatron: L = 4 from the largest layer index in the names"]
    assert decide(
        parse_preset("megatron(num_layers=2)"), params[0], contexts[params[0].name]
    ).distribution == Distribution("normal", (0.0, 0.02 / 2.0))


# ---------------------------------------------------------------------------------------------
# keras and flax: the formulas, with the frameworks' own fan conventions.


def keras_compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """keras/src/initializers/random_initializers.py:663-699 (compute_fans), on a Keras kernel."""
    if len(shape) == 2:
        return shape[0], shape[1]
    field = math.prod(shape[:-2])
    return shape[-2] * field, shape[-1] * field


def jax_fans(shape: tuple[int, ...], in_axis: int = -2, out_axis: int = -1) -> tuple[float, float]:
    """jax/_src/nn/initializers.py _compute_fans (no batch axis)."""
    size = math.prod(shape)
    in_size, out_size = shape[in_axis], shape[out_axis]
    field = size / in_size / out_size
    return in_size * field, out_size * field


# torch-named tensors and the kernel Keras / Flax would store for the same layer.
LAYERS = {
    # name: (torch shape, Keras kernel shape, Flax kernel shape)
    "fc.weight": ((24, 40), (40, 24), (40, 24)),
    "conv.weight": ((12, 2, 3, 3), (3, 3, 2, 12), (3, 3, 2, 12)),  # groups 4: kernel [k, k, in/g, out]
    "deconv.weight": (
        (8, 6, 3, 3),
        (3, 3, 6, 8),
        (3, 3, 8, 6),
    ),  # Keras [k, k, out, in]; Flax [k, k, in, out]
    "lstm.weight_ih_l0": ((64, 10), (10, 64), None),
}


def _zoo_params() -> list[Param]:
    torch.manual_seed(0)
    state = Zoo().state_dict()
    return classified(state, "pt")


def test_keras_preset_formulas() -> None:
    params = _zoo_params()
    by_name = {p.name: p for p in params}
    model = model_context(by_name, None)
    contexts = tensor_contexts(params, model)
    spec = parse_preset("keras")
    for name, (shape, keras_shape, _) in LAYERS.items():
        assert by_name[name].shape == shape
        fan_in, fan_out = keras_compute_fans(keras_shape)
        # glorot_uniform: limit √(6/(fan_in + fan_out)) (random_initializers.py, GlorotUniform)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert decide(spec, by_name[name], contexts[name]).distribution == Distribution(
            "uniform", (-bound, bound)
        ), name
    # Embedding "uniform" = RandomUniform(-0.05, 0.05) (core/embedding.py:91).
    assert decide(spec, by_name["embed.weight"], contexts["embed.weight"]).distribution == Distribution(
        "uniform", (-0.05, 0.05)
    )
    # recurrent_kernel orthogonal on the whole [u, 4u] kernel (rnn/lstm.py; random_initializers.py:743-770).
    recurrent = decide(spec, by_name["lstm.weight_hh_l0"], contexts["lstm.weight_hh_l0"])
    assert (recurrent.kind, recurrent.gain, recurrent.per_block) == ("orthogonal", 1.0, False)
    # unit_forget_bias: [0·u, 1·u, 0·2u], gates i, f, c, o (rnn/lstm.py:94-97): on bias_ih only.
    forget = decide(spec, by_name["lstm.bias_ih_l0"], contexts["lstm.bias_ih_l0"])
    assert forget.distribution == Distribution("constant", (0.0,)) and forget.block_values == ((1, 1.0),)
    assert decide(spec, by_name["lstm.bias_hh_l0"], contexts["lstm.bias_hh_l0"]).block_values == ()
    assert decide(spec, by_name["gru.bias_ih_l0"], contexts["gru.bias_ih_l0"]).block_values == ()
    no_forget = parse_preset("keras(unit_forget_bias=false)")
    assert decide(no_forget, by_name["lstm.bias_ih_l0"], contexts["lstm.bias_ih_l0"]).block_values == ()
    # BatchNormalization γ 1, β 0, moving mean 0, variance 1 (batch_normalization.py:164-170); PReLU alpha zeros.
    expected = {
        "bn.weight": 1.0,
        "bn.bias": 0.0,
        "bn.running_mean": 0.0,
        "bn.running_var": 1.0,
        "prelu.weight": 0.0,
    }
    for name, value in expected.items():
        assert decide(spec, by_name[name], contexts[name]).distribution == Distribution(
            "constant", (value,)
        ), name


def test_hf_recurrent_layers_follow_the_generic_rule() -> None:
    """modeling_utils.py _init_weights: nn.LSTM xavier_uniform weights and 0 biases; a GRU is
    not touched, so it keeps torch's U(±1/√hidden)."""
    params = _zoo_params()
    by_name = {p.name: p for p in params}
    contexts = tensor_contexts(params, model_context(by_name, None))
    spec = parse_preset("hf")
    bound = math.sqrt(6.0 / (16 + 64))  # weight_hh [4·16, 16]: fans 16 / 64
    assert decide(
        spec, by_name["lstm.weight_hh_l0"], contexts["lstm.weight_hh_l0"]
    ).distribution == Distribution("uniform", (-bound, bound))
    assert decide(spec, by_name["lstm.bias_ih_l1"], contexts["lstm.bias_ih_l1"]).distribution == Distribution(
        "constant", (0.0,)
    )
    gru = 1 / math.sqrt(12)
    assert decide(
        spec, by_name["gru.weight_hh_l0"], contexts["gru.weight_hh_l0"]
    ).distribution == Distribution("uniform", (-gru, gru))


def test_flax_preset_formulas() -> None:
    params = _zoo_params()
    by_name = {p.name: p for p in params}
    model = model_context(by_name, None)
    contexts = tensor_contexts(params, model)
    spec = parse_preset("flax")
    for name, (_, _, flax_shape) in LAYERS.items():
        if flax_shape is None:
            continue
        fan_in, _ = jax_fans(flax_shape)
        # lecun_normal = variance_scaling(1, fan_in, truncated_normal): std √(1/fan_in)/0.8796…, cut at ±2 of it.
        wide = math.sqrt(1.0 / fan_in) / 0.87962566103423978
        choice = decide(spec, by_name[name], contexts[name])
        assert choice.distribution is not None and choice.kind == "truncated_normal"
        assert choice.distribution.params == pytest.approx((0.0, wide, -2 * wide, 2 * wide), rel=1e-12), name
        assert choice.distribution.std == pytest.approx(math.sqrt(1.0 / fan_in), rel=1e-9)
    # nn.Embed: variance_scaling(1, fan_in, normal, out_axis=0): fan_in = features.
    fan_in, _ = jax_fans((50, 16), in_axis=-2, out_axis=0)
    embed = decide(spec, by_name["embed.weight"], contexts["embed.weight"])
    assert fan_in == 16 and embed.distribution == Distribution("normal", (0.0, 1.0 / math.sqrt(16)))
    recurrent = decide(spec, by_name["lstm.weight_hh_l0"], contexts["lstm.weight_hh_l0"])
    assert (recurrent.kind, recurrent.per_block) == ("orthogonal", True)
    assert decide(spec, by_name["prelu.weight"], contexts["prelu.weight"]).distribution == Distribution(
        "constant", (0.01,)
    )
    assert decide(spec, by_name["fc.bias"], contexts["fc.bias"]).distribution == Distribution(
        "constant", (0.0,)
    )


# ---------------------------------------------------------------------------------------------
# The spec language and the listing.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pytorch2", "--preset 'pytorch2': unknown preset; choose one of torch, keras, flax, hf, megatron"),
        (
            "hf(foo=1)",
            "--preset 'hf(foo=1)': hf has no option 'foo'; it takes initializer_range, initializer_factor, num_layers, family",
        ),
        ("torch(std=1)", "--preset 'torch(std=1)': torch has no option 'std'; it takes no options"),
        ("megatron(std=0)", "--preset 'megatron(std=0)': std must be a number > 0"),
        (
            "megatron(num_layers=2.5)",
            "--preset 'megatron(num_layers=2.5)': num_layers must be a whole number ≥ 1",
        ),
        (
            "hf(family=bloom)",
            "--preset 'hf(family=bloom)': family must be one of auto, generic, gpt2, t5, gemma, vit, whisper, resnet",
        ),
        (
            "hf(0.01)",
            "--preset 'hf(0.01)': options are written key=value; it takes initializer_range, initializer_factor, num_layers, family",
        ),
        (
            "keras(unit_forget_bias=2)",
            "--preset 'keras(unit_forget_bias=2)': unit_forget_bias must be true or false",
        ),
    ],
)
def test_bad_presets_are_one_line_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_preset(text)
    assert str(error.value) == message and "\n" not in str(error.value)
    assert error.value.exit_code == 2


def test_preset_specs_round_trip() -> None:
    for text in (
        "torch",
        "keras(unit_forget_bias=false)",
        "hf(family=gpt2, initializer_range=0.01)",
        "megatron(num_layers=24, std=0.006)",
    ):
        spec = parse_preset(text)
        assert parse_preset(spec.describe()) == spec
    assert parse_preset("pytorch") == parse_preset("torch")
    assert parse_preset("hf(initializer_range=auto)") == parse_preset("hf")


def test_methods_listing_names_every_preset_and_option() -> None:
    text = describe_presets()
    for name in (
        "torch",
        "keras",
        "flax",
        "hf",
        "megatron",
        "initializer_range",
        "unit_forget_bias",
        "σ/√(2L)",
    ):
        assert name in text
