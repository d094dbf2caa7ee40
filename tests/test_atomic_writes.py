"""Outputs appear whole or not at all: kill -9 at random moments, disk full, read-only folders,
planted symlinks, and where external data may be written.

Decisions documented here:
* a kill -9 leaves the destination absent, old, or complete; the only leftovers are temporary
  files named ``.<output>.netinit-<pid>-<random>.tmp``; the next write to the same output
  removes those whose process is gone;
* a symlink AT the destination is refused (exit 5), even with --force; one planted after the
  last check is replaced by the new file, never written through;
* a symlinked output FOLDER is followed: the user named that folder;
* external data is written only beside the output, under the output's own name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from onnx import helper, numpy_helper
from onnx_builders import float_model, save
from safetensors.numpy import load_file, save_file

from netinit_cli import commit, fileio
from netinit_cli.cli import cli
from netinit_cli.commit import FileSet, atomic_output
from netinit_cli.errors import OutputError, OutputExistsError
from netinit_cli.fileio import remove_stale_temps

SEED = 20240611


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def netinit(*args: str, preexec: object = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netinit_cli", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,  # type: ignore[arg-type]
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("netinit: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 32 MiB safetensors checkpoint and a 16 MiB ONNX model whose output has external data."""
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.weight": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(8)}
    save_file(tensors, str(folder / "big.safetensors"))
    weights = [
        numpy_helper.from_array(rng.standard_normal((2048, 1024), dtype=np.float32), f"W{i}") for i in (1, 2)
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2"], ["y"]),
    ]
    save(float_model(nodes, {"x": ["N", 1024]}, {"y": ["N", 1024]}, weights), folder / "big.onnx")
    return {"safetensors": folder / "big.safetensors", "onnx": folder / "big.onnx"}


def output_set(out: Path) -> list[Path]:
    """The files one output consists of: an ONNX output may have a data file
    ``<stem>.<16 hex>.data`` beside it (named per write; the one its model references)."""
    if out.suffix != ".onnx" or not out.exists():
        return [out]
    try:
        model = onnx.load(str(out), load_external_data=False)
    except Exception:
        return [out]
    names = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return [out, *sorted(out.with_name(n) for n in names)]


def _is_data_file_of(name: str, out: Path) -> bool:
    import re

    return (
        re.fullmatch(re.escape(out.stem) + r"\.[0-9a-f]{16}\.data(\.netinit-.*\.tmp)?", name.lstrip("."))
        is not None
    )


def digest_set(out: Path) -> tuple[str | None, ...]:
    return tuple(sha(p) if p.exists() else None for p in output_set(out))


@pytest.fixture(scope="module")
def references(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, object]]:
    """For each format: the complete output of seed 1 (new) and of seed 2 (the "old" output),
    as file digests, and how long an uninterrupted run takes."""
    folder = tmp_path_factory.mktemp("references")
    found: dict[str, dict[str, object]] = {}
    for kind, model in models.items():
        entry: dict[str, object] = {}
        for label, seed in (("new", "1"), ("old", "2")):
            # The same file name as the tests use: an ONNX model records its data file's name.
            (folder / label).mkdir(exist_ok=True)
            out = folder / label / f"model.init.{kind}"
            started = time.perf_counter()
            done = netinit(str(model), "--all", "--seed", seed, "-o", str(out))
            assert done.returncode == 0, done.stderr
            entry[f"{label}_seconds"] = time.perf_counter() - started
            entry[label] = digest_set(out)
            entry[f"{label}_path"] = out
        found[kind] = entry
    return found


