"""``--shard K/N`` for a transformers config template (``netinit --like config.json -o OUTDIR``):
the workers share OUTDIR, each writes its files of save_pretrained's split, and the last one to
finish writes config.json, generation_config.json and then the index.  The union of the workers'
files is the single run's folder, byte for byte, and transformers loads it; in any order,
concurrently as dask tasks, after a SIGKILL; a missing worker, mismatched workers, a foreign folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask_workers as dw
import pytest
from safetensors.numpy import load_file
from test_shard_cli import SHARD_ENV, checked, files_of, netinit

from netinit_cli import initialize
from netinit_cli.shard import assign

transformers = pytest.importorskip("transformers")

INDEX = "model.safetensors.index.json"
SMALL = ("config.json", "generation_config.json", INDEX)
COUNTS = (1, 2, 3, 5, 8)
# A tiny LLaMA: 39 tensors, 8 files of about 19 KB under --max-shard-size 20KB.
LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
SPLIT = ("--max-shard-size", "20KB")


def write_config(folder: Path, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**LLAMA, **changes}))
    return folder / "config.json"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def single(config: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The single run's folder (no --shard)."""
    out = tmp_path_factory.mktemp("single") / "out"
    checked("--like", config, "-o", out, *SPLIT, "--seed", "7")
    files = files_of(out)
    assert len(files) == 11 and set(SMALL) <= set(files)  # 8 weight files
    return files


def weights(files: dict[str, bytes]) -> dict[str, int]:
    return {name: len(data) for name, data in files.items() if name.endswith(".safetensors")}


def loads_with_empty_info(folder: Path) -> None:
    _, info = transformers.LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert {key: list(value) for key, value in info.items() if value} == {}


