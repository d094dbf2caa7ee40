"""Distributions: the spec language, exact moments, and fast chunked samplers.

Text forms (``--weights``, ``--biases``, identity's noise, ``--rule`` values)::

    0.02                                  a bare number σ: normal(0, σ)
    normal(mean, std)                     N(mean, std), std is the standard deviation
    uniform(low, high)                    U(low, high)
    truncated_normal(mean, std, low, high)  N(mean, std) restricted to [low, high] (absolute bounds)
    constant(c)                           every element c
    none                                  nothing (biases, identity noise): zero

Samplers never call NumPy's distribution methods, whose algorithms may change between releases:
they transform raw 64-bit words of the tensor's chunk streams (:mod:`netinit_cli.seeding`).

* uniform: the top 24 (float32) or 53 (float64) bits of a word scaled to [0, 1), then
  ``low + (high - low)·u``.
* normal: Box–Muller on pairs of words, ``r = std·√(−2 ln u₁)`` with u₁ ∈ (0, 1] taken from all
  32/64 bits (so the tails reach 6.7σ in float32 instead of the 5.6σ a 24-bit uniform would
  give), ``θ = 2π·v`` with v ∈ [−½, ½); the first half of a block gets ``r·sin θ``, the second
  half ``r·cos θ``.  In float32 this runs at several times the speed of NumPy's ziggurat.
* truncated normal: rejection from whichever proposal accepts most often — the normal itself
  (wide intervals), a uniform on the interval (narrow ones) or Robert's (1995) shifted
  exponential (intervals in one tail).  No inverse CDF, so no erfinv precision trouble.

Each chunk of :data:`~netinit_cli.seeding.CHUNK_ELEMENTS` elements has its own stream and is
defined in blocks of :data:`BLOCK_ELEMENTS` (a uniform or normal span of several blocks is
computed in one pass of NumPy calls, with the same values); chunks run on a thread pool (NumPy
releases the GIL) and the bytes do not depend on the number of threads.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

import numpy as np

from .errors import UsageError
from .seeding import CHUNK_ELEMENTS, Seed, bit_generator, thread_count

BLOCK_ELEMENTS = 1 << 16  # part of the stream definition: blocks draw their words in order

KINDS = ("normal", "uniform", "truncated_normal", "constant", "none")
_PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "normal": ("mean", "std"),
    "uniform": ("low", "high"),
    "truncated_normal": ("mean", "std", "low", "high"),
    "constant": ("value",),
    "none": (),
}
_ALIASES = {"gaussian": "normal", "trunc_normal": "truncated_normal", "truncnormal": "truncated_normal"}
ACCEPTED_FORMS = (
    "a number σ (= normal(0, σ)), normal(mean, std), uniform(low, high), "
    "truncated_normal(mean, std, low, high), constant(c)"
)


# ----------------------------------------------------------------------------------------------
# The small expression language shared by distributions and method specs.


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
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
                raise SpecSyntaxError(bad, f"unexpected character {text[bad]!r}")
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

    def expect(self, punct: str, what: str) -> int:
        kind, value, pos = self.take()
        if kind != "punct" or value != punct:
            raise SpecSyntaxError(pos, f"expected {what}" + (f", found {value!r}" if value else ""))
        return pos

    def expression(self) -> Node:
        kind, value, pos = self.take()
        if kind == "number":
            number = float(value)
            if not math.isfinite(number):
                raise SpecSyntaxError(pos, f"{value} is not a finite number")
            return Node(pos, pos + len(value), number=number)
        if kind != "name":
            raise SpecSyntaxError(
                pos, "expected a number or a name" + (f", found {value!r}" if value else "")
            )
        name = value.lower()
        if name in ("inf", "infinity", "nan"):
            raise SpecSyntaxError(pos, f"{value} is not a finite number")
        if self.peek()[:2] != ("punct", "("):
            return Node(pos, pos + len(value), name=name)
        self.take()
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
                raise SpecSyntaxError(tpos, "expected ',' or ')'" + (f", found {value!r}" if value else ""))

    def whole(self) -> Node:
        if not self.tokens:
            raise SpecSyntaxError(0, "the value is empty")
        node = self.expression()
        kind, value, pos = self.peek()
        if kind != "end":
            raise SpecSyntaxError(pos, f"unexpected {value!r} after the end of the value")
        return node


def parse_expression(text: str) -> Node:
    """Parse ``text`` into a :class:`Node` (raises :class:`SpecSyntaxError`)."""
    return _Parser(text).whole()


def caret_error(option: str, text: str, pos: int, problem: str, accepted: str) -> UsageError:
    """A usage error whose first line stands alone, then the text with a caret, then the forms."""
    first = f"{option} {text!r}: {problem} (character {pos + 1})"
    return UsageError(f"{first}\n  {text}\n  {' ' * pos}^\n  accepted: {accepted}")


def format_number(value: float) -> str:
    """Shortest text that reads back to exactly ``value`` ("1", "0.02", "1e-06")."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


