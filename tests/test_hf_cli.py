"""``netinit --like config.json -o OUTDIR``: a model folder that transformers loads as its own.

Per family: the folder loads with ``from_pretrained`` with empty loading info and runs a finite
forward pass; its files, names, shapes and dtypes are those ``from_config`` + ``save_pretrained``
write.  Under the default (the ``hf`` preset) every tensor matches ``from_config``'s, tensor by
tensor: buffers byte-equal, constants equal, random tensors by a two-sample KS test.  Under
``--method kaiming`` every weight owned by a Linear, Conv1D, Conv, Embedding or experts module
passes a KS test against N(0, √(2/fan_in)) with fan_in read off the torch module itself: the roles
and layouts come from the modules.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_config import FAMILIES, read_safetensors, reference_save, write_config  # noqa: E402

from netinit_cli import fileio, libc  # noqa: E402
from netinit_cli.cli import cli  # noqa: E402
from netinit_cli.formats.safetensors import hf_template  # noqa: E402


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--quiet"], catch_exceptions=False)


def header(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + length]))


def entries(tmp: Path) -> set[str]:
    return {entry.name for entry in tmp.iterdir()}


def dummy_inputs(model: Any, config: Any) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    if model.main_input_name == "pixel_values":
        size = getattr(config, "image_size", 32)
        return {"pixel_values": torch.randn(1, config.num_channels, size, size, generator=generator)}
    if model.main_input_name == "input_features":
        frames = 2 * config.max_source_positions
        return {
            "input_features": torch.randn(1, config.num_mel_bins, frames, generator=generator),
            "decoder_input_ids": torch.tensor([[1, 3, 4]]),
        }
    ids = torch.randint(3, config.vocab_size, (1, 8), generator=generator)
    inputs = {"input_ids": ids}
    if config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids[:, :5]
    return inputs


def expected_std(module: Any, attribute: str, shape: tuple[int, ...]) -> float | None:
    """Kaiming normal (ReLU gain, fan_in) with fan_in read off the torch module; embeddings 1/√dim."""
    conv1d = transformers.pytorch_utils.Conv1D
    if attribute != "weight" and not type(module).__name__.endswith("Experts"):
        return None
    if isinstance(module, torch.nn.Embedding):
        return 1 / math.sqrt(module.embedding_dim)
    if isinstance(module, conv1d):
        return math.sqrt(2 / module.weight.shape[0])
    if isinstance(module, torch.nn.Linear):
        return math.sqrt(2 / module.in_features)
    if isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed:
        return math.sqrt(2 / (module.in_channels // module.groups * math.prod(module.kernel_size)))
    if type(module).__name__.endswith("Experts") and not getattr(module, "is_transposed", False):
        return math.sqrt(2 / shape[-1])  # F.linear(x, W[e]): [.., out, in]
    return None


def critical(n: int, m: int | None = None, alpha: float = 1e-6) -> float:
    """The asymptotic KS critical value at ``alpha`` (per tensor): one sample of n, or two of n and m."""
    scale = math.sqrt(1 / n) if m is None else math.sqrt((n + m) / (n * m))
    return math.sqrt(-math.log(alpha / 2) / 2) * scale


def ks_normal(values: np.ndarray, std: float, name: str) -> None:
    from scipy import stats

    statistic = stats.kstest(values.ravel(), "norm", args=(0.0, std)).statistic
    limit = critical(values.size)
    assert statistic < limit, f"{name}: KS {statistic:.4f} >= {limit:.4f} against N(0, {std:.4f})"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def created(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    architecture = request.param
    base = tmp_path_factory.mktemp(architecture)
    config_path = write_config(base / "config", architecture, FAMILIES[architecture])
    for out, extra in (("out", ()), ("out-kaiming", ("--method", "kaiming"))):
        result = run("--like", str(config_path), "-o", str(base / out), *extra)
        assert result.exit_code == 0, result.output
    reference = reference_save(config_path, base / "saved")
    return architecture, base, reference


def test_from_pretrained_loads_with_empty_info_and_runs(created: Any) -> None:
    architecture, base, _ = created
    model, info = getattr(transformers, architecture).from_pretrained(base / "out", output_loading_info=True)
    assert {key: list(value) for key, value in info.items() if value} == {}
    with torch.no_grad():
        outputs = model.float().eval()(**dummy_inputs(model, model.config))
    tensors = [value for value in outputs.to_tuple() if isinstance(value, torch.Tensor)]
    assert tensors and all(bool(torch.isfinite(value).all()) for value in tensors)


def test_files_names_shapes_dtypes_are_save_pretrained_s(created: Any) -> None:
    _, base, _ = created
    assert entries(base / "out") == entries(base / "saved")
    assert entries(base / "out") - {"generation_config.json"} == {"config.json", "model.safetensors"}
    if (base / "out" / "generation_config.json").exists():
        assert (base / "out" / "generation_config.json").read_text() == (
            base / "saved" / "generation_config.json"
        ).read_text()
    assert (base / "out" / "config.json").read_bytes() == (base / "config" / "config.json").read_bytes()
    ours, theirs = header(base / "out" / "model.safetensors"), header(base / "saved" / "model.safetensors")
    assert ours.pop("__metadata__")["format"] == theirs.pop("__metadata__")["format"] == "pt"
    # Same names, dtypes, shapes, and even offsets: both orders are the safetensors writer's.
    assert ours == theirs


def ours_and_theirs(base: Path, reference: Any, out: str) -> Any:
    """(name, our values, from_config's values, in-memory name) per saved tensor, and the buffers."""
    # Saved name → in-memory name (GPT-NeoX saves lm_head as embed_out; Mixtral one expert's slice).
    template = hf_template.load_template(base / "config")
    sources = {t.name: t.source for t in template.tensors}
    fixed = {t.name for t in template.tensors if t.value is not None}
    state = reference.state_dict()
    for name, (shape, _, raw) in read_safetensors(base / out / "model.safetensors").items():
        source = state[sources[name]]
        ours = torch.frombuffer(bytearray(raw), dtype=source.dtype).reshape(shape)
        theirs = (
            source if source.shape == ours.shape else source[int(name.split(".experts.")[1].split(".")[0])]
        )
        if theirs.shape != ours.shape:  # one expert's half of a fused gate_up: compare with all of them
            theirs = source
        yield name, ours, theirs, sources[name], name in fixed


def test_every_tensor_matches_from_config(created: Any) -> None:
    """The default for a config is the hf preset: what from_config gives, tensor by tensor."""
    from scipy import stats

    _, base, reference = created
    buffers = {name for name, _ in reference.named_buffers()}
    for name, ours, theirs, source, fixed in ours_and_theirs(base, reference, "out"):
        if source in buffers or fixed:
            assert torch.equal(ours, theirs), name
            continue
        a, b = ours.float().numpy().ravel(), theirs.float().numpy().ravel()
        if np.all(b == b[0]):
            assert np.all(a == b[0]), (
                f"{name}: from_config gives the constant {b[0]}, netinit {np.unique(a)[:3]}"
            )
            continue
        statistic = stats.ks_2samp(a, b).statistic
        assert statistic < critical(a.size, b.size), f"{name}: KS {statistic:.4f} against from_config"


def test_fans_come_from_the_modules(created: Any) -> None:
    _, base, reference = created
    checked = 0
    for name, ours, theirs, source, fixed in ours_and_theirs(base, reference, "out-kaiming"):
        if fixed:  # the model class's values whatever the method
            assert torch.equal(ours, theirs), name
            continue
        prefix, _, attribute = source.rpartition(".")
        std = expected_std(reference.get_submodule(prefix), attribute, tuple(ours.shape))
        if std is not None:
            ks_normal(ours.float().numpy(), std, name)
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    "architecture", ["MixtralForCausalLM", "T5ForConditionalGeneration", "GPT2LMHeadModel"]
)
def test_shards_equal_save_pretrained(architecture: str, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "config", architecture, FAMILIES[architecture])
    limit = 20_000
    assert (
        run("--like", str(config_path), "-o", str(tmp_path / "out"), "--max-shard-size", "20KB").exit_code
        == 0
    )
    reference_save(config_path, tmp_path / "saved", max_shard_size=limit)
    files = sorted(entries(tmp_path / "out"))
    assert files == sorted(entries(tmp_path / "saved")) and len(files) > 3
    for file in files:
        if file.endswith(".safetensors"):
            ours, theirs = header(tmp_path / "out" / file), header(tmp_path / "saved" / file)
            ours.pop("__metadata__"), theirs.pop("__metadata__")
            assert ours == theirs, file
    index = "model.safetensors.index.json"
    assert (tmp_path / "out" / index).read_text() == (tmp_path / "saved" / index).read_text()
    _, info = getattr(transformers, architecture).from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values())


