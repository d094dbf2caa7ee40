"""The whole path on the bundled fixtures, every method, both formats."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnx_builders import float_model, save
from safetensors.numpy import load_file

from netinit_cli import OutputExistsError, initialize
from netinit_cli.model import Action, Role

METHODS = ["kaiming", "xavier", "orthogonal", "random", "identity"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_onnx(path: Path, feed_shape: tuple[int, ...]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["input"], "only the data input may need feeding"
    x = np.random.default_rng(0).standard_normal(feed_shape).astype(np.float32)
    return session.run(None, {"input": x})


def initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_cnn_runs_in_onnxruntime(work: Path, method: str) -> None:
    source = work / "cnn.onnx"
    out = work / f"out-{method}.onnx"
    before = sha256(source)
    report = initialize(source, out, method=method, all=True)
    assert sha256(source) == before, "the input file must never change"
    onnx.checker.check_model(str(out), full_check=True)
    expected = run_onnx(source, (2, 3, 16, 16))
    got = run_onnx(out, (2, 3, 16, 16))
    assert [a.shape for a in got] == [a.shape for a in expected]
    assert all(np.isfinite(a).all() for a in got)
    filled = {e.param.name for e in report.entries if e.action is Action.FILL}
    assert {"conv1.weight", "conv2.weight", "fc.weight", "bn1.running_var"} <= filled
    new = initializers(out)
    old = initializers(source)
    assert not np.array_equal(new["conv1.weight"], old["conv1.weight"])


@pytest.mark.parametrize("method", METHODS)
def test_fixed_roles_whatever_the_method(work: Path, method: str) -> None:
    out = work / "out.onnx"
    initialize(work / "cnn.onnx", out, method=method, all=True)
    values = initializers(out)
    for bias in ("conv1.bias", "fc.bias", "bn1.bias", "bn2.bias", "bn1.running_mean", "bn2.running_mean"):
        assert np.all(values[bias] == 0), f"{bias} must be zero after {method}"
    for one in ("bn1.weight", "bn2.weight", "bn1.running_var", "bn2.running_var"):
        assert np.all(values[one] == 1), f"{one} must be one after {method}"


def test_noparams_model_runs_with_only_its_data_input(work: Path) -> None:
    source = work / "cnn_noparams.onnx"
    report = initialize(source)  # default: missing-only, kaiming, seed 1234
    out = work / "cnn_noparams.init.onnx"
    assert report.output == out and out.exists()
    assert report.counts["filled"] == 13
    onnx.checker.check_model(str(out), full_check=True)
    (y,) = run_onnx(out, (2, 3, 16, 16))
    assert y.shape == (2, 10) and np.isfinite(y).all()


def test_missing_only_keeps_initialized_tensors(work: Path) -> None:
    source = work / "cnn.onnx"
    report = initialize(source, work / "out.onnx")
    assert report.counts["filled"] == 0
    assert initializers(work / "out.onnx").keys() == initializers(source).keys()
    for name, array in initializers(source).items():
        assert np.array_equal(initializers(work / "out.onnx")[name], array)


def test_default_seed_is_reproducible_byte_for_byte(work: Path) -> None:
    initialize(work / "cnn.onnx", work / "a.onnx", all=True)
    initialize(work / "cnn.onnx", work / "b.onnx", all=True)
    initialize(work / "cnn.onnx", work / "c.onnx", all=True, seed=99)
    assert sha256(work / "a.onnx") == sha256(work / "b.onnx")
    assert sha256(work / "a.onnx") != sha256(work / "c.onnx")


def test_existing_output_needs_force(work: Path) -> None:
    out = work / "out.onnx"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        initialize(work / "cnn.onnx", out, all=True)
    assert out.read_bytes() == b"precious"
    initialize(work / "cnn.onnx", out, all=True, force=True)
    onnx.checker.check_model(str(out))


def test_integer_and_shape_tensors_never_change(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 6), np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 3, 2], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["output"]),
    ]
    model = float_model(nodes, {"input": [2, 4]}, {"output": [2, 3, 2]}, [weight, shape])
    source = save(model, tmp_path / "reshape.onnx")
    report = initialize(source, tmp_path / "out.onnx", all=True)
    actions = {e.param.name: e.action for e in report.entries}
    assert actions == {"W": Action.FILL, "shape": Action.CONSTANT}
    out = onnx.load(str(tmp_path / "out.onnx"))
    stored = {t.name: t for t in out.graph.initializer}
    original = {t.name: t for t in model.graph.initializer}
    assert stored["shape"].SerializeToString() == original["shape"].SerializeToString()
    assert not np.array_equal(numpy_helper.to_array(stored["W"]), np.ones((4, 6), np.float32))
    (y,) = run_onnx(tmp_path / "out.onnx", (2, 4))
    assert y.shape == (2, 3, 2)


@pytest.mark.parametrize("method", METHODS)
def test_safetensors_every_method(work: Path, method: str) -> None:
    source = work / "cnn.safetensors"
    before = sha256(source)
    out = work / "out.safetensors"
    report = initialize(source, out, method=method, all=True)
    assert sha256(source) == before
    old, new = load_file(source), load_file(out)
    assert old.keys() == new.keys()
    roles = {e.param.name: e.param.role for e in report.entries}
    assert roles["conv1.weight"] is Role.WEIGHT
    assert roles["bn1.running_var"] is Role.RUNNING_VAR
    assert np.array_equal(new["bn1.num_batches_tracked"], old["bn1.num_batches_tracked"])
    assert (
        np.all(new["conv1.bias"] == 0)
        and np.all(new["bn1.weight"] == 1)
        and np.all(new["bn1.running_var"] == 1)
    )
    assert not np.array_equal(new["fc.weight"], old["fc.weight"])
    assert new["conv2.weight"].dtype == np.float32 and new["conv2.weight"].shape == (8, 4, 3, 3)


def test_safetensors_missing_only_is_a_copy(work: Path) -> None:
    source = work / "mlp.safetensors"
    report = initialize(source, work / "out.safetensors")
    assert report.counts["filled"] == 0
    old, new = load_file(source), load_file(work / "out.safetensors")
    assert all(np.array_equal(old[k], new[k]) for k in old)


def test_format_recognized_by_content_not_suffix(work: Path) -> None:
    disguised = work / "weights.bin"
    shutil.copy(work / "mlp.safetensors", disguised)
    report = initialize(disguised, work / "out.safetensors", all=True)
    assert report.kind == "safetensors"
    odd = work / "graph.model"
    shutil.copy(work / "mlp.onnx", odd)
    assert initialize(odd, work / "out.onnx", all=True).kind == "onnx"


def test_missing_only_and_all_agree_on_the_tensors_both_fill(work: Path) -> None:
    initialize(work / "cnn_noparams.onnx", work / "missing.onnx", method="xavier", seed="run-7")
    initialize(work / "cnn.onnx", work / "all.onnx", method="xavier", seed="run-7", all=True)
    missing, full = initializers(work / "missing.onnx"), initializers(work / "all.onnx")
    assert missing.keys() == full.keys()
    for name in full:
        assert missing[name].tobytes() == full[name].tobytes(), name


def test_provenance_is_recorded_in_both_formats(work: Path) -> None:
    initialize(work / "mlp.onnx", work / "o.onnx", method="orthogonal", seed="abc", all=True)
    props = {p.key: p.value for p in onnx.load(str(work / "o.onnx")).metadata_props}
    assert props["netinit.seed"] == "abc"
    assert props["netinit.method"] == "orthogonal(gain=1)"
    assert props["netinit.scope"] == "all" and props["netinit.version"]
    initialize(work / "mlp.safetensors", work / "o.safetensors", seed=5, all=True)
    from safetensors import safe_open

    with safe_open(str(work / "o.safetensors"), "np") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt", "the original metadata is kept"
    assert metadata["netinit.seed"] == "5" and metadata["netinit.method"].startswith("kaiming(")


def test_in_place_replaces_atomically(work: Path) -> None:
    target = work / "mlp.safetensors"
    before = load_file(target)
    report = initialize(target, in_place=True, all=True, seed=3)
    assert report.output == target
    after = load_file(target)
    assert after.keys() == before.keys()
    assert not np.array_equal(after["fc1.weight"], before["fc1.weight"])
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]
