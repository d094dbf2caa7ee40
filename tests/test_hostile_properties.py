"""Properties of the command line over hostile values (issue 13): option strings (method specs,
distributions, rules, gains), config files, seeds, tensor names and spec expressions.

Whatever hypothesis draws, the command never exits 1 (an internal error), never hangs (each
example has a time limit), never writes a non-finite value, and never prints an escape byte or
any other control character but the newline, on stdout or on stderr.  A failure is one
``netinit: error:`` line.  The CLI runs in-process (click's runner) on a small model.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import hostile_cases as hc
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from netinit_cli.cli import cli

TIME_LIMIT = 20.0  # seconds per example; each takes a few tens of milliseconds
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ExampleTimeout(BaseException):
    """A BaseException, so that the CLI's own error handler cannot swallow it."""


def time_limit(seconds: float = TIME_LIMIT) -> contextlib.AbstractContextManager[None]:
    return hc.time_limit(seconds, ExampleTimeout)


def st_model(path: Path, names: list[str] | None = None) -> Path:
    """fc.weight F32[8,6], fc.bias F32[8], proj.weight F64[4,8], head.weight F16[3,4], all
    missing data only in the sense that --all re-initializes them (zeros)."""
    tensors = [("fc.weight", "F32", [8, 6], 4), ("fc.bias", "F32", [8], 4)]
    tensors += [("proj.weight", "F64", [4, 8], 8), ("head.weight", "F16", [3, 4], 2)]
    if names is not None:
        tensors = [(name, "F32", [2, 3], 4) for name in names]
    raw = [
        (name, dtype, shape, b"\x00" * (size * int(np.prod(shape)))) for name, dtype, shape, size in tensors
    ]
    path.write_bytes(hc.st_bytes(raw))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return st_model(tmp_path_factory.mktemp("model") / "model.safetensors")


def control_characters(text: str) -> list[str]:
    """C0 controls but the newline, DEL and C1 controls: none may reach a terminal."""
    return sorted({repr(c) for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0})


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, Path | None]:
    """netinit ARGS -o <fresh folder>/out.safetensors; checks the promises every run keeps and
    returns (exit code, stdout, stderr, the output if one was written)."""
    with tempfile.TemporaryDirectory(prefix="netinit-prop-") as folder:
        out = Path(folder) / "out.safetensors"
        with time_limit():
            result = CliRunner().invoke(cli, [*args, "-o", str(out)], env=env)
        escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not escaped, f"escaped the CLI: {result.exception!r}"
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
        assert code != 1, stderr
        assert control_characters(stdout) == [] and control_characters(stderr) == [], (stdout, stderr)
        if code != 0:
            lines = stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("netinit: error: "), stderr
            assert not out.exists()
            return code, stdout, stderr, None
        if out.exists():
            assert_finite(out)
        return code, stdout, stderr, out if out.exists() else None


def assert_finite(path: Path) -> None:
    from safetensors.numpy import load_file

    for name, values in load_file(str(path)).items():
        assert np.isfinite(values).all(), name


# ----------------------------------------------------------------------------------------------
# Strategies

NAMES = (
    "kaiming",
    "xavier",
    "orthogonal",
    "random",
    "identity",
    "he",
    "normal",
    "uniform",
    "truncated_normal",
    "constant",
    "none",
    "auto",
    "inf",
    "nan",
    "distribution",
    "mode",
    "fan_in",
    "fan_avg",
    "gain",
    "weights",
    "biases",
    "nonlinearity",
    "leaky_relu",
    "negative_slope",
    "forget_bias",
    "keep",
    "x",
)
anything = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e40, max_value=1e40).map(lambda x: f"{x:g}"),
    st.sampled_from(["1e308", "-1e308", "3e38", "1e39", "1e-320", "0", "-0", "1e400", ".5", "5.", "+1"]),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.integers(min_value=1, max_value=400).map(lambda n: "1e" + "9" * n),
)


def calls(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arg = st.one_of(children, st.tuples(st.sampled_from(NAMES), children).map(lambda kv: f"{kv[0]}={kv[1]}"))
    return st.tuples(st.sampled_from(NAMES), st.lists(arg, max_size=4)).map(
        lambda call: f"{call[0]}({', '.join(call[1])})"
    )


specs = st.one_of(
    st.recursive(st.one_of(numbers, st.sampled_from(NAMES)), calls, max_leaves=8),
    st.integers(min_value=1, max_value=4000).map(lambda n: "normal(" * n + "0" + ")" * (n % 3)),
    st.tuples(st.sampled_from(NAMES), anything).map("".join),
    anything,
)
OPTIONS = (
    "--method",
    "--weights",
    "--biases",
    "--distribution",
    "--gain",
    "--mode",
    "--nonlinearity",
    "--negative-slope",
    "--forget-bias",
    "--fan-mode",
    "--table",
)
globs = st.one_of(st.sampled_from(["*", "fc.*", "*.bias", "proj.weight", "head.*", "[", "**"]), anything)
option_lists = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(OPTIONS), specs).map(list),
        st.tuples(st.just("--method"), st.sampled_from(NAMES[:5])).map(list),
        st.tuples(globs, specs).map(lambda rule: ["--rule", f"{rule[0]}={rule[1]}"]),
    ),
    max_size=4,
).map(lambda groups: [item for group in groups for item in group])


def toml_string(text: str) -> str:
    escaped = "".join(
        f"\\u{ord(c):04x}"
        if ord(c) < 32 or ord(c) == 0x7F
        else "\\\\"
        if c == "\\"
        else '\\"'
        if c == '"'
        else c
        for c in text
    )
    return f'"{escaped}"'


