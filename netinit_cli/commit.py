"""Committing outputs: one file (:func:`atomic_output`), or a *primary* file (an ONNX model, a
shard index) with the *member* files it names (the data file, the shards) (:class:`FileSet`).

A reader (which takes no lock) sees, at every instant and after a kill at any point, either the
complete old output or the complete new one:

1. every file is written to a temporary file ``.<primary>.netinit-<pid>-<random>.tmp`` in the
   destination folder and fsynced;
2. members get names no file in the folder has (a name a format derives from the output's
   name, the ``k``-th variant for the smallest free ``k``): renaming them into place
   (``RENAME_NOREPLACE``) changes nothing the old primary names.  A name whose file already
   holds exactly the member's bytes counts as free, and that file is kept (an identical rerun
   over its own output keeps its names: same input and options, same files);
3. the primary is renamed last, over the old one (``--force``) or not over anything;
4. only then are the files the old primary named (and the new one does not) removed, those
   netinit wrote itself and that are not inputs of this run.

Steps 2–4 run under an exclusive ``flock`` of the destination folder, so concurrent writers of
one folder commit one after the other, and (when they rename a member or remove a file) listed
in a journal ``.<primary>.netinit-journal``: a run killed between two renames or removals leaves it, and the
next commit to the same output removes the files it lists that the primary then in place does
not name.  (Where ``flock`` is unsupported, commits are not serialized; the journal of a live
process is left alone.)

``NETINIT_KILL_AT_STEP=N`` (for tests) sends SIGKILL to the process right before the N-th
rename or removal of steps 2–4.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from netinit_cli import libc
from netinit_cli.destination import (
    Identity,
    check_destination,
    folder_of,
    keep_attributes,
    rename_noreplace,
)
from netinit_cli.errors import OutputError, OutputExistsError
from netinit_cli.fileio import TEMP_SUFFIX, TEMP_TAG, OutputFile, alive, make_temp, temp_prefix, write_failed

JOURNAL_SUFFIX = "journal"
COMPARE_CHUNK = 8 << 20
MAX_VARIANTS = 1000  # member name variants tried before giving up (each needs a file in the way)


def journal_path(primary: Path) -> Path:
    return folder_of(primary) / f".{primary.name}{TEMP_TAG}{JOURNAL_SUFFIX}"


class FileSet:
    """A primary file and the members it names, committed as described in the module docstring.

    ``names(primary)`` gives the file names a primary at that path names (called only on a
    regular file; a format may leave out names ``ours`` would refuse); ``ours(path)`` tells
    whether netinit wrote that file, so that it may go once no primary names it.  ``protected``
    are the input files: never replaced, never removed.
    """

    def __init__(
        self,
        primary: Path,
        *,
        overwrite: bool,
        durable: bool = True,
        protected: frozenset[Identity] = frozenset(),
        names: Callable[[Path], set[str]] = lambda path: set(),
        ours: Callable[[Path], bool] = lambda path: False,
        option: str = "-o",
    ) -> None:
        self.primary = primary
        self.folder = folder_of(primary)
        self.overwrite = overwrite
        self.durable = durable  # False: no fsync (see --no-fsync)
        self.protected = protected
        self.names = names
        self.ours = ours
        self.option = option  # the option that named the primary, for error hints
        self._members: list[tuple[Callable[[int], str], Path, BinaryIO]] = []
        self._primary: tuple[Path, BinaryIO] | None = None
        self.removed: list[str] = []  # names removed by the last commit

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def _temp(self) -> tuple[Path, BinaryIO]:
        try:
            fd, tmp = make_temp(self.primary)
        except OutputError:
            self.abort()
            raise
        return tmp, cast(BinaryIO, OutputFile(fd, self.primary))

    def member(self, name: Callable[[int], str]) -> BinaryIO:
        """A temporary file for a member whose ``k``-th name variant is ``name(k)``."""
        tmp, handle = self._temp()
        self._members.append((name, tmp, handle))
        return handle

    def open_primary(self) -> BinaryIO:
        """A temporary file for a primary streamed before the commit (no members to name)."""
        self._check()
        assert self._primary is None
        self._primary = self._temp()
        return self._primary[1]

    def commit(self, render: Callable[[list[str]], bytes] | None = None) -> list[Path]:
        """Commit; ``render(member names)`` gives the primary's bytes (unless it was streamed
        through :meth:`open_primary`).  Returns the member paths, then the primary."""
        renamed: list[Path] = []
        step = _Steps()
        try:
            for _, _, handle in self._members:
                self._close(handle)
            with _folder_lock(self.folder):
                self._recover(step)
                previous = self._check()
                old = self._named_now() if previous is not None else set()
                names, kept = self._free_names()
                if self._primary is None:
                    self._primary = self._temp()
                    self._primary[1].write(render(names) if render is not None else b"")
                primary_tmp, primary_handle = self._primary
                self._close(primary_handle)
                doomed = sorted(
                    name
                    for name in old - set(names)
                    if self._removable(name) and self.ours(self.folder / name)
                )
                # Nothing to undo or finish after a kill when no member is renamed and no file
                # removed: then no journal (one file's commit is one rename).
                journal = self._write_journal(names, doomed) if names or doomed else None
                for (_, tmp, _), name in zip(self._members, names, strict=True):
                    if name in kept:  # already there, byte for byte
                        tmp.unlink()
                        continue
                    keep_attributes(tmp, previous)
                    step()
                    rename_noreplace(tmp, self.folder / name)
                    renamed.append(self.folder / name)
                keep_attributes(primary_tmp, previous)
                self._rename_primary(primary_tmp, step)
                renamed.clear()
                self._sync_folder()
                for name in doomed:
                    step()
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.folder / name)
                    self.removed.append(name)
                if journal is not None:
                    journal.unlink()
        except OSError as exc:
            self._undo(renamed)
            raise write_failed(self.primary, exc) from exc
        except BaseException:
            self._undo(renamed)
            raise
        done = [self.folder / name for name in names] + [self.primary]
        self._members, self._primary = [], None
        return done

    def _check(self) -> os.stat_result | None:
        return check_destination(
            self.primary, overwrite=self.overwrite, protected=self.protected, option=self.option
        )

    def _close(self, handle: BinaryIO) -> None:
        handle.flush()
        if self.durable:
            os.fsync(handle.fileno())
        handle.close()

    def _free_names(self) -> tuple[list[str], set[str]]:
        """The members' names for the smallest ``k`` whose names are all free or hold exactly
        the member's bytes already (a rewrite identical to the output it replaces keeps its
        names, and its files); and those names of them that are kept as they are."""
        for k in range(MAX_VARIANTS):
            names = [name(k) for name, _, _ in self._members]
            if len(set(names)) != len(names) or self.primary.name in names:
                raise OutputError(
                    f"{self.primary}: the output's file names would collide; choose another name"
                )
            kept = set()
            for (_, tmp, _), name in zip(self._members, names, strict=True):
                if not os.path.lexists(self.folder / name):
                    continue
                if not (self._removable(name) and _same_bytes(tmp, self.folder / name)):
                    break
                kept.add(name)
            else:
                return names, kept
        raise OutputError(
            f"{self.primary}: {MAX_VARIANTS} variants of its file names are taken in {self.folder}; "
            "clean up the folder or choose another"
        )

    def _named_now(self) -> set[str]:
        """The file names the primary now in place names (nothing unless a regular file)."""
        try:
            if not stat.S_ISREG(os.lstat(self.primary).st_mode):
                return set()
        except OSError:
            return set()
        return {name for name in self.names(self.primary) if "/" not in name and name not in ("", ".", "..")}

    def _removable(self, name: str) -> bool:
        path = self.folder / name
        try:
            info = os.lstat(path)
        except OSError:
            return False
        # Another hard link to the file: someone keeps these bytes under another name, maybe
        # for use; leave it.
        return (
            stat.S_ISREG(info.st_mode)
            and info.st_nlink == 1
            and (info.st_dev, info.st_ino) not in self.protected
        )

    def _rename_primary(self, tmp: Path, step: _Steps) -> None:
        step()
        if not self.overwrite:
            try:
                rename_noreplace(tmp, self.primary)
            except FileExistsError:
                raise OutputExistsError(
                    f"{self.primary} already exists (another writer made it meanwhile); "
                    f"use --force to overwrite it or {self.option} to choose another path"
                ) from None
            return
        # Checked again right before the rename; rename() replaces a folder entry, it never
        # writes through a symlink planted after this check.
        self._check()
        os.replace(tmp, self.primary)

    def _write_journal(self, created: list[str], doomed: list[str]) -> Path:
        path = journal_path(self.primary)
        record = {"pid": os.getpid(), "created": created, "remove": doomed}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            if self.durable:
                os.fsync(handle.fileno())
        return path

    def _recover(self, step: _Steps) -> None:
        """Finish or undo the commit a killed run left (see the module docstring)."""
        path = journal_path(self.primary)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid = int(record["pid"])
            listed = [str(name) for name in (*record["created"], *record["remove"])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            listed, pid = [], -1  # torn while written: no rename had happened yet
        if pid != os.getpid() and pid > 0 and alive(pid):
            return  # a live writer's commit (no flock here): not ours to touch
        current = self._named_now()
        for name in listed:
            if "/" not in name and name not in current and self._removable(name):
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / name)
        with contextlib.suppress(OSError):
            path.unlink()

    def _sync_folder(self) -> None:
        if self.durable:
            fsync_folder(self.folder)

    def _undo(self, renamed: list[Path]) -> None:
        """After a failure (not a kill) before the primary was renamed: the members already in
        place are new and named by nothing, so they go, and so does the journal."""
        for path in renamed:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            journal = journal_path(self.primary)
            if json.loads(journal.read_text()).get("pid") == os.getpid():
                journal.unlink()
        self.abort()

    def abort(self) -> None:
        """Remove every temporary file."""
        temps = [(tmp, handle) for _, tmp, handle in self._members]
        temps += [self._primary] if self._primary is not None else []
        for tmp, handle in temps:
            with contextlib.suppress(OSError, ValueError):
                handle.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._members, self._primary = [], None


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two regular files hold the same bytes (read in chunks: memory stays bounded)."""
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as first, open(b, "rb") as second:
            while True:
                chunk = first.read(COMPARE_CHUNK)
                if chunk != second.read(COMPARE_CHUNK):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


