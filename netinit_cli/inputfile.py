"""Inputs read through one open file.

A model is read in steps (header or graph first, tensor data later, maybe minutes apart), and
another process may replace it meanwhile (``netinit --in-place`` renames a new file over it) or
shrink it.  Every step therefore reads through the descriptor opened for the first one: a rename
does not change what an open descriptor reads, so the steps see one file.  Reads are ``pread``
into buffers, never memory maps: a mapped file that shrinks kills the reader with SIGBUS, a short
``pread`` is an :class:`InputError` ("changed size while being read").
"""

from __future__ import annotations

import math
import os
import stat
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netinit_cli.errors import InputError

FileState = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def file_state(info: os.stat_result) -> FileState:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def changed(path: Path | str, detail: str, *, size: bool = True) -> InputError:
    """The one message for an input that changed while netinit read it."""
    what = "changed size" if size else "changed"
    return InputError(
        f"{path}: the file {what} while being read ({detail}); another process is writing it: "
        "run netinit again once it is done"
    )


def read_exact(fd: int, offset: int, out: memoryview, path: Path | str) -> None:
    """Fill ``out`` with the bytes of ``fd`` from ``offset``; a short read means the file shrank."""
    view = out.cast("B") if out.format != "B" or out.ndim != 1 else out
    done = 0
    while done < len(view):
        try:
            got = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
        if got == 0:
            raise changed(path, f"it ended at byte {offset + done}, {len(view) - done} bytes early")
        done += got


Elements = Sequence[tuple[int, int]]  # (start, count) ranges of a flattened tensor
# A tensor this small is read whole even when only some elements are asked for: one pread costs
# less than the dozens a sample of scattered elements takes.
WHOLE_BYTES = 1 << 20


def pread_array(
    fd: int,
    path: Path | str,
    offset: int,
    dtype: np.dtype,
    shape: tuple[int, ...],
    elements: Elements | None = None,
) -> np.ndarray:
    """The read-only array of ``shape`` x ``dtype`` stored from byte ``offset`` of ``fd``.

    With ``elements``, only those ranges of a tensor over :data:`WHOLE_BYTES` are read and the rest
    is zeros: a sample of a tensor of any size costs its pages only (``np.zeros`` memory is not
    allocated until it is written).
    """
    count = math.prod(shape)
    size = dtype.itemsize
    if elements is None or count * size <= WHOLE_BYTES:
        raw = np.empty(count * size, np.uint8)
        read_exact(fd, offset, raw.data, path)
    else:
        raw = np.zeros(count * size, np.uint8)
        for first, length in elements:
            start, stop = max(first, 0), min(first + length, count)
            if start < stop:
                read_exact(fd, offset + start * size, raw.data[start * size : stop * size], path)
    raw.flags.writeable = False
    return raw.view(dtype).reshape(shape)


class InputFile:
    """A regular input file opened once; ``pread`` reads from it, whatever happens to its path."""

    def __init__(self, path: Path, *, follow_symlinks: bool = True) -> None:
        self.path = path
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        if not follow_symlinks:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # never open a device or a FIFO
                raise InputError(f"{path}: not a regular file")
            # O_NONBLOCK: should a FIFO replace the file meanwhile, opening it must not wait.
            fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise InputError(f"{path}: not a regular file")
        self.fd = fd
        self.state = file_state(info)
        self._closer = weakref.finalize(self, os.close, fd)

    @property
    def size(self) -> int:
        """The size when opened (every check of offsets is against it)."""
        return self.state[2]

    def read(self, offset: int, count: int) -> bytes:
        buffer = bytearray(count)
        read_exact(self.fd, offset, memoryview(buffer), self.path)
        return bytes(buffer)

    def check_unchanged(self) -> None:
        """Refuse a file written in place since it was opened (same inode, new size or time)."""
        now = file_state(os.fstat(self.fd))
        if now != self.state:
            detail = f"{self.state[2]} bytes when opened, {now[2]} now"
            raise changed(self.path, detail, size=now[2] != self.state[2])

    def close(self) -> None:
        self._closer()
