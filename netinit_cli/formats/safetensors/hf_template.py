"""A checkpoint template from a transformers ``config.json``: what ``from_config`` + ``save_pretrained`` would write.

The model class is built with every parameter on the meta device (no weight memory), while buffers are
created for real on the CPU so persistent ones keep the values the model class gives them.  Names, shapes,
dtypes, dropped tied names, renamed or split tensors (``revert_weight_conversion``) and the shard split all
come from transformers and huggingface_hub themselves, called on that model — netinit knows no architecture.

torch and transformers are an optional extra and are imported only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from netinit_cli.errors import InputError, UsageError

HF_EXTRA_HINT = "a config.json template needs transformers and torch: pip install 'netinit[hf]'"

#: transformers 5.x ``PreTrainedModel.save_pretrained(max_shard_size="50GB")``; huggingface_hub's own default
#: (``MAX_SHARD_SIZE = "5GB"``) applies only to its ``save_torch_*`` helpers.
DEFAULT_MAX_SHARD_SIZE = 50 * 10**9
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_FILENAME_PATTERN = "model{suffix}.safetensors"

#: ``--dtype`` values → torch attribute names.
DTYPE_CHOICES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

#: Tried in order when ``architectures`` is absent: the first whose mapping knows the config class wins.
AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModel")

_SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
}


@dataclass(frozen=True)
class HfTensor:
    """One tensor exactly as ``save_pretrained`` would store it.

    ``module_class`` and ``attribute`` describe the in-memory tensor it comes from (``source``): for most
    tensors ``source == name``; when transformers renames or splits on save (Mixtral's fused experts are
    stored per expert as ``…experts.E.w1.weight``) they differ.  ``value`` holds a persistent buffer's or a
    frozen parameter's bytes (C order, little-endian, ``dtype``); it is None for trained parameters, and for
    a buffer only if the model derived it from a parameter (then it is unknown on the meta device).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name: F32, BF16, I64, …
    module_class: str  # "Linear", "Embedding", "LlamaRMSNorm", "Conv1D", "MixtralExperts", …
    attribute: str  # "weight", "bias", "gate_up_proj", "running_mean", …
    role: str  # see ``tensor_role``
    is_buffer: bool
    source: str
    storage_key: int  # tensors sharing one storage in save_pretrained's state dict share this key
    storage_bytes: int  # that storage's size, which is what huggingface_hub's split counts
    value: bytes | None = None
    groups: int = 1  # a convolution's ``groups``
    transposed: bool = False  # an experts module that stores ``[experts, in, out]`` (``is_transposed``)


@dataclass(frozen=True)
class HfTemplate:
    kind: ClassVar[str] = "hf-config"

    config_path: Path
    config: dict[str, Any]  # the config.json as read
    model_class: str  # the class from_config builds, e.g. "Qwen2ForCausalLM"
    dtype: str  # the floating dtype the model is built in (F32, F16, BF16)
    tensors: tuple[HfTensor, ...]  # in save_pretrained's state-dict order
    aliases: dict[str, str]  # tied names save_pretrained drops → the name it keeps
    total_parameters: int  # model.num_parameters(): tied parameters once; written to the index
    generation_config: str | None = None  # generation_config.json as save_pretrained writes it

    def roles(self) -> dict[str, str]:
        return roles(self)

    def shard_plan(self, max_shard_size: int | None = None) -> list[tuple[str, list[str]]]:
        """(file name, tensor names) per file, as ``save_pretrained(max_shard_size=…)`` splits them."""
        split = self._split(max_shard_size)
        return [(filename, list(names)) for filename, names in split.filename_to_tensors.items()]

    def shard_index(self, max_shard_size: int | None = None) -> dict[str, Any] | None:
        """The ``model.safetensors.index.json`` content, or None for a single file.

        ``save_pretrained`` writes it as ``json.dumps(index, indent=2, sort_keys=True) + "\\n"``.
        """
        split = self._split(max_shard_size)
        if not split.is_sharded:
            return None
        metadata = {"total_parameters": self.total_parameters, **split.metadata}
        return {"metadata": metadata, "weight_map": dict(split.tensor_to_filename)}

    def _split(self, max_shard_size: int | None) -> Any:
        try:
            from huggingface_hub import split_state_dict_into_shards_factory
        except ImportError as error:
            raise UsageError(HF_EXTRA_HINT) from error
        # The very function save_pretrained uses (through split_torch_state_dict_into_shards), fed with the
        # storage identities and sizes recorded from the model, so its order, its oversize rule (a tensor
        # bigger than the limit gets a shard of its own) and its grouping of shared storages all carry over.
        return split_state_dict_into_shards_factory(
            {tensor.name: tensor for tensor in self.tensors},
            get_storage_size=lambda tensor: tensor.storage_bytes,
            get_storage_id=lambda tensor: tensor.storage_key,
            filename_pattern=_FILENAME_PATTERN,
            max_shard_size=DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size,
        )


