"""Hostile and careless option values, config files, seeds and tensor names (issue 13, items 6-10
and 17): each gets one ``netinit: error:`` line and exit 2, never a traceback, a hang, a
non-finite value in the output, or a character on the terminal that the terminal interprets.

Every test here failed on the main branch before these fixes; the property tests over the same
inputs are in ``tests/test_hostile_properties.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
from pathlib import Path

import hostile_cases as hc
import numpy as np
import pytest
from click.testing import CliRunner

from netinit_cli import cli as cli_module
from netinit_cli.cli import cli
from netinit_cli.dtypes import cast_checked
from netinit_cli.errors import UsageError
from netinit_cli.safe_text import shown

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TIME_LIMIT = 20.0  # seconds; every case here takes well under one


def time_limit(seconds: float = TIME_LIMIT) -> contextlib.AbstractContextManager[None]:
    """Fail, instead of hanging the suite, when a command does not return."""
    return hc.time_limit(seconds, TimeoutError)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with time_limit():
        result = CliRunner().invoke(cli, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"escaped the CLI: {result.exception!r}\n{result.stderr}")
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    """The single ``netinit: error:`` line that stderr must be; returns its message."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("netinit: error: "), stderr
    assert stderr.endswith("\n") and "Traceback" not in stderr
    return lines[0][len("netinit: error: ") :]


def usage_error(*args: str, env: dict[str, str] | None = None) -> str:
    code, stdout, stderr = invoke(*args, env=env)
    assert code == 2, (code, stderr)
    assert stdout == ""
    return one_error_line(stderr)


def st_file(path: Path, tensors: list[tuple[str, str, list[int]]]) -> Path:
    """A safetensors file of zero-filled tensors (name, dtype, shape)."""
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
    raw = [
        (name, dtype, shape, b"\x00" * (sizes[dtype] * int(np.prod(shape)))) for name, dtype, shape in tensors
    ]
    path.write_bytes(hc.st_bytes(raw))
    return path


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "mlp.safetensors", tmp_path / "mlp.safetensors")
    return tmp_path / "mlp.safetensors"


def config(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "netinit.toml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return str(path)


# ----------------------------------------------------------------------------------------------
# Item 6: config values have types; a quoted 'false' never means --all.


def test_config_all_as_a_string_is_refused_and_the_input_kept(tmp_path: Path, mlp: Path) -> None:
    before = mlp.read_bytes()
    message = usage_error(str(mlp), "--in-place", "--config", config(tmp_path, "all = 'false'\n"))
    assert message == (
        f"--config {tmp_path / 'netinit.toml'}: all = 'false' is a string; "
        "write all = false (a TOML boolean, no quotes)"
    )
    assert mlp.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all = 'true'", "all = 'true' is a string; write all = true"),
        ("all = 1", "all = 1 is an integer; write all = true or all = false"),
        ("all = [true]", "all = […] is an array"),
        ("seed = 1.5", 'seed = 1.5 is a float; write an integer (seed = 42) or a string (seed = "run-7")'),
        ("seed = [1]", "seed = […] is an array; write an integer"),
        ("seed = true", "seed = true is a boolean; write an integer"),
        ("seed = {a = 1}", "seed = {…} is a table; write an integer"),
        ("seed = 1979-05-27", "seed = 1979-05-27 is a date or time; write an integer"),
        ("method = 3", 'method = 3 is an integer; write a string (method = "xavier")'),
        ("method = {name = 'xavier'}", "method = {…} is a table; write a string"),
        ("fan_mode = ['torch']", 'fan_mode = […] is an array; write a string (fan_mode = "torch")'),
        ("rules = ['*=xavier']", '[rules] must be a table of "GLOB" = "SPEC", not an array'),
        ("[rules]\n'*' = 0.1", "[rules] '*' = 0.1 is a float; write a string"),
        ("[rules]\n'*' = {a = 1}", "[rules] '*' = {…} is a table; write a string"),
        ("colour = 'red'", "unknown key(s) 'colour'; known: all, fan_mode, method, preset, rules, seed"),
        ("preset = ['hf']", 'preset = […] is an array; write a string (preset = "hf")'),
    ],
)
def test_config_values_of_the_wrong_type_name_the_key(
    tmp_path: Path, mlp: Path, text: str, expected: str
) -> None:
    message = usage_error(
        str(mlp), "--all", "--config", config(tmp_path, text + "\n"), "-o", str(tmp_path / "o.st")
    )
    assert expected in message
    assert not (tmp_path / "o.st").exists()


