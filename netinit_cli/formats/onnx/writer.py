"""Write an ONNX model: filled tensors from their lazy values, everything else byte-identical.

Writing never calls ``onnx.save_model`` with external data (it serializes at ~0.3 GB/s and
*appends* to an existing data file).  Instead:

* every tensor of at least :data:`EXTERNAL_TENSOR_BYTES` (and every tensor that was external
  in the input) is written as raw little-endian bytes by netinit into a NEW file
  ``<output stem>.<16 hex digits>.data`` beside the output (the digits follow from the input,
  the provenance and the plan: :func:`data_file_name`), at :data:`ALIGNMENT`-aligned offsets;
  kept external tensors are copied in chunks, so memory stays about one tensor;
* if the tensors left inline would still make the protobuf larger than
  :data:`MAX_INLINE_BYTES`, the threshold drops to :data:`SMALL_TENSOR_BYTES`;
* small models (no tensor that large, no external input) stay a single file;
* the model is checked with ``onnx.checker`` in memory before anything is committed (a failure
  leaves an existing output untouched); then the data file and the model go through
  :class:`~netinit_cli.commit.FileSet` (model renamed last).  The data file is committed under a
  name no file in the folder has (when the digest's name is taken, e.g. by the output being
  replaced, a variant digest), so a crash between the two renames leaves the previous model with
  its own data; once the new model is in place, the data file of the model it replaced is
  removed (only one named as netinit names them for this output that is not an input of this
  run; with ``--in-place`` the replaced model's own data file goes too).

Everything not filled keeps its bytes, and the graph keeps its opset, metadata (plus the
provenance keys), doc strings, value_info and node order.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from netinit_cli.commit import FileSet
from netinit_cli.destination import Identity, check_destination
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.errors import InputError, OutputError
from netinit_cli.formats.base import WriteResult
from netinit_cli.formats.onnx.checks import all_tensors, check_output
from netinit_cli.formats.onnx.datafile import (
    DataWriter,
    data_file_name,
    is_data_file_of,
    referenced_data_files,
    remove_stale_data_temps,
)
from netinit_cli.formats.onnx.external import ExternalRef, location, open_checked, tensor_nbytes
from netinit_cli.formats.onnx.graph import (
    CONSTANT_NODE,
    DATA_FIELDS,
    FUNCTION_CONSTANT,
    GRAPH_INPUT,
    SPARSE_INITIALIZER,
    Graphs,
    StoredTensor,
)
from netinit_cli.model import Planned

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor

EXTERNAL_TENSOR_BYTES = 1 << 20  # tensors this large go to the data file
SMALL_TENSOR_BYTES = 1 << 10  # threshold used when the inline rest would not fit in a protobuf
MAX_INLINE_BYTES = int(1.8 * (1 << 30))  # protobuf's hard limit is 2 GiB - 1


def _numpy_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


class OnnxWriter:
    """Writes a new model from a loaded one (its graph, stored-tensor index and validated
    external references), which it edits in place."""

    def __init__(
        self,
        path: Path,
        proto: onnx.ModelProto,
        graphs: Graphs,
        external: dict[int, ExternalRef | None],
        digest: str,
    ) -> None:
        self.path = path  # the input model
        self._proto = proto
        self._graphs = graphs
        self._stored = {s.name: s for s in graphs.stored}
        self._external = external
        self._digest = digest

    def write(
        self,
        out: Path,
        plan: Sequence[Planned],
        tensors: Mapping[str, LazyTensor],
        provenance: dict[str, str],
        *,
        overwrite: bool,
        durable: bool = True,
        protected: frozenset[Identity] = frozenset(),
    ) -> WriteResult:
        """Write the model to ``out``: the tensors of ``tensors`` filled, every other byte kept
        (see the module docstring for where tensors go).  The graph given to this writer is
        edited in place.  ``protected``: the input files, never written over or removed."""
        out = Path(out)
        unknown = set(tensors) - set(self._stored)
        if unknown:
            raise InputError(
                f"{self.path}: the plan names tensors this model does not have: {sorted(unknown)}"
            )
        threshold = self._threshold(tensors)
        data_name = functools.partial(data_file_name, out, self._digest, plan, provenance, threshold)
        check_destination(out, overwrite=overwrite, protected=protected)
        remove_stale_data_temps(out)
        files = FileSet(
            out,
            overwrite=overwrite,
            durable=durable,
            protected=protected,
            names=referenced_data_files,
            ours=functools.partial(is_data_file_of, out),
        )
        writer = DataWriter(out.with_name(data_name(0)), threshold, data_name)
        with files, contextlib.ExitStack() as closing:
            writer.files = files
            closing.callback(writer.finish)
            for stored in self._graphs.stored:
                tensor = tensors.get(stored.name)
                if tensor is not None:
                    self._fill(stored, tensor, writer)
                elif stored.tensor is not None:
                    self._keep(stored.tensor, writer, stored.name)
                    if stored.sparse is not None:
                        self._keep(stored.sparse.indices, writer, stored.name)
            for tensor in self._other_tensors():
                self._keep(tensor, writer, tensor.name)
            writer.finish()
            _set_metadata(self._proto, provenance)
            check_output(self._proto, writer.location, out)
            paths = files.commit(functools.partial(self._serialize, out, writer.location))
        written = sum(p.stat().st_size for p in paths)
        notes = [f"external data: {paths[0].name} ({writer.position} bytes)"] if writer.handle else []
        notes += [f"removed {name}, the data file of the output this one replaced" for name in files.removed]
        return WriteResult(paths=[out, *[p for p in paths if p != out]], bytes_written=written, notes=notes)

    def _serialize(self, out: Path, provisional: str, names: list[str]) -> bytes:
        """The model's bytes, its data file called by the name it is committed under."""
        if names and names[0] != provisional:
            for tensor in all_tensors(self._proto):
                if tensor.data_location == TensorProto.EXTERNAL and location(tensor) == provisional:
                    for entry in tensor.external_data:
                        if entry.key == "location":
                            entry.value = names[0]
        try:
            payload: bytes = self._proto.SerializeToString()
        except ValueError as exc:
            raise OutputError(f"{out}: the model graph does not fit in a protobuf: {exc}") from exc
        return payload

    def _threshold(self, fills: Mapping[str, LazyTensor]) -> int:
        """The size from which tensors go to the data file (see the module docstring)."""
        inline = 0
        for stored in self._graphs.stored:
            tensor = stored.tensor
            if stored.name in fills:
                size = tensor_nbytes(stored.elem_type, [max(d, 0) for d in stored.shape], stored.name)
            elif tensor is not None and tensor.data_location != TensorProto.EXTERNAL:
                size = _inline_nbytes(tensor)
            else:
                continue
            if size < EXTERNAL_TENSOR_BYTES:
                inline += size
        return SMALL_TENSOR_BYTES if inline > MAX_INLINE_BYTES else EXTERNAL_TENSOR_BYTES

    def _other_tensors(self) -> list[TensorProto]:
        """Tensors that are not stored tensors of their own (attributes of non-Constant nodes)."""
        mine = {id(s.tensor) for s in self._graphs.stored if s.tensor is not None}
        mine |= {id(s.sparse.indices) for s in self._graphs.stored if s.sparse is not None}
        return [t for t in self._graphs.iter_tensors() if id(t) not in mine]

    def _keep(self, tensor: TensorProto, writer: DataWriter, label: str) -> None:
        """Keep a tensor's bytes; move it to the data file if it is external or large."""
        if tensor.data_location == TensorProto.EXTERNAL:
            ref = self._external.get(id(tensor))
            if ref is None:
                raise OutputError(
                    f"tensor {label!r} has no data (external file {location(tensor)!r} is missing) and is "
                    "not filled; fill it (it must be a parameter) or restore the data file"
                )
            with open_checked(ref, label) as source:
                source.seek(ref.offset)
                offset = writer.copy_from(source, ref.length)
            _point_to(tensor, writer.location, offset, ref.length)
        elif len(tensor.raw_data) >= writer.threshold:
            data = tensor.raw_data
            offset = writer.write_bytes(memoryview(data))
            _point_to(tensor, writer.location, offset, len(data))
        elif writer.threshold == SMALL_TENSOR_BYTES and _typed_nbytes(tensor) >= writer.threshold:
            # Only when the model would not fit in a protobuf otherwise: values in float_data,
            # int32_data (float16 too), … move as their exact little-endian bytes.
            raw = np.ascontiguousarray(numpy_helper.to_array(tensor)).reshape(-1).view(np.uint8)
            for name in DATA_FIELDS:
                tensor.ClearField(name)
            offset = writer.write_bytes(raw.data)
            _point_to(tensor, writer.location, offset, raw.nbytes)

    def _fill(self, stored: StoredTensor, tensor: LazyTensor, writer: DataWriter) -> None:
        """Store a filled tensor: in its attribute, inline, or in the data file, where its bytes
        are written at their offset as they are produced (by the sampler threads for large ones)."""
        expected = _numpy_dtype(stored.elem_type)
        shape = tuple(stored.shape)
        if numpy_dtype(tensor.dtype) != expected or math.prod(tensor.shape) != math.prod(shape):
            raise OutputError(
                f"tensor {stored.name!r}: filled as {tensor.dtype}{list(tensor.shape)}, stored as "
                f"{expected}{list(shape)} (a netinit bug)"
            )
        attribute = stored.attribute
        in_attribute = attribute is not None and attribute.type in (
            AttributeProto.FLOAT,
            AttributeProto.FLOATS,
        )
        nbytes = math.prod(shape) * expected.itemsize
        to_data_file = not in_attribute and (
            nbytes >= writer.threshold or (stored.tensor is not None and id(stored.tensor) in self._external)
        )
        if to_data_file:
            fd, offset = writer.reserve(nbytes)
            tensor.write_into(fd, offset, writer.path)
            target = dense_target(self._proto, stored)
            for name in DATA_FIELDS:
                target.ClearField(name)
            _point_to(target, writer.location, writer.advance(nbytes), nbytes)
            return
        store_inline(self._proto, stored, tensor.array())


