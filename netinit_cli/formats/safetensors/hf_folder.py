"""A new model folder from a config template (``netinit --like config.json -o OUTDIR``).

What ``from_config(config)`` + ``save_pretrained(OUTDIR)`` writes: ``config.json`` (copied; with
``--dtype`` the new dtype recorded as save_pretrained records it), ``generation_config.json`` for a
model that can generate, and ``model.safetensors`` or the
shards ``model-0000k-of-0000N.safetensors`` with ``model.safetensors.index.json``, split and named by
huggingface_hub's own function (:meth:`HfTemplate.shard_plan`).  Tensors stream through the
safetensors writer one at a time; persistent buffers are written with the model class's values.
Everything is written into a hidden folder and committed as a whole (:func:`commit.atomic_folder`).

With ``--shard K/N`` the folder is shared: worker K writes only its weight files (of
save_pretrained's split, :func:`netinit_cli.shard.assign`), each committed on its own, and
whichever worker finds every one complete writes ``config.json`` (and ``generation_config.json``)
and then the index, last (:func:`sharded.write_worker`).  A model of one file is worker 0's; the
others write nothing.  Every weight file records ``netinit.plan`` and ``netinit.config_sha256``
(of the config.json written), sharded or not, so the workers' union is the single run's folder.
"""

from __future__ import annotations

import hashlib
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
from netinit_cli.errors import InputError, OutputError, OutputExistsError, UsageError
from netinit_cli.fileio import TEMP_SUFFIX, TEMP_TAG
from netinit_cli.formats.base import WriteResult
from netinit_cli.formats.safetensors.header import Index, Shard, quote
from netinit_cli.formats.safetensors.hf_template import INDEX_NAME, WEIGHTS_NAME, HfTemplate
from netinit_cli.formats.safetensors.writer import ModelFolder, SafetensorsWriter
from netinit_cli.model import Planned
from netinit_cli.shard import PLAN_KEY, ShardMismatchError, metadata_of

if TYPE_CHECKING:
    from netinit_cli.fill import LazyTensor

# What save_pretrained writes into every file's metadata; from_pretrained refuses other formats.
FILE_METADATA = {"format": "pt"}
CONFIG_KEY = "netinit.config_sha256"
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
        shard: tuple[int, int] | None = None,
    ) -> WriteResult:
        """Write the folder: weights through :class:`SafetensorsWriter`, then the index as
        save_pretrained writes it, then config.json; all appear at once, or nothing does.
        With ``shard``, only that worker's files, into the shared folder (module docstring).
        (``protected`` is for the protocol: a new folder replaces no input file.)"""
        from netinit_cli.fill import LazyTensor

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
        # total_parameters counts parameters only (num_parameters()): save_pretrained's index text
        index_bytes = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode() if index else None
        extras = {"config.json": self._config_text().encode("utf-8")}
        if self.template.generation_config is not None:  # what save_pretrained adds for generative models
            extras["generation_config.json"] = self.template.generation_config.encode("utf-8")
        # The config decides values (a preset reads it) without changing names or shapes.
        provenance = {**provenance, CONFIG_KEY: hashlib.sha256(extras["config.json"]).hexdigest()}
        model_folder = ModelFolder(index_bytes, extras)
        if shard is not None:
            names = [file_name for file_name, _ in split]
            target = self._shared_folder(out, {*names, *extras, *([INDEX_NAME] if index else [])})
            target /= INDEX_NAME if index is not None else WEIGHTS_NAME
            writer = SafetensorsWriter(
                shards, Index(target, {}, {}) if index else None, {}, placement, folder=model_folder
            )
            return writer.write(
                target, plan, created, provenance, overwrite=overwrite, durable=durable, shard=shard
            )
        self._check_replaceable(out, overwrite)
        with atomic_folder(out, overwrite=overwrite, durable=durable) as folder:
            target = folder / (INDEX_NAME if index is not None else WEIGHTS_NAME)
            writer = SafetensorsWriter(
                shards, Index(target, {}, {}) if index else None, {}, placement, folder=model_folder
            )
            result = writer.write(target, plan, created, provenance, overwrite=True, durable=durable)
            for name, data in extras.items():
                with atomic_output(folder / name, overwrite=True, durable=False) as handle:  # fsynced below
                    handle.write(data)
            names = [path.name for path in result.paths] + list(extras)
        return WriteResult(
            paths=[out / name for name in names],
            bytes_written=sum((out / name).stat().st_size for name in names),
            notes=result.notes,
        )

    def _shared_folder(self, out: Path, planned: set[str]) -> Path:
        """The folder ``--shard`` workers share: created by whichever comes first; one that holds
        anything but this plan's files (and netinit's temporary files) is refused, even with --force."""
        try:
            os.mkdir(out)
        except FileExistsError:
            pass
        except OSError as exc:
            raise OutputError(f"{out}: cannot create the model folder: {exc.strerror or exc}") from exc
        if out.is_symlink() or not out.is_dir():
            raise OutputError(f"{out} is a file or a symbolic link; give a folder path with -o")
        if out.resolve() in self.template.config_path.resolve().parents:
            raise UsageError(f"-o {out} holds the config itself; choose another output folder")
        foreign = sorted(
            entry.name
            for entry in os.scandir(out)
            if entry.name not in planned
            and not (
                entry.name.startswith(".") and TEMP_TAG in entry.name and entry.name.endswith(TEMP_SUFFIX)
            )
        )
        for name in foreign:  # weight files of another split: a worker with other options
            found = (
                metadata_of(out / name, (out / name).stat().st_size) if name.endswith(".safetensors") else {}
            )
            if PLAN_KEY in found:
                raise ShardMismatchError(
                    f"{out / name} was written with {PLAN_KEY}={found[PLAN_KEY]}, of another split (other "
                    "--max-shard-size, --dtype or config): give every worker the same options and versions, "
                    "or delete the file if it is from another run"
                )
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise OutputExistsError(
                f"{out} holds {len(foreign)} file(s) this model does not have ({shown}): --shard workers "
                "share the folder and write into it; give an empty or new folder with -o"
            )
        return out

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
