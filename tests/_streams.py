"""Data that looks like real use, for the precision tests.

A text-like stream: tokens i.i.d. Zipf(s) over the D outputs; h is the sum
of fixed random embeddings (N(0, 1/(3d))) of the 3 previous tokens, so that
frequent contexts repeat exactly, as in text; the target is the token
(squared error).  Three copies train on it from the same weights: the
factored layer, the naive layer (both in the dtype under test) and a
float64 dense SGD truth written here in NumPy.
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


def _truth_step(W, H, y, lr, mode, transposed=False):
    """Dense float64 SGD on the squared error; returns the losses.
    ``transposed``: W is stored as W^T (d, D), which rounds differently."""
    m = H.shape[0]
    if mode == "batch":
        O = H @ W if transposed else H @ W.T
        O[np.arange(m), y] -= 1
        if transposed:
            W -= lr * 2 * H.T @ O
        else:
            W -= lr * 2 * O.T @ H
        return (O * O).sum(1)
    L = np.empty(m)
    for i in range(m):
        o = H[i] @ W if transposed else W @ H[i]
        o[y[i]] -= 1
        L[i] = o @ o
        if transposed:
            W -= (2 * lr) * np.outer(H[i], o)
        else:
            W -= (2 * lr) * np.outer(o, H[i])
    return L


def precision_run(dtype, mode, lr, zipf, examples=20_000, layer_kw=None, **kw):
    """Train the copies; return the worst relative errors against the
    float64 truth: {"loss": (factored, naive, spread), "weights": (...)}
    (loss: max |L - L64| / max |L64| over each call; weights at the end,
    max |W - W64| / max |W64|), and the factored layer's health().

    ``spread`` is the same error of a second float64 dense SGD that stores
    W transposed: the float64 truth shares the naive layer's rounding
    pattern (both are the same BLAS calls), so the naive layer's error
    against it underestimates float64 rounding; the spread between two
    equally valid float64 implementations does not (measured against a
    long-double truth: online losses, factored 4 ulps, naive and the
    float64 truth 43)."""
    W0, calls = text_stream(examples=examples, zipf=zipf, **kw)
    dt = np.dtype(dtype)
    fac = FactoredOutputLayer.from_weights(W0.astype(dt), **(layer_kw or {}))
    nai = NaiveOutputLayer.from_weights(W0.astype(dt))
    W = W0.copy()
    WT = np.ascontiguousarray(W0.T)
    ef = en = es = 0.0
    for H, y in calls:
        Hd = H.astype(dt)
        Lf, _ = fac.step(Hd, y, lr, mode=mode)
        Ln, _ = nai.step(Hd, y, lr, mode=mode)
        L = _truth_step(W, H, y, lr, mode)
        L2 = _truth_step(WT, H, y, lr, mode, transposed=True)
        scale = np.abs(L).max()
        ef = max(ef, float(np.abs(Lf - L).max() / scale))
        en = max(en, float(np.abs(Ln - L).max() / scale))
        es = max(es, float(np.abs(L2 - L).max() / scale))
    ws = np.abs(W).max()
    wf = float(np.abs(fac.weights() - W).max() / ws)
    wn = float(np.abs(nai.weights() - W).max() / ws)
    wsp = float(np.abs(WT.T - W).max() / ws)
    return {"loss": (ef, en, es), "weights": (wf, wn, wsp)}, fac.health()
