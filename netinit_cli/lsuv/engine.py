"""Layer-sequential unit-variance (LSUV) initialization of an ONNX model through onnxruntime.

Mishkin & Matas, "All you need is a good init" (arXiv 1511.06422), Alg. 1: after an orthogonal
pre-init with zero biases, for each weight layer L in topological order, while
``|std(B_L) - target| > tol`` and fewer than ``max_iter`` corrections::

    W_L <- W_L * target / (std(B_L) + 1e-8)

where ``B_L`` is the layer's output on one batch, after its bias and before the nonlinearity,
and ``std`` is the unbiased sample standard deviation over all its values, as in the ``lsuv``
package (``torch.Tensor.std``).  With a zero bias one correction is exact up to rounding.

How it runs on a model file:
- One augmented copy of the graph exposes, per layer, the mean, the population variance (in
  float64) and the element count of the measured tensor as scalar graph outputs, the way
  onnxruntime's calibrators append their reductions, so a pass returns a few scalars per layer
  and never whole activations.
- The weights being rescaled become graph inputs of that copy and are fed on every pass: one
  session serves the whole run.  ``SessionOptions.add_initializer`` is not used because ORT
  ignores it for weights folded by fusion (Conv+BatchNormalization).  Exposing every layer's
  output already prevents most of those fusions; ``bench/lsuv_bench.py --rebuild`` compares
  this with a new session per pass (ResNet-18: about 4x slower, mostly session creation).
- A pass measures every layer at once.  Layer k+1's measurement in the pass that follows layer
  k's last correction is taken with the corrected weights, so the walk needs one pass plus one
  per correction: ``1 + sum(iterations)`` passes, not two per layer.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from netinit_cli.errors import InputError, UsageError
from netinit_cli.lsuv.layers import Layer
from netinit_cli.lsuv.options import LsuvOptions

MIN_VALUES = 32  # layers with fewer output values on the batch are skipped (as LSUV-keras does)
EPSILON = 1e-8  # the lsuv package's guard in needed_std / (std + 1e-8)
# An output whose spread is below float32's resolution of its mean is constant: the float64 mean
# of n equal values can differ from them by rounding, so an exact std == 0 test would miss it.
CONSTANT = 1e-7
THREADS = 1  # fixed, so the summation order (and so every byte of the output) does not depend on the machine


@dataclass
class LayerResult:
    weight: str
    node: str
    op: str
    output: str
    std_before: float | None = None
    std_after: float | None = None
    iterations: int = 0  # corrections applied
    scale: float = 1.0  # the factor the weight was multiplied by in total
    converged: bool = False
    values: int = 0  # values of the measured tensor on the batch
    skipped: str | None = None


@dataclass
class LsuvRun:
    layers: list[LayerResult]
    sessions: int = 0
    passes: int = 0
    session_seconds: float = 0.0
    pass_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # the rescaled weights' final values

    @property
    def rescaled(self) -> list[LayerResult]:
        return [result for result in self.layers if result.skipped is None]


# ---------------------------------------------------------------------------------------------
# Measuring and rescaling


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("--method lsuv needs onnxruntime: pip install 'netinit[lsuv]'") from None
    return onnxruntime


def _one_line(error: BaseException) -> str:
    """ORT's message without its status prefix, C++ source location and function signature."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(error).split()))
    failed = re.search(r"while running (\S+) node\. Name:'([^']*)' Status Message: (.*)", text)
    if failed:
        op, name, detail = failed.groups()
        detail = re.sub(r"^\S+\.(?:h|cc|cpp):\d+ .*?\) ", "", detail).split(" was false. ")[-1]
        text = f"{op} node {name or '(unnamed)'}: {detail}"
    return text[:300] + ("…" if len(text) > 300 else "")


