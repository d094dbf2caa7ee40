"""ONNX reading and writing: fills land where they should, everything else keeps its bytes,
external data is written to a new file, and the output runs in onnxruntime."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import float_model, save

from netinit_cli.classify.stage import classify
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.errors import InputError, OutputError, OutputExistsError
from netinit_cli.fill import lazy_tensors
from netinit_cli.formats.onnx import datafile, writer
from netinit_cli.formats.onnx.reader import open_onnx
from netinit_cli.model import Action, Param, Planned


def fake_produce(calls: list[str]) -> Callable[[Planned], np.ndarray]:
    """Deterministic values (never equal to any stored ones), recording each call."""

    def produce(planned: Planned) -> np.ndarray:
        calls.append(planned.param.name)
        p = planned.param
        values = np.arange(p.numel, dtype=np.float64).reshape(p.shape) * 1e-3 + 0.5
        return np.ascontiguousarray(values.astype(numpy_dtype(p.dtype)))

    return produce


def plan_all(params: list[Param]) -> list[Planned]:
    return [Planned(p, Action.FILL if p.role.learnable else Action.CONSTANT) for p in params]


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def mlp_model(hidden: int = 16, *, params: bool = True) -> onnx.ModelProto:
    """x[N,8] → Gemm(transB=1) → Relu → MatMul([hidden,4]) → Add(bias)."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((hidden, 8)).astype(np.float32), "fc1.weight")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "fc1.bias")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")
    shape = numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["y"]),
    ]
    inits = [w1, b1, w2, b2, shape]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])]
    if not params:
        inputs += [
            helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in (w1, b1, w2, b2)
        ]
        inits = [shape]
    graph = helper.make_graph(
        nodes, "mlp", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits
    )
    graph.doc_string = "graph doc"
    graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", hidden]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"author": "test"})
    return model


def tensor_bytes(path: Path) -> dict[str, bytes]:
    """Every initializer's bytes, with external data loaded (by onnx itself)."""
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


# -- the bundled fixtures ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_noparams", "mlp_noparams"])
def test_fixture_full_fill_runs_in_onnxruntime(tmp_path: Path, name: str) -> None:
    source = FIXTURES / f"{name}.onnx"
    if not source.exists():
        pytest.skip(f"{source} not generated yet")
    model = open_onnx(source)
    calls: list[str] = []
    out = tmp_path / "out.onnx"
    model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce(calls)),
        {"netinit.seed": "1"},
        overwrite=False,
    )
    assert sorted(calls) == sorted(p.name for p in classify(model).params if p.role.learnable)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    shape = [2 if isinstance(d, str) else d for d in session.get_inputs()[0].shape]
    (result,) = session.run(None, {"input": np.ones(shape, np.float32)})
    assert np.isfinite(result).all()


# -- inline writes -----------------------------------------------------------------------------


def test_fill_replaces_only_planned_tensors(tmp_path: Path) -> None:
    source = save(mlp_model(), tmp_path / "m.onnx")
    before = tensor_bytes(source)
    model = open_onnx(source)
    plan = [
        Planned(p, Action.FILL if p.name == "fc1.weight" else Action.KEEP) for p in classify(model).params
    ]
    out = tmp_path / "m.init.onnx"
    result = model.write(
        out, plan, lazy_tensors(plan, fake_produce([])), {"netinit.method": "kaiming"}, overwrite=False
    )
    assert result.paths == [out]
    after = tensor_bytes(out)
    assert after["fc1.weight"] != before["fc1.weight"]
    expected = fake_produce([])(Planned(classify(model).params[0], Action.FILL))
    assert after["fc1.weight"] == expected.tobytes()
    for name in ("fc1.bias", "w2", "b2", "shape"):
        assert after[name] == before[name], name


