"""The ``netinit`` command: a thin click layer over :mod:`netinit_cli.api`.

Errors become one line on stderr and an exit code here, and only here.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from netinit_cli import __version__
from netinit_cli.api import initialize, inspect
from netinit_cli.errors import EXIT_CODES, NetinitError
from netinit_cli.fill import keep_freed_buffers
from netinit_cli.methods import FLAGS, METHOD_NAMES, OVERRIDE_KEYS, describe_methods
from netinit_cli.model import Planned
from netinit_cli.options import build_options, default_preset_for
from netinit_cli.report import INSPECT_FULL_LIMIT, TABLE_MODES, Report, render
from netinit_cli.safe_text import shown

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = """\b
Examples:
  netinit model.onnx                          fill missing parameters (seed 1234)
  netinit model.onnx --method orthogonal --all -o out.onnx
  netinit model.safetensors --method 'kaiming(distribution=uniform)' --all
  netinit model.onnx --method random --weights 'normal(0,0.02)' --biases 0.01 --all
  netinit ckpt.safetensors --all --rule 'lm_head.*=xavier' --rule '*.bias=constant(0.1)'
  netinit ckpt.safetensors --preset hf --all   what transformers' from_config would give
  netinit --like manifest.json -o new.safetensors   create a checkpoint from scratch
  netinit --like manifest.json -o ckpt/model.safetensors.index.json --shard auto   one worker of many
  netinit --like config.json -o new-model/    a transformers model folder (pip install 'netinit[hf]')
  netinit model.onnx --dry-run --json          the plan as JSON, nothing written
