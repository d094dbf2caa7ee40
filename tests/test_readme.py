"""Every command the README shows is executed here, so the README cannot drift from the code.

`netinit …` lines in code blocks run through the CLI in a scratch folder where the README's
placeholder files (model.onnx, ckpt.safetensors, manifest.json, …) are copies of the fixtures;
the Python block runs as written; `make run` runs for real.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, ROOT

from netinit_cli.cli import cli

README = (ROOT / "README.md").read_text()

# README placeholder -> fixture it stands for.
PLACEHOLDERS = {
    "model.onnx": "cnn_noparams.onnx",
    "model.safetensors": "mlp.safetensors",
    "ckpt.safetensors": "mlp.safetensors",
    "MODEL": "cnn.onnx",
}
# A tiny transformers config (the `--like config.json` examples need the hf extra).
HF_CONFIG = (
    '{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 96, "hidden_size": 32, '
    '"intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}'
)
MANIFEST = '{"fc1.weight": {"shape": [16, 8], "dtype": "F32"}, "fc1.bias": {"shape": [16], "dtype": "BF16"}}'


def code_blocks() -> list[str]:
    fenced = re.findall(r"```(?:\w+)?\n(.*?)```", README, flags=re.S)
    indented = re.findall(r"(?:^|\n\n)((?:    .*\n)+)", README)
    return fenced + [re.sub(r"^    ", "", block, flags=re.M) for block in indented]


def netinit_commands() -> list[str]:
    commands = []
    for block in code_blocks():
        for line in block.splitlines():
            line = line.strip()
            line = re.sub(r"^NETINIT_SEED=\S+ ", "", line)  # the test sets NETINIT_SEED itself
            if line.startswith("netinit ") and "[" not in line.split("#")[0]:
                commands.append(line.split("  #")[0].strip())
    return commands


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def scratch(tmp_path: Path) -> Path:
    for placeholder, fixture in PLACEHOLDERS.items():
        shutil.copy(FIXTURES / fixture, tmp_path / placeholder)
    (tmp_path / "manifest.json").write_text(MANIFEST)
    (tmp_path / "config.json").write_text(HF_CONFIG)
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    (tmp_path / "build").mkdir()
    return tmp_path


def test_readme_has_commands() -> None:
    assert len(netinit_commands()) >= 8
    assert python_blocks()


@pytest.mark.parametrize("command", netinit_commands())
def test_readme_command_runs(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "config.json" in command:
        pytest.importorskip("transformers")
    monkeypatch.chdir(scratch(tmp_path))
    args = shlex.split(command)[1:]
    if "-o" not in args and args and args[0] not in ("inspect", "methods") and "--dry-run" not in args:
        args += ["--force"]
    result = CliRunner().invoke(cli, args, env={"NETINIT_SEED": "7"})
    assert result.exit_code == 0, f"{command}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("block", python_blocks())
def test_readme_python_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch(tmp_path))
    exec(compile(block, "README.md", "exec"), {})


def test_shell_completion_script() -> None:
    result = CliRunner().invoke(cli, [], prog_name="netinit", env={"_NETINIT_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_netinit_completion" in result.stdout and "complete " in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run(tmp_path: Path) -> None:
    # The README's first command, in this checkout (its .venv already exists when tests run).
    env = {**os.environ, "MAKEFLAGS": ""}
    completed = subprocess.run(
        ["make", "-s", "run"], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "netinit initialized fixtures/cnn.onnx" in completed.stdout
    assert "13 filled" in completed.stdout
