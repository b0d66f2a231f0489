"""The compiled path of step()'s common calls (fastsparse._core.StepLane)
against the checked path (the layer with ``_lane = None``): the same
results bit for bit, the same refusals, and every other call left to the
checked path before anything changes."""
import threading

import numpy as np
import pytest

from fastsparse import FactoredOutputLayer, StepRefusedError
from _streams import text_stream

STATE = ("V", "U", "Uinv", "M", "omega", "sv")


class Spy:
    """Stands in for a layer's lane: counts the calls it took."""

    def __init__(self, lane):
        self.lane, self.taken, self.declined = lane, 0, 0

    def step(self, *args):
        out = self.lane.step(*args)
        self.taken += out is not None
        self.declined += out is None
        return out


def _pair(W0, **kw):
    fast = FactoredOutputLayer.from_weights(W0, **kw)
    slow = FactoredOutputLayer.from_weights(W0, **kw)
    assert fast._lane is not None
    slow._lane = None
    fast._lane = spy = Spy(fast._lane)
    return fast, slow, spy


def _assert_same_state(a, b):
    for name in STATE:
        np.testing.assert_array_equal(getattr(a._st, name), getattr(b._st, name),
                                      err_msg=name)
    ha, hb = a._health, b._health
    assert ha.counts == hb.counts
    assert (ha.steps, ha._since_check, ha.min_factor) == \
        (hb.steps, hb._since_check, hb.min_factor)
    assert (ha.ctl.smax2, ha.ctl.sinv2, ha.ctl.mnorm) == \
        (hb.ctl.smax2, hb.ctl.sinv2, hb.ctl.mnorm)


def _forms(y, K, rng, dtype, form, D):
    """Targets of one call in the given form (y: the first target of each
    example; K - 1 more, distinct and sorted, for the tuple forms)."""
    if form == "int64":
        return y.astype(np.int64)
    if form == "int32":
        return y.astype(np.int32)
    idx = np.empty((y.shape[0], K), dtype=np.int64)
    for i, t in enumerate(y):
        row = {int(t)}
        while len(row) < K:
            row.add(int(rng.integers(0, D)))
        idx[i] = sorted(row)
    if form == "tuple-ones":
        return (idx, None)
    return (idx.astype(np.int32) if form == "tuple32" else idx,
            rng.uniform(0.5, 1.5, idx.shape).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["squared", "spherical_softmax", "taylor_softmax"])
@pytest.mark.parametrize("form", ["int64", "int32", "tuple", "tuple32", "tuple-ones"])
def test_lane_gives_the_checked_path_bit_for_bit(dtype, loss, form):
    # a repetitive, text-like stream at a large rate: the calls stop for
    # checks (FS_CHECK) and renormalise, and some updates are near-singular
    D, d = 2000, 16
    W0, calls = text_stream(D=D, d=d, m=24, examples=24 * 30, seed=3)
    fast, slow, spy = _pair(W0.astype(dtype), loss=loss,
                            stability={"check_every": 8})
    rng = np.random.default_rng(0)
    lr = {"squared": 0.2, "spherical_softmax": 5.0, "taylor_softmax": 0.2}[loss]
    n = 0
    for j, (H, y) in enumerate(calls):
        H = np.ascontiguousarray(H, dtype=dtype)
        size = (1, 2, 24)[j % 3]        # calls of 1, 2 and 24 examples
        H, y = H[:size], y[:size]
        tg = _forms(y, 3, rng, dtype, form, D)
        mode = "batch" if (j // 3) % 2 else "online"   # each size in both
        rate = 0.0 if j == 5 else lr
        out_f = fast.step(H, tg, rate, mode=mode)
        out_s = slow.step(H, tg, rate, mode=mode)
        n += 1
        for a, b in zip(out_f, out_s):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    assert spy.taken == n and spy.declined == 0
    _assert_same_state(fast, slow)
    counts = fast._health.counts
    assert counts["checks"] >= 4
    if loss == "squared":       # calls stopped by the bounds, split updates
        assert counts["renormalizations"] > 5
        assert counts["near_singular_updates"] > 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["online", "batch"])
