"""The Rich summary table and the machine-readable JSON report.

The table has a row per tensor for small models and a row per name pattern for large ones, each
row on one line at the console's width (long names shortened in the middle: the JSON report
keeps them whole).  Filled rows carry a sparkline of the values' histogram next to the
observed and expected standard deviation; a row whose std is far from the target is flagged.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from netinit_cli import __version__
from netinit_cli.columns import Column, fit, shorten_end, shorten_middle
from netinit_cli.fill import STATS_SAMPLE
from netinit_cli.methods import MethodSpec
from netinit_cli.model import Action, Filled, LsuvSummary, Planned
from netinit_cli.plan import Rule, counts
from netinit_cli.safe_text import shown
from netinit_cli.seeding import Seed

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod
    from rich.table import Table
    from rich.text import Text

    from netinit_cli.presets import PresetSpec

# Rich is imported where a table is drawn, not with this module: a quiet run (``-q``, ``--json``)
# never loads it (about 20 ms of start-up).

TABLE_MODES = ("auto", "full", "summary", "none")
AUTO_FULL_LIMIT = 60  # per-tensor rows up to this many tensors, grouped rows beyond
INSPECT_FULL_LIMIT = 1000  # the same for ``netinit inspect`` (Rich draws ~300 rows a second)
SPARK = "▁▂▃▄▅▆▇█"
ACTION_STYLE = {Action.FILL: "green", Action.KEEP: "yellow", Action.CONSTANT: "dim"}
JSON_SCHEMA_VERSION = 1


@dataclass
class Report:
    """What a run did (or, for a dry run or inspect, would do), tensor by tensor."""

    input: Path | None
    output: Path | None
    kind: str
    seed: Seed
    method: MethodSpec
    all: bool
    fan_mode: str
    entries: list[Planned]
    dry_run: bool = False
    files: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)
    rules: tuple[Rule, ...] = ()
    observed: dict[str, Filled] = field(default_factory=dict)  # statistics of each filled tensor, by name
    preset: PresetSpec | None = None  # replaces the method (then each init names the preset's formula)
    shard: tuple[int, int] | None = None  # (k, n): this run wrote worker k's files of n (--shard)
    lsuv: LsuvSummary | None = None  # what LSUV did (--method lsuv)

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.entries)

    @property
    def filled(self) -> list[Planned]:
        return [entry for entry in self.entries if entry.action is Action.FILL]

    def to_json(self) -> dict[str, Any]:
        return report_json(self)


def sparkline(histogram: Sequence[int] | None) -> str:
    if not histogram:
        return ""
    peak = max(histogram)
    if peak == 0:
        return ""
    return "".join(
        SPARK[min(len(SPARK) - 1, math.ceil(count / peak * (len(SPARK) - 1)))] for count in histogram
    )


def std_off_target(entry: Planned, filled: Filled | None) -> bool:
    """Observed std differs from the target by more than sampling noise allows.

    The standard error of a sample std is about std/sqrt(2n) (n capped at the stats sample,
    65,536 values); we flag beyond 6 standard errors plus 2% (bf16/f8 rounding), so a wrong gain
    or fan (>= 10%) shows while healthy tensors never do.
    """
    if filled is None or entry.expected_std is None or entry.expected_std <= 0:
        return False
    n = max(1, min(entry.param.numel, STATS_SAMPLE))
    tolerance = 6.0 / math.sqrt(2.0 * n) + 0.02
    return abs(filled.std / entry.expected_std - 1.0) > tolerance


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}"


def _fans(entry: Planned) -> str:
    if entry.fan_in is None and entry.fan_out is None:
        return ""
    return f"{entry.fan_in}/{entry.fan_out}"


def choose_mode(mode: str, n: int) -> str:
    if mode == "auto":
        return "full" if n <= AUTO_FULL_LIMIT else "summary"
    return mode


def render(report: Report, console: Console, mode: str = "auto") -> None:
    from rich.text import Text

    mode = choose_mode(mode, len(report.entries))
    if mode == "full":
        console.print(full_table(report, console.width))
    elif mode == "summary":
        console.print(summary_table(report, console.width))
    console.print(footer(report), soft_wrap=True)
    if mode != "none":
        for note in report.notes:
            console.print(Text(f"note: {shown(note)}", style="yellow"), soft_wrap=True)


def _title(report: Report) -> str:
    verb = "plan for" if report.dry_run else "initialized"
    return f"netinit {verb} {shown(report.input or report.output)} ({report.kind})"


# Columns by how they give way at narrow widths: names are shortened in the middle (to at least
# a third of the width up to NAME_SHARE: room for a layer index after the first dots), long
# text at the end; low-value columns are left out first (drop 1
# first).  Filled runs: mean, dtype, histogram, fans, role.  Plans: dtype, layout, fans, init,
# shape.  Grouped rows: elements, role, std.
def _name_column(header: str, width: int | None) -> Column:
    return Column(header, squeeze=max(NAME_MIN, min((width or 0) // 3, NAME_SHARE)), middle=True)


NAME_MIN = 20
NAME_SHARE = 40  # a name column is squeezed to a third of the width, at most this
TEXT_MIN = 16  # "fixed transform…", "kaiming normal"
FILLED_COLUMNS = (
    Column("role", drop=5),
    Column("shape"),
    Column("dtype", drop=2),
    Column("fan in/out", right=True, drop=4),
    Column("action"),
    Column("init", squeeze=TEXT_MIN),
    Column("mean", right=True, drop=1),
    Column("std (target)", right=True),
    Column("values", drop=3),
)
PLAN_COLUMNS = (
    Column("role"),
    Column("shape", drop=5),
    Column("dtype", drop=1),
    Column("fan in/out", right=True, drop=3),
    Column("action"),
    Column("init", squeeze=TEXT_MIN, drop=4),
    Column("layout", squeeze=12, drop=2),
    Column("reason", squeeze=16),
)
SUMMARY_COLUMNS = (
    Column("role", squeeze=TEXT_MIN, drop=2),
    Column("action", squeeze=12),  # mixed: "constant 1, kept 1"
    Column("tensors", right=True),
    Column("elements", right=True, drop=1),
    Column("init", squeeze=TEXT_MIN),
    Column("std (target)", right=True, drop=3),
)


def full_table(report: Report, width: int | None = None) -> Table:
    """A row per tensor, one line each within ``width`` cells.  A plan (dry run, inspect) shows
    layout and reason instead of values."""
    from rich.text import Text

    rows: list[list[str | Text]] = []
    for entry in report.entries:
        init = entry.init or entry.why
        if entry.rule:
            init = f"{init} [rule {entry.rule}]"
        cells: list[str | Text] = [
            entry.param.name,
            entry.param.role.value,
            _shape(entry.param.shape),
            entry.param.dtype,
            _fans(entry),
            Text(entry.action.value, style=ACTION_STYLE[entry.action]),
            init,
        ]
        if report.dry_run:
            layout = entry.param.layout.describe() if entry.param.layout else ""
            cells += [layout, entry.param.reason]
        else:
            filled = report.observed.get(entry.param.name)
            mean, histogram = (filled.mean, filled.histogram) if filled else (None, None)
            cells += [_num(mean), _std_cell(entry, filled), sparkline(histogram)]
        rows.append(cells)
    columns = (_name_column("tensor", width), *(PLAN_COLUMNS if report.dry_run else FILLED_COLUMNS))
    return _draw(_title(report), columns, rows, width)


def _draw(title: str, columns: Sequence[Column], rows: list[list[str | Text]], width: int | None) -> Table:
    """The table of ``rows``, fitted to ``width`` (see :func:`netinit_cli.columns.fit`): every
    row on one line, long cells shortened."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    # Names, paths and values from outside: control characters escaped before anything is measured.
    rows = [[shown(cell) if isinstance(cell, str) else cell for cell in row] for row in rows]
    natural = [
        max([cell_len(column.header), *(cell_len(str(row[i])) for row in rows)])
        for i, column in enumerate(columns)
    ]
    visible = [(i, w) for i, w in enumerate(fit(columns, natural, width)) if w is not None]
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, header_style="bold")
    for i, w in visible:
        justify: JustifyMethod = "right" if columns[i].right else "left"
        table.add_column(columns[i].header, justify=justify, width=w, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(_fitted(row[i], columns[i], w) for i, w in visible))
    return table


