"""Numerical health: each corrective action leaves W unchanged, the control
keeps long runs exact, weight decay is exact, broken state is reported."""
import numpy as np
import pytest

from fastsparse import FactoredOutputLayer, NaiveOutputLayer, StepRefusedError
from _helpers import rel_err, state_bytes


def _drifted(dtype=np.float64, D=400, d=8, steps=20, seed=0, **kw):
    """A layer whose U is far from the identity and ill-conditioned
    (activations with a non-zero mean contract U along it)."""
    rng = np.random.default_rng(seed)
    layer = FactoredOutputLayer.from_weights(rng.standard_normal((D, d)),
                                             dtype=dtype, stability=False, **kw)
    for _ in range(steps):
        layer.step(np.tanh(rng.standard_normal((1, d)) + 0.5), rng.integers(0, D, 1),
                   0.05, mode="online")
    return layer


def _full(S):
    up = np.triu(S)
    return up + np.triu(up, 1).T


def _assert_consistent(layer, W_before, tol=1e-12):
    """W unchanged, Uinv = U^-1, M = V^T V, sv = V^T 1."""
    assert rel_err(layer.weights(), W_before) < tol
    d = layer._st.U.shape[0]
    assert np.abs(layer._st.U @ layer._st.Uinv - np.eye(d)).max() < 1e3 * tol
    assert rel_err(_full(layer._st.M), layer._st.V.T @ layer._st.V) < tol
    if layer._st.sv.size:
        assert rel_err(layer._st.sv, layer._st.V.sum(0)) < tol


@pytest.mark.parametrize("action", ["_renormalize", "_rescale", "refactorize",
                                    "refresh_inverse"])
@pytest.mark.parametrize("track_sum", [False, True])
def test_each_action_leaves_W_unchanged(action, track_sum):
    layer = _drifted(track_sum=track_sum, bias=True)
    hc = layer._health
    est = hc._estimate(layer._st, iterations=50, store=True)
    cond = est["cond"]
    assert cond > 50   # the fixture really is ill-conditioned
    W, b, U = layer.weights(), layer.bias(), layer._st.U.copy()
    if action == "_rescale":
        est["sigma_max"] = 2.0 ** 40   # pretend it left the range
    if action in ("_rescale", "_renormalize"):
        getattr(hc, action)(layer._st, est)
    else:
        getattr(hc, action)(layer._st)
    _assert_consistent(layer, W)
    assert rel_err(layer.bias(), b) < 1e-12
    if action == "_rescale":   # a power of two: exact
        np.testing.assert_array_equal(layer._st.U, U * 2.0 ** -40)
    est = hc._estimate(layer._st, iterations=50, store=True)
    if action in ("_renormalize", "refactorize"):
        assert est["cond"] < cond / 10


def test_power_iteration_estimates_match_svd():
    layer = _drifted()
    hc = layer._health
    est = hc._estimate(layer._st, iterations=200, store=False)
    s = np.linalg.svd(layer._st.U, compute_uv=False)
    np.testing.assert_allclose(est["sigma_max"], s[0], rtol=1e-6)
    np.testing.assert_allclose(est["sigma_min"], s[-1], rtol=1e-6)
    # health() is the same estimate, and a pure read
    h = layer.health()
    np.testing.assert_allclose(h["sigma_min"], s[-1], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, kw, iterations", [(8, 8, 2), (24, 18, 0), (24, 18, 3),
                                               (40, 5, 1)])