def test_typed_config_values_are_used(tmp_path: Path, mlp: Path) -> None:
    path = config(tmp_path, "all = false\nseed = 7\nmethod = 'xavier'\n[rules]\n'*.bias' = 'constant(0.5)'\n")
    code, stdout, stderr = invoke(str(mlp), "--config", path, "--json", "-o", str(tmp_path / "o.safetensors"))
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["scope"] == "missing" and report["seed"] == "7" and report["method"].startswith("xavier")


# ----------------------------------------------------------------------------------------------
# Item 10: a config path must be a regular file; a FIFO is refused at once, never read.


def test_config_on_a_fifo_is_refused_without_hanging(tmp_path: Path, mlp: Path) -> None:
    fifo = tmp_path / "netinit.toml"
    os.mkfifo(fifo)
    message = usage_error(str(mlp), "--config", str(fifo), "-o", str(tmp_path / "o.safetensors"))
    assert message == f"--config {fifo}: not a regular file (a FIFO)"


def test_config_on_a_device_is_refused(mlp: Path, tmp_path: Path) -> None:
    message = usage_error(str(mlp), "--config", "/dev/zero", "-o", str(tmp_path / "o.safetensors"))
    assert message == "--config /dev/zero: not a regular file (a character device)"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_lsuv_data_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("onnxruntime")
    data = tmp_path / "batch.npz"
    if kind == "fifo":
        os.mkfifo(data)
    where = str(data) if kind == "fifo" else "/dev/zero"
    model = shutil.copy(FIXTURES / "mlp.onnx", tmp_path / "mlp.onnx")
    message = usage_error(str(model), "--method", "lsuv", "--data", where, "-o", str(tmp_path / "o.onnx"))
    assert (
        message
        == f"--data {where}: not a regular file ({'a FIFO' if kind == 'fifo' else 'a character device'})"
    )


def test_config_larger_than_a_config_is_refused(tmp_path: Path, mlp: Path) -> None:
    path = config(tmp_path, "# " + "x" * (1 << 20) + "\n")
    assert "more than a config file's 1,048,576" in usage_error(str(mlp), "--config", path)


# ----------------------------------------------------------------------------------------------
# Item 7: values that cannot be finite in their dtype are refused before anything is written,
# for every dtype, with the tensor, the value and the limit, and no numpy warning text.


