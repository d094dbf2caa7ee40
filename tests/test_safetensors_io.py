"""Round trips through the safetensors backend: streaming writer, shards, templates, ties."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from netinit_cli.classify.stage import classify, classify_with_template, template_params
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.fill import lazy_tensors
from netinit_cli.formats import open_template
from netinit_cli.formats.safetensors.bundle import open_safetensors
from netinit_cli.model import Action, Param, Planned, Role


def fill_sevens(calls: list[str]):  # type: ignore[no-untyped-def]
    """A fake ``produce``: 7 everywhere, in the tensor's dtype; records the call order."""

    def produce(planned: Planned) -> np.ndarray:
        calls.append(planned.param.name)
        return np.full(planned.param.shape, 7, numpy_dtype(planned.param.dtype))

    return produce


def plan_fill(params: list[Param], roles: set[Role]) -> list[Planned]:
    return [Planned(p, Action.FILL if p.role in roles else Action.KEEP) for p in params]


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    tensors = {
        "encoder.layer.0.dense.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "encoder.layer.0.dense.bias": rng.standard_normal(8).astype(np.float32),
        "encoder.layer.0.LayerNorm.weight": np.ones(8, np.float32),
        "embeddings.word_embeddings.weight": rng.standard_normal((10, 4)).astype(ml_dtypes.bfloat16),
        "embeddings.position_ids": np.arange(6, dtype=np.int64)[None],
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def test_round_trip_fills_planned_and_copies_the_rest_byte_identical(
    small_file: Path, tmp_path: Path
) -> None:
    model = open_safetensors(small_file)
    calls: list[str] = []
    plan = plan_fill(classify(model).params, {Role.WEIGHT, Role.EMBEDDING})
    out = tmp_path / "out.safetensors"
    result = model.write(
        out, plan, lazy_tensors(plan, fill_sevens(calls)), {"netinit.seed": "3"}, overwrite=False
    )
    assert result.paths == [out]
    before, after = load_file(str(small_file)), load_file(str(out))
    assert set(before) == set(after)
    assert sorted(calls) == ["embeddings.word_embeddings.weight", "encoder.layer.0.dense.weight"]
    assert after["embeddings.word_embeddings.weight"].dtype == ml_dtypes.bfloat16
    assert np.all(after["embeddings.word_embeddings.weight"].astype(np.float32) == 7)
    for name in ("encoder.layer.0.dense.bias", "encoder.layer.0.LayerNorm.weight", "embeddings.position_ids"):
        assert after[name].tobytes() == before[name].tobytes()
        assert after[name].dtype == before[name].dtype
    header = json.loads(out.read_bytes()[8 : 8 + int.from_bytes(out.read_bytes()[:8], "little")])
    assert header["__metadata__"] == {"format": "pt", "netinit.seed": "3"}


def _header(path: Path) -> dict[str, object]:
    raw = path.read_bytes()
    return json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # type: ignore[no-any-return]


def test_output_loads_in_torch_and_has_the_reference_writer_layout(small_file: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as torch_load

    model = open_safetensors(small_file)
    calls: list[str] = []
    out = tmp_path / "out.safetensors"
    model.write(
        out,
        plan_fill(classify(model).params, {Role.WEIGHT, Role.EMBEDDING}),
        lazy_tensors(plan_fill(classify(model).params, {Role.WEIGHT, Role.EMBEDDING}), fill_sevens(calls)),
        {},
        overwrite=False,
    )
    loaded = torch_load(str(out))
    assert loaded["embeddings.word_embeddings.weight"].dtype == torch.bfloat16
    assert torch.all(loaded["encoder.layer.0.dense.weight"] == 7)
    # Same tensor order, offsets and padding as safetensors' own writer would produce.
    reference = tmp_path / "reference.safetensors"
    save_file(load_file(str(out)), str(reference), metadata={"format": "pt"})
    assert out.read_bytes() == reference.read_bytes()
    assert int.from_bytes(out.read_bytes()[:8], "little") % 8 == 0
    # produce() was called once per filled tensor, in write (offset) order.
    offsets = {name: spec["data_offsets"][0] for name, spec in _header(out).items() if name != "__metadata__"}  # type: ignore[union-attr,index]
    assert calls == sorted(calls, key=offsets.__getitem__)


def test_read_array_is_a_read_only_zero_copy_view(small_file: Path) -> None:
    model = open_safetensors(small_file)
    array = model.read_array("embeddings.word_embeddings.weight")
    assert array.dtype == ml_dtypes.bfloat16 and array.shape == (10, 4)
    assert not array.flags.writeable
    assert isinstance(array.base, np.memmap) or isinstance(array.base.base, np.memmap)  # type: ignore[union-attr]
    expected = load_file(str(small_file))["embeddings.word_embeddings.weight"]
    assert array.tobytes() == expected.tobytes()


def test_a_failing_produce_leaves_no_output_and_no_temp_files(small_file: Path, tmp_path: Path) -> None:
    model = open_safetensors(small_file)

    def produce(planned: Planned) -> np.ndarray:
        raise RuntimeError("generator crashed")

    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError):
        model.write(
            tmp_path / "out.safetensors",
            plan_fill(classify(model).params, {Role.WEIGHT}),
            lazy_tensors(plan_fill(classify(model).params, {Role.WEIGHT}), produce),
            {},
            overwrite=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_wrong_produce_output_is_an_internal_error(small_file: Path, tmp_path: Path) -> None:
    from netinit_cli.errors import NetinitError

    model = open_safetensors(small_file)
    plan = plan_fill(classify(model).params, {Role.WEIGHT})
    with pytest.raises(NetinitError, match=r"values produced for tensor .* are float64 \(8, 4\)"):
        model.write(
            tmp_path / "o.safetensors",
            plan,
            lazy_tensors(plan, lambda planned: np.zeros(planned.param.shape)),
            {},
            overwrite=False,
        )
    assert not (tmp_path / "o.safetensors").exists()


def test_existing_output_is_refused_without_overwrite(small_file: Path, tmp_path: Path) -> None:
    from netinit_cli.errors import OutputExistsError

    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    model = open_safetensors(small_file)
    with pytest.raises(OutputExistsError):
        model.write(
            out,
            plan_fill(classify(model).params, set()),
            lazy_tensors(plan_fill(classify(model).params, set()), fill_sevens([])),
            {},
            overwrite=False,
        )
    assert out.read_bytes() == b"keep me"


def test_default_output_names(small_file: Path) -> None:
    assert open_safetensors(small_file).default_output() == small_file.with_name("model.init.safetensors")


# --- sharded bundles -----------------------------------------------------------------------------
@pytest.fixture
def gpt2_bundle(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=64, bos_token_id=0, eos_token_id=0
    )
    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").exists()
    return folder


def test_sharded_bundle_round_trip_keeps_the_split_and_recomputes_the_index(
    gpt2_bundle: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    model = open_safetensors(gpt2_bundle)  # a folder holding one index
    assert model.path.name == "model.safetensors.index.json"
    shards_in = sorted(p.name for p in gpt2_bundle.glob("model-*.safetensors"))
    assert len(shards_in) >= 3
    assert model.default_output() == gpt2_bundle / "model.init.safetensors.index.json"
    assert model.output_shard_names(model.default_output())[shards_in[0]] == shards_in[0].replace(
        "model-", "model.init-"
    )
    calls: list[str] = []
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "config.json").write_bytes((gpt2_bundle / "config.json").read_bytes())
    out = out_dir / "model.safetensors.index.json"
    result = model.write(
        out,
        plan_fill(classify(model).params, {Role.WEIGHT}),
        lazy_tensors(plan_fill(classify(model).params, {Role.WEIGHT}), fill_sevens(calls)),
        {"netinit": "1"},
        overwrite=False,
    )
    assert result.paths[-1] == out
    assert sorted(p.name for p in result.paths[:-1]) == shards_in
    index = json.loads(out.read_text())
    tensors = {}
    for shard in shards_in:
        tensors.update(load_file(str(out_dir / shard)))
        original = load_file(str(gpt2_bundle / shard))
        assert set(original) == set(load_file(str(out_dir / shard)))  # same split
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    assert index["metadata"]["total_parameters"] == sum(t.size for t in tensors.values())
    assert index["weight_map"] == {
        name: shard for shard in shards_in for name in load_file(str(out_dir / shard))
    }
    assert len(calls) == 8 and len(set(calls)) == 8
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out_dir)
    assert float(reloaded.transformer.h[0].attn.c_attn.weight.detach()[0, 0]) == 7.0
    original = load_file(str(gpt2_bundle / shards_in[0]))
    for name, value in original.items():
        if not name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            assert tensors[name].tobytes() == value.tobytes()


def test_index_entries_stored_nowhere_are_reported_and_created_from_a_template(
    gpt2_bundle: Path, tmp_path: Path
) -> None:
    index_path = gpt2_bundle / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["transformer.extra.weight"] = sorted(set(index["weight_map"].values()))[0]
    index_path.write_text(json.dumps(index))
    model = open_safetensors(index_path)
    assert model.index_missing == {"transformer.extra.weight": sorted(set(index["weight_map"].values()))[0]}
    assert any("stored in no shard: transformer.extra.weight" in note for note in classify(model).notes)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"transformer.extra.weight": {"shape": [4, 32], "dtype": "F32"}}))
    merged = classify_with_template(model, open_template(manifest))
    created = next(p for p in merged.params if p.name == "transformer.extra.weight")
    assert not created.has_data and created.role == Role.WEIGHT
    out = tmp_path / "model.safetensors.index.json"
    plan = plan_fill(merged.params, {Role.WEIGHT})
    model.write(out, plan, lazy_tensors(plan, fill_sevens([])), {}, overwrite=False)
    written = json.loads(out.read_text())["weight_map"]
    assert written["transformer.extra.weight"] == index["weight_map"]["transformer.extra.weight"]
    assert np.all(
        load_file(str(tmp_path / written["transformer.extra.weight"]))["transformer.extra.weight"] == 7
    )