# ----------------------------------------------------------------------------------------------
# Distributions and their exact moments.


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _normal_mass(alpha: float, beta: float) -> float:
    """Φ(β) − Φ(α), accurate in either tail."""
    if alpha >= 0.0:
        return 0.5 * (math.erfc(alpha / math.sqrt(2.0)) - math.erfc(beta / math.sqrt(2.0)))
    if beta <= 0.0:
        return 0.5 * (math.erfc(-beta / math.sqrt(2.0)) - math.erfc(-alpha / math.sqrt(2.0)))
    return 1.0 - 0.5 * (math.erfc(-alpha / math.sqrt(2.0)) + math.erfc(beta / math.sqrt(2.0)))


@dataclass(frozen=True)
class Distribution:
    """A scalar distribution; ``params`` follow :data:`_PARAM_NAMES` for the kind."""

    kind: str
    params: tuple[float, ...] = ()

    @property
    def standardized_bounds(self) -> tuple[float, float]:
        """Truncated normal only: (α, β) = ((low − mean)/std, (high − mean)/std)."""
        mean, std, low, high = self.params
        return (low - mean) / std, (high - mean) / std

    @property
    def mean(self) -> float:
        """Exact mean.  Truncated normal: μ + σ(φ(α) − φ(β))/Z with Z = Φ(β) − Φ(α)."""
        if self.kind == "normal":
            return self.params[0]
        if self.kind == "uniform":
            return 0.5 * (self.params[0] + self.params[1])
        if self.kind == "truncated_normal":
            alpha, beta = self.standardized_bounds
            mass = _normal_mass(alpha, beta)
            return self.params[0] + self.params[1] * (_phi(alpha) - _phi(beta)) / mass
        if self.kind == "constant":
            return self.params[0]
        return 0.0

    @property
    def std(self) -> float:
        """Exact standard deviation.

        Truncated normal: σ·√(1 + (αφ(α) − βφ(β))/Z − ((φ(α) − φ(β))/Z)²).
        """
        if self.kind == "normal":
            return self.params[1]
        if self.kind == "uniform":
            return (self.params[1] - self.params[0]) / math.sqrt(12.0)
        if self.kind == "truncated_normal":
            alpha, beta = self.standardized_bounds
            mass = _normal_mass(alpha, beta)
            shift = (_phi(alpha) - _phi(beta)) / mass
            spread = (alpha * _phi(alpha) - beta * _phi(beta)) / mass
            return self.params[1] * math.sqrt(max(1.0 + spread - shift * shift, 0.0))
        return 0.0

    @property
    def is_random(self) -> bool:
        return self.kind in ("normal", "uniform", "truncated_normal")

    def describe(self) -> str:
        """Canonical text, accepted back by :func:`parse_distribution`."""
        if self.kind == "none":
            return "none"
        return f"{self.kind}({', '.join(format_number(p) for p in self.params)})"

    def __str__(self) -> str:
        return self.describe()


NONE = Distribution("none", ())


