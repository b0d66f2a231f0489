"""Every invalid input is refused with a clear error, before any change."""
import re

import numpy as np
import pytest
import scipy.sparse as sp

from fastsparse import FactoredOutputLayer, NaiveOutputLayer

LAYERS = [FactoredOutputLayer, NaiveOutputLayer]
D, d = 50, 4


def _state(layer):
    """Every array of the layer's state, as bytes."""
    return {k: v.tobytes() for k, v in vars(layer).items()
            if isinstance(v, np.ndarray)}


def _layer(cls, dtype=np.float64):
    layer = cls.from_weights(np.random.default_rng(0).standard_normal((D, d)),
                             dtype=dtype)
    # move away from U = I so that "unchanged" is a real check
    layer.step(0.2 * np.ones((2, d)), np.array([1, 2]), 0.05, mode="online")
    return layer


GOOD_H = np.full((2, d), 0.1)
GOOD_T = np.array([1, 2])
nan_H = GOOD_H.copy()
nan_H[1, 2] = np.nan
inf_vals = np.array([[1.0], [np.inf]])

# (H, targets, lr, mode, exception, message pattern)
BAD_CALLS = [
    (np.full((2, d + 1), 0.1), GOOD_T, 0.1, "batch", ValueError, r"H must have shape"),
    (np.full(d, 0.1), GOOD_T[:1], 0.1, "batch", ValueError, r"H\[None, :\]"),
    (np.ones((2, d), dtype=np.int64), GOOD_T, 0.1, "batch", TypeError, r"H must be a float32 or float64"),
    (np.ones((2, d), dtype=np.float16), GOOD_T, 0.1, "batch", TypeError, r"H must be a float32 or float64"),
    (nan_H, GOOD_T, 0.1, "batch", ValueError, r"H contains a non-finite value .* index \(1, 2\)"),
    (np.full((2, d), 1e300), GOOD_T, 0.1, "batch", None, None),  # float32 only: overflow
    (GOOD_H, np.array([1, D]), 0.1, "batch", IndexError, rf"index {D} is out of range \[0, {D}\)"),
    (GOOD_H, np.array([1, -1]), 0.1, "batch", IndexError, r"index -1 is out of range"),
    (GOOD_H, np.array([1, 2, 3]), 0.1, "batch", ValueError, r"targets: an index array must have shape \(m,\)"),
    (GOOD_H, np.array([1.0, 2.0]), 0.1, "batch", TypeError, r"targets must be an integer array"),
    (GOOD_H, (np.array([[1], [D]]), None), 0.1, "batch", IndexError, r"targets indices: index 50"),
    (GOOD_H, (np.array([[1], [2]]), np.ones((2, 2))), 0.1, "batch", ValueError, r"targets values must have the shape"),
    (GOOD_H, (np.array([[1], [2]]), inf_vals), 0.1, "batch", ValueError, r"targets values contains a non-finite"),
    (GOOD_H, (np.array([1, 2]), None), 0.1, "batch", ValueError, r"targets indices must have shape \(m, K\)"),
    (GOOD_H, (np.array([[1], [2]]),), 0.1, "batch", ValueError, r"tuple must be \(indices, values\)"),
    (GOOD_H, sp.csr_array((2, D + 1)), 0.1, "batch", ValueError, r"sparse matrix must have shape"),
    (GOOD_H, sp.csr_array(([np.nan], ([0], [3])), shape=(2, D)), 0.1, "batch", ValueError, r"non-finite"),
    (GOOD_H, "abc", 0.1, "batch", TypeError, r"targets must be"),
    (GOOD_H, GOOD_T, -0.1, "batch", ValueError, r"lr must be finite and >= 0, got -0.1"),
    (GOOD_H, GOOD_T, np.nan, "batch", ValueError, r"lr must be finite"),
    (GOOD_H, GOOD_T, "0.1", "batch", TypeError, r"lr must be a real number"),
    (GOOD_H, GOOD_T, 0.1, "sgd", ValueError, r"mode must be 'batch' or 'online'"),
]


# (dtype, bad call): the overflow case (exc None) is bad in float32 only
_DTYPE_CALLS = [(dtype, *call) for dtype in (np.float32, np.float64)
                for call in BAD_CALLS
                if not (call[4] is None and dtype == np.float64)]


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("dtype,H,targets,lr,mode,exc,pattern", _DTYPE_CALLS)
def test_refused_call_changes_nothing(cls, dtype, H, targets, lr, mode, exc, pattern):
    if exc is None:  # 1e300 overflows only when cast to float32
        exc, pattern = ValueError, r"H contains a non-finite value \(NaN or Inf, possibly from overflow"
    layer = _layer(cls, dtype)
    before = _state(layer)
    with pytest.raises(exc, match=pattern):
        with np.errstate(over="ignore"):
            layer.step(H, targets, lr, mode=mode)
    assert _state(layer) == before


