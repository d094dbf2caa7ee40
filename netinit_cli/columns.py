"""Fitting a table's columns to a terminal width, one line per row.

Pure arithmetic over cell widths (terminal cells, so wide characters count twice): which
columns to show, how wide each one is, and how a cell is shortened to fit — names in the
middle (their start and their end tell them apart), other text at the end.  :mod:`report`
draws the result with Rich.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    """A column's header and how it gives way when the table is too wide.

    ``squeeze``: the narrowest it may be shortened to (``None``: always its natural width).
    ``drop``: its turn to be left out when even squeezed columns do not fit (1 first; 0: never).
    ``middle``: shortened in the middle, not at the end (names).
    """

    header: str
    right: bool = False
    squeeze: int | None = None
    drop: int = 0
    middle: bool = False


def overhead(count: int) -> int:
    """Cells a Rich table with an edge, one-cell padding and one-cell dividers adds to ``count``
    columns: an edge and a pad on each side, and a divider plus two pads between columns."""
    return 3 * count + 1 if count else 0


def fit(columns: Sequence[Column], natural: Sequence[int], width: int | None) -> list[int | None]:
    """Each column's width (``None``: left out) so that the table is at most ``width`` cells.

    First every column at its natural width; if that is too wide, squeezable columns at their
    ``squeeze`` width, leaving out columns in ``drop`` order until it fits; then spare room is
    shared out among the squeezed columns up to their natural width, names getting twice the
    share of other text.  If nothing more can be left out, the first middle-shortened column
    gives way further (down to a few cells).
    """
    natural = [max(1, n) for n in natural]
    if width is None or sum(natural) + overhead(len(columns)) <= width:
        return list(natural)
    droppable = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop)
    shown = list(range(len(columns)))
    least = {
        i: min(natural[i], c.squeeze) if c.squeeze is not None else natural[i] for i, c in enumerate(columns)
    }
    while sum(least[i] for i in shown) + overhead(len(shown)) > width and droppable:
        shown.remove(droppable.pop(0)[1])
    widths: dict[int, int] = {i: least[i] for i in shown}
    spare = width - overhead(len(shown)) - sum(widths.values())
    if spare < 0:
        name = next((i for i in shown if columns[i].middle), None)
        if name is not None:
            widths[name] = max(_FLOOR, widths[name] + spare)
    # Spare room is shared out in rounds among the squeezed columns still below their natural
    # width: two cells to a name (it says which tensor a row is about), one to other text.
    growing = [i for i in shown if columns[i].squeeze is not None and widths[i] < natural[i]]
    while spare > 0 and growing:
        for i in list(growing):
            grow = min(spare, 2 if columns[i].middle else 1, natural[i] - widths[i])
            widths[i] += grow
            spare -= grow
            if widths[i] == natural[i]:
                growing.remove(i)
    return [widths.get(i) for i in range(len(columns))]


_FLOOR = 8  # a middle-shortened column is never narrower than this


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells: its start, an ellipsis, its end (the end gets the odd
    cell: a name's last part usually says what it is)."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head_cells = (width - 1) // 2
    head = _take(text, head_cells)
    tail = _take(text[::-1], width - 1 - cell_len(head))[::-1]
    return head + ELLIPSIS + tail


def shorten_end(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, cut at the end with an ellipsis."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return _take(text, width - 1) + ELLIPSIS


def _take(text: str, cells: int) -> str:
    """The longest prefix of ``text`` that fits in ``cells`` cells."""
    from rich.cells import cell_len

    taken = 0
    for index, char in enumerate(text):
        taken += cell_len(char)
        if taken > cells:
            return text[:index]
    return text
