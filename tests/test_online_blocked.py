"""The online kernel (src_c/fs_kernels_impl.h) in blocks of several
examples against one example per block (``online_block = 1``: every update
written to the state before the next example) and the naive layer.

Both apply the same exact per-example updates in the same order; they differ
only in how the d x d products are grouped (delayed updates within a block
of examples), i.e. in rounding.  float64: 1000 eps amp relative between the
two kernels, where amp = ||V|| ||U|| / ||W|| is how much the factorisation
amplifies rounding (observed ~1e-15 when amp ~ 1; a squared-error run with
a bias shrinks U along the bias input at every step, amp reaches 2e4 and the
two kernels differ by 3e-10, as each does from the naive layer), and 1e-9
against the naive layer as in test_exact.py.  float32: 1e-5 for losses and gradients, as in test_exact.py
(observed <= 5e-6); weights 30 eps times the factorisation's amplification.
"""
import numpy as np
import pytest

from fastsparse import FactoredOutputLayer, NaiveOutputLayer, _core
from _helpers import rel_err

EPS32 = float(np.finfo(np.float32).eps)
LOSSES = ["squared", "spherical_softmax", "taylor_softmax", "z_loss"]


def _amplification(layer):
    V = layer._st.V.astype(np.float64)
    U = layer._st.U.astype(np.float64)
    W = layer.weights().astype(np.float64)
    return np.linalg.norm(V) * np.linalg.norm(U, 2) / np.linalg.norm(W)


def _train(cls, block, loss, dtype, bias, wd, track_sum, D=400, d=12, m=37,
           n_calls=3, lr=0.05, seed=0):
    rng = np.random.default_rng(seed)
    W0 = (0.3 * rng.standard_normal((D, d))).astype(np.float32)
    kw = {} if track_sum is None else {"track_sum": track_sum}
    layer = cls.from_weights(W0, dtype=dtype, loss=loss, bias=bias, **kw)
    if block is not None:
        layer.online_block = block
    K = 1 if loss == "z_loss" else 3
    losses, grads = [], []
    for _ in range(n_calls):
        H = (0.3 * rng.standard_normal((m, d))).astype(np.float32)
        idx = rng.integers(0, D, size=(m, K))
        idx[1] = idx[0]                       # examples sharing targets
        val = (0.5 + rng.random((m, K))).astype(np.float32)
        L, G = layer.step(H, (idx, val), lr, mode="online", weight_decay=wd)
        losses.append(L)
        grads.append(G)
    return np.concatenate(losses), np.concatenate(grads), layer


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bias,wd,track_sum", [(False, 0.0, None),
                                               (True, 0.01, None),
                                               (False, 0.0, True)])
