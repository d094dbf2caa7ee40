"""Low-level file output, below every format: atomic single and multi-file commits, destination
checks, temporary-file naming and cleanup, preallocation, ``pwrite``, kernel-side range copies
and early writeback.  Knows nothing about models or tensors beyond raw bytes."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from netinit_cli import libc
from netinit_cli.errors import InputError, OutputError, OutputExistsError

COPY_CHUNK = 16 << 20  # bytes per read/write when a range is copied through user space


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


# Temporary files are named ``.<output name>.netinit-<pid>-<random>.tmp`` in the output's folder:
# hidden, clearly ours, and tied to the process that wrote them.  A kill -9 (or power loss)
# leaves one behind; the next write to the same output removes those whose process is gone.
TEMP_TAG = ".netinit-"
TEMP_SUFFIX = ".tmp"


def temp_prefix(out: Path) -> str:
    return f".{out.name}{TEMP_TAG}{os.getpid()}-"


def _folder(out: Path) -> Path:
    return out.parent if str(out.parent) else Path(".")


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete temporary files left for ``out`` by netinit processes that no longer run
    (killed mid-write).  Only files named by :func:`temp_prefix` whose process id is not alive
    on this machine are touched.  (On a folder shared between machines, a live writer on another
    host looks dead from here: do not run two netinits on one output across hosts.)"""
    removed: list[Path] = []
    head = f".{out.name}{TEMP_TAG}"
    with contextlib.suppress(OSError):
        for entry in os.scandir(_folder(out)):
            if not (entry.name.startswith(head) and entry.name.endswith(TEMP_SUFFIX)):
                continue
            pid_text = entry.name[len(head) :].split("-", 1)[0]
            if not pid_text.isdigit() or _alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _make_temp(out: Path) -> tuple[int, Path]:
    parent = _folder(out)
    remove_stale_temps(out)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=TEMP_SUFFIX, dir=parent)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create a file in {parent}: {exc.strerror or exc}") from exc
    return fd, Path(tmp_name)


def _write_failed(out: Path, exc: OSError) -> OutputError:
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
        raise _write_failed(target, OSError(code, os.strerror(code)))


class _OutputFile(io.BufferedRandom):
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
            raise _write_failed(self.target, exc) from exc

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise _write_failed(self.target, exc) from exc