# ------------------------------------------------------------------------------------------
# kill -9 at random moments
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_kill_9_leaves_old_or_complete_output(
    kind: str, models: dict[str, Path], references: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    """Six seeded kill points per format (a dozen in all) spread over a whole run; half of the
    runs overwrite an old output with --force.  After each kill the destination is absent/old
    or byte-identical to the uninterrupted output (which loads), and only our temp files remain.
    A final uninterrupted run removes the stale temp files."""
    ref = references[kind]
    full = float(ref["new_seconds"])  # type: ignore[arg-type]
    rng = random.Random(SEED + len(kind))
    out = tmp_path / f"model.init.{kind}"
    outcomes: list[str] = []
    for attempt in range(6):
        for path in out.parent.iterdir():
            if path == out or _is_data_file_of(path.name, out):
                path.unlink(missing_ok=True)
        with_old = attempt % 2 == 1
        if with_old:
            for source in output_set(ref["old_path"]):  # type: ignore[arg-type]
                shutil.copy(source, out.parent / source.name)
        before = digest_set(out)
        delay = rng.uniform(0.05, 1.1) * full
        args = [str(models[kind]), "--all", "--seed", "1", "-o", str(out), *(["--force"] if with_old else [])]
        proc = subprocess.Popen([sys.executable, "-m", "netinit_cli", *args, "--quiet"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = digest_set(out)
        if after == ref["new"]:
            outcomes.append("complete")
            if kind == "onnx":
                onnx.checker.check_model(str(out))
            else:
                assert len(load_file(str(out))) == 8
        else:
            assert after == before, f"kill at {delay:.2f} s left a torn output: {after} (old {before})"
            outcomes.append("old" if with_old else "absent")
        leftovers = {p.name for p in tmp_path.iterdir()} - {p.name for p in output_set(out)}
        stray = [name for name in leftovers if not name.startswith(f".{out.name}.netinit-")]
        stray = [
            name for name in stray if not _is_data_file_of(name, out)
        ]  # temps, or data a kill between renames left
        assert stray == [], f"unexpected files after a kill: {stray}"
    assert "complete" in outcomes or any(o != "complete" for o in outcomes)
    done = netinit(*[str(models[kind]), "--all", "--seed", "1", "-o", str(out), "--force"])
    assert done.returncode == 0, done.stderr
    assert temps(tmp_path) == [], "the next write removes temp files of killed writers"
    assert digest_set(out) == ref["new"]


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(finished.stdout)
    dead = tmp_path / f".m.safetensors.netinit-{dead_pid}-abc.tmp"
    mine = tmp_path / f".m.safetensors.netinit-{os.getpid()}-abc.tmp"
    other_output = tmp_path / f".other.safetensors.netinit-{dead_pid}-abc.tmp"
    user_file = tmp_path / ".m.safetensors.backup.tmp"
    for path in (dead, mine, other_output, user_file):
        path.write_bytes(b"x")
    assert remove_stale_temps(out) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, other_output, user_file)
    )


# ------------------------------------------------------------------------------------------
# A failed commit of several files leaves the old output; a kill between renames cannot tear it
# ------------------------------------------------------------------------------------------
def test_failed_commit_keeps_every_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new member goes in under a fresh name; when the primary's rename fails, it is removed
    again and the old primary still names its own, untouched member."""
    data, model = tmp_path / "m.data", tmp_path / "m.onnx"
    data.write_bytes(b"old data")
    model.write_bytes(b"old model")
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == model:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(commit.os, "replace", failing_replace)
    with (
        pytest.raises(OutputError, match=r"m\.onnx: write failed: No space left on device"),
        FileSet(model, overwrite=True) as files,
    ):
        files.member(lambda k: "m.data" if k == 0 else f"m.{k}.data").write(b"new data")
        files.commit(lambda names: f"new model naming {names}".encode())
    assert data.read_bytes() == b"old data" and model.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.data", "m.onnx"]


KILL_BETWEEN_RENAMES = """
import os, sys
real = os.replace
count = [0]
def replace(src, dst):
    real(src, dst)
    count[0] += 1
    if count[0] == 1:
        os._exit(137)  # power loss right after the first rename of the set
os.replace = replace
sys.argv = ["netinit", *sys.argv[1:]]
from netinit_cli.cli import main
main()
"""


def test_crash_between_renames_keeps_a_consistent_onnx_output(
    models: dict[str, Path], references: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    out = tmp_path / "model.init.onnx"
    for source in output_set(references["onnx"]["old_path"]):  # type: ignore[arg-type]
        shutil.copy(source, out.parent / source.name)
    args = [str(models["onnx"]), "--all", "--seed", "1", "-o", str(out), "--force", "--quiet"]
    subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, *args], check=False, timeout=120)
    assert digest_set(out) in (references["onnx"]["old"], references["onnx"]["new"])


# ------------------------------------------------------------------------------------------
# Disk full and read-only folders
# ------------------------------------------------------------------------------------------
def file_size_limit(limit: int) -> object:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
@pytest.mark.parametrize("limit", [0, 4096, 5 << 20])
def test_disk_full_is_one_clean_line(
    kind: str, limit: int, models: dict[str, Path], references: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes every write past ``limit`` bytes fail with EFBIG, as a full disk would
    (ENOSPC): exit 5, one line, the old output untouched, no temporary file left."""
    out = tmp_path / f"model.init.{kind}"
    for source in output_set(references[kind]["old_path"]):  # type: ignore[arg-type]
        shutil.copy(source, out.parent / source.name)
    before = digest_set(out)
    done = netinit(str(models[kind]), "--all", "-o", str(out), "--force", preexec=file_size_limit(limit))
    assert done.returncode == 5, done.stderr
    assert "write failed: File too large" in one_error_line(done.stderr)
    assert digest_set(out) == before
    assert temps(tmp_path) == []


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_full_tmpfs_is_one_clean_line(kind: str, models: dict[str, Path], tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "size=1m") as small:
        done = netinit(str(models[kind]), "--all", "-o", str(small / f"m.{kind}"))
        assert done.returncode == 5, done.stderr
        assert "No space left on device" in one_error_line(done.stderr)
        assert sorted(os.listdir(small)) == []


def test_read_only_tmpfs_is_one_clean_line(models: dict[str, Path], tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        done = netinit(str(models["safetensors"]), "--all", "-o", str(read_only / "m.safetensors"))
        assert done.returncode == 5, done.stderr
        assert "Read-only file system" in one_error_line(done.stderr)


def test_folder_nobody_may_write_is_one_clean_line(models: dict[str, Path], tmp_path: Path) -> None:
    """Root ignores file modes, so as root this uses /sys (creating files there is refused even
    for root); otherwise a folder with mode 0555."""
    if os.geteuid() == 0:
        folder = Path("/sys")
        if os.access(folder, os.W_OK) and not folder.is_dir():
            pytest.skip("/sys is not available")
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
    done = netinit(str(models["safetensors"]), "--all", "-o", str(folder / "m.init.safetensors"))
    assert done.returncode == 5, done.stderr
    assert "cannot create a file in" in one_error_line(done.stderr)
    assert not (folder / "m.init.safetensors").exists()


# ------------------------------------------------------------------------------------------
# Symlinks at the destination, symlinked folders, where external data goes
# ------------------------------------------------------------------------------------------
def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    return result.exit_code, result.stderr


@pytest.mark.parametrize("force", [False, True])
def test_planted_symlink_at_destination_is_refused(tmp_path: Path, force: bool) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    link = tmp_path / "out.onnx"
    link.symlink_to(victim)
    code, stderr = invoke(
        str(FIXTURES / "mlp.onnx"), "--all", "-o", str(link), *(["--force"] if force else [])
    )
    assert code == 5
    assert "symbolic link" in one_error_line(stderr)
    assert victim.read_bytes() == b"precious" and link.is_symlink()
    assert temps(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlink_planted_after_the_last_check_is_replaced_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """The race: the link appears between the final check and the rename.  rename() replaces
    the folder entry, so the link's target is never written; without --force the rename
    itself refuses the link (RENAME_NOREPLACE)."""
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    out = tmp_path / "report.json"
    real_check = commit.check_destination
    checks = []

    def check_then_plant(path: Path, **kw: Any) -> Any:
        found = real_check(path, **kw)
        checks.append(path)
        if len(checks) == (3 if overwrite else 2):  # the last check before the rename
            path.symlink_to(victim)
        return found

    monkeypatch.setattr(commit, "check_destination", check_then_plant)
    with (
        pytest.raises(OutputExistsError) if not overwrite else contextlib.nullcontext(),
        atomic_output(out, overwrite=overwrite) as handle,
    ):
        handle.write(b"new content")
    assert victim.read_bytes() == b"precious"
    if overwrite:
        assert not out.is_symlink() and out.read_bytes() == b"new content"
    else:
        assert out.is_symlink()
    assert temps(tmp_path) == []


def test_symlink_planted_during_the_write_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    out = tmp_path / "m.data"
    with pytest.raises(OutputError, match="symbolic link"), FileSet(out, overwrite=True) as files:
        files.open_primary().write(b"new")
        out.symlink_to(victim)
        files.commit()
    assert victim.read_bytes() == b"precious" and out.is_symlink()
    assert temps(tmp_path) == []


def test_symlinked_output_folder_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(tmp_path / "via" / "m.onnx"))
    assert code == 0, stderr
    assert (real / "m.onnx").is_file() and not (real / "m.onnx").is_symlink()


def test_external_data_is_written_only_beside_the_output(models: dict[str, Path], tmp_path: Path) -> None:
    inputs_before = {p.name: sha(p) for p in models["onnx"].parent.iterdir() if p.is_file()}
    out = tmp_path / "deep" / "x.onnx"
    out.parent.mkdir()
    code, stderr = invoke(str(models["onnx"]), "--all", "-o", str(out))
    assert code == 0, stderr
    (data_name,) = [p.name for p in out.parent.iterdir() if p.name != "x.onnx"]
    assert _is_data_file_of(data_name, out) and not data_name.startswith(".")
    assert [p.name for p in tmp_path.iterdir()] == ["deep"]
    assert {p.name: sha(p) for p in models["onnx"].parent.iterdir() if p.is_file()} == inputs_before
    model = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {data_name}


def test_failing_output_check_never_destroys_an_existing_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Since the input is checked on load this needs a netinit bug to happen; simulate one by
    making the check of the written file fail."""
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    real_check = onnx.checker.check_model

    def output_fails(model: object, *args: object, **kw: object) -> None:
        if isinstance(model, onnx.ModelProto) and any(p.key == "netinit.seed" for p in model.metadata_props):
            raise onnx.checker.ValidationError("simulated netinit bug")
        real_check(model, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx.checker, "check_model", output_fails)
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(out), "--force")
    assert code == 5 and one_error_line(stderr)
    assert out.read_bytes() == b"previous output"


def test_report_json_goes_through_the_same_atomic_path(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    code, stderr = invoke(
        str(FIXTURES / "mlp.onnx"), "--all", "-o", str(tmp_path / "m.onnx"), "--report", str(report)
    )
    assert code == 0, stderr
    assert json.loads(report.read_text())["files"] == [str(tmp_path / "m.onnx")]
    assert temps(tmp_path) == []


# ------------------------------------------------------------------------------------------
# preallocation
# ------------------------------------------------------------------------------------------
def test_preallocate_allocates_the_blocks_it_is_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fileio._fallocate(fd, 0, 0) == errno.ENOSYS:
            pytest.skip("no fallocate(2) here")
        fileio.preallocate(fd, 4096, 8 << 20, path)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if info.st_size == 0:
        pytest.skip("this filesystem cannot preallocate")
    assert info.st_size == 4096 + (8 << 20)
    assert info.st_blocks * 512 >= 8 << 20


@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_output_is_the_same_where_the_filesystem_cannot_preallocate(
    kind: str,
    models: dict[str, Path],
    references: dict[str, dict[str, object]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []

    def unsupported(fd: int, offset: int, length: int) -> int:
        calls.append((offset, length))
        return errno.EOPNOTSUPP

    monkeypatch.setattr(fileio, "_fallocate", unsupported)
    out = tmp_path / "new" / f"model.init.{kind}"
    out.parent.mkdir()
    result = CliRunner().invoke(cli, [str(models[kind]), "--all", "--seed", "1", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert calls, "the writer did not ask to preallocate"
    assert digest_set(out) == references[kind]["new"]


@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_full_disk_at_preallocation_is_one_clean_line_before_anything_is_generated(
    kind: str, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netinit_cli import fill

    monkeypatch.setattr(fileio, "_fallocate", lambda fd, offset, length: errno.ENOSPC)
    produced: list[str] = []
    for method in ("generate", "generate_into"):
        real = getattr(fill.Filler, method)

        def spy(self: fill.Filler, planned: Any, *args: Any, real: Any = real) -> Any:
            produced.append(planned.param.name)
            return real(self, planned, *args)

        monkeypatch.setattr(fill.Filler, method, spy)
    out = tmp_path / f"model.init.{kind}"
    result = CliRunner().invoke(cli, [str(models[kind]), "--all", "-o", str(out), "-q"])
    assert result.exit_code == 5, result.output
    assert "write failed: No space left on device (free some space or choose another -o)" in result.output
    assert produced == [], "tensors were generated before the full disk was reported"
    assert os.listdir(tmp_path) == []