def _fitted(cell: str | Text, column: Column, width: int) -> Text:
    """A cell as Text (so names like 'layer[0]' are never read as markup), shortened to ``width``."""
    from rich.text import Text

    if isinstance(cell, Text):
        cell = cell.copy()
        cell.truncate(width, overflow="ellipsis")
        return cell
    return Text(shorten_middle(cell, width) if column.middle else shorten_end(cell, width))


def _std_cell(entry: Planned, filled: Filled | None) -> Text:
    from rich.text import Text

    std = _num(filled.std if filled else None)
    if entry.expected_std is not None:
        std = f"{std} ({_num(entry.expected_std)})" if std else f"({_num(entry.expected_std)})"
    flagged = std_off_target(entry, filled)
    return Text(std + (" !" if flagged else ""), style="bold red" if flagged else "")


def group_key(name: str) -> str:
    """Collapse layer indices so that 'h.11.attn.c_attn.weight' groups with 'h.0.attn.c_attn.weight'."""
    return re.sub(r"(?<=[._/-])\d+(?=[._/-]|$)", "N", name)


def summary_table(report: Report, width: int | None = None) -> Table:
    """One row per name pattern (:func:`group_key`) with its count; a group whose tensors differ
    in role, action or init lists each (actions with their counts)."""
    from rich.text import Text

    groups: dict[str, list[Planned]] = {}
    for entry in report.entries:
        groups.setdefault(group_key(entry.param.name), []).append(entry)
    rows: list[list[str | Text]] = []
    for pattern, entries in groups.items():
        observed = [report.observed.get(e.param.name) for e in entries]
        stds = [filled.std for filled in observed if filled is not None]
        targets = {round(e.expected_std, 12) for e in entries if e.expected_std is not None}
        std = _num(sum(stds) / len(stds)) if stds else ""
        if len(targets) == 1:
            std = f"{std} ({_num(targets.pop())})"
        flagged = any(std_off_target(e, filled) for e, filled in zip(entries, observed, strict=True))
        inits = list(dict.fromkeys(e.init or e.why for e in entries))
        rows.append(
            [
                pattern,
                ", ".join(dict.fromkeys(e.param.role.value for e in entries)),
                _actions_cell(entries),
                str(len(entries)),
                f"{sum(e.param.numel for e in entries):,}",
                inits[0] + (f" (+{len(inits) - 1} more)" if len(inits) > 1 else ""),
                Text(std + (" !" if flagged else ""), style="bold red" if flagged else ""),
            ]
        )
    columns = (_name_column("pattern", width), *SUMMARY_COLUMNS)
    return _draw(_title(report) + " — grouped", columns, rows, width)


