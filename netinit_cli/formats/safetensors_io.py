"""safetensors backend: strict header reading, zero-copy tensor access, a streaming writer.

File layout: ``[u64 little-endian N][N bytes of JSON header][data]``; header entries
``name -> {"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative to the data.

Reading validates the header as strictly as the reference Rust parser (and closes the gaps a
Python ``json`` parser leaves, shared/reference/safetensors.md §6) *before* touching any tensor
data; tensors are then ``np.memmap`` views, so opening a 100 GB bundle costs only its headers.

Writing streams: the header depends only on (name, dtype, shape), so it is written first, then
each tensor in turn, either produced on demand (filled tensors) or copied from the input in
kernel-side chunks (``os.copy_file_range``), so peak memory is about the largest *filled* tensor.

Decisions (documented here because the lead's pipeline and the tests rely on them):

* **Tensor order** in a written file is the reference writer's: dtype alignment descending, then
  name (``tensor.rs`` ``prepare``).  Every tensor is then aligned to its element size and a file
  we write has the same tensor layout ``safetensors.numpy.save_file`` would give it.  ``__metadata__``
  keys are written sorted (the reference writes them in hash order).
* **Duplicate tensor names** in one header are rejected (the reference keeps the last one).
* **Shards**: the output keeps the input's split.  For ``model.safetensors.index.json`` the default
  output is ``model.init.safetensors.index.json`` and shard ``model-00001-of-00002.safetensors``
  becomes ``model.init-00001-of-00002.safetensors`` (the index's stem is replaced by the output
  index's stem; a shard name not starting with the stem gets ``<out stem>-`` in front).  The index
  is rewritten with ``weight_map`` from what was written and ``metadata.total_size`` (sum of
  tensor data bytes) and ``total_parameters`` recomputed; other index metadata keys are kept.
* **New tensors** (``has_data=False``, from ``--like``) go to the shard the index's ``weight_map``
  names for them, else to the last shard.  A param with no data that the plan does not fill is
  left out of the output and reported in ``WriteResult.notes``.
* **Ties**: safetensors cannot store one tensor under two names.  Two float tensors with a known
  tie pair of names (``lm_head.weight`` / ``*embed_tokens.weight``, ``wte.weight``, ``shared.weight``,
  ``cls.predictions.decoder.weight`` / ``word_embeddings.weight``, ``proj_out.weight``…) with the same
  shape, dtype and *identical bytes* are treated as one tied tensor: one param (the embedding)
  carries the other name in ``aliases``; it is produced once and written under both names.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from netinit_cli.classify import TIE_PAIRS, classify_params
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.errors import InputError, NetinitError, OutputError, UnsafeInputError, UsageError
from netinit_cli.fill import DirectOutput, EarlyWriteback
from netinit_cli.formats.base import AtomicFileSet, Produce, WriteResult, preallocate, with_init_suffix
from netinit_cli.model import Action, Param, Planned

# Limits checked before anything is allocated.  The reference caps the header at 100 MB; a
# header that size with tiny entries costs ~17x its size in Python objects, so the tensor count
# is capped too (real shards hold a few thousand tensors).
MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 1_000_000 // 4
MAX_INDEX_BYTES = 64 * 1024 * 1024
U64_LIMIT = 1 << 64

# Every dtype of safetensors 0.8, in the reference enum's declaration order (the writer sorts by
# this order, descending), with its size in bits.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_DTYPE_RANK = {name: rank for rank, name in enumerate(DTYPE_BITS)}
_SUB_BYTE = frozenset(name for name, bits in DTYPE_BITS.items() if bits % 8)

INDEX_SUFFIX = ".safetensors.index.json"
FILE_SUFFIX = ".safetensors"
COPY_CHUNK = 16 * 1024 * 1024


# =============================================================================================
# Header reading and validation
# =============================================================================================
@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class Header:
    """A validated safetensors header.  ``tensors`` are in file (offset) order."""

    path: Path
    header_size: int  # N, padding included
    file_size: int
    tensors: list[TensorEntry]
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    def by_name(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for entry in self.tensors}


class _HeaderProblem(Exception):
    """Raised inside JSON hooks; turned into an InputError naming the file."""


class _BadNumber:
    """A JSON number that is not a u64 (negative, fractional, exponent, too long): kept as text so
    the validator can echo it; it is only an error where a shape or offset is expected."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _HeaderProblem(f"key {_show(key)} appears twice in one JSON object (names must be unique)")
        result[key] = value
    return result


