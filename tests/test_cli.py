"""The command line: options, exit codes, messages, and machine-readable output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from netinit_cli import __version__
from netinit_cli.cli import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    for name in ("cnn.onnx", "mlp.onnx", "cnn_noparams.onnx", "mlp.safetensors"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path


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