class _Steps:
    """Counts the renames and removals of a commit, for ``NETINIT_KILL_AT_STEP``."""

    def __init__(self) -> None:
        text = os.environ.get("NETINIT_KILL_AT_STEP", "")
        self.kill_at = int(text) if text.isdigit() else 0
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield  # cannot open the folder to lock it: commit unserialized
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(
    out: Path,
    *,
    overwrite: bool,
    durable: bool = True,
    protected: frozenset[Identity] = frozenset(),
    option: str = "-o",
) -> Iterator[BinaryIO]:
    """Yield a temporary file in ``out``'s folder; on success fsync it and rename it onto ``out``
    (see :class:`FileSet`, here without members).  On any exception the temporary file is
    removed and ``out`` is left as it was.  ``durable=False`` skips the fsyncs: the rename is
    still atomic for readers and against a killed writer, but after a power loss or an OS crash
    the output may be empty or partial."""
    with FileSet(out, overwrite=overwrite, durable=durable, protected=protected, option=option) as files:
        yield files.open_primary()
        files.commit()


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
    parent, head = folder_of(out), f".{out.name}{TEMP_TAG}"
    if not parent.is_dir():
        raise OutputError(f"{out}: the folder {parent} does not exist; create it first")
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):  # folders left by killed runs
            pid = entry.name[len(head) :].split("-", 1)[0]
            ours = entry.name.startswith(head) and entry.name.endswith(TEMP_SUFFIX) and pid.isdigit()
            if ours and entry.is_dir(follow_symlinks=False) and not alive(int(pid)):
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
            fsync_folder(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(out, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
