"""Strict header validation: the committed corpus of malformed files, parity with the reference
loader, and the valid edge cases a strict parser must still accept."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPORA
from safetensors import safe_open

from netinit_cli.api import initialize
from netinit_cli.classify.stage import classify
from netinit_cli.errors import InputError
from netinit_cli.formats.safetensors import header as safetensors_header
from netinit_cli.formats.safetensors.bundle import open_safetensors
from netinit_cli.formats.safetensors.header import read_header

CORPUS = CORPORA / "safetensors"
EXPECTED: dict[str, dict[str, object]] = json.loads((CORPUS / "expected.json").read_text())


def _expected_error(path: Path) -> str:
    """The corpus text, with ``{json_error}`` replaced by this Python's json message for the header."""
    expected = str(EXPECTED[path.name]["error"])
    if "{json_error}" in expected:
        raw = path.read_bytes()
        try:
            json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        except json.JSONDecodeError as exc:
            expected = expected.replace("{json_error}", exc.msg)
    return expected


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_corpus_is_what_the_generator_makes(tmp_path: Path) -> None:
    _generator().write_corpus(tmp_path)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".safetensors", ".json"))
    for name in made:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name


@pytest.mark.parametrize("file_name", sorted(EXPECTED))
def test_malformed_file_gives_its_exact_error(file_name: str) -> None:
    path = CORPUS / file_name
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputError) as raised:
        read_header(path)
    assert str(raised.value) == _expected_error(path)
    assert "\n" not in str(raised.value)
    with pytest.raises(InputError) as again:
        open_safetensors(path)
    assert str(again.value) == _expected_error(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("file_name", sorted(EXPECTED))
def test_reference_loader_agrees_where_expected(file_name: str) -> None:
    path = CORPUS / file_name
    if EXPECTED[file_name]["reference_rejects"]:
        # SafetensorError, or OSError for a file too short to map
        with pytest.raises(Exception), safe_open(str(path), framework="np") as handle:  # noqa: B017
            list(handle.keys())
    else:  # netinit is stricter on purpose (duplicate names are ambiguous)
        with safe_open(str(path), framework="np") as handle:
            assert list(handle.keys())


def test_malformed_input_leaves_no_output(tmp_path: Path) -> None:
    source = tmp_path / "bad.safetensors"
    source.write_bytes((CORPUS / "size_mismatch.safetensors").read_bytes())
    out = tmp_path / "out.safetensors"
    with pytest.raises(InputError, match="needs 120"):
        initialize(source, out, all=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def _file(tmp_path: Path, header: str, data: bytes = b"", name: str = "ok.safetensors") -> Path:
    raw = header.encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_valid_edge_cases_are_accepted(tmp_path: Path) -> None:
    header = (
        '  \n{"__metadata__":null,'
        '"flag":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":{"ignored":[1.5,-2]}},'
        '"w":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},'
        '"empty":{"dtype":"F32","shape":[0,3],"data_offsets":[9,9]},'
        '"scalar":{"dtype":"I64","shape":[],"data_offsets":[9,17]}}   '
    )
    data = b"\x01" + np.array([1.5, -2.0], np.float32).tobytes() + np.array(7, np.int64).tobytes()
    path = _file(tmp_path, header, data)
    with safe_open(str(path), framework="np") as reference:
        assert sorted(reference.keys()) == ["empty", "flag", "scalar", "w"]
    parsed = read_header(path)
    assert parsed.metadata == {}
    assert [(e.name, e.begin, e.end) for e in parsed.tensors] == [
        ("flag", 0, 1),
        ("w", 1, 9),
        ("empty", 9, 9),
        ("scalar", 9, 17),
    ]
    model = open_safetensors(path)
    assert model.read_array("w").tolist() == [1.5, -2.0]  # unaligned (offset 1) still reads
    assert model.read_array("empty").shape == (0, 3)
    assert model.read_array("scalar").shape == () and int(model.read_array("scalar")) == 7


def test_nul_and_empty_names_are_warned_about(tmp_path: Path) -> None:
    header = '{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a\\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    model = open_safetensors(_file(tmp_path, header, b"\x00\x00"))
    assert classify(model).notes == [
        "ok.safetensors: tensor '' has an empty name or a NUL character in its name",
        "ok.safetensors: tensor 'a\\u0000b' has an empty name or a NUL character in its name",
    ]


def test_tensor_count_is_capped_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safetensors_header, "MAX_TENSORS", 3)
    entries = ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(4))
    path = _file(tmp_path, "{" + entries + "}", name="many.safetensors")
    with pytest.raises(InputError) as raised:
        read_header(path)
    assert str(raised.value) == "many.safetensors: header lists more than 3 tensors; refusing to parse it"


def test_missing_file_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_header(tmp_path / "absent.safetensors")
    with pytest.raises(InputError, match=r"holds no \.safetensors file"):
        open_safetensors(tmp_path)
