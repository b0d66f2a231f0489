"""Hardening: untrusted targets, settings, arguments and loss callables are
refused with a clear error before anything changes (and never crash the
process).

The cases that crashed the process before (out-of-range indices in a raw
scipy.sparse matrix, huge ``online_block``) run in a subprocess, so that a
regression fails the test instead of killing the run.
"""
import re
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from fastsparse import FactoredOutputLayer, NaiveOutputLayer
from _helpers import assert_ran, rel_err, run_isolated, state_bytes

LAYERS = [FactoredOutputLayer, NaiveOutputLayer]
D, d = 30, 4


def _layer(cls, **kw):
    W0 = np.random.default_rng(0).standard_normal((D, d)) / 2
    return cls.from_weights(W0, **kw)


# ---- sparse targets: every index of every format is checked ---------------
SPARSE_CRASH_CODE = r"""
import numpy as np, scipy.sparse as sp
from fastsparse import FactoredOutputLayer, NaiveOutputLayer

m, D, d = 4, 30, 4
rng = np.random.default_rng(0)
rows, cols = np.array([0, 1, 2, 3, 3]), np.array([5, 7, 0, 29, 2])
vals = np.array([1.0, -2.0, 0.5, 1.0, 3.0])
H = 0.3 * rng.standard_normal((m, d))

def tamper(fmt, kind, bad):
    ctor = getattr(sp, f"{fmt}_{kind}")
    Y = ctor(sp.coo_array((vals, (rows, cols)), shape=(m, D)))
    if fmt in ("csr", "csc", "bsr"):
        Y.indices = Y.indices.astype(np.int64)
        Y.indices[-1] = bad
    elif fmt == "coo":
        col = Y.col.astype(np.int64)
        col[-1] = bad
        Y.col = col
    elif fmt == "lil":
        Y.rows[3][-1] = bad
    elif fmt == "dok":
        Y._dict[(3, bad)] = 1.0
    return Y

n = 0
for cls in (FactoredOutputLayer, NaiveOutputLayer):
    layer = cls.from_weights(rng.standard_normal((D, d)))
    before = {k: v.tobytes() for k, v in layer._checkpoint_arrays().items()}
    for fmt in ("csr", "csc", "coo", "bsr", "lil", "dok"):
        for kind in ("array", "matrix"):
            # csc and bsr (block 2 x 2 here would not tile; blocks of 1 x 1)
            # hold row resp. block-column indices: their bound differs
            for bad in (D, -1, 2**31, 2**63 - 1, -2**63):
                if fmt == "csc" and bad == D:
                    bad = m
                Y = tamper(fmt, kind, bad)
                for call in ("step", "loss_and_grad"):
                    args = (H, Y, 0.1) if call == "step" else (H, Y)
                    try:
                        getattr(layer, call)(*args)
                    except IndexError as exc:
                        assert "out of range" in str(exc), exc
                    else:
                        raise AssertionError(f"{cls.__name__} {fmt}_{kind} "
                                             f"index {bad}: accepted")
                    n += 1
                    after = {k: v.tobytes() for k, v in layer._checkpoint_arrays().items()}
                    assert after == before, (fmt, kind, bad)
    # malformed compressed structure: ValueError, not a crash
    for fmt in ("csr", "csc", "bsr"):
        Y = getattr(sp, f"{fmt}_array")(sp.coo_array((vals, (rows, cols)), shape=(m, D)))
        Y.indptr = Y.indptr.copy()
        Y.indptr[1] = 10**6
        try:
            layer.step(H, Y, 0.1)
        except ValueError as exc:
            assert "malformed" in str(exc), exc
        else:
            raise AssertionError(f"{fmt}: bad indptr accepted")
        n += 1
print("cases", n)
"""


def test_sparse_targets_with_out_of_range_indices_are_refused(tmp_path):
    """Raw index arrays of every scipy.sparse format (arrays and matrices)
    tampered with to hold D, -1, 2^31, 2^63-1, -2^63: IndexError, nothing
    changed (before: wrong losses, SIGSEGV or heap corruption)."""
    proc = run_isolated(SPARSE_CRASH_CODE, tmp_path)
    assert_ran(proc)
    assert "cases 246" in proc.stdout, proc.stdout