def toml_values(depth: int = 3) -> st.SearchStrategy[str]:
    scalar = st.one_of(
        st.booleans().map(lambda b: str(b).lower()),
        st.sampled_from(
            ["'true'", "'false'", '"yes"', "1", "0", "1.5", "inf", "nan", "1979-05-27", "07:32:00"]
        ),
        st.integers().map(str),
        st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
        st.floats(allow_nan=False).map(lambda x: repr(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf")),
        st.one_of(anything, specs).map(toml_string),
        anything.map(lambda text: f"'{text}'"),  # a literal string: may not even be valid TOML
        st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n),
    )
    if depth == 0:
        return scalar
    inner = toml_values(depth - 1)
    return st.one_of(
        scalar,
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(
            st.tuples(st.sampled_from(["a", "b", "seed"]), inner), max_size=3, unique_by=lambda kv: kv[0]
        ).map(lambda items: "{" + ", ".join(f"{k} = {v}" for k, v in items) + "}"),
    )


config_keys = st.one_of(
    st.sampled_from(["method", "seed", "all", "fan_mode", "rules"]), anything.map(toml_string)
)
config_documents = st.one_of(
    st.tuples(
        st.lists(st.tuples(config_keys, toml_values()), max_size=4, unique_by=lambda kv: kv[0]),
        st.lists(st.tuples(globs.map(toml_string), toml_values(1)), max_size=3, unique_by=lambda kv: kv[0]),
    ).map(
        lambda doc: (
            "".join(f"{k} = {v}\n" for k, v in doc[0])
            + ("[rules]\n" + "".join(f"{k} = {v}\n" for k, v in doc[1]) if doc[1] else "")
        )
    ),
    anything,
)
seeds = st.one_of(
    st.integers().map(str),
    st.integers(min_value=4200, max_value=4400).map(lambda n: "1" + "0" * n),
    st.integers(min_value=-(10**50), max_value=10**50).map(str),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=30),
    st.sampled_from(["automatic", "inherited", " 42 ", "+7", "-0", "0" * 5000 + "1", "\udcff\udcfe"]),
)
names = st.text(alphabet=st.characters(codec=None, exclude_categories=()), min_size=1, max_size=80)
markup_names = st.sampled_from(
    [
        "[/x]",
        "[bold]b[/bold]",
        "[link=http://x]l[/link]",
        "\x1b]0;title\x07",
        "a\nnetinit: error: forged",
        "\x9b2J",
    ]
)


def _is_bytes(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Properties


@PROPERTY
@given(options=option_lists, scope=st.sampled_from([["--all"], [], ["--all", "--dry-run"]]))
def test_option_strings(model: Path, options: list[str], scope: list[str]) -> None:
    code, _, _, _ = run([str(model), *scope, *options, "-q"])
    assert code in (0, 2)


@PROPERTY
@given(document=config_documents, binary=st.booleans())
def test_config_documents(model: Path, document: str, binary: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="netinit-prop-config-") as folder:
        path = Path(folder) / "netinit.toml"
        data = document.encode("utf-8", "surrogatepass")
        path.write_bytes(data if not binary else data + b"\xff\x00")
        code, _, _, _ = run([str(model), "--config", str(path), "--json"])
    assert code in (0, 2)


@PROPERTY
@given(seed=seeds, where=st.sampled_from(["argument", "environment", "config"]))
def test_seeds(model: Path, seed: str, where: str) -> None:
    if where == "argument":
        code, stdout, _, _ = run([str(model), "--all", "--seed", seed, "--json"])
    elif where == "environment":
        # An environment variable is bytes: no NUL, and surrogates only as undecodable bytes.
        assume("\x00" not in seed and _is_bytes(seed))
        code, stdout, _, _ = run(
            [str(model), "--all", "--seed", "inherited", "--json"], env={"NETINIT_SEED": seed}
        )
    else:
        with tempfile.TemporaryDirectory(prefix="netinit-prop-seed-") as folder:
            path = Path(folder) / "netinit.toml"
            value = seed if seed.isdigit() and seed.isascii() else toml_string(seed)
            path.write_bytes(f"seed = {value}\n".encode("utf-8", "surrogatepass"))
            code, stdout, _, _ = run([str(model), "--all", "--config", str(path), "--json"])
    assert code in (0, 2)
    if code == 0:
        assert json.loads(stdout)["counts"]["filled"] == 4


@PROPERTY
@given(
    chosen=st.lists(st.one_of(names, markup_names), min_size=1, max_size=5, unique=True),
    table=st.sampled_from(["full", "summary"]),
    command=st.sampled_from(["init", "inspect", "dry-run"]),
)
def test_tensor_names(chosen: list[str], table: str, command: str) -> None:
    with tempfile.TemporaryDirectory(prefix="netinit-prop-names-") as folder:
        path = st_model(Path(folder) / "named.safetensors", chosen)
        args = {
            "init": [str(path), "--all", "--table", table],
            "inspect": ["inspect", str(path), "--table", table],
            "dry-run": [str(path), "--all", "--dry-run", "--rule", f"{chosen[0]}=constant(1e39)"],
        }[command]
        code, stdout, _, _ = run(args)
    # 3: a name the safetensors format refuses (not valid UTF-8, say).
    assert code in (0, 2, 3)
    if code == 0:
        assert not any(line.startswith("netinit: error") for line in stdout.splitlines())


@PROPERTY
@given(expression=specs, option=st.sampled_from(["--method", "--weights", "--biases", "--rule"]))
def test_spec_expressions(model: Path, expression: str, option: str) -> None:
    method = ["--method", "random"] if option in ("--weights", "--biases") else []
    value = f"*={expression}" if option == "--rule" else expression
    code, _, _, _ = run([str(model), "--all", *method, option, value, "-q"])
    assert code in (0, 2)
