"""The summary table rendered at a fixed width without colour, against golden text.

Regenerate after a deliberate change with:  UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, GOLDEN
from rich.console import Console

from netinit_cli import initialize, inspect
from netinit_cli.model import Action, Filled, Param, Planned, Role
from netinit_cli.report import group_key, render, sparkline, std_off_target


def rendered(report: object, mode: str) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=150, color_system=None, force_terminal=False, highlight=False)
    render(report, console, mode)  # type: ignore[arg-type]
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"table differs from {path}; if intended, run with UPDATE_GOLDEN=1"


@pytest.fixture
def filled_report(tmp_path: Path) -> object:
    shutil.copy(FIXTURES / "cnn.onnx", tmp_path / "cnn.onnx")
    report = initialize(tmp_path / "cnn.onnx", tmp_path / "out.onnx", method="xavier", all=True)
    # Paths and timing vary between runs; the rest must not.
    report.input, report.output, report.elapsed = Path("cnn.onnx"), Path("out.onnx"), 0.0
    return report


def test_full_table_golden(filled_report: object) -> None:
    check_golden("cnn_xavier_full.txt", rendered(filled_report, "full"))


def test_summary_table_golden(filled_report: object) -> None:
    check_golden("cnn_xavier_summary.txt", rendered(filled_report, "summary"))


def test_plan_table_golden() -> None:
    report = inspect(FIXTURES / "cnn_noparams.onnx")
    report.input = Path("cnn_noparams.onnx")
    check_golden("cnn_noparams_plan.txt", rendered(report, "full"))


def test_table_none_prints_only_the_footer(filled_report: object) -> None:
    text = rendered(filled_report, "none")
    assert text.startswith("13 filled, 0 kept, 0 constant; method xavier(")
    assert "tensor" not in text and text.count("\n") == 1


def test_sparkline_scales_to_the_peak() -> None:
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([]) == "" and sparkline([0, 0]) == ""


def test_group_key_collapses_layer_indices() -> None:
    assert group_key("model.layers.11.mlp.up_proj.weight") == "model.layers.N.mlp.up_proj.weight"
    assert group_key("h.0.attn.c_attn.weight") == "h.N.attn.c_attn.weight"
    assert group_key("conv1.weight") == "conv1.weight"


def _entry(expected: float, numel: int) -> Planned:
    param = Param("w", (numel,), "F32", role=Role.WEIGHT)
    return Planned(param, Action.FILL, expected_std=expected)


def test_std_flag_catches_a_wrong_gain_but_not_noise() -> None:
    # sqrt(2) too large (a Kaiming gain applied twice) is flagged on any realistic size ...
    assert std_off_target(_entry(0.1, 10_000), Filled(0.0, 0.1414))
    # ... while a healthy 1% deviation on a small tensor is sampling noise.
    assert not std_off_target(_entry(0.1, 1_000), Filled(0.0, 0.101))


def test_large_models_group_automatically(tmp_path: Path) -> None:
    from netinit_cli.report import AUTO_FULL_LIMIT, choose_mode

    assert choose_mode("auto", AUTO_FULL_LIMIT) == "full"
    assert choose_mode("auto", AUTO_FULL_LIMIT + 1) == "summary"
    assert choose_mode("full", 5000) == "full"