@contextlib.contextmanager
def atomic_output(out: Path, *, overwrite: bool, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a temporary file in ``out``'s folder; on success fsync it and rename it onto ``out``.

    On any exception the temporary file is removed and ``out`` is left as it was, so a reader
    sees either no/old output or the complete new file, never a partial one.  A kill -9 leaves
    at most the temporary file (see :func:`remove_stale_temps`).  ``durable=False`` skips the
    fsyncs of the file and its folder: the rename is still atomic for readers and against a
    killed writer, but after a power loss or an OS crash the output may be empty or partial.
    """
    check_destination(out, overwrite=overwrite)
    fd, tmp = _make_temp(out)
    try:
        with _OutputFile(fd, out) as handle:
            yield cast(BinaryIO, handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        # Re-check right before the rename: the destination may have appeared meanwhile.  A
        # symlink planted after this check is replaced, not followed: rename() acts on the
        # folder entry, never on the link's target.
        check_destination(out, overwrite=overwrite)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, out)
        if durable:
            _fsync_dir(_folder(out))
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _write_failed(out, exc) from exc
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

    If a rename fails part-way (an exception, not a kill), the files already renamed are rolled
    back: an overwritten destination gets its previous content again (kept through a hard link
    until the commit ends), a new one is removed.  A kill -9 *between* two renames cannot be
    rolled back: the data files are then new while the model or index is still the old one.  A
    backend that overwrites should therefore give its data files names the old model does not
    use, so an old model never points at new data.
    """

    def __init__(self, *, overwrite: bool, durable: bool = True) -> None:
        self.overwrite = overwrite
        self.durable = durable  # False: no fsync (see atomic_output)
        self._files: list[tuple[Path, Path, BinaryIO]] = []

    def __enter__(self) -> AtomicFileSet:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def open(self, out: Path) -> BinaryIO:
        check_destination(out, overwrite=self.overwrite)
        try:
            fd, tmp = _make_temp(out)
        except OutputError:
            self.abort()
            raise
        handle = cast(BinaryIO, _OutputFile(fd, out))
        self._files.append((out, tmp, handle))
        return handle

    def commit(self) -> list[Path]:
        renamed: list[tuple[Path, Path | None]] = []  # (destination, backup of its old content)
        backups: list[Path] = []
        current = Path(".")
        try:
            for out, _, handle in self._files:
                current = out
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
                handle.close()
            for out, _, _ in self._files:
                current = out
                check_destination(out, overwrite=self.overwrite)
            mode = 0o644 & ~_umask()
            for out, tmp, _ in self._files:
                current = out
                os.chmod(tmp, mode)
                backup = self._keep_old(current)
                if backup is not None:
                    backups.append(backup)
                os.replace(tmp, current)
                renamed.append((current, backup))
            for folder in {_folder(out) for out, _, _ in self._files} if self.durable else ():
                _fsync_dir(folder)
        except OSError as exc:
            self._roll_back(renamed)
            self.abort()
            raise _write_failed(current, exc) from exc
        except BaseException:
            self._roll_back(renamed)
            self.abort()
            raise
        finally:
            for backup in backups:
                with contextlib.suppress(OSError):
                    backup.unlink()
        done = [out for out, _, _ in self._files]
        self._files = []
        return done

    def _keep_old(self, out: Path) -> Path | None:
        """A hard link to ``out``'s current content, so a failed commit can put it back."""
        if not out.is_file() or out.is_symlink():
            return None
        backup = _folder(out) / f"{temp_prefix(out)}old-{os.urandom(4).hex()}{TEMP_SUFFIX}"
        try:
            os.link(out, backup)
        except OSError:
            return None  # a filesystem without hard links: no rollback for this file
        return backup

    @staticmethod
    def _roll_back(renamed: list[tuple[Path, Path | None]]) -> None:
        for out, backup in reversed(renamed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, out)
                else:
                    out.unlink()

    def abort(self) -> None:
        for _, tmp, handle in self._files:
            with contextlib.suppress(OSError, ValueError):
                handle.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._files = []


def pwrite_all(fd: int, values: np.ndarray, offset: int, target: Path) -> None:
    """Write ``values``' bytes at ``offset`` (``pwrite`` may write less than asked)."""
    view = values.reshape(-1).view(np.uint8).data
    try:
        while view.nbytes:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    except OSError as exc:
        raise _write_failed(target, exc) from exc


def write_all(fd: int, data: bytes | memoryview, target: Path) -> None:
    """Write all of ``data`` at ``fd``'s current position (``write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    try:
        while view.nbytes:
            done = os.write(fd, view)
            view = view[done:]
    except OSError as exc:
        raise OutputError(f"{target}: write failed: {exc.strerror or exc}") from exc


def open_source(path: Path) -> int:
    """A read-only descriptor of an input file, for :func:`copy_range`."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc


_copy_file_range_works = hasattr(os, "copy_file_range")


def copy_range(src_fd: int, offset: int, count: int, dst_fd: int, target: Path) -> None:
    """Append ``count`` bytes of ``src_fd`` from ``offset`` to ``dst_fd`` at its current position.

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
            raise InputError(
                f"{target}: the input ended early at byte {offset}; was it changed while reading?"
            )
        offset += done
        count -= done
    buffer = memoryview(bytearray(min(count, COPY_CHUNK))) if count > 0 else memoryview(b"")
    while count > 0:
        got = os.preadv(src_fd, [buffer[: min(count, len(buffer))]], offset)
        if got == 0:
            raise InputError(
                f"{target}: the input ended early at byte {offset}; was it changed while reading?"
            )
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


@contextlib.contextmanager
def atomic_folder(out: Path, *, overwrite: bool, durable: bool = True) -> Iterator[Path]:
    """Yield a new hidden folder beside ``out`` to write into; on success fsync it and put it in place.

    A new ``out`` appears by ``renameat2(RENAME_NOREPLACE)``; an existing one (``overwrite``) is
    swapped with ``renameat2(RENAME_EXCHANGE)``, then the old folder, now under the temporary name,
    is removed: a reader sees the complete old or the complete new folder at every instant, and a
    killed run leaves only a temporary folder (named like temporary files), which the next run for
    ``out`` removes.  No renameat2 (not Linux, some filesystems): a check, then ``os.rename``.
    """
    exists = out.exists() or out.is_symlink()
    if out.is_symlink() or (exists and not out.is_dir()):
        raise OutputError(f"{out} is a file or a symbolic link; give a folder path with -o")
    if exists and not overwrite:
        raise OutputExistsError(f"{out} already exists; use --force to replace it or -o to choose another")
    parent, head = _folder(out), f".{out.name}{TEMP_TAG}"
    if not parent.is_dir():
        raise OutputError(f"{out}: the folder {parent} does not exist; create it first")
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):  # folders left by killed runs
            pid = entry.name[len(head) :].split("-", 1)[0]
            ours = entry.name.startswith(head) and entry.name.endswith(TEMP_SUFFIX) and pid.isdigit()
            if ours and entry.is_dir(follow_symlinks=False) and not _alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
    tmp, aside = (parent / f"{temp_prefix(out)}{os.urandom(4).hex()}{TEMP_SUFFIX}" for _ in range(2))
    try:
        os.mkdir(tmp)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create a folder in {parent}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        for path in [*(Path(e.path) for e in os.scandir(tmp) if e.is_file()), tmp] if durable else []:
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        rename2 = libc.function("renameat2", "isisI")  # -100 AT_FDCWD; RENAME_NOREPLACE 1, _EXCHANGE 2
        code = errno.ENOSYS if rename2 is None else 0
        if rename2 is not None and rename2(
            -100, os.fsencode(tmp), -100, os.fsencode(out), 2 if exists else 1
        ):
            code = libc.last_errno()
        if code == errno.EEXIST or (code in (errno.ENOSYS, errno.EINVAL) and not exists and out.exists()):
            raise OutputExistsError(f"{out} appeared while netinit was writing it; nothing was replaced")
        if code in (errno.ENOSYS, errno.EINVAL):  # no renameat2 here: a plain rename (see above)
            if exists:
                os.rename(out, aside)
            os.rename(tmp, out)
        elif code:
            raise OSError(code, os.strerror(code))
        shutil.rmtree(aside if code else tmp, ignore_errors=True)  # the old folder, if any
        if durable:
            _fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(out, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
