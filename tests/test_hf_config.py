"""The config.json template against what transformers itself writes.

For every family: ``from_config(config)`` + ``save_pretrained(tmp)`` is the reference; the template built on
the meta device must list the same names, shapes and dtypes, the same persistent-buffer bytes, and split into
the same files with the same names as ``save_pretrained(max_shard_size=…)``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from netinit_cli.errors import InputError, UsageError  # noqa: E402
from netinit_cli.formats.safetensors import hf_template as hf_config  # noqa: E402
from netinit_cli.formats.safetensors.sharded import parse_size  # noqa: E402

DECODER = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}

# architecture → config fields (tiny; every field the family needs to build in a few milliseconds)
FAMILIES: dict[str, dict[str, Any]] = {
    "Qwen2ForCausalLM": {**DECODER, "model_type": "qwen2", "tie_word_embeddings": True},
    "MistralForCausalLM": {**DECODER, "model_type": "mistral", "tie_word_embeddings": False},
    "Phi3ForCausalLM": {**DECODER, "model_type": "phi3", "pad_token_id": 0},
    "GemmaForCausalLM": {**DECODER, "model_type": "gemma", "head_dim": 8, "torch_dtype": "bfloat16"},
    "OPTForCausalLM": {
        "model_type": "opt",
        "vocab_size": 96,
        "hidden_size": 32,
        "ffn_dim": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "word_embed_proj_dim": 32,
    },
    "GPTNeoXForCausalLM": {**DECODER, "model_type": "gpt_neox", "dtype": "float16"},
    "MixtralForCausalLM": {
        **DECODER,
        "model_type": "mixtral",
        "num_local_experts": 3,
        "num_experts_per_tok": 2,
    },
    "Qwen2MoeForCausalLM": {
        **DECODER,
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 24,
    },
    "T5ForConditionalGeneration": {
        "model_type": "t5",
        "vocab_size": 96,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 48,
        "num_layers": 2,
        "num_heads": 4,
    },
    "BartForConditionalGeneration": {
        "model_type": "bart",
        "vocab_size": 96,
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 48,
        "decoder_ffn_dim": 48,
        "max_position_embeddings": 64,
    },
    "ViTForImageClassification": {
        "model_type": "vit",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "image_size": 32,
        "patch_size": 8,
        "num_labels": 3,
    },
    "GPT2LMHeadModel": {
        "model_type": "gpt2",
        "vocab_size": 96,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
    },
    "BertForMaskedLM": {
        "model_type": "bert",
        "vocab_size": 96,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
    },
    "ResNetForImageClassification": {
        "model_type": "resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16],
        "depths": [1, 1],
        "num_labels": 3,
    },
    "WhisperForConditionalGeneration": {
        "model_type": "whisper",
        "vocab_size": 96,
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 48,
        "decoder_ffn_dim": 48,
        "num_mel_bins": 8,
        "max_source_positions": 16,
        "max_target_positions": 16,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
        "begin_suppress_tokens": None,
    },
}


def write_config(folder: Path, architecture: str, fields: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps({"architectures": [architecture], **fields}), encoding="utf-8")
    return path


def read_safetensors(path: Path) -> dict[str, tuple[tuple[int, ...], str, bytes]]:
    """name → (shape, dtype, raw bytes), straight from the file."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = data[8 + length :]
    return {
        name: (tuple(info["shape"]), info["dtype"], body[info["data_offsets"][0] : info["data_offsets"][1]])
        for name, info in header.items()
    }


def reference_save(config_path: Path, out: Path, **save_kwargs: Any) -> Any:
    config = transformers.AutoConfig.from_pretrained(str(config_path.parent))
    model = getattr(transformers, config.architectures[0])._from_config(config)
    model.save_pretrained(str(out), **save_kwargs)
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path, Path]:
    architecture = request.param
    base = tmp_path_factory.mktemp(architecture)
    config_path = write_config(base / "config", architecture, FAMILIES[architecture])
    reference_save(config_path, base / "saved")
    template = hf_config.load_template(config_path)
    return template, config_path, base / "saved"


def test_tensors_match_save_pretrained(family: tuple[Any, Path, Path]) -> None:
    template, _, saved = family
    written = read_safetensors(saved / "model.safetensors")
    assert {t.name: (t.shape, t.dtype) for t in template.tensors} == {
        name: (shape, dtype) for name, (shape, dtype, _) in written.items()
    }
    assert len(template.tensors) == len(written)
    for tensor in template.tensors:
        if tensor.is_buffer:
            assert tensor.role == "buffer"
        if tensor.value is not None:  # buffers and frozen parameters (Whisper's encoder positions)
            assert tensor.value == written[tensor.name][2], tensor.name


