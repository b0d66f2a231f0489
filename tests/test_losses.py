"""The spherical family: every built-in loss against differentiation of the
same loss written on the full D-dimensional output, and the generic
interface (forward/backward, predict_proba, user callables)."""
import numpy as np
import pytest

from fastsparse import FactoredOutputLayer, NaiveOutputLayer, _core, losses
from fastsparse.losses import (SphericalSoftmax, SquaredError, TaylorSoftmax,
                               ZLoss, get_loss)
from _helpers import rel_err

D = 40
LOSSES = [SquaredError(), SphericalSoftmax(eps=0.05), TaylorSoftmax(),
          ZLoss(alpha=0.7, beta=1.5)]


def _example(loss, seed):
    """Outputs o (D,), target indices and values for one example."""
    rng = np.random.default_rng(seed)
    o = rng.standard_normal(D)
    if loss.name == "z_loss":
        idx, y = np.array([7]), np.array([1.0])
    else:
        idx, y = np.array([3, 7, 31]), rng.uniform(0.5, 1.5, 3)
    return o, idx, y


# ---- the same losses written on the full output vector -------------------
def _full_loss_numpy(loss, o, idx, y):
    """(L, dL/do) by hand on the full vector (independent closed forms)."""
    yd = np.zeros(D)
    yd[idx] = y
    Y = y.sum()
    if loss.name == "squared":
        return ((o - yd) ** 2).sum(), 2 * (o - yd)
    if loss.name == "spherical_softmax":
        e = o * o + loss.eps
        L = -(yd * np.log(e / e.sum())).sum()
        return L, -yd * 2 * o / e + Y * 2 * o / e.sum()
    if loss.name == "taylor_softmax":
        f = 1 + o + o * o / 2
        L = -(yd * np.log(f / f.sum())).sum()
        return L, -yd * (1 + o) / f + Y * (1 + o) / f.sum()
    # z-loss
    (t,), (yt,) = idx, y
    mu, sigma = o.mean(), o.std()
    z = (o[t] - mu) / sigma
    x = loss.alpha * (loss.beta - z)
    L = yt * np.logaddexp(0, x) / loss.alpha
    dLdz = -yt / (1 + np.exp(-x))
    dz = -np.full(D, 1 / (D * sigma)) - z * (o - mu) / (D * sigma ** 2)
    dz[t] += 1 / sigma
    return L, dLdz * dz


def _full_loss_torch(loss, o, idx, y):
    torch = pytest.importorskip("torch")
    ot = torch.tensor(o, dtype=torch.float64, requires_grad=True)
    yd = torch.zeros(D, dtype=torch.float64)
    yd[torch.tensor(idx)] = torch.tensor(y)
    if loss.name == "squared":
        L = ((ot - yd) ** 2).sum()
    elif loss.name == "spherical_softmax":
        e = ot * ot + loss.eps
        L = -(yd * torch.log(e / e.sum())).sum()
    elif loss.name == "taylor_softmax":
        f = 1 + ot + ot * ot / 2
        L = -(yd * torch.log(f / f.sum())).sum()
    else:
        z = (ot[idx[0]] - ot.mean()) / ot.std(unbiased=False)
        L = y[0] * torch.nn.functional.softplus(loss.alpha * (loss.beta - z)) / loss.alpha
    L.backward()
    return L.item(), ot.grad.numpy()


