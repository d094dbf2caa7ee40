"""Element types by their safetensors names, with the numpy (ml_dtypes) and ONNX equivalents.

numpy knows no bfloat16 or float8; ml_dtypes (a dependency of onnx) registers them.  Values are
always generated in float32 (float64 for F64 tensors) and rounded once, here.
"""

from __future__ import annotations

import numpy as np

from netinit_cli.errors import UsageError

# safetensors name -> numpy dtype
_NUMPY: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "C64": np.dtype(np.complex64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

# The low-precision floats come from ml_dtypes, imported (about 4 ms) the first time one is needed.
_ML_DTYPES = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}


def _add_ml_dtypes() -> None:
    if "BF16" in _NUMPY:
        return
    import ml_dtypes

    for name, attribute in _ML_DTYPES.items():
        _NUMPY[name] = np.dtype(getattr(ml_dtypes, attribute))


# Floats netinit fills.  F8_E8M0 is a scale format that cannot hold 0 or negatives, and C64 is
# complex: neither is ever filled.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})

# ONNX TensorProto.DataType numbers (onnx.TensorProto.FLOAT == 1, …), kept here so this module
# does not import onnx.
_ONNX: dict[int, str] = {
    1: "F32",
    2: "U8",
    3: "I8",
    4: "U16",
    5: "I16",
    6: "I32",
    7: "I64",
    9: "BOOL",
    10: "F16",
    11: "F64",
    12: "U32",
    13: "U64",
    14: "C64",
    16: "BF16",
    17: "F8_E4M3",  # FLOAT8E4M3FN
    18: "F8_E4M3FNUZ",
    19: "F8_E5M2",
    20: "F8_E5M2FNUZ",
}


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def numpy_dtype(dtype: str) -> np.dtype:
    found = _NUMPY.get(dtype)
    if found is None and dtype in _ML_DTYPES:
        _add_ml_dtypes()
        found = _NUMPY[dtype]
    if found is None:
        raise UsageError(f"unsupported dtype {dtype!r}")
    return found


def itemsize(dtype: str) -> int:
    return numpy_dtype(dtype).itemsize


def onnx_to_name(elem_type: int) -> str:
    """ONNX element type number -> our name; unknown types get an opaque 'ONNX<n>' name."""
    return _ONNX.get(elem_type, f"ONNX{elem_type}")


def compute_dtype(dtype: str) -> np.dtype:
    """The dtype values are generated in before rounding: float64 for F64, float32 otherwise."""
    return np.dtype(np.float64) if dtype == "F64" else np.dtype(np.float32)


def cast_checked(values: np.ndarray, dtype: str, tensor: str) -> np.ndarray:
    """Round generated values to ``dtype`` once, refusing values the format cannot hold: every
    value must be finite and within the dtype's range, whatever the dtype.

    float8_e4m3fn turns overflow into NaN and e5m2 into inf, silently: check before casting.
    Values already in ``dtype`` (F32, F64) are only checked to be finite (the plan refuses
    parameters that could overflow; this is the safety net, one pass over the values).
    """
    target = numpy_dtype(dtype)
    if values.dtype == target:
        if values.size and values.dtype.kind == "f" and not np.isfinite(values).all():
            with np.errstate(all="ignore"):
                peak = float(np.max(np.abs(values)))
            raise _misfit(tensor, dtype, peak, _largest_finite(target))
        return _contiguous(values)
    if values.size:
        limit = _largest_finite(target)
        peak = float(np.max(np.abs(values)))
        if not np.isfinite(peak) or peak > limit:
            raise _misfit(tensor, dtype, peak, limit)
    if target == np.float16 and values.dtype == np.float32:
        return float32_to_float16(_contiguous(values))
    return _contiguous(values.astype(target))


def _misfit(tensor: str, dtype: str, peak: float, limit: float) -> UsageError:
    return UsageError(
        f"tensor {tensor!r}: a generated value ({peak:.4g}) does not fit {dtype} "
        f"(largest finite {limit:.4g}); use a smaller scale or a wider dtype"
    )


def _contiguous(values: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping a 0-d array 0-d (``np.ascontiguousarray`` makes it 1-d)."""
    return np.require(values, requirements="C")


def _largest_finite(dtype: np.dtype) -> float:
    if dtype.kind == "f":  # numpy's own float16/32
        return float(np.finfo(dtype).max)
    import ml_dtypes  # bfloat16, float8: numpy's finfo does not know them

    return float(ml_dtypes.finfo(dtype).max)  # type: ignore[no-untyped-call]


_U32 = np.uint32
# float32 → float16 with integer arithmetic (F. Giesen's float_to_half_fast3_rtne).  Normal
# results: drop 13 mantissa bits with round-to-nearest-even (add 0xFFF plus the lowest kept bit)
# and rebias the exponent from 127 to 15 in the same addition.  Subnormal results: adding a
# float whose exponent aligns the 10 kept bits at the bottom lets the FPU round, then the
# magic's bits are subtracted.
_REBIAS = _U32((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)
_SUBNORMAL_MAGIC = _U32(((127 - 15) + (23 - 10) + 1) << 23)
_SMALLEST_NORMAL = _U32(113 << 23)  # 2**-14, float16's smallest normal, as float32 bits


def float32_to_float16(values: np.ndarray) -> np.ndarray:
    """``values.astype(np.float16)`` bit for bit, about 2.5x faster than NumPy's scalar cast loop,
    for finite values of magnitude at most
    65504 (float16's largest; :func:`cast_checked` refuses anything else before calling this).
    Checked against NumPy on every float32 in that range."""
    bits = values.reshape(-1).view(_U32)
    magnitude = np.bitwise_and(bits, _U32(0x7FFFFFFF))
    half = np.right_shift(magnitude, _U32(13))
    np.bitwise_and(half, _U32(1), out=half)  # the lowest kept bit: ties go to even
    np.add(half, magnitude, out=half)
    np.add(half, _REBIAS, out=half)
    np.right_shift(half, _U32(13), out=half)
    subnormal = np.less(magnitude, _SMALLEST_NORMAL)
    if subnormal.any():
        rounded = np.add(magnitude.view(np.float32), _SUBNORMAL_MAGIC.view(np.float32)).view(_U32)
        np.subtract(rounded, _SUBNORMAL_MAGIC, out=rounded)
        np.copyto(half, rounded, where=subnormal)
    np.right_shift(bits, _U32(16), out=magnitude)
    np.bitwise_and(magnitude, _U32(0x8000), out=magnitude)  # the sign, in float16's place
    np.bitwise_or(half, magnitude, out=half)
    return half.astype(np.uint16).view(np.float16).reshape(values.shape)
