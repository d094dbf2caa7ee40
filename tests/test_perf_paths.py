"""The fast paths give the same bytes as the plain ones: direct output (sampler threads writing
blocks straight into the file), spans inside chunks, any thread count; and run_parallel never
returns while a task may still write."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_builders import float_model, save
from safetensors.numpy import load_file, save_file

from netinit_cli import blas, initialize
from netinit_cli.classify.layouts import LINEAR_OUT_IN
from netinit_cli.distributions import Distribution
from netinit_cli.fill import DIRECT_MIN_BYTES, Filler, StatsSample, histogram, stats_sample
from netinit_cli.initializers import distribution_init
from netinit_cli.linalg import orthonormalize, orthonormalize_in_place
from netinit_cli.methods import parse_method
from netinit_cli.model import Action, Param, Planned, Role
from netinit_cli.roles import initializer_for
from netinit_cli.sampling import BLOCK_ELEMENTS, _fill_block, _fill_blocks, run_parallel, sample_into, spans
from netinit_cli.seeding import CHUNK_ELEMENTS, Seed

SEED = Seed(99, "explicit")
# Over two chunks and an odd tail, so spans start inside chunks and the last block is odd.
SIZE = CHUNK_ELEMENTS + 3 * 65536 + 4099

DISTRIBUTIONS = {
    "uniform": Distribution("uniform", (-0.3, 0.2)),
    "normal": Distribution("normal", (0.1, 0.5)),
    "truncated": Distribution("truncated_normal", (0.0, 1.0, -1.5, 2.0)),
    "constant": Distribution("constant", (0.25,)),
}


def _planned(dist: Distribution, dtype: str, size: int = SIZE) -> Planned:
    param = Param("block.weight", (size,), dtype, role=Role.WEIGHT)
    return Planned(param, Action.FILL, initializer=distribution_init(dist))


def _written_bytes(filler: Filler, planned: Planned, path: Path, offset: int = 24) -> bytes:
    """The bytes ``filler``'s lazy tensor for ``planned`` writes at ``offset`` of a new file."""
    tensor = filler.lazy(planned)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        tensor.write_into(fd, offset, path)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[:offset] == b"\0" * offset and len(data) == offset + tensor.nbytes
    return data[offset:]


