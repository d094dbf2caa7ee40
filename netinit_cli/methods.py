"""Initialization methods (NetInitialize's Kaiming, Xavier, Orthogonal, Random, Identity).

One :class:`Method` record per method, in one registry (:data:`REGISTRY`): its name and aliases,
its sub-options (types, defaults, help), the formula shown by ``netinit methods``, and how it
builds a weight's :class:`~netinit_cli.initializers.TensorInit`.  Everything else derives from
the registry: the names ``--method`` and ``--rule`` accept, the parser of the compact form
``kaiming(distribution=uniform)``, the separate ``--distribution``/``--gain``/… flags (the CLI
generates them from :data:`FLAGS`), and the text of ``netinit methods``.  The compact form and
the flags are two spellings of the same :class:`MethodSpec`.

Kaiming and Xavier are one variance-scaling core (:func:`variance_scaling_method` over
:func:`~netinit_cli.initializers.variance_scaling`): σ = gain/√n, n = fan_in, fan_out or
(fan_in + fan_out)/2 by ``mode``; they only differ in their defaults.  What non-weight roles
get (biases, norms, tokens) is decided in :mod:`netinit_cli.roles`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .distributions import ACCEPTED_FORMS, NONE, Distribution, distribution_from_node
from .errors import UsageError
from .initializers import (
    FAN_MODES,
    GAINS,
    SCALING_DISTRIBUTIONS,
    TensorInit,
    identity,
    orthogonal,
    random_weights,
    variance_scaling,
)
from .lsuv.options import LsuvOptions
from .model import Param
from .spec import Node, SpecSyntaxError, caret_error, clipped, format_number, parse_expression

# ----------------------------------------------------------------------------------------------
# Sub-options: read by the parser, describe(), the CLI flags and `netinit methods`.


@dataclass(frozen=True)
class OptionDef:
    """One sub-option: ``kind`` says how its text is read (:meth:`parse`)."""

    name: str
    kind: str  # "choice" | "number" | "positive" | "count" | "gain" | "distribution" | "noise"
    default: object
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, node: Node) -> object:
        """Interpret ``node`` as this option's value (raises :class:`SpecSyntaxError`)."""
        if self.kind == "choice":
            if node.name is None or node.args is not None or node.name not in self.choices:
                raise SpecSyntaxError(node.start, f"{self.name} must be one of {', '.join(self.choices)}")
            return node.name
        if self.kind == "count":
            if node.number is None or node.number != int(node.number) or node.number < 1:
                raise SpecSyntaxError(node.start, f"{self.name} must be a whole number ≥ 1")
            return int(node.number)
        if self.kind in ("number", "positive", "gain"):
            if self.kind == "gain" and node.name in ("auto", "none") and node.args is None:
                return None
            if node.number is None:
                raise SpecSyntaxError(node.start, f"{self.name} must be a number")
            if self.kind != "number" and node.number <= 0:
                raise SpecSyntaxError(node.start, f"{self.name} must be > 0")
            return node.number
        return distribution_from_node(node, allow_none=self.kind == "noise")

    def forms(self) -> str:
        """The accepted values, for error messages."""
        if self.kind == "choice":
            return " | ".join(self.choices)
        if self.kind == "gain":
            return "a number > 0, or auto"
        if self.kind in ("number", "positive"):
            return "a number" + (" > 0" if self.kind == "positive" else "")
        if self.kind == "count":
            return "a whole number ≥ 1"
        return ACCEPTED_FORMS + (", none" if self.kind == "noise" else "")


def format_value(value: object) -> str:
    """An option value as the compact form writes it."""
    if value is None:
        return "auto"
    if isinstance(value, Distribution):
        return value.describe()
    if isinstance(value, float):
        return format_number(value)
    return str(value)


# Every method takes it; roles.bias_init applies it to the LSTM forget-gate bias block.
FORGET_BIAS = OptionDef(
    "forget_bias",
    "number",
    0.0,
    "LSTM forget-gate bias, on one bias vector only (ONNX B: Wb's f; torch: bias_ih's f)",
)
COMMON_OPTIONS = (FORGET_BIAS,)

# ----------------------------------------------------------------------------------------------
# The method record.

Builder = Callable[[Param, "MethodSpec", str], TensorInit]  # (param, spec, fan_mode)
Check = Callable[[Mapping[str, object], Mapping[str, str]], None]  # (values, where each was given)


