"""Shard-parallel runs (netinit_cli/shard.py): who am I, which files, is the bundle complete.

Decisions documented here:
* worker identity comes from ``--shard K/N`` or a scheduler's array index, never from RANK;
* ``--shard auto`` reads Slurm arrays, Kubernetes Indexed Jobs (count from ``auto/N``), GitLab
  ``parallel:`` (1-based) and NETINIT_SHARD_INDEX/_COUNT (how a GitHub Actions matrix passes
  ``strategy.job-index``/``job-total``); any doubt is one usage error line;
* files are assigned largest first to the least-loaded worker: each worker writes at most
  total/N plus one file's bytes;
* the index appears only when every file it names is present with this run's provenance and
  planned size; a present file with other provenance is an error naming the key.
"""

from __future__ import annotations

import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask_workers as dw
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from netinit_cli.errors import InputError, OutputExistsError, UsageError
from netinit_cli.shard import (
    BrokenShardError,
    PlannedTensor,
    ShardMismatchError,
    assign,
    existing_shard,
    parse_shard,
    plan_digest,
    publish_index_if_complete,
    shard_metadata,
)

# -- parse_shard ---------------------------------------------------------------------------------

SLURM = {
    "SLURM_ARRAY_TASK_ID": "5",
    "SLURM_ARRAY_TASK_MIN": "2",
    "SLURM_ARRAY_TASK_COUNT": "4",
    "SLURM_ARRAY_TASK_MAX": "5",
}
SLURM_TEXT = "SLURM_ARRAY_TASK_ID=5, SLURM_ARRAY_TASK_MIN=2, SLURM_ARRAY_TASK_COUNT=4, SLURM_ARRAY_TASK_MAX=5"
LOOKED_FOR = (
    "looked for SLURM_ARRAY_TASK_ID/_MIN/_COUNT/_MAX, JOB_COMPLETION_INDEX, NETINIT_SHARD_INDEX/_COUNT, "
    "CI_NODE_INDEX/_TOTAL"
)
NO_INDEX_FIX = (
    "give --shard K/N, or run as a Slurm array, a Kubernetes Indexed Job (--shard auto/N) or a CI matrix "
    "that sets NETINIT_SHARD_INDEX and NETINIT_SHARD_COUNT"
)


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (None, SLURM, None),
        ("3/8", {}, (3, 8)),
        (" 0/1 ", {}, (0, 1)),
        ("2/4", {**SLURM, "SLURM_ARRAY_TASK_ID": "junk", "RANK": "7"}, (2, 4)),  # explicit: env ignored
        ("auto", SLURM, (3, 4)),  # K = ID - MIN
        ("auto/4", SLURM, (3, 4)),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8"},
            (0, 8),
        ),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"},
            (6, 8),
        ),
        ("auto", {**SLURM, "RANK": "0", "WORLD_SIZE": "2"}, (3, 4)),  # ranks never consulted
        ("auto/8", {"JOB_COMPLETION_INDEX": "7"}, (7, 8)),
        ("auto", {"NETINIT_SHARD_INDEX": "1", "NETINIT_SHARD_COUNT": "3"}, (1, 3)),
        ("auto", {"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"}, (0, 2)),  # GitLab is 1-based
        ("auto", {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"}, (1, 2)),
        ("auto", {**SLURM, "NETINIT_SHARD_INDEX": "3", "NETINIT_SHARD_COUNT": "4"}, (3, 4)),  # agree
        ("auto/4", {**SLURM, "JOB_COMPLETION_INDEX": "3"}, (3, 4)),
    ],
)
def test_parse_shard(text: str | None, environ: dict[str, str], expected: tuple[int, int] | None) -> None:
    assert parse_shard(text, environ) == expected


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("x", {}, "--shard 'x': expected K/N (0 ≤ K < N), auto, or auto/N"),
        ("-1/4", {}, "--shard '-1/4': expected K/N (0 ≤ K < N), auto, or auto/N"),
        ("auto/", {}, "--shard 'auto/': expected K/N (0 ≤ K < N), auto, or auto/N"),
        ("8/8", {}, "--shard 8/8: worker 8 of 8 is out of range; K must be 0 to 7"),
        ("0/0", {}, "--shard 0/0: N must be at least 1"),
        ("auto/0", {"JOB_COMPLETION_INDEX": "0"}, "--shard auto/0: N must be at least 1"),
        (
            "auto",
            {},
            f"--shard auto: no worker index in the environment ({LOOKED_FOR}; none is set); {NO_INDEX_FIX}",
        ),
        (
            "auto",
            {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"},
            f"--shard auto: no worker index in the environment ({LOOKED_FOR}; found only RANK=3, WORLD_SIZE=8, "
            f"LOCAL_RANK=1, unused as elastic restarts renumber ranks); {NO_INDEX_FIX}",
        ),
        (
            "auto",
            {"JOB_COMPLETION_INDEX": "3"},
            "--shard auto: JOB_COMPLETION_INDEX=3 gives no worker count; use --shard auto/N",
        ),
        (
            "auto/4",
            {"JOB_COMPLETION_INDEX": "4"},
            "--shard auto/4: worker 4 of 4 (Kubernetes: JOB_COMPLETION_INDEX=4) is out of range; K must be 0 to 3",
        ),
        ("auto/8", SLURM, f"--shard auto/8: Slurm has 4 workers ({SLURM_TEXT})"),
        (
            "auto",
            {**SLURM, "SLURM_ARRAY_TASK_MAX": "9"},
            "--shard auto: the Slurm array is not a contiguous range (SLURM_ARRAY_TASK_ID=5, SLURM_ARRAY_TASK_MIN=2, "
            "SLURM_ARRAY_TASK_COUNT=4, SLURM_ARRAY_TASK_MAX=9); submit --array=2-5 (a %limit is fine) or give --shard K/N",
        ),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "abc"},
            "--shard auto: SLURM_ARRAY_TASK_ID='abc' is not a number; fix it or give --shard K/N",
        ),
        (
            "auto",
            {"CI_NODE_INDEX": "0", "CI_NODE_TOTAL": "4"},
            "--shard auto: worker -1 of 4 (GitLab, 1-based: CI_NODE_INDEX=0, CI_NODE_TOTAL=4) is out of range; "
            "K must be 0 to 3",
        ),
        (
            "auto",
            {"NETINIT_SHARD_INDEX": "1"},
            "--shard auto: NETINIT_SHARD_INDEX=1 gives no worker count; use --shard auto/N",
        ),
        (
            "auto",
            {**SLURM, "CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"},
            f"--shard auto: the schedulers disagree: Slurm says 3/4 ({SLURM_TEXT}); GitLab, 1-based says 0/2 "
            "(CI_NODE_INDEX=1, CI_NODE_TOTAL=2); unset one or give --shard K/N",
        ),
    ],
)
def test_parse_shard_errors(text: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_shard(text, environ)
    assert str(caught.value) == message
    assert "\n" not in message and caught.value.exit_code == 2


# -- assign --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**12), max_size=40), st.integers(1, 12))
def test_assign_is_a_balanced_partition(sizes: list[int], n: int) -> None:
    files = assign(sizes, n)
    assert len(files) == n
    assert sorted(i for chosen in files for i in chosen) == list(range(len(sizes)))
    assert all(chosen == sorted(chosen) for chosen in files)
    largest = max(sizes, default=0)
    for chosen in files:  # load ≤ total/n + largest, in integers
        assert sum(sizes[i] for i in chosen) * n <= sum(sizes) + n * largest
    assert assign(list(sizes), n) == files  # deterministic


def test_assign_examples() -> None:
    assert assign([10, 10, 10, 10], 2) == [[0, 2], [1, 3]]
    assert assign([5, 40, 5, 5, 5], 2) == [[1], [0, 2, 3, 4]]
    assert assign([3, 1, 2], 1) == [[0, 1, 2]]
    assert assign([7], 3) == [[0], [], []]  # more workers than files: the others only publish
    with pytest.raises(ValueError):
        assign([1], 0)


# -- provenance ----------------------------------------------------------------------------------

PROVENANCE = {
    "netinit.seed": "7",
    "netinit.method": "kaiming",
    "netinit.scope": "all",
    "netinit.version": "0.1.0",
}
TENSORS = [
    PlannedTensor("a.weight", "F32", (4, 3), "m-00001-of-00002.safetensors", "filled"),
    PlannedTensor("a.bias", "F32", (4,), "m-00001-of-00002.safetensors", "filled"),
    PlannedTensor("b.weight", "BF16", (2, 4), "m-00002-of-00002.safetensors", "kept"),
]


def test_plan_digest_covers_layout_and_options_not_order() -> None:
    digest = plan_digest(TENSORS, PROVENANCE)
    assert digest == plan_digest(list(reversed(TENSORS)), dict(reversed(PROVENANCE.items())))
    assert len(digest) == 64
    changed = [
        [*TENSORS[:2], TENSORS[2]._replace(shape=(4, 2))],
        [*TENSORS[:2], TENSORS[2]._replace(dtype="F16")],
        [*TENSORS[:2], TENSORS[2]._replace(action="filled")],
        [*TENSORS[:2], TENSORS[2]._replace(file="m-00001-of-00002.safetensors")],
        TENSORS[:2],
    ]
    digests = {plan_digest(tensors, PROVENANCE) for tensors in changed}
    digests.add(plan_digest(TENSORS, {**PROVENANCE, "netinit.seed": "8"}))
    assert digest not in digests and len(digests) == len(changed) + 1
    metadata = shard_metadata(PROVENANCE, digest, 2)
    assert metadata == {**PROVENANCE, "netinit.plan": digest, "netinit.shard_files": "2"}


def write_shard(path: Path, metadata: dict[str, str], rows: int = 4) -> int:
    """A real safetensors file (the reference writer) with ``metadata``; returns its size."""
    save_file({"w": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)}, str(path), metadata=metadata)
    return path.stat().st_size


