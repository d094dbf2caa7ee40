"""An index of a ModelProto: every graph scope and every stored tensor in it, by unique name.

Stored tensors come from several places, each with a unique *scoped name*:

* main-graph initializers, sparse initializers, and Constant nodes keep their own name
  (a Constant node is named by its output);
* tensors in a subgraph (If/Loop/Scan bodies) are ``<node>/<attribute>::<name>``, with
  ``<node>`` the node's name or ``<op>_<index>`` when it has none, nested scopes joined by ``/``:
  ``If_0/then_branch::W``, ``Loop_3/body/If_1/else_branch::c``;
* Constant nodes in a function body are ``<domain>.<function>()::<name>``: a function is
  classified once, in its own namespace, whatever its call sites;
* main-graph inputs without an initializer are listed too, without data (what
  ``export_params=False`` produces); the classifier keeps those that feed a parameter slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto

from netinit_cli.dtypes import onnx_to_name

# Param.source values
INITIALIZER = "initializer"
CONSTANT_NODE = "constant_node"
SPARSE_INITIALIZER = "sparse_initializer"
GRAPH_INPUT = "graph_input"
SUBGRAPH_INITIALIZER = "subgraph_initializer"
FUNCTION_CONSTANT = "function_constant"


@dataclass(eq=False)
class Scope:
    """A graph (main graph, subgraph, or function body) and the names it defines."""

    prefix: str  # "" for the main graph
    nodes: Sequence[onnx.NodeProto]
    parent: Scope | None
    graph: onnx.GraphProto | None = None
    function: onnx.FunctionProto | None = None
    defined: set[str] = field(default_factory=set)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)

    def scoped(self, value: str) -> str:
        return f"{self.prefix}::{value}" if self.prefix else value

    def resolve(self, value: str) -> Scope | None:
        """The scope that defines ``value`` as seen from this scope (outer scopes included)."""
        scope: Scope | None = self
        while scope is not None:
            if value in scope.defined:
                return scope
            scope = scope.parent
        return None


@dataclass(eq=False)
class StoredTensor:
    """Where one stored tensor lives in the proto, so that it can be read and replaced."""

    name: str  # unique scoped name (Param.name)
    value: str  # the value name inside its own graph
    scope: Scope
    source: str
    elem_type: int
    shape: tuple[int, ...]  # -1 for a dimension without a static size (graph inputs only)
    tensor: TensorProto | None = None  # initializer, Constant `value`, or sparse `values`
    node: onnx.NodeProto | None = None  # the Constant node
    attribute: AttributeProto | None = None  # the Constant node's value attribute
    sparse: onnx.SparseTensorProto | None = None
    graph_input: onnx.ValueInfoProto | None = None
    ranked: bool = True  # False for a graph input whose type has no shape at all

    @property
    def dtype(self) -> str:
        return onnx_to_name(self.elem_type)

    @property
    def static(self) -> bool:
        return all(d >= 0 for d in self.shape)


def _node_label(node: onnx.NodeProto, index: int, taken: set[str]) -> str:
    label = node.name if node.name and node.name not in taken else f"{node.op_type}_{index}"
    taken.add(label)
    return label


def _join(prefix: str, part: str) -> str:
    return f"{prefix}/{part}" if prefix else part


class Graphs:
    """All scopes of a model and every stored tensor in them, with unique scoped names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.scopes: list[Scope] = []
        self.stored: list[StoredTensor] = []
        self.functions: dict[tuple[str, str], Scope] = {}
        self.opsets = {op_domain(o.domain): o.version for o in model.opset_import}
        self._names: set[str] = set()
        self.main = self._add_graph(model.graph, "", None)
        for function in model.functions:
            prefix = f"{function.domain}.{function.name}()"
            scope = self._add_scope(Scope(prefix, function.node, None, function=function))
            scope.defined.update(function.input)
            self.functions[(op_domain(function.domain), function.name)] = scope
            self._add_nodes(scope)

    def _unique(self, name: str) -> str:
        unique, count = name, 1
        while unique in self._names:
            count += 1
            unique = f"{name}#{count}"
        self._names.add(unique)
        return unique

    def _add_scope(self, scope: Scope) -> Scope:
        self.scopes.append(scope)
        return scope

    def _add_graph(self, graph: onnx.GraphProto, prefix: str, parent: Scope | None) -> Scope:
        scope = self._add_scope(Scope(prefix, graph.node, parent, graph=graph))
        initializer_names = {t.name for t in graph.initializer}
        scope.defined.update(vi.name for vi in graph.input)
        source = INITIALIZER if parent is None else SUBGRAPH_INITIALIZER
        for tensor in graph.initializer:
            scope.defined.add(tensor.name)
            self.stored.append(
                StoredTensor(
                    self._unique(scope.scoped(tensor.name)),
                    tensor.name,
                    scope,
                    source,
                    tensor.data_type,
                    tuple(tensor.dims),
                    tensor=tensor,
                )
            )
        for sparse in graph.sparse_initializer:
            scope.defined.add(sparse.values.name)
            self.stored.append(
                StoredTensor(
                    self._unique(scope.scoped(sparse.values.name)),
                    sparse.values.name,
                    scope,
                    SPARSE_INITIALIZER,
                    sparse.values.data_type,
                    tuple(sparse.dims),
                    tensor=sparse.values,
                    sparse=sparse,
                )
            )
        if parent is None:
            for vi in graph.input:
                if vi.name in initializer_names or not vi.type.HasField("tensor_type"):
                    continue
                tensor_type = vi.type.tensor_type
                dims = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else -1
                    for d in tensor_type.shape.dim
                )
                ranked = tensor_type.HasField("shape")
                self.stored.append(
                    StoredTensor(
                        self._unique(vi.name),
                        vi.name,
                        scope,
                        GRAPH_INPUT,
                        tensor_type.elem_type,
                        dims if ranked else (-1,),
                        graph_input=vi,
                        ranked=ranked,
                    )
                )
        self._add_nodes(scope)
        return scope

    def _add_nodes(self, scope: Scope) -> None:
        taken: set[str] = set()
        for index, node in enumerate(scope.nodes):
            for output in node.output:
                if output:
                    scope.defined.add(output)
                    scope.producer[output] = node
            if node.op_type == "Constant" and op_domain(node.domain) == "" and node.output:
                self._add_constant(scope, node)
            label = None
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.type == AttributeProto.GRAPH else []
                if attribute.type == AttributeProto.GRAPHS:
                    subgraphs = list(attribute.graphs)
                for number, subgraph in enumerate(subgraphs):
                    label = label or _node_label(node, index, taken)
                    part = attribute.name if len(subgraphs) == 1 else f"{attribute.name}[{number}]"
                    self._add_graph(subgraph, _join(_join(scope.prefix, label), part), scope)

    def _add_constant(self, scope: Scope, node: onnx.NodeProto) -> None:
        if not node.attribute:
            return
        attribute = node.attribute[0]
        value = node.output[0]
        source = FUNCTION_CONSTANT if scope.function is not None else CONSTANT_NODE
        tensor: TensorProto | None = None
        sparse = None
        if attribute.type == AttributeProto.TENSOR:
            tensor = attribute.t
            elem_type, shape = tensor.data_type, tuple(tensor.dims)
        elif attribute.type == AttributeProto.SPARSE_TENSOR:
            sparse = attribute.sparse_tensor
            tensor = sparse.values
            elem_type, shape = tensor.data_type, tuple(sparse.dims)
        elif attribute.type == AttributeProto.FLOAT:
            elem_type, shape = TensorProto.FLOAT, ()
        elif attribute.type == AttributeProto.FLOATS:
            elem_type, shape = TensorProto.FLOAT, (len(attribute.floats),)
        elif attribute.type == AttributeProto.INT:
            elem_type, shape = TensorProto.INT64, ()
        elif attribute.type == AttributeProto.INTS:
            elem_type, shape = TensorProto.INT64, (len(attribute.ints),)
        elif attribute.type == AttributeProto.STRING:
            elem_type, shape = TensorProto.STRING, ()
        elif attribute.type == AttributeProto.STRINGS:
            elem_type, shape = TensorProto.STRING, (len(attribute.strings),)
        else:
            return
        self.stored.append(
            StoredTensor(
                self._unique(scope.scoped(value)),
                value,
                scope,
                source,
                elem_type,
                shape,
                tensor=tensor,
                node=node,
                attribute=attribute,
                sparse=sparse,
            )
        )

    def iter_tensors(self) -> Iterator[TensorProto]:
        """Every TensorProto that may carry external data (for validation and rewriting)."""
        for stored in self.stored:
            if stored.tensor is not None:
                yield stored.tensor
            if stored.sparse is not None:
                yield stored.sparse.indices
        for scope in self.scopes:
            for node in scope.nodes:
                if node.op_type == "Constant":
                    continue
                for attribute in node.attribute:
                    if attribute.type == AttributeProto.TENSOR:
                        yield attribute.t
                    elif attribute.type == AttributeProto.TENSORS:
                        yield from attribute.tensors


def op_domain(domain: str) -> str:
    """The domain of an op or opset import, with the default domain's two spellings made one."""
    return "" if domain in ("", "ai.onnx") else domain


# Every field of a TensorProto that can hold its values.
DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def has_data(tensor: TensorProto) -> bool:
    """False for a tensor whose data is absent: no bytes at all for a non-empty shape."""
    if math.prod(tensor.dims) == 0 or tensor.data_location == TensorProto.EXTERNAL:
        return True
    return any(len(getattr(tensor, name)) for name in DATA_FIELDS)