# --- templates, new checkpoints, ties ------------------------------------------------------------
def test_manifest_creates_a_whole_checkpoint(tmp_path: Path) -> None:
    from netinit_cli.formats.safetensors.template import new_safetensors

    manifest = tmp_path / "template.json"
    manifest.write_text(
        json.dumps(
            {
                "encoder.dense.weight": {"shape": [6, 4], "dtype": "BF16"},
                "encoder.dense.bias": {"shape": [6]},
                "encoder.norm.weight": {"shape": [6], "dtype": "F16"},
            }
        )
    )
    params = template_params(open_template(manifest))
    assert [(p.name, p.dtype, p.role, p.has_data) for p in params] == [
        ("encoder.dense.weight", "BF16", Role.WEIGHT, False),
        ("encoder.dense.bias", "F32", Role.BIAS, False),
        ("encoder.norm.weight", "F16", Role.NORM_SCALE, False),
    ]
    out = tmp_path / "new.safetensors"
    model = new_safetensors(out)
    assert model.default_output() == out
    calls: list[str] = []
    plan = [Planned(p, Action.FILL) for p in classify_with_template(model, open_template(manifest)).params]
    model.write(
        out,
        plan,
        lazy_tensors(plan, fill_sevens(calls)),
        {"netinit.method": "x"},
        overwrite=False,
    )
    loaded = load_file(str(out))
    assert loaded["encoder.dense.weight"].dtype == ml_dtypes.bfloat16 and loaded[
        "encoder.dense.weight"
    ].shape == (6, 4)
    assert loaded["encoder.norm.weight"].dtype == np.float16
    assert sorted(calls) == sorted(loaded)
    assert _header(out)["__metadata__"] == {"netinit.method": "x"}


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (
            {"w": {"shape": [2, -1]}},
            "template.json: tensor 'w': shape [2, -1] must be a list of non-negative integers",
        ),
        ({"w": {"shape": [2], "dtype": "f32"}}, "template.json: tensor 'w': unknown dtype \"f32\""),
        ({"w": {"shape": [2], "dtpye": "F32"}}, "template.json: tensor 'w': unknown field(s) dtpye"),
        ({}, "template.json: the manifest lists no tensors"),
    ],
)
def test_bad_manifests_are_clear_input_errors(tmp_path: Path, content: object, error: str) -> None:
    from netinit_cli.errors import InputError

    manifest = tmp_path / "template.json"
    manifest.write_text(json.dumps(content))
    with pytest.raises(InputError) as raised:
        open_template(manifest)
    assert str(raised.value).startswith(error)


