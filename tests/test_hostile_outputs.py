"""The output side of issue 13's hostile test: multi-file commits killed at every step, one
destination policy for ``-o``, ``--report``, data files, shards and the index, concurrent
writers, device nodes, permissions and folders as outputs.

Decisions documented here:
* a kill before any rename, rename or removal of a multi-file commit (``NETINIT_KILL_AT_STEP``)
  leaves a reader the complete old or the complete new checkpoint; the next run to the same
  output removes what the killed one left (its journal lists it) and ends with exactly the
  files its index or model names;
* shards and data files are only ever created, under names no file has (``model.init-…``, or
  ``model.init.1-…`` when those are taken); only the index or model is replaced;
* ``-o FOLDER`` or ``-o FOLDER/`` writes FOLDER/<default name>; a missing FOLDER/ is exit 5;
* ``--report FILE`` is a destination like ``-o``: never an input or the output, an existing file
  only with ``--force``, never a device;
* devices, FIFOs and sockets are never replaced (exit 5, with or without ``--force``);
* a replaced file keeps its mode, owner and group.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from netinit_cli.cli import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SHARDED = FIXTURES / "families" / "llama-sharded"
INDEX = "model.safetensors.index.json"
CMD = (sys.executable, "-m", "netinit_cli")


def netinit(*args: str, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("NETINIT_KILL_AT_STEP", None)
    if kill_at is not None:
        env["NETINIT_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run(
        [sys.executable, "-m", "netinit_cli", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    return result.exit_code, result.stderr


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("netinit: error: "), stderr
    return lines[0]


# ------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------
def read_bundle(index: Path) -> dict[str, bytes]:
    """What a transformers-style reader sees: the index's weight_map, each tensor from the shard
    it names (safetensors' own loader), checked against every shard's header."""
    weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    seen: dict[str, bytes] = {}
    for shard in sorted(set(weight_map.values())):
        loaded = load_file(str(index.parent / shard))
        with safe_open(str(index.parent / shard), "np") as handle:
            assert set(handle.keys()) == set(loaded)
        for name, values in loaded.items():
            assert weight_map.get(name) == shard, (
                f"{name} is in {shard}, the index says {weight_map.get(name)}"
            )
            seen[name] = f"{values.dtype}{values.shape}".encode() + values.tobytes()
    assert set(seen) == set(weight_map)
    return seen


def read_onnx(model: Path) -> dict[str, bytes]:
    """onnx.load with its external data, and one onnxruntime run."""
    ort = pytest.importorskip("onnxruntime")
    loaded = onnx.load(str(model))
    values = {t.name: numpy_helper.to_array(t).tobytes() for t in loaded.graph.initializer}
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.ones((1, 512), np.float32)
    values["<run>"] = session.run(None, {"x": x})[0].tobytes()
    return values


def named_files(primary: Path) -> set[str]:
    """The primary and the files it names."""
    if primary.name.endswith(".json"):
        return {primary.name, *json.loads(primary.read_text())["weight_map"].values()}
    if primary.suffix == ".safetensors":
        return {primary.name}
    model = onnx.load(str(primary), load_external_data=False)
    return {
        primary.name,
        *(e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"),
    }


def make_onnx(path: Path, seed: int = 0) -> Path:
    """A model whose output keeps a 2 MiB weight in a data file."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((512, 1024), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ------------------------------------------------------------------------------------------
# items 1 and 15: kills at every step of a multi-file commit
# ------------------------------------------------------------------------------------------
def _setup(kind: str, mode: str, root: Path) -> tuple[Path, list[str], Path]:
    """An old netinit output (seed 2) in root/out, the arguments of the run that replaces it
    (seed 1, ``--force`` over it or ``--in-place``), and its primary file."""
    source = root / "src"
    if kind == "safetensors":
        shutil.copytree(SHARDED, source)
        model, name = source / INDEX, "model.init.safetensors.index.json"
    else:
        source.mkdir()
        model, name = make_onnx(source / "m.onnx"), "m.init.onnx"
    (root / "out").mkdir()
    primary = root / "out" / name
    done = netinit(str(model), "--all", "--seed", "2", "-o", str(primary))
    assert done.returncode == 0, done.stderr
    if mode == "in-place":
        return primary, [str(primary), "--all", "--seed", "1", "--in-place"], primary
    return primary, [str(model), "--all", "--seed", "1", "-o", str(primary), "--force"], primary


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "steps"), [("safetensors", 7), ("onnx", 3)])
@pytest.mark.parametrize("mode", ["force", "in-place"])
def test_a_kill_at_every_step_of_a_commit_leaves_old_or_new(
    kind: str, steps: int, mode: str, tmp_path: Path
) -> None:
    """Safetensors: 3 shard renames, the index, 3 removals of the old shards; ONNX: the data
    file, the model, the old data file.  After the kill before step N, a reader sees the whole
    old or the whole new checkpoint; the re-run succeeds and leaves exactly its own files."""
    read = read_bundle if kind == "safetensors" else read_onnx
    reference = tmp_path / "reference"
    reference.mkdir()
    primary, args, _ = _setup(kind, mode, reference)
    old = read(primary)
    assert netinit(*args).returncode == 0
    new = read(primary)
    assert new != old
    outcomes = []
    for step in range(1, steps + 2):
        root = tmp_path / f"kill-{step}"
        root.mkdir()
        primary, args, _ = _setup(kind, mode, root)
        killed = netinit(*args, kill_at=step)
        if step > steps:
            assert killed.returncode == 0, killed.stderr  # no step left to kill at
            break
        assert killed.returncode == -9, f"no kill at step {step}: {killed.returncode} {killed.stderr}"
        seen = read(primary)
        assert seen in (old, new), f"a kill at step {step} tore the checkpoint"
        outcomes.append("new" if seen == new else "old")
        rerun = netinit(*args)
        assert rerun.returncode == 0, rerun.stderr
        assert read(primary) == new
        assert set(os.listdir(primary.parent)) == named_files(primary), f"leftovers after step {step}"
    members = steps // 2 if kind == "safetensors" else 1
    assert outcomes == ["old"] * (members + 1) + ["new"] * (steps - members - 1)


