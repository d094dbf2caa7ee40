"""The command line: options, exit codes, messages, and machine-readable output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import copy_fixtures

from netinit_cli import __version__
from netinit_cli.cli import cli


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Only four of the bundled fixtures (test_in_place_rewrites_the_model lists the folder)."""
    return copy_fixtures(tmp_path, ("cnn.onnx", "mlp.onnx", "cnn_noparams.onnx", "mlp.safetensors"))


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_main_command_prints_table_and_writes(work: Path) -> None:
    out = work / "out.onnx"
    code, stdout, stderr = invoke(str(work / "cnn.onnx"), "--method", "orthogonal", "--all", "-o", str(out))
    assert code == 0, stderr
    assert out.exists()
    assert "conv1.weight" in stdout and "filled" in stdout and "seed 1234" in stdout
    assert "\x1b[" not in stdout, "no control codes when stdout is not a terminal"


def test_default_output_name_and_refusal_to_overwrite(work: Path) -> None:
    code, _, stderr = invoke(str(work / "cnn_noparams.onnx"))
    assert code == 0, stderr
    target = work / "cnn_noparams.init.onnx"
    assert target.exists()
    before = target.read_bytes()
    code, _, stderr = invoke(str(work / "cnn_noparams.onnx"))
    assert code == 4
    assert stderr == (
        f"netinit: error: {target} already exists; use --force to overwrite it or -o to choose another path\n"
    )
    assert target.read_bytes() == before
    code, _, _ = invoke(str(work / "cnn_noparams.onnx"), "--force", "--seed", "5")
    assert code == 0 and target.read_bytes() != before


def test_nothing_missing_suggests_all(work: Path) -> None:
    code, stdout, _ = invoke(str(work / "mlp.onnx"), "-o", str(work / "o.onnx"))
    assert code == 0
    assert "use --all to re-initialize" in stdout


def test_bad_method_is_a_usage_error(work: Path) -> None:
    code, stdout, stderr = invoke(str(work / "mlp.onnx"), "--method", "kaiminq", "-o", str(work / "o.onnx"))
    assert code == 2
    assert stderr.startswith("netinit: error: ") and "kaiminq" in stderr
    assert "Traceback" not in stderr + stdout
    assert not (work / "o.onnx").exists()