def test_compiled_estimate_matches_numpy(dtype, d, kw, iterations):
    """_core.Arrays.estimate (C) against the NumPy reference estimate_numpy,
    on an ill-conditioned U and a slightly wrong inverse, from the same warm
    vectors: the same sigma_max, inverse error, Ritz values and subspace."""
    from fastsparse._health import estimate_numpy
    rng = np.random.default_rng(d + kw + iterations)
    Q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    U = ((Q1 * np.logspace(0, -3, d)) @ Q2.T).astype(dtype)
    Uinv = (np.linalg.inv(U.astype(np.float64))
            * (1 + 1e-4 * rng.standard_normal((d, d)))).astype(dtype)
    layer = FactoredOutputLayer.from_weights(rng.standard_normal((30, d)), dtype=dtype)
    layer._st.U[...] = U
    layer._st.Uinv[...] = Uinv
    x0 = rng.standard_normal(d)
    x0 /= np.linalg.norm(x0)
    X0 = np.linalg.qr(rng.standard_normal((d, kw)))[0]
    x, X, theta = x0.copy(), np.array(X0, order="C"), np.empty(kw)
    smax, err = layer._st.kernel.estimate(iterations, x, X, theta)
    smax_r, err_r, theta_r, x_r, X_r = estimate_numpy(U, Uinv, x0, X0, iterations)
    assert smax == pytest.approx(smax_r, rel=1e-12)
    assert err == pytest.approx(err_r, rel=1e-8)
    assert err > 1e-6                       # the inverse error is measured
    np.testing.assert_allclose(theta, theta_r, rtol=1e-9)
    assert np.all(np.diff(theta) <= 0)      # descending: weakest first
    np.testing.assert_allclose(x, x_r, rtol=1e-10, atol=1e-12)
    # the same vectors up to sign (eigenvector signs are LAPACK's choice)
    np.testing.assert_allclose(np.abs(X.T @ X_r), np.eye(kw), atol=1e-8)
    # the warm start is in place; wrong shapes are refused
    with pytest.raises(ValueError, match="inconsistent shapes"):
        layer._st.kernel.estimate(1, x, X[:, :kw - 1].copy(), theta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["U", "Uinv", "M", "omega", "sv"])
def test_nonfinite_names_the_array(dtype, where):
    layer = FactoredOutputLayer.from_weights(
        np.random.default_rng(2).standard_normal((20, 5)), dtype=dtype, bias=True,
        track_sum=True)
    st = layer._st
    assert st.kernel.nonfinite() is None
    np.testing.assert_allclose(st.kernel.m_norm(), np.linalg.norm(st.full_M()),
                               rtol=1e-6)
    arr = getattr(st, where)
    arr.flat[arr.size - 1] = np.inf
    assert st.kernel.nonfinite() == where
    with pytest.raises(FloatingPointError, match=f"non-finite values \\({where}\\)"):
        st.check_finite()


def test_control_keeps_cond_bounded_and_reports():
    rng = np.random.default_rng(1)
    layer = FactoredOutputLayer.from_weights(rng.standard_normal((400, 8)),
                                             stability={"max_cond": 20.0})
    naive = NaiveOutputLayer.from_weights(layer.weights())
    for _ in range(40):
        H = np.tanh(rng.standard_normal((8, 8)) + 0.5)
        t = rng.integers(0, 400, 8)
        layer.step(H, t, 0.05, mode="online")
        naive.step(H, t, 0.05, mode="online")
    h = layer.health()
    for key in ("sigma_max", "sigma_min", "cond", "inverse_error", "steps",
                "steps_since_renormalization", "n_checks", "n_inverse_refreshes",
                "n_renormalizations", "n_rescales", "n_refactorizations",
                "n_near_singular_updates", "min_abs_factor", "control_seconds"):
        assert key in h
    assert h["steps"] == 320
    assert h["n_renormalizations"] + h["n_refactorizations"] > 0
    assert h["cond"] < 20 * 1.5
    assert rel_err(layer.weights(), naive.weights()) < 1e-9
    # the same run without control is badly conditioned
    off = _drifted(steps=320)
    assert off.health()["cond"] > 1e3
    # and the full run above did need corrections
    assert layer._health.counts["renormalizations"] > 0


@pytest.mark.parametrize("case", ["small steps", "large steps", "repeated contexts",
                                  "z_loss"])
