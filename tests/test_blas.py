"""The one BLAS/LAPACK binding (the row-major wrappers of src_c/fs_blas.h,
called through scipy.linalg.cython_blas) against NumPy, for both dtypes.

The wrappers take row-major arrays and translate to Fortran BLAS by swapping
operands; these tests use non-square shapes so that a swapped dimension or
flag cannot go unnoticed, and one-row / rank-one shapes, which the wrappers
send to the BLAS-2 routines (rank-one and rank-two updates: to loops of
their own, compiled for AVX2 + FMA, on CPUs that have them; both paths are
tested), and small float32 products, which go to a loop of their own on
such CPUs (both paths tested).  Tiny products (at most FS_SMALL = 256
multiply-adds) are computed by the wrappers' own loops: every shape is
tested as it is (the loops) and scaled by 7 in each dimension (BLAS).
"""
import numpy as np
import pytest

from fastsparse import _core

DTYPES = [np.float32, np.float64]
# per-dtype tolerances (relative to the magnitude of the result)
RTOL = {np.float32: 1e-5, np.float64: 1e-13}
#: 1: the wrappers' loops; 7: the same shapes through BLAS
SCALES = [1, 7]


def _switched(switch, want, param):
    """A fixture's body: the kernels' switch (_core._own_avx2 or
    _core._small_gemm) set to ``want`` for the test, then back; skipped on
    a CPU without AVX2 + FMA when ``want``."""
    old = switch(want)
    try:
        if want and not switch():
            pytest.skip("this CPU has no AVX2 + FMA")
        yield param
    finally:
        switch(old)


@pytest.fixture(params=["blas", "avx2"])
def level2(request):
    """The rank-one and rank-two updates through OpenBLAS (and fs_blas.h's
    portable loop), then through its AVX2 + FMA loops."""
    yield from _switched(_core._own_avx2, request.param == "avx2",
                         request.param)


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
@pytest.mark.parametrize("s", SCALES)
def test_gemm(rng, dtype, ta, tb, m, n, k, beta, s, level2):
    m, n, k = (m if m == 1 else s * m), s * n, (k if k == 1 else s * k)
    A = _rand(rng, (k, m) if ta else (m, k), dtype)
    B = _rand(rng, (n, k) if tb else (k, n), dtype)
    C = _rand(rng, (m, n), dtype)
    expected = -2.0 * (A.T if ta else A) @ (B.T if tb else B) + beta * C
    _core._py_gemm(ta, tb, -2.0, A, B, beta, C)
    assert_close(C, expected, dtype)


@pytest.fixture(params=["blas", "small"])
def small_gemm(request):
    """float32 products with a short inner dimension through BLAS, then
    through fs_blas.h's AVX2 + FMA loop (fs_gemm_small_s)."""
    yield from _switched(_core._small_gemm, request.param == "small",
                         request.param)


#: shapes (m, n, k) of the float32 loop's test, and how the loop computes
#: them with op(A) not transposed / transposed (fs_sg_route, for op(B) = B;
#: op(B) = B^T is always packed or BLAS): 1 B read in place, 2 op(B)'s
#: strips packed, 0 BLAS (n not a multiple of 16; op(A) transposed beyond
#: the in-place limits; more than 320 rows)
LOOP_SHAPES = {(3, 16, 8): (1, 1), (5, 32, 7): (1, 1), (33, 48, 40): (1, 1),
               (32, 128, 128): (1, 1), (128, 128, 32): (1, 1),
               (64, 64, 64): (1, 1), (65, 64, 64): (2, 0),
               (16, 24, 16): (0, 0), (7, 32, 2500): (2, 0),
               (20, 64, 301): (2, 0), (40, 256, 256): (2, 0),
               (70, 80, 70): (2, 0),
               (330, 64, 64): (0, 0)}


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("m,n,k", list(LOOP_SHAPES))
@pytest.mark.parametrize("alpha,beta", [(-2.0, 0.5), (1.0, 0.0), (0.5, 1.0)])
def test_gemm_short_inner_dimension(rng, ta, tb, m, n, k, alpha, beta,
                                    small_gemm):
    """The shapes the loop serves with B in place (n a multiple of 16, op(A)
    of at most 4096 entries; rows in blocks of six, four and one), with
    op(B)'s strips packed (op(A) not transposed, at most 320 rows; four
    strips at a time, n = 80: four then one; B^T's strips in 8 x 8
    transposes and edges, k = 7, 301), and some it leaves to BLAS; with
    beta = 0, C's previous content (NaN) is not read."""
    A = _rand(rng, (k, m) if ta else (m, k), np.float32)
    B = _rand(rng, (n, k) if tb else (k, n), np.float32)
    C = (np.full((m, n), np.nan, np.float32) if beta == 0.0
         else _rand(rng, (m, n), np.float32))
    expected = (alpha * ((A.T if ta else A).astype(np.float64)
                         @ (B.T if tb else B))
                + (0.0 if beta == 0.0 else beta * C.astype(np.float64)))
    _core._py_gemm(ta, tb, alpha, A, B, beta, C)
    assert_close(C, expected, np.float32)