def _actions_cell(entries: Sequence[Planned]) -> Text:
    """'filled' for a group with one action; 'filled 4, kept 2' for a mixed one."""
    from rich.text import Text

    tally: dict[Action, int] = {}
    for entry in entries:
        tally[entry.action] = tally.get(entry.action, 0) + 1
    if len(tally) == 1:
        (action,) = tally
        return Text(action.value, style=ACTION_STYLE[action])
    text = Text()
    for index, (action, count) in enumerate(tally.items()):
        text.append(", " if index else "")
        text.append(f"{action.value} {count}", style=ACTION_STYLE[action])
    return text


def footer(report: Report) -> Text:
    from rich.text import Text

    tally = report.counts
    parts = [
        f"{tally['filled']} filled, {tally['kept']} kept, {tally['constant']} constant",
        f"preset {report.preset}" if report.preset is not None else f"method {report.method.describe()}",
        f"seed {shown(report.seed)} ({report.seed.source})",
        "scope all" if report.all else "scope missing-only",
    ]
    if report.fan_mode != "semantic":
        parts.append(f"fans {report.fan_mode}")
    if report.dry_run:
        parts.append("dry run: nothing written")
    else:
        parts.append(f"{report.bytes_written:,} bytes written to {shown(report.output)}")
        parts.append(f"{report.elapsed:.2f} s")
    text = Text("; ".join(parts))
    if report.lsuv is not None:
        text.append("\n" + shown(lsuv_line(report.lsuv)))
    if not report.dry_run and tally["filled"] == 0:
        learnable = any(e.param.role.learnable for e in report.entries)
        if learnable and not report.all:
            message = (
                "nothing was uninitialized: every learnable tensor has data; use --all to re-initialize them"
            )
        else:
            message = (
                "nothing to initialize: the model has no learnable tensor netinit recognizes (see --rule)"
            )
        text.append("\n" + message, style="yellow")
    flagged = iter_flagged(report.entries, report.observed)
    if flagged:
        text.append(
            f"\n{len(flagged)} tensor(s) with std far from target (!): {shown(', '.join(flagged[:5]))}",
            style="red",
        )
    return text


