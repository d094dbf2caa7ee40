"""Distribution specs: parsing, exact error texts, exact moments, sampler invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from netinit_cli.distributions import ACCEPTED_FORMS, Distribution, parse_distribution
from netinit_cli.errors import UsageError
from netinit_cli.sampling import _truncated_acceptance, sample_into
from netinit_cli.seeding import Seed

SEED = Seed(1234, "default")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.02", Distribution("normal", (0.0, 0.02))),
        ("normal(0, 0.02)", Distribution("normal", (0.0, 0.02))),
        ("Normal( -1 ,2e-1 )", Distribution("normal", (-1.0, 0.2))),
        ("normal(std=3, mean=1)", Distribution("normal", (1.0, 3.0))),
        ("gaussian(0,1)", Distribution("normal", (0.0, 1.0))),
        ("uniform(-1, 1)", Distribution("uniform", (-1.0, 1.0))),
        ("truncated_normal(0, 1, -2, 2)", Distribution("truncated_normal", (0.0, 1.0, -2.0, 2.0))),
        ("trunc_normal(0, 0.02, -0.04, 0.04)", Distribution("truncated_normal", (0.0, 0.02, -0.04, 0.04))),
        ("constant(1)", Distribution("constant", (1.0,))),
        ("constant(-.5)", Distribution("constant", (-0.5,))),
    ],
)
def test_parse_forms(text: str, expected: Distribution) -> None:
    assert parse_distribution(text) == expected


def test_none_only_where_allowed() -> None:
    assert parse_distribution("none", allow_none=True) == Distribution("none", ())
    assert parse_distribution("NONE", allow_none=True).describe() == "none"
    with pytest.raises(UsageError, match="none is not accepted here"):
        parse_distribution("none")


def _error(text: str, **kwargs: object) -> tuple[str, str]:
    """The error's one line and its caret diagram (shown under it with --debug)."""
    with pytest.raises(UsageError) as info:
        parse_distribution(text, **kwargs)  # type: ignore[arg-type]
    assert info.value.detail is not None
    return str(info.value), info.value.detail


def test_error_text_points_at_the_offending_character() -> None:
    assert _error("normal(0,,1)") == (
        "--weights 'normal(0,,1)': expected a number or a name, found ',' (character 10); "
        f"accepted: {ACCEPTED_FORMS}",
        "  normal(0,,1)\n           ^",
    )
    assert _error("uniform(1, 0)", option="--biases", allow_none=True) == (
        f"--biases 'uniform(1, 0)': high must be greater than low (character 12); accepted: {ACCEPTED_FORMS}, none",
        "  uniform(1, 0)\n             ^",
    )


@pytest.mark.parametrize(
    ("text", "caret", "problem"),
    [
        ("normal(0, -1)", 10, "std must be > 0"),
        ("normal(0, 1", 11, "expected ',' or ')'"),
        ("normal", 6, "normal needs arguments"),
        ("normal(0)", 8, "normal is missing std"),
        ("normal(0, 1, 2)", 13, "normal takes 2 arguments"),
        ("normal(mean=0, sd=1)", 15, "normal has no parameter 'sd'"),
        ("poisson(3)", 0, "unknown distribution 'poisson'"),
        ("0", 0, "must be > 0"),
        ("-0.1", 0, "must be > 0"),
        ("normal(0, inf)", 10, "inf is not a finite number"),
        ("normal(0, 1) x", 13, "unexpected 'x'"),
        ("normal(0; 1)", 8, "unexpected character ';'"),
        ("truncated_normal(0, 1, 40, 41)", 23, "too far in the tail"),
        ("constant(a)", 9, "value must be a number"),
        ("", 0, "the value is empty"),
    ],
)
def test_errors_have_a_caret_under_the_problem(text: str, caret: int, problem: str) -> None:
    line, detail = _error(text)
    assert "\n" not in line and problem in line and f"(character {caret + 1}); accepted: a number σ" in line
    echoed, marker = detail.split("\n")
    assert echoed == f"  {text}"
    assert marker == "  " + " " * caret + "^"


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@st.composite
def distributions(draw: st.DrawFn) -> Distribution:
    kind = draw(st.sampled_from(["normal", "uniform", "truncated_normal", "constant", "none"]))
    if kind == "normal":
        return Distribution(kind, (draw(finite), draw(positive)))
    if kind == "uniform":
        low = draw(finite)
        return Distribution(kind, (low, low + draw(positive)))
    if kind == "truncated_normal":
        mean, std = draw(finite), draw(positive)
        low = mean + std * draw(st.floats(-5, 4))
        return Distribution(kind, (mean, std, low, low + std * draw(st.floats(0.01, 5))))
    if kind == "constant":
        return Distribution(kind, (draw(finite),))
    return Distribution("none", ())


