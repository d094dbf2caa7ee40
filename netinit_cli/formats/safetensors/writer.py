"""The streaming safetensors writer: headers first, then each tensor in turn.

The header depends only on (name, dtype, shape), so it is written first; then each tensor is
either written from its lazy values at its offset (filled tensors) or copied from the input in
kernel-side chunks (``os.copy_file_range``), so peak memory is about the largest *filled* tensor.

* **Tensor order** in a written file is the reference writer's: dtype alignment descending, then
  name (``tensor.rs`` ``prepare``).  Every tensor is then aligned to its element size and a file
  we write has the same tensor layout ``safetensors.numpy.save_file`` would give it.  ``__metadata__``
  keys are written sorted (the reference writes them in hash order).
* **Shards**: the output keeps the input's split.  For ``model.safetensors.index.json`` the default
  output is ``model.init.safetensors.index.json`` and shard ``model-00001-of-00002.safetensors``
  becomes ``model.init-00001-of-00002.safetensors`` (the index's stem is replaced by the output
  index's stem; a shard name not starting with the stem gets ``<out stem>-`` in front).  Where a
  file of that name holds other bytes (the shards of the output being replaced), the shards are
  named ``model.init.1-00001-of-00002.safetensors`` (``.2``, … : the first variant free for every
  shard), so the old index keeps naming complete old shards until the new index replaces it; then
  the old shards netinit wrote are removed (:class:`~netinit_cli.commit.FileSet`).  The index
  is rewritten with ``weight_map`` and ``metadata.total_size`` (sum of tensor data bytes) and
  ``total_parameters`` computed from the plan; other index metadata keys are kept.  A new bundle
  (``--like T -o NAME.safetensors.index.json``) is split by size (``sharded.split_by_size``).
  Every file of a bundle (and a model folder's one file) records ``netinit.plan`` (a digest of the layout and options) and
  ``netinit.shard_files``, so a ``--shard K/N`` worker (``sharded.write_worker``) recognises files
  of its own run, and the union of the workers' files is this module's single-run output.
* **New tensors** (``has_data=False``, from ``--like``) go to the shard the index's ``weight_map``
  names for them, else to the last shard.  A param with no data that the plan does not fill is
  left out of the output and reported in ``WriteResult.notes``.
* **Ties**: a param's ``aliases`` are written as tensors of their own with the same bytes; a
  filled one is produced once and copied for the other names.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from netinit_cli.commit import FileSet
from netinit_cli.destination import Identity, check_destination
from netinit_cli.errors import InputError, NetinitError, UsageError
from netinit_cli.fileio import EarlyWriteback, copy_range, preallocate, write_all
from netinit_cli.formats.base import WriteResult
from netinit_cli.formats.safetensors import sharded
from netinit_cli.formats.safetensors.header import (
    DTYPE_BITS,
    DTYPE_RANK,
    FILE_SUFFIX,
    INDEX_SUFFIX,
    MAX_HEADER_BYTES,
    SUB_BYTE,
    Index,
    Shard,
    TensorEntry,
    check_tensor_count,
    quote,
    read_index,
    shape_text,
)
from netinit_cli.inputfile import InputFile
from netinit_cli.model import Planned
from netinit_cli.shard import PlannedTensor, plan_digest, shard_metadata

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor


@dataclass
class _Item:
    """One tensor of an output shard: filled (``tensor``) or copied (``source``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    primary: str  # the param whose values these are (differs for tied aliases)
    tensor: LazyTensor | None
    source: tuple[Shard, TensorEntry] | None

    @functools.cached_property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BITS[self.dtype] // 8


@dataclass
class _Progress:
    """What one write has done so far, across its shards."""

    produced: dict[str, tuple[int, int]] = field(default_factory=dict)  # primary -> (fd, offset)
    sources: dict[Path, InputFile] = field(default_factory=dict)  # input shards copied from


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder (``--like config.json``) adds to the files the writer lays out: its
    index's text as save_pretrained writes it (None: one file, ``model.safetensors``, which then
    records ``netinit.plan`` too), and the small files a ``--shard`` worker publishes with it."""

    index_bytes: bytes | None
    extras: dict[str, bytes]


@dataclass(frozen=True)
class _File:
    """One output file as planned: where, its metadata, its tensors in write order, its header."""

    target: Path
    items: list[_Item]
    header: bytes

    @classmethod
    def make(cls, target: Path, metadata: dict[str, str], items: list[_Item]) -> _File:
        items = sorted(items, key=lambda item: (-DTYPE_RANK[item.dtype], item.name))
        return cls(target, items, encode_header(metadata, items))

    @property
    def size(self) -> int:
        return 8 + len(self.header) + sum(item.nbytes for item in self.items)


class SafetensorsWriter:
    """Writes a new file or bundle from an opened one (its shards, index and where each tensor is
    stored or, when new, goes)."""

    def __init__(
        self,
        shards: list[Shard],
        index: Index | None,
        entries: dict[str, tuple[Shard, TensorEntry]],
        placement: dict[str, str],
        *,
        folder: ModelFolder | None = None,
    ) -> None:
        self._shards = shards
        self._index = index
        self._entries = entries
        self._placement = placement  # tensor name -> input shard file name
        self._folder = folder

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
        shard: tuple[int, int] | None = None,
        max_shard_size: int | None = None,
    ) -> WriteResult:
        """Stream a new file (or bundle) to ``out``; see the module docstring for the layout.

        The tensors of ``tensors`` are produced (once each, in write order) and written; every
        other tensor of the plan is copied byte-identical from the input.  Metadata = the input's
        ``__metadata__`` plus ``provenance``.  All files appear together (shards first, under
        names no file has, the index last) or not at all (:class:`~netinit_cli.commit.FileSet`);
        ``protected``: the input files, never written over.  A ``--shard`` worker commits its
        files one by one and the index when all are there (:func:`sharded.write_worker`).
        """
        for key, value in provenance.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise NetinitError(f"internal error: provenance {key!r} must map strings to strings")
        items, notes = self._items(plan, tensors)
        check_tensor_count(sum(len(shard_items) for shard_items in items.values()), out.name)
        if self.writes_bundle(out):
            files, index_bytes, expected = self._bundle(out, items, provenance, max_shard_size)
        else:
            source = self._shards[0]
            target = out.with_name(self._output_names(out)[source.file_name])
            metadata = {**source.metadata, **provenance}
            if self._folder is not None:  # a model folder's one file records its plan too
                metadata.update(_plan_metadata([(target.name, items[source.file_name])], provenance))
            files, index_bytes, expected = (
                [_File.make(target, metadata, items[source.file_name])],
                None,
                metadata,
            )
        if self._folder is not None and self._folder.index_bytes is not None:
            index_bytes = self._folder.index_bytes
        if index_bytes is not None and shard is None:  # refused now, not after every shard is written
            check_destination(out, overwrite=overwrite, protected=protected)
        done = _Progress()
        if shard is not None:
            if index_bytes is None and self._folder is None:
                raise UsageError(f"{out}: --shard splits a sharded bundle; this output is one file")

            def write_file(number: int, handle: BinaryIO) -> None:
                done.produced.clear()  # the files written before are committed and closed
                self._write_shard(handle, files[number], done, durable)
                _check_sources(done)

            planned = [sharded.PlannedFile(file.target.name, file.size) for file in files]
            result = sharded.write_worker(
                out,
                planned,
                index_bytes,
                expected,
                shard,
                write_file,
                overwrite=overwrite,
                durable=durable,
                extras=self._folder.extras if self._folder is not None else None,
            )
            result.notes[:0] = notes
            return result
        fileset = FileSet(
            out,
            overwrite=overwrite,
            durable=durable,
            protected=protected,
            names=_index_shards if index_bytes is not None else lambda path: set(),
            ours=_written_by_netinit,
        )
        with fileset:
            stem = _index_stem(out.name)
            for file in files:
                if index_bytes is None:
                    handle = fileset.open_primary()
                else:
                    handle = fileset.member(functools.partial(shard_variant, file.target.name, stem))
                self._write_shard(handle, file, done, durable)
            bases = [file.target.name for file in files]
            _check_sources(done)
            written = fileset.commit(functools.partial(_renamed_in_index, index_bytes or b"", bases))
        size = sum(path.stat().st_size for path in written)
        notes += [f"removed {name}, a file of the output this one replaced" for name in fileset.removed]
        return WriteResult(paths=written, bytes_written=size, notes=notes)

    def writes_bundle(self, out: Path) -> bool:
        """An index and its shards: the input is a bundle, or a new checkpoint goes to ``*.index.json``."""
        return self._index is not None or (self._shards[0].path is None and out.name.endswith(".json"))

    def _bundle(
        self, out: Path, items: dict[str, list[_Item]], provenance: dict[str, str], max_shard_size: int | None
    ) -> tuple[list[_File], bytes, dict[str, str]]:
        """Every file of the bundle, the index and the ``netinit.*`` keys each file records, from the
        plan alone: every worker of a ``--shard`` run computes the same."""
        if self._index is None:  # a new bundle: split like the Hub
            created = items[self._shards[0].file_name]
            groups = sharded.split_by_size(
                [item.nbytes for item in created], max_shard_size or sharded.DEFAULT_MAX_SHARD_SIZE
            )
            names = sharded.numbered_names(out, len(groups))
            layout: list[tuple[str, dict[str, str], list[_Item]]] = [
                (name, {}, [created[i] for i in group]) for name, group in zip(names, groups, strict=True)
            ]
            index_metadata: dict[str, Any] = {}
        else:
            shard_out = self._output_names(out)
            layout = [(shard_out[s.file_name], s.metadata, items[s.file_name]) for s in self._shards]
            index_metadata = dict(self._index.metadata)
        expected = _plan_metadata([(name, chosen) for name, _, chosen in layout], provenance)
        files = [
            _File.make(out.with_name(name), {**metadata, **expected}, chosen)
            for name, metadata, chosen in layout
        ]
        index_metadata["total_size"] = sum(item.nbytes for file in files for item in file.items)
        index_metadata["total_parameters"] = sum(
            math.prod(item.shape) for file in files for item in file.items
        )
        weight_map = {item.name: file.target.name for file in files for item in file.items}
        document = {"metadata": index_metadata, "weight_map": dict(sorted(weight_map.items()))}
        return files, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(), expected

    def _output_names(self, out: Path) -> dict[str, str]:
        """Input shard file name → output shard file name."""
        if self._index is not None:
            if not out.name.endswith(".json"):
                raise UsageError(
                    f"{out}: the input is a sharded bundle; give -o NAME{INDEX_SUFFIX} (the split is kept)"
                )
            return output_shard_names(self._index.path, [s.file_name for s in self._shards], out)
        if out.name.endswith(".json"):
            raise UsageError(f"{out}: the input is one .safetensors file; give -o NAME{FILE_SUFFIX}")
        return {self._shards[0].file_name: out.name}

    def _items(
        self, plan: Sequence[Planned], tensors: Mapping[str, LazyTensor]
    ) -> tuple[dict[str, list[_Item]], list[str]]:
        """Which tensors go into which shard, and notes on the params left out."""
        notes: list[str] = []
        unknown = set(tensors) - {entry.param.name for entry in plan}
        if unknown:
            raise NetinitError(f"internal error: tensors {sorted(unknown)} are filled but not in the plan")
        items: dict[str, list[_Item]] = {shard.file_name: [] for shard in self._shards}
        for entry in plan:
            param = entry.param
            tensor = tensors.get(param.name)
            if not param.has_data and tensor is None and param.numel:
                notes.append(
                    f"tensor {quote(param.name)} was not written: it has no data and the plan does not fill it"
                )
                continue
            if tensor is None and param.name not in self._entries and param.numel:
                raise NetinitError(
                    f"internal error: the plan names tensor {quote(param.name)}, which the model lacks"
                )
            shard_name = self._placement.get(param.name, self._shards[-1].file_name)
            for name in (param.name, *param.aliases):
                item = _Item(
                    name=name,
                    dtype=param.dtype,
                    shape=param.shape,
                    primary=param.name,
                    tensor=tensor,
                    source=None if tensor is not None else self._entries.get(name),
                )
                items[shard_name if name == param.name else self._placement.get(name, shard_name)].append(
                    item
                )
        return items, notes

    def _write_shard(self, handle: BinaryIO, file: _File, done: _Progress, durable: bool) -> None:
        """One output file, into ``handle``: the header, then each tensor at its offset."""
        target = file.target
        fd = handle.fileno()
        position = 8 + len(file.header)
        preallocate(fd, 0, file.size, target)
        write_all(fd, struct.pack("<Q", len(file.header)) + file.header, target)
        writeback = EarlyWriteback(fd, active=durable)
        try:
            for item in file.items:
                self._write_item(item, fd, position, target, done)
                position += item.nbytes
                writeback.wrote(item.nbytes)
        finally:
            writeback.finish()

    def _write_item(self, item: _Item, fd: int, position: int, target: Path, done: _Progress) -> None:
        """One tensor at ``position``, the file's current offset, which it leaves past the tensor."""
        nbytes = item.nbytes
        if nbytes == 0:  # zero elements (stored or not): the header entry is the whole tensor
            return
        if item.primary in done.produced:  # a tied name of a tensor filled before
            src_fd, src_offset = done.produced[item.primary]
            copy_range(src_fd, src_offset, nbytes, fd, target)
        elif item.tensor is not None:
            _check_fillable(item, item.tensor)
            item.tensor.write_into(fd, position, target)
            os.lseek(fd, position + nbytes, os.SEEK_SET)
            done.produced[item.primary] = (fd, position)
        else:
            assert item.source is not None, item.name
            src_shard, src_entry = item.source
            source = src_shard.header.source if src_shard.header is not None else None
            assert source is not None
            done.sources[source.path] = source
            src_offset = src_shard.header.data_start + src_entry.begin  # type: ignore[union-attr]
            copy_range(source.fd, src_offset, nbytes, fd, target, source=source.path)


