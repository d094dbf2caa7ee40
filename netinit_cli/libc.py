"""C library functions through ctypes (Linux's ``fallocate``, ``sync_file_range`` and
``renameat2``, glibc's ``mallopt``): looked up once, None where the platform has no such function."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import cast


@cache
def function(name: str, signature: str) -> Callable[..., int] | None:
    """The C function ``name`` returning an int; ``signature`` gives its argument types as
    ``struct`` letters: ``i`` int, ``I`` unsigned int, ``q`` 64-bit int, ``s`` a C string (bytes).  Errors set ctypes'
    copy of errno (:func:`last_errno`)."""
    import ctypes

    types = {"i": ctypes.c_int, "I": ctypes.c_uint, "q": ctypes.c_int64, "s": ctypes.c_char_p}
    try:
        found = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    found.argtypes = [types[letter] for letter in signature]
    found.restype = ctypes.c_int
    return cast(Callable[..., int], found)


def last_errno() -> int:
    """errno as the last call through :func:`function` on this thread left it."""
    import ctypes

    return ctypes.get_errno()
