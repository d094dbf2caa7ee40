"""Round trips through the safetensors backend: streaming writer, shards, templates, ties."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from netinit_cli.dtypes import numpy_dtype
from netinit_cli.formats.safetensors_io import open_safetensors
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


def test_round_trip_fills_planned_and_copies_the_rest_byte_identical(small_file: Path, tmp_path: Path) -> None:
    model = open_safetensors(small_file)
    calls: list[str] = []
    plan = plan_fill(model.params, {Role.WEIGHT, Role.EMBEDDING})
    out = tmp_path / "out.safetensors"
    result = model.write(out, plan, fill_sevens(calls), {"netinit.seed": "3"}, overwrite=False)
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