def roles(template: HfTemplate) -> dict[str, str]:
    """Tensor name → role string (see ``tensor_role``)."""
    return {tensor.name: tensor.role for tensor in template.tensors}


def load_template(config: Path, *, dtype: str | None = None, trust_remote_code: bool = False) -> HfTemplate:
    """Build the template for ``config`` (a config.json, or a folder holding one).

    ``dtype`` (f32, f16, bf16) overrides the config's ``dtype``/``torch_dtype``, as ``from_config(dtype=…)``.
    """
    torch, transformers = _import_hf()
    config_file = _config_file(Path(config))
    raw = _read_json(config_file)
    hf_config = _load_config(transformers, config_file, trust_remote_code)
    build, what = _model_builder(transformers, hf_config, raw, config_file, trust_remote_code)
    kwargs = {} if dtype is None else {"dtype": getattr(torch, _dtype_choice(dtype))}
    try:
        with _quiet(transformers), _parameters_on_meta(torch.nn):
            model = build(kwargs)
    except Exception as error:  # any failure inside the model class is a property of this config
        where = " on the meta device" if "meta" in str(error) else ""
        raise InputError(
            f"{config_file}: transformers cannot build {what}{where}: {_one_line(error)}"
        ) from error
    return _template(torch, transformers, model, config_file, raw)


def tensor_role(module: Any, attribute: str, is_buffer: bool, nn: Any, conv1d: Any) -> str:
    """What a tensor is, from the module that owns it.

    ``linear.weight|bias`` (``[out, in]``), ``linear_in_out.weight|bias`` (GPT-2 ``Conv1D``, ``[in, out]``),
    ``embedding.weight``, ``norm.<attr>`` (LayerNorm, RMSNorm, GroupNorm, BatchNorm and model-specific
    ``…Norm`` classes), ``conv.weight|bias`` (``[out, in/g, k…]``), ``conv_transposed.weight|bias``
    (``[in, out/g, k…]``), ``recurrent.<attr>``, ``experts.<attr>`` (a ``…Experts`` module's stacked
    weights; on disk they may be split per expert), ``router.<attr>`` (a mixture-of-experts ``…Router``
    module's ``[experts, d]`` weight), ``buffer`` (persistent, never random), and
    ``other.<attr>`` for any other parameter (cls tokens, position tables, layer scales, …).
    """
    if is_buffer:
        return "buffer"
    kind = type(module).__name__
    if isinstance(module, nn.Embedding):
        return "embedding.weight" if attribute == "weight" else f"embedding.{attribute}"
    if isinstance(module, conv1d):
        return f"linear_in_out.{attribute}"
    if isinstance(module, nn.Linear):
        return f"linear.{attribute}"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"conv_transposed.{attribute}"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"conv.{attribute}"
    if isinstance(module, nn.RNNBase):
        return f"recurrent.{attribute}"
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
    if isinstance(module, norm_types) or re.search(r"Norm(alization)?\d?d?$", kind):
        return f"norm.{attribute}"
    if kind.endswith("Experts"):
        return f"experts.{attribute}"
    if "Router" in kind:
        return f"router.{attribute}"
    return f"other.{attribute}"


# ---------------------------------------------------------------------------------------------- internals


def _import_hf() -> tuple[ModuleType, ModuleType]:
    try:
        import torch
        import transformers
    except ImportError as error:
        raise UsageError(HF_EXTRA_HINT) from error
    return torch, transformers


def _one_line(error: BaseException, limit: int = 240) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # huggingface_hub's validation errors put the real cause on their last line.
    text = lines[-1] if lines and lines[0].startswith("Class validation error") else (lines or [""])[0]
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _config_file(path: Path) -> Path:
    candidate = path / "config.json" if path.is_dir() else path
    if not candidate.is_file():
        where = f"{path} holds no config.json" if path.is_dir() else f"{path} does not exist"
        raise InputError(f"{where}: give a transformers config.json or a folder holding one")
    return candidate


