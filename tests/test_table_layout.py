"""One line per tensor at any terminal width: long names shortened in the middle, low-value
columns left out at narrow widths, one grouped row per name pattern — against golden text.

Regenerate after a deliberate change with:  UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_table_layout.py
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from netinit_cli import initialize, inspect
from netinit_cli.columns import Column, fit, overhead, shorten_end, shorten_middle
from netinit_cli.report import NAME_SHARE, Report, group_key, render

GOLDEN = Path(__file__).resolve().parent / "golden"
F = TensorProto.FLOAT
BASIS = "If_0_{}_branch__Inline_0__stft.forward_basis_buffer"
LONG = "If_0/else_branch::" + BASIS.format("else")


def stft_basis(n_fft: int = 64) -> np.ndarray:
    n = np.arange(n_fft)
    angle = 2 * np.pi * np.arange(n_fft // 2 + 1)[:, None] * n / n_fft
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :].astype(np.float32)


def branch(which: str) -> onnx.GraphProto:
    """An If branch that runs an STFT as a Conv over its own basis initializer (exporters inline
    the module into both branches and prefix the buffer's name)."""
    name = BASIS.format(which)
    return helper.make_graph(
        [helper.make_node("Conv", ["audio", name], [f"{which}_spec"], strides=[16])],
        f"{which}_branch",
        [],
        [helper.make_tensor_value_info(f"{which}_spec", F, [1, 66, 13])],
        [numpy_helper.from_array(stft_basis(), name)],
    )


def long_names_model(path: Path) -> Path:
    """An STFT front end inside an If (subgraph names), three encoder layers with long names, and
    exporter constants whose names collapse to one pattern but differ in role."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(
            "If", ["cond"], ["spec"], name="If_0", then_branch=branch("then"), else_branch=branch("else")
        ),
        helper.make_node("Transpose", ["spec"], ["h0"], perm=[0, 2, 1]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 32], np.int64), "/model.0/Constant_1_output_0"),
        numpy_helper.from_array(np.array(0.5, np.float32), "/model.1/Constant_2_output_0"),
    ]
    width = 66
    for layer in range(3):
        prefix = f"encoder.layers.{layer}.self_attention.linear_qkv"
        inits += [
            numpy_helper.from_array(
                rng.standard_normal((width, 32)).astype(np.float32) * 0.1, f"{prefix}.weight"
            ),
            numpy_helper.from_array(np.zeros(32, np.float32), f"{prefix}.bias"),
        ]
        nodes += [
            helper.make_node("MatMul", [f"h{layer}", f"{prefix}.weight"], [f"m{layer}"]),
            helper.make_node("Add", [f"m{layer}", f"{prefix}.bias"], [f"h{layer + 1}"]),
        ]
        width = 32
    nodes += [
        helper.make_node("Reshape", ["h3", "/model.0/Constant_1_output_0"], ["flat"]),
        helper.make_node("Mul", ["flat", "/model.1/Constant_2_output_0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "long_names",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("audio", F, [1, 1, 256]),
        ],
        [helper.make_tensor_value_info("y", F, [13, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def rendered(report: Report, mode: str, width: int) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    render(report, console, mode)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"table differs from {path}; if intended, run with UPDATE_GOLDEN=1"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    folder = tmp_path_factory.mktemp("long")
    model = long_names_model(folder / "long.onnx")
    filled = initialize(model, folder / "out.onnx", method="xavier", all=True, fsync=False)
    filled.input, filled.output, filled.elapsed = Path("long.onnx"), Path("out.onnx"), 0.0
    plan = inspect(model)
    plan.input = Path("long.onnx")
    return {"filled": filled, "plan": plan}


def table_lines(text: str) -> list[str]:
    """The table's body rows: between the header rule and the blank line before the footer."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    end = lines.index("", start)
    return lines[start:end]


CASES = [
    (kind, mode, width) for kind in ("filled", "plan") for mode in ("full", "summary") for width in (100, 160)
]


@pytest.mark.parametrize(("kind", "mode", "width"), CASES, ids=[f"{k}-{m}-{w}" for k, m, w in CASES])
def test_long_names_fit_one_line_per_row(
    reports: dict[str, Report], kind: str, mode: str, width: int
) -> None:
    report = reports[kind]
    text = rendered(report, mode, width)
    check_golden(f"long_names_{kind}_{mode}_{width}.txt", text)
    rows = table_lines(text)
    patterns = {group_key(entry.param.name) for entry in report.entries}
    assert len(rows) == (len(report.entries) if mode == "full" else len(patterns))
    assert all(len(line) <= width for line in text.splitlines()[: len(rows) + 4])
    if mode == "full":
        # Shortened in the middle: the start and the end of the long name are both there.
        (name,) = [line.split()[0] for line in rows if line.lstrip().startswith("If_0/else")]
        assert "…" in name and name.endswith("basis_buffer") and len(name) >= min(width // 3, NAME_SHARE)


def test_one_row_per_group_with_its_count(reports: dict[str, Report]) -> None:
    text = rendered(reports["filled"], "summary", 160)
    rows = table_lines(text)
    (constants,) = [line for line in rows if "/model.N/Constant_N_output_N" in line]
    # An I64 shape (constant) and a float scalar (kept): one group of 2, both roles and actions.
    assert "constant, scalar" in constants and "constant 1, kept 1" in constants
    assert " 2 " in constants
    (layers,) = [line for line in rows if "linear_qkv.weight" in line]
    assert " 3 " in layers


def test_full_names_stay_in_the_json(reports: dict[str, Report]) -> None:
    names = [entry["name"] for entry in json.loads(json.dumps(reports["filled"].to_json()))["tensors"]]
    assert LONG in names and "If_0/then_branch::" + BASIS.format("then") in names


def test_the_basis_in_the_branches_is_a_kept_fixed_transform(reports: dict[str, Report]) -> None:
    by_name = {entry.param.name: entry for entry in reports["filled"].entries}
    assert by_name[LONG].param.role.value == "fixed_transform" and by_name[LONG].action.value == "kept"
    assert by_name["encoder.layers.2.self_attention.linear_qkv.weight"].action.value == "filled"


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        (LONG, 50, "If_0/else_branch::If_0_e…stft.forward_basis_buffer"),
        ("conv1.weight", 12, "conv1.weight"),
        ("abcdefgh", 5, "ab…gh"),
        ("abcdefgh", 4, "a…gh"),
        ("ab", 1, "…"),
        ("層層層層層層", 7, "層…層層"),  # wide characters count two cells
    ],
)
def test_shorten_middle_keeps_start_and_end(text: str, width: int, expected: str) -> None:
    assert shorten_middle(text, width) == expected


