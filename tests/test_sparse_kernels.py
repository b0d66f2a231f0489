"""The C kernels of src_c/ (sparse gathers, scatters, Gram) against NumPy."""
import numpy as np
import pytest
import scipy.sparse as sp

from fastsparse import _core

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-13}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 7, 130])
def test_gather_dots(rng, dtype, d):
    V = rng.standard_normal((50, d)).astype(dtype)
    idx = np.array([3, 49, 0, 3], dtype=np.int64)
    u = rng.standard_normal(d).astype(dtype)
    out = np.zeros(4, dtype=dtype)
    _core._py_gather_dots(V, idx, u, out)
    # accumulated in double: the float64 product, rounded once
    exact = V[idx].astype(np.float64) @ u.astype(np.float64)
    np.testing.assert_allclose(out, exact, rtol=RTOL[dtype] / 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_combine(rng, dtype):
    V = rng.standard_normal((50, 7)).astype(dtype)
    idx = np.array([3, 49, 0, 3], dtype=np.int64)
    coef = rng.standard_normal(4).astype(dtype)
    out = np.full(7, np.nan, dtype=dtype)  # must be overwritten, not added to
    _core._py_gather_combine(V, idx, coef, out)
    np.testing.assert_allclose(out, coef @ V[idx], rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("incw", [1, 3])
def test_scatter_axpy(rng, dtype, incw):
    V = rng.standard_normal((50, 7)).astype(dtype)
    idx = np.array([3, 49, 0, 3], dtype=np.int64)  # repeated row: both added
    coef = rng.standard_normal(4).astype(dtype)
    wbuf = rng.standard_normal(7 * incw).astype(dtype)
    w = wbuf[::incw]
    expected = V.copy()
    for k, j in enumerate(idx):
        expected[j] += coef[k] * w
    _core._py_scatter_axpy(V, idx, coef, wbuf, incw)
    np.testing.assert_allclose(V, expected, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_gram_add(rng, dtype):
    X = sp.random_array((6, 20), density=0.3, random_state=1, format="csr",
                        dtype=dtype)
    X.sum_duplicates()
    G0 = rng.standard_normal((6, 6)).astype(dtype)
    G = G0.copy()
    _core._py_csr_gram_add(X.indptr.astype(np.int64), X.indices.astype(np.int64),
                           X.data.astype(dtype), G)
    Xd = X.toarray()
    np.testing.assert_allclose(G, G0 + Xd @ Xd.T, rtol=RTOL[dtype],
                               atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_gram_add_shared_columns(rng, dtype):
    """Rows that share many columns (Zipf indices, rows of 0 to 7 entries):
    from G = 0, every entry is the sum over the shared columns in ascending
    column order, in the dtype (bit for bit)."""
    m = 60
    rows = [np.unique(np.minimum(rng.zipf(1.3, rng.integers(0, 8)), 500) - 1)
            for _ in range(m)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate(rows).astype(np.int64)
    values = rng.standard_normal(indices.size).astype(dtype)
    vals = [values[indptr[i]:indptr[i + 1]] for i in range(m)]
    G = np.zeros((m, m), dtype=dtype)
    _core._py_csr_gram_add(indptr, indices, values, G)
    expected = np.zeros((m, m), dtype=dtype)
    for i in range(m):
        for j in range(m):
            acc = dtype(0)
            for c in sorted(set(rows[i]) & set(rows[j])):
                acc = dtype(acc + vals[i][rows[i] == c][0] * vals[j][rows[j] == c][0])
            expected[i, j] = acc
    assert np.count_nonzero(expected - np.diag(np.diag(expected))) > m
    np.testing.assert_array_equal(G, expected)
