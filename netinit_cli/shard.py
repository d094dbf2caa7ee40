"""Shard-parallel runs: worker K of N writes some files of a sharded bundle; the last one publishes.

Values depend only on the seed and tensor names, and a file's layout only on names, dtypes and
shapes, so every worker computes the same plan, file sizes and index bytes uncoordinated.  Worker
K writes the files :func:`assign` gives it, commits each atomically, then calls
:func:`publish_index_if_complete`, which writes the index once every file is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from .errors import InputError, OutputError, OutputExistsError, UsageError

# -- who am I: --shard K/N, auto, auto/N ---------------------------------------------------------

LOOKED_FOR = "SLURM_ARRAY_TASK_ID/_MIN/_COUNT/_MAX, JOB_COMPLETION_INDEX, NETINIT_SHARD_INDEX/_COUNT, CI_NODE_INDEX/_TOTAL"
# Process ranks are never read: after an elastic restart a worker would write another's files.
_RANKS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID")
# scheduler: (index variable, first index or the variable holding it, count variable, last index variable)
_SCHEDULERS: dict[str, tuple[str, int | str, str | None, str | None]] = {
    "Slurm": (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MAX",
    ),
    "Kubernetes": ("JOB_COMPLETION_INDEX", 0, None, None),  # N is the Job's completions: auto/N
    "NETINIT_SHARD_*": ("NETINIT_SHARD_INDEX", 0, "NETINIT_SHARD_COUNT", None),  # set by a CI matrix
    "GitLab, 1-based": ("CI_NODE_INDEX", 1, "CI_NODE_TOTAL", None),  # parallel: N
}


class _Found(NamedTuple):
    scheduler: str
    k: int
    n: int | None  # None: the scheduler does not say; N comes from auto/N
    evidence: str  # "VAR=value, ..." as found


def parse_shard(text: str | None, environ: Mapping[str, str]) -> tuple[int, int] | None:
    """``--shard`` → ``(K, N)``, 0 ≤ K < N, or ``None``.  ``auto`` reads :data:`_SCHEDULERS` (a GitHub
    matrix sets NETINIT_SHARD_INDEX/_COUNT from ``strategy.job-index``/``job-total``, which exist
    only as expressions); ``auto/N`` must agree with a scheduler's count and gives Kubernetes its
    N.  Several schedulers may be visible only if they name the same worker."""
    if text is None:
        return None
    spec = text.strip()
    where = f"--shard {spec}"
    if match := re.fullmatch(r"([0-9]+)/([0-9]+)", spec):
        return _in_range(int(match[1]), int(match[2]), where, "")
    match = re.fullmatch(r"auto(?:/([0-9]+))?", spec)
    if match is None:
        raise UsageError(f"--shard {text!r}: expected K/N (0 ≤ K < N), auto, or auto/N")
    given = int(match[1]) if match[1] is not None else None
    if given == 0:
        raise UsageError(f"{where}: N must be at least 1")
    found = _from_environment(environ, where)
    if not found:
        ranks = ", ".join(f"{name}={environ[name]}" for name in _RANKS if name in environ)
        seen = f"found only {ranks}, unused as elastic restarts renumber ranks" if ranks else "none is set"
        raise UsageError(
            f"{where}: no worker index in the environment (looked for {LOOKED_FOR}; {seen}); give "
            "--shard K/N, or run as a Slurm array, a Kubernetes Indexed Job (--shard auto/N) or a CI "
            "matrix that sets NETINIT_SHARD_INDEX and NETINIT_SHARD_COUNT"
        )
    results: dict[tuple[int, int], _Found] = {}
    for source in found:
        count = source.n if source.n is not None else given
        if count is None:
            raise UsageError(f"{where}: {source.evidence} gives no worker count; use --shard auto/N")
        if given is not None and count != given:
            raise UsageError(f"{where}: {source.scheduler} has {count} workers ({source.evidence})")
        results[_in_range(source.k, count, where, f" ({source.scheduler}: {source.evidence})")] = source
    if len(results) > 1:
        said = "; ".join(f"{s.scheduler} says {k}/{n} ({s.evidence})" for (k, n), s in results.items())
        raise UsageError(f"{where}: the schedulers disagree: {said}; unset one or give --shard K/N")
    return next(iter(results))


def _in_range(k: int, n: int, where: str, evidence: str) -> tuple[int, int]:
    if n < 1:
        raise UsageError(f"{where}: N must be at least 1{evidence}")
    if k >= n or k < 0:
        raise UsageError(f"{where}: worker {k} of {n}{evidence} is out of range; K must be 0 to {n - 1}")
    return k, n


def _number(environ: Mapping[str, str], name: str | None, where: str) -> int | None:
    if name is None or name not in environ:
        return None
    if not re.fullmatch(r"[0-9]+", environ[name].strip()):
        raise UsageError(f"{where}: {name}={environ[name]!r} is not a number; fix it or give --shard K/N")
    return int(environ[name])


def _from_environment(environ: Mapping[str, str], where: str) -> list[_Found]:
    found = []
    for scheduler, (index_name, first, count_name, last_name) in _SCHEDULERS.items():
        index = _number(environ, index_name, where)
        if index is None:
            continue
        low = first if isinstance(first, int) else _number(environ, first, where) or 0
        count, last = _number(environ, count_name, where), _number(environ, last_name, where)
        names = [v for v in (index_name, first, count_name, last_name) if isinstance(v, str) and v in environ]
        evidence = ", ".join(f"{v}={environ[v]}" for v in names)
        if last is not None and count is not None and last - low + 1 != count:
            raise UsageError(
                f"{where}: the Slurm array is not a contiguous range ({evidence}); "
                f"submit --array={low}-{low + count - 1} (a %limit is fine) or give --shard K/N"
            )
        count = last - low + 1 if count is None and last is not None else count
        found.append(_Found(scheduler, index - low, count, evidence))
    return found


# -- which files: balanced by bytes --------------------------------------------------------------


def assign(file_sizes: Sequence[int], n: int) -> list[list[int]]:
    """Worker k writes files ``assign(sizes, n)[k]`` (indices into ``file_sizes``, ascending).

    Largest first onto the least-loaded worker (ties: lower index): ≤ total/n + largest bytes each,
    as a file of s bytes lands on a worker holding ≤ the mean of what came before, ≤ (total − s)/n.
    """
    if n < 1 or any(size < 0 for size in file_sizes):
        raise ValueError(f"assign: needs n ≥ 1 and sizes ≥ 0, got n={n}")
    loads = [0] * n
    files: list[list[int]] = [[] for _ in range(n)]
    for index in sorted(range(len(file_sizes)), key=lambda i: (-file_sizes[i], i)):
        worker = min(range(n), key=lambda w: (loads[w], w))
        loads[worker] += file_sizes[index]
        files[worker].append(index)
    return [sorted(chosen) for chosen in files]


# -- provenance: the same run, or not ------------------------------------------------------------


class PlannedTensor(NamedTuple):
    """One stored tensor of the output bundle, as every worker plans it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str  # the output shard file it goes into
    action: str  # filled / kept / constant: a missing-fill and --all differ here