def _read_json(config_file: Path) -> dict[str, Any]:
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{config_file}: not a readable JSON config: {_one_line(error)}") from error
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise InputError(f"{config_file}: not a transformers config.json (no 'model_type')")
    return raw


def _load_config(transformers: ModuleType, config_file: Path, trust_remote_code: bool) -> Any:
    # A folder lets transformers find auto_map modules beside config.json; a differently named file is
    # read as it is.  trust_remote_code is always passed, so transformers never prompts.
    source = config_file.parent if config_file.name == "config.json" else config_file
    try:
        with _quiet(transformers):
            return transformers.AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except Exception as error:
        if "trust_remote_code" in str(error):
            raise UsageError(
                f"{config_file} needs its own Python code (auto_map) to build; "
                "pass --trust-remote-code if you trust it"
            ) from error
        raise InputError(
            f"{config_file}: transformers cannot read this config: {_one_line(error)}"
        ) from error


def _model_builder(
    transformers: ModuleType, hf_config: Any, raw: dict[str, Any], config_file: Path, trust_remote_code: bool
) -> tuple[Callable[[dict[str, Any]], Any], str]:
    """How to call from_config for this config, and what to call the model in messages."""
    architectures = raw.get("architectures") or []
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    auto_map = raw.get("auto_map") or {}
    model_class = getattr(transformers, architecture, None) if isinstance(architecture, str) else None
    if model_class is not None and hasattr(model_class, "_from_config"):
        return (lambda kwargs: model_class._from_config(hf_config, **kwargs)), str(architecture)
    remote = [key for key in (*AUTO_CLASSES, *auto_map) if key in auto_map and key.startswith("AutoModel")]
    if remote:
        if not trust_remote_code:
            raise UsageError(
                f"{config_file}: model class {architecture or remote[0]} is remote code (auto_map); "
                "pass --trust-remote-code if you trust it"
            )
        auto = getattr(transformers, remote[0])
        return (
            lambda kwargs: auto.from_config(hf_config, trust_remote_code=True, **kwargs)
        ), f"{architecture or auto_map[remote[0]]} (remote code)"
    if architecture is not None:
        raise InputError(
            f"{config_file}: transformers {transformers.__version__} has no model class "
            f"{architecture!r} (architectures[0])"
        )
    for name in AUTO_CLASSES:
        auto = getattr(transformers, name)
        if type(hf_config) in auto._model_mapping:
            return (
                lambda kwargs, auto=auto: auto.from_config(hf_config, **kwargs)
            ), f"{name}({raw['model_type']})"
    raise InputError(f"{config_file}: no transformers model class for model_type {raw['model_type']!r}")


def _dtype_choice(dtype: str) -> str:
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_CHOICES[dtype]


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _parameters_on_meta(nn: ModuleType) -> Iterator[None]:
    """Every parameter registered inside goes to the meta device; buffers stay real on the CPU.

    Like accelerate's ``init_empty_weights(include_buffers=False)``.  A parameter is first created by its
    module (``torch.empty``: address space, no pages touched) and replaced by a meta one at registration,
    before the module's own ``reset_parameters`` runs, so no weight is ever written.  A parameter that is
    already on meta (``tie_weights`` assigning the embedding to ``lm_head``) is kept as the same object,
    which is how the tie stays visible to ``save_pretrained``'s identity check.
    """
    register_parameter = nn.Module.register_parameter

    def register_on_meta(module: Any, name: str, param: Any) -> None:
        register_parameter(module, name, param)
        if param is not None and param.device.type != "meta":
            on_meta = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            on_meta.__dict__.update(param.__dict__)
            module._parameters[name] = on_meta

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter


