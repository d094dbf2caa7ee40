"""Run shard workers as tasks of a real distributed engine, and a stand-in worker to test it with.

``run_tasks(client, function, calls)`` runs ``function(*call)`` for every call as tasks on
``local_cluster()``, a ``dask.distributed.LocalCluster`` of two single-threaded *processes*, so
shard workers run concurrently in separate interpreters that share only the output folder.

``toy_worker`` stands in for ``netinit_cli.initialize(..., shard=(k, n))``: it plans the whole
bundle, writes the files :func:`netinit_cli.shard.assign` gives worker k (each in a temporary
file renamed into place), skips those already complete, and publishes the index.

Used by tests/test_shard.py; run by hand with ``.venv/bin/python tests/dask_workers.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from netinit_cli import shard

# A toy bundle: file name → tensors (name, F32 shape).  Sizes differ so assign() has work to do.
TOY_BUNDLE: dict[str, list[tuple[str, tuple[int, ...]]]] = {
    f"model-{i:05d}-of-00007.safetensors": [(f"layer.{i}.{part}", (rows, 16)) for part in ("a", "b")]
    for i, rows in enumerate([64, 8, 32, 32, 128, 16, 48], start=1)
}
INDEX_NAME = "model.safetensors.index.json"


def toy_layout(seed: int) -> tuple[dict[str, bytes], bytes, dict[str, str]]:
    """Every worker's identical plan: file name → header bytes, the index bytes, the metadata."""
    planned = [
        shard.PlannedTensor(name, "F32", shape, file, "filled")
        for file, tensors in TOY_BUNDLE.items()
        for name, shape in tensors
    ]
    provenance = {"netinit.seed": str(seed), "netinit.method": "toy", "netinit.version": "0"}
    metadata = shard.shard_metadata(provenance, shard.plan_digest(planned, provenance), len(TOY_BUNDLE))
    headers: dict[str, bytes] = {}
    for file, tensors in TOY_BUNDLE.items():
        document: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for name, shape in sorted(tensors):
            size = 4 * shape[0] * shape[1]
            document[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(document, separators=(",", ":")).encode()
        headers[file] = text + b" " * (-len(text) % 8)
    weight_map = {name: file for file, tensors in TOY_BUNDLE.items() for name, _ in tensors}
    total = sum(4 * shape[0] * shape[1] for tensors in TOY_BUNDLE.values() for _, shape in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    return headers, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), metadata


def toy_values(seed: int, name: str, nbytes: int) -> bytes:
    """Bytes that depend only on the seed and the tensor's name, as netinit's values do."""
    blocks = (nbytes + 31) // 32
    return b"".join(hashlib.sha256(f"{seed}:{name}:{i}".encode()).digest() for i in range(blocks))[:nbytes]


def file_size(header: bytes, file: str) -> int:
    return 8 + len(header) + sum(4 * shape[0] * shape[1] for _, shape in TOY_BUNDLE[file])


def toy_files(k: int, n: int, seed: int = 1) -> list[str]:
    """The files worker k of n writes."""
    headers = toy_layout(seed)[0]
    files = list(TOY_BUNDLE)
    return [files[i] for i in shard.assign([file_size(headers[file], file) for file in files], n)[k]]


def toy_worker(folder: str, k: int, n: int, seed: int = 1, pause: float = 0.0) -> dict[str, Any]:
    """Worker k of n: write my files (skipping complete ones), then publish the index if complete."""
    out = Path(folder)
    headers, index_bytes, metadata = toy_layout(seed)
    sizes = {file: file_size(headers[file], file) for file in TOY_BUNDLE}
    mine = toy_files(k, n, seed)
    written, skipped = [], []
    for file in mine:
        if shard.existing_shard(out / file, sizes[file], metadata):
            skipped.append(file)
            continue
        tmp = out / f".{file}.netinit-{os.getpid()}-toy.tmp"
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(headers[file])) + headers[file])
            for name, shape in sorted(TOY_BUNDLE[file]):
                handle.write(toy_values(seed, name, 4 * shape[0] * shape[1]))
                handle.flush()
                time.sleep(pause)  # room for a kill -9 mid-file
        os.replace(tmp, out / file)
        written.append(file)
    result = shard.publish_index_if_complete(out / INDEX_NAME, index_bytes, sizes, metadata, durable=False)
    return {"k": k, "written": written, "skipped": skipped, "published": result.published, "pid": os.getpid()}


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A ``dask.distributed`` client on a LocalCluster of two single-threaded worker processes
    (about 3.5 s to start and 2 s to stop on 2 cores: share one between tests)."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run_tasks(client: Any, function: Callable[..., Any], calls: Iterable[Sequence[Any]]) -> list[Any]:
    """``[function(*call) for call in calls]``, submitted at once as tasks, so they run
    concurrently in the worker processes.  ``function``'s module is shipped by value: it need
    not be importable on the workers (tests/ is not a package)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[function.__module__])
    futures = [client.submit(function, *call, pure=False) for call in calls]
    return list(client.gather(futures))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        with local_cluster() as client:
            results = run_tasks(client, toy_worker, [(folder, k, 3) for k in range(3)])
        print(json.dumps(results, indent=1))
        print(sorted(os.listdir(folder)))
