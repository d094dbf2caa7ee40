"""Formats netinit does not read get one line naming them and their converter, and nothing in
them is unpickled: tiny files of each kind, built here, and hostile pickles."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from netinit_cli.formats import foreign
from netinit_cli.formats.foreign import HDF5_MAGIC, HEAD_BYTES, describe_foreign

NOT_READ = "which netinit does not read (it reads ONNX models and safetensors files)"
TORCH_TO_SAFETENSORS = (
    "python -c 'import torch; from safetensors.torch import save_file; "
    'save_file(torch.load("{0}", weights_only=True), "{1}")\''
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths, so the expected lines read as a user would see them."""
    monkeypatch.chdir(tmp_path)


def describe(path: str | Path) -> str | None:
    path = Path(path)
    head = b"" if path.is_dir() else path.read_bytes()[:HEAD_BYTES]
    return describe_foreign(path, head)


class Trap:
    """Unpickling this creates the file ``marker``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (os.mkdir, (str(self.marker), 0o755))


def trap_pickle(marker: Path) -> bytes:
    data = pickle.dumps({"weight": Trap(marker)}, protocol=2)
    assert not marker.exists()
    return data


def test_torch_save_zip() -> None:
    torch = pytest.importorskip("torch")
    torch.save({"fc.weight": torch.zeros(2, 3)}, "pytorch_model.bin")
    assert describe("pytorch_model.bin") == (
        "pytorch_model.bin: a PyTorch checkpoint (torch.save zip of pickles), which netinit does not "
        "read: it never unpickles; convert it: "
        + TORCH_TO_SAFETENSORS.format("pytorch_model.bin", "pytorch_model.safetensors")
        + ", or export the model with torch.onnx.export"
    )


def test_torch_save_legacy_pickle() -> None:
    torch = pytest.importorskip("torch")
    torch.save({"fc.weight": torch.zeros(2, 3)}, "model.pt", _use_new_zipfile_serialization=False)
    assert describe("model.pt") == (
        "model.pt: a PyTorch checkpoint in the legacy pickle format, which netinit does not read: it "
        "never unpickles; convert it: " + TORCH_TO_SAFETENSORS.format("model.pt", "model.safetensors")
    )


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")
def test_torchscript_zip() -> None:
    torch = pytest.importorskip("torch")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), "scripted.pt")
    assert describe("scripted.pt") == (
        f"scripted.pt: a TorchScript module (torch.jit.save zip), {NOT_READ}; save its weights: "
        "python -c 'import torch; from safetensors.torch import save_file; "
        'save_file(torch.jit.load("scripted.pt").state_dict(), "scripted.safetensors")\', '
        "or export it with torch.onnx.export"
    )


def test_a_hostile_pickle_is_named_and_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    Path("model.pkl").write_bytes(trap_pickle(marker))
    assert describe("model.pkl") == (
        "model.pkl: a Python pickle, which netinit does not read: it never unpickles; a PyTorch state "
        "dict converts with "
        + TORCH_TO_SAFETENSORS.format("model.pkl", "model.safetensors")
        + ", a scikit-learn model with skl2onnx"
    )
    assert not marker.exists()
    pickle.loads(Path("model.pkl").read_bytes())  # the trap is real: loading it does create the file
    assert marker.is_dir()


def test_a_hostile_pickle_inside_a_torch_zip_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    with zipfile.ZipFile("model.pth", "w") as archive:
        archive.writestr("archive/data.pkl", trap_pickle(marker))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\0" * 24)
    line = describe("model.pth")
    assert line is not None and line.startswith("model.pth: a PyTorch checkpoint (torch.save zip of pickles)")
    assert not marker.exists()


def test_keras_zip() -> None:
    with zipfile.ZipFile("classifier.keras", "w") as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.8.0"}')
        archive.writestr("config.json", '{"class_name": "Sequential"}')
        archive.writestr("model.weights.h5", HDF5_MAGIC + bytes(504))
    assert describe("classifier.keras") == (
        f"classifier.keras: a Keras model (.keras zip: config.json and model.weights.h5), {NOT_READ}; "
        "export it to ONNX: python -c 'import keras; "
        'keras.saving.load_model("classifier.keras").export("classifier.onnx", format="onnx")\''
    )


def test_hdf5_header() -> None:
    Path("tf_model.h5").write_bytes(HDF5_MAGIC + bytes(504))
    assert describe("tf_model.h5") == (
        f"tf_model.h5: an HDF5 file (a Keras .h5 model or weights), {NOT_READ}; export a whole model "
        "to ONNX: python -c 'import keras; "
        'keras.saving.load_model("tf_model.h5").export("tf_model.onnx", format="onnx")\''
    )


def test_gguf_magic() -> None:
    Path("llama-q4.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    assert describe("llama-q4.gguf") == (
        f"llama-q4.gguf: a GGUF file (llama.cpp), {NOT_READ}; start from the checkpoint it was "
        "converted from, or dequantize it to safetensors with transformers: python -c 'from "
        'transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(".", '
        'gguf_file="llama-q4.gguf").save_pretrained("llama-q4-safetensors")\''
    )


def test_saved_model_folder_and_its_graph_file() -> None:
    os.makedirs("exported/variables")
    Path("exported/saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    Path("exported/variables/variables.index").write_bytes(b"")
    expected = (
        f"exported: a TensorFlow SavedModel, {NOT_READ}; convert it to ONNX: "
        "python -m tf2onnx.convert --saved-model exported --output exported.onnx"
    )
    assert describe("exported") == expected
    assert describe("exported/saved_model.pb") == expected


def test_frozen_graph_pb() -> None:
    Path("frozen.pb").write_bytes(b"\x0a\x05\x0a\x01x\x12\x00")
    assert describe("frozen.pb") == (
        f"frozen.pb: a TensorFlow frozen graph (GraphDef), {NOT_READ}; convert it to ONNX: "
        "python -m tf2onnx.convert --graphdef frozen.pb --inputs IN:0 --outputs OUT:0 --output frozen.onnx"
    )


def test_tflite_identifier() -> None:
    Path("detect.tflite").write_bytes(struct.pack("<I", 28) + b"TFL3" + bytes(24))
    assert describe("detect.tflite") == (
        f"detect.tflite: a TensorFlow Lite model, {NOT_READ}; convert it to ONNX: "
        "python -m tf2onnx.convert --tflite detect.tflite --output detect.onnx"
    )


def test_numpy_npz_and_npy() -> None:
    np.savez("weights.npz", w=np.zeros(3, np.float32))
    np.save("bias.npy", np.zeros(3, np.float32))
    assert describe("weights.npz") == (
        f"weights.npz: a NumPy .npz archive, {NOT_READ}; save its arrays as safetensors: python -c "
        "'import numpy as np; from safetensors.numpy import save_file; "
        'save_file(dict(np.load("weights.npz")), "weights.safetensors")\''
    )
    assert describe("bias.npy") == (
        f"bias.npy: a NumPy .npy array (one array, no tensor name), {NOT_READ}; save it under a name: "
        "python -c 'import numpy as np; from safetensors.numpy import save_file; "
        'save_file({"weight": np.load("bias.npy")}, "bias.safetensors")\''
    )


def test_a_folder_of_pytorch_weights_without_safetensors() -> None:
    torch = pytest.importorskip("torch")
    os.mkdir("bert")
    Path("bert/config.json").write_text("{}")
    torch.save({"fc.weight": torch.zeros(2, 3)}, "bert/pytorch_model.bin")
    line = describe("bert")
    assert line is not None and line.startswith(
        "bert: a folder with no .safetensors file; bert/pytorch_model.bin: a PyTorch checkpoint"
    )
    Path("bert/model.safetensors").write_bytes(b"")
    assert describe("bert") is None  # a bundle: the safetensors reader's to judge


def test_the_index_of_a_sharded_pytorch_checkpoint() -> None:
    os.mkdir("llama")
    Path("llama/pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    assert describe("llama/pytorch_model.bin.index.json") == (
        f"llama/pytorch_model.bin.index.json: the index of a sharded PyTorch checkpoint, {NOT_READ}; "
        "convert the folder with transformers: python -c 'from transformers import AutoModel; "
        'AutoModel.from_pretrained("llama").save_pretrained("llama-safetensors")\''
    )


@pytest.mark.parametrize(
    "path", [FIXTURES / "cnn.onnx", FIXTURES / "mlp.onnx", FIXTURES / "cnn.safetensors", FIXTURES]
)
def test_what_netinit_reads_is_not_foreign(path: Path) -> None:
    assert describe(path) is None


def test_unknown_damaged_and_oversized_zips_are_not_looked_into(monkeypatch: pytest.MonkeyPatch) -> None:
    with zipfile.ZipFile("notes.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert describe("notes.zip") is None
    Path("cut.pt").write_bytes(Path("notes.zip").read_bytes()[:40])
    assert describe("cut.pt") is None
    # Over MAX_ZIP_ENTRIES members (a zip64 directory): the count is read from the end records and
    # the archive refused before zipfile lists it.
    with zipfile.ZipFile("many.npz", "w") as archive:
        for k in range(foreign.MAX_ZIP_ENTRIES + 1):
            archive.writestr(f"a{k}.npy", b"")
    assert describe("many.npz") is None
    monkeypatch.setattr(foreign, "MAX_ZIP_ENTRIES", foreign.MAX_ZIP_ENTRIES + 1)
    line = describe("many.npz")
    assert line is not None and line.startswith("many.npz: a NumPy .npz archive")
    # A central directory over its byte limit is refused too (zipfile would read it all).
    monkeypatch.setattr(foreign, "MAX_ZIP_DIRECTORY_BYTES", 1_000_000)  # its directory: about 3.7 MB
    assert describe("many.npz") is None


def test_an_onnx_tensor_file_named_pb_is_not_a_graphdef() -> None:
    Path("input_0.pb").write_bytes(b"\x08\x01\x08\x03\x10\x01")  # ONNX TensorProto: dims, data_type
    assert describe("input_0.pb") is None


@pytest.mark.parametrize("name", ["pytorch_model.bin", "saved_model.pb"])
def test_the_command_names_the_format_in_one_line_and_exits_3(name: str) -> None:
    from click.testing import CliRunner

    from netinit_cli.cli import cli

    if name.endswith(".bin"):
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.zeros(2)}, name)
    else:
        Path(name).write_bytes(b"\x08\x01\x12\x04" + bytes(60))
        Path("variables").mkdir()
    before = Path(name).read_bytes()
    result = CliRunner().invoke(cli, [name])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    # A SavedModel's graph file names its folder: the SavedModel is the folder.
    named = f"{name}: a PyTorch checkpoint" if name.endswith(".bin") else ".: a TensorFlow SavedModel"
    assert len(lines) == 1 and lines[0].startswith(f"netinit: error: {named}")
    assert Path(name).read_bytes() == before
    assert sorted(p.name for p in Path().iterdir()) == sorted(
        [name, *(["variables"] if name.endswith(".pb") else [])]
    )
