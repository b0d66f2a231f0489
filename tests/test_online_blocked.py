"""The blocked online kernel (src_c/fs_online.c) against the sequential
BLAS-2 online kernel (_core.pyx, ``online_block = 0``) and the naive layer.

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
from conftest import rel_err

EPS32 = float(np.finfo(np.float32).eps)
LOSSES = ["squared", "spherical_softmax", "taylor_softmax", "z_loss"]


def _amplification(layer):
    V = layer._V.astype(np.float64)
    U = layer._U.astype(np.float64)
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
    ls, gs, fs = _train(FactoredOutputLayer, 0, loss, dtype, bias, wd,
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


def _run_kernel(state, H, indptr, indices, values, lr, block, loss_kind=1,
                params=(1e-2,)):
    state = [x.copy() for x in state]
    empty = np.empty(0, dtype=H.dtype)
    loss = np.full(H.shape[0], -1.0, dtype=H.dtype)
    grad = np.full(H.shape, -1.0, dtype=H.dtype)
    res = _core.online_step(*state, empty, empty, H, indptr, indices, values,
                            lr, 0.0, loss_kind, np.asarray(params, float),
                            1e-3, loss, grad, block=block)
    return res, state, loss, grad


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [1, 4, 8, 64])
def test_refusal_inside_a_block_applies_exactly_the_examples_before(dtype, block):
    # squared error: r = 1 - 2 lr ||h||^2; example 6 gets ||h||^2 = 1/(2 lr),
    # r = 0, in the middle of a block: the kernel must stop with examples
    # 0..5 applied, exactly like the sequential kernel
    state, H, indptr, indices, values = _kernel_inputs(dtype)
    lr = 0.05
    H[6] = 0
    H[6, 0] = np.sqrt(1 / (2 * lr))
    (st_s, bad_s, r_s), s_seq, l_seq, g_seq = _run_kernel(
        state, H, indptr, indices, values, lr, 0, loss_kind=0, params=())
    (st_b, bad_b, r_b), s_blk, l_blk, g_blk = _run_kernel(
        state, H, indptr, indices, values, lr, block, loss_kind=0, params=())
    assert st_s == st_b == _core.Status.STATUS_SMALL_R
    assert bad_s == bad_b == 6 and abs(r_b) < 1e-3 and abs(r_s) < 1e-3
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(s_blk, s_seq):
        assert rel_err(a, b) < tol
    assert not np.array_equal(s_blk[1], state[1])   # examples 0..5 applied
    assert rel_err(l_blk[:6], l_seq[:6]) < tol
    assert rel_err(g_blk[:6], g_seq[:6]) < tol
    # nothing written for the refused example and those after it
    assert np.all(l_blk[6:] == -1) and np.all(g_blk[6:] == -1)


@pytest.mark.parametrize("block", [1, 8, 64])
def test_non_finite_loss_inside_a_block(block):
    state, H, indptr, indices, values = _kernel_inputs(np.float64)
    values[9] = np.nan                      # example 9's loss is NaN
    (st_s, bad_s, _), s_seq, l_seq, g_seq = _run_kernel(
        state, H, indptr, indices, values, 0.05, 0)
    (st_b, bad_b, _), s_blk, l_blk, g_blk = _run_kernel(
        state, H, indptr, indices, values, 0.05, block)
    assert st_s == st_b == _core.Status.STATUS_LOSS and bad_s == bad_b == 9
    for a, b in zip(s_blk, s_seq):
        assert rel_err(a, b) < 1e-12
    assert rel_err(l_blk[:9], l_seq[:9]) < 1e-12
    assert rel_err(g_blk[:9], g_seq[:9]) < 1e-12
    assert not np.array_equal(s_blk[1], state[1])   # examples 0..8 applied


@pytest.mark.parametrize("block", [1, 7])
def test_zero_learning_rate_changes_nothing(block):
    state, H, indptr, indices, values = _kernel_inputs(np.float64)
    (st, _, _), s_blk, l_blk, g_blk = _run_kernel(state, H, indptr, indices,
                                                  values, 0.0, block)
    (_, _, _), _, l_seq, g_seq = _run_kernel(state, H, indptr, indices,
                                             values, 0.0, 0)
    assert st == _core.Status.STATUS_OK
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
