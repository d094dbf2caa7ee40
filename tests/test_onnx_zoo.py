"""Real exports (fixtures/onnx, made by fixtures/generate_onnx_zoo.py with torch's TorchScript and
dynamo exporters): every tensor maps back to torch's own parameter list with the right role and
fans, a full re-initialization changes no constant, and the result runs in onnxruntime."""

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
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.fill import lazy_tensors
from netinit_cli.formats.onnx.reader import open_onnx
from netinit_cli.model import Action, Planned

CASES: dict[str, dict[str, Any]] = (
    json.loads((ZOO / "zoo.json").read_text()) if (ZOO / "zoo.json").exists() else {}
)


def produce(planned: Planned) -> np.ndarray:
    """Values no exporter would store: easy to tell from the originals, small enough to run."""
    p = planned.param
    values = np.full(p.shape, 0.01, np.float64) + np.arange(p.numel).reshape(p.shape) * 1e-4
    return np.ascontiguousarray(values.astype(numpy_dtype(p.dtype)))


@pytest.mark.parametrize("file_name", sorted(CASES))
def test_roles_and_fans_match_torch(file_name: str) -> None:
    case = CASES[file_name]
    params = {p.name: p for p in classify(open_onnx(ZOO / file_name)).params}
    problems = []
    for onnx_name, expected in case["tensors"].items():
        param = params[onnx_name]
        got: dict[str, Any] = {"role": param.role.value}
        if "fans" in expected:
            got["fans"] = list(param.layout.fans(param.shape)) if param.layout else None
        if "torch_fans" in expected:
            got["torch_fans"] = list(param.layout.torch_fans(param.shape)) if param.layout else None
        want = {k: expected[k] for k in got}
        if got != want:
            problems.append(f"{onnx_name} ({expected['torch']}): got {got}, want {want} — {param.reason}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("file_name", sorted(CASES))
def test_no_unexpected_learnable_tensor(file_name: str) -> None:
    case = CASES[file_name]
    extra = [
        f"{p.name}: {p.role.value} ({p.reason})"
        for p in classify(open_onnx(ZOO / file_name)).params
        if p.role.learnable and p.name not in case["tensors"]
    ]
    assert not extra, "\n".join(extra)


@pytest.mark.parametrize("file_name", sorted(CASES))
def test_every_torch_parameter_is_accounted_for(file_name: str) -> None:
    case = CASES[file_name]
    mapped = {entry["torch"] for entry in case["tensors"].values()}
    rnn_modules = {m.split(" ")[0] for m in mapped if m and m.endswith("(W/R/B)")}
    for name in case["torch"]:
        if name in mapped or name in case["missing"] or name.rsplit(".", 1)[0] in rnn_modules:
            continue
        raise AssertionError(f"{name} is neither mapped nor listed as missing")
    fused_exports = {"cnn.torchscript.onnx", "cnn.dynamo.onnx"}
    missing = {n for n in case["missing"] if not n.endswith("num_batches_tracked")}
    assert bool(missing) == (file_name in fused_exports), missing


def _stored_bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    out = {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = onnx.helper.get_attribute_value(node.attribute[0]).__repr__().encode()
    return out


@pytest.mark.parametrize("file_name", sorted(CASES))
def test_full_reinit_keeps_constants_and_runs(file_name: str, tmp_path: Path) -> None:
    case = CASES[file_name]
    model = open_onnx(ZOO / file_name)
    plan = [Planned(p, Action.FILL if p.role.learnable else Action.CONSTANT) for p in classify(model).params]
    filled = {p.name for p in classify(model).params if p.role.learnable}
    out = tmp_path / "out.onnx"
    model.write(out, plan, lazy_tensors(plan, produce), {"netinit.test": "1"}, overwrite=False)

    before, after = _stored_bytes(onnx.load(str(ZOO / file_name))), _stored_bytes(onnx.load(str(out)))
    assert set(before) == set(after)
    changed = {name for name in before if before[name] != after[name]}
    assert changed <= filled, f"constants changed: {sorted(changed - filled)}"
    assert changed, "nothing was re-initialized"

    rng = np.random.default_rng(0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {}
    for meta, spec in zip(session.get_inputs(), case["inputs"], strict=True):
        if spec["dtype"] == "int64":
            feeds[meta.name] = rng.integers(0, 50, spec["shape"]).astype(np.int64)
        else:
            feeds[meta.name] = rng.standard_normal(spec["shape"]).astype(np.float32)
    results = session.run(None, feeds)
    assert [list(r.shape) for r in results[:1]] == case["outputs"]
    assert all(np.isfinite(r).all() for r in results)


# -- the onnx wheel's own backend test models (IR 3: initializers are also listed as inputs) -----

WHEEL = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
WHEEL_CASES = {
    # model: {tensor: (role, semantic fans, torch fans)}
    "test_Conv2d_groups": {"1": ("weight", (12, 18), (12, 36)), "2": ("bias", None, None)},
    "test_Conv2d_depthwise_with_multiplier": {"1": ("weight", (9, 18), (9, 72))},
    "test_Conv3d_groups": {"1": ("weight", (54, 81), (54, 162))},
    "test_ConvTranspose2d": {"1": ("weight", (27, 36), (36, 27)), "2": ("bias", None, None)},
    "test_Linear": {"1": ("weight", (10, 8), (10, 8)), "2": ("bias", None, None)},
    "test_Linear_no_bias": {"1": ("weight", (10, 8), (10, 8))},
    "test_Embedding": {"1": ("embedding", (3, 4), (3, 4))},
    "test_BatchNorm2d_eval": {"1": ("norm_scale",) + (None,) * 2, "3": ("running_mean", None, None)},
    "test_PReLU_2d_multiparam": {"1": ("prelu_slope", None, None)},
    "test_Softsign": {"2": ("scalar", None, None)},
}


@pytest.mark.skipif(not WHEEL.is_dir(), reason="onnx wheel without backend test data")
@pytest.mark.parametrize("name", sorted(WHEEL_CASES))
def test_onnx_wheel_models(name: str, tmp_path: Path) -> None:
    folder = WHEEL / name
    model = open_onnx(folder / "model.onnx")
    params = {p.name: p for p in classify(model).params}
    for tensor, (role, semantic, torch_fans) in WHEEL_CASES[name].items():
        param = params[tensor]
        assert param.role.value == role, param.reason
        if semantic is not None:
            assert param.layout is not None
            assert (param.layout.fans(param.shape), param.layout.torch_fans(param.shape)) == (
                semantic,
                torch_fans,
            )
    out = tmp_path / "out.onnx"
    plan = [Planned(p, Action.FILL if p.role.learnable else Action.CONSTANT) for p in classify(model).params]
    model.write(out, plan, lazy_tensors(plan, produce), {}, overwrite=False)
    data = folder / "test_data_set_0"
    feed = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    expected = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    try:
        ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime dropped some opset-6 kernels; the writer's checker still ran
        return
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: feed})
    assert result.shape == expected.shape and np.isfinite(result).all()


# -- quantized variants, made here with onnxruntime's own quantizer -----------------------------


def _quantized(kind: str, tmp_path: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out = tmp_path / f"{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(str(ZOO / "mlp3d.torchscript.onnx"), str(out), weight_type=QuantType.QInt8)
        return out

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter(
                [{"input.1": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(ZOO / "cnn.torchscript.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ)
    return out


@pytest.mark.parametrize("kind", ["dynamic", "qdq"])
def test_quantized_models_keep_every_quantized_tensor(kind: str, tmp_path: Path) -> None:
    path = _quantized(kind, tmp_path)
    model = open_onnx(path)
    roles = {p.name: p.role.value for p in classify(model).params}
    quantized = {name for name, role in roles.items() if role == "quantized"}
    integer = {p.name for p in classify(model).params if not p.dtype.startswith(("F", "BF"))}
    assert integer <= quantized | {n for n, r in roles.items() if r == "constant"}
    assert any(name.endswith("_scale") for name in quantized)
    assert all(
        not p.role.learnable for p in classify(model).params if p.name.endswith(("_scale", "_zero_point"))
    )
    if kind == "dynamic":  # the float biases after the dequantizing Mul stay biases
        assert roles["fc1.bias"] == "bias" and roles["fc2.bias"] == "bias"
    out = tmp_path / "out.onnx"
    plan = [Planned(p, Action.FILL if p.role.learnable else Action.CONSTANT) for p in classify(model).params]
    model.write(out, plan, lazy_tensors(plan, produce), {}, overwrite=False)
    before, after = _stored_bytes(onnx.load(str(path))), _stored_bytes(onnx.load(str(out)))
    assert all(before[name] == after[name] for name in quantized)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    shape = [2, 5, 8] if kind == "dynamic" else [2, 3, 8, 8]
    (result,) = session.run(None, {meta.name: np.ones(shape, np.float32)})
    assert np.isfinite(result).all()
