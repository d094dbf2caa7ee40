"""netinit's error hierarchy.  The CLI turns these into one line and an exit code, in one place.

Messages name the file or tensor, echo the bad value, and say how to fix it.
"""

from __future__ import annotations


class NetinitError(Exception):
    """Base class.  ``exit_code`` is what the command-line tool exits with.

    The message is one line; ``detail`` (a caret diagram, say) is printed under it only with
    ``--debug``.
    """

    exit_code = 1  # internal failure unless a subclass says otherwise

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class UsageError(NetinitError):
    """A bad option value (method spec, seed, distribution, rule)."""

    exit_code = 2


class InputError(NetinitError):
    """The model file is unreadable, malformed, unsafe, or unsupported."""

    exit_code = 3


class UnsafeInputError(InputError):
    """The model points outside its folder (external data traversal, symlink, hard link)."""


class OutputExistsError(NetinitError):
    """The output exists and --force was not given."""

    exit_code = 4


class OutputError(NetinitError):
    """The output cannot be written (permission, disk full, a symlink, folder, device, FIFO or
    socket in the way)."""

    exit_code = 5


EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with --debug output)",
    2: "usage error: bad option or option value",
    3: "invalid, unreadable or unsafe input model",
    4: "output exists (use --force or --in-place)",
    5: "output cannot be written (permission, disk full, a symlink, folder or device in the way)",
}
