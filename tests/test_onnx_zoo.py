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
from onnx import numpy_helper

from netinit_cli.dtypes import numpy_dtype
from netinit_cli.formats.onnx_io import open_onnx
from netinit_cli.model import Action, Planned

ZOO = Path(__file__).resolve().parent.parent / "fixtures" / "onnx"
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
    params = {p.name: p for p in open_onnx(ZOO / file_name).params}
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
        for p in open_onnx(ZOO / file_name).params
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
    plan = [Planned(p, Action.FILL if p.role.learnable else Action.CONSTANT) for p in model.params]
    filled = {p.name for p in model.params if p.role.learnable}
    out = tmp_path / "out.onnx"
    model.write(out, plan, produce, {"netinit.test": "1"}, overwrite=False)

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