def test_dtype_option_is_recorded_as_save_pretrained_does(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "config", "MistralForCausalLM", FAMILIES["MistralForCausalLM"])
    assert (
        run("--like", str(config_path.parent), "-o", str(tmp_path / "out"), "--dtype", "bf16").exit_code == 0
    )
    assert {
        info["dtype"]
        for name, info in header(tmp_path / "out" / "model.safetensors").items()
        if name[0] != "_"
    } == {"BF16"}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.bfloat16


def test_method_and_rules_apply(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "config", "OPTForCausalLM", FAMILIES["OPTForCausalLM"])
    result = run(
        "--like",
        str(config_path),
        "-o",
        str(tmp_path / "out"),
        "--method",
        "xavier",
        "--rule",
        "*.bias=constant(0.5)",
    )
    assert result.exit_code == 0, result.output
    written = read_safetensors(tmp_path / "out" / "model.safetensors")
    bias = np.frombuffer(written["model.decoder.layers.0.fc1.bias"][2], np.float32)
    assert np.all(bias == 0.5)
    weight = np.frombuffer(written["model.decoder.layers.0.fc1.weight"][2], np.float32)
    ks_normal(weight, math.sqrt(2 / (32 + 48)), "fc1.weight")


# ------------------------------------------------------------------------------------- output folder