def test_write_preserves_graph_metadata_and_adds_provenance(tmp_path: Path) -> None:
    source = save(mlp_model(), tmp_path / "m.onnx")
    model = open_onnx(source)
    out = tmp_path / "o.onnx"
    model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {"netinit.seed": "7"},
        overwrite=False,
    )
    original, written = onnx.load(str(source)), onnx.load(str(out))
    assert written.opset_import == original.opset_import
    assert written.ir_version == original.ir_version
    assert written.graph.doc_string == "graph doc"
    assert list(written.graph.value_info) == list(original.graph.value_info)
    assert [n.SerializeToString() for n in written.graph.node] == [
        n.SerializeToString() for n in original.graph.node
    ]
    props = {p.key: p.value for p in written.metadata_props}
    assert props == {"author": "test", "netinit.seed": "7"}


def test_input_file_is_not_modified(tmp_path: Path) -> None:
    source = save(mlp_model(), tmp_path / "m.onnx")
    original = source.read_bytes()
    model = open_onnx(source)
    model.write(
        tmp_path / "o.onnx",
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {},
        overwrite=False,
    )
    assert source.read_bytes() == original


def test_existing_output_is_refused_without_overwrite(tmp_path: Path) -> None:
    source = save(mlp_model(), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    out.write_bytes(b"keep me")
    model = open_onnx(source)
    with pytest.raises(OutputExistsError):
        model.write(
            out,
            plan_all(classify(model).params),
            lazy_tensors(plan_all(classify(model).params), fake_produce([])),
            {},
            overwrite=False,
        )
    assert out.read_bytes() == b"keep me"
    # Writing onto the model file itself is --in-place (the API allows it only with that flag):
    # the replacement is complete and valid.
    model.write(
        source,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {},
        overwrite=True,
    )
    onnx.checker.check_model(str(source), full_check=True)


def test_produce_is_called_once_per_filled_tensor_and_write_can_repeat(tmp_path: Path) -> None:
    source = save(mlp_model(), tmp_path / "m.onnx")
    model = open_onnx(source)
    for attempt in range(2):
        calls: list[str] = []
        model.write(
            tmp_path / f"o{attempt}.onnx",
            plan_all(classify(model).params),
            lazy_tensors(plan_all(classify(model).params), fake_produce(calls)),
            {},
            overwrite=False,
        )
        assert sorted(calls) == ["b2", "fc1.bias", "fc1.weight", "w2"]
    assert (tmp_path / "o0.onnx").read_bytes() == (tmp_path / "o1.onnx").read_bytes()
    assert model.read_array("w2").shape == (16, 4)  # the in-memory model was restored


def test_graph_inputs_become_initializers(tmp_path: Path) -> None:
    source = save(mlp_model(params=False), tmp_path / "m.onnx")
    model = open_onnx(source)
    missing = {p.name for p in classify(model).params if not p.has_data}
    assert missing == {"fc1.weight", "fc1.bias", "w2", "b2"}
    assert all(p.source == "graph_input" for p in classify(model).params if p.name in missing)
    out = tmp_path / "o.onnx"
    model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {},
        overwrite=False,
    )
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["x"]
    (y,) = run(out, {"x": np.ones((3, 8), np.float32)})
    assert y.shape == (3, 4) and np.isfinite(y).all()


def test_graph_input_without_static_shape_in_a_parameter_slot_is_an_input_error(tmp_path: Path) -> None:
    model = mlp_model(params=False)
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "H"
    with pytest.raises(InputError, match=r"fc1\.weight"):
        classify(open_onnx(save(model, tmp_path / "m.onnx")))


def test_empty_initializer_has_no_data_and_is_filled(tmp_path: Path) -> None:
    model = mlp_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    opened = open_onnx(save(model, tmp_path / "m.onnx"))
    params = {p.name: p for p in classify(opened).params}
    assert not params["fc1.weight"].has_data and params["fc1.bias"].has_data
    with pytest.raises(InputError, match="no data"):
        opened.read_array("fc1.weight")


def test_read_array_gives_stored_values(tmp_path: Path) -> None:
    model = mlp_model()
    opened = open_onnx(save(model, tmp_path / "m.onnx"))
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(opened.read_array(tensor.name), numpy_helper.to_array(tensor))


def test_not_an_onnx_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07\x12garbage\xff\xff\xff")
    with pytest.raises(InputError, match="not a valid ONNX model"):
        classify(open_onnx(path))


