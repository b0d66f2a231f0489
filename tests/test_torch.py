"""The PyTorch integration (fastsparse.torch): a small language model trained
with a dense nn.Linear output layer and with the fastsparse layer must
follow the same trajectory; plus the autograd contract, errors, eval mode
and zero-copy."""
import functools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastsparse  # noqa: E402
from fastsparse import FactoredOutputLayer, NaiveOutputLayer  # noqa: E402
from fastsparse.losses import (SphericalSoftmax, SquaredError,  # noqa: E402
                               TaylorSoftmax, ZLoss)
from fastsparse.torch import FactoredOutput, spherical_stats  # noqa: E402
from fastsparse.torch import _as_array  # noqa: E402
from _helpers import rel_err  # noqa: E402

LAYERS = {"factored": FactoredOutputLayer, "naive": NaiveOutputLayer}
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tensors here are tiny: torch's OpenMP threads only cost time
    (up to 50x on a loaded machine, where their barriers wait for
    descheduled threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the reference: losses written on the full D-dimensional output --------
def full_loss(loss, o, y):
    """Summed loss of outputs o (m, D) with one target y (m,) of value 1,
    written directly on all outputs (independently of (a, q, s))."""
    rows = torch.arange(o.shape[0])
    if loss.name == "squared":
        t = torch.zeros_like(o)
        t[rows, y] = 1
        return ((o - t) ** 2).sum()
    if loss.name == "spherical_softmax":
        e = o * o + loss.eps
        return -(torch.log(e[rows, y] / e.sum(1))).sum()
    if loss.name == "taylor_softmax":
        f = 1 + o + o * o / 2
        return -(torch.log(f[rows, y] / f.sum(1))).sum()
    z = (o[rows, y] - o.mean(1)) / o.std(1, unbiased=False)
    return (torch.nn.functional.softplus(loss.alpha * (loss.beta - z))
            / loss.alpha).sum()


# ---- the key test: a small LM, dense output layer vs fastsparse -------------
D, E, d, m = 1000, 16, 24, 16       # outputs (= vocabulary), embedding, hidden, batch


def _data(steps, seed=0):
    """Previous word -> next word: a fixed random bigram map 80% of the time."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(D)
    X = rng.integers(0, D, (steps, m))
    Y = np.where(rng.random((steps, m)) < 0.8, perm[X], rng.integers(0, D, (steps, m)))
    return torch.from_numpy(X), torch.from_numpy(Y)


def _model(dtype, bias, seed=0):
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(D, E).to(dtype)
    hid = torch.nn.Linear(E, d).to(dtype)
    out = torch.nn.Linear(d, D, bias=bias).to(dtype)
    return emb, hid, out


@functools.lru_cache(maxsize=None)
def _train(output, loss, bias, dtype, steps, lr, wd):
    """Train the model; return per-step losses, per-step gradients of the
    lower layers and the final output weights and bias.

    ``output``: "dense" (nn.Linear, SGD over every parameter) or a fastsparse
    layer class name (FactoredOutput from the same initial weights, SGD over
    the lower layers only).  The loss is summed over the minibatch.
    """
    X, Y = _data(steps)
    emb, hid, out = _model(TORCH[dtype], bias)
    lower = list(emb.parameters()) + list(hid.parameters())
    if output == "dense":
        opt = torch.optim.SGD(lower + list(out.parameters()), lr=lr, weight_decay=wd)
        head = lambda h, y: full_loss(loss, out(h), y)  # noqa: E731
    else:
        layer = LAYERS[output].from_weights(
            out.weight.detach().numpy(), loss=loss,
            bias=out.bias.detach().numpy() if bias else None)
        opt = torch.optim.SGD(lower, lr=lr, weight_decay=wd)
        head = FactoredOutput(layer, lr, weight_decay=wd)
    losses, grads = [], []
    for t in range(steps):
        opt.zero_grad()
        L = head(torch.tanh(hid(emb(X[t]))), Y[t])
        L.backward()
        losses.append(L.item())
        grads.append([p.grad.numpy().copy() for p in lower])
        opt.step()
    if output == "dense":
        W = out.weight.detach().numpy().copy()
        b = out.bias.detach().numpy().copy() if bias else None
    else:
        W, b = layer.weights(), layer.bias()
    return np.array(losses), grads, W, b


def _max_rel_errors(run, ref):
    """Largest relative error over the steps of the losses and of each
    lower layer's gradient, and those of the final output weights/bias."""
    losses, grads, W, b = run
    rlosses, rgrads, rW, rb = ref
    loss_err = np.max(np.abs(losses - rlosses) / np.abs(rlosses))
    grad_err = max(rel_err(g, r) for gs, rs in zip(grads, rgrads)
                   for g, r in zip(gs, rs))
    w_err = rel_err(W, rW)
    if rb is not None:
        w_err = max(w_err, rel_err(b, rb))
    return loss_err, grad_err, w_err


# float32, 300 steps.  Measured with this model and data over 5 seeds
# (max over the steps of the relative error vs the dense torch run), for
# the factored layer: losses <= 2e-5, lower-layer gradients <= 8.5e-5, final
# W and b <= 3.3e-6 (at seed 0, the one tested: 3.4e-6, 3.6e-5, 3.3e-6).
# The NaiveOutputLayer -- another dense float32 implementation of the very
# same arithmetic -- is at the same level (gradients up to 1.0e-4): this is
# float32 rounding amplified by the training, not an inexactness of the
# method.  Gradients are the most sensitive: late in training the residuals
# o - y are small against o, so their relative rounding error is larger.
# Hence RTOL32 = 1e-4 for the losses and weights, GTOL32 = 3e-4 for the
# gradients; any real mistake (a wrong lr, a missed bias or decay update, a
# step late) gives errors of 1e-3 to 1.
# The learning rates keep the dynamics far from chaotic: for the squared
# error every factor 1 - 2 lr lambda(H^T H) of the minibatch update stays
# away from 0 (near 0 the factored layer's U is nearly singular and rounding
# is amplified by up to ~1/|r|: with lr = 5e-3, a step with r = -2e-3 takes
# the factored layer's gradients from 1.4e-4 to 1.2e-2 away from the dense
# ones, and the run ends far away, while the naive layer stays at 1e-4), and the
# spherical softmax uses eps = 0.3 (with a small eps, -log(a^2 + eps) is
# concave at a = 0 and a target output near 0 picks its sign by rounding
# noise: with eps = 0.01, lr = 0.02 even the naive layer ends O(1) away from
# the dense torch run).
RTOL32, GTOL32 = 1e-4, 3e-4
# float64: measured <= 6e-14 (loss, gradients and weights, all four losses).
RTOL64 = 1e-10

CASES = [  # loss, lr: the summed loss falls by 98% and 19% over the 300 steps
    (SquaredError(), 2e-3),
    (SphericalSoftmax(eps=0.3), 3e-2),
]


@pytest.mark.parametrize("output,bias", [("factored", False), ("factored", True),
                                         ("naive", True)])
@pytest.mark.parametrize("loss,lr", CASES, ids=lambda x: getattr(x, "name", None))
def test_training_matches_dense_float32(loss, lr, output, bias):
    ref = _train("dense", loss, bias, np.float32, 300, lr, 0.0)
    run = _train(output, loss, bias, np.float32, 300, lr, 0.0)
    assert ref[0][-1] < 0.9 * ref[0][0]          # it did learn something
    loss_err, grad_err, w_err = _max_rel_errors(run, ref)
    assert loss_err < RTOL32
    assert grad_err < GTOL32
    assert w_err < RTOL32


@pytest.mark.parametrize("loss,lr", [
    (SquaredError(), 2e-3), (SphericalSoftmax(eps=0.3), 3e-2),
    (TaylorSoftmax(), 3e-2), (ZLoss(alpha=0.5, beta=3.0), 3e-2)],
    ids=lambda x: getattr(x, "name", None))
def test_training_matches_dense_float64(loss, lr):
    ref = _train("dense", loss, True, np.float64, 100, lr, 0.0)
    run = _train("factored", loss, True, np.float64, 100, lr, 0.0)
    assert max(_max_rel_errors(run, ref)) < RTOL64


def test_training_with_weight_decay_matches_dense():
    """weight_decay has torch.optim.SGD's meaning (W and b decay alike)."""
    args = (SquaredError(), True, np.float32, 200, 2e-3, 0.5)
    ref = _train("dense", *args)
    run = _train("factored", *args)
    loss_err, grad_err, w_err = _max_rel_errors(run, ref)  # measured 6e-6, 4.5e-5, 3e-6
    assert loss_err < RTOL32 and grad_err < GTOL32 and w_err < RTOL32


# ---- the autograd contract against the layer's own methods -----------------
def _targets(loss, rng, n=m, D=40):
    """(indices, values) with a duplicate index in example 0."""
    if loss.name == "z_loss":
        idx = rng.integers(0, D, (n, 1)).repeat(2, axis=1)   # one index, twice
    else:
        idx = rng.integers(0, D, (n, 3))
        idx[0, 2] = idx[0, 0]
    return idx, rng.uniform(0.5, 1.5, idx.shape)


@pytest.mark.parametrize("loss", [SquaredError(), SphericalSoftmax(eps=0.05),
                                  TaylorSoftmax(), ZLoss(alpha=0.7, beta=1.5)],
                         ids=lambda x: x.name)
@pytest.mark.parametrize("cls", [FactoredOutputLayer, NaiveOutputLayer],
                         ids=["factored", "naive"])
def test_module_equals_layer_step(loss, cls, rng):
    """Per-example losses, dL/dh and the update equal layer.step(mode="batch")
    with the same (duplicate, weighted) targets; float64."""
    W = rng.standard_normal((40, 6)) / 3
    b = rng.standard_normal(40) / 3
    H = np.tanh(rng.standard_normal((m, 6)))
    idx, val = _targets(loss, rng)
    lr, wd = 0.01, 0.1
    ref = cls.from_weights(W, bias=b, loss=loss)
    L_ref, G_ref = ref.step(H, (idx, val), lr, mode="batch", weight_decay=wd)

    layer = cls.from_weights(W, bias=b, loss=loss)
    out = FactoredOutput(layer, lr, weight_decay=wd, reduction="none")
    h = torch.tensor(H, requires_grad=True)
    L = out(h, (torch.from_numpy(idx), torch.from_numpy(val)))
    L.sum().backward()
    assert L.shape == (m,) and L.dtype == torch.float64
    assert rel_err(L.detach().numpy(), L_ref) < 1e-12
    assert rel_err(h.grad.numpy(), G_ref) < 1e-12
    assert rel_err(layer.weights(), ref.weights()) < 1e-12
    assert rel_err(layer.bias(), ref.bias()) < 1e-12


def test_spherical_stats_gradcheck(rng):
    """Backward of (a, q, s) w.r.t. h by finite differences (lr = 0)."""
    layer = FactoredOutputLayer(30, 5, dtype=np.float64, seed=1, bias=True,
                                track_sum=True)
    idx = rng.integers(0, 30, (4, 3))
    idx[1, 1] = idx[1, 0]                    # a duplicate: its grads are summed
    h = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: spherical_stats(x, layer, idx), (h,))


