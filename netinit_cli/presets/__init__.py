"""Framework presets: the initialization PyTorch, Keras, Flax, transformers or Megatron-LM would
have given each tensor (``--preset NAME`` or ``NAME(key=value, …)``).

One :class:`Preset` record per preset (its sub-options and per-role formulas, shown by
``netinit methods``); :func:`parse_preset` reads the text form into a :class:`PresetSpec`;
:func:`decide` turns one classified Param and its :class:`TensorContext` into a
:class:`PresetChoice`.  Pure: no I/O except :func:`model_context` reading ``config.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from netinit_cli.errors import UsageError
from netinit_cli.model import Param
from netinit_cli.spec import Node, SpecSyntaxError, format_number, parse_expression

from . import hf
from .choice import KINDS, ModelContext, PresetChoice, TensorContext
from .context import find_config, layers_in_names, model_context, read_config, tensor_contexts
from .frameworks import decide_flax, decide_keras, decide_megatron, decide_torch

Decide = Callable[[Param, TensorContext, Mapping[str, object]], PresetChoice]
Notes = Callable[[ModelContext, Mapping[str, object]], list[str]]


@dataclass(frozen=True)
class PresetOption:
    """``kind``: ``positive`` (a number > 0), ``count`` (an integer ≥ 1), ``bool``, ``choice``.
    A ``None`` default means "from the model" (config.json or names)."""

    name: str
    kind: str
    default: object
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    options: tuple[PresetOption, ...]
    formulas: tuple[tuple[str, str], ...]  # (roles, formula) for `netinit methods`
    decide: Decide
    notes: Notes | None = None


def _megatron_notes(model: ModelContext, options: Mapping[str, object]) -> list[str]:
    if options.get("num_layers") is None and model.num_layers:
        return [f"megatron: L = {model.num_layers} from {model.num_layers_source}"]
    return []


_NORMS = ("norms, running stats", "scale 1, shift 0; running mean 0, var 1")
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "torch",
            "PyTorch 2.13 module defaults (torch/nn/modules)",
            (),
            (
                (
                    "Linear, Conv, ConvTranspose",
                    "U(±1/√fan_in), torch's fan: size(1)·∏k (ConvTranspose: out/g·∏k)",
                ),
                ("biases", "U(±1/√fan_in) of the layer's weight"),
                ("embeddings", "N(0, 1)"),
                _NORMS,
                ("RNN/LSTM/GRU", "every tensor U(±1/√hidden)"),
                (
                    "MultiheadAttention",
                    "in_proj xavier_uniform, in_proj_bias and out_proj.bias 0, bias_k/v xavier_normal",
                ),
                ("PReLU", "0.25"),
            ),
            decide_torch,
        ),
        Preset(
            "keras",
            "Keras 3 layer defaults",
            (PresetOption("unit_forget_bias", "bool", True, "LSTM forget-gate bias 1 (on one bias vector)"),),
            (
                ("weights", "glorot_uniform U(±√(6/(fan_in + fan_out))), Keras fans (= torch's)"),
                ("biases", "0; LSTM forget-gate block 1 with unit_forget_bias"),
                ("embeddings", "U(±0.05)"),
                ("recurrent", "orthogonal, gain 1, on the whole [u, 4u] kernel"),
                _NORMS,
                ("PReLU", "0"),
            ),
            decide_keras,
        ),
        Preset(
            "flax",
            "Flax linen defaults",
            (),
            (
                ("weights", "lecun_normal: N(0, s/0.8796) cut at ±2s/0.8796, s = √(1/fan_in)"),
                ("biases", "0"),
                ("embeddings", "N(0, 1/√features)"),
                ("recurrent", "orthogonal per gate, gain 1"),
                _NORMS,
                ("PReLU", "0.01"),
            ),
            decide_flax,
        ),
        Preset(
            "hf",
            "transformers _init_weights, per model family (config.json beside the model)",
            (
                PresetOption("initializer_range", "positive", None, "σ (auto: config.json, else 0.02)"),
                PresetOption(
                    "initializer_factor", "positive", None, "T5's factor f (auto: config.json, else 1)"
                ),
                PresetOption(
                    "num_layers", "count", None, "GPT-2 n_layer (auto: config.json, else the names)"
                ),
                PresetOption(
                    "family", "choice", "auto", "model family (auto: config model_type)", hf.FAMILY_CHOICES
                ),
            ),
            (
                ("weights", "N(0, σ); σ = initializer_range → init_std → initializer_factor → 0.02"),
                ("biases", "0"),
                ("embeddings", "N(0, σ), padding row (pad_token_id) 0"),
                _NORMS,
                ("gpt2", "attn/mlp c_proj N(0, σ/√(2·n_layer))"),
                (
                    "t5",
                    "q f·(d_model·d_kv)^-½, k/v/wi f·d_model^-½, o f·(heads·d_kv)^-½, wo f·d_ff^-½, shared f, norms f",
                ),
                ("gemma", "RMSNorm weight 0 (x·(1+w))"),
                ("vit", "cls_token, position_embeddings trunc_normal(0, σ, ±2 absolute); mask_token 0"),
                ("whisper", "encoder sinusoidal positions kept"),
                ("resnet", "conv kaiming_normal(fan_out, relu); Linear torch default"),
            ),
            hf.decide_hf,
            hf.notes,
        ),
        Preset(
            "megatron",
            "Megatron-LM init_method_normal / scaled_init_method_normal",
            (
                PresetOption("std", "positive", 0.02, "σ (init_method_std)"),
                PresetOption(
                    "num_layers", "count", None, "L (auto: config.json, else the largest layer index + 1)"
                ),
                PresetOption("embedding_std", "positive", None, "embedding σ (auto: std)"),
            ),
            (
                ("weights", "N(0, σ)"),
                (
                    "output layers",
                    "attention output and MLP down projections (o_proj, dense, c_proj, fc2, …): N(0, σ/√(2L))",
                ),
                ("biases", "0"),
                ("embeddings", "N(0, embedding_std)"),
                _NORMS,
            ),
            decide_megatron,
            _megatron_notes,
        ),
    )
}
ALIASES = {"pytorch": "torch", "transformers": "hf", "huggingface": "hf", "tf": "keras", "jax": "flax"}


@dataclass(frozen=True)
class PresetSpec:
    """A preset and all its option values (defaults filled in), sorted by key."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def values(self) -> dict[str, object]:
        return dict(self.options)

    @property
    def preset(self) -> Preset:
        return PRESETS[self.name]

    def describe(self) -> str:
        """Canonical text; ``parse_preset(spec.describe()) == spec``.  Only changed options show."""
        defaults = {o.name: o.default for o in self.preset.options}
        shown = [f"{k}={_format(v)}" for k, v in self.options if v != defaults[k]]
        return f"{self.name}({', '.join(shown)})" if shown else self.name

    def __str__(self) -> str:
        return self.describe()


