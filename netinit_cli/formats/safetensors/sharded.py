"""Sharded outputs: how a new bundle is split, and what one worker of a ``--shard K/N`` run writes.

The writer lays out every file of the bundle (names, headers, sizes) and the index from the plan
alone, so every worker computes the same layout.  :func:`write_worker` then writes the files
:func:`netinit_cli.shard.assign` gives worker K, each committed on its own (temporary file, fsync,
rename) as soon as it is complete, and publishes the index once every file it names is complete.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from netinit_cli.commit import atomic_output
from netinit_cli.errors import OutputError, OutputExistsError, UsageError
from netinit_cli.formats.base import WriteResult
from netinit_cli.formats.safetensors.header import FILE_SUFFIX, INDEX_SUFFIX
from netinit_cli.shard import (
    PLAN_KEY,
    BrokenShardError,
    ShardMismatchError,
    assign,
    check_published,
    existing_shard,
    metadata_of,
    mismatch,
    publish_index_if_complete,
)

#: A new bundle from a manifest is split like huggingface_hub's ``split_state_dict_into_shards_factory``
#: with the Hub's customary 5 GB files (its ``MAX_SHARD_SIZE``).
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9

_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str) -> int:
    """Bytes from ``"1234"``, ``"500MB"``, ``"5GB"`` (powers of 10) or ``"2GiB"`` (powers of 2)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]I?B)?\s*", text, re.IGNORECASE)
    if match is None or (match[2] is None and "." in match[1]) or float(match[1]) <= 0:
        raise UsageError(
            f"--max-shard-size {text!r}: give a positive size in bytes or with KB, MB, GB, TB (powers of 10) "
            "or KiB, MiB, GiB, TiB (powers of 2), e.g. 5GB"
        )
    return int(match[1]) if match[2] is None else max(1, int(float(match[1]) * _SIZE_UNITS[match[2].upper()]))


def split_by_size(sizes: Sequence[int], max_size: int) -> list[list[int]]:
    """Indices of ``sizes`` per file, in order: a file is closed when the next tensor would take it
    over ``max_size``; a tensor larger than ``max_size`` gets a file of its own (placed, as the Hub
    places it, before the file being filled)."""
    files: list[list[int]] = []
    current: list[int] = []
    current_size = 0
    for index, size in enumerate(sizes):
        if size > max_size:
            files.append([index])
            continue
        if current and current_size + size > max_size:
            files.append(current)
            current, current_size = [], 0
        current.append(index)
        current_size += size
    if current:
        files.append(current)
    return files


def numbered_names(out_index: Path, count: int) -> list[str]:
    """``model.safetensors.index.json`` → ``model-00001-of-0000N.safetensors``, …"""
    if not out_index.name.endswith(INDEX_SUFFIX) or out_index.name == INDEX_SUFFIX:
        raise UsageError(
            f"{out_index}: a new checkpoint is one file (-o NAME{FILE_SUFFIX}) or a sharded bundle "
            f"(-o NAME{INDEX_SUFFIX})"
        )
    stem = out_index.name[: -len(INDEX_SUFFIX)]
    return [f"{stem}-{number:05d}-of-{count:05d}{FILE_SUFFIX}" for number in range(1, count + 1)]


@dataclass(frozen=True)
class PlannedFile:
    """One file of a bundle as every worker plans it: its name beside the index and its size."""

    name: str
    size: int