def test_default_output_is_beside_the_input() -> None:
    model = open_onnx(FIXTURES / "mlp.onnx") if (FIXTURES / "mlp.onnx").exists() else None
    if model is None:
        pytest.skip("fixtures not generated")
    assert model.default_output() == FIXTURES / "mlp.init.onnx"


# -- external data -----------------------------------------------------------------------------


def test_large_tensors_go_to_a_new_aligned_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    source = save(mlp_model(hidden=32), tmp_path / "m.onnx")
    before = tensor_bytes(source)
    model = open_onnx(source)
    plan = [
        Planned(p, Action.FILL if p.name == "fc1.weight" else Action.KEEP) for p in classify(model).params
    ]
    out = tmp_path / "m.init.onnx"
    result = model.write(out, plan, lazy_tensors(plan, fake_produce([])), {}, overwrite=False)
    (data,) = data_files(tmp_path, "m.init")
    assert result.paths == [out, data]
    written = onnx.load(str(out), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in written.graph.initializer}
    # fc1.weight (32×8×4 = 1024 B) and w2 (512 B) are external; fc1.bias (128 B) stays inline.
    assert set(k for k, v in external.items() if v) == {"fc1.weight", "w2"}
    for info in (external["fc1.weight"], external["w2"]):
        assert info["location"] == data.name and int(info["offset"]) % datafile.ALIGNMENT == 0
    after = tensor_bytes(out)
    assert after["w2"] == before["w2"] and after["fc1.bias"] == before["fc1.bias"]
    assert after["fc1.weight"] != before["fc1.weight"]
    (y,) = run(out, {"x": np.ones((2, 8), np.float32)})
    assert np.isfinite(y).all()


def test_external_input_is_copied_not_referenced(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    source = save(mlp_model(), folder / "m.onnx", external=True)
    before = tensor_bytes(source)
    model = open_onnx(source)
    plan = [Planned(p, Action.FILL if p.name == "b2" else Action.KEEP) for p in classify(model).params]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.onnx"
    model.write(out, plan, lazy_tensors(plan, fake_produce([])), {}, overwrite=False)
    written = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {p.name for p in data_files(out_dir, "o")} and len(locations) == 1
    after = tensor_bytes(out)
    assert {k: v for k, v in after.items() if k != "b2"} == {k: v for k, v in before.items() if k != "b2"}
    assert after["b2"] != before["b2"]
    assert model.read_array("w2").tobytes() == before["w2"]


def data_files(folder: Path, stem: str) -> list[Path]:
    """The data files netinit named for the output ``<stem>.onnx`` in ``folder``."""
    pattern = re.compile(re.escape(stem) + r"\.[0-9a-f]{16}\.data")
    return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))


def point_external(tensor: TensorProto, location: str, offset: int = 0, length: int | None = None) -> None:
    """Make ``tensor`` refer to external data (its bytes are dropped)."""
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(size if length is None else length)}
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def test_missing_external_file_means_no_data(tmp_path: Path) -> None:
    model = mlp_model()
    point_external(model.graph.initializer[2], "gone.bin")  # w2
    model = open_onnx(save(model, tmp_path / "m.onnx"))
    assert {p.name for p in classify(model).params if not p.has_data} == {"w2"}
    assert any("gone.bin" in note for note in classify(model).notes)
    out = tmp_path / "o.onnx"
    model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {},
        overwrite=False,
    )
    (y,) = run(out, {"x": np.ones((2, 8), np.float32)})
    assert np.isfinite(y).all()


