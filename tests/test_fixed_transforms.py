"""Fixed transforms are kept by default: a weight slot whose stored values are a DFT basis, an
arange (YOLO's DFL kernel) or a constant averaging kernel is role ``fixed_transform``, kept
even under ``--all``, listed with the reason, and re-initialized only when a ``--rule`` names it.

The models are real torch exports (``torch.onnx.export(dynamo=False)``); after ``--all`` they
still run in onnxruntime and their fixed parts compute what they computed before.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from netinit_cli import initialize, inspect
from netinit_cli.classify.values import fixed_transform, structured_value_note
from netinit_cli.cli import cli
from netinit_cli.model import Layout, Role

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn

DFL_WEIGHT = "dfl.conv.weight"
STFT_BASIS = "stft.forward_basis_buffer"
N_FFT = 64


def stft_basis(n_fft: int = N_FFT, *, window: bool = True) -> np.ndarray:
    """torch.stft as a Conv1d (whisper / silero / NeMo exporters): the real and imaginary rows
    of a (Hann-windowed) DFT, ``[2 (n_fft/2 + 1), 1, n_fft]``."""
    n = np.arange(n_fft)
    angle = 2 * np.pi * np.arange(n_fft // 2 + 1)[:, None] * n / n_fft
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft) if window else np.ones(n_fft)
    return np.concatenate([np.cos(angle) * hann, -np.sin(angle) * hann])[:, None, :].astype(np.float32)


class DFL(nn.Module):  # type: ignore[misc]
    """YOLOv8's Distribution Focal Loss integral: softmax over 16 bins, expectation by a fixed
    1×1 Conv whose weight is arange(16)."""

    def __init__(self, bins: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, anchors = x.shape
        return self.conv(x.view(b, 4, self.bins, anchors).transpose(2, 1).softmax(1)).view(b, 4, anchors)


class DetectHead(nn.Module):  # type: ignore[misc]
    """Learnable convs producing 4 × 16 box logits per anchor, then the DFL; the logits are an
    output too, so the DFL's own computation can be checked."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.box = nn.Conv2d(8, 64, 1)
        self.dfl = DFL()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.box(torch.relu(self.bn(self.stem(x)))).flatten(2)
        return self.dfl(logits), logits


class STFT(nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("forward_basis_buffer", torch.from_numpy(stft_basis()))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv1d(audio, self.forward_basis_buffer, stride=N_FFT // 4)


class AudioNet(nn.Module):  # type: ignore[misc]
    """An STFT front end (the spectrogram is an output too), then learnable layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = STFT()
        self.proj = nn.Conv1d(N_FFT + 2, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.stft(audio)
        return self.fc(torch.relu(self.proj(spec)).mean(-1)), spec


def export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> Path:
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.copy_(torch.randn_like(param) * 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is "legacy"
        torch.onnx.export(
            module.eval(), (example,), str(path), dynamo=False, input_names=["x"], output_names=outputs
        )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fixed")
    return {
        "dfl": export(DetectHead(), torch.randn(1, 3, 4, 4), folder / "dfl.onnx", ["box", "logits"]),
        "stft": export(AudioNet(), torch.randn(1, 1, 512), folder / "stft.onnx", ["y", "spec"]),
    }


def stored(path: Path) -> dict[str, bytes]:
    """Every initializer's bytes, by name."""
    return {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(path)).graph.initializer}


def run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, {"x": x})]


@pytest.mark.parametrize(
    ("model", "fixed"), [("dfl", "dfl.conv.weight"), ("stft", "stft.forward_basis_buffer")]
)
def test_all_keeps_the_fixed_transform_and_fills_everything_else(
    models: dict[str, Path], model: str, fixed: str, tmp_path: Path
) -> None:
    source = models[model]
    out = tmp_path / "out.onnx"
    report = initialize(source, out, all=True, fsync=False)
    before, after = stored(source), stored(out)
    assert fixed in before  # the exporter kept the module's name
    assert after[fixed] == before[fixed]
    by_name = {entry.param.name: entry for entry in report.entries}
    assert by_name[fixed].param.role is Role.FIXED_TRANSFORM and by_name[fixed].action.value == "kept"
    assert by_name[fixed].why.startswith("fixed transform: ")
    assert by_name[fixed].why.endswith("; a --rule naming it re-initializes it")
    floats = [name for name, entry in by_name.items() if entry.param.dtype == "F32" and name != fixed]
    assert floats and all(by_name[name].action.value == "filled" for name in floats)
    # Every other float tensor really was rewritten (none of them was 0 or 1 already).
    assert all(
        after[name] != before[name]
        for name in floats
        if name.split(".")[-1] not in ("running_mean", "running_var")
    )


