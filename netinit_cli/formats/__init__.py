"""Format detection: which backend opens a path.  Recognized by content, not only by suffix.

Adding a format: a reader (open the file, list or index its stored tensors, ``read_array``), a
writer (``write`` taking the plan and a :class:`~netinit_cli.fill.LazyTensor` per filled tensor),
a content test in :func:`sniff` and a branch in :func:`open_model`; see ARCHITECTURE.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netinit_cli.errors import InputError, UsageError
from netinit_cli.formats.base import ModelFile
from netinit_cli.formats.foreign import HEAD_BYTES, describe_foreign

if TYPE_CHECKING:
    from netinit_cli.formats.onnx.reader import OnnxModel
    from netinit_cli.formats.safetensors.bundle import SafetensorsModel
    from netinit_cli.formats.safetensors.hf_template import HfTemplate
    from netinit_cli.formats.safetensors.template import Manifest

SAFETENSORS = "safetensors"
ONNX = "onnx"
INDEX = "safetensors-index"
MANIFEST = "manifest"
HF_CONFIG = "hf-config"


def sniff(path: Path) -> str:
    """Return the kind of model at ``path`` from its bytes (folders are safetensors bundles)."""
    if path.is_dir():
        if (foreign := describe_foreign(path, b"")) is not None:
            raise InputError(foreign)
        return SAFETENSORS
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= path.stat().st_size - 8 and head[8:9] in (b"{", b" ", b"\n", b"\t", b"\r"):
            return SAFETENSORS
    # Before the JSON and ONNX tests: a SavedModel's .pb starts like a protobuf, and a PyTorch
    # *.bin.index.json like a safetensors index.
    if (foreign := describe_foreign(path, head)) is not None:
        raise InputError(foreign)
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return _json_kind(path)
    if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42") or path.suffix == ".onnx":
        return ONNX
    raise InputError(
        f"{path}: not an ONNX model or a safetensors file (first bytes {head[:8].hex(' ')}); "
        "give a .onnx model, a .safetensors file, a *.safetensors.index.json or a folder of shards"
    )


def _json_kind(path: Path) -> str:
    if path.stat().st_size > 64 * 1024 * 1024:
        raise InputError(f"{path}: JSON file over 64 MiB; not an index or manifest")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(document, dict) and "weight_map" in document:
        return INDEX
    if isinstance(document, dict) and (
        isinstance(document.get("model_type"), str) or isinstance(document.get("architectures"), list)
    ):
        return HF_CONFIG
    if isinstance(document, dict):
        return MANIFEST
    raise InputError(f"{path}: JSON is neither a safetensors index nor a tensor manifest")


def open_model(path: Path) -> ModelFile:
    """Open ``path`` with the backend its content calls for."""
    kind = sniff(path)
    if kind in (SAFETENSORS, INDEX):
        from netinit_cli.formats.safetensors.bundle import open_safetensors

        return open_safetensors(path)
    if kind == ONNX:
        from netinit_cli.formats.onnx.reader import open_onnx

        return open_onnx(path)
    if kind == HF_CONFIG:
        raise InputError(
            f"{path}: a transformers config is not a model; create one from it: netinit --like {path} -o OUTDIR"
        )
    raise InputError(
        f"{path}: a tensor manifest is not a model; use it as a template: netinit --like {path} -o OUT"
    )


@dataclass(frozen=True)
class ConfigOptions:
    """How a transformers config template is built and split (``--dtype``, ``--trust-remote-code``,
    ``--max-shard-size``); they apply to no other template."""

    dtype: str | None = None
    trust_remote_code: bool = False
    max_shard_size: int | None = None

    def given(self) -> bool:
        return self != ConfigOptions()


def is_config_template(path: Path) -> bool:
    """A transformers ``config.json``, or a folder holding one and no safetensors weights."""
    if path.is_dir():
        weights = any(p.name.endswith((".safetensors", ".safetensors.index.json")) for p in path.iterdir())
        return (path / "config.json").is_file() and not weights
    return path.is_file() and sniff(path) == HF_CONFIG


def open_template(
    path: Path, config_options: ConfigOptions | None = None
) -> OnnxModel | SafetensorsModel | Manifest | HfTemplate:
    """Open ``--like TEMPLATE``: an ONNX model, a JSON manifest, a transformers config (or a folder
    holding one), or a safetensors file, index or folder (read only: the classify stage turns it
    into the params to create)."""
    config_options = config_options or ConfigOptions()
    if is_config_template(path):
        from netinit_cli.formats.safetensors.hf_template import load_template

        return load_template(
            path, dtype=config_options.dtype, trust_remote_code=config_options.trust_remote_code
        )
    if config_options.given():
        raise UsageError(
            f"--like {path}: --dtype, --max-shard-size and --trust-remote-code apply to a transformers "
            "config.json template only"
        )
    if sniff(path) == ONNX:
        from netinit_cli.formats.onnx.reader import open_onnx

        return open_onnx(path)
    from netinit_cli.formats.safetensors.bundle import open_safetensors
    from netinit_cli.formats.safetensors.template import read_manifest

    return read_manifest(path) or open_safetensors(path)