def test_shorten_end() -> None:
    assert shorten_end("has data; --all re-initializes it", 14) == "has data; --a…"
    assert shorten_end("kaiming normal", 14) == "kaiming normal"


def test_fit_squeezes_then_drops_low_value_columns_then_shares_the_room_left() -> None:
    columns = [
        Column("name", squeeze=25, middle=True),
        Column("a"),
        Column("b", drop=2),
        Column("c", squeeze=10),
        Column("d", drop=1),
    ]
    natural = [70, 10, 10, 30, 10]
    # Everything fits: natural widths.
    assert fit(columns, natural, sum(natural) + overhead(5)) == natural
    # Squeezed columns fit: nothing is left out; of the spare 19 cells the name gets two for
    # each one c gets.
    assert fit(columns, natural, 100) == [38, 10, 10, 16, 10]
    # d goes first, then b; the name and c share what is left, two to one.
    assert fit(columns, natural, 70) == [27, 10, 10, 10, None]
    assert fit(columns, natural, 60) == [29, 10, None, 11, None]
    # A column at its natural width takes no more: the rest goes to the others.
    assert fit([columns[0], Column("c", squeeze=10)], [30, 30], 60) == [30, 23]
    # Nothing more to leave out: the name gives way, down to a floor of 8 cells.
    assert fit(columns, natural, 40) == [10, 10, None, 10, None]
    assert fit(columns, natural, 30) == [8, 10, None, 10, None]
