"""The records a preset decision uses and returns.

A preset never fills anything: :func:`netinit_cli.presets.decide` looks at one classified
:class:`~netinit_cli.model.Param` and its :class:`TensorContext` and returns a
:class:`PresetChoice` — what the filler must produce, and the label the table and the JSON
report show (``hf: normal(0, 0.01414) scaled residual``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netinit_cli.distributions import Distribution

# PresetChoice.kind values.  The first four are exactly a Distribution's kind.
DRAW_KINDS = ("normal", "uniform", "truncated_normal", "constant")
KINDS = (*DRAW_KINDS, "orthogonal", "derived", "keep")


@dataclass(frozen=True)
class PresetChoice:
    """What one tensor gets under a preset.

    * ``normal`` / ``uniform`` / ``truncated_normal`` / ``constant``: every element drawn from
      ``distribution`` (a netinit :class:`Distribution`; truncated normal bounds are absolute and
      never rescaled: torch ``trunc_normal_(0, σ, -2, 2)`` is ``truncated_normal(0, σ, -2, 2)``).
    * ``orthogonal``: a Haar orthogonal matrix × ``gain``, the tensor read as (outputs, inputs·field);
      ``per_block`` True: each gate block / group is its own matrix (Flax: one Dense per gate),
      False: the whole matrix at once (Keras ``Orthogonal`` on the full ``[u, 4u]`` kernel).
    * ``derived``: weight-norm magnitude g = ‖v‖ of the layer's direction (netinit's usual rule).
    * ``keep``: leave the stored values (a fixed table, or nothing the framework would set).

    After the draw, ``zero_rows`` (indices along axis 0: an embedding's padding row) are set to 0,
    and each ``(block, value)`` of ``block_values`` sets that block of the tensor's packed gate
    axis (``layout.out_axes[0]`` split in ``layout.blocks``) to ``value`` (Keras unit_forget_bias).
    """

    kind: str
    label: str
    distribution: Distribution | None = None
    gain: float = 1.0
    per_block: bool = True
    zero_rows: tuple[int, ...] = ()
    block_values: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PresetChoice kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.kind in DRAW_KINDS) != (self.distribution is not None):
            raise ValueError(f"PresetChoice {self.kind!r} and distribution {self.distribution} disagree")
        if self.distribution is not None and self.distribution.kind != self.kind:
            raise ValueError(f"PresetChoice {self.kind!r} holds a {self.distribution.kind} distribution")

    @property
    def writes(self) -> bool:
        """False for ``keep``: the planner marks the tensor kept."""
        return self.kind != "keep"

    def prefixed(self, preset: str) -> PresetChoice:
        """The same choice with the label ``preset: label``."""
        return replace(self, label=f"{preset}: {self.label}")


def short(value: float) -> str:
    """Four significant digits for labels (exact values live in the Distribution)."""
    return f"{value:.4g}"


def draw(distribution: Distribution, why: str = "") -> PresetChoice:
    """A choice that draws every element from ``distribution``; the label shows it briefly."""
    kind, p = distribution.kind, distribution.params
    if kind == "normal":
        text = f"normal({short(p[0])}, {short(p[1])})"
    elif kind == "uniform" and p[0] == -p[1]:
        text = f"uniform(±{short(p[1])})"
    elif kind == "uniform":
        text = f"uniform({short(p[0])}, {short(p[1])})"
    elif kind == "truncated_normal":
        text = f"truncated_normal({short(p[0])}, {short(p[1])}, [{short(p[2])}, {short(p[3])}])"
    else:
        text = f"constant {short(p[0])}"
    return PresetChoice(kind, f"{text} {why}".strip(), distribution)


def normal(std: float, why: str = "", mean: float = 0.0) -> PresetChoice:
    return draw(Distribution("normal", (mean, std)), why)


def uniform(bound: float, why: str = "") -> PresetChoice:
    return draw(Distribution("uniform", (-bound, bound)), why)


def constant(value: float, why: str = "") -> PresetChoice:
    return draw(Distribution("constant", (value,)), why)


def orthogonal(gain: float = 1.0, *, per_block: bool, why: str = "") -> PresetChoice:
    scope = "per gate block" if per_block else "whole matrix"
    return PresetChoice(
        "orthogonal", f"orthogonal(gain={short(gain)}, {scope}) {why}".strip(), None, gain, per_block
    )


def keep(why: str) -> PresetChoice:
    return PresetChoice("keep", f"kept ({why})")


def derived() -> PresetChoice:
    return PresetChoice("derived", "‖v‖ of the layer's direction (weight norm)")


@dataclass(frozen=True)
class ModelContext:
    """What a preset may know about the whole model: its ``config.json`` and its names.

    ``config`` is the parsed file (empty without one); ``num_layers`` comes from the config
    (``num_hidden_layers``, ``n_layer``, ``num_layers``, ``n_layers``) or, failing that, from the
    largest layer index in the names (``layers.N.``, ``h.N.``, ``layer.N.``, ``block(s).N.``) + 1;
    ``num_layers_source`` says which.
    """

    config: Mapping[str, Any] = field(default_factory=dict, compare=False)
    config_path: str | None = None
    names: frozenset[str] = frozenset()
    num_layers: int | None = None
    num_layers_source: str = ""

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value.lower() if isinstance(value, str) and value else None

    @property
    def architectures(self) -> tuple[str, ...]:
        value = self.config.get("architectures")
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    def number(self, *keys: str) -> float | None:
        """The first of ``keys`` that the config holds as a number (top level, then text_config)."""
        for scope in (self.config, self.config.get("text_config") or {}):
            if not isinstance(scope, Mapping):
                continue
            for key in keys:
                value = scope.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
        return None


@dataclass(frozen=True)
class TensorContext:
    """What a preset needs about one tensor besides its Param.

    ``fans``: semantic (fan_in, fan_out) from the layout (``Layout.fans``); ``torch_fans``: what
    torch's ``_calculate_fan_in_and_fan_out`` gives (``Layout.torch_fans``); None for tensors
    below rank 2 or without a layout.  ``layer_fan_in``: for a bias, torch's fan_in of its
    layer's weight (safetensors: :func:`~netinit_cli.presets.context.tensor_contexts` pairs
    ``x.bias`` with ``x.weight``; ONNX: the planner gives it from the topology).  ``rnn_hidden``:
    the hidden size H of an RNN tensor.  ``tags``: ``rnn`` (any LSTM/GRU/RNN tensor),
    ``mha_in_proj`` (MultiheadAttention packed or separate q/k/v weight and bias),
    ``mha_out_proj_bias``, ``mha_bias_kv`` (``add_bias_kv``'s bias_k/bias_v).
    """

    model: ModelContext = field(default_factory=ModelContext)
    fans: tuple[int, int] | None = None
    torch_fans: tuple[int, int] | None = None
    layer_fan_in: int | None = None
    rnn_hidden: int | None = None
    tags: frozenset[str] = frozenset()