@pytest.mark.parametrize("m,n,k", list(LOOP_SHAPES))
def test_loop_routes(m, n, k):
    """The shapes above take the routes they are meant to test, on a CPU
    with AVX2 + FMA and without AVX-512 (where the packed route is off)."""
    old = _core._small_gemm(True)
    try:
        if not _core._small_gemm() or _core._cpu_avx512():
            pytest.skip("the loop's routes are not all on for this CPU")
        direct, transposed = LOOP_SHAPES[m, n, k]
        assert _core._small_gemm_route(False, 0, m, n, k) == direct
        assert _core._small_gemm_route(True, 0, m, n, k) == transposed
        assert _core._small_gemm_route(False, 1, m, n, k) == (direct and 2)
        assert _core._small_gemm_route(True, 1, m, n, k) == 0
    finally:
        _core._small_gemm(old)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r,c", [(1, 1), (8, 8), (13, 21), (16, 24),
                                 (32, 128), (128, 32), (9, 64)])
def test_transpose(rng, dtype, r, c, level2):
    """B = A^T, in 8 x 8 blocks and edges (AVX2, float32) or tiles: a copy,
    the same values either way."""
    A = _rand(rng, (r, c), dtype)
    B = np.full((c, r), np.nan, dtype)
    _core._py_transpose(A, B)
    assert np.array_equal(B, A.T)


@pytest.mark.parametrize("m,n", [(32, 128), (5, 48), (7, 40), (3, 16),
                                 (40, 256), (321, 32)])
def test_symm_short_inner_dimension(rng, m, n, small_gemm):
    """C = alpha B S + beta C in float32 with S's upper triangle given (its
    lower holds garbage, NaN): through the loop with S's strips packed from
    its upper triangle where it takes B S (n a multiple of 16, at most 320
    rows: rows above, within and below each strip's diagonal block), else
    BLAS."""
    S = _rand(rng, (n, n), np.float32)
    S = S + S.T
    B = _rand(rng, (m, n), np.float32)
    C = _rand(rng, (m, n), np.float32)
    expected = 1.5 * B.astype(np.float64) @ S + 2.0 * C
    Su = np.triu(S) + np.tril(np.full((n, n), np.nan, np.float32), -1)
    _core._py_symm_right_upper(1.5, Su, B, 2.0, C)
    assert_close(C, expected, np.float32)


@pytest.mark.parametrize("n,k", [(16, 3), (48, 20), (128, 32), (40, 8),
                                 (128, 40)])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_syr2k_short_inner_dimension(rng, n, k, beta, small_gemm):
    """The rank-2k update of a symmetric matrix's upper triangle in float32:
    through T = A^T B and the short product's loop where it takes A^T B
    (n a multiple of 16, n k <= 4096: the first three shapes), otherwise
    BLAS; the lower triangle is not written, and with beta = 0 C is not
    read (NaN there)."""
    A = _rand(rng, (k, n), np.float32)
    B = _rand(rng, (k, n), np.float32)
    S = _rand(rng, (n, n), np.float32)
    S = S + S.T
    if beta == 0.0:
        S[np.triu_indices(n)] = np.nan
    lower = np.tril(S, -1).copy()
    expected = (np.where(np.isnan(S), 0.0, beta * S.astype(np.float64))
                - 0.5 * (A.T.astype(np.float64) @ B + B.T.astype(np.float64) @ A))
    C = S.copy()
    _core._py_syr2k_upper_trans(-0.5, A, B, beta, C)
    assert_close(np.triu(C), np.triu(expected), np.float32)
    assert np.array_equal(np.tril(C, -1), lower)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("s", SCALES)
def test_gemv(rng, dtype, trans, s):
    A = _rand(rng, (4 * s, 6 * s), dtype)
    x = _rand(rng, 4 * s if trans else 6 * s, dtype)
    y = _rand(rng, 6 * s if trans else 4 * s, dtype)
    expected = 2.0 * (A.T if trans else A) @ x + 0.5 * y
    _core._py_gemv(trans, 2.0, A, x, 0.5, y)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [4, 1])
