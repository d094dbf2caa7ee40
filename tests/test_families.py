"""Real checkpoint families end to end: `initialize(..., all=True)` on the committed bundles of
fixtures/generate_families.py (tiny GPT-2, LLaMA (+ bf16, + sharded), BERT, T5, ViT, ResNet,
Whisper), then load the output with transformers and check every tensor against an oracle taken
from the *model itself*: which torch module owns the tensor (Linear, transformers Conv1D, Conv,
Embedding, a norm, a BatchNorm buffer) decides its fans and its expected value, independently
of netinit's name rules.

The fixtures hold N(0.1, 0.5) noise in every float parameter and buffer, so a tensor that
netinit kept, or filled with the wrong constant, is caught.  No network: models are rebuilt
from the committed config.json.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FAMILIES_DIR

from netinit_cli import initialize
from netinit_cli.model import Action, Planned
from netinit_cli.report import Report

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
stats = pytest.importorskip("scipy.stats")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

FAMILIES = ["gpt2", "llama", "llama-bf16", "llama-sharded", "bert", "t5", "vit", "resnet", "whisper"]
INDEX_NAME = "model.safetensors.index.json"
SEED = 11
KS_P_MIN = 1e-4

# Methods, as strings, and the std an oracle computes for them from (fan_in, fan_out).
DEFAULT = "kaiming"
METHODS: dict[str, Callable[[int, int], float]] = {
    "kaiming": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),  # normal, fan_in, relu gain √2
    "kaiming(mode=fan_out)": lambda fan_in, fan_out: math.sqrt(2.0 / fan_out),
    "xavier(distribution=uniform)": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
}
# The extra methods run on the families whose layouts differ most: Conv1D [in, out], Conv2d, Conv1d.
EXTRA_METHOD_FAMILIES = ["gpt2", "resnet", "whisper"]
# ViT cls_token / position_embeddings: trunc_normal(0, 0.02) cut at ±2σ (timm's intent).
TOKEN_STD = 0.02 * float(stats.truncnorm(-2.0, 2.0).std())
# Buffers older transformers saved and current ones ignore on load: must come out byte-identical.
LEGACY_BUFFERS = re.compile(r"(?:\.attn\.bias|\.rotary_emb\.inv_freq|\.position_ids)$")


# ---------------------------------------------------------------------------------------------
# Running netinit once per (family, method) and loading the result.
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    family: str
    method: str
    source: Path
    out_dir: Path
    report: Report
    before: dict[str, Any]  # tensor name -> torch tensor, from the input bundle
    after: dict[str, Any]  # the same from the output bundle

    @property
    def entries(self) -> dict[str, Planned]:
        return {entry.param.name: entry for entry in self.report.entries}


def load_bundle(folder: Path) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(file))
    return tensors


def model_class(folder: Path) -> Any:
    config = json.loads((folder / "config.json").read_text())
    return getattr(transformers, config["architectures"][0])


@pytest.fixture(scope="module")
def run_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Run]:
    cache: dict[tuple[str, str], Run] = {}

    def run(family: str, method: str = DEFAULT) -> Run:
        if (family, method) not in cache:
            source = FAMILIES_DIR / family
            out_dir = tmp_path_factory.mktemp(re.sub(r"\W", "_", f"{family}-{method}"))
            shutil.copy(source / "config.json", out_dir / "config.json")
            sharded = (source / INDEX_NAME).exists()
            out = out_dir / (INDEX_NAME if sharded else "model.safetensors")
            report = initialize(source, out, method=method, all=True, seed=SEED)
            cache[family, method] = Run(
                family, method, source, out_dir, report, load_bundle(source), load_bundle(out_dir)
            )
        return cache[family, method]

    return run


@pytest.fixture(scope="module")
def loaded(run_of: Callable[[str, str], Run]) -> Callable[[str], tuple[Any, dict[str, Any]]]:
    cache: dict[str, tuple[Any, dict[str, Any]]] = {}

    def load(family: str) -> tuple[Any, dict[str, Any]]:
        if family not in cache:
            out_dir = run_of(family, DEFAULT).out_dir
            transformers.logging.set_verbosity_error()
            model, info = model_class(out_dir).from_pretrained(out_dir, output_loading_info=True)
            cache[family] = (model.eval(), info)
        return cache[family]

    return load


# ---------------------------------------------------------------------------------------------
# The oracle: what the owning torch module says a stored tensor is.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    kind: str  # "weight" | "embedding" | "token" | "constant" | "unchanged"
    fans: tuple[int, int] | None = None
    value: float | None = None


def _is_norm(module: Any) -> bool:
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    return isinstance(module, norms) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def memory_names(model: Any) -> dict[str, str]:
    """On-disk name -> in-memory name.  transformers 5 renames some families in memory (ViT's
    ``attention.attention.query`` is ``attention.q_proj``) and reverts the names on save."""
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: names on disk are the names in memory
        return {name: name for name in state}
    by_identity = {id(tensor): name for name, tensor in state.items()}
    on_disk = revert_weight_conversion(model, dict(state))
    return {disk: by_identity[id(tensor)] for disk, tensor in on_disk.items()}


def oracle(model: Any, names: dict[str, str], name: str, shape: tuple[int, ...]) -> Expect:
    if name not in names:
        assert LEGACY_BUFFERS.search(name), f"{name}: not a tensor of {type(model).__name__}"
        return Expect("unchanged")
    module_name, leaf = names[name].rsplit(".", 1)
    module = model.get_submodule(module_name)
    tensor = getattr(module, leaf)
    if isinstance(tensor, torch.nn.Parameter) and not tensor.requires_grad:
        return Expect("unchanged")  # Whisper's sinusoidal encoder positions
    if _is_norm(module):
        values = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        return (
            Expect("unchanged") if leaf == "num_batches_tracked" else Expect("constant", value=values[leaf])
        )
    if leaf == "bias":
        return Expect("constant", value=0.0)
    if isinstance(module, torch.nn.Embedding):
        return Expect("embedding", fans=(shape[1], shape[1]))
    if isinstance(module, Conv1D):  # GPT-2: [in, out]
        return Expect("weight", fans=(shape[0], shape[1]))
    if isinstance(module, torch.nn.Linear):  # [out, in]
        return Expect("weight", fans=(shape[1], shape[0]))
    if isinstance(module, torch.nn.modules.conv._ConvNd):  # [out, in/g, k…]
        assert module.groups == 1 and not module.transposed
        field = math.prod(shape[2:])
        return Expect("weight", fans=(shape[1] * field, shape[0] * field))
    if leaf in ("cls_token", "position_embeddings"):
        return Expect("token")
    raise AssertionError(f"{name}: {type(module).__name__}.{leaf} has no oracle")


def expected_std(expect: Expect, method: str) -> float:
    assert expect.fans is not None
    if expect.kind == "embedding":
        return 1.0 / math.sqrt(expect.fans[1])  # netinit: embeddings σ = 1/√dim under kaiming/xavier
    return METHODS[method](*expect.fans)


def values(tensor: Any) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy().reshape(-1)


def raw_bytes(tensor: Any) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def family_oracle(run: Run) -> dict[str, Expect]:
    model = model_class(run.source)(transformers.AutoConfig.from_pretrained(run.source))
    names = memory_names(model)
    return {name: oracle(model, names, name, tuple(tensor.shape)) for name, tensor in run.before.items()}


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_output_loads_with_no_missing_or_unexpected_keys(
    family: str, run_of: Callable[..., Run], loaded: Callable[[str], tuple[Any, dict[str, Any]]]
) -> None:
    run = run_of(family)
    model, info = loaded(family)
    problems = {key: value for key, value in info.items() if value}
    assert not problems, problems
    # Same names in and out, and the model really holds what was written.
    assert set(run.after) == set(run.before)
    state, names = model.state_dict(), memory_names(model)
    for name, tensor in run.after.items():
        if name in names:
            assert torch.equal(state[names[name]].to(tensor.dtype), tensor), name
        else:
            assert LEGACY_BUFFERS.search(name), name
    # transformers dropped the tied copies on save; they are re-tied to the filled tensor.
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output_embeddings is not None and model.config.get_text_config().tie_word_embeddings:
        assert output_embeddings.weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_gets_what_its_module_calls_for(family: str, run_of: Callable[..., Run]) -> None:
    """Norm weights 1, norm and layer biases 0, running stats 0/1, buffers byte-identical, and
    every weight, embedding and token re-drawn (different from the input's noise)."""
    run = run_of(family)
    entries = run.entries
    kinds: dict[str, int] = {}
    for name, expect in family_oracle(run).items():
        before, after = run.before[name], run.after[name]
        assert after.dtype == before.dtype and after.shape == before.shape, name
        kinds[expect.kind] = kinds.get(expect.kind, 0) + 1
        if expect.kind == "unchanged":
            assert raw_bytes(after) == raw_bytes(before), name
            assert entries[name].action is Action.CONSTANT, (name, entries[name].why)
            continue
        assert entries[name].action is Action.FILL, (name, entries[name].param.reason, entries[name].why)
        if expect.kind == "constant":
            assert np.all(values(after) == expect.value), (name, expect.value, values(after)[:4])
        else:
            assert not torch.equal(after, before), f"{name} was not re-drawn"
            assert np.all(np.isfinite(values(after))), name
    assert kinds.get("weight", 0) >= 4 and kinds.get("constant", 0) >= 4, kinds


def _std_cases() -> list[tuple[str, str]]:
    cases = [(family, DEFAULT) for family in FAMILIES]
    cases += [(family, method) for method in METHODS if method != DEFAULT for family in EXTRA_METHOD_FAMILIES]
    return cases


@pytest.mark.parametrize(("family", "method"), _std_cases())
def test_weight_std_matches_the_method_for_the_layout(
    family: str, method: str, run_of: Callable[..., Run]
) -> None:
    """The Report's fans and σ equal the module oracle's; the stored values have that σ.

    Tolerance from the sampling distribution: for n draws of a zero-mean law with σ, the root
    mean square has standard error ≤ σ/√(2n) (normal; uniform and truncated normal are tighter),
    so 6/√(2n) relative is a 6-sigma band.  Plus a one-sample KS test (p > 1e-4, fixed seed).
    """
    run = run_of(family, method)
    entries = run.entries
    checked = 0
    for name, expect in family_oracle(run).items():
        if expect.kind not in ("weight", "embedding", "token"):
            continue
        entry = entries[name]
        x = values(run.after[name])
        n = x.size
        if expect.kind == "token":
            sigma = TOKEN_STD
            assert np.all(np.abs(x) <= 0.04 * (1 + 2**-7)), name  # cut at ±2σ, bf16 rounding
            law: tuple[str, tuple[float, ...]] = ("truncnorm", (-2.0, 2.0, 0.0, 0.02))
        else:
            sigma = expected_std(expect, method)
            if expect.kind == "weight":
                assert (entry.fan_in, entry.fan_out) == expect.fans, (name, entry.param.reason)
            if "uniform" in method:
                bound = math.sqrt(3.0) * sigma
                assert np.all(np.abs(x) <= bound * (1 + 2**-7)), name
                law = ("uniform", (-bound, 2 * bound))
            else:
                law = ("norm", (0.0, sigma))
        assert entry.expected_std == pytest.approx(sigma, rel=1e-9), (name, entry.param.reason)
        rms = math.sqrt(float(np.mean(x * x)))
        tolerance = 6.0 / math.sqrt(2.0 * n)
        assert abs(rms / sigma - 1.0) < tolerance, (name, rms, sigma, tolerance)
        p_value = stats.kstest(x, law[0], args=law[1]).pvalue
        assert p_value > KS_P_MIN, (name, law, p_value)
        checked += 1
    assert checked >= 5


INPUTS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "causal": lambda config: {"input_ids": torch.tensor([[1, 5, 9, 3, 7, 2]])},
    "bert": lambda config: {
        "input_ids": torch.tensor([[1, 5, 9, 3, 7, 2]]),
        "token_type_ids": torch.tensor([[0, 0, 0, 1, 1, 1]]),
    },
    "t5": lambda config: {
        "input_ids": torch.tensor([[1, 5, 9, 3]]),
        "decoder_input_ids": torch.tensor([[0, 4, 6]]),
    },
    "image": lambda config: {
        "pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    },
    "whisper": lambda config: {
        "input_features": torch.randn(
            1,
            config.num_mel_bins,
            2 * config.max_source_positions,
            generator=torch.Generator().manual_seed(0),
        ),
        "decoder_input_ids": torch.tensor([[3, 5, 7]]),
    },
}
INPUT_KIND = {
    "gpt2": "causal",
    "llama": "causal",
    "llama-bf16": "causal",
    "llama-sharded": "causal",
    "bert": "bert",
    "t5": "t5",
    "vit": "image",
    "resnet": "image",
    "whisper": "whisper",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_model_produces_finite_outputs(
    family: str, loaded: Callable[[str], tuple[Any, dict[str, Any]]]
) -> None:
    model, _ = loaded(family)
    with torch.no_grad():
        outputs = model(**INPUTS[INPUT_KIND[family]](model.config))
    tensors = [value for value in outputs.values() if isinstance(value, torch.Tensor)]
    assert tensors
    for tensor in tensors:
        assert torch.isfinite(tensor.float()).all()
        assert tensor.float().std() > 0  # not a constant: the weights were really filled


def test_bf16_bundle_keeps_bf16_and_rounds_the_f32_draw_once(run_of: Callable[..., Run]) -> None:
    bf16, f32 = run_of("llama-bf16"), run_of("llama")
    header_dtypes = {}
    with safe_open(bf16.out_dir / "model.safetensors", "pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            header_dtypes[name] = handle.get_slice(name).get_dtype()
    assert set(header_dtypes.values()) == {"BF16"}
    assert {entry.param.dtype for entry in bf16.report.entries} == {"BF16"}
    # Same names and seed: the bf16 values are the f32 values rounded to bf16 (within one ulp).
    for name, tensor in bf16.after.items():
        assert tensor.dtype == torch.bfloat16
        rounded = f32.after[name].to(torch.bfloat16)
        ulp = torch.finfo(torch.bfloat16).eps * rounded.abs().float()
        assert torch.all((tensor.float() - rounded.float()).abs() <= ulp), name


def test_sharded_bundle_keeps_the_split_and_recomputes_the_index(run_of: Callable[..., Run]) -> None:
    run = run_of("llama-sharded")
    source_index = json.loads((run.source / INDEX_NAME).read_text())
    out_index = json.loads((run.out_dir / INDEX_NAME).read_text())
    shards = sorted(set(source_index["weight_map"].values()))
    assert len(shards) == 3
    assert out_index["weight_map"] == source_index["weight_map"]
    assert sorted(p.name for p in run.out_dir.glob("*.safetensors")) == shards
    total_size = 0
    for shard in shards:
        with safe_open(run.source / shard, "pt") as before, safe_open(run.out_dir / shard, "pt") as after:
            assert set(after.keys()) == set(before.keys()), shard
            assert after.metadata()["format"] == "pt"
            for name in after.keys():  # noqa: SIM118
                tensor = after.get_tensor(name)
                total_size += tensor.numel() * tensor.element_size()
        header_length = int.from_bytes((run.out_dir / shard).read_bytes()[:8], "little")
        assert total_size > 0 and (run.out_dir / shard).stat().st_size > 8 + header_length
    assert out_index["metadata"]["total_size"] == total_size
    data_bytes = sum(
        (run.out_dir / shard).stat().st_size
        - 8
        - int.from_bytes((run.out_dir / shard).read_bytes()[:8], "little")
        for shard in shards
    )
    assert total_size == data_bytes


@pytest.mark.parametrize("family", ["gpt2", "resnet"])
def test_metadata_kept_with_provenance(family: str, run_of: Callable[..., Run]) -> None:
    run = run_of(family)
    with safe_open(run.out_dir / "model.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt"
    assert metadata["netinit.seed"] == str(SEED) and metadata["netinit.scope"] == "all"


# Older files saved the tied copies too (identical bytes): T5 v1.0 all four names, BERT the MLM
# decoder, Whisper proj_out.  Each group must be filled once and written under every name.
TIED_COPIES = {
    "t5": ("shared.weight", ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]),
    "bert": ("bert.embeddings.word_embeddings.weight", ["cls.predictions.decoder.weight"]),
    "whisper": ("model.decoder.embed_tokens.weight", ["proj_out.weight"]),
}


@pytest.mark.parametrize("family", sorted(TIED_COPIES))
def test_saved_tied_copies_are_filled_once_and_all_written(family: str, tmp_path: Path) -> None:
    source, copies = TIED_COPIES[family]
    bundle, out_dir = tmp_path / "in", tmp_path / "out"
    bundle.mkdir(), out_dir.mkdir()
    for folder in (bundle, out_dir):
        shutil.copy(FAMILIES_DIR / family / "config.json", folder / "config.json")
    state = safetensors_torch.load_file(FAMILIES_DIR / family / "model.safetensors")
    state.update({name: state[source].clone() for name in copies})
    safetensors_torch.save_file(state, bundle / "model.safetensors", metadata={"format": "pt"})

    report = initialize(bundle, out_dir / "model.safetensors", all=True, seed=SEED)
    written = safetensors_torch.load_file(out_dir / "model.safetensors")
    assert set(written) == set(state)
    for name in copies:
        assert torch.equal(written[name], written[source]), name
    assert not torch.equal(written[source], state[source])
    # One plan entry for the whole group, carrying the other names as aliases.
    group = [
        entry for entry in report.entries if {source, *copies} & {entry.param.name, *entry.param.aliases}
    ]
    assert len(group) == 1 and {group[0].param.name, *group[0].param.aliases} == {source, *copies}
    _model, info = model_class(out_dir).from_pretrained(out_dir, output_loading_info=True)
    assert not any(info.values()), info