@dataclass(frozen=True)
class Method:
    """One initialization method.

    ``own_options`` are its sub-options (:attr:`options` adds :data:`COMMON_OPTIONS`); ``primary`` are
    shown by :meth:`MethodSpec.describe` even at their defaults; ``build`` makes a weight's
    initializer; ``check`` may refuse combinations of options after parsing.
    """

    name: str
    formula: str
    own_options: tuple[OptionDef, ...]
    primary: tuple[str, ...]
    build: Builder
    aliases: tuple[str, ...] = ()
    check: Check | None = None
    in_rules: bool = True  # False: a whole-model method, given with --method only

    @property
    def options(self) -> tuple[OptionDef, ...]:
        return (*self.own_options, *COMMON_OPTIONS)


def _float(value: object) -> float:
    assert isinstance(value, (int, float))
    return float(value)


def _distribution(value: object) -> Distribution:
    assert isinstance(value, Distribution)
    return value


def _build_variance_scaling(param: Param, spec: MethodSpec, fan_mode: str) -> TensorInit:
    gain = spec.get("gain")
    return variance_scaling(
        param,
        fan_mode,
        name=spec.name,
        distribution=str(spec.get("distribution")),
        mode=str(spec.get("mode")),
        nonlinearity=str(spec.get("nonlinearity")),
        negative_slope=_float(spec.get("negative_slope")),
        gain=None if gain is None else _float(gain),
    )


def _slope_needs_leaky_relu(values: Mapping[str, object], given: Mapping[str, str]) -> None:
    if "negative_slope" in given and values.get("nonlinearity") != "leaky_relu":
        raise UsageError(
            f"{given['negative_slope']} negative_slope applies only to nonlinearity=leaky_relu; "
            "add nonlinearity=leaky_relu (or --nonlinearity leaky_relu)"
        )


def variance_scaling_method(
    name: str, *, mode: str, nonlinearity: str, formula: str, aliases: tuple[str, ...] = ()
) -> Method:
    """A variance-scaling method with its own default ``mode`` and ``nonlinearity``."""
    options = (
        OptionDef("distribution", "choice", "normal", "shape of the draw", SCALING_DISTRIBUTIONS),
        OptionDef("mode", "choice", mode, "which fan n is (fan_avg = (fan_in + fan_out)/2)", FAN_MODES),
        OptionDef(
            "nonlinearity", "choice", nonlinearity, "sets the gain (torch calculate_gain)", tuple(GAINS)
        ),
        OptionDef("negative_slope", "number", 0.01, "leaky_relu slope a: gain √(2/(1+a²))"),
        OptionDef("gain", "gain", None, "overrides the nonlinearity's gain"),
    )
    primary = ("distribution", "mode", "nonlinearity")
    return Method(name, formula, options, primary, _build_variance_scaling, aliases, _slope_needs_leaky_relu)


LSUV_LABEL = ", then lsuv"  # ends the plan's label of a weight LSUV may rescale


def _build_lsuv(param: Param, spec: MethodSpec, fan_mode: str) -> TensorInit:
    """LSUV's pre-init is orthogonal's, value for value; the LSUV stage (netinit_cli.lsuv.stage)
    rescales the layers' weights afterwards and rewrites the label with what it did."""
    pre_init = orthogonal(param, fan_mode, 1.0)
    return replace(pre_init, label=pre_init.label + LSUV_LABEL)


def _check_lsuv(values: Mapping[str, object], given: Mapping[str, str]) -> None:
    LsuvOptions.from_values(values)  # raises UsageError


# ----------------------------------------------------------------------------------------------
# The registry: a new method is one entry here.

