"""The records that flow through the pipeline: read → classify → plan → fill → write → report.

Nothing here knows about ONNX or safetensors.  A format reader produces :class:`Param`
records; a classifier gives each one a :class:`Role` and a :class:`Layout`; the planner turns
them into frozen :class:`Planned` entries; the filler produces values lazily, one tensor at a
time, and records what it observed in each as a :class:`Filled`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """What a stored tensor *is*.  The value decides how (and whether) it is initialized."""

    WEIGHT = "weight"  # a matrix or kernel that the method fills
    RECURRENT = "recurrent"  # RNN recurrent weights R (per gate block)
    EMBEDDING = "embedding"  # lookup table [vocab, dim]
    BIAS = "bias"
    NORM_SCALE = "norm_scale"
    NORM_SHIFT = "norm_shift"
    RUNNING_MEAN = "running_mean"
    RUNNING_VAR = "running_var"
    PRELU_SLOPE = "prelu_slope"
    LAYER_SCALE = "layer_scale"  # ConvNeXt/CaiT gamma: small constant
    TOKEN = "token"  # cls_token, pos_embed: truncated normal 0.02
    WEIGHT_NORM_G = "weight_norm_g"  # weight norm's magnitude g = ‖v‖, derived from its direction v
    ZERO = "zero"  # zero by convention (LoRA B)
    CONSTANT = "constant"  # never touched: shapes, integers, buffers, masks
    # A weight slot whose stored values are a fixed computation (DFT basis, DFL arange,
    # averaging kernel): kept unless a rule names it, even under --all
    FIXED_TRANSFORM = "fixed_transform"
    QUANTIZED = "quantized"  # quantized weights and their scales/zero points: never touched
    SCALAR = "scalar"  # float scalar in arithmetic: kept unless opted in
    UNKNOWN = "unknown"  # float tensor with no recognised role: kept unless opted in
    CONFLICT = "conflict"  # used in slots that disagree: kept unless opted in

    @property
    def learnable(self) -> bool:
        """Roles that ``--all`` re-initializes (running statistics included, as NetInitialize does)."""
        return self in LEARNABLE_ROLES

    @property
    def random(self) -> bool:
        """Roles whose values come from the chosen method (the others have fixed values)."""
        return self in (Role.WEIGHT, Role.RECURRENT, Role.EMBEDDING)


LEARNABLE_ROLES = frozenset(
    {
        Role.WEIGHT,
        Role.RECURRENT,
        Role.EMBEDDING,
        Role.BIAS,
        Role.NORM_SCALE,
        Role.NORM_SHIFT,
        Role.RUNNING_MEAN,
        Role.RUNNING_VAR,
        Role.PRELU_SLOPE,
        Role.LAYER_SCALE,
        Role.TOKEN,
        Role.ZERO,
        Role.WEIGHT_NORM_G,
    }
)


@dataclass(frozen=True)
class Layout:
    """Which axes of the *stored* tensor are inputs, outputs, or independent batches.

    Axes not named in ``in_axes``, ``out_axes`` or ``batch_axes`` form the receptive field.
    ``in_divisor`` / ``out_divisor`` say that the named axis holds a count that is split into
    independent groups (conv ``groups`` or packed RNN gate blocks): the semantic fan is per group.
    ``blocks`` is the number of packed blocks along the first out axis (RNN gates), which
    orthogonal and identity treat as separate matrices; ``forget_block`` marks an LSTM bias's
    forget gate.  ``torch_perm`` maps the stored axes
    (after dropping batch axes) to the orientation torch would store the parameter in, so that
    torch's own ``_calculate_fan_in_and_fan_out`` can be reproduced for parity.
    """

    in_axes: tuple[int, ...]
    out_axes: tuple[int, ...]
    batch_axes: tuple[int, ...] = ()
    in_divisor: int = 1
    out_divisor: int = 1
    blocks: int = 1
    torch_perm: tuple[int, ...] | None = None
    label: str = ""
    # LSTM biases: which of the ``blocks`` is the forget gate, set on ONE of the two bias
    # vectors only (ONNX ``B``: Wb's f = block 2 of 8; torch ``bias_ih``: f = block 1 of 4),
    # so that ``--forget-bias`` gives an effective bias of exactly its value.
    forget_block: int | None = None

    def problem(self, shape: tuple[int, ...]) -> str | None:
        """Why ``shape`` cannot be read with this layout (``None`` if it can).  Classifiers call
        this so that an inconsistent model becomes a clear input error, not a crash in fans()."""
        rank = len(shape)
        axes = (*self.in_axes, *self.out_axes, *self.batch_axes)
        if any(not 0 <= axis < rank for axis in axes):
            return f"layout {self.describe()} needs more than {rank} dimension(s)"
        if min(self.in_divisor, self.out_divisor, self.blocks) < 1:
            return f"layout {self.describe()} has a group or block count below 1"
        if self.out_axes and shape[self.out_axes[0]] % self.blocks:
            return f"dimension {shape[self.out_axes[0]]} is not a multiple of {self.blocks} gate blocks"
        return None

    def rf_axes(self, rank: int) -> tuple[int, ...]:
        named = set(self.in_axes) | set(self.out_axes) | set(self.batch_axes)
        return tuple(a for a in range(rank) if a not in named)

    def fans(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """Semantic (fan_in, fan_out): per group and per gate block, receptive field included."""
        rf = math.prod(shape[a] for a in self.rf_axes(len(shape)))
        fan_in = math.prod(shape[a] for a in self.in_axes) * rf // self.in_divisor
        fan_out = math.prod(shape[a] for a in self.out_axes) * rf // self.out_divisor
        return max(fan_in, 0), max(fan_out, 0)

    def torch_fans(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """What ``torch.nn.init._calculate_fan_in_and_fan_out`` gives for this parameter."""
        dims = [shape[a] for a in range(len(shape)) if a not in self.batch_axes]
        if self.torch_perm is not None:
            dims = [dims[a] for a in self.torch_perm]
        if len(dims) < 2:
            return self.fans(shape)
        rf = math.prod(dims[2:])
        return dims[1] * rf, dims[0] * rf

    def describe(self) -> str:
        return self.label or f"in={list(self.in_axes)} out={list(self.out_axes)}"


@dataclass(frozen=True)
class Layer:
    """The op a tensor of an ONNX graph feeds, from the topology: its type, the stored weight of
    that op (set for a bias: the tensor whose fans its layer has) and an RNN's ``hidden_size``.
    Presets read it (torch's bias bound 1/√fan_in of its layer, RNN 1/√hidden)."""

    op: str
    weight: str | None = None
    hidden_size: int | None = None


class Action(StrEnum):
    FILL = "filled"  # values generated by netinit
    KEEP = "kept"  # learnable (or opt-in) tensor left as it was
    CONSTANT = "constant"  # never touched


@dataclass
class Param:
    """One stored tensor, as the format reader and the classifier see it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors-style name: F32, F16, BF16, F64, F8_E4M3, F8_E5M2, I64, BOOL, …
    has_data: bool = True
    role: Role = Role.UNKNOWN
    layout: Layout | None = None
    reason: str = ""
    source: str = "initializer"
    aliases: tuple[str, ...] = ()  # other names that refer to the same stored tensor
    notes: list[str] = field(default_factory=list)
    layer: Layer | None = None  # ONNX: the op it feeds (classify/onnx.py); None for names

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def classified(self, role: Role, reason: str, layout: Layout | None = None) -> Param:
        return replace(self, role=role, reason=reason, layout=layout)


@dataclass(frozen=True)
class Planned:
    """What netinit will do with one tensor, and why.  Produced by :mod:`netinit_cli.plan`."""

    param: Param
    action: Action
    init: str = ""  # human form of what fills it: "kaiming(normal)", "constant(1)", …
    rule: str = ""  # which --rule / config entry chose it ("" = the command's method)
    fan_in: int | None = None
    fan_out: int | None = None
    expected_std: float | None = None
    expected_mean: float | None = None
    why: str = ""  # why this action (e.g. "has data; use --all to re-initialize")
    initializer: Any = field(default=None, repr=False)  # methods.TensorInit for FILL entries


@dataclass(frozen=True)
class Filled:
    """What the filler observed in one generated tensor, as stored (after rounding): from a
    sample of at most 65,536 values (see :mod:`netinit_cli.fill`)."""

    mean: float
    std: float
    histogram: tuple[int, ...] | None = None  # counts in equal bins from min to max; None if not finite


@dataclass(frozen=True)
class Rescaled:
    """What LSUV did to one filled weight (see :mod:`netinit_cli.lsuv`): the std of its layer's
    output on the batch before and after, the corrections and their product ``scale``; or, when
    ``skipped`` is set, why it keeps its pre-init values (``std_before`` may still be measured)."""

    layer: str  # the node, or ``op#index`` when it has no name
    op: str
    output: str  # the measured tensor: after the bias add, before the activation
    std_before: float | None
    std_after: float | None
    iterations: int
    scale: float
    converged: bool
    skipped: str | None = None


@dataclass(frozen=True)
class LsuvSummary:
    """One LSUV run: per weight name, what was done; and its cost in onnxruntime."""

    layers: dict[str, Rescaled]
    sessions: int
    passes: int
    seconds: float
    batch: str  # where the batch came from: "--data FILE" or "random normal [16, 3, 224, 224] (seed …)"
