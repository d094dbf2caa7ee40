"""Generate the committed corpus of malformed safetensors files (run from anywhere).

Each case is the smallest file showing one problem.  ``expected.json`` maps the file name to the
exact one-line error netinit gives (``{json_error}`` stands for the message of Python's own
``json`` module, which differs between Python versions), and to whether the reference loader (safetensors 0.8, Rust)
also rejects it: netinit is deliberately stricter only for duplicate tensor names.

    python tests/corpus/safetensors/make_corpus.py          # rewrite the corpus
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent


def st(header: str | bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    raw = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    length = len(raw) if declared is None else declared
    return struct.pack("<Q", length) + raw + data


def entry(name: str, dtype: str, shape: list[int], begin: int, end: int) -> str:
    return f'"{name}":{{"dtype":"{dtype}","shape":{json.dumps(shape)},"data_offsets":[{begin},{end}]}}'


F32x2 = b"\x00" * 8

# name -> (file bytes, exact error after "<file name>: ", reference rejects it too)
CASES: dict[str, tuple[bytes, str, bool]] = {
    "empty": (
        b"",
        "file is 0 bytes, too short for safetensors (it starts with an 8-byte header length)",
        True,
    ),
    "short_prefix": (
        b"\x05\x00\x00",
        "file is 3 bytes, too short for safetensors (it starts with an 8-byte header length)",
        True,
    ),
    "huge_declared_length": (
        st("{}", declared=1 << 62),
        "declared header length 4611686018427387904 bytes exceeds the limit of 100000000; "
        "the file is corrupt or not safetensors",
        True,
    ),
    "length_past_eof": (
        st("{}", declared=4096),
        "declared header length 4096 bytes runs past the end of the file (10 bytes); "
        "the file is truncated or not safetensors",
        True,
    ),
    "not_utf8": (st(b'{"w\xff":1}'), "header is not valid UTF-8 (byte 11 of the file)", True),
    "bom": (
        st("\ufeff{}"),
        "header starts with a UTF-8 byte order mark, which JSON headers must not have",
        True,
    ),
    "trailing_comma": (
        st("{" + entry("w", "F32", [2], 0, 8) + ",}", F32x2),
        "header is not valid JSON: {json_error} (line 1 column 55)",
        True,
    ),
    "nul_padding": (
        st("{" + entry("w", "F32", [2], 0, 8) + "}\x00\x00\x00", F32x2),
        "header is not valid JSON: {json_error} (line 1 column 55)",
        True,
    ),
    "nan_in_shape": (
        st('{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}'),
        "header: JSON contains NaN, which strict JSON does not allow",
        True,
    ),
    "infinity_in_metadata": (
        st('{"__metadata__":{"a":Infinity}}'),
        "header: JSON contains Infinity, which strict JSON does not allow",
        True,
    ),
    "duplicate_tensor_name": (
        st("{" + entry("w", "F32", [2], 0, 8) + "," + entry("w", "F32", [2], 0, 8) + "}", F32x2),
        'header: key "w" appears twice in one JSON object (names must be unique)',
        False,
    ),
    "duplicate_field": (
        st('{"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}', F32x2),
        'header: key "dtype" appears twice in one JSON object (names must be unique)',
        True,
    ),
    "duplicate_metadata": (
        st('{"__metadata__":{},"__metadata__":{}}'),
        'header: key "__metadata__" appears twice in one JSON object (names must be unique)',
        True,
    ),
    "lone_surrogate_name": (
        st('{"w\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', F32x2),
        "tensor 'w\\ud800': the name contains a lone UTF-16 surrogate",
        True,
    ),
    "shape_true": (
        st('{"w":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', b"\x00" * 4),
        "tensor 'w': shape entry true is not a non-negative integer below 2^64",
        True,
    ),
    "shape_float": (
        st('{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', F32x2),
        "tensor 'w': shape entry 2.0 is not a non-negative integer below 2^64",
        True,
    ),
    "shape_exponent": (
        st('{"w":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}', F32x2),
        "tensor 'w': shape entry 2e0 is not a non-negative integer below 2^64",
        True,
    ),
    "shape_negative": (
        st('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}'),
        "tensor 'w': shape entry -1 is not a non-negative integer below 2^64",
        True,
    ),
    "shape_negative_zero": (
        st('{"w":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}'),
        "tensor 'w': shape entry -0 is not a non-negative integer below 2^64",
        True,
    ),
    "shape_2_pow_64": (
        st('{"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,0]}}'),
        "tensor 'w': shape entry 18446744073709551616 is not a non-negative integer below 2^64",
        True,
    ),
    "shape_not_list": (
        st('{"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}', F32x2),
        "tensor 'w': shape \"2\" is not a list of integers",
        True,
    ),
    "shape_overflow": (
        st('{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'),
        "tensor 'w': shape [4294967296, 4294967296] has too many elements (its size overflows 64 bits)",
        True,
    ),
    "three_offsets": (
        st('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}', F32x2),
        "tensor 'w': data_offsets [0, 8, 8] must be a list of exactly two integers [begin, end]",
        True,
    ),
    "offset_float": (
        st('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}}', F32x2),
        "tensor 'w': data_offsets entry 8.0 is not a non-negative integer below 2^64",
        True,
    ),
    "missing_offsets": (
        st('{"w":{"dtype":"F32","shape":[2]}}'),
        "tensor 'w': entry has no \"data_offsets\"",
        True,
    ),
    "lowercase_dtype": (
        st('{"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}', F32x2),
        "tensor 'w': unknown dtype \"f32\" (expected one of BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, "
        "F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64)",
        True,
    ),
    "header_is_list": (st("[]"), "header is a JSON list, not an object of tensors", True),
    "entry_not_object": (
        st('{"w":[0,8]}', F32x2),
        "tensor 'w': entry must be an object with dtype, shape and data_offsets, got [0, 8]",
        True,
    ),
    "metadata_int_value": (
        st('{"__metadata__":{"step":5}}'),
        '"__metadata__" entry "step" must be a string, got 5',
        True,
    ),
    "metadata_is_list": (
        st('{"__metadata__":["a"]}'),
        '"__metadata__" must be an object of strings, got ["a"]',
        True,
    ),
    "tensor_named_metadata": (
        st('{"__metadata__":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', F32x2),
        'a tensor is named "__metadata__", a name reserved for the metadata map; rename the tensor',
        True,
    ),
    "size_mismatch": (
        st("{" + entry("h.0.attn.c_attn.weight", "F32", [10, 3], 0, 100) + "}", b"\x00" * 100),
        "tensor 'h.0.attn.c_attn.weight': data_offsets [0, 100] hold 100 bytes but shape [10, 3] x F32 needs 120",
        True,
    ),
    "gap": (
        st("{" + entry("a", "F32", [2], 0, 8) + "," + entry("b", "F32", [2], 12, 20) + "}", b"\x00" * 20),
        "tensor 'b': data_offsets [12, 20] leave a gap after the previous tensor, which ends at 8; "
        "tensors must be packed from 0 without gaps",
        True,
    ),
    "overlap": (
        st("{" + entry("a", "F32", [2], 0, 8) + "," + entry("b", "F32", [2], 4, 12) + "}", b"\x00" * 12),
        "tensor 'b': data_offsets [4, 12] overlap the previous tensor, which ends at 8; "
        "tensors must be packed from 0 without gaps",
        True,
    ),
    "not_from_zero": (
        st("{" + entry("a", "F32", [2], 4, 12) + "}", b"\x00" * 12),
        "tensor 'a': data_offsets [4, 12] leave a gap after the previous tensor, which ends at 0; "
        "tensors must be packed from 0 without gaps",
        True,
    ),
    "end_before_begin": (
        st("{" + entry("a", "F32", [0], 8, 0) + "}", b"\x00" * 8),
        "tensor 'a': data_offsets [8, 0] end before they begin",
        True,
    ),
    "offset_beyond_file": (
        st(
            "{" + entry("a", "F32", [2], 0, 8) + "," + entry("b", "F32", [1 << 40], 8, 8 + (4 << 40)) + "}",
            F32x2,
        ),
        "the tensors need 4398046511112 data bytes but only 8 follow the header; the file is truncated",
        True,
    ),
    "trailing_bytes": (
        st("{" + entry("w", "F32", [2], 0, 8) + "}", F32x2 + b"<html>"),
        "6 bytes follow the last tensor's data (from byte 70); "
        "a safetensors file must end with its data (truncate it or re-export it)",
        True,
    ),
    "truncated_data": (
        st("{" + entry("w", "F32", [2], 0, 8) + "}", b"\x00" * 5),
        "the tensors need 8 data bytes but only 5 follow the header; the file is truncated",
        True,
    ),
    "f4_odd_count": (
        st('{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}', b"\x00"),
        "tensor 'w': shape [3] x F4 is 12 bits, not a whole number of bytes",
        True,
    ),
    "deep_nesting": (
        st(
            '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + "[" * 5_000 + "]" * 5_000 + "}}",
            F32x2,
        ),
        "header JSON is nested too deeply",
        True,
    ),
}


def expected_error(name: str) -> str:
    return f"{name}.safetensors: {CASES[name][1]}"


def write_corpus(folder: Path = HERE) -> None:
    expectations = {}
    for name, (content, _, reference_rejects) in CASES.items():
        (folder / f"{name}.safetensors").write_bytes(content)
        expectations[f"{name}.safetensors"] = {
            "error": expected_error(name),
            "reference_rejects": reference_rejects,
        }
    (folder / "expected.json").write_text(json.dumps(expectations, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write_corpus()
