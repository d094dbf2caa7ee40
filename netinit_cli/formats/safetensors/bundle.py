"""Open a safetensors file, a sharded bundle (``*.safetensors.index.json``) or a folder holding one:
headers only, so opening a 100 GB bundle costs only its headers.  Each file stays open: tensor
data is read later through the descriptor its header was read from (:mod:`netinit_cli.inputfile`).
Duplicate tensor names (in one header or across shards) are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netinit_cli.destination import Identity, own_inputs
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.errors import InputError
from netinit_cli.formats.base import WriteResult, with_init_suffix
from netinit_cli.formats.safetensors.header import (
    FILE_SUFFIX,
    INDEX_SUFFIX,
    SUB_BYTE,
    Header,
    Index,
    Shard,
    TensorEntry,
    check_tensor_count,
    quote,
    read_header,
    read_index,
)
from netinit_cli.formats.safetensors.writer import SafetensorsWriter, output_shard_names
from netinit_cli.inputfile import Elements, changed, file_state, pread_array
from netinit_cli.model import Param, Planned

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor


class SafetensorsModel:
    """A safetensors file or sharded bundle, opened header-first (implements ``ModelFile``).

    ``params`` are the stored tensors as read (name, shape, dtype), in shard order then file
    order; they are not classified.
    """

    kind = "safetensors"

    def __init__(
        self,
        path: Path,
        shards: list[Shard],
        index: Index | None,
        params: list[Param],
        notes: list[str],
        index_missing: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.params = params
        self.metadata: dict[str, str] = dict(shards[0].metadata) if shards else {}
        self.notes = notes
        self._shards = shards
        self._index = index
        self._entry: dict[str, tuple[Shard, TensorEntry]] = {
            name: (shard, entry) for shard in shards for name, entry in shard.entries.items()
        }
        # Where each tensor goes: where it is stored, or where the index expects it.
        self._placement: dict[str, str] = {name: shard.file_name for name, (shard, _) in self._entry.items()}
        self._index_missing = dict(index_missing or {})
        self._placement.update(self._index_missing)

    @property
    def created(self) -> bool:
        """A model with no input file (``--like T -o new.safetensors``)."""
        return self._shards[0].path is None

    @property
    def index_missing(self) -> dict[str, str]:
        """Index names stored in no shard: name -> shard file the index expects it in."""
        return dict(self._index_missing)

    def read_array(self, name: str, elements: Elements | None = None) -> np.ndarray:
        """The stored values, read-only (BF16/F8 through ml_dtypes), read through the file the
        header came from.  With ``elements`` (``(start, count)`` ranges of the flattened tensor)
        only those are read, the rest is zeros (pages never touched, so never allocated).

        Sub-byte dtypes (F4, F6) come back as their raw packed ``uint8`` bytes.
        """
        try:
            shard, entry = self._entry[name]
        except KeyError:
            raise InputError(f"{self.path.name}: tensor {quote(name)} has no stored data") from None
        assert shard.header is not None and shard.header.source is not None
        source, offset = shard.header.source, shard.header.data_start + entry.begin
        if entry.dtype in SUB_BYTE:
            return pread_array(source.fd, source.path, offset, np.dtype(np.uint8), (entry.nbytes,))
        return pread_array(source.fd, source.path, offset, numpy_dtype(entry.dtype), entry.shape, elements)

    def default_output(self) -> Path:
        """``model.safetensors`` → ``model.init.safetensors``; an index
        ``model.safetensors.index.json`` → ``model.init.safetensors.index.json`` (its shards become
        ``model.init-00001-of-00002.safetensors``, see :meth:`output_shard_names`).  A model created
        from scratch writes to the path it was created with."""
        if not self._shards or self._shards[0].path is None:
            return self.path
        if self._index is not None:
            index_name = self._index.path.name
            suffix = INDEX_SUFFIX if index_name.endswith(INDEX_SUFFIX) else ".json"
            return with_init_suffix(self._index.path, suffix)
        return with_init_suffix(self.path, FILE_SUFFIX)

    def output_shard_names(self, out_index: Path) -> dict[str, str]:
        """Input shard file name → output shard file name, for an index written to ``out_index``."""
        assert self._index is not None
        return output_shard_names(self._index.path, [s.file_name for s in self._shards], out_index)

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
        """See :meth:`.writer.SafetensorsWriter.write`."""
        return self._writer().write(
            out,
            plan,
            tensors,
            provenance,
            overwrite=overwrite,
            durable=durable,
            protected=protected | own_inputs(out, self.path, self.input_files()),
            shard=shard,
            max_shard_size=max_shard_size,
        )

    def input_files(self) -> list[Path]:
        """The files this model is read from: the index and every shard."""
        files = [shard.path for shard in self._shards if shard.path is not None]
        return ([self._index.path] if self._index is not None else []) + files

    def writes_bundle(self, out: Path) -> bool:
        """Whether writing to ``out`` gives an index and its shards."""
        return self._writer().writes_bundle(out)

    def _writer(self) -> SafetensorsWriter:
        return SafetensorsWriter(self._shards, self._index, self._entry, self._placement)


def new_model(out_path: Path) -> SafetensorsModel:
    """A model with no input file and no tensors: every planned one is created in ``out_path``."""
    return SafetensorsModel(out_path, [Shard(out_path.name, None, None, {}, {})], None, [], [])


def _params_of(header: Header, source: str) -> list[Param]:
    return [Param(entry.name, entry.shape, entry.dtype, source=source) for entry in header.tensors]


# The names transformers, diffusers and PEFT save under: in a folder that also holds other
# bundles (e.g. a previous netinit output), these are the model.
CANONICAL_NAMES = (
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "adapter_model.safetensors",
)


def _resolve(path: Path, notes: list[str]) -> tuple[Path, bool]:
    """(file, is_index) for a file, an index, or a folder holding one index or one file (when a
    folder holds several, the one with the transformers/diffusers/PEFT name is used, with a note)."""
    if not path.is_dir():
        return path, path.name.endswith(".json")
    indexes = sorted(p for p in path.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file())
    files = sorted(p for p in path.iterdir() if p.name.endswith(FILE_SUFFIX) and p.is_file())
    for candidates, is_index, kind in ((indexes, True, "indexes"), (files, False, ".safetensors files")):
        if len(candidates) == 1:
            return candidates[0], is_index
        if len(candidates) > 1:
            canonical = [p for p in candidates if p.name in CANONICAL_NAMES]
            if len(canonical) == 1:
                notes.append(f"{path} holds {len(candidates)} {kind}; using {canonical[0].name}")
                return canonical[0], is_index
            names = ", ".join(p.name for p in candidates[:5])
            raise InputError(f"{path}: the folder holds {len(candidates)} {kind} ({names}); give one of them")
    raise InputError(f"{path}: the folder holds no .safetensors file and no {INDEX_SUFFIX}")


def open_safetensors(path: Path) -> SafetensorsModel:
    """Open a ``.safetensors`` file, a ``*.safetensors.index.json`` or a folder with one of them.

    Only headers are read.  Params come in shard order, then file order, as stored (not
    classified).
    """
    notes: list[str] = []
    target, is_index = _resolve(Path(path), notes)
    if not is_index:
        header = read_header(target)
        shard = Shard(target.name, target, header, header.metadata, header.by_name())
        notes.extend(header.warnings)
        params = _params_of(header, target.name)
        model = SafetensorsModel(target, [shard], None, params, notes)
    else:
        index = read_index(target)
        shards: list[Shard] = []
        params = []
        seen: dict[str, str] = {}
        for file_name in sorted(set(index.weight_map.values())):
            shard_path = target.parent / file_name
            if not shard_path.exists():
                raise InputError(f"{target.name}: shard {file_name} named in the weight_map does not exist")
            header = read_header(shard_path)
            for entry in header.tensors:
                if entry.name in seen:
                    raise InputError(
                        f"{target.name}: tensor {quote(entry.name)} is stored in both {seen[entry.name]} and {file_name}"
                    )
                seen[entry.name] = file_name
            shards.append(Shard(file_name, shard_path, header, header.metadata, header.by_name()))
            notes.extend(header.warnings)
            params.extend(_params_of(header, file_name))
            check_tensor_count(len(params), target.name)
        _check_index_unchanged(index)
        index_missing = {name: file_name for name, file_name in index.weight_map.items() if name not in seen}
        if index_missing:
            listed = ", ".join(sorted(index_missing)[:5])
            more = f" and {len(index_missing) - 5} more" if len(index_missing) > 5 else ""
            notes.append(
                f"{len(index_missing)} tensor(s) listed in {target.name} are stored in no shard: {listed}{more}; "
                "give --like TEMPLATE to create them"
            )
        model = SafetensorsModel(target, shards, index, params, notes, index_missing)
    return model


def _check_index_unchanged(index: Index) -> None:
    """The shards opened are those of the index read: refuse an index replaced meanwhile (its
    shards may then be a mix of two bundles)."""
    try:
        now = file_state(os.stat(index.path))
    except OSError:
        now = None
    if now != index.state:
        raise changed(index.path, "it was replaced while its shards were opened", size=False)