@pytest.mark.parametrize(
    ("args", "tensor", "reach"),
    [
        (("--method", "random(weights=normal(0,1e308))"), "fc1.weight", "inf"),
        (("--method", "random", "--weights", "constant(1e39)"), "fc1.weight", "1e+39"),
        (("--method", "random", "--weights", "uniform(-3e38,3e38)"), "fc1.weight", "6e+38"),
        (("--gain", "1e39"), "fc1.weight", "5.718e+78"),
        (("--method", "random", "--biases", "1e308"), "fc1.bias", "inf"),
        (("--method", "identity(distribution=normal(0,1e308))"), "fc1.weight", "inf"),
        (("--method", "orthogonal", "--gain", "1e39"), "fc1.weight", "1e+39"),
        (("--rule", "*=normal(0,3e18)"), "fc1.bias", "4.117e+38"),
    ],
)
def test_values_beyond_float32_are_refused_in_the_plan(
    tmp_path: Path, mlp: Path, args: tuple[str, ...], tensor: str, reach: str
) -> None:
    out = tmp_path / "o.safetensors"
    message = usage_error(str(mlp), "--all", *args, "-o", str(out))
    assert message.startswith(f"tensor {tensor!r}: ") and f"would reach {reach} while generating" in message
    assert message.endswith(
        "beyond F32's largest finite value 3.403e+38; use a smaller scale (std, bounds, gain)"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == [mlp]
    # The plan itself refuses: a dry run says the same.
    assert usage_error(str(mlp), "--all", *args, "--dry-run") == message


def test_f64_and_f16_tensors_are_checked_too(tmp_path: Path) -> None:
    model = st_file(tmp_path / "m.safetensors", [("a.weight", "F64", [4, 4]), ("b.weight", "F16", [4, 4])])
    out = tmp_path / "o.safetensors"
    message = usage_error(str(model), "--all", "--rule", "a.*=normal(0,1e200)", "-o", str(out))
    assert message.startswith("tensor 'a.weight': normal(0, 1e+200) would reach inf while generating")
    assert "beyond F64's largest finite value 1.798e+308" in message
    message = usage_error(str(model), "--all", "--rule", "b.*=constant(1e39)", "-o", str(out))
    assert "beyond float32's (in which F16 values are generated) largest finite value" in message
    # Within float32 but beyond float16: refused as the values are rounded (exit 2, no output).
    message = usage_error(str(model), "--all", "--rule", "b.*=constant(70000)", "-o", str(out))
    assert (
        message
        == "tensor 'b.weight': a generated value (7e+04) does not fit F16 (largest finite 6.55e+04); use a smaller scale or a wider dtype"
    )
    assert not out.exists()


def test_near_the_limit_is_written_and_finite(tmp_path: Path) -> None:
    model = st_file(
        tmp_path / "m.safetensors", [("a.weight", "F32", [64, 64]), ("b.weight", "F64", [64, 64])]
    )
    out = tmp_path / "o.safetensors"
    rules = ("--rule", "a.*=uniform(-1.7e38,1.7e38)", "--rule", "b.*=normal(0,1e150)")
    code, _, stderr = invoke(str(model), "--all", *rules, "-o", str(out), "-q")
    assert code == 0 and stderr == ""
    from safetensors.numpy import load_file

    for values in load_file(str(out)).values():
        assert np.isfinite(values).all()


def test_the_safety_net_catches_non_finite_values_in_the_streaming_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the plan's check switched off, a large tensor (written span by span from the sampler
    threads) is still refused before a non-finite block reaches the output."""
    monkeypatch.setattr("netinit_cli.plan.check_reach", lambda param, init: None, raising=False)
    model = st_file(tmp_path / "m.safetensors", [("big.weight", "F32", [1024, 1024])])
    out = tmp_path / "o.safetensors"
    message = usage_error(str(model), "--all", "--rule", "*=normal(0,1e30)", "-o", str(out))
    assert message.startswith("tensor 'big.weight': a generated value (")
    assert message.endswith(
        "does not fit F32 (largest finite 3.403e+38); use a smaller scale or a wider dtype"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("dtype", ["F32", "F64"])
def test_cast_checked_refuses_non_finite_values_of_every_dtype(dtype: str) -> None:
    values = np.array([1.0, np.inf, 2.0], np.float64 if dtype == "F64" else np.float32)
    with pytest.raises(UsageError, match=rf"tensor 't': a generated value \(inf\) does not fit {dtype}"):
        cast_checked(values, dtype, "t")
    with pytest.raises(UsageError, match=r"\(nan\)"):
        cast_checked(np.full(3, np.nan, values.dtype), dtype, "t")


# ----------------------------------------------------------------------------------------------
# Item 8: names and values from outside are shown with control characters escaped, never as
# markup, and cannot forge an error line; --json keeps them exact.

EVIL = [
    "\x1b]0;pwned\x07.weight",  # sets the window title
    "\x1b[2J\x1b[H.weight",  # clears the screen
    "b\nnetinit: error: forged.weight",
    "[/x].weight",  # closes a Rich tag that was never opened
    "[bold red]loud[/bold red].weight",
    "\u202eevil.weight",  # right-to-left override
    "\x9b2J.weight",  # the 8-bit CSI
]


def control_characters(text: str) -> list[str]:
    return sorted(
        {repr(char) for char in text if (ord(char) < 32 and char != "\n") or 0x7F <= ord(char) < 0xA0}
    )


def test_table_and_inspect_show_names_escaped(tmp_path: Path) -> None:
    model = st_file(tmp_path / "evil.safetensors", [(name, "F32", [2, 2]) for name in EVIL])
    for args in (
        (str(model), "--all", "-o", str(tmp_path / "o.safetensors")),
        ("inspect", str(model)),
        (str(model), "--all", "--dry-run", "--table", "summary"),
    ):
        code, stdout, stderr = invoke(*args, env={"COLUMNS": "400"})  # wide: no name is folded
        assert code == 0, stderr
        assert control_characters(stdout + stderr) == []
        assert not any(line.lstrip().startswith("netinit: error") for line in stdout.splitlines())
        for name in EVIL:
            assert shown(name) in stdout


def test_json_keeps_the_exact_names(tmp_path: Path) -> None:
    model = st_file(tmp_path / "evil.safetensors", [(name, "F32", [2, 2]) for name in EVIL])
    code, stdout, stderr = invoke(str(model), "--all", "--dry-run", "--json")
    assert code == 0, stderr
    assert control_characters(stdout) == []
    assert sorted(entry["name"] for entry in json.loads(stdout)["tensors"]) == sorted(EVIL)


def test_an_error_line_cannot_be_forged_or_move_the_cursor(tmp_path: Path, mlp: Path) -> None:
    taken = tmp_path / "out\x1b[2J\nnetinit: error: forged.safetensors"
    taken.write_bytes(b"")
    code, _, stderr = invoke(str(mlp), "-o", str(taken))
    assert code == 4
    assert one_error_line(stderr) == (
        f"{shown(taken)} already exists; use --force to overwrite it or -o to choose another path"
    )
    assert "\\x1b[2J\\nnetinit: error: forged" in stderr


def test_click_errors_show_arguments_escaped(mlp: Path) -> None:
    code, _, stderr = invoke(str(mlp), "--fan-mode", "\x1b[31mred")
    assert code == 2 and control_characters(stderr) == []
    assert "\\x1b[31mred" in one_error_line(stderr)


def test_markup_in_a_name_does_not_break_the_progress_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the bar shows each tensor's name; '[/x]' once crashed it after the commit."""
    from rich.console import Console

    screen = io.StringIO()
    monkeypatch.setattr(
        cli_module, "_stderr_console", lambda: Console(file=screen, force_terminal=True, width=100)
    )
    # The last tensor is large enough (2 MiB) for the bar to be drawn with its name.
    model = st_file(
        tmp_path / "evil.safetensors", [("\x1b[2J", "F32", [2, 2]), ("[/x].weight", "F32", [512, 1024])]
    )
    code, _, stderr = invoke(str(model), "--all", "-o", str(tmp_path / "o.safetensors"))
    assert code == 0, stderr
    assert "[/x].weight" in screen.getvalue() and "\x1b[2J" not in screen.getvalue()