def test_existing_shard(tmp_path: Path) -> None:
    expected = shard_metadata(PROVENANCE, plan_digest(TENSORS, PROVENANCE), 2)
    path = tmp_path / "m-00001-of-00002.safetensors"
    assert existing_shard(path, 100, expected) is False
    (tmp_path / f".{path.name}.netinit-4242-abc.tmp").write_bytes(b"partial")  # a killed writer's temp
    assert existing_shard(path, 100, expected) is False
    size = write_shard(path, {"format": "pt", **expected})
    assert existing_shard(path, size, expected) is True

    write_shard(path, {**expected, "netinit.seed": "8"})
    with pytest.raises(ShardMismatchError) as caught:
        existing_shard(path, size, expected)
    assert str(caught.value) == (
        f"{path} was written with netinit.seed=8, this worker has netinit.seed=7: give every worker the "
        "same options and versions, or delete the file if it is from another run"
    )
    assert caught.value.exit_code == 2

    write_shard(path, {"format": "pt"})  # not a netinit output: the first missing key is named
    with pytest.raises(ShardMismatchError, match=r"was written with no netinit\.method, this worker has"):
        existing_shard(path, size, expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a complete safetensors file (header length); delete it"),
        (struct.pack("<Q", 10**9) + b"{}", "not a complete safetensors file (header length); delete it"),
        (struct.pack("<Q", 4) + b"{{{{", "unreadable safetensors header"),
    ],
)
def test_broken_shard(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "s.safetensors"
    path.write_bytes(content)
    with pytest.raises(BrokenShardError, match=re.escape(message)) as caught:
        existing_shard(path, 100, {"netinit.seed": "1"})
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 3


def test_truncated_or_linked_shard(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    size = write_shard(path, {"netinit.seed": "1"})
    with pytest.raises(BrokenShardError, match=rf"{size} bytes, planned {size + 4}; delete it and rerun"):
        existing_shard(path, size + 4, {"netinit.seed": "1"})
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    with pytest.raises(BrokenShardError, match="not a regular file"):
        existing_shard(link, size, {"netinit.seed": "1"})


# -- publication ---------------------------------------------------------------------------------


def test_index_appears_only_when_every_shard_is_complete(tmp_path: Path) -> None:
    headers, index_bytes, metadata = dw.toy_layout(seed=1)
    sizes = {file: dw.file_size(headers[file], file) for file in headers}
    index = tmp_path / dw.INDEX_NAME
    first = dw.toy_worker(str(tmp_path), 0, 3)
    assert first["published"] is False and not index.exists()
    status = publish_index_if_complete(index, index_bytes, sizes, metadata, durable=False)
    assert not status.published and set(status.waiting) == set(sizes) - set(first["written"])
    dw.toy_worker(str(tmp_path), 2, 3)
    assert not index.exists()
    for file in os.listdir(tmp_path):  # with one worker missing, every present shard is complete
        assert existing_shard(tmp_path / file, sizes[file], metadata)
    assert dw.toy_worker(str(tmp_path), 1, 3)["published"] is True
    assert index.read_bytes() == index_bytes
    inode = index.stat().st_ino
    again = dw.toy_worker(str(tmp_path), 1, 3)  # a rerun skips its complete files, keeps the index
    assert again["written"] == [] and again["published"] and index.stat().st_ino == inode


def test_existing_index_and_stale_shards(tmp_path: Path) -> None:
    headers, index_bytes, metadata = dw.toy_layout(seed=1)
    sizes = {file: dw.file_size(headers[file], file) for file in headers}
    index = tmp_path / dw.INDEX_NAME
    for k in range(2):
        dw.toy_worker(str(tmp_path), k, 2, seed=2)  # an earlier run with another seed
    with pytest.raises(
        ShardMismatchError, match=r"was written with netinit.seed=2, this worker has netinit.seed=1"
    ):
        publish_index_if_complete(index, index_bytes, sizes, metadata, durable=False)
    status = publish_index_if_complete(index, index_bytes, sizes, metadata, overwrite=True, durable=False)
    assert not status.published and set(status.stale) == set(sizes)
    for file in sizes:
        os.unlink(tmp_path / file)
    for k in range(2):
        dw.toy_worker(str(tmp_path), k, 2, seed=1)
    index.write_bytes(b"{}")  # an index of another run
    with pytest.raises(OutputExistsError, match="exists with other contents; use --force"):
        publish_index_if_complete(index, index_bytes, sizes, metadata, durable=False)
    assert publish_index_if_complete(index, index_bytes, sizes, metadata, overwrite=True).published
    assert index.read_bytes() == index_bytes
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == []


def test_concurrent_publishers_give_one_identical_index(tmp_path: Path) -> None:
    for k in range(3):
        dw.toy_worker(str(tmp_path), k, 3)
    (tmp_path / dw.INDEX_NAME).unlink()
    headers, index_bytes, metadata = dw.toy_layout(seed=1)
    sizes = {file: dw.file_size(headers[file], file) for file in headers}
    start = threading.Barrier(8)
    seen: list[bool] = []

    def publisher() -> None:
        start.wait()
        for _ in range(20):
            seen.append(
                publish_index_if_complete(tmp_path / dw.INDEX_NAME, index_bytes, sizes, metadata).published
            )

    threads = [threading.Thread(target=publisher) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(seen) and len(seen) == 160
    assert (tmp_path / dw.INDEX_NAME).read_bytes() == index_bytes
    assert sorted(os.listdir(tmp_path)) == sorted([*sizes, dw.INDEX_NAME])  # no temporary file left


def reference_bundle(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    dw.toy_worker(str(folder), 0, 1)
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_any_worker_order_gives_the_single_run_bytes(tmp_path: Path, n: int) -> None:
    single = reference_bundle(tmp_path / "single")
    out = tmp_path / "out"
    out.mkdir()
    order = list(range(n))
    random.Random(n).shuffle(order)
    results = [dw.toy_worker(str(out), k, n) for k in order]
    assert [r["published"] for r in results] == [False] * (n - 1) + [True]
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == single
    sizes = {f: len(single[f]) for f in dw.TOY_BUNDLE}
    for result in results:  # each worker: ≤ total/N + one file
        assert sum(sizes[f] for f in result["written"]) * n <= sum(sizes.values()) + n * max(sizes.values())


def test_worker_killed_and_rerun_completes_the_same_bytes(tmp_path: Path) -> None:
    single = reference_bundle(tmp_path / "single")
    out = tmp_path / "out"
    out.mkdir()
    dw.toy_worker(str(out), 0, 2)
    mine = dw.toy_files(1, 2)
    assert len(mine) >= 2
    code = f"import dask_workers; dask_workers.toy_worker({str(out)!r}, 1, 2, pause=0.05)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    worker = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 30
    while not (out / mine[0]).exists():  # its first file is committed, the next one is under way
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert not (out / dw.INDEX_NAME).exists()
    rerun = dw.toy_worker(str(out), 1, 2)
    assert rerun["skipped"] == [mine[0]] and rerun["written"] == mine[1:] and rerun["published"]
    leftovers = [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert {name: (out / name).read_bytes() for name in os.listdir(out) if name not in leftovers} == single


# -- a real distributed engine -------------------------------------------------------------------


def test_workers_as_dask_tasks(tmp_path: Path) -> None:
    single = reference_bundle(tmp_path / "single")
    pids: set[int] = set()
    with dw.local_cluster() as client:
        for n in (1, 2, 3, 5, 8):
            out = tmp_path / f"n{n}"
            out.mkdir()
            results = dw.run_tasks(client, dw.toy_worker, [(str(out), k, n) for k in range(n)])
            assert sorted(f for r in results for f in r["written"]) == sorted(dw.TOY_BUNDLE)
            assert any(r["published"] for r in results)
            pids.update(r["pid"] for r in results)
            assert {name: (out / name).read_bytes() for name in os.listdir(out)} == single, n
    assert len(pids) == 2 and os.getpid() not in pids  # both worker processes, not this one
