"""``make bench``: netinit against the hand-written torch script and the machine's floor, the
bounded-memory figures of a 2 GB sharded bundle and (``--big``) a 3 GB ONNX model, and start-up:
netinit end to end on a 4 KB model against ``python -c "import numpy"``.

One run measures every case side by side: the cases alternate within each repetition, each run is a
fresh subprocess, and its wall time (perf_counter around spawn and wait) and peak RSS (``ru_maxrss``
from ``os.wait4``) are recorded.  The report gives medians, ratios and the acceptance checks, prints
a Markdown table and saves it to ``bench/results.md``.

    .venv/bin/python bench/run.py [--reps 5] [--quick] [--big] [--only CASE[,CASE…]]

Inputs are built once under ``bench/data/`` (git-ignored) and reused; outputs go to
``bench/data/out/`` and are deleted after each run, followed by a ``sync`` (before the next one is timed).
"""

from __future__ import annotations

import argparse
import compileall
import fnmatch
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_data
from make_data import Dataset

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT_ROOT = make_data.DATA_ROOT / "out"
LOG_ROOT = make_data.DATA_ROOT / "logs"
RESULTS = BENCH / "results.md"  # a full run's table, for the README
SCRATCH_RESULTS = make_data.DATA_ROOT / "results-last.md"  # --quick and --only runs
PYTHON = sys.executable
# ``-m`` with cwd=REPO runs this checkout's netinit_cli whatever the venv's install says.
NETINIT = [PYTHON, "-m", "netinit_cli"]
# Older OpenBLAS builds need these on some processors; they slow a current numpy, so the benchmark's
# children run without them (tests and CI keep them).
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MB = 1e6
KILLED = -9

# netinit --method spec and the torch script's --init for each initializer.
METHODS = {
    "kaiming-normal": ("kaiming", "kaiming_normal"),
    "kaiming-uniform": ("kaiming(distribution=uniform)", "kaiming_uniform"),
    "xavier": ("xavier", "xavier_normal"),
    "orthogonal": ("orthogonal", "orthogonal"),
}
# Also timed with --no-fsync, the durability of the torch script and the floor.
NO_FSYNC_METHODS = ("kaiming-uniform", "kaiming-normal")
# Byte-identity with NETINIT_THREADS=1 is checked for these methods.
DETERMINISM_METHODS = ("kaiming-normal", "kaiming-uniform", "orthogonal")


@dataclass
class Case:
    name: str
    what: str  # one line for the table
    argv: Callable[[Path], list[str]]  # output folder -> command
    data: Dataset
    env: dict[str, str] = field(default_factory=dict)
    torch_peer: str | None = None  # the torch case this one is compared with
    hash_output: bool = False
    repeated: bool = True  # False: run once, after the repetitions
    cwd: Path = REPO  # the checkout whose netinit_cli ``python -m`` runs (``--baseline``: an older one)


@dataclass
class Run:
    wall: float
    user: float
    system: float
    max_rss: float  # bytes
    minor_faults: int
    returncode: int  # -9 when killed at the timeout
    others_cpu: float  # CPU seconds other processes used during the run (a shared machine's noise)
    error: str = ""  # last line of stderr when the run failed
    digest: str = ""
    steal: float = 0.0  # CPU seconds the hypervisor gave to other guests during the run


@dataclass
class Measured:
    case: Case
    runs: list[Run] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.returncode == 0]

    @property
    def timed_out(self) -> bool:
        return any(r.returncode == KILLED for r in self.runs)

    @property
    def wall(self) -> float | None:
        ok = self.ok_runs
        return statistics.median(r.wall for r in ok) if ok else None

    @property
    def peak_rss(self) -> float | None:
        ok = self.ok_runs
        return max(r.max_rss for r in ok) if ok else None


def netinit_case(
    name: str, method: str, data: Dataset, out_name: str, extra: tuple[str, ...] = (), **kw: object
) -> Case:
    spec, _ = METHODS[method]
    return Case(
        name=name,
        what=f"netinit --all --method '{spec}' {' '.join(extra)} ({data.key})".replace("  ", " "),
        argv=lambda out: [
            *NETINIT,
            str(data.model),
            "--all",
            "--method",
            spec,
            "-o",
            str(out / out_name),
            "--force",
            "-q",
            *extra,
        ],
        data=data,
        **kw,  # type: ignore[arg-type]
    )