@pytest.mark.parametrize("cls", LAYERS)
def test_loss_and_grad_and_outputs_validate(cls):
    layer = _layer(cls)
    with pytest.raises(ValueError, match="H must have shape"):
        layer.loss_and_grad(np.ones((2, d + 1)), GOOD_T)
    with pytest.raises(IndexError, match="rows: index 50"):
        layer.outputs(GOOD_H, np.array([0, D]))
    with pytest.raises(ValueError, match="rows must be 1-D"):
        layer.outputs(GOOD_H, np.array([[0]]))
    with pytest.raises(TypeError, match="rows must be an integer array"):
        layer.outputs(GOOD_H, np.array([0.0]))


@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("lr", [0.5, 0.5 * (1 - 1e-4), 0.5 * (1 + 1e-4), 1.5])
def test_step_that_makes_r_zero_is_applied_as_the_dense_layer_does(mode, lr):
    # r = 1 - 2 lr ||h||^2 is 0 (or nearly) for the second example: the
    # dense layer then zeroes W along h, which U alone cannot represent;
    # the factored layer applies that factor to V (docs/algorithm.md §4)
    fact, naive = _layer(FactoredOutputLayer), _layer(NaiveOutputLayer)
    h = np.array([[0.1, 0, 0, 0], [1.0, 0, 0, 0]])
    lf, gf = fact.step(h, GOOD_T, lr, mode=mode)
    ln, gn = naive.step(h, GOOD_T, lr, mode=mode)
    np.testing.assert_allclose(lf, ln, rtol=1e-10)
    np.testing.assert_allclose(gf, gn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fact.weights(), naive.weights(), rtol=1e-10, atol=1e-12)
    near = abs(1 - 2 * lr) < fact.min_abs_r
    assert fact.health()["n_near_singular_updates"] == (1 if near else 0)
    for _ in range(5):     # and the layer trains on exactly
        H = np.random.default_rng(3).standard_normal((3, d)) * 0.3
        lf, _ = fact.step(H, np.array([4, 5, 6]), 0.05, mode=mode)
        ln, _ = naive.step(H, np.array([4, 5, 6]), 0.05, mode=mode)
        np.testing.assert_allclose(lf, ln, rtol=1e-10)
    np.testing.assert_allclose(fact.weights(), naive.weights(), rtol=1e-10, atol=1e-12)


def test_batch_with_singular_woodbury_system_is_applied_exactly():
    # each r_i = 1 - 2 lr ||h_i||^2 is fine, but together the rank-2 update
    # I - 2 lr H^T H is singular: eigenvalue 1 - 2 lr * 2 = 0 for lr = 0.25
    fact, naive = _layer(FactoredOutputLayer), _layer(NaiveOutputLayer)
    H = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    lf, gf = fact.step(H, GOOD_T, 0.25, mode="batch")
    ln, gn = naive.step(H, GOOD_T, 0.25, mode="batch")
    np.testing.assert_allclose(lf, ln, rtol=1e-10)
    np.testing.assert_allclose(gf, gn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fact.weights(), naive.weights(), rtol=1e-10, atol=1e-12)
    assert fact.health()["n_near_singular_updates"] == 1


@pytest.mark.parametrize("cls", LAYERS)
def test_constructor_validation(cls):
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        cls(10, 4, dtype=np.int32)
    with pytest.raises(ValueError, match="n_outputs must be >= 1"):
        cls(0, 4)
    with pytest.raises(TypeError, match="n_hidden must be an integer"):
        cls(10, 4.5)
    with pytest.raises(ValueError, match="init_scale"):
        cls(10, 4, init_scale=-1.0)
    with pytest.raises(ValueError, match="W must have shape"):
        cls.from_weights(np.ones(5))
    with pytest.raises(ValueError, match="W contains non-finite"):
        cls.from_weights(np.full((3, 2), np.nan))
    with pytest.raises(TypeError, match="W must be a float32 or float64 array"):
        cls.from_weights(np.ones((3, 2), dtype=np.int64))


@pytest.mark.parametrize("cls", LAYERS)
def test_other_float_dtype_is_cast(cls):
    layer = _layer(cls, np.float32)
    loss, grad = layer.step(GOOD_H.astype(np.float64), GOOD_T, 0.01)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    # non-contiguous input is fine too
    H = np.asfortranarray(np.full((2, d), 0.1, dtype=np.float32))
    layer.step(H, GOOD_T, 0.01)
