"""The Python API.  The command-line tool is a thin layer over these functions.

:func:`initialize` runs the pipeline, one line a stage: read (:func:`read`) → classify
(:func:`classify`) → plan (:func:`netinit_cli.plan.make_plan`) → fill (lazy tensors from
:class:`netinit_cli.fill.Filler`) → write (the format's writer) → report (:class:`Report`).

>>> from netinit_cli import initialize
>>> report = initialize("model.onnx", out="model.init.onnx", method="xavier", seed=7, all=True)
>>> report.counts["filled"]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from netinit_cli import __version__
from netinit_cli.classify.stage import Classified, classify_with_template
from netinit_cli.classify.stage import classify as classify_model
from netinit_cli.commit import atomic_output
from netinit_cli.destination import (
    Identity,
    check_destination,
    identities,
    names_folder,
    output_path,
    refuse_inputs,
    report_destination,
    same_destination,
)
from netinit_cli.dtypes import itemsize
from netinit_cli.errors import UsageError
from netinit_cli.fill import Filler, check_fits_in_memory
from netinit_cli.formats import ConfigOptions, open_model, open_template
from netinit_cli.formats.base import ModelFile
from netinit_cli.model import Planned
from netinit_cli.options import build_options, config_options, default_preset_for
from netinit_cli.plan import Options, make_plan
from netinit_cli.report import Report

if TYPE_CHECKING:
    from netinit_cli.formats.onnx.reader import OnnxModel
    from netinit_cli.formats.safetensors.bundle import SafetensorsModel
    from netinit_cli.formats.safetensors.hf_folder import HfFolder
    from netinit_cli.formats.safetensors.hf_template import HfTemplate
    from netinit_cli.formats.safetensors.template import Manifest

    Template = OnnxModel | SafetensorsModel | Manifest | HfTemplate


class ProgressSink(Protocol):
    """Told the total bytes to generate, then each tensor as it is produced (the CLI's bar)."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, planned: Planned, nbytes: int) -> None: ...


def read(
    model: str | os.PathLike[str] | None,
    like: str | os.PathLike[str] | None,
    out: Path | None,
    config_options: ConfigOptions | None = None,
) -> tuple[ModelFile, Template | None]:
    """The read stage: open ``model`` (or, with ``--like`` alone, a new checkpoint at ``out``) and
    the ``--like`` template, reading headers and graphs only (a transformers config template builds
    its model class on the meta device: see :mod:`netinit_cli.formats.safetensors.hf_template`)."""
    if model is None and like is None:
        raise UsageError("give a MODEL, or --like TEMPLATE with -o OUT to create a new checkpoint")
    if like is None and config_options is not None and config_options.given():
        raise UsageError("--dtype, --max-shard-size and --trust-remote-code need --like CONFIG")
    if model is None:
        if out is None:
            raise UsageError("--like without a MODEL creates a new checkpoint: give its path with -o")
        template = open_template(Path(like), config_options)  # type: ignore[arg-type]
        if template.kind == "hf-config":
            from netinit_cli.formats.safetensors.hf_folder import HfFolder

            options = config_options or ConfigOptions()
            config = cast("HfTemplate", template)
            given = options.dtype is not None
            return HfFolder(out, config, max_shard_size=options.max_shard_size, dtype_given=given), config
        from netinit_cli.formats.safetensors.template import new_safetensors

        return new_safetensors(out), template
    opened = open_model(Path(model))
    if like is None:
        return opened, None
    if getattr(opened, "created", False) and not hasattr(opened, "writes_bundle"):
        pass  # a model folder from a config: every one can be written by workers
    elif opened.kind != "safetensors":
        raise UsageError("--like adds missing tensors to safetensors bundles; an ONNX graph defines its own")
    template = open_template(Path(like), config_options)
    if template.kind == "hf-config":
        raise UsageError(
            f"--like {like} creates a new model folder from a config: drop MODEL, give -o OUTDIR"
        )
    return opened, template


def classify(opened: ModelFile, template: Template | None) -> Classified:
    """The classify stage: the model's tensors (with the template's it lacks) as classified params."""
    return classify_model(opened) if template is None else classify_with_template(opened, template)


def inspect(
    model: str | os.PathLike[str] | None,
    *,
    like: str | os.PathLike[str] | None = None,
    options: Options | None = None,
    report: str | os.PathLike[str] | None = None,
    force: bool = False,
    also_read: Sequence[str | os.PathLike[str] | None] = (),
    dtype: str | None = None,
    max_shard_size: str | int | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Report:
    """Classify and plan without writing anything (``netinit inspect`` / ``--dry-run``) but the
    JSON report, to ``report`` if given (see :func:`initialize`)."""
    options = options or build_options(**kwargs)
    hf = config_options(dtype, max_shard_size, trust_remote_code)
    opened, template = read(model, like, None, hf)
    _check_lsuv_arguments(opened, options, None, None)
    classified = classify(opened, template)
    inputs = identities([*opened.input_files(), like, kwargs.get("config"), *also_read, *_files_of(template)])
    report_path = report_destination(report, None, force=force, inputs=inputs)
    planned = _planned_report(model, opened, classified, options, None, dry_run=True)
    _write_report(planned, report_path, force=force, protected=inputs)
    return planned


def _planned_report(
    model: str | os.PathLike[str] | None,
    opened: ModelFile,
    classified: Classified,
    options: Options,
    out: Path | None,
    *,
    dry_run: bool,
    config_path: Path | None = None,
) -> Report:
    """The plan stage (pure but for a preset reading config.json): the report of what will happen."""
    names = [name for param in classified.params for name in (param.name, *param.aliases)]
    context = None
    notes = list(classified.notes)
    if options.preset is not None:
        # A preset knows the model's config.json (beside MODEL, or the template of a new one).
        where = config_path or (Path(model) if model is not None else opened.path)
        from netinit_cli.presets import model_context, preset_notes

        context = model_context(names, where)
        notes += preset_notes(options.preset, context)
    return Report(
        input=Path(model) if model is not None else None,
        output=out,
        kind=opened.kind,
        seed=options.seed,
        method=options.method,
        all=options.all,
        fan_mode=options.fan_mode,
        entries=make_plan(classified.params, options, stored=opened.read_array, model=context),
        dry_run=dry_run,
        notes=notes,
        rules=options.rules,
        preset=options.preset,
    )


def initialize(
    model: str | os.PathLike[str] | None,
    out: str | os.PathLike[str] | None = None,
    *,
    like: str | os.PathLike[str] | None = None,
    force: bool = False,
    in_place: bool = False,
    dry_run: bool = False,
    fsync: bool = True,
    options: Options | None = None,
    progress: ProgressSink | None = None,
    report: str | os.PathLike[str] | None = None,
    also_read: Sequence[str | os.PathLike[str] | None] = (),
    shard: tuple[int, int] | str | None = None,
    max_shard_size: int | str | None = None,
    data: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Report:
    """Initialize ``model`` and write the result to ``out`` (default: ``model.init.<suffix>``;
    a folder, or a path ending in a slash, means that folder under the default name).

    Keyword arguments are those of :func:`build_options` (``method`` or ``preset``, ``seed``,
    ``all``, ``fan_mode``, ``rules``, ``config``, ``method_options``), or pass ``options`` directly.
    ``fsync=False`` skips the fsyncs before the rename (see ``--no-fsync``).  ``report``: also
    write the JSON report there (replacing a file only with ``force``).  ``also_read``: other
    files this run reads (the ``--config`` file when ``options`` is given), never written over.
    ``data`` (an ``.npz``/``.npy`` file) or ``batch_size`` (of a seeded random batch, default 16)
    give ``method="lsuv"`` its batch (see :mod:`netinit_cli.lsuv.stage`).
    ``shard=(k, n)`` (or ``"k/n"``, ``"auto"``, ``"auto/n"`` read from the scheduler's environment,
    see :func:`netinit_cli.shard.parse_shard`) writes only worker k's files of a sharded output and
    publishes its index when every file is complete.  ``max_shard_size`` (bytes or ``"5GB"``) splits
    a new bundle (``like=`` a template, ``out=NAME.safetensors.index.json``).
    With ``like`` a transformers config.json and no ``model``, ``out`` is a new model folder;
    ``dtype`` (f32, f16, bf16), ``max_shard_size`` (save_pretrained's split; default 50GB) and
    ``trust_remote_code`` apply to it, and the default initialization is the ``hf`` preset.
    Returns the :class:`Report`.  Raises :class:`netinit_cli.errors.NetinitError` subclasses.
    """
    started = time.perf_counter()
    from_config = default_preset_for(model, like) is not None
    options = options or build_options(**kwargs, default_preset="hf" if from_config else None)
    worker = _parse_shard(shard)
    shard_size: int | None = None
    if isinstance(max_shard_size, str):
        from netinit_cli.formats.safetensors.sharded import parse_size

        shard_size = parse_size(max_shard_size)
    else:
        shard_size = max_shard_size
    if in_place and out is not None:
        raise UsageError("--in-place and -o are exclusive: --in-place writes back to MODEL")
    if in_place and model is None:
        raise UsageError("--in-place needs a MODEL")
    if in_place and not fsync:
        raise UsageError(
            "--in-place needs fsync: without it a power loss could leave MODEL empty; "
            "drop --no-fsync or write to -o instead"
        )
    if model is None and not from_config and out is not None and names_folder(out):
        raise UsageError("--like without a MODEL needs -o FILE (the new checkpoint's name), not a folder")
    created_at = Path(out) if model is None and out is not None else None
    hf = config_options(dtype, shard_size if from_config else None, trust_remote_code)
    opened, template = read(model, like, created_at, hf)  # read: headers and graphs
    lsuv = _check_lsuv_arguments(opened, options, data, batch_size)
    classified = classify(opened, template)  # classify: roles, layouts, reasons
    outside = identities([like, kwargs.get("config"), *also_read, *_files_of(template)])
    inputs = identities(opened.input_files()) | outside
    if in_place:
        out_path, force = opened.path, True
    elif out is None:
        out_path = opened.default_output()
    else:
        out_path = output_path(out, opened.default_output().name) if model is not None else Path(out)
    if model is not None and not in_place:
        if same_destination(out_path, opened.path):
            raise UsageError(
                f"-o {out_path} is the input itself; use --in-place to replace the input atomically"
            )
        refuse_inputs(out_path, inputs, "-o")
    report_path = report_destination(report, out_path, force=force, inputs=inputs)
    if worker is not None or (shard_size is not None and not from_config):
        _check_sharded_run(opened, out_path, worker, shard_size, in_place, options, from_config)
    config_path = cast("HfTemplate", template).config_path if from_config and template is not None else None
    planned = _planned_report(
        model, opened, classified, options, out_path, dry_run=dry_run, config_path=config_path
    )  # plan
    planned.shard = worker
    if dry_run:
        planned.elapsed = time.perf_counter() - started
        _write_report(planned, report_path, force=force, protected=inputs)
        return planned
    plan = planned.entries
    check_fits_in_memory(planned.filled)
    record = provenance(options)
    # --in-place replaces the model's own files (and removes the data files only it used).
    protected = outside if in_place else inputs
    batch = None
    if lsuv:  # the batch is checked, and the output may be replaced, before the costly part
        from netinit_cli.lsuv.stage import prepare

        check_destination(out_path, overwrite=force, protected=protected)
        batch = prepare(opened, plan, options.seed, data, batch_size)
        record["netinit.lsuv_batch"] = batch.source
    filler = Filler(options.seed, done=progress.advance if progress is not None else None)
    if progress is not None:
        progress.start(sum(entry.param.numel * itemsize(entry.param.dtype) for entry in planned.filled))
    if batch is None:
        tensors = filler.tensors(plan)  # fill: lazy, each tensor is generated as the writer writes it
    else:  # fill in memory, then LSUV rescales the layers' weights through onnxruntime
        from netinit_cli.lsuv.stage import rescale

        tensors, planned.entries, planned.lsuv = rescale(opened, plan, filler, options.method, batch)
    # write: the writer lays out each file, then asks each lazy tensor for its bytes in turn
    if from_config and worker is not None:  # a model folder shared by the workers
        result = cast("HfFolder", opened).write(
            out_path, plan, tensors, record, overwrite=force, durable=fsync, shard=worker
        )
    elif not from_config and (worker is not None or shard_size is not None):
        result = cast("SafetensorsModel", opened).write(
            out_path,
            plan,
            tensors,
            record,
            overwrite=force,
            durable=fsync,
            protected=protected,
            shard=worker,
            max_shard_size=shard_size,
        )
    else:
        result = opened.write(
            out_path, plan, tensors, record, overwrite=force, durable=fsync, protected=protected
        )
    planned.observed = filler.observed  # report: what was written and what the filler observed
    planned.files = result.paths
    planned.bytes_written = result.bytes_written
    planned.notes.extend(result.notes)
    planned.elapsed = time.perf_counter() - started
    _write_report(planned, report_path, force=force, protected=inputs | identities(result.paths))
    return planned


def _files_of(template: Template | None) -> list[Path]:
    if template is None:
        return []
    files = getattr(template, "input_files", None)
    if callable(files):
        return list(files())
    path = getattr(template, "path", None) or getattr(template, "config_path", None)
    return [Path(path)] if path is not None else []


def _write_report(report: Report, path: Path | None, *, force: bool, protected: frozenset[Identity]) -> None:
    if path is None:
        return
    import json

    with atomic_output(path, overwrite=force, protected=protected, option="--report") as handle:
        handle.write(json.dumps(report.to_json(), indent=2).encode() + b"\n")


def _parse_shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    from netinit_cli.shard import parse_shard  # only for a --shard run

    if isinstance(shard, str):
        return parse_shard(shard, os.environ)
    k, n = shard
    return parse_shard(f"{k}/{n}", {})


def _check_sharded_run(
    opened: ModelFile,
    out: Path,
    worker: tuple[int, int] | None,
    max_shard_size: int | None,
    in_place: bool,
    options: Options,
    from_config: bool,
) -> None:
    """``--shard`` and ``--max-shard-size`` apply to a sharded safetensors output (or a model
    folder from a config) only."""
    flag = f"--shard {worker[0]}/{worker[1]}" if worker is not None else "--max-shard-size"
    if in_place:
        raise UsageError(f"{flag} and --in-place are exclusive: give the new bundle's index with -o")
    if opened.kind != "safetensors":
        raise UsageError(
            f"{flag} writes a sharded safetensors bundle; {opened.path.name} is {opened.kind}, written as one model"
        )
    if not from_config:  # a model folder from a config is always written by --shard workers
        bundle = cast("SafetensorsModel", opened)
        if not bundle.writes_bundle(out):
            raise UsageError(
                f"{flag}: the output {out.name} is one file; shards are written for a bundle "
                "(MODEL a *.safetensors.index.json, or --like TEMPLATE -o NAME.safetensors.index.json)"
            )
        if max_shard_size is not None and not bundle.created:
            raise UsageError(
                f"--max-shard-size splits a new checkpoint (--like TEMPLATE -o NAME.safetensors.index.json); "
                f"{opened.path.name} keeps its own split"
            )
    if worker is not None and options.seed.source == "automatic":
        raise UsageError(
            f"{flag} with --seed automatic: each worker would draw its own seed; give every worker the same --seed"
        )


def _check_lsuv_arguments(
    opened: ModelFile, options: Options, data: str | os.PathLike[str] | None, batch_size: int | None
) -> bool:
    """Whether LSUV runs; ``--data``/``--batch-size`` without it, or LSUV on a safetensors file,
    are usage errors found before planning."""
    if options.method.name != "lsuv":
        if data is not None or batch_size is not None:
            given = "--data" if data is not None else "--batch-size"
            raise UsageError(f"{given} gives LSUV its batch; it needs --method lsuv")
        return False
    from netinit_cli.lsuv.stage import check_model

    check_model(opened)
    return True


def provenance(options: Options) -> dict[str, str]:
    """Recorded in the output's metadata so a run can be repeated and audited."""
    record = {
        "netinit.version": __version__,
        "netinit.seed": str(options.seed),
        **(
            {"netinit.preset": str(options.preset)}
            if options.preset is not None
            else {"netinit.method": options.method.describe()}
        ),
        "netinit.scope": "all" if options.all else "missing",
        "netinit.fan_mode": options.fan_mode,
        "netinit.numpy": np.__version__,
    }
    if options.rules:
        record["netinit.rules"] = "; ".join(rule.describe() for rule in options.rules)
    return record
