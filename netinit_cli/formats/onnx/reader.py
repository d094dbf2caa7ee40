"""Read an ONNX model safely, at any size: the graph and its index of stored tensors.

Reading loads the graph only (``load_external_data=False``): weights stored as external data
stay on disk until a kept tensor is copied or :meth:`OnnxModel.read_array` asks for it.  Every
external-data reference is validated on opening (see :mod:`.external`), every stored shape is a
real one, and the graph passes ``onnx.checker`` (see :mod:`.checks`).  Classifying the stored
tensors is not done here: the classify stage walks :attr:`OnnxModel.graphs`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, numpy_helper

from netinit_cli.destination import Identity, own_inputs
from netinit_cli.errors import InputError
from netinit_cli.formats.base import WriteResult, with_init_suffix
from netinit_cli.formats.onnx.checks import check_input, check_shapes
from netinit_cli.formats.onnx.external import (
    PACKED_PER_BYTE,
    ExternalRef,
    location,
    open_checked,
    resolve_external,
)
from netinit_cli.formats.onnx.graph import GRAPH_INPUT, Graphs, has_data
from netinit_cli.formats.onnx.writer import OnnxWriter
from netinit_cli.inputfile import Elements, FileState, InputFile, changed, file_state, pread_array
from netinit_cli.model import Planned

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor


def _numpy_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


class OnnxModel:
    """An opened ONNX model (implements :class:`netinit_cli.formats.base.ModelFile`).

    A write edits the loaded graph in place (a copy of a graph of up to 2 GiB would double the
    memory); the model is then read again from its file on its next use.
    """

    kind = "onnx"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notes: list[str] = []  # reading itself finds nothing to warn about
        self._load()

    def _load(self) -> None:
        self._proto, self._digest, read_from = _load_proto(self.path)
        self.metadata = {p.key: p.value for p in self._proto.metadata_props}
        self._graphs = Graphs(self._proto)
        check_shapes(self._proto, self._graphs, self.path)
        base = self.path.resolve().parent
        self._external: dict[int, ExternalRef | None] = {}
        for tensor in self._graphs.iter_tensors():
            if tensor.data_location == TensorProto.EXTERNAL:
                self._external[id(tensor)] = resolve_external(tensor, base, tensor.name)
        check_input(self._proto, self._graphs, self.path)
        # The data files checked are those of the model read: refuse a model replaced meanwhile
        # (its data files may be another model's by now).
        try:
            now = file_state(os.stat(self.path))
        except OSError:
            now = None
        if now != read_from:
            raise changed(self.path, "it was replaced while its external data was checked", size=False)
        self._stored = {s.name: s for s in self._graphs.stored}
        self._dirty = False

    def _current(self) -> None:
        if self._dirty:
            self._load()

    @property
    def proto(self) -> onnx.ModelProto:
        """The model as loaded (external data not read)."""
        self._current()
        return self._proto

    @property
    def graphs(self) -> Graphs:
        """The topology: every graph and function, and the index of stored tensors."""
        self._current()
        return self._graphs

    @property
    def digest(self) -> str:
        """SHA-256 of the model file's bytes."""
        return self._digest

    def missing_data_file(self, name: str) -> str | None:
        """The location of stored tensor ``name``'s external data file if that file is missing."""
        self._current()
        tensor = self._stored[name].tensor
        if tensor is not None and id(tensor) in self._external and self._external[id(tensor)] is None:
            return location(tensor)
        return None

    def read_array(self, name: str, elements: Elements | None = None) -> np.ndarray:
        """The stored values of tensor ``name``, read-only.  External data is read through the
        file checked on opening, never mapped; with ``elements`` (``(start, count)`` ranges of the
        flattened tensor) only those ranges of it, the rest zeros."""
        if self._dirty:
            self._load()
        stored = self._stored.get(name)
        if stored is None:
            raise InputError(f"{self.path}: no tensor named {name!r}")
        if stored.source == GRAPH_INPUT:
            raise InputError(f"{self.path}: {name!r} is a graph input and has no stored data")
        attribute = stored.attribute
        if attribute is not None and attribute.type == AttributeProto.FLOAT:
            return np.array(attribute.f, dtype=np.float32)
        if attribute is not None and attribute.type == AttributeProto.FLOATS:
            return np.array(attribute.floats, dtype=np.float32)
        if attribute is not None and attribute.type == AttributeProto.INT:
            return np.array(attribute.i, dtype=np.int64)
        if attribute is not None and attribute.type == AttributeProto.INTS:
            return np.array(attribute.ints, dtype=np.int64)
        if stored.sparse is not None:
            return self._dense_from_sparse(stored.sparse, name)
        assert stored.tensor is not None
        return self._tensor_array(stored.tensor, name, elements)

    def _tensor_array(self, tensor: TensorProto, name: str, elements: Elements | None = None) -> np.ndarray:
        if tensor.data_location != TensorProto.EXTERNAL:
            if not has_data(tensor):
                raise InputError(f"{self.path}: tensor {name!r} has no data")
            return numpy_helper.to_array(tensor)
        ref = self._external.get(id(tensor))
        if ref is None:
            raise InputError(
                f"{self.path}: tensor {name!r}: external data file {location(tensor)!r} is missing"
            )
        packed = tensor.data_type in PACKED_PER_BYTE
        with open_checked(ref, name) as handle:
            if not packed:
                dtype = _numpy_dtype(tensor.data_type).newbyteorder("<")
                return pread_array(handle.fileno(), ref.path, ref.offset, dtype, tuple(tensor.dims), elements)
            raw = pread_array(handle.fileno(), ref.path, ref.offset, np.dtype(np.uint8), (ref.length,))
        copy = TensorProto()
        copy.CopyFrom(tensor)
        copy.ClearField("external_data")
        copy.data_location = TensorProto.DEFAULT
        copy.raw_data = raw.tobytes()
        return numpy_helper.to_array(copy)

    def _dense_from_sparse(self, sparse: onnx.SparseTensorProto, name: str) -> np.ndarray:
        values = self._tensor_array(sparse.values, name).reshape(-1)
        indices = self._tensor_array(sparse.indices, name).astype(np.int64)
        dense = np.zeros(tuple(sparse.dims), values.dtype)
        if indices.ndim == 1:
            dense.reshape(-1)[indices] = values
        else:
            dense[tuple(indices.T)] = values
        return dense

    def default_output(self) -> Path:
        return with_init_suffix(self.path, ".onnx")

    def in_memory(self, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
        """A copy of the model entirely in memory with the tensors of ``values`` (by name) set:
        what onnxruntime would load from the output (see :mod:`.memory`)."""
        from netinit_cli.formats.onnx.memory import in_memory

        return in_memory(self.proto, self.path.resolve().parent, values)

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
        """See :class:`.writer.OnnxWriter`; the graph is read again on the next use."""
        self._current()
        writer = OnnxWriter(self.path, self._proto, self._graphs, self._external, self._digest)
        self._dirty = True
        protected |= own_inputs(out, self.path, self.input_files())
        return writer.write(
            out, plan, tensors, provenance, overwrite=overwrite, durable=durable, protected=protected
        )

    def input_files(self) -> list[Path]:
        """The model file and every external data file it reads."""
        data = {ref.path for ref in self._external.values() if ref is not None}
        return [self.path, *sorted(data)]


def _load_proto(path: Path) -> tuple[onnx.ModelProto, str, FileState]:
    """The model's graph (external data not read), the SHA-256 of the file's bytes and the
    identity of the file they were read from."""
    source = InputFile(path)
    try:
        if source.size >= 1 << 31:
            raise InputError(
                f"{path}: {source.size} bytes is over protobuf's 2 GiB limit; an ONNX model this large must "
                "keep its weights in external data"
            )
        content = source.read(0, source.size)
    finally:
        source.close()
    try:
        return onnx.load_model_from_string(content), hashlib.sha256(content).hexdigest(), source.state
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"{path}: not a valid ONNX model ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from exc


def open_onnx(path: Path) -> OnnxModel:
    """Open an ONNX model: graph loaded and checked, external data validated (not read)."""
    return OnnxModel(Path(path))
