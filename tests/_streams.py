"""Data that looks like real use, for the precision tests.

A text-like stream: tokens i.i.d. Zipf(s) over the D outputs; h is the sum
of fixed random embeddings (N(0, 1/(3d))) of the 3 previous tokens, so that
frequent contexts repeat exactly, as in text; the target is the token
(squared error).  Three copies train on it from the same weights: the
factored layer, the naive layer (both in the dtype under test) and a
dense SGD truth in a wider dtype, written here in NumPy.
"""
import numpy as np

from fastsparse import FactoredOutputLayer, NaiveOutputLayer


def text_stream(D=20_000, d=64, m=64, examples=20_000, zipf=1.1, seed=0,
                context=3):
    """(W0, list of (H, targets) calls) of a repetitive, text-like stream."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, D + 1) ** zipf
    p /= p.sum()
    steps = examples // m
    ids = rng.choice(D, size=steps * m + context, p=p)
    E = rng.standard_normal((D, d)) / np.sqrt(context * d)
    W0 = rng.standard_normal((D, d)) * 0.01
    calls = []
    for step in range(steps):
        pos = np.arange(context + step * m, context + step * m + m)
        H = sum(E[ids[pos - k]] for k in range(1, context + 1))
        calls.append((H, ids[pos]))
    return W0, calls


def dense_sgd_step(W, H, y, lr, mode):
    """Dense SGD on the squared error, in W's dtype; returns the losses.
    Online in float64: the sequential updates computed with matrix products
    (o_i = W0 h_i - 2 lr sum_{j<i} (h_j . h_i) o_j - e_{y_i}, then
    W -= 2 lr O^T H; the same numbers up to float64 rounding, 10x faster);
    in long double: one example after the other, as written."""
    m = H.shape[0]
    H = H.astype(W.dtype)
    if mode == "batch":
        O = H @ W.T
        O[np.arange(m), y] -= 1
        L = np.einsum("ij,ij->i", O, O)
        O *= 2 * lr
        W -= O.T @ H
        return L
    if W.dtype == np.float64:
        G = H @ H.T
        O = np.ascontiguousarray(H @ W.T)       # row i: W0 h_i, then o_i
        for i in range(m):
            if i:
                O[i] -= (2 * lr) * (G[i, :i] @ O[:i])
            O[i, y[i]] -= 1
        W -= (2 * lr) * (O.T @ H)
        return np.einsum("ij,ij->i", O, O)
    L = np.empty(m, W.dtype)
    for i in range(m):
        o = W @ H[i]
        o[y[i]] -= 1
        L[i] = o @ o
        W -= (2 * lr) * np.outer(o, H[i])
    return L


def truth_dtype(dtype):
    """The dtype of the dense truth for a layer of ``dtype``: float64 for
    float32; long double (x86: 64-bit mantissa, eps 1.1e-19) for float64.
    A float64 truth would share the float64 layers' rounding: measured
    against a long-double truth, the naive float64 layer and float64 dense
    SGD are equally far from it (8-25 ulps on the online stream), and which
    of two float64 computations agrees with the other depends on the CPU's
    BLAS kernels."""
    return np.float64 if np.dtype(dtype) == np.float32 else np.longdouble


def precision_run(dtype, mode, lr, zipf, examples=20_000, layer_kw=None, **kw):
    """Train the copies; return the worst relative errors against the
    dense truth (``truth_dtype``): {"loss": (factored, naive), "weights":
    (factored, naive)} (loss: max |L - L*| / max |L*| over each call;
    weights at the end, max |W - W*| / max |W*|), and the factored layer's
    health()."""
    W0, calls = text_stream(examples=examples, zipf=zipf, **kw)
    dt = np.dtype(dtype)
    fac = FactoredOutputLayer.from_weights(W0.astype(dt), **(layer_kw or {}))
    nai = NaiveOutputLayer.from_weights(W0.astype(dt))
    W = W0.astype(truth_dtype(dt))
    ef = en = 0.0
    for H, y in calls:
        Hd = H.astype(dt)
        Lf, _ = fac.step(Hd, y, lr, mode=mode)
        Ln, _ = nai.step(Hd, y, lr, mode=mode)
        L = dense_sgd_step(W, H, y, lr, mode)
        scale = np.abs(L).max()
        ef = max(ef, float(np.abs(Lf - L).max() / scale))
        en = max(en, float(np.abs(Ln - L).max() / scale))
    ws = np.abs(W).max()
    wf = float(np.abs(fac.weights() - W).max() / ws)
    wn = float(np.abs(nai.weights() - W).max() / ws)
    return {"loss": (ef, en), "weights": (wf, wn)}, fac.health()