def _format(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def _fail(text: str, problem: str) -> UsageError:
    return UsageError(f"--preset {text!r}: {problem}")


def _value(option: PresetOption, node: Node, text: str) -> object:
    where = option.name
    if option.default is None and node.name == "auto" and node.args is None:
        return None
    if option.kind == "choice":
        if node.name is None or node.args is not None or node.name not in option.choices:
            raise _fail(text, f"{where} must be one of {', '.join(option.choices)}")
        return node.name
    if option.kind == "bool":
        words = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
        if node.args is None and node.name in words:
            return words[node.name]
        if node.number in (0.0, 1.0):
            return bool(node.number)
        raise _fail(text, f"{where} must be true or false")
    if node.number is None or node.number <= 0:
        auto = " (or auto)" if option.default is None else ""
        raise _fail(text, f"{where} must be a number > 0{auto}")
    if option.kind == "count":
        if node.number != int(node.number):
            raise _fail(text, f"{where} must be a whole number ≥ 1")
        return int(node.number)
    return float(node.number)


def parse_preset(text: str) -> PresetSpec:
    """Read ``--preset``: a name (``torch``, ``keras``, ``flax``, ``hf``, ``megatron``) or
    ``name(key=value, …)``.  Every problem is a one-line :class:`UsageError`."""
    names = ", ".join(PRESETS)
    try:
        node = parse_expression(text)
    except SpecSyntaxError as error:
        raise _fail(
            text, f"{error.problem} (character {error.pos + 1}); expected NAME or NAME(key=value, …)"
        ) from None
    name = ALIASES.get(node.name or "", node.name or "")
    if name not in PRESETS:
        raise _fail(text, f"unknown preset; choose one of {names}")
    preset = PRESETS[name]
    definitions = {o.name: o for o in preset.options}
    values: dict[str, object] = {o.name: o.default for o in preset.options}
    given: set[str] = set()
    for arg in node.args or ():
        takes = f"it takes {', '.join(definitions)}" if definitions else "it takes no options"
        if arg.key is None:
            raise _fail(text, f"options are written key=value; {takes}")
        if arg.key not in definitions:
            raise _fail(text, f"{name} has no option {arg.key!r}; {takes}")
        if arg.key in given:
            raise _fail(text, f"{arg.key} is given twice")
        values[arg.key] = _value(definitions[arg.key], arg.value, text)
        given.add(arg.key)
    return PresetSpec(name, tuple(sorted(values.items())))


def decide(spec: PresetSpec, param: Param, ctx: TensorContext) -> PresetChoice:
    """What ``param`` gets under ``spec``; the label starts with the preset's name."""
    return spec.preset.decide(param, ctx, spec.values).prefixed(spec.name)


def preset_notes(spec: PresetSpec, model: ModelContext) -> list[str]:
    """Notes about the whole model (no config.json, unknown family, where L came from)."""
    notes = spec.preset.notes
    return notes(model, spec.values) if notes is not None else []


def describe_presets() -> str:
    """The presets' part of ``netinit methods``."""
    lines = ["Presets (--preset NAME or NAME(key=value, …); replaces --method; --rule still wins):", ""]
    for preset in PRESETS.values():
        lines.append(f"{preset.name}  {preset.summary}")
        for option in preset.options:
            default = "auto" if option.default is None else _format(option.default)
            choices = f" [{' | '.join(option.choices)}]" if option.choices else ""
            lines.append(f"    {option.name:<18} default {default}{choices}: {option.help}")
        for roles, formula in preset.formulas:
            lines.append(f"    {roles + ':':<30} {formula}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "KINDS",
    "PRESETS",
    "ModelContext",
    "Preset",
    "PresetChoice",
    "PresetOption",
    "PresetSpec",
    "TensorContext",
    "decide",
    "describe_presets",
    "find_config",
    "layers_in_names",
    "model_context",
    "parse_preset",
    "preset_notes",
    "read_config",
    "tensor_contexts",
]
