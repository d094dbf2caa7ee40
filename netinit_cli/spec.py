"""The small NAME(key=value, …) language shared by ``--method``, ``--rule`` and ``--weights``.

A value is a number, a name, or a name with a parenthesised list of arguments, each optionally
``key=``; for example ``0.02``, ``none``, ``normal(0, 0.02)``, ``kaiming(distribution=uniform)``.
:func:`parse_expression` gives the syntax tree with character positions; the callers give the
names their meaning (:mod:`netinit_cli.distributions`, :mod:`netinit_cli.methods`) and report
errors with :func:`caret_error`: one line naming the offending character, and a caret diagram
for ``--debug``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UsageError
from .safe_text import shown

# Parentheses nest at most this deep (``normal(0, 1)`` is one level; no form needs two): deeper
# text is refused, never recursed into.
MAX_DEPTH = 16
EXCERPT = 80  # characters of a bad value echoed in an error


class SpecSyntaxError(Exception):
    """A problem at character ``pos`` of a spec; callers turn it into a :class:`UsageError`."""

    def __init__(self, pos: int, problem: str) -> None:
        super().__init__(problem)
        self.pos = pos
        self.problem = problem


@dataclass(frozen=True)
class Node:
    """``number`` | ``name`` | ``name(arg, key=arg, …)``; ``start``/``end`` index the text."""

    start: int
    end: int
    name: str | None = None  # lower-cased identifier, or None for a number
    number: float | None = None
    args: tuple[Arg, ...] | None = None  # None: no parentheses


@dataclass(frozen=True)
class Arg:
    key: str | None
    key_pos: int
    value: Node


_TOKEN = re.compile(
    r"\s*(?:(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),=]))"
)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        self.depth = 0
        pos, end = 0, len(text.rstrip())  # one pass: the time grows with the text, never faster
        while pos < end:
            match = _TOKEN.match(text, pos)
            if match is None:
                bad = pos + len(text[pos:end]) - len(text[pos:end].lstrip())
                raise SpecSyntaxError(bad, f"unexpected character {shown(repr(text[bad]))}")
            kind = match.lastgroup or ""
            value = match.group(kind)
            self.tokens.append((kind, value, match.start(kind)))
            pos = match.end()
        self.index = 0

    def peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", len(self.text))

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.index += 1
        return token

    def expression(self) -> Node:
        kind, value, pos = self.take()
        if kind == "number":
            number = float(value)
            if not math.isfinite(number):
                raise SpecSyntaxError(pos, f"{clipped(value)} is not a finite number")
            return Node(pos, pos + len(value), number=number)
        if kind != "name":
            raise SpecSyntaxError(
                pos, "expected a number or a name" + (f", found {clipped(value)!r}" if value else "")
            )
        name = value.lower()
        if name in ("inf", "infinity", "nan"):
            raise SpecSyntaxError(pos, f"{value} is not a finite number")
        if self.peek()[:2] != ("punct", "("):
            return Node(pos, pos + len(value), name=name)
        self.take()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SpecSyntaxError(pos, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return self.arguments(name, pos)
        finally:
            self.depth -= 1

    def arguments(self, name: str, pos: int) -> Node:
        """The arguments of ``name(``, up to and including the closing parenthesis."""
        args: list[Arg] = []
        if self.peek()[:2] == ("punct", ")"):
            end = self.take()[2] + 1
            return Node(pos, end, name=name, args=())
        while True:
            key: str | None = None
            key_pos = self.peek()[2]
            if self.peek()[0] == "name" and self.index + 1 < len(self.tokens):
                following = self.tokens[self.index + 1]
                if following[:2] == ("punct", "="):
                    key = self.take()[1].lower()
                    self.take()
            args.append(Arg(key, key_pos, self.expression()))
            kind, value, tpos = self.take()
            if (kind, value) == ("punct", ")"):
                return Node(pos, tpos + 1, name=name, args=tuple(args))
            if (kind, value) != ("punct", ","):
                raise SpecSyntaxError(
                    tpos, "expected ',' or ')'" + (f", found {clipped(value)!r}" if value else "")
                )

    def whole(self) -> Node:
        if not self.tokens:
            raise SpecSyntaxError(0, "the value is empty")
        node = self.expression()
        kind, value, pos = self.peek()
        if kind != "end":
            raise SpecSyntaxError(pos, f"unexpected {clipped(value)!r} after the end of the value")
        return node


def parse_expression(text: str) -> Node:
    """Parse ``text`` into a :class:`Node` (raises :class:`SpecSyntaxError`)."""
    return _Parser(text).whole()


def caret_error(option: str, text: str, pos: int, problem: str, accepted: str) -> UsageError:
    """A one-line usage error (the option, the text, the problem, its character, the accepted
    forms); its ``detail`` is the text with a caret under the offending character."""
    excerpt, at = _excerpt(text, pos)
    message = f"{option} {shown(repr(excerpt))}: {problem} (character {pos + 1}); accepted: {accepted}"
    before = shown(excerpt[:at])
    return UsageError(message, detail=f"  {shown(excerpt)}\n  {' ' * len(before)}^")


def _excerpt(text: str, pos: int) -> tuple[str, int]:
    """At most :data:`EXCERPT` characters of ``text`` around ``pos`` (with … where cut), and
    where ``pos`` falls in it: a huge value is not echoed whole."""
    if len(text) <= EXCERPT:
        return text, pos
    start = max(0, min(pos - EXCERPT // 2, len(text) - EXCERPT))
    head = "…" if start else ""
    tail = "…" if start + EXCERPT < len(text) else ""
    return head + text[start : start + EXCERPT] + tail, pos - start + len(head)


def clipped(token: str, limit: int = 40) -> str:
    """A token short enough to quote in a message (a name or number may be any length)."""
    return token if len(token) <= limit else token[: limit - 1] + "…"


def format_number(value: float) -> str:
    """Shortest text that reads back to exactly ``value`` ("1", "0.02", "1e-06")."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
