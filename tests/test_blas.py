"""The one BLAS/LAPACK binding (the row-major wrappers of src_c/fs_blas.h,
called through scipy.linalg.cython_blas) against NumPy, for both dtypes.

The wrappers take row-major arrays and translate to Fortran BLAS by swapping
operands; these tests use non-square shapes so that a swapped dimension or
flag cannot go unnoticed, and one-row / rank-one shapes, which the wrappers
send to the BLAS-2 routines.
"""
import numpy as np
import pytest

from fastsparse import _core

DTYPES = [np.float32, np.float64]
# per-dtype tolerances (relative to the magnitude of the result)
RTOL = {np.float32: 1e-5, np.float64: 1e-13}


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def assert_close(actual, expected, dtype):
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype],
                               atol=RTOL[dtype] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("m,n,k,beta", [(4, 6, 3, 0.5), (1, 6, 3, 0.5),
                                        (4, 6, 1, 1.0), (4, 6, 1, 0.5),
                                        (1, 5, 1, 1.0)])
def test_gemm(rng, dtype, ta, tb, m, n, k, beta):
    A = _rand(rng, (k, m) if ta else (m, k), dtype)
    B = _rand(rng, (n, k) if tb else (k, n), dtype)
    C = _rand(rng, (m, n), dtype)
    expected = -2.0 * (A.T if ta else A) @ (B.T if tb else B) + beta * C
    _core._py_gemm(ta, tb, -2.0, A, B, beta, C)
    assert_close(C, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
def test_gemv(rng, dtype, trans):
    A = _rand(rng, (4, 6), dtype)
    x = _rand(rng, 4 if trans else 6, dtype)
    y = _rand(rng, 6 if trans else 4, dtype)
    expected = 2.0 * (A.T if trans else A) @ x + 0.5 * y
    _core._py_gemv(trans, 2.0, A, x, 0.5, y)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [4, 1])
def test_symm_right_upper(rng, dtype, m):
    n = 6
    S = _rand(rng, (n, n), dtype)
    S = S + S.T
    B = _rand(rng, (m, n), dtype)
    C = _rand(rng, (m, n), dtype)
    expected = 1.5 * B @ S + 2.0 * C
    _core._py_symm_right_upper(1.5, np.triu(S), B, 2.0, C)
    assert_close(C, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,beta", [(3, 1.0), (3, 0.5), (1, 1.0)])
def test_syr2k_upper_trans(rng, dtype, k, beta):
    n = 5
    A = _rand(rng, (k, n), dtype)
    B = _rand(rng, (k, n), dtype)
    S = _rand(rng, (n, n), dtype)
    S = S + S.T
    expected = beta * S - 0.5 * (A.T @ B + B.T @ A)
    C = S.copy()
    _core._py_syr2k_upper_trans(-0.5, A, B, beta, C)
    assert_close(np.triu(C), np.triu(expected), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_solve_rows(rng, dtype):
    n, nrhs = 5, 3
    A = _rand(rng, (n, n), dtype) + n * np.eye(n, dtype=dtype)
    B = _rand(rng, (nrhs, n), dtype)
    expected = np.linalg.solve(A.astype(np.float64), B.T.astype(np.float64)).T
    X = B.copy()
    info = _core._py_lu_solve(A.copy(), X)
    assert info == 0
    assert_close(X, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_reports_singular(dtype):
    A = np.zeros((3, 3), dtype=dtype)
    assert _core._py_lu_solve(A, np.ones((1, 3), dtype=dtype)) > 0


def test_invert(rng):
    A = rng.standard_normal((6, 6)) + 3 * np.eye(6)
    out = np.empty_like(A)
    assert _core.invert(A.copy(), out) == 0
    np.testing.assert_allclose(out @ A, np.eye(6), atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3])
def test_lowrank_rows(rng, dtype, k):
    V = _rand(rng, (300, 7), dtype)         # more rows than one chunk
    P, Q = _rand(rng, (k, 7), dtype), _rand(rng, (k, 7), dtype)
    g = _rand(rng, k, dtype)
    expected = V @ (np.eye(7) + P.T @ np.diag(g) @ Q)
    assert _core.lowrank_rows(V, P, Q, g) == 0
    assert_close(V, expected, dtype)
