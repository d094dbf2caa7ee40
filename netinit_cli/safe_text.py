"""Text that came from a file or an argument, made safe to print on a terminal.

Tensor names, paths, seeds and option values are printed in the table, in ``inspect``, in notes,
in the progress bar and in error lines.  Any of them may hold escape sequences (a window title,
a clear screen), a newline that forges a ``netinit: error:`` line, or bytes that are not text.
:func:`shown` makes every such character visible instead; Rich never reads the result as markup
because the callers print it as a ``Text`` (or through click, which has no markup).  ``--json``
keeps the exact strings: JSON escapes them itself.
"""

from __future__ import annotations

import unicodedata

# Unicode categories that are never printed as themselves: controls (C0, DEL, C1), format
# characters (bidirectional overrides, zero-width marks), surrogates (bytes that were not UTF-8,
# kept by Python's surrogateescape), unassigned and private-use code points, line and paragraph
# separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"})
_ASCII_PRINTABLE = frozenset(chr(code) for code in range(0x20, 0x7F))


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: object) -> str:
    """``text`` with every control, format, surrogate or unassigned character written as a
    Python-style escape (ESC is the four characters ``\\x1b``, a newline ``\\n``), so the
    result is one line that the terminal displays and never interprets."""
    value = str(text)
    if all(char in _ASCII_PRINTABLE for char in value):  # the common case, fast
        return value
    return "".join(
        _escape(char)
        if char not in _ASCII_PRINTABLE and unicodedata.category(char) in _HIDDEN_CATEGORIES
        else char
        for char in value
    )
