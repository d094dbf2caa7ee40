"""What a file netinit does not read is, and how to convert it: one line for the error message.

A user tries ``netinit pytorch_model.bin`` or a Keras, GGUF, TensorFlow or TFLite file; the error
then names the format and the converter instead of "not an ONNX model".  Recognition uses the
first bytes (signatures), file and folder names, and for zip archives the member names of the
central directory, read with ``zipfile`` and bounded.  Nothing here unpickles, imports a framework
or parses HDF5, GGUF or protobuf: a hostile file costs a directory listing at most.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

# Every signature below lies within a file's first HEAD_BYTES bytes.
HEAD_BYTES = 16
# Zip archives with more members, or a larger central directory, are not looked into: zipfile reads
# and parses the whole directory.  A torch.save checkpoint has a few entries per tensor (about 100
# bytes each), so these are far above any real one.
MAX_ZIP_ENTRIES = 65_536
MAX_ZIP_DIRECTORY_BYTES = 16 * 1024 * 1024
# Folder entries looked at for a TensorFlow SavedModel or a checkpoint without safetensors files.
MAX_FOLDER_ENTRIES = 4_096

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GGUF_MAGIC = b"GGUF"
NUMPY_MAGIC = b"\x93NUMPY"
TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier, at bytes 4-8
# torch.save(..., _use_new_zipfile_serialization=False) starts with this number, pickled (protocol 2).
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
PICKLE_PROTOCOLS = (2, 3, 4, 5)  # a pickle of protocol 2 or later starts with \x80 and the protocol
# Files a folder of weights may hold instead of safetensors shards, in the order they are reported.
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".keras", ".h5", ".gguf", ".tflite", ".npz")

# The safetensors call of the NumPy converters: %s are the input and output paths.
NPY_SAVE = 'save_file({"weight": np.load(%s)}, %s)'
NPZ_SAVE = "save_file(dict(np.load(%s)), %s)"

NOT_READ = "which netinit does not read (it reads ONNX models and safetensors files)"
NEVER_UNPICKLES = "which netinit does not read: it never unpickles"


def describe_foreign(path: Path, head: bytes) -> str | None:
    """One line naming the format of ``path`` and how to convert it, or None if it is none of those
    known here.  ``head`` is the file's first bytes (HEAD_BYTES suffice; ignored for a folder)."""
    if path.is_dir():
        return _describe_folder(path)
    if path.name.endswith((".bin.index.json", ".pt.index.json", ".pth.index.json")):
        return (
            f"{path}: the index of a sharded PyTorch checkpoint, {NOT_READ}; convert the folder with "
            f"transformers: {_folder_command(path.parent)}"
        )
    if path.name == "saved_model.pb":
        return _saved_model(path.parent)
    if head.startswith(ZIP_MAGIC):
        return _describe_zip(path)
    if head.startswith(TORCH_LEGACY_MAGIC):
        return (
            f"{path}: a PyTorch checkpoint in the legacy pickle format, {NEVER_UNPICKLES}; convert it: "
            f"{_torch_command(path)}"
        )
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return (
            f"{path}: a Python pickle, {NEVER_UNPICKLES}; a PyTorch state dict converts with "
            f"{_torch_command(path)}, a scikit-learn model with skl2onnx"
        )
    if head.startswith(HDF5_MAGIC):
        return (
            f"{path}: an HDF5 file (a Keras .h5 model or weights), {NOT_READ}; export a whole model to "
            f"ONNX: {_keras_command(path)}"
        )
    if head.startswith(GGUF_MAGIC):
        return (
            f"{path}: a GGUF file (llama.cpp), {NOT_READ}; start from the checkpoint it was converted "
            f"from, or dequantize it to safetensors with transformers: {_gguf_command(path)}"
        )
    if head[4:8] == TFLITE_IDENTIFIER and int.from_bytes(head[:4], "little") % 4 == 0:
        return (
            f"{path}: a TensorFlow Lite model, {NOT_READ}; convert it to ONNX: "
            f"python -m tf2onnx.convert --tflite {_quote(path)} --output {_quote(path.with_suffix('.onnx'))}"
        )
    if head.startswith(NUMPY_MAGIC):
        return (
            f"{path}: a NumPy .npy array (one array, no tensor name), {NOT_READ}; save it under a "
            f"name: {_numpy_command(path, NPY_SAVE)}"
        )
    if path.suffix == ".pb" and head[:1] == b"\x0a":  # GraphDef's first field: node (1, length-delimited)
        return (
            f"{path}: a TensorFlow frozen graph (GraphDef), {NOT_READ}; convert it to ONNX: "
            f"python -m tf2onnx.convert --graphdef {_quote(path)} --inputs IN:0 --outputs OUT:0 "
            f"--output {_quote(path.with_suffix('.onnx'))}"
        )
    return None


