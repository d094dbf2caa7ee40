"""onnx.checker on the input (before anything is planned) and on the output (before anything is
committed), with the tensors netinit handles itself (external data, tensors without data) shown
to the checker as empty; and the shape sanity checks the checker does not make."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import TensorProto

from netinit_cli.errors import InputError, OutputError
from netinit_cli.formats.onnx.external import check_shape, location, tensor_nbytes
from netinit_cli.formats.onnx.graph import Graphs, has_data


def check_input(model: onnx.ModelProto, graphs: Graphs, path: Path) -> None:
    """Refuse an invalid input graph now (exit 3), not after writing a copy that fails the
    checker.  Tensors without data are what netinit fills, and external data was validated by
    :func:`resolve_external`, so the checker sees both as empty (see :func:`_seen_as_empty`);
    inline bytes must match the declared shape."""
    hidden: list[TensorProto] = []
    for tensor in graphs.iter_tensors():
        if tensor.data_location == TensorProto.EXTERNAL or not has_data(tensor):
            hidden.append(tensor)
        elif tensor.raw_data:
            expected = tensor_nbytes(tensor.data_type, tensor.dims, tensor.name)
            if len(tensor.raw_data) != expected:
                raise InputError(
                    f"{path}: tensor {tensor.name!r} holds {len(tensor.raw_data)} bytes of raw data but "
                    f"its shape {list(tensor.dims)} needs {expected}; the model is malformed"
                )
    try:
        with _seen_as_empty(hidden):
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        # ValueError: Python's protobuf parsed the model, but the checker's C++ parser refuses the
        # re-serialized bytes (found by atheris: a deeply nested or oversized message).
        raise InputError(
            f"{path}: not a valid ONNX model ({_one_line(exc)}); repair or re-export it"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: a name or string in the model is not valid UTF-8 (byte {exc.start}); the file is corrupt"
        ) from exc


def check_output(model: onnx.ModelProto, data_location: str, out: Path) -> None:
    """Run onnx.checker on the model about to be written, BEFORE anything is committed, so
    that a failure (a netinit bug: the input passed the same check) leaves an existing output
    untouched.  Tensors in the new data file are seen as empty: the in-memory checker would
    look for the file relative to the current directory, and netinit wrote it itself."""
    ours = [
        t
        for t in all_tensors(model)
        if t.data_location == TensorProto.EXTERNAL and location(t) == data_location
    ]
    try:
        with _seen_as_empty(ours):
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OutputError(
            f"{out}: the model netinit built failed onnx.checker ({_one_line(exc)}); nothing was written "
            "(a netinit bug: please report it with the input model)"
        ) from exc
    except ValueError as exc:  # over protobuf's 2 GiB (checked before writing, so not expected)
        raise OutputError(f"{out}: the model graph does not fit in a protobuf: {exc}") from exc


@contextlib.contextmanager
def _seen_as_empty(tensors: Sequence[TensorProto]) -> Iterator[None]:
    """For the duration, each of ``tensors`` looks like an empty tensor (dims ``[0]``, no data,
    no external reference) to onnx.checker; afterwards it is restored field for field (the
    original bytes are written back, so nothing changes in the output)."""
    saved = [(tensor, tensor.SerializeToString()) for tensor in tensors]
    try:
        for tensor, _ in saved:
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            del tensor.dims[:]
            tensor.dims.append(0)
        yield
    finally:
        for tensor, original in saved:
            tensor.Clear()
            tensor.ParseFromString(original)


def _one_line(exc: Exception) -> str:
    """The checker's whole message on one line, at most 240 characters."""
    text = " ".join(str(exc).split()) or "invalid model"
    return text if len(text) <= 240 else text[:239] + "…"


def all_tensors(message: Message) -> Iterator[TensorProto]:
    """Every TensorProto anywhere in ``message`` (graphs, subgraphs, functions, attributes,
    sparse tensors, training_info), without recursion: nesting depth is up to the input."""
    stack = [message]
    while stack:
        current = stack.pop()
        if isinstance(current, TensorProto):
            yield current
            continue
        for field, value in current.ListFields():
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            if field.is_repeated:
                stack.extend(value)
            else:
                stack.append(value)


def check_shapes(model: onnx.ModelProto, graphs: Graphs, path: Path) -> None:
    """Every stored shape must be a real one: the checker accepts a negative dimension in a
    tensor without data, and netinit would then write a model that fails it.  The declared
    type of an initializer that is also a graph input must not contradict it the same way
    (graph inputs that are parameters are checked by the classifier)."""
    for tensor in graphs.iter_tensors():
        check_shape(tensor.dims, f"{path}: tensor {tensor.name!r}")
    for stored in graphs.stored:
        if stored.sparse is not None:
            check_shape(stored.sparse.dims, f"{path}: sparse tensor {stored.name!r}")
    initializers = {t.name for t in model.graph.initializer} | {
        s.values.name for s in model.graph.sparse_initializer
    }
    for value_info in model.graph.input:
        if value_info.name not in initializers or not value_info.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value for d in value_info.type.tensor_type.shape.dim if d.HasField("dim_value")]
        check_shape(dims, f"{path}: graph input {value_info.name!r} (an initializer's declared type)")