def test_spherical_stats_values_and_no_sum(rng):
    layer = NaiveOutputLayer(30, 5, dtype=np.float64, seed=1)   # track_sum False
    H = rng.standard_normal((4, 5))
    idx = rng.integers(0, 30, (4, 2))
    a, q, s = spherical_stats(torch.from_numpy(H), layer, idx)
    O = layer.outputs(H)
    assert s is None
    np.testing.assert_allclose(a.numpy(), np.take_along_axis(O, idx, 1), rtol=1e-12)
    np.testing.assert_allclose(q.numpy(), (O * O).sum(1), rtol=1e-12)


def test_custom_loss_through_spherical_stats(rng):
    """A loss written by hand on (a, q, s): the layer's update is SGD on it."""
    W = rng.standard_normal((30, 5))
    H = rng.standard_normal((4, 5))
    idx = rng.integers(0, 30, (4, 1))
    layer = FactoredOutputLayer.from_weights(W, track_sum=True)
    h = torch.tensor(H, requires_grad=True)
    a, q, s = spherical_stats(h, layer, idx, lr=0.01)
    (q.sum() - 2 * a.sum() + 0.5 * (s ** 2).sum()).backward()
    # the same loss on a dense torch layer
    Wt = torch.tensor(W, requires_grad=True)
    ht = torch.tensor(H, requires_grad=True)
    o = ht @ Wt.T
    (o.pow(2).sum() - 2 * o.gather(1, torch.from_numpy(idx)).sum()
     + 0.5 * (o.sum(1) ** 2).sum()).backward()
    assert rel_err(h.grad.numpy(), ht.grad.numpy()) < 1e-12
    assert rel_err(layer.weights(), (Wt - 0.01 * Wt.grad).detach().numpy()) < 1e-12


