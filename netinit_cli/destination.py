"""Where netinit may write: one policy for every destination (``-o``, ``--report``, a data file,
a shard, an index), and the renames that enforce it.

* never over an input file (compared by identity, ``st_dev`` and ``st_ino``, so a hard link or
  another spelling of an input is caught);
* an existing path is replaced only with ``overwrite`` (``--force``) and only if it is a regular
  file: a folder, a symbolic link, a device, a FIFO or a socket is refused (exit 5), with or
  without ``--force``;
* without ``overwrite`` the rename itself refuses an existing destination (``renameat2`` with
  ``RENAME_NOREPLACE``, else ``link`` + ``unlink``), so of two writers racing for one path
  exactly one wins;
* a replaced file's mode (and, where permitted, owner and group) carries over to the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from netinit_cli import libc
from netinit_cli.errors import OutputError, OutputExistsError, UsageError
from netinit_cli.inputfile import file_kind

Identity = tuple[int, int]  # (st_dev, st_ino)


def identity(path: str | os.PathLike[str]) -> Identity | None:
    """The file ``path`` names (symlinks followed), or None if it does not exist."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def identities(paths: Iterable[str | os.PathLike[str] | None]) -> frozenset[Identity]:
    found = (identity(path) for path in paths if path is not None)
    return frozenset(item for item in found if item is not None)


def own_inputs(out: Path, model: Path, files: Iterable[Path]) -> frozenset[Identity]:
    """The files a model is read from, to protect while writing ``out``: all of them, unless
    ``out`` is the model itself (``--in-place``, which replaces the model and may remove the
    data files only it used)."""
    found = identity(out)
    if found is not None and found == identity(model):
        return frozenset()
    return identities(files)


def folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_destination(
    out: Path, *, overwrite: bool, protected: frozenset[Identity] = frozenset(), option: str = "-o"
) -> os.stat_result | None:
    """Refuse ``out`` unless netinit may create or (with ``overwrite``) replace it; return what
    is there now (``lstat``), None when nothing is.  ``protected`` are the input files;
    ``option`` is the one that names this destination, for the hint."""
    try:
        info: os.stat_result | None = os.lstat(out)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"{out}: cannot check the destination: {exc.strerror or exc}") from exc
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise OutputError(
                f"{out}: the output path is a symbolic link; refusing to write through it "
                f"(remove the link or choose another {option})"
            )
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"{out} is a folder; give a file path with {option}")
        if not stat.S_ISREG(info.st_mode):
            kind = file_kind(info.st_mode)
            raise OutputError(
                f"{out} is {kind}; netinit writes regular files only and never replaces "
                f"{kind}, even with --force; choose another {option}"
            )
        if (info.st_dev, info.st_ino) in protected:
            raise OutputError(f"{out} is one of the input files; choose another {option}")
        if not overwrite:
            raise OutputExistsError(
                f"{out} already exists; use --force to overwrite it or {option} to choose another path"
            )
    parent = folder_of(out)
    if not parent.is_dir():
        raise OutputError(f"{out}: the folder {parent} does not exist; create it first")
    return info


def refuse_inputs(out: Path, inputs: frozenset[Identity], option: str) -> None:
    """A usage error (exit 2) when the destination the user named is one of the inputs."""
    found = identity(out)
    if found is not None and found in inputs:
        raise UsageError(
            f"{option} {out} is one of the input files; choose another path"
            + (" (use --in-place to replace the input atomically)" if option == "-o" else "")
        )


def output_path(out: str | os.PathLike[str], default_name: str) -> Path:
    """``-o``: a path ending in a slash or naming an existing folder means "in that folder, under
    the default name"; the folder must exist."""
    text = os.fspath(out)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        if not path.is_dir():
            raise OutputError(f"{text}: the folder does not exist; create it first")
        return path / default_name
    return path


def same_destination(a: Path, b: Path) -> bool:
    """Whether two destination paths name one file (existing or not)."""
    found_a, found_b = identity(a), identity(b)
    if found_a is not None and found_a == found_b:
        return True
    return os.path.abspath(a) == os.path.abspath(b)


def names_folder(out: str | os.PathLike[str]) -> bool:
    """A path ending in a slash, or an existing folder."""
    return os.fspath(out).endswith(("/", os.sep)) or Path(out).is_dir()


def report_destination(
    report: str | os.PathLike[str] | None, out: Path | None, *, force: bool, inputs: frozenset[Identity]
) -> Path | None:
    """``--report FILE`` under the policy of every destination (checked before anything is
    written, and again when the report is): never an input, never the output, not a folder,
    an existing file only with ``force``."""
    if report is None:
        return None
    text = os.fspath(report)
    path = Path(text)
    if names_folder(text):
        raise UsageError(f"--report {text} is a folder; give the report's file path")
    if out is not None and same_destination(path, out):
        raise UsageError(f"--report {path} is the output itself; choose another path")
    refuse_inputs(path, inputs, "--report")
    check_destination(path, overwrite=force, protected=inputs, option="--report")
    return path


# ---------------------------------------------------------------------------------------------
# renames
# ---------------------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_renameat2_works = True


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists, in one
    step: ``renameat2(RENAME_NOREPLACE)``, or where the kernel or filesystem lacks it,
    ``link(src, dst)`` (which never replaces) then ``unlink(src)``."""
    global _renameat2_works
    function = libc.function("renameat2", "isisI") if _renameat2_works else None
    if function is not None:
        code = function(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if code == 0:
            return
        failure = libc.last_errno()
        if failure not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(failure, os.strerror(failure), str(dst))
        _renameat2_works = False
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
            raise
        # No hard links either (FAT, some FUSE filesystems): check, then rename.  The window
        # between the two is the only place two writers can still race.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def keep_attributes(tmp: Path, previous: os.stat_result | None) -> None:
    """Give the new file ``tmp`` the permission bits of the file it replaces (and its owner and
    group where we may), or ``0644`` less the umask for a new file."""
    if previous is None:
        os.chmod(tmp, 0o644 & ~_umask())
        return
    if (previous.st_uid, previous.st_gid) != (os.getuid(), os.getgid()):
        with contextlib.suppress(PermissionError):
            os.chown(tmp, previous.st_uid, previous.st_gid)
    os.chmod(tmp, stat.S_IMODE(previous.st_mode) & 0o777)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
