"""LSUV through onnxruntime (netinit_cli.lsuv): every rescaled layer ends within tolerance, checked by
an independent onnxruntime run of the output model; agreement with a torch re-implementation of the
``lsuv`` package; determinism; one-line errors for bad batches and models."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FIXTURES
from onnx import TensorProto, helper, numpy_helper

import netinit_cli
from netinit_cli.errors import InputError, UsageError
from netinit_cli.lsuv.data import load_batch
from netinit_cli.lsuv.engine import LayerResult, run_lsuv
from netinit_cli.lsuv.layers import find_layers
from netinit_cli.lsuv.options import LsuvOptions
from netinit_cli.model import Action, Role

OPTIONS = LsuvOptions()


# ---------------------------------------------------------------------------------------------
# Helpers: netinit's orthogonal pre-init, and an independent measurement


def pre_init(source: Path, tmp_path: Path) -> tuple[onnx.ModelProto, set[str]]:
    """netinit's orthogonal fill with --all (zero biases), loaded back; the filled weight names."""
    out = tmp_path / f"{source.stem}.ortho.onnx"
    report = netinit_cli.initialize(source, out=out, method="orthogonal", all=True, force=True, fsync=False)
    weights = {
        name
        for entry in report.entries
        if entry.action == Action.FILL and entry.param.role == Role.WEIGHT
        for name in (entry.param.name, *entry.param.aliases)
    }
    return onnx.load(out), weights