def test_a_rewrite_never_reuses_a_name_the_old_index_uses(tmp_path: Path) -> None:
    """Item 1 without fault injection: the shards of a rewrite with other options get names the
    old index does not use, so renaming them changes nothing an old reader sees."""
    primary, args, _ = _setup("safetensors", "force", tmp_path)
    old_names = named_files(primary) - {primary.name}
    assert netinit(*args).returncode == 0
    new_names = named_files(primary) - {primary.name}
    assert old_names.isdisjoint(new_names)
    assert set(os.listdir(primary.parent)) == named_files(primary)


def test_identical_runs_give_identical_files(tmp_path: Path) -> None:
    """Names are no random tag: the same input and options give the same files, byte for byte."""
    outputs = []
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        done = netinit(str(SHARDED / INDEX), "--all", "--seed", "5", "-o", str(tmp_path / label) + "/")
        assert done.returncode == 0, done.stderr
        outputs.append({p.name: sha(p) for p in (tmp_path / label).iterdir()})
    assert outputs[0] == outputs[1]
    assert "model.init-00001-of-00003.safetensors" in outputs[0]
    # Rerun over its own output: the shards already hold these bytes, so they are kept.
    done = netinit(str(SHARDED / INDEX), "--all", "--seed", "5", "-o", str(tmp_path / "a") + "/", "--force")
    assert done.returncode == 0, done.stderr
    assert {p.name: sha(p) for p in (tmp_path / "a").iterdir()} == outputs[0]


def test_onnx_in_place_does_not_leak_data_files(tmp_path: Path) -> None:
    """Item 15: three --in-place runs leave the model and the one data file it uses."""
    model = make_onnx(tmp_path / "src.onnx")
    out = tmp_path / "out"
    out.mkdir()
    assert netinit(str(model), "--all", "-o", str(out / "m.onnx")).returncode == 0
    for seed in ("1", "2", "3"):
        done = netinit(str(out / "m.onnx"), "--all", "--seed", seed, "--in-place")
        assert done.returncode == 0, done.stderr
        assert set(os.listdir(out)) == named_files(out / "m.onnx")
        assert len(os.listdir(out)) == 2


