"""The factored layer against the naive dense layer, from identical weights.

float64: losses, grad_H and weights agree to a relative error < 1e-9 after
200 online steps and after 20 minibatch steps of m = 32 and m = 64 (the
minibatch step's small system inverted by Gauss-Jordan, and by Cholesky;
its LU: test_batch_large_system).

float32 tolerance, and why: losses and gradients are computed from d x d
state (U h, Q h) whose rounding errors do not accumulate beyond a few tens
of float32 epsilons over these runs (observed <= 7e-7), so they must agree to
1e-5 (about 80 eps).  The dense weights W = V U are a product formed in
float32 at the end: its rounding is amplified by amp = ||V|| ||U|| / ||W||
(1 at the start, it grows as the updates make U ill-conditioned; the
numerical-health control bounds it), so weights must agree to
30 * eps * max(1, amp), the float32 rounding of that product (observed
about 2 * eps * amp).
"""
import numpy as np
import pytest

from fastsparse import FactoredOutputLayer, NaiveOutputLayer
from _helpers import rel_err

EPS32 = float(np.finfo(np.float32).eps)
CONFIGS = [(2000, 16, 3), (5000, 64, 1)]  # (D, d, K)


def _amplification(layer):
    V = layer._st.V.astype(np.float64)
    U = layer._st.U.astype(np.float64)
    W = layer.weights().astype(np.float64)
    return np.linalg.norm(V) * np.linalg.norm(U, 2) / np.linalg.norm(W)