def lsuv_line(summary: LsuvSummary) -> str:
    """One line under the table: layers rescaled and skipped, and the onnxruntime cost."""
    layers = summary.layers.values()
    rescaled = [layer for layer in layers if layer.skipped is None]
    unconverged = sum(not layer.converged for layer in rescaled)
    parts = [
        f"lsuv: {len(rescaled)} layer(s) rescaled"
        + (f" ({unconverged} not within tol after max_iter)" if unconverged else ""),
        f"{len(layers) - len(rescaled)} skipped",
        f"{summary.sessions} onnxruntime session(s), {summary.passes} pass(es), {summary.seconds:.2f} s",
        f"batch {summary.batch}",
    ]
    return "; ".join(parts)


def lsuv_json(summary: LsuvSummary) -> dict[str, Any]:
    return {
        "sessions": summary.sessions,
        "passes": summary.passes,
        "seconds": round(summary.seconds, 4),
        "batch": summary.batch,
        "rescaled": sum(layer.skipped is None for layer in summary.layers.values()),
        "skipped": sum(layer.skipped is not None for layer in summary.layers.values()),
    }


def lsuv_entry_json(summary: LsuvSummary, name: str) -> dict[str, Any]:
    """The LSUV keys of one tensor (null for a tensor that is no LSUV layer's weight)."""
    layer = summary.layers.get(name)
    return {
        "lsuv_layer": layer.layer if layer else None,
        "lsuv_output": layer.output if layer else None,
        "lsuv_std_before": layer.std_before if layer else None,
        "lsuv_std_after": layer.std_after if layer and layer.skipped is None else None,
        "lsuv_iterations": layer.iterations if layer else None,
        "lsuv_scale": layer.scale if layer else None,
        "lsuv_converged": layer.converged if layer and layer.skipped is None else None,
        "lsuv_skipped": layer.skipped if layer else None,
    }


def entry_json(entry: Planned, filled: Filled | None = None) -> dict[str, Any]:
    param = entry.param
    return {
        "name": param.name,
        "aliases": list(param.aliases),
        "role": param.role.value,
        "reason": param.reason,
        "source": param.source,
        "shape": list(param.shape),
        "dtype": param.dtype,
        "layout": param.layout.describe() if param.layout else None,
        "has_data": param.has_data,
        "fan_in": entry.fan_in,
        "fan_out": entry.fan_out,
        "action": entry.action.value,
        "why": entry.why,
        "init": entry.init or None,
        "rule": entry.rule or None,
        "mean": filled.mean if filled else None,
        "std": filled.std if filled else None,
        "expected_mean": entry.expected_mean,
        "expected_std": entry.expected_std,
    }


def versions() -> dict[str, str]:
    """The versions that produced a report (onnx is imported only when asked)."""
    import onnx

    return {
        "netinit": __version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
    }


def report_json(report: Report) -> dict[str, Any]:
    return {
        "schema": JSON_SCHEMA_VERSION,
        "input": str(report.input) if report.input else None,
        "output": None if report.dry_run or report.output is None else str(report.output),
        "files": [str(path) for path in report.files],
        "format": report.kind,
        "dry_run": report.dry_run,
        "seed": str(report.seed),
        "seed_source": report.seed.source,
        "method": None if report.preset is not None else report.method.describe(),
        "preset": str(report.preset) if report.preset is not None else None,
        "scope": "all" if report.all else "missing",
        "fan_mode": report.fan_mode,
        "rules": [rule.describe() for rule in report.rules],
        "counts": report.counts,
        "bytes_written": report.bytes_written,
        "shard": None if report.shard is None else {"index": report.shard[0], "count": report.shard[1]},
        "elapsed_seconds": round(report.elapsed, 4),
        "versions": versions(),
        "notes": list(report.notes),
        "tensors": [_tensor_json(report, entry) for entry in report.entries],
        **({"lsuv": lsuv_json(report.lsuv)} if report.lsuv is not None else {}),
    }


def _tensor_json(report: Report, entry: Planned) -> dict[str, Any]:
    record = entry_json(entry, report.observed.get(entry.param.name))
    if report.lsuv is not None:
        record.update(lsuv_entry_json(report.lsuv, entry.param.name))
    return record


def iter_flagged(entries: Iterable[Planned], observed: Mapping[str, Filled]) -> list[str]:
    return [entry.param.name for entry in entries if std_off_target(entry, observed.get(entry.param.name))]
