"""Orthonormal factors for the orthogonal initializer: CholeskyQR, in the array's dtype.

:func:`orthonormalize` gives the Q factor of a tall or wide matrix with R's diagonal positive
(the sign correction that makes Q Haar-distributed when the input is Gaussian).  float32 blocks
go through NumPy's own OpenBLAS (:mod:`netinit_cli.blas`, SYRK/POTRF/TRSM in float32) when its
symbols are found; otherwise, or for near-square blocks, CholeskyQR2 in NumPy matrix products,
and Householder QR in float64 as the last resort.
"""

from __future__ import annotations

import math

import numpy as np

from . import blas

# float32 CholeskyQR through OpenBLAS (blas.py) by the block's aspect ratio a = min/max of its
# sides.  A Gaussian block's condition number is about (1 + √a)/(1 − √a) (Marchenko–Pastur) and
# one pass leaves an orthogonality error of about cond²·2⁻²⁴: up to a = 0.7 (cond ≈ 10) one pass
# stays near 1e-6; up to 0.9 (cond ≈ 38) a second pass brings it back to rounding level; closer
# to square the float32 Gram matrix may not be positive definite and the NumPy path (first Gram
# in float64) runs.
ONE_PASS_ASPECT = 0.7
TWO_PASS_ASPECT = 0.9


def orthonormalize_in_place(matrix: np.ndarray) -> bool:
    """Orthonormalize a C-contiguous float32 block in place with BLAS; False if not done."""
    rows, cols = matrix.shape
    aspect = min(rows, cols) / max(rows, cols, 1)
    if not (blas.AVAILABLE and matrix.dtype == np.float32 and matrix.flags.c_contiguous):
        return False
    if aspect > TWO_PASS_ASPECT or min(rows, cols) == 0:
        return False
    saved = None if aspect <= ONE_PASS_ASPECT else matrix.copy()
    gram = np.empty((min(rows, cols),) * 2, np.float32)
    try:
        for _ in range(1 if aspect <= ONE_PASS_ASPECT else 2):
            blas.cholesky_qr_pass(matrix, gram)
    except blas.NotPositiveDefinite:
        if saved is None:
            return False  # potrf failed before any trsm: matrix unchanged
        matrix[...] = saved
        return False
    return True


def orthonormalize(a: np.ndarray) -> np.ndarray:
    """The Q factor (positive-diagonal R) of a tall or wide matrix, in ``a``'s dtype."""
    work = np.array(a, order="C")
    if orthonormalize_in_place(work):
        return work
    if a.shape[0] < a.shape[1]:
        return orthonormalize(a.T).T
    work = np.ascontiguousarray(a)
    try:
        return _cholesky_qr2(work)
    except np.linalg.LinAlgError:
        q, r = np.linalg.qr(work.astype(np.float64))
        q *= np.where(np.diagonal(r) < 0, -1.0, 1.0)
        return q.astype(a.dtype)


def _cholesky_qr2(a: np.ndarray) -> np.ndarray:
    """CholeskyQR2 on a tall matrix (Yamamoto et al. 2015), BLAS-3 only, in ``a``'s dtype.

    Pass: G = AᵀA, R = chol(G) (upper, positive diagonal), A ← A·R⁻¹.  One pass loses
    orthogonality like cond(A)²·u; the second pass, on an almost orthogonal matrix, brings it to
    the rounding level.  When the Marchenko–Pastur estimate of cond(A) for a Gaussian matrix,
    (√m + √n)/(√m − √n), is too large for float32 (near-square blocks), the first Gram matrix is
    formed in float64 so that the first pass only loses cond(A)·u.  If the second Gram matrix is
    still far from I, a third pass runs.
    """
    m, n = a.shape
    single = a.dtype == np.float32
    ratio = math.sqrt(n / m)
    condition = (1 + ratio) / max(1 - ratio, 1e-12)
    q = a.copy()
    passes = 2
    for step in range(3):
        if step == passes:
            break
        if step == 0 and single and condition > 100:
            wide = q.astype(np.float64)
            gram = wide.T @ wide
        else:
            gram = q.T @ q  # NumPy runs x.T @ x as one SYRK
            if step == 1 and np.max(np.abs(gram - np.eye(n, dtype=gram.dtype))) > 1e-2:
                passes = 3
        _right_solve_upper(q, _cholesky_upper(gram).astype(q.dtype))
    return q


def _cholesky_upper(gram: np.ndarray) -> np.ndarray:
    """Upper R with RᵀR = gram and positive diagonal, recursively in ``gram``'s dtype.

    NumPy's own cholesky always computes in float64; splitting into halves keeps the bulk of
    the work in matrix products of the array's dtype (R12 = R11⁻ᵀ·G12, S = G22 − R12ᵀ·R12).
    """
    n = gram.shape[0]
    if n <= 256:
        return np.linalg.cholesky(gram.astype(np.float64)).T.astype(gram.dtype)
    k = n // 2
    upper = np.zeros_like(gram)
    upper[:k, :k] = _cholesky_upper(gram[:k, :k])
    coupling = np.ascontiguousarray(gram[:k, k:].T)  # R12ᵀ = G12ᵀ·R11⁻¹
    _right_solve_upper(coupling, upper[:k, :k])
    upper[:k, k:] = coupling.T
    upper[k:, k:] = _cholesky_upper(gram[k:, k:] - coupling @ coupling.T)
    return upper


def _right_solve_upper(a: np.ndarray, upper: np.ndarray) -> None:
    """a ← a·upper⁻¹ in place (recursive blocked triangular solve: matrix products only)."""
    n = upper.shape[0]
    if n <= 128:
        a[...] = a @ np.linalg.inv(upper.astype(np.float64)).astype(a.dtype)
        return
    k = n // 2
    _right_solve_upper(a[:, :k], upper[:k, :k])
    a[:, k:] -= a[:, :k] @ upper[:k, k:]
    _right_solve_upper(a[:, k:], upper[k:, k:])
