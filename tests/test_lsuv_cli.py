"""``netinit --method lsuv`` end to end, through the command line and the API: every rescaled
layer's output std is within tolerance in an independent onnxruntime run of the written file (and
not after plain orthogonal init); values are orthogonal's times the reported scale; agreement with a
torch re-implementation of the ``lsuv`` package; byte-identical reruns; bad input is one line, exit
2 or 3, and nothing written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import FIXTURES
from onnx import TensorProto, helper, numpy_helper
from test_lsuv import TORCH_MODELS, block_ids, export, independent_stds, torch_lsuv

import netinit_cli
from netinit_cli.cli import cli
from netinit_cli.lsuv.data import graph_inputs, input_dims, load_batch
from netinit_cli.seeding import Seed, purpose_sequence

TOL = 0.1


def invoke(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def normal_batch(model: onnx.ModelProto, size: int = 16, seed: int = 3) -> dict[str, np.ndarray]:
    """Standard-normal arrays for every float input, ``size`` on a dynamic first axis."""
    rng = np.random.default_rng(seed)
    batch = {}
    for value in graph_inputs(model):
        dims = input_dims(value) or []
        shape = [dim if isinstance(dim, int) else size for dim in dims]
        batch[value.name] = rng.standard_normal(shape).astype(np.float32)
    return batch


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(path).graph.initializer}


def rescaled_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [tensor for tensor in report["tensors"] if tensor.get("lsuv_std_after") is not None]


# ---------------------------------------------------------------------------------------------
# Every rescaled layer within tolerance, checked on the written file; not so without LSUV

CASES = [
    "cnn.onnx",
    "mlp.onnx",
    "onnx/cnn.dynamo.onnx",
    "onnx/cnn.torchscript-bn.onnx",
    "onnx/mlp3d.dynamo.onnx",
    "onnx/block.dynamo.onnx",
    "export:resnet",
]


@pytest.mark.parametrize("case", CASES)
def test_written_model_has_every_rescaled_layer_within_tolerance(case: str, tmp_path: Path) -> None:
    source = export("resnet", tmp_path) if case == "export:resnet" else FIXTURES / case
    model = onnx.load(source)
    feeds = block_ids(model) if "block" in case else normal_batch(model)
    np.savez(tmp_path / "batch.npz", **feeds)
    out, ortho, report_path = tmp_path / "lsuv.onnx", tmp_path / "ortho.onnx", tmp_path / "report.json"
    common = ("--all", "--seed", 7, "-q", "--no-fsync")
    code, _, stderr = invoke(
        source,
        "--method",
        "lsuv",
        "--data",
        tmp_path / "batch.npz",
        "-o",
        out,
        "--report",
        report_path,
        *common,
    )
    assert code == 0, stderr
    code, _, stderr = invoke(source, "--method", "orthogonal", "-o", ortho, *common)
    assert code == 0, stderr

    report = json.loads(report_path.read_text())
    done = rescaled_entries(report)
    assert done, "no layer was rescaled"
    outputs = [entry["lsuv_output"] for entry in done]
    measured = independent_stds(onnx.load(out), outputs, feeds)
    for entry, std in zip(done, measured, strict=True):
        assert abs(std - 1.0) <= TOL, (entry["name"], std)
        assert entry["lsuv_std_after"] == pytest.approx(std, rel=1e-5)
        assert entry["lsuv_converged"] is True and entry["lsuv_skipped"] is None
    plain = independent_stds(onnx.load(ortho), outputs, feeds)
    assert any(abs(std - 1.0) > TOL for std in plain), f"orthogonal alone is within tolerance: {plain}"
    # The first layer's std before is the pre-init's (later ones: after the layers before them).
    assert done[0]["lsuv_std_before"] == pytest.approx(plain[0], rel=1e-5)

    # The values: orthogonal's, times the reported scale for the rescaled weights; all else identical.
    lsuv_values, ortho_values = initializers(out), initializers(ortho)
    assert set(lsuv_values) == set(ortho_values)
    scales = {entry["name"]: entry["lsuv_scale"] for entry in done}
    for name, values in lsuv_values.items():
        if name in scales:
            expected = (ortho_values[name].astype(np.float64) * scales[name]).astype(values.dtype)
            assert values.tobytes() == expected.tobytes(), name
        else:
            assert values.tobytes() == ortho_values[name].tobytes(), name
    # The report's statistics describe the stored (rescaled) values.
    for entry in done:
        stored = lsuv_values[entry["name"]].astype(np.float64)
        assert entry["std"] == pytest.approx(float(stored.std()), rel=1e-9)
        assert entry["expected_std"] == pytest.approx(float(np.sqrt(np.mean(stored**2))), rel=1e-5)
    # Cost: one session; one pass, plus one after each correction.
    assert report["lsuv"]["sessions"] == 1
    assert report["lsuv"]["passes"] == 1 + sum(entry["lsuv_iterations"] for entry in done)


def test_missing_only_rescales_only_the_filled_layers(tmp_path: Path) -> None:
    # mlp_noparams declares its parameters as graph inputs without data; give fc1 its data.
    model = onnx.load(FIXTURES / "mlp_noparams.onnx")
    rng = np.random.default_rng(0)
    kept = rng.standard_normal((16, 8)).astype(np.float32)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(kept, "fc1.weight"),
            numpy_helper.from_array(np.zeros(16, np.float32), "fc1.bias"),
        ]
    )
    source = tmp_path / "half.onnx"
    onnx.save(model, source)
    feeds = {"input": np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32)}
    np.savez(tmp_path / "batch.npz", **feeds)
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    code, _, stderr = invoke(
        source, "--method", "lsuv", "--data", tmp_path / "batch.npz", "-o", out, "--report", report_path, "-q"
    )
    assert code == 0, stderr
    tensors = {entry["name"]: entry for entry in json.loads(report_path.read_text())["tensors"]}
    assert tensors["fc1.weight"]["action"] == "kept"
    assert tensors["fc1.weight"]["lsuv_skipped"] == (
        "not filled in this run (missing-only: only filled layers are rescaled)"
    )
    assert tensors["fc2.weight"]["action"] == "filled" and tensors["fc2.weight"]["lsuv_skipped"] is None
    written = initializers(out)
    assert written["fc1.weight"].tobytes() == kept.tobytes()
    [std] = independent_stds(onnx.load(out), [tensors["fc2.weight"]["lsuv_output"]], feeds)
    assert abs(std - 1.0) <= TOL


def test_table_and_json_say_what_was_done(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(
        FIXTURES / "onnx" / "cnn.dynamo.onnx",
        *("--method", "lsuv", "--all", "--table", "full", "-o", tmp_path / "out.onnx"),
        env={"COLUMNS": "400"},
    )
    assert code == 0, stderr
    assert "lsuv: orthogonal gain=1, ×" in stdout and "(1 it)" in stdout
    assert "orthogonal gain=1 (lsuv skipped: output has 20 values on the batch, fewer than 32)" in stdout
    assert "lsuv: 3 layer(s) rescaled; 1 skipped; 1 onnxruntime session(s), 4 pass(es)" in stdout
    assert "batch random normal x [2, 3, 8, 8] (seed 1234)" in stdout
    assert " !" not in stdout, "a rescaled weight is flagged as off target"
    code, stdout, _ = invoke(
        FIXTURES / "onnx" / "cnn.dynamo.onnx",
        "--method",
        "lsuv",
        "--all",
        "--json",
        "-fo",
        tmp_path / "out.onnx",
    )
    report = json.loads(stdout)
    assert report["lsuv"]["rescaled"] == 3 and report["lsuv"]["skipped"] == 1
    fc = next(entry for entry in report["tensors"] if entry["name"] == "fc.weight")
    assert fc["lsuv_skipped"] == "output has 20 values on the batch, fewer than 32"
    assert fc["lsuv_std_after"] is None and fc["lsuv_std_before"] > 0 and fc["lsuv_iterations"] == 0


def test_dry_run_plans_lsuv_and_writes_nothing(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(
        FIXTURES / "cnn.onnx",
        "--method",
        "lsuv",
        "--all",
        "-n",
        "-o",
        tmp_path / "out.onnx",
        env={"COLUMNS": "300"},
    )
    assert code == 0, stderr
    assert "orthogonal gain=1, then lsuv" in stdout and "method lsuv(max_iter=10, std=1, tol=0.1)" in stdout
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Against a torch re-implementation of the lsuv package, through the API


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_agrees_with_the_lsuv_package_through_the_api(name: str, tmp_path: Path) -> None:
    source = export(name, tmp_path)
    feeds = normal_batch(onnx.load(source), size=16, seed=5)
    np.savez(tmp_path / "batch.npz", **feeds)
    common: dict[str, Any] = {"all": True, "seed": 11, "fsync": False}
    netinit_cli.initialize(source, out=tmp_path / "ortho.onnx", method="orthogonal", **common)
    report = netinit_cli.initialize(
        source, out=tmp_path / "lsuv.onnx", method="lsuv", data=tmp_path / "batch.npz", **common
    ).to_json()
    ours = {entry["name"]: entry for entry in rescaled_entries(report)}
    assert ours
    data = torch.from_numpy(feeds["x"])

    # The package as published (its own orthogonal_ draw): the same target within the tolerance.
    published = torch_lsuv(TORCH_MODELS[name][0](), data, generator=torch.Generator().manual_seed(0))
    for weight, entry in ours.items():
        assert abs(published[weight][1] - entry["lsuv_std_after"]) <= TOL, weight

    # From netinit's orthogonal pre-init: the same measurements, corrections and final weights.
    module = TORCH_MODELS[name][0]()
    pre = {
        key: torch.from_numpy(value.copy()) for key, value in initializers(tmp_path / "ortho.onnx").items()
    }
    module.load_state_dict({key: pre[key] for key in module.state_dict() if key in pre}, strict=False)
    same = torch_lsuv(module, data, do_orthonorm=False)
    final = initializers(tmp_path / "lsuv.onnx")
    for weight, entry in ours.items():
        std_before, std_after, attempts = same[weight]
        assert entry["lsuv_std_before"] == pytest.approx(std_before, rel=1e-5)
        assert entry["lsuv_std_after"] == pytest.approx(std_after, rel=1e-5)
        assert entry["lsuv_iterations"] == attempts
        np.testing.assert_allclose(final[weight], module.state_dict()[weight].numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_byte_identical_through_the_cli(tmp_path: Path) -> None:
    source = FIXTURES / "cnn.onnx"
    outputs = []
    for index, (seed, threads) in enumerate([(7, "1"), (7, "2"), (8, "2")]):
        out = tmp_path / f"out{index}.onnx"
        code, _, stderr = invoke(
            source,
            "--method",
            "lsuv",
            "--all",
            "--seed",
            seed,
            "-o",
            out,
            "-q",
            env={"NETINIT_THREADS": threads},
        )
        assert code == 0, stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


def test_random_batch_is_the_seeds_own_stream(tmp_path: Path) -> None:
    """Without --data the batch is standard normal from the run seed's "lsuv batch" streams, so the
    same batch given with --data gives the same weights (the global RNG plays no part)."""
    source = FIXTURES / "mlp.onnx"
    model = onnx.load(source)
    batch = load_batch(model, None, 16, purpose_sequence(Seed(7, "explicit"), "lsuv batch"))
    np.savez(tmp_path / "batch.npz", **batch)
    np.random.seed(0)
    code, _, _ = invoke(source, "--method", "lsuv", "--all", "--seed", 7, "-o", tmp_path / "a.onnx", "-q")
    np.random.seed(1)
    code2, _, _ = invoke(
        source,
        "--method",
        "lsuv",
        "--all",
        "--seed",
        7,
        "--data",
        tmp_path / "batch.npz",
        "-o",
        tmp_path / "b.onnx",
    )
    assert code == code2 == 0
    a, b = initializers(tmp_path / "a.onnx"), initializers(tmp_path / "b.onnx")
    assert {k: v.tobytes() for k, v in a.items()} == {k: v.tobytes() for k, v in b.items()}
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "a.onnx").metadata_props}
    assert metadata["netinit.lsuv_batch"] == "random normal input [16, 8] (seed 7)"


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2 or 3, nothing written


def tiny_onnx(path: Path, tail: list[onnx.NodeProto], extra: tuple[TensorProto, ...] = ()) -> Path:
    """x[batch, 8] @ w[8, 8] -> h, then ``tail`` (h -> y)."""
    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), *tail],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [weight, *extra],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.x", 1)]
    )
    onnx.save(model, path)
    return path


def bad_cases(tmp: Path) -> dict[str, tuple[list[object], int, str]]:
    cnn, mlp = tmp / "cnn.onnx", tmp / "mlp.onnx"
    np.savez(tmp / "name.npz", inputs=np.zeros((4, 3, 16, 16), np.float32))
    np.savez(tmp / "shape.npz", input=np.zeros((4, 3, 16, 15), np.float32))
    np.savez(tmp / "dtype.npz", input=np.zeros((4, 3, 16, 16), np.float64))
    np.savez(tmp / "zeros.npz", input=np.zeros((4, 8), np.float32))
    unknown_op = tiny_onnx(tmp / "unknown.onnx", [helper.make_node("Foo", ["h"], ["y"], domain="ai.x")])
    shape = numpy_helper.from_array(np.array([7, -1], np.int64), "shape")
    bad_reshape = tiny_onnx(
        tmp / "reshape.onnx", [helper.make_node("Reshape", ["h", "shape"], ["y"])], (shape,)
    )
    lsuv = ["--method", "lsuv", "--all"]
    return {
        "data name": (
            [cnn, *lsuv, "--data", tmp / "name.npz"],
            2,
            "--data name.npz has an array 'inputs' that is no graph input, name the arrays by input (input)",
        ),
        "data shape": (
            [cnn, *lsuv, "--data", tmp / "shape.npz"],
            2,
            "--data shape.npz: input 'input' has size 15 on axis 3 but the model wants 16, reshape or crop it",
        ),
        "data dtype": (
            [cnn, *lsuv, "--data", tmp / "dtype.npz"],
            2,
            "--data dtype.npz: input 'input' is float64 but the model wants float, convert it (x.astype('float'))",
        ),
        "data unreadable": (
            [cnn, *lsuv, "--data", tmp / "nothing.npz"],
            2,
            f"--data {tmp / 'nothing.npz'} cannot be read (No such file or directory), "
            "save it with np.savez or np.save",
        ),
        "integer input without data": (
            [FIXTURES / "onnx" / "block.dynamo.onnx", *lsuv],
            2,
            "input 'ids' is int64, which cannot be drawn at random, give its values with --data FILE.npz",
        ),
        "ort cannot load": ([unknown_op, *lsuv], 3, "onnxruntime cannot load the model: "),
        "ort cannot run": ([bad_reshape, *lsuv], 3, "onnxruntime cannot run the model on the batch: "),
        "constant layer": (
            [mlp, *lsuv, "--data", tmp / "zeros.npz"],
            3,
            "layer '/fc1/Gemm' (Gemm, weight 'fc1.weight'): its output '/fc1/Gemm_output_0' is constant "
            "(std 0) on the batch, LSUV cannot rescale it; check the batch, or leave the layer out with "
            "--rule 'fc1.weight=orthogonal'",
        ),
        "safetensors": (
            [tmp / "mlp.safetensors", *lsuv],
            2,
            "--method lsuv runs the model's graph and needs an ONNX model; mlp.safetensors is safetensors: "
            "choose another method (e.g. orthogonal)",
        ),
        "data without lsuv": (
            [cnn, "--all", "--data", tmp / "zeros.npz"],
            2,
            "--data gives LSUV its batch; it needs --method lsuv",
        ),
        "data and batch size": (
            [cnn, *lsuv, "--data", tmp / "zeros.npz", "--batch-size", 4],
            2,
            "--batch-size sets the size of the random batch; --data gives the batch itself",
        ),
        "lsuv in a rule": (
            [cnn, "--all", "--rule", "conv*=lsuv"],
            2,
            "--rule conv*=lsuv: lsuv applies to the whole model, give it with --method lsuv "
            "(a rule can keep tensors out of it: 'conv*=keep')",
        ),
        "tolerance above std": (
            [cnn, "--method", "lsuv(std=0.5, tol=0.5)"],
            2,
            "lsuv(tol=0.5) must be above 0",
        ),
    }


BAD = [
    "data name",
    "data shape",
    "data dtype",
    "data unreadable",
    "integer input without data",
    "ort cannot load",
    "ort cannot run",
    "constant layer",
    "safetensors",
    "data without lsuv",
    "data and batch size",
    "lsuv in a rule",
    "tolerance above std",
]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing output"])
def test_bad_input_is_one_line_and_nothing_is_written(case: str, existing: bool, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("cnn.onnx", "mlp.onnx", "mlp.safetensors"):
        shutil.copy(FIXTURES / name, inputs / name)
    cases = bad_cases(inputs)
    assert sorted(cases) == sorted(BAD)
    args, exit_code, message = cases[case]
    outputs = tmp_path / "out"
    outputs.mkdir()
    out = outputs / ("out.safetensors" if case == "safetensors" else "out.onnx")
    if existing:
        out.write_bytes(b"previous output")
    before = {path: path.read_bytes() for path in inputs.iterdir()}
    code, stdout, stderr = invoke(*args, "-o", out, "-q", *(["-f"] if existing else []))
    assert code == exit_code, stderr
    assert stderr.startswith(f"netinit: error: {message}") and stderr.count("\n") == 1, stderr
    assert stdout == ""
    assert sorted(outputs.iterdir()) == ([out] if existing else []), "a file was left in the output folder"
    if existing:
        assert out.read_bytes() == b"previous output"
    assert {path: path.read_bytes() for path in inputs.iterdir()} == before


def test_without_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    code, stdout, stderr = invoke(
        FIXTURES / "mlp.onnx", "--method", "lsuv", "--all", "-o", tmp_path / "o.onnx"
    )
    assert code == 2 and stdout == ""
    assert stderr == "netinit: error: --method lsuv needs onnxruntime: pip install 'netinit[lsuv]'\n"
    assert not list(tmp_path.iterdir())


def test_a_model_over_the_protobuf_limit_is_refused_before_generating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import netinit_cli.lsuv.stage as stage

    monkeypatch.setattr(stage, "PROTOBUF_LIMIT", 1000)  # cnn.onnx holds 2,664 bytes of tensors
    generated: list[str] = []
    monkeypatch.setattr(stage.Filler, "generate", lambda self, entry: generated.append(entry.param.name))
    code, _, stderr = invoke(FIXTURES / "cnn.onnx", "--method", "lsuv", "--all", "-o", tmp_path / "o.onnx")
    assert code == 3 and not generated and not list(tmp_path.iterdir())
    assert stderr == (
        "netinit: error: cnn.onnx holds 2,664 bytes of tensors; LSUV hands onnxruntime the model in memory, "
        "which protobuf limits to 1,000 bytes\n"
    )