def independent_stds(model: onnx.ModelProto, tensors: list[str], feeds: dict[str, np.ndarray]) -> list[float]:
    """Unbiased std (float64, numpy) of each tensor, fetched whole from a plain ORT session on a copy
    of ``model`` with those tensors appended to its outputs (default session settings)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(exposed)
    known = {value.name: value for value in (*inferred.graph.value_info, *inferred.graph.output)}
    present = {value.name for value in exposed.graph.output}
    for name in tensors:
        if name not in present:
            exposed.graph.output.append(
                known.get(name) or helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(tensors, feeds)
    return [float(np.std(np.asarray(value, dtype=np.float64), ddof=1)) for value in values]


def rescaled(results: list[LayerResult]) -> list[LayerResult]:
    return [result for result in results if result.skipped is None]


def block_ids(model: onnx.ModelProto, seed: int = 5) -> dict[str, np.ndarray]:
    vocab = next(t.dims[0] for t in model.graph.initializer if t.name == "lm_head.weight")
    return {"ids": np.random.default_rng(seed).integers(0, vocab, (1, 6), dtype=np.int64)}


# ---------------------------------------------------------------------------------------------
# Torch models exported in the test (legacy exporter, BN kept: do_constant_folding=False)


class Block(torch.nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.down = None
        if stride != 1 or channels_in != channels:
            self.down = torch.nn.Conv2d(channels_in, channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.head(y.mean(dim=(2, 3)))


class DeepMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (
            torch.nn.Linear(12, 64),
            torch.nn.Linear(64, 48),
            torch.nn.Linear(48, 8),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


TORCH_MODELS: dict[str, tuple[type[torch.nn.Module], tuple[int, ...]]] = {
    "resnet": (TinyResNet, (3, 12, 12)),
    "deepmlp": (DeepMLP, (12,)),
}


def export(name: str, tmp_path: Path) -> Path:
    model_class, sample = TORCH_MODELS[name]
    torch.manual_seed(0)  # the export's own (discarded) weights; netinit replaces them
    module = model_class().eval()
    path = tmp_path / f"{name}.onnx"
    buffer = io.BytesIO()
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            module,
            (torch.zeros(2, *sample),),
            buffer,
            dynamo=False,
            do_constant_folding=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    path.write_bytes(buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# After LSUV every rescaled layer is within tolerance; plain orthogonal is not


CASES: list[tuple[str, Any]] = [
    ("cnn.onnx", None),
    ("mlp.onnx", None),
    ("onnx/cnn.dynamo.onnx", None),
    ("onnx/mlp3d.dynamo.onnx", None),
    ("onnx/decoder.dynamo.onnx", None),
    ("onnx/block.dynamo.onnx", block_ids),
    ("export:resnet", None),
]


def source_of(case: str, tmp_path: Path) -> Path:
    return export(case.split(":")[1], tmp_path) if case.startswith("export:") else FIXTURES / case


@pytest.mark.parametrize(("case", "data"), CASES, ids=[case for case, _ in CASES])
def test_rescaled_layers_are_within_tolerance(case: str, data: Any, tmp_path: Path) -> None:
    model, weights = pre_init(source_of(case, tmp_path), tmp_path)
    layers = find_layers(model, weights)
    if data is None:
        batch = load_batch(model, None, batch_size=16, seed=7)
    else:
        np.savez(tmp_path / "batch.npz", **data(model))
        batch = load_batch(model, tmp_path / "batch.npz")
    before = onnx.ModelProto()
    before.CopyFrom(model)
    run = run_lsuv(model, layers, batch, OPTIONS)
    done = rescaled(run.layers)
    assert done, "no layer was rescaled"
    tensors = [result.output for result in done]

    measured = independent_stds(model, tensors, batch)
    for result, std in zip(done, measured, strict=True):
        assert abs(std - OPTIONS.std) <= OPTIONS.tol, (result.weight, std)
        assert result.std_after == pytest.approx(std, rel=1e-5)  # the engine measured the same tensor
        assert result.converged and result.values >= 32
    plain = independent_stds(before, tensors, batch)
    outside = [r.weight for r, std in zip(done, plain, strict=True) if abs(std - OPTIONS.std) > OPTIONS.tol]
    assert outside, f"plain orthogonal is already within tolerance on {case}: {plain}"
    # Cost: one session; one pass, plus one after each correction.
    assert run.sessions == 1
    assert run.passes == 1 + sum(result.iterations for result in run.layers)


def test_layers_found_with_their_bias_and_measured_tensor() -> None:
    model = onnx.load(FIXTURES / "onnx" / "mlp3d.dynamo.onnx")
    layers = find_layers(model, {"val_0", "val_2"})
    adds = [node for node in model.graph.node if node.op_type == "Add"]
    assert [(layer.op, layer.bias, layer.output) for layer in layers] == [
        ("MatMul", "fc1.bias", adds[0].output[0]),
        ("MatMul", "fc2.bias", adds[1].output[0]),
    ]


def test_skips_are_reported(tmp_path: Path) -> None:
    model, weights = pre_init(FIXTURES / "onnx" / "rnn.dynamo.onnx", tmp_path)
    reasons = {layer.op: layer.skip for layer in find_layers(model, weights)}
    assert reasons["LSTM"] and "recurrent" in reasons["LSTM"]
    assert reasons["GRU"] and "recurrent" in reasons["GRU"]
    # A layer with fewer than 32 output values (the static batch of 2 times 10 classes) is measured, not rescaled.
    model, weights = pre_init(FIXTURES / "onnx" / "cnn.dynamo.onnx", tmp_path)
    run = run_lsuv(model, find_layers(model, weights), load_batch(model, None, seed=1))
    fc = next(result for result in run.layers if result.weight == "fc.weight")
    assert fc.values == 20 and fc.skipped == "output has 20 values on the batch, fewer than 32"
    assert fc.iterations == 0 and fc.scale == 1.0


def test_missing_only_rescales_only_filled_layers(tmp_path: Path) -> None:
    model, weights = pre_init(FIXTURES / "mlp.onnx", tmp_path)
    kept = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "fc1.weight")).copy()
    layers = find_layers(model, weights - {"fc1.weight"})
    run = run_lsuv(model, layers, load_batch(model, None, seed=3))
    assert [result.weight for result in rescaled(run.layers)] == ["fc2.weight"]
    assert "missing-only" in (run.layers[0].skipped or "")
    stored = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "fc1.weight"))
    assert np.array_equal(stored, kept)


# ---------------------------------------------------------------------------------------------
# Against a torch re-implementation of the lsuv package (ducha-aiki/lsuv, lsuv/lsuvinit.py)


def torch_lsuv(
    module: torch.nn.Module,
    data: torch.Tensor,
    *,
    needed_std: float = 1.0,
    std_tol: float = 0.1,
    max_attempts: int = 10,
    do_orthonorm: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, tuple[float, float, int]]:
    """The package's LSUVinit, its loop kept as is: eval mode, orthogonal_ + zero bias, layers in
    registration order (``model.apply``), the unbiased ``std()`` of the layer's output,
    ``W *= needed_std / (std + 1e-8)``, and ``attempts > max_attempts`` as its break.
    Returns {weight name: (std before, std after, corrections)}."""
    relevant = (
        *(torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d),
        *(torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d),
        torch.nn.Linear,
    )
    module.eval()
    layers = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, relevant)]
    results: dict[str, tuple[float, float, int]] = {}
    with torch.inference_mode():
        if do_orthonorm:
            for _, layer in layers:
                torch.nn.init.orthogonal_(layer.weight, generator=generator)
                if layer.bias is not None:
                    torch.nn.init.constant_(layer.bias, 0)
        for name, layer in layers:
            current = before = output_std(module, layer, data)
            attempts = 0
            while abs(current - needed_std) > std_tol:
                layer.weight.data[:] *= float(needed_std / (current + 1e-8))
                current = output_std(module, layer, data)
                attempts += 1
                if attempts > max_attempts:
                    break
            results[f"{name}.weight"] = (before, current, attempts)
    return results


def output_std(module: torch.nn.Module, layer: torch.nn.Module, data: torch.Tensor) -> float:
    """The unbiased std of ``layer``'s output in a forward pass of ``module`` (the package's hook)."""
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, output: seen.append(output.detach()))
    try:
        module(data)
    finally:
        hook.remove()
    return float(seen[-1].std())


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_agrees_with_the_lsuv_package(name: str, tmp_path: Path) -> None:
    model, weights = pre_init(export(name, tmp_path), tmp_path)
    batch = load_batch(model, None, batch_size=16, seed=11)
    pre = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    run = run_lsuv(model, find_layers(model, weights), batch, OPTIONS)
    ours = {result.weight: result for result in rescaled(run.layers)}
    data = torch.from_numpy(batch["x"])

    # 1. The package as published: its own orthogonal_ draw, then LSUV.  Same target, same tolerance.
    module = TORCH_MODELS[name][0]()
    published = torch_lsuv(module, data, generator=torch.Generator().manual_seed(0))
    assert set(published) >= set(ours)
    for weight, result in ours.items():
        assert result.std_after is not None
        assert abs(published[weight][1] - result.std_after) <= OPTIONS.tol, weight

    # 2. The same pre-init (netinit's orthogonal weights loaded into torch): the same measurements,
    #    corrections and final weights, up to float32 rounding.
    module = TORCH_MODELS[name][0]()
    module.load_state_dict({key: pre[key] for key in module.state_dict() if key in pre}, strict=False)
    same = torch_lsuv(module, data, do_orthonorm=False)
    final = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for weight, result in ours.items():
        std_before, std_after, attempts = same[weight]
        assert result.std_before == pytest.approx(std_before, rel=1e-5)
        assert result.std_after == pytest.approx(std_after, rel=1e-5)
        assert result.iterations == attempts
        np.testing.assert_allclose(final[weight], module.state_dict()[weight].numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Determinism and the two session strategies


def test_byte_identical_twice(tmp_path: Path) -> None:
    outputs = []
    for _ in range(2):
        model, weights = pre_init(FIXTURES / "cnn.onnx", tmp_path)
        run_lsuv(model, find_layers(model, weights), load_batch(model, None, seed=9), OPTIONS)
        outputs.append(model.SerializeToString())
    assert outputs[0] == outputs[1]
    model, weights = pre_init(FIXTURES / "cnn.onnx", tmp_path)
    other_seed = load_batch(model, None, seed=10)
    run_lsuv(model, find_layers(model, weights), other_seed, OPTIONS)
    assert model.SerializeToString() != outputs[0]


def test_rebuilding_sessions_measures_the_same(tmp_path: Path) -> None:
    runs = []
    for feed in (True, False):
        model, weights = pre_init(FIXTURES / "cnn.onnx", tmp_path)
        runs.append(
            run_lsuv(model, find_layers(model, weights), load_batch(model, None, seed=4), feed_weights=feed)
        )
    fed, rebuilt = runs
    assert (fed.sessions, rebuilt.sessions) == (1, rebuilt.passes) and fed.passes == rebuilt.passes
    for a, b in zip(fed.layers, rebuilt.layers, strict=True):
        assert (a.iterations, a.std_after) == (b.iterations, pytest.approx(b.std_after, rel=1e-6))


def test_random_batch_is_seeded_and_private() -> None:
    model = onnx.load(FIXTURES / "cnn.onnx")
    np.random.seed(0)
    first = load_batch(model, None, batch_size=5, seed=np.random.SeedSequence(42))
    np.random.seed(1)
    second = load_batch(model, None, batch_size=5, seed=np.random.SeedSequence(42))
    assert first["input"].shape == (5, 3, 16, 16) and first["input"].dtype == np.float32
    assert first["input"].tobytes() == second["input"].tobytes()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, the right class


def one_line(error: pytest.ExceptionInfo[Exception]) -> str:
    text = str(error.value)
    assert "\n" not in text and text
    return text


def tiny_model(
    inputs: list[onnx.ValueInfoProto], nodes: list[onnx.NodeProto], opset: int = 17
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight]
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.x", 1)]
    )


BAD_DATA: list[tuple[str, dict[str, np.ndarray], str]] = [
    ("wrong name", {"inputs": np.zeros((4, 3, 16, 16), np.float32)}, "array 'inputs' that is no graph input"),
    ("wrong rank", {"input": np.zeros((4, 3, 16), np.float32)}, "has 3 dimensions"),
    ("wrong static dim", {"input": np.zeros((4, 3, 16, 15), np.float32)}, "size 15 on axis 3"),
    ("wrong dtype", {"input": np.zeros((4, 3, 16, 16), np.float64)}, "is float64 but the model wants float"),
    ("NaN", {"input": np.full((4, 3, 16, 16), np.nan, np.float32)}, "holds NaN"),
]


@pytest.mark.parametrize(("what", "arrays", "message"), BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_data_that_does_not_match_the_inputs(
    what: str, arrays: dict[str, np.ndarray], message: str, tmp_path: Path
) -> None:
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(UsageError) as error:
        load_batch(onnx.load(FIXTURES / "cnn.onnx"), tmp_path / "data.npz")
    assert message in one_line(error)


def test_data_files_npy_and_garbage(tmp_path: Path) -> None:
    model = onnx.load(FIXTURES / "cnn.onnx")
    np.save(tmp_path / "one.npy", np.ones((2, 3, 16, 16), np.float32))
    assert load_batch(model, tmp_path / "one.npy")["input"].shape == (2, 3, 16, 16)
    (tmp_path / "junk.npz").write_bytes(b"not an array")
    with pytest.raises(UsageError) as error:
        load_batch(model, tmp_path / "junk.npz")
    assert "neither .npz nor .npy" in one_line(error)
    two = tiny_model(
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 8]) for n in ("a", "c")],
        [helper.make_node("Add", ["a", "c"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"])],
    )
    with pytest.raises(UsageError) as error:
        load_batch(two, tmp_path / "one.npy")
    assert "model has 2 inputs (a, c)" in one_line(error)
    np.savez(tmp_path / "mismatch.npz", a=np.ones((2, 8), np.float32), c=np.ones((3, 8), np.float32))
    with pytest.raises(UsageError) as error:
        load_batch(two, tmp_path / "mismatch.npz")
    assert "dimension 'b' is 2 in input 'a' but 3 in input 'c'" in one_line(error)


def test_dynamic_dims_and_integer_inputs_need_data() -> None:
    seq = tiny_model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
    )
    with pytest.raises(UsageError) as error:
        load_batch(seq, None)
    assert one_line(error).startswith("input 'x' has dynamic dimension 1 (seq)")
    with pytest.raises(UsageError) as error:
        load_batch(onnx.load(FIXTURES / "onnx" / "block.dynamo.onnx"), None)
    assert one_line(error).startswith("input 'ids' is int64, which cannot be drawn at random")


def test_model_onnxruntime_cannot_load_or_run() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    unknown = tiny_model(
        [x],
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Foo", ["h"], ["y"], domain="ai.x")],
    )
    with pytest.raises(InputError) as error:
        run_lsuv(unknown, find_layers(unknown, {"w"}), load_batch(unknown, None))
    assert one_line(error).startswith("onnxruntime cannot load the model: ")
    shape = numpy_helper.from_array(np.array([7, -1], np.int64), "shape")
    bad_reshape = tiny_model(
        [x],
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])],
    )
    bad_reshape.graph.initializer.append(shape)
    with pytest.raises(InputError) as error:
        run_lsuv(bad_reshape, find_layers(bad_reshape, {"w"}), load_batch(bad_reshape, None, batch_size=4))
    assert one_line(error).startswith("onnxruntime cannot run the model on the batch: ")


def test_constant_layer_output(tmp_path: Path) -> None:
    # Zero biases after the pre-init: a zero batch gives a zero first-layer output.
    model, weights = pre_init(FIXTURES / "mlp.onnx", tmp_path)
    np.savez(tmp_path / "zeros.npz", input=np.zeros((4, 8), np.float32))
    with pytest.raises(InputError) as error:
        run_lsuv(model, find_layers(model, weights), load_batch(model, tmp_path / "zeros.npz"))
    assert (
        "layer '/fc1/Gemm' (Gemm, weight 'fc1.weight'): its output '/fc1/Gemm_output_0' is constant (std 0)"
        in one_line(error)
    )
    # A constant non-zero output (bias 0.3 on a zero batch): its float64 std need not be exactly 0.
    bias = next(t for t in model.graph.initializer if t.name == "fc1.bias")
    bias.CopyFrom(numpy_helper.from_array(np.full(tuple(bias.dims), 0.3, np.float32), "fc1.bias"))
    with pytest.raises(InputError) as error:
        run_lsuv(model, find_layers(model, weights), load_batch(model, tmp_path / "zeros.npz"))
    assert "its output '/fc1/Gemm_output_0' is constant (std " in one_line(error)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"std": 0.0}, "lsuv(std=0.0) must be a positive number"),
        ({"tol": 0.0}, "lsuv(tol=0.0) must be above 0"),
        ({"tol": 2.0}, "below std=1.0"),
        ({"max_iter": 0}, "lsuv(max_iter=0) must be an integer from 1 to 1000"),
    ],
)
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as error:
        LsuvOptions(**options)
    assert message in one_line(error)


def test_without_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = pre_init(FIXTURES / "mlp.onnx", tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(UsageError) as error:
        run_lsuv(model, find_layers(model, weights), load_batch(model, None))
    assert one_line(error) == "--method lsuv needs onnxruntime: pip install 'netinit[lsuv]'"
