"""Rounding generated float32 values to the stored dtype: the fast float16 path must give
NumPy's ``astype(np.float16)`` bit for bit (round to nearest even, subnormals, signed zeros)."""

from __future__ import annotations

import numpy as np
import pytest

from netinit_cli.dtypes import cast_checked, float32_to_float16
from netinit_cli.errors import UsageError

F16_MAX_BITS = 0x477FE000  # 65504.0 as float32 bits
CHUNK = 1 << 20


def assert_same_as_numpy(bits: np.ndarray) -> None:
    """For these positive float32 bit patterns and their negatives, chunk by chunk."""
    for start in range(0, bits.size, CHUNK):
        part = bits[start : start + CHUNK]
        for signed in (part, part | np.uint32(0x80000000)):
            values = signed.view(np.float32)
            got = float32_to_float16(values).view(np.uint16)
            want = values.astype(np.float16).view(np.uint16)
            wrong = np.flatnonzero(got != want)
            assert wrong.size == 0, (
                f"{wrong.size} values differ, e.g. float32 bits {int(signed[wrong[0]]):#010x}: "
                f"got {int(got[wrong[0]]):#06x}, NumPy {int(want[wrong[0]]):#06x}"
            )


@pytest.mark.slow  # 184 million conversions, about 14 s
def test_every_float32_that_rounds_to_a_float16_subnormal_or_zero_boundary() -> None:
    """Exponents 102..112 (2**-25 up to float16's smallest normal): every bit pattern, so every
    rounding position of the subnormal range and every tie is covered."""
    assert_same_as_numpy(np.arange(102 << 23, 113 << 23, dtype=np.uint32))


def test_every_normal_float16_result_with_every_kind_of_dropped_bits() -> None:
    """Every sign, exponent and kept mantissa up to 65504, with the 13 dropped bits set to each
    pattern that decides the rounding: zero, just above zero, just below the tie, the tie,
    just above it, all ones."""
    upper = np.arange(113 << 10, (F16_MAX_BITS >> 13) + 1, dtype=np.uint32) << np.uint32(13)
    for low in (0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF):
        bits = upper | np.uint32(low)
        assert_same_as_numpy(bits[bits <= F16_MAX_BITS])


def test_tiny_values_and_zero() -> None:
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 102 << 23, size=1 << 20, dtype=np.uint32)
    assert_same_as_numpy(np.concatenate([np.array([0, 1, (102 << 23) - 1], np.uint32), tiny]))


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5, 2)])
def test_shape_and_dtype_are_kept(shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    rounded = cast_checked(values, "F16", "t")
    assert rounded.dtype == np.float16 and rounded.shape == shape and rounded.flags.c_contiguous
    assert np.array_equal(rounded.view(np.uint16), values.astype(np.float16).view(np.uint16))


def test_values_beyond_float16_are_refused_before_rounding() -> None:
    with pytest.raises(UsageError, match=r"does not fit F16 \(largest finite 6.55e\+04\)"):
        cast_checked(np.array([1.0, 70000.0], np.float32), "F16", "t")


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_a_scalar_stays_a_scalar(dtype: str) -> None:
    """A 0-d tensor (CLIP's logit_scale, a weight-norm magnitude with dim=None) keeps shape ()."""
    values = np.array(2.6592, np.float64 if dtype == "F64" else np.float32)
    rounded = cast_checked(values, dtype, "logit_scale")
    assert rounded.shape == () and rounded.flags.c_contiguous