def test_lane_refuses_as_the_checked_path(dtype, mode):
    W0 = np.random.default_rng(1).standard_normal((500, 8)) / 3
    fast, slow, spy = _pair(W0.astype(dtype))
    H = np.full((3, 8), 0.1, dtype=dtype)
    H[2] = np.finfo(dtype).max / 4          # outputs not finite: refused
    y = np.array([1, 2, 3])
    errs = []
    for layer in (fast, slow):
        with pytest.raises(StepRefusedError) as info:
            layer.step(H, y, 0.1, mode=mode)
        errs.append(info.value)
    assert str(errs[0]) == str(errs[1])
    assert (errs[0].applied, errs[0].example) == (errs[1].applied, errs[1].example)
    if mode == "online":
        assert errs[0].applied == 2 and errs[0].example == 2
    else:
        assert errs[0].applied == 0
    assert spy.taken == 0 and spy.declined == 0   # it raised from the lane
    _assert_same_state(fast, slow)
    # the lane released the lock and the call: the layer goes on
    out_f = fast.step(H[:2], y[:2], 0.1, mode=mode)
    out_s = slow.step(H[:2], y[:2], 0.1, mode=mode)
    np.testing.assert_array_equal(out_f[1], out_s[1])
    assert spy.taken == 1
    assert fast._in_call is None and fast._lock.acquire(blocking=False)
    fast._lock.release()


