"""Files named by options and read whole or streamed (``--config``, LSUV's ``--data``): regular
files only.

A FIFO would block the read forever, a device (``/dev/zero``) would never end, and opening some
devices has effects of its own.  The path is checked before it is opened, so a device is never
opened, and the descriptor again after a non-blocking open, so a FIFO swapped in between cannot
hang the read.  Problems are :class:`~netinit_cli.errors.UsageError`\\ s naming the option.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from netinit_cli.errors import UsageError

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


def open_regular(path: str | os.PathLike[str], where: str) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (``where`` names the option); an
    ``OSError`` (no such file, no permission) is the caller's to word."""
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise UsageError(f"{where}: not a regular file ({file_kind(before.st_mode)})")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    handle = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise UsageError(f"{where}: not a regular file ({file_kind(mode)})")
    return handle


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