PLAN_KEY = "netinit.plan"
FILES_KEY = "netinit.shard_files"


def plan_digest(tensors: Sequence[PlannedTensor], options: Mapping[str, str]) -> str:
    """SHA-256 of each tensor's file, name, dtype, shape, action and the options; not of N."""
    document = {
        "options": dict(sorted(options.items())),
        "tensors": sorted([t.file, t.name, t.dtype, list(t.shape), t.action] for t in tensors),
    }
    text = json.dumps(document, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def shard_metadata(provenance: Mapping[str, str], digest: str, files: int) -> dict[str, str]:
    """The ``netinit.*`` keys every shard file of the bundle records (also without ``--shard``)."""
    return {**provenance, PLAN_KEY: digest, FILES_KEY: str(files)}


class ShardMismatchError(UsageError):
    """A shard file present in the output was written with other options (or by another run)."""


class BrokenShardError(InputError):
    """A shard file present in the output is not a complete safetensors file of this plan."""


def metadata_of(path: Path, size: int) -> dict[str, str]:
    """A safetensors file's ``__metadata__``, from its header alone."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if not 0 < length <= min(100_000_000, size - 8):  # the reference parser's cap
                raise BrokenShardError(f"{path}: not a complete safetensors file (header length); delete it")
            document = json.loads(handle.read(length).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise BrokenShardError(f"{path}: unreadable safetensors header ({exc}); delete it") from exc
    metadata = document.get("__metadata__") if isinstance(document, dict) else None
    return {str(key): str(value) for key, value in metadata.items()} if isinstance(metadata, dict) else {}


def existing_shard(path: Path, size: int, expected: Mapping[str, str]) -> bool:
    """``True``: there with the ``expected`` metadata (:func:`shard_metadata`) and planned ``size``,
    so this run's bytes: skip it.  ``False``: absent (a killed writer leaves only temporary files).
    Else :class:`ShardMismatchError` naming the first differing key, or :class:`BrokenShardError`."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BrokenShardError(f"{path}: cannot be examined ({exc.strerror}); check the folder") from exc
    if not stat.S_ISREG(info.st_mode):
        raise BrokenShardError(f"{path}: not a regular file (a symbolic link or folder?); remove it")
    found = metadata_of(path, info.st_size)
    for key in sorted(expected, key=lambda key: (key == PLAN_KEY, key)):
        if found.get(key) != expected[key]:
            raise mismatch(path, found, key, expected[key])
    if info.st_size != size:
        raise BrokenShardError(
            f"{path}: {info.st_size} bytes, planned {size}; delete it and rerun its worker"
        )
    return True


def mismatch(path: Path, found: Mapping[str, str], key: str, value: str) -> ShardMismatchError:
    there = f"{key}={found[key]}" if key in found else f"no {key}"
    return ShardMismatchError(
        f"{path} was written with {there}, this worker has {key}={value}: give every "
        "worker the same options and versions, or delete the file if it is from another run"
    )


# -- publication ---------------------------------------------------------------------------------


class Publication(NamedTuple):
    published: bool  # the index is in place with these bytes (written now, or already there)
    waiting: tuple[str, ...] = ()  # shard files not there yet
    stale: tuple[str, ...] = ()  # with overwrite: files of another run, still to be replaced


def publish_index_if_complete(
    index_path: Path,
    index_bytes: bytes | None,
    shards: Mapping[str, int],
    expected: Mapping[str, str],
    *,
    overwrite: bool = False,
    durable: bool = True,
    extras: Mapping[str, bytes] | None = None,
) -> Publication:
    """Write the index (temp file, fsync, rename, same folder) iff every shard is complete.

    ``shards``: each file the index names (beside it) → planned size.  Workers may call it at
    once: each renames its own temporary file, all with the same bytes.  A foreign or broken
    shard raises, or with ``overwrite`` (``--force``) means "not yet": its worker replaces it.
    ``extras`` (a model folder's ``config.json``, …: name → bytes, beside the index) are
    written the same way just before the index; ``index_bytes=None``: the output is one file
    and has no index, only the extras.
    """
    waiting: list[str] = []
    stale: list[str] = []
    for name, size in sorted(shards.items()):
        try:
            if not existing_shard(index_path.with_name(name), size, expected):
                waiting.append(name)
        except (ShardMismatchError, BrokenShardError):
            if not overwrite:
                raise
            stale.append(name)
    if waiting or stale:
        return Publication(False, tuple(waiting), tuple(stale))
    for name, data in sorted((extras or {}).items()):
        _publish(index_path.with_name(name), data, overwrite=overwrite, durable=durable)
    if index_bytes is not None:
        _publish(index_path, index_bytes, overwrite=overwrite, durable=durable)
    return Publication(True)


def check_published(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Whether ``path`` already holds ``data``; another file there is refused unless ``overwrite``."""
    if path.is_symlink():
        raise OutputError(f"{path}: a symbolic link; refusing to write through it")
    try:
        if path.read_bytes() == data:
            return True
    except (FileNotFoundError, IsADirectoryError):
        return False
    if not overwrite:
        raise OutputExistsError(f"{path} exists with other contents; use --force to replace it")
    return False


def _publish(path: Path, data: bytes, *, overwrite: bool, durable: bool) -> None:
    if not check_published(path, data, overwrite=overwrite):
        _replace_atomically(path, data, durable)


def _replace_atomically(path: Path, data: bytes, durable: bool) -> None:
    # The host is in the temporary name: on a folder shared between machines a bare pid cannot
    # tell another host's live publisher from a dead one, so a pid-based sweep must skip these.
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]
    tmp = path.with_name(f".{path.name}.netinit-h{host}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            if durable:
                os.fsync(folder)  # the shard renames we saw become durable before the index
            os.replace(tmp, path)
            if durable:
                os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{path}: cannot write the index: {exc.strerror or exc}") from exc
