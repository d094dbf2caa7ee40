"""The model as onnxruntime would load the output, held in memory: for LSUV, which runs it before
anything is written.

A copy of the opened graph in which every filled tensor holds its values inline (stored as the
writer stores them: :func:`.writer.store_inline`) and every external tensor's bytes are read in,
through the same checked references as a write.  The input files are only read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from netinit_cli.errors import InputError
from netinit_cli.formats.onnx.external import location, open_checked, resolve_external
from netinit_cli.formats.onnx.graph import Graphs
from netinit_cli.formats.onnx.writer import store_inline


def in_memory(proto: onnx.ModelProto, base: Path, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``proto`` (its external data relative to ``base``) with every tensor of ``values``
    (by stored name) set and every other tensor's data inline."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graphs = Graphs(model)  # the same scoped names as the original's index
    for stored in graphs.stored:
        if stored.name in values:
            store_inline(model, stored, values[stored.name])
    for tensor in graphs.iter_tensors():
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        ref = resolve_external(tensor, base, tensor.name)
        if ref is None:
            raise InputError(
                f"tensor {tensor.name!r} has no data (external file {location(tensor)!r} is missing) and is "
                "not filled; LSUV runs the model and needs it: restore the data file or fill it with --all"
            )
        with open_checked(ref, tensor.name) as handle:
            handle.seek(ref.offset)
            data = handle.read(ref.length)
        tensor.ClearField("external_data")
        tensor.data_location = TensorProto.DEFAULT
        tensor.raw_data = data
    return model
