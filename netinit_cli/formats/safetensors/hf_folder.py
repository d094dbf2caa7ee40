"""A new model folder from a config template (``netinit --like config.json -o OUTDIR``).

What ``from_config(config)`` + ``save_pretrained(OUTDIR)`` writes: ``config.json`` (copied; with
``--dtype`` the new dtype recorded as save_pretrained records it), ``generation_config.json`` for a
model that can generate, and ``model.safetensors`` or the
shards ``model-0000k-of-0000N.safetensors`` with ``model.safetensors.index.json``, split and named by
huggingface_hub's own function (:meth:`HfTemplate.shard_plan`).  Tensors stream through the
safetensors writer one at a time; persistent buffers are written with the model class's values.
Everything is written into a hidden folder and committed as a whole (:func:`commit.atomic_folder`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netinit_cli.commit import atomic_folder, atomic_output
from netinit_cli.destination import Identity
from netinit_cli.dtypes import numpy_dtype
from netinit_cli.errors import InputError, OutputError, UsageError
from netinit_cli.formats.base import WriteResult
from netinit_cli.formats.safetensors.header import Index, Shard, quote
from netinit_cli.formats.safetensors.hf_template import INDEX_NAME, WEIGHTS_NAME, HfTemplate
from netinit_cli.formats.safetensors.writer import SafetensorsWriter
from netinit_cli.model import Planned

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor

# What save_pretrained writes into every file's metadata; from_pretrained refuses other formats.
FILE_METADATA = {"format": "pt"}
_TORCH_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class HfFolder:
    """The model folder a config template creates (implements ``ModelFile``; nothing is read)."""

    kind = "safetensors"
    created = True

    def __init__(
        self, out: Path, template: HfTemplate, *, max_shard_size: int | None, dtype_given: bool
    ) -> None:
        if out.name.endswith((".safetensors", ".json")):
            raise UsageError(f"-o {out}: a config template writes a model folder; give -o FOLDER")
        for tensor in template.tensors:
            if tensor.is_buffer and tensor.value is None:
                raise InputError(
                    f"{template.config_path}: buffer {quote(tensor.name)} is computed from parameters "
                    "by the model class; netinit cannot give its value"
                )
        self.path = out
        self.template = template
        self.metadata: dict[str, str] = {}
        self.notes: list[str] = []
        self.max_shard_size = max_shard_size
        self.dtype_given = dtype_given
        # Persistent buffers and frozen parameters: the model class's values.
        self._fixed = {tensor.name: tensor for tensor in template.tensors if tensor.value is not None}

    def read_array(self, name: str, elements: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """A persistent buffer's or frozen parameter's values (the tensors of a new folder that have
        data), whole: they are in memory."""
        tensor = self._fixed.get(name)
        if tensor is None or tensor.value is None:
            raise InputError(f"{self.template.config_path.name}: tensor {quote(name)} has no stored data")
        return np.frombuffer(tensor.value, numpy_dtype(tensor.dtype)).reshape(tensor.shape)

    def default_output(self) -> Path:
        return self.path

    def input_files(self) -> list[Path]:
        """The config the folder is built from."""
        return [self.template.config_path]

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
        """Write the folder: weights through :class:`SafetensorsWriter`, then the index as
        save_pretrained writes it, then config.json; all appear at once, or nothing does.
        (``protected`` is for the protocol: a new folder replaces no input file.)"""
        from netinit_cli.fill import LazyTensor

        self._check_replaceable(out, overwrite)
        split = self.template.shard_plan(self.max_shard_size)
        index = self.template.shard_index(self.max_shard_size)
        shards = [Shard(file_name, None, None, dict(FILE_METADATA), {}) for file_name, _ in split]
        placement = {name: file_name for file_name, names in split for name in names}
        created = dict(tensors)
        for entry in plan:  # buffers: the model class's values, as save_pretrained stores them
            name = entry.param.name
            if name in self._fixed and name not in created and entry.param.has_data:
                values = partial(self.read_array, name)
                created[name] = LazyTensor(name, entry.param.shape, entry.param.dtype, values)
        with atomic_folder(out, overwrite=overwrite, durable=durable) as folder:
            target = folder / (INDEX_NAME if index is not None else WEIGHTS_NAME)
            writer = SafetensorsWriter(shards, Index(target, {}, {}) if index else None, {}, placement)
            result = writer.write(target, plan, created, provenance, overwrite=True, durable=durable)
            if index is not None:  # total_parameters counts parameters only (num_parameters())
                self._write_text(target, json.dumps(index, indent=2, sort_keys=True) + "\n")
            self._write_text(folder / "config.json", self._config_text())
            names = [path.name for path in result.paths] + ["config.json"]
            if self.template.generation_config is not None:  # what save_pretrained adds for generative models
                self._write_text(folder / "generation_config.json", self.template.generation_config)
                names.append("generation_config.json")
        return WriteResult(
            paths=[out / name for name in names],
            bytes_written=sum((out / name).stat().st_size for name in names),
            notes=result.notes,
        )

    def _config_text(self) -> str:
        """The config as given; with ``--dtype``, its ``dtype`` set as transformers 5's
        ``save_pretrained`` writes it (``torch_dtype`` is its older name)."""
        path = self.template.config_path
        wanted = _TORCH_DTYPE_NAMES.get(self.template.dtype)
        raw = self.template.config
        if not self.dtype_given or raw.get("dtype", raw.get("torch_dtype")) == wanted:
            return path.read_text(encoding="utf-8")
        config = {key: value for key, value in raw.items() if key != "torch_dtype"}
        config["dtype"] = wanted
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        with atomic_output(path, overwrite=True, durable=False) as handle:  # the folder commit fsyncs
            handle.write(text.encode("utf-8"))

    def _check_replaceable(self, out: Path, overwrite: bool) -> None:
        """--force replaces a model folder, never the config's own folder or any other folder."""
        if not overwrite or not out.is_dir() or out.is_symlink():
            return
        config = self.template.config_path.resolve()
        if out.resolve() in config.parents:
            raise UsageError(f"-o {out} holds the config itself; choose another output folder")
        entries = list(os.scandir(out))
        looks_like_model = any(e.name == "config.json" or e.name.endswith(".safetensors") for e in entries)
        if any(e.is_dir(follow_symlinks=False) for e in entries) or (entries and not looks_like_model):
            raise OutputError(
                f"{out} does not look like a model folder (it holds folders, or no config.json or "
                ".safetensors); netinit replaces only those: remove it yourself or choose another -o"
            )
