"""Malformed, truncated and hostile model files, and the checks every one of them must pass.

Shared by ``tests/test_hostile_inputs.py`` (pytest) and ``fuzz/summary.py`` (the README's
figures).  A :class:`Case` is a small folder tree: ``in/`` holds the model (and any data files
or links), ``outside/`` holds a secret the model must never read, ``out/`` is the output folder.
:func:`run_case` runs the real command-line entry point on it and lists every broken promise:

* the exit code is one the case allows (3 = bad input; 1 = internal error is never allowed);
* on failure, stderr is exactly one line starting ``netinit: error: `` and has no traceback;
* on failure, ``out/`` is empty (no output, no temporary file); on success it holds only
  complete outputs, which load;
* nothing under ``in/`` or ``outside/`` changed (sha256 of every file, and the file list);
* it finished within the time limit.  Memory is bounded by the caller: the worker mode
  (``python tests/hostile_cases.py --worker``) sets ``RLIMIT_AS`` first, so an allocation the
  declared sizes should have prevented becomes a ``MemoryError`` = exit 1 = a reported problem.

Families: the committed corpora (``tests/corpus/safetensors``, ``tests/corpus/onnx``), named
external-data and index cases, truncations at every structural boundary (plus seeded other
offsets), and seeded byte flips in headers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ST_CORPUS = HERE / "corpus" / "safetensors"
ONNX_CORPUS = HERE / "corpus" / "onnx"
FIXTURES = ROOT / "fixtures"

BAD_INPUT = frozenset({3})
BAD_INPUT_OR_OK = frozenset({0, 3})  # a mutation may still be a valid model
TIME_LIMIT = 20.0  # seconds per case; real cases take milliseconds
SECRET = b"SECRET-BYTES-" * 8  # outside/secret.bin; 104 bytes


@dataclass(frozen=True)
class Link:
    kind: str  # "symlink" or "hardlink"
    path: str  # inside the case root, e.g. "in/w.bin"
    target: str  # inside the case root (symlinks get an absolute target), e.g. "outside/secret.bin"


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    files: Mapping[str, bytes]  # path inside the case root -> bytes
    model: str = "in/model.onnx"  # the MODEL argument, inside the case root
    output: str = "out/model.init.onnx"
    args: tuple[str, ...] = ("--all",)
    allowed: frozenset[int] = BAD_INPUT
    links: tuple[Link, ...] = ()
    folders: tuple[str, ...] = ()
    fifos: tuple[str, ...] = ()  # paths inside the case root made with mkfifo
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the run
    quiet: bool = True  # False: the table is printed too (and checked for control characters)


@dataclass
class Outcome:
    name: str
    family: str
    exit_code: int
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


# ------------------------------------------------------------------------------------------
# Building and checking one case
# ------------------------------------------------------------------------------------------
def materialize(case: Case, root: Path) -> None:
    """Create the case's tree under ``root`` (which must be empty or absent)."""
    for folder in ("in", "out", "outside", *case.folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "outside" / "secret.bin").write_bytes(SECRET)
    for rel, payload in case.files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    for fifo in case.fifos:
        os.mkfifo(root / fifo)
    for link in case.links:
        if link.kind == "symlink":
            os.symlink(root / link.target, root / link.path)
        else:
            os.link(root / link.target, root / link.path)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``in/`` and ``outside/`` (links recorded as links)."""
    seen: dict[str, str] = {}
    for top in ("in", "outside"):
        for path in sorted((root / top).rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = "link->" + os.readlink(path)
            elif path.is_file():
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[rel] = "folder"
    return seen


class CaseTimeout(BaseException):
    """Raised by the per-case alarm; a BaseException so the CLI's error handler cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float, error: type[BaseException] = CaseTimeout) -> Iterator[None]:
    """Raise ``error`` in this thread when the block has not returned after ``seconds``: a hang
    fails its case (or test) instead of hanging the run."""

    def expire(signum: int, frame: object) -> None:
        raise error(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def invoke_cli(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``netinit ARGS`` in-process through click's test runner; (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from netinit_cli.cli import cli

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, args, catch_exceptions=True, env=env)
    finally:
        os.chdir(previous)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # Escaped the CLI's own handler: that is a traceback for a user.
        stderr += f"Traceback (escaped the CLI): {type(result.exception).__name__}: {result.exception}\n"
    return result.exit_code, result.stdout, stderr


def control_characters(text: str) -> list[str]:
    """C0 controls but the newline, DEL and C1 controls: nothing printed may hold one (a
    terminal would interpret it)."""
    return sorted({repr(c) for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0})


def run_case(case: Case, root: Path, *, seconds: float = TIME_LIMIT) -> Outcome:
    """Materialize ``case`` under ``root``, run netinit on it, and list broken promises."""
    if root.exists():
        shutil.rmtree(root)
    materialize(case, root)
    before = snapshot(root)
    args = [case.model, *case.args, "-o", case.output, *(["--quiet"] if case.quiet else [])]
    started = time.perf_counter()
    stdout = ""
    try:
        with time_limit(seconds):
            code, stdout, stderr = invoke_cli(args, root, dict(case.env) or None)
    except CaseTimeout:
        code, stderr = -1, f"(no answer within {seconds} s)\n"
    elapsed = time.perf_counter() - started
    outcome = Outcome(case.name, case.family, code, stderr, elapsed)
    outcome.problems = check(case, root, before, outcome)
    controls = control_characters(stdout + stderr)
    if controls:
        outcome.problems.append(f"control characters on stdout/stderr: {', '.join(controls)}")
    return outcome


def check(case: Case, root: Path, before: dict[str, str], outcome: Outcome) -> list[str]:
    problems: list[str] = []
    code, stderr = outcome.exit_code, outcome.stderr
    if code == -1:
        problems.append("hang: no answer within the time limit")
    elif code == 1:
        problems.append(f"internal error (exit 1): {stderr.strip()[:300]}")
    elif code not in case.allowed:
        problems.append(f"exit {code}, expected {sorted(case.allowed)}: {stderr.strip()[:300]}")
    if "Traceback" in stderr:
        problems.append("traceback on stderr")
    left = sorted(p.name for p in (root / "out").iterdir())
    if code != 0:
        lines = stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("netinit: error: "):
            problems.append(f"stderr is not one 'netinit: error: ' line: {stderr[:300]!r}")
        if left:
            problems.append(f"partial output: {left} left in the output folder")
    else:
        problems.extend(_check_success(root / case.output, left))
    after = snapshot(root)
    if code == 0 and case.output.startswith("in/"):  # the output itself may appear beside the input
        written = root / case.output
        made = {str(p.relative_to(root)) for p in (written, *written.parent.glob(written.stem + ".*.data"))}
        after = {k: v for k, v in after.items() if k not in made or k in before}
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        problems.append(f"modified input: {changed}")
    if outcome.seconds > TIME_LIMIT:
        problems.append(f"slow: {outcome.seconds:.1f} s")
    return problems


def _check_success(output: Path, left: list[str]) -> list[str]:
    problems = [f"temporary file left: {name}" for name in left if name.endswith(".tmp")]
    if not output.exists():
        return [*problems, "exit 0 but no output file"]
    try:
        load_output(output)
    except Exception as exc:
        problems.append(f"exit 0 but the output does not load: {type(exc).__name__}: {str(exc)[:200]}")
    return problems


def load_output(output: Path) -> None:
    """Raise unless ``output`` is a complete model: onnx.checker by path for ONNX; for
    safetensors the reference reader parses every header (shards through the index) and reads
    every tensor's bytes."""
    if output.name.endswith(".onnx"):
        import onnx

        onnx.checker.check_model(str(output))
        return
    from safetensors import safe_open

    files = [output]
    if output.name.endswith(".json"):
        index = json.loads(output.read_text())
        files = [output.parent / name for name in sorted(set(index["weight_map"].values()))]
    for path in files:
        with safe_open(str(path), "np") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                shape = handle.get_slice(key).get_shape()
                # numpy cannot hold a rank > 64 or a dimension >= 2^63 (zero-size tensors may
                # legally have such shapes); reading the header is then all we can check.
                if len(shape) <= 32 and all(dim < 1 << 31 for dim in shape) and _prod(tuple(shape)) < 1 << 24:
                    handle.get_tensor(key)


# ------------------------------------------------------------------------------------------
# Seeds: small valid models to truncate and flip
# ------------------------------------------------------------------------------------------
def st_bytes(
    tensors: list[tuple[str, str, list[int], bytes]], metadata: dict[str, str] | None = None
) -> bytes:
    """A safetensors file from (name, dtype, shape, raw bytes), packed in the given order."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(raw for *_, raw in tensors)


def st_seed() -> bytes:
    """fc.weight F32[4,3], fc.bias F32[4], norm.weight BF16[4], steps I64[1]; format pt."""
    return st_bytes(
        [
            ("fc.weight", "F32", [4, 3], struct.pack("<12f", *range(12))),
            ("fc.bias", "F32", [4], struct.pack("<4f", 0.1, 0.2, 0.3, 0.4)),
            ("norm.weight", "BF16", [4], b"\x80\x3f" * 4),
            ("steps", "I64", [1], struct.pack("<q", 7)),
        ],
        {"format": "pt"},
    )


def onnx_seed() -> bytes:
    return (FIXTURES / "cnn.onnx").read_bytes()


def st_boundaries(data: bytes) -> list[int]:
    """Offsets where a safetensors file changes structure: inside the length prefix, at every
    JSON token boundary of the header, at the data start and at every tensor's begin and end."""
    (header_len,) = struct.unpack("<Q", data[:8])
    cuts = set(range(9))
    header = data[8 : 8 + header_len]
    for index, byte in enumerate(header):
        if chr(byte) in '{}[],:"':
            cuts.update((8 + index, 8 + index + 1))
    start = 8 + header_len
    for entry in json.loads(header).values():
        if "data_offsets" in entry:
            cuts.update(start + offset for offset in entry["data_offsets"])
    return sorted(cut for cut in cuts if cut < len(data))


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def protobuf_boundaries(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> set[int]:
    """Start and end of every protobuf field, recursing into length-delimited fields that parse
    as messages (ModelProto -> GraphProto -> NodeProto/TensorProto/ValueInfoProto …)."""
    end = len(data) if end is None else end
    cuts: set[int] = set()
    pos = start
    try:
        while pos < end:
            cuts.add(pos)
            key, pos = _varint(data, pos, end)
            wire = key & 7
            if wire == 0:
                _, pos = _varint(data, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(data, pos, end)
                cuts.add(pos)
                if depth < 6 and length:
                    with contextlib.suppress(ValueError):
                        cuts |= protobuf_boundaries(data, pos, pos + length, depth + 1)
                pos += length
            else:
                raise ValueError("bad wire type")
            if pos > end:
                raise ValueError("field past the end")
        cuts.add(end)
    except ValueError:
        if depth:
            raise
    return cuts


# ------------------------------------------------------------------------------------------
# Families
# ------------------------------------------------------------------------------------------
def st_case(name: str, family: str, payload: bytes, allowed: frozenset[int] = BAD_INPUT, **kw: Any) -> Case:
    return Case(
        name,
        family,
        {"in/model.safetensors": payload},
        "in/model.safetensors",
        "out/model.init.safetensors",
        allowed=allowed,
        **kw,
    )


def onnx_case(name: str, family: str, payload: bytes, allowed: frozenset[int] = BAD_INPUT, **kw: Any) -> Case:
    return Case(name, family, {"in/model.onnx": payload}, allowed=allowed, **kw)


def corpus_cases() -> Iterator[Case]:
    """The committed corpora: every file must be refused with exit 3 (the ONNX corpus lists the
    few valid-but-odd models that may also succeed)."""
    for path in sorted(ST_CORPUS.glob("*.safetensors")):
        yield st_case(f"st-corpus/{path.stem}", "corpus", path.read_bytes())
    allowed = json.loads((ONNX_CORPUS / "expected.json").read_text())
    for path in sorted(ONNX_CORPUS.glob("*.onnx")):
        for mode, args in (("all", ("--all",)), ("missing", ())):
            codes = frozenset(allowed[path.name][mode])
            yield onnx_case(f"onnx-corpus/{path.stem}/{mode}", "corpus", path.read_bytes(), codes, args=args)


def _entry(dtype: str, shape: Any, offsets: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _raw_st(header: str | bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    raw = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def st_named_cases() -> Iterator[Case]:
    """Header attacks beyond the committed corpus: wrong JSON types, enormous shapes, deep
    nesting, tensor-count bombs, zero-size tensors with absurd dimensions."""
    f32x2 = b"\x00" * 8
    headers: dict[str, tuple[Any, bytes]] = {
        "dtype_is_number": ({"w": _entry(5, [2], [0, 8])}, f32x2),  # type: ignore[arg-type]
        "dtype_is_null": ({"w": _entry(None, [2], [0, 8])}, f32x2),  # type: ignore[arg-type]
        "shape_is_string": ({"w": _entry("F32", "2", [0, 8])}, f32x2),
        "shape_is_object": ({"w": _entry("F32", {"0": 2}, [0, 8])}, f32x2),
        "shape_nested_list": ({"w": _entry("F32", [[2]], [0, 8])}, f32x2),
        "offsets_one_element": ({"w": _entry("F32", [2], [8])}, f32x2),
        "offsets_three_elements": ({"w": _entry("F32", [2], [0, 8, 8])}, f32x2),
        "offsets_strings": ({"w": _entry("F32", [2], ["0", "8"])}, f32x2),
        "offsets_negative": ({"w": _entry("F32", [2], [-8, 0])}, f32x2),
        "offsets_2_pow_64": ({"w": _entry("F32", [2], [0, 1 << 64])}, f32x2),
        "offsets_beyond_data": ({"w": _entry("F32", [4], [0, 16])}, f32x2),
        "offsets_overlap_two": (
            {"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [2], [4, 12])},
            f32x2 + b"\x00" * 4,
        ),
        "entry_is_list": ({"w": ["F32", [2], [0, 8]]}, f32x2),
        "entry_is_string": ({"w": "F32"}, f32x2),
        "header_is_string": ("F32", b""),
        "header_is_number": (12, b""),
        "header_is_null": (None, b""),
        "metadata_nested_object": ({"__metadata__": {"a": {"b": "c"}}}, b""),
        "metadata_is_string": ({"__metadata__": "pt"}, b""),
        "tensor_named_metadata_like": ({"__metadata__": _entry("F32", [2], [0, 8])}, f32x2),
        "shape_terabytes": ({"w": _entry("F32", [1 << 20, 1 << 20], [0, 8])}, f32x2),
        "shape_product_wraps_to_zero": ({"w": _entry("F32", [1 << 32, 1 << 32], [0, 0])}, b""),
        "shape_u64_max_times_zero": ({"w": _entry("F32", [(1 << 64) - 1, 0], [0, 0])}, b""),
        "shape_2_pow_63_times_zero": ({"w": _entry("F32", [1 << 63, 0], [0, 0])}, b""),
        "shape_rank_1000_valid": ({"w": _entry("F32", [1] * 1000, [0, 4])}, b"\x00" * 4),
        "shape_huge_zero_size_with_fill": ({"w.weight": _entry("F32", [1 << 40, 0], [0, 0])}, b""),
    }
    for name, (header, data) in headers.items():
        text = json.dumps(header, separators=(",", ":"))
        yield st_case(
            f"st-named/{name}",
            "named",
            _raw_st(text, data),
            BAD_INPUT_OR_OK if "zero" in name or "valid" in name else BAD_INPUT,
        )
    deep = "[" * 100_000 + "]" * 100_000
    yield st_case("st-named/deep_nesting_100k", "named", _raw_st(deep))
    yield st_case(
        "st-named/deep_nesting_in_metadata", "named", _raw_st('{"__metadata__":{"a":' + deep + "}}")
    )
    yield st_case("st-named/deep_object_nesting", "named", _raw_st('{"a":' * 50_000 + "1" + "}" * 50_000))
    yield st_case(
        "st-named/digits_100k",
        "named",
        _raw_st('{"w":{"dtype":"F32","shape":[' + "9" * 100_000 + '],"data_offsets":[0,0]}}'),
    )
    yield st_case("st-named/header_length_u64_max", "named", _raw_st("{}", declared=(1 << 64) - 1))
    yield st_case("st-named/header_length_just_over_cap", "named", _raw_st("{}", declared=100_000_001))
    yield st_case("st-named/header_length_at_cap_past_eof", "named", _raw_st("{}", declared=100_000_000))
    # One tensor over the limit (1,000,000; 55 MB of header), refused before the JSON is parsed.
    from netinit_cli.formats.safetensors.header import MAX_TENSORS

    entry = '"t{}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
    many = ",".join(entry.format(i) for i in range(MAX_TENSORS + 1))
    yield st_case("st-named/tensor_count_bomb", "named", _raw_st("{" + many + "}"))
    yield st_case("st-named/header_all_spaces", "named", _raw_st(" " * 4096))
    yield st_case(
        "st-named/header_only_whitespace_then_brace", "named", _raw_st(" " * 64 + "{}"), BAD_INPUT_OR_OK
    )
    yield st_case("st-named/not_utf8_in_metadata", "named", _raw_st(b'{"__metadata__":{"a":"\xc3\x28"}}'))
    yield st_case(
        "st-named/overlong_utf8_slash",
        "named",
        _raw_st(b'{"\xc0\xaf":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'),
    )
    seed = st_seed()
    yield st_case("st-named/polyglot_trailing_zip", "named", seed + b"PK\x03\x04" + b"\x00" * 26)
    yield st_case("st-named/missing_file_as_folder", "named", b"", folders=("in/model.safetensors.d",))


def st_index_cases() -> Iterator[Case]:
    """Sharded bundles whose index points outside the folder, at links, or at nothing."""
    shard = st_bytes([("fc.weight", "F32", [2, 2], b"\x00" * 16)])
    other = st_bytes([("fc.bias", "F32", [2], b"\x00" * 8)])

    def bundle(name: str, weight_map: Any, files: dict[str, bytes] | None = None, **kw: Any) -> Case:
        index = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
        return Case(
            f"st-index/{name}",
            "named",
            {"in/model.safetensors.index.json": index, "in/a.safetensors": shard, **(files or {})},
            "in/model.safetensors.index.json",
            "out/model.init.safetensors.index.json",
            **kw,
        )

    yield bundle("traversal", {"fc.weight": "a.safetensors", "fc.bias": "../outside/secret.bin"})
    yield bundle("absolute", {"fc.weight": "a.safetensors", "fc.bias": "/etc/passwd"})
    yield bundle(
        "subfolder",
        {"fc.weight": "a.safetensors", "fc.bias": "sub/b.safetensors"},
        {"in/sub/b.safetensors": other},
    )
    yield bundle("missing_shard", {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"})
    yield bundle(
        "shard_is_folder",
        {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"},
        folders=("in/b.safetensors",),
    )
    # A shard that is a link to a valid safetensors file elsewhere is how the Hugging Face cache
    # stores snapshots (snapshots/<rev>/x.safetensors -> ../../blobs/<sha>), so it may be read;
    # the check is only that nothing is written through it and the output is complete.
    yield bundle(
        "shard_symlink_outside",
        {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"},
        {"outside/b.safetensors": other},
        links=(Link("symlink", "in/b.safetensors", "outside/b.safetensors"),),
        allowed=BAD_INPUT_OR_OK,
    )
    yield bundle(
        "shard_hardlink_outside",
        {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"},
        {"outside/b.safetensors": other},
        links=(Link("hardlink", "in/b.safetensors", "outside/b.safetensors"),),
        allowed=BAD_INPUT_OR_OK,
    )
    yield bundle(
        "shard_is_the_secret",
        {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"},
        links=(Link("symlink", "in/b.safetensors", "outside/secret.bin"),),
    )
    yield bundle("weight_map_list", ["a.safetensors"])
    yield bundle("weight_map_value_number", {"fc.weight": 3})
    yield bundle("weight_map_empty", {})
    yield bundle(
        "same_tensor_two_shards",
        {"fc.weight": "a.safetensors", "fc.bias": "c.safetensors"},
        {"in/c.safetensors": shard},
    )
    yield bundle(
        "shard_truncated",
        {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"},
        {"in/b.safetensors": other[:-3]},
    )
    deep = b"[" * 100_000 + b"]" * 100_000
    yield Case(
        "st-index/index_deep_nesting",
        "named",
        {"in/model.safetensors.index.json": deep},
        "in/model.safetensors.index.json",
        "out/model.init.safetensors.index.json",
    )
    yield Case(
        "st-index/index_not_utf8",
        "named",
        {"in/model.safetensors.index.json": b'{"weight_map":{"\xff":"a"}}'},
        "in/model.safetensors.index.json",
        "out/model.init.safetensors.index.json",
    )


def _external_model(
    location: str, *, dims: tuple[int, ...] = (3, 4), extra: Mapping[str, str] | None = None
) -> bytes:
    from onnx_builders import external_gemm  # onnx is imported only by the cases that need it

    return bytes(external_gemm(location, dims=dims, extra=extra).SerializeToString())


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for dim in dims:
        out *= dim
    return out


def onnx_external_cases() -> Iterator[Case]:
    """External data that escapes the folder, goes through links, is missing, short or absurd.
    Each runs with ``--all`` (data not needed) and without (data kept, so copied)."""
    data = b"\x00" * 48
    specs: list[tuple[str, bytes, dict[str, bytes], tuple[Link, ...], frozenset[int]]] = [
        ("traversal", _external_model("../outside/secret.bin"), {}, (), BAD_INPUT),
        ("nested_traversal", _external_model("sub/../../outside/secret.bin"), {}, (), BAD_INPUT),
        ("absolute", _external_model("/etc/passwd"), {}, (), BAD_INPUT),
        # The CLI runs in the case root, so this absolute path is the secret itself.
        ("absolute_secret", _external_model("/proc/self/cwd/outside/secret.bin"), {}, (), BAD_INPUT),
        ("backslash_traversal", _external_model("..\\outside\\secret.bin"), {}, (), BAD_INPUT),
        ("drive_letter", _external_model("C:\\w.bin"), {}, (), BAD_INPUT),
        ("nul_in_location", _external_model("w.bin\x00.txt"), {"in/w.bin": data}, (), BAD_INPUT),
        (
            "symlink_to_outside",
            _external_model("w.bin"),
            {},
            (Link("symlink", "in/w.bin", "outside/secret.bin"),),
            BAD_INPUT,
        ),
        (
            "symlinked_folder",
            _external_model("d/secret.bin"),
            {},
            (Link("symlink", "in/d", "outside"),),
            BAD_INPUT,
        ),
        (
            "hardlink_to_outside",
            _external_model("w.bin"),
            {"outside/w.bin": data},
            (Link("hardlink", "in/w.bin", "outside/w.bin"),),
            BAD_INPUT,
        ),
        ("location_is_folder", _external_model("sub"), {"in/sub/x": b""}, (), BAD_INPUT),
        ("location_is_dot", _external_model("."), {}, (), BAD_INPUT),
        ("location_is_the_model", _external_model("model.onnx"), {}, (), BAD_INPUT_OR_OK),
        ("short_file", _external_model("w.bin"), {"in/w.bin": data[:20]}, (), BAD_INPUT),
        ("empty_file", _external_model("w.bin"), {"in/w.bin": b""}, (), BAD_INPUT),
        (
            "offset_past_end",
            _external_model("w.bin", extra={"offset": "4096"}),
            {"in/w.bin": data},
            (),
            BAD_INPUT,
        ),
        (
            "offset_negative",
            _external_model("w.bin", extra={"offset": "-1"}),
            {"in/w.bin": data},
            (),
            BAD_INPUT,
        ),
        (
            "offset_20_digits",
            _external_model("w.bin", extra={"offset": "99999999999999999999"}),
            {"in/w.bin": data},
            (),
            BAD_INPUT,
        ),
        ("length_wrong", _external_model("w.bin", extra={"length": "12"}), {"in/w.bin": data}, (), BAD_INPUT),
        (
            "length_huge",
            _external_model("w.bin", extra={"length": "9223372036854775807"}),
            {"in/w.bin": data},
            (),
            BAD_INPUT,
        ),
        ("unknown_key", _external_model("w.bin", extra={"mode": "w"}), {"in/w.bin": data}, (), BAD_INPUT),
        (
            "terabyte_dims_short_file",
            _external_model("w.bin", dims=(1 << 20, 1 << 20)),
            {"in/w.bin": data},
            (),
            BAD_INPUT,
        ),
        ("empty_location", _external_model(""), {}, (), BAD_INPUT),
    ]
    for name, model, files, links, allowed in specs:
        for mode, args in (("all", ("--all",)), ("missing", ())):
            yield Case(
                f"onnx-external/{name}/{mode}",
                "named",
                {"in/model.onnx": model, **files},
                args=args,
                allowed=allowed,
                links=links,
            )
    # Missing data file: the tensor has no data.  --all (or the default, which fills missing
    # tensors) may create it; the output's data file must be written beside the output only.
    for mode, args in (("all", ("--all",)), ("missing", ())):
        yield Case(
            f"onnx-external/missing_file/{mode}",
            "named",
            {"in/model.onnx": _external_model("w.bin")},
            args=args,
            allowed=BAD_INPUT_OR_OK,
        )
    # The input's data file has the name the output's data file would get, in the output folder:
    # netinit must write its own new data file, never append to or reuse the input's.
    yield Case(
        "onnx-external/output_data_name_clash",
        "named",
        {"in/model.onnx": _external_model("model.init.data"), "in/model.init.data": data},
        output="in/model.init.onnx",
        args=(),
        allowed=frozenset({0, 5}),
    )


def truncation_cases(seed: int = 0, extra: int = 24) -> Iterator[Case]:
    """Both seeds cut at every structural boundary, plus ``extra`` seeded other offsets each."""
    rng = random.Random(seed)
    st = st_seed()
    st_cuts = st_boundaries(st)
    st_cuts += rng.sample(sorted(set(range(len(st))) - set(st_cuts)), extra)
    for cut in sorted(set(st_cuts)):
        yield st_case(f"st-truncate/{cut}", "truncate", st[:cut])
    model = onnx_seed()
    cuts = sorted(protobuf_boundaries(model) - {len(model)})
    cuts += rng.sample(sorted(set(range(len(model))) - set(cuts)), extra)
    for cut in sorted(set(cuts)):
        # A cut at a field boundary is itself a valid (smaller) protobuf: protobuf has no end
        # marker.  It may load if the graph still makes sense, so 0 is allowed -- with a loadable output.
        yield onnx_case(f"onnx-truncate/{cut}", "truncate", model[:cut], BAD_INPUT_OR_OK)


FLIP_MASKS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF)


def flip_cases(seed: int = 0, per_file: int = 160) -> Iterator[Case]:
    """Seeded single-byte flips: every byte of the safetensors length prefix with every mask;
    ``per_file`` random (position, mask) flips in the safetensors JSON header and in the first
    part of the ONNX file (its header and graph structure).  Flipped files may stay valid."""
    rng = random.Random(seed)
    st = st_seed()
    (header_len,) = struct.unpack("<Q", st[:8])
    flips = {(pos, mask) for pos in range(8) for mask in FLIP_MASKS}
    while len(flips) < 8 * len(FLIP_MASKS) + per_file:
        flips.add((rng.randrange(8, 8 + header_len), rng.choice(FLIP_MASKS)))
    for pos, mask in sorted(flips):
        yield st_case(f"st-flip/{pos}^{mask:#04x}", "flip", _flip(st, pos, mask), BAD_INPUT_OR_OK)
    model = onnx_seed()
    onnx_flips: set[tuple[int, int]] = set()
    while len(onnx_flips) < per_file:
        onnx_flips.add((rng.randrange(0, min(len(model), 1024)), rng.choice(FLIP_MASKS)))
    for pos, mask in sorted(onnx_flips):
        yield onnx_case(f"onnx-flip/{pos}^{mask:#04x}", "flip", _flip(model, pos, mask), BAD_INPUT_OR_OK)


def _flip(data: bytes, pos: int, mask: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


def mutation_cases(count: int, seed: int = 0) -> Iterator[Case]:
    """``count`` seeded random mutations of each seed: 1-4 edits (xor, insert, delete a byte),
    then sometimes a cut.  Used by ``fuzz/summary.py`` (count from NETINIT_HOSTILE_MUTATIONS)."""
    rng = random.Random(seed)
    for kind, original, make in (("st", st_seed(), st_case), ("onnx", onnx_seed(), onnx_case)):
        for index in range(count):
            data = bytearray(original)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data))
                edit = rng.randrange(3)
                if edit == 0:
                    data[at] ^= rng.randint(1, 255)
                elif edit == 1:
                    data.insert(at, rng.randrange(256))
                else:
                    del data[at]
            if rng.random() < 0.25:
                del data[rng.randrange(len(data) + 1) :]
            yield make(f"{kind}-mutate/{index}", "mutate", bytes(data), BAD_INPUT_OR_OK)


USAGE = frozenset({2})


def cli_cases() -> Iterator[Case]:
    """Hostile option values, config files, seeds and tensor names on a valid model (issue 13):
    a usage error (exit 2) in one line, or a success whose every printed line is free of
    control characters."""
    head = random.Random(13)
    model = st_bytes(
        [
            ("fc.weight", "F32", [4, 3], b"\x00" * 48),
            ("fc.bias", "F32", [4], b"\x00" * 16),
            ("norm.weight", "BF16", [4], b"\x80\x3f" * 4),
            ("head.weight", "F64", [2, 4], struct.pack("<8d", *(head.gauss(0, 1) for _ in range(8)))),
        ]
    )

    def case(name: str, args: tuple[str, ...], allowed: frozenset[int] = USAGE, **kw: Any) -> Case:
        files = {"in/model.safetensors": model, **kw.pop("files", {})}
        return Case(
            f"cli/{name}",
            "cli",
            files,
            "in/model.safetensors",
            "out/model.init.safetensors",
            args,
            allowed,
            **kw,
        )

    configs: dict[str, bytes] = {
        "all_is_the_string_false": b"all = 'false'\n",
        "all_is_an_integer": b"all = 1\n",
        "seed_is_a_float": b"seed = 1.5\n",
        "seed_is_an_array": b"seed = [1]\n",
        "seed_is_a_table": b"seed = {a = 1}\n",
        "seed_is_a_date": b"seed = 1979-05-27\n",
        "seed_5000_digits": b"seed = " + b"9" * 5000 + b"\n",
        "seed_string_5000_digits": b"seed = '" + b"9" * 5000 + b"'\n",
        "method_is_a_table": b"method = {name = 'xavier'}\n",
        "rule_is_a_number": b"[rules]\n'*' = 0.1\n",
        "unknown_key": b"colour = 'red'\n",
        "binary": bytes(range(256)),
        "deep_arrays": b"seed = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "deep_tables": b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000 + b"\n",
        "deep_method_spec": b"method = '" + b"normal(" * 3000 + b"'\n",
        "over_a_mebibyte": b"# " + b"x" * (1 << 20) + b"\n",
    }
    for name, text in configs.items():
        yield case(f"config/{name}", ("--config", "in/netinit.toml"), files={"in/netinit.toml": text})
    yield case("config/fifo", ("--config", "in/netinit.toml"), fifos=("in/netinit.toml",))
    yield case("config/device", ("--config", "/dev/zero"))
    yield case("config/folder", ("--config", "in"))
    huge = "9" * 5000
    yield case("seed/5000_digits", ("--seed", huge))
    yield case("seed/negative_5000_digits", ("--seed", "-" + huge))
    yield case("seed/inherited_5000_digits", ("--seed", "inherited"), env=(("NETINIT_SEED", huge),))
    yield case("seed/not_utf8", ("--seed", "run-\udcff"))
    yield case("seed/inherited_not_utf8", ("--seed", "inherited"), env=(("NETINIT_SEED", "\udcfe"),))
    yield case(
        "seed/escape_sequences", ("--all", "--seed", "\x1b]0;title\x07\x1b[2J"), frozenset({0}), quiet=False
    )
    for option in ("--method", "--weights", "--rule"):
        value = ("*=" if option == "--rule" else "") + "normal(" * 3000
        extra = ("--method", "random") if option == "--weights" else ()
        yield case(f"spec/nested_3000{option}", ("--all", *extra, option, value))
    yield case("spec/number_10000_digits", ("--all", "--method", "random", "--weights", "9" * 10_000))
    yield case("spec/100000_arguments", ("--all", "--method", "random(" + "1," * 100_000 + ")"))
    yield case("spec/escape_in_value", ("--all", "--method", "kaiming(mode=\x1b[2J)"))
    not_finite = {
        "normal_1e308": ("--method", "random(weights=normal(0,1e308))"),
        "constant_1e39": ("--method", "random", "--weights", "constant(1e39)"),
        "uniform_3e38": ("--method", "random", "--weights", "uniform(-3e38,3e38)"),
        "gain_1e39": ("--gain", "1e39"),
        "biases_1e308": ("--method", "random", "--biases", "1e308"),
        "identity_noise_1e308": ("--method", "identity(distribution=normal(0,1e308))"),
        "orthogonal_gain_1e39": ("--method", "orthogonal", "--gain", "1e39"),
        "bf16_constant_1e39": ("--rule", "norm.weight=constant(1e39)"),
        "f64_normal_1e200": ("--rule", "head.weight=normal(0,1e200)"),
    }
    for name, args in not_finite.items():
        yield case(f"values/{name}", ("--all", *args))
    yield case("click/unknown_option", ("--bogus\x1b[2J",))
    yield case("click/bad_choice", ("--fan-mode", "\x1b[31mred"))
    evil = [
        "\x1b]0;pwned\x07.weight",
        "b\nnetinit: error: forged.weight",
        "[/x].weight",
        "\u202e.weight",
        "\x9b2J",
    ]
    named = st_bytes([(name, "F32", [2, 2], b"\x00" * 16) for name in evil])
    for mode in ("full", "summary"):
        yield case(
            f"names/table_{mode}",
            ("--all", "--table", mode),
            frozenset({0}),
            files={"in/model.safetensors": named},
            quiet=False,
        )
    yield case(
        "names/in_an_error",
        ("--all", "--rule", "*=constant(1e39)"),
        files={"in/model.safetensors": named},
        quiet=False,
    )


FAMILIES: dict[str, Callable[[], Iterator[Case]]] = {
    "corpus": corpus_cases,
    "st-named": st_named_cases,
    "st-index": st_index_cases,
    "onnx-external": onnx_external_cases,
    "truncate": truncation_cases,
    "flip": flip_cases,
    "cli": cli_cases,
    "mutate": lambda: mutation_cases(int(os.environ.get("NETINIT_HOSTILE_MUTATIONS", "0"))),
}


def all_cases() -> list[Case]:
    return [case for make in FAMILIES.values() for case in make()]


# ------------------------------------------------------------------------------------------
# Worker: run many cases in one process under a memory limit
# ------------------------------------------------------------------------------------------
def worker(names: list[str] | None, scratch: Path, memory_bytes: int) -> None:
    """Run the cases (all, or those named) one by one, printing ``START name`` before each and a
    JSON outcome after it, under ``RLIMIT_AS = memory_bytes`` (an over-allocation fails fast)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    wanted = set(names) if names else None
    for index, case in enumerate(all_cases()):
        if wanted is not None and case.name not in wanted:
            continue
        print(f"START {case.name}", flush=True)
        outcome = run_case(case, scratch / f"c{index}")
        shutil.rmtree(scratch / f"c{index}", ignore_errors=True)
        print("DONE " + json.dumps(outcome.to_json()), flush=True)


def run_worker(
    scratch: Path, *, names: list[str] | None = None, memory_bytes: int = 2 << 30, timeout: float = 600
) -> list[Outcome]:
    """Run :func:`worker` in a subprocess; a case that never finishes is reported as a hang."""
    import subprocess

    command = [sys.executable, str(Path(__file__)), "--worker", str(scratch), str(memory_bytes)]
    env = {**os.environ, "COLUMNS": "160", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            command, input="\n".join(names or []), capture_output=True, text=True, timeout=timeout, env=env
        )
        stdout, stderr, died = proc.stdout, proc.stderr, proc.returncode != 0
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, died = "timeout", True
    outcomes: list[Outcome] = []
    current = None
    for line in stdout.splitlines():
        if line.startswith("START "):
            current = line[6:]
        elif line.startswith("DONE "):
            outcomes.append(Outcome(**json.loads(line[5:])))
            current = None
    if died and current is not None:
        outcomes.append(
            Outcome(
                current, "?", -1, stderr[-500:], timeout, [f"hang or crash of the worker: {stderr[-300:]}"]
            )
        )
    return outcomes


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        selected = [line for line in sys.stdin.read().splitlines() if line]
        worker(selected or None, Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: hostile_cases.py --worker SCRATCH MEMORY_BYTES  (case names on stdin)")