@pytest.mark.parametrize("n", COUNTS)
def test_union_of_workers_is_the_single_run(
    n: int, config: Path, single: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "out"  # created by the first worker
    sizes = weights(single)
    order = list(range(n))
    random.Random(n).shuffle(order)
    for position, k in enumerate(order):
        report = checked("--like", config, "-o", out, *SPLIT, "--seed", "7", "--shard", f"{k}/{n}")
        assert report["shard"] == {"index": k, "count": n}
        last = position == n - 1
        for name in SMALL:  # published together, by the last worker, the index last
            assert (out / name).exists() == last, name
        mine = [Path(f).name for f in report["files"] if Path(f).name in sizes]
        assert report["bytes_written"] == sum(sizes[name] for name in mine)
        assert report["bytes_written"] <= sum(sizes.values()) / n + max(sizes.values())
    assert files_of(out) == single
    loads_with_empty_info(out)
    again = checked("--like", config, "-o", out, *SPLIT, "--seed", "7", "--shard", f"{order[0]}/{n}")
    assert again["bytes_written"] == 0 and files_of(out) == single


def shard_worker(config: str, out: str, k: int, n: int) -> dict[str, Any]:
    """One worker through the API, run as a dask task in another process."""
    report = initialize(None, out, like=config, seed=7, max_shard_size="20KB", shard=(k, n))
    return {"pid": os.getpid(), "bytes": report.bytes_written}


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with dw.local_cluster() as client:
        yield client


def test_workers_as_concurrent_dask_tasks(
    config: Path, single: dict[str, bytes], dask_client: Any, tmp_path: Path
) -> None:
    calls = [(str(config), str(tmp_path / f"n{n}"), k, n) for n in COUNTS for k in range(n)]
    random.Random(0).shuffle(calls)
    results = dw.run_tasks(dask_client, shard_worker, calls)
    assert len({result["pid"] for result in results}) == 2 and os.getpid() not in {r["pid"] for r in results}
    total = sum(weights(single).values())
    assert sum(result["bytes"] for result in results) == total * len(COUNTS)
    for n in COUNTS:
        assert files_of(tmp_path / f"n{n}") == single, n
    loads_with_empty_info(tmp_path / "n8")


# Run as a subprocess: SIGKILL itself right after the first tensor of its second file.
KILLER = """
import os, signal, sys
from netinit_cli.cli import cli
from netinit_cli.formats.safetensors import writer

original = writer.SafetensorsWriter._write_item
targets = []

def write_item(self, item, fd, position, target, done):
    original(self, item, fd, position, target, done)
    targets.append(target)
    if len(set(targets)) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

writer.SafetensorsWriter._write_item = write_item
cli.main(args=sys.argv[1:])
"""


def test_worker_killed_with_sigkill_and_rerun_completes_the_same_bytes(
    config: Path, single: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--like", str(config), "-o", str(out), *SPLIT, "--seed", "7", "-q"]
    checked(*args, "--shard", "0/2")
    names = sorted(weights(single))
    mine = [names[i] for i in assign([len(single[name]) for name in names], 2)[1]]
    env = {key: value for key, value in os.environ.items() if key not in SHARD_ENV}
    killed = subprocess.run([sys.executable, "-c", KILLER, *args, "--shard", "1/2"], env=env, check=False)
    assert killed.returncode == -9
    assert [name for name in mine if (out / name).exists()] == mine[:1]  # its first file is committed
    assert (out / mine[0]).read_bytes() == single[mine[0]]
    assert not any((out / name).exists() for name in SMALL)
    assert [name for name in os.listdir(out) if name.endswith(".tmp")]  # the second, cut short
    rerun = checked(*args, "--shard", "1/2")
    assert sorted(Path(f).name for f in rerun["files"]) == sorted([*mine[1:], *SMALL])
    assert files_of(out) == single  # the killed run's temporary file is gone too


def test_one_worker_missing_leaves_no_index_and_complete_shards(
    config: Path, single: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for k in (0, 2):
        checked("--like", config, "-o", out, *SPLIT, "--seed", "7", "--shard", f"{k}/3")
    present = files_of(out)
    assert not set(present) & set(SMALL)  # neither the index nor config.json
    assert 0 < len(present) < len(weights(single))
    for name, data in present.items():
        assert data == single[name]
        assert load_file(str(out / name))


def test_a_one_file_model_is_worker_0s(config: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    checked("--like", config, "-o", whole, "--seed", "7")
    assert sorted(files_of(whole)) == ["config.json", "generation_config.json", "model.safetensors"]
    out = tmp_path / "out"
    for k in (2, 1):
        report = checked("--like", config, "-o", out, "--seed", "7", "--shard", f"{k}/3")
        assert report["files"] == [] and report["bytes_written"] == 0
        assert (
            "the model is one file, model.safetensors: worker 0 of 3 writes it, the others nothing"
            in (report["notes"])
        )
    assert os.listdir(out) == []
    report = checked("--like", config, "-o", out, "--seed", "7", "--shard", "0/3")
    assert report["bytes_written"] == len((whole / "model.safetensors").read_bytes())
    assert files_of(out) == files_of(whole)
    loads_with_empty_info(out)


def test_mismatched_workers_stop_before_writing(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--like", config, "-o", out, *SPLIT]
    checked(*args, "--seed", "7", "--shard", "0/3")
    before = files_of(out)
    first = out / sorted(before)[0]
    code, _, err = netinit(*args, "--seed", "8", "--shard", "1/3")
    assert (code, err) == (
        2,
        f"netinit: error: {first} was written with netinit.seed=7, this worker has netinit.seed=8: "
        "give every worker the same options and versions, or delete the file if it is from another run\n",
    )
    # another config.json with the same tensors: the preset's values differ
    other = write_config(tmp_path / "other", initializer_range=0.01)
    code, _, err = netinit("--like", other, "-o", out, *SPLIT, "--seed", "7", "--shard", "1/3")
    assert code == 2 and err.count("\n") == 1
    assert re.fullmatch(
        rf"netinit: error: {re.escape(str(first))} was written with netinit\.config_sha256=[0-9a-f]{{64}}, "
        r"this worker has netinit\.config_sha256=[0-9a-f]{64}: .*\n",
        err,
    )
    code, _, err = netinit(*args, "--seed", "7", "--dtype", "bf16", "--shard", "1/3")  # another split
    assert code == 2 and err.count("\n") == 1
    assert re.fullmatch(
        r"netinit: error: \S+ was written with netinit\.plan=[0-9a-f]{64}, of another split \(other "
        r"--max-shard-size, --dtype or config\): give every worker the same options .*\n",
        err,
    )
    assert files_of(out) == before  # nothing written


def test_a_folder_with_other_files_is_refused(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = netinit("--like", config, "-o", out, *SPLIT, "--seed", "7", "--shard", "0/2", "--force")
    assert (code, err) == (
        4,
        f"netinit: error: {out} holds 1 file(s) this model does not have (notes.txt): --shard workers "
        "share the folder and write into it; give an empty or new folder with -o\n",
    )
    assert os.listdir(out) == ["notes.txt"]
    code, _, err = netinit("--like", config, "-o", config.parent, "--seed", "7", "--shard", "0/2")
    assert (code, err) == (
        2,
        f"netinit: error: -o {config.parent} holds the config itself; choose another output folder\n",
    )