def store_inline(proto: onnx.ModelProto, stored: StoredTensor, values: np.ndarray) -> None:
    """Put a filled tensor's values (its stored dtype, little-endian) into the graph itself: in its
    Constant attribute, or inline in its dense tensor (created where needed)."""
    values = values.reshape(tuple(stored.shape))
    attribute = stored.attribute
    if attribute is not None and attribute.type == AttributeProto.FLOAT:
        attribute.f = float(values.reshape(-1)[0])
        return
    if attribute is not None and attribute.type == AttributeProto.FLOATS:
        attribute.ClearField("floats")
        attribute.floats.extend(float(v) for v in values.reshape(-1))
        return
    target = dense_target(proto, stored)
    target.data_location = TensorProto.DEFAULT
    target.ClearField("external_data")
    for name in DATA_FIELDS:
        target.ClearField(name)
    target.raw_data = values.reshape(-1).view(np.uint8).tobytes()


def dense_target(proto: onnx.ModelProto, stored: StoredTensor) -> TensorProto:
    """The TensorProto of ``proto`` that will hold a filled tensor's values, created where needed."""
    if stored.sparse is None and stored.tensor is not None:
        return stored.tensor
    dense = TensorProto(name=stored.value, data_type=stored.elem_type, dims=list(stored.shape))
    graph = stored.scope.graph
    if stored.source in (CONSTANT_NODE, FUNCTION_CONSTANT) and stored.attribute is not None:
        # A sparse Constant becomes a dense one, in the same node.
        attribute = stored.attribute
        attribute.Clear()
        attribute.name = "value"
        attribute.type = AttributeProto.TENSOR
        attribute.t.CopyFrom(dense)
        return attribute.t
    assert graph is not None
    if stored.source == SPARSE_INITIALIZER:
        for index, sparse in enumerate(graph.sparse_initializer):
            if sparse is stored.sparse or sparse.values.name == stored.value:
                del graph.sparse_initializer[index]
                break
    graph.initializer.append(dense)
    if stored.source == GRAPH_INPUT and proto.ir_version >= 4:
        # IR >= 4: an initializer need not be an input; dropping the input means
        # onnxruntime no longer asks for it.
        for index, value_info in enumerate(graph.input):
            if value_info.name == stored.value:
                del graph.input[index]
                break
    added: TensorProto = graph.initializer[len(graph.initializer) - 1]
    return added


def _typed_nbytes(tensor: TensorProto) -> int:
    """Raw size of a tensor whose values sit in a typed field (float_data, int32_data, …);
    0 for raw_data, strings and unknown element types."""
    if tensor.raw_data or tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0
    if not any(len(getattr(tensor, name)) for name in DATA_FIELDS if name != "raw_data"):
        return 0
    try:
        return tensor_nbytes(tensor.data_type, tensor.dims, tensor.name)
    except InputError:
        return 0


def _inline_nbytes(tensor: TensorProto) -> int:
    return len(tensor.raw_data) or _typed_nbytes(tensor)


def _point_to(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("external_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _set_metadata(model: onnx.ModelProto, provenance: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in provenance.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
