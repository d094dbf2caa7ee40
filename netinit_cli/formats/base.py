"""What every format backend provides.

A backend (``formats.onnx``, ``formats.safetensors``) opens a model file and *reads*: the stored
tensors' names, shapes and dtypes (and, for ONNX, the graph topology), and a kept tensor's bytes
on request.  Classification is a stage of its own.  Writing takes the plan and, for each filled
tensor, a :class:`~netinit_cli.fill.LazyTensor` whose bytes are produced as they are written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from netinit_cli.destination import Identity
from netinit_cli.model import Planned

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor


@dataclass
class WriteResult:
    paths: list[Path]  # every file written (model, external data, shards, index)
    bytes_written: int = 0
    notes: list[str] = field(default_factory=list)


class ModelFile(Protocol):
    """An opened model.  Nothing but headers (or the graph) has been read."""

    kind: str  # "onnx" or "safetensors"
    path: Path
    metadata: dict[str, str]
    notes: list[str]  # warnings found while reading (shown under the table)

    def read_array(self, name: str, elements: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """The stored values of a tensor that has data, read-only, read through the file opened
        when the model was; with ``elements`` (``(start, count)`` ranges of the flattened tensor)
        only those ranges, the rest zeros."""
        ...

    def default_output(self) -> Path:
        """Beside the input, with ``.init`` before the suffix (model.init.onnx)."""
        ...

    def write(
        self,
        out: Path,
        plan: Sequence[Planned],
        tensors: Mapping[str, LazyTensor],
        provenance: dict[str, str],
        *,
        overwrite: bool,
        durable: bool = True,
        protected: frozenset[Identity] = frozenset(),
    ) -> WriteResult:
        """Write a new model to ``out``: each tensor of ``tensors`` (the plan's filled ones, by
        name) from its lazy values, every other tensor, node, attribute and metadata entry
        byte-identical.  Atomic (see :mod:`netinit_cli.commit`; ``durable=False`` skips the
        fsyncs).  ``provenance`` goes into the file's metadata.  ``protected``: files never
        written over or removed (the inputs, unless ``out`` replaces the model in place)."""
        ...

    def input_files(self) -> list[Path]:
        """Every file the model is read from (model or index, external data or shards)."""
        ...


def with_init_suffix(path: Path, suffix: str) -> Path:
    """model.onnx → model.init.onnx; model.safetensors.index.json → model.init.safetensors.index.json."""
    name = path.name
    if name.endswith(suffix):
        return path.with_name(name[: -len(suffix)] + ".init" + suffix)
    return path.with_name(name + ".init")