def _triplets():
    # unsorted, with duplicates (summed) and an explicit zero, one empty row
    rows = np.array([3, 0, 0, 2, 0, 3, 2, 0])
    cols = np.array([2, 29, 5, 0, 5, 2, 7, 0])
    vals = np.array([1.0, 2.0, -1.0, 0.5, 3.0, 0.25, 0.0, 1.5])
    return rows, cols, vals


def _reference_targets():
    """The same targets as a merged (indices, values) tuple, K = 3, padded
    with explicit zeros at unused indices (a zero target is no target for
    these losses)."""
    dense = np.zeros((5, D))
    rows, cols, vals = _triplets()
    np.add.at(dense, (rows, cols), vals)
    idx = np.array([[0, 5, 29], [1, 2, 3], [0, 7, 9], [2, 10, 11], [4, 5, 6]])
    return idx, np.take_along_axis(dense, idx, 1)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "lil", "dok", "dia"])
@pytest.mark.parametrize("kind", ["array", "matrix"])
def test_every_sparse_format_gives_the_same_step(cls, fmt, kind):
    rows, cols, vals = _triplets()
    coo = sp.coo_array((vals, (rows, cols)), shape=(5, D))   # duplicates kept
    Y = getattr(sp, f"{fmt}_{kind}")(coo)
    if fmt == "csr":
        # raw arrays with duplicates and unsorted indices, flags that lie:
        # the parser must not trust them
        order = np.argsort(rows, kind="stable")
        Y = getattr(sp, f"csr_{kind}")(
            (vals[order], cols[order], np.searchsorted(rows[order], np.arange(6))),
            shape=(5, D))
        Y.has_sorted_indices = True
        Y.has_canonical_format = True
    H = 0.3 * np.random.default_rng(1).standard_normal((5, d))
    a, b = _layer(cls), _layer(cls)
    la, ga = a.step(H, Y, 0.05, mode="online")
    lb, gb = b.step(H, _reference_targets(), 0.05, mode="online")
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-15)
    assert rel_err(a.weights(), b.weights()) < 1e-13


@pytest.mark.parametrize("kind", ["array", "matrix"])
def test_dia_offsets_at_and_beyond_the_bounds(kind):
    m = 5
    data = np.arange(1.0, 1 + 5 * 40).reshape(5, 40)
    offsets = np.array([D, -1, 2**31, -m, 0], dtype=np.int64)  # only -1 and 0 hit
    Y = getattr(sp, f"dia_{kind}")((data, offsets), shape=(m, D))
    dense = np.zeros((m, D))
    for k in (1, 4):
        for j in range(D):
            i = j - offsets[k]
            if 0 <= i < m:
                dense[i, j] += data[k, j]
    H = 0.1 * np.random.default_rng(2).standard_normal((m, d))
    ref = _layer(FactoredOutputLayer).loss_and_grad(H, sp.csr_array(dense))
    got = _layer(FactoredOutputLayer).loss_and_grad(H, Y)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-13)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-13)


def test_int_and_tuple_targets_make_no_scipy_call(monkeypatch):
    import fastsparse._validation as v

    def boom(*a, **k):
        raise AssertionError("scipy.sparse called")
    monkeypatch.setattr(v.sp, "csr_array", boom)
    layer = _layer(FactoredOutputLayer)
    H = np.full((2, d), 0.1)
    layer.loss_and_grad(H, np.array([1, 2]))
    layer.loss_and_grad(H, (np.array([[1, 1], [2, 3]]), None))
    layer.loss_and_grad(H, (np.array([[1, 1], [2, 3]]), np.ones((2, 2))))


@pytest.mark.parametrize("bad", [-1, D, 2**31, 2**63 - 1])
@pytest.mark.parametrize("form", ["int", "tuple"])
def test_int_and_tuple_targets_at_the_bounds(bad, form):
    layer = _layer(FactoredOutputLayer)
    before = state_bytes(layer)
    idx = np.array([0, bad], dtype=np.int64)
    tg = idx if form == "int" else (idx[:, None], None)
    with pytest.raises(IndexError, match=f"index {bad} is out of range"):
        layer.step(np.full((2, d), 0.1), tg, 0.1)
    assert state_bytes(layer) == before
    idx = np.array([0, D - 1], dtype=np.uint64)           # the valid bounds
    layer.step(np.full((2, d), 0.1), idx if form == "int" else (idx[:, None], None), 0.1)