def test_minibatch_bounds_hold_and_grow_at_most_by_the_factor(case):
    """After every minibatch step the control's bounds are upper bounds of
    sigma_max(U)^2 and ||U^-1||^2 (docs/algorithm.md §5), and the bound of
    ||U^-1||^2 grows at most by 1 / lam_lo^2, lam_lo the smallest factor
    the step applies to U (from the eigenvalues of 2 lr dL/dq H H^T; the
    Frobenius growth alone is up to m times larger)."""
    rng = np.random.default_rng(5)
    D, d, m = 300, 24, 16
    loss = "z_loss" if case == "z_loss" else "squared"
    lr = {"small steps": 0.01, "large steps": 0.08, "repeated contexts": 0.05,
          "z_loss": 0.05}[case]
    layer = FactoredOutputLayer(D, d, dtype=np.float64, seed=0, loss=loss,
                                stability=False)
    ctl = layer._health.ctl
    grew = []
    for _ in range(12):
        H = rng.standard_normal((m, d)) / np.sqrt(d)
        if case == "repeated contexts":   # 2 lr m ||h||^2 = 0.8: a split
            H[:] = H[0] * np.sqrt(0.8 / (2 * lr * m)) / np.linalg.norm(H[0])
        before = ctl.sinv2
        layer.step(H, rng.integers(0, D, m), lr, mode="batch")
        s = np.linalg.svd(layer._st.U, compute_uv=False)
        assert s[0] ** 2 <= ctl.smax2 * (1 + 1e-12)
        assert s[-1] ** -2 <= ctl.sinv2 * (1 + 1e-12)
        if loss == "squared":
            mu = np.linalg.eigvalsh(2 * lr * H @ H.T)
            f = np.abs(1 - mu)
            lam_lo = min(1.0, f[f >= 0.5].min(initial=1.0))
            if np.sqrt(np.sum(mu ** 2)) * (1 + 1e-3) < 0.5:   # ||S||_F
                lam_lo = 1 - np.sqrt(np.sum(mu ** 2)) * (1 + 1e-3)
            assert ctl.sinv2 <= before / lam_lo ** 2 * (1 + 1e-9)
            grew.append(ctl.sinv2 / before)
    assert layer._health.counts["checks"] == 0
    if case == "repeated contexts":
        assert layer._health.counts["near_singular_updates"] > 0
    if loss == "squared":
        assert max(grew) > 1.0


def test_scheduled_check_with_clear_bounds_only_probes_the_inverse(monkeypatch):
    """A check on schedule whose bounds prove cond(U) <= max_cond / 2 (and
    the scale in range) runs no iteration and keeps the bounds, yet still
    refreshes a drifted inverse; a check the bounds ask for is a full one."""
    rng = np.random.default_rng(3)
    D, d = 200, 16
    layer = FactoredOutputLayer(D, d, dtype=np.float64, seed=0,
                                stability={"check_every": 8})
    hc, st = layer._health, layer._st
    calls = []
    estimate = hc._estimate

    def spy(st_, iterations, store, vectors=None):
        calls.append(iterations)
        if iterations == 0:     # the weakest tracked directions only
            assert vectors is not None and vectors < hc.max_lift + 2
        return estimate(st_, iterations, store, vectors)

    monkeypatch.setattr(hc, "_estimate", spy)
    set_bounds = hc._set_bounds
    resets = []
    monkeypatch.setattr(hc, "_set_bounds",
                        lambda st_, est: (resets.append(1), set_bounds(st_, est)))

    def run(n, lr=1e-3):
        for _ in range(n):
            layer.step(rng.standard_normal((1, d)) / np.sqrt(d),
                       rng.integers(0, D, 1), lr, mode="online")

    run(8)                      # the first check: no warm vectors yet, full
    assert calls == [2]
    assert len(resets) == 1
    run(16)                     # light checks leave the bounds as they are
    assert calls == [2, 0, 0]
    assert len(resets) == 1
    ctl = hc.ctl                # (but for ||M||_F, exact)
    assert ctl.mnorm == pytest.approx(np.linalg.norm(_full(st.M)), rel=1e-12)
    # a drifted inverse is refreshed by the light check
    st.Uinv[...] *= 1 + 1e-6 * rng.standard_normal((d, d))
    refreshes = hc.counts["inverse_refreshes"]
    run(8)
    assert calls[-1] == 0
    assert hc.counts["inverse_refreshes"] == refreshes + 1
    assert np.abs(st.U @ st.Uinv - np.eye(d)).max() < 1e-13
    # bounds that do not prove cond <= max_cond / 2: a full check
    ctl.sinv2 = ctl.sinv2 * hc.max_cond ** 2 / 3
    run(8)
    assert calls[-1] == 2


