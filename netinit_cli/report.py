"""The Rich summary table and the machine-readable JSON report.

The table has a row per tensor for small models and rows grouped by role, action and name
pattern for large ones.  Filled rows carry a sparkline of the values' histogram next to the
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
from netinit_cli.fill import STATS_SAMPLE
from netinit_cli.methods import MethodSpec
from netinit_cli.model import Action, Filled, Planned
from netinit_cli.plan import Rule, counts
from netinit_cli.presets import PresetSpec
from netinit_cli.seeding import Seed

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

# Rich is imported where a table is drawn, not with this module: a quiet run (``-q``, ``--json``)
# never loads it (about 20 ms of start-up).

TABLE_MODES = ("auto", "full", "summary", "none")
AUTO_FULL_LIMIT = 60  # per-tensor rows up to this many tensors, grouped rows beyond
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
        console.print(full_table(report))
    elif mode == "summary":
        console.print(summary_table(report))
    console.print(footer(report), soft_wrap=True)
    if mode != "none":
        for note in report.notes:
            console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)


def _title(report: Report) -> str:
    verb = "plan for" if report.dry_run else "initialized"
    return f"netinit {verb} {report.input or report.output} ({report.kind})"


def full_table(report: Report) -> Table:
    """A row per tensor.  A plan (dry run, inspect) shows layout and reason instead of values."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(_title(report)), box=box.SIMPLE_HEAD, header_style="bold")
    columns = ["tensor", "role", "shape", "dtype", "fan in/out", "action", "init"]
    columns += ["layout", "reason"] if report.dry_run else ["mean", "std (target)", "values"]
    for column in columns:
        table.add_column(column, justify="right" if column in RIGHT_COLUMNS else "left", overflow="fold")
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
        table.add_row(*_plain(cells))
    return table


RIGHT_COLUMNS = {"fan in/out", "mean", "std (target)", "tensors", "elements"}


def _plain(cells: list[str | Text]) -> list[Text]:
    """Cells as Text, so names like 'layer[0]' or layouts like '[out, in]' are never read as markup."""
    from rich.text import Text

    return [cell if isinstance(cell, Text) else Text(cell) for cell in cells]


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


def summary_table(report: Report) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(_title(report) + " — grouped"), box=box.SIMPLE_HEAD, header_style="bold")
    for column, justify in (
        ("pattern", "left"),
        ("role", "left"),
        ("action", "left"),
        ("tensors", "right"),
        ("elements", "right"),
        ("init", "left"),
        ("std (target)", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    groups: dict[tuple[str, str, Action, str], list[Planned]] = {}
    for entry in report.entries:
        key = (group_key(entry.param.name), entry.param.role.value, entry.action, entry.init or entry.why)
        groups.setdefault(key, []).append(entry)
    for (pattern, role, action, init), entries in groups.items():
        observed = [report.observed.get(e.param.name) for e in entries]
        stds = [filled.std for filled in observed if filled is not None]
        targets = {round(e.expected_std, 12) for e in entries if e.expected_std is not None}
        std = _num(sum(stds) / len(stds)) if stds else ""
        if len(targets) == 1:
            std = f"{std} ({_num(targets.pop())})"
        flagged = any(std_off_target(e, filled) for e, filled in zip(entries, observed, strict=True))
        table.add_row(
            *_plain(
                [
                    pattern,
                    role,
                    Text(action.value, style=ACTION_STYLE[action]),
                    str(len(entries)),
                    f"{sum(e.param.numel for e in entries):,}",
                    init,
                    Text(std + (" !" if flagged else ""), style="bold red" if flagged else ""),
                ]
            )
        )
    return table


def footer(report: Report) -> Text:
    from rich.text import Text

    tally = report.counts
    parts = [
        f"{tally['filled']} filled, {tally['kept']} kept, {tally['constant']} constant",
        f"preset {report.preset}" if report.preset is not None else f"method {report.method.describe()}",
        f"seed {report.seed} ({report.seed.source})",
        "scope all" if report.all else "scope missing-only",
    ]
    if report.fan_mode != "semantic":
        parts.append(f"fans {report.fan_mode}")
    if report.dry_run:
        parts.append("dry run: nothing written")
    else:
        parts.append(f"{report.bytes_written:,} bytes written to {report.output}")
        parts.append(f"{report.elapsed:.2f} s")
    text = Text("; ".join(parts))
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
            f"\n{len(flagged)} tensor(s) with std far from target (!): {', '.join(flagged[:5])}", style="red"
        )
    return text


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
        "elapsed_seconds": round(report.elapsed, 4),
        "versions": versions(),
        "notes": list(report.notes),
        "tensors": [entry_json(entry, report.observed.get(entry.param.name)) for entry in report.entries],
    }


def iter_flagged(entries: Iterable[Planned], observed: Mapping[str, Filled]) -> list[str]:
    return [entry.param.name for entry in entries if std_off_target(entry, observed.get(entry.param.name))]
