"""Weight normalization: a stored pair (g, v) stands for weight = g · v / ‖v‖.  netinit fills v as
the layer's weight (the method, with the layer's fans) and derives g = ‖v‖, so that torch's
effective weight is exactly the new v, for torch.nn.utils.weight_norm (``weight_g``/``weight_v``,
any ``dim``) and its parametrization form (``parametrizations.weight.original0/1``)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from netinit_cli import inspect
from netinit_cli.cli import cli
from netinit_cli.model import Role

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
    from torch.nn.utils import weight_norm as legacy_weight_norm


def build() -> torch.nn.ModuleDict:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.ModuleDict(
            {
                "linear": legacy_weight_norm(torch.nn.Linear(64, 32)),
                "conv": legacy_weight_norm(torch.nn.Conv1d(16, 32, 3)),
                # wav2vec2's positional convolution: grouped, normalized over dim 2
                "pos_conv": legacy_weight_norm(
                    torch.nn.Conv1d(32, 32, 7, padding=3, groups=4), name="weight", dim=2
                ),
                "proj": torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(48, 24)),
                "whole": legacy_weight_norm(torch.nn.Linear(10, 6), dim=None),  # one norm, g a scalar
            }
        )


# (module, g name, v name, dim, fan_in of the layer's weight)
PAIRS = [
    ("linear", "linear.weight_g", "linear.weight_v", 0, 64),
    ("conv", "conv.weight_g", "conv.weight_v", 0, 16 * 3),
    ("pos_conv", "pos_conv.weight_g", "pos_conv.weight_v", 2, 8 * 7),
    ("proj", "proj.parametrizations.weight.original0", "proj.parametrizations.weight.original1", 0, 48),
    ("whole", "whole.weight_g", "whole.weight_v", -1, 10),  # torch's dim -1: the whole tensor
]


# Input shapes (without the batch) that each module takes.
INPUTS = {"linear": (64,), "conv": (16, 20), "pos_conv": (32, 50), "proj": (48,), "whole": (10,)}


def run(*args: str) -> None:
    result = CliRunner().invoke(cli, [*args, "-q"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("wn")
    state = {name: value.detach().contiguous() for name, value in build().state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder / "model.safetensors", state


def test_roles_and_fans(original: tuple[Path, dict[str, torch.Tensor]]) -> None:
    entries = {e.param.name: e for e in inspect(original[0], all=True).entries}
    for _, g, v, _, fan_in in PAIRS:
        assert entries[g].param.role is Role.WEIGHT_NORM_G
        assert entries[v].param.role is Role.WEIGHT
        assert entries[v].fan_in == fan_in
        assert "weight norm" in entries[g].init and entries[g].expected_std is None


def test_all_gives_torch_an_effective_weight_equal_to_the_new_v(
    original: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    run(str(original[0]), "--all", "-o", str(out))
    state = load_file(str(out))
    model = build()
    model.load_state_dict(state, strict=True)
    for module, g_name, v_name, dim, fan_in in PAIRS:
        g, v = state[g_name], state[v_name]
        assert not torch.equal(v, original[1][v_name]), f"{v_name} was not re-initialized"
        torch.testing.assert_close(g, torch.norm_except_dim(v, 2, dim), rtol=1e-6, atol=0)
        layer = model[module]
        layer(torch.randn(2, *INPUTS[module]))  # the legacy form computes .weight in a forward hook
        torch.testing.assert_close(layer.weight.detach(), v, rtol=1e-5, atol=1e-7)
        # v is the method's weight for this layer: Kaiming normal, gain sqrt(2), the layer's fan-in.
        target = math.sqrt(2.0 / fan_in)
        tolerance = 6 / math.sqrt(2 * v.numel()) + 0.02
        assert abs(float(v.std()) / target - 1) < tolerance, (v_name, float(v.std()), target)


def test_missing_magnitude_is_the_norm_of_the_stored_direction(
    original: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, state = original
    without_g = {name: value for name, value in state.items() if name != "conv.weight_g"}
    bundle = tmp_path / "partial.safetensors"
    save_file(without_g, str(bundle), metadata={"format": "pt"})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({name: {"shape": list(v.shape), "dtype": "F32"} for name, v in state.items()})
    )
    out = tmp_path / "out.safetensors"
    run(str(bundle), "--like", str(manifest), "-o", str(out))
    filled = load_file(str(out))
    assert torch.equal(filled["conv.weight_v"], state["conv.weight_v"])  # kept
    torch.testing.assert_close(
        filled["conv.weight_g"], torch.norm_except_dim(state["conv.weight_v"], 2, 0), rtol=1e-6, atol=0
    )


def test_bf16_magnitude_is_the_norm_of_the_rounded_direction(
    original: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    bundle = tmp_path / "bf16.safetensors"
    save_file(
        {k: v.to(torch.bfloat16) for k, v in original[1].items()}, str(bundle), metadata={"format": "pt"}
    )
    out = tmp_path / "out.safetensors"
    run(str(bundle), "--all", "-o", str(out))
    state = load_file(str(out))
    for _, g_name, v_name, dim, _ in PAIRS:
        g, v = state[g_name], state[v_name]
        assert g.dtype == v.dtype == torch.bfloat16
        exact = torch.norm_except_dim(v.float(), 2, dim)
        torch.testing.assert_close(g.float(), exact, rtol=2**-8, atol=0)  # g's own rounding only


def test_rules_on_the_magnitude_are_obeyed(
    original: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    run(
        str(original[0]),
        "--all",
        "--rule",
        "linear.weight_g=keep",
        "--rule",
        "conv.weight_g=constant(2)",
        "-o",
        str(out),
    )
    state = load_file(str(out))
    assert torch.equal(state["linear.weight_g"], original[1]["linear.weight_g"])
    assert torch.equal(state["conv.weight_g"], torch.full_like(state["conv.weight_g"], 2.0))


def test_a_magnitude_whose_shape_does_not_fit_is_not_a_pair(tmp_path: Path) -> None:
    bundle = tmp_path / "odd.safetensors"
    save_file(
        {"layer.weight_g": torch.ones(3, 2), "layer.weight_v": torch.ones(3, 5)},
        str(bundle),
        metadata={"format": "pt"},
    )
    roles = {e.param.name: e.param.role for e in inspect(bundle).entries}
    assert roles["layer.weight_g"] is not Role.WEIGHT_NORM_G


def test_values_are_reproducible(original: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run(str(original[0]), "--all", "-o", str(first))
    run(str(original[0]), "--all", "-o", str(second))
    assert first.read_bytes() == second.read_bytes()
