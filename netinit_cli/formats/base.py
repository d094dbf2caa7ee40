"""What every format backend provides, and the atomic-output helper they all write through.

A backend (``onnx_io``, ``safetensors_io``) opens a model file, lists its stored tensors as
classified :class:`~netinit_cli.model.Param` records, reads a kept tensor's bytes lazily, and
writes a new file in which each planned tensor is produced on demand, one at a time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from netinit_cli.errors import OutputError, OutputExistsError
from netinit_cli.model import Param, Planned

# Produces the values of one planned tensor, already in the tensor's own dtype and shape,
# C-contiguous.  Called at most once per tensor, in write order.
Produce = Callable[[Planned], np.ndarray]


@dataclass
class WriteResult:
    paths: list[Path]  # every file written (model, external data, shards, index)
    bytes_written: int = 0
    notes: list[str] = field(default_factory=list)


class ModelFile(Protocol):
    """An opened model.  ``params`` are classified; nothing but headers has been read."""

    kind: str  # "onnx" or "safetensors"
    path: Path
    params: list[Param]
    metadata: dict[str, str]
    notes: list[str]  # warnings found while reading/classifying (shown under the table)

    def read_array(self, name: str) -> np.ndarray:
        """The stored values of a tensor that has data (memory-mapped where possible)."""
        ...

    def default_output(self) -> Path:
        """Beside the input, with ``.init`` before the suffix (model.init.onnx)."""
        ...

    def write(
        self,
        out: Path,
        plan: Sequence[Planned],
        produce: Produce,
        provenance: dict[str, str],
        *,
        overwrite: bool,
    ) -> WriteResult:
        """Write a new model to ``out``: planned FILL tensors from ``produce``, every other
        tensor, node, attribute and metadata entry byte-identical.  Atomic (see
        :func:`atomic_output`).  ``provenance`` goes into the file's metadata."""
        ...


def with_init_suffix(path: Path, suffix: str) -> Path:
    """model.onnx → model.init.onnx; model.safetensors.index.json → model.init.safetensors.index.json."""
    name = path.name
    if name.endswith(suffix):
        return path.with_name(name[: -len(suffix)] + ".init" + suffix)
    return path.with_name(name + ".init")


def check_destination(out: Path, *, overwrite: bool, follow_symlinks: bool = False) -> None:
    """Refuse an existing output without ``overwrite``, and a planted symlink always
    (unless ``follow_symlinks``): we replace the link's target folder entry, never write through it."""
    if out.is_symlink() and not follow_symlinks:
        raise OutputError(
            f"{out}: the output path is a symbolic link; refusing to write through it "
            "(remove the link or choose another -o)"
        )
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} already exists; use --force to overwrite it or -o to choose another path"
        )
    if out.exists() and out.is_dir():
        raise OutputError(f"{out} is a directory; give a file path with -o")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: the folder {parent} does not exist; create it first")


@contextlib.contextmanager
def atomic_output(out: Path, *, overwrite: bool) -> Iterator[BinaryIO]:
    """Yield a temporary file in ``out``'s folder; on success fsync it and rename it onto ``out``.

    On any exception the temporary file is removed and ``out`` is left as it was, so a reader
    sees either no/old output or the complete new file, never a partial one.
    """
    check_destination(out, overwrite=overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create a file in {parent}: {exc.strerror}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # Re-check right before the rename: the destination may have appeared meanwhile.
        check_destination(out, overwrite=overwrite)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, out)
        _fsync_dir(parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"{out}: write failed: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicFileSet:
    """Several outputs that appear together (model + external data, shards + index).

    ``open(path)`` gives a temporary file beside ``path``; ``commit()`` fsyncs every one and
    renames them into place, the files in ``open`` order with the *last opened* renamed last
    (open the model or index last, so it never points at data that is not there yet).
    ``abort()`` (or leaving a ``with`` block by an exception) removes every temporary file.
    """

    def __init__(self, *, overwrite: bool) -> None:
        self.overwrite = overwrite
        self._files: list[tuple[Path, Path, BinaryIO]] = []

    def __enter__(self) -> AtomicFileSet:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def open(self, out: Path) -> BinaryIO:
        check_destination(out, overwrite=self.overwrite)
        parent = out.parent if str(out.parent) else Path(".")
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
        except OSError as exc:
            self.abort()
            raise OutputError(f"{out}: cannot create a file in {parent}: {exc.strerror}") from exc
        handle = os.fdopen(fd, "w+b")
        self._files.append((out, Path(tmp_name), handle))
        return handle

    def commit(self) -> list[Path]:
        try:
            for _, _, handle in self._files:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            for out, _, _ in self._files:
                check_destination(out, overwrite=self.overwrite)
            mode = 0o644 & ~_umask()
            for out, tmp, _ in self._files:
                os.chmod(tmp, mode)
                os.replace(tmp, out)
            for folder in {out.parent for out, _, _ in self._files}:
                _fsync_dir(folder if str(folder) else Path("."))
        except OSError as exc:
            self.abort()
            raise OutputError(f"write failed: {exc.strerror or exc}") from exc
        except BaseException:
            self.abort()
            raise
        done = [out for out, _, _ in self._files]
        self._files = []
        return done

    def abort(self) -> None:
        for _, tmp, handle in self._files:
            with contextlib.suppress(OSError, ValueError):
                handle.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._files = []
