"""``--preset`` end to end against the frameworks themselves (issue 15).

netinit writes a file through the CLI; the framework builds the same architecture several times
with different seeds.  Tensor by tensor: positions the framework sets to the same value in every
build (constants, padding rows, RMSNorm 0, gate blocks) must hold exactly that value in
netinit's output; every other position is compared with a two-sample Kolmogorov–Smirnov test,
Bonferroni-corrected over the test's comparisons (family-wise false alarm rate ALPHA).  The
formulas behind the random tensors are checked exactly from the JSON report (GPT-2 c_proj
σ/√(2·n_layer), T5's factor rules, torch's ConvTranspose bias bound from its layer's weight).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from safetensors.numpy import load_file
from scipy import stats

from netinit_cli.cli import cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn = torch.nn

FAMILIES = Path(__file__).resolve().parent.parent / "fixtures" / "families"
ALPHA = 1e-3
BUILDS = 4  # framework constructions per architecture (different seeds)


def run_cli(*args: str) -> dict[str, object]:
    """``netinit ARGS --json``: the JSON report (the run must succeed)."""
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


def entries(report: Mapping[str, object]) -> dict[str, dict[str, object]]:
    tensors = report["tensors"]
    assert isinstance(tensors, list)
    return {entry["name"]: entry for entry in tensors}


def compare(ours: Mapping[str, np.ndarray], builds: list[Mapping[str, np.ndarray]]) -> list[str]:
    """Compare every float tensor both hold; returns the names compared."""
    pvalues: list[tuple[str, float]] = []
    compared = []
    for name, value in ours.items():
        if name not in builds[0] or not np.issubdtype(builds[0][name].dtype, np.floating):
            continue
        stack = np.stack([np.asarray(b[name], np.float64) for b in builds])
        mine = np.asarray(value, np.float64)
        assert mine.shape == stack.shape[1:], name
        fixed = np.all(stack == stack[0], axis=0)
        # The framework's constants (whole tensors or rows/blocks) hold exactly in netinit's output.
        np.testing.assert_array_equal(mine[fixed], stack[0][fixed], err_msg=name)
        if (~fixed).any():
            pvalues.append((name, float(stats.ks_2samp(mine[~fixed], stack[:, ~fixed].ravel()).pvalue)))
        compared.append(name)
    threshold = ALPHA / max(len(pvalues), 1)
    failed = [f"{name}: p = {p:.2e}" for name, p in pvalues if p <= threshold]
    assert not failed, f"KS p ≤ {threshold:.1e}:\n" + "\n".join(failed)
    return compared


def framework_builds(build: Callable[[], object]) -> list[dict[str, np.ndarray]]:
    states = []
    for seed in range(BUILDS):
        torch.manual_seed(seed)
        module = build()
        states.append({k: v.detach().float().numpy().copy() for k, v in module.state_dict().items()})  # type: ignore[attr-defined]
    return states


# ---------------------------------------------------------------------------------------------
# hf: GPT-2 and T5 from the committed family fixtures, a Gemma built here.


def _tiny_gemma(folder: Path) -> Callable[[], object]:
    from safetensors.torch import save_file

    config = transformers.GemmaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=300,
        pad_token_id=0,
    )
    config.save_pretrained(folder)
    torch.manual_seed(99)
    model = transformers.AutoModel.from_config(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return lambda: transformers.AutoModel.from_config(config)


def _fixture(family: str, folder: Path) -> Callable[[], object]:
    shutil.copytree(FAMILIES / family, folder, dirs_exist_ok=True)
    config = transformers.AutoConfig.from_pretrained(folder)
    auto = {"gpt2": transformers.AutoModelForCausalLM, "t5": transformers.AutoModelForSeq2SeqLM}[family]
    return lambda: auto.from_config(config)


@pytest.mark.parametrize("family", ["gpt2", "t5", "gemma"])
def test_hf_preset_gives_what_from_config_gives(family: str, tmp_path: Path) -> None:
    folder = tmp_path / family
    folder.mkdir()
    build = _tiny_gemma(folder) if family == "gemma" else _fixture(family, folder)
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    report = run_cli(str(folder / "model.safetensors"), "--preset", "hf", "--all", "-o", str(out))
    assert report["preset"] == "hf" and report["method"] is None
    compared = compare(load_file(str(out)), framework_builds(build))
    planned = entries(report)
    assert all(planned[name]["action"] == "filled" for name in compared)
    assert len(compared) >= 20
    if family == "gpt2":  # modeling_gpt2.py: c_proj N(0, σ/√(2·n_layer)), n_layer 2
        for name in ("transformer.h.1.attn.c_proj.weight", "transformer.h.0.mlp.c_proj.weight"):
            assert planned[name]["expected_std"] == 0.02 / math.sqrt(4)
            assert planned[name]["init"] == "hf: normal(0, 0.01) scaled residual σ/√(2·2)"
        assert planned["transformer.h.0.mlp.c_fc.weight"]["expected_std"] == 0.02
    if family == "t5":  # modeling_t5.py with d_model 32, d_kv 8, d_ff 64, 4 heads, f = 1
        stds = {
            "encoder.block.0.layer.0.SelfAttention.q.weight": (32 * 8) ** -0.5,
            "encoder.block.0.layer.0.SelfAttention.k.weight": 32**-0.5,
            "decoder.block.1.layer.1.EncDecAttention.o.weight": (4 * 8) ** -0.5,
            "encoder.block.1.layer.1.DenseReluDense.wi.weight": 32**-0.5,
            "decoder.block.0.layer.2.DenseReluDense.wo.weight": 64**-0.5,
            "shared.weight": 1.0,
        }
        for name, std in stds.items():
            assert planned[name]["expected_std"] == pytest.approx(std, rel=1e-15), name
    if family == "gemma":  # RMSNorm x·(1 + w): weight 0; the padding row of embed_tokens 0
        values = load_file(str(out))
        assert not values["norm.weight"].any() and not values["layers.1.input_layernorm.weight"].any()
        assert not values["embed_tokens.weight"][0].any() and values["embed_tokens.weight"][1:].all()


# ---------------------------------------------------------------------------------------------
# torch: an ONNX export whose initializers have names that say nothing; fans from the topology.


class Stack(nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, groups=2)
        self.deconv = nn.ConvTranspose2d(8, 6, 3, groups=2)
        self.fc = nn.Linear(6 * 8 * 8, 24)
        self.lstm = nn.LSTM(24, 12)

    def forward(self, x: object) -> object:
        y = self.fc(self.deconv(self.conv(x)).flatten(1))
        out, _ = self.lstm(y.unsqueeze(0))
        return out


def _as_onnx(built: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stack's parameters as the ONNX LSTM stores them: W, R, B = [bias_ih, bias_hh] (the gate
    order differs, which leaves every distribution as it is: all U(±1/√hidden))."""
    state = dict(built)
    state["lstm.W"] = state.pop("lstm.weight_ih_l0")[None]
    state["lstm.R"] = state.pop("lstm.weight_hh_l0")[None]
    state["lstm.B"] = np.concatenate([state.pop("lstm.bias_ih_l0"), state.pop("lstm.bias_hh_l0")])[None]
    return state