\b
Exit codes: """ + ", ".join(f"{code} {text.split(':')[0]}" for code, text in EXIT_CODES.items())


class DefaultGroup(click.Group):
    """``netinit MODEL …`` runs the ``init`` command; ``netinit inspect|methods`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["init", *args]
        elif not args:
            args = ["init"]
        return super().parse_args(ctx, args)

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        """click's own errors (unknown option, bad choice, missing value) as one line too.

        click prints them as three lines (usage, a hint, the error); netinit runs click in its
        non-standalone mode and prints them here, like its own errors, then exits."""
        if not extra.pop("standalone_mode", True):
            return super().main(args, prog_name, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as exc:
            sub = (
                exc.ctx.command_path.partition(" ")[2]
                if isinstance(exc, click.UsageError) and exc.ctx
                else ""
            )
            command = f"netinit {sub}".strip()
            _error_line(f"{exc.format_message().rstrip('.')}; see '{command} --help'")
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("netinit: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """The one place where errors become a single line on stderr and an exit code."""
        try:
            return super().invoke(ctx)
        except NetinitError as exc:
            if ctx.meta.get(DEBUG_KEY):
                _print_traceback()
            _error_line(str(exc))
            if ctx.meta.get(DEBUG_KEY) and exc.detail:
                click.echo(exc.detail, err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("netinit: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: one line, the traceback only on request
            if ctx.meta.get(DEBUG_KEY):
                _print_traceback()
            _error_line(
                f"{type(exc).__name__}: {exc} (rerun with --debug and report it)",
                prefix="netinit: internal error: ",
            )
            ctx.exit(1)


def _error_line(message: str, *, prefix: str = "netinit: error: ") -> None:
    """One line on stderr: control characters in the message (names, paths, values) are shown
    escaped, so nothing in it can move the cursor or start another line."""
    click.echo(prefix + shown(message), err=True)


DEBUG_KEY = "netinit.debug"


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


def method_options(func: F) -> F:
    """The methods' sub-options, shared by ``init`` and ``inspect``."""
    decorators = [
        click.option(
            "--method",
            "-m",
            metavar="SPEC",
            help=f"{'|'.join(METHOD_NAMES)}, or a compact spec such as 'kaiming(distribution=uniform)'. [default: kaiming]",
        ),
        click.option(
            "--preset",
            metavar="NAME",
            help="Framework preset instead of a method: torch|keras|flax|hf|megatron, e.g. "
            "'hf(initializer_range=0.01)'; see 'netinit methods'.",
        ),
        *(click.option(flag.flag, metavar=flag.metavar, help=flag.help) for flag in FLAGS),
        click.option(
            "--seed",
            "-s",
            metavar="SEED",
            help="Integer or string; 'automatic' draws one and prints it; 'inherited' reads NETINIT_SEED. [default: 1234]",
        ),
        click.option(
            "--all", "all_", is_flag=True, help="Re-initialize every learnable tensor, not only missing ones."
        ),
        click.option(
            "--fan-mode",
            type=click.Choice(["semantic", "torch"]),
            default="semantic",
            show_default=True,
            help="semantic: true per-group fans from the layout; torch: torch.nn.init's own numbers.",
        ),
        click.option(
            "--rule",
            "rules",
            multiple=True,
            metavar="GLOB=SPEC",
            help="Per-name rule (repeatable; first match wins): SPEC is a method spec, a distribution, or keep.",
        ),
        click.option(
            "--config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML file with method or preset, seed, all, fan_mode and a [rules] table.",
        ),
        click.option(
            "--like", metavar="TEMPLATE", help="Create tensors the template has and the bundle lacks."
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Print the JSON report on stdout instead of the table."
        ),
        click.option(
            "--table",
            type=click.Choice(TABLE_MODES),
            default="auto",
            show_default=True,
            help="Per-tensor rows, grouped rows, or no table.",
        ),
        click.option(
            "--report",
            "report_path",
            type=click.Path(),  # a str: a trailing slash (a folder) must survive
            help="Also write the JSON report here.",
        ),
        click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors."),
        click.option("--debug", is_flag=True, help="Show the traceback of an error."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@click.group(cls=DefaultGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netinit")
def cli() -> None:
    """Initialize the missing (or, with --all, every) parameter of an ONNX model or a
    safetensors checkpoint, and write a new file."""


@cli.command("init", epilog=EPILOG)
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(),  # a str: a trailing slash (a folder) must survive
    help="Output path [default: MODEL with .init before the suffix]; a folder: that folder, default name.",
)
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output (and --report FILE).")
@click.option("--in-place", is_flag=True, help="Replace MODEL atomically (temporary file, fsync, rename).")
@click.option("--dry-run", "-n", is_flag=True, help="Print the plan; write nothing.")
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Skip the fsync before the rename: faster, still atomic for readers and a killed run, "
    "but a power loss or OS crash soon after may leave the output empty or partial.",
)
@click.option(
    "--shard",
    metavar="K/N|auto|auto/N",
    help="Write only worker K's files of N of a sharded bundle or config's model folder; the last to finish writes the index. "
    "auto: K (and N) from a Slurm array, Kubernetes Indexed Job, GitLab parallel or NETINIT_SHARD_INDEX/_COUNT.",
)
@click.option(
    "--max-shard-size",
    metavar="SIZE",
    help="Largest file of a new bundle (--like T -o NAME.safetensors.index.json), e.g. 5GB or 2GiB. "
    "[default: 5GB; with --like config.json save_pretrained's 50GB]",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="LSUV's batch: an .npz with one array per graph input (by name), or an .npy for a "
    "one-input model.  Default: a seeded standard-normal batch (float inputs only).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="LSUV: samples in the random batch (a dynamic first axis). [default: 16]",
)
@click.option(
    "--dtype",
    type=click.Choice(["f32", "f16", "bf16"]),
    help="With --like CONFIG: the new model's dtype [default: the config's dtype].",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="With --like CONFIG: run the config's own model code (auto_map).",
)
@method_options
def init_command(
    model: Path | None,
    output: str | None,
    force: bool,
    in_place: bool,
    dry_run: bool,
    no_fsync: bool,
    shard: str | None,
    max_shard_size: str | None,
    data: Path | None,
    batch_size: int | None,
    dtype: str | None,
    trust_remote_code: bool,
    **kw: Any,
) -> None:
    """Fill MODEL's uninitialized parameters (or all with --all) and write a new file."""
    click.get_current_context().meta[DEBUG_KEY] = kw["debug"]
    options = _options(kw, model)
    keep_freed_buffers()
    err = None if kw["quiet"] else _stderr_console()
    if options.seed.source == "automatic" and err is not None and shard is None:  # with --shard: an error
        err.print(f"netinit: seed {options.seed} (automatic); repeat this run with --seed {options.seed}")
    progress = None if err is None else _progress(err, enabled=not dry_run)
    try:
        report = initialize(
            model,
            output,
            like=kw["like"],
            force=force,
            in_place=in_place,
            dry_run=dry_run,
            fsync=not no_fsync,
            options=options,
            progress=progress,
            report=kw["report_path"],
            also_read=(kw["config"],),
            shard=shard,
            max_shard_size=max_shard_size,
            data=data,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    finally:
        if progress:
            progress.stop()
    _emit(report, kw)


@cli.command("inspect")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing --report FILE.")
@method_options
def inspect_command(model: Path | None, force: bool, **kw: Any) -> None:
    """Show every tensor's role, layout, fans, and what would be done — without writing."""
    click.get_current_context().meta[DEBUG_KEY] = kw["debug"]
    report = inspect(
        model,
        like=kw["like"],
        options=_options(kw, model),
        report=kw["report_path"],
        force=force,
        also_read=(kw["config"],),
    )
    table = kw["table"]
    if table == "auto" and len(report.entries) <= INSPECT_FULL_LIMIT:
        table = "full"
    elif table == "auto":  # a row per tensor would take minutes to draw
        report.notes.append(
            f"{len(report.entries):,} tensors: rows are grouped by name pattern; "
            "--table full lists every tensor, --json gives every field"
        )
    _emit(report, {**kw, "table": table})


@cli.command("methods")
def methods_command() -> None:
    """List every method and preset, sub-option, default and formula."""
    click.echo(describe_methods())
    click.echo()
    from netinit_cli.presets import describe_presets

    click.echo(describe_presets(), nl=False)


def _options(kw: dict[str, Any], model: Path | None = None) -> Any:
    overrides = {key: kw[key] for key in OVERRIDE_KEYS}
    return build_options(
        default_preset=default_preset_for(model, kw["like"]),
        method=kw["method"],
        preset=kw["preset"],
        seed=kw["seed"],
        all=kw["all_"],
        fan_mode=kw["fan_mode"],
        rules=kw["rules"],
        config=kw["config"],
        method_options=overrides,
    )


# Width for pipes and logs (no terminal to measure): wide enough that tensor names stay on one
# line and stay greppable.  COLUMNS, when set, wins (Rich reads it).
PIPE_WIDTH = 160


# The consoles are made only when something is printed: a quiet run never imports Rich.
def _stdout_console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _Progress:
    """A transient Rich bar by bytes generated; only ever created on a terminal."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}", markup=False),  # tensor names are never markup
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("generating", total=None)

    def start(self, total_bytes: int) -> None:
        self.bar.update(self.task, total=total_bytes)
        self.bar.start()

    def advance(self, planned: Planned, nbytes: int) -> None:
        self.bar.update(self.task, advance=nbytes, description=shown(planned.param.name)[-40:])

    def stop(self) -> None:
        self.bar.stop()


def _progress(console: Console, *, enabled: bool) -> _Progress | None:
    # Only on a terminal: pipes and CI logs get no control codes.
    if not enabled or not console.is_terminal:
        return None
    return _Progress(console)


def _emit(report: Report, kw: dict[str, Any]) -> None:
    """Print the report (the API wrote ``--report FILE``)."""
    import json

    if kw["as_json"]:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    if not kw["quiet"]:
        render(report, _stdout_console(), kw["table"])


def main() -> None:
    """Console-script entry point."""
    # A checkpoint of 10^5 tensors keeps ~10^6 objects alive; the collector's full passes over
    # them, at its default pace, cost a quarter of such a run.  One netinit run makes few cycles:
    # full passes 100 times less often.
    gc.set_threshold(700, 10, 1000)
    cli(prog_name="netinit")


__all__ = ["cli", "main"]