def test_unreadable_input_is_exit_3(work: Path) -> None:
    bad = work / "garbage.onnx"
    bad.write_bytes(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" * 3)
    code, _, stderr = invoke(str(bad), "-o", str(work / "o.onnx"))
    assert code == 3, stderr
    assert stderr.count("\n") == 1 and "garbage.onnx" in stderr
    assert not (work / "o.onnx").exists()
    code, _, stderr = invoke(str(work / "missing.onnx"))
    assert code == 3 and "no such file" in stderr


def test_dry_run_writes_nothing_and_json_is_parseable(work: Path) -> None:
    code, stdout, _ = invoke(str(work / "cnn.onnx"), "--all", "--dry-run", "--json")
    assert code == 0
    document = json.loads(stdout)
    assert document["dry_run"] is True and document["output"] is None
    assert document["seed"] == "1234" and document["scope"] == "all"
    names = {t["name"]: t for t in document["tensors"]}
    assert names["conv1.weight"]["action"] == "filled"
    assert names["conv1.weight"]["fan_in"] == 27
    assert not list(work.glob("*.init.*"))


def test_report_file_and_quiet(work: Path) -> None:
    report = work / "report.json"
    code, stdout, stderr = invoke(
        str(work / "mlp.onnx"), "--all", "-q", "--report", str(report), "-o", str(work / "o.onnx")
    )
    assert code == 0 and stdout == "" and stderr == ""
    document = json.loads(report.read_text())
    filled = [t for t in document["tensors"] if t["action"] == "filled"]
    assert len(filled) == 4 and all(t["std"] is not None for t in filled)


def test_seed_forms(work: Path) -> None:
    out = work / "o.onnx"
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--all", "--seed", "automatic", "-o", str(out), "-q")
    assert code == 0
    code, stdout, stderr = invoke(
        str(work / "mlp.onnx"), "--all", "--seed", "automatic", "-o", str(out), "--force"
    )
    assert code == 0 and "(automatic); repeat this run with --seed" in stderr
    code, _, stderr = invoke(
        str(work / "mlp.onnx"), "--all", "--seed", "inherited", "-o", str(out), "--force"
    )
    assert code == 2 and "NETINIT_SEED" in stderr
    code, stdout, _ = invoke(
        str(work / "mlp.onnx"),
        "--all",
        "--seed",
        "inherited",
        "-o",
        str(out),
        "--force",
        env={"NETINIT_SEED": "77"},
    )
    assert code == 0 and "seed 77 (inherited)" in stdout


def test_version_help_and_methods() -> None:
    code, stdout, _ = invoke("--version")
    assert code == 0 and __version__ in stdout
    code, stdout, _ = invoke("--help")
    assert code == 0 and "Examples:" in stdout and "Exit codes:" in stdout
    code, stdout, _ = invoke("methods")
    assert code == 0 and all(m in stdout for m in ("kaiming", "xavier", "orthogonal", "random", "identity"))


def test_inspect_shows_reasons(work: Path) -> None:
    code, stdout, _ = invoke("inspect", str(work / "cnn.onnx"), "--json")
    assert code == 0
    tensors = {t["name"]: t for t in json.loads(stdout)["tensors"]}
    assert tensors["bn1.running_mean"]["role"] == "running_mean"
    assert "BatchNormalization" in tensors["bn1.running_mean"]["reason"]
    assert not list(work.glob("*.init.*"))


def test_python_dash_m_works(work: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "netinit_cli",
            str(work / "mlp.onnx"),
            "--all",
            "-o",
            str(work / "m.onnx"),
            "-q",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (work / "m.onnx").exists()


def test_exit_5_for_a_planted_symlink_destination(work: Path) -> None:
    target = work / "elsewhere.onnx"
    target.write_bytes(b"not yours")
    link = work / "out.onnx"
    link.symlink_to(target)
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--all", "-o", str(link), "--force")
    assert code == 5
    assert stderr == (
        f"netinit: error: {link}: the output path is a symbolic link; refusing to write through it "
        "(remove the link or choose another -o)\n"
    )
    assert target.read_bytes() == b"not yours"


def test_exit_1_for_an_internal_error_and_debug_shows_the_traceback(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import netinit_cli.api

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(netinit_cli.api, "make_plan", broken)
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--all", "-o", str(work / "o.onnx"))
    assert code == 1
    assert stderr == "netinit: internal error: RuntimeError: boom (rerun with --debug and report it)\n"
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--all", "-o", str(work / "o.onnx"), "--debug")
    assert (
        code == 1 and "Traceback (most recent call last)" in stderr and 'raise RuntimeError("boom")' in stderr
    )
    assert not (work / "o.onnx").exists()


def test_in_place_and_output_are_exclusive(work: Path) -> None:
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--in-place", "-o", str(work / "x.onnx"))
    assert code == 2
    assert stderr == "netinit: error: --in-place and -o are exclusive: --in-place writes back to MODEL\n"
    code, _, stderr = invoke(str(work / "mlp.onnx"), "-o", str(work / "mlp.onnx"), "--force")
    assert code == 2 and "is the input itself; use --in-place" in stderr


def test_in_place_rewrites_the_model(work: Path) -> None:
    before = (work / "mlp.onnx").read_bytes()
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--in-place", "--all", "-q")
    assert code == 0, stderr
    assert (work / "mlp.onnx").read_bytes() != before
    assert sorted(p.name for p in work.iterdir()) == [
        "cnn.onnx",
        "cnn_noparams.onnx",
        "mlp.onnx",
        "mlp.safetensors",
    ]


@pytest.mark.parametrize("model", ["mlp.onnx", "mlp.safetensors"])
def test_no_fsync_skips_every_fsync_and_writes_the_same_bytes(
    work: Path, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    suffix = Path(model).suffix
    code, _, stderr = invoke(str(work / model), "--all", "-q", "-o", str(work / f"durable{suffix}"))
    assert code == 0, stderr
    assert len(synced) >= 2, "the output and its folder are fsynced by default"
    synced.clear()
    code, _, stderr = invoke(
        str(work / model), "--all", "-q", "--no-fsync", "-o", str(work / f"fast{suffix}")
    )
    assert code == 0, stderr
    assert synced == []
    assert (work / f"fast{suffix}").read_bytes() == (work / f"durable{suffix}").read_bytes()


def test_in_place_refuses_no_fsync(work: Path) -> None:
    before = (work / "mlp.onnx").read_bytes()
    code, _, stderr = invoke(str(work / "mlp.onnx"), "--in-place", "--all", "--no-fsync")
    assert code == 2
    assert stderr == (
        "netinit: error: --in-place needs fsync: without it a power loss could leave MODEL empty; "
        "drop --no-fsync or write to -o instead\n"
    )
    assert (work / "mlp.onnx").read_bytes() == before


def _json_run(work: Path, *extra: str) -> dict[str, Any]:
    code, stdout, stderr = invoke(str(work / "cnn.onnx"), "--all", "--dry-run", "--json", *extra)
    assert code == 0, stderr
    return {t["name"]: t for t in json.loads(stdout)["tensors"]}


@pytest.mark.parametrize(
    ("options", "tensor", "init_prefix", "expected_std"),
    [
        ((), "fc.weight", "kaiming normal", (2 / 8) ** 0.5),
        (("--distribution", "uniform"), "fc.weight", "kaiming uniform", (2 / 8) ** 0.5),
        (("--mode", "fan_out"), "fc.weight", "kaiming normal", (2 / 10) ** 0.5),
        (("--nonlinearity", "tanh"), "fc.weight", "kaiming normal", (5 / 3) / 8**0.5),
        (
            ("--nonlinearity", "leaky_relu", "--negative-slope", "0.2"),
            "fc.weight",
            "kaiming",
            (2 / 1.04 / 8) ** 0.5,
        ),
        (("--gain", "3"), "fc.weight", "kaiming", 3 / 8**0.5),
        (("--method", "xavier"), "fc.weight", "xavier normal", (2 / 18) ** 0.5),
        (("--method", "random", "--weights", "0.05"), "fc.weight", "random normal(0, 0.05)", 0.05),
        (("--method", "random", "--biases", "uniform(-1,1)"), "fc.bias", "uniform(-1, 1)", 1 / 3**0.5),
        (("--rule", "fc.*=constant(0.5)"), "fc.weight", "constant(0.5)", 0.0),
        (("--fan-mode", "torch", "--method", "xavier"), "conv2.weight", "xavier", (2 / (36 + 72)) ** 0.5),
    ],
)
def test_method_options_reach_the_plan(
    work: Path, options: tuple[str, ...], tensor: str, init_prefix: str, expected_std: float
) -> None:
    entry = _json_run(work, *options)[tensor]
    assert entry["action"] == "filled"
    assert entry["init"].startswith(init_prefix), entry["init"]
    assert entry["expected_std"] == pytest.approx(expected_std, rel=1e-6)


def test_identity_noise_option(work: Path) -> None:
    entry = _json_run(work, "--method", "identity", "--distribution", "none")["fc.weight"]
    assert entry["init"].startswith("identity") and "noise" not in entry["init"].replace("no noise", "")


def test_forget_bias_option_needs_an_lstm_but_parses(work: Path) -> None:
    code, _, stderr = invoke(str(work / "cnn.onnx"), "--all", "--dry-run", "--forget-bias", "x")
    assert code == 2 and "forget_bias" in stderr


def test_option_that_does_not_belong_to_the_method(work: Path) -> None:
    code, _, stderr = invoke(str(work / "cnn.onnx"), "--all", "--dry-run", "--weights", "0.1")
    assert code == 2 and "--weights" in stderr and "random" in stderr


def test_config_option(work: Path) -> None:
    config = work / "netinit.toml"
    config.write_text('method = "orthogonal"\n[rules]\n"fc.*" = "xavier"\n')
    tensors = _json_run(work, "--config", str(config))
    assert tensors["conv1.weight"]["init"].startswith("orthogonal")
    assert tensors["fc.weight"]["rule"].startswith("fc.*=xavier")


@pytest.mark.parametrize(
    ("mode", "marker"), [("full", "conv1.weight"), ("summary", "grouped"), ("none", "13 filled")]
)
def test_table_option(work: Path, mode: str, marker: str) -> None:
    code, stdout, _ = invoke(
        str(work / "cnn.onnx"), "--all", "-o", str(work / f"{mode}.onnx"), "--table", mode
    )
    assert code == 0 and marker in stdout
    if mode == "none":
        assert "conv1.weight" not in stdout


def test_like_option_creates_missing_tensors(work: Path) -> None:
    manifest = work / "manifest.json"
    manifest.write_text(
        '{"fc1.weight": {"shape": [16, 8]}, "extra.weight": {"shape": [3, 8], "dtype": "BF16"}}'
    )
    code, stdout, stderr = invoke(
        str(work / "mlp.safetensors"), "--like", str(manifest), "-o", str(work / "o.safetensors")
    )
    assert code == 0, stderr
    from safetensors import safe_open

    with safe_open(str(work / "o.safetensors"), "np") as handle:
        assert handle.get_slice("extra.weight").get_dtype() == "BF16"
        assert "fc1.bias" in set(handle.keys())
    assert "extra.weight" in stdout


def _run_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run netinit with stdout and stderr on a pseudo-terminal; its exit code and what it drew."""
    import os
    import pty
    import select

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "netinit_cli", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    drawn = b""
    while select.select([leader], [], [], 60)[0]:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return process.wait(timeout=60), drawn.decode("utf-8", "replace")


def test_progress_bar_is_drawn_on_a_terminal_and_cleared(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {f"l{i}.weight": np.zeros((1024, 1024), np.float32) for i in range(16)},
        str(tmp_path / "m.safetensors"),
    )
    out = tmp_path / "o.safetensors"
    code, drawn = _run_on_a_terminal(
        str(tmp_path / "m.safetensors"), "--all", "-o", str(out), "--table", "none"
    )
    assert code == 0, drawn
    assert "generating" in drawn and "0.0/67.1 MB" in drawn  # the bar, by bytes, before the first tensor
    assert "67.1/67.1 MB" in drawn  # and complete at the end
    assert "\x1b[?25l" in drawn and "\x1b[?25h" in drawn  # the cursor is hidden, then shown again
    footer = drawn.rindex("16 filled, 0 kept, 0 constant")
    assert drawn.rindex("\x1b[2K") < footer  # the bar's line is erased before the footer
    assert out.exists()
    code, drawn = _run_on_a_terminal(
        str(tmp_path / "m.safetensors"), "--all", "-o", str(out), "--force", "-q"
    )
    assert code == 0 and drawn == ""


def test_a_rule_on_a_scalar_tensor_fills_it(tmp_path: Path) -> None:
    """CLIP's logit_scale is 0-d: a rule fills it (it used to fail as an internal error)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    save_file(
        {"logit_scale": np.array(2.0, np.float32), "fc.weight": np.zeros((3, 4), np.float32)},
        str(tmp_path / "m.safetensors"),
    )
    out = tmp_path / "o.safetensors"
    code, _, stderr = invoke(
        str(tmp_path / "m.safetensors"), "--all", "--rule", "logit_scale=constant(2.6592)", "-o", str(out)
    )
    assert code == 0, stderr
    filled = load_file(str(out))["logit_scale"]
    assert filled.shape == () and filled == np.float32(2.6592)
