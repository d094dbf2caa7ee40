"""Warnings, not decisions: weight-slot tensors whose values or names look like fixed buffers
get a note; their role is unchanged.  Trained-looking values get none.  (Values that are a fixed
transform — DFT basis, DFL arange — are decided: tests/test_fixed_transforms.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import float_model, save

from netinit_cli.classify.stage import classify
from netinit_cli.classify.values import VALUE_SAMPLE, structured_value_note
from netinit_cli.formats.onnx.reader import open_onnx
from netinit_cli.model import Role


def conv_model(weight: np.ndarray, path: Path) -> Path:
    conv = helper.make_node("Conv", ["x", "W"], ["y"])
    inputs = {"x": [1, weight.shape[1], 64]}
    weights = [numpy_helper.from_array(weight.astype(np.float32), "W")]
    return save(float_model([conv], inputs, {"y": ["N", "C", "L"]}, weights), path)


def stft_basis(n_fft: int = 64) -> np.ndarray:
    """torch.stft as a Conv1d: cos and sin rows of a Hann-windowed DFT, ``[2F, 1, n_fft]``."""
    n = np.arange(n_fft)
    frequencies = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = 2 * np.pi * frequencies * n / n_fft
    return np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :]


STRUCTURED = {
    "integer kernel (Sobel)": (
        np.array([[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]], np.float32),
        "integer-valued",
    ),
    "all zeros": (np.zeros((4, 3, 3), np.float32), "every sampled value is 0"),
    # An arange in the leading sample only: the whole tensor is not one, so a note, not a decision.
    "arange, then not": (
        np.r_[np.arange(VALUE_SAMPLE), np.ones(VALUE_SAMPLE)].astype(np.float32).reshape(1, -1, 1),
        "arange-like",
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURED), ids=list(STRUCTURED))
def test_structured_weight_values_are_noted_not_decided(case: str, tmp_path: Path) -> None:
    weight, words = STRUCTURED[case]
    model = open_onnx(conv_model(weight, tmp_path / "m.onnx"))
    (param,) = classify(model).params
    assert param.role is Role.WEIGHT  # a warning, not a decision
    (note,) = param.notes
    assert note.startswith("W: a weight with ") and words in note and "fixed buffer" in note
    assert note in classify(model).notes


def orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


@pytest.mark.parametrize("seed", range(20))
def test_trained_looking_values_get_no_note(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = [(16, 16), (64, 8), (8, 64), (32, 4, 3, 3), (130, 1, 64), (4, 1024)]
    for shape in shapes:
        normal = rng.standard_normal(shape).astype(np.float32) * 0.05
        uniform = rng.uniform(-0.3, 0.3, shape).astype(np.float16)
        ortho = orthogonal(shape[0], int(np.prod(shape[1:])), rng).reshape(shape)
        for values in (normal, uniform, ortho):
            assert structured_value_note("W", Role.WEIGHT, values) is None, (shape, values.dtype)


def test_value_check_reads_a_bounded_sample(tmp_path: Path) -> None:
    # Only the leading VALUE_SAMPLE elements decide: arange there, noise after it.
    values = np.random.default_rng(0).standard_normal(VALUE_SAMPLE * 4).astype(np.float32)
    values[:VALUE_SAMPLE] = np.arange(VALUE_SAMPLE) * 0.5
    assert "arange-like" in (structured_value_note("W", Role.WEIGHT, values.reshape(64, -1)) or "")
    # A 1 GiB external weight (a sparse file: zeros) is checked without reading it.
    path = conv_model(np.zeros((4, 1, 4), np.float32), tmp_path / "big.onnx")
    proto = onnx.load(str(path))
    (tensor,) = proto.graph.initializer
    del tensor.dims[:]
    tensor.dims.extend([1 << 16, 1, 1 << 12])
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "big.bin"), ("offset", "0"), ("length", str(1 << 30))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    with open(tmp_path / "big.bin", "wb") as handle:
        handle.truncate(1 << 30)
    onnx.save_model(proto, str(path))
    start = time.perf_counter()
    notes = classify(open_onnx(path)).notes
    elapsed = time.perf_counter() - start
    assert any("every sampled value is 0" in n for n in notes)
    assert elapsed < 2.0, elapsed


def name_model(names: dict[str, tuple[str, list[int]]]) -> onnx.ModelProto:
    """One slot per entry: op input 1 (or BatchNormalization:3/4) holds a tensor of that name."""
    nodes, inits = [], []
    rng = np.random.default_rng(1)
    for index, (name, (op, shape)) in enumerate(names.items()):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        if op == "BatchNormalization":  # the tensor is the running mean (input 3)
            scale, shift, var = f"s{index}", f"b{index}", f"v{index}"
            inits += [numpy_helper.from_array(np.ones(shape, np.float32), n) for n in (scale, shift, var)]
            nodes.append(helper.make_node(op, ["x4", scale, shift, name, var], [f"y{index}"]))
        elif op == "Gemm":
            nodes.append(helper.make_node(op, ["x", name], [f"y{index}"], transB=1))
        else:
            nodes.append(helper.make_node(op, ["x", name], [f"y{index}"], axis=-1))
    inputs = {"x": [2, 8], "x4": [1, 8, 2, 2]}
    return float_model(nodes, inputs, {f"y{i}": None for i in range(len(nodes))}, inits)


def test_buffer_like_names_are_noted_only_when_the_role_disagrees(tmp_path: Path) -> None:
    from netinit_cli.classify import classify_model

    params, notes = classify_model(
        name_model(
            {
                "attn.causal_mask": ("Gemm", [4, 8]),
                "rotary.inv_freq": ("Gemm", [4, 8]),
                "bn.running_mean": ("BatchNormalization", [8]),
                "ln.running_var": ("LayerNormalization", [8]),
                "fc.weight": ("Gemm", [4, 8]),
            }
        )
    )
    noted = {n.split(":")[0] for n in notes}
    assert noted == {"attn.causal_mask", "rotary.inv_freq", "ln.running_var"}
    roles = {p.name: p.role for p in params}
    assert roles["attn.causal_mask"] is Role.WEIGHT and roles["bn.running_mean"] is Role.RUNNING_MEAN
    assert "'mask'" in next(n for n in notes if n.startswith("attn.causal_mask"))
