"""Inputs that change while netinit reads them, the tensor-count limit, and zero-element tensors
(issue 13, items 2, 13, 14 and 16).

A concurrent writer is simulated deterministically: a hook placed between two stages of the real
pipeline renames a new file over the input (what another process's ``--in-place`` does),
rewrites it in place, or truncates it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from netinit_cli import api
from netinit_cli.classify import values as values_module
from netinit_cli.classify.values import fixed_transform, sample_elements, structured_value_note
from netinit_cli.errors import InputError
from netinit_cli.formats.onnx import reader as onnx_reader
from netinit_cli.formats.safetensors import bundle as st_bundle
from netinit_cli.formats.safetensors import header as st_header
from netinit_cli.model import Layout, Role

ROOT = Path(__file__).resolve().parent.parent
CHANGED_SIZE = "changed size while being read"


def tensors(seed: int, extra: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    found = {
        "encoder.layer.0.dense.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "encoder.layer.0.dense.bias": rng.standard_normal(64).astype(np.float32),
        "encoder.layer.0.LayerNorm.weight": rng.standard_normal(64).astype(np.float32),
    }
    if extra:  # shifts every offset of the replacement file
        found["a.extra"] = rng.standard_normal(100).astype(np.float64)
    return found


def after_reading(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` once the read stage is done (headers and graphs read, data not yet)."""
    classify = api.classify

    def hooked(opened: Any, template: Any) -> Any:
        action()
        return classify(opened, template)

    monkeypatch.setattr(api, "classify", hooked)


def replace_by_rename(path: Path, write: Callable[[Path], None]) -> None:
    """What a concurrent ``--in-place`` does: a new file renamed over ``path``."""
    new = path.with_name(path.name + ".new")
    write(new)
    os.replace(new, path)


def same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


# ---------------------------------------------------------------- item 2: one open file


def test_a_safetensors_input_renamed_over_while_read_is_read_from_the_file_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, out = tmp_path / "model.safetensors", tmp_path / "out.safetensors"
    save_file(tensors(1), str(model))
    after_reading(
        monkeypatch, lambda: replace_by_rename(model, lambda p: save_file(tensors(2, extra=True), str(p)))
    )
    api.initialize(model, out)  # nothing missing: every tensor is copied
    assert same_tensors(load_file(str(out)), tensors(1))