def _ours(loss, o, idx, y, compiled):
    a, q, s = o[idx], o @ o, o.sum()
    if compiled:
        ga = np.empty_like(a)
        status, L, gq, gs = _core._py_eval_loss(loss.kind, D, loss.params, a, y,
                                                q, s, ga)
        assert status == 0
    else:
        L, ga, gq, gs = loss.evaluate(a, y, q, s, D)
    G = 2 * gq * o + gs          # dL/do = 2 gq o + gs 1 + ydot
    G[idx] += ga
    return L, G


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
@pytest.mark.parametrize("compiled", [True, False], ids=["core", "numpy"])
@pytest.mark.parametrize("reference", [_full_loss_numpy, _full_loss_torch],
                         ids=["closed_form", "torch_autograd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_gradients_match_full_output_differentiation(loss, compiled,
                                                          reference, seed):
    o, idx, y = _example(loss, seed)
    L_ref, G_ref = reference(loss, o, idx, y)
    L, G = _ours(loss, o, idx, y, compiled)
    assert abs(L - L_ref) <= 1e-10 * abs(L_ref)
    assert rel_err(G, G_ref) < 1e-10


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_values_once_for_numpy_and_torch(loss, seed):
    # Loss.values is the one definition of each loss for every array
    # library: it matches evaluate() and the compiled loss, in NumPy, and
    # its torch autograd gives evaluate()'s gradients
    o, idx, y = _example(loss, seed)
    a, q, s = o[idx], o @ o, o.sum()
    L_np = loss.values(a[None, :], np.array([q]), np.array([s]), y[None, :], D)[0]
    L_ev, ga, gq, gs = loss.evaluate(a, y, q, s, D)
    ga_c = np.empty_like(a)
    status, L_c, _, _ = _core._py_eval_loss(loss.kind, D, loss.params, a, y, q, s, ga_c)
    assert status == 0
    assert abs(L_np - L_ev) <= 1e-12 * abs(L_ev) and abs(L_np - L_c) <= 1e-12 * abs(L_c)
    torch = pytest.importorskip("torch")
    at, qt, st = (torch.tensor(x, dtype=torch.float64, requires_grad=True)
                  for x in (a[None, :], [q], [s]))
    Lt = loss.values(at, qt, st, torch.tensor(y[None, :]), D)
    Lt.sum().backward()
    assert abs(Lt.item() - L_ev) <= 1e-12 * abs(L_ev)
    np.testing.assert_allclose(at.grad.numpy()[0], ga, rtol=1e-10, atol=1e-14)
    gs_t = 0.0 if st.grad is None else st.grad.item()     # s unused
    np.testing.assert_allclose([qt.grad.item(), gs_t], [gq, gs],
                               rtol=1e-10, atol=1e-14)


# ---- factored vs naive for every loss, mode, dtype, bias -----------------
def _squared_callable(a, q, s, values):
    return (q - 2 * (values * a).sum(1) + (values * values).sum(1),
            -2 * values, np.ones_like(q), np.zeros_like(q))


def _taylor_callable(a, q, s, values):
    # the Taylor softmax again, as a user would write it (uses s)
    f = 1 + a + a * a / 2
    Y = values.sum(1)
    Z = D_TRAIN + s + q / 2
    return (-(values * np.log(f)).sum(1) + Y * np.log(Z),
            -values * (1 + a) / f, Y / (2 * Z), Y / Z)


D_TRAIN = 2000
TRAIN_LOSSES = ["squared", SphericalSoftmax(eps=0.05), "taylor_softmax",
                ZLoss(alpha=1.0, beta=2.0), _squared_callable, _taylor_callable]
_ids = ["squared", "spherical", "taylor", "z_loss", "callable_squared",
        "callable_taylor"]


def _train(loss, mode, dtype, bias, seed=0):
    d = 16
    rng = np.random.default_rng(seed)
    W0 = (rng.standard_normal((D_TRAIN, d)) / np.sqrt(d)).astype(np.float32)
    b0 = (0.1 * rng.standard_normal(D_TRAIN)).astype(np.float32) if bias else None
    fact = FactoredOutputLayer.from_weights(W0, dtype=dtype, bias=b0, loss=loss)
    naive = NaiveOutputLayer.from_weights(W0, dtype=dtype, bias=b0, loss=loss)
    K = 1 if get_loss(loss).name == "z_loss" else 3
    n_calls, m, lr = (50, 4, 0.02) if mode == "online" else (20, 32, 0.002)
    lf_all, ln_all = [], []
    for step in range(n_calls):
        H = (0.3 * rng.standard_normal((m, d))).astype(np.float32)
        # distinct within an example: column k draws from its own range
        idx = rng.integers(0, D_TRAIN // K, size=(m, K)) + np.arange(K) * (D_TRAIN // K)
        if step % 2:  # half the examples share target rows 0..2
            idx[: m // 2] = [rng.permutation(3)[:K] for _ in range(m // 2)]
        val = rng.uniform(0.5, 1.5, size=(m, K)).astype(np.float32)
        lf, gf = fact.step(H, (idx, val), lr, mode=mode)
        ln, gn = naive.step(H, (idx, val), lr, mode=mode)
        lf_all.append(lf)
        ln_all.append(ln)
    return np.concatenate(lf_all), np.concatenate(ln_all), gf, gn, fact, naive


# callables are minibatch-only (refused online: test_callable_refuses_online_and_ragged_targets)
_LOSS_MODES = [pytest.param(loss, mode, id=f"{name}-{mode}")
               for loss, name in zip(TRAIN_LOSSES, _ids)
               for mode in ("online", "batch")
               if not (callable(loss) and mode == "online")]


@pytest.mark.parametrize("loss,mode", _LOSS_MODES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_factored_matches_naive(loss, mode, dtype, bias):
    lf, ln, gf, gn, fact, naive = _train(loss, mode, dtype, bias)
    tol = 1e-9 if dtype == np.float64 else 2e-5
    assert rel_err(lf, ln) < tol
    assert rel_err(gf, gn) < tol
    assert rel_err(fact.weights(), naive.weights()) < tol
    if bias:
        assert rel_err(fact.bias(), naive.bias()) < tol
    else:
        assert fact.bias() is None and naive.bias() is None
    assert ln[-len(gn):].sum() < ln[:len(gn)].sum() * 1.5  # trained sanely


def test_bias_is_the_dense_output_bias():
    W0 = np.random.default_rng(0).standard_normal((30, 4))
    b0 = np.arange(30.0)
    for cls in (FactoredOutputLayer, NaiveOutputLayer):
        layer = cls.from_weights(W0, bias=b0)
        H = np.random.default_rng(1).standard_normal((3, 4))
        np.testing.assert_allclose(layer.outputs(H), H @ W0.T + b0, rtol=1e-12)
        np.testing.assert_allclose(layer.bias(), b0, rtol=1e-12)
        # one online step: b <- b - lr dL/do, W <- W - lr dL/do h^T
        t = np.array([5])
        o = H[0] @ W0.T + b0
        G = 2 * o
        G[5] -= 2
        layer.step(H[:1], t, 0.01, mode="online")
        np.testing.assert_allclose(layer.bias(), b0 - 0.01 * G, rtol=1e-12)
        np.testing.assert_allclose(layer.weights(), W0 - 0.01 * np.outer(G, H[0]),
                                   rtol=1e-12, atol=1e-14)


# ---- generic interface ---------------------------------------------------
@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer])
@pytest.mark.parametrize("track_sum", [False, True])
def test_forward_matches_dense(cls, track_sum):
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((100, 5))
    layer = cls.from_weights(W0, track_sum=track_sum, bias=rng.standard_normal(100))
    layer.step(0.3 * rng.standard_normal((4, 5)), np.arange(4), 0.05, mode="online")
    H = rng.standard_normal((3, 5))
    idx = np.array([[0, 99], [4, 4], [50, 1]])
    a, q, s = layer.forward(H, idx)
    O = layer.outputs(H)
    np.testing.assert_allclose(a, np.take_along_axis(O, idx, 1), rtol=1e-12)
    np.testing.assert_allclose(q, (O * O).sum(1), rtol=1e-12)
    if track_sum:
        np.testing.assert_allclose(s, O.sum(1), rtol=1e-10)
    else:
        assert s is None


@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer])
@pytest.mark.parametrize("loss", [TaylorSoftmax(), ZLoss()], ids=["taylor", "z"])
def test_backward_with_loss_gradients_equals_batch_step(cls, loss):
    rng = np.random.default_rng(4)
    W0 = rng.standard_normal((200, 6)) / 3
    a_layer = cls.from_weights(W0, loss=loss)
    b_layer = cls.from_weights(W0, loss=loss)
    H = 0.3 * rng.standard_normal((5, 6))
    idx = rng.integers(0, 200, (5, 1))
    loss_ref, grad_ref = a_layer.step(H, (idx, None), 0.01, mode="batch")
    a, q, s = b_layer.forward(H, idx)
    ga = np.empty_like(a)
    gq, gs = np.empty(5), np.empty(5)
    for i in range(5):
        _, ga[i], gq[i], gs[i] = loss.evaluate(a[i], np.ones(1), q[i], s[i], 200)
    grad = b_layer.backward(H, idx, ga, gq, gs, 0.01)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-11)
    np.testing.assert_allclose(b_layer.weights(), a_layer.weights(), rtol=1e-11)