def test_in_place_keeps_files_netinit_did_not_write(tmp_path: Path) -> None:
    """The replaced index's shards go only if netinit wrote them: another tool's may be shared."""
    bundle = tmp_path / "bundle"
    shutil.copytree(SHARDED, bundle)
    originals = {p.name: sha(p) for p in bundle.iterdir()}
    done = netinit(str(bundle / INDEX), "--all", "--in-place")
    assert done.returncode == 0, done.stderr
    after = set(os.listdir(bundle))
    assert {name for name in originals if name != INDEX} <= after
    assert {name: sha(bundle / name) for name in originals if name != INDEX} == {
        name: digest for name, digest in originals.items() if name != INDEX
    }
    assert named_files(bundle / INDEX) - {INDEX} == after - set(originals)


@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_concurrent_force_writers_leave_one_whole_output(kind: str, tmp_path: Path) -> None:
    """Item 15: writers of one output with --force commit one after the other; whoever is last,
    nothing is orphaned."""
    source = tmp_path / "src"
    if kind == "safetensors":
        shutil.copytree(SHARDED, source)
        model, out = source / INDEX, tmp_path / "out" / "m.safetensors.index.json"
    else:
        source.mkdir()
        model, out = make_onnx(source / "m.onnx"), tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    for _ in range(3):
        procs = [
            subprocess.Popen(
                [*CMD, str(model), "--all", "--seed", seed, "-o", str(out), "--force", "-q"],
                stderr=subprocess.PIPE,
            )
            for seed in ("1", "2", "3")
        ]
        assert [proc.wait(timeout=300) for proc in procs] == [0, 0, 0]
        assert set(os.listdir(out.parent)) == named_files(out)
        (read_bundle if kind == "safetensors" else read_onnx)(out)


# ------------------------------------------------------------------------------------------
# item 11: no-overwrite at the rename itself
# ------------------------------------------------------------------------------------------
def test_a_destination_made_after_the_last_check_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer (one that takes no lock) creates the output between netinit's last check
    and its rename: without --force netinit exits 4 and the other's file stays."""
    from netinit_cli import commit

    out = tmp_path / "m.safetensors"
    real_check = commit.check_destination
    calls: list[Path] = []

    def check_then_race(path: Path, **kw: Any) -> Any:
        found = real_check(path, **kw)
        calls.append(path)
        if path == out and len(calls) == 2:  # the check under the commit's lock
            out.write_bytes(b"the other writer's output")
        return found

    monkeypatch.setattr(commit, "check_destination", check_then_race)
    code, stderr = invoke(str(FIXTURES / "mlp.safetensors"), "--all", "-o", str(out))
    assert code == 4, stderr
    assert "another writer made it meanwhile" in one_line(stderr)
    assert out.read_bytes() == b"the other writer's output"
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


@pytest.mark.parametrize("kind", ["safetensors", "onnx"])
def test_two_writers_without_force_one_wins(kind: str, tmp_path: Path) -> None:
    model = FIXTURES / "mlp.safetensors" if kind == "safetensors" else make_onnx(tmp_path / "in.onnx")
    for attempt in range(4):
        out = tmp_path / f"race{attempt}" / f"m.{kind}"
        out.parent.mkdir()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "netinit_cli",
                    str(model),
                    "--all",
                    "--seed",
                    seed,
                    "-o",
                    str(out),
                    "-q",
                ],
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in ("1", "2")
        ]
        codes = sorted(proc.wait(timeout=300) for proc in procs)
        assert codes == [0, 4], [proc.stderr.read() for proc in procs if proc.stderr]
        assert set(os.listdir(out.parent)) == (named_files(out) if kind == "onnx" else {out.name})


