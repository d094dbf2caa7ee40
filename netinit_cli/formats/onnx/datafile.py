"""The external data file of a written ONNX model: its name, the writer that appends aligned raw
tensors to it, and which data files an earlier output at the same path used."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from netinit_cli.commit import FileSet
from netinit_cli.errors import InputError
from netinit_cli.fileio import COPY_CHUNK, TEMP_TAG, EarlyWriteback, preallocate, remove_stale_temps
from netinit_cli.formats.onnx.checks import all_tensors
from netinit_cli.formats.onnx.external import location
from netinit_cli.model import Planned

ALIGNMENT = 4096  # page-aligned offsets let readers memory-map each tensor
PREALLOCATE_MIN_BYTES = 1 << 16  # smaller tensors are not worth a system call
DATA_NAME_DIGITS = 16  # hex digits of the data file's name (see data_file_name)


def data_file_name(
    out: Path,
    input_digest: str,
    plan: Sequence[Planned],
    provenance: dict[str, str],
    threshold: int,
    variant: int = 0,
) -> str:
    """``<output stem>.<16 hex digits>.data``: the name of the data file written beside ``out``.

    The digits are the start of a SHA-256 over everything the written model's bytes follow
    from: the input file's bytes, the provenance (seed, method, scope, versions, rules), each
    planned tensor (name, action, method, rule, dtype, shape, fans, expected moments) and the
    size threshold.  So the same input, method and seed give byte-identical outputs, while
    another run writing over the same output almost always gets another data file name.

    Why a name of its own for each write: the data file is renamed into place just before the
    model.  A crash between the two renames then leaves the previous model beside a data file
    it does not reference, so it still reads its own, unchanged data.  When the name is the
    same, so is everything the write starts from, and (generation being deterministic for a
    netinit version, which the provenance records) the new model's bytes are the previous
    model's.  Still, a data file is never written over: when the name is taken (by the output
    being replaced, or the input), ``variant`` 1, 2, … gives other digests, the first free one
    is used (:class:`~netinit_cli.commit.FileSet`).
    """
    recipe = {
        "layout": 1,  # bump when the way tensors are laid out in the data file changes
        "input": input_digest,
        "provenance": sorted(provenance.items()),
        "threshold": threshold,
        "plan": [
            [
                p.param.name,
                p.action.value,
                p.init,
                p.rule,
                p.param.dtype,
                [int(d) for d in p.param.shape],
                p.fan_in,
                p.fan_out,
                p.expected_mean,
                p.expected_std,
            ]
            for p in plan
        ],
    }
    if variant:
        recipe["variant"] = variant
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:DATA_NAME_DIGITS]
    return f"{_stem(out)}.{digest}.data"


def _stem(out: Path) -> str:
    return out.stem if out.suffix else out.name


def is_data_file_of(out: Path, path: Path) -> bool:
    """Whether ``path`` is named as :func:`data_file_name` names the data files of ``out``."""
    ours = re.escape(_stem(out)) + rf"\.[0-9a-f]{{{DATA_NAME_DIGITS}}}\.data"
    return (
        path.parent == (out.parent if str(out.parent) else Path("."))
        and re.fullmatch(ours, path.name) is not None
    )


def referenced_data_files(out: Path) -> set[str]:
    """The data files named as netinit names them for ``out`` that the model now at ``out``
    references (its other external files are not netinit's to remove)."""
    folder = out.parent if str(out.parent) else Path(".")
    try:
        candidates = {e.name for e in os.scandir(folder) if is_data_file_of(out, folder / e.name)}
    except OSError:
        return set()
    if not candidates:
        return set()  # the usual case: nothing to parse
    try:
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return set()
            previous = onnx.load_model_from_string(handle.read(1 << 31))
    except (OSError, DecodeError, RuntimeError, ValueError):
        return set()  # not a model (or unreadable): it references nothing
    referenced = {location(t) for t in all_tensors(previous) if t.data_location == TensorProto.EXTERNAL}
    return candidates & referenced


def remove_stale_data_temps(out: Path) -> None:
    """Remove the temporary data files that writers of netinit versions before the commit
    journal named after the data file (``.<stem>.<digits>.data.netinit-<pid>-….tmp``) and left
    when killed; temporary files are now named after the model, and removed with its own."""
    pattern = re.compile(
        r"\.(" + re.escape(_stem(out)) + rf"\.[0-9a-f]{{{DATA_NAME_DIGITS}}}\.data)" + re.escape(TEMP_TAG)
    )
    folder = out.parent if str(out.parent) else Path(".")
    with contextlib.suppress(OSError):
        names = {m.group(1) for e in os.scandir(folder) if (m := pattern.match(e.name))}
        for name in sorted(names):
            remove_stale_temps(folder / name)


class DataWriter:
    """Appends aligned raw tensors to the new data file, opened on first use."""

    def __init__(self, path: Path, threshold: int, names: Callable[[int], str]) -> None:
        self.path = path  # as written; committed as the first of ``names(k)`` that is free
        self.location = path.name
        self.names = names
        self.threshold = threshold
        self.files: FileSet | None = None
        self.handle: BinaryIO | None = None
        self.position = 0
        self.writeback: EarlyWriteback | None = None

    def _start(self, nbytes: int) -> BinaryIO:
        """The data file, padded to the next tensor's aligned offset, with the tensor's
        ``nbytes`` allocated there (see :func:`preallocate`)."""
        if self.handle is None:
            assert self.files is not None
            self.handle = self.files.member(self.names)
        pad = -self.position % ALIGNMENT
        if pad:
            self.handle.write(b"\0" * pad)
            self.position += pad
        if nbytes >= PREALLOCATE_MIN_BYTES:
            preallocate(self.handle.fileno(), self.position, nbytes, self.path)
        return self.handle

    def write_bytes(self, data: memoryview) -> int:
        handle = self._start(data.nbytes)
        offset = self.position
        handle.write(data)
        self.position += data.nbytes
        self._wrote(data.nbytes)
        return offset

    def reserve(self, nbytes: int) -> tuple[int, int]:
        """(fd, offset) where the next tensor (``nbytes``) goes, for a direct ``pwrite`` of its bytes."""
        handle = self._start(nbytes)
        handle.flush()
        return handle.fileno(), self.position

    def advance(self, nbytes: int) -> int:
        """Account for ``nbytes`` written directly at :meth:`reserve`'s offset; return that offset."""
        assert self.handle is not None
        offset = self.position
        self.position += nbytes
        self.handle.seek(self.position)
        self._wrote(nbytes)
        return offset

    def _wrote(self, nbytes: int) -> None:
        if self.writeback is None:
            assert self.handle is not None and self.files is not None
            self.writeback = EarlyWriteback(self.handle.fileno(), active=self.files.durable)
        self.writeback.wrote(nbytes)

    def finish(self) -> None:
        """Wait for the early writeback (before the data file is committed or closed)."""
        if self.writeback is not None:
            self.writeback.finish()

    def copy_from(self, source: BinaryIO, length: int) -> int:
        handle = self._start(length)
        offset = self.position
        remaining = length
        while remaining:
            chunk = source.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise InputError(f"external data ended {remaining} bytes early while copying")
            handle.write(chunk)
            remaining -= len(chunk)
        self.position += length
        self._wrote(length)
        return offset
