"""Files netinit reads: models through one open file, and files named by options, regular only.

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
from typing import BinaryIO

import numpy as np

from netinit_cli.errors import InputError, NetinitError, UsageError

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
        try:
            fd = open_regular_fd(path, str(path), InputError, follow_symlinks=follow_symlinks)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
        info = os.fstat(fd)
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


# Files named by options (``--config``, LSUV's ``--data``): read whole or streamed.

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def open_regular_fd(
    path: str | os.PathLike[str],
    where: str,
    error: type[NetinitError],
    *,
    follow_symlinks: bool = True,
) -> int:
    """A read-only descriptor of ``path`` if it is a regular file, else ``error`` naming ``where``.

    A FIFO would block a read forever, a device (``/dev/zero``) would never end, and opening some
    devices has effects of their own.  The path is checked before it is opened, so a device is
    never opened, and the descriptor again after a non-blocking open, so a FIFO swapped in between
    cannot hang the read.  An ``OSError`` (no such file, no permission) is the caller's to word.
    """
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise error(f"{where}: not a regular file ({file_kind(before.st_mode)})")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{where}: not a regular file ({file_kind(mode)})")
    return fd


def open_regular(path: str | os.PathLike[str], where: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (``where`` names the option)."""
    return os.fdopen(open_regular_fd(path, where, UsageError), "rb")


def read_regular(path: Path, where: str, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (``what`` it should be
    is named when it is larger)."""
    try:
        with open_regular(path, where) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise UsageError(f"{where}: {size:,} bytes, more than {what}'s {limit:,}")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{where}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"{where}: more than {what}'s {limit:,} bytes")
    return data