# ------------------------------------------------------------------------------------------
# item 12: an output shard is never an input shard
# ------------------------------------------------------------------------------------------
def test_output_shards_never_replace_input_shards(tmp_path: Path) -> None:
    """``-o model.json`` beside ``model.safetensors.index.json`` maps shard ``model-00001-…`` to
    the same name; the input's shards must survive and the output still load."""
    bundle = tmp_path / "bundle"
    shutil.copytree(SHARDED, bundle)
    before = {p.name: sha(p) for p in bundle.iterdir()}
    old = read_bundle(bundle / INDEX)
    (bundle / "model.json").write_text("{}")  # an existing output, so --force is needed
    done = netinit(str(bundle / INDEX), "--all", "-o", str(bundle / "model.json"), "--force")
    assert done.returncode == 0, done.stderr
    assert {name: sha(bundle / name) for name in before} == before
    assert read_bundle(bundle / INDEX) == old
    new = read_bundle(bundle / "model.json")
    assert set(new) == set(old) and new != old


def test_output_that_is_an_input_shard_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(SHARDED, bundle)
    shard = bundle / "model-00002-of-00003.safetensors"
    before = sha(shard)
    code, stderr = invoke(str(bundle / INDEX), "--all", "-o", str(shard), "--force")
    assert code == 2, stderr
    assert "is one of the input files" in one_line(stderr)
    assert sha(shard) == before