def _export_with_opaque_names(path: Path) -> dict[str, str]:
    """Export Stack, rename every initializer to p0, p1, …; returns {opaque name: torch name}."""
    torch.manual_seed(0)
    module = Stack()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 4, 8, 8),), str(path), dynamo=False)
    model = onnx.load(str(path))
    lstm = next(node for node in model.graph.node if node.op_type == "LSTM")
    named = {lstm.input[1]: "lstm.W", lstm.input[2]: "lstm.R", lstm.input[3]: "lstm.B"}
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    renames = {t.name: f"p{i}" for i, t in enumerate(floats)}
    for tensor in floats:
        tensor.name = renames[tensor.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(value, value) for value in node.input]
    onnx.save(model, str(path))
    return {opaque: named.get(original, original) for original, opaque in renames.items()}


def test_torch_preset_on_an_onnx_export_matches_torch_modules(tmp_path: Path) -> None:
    source, out = tmp_path / "stack.onnx", tmp_path / "out.onnx"
    torch_names = _export_with_opaque_names(source)
    report = run_cli(str(source), "--preset", "torch", "--all", "-o", str(out))
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    ours = {torch_names[name]: value for name, value in written.items() if name in torch_names}
    compared = compare(ours, [_as_onnx(b) for b in framework_builds(Stack)])
    assert sorted(compared) == sorted(torch_names.values())
    planned = {torch_names[name]: entry for name, entry in entries(report).items() if name in torch_names}
    # torch's fans (conv.py reset_parameters): a bias takes 1/√fan_in of its layer's weight.
    # ConvTranspose2d(8, 6, groups=2) stores [8, 3, 3, 3]: fan_in = size(1)·9 = 27, not 8/2·9.
    bounds = {"conv": 2 * 9, "deconv": 3 * 9, "fc": 384}
    for layer, fan_in in bounds.items():
        for tensor in ("weight", "bias"):
            std = planned[f"{layer}.{tensor}"]["expected_std"]
            assert std == pytest.approx(1 / math.sqrt(fan_in) / math.sqrt(3), rel=1e-12), (layer, tensor)
    for tensor in ("W", "R", "B"):  # every LSTM tensor U(±1/√hidden), hidden_size 12 from the op
        assert planned[f"lstm.{tensor}"]["init"].startswith(
            "torch: uniform(±0.2887) (RNN: 1/√hidden, hidden 12)"
        )