def distribution_from_node(node: Node, *, allow_none: bool) -> Distribution:
    """Interpret a parsed node as a distribution (raises :class:`SpecSyntaxError`)."""
    if node.number is not None:
        if node.number <= 0:
            raise SpecSyntaxError(
                node.start,
                "a bare number is a standard deviation and must be > 0 (write constant(0) or none)",
            )
        return Distribution("normal", (0.0, node.number))
    assert node.name is not None
    kind = _ALIASES.get(node.name, node.name)
    if kind not in _PARAM_NAMES:
        raise SpecSyntaxError(node.start, f"unknown distribution {node.name!r}")
    if kind == "none":
        if not allow_none:
            raise SpecSyntaxError(node.start, "none is not accepted here (only for biases and noise)")
        if node.args:
            raise SpecSyntaxError(node.args[0].value.start, "none takes no arguments")
        return NONE
    names = _PARAM_NAMES[kind]
    if node.args is None:
        raise SpecSyntaxError(node.end, f"{kind} needs arguments: {kind}({', '.join(names)})")
    values: dict[str, float] = {}
    positions: dict[str, int] = {}
    for index, arg in enumerate(node.args):
        if arg.key is None:
            if values.keys() - set(names[:index]):
                raise SpecSyntaxError(
                    arg.value.start, "a positional argument cannot follow a keyword argument"
                )
            if index >= len(names):
                raise SpecSyntaxError(
                    arg.value.start, f"{kind} takes {len(names)} arguments: {', '.join(names)}"
                )
            key = names[index]
        else:
            key = arg.key
            if key not in names:
                raise SpecSyntaxError(
                    arg.key_pos, f"{kind} has no parameter {key!r} (it takes {', '.join(names)})"
                )
            if key in values:
                raise SpecSyntaxError(arg.key_pos, f"{key} is given twice")
        if arg.value.number is None:
            raise SpecSyntaxError(arg.value.start, f"{key} must be a number")
        values[key] = arg.value.number
        positions[key] = arg.value.start
    missing = [n for n in names if n not in values]
    if missing:
        raise SpecSyntaxError(node.end - 1, f"{kind} is missing {', '.join(missing)}")
    params = tuple(values[n] for n in names)
    if "std" in values and values["std"] <= 0:
        raise SpecSyntaxError(positions["std"], "std must be > 0")
    if "low" in values and values["low"] >= values["high"]:
        raise SpecSyntaxError(positions["high"], "high must be greater than low")
    dist = Distribution(kind, params)
    if kind == "truncated_normal" and _normal_mass(*dist.standardized_bounds) < 1e-300:
        raise SpecSyntaxError(
            positions["low"], "[low, high] lies too far in the tail of normal(mean, std) to sample"
        )
    return dist


def parse_distribution(text: str, *, allow_none: bool = False, option: str = "--weights") -> Distribution:
    """Read a distribution (see the module docstring for the forms).

    Errors are :class:`UsageError` with the text, a caret under the offending character and the
    accepted forms; the message's first line is self-contained.
    """
    accepted = ACCEPTED_FORMS + (", none" if allow_none else "")
    try:
        return distribution_from_node(parse_expression(text), allow_none=allow_none)
    except SpecSyntaxError as error:
        raise caret_error(option, text, error.pos, error.problem, accepted) from None


# ----------------------------------------------------------------------------------------------
# Samplers: raw words → values, block by block.

_TWO_PI = 2.0 * math.pi
_WORDS = {
    np.dtype(np.float32): (np.uint32, np.int32, 32, 24),
    np.dtype(np.float64): (np.uint64, np.int64, 64, 53),
}