def test_backward_sums_duplicate_indices():
    rng = np.random.default_rng(5)
    W0 = rng.standard_normal((50, 4))
    H = 0.3 * rng.standard_normal((2, 4))
    x = FactoredOutputLayer.from_weights(W0, track_sum=True)
    y = FactoredOutputLayer.from_weights(W0, track_sum=True)
    gx = x.backward(H, np.array([[3, 3], [1, 2]]), np.array([[1.0, 2.0], [0.5, 0.5]]),
                    np.array([0.1, 0.2]), np.array([0.3, -0.1]), 0.01)
    gy = y.backward(H, np.array([[3], [1]]) * 0 + np.array([[3], [1]]),
                    np.array([[3.0], [0.5]]), np.array([0.1, 0.2]),
                    np.array([0.3, -0.1]), 0.0)
    assert not np.allclose(gx, 0)
    n = NaiveOutputLayer.from_weights(W0, track_sum=True)
    gn = n.backward(H, np.array([[3, 3], [1, 2]]), np.array([[1.0, 2.0], [0.5, 0.5]]),
                    np.array([0.1, 0.2]), np.array([0.3, -0.1]), 0.01)
    np.testing.assert_allclose(gx, gn, rtol=1e-12)
    np.testing.assert_allclose(x.weights(), n.weights(), rtol=1e-12)
    # row 0 of gy differs from gx only by the second example's index 2 term
    assert gy.shape == gx.shape


