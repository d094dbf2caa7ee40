"""Planning: scope, opt-in roles, per-pattern rules and the TOML config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netinit_cli import UsageError
from netinit_cli.classify.layouts import LINEAR_OUT_IN
from netinit_cli.methods import parse_method
from netinit_cli.model import Action, Layout, Param, Role
from netinit_cli.options import build_options
from netinit_cli.plan import make_plan, parse_rule
from netinit_cli.roles import initializer_for
from netinit_cli.seeding import parse_seed


def params() -> list[Param]:
    return [
        Param("lm_head.weight", (32, 16), "F32", role=Role.WEIGHT, layout=LINEAR_OUT_IN),
        Param("layers.0.fc.weight", (16, 16), "F32", role=Role.WEIGHT, layout=LINEAR_OUT_IN),
        Param("layers.0.fc.bias", (16,), "F32", role=Role.BIAS),
        Param("layers.0.norm.weight", (16,), "F32", role=Role.NORM_SCALE),
        Param("logit_scale", (), "F32", role=Role.SCALAR),
        Param("mystery", (4, 4), "F32", role=Role.UNKNOWN),
        Param("ids", (4,), "I64", role=Role.CONSTANT),
        Param("missing.weight", (8, 16), "F32", has_data=False, role=Role.WEIGHT, layout=LINEAR_OUT_IN),
    ]


def plan_of(**kwargs: object) -> dict[str, object]:
    return {entry.param.name: entry for entry in make_plan(params(), build_options(**kwargs))}  # type: ignore[arg-type]


def test_missing_only_fills_only_missing() -> None:
    plan = plan_of()
    assert {n for n, e in plan.items() if e.action is Action.FILL} == {"missing.weight"}  # type: ignore[attr-defined]
    assert plan["ids"].action is Action.CONSTANT  # type: ignore[attr-defined]
    assert "opt in with --rule" in plan["mystery"].why  # type: ignore[attr-defined]


def test_all_fills_learnables_and_keeps_opt_in_roles() -> None:
    plan = plan_of(all=True)
    filled = {n for n, e in plan.items() if e.action is Action.FILL}  # type: ignore[attr-defined]
    assert filled == {
        "lm_head.weight",
        "layers.0.fc.weight",
        "layers.0.fc.bias",
        "layers.0.norm.weight",
        "missing.weight",
    }


def test_rules_first_match_wins_and_are_shown() -> None:
    plan = plan_of(
        all=True, rules=["lm_head.*=xavier", "*.weight=orthogonal", "*.bias=constant(0.1)", "mystery=0.02"]
    )
    assert plan["lm_head.weight"].init.startswith("xavier")  # type: ignore[attr-defined]
    assert (
        plan["lm_head.weight"].rule
        == "lm_head.*=xavier(distribution=normal, mode=fan_avg, nonlinearity=linear)"
    )  # type: ignore[attr-defined]
    assert plan["layers.0.fc.weight"].init.startswith("orthogonal")  # type: ignore[attr-defined]
    # A method rule keeps fixed roles fixed; a distribution rule is what the user asked for.
    assert plan["layers.0.norm.weight"].init == "constant 1"  # type: ignore[attr-defined]
    assert plan["layers.0.fc.bias"].expected_mean == pytest.approx(0.1)  # type: ignore[attr-defined]
    assert plan["mystery"].action is Action.FILL and plan["mystery"].expected_std == pytest.approx(0.02)  # type: ignore[attr-defined]
    assert plan["ids"].action is Action.CONSTANT, "rules never touch integer tensors"  # type: ignore[attr-defined]


def test_keep_rule_protects_a_learnable() -> None:
    plan = plan_of(all=True, rules=["lm_head.*=keep"])
    assert plan["lm_head.weight"].action is Action.KEEP  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lm_head.*", "expected GLOB=SPEC"),
        ("=xavier", "expected GLOB=SPEC"),
        ("x=kaiming(distribution=poisson)", "poisson"),
        ("x=banana", "SPEC must be a method"),
    ],
)
def test_bad_rules_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_rule(text)


def test_config_file_supplies_defaults_and_rules(tmp_path: Path) -> None:
    config = tmp_path / "netinit.toml"
    config.write_text('method = "xavier"\nseed = "cfg"\nall = true\n[rules]\n"lm_head.*" = "orthogonal"\n')
    options = build_options(config=config, rules=["lm_head.*=random"])
    assert options.method.name == "xavier" and str(options.seed) == "cfg" and options.all
    assert [r.pattern for r in options.rules] == ["lm_head.*", "lm_head.*"]
    assert options.rules[0].method is not None and options.rules[0].method.name == "random", (
        "command line first"
    )
    # An explicit method on the command line wins over the file.
    assert build_options(config=config, method="identity").method.name == "identity"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("method = [", "not valid TOML"),
        ("colour = 1", "unknown key"),
        ("rules = 3", r"\[rules\] must be a table"),
    ],
)
def test_bad_config_is_a_usage_error(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(UsageError, match=message):
        build_options(config=config)


@pytest.mark.parametrize(
    ("layout", "shape", "forget_slice"),
    [
        # ONNX LSTM B [dirs, 8H] = Wb(i, o, f, c) + Rb(i, o, f, c): only Wb's f block.
        (Layout((), (1,), batch_axes=(0,), blocks=8, forget_block=2), (1, 32), slice(8, 12)),
        # torch bias_ih_l0 [4H], gates i, f, g, o: block 1.
        (Layout((), (0,), blocks=4, forget_block=1), (16,), slice(4, 8)),
    ],
)
def test_forget_bias_sets_exactly_one_block(
    layout: Layout, shape: tuple[int, ...], forget_slice: slice
) -> None:
    param = Param("b", shape, "F32", role=Role.BIAS, layout=layout)
    init = initializer_for(param, parse_method("kaiming", {"forget_bias": "1.0"}))
    out = np.full(shape, np.nan, np.float32)
    init.fill(out, parse_seed(None), "b")
    flat = out.reshape(-1)
    expected = np.zeros_like(flat)
    expected[forget_slice] = 1.0
    assert np.array_equal(flat, expected)


def test_bias_without_forget_block_gets_none() -> None:
    param = Param("bias_hh_l0", (16,), "F32", role=Role.BIAS, layout=Layout((), (0,), blocks=4))
    out = np.full((16,), np.nan, np.float32)
    initializer_for(param, parse_method("kaiming", {"forget_bias": "1.0"})).fill(out, parse_seed(None), "b")
    assert np.all(out == 0)


@pytest.mark.parametrize(
    ("shape", "layout", "semantic", "torch_fans", "kaiming_stds"),
    [
        # The README's worked table ("Fans: semantic (default) or torch parity").
        ((16, 8, 3, 3), "convT", (144, 72), (72, 144), (0.1179, 0.1667)),
        ((8, 2, 3, 3), "conv4", (18, 18), (18, 72), (0.3333, 0.3333)),
        ((4, 1, 3, 3), "conv4", (9, 9), (9, 36), (0.4714, 0.4714)),
        ((64, 32), "in_out", (64, 32), (64, 32), (0.1768, 0.1768)),
    ],
)
def test_readme_fan_table(
    shape: tuple[int, ...],
    layout: str,
    semantic: tuple[int, int],
    torch_fans: tuple[int, int],
    kaiming_stds: tuple[float, float],
) -> None:
    from netinit_cli.classify.layouts import MATRIX_IN_OUT, conv_layout, conv_transpose_layout

    chosen = {"convT": conv_transpose_layout(4, 1), "conv4": conv_layout(4, 4), "in_out": MATRIX_IN_OUT}[
        layout
    ]
    param = Param("w", shape, "F32", role=Role.WEIGHT, layout=chosen)
    for mode, fans, std in (("semantic", semantic, kaiming_stds[0]), ("torch", torch_fans, kaiming_stds[1])):
        init = initializer_for(param, parse_method("kaiming"), fan_mode=mode)
        assert (init.fan_in, init.fan_out) == fans
        assert init.expected_std == pytest.approx(std, abs=5e-5)


@pytest.mark.parametrize(
    ("layout", "shape", "problem"),
    [
        (LINEAR_OUT_IN, (8,), "needs more than 1 dimension"),
        (Layout((1,), (0,), out_divisor=0), (8, 4), "below 1"),
        (Layout((1,), (0,), blocks=4), (10, 4), "not a multiple of 4 gate blocks"),
        (LINEAR_OUT_IN, (8, 4), None),
    ],
)
def test_layout_problem(layout: Layout, shape: tuple[int, ...], problem: str | None) -> None:
    found = layout.problem(shape)
    assert (found is None) if problem is None else (found is not None and problem in found)