# ---- settings ---------------------------------------------------------------
ONLINE_BLOCK_CODE = r"""
import numpy as np
from fastsparse import FactoredOutputLayer
layer = FactoredOutputLayer(50, 4, seed=0)
for value in (2**31 - 1, 2**31 - 2, 2**31, 65537, 10**30):
    try:
        layer.online_block = value
    except ValueError as exc:
        assert "online_block must be <= 65536" in str(exc), exc
    else:
        raise AssertionError(f"online_block = {value} accepted")
# what did kill the process (SIGFPE) when it was accepted
layer.step(np.full((20, 4), 0.1, dtype=np.float32), np.arange(20), 0.1, mode="online")
layer.online_block = 65536
layer.step(np.full((20, 4), 0.1, dtype=np.float32), np.arange(20), 0.1, mode="online")
print("ok")
"""


def test_online_block_range_is_validated(tmp_path):
    proc = run_isolated(ONLINE_BLOCK_CODE, tmp_path)
    assert_ran(proc)
    assert "ok" in proc.stdout
    layer = FactoredOutputLayer(50, 4, seed=0)
    for value in (0, 1, 65536, np.int64(7)):
        layer.online_block = value
        assert layer.online_block == value and type(layer.online_block) is int


@pytest.mark.parametrize("value,exc", [
    (0, ValueError), (-1, ValueError), (float("nan"), ValueError), (1, ValueError),
    (1.5, ValueError), (float("inf"), ValueError), ("0.1", TypeError),
    (True, TypeError), (None, TypeError), (1j, TypeError)])
def test_min_abs_r_is_validated(value, exc):
    layer = _layer(FactoredOutputLayer)
    assert layer.min_abs_r == 0.5
    with pytest.raises(exc, match="min_abs_r"):
        layer.min_abs_r = value
    assert layer.min_abs_r == 0.5
    layer.min_abs_r = np.float32(0.25)
    assert layer.min_abs_r == 0.25 and type(layer.min_abs_r) is float


@pytest.mark.parametrize("cls", LAYERS)
def test_weights_whose_gram_matrix_overflows_are_refused(cls):
    with pytest.raises(ValueError, match=r"Gram matrix W\^T W overflows.*init_scale"):
        cls(50, 4, dtype=np.float32, init_scale=1e20, seed=0)
    with pytest.raises(ValueError, match=r"too large for float32: the Gram matrix"):
        cls.from_weights(np.full((5, 2), 1e20, dtype=np.float32))
    with pytest.raises(ValueError, match=r"too large for float64: the Gram matrix"):
        cls.from_weights(np.full((5, 2), 1e200))
    with pytest.raises(ValueError, match=r"Gram matrix"):   # the bias counts too
        cls.from_weights(np.ones((5, 2), dtype=np.float32),
                         bias=np.full(5, 1e20, dtype=np.float32))
    # just below the limit is fine
    cls.from_weights(np.full((5, 2), 1e18, dtype=np.float32))
    cls(50, 4, dtype=np.float32, init_scale=1e10, seed=0)


# ---- constructor arguments -------------------------------------------------
@pytest.mark.parametrize("cls", LAYERS)
def test_constructor_arguments_are_validated(cls):
    name = cls.__name__
    with pytest.raises(TypeError, match="bias must be a bool or an array"):
        cls(10, 3, bias="yes")
    with pytest.raises(TypeError, match="n_outputs must be an integer, got a bool"):
        cls(True, 3)
    with pytest.raises(TypeError, match="n_hidden must be an integer, got a bool"):
        cls(10, np.True_)
    with pytest.raises(TypeError, match="bias must be a bool or a real array"):
        cls.from_weights(np.ones((5, 2)), bias=np.ones(5) * (1 + 1j))
    with pytest.raises(TypeError, match="bias must be a bool or a real array"):
        cls.from_weights(np.ones((5, 2)), bias=np.array([None] * 5))
    with pytest.raises(TypeError, match="track_sum must be a bool"):
        cls(10, 3, track_sum="yes")
    with pytest.raises(TypeError, match="copy must be a bool"):
        cls.from_weights(np.ones((5, 2)), copy="no")
    # an array bias in the constructor, as in from_weights
    layer = cls(10, 3, bias=np.arange(10.0), dtype=np.float64, seed=1)
    np.testing.assert_array_equal(layer.bias(), np.arange(10.0))
    ref = cls(10, 3, dtype=np.float64, seed=1)
    np.testing.assert_array_equal(layer.weights(), ref.weights())
    # unknown keywords: named, with the valid ones, from the public class
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword "
                       r"argument 'sead'; valid keyword arguments: n_outputs, "
                       r"n_hidden, dtype, seed, init_scale, loss, bias, track_sum"):
        cls(10, 3, sead=1)
    with pytest.raises(TypeError, match=rf"^{name}\.from_weights\(\) got an "
                       r"unexpected keyword argument 'bais'; valid keyword "
                       r"arguments: W, dtype, bias, loss, track_sum, copy"):
        cls.from_weights(np.ones((5, 2)), bais=True)