def test_template_mismatch_is_noted_not_added(small_file: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "t.json"
    manifest.write_text(
        json.dumps({"encoder.layer.0.dense.weight": {"shape": [4, 8]}, "head.weight": {"shape": [2, 8]}})
    )
    model = open_safetensors(small_file)
    merged = classify_with_template(model, open_template(manifest))
    assert (
        "tensor 'encoder.layer.0.dense.weight': the template has [4, 8] F32 but the bundle stores [8, 4] F32; kept as stored"
        in merged.notes
    )
    assert [p.name for p in merged.params if not p.has_data] == ["head.weight"]


def test_identical_tied_embeddings_are_filled_once_and_written_under_both_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    embedding = rng.standard_normal((16, 4)).astype(np.float32)
    path = tmp_path / "tied.safetensors"
    save_file(
        {
            "model.embed_tokens.weight": embedding,
            "lm_head.weight": embedding.copy(),
            "model.norm.weight": np.ones(4, np.float32),
        },
        str(path),
    )
    model = open_safetensors(path)
    embed = next(p for p in classify(model).params if p.name == "model.embed_tokens.weight")
    assert embed.aliases == ("lm_head.weight",)
    assert "lm_head.weight" not in [p.name for p in classify(model).params]
    calls: list[str] = []
    out = tmp_path / "out.safetensors"
    counter = iter(range(100))

    def produce(planned: Planned) -> np.ndarray:
        calls.append(planned.param.name)
        return np.full(planned.param.shape, next(counter), np.float32)

    model.write(
        out,
        plan_fill(classify(model).params, {Role.EMBEDDING}),
        lazy_tensors(plan_fill(classify(model).params, {Role.EMBEDDING}), produce),
        {},
        overwrite=False,
    )
    loaded = load_file(str(out))
    assert calls == ["model.embed_tokens.weight"]
    assert np.array_equal(loaded["lm_head.weight"], loaded["model.embed_tokens.weight"])
    assert set(loaded) == {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}


def test_different_bytes_are_not_tied(tmp_path: Path) -> None:
    path = tmp_path / "untied.safetensors"
    save_file(
        {
            "model.embed_tokens.weight": np.zeros((4, 2), np.float32),
            "lm_head.weight": np.ones((4, 2), np.float32),
        },
        str(path),
    )
    assert all(p.aliases == () for p in classify(open_safetensors(path)).params)


# --- bounded memory ------------------------------------------------------------------------------
@pytest.mark.slow
def test_streaming_writer_peak_memory_is_about_one_tensor(tmp_path: Path) -> None:
    import tracemalloc

    from netinit_cli.formats.safetensors.template import new_safetensors

    tensor_bytes = 8 * 1024 * 1024
    count = 24  # 192 MiB of data
    params = [
        Param(f"layers.{i}.dense.weight", (tensor_bytes // 4 // 1024, 1024), "F32", has_data=False)
        for i in range(count)
    ]
    big = tmp_path / "big.safetensors"
    creator = new_safetensors(big)
    plan = [Planned(p, Action.FILL) for p in params]
    tracemalloc.start()
    creator.write(big, plan, lazy_tensors(plan, fill_sevens([])), {}, overwrite=False)
    _, create_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert big.stat().st_size > count * tensor_bytes
    assert create_peak < 2 * tensor_bytes  # one produced tensor at a time, not the model

    model = open_safetensors(big)
    half = [Planned(p, Action.FILL if i % 2 else Action.KEEP) for i, p in enumerate(classify(model).params)]
    tracemalloc.start()
    model.write(tmp_path / "out.safetensors", half, lazy_tensors(half, fill_sevens([])), {}, overwrite=False)
    _, rewrite_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rewrite_peak < 2 * tensor_bytes
    copied = open_safetensors(tmp_path / "out.safetensors")
    assert (
        copied.read_array("layers.0.dense.weight").tobytes()
        == model.read_array("layers.0.dense.weight").tobytes()
    )


def test_folder_resolution(tmp_path: Path) -> None:
    from netinit_cli.errors import InputError

    # Trained-looking values: zeros would add a note on the weight's values.
    tensors = {"dense.weight": np.array([[0.3, -0.1], [0.2, 0.5]], np.float32)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert open_safetensors(tmp_path).path.name == "model.safetensors"
    save_file(tensors, str(tmp_path / "model.init.safetensors"))  # a previous netinit output beside it
    model = open_safetensors(tmp_path)
    assert model.path.name == "model.safetensors"
    assert classify(model).notes == [f"{tmp_path} holds 2 .safetensors files; using model.safetensors"]
    (tmp_path / "model.safetensors").unlink()
    save_file(tensors, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError) as raised:
        open_safetensors(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: the folder holds 2 .safetensors files (model.init.safetensors, other.safetensors); give one of them"
    )
