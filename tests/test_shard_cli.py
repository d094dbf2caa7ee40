"""``--shard K/N`` end to end, through the real CLI and API: the union of the workers' files is the
single run's bundle, for a new bundle from a manifest, ``--all`` of a bundle and a missing-fill of
a bundle (``--like``); in any order, concurrently as dask tasks, after a SIGKILL; bad input.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask_workers as dw
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from netinit_cli import initialize
from netinit_cli.cli import cli
from netinit_cli.shard import assign

ROOT = Path(__file__).resolve().parents[1]
SHARD_ENV = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MAX",
    "JOB_COMPLETION_INDEX",
    "NETINIT_SHARD_INDEX",
    "NETINIT_SHARD_COUNT",
    "CI_NODE_INDEX",
    "CI_NODE_TOTAL",
)

# Sizes and dtypes differ so the byte balance has work to do: 10 files at --max-shard-size 20KB.
MANIFEST: dict[str, Any] = {"embed.weight": {"shape": [100, 64]}}
for _i in range(5):
    _half = "BF16" if _i % 2 else "F16"
    MANIFEST[f"layer.{_i}.q.weight"] = {"shape": [64, 64], "dtype": _half}
    MANIFEST[f"layer.{_i}.q.bias"] = {"shape": [64], "dtype": _half}
    MANIFEST[f"layer.{_i}.mlp.weight"] = {"shape": [32 * (_i + 1), 64]}
    MANIFEST[f"layer.{_i}.mlp.bias"] = {"shape": [32 * (_i + 1)]}
MANIFEST["head.weight"] = {"shape": [300, 64]}
MANIFEST["head.bias"] = {"shape": [300]}
SPLIT = ["--max-shard-size", "20KB"]
COUNTS = (1, 2, 3, 5, 8)


def netinit(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The real CLI in-process: exit code, stdout, stderr (no scheduler variables unless given)."""
    cleared: dict[str, str | None] = dict.fromkeys(SHARD_ENV)
    result = CliRunner().invoke(cli, [str(arg) for arg in args], env={**cleared, **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def checked(*args: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    code, out, err = netinit(*args, "--json", env=env)
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The manifest, a bundle made from it, and a bundle that lacks three of its tensors."""
    root = tmp_path_factory.mktemp("inputs")
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    partial = root / "partial.json"
    partial.write_text(json.dumps({k: v for k, v in MANIFEST.items() if not k.startswith("layer.1")}))
    for name, template in (("bundle", manifest), ("partial", partial)):
        (root / name).mkdir()
        checked("--like", template, "-o", root / name / "m.safetensors.index.json", *SPLIT, "--seed", "3")
    return {
        "manifest": manifest,
        "bundle": root / "bundle" / "m.safetensors.index.json",
        "partial": root / "partial" / "m.safetensors.index.json",
    }


def run_args(kind: str, inputs: dict[str, Path], out: Path) -> list[str | Path]:
    """The options of one run: a new bundle, --all of a bundle, or a missing-fill of a bundle."""
    index = out / "out.safetensors.index.json"
    if kind == "manifest":
        return ["--like", inputs["manifest"], "-o", index, *SPLIT, "--seed", "7"]
    if kind == "reinit":
        return [inputs["bundle"], "--all", "-o", index, "--seed", "7", "--method", "xavier"]
    return [inputs["partial"], "--like", inputs["manifest"], "-o", index, "--seed", "7"]


KINDS = ("manifest", "reinit", "missing")


@pytest.fixture(scope="module")
def singles(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Each kind's single run (no --shard)."""
    result = {}
    for kind in KINDS:
        out = tmp_path_factory.mktemp(f"single-{kind}")
        checked(*run_args(kind, inputs, out))
        result[kind] = files_of(out)
    assert len(result["manifest"]) == 11 and len(result["reinit"]) == 11  # 10 files and the index
    assert len(result["missing"]) == 9  # the partial bundle's 8 files and the index
    return result


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", COUNTS)
def test_union_of_workers_is_the_single_run(
    kind: str, n: int, inputs: dict[str, Path], singles: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    single = singles[kind]
    index_name = "out.safetensors.index.json"
    shards = {name: len(data) for name, data in single.items() if name != index_name}
    order = list(range(n))
    random.Random(n).shuffle(order)
    for position, k in enumerate(order):
        report = checked(*run_args(kind, inputs, tmp_path), "--shard", f"{k}/{n}")
        assert report["shard"] == {"index": k, "count": n}
        last = position == n - 1
        assert (tmp_path / index_name).exists() == last
        assert (str(tmp_path / index_name) in report["files"]) == last
        # bytes written by this worker, from its report: at most total/N + one file
        assert report["bytes_written"] == sum(
            shards[Path(f).name] for f in report["files"] if Path(f).name in shards
        )
        assert report["bytes_written"] * n <= sum(shards.values()) + n * max(shards.values())
    assert files_of(tmp_path) == single
    again = checked(*run_args(kind, inputs, tmp_path), "--shard", f"{order[0]}/{n}")  # a rerun: nothing to do
    assert again["bytes_written"] == 0 and files_of(tmp_path) == single


def shard_worker(kind: str, inputs: dict[str, Path], out: str, k: int, n: int) -> dict[str, Any]:
    """One worker through the API, run as a dask task in another process."""
    args = run_args(kind, inputs, Path(out))
    model = None if kind == "manifest" else args[0]
    options: dict[str, Any] = {
        "manifest": {"like": inputs["manifest"], "max_shard_size": "20KB"},
        "reinit": {"all": True, "method": "xavier"},
        "missing": {"like": inputs["manifest"]},
    }[kind]
    report = initialize(model, Path(out) / "out.safetensors.index.json", seed=7, shard=(k, n), **options)
    return {"pid": os.getpid(), "bytes": report.bytes_written, "files": [str(p) for p in report.files]}


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with dw.local_cluster() as client:
        yield client


@pytest.mark.parametrize("kind", KINDS)
def test_workers_as_concurrent_dask_tasks(
    kind: str,
    inputs: dict[str, Path],
    singles: dict[str, dict[str, bytes]],
    dask_client: Any,
    tmp_path: Path,
) -> None:
    pids: set[int] = set()
    for n in (3, 8):
        out = tmp_path / f"n{n}"
        out.mkdir()
        calls = [(kind, inputs, str(out), k, n) for k in reversed(range(n))]
        results = dw.run_tasks(dask_client, shard_worker, calls)
        pids.update(result["pid"] for result in results)
        assert files_of(out) == singles[kind], n
        assert sum(result["bytes"] for result in results) == sum(
            len(data) for name, data in singles[kind].items() if not name.endswith(".json")
        )
    assert len(pids) == 2 and os.getpid() not in pids


def test_one_worker_missing_leaves_no_index_and_complete_shards(
    inputs: dict[str, Path], singles: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    for k in (0, 2):
        checked(*run_args("reinit", inputs, tmp_path), "--shard", f"{k}/3")
    present = files_of(tmp_path)
    assert "out.safetensors.index.json" not in present
    assert 0 < len(present) < len(singles["reinit"]) - 1
    assert not [name for name in present if name.endswith(".tmp")]
    for name, data in present.items():
        assert data == singles["reinit"][name]
        assert load_file(str(tmp_path / name))  # the safetensors package reads it whole


BIG = {f"block.{i}.weight": {"shape": [2048, 2048]} for i in range(12)}  # 16 MiB each, one per file


def test_worker_killed_with_sigkill_and_rerun_completes_the_same_bytes(tmp_path: Path) -> None:
    manifest = tmp_path / "big.json"
    manifest.write_text(json.dumps(BIG))
    single, out = tmp_path / "single", tmp_path / "out"
    single.mkdir()
    out.mkdir()
    args = ["--like", str(manifest), "--max-shard-size", "17MB", "--seed", "5", "-q"]
    checked(*args, "-o", single / "b.safetensors.index.json")
    checked(*args, "-o", out / "b.safetensors.index.json", "--shard", "0/2")
    names = sorted(name for name in os.listdir(single) if not name.endswith(".json"))
    mine = [names[i] for i in assign([(single / name).stat().st_size for name in names], 2)[1]]
    command = [sys.executable, "-m", "netinit_cli", *args, "-o", str(out / "b.safetensors.index.json")]
    worker = subprocess.Popen([*command, "--shard", "1/2"])
    deadline = time.monotonic() + 60
    while not (out / mine[0]).exists():  # its first file is committed: kill it during the next
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert not (out / "b.safetensors.index.json").exists()
    done = [name for name in mine if (out / name).exists()]
    assert 1 <= len(done) < len(mine)
    for name in done:  # what was committed is complete
        assert (out / name).read_bytes() == (single / name).read_bytes()
    rerun = checked(*args, "-o", out / "b.safetensors.index.json", "--shard", "1/2")
    assert sorted(Path(f).name for f in rerun["files"]) == sorted(
        [*set(mine) - set(done), "b.safetensors.index.json"]
    )
    assert files_of(out) == files_of(single)  # the killed run's temporary file is gone too


# -- bad input -----------------------------------------------------------------------------------

SHARD_FIX = "shards are written for a bundle (MODEL a *.safetensors.index.json, or --like TEMPLATE -o NAME.safetensors.index.json)"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--shard", "3/3"], 2, "--shard 3/3: worker 3 of 3 is out of range; K must be 0 to 2"),
        (["--shard", "0/0"], 2, "--shard 0/0: N must be at least 1"),
        (["--shard", "two"], 2, "--shard 'two': expected K/N (0 ≤ K < N), auto, or auto/N"),
        (["--shard", "auto/4"], 2, "--shard auto/4: no worker index in the environment (looked for"),
        (["--shard", "0/2", "--seed", "automatic"], 2, "--shard 0/2 with --seed automatic: each worker"),
        (["--max-shard-size", "5XB"], 2, "--max-shard-size '5XB': give a positive size in bytes or with KB"),
        (["--max-shard-size", "0"], 2, "--max-shard-size '0': give a positive size"),
    ],
)
def test_bad_shard_options(
    args: list[str], code: int, message: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    exit_code, _, err = netinit(
        "--like", inputs["manifest"], "-o", tmp_path / "o.safetensors.index.json", *args
    )
    assert exit_code == code
    assert err.startswith(f"netinit: error: {message}") and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_shard_needs_a_sharded_output(inputs: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        (
            ["--like", inputs["manifest"], "-o", tmp_path / "one.safetensors", "--shard", "0/2"],
            "one.safetensors",
        ),
        (
            [
                ROOT / "fixtures" / "mlp.safetensors",
                "--all",
                "-o",
                tmp_path / "m.safetensors",
                "--shard",
                "1/2",
            ],
            "m.safetensors",
        ),
    ]
    for args, name in cases:
        assert netinit(*args) == (
            2,
            "",
            f"netinit: error: --shard {args[-1]}: the output {name} is one file; {SHARD_FIX}\n",
        )
    code, _, err = netinit(ROOT / "fixtures" / "mlp.onnx", "-o", tmp_path / "m.onnx", "--shard", "0/2")
    assert (code, err) == (
        2,
        "netinit: error: --shard 0/2 writes a sharded safetensors bundle; mlp.onnx is onnx, written as one model\n",
    )
    copy = tmp_path / "in"
    copy.mkdir()
    for path in inputs["bundle"].parent.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    code, _, err = netinit(copy / "m.safetensors.index.json", "--all", "--in-place", "--shard", "0/2")
    assert (code, err) == (
        2,
        "netinit: error: --shard 0/2 and --in-place are exclusive: give the new bundle's index with -o\n",
    )
    code, _, err = netinit(
        copy / "m.safetensors.index.json", "--all", "-o", tmp_path / "x.safetensors.index.json", *SPLIT
    )
    assert (code, err) == (
        2,
        "netinit: error: --max-shard-size splits a new checkpoint (--like TEMPLATE -o NAME.safetensors.index.json); "
        "m.safetensors.index.json keeps its own split\n",
    )
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_workers_with_other_options_stop_before_writing(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = run_args("manifest", inputs, out)
    checked(*args, "--shard", "0/3")
    before = files_of(out)
    first = out / sorted(before)[0]
    kaiming = "kaiming(distribution=normal, mode=fan_in, nonlinearity=relu)"
    for other, key, there, here in [
        (["--seed", "8"], "netinit.seed", "7", "8"),
        (
            ["--method", "xavier"],
            "netinit.method",
            kaiming,
            "xavier(distribution=normal, mode=fan_avg, nonlinearity=linear)",
        ),
    ]:
        code, _, err = netinit(*args, *other, "--shard", "1/3")
        assert code == 2
        assert err == (
            f"netinit: error: {first} was written with {key}={there}, this worker has {key}={here}: "
            "give every worker the same options and versions, or delete the file if it is from another run\n"
        )
        assert files_of(out) == before  # nothing written
    # another split is another plan: the digest of the layout differs
    code, _, err = netinit(*args[:4], "--max-shard-size", "30KB", "--seed", "7", "--shard", "1/3")
    assert code == 2 and re.search(
        r"was written with netinit\.plan=[0-9a-f]{64}, this worker has netinit\.plan=", err
    )
    # --force: each worker replaces its own files of the other run; the old index is removed first
    for k in (1, 2):
        checked(*args, "--shard", f"{k}/3")
    assert (out / "out.safetensors.index.json").exists()
    code, _, err = netinit(*args[:-1], "9", "--shard", "0/3")
    assert (code, err) == (
        2,
        f"netinit: error: {out / 'out-00001-of-00010.safetensors'} was written with netinit.seed=7, "
        "this worker has netinit.seed=9: "
        "give every worker the same options and versions, or delete the file if it is from another run\n",
    )
    checked(*args[:-1], "9", "--shard", "0/3", "--force")
    assert not (out / "out.safetensors.index.json").exists()
    for k in (2, 1):
        checked(*args[:-1], "9", "--shard", f"{k}/3", "--force")
    single = tmp_path / "single"
    single.mkdir()
    checked(*run_args("manifest", inputs, single)[:-1], "9")
    assert files_of(out) == files_of(single)


# -- examples/ -----------------------------------------------------------------------------------


def example_commands() -> dict[str, list[str]]:
    """The netinit command line of each example file."""
    commands = {}
    slurm = (ROOT / "examples" / "slurm-array.sh").read_text()
    commands["slurm"] = shlex.split(next(line for line in slurm.splitlines() if line.startswith("netinit ")))
    k8s = (ROOT / "examples" / "k8s-indexed-job.yaml").read_text()
    match = re.search(r"command: (\[.*?\])", k8s, re.DOTALL)
    assert match is not None
    commands["k8s"] = json.loads(match[1])
    actions = (ROOT / "examples" / "github-actions-matrix.yml").read_text()
    runs = [
        part.strip() for line in actions.splitlines() for part in line.split("&&") if "netinit --like" in part
    ]
    commands["github"], commands["github-index"] = (
        shlex.split(run.removeprefix("- run:").strip()) for run in runs
    )
    return commands


def in_folder(folder: Path, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run an example's command in ``folder``; the small test template is split with SPLIT (under
    the example's 5 GB it would be one file)."""
    assert command[0] == "netinit"
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return checked(*command[1:], *SPLIT, env=env)
    finally:
        os.chdir(cwd)


def test_examples_command_lines(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Each example's command runs as written, every worker of it, and gives the single run's output
    (the Slurm example makes a model folder from a transformers config, the others a bundle from a
    manifest)."""
    commands = example_commands()

    def folder_for(name: str, where: Path) -> Path:
        if name == "slurm":  # workers create ckpt/ themselves
            pytest.importorskip("transformers")
            from test_shard_hf import write_config

            write_config(where)
        else:
            (where / "ckpt").mkdir(parents=True)
            (where / "manifest.json").write_bytes(inputs["manifest"].read_bytes())
        return where

    slurm = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MAX": "7"}
    runs = {
        "slurm": [{**slurm, "SLURM_ARRAY_TASK_ID": str(k)} for k in range(8)],
        "k8s": [{"JOB_COMPLETION_INDEX": str(k)} for k in range(8)],
        "github": [{"NETINIT_SHARD_INDEX": str(k), "NETINIT_SHARD_COUNT": "4"} for k in range(4)],
    }
    for name, envs in runs.items():
        if name == "k8s":  # the manifest is mounted at /config, the volume at /ckpt
            command = [c.replace("/config/", "").replace("/ckpt/", "ckpt/") for c in commands[name]]
        else:
            command = commands[name]
        at = command.index("--shard")
        single = folder_for(name, tmp_path / f"single-{name}")
        in_folder(single, command[:at] + command[at + 2 :], {})
        expected = files_of(single / "ckpt")
        folder = folder_for(name, tmp_path / name)
        assert in_folder(folder, [*command, "--dry-run"], envs[0])["dry_run"]
        if name != "github":
            for env in reversed(envs):
                in_folder(folder, command, env)
        else:  # separate runners, each with its own folder; the index job gathers their shards
            for k, env in enumerate(envs):
                runner = folder_for(name, tmp_path / f"runner{k}")
                in_folder(runner, command, env)
                assert not (runner / "ckpt" / "model.safetensors.index.json").exists()
                for path in (runner / "ckpt").iterdir():
                    (folder / "ckpt" / path.name).write_bytes(path.read_bytes())
            assert in_folder(folder, commands["github-index"], {})["bytes_written"] == 0
        assert files_of(folder / "ckpt") == expected, name
        assert len(expected) > 4, name  # split into several files