class _Augmented:
    """The measuring copy: statistics outputs per layer, rescaled weights as graph inputs."""

    def __init__(self, model: onnx.ModelProto, layers: list[Layer], feed_weights: bool) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        graph = self.model.graph
        taken = {name for node in graph.node for name in (*node.input, *node.output)}
        taken |= {value.name for value in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
        del graph.output[:]
        self.stats: list[tuple[str, str, str]] = []
        for index, layer in enumerate(layers):
            names = [
                _fresh(f"lsuv{index}_{part}", taken) for part in ("f64", "mean", "dev", "sq", "var", "count")
            ]
            f64, mean, dev, square, var, count = names
            graph.node.extend(
                [
                    onnx.helper.make_node("Cast", [layer.output], [f64], to=onnx.TensorProto.DOUBLE),
                    onnx.helper.make_node("ReduceMean", [f64], [mean], keepdims=0),
                    onnx.helper.make_node("Sub", [f64, mean], [dev]),
                    onnx.helper.make_node("Mul", [dev, dev], [square]),
                    onnx.helper.make_node("ReduceMean", [square], [var], keepdims=0),
                    onnx.helper.make_node("Size", [layer.output], [count]),
                ]
            )
            graph.output.extend(
                [
                    onnx.helper.make_tensor_value_info(mean, onnx.TensorProto.DOUBLE, []),
                    onnx.helper.make_tensor_value_info(var, onnx.TensorProto.DOUBLE, []),
                    onnx.helper.make_tensor_value_info(count, onnx.TensorProto.INT64, []),
                ]
            )
            self.stats.append((mean, var, count))
        self.fed: dict[str, str] = {}  # weight -> the graph input that carries it
        if feed_weights:
            self._promote(sorted({layer.weight for layer in layers}), taken)

    def _promote(self, weights: list[str], taken: set[str]) -> None:
        graph = self.model.graph
        stored = {tensor.name: tensor for tensor in graph.initializer}
        declared = {value.name for value in graph.input}
        kept = [tensor for tensor in graph.initializer if tensor.name not in set(weights)]
        for weight in weights:
            tensor = stored[weight]
            if tensor.data_type == onnx.TensorProto.BFLOAT16:
                # numpy cannot feed bfloat16: feed its (exact) float32 values and cast in the graph
                carrier = _fresh(f"{weight}_f32", taken)
                graph.node.insert(0, onnx.helper.make_node("Cast", [carrier], [weight], to=tensor.data_type))
                graph.input.append(
                    onnx.helper.make_tensor_value_info(carrier, onnx.TensorProto.FLOAT, tensor.dims)
                )
                self.fed[weight] = carrier
                continue
            if weight not in declared:
                graph.input.append(onnx.helper.make_tensor_value_info(weight, tensor.data_type, tensor.dims))
            self.fed[weight] = weight
        del graph.initializer[:]
        graph.initializer.extend(kept)

    def set_initializer(self, name: str, values: np.ndarray) -> None:
        for tensor in self.model.graph.initializer:
            if tensor.name == name:
                tensor.CopyFrom(numpy_helper.from_array(values, name))

    def serialized(self) -> bytes:
        try:
            return bytes(self.model.SerializeToString())
        except ValueError as error:  # protobuf refuses messages over 2 GB
            raise InputError(
                f"the model cannot be serialized for onnxruntime ({_one_line(error)}), "
                "LSUV needs a model under 2 GB with its weights loaded"
            ) from None


def _fresh(base: str, taken: set[str]) -> str:
    name, counter = f"__{base}", 0
    while name in taken:
        counter += 1
        name = f"__{base}_{counter}"
    taken.add(name)
    return name


class _Weight:
    """One weight being rescaled: its pre-init values in float64 and the total scale so far."""

    def __init__(self, tensor: onnx.TensorProto) -> None:
        stored = numpy_helper.to_array(tensor)
        self.dtype = stored.dtype
        self.original = stored.astype(np.float64)
        self.scale = 1.0
        self.current = stored

    def rescale(self, factor: float, name: str) -> np.ndarray:
        self.scale *= factor
        values = (self.original * self.scale).astype(self.dtype)
        if not np.isfinite(values.astype(np.float64)).all():
            raise InputError(
                f"weight {name!r}: rescaled by {self.scale:.4g} it overflows {self.dtype}, check the batch"
            )
        self.current = values
        return values

    def feed(self) -> np.ndarray:
        return self.current.astype(np.float32) if self.dtype.kind == "V" else self.current  # bfloat16 carrier


def run_lsuv(
    model: onnx.ModelProto,
    layers: list[Layer],
    batch: dict[str, np.ndarray],
    options: LsuvOptions | None = None,
    *,
    threads: int = THREADS,
    feed_weights: bool = True,
) -> LsuvRun:
    """Rescale every non-skipped layer's weight in ``model`` (in place) so its output std on ``batch``
    is within ``options.tol`` of ``options.std``; return per-layer results and the ORT cost.

    ``feed_weights=False`` re-creates the session from the serialized model for every pass instead
    of feeding the weights (slower; kept to measure and to cross-check the fed path).
    Raises InputError for a model onnxruntime cannot load or run and for a constant layer output.
    """
    options = options or LsuvOptions()
    results = [
        LayerResult(layer.weight, layer.node, layer.op, layer.output, skipped=layer.skip) for layer in layers
    ]
    active = [(layer, result) for layer, result in zip(layers, results, strict=True) if layer.skip is None]
    run = LsuvRun(results)
    if not active:
        return run
    ort = _onnxruntime()
    stored = {tensor.name: tensor for tensor in model.graph.initializer}
    missing = [layer.weight for layer, _ in active if layer.weight not in stored]
    if missing:
        raise InputError(f"weight {missing[0]!r} has no initializer, fill it before LSUV runs")
    weights = {layer.weight: _Weight(stored[layer.weight]) for layer, _ in active}
    augmented = _Augmented(model, [layer for layer, _ in active], feed_weights)
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    settings.use_deterministic_compute = True
    settings.log_severity_level = 4  # fatal only: a failure reaches the user once, as our InputError
    session: Any = None

    def measure() -> list[tuple[float, float, int]]:
        nonlocal session
        if session is None or not feed_weights:
            started = time.perf_counter()
            try:
                session = ort.InferenceSession(
                    augmented.serialized(), settings, providers=["CPUExecutionProvider"]
                )
            except InputError:
                raise
            except Exception as error:
                raise InputError(f"onnxruntime cannot load the model: {_one_line(error)}") from None
            run.sessions += 1
            run.session_seconds += time.perf_counter() - started
        feeds = dict(batch)
        feeds.update(
            {augmented.fed[name]: weight.feed() for name, weight in weights.items() if name in augmented.fed}
        )
        names = [name for triple in augmented.stats for name in triple]
        started = time.perf_counter()
        try:
            values = session.run(names, feeds)
        except Exception as error:
            raise InputError(f"onnxruntime cannot run the model on the batch: {_one_line(error)}") from None
        run.passes += 1
        run.pass_seconds += time.perf_counter() - started
        measured = []
        for position in range(0, len(values), 3):
            mean, variance, count = (
                float(values[position]),
                float(values[position + 1]),
                int(values[position + 2]),
            )
            unbiased = variance * count / (count - 1) if count > 1 else 0.0
            measured.append((math.sqrt(unbiased) if unbiased >= 0 else math.nan, mean, count))
        return measured

    stats = measure()
    for position, (layer, result) in enumerate(active):
        std, mean, count = stats[position]
        result.values, result.std_before = count, std
        if count < MIN_VALUES:
            result.skipped = f"output has {count} values on the batch, fewer than {MIN_VALUES}"
            continue
        while True:
            if not math.isfinite(std) or std <= CONSTANT * abs(mean):
                what = (
                    f"is constant (std {std:.3g})" if math.isfinite(std) else f"has a non-finite std ({std})"
                )
                raise InputError(
                    f"layer {layer.node!r} ({layer.op}, weight {layer.weight!r}): its output {layer.output!r} "
                    f"{what} on the batch, LSUV cannot rescale it; check the batch, or leave the layer out "
                    f"with --rule '{layer.weight}=orthogonal'"
                )
            if abs(std - options.std) <= options.tol or result.iterations >= options.max_iter:
                break
            values = weights[layer.weight].rescale(options.std / (std + EPSILON), layer.weight)
            if not feed_weights:
                augmented.set_initializer(layer.weight, values)
            result.iterations += 1
            stats = measure()
            std, mean, _ = stats[position]
        result.std_after, result.scale = std, weights[layer.weight].scale
        result.converged = abs(std - options.std) <= options.tol
        if not result.converged:
            run.notes.append(
                f"{layer.weight}: std {std:.4g} after {result.iterations} corrections (max_iter)"
            )
    for name, weight in weights.items():
        if weight.scale != 1.0:
            stored[name].CopyFrom(numpy_helper.from_array(weight.current, name))
            run.weights[name] = weight.current
    return run