def _train_pair(D, d, K, dtype, mode, n_calls, m, lr, seed=0):
    """Train both layers from the same float32-representable weights on the
    same float32-representable data; return per-example losses, the last
    gradients and both layers."""
    W0 = np.random.default_rng(seed).standard_normal((D, d)) / np.sqrt(d)
    W0 = W0.astype(np.float32)
    fact = FactoredOutputLayer.from_weights(W0, dtype=dtype)
    naive = NaiveOutputLayer.from_weights(W0, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    lf_all, ln_all = [], []
    for _ in range(n_calls):
        H = (0.3 * rng.standard_normal((m, d))).astype(np.float32)
        idx = rng.integers(0, D, size=(m, K))
        val = rng.standard_normal((m, K)).astype(np.float32)
        lf, gf = fact.step(H, (idx, val), lr, mode=mode)
        ln, gn = naive.step(H, (idx, val), lr, mode=mode)
        lf_all.append(lf)
        ln_all.append(ln)
    return np.concatenate(lf_all), np.concatenate(ln_all), gf, gn, fact, naive


def _check(dtype, lf, ln, gf, gn, fact, naive):
    assert lf.dtype == dtype and gf.dtype == dtype
    if dtype == np.float64:
        tol_lg = tol_w = 1e-9
    else:
        tol_lg = 1e-5
        tol_w = 30 * EPS32 * max(1.0, _amplification(fact))
    assert rel_err(lf, ln) < tol_lg
    assert rel_err(gf, gn) < tol_lg
    assert rel_err(fact.weights(), naive.weights()) < tol_w


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("D,d,K", CONFIGS)
@pytest.mark.parametrize("per_call", [1, 8])
def test_online_200_steps(dtype, D, d, K, per_call):
    res = _train_pair(D, d, K, dtype, "online", 200 // per_call, per_call,
                      lr=0.05)
    assert res[0].shape == (200,)
    _check(dtype, *res)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("D,d,K", CONFIGS)
@pytest.mark.parametrize("m", [32, 64])
def test_batch_20_steps(dtype, D, d, K, m):
    res = _train_pair(D, d, K, dtype, "batch", 20, m, lr=0.01)
    _check(dtype, *res)


@pytest.mark.parametrize("case", ["equal", "scaled", "indefinite", "mixed"])
def test_batch_large_system(case):
    """Minibatches of 64 (the step's system K^T, 64 x 64, inverted by
    LAPACK rather than Gauss-Jordan) against the naive layer in float64:
    ``equal``, the squared loss (every dL/dq = 1): by Cholesky; ``scaled``,
    the spherical softmax (dL/dq > 0, unequal): by Cholesky of the
    symmetrically scaled system; ``indefinite``, orthogonal rows of H with
    2 lr ||h||^2 = 3 (every factor of the update -2, none near 0): Cholesky
    fails, the LU; ``mixed``, the z-loss (dL/dq of both signs): the LU."""
    D, d, m = 3000, 64, 64
    rng = np.random.default_rng(5)
    W0 = (rng.standard_normal((D, d)) / np.sqrt(d)).astype(np.float32)
    loss = {"scaled": "spherical_softmax", "mixed": "z_loss"}.get(case, "squared")
    fact = FactoredOutputLayer.from_weights(W0, dtype=np.float64, loss=loss)
    naive = NaiveOutputLayer.from_weights(W0, dtype=np.float64, loss=loss)
    for _ in range(5):
        if case == "indefinite":
            H = np.linalg.qr(rng.standard_normal((d, d)))[0][:m]
            lr = 1.5
        else:   # (the spherical softmax's dL/dq is about 1 / q: a lr that
                # makes its updates as large as the squared loss's)
            H = 0.3 * rng.standard_normal((m, d))
            lr = 1.0 if case == "scaled" else 0.01
        idx = rng.integers(0, D, size=(m, 1))
        val = rng.uniform(0.5, 1.5, size=(m, 1))
        lf, gf = fact.step(H, (idx, val), lr, mode="batch")
        ln, gn = naive.step(H, (idx, val), lr, mode="batch")
        assert rel_err(lf, ln) < 1e-9
        assert rel_err(gf, gn) < 1e-9
    assert rel_err(fact.weights(), naive.weights()) < 1e-9


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_shared_targets_within_minibatch(mode):
    # Every example hits the same few rows: V rows get several updates in one
    # call, and the minibatch Gram term Ydot Ydot^T has off-diagonal entries.
    D, d, m = 500, 12, 16
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((D, d))
    fact = FactoredOutputLayer.from_weights(W0)
    naive = NaiveOutputLayer.from_weights(W0)
    for _ in range(10):
        H = 0.2 * rng.standard_normal((m, d))
        idx = rng.integers(0, 3, size=(m, 2))
        val = rng.standard_normal((m, 2))
        lf, gf = fact.step(H, (idx, val), 0.01, mode=mode)
        ln, gn = naive.step(H, (idx, val), 0.01, mode=mode)
        assert rel_err(lf, ln) < 1e-10
        assert rel_err(gf, gn) < 1e-10
    assert rel_err(fact.weights(), naive.weights()) < 1e-10


def test_online_examples_see_previous_updates():
    # In online mode example i is evaluated after the updates of 0..i-1: the
    # same example repeated gives a smaller loss the second time, and equals
    # what two single-example calls give.
    D, d = 300, 8
    rng = np.random.default_rng(4)
    W0 = rng.standard_normal((D, d))
    h = 0.3 * rng.standard_normal((1, d))
    H = np.vstack([h, h])
    one = FactoredOutputLayer.from_weights(W0)
    loss2, grad2 = one.step(H, np.array([5, 5]), 0.05, mode="online")
    two = FactoredOutputLayer.from_weights(W0)
    la, ga = two.step(h, np.array([5]), 0.05, mode="online")
    lb, gb = two.step(h, np.array([5]), 0.05, mode="online")
    np.testing.assert_allclose(loss2, np.concatenate([la, lb]), rtol=1e-12)
    np.testing.assert_allclose(grad2, np.vstack([ga, gb]), rtol=1e-12)
    assert loss2[1] < loss2[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_and_grad_and_outputs_match_dense(dtype):
    D, d, m = 1000, 10, 6
    rng = np.random.default_rng(5)
    W0 = rng.standard_normal((D, d)).astype(np.float32)
    fact = FactoredOutputLayer.from_weights(W0, dtype=dtype)
    naive = NaiveOutputLayer.from_weights(W0, dtype=dtype)
    # move the factored state away from U = I first
    for _ in range(5):
        H = 0.3 * rng.standard_normal((4, d))
        t = rng.integers(0, D, 4)
        fact.step(H, t, 0.05, mode="online")
        naive.step(H, t, 0.05, mode="online")
    H = rng.standard_normal((m, d)).astype(dtype)
    targets = rng.integers(0, D, m)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    W = naive.weights().astype(np.float64)
    O = H.astype(np.float64) @ W.T
    Y = np.zeros_like(O)
    Y[np.arange(m), targets] = 1
    loss, grad = fact.loss_and_grad(H, targets)
    assert rel_err(loss, ((O - Y) ** 2).sum(axis=1)) < tol
    assert rel_err(grad, 2 * (O - Y) @ W) < tol
    assert rel_err(fact.outputs(H), O) < tol
    rows = np.array([7, 0, 999, 7])
    assert rel_err(fact.outputs(H, rows), O[:, rows]) < tol
    assert rel_err(naive.outputs(H, rows), O[:, rows]) < tol


def test_same_seed_same_initial_weights():
    for dtype in (np.float32, np.float64):
        a = FactoredOutputLayer(200, 8, dtype=dtype, seed=7)
        b = NaiveOutputLayer(200, 8, dtype=dtype, seed=7)
        np.testing.assert_array_equal(a.weights(), b.weights())
        assert a.weights().dtype == dtype
    c = FactoredOutputLayer(200, 8, seed=8)
    assert not np.array_equal(c.weights(), FactoredOutputLayer(200, 8, seed=7).weights())


def test_from_weights_copies():
    W = np.ones((50, 4))
    layer = FactoredOutputLayer.from_weights(W)
    W[:] = 2
    np.testing.assert_array_equal(layer.weights(), np.ones((50, 4)))
    assert layer.dtype == np.float64
    assert FactoredOutputLayer.from_weights(W, dtype=np.float32).dtype == np.float32


def test_naive_updates_weights_in_place():
    # The baseline must not copy W (D x d) in its BLAS calls.
    naive = NaiveOutputLayer(300, 8, seed=0)
    buf = naive._W
    naive.step(np.ones((1, 8), dtype=np.float32), np.array([3]), 0.01, mode="online")
    naive.step(np.ones((2, 8), dtype=np.float32), np.array([3, 4]), 0.01)
    assert naive._W is buf
    assert not np.array_equal(naive.weights(), NaiveOutputLayer(300, 8, seed=0).weights())