@pytest.mark.parametrize("block", [1, 5, 32])
def test_blocked_matches_sequential_and_naive(dtype, loss, bias, wd, track_sum,
                                              block):
    lb, gb, fb = _train(FactoredOutputLayer, block, loss, dtype, bias, wd,
                        track_sum)
    ls, gs, fs = _train(FactoredOutputLayer, 1, loss, dtype, bias, wd,
                        track_sum)
    ln, gn, fn = _train(NaiveOutputLayer, None, loss, dtype, bias, wd,
                        track_sum)
    if dtype == np.float64:
        tol = 1000 * np.finfo(np.float64).eps * max(1.0, _amplification(fb))
        assert rel_err(lb, ls) < tol and rel_err(gb, gs) < tol
        assert rel_err(fb.weights(), fs.weights()) < tol
        tol_lg = tol_w = 1e-9
    else:
        tol_lg = 1e-5
        tol_w = 30 * EPS32 * max(1.0, _amplification(fb))
        assert rel_err(lb, ls) < tol_lg and rel_err(gb, gs) < tol_lg
    assert rel_err(lb, ln) < tol_lg
    assert rel_err(gb, gn) < tol_lg
    assert rel_err(fb.weights(), fn.weights()) < tol_w


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_one_example_blocks_with_and_without_the_avx2_loops(dtype, wd):
    """Blocks of one example at d = 40 (above the wrappers' tiny-product
    loops): U's update fused with the gradient's product, and Uinv's and M's
    updates, by the AVX2 + FMA loops of src_c/fs_blas.h, against OpenBLAS
    and the portable loop, and both against the naive layer."""
    if not _core._own_avx2():
        pytest.skip("this CPU has no AVX2 + FMA")
    args = ("squared", dtype, True, wd, None)
    kw = dict(d=40, m=25)
    la, ga, fa = _train(FactoredOutputLayer, 1, *args, **kw)
    old = _core._own_avx2(False)
    try:
        lb, gb, fb = _train(FactoredOutputLayer, 1, *args, **kw)
    finally:
        _core._own_avx2(old)
    ln, gn, fn = _train(NaiveOutputLayer, None, *args, **kw)
    amp = max(1.0, _amplification(fa))
    tol = (1000 * np.finfo(np.float64).eps * amp if dtype == np.float64
           else 30 * EPS32 * amp)
    assert rel_err(fa.weights(), fb.weights()) < tol
    assert 0 < rel_err(fa._st.U, fb._st.U)      # the two paths did differ
    tol_lg = 1e-9 if dtype == np.float64 else 1e-5
    for got in ((la, ga, fa), (lb, gb, fb)):
        assert rel_err(got[0], ln) < tol_lg and rel_err(got[1], gn) < tol_lg
        assert rel_err(got[2].weights(), fn.weights()) < max(tol, tol_lg)


def _kernel_inputs(dtype, D=300, d=10, m=20, seed=1):
    rng = np.random.default_rng(seed)
    V = (0.3 * rng.standard_normal((D, d))).astype(dtype)
    U = np.eye(d, dtype=dtype)
    Uinv = np.eye(d, dtype=dtype)
    M = np.ascontiguousarray(V.T @ V)
    H = (0.3 * rng.standard_normal((m, d))).astype(dtype)
    indptr = np.arange(m + 1, dtype=np.int64)
    indices = rng.integers(0, D, m).astype(np.int64)
    values = np.ones(m, dtype=dtype)
    return [V, U, Uinv, M], H, indptr, indices, values


def _control(dtype, lr):
    ctl = _core.Control(0.5, 0.0, 2.0 ** 60, 1.0, 1.0, 1e6)
    ctl.set_rates(lr, 0.0)
    return ctl


def _run_kernel(state, H, indptr, indices, values, lr, block, loss_kind=1,
                params=(1e-2,)):
    state = [x.copy() for x in state]
    empty = np.empty(0, dtype=H.dtype)
    loss = np.full(H.shape[0], -1.0, dtype=H.dtype)
    grad = np.full(H.shape, -1.0, dtype=H.dtype)
    ctl = _control(H.dtype, lr)
    st = _core.online_step(_core.Arrays(*state, empty, empty), H, indptr, indices, values,
                           loss_kind, np.asarray(params, float), block, ctl,
                           loss, grad)
    return (st, ctl.done, ctl.bad, ctl.n_split), state, loss, grad


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [1, 4, 8, 64])
def test_near_singular_example_inside_a_block(dtype, block):
    # squared error: r = 1 - 2 lr ||h||^2; example 6 gets ||h||^2 = 1/(2 lr),
    # r = 0, in the middle of a block: the dense layer zeroes W along h, and
    # so must every kernel (one pass over V), whatever the block size
    state, H, indptr, indices, values = _kernel_inputs(dtype)
    lr = 0.05
    H[6] = 0
    H[6, 0] = np.sqrt(1 / (2 * lr))
    (st_s, done_s, _, ns_s), s_seq, l_seq, g_seq = _run_kernel(
        state, H, indptr, indices, values, lr, 1, loss_kind=0, params=())
    (st_b, done_b, _, ns_b), s_blk, l_blk, g_blk = _run_kernel(
        state, H, indptr, indices, values, lr, block, loss_kind=0, params=())
    assert st_s == st_b == _core.fs_status.FS_OK and done_s == done_b == H.shape[0]
    assert ns_s == ns_b == 1
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(s_blk, s_seq):
        assert rel_err(a, b) < tol
    assert rel_err(l_blk, l_seq) < tol and rel_err(g_blk, g_seq) < tol
    # against the dense layer fed the same examples
    V0, U0 = state[0].astype(np.float64), state[1].astype(np.float64)
    naive = NaiveOutputLayer.from_weights(V0 @ U0)
    ln, gn = naive.step(H.astype(np.float64), indices, lr, mode="online")
    assert rel_err(l_blk, ln) < tol and rel_err(g_blk, gn) < tol
    W = s_blk[0].astype(np.float64) @ s_blk[1].astype(np.float64)
    assert rel_err(W, naive.weights()) < (1e-12 if dtype == np.float64 else 1e-5)
    # the premise: right after example 6 the dense W h_6 is its target
    first = NaiveOutputLayer.from_weights(V0 @ U0)
    first.step(H[:7].astype(np.float64), indices[:7], lr, mode="online")
    o = first.outputs(H[6:7].astype(np.float64))[0]
    o[indices[6]] -= 1
    assert np.abs(o).max() < 1e-5