def test_squared_keeps_no_sum_state():
    layer = FactoredOutputLayer(100, 8)
    assert layer._st.omega.size == 0 and layer._st.sv.size == 0
    assert FactoredOutputLayer(100, 8, loss="taylor_softmax")._st.sv.size == 8
    assert FactoredOutputLayer(100, 8, track_sum=True)._st.sv.size == 8
    with pytest.raises(ValueError, match="track_sum=True"):
        layer.backward(np.ones((1, 8)), np.array([[1]]), np.ones((1, 1)),
                       np.ones(1), np.ones(1), 0.1)


@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer])
@pytest.mark.parametrize("loss", [SphericalSoftmax(0.1), TaylorSoftmax()],
                         ids=["spherical", "taylor"])
def test_predict_proba(cls, loss):
    rng = np.random.default_rng(6)
    W0 = rng.standard_normal((300, 6)) / 3
    layer = cls.from_weights(W0, loss=loss, bias=True)
    layer.step(0.3 * rng.standard_normal((8, 6)), np.arange(8), 0.05, mode="online")
    H = rng.standard_normal((4, 6))
    P = layer.predict_proba(H)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-12)
    O = layer.outputs(H)
    f = O * O + loss.eps if loss.name == "spherical_softmax" else 1 + O + O * O / 2
    np.testing.assert_allclose(P, f / f.sum(1, keepdims=True), rtol=1e-10)
    rows = np.array([5, 0, 299])
    np.testing.assert_allclose(layer.predict_proba(H, rows), P[:, rows], rtol=1e-12)


@pytest.mark.parametrize("loss", ["squared", "z_loss"])
def test_predict_proba_refused_without_probabilities(loss):
    with pytest.raises(TypeError, match="defines no probabilities"):
        FactoredOutputLayer(10, 3, loss=loss).predict_proba(np.ones((1, 3)))


# ---- refused configurations and callables ----------------------------------
def test_bad_loss_parameters():
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        SphericalSoftmax(eps=0)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        SphericalSoftmax(eps=-1)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        ZLoss(alpha=0)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        ZLoss(beta=np.inf)
    with pytest.raises(TypeError, match="eps must be a real number"):
        SphericalSoftmax(eps="1")
    with pytest.raises(TypeError, match="loss must be a name, a Loss or a callable"):
        FactoredOutputLayer(10, 3, loss=3)
    with pytest.raises(ValueError, match="unknown loss 'softmax'"):
        FactoredOutputLayer(10, 3, loss="softmax")
    with pytest.raises(ValueError, match="track_sum cannot be False"):
        FactoredOutputLayer(10, 3, loss="taylor_softmax", track_sum=False)


def _state(layer):
    return {k: v.tobytes() for k, v in vars(layer).items() if isinstance(v, np.ndarray)}


def _bad_shape(a, q, s, v):
    return q, a[:, :1].repeat(2, 1), q, s


def _nan(a, q, s, v):
    return q, a * np.nan, q, s


def _not_a_tuple(a, q, s, v):
    return [q, a, q, s]


@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer])
@pytest.mark.parametrize("func,pattern", [
    (_bad_shape, r"returned grad_a of shape \(3, 2\), expected \(3, 1\)"),
    (_nan, r"returned a non-finite grad_a"),
    (_not_a_tuple, r"must return a tuple"),
])
def test_bad_callable_is_refused_before_any_change(cls, func, pattern):
    layer = cls.from_weights(np.random.default_rng(0).standard_normal((20, 3)),
                             loss=func)
    before = _state(layer)
    with pytest.raises(ValueError, match=pattern):
        layer.step(np.ones((3, 3)), np.array([1, 2, 3]), 0.1)
    assert _state(layer) == before


@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer])
def test_callable_refuses_online_and_ragged_targets(cls):
    layer = cls(20, 3, loss=_squared_callable)
    with pytest.raises(ValueError, match="mode='online' is not available"):
        layer.step(np.ones((1, 3)), np.array([1]), 0.1, mode="online")
    with pytest.raises(ValueError, match="same number of distinct targets"):
        layer.step(np.ones((2, 3)), (np.array([[1, 2], [3, 3]]), None), 0.1)