def _plan_metadata(layout: Sequence[tuple[str, list[_Item]]], provenance: dict[str, str]) -> dict[str, str]:
    """The ``netinit.*`` keys every file of the output records: the provenance and the plan's digest."""
    tensors = [
        PlannedTensor(item.name, item.dtype, item.shape, name, "filled" if item.tensor else "copied")
        for name, chosen in layout
        for item in chosen
    ]
    return shard_metadata(provenance, plan_digest(tensors, provenance), len(layout))


def _renamed_in_index(index_bytes: bytes, bases: list[str], names: list[str]) -> bytes:
    """The index naming each shard by the name it is committed under (the same bytes when every
    shard keeps its planned name)."""
    if not index_bytes or bases == names:
        return index_bytes
    final = dict(zip(bases, names, strict=True))
    document = json.loads(index_bytes)
    document["weight_map"] = {name: final[base] for name, base in document["weight_map"].items()}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def shard_variant(base: str, out_stem: str, k: int) -> str:
    """The ``k``-th name of an output shard: ``model.init-00001-of-00002.safetensors``, then
    ``model.init.1-00001-of-00002.safetensors``, ``model.init.2-…`` (the first that no other file
    in the folder has, so a shard the old index names is never written over)."""
    if k == 0:
        return base
    assert base.startswith(out_stem), (base, out_stem)
    return f"{out_stem}.{k}{base[len(out_stem) :]}"