REGISTRY: tuple[Method, ...] = (
    variance_scaling_method(
        "kaiming",
        aliases=("he",),
        mode="fan_in",
        nonlinearity="relu",
        formula="He et al. 2015: σ = gain/√n, n = fan by mode; normal N(0, σ), uniform U(±√3σ),\n"
        "    truncated_normal N(0, σ/0.8796) cut at ±2σ/0.8796 (std σ).  Default = He for ReLU.",
    ),
    variance_scaling_method(
        "xavier",
        aliases=("glorot",),
        mode="fan_avg",
        nonlinearity="linear",
        formula="Glorot & Bengio 2010: same variance scaling, defaults fan_avg and gain 1:\n"
        "    σ = gain·√(2/(fan_in + fan_out)).",
    ),
    Method(
        "orthogonal",
        "Saxe et al. 2014: Q of the QR of a N(0,1) matrix (sign-corrected, Haar), tensor read as\n"
        "    (outputs, inputs·field); per group / gate block; × gain.",
        (OptionDef("gain", "positive", 1.0, "scale of the orthogonal matrix"),),
        ("gain",),
        lambda param, spec, fan_mode: orthogonal(param, fan_mode, _float(spec.get("gain"))),
    ),
    Method(
        "random",
        "weights from a distribution; biases from another (none = 0).",
        (
            OptionDef(
                "weights", "distribution", Distribution("normal", (0.0, 1.0)), "distribution of weights"
            ),
            OptionDef("biases", "noise", NONE, "distribution of biases (none = 0)"),
        ),
        ("weights", "biases"),
        lambda param, spec, fan_mode: random_weights(param, fan_mode, _distribution(spec.get("weights"))),
    ),
    Method(
        "identity",
        "eye on the leading square block (conv: Dirac centre tap k//2 per group; RNN: per gate)\n"
        "    plus noise from distribution (a bare number σ = normal(0, σ); none = exact).",
        (
            OptionDef(
                "distribution", "noise", Distribution("normal", (0.0, 0.01)), "noise added to the identity"
            ),
        ),
        ("distribution",),
        lambda param, spec, fan_mode: identity(param, fan_mode, _distribution(spec.get("distribution"))),
    ),
    Method(
        "lsuv",
        "Mishkin & Matas 2015 (ONNX only): orthogonal gain 1 and zero biases, then layer by layer in\n"
        "    graph order W ← W·std/σ(output on a batch, through onnxruntime) until |σ − std| ≤ tol.",
        (
            OptionDef("std", "positive", 1.0, "target std of each layer's output (before its activation)"),
            OptionDef("tol", "positive", 0.1, "tolerance on that std"),
            OptionDef("max_iter", "count", 10, "most corrections per layer"),
        ),
        ("std", "tol", "max_iter"),
        _build_lsuv,
        check=_check_lsuv,
        in_rules=False,  # rescaling walks the whole graph in order, once per run
    ),
)
METHODS: dict[str, Method] = {method.name: method for method in REGISTRY}
METHOD_NAMES = tuple(METHODS)
_ALIASES = {alias: method.name for method in REGISTRY for alias in method.aliases}


@dataclass(frozen=True)
class Flag:
    """The separate command-line flag of a sub-option key (one flag per key, whatever the method)."""

    key: str
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


# Hand-written help of the flags; a key missing here gets "<method>: <option help>." and a
# metavar by its kind.
_FLAG_HELP: dict[str, tuple[str, str]] = {
    "distribution": (
        "DIST",
        "Kaiming/Xavier: normal|uniform|truncated_normal.  Identity: the noise "
        "(default normal(0,0.01); a bare number is its std; none for an exact identity).",
    ),
    "weights": (
        "DIST",
        "Random: weight distribution (default normal(0,1)), e.g. 0.02 or 'uniform(-0.1,0.1)'.",
    ),
    "biases": ("DIST", "Random: bias distribution (default none = zero), e.g. 0.01."),
    "mode": ("FAN", "Kaiming/Xavier: fan_in|fan_out|fan_avg."),
    "nonlinearity": ("NAME", "Kaiming/Xavier gain: linear|sigmoid|tanh|relu|leaky_relu|selu."),
    "negative_slope": ("X", "leaky_relu slope for the gain (default 0.01)."),
    "gain": ("X", "Override the gain (Kaiming/Xavier/Orthogonal)."),
    "forget_bias": ("X", "LSTM forget-gate bias (ONNX gate order; Wb half only)."),
    "std": ("X", "LSUV: target std of each layer's output (default 1)."),
    "tol": ("X", "LSUV: tolerance on that std (default 0.1)."),
    "max_iter": ("N", "LSUV: most corrections per layer (default 10)."),
}
_METAVARS = {"choice": "NAME", "distribution": "DIST", "noise": "DIST"}


def _flags() -> tuple[Flag, ...]:
    flags = [Flag(key, metavar, text) for key, (metavar, text) in _FLAG_HELP.items()]
    for method in REGISTRY:
        for option in method.options:
            if all(flag.key != option.name for flag in flags):
                metavar = _METAVARS.get(option.kind, "X")
                flags.append(Flag(option.name, metavar, f"{method.name.capitalize()}: {option.help}."))
    return tuple(flags)


FLAGS = _flags()
OVERRIDE_KEYS = tuple(flag.key for flag in FLAGS)

# ----------------------------------------------------------------------------------------------
# A method with its options: the parsed --method.


@dataclass(frozen=True)
class MethodSpec:
    """A method and all its sub-options (defaults filled in), sorted by key."""

    name: str
    options: tuple[tuple[str, object], ...] = field(default=())

    def has(self, key: str) -> bool:
        return any(option == key for option, _ in self.options)

    def get(self, key: str) -> object:
        for option, value in self.options:
            if option == key:
                return value
        raise KeyError(f"{self.name} has no option {key!r}")

    def describe(self) -> str:
        """Canonical compact form; ``parse_method(spec.describe()) == spec``."""
        method = METHODS[self.name]
        defaults = {o.name: o.default for o in method.options}
        shown = [
            f"{key}={format_value(value)}"
            for key, value in self.options
            if key in method.primary or value != defaults[key]
        ]
        return f"{self.name}({', '.join(shown)})"

    def __str__(self) -> str:
        return self.describe()