@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer])
def test_z_loss_needs_one_target(cls):
    layer = cls(20, 3, loss="z_loss")
    before = _state(layer)
    with pytest.raises(ValueError, match="exactly one target per example; example 1 has 2"):
        layer.step(np.ones((2, 3)), (np.array([[1, 1], [2, 3]]), None), 0.1)
    assert _state(layer) == before


def test_online_r_zero_after_state_dependent_dL_dq_is_applied_exactly():
    # Spherical softmax: dL/dq = Y / (q + D eps) depends on the state, so
    # r = 1 - 2 lr dL/dq ||h||^2 of the 2nd example is only known after the
    # 1st update.  Find the lr for which it is 0: the kernel must apply that
    # example as the dense layer does (W zeroed along h but for the target
    # term), with its factor applied to V (docs/algorithm.md §4.1).
    from scipy.optimize import brentq
    rng = np.random.default_rng(7)
    D_, d = 20, 3
    W0 = 0.1 * rng.standard_normal((D_, d))
    loss = SphericalSoftmax(eps=1e-3)
    H = np.array([[0.1, 0.0, 0.0], [0.0, 3.0, 0.0]])  # a small then a large h
    t = np.array([1, 2])

    def r1(lr):
        n = NaiveOutputLayer.from_weights(W0, loss=loss)
        n.step(H[:1], t[:1], lr, mode="online")
        o = n.outputs(H[1:])[0]
        return 1 - 2 * lr * (1 / (o @ o + D_ * loss.eps)) * (H[1] @ H[1])

    lr = brentq(r1, 1e-3, 1.0)
    layer = FactoredOutputLayer.from_weights(W0, loss=loss)
    naive = NaiveOutputLayer.from_weights(W0, loss=loss)
    lf, gf = layer.step(H, t, lr, mode="online")
    ln, gn = naive.step(H, t, lr, mode="online")
    np.testing.assert_allclose(lf, ln, rtol=1e-10)
    np.testing.assert_allclose(gf, gn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weights(), naive.weights(), rtol=1e-9, atol=1e-12)
    assert layer.health()["n_near_singular_updates"] == 1
    assert layer.health()["min_abs_factor"] < 1e-6


# ---- prior_bias: the layer with W = 0 starts at a given distribution ------
@pytest.mark.parametrize("loss", [losses.SphericalSoftmax(eps=0.1),
                                  losses.SphericalSoftmax(eps=1e-3),
                                  losses.TaylorSoftmax()])
@pytest.mark.parametrize("uniform", [0.05, 0.5])
def test_prior_bias_gives_the_distribution(loss, uniform):
    D = 40
    counts = np.random.default_rng(3).integers(0, 50, D) ** 2
    b = loss.prior_bias(counts, uniform=uniform)
    assert b.shape == (D,) and b.dtype == np.float64
    # the model of a layer with W = 0: every output is the bias
    layer = FactoredOutputLayer.from_weights(np.zeros((D, 3)), loss=loss, bias=b)
    o = layer.outputs(np.zeros((1, 3)))
    q, s = np.array([(o * o).sum()]), np.array([o.sum()])
    p = counts / counts.sum()
    np.testing.assert_allclose(loss.proba(o, q, s, D)[0], (1 - uniform) * p + uniform / D,
                               rtol=1e-10, atol=1e-15)


def test_prior_bias_of_the_other_losses_and_refusals():
    p = np.array([1.0, 3.0, 0.0, 6.0])
    np.testing.assert_allclose(losses.SquaredError().prior_bias(p), p / 10)
    z = losses.ZLoss().prior_bias(p)
    assert list(np.argsort(z)) == [2, 0, 1, 3]
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    assert not losses.ZLoss().prior_bias(np.ones(5)).any()
    with pytest.raises(NotImplementedError):
        losses.get_loss(lambda a, q, s, y: (q, 0 * a, 1 + 0 * q, 0 * q)).prior_bias(p)
    for bad in ([], [[1.0, 2.0]], [1.0, -1.0], [0.0, 0.0], [1.0, np.nan]):
        with pytest.raises(ValueError):
            losses.SquaredError().prior_bias(bad)
    with pytest.raises(TypeError):
        losses.SquaredError().prior_bias(["a"])
    for u in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="uniform"):
            losses.SphericalSoftmax().prior_bias(p, uniform=u)