def test_aliases_are_the_dropped_tied_names(family: tuple[Any, Path, Path]) -> None:
    template, _, saved = family
    written = set(read_safetensors(saved / "model.safetensors"))
    for dropped, kept in template.aliases.items():
        assert dropped not in written and kept in written


@pytest.mark.parametrize("fraction", [2, 5, 20])
def test_shard_plan_matches_save_pretrained(
    family: tuple[Any, Path, Path], fraction: int, tmp_path: Path
) -> None:
    template, config_path, _ = family
    total = sum(len(v[2]) for v in read_safetensors(family[2] / "model.safetensors").values())
    # At fraction 20 the largest tensors exceed the limit and get a shard of their own.
    limit = max(total // fraction, 1)
    reference_save(config_path, tmp_path, max_shard_size=limit)
    plan = template.shard_plan(limit)
    files = sorted(path.name for path in tmp_path.glob("*.safetensors"))
    assert sorted(name for name, _ in plan) == files
    for filename, names in plan:
        assert sorted(names) == sorted(read_safetensors(tmp_path / filename)), filename
    index_path = tmp_path / "model.safetensors.index.json"
    index = template.shard_index(limit)
    if index is None:
        assert not index_path.exists() and plan[0][0] == "model.safetensors"
    else:
        assert json.dumps(index, indent=2, sort_keys=True) + "\n" == index_path.read_text(encoding="utf-8")


def test_default_shard_plan_is_one_file(family: tuple[Any, Path, Path]) -> None:
    template, _, _ = family
    assert [name for name, _ in template.shard_plan()] == ["model.safetensors"]
    assert template.shard_index() is None


ROLES = {
    "GPT2LMHeadModel": {
        "transformer.wte.weight": "embedding.weight",
        "transformer.h.0.attn.c_attn.weight": "linear_in_out.weight",
        "transformer.h.0.attn.c_attn.bias": "linear_in_out.bias",
        "transformer.h.0.ln_1.weight": "norm.weight",
    },
    "MistralForCausalLM": {
        "model.layers.0.self_attn.q_proj.weight": "linear.weight",
        "model.layers.0.input_layernorm.weight": "norm.weight",
        "lm_head.weight": "linear.weight",
    },
    "MixtralForCausalLM": {
        "model.layers.0.block_sparse_moe.experts.1.w1.weight": "experts.gate_up_proj",
        "model.layers.0.block_sparse_moe.gate.weight": "router.weight",
    },
    "ResNetForImageClassification": {
        "resnet.embedder.embedder.convolution.weight": "conv.weight",
        "resnet.embedder.embedder.normalization.running_var": "buffer",
        "resnet.embedder.embedder.normalization.num_batches_tracked": "buffer",
    },
    "ViTForImageClassification": {"vit.embeddings.cls_token": "other.cls_token"},
}


@pytest.mark.parametrize("architecture", sorted(ROLES))
def test_roles_come_from_modules(architecture: str, tmp_path: Path) -> None:
    template = hf_config.load_template(write_config(tmp_path, architecture, FAMILIES[architecture]))
    assert {name: template.roles()[name] for name in ROLES[architecture]} == ROLES[architecture]


def test_dtype_argument_overrides_the_config(tmp_path: Path) -> None:
    config_path = write_config(
        tmp_path / "c", "BartForConditionalGeneration", FAMILIES["BartForConditionalGeneration"]
    )
    template = hf_config.load_template(config_path.parent, dtype="bf16")
    config = transformers.AutoConfig.from_pretrained(str(config_path.parent))
    transformers.BartForConditionalGeneration._from_config(config, dtype=torch.bfloat16).save_pretrained(
        str(tmp_path / "s")
    )
    written = read_safetensors(tmp_path / "s" / "model.safetensors")
    assert {t.name: (t.shape, t.dtype, t.value) for t in template.tensors} == {
        name: (shape, dtype, data if name == "final_logits_bias" else None)
        for name, (shape, dtype, data) in written.items()
    }
    assert template.dtype == "BF16"


def test_model_type_without_architectures_uses_the_auto_class(tmp_path: Path) -> None:
    fields = dict(FAMILIES["Qwen2ForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    assert hf_config.load_template(tmp_path).model_class == "Qwen2ForCausalLM"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1234", 1234),
        ("500MB", 500 * 10**6),
        ("5GB", 5 * 10**9),
        ("5gb", 5 * 10**9),
        ("1.5GB", 1_500_000_000),
        ("2GiB", 2 * 2**30),
        ("64KiB", 65536),
        (" 3 MB ", 3 * 10**6),
        ("1TB", 10**12),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "5XB", "1.5", "-1GB", "0", "5 G B", "0KB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match=r"--max-shard-size .*: give a positive size"):
        parse_size(text)


def test_parse_size_agrees_with_huggingface_hub() -> None:
    from huggingface_hub.serialization._base import parse_size_to_int

    for text in ["500MB", "5GB", "1.5GB", "7kb", "2TB"]:
        assert parse_size(text) == parse_size_to_int(text)


def one_line_error(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_model_type_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model"}), encoding="utf-8")
    with pytest.raises(InputError) as error:
        hf_config.load_template(tmp_path)
    assert "no_such_model" in one_line_error(error) and "config.json" in one_line_error(error)


def test_config_transformers_cannot_build_is_an_input_error(tmp_path: Path) -> None:
    fields = {**FAMILIES["MistralForCausalLM"], "hidden_size": 30}  # not a multiple of the heads
    with pytest.raises(InputError, match="cannot read this config: ValueError: ") as error:
        hf_config.load_template(write_config(tmp_path, "MistralForCausalLM", fields))
    one_line_error(error)


def test_unknown_architecture_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no model class 'NoSuchForCausalLM'"):
        hf_config.load_template(write_config(tmp_path, "NoSuchForCausalLM", FAMILIES["MistralForCausalLM"]))


def test_remote_code_needs_trust(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "configuration_x.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    fields = {"model_type": "x_remote", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    with pytest.raises(UsageError, match="--trust-remote-code") as error:
        hf_config.load_template(tmp_path)
    one_line_error(error)
    assert not marker.exists()


def test_remote_model_class_needs_trust(tmp_path: Path) -> None:
    fields = {
        **FAMILIES["MistralForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"},
    }
    with pytest.raises(UsageError, match=r"remote code .*--trust-remote-code"):
        hf_config.load_template(write_config(tmp_path, "XForCausalLM", fields))


def test_model_failing_on_meta_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = transformers.MistralModel.__init__

    def init_reading_a_weight(self: Any, config: Any) -> None:
        original(self, config)
        self.embed_tokens.weight.sum().item()  # what dinov2's drop-path schedule does on meta

    monkeypatch.setattr(transformers.MistralModel, "__init__", init_reading_a_weight)
    with pytest.raises(InputError, match="cannot build MistralForCausalLM on the meta device") as error:
        hf_config.load_template(write_config(tmp_path, "MistralForCausalLM", FAMILIES["MistralForCausalLM"]))
    one_line_error(error)


def test_missing_config_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"holds no config\.json"):
        hf_config.load_template(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        hf_config.load_template(tmp_path / "nope.json")


def test_bad_dtype_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="'f64' is not one of f32, f16, bf16"):
        hf_config.load_template(
            write_config(tmp_path, "MistralForCausalLM", FAMILIES["MistralForCausalLM"]), dtype="f64"
        )


def test_aliases_name_what_save_pretrained_drops(tmp_path: Path) -> None:
    t5 = hf_config.load_template(
        write_config(tmp_path / "t5", "T5ForConditionalGeneration", FAMILIES["T5ForConditionalGeneration"])
    )
    assert t5.aliases == {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
        "lm_head.weight": "shared.weight",
    }
    qwen2 = hf_config.load_template(
        write_config(tmp_path / "q", "Qwen2ForCausalLM", FAMILIES["Qwen2ForCausalLM"])
    )
    assert qwen2.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    mistral = hf_config.load_template(
        write_config(tmp_path / "m", "MistralForCausalLM", FAMILIES["MistralForCausalLM"])
    )
    assert mistral.aliases == {}


REMOTE_CONFIG = """
from transformers import PretrainedConfig


class XConfig(PretrainedConfig):
    model_type = "x_remote"

    def __init__(self, width=8, **kwargs):
        self.width = width
        super().__init__(**kwargs)
"""

REMOTE_MODEL = """
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_x import XConfig


class XModel(PreTrainedModel):
    config_class = XConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.width, 2 * config.width)
        self.register_buffer("table", torch.arange(config.width, dtype=torch.float32) / 4)
        self.post_init()
"""


def test_remote_code_runs_with_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "configuration_x.py").write_text(REMOTE_CONFIG, encoding="utf-8")
    (folder / "modeling_x.py").write_text(REMOTE_MODEL, encoding="utf-8")
    fields = {
        "model_type": "x_remote",
        "architectures": ["XModel"],
        "width": 8,
        "auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"},
    }
    (folder / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    with pytest.raises(UsageError, match="--trust-remote-code"):
        hf_config.load_template(folder)
    template = hf_config.load_template(folder, trust_remote_code=True)
    assert [(t.name, t.shape, t.dtype, t.role) for t in template.tensors] == [
        ("table", (8,), "F32", "buffer"),  # state_dict order: a module's own tensors before its children's
        ("proj.weight", (16, 8), "F32", "linear.weight"),
        ("proj.bias", (16,), "F32", "linear.bias"),
    ]
    assert template.tensors[0].value == torch.arange(8, dtype=torch.float32).div(4).numpy().tobytes()