def _raw_words(bits: np.random.BitGenerator, count: int, dtype: np.dtype[np.floating]) -> np.ndarray:
    """``count`` raw unsigned words as wide as ``dtype`` (two per 64-bit draw for float32)."""
    unsigned = _WORDS[dtype][0]
    per_draw = 8 // np.dtype(unsigned).itemsize
    raw: np.ndarray = bits.random_raw((count + per_draw - 1) // per_draw)
    return raw.view(unsigned)[:count]


def _uniform_block(bits: np.random.BitGenerator, out: np.ndarray, low: float, high: float) -> None:
    """U[low, high): the top 24/53 bits of each word, scaled."""
    _, _, width, mantissa = _WORDS[out.dtype]
    words = _raw_words(bits, out.size, out.dtype)
    np.right_shift(words, width - mantissa, out=words)
    np.multiply(
        words, out.dtype.type((high - low) * 2.0**-mantissa), out=out, casting="unsafe", dtype=out.dtype
    )
    if low:
        np.add(out, out.dtype.type(low), out=out)


def _normal_block(bits: np.random.BitGenerator, out: np.ndarray, mean: float, std: float) -> None:
    """Box–Muller: out[:h] = r·sin θ, out[h:] = r·cos θ, r = std·√(−2 ln u₁), θ = 2π·v."""
    size = out.size
    if size % 2:
        scratch = np.empty(size + 1, out.dtype)
        _normal_block(bits, scratch, mean, std)
        out[...] = scratch[:size]
        return
    _normal_rows(bits, out.reshape(1, size), mean, std)


def _normal_rows(bits: np.random.BitGenerator, out: np.ndarray, mean: float, std: float) -> None:
    """:func:`_normal_block` on each row of a 2-D ``out`` (even row length), in one pass of NumPy
    calls: the words are drawn row after row, so the values are those of one call per row."""
    rows, size = out.shape
    _, signed, width, _ = _WORDS[out.dtype]
    ftype = out.dtype.type
    half = size // 2
    words = _raw_words(bits, rows * size, out.dtype).reshape(rows, size)
    radius, angle = out[:, :half], out[:, half:]
    # u₁ = k·2^-w + 2^-(w+1) ∈ (0, 1]: the offset only matters for the smallest k, keeping log finite.
    np.multiply(words[:, :half], ftype(2.0**-width), out=radius, casting="unsafe", dtype=out.dtype)
    np.add(radius, ftype(2.0 ** -(width + 1)), out=radius)
    np.log(radius, out=radius)
    np.multiply(radius, ftype(-2.0 * std * std), out=radius)
    np.sqrt(radius, out=radius)
    # θ from the same words read as signed integers: v ∈ [−½, ½), a cheap signed conversion.
    np.multiply(
        words[:, half:].view(signed),
        ftype(_TWO_PI * 2.0**-width),
        out=angle,
        casting="unsafe",
        dtype=out.dtype,
    )
    sine = np.sin(angle, out=words[:, :half].view(out.dtype))  # the spent words hold sin θ
    np.cos(angle, out=angle)
    np.multiply(angle, radius, out=angle)
    np.multiply(radius, sine, out=radius)
    if mean:
        np.add(out, ftype(mean), out=out)


def _exponential_block(bits: np.random.BitGenerator, out: np.ndarray) -> None:
    """Exp(1) = −ln u with u ∈ (0, 1] from all bits of a word."""
    width = _WORDS[out.dtype][2]
    ftype = out.dtype.type
    words = _raw_words(bits, out.size, out.dtype)
    np.multiply(words, ftype(2.0**-width), out=out, casting="unsafe", dtype=out.dtype)
    np.add(out, ftype(2.0 ** -(width + 1)), out=out)
    np.log(out, out=out)
    np.negative(out, out=out)


def _truncated_acceptance(alpha: float, beta: float) -> dict[str, float]:
    """Acceptance rate of each proposal for N(0,1) restricted to [α, β]."""
    mass = _normal_mass(alpha, beta)
    nearest = 0.0 if alpha <= 0.0 <= beta else min(abs(alpha), abs(beta))
    rates = {
        "normal": mass,
        "uniform": mass * math.sqrt(2 * math.pi) / ((beta - alpha) * math.exp(-0.5 * nearest * nearest)),
    }
    if alpha > 0.0 or beta < 0.0:
        edge = alpha if alpha > 0.0 else -beta
        rate = (edge + math.sqrt(edge * edge + 4.0)) / 2.0
        rates["exponential"] = (
            math.sqrt(2 * math.pi) * mass * rate * math.exp(min(rate * edge - 0.5 * rate * rate, 700.0))
        )
    return rates


def _truncated_candidates(
    bits: np.random.BitGenerator,
    count: int,
    dtype: np.dtype[np.floating],
    proposal: str,
    alpha: float,
    beta: float,
) -> np.ndarray:
    """``count`` proposals for N(0,1) on [α, β], with the rejected ones already removed."""
    ftype = dtype.type
    x = np.empty(count, dtype)
    if proposal == "normal":
        _normal_block(bits, x, 0.0, 1.0)
        return x[(x >= ftype(alpha)) & (x <= ftype(beta))]
    test = np.empty(count, dtype)
    _exponential_block(bits, test)
    test *= ftype(2.0)  # accept when 2E ≥ log-density gap
    if proposal == "uniform":
        nearest = 0.0 if alpha <= 0.0 <= beta else min(abs(alpha), abs(beta))
        _uniform_block(bits, x, alpha, beta)
        gap = x * x - ftype(nearest * nearest)
        accepted: np.ndarray = x[(test >= gap) & (x >= ftype(alpha)) & (x <= ftype(beta))]
        return accepted
    # Robert (1995): x = edge + E/λ for the tail [edge, ∞), mirrored for the lower tail.
    mirrored = beta < 0.0
    edge, far = (-beta, -alpha) if mirrored else (alpha, beta)
    rate = (edge + math.sqrt(edge * edge + 4.0)) / 2.0
    _exponential_block(bits, x)
    x *= ftype(1.0 / rate)
    x += ftype(edge)
    shifted = x - ftype(rate)
    keep: np.ndarray = x[(test >= shifted * shifted) & (x <= ftype(far))]
    return -keep if mirrored else keep


def _truncated_block(bits: np.random.BitGenerator, out: np.ndarray, dist: Distribution) -> None:
    mean, std, low, high = dist.params
    alpha, beta = dist.standardized_bounds
    rates = _truncated_acceptance(alpha, beta)
    proposal = max(rates, key=lambda k: rates[k])
    rate = max(rates[proposal], 1e-3)
    filled = 0
    while filled < out.size:
        need = out.size - filled
        draws = (
            min(int(need / rate * 1.05) + 64, 4 * BLOCK_ELEMENTS) // 2 * 2
        )  # even: no Box–Muller tail copy
        kept = _truncated_candidates(bits, draws, out.dtype, proposal, alpha, beta)[:need]
        out[filled : filled + kept.size] = kept
        filled += kept.size
    ftype = out.dtype.type
    np.multiply(out, ftype(std), out=out)
    np.add(out, ftype(mean), out=out)
    np.clip(out, ftype(low), ftype(high), out=out)  # rounding of μ + σx must not leave [low, high]


# Work is split into spans of SPAN_BLOCKS blocks (a chunk holds CHUNK_ELEMENTS / BLOCK_ELEMENTS
# = 16): enough pieces per tensor that two threads finish together, few enough that the per-span
# Python work (a stream, a pwrite) and GIL hand-overs stay small (4 blocks: 5–10% slower on the
# bundle; 16: worse, load imbalance and 4 MiB buffers).  A span that starts inside a
# chunk advances the chunk's stream past the words of the blocks before it, which is exact for the
# kinds whose word count per block is fixed (uniform, normal); truncated normal (rejection) keeps
# one span per chunk.  Spans only schedule work: the values are those of the chunk streams.
SPAN_BLOCKS = 8
SPAN_ELEMENTS = SPAN_BLOCKS * BLOCK_ELEMENTS  # the most a span generates at once
_FIXED_WORDS = ("normal", "uniform")
_BLOCKS_PER_CHUNK = CHUNK_ELEMENTS // BLOCK_ELEMENTS


@dataclass(frozen=True)
class Span:
    """Elements ``[start, stop)`` of a flattened tensor: blocks ``first_block…`` of chunk ``chunk``."""

    chunk: int
    first_block: int
    start: int
    stop: int


def spans(dist: Distribution, size: int) -> list[Span]:
    """How ``size`` elements of ``dist`` are cut into independently generated spans."""
    step = SPAN_BLOCKS if dist.kind in _FIXED_WORDS else _BLOCKS_PER_CHUNK
    found: list[Span] = []
    for chunk_start in range(0, size, CHUNK_ELEMENTS):
        chunk = chunk_start // CHUNK_ELEMENTS
        for first in range(0, _BLOCKS_PER_CHUNK, step):
            start = chunk_start + first * BLOCK_ELEMENTS
            if start >= size:
                break
            stop = min(start + step * BLOCK_ELEMENTS, chunk_start + CHUNK_ELEMENTS, size)
            found.append(Span(chunk, first, start, stop))
    return found


def _words_per_block(dtype: np.dtype[np.floating]) -> int:
    """64-bit draws one full block consumes (uniform and normal: one word per element)."""
    return BLOCK_ELEMENTS * np.dtype(_WORDS[dtype][0]).itemsize // 8


def _fill_block(dist: Distribution, bits: np.random.BitGenerator | None, block: np.ndarray) -> None:
    if dist.kind == "constant" or dist.kind == "none" or bits is None:
        block.fill(dist.params[0] if dist.kind == "constant" else 0)
    elif dist.kind == "normal":
        _normal_block(bits, block, dist.params[0], dist.params[1])
    elif dist.kind == "uniform":
        _uniform_block(bits, block, dist.params[0], dist.params[1])
    else:
        _truncated_block(bits, block, dist)


def _fill_blocks(dist: Distribution, bits: np.random.BitGenerator | None, out: np.ndarray) -> None:
    """Consecutive blocks (all full but the last) in one pass of NumPy calls, with the values of
    :func:`_fill_block` per block: uniform draws one word per element whatever the cut, normal
    works on the full blocks as rows.  Fewer, larger calls mean fewer GIL hand-overs between the
    sampler threads."""
    full = out.size // BLOCK_ELEMENTS * BLOCK_ELEMENTS
    if bits is None or dist.kind not in _FIXED_WORDS or full <= BLOCK_ELEMENTS:
        for start in range(0, out.size, BLOCK_ELEMENTS):
            _fill_block(dist, bits, out[start : start + BLOCK_ELEMENTS])
    elif dist.kind == "uniform":
        _uniform_block(bits, out, dist.params[0], dist.params[1])
    else:
        _normal_rows(bits, out[:full].reshape(-1, BLOCK_ELEMENTS), dist.params[0], dist.params[1])
        if full < out.size:
            _normal_block(bits, out[full:], dist.params[0], dist.params[1])


BlockTarget = Callable[[int, int], np.ndarray]  # (first element, element count) -> array to fill
BlockDone = Callable[[int, np.ndarray], None]  # (first element, generated values)


def generate_span(
    dist: Distribution,
    span: Span,
    dtype: np.dtype[np.floating],
    seed: Seed,
    name: str,
    target: BlockTarget,
    done: BlockDone | None = None,
) -> None:
    """Generate ``span`` into ``target(start, count)``, then call ``done``.

    Uniform and normal spans are generated whole (:func:`_fill_blocks`); truncated normal block
    by block.  :func:`sample_into` passes views of the output; a streaming writer passes a small
    reused buffer (it stays in the cache) and writes it out in ``done``.
    """
    bits = None
    if dist.kind not in ("constant", "none"):
        bits = bit_generator(seed, name, span.chunk)
        if span.first_block:
            bits.advance(span.first_block * _words_per_block(dtype))
    step = span.stop - span.start if dist.kind in _FIXED_WORDS else BLOCK_ELEMENTS
    for start in range(span.start, span.stop, step):
        block = target(start, min(step, span.stop - start))
        _fill_blocks(dist, bits, block)
        if done is not None:
            done(start, block)


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def run_parallel(tasks: Sequence[Callable[[], None]]) -> None:
    """Run independent tasks on the shared pool (``NETINIT_THREADS`` threads); errors propagate.

    Returns only when no task runs any more, even after a failure (tasks may write to a file the
    caller closes once this returns): the first error is raised after the others were cancelled
    or finished.
    """
    threads = min(thread_count(), len(tasks))
    if threads <= 1:
        for task in tasks:
            task()
        return
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="netinit-fill")
    futures = [pool.submit(task) for task in tasks]
    try:
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def sample_into(dist: Distribution, out: np.ndarray, seed: Seed, name: str) -> None:
    """Fill ``out`` (C-contiguous float32/float64) in place with draws of ``dist``.

    Chunk ``i`` (elements ``[i·CHUNK_ELEMENTS, (i+1)·CHUNK_ELEMENTS)`` of the flattened array)
    uses the stream ``(seed, name, i)``, so the result does not depend on the thread count.
    """
    if out.dtype not in _WORDS:
        raise TypeError(f"sample_into fills float32 or float64 arrays, not {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("sample_into needs a C-contiguous array")
    if dist.kind == "none":
        out.fill(0)
        return
    if dist.kind == "constant":
        out.fill(dist.params[0])
        return
    flat = out.reshape(-1)
    dtype = flat.dtype

    def view(start: int, count: int) -> np.ndarray:
        return flat[start : start + count]

    run_parallel(
        [partial(generate_span, dist, span, dtype, seed, name, view) for span in spans(dist, flat.size)]
    )