def _index_shards(index: Path) -> set[str]:
    """The shard names an existing index names (none if it is not a readable index)."""
    try:
        return set(read_index(index).weight_map.values())
    except (InputError, OSError):
        return set()


def _written_by_netinit(shard: Path) -> bool:
    """Whether a shard's header carries netinit's provenance: only those are removed when the
    index that named them is replaced (another tool's shards may be shared)."""
    try:
        with open(shard, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                return False
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and "netinit.version" in metadata


def output_shard_names(in_index: Path, shard_names: Sequence[str], out_index: Path) -> dict[str, str]:
    """Input shard file name → output shard file name, for an index written to ``out_index``."""
    in_stem = _index_stem(in_index.name)
    out_stem = _index_stem(out_index.name)
    names: dict[str, str] = {}
    for name in shard_names:
        if name.startswith(in_stem):
            # A variant tag netinit added (``model.init.1-00001-…``) is not carried over.
            rest = re.sub(r"^(\.\d+)+(?=-)", "", name[len(in_stem) :])
            names[name] = out_stem + rest
        else:
            names[name] = f"{out_stem}-{name}"
    if len(set(names.values())) != len(names) or out_index.name in names.values():
        raise UsageError(f"{out_index}: output shard names would collide; choose another -o name")
    return names


def _index_stem(name: str) -> str:
    for suffix in (INDEX_SUFFIX, ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def encode_header(metadata: dict[str, str], items: Sequence[_Item]) -> bytes:
    """The JSON header for ``items`` in this order, padded with spaces to a multiple of 8 bytes."""
    document: dict[str, Any] = {}
    if metadata:
        document["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for item in items:
        document[item.name] = {
            "dtype": item.dtype,
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    encoded = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    if len(encoded) > MAX_HEADER_BYTES:
        raise NetinitError(f"the output header would be {len(encoded)} bytes, over the safetensors limit")
    return encoded


def _check_fillable(item: _Item, tensor: LazyTensor) -> None:
    """A filled tensor must match its header entry (a mismatch is a netinit bug)."""
    if item.dtype in SUB_BYTE:
        raise NetinitError(
            f"internal error: cannot fill tensor {quote(item.name)} of packed dtype {item.dtype}"
        )
    if (tensor.shape, tensor.dtype) != (item.shape, item.dtype):
        raise NetinitError(
            f"internal error: tensor {quote(item.name)} is filled as {tensor.dtype} {shape_text(tensor.shape)}, "
            f"expected {item.dtype} {shape_text(item.shape)}"
        )


def _check_sources(done: _Progress) -> None:
    """Before a commit: nothing wrote into an input while it was copied (same inode, new size or
    modification time), which the copies alone would not notice."""
    for source in done.sources.values():
        source.check_unchanged()