def test_missing_external_data_of_a_constant_cannot_be_written(tmp_path: Path) -> None:
    source = save(mlp_model(), tmp_path / "m.onnx", external=True)
    (tmp_path / "m.onnx.bin").unlink()
    model = open_onnx(source)
    assert {p.name for p in classify(model).params if not p.has_data} == {
        "fc1.weight",
        "fc1.bias",
        "w2",
        "b2",
        "shape",
    }
    with pytest.raises(OutputError, match="'shape' has no data"):
        model.write(
            tmp_path / "o.onnx",
            plan_all(classify(model).params),
            lazy_tensors(plan_all(classify(model).params), fake_produce([])),
            {},
            overwrite=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_existing_data_file_is_never_written_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file under the data file's name is left alone: the data goes to the first free variant."""
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    source = save(mlp_model(hidden=32), tmp_path / "m.onnx")
    model = open_onnx(source)
    plan = plan_all(classify(model).params)
    name = datafile.data_file_name(tmp_path / "o.onnx", model.digest, plan, {}, 256)
    (tmp_path / name).write_bytes(b"stale" * 1000)
    (tmp_path / "o.data").write_bytes(b"older netinit's name: not ours to touch")
    model.write(tmp_path / "o.onnx", plan, lazy_tensors(plan, fake_produce([])), {}, overwrite=False)
    variant = datafile.data_file_name(tmp_path / "o.onnx", model.digest, plan, {}, 256, 1)
    written = onnx.load(str(tmp_path / "o.onnx"), load_external_data=False)
    assert {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"} == {
        variant
    }
    assert (tmp_path / name).read_bytes() == b"stale" * 1000
    assert (tmp_path / "o.data").read_bytes() == b"older netinit's name: not ours to touch"


# -- other stored-tensor sources are written where they live ------------------------------------


def _gemm_graph(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], **extra: list[object]
) -> onnx.ModelProto:
    return float_model(nodes, {"x": ["N", 8]}, {"y": ["N", 4]}, inits, **extra)


def _fill_all_and_run(model: onnx.ModelProto, tmp_path: Path) -> tuple[onnx.ModelProto, np.ndarray]:
    opened = open_onnx(save(model, tmp_path / "m.onnx"))
    out = tmp_path / "o.onnx"
    opened.write(
        out,
        plan_all(classify(opened).params),
        lazy_tensors(plan_all(classify(opened).params), fake_produce([])),
        {},
        overwrite=False,
    )
    (y,) = run(out, {"x": np.ones((2, 8), np.float32)})
    assert y.shape == (2, 4) and np.isfinite(y).all()
    return onnx.load(str(out)), y


def test_constant_node_weight_is_filled_in_place(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.zeros((4, 8), np.float32), "ignored")
    nodes = [
        helper.make_node("Constant", [], ["W"], value=weight),
        helper.make_node("Constant", [], ["k"], value_float=2.0),
        helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
        helper.make_node("Mul", ["g", "k"], ["y"]),
    ]
    written, y = _fill_all_and_run(_gemm_graph(nodes, []), tmp_path)
    constant = numpy_helper.to_array(written.graph.node[0].attribute[0].t)
    assert constant.any() and not written.graph.initializer  # still a Constant node, now filled
    assert written.graph.node[1].attribute[0].f == 2.0  # a scalar is not a parameter
    np.testing.assert_allclose(y, 2.0 * np.ones((2, 8), np.float32) @ constant.T, rtol=1e-6)