def _reject_constant(text: str) -> Any:
    raise _HeaderProblem(f"JSON contains {text}, which strict JSON does not allow")


def _strict_int(text: str) -> int | _BadNumber:
    if text.startswith("-") or len(text) > 20:
        return _BadNumber(text)
    return int(text)


def _load_strict_json(text: str) -> Any:
    return json.loads(
        text,
        object_pairs_hook=_pairs_without_duplicates,
        parse_constant=_reject_constant,
        parse_int=_strict_int,
        parse_float=_BadNumber,
    )


def _json_text(value: Any) -> str:
    if isinstance(value, _BadNumber):
        return value.text
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json_text(k)}: {_json_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=True)


def _show(value: Any) -> str:
    """A value as it looks in JSON (bad numbers as written), shortened for one-line messages."""
    text = _json_text(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _quote(name: str) -> str:
    """A tensor name in single quotes, with control characters and quotes escaped (one line)."""
    inner = json.dumps(name, ensure_ascii=not _encodable(name))[1:-1].replace('\\"', '"')
    return "'" + inner.replace("'", "\\'") + "'"


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value < U64_LIMIT


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_header(path: Path) -> Header:
    """Read and validate the header of one ``.safetensors`` file (no tensor data is read).

    Every problem raises :class:`InputError` with one line naming the file, the tensor and the
    problem.  Checks, in order: 8-byte length prefix; header length against the cap and the file
    size (before reading it); UTF-8; strict JSON (no duplicate keys, NaN/Infinity, lone
    surrogates); ``__metadata__`` string → string; per tensor: dtype name, shape and offsets as
    JSON non-negative integers < 2^64, exactly two offsets, a whole number of bytes; tensor count;
    offsets contiguous from 0 without gaps or overlaps, each span equal to shape x dtype size;
    the data ends exactly at the end of the file.
    """
    label = path.name or str(path)

    def fail(problem: str) -> InputError:
        return InputError(f"{label}: {problem}")

    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    size = stat.st_size
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise fail(
                    f"file is {size} bytes, too short for safetensors (it starts with an 8-byte header length)"
                )
            header_size = int.from_bytes(prefix, "little")
            if header_size > MAX_HEADER_BYTES:
                raise fail(
                    f"declared header length {header_size} bytes exceeds the limit of {MAX_HEADER_BYTES}; "
                    "the file is corrupt or not safetensors"
                )
            if 8 + header_size > size:
                raise fail(
                    f"declared header length {header_size} bytes runs past the end of the file "
                    f"({size} bytes); the file is truncated or not safetensors"
                )
            raw = handle.read(header_size)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from exc
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise fail(f"header lists more than {MAX_TENSORS} tensors; refusing to parse it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"header is not valid UTF-8 (byte {8 + exc.start} of the file)") from None
    if text.startswith("\ufeff"):
        raise fail("header starts with a UTF-8 byte order mark, which JSON headers must not have")
    try:
        document = _load_strict_json(text)
    except _HeaderProblem as exc:
        raise fail(f"header: {exc}") from None
    except json.JSONDecodeError as exc:
        raise fail(f"header is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise fail("header JSON is nested too deeply") from None
    except ValueError as exc:  # int() limits on absurd digit strings, etc.
        raise fail(f"header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise fail(f"header is a JSON {type(document).__name__}, not an object of tensors")

    metadata = _header_metadata(document.pop("__metadata__", None), fail)
    if len(document) > MAX_TENSORS:
        raise fail(f"header lists {len(document)} tensors, more than the limit of {MAX_TENSORS}")
    warnings: list[str] = []
    entries = [_header_entry(name, value, fail, warnings, label) for name, value in document.items()]

    entries.sort(key=lambda entry: (entry.begin, entry.end))
    expected = 0
    for entry in entries:
        where = f"tensor {_quote(entry.name)}: data_offsets [{entry.begin}, {entry.end}]"
        if entry.end < entry.begin:
            raise fail(f"{where} end before they begin")
        if entry.begin != expected:
            kind = (
                "overlap the previous tensor"
                if entry.begin < expected
                else "leave a gap after the previous tensor"
            )
            raise fail(
                f"{where} {kind}, which ends at {expected}; tensors must be packed from 0 without gaps"
            )
        needed = math.prod(entry.shape) * DTYPE_BITS[entry.dtype] // 8
        if entry.nbytes != needed:
            raise fail(
                f"{where} hold {entry.nbytes} bytes but shape {_shape_text(entry.shape)} x {entry.dtype} "
                f"needs {needed}"
            )
        expected = entry.end
    data_size = size - 8 - header_size
    if expected < data_size:
        raise fail(
            f"{data_size - expected} bytes follow the last tensor's data (from byte {8 + header_size + expected}); "
            "a safetensors file must end with its data (truncate it or re-export it)"
        )
    if expected > data_size:
        raise fail(
            f"the tensors need {expected} data bytes but only {data_size} follow the header; the file is truncated"
        )
    return Header(path, header_size, size, entries, metadata, warnings)


def _header_metadata(value: Any, fail: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict) and {"dtype", "shape", "data_offsets"} & set(value):
        raise fail(
            'a tensor is named "__metadata__", a name reserved for the metadata map; rename the tensor'
        )
    if not isinstance(value, dict):
        raise fail(f'"__metadata__" must be an object of strings, got {_show(value)}')
    for key, item in value.items():
        if not isinstance(item, str):
            raise fail(f'"__metadata__" entry {_show(key)} must be a string, got {_show(item)}')
        if not (_encodable(key) and _encodable(item)):
            raise fail(f'"__metadata__" entry {_show(key)} contains a lone UTF-16 surrogate')
    return dict(value)


def _header_entry(name: str, value: Any, fail: Any, warnings: list[str], label: str) -> TensorEntry:
    what = f"tensor {_quote(name)}"
    if not _encodable(name):
        raise fail(f"{what}: the name contains a lone UTF-16 surrogate")
    if not isinstance(value, dict):
        raise fail(f"{what}: entry must be an object with dtype, shape and data_offsets, got {_show(value)}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in value:
            raise fail(f'{what}: entry has no "{key}"')
    dtype = value["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise fail(f"{what}: unknown dtype {_show(dtype)} (expected one of {', '.join(DTYPE_BITS)})")
    shape = value["shape"]
    if not isinstance(shape, list):
        raise fail(f"{what}: shape {_show(shape)} is not a list of integers")
    for dim in shape:
        if not _is_u64(dim):
            raise fail(f"{what}: shape entry {_show(dim)} is not a non-negative integer below 2^64")
    offsets = value["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise fail(
            f"{what}: data_offsets {_show(offsets)} must be a list of exactly two integers [begin, end]"
        )
    for offset in offsets:
        if not _is_u64(offset):
            raise fail(f"{what}: data_offsets entry {_show(offset)} is not a non-negative integer below 2^64")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if math.prod(shape) >= U64_LIMIT or bits >= U64_LIMIT:
        raise fail(f"{what}: shape {_shape_text(shape)} has too many elements (its size overflows 64 bits)")
    if bits % 8:
        raise fail(
            f"{what}: shape {_shape_text(shape)} x {dtype} is {bits} bits, not a whole number of bytes"
        )
    if name == "" or "\x00" in name:
        warnings.append(f"{label}: tensor {_quote(name)} has an empty name or a NUL character in its name")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


# =============================================================================================
# Index reading
# =============================================================================================
@dataclass
class _Index:
    path: Path
    metadata: dict[str, Any]
    weight_map: dict[str, str]


def _load_json_file(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise InputError(f"{path.name}: {what} is {size} bytes, over the {MAX_INDEX_BYTES} byte limit")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return _load_strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name}: {what} is not valid UTF-8 (byte {exc.start})") from None
    except _HeaderProblem as exc:
        raise InputError(f"{path.name}: {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path.name}: {what} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except (RecursionError, ValueError):
        raise InputError(f"{path.name}: {what} is not valid JSON (nested too deeply or bad number)") from None


def _read_index(path: Path) -> _Index:
    document = _load_json_file(path, "index")
    if not isinstance(document, dict) or not isinstance(document.get("weight_map"), dict):
        raise InputError(
            f'{path.name}: not a safetensors index (no "weight_map" object of tensor -> shard file)'
        )
    metadata = document.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    weight_map: dict[str, str] = {}
    for name, shard in document["weight_map"].items():
        if not isinstance(shard, str) or not shard:
            raise InputError(
                f"{path.name}: weight_map entry {_show(name)} must name a shard file, got {_show(shard)}"
            )
        if "/" in shard or "\\" in shard or shard in (".", "..") or "\x00" in shard:
            raise UnsafeInputError(
                f"{path.name}: weight_map entry {_show(name)} points to {_show(shard)}; shard files must be plain "
                "file names in the index's folder"
            )
        weight_map[name] = shard
    if not weight_map:
        raise InputError(f"{path.name}: the index's weight_map is empty")
    return _Index(path, metadata, weight_map)


# =============================================================================================
# The model
# =============================================================================================
@dataclass
class _Shard:
    file_name: str  # name inside the bundle folder (the single file's own name when unsharded)
    path: Path | None  # None for a model created from scratch
    header: Header | None
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]


class SafetensorsModel:
    """A safetensors file or sharded bundle, opened header-first (implements ``ModelFile``)."""

    kind = "safetensors"

    def __init__(
        self,
        path: Path,
        shards: list[_Shard],
        index: _Index | None,
        params: list[Param],
        notes: list[str],
    ) -> None:
        self.path = path
        self.params = params
        self.metadata: dict[str, str] = dict(shards[0].metadata) if shards else {}
        self.notes = notes
        self._shards = shards
        self._index = index
        self._entry: dict[str, tuple[_Shard, TensorEntry]] = {
            name: (shard, entry) for shard in shards for name, entry in shard.entries.items()
        }
        self._placement: dict[str, str] = {name: shard.file_name for name, (shard, _) in self._entry.items()}
        self._maps: dict[str, np.memmap[Any, np.dtype[np.uint8]]] = {}
        # Index names stored in no shard: name -> shard file the index expects it in.
        self.index_missing: dict[str, str] = {}

    # -- reading -------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self._index is not None

    def read_array(self, name: str) -> np.ndarray:
        """The stored values, as a read-only zero-copy view (BF16/F8 through ml_dtypes).

        Sub-byte dtypes (F4, F6) come back as their raw packed ``uint8`` bytes.
        """
        try:
            shard, entry = self._entry[name]
        except KeyError:
            raise InputError(f"{self.path.name}: tensor {_quote(name)} has no stored data") from None
        dtype = np.dtype(np.uint8) if entry.dtype in _SUB_BYTE else numpy_dtype(entry.dtype)
        if entry.nbytes == 0:
            empty = np.zeros(entry.shape if entry.dtype not in _SUB_BYTE else (0,), dtype)
            empty.flags.writeable = False
            return empty
        raw = self._memmap(shard)[entry.begin : entry.end]
        if entry.dtype in _SUB_BYTE:
            return raw
        return raw.view(dtype).reshape(entry.shape)

    def _memmap(self, shard: _Shard) -> np.memmap[Any, np.dtype[np.uint8]]:
        mapped = self._maps.get(shard.file_name)
        if mapped is None:
            assert shard.path is not None and shard.header is not None
            try:
                mapped = np.memmap(shard.path, dtype=np.uint8, mode="r", offset=shard.header.data_start)
            except (OSError, ValueError) as exc:
                raise InputError(f"{shard.path.name}: cannot map the tensor data: {exc}") from exc
            self._maps[shard.file_name] = mapped
        return mapped

    # -- output naming --------------------------------------------------------------------------
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
        in_stem = _index_stem(self._index.path.name)
        out_stem = _index_stem(out_index.name)
        names: dict[str, str] = {}
        for shard in self._shards:
            if shard.file_name.startswith(in_stem):
                names[shard.file_name] = out_stem + shard.file_name[len(in_stem) :]
            else:
                names[shard.file_name] = f"{out_stem}-{shard.file_name}"
        if len(set(names.values())) != len(names) or out_index.name in names.values():
            raise UsageError(f"{out_index}: output shard names would collide; choose another -o name")
        return names

    # -- writing --------------------------------------------------------------------------------
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
        """Stream a new file (or bundle) to ``out``; see the module docstring for the layout.

        FILL entries are produced (once each, in write order) and written; every other tensor is
        copied byte-identical from the input.  Metadata = the input's ``__metadata__`` plus
        ``provenance``.  All files appear together (shards first, the index last) or not at all.
        """
        notes: list[str] = []
        planned = {entry.param.name: entry for entry in plan}
        known = {param.name for param in self.params}
        for name in planned:
            if name not in known:
                raise NetinitError(
                    f"internal error: the plan names tensor {_quote(name)}, which the model lacks"
                )
        for key, value in provenance.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise NetinitError(f"internal error: provenance {key!r} must map strings to strings")

        if self._index is not None:
            if not out.name.endswith(".json"):
                raise UsageError(
                    f"{out}: the input is a sharded bundle; give -o NAME{INDEX_SUFFIX} (the split is kept)"
                )
            shard_out = self.output_shard_names(out)
        else:
            if out.name.endswith(".json"):
                raise UsageError(f"{out}: the input is one .safetensors file; give -o NAME{FILE_SUFFIX}")
            shard_out = {self._shards[0].file_name: out.name}

        # Which tensors go into which shard.
        items_by_shard: dict[str, list[_Item]] = {shard.file_name: [] for shard in self._shards}
        for param in self.params:
            entry = planned.get(param.name)
            fill = entry is not None and entry.action == Action.FILL
            if not param.has_data and not fill:
                notes.append(
                    f"tensor {_quote(param.name)} was not written: it has no data and the plan does not fill it"
                )
                continue
            shard_name = self._placement.get(param.name, self._shards[-1].file_name)
            for name in (param.name, *param.aliases):
                stored = self._entry.get(name)
                items_by_shard[
                    shard_name if name == param.name else self._placement.get(name, shard_name)
                ].append(
                    _Item(
                        name=name,
                        dtype=param.dtype,
                        shape=param.shape,
                        primary=param.name,
                        planned=entry if fill else None,
                        source=None if fill else stored,
                    )
                )

        total_bytes = 0
        total_params = 0
        written_paths: list[Path] = []
        weight_map: dict[str, str] = {}
        produced: dict[str, tuple[int, int, int]] = {}  # primary -> (fd, absolute offset, nbytes)
        sources: dict[Path, int] = {}
        with AtomicFileSet(overwrite=overwrite, durable=durable) as files, contextlib.ExitStack() as closing:
            closing.callback(_close_all, sources)
            for shard in self._shards:
                items = sorted(
                    items_by_shard[shard.file_name], key=lambda item: (-_DTYPE_RANK[item.dtype], item.name)
                )
                target = out.with_name(shard_out[shard.file_name])
                metadata = {**shard.metadata, **provenance}
                header = _encode_header(metadata, items)
                fd = files.open(target).fileno()
                position = 8 + len(header)
                preallocate(fd, 0, position + sum(item.nbytes for item in items), target)
                _write_all(fd, struct.pack("<Q", len(header)) + header, target)
                writeback = EarlyWriteback(fd, active=durable)
                closing.callback(writeback.finish)
                for item in items:
                    nbytes = item.nbytes
                    if item.primary in produced:
                        src_fd, src_offset, _ = produced[item.primary]
                        _copy_range(src_fd, src_offset, nbytes, fd, target)
                    elif item.planned is not None:
                        # Large tensors are written by the sampler threads themselves (pwrite at
                        # ``position``); others come back as an array.
                        direct = DirectOutput(fd, position, target)
                        array = _checked_output(produce(item.planned, direct), item, direct.written)
                        if direct.written:
                            os.lseek(fd, position + nbytes, os.SEEK_SET)
                        else:
                            _write_all(fd, array.reshape(-1).view(np.uint8).data, target)
                        del array
                        produced[item.primary] = (fd, position, nbytes)
                    else:
                        assert item.source is not None, item.name
                        src_shard, src_entry = item.source
                        assert src_shard.path is not None and src_shard.header is not None
                        if src_shard.path not in sources:
                            sources[src_shard.path] = _open_source(src_shard.path)
                        src_offset = src_shard.header.data_start + src_entry.begin
                        _copy_range(sources[src_shard.path], src_offset, nbytes, fd, target)
                    position += nbytes
                    writeback.wrote(nbytes)
                    total_bytes += nbytes
                    total_params += math.prod(item.shape)
                    weight_map[item.name] = target.name
                writeback.finish()
                written_paths.append(target)
            if self._index is not None:
                index_metadata = {
                    **self._index.metadata,
                    "total_size": total_bytes,
                    "total_parameters": total_params,
                }
                document = {"metadata": index_metadata, "weight_map": dict(sorted(weight_map.items()))}
                index_text = json.dumps(document, indent=2, sort_keys=True) + "\n"
                _write_all(files.open(out).fileno(), index_text.encode(), out)
                written_paths.append(out)
            files.commit()
        written = sum(path.stat().st_size for path in written_paths)
        return WriteResult(paths=written_paths, bytes_written=written, notes=notes)


@dataclass
class _Item:
    name: str
    dtype: str
    shape: tuple[int, ...]
    primary: str  # the param whose values these are (differs for tied aliases)
    planned: Planned | None
    source: tuple[_Shard, TensorEntry] | None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BITS[self.dtype] // 8


def _index_stem(name: str) -> str:
    for suffix in (INDEX_SUFFIX, ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _encode_header(metadata: dict[str, str], items: list[_Item]) -> bytes:
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


def _checked_output(array: np.ndarray, item: _Item, written: bool = False) -> np.ndarray:
    """``produce``'s array, checked against the header and made little-endian C-contiguous
    (only checked when the bytes were already ``written`` directly: it is then a stand-in)."""
    if item.dtype in _SUB_BYTE:
        raise NetinitError(
            f"internal error: cannot fill tensor {_quote(item.name)} of packed dtype {item.dtype}"
        )
    expected = numpy_dtype(item.dtype)
    if not isinstance(array, np.ndarray) or array.shape != item.shape or array.dtype.name != expected.name:
        got = f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}"
        raise NetinitError(
            f"internal error: produce() gave {got} for tensor {_quote(item.name)}, "
            f"expected {expected.name} {_shape_text(item.shape)}"
        )
    if written:
        return array
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


def _write_all(fd: int, data: bytes | memoryview, target: Path) -> None:
    view = memoryview(data).cast("B")
    try:
        while view.nbytes:
            done = os.write(fd, view)
            view = view[done:]
    except OSError as exc:
        raise OutputError(f"{target}: write failed: {exc.strerror or exc}") from exc


def _close_all(fds: dict[Path, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)


def _open_source(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc


_copy_file_range_works = hasattr(os, "copy_file_range")


def _copy_range(src_fd: int, offset: int, count: int, dst_fd: int, target: Path) -> None:
    """Append ``count`` bytes of ``src_fd`` from ``offset`` to ``dst_fd`` at its current position.

    ``copy_file_range`` copies inside the kernel (no user-space buffer, nothing mapped into our
    RSS); where it is unavailable (other OS, old kernel, some filesystems) a bounded pread/write
    loop of ``COPY_CHUNK`` bytes is used.
    """
    global _copy_file_range_works
    while count > 0 and _copy_file_range_works:
        try:
            done = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
                raise OutputError(f"{target}: write failed: {exc.strerror}") from exc
            _copy_file_range_works = False  # EXDEV, ENOSYS, EINVAL, EOPNOTSUPP: use the loop
            break
        if done == 0:
            raise InputError(
                f"{target}: the input ended early at byte {offset}; was it changed while reading?"
            )
        offset += done
        count -= done
    buffer = memoryview(bytearray(min(count, COPY_CHUNK))) if count > 0 else memoryview(b"")
    while count > 0:
        got = os.preadv(src_fd, [buffer[: min(count, len(buffer))]], offset)
        if got == 0:
            raise InputError(
                f"{target}: the input ended early at byte {offset}; was it changed while reading?"
            )
        _write_all(dst_fd, buffer[:got], target)
        offset += got
        count -= got


# =============================================================================================
# Opening
# =============================================================================================
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

    Only headers are read.  Params come in shard order, then file order, classified by
    :func:`netinit_cli.classify.classify_params` with the ``__metadata__["format"]`` hint.
    """
    notes: list[str] = []
    target, is_index = _resolve(Path(path), notes)
    if not is_index:
        header = read_header(target)
        shard = _Shard(target.name, target, header, header.metadata, header.by_name())
        notes.extend(header.warnings)
        params = _params_of(header, target.name)
        model = SafetensorsModel(target, [shard], None, params, notes)
    else:
        index = _read_index(target)
        shards: list[_Shard] = []
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
                        f"{target.name}: tensor {_quote(entry.name)} is stored in both {seen[entry.name]} and {file_name}"
                    )
                seen[entry.name] = file_name
            shards.append(_Shard(file_name, shard_path, header, header.metadata, header.by_name()))
            notes.extend(header.warnings)
            params.extend(_params_of(header, file_name))
        model = SafetensorsModel(target, shards, index, params, notes)
        for name, file_name in index.weight_map.items():
            if name not in seen:
                model.index_missing[name] = file_name
                model._placement[name] = file_name
        if model.index_missing:
            listed = ", ".join(sorted(model.index_missing)[:5])
            more = f" and {len(model.index_missing) - 5} more" if len(model.index_missing) > 5 else ""
            notes.append(
                f"{len(model.index_missing)} tensor(s) listed in {target.name} are stored in no shard: {listed}{more}; "
                "give --like TEMPLATE to create them"
            )
    model.params = classify_params(model.params, model.metadata.get("format"))
    _detect_ties(model)
    return model


def _detect_ties(model: SafetensorsModel) -> None:
    """Fold known tie pairs with identical bytes into one param with an alias (see module doc)."""
    by_name = {param.name: param for param in model.params}
    folded: set[str] = set()
    for alias_pattern, target_pattern in TIE_PAIRS:
        for alias in list(by_name):
            if alias in folded or not re.search(alias_pattern, alias):
                continue
            for name, param in by_name.items():
                if name == alias or name in folded or not re.search(target_pattern, name):
                    continue
                other = by_name[alias]
                if (param.shape, param.dtype) != (other.shape, other.dtype) or not param.has_data:
                    continue
                if not np.array_equal(
                    model.read_array(name).view(np.uint8), model.read_array(alias).view(np.uint8)
                ):
                    continue
                # The alias may already carry names folded into it (T5 v1.0 saves lm_head,
                # encoder/decoder.embed_tokens and shared): they move with it, or are lost.
                by_name[name] = replace(param, aliases=(*param.aliases, alias, *other.aliases))
                folded.add(alias)
                model.notes.append(
                    f"{alias} holds the same bytes as {name}: treated as tied (filled once, written under both names)"
                )
                break
    if folded:
        model.params = [by_name[param.name] for param in model.params if param.name not in folded]


# =============================================================================================
# Templates and new checkpoints
# =============================================================================================
def params_from_template(path: Path) -> list[Param]:
    """Names, shapes and dtypes from ``--like TEMPLATE``: a safetensors file, index or folder, or a
    JSON manifest ``{name: {"shape": [...], "dtype": "F32"}}`` (``dtype`` defaults to F32; an
    optional ``"__metadata__": {"format": "pt"}`` gives the layout hint).  Every param has
    ``has_data=False`` and is classified by name.  ONNX templates are handled by the caller."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".json"):
        document = _load_json_file(path, "template")
        if isinstance(document, dict) and "weight_map" not in document:
            return _manifest_params(path, document)
    model = open_safetensors(path)
    params = [replace(param, has_data=False, source=f"template {model.path.name}") for param in model.params]
    aliases = [
        Param(alias, param.shape, param.dtype, has_data=False, source=param.source)
        for param in params
        for alias in param.aliases
    ]
    params = [replace(param, aliases=()) for param in params] + aliases
    return classify_params(params, model.metadata.get("format"))


_MANIFEST_FIELDS = {"shape", "dtype"}


def _manifest_params(path: Path, document: dict[str, Any]) -> list[Param]:
    label = path.name
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(f'{label}: "__metadata__" must be an object of strings')
    params: list[Param] = []
    for name, spec in document.items():
        what = f"{label}: tensor {_quote(name)}"
        if not name or not _encodable(name) or "\x00" in name:
            raise InputError(f"{what}: names must be non-empty text without NUL characters")
        if not isinstance(spec, dict) or "shape" not in spec:
            raise InputError(f'{what}: expected {{"shape": [...], "dtype": "F32"}}, got {_show(spec)}')
        unknown = sorted(set(spec) - _MANIFEST_FIELDS)
        if unknown:
            raise InputError(
                f"{what}: unknown field(s) {', '.join(unknown)}; a manifest entry has shape and dtype"
            )
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(_is_u64(dim) for dim in shape):
            raise InputError(f"{what}: shape {_show(shape)} must be a list of non-negative integers")
        dtype = spec.get("dtype", "F32")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise InputError(
                f"{what}: unknown dtype {_show(dtype)} (expected one of {', '.join(DTYPE_BITS)})"
            )
        if math.prod(shape) * DTYPE_BITS[dtype] % 8 or math.prod(shape) * DTYPE_BITS[dtype] >= U64_LIMIT:
            raise InputError(f"{what}: shape {_shape_text(shape)} x {dtype} is not a storable size")
        params.append(Param(name, tuple(shape), dtype, has_data=False, source=f"template {label}"))
    if not params:
        raise InputError(f"{label}: the manifest lists no tensors")
    hint = metadata.get("format")
    return classify_params(params, hint if isinstance(hint, str) else None)


def new_safetensors(out_path: Path, params: list[Param]) -> SafetensorsModel:
    """A model with no input file: every param is created (``--like T -o new.safetensors``)."""
    out_path = Path(out_path)
    if out_path.name.endswith(".json"):
        raise UsageError(f"{out_path}: a new checkpoint is written as one file; give -o NAME{FILE_SUFFIX}")
    created = [replace(param, has_data=False, aliases=()) for param in _storable(params, [])]
    shard = _Shard(out_path.name, None, None, {}, {})
    model = SafetensorsModel(out_path, [shard], None, created, [])
    model._placement = {param.name: out_path.name for param in created}
    return model


def _storable(params: list[Param], notes: list[str]) -> list[Param]:
    kept: list[Param] = []
    for param in params:
        if param.dtype not in DTYPE_BITS:
            notes.append(
                f"template tensor {_quote(param.name)} has dtype {param.dtype}, which safetensors cannot store"
            )
            continue
        if param.name == "__metadata__" or not _encodable(param.name):
            notes.append(f"template tensor {_quote(param.name)} has a name safetensors cannot store")
            continue
        kept.append(param)
    return kept


def merge_template(model: SafetensorsModel, template: list[Param]) -> None:
    """Add template tensors the bundle lacks as ``has_data=False`` params (to be created).

    Same name with another shape or dtype: a note, nothing added (the stored tensor is kept).
    Index entries stored in no shard are created in the shard the index names when the template
    gives their shape; those it does not give stay reported in ``notes``.
    """
    present = {param.name: param for param in model.params}
    for param in model.params:
        for alias in param.aliases:
            present[alias] = param
    added: list[Param] = []
    for param in _storable(template, model.notes):
        stored = present.get(param.name)
        if stored is not None:
            if (stored.shape, stored.dtype) != (param.shape, param.dtype):
                model.notes.append(
                    f"tensor {_quote(param.name)}: the template has {_shape_text(param.shape)} {param.dtype} but the "
                    f"bundle stores {_shape_text(stored.shape)} {stored.dtype}; kept as stored"
                )
            continue
        new = replace(param, has_data=False, aliases=(), source="template")
        added.append(new)
        present[new.name] = new
        model._placement.setdefault(new.name, model._shards[-1].file_name)
        model.index_missing.pop(new.name, None)
    if added:
        shown = ", ".join(param.name for param in added[:5])
        more = f" and {len(added) - 5} more" if len(added) > 5 else ""
        model.notes.append(
            f"{len(added)} tensor(s) from the template are missing here and will be created: {shown}{more}"
        )
        model.params = [*model.params, *added]
    if model.index_missing:
        model.notes.append(
            f"{len(model.index_missing)} index tensor(s) are in no shard and not in the template: "
            + ", ".join(sorted(model.index_missing)[:5])
        )


__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "Header",
    "SafetensorsModel",
    "TensorEntry",
    "merge_template",
    "new_safetensors",
    "open_safetensors",
    "params_from_template",
    "read_header",
]
