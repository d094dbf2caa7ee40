"""Initialization methods (NetInitialize's Kaiming, Xavier, Orthogonal, Random, Identity).

One registry (:data:`METHODS`) describes every method's sub-options and defaults; the compact
text form ``kaiming(distribution=uniform)`` and the separate CLI flags are two spellings of the
same :class:`MethodSpec`.  :func:`initializer_for` turns a spec and a classified
:class:`~netinit_cli.model.Param` into a :class:`TensorInit`: a label for the table, the fans,
the exact expected moments, and a ``fill`` function that writes the values in place.

Kaiming and Xavier are one variance-scaling core: σ = gain/√n, n = fan_in, fan_out or
(fan_in + fan_out)/2 by ``mode``; they only differ in their defaults.  Fans come from the
tensor's :class:`~netinit_cli.model.Layout` (semantic: per group and per gate block) or, with
``fan_mode="torch"``, from torch's own ``_calculate_fan_in_and_fan_out`` on the tensor in torch's
orientation.  With no layout on a ≥ 2-D tensor the torch convention ``[out, in, k…]`` is assumed
and the label says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import blas
from .distributions import (
    Distribution,
    Node,
    SpecSyntaxError,
    caret_error,
    distribution_from_node,
    format_number,
    parse_expression,
    sample_into,
)
from .errors import UsageError
from .model import Layout, Param, Role
from .seeding import Seed

METHOD_NAMES = ("kaiming", "xavier", "orthogonal", "random", "identity")
_METHOD_ALIASES = {"he": "kaiming", "glorot": "xavier"}

# ----------------------------------------------------------------------------------------------
# Sub-options: one table, read by the parser, describe(), the CLI help and `netinit methods`.

GAINS: dict[str, Callable[[float], float]] = {
    # torch.nn.init.calculate_gain
    "linear": lambda slope: 1.0,
    "sigmoid": lambda slope: 1.0,
    "tanh": lambda slope: 5.0 / 3.0,
    "relu": lambda slope: math.sqrt(2.0),
    "leaky_relu": lambda slope: math.sqrt(2.0 / (1.0 + slope * slope)),
    "selu": lambda slope: 0.75,
}
FAN_MODES = ("fan_in", "fan_out", "fan_avg")
SCALING_DISTRIBUTIONS = ("normal", "uniform", "truncated_normal")
# std of N(0,1) truncated to [-2, 2]: truncated_normal draws from N(0, σ/c) cut at ±2σ/c (Keras, JAX).
TRUNCATED_STD = 0.87962566103423978


@dataclass(frozen=True)
class OptionDef:
    name: str
    kind: str  # "choice" | "number" | "positive" | "gain" | "distribution" | "noise"
    default: object
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _scaling_options(mode: str, nonlinearity: str) -> tuple[OptionDef, ...]:
    return (
        OptionDef("distribution", "choice", "normal", "shape of the draw", SCALING_DISTRIBUTIONS),
        OptionDef("mode", "choice", mode, "which fan n is (fan_avg = (fan_in + fan_out)/2)", FAN_MODES),
        OptionDef(
            "nonlinearity", "choice", nonlinearity, "sets the gain (torch calculate_gain)", tuple(GAINS)
        ),
        OptionDef("negative_slope", "number", 0.01, "leaky_relu slope a: gain √(2/(1+a²))"),
        OptionDef("gain", "gain", None, "overrides the nonlinearity's gain"),
    )


_FORGET_BIAS = OptionDef(
    "forget_bias",
    "number",
    0.0,
    "LSTM forget-gate bias, on one bias vector only (ONNX B: Wb's f; torch: bias_ih's f)",
)

METHODS: dict[str, tuple[OptionDef, ...]] = {
    "kaiming": (*_scaling_options("fan_in", "relu"), _FORGET_BIAS),
    "xavier": (*_scaling_options("fan_avg", "linear"), _FORGET_BIAS),
    "orthogonal": (OptionDef("gain", "positive", 1.0, "scale of the orthogonal matrix"), _FORGET_BIAS),
    "random": (
        OptionDef("weights", "distribution", Distribution("normal", (0.0, 1.0)), "distribution of weights"),
        OptionDef("biases", "noise", Distribution("none", ()), "distribution of biases (none = 0)"),
        _FORGET_BIAS,
    ),
    "identity": (
        OptionDef(
            "distribution", "noise", Distribution("normal", (0.0, 0.01)), "noise added to the identity"
        ),
        _FORGET_BIAS,
    ),
}
# Shown by describe() even at their defaults; the rest only when changed.
_PRIMARY = {
    "kaiming": ("distribution", "mode", "nonlinearity"),
    "xavier": ("distribution", "mode", "nonlinearity"),
    "orthogonal": ("gain",),
    "random": ("weights", "biases"),
    "identity": ("distribution",),
}
OVERRIDE_KEYS = (
    "distribution",
    "weights",
    "biases",
    "mode",
    "nonlinearity",
    "negative_slope",
    "gain",
    "forget_bias",
)


def _format_value(value: object) -> str:
    if value is None:
        return "auto"
    if isinstance(value, Distribution):
        return value.describe()
    if isinstance(value, float):
        return format_number(value)
    return str(value)


@dataclass(frozen=True)
class MethodSpec:
    """A method and all its sub-options (defaults filled in), sorted by key."""

    name: str
    options: tuple[tuple[str, object], ...] = field(default=())

    def get(self, key: str) -> object:
        for option, value in self.options:
            if option == key:
                return value
        raise KeyError(f"{self.name} has no option {key!r}")

    def describe(self) -> str:
        """Canonical compact form; ``parse_method(spec.describe()) == spec``."""
        defaults = {o.name: o.default for o in METHODS[self.name]}
        shown = [
            f"{key}={_format_value(value)}"
            for key, value in self.options
            if key in _PRIMARY[self.name] or value != defaults[key]
        ]
        return f"{self.name}({', '.join(shown)})"

    def __str__(self) -> str:
        return self.describe()


def _methods_taking(key: str) -> list[str]:
    return [name for name in METHOD_NAMES if any(o.name == key for o in METHODS[name])]


def _option_value(option: OptionDef, node: Node) -> object:
    """Interpret ``node`` as the value of ``option`` (raises :class:`SpecSyntaxError`)."""
    if option.kind == "choice":
        if node.name is None or node.args is not None or node.name not in option.choices:
            raise SpecSyntaxError(node.start, f"{option.name} must be one of {', '.join(option.choices)}")
        return node.name
    if option.kind in ("number", "positive", "gain"):
        if option.kind == "gain" and node.name in ("auto", "none") and node.args is None:
            return None
        if node.number is None:
            raise SpecSyntaxError(node.start, f"{option.name} must be a number")
        if option.kind != "number" and node.number <= 0:
            raise SpecSyntaxError(node.start, f"{option.name} must be > 0")
        return node.number
    return distribution_from_node(node, allow_none=option.kind == "noise")


def _accepted_forms(method: str | None = None) -> str:
    if method is None:
        return (
            f"{' | '.join(METHOD_NAMES)}, optionally with (key=value, …), e.g. kaiming(distribution=uniform)"
        )
    keys = ", ".join(o.name for o in METHODS[method])
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
    name = _METHOD_ALIASES.get(node.name or "", node.name or "")
    if node.number is not None or name not in METHODS:
        raise caret_error("--method", text, node.start, "unknown method", _accepted_forms())
    definitions = {o.name: o for o in METHODS[name]}
    values: dict[str, object] = {o.name: o.default for o in METHODS[name]}
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
                f"{name} has no option {arg.key!r}{hint}",
                _accepted_forms(name),
            )
        if arg.key in given:
            raise caret_error(
                "--method", text, arg.key_pos, f"{arg.key} is given twice", _accepted_forms(name)
            )
        try:
            values[arg.key] = _option_value(definitions[arg.key], arg.value)
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
            values[key] = _option_value(definitions[key], parse_expression(str(raw)))
        except SpecSyntaxError as error:
            raise caret_error(
                flag, str(raw), error.pos, error.problem, _option_forms(definitions[key])
            ) from None
        given[key] = flag
    if "negative_slope" in given and values.get("nonlinearity") != "leaky_relu":
        raise UsageError(
            f"{given['negative_slope']} negative_slope applies only to nonlinearity=leaky_relu; "
            "add nonlinearity=leaky_relu (or --nonlinearity leaky_relu)"
        )
    return MethodSpec(name, tuple(sorted(values.items())))


def _option_forms(option: OptionDef) -> str:
    if option.kind == "choice":
        return " | ".join(option.choices)
    if option.kind == "gain":
        return "a number > 0, or auto"
    if option.kind in ("number", "positive"):
        return "a number" + (" > 0" if option.kind == "positive" else "")
    from .distributions import ACCEPTED_FORMS

    return ACCEPTED_FORMS + (", none" if option.kind == "noise" else "")


# ----------------------------------------------------------------------------------------------
# What one tensor gets.

Filler = Callable[[np.ndarray, Seed, str], None]


@dataclass
class TensorInit:
    """How one tensor is filled: table label, fans, exact expected moments, the fill itself.

    ``expected_std`` is the exact standard deviation of each element where one applies; for
    orthogonal it is the exact root mean square gain/√max(rows, cols) of an element; identity
    has none (ones on the diagonal, noise elsewhere).
    """

    label: str
    fan_in: int | None
    fan_out: int | None
    expected_mean: float | None
    expected_std: float | None
    fill: Filler
    # Set when ``fill`` is exactly ``sample_into(distribution, …)``: the values can then be
    # generated block by block straight into the output file (see fill.direct_output).
    distribution: Distribution | None = None


def constant_init(value: float, label: str | None = None) -> TensorInit:
    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        out.fill(value)

    label = label or f"constant {format_number(value)}"
    return TensorInit(label, None, None, value, 0.0, fill, Distribution("constant", (value,)))


def distribution_init(
    dist: Distribution, label: str | None = None, fans: tuple[int, int] | None = None
) -> TensorInit:
    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        sample_into(dist, out, seed, name)

    fan_in, fan_out = fans if fans is not None else (None, None)
    return TensorInit(label or dist.describe(), fan_in, fan_out, dist.mean, dist.std, fill, dist)


# Roles with a fixed value whatever the method (torch / MXNet / timm defaults).
FIXED_VALUES: dict[Role, float] = {
    Role.NORM_SCALE: 1.0,
    Role.NORM_SHIFT: 0.0,
    Role.RUNNING_MEAN: 0.0,
    Role.RUNNING_VAR: 1.0,
    Role.PRELU_SLOPE: 0.25,  # torch nn.PReLU init
    Role.LAYER_SCALE: 1e-6,  # ConvNeXt / CaiT layer_scale_init_value
    Role.ZERO: 0.0,  # LoRA B and friends
}
# timm: trunc_normal_(pos_embed / cls_token, std=.02).  timm's bounds ±2 are absolute and never
# bite at σ = 0.02 (pytorch-image-models#1286); we cut at ±2σ as that code intends.
TOKEN_DISTRIBUTION = Distribution("truncated_normal", (0.0, 0.02, -0.04, 0.04))
LSTM_BIAS_BLOCKS = 8  # ONNX LSTM B = [Wb, Rb], gates i, o, f, c each
LSTM_FORGET_BLOCK = 2  # Wb's f block


def initializer_for(param: Param, spec: MethodSpec, *, fan_mode: str = "semantic") -> TensorInit:
    """The initializer of ``param`` under ``spec``.

    * WEIGHT, RECURRENT, EMBEDDING (and any other role that reaches here): the method.
    * BIAS: 0, or Random's ``biases``; ``forget_bias`` sets the block ``layout.forget_block``
      (ONNX LSTM ``B`` ``[dirs, 8H]``, gates i, o, f, c, Wb then Rb: Wb's f block; torch
      ``bias_ih_lK`` ``[4H]``, gates i, f, g, o: block 1, ``bias_hh`` untouched), so the
      effective bias is exactly ``forget_bias``.
    * Fixed roles (:data:`FIXED_VALUES`) and TOKEN (:data:`TOKEN_DISTRIBUTION`) whatever the method.
    * EMBEDDING ``[vocab, dim]`` under Kaiming/Xavier: σ = gain'/√dim where gain' is 1 unless
      ``gain`` is given (Flax ``Embed``'s default, LeCun scaling: a lookup has no nonlinearity
      before it, and torch's N(0, 1) ignores the method); Orthogonal, Random and Identity treat it
      like any ``[out=vocab, in=dim]`` matrix.
    """
    if fan_mode not in ("semantic", "torch"):
        raise UsageError(f"fan mode {fan_mode!r}: expected semantic or torch")
    role = param.role
    if role in FIXED_VALUES:
        return constant_init(FIXED_VALUES[role])
    if role is Role.TOKEN:
        return distribution_init(TOKEN_DISTRIBUTION)
    if role is Role.BIAS:
        return _bias_init(param, spec)
    return _weight_init(param, spec, fan_mode)


def _bias_init(param: Param, spec: MethodSpec) -> TensorInit:
    biases = spec.get("biases") if spec.name == "random" else Distribution("none", ())
    assert isinstance(biases, Distribution)
    base = constant_init(0.0) if biases.kind == "none" else distribution_init(biases)
    forget = spec.get("forget_bias")
    assert isinstance(forget, float)
    layout = param.layout
    if not forget or layout is None or not layout.out_axes:
        return base
    forget_block = layout.forget_block
    if forget_block is None and layout.blocks == LSTM_BIAS_BLOCKS:
        forget_block = LSTM_FORGET_BLOCK  # an ONNX LSTM B classified before forget_block existed
    if forget_block is None:
        return base
    axis = layout.out_axes[0]
    block = param.shape[axis] // layout.blocks
    index: list[slice] = [slice(None)] * len(param.shape)
    index[axis] = slice(forget_block * block, (forget_block + 1) * block)

    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        base.fill(out, seed, name)
        out[tuple(index)] = forget

    return TensorInit(f"{base.label}, forget gate {format_number(forget)}", None, None, None, None, fill)


def _fans(param: Param, fan_mode: str) -> tuple[int, int, str]:
    """(fan_in, fan_out, note) of a weight; the note says when a convention was assumed."""
    shape, layout = param.shape, param.layout
    if layout is not None:
        fan_in, fan_out = layout.torch_fans(shape) if fan_mode == "torch" else layout.fans(shape)
        return max(fan_in, 1), max(fan_out, 1), ""
    if len(shape) >= 2:
        field_size = math.prod(shape[2:])
        return max(shape[1] * field_size, 1), max(shape[0] * field_size, 1), "assumed [out, in, k…]"
    size = max(math.prod(shape), 1)
    return size, size, "no layout: fan_in = fan_out = size"


def calculate_gain(nonlinearity: str, negative_slope: float = 0.01) -> float:
    """torch.nn.init.calculate_gain: linear/sigmoid 1, tanh 5/3, relu √2, leaky_relu √(2/(1+a²)), selu 3/4."""
    return GAINS[nonlinearity](negative_slope)


def scaling_distribution(kind: str, std: float) -> Distribution:
    """Zero-mean distribution with standard deviation ``std``.

    normal N(0, σ); uniform U(±√3·σ); truncated_normal N(0, σ/c) cut at ±2σ/c, c = 0.8796…, so
    its standard deviation is exactly σ (Keras/JAX ``variance_scaling``).
    """
    if kind == "normal":
        return Distribution("normal", (0.0, std))
    if kind == "uniform":
        bound = math.sqrt(3.0) * std
        return Distribution("uniform", (-bound, bound))
    wide = std / TRUNCATED_STD
    return Distribution("truncated_normal", (0.0, wide, -2.0 * wide, 2.0 * wide))


def _weight_init(param: Param, spec: MethodSpec, fan_mode: str) -> TensorInit:
    fan_in, fan_out, note = _fans(param, fan_mode)
    suffix = f" ({note})" if note else ""
    if spec.name in ("kaiming", "xavier"):
        kind = str(spec.get("distribution"))
        gain = spec.get("gain")
        if param.role is Role.EMBEDDING and param.shape:
            dim = max(param.shape[-1], 1)
            std = (1.0 if gain is None else float(gain)) / math.sqrt(dim)  # type: ignore[arg-type]
            dist = scaling_distribution(kind, std)
            return distribution_init(dist, f"{spec.name} {kind} (embedding: 1/√dim)", (dim, dim))
        if gain is None:
            gain = calculate_gain(str(spec.get("nonlinearity")), float(spec.get("negative_slope")))  # type: ignore[arg-type]
        mode = spec.get("mode")
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[str(mode)]
        dist = scaling_distribution(kind, float(gain) / math.sqrt(n))  # type: ignore[arg-type]
        return distribution_init(dist, f"{spec.name} {kind}{suffix}", (fan_in, fan_out))
    if spec.name == "random":
        weights = spec.get("weights")
        assert isinstance(weights, Distribution)
        return distribution_init(weights, f"random {weights.describe()}", (fan_in, fan_out))
    if spec.name == "orthogonal":
        gain = float(spec.get("gain"))  # type: ignore[arg-type]
        plan = _matrix_plan(param.shape, param.layout, fan_mode)
        rows, cols = plan.block_shape
        blocks = " per block" if plan.row_blocks * plan.col_blocks > 1 else ""

        def fill_orthogonal(out: np.ndarray, seed: Seed, name: str) -> None:
            orthogonal_fill(out, plan, gain, seed, name)

        rms = gain / math.sqrt(max(rows, cols, 1))
        label = f"orthogonal gain={format_number(gain)}{blocks}{suffix}"
        return TensorInit(label, fan_in, fan_out, 0.0, rms, fill_orthogonal)
    noise = spec.get("distribution")
    assert isinstance(noise, Distribution)
    plan = _matrix_plan(param.shape, param.layout, "semantic")

    def fill_identity(out: np.ndarray, seed: Seed, name: str) -> None:
        sample_into(noise, out, seed, name)
        out.reshape(-1)[identity_indices(plan)] += 1

    shown = "" if noise.kind == "none" else f" + {noise.describe()}"
    return TensorInit(f"identity{shown}{suffix}", fan_in, fan_out, None, None, fill_identity)


# ----------------------------------------------------------------------------------------------
# Tensors as matrices: orthogonal and identity work on (rows = outputs, cols = the rest).


@dataclass(frozen=True)
class MatrixPlan:
    """How a stored tensor is read as a stack of (rows × cols) matrices.

    ``perm`` orders the stored axes as batch, row axes, column axes; the matrix of batch item b
    is ``transpose(perm).reshape(batch, rows, cols)[b]``, split into ``row_blocks`` ×
    ``col_blocks`` independent blocks (groups, gate blocks) that lie on the block diagonal.
    ``centre`` lists, for each column axis, the centre tap used by identity (-1: every index).
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    batch: int
    rows: int
    cols: int
    row_axes: int  # how many axes of perm (after the batch axes) form the rows
    batch_axes: int
    in_axes: int  # how many column axes (first ones) are inputs; the rest are receptive field
    row_blocks: int = 1
    col_blocks: int = 1

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.rows // self.row_blocks, self.cols // self.col_blocks


def _matrix_plan(shape: tuple[int, ...], layout: Layout | None, fan_mode: str) -> MatrixPlan:
    rank = len(shape)
    if rank == 0:
        return MatrixPlan(shape, (), 1, 1, 1, 0, 0, 0)
    if layout is None or rank == 1:
        # torch convention [out, in, k…]; a vector is a single column.
        perm = tuple(range(rank))
        rows = shape[0]
        return MatrixPlan(shape, perm, 1, rows, math.prod(shape[1:]), 1, 0, min(rank - 1, 1))
    batch_axes = tuple(layout.batch_axes)
    batch = math.prod(shape[a] for a in batch_axes)
    if fan_mode == "torch":
        rest = [a for a in range(rank) if a not in batch_axes]
        torch_order = [rest[p] for p in layout.torch_perm] if layout.torch_perm is not None else rest
        perm = (*batch_axes, *torch_order)
        rows = shape[torch_order[0]]
        cols = math.prod(shape[a] for a in torch_order[1:])
        return MatrixPlan(shape, perm, batch, rows, cols, 1, len(batch_axes), 1)
    out_axes, in_axes = tuple(layout.out_axes), tuple(layout.in_axes)
    field_axes = layout.rf_axes(rank)
    perm = (*batch_axes, *out_axes, *in_axes, *field_axes)
    rows = math.prod(shape[a] for a in out_axes)
    cols = math.prod(shape[a] for a in (*in_axes, *field_axes))
    row_blocks = layout.blocks if layout.blocks > 1 else layout.out_divisor
    col_blocks = layout.in_divisor if row_blocks == 1 else 1
    if rows % row_blocks or cols % col_blocks:
        row_blocks = col_blocks = 1
    return MatrixPlan(
        shape, perm, batch, rows, cols, len(out_axes), len(batch_axes), len(in_axes), row_blocks, col_blocks
    )


def identity_indices(plan: MatrixPlan) -> np.ndarray:
    """Flat indices (into the stored tensor) of the ones of the identity.

    Each (row block, column block) pair on the diagonal gets eye on its leading square; the
    receptive field contributes its centre tap k//2 (torch ``dirac_``); batch items all get one.
    A vector (or scalar) is all ones: its identity is a unit scale.
    """
    shape = plan.shape
    if len(shape) <= 1:
        return np.arange(math.prod(shape))
    groups = max(plan.row_blocks, plan.col_blocks)
    permuted = [shape[a] for a in plan.perm]
    nb, nr = plan.batch_axes, plan.row_axes
    batch_dims, row_dims = permuted[:nb], permuted[nb : nb + nr]
    col_dims = permuted[nb + nr :]
    in_dims, field_dims = col_dims[: plan.in_axes], col_dims[plan.in_axes :]
    block_rows = plan.rows // plan.row_blocks
    block_inputs = math.prod(in_dims) // plan.col_blocks
    diagonal = np.arange(min(block_rows, block_inputs))
    group = np.arange(groups)[:, None]
    row = (group * block_rows * (plan.row_blocks > 1) + diagonal).reshape(-1)
    col_in = (group * block_inputs * (plan.col_blocks > 1) + diagonal).reshape(-1)
    batch = np.arange(plan.batch)
    # Column index = input index × field size + the field's centre tap.
    field_size = math.prod(field_dims)
    centre = np.ravel_multi_index(tuple(d // 2 for d in field_dims), field_dims) if field_dims else 0
    col = col_in * field_size + centre
    b, r = np.meshgrid(batch, np.arange(row.size), indexing="ij")
    coords: list[np.ndarray] = []
    coords += list(np.unravel_index(b.reshape(-1), batch_dims)) if batch_dims else []
    coords += list(np.unravel_index(row[r.reshape(-1)], row_dims))
    coords += list(np.unravel_index(col[r.reshape(-1)], col_dims)) if col_dims else []
    stored = [np.empty(0, np.intp)] * len(shape)
    for position, axis in enumerate(plan.perm):
        stored[axis] = coords[position]
    flat: np.ndarray = np.ravel_multi_index(tuple(stored), shape)
    return flat


def orthogonal_fill(out: np.ndarray, plan: MatrixPlan, gain: float, seed: Seed, name: str) -> None:
    """Haar-distributed orthogonal blocks × gain (rows ≤ cols: W·Wᵀ = gain²·I, else Wᵀ·W = gain²·I).

    Draws a N(0, 1) matrix from the tensor's streams, takes the Q factor of its QR decomposition
    with R's diagonal made positive (Mezzadri 2007; wide blocks via the transpose), computed
    with CholeskyQR2 (:func:`orthonormalize`).
    """
    permuted_shape = tuple(plan.shape[a] for a in plan.perm)
    normal = Distribution("normal", (0.0, 1.0))
    single = plan.batch == 1 and plan.row_blocks == plan.col_blocks == 1
    if single and plan.perm == tuple(range(len(plan.shape))) and out.flags.c_contiguous:
        # The stored tensor *is* the matrix: draw and orthonormalize in place, no copies.
        matrix = out.reshape(plan.rows, plan.cols)
        sample_into(normal, matrix, seed, name)
        if not _orthonormalize_in_place(matrix):
            matrix[...] = orthonormalize(matrix)
        if gain != 1.0:
            matrix *= out.dtype.type(gain)
        return
    matrices = np.empty((plan.batch, plan.rows, plan.cols), out.dtype)
    sample_into(normal, matrices, seed, name)
    block_rows, block_cols = plan.block_shape
    for b in range(plan.batch):
        for g in range(max(plan.row_blocks, plan.col_blocks)):
            r0 = g * block_rows if plan.row_blocks > 1 else 0
            c0 = g * block_cols if plan.col_blocks > 1 else 0
            block = matrices[b, r0 : r0 + block_rows, c0 : c0 + block_cols]
            block[...] = orthonormalize(block)
    if gain != 1.0:
        matrices *= out.dtype.type(gain)
    inverse = np.argsort(plan.perm)
    out[...] = matrices.reshape(permuted_shape).transpose(inverse)


# float32 CholeskyQR through OpenBLAS (blas.py) by the block's aspect ratio a = min/max of its
# sides.  A Gaussian block's condition number is about (1 + √a)/(1 − √a) (Marchenko–Pastur) and
# one pass leaves an orthogonality error of about cond²·2⁻²⁴: up to a = 0.7 (cond ≈ 10) one pass
# stays near 1e-6; up to 0.9 (cond ≈ 38) a second pass brings it back to rounding level; closer
# to square the float32 Gram matrix may not be positive definite and the NumPy path (first Gram
# in float64) runs.
ONE_PASS_ASPECT = 0.7
TWO_PASS_ASPECT = 0.9


def _orthonormalize_in_place(matrix: np.ndarray) -> bool:
    """Orthonormalize a C-contiguous float32 block in place with BLAS; False if not done."""
    rows, cols = matrix.shape
    aspect = min(rows, cols) / max(rows, cols, 1)
    if not (blas.AVAILABLE and matrix.dtype == np.float32 and matrix.flags.c_contiguous):
        return False
    if aspect > TWO_PASS_ASPECT or min(rows, cols) == 0:
        return False
    saved = None if aspect <= ONE_PASS_ASPECT else matrix.copy()
    gram = np.empty((min(rows, cols),) * 2, np.float32)
    try:
        for _ in range(1 if aspect <= ONE_PASS_ASPECT else 2):
            blas.cholesky_qr_pass(matrix, gram)
    except blas.NotPositiveDefinite:
        if saved is None:
            return False  # potrf failed before any trsm: matrix unchanged
        matrix[...] = saved
        return False
    return True


def orthonormalize(a: np.ndarray) -> np.ndarray:
    """The Q factor (positive-diagonal R) of a tall or wide matrix, in ``a``'s dtype."""
    work = np.array(a, order="C")
    if _orthonormalize_in_place(work):
        return work
    if a.shape[0] < a.shape[1]:
        return orthonormalize(a.T).T
    work = np.ascontiguousarray(a)
    try:
        return _cholesky_qr2(work)
    except np.linalg.LinAlgError:
        q, r = np.linalg.qr(work.astype(np.float64))
        q *= np.where(np.diagonal(r) < 0, -1.0, 1.0)
        return q.astype(a.dtype)


def _cholesky_qr2(a: np.ndarray) -> np.ndarray:
    """CholeskyQR2 on a tall matrix (Yamamoto et al. 2015), BLAS-3 only, in ``a``'s dtype.

    Pass: G = AᵀA, R = chol(G) (upper, positive diagonal), A ← A·R⁻¹.  One pass loses
    orthogonality like cond(A)²·u; the second pass, on an almost orthogonal matrix, brings it to
    the rounding level.  When the Marchenko–Pastur estimate of cond(A) for a Gaussian matrix,
    (√m + √n)/(√m − √n), is too large for float32 (near-square blocks), the first Gram matrix is
    formed in float64 so that the first pass only loses cond(A)·u.  If the second Gram matrix is
    still far from I, a third pass runs.
    """
    m, n = a.shape
    single = a.dtype == np.float32
    ratio = math.sqrt(n / m)
    condition = (1 + ratio) / max(1 - ratio, 1e-12)
    q = a.copy()
    passes = 2
    for step in range(3):
        if step == passes:
            break
        if step == 0 and single and condition > 100:
            wide = q.astype(np.float64)
            gram = wide.T @ wide
        else:
            gram = q.T @ q  # NumPy runs x.T @ x as one SYRK
            if step == 1 and np.max(np.abs(gram - np.eye(n, dtype=gram.dtype))) > 1e-2:
                passes = 3
        _right_solve_upper(q, _cholesky_upper(gram).astype(q.dtype))
    return q


def _cholesky_upper(gram: np.ndarray) -> np.ndarray:
    """Upper R with RᵀR = gram and positive diagonal, recursively in ``gram``'s dtype.

    NumPy's own cholesky always computes in float64; splitting into halves keeps the bulk of
    the work in matrix products of the array's dtype (R12 = R11⁻ᵀ·G12, S = G22 − R12ᵀ·R12).
    """
    n = gram.shape[0]
    if n <= 256:
        return np.linalg.cholesky(gram.astype(np.float64)).T.astype(gram.dtype)
    k = n // 2
    upper = np.zeros_like(gram)
    upper[:k, :k] = _cholesky_upper(gram[:k, :k])
    coupling = np.ascontiguousarray(gram[:k, k:].T)  # R12ᵀ = G12ᵀ·R11⁻¹
    _right_solve_upper(coupling, upper[:k, :k])
    upper[:k, k:] = coupling.T
    upper[k:, k:] = _cholesky_upper(gram[k:, k:] - coupling @ coupling.T)
    return upper


def _right_solve_upper(a: np.ndarray, upper: np.ndarray) -> None:
    """a ← a·upper⁻¹ in place (recursive blocked triangular solve: matrix products only)."""
    n = upper.shape[0]
    if n <= 128:
        a[...] = a @ np.linalg.inv(upper.astype(np.float64)).astype(a.dtype)
        return
    k = n // 2
    _right_solve_upper(a[:, :k], upper[:k, :k])
    a[:, k:] -= a[:, :k] @ upper[:k, k:]
    _right_solve_upper(a[:, k:], upper[k:, k:])


# ----------------------------------------------------------------------------------------------


def describe_methods() -> str:
    """The text of ``netinit methods``."""
    formulas = {
        "kaiming": "He et al. 2015: σ = gain/√n, n = fan by mode; normal N(0, σ), uniform U(±√3σ),\n"
        "    truncated_normal N(0, σ/0.8796) cut at ±2σ/0.8796 (std σ).  Default = He for ReLU.",
        "xavier": "Glorot & Bengio 2010: same variance scaling, defaults fan_avg and gain 1:\n"
        "    σ = gain·√(2/(fan_in + fan_out)).",
        "orthogonal": "Saxe et al. 2014: Q of the QR of a N(0,1) matrix (sign-corrected, Haar), tensor read as\n"
        "    (outputs, inputs·field); per group / gate block; × gain.",
        "random": "weights from a distribution; biases from another (none = 0).",
        "identity": "eye on the leading square block (conv: Dirac centre tap k//2 per group; RNN: per gate)\n"
        "    plus noise from distribution (a bare number σ = normal(0, σ); none = exact).",
    }
    lines = ["Methods (--method NAME or NAME(key=value, …); each key is also a --key flag):", ""]
    for name in METHOD_NAMES:
        lines.append(f"{name}  {formulas[name]}")
        for option in METHODS[name]:
            choices = f" [{' | '.join(option.choices)}]" if option.choices else ""
            lines.append(
                f"    {option.name:<15} default {_format_value(option.default)}{choices}: {option.help}"
            )
        lines.append("")
    lines += [
        "Gains (nonlinearity): linear 1, sigmoid 1, tanh 5/3, relu √2, leaky_relu √(2/(1+a²)), selu 3/4.",
        "Whatever the method: biases 0, norm scale 1, norm shift 0, running mean 0, running var 1,",
        "PReLU slope 0.25, layer scale 1e-6, tokens truncated_normal(0, 0.02, -0.04, 0.04).",
        "Distributions: a number σ = normal(0, σ); normal(mean, std); uniform(low, high);",
        "truncated_normal(mean, std, low, high) with absolute bounds; constant(c); none.",
    ]
    return "\n".join(lines)
