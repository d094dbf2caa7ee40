"""Roles from module classes: a config template knows which torch module owns each tensor.

:func:`netinit_cli.formats.safetensors.hf_template.tensor_role` names the owner's kind
(``linear.weight``, ``embedding.weight``, ``norm.bias``, ``buffer`` …); this maps each kind to a
netinit :class:`~netinit_cli.model.Role` and :class:`~netinit_cli.model.Layout`.  Kinds the
module says nothing useful about (``other.*``: cls tokens, position tables, layer scales;
recurrent layers' gate packing) keep what the name rules give them.  Pure: no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from netinit_cli.classify.layouts import (
    EMBEDDING_LAYOUT,
    LINEAR_OUT_IN,
    MATRIX_IN_OUT,
    MOE_IN_OUT,
    MOE_OUT_IN,
    conv_layout,
    conv_transpose_layout,
)
from netinit_cli.classify.names import classify_params
from netinit_cli.model import Layout, Param, Role

if TYPE_CHECKING:
    from netinit_cli.formats.safetensors.hf_template import HfTensor


def classify_modules(tensors: Sequence[HfTensor], source: str) -> list[Param]:
    """Every template tensor as a classified param to create (``has_data=False``), except
    persistent buffers and frozen parameters, which carry the model class's values
    (``has_data=True``, CONSTANT)."""
    params = [
        Param(tensor.name, tensor.shape, tensor.dtype, has_data=tensor.value is not None, source=source)
        for tensor in tensors
    ]
    by_names = classify_params(params, "pt")
    return [_by_module(tensor, param) for tensor, param in zip(tensors, by_names, strict=True)]


def _by_module(tensor: HfTensor, param: Param) -> Param:
    owner = tensor.module_class or "the model"
    if tensor.is_buffer:
        return param.classified(Role.CONSTANT, f"persistent buffer of {owner}: the model class's values")
    if tensor.value is not None:
        return param.classified(Role.CONSTANT, f"frozen parameter of {owner}: the model class's values")
    kind, _, attribute = tensor.role.partition(".")
    found = _role_layout(kind, attribute, tensor)
    if found is None:
        return param
    role, layout = found
    if layout is not None and layout.problem(tensor.shape) is not None:
        return param  # an unusual shape for its module: the name rules decide
    return param.classified(role, f"{owner}.{tensor.attribute}", layout)


def _role_layout(kind: str, attribute: str, tensor: HfTensor) -> tuple[Role, Layout | None] | None:
    rank = len(tensor.shape)
    if attribute == "bias" and kind in ("linear", "linear_in_out", "conv", "conv_transposed", "router"):
        return Role.BIAS, None
    if kind in ("linear", "router") and attribute == "weight" and rank == 2:
        return Role.WEIGHT, LINEAR_OUT_IN
    if kind == "linear_in_out" and attribute == "weight" and rank == 2:
        return Role.WEIGHT, MATRIX_IN_OUT  # GPT-2 Conv1D stores [in, out]
    if kind == "embedding" and attribute == "weight" and rank == 2:
        return Role.EMBEDDING, EMBEDDING_LAYOUT
    if kind == "conv" and attribute == "weight" and rank >= 2:
        return Role.WEIGHT, conv_layout(rank, tensor.groups)
    if kind == "conv_transposed" and attribute == "weight" and rank >= 2:
        return Role.WEIGHT, conv_transpose_layout(rank, tensor.groups)
    if kind == "norm" and attribute in ("weight", "bias"):
        return (Role.NORM_SCALE if attribute == "weight" else Role.NORM_SHIFT), None
    if kind == "experts":
        return _experts(tensor)
    return None


def _experts(tensor: HfTensor) -> tuple[Role, Layout | None] | None:
    """A mixture-of-experts module's stacked weights (``[experts, out, in]``, or ``[experts, in,
    out]`` where transformers marks it ``is_transposed``), or one expert's slice of them as saved
    (Mixtral's ``experts.E.w1.weight``); their biases ``[experts, out]`` or ``[out]``."""
    rank = len(tensor.shape)
    if "bias" in tensor.name.rpartition(".")[2] or "bias" in tensor.attribute:
        return (Role.BIAS, None) if rank in (1, 2) else None
    if rank == 3:
        return Role.WEIGHT, MOE_IN_OUT if tensor.transposed else MOE_OUT_IN
    if rank == 2:
        layout = MATRIX_IN_OUT if tensor.transposed else LINEAR_OUT_IN
        return Role.WEIGHT, replace(layout, label=f"{layout.label} (one expert)")
    return None
