"""The three target formats, and duplicate indices summed."""
import numpy as np
import pytest
import scipy.sparse as sp

from fastsparse import FactoredOutputLayer, NaiveOutputLayer
from fastsparse._validation import parse_targets

LAYERS = [FactoredOutputLayer, NaiveOutputLayer]


def _layer(cls, D=100, d=6):
    W0 = np.random.default_rng(0).standard_normal((D, d))
    return cls.from_weights(W0)


@pytest.mark.parametrize("cls", LAYERS)
def test_three_formats_agree(cls):
    rng = np.random.default_rng(1)
    H = rng.standard_normal((4, 6))
    t = np.array([3, 99, 0, 3])
    as_tuple = (t[:, None], np.ones((4, 1)))
    as_tuple_none = (t[:, None], None)
    as_sparse = sp.csr_array((np.ones(4), (np.arange(4), t)), shape=(4, 100))
    as_coo_matrix = sp.coo_matrix(as_sparse)
    ref = _layer(cls).loss_and_grad(H, t)
    for tg in (as_tuple, as_tuple_none, as_sparse, as_coo_matrix, list(t)):
        loss, grad = _layer(cls).loss_and_grad(H, tg)
        np.testing.assert_array_equal(loss, ref[0])
        np.testing.assert_array_equal(grad, ref[1])


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("mode", ["online", "batch"])
def test_duplicates_are_summed(cls, mode):
    rng = np.random.default_rng(2)
    H = 0.3 * rng.standard_normal((3, 6))
    dup = (np.array([[5, 7, 5], [1, 1, 1], [2, 3, 4]]),
           np.array([[1.0, 2.0, 0.5], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0]]))
    merged = sp.csr_array(
        (np.array([1.5, 2.0, 1.0, 1.0, 1.0, 1.0]),
         np.array([5, 7, 1, 2, 3, 4]), np.array([0, 2, 3, 6])), shape=(3, 100))
    a, b = _layer(cls), _layer(cls)
    la, ga = a.step(H, dup, 0.05, mode=mode)
    lb, gb = b.step(H, merged, 0.05, mode=mode)
    np.testing.assert_allclose(la, lb, rtol=1e-13)
    np.testing.assert_allclose(ga, gb, rtol=1e-13)
    np.testing.assert_allclose(a.weights(), b.weights(), rtol=1e-13)


def test_duplicates_match_dense_truth():
    # Summed duplicates, checked against the dense definition ||W h - y||^2.
    layer = _layer(FactoredOutputLayer)
    W = layer.weights()
    h = np.random.default_rng(3).standard_normal((1, 6))
    y = np.zeros(100)
    y[5] = 3.0
    loss, _ = layer.loss_and_grad(h, (np.array([[5, 5, 5]]), None))
    np.testing.assert_allclose(loss[0], ((W @ h[0] - y) ** 2).sum(), rtol=1e-12)


def test_sparse_variable_K_and_empty_rows():
    D, d = 100, 6
    rng = np.random.default_rng(4)
    H = 0.3 * rng.standard_normal((3, d))
    Y = sp.csr_array((np.array([1.0, -2.0, 0.5]), np.array([4, 9, 4]),
                      np.array([0, 2, 2, 3])), shape=(3, D))  # row 1 empty
    a, b = _layer(FactoredOutputLayer), _layer(NaiveOutputLayer)
    for mode in ("online", "batch"):
        la, ga = a.step(H, Y, 0.05, mode=mode)
        lb, gb = b.step(H, Y, 0.05, mode=mode)
        np.testing.assert_allclose(la, lb, rtol=1e-12)
        np.testing.assert_allclose(ga, gb, rtol=1e-12)
    np.testing.assert_allclose(a.weights(), b.weights(), rtol=1e-12)


def test_parse_targets_never_modifies_the_callers_arrays():
    idx = np.array([[8, 40, 32]])
    val = np.array([[1.0, 2.0, 3.0]])
    Y = sp.csr_array((np.array([1.0, 2.0]), np.array([9, 3]), np.array([0, 2])),
                     shape=(1, 50))
    tg = parse_targets((idx, val), 1, 50, np.dtype(np.float64))
    np.testing.assert_array_equal(idx, [[8, 40, 32]])
    np.testing.assert_array_equal(val, [[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(tg.indices, [8, 32, 40])
    np.testing.assert_array_equal(tg.values, [1.0, 3.0, 2.0])
    parse_targets(Y, 1, 50, np.dtype(np.float64))
    np.testing.assert_array_equal(Y.indices, [9, 3])


@pytest.mark.parametrize("cls", LAYERS)
def test_no_targets_at_all(cls):
    # K = 0: the loss only sees q (and s); same as an all-zero sparse target
    H = 0.3 * np.random.default_rng(5).standard_normal((3, 6))
    a, b = _layer(cls), _layer(cls)
    la, ga = a.step(H, (np.zeros((3, 0), dtype=int), None), 0.05, mode="online")
    lb, gb = b.step(H, sp.csr_array((3, 100)), 0.05, mode="online")
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ga, gb)


def test_empty_minibatch():
    layer = _layer(FactoredOutputLayer)
    loss, grad = layer.step(np.zeros((0, 6)), np.zeros(0, dtype=int), 0.1)
    assert loss.shape == (0,) and grad.shape == (0, 6)
