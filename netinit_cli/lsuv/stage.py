"""The LSUV stage of ``netinit --method lsuv``, between plan and write.

:func:`prepare` runs before anything is generated or written: it refuses what LSUV cannot do
(not an ONNX graph) and loads and checks the batch.  :func:`rescale` then

1. generates every filled tensor in memory through the run's :class:`~netinit_cli.fill.Filler`,
   so each value before rescaling is exactly the one ``--method orthogonal`` writes (the method's
   weights are orthogonal gain 1, its biases 0);
2. builds the model as the output would hold it, in memory (``OnnxModel.in_memory``), and runs
   the engine on it (:func:`netinit_cli.lsuv.engine.run_lsuv`): one onnxruntime session;
3. hands the writer lazy tensors whose values are those arrays, the rescaled ones for the
   rescaled weights, and replaces their statistics by those of the rescaled values.

So unlike every other method, LSUV holds the whole model in memory (onnxruntime needs it): the
generated tensors, the in-memory copy and onnxruntime's own.  Rescaled are the weights this run
fills with ``lsuv`` itself (not those a ``--rule`` fills otherwise, nor kept ones).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from netinit_cli.dtypes import itemsize
from netinit_cli.errors import InputError, UsageError
from netinit_cli.fill import Filler, LazyTensor, lazy_tensors, observed_stats
from netinit_cli.formats.base import ModelFile
from netinit_cli.formats.onnx.graph import GRAPH_INPUT
from netinit_cli.formats.onnx.reader import OnnxModel
from netinit_cli.lsuv.data import load_batch
from netinit_cli.lsuv.engine import LsuvRun, run_lsuv
from netinit_cli.lsuv.layers import find_layers
from netinit_cli.lsuv.options import LsuvOptions
from netinit_cli.methods import LSUV_LABEL, MethodSpec
from netinit_cli.model import Action, LsuvSummary, Planned, Rescaled
from netinit_cli.seeding import Seed, purpose_sequence

DEFAULT_BATCH_SIZE = 16
PROTOBUF_LIMIT = 2**31  # onnxruntime gets the model as one serialized protobuf
BATCH_PURPOSE = "lsuv batch"  # names the batch's streams (seeding.purpose_sequence)


@dataclass(frozen=True)
class Batch:
    """The checked feeds, and a line saying where they came from (report and provenance)."""

    feeds: dict[str, np.ndarray]
    source: str


def check_model(opened: ModelFile) -> None:
    """LSUV runs the graph: an ONNX model only (checked before planning, dry runs included)."""
    if not isinstance(opened, OnnxModel):
        raise UsageError(
            f"--method lsuv runs the model's graph and needs an ONNX model; {opened.path.name} is "
            f"{opened.kind}: choose another method (e.g. orthogonal)"
        )


def prepare(
    opened: ModelFile,
    plan: list[Planned],
    seed: Seed,
    data: str | os.PathLike[str] | None,
    batch_size: int | None,
) -> Batch:
    """Load and check the batch (``--data`` or a seeded draw), before anything is generated."""
    assert isinstance(opened, OnnxModel)
    total = sum(max(entry.param.numel, 0) * itemsize(entry.param.dtype) for entry in plan)
    if total >= PROTOBUF_LIMIT:
        raise InputError(
            f"{opened.path.name} holds {total:,} bytes of tensors; LSUV hands onnxruntime the model in "
            f"memory, which protobuf limits to {PROTOBUF_LIMIT:,} bytes"
        )
    if data is not None and batch_size is not None:
        raise UsageError("--batch-size sets the size of the random batch; --data gives the batch itself")
    parameters = {entry.param.name for entry in plan if entry.param.source == GRAPH_INPUT}
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    stream = purpose_sequence(seed, BATCH_PURPOSE)
    feeds = load_batch(opened.proto, data, size, stream, parameters=parameters)
    if data is not None:
        return Batch(feeds, f"--data {Path(data).name}")
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in feeds.items())
    return Batch(feeds, f"random normal {shapes} (seed {seed})")


def rescale(
    opened: ModelFile, plan: list[Planned], filler: Filler, method: MethodSpec, batch: Batch
) -> tuple[dict[str, LazyTensor], list[Planned], LsuvSummary]:
    """Generate, rescale, and return the lazy tensors to write, the plan entries relabelled with
    what LSUV did (and its expected stds scaled), and the summary for the report."""
    assert isinstance(opened, OnnxModel)
    started = time.perf_counter()
    filled = [entry for entry in plan if entry.action is Action.FILL]
    values = {entry.param.name: filler.generate(entry) for entry in filled}
    model = opened.in_memory(values)
    eligible = {entry.param.name for entry in filled if entry.param.role.random and not entry.rule}
    excluded = {
        entry.param.name: f"filled by rule {entry.rule}, not by lsuv" for entry in filled if entry.rule
    }
    layers = find_layers(model, eligible, excluded)
    run = run_lsuv(model, layers, batch.feeds, LsuvOptions.from_values(dict(method.options)))
    del model
    for name, rescaled in run.weights.items():
        values[name] = rescaled
        filler.observed[name] = observed_stats(rescaled)
    summary = _summary(run, batch, time.perf_counter() - started)
    tensors = lazy_tensors(plan, lambda entry: values[entry.param.name])
    return tensors, [_relabel(entry, summary) for entry in plan], summary


def _summary(run: LsuvRun, batch: Batch, seconds: float) -> LsuvSummary:
    layers = {
        result.weight: Rescaled(
            result.node,
            result.op,
            result.output,
            result.std_before,
            result.std_after,
            result.iterations,
            result.scale,
            result.converged,
            result.skipped,
        )
        for result in run.layers
    }
    return LsuvSummary(layers, run.sessions, run.passes, seconds, batch.source)


def _relabel(entry: Planned, summary: LsuvSummary) -> Planned:
    """The table's init text says what LSUV did to the weight; its expected std follows the scale."""
    if entry.action is not Action.FILL or not entry.init.endswith(LSUV_LABEL):
        return entry
    pre_init = entry.init.removesuffix(LSUV_LABEL)
    done = summary.layers.get(entry.param.name)
    if done is None:
        return replace(entry, init=f"{pre_init} (no lsuv layer)")
    if done.skipped is not None:
        return replace(entry, init=f"{pre_init} (lsuv skipped: {done.skipped})")
    assert done.std_before is not None and done.std_after is not None
    limit = "" if done.converged else ", max_iter reached"
    text = (
        f"lsuv: {pre_init}, ×{done.scale:.3g}, std {done.std_before:.2f}→{done.std_after:.2f} "
        f"({done.iterations} it{limit})"
    )
    expected = None if entry.expected_std is None else entry.expected_std * done.scale
    return replace(entry, init=text, expected_std=expected)