def test_callable_loss(rng):
    """A CallableLoss is called through an autograd Function: same as the
    built-in squared error it implements."""
    def squared(a, q, s, y):
        return q - 2 * (y * a).sum(1) + (y * y).sum(1), -2 * y, np.ones_like(q), 0 * s

    W = rng.standard_normal((30, 5))
    H = rng.standard_normal((4, 5))
    y = rng.integers(0, 30, 4)
    results = []
    for loss in (squared, "squared"):
        layer = FactoredOutputLayer.from_weights(W, loss=loss)
        h = torch.tensor(H, requires_grad=True)
        L = FactoredOutput(layer, 0.01)(h, torch.from_numpy(y))
        L.backward()
        results.append((L.item(), h.grad.numpy(), layer.weights()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    assert rel_err(results[0][1], results[1][1]) < 1e-12
    assert rel_err(results[0][2], results[1][2]) < 1e-12


def test_reduction_mean_is_sum_with_lr_over_m(rng):
    W = rng.standard_normal((30, 5)).astype(np.float32)
    H = torch.tensor(rng.standard_normal((8, 5)), dtype=torch.float32)
    y = torch.from_numpy(rng.integers(0, 30, 8))
    layers, grads = [], []
    for reduction, lr in (("mean", 0.08), ("sum", 0.01)):
        layer = FactoredOutputLayer.from_weights(W, loss="spherical_softmax")
        h = H.clone().requires_grad_()
        FactoredOutput(layer, lr, reduction=reduction)(h, y).backward()
        layers.append(layer.weights())
        grads.append(h.grad.numpy())
    assert rel_err(layers[0], layers[1]) < 1e-6
    assert rel_err(8 * grads[0], grads[1]) < 1e-6


def test_output_layer_alone_on_fixed_features(rng):
    """h without requires_grad: backward still runs and updates the layer."""
    W = rng.standard_normal((30, 5))
    H = rng.standard_normal((4, 5))
    y = rng.integers(0, 30, 4)
    ref = FactoredOutputLayer.from_weights(W)
    ref.step(H, y, 0.01)
    layer = FactoredOutputLayer.from_weights(W)
    FactoredOutput(layer, 0.01)(torch.from_numpy(H), torch.from_numpy(y)).backward()
    assert rel_err(layer.weights(), ref.weights()) < 1e-12


def test_duplicate_targets_are_merged(rng):
    """[j, j] with values (u, v) is the single target j of value u + v."""
    W = rng.standard_normal((30, 5))
    H = torch.tensor(rng.standard_normal((3, 5)))
    for loss in ("squared", "spherical_softmax", "z_loss"):
        layer = FactoredOutputLayer.from_weights(W, loss=loss)
        out = FactoredOutput(layer, 0.0, reduction="none")
        merged = out(H, (np.array([[4], [7], [9]]), np.array([[1.5], [2.0], [1.0]])))
        dup = out(H, (np.array([[4, 4], [7, 7], [9, 9]]),
                      np.array([[0.5, 1.0], [1.5, 0.5], [1.0, 0.0]])))
        np.testing.assert_allclose(dup.numpy(), merged.numpy(), rtol=1e-12)


@pytest.mark.parametrize("loss", ["squared", "spherical_softmax", "taylor_softmax"])
def test_many_duplicates_match_layer(loss, rng):
    """Rows full of repeated indices: the same losses and dL/dh as the
    layer, which sums duplicates (scipy.sparse)."""
    W = rng.standard_normal((30, 5)) / 3
    H = rng.standard_normal((50, 5))
    idx = rng.integers(0, 4, (50, 6))
    val = rng.uniform(0.1, 1.0, idx.shape)
    layer = FactoredOutputLayer.from_weights(W, loss=loss)
    L_ref, G_ref = layer.loss_and_grad(H, (idx, val))
    h = torch.tensor(H, requires_grad=True)
    L = FactoredOutput(layer, 0.0, reduction="none")(h, (idx, torch.from_numpy(val)))
    L.sum().backward()
    assert rel_err(L.detach().numpy(), L_ref) < 1e-12
    assert rel_err(h.grad.numpy(), G_ref) < 1e-12


def test_empty_batch_and_no_targets(rng):
    W = rng.standard_normal((30, 5))
    layer = FactoredOutputLayer.from_weights(W, loss="squared")
    out = FactoredOutput(layer, 0.01, reduction="mean")
    h = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
    L = out(h, torch.zeros(0, dtype=torch.int64))
    L.backward()
    assert L.item() == 0 and h.grad.shape == (0, 5)
    np.testing.assert_array_equal(layer.weights(), W)
    # K = 0: the squared error of no target is ||o||^2
    H = rng.standard_normal((3, 5))
    h = torch.tensor(H, requires_grad=True)
    out.reduction = "sum"
    L = out(h, (np.zeros((3, 0), dtype=np.int64), None))
    L.backward()
    O = H @ W.T
    assert L.item() == pytest.approx((O * O).sum(), rel=1e-12)
    assert rel_err(h.grad.numpy(), 2 * O @ W) < 1e-12
    assert rel_err(layer.weights(), W - 0.01 * 2 * O.T @ H) < 1e-12


# ---- no update in eval mode or without grad ---------------------------------
def _layer_and_batch(rng):
    layer = FactoredOutputLayer(50, 6, seed=3, bias=True, loss="spherical_softmax")
    h = torch.tensor(rng.standard_normal((5, 6)), dtype=torch.float32)
    y = torch.from_numpy(rng.integers(0, 50, 5))
    return layer, h, y


def test_no_update_in_eval_mode(rng):
    layer, h, y = _layer_and_batch(rng)
    W, b = layer.weights(), layer.bias()
    _, G_ref = layer.loss_and_grad(h.numpy(), y.numpy())
    out = FactoredOutput(layer, 0.5).eval()
    h.requires_grad_()
    out(h, y).backward()                     # dL/dh only
    np.testing.assert_array_equal(layer.weights(), W)
    np.testing.assert_array_equal(layer.bias(), b)
    assert rel_err(h.grad.numpy(), G_ref) < 1e-6
    out.train()
    out(h, y).backward()                     # now it trains
    assert rel_err(layer.weights(), W) > 1e-4


def test_no_update_under_no_grad(rng):
    layer, h, y = _layer_and_batch(rng)
    W = layer.weights()
    out = FactoredOutput(layer, 0.5)
    h.requires_grad_()
    with torch.no_grad():
        L = out(h, y)
    assert L.grad_fn is None and not L.requires_grad
    with torch.inference_mode():
        out(h.detach(), y)
    np.testing.assert_array_equal(layer.weights(), W)


def test_stale_backward_is_refused(rng):
    """A backward after the layer was updated since its forward (two
    forwards, one backward; or a second backward of the same graph)."""
    layer, h, y = _layer_and_batch(rng)
    out = FactoredOutput(layer, 0.1)
    h.requires_grad_()
    with pytest.raises(RuntimeError, match="updated"):
        (out(h, y) + out(h, y)).backward()
    L = out(h, y)
    L.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="updated"):
        L.backward()
    # without updates (lr = 0), gradients may be accumulated
    out.lr = 0.0
    h.grad = None
    (out(h, y) + out(h, y)).backward()
    _, G = layer.loss_and_grad(h.detach().numpy(), y.numpy())
    assert rel_err(h.grad.numpy(), 2 * G) < 1e-6


# ---- zero copy and contiguity -------------------------------------------------
def test_zero_copy():
    h = torch.randn(4, 6)
    arr = _as_array(h)
    assert arr.ctypes.data == h.data_ptr() and np.shares_memory(arr, h.numpy())
    arr[0, 0] = 42.0
    assert h[0, 0].item() == 42.0
    hg = h.clone().requires_grad_()         # requires_grad: still no copy
    assert _as_array(hg).ctypes.data == hg.data_ptr()
    ht = torch.randn(6, 4).T                # non-contiguous: a contiguous copy
    assert not np.shares_memory(_as_array(ht), ht.numpy())
    np.testing.assert_array_equal(_as_array(ht), ht.numpy())


def test_non_contiguous_h_is_made_contiguous(rng):
    layer = FactoredOutputLayer(50, 6, seed=3, dtype=np.float64)
    base = torch.tensor(rng.standard_normal((6, 10)), requires_grad=True)
    h = base[:, ::2].T[:, :6]                # (5, 6) strided view
    assert not h.is_contiguous()
    y = torch.from_numpy(rng.integers(0, 50, 5))
    L = FactoredOutput(layer, 0.0)(h, y)
    L.backward()
    _, G = layer.loss_and_grad(h.detach().numpy(), y.numpy())
    L_ref, _ = layer.loss_and_grad(np.ascontiguousarray(h.detach().numpy()), y.numpy())
    assert L.item() == pytest.approx(L_ref.sum(), rel=1e-12)
    expected = torch.zeros_like(base)
    expected[:, ::2].T[:, :6] += torch.from_numpy(G)
    np.testing.assert_allclose(base.grad.numpy(), expected.numpy(), rtol=1e-12)


# ---- errors ------------------------------------------------------------------------
@pytest.fixture
def out32():
    return FactoredOutput(FactoredOutputLayer(50, 6, seed=0), 0.1)


def test_errors_on_h(out32):
    y = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"h must have the layer's dtype torch.float32.*float64"):
        out32(torch.zeros(3, 6, dtype=torch.float64), y)
    with pytest.raises(TypeError, match="h must have the layer's dtype"):
        out32(torch.zeros(3, 6, dtype=torch.float16), y)
    with pytest.raises(TypeError, match="h must have the layer's dtype"):
        out32(torch.zeros(3, 6, dtype=torch.int64), y)
    with pytest.raises(ValueError, match=r"h must have shape \(m, n_hidden\) = \(m, 6\)"):
        out32(torch.zeros(3, 7), y)
    with pytest.raises(ValueError, match="h must have shape"):
        out32(torch.zeros(6), y)
    with pytest.raises(TypeError, match="h must be a torch.Tensor"):
        out32(np.zeros((3, 6), dtype=np.float32), y)
    with pytest.raises(ValueError, match="h must be on the CPU.*meta"):
        out32(torch.zeros(3, 6, device="meta"), y)
    with pytest.raises(ValueError, match="non-finite"):
        out32(torch.full((3, 6), float("nan")), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_error_on_cuda_h(out32):
    with pytest.raises(ValueError, match="h must be on the CPU"):
        out32(torch.zeros(3, 6, device="cuda"), torch.zeros(3, dtype=torch.int64))


def test_errors_on_targets(out32):
    h = torch.zeros(3, 6)
    with pytest.raises(ValueError,
                       match=r"targets: an index tensor must have shape \(m,\) = \(3,\)"):
        out32(h, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        out32(h, torch.zeros(3))
    with pytest.raises(IndexError, match=r"targets: index 50 is out of range \[0, 50\)"):
        out32(h, torch.tensor([0, 50, 1]))
    with pytest.raises(TypeError, match="targets must be an int tensor"):
        out32(h, {"a": 1})
    with pytest.raises(ValueError, match=r"targets indices must have shape \(m, K\) = \(3, K\)"):
        out32(h, (np.zeros(3, dtype=int), None))
    with pytest.raises(ValueError,
                       match=r"targets values must have the shape of the indices \(3, 2\)"):
        out32(h, (np.zeros((3, 2), dtype=int), np.ones((3, 1))))
    with pytest.raises(TypeError, match="targets values must be"):
        out32(h, (np.zeros((3, 2), dtype=int), np.ones((3, 2), dtype=int)))
    with pytest.raises(ValueError, match="targets values contain a non-finite"):
        out32(h, (np.zeros((3, 1), dtype=int), np.full((3, 1), np.inf)))
    with pytest.raises(ValueError, match="a tuple must be"):
        out32(h, (np.zeros((3, 1), dtype=int),))
    z = FactoredOutput(FactoredOutputLayer(50, 6, loss="z_loss"), 0.1)
    with pytest.raises(ValueError, match="z_loss needs exactly one target"):
        z(h, (np.array([[1, 1], [2, 3], [4, 4]]), None))
    c = FactoredOutput(FactoredOutputLayer(50, 6, loss=lambda a, q, s, y: None), 0.1)
    with pytest.raises(ValueError, match="callable loss needs distinct"):
        c(h, (np.array([[1, 1], [2, 3], [4, 5]]), None))


def test_errors_on_arguments():
    layer = FactoredOutputLayer(50, 6)
    with pytest.raises(TypeError, match="layer must be a fastsparse layer"):
        FactoredOutput(torch.nn.Linear(6, 50), 0.1)
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        FactoredOutput(layer, -1.0)
    with pytest.raises(TypeError, match="lr must be a real number"):
        FactoredOutput(layer, "0.1")
    with pytest.raises(ValueError, match="lr \\* weight_decay must be < 1"):
        FactoredOutput(layer, 0.5, weight_decay=2.0)
    with pytest.raises(ValueError, match="reduction"):
        FactoredOutput(layer, 0.1, reduction="max")
    out = FactoredOutput(layer, 0.1, weight_decay=2.0)
    with pytest.raises(ValueError, match="lr \\* weight_decay must be < 1"):
        out.lr = 0.5                          # checked on assignment too
    assert out.lr == 0.1
    with pytest.raises(ValueError, match="weight_decay must be finite"):
        spherical_stats(torch.zeros(2, 6), layer, np.zeros((2, 1), int), 0.1,
                        weight_decay=float("nan"))


def test_not_a_parameter():
    """The layer's state is invisible to optimisers and state_dict."""
    out = FactoredOutput(FactoredOutputLayer(50, 6), 0.1)
    assert list(out.parameters()) == [] and list(out.state_dict()) == []
    assert "lr=0.1" in repr(out)


def test_import_fastsparse_does_not_import_torch(tmp_path):
    # Run outside the source tree: from the checkout root, ``import
    # fastsparse`` would find the uncompiled sources instead of the install.
    code = "import sys, fastsparse; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert fastsparse.__name__ == "fastsparse"
