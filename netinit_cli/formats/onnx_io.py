"""Read and write ONNX models safely, at any size.

Reading loads the graph only (``load_external_data=False``): weights stored as external data
stay on disk until a kept tensor is copied or :meth:`OnnxModel.read_array` asks for it.  Every
external-data reference is validated here, not by onnx or onnx-ir (reference onnx.md §15:
both have had traversal, symlink and hard-link holes): a relative location without ``..``,
inside the model's folder after resolving links, no symlink on the way, a regular file with one
link, only the known keys, and ``offset + length`` within the file.

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
  :class:`AtomicFileSet` (model renamed last).  Each write's data file has a name of its own,
  so a crash between the two renames leaves the previous model with its own data; once the new
  model is in place, the data file of the model it replaced is removed (only one named as
  netinit names them for this output, that nothing else links to and the input does not use).

Everything not filled keeps its bytes, and the graph keeps its opset, metadata (plus the
provenance keys), doc strings, value_info and node order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import AttributeProto, TensorProto, numpy_helper

from netinit_cli.classify import classify_graphs, structured_value_note
from netinit_cli.errors import InputError, OutputError, UnsafeInputError
from netinit_cli.fill import DirectOutput, EarlyWriteback
from netinit_cli.formats.base import (
    TEMP_TAG,
    AtomicFileSet,
    Produce,
    WriteResult,
    check_destination,
    preallocate,
    remove_stale_temps,
    with_init_suffix,
)
from netinit_cli.formats.onnx.graph import (
    CONSTANT_NODE,
    DATA_FIELDS,
    FUNCTION_CONSTANT,
    GRAPH_INPUT,
    SPARSE_INITIALIZER,
    Graphs,
    StoredTensor,
    has_data,
)
from netinit_cli.model import Action, Param, Planned

EXTERNAL_TENSOR_BYTES = 1 << 20  # tensors this large go to the data file
SMALL_TENSOR_BYTES = 1 << 10  # threshold used when the inline rest would not fit in a protobuf
MAX_INLINE_BYTES = int(1.8 * (1 << 30))  # protobuf's hard limit is 2 GiB - 1
ALIGNMENT = 4096  # page-aligned offsets let readers memory-map each tensor
COPY_CHUNK = 16 << 20
PREALLOCATE_MIN_BYTES = 1 << 16  # smaller tensors are not worth a system call
DATA_NAME_DIGITS = 16  # hex digits of the data file's name (see data_file_name)
MAX_ELEMENTS = 1 << 50  # a shape with more elements is corrupt (2**50 bytes is a petabyte)

_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
_PACKED_PER_BYTE: dict[int, int] = {
    TensorProto.INT4: 2,
    TensorProto.UINT4: 2,
    TensorProto.FLOAT4E2M1: 2,
    TensorProto.INT2: 4,
    TensorProto.UINT2: 4,
}


@dataclass(frozen=True)
class ExternalRef:
    """A validated external-data reference: ``length`` bytes at ``offset`` of ``path``."""

    path: Path  # resolved, inside the model's folder
    offset: int
    length: int
    device: int
    inode: int


def check_shape(dims: Sequence[int], what: str) -> int:
    """The element count of ``dims``; :class:`InputError` naming ``what`` (e.g. "tensor 'W'")
    for a negative dimension or more elements than any file can hold (a corrupt shape)."""
    if any(d < 0 for d in dims):
        raise InputError(
            f"{what} has a negative dimension in its shape {list(dims)}; the model is malformed (re-export it)"
        )
    numel = math.prod(dims)
    if numel > MAX_ELEMENTS:
        raise InputError(
            f"{what} has the shape {list(dims)}: {numel} elements, more than any file can hold; "
            "the model is malformed (re-export it)"
        )
    return numel


def tensor_nbytes(elem_type: int, dims: Sequence[int], name: str) -> int:
    """Bytes of a tensor's raw data; refuses negative or absurd dimensions."""
    numel = check_shape(dims, f"tensor {name!r}")
    if elem_type in _PACKED_PER_BYTE:
        return -(-numel // _PACKED_PER_BYTE[elem_type])
    if elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        raise InputError(f"tensor {name!r}: element type {elem_type} cannot be stored as raw bytes")
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise InputError(f"tensor {name!r}: unknown ONNX element type {elem_type}") from None
    return numel * itemsize


def resolve_external(tensor: TensorProto, base: Path, label: str) -> ExternalRef | None:
    """Validate ``tensor``'s external-data entry against ``base`` (the model's folder).

    Returns ``None`` if the file does not exist (the tensor has no data), raises
    :class:`UnsafeInputError` for anything that could read outside the folder and
    :class:`InputError` for a malformed entry.
    """
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in _EXTERNAL_KEYS:
            raise UnsafeInputError(
                f"tensor {label!r}: external-data key {entry.key!r} is not allowed "
                f"(only {', '.join(sorted(_EXTERNAL_KEYS))}); the model is malformed or hostile"
            )
        if entry.key in info:
            raise UnsafeInputError(f"tensor {label!r}: external-data key {entry.key!r} appears twice")
        info[entry.key] = entry.value
    location = info.get("location", "")
    where = f"tensor {label!r}: external data location {location!r}"
    if not location or "\x00" in location:
        raise InputError(f"{where} is empty or invalid; the model is malformed")
    parts = re.split(r"[/\\]", location)
    if location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise UnsafeInputError(f"{where} is absolute; external data must be relative to the model's folder")
    if ".." in parts:
        raise UnsafeInputError(f"{where} contains '..'; external data must stay inside the model's folder")
    real_base = Path(os.path.realpath(base))
    candidate = real_base.joinpath(*[p for p in parts if p not in ("", ".")])
    # No symbolic link anywhere below the model's folder (a parent link escapes just as well).
    probe = real_base
    for part in [p for p in parts if p not in ("", ".")]:
        probe = probe / part
        if probe.is_symlink():
            raise UnsafeInputError(
                f"{where} goes through the symbolic link {probe}; copy the data file into the folder"
            )
    real = Path(os.path.realpath(candidate))
    if real != real_base and real_base not in real.parents:
        raise UnsafeInputError(f"{where} resolves outside the model's folder {real_base}")
    try:
        info_stat = os.lstat(candidate)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{where}: cannot stat: {exc.strerror}") from exc
    if not stat.S_ISREG(info_stat.st_mode):
        raise UnsafeInputError(f"{where} is not a regular file")
    if info_stat.st_nlink > 1:
        raise UnsafeInputError(
            f"{where} has {info_stat.st_nlink} hard links; a hard link can point outside the folder "
            "(copy the file to break the link)"
        )
    offset = _decimal(info.get("offset", "0"), where, "offset")
    expected = tensor_nbytes(tensor.data_type, tensor.dims, label)
    if "length" in info:
        length = _decimal(info["length"], where, "length")
        if length != expected:
            raise InputError(
                f"{where}: length {length} does not match the tensor's {list(tensor.dims)} "
                f"({expected} bytes); the model is malformed"
            )
    if offset + expected > info_stat.st_size:
        raise InputError(
            f"{where}: bytes {offset}..{offset + expected} run past the end of the "
            f"{info_stat.st_size}-byte file; the data file is truncated or the model is malformed"
        )
    return ExternalRef(candidate, offset, expected, info_stat.st_dev, info_stat.st_ino)


def _decimal(text: str, where: str, key: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise InputError(f"{where}: {key} {text!r} is not a non-negative decimal integer")
    return int(text)


def _open_checked(ref: ExternalRef, label: str) -> BinaryIO:
    """Open a validated data file without following links; refuse if it changed since."""
    try:
        fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise UnsafeInputError(
            f"tensor {label!r}: cannot open external data {ref.path}: {exc.strerror}"
        ) from exc
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (ref.device, ref.inode) or info.st_nlink > 1:
        os.close(fd)
        raise UnsafeInputError(f"tensor {label!r}: external data file {ref.path} changed while reading")
    return os.fdopen(fd, "rb")


def _numpy_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


class OnnxModel:
    """An opened ONNX model (implements :class:`netinit_cli.formats.base.ModelFile`)."""

    kind = "onnx"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notes: list[str] = []
        self._load()

    def _load(self) -> None:
        self.proto, self.digest = _load_proto(self.path)
        self.metadata = {p.key: p.value for p in self.proto.metadata_props}
        self.graphs = Graphs(self.proto)
        _check_shapes(self.proto, self.graphs, self.path)
        self.base = self.path.resolve().parent
        self.external: dict[int, ExternalRef | None] = {}
        for tensor in self.graphs.iter_tensors():
            if tensor.data_location == TensorProto.EXTERNAL:
                self.external[id(tensor)] = resolve_external(tensor, self.base, tensor.name)
        _check_input(self.proto, self.graphs, self.path)
        params, notes = classify_graphs(self.graphs)
        self._stored = {s.name: s for s in self.graphs.stored}
        for param in params:
            proto = self._stored[param.name].tensor
            if proto is not None and id(proto) in self.external and self.external[id(proto)] is None:
                param.has_data = False
                notes.append(f"{param.name}: external data file {_location(proto)!r} is missing")
        self.params: list[Param] = params
        self.notes = notes
        self._check_values()
        self._dirty = False

    def _check_values(self) -> None:
        """Warn about weight-slot tensors whose stored values look like a fixed buffer (a sample
        of each: see :func:`structured_value_note`)."""
        for param in self.params:
            stored = self._stored[param.name]
            if not (param.role.random and param.has_data) or stored.sparse is not None:
                continue
            if stored.tensor is None:  # value_floats of a Constant node: read_array's own path
                continue
            try:
                values = self._tensor_array(stored.tensor, param.name)
            except InputError:
                continue
            note = structured_value_note(param.name, param.role, values)
            if note:
                param.notes.append(note)
                self.notes.append(note)

    # -- reading ------------------------------------------------------------------------------

    def read_array(self, name: str) -> np.ndarray:
        """The stored values of tensor ``name`` (external data memory-mapped, read-only)."""
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
        return self._tensor_array(stored.tensor, name)

    def _tensor_array(self, tensor: TensorProto, name: str) -> np.ndarray:
        if tensor.data_location != TensorProto.EXTERNAL:
            if not has_data(tensor):
                raise InputError(f"{self.path}: tensor {name!r} has no data")
            return numpy_helper.to_array(tensor)
        ref = self.external.get(id(tensor))
        if ref is None:
            raise InputError(
                f"{self.path}: tensor {name!r}: external data file {_location(tensor)!r} is missing"
            )
        if tensor.data_type in _PACKED_PER_BYTE:
            with _open_checked(ref, name) as handle:
                handle.seek(ref.offset)
                copy = TensorProto()
                copy.CopyFrom(tensor)
                copy.ClearField("external_data")
                copy.data_location = TensorProto.DEFAULT
                copy.raw_data = handle.read(ref.length)
            return numpy_helper.to_array(copy)
        _open_checked(ref, name).close()
        dtype = _numpy_dtype(tensor.data_type)
        shape = tuple(tensor.dims)
        if ref.length == 0:
            return np.zeros(shape, dtype)
        return np.memmap(ref.path, dtype=dtype.newbyteorder("<"), mode="r", offset=ref.offset, shape=shape)

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

    # -- writing ------------------------------------------------------------------------------

    def write(
        self,
        out: Path,
        plan: Sequence[Planned],
        produce: Produce,
        provenance: dict[str, str],
        *,
        overwrite: bool,
        durable: bool = True,
    ) -> WriteResult:
        if self._dirty:
            self._load()
        out = Path(out)
        fills = {p.param.name: p for p in plan if p.action is Action.FILL}
        unknown = set(fills) - set(self._stored)
        if unknown:
            raise InputError(
                f"{self.path}: the plan names tensors this model does not have: {sorted(unknown)}"
            )
        threshold = self._threshold(fills)
        data_path = out.with_name(data_file_name(out, self.digest, plan, provenance, threshold))
        self._refuse_clobbering_inputs(out, data_path)
        check_destination(out, overwrite=overwrite)
        _remove_stale_data_temps(out)
        # The proto is edited in place and reloaded from the input on the next use.
        self._dirty = True
        writer = _DataWriter(data_path, threshold)
        with AtomicFileSet(overwrite=overwrite, durable=durable) as files, contextlib.ExitStack() as closing:
            writer.files = files
            closing.callback(writer.finish)
            for stored in self.graphs.stored:
                planned = fills.get(stored.name)
                if planned is not None:
                    self._fill(stored, planned, produce, writer)
                elif stored.tensor is not None:
                    self._keep(stored.tensor, writer, stored.name)
                    if stored.sparse is not None:
                        self._keep(stored.sparse.indices, writer, stored.name)
            for tensor in self._other_tensors():
                self._keep(tensor, writer, tensor.name)
            writer.finish()
            _set_metadata(self.proto, provenance)
            _check_output(self.proto, writer.location, out)
            try:
                payload = self.proto.SerializeToString()
            except ValueError as exc:
                raise OutputError(f"{out}: the model graph does not fit in a protobuf: {exc}") from exc
            files.open(out).write(payload)
            del payload
            replaced = _replaced_data_files(out, data_path, self._input_files()) if overwrite else []
            paths = files.commit()
        written = sum(p.stat().st_size for p in paths)
        notes = [f"external data: {data_path.name} ({writer.position} bytes)"] if writer.handle else []
        notes += [
            f"removed {path.name}, the data file of the output this one replaced"
            for path in _remove_unshared(replaced)
        ]
        return WriteResult(paths=[out, *[p for p in paths if p != out]], bytes_written=written, notes=notes)

    def _input_files(self) -> set[str]:
        """The real paths of the input model and of every data file it references."""
        inputs = {os.path.realpath(self.path)}
        inputs |= {os.path.realpath(ref.path) for ref in self.external.values() if ref is not None}
        return inputs

    def _refuse_clobbering_inputs(self, out: Path, data_path: Path) -> None:
        # Replacing the model file itself is --in-place (api refuses it otherwise): safe, since the
        # new file is renamed over it only after every kept tensor was copied.  A data file the
        # input reads from is never a target.
        inputs = self._input_files()
        in_place = os.path.realpath(out) == os.path.realpath(self.path)
        for target in (data_path,) if in_place else (out, data_path):
            if os.path.realpath(target) in inputs:
                raise OutputError(f"{target} is part of the input model; choose another output with -o")

    def _threshold(self, fills: dict[str, Planned]) -> int:
        """The size from which tensors go to the data file (see the module docstring)."""
        inline = 0
        for stored in self.graphs.stored:
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
        mine = {id(s.tensor) for s in self.graphs.stored if s.tensor is not None}
        mine |= {id(s.sparse.indices) for s in self.graphs.stored if s.sparse is not None}
        return [t for t in self.graphs.iter_tensors() if id(t) not in mine]

    def _keep(self, tensor: TensorProto, writer: _DataWriter, label: str) -> None:
        """Keep a tensor's bytes; move it to the data file if it is external or large."""
        if tensor.data_location == TensorProto.EXTERNAL:
            ref = self.external.get(id(tensor))
            if ref is None:
                raise OutputError(
                    f"tensor {label!r} has no data (external file {_location(tensor)!r} is missing) and is "
                    "not filled; fill it (it must be a parameter) or restore the data file"
                )
            with _open_checked(ref, label) as source:
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

    def _fill(self, stored: StoredTensor, planned: Planned, produce: Produce, writer: _DataWriter) -> None:
        """Produce a filled tensor (dropped before the next one) and store it: in its attribute,
        inline, or in the data file, where large tensors are written by the sampler threads."""
        expected = _numpy_dtype(stored.elem_type)
        shape = tuple(stored.shape)
        attribute = stored.attribute
        in_attribute = attribute is not None and attribute.type in (
            AttributeProto.FLOAT,
            AttributeProto.FLOATS,
        )
        nbytes = math.prod(shape) * expected.itemsize
        to_data_file = not in_attribute and (
            nbytes >= writer.threshold or (stored.tensor is not None and id(stored.tensor) in self.external)
        )
        written = False
        if to_data_file:
            fd, offset = writer.reserve(nbytes)
            direct = DirectOutput(fd, offset, writer.path)
            values = produce(planned, direct)
            written = direct.written
        else:
            values = produce(planned)
        if values.dtype != expected or values.size != math.prod(shape):
            raise OutputError(
                f"tensor {stored.name!r}: generated {values.dtype}{list(values.shape)}, expected "
                f"{expected}{list(shape)} (a netinit bug)"
            )
        if written:  # values is a stand-in: the bytes are in the file already
            tensor = self._dense_target(stored)
            for name in DATA_FIELDS:
                tensor.ClearField(name)
            _point_to(tensor, writer.location, writer.advance(nbytes), nbytes)
            return
        values = np.ascontiguousarray(values).reshape(shape)
        if attribute is not None and attribute.type == AttributeProto.FLOAT:
            attribute.f = float(values.reshape(-1)[0])
            return
        if attribute is not None and attribute.type == AttributeProto.FLOATS:
            attribute.ClearField("floats")
            attribute.floats.extend(float(v) for v in values.reshape(-1))
            return
        tensor = self._dense_target(stored)
        tensor.data_location = TensorProto.DEFAULT
        tensor.ClearField("external_data")
        for name in DATA_FIELDS:
            tensor.ClearField(name)
        raw = values.reshape(-1).view(np.uint8)
        if to_data_file:
            offset = writer.write_bytes(raw.data)
            tensor.ClearField("raw_data")
            _point_to(tensor, writer.location, offset, raw.nbytes)
        else:
            tensor.raw_data = raw.tobytes()

    def _dense_target(self, stored: StoredTensor) -> TensorProto:
        """The TensorProto that will hold a filled tensor's values, created where needed."""
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
        if stored.source == GRAPH_INPUT and self.proto.ir_version >= 4:
            # IR >= 4: an initializer need not be an input; dropping the input means
            # onnxruntime no longer asks for it.
            for index, value_info in enumerate(graph.input):
                if value_info.name == stored.value:
                    del graph.input[index]
                    break
        added: TensorProto = graph.initializer[len(graph.initializer) - 1]
        return added


def data_file_name(
    out: Path, input_digest: str, plan: Sequence[Planned], provenance: dict[str, str], threshold: int
) -> str:
    """``<output stem>.<16 hex digits>.data``: the name of the data file written beside ``out``.

    The digits are the start of a SHA-256 over everything the written model's bytes follow
    from: the input file's bytes, the provenance (seed, method, scope, versions, rules), each
    planned tensor (name, action, method, rule, dtype, shape, fans, expected moments) and the
    size threshold.  So the same input, method and seed give byte-identical outputs, while
    another run writing over the same output almost always gets another data file name.

    Why a name of its own for each write: the data file is renamed into place just before the
    model.  A crash between the two renames then leaves the previous model beside a data file
    it does not reference, so it still reads its own, unchanged data.  When the name is the
    same, so is everything the write starts from, and (generation being deterministic for a
    netinit version, which the provenance records) the new model's bytes are the previous
    model's: the previous model plus the new data file is exactly the new output.
    """
    recipe = {
        "layout": 1,  # bump when the way tensors are laid out in the data file changes
        "input": input_digest,
        "provenance": sorted(provenance.items()),
        "threshold": threshold,
        "plan": [
            [
                p.param.name,
                p.action.value,
                p.init,
                p.rule,
                p.param.dtype,
                [int(d) for d in p.param.shape],
                p.fan_in,
                p.fan_out,
                p.expected_mean,
                p.expected_std,
            ]
            for p in plan
        ],
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:DATA_NAME_DIGITS]
    return f"{_stem(out)}.{digest}.data"


def _stem(out: Path) -> str:
    return out.stem if out.suffix else out.name


def _replaced_data_files(out: Path, keep: Path, inputs: set[str]) -> list[Path]:
    """Data files of the model now at ``out`` that the new output makes useless: named as
    :func:`data_file_name` names them for this output, beside it, referenced by that model,
    not ``keep`` (the new data file) and not part of the input.  Read before the commit."""
    ours = re.compile(re.escape(_stem(out)) + rf"\.[0-9a-f]{{{DATA_NAME_DIGITS}}}\.data")
    folder = out.parent if str(out.parent) else Path(".")
    try:
        candidates = {e.name for e in os.scandir(folder) if ours.fullmatch(e.name) and e.name != keep.name}
    except OSError:
        return []
    if not candidates:
        return []  # the usual case: nothing to parse
    try:
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return []
            previous = onnx.load_model_from_string(handle.read(1 << 31))
    except (OSError, DecodeError, RuntimeError, ValueError):
        return []  # not a model (or unreadable): it references nothing
    referenced = {_location(t) for t in _all_tensors(previous) if t.data_location == TensorProto.EXTERNAL}
    return [
        folder / name
        for name in sorted(candidates & referenced)
        if os.path.realpath(folder / name) not in inputs
    ]


def _remove_stale_data_temps(out: Path) -> None:
    """Remove the temporary data files that killed writers left for ``out``.  Their names
    follow the data file's name, which changes from write to write, so the cleanup that
    :class:`AtomicFileSet` does for the file it opens would miss them."""
    pattern = re.compile(
        r"\.(" + re.escape(_stem(out)) + rf"\.[0-9a-f]{{{DATA_NAME_DIGITS}}}\.data)" + re.escape(TEMP_TAG)
    )
    folder = out.parent if str(out.parent) else Path(".")
    with contextlib.suppress(OSError):
        names = {m.group(1) for e in os.scandir(folder) if (m := pattern.match(e.name))}
        for name in sorted(names):
            remove_stale_temps(folder / name)


def _remove_unshared(paths: Sequence[Path]) -> list[Path]:
    """Delete each regular file of ``paths`` that has no other hard link; the removed ones."""
    removed = []
    for path in paths:
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                path.unlink()
                removed.append(path)
    return removed


class _DataWriter:
    """Appends aligned raw tensors to the new data file, opened on first use."""

    def __init__(self, path: Path, threshold: int) -> None:
        self.path = path
        self.location = path.name
        self.threshold = threshold
        self.files: AtomicFileSet | None = None
        self.handle: BinaryIO | None = None
        self.position = 0
        self.writeback: EarlyWriteback | None = None

    def _start(self, nbytes: int) -> BinaryIO:
        """The data file, padded to the next tensor's aligned offset, with the tensor's
        ``nbytes`` allocated there (see :func:`preallocate`)."""
        if self.handle is None:
            assert self.files is not None
            self.handle = self.files.open(self.path)
        pad = -self.position % ALIGNMENT
        if pad:
            self.handle.write(b"\0" * pad)
            self.position += pad
        if nbytes >= PREALLOCATE_MIN_BYTES:
            preallocate(self.handle.fileno(), self.position, nbytes, self.path)
        return self.handle

    def write_bytes(self, data: memoryview) -> int:
        handle = self._start(data.nbytes)
        offset = self.position
        handle.write(data)
        self.position += data.nbytes
        self._wrote(data.nbytes)
        return offset

    def reserve(self, nbytes: int) -> tuple[int, int]:
        """(fd, offset) where the next tensor (``nbytes``) goes, for a direct ``pwrite`` of its bytes."""
        handle = self._start(nbytes)
        handle.flush()
        return handle.fileno(), self.position

    def advance(self, nbytes: int) -> int:
        """Account for ``nbytes`` written directly at :meth:`reserve`'s offset; return that offset."""
        assert self.handle is not None
        offset = self.position
        self.position += nbytes
        self.handle.seek(self.position)
        self._wrote(nbytes)
        return offset

    def _wrote(self, nbytes: int) -> None:
        if self.writeback is None:
            assert self.handle is not None and self.files is not None
            self.writeback = EarlyWriteback(self.handle.fileno(), active=self.files.durable)
        self.writeback.wrote(nbytes)

    def finish(self) -> None:
        """Wait for the early writeback (before the data file is committed or closed)."""
        if self.writeback is not None:
            self.writeback.finish()

    def copy_from(self, source: BinaryIO, length: int) -> int:
        handle = self._start(length)
        offset = self.position
        remaining = length
        while remaining:
            chunk = source.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise InputError(f"external data ended {remaining} bytes early while copying")
            handle.write(chunk)
            remaining -= len(chunk)
        self.position += length
        self._wrote(length)
        return offset


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


def _location(tensor: TensorProto) -> str:
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def _set_metadata(model: onnx.ModelProto, provenance: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in provenance.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def _check_input(model: onnx.ModelProto, graphs: Graphs, path: Path) -> None:
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
    except onnx.checker.ValidationError as exc:
        raise InputError(
            f"{path}: not a valid ONNX model ({_one_line(exc)}); repair or re-export it"
        ) from exc
    except ValueError as exc:
        # Python's protobuf parsed it, but the checker's C++ parser refuses the re-serialized
        # bytes (found by atheris: a deeply nested or oversized message).
        raise InputError(
            f"{path}: not a valid ONNX model ({_one_line(exc)}); repair or re-export it"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: a name or string in the model is not valid UTF-8 (byte {exc.start}); the file is corrupt"
        ) from exc


def _check_output(model: onnx.ModelProto, data_location: str, out: Path) -> None:
    """Run onnx.checker on the model about to be written, BEFORE anything is committed, so
    that a failure (a netinit bug: the input passed the same check) leaves an existing output
    untouched.  Tensors in the new data file are seen as empty: the in-memory checker would
    look for the file relative to the current directory, and netinit wrote it itself."""
    ours = [
        t
        for t in _all_tensors(model)
        if t.data_location == TensorProto.EXTERNAL and _location(t) == data_location
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


def _all_tensors(message: Message) -> Iterator[TensorProto]:
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


def _check_shapes(model: onnx.ModelProto, graphs: Graphs, path: Path) -> None:
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


def _load_proto(path: Path) -> tuple[onnx.ModelProto, str]:
    """The model's graph (external data not read) and the SHA-256 of the file's bytes."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if size >= 1 << 31:
        raise InputError(
            f"{path}: {size} bytes is over protobuf's 2 GiB limit; an ONNX model this large must keep its "
            "weights in external data"
        )
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return onnx.load_model_from_string(content), hashlib.sha256(content).hexdigest()
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"{path}: not a valid ONNX model ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from exc


def open_onnx(path: Path) -> OnnxModel:
    """Open an ONNX model: graph loaded, external data validated (not read), tensors classified."""
    return OnnxModel(Path(path))
