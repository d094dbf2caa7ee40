"""Small ONNX models built by hand for the tests: a graph from nodes, typed inputs and outputs and
initializers; saving it (optionally with external data); a Gemm whose weight lives in a data file.

Every value is float32 unless a test builds its own value infos.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

F = TensorProto.FLOAT

Shape = Sequence[int | str] | None  # None: rank unknown


def float_graph(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Shape],
    outputs: Mapping[str, Shape],
    inits: Sequence[TensorProto] = (),
    *,
    name: str = "g",
    **extra: Sequence[object],
) -> onnx.GraphProto:
    """A float32 graph; ``extra`` fills other repeated fields (``sparse_initializer=[…]``, …)."""
    made = helper.make_graph(
        list(nodes),
        name,
        [helper.make_tensor_value_info(k, F, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, F, v) for k, v in outputs.items()],
        list(inits),
    )
    for key, value in extra.items():
        getattr(made, key).extend(value)
    return made


def float_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Shape],
    outputs: Mapping[str, Shape],
    inits: Sequence[TensorProto] = (),
    *,
    opset: int | None = 17,
    domains: Mapping[str, int] | None = None,
    **extra: Sequence[object],
) -> onnx.ModelProto:
    """:func:`float_graph` as a model importing the default domain at ``opset`` (None: onnx's current
    opset, without an explicit import) and each of ``domains`` at its version."""
    made = float_graph(nodes, inputs, outputs, inits, **extra)
    if opset is None and not domains:
        return helper.make_model(made)
    imports = [] if opset is None else [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(domain, version) for domain, version in (domains or {}).items()]
    return helper.make_model(made, opset_imports=imports)


def save(model: onnx.ModelProto, path: Path, *, external: bool = False) -> Path:
    """Save ``model`` to ``path``; ``external``: every tensor in ``<file name>.bin`` beside it."""
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, location=path.name + ".bin", size_threshold=0
        )
    else:
        onnx.save_model(model, str(path))
    return path


def external_gemm(
    location: str,
    *,
    dims: tuple[int, ...] = (3, 4),
    offset: int = 0,
    length: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """``y = x @ W^T`` by Gemm, with float32 ``W`` of shape ``dims`` stored externally: at
    ``location``, ``offset``, ``length`` bytes (default: the whole tensor), plus ``extra`` entries.
    The data file itself is the test's to write (or to leave out)."""
    weight = TensorProto(name="W", data_type=F, dims=list(dims))
    weight.data_location = TensorProto.EXTERNAL
    nbytes = 4 * math.prod(dims)
    entries = {
        "location": location,
        "offset": str(offset),
        "length": str(nbytes if length is None else length),
    }
    entries.update(extra or {})
    for key, value in entries.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    gemm = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    return float_model([gemm], {"x": ["N", dims[-1]]}, {"y": ["N", dims[0]]}, [weight])