def test_a_shard_renamed_over_while_read_is_read_from_the_file_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = tensors(1)
    names = sorted(parts)
    save_file({n: parts[n] for n in names[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: parts[n] for n in names[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {n: f"model-0000{1 + (i >= 2)}-of-00002.safetensors" for i, n in enumerate(names)}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    replacement = {n: np.zeros_like(parts[n]) for n in names[:2]} | {"a.extra": np.ones(9, np.float64)}
    shard = tmp_path / "model-00001-of-00002.safetensors"
    after_reading(monkeypatch, lambda: replace_by_rename(shard, lambda p: save_file(replacement, str(p))))
    out = tmp_path / "out.safetensors.index.json"
    report = api.initialize(index, out)
    written: dict[str, np.ndarray] = {}
    for path in report.files[:-1]:
        written |= load_file(str(path))
    assert same_tensors(written, parts)


def test_an_index_replaced_while_its_shards_are_opened_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file(tensors(1), str(tmp_path / "a.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(tensors(1), "a.safetensors")}))
    read_header = st_bundle.read_header

    def replacing(path: Path) -> Any:
        replace_by_rename(index, lambda p: p.write_text(index.read_text() + " "))
        return read_header(path)

    monkeypatch.setattr(st_bundle, "read_header", replacing)
    with pytest.raises(InputError) as raised:
        st_bundle.open_safetensors(index)
    assert str(raised.value) == (
        f"{index}: the file changed while being read (it was replaced while its shards were opened); "
        "another process is writing it: run netinit again once it is done"
    )


def onnx_with_external_data(folder: Path) -> Path:
    """A Gemm whose weight (1 KiB) lives in ``w.data`` beside the model."""
    weight = numpy_helper.from_array(np.arange(256, dtype=np.float32).reshape(16, 16) / 7, "fc.weight")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "fc.weight"], ["Y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="w.data", size_threshold=0)
    return path


def test_onnx_external_data_rewritten_in_place_while_read_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = onnx_with_external_data(tmp_path)
    data = tmp_path / "w.data"
    size, mtime = data.stat().st_size, data.stat().st_mtime_ns

    def rewrite() -> None:
        with open(data, "r+b") as handle:  # same inode, same size, other bytes
            handle.write(b"\xff" * size)
        os.utime(data, ns=(mtime + 10**9, mtime + 10**9))

    after_reading(monkeypatch, rewrite)
    with pytest.raises(InputError) as raised:
        api.initialize(model, tmp_path / "out.onnx")
    assert str(raised.value).startswith(f"{data.resolve()}: the file changed while being read")
    assert not (tmp_path / "out.onnx").exists()


def test_an_onnx_model_replaced_while_its_data_is_checked_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A concurrent --in-place: a new model renamed over the path, then the old data file removed.
    model = onnx_with_external_data(tmp_path)
    (tmp_path / "other").mkdir()
    other = onnx_with_external_data(tmp_path / "other")
    resolve = onnx_reader.resolve_external

    def replacing(*args: Any) -> Any:
        os.replace(other, model)
        (tmp_path / "w.data").unlink()
        return resolve(*args)

    monkeypatch.setattr(onnx_reader, "resolve_external", replacing)
    with pytest.raises(InputError) as raised:
        api.initialize(model, tmp_path / "out.onnx")
    assert str(raised.value) == (
        f"{model}: the file changed while being read (it was replaced while its external data was "
        "checked); another process is writing it: run netinit again once it is done"
    )


# ---------------------------------------------------------------- item 14: shrinking inputs


def run_hooked(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process, after ``script`` (which may patch the pipeline)."""
    code = textwrap.dedent(script) + "\nfrom netinit_cli.cli import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_an_input_that_shrinks_between_two_reads_is_an_input_error_not_sigbus(tmp_path: Path) -> None:
    # Tie folding reads lm_head and the embedding: the file shrinks between the two reads.
    model = tmp_path / "model.safetensors"
    embedding = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    save_file({"model.embed_tokens.weight": embedding, "lm_head.weight": embedding.copy()}, str(model))
    result = run_hooked(
        f"""
        import os
        from netinit_cli.formats.safetensors.bundle import SafetensorsModel
        read_array = SafetensorsModel.read_array
        def shrinking(self, name, *args, **kwargs):
            values = read_array(self, name, *args, **kwargs)
            os.truncate({str(model)!r}, 4096)
            return values
        SafetensorsModel.read_array = shrinking
        """,
        str(model),
        "-o",
        str(tmp_path / "out.safetensors"),
    )
    assert result.returncode == 3, (result.returncode, result.stderr[-500:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"netinit: error: {model}: the file {CHANGED_SIZE}")
    assert not (tmp_path / "out.safetensors").exists()


def test_an_input_that_shrinks_before_its_tensors_are_copied_is_an_input_error(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    save_file(tensors(1), str(model))
    result = run_hooked(
        f"""
        import os
        from netinit_cli import api
        classify = api.classify
        def shrinking(opened, template):
            os.truncate({str(model)!r}, 300)
            return classify(opened, template)
        api.classify = shrinking
        """,
        str(model),
        "-o",
        str(tmp_path / "out.safetensors"),
    )
    assert result.returncode == 3, result.stderr[-500:]
    assert result.stderr.startswith(f"netinit: error: {model}: the file {CHANGED_SIZE} (it ended at byte ")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_onnx_external_data_that_shrinks_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = onnx_with_external_data(tmp_path)
    data = tmp_path / "w.data"
    after_reading(monkeypatch, lambda: os.truncate(data, 100))
    with pytest.raises(InputError) as raised:
        api.initialize(model, tmp_path / "out.onnx")  # the weight is kept: copied
    assert str(raised.value).startswith(
        f"{data.resolve()}: the file {CHANGED_SIZE} (1024 bytes when checked, 100 now)"
    )


def test_a_file_written_in_place_during_the_copy_is_refused_before_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same size, same inode, new modification time: caught by the check before the rename.
    model, out = tmp_path / "model.safetensors", tmp_path / "out.safetensors"
    save_file(tensors(1), str(model))
    copy_range = st_writer_module().copy_range

    def touching(*args: Any, **kwargs: Any) -> None:
        copy_range(*args, **kwargs)
        stat = model.stat()
        os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    monkeypatch.setattr(st_writer_module(), "copy_range", touching)
    with pytest.raises(InputError, match="the file changed while being read"):
        api.initialize(model, out)
    assert not out.exists()


def st_writer_module() -> Any:
    from netinit_cli.formats.safetensors import writer

    return writer


# ---------------------------------------------------------------- item 13: one tensor-count limit


def test_the_limit_is_high_enough_for_the_largest_moe_checkpoints_and_documented() -> None:
    # DeepSeek-V3 (FP8) ~91k tensors, Kimi K2 (FP8) ~138k, a GPTQ Kimi K2 ~277k; the issue's
    # 300,000-tensor manifest was written but refused on reading.
    assert st_header.MAX_TENSORS >= 300_000
    assert f"{st_header.MAX_TENSORS:,} tensors" in (ROOT / "README.md").read_text()


def manifest(path: Path, count: int) -> Path:
    path.write_text(json.dumps({f"layers.{i}.weight": {"shape": [2, 2]} for i in range(count)}))
    return path


def test_reading_and_writing_share_one_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st_header, "MAX_TENSORS", 4)
    out = tmp_path / "four.safetensors"
    api.initialize(None, out, like=manifest(tmp_path / "four.json", 4))
    assert len(api.inspect(out).entries) == 4  # what is written is read back
    with pytest.raises(InputError) as raised:
        api.initialize(None, tmp_path / "five.safetensors", like=manifest(tmp_path / "five.json", 5))
    assert str(raised.value) == (
        "five.json: 5 tensors, more than netinit's limit of 4 tensors per checkpoint "
        "(for reading and writing); split the checkpoint"
    )
    assert not (tmp_path / "five.safetensors").exists()


def test_an_output_over_the_limit_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.safetensors"
    save_file(tensors(1), str(model))  # 3 tensors
    monkeypatch.setattr(st_header, "MAX_TENSORS", 4)
    out = tmp_path / "out.safetensors"
    with pytest.raises(InputError, match=r"out\.safetensors: 5 tensors, more than netinit's limit of 4 "):
        api.initialize(model, out, like=manifest(tmp_path / "two.json", 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "two.json"]


def test_a_bundle_over_the_limit_is_refused_whatever_its_shards_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight_map = {}
    for shard in ("a", "b"):
        names = {f"{shard}.{i}.weight": np.ones((2, 2), np.float32) for i in range(3)}
        save_file(names, str(tmp_path / f"{shard}.safetensors"))
        weight_map |= dict.fromkeys(names, f"{shard}.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    monkeypatch.setattr(st_header, "MAX_TENSORS", 4)
    with pytest.raises(InputError, match=r"model\.safetensors\.index\.json: 6 tensors, more than "):
        st_bundle.open_safetensors(index)


# ---------------------------------------------------------------- item 16: zero-element tensors


def test_zero_element_template_tensors_are_written_and_loaded(tmp_path: Path) -> None:
    template = tmp_path / "template.json"
    template.write_text(
        json.dumps(
            {
                "proj.weight": {"shape": [4, 3]},
                "empty.weight": {"shape": [0, 3]},
                "empty.bias": {"shape": [0]},
                "experts.scale": {"shape": [0, 2], "dtype": "BF16"},
                "buffer.ids": {"shape": [0], "dtype": "I64"},
            }
        )
    )
    out = tmp_path / "new.safetensors"
    report = api.initialize(None, out, like=template)
    assert not [note for note in report.notes if "was not written" in note]
    loaded = load_file(str(out))
    assert {name: values.shape for name, values in loaded.items()} == {
        "proj.weight": (4, 3),
        "empty.weight": (0, 3),
        "empty.bias": (0,),
        "experts.scale": (0, 2),
        "buffer.ids": (0,),
    }
    with safe_open(str(out), "np") as handle:  # the loader transformers uses
        assert handle.get_slice("empty.weight").get_shape() == [0, 3]
        assert handle.get_slice("buffer.ids").get_dtype() == "I64"


def test_zero_element_tensors_missing_from_a_bundle_are_created(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    save_file(tensors(1), str(model))
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"encoder.layer.0.adapter.weight": {"shape": [0, 64]}}))
    out = tmp_path / "out.safetensors"
    api.initialize(model, out, like=template)
    assert load_file(str(out))["encoder.layer.0.adapter.weight"].shape == (0, 64)


def test_a_zero_element_onnx_parameter_input_becomes_an_initializer(tmp_path: Path) -> None:
    inputs = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("fc.weight", TensorProto.FLOAT, [0, 3]),
        helper.make_tensor_value_info("fc.bias", TensorProto.FLOAT, [0]),
    ]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "fc.weight", "fc.bias"], ["Y"], transB=1)],
        "g",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path, out = tmp_path / "zero.onnx", tmp_path / "zero.init.onnx"
    onnx.save(model, str(path))
    api.initialize(path, out)
    written = onnx.load(str(out))
    assert {t.name: list(t.dims) for t in written.graph.initializer} == {"fc.weight": [0, 3], "fc.bias": [0]}
    assert [i.name for i in written.graph.input] == ["X"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"X": np.ones((2, 3), np.float32)})
    assert y.shape == (2, 0)


# ---------------------------------------------------------------- value checks read a sample


def sampled(values: np.ndarray) -> np.ndarray:
    """What a reader gives the value checks: the ranges of sample_elements, zeros elsewhere."""
    flat, found = values.reshape(-1), np.zeros(values.size, values.dtype)
    elements = sample_elements(values.shape)
    assert elements is not None
    for start, count in elements:
        found[start : start + count] = flat[start : start + count]
    return found.reshape(values.shape)


def dft_basis(n_fft: int, *, window: bool) -> np.ndarray:
    n = np.arange(n_fft)
    angle = 2 * np.pi * np.arange(n_fft // 2 + 1)[:, None] * n / n_fft
    basis = np.concatenate([np.cos(angle), np.sin(angle)]) * (np.hanning(n_fft) if window else 1)
    return basis[:, None, :].astype(np.float32)


CASES = {
    "arange": np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1),
    "arange-prefix": np.r_[np.arange(4096), np.ones(4096)].astype(np.float32).reshape(1, -1),
    "dft": dft_basis(64, window=True),
    "dft-plain": dft_basis(512, window=False),
    "dft-transposed": dft_basis(64, window=False)[:, 0, :].T.copy(),
    "average": np.full((4, 1, 3, 3), 1 / 9, np.float32),
    "ones": np.ones((8, 4, 3, 3), np.float32),
    "integers": np.random.default_rng(0).integers(-3, 4, (300, 70)).astype(np.float32),
    "normal": np.random.default_rng(1).standard_normal((3000, 33)).astype(np.float32),
    "constant-then-not": np.r_[np.full(5000, 0.25), np.arange(7000)].astype(np.float32).reshape(12, 1000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_value_checks_need_only_the_sample_a_reader_reads(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(values_module, "SAMPLED_FROM", 0)  # these are small: sample them anyway
    values = CASES[name]
    layout = Layout((1,), (0,), label="[out, in/g, k…]")
    assert fixed_transform(sampled(values), layout) == fixed_transform(values, layout)
    assert structured_value_note("t", Role.WEIGHT, sampled(values)) == structured_value_note(
        "t", Role.WEIGHT, values
    )


@pytest.mark.parametrize(
    ("values", "limit"),
    [
        # Trained-looking values: only the leading values and rows are read (about 80 KB).
        (np.random.default_rng(0).standard_normal((4096, 2048), np.float32), 100_000),
        # A constant (a candidate for a fixed transform): the spread sample is read too.
        (np.ones((4096, 2048), np.float32), 256_000),
    ],
    ids=["random", "constant"],
)
def test_classifying_a_large_tensor_reads_a_few_pages_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: np.ndarray, limit: int
) -> None:
    model = tmp_path / "model.safetensors"
    save_file({"encoder.dense.weight": values}, str(model))  # 32 MiB
    preadv, read = os.preadv, []

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        read.append(sum(len(b) for b in buffers))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    assert [e.param.name for e in api.inspect(model).entries] == ["encoder.dense.weight"]
    assert 0 < sum(read) < limit
