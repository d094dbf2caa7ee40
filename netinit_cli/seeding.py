"""Seeds and per-tensor random streams.

Every tensor gets its own generator, derived from the run's seed and a SHA-256 digest of the
tensor's name, so its values do not depend on which other tensors are filled, in which order,
or on how many threads fill them.  Large tensors are cut into chunks of :data:`CHUNK_ELEMENTS`
elements; chunk ``i`` has its own stream (``spawn_key=(i,)``), so chunks can be generated in
parallel and the bytes are the same for one thread and for many.

Stream definition (changing any of this changes every generated value; the golden digest test
in ``tests/test_golden_streams.py`` guards it)::

    entropy  = [kind] + seed words + SHA-256(name) as 8 little-endian uint32 words
    kind     = 0 for an integer seed (words: its little-endian uint32 digits, at least one)
               1 for a string seed  (words: SHA-256 of its UTF-8 bytes, 8 words)
    stream i = PCG64DXSM(SeedSequence(entropy, spawn_key=(i,)))

PCG64DXSM is NumPy's recommended successor of PCG64 (same family, stronger output function)
and the fastest of its documented generators for raw 64-bit draws (faster than PCG64 and
Philox).  The entropy always has more than four words, so
SeedSequence's zero-padding of short entropy cannot make two different seeds collide.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import UsageError

DEFAULT_SEED = 1234
CHUNK_ELEMENTS = 1 << 20  # one independent stream per 2**20 elements; part of the stream definition
SEED_ENV = "NETINIT_SEED"
PURPOSE_KEY = 0xFFFFFFFF  # the first spawn-key word of streams that are not a tensor's

_INTEGER = re.compile(r"[+-]?[0-9]+")
# Python converts at most 4,300 digits between int and str by default (CVE-2020-10735); a seed
# must be printable and recordable, and no real seed comes near.
MAX_SEED_DIGITS = 4300
_KIND_INT = 0
_KIND_STR = 1


@dataclass(frozen=True)
class Seed:
    """The seed of a run: ``value`` is what the user gave (or what was drawn), ``source`` how.

    ``source`` is ``"default"``, ``"explicit"``, ``"automatic"`` or ``"inherited"``; it is shown
    to the user but never enters the streams, so an inherited 42 equals an explicit 42.
    """

    value: int | str
    source: str

    def __str__(self) -> str:
        return str(self.value)


def parse_seed(
    text: str | int | None, environ: Mapping[str, str] | None = None, *, option: str = "--seed"
) -> Seed:
    """Read a ``--seed`` value (``option`` names where it came from in errors).

    ``None`` → 1234 (NetInitialize's default); ``automatic`` → a fresh integer from the OS's
    entropy (recorded in the output so the run can be repeated); ``inherited`` → the value of
    the ``NETINIT_SEED`` environment variable, read the same way; digits → an integer (negative
    integers are refused: SeedSequence takes non-negative entropy and a silent mapping would
    surprise; so are integers of more than :data:`MAX_SEED_DIGITS` digits); any other non-empty
    UTF-8 text → a string seed (hashed with SHA-256, never ``hash()``).
    """
    if text is None:
        return Seed(DEFAULT_SEED, "default")
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise UsageError(
            f"{option} must be an integer or a string, got {type(text).__name__} {_short(repr(text))}"
        )
    if isinstance(text, int):
        if text >= 10**MAX_SEED_DIGITS:
            raise UsageError(_too_long(option))
        return Seed(_check_integer(text, option), "explicit")
    stripped = text.strip()
    if not stripped:
        raise UsageError(
            f"{option} is empty: give an integer (e.g. 1234), a word, 'automatic' or 'inherited'"
        )
    try:
        stripped.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{option} {_short(repr(stripped))}: not UTF-8 text (character {exc.start + 1}); "
            "give an integer or a word in UTF-8"
        ) from None
    keyword = stripped.lower()
    if keyword == "automatic":
        return Seed(int.from_bytes(os.urandom(8), "little") >> 1, "automatic")
    if keyword == "inherited":
        env = os.environ if environ is None else environ
        inherited = env.get(SEED_ENV)
        if inherited is None:
            raise UsageError(
                f"{option} inherited: the environment variable {SEED_ENV} is not set; "
                f"export {SEED_ENV}=<integer or word> or pass --seed <value>"
            )
        if inherited.strip().lower() == "inherited":
            raise UsageError(f"{SEED_ENV}=inherited would refer to itself; set it to an integer or a word")
        return Seed(parse_seed(inherited, env, option=SEED_ENV).value, "inherited")
    if _INTEGER.fullmatch(stripped):
        if stripped.startswith("-"):
            _check_integer(-1, option, stripped)
        digits = stripped.lstrip("+").lstrip("0") or "0"
        if len(digits) > MAX_SEED_DIGITS:
            raise UsageError(_too_long(option))
        return Seed(int(digits), "explicit")
    return Seed(stripped, "explicit")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _too_long(option: str) -> str:
    return (
        f"{option}: an integer seed has at most {MAX_SEED_DIGITS:,} digits; "
        "use a shorter integer, or a word (any text is a seed)"
    )


def _check_integer(value: int, option: str, text: str | None = None) -> int:
    if value < 0:
        raise UsageError(
            f"{option} {_short(text or str(value))}: negative seeds are not accepted; "
            "use a non-negative integer or a word"
        )
    return value


def _digest_words(data: bytes) -> list[int]:
    digest = hashlib.sha256(data).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]


def seed_words(seed: Seed) -> list[int]:
    """The entropy words that stand for ``seed`` (kind tag first; see the module docstring)."""
    if isinstance(seed.value, int):
        value, words = seed.value, []
        while True:
            words.append(value & 0xFFFFFFFF)
            value >>= 32
            if not value:
                break
        return [_KIND_INT, *words]
    return [_KIND_STR, *_digest_words(seed.value.encode("utf-8"))]


def seed_sequence(seed: Seed, name: str, chunk: int = 0) -> np.random.SeedSequence:
    entropy = seed_words(seed) + _digest_words(name.encode("utf-8"))
    return np.random.SeedSequence(entropy, spawn_key=(chunk,))


def purpose_sequence(seed: Seed, purpose: str) -> np.random.SeedSequence:
    """The parent of the streams ``seed`` gives something other than a tensor (LSUV's random
    batch: ``purpose="lsuv batch"``).  Draw only from its children (``spawn_key=(PURPOSE_KEY, i)``):
    their spawn keys have two words and no tensor stream's has, so they never meet one."""
    return np.random.SeedSequence(
        seed_words(seed) + _digest_words(purpose.encode("utf-8")), spawn_key=(PURPOSE_KEY,)
    )


def bit_generator(seed: Seed, name: str, chunk: int = 0) -> np.random.PCG64DXSM:
    """The raw bit generator of chunk ``chunk`` of tensor ``name`` (samplers use its raw words)."""
    return np.random.PCG64DXSM(seed_sequence(seed, name, chunk))


def thread_count() -> int:
    """Threads used to fill chunks: ``NETINIT_THREADS`` if set, else the CPU count."""
    text = os.environ.get("NETINIT_THREADS", "").strip()
    if text:
        try:
            count = int(text)
        except ValueError:
            raise UsageError(f"NETINIT_THREADS={text!r} is not an integer; set it to e.g. 1 or 4") from None
        if count < 1:
            raise UsageError(f"NETINIT_THREADS={text!r} must be at least 1")
        return count
    return os.cpu_count() or 1
