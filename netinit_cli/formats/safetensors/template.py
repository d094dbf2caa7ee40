"""Templates (``--like``) and new checkpoints: the tensors a JSON manifest lists, the names
safetensors can store, and merging a template's tensors into an opened bundle."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from netinit_cli.errors import InputError, UsageError
from netinit_cli.formats.safetensors.bundle import SafetensorsModel, new_model
from netinit_cli.formats.safetensors.header import (
    DTYPE_BITS,
    FILE_SUFFIX,
    INDEX_SUFFIX,
    U64_LIMIT,
    encodable,
    is_u64,
    load_json_file,
    quote,
    shape_text,
    show,
)
from netinit_cli.model import Param


@dataclass
class Manifest:
    """The tensors a JSON manifest lists, as read (not classified)."""

    path: Path
    params: list[Param]
    format_hint: str | None  # its ``__metadata__["format"]``
    kind: str = "manifest"


def read_manifest(path: Path) -> Manifest | None:
    """The tensors a JSON manifest ``{name: {"shape": [...], "dtype": "F32"}}`` lists (``dtype``
    defaults to F32), as ``has_data=False`` params, and its ``"__metadata__": {"format": …}``
    layout hint; None when ``path`` is not a manifest (a safetensors file, index or folder)."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".json"):
        document = load_json_file(path, "template")
        if isinstance(document, dict) and "weight_map" not in document:
            return Manifest(path, *_manifest_params(path, document))
    return None


def as_template(source: str, params: list[Param]) -> list[Param]:
    """A bundle's params as a template: no data, and every tied name a tensor of its own."""
    params = [replace(param, has_data=False, source=f"template {source}") for param in params]
    aliases = [
        Param(alias, param.shape, param.dtype, has_data=False, source=param.source)
        for param in params
        for alias in param.aliases
    ]
    return [replace(param, aliases=()) for param in params] + aliases


def new_safetensors(out_path: Path) -> SafetensorsModel:
    """A model with no input file (``--like T -o new.safetensors``, or ``-o NAME.safetensors.index.json``
    for a sharded bundle): every tensor is created."""
    out_path = Path(out_path)
    if out_path.name.endswith(".json") and not out_path.name.endswith(INDEX_SUFFIX):
        raise UsageError(
            f"{out_path}: a new checkpoint is one file (-o NAME{FILE_SUFFIX}) or a sharded bundle "
            f"(-o NAME{INDEX_SUFFIX})"
        )
    return new_model(out_path)


def new_params(params: list[Param]) -> list[Param]:
    """The template tensors a new checkpoint creates (those safetensors can store)."""
    return [replace(param, has_data=False, aliases=()) for param in storable(params, [])]


_MANIFEST_FIELDS = {"shape", "dtype"}


def _manifest_params(path: Path, document: dict[str, Any]) -> tuple[list[Param], str | None]:
    label = path.name
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(f'{label}: "__metadata__" must be an object of strings')
    params: list[Param] = []
    for name, spec in document.items():
        what = f"{label}: tensor {quote(name)}"
        if not name or not encodable(name) or "\x00" in name:
            raise InputError(f"{what}: names must be non-empty text without NUL characters")
        if not isinstance(spec, dict) or "shape" not in spec:
            raise InputError(f'{what}: expected {{"shape": [...], "dtype": "F32"}}, got {show(spec)}')
        unknown = sorted(set(spec) - _MANIFEST_FIELDS)
        if unknown:
            raise InputError(
                f"{what}: unknown field(s) {', '.join(unknown)}; a manifest entry has shape and dtype"
            )
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(is_u64(dim) for dim in shape):
            raise InputError(f"{what}: shape {show(shape)} must be a list of non-negative integers")
        dtype = spec.get("dtype", "F32")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise InputError(f"{what}: unknown dtype {show(dtype)} (expected one of {', '.join(DTYPE_BITS)})")
        if math.prod(shape) * DTYPE_BITS[dtype] % 8 or math.prod(shape) * DTYPE_BITS[dtype] >= U64_LIMIT:
            raise InputError(f"{what}: shape {shape_text(shape)} x {dtype} is not a storable size")
        params.append(Param(name, tuple(shape), dtype, has_data=False, source=f"template {label}"))
    if not params:
        raise InputError(f"{label}: the manifest lists no tensors")
    hint = metadata.get("format")
    return params, hint if isinstance(hint, str) else None


def storable(params: list[Param], notes: list[str]) -> list[Param]:
    kept: list[Param] = []
    for param in params:
        if param.dtype not in DTYPE_BITS:
            notes.append(
                f"template tensor {quote(param.name)} has dtype {param.dtype}, which safetensors cannot store"
            )
            continue
        if param.name == "__metadata__" or not encodable(param.name):
            notes.append(f"template tensor {quote(param.name)} has a name safetensors cannot store")
            continue
        kept.append(param)
    return kept


def merge_template(
    model: SafetensorsModel, params: list[Param], template: list[Param]
) -> tuple[list[Param], list[str]]:
    """``params`` (the bundle's, classified) plus the template tensors the bundle lacks, as
    ``has_data=False`` params (to be created), and notes on what was merged.

    Same name with another shape or dtype: a note, nothing added (the stored tensor is kept).
    Index entries stored in no shard are created in the shard the index names when the template
    gives their shape; those it does not give stay reported in the notes.
    """
    notes: list[str] = []
    present = {param.name: param for param in params}
    for param in params:
        for alias in param.aliases:
            present[alias] = param
    added: list[Param] = []
    for param in storable(template, notes):
        stored = present.get(param.name)
        if stored is not None:
            if (stored.shape, stored.dtype) != (param.shape, param.dtype):
                notes.append(
                    f"tensor {quote(param.name)}: the template has {shape_text(param.shape)} {param.dtype} but the "
                    f"bundle stores {shape_text(stored.shape)} {stored.dtype}; kept as stored"
                )
            continue
        new = replace(param, has_data=False, aliases=(), source="template")
        added.append(new)
        present[new.name] = new
    if added:
        shown = ", ".join(param.name for param in added[:5])
        more = f" and {len(added) - 5} more" if len(added) > 5 else ""
        notes.append(
            f"{len(added)} tensor(s) from the template are missing here and will be created: {shown}{more}"
        )
        params = [*params, *added]
    created = {param.name for param in added}
    still_missing = [name for name in model.index_missing if name not in created]
    if still_missing:
        notes.append(
            f"{len(still_missing)} index tensor(s) are in no shard and not in the template: "
            + ", ".join(sorted(still_missing)[:5])
        )
    return params, notes