@pytest.mark.parametrize("block", [1, 8, 64])
def test_non_finite_loss_inside_a_block(block):
    state, H, indptr, indices, values = _kernel_inputs(np.float64)
    values[9] = np.nan                      # example 9's loss is NaN
    (st_s, done_s, bad_s, _), s_seq, l_seq, g_seq = _run_kernel(
        state, H, indptr, indices, values, 0.05, 1)
    (st_b, done_b, bad_b, _), s_blk, l_blk, g_blk = _run_kernel(
        state, H, indptr, indices, values, 0.05, block)
    assert st_s == st_b == _core.fs_status.FS_LOSS and bad_s == bad_b == 9
    assert done_s == done_b == 9
    for a, b in zip(s_blk, s_seq):
        assert rel_err(a, b) < 1e-12
    assert rel_err(l_blk[:9], l_seq[:9]) < 1e-12
    assert rel_err(g_blk[:9], g_seq[:9]) < 1e-12
    assert not np.array_equal(s_blk[1], state[1])   # examples 0..8 applied
    # nothing written for the refused example and those after it
    assert np.all(l_blk[9:] == -1) and np.all(g_blk[9:] == -1)


@pytest.mark.parametrize("block", [1, 7])
def test_zero_learning_rate_changes_nothing(block):
    state, H, indptr, indices, values = _kernel_inputs(np.float64)
    (st, _, _, _), s_blk, l_blk, g_blk = _run_kernel(state, H, indptr, indices,
                                                     values, 0.0, block)
    (_, _, _, _), _, l_seq, g_seq = _run_kernel(state, H, indptr, indices,
                                                values, 0.0, 1)
    assert st == _core.fs_status.FS_OK
    for a, b in zip(s_blk, state):
        assert np.array_equal(a, b)
    assert rel_err(l_blk, l_seq) < 1e-13 and rel_err(g_blk, g_seq) < 1e-13


def test_online_block_is_a_layer_attribute():
    layer = FactoredOutputLayer(50, 4, seed=0)
    assert layer.online_block == _core.ONLINE_BLOCK > 1
    layer.online_block = 0
    layer.step(np.ones((3, 4), np.float32) / 4, np.array([1, 2, 3]), 0.1,
               mode="online")


@pytest.mark.parametrize("value", [-1, 2.5, "8", True])
def test_online_block_is_validated(value):
    layer = FactoredOutputLayer(50, 4, seed=0)
    with pytest.raises(ValueError, match="online_block"):
        layer.online_block = value
    assert layer.online_block == _core.ONLINE_BLOCK


def test_single_thread_blas_is_validated():
    layer = FactoredOutputLayer(50, 4, seed=0)
    with pytest.raises(TypeError, match="single_thread_blas"):
        layer.single_thread_blas = "no"
    assert layer.single_thread_blas is True
    layer.single_thread_blas = False
    assert layer.single_thread_blas is False
