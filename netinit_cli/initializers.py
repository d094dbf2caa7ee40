"""What one tensor gets: :class:`TensorInit`, and the initializers the methods are made of.

Each initializer takes a classified :class:`~netinit_cli.model.Param` and plain values and
returns a :class:`TensorInit`: a label for the table, the fans, the exact expected moments, and
a ``fill`` function that writes the values in place.  :mod:`netinit_cli.methods` names them and
reads their arguments from a method spec.

Fans come from the tensor's :class:`~netinit_cli.model.Layout` (semantic: per group and per gate
block) or, with ``fan_mode="torch"``, from torch's own ``_calculate_fan_in_and_fan_out`` on the
tensor in torch's orientation.  With no layout on a ≥ 2-D tensor the torch convention
``[out, in, k…]`` is assumed and the label says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from .distributions import Distribution
from .matrices import identity_indices, matrix_plan, orthogonal_fill
from .model import Param, Role
from .sampling import reach, sample_into
from .seeding import Seed
from .spec import format_number

Filler = Callable[[np.ndarray, Seed, str], None]
Reach = Callable[[np.dtype[np.floating]], float]  # compute dtype -> largest magnitude produced


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
    # generated block by block straight into the output file (see fill.py).
    distribution: Distribution | None = None
    # The largest magnitude ``fill`` produces (intermediates included) when it computes in the
    # given dtype, if known: the plan refuses what does not fit (see sampling.reach).
    reach: Reach | None = None


def constant_init(value: float, label: str | None = None) -> TensorInit:
    """Every element ``value``."""

    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        out.fill(value)

    label = label or f"constant {format_number(value)}"
    dist = Distribution("constant", (value,))
    return TensorInit(label, None, None, value, 0.0, fill, dist, partial(reach, dist))


def distribution_init(
    dist: Distribution, label: str | None = None, fans: tuple[int, int] | None = None
) -> TensorInit:
    """Independent draws of ``dist`` (:func:`~netinit_cli.sampling.sample_into`)."""

    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        sample_into(dist, out, seed, name)

    fan_in, fan_out = fans if fans is not None else (None, None)
    return TensorInit(
        label or dist.describe(), fan_in, fan_out, dist.mean, dist.std, fill, dist, partial(reach, dist)
    )


def weight_fans(param: Param, fan_mode: str) -> tuple[int, int, str]:
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


def _suffix(note: str) -> str:
    return f" ({note})" if note else ""


# ----------------------------------------------------------------------------------------------
# Variance scaling: Kaiming and Xavier are this one initializer with different defaults.

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


def variance_scaling(
    param: Param,
    fan_mode: str,
    *,
    name: str,
    distribution: str,
    mode: str,
    nonlinearity: str,
    negative_slope: float,
    gain: float | None,
) -> TensorInit:
    """σ = gain/√n with n = fan_in, fan_out or (fan_in + fan_out)/2 by ``mode``.

    gain is ``gain`` if given, else :func:`calculate_gain` of ``nonlinearity``.  The draw is
    :func:`scaling_distribution` of ``distribution`` with that σ.  He et al. 2015 (Kaiming) is
    fan_in with the ReLU gain √2; Glorot & Bengio 2010 (Xavier) is fan_avg with gain 1,
    σ = gain·√(2/(fan_in + fan_out)).

    An EMBEDDING ``[vocab, dim]`` gets σ = gain'/√dim where gain' is 1 unless ``gain`` is given
    (Flax ``Embed``'s default, LeCun scaling: a lookup has no nonlinearity before it, and torch's
    N(0, 1) ignores the method).  ``name`` is the method's name, for the label.
    """
    fan_in, fan_out, note = weight_fans(param, fan_mode)
    if param.role is Role.EMBEDDING and param.shape:
        dim = max(param.shape[-1], 1)
        std = (1.0 if gain is None else gain) / math.sqrt(dim)
        dist = scaling_distribution(distribution, std)
        return distribution_init(dist, f"{name} {distribution} (embedding: 1/√dim)", (dim, dim))
    if gain is None:
        gain = calculate_gain(nonlinearity, negative_slope)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    dist = scaling_distribution(distribution, gain / math.sqrt(n))
    return distribution_init(dist, f"{name} {distribution}{_suffix(note)}", (fan_in, fan_out))


# ----------------------------------------------------------------------------------------------
# The other weight initializers.


def random_weights(param: Param, fan_mode: str, weights: Distribution) -> TensorInit:
    """Independent draws of ``weights``, whatever the fans (which are only reported)."""
    fan_in, fan_out, _ = weight_fans(param, fan_mode)
    return distribution_init(weights, f"random {weights.describe()}", (fan_in, fan_out))


def orthogonal(param: Param, fan_mode: str, gain: float) -> TensorInit:
    """gain × a Haar-distributed orthogonal matrix per (group, gate) block (Saxe et al. 2014).

    The tensor is read as (outputs, inputs·field) (:func:`~netinit_cli.matrices.matrix_plan`);
    rows ≤ cols gives W·Wᵀ = gain²·I, else Wᵀ·W = gain²·I.  The root mean square of an element
    is exactly gain/√max(rows, cols).
    """
    fan_in, fan_out, note = weight_fans(param, fan_mode)
    plan = matrix_plan(param.shape, param.layout, fan_mode)
    rows, cols = plan.block_shape
    blocks = " per block" if plan.row_blocks * plan.col_blocks > 1 else ""

    def fill_orthogonal(out: np.ndarray, seed: Seed, name: str) -> None:
        orthogonal_fill(out, plan, gain, seed, name)

    rms = gain / math.sqrt(max(rows, cols, 1))
    label = f"orthogonal gain={format_number(gain)}{blocks}{_suffix(note)}"
    # |q| ≤ 1 for an orthonormal Q; its N(0, 1) draws reach 9.5 at most.
    return TensorInit(label, fan_in, fan_out, 0.0, rms, fill_orthogonal, reach=lambda dtype: max(gain, 10.0))


def identity(param: Param, fan_mode: str, noise: Distribution) -> TensorInit:
    """I + noise: eye on each block's leading square, conv: Dirac centre tap k//2 (torch ``dirac_``).

    The ones are placed by the semantic layout whatever ``fan_mode`` (which only sets the
    reported fans); ``noise`` of kind none gives the exact identity.
    """
    fan_in, fan_out, note = weight_fans(param, fan_mode)
    plan = matrix_plan(param.shape, param.layout, "semantic")

    def fill_identity(out: np.ndarray, seed: Seed, name: str) -> None:
        sample_into(noise, out, seed, name)
        out.reshape(-1)[identity_indices(plan)] += 1

    shown = "" if noise.kind == "none" else f" + {noise.describe()}"
    label = f"identity{shown}{_suffix(note)}"
    return TensorInit(
        label, fan_in, fan_out, None, None, fill_identity, reach=lambda dtype: reach(noise, dtype) + 1.0
    )
