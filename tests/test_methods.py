"""Method specs, role values, fans (torch parity), orthogonality and identity patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netinit_cli.classify.layouts import LINEAR_OUT_IN, MATRIX_IN_OUT, conv_layout, conv_transpose_layout
from netinit_cli.distributions import Distribution
from netinit_cli.errors import UsageError
from netinit_cli.initializers import calculate_gain
from netinit_cli.linalg import orthonormalize
from netinit_cli.methods import (
    FLAGS,
    METHOD_NAMES,
    METHODS,
    OVERRIDE_KEYS,
    MethodSpec,
    describe_methods,
    parse_method,
)
from netinit_cli.model import Layout, Param, Role
from netinit_cli.roles import initializer_for
from netinit_cli.seeding import Seed

SEED = Seed(5, "explicit")
RNN = Layout((2,), (1,), (0,), out_divisor=4, blocks=4)


def _fill(
    param: Param, spec: str | MethodSpec, fan_mode: str = "semantic", dtype: type = np.float32
) -> np.ndarray:
    method = spec if isinstance(spec, MethodSpec) else parse_method(spec)
    out = np.empty(param.shape, dtype)
    initializer_for(param, method, fan_mode=fan_mode).fill(out, SEED, param.name)
    return out


# --- Specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "overrides", "canonical"),
    [
        ("kaiming", None, "kaiming(distribution=normal, mode=fan_in, nonlinearity=relu)"),
        (
            "KAIMING(distribution=Uniform)",
            None,
            "kaiming(distribution=uniform, mode=fan_in, nonlinearity=relu)",
        ),
        ("he", None, "kaiming(distribution=normal, mode=fan_in, nonlinearity=relu)"),
        ("xavier", None, "xavier(distribution=normal, mode=fan_avg, nonlinearity=linear)"),
        (
            "glorot",
            {"distribution": "uniform"},
            "xavier(distribution=uniform, mode=fan_avg, nonlinearity=linear)",
        ),
        (
            "kaiming",
            {"nonlinearity": "leaky_relu", "negative_slope": "0.2", "mode": None},
            "kaiming(distribution=normal, mode=fan_in, negative_slope=0.2, nonlinearity=leaky_relu)",
        ),
        ("orthogonal", None, "orthogonal(gain=1)"),
        ("orthogonal", {"gain": "1.5", "forget_bias": "1"}, "orthogonal(forget_bias=1, gain=1.5)"),
        ("random", None, "random(biases=none, weights=normal(0, 1))"),
        (
            "random(weights=normal(0,0.02), biases=0.01)",
            None,
            "random(biases=normal(0, 0.01), weights=normal(0, 0.02))",
        ),
        ("identity", None, "identity(distribution=normal(0, 0.01))"),
        ("identity", {"distribution": "none"}, "identity(distribution=none)"),
        ("identity(distribution=0.1)", None, "identity(distribution=normal(0, 0.1))"),
    ],
)
def test_method_forms(text: str, overrides: dict[str, str | None] | None, canonical: str) -> None:
    spec = parse_method(text, overrides)
    assert spec.describe() == canonical
    assert parse_method(canonical) == spec


def test_spec_has_every_option_with_defaults_sorted() -> None:
    spec = parse_method("kaiming")
    assert [k for k, _ in spec.options] == sorted(o.name for o in METHODS["kaiming"].options)
    assert spec.get("gain") is None and spec.get("forget_bias") == 0.0 and spec.get("negative_slope") == 0.01
    assert parse_method("random").get("weights") == Distribution("normal", (0.0, 1.0))
    assert parse_method().name == "kaiming"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (
            "orthogonal",
            {"mode": "fan_in"},
            "--mode does not apply to method orthogonal; it is used by kaiming, xavier",
        ),
        ("identity", {"weights": "0.1"}, "--weights does not apply to method identity; it is used by random"),
        ("kaiming", {"biases": "0.1"}, "--biases does not apply to method kaiming; it is used by random"),
        ("kaiming(mode=fan_out)", {"mode": "fan_in"}, "--mode repeats mode, already set in --method"),
        ("kaiming", {"negative_slope": "0.3"}, "negative_slope applies only to nonlinearity=leaky_relu"),
        ("orthogonal", {"gain": "-1"}, "gain must be > 0"),
    ],
)
def test_flag_errors(text: str, overrides: dict[str, str | None], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_method(text, overrides)


def test_method_error_texts_are_exact() -> None:
    with pytest.raises(UsageError) as info:
        parse_method("kaiming(mode=fan_in, weights=0.1)")
    assert str(info.value) == (
        "--method 'kaiming(mode=fan_in, weights=0.1)': kaiming has no option 'weights' "
        "(it belongs to random) (character 22); "
        "accepted: kaiming(key=value, …) with keys distribution, mode, nonlinearity, negative_slope, gain, forget_bias"
    )
    assert info.value.detail == "  kaiming(mode=fan_in, weights=0.1)\n                       ^"
    with pytest.raises(UsageError) as info:
        parse_method("kaimin")
    assert str(info.value) == (
        "--method 'kaimin': unknown method (character 1); "
        "accepted: kaiming | xavier | orthogonal | random | identity | lsuv, optionally with (key=value, …), "
        "e.g. kaiming(distribution=uniform)"
    )
    assert info.value.detail == "  kaimin\n  ^"
    with pytest.raises(UsageError) as info:
        parse_method("random", {"weights": "normal(0 1)"})
    assert str(info.value).startswith(
        "--weights 'normal(0 1)': expected ',' or ')', found '1' (character 10); "
    )
    assert info.value.detail == "  normal(0 1)\n           ^"


_numbers = st.floats(min_value=1e-4, max_value=1e4, allow_nan=False)
_dists = st.one_of(
    _numbers.map(lambda s: f"{s!r}"),
    st.tuples(st.floats(-10, 10), _numbers).map(lambda p: f"normal({p[0]!r}, {p[1]!r})"),
    st.tuples(st.floats(-10, 10), _numbers).map(lambda p: f"uniform({p[0]!r}, {p[0] + p[1]!r})"),
    st.floats(-10, 10).map(lambda c: f"constant({c!r})"),
)


@st.composite
def specs(draw: st.DrawFn) -> tuple[str, dict[str, str | None]]:
    name = draw(st.sampled_from(METHOD_NAMES))
    overrides: dict[str, str | None] = {}
    if name in ("kaiming", "xavier"):
        overrides["distribution"] = draw(st.sampled_from(["normal", "uniform", "truncated_normal", None]))
        overrides["mode"] = draw(st.sampled_from(["fan_in", "fan_out", "fan_avg", None]))
        nonlinearity = draw(
            st.sampled_from(["linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu", None])
        )
        overrides["nonlinearity"] = nonlinearity
        if nonlinearity == "leaky_relu":
            overrides["negative_slope"] = draw(st.one_of(st.none(), st.floats(-5, 5).map(repr)))
        overrides["gain"] = draw(st.one_of(st.none(), _numbers.map(repr), st.just("auto")))
    elif name == "orthogonal":
        overrides["gain"] = draw(st.one_of(st.none(), _numbers.map(repr)))
    elif name == "lsuv":
        overrides["std"] = draw(st.one_of(st.none(), st.floats(0.5, 10).map(repr)))
        overrides["tol"] = draw(st.one_of(st.none(), st.floats(1e-3, 0.45).map(repr)))
        overrides["max_iter"] = draw(st.one_of(st.none(), st.integers(1, 1000).map(str)))
    elif name == "random":
        overrides["weights"] = draw(st.one_of(st.none(), _dists))
        overrides["biases"] = draw(st.one_of(st.none(), _dists, st.just("none")))
    else:
        overrides["distribution"] = draw(st.one_of(st.none(), _dists, st.just("none")))
    overrides["forget_bias"] = draw(st.one_of(st.none(), st.floats(-3, 3).map(repr)))
    return name, overrides


@given(specs())
@settings(max_examples=300, deadline=None)
def test_describe_round_trips(case: tuple[str, dict[str, str | None]]) -> None:
    name, overrides = case
    spec = parse_method(name, overrides)
    assert parse_method(spec.describe()) == spec
    # The compact form and the flags are two spellings of one spec.
    given_options = ", ".join(f"{k}={v}" for k, v in overrides.items() if v is not None)
    assert parse_method(f"{name}({given_options})") == spec


def test_describe_methods_lists_every_option_and_default() -> None:
    text = describe_methods()
    for name, method in METHODS.items():
        assert f"\n{name}  " in text or text.startswith(name)
        for option in method.options:
            assert option.name in text
    assert "σ = gain/√n" in text and "√(2/(fan_in + fan_out))" in text


def test_registry_gives_every_option_key_one_flag() -> None:
    keys = [flag.key for flag in FLAGS]
    assert len(keys) == len(set(keys)) and tuple(keys) == OVERRIDE_KEYS
    assert set(keys) == {option.name for method in METHODS.values() for option in method.options}


def test_kaiming_and_xavier_are_one_variance_scaling_core() -> None:
    kaiming, xavier = METHODS["kaiming"], METHODS["xavier"]
    assert kaiming.build is xavier.build
    assert [o.name for o in kaiming.options] == [o.name for o in xavier.options]
    assert parse_method("xavier(mode=fan_in, nonlinearity=relu)").options == parse_method("kaiming").options


# --- Gains and fans ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nonlinearity", "slope"),
    [
        ("linear", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 10.0),
        ("selu", None),
    ],
)
def test_gains_equal_torch(nonlinearity: str, slope: float | None) -> None:
    ours = calculate_gain(nonlinearity, 0.01 if slope is None else slope)
    assert ours == torch.nn.init.calculate_gain(nonlinearity, slope)


TORCH_CASES = [
    ("linear", (384, 256), LINEAR_OUT_IN, (384, 256)),
    ("conv", (64, 16, 3, 3), conv_layout(4, groups=4), (64, 16, 3, 3)),
    ("depthwise", (32, 1, 5, 5), conv_layout(4, groups=32), (32, 1, 5, 5)),
    ("conv_transpose", (32, 24, 4, 4), conv_transpose_layout(4, groups=2), (32, 24, 4, 4)),
    ("matmul", (256, 384), MATRIX_IN_OUT, (384, 256)),  # torch would store it as [out, in]
    ("rnn", (2, 256, 48), RNN, (256, 48)),
]


@pytest.mark.parametrize(
    ("what", "shape", "layout", "torch_shape"), TORCH_CASES, ids=[c[0] for c in TORCH_CASES]
)
def test_torch_fan_mode_reports_torchs_own_fans(
    what: str, shape: tuple[int, ...], layout: Layout, torch_shape: tuple[int, ...]
) -> None:
    init = initializer_for(
        Param("w", shape, "F32", role=Role.WEIGHT, layout=layout), parse_method(), fan_mode="torch"
    )
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(torch_shape))
    assert (init.fan_in, init.fan_out) == expected


def test_missing_layout_assumes_torch_convention_and_says_so() -> None:
    init = initializer_for(Param("w", (64, 32, 3, 3), "F32", role=Role.WEIGHT), parse_method())
    assert (init.fan_in, init.fan_out) == (288, 576)
    assert init.label == "kaiming normal (assumed [out, in, k…])"
    assert init.expected_std == pytest.approx(math.sqrt(2 / 288))


# --- Roles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "value", "label"),
    [
        (Role.BIAS, 0.0, "constant 0"),
        (Role.NORM_SCALE, 1.0, "constant 1"),
        (Role.NORM_SHIFT, 0.0, "constant 0"),
        (Role.RUNNING_MEAN, 0.0, "constant 0"),
        (Role.RUNNING_VAR, 1.0, "constant 1"),
        (Role.PRELU_SLOPE, 0.25, "constant 0.25"),
        (Role.LAYER_SCALE, 1e-6, "constant 1e-06"),
        (Role.ZERO, 0.0, "constant 0"),
    ],
)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_fixed_roles_whatever_the_method(role: Role, value: float, label: str, method: str) -> None:
    param = Param("t", (17,), "F32", role=role)
    init = initializer_for(param, parse_method(method))
    assert init.label == label and (init.expected_mean, init.expected_std) == (value, 0.0)
    assert (_fill(param, method) == np.float32(value)).all()


def _onnx_lstm_bias(hidden: int) -> Param:
    """The ONNX LSTM's B as the classifier sees it (its layout marks Wb's forget block)."""
    from onnx import helper, numpy_helper
    from onnx_builders import float_model

    from netinit_cli.classify.onnx import classify_model

    dims = {"W": (2, 4 * hidden, 3), "R": (2, 4 * hidden, hidden), "B": (2, 8 * hidden)}
    weights = [numpy_helper.from_array(np.zeros(shape, np.float32), name) for name, shape in dims.items()]
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=hidden, direction="bidirectional"
    )
    params, _ = classify_model(float_model([node], {"X": [7, 1, 3]}, {"Y": None}, weights, opset=14))
    bias = next(param for param in params if param.name == "B")
    assert bias.role is Role.BIAS and bias.layout is not None
    return bias


def test_lstm_forget_bias_only_in_wb_forget_block() -> None:
    hidden = 5
    param = _onnx_lstm_bias(hidden)
    init = initializer_for(param, parse_method("kaiming", {"forget_bias": "1"}))
    assert init.label == "constant 0, forget gate 1"
    values = _fill(param, parse_method("kaiming", {"forget_bias": "1"}))
    expected = np.zeros((2, 8 * hidden), np.float32)
    expected[:, 2 * hidden : 3 * hidden] = 1  # ONNX gates i, o, f, c: Wb's f block
    assert (values == expected).all()
    # A bias without LSTM gate blocks is unaffected.
    plain = Param("fc.bias", (40,), "F32", role=Role.BIAS)
    assert not _fill(plain, parse_method("kaiming", {"forget_bias": "1"})).any()


def test_random_biases_distribution_and_none() -> None:
    param = Param("fc.bias", (1000,), "F32", role=Role.BIAS)
    assert not _fill(param, "random").any()
    values = _fill(param, "random(biases=constant(0.5))")
    assert (values == 0.5).all()


# --- Orthogonal --------------------------------------------------------------------------------


def _gram_error(matrix: np.ndarray, gain: float) -> float:
    m = matrix.astype(np.float64)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(np.abs(gram - gain**2 * np.eye(gram.shape[0])).max())


ORTHO_CASES = [
    # name, shape, layout, gain, matrices to check (as functions of the stored tensor)
    ("tall", (300, 200), LINEAR_OUT_IN, 1.0, lambda w: [w]),
    ("wide", (200, 300), LINEAR_OUT_IN, 1.0, lambda w: [w]),
    ("square_gain", (256, 256), LINEAR_OUT_IN, 2.5, lambda w: [w]),
    ("in_out", (200, 300), MATRIX_IN_OUT, 0.5, lambda w: [w.T]),
    ("conv", (64, 16, 3, 3), conv_layout(4), 1.0, lambda w: [w.reshape(64, -1)]),
    ("conv_wide", (16, 64, 3, 3), conv_layout(4), 1.0, lambda w: [w.reshape(16, -1)]),
    ("grouped", (64, 8, 3, 3), conv_layout(4, 4), 1.0, lambda w: list(w.reshape(4, 16, 72))),
    (
        "conv_transpose",
        (16, 12, 3, 3),
        conv_transpose_layout(4, 2),
        1.0,
        lambda w: [w[g * 8 : (g + 1) * 8].transpose(1, 0, 2, 3).reshape(12, -1) for g in range(2)],
    ),
    (
        "rnn_gates",
        (2, 4 * 32, 32),
        RNN,
        1.0,
        lambda w: [w[d, g * 32 : (g + 1) * 32] for d in range(2) for g in range(4)],
    ),
    (
        "experts",
        (3, 48, 96),
        Layout((1,), (2,), batch_axes=(0,), torch_perm=(1, 0)),
        1.0,
        lambda w: [e.T for e in w],
    ),
    ("no_layout", (40, 10, 2), None, 1.0, lambda w: [w.reshape(40, -1)]),
]


@pytest.mark.parametrize(
    ("name", "shape", "layout", "gain", "matrices"), ORTHO_CASES, ids=[c[0] for c in ORTHO_CASES]
)
def test_orthogonal_within_1e_5_in_float32(
    name: str, shape: tuple[int, ...], layout: Layout | None, gain: float, matrices: object
) -> None:
    param = Param("w", shape, "F32", role=Role.WEIGHT, layout=layout)
    values = _fill(param, f"orthogonal(gain={gain})")
    blocks = matrices(values)  # type: ignore[operator]
    for block in blocks:
        assert _gram_error(block, gain) < 1e-5, name
    init = initializer_for(param, parse_method(f"orthogonal(gain={gain})"))
    rows, cols = blocks[0].shape
    assert init.expected_std == pytest.approx(gain / math.sqrt(max(rows, cols)))
    assert float(np.sqrt(np.mean(values.astype(np.float64) ** 2))) == pytest.approx(
        init.expected_std, rel=1e-4
    )


def test_orthogonal_torch_mode_orthogonalizes_the_whole_stack() -> None:
    param = Param("R", (1, 4 * 16, 16), "F32", role=Role.RECURRENT, layout=RNN)
    values = _fill(param, "orthogonal", fan_mode="torch")[0]
    assert _gram_error(values, 1.0) < 1e-5  # one tall [4H, H] matrix, as torch.nn.init.orthogonal_
    assert _gram_error(values[:16], 1.0) > 0.1  # so a single gate block is not orthogonal


@pytest.mark.parametrize("shape", [(4096, 512), (1024, 1000), (700, 700)])
def test_orthonormalize_accuracy_on_hard_shapes(shape: tuple[int, int]) -> None:
    """Near-square Gaussian matrices have cond ≈ 2n: the float64 first pass keeps float32 accurate."""
    a = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    q = orthonormalize(a)
    assert q.dtype == np.float32
    assert _gram_error(q, 1.0) < 1e-5
    # It is the sign-corrected QR factor: R = QᵀA is upper triangular with a positive diagonal.
    r = q.astype(np.float64).T @ a.astype(np.float64)
    assert np.abs(np.tril(r, -1)).max() < 1e-3 * np.abs(r).max()
    assert (np.diagonal(r) > 0).all()


def test_orthonormalize_float64() -> None:
    a = np.random.default_rng(2).standard_normal((300, 300))
    q = orthonormalize(a)
    assert q.dtype == np.float64 and _gram_error(q, 1.0) < 1e-12


def test_orthogonal_is_haar_first_entry_law() -> None:
    """Haar: W[0,0]² of an n×n orthogonal matrix follows Beta(1/2, (n−1)/2); mean 1/n exactly."""
    from scipy import stats

    n, draws = 8, 2000
    firsts = np.empty(draws)
    for i in range(draws):
        w = _fill(
            Param(f"w{i}", (n, n), "F64", role=Role.WEIGHT, layout=LINEAR_OUT_IN),
            "orthogonal",
            dtype=np.float64,
        )
        firsts[i] = w[0, 0]
    assert stats.kstest(firsts**2, "beta", args=(0.5, (n - 1) / 2)).pvalue > 1e-4
    assert stats.binomtest(int((firsts > 0).sum()), draws).pvalue > 1e-4  # sign symmetric


# --- Identity ----------------------------------------------------------------------------------


def test_identity_matrices_in_their_own_layout() -> None:
    out_in = _fill(
        Param("w", (3, 5), "F32", role=Role.WEIGHT, layout=LINEAR_OUT_IN), "identity(distribution=none)"
    )
    assert (out_in == np.eye(3, 5)).all()
    in_out = _fill(
        Param("w", (5, 3), "F32", role=Role.WEIGHT, layout=MATRIX_IN_OUT), "identity(distribution=none)"
    )
    assert (in_out == np.eye(5, 3)).all()  # y = x @ W keeps the first 3 components
    gates = _fill(
        Param("R", (1, 12, 3), "F32", role=Role.RECURRENT, layout=RNN), "identity(distribution=none)"
    )
    assert (gates[0] == np.vstack([np.eye(3)] * 4)).all()
    vector = _fill(Param("w", (6,), "F32", role=Role.WEIGHT), "identity(distribution=none)")
    assert (vector == 1).all()


@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((8, 4, 3, 3), 1),
        ((8, 4, 3, 3), 2),
        ((6, 4, 5), 1),
        ((6, 2, 3, 3, 3), 3),
        ((4, 8, 3, 3), 1),
        ((16, 1, 3, 3), 16),
    ],
)
def test_identity_conv_matches_torch_dirac(shape: tuple[int, ...], groups: int) -> None:
    param = Param("conv", shape, "F32", role=Role.WEIGHT, layout=conv_layout(len(shape), groups))
    ours = _fill(param, "identity(distribution=none)")
    expected = torch.empty(shape)
    torch.nn.init.dirac_(expected, groups=groups)
    assert (ours == expected.numpy()).all()


def test_identity_conv_passes_the_input_through() -> None:
    channels, groups = 6, 3
    param = Param(
        "conv", (channels, channels // groups, 3, 3), "F32", role=Role.WEIGHT, layout=conv_layout(4, groups)
    )
    weight = torch.from_numpy(_fill(param, "identity(distribution=none)"))
    x = torch.randn(2, channels, 9, 9, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.conv2d(x, weight, padding=1, groups=groups)
    assert torch.equal(y, x)


def test_identity_conv_transpose_passes_the_input_through() -> None:
    channels, groups = 4, 2
    param = Param(
        "deconv",
        (channels, channels // groups, 3, 3),
        "F32",
        role=Role.WEIGHT,
        layout=conv_transpose_layout(4, groups),
    )
    weight = torch.from_numpy(_fill(param, "identity(distribution=none)"))
    x = torch.randn(1, channels, 7, 7, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.conv_transpose2d(x, weight, padding=1, groups=groups)
    assert torch.equal(y, x)


def test_identity_labels() -> None:
    param = Param("w", (8, 8), "F32", role=Role.WEIGHT, layout=LINEAR_OUT_IN)
    assert initializer_for(param, parse_method("identity")).label == "identity + normal(0, 0.01)"
    assert initializer_for(param, parse_method("identity(distribution=none)")).label == "identity"