def _describe_zip(path: Path) -> str | None:
    names = _zip_names(path)
    if names is None:
        return None
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and any(name.endswith("/data.pkl") for name in names):
        if any(name.endswith("/constants.pkl") for name in names):
            return (
                f"{path}: a TorchScript module (torch.jit.save zip), {NOT_READ}; save its weights: "
                f"{_torch_command(path, load='torch.jit.load(%s).state_dict()')}, or export it with "
                "torch.onnx.export"
            )
        return (
            f"{path}: a PyTorch checkpoint (torch.save zip of pickles), {NEVER_UNPICKLES}; convert it: "
            f"{_torch_command(path)}, or export the model with torch.onnx.export"
        )
    if {"config.json", "model.weights.h5"} <= set(names):
        return (
            f"{path}: a Keras model (.keras zip: config.json and model.weights.h5), {NOT_READ}; export "
            f"it to ONNX: {_keras_command(path)}"
        )
    if names and all(name.endswith(".npy") for name in names):
        return (
            f"{path}: a NumPy .npz archive, {NOT_READ}; save its arrays as safetensors: "
            f"{_numpy_command(path, NPZ_SAVE)}"
        )
    return None


def _zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive, or None when it is damaged or too large to list."""
    import zipfile  # only for a file that looks like a zip archive

    try:
        directory = _zip_directory(path)
        if directory is None or directory[0] > MAX_ZIP_ENTRIES or directory[1] > MAX_ZIP_DIRECTORY_BYTES:
            return None
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """(members, central directory bytes) from the end-of-central-directory record (or its zip64
    form), read before zipfile parses the directory; None when there is no such record."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_size = min(size, 22 + 0xFFFF)  # the record and the longest comment
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + 22 > len(tail):
            return None
        count = int.from_bytes(tail[at + 10 : at + 12], "little")
        directory_bytes = int.from_bytes(tail[at + 12 : at + 16], "little")
        if count != 0xFFFF and directory_bytes != 0xFFFFFFFF:  # else the zip64 record holds them
            return count, directory_bytes
        # zip64: the locator just before the record gives the offset of the zip64 record.
        if at < 20 or tail[at - 20 : at - 16] != b"PK\x06\x07":
            return None
        handle.seek(int.from_bytes(tail[at - 12 : at - 4], "little"))
        record = handle.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            return None
        return int.from_bytes(record[32:40], "little"), int.from_bytes(record[40:48], "little")


def _describe_folder(path: Path) -> str | None:
    try:
        with os.scandir(path) as entries:
            names = sorted(entry.name for _, entry in zip(range(MAX_FOLDER_ENTRIES), entries, strict=False))
    except OSError:
        return None
    if "saved_model.pb" in names or "saved_model.pbtxt" in names:
        return _saved_model(path)
    if any(name.endswith((".safetensors", ".safetensors.index.json")) for name in names):
        return None  # a bundle: the safetensors reader takes it
    for suffix in WEIGHT_SUFFIXES:
        for name in names:
            if not name.endswith(suffix) or not (path / name).is_file():
                continue
            try:
                with (path / name).open("rb") as handle:
                    head = handle.read(HEAD_BYTES)
            except OSError:
                continue
            inner = describe_foreign(path / name, head)
            if inner is not None:
                return f"{path}: a folder with no .safetensors file; {inner}"
    return None


def _saved_model(folder: Path) -> str:
    return (
        f"{folder}: a TensorFlow SavedModel, {NOT_READ}; convert it to ONNX: "
        f"python -m tf2onnx.convert --saved-model {_quote(folder)} --output "
        f"{_quote(_beside(folder, '.onnx'))}"
    )


# ----------------------------------------------------------------- converter commands


def _beside(folder: Path, suffix: str) -> Path:
    """Where a converter should write what it makes of ``folder``: next to it ("." gives model…)."""
    return folder.with_name(folder.name + suffix) if folder.name else Path("model" + suffix)


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


def _literal(path: Path) -> str:
    """``path`` as a Python string literal in double quotes (JSON's escapes are Python's too)."""
    return json.dumps(str(path))


def _python(code: str) -> str:
    return f"python -c {shlex.quote(code)}"


def _torch_command(path: Path, load: str = "torch.load(%s, weights_only=True)") -> str:
    target = _literal(path.with_suffix(".safetensors"))
    return _python(
        f"import torch; from safetensors.torch import save_file; save_file({load % _literal(path)}, {target})"
    )


def _numpy_command(path: Path, call: str) -> str:
    return _python(
        "import numpy as np; from safetensors.numpy import save_file; "
        + call % (_literal(path), _literal(path.with_suffix(".safetensors")))
    )


def _keras_command(path: Path) -> str:
    return _python(
        f"import keras; keras.saving.load_model({_literal(path)})"
        f'.export({_literal(path.with_suffix(".onnx"))}, format="onnx")'
    )


def _gguf_command(path: Path) -> str:
    out = path.with_name(path.stem + "-safetensors")
    return _python(
        "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained("
        f"{_literal(path.parent)}, gguf_file={_literal(Path(path.name))}).save_pretrained({_literal(out)})"
    )


def _folder_command(folder: Path) -> str:
    out = _beside(folder, "-safetensors")
    return _python(
        "from transformers import AutoModel; "
        f"AutoModel.from_pretrained({_literal(folder)}).save_pretrained({_literal(out)})"
    )