@given(distributions())
@settings(max_examples=200, deadline=None)
def test_describe_reads_back_exactly(dist: Distribution) -> None:
    assert parse_distribution(dist.describe(), allow_none=True) == dist


@pytest.mark.parametrize(
    ("mean", "std", "low", "high"),
    [
        (0, 1, -2, 2),
        (1, 0.5, 0, 3),
        (0, 1, 3, 9),
        (0, 1, -9, -4),
        (0, 1, -0.1, 0.2),
        (0, 0.02, -0.04, 0.04),
        (0, 1, 8, 8.5),
    ],
)
def test_truncated_normal_moments_are_exact(mean: float, std: float, low: float, high: float) -> None:
    dist = Distribution("truncated_normal", (mean, std, low, high))
    a, b = (low - mean) / std, (high - mean) / std
    ref_mean, ref_var = stats.truncnorm.stats(a, b, loc=mean, scale=std, moments="mv")
    assert dist.mean == pytest.approx(float(ref_mean), rel=1e-9, abs=1e-12)
    assert dist.std == pytest.approx(math.sqrt(float(ref_var)), rel=1e-7)


def test_simple_moments() -> None:
    assert (Distribution("normal", (1.0, 2.0)).mean, Distribution("normal", (1.0, 2.0)).std) == (1.0, 2.0)
    assert Distribution("uniform", (-1.0, 3.0)).mean == 1.0
    assert Distribution("uniform", (-1.0, 3.0)).std == pytest.approx(4 / math.sqrt(12), rel=1e-15)
    assert (Distribution("constant", (5.0,)).mean, Distribution("constant", (5.0,)).std) == (5.0, 0.0)


def test_truncated_normal_chooses_the_cheapest_proposal() -> None:
    assert max(_truncated_acceptance(-2, 2).items(), key=lambda kv: kv[1])[0] == "normal"
    assert max(_truncated_acceptance(-0.1, 0.2).items(), key=lambda kv: kv[1])[0] == "uniform"
    assert max(_truncated_acceptance(3, 9).items(), key=lambda kv: kv[1])[0] == "exponential"
    assert max(_truncated_acceptance(-9, -4).items(), key=lambda kv: kv[1])[0] == "exponential"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5, 7), (65537,)])
def test_samples_fill_every_element_in_place(dtype: type, shape: tuple[int, ...]) -> None:
    for dist in (
        Distribution("normal", (0.0, 1.0)),
        Distribution("uniform", (2.0, 3.0)),
        Distribution("truncated_normal", (0.0, 1.0, -1.0, 1.0)),
    ):
        out = np.full(shape, np.nan, dtype)
        sample_into(dist, out, SEED, "t")
        assert out.dtype == dtype and out.shape == shape
        assert np.isfinite(out).all()
        if out.size > 1:  # every element was drawn (float32 allows a few birthday collisions)
            assert len(np.unique(out)) >= out.size * (0.98 if dtype == np.float32 else 1.0)


def test_bounds_are_respected() -> None:
    out = np.empty(200_000, np.float32)
    sample_into(Distribution("uniform", (-0.25, 0.5)), out, SEED, "u")
    assert out.min() >= np.float32(-0.25) and out.max() <= np.float32(0.5)
    sample_into(Distribution("truncated_normal", (0.0, 0.02, -0.04, 0.04)), out, SEED, "t")
    assert out.min() >= np.float32(-0.04) and out.max() <= np.float32(0.04)
    assert out.min() < -0.039 and out.max() > 0.039  # the bounds are reached, not a narrower range


def test_normal_tails_reach_beyond_six_sigma_resolution() -> None:
    """u₁ uses all 32 bits, so r = √(−2 ln u₁) can reach 6.66σ (24 bits would stop at 5.77σ)."""
    out = np.empty(1 << 22, np.float32)
    sample_into(Distribution("normal", (0.0, 1.0)), out, SEED, "tails")
    beyond = np.abs(out) > 4.5
    expected = 2 * stats.norm.sf(4.5) * out.size
    assert abs(beyond.sum() - expected) < 5 * math.sqrt(expected)


def test_constant_and_none() -> None:
    out = np.ones((4, 4), np.float64)
    sample_into(Distribution("none", ()), out, SEED, "n")
    assert not out.any()
    sample_into(Distribution("constant", (0.25,)), out, SEED, "c")
    assert (out == 0.25).all()


def test_refuses_arrays_it_cannot_fill() -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        sample_into(Distribution("normal", (0.0, 1.0)), np.empty(4, np.float16), SEED, "x")
    with pytest.raises(ValueError, match="C-contiguous"):
        sample_into(Distribution("normal", (0.0, 1.0)), np.empty((4, 4), np.float32).T, SEED, "x")
