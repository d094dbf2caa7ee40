"""scikit-learn models exported by skl2onnx (fixtures/onnx/skl-*.onnx, made by
fixtures/generate_skl2onnx.py; skl2onnx is not needed here).

An MLP is ``MatMul(x, coefficient [in, out]) → Add(·, intercepts [1, out])``: the coefficient
is a MatMul:1 weight with fan_in = shape[0], the intercept a bias even when it is ``[1, 1]``,
and the INT32 ``classes`` table a constant.  Tree and linear models keep their parameters in
ai.onnx.ml attributes: nothing to re-initialize, a note that says so, and the output is the same
graph (only netinit's provenance metadata is added)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ZOO
from onnx import numpy_helper

from netinit_cli.classify.stage import classify
from netinit_cli.fill import lazy_tensors
from netinit_cli.formats.onnx.reader import open_onnx
from netinit_cli.model import Action, Planned

CASES: dict[str, dict[str, Any]] = json.loads((ZOO / "skl.json").read_text())
MLPS = sorted(name for name, case in CASES.items() if case["tensors"])
NO_PARAMETERS = sorted(name for name, case in CASES.items() if not case["tensors"])


def produce(planned: Planned) -> np.ndarray:
    p = planned.param
    return np.linspace(-0.5, 0.5, p.numel, dtype=np.float32).reshape(p.shape)


def full_plan(path: Path) -> tuple[Any, list[Planned]]:
    model = open_onnx(path)
    return model, [
        Planned(p, Action.FILL if p.role.learnable else Action.CONSTANT) for p in classify(model).params
    ]


def run(path: Path, sample: np.ndarray, output: int) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: sample})[output]
    return result


def test_fixtures_cover_an_mlp_and_a_tree() -> None:
    assert {"skl-mlp.onnx", "skl-tree.onnx"} <= set(CASES)
    assert MLPS and NO_PARAMETERS


@pytest.mark.parametrize("file_name", MLPS)
def test_mlp_roles_and_fans(file_name: str) -> None:
    params = {p.name: p for p in classify(open_onnx(ZOO / file_name)).params}
    assert set(params) == set(CASES[file_name]["tensors"])
    for name, expected in CASES[file_name]["tensors"].items():
        param = params[name]
        assert param.role.value == expected["role"], (name, param.reason)
        assert list(param.shape) == expected["shape"]
        if expected["role"] == "weight":
            assert param.layout is not None
            assert param.reason.startswith("MatMul input 1")
            assert (
                list(param.layout.fans(param.shape)) == expected["fans"] == [param.shape[0], param.shape[1]]
            )
            assert list(param.layout.torch_fans(param.shape)) == expected["torch_fans"]
        if expected["role"] == "bias":
            assert param.shape[0] == 1 and param.reason == "Add input 1 after MatMul"


def test_mlp_classes_table_is_an_int32_constant() -> None:
    param = next(p for p in classify(open_onnx(ZOO / "skl-mlp.onnx")).params if p.name == "classes")
    assert (param.dtype, param.role.value) == ("I32", "constant")


def test_one_output_regressor_intercept_is_a_bias_not_a_scalar() -> None:
    params = {p.name: p for p in classify(open_onnx(ZOO / "skl-mlp-regressor.onnx")).params}
    last = next(n for n, e in CASES["skl-mlp-regressor.onnx"]["tensors"].items() if e["shape"] == [1, 1])
    assert params[last].role.value == "bias"


@pytest.mark.parametrize("file_name", MLPS)
def test_mlp_full_reinit_keeps_constants_and_runs(file_name: str, tmp_path: Path) -> None:
    case = CASES[file_name]
    sample = np.array(case["sample"], np.float32)
    # The fixture itself reproduces scikit-learn's predictions.
    original = run(ZOO / file_name, sample, case["prediction_output"])
    np.testing.assert_allclose(
        original.reshape(-1), np.array(case["prediction"]).reshape(-1), rtol=1e-4, atol=1e-5
    )
    model, plan = full_plan(ZOO / file_name)
    out = tmp_path / "out.onnx"
    model.write(out, plan, lazy_tensors(plan, produce), {}, overwrite=False)
    before = {t.name: t.SerializeToString() for t in onnx.load(str(ZOO / file_name)).graph.initializer}
    after = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    for name, expected in case["tensors"].items():
        if expected["role"] == "constant":
            assert after[name].SerializeToString() == before[name]
        else:
            filled = np.linspace(-0.5, 0.5, int(np.prod(expected["shape"])), dtype=np.float32)
            np.testing.assert_array_equal(numpy_helper.to_array(after[name]).reshape(-1), filled)
    result = run(out, sample, case["prediction_output"])
    assert result.shape == original.shape and np.isfinite(result).all()
    assert not np.array_equal(result, original)


@pytest.mark.parametrize("file_name", NO_PARAMETERS)
def test_attribute_models_have_nothing_to_initialize(file_name: str, tmp_path: Path) -> None:
    model, plan = full_plan(ZOO / file_name)
    assert classify(model).params == [] and plan == []
    (note,) = classify(model).notes
    assert "nothing to re-initialize" in note and "(ai.onnx.ml)" in note
    assert "TreeEnsembleClassifier" in note or "LinearClassifier" in note
    out = tmp_path / "out.onnx"
    model.write(out, plan, lazy_tensors(plan, produce), {"netinit.seed": "1"}, overwrite=False)
    original, written = onnx.load(str(ZOO / file_name)), onnx.load(str(out))
    assert [(p.key, p.value) for p in written.metadata_props][-1] == ("netinit.seed", "1")
    del written.metadata_props[len(original.metadata_props) :]
    assert written.SerializeToString() == original.SerializeToString()
    sample = np.array(CASES[file_name]["sample"], np.float32)
    output = CASES[file_name]["prediction_output"]
    np.testing.assert_array_equal(run(out, sample, output), run(ZOO / file_name, sample, output))
