"""Low-level file output, below every format: temporary-file naming and cleanup, preallocation,
``pwrite``, kernel-side range copies and early writeback.  Commits are :mod:`netinit_cli.commit`'s,
the destination policy :mod:`netinit_cli.destination`'s.  Knows nothing about models or tensors
beyond raw bytes."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from netinit_cli import libc
from netinit_cli.destination import folder_of
from netinit_cli.errors import OutputError
from netinit_cli.inputfile import changed

COPY_CHUNK = 16 << 20  # bytes per read/write when a range is copied through user space


# Temporary files are named ``.<output name>.netinit-<pid>-<random>.tmp`` in the output's folder:
# hidden, clearly ours, and tied to the process that wrote them.  A kill -9 (or power loss)
# leaves one behind; the next write to the same output removes those whose process is gone.
TEMP_TAG = ".netinit-"
TEMP_SUFFIX = ".tmp"


def temp_prefix(out: Path) -> str:
    return f".{out.name}{TEMP_TAG}{os.getpid()}-"


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete temporary files left for ``out`` by netinit processes that no longer run
    (killed mid-write).  Only files named by :func:`temp_prefix` whose process id is not alive
    on this machine are touched.  (On a folder shared between machines, a live writer on another
    host looks dead from here: do not run two netinits on one output across hosts.)"""
    removed: list[Path] = []
    head = f".{out.name}{TEMP_TAG}"
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder_of(out)):
            if not (entry.name.startswith(head) and entry.name.endswith(TEMP_SUFFIX)):
                continue
            pid_text = entry.name[len(head) :].split("-", 1)[0]
            if not pid_text.isdigit() or alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def make_temp(out: Path) -> tuple[int, Path]:
    """A new temporary file for ``out`` in its folder (stale ones of dead writers removed first)."""
    parent = folder_of(out)
    remove_stale_temps(out)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=TEMP_SUFFIX, dir=parent)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create a file in {parent}: {exc.strerror or exc}") from exc
    return fd, Path(tmp_name)


def write_failed(out: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason += " (free some space or choose another -o)"
    return OutputError(f"{out}: write failed: {reason}")


def _fallocate(fd: int, offset: int, length: int) -> int:
    """``fallocate(fd, 0, offset, length)``: 0, or the errno it failed with."""
    function = libc.function("fallocate64", "iiqq") or libc.function("fallocate", "iiqq")
    if function is None:
        return errno.ENOSYS
    return 0 if function(fd, 0, offset, length) == 0 else libc.last_errno()


# The filesystem cannot preallocate (FUSE, some network filesystems, old kernels' tmpfs):
# the blocks are then allocated as the pages are written back, as without preallocation.
_NOT_SUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.EINTR}


def preallocate(fd: int, offset: int, length: int, target: Path) -> None:
    """Allocate the blocks of bytes ``[offset, offset + length)`` of an output before writing them.

    Each output's size is known before its bytes are generated, and allocating its blocks at
    once costs the filesystem far less than allocating them while the pages are written back.
    A full disk is reported here, before anything is generated.  Not
    ``os.posix_fallocate``: where the filesystem lacks support, glibc emulates it by writing
    every block.
    """
    if length <= 0:
        return
    code = _fallocate(fd, offset, length)
    if code and code not in _NOT_SUPPORTED:
        raise write_failed(target, OSError(code, os.strerror(code)))


class OutputFile(io.BufferedRandom):
    """A temporary output file whose write errors (disk full, file too large, I/O error) are
    :class:`OutputError` naming the destination, not a bare ``OSError`` (which the CLI would
    report as an internal error)."""

    def __init__(self, fd: int, target: Path) -> None:
        super().__init__(io.FileIO(fd, "r+"))
        self.target = target

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise write_failed(self.target, exc) from exc

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise write_failed(self.target, exc) from exc