def test_stability_is_a_factored_keyword_only():
    FactoredOutputLayer(10, 3, stability=False)
    with pytest.raises(TypeError, match=r"NaiveOutputLayer\(\) got an unexpected "
                       r"keyword argument 'stability'"):
        NaiveOutputLayer(10, 3, stability=False)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("cls", LAYERS)
def test_np_matrix_weights(cls):
    W = np.matrix(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(TypeError, match="copy=False needs W to be a NumPy array "
                       r"\(numpy.ndarray or numpy.memmap.*got matrix"):
        cls.from_weights(W, copy=False)
    layer = cls.from_weights(W)                  # a copy is a plain array
    layer.step(np.full((2, 3), 0.1), np.array([1, 2]), 0.1)
    assert type(layer.weights()) is np.ndarray


# ---- errors name the public class -----------------------------------------
@pytest.mark.parametrize("cls", LAYERS)
def test_argument_errors_name_the_public_class(cls):
    layer = cls(10, 3, dtype=np.float64, seed=0)
    H, t = np.full((2, 3), 0.1), np.array([1, 2])
    name = cls.__name__
    calls = [
        (lambda: layer.step(H, t, 0.1, "online"), rf"{name}\.step\(\) takes 4 positional"),
        (lambda: layer.loss_and_grad(H, t, 0.1), rf"{name}\.loss_and_grad\(\) takes"),
        (lambda: layer.outputs(), rf"{name}\.outputs\(\) missing 1 required"),
        (lambda: layer.topk(H), rf"{name}\.topk\(\) missing"),
        (lambda: layer.save(), rf"{name}\.save\(\) missing"),
        (lambda: layer.export_weights(), rf"{name}\.export_weights\(\) missing"),
        (lambda: layer.backward(H, t), rf"{name}\.backward\(\) missing"),
        (lambda: cls(10, 3, np.float32), rf"{name}\.__init__\(\) takes 3 positional"),
        (lambda: cls.from_weights(np.ones((2, 2)), None, True),
         rf"{name}\.from_weights\(\) takes from 2 to 3 positional"),
        (lambda: cls.load(), rf"{name}\.load\(\) missing"),
        (lambda: layer.step(H, t, 0.1, modes="online"),
         rf"{name}\.step\(\) got an unexpected keyword argument 'modes'"),
    ]
    for call, pattern in calls:
        with pytest.raises(TypeError, match=pattern) as info:
            call()
        assert "OutputLayerBase" not in str(info.value)
    assert cls.step.__qualname__ == f"{name}.step"
    assert cls.step.__doc__ and cls.from_weights.__doc__


def test_mode_must_be_a_string():
    layer = _layer(FactoredOutputLayer)
    for mode in (None, 1, np.array(["batch"]), b"batch"):
        with pytest.raises(ValueError, match="mode must be 'batch' or 'online'"):
            layer.step(np.full((2, d), 0.1), np.array([1, 2]), 0.1, mode=mode)


# ---- callable losses -------------------------------------------------------
def _returning(kind):
    def f(a, q, s, v):
        ga = -2 * v
        if kind == "complex":
            ga = ga + 1j
        elif kind == "object":
            ga = ga.astype(object)
        elif kind == "bool":
            ga = ga > 0
        elif kind == "overflow32":
            ga = np.full_like(ga, 1e39)
        elif kind == "loss_overflow32":
            return np.full_like(q, 1e39), ga, np.ones_like(q), 0 * q
        elif kind == "inf":
            ga = ga * np.inf
        return q, ga, np.ones_like(q), 0 * q
    return f


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("kind,exc,pattern", [
    ("complex", TypeError, r"loss callable returned grad_a of dtype complex128; "
                           r"it must return real numbers"),
    ("object", TypeError, r"loss callable returned grad_a of dtype object"),
    ("bool", TypeError, r"loss callable returned grad_a of dtype bool"),
    ("overflow32", ValueError, r"loss callable returned grad_a with values that "
                               r"overflow the layer's dtype float32"),
    ("loss_overflow32", ValueError, r"loss callable returned loss with values "
                                    r"that overflow"),
    ("inf", ValueError, r"loss callable returned a non-finite grad_a"),
])
def test_callable_loss_results_are_validated(cls, kind, exc, pattern):
    layer = cls.from_weights(np.random.default_rng(0).standard_normal((20, 3)),
                             dtype=np.float32, loss=_returning(kind))
    before = state_bytes(layer)
    with pytest.raises(exc, match=pattern):
        layer.step(np.full((3, 3), 0.1), np.array([1, 2, 3]), 0.1)
    assert state_bytes(layer) == before
    # a float64 layer takes 1e39 (finite in float64)
    if kind in ("overflow32", "loss_overflow32"):
        layer = cls.from_weights(np.ones((20, 3)), loss=_returning(kind))
        layer.loss_and_grad(np.full((3, 3), 0.1), np.array([1, 2, 3]))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("inner", ["step", "loss_and_grad", "weights", "save",
                                   "outputs", "forward"])
def test_callable_cannot_use_its_own_layer(cls, inner, tmp_path):
    box = {}

    def f(a, q, s, v):
        layer = box["layer"]
        H, t = np.full((1, 3), 0.1), np.array([1])
        {"step": lambda: layer.step(H, t, 0.1),
         "loss_and_grad": lambda: layer.loss_and_grad(H, t),
         "weights": layer.weights,
         "save": lambda: layer.save(tmp_path / "x.npz"),
         "outputs": lambda: layer.outputs(H),
         "forward": lambda: layer.forward(H, t[:, None])}[inner]()
        return q, -2 * v, np.ones_like(q), 0 * q

    layer = box["layer"] = cls.from_weights(
        np.random.default_rng(0).standard_normal((20, 3)), loss=f)
    before = state_bytes(layer)
    with pytest.raises(RuntimeError, match=rf"{cls.__name__}\.{inner}\(\) was called "
                       rf"from inside a call of the same layer \({cls.__name__}"
                       r"\.step\(\), e\.g\. by its loss callable\)"):
        layer.step(np.full((2, 3), 0.1), np.array([1, 2]), 0.1)
    assert state_bytes(layer) == before
    assert not (tmp_path / "x.npz").exists()
    # the layer is usable again afterwards, and other layers from a callable
    other = cls.from_weights(np.ones((20, 3)))
    box["layer"] = other
    layer.step(np.full((2, 3), 0.1), np.array([1, 2]), 0.1)
    assert state_bytes(layer) != before


def test_other_threads_still_wait_for_the_lock():
    """The re-entrancy check does not turn the lock into a refusal for other
    threads: a thread calling the layer while a callable runs waits."""
    started, release, results = threading.Event(), threading.Event(), []

    def f(a, q, s, v):
        started.set()
        release.wait(10)
        return q, -2 * v, np.ones_like(q), 0 * q

    layer = FactoredOutputLayer.from_weights(np.ones((20, 3)), loss=f)
    main = threading.Thread(target=lambda: layer.step(np.full((1, 3), 0.1),
                                                      np.array([1]), 0.1))
    main.start()
    assert started.wait(10)
    started.clear()

    def other():
        try:
            results.append(layer.weights())
        except Exception as exc:       # pragma: no cover - the failure shown
            results.append(exc)
    t = threading.Thread(target=other)
    t.start()
    t.join(0.2)
    assert t.is_alive() and not results          # blocked on the lock
    release.set()
    main.join(10)
    t.join(10)
    assert isinstance(results[0], np.ndarray)


# ---- fastsparse.torch without torch ----------------------------------------
def test_import_fastsparse_torch_without_torch_names_the_extra(tmp_path):
    code = r"""
    import sys
    sys.modules["torch"] = None          # torch made unimportable
    try:
        import fastsparse.torch
    except ModuleNotFoundError as exc:
        assert exc.name == "torch", exc.name
        print(exc)
    else:
        raise AssertionError("imported")
    import fastsparse                    # the rest still works
    fastsparse.FactoredOutputLayer(10, 3)
    """
    proc = run_isolated(code, tmp_path)
    assert_ran(proc)
    assert re.search(r'fastsparse\.torch needs PyTorch.*pip install "fastsparse\[torch\]"',
                     proc.stdout), proc.stdout