# Start-up: what a user waits for on a tiny model, interpreter and imports included, against the
# least any numpy program pays.  A slow release of a dependency (such as ml_dtypes 0.7.0, whose
# import took 0.7 s) shows here as a ratio far above STARTUP_LIMIT.
STARTUP_FIXTURES = {
    "startup-onnx": REPO / "fixtures" / "cnn.onnx",
    "startup-safetensors": REPO / "fixtures" / "cnn.safetensors",
}
STARTUP_BASELINE = "startup-import-numpy"
STARTUP_LIMIT = 3.0


def startup_cases() -> list[Case]:
    """``python -c "import numpy"``, then netinit (default method, every tensor, the table rendered
    as a user sees it, the output written and fsynced) on each committed 4 KB fixture."""
    inputs = {name: make_data.fixture(path.name, path) for name, path in STARTUP_FIXTURES.items()}
    baseline = Case(
        name=STARTUP_BASELINE,
        what='python -c "import numpy"',
        argv=lambda out: [PYTHON, "-c", "import numpy"],
        data=inputs["startup-onnx"],  # it reads none; a Case names one
    )
    return [
        baseline,
        *(
            Case(
                name=name,
                what=f"netinit {data.model.relative_to(REPO)} --all -o OUT --force (end to end)",
                argv=lambda out, model=data.model: [
                    *NETINIT,
                    str(model),
                    "--all",
                    "-o",
                    str(out / model.name),
                    "--force",
                ],
                data=data,
            )
            for name, data in inputs.items()
        ),
    ]


def build_cases(quick: bool, big: bool) -> list[Case]:
    """Every case, in the order they alternate within a repetition."""
    bundle = make_data.bundle(quick)
    shards = make_data.sharded(quick)
    onnx = make_data.onnx_model(quick)
    cases = startup_cases()
    cases += [
        Case(
            name="floor",
            what=f"numpy random(float32) on {os.cpu_count()} threads + pwrite, {bundle.float_values:,} values",
            argv=lambda out: [
                PYTHON,
                str(BENCH / "floor.py"),
                str(out / "floor.bin"),
                str(bundle.float_values),
            ],
            data=bundle,
        )
    ]
    for method, (_, torch_init) in METHODS.items():
        cases.append(
            netinit_case(
                f"netinit-{method}",
                method,
                bundle,
                "model.safetensors",
                torch_peer=f"torch-{method}",
                hash_output=method in DETERMINISM_METHODS,
            )
        )
        cases.append(
            Case(
                name=f"torch-{method}",
                what=f"torch script: load_file, nn.init.{torch_init}_, save_file",
                argv=lambda out, init=torch_init: [
                    PYTHON,
                    str(BENCH / "torch_script.py"),
                    str(bundle.model),
                    str(out / "model.safetensors"),
                    "--init",
                    init,
                ],
                data=bundle,
            )
        )
    # Like for like: neither the torch script (save_file) nor the floor fsyncs its output.
    for method in NO_FSYNC_METHODS:
        cases.append(
            netinit_case(
                f"netinit-{method}-nofsync",
                method,
                bundle,
                "model.safetensors",
                extra=("--no-fsync",),
                torch_peer=f"torch-{method}",
            )
        )
    # Released LLM checkpoints are mostly bfloat16: torch fills bf16 tensors natively, netinit
    # draws float32 and rounds once.
    bf16 = make_data.bf16_bundle(quick)
    cases.append(
        netinit_case("netinit-bf16", "kaiming-normal", bf16, "model.safetensors", torch_peer="torch-bf16")
    )
    cases.append(
        Case(
            name="torch-bf16",
            what="torch script on the bf16 bundle: load_file, nn.init.kaiming_normal_, save_file",
            argv=lambda out: [
                PYTHON,
                str(BENCH / "torch_script.py"),
                str(bf16.model),
                str(out / "model.safetensors"),
                "--init",
                "kaiming_normal",
            ],
            data=bf16,
        )
    )
    cases.append(netinit_case("netinit-onnx", "kaiming-normal", onnx, "model.onnx"))
    cases.append(netinit_case("netinit-sharded", "kaiming-normal", shards, "model.safetensors.index.json"))
    if big:
        cases.append(
            netinit_case(
                "netinit-onnx-big", "kaiming-normal", make_data.onnx_model(quick, big=True), "model.onnx"
            )
        )
    cases += hf_cases(big)
    for method in DETERMINISM_METHODS:
        cases.append(
            netinit_case(
                f"netinit-{method}@1thread",
                method,
                bundle,
                "model.safetensors",
                env={"NETINIT_THREADS": "1"},
                hash_output=True,
                repeated=False,
            )
        )
    return cases