# ----------------------------------------------------------------------------------------------
# Item 9: malformed values of any size or depth are usage errors, not internal errors.

HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--seed", HUGE), None, "--seed: an integer seed has at most 4,300 digits"),
        (
            ("--seed", "inherited"),
            {"NETINIT_SEED": HUGE},
            "NETINIT_SEED: an integer seed has at most 4,300 digits",
        ),
        (("--seed", "run-\udcff"), None, "--seed 'run-\\udcff': not UTF-8 text (character 5)"),
        (("--method", "normal(" * 3000), None, "nested more than 16 levels deep (character 113)"),
        (("--method", "random", "--weights", "normal(" * 3000), None, "--weights '…"),
        (("--rule", "*=" + "uniform(" * 3000), None, "nested more than 16 levels deep"),
        (("--method", "random", "--weights", "1" + "0" * 400), None, "is not a finite number"),
    ],
)
def test_malformed_values_of_any_size_are_usage_errors(
    mlp: Path, tmp_path: Path, args: tuple[str, ...], env: dict[str, str] | None, expected: str
) -> None:
    message = usage_error(str(mlp), "--all", *args, "-o", str(tmp_path / "o.safetensors"), env=env)
    assert expected in message
    assert len(message) < 600, "a huge value is echoed as an excerpt"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"seed = {HUGE}\n", "not valid TOML: Exceeds the limit (4300 digits)"),
        (f"seed = '{HUGE}'\n", ": seed: an integer seed has at most 4,300 digits"),
        ("seed = " + "[" * 5000 + "]" * 5000 + "\n", "not valid TOML: arrays or tables nested too deeply"),
        ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n", "not valid TOML"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8 text (byte 1)"),
        ("method = 'normal(" + "(" * 3000 + "'\n", "--method"),
    ],
)
def test_malformed_config_files_are_usage_errors(
    tmp_path: Path, mlp: Path, text: str | bytes, expected: str
) -> None:
    message = usage_error(str(mlp), "--config", config(tmp_path, text), "-o", str(tmp_path / "o.safetensors"))
    assert expected in message and len(message) < 600


