"""Finding LSUV's layers in an ONNX graph: weight layers in topological order, each with the tensor
LSUV measures (after the bias add, before the nonlinearity) and, if it is left alone, why.

Topological order is the graph's node order, which ONNX requires to be topologically sorted.
Layers inside If/Loop/Scan bodies are not walked: their weights keep the ordinary method.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import onnx

_LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_RECURRENT = {"LSTM", "GRU", "RNN"}
_PASS_THROUGH = {"Identity", "Cast", "Transpose"}  # ops a weight may pass through on its way to the layer
_FLOAT_WEIGHTS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


@dataclass(frozen=True)
class Layer:
    """A weight layer: its weight initializer, the tensor LSUV measures, and why it is skipped."""

    weight: str
    node: str  # the node's name, or ``op#index`` when it has none
    op: str
    output: str  # the measured tensor: after the bias add, before the nonlinearity
    bias: str | None = None
    skip: str | None = None


class _Graph:
    """Producers, consumers and initializers of the main graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.outputs = {value.name for value in graph.output}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in set(node.input) | _subgraph_inputs(node):
                self.consumers.setdefault(name, []).append(node)

    def trace_weight(self, tensor: str) -> tuple[str, list[int]] | None:
        """The float initializer ``tensor`` comes from through Identity/Cast/Transpose, and ``order``
        with ``tensor.shape[i] == initializer.shape[order[i]]``; None for a dynamic tensor."""
        perms: list[list[int] | None] = []  # Transposes met walking back, nearest the layer first
        while tensor not in self.initializers:
            node = self.producer.get(tensor)
            if node is None or node.op_type not in _PASS_THROUGH or len(self.consumers.get(tensor, [])) != 1:
                return None
            if node.op_type == "Transpose":
                perms.append(next((list(a.ints) for a in node.attribute if a.name == "perm"), None))
            tensor = node.input[0]
        initializer = self.initializers[tensor]
        if initializer.data_type not in _FLOAT_WEIGHTS:
            return None
        rank = len(initializer.dims)
        order = list(range(rank))
        for perm in perms:  # T = Transpose(S, p): T.shape[j] == S.shape[p[j]]
            step = perm if perm is not None and len(perm) == rank else list(range(rank))[::-1]
            order = [step[axis] for axis in order]
        return tensor, order

    def shape(self, name: str, perm: list[int]) -> list[int]:
        dims = list(self.initializers[name].dims)
        return [dims[axis] for axis in perm] if len(perm) == len(dims) else dims

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope, roughly: every input."""
    names: set[str] = set()
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names


def _bias_after(graph: _Graph, output: str, channels: int, axis: int) -> tuple[str, str] | None:
    """An Add right after ``output`` with an initializer that broadcasts along ``axis`` (from the end)."""
    node = graph.only_consumer(output)
    if node is None or node.op_type != "Add" or node.domain not in ("", "ai.onnx"):
        return None
    other = node.input[1] if node.input[0] == output else node.input[0]
    traced = graph.trace_weight(other)
    if traced is None:
        return None
    dims = graph.shape(*traced)
    if len(dims) < axis or dims[-axis] != channels or math.prod(dims) != channels:
        return None
    return traced[0], node.output[0]


def _layer_of(graph: _Graph, node: onnx.NodeProto, index: int) -> Layer | None:
    """The layer ``node`` is, with its weight and measured tensor, or None if it is not a weight layer."""
    op = node.op_type
    name = node.name or f"{op}#{index}"
    if node.domain not in ("", "ai.onnx") or op not in _LINEAR:
        return None
    inputs = list(node.input)
    if op == "MatMul":
        left, right = graph.trace_weight(inputs[0]), graph.trace_weight(inputs[1])
        if (left is None) == (right is None):
            return None  # two activations (attention scores) or two constants
        if right is not None:
            dims = graph.shape(*right)
            found = _bias_after(graph, node.output[0], dims[-1], 1) if dims else None
            bias, output = found if found else (None, node.output[0])
            return Layer(right[0], name, op, output, bias)
        assert left is not None
        return Layer(left[0], name, op, node.output[0])
    traced = graph.trace_weight(inputs[1]) if len(inputs) > 1 else None
    if op == "Gemm" and traced is None and graph.trace_weight(inputs[0]) is not None:
        traced = graph.trace_weight(inputs[0])  # W @ x stored as A
    if traced is None:
        return None
    bias = inputs[2] if len(inputs) > 2 and inputs[2] else None
    output = node.output[0]
    if bias is None and op in ("Conv", "ConvTranspose"):
        dims = graph.shape(*traced)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        channels = dims[0] if op == "Conv" else dims[1] * group
        found = _bias_after(graph, output, channels, len(dims) - 1) if dims else None
        bias, output = found if found else (None, output)
    return Layer(traced[0], name, op, output, bias)


def _recurrent_weights(graph: _Graph, node: onnx.NodeProto) -> Iterable[str]:
    for tensor in list(node.input)[1:3]:
        traced = graph.trace_weight(tensor) if tensor else None
        if traced is not None:
            yield traced[0]


def find_layers(
    model: onnx.ModelProto, weight_names: Collection[str], excluded: Mapping[str, str] | None = None
) -> list[Layer]:
    """The weight layers of the main graph in topological order, each with a ``skip`` reason or None.

    Recognized: Conv, ConvTranspose, Gemm and MatMul whose weight is an initializer (possibly through
    Identity/Cast/Transpose), with their bias (Conv/Gemm's bias input, or an Add right after the
    layer whose initializer broadcasts on the output axis).  Recurrent layers, weights not in
    ``weight_names`` (with the reason ``excluded`` gives, if any) and weights shared with another
    use are listed as skipped.
    """
    weight_names, excluded = set(weight_names), excluded or {}
    graph = _Graph(model.graph)
    layers: list[Layer] = []
    uses: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type in _RECURRENT:
            for weight in _recurrent_weights(graph, node):
                if weight in weight_names:
                    layer = Layer(
                        weight, node.name or f"{node.op_type}#{index}", node.op_type, node.output[0]
                    )
                    layers.append(_skipped(layer, "recurrent layer, keeps the ordinary method"))
            continue
        found = _layer_of(graph, node, index)
        if found is not None:
            layers.append(found)
            uses[found.weight] = uses.get(found.weight, 0) + 1
    checked: list[Layer] = []
    for layer in layers:
        if layer.skip is None:
            reason = _skip_reason(graph, layer, weight_names, excluded, uses)
            layer = _skipped(layer, reason) if reason else layer
        checked.append(layer)
    return checked


def _skipped(layer: Layer, reason: str) -> Layer:
    return Layer(layer.weight, layer.node, layer.op, layer.output, layer.bias, reason)


def _skip_reason(
    graph: _Graph, layer: Layer, weight_names: set[str], excluded: Mapping[str, str], uses: dict[str, int]
) -> str:
    if layer.weight not in weight_names:
        return excluded.get(
            layer.weight, "not filled in this run (missing-only: only filled layers are rescaled)"
        )
    if uses[layer.weight] > 1 or len(graph.consumers.get(layer.weight, [])) > 1:
        return "weight shared with another use (tied), rescaling it would change both"
    return ""