def hf_cases(big: bool) -> list[Case]:
    """Issue 16: ``netinit --like config.json -o OUTDIR`` (a LLaMA-shaped ~1.1B config, bf16) against
    ``from_config`` + ``save_pretrained``, and the import of torch + transformers alone; ``--big``: a
    7B-shaped config (writes 13.5 GB).  Only where torch and transformers are installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return []
    import hf_config_bench as hf

    def config_case(name: str, data: Dataset, **kw: object) -> Case:
        return Case(
            name=name,
            what=f"netinit --like {data.key}/config.json -o OUTDIR (default method)",
            argv=lambda out: [*NETINIT, "--like", str(data.model), "-o", str(out / "model"), "--force", "-q"],
            data=data,
            **kw,  # type: ignore[arg-type]
        )

    def script_case(name: str, what: str, child: str, data: Dataset) -> Case:
        argv = [PYTHON, str(BENCH / "hf_config_bench.py"), "--child", child, str(data.folder)]
        return Case(name=name, what=what, argv=lambda out: [*argv, str(out / "model")], data=data)

    small = hf.config_dataset("hf-llama-1b", hf.LLAMA_1B, make_data.DATA_ROOT, Dataset)
    cases = [
        script_case(
            "hf-import", "import torch, transformers and the LLaMA classes (nothing else)", "import", small
        ),
        config_case("netinit-hf-1b", small, torch_peer="torch-hf-1b"),
        script_case(
            "torch-hf-1b", "AutoModelForCausalLM.from_config + save_pretrained (1.1B bf16)", "save", small
        ),
    ]
    if big:
        cases.append(
            config_case(
                "netinit-hf-7b", hf.config_dataset("hf-llama-7b", hf.LLAMA_7B, make_data.DATA_ROOT, Dataset)
            )
        )
    return cases


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
    env.update(extra)
    return env


def digest_folder(folder: Path) -> str:
    """SHA-256 over every output file's name and bytes, in name order."""
    total = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        total.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                total.update(block)
    return total.hexdigest()


def cpu_seconds() -> tuple[float, float]:
    """(busy, stolen): CPU seconds the whole machine has spent not idle, and those the
    hypervisor ran other guests on our virtual CPUs, since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:7]) - idle) / tick, steal / tick


def run_once(case: Case, timeout: float, log: Path) -> Run:
    """Run the case in a fresh subprocess into an empty output folder; measure it; clean up."""
    out = OUT_ROOT / case.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = case.argv(out)
    with open(log, "wb") as err:
        busy, steal = cpu_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, env=child_env(case.env), cwd=case.cwd
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        killer.cancel()
        busy_after, steal_after = cpu_seconds()
        busy, steal = busy_after - busy, steal_after - steal
    proc.returncode = os.waitstatus_to_exitcode(status)
    run = Run(
        wall=wall,
        user=usage.ru_utime,
        system=usage.ru_stime,
        max_rss=usage.ru_maxrss * 1024.0,  # KiB on Linux
        minor_faults=usage.ru_minflt,
        returncode=proc.returncode,
        others_cpu=max(0.0, busy - usage.ru_utime - usage.ru_stime),
        steal=steal,
    )
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        reason = (
            f"killed after {timeout:.0f} s" if proc.returncode == KILLED else (lines[-1] if lines else "")
        )
        run.error = f"exit {proc.returncode}: {reason}"[:300]
    elif case.hash_output:
        run.digest = digest_folder(out)
    shutil.rmtree(out, ignore_errors=True)
    # Untimed: the next case starts with no dirty pages nor pending discards of this one's
    # output (a case that fsyncs would otherwise also wait for the previous case's data).
    os.sync()
    return run


BASELINE_TAG = "~base"


def with_baseline(cases: list[Case], checkout: Path) -> list[Case]:
    """Each repeated netinit case followed by its twin run from ``checkout``'s netinit_cli."""
    if not (checkout / "netinit_cli" / "__main__.py").is_file():
        raise SystemExit(f"--baseline {checkout}: no netinit_cli/ checkout there")
    paired: list[Case] = []
    for case in cases:
        paired.append(case)
        if case.name.startswith("netinit-") and case.repeated:
            paired.append(
                replace(case, name=case.name + BASELINE_TAG, cwd=checkout, torch_peer=None, hash_output=False)
            )
    return paired