def make(tmp_path: Path, *extra: str) -> Any:
    config_path = tmp_path / "config" / "config.json"
    if not config_path.exists():
        write_config(config_path.parent, "Qwen2ForCausalLM", FAMILIES["Qwen2ForCausalLM"])
    return run("--like", str(config_path), "-o", str(tmp_path / "out"), *extra)


def test_existing_outdir_needs_force(tmp_path: Path) -> None:
    write_config(tmp_path / "config", "Qwen2ForCausalLM", FAMILIES["Qwen2ForCausalLM"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    before = entries(tmp_path)
    result = make(tmp_path)
    assert result.exit_code == 4
    assert result.stderr.strip().splitlines() == [
        f"netinit: error: {tmp_path / 'out'} already exists; use --force to replace it or -o to choose another"
    ]
    assert entries(tmp_path) == before and entries(tmp_path / "out") == {"keep"}


def test_force_replaces_a_model_folder_and_leaves_no_temp(tmp_path: Path) -> None:
    assert make(tmp_path).exit_code == 0
    first = (tmp_path / "out" / "model.safetensors").read_bytes()
    before = entries(tmp_path)
    assert make(tmp_path, "--force", "--seed", "7").exit_code == 0
    assert entries(tmp_path) == before
    assert (tmp_path / "out" / "model.safetensors").read_bytes() != first


def test_force_refuses_the_configs_own_folder_and_other_folders(tmp_path: Path) -> None:
    write_config(tmp_path / "config", "Qwen2ForCausalLM", FAMILIES["Qwen2ForCausalLM"])
    config = tmp_path / "config" / "config.json"
    result = run("--like", str(config), "-o", str(tmp_path / "config"), "--force")
    assert result.exit_code == 2 and "holds the config itself" in result.stderr
    (tmp_path / "home" / "sub").mkdir(parents=True)
    result = run("--like", str(config), "-o", str(tmp_path / "home"), "--force")
    assert result.exit_code == 5 and "does not look like a model folder" in result.stderr
    assert entries(tmp_path) == {"config", "home"} and entries(tmp_path / "home") == {"sub"}


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".out{fileio.TEMP_TAG}{dead}-abcd{fileio.TEMP_SUFFIX}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    alive = tmp_path / f".out{fileio.TEMP_TAG}{os.getpid()}-beef{fileio.TEMP_SUFFIX}"
    alive.mkdir()
    assert make(tmp_path).exit_code == 0
    assert not stale.exists() and alive.exists()


def test_without_renameat2_the_commit_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = libc.function
    monkeypatch.setattr(libc, "function", lambda name, sig: None if name == "renameat2" else real(name, sig))
    assert make(tmp_path).exit_code == 0
    assert make(tmp_path, "--force").exit_code == 0
    assert entries(tmp_path) == {"config", "out"}
    assert entries(tmp_path / "out") == {"config.json", "generation_config.json", "model.safetensors"}


# ------------------------------------------------------------------------------------------ bad input


def one_line_and_nothing_left(result: Any, code: int, tmp_path: Path, before: set[str], text: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netinit: error: ") and text in lines[0], lines
    assert entries(tmp_path) == before


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"model_type": "no_such_model"}, 3, "transformers cannot read this config"),
        ({**FAMILIES["MistralForCausalLM"], "hidden_size": 30}, 3, "transformers cannot read this config"),
        (
            {**FAMILIES["BartForConditionalGeneration"], "d_model": 30},
            3,
            "cannot build BartForConditionalGeneration",
        ),
        (
            {**FAMILIES["MistralForCausalLM"], "model_type": "mistral"},
            3,
            "no model class 'NoSuchForCausalLM'",
        ),
        (
            {**FAMILIES["MistralForCausalLM"], "auto_map": {"AutoModelForCausalLM": "x.XModel"}},
            2,
            "remote code",
        ),
    ],
)
def test_bad_configs(fields: dict[str, Any], code: int, text: str, tmp_path: Path) -> None:
    architecture = {"bart": "BartForConditionalGeneration"}.get(fields["model_type"], "MistralForCausalLM")
    architecture = "XForCausalLM" if "auto_map" in fields else architecture
    architecture = "NoSuchForCausalLM" if "no model class" in text else architecture
    write_config(tmp_path / "config", architecture, fields)
    before = entries(tmp_path)
    result = run("--like", str(tmp_path / "config"), "-o", str(tmp_path / "out"))
    one_line_and_nothing_left(result, code, tmp_path, before, text)


