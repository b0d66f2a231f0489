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


# ---- the compiled fast paths (fastsparse._core, called by _validation) ----
def _same_targets(a, b):
    for name in ("indptr", "indices", "values"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_target_paths_equal_the_general_ones(dtype):
    """Every form the compiled checks take gives what the NumPy path gives
    for the same targets in a form that only it takes (a list, a Fortran
    order, byte-swapped or unsigned array, scipy.sparse)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(7)
    m, D = 9, 50
    t = rng.integers(0, D, m)
    ref = parse_targets(list(t), m, D, dt)
    for arr in (t, t.astype(np.int32), t.astype(">i8"), t.astype(np.uint16)):
        _same_targets(parse_targets(arr, m, D, dt), ref)
    idx = np.sort(rng.choice(D, (m, 3)), axis=1)
    idx[:, 1] = idx[:, 0] + 1 + np.arange(m) % 3     # strictly increasing rows
    idx[:, 2] = idx[:, 1] + 1
    val = rng.standard_normal((m, 3)).astype(dt)
    ref = parse_targets(sp.csr_array((val.ravel(), idx.ravel(), np.arange(0, 3 * m + 1, 3)),
                                     shape=(m, D + 5)), m, D + 5, dt)
    for tg in ((idx, val), (idx.astype(np.int32), val), (np.asfortranarray(idx), val),
               (idx, np.asfortranarray(val))):
        _same_targets(parse_targets(tg, m, D + 5, dt), ref)
    # unsorted rows and duplicates: the NumPy path sorts and sums them
    dup = np.array([[4, 2, 4]] * m)
    got = parse_targets((dup, None), m, D, dt)
    np.testing.assert_array_equal(got.indices, np.tile([2, 4], m))
    np.testing.assert_array_equal(got.values, np.tile([1, 2], m))


@pytest.mark.parametrize("bad, error", [
    (np.array([3, 50]), IndexError), (np.array([-1, 0]), IndexError),
    (np.array([3, 1 << 40]), IndexError), (np.array([3.0, 1.0]), TypeError),
    (np.array([3, 4, 5]), ValueError),
    ((np.array([[3], [50]]), None), IndexError),
    ((np.array([[3], [4]]), np.array([[1.0], [np.nan]])), ValueError),
    ((np.array([[3], [4]]), np.array([[1.0], [np.inf]], np.float32)), ValueError),
])
def test_fast_paths_refuse_what_the_general_path_refuses(bad, error):
    with pytest.raises(error):
        parse_targets(bad, 2, 50, np.dtype(np.float32))


def test_compiled_checks_directly():
    from fastsparse import _core
    f32 = np.dtype(np.float32).num
    H = np.ones((3, 4), np.float32)
    assert _core.finite2d(H, 4, f32)
    assert not _core.finite2d(H, 5, f32)                 # columns
    assert not _core.finite2d(H.astype(np.float64), 4, f32)
    assert not _core.finite2d(np.asfortranarray(np.ones((3, 4), np.float32)[:, :3]), 3, f32)
    assert not _core.finite2d(H.astype(">f4"), 4, f32)   # byte order
    assert not _core.finite2d(H[0], 4, f32)              # 1-D
    for bad in (np.nan, np.inf, -np.inf):
        G = H.copy()
        G[2, 3] = bad
        assert not _core.finite2d(G, 4, f32)
    assert _core.finite2d(np.ones((0, 4), np.float32), 4, f32)
    def common(targets, m, n=10):
        parts = _core.common_targets(targets, m, n, f32)
        return parts and [p.tolist() for p in parts]

    assert common(np.array([0, 9]), 2) == [[0, 1, 2], [0, 9], [1.0, 1.0]]
    assert common(np.array([0, 9], np.int32), 2) == [[0, 1, 2], [0, 9], [1.0, 1.0]]
    for bad in (np.array([0, 10]), np.array([-1, 0]), np.array([1, 2], np.uint64),
                np.array([1, 2], np.int16), np.array([1.0, 2.0]),
                np.array([0, 1, 2, 3])[::2], np.array([[0], [1]]), np.array([0])):
        assert common(bad, 2) is None
    val = np.array([[0.5, 2.0], [1.0, 3.0]], np.float32)
    assert common((np.array([[1, 2], [0, 5]]), val), 2) == \
        [[0, 2, 4], [1, 2, 0, 5], [0.5, 2.0, 1.0, 3.0]]
    assert common((np.array([[1, 2], [0, 5]], np.int32), None), 2) == \
        [[0, 2, 4], [1, 2, 0, 5], [1.0] * 4]
    for bad_idx in ([[1, 2], [5, 5]], [[2, 1], [0, 5]], [[1, 2], [0, 10]]):
        assert common((np.array(bad_idx), val), 2) is None    # order, range
    for bad_val in (val.astype(np.float64), val[:, :1], val.T.copy().T[:, ::-1],
                    np.array([[0.5, np.nan], [1.0, 3.0]], np.float32)):
        assert common((np.array([[1, 2], [0, 5]]), bad_val), 2) is None
    assert common((np.zeros((2, 0), np.int64), None), 2) is None   # K = 0
    assert common([0, 9], 2) is None and common((np.array([[1], [2]]),), 2) is None


def test_kernel_entry_refuses_wrong_arrays():
    """The step entry points check the type, dimensions, contiguity, byte
    order and writability of every array they take a pointer of."""
    from fastsparse import _core
    d = 4
    st = [np.zeros((10, d), np.float32), np.eye(d, dtype=np.float32),
          np.eye(d, dtype=np.float32), np.eye(d, dtype=np.float32)]
    e = np.zeros(0, np.float32)
    arrays = _core.Arrays(*st, e, e)
    for i, bad in [(0, st[0].astype(np.float64)), (1, np.eye(d + 1, dtype=np.float32)),
                   (2, np.asfortranarray(st[2])[:, :]), (3, st[3].astype(">f4"))]:
        args = list(st) + [e, e]
        args[i] = bad if i != 2 else np.eye(2 * d, dtype=np.float32)[::2, ::2]
        with pytest.raises((TypeError, ValueError)):
            _core.Arrays(*args)
    ro = np.eye(d, dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(TypeError):
        _core.Arrays(st[0], ro, st[2], st[3], e, e)
    ctl = _core.Control(0.5, 0.0, 1e30, 1.0, 1.0, 1.0)
    H = np.zeros((2, d), np.float32)
    ip, ix, v = np.arange(3), np.array([1, 2]), np.ones(2, np.float32)
    loss, grad = np.empty(2, np.float32), np.empty((2, d), np.float32)
    params = np.zeros(1)
    assert _core.online_step(arrays, H, ip, ix, v, 0, params, 0, ctl, loss, grad) == 0
    bad_calls = [
        dict(H=H.astype(np.float64)), dict(H=np.zeros((2, d + 1), np.float32)),
        dict(ip=np.arange(4)), dict(ip=np.array([0, 1, 3])), dict(ix=ix.astype(np.int32)),
        dict(v=np.ones(3, np.float32)), dict(loss=np.empty(1, np.float32)),
        dict(grad=np.empty((2, d), np.float64)), dict(params=np.zeros(1, np.float32)),
    ]
    for change in bad_calls:
        a = dict(H=H, ip=ip, ix=ix, v=v, loss=loss, grad=grad, params=params)
        a.update(change)
        with pytest.raises((TypeError, ValueError)):
            _core.online_step(arrays, a["H"], a["ip"], a["ix"], a["v"], 0, a["params"],
                              0, ctl, a["loss"], a["grad"])
