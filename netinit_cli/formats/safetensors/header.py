"""The safetensors header and index: strict parsing and validation, before any tensor data is read.

File layout: ``[u64 little-endian N][N bytes of JSON header][data]``; header entries
``name -> {"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative to the data.
The header is validated as strictly as the reference Rust parser, and the gaps a Python ``json``
parser leaves (duplicate keys, NaN, lone surrogates, non-integer numbers) are closed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netinit_cli.errors import InputError, UnsafeInputError
from netinit_cli.inputfile import FileState, InputFile

# Limits checked before anything is allocated.  The reference caps the header at 100 MB.
MAX_HEADER_BYTES = 100_000_000
# Tensors in one checkpoint (a file, a sharded bundle or a manifest), read or written: the same
# limit both ways, so netinit never writes what it will not read.  The largest mixture-of-experts
# checkpoints hold about 10^5 (DeepSeek-V3 in FP8: 58 MoE layers x 256 experts x 3 projections x
# weight and scale ~ 91,000; Kimi K2: 60 x 384 x 3 x 2 ~ 138,000; a GPTQ copy of Kimi K2 with
# qweight, qzeros, scales and g_idx ~ 277,000); 10^6 leaves room for larger ones.
MAX_TENSORS = 1_000_000
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
DTYPE_RANK = {name: rank for rank, name in enumerate(DTYPE_BITS)}
SUB_BYTE = frozenset(name for name, bits in DTYPE_BITS.items() if bits % 8)

INDEX_SUFFIX = ".safetensors.index.json"
FILE_SUFFIX = ".safetensors"


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
    tensors: list[TensorEntry]
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    # The file the header was read from: its tensor data is read through it too, so a file
    # renamed over the path meanwhile is never mixed in (see netinit_cli.inputfile).
    source: InputFile | None = None

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    def by_name(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for entry in self.tensors}


class HeaderProblem(Exception):
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
            raise HeaderProblem(f"key {show(key)} appears twice in one JSON object (names must be unique)")
        result[key] = value
    return result


def _reject_constant(text: str) -> Any:
    raise HeaderProblem(f"JSON contains {text}, which strict JSON does not allow")


def _strict_int(text: str) -> int | _BadNumber:
    if text.startswith("-") or len(text) > 20:
        return _BadNumber(text)
    return int(text)


def load_strict_json(text: str) -> Any:
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


def show(value: Any) -> str:
    """A value as it looks in JSON (bad numbers as written), shortened for one-line messages."""
    text = _json_text(value)
    return text if len(text) <= 60 else text[:57] + "..."


def quote(name: str) -> str:
    """A tensor name in single quotes, with control characters and quotes escaped (one line)."""
    if name.isascii() and name.isprintable() and not _ESCAPED.intersection(name):
        return f"'{name}'"  # nothing to escape: the common case, once per tensor of a header
    inner = json.dumps(name, ensure_ascii=not encodable(name))[1:-1].replace('\\"', '"')
    return "'" + inner.replace("'", "\\'") + "'"


_ESCAPED = frozenset("\"\\'")


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value < U64_LIMIT


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_tensor_count(count: int, where: object) -> None:
    """The one tensor-count limit, for every file, bundle and manifest read and every output."""
    if count > MAX_TENSORS:
        raise InputError(
            f"{where}: {count:,} tensors, more than netinit's limit of {MAX_TENSORS:,} tensors per "
            "checkpoint (for reading and writing); split the checkpoint"
        )


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

    source = InputFile(path)
    size = source.size
    if size < 8:
        raise fail(
            f"file is {size} bytes, too short for safetensors (it starts with an 8-byte header length)"
        )
    header_size = int.from_bytes(source.read(0, 8), "little")
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
    raw = source.read(8, header_size)
    check_tensor_count(raw.count(b'"data_offsets"'), label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"header is not valid UTF-8 (byte {8 + exc.start} of the file)") from None
    if text.startswith("\ufeff"):
        raise fail("header starts with a UTF-8 byte order mark, which JSON headers must not have")
    try:
        document = load_strict_json(text)
    except HeaderProblem as exc:
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
    check_tensor_count(len(document), label)
    warnings: list[str] = []
    entries = [_header_entry(name, value, fail, warnings, label) for name, value in document.items()]

    entries.sort(key=lambda entry: (entry.begin, entry.end))
    expected = 0
    for entry in entries:
        where = f"tensor {quote(entry.name)}: data_offsets [{entry.begin}, {entry.end}]"
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
                f"{where} hold {entry.nbytes} bytes but shape {shape_text(entry.shape)} x {entry.dtype} "
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
    return Header(path, header_size, entries, metadata, warnings, source)


def _header_metadata(value: Any, fail: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict) and {"dtype", "shape", "data_offsets"} & set(value):
        raise fail(
            'a tensor is named "__metadata__", a name reserved for the metadata map; rename the tensor'
        )
    if not isinstance(value, dict):
        raise fail(f'"__metadata__" must be an object of strings, got {show(value)}')
    for key, item in value.items():
        if not isinstance(item, str):
            raise fail(f'"__metadata__" entry {show(key)} must be a string, got {show(item)}')
        if not (encodable(key) and encodable(item)):
            raise fail(f'"__metadata__" entry {show(key)} contains a lone UTF-16 surrogate')
    return dict(value)


def _header_entry(name: str, value: Any, fail: Any, warnings: list[str], label: str) -> TensorEntry:
    what = f"tensor {quote(name)}"
    if not encodable(name):
        raise fail(f"{what}: the name contains a lone UTF-16 surrogate")
    if not isinstance(value, dict):
        raise fail(f"{what}: entry must be an object with dtype, shape and data_offsets, got {show(value)}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in value:
            raise fail(f'{what}: entry has no "{key}"')
    dtype = value["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise fail(f"{what}: unknown dtype {show(dtype)} (expected one of {', '.join(DTYPE_BITS)})")
    shape = value["shape"]
    if not isinstance(shape, list):
        raise fail(f"{what}: shape {show(shape)} is not a list of integers")
    for dim in shape:
        if not is_u64(dim):
            raise fail(f"{what}: shape entry {show(dim)} is not a non-negative integer below 2^64")
    offsets = value["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise fail(
            f"{what}: data_offsets {show(offsets)} must be a list of exactly two integers [begin, end]"
        )
    for offset in offsets:
        if not is_u64(offset):
            raise fail(f"{what}: data_offsets entry {show(offset)} is not a non-negative integer below 2^64")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if math.prod(shape) >= U64_LIMIT or bits >= U64_LIMIT:
        raise fail(f"{what}: shape {shape_text(shape)} has too many elements (its size overflows 64 bits)")
    if bits % 8:
        raise fail(f"{what}: shape {shape_text(shape)} x {dtype} is {bits} bits, not a whole number of bytes")
    if name == "" or "\x00" in name:
        warnings.append(f"{label}: tensor {quote(name)} has an empty name or a NUL character in its name")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


@dataclass
class Index:
    path: Path
    metadata: dict[str, Any]
    weight_map: dict[str, str]
    state: FileState | None = None  # of the file read, to notice it being replaced meanwhile


def load_json_file(path: Path, what: str) -> Any:
    return _load_json(path, what)[0]


def _load_json(path: Path, what: str) -> tuple[Any, FileState]:
    """The document, and the identity of the file it was read from."""
    source = InputFile(path)
    try:
        if source.size > MAX_INDEX_BYTES:
            raise InputError(
                f"{path.name}: {what} is {source.size} bytes, over the {MAX_INDEX_BYTES} byte limit"
            )
        raw = source.read(0, source.size)
    finally:
        source.close()
    try:
        return load_strict_json(raw.decode("utf-8")), source.state
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name}: {what} is not valid UTF-8 (byte {exc.start})") from None
    except HeaderProblem as exc:
        raise InputError(f"{path.name}: {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path.name}: {what} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except (RecursionError, ValueError):
        raise InputError(f"{path.name}: {what} is not valid JSON (nested too deeply or bad number)") from None


def read_index(path: Path) -> Index:
    document, read_from = _load_json(path, "index")
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
                f"{path.name}: weight_map entry {show(name)} must name a shard file, got {show(shard)}"
            )
        if "/" in shard or "\\" in shard or shard in (".", "..") or "\x00" in shard:
            raise UnsafeInputError(
                f"{path.name}: weight_map entry {show(name)} points to {show(shard)}; shard files must be plain "
                "file names in the index's folder"
            )
        weight_map[name] = shard
    if not weight_map:
        raise InputError(f"{path.name}: the index's weight_map is empty")
    return Index(path, metadata, weight_map, read_from)


@dataclass
class Shard:
    """One file of a bundle (the file itself when unsharded), by its name in the bundle's folder."""

    file_name: str
    path: Path | None  # None for a model created from scratch
    header: Header | None
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