def test_subgraph_initializer_is_filled_in_place(tmp_path: Path) -> None:
    def branch(name: str, value: float) -> onnx.GraphProto:
        weight = numpy_helper.from_array(np.full((4, 8), value, np.float32), "W")
        return helper.make_graph(
            [helper.make_node("Gemm", ["x", "W"], [name], transB=1)],
            name,
            [],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])],
            [weight],
        )

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=branch("t", 0.0), else_branch=branch("e", 0.0), name="If_0"
        ),
    ]
    model = _gemm_graph(nodes, [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    opened = open_onnx(save(model, tmp_path / "in.onnx"))
    assert {p.name for p in classify(opened).params if p.role.learnable} == {
        "If_0/then_branch::W",
        "If_0/else_branch::W",
    }
    written, y = _fill_all_and_run(model, tmp_path)
    assert y.any()  # was all zeros
    then_weight = numpy_helper.to_array(written.graph.node[2].attribute[0].g.initializer[0])
    np.testing.assert_allclose(y, np.ones((2, 8), np.float32) @ then_weight.T, rtol=1e-6)


def test_sparse_initializer_becomes_a_dense_initializer(tmp_path: Path) -> None:
    values = numpy_helper.from_array(np.ones(2, np.float32), "W")
    indices = numpy_helper.from_array(np.array([0, 9], np.int64), "W_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4, 8])
    model = _gemm_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [], sparse_initializer=[sparse]
    )
    opened = open_onnx(save(model, tmp_path / "in.onnx"))
    dense = opened.read_array("W")
    assert dense.shape == (4, 8) and dense.reshape(-1)[[0, 9]].tolist() == [1.0, 1.0] and dense.sum() == 2
    written, _ = _fill_all_and_run(model, tmp_path)
    assert not written.graph.sparse_initializer
    assert [t.name for t in written.graph.initializer] == ["W"]


def test_function_constant_is_filled_in_the_function_body(tmp_path: Path) -> None:
    body = [
        helper.make_node("Constant", [], ["Wf"], value=numpy_helper.from_array(np.zeros((4, 8), np.float32))),
        helper.make_node("Gemm", ["inp", "Wf"], ["out"], transB=1),
    ]
    function = helper.make_function("local", "Lin", ["inp"], ["out"], body, [helper.make_opsetid("", 17)])
    model = _gemm_graph([helper.make_node("Lin", ["x"], ["y"], domain="local")], [])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    opened = open_onnx(save(model, tmp_path / "in.onnx"))
    (param,) = [p for p in classify(opened).params if p.role.learnable]
    assert param.name == "local.Lin()::Wf" and param.source == "function_constant"
    written, y = _fill_all_and_run(model, tmp_path)
    assert numpy_helper.to_array(written.functions[0].node[0].attribute[0].t).any() and y.any()


def typed_field_model() -> onnx.ModelProto:
    """The MLP with fc1.bias as float16 kept in int32_data and w2 in float_data (not raw_data)."""
    model = mlp_model(hidden=300)
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    w2 = by_name["w2"]
    values = numpy_helper.to_array(w2).copy()
    w2.ClearField("raw_data")
    w2.float_data.extend(values.reshape(-1).tolist())
    bias = by_name["fc1.bias"]
    half = numpy_helper.to_array(bias).astype(np.float16)
    bias.ClearField("raw_data")
    bias.data_type = TensorProto.FLOAT16
    bias.int32_data.extend(half.view(np.uint16).astype(np.int32).tolist())
    cast = helper.make_node("Cast", ["fc1.bias"], ["b32"], to=TensorProto.FLOAT)
    graph.node.insert(0, cast)
    graph.node[1].input[2] = "b32"
    return model


@pytest.mark.parametrize("small_limit", [False, True])
def test_kept_tensors_keep_exact_proto_bytes_in_typed_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_limit: bool
) -> None:
    if small_limit:  # the rest would not fit in a protobuf: the >2 GiB route, without 2 GiB
        monkeypatch.setattr(writer, "MAX_INLINE_BYTES", 1000)
    out = tmp_path / "out.onnx"
    checked: list[tuple[object, bool]] = []
    real_check = onnx.checker.check_model
    monkeypatch.setattr(
        onnx.checker,
        "check_model",
        lambda m, *a, **k: (checked.append((m, out.exists())), real_check(m, *a, **k)),
    )
    source = save(typed_field_model(), tmp_path / "m.onnx")
    model = open_onnx(source)
    plan = [
        Planned(p, Action.FILL if p.name == "fc1.weight" else Action.KEEP) for p in classify(model).params
    ]
    model.write(out, plan, lazy_tensors(plan, fake_produce([])), {}, overwrite=False)
    # The output was checked in memory before it was committed; check it by path as well
    # (external data validated).
    assert isinstance(checked[-1][0], onnx.ModelProto) and checked[-1][1] is False
    onnx.checker.check_model(str(out))
    before = {t.name: t for t in onnx.load(str(source)).graph.initializer}
    after = {t.name: t for t in onnx.load(str(out), load_external_data=False).graph.initializer}
    moved = {n for n, t in after.items() if t.data_location == TensorProto.EXTERNAL}
    # Normally kept tensors are untouched protos; on the >2 GiB route, typed-field tensors of
    # 1 KiB or more move to the data file as their exact little-endian bytes.
    assert moved == ({"fc1.weight", "w2"} if small_limit else set())
    for name in ("w2", "fc1.bias", "b2", "shape"):
        if name in moved:
            continue
        assert after[name].SerializeToString() == before[name].SerializeToString(), name
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name in ("w2", "fc1.bias"):
        expected = numpy_helper.to_array(before[name])
        assert loaded[name].dtype == expected.dtype and loaded[name].tobytes() == expected.tobytes()
    x = np.ones((2, 8), np.float32)
    (result,) = run(out, {"x": x})
    assert result.shape == (2, 4) and np.isfinite(result).all()


def test_invalid_input_graph_is_refused_on_load(tmp_path: Path) -> None:
    model = mlp_model()
    model.graph.node[1].input[0] = "not_defined_anywhere"
    path = save(model, tmp_path / "bad.onnx")
    with pytest.raises(InputError, match=r"bad\.onnx: not a valid ONNX model \(.*not_defined_anywhere"):
        classify(open_onnx(path))


def test_raw_data_longer_than_the_shape_is_refused_on_load(tmp_path: Path) -> None:
    model = mlp_model()
    model.graph.initializer[3].raw_data += b"\0" * 8  # b2 [4] float: 16 bytes, now 24
    path = save(model, tmp_path / "long.onnx")
    with pytest.raises(
        InputError, match=r"tensor 'b2' holds 24 bytes of raw data but its shape \[4\] needs 16"
    ):
        classify(open_onnx(path))


def test_tensors_to_fill_and_external_tensors_pass_the_input_check(tmp_path: Path) -> None:
    model = mlp_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")  # no data: netinit fills it
    path = save(model, tmp_path / "m.onnx", external=True)
    opened = open_onnx(path)
    params = {p.name: p for p in classify(opened).params}
    assert not params["fc1.weight"].has_data and params["w2"].has_data
    # The check hides them as empty tensors; afterwards the in-memory graph is as it was.
    kept = {t.name: t for t in opened.proto.graph.initializer}
    assert list(kept["fc1.weight"].dims) == [16, 8] and list(kept["w2"].dims) == [16, 4]
    assert kept["w2"].data_location == TensorProto.EXTERNAL
    assert [e.key for e in kept["w2"].external_data][:1] == ["location"]


def _negative_initializer_without_data(model: onnx.ModelProto) -> None:
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")  # no data, so the checker alone does not notice
    weight.dims[0] = -16


def _negative_initializer_with_data(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].dims[0] = -16


def _absurd_initializer_without_data(model: onnx.ModelProto) -> None:
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.dims[:] = [1 << 40, 1 << 20]


def _negative_declared_type_of_an_initializer(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("fc1.weight", TensorProto.FLOAT, [-16, 8]))


def _negative_parameter_input(model: onnx.ModelProto) -> None:
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value = -3  # fc1.weight, no initializer


@pytest.mark.parametrize(
    ("corrupt", "params", "message"),
    [
        (
            _negative_initializer_without_data,
            True,
            r"m\.onnx: tensor 'fc1\.weight' has a negative dimension in its shape \[-16, 8\]",
        ),
        (
            _negative_initializer_with_data,
            True,
            r"m\.onnx: tensor 'fc1\.weight' has a negative dimension in its shape \[-16, 8\]",
        ),
        (
            _absurd_initializer_without_data,
            True,
            r"tensor 'fc1\.weight' has the shape \[1099511627776, 1048576\]: 1152921504606846976 "
            "elements, more than any file can hold",
        ),
        (
            _negative_declared_type_of_an_initializer,
            True,
            r"graph input 'fc1\.weight' \(an initializer's declared type\) has a negative dimension "
            r"in its shape \[-16, 8\]",
        ),
        (
            _negative_parameter_input,
            False,
            r"graph input 'fc1\.weight' feeds a parameter slot \(Gemm input 1 \(B\)\) but declares a "
            r"negative dimension in its shape \[-3, 8\]",
        ),
    ],
    ids=["initializer-without-data", "initializer-with-data", "absurd", "declared-type", "parameter-input"],
)
def test_impossible_shapes_are_refused_on_load(
    tmp_path: Path, corrupt: object, params: bool, message: str
) -> None:
    """Hostile H1b: onnx.checker accepts a negative dimension in a tensor without data (and in
    any declared type); netinit refuses it on load (exit 3) instead of writing a model that
    fails the checker."""
    model = mlp_model(params=params)
    corrupt(model)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        classify(open_onnx(save(model, tmp_path / "m.onnx")))


def test_a_negative_dimension_of_a_data_input_is_left_alone(tmp_path: Path) -> None:
    """Only parameters are refused: some exporters write -1 for a dynamic batch dimension."""
    model = mlp_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    opened = open_onnx(save(model, tmp_path / "m.onnx"))
    assert {p.name for p in classify(opened).params} >= {"fc1.weight", "w2"}


@pytest.mark.parametrize("external", [False, True])
def test_a_failing_output_check_leaves_the_previous_output_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool
) -> None:
    """Hostile H2: the output is checked before anything is committed.  The input passed the
    same check on load, so only a netinit bug makes this one fail: simulate one (the model is
    already open, so every check from here on is a check of the output)."""
    if external:
        monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    model = open_onnx(save(mlp_model(hidden=32), tmp_path / "m.onnx"))
    out = tmp_path / "o.onnx"
    first = model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {"netinit.seed": "1"},
        overwrite=False,
    )
    assert len(first.paths) == (2 if external else 1)
    previous = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = open_onnx(tmp_path / "m.onnx")

    def output_fails(checked: object, *args: object, **kw: object) -> None:
        raise onnx.checker.ValidationError("simulated netinit bug")  # however it is checked

    monkeypatch.setattr(onnx.checker, "check_model", output_fails)
    with pytest.raises(
        OutputError, match=r"o\.onnx: the model netinit built failed onnx\.checker \(simulated"
    ):
        model.write(
            out,
            plan_all(classify(model).params),
            lazy_tensors(plan_all(classify(model).params), fake_produce([])),
            {"netinit.seed": "2"},
            overwrite=True,
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == previous  # no temp files either


def test_the_input_check_restores_every_hidden_tensor_exactly(tmp_path: Path) -> None:
    """The load check shows external tensors and tensors without data to onnx.checker as empty;
    afterwards the in-memory proto serializes to the very bytes of the file."""
    model = mlp_model()
    model.graph.initializer[0].ClearField("raw_data")
    path = save(model, tmp_path / "m.onnx", external=True)
    opened = open_onnx(path)
    assert opened.proto.SerializeToString() == path.read_bytes()


# -- each write's data file has a name of its own (hostile H2b) --------------------------------

NETINIT_WITH_SMALL_THRESHOLD = """
import os, sys
from netinit_cli.formats.onnx import writer
writer.EXTERNAL_TENSOR_BYTES = 256  # a data file for a small model
if sys.argv[1] == "crash":
    # killed right after the first rename of the set (the data file), before the model's
    os.environ["NETINIT_KILL_AT_STEP"] = "2"
sys.argv = ["netinit", *sys.argv[2:]]
from netinit_cli.cli import main
main()
"""


def netinit(mode: str, *args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", NETINIT_WITH_SMALL_THRESHOLD, mode, *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode


def contents(folder: Path) -> dict[str, bytes]:
    """Every file but netinit's hidden ones (temporary files, the commit journal)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_a_crash_between_the_two_renames_leaves_the_previous_output_whole(tmp_path: Path) -> None:
    source = save(mlp_model(hidden=32), tmp_path / "m.onnx")
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "o.onnx"
    assert netinit("run", str(source), "--all", "--seed", "2", "-o", str(out)) == 0
    (old_data,) = data_files(folder, "o")
    before, old_values = contents(folder), tensor_bytes(out)

    assert netinit("crash", str(source), "--all", "--seed", "1", "-o", str(out), "--force") == -9
    after = contents(folder)
    assert {name: after[name] for name in before} == before  # the previous model and its data
    onnx.checker.check_model(str(out))
    assert tensor_bytes(out) == old_values
    (orphan,) = set(after) - set(before)  # the new data file, renamed just before the crash
    assert orphan != old_data.name and re.fullmatch(r"o\.[0-9a-f]{16}\.data", orphan)

    assert netinit("run", str(source), "--all", "--seed", "1", "-o", str(out), "--force") == 0
    (tmp_path / "fresh").mkdir()
    assert netinit("run", str(source), "--all", "--seed", "1", "-o", str(tmp_path / "fresh" / "o.onnx")) == 0
    # Complete, identical to an uninterrupted first write, the previous data file removed and
    # the killed writer's temporary files too.
    assert sorted(p.name for p in folder.iterdir()) == sorted(["o.onnx", orphan])
    assert contents(folder) == contents(tmp_path / "fresh")


def test_the_data_file_name_follows_from_input_plan_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    source = save(mlp_model(hidden=32), tmp_path / "m.onnx")
    written: dict[str, dict[str, bytes]] = {}
    for folder, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        (tmp_path / folder).mkdir()
        model = open_onnx(source)
        out = tmp_path / folder / "o.onnx"
        result = model.write(
            out,
            plan_all(classify(model).params),
            lazy_tensors(plan_all(classify(model).params), fake_produce([])),
            {"netinit.seed": seed},
            overwrite=False,
        )
        assert result.paths == [out, *data_files(tmp_path / folder, "o")] and len(result.paths) == 2
        written[folder] = contents(tmp_path / folder)
    assert written["a"] == written["b"]  # byte-identical, data file name included
    assert set(written["a"]) != set(written["c"])  # another seed: another data file


def test_overwriting_removes_only_the_replaced_outputs_own_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    source = save(mlp_model(hidden=32), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"

    def write(seed: int) -> tuple[Path, list[str]]:
        model = open_onnx(source)
        provenance = {"netinit.seed": str(seed)}
        result = model.write(
            out,
            plan_all(classify(model).params),
            lazy_tensors(plan_all(classify(model).params), fake_produce([])),
            provenance,
            overwrite=True,
        )
        return result.paths[1], result.notes

    first, _ = write(1)
    unreferenced = tmp_path / ("o." + "0" * 16 + ".data")  # named like ours, used by nothing
    unreferenced.write_bytes(b"not referenced by o.onnx")
    second, notes = write(2)
    assert not first.exists() and second.exists() and unreferenced.exists()
    assert f"removed {first.name}, the data file of the output this one replaced" in notes

    (tmp_path / "backup.data").hardlink_to(second)  # linked elsewhere: may be in use
    third, notes = write(3)
    assert second.exists() and not any("removed" in note for note in notes)
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.onnx", "o.onnx", "backup.data", second.name, third.name, unreferenced.name]
    )


def test_a_data_file_the_input_uses_is_never_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    out = tmp_path / "o.onnx"
    model = open_onnx(save(mlp_model(hidden=32), tmp_path / "m.onnx"))
    result = model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {"netinit.seed": "1"},
        overwrite=False,
    )
    shared = result.paths[1]
    # The previous output becomes the input (under another name) and is overwritten.
    (tmp_path / "again.onnx").write_bytes(out.read_bytes())
    model = open_onnx(tmp_path / "again.onnx")
    model.write(
        out,
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {"netinit.seed": "2"},
        overwrite=True,
    )
    assert shared.exists()
    onnx.checker.check_model(str(tmp_path / "again.onnx"))


def test_temporary_data_files_of_killed_writers_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill while the data file is written leaves ``.<data name>.netinit-<pid>-….tmp``; the
    data name differs from write to write, so the next write looks for every such name."""
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 256)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, alive = int(finished.stdout), os.getpid()
    left = {
        f".o.{'1' * 16}.data.netinit-{dead}-abc.tmp": False,  # a killed writer's: removed
        f".o.{'2' * 16}.data.netinit-{alive}-abc.tmp": True,  # a running writer's
        f".other.{'1' * 16}.data.netinit-{dead}-abc.tmp": True,  # another output's
        f".o.data.netinit-{dead}-abc.tmp": True,  # not a name netinit gives a data file
    }
    for name in left:
        (tmp_path / name).write_bytes(b"partial")
    model = open_onnx(save(mlp_model(hidden=32), tmp_path / "m.onnx"))
    model.write(
        tmp_path / "o.onnx",
        plan_all(classify(model).params),
        lazy_tensors(plan_all(classify(model).params), fake_produce([])),
        {},
        overwrite=False,
    )
    assert {name: (tmp_path / name).exists() for name in left} == left