def _in_memory_forbidden(filler: Filler) -> Filler:
    def generate(planned: Planned) -> np.ndarray:
        raise AssertionError("generated in memory, not span by span into the file")

    filler.generate = generate  # type: ignore[method-assign]
    return filler


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("dtype", ["F32", "F64", "BF16", "F16"])
@pytest.mark.parametrize("kind", list(DISTRIBUTIONS))
def test_direct_output_equals_in_memory_values(
    kind: str, dtype: str, threads: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETINIT_THREADS", "1")
    planned = _planned(DISTRIBUTIONS[kind], dtype)
    in_memory = Filler(SEED)
    expected = in_memory.lazy(planned).array()
    monkeypatch.setenv("NETINIT_THREADS", threads)
    direct = _in_memory_forbidden(Filler(SEED))
    got = _written_bytes(direct, planned, tmp_path / "out.bin")
    assert got == expected.tobytes()
    assert direct.observed == in_memory.observed


def test_small_tensors_are_generated_in_memory_then_written(tmp_path: Path) -> None:
    small = _planned(DISTRIBUTIONS["normal"], "F32", DIRECT_MIN_BYTES // 4 - 1)
    filler = Filler(SEED)
    generated: list[np.ndarray] = []
    real = filler.generate
    filler.generate = lambda planned: generated.append(real(planned)) or generated[-1]  # type: ignore[method-assign]
    got = _written_bytes(filler, small, tmp_path / "x")
    (values,) = generated
    assert values.size == small.param.numel and got == values.tobytes()


def test_stats_sample_collects_the_same_values_from_blocks_in_any_order() -> None:
    values = np.random.default_rng(3).standard_normal(SIZE).astype(np.float32)
    sample = StatsSample(values.size, values.dtype)
    cuts = [*list(range(0, SIZE, 65536)), SIZE]
    for start, stop in reversed(list(itertools.pairwise(cuts))):
        sample.take(start, values[start:stop])
    np.testing.assert_array_equal(sample.values, stats_sample(values))


@pytest.mark.parametrize("dist", [Distribution("uniform", (-0.3, 0.7)), Distribution("normal", (0.5, 2.0))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [3 * BLOCK_ELEMENTS, 2 * BLOCK_ELEMENTS + 7, BLOCK_ELEMENTS + 2, 8])
def test_blocks_in_one_pass_equal_block_by_block(dist: Distribution, dtype: type, size: int) -> None:
    """A span's full blocks computed together (rows for Box–Muller), then the partial one, give
    the bytes of one call per block on the same stream."""
    together = np.empty(size, dtype)
    _fill_blocks(dist, np.random.PCG64DXSM(7), together)
    one_by_one = np.empty(size, dtype)
    bits = np.random.PCG64DXSM(7)
    for start in range(0, size, BLOCK_ELEMENTS):
        _fill_block(dist, bits, one_by_one[start : start + BLOCK_ELEMENTS])
    assert together.tobytes() == one_by_one.tobytes()


def test_histogram_equals_numpy_including_values_on_bin_edges() -> None:
    rng = np.random.default_rng(3)
    edges = np.linspace(-0.3, 0.5, 9)
    cases = [
        rng.standard_normal(65536),
        rng.uniform(-1, 1, 65536).astype(np.float32).astype(np.float64),
        np.round(rng.uniform(0, 8, 5000) * 4) / 4,  # many values exactly on edges
        rng.choice(edges, 5000),
        rng.choice(edges + np.spacing(edges), 5000),
        1000.0 + rng.standard_normal(4000) * 1e-11,  # spread too small for the fast path
        np.array([0.0, 1.0]),
    ]
    for sample in cases:
        low, high = float(sample.min()), float(sample.max())
        expected = np.histogram(sample, bins=8, range=(low, high))[0]
        assert histogram(sample, low, high).tolist() == expected.tolist()


def test_spans_cover_the_tensor_and_never_cross_a_chunk() -> None:
    for dist in DISTRIBUTIONS.values():
        found = spans(dist, SIZE)
        assert found[0].start == 0 and found[-1].stop == SIZE
        assert all(a.stop == b.start for a, b in itertools.pairwise(found))
        assert all(s.chunk == s.start // CHUNK_ELEMENTS == (s.stop - 1) // CHUNK_ELEMENTS for s in found)
    # rejection sampling cannot skip ahead: one span per chunk
    assert len(spans(DISTRIBUTIONS["truncated"], SIZE)) == 2


@pytest.mark.parametrize("threads", ["1", "2"])
def test_sample_into_does_not_depend_on_threads(threads: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETINIT_THREADS", "1")
    reference = np.empty(SIZE, np.float32)
    sample_into(DISTRIBUTIONS["normal"], reference, SEED, "w")
    monkeypatch.setenv("NETINIT_THREADS", threads)
    again = np.empty(SIZE, np.float32)
    sample_into(DISTRIBUTIONS["normal"], again, SEED, "w")
    assert again.tobytes() == reference.tobytes()


def test_run_parallel_returns_only_after_every_task_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETINIT_THREADS", "2")
    finished: list[int] = []
    lock = threading.Lock()

    def fail() -> None:
        raise OSError("disk full")

    def slow(index: int) -> None:
        time.sleep(0.05)
        with lock:
            finished.append(index)

    tasks = [lambda: slow(0), fail, *[lambda i=i: slow(i) for i in range(1, 6)]]
    with pytest.raises(OSError, match="disk full"):
        run_parallel(tasks)
    snapshot = list(finished)
    time.sleep(0.2)
    assert finished == snapshot  # nothing ran after run_parallel returned
    assert 0 in finished


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["kaiming", "kaiming(distribution=uniform)", "orthogonal"])
def test_safetensors_output_is_identical_for_any_thread_count(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    save_file(
        {
            "a.weight": rng.standard_normal((640, 512)).astype(np.float32),  # 1.25 MiB: direct
            "a.bias": np.zeros(640, np.float32),
            "b.weight": rng.standard_normal((300, 1100)).astype(ml_dtypes.bfloat16),
            "a.norm.weight": np.zeros(512, np.float32),
        },
        str(tmp_path / "in.safetensors"),
    )
    digests = []
    for threads in ("1", "2"):
        monkeypatch.setenv("NETINIT_THREADS", threads)
        out = tmp_path / f"out{threads}.safetensors"
        initialize(str(tmp_path / "in.safetensors"), str(out), all=True, method=method)
        digests.append(_digest(out))
    assert digests[0] == digests[1]
    loaded = load_file(str(tmp_path / "out1.safetensors"))
    assert loaded["a.norm.weight"].tolist() == [1.0] * 512 and not loaded["a.bias"].any()
    # the directly written tensor is what the in-memory path gives
    if method != "orthogonal":
        param = Param("a.weight", (640, 512), "F32", role=Role.WEIGHT, layout=LINEAR_OUT_IN)
        planned = Planned(param, Action.FILL, initializer=initializer_for(param, parse_method(method)))
        assert loaded["a.weight"].tobytes() == Filler(Seed(1234, "default")).generate(planned).tobytes()


def test_onnx_external_data_written_directly_matches_the_in_memory_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = np.ones((1024, 384), np.float32)  # 1.5 MiB: goes to the data file, written directly
    matmul = helper.make_node("MatMul", ["x", "W"], ["y"])
    model = float_model(
        [matmul], {"x": [1, 1024]}, {"y": [1, 384]}, [onnx.numpy_helper.from_array(weight, "W")], opset=None
    )
    save(model, tmp_path / "m.onnx")
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("NETINIT_THREADS", threads)
        out = tmp_path / f"m{threads}.onnx"
        initialize(str(tmp_path / "m.onnx"), str(out), all=True, method="kaiming")
        loaded = onnx.load(str(out))
        results.append(onnx.numpy_helper.to_array(loaded.graph.initializer[0], base_dir=str(tmp_path)))
    assert results[0].tobytes() == results[1].tobytes()
    # Kaiming fan_in on MatMul's [in, out] weight: σ = √2/√1024; the std of n = 393,216 draws has
    # relative standard error 1/√(2n) = 0.11%, so 1% is a 9-sigma bound.
    assert results[0].shape == weight.shape
    assert abs(float(results[0].std()) / (2**0.5 / 32) - 1) < 0.01


# --- Orthogonal through float32 BLAS ---------------------------------------------------------

needs_blas = pytest.mark.skipif(not blas.AVAILABLE, reason="NumPy's OpenBLAS symbols not found")


def _numpy_q(a: np.ndarray) -> np.ndarray:
    """Reference: the sign-corrected Q of a float64 Householder QR (wide blocks via the transpose)."""
    wide = a.shape[0] < a.shape[1]
    work = (a.T if wide else a).astype(np.float64)
    q, r = np.linalg.qr(work)
    q *= np.where(np.diagonal(r) < 0, -1.0, 1.0)
    return q.T if wide else q


@needs_blas
@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (450, 500), (500, 450), (64, 64), (700, 700)])
def test_blas_orthonormalize_is_the_qr_factor_within_1e_5(shape: tuple[int, int]) -> None:
    """One pass (aspect ≤ 0.7), two passes (≤ 0.9) and the NumPy path (square) all give the
    positive-diagonal QR factor, orthonormal within 1e-5 in float32."""
    a = np.random.default_rng(5).standard_normal(shape, dtype=np.float32)
    q = orthonormalize(a)
    assert q.dtype == np.float32 and q.shape == shape
    gram = q @ q.T if shape[0] <= shape[1] else q.T @ q
    assert np.abs(gram - np.eye(min(shape))).max() < 1e-5
    assert np.abs(q - _numpy_q(a)).max() < 1e-4  # same factor, not merely some orthonormal basis


@needs_blas
def test_blas_path_is_taken_and_fallback_gives_the_same_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.random.default_rng(6).standard_normal((200, 320), dtype=np.float32)
    assert orthonormalize_in_place(a.copy())  # aspect 0.625: BLAS, one pass
    assert not orthonormalize_in_place(np.ones((4, 4), np.float32))  # aspect 1: NumPy path
    fast = orthonormalize(a)
    monkeypatch.setattr(blas, "AVAILABLE", False)
    slow = orthonormalize(a)
    assert np.abs(fast - slow).max() < 1e-4


@needs_blas
def test_singular_block_falls_back_and_leaves_input_usable() -> None:
    a = np.zeros((50, 80), np.float32)
    a[:, 0] = 1.0  # rank 1: the Gram matrix is singular
    work = a.copy()
    assert not orthonormalize_in_place(work)
    assert (work == a).all()


@needs_blas
@pytest.mark.parametrize(("rows", "cols"), [(6, 10), (9, 10), (10, 6)])
def test_blas_orthogonal_is_haar(rows: int, cols: int) -> None:
    """A Haar (uniform on the Stiefel manifold) block's first entry squared follows
    Beta(1/2, (n−1)/2), n the length of its orthonormal vectors."""
    from scipy import stats

    n = max(rows, cols)
    draws = 1500
    firsts = np.empty(draws)
    for i in range(draws):
        param = Param(f"w{i}", (rows, cols), "F32", role=Role.WEIGHT, layout=LINEAR_OUT_IN)
        out = np.empty((rows, cols), np.float32)
        initializer_for(param, parse_method("orthogonal")).fill(out, SEED, param.name)
        firsts[i] = out[0, 0]
    assert stats.kstest(firsts.astype(np.float64) ** 2, "beta", args=(0.5, (n - 1) / 2)).pvalue > 1e-4
    assert stats.binomtest(int((firsts > 0).sum()), draws).pvalue > 1e-4


def test_a_quiet_float32_run_imports_neither_rich_nor_ml_dtypes(tmp_path: Path) -> None:
    """Start-up is part of every run's wall time: Rich (about 20 ms) is imported only to draw a
    table, ml_dtypes only for a low-precision dtype."""
    import subprocess
    import sys

    model = tmp_path / "m.safetensors"
    save_file({"fc.weight": np.zeros((8, 4), np.float32), "fc.bias": np.zeros(8, np.float32)}, str(model))
    script = (
        "import sys\n"
        "from netinit_cli.cli import main\n"
        f"sys.argv = ['netinit', {str(model)!r}, '--all', '-q', '-o', {str(tmp_path / 'out.safetensors')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'ml_dtypes', 'onnx', 'tomllib'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kernel_has_sync_file_range", [True, False])
def test_early_writeback_starts_writeback_as_the_file_grows(
    kernel_has_sync_file_range: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netinit_cli import fileio

    calls: list[str] = []
    if kernel_has_sync_file_range:
        fake = lambda fd, offset, count, flags: calls.append(f"sync_file_range {flags}") or 0  # noqa: E731
    else:
        fake = None
        monkeypatch.setattr(fileio.os, "fdatasync", lambda fd: calls.append("fdatasync"))
    monkeypatch.setattr(fileio, "_sync_file_range_function", lambda: fake)
    with open(tmp_path / "out", "wb") as handle:
        writeback = fileio.EarlyWriteback(handle.fileno())
        every = fileio.WRITEBACK_BYTES if kernel_has_sync_file_range else fileio.FDATASYNC_BYTES
        writeback.wrote(every - 1)
        writeback.finish()
        assert calls == []
        writeback.wrote(1)
        writeback.finish()
    assert calls == (["sync_file_range 2"] if kernel_has_sync_file_range else ["fdatasync"])