def build_weight_init(param: Param, spec: MethodSpec, fan_mode: str) -> TensorInit:
    """The initializer ``spec``'s method gives the weight ``param``."""
    return METHODS[spec.name].build(param, spec, fan_mode)


def _methods_taking(key: str) -> list[str]:
    return [method.name for method in REGISTRY if any(o.name == key for o in method.options)]


def _accepted_forms(method: str | None = None) -> str:
    if method is None:
        return (
            f"{' | '.join(METHOD_NAMES)}, optionally with (key=value, …), e.g. kaiming(distribution=uniform)"
        )
    keys = ", ".join(o.name for o in METHODS[method].options)
    return f"{method}(key=value, …) with keys {keys}"


def parse_method(text: str = "kaiming", overrides: Mapping[str, str | None] | None = None) -> MethodSpec:
    """Read ``--method`` (plain name or compact form) plus the separate sub-option flags.

    ``overrides`` maps option names (:data:`OVERRIDE_KEYS`) to the raw flag values; ``None``
    means the flag was not given.  A flag that the method does not take, or a key given both in
    the compact form and as a flag, is a :class:`UsageError`.
    """
    try:
        node = parse_expression(text)
    except SpecSyntaxError as error:
        raise caret_error("--method", text, error.pos, error.problem, _accepted_forms()) from None
    name = _ALIASES.get(node.name or "", node.name or "")
    if node.number is not None or name not in METHODS:
        raise caret_error("--method", text, node.start, "unknown method", _accepted_forms())
    method = METHODS[name]
    definitions = {o.name: o for o in method.options}
    values: dict[str, object] = {o.name: o.default for o in method.options}
    given: dict[str, str] = {}
    for arg in node.args or ():
        if arg.key is None:
            raise caret_error(
                "--method", text, arg.value.start, "sub-options are written key=value", _accepted_forms(name)
            )
        if arg.key not in definitions:
            others = _methods_taking(arg.key)
            hint = f" (it belongs to {', '.join(others)})" if others else ""
            raise caret_error(
                "--method",
                text,
                arg.key_pos,
                f"{name} has no option {clipped(arg.key)!r}{hint}",
                _accepted_forms(name),
            )
        if arg.key in given:
            raise caret_error(
                "--method", text, arg.key_pos, f"{arg.key} is given twice", _accepted_forms(name)
            )
        try:
            values[arg.key] = definitions[arg.key].parse(arg.value)
        except SpecSyntaxError as error:
            raise caret_error("--method", text, error.pos, error.problem, _accepted_forms(name)) from None
        given[arg.key] = "--method"
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key not in definitions:
            others = _methods_taking(key)
            users = f"it is used by {', '.join(others)}" if others else "no method takes it"
            raise UsageError(f"{flag} does not apply to method {name}; {users}")
        if key in given:
            raise UsageError(f"{flag} repeats {key}, already set in --method {text!r}; give it once")
        try:
            values[key] = definitions[key].parse(parse_expression(str(raw)))
        except SpecSyntaxError as error:
            raise caret_error(flag, str(raw), error.pos, error.problem, definitions[key].forms()) from None
        given[key] = flag
    if method.check is not None:
        method.check(values, given)
    return MethodSpec(name, tuple(sorted(values.items())))


def describe_methods() -> str:
    """The text of ``netinit methods``."""
    lines = ["Methods (--method NAME or NAME(key=value, …); each key is also a --key flag):", ""]
    for method in REGISTRY:
        lines.append(f"{method.name}  {method.formula}")
        for option in method.options:
            choices = f" [{' | '.join(option.choices)}]" if option.choices else ""
            lines.append(
                f"    {option.name:<15} default {format_value(option.default)}{choices}: {option.help}"
            )
        lines.append("")
    # The role policy of netinit_cli.roles, and the distribution forms.
    lines += [
        "Gains (nonlinearity): linear 1, sigmoid 1, tanh 5/3, relu √2, leaky_relu √(2/(1+a²)), selu 3/4.",
        "Whatever the method: biases 0, norm scale 1, norm shift 0, running mean 0, running var 1,",
        "PReLU slope 0.25, layer scale 1e-6, tokens truncated_normal(0, 0.02, -0.04, 0.04).",
        "Distributions: a number σ = normal(0, σ); normal(mean, std); uniform(low, high);",
        "truncated_normal(mean, std, low, high) with absolute bounds; constant(c); none.",
    ]
    return "\n".join(lines)