def test_a_model_failing_on_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(transformers.MistralForCausalLM, "__init__", fail)
    write_config(tmp_path / "config", "MistralForCausalLM", FAMILIES["MistralForCausalLM"])
    before = entries(tmp_path)
    result = run("--like", str(tmp_path / "config"), "-o", str(tmp_path / "out"))
    one_line_and_nothing_left(result, 3, tmp_path, before, "on the meta device")


def test_without_the_extra_exit_2_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    write_config(tmp_path / "config", "MistralForCausalLM", FAMILIES["MistralForCausalLM"])
    before = entries(tmp_path)
    result = run("--like", str(tmp_path / "config"), "-o", str(tmp_path / "out"))
    one_line_and_nothing_left(result, 2, tmp_path, before, "pip install 'netinit[hf]'")


def test_config_options_need_a_config_and_a_config_is_not_a_model(tmp_path: Path) -> None:
    write_config(tmp_path / "config", "MistralForCausalLM", FAMILIES["MistralForCausalLM"])
    result = run(str(tmp_path / "config" / "config.json"), "-o", str(tmp_path / "x.safetensors"))
    assert result.exit_code == 3 and "a transformers config is not a model" in result.stderr
    result = run("fixtures/mlp.safetensors", "--dtype", "bf16")
    assert result.exit_code == 2 and "need --like CONFIG" in result.stderr
    result = make(tmp_path, "--max-shard-size", "5 parsecs")
    assert result.exit_code == 2 and "give a positive size" in result.stderr
    assert entries(tmp_path) == {"config"}
