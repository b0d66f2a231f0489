"""Every private BLAS/LAPACK wrapper against NumPy, for both dtypes.

The wrappers take row-major arrays and translate to Fortran BLAS by swapping
operands; these tests use non-square shapes so that a swapped dimension or
flag cannot go unnoticed.
"""
import numpy as np
import pytest

from fastsparse import _blas

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
def test_level1(rng, dtype):
    x = _rand(rng, 7, dtype)
    y = _rand(rng, 7, dtype)
    assert_close(_blas._py_dot(x, y), x @ y, dtype)
    assert_close(_blas._py_nrm2(x), np.linalg.norm(x), dtype)
    y2 = y.copy()
    _blas._py_axpy(-1.5, x, y2)
    assert_close(y2, y - 1.5 * x, dtype)
    x2 = x.copy()
    _blas._py_scal(2.5, x2)
    assert_close(x2, 2.5 * x, dtype)
    z = np.zeros_like(x)
    _blas._py_copy(x, z)
    np.testing.assert_array_equal(z, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
def test_gemv(rng, dtype, trans):
    A = _rand(rng, (5, 3), dtype)
    x = _rand(rng, 5 if trans else 3, dtype)
    y = _rand(rng, 3 if trans else 5, dtype)
    expected = 2.0 * (A.T if trans else A) @ x + 0.5 * y
    _blas._py_gemv(trans, 2.0, A, x, 0.5, y)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ger(rng, dtype):
    A = _rand(rng, (5, 3), dtype)
    x = _rand(rng, 5, dtype)
    y = _rand(rng, 3, dtype)
    expected = A - 0.7 * np.outer(x, y)
    _blas._py_ger(-0.7, x, y, A)
    assert_close(A, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("upper", [True, False])
def test_symv_reads_one_triangle(rng, dtype, upper):
    S = _rand(rng, (4, 4), dtype)
    S = S + S.T
    x = _rand(rng, 4, dtype)
    y = _rand(rng, 4, dtype)
    expected = 1.5 * S @ x - y
    tri = np.triu(S) if upper else np.tril(S)
    tri[(np.tril_indices(4, -1) if upper else np.triu_indices(4, 1))] = np.nan
    _blas._py_symv(upper, 1.5, tri, x, -1.0, y)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("upper", [True, False])
def test_syr2_updates_one_triangle(rng, dtype, upper):
    S = _rand(rng, (4, 4), dtype)
    S = S + S.T
    x = _rand(rng, 4, dtype)
    y = _rand(rng, 4, dtype)
    expected = S - 0.3 * (np.outer(x, y) + np.outer(y, x))
    A = S.copy()
    _blas._py_syr2(upper, -0.3, x, y, A)
    part = np.triu if upper else np.tril
    other = np.tril if upper else np.triu
    assert_close(part(A), part(expected), dtype)
    # the other triangle is left alone
    np.testing.assert_array_equal(other(A, -1 if upper else 1),
                                  other(S, -1 if upper else 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm(rng, dtype, ta, tb):
    m, n, k = 4, 6, 3
    A = _rand(rng, (k, m) if ta else (m, k), dtype)
    B = _rand(rng, (n, k) if tb else (k, n), dtype)
    C = _rand(rng, (m, n), dtype)
    expected = -2.0 * (A.T if ta else A) @ (B.T if tb else B) + 0.5 * C
    _blas._py_gemm(ta, tb, -2.0, A, B, 0.5, C)
    assert_close(C, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("upper", [True, False])
def test_symm(rng, dtype, left, upper):
    m, n = 4, 6
    S = _rand(rng, (m, m) if left else (n, n), dtype)
    S = S + S.T
    B = _rand(rng, (m, n), dtype)
    C = _rand(rng, (m, n), dtype)
    expected = 1.5 * (S @ B if left else B @ S) + 2.0 * C
    tri = (np.triu if upper else np.tril)(S)
    _blas._py_symm(left, upper, 1.5, tri, B, 2.0, C)
    assert_close(C, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("upper", [True, False])
def test_syr2k(rng, dtype, trans, upper):
    n, k = 5, 3
    A = _rand(rng, (k, n) if trans else (n, k), dtype)
    B = _rand(rng, (k, n) if trans else (n, k), dtype)
    S = _rand(rng, (n, n), dtype)
    S = S + S.T
    if trans:
        expected = S - 0.5 * (A.T @ B + B.T @ A)
    else:
        expected = S - 0.5 * (A @ B.T + B @ A.T)
    C = S.copy()
    _blas._py_syr2k(upper, trans, -0.5, A, B, 1.0, C)
    part = np.triu if upper else np.tril
    assert_close(part(C), part(expected), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
def test_lu_solve_rows(rng, dtype, trans):
    n, nrhs = 5, 3
    A = _rand(rng, (n, n), dtype) + n * np.eye(n, dtype=dtype)
    B = _rand(rng, (nrhs, n), dtype)
    op = A.T if trans else A
    expected = np.linalg.solve(op.astype(np.float64), B.T.astype(np.float64)).T
    X = B.copy()
    info = _blas._py_lu_solve(trans, A.copy(), X)
    assert info == 0
    assert_close(X, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lu_reports_singular(dtype):
    A = np.zeros((3, 3), dtype=dtype)
    assert _blas._py_lu_solve(False, A, np.ones((1, 3), dtype=dtype)) > 0