@pytest.mark.parametrize("s", SCALES)
def test_symm_right_upper(rng, dtype, m, s):
    n, m = 6 * s, (m if m == 1 else s * m)
    S = _rand(rng, (n, n), dtype)
    S = S + S.T
    B = _rand(rng, (m, n), dtype)
    C = _rand(rng, (m, n), dtype)
    expected = 1.5 * B @ S + 2.0 * C
    _core._py_symm_right_upper(1.5, np.triu(S), B, 2.0, C)
    assert_close(C, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,beta", [(3, 1.0), (3, 0.5), (1, 1.0)])
@pytest.mark.parametrize("s", SCALES)
def test_syr2k_upper_trans(rng, dtype, k, beta, s, level2):
    n, k = 5 * s, (k if k == 1 else s * k)
    A = _rand(rng, (k, n), dtype)
    B = _rand(rng, (k, n), dtype)
    S = _rand(rng, (n, n), dtype)
    S = S + S.T
    expected = beta * S - 0.5 * (A.T @ B + B.T @ A)
    C = S.copy()
    _core._py_syr2k_upper_trans(-0.5, A, B, beta, C)
    assert_close(np.triu(C), np.triu(expected), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(1, 3), (4, 6), (5, 1), (6, 4)])
@pytest.mark.parametrize("s", SCALES)
def test_gram_rows(rng, dtype, n, k, s):
    """Both triangles of A A^T (BLAS syrk fills one, the other mirrored);
    C's previous content (NaN) is not read."""
    A = _rand(rng, (n * s, k * s), dtype)
    C = np.full((n * s, n * s), np.nan, dtype)
    _core._py_gram_rows(A, C)
    assert_close(C, A @ A.T, dtype)
    assert np.array_equal(C, C.T)


@pytest.mark.parametrize("n,k", [(16, 5), (32, 128), (48, 7), (80, 33),
                                 (128, 40), (24, 9)])
def test_gram_rows_float32_loop(rng, n, k, small_gemm):
    """A A^T in float32 through the loop (n a multiple of 16: the strips'
    rows up to their diagonal block, then the mirror) and through BLAS."""
    A = _rand(rng, (n, k), np.float32)
    C = np.full((n, n), np.nan, np.float32)
    _core._py_gram_rows(A, C)
    assert_close(C, A.astype(np.float64) @ A.T, np.float32)
    assert np.array_equal(C, C.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", SCALES)
def test_beta_zero_does_not_read_the_output(rng, dtype, s):
    """As in BLAS, beta = 0 overwrites C (or y): NaN there is not read."""
    A = _rand(rng, (4 * s, 6 * s), dtype)
    B = _rand(rng, (6 * s, 3 * s), dtype)
    C = np.full((4 * s, 3 * s), np.nan, dtype)
    _core._py_gemm(False, False, 1.0, A, B, 0.0, C)
    assert_close(C, A @ B, dtype)
    y = np.full(4 * s, np.nan, dtype)
    x = _rand(rng, 6 * s, dtype)
    _core._py_gemv(False, 1.0, A, x, 0.0, y)
    assert_close(y, A @ x, dtype)
    S = _rand(rng, (6 * s, 6 * s), dtype)
    S = S + S.T
    C = np.full((4 * s, 6 * s), np.nan, dtype)
    _core._py_symm_right_upper(1.0, np.triu(S), A, 0.0, C)
    assert_close(C, A @ S, dtype)


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


# --- the portable and AVX2 copies of the kernels' reductions ----------------
# (src_c/fs_kernels_impl.h: fs_dot, fs_amax, fs_finite, fs_add_row are
# compiled twice, the AVX2 copy without FMA; they must give the same bits)

def _avx2_or_skip():
    if not _core._own_avx2():
        pytest.skip("this CPU has no AVX2 + FMA")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 8, 13, 64, 1003])