def test_refresh_recomputes_M_exactly():
    layer = _drifted(track_sum=True)
    W = layer.weights()
    layer._st.M += 1e-3          # pretend M drifted
    layer._st.sv -= 1e-3
    layer.refresh()
    _assert_consistent(layer, W)
    layer._st.Uinv *= 1.001
    layer.refresh(exact=False)
    assert np.abs(layer._st.U @ layer._st.Uinv - np.eye(8)).max() < 1e-10


@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("loss,bias", [("squared", False), ("taylor_softmax", True)])
def test_weight_decay_matches_dense(mode, loss, bias):
    rng = np.random.default_rng(2)
    W0 = rng.standard_normal((300, 6)) / 3
    f = FactoredOutputLayer.from_weights(W0, loss=loss, bias=bias)
    n = NaiveOutputLayer.from_weights(W0, loss=loss, bias=bias)
    for _ in range(30):
        H = 0.3 * rng.standard_normal((4, 6))
        t = rng.integers(0, 300, 4)
        lf, gf = f.step(H, t, 0.05, mode=mode, weight_decay=0.1)
        ln, gn = n.step(H, t, 0.05, mode=mode, weight_decay=0.1)
        assert rel_err(lf, ln) < 1e-10 and rel_err(gf, gn) < 1e-10
    assert rel_err(f.weights(), n.weights()) < 1e-10
    if bias:
        assert rel_err(f.bias(), n.bias()) < 1e-10
    # and it did decay: without it the weights differ
    n2 = NaiveOutputLayer.from_weights(W0, loss=loss, bias=bias)
    assert rel_err(n2.weights(), n.weights()) > 1e-3


def test_weight_decay_alone_is_exact_scaling():
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((100, 5))
    f = FactoredOutputLayer.from_weights(W0)
    f.step(np.zeros((3, 5)), np.arange(3), 0.1, mode="online", weight_decay=0.5)
    np.testing.assert_allclose(f.weights(), W0 * 0.95 ** 3, rtol=1e-13)


def test_weight_decay_validation():
    f = FactoredOutputLayer(10, 3)
    with pytest.raises(ValueError, match="weight_decay must be finite and >= 0, got -1.0"):
        f.step(np.ones((1, 3)), np.array([1]), 0.1, weight_decay=-1)
    with pytest.raises(ValueError, match=r"lr \* weight_decay must be < 1"):
        f.step(np.ones((1, 3)), np.array([1]), 0.5, weight_decay=2)


@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("where", ["U", "Uinv", "M"])
def test_non_finite_state_is_reported_not_propagated(mode, where):
    layer = FactoredOutputLayer.from_weights(np.random.default_rng(4).standard_normal((50, 4)))
    getattr(layer._st, where)[1, 1] = np.nan
    V_before = layer._st.V.copy()
    with pytest.raises(FloatingPointError, match="not finite|non-finite"):
        layer.step(np.ones((2, 4)), np.array([3, 4]), 0.01, mode=mode)
    np.testing.assert_array_equal(layer._st.V, V_before)   # nothing spread into V
    with pytest.raises(FloatingPointError, match="non-finite values"):
        layer.health()