def _unusual_calls(D, d, dtype):
    """Calls the lane must leave to the checked path: (name, H, targets,
    lr, mode, weight_decay)."""
    rng = np.random.default_rng(2)
    other = np.float64 if dtype == np.float32 else np.float32
    H = (rng.standard_normal((4, d)) / 4).astype(dtype)
    y = rng.integers(0, D, 4)
    idx = np.sort(rng.choice(D, (4, 3), replace=False), axis=1)
    val = np.ones((4, 3), dtype=dtype)
    nan_H = H.copy()
    nan_H[1, 2] = np.nan
    nan_val = val.copy()
    nan_val[2, 1] = np.inf
    wide = np.zeros((4, 2 * d), dtype=dtype)
    wide[:, ::2] = H
    unsorted = idx[:, ::-1].copy()
    dup = idx.copy()
    dup[1, 1] = dup[1, 0]
    return [
        ("H of the other dtype", H.astype(other), y, 0.1, "online", 0.0),
        ("H not contiguous", wide[:, ::2], y, 0.1, "online", 0.0),
        ("H a list", H.tolist(), y, 0.1, "online", 0.0),
        ("H 1-D", H[0], y[:1], 0.1, "online", 0.0),
        ("H of the wrong width", H[:, :-1], y, 0.1, "online", 0.0),
        ("H empty", H[:0], y[:0], 0.1, "online", 0.0),
        ("H not finite", nan_H, y, 0.1, "online", 0.0),
        ("an index < 0", H, np.array([1, -1, 2, 3]), 0.1, "online", 0.0),
        ("an index >= D", H, np.array([1, D, 2, 3]), 0.1, "online", 0.0),
        ("int32 index >= D", H, np.array([1, 2, D, 3], np.int32), 0.1,
         "online", 0.0),
        ("unsigned indices", H, y.astype(np.uint64), 0.1, "online", 0.0),
        ("int16 indices", H, y.astype(np.int16), 0.1, "online", 0.0),
        ("bool targets", H, y > 5, 0.1, "online", 0.0),
        ("float targets", H, y.astype(float), 0.1, "online", 0.0),
        ("targets a list", H, y.tolist(), 0.1, "online", 0.0),
        ("targets too short", H, y[:3], 0.1, "online", 0.0),
        ("targets strided", H, np.repeat(y, 2)[::2], 0.1, "online", 0.0),
        ("targets 2-D", H, y[:, None], 0.1, "online", 0.0),
        ("tuple rows unsorted", H, (unsorted, val), 0.1, "online", 0.0),
        ("tuple row with a duplicate", H, (dup, val), 0.1, "online", 0.0),
        ("tuple values not finite", H, (idx, nan_val), 0.1, "online", 0.0),
        ("tuple values of the other dtype", H, (idx, val.astype(other)), 0.1,
         "online", 0.0),
        ("tuple values of another shape", H, (idx, val[:, :2]), 0.1, "online", 0.0),
        ("tuple of K = 0", H, (idx[:, :0], val[:, :0]), 0.1, "online", 0.0),
        ("tuple of three", H, (idx, val, None), 0.1, "online", 0.0),
        ("tuple index out of range", H, (idx + D, val), 0.1, "online", 0.0),
        ("tuple indices a list", H, (idx.tolist(), val), 0.1, "online", 0.0),
        ("a sparse matrix", H, __import__("scipy.sparse").sparse.csr_matrix(
            (np.ones(4), (np.arange(4), y)), shape=(4, D)), 0.1, "online", 0.0),
        ("lr an int", H, y, 1, "online", 0.0),
        ("lr a NumPy float", H, y, np.float64(0.1), "online", 0.0),
        ("lr < 0", H, y, -0.1, "online", 0.0),
        ("lr NaN", H, y, float("nan"), "online", 0.0),
        ("lr infinite", H, y, float("inf"), "online", 0.0),
        ("weight decay", H, y, 0.1, "online", 0.01),
        ("weight decay an int", H, y, 0.1, "online", 0),
        ("a minibatch of 4 with weight decay", H, y, 0.1, "batch", 0.01),
        ("mode unknown", H, y, 0.1, "onl", 0.0),
        ("mode not a str", H, y, 0.1, None, 0.0),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_leaves_every_other_call_to_the_checked_path(dtype):
    D, d = 300, 8
    W0 = np.random.default_rng(3).standard_normal((D, d)) / 3
    fast, slow, spy = _pair(W0.astype(dtype))
    lane = spy.lane
    for name, H, tg, lr, mode, wd in _unusual_calls(D, d, dtype):
        before = [getattr(fast._st, k).copy() for k in STATE]
        steps = fast._health.steps
        assert lane.step(fast, H, tg, lr, mode, wd) is None, name
        for k, a in zip(STATE, before):
            np.testing.assert_array_equal(getattr(fast._st, k), a, err_msg=name)
        assert fast._health.steps == steps, name
        assert fast._in_call is None, name
        # and through step(): what the checked path does, error or result
        results = []
        for layer in (fast, slow):
            try:
                results.append(layer.step(H, tg, lr, mode=mode, weight_decay=wd))
            except Exception as exc:        # noqa: BLE001 - compared below
                results.append((type(exc), str(exc)))
        if isinstance(results[0][0], type):
            assert results[0] == results[1], name
        else:
            for a, b in zip(*results):
                np.testing.assert_array_equal(a, b, err_msg=name)
        _assert_same_state(fast, slow)
    assert spy.taken == 0


def test_lane_declines_inside_a_call_of_the_same_layer():
    layer = FactoredOutputLayer(100, 4, seed=0)
    H, y = np.full((1, 4), 0.1, np.float32), np.array([3])
    layer._in_call = "forward"      # as inside a loss callable of forward()
    try:
        assert layer._lane.step(layer, H, y, 0.1, "online", 0.0) is None
        with pytest.raises(RuntimeError, match=r"step\(\) was called from inside "
                                               r"a call of the same layer.*forward\(\)"):
            layer.step(H, y, 0.1, mode="online")
        assert layer._health.steps == 0
    finally:
        layer._in_call = None
    layer.step(H, y, 0.1, mode="online")
    assert layer._health.steps == 1


def test_lane_waits_for_a_call_of_another_thread():
    layer = FactoredOutputLayer(100, 4, seed=0)
    H, y = np.full((1, 4), 0.1, np.float32), np.array([3])
    done = threading.Event()
    layer._lock.acquire()           # another call in progress
    try:
        t = threading.Thread(target=lambda: (layer.step(H, y, 0.1, mode="online"),
                                             done.set()))
        t.start()
        assert not done.wait(0.3)
        assert layer._health.steps == 0
    finally:
        layer._lock.release()
    t.join(10)
    assert done.is_set() and layer._health.steps == 1


def test_lane_exists_only_where_it_applies():
    assert FactoredOutputLayer(50, 4)._lane is not None
    assert FactoredOutputLayer(50, 4, loss="spherical_softmax")._lane is not None
    assert FactoredOutputLayer(50, 4, bias=True)._lane is None
    assert FactoredOutputLayer(50, 4, loss="z_loss")._lane is None
    assert FactoredOutputLayer(50, 4, loss=lambda a, q, s, v: None)._lane is None


def test_lane_follows_a_loaded_state(tmp_path):
    W0 = np.random.default_rng(4).standard_normal((200, 8)) / 3
    a = FactoredOutputLayer.from_weights(W0.astype(np.float32))
    H = np.full((2, 8), 0.2, np.float32)
    a.step(H, np.array([1, 2]), 0.1, mode="online")
    a.save(tmp_path / "a.npz")
    b = FactoredOutputLayer.load(tmp_path / "a.npz")
    slow = FactoredOutputLayer.load(tmp_path / "a.npz")
    slow._lane = None
    spy = b._lane = Spy(b._lane)
    for layer in (a, b, slow):
        layer.step(H, np.array([3, 4]), 0.1, mode="online")
    assert spy.taken == 1
    np.testing.assert_array_equal(b._st.V, slow._st.V)
    np.testing.assert_array_equal(b._st.V, a._st.V)