def test_a_4300_digit_seed_still_works(mlp: Path, tmp_path: Path) -> None:
    code, stdout, stderr = invoke(
        str(mlp), "--all", "--seed", "7" * 4300, "--json", "-o", str(tmp_path / "o.st")
    )
    assert code == 0, stderr
    assert json.loads(stdout)["seed"] == "7" * 4300


# ----------------------------------------------------------------------------------------------
# Item 17: every error is one line, click's own included; the caret diagram only with --debug.


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("MODEL", "--bogus"), "No such option '--bogus'; see 'netinit init --help'"),
        (
            ("MODEL", "--fan-mode", "x"),
            "Invalid value for '--fan-mode': 'x' is not one of 'semantic', 'torch'",
        ),
        (("MODEL", "--table", "wide"), "Invalid value for '--table'"),
        (("MODEL", "--method"), "Option '--method' requires an argument"),
        (("inspect", "MODEL", "--bogus"), "No such option '--bogus'; see 'netinit inspect --help'"),
        (("methods", "extra"), "Got unexpected extra argument (extra)"),
        (
            ("MODEL", "--method", "normal("),
            "--method 'normal(': expected a number or a name (character 8); accepted: ",
        ),
        (("MODEL", "--all", "--weights", "normal(0,,1)"), "--weights does not apply to method kaiming"),
        (
            ("MODEL", "--method", "random", "--weights", "normal(0,,1)"),
            "--weights 'normal(0,,1)': expected a number",
        ),
        (("MODEL", "--rule", "*=normal(0"), "--rule *=normal(0: SPEC must be a method"),
        (("MODEL", "--seed", "-3"), "--seed -3: negative seeds are not accepted"),
    ],
)
def test_every_error_is_one_line(mlp: Path, args: tuple[str, ...], expected: str) -> None:
    code, stdout, stderr = invoke(*(str(mlp) if arg == "MODEL" else arg for arg in args))
    assert code == 2 and stdout == ""
    assert expected in one_error_line(stderr)


def test_debug_adds_the_caret_diagram(mlp: Path) -> None:
    code, _, stderr = invoke(str(mlp), "--method", "kaiming(mode=fan_up)", "--debug")
    assert code == 2
    assert stderr.endswith(
        "netinit: error: --method 'kaiming(mode=fan_up)': mode must be one of fan_in, fan_out, fan_avg "
        "(character 14); accepted: kaiming(key=value, …) with keys distribution, mode, nonlinearity, "
        "negative_slope, gain, forget_bias\n"
        "  kaiming(mode=fan_up)\n"
        "               ^\n"
    )
    assert "Traceback (most recent call last)" in stderr


def test_the_safetensors_header_helper_round_trips(tmp_path: Path) -> None:
    """The test's own model writer (so the name tests above test names, not a broken file)."""
    path = st_file(tmp_path / "m.safetensors", [("w", "F32", [2])])
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert json.loads(path.read_bytes()[8 : 8 + length]) == {
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    }


# ----------------------------------------------------------------------------------------------
# The same hostile values as the hostile-input suite runs them (tests/hostile_cases.py, family
# "cli"): in a worker under RLIMIT_AS = 2 GiB, checking output folder, inputs and every line.

CLI_CASES = [case.name for case in hc.cli_cases()]


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, hc.Outcome]:
    outcomes = hc.run_worker(tmp_path_factory.mktemp("hostile-cli"), names=CLI_CASES)
    return {outcome.name: outcome for outcome in outcomes}


@pytest.mark.parametrize("name", CLI_CASES)
def test_hostile_cli_case(name: str, cli_outcomes: dict[str, hc.Outcome]) -> None:
    assert name in cli_outcomes, f"{name}: the worker never reported it (crashed or hung before it)"
    outcome = cli_outcomes[name]
    assert outcome.problems == [], f"exit {outcome.exit_code}, stderr {outcome.stderr!r}"
