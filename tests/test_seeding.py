"""Seeds: parsing, per-tensor streams, reproducibility across processes and threads."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from netinit_cli.distributions import Distribution
from netinit_cli.errors import UsageError
from netinit_cli.sampling import sample_into
from netinit_cli.seeding import CHUNK_ELEMENTS, DEFAULT_SEED, Seed, bit_generator, parse_seed, thread_count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, Seed(1234, "default")),
        ("42", Seed(42, "explicit")),
        (" 42 ", Seed(42, "explicit")),
        ("+7", Seed(7, "explicit")),
        ("0", Seed(0, "explicit")),
        (99, Seed(99, "explicit")),
        ("my-run", Seed("my-run", "explicit")),
        ("1e3", Seed("1e3", "explicit")),  # not an integer: a string seed, not 1000
        (str(2**80), Seed(2**80, "explicit")),
    ],
)
def test_parse_seed_forms(text: str | int | None, expected: Seed) -> None:
    assert parse_seed(text) == expected


def test_seed_displays_its_value() -> None:
    assert str(parse_seed(None)) == "1234"
    assert str(parse_seed("my-run")) == "my-run"
    assert DEFAULT_SEED == 1234


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_seed_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--seed is empty"):
        parse_seed(text)


@pytest.mark.parametrize("text", ["-5", -5])
def test_negative_seed_is_refused(text: str | int) -> None:
    with pytest.raises(UsageError, match="negative seeds are not accepted"):
        parse_seed(text)


def test_automatic_draws_a_fresh_recorded_integer() -> None:
    first, second = parse_seed("automatic"), parse_seed("AUTOMATIC")
    assert first.source == second.source == "automatic"
    assert isinstance(first.value, int) and 0 <= first.value < 2**63
    assert first.value != second.value


def test_inherited_reads_netinit_seed() -> None:
    assert parse_seed("inherited", {"NETINIT_SEED": "42"}) == Seed(42, "inherited")
    assert parse_seed("Inherited", {"NETINIT_SEED": "run-7"}) == Seed("run-7", "inherited")


def test_inherited_without_the_variable_says_how_to_fix_it() -> None:
    with pytest.raises(UsageError, match="NETINIT_SEED is not set"):
        parse_seed("inherited", {})
    with pytest.raises(UsageError, match="refer to itself"):
        parse_seed("inherited", {"NETINIT_SEED": "inherited"})


def _draw(seed: Seed, name: str, chunk: int = 0) -> bytes:
    return bytes(bit_generator(seed, name, chunk).random_raw(8).tobytes())


def test_streams_depend_on_seed_name_and_chunk_only() -> None:
    base = _draw(Seed(1, "explicit"), "w")
    assert _draw(Seed(1, "explicit"), "w") == base
    assert _draw(Seed(1, "default"), "w") == base  # the source never enters the stream
    assert _draw(Seed(2, "explicit"), "w") != base
    assert _draw(Seed(1, "explicit"), "w2") != base
    assert _draw(Seed(1, "explicit"), "w", 1) != base
    assert _draw(Seed("1x", "explicit"), "w") != base
    # Integer words and string digests are tagged: no integer collides with a string seed.
    assert _draw(Seed(0, "explicit"), "w") != _draw(Seed(2**32, "explicit"), "w")


def test_inherited_equals_explicit_bytes() -> None:
    inherited = parse_seed("inherited", {"NETINIT_SEED": "31337"})
    explicit = parse_seed("31337")
    a, b = np.empty(5000, np.float32), np.empty(5000, np.float32)
    sample_into(Distribution("normal", (0.0, 1.0)), a, inherited, "layer.weight")
    sample_into(Distribution("normal", (0.0, 1.0)), b, explicit, "layer.weight")
    assert a.tobytes() == b.tobytes()


_CHILD = """
import sys
from netinit_cli.seeding import parse_seed, bit_generator
print(bit_generator(parse_seed(sys.argv[1]), "encoder.layer.0.weight", 3).random_raw(4).tolist())
"""


def test_string_seeds_are_stable_across_processes() -> None:
    outputs = set()
    for hash_seed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, "my-experiment"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outputs.add(result.stdout)
    here = str(bit_generator(parse_seed("my-experiment"), "encoder.layer.0.weight", 3).random_raw(4).tolist())
    assert outputs == {here + "\n"}


def test_thread_count_reads_netinit_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETINIT_THREADS", "3")
    assert thread_count() == 3
    monkeypatch.setenv("NETINIT_THREADS", "zero")
    with pytest.raises(UsageError, match="NETINIT_THREADS='zero' is not an integer"):
        thread_count()
    monkeypatch.setenv("NETINIT_THREADS", "0")
    with pytest.raises(UsageError, match="at least 1"):
        thread_count()
    monkeypatch.delenv("NETINIT_THREADS")
    assert thread_count() == (os.cpu_count() or 1)


@pytest.mark.parametrize(
    "dist",
    [
        Distribution("normal", (0.5, 2.0)),
        Distribution("uniform", (-1.0, 3.0)),
        Distribution("truncated_normal", (0.0, 1.0, -0.5, 2.0)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_changes_no_byte(
    monkeypatch: pytest.MonkeyPatch, dist: Distribution, dtype: type
) -> None:
    size = 3 * CHUNK_ELEMENTS + 12345  # four chunks, the last one ragged and odd
    results = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("NETINIT_THREADS", threads)
        out = np.empty(size, dtype)
        sample_into(dist, out, Seed(7, "explicit"), "big")
        results.append(out.tobytes())
    assert results[0] == results[1] == results[2]


def test_fill_order_changes_no_byte() -> None:
    seed = Seed(11, "explicit")
    dist = Distribution("normal", (0.0, 1.0))
    names = ["a.weight", "b.weight", "c.weight"]
    forward = {}
    for name in names:
        forward[name] = np.empty((64, 33), np.float32)
        sample_into(dist, forward[name], seed, name)
    for name in reversed(names):
        again = np.empty((64, 33), np.float32)
        sample_into(dist, again, seed, name)
        assert again.tobytes() == forward[name].tobytes()
    assert forward["a.weight"].tobytes() != forward["b.weight"].tobytes()


def test_a_chunk_does_not_depend_on_the_tensor_length() -> None:
    """Chunk i's values depend on (seed, name, i) only: a longer tensor extends a shorter one."""
    seed, dist = Seed(3, "explicit"), Distribution("uniform", (0.0, 1.0))
    short, long = np.empty(CHUNK_ELEMENTS, np.float32), np.empty(CHUNK_ELEMENTS + 10, np.float32)
    sample_into(dist, short, seed, "t")
    sample_into(dist, long, seed, "t")
    assert short.tobytes() == long[:CHUNK_ELEMENTS].tobytes()