def test_stability_knobs_are_validated():
    with pytest.raises(ValueError, match="check_every must be >= 1"):
        FactoredOutputLayer(10, 3, stability={"check_every": 0})
    with pytest.raises(ValueError, match="max_cond must be finite and > 1"):
        FactoredOutputLayer(10, 3, stability={"max_cond": 0.5})
    with pytest.raises(TypeError, match="unexpected keyword"):
        FactoredOutputLayer(10, 3, stability={"bogus": 1})
    with pytest.raises(TypeError, match="stability must be"):
        FactoredOutputLayer(10, 3, stability="yes")
    assert not FactoredOutputLayer(10, 3, stability=False)._health.enabled


# ---- long runs: float32 factored vs float64 dense ---------------------------
def _long_run(mode, n_updates, m, lr):
    """Train a controlled and an uncontrolled float32 factored layer and a
    float64 dense reference on the same data: activations tanh(z + 0.1)
    (hidden units of a language model, with a small mean), Zipf targets.
    Returns the worst relative error of W (sampled ten times) and of the
    losses, for both factored layers, and the controlled layer's health."""
    from threadpoolctl import threadpool_limits
    from _streams import dense_sgd_step
    D, d = 20_000, 64
    rng = np.random.default_rng(0)
    W0 = (0.1 * rng.standard_normal((D, d))).astype(np.float32)
    W = W0.astype(np.float64)      # the reference: dense SGD in float64
    layers = {"on": FactoredOutputLayer.from_weights(W0),
              "off": FactoredOutputLayer.from_weights(W0, stability=False)}
    zipf = 1.0 / np.arange(1, D + 1)
    zipf /= zipf.sum()
    w_err = dict.fromkeys(layers, 0.0)
    l_err = dict.fromkeys(layers, 0.0)
    calls = n_updates // m if mode == "online" else n_updates
    # the uncontrolled layer's weights may overflow: measuring them warns
    with threadpool_limits(1), np.errstate(over="ignore", invalid="ignore"):
        for c in range(calls):
            H = np.tanh(rng.standard_normal((m, d)) + 0.1).astype(np.float32)
            t = rng.choice(D, size=m, p=zipf)
            loss_ref = dense_sgd_step(W, H, t, lr, mode)
            for name, layer in layers.items():
                if w_err[name] == np.inf:
                    continue
                try:
                    loss, _ = layer.step(H, t, lr, mode=mode)
                except (FloatingPointError, StepRefusedError):
                    if name == "on":
                        raise
                    # the uncontrolled one may break, or refuse a step
                    # that would overflow its state
                    w_err[name] = l_err[name] = np.inf
                    continue
                l_err[name] = max(l_err[name], rel_err(loss, loss_ref))
            if (c + 1) % (calls // 10) == 0:
                for name, layer in layers.items():
                    if w_err[name] < np.inf:
                        w_err[name] = max(w_err[name], rel_err(layer.weights(), W))
    return w_err, l_err, layers["on"].health()


@pytest.mark.slow
@pytest.mark.parametrize("mode,n_updates,m,lr", [("online", 100_000, 64, 8e-4),
                                                 ("batch", 2_000, 64, 2e-4)])
def test_long_float32_run_stays_exact(mode, n_updates, m, lr):
    w_err, l_err, health = _long_run(mode, n_updates, m, lr)
    # with the control: W within 1e-4 throughout, losses to float32 rounding
    assert w_err["on"] < 1e-4, (w_err, health)
    assert l_err["on"] < 1e-5, (l_err, health)
    # without it the same run drifts measurably
    assert w_err["off"] > 10 * max(w_err["on"], 1e-5), (w_err, health)
    assert health["cond"] <= 1.5 * 30


@pytest.mark.parametrize("action", ["_renormalize", "_rescale", "refactorize"])
def test_actions_that_would_leave_the_range_are_skipped(action):
    """A correction whose results would overflow the layer's dtype (its
    range: NORM_LIMIT, 2^60 in float32) is skipped with a RuntimeWarning
    and changes nothing (it once wrote Inf into M, or raised OverflowError
    on an infinite estimate): a rescale by 2^40 of a state whose M is near
    2^50, a refactorisation by a U of scale 2^40, a renormalisation with an
    infinite estimate."""
    rng = np.random.default_rng(0)
    W0 = (0.5 * rng.standard_normal((50, 6))).astype(np.float32)
    layer = FactoredOutputLayer.from_weights(W0, dtype=np.float32)
    hc, st = layer._health, layer._st
    est = hc._estimate(st, iterations=2, store=False)
    if action == "_rescale":
        st.V *= np.float32(2.0 ** 24)
        st.M *= np.float32(2.0 ** 48)
        est["sigma_max"] = 2.0 ** 40
    elif action == "refactorize":
        st.U *= np.float32(2.0 ** 40)
        st.Uinv *= np.float32(2.0 ** -40)
    else:
        est["sigma_max"] = np.inf
    before = state_bytes(layer)
    with pytest.warns(RuntimeWarning, match="skipped"):
        done = (getattr(hc, action)(st, est) if action != "refactorize"
                else hc.refactorize(st))
    assert done is False
    assert state_bytes(layer) == before


def test_minibatch_whose_gram_matrix_overflows_is_refused():
    """Finite rows of H whose Gram matrix H H^T overflows float32: refused
    as out of range before anything changes (LAPACK was handed the Inf and
    its failure reported as MemoryError)."""
    rng = np.random.default_rng(1)
    W0 = (0.01 * rng.standard_normal((200, 40))).astype(np.float32)
    layer = FactoredOutputLayer.from_weights(W0, dtype=np.float32)
    H = (1e19 * rng.standard_normal((4, 40))).astype(np.float32)
    before = state_bytes(layer)
    with pytest.raises(StepRefusedError, match="out of the range") as info:
        layer.step(H, np.array([1, 2, 3, 4]), 1e-45, mode="batch")
    assert info.value.applied == 0
    assert state_bytes(layer) == before


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_example_whose_gradient_would_overflow_is_refused(mode):
    """A legal but extreme state (W ~ 2^70 in float32) and an example whose
    gradient 2 W^T W h overflows float32 (its loss, about 2^120, does not):
    refused as non-finite in both modes before anything changes (the
    online kernel writes gradients at the block's end, and returned Inf)."""
    rng = np.random.default_rng(2)
    W0 = (0.5 * rng.standard_normal((50, 6))).astype(np.float32)
    layer = FactoredOutputLayer.from_weights(W0, dtype=np.float32)
    st = layer._st
    st.V *= np.float32(2.0 ** 20)
    st.M *= np.float32(2.0 ** 40)
    st.U *= np.float32(2.0 ** 50)
    st.Uinv *= np.float32(2.0 ** -50)
    layer._health.start(st)
    H = np.full((2, 6), 2.0 ** -10, dtype=np.float32)
    before = state_bytes(layer)
    with pytest.raises(StepRefusedError, match="not finite") as info:
        layer.step(H, np.array([3, 4]), 0.0, mode=mode)
    assert info.value.applied == 0
    assert state_bytes(layer) == before


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_update_with_a_huge_factor_is_refused(mode):
    """lr = 1e20 on unit activations: the update multiplies U by about -1e20
    along them, beyond what float64 resolves (2^44 = 2^-8 / eps): refused
    before anything changes (it was applied, and the next check found U
    singular and raised FloatingPointError)."""
    rng = np.random.default_rng(3)
    W0 = 0.1 * rng.standard_normal((60, 8))
    layer = FactoredOutputLayer.from_weights(W0, dtype=np.float64)
    H = rng.standard_normal((3, 8)) / np.sqrt(8)
    before = state_bytes(layer)
    with pytest.raises(StepRefusedError, match="out of the range") as info:
        layer.step(H, np.array([1, 2, 3]), 1e20, mode=mode)
    assert info.value.applied == 0
    assert state_bytes(layer) == before
    layer.step(H, np.array([1, 2, 3]), 1e-3, mode=mode)    # and goes on
