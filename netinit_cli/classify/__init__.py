"""Classification: give every stored tensor a role, a layout and a reason.

Two classifiers, one per kind of input: ONNX models by the graph's topology
(:func:`classify_graphs`), checkpoints without a graph by name, rank and dtype
(:func:`classify_params`).  Both fill in the same :class:`~netinit_cli.model.Param` fields.

Modules:
    onnx_slots     ONNX op slots and op traits, as data
    onnx_patterns  ONNX op patterns that need the graph around the op, one recognizer each
    onnx_walk      the walk from each stored tensor to its uses
    onnx           merging the findings; graph inputs; training_info
    axes           pure reshape / transpose / einsum axis algebra
    values         warnings about buffers that look learnable
    stage          the pipeline stage: an opened model's tensors classified (ties folded, notes)
    names          the ordered name rules
    name_context   the conditions and layout builders the name rules use
    families       tie pairs, token tables, weight norm, family markers
    layouts        every named layout

Names are loaded lazily: the name classifier does not import onnx.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "classify_graphs": "netinit_cli.classify.onnx",
    "classify_model": "netinit_cli.classify.onnx",
    "structured_value_note": "netinit_cli.classify.values",
    "classify_params": "netinit_cli.classify.names",
    "TIE_PAIRS": "netinit_cli.classify.families",
    "WeightNormPair": "netinit_cli.classify.families",
    "weight_norm_pair": "netinit_cli.classify.families",
}

if TYPE_CHECKING:
    from netinit_cli.classify.families import TIE_PAIRS, WeightNormPair, weight_norm_pair
    from netinit_cli.classify.names import classify_params
    from netinit_cli.classify.onnx import classify_graphs, classify_model
    from netinit_cli.classify.values import structured_value_note


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netinit_cli.classify' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "TIE_PAIRS",
    "WeightNormPair",
    "classify_graphs",
    "classify_model",
    "classify_params",
    "structured_value_note",
    "weight_norm_pair",
]