def baseline_lines(results: dict[str, Measured]) -> list[str]:
    """This checkout's median against the baseline checkout's, case by case."""
    pairs = [
        (m, results[m.case.name + BASELINE_TAG])
        for m in results.values()
        if m.case.name + BASELINE_TAG in results
    ]
    if not pairs:
        return []
    lines = [
        "| case | this checkout s | baseline s | ratio | peak RSS MB this / baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for new, old in pairs:
        rss = f"{_fmt(None if new.peak_rss is None else new.peak_rss / MB, '{:.0f}')} / {_fmt(None if old.peak_rss is None else old.peak_rss / MB, '{:.0f}')}"
        lines.append(
            f"| `{new.case.name}` | {_fmt(new.wall)} | {_fmt(old.wall)} | {_fmt(_ratio(new.wall, old.wall), '{:.3f}')} | {rss} |"
        )
    return ["", "Against the baseline checkout (same run, alternating):", "", *lines]


def measure(cases: list[Case], reps: int, timeout: float) -> dict[str, Measured]:
    results = {c.name: Measured(c) for c in cases}
    LOG_ROOT.mkdir(parents=True, exist_ok=True)
    schedule = [(rep, c) for rep in range(reps) for c in cases if c.repeated]
    schedule += [(0, c) for c in cases if not c.repeated]
    for k, (rep, case) in enumerate(schedule, start=1):
        twin = results.get(case.name.split("@")[0])
        if results[case.name].timed_out or (
            twin is not None and twin is not results[case.name] and twin.timed_out
        ):
            # A case that hit the timeout is not run again: that keeps the whole run bounded.
            print(
                f"[{k:3}/{len(schedule)}] rep {rep + 1} {case.name:32} skipped (timed out before)",
                file=sys.stderr,
            )
            continue
        run = run_once(case, timeout, LOG_ROOT / f"{case.name}.rep{rep}.log")
        results[case.name].runs.append(run)
        state = "ok" if run.returncode == 0 else run.error
        print(
            f"[{k:3}/{len(schedule)}] rep {rep + 1} {case.name:32} {run.wall:7.2f} s "
            f"{run.max_rss / MB:7.0f} MB  others {100 * load_share(run):3.0f}%  steal {100 * steal_share(run):3.0f}%  {state}",
            file=sys.stderr,
            flush=True,
        )
    return results


# ---------------------------------------------------------------- report


def steal_share(run: Run) -> float:
    """The share of our virtual CPUs' time the hypervisor gave to other guests during the run."""
    return run.steal / (run.wall * (os.cpu_count() or 1))


def load_share(run: Run) -> float:
    """The share of the machine's CPU time that other processes took during the run."""
    return run.others_cpu / (run.wall * (os.cpu_count() or 1))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(x: float | None, pattern: str = "{:.2f}") -> str:
    return "–" if x is None else pattern.format(x)


def results_table(results: dict[str, Measured]) -> list[str]:
    floor = results["floor"].wall if "floor" in results else None
    lines = [
        "| case | median wall s | min–max s | CPU s (user+sys) | sys s | × floor | × torch | peak RSS MB | minor faults | others' CPU | steal | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in results.values():
        ok = m.ok_runs
        peer = results.get(m.case.torch_peer or "")
        span = f"{min(r.wall for r in ok):.2f}–{max(r.wall for r in ok):.2f}" if ok else "–"
        cpu = statistics.median(r.user + r.system for r in ok) if ok else None
        system = statistics.median(r.system for r in ok) if ok else None
        faults = statistics.median(r.minor_faults for r in ok) if ok else None
        others = statistics.median(load_share(r) for r in m.runs) if m.runs else None
        stolen = statistics.median(steal_share(r) for r in m.runs) if m.runs else None
        failed = [r for r in m.runs if r.returncode != 0]
        status = f"{len(failed)}/{len(m.runs)} FAILED: {failed[0].error}" if failed else f"{len(m.runs)} ok"
        lines.append(
            f"| `{m.case.name}` | {_fmt(m.wall)} | {span} | {_fmt(cpu)} | {_fmt(system)} | {_fmt(_ratio(m.wall, floor))} "
            f"| {_fmt(_ratio(m.wall, peer.wall if peer else None), '{:.3f}')} "
            f"| {_fmt(None if m.peak_rss is None else m.peak_rss / MB, '{:.0f}')} "
            f"| {_fmt(faults, '{:,.0f}')} | {_fmt(None if others is None else 100 * others, '{:.0f}%')} "
            f"| {_fmt(None if stolen is None else 100 * stolen, '{:.0f}%')} "
            f"| {status.replace('|', '/')} |"
        )
    return lines


@dataclass
class Check:
    name: str
    target: str
    measured: str
    status: str  # PASS, FAIL or SKIP (a case did not run or failed)


def _ratio_check(results: dict[str, Measured], name: str, a: str, b: str, limit: float) -> Check:
    target = f"{a} ≤ {limit}× {b}"
    wa = results[a].wall if a in results else None
    wb = results[b].wall if b in results else None
    r = _ratio(wa, wb)
    if r is None and a in results and results[a].timed_out and wb:
        killed_after = max(run.wall for run in results[a].runs)
        return Check(name, target, f"killed after {killed_after:.0f} s (> {killed_after / wb:.2f}×)", "FAIL")
    if r is None:
        return Check(name, target, "not measured", "SKIP")
    best_a = min(run.wall for run in results[a].ok_runs)
    best_b = min(run.wall for run in results[b].ok_runs)
    measured = f"{wa:.2f} s / {wb:.2f} s = {r:.3f}× (fastest runs: {best_a:.2f} / {best_b:.2f} = {best_a / best_b:.3f}×)"
    return Check(name, target, measured, "PASS" if r <= limit else "FAIL")


def _startup_check(results: dict[str, Measured], name: str) -> Check:
    """The wall-time ratio decides; the CPU-time ratio beside it is what a busy machine barely moves."""
    check = _ratio_check(results, f"start-up, {name}", name, STARTUP_BASELINE, STARTUP_LIMIT)
    if check.status != "SKIP" and results[name].ok_runs and results[STARTUP_BASELINE].ok_runs:
        cpu_a, cpu_b = (
            statistics.median(r.user + r.system for r in results[n].ok_runs) for n in (name, STARTUP_BASELINE)
        )
        check.measured += f"; CPU {cpu_a:.2f} s / {cpu_b:.2f} s = {_fmt(_ratio(cpu_a, cpu_b))}×"
    return check


def checks(results: dict[str, Measured], largest: int) -> list[Check]:
    out = [
        *(_startup_check(results, name) for name in STARTUP_FIXTURES),
        _ratio_check(results, "kaiming uniform near the floor", "netinit-kaiming-uniform", "floor", 1.5),
        _ratio_check(
            results, "kaiming uniform vs torch", "netinit-kaiming-uniform", "torch-kaiming-uniform", 0.12
        ),
        _ratio_check(
            results, "kaiming normal vs torch", "netinit-kaiming-normal", "torch-kaiming-normal", 0.15
        ),
        _ratio_check(results, "orthogonal vs torch", "netinit-orthogonal", "torch-orthogonal", 0.8),
        _ratio_check(
            results,
            "kaiming uniform vs torch, --no-fsync (no fsync, as the torch script)",
            "netinit-kaiming-uniform-nofsync",
            "torch-kaiming-uniform",
            0.12,
        ),
        _ratio_check(
            results,
            "kaiming normal vs torch, --no-fsync (no fsync, as the torch script)",
            "netinit-kaiming-normal-nofsync",
            "torch-kaiming-normal",
            0.15,
        ),
    ]
    limit = 2 * largest + 200 * MB
    bundle_cases = [
        m for n, m in results.items() if n.startswith("netinit-") and m.case.data.key.endswith("bundle")
    ]
    peaks = [(m.case.name, m.peak_rss) for m in bundle_cases if m.peak_rss is not None]
    target = f"peak RSS ≤ 2×largest tensor ({largest / MB:.1f} MB) + 200 MB = {limit / MB:.0f} MB, every netinit bundle case"
    if not peaks:
        out.append(Check("bounded memory", target, "not measured", "SKIP"))
    else:
        worst = max(peaks, key=lambda p: p[1])
        out.append(
            Check(
                "bounded memory",
                target,
                f"max {worst[1] / MB:.0f} MB ({worst[0]})",
                "PASS" if worst[1] <= limit else "FAIL",
            )
        )
    for key, label in (("netinit-sharded", "sharded bundle"), ("netinit-onnx-big", "big ONNX model")):
        m = results.get(key)
        if m is None:
            continue
        size = m.case.data.total_bytes
        target = f"{label}: peak RSS < 25% of {size / 1e9:.2f} GB = {0.25 * size / MB:.0f} MB"
        if m.peak_rss is None:
            out.append(Check(f"{label} memory", target, "failed", "FAIL" if m.runs else "SKIP"))
        else:
            share = m.peak_rss / size
            out.append(
                Check(
                    f"{label} memory",
                    target,
                    f"{m.peak_rss / MB:.0f} MB = {100 * share:.1f}%",
                    "PASS" if share < 0.25 else "FAIL",
                )
            )
    for method in DETERMINISM_METHODS:
        default, single = results.get(f"netinit-{method}"), results.get(f"netinit-{method}@1thread")
        target = f"{method}: SHA-256 of the output with NETINIT_THREADS=1 = with all threads (every rep)"
        if default is None or single is None:
            continue
        digests = {r.digest for r in default.ok_runs}
        one = {r.digest for r in single.ok_runs}
        if not digests or not one:
            out.append(Check(f"byte-identical {method}", target, "a run failed", "FAIL"))
            continue
        same = digests == one
        measured = f"{sorted(one)[0][:16]}… " + (
            "identical" if same else f"differ: all-threads {sorted(d[:12] for d in digests)}"
        )
        out.append(Check(f"byte-identical {method}", target, measured, "PASS" if same else "FAIL"))
    return out


def cpu_probe() -> str:
    """This machine's speed right now: netinit's normal sampler on 1 and 2 threads, in a child.
    Shared hosts vary (the same probe gave 1.7 and 3.0-3.3 GB/s one hour, 1.0-1.5 and 1.8-2.2
    GB/s the next), so a table is only comparable with another measured at the same speed."""
    probe = (
        "import threading, time, numpy as np\n"
        "from netinit_cli.sampling import _normal_rows\n"
        "def work(n, k):\n"
        "    bits, out = np.random.PCG64DXSM(k), np.empty((8, 1 << 16), np.float32)\n"
        "    for _ in range(n): _normal_rows(bits, out, 0.0, 1.0)\n"
        "speeds = []\n"
        "for threads in (1, 2):\n"
        "    pool = [threading.Thread(target=work, args=(64 // threads, k)) for k in range(threads)]\n"
        "    start = time.perf_counter(); [t.start() for t in pool]; [t.join() for t in pool]\n"
        "    speeds.append(64 * 2 * 2**20 / (time.perf_counter() - start) / 1e9)\n"
        "print(' / '.join(f'{s:.2f}' for s in speeds))\n"
    )
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=child_env({}), cwd=REPO)
    return done.stdout.strip() or f"failed: {done.stderr.strip()[-200:]}"


def blas_core() -> str:
    """The OpenBLAS kernel numpy runs in a child with the benchmark's environment."""
    probe = (
        "import ctypes, glob, os, numpy\n"
        "libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__), '..', 'numpy.libs', '*openblas*'))\n"
        "lib = ctypes.CDLL(libs[0])\n"
        "f = next(getattr(lib, n) for n in ('scipy_openblas_get_corename64_', 'openblas_get_corename64_', 'openblas_get_corename') if hasattr(lib, n))\n"
        "f.restype = ctypes.c_char_p\n"
        "print(f().decode())\n"
    )
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=child_env({}))
    return done.stdout.strip() or "unknown"