def test_finite_check_both_copies(dtype, n):
    """NaN, +Inf and -Inf found at every position (the vector body and the
    tail), and the largest finite values (two of them overflowed the sum
    the check once took in float64) accepted, by both copies."""
    _avx2_or_skip()
    typenum = np.dtype(dtype).num
    big = np.full((1, n), np.finfo(dtype).max, dtype=dtype)
    big[0, ::2] *= -1
    old = _core._own_avx2()
    try:
        for flag in (False, True):
            _core._own_avx2(flag)
            assert _core.finite2d(big, n, typenum)
            assert _core.finite2d(np.zeros((1, n), dtype), n, typenum)
            for pos in sorted({0, n // 2, n - 1}):
                for bad in (np.nan, np.inf, -np.inf):
                    a = np.ones((1, n), dtype=dtype)
                    a[0, pos] = bad
                    assert not _core.finite2d(a, n, typenum), (flag, pos, bad)
    finally:
        _core._own_avx2(old)


def _inverse_both_copies(A):
    """(info, A^-1) from fs_inverse_d's portable copy and, where the CPU has
    AVX2, its AVX2 copy"""
    out = []
    old = _core._own_avx2()
    try:
        for flag in ((False, True) if old else (False,)):
            _core._own_avx2(flag)
            X = np.array(A, dtype=np.float64)
            out.append((_core._py_inverse(X), X))
    finally:
        _core._own_avx2(old)
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 31, 32, 48, 70])
def test_inverse(rng, n):
    """The minibatch step's small inverse (Gauss-Jordan, partial pivoting)
    against NumPy's: a matrix near the identity (the common case), one with
    zeros on its diagonal (every column takes a row interchange) and a
    nonsymmetric ill-conditioned one; both copies give the same bits."""
    P = np.roll(np.eye(n), 1, axis=0)           # (no fixed point if n > 1)
    cases = [np.eye(n) - 0.01 * rng.standard_normal((n, n)),
             P + 0.1 * np.diag(rng.random(n)) @ P,
             rng.standard_normal((n, n)) @ np.diag(np.logspace(0, -6, n))]
    for A in cases:
        res = _inverse_both_copies(A)
        for info, X in res:
            assert info == 0
            cond = np.linalg.cond(A)
            assert np.abs(X - np.linalg.inv(A)).max() <= (
                1e-13 * cond * np.abs(np.linalg.inv(A)).max())
            assert np.abs(A @ X - np.eye(n)).max() <= 1e-13 * cond
        for info, X in res[1:]:
            assert np.array_equal(X, res[0][1])


def test_inverse_reports_singular():
    """A column with no nonzero (or only NaN) pivot: k + 1; Inf counts as no
    pivot (its reciprocal would hide it)."""
    A = np.eye(4)
    A[:, 2] = 0.0
    assert all(info == 3 for info, _ in _inverse_both_copies(A))
    for bad in (np.nan, np.inf):
        A = np.eye(4)
        A[1, 1] = bad
        for info, _ in _inverse_both_copies(A):
            assert info == 2
    A = np.ones((3, 3))                         # rank one: column 2 vanishes
    assert all(info == 2 for info, _ in _inverse_both_copies(A))
    assert _core._py_inverse(np.zeros((0, 0))) == 0
    with pytest.raises(ValueError):
        _core._py_inverse(np.zeros((2, 3)))


def _minibatches(dtype, loss, flag, d):
    from fastsparse import FactoredOutputLayer
    rng = np.random.default_rng(3)
    D, m = 300, 24
    W0 = (0.3 * rng.standard_normal((D, d))).astype(np.float32)
    old = _core._own_avx2(flag)
    try:
        layer = FactoredOutputLayer.from_weights(W0, dtype=dtype, loss=loss,
                                                 stability={"check_every": 3})
        out = []
        for _ in range(6):
            H = (0.3 * rng.standard_normal((m, d))).astype(dtype)
            idx = np.sort(rng.choice(40, size=(m, 3)), axis=1)   # shared rows
            idx[:, 1] += 40
            idx[:, 2] += 80
            val = (0.5 + rng.random((m, 3))).astype(dtype)
            out.extend(layer.step(H, (idx, val), 0.01, mode="batch"))
    finally:
        _core._own_avx2(old)
    st = layer._st
    health = layer.health()
    del health["control_seconds"]
    return out + [st.V, st.U, st.Uinv, st.M, st.omega, st.sv], health


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["squared", "spherical_softmax"])
@pytest.mark.parametrize("d", [13, 40])
def test_minibatch_steps_same_bits_with_both_copies(dtype, loss, d):
    """Minibatch steps (no near-singular split: its rank-one product takes
    the FMA loops) with the reductions' portable and AVX2 copies: the same
    losses, gradients and state, bit for bit, and the same health record;
    d = 13 puts every reduction's tail to use."""
    _avx2_or_skip()
    a, ha = _minibatches(dtype, loss, False, d)
    b, hb = _minibatches(dtype, loss, True, d)
    assert ha["n_near_singular_updates"] == 0
    assert ha == hb
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