# ------------------------------------------------------------------------------------------
# item 3: --report FILE follows the destination policy
# ------------------------------------------------------------------------------------------
def test_report_never_overwrites_the_input(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    shutil.copy(FIXTURES / "mlp.onnx", model)
    before = sha(model)
    code, stderr = invoke(
        str(model), "--all", "-o", str(tmp_path / "o.onnx"), "--report", str(model), "--force"
    )
    assert code == 2 and "--report" in one_line(stderr) and "input" in stderr
    assert sha(model) == before
    assert not (tmp_path / "o.onnx").exists(), "refused before anything was written"


def test_report_never_overwrites_the_output(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(out), "--report", str(out))
    assert code == 2 and "is the output itself" in one_line(stderr)
    assert not out.exists()


def test_report_over_an_existing_file_needs_force(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text("keep me")
    out = tmp_path / "o.onnx"
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(out), "--report", str(report))
    assert code == 4 and "--report to choose another path" in one_line(stderr)
    assert report.read_text() == "keep me" and not out.exists()
    code, stderr = invoke(
        str(FIXTURES / "mlp.onnx"), "--all", "-o", str(out), "--report", str(report), "--force"
    )
    assert code == 0, stderr
    assert json.loads(report.read_text())["files"] == [str(out)]
    code, stderr = invoke("inspect", str(FIXTURES / "mlp.onnx"), "--report", str(report))
    assert code == 4 and "already exists" in one_line(stderr)
    code, stderr = invoke("inspect", str(FIXTURES / "mlp.onnx"), "--report", str(report), "--force")
    assert code == 0 and json.loads(report.read_text())["dry_run"] is True


def test_report_never_overwrites_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('method = "xavier"\n')
    code, stderr = invoke(
        str(FIXTURES / "mlp.onnx"), "--all", "-o", str(tmp_path / "o.onnx"), "--config", str(config)
    )
    assert code == 0, stderr
    code, stderr = invoke(
        str(FIXTURES / "mlp.onnx"),
        "-o",
        str(tmp_path / "p.onnx"),
        "--config",
        str(config),
        "--report",
        str(config),
    )
    assert code == 2 and "input" in one_line(stderr)
    assert config.read_text() == 'method = "xavier"\n'


# ------------------------------------------------------------------------------------------
# item 4: devices, FIFOs and sockets are never replaced
# ------------------------------------------------------------------------------------------
def _char_device(path: Path) -> Path:
    """A private /dev/null (same major/minor), so a failure breaks nothing on this machine."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("option", ["-o", "--report"])
def test_device_nodes_are_never_replaced(tmp_path: Path, force: bool, option: str) -> None:
    node = _char_device(tmp_path / "null")
    args = [str(FIXTURES / "mlp.onnx"), "--all"]
    args += ["-o", str(node)] if option == "-o" else ["-o", str(tmp_path / "o.onnx"), "--report", str(node)]
    code, stderr = invoke(*args, *(["--force"] if force else []))
    assert code == 5, stderr
    assert f"{node} is a character device" in one_line(stderr) and "already exists" not in stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_fifos_and_sockets_are_never_replaced(tmp_path: Path, kind: str) -> None:
    import socket

    path = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    code, stderr = invoke(str(FIXTURES / "mlp.safetensors"), "--all", "-o", str(path), "--force")
    assert code == 5, stderr
    assert ("a FIFO" if kind == "fifo" else "a socket") in one_line(stderr)
    assert (stat.S_ISFIFO if kind == "fifo" else stat.S_ISSOCK)(os.lstat(path).st_mode)


# ------------------------------------------------------------------------------------------
# item 5: a replaced file keeps its mode, owner and group
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["safetensors", "onnx", "sharded"])
def test_in_place_keeps_mode_and_owner(tmp_path: Path, kind: str) -> None:
    if kind == "sharded":
        shutil.copytree(SHARDED, tmp_path / "b")
        model = tmp_path / "b" / INDEX
    elif kind == "onnx":
        model = make_onnx(tmp_path / "m.onnx")
    else:
        model = tmp_path / "m.safetensors"
        shutil.copy(FIXTURES / "mlp.safetensors", model)
    os.chmod(model, 0o600)
    if os.geteuid() == 0:
        os.chown(model, 1234, 4321)
    done = netinit(str(model), "--all", "--in-place")
    assert done.returncode == 0, done.stderr
    for name in named_files(model):
        info = os.stat(model.parent / name)
        assert stat.S_IMODE(info.st_mode) == 0o600, name
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid) == (1234, 4321), name


def test_force_keeps_the_mode_of_the_replaced_output(tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    code, stderr = invoke(str(FIXTURES / "mlp.safetensors"), "--all", "-o", str(out), "--force")
    assert code == 0, stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    fresh = tmp_path / "new.safetensors"
    code, stderr = invoke(str(FIXTURES / "mlp.safetensors"), "--all", "-o", str(fresh))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644 & ~mask


# ------------------------------------------------------------------------------------------
# item 18: folders as outputs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slash", ["", "/"])
def test_an_existing_folder_means_inside_it_under_the_default_name(tmp_path: Path, slash: str) -> None:
    folder = tmp_path / "outdir"
    folder.mkdir()
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(folder) + slash)
    assert code == 0, stderr
    assert os.listdir(folder) == ["mlp.init.onnx"]
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(folder) + slash)
    assert code == 4 and "--force" in one_line(stderr)
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(folder) + slash, "--force")
    assert code == 0, stderr


def test_a_trailing_slash_names_a_folder_that_must_exist(tmp_path: Path) -> None:
    code, stderr = invoke(str(FIXTURES / "mlp.onnx"), "--all", "-o", str(tmp_path / "newdir") + "/")
    assert code == 5
    assert "the folder does not exist; create it first" in one_line(stderr)
    assert os.listdir(tmp_path) == []


def test_a_report_folder_is_a_usage_error(tmp_path: Path) -> None:
    code, stderr = invoke(
        str(FIXTURES / "mlp.onnx"), "--all", "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path) + "/"
    )
    assert code == 2 and "is a folder" in one_line(stderr)
    assert os.listdir(tmp_path) == []


def test_a_folder_in_the_way_of_a_data_file_name_is_skipped(tmp_path: Path) -> None:
    """A member name that is taken by anything, even a folder, is not used."""
    model = make_onnx(tmp_path / "in.onnx")
    out = tmp_path / "out"
    out.mkdir()
    assert netinit(str(model), "--all", "-o", str(out / "m.onnx")).returncode == 0
    (data_name,) = named_files(out / "m.onnx") - {"m.onnx"}
    shutil.rmtree(out)
    out.mkdir()
    (out / data_name).mkdir()
    done = netinit(str(model), "--all", "-o", str(out / "m.onnx"))
    assert done.returncode == 0, done.stderr
    assert (out / data_name).is_dir() and len(named_files(out / "m.onnx")) == 2
    read_onnx(out / "m.onnx")


def test_save_file_round_trip_unaffected(tmp_path: Path) -> None:
    """A single-file safetensors output is one file: nothing else appears beside it."""
    model = tmp_path / "in.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(model))
    code, stderr = invoke(str(model), "--all", "-o", str(tmp_path / "out.safetensors"))
    assert code == 0, stderr
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "out.safetensors"]
