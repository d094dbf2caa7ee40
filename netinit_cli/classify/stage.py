"""The classify stage: every tensor an opened model stores becomes a classified
:class:`~netinit_cli.model.Param` (role, layout, reason), plus notes for the user.

Readers only read; this is where their tensors meet the classifiers: ONNX graphs go to
:func:`~netinit_cli.classify.onnx.classify_graphs` (then missing external data is noted),
safetensors names to :func:`~netinit_cli.classify.names.classify_params` (then tied tensors
are folded).  Both then read a sample of each weight-slot tensor's stored values: a fixed
transform (a DFT basis, an arange) becomes ``fixed_transform``; values that only look like a
fixed buffer are noted (:func:`read_values`).  A
``--like`` template is classified here too and merged into the bundle, or becomes the tensors
of a new checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import numpy as np

from netinit_cli.classify.families import TIE_PAIRS
from netinit_cli.errors import InputError
from netinit_cli.model import Param, Role

if TYPE_CHECKING:
    from netinit_cli.formats.base import ModelFile
    from netinit_cli.formats.onnx.reader import OnnxModel
    from netinit_cli.formats.safetensors.bundle import SafetensorsModel
    from netinit_cli.formats.safetensors.hf_template import HfTemplate
    from netinit_cli.formats.safetensors.template import Manifest

    Template = OnnxModel | SafetensorsModel | Manifest | HfTemplate


@dataclass
class Classified:
    """An opened model's tensors, classified, and the notes found reading and classifying it."""

    params: list[Param]
    notes: list[str]


def classify(model: ModelFile) -> Classified:
    """Classify the tensors ``model`` stores (pure: the model is only read)."""
    if model.kind == "onnx":
        return _classify_onnx(cast("OnnxModel", model))
    return _classify_safetensors(cast("SafetensorsModel", model))


def classify_with_template(model: ModelFile, template: Template) -> Classified:
    """``model``'s tensors plus those of ``--like TEMPLATE`` it lacks (to be created); for a
    model created from scratch, the template's tensors (a config template's roles come from the
    module classes that own them, its buffers keep the model class's values)."""
    from netinit_cli.formats.safetensors.template import merge_template, new_params

    if template.kind == "hf-config":
        return Classified(template_params(template), _config_notes(cast("HfTemplate", template)))
    bundle = cast("SafetensorsModel", model)
    wanted = template_params(template)
    if bundle.created:
        return Classified(new_params(wanted), [])
    classified = classify(bundle)
    params, notes = merge_template(bundle, classified.params, wanted)
    return Classified(params, [*classified.notes, *notes])


def template_params(template: Template) -> list[Param]:
    """The tensors a template asks for, classified, each with ``has_data=False`` where it is a
    safetensors bundle, manifest or config (an ONNX template keeps what its graph says; a config's
    persistent buffers have data)."""
    if template.kind == "hf-config":
        from netinit_cli.classify.modules import classify_modules

        config = cast("HfTemplate", template)
        return classify_modules(config.tensors, f"template {config.config_path.name}")
    if template.kind == "onnx":
        params = _classify_onnx(cast("OnnxModel", template)).params
        return [param for param in params if param.source in ("initializer", "graph_input")]
    if template.kind == "manifest":
        manifest = cast("Manifest", template)
        from netinit_cli.classify.names import classify_params

        return classify_params(manifest.params, manifest.format_hint)
    from netinit_cli.formats.safetensors.template import as_template

    bundle = cast("SafetensorsModel", template)
    hint = bundle.metadata.get("format")
    folded, _ = fold_ties(bundle.params, bundle.read_array)
    from netinit_cli.classify.names import classify_params

    return classify_params(as_template(bundle.path.name, folded), hint)


def _config_notes(template: HfTemplate) -> list[str]:
    notes = [f"{template.model_class} built from {template.config_path.name} on the meta device"]
    if template.aliases:
        tied = ", ".join(f"{alias} = {name}" for alias, name in sorted(template.aliases.items())[:3])
        more = f" and {len(template.aliases) - 3} more" if len(template.aliases) > 3 else ""
        notes.append(f"tied, written once as save_pretrained does: {tied}{more}")
    return notes


