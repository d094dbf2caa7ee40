"""What netinit knows about checkpoint families: token tables, tie pairs, weight norm, markers.

Names only, no format code: the safetensors reader folds tie pairs with identical bytes into one
tensor, the name rules read the model width from the token table, and the planner derives a
weight-norm magnitude from its direction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

Shape = tuple[int, ...]

# Input token tables [vocab, d], by module name: an output head may be tied to one, and its
# second axis is the model width.  The short names count only as a whole module name.
_TOKEN_TABLES_LONG = ("embed_tokens", "word_embeddings", "embed_in", "tok_embeddings")
_TOKEN_TABLES_SHORT = ("wte", "shared")
TOKEN_TABLE = re.compile(rf"(?:^|\.)(?:{'|'.join(_TOKEN_TABLES_SHORT + _TOKEN_TABLES_LONG)})\.weight$")
# A tie target also accepts the long names at the end of a longer module name (decoder_embed_tokens).
_TIED_TOKEN_TABLE = "|".join(
    [
        *(rf"(?:^|\.){name}\.weight$" for name in _TOKEN_TABLES_SHORT),
        *(rf"{n}\.weight$" for n in _TOKEN_TABLES_LONG),
    ]
)

# Known tie pairs (alias, tied-to patterns): the second name is the one kept as the param.
TIE_PAIRS: tuple[tuple[str, str], ...] = (
    (r"^(?P<p>.*)lm_head\.weight$", _TIED_TOKEN_TABLE),
    (r"cls\.predictions\.decoder\.weight$", r"word_embeddings\.weight$"),
    (r"(?:^|\.)proj_out\.weight$", r"decoder\.embed_tokens\.weight$"),
    (r"(?:^|\.)(?:encoder|decoder)\.embed_tokens\.weight$", r"(?:^|\.)shared\.weight$"),
)

# Every embedding table [vocab, dim] a name rule recognises by its module name (token tables,
# position tables, T5's relative attention bias).
EMBEDDING_TABLE = (
    r"(?:^|\.)(?P<m>\w*embed_tokens|\w*embed_positions|tok_embeddings|\w*_embeddings?|embeddings?|"
    r"wte|wpe|shared|relative_attention_bias|embed|embed_in|word_emb)\.weight$"
)


def hidden_size(shapes: dict[str, Shape]) -> int | None:
    """The model width d, from the token embedding table ``[vocab, d]`` when there is one."""
    for name, shape in shapes.items():
        if len(shape) == 2 and TOKEN_TABLE.search(name):
            return shape[1]
    return None


# A few checkpoint families change how a name is read.
FAMILY_MARKERS: dict[str, re.Pattern[str]] = {
    "whisper": re.compile(r"(?:^|\.)encoder\.conv2\.weight$"),
}


def detect_families(names: Iterable[str]) -> frozenset[str]:
    names = list(names)
    return frozenset(family for family, marker in FAMILY_MARKERS.items() if any(map(marker.search, names)))


# ---------------------------------------------------------------------------------------------
# Weight normalization (torch.nn.utils.weight_norm, or its parametrization form): a stored pair
# (g, v) stands for weight = g · v / ‖v‖, the norm taken over every axis but one (``dim``, whose
# size g keeps) or over all of them (g a single value).  v is the layer's weight as the method
# sees it; g is derived from the new v (see plan.py), so that the effective weight is v itself.
# ---------------------------------------------------------------------------------------------
WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class WeightNormPair:
    prefix: str  # the module: its weight would be ``prefix + ".weight"``
    magnitude: str  # g
    direction: str  # v
    axes: tuple[int, ...]  # the axes of v the norm sums over


def weight_norm_pair(name: str, shapes: dict[str, Shape]) -> WeightNormPair | None:
    """The stored weight-norm pair ``name`` belongs to, if both halves are there and their
    shapes fit (g: v's shape with every axis 1 but the kept one, or a single value)."""
    for g_suffix, v_suffix in WEIGHT_NORM_SUFFIXES:
        if name.endswith(g_suffix):
            prefix = name[: -len(g_suffix)]
        elif name.endswith(v_suffix):
            prefix = name[: -len(v_suffix)]
        else:
            continue
        g, v = prefix + g_suffix, prefix + v_suffix
        if g not in shapes or v not in shapes:
            return None
        axes = _norm_axes(shapes[g], shapes[v])
        return None if axes is None else WeightNormPair(prefix, g, v, axes)
    return None


def _norm_axes(g: Shape, v: Shape) -> tuple[int, ...] | None:
    if not v or math.prod(v) == 0:
        return None
    if math.prod(g) == 1 and (len(g) in (0, len(v))):
        return tuple(range(len(v)))  # dim=None: one norm over the whole tensor
    if len(g) != len(v):
        return None
    kept = [axis for axis, size in enumerate(g) if size != 1]
    if len(kept) != 1 or g[kept[0]] != v[kept[0]]:
        return None
    return tuple(axis for axis in range(len(v)) if axis != kept[0])
