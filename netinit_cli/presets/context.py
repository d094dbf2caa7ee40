"""Building preset contexts: ``config.json`` beside the checkpoint, the layer count, and — for
checkpoints that only have names — each tensor's fans, its layer's fan_in, RNN hidden size and
MultiheadAttention tags.  ONNX models get the same :class:`TensorContext` from the topology: the
classifier records in ``Param.layer`` the op each tensor feeds, a bias's weight in that op and
an RNN's ``hidden_size``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from netinit_cli.errors import InputError
from netinit_cli.model import Layout, Param, Role

from .choice import ModelContext, TensorContext

CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 16 << 20  # a transformers config is a few kB; refuse anything absurd
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
CONFIG_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

_RNN_NAME = re.compile(
    r"^(?P<module>.*?)(?P<kind>weight|bias)_(?P<which>ih|hh|hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)
RNN_OPS = frozenset({"LSTM", "GRU", "RNN"})
_MHA_IN = re.compile(r"(?:^|\.)(?:in_proj_weight|in_proj_bias|q_proj_weight|k_proj_weight|v_proj_weight)$")


def find_config(model_path: str | Path) -> Path | None:
    """``config.json`` in the model's folder (MODEL a folder of shards) or beside the file."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    candidate = folder / CONFIG_NAME
    return candidate if candidate.is_file() else None


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; an unreadable or malformed file is an :class:`InputError`."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a model config.json")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: cannot read the model config ({error}); fix or remove it") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}; fix or remove it")
    return data


def layers_in_names(names: Iterable[str]) -> int | None:
    """Largest layer index in the names + 1 (``model.layers.31.mlp…`` → 32), or None."""
    indices = [int(m.group(1)) for name in names for m in LAYER_INDEX.finditer(name)]
    return max(indices) + 1 if indices else None


def model_context(names: Iterable[str], model_path: str | Path | None = None) -> ModelContext:
    """The :class:`ModelContext` of a model: its config (found with :func:`find_config`) and names."""
    names = frozenset(names)
    config_path = find_config(model_path) if model_path is not None else None
    config = read_config(config_path) if config_path is not None else {}
    base = ModelContext(config, str(config_path) if config_path else None, names)
    layers = base.number(*CONFIG_LAYER_KEYS)
    if layers is not None and layers >= 1:
        key = next(k for k in CONFIG_LAYER_KEYS if base.number(k) is not None)
        return ModelContext(config, base.config_path, names, int(layers), f"config {key}")
    from_names = layers_in_names(names)
    source = "the largest layer index in the names" if from_names else ""
    return ModelContext(config, base.config_path, names, from_names, source)


def torch_fans_of(shape: tuple[int, ...], layout: Layout | None) -> tuple[int, int] | None:
    """torch's (fan_in, fan_out): through the layout when there is one, else torch's own
    reading of the stored shape ``[out, in, k…]``; None below rank 2."""
    if layout is not None and len(shape) >= 2:
        return layout.torch_fans(shape)
    if len(shape) < 2:
        return None
    field = math.prod(shape[2:])
    return shape[1] * field, shape[0] * field


def _layer_weight(name: str, by_name: dict[str, Param]) -> Param | None:
    """The weight a bias belongs to, by name: ``x.bias`` → ``x.weight`` (or weight norm's ``x.weight_v``
    / ``x.parametrizations.weight.original1``), ``x_bias`` → ``x_weight``, ``in_proj_bias`` →
    ``in_proj_weight``."""
    if name.endswith("in_proj_bias"):
        candidates = [name[: -len("bias")] + "weight"]
    elif name.endswith(".bias"):
        stem = name[: -len(".bias")]
        candidates = [f"{stem}.weight", f"{stem}.weight_v", f"{stem}.parametrizations.weight.original1"]
    elif name.endswith("_bias"):
        candidates = [name[: -len("_bias")] + "_weight"]
    else:
        return None
    return next((by_name[c] for c in candidates if c in by_name), None)


def _rnn_hidden(match: re.Match[str], by_name: dict[str, Param]) -> int | None:
    """H of torch's LSTM/GRU/RNN layer: weight_hh ``[G·H, H or proj]`` split in its G gate blocks."""
    hh = by_name.get(f"{match['module']}weight_hh_l{match['layer']}{match['rev'] or ''}")
    if hh is None or len(hh.shape) != 2:
        return None
    blocks = hh.layout.blocks if hh.layout is not None else 0
    if blocks <= 1 and hh.shape[1] and hh.shape[0] % hh.shape[1] == 0:
        blocks = hh.shape[0] // hh.shape[1]
    return hh.shape[0] // max(blocks, 1)


def _has_mha_input(module: str, by_name: dict[str, Param]) -> bool:
    """``module`` is a MultiheadAttention: it holds ``in_proj_weight`` or ``q_proj_weight``."""
    prefix = f"{module}." if module else ""
    return any(prefix + weight in by_name for weight in ("in_proj_weight", "q_proj_weight"))


def _tags(param: Param, by_name: dict[str, Param]) -> frozenset[str]:
    name = param.name
    if _RNN_NAME.search(name) or param.role is Role.RECURRENT:
        return frozenset({"rnn"})
    if _MHA_IN.search(name):
        return frozenset({"mha_in_proj"})
    module, _, leaf = name.rpartition(".")
    parent = module.rpartition(".")[0]
    if leaf == "bias" and module.rpartition(".")[2] == "out_proj" and _has_mha_input(parent, by_name):
        return frozenset({"mha_out_proj_bias"})
    if leaf in ("bias_k", "bias_v") and _has_mha_input(module, by_name):
        return frozenset({"mha_bias_kv"})
    return frozenset()


def _weight_fan_in(weight: Param | None) -> int | None:
    fans = torch_fans_of(weight.shape, weight.layout) if weight is not None else None
    return fans[0] if fans is not None else None


def _from_topology(param: Param, by_name: dict[str, Param], model: ModelContext) -> TensorContext:
    """An ONNX tensor's context from the op it feeds (``Param.layer``), never from its name."""
    layer = param.layer
    assert layer is not None
    layout = param.layout
    fans = layout.fans(param.shape) if layout is not None and len(param.shape) >= 2 else None
    weight = by_name.get(layer.weight) if layer.weight is not None and param.role is Role.BIAS else None
    return TensorContext(
        model,
        fans,
        torch_fans_of(param.shape, layout),
        _weight_fan_in(weight),
        layer.hidden_size,
        frozenset({"rnn"}) if layer.op in RNN_OPS else frozenset(),
    )


def tensor_contexts(params: Sequence[Param], model: ModelContext) -> dict[str, TensorContext]:
    """A :class:`TensorContext` for every classified param: from the topology where the
    classifier recorded the op a tensor feeds (ONNX), else from the names (checkpoints)."""
    by_name = {p.name: p for p in params}
    contexts: dict[str, TensorContext] = {}
    for param in params:
        if param.layer is not None:
            contexts[param.name] = _from_topology(param, by_name, model)
            continue
        layout = param.layout
        fans = layout.fans(param.shape) if layout is not None and len(param.shape) >= 2 else None
        layer_fan_in = _weight_fan_in(_layer_weight(param.name, by_name)) if param.role is Role.BIAS else None
        match = _RNN_NAME.search(param.name)
        hidden = _rnn_hidden(match, by_name) if match is not None else None
        contexts[param.name] = TensorContext(
            model,
            fans,
            torch_fans_of(param.shape, layout),
            layer_fan_in,
            hidden,
            _tags(param, by_name),
        )
    return contexts
