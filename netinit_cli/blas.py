"""float32 BLAS-3 and LAPACK from NumPy's own bundled OpenBLAS, through ctypes.

NumPy's ``linalg`` computes in float64 and exposes no SYRK, TRSM or POTRF; the OpenBLAS it ships
(``numpy.libs/libscipy_openblas64_*.so`` in the wheels) has them, with symbol names that depend on
the wheel build (``scipy_cblas_ssyrk64_`` …).  :data:`AVAILABLE` says whether they were found at
import; callers keep a pure-NumPy path for when they were not.  No new dependency: only the
library NumPy already loaded.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import numpy as np

# CBLAS / LAPACKE enum values (cblas.h, lapacke.h).
_ROW_MAJOR, _NO_TRANS, _TRANS, _UPPER, _LEFT, _RIGHT, _NON_UNIT = 101, 111, 112, 121, 141, 142, 131
# Symbol name patterns of NumPy wheels' OpenBLAS builds, newest first: prefix, suffix.
_NAMINGS = (("scipy_", "64_"), ("", "64_"), ("", ""))


def _load() -> tuple[Any, Any, Any] | None:
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(folder, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in _NAMINGS:
            names = (
                f"{prefix}cblas_ssyrk{suffix}",
                f"{prefix}cblas_strsm{suffix}",
                f"{prefix}LAPACKE_spotrf{suffix}",
            )
            if not all(hasattr(lib, name) for name in names):
                continue
            # ILP64 builds (the "64_" suffix) take 64-bit integers.
            index = ctypes.c_int64 if suffix.startswith("64") else ctypes.c_int
            ptr, f32, enum = ctypes.c_void_p, ctypes.c_float, ctypes.c_int
            syrk, trsm, potrf = (getattr(lib, name) for name in names)
            syrk.argtypes = [enum, enum, enum, index, index, f32, ptr, index, f32, ptr, index]
            syrk.restype = None
            trsm.argtypes = [enum, enum, enum, enum, enum, index, index, f32, ptr, index, ptr, index]
            trsm.restype = None
            potrf.argtypes = [enum, ctypes.c_char, index, ptr, index]
            potrf.restype = index
            return syrk, trsm, potrf
    return None


_FUNCTIONS = None if os.environ.get("NETINIT_NO_BLAS") else _load()
AVAILABLE = _FUNCTIONS is not None


class NotPositiveDefinite(ArithmeticError):
    """The Gram matrix lost definiteness in float32 (the block is too ill-conditioned)."""


def cholesky_qr_pass(matrix: np.ndarray, gram: np.ndarray | None = None) -> None:
    """One CholeskyQR pass in place on a C-contiguous float32 matrix, in float32 throughout.

    Wide [m, n], m ≤ n (rows orthonormalized): G = W·Wᵀ (SYRK), G = RᵀR (POTRF, upper, positive
    diagonal), W ← R⁻ᵀ·W (TRSM).  Tall (columns orthonormalized): G = WᵀW, W ← W·R⁻¹.  The result
    is the Q factor of the QR decomposition with R's diagonal positive; its loss of orthogonality
    is about cond(W)²·2⁻²⁴.  ``gram`` is optional scratch of shape (k, k), k = min(m, n).
    """
    assert _FUNCTIONS is not None, "blas.AVAILABLE is False"
    if matrix.dtype != np.float32 or not matrix.flags.c_contiguous or matrix.ndim != 2:
        raise TypeError("cholesky_qr_pass needs a C-contiguous 2-D float32 array")
    syrk, trsm, potrf = _FUNCTIONS
    m, n = matrix.shape
    k = min(m, n)
    if gram is None:
        gram = np.empty((k, k), np.float32)
    wide = m <= n
    data = matrix.ctypes.data
    # Row-major SYRK: C = A·Aᵀ with A = W (wide, inner dimension n) or C = Aᵀ·A (tall, inner m).
    syrk(
        _ROW_MAJOR,
        _UPPER,
        _NO_TRANS if wide else _TRANS,
        k,
        n if wide else m,
        1.0,
        data,
        n,
        0.0,
        gram.ctypes.data,
        k,
    )
    info = potrf(_ROW_MAJOR, b"U", k, gram.ctypes.data, k)
    if info != 0:
        raise NotPositiveDefinite(f"potrf info {info}")
    if wide:
        trsm(_ROW_MAJOR, _LEFT, _UPPER, _TRANS, _NON_UNIT, m, n, 1.0, gram.ctypes.data, k, data, n)
    else:
        trsm(_ROW_MAJOR, _RIGHT, _UPPER, _NO_TRANS, _NON_UNIT, m, n, 1.0, gram.ctypes.data, k, data, n)