def write_worker(
    out_index: Path,
    files: Sequence[PlannedFile],
    index_bytes: bytes | None,
    expected: Mapping[str, str],
    shard: tuple[int, int],
    write_file: Callable[[int, BinaryIO], None],
    *,
    overwrite: bool,
    durable: bool,
    extras: Mapping[str, bytes] | None = None,
) -> WriteResult:
    """Worker ``shard = (k, n)``: write my files of ``files`` (``write_file(i, handle)`` writes the
    i-th into a temporary file, committed here), skip those already complete, then publish.

    Every file present is checked first, so a worker started with other options (another seed,
    method, version, layout) stops before it writes anything.  With ``overwrite`` (``--force``) a
    file of another run is replaced by its own worker, and the index of that run is removed
    first, so no reader sees a bundle mixing two runs.  ``extras`` (a model folder's config.json:
    name → bytes) are published with the index, just before it; ``index_bytes=None``: the output
    is one file (``out_index`` is its path), which worker 0 writes, and only the extras follow it.
    """
    k, n = shard
    folder = out_index.parent
    mine = assign([file.size for file in files], n)[k]
    complete, stale = set(), []
    for number, file in enumerate(files):
        try:
            if existing_shard(folder / file.name, file.size, expected):
                complete.add(number)
        except (ShardMismatchError, BrokenShardError):
            if not overwrite:
                raise
            stale.append(file.name)
    for name, data in (extras or {}).items():  # refused now, not after the files are written
        check_published(folder / name, data, overwrite=overwrite)
    if index_bytes is not None:
        if not overwrite:
            _check_other_runs(out_index, {file.name for file in files}, expected)
        _check_index(out_index, index_bytes, overwrite=overwrite, remove=bool(stale))
    written: list[Path] = []
    for number in mine:
        if number in complete:
            continue
        with atomic_output(folder / files[number].name, overwrite=overwrite, durable=durable) as handle:
            write_file(number, handle)
        written.append(folder / files[number].name)
    sizes = {file.name: file.size for file in files}
    status = publish_index_if_complete(
        out_index, index_bytes, sizes, expected, overwrite=overwrite, durable=durable, extras=extras
    )
    published = [*(folder / name for name in sorted(extras or {})), *([out_index] if index_bytes else [])]
    skipped = [files[number].name for number in mine if number in complete]
    notes = [
        f"worker {k} of {n}: wrote {len(written)} of its {len(mine)} file(s)"
        + (f", {len(skipped)} already complete ({', '.join(skipped)})" if skipped else "")
    ]
    if index_bytes is None:
        if n > 1:
            notes.append(
                f"the model is one file, {files[0].name}: worker 0 of {n} writes it, the others nothing"
            )
    elif status.published:
        notes.append(f"every file of the bundle is complete: {out_index.name} is published")
    else:
        waiting = [*status.waiting, *status.stale]
        notes.append(
            f"{out_index.name} is not published yet: {len(waiting)} file(s) of other workers are not "
            f"complete ({', '.join(waiting[:3])}{', …' if len(waiting) > 3 else ''}); the last worker "
            "to finish publishes it"
        )
    return WriteResult(
        paths=[*written, *(published if status.published else [])],
        bytes_written=sum(sizes[path.name] for path in written),
        notes=notes,
    )


def _check_other_runs(out_index: Path, planned: set[str], expected: Mapping[str, str]) -> None:
    """A file of this output's name that another plan wrote (another split gives other names)."""
    name = out_index.name
    stem = name[: -len(INDEX_SUFFIX)] if name.endswith(INDEX_SUFFIX) else name.removesuffix(".json")
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(out_index.parent), key=lambda entry: entry.name):
            if (
                entry.name in planned
                or not entry.name.startswith(stem)
                or not entry.name.endswith(FILE_SUFFIX)
            ):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            found = metadata_of(Path(entry.path), entry.stat().st_size)
            if PLAN_KEY in found and found[PLAN_KEY] != expected[PLAN_KEY]:
                raise mismatch(Path(entry.path), found, PLAN_KEY, expected[PLAN_KEY])


def _check_index(out_index: Path, index_bytes: bytes, *, overwrite: bool, remove: bool) -> None:
    """An index of another run: refused without ``overwrite``, removed with it when ``remove``."""
    try:
        present = out_index.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return
    except OSError as exc:
        raise OutputError(f"{out_index}: cannot read the index in place: {exc.strerror}") from exc
    if present == index_bytes and not remove:
        return
    if not overwrite:
        raise OutputExistsError(f"{out_index} exists with other contents; use --force to replace it")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out_index)
