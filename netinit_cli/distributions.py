"""Distributions: the text forms and the exact moments.

Text forms (``--weights``, ``--biases``, identity's noise, ``--rule`` values)::

    0.02                                  a bare number σ: normal(0, σ)
    normal(mean, std)                     N(mean, std), std is the standard deviation
    uniform(low, high)                    U(low, high)
    truncated_normal(mean, std, low, high)  N(mean, std) restricted to [low, high] (absolute bounds)
    constant(c)                           every element c
    none                                  nothing (biases, identity noise): zero

A :class:`Distribution` is a plain record (kind and parameters); :mod:`netinit_cli.sampling`
draws from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import Node, SpecSyntaxError, caret_error, clipped, format_number, parse_expression

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


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def normal_mass(alpha: float, beta: float) -> float:
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
            mass = normal_mass(alpha, beta)
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
            mass = normal_mass(alpha, beta)
            shift = (_phi(alpha) - _phi(beta)) / mass
            spread = (alpha * _phi(alpha) - beta * _phi(beta)) / mass
            return self.params[1] * math.sqrt(max(1.0 + spread - shift * shift, 0.0))
        return 0.0

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
        raise SpecSyntaxError(node.start, f"unknown distribution {clipped(node.name)!r}")
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
                    arg.key_pos, f"{kind} has no parameter {clipped(key)!r} (it takes {', '.join(names)})"
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
    if kind == "truncated_normal" and normal_mass(*dist.standardized_bounds) < 1e-300:
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