def pwrite_all(fd: int, values: np.ndarray, offset: int, target: Path) -> None:
    """Write ``values``' bytes at ``offset`` (``pwrite`` may write less than asked)."""
    view = values.reshape(-1).view(np.uint8).data
    try:
        while view.nbytes:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    except OSError as exc:
        raise write_failed(target, exc) from exc


def write_all(fd: int, data: bytes | memoryview, target: Path) -> None:
    """Write all of ``data`` at ``fd``'s current position (``write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    try:
        while view.nbytes:
            done = os.write(fd, view)
            view = view[done:]
    except OSError as exc:
        raise OutputError(f"{target}: write failed: {exc.strerror or exc}") from exc


_copy_file_range_works = hasattr(os, "copy_file_range")


def copy_range(
    src_fd: int, offset: int, count: int, dst_fd: int, target: Path, *, source: Path | None = None
) -> None:
    """Append ``count`` bytes of ``src_fd`` (the file ``source``, named if it turns out shorter)
    from ``offset`` to ``dst_fd`` at its current position.

    ``copy_file_range`` copies inside the kernel (no user-space buffer, nothing mapped into our
    RSS); where it is unavailable (other OS, old kernel, some filesystems) a bounded pread/write
    loop of ``COPY_CHUNK`` bytes is used.
    """
    global _copy_file_range_works
    while count > 0 and _copy_file_range_works:
        try:
            done = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
                raise OutputError(f"{target}: write failed: {exc.strerror}") from exc
            _copy_file_range_works = False  # EXDEV, ENOSYS, EINVAL, EOPNOTSUPP: use the loop
            break
        if done == 0:
            raise changed(source or target, f"it ended at byte {offset}, {count} bytes early")
        offset += done
        count -= done
    buffer = memoryview(bytearray(min(count, COPY_CHUNK))) if count > 0 else memoryview(b"")
    while count > 0:
        got = os.preadv(src_fd, [buffer[: min(count, len(buffer))]], offset)
        if got == 0:
            raise changed(source or target, f"it ended at byte {offset}, {count} bytes early")
        write_all(dst_fd, buffer[:got], target)
        offset += got
        count -= got


class EarlyWriteback:
    """Starts the kernel's writeback of an output while it is still being written.

    Every :data:`WRITEBACK_BYTES` written, a background thread (at most one at a time) asks the
    kernel to start writing the file's dirty pages to disk: ``sync_file_range(WRITE)`` on Linux,
    which queues them and returns, else ``fdatasync`` every :data:`FDATASYNC_BYTES`.  The disk then
    works during generation and the fsync of the commit, which alone makes the file durable and
    reports any error, finds little left to do.  Call :meth:`finish` before the file is closed.
    Not ``active`` (an output written without fsync): nothing is done.
    """

    def __init__(self, fd: int, *, active: bool = True) -> None:
        self.fd = fd
        self.active = active
        self.pending = 0
        self.thread: threading.Thread | None = None
        self.start_writeback = _sync_file_range_function()
        self.every = WRITEBACK_BYTES if self.start_writeback is not None else FDATASYNC_BYTES

    def wrote(self, nbytes: int) -> None:
        self.pending += nbytes
        if (
            not self.active
            or self.pending < self.every
            or (self.thread is not None and self.thread.is_alive())
        ):
            return
        self.pending = 0
        self.thread = threading.Thread(target=self._sync, name="netinit-writeback", daemon=True)
        self.thread.start()

    def _sync(self) -> None:
        if self.start_writeback is not None:
            self.start_writeback(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # errors: the final fsync's
            return
        with contextlib.suppress(OSError):
            getattr(os, "fdatasync", os.fsync)(self.fd)

    def finish(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


# sync_file_range only queues pages, so it can run often; fdatasync also waits and flushes the
# disk's cache, so it runs four times less often.
WRITEBACK_BYTES = 32 << 20
FDATASYNC_BYTES = 128 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _sync_file_range_function() -> Callable[..., int] | None:
    """Linux's ``sync_file_range(2)``, or None."""
    return libc.function("sync_file_range", "iqqI")