def _classify_onnx(model: OnnxModel) -> Classified:
    from netinit_cli.classify.onnx import classify_graphs

    graphs = model.graphs
    params, notes = classify_graphs(graphs)
    for param in params:
        missing = model.missing_data_file(param.name)
        if missing is not None:
            param.has_data = False
            notes.append(f"{param.name}: external data file {missing!r} is missing")
    # Constant value_floats and sparse tensors are not read for their values.
    stored = {s.name: s for s in graphs.stored}
    readable = {name for name, where in stored.items() if where.sparse is None and where.tensor is not None}
    params = read_values(params, model.read_array, readable, notes)
    return Classified(params, [*model.notes, *notes])


def _classify_safetensors(model: SafetensorsModel) -> Classified:
    from netinit_cli.classify.names import classify_params  # name rules: not for ONNX runs

    params = classify_params(model.params, model.metadata.get("format"))
    params, notes = fold_ties(params, model.read_array)
    params = read_values(params, model.read_array, None, notes)
    return Classified(params, [*model.notes, *notes])


# A model file's read_array with the ranges to read (see classify.values.sample_elements).
SampleReader = Callable[[str, list[tuple[int, int]] | None], np.ndarray]


def read_values(
    params: list[Param], read: SampleReader, readable: set[str] | None, notes: list[str]
) -> list[Param]:
    """Weight-slot tensors whose stored values are a fixed transform become ``fixed_transform``
    (kept unless a ``--rule`` names them); others whose values look like a fixed buffer get a
    note.  Only a bounded sample of each weight-slot tensor with data is read (see
    :mod:`netinit_cli.classify.values`); ``readable`` limits the names read (``None``: all)."""
    from netinit_cli.classify.values import (
        FIXED_DTYPES,
        fixed_transform,
        is_candidate,
        leading_elements,
        sample_elements,
        structured_value_note,
    )

    result = []
    for param in params:
        if not (param.role.random and param.has_data) or (
            readable is not None and param.name not in readable
        ):
            result.append(param)
            continue
        try:
            # Two reads at most: the leading values decide whether the spread sample is needed.
            leading = leading_elements(param.shape)
            values = read(param.name, leading)
            if not is_candidate(values):
                result.append(param)
                continue
            if leading is not None:
                values = read(param.name, sample_elements(param.shape))
        except InputError:
            result.append(param)
            continue
        fixed = None
        if param.role is Role.WEIGHT and param.dtype in FIXED_DTYPES:
            fixed = fixed_transform(values, param.layout)
        if fixed is not None:
            param = param.classified(Role.FIXED_TRANSFORM, f"{fixed} in {param.reason}", param.layout)
            # Decided: a note that its buffer-like name disagrees with a weight role is stale.
            stale = f"{param.name}: classified {Role.WEIGHT.value} but its name "
            notes[:] = [note for note in notes if not note.startswith(stale)]
        else:
            note = structured_value_note(param.name, param.role, values)
            if note:
                param.notes.append(note)
                notes.append(note)
        result.append(param)
    return result


def fold_ties(params: list[Param], read: Callable[[str], np.ndarray]) -> tuple[list[Param], list[str]]:
    """Fold known tie pairs with identical bytes into one param with an alias, and say so.

    safetensors cannot store one tensor under two names.  Two float tensors with a known tie
    pair of names (``lm_head.weight`` / ``*embed_tokens.weight``, ``wte.weight``,
    ``shared.weight``, ``cls.predictions.decoder.weight`` / ``word_embeddings.weight``,
    ``proj_out.weight``…) with the same shape, dtype and *identical bytes* are one tied tensor:
    one param (the embedding) carries the other name in ``aliases``; it is produced once and
    written under both names.
    """
    notes: list[str] = []
    by_name = {param.name: param for param in params}
    folded: set[str] = set()
    for alias_pattern, target_pattern in TIE_PAIRS:
        for alias in list(by_name):
            if alias in folded or not re.search(alias_pattern, alias):
                continue
            for name, param in by_name.items():
                if name == alias or name in folded or not re.search(target_pattern, name):
                    continue
                other = by_name[alias]
                if (param.shape, param.dtype) != (other.shape, other.dtype) or not param.has_data:
                    continue
                if not np.array_equal(read(name).view(np.uint8), read(alias).view(np.uint8)):
                    continue
                # The alias may already carry names folded into it (T5 v1.0 saves lm_head,
                # encoder/decoder.embed_tokens and shared): they move with it, or are lost.
                by_name[name] = replace(param, aliases=(*param.aliases, alias, *other.aliases))
                folded.add(alias)
                notes.append(
                    f"{alias} holds the same bytes as {name}: treated as tied (filled once, written under both names)"
                )
                break
    if folded:
        params = [by_name[param.name] for param in params if param.name not in folded]
    return params, notes
