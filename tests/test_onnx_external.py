"""Hostile and malformed external-data references are refused with one clear line, before any
output exists; benign ones (including names that merely contain '..') are read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import external_gemm, float_model, save

from netinit_cli.errors import InputError, UnsafeInputError
from netinit_cli.formats.onnx.reader import open_onnx

WEIGHT = np.arange(12, dtype=np.float32).reshape(3, 4)


def model_with_external(folder: Path, location: str, **where: Any) -> Path:
    """x[N,4] @ W^T via Gemm, with W (``WEIGHT``'s shape) stored externally at ``location``
    (``offset``, ``length``, ``extra`` as :func:`onnx_builders.external_gemm` takes them)."""
    return save(external_gemm(location, dims=WEIGHT.shape, **where), folder / "model.onnx")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/model`` holds the model; ``tmp/outside/secret.bin`` holds bytes it must not read."""
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(WEIGHT.tobytes())
    return folder, outside / "secret.bin"


def refuse(path: Path, error: type[InputError], pattern: str) -> None:
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(error, match=pattern) as caught:
        open_onnx(path)
    assert "\n" not in str(caught.value)
    assert "'W'" in str(caught.value)  # names the tensor
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing written


def test_parent_traversal_is_refused(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    refuse(model_with_external(folder, "../outside/secret.bin"), UnsafeInputError, r"contains '\.\.'")


def test_nested_traversal_is_refused(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "sub").mkdir()
    refuse(model_with_external(folder, "sub/../../outside/secret.bin"), UnsafeInputError, r"'\.\.'")


def test_absolute_location_is_refused(layout: tuple[Path, Path]) -> None:
    folder, secret = layout
    refuse(model_with_external(folder, str(secret)), UnsafeInputError, "is absolute")


def test_symlink_out_of_the_folder_is_refused(layout: tuple[Path, Path]) -> None:
    folder, secret = layout
    os.symlink(secret, folder / "weights.bin")
    refuse(model_with_external(folder, "weights.bin"), UnsafeInputError, "symbolic link")


def test_symlinked_parent_folder_is_refused(layout: tuple[Path, Path]) -> None:
    folder, secret = layout
    os.symlink(secret.parent, folder / "data")
    refuse(model_with_external(folder, "data/secret.bin"), UnsafeInputError, "symbolic link")


def test_hard_link_is_refused(layout: tuple[Path, Path]) -> None:
    folder, secret = layout
    os.link(secret, folder / "weights.bin")
    refuse(model_with_external(folder, "weights.bin"), UnsafeInputError, "hard links")


def test_offset_past_the_end_is_refused(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "weights.bin").write_bytes(WEIGHT.tobytes())
    refuse(model_with_external(folder, "weights.bin", offset=8), InputError, "past the end")


def test_length_that_does_not_match_the_shape_is_refused(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "weights.bin").write_bytes(WEIGHT.tobytes() * 2)
    refuse(model_with_external(folder, "weights.bin", length=96), InputError, "does not match")


@pytest.mark.parametrize("offset", ["-4", "1e3", "0x10", ""])
def test_non_decimal_offset_is_refused(layout: tuple[Path, Path], offset: str) -> None:
    folder, _ = layout
    (folder / "weights.bin").write_bytes(WEIGHT.tobytes())
    path = model_with_external(folder, "weights.bin", extra={"offset": offset})
    refuse(path, InputError, "not a non-negative decimal")


def test_unknown_external_data_key_is_refused(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "weights.bin").write_bytes(WEIGHT.tobytes())
    refuse(model_with_external(folder, "weights.bin", extra={"mode": "w"}), UnsafeInputError, "'mode'")


def test_folder_as_data_file_is_refused(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "weights.bin").mkdir()
    refuse(model_with_external(folder, "weights.bin"), UnsafeInputError, "not a regular file")


def test_benign_names_are_read(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    (folder / "sub").mkdir()
    (folder / "sub" / "weights..bin").write_bytes(b"\0" * 64 + WEIGHT.tobytes())
    model = open_onnx(model_with_external(folder, "./sub/weights..bin", offset=64))
    np.testing.assert_array_equal(model.read_array("W"), WEIGHT)


def test_external_constant_attribute_is_validated(layout: tuple[Path, Path]) -> None:
    folder, _ = layout
    tensor = numpy_helper.from_array(WEIGHT, "c")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../outside/secret.bin"
    nodes = [
        helper.make_node("Constant", [], ["W"], value=tensor),
        helper.make_node("Gemm", ["x", "W"], ["y"], transB=1),
    ]
    path = save(float_model(nodes, {"x": ["N", 4]}, {"y": ["N", 3]}, opset=None), folder / "model.onnx")
    with pytest.raises(UnsafeInputError, match=r"'\.\.'"):
        open_onnx(path)