def _version(package: str) -> str:
    """The installed version; the start-up cases also run in `make run`'s venv, without torch."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_lines() -> list[str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "netinit_cli"], capture_output=True, text=True, cwd=REPO
    ).stdout
    versions = ", ".join(f"{p} {_version(p)}" for p in ("numpy", "torch", "safetensors", "onnx", "ml_dtypes"))
    unset = [k for k in OPENBLAS_OVERRIDES if k in os.environ]
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; Python {platform.python_version()}, {versions}",
        f"- netinit: commit {commit}{' + uncommitted changes in netinit_cli/' if dirty else ''}",
        f"- OpenBLAS kernel in the children: {blas_core()}; "
        + (
            f"unset in the children: {', '.join(unset)} (set in this shell)"
            if unset
            else "OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE were not set"
        ),
        "- wall = spawn to exit of a fresh process (interpreter start and imports included; netinit_cli is "
        "byte-compiled first, as an installed package is); peak RSS = ru_maxrss of that process; outputs go to the page cache of the data disk and are deleted, and `sync` runs, between runs (not timed).",
    ]


def report(results: dict[str, Measured], datasets: list[Dataset], reps: int, command: str) -> str:
    # The memory check's limit comes from the bundle; a run without it (--only startup-*) skips it.
    bundle = next((d for d in datasets if d.key.endswith("bundle")), None)
    found = checks(results, bundle.largest_tensor_bytes if bundle else 0)
    lines = [
        "# netinit benchmark",
        "",
        f"Reproduce: `{command}`  ({reps} repetition{'s' if reps != 1 else ''}, cases alternating; "
        f"medians; ratios from this one run)",
        "",
        "Inputs (float32):",
        *(
            f"- `{d.key}`: {d.total_bytes / 1e9:.2f} GB, {d.float_values:,} values, largest tensor "
            f"{d.largest_tensor_bytes / MB:.1f} MB (`{d.model.relative_to(REPO)}`)"
            for d in datasets
        ),
        "",
        *results_table(results),
        *baseline_lines(results),
        "",
        "| check | target | measured | result |",
        "|---|---|---|---|",
        *(f"| {c.name} | {c.target} | {c.measured} | **{c.status}** |" for c in found),
        "",
        *environment_lines(),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small inputs, 1 repetition: a smoke run")
    parser.add_argument("--big", action="store_true", help="add the ~3 GB ONNX model (a peak-memory case)")
    parser.add_argument(
        "--only", metavar="CASE[,CASE…]", help="run only these cases (shell patterns allowed)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds before a run is killed; a case killed once is not run again (default 180)",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout (e.g. `git worktree add /tmp/base OLD`): every netinit case also runs "
        "from it, as `<case>~base`, alternating with this checkout's, for before/after ratios",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help=f"where the Markdown goes (default {RESULTS.relative_to(REPO)}; {SCRATCH_RESULTS.relative_to(REPO)} "
        "with --quick or --only)",
    )
    args = parser.parse_args(argv)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)

    patterns = [p.strip() for p in (args.only or "").split(",") if p.strip()]
    # Start-up cases alone need none of the large inputs: they are not built for them.
    only_startup = bool(patterns) and all(p.startswith("startup") for p in patterns)
    cases = startup_cases() if only_startup else build_cases(args.quick, args.big)
    if args.list:
        for c in cases:
            print(f"{c.name:28} {c.what}")
        return 0
    if patterns:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
        if not cases:
            parser.error(f"--only {args.only!r} matches no case; see --list")
    # An installed package has its bytecode (pip compiles it); a checkout run with
    # PYTHONDONTWRITEBYTECODE (set in these sandboxes) would otherwise compile every module from
    # source in every timed run, about 70 ms of ~10k lines.  Python reads __pycache__ even then.
    compileall.compile_dir(REPO / "netinit_cli", quiet=1)
    if args.baseline:
        cases = with_baseline(cases, args.baseline.resolve())
        compileall.compile_dir(args.baseline.resolve() / "netinit_cli", quiet=1)
    os.sync()  # freshly built inputs reach the disk before anything is timed
    datasets = list({c.data.key: c.data for c in cases}.values())

    command = shlex.join([".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    speed_before = cpu_probe()
    results = measure(cases, reps, args.timeout)
    speed_after = cpu_probe()
    text = report(results, datasets, reps, command)
    text += (
        f"- CPU probe (netinit's normal sampler, GB/s on 1 / 2 threads): {speed_before} before the "
        f"runs, {speed_after} after\n"
    )
    noisy = [r for m in results.values() for r in m.runs if load_share(r) + steal_share(r) > 0.10]
    if noisy:
        text += (
            f"\n**Warning:** other processes or other guests of the hypervisor took more than 10% of the "
            f"CPU during {len(noisy)} of {sum(len(m.runs) for m in results.values())} runs (columns "
            "others' CPU and steal); their times are inflated.\n"
        )
    text += f"\nTotal benchmark time {time.perf_counter() - started:.0f} s.\n"
    print(text)
    results_path = args.results or (SCRATCH_RESULTS if args.quick or args.only else RESULTS)
    results_path.write_text(text)
    print(f"(saved to {results_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