def test_the_dfl_head_still_runs_and_takes_the_expectation_over_its_bins(
    models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.onnx"
    initialize(models["dfl"], out, all=True, fsync=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    (box_before, logits_before), (box_after, logits_after) = run(models["dfl"], x), run(out, x)
    assert not np.allclose(logits_after, logits_before)  # the learnable layers were re-initialized
    for box, logits in ((box_before, logits_before), (box_after, logits_after)):
        bins = logits.reshape(1, 4, 16, -1)
        softmax = np.exp(bins - bins.max(axis=2, keepdims=True))
        softmax /= softmax.sum(axis=2, keepdims=True)
        expected = (softmax * np.arange(16, dtype=np.float32)[None, None, :, None]).sum(axis=2)
        np.testing.assert_allclose(box, expected, rtol=1e-5, atol=1e-5)


def test_the_stft_front_end_gives_the_same_spectrogram(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    initialize(models["stft"], out, all=True, fsync=False)
    audio = np.random.default_rng(1).standard_normal((1, 1, 512)).astype(np.float32)
    (y_before, spec_before), (y_after, spec_after) = run(models["stft"], audio), run(out, audio)
    assert np.array_equal(spec_after, spec_before)  # the fixed part: same bytes, same function
    assert not np.allclose(y_after, y_before)  # the learnable layers were re-initialized
    # And it is the STFT: numpy's rfft of Hann-windowed frames, hop n_fft/4.
    frames = np.lib.stride_tricks.sliding_window_view(audio[0, 0], N_FFT)[:: N_FFT // 4]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    spectrum = np.fft.rfft(frames * hann, axis=1).T
    np.testing.assert_allclose(spec_after[0], np.concatenate([spectrum.real, spectrum.imag]), atol=1e-4)


def test_a_rule_naming_it_reinitializes_it(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    report = initialize(models["dfl"], out, all=True, rules=[f"{DFL_WEIGHT}=xavier"], fsync=False)
    (entry,) = [e for e in report.entries if e.param.name == DFL_WEIGHT]
    assert entry.action.value == "filled" and entry.rule.startswith(f"{DFL_WEIGHT}=xavier(")
    assert entry.init.startswith("xavier") and (entry.fan_in, entry.fan_out) == (16, 1)
    assert stored(out)[DFL_WEIGHT] != stored(models["dfl"])[DFL_WEIGHT]
    # Without --all a tensor with data stays as it is, rule or not.
    plan = inspect(models["dfl"], rules=[f"{DFL_WEIGHT}=xavier"])
    (entry,) = [e for e in plan.entries if e.param.name == DFL_WEIGHT]
    assert entry.action.value == "kept" and entry.why == "has data; --all re-initializes it"


def test_json_report_and_table_list_it_with_the_reason(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, [str(models["stft"]), "--all", "-o", str(out), "--json", "--no-fsync"])
    assert result.exit_code == 0, result.output
    (entry,) = [t for t in json.loads(result.output)["tensors"] if t["name"] == STFT_BASIS]
    assert entry["role"] == "fixed_transform" and entry["action"] == "kept"
    assert entry["reason"] == "DFT basis (66 sine/cosine rows of 64 samples) in Conv input 1 (W)"
    assert entry["why"] == (
        "fixed transform: DFT basis (66 sine/cosine rows of 64 samples) in Conv input 1 (W); "
        "a --rule naming it re-initializes it"
    )
    # The buffer-like name is no longer a warning: the decision is in the table.
    assert not any(STFT_BASIS in note for note in json.loads(result.output)["notes"])
    result = CliRunner().invoke(cli, ["inspect", str(models["dfl"])], terminal_width=160)
    (row,) = [line for line in result.output.splitlines() if DFL_WEIGHT in line]
    assert "fixed_transform" in row and "kept" in row and "arange 0, 1, …, 15" in row


def test_safetensors_with_the_same_tensors_by_name(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(2)
    tensors = {
        "model.22.dfl.conv.weight": np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1),
        "model.0.conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "model.0.bn.weight": np.ones(8, np.float32),
        "encoder.conv1.weight": rng.standard_normal((16, 66, 3)).astype(np.float32),
        "encoder.stft.conv.weight": stft_basis(),
        "encoder.pool.weight": np.full((4, 1, 3, 3), 1 / 9, np.float32),  # a depthwise box filter
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    report = initialize(path, tmp_path / "out.safetensors", all=True, fsync=False)
    by_name = {entry.param.name: entry for entry in report.entries}
    fixed = {name for name, entry in by_name.items() if entry.param.role is Role.FIXED_TRANSFORM}
    assert fixed == {"model.22.dfl.conv.weight", "encoder.stft.conv.weight", "encoder.pool.weight"}
    assert by_name["encoder.pool.weight"].param.reason.startswith(
        "averaging kernel (every value 1/9) in Conv2d"
    )
    written = load_file(str(tmp_path / "out.safetensors"))
    for name, values in tensors.items():
        same = written[name].tobytes() == values.tobytes()
        assert same == (name in fixed) or name == "model.0.bn.weight", name  # norm scale: 1 again


# --- the value checks themselves -------------------------------------------------------------

CONV = Layout((1,), (0,), label="[out, in/g, k…]")
MATMUL = Layout((0,), (1,), label="[in, out]")


@pytest.mark.parametrize(
    ("values", "layout", "words"),
    [
        (np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), CONV, "arange 0, 1, …, 15"),
        (np.arange(8, dtype=np.float16).reshape(1, 8) * 0.25 - 1, CONV, "arange -1, -0.75, …, 0.75"),
        (stft_basis(), CONV, "DFT basis (66 sine/cosine rows of 64 samples)"),
        (stft_basis(window=False), CONV, "DFT basis"),
        (stft_basis(16), CONV, "DFT basis (18 sine/cosine rows of 16 samples)"),  # zero sine rows skipped
        (stft_basis()[:, 0, :].T.copy(), MATMUL, "DFT basis (64 sine/cosine rows of 66 samples)"),  # x @ W
        (
            np.full((4, 1, 3, 3), 1 / 9, np.float32),
            Layout((1,), (0,), out_divisor=4),
            "averaging kernel (every value 1/9)",
        ),
        (np.full((32, 1), 1 / 32, np.float32), MATMUL, "averaging kernel (every value 1/32)"),
    ],
)
def test_fixed_transforms_are_recognized(values: np.ndarray, layout: Layout, words: str) -> None:
    assert words in (fixed_transform(values, layout) or "")


def orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


@pytest.mark.parametrize(
    "values",
    [
        np.zeros((4, 3, 3, 3), np.float32),  # zero: a convention (zero-init), not a transform
        np.ones((8, 4, 3, 3), np.float32),  # a constant that is not 1/fan_in
        np.eye(16, dtype=np.float32),  # identity: netinit's own identity method, torch's eye_
        np.array([[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]], np.float32),  # integer-valued: only a note
        np.r_[np.arange(4096), np.ones(4096)].astype(np.float32).reshape(1, -1),  # arange only at the start
        # Smooth rows, all at one frequency: a smoothing filterbank, not a basis.
        np.repeat(np.hanning(32)[None, None, :], 8, axis=0).astype(np.float32),
        np.repeat(np.cos(2 * np.pi * 3 * np.arange(64) / 64)[None, None, :], 8, axis=0).astype(np.float32),
    ],
    ids=["zeros", "ones", "identity", "sobel", "arange-prefix", "same-window-rows", "same-tone-rows"],
)
def test_other_structured_values_are_not_fixed_transforms(values: np.ndarray) -> None:
    assert fixed_transform(values, CONV) is None


@pytest.mark.parametrize("seed", range(20))
def test_trained_looking_values_are_not_fixed_transforms(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for shape in [(16, 16), (64, 8), (8, 64), (32, 4, 3, 3), (130, 1, 64), (4, 1024), (66, 1, 64)]:
        normal = rng.standard_normal(shape).astype(np.float32) * 0.05
        uniform = rng.uniform(-0.3, 0.3, shape).astype(np.float16)
        ortho = orthogonal(shape[0], int(np.prod(shape[1:])), rng).reshape(shape).astype(np.float32)
        for values in (normal, uniform, ortho):
            assert fixed_transform(values, CONV) is None, (shape, values.dtype)
            assert structured_value_note("W", Role.WEIGHT, values) is None, (shape, values.dtype)
