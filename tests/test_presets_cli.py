"""``--preset`` on the command line, in ``--config`` and in the Python API (issue 15): bad input
is one line and exit 2; an unknown family gets a note and the generic rule; seeds reproduce;
missing-only and ``--all`` agree; the report names each tensor's formula."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from netinit_cli import initialize, inspect
from netinit_cli.cli import cli
from netinit_cli.errors import UsageError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GPT2 = FIXTURES / "families" / "gpt2"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--preset", "pytorch2"],
            "netinit: error: --preset 'pytorch2': unknown preset; choose one of torch, keras, flax, hf, megatron",
        ),
        (
            ["--preset", "hf", "--method", "xavier"],
            "netinit: error: --preset hf and --method are exclusive: a preset sets every tensor's formula; "
            "use --rule 'GLOB=METHOD' for exceptions",
        ),
        (
            ["--preset", "torch", "--gain", "2"],
            "netinit: error: --gain is a --method sub-option and does not apply with --preset torch; change a "
            "preset's constants with its own options, e.g. --preset 'hf(initializer_range=0.01)'",
        ),
        (
            ["--preset", "megatron(std=-1)"],
            "netinit: error: --preset 'megatron(std=-1)': std must be a number > 0",
        ),
        (
            ["--preset", "hf(num_layer=2)"],
            "netinit: error: --preset 'hf(num_layer=2)': hf has no option 'num_layer'; it takes "
            "initializer_range, initializer_factor, num_layers, family",
        ),
        (
            ["--preset", "keras", "--fan-mode", "torch"],
            "netinit: error: --fan-mode torch does not apply with --preset keras: each preset uses its "
            "framework's own fans (the init column names them)",
        ),
    ],
)
def test_bad_preset_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    shutil.copy(FIXTURES / "mlp.onnx", tmp_path / "mlp.onnx")
    code, out, err = invoke(str(tmp_path / "mlp.onnx"), "--all", *args)
    assert (code, out, err) == (2, "", message + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"], "nothing may be written"


def test_config_takes_a_preset_but_not_with_a_method(tmp_path: Path) -> None:
    shutil.copytree(GPT2, tmp_path / "gpt2")
    config = tmp_path / "netinit.toml"
    config.write_text('preset = "hf(initializer_range=0.01)"\nall = true\n')
    report = inspect(tmp_path / "gpt2", config=config)
    assert report.to_json()["preset"] == "hf(initializer_range=0.01)"
    assert {e.init for e in report.entries if e.param.name.endswith("c_fc.weight")} == {
        "hf: normal(0, 0.01) (σ = 0.01)"
    }
    # A method on the command line replaces the file's preset (explicit arguments win).
    assert inspect(tmp_path / "gpt2", config=config, method="xavier").preset is None
    config.write_text('preset = "hf"\nmethod = "xavier"\n')
    code, out, err = invoke(str(tmp_path / "gpt2"), "--config", str(config))
    assert code == 2 and out == ""
    assert (
        err
        == f"netinit: error: --config {config}: give method or preset, not both (a preset replaces the method)\n"
    )
    config.write_text('preset = "hf"\n')
    code, _, err = invoke(str(tmp_path / "gpt2"), "--config", str(config), "--distribution", "uniform")
    assert code == 2 and err.startswith("netinit: error: --distribution is a --method sub-option")


def test_api_rejects_a_preset_with_a_method() -> None:
    with pytest.raises(UsageError, match="are exclusive"):
        inspect(GPT2, preset="hf", method="kaiming")


def test_unrecognized_family_gets_a_note_and_the_generic_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    save_file(
        {
            "blocks.0.mlp.weight": rng.standard_normal((64, 32)).astype(np.float32),
            "blocks.0.mlp.bias": rng.standard_normal(64).astype(np.float32),
            "blocks.0.norm.weight": rng.standard_normal(32).astype(np.float32),
        },
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "brand_new", "initializer_range": 0.05}))
    code, out, err = invoke(str(tmp_path / "model.safetensors"), "--preset", "hf", "--all", "--table", "full")
    assert code == 0 and err == ""
    assert (
        "note: hf: model_type 'brand_new' is not in netinit's table: the generic _init_weights rule "
        "(N(0, σ), biases 0, norms 1/0), as transformers uses for a model without its own _init_weights"
    ) in " ".join(out.split())
    report = json.loads(
        invoke(str(tmp_path / "model.safetensors"), "--preset", "hf", "--all", "-n", "--json")[1]
    )
    inits = {t["name"]: t["init"] for t in report["tensors"]}
    assert inits == {
        "blocks.0.mlp.weight": "hf: normal(0, 0.05) (σ = 0.05)",
        "blocks.0.mlp.bias": "hf: constant 0",
        "blocks.0.norm.weight": "hf: constant 1",
    }
    assert any("brand_new" in note for note in report["notes"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_identical_bytes_and_records_the_preset(tmp_path: Path) -> None:
    shutil.copytree(GPT2, tmp_path / "gpt2")
    outs = [tmp_path / f"out{i}.safetensors" for i in range(3)]
    for out, seed in zip(outs, (5, 5, 6), strict=True):
        initialize(tmp_path / "gpt2", out, preset="hf", all=True, seed=seed)
    assert _sha(outs[0]) == _sha(outs[1]) != _sha(outs[2])
    header_len = int.from_bytes(outs[0].read_bytes()[:8], "little")
    metadata = json.loads(outs[0].read_bytes()[8 : 8 + header_len])["__metadata__"]
    assert metadata["netinit.preset"] == "hf" and "netinit.method" not in metadata


def test_missing_only_and_all_give_the_same_values(tmp_path: Path) -> None:
    """A bundle lacking some tensors (created from the full one with --like) gets, for those,
    exactly what --all gives them: per-tensor streams from seed + name, one context."""
    folder = tmp_path / "partial"
    folder.mkdir()
    shutil.copy(GPT2 / "config.json", folder / "config.json")
    full = load_file(str(GPT2 / "model.safetensors"))
    missing = {"transformer.h.1.mlp.c_proj.weight", "transformer.wte.weight", "transformer.h.0.ln_1.weight"}
    save_file({k: v for k, v in full.items() if k not in missing}, str(folder / "model.safetensors"))
    filled = initialize(
        folder / "model.safetensors",
        tmp_path / "filled.safetensors",
        like=GPT2 / "model.safetensors",
        preset="hf",
        seed=11,
    )
    assert {e.param.name for e in filled.filled} == missing
    everything = initialize(GPT2, tmp_path / "all.safetensors", preset="hf", all=True, seed=11)
    assert missing < {e.param.name for e in everything.filled}
    ours, theirs = (
        load_file(str(tmp_path / "filled.safetensors")),
        load_file(str(tmp_path / "all.safetensors")),
    )
    for name in missing:
        assert ours[name].tobytes() == theirs[name].tobytes(), name
    for name in full.keys() - missing:
        assert ours[name].tobytes() == full[name].tobytes(), f"{name} must be kept byte for byte"


def test_keras_unit_forget_bias_and_orthogonal_recurrent_on_onnx(tmp_path: Path) -> None:
    """keras on an ONNX LSTM: B = [Wb, Rb] is 0 but Wb's forget block (gates i, o, f, c) is 1
    (keras rnn/lstm.py unit_forget_bias); R is orthogonal on each direction's whole [4H, H]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    hidden, inputs = 5, 3
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=hidden)],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 1, hidden])],
        [
            numpy_helper.from_array(np.full((1, 4 * hidden, n), 0.5, np.float32), name)
            for name, n in (("W", inputs), ("R", hidden))
        ]
        + [numpy_helper.from_array(np.full((1, 8 * hidden), 0.5, np.float32), "B")],
    )
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    initialize(path, tmp_path / "out.onnx", preset="keras", all=True)
    values = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer
    }
    expected_bias = np.zeros(8 * hidden, np.float32)
    expected_bias[2 * hidden : 3 * hidden] = 1.0
    np.testing.assert_array_equal(values["B"][0], expected_bias)
    recurrent = values["R"][0].astype(np.float64)  # [4H, H]: orthonormal columns
    np.testing.assert_allclose(recurrent.T @ recurrent, np.eye(hidden), atol=1e-6)


def test_methods_lists_the_presets() -> None:
    code, out, _ = invoke("methods")
    assert code == 0
    assert "Presets (--preset NAME" in out and "hf  transformers _init_weights" in out
    assert "attn/mlp c_proj N(0, σ/√(2·n_layer))" in out


def test_the_preset_option_help_names_every_preset() -> None:
    """The --preset help text is written out (importing the presets costs every run start-up
    time), so it must follow the registry."""
    from click.testing import CliRunner

    from netinit_cli.cli import cli
    from netinit_cli.presets import PRESETS

    result = CliRunner().invoke(cli, ["init", "--help"], terminal_width=400)
    assert result.exit_code == 0
    line = next(text for text in result.output.splitlines() if "--preset" in text)
    assert "|".join(PRESETS) in line