def _template(
    torch: ModuleType, transformers: ModuleType, model: Any, config_file: Path, raw: dict[str, Any]
) -> HfTemplate:
    try:  # save_pretrained's own steps; revert_weight_conversion exists from transformers 5
        from huggingface_hub.serialization._torch import get_torch_storage_id, get_torch_storage_size
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
        from transformers.pytorch_utils import Conv1D
    except ImportError as error:
        raise UsageError(f"{HF_EXTRA_HINT} (transformers 5 or newer)") from error

    frozen = _materialize_frozen(model)
    # The steps of save_pretrained, in its order.
    state = model.state_dict()
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    before = dict(state)
    kept = remove_tied_weights_from_state_dict(state, model)
    saved = revert_weight_conversion(model, dict(kept))

    def identity(name: str, tensor: Any) -> Any:
        # Tied parameters are one object on the model; meta state-dict entries are fresh detached copies.
        if tensor.device.type == "meta":
            return ("object", id(model.get_parameter_or_buffer(name)))
        return get_torch_storage_id(tensor)

    kept_by_identity = {identity(name, tensor): name for name, tensor in kept.items()}
    sources = _sources(revert_weight_conversion, model, kept, saved)
    renamed = {source: name for name, source in sources.items()}
    aliases = {
        name: renamed.get(kept_by_identity[identity(name, tensor)], kept_by_identity[identity(name, tensor)])
        for name, tensor in before.items()
        if name not in kept and identity(name, tensor) in kept_by_identity
    }

    storage_keys: dict[Any, int] = {}
    tensors = []
    storage: Any
    for name, tensor in saved.items():
        source = sources.get(name, name)
        prefix, _, attribute = source.rpartition(".")
        module = _submodule(model, prefix)
        is_buffer = module is not None and attribute in module._buffers
        dtype = _SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise InputError(f"{config_file}: {name} has dtype {tensor.dtype}, which netinit cannot write")
        if tensor.device.type == "meta":
            # On the meta device there are no storage pointers: views of one tensor (a split on save) share
            # their base, exactly as they share one storage when save_pretrained runs on the CPU.
            storage = ("meta", id(tensor._base if tensor._base is not None else tensor))
            value = None
        else:
            storage = get_torch_storage_id(tensor)
            flat = tensor.detach().contiguous().reshape(-1)
            value = flat.view(torch.uint8).numpy().tobytes() if is_buffer or source in frozen else None
        tensors.append(
            HfTensor(
                name=name,
                shape=tuple(int(size) for size in tensor.shape),
                dtype=dtype,
                module_class=type(module).__name__ if module is not None else "",
                attribute=attribute,
                role=tensor_role(module, attribute, is_buffer, torch.nn, Conv1D),
                is_buffer=is_buffer,
                source=source,
                storage_key=storage_keys.setdefault(storage, len(storage_keys)),
                storage_bytes=int(get_torch_storage_size(tensor)),
                value=value,
                groups=int(module.groups) if isinstance(module, torch.nn.modules.conv._ConvNd) else 1,
                transposed=bool(getattr(module, "is_transposed", False)),
            )
        )
    return HfTemplate(
        config_path=config_file,
        config=raw,
        model_class=type(model).__name__,
        dtype=_SAFETENSORS_DTYPES.get(str(model.dtype).removeprefix("torch."), str(model.dtype)),
        tensors=tuple(tensors),
        aliases=aliases,
        total_parameters=int(model.num_parameters()),
        generation_config=(
            model.generation_config.to_json_string(use_diff=True, keys_to_pop=["compile_config"])
            if model.can_generate() and model.generation_config is not None
            else None
        ),
    )


def _materialize_frozen(model: Any) -> set[str]:
    """Parameters the model never trains (``requires_grad=False``: Whisper's sinusoidal encoder
    positions) get their real values: the owner is moved off the meta device alone, and the model's
    own ``_init_weights`` runs on it and each module above it (where families set such values)."""
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    for name in frozen:
        prefix = name.rpartition(".")[0]
        model.get_submodule(prefix).to_empty(device="cpu", recurse=False)
        parts = prefix.split(".") if prefix else []
        for depth in range(len(parts), -1, -1):
            model._init_weights(model.get_submodule(".".join(parts[:depth])))
    return frozen


def _sources(
    revert: Callable[..., Any], model: Any, kept: dict[str, Any], saved: dict[str, Any]
) -> dict[str, str]:
    """Saved name → the in-memory state-dict name it comes from.

    A tensor that save_pretrained keeps or only renames is the same object; a split one (fused experts
    stored per expert) is found by reverting its source alone.
    """
    by_object = {id(tensor): name for name, tensor in kept.items()}
    sources = {name: by_object[id(tensor)] for name, tensor in saved.items() if id(tensor) in by_object}
    if len(sources) == len(saved):
        return sources
    consumed = [name for name in kept if name not in set(sources.values())]
    for name in consumed:
        try:
            pieces = revert(model, {name: kept[name]})
        except Exception:  # a many-to-one conversion cannot run on one piece; those keep their own name
            continue
        for piece in pieces:
            if piece in saved and piece not in sources:
                sources[piece] = name
    return sources


def _submodule(model: Any, prefix: str) -> Any:
    try:
        return model.get_submodule(prefix)
    except AttributeError:
        return None
