"""Classify every stored tensor of an ONNX model: one role, layout and reason from all its uses.

The walk (:mod:`~netinit_cli.classify.onnx_walk`) gives a finding for every use of a stored
tensor; here they are merged: agreeing uses give one role (tied weights), disagreeing uses a
``CONFLICT``.  Main-graph inputs without an initializer are parameters (``has_data=False``, what
``export_params=False`` produces) when they feed a parameter slot; when the model has
``training_info``, its bindings decide which tensors are learnable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx

from netinit_cli.classify.layouts import TORCH_CONVENTION
from netinit_cli.classify.onnx_patterns import Finding
from netinit_cli.classify.onnx_slots import ML
from netinit_cli.classify.onnx_walk import Classifier
from netinit_cli.classify.values import buffer_name_note
from netinit_cli.dtypes import is_float
from netinit_cli.errors import InputError
from netinit_cli.formats.onnx.graph import GRAPH_INPUT, Graphs, StoredTensor, has_data, op_domain
from netinit_cli.model import Layer, Layout, Param, Role

# --------------------------------------------------------------------------------------------
# Merging the uses of one tensor
# --------------------------------------------------------------------------------------------


Merged = tuple[Role, str, Layout | None, list[str], Layer | None]


def _merge(stored: StoredTensor, findings: list[Finding]) -> Merged:
    role, reason, layout, notes = _merge_roles(stored, findings)
    # The op it feeds, when every slot use agrees (a tensor shared by two layers has none).
    layers = {f.layer for f in findings if f.kind == "slot" and f.role is role}
    return role, reason, layout, notes, layers.pop() if len(layers) == 1 else None


def _merge_roles(stored: StoredTensor, findings: list[Finding]) -> tuple[Role, str, Layout | None, list[str]]:
    notes: list[str] = []
    floating = is_float(stored.dtype)
    if any(f.kind == "quantized" for f in findings):
        first = next(f for f in findings if f.kind == "quantized")
        return Role.QUANTIZED, first.reason, None, notes
    if not floating:
        return Role.CONSTANT, f"{stored.dtype} tensor (never re-initialized)", None, notes
    slots = [f for f in findings if f.kind == "slot"]
    fixed = [f for f in findings if f.kind == "constant"]
    unknown = [f for f in findings if f.kind == "unknown"]
    if stored.static:
        # onnx.checker checks neither ranks nor attribute values such as Conv group=0: a
        # tensor that its slot cannot read makes the model invalid, said in one line.
        for finding in slots:
            problem = finding.layout.problem(stored.shape) if finding.layout is not None else None
            if problem is not None:
                raise InputError(
                    f"tensor {stored.name!r} {list(stored.shape)} used as {finding.reason}: {problem}; "
                    "the model is inconsistent (fix the exporter's output)"
                )
    if slots:
        learnable = [f for f in slots if f.role.learnable]
        roles = {f.role for f in slots}
        if fixed and learnable:
            return Role.CONFLICT, _list_reasons([*learnable, *fixed]), None, notes
        if roles == {Role.EMBEDDING, Role.WEIGHT}:
            embedding = next(f for f in slots if f.role is Role.EMBEDDING)
            reason = f"{embedding.reason}; tied with " + "; ".join(
                f.reason for f in slots if f.role is Role.WEIGHT
            )
            return Role.EMBEDDING, reason, embedding.layout, notes
        if len(roles) > 1:
            return Role.CONFLICT, _list_reasons(slots), None, notes
        role = slots[0].role
        layout = slots[0].layout
        if stored.static and layout is not None:
            fans = {f.layout.fans(stored.shape) for f in slots if f.layout is not None}
            if len(fans) > 1:
                return Role.CONFLICT, _list_reasons(slots) + " (different fans)", None, notes
        reason = slots[0].reason if len(slots) == 1 else f"{slots[0].reason} (shared by {len(slots)} uses)"
        if unknown:
            reason += f"; also {unknown[0].reason}"
        note = buffer_name_note(stored.name, stored.value, role)
        if note:
            notes.append(note)
        return role, reason, layout, notes
    if fixed:
        return Role.CONSTANT, fixed[0].reason, None, notes
    if math.prod(stored.shape) <= 1 and stored.static:
        reason = unknown[0].reason if unknown else "unused"
        return Role.SCALAR, f"float scalar in {reason}" if unknown else "unused float scalar", None, notes
    if not unknown:
        return Role.UNKNOWN, "unused float tensor", None, notes
    return Role.UNKNOWN, "float tensor in " + "; ".join(dict.fromkeys(f.reason for f in unknown)), None, notes


def _list_reasons(findings: Sequence[Finding]) -> str:
    parts = list(dict.fromkeys(f"{f.role.value}: {f.reason}" for f in findings))
    return "conflicting uses — " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def classify_model(model: onnx.ModelProto) -> tuple[list[Param], list[str]]:
    """Every stored tensor of ``model`` as a classified :class:`Param`, and notes for the user."""
    return classify_graphs(Graphs(model))


def classify_graphs(graphs: Graphs) -> tuple[list[Param], list[str]]:
    """Every stored tensor indexed in ``graphs`` as a classified :class:`Param`, and notes."""
    model = graphs.model
    inputs = [s for s in graphs.stored if s.source == GRAPH_INPUT]
    first_input = model.graph.input[0].name if model.graph.input else ""
    # Graph inputs without data are parameters only if they are not the first input and are
    # floats; all others are data.  Candidates that reach no parameter slot are data after all.
    candidates = {s.value for s in inputs if s.value != first_input and is_float(s.dtype)}
    data_inputs = {s.value for s in inputs} - candidates
    while True:
        classifier = Classifier(graphs, data_inputs)
        results = {id(s): _merge(s, classifier.findings(s)) for s in graphs.stored}
        rejected = {s.value for s in inputs if s.value in candidates and not results[id(s)][0].learnable}
        if not rejected:
            break
        candidates -= rejected
        data_inputs |= rejected

    trainable = _training_bindings(model)
    params: list[Param] = []
    notes: list[str] = []
    for stored in graphs.stored:
        role, reason, layout, extra, layer = results[id(stored)]
        if stored.source == GRAPH_INPUT:
            if stored.value not in candidates:
                continue
            declared = _declared_dims(stored)
            if any(isinstance(d, int) and d < 0 for d in declared):
                raise InputError(
                    f"graph input {stored.value!r} feeds a parameter slot ({reason}) but declares a "
                    f"negative dimension in its shape {declared}; the model is malformed (re-export it)"
                )
            if not stored.static:
                raise InputError(
                    f"graph input {stored.value!r} feeds a parameter slot ({reason}) but has no static "
                    f"shape ({_dims_text(stored)}); export it with fixed dimensions"
                )
        if trainable is not None and role.learnable and stored.value not in trainable:
            reason = f"not in training_info bindings (frozen); topology: {role.value}, {reason}"
            role, layout = Role.CONSTANT, None
        elif trainable is not None and stored.value in trainable and role in _UNRECOGNISED:
            role, layout, reason = _bound_fallback(stored, role, reason)
            extra.append(f"{stored.name}: {reason}; check it, or exclude it")
        notes.extend(extra)
        data = stored.source != GRAPH_INPUT and (stored.tensor is None or has_data(stored.tensor))
        params.append(
            Param(
                name=stored.name,
                shape=tuple(max(d, 0) for d in stored.shape),
                dtype=stored.dtype,
                has_data=data,
                role=role,
                layout=layout,
                reason=reason,
                source=stored.source,
                layer=layer if role.learnable else None,
            )
        )
    if not any(p.role.learnable for p in params):
        notes.append(_nothing_to_initialize(graphs))
    return params, notes


def _nothing_to_initialize(graphs: Graphs) -> str:
    """The note for a model without parameters; names the ops that hold them in attributes
    (skl2onnx tree and linear models: ai.onnx.ml TreeEnsemble*, Linear*, SVM*)."""
    attribute_ops = sorted(
        {node.op_type for scope in graphs.scopes for node in scope.nodes if op_domain(node.domain) == ML}
    )
    text = "no tensor of this model is a recognised parameter: nothing to re-initialize"
    if attribute_ops:
        text += (
            f" (its parameters are attributes of {', '.join(attribute_ops)} ({ML}), which netinit "
            "does not change; the output is the same graph)"
        )
    return text


_UNRECOGNISED = frozenset({Role.UNKNOWN, Role.SCALAR})


def _bound_fallback(stored: StoredTensor, role: Role, reason: str) -> tuple[Role, Layout | None, str]:
    """training_info is authoritative for the learnable set: a bound float
    tensor whose slot netinit does not recognise is still learnable.  Rank ≥ 2 becomes a weight
    with torch's [out, in, k…] convention, rank ≤ 1 a bias; integer tensors stay constants."""
    if not is_float(stored.dtype):
        return role, None, reason
    why = f"bound by training_info but {reason}"
    if len(stored.shape) >= 2:
        return (
            Role.WEIGHT,
            TORCH_CONVENTION,
            f"{why}: a weight with fans by torch's [out, in, k…] convention",
        )
    return Role.BIAS, None, f"{why}: a bias"


def _training_bindings(model: onnx.ModelProto) -> set[str] | None:
    if not model.training_info:
        return None
    names: set[str] = set()
    for info in model.training_info:
        names.update(b.key for b in info.initialization_binding)
        names.update(b.key for b in info.update_binding)
    return names


def _declared_dims(stored: StoredTensor) -> list[int | str]:
    """A graph input's dimensions as declared: sizes (negative ones too), names, or "?"."""
    if stored.graph_input is None:
        return list(stored.shape)
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in stored.graph_input.type.tensor_type.shape.dim
    ]


def _dims_text(stored: StoredTensor) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in stored.shape) + "]"
