"""Kolmogorov–Smirnov suite, in the style of torch's test_init.py.

Every generated tensor is tested against its exact target distribution (p > 1e-4, fixed seed).
The target's σ is computed here from fans written out by hand for each layout, never from the
fans the code reports, so a wrong fan in the code fails the suite; the last tests show that a
deliberately wrong fan is caught.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from netinit_cli.classify.layouts import LINEAR_OUT_IN, MATRIX_IN_OUT, conv_layout, conv_transpose_layout
from netinit_cli.distributions import Distribution, parse_distribution
from netinit_cli.initializers import TRUNCATED_STD
from netinit_cli.methods import parse_method
from netinit_cli.model import Layout, Param, Role
from netinit_cli.roles import initializer_for
from netinit_cli.sampling import sample_into
from netinit_cli.seeding import Seed

SEED = Seed(20240601, "explicit")
P_MIN = 1e-4
RNN = Layout((2,), (1,), (0,), out_divisor=4, blocks=4, label="[dirs, 4H, in]")

# layout name: (shape, layout, semantic (fan_in, fan_out), torch (fan_in, fan_out)), by hand.
LAYOUTS: dict[str, tuple[tuple[int, ...], Layout, tuple[int, int], tuple[int, int]]] = {
    # Linear [out=384, in=256]
    "linear": ((384, 256), LINEAR_OUT_IN, (256, 384), (256, 384)),
    # Conv2d [out=64, in=32, 3, 3]: in·9, out·9
    "conv2d": ((64, 32, 3, 3), conv_layout(4), (288, 576), (288, 576)),
    # grouped Conv2d, 4 groups: [64, 64/4, 3, 3]; semantic fan_out per group (64/4)·9, torch 64·9
    "grouped_conv": ((64, 16, 3, 3), conv_layout(4, groups=4), (144, 144), (144, 576)),
    # depthwise 512 channels 5×5: fan_in 25; semantic fan_out 25, torch 512·25
    "depthwise_conv": ((512, 1, 5, 5), conv_layout(4, groups=512), (25, 25), (25, 12800)),
    # ConvTranspose [in=32, out/g=24, 4, 4], 2 groups: semantic fan_in (32/2)·16, fan_out 24·16;
    # torch reads dim 1 as "in": fan_in 24·16, fan_out 32·16 (its famous swap)
    "conv_transpose": ((32, 24, 4, 4), conv_transpose_layout(4, groups=2), (256, 384), (384, 512)),
    # Gemm transB=0 / MatMul B [K=256, N=384]
    "matmul_k_n": ((256, 384), MATRIX_IN_OUT, (256, 384), (256, 384)),
    # ONNX RNN W [dirs=2, 4H=256, in=48]: per gate fan_out H=64; torch sees [256, 48]
    "rnn_w": ((2, 256, 48), RNN, (48, 64), (48, 256)),
    # ONNX RNN R [dirs=2, 4H=256, H=64]
    "rnn_r": ((2, 256, 64), RNN, (64, 64), (64, 256)),
}


def _generate(
    spec: str, layout_name: str, fan_mode: str = "semantic", role: Role = Role.WEIGHT
) -> np.ndarray:
    shape, layout, _, _ = LAYOUTS[layout_name]
    param = Param(f"{layout_name}.weight", shape, "F32", role=role, layout=layout)
    init = initializer_for(param, parse_method(spec), fan_mode=fan_mode)
    out = np.empty(shape, np.float32)
    init.fill(out, SEED, param.name)
    return out


def _ks(values: np.ndarray, dist: Distribution) -> float:
    """p-value of the one-sample KS test of ``values`` against ``dist`` exactly."""
    x = values.astype(np.float64).reshape(-1)
    if dist.kind == "normal":
        return float(stats.kstest(x, "norm", args=dist.params).pvalue)
    if dist.kind == "uniform":
        low, high = dist.params
        return float(stats.kstest(x, "uniform", args=(low, high - low)).pvalue)
    mean, std, low, high = dist.params
    return float(
        stats.kstest(x, "truncnorm", args=((low - mean) / std, (high - mean) / std, mean, std)).pvalue
    )


def _target(kind: str, std: float) -> Distribution:
    """The exact law of each scaling distribution with standard deviation ``std``."""
    if kind == "normal":
        return Distribution("normal", (0.0, std))
    if kind == "uniform":
        return Distribution("uniform", (-math.sqrt(3) * std, math.sqrt(3) * std))
    wide = std / TRUNCATED_STD
    return Distribution("truncated_normal", (0.0, wide, -2 * wide, 2 * wide))


# (spec, distribution kind, σ as a function of the hand-written fans)
SCALING_CASES = [
    ("kaiming", "normal", lambda fi, fo: math.sqrt(2 / fi)),
    ("kaiming(distribution=uniform)", "uniform", lambda fi, fo: math.sqrt(2 / fi)),
    ("kaiming(distribution=truncated_normal)", "truncated_normal", lambda fi, fo: math.sqrt(2 / fi)),
    ("xavier", "normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("xavier(distribution=uniform)", "uniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    ("xavier(distribution=truncated_normal)", "truncated_normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
    (
        "kaiming(mode=fan_out, nonlinearity=leaky_relu, negative_slope=0.2)",
        "normal",
        lambda fi, fo: math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(fo),
    ),
    (
        "xavier(distribution=uniform, nonlinearity=tanh)",
        "uniform",
        lambda fi, fo: 5 / 3 * math.sqrt(2 / (fi + fo)),
    ),
    ("kaiming(nonlinearity=selu, mode=fan_avg)", "normal", lambda fi, fo: 0.75 / math.sqrt((fi + fo) / 2)),
    ("xavier(gain=0.5, mode=fan_in)", "normal", lambda fi, fo: 0.5 / math.sqrt(fi)),
]


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize(("spec", "kind", "sigma"), SCALING_CASES, ids=[c[0] for c in SCALING_CASES])
def test_variance_scaling_matches_exact_target(spec: str, kind: str, sigma: object, layout_name: str) -> None:
    _, _, (fan_in, fan_out), _ = LAYOUTS[layout_name]
    std = sigma(fan_in, fan_out)  # type: ignore[operator]
    values = _generate(spec, layout_name)
    p = _ks(values, _target(kind, std))
    assert p > P_MIN, f"{spec} on {layout_name}: KS p = {p:.3g} against σ = {std:.6g}"


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize(
    ("spec", "kind", "sigma"),
    [
        ("kaiming", "normal", lambda fi, fo: math.sqrt(2 / fi)),
        ("xavier(distribution=uniform)", "uniform", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("kaiming(mode=fan_out)", "normal", lambda fi, fo: math.sqrt(2 / fo)),
    ],
)
def test_torch_fan_mode_matches_torch_fans(spec: str, kind: str, sigma: object, layout_name: str) -> None:
    _, _, _, (fan_in, fan_out) = LAYOUTS[layout_name]
    std = sigma(fan_in, fan_out)  # type: ignore[operator]
    p = _ks(_generate(spec, layout_name, fan_mode="torch"), _target(kind, std))
    assert p > P_MIN, f"{spec} (torch fans) on {layout_name}: KS p = {p:.3g}"


@pytest.mark.parametrize("layout_name", ["linear", "grouped_conv", "conv_transpose", "rnn_r"])
@pytest.mark.parametrize(
    "weights",
    [
        "normal(0.1, 0.5)",
        "0.02",
        "uniform(-0.3, 0.2)",
        "truncated_normal(0, 1, -0.5, 1.5)",
        "truncated_normal(1, 2, 7, 9)",
    ],
)
def test_random_weights_follow_their_distribution(weights: str, layout_name: str) -> None:
    values = _generate(f"random(weights={weights})", layout_name)
    p = _ks(values, parse_distribution(weights))
    assert p > P_MIN, f"random weights {weights} on {layout_name}: KS p = {p:.3g}"


@pytest.mark.parametrize(
    "text",
    [
        "truncated_normal(0, 1, -2, 2)",  # normal proposal
        "truncated_normal(0, 1, -0.05, 0.1)",  # uniform proposal
        "truncated_normal(0, 1, 3, 10)",  # exponential proposal, upper tail
        "truncated_normal(2, 0.5, -3, -1)",  # exponential proposal, lower tail (6σ below the mean)
        "truncated_normal(0, 1, 5, 5.01)",  # narrow, far: uniform proposal
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_truncated_normal_every_proposal(text: str, dtype: type) -> None:
    dist = parse_distribution(text)
    out = np.empty(60_000, dtype)
    sample_into(dist, out, SEED, text)
    assert _ks(out, dist) > P_MIN


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("text", ["normal(-3, 7)", "uniform(5, 5.5)"])
def test_samplers_across_chunk_boundaries(text: str, dtype: type) -> None:
    dist = parse_distribution(text)
    out = np.empty(2_200_000, dtype)  # three chunks
    sample_into(dist, out, SEED, "chunked")
    assert _ks(out, dist) > P_MIN
    for part in np.array_split(out, 3):
        assert _ks(part, dist) > P_MIN


def test_random_biases_and_token_roles() -> None:
    bias = Param("fc.bias", (20_000,), "F32", role=Role.BIAS)
    init = initializer_for(bias, parse_method("random(biases=uniform(-0.1, 0.1))"))
    out = np.empty(bias.shape, np.float32)
    init.fill(out, SEED, bias.name)
    assert _ks(out, Distribution("uniform", (-0.1, 0.1))) > P_MIN
    token = Param("pos_embed", (1, 197, 128), "F32", role=Role.TOKEN)
    out = np.empty(token.shape, np.float32)
    initializer_for(token, parse_method("kaiming")).fill(out, SEED, token.name)
    assert _ks(out, Distribution("truncated_normal", (0.0, 0.02, -0.04, 0.04))) > P_MIN


def test_embedding_under_kaiming_is_unit_variance_per_dimension() -> None:
    param = Param("wte", (500, 64), "F32", role=Role.EMBEDDING)
    out = np.empty(param.shape, np.float32)
    initializer_for(param, parse_method("kaiming")).fill(out, SEED, param.name)
    assert _ks(out, Distribution("normal", (0.0, 1 / 8))) > P_MIN


@pytest.mark.parametrize(
    "layout_name", ["linear", "conv2d", "grouped_conv", "conv_transpose", "matmul_k_n", "rnn_w"]
)
def test_identity_noise_residual(layout_name: str) -> None:
    exact = _generate("identity(distribution=none)", layout_name)
    noisy = _generate("identity(distribution=0.05)", layout_name)
    assert _ks(noisy - exact, Distribution("normal", (0.0, 0.05))) > P_MIN


# --- The suite has power: wrong fans fail it. ---------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "layout_name", "wrong_std"),
    [
        # kaiming on a conv with fan_out (576) where fan_in (288) belongs: σ off by √2
        ("kaiming", "normal", "conv2d", math.sqrt(2 / 576)),
        # the ConvTranspose swap: torch's fan_in 384 instead of the semantic 256
        ("kaiming(distribution=uniform)", "uniform", "conv_transpose", math.sqrt(2 / 384)),
        # grouped conv with torch's fan_out (576) in the Glorot average instead of 144
        ("xavier", "normal", "grouped_conv", math.sqrt(2 / (144 + 576))),
        # packed RNN gates: the whole 4H as fan_out instead of H
        ("xavier", "normal", "rnn_r", math.sqrt(2 / (64 + 256))),
        # a forgotten √3 in the uniform bound
        ("kaiming(distribution=uniform)", "uniform", "linear", math.sqrt(2 / 256) / math.sqrt(3)),
    ],
)
def test_a_wrong_fan_fails_the_suite(spec: str, kind: str, layout_name: str, wrong_std: float) -> None:
    values = _generate(spec, layout_name)
    p = _ks(values, _target(kind, wrong_std))
    assert p < P_MIN, f"KS did not reject σ = {wrong_std:.5g} for {spec} on {layout_name} (p = {p:.3g})"
