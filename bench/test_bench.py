"""Tests of the benchmark harness itself (run: .venv/bin/python -m pytest -q bench/test_bench.py).

They use tiny inputs, so they take a few seconds and need no netinit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor
import make_data
import run
from make_data import Sizes

TINY = Sizes(hidden=64, intermediate=48, llama_layers=2, bert_layers=1)


def test_bundle_loads_with_the_names_and_shapes_written(tmp_path: Path) -> None:
    tensors = make_data.transformer_tensors(TINY)
    size = make_data.write_safetensors(tmp_path / "m.safetensors", tensors, np.random.default_rng(0))
    loaded = load_file(tmp_path / "m.safetensors")
    assert {k: v.shape for k, v in loaded.items()} == {t.name: t.shape for t in tensors}
    assert size == (tmp_path / "m.safetensors").stat().st_size
    assert loaded["model.layers.0.mlp.up_proj.weight"].shape == (48, 64)
    assert loaded["bert.encoder.layer.0.output.dense.bias"].shape == (64,)
    assert 0.01 < float(loaded["model.layers.1.mlp.down_proj.weight"].std()) < 0.03


def test_sharded_index_covers_every_tensor_once(tmp_path: Path) -> None:
    tensors = make_data.transformer_tensors(TINY)
    total = make_data.write_sharded(tmp_path, tensors, np.random.default_rng(0), shard_bytes=30_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total == sum(t.nbytes for t in tensors)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    found = {name: shard for shard in shards for name in load_file(tmp_path / shard)}
    assert found == index["weight_map"]


def test_onnx_model_runs_and_its_external_data_is_page_aligned(tmp_path: Path) -> None:
    make_data.write_onnx(tmp_path / "m.onnx", 32, 24, 2, np.random.default_rng(0))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (logits,) = session.run(None, {"input": np.ones((3, 32), np.float32)})
    assert logits.shape == (3, 24) and np.isfinite(logits).all()
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    offsets = [int(e.value) for t in model.graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) == len(model.graph.initializer) and all(
        o % make_data.ONNX_ALIGNMENT == 0 for o in offsets
    )


def test_dataset_is_reused_when_the_spec_matches_and_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    built = make_data.bundle(quick=True, root=tmp_path)
    stamp = built.model.stat().st_mtime_ns
    assert make_data.bundle(quick=True, root=tmp_path).model.stat().st_mtime_ns == stamp
    with open(built.model, "ab") as f:
        f.write(b"x")
    rebuilt = make_data.bundle(quick=True, root=tmp_path)
    assert rebuilt.model.stat().st_size == built.total_bytes
    assert rebuilt.float_values == sum(t.count for t in make_data.transformer_tensors(make_data.QUICK))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_floor_writes_exactly_count_uniform_values(tmp_path: Path, threads: int) -> None:
    count = 3 * floor.CHUNK_VALUES + 12345
    floor.write_floor(str(tmp_path / "f.bin"), count, threads)
    values = np.fromfile(tmp_path / "f.bin", dtype=np.float32)
    assert values.size == count
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 5 / np.sqrt(12 * count)  # five standard errors


def _case(code: str, data_folder: Path) -> run.Case:
    data = make_data.Dataset("tiny-bundle", data_folder, data_folder / "m", 10, 4, 40)
    return run.Case(name="probe", what="probe", argv=lambda out: [sys.executable, "-c", code], data=data)


def test_run_once_measures_peak_rss_and_records_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "OUT_ROOT", tmp_path / "out")
    touch_300_mb = "import numpy as np; a = np.ones(300_000_000, np.uint8); print(a.sum())"
    measured = run.run_once(_case(touch_300_mb, tmp_path), timeout=60, log=tmp_path / "log")
    assert measured.returncode == 0 and measured.max_rss >= 300e6 and measured.wall > 0
    failing = "import sys; print('first'); sys.exit('netinit: error: the last line')"
    failed = run.run_once(_case(failing, tmp_path), timeout=60, log=tmp_path / "log")
    assert failed.returncode == 1 and failed.error == "exit 1: netinit: error: the last line"
    slow = run.run_once(_case("import time; time.sleep(30)", tmp_path), timeout=0.5, log=tmp_path / "log")
    assert slow.returncode == -9 and "killed after" in slow.error and slow.wall < 10


def test_child_environment_drops_the_openblas_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1000")
    env = run.child_env({"NETINIT_THREADS": "1"})
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env and env["NETINIT_THREADS"] == "1"


def _measured(
    name: str, walls: list[float], rss: float = 100e6, digest: str = "", data_key: str = "bundle"
) -> run.Measured:
    data = make_data.Dataset(data_key, Path("."), Path("m"), 10, 4, 1_000_000_000)
    case = run.Case(name=name, what=name, argv=lambda out: [], data=data)
    runs = [run.Run(w, 0, 0, rss, 0, 0, 0.0, digest=digest) for w in walls]
    return run.Measured(case, runs)


def test_checks_use_medians_and_limits() -> None:
    results = {
        m.case.name: m
        for m in [
            _measured("floor", [1.0, 1.0, 9.0]),
            _measured("netinit-kaiming-uniform", [1.4, 1.5, 1.6], digest="a"),
            _measured("torch-kaiming-uniform", [12.0, 13.0, 14.0]),
            _measured("netinit-kaiming-normal", [2.0, 2.0, 2.0], rss=400e6, digest="b"),
            _measured("torch-kaiming-normal", [10.0, 10.0, 10.0]),
            _measured("netinit-kaiming-normal@1thread", [3.0], digest="b"),
            _measured("netinit-kaiming-uniform@1thread", [3.0], digest="c"),
            _measured("netinit-sharded", [1.0], rss=200e6, data_key="sharded"),
            _measured("netinit-kaiming-normal-nofsync", [1.4, 1.5, 1.6]),
        ]
    }
    found = {c.name: c.status for c in run.checks(results, largest=50_000_000)}
    assert found["kaiming uniform near the floor"] == "PASS"  # 1.5 / 1.0 (the median, not 9.0)
    assert found["kaiming uniform vs torch"] == "PASS"  # 1.5 / 13 = 0.115
    assert found["kaiming normal vs torch"] == "FAIL"  # 0.2
    assert found["orthogonal vs torch"] == "SKIP"
    assert found["bounded memory"] == "FAIL"  # 400 MB > 2 × 50 + 200 MB
    assert found["sharded bundle memory"] == "PASS"  # 200 MB < 25% of 1 GB
    assert found["byte-identical kaiming-normal"] == "PASS"
    assert found["byte-identical kaiming-uniform"] == "FAIL"
    assert found["kaiming normal vs torch, --no-fsync (no fsync, as the torch script)"] == "PASS"  # 0.15
    assert found["kaiming uniform vs torch, --no-fsync (no fsync, as the torch script)"] == "SKIP"


def test_torch_script_fills_norms_biases_and_matrices() -> None:
    torch = pytest.importorskip("torch")
    import torch_script

    tensors = {t.name: torch.full(t.shape, 7.0) for t in make_data.transformer_tensors(TINY)}
    torch.manual_seed(0)
    torch_script.reinitialize(tensors, torch_script.INITS["kaiming_normal"])
    assert torch.equal(tensors["model.layers.0.input_layernorm.weight"], torch.ones(64))
    assert torch.equal(tensors["bert.encoder.layer.0.output.LayerNorm.bias"], torch.zeros(64))
    assert torch.equal(tensors["bert.encoder.layer.0.intermediate.dense.bias"], torch.zeros(48))
    up = tensors["model.layers.0.mlp.up_proj.weight"]  # [48, 64]: fan_in 64, std sqrt(2/64)
    assert abs(float(up.std()) - (2 / 64) ** 0.5) < 5 * (2 / 64) ** 0.5 / (2 * up.numel()) ** 0.5


def test_a_case_killed_at_the_timeout_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "OUT_ROOT", tmp_path / "out")
    monkeypatch.setattr(run, "LOG_ROOT", tmp_path / "logs")
    slow = _case("import time; time.sleep(30)", tmp_path)
    twin = _case("print('fast')", tmp_path)
    twin.name, twin.repeated = "probe@1thread", False
    results = run.measure([slow, twin], reps=3, timeout=0.3)
    assert len(results["probe"].runs) == 1 and results["probe"].timed_out
    assert results["probe@1thread"].runs == []


def test_bf16_bundle_holds_the_float32_values_rounded(tmp_path: Path) -> None:
    import ml_dtypes

    tensors = make_data.transformer_tensors(TINY)
    make_data.write_safetensors(tmp_path / "f32.safetensors", tensors, np.random.default_rng(5))
    size = make_data.write_safetensors(
        tmp_path / "bf16.safetensors", tensors, np.random.default_rng(5), dtype="BF16"
    )
    assert size == (tmp_path / "bf16.safetensors").stat().st_size
    wide, narrow = load_file(tmp_path / "f32.safetensors"), load_file(tmp_path / "bf16.safetensors")
    for name, values in wide.items():
        assert narrow[name].dtype == ml_dtypes.bfloat16
        assert np.array_equal(narrow[name].view(np.uint16), values.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_startup_cases_run_netinit_end_to_end_on_the_fixtures_beside_import_numpy(tmp_path: Path) -> None:
    cases = {c.name: c for c in run.startup_cases()}
    assert list(cases) == [run.STARTUP_BASELINE, "startup-onnx", "startup-safetensors"]
    assert cases[run.STARTUP_BASELINE].argv(tmp_path)[1:] == ["-c", "import numpy"]
    onnx_argv = cases["startup-onnx"].argv(tmp_path)
    assert onnx_argv[:3] == run.NETINIT and onnx_argv[-3:] == ["-o", str(tmp_path / "cnn.onnx"), "--force"]
    assert (
        cases["startup-safetensors"].data.total_bytes
        == (run.REPO / "fixtures/cnn.safetensors").stat().st_size
    )
    assert cases["startup-onnx"].data.float_values == cases["startup-safetensors"].data.float_values > 0


def test_startup_checks_compare_with_import_numpy_and_show_cpu_time() -> None:
    def measured(name: str, walls: list[float], cpu: float) -> run.Measured:
        m = _measured(name, walls, data_key="cnn.onnx")
        m.runs = [run.Run(w, cpu, 0.0, 1e6, 0, 0, 0.0) for w in walls]
        return m

    results = {
        m.case.name: m
        for m in [
            measured(run.STARTUP_BASELINE, [0.1, 0.1, 0.5], cpu=0.1),
            measured("startup-onnx", [0.9, 0.9, 0.9], cpu=0.8),
            measured("startup-safetensors", [0.25, 0.3, 0.35], cpu=0.2),
        ]
    }
    found = {c.name: c for c in run.checks(results, largest=0)}
    assert found["start-up, startup-onnx"].status == "FAIL"  # 0.9 / 0.1 (medians)
    assert found["start-up, startup-safetensors"].status == "PASS"  # 3.0
    assert found["start-up, startup-safetensors"].measured.endswith("; CPU 0.20 s / 0.10 s = 2.00×")
    assert found["bounded memory"].status == "SKIP"
    assert found["kaiming uniform near the floor"].status == "SKIP"
