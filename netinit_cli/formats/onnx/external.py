"""Checks on what an ONNX model points to and declares: external-data references and shapes.

Every external-data reference is validated here, not by onnx or onnx-ir (both have had
traversal, symlink and hard-link holes): a relative location without ``..``, inside the model's
folder after resolving links, no symlink on the way, a regular file with one link, only the
known keys, and ``offset + length`` within the file.  Files are opened without following links
and refused if they changed since they were checked (device, inode, size and modification time).
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import TensorProto

from netinit_cli.errors import InputError, UnsafeInputError
from netinit_cli.inputfile import FileState, changed, file_state

MAX_ELEMENTS = 1 << 50  # a shape with more elements is corrupt (2**50 bytes is a petabyte)

_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
PACKED_PER_BYTE: dict[int, int] = {
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
    state: FileState  # of the file when it was checked


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
    if elem_type in PACKED_PER_BYTE:
        return -(-numel // PACKED_PER_BYTE[elem_type])
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
    return ExternalRef(candidate, offset, expected, file_state(info_stat))


def _decimal(text: str, where: str, key: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise InputError(f"{where}: {key} {text!r} is not a non-negative decimal integer")
    return int(text)


def open_checked(ref: ExternalRef, label: str) -> BinaryIO:
    """Open a validated data file without following links; refuse if it changed since."""
    try:
        fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise UnsafeInputError(
            f"tensor {label!r}: cannot open external data {ref.path}: {exc.strerror}"
        ) from exc
    info = os.fstat(fd)
    if info.st_nlink > 1 or (info.st_dev, info.st_ino) != ref.state[:2]:
        os.close(fd)
        raise UnsafeInputError(f"tensor {label!r}: external data file {ref.path} changed while reading")
    if file_state(info) != ref.state:  # the same file, written since it was checked
        os.close(fd)
        detail = f"{ref.state[2]} bytes when checked, {info.st_size} now"
        raise changed(ref.path, detail, size=info.st_size != ref.state[2])
    return os.fdopen(fd, "rb")


def location(tensor: TensorProto) -> str:
    return next((e.value for e in tensor.external_data if e.key == "location"), "")
