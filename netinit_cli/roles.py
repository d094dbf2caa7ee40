"""Role policy: which tensors the method initializes, and what every other role gets.

netinit's one policy today: weights (WEIGHT, RECURRENT, EMBEDDING and any role not named here)
get the method; biases get 0 (or the method's ``biases`` option) plus the LSTM forget-gate bias;
normalization, running statistics, PReLU slopes, layer scales and tokens get fixed values
whatever the method (torch / MXNet / timm defaults).  ``netinit methods`` lists these
(:func:`netinit_cli.methods.describe_methods`).

A framework preset (torch, keras, flax, hf) is another policy of the same shape: a function
``(param, spec, fan_mode) -> TensorInit`` that maps roles to methods and constants, in a module
beside this one.
"""

from __future__ import annotations

import numpy as np

from .distributions import NONE, Distribution
from .errors import UsageError
from .initializers import TensorInit, constant_init, distribution_init
from .methods import MethodSpec, build_weight_init
from .model import Param, Role
from .seeding import Seed
from .spec import format_number

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


def initializer_for(param: Param, spec: MethodSpec, *, fan_mode: str = "semantic") -> TensorInit:
    """The initializer of ``param`` under ``spec``.

    * WEIGHT, RECURRENT, EMBEDDING (and any other role that reaches here): the method.
    * BIAS: 0, or the method's ``biases`` (Random); ``forget_bias`` sets the block
      ``layout.forget_block`` (ONNX LSTM ``B`` ``[dirs, 8H]``, gates i, o, f, c, Wb then Rb: Wb's
      f block; torch ``bias_ih_lK`` ``[4H]``, gates i, f, g, o: block 1, ``bias_hh`` untouched),
      so the effective bias is exactly ``forget_bias``.
    * Fixed roles (:data:`FIXED_VALUES`) and TOKEN (:data:`TOKEN_DISTRIBUTION`) whatever the method.
    """
    if fan_mode not in ("semantic", "torch"):
        raise UsageError(f"fan mode {fan_mode!r}: expected semantic or torch")
    role = param.role
    if role in FIXED_VALUES:
        return constant_init(FIXED_VALUES[role])
    if role is Role.TOKEN:
        return distribution_init(TOKEN_DISTRIBUTION)
    if role is Role.BIAS:
        return bias_init(param, spec)
    return build_weight_init(param, spec, fan_mode)


def bias_init(param: Param, spec: MethodSpec) -> TensorInit:
    """0 or draws of the spec's ``biases``; ``forget_bias`` on the LSTM forget-gate block."""
    biases = spec.get("biases") if spec.has("biases") else NONE
    assert isinstance(biases, Distribution)
    base = constant_init(0.0) if biases.kind == "none" else distribution_init(biases)
    forget = spec.get("forget_bias")
    assert isinstance(forget, float)
    layout = param.layout
    if not forget or layout is None or not layout.out_axes:
        return base
    forget_block = layout.forget_block
    if forget_block is None:
        return base
    axis = layout.out_axes[0]
    block = param.shape[axis] // layout.blocks
    index: list[slice] = [slice(None)] * len(param.shape)
    index[axis] = slice(forget_block * block, (forget_block + 1) * block)

    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        base.fill(out, seed, name)
        out[tuple(index)] = forget

    base_reach = base.reach

    def forget_reach(dtype: np.dtype[np.floating]) -> float:
        return max(base_reach(dtype) if base_reach is not None else 0.0, abs(forget))

    label = f"{base.label}, forget gate {format_number(forget)}"
    return TensorInit(label, None, None, None, None, fill, reach=forget_reach)
