"""fastsparse.datasets: the synthetic data and the n-gram windows, against
plain Python computations of the same thing."""
import numpy as np
import pytest

from fastsparse.datasets import ZipfTargets, context_windows, default_lr, random_hidden


def _windows_by_hand(documents, n, bos, eos):
    X, Y = [], []
    for doc in documents:
        padded = [bos] * n + list(doc) + [eos]
        for t in range(n, len(padded)):
            X.append(padded[t - n:t])
            Y.append(padded[t])
    return X, Y


@pytest.mark.parametrize("n", [1, 3])
def test_context_windows_match_a_plain_loop(n):
    rng = np.random.default_rng(n)
    docs = [list(rng.integers(3, 50, rng.integers(0, 12))) for _ in range(40)]
    X, Y = context_windows(docs, n, bos=1, eos=2)
    Xr, Yr = _windows_by_hand(docs, n, 1, 2)
    assert X.dtype == Y.dtype == np.int64 and X.shape == (len(Yr), n)
    assert X.tolist() == Xr and Y.tolist() == Yr
    X32, Y32 = context_windows(iter(docs), n, 1, 2, dtype=np.int32)
    assert X32.dtype == np.int32 and Y32.dtype == np.int64
    assert X32.tolist() == Xr and Y32.tolist() == Yr


def test_context_windows_edge_cases():
    X, Y = context_windows([], 2, 1, 2)
    assert X.shape == (0, 2) and Y.shape == (0,)
    X, Y = context_windows([[]], 2, 1, 2)          # an empty document: its end
    assert X.tolist() == [[1, 1]] and Y.tolist() == [2]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_context"):
            context_windows([[3]], bad, 1, 2)
    with pytest.raises(TypeError, match="n_context"):
        context_windows([[3]], 2.0, 1, 2)


def test_zipf_targets_follow_the_distribution():
    D, n = 50, 200_000
    zipf = ZipfTargets(D, exponent=1.1)
    y = zipf.sample(np.random.default_rng(0), n)
    assert y.dtype == np.int64 and y.shape == (n,) and 0 <= y.min() and y.max() < D
    p = np.arange(1, D + 1) ** -1.1
    p /= p.sum()
    freq = np.bincount(y, minlength=D) / n
    np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(p.max() / n))
    idx, values = zipf.sample(np.random.default_rng(0), 7, k=3)
    assert idx.shape == (7, 3) and values is None
    with pytest.raises(ValueError, match="n_outputs"):
        ZipfTargets(0)
    with pytest.raises(ValueError, match="exponent"):
        ZipfTargets(10, exponent=-1.0)


def test_random_hidden_has_unit_rows():
    H = random_hidden(np.random.default_rng(0), 5, 8, np.float32)
    assert H.shape == (5, 8) and H.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(H, axis=1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="n_hidden"):
        random_hidden(np.random.default_rng(0), 5, 0, np.float32)


def test_default_lr():
    assert default_lr(1, 64, "batch") == default_lr(64, 64, "online") == 0.02
    lr = default_lr(256, 64, "batch")
    assert 2 * lr * (1 + np.sqrt(256 / 64)) ** 2 == pytest.approx(0.1)
    with pytest.raises(ValueError, match="mode"):
        default_lr(8, 8, "sgd")
