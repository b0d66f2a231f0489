"""Thread safety: concurrent calls on one layer are serialised, BLAS runs
single-threaded inside the factored layer's calls, oversubscription warns.
(Throughput with threads is reported by bench/bench_threads.py, not timed
here.)"""
import threading
import time
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from fastsparse import FactoredOutputLayer, NaiveOutputLayer, _threads


def _data(seed, n_calls=10, m=4, D=300, d=8):
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal((m, d)), rng.integers(0, D, m))
            for _ in range(n_calls)]


def _run_threads(targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_concurrent_calls_on_one_layer_equal_a_sequential_order(mode):
    W0 = np.random.default_rng(0).standard_normal((300, 8))
    layer = FactoredOutputLayer.from_weights(W0)
    order = []
    current = threading.local()
    real_control = layer._health.control

    # called once per step inside the layer's lock, by the checked path
    # (minibatches of 4 here) and by the compiled lane (online calls here)
    def logged_control(lr, wd):
        order.append(current.key)
        return real_control(lr, wd)

    layer._health.control = logged_control
    work = {k: _data(k) for k in range(4)}

    def worker(k):
        def run():
            for H, t in work[k]:
                current.key = H[0, 0]
                layer.step(H, t, 0.02, mode=mode)
        return run

    _run_threads([worker(k) for k in work])
    assert len(order) == 40
    # replay the calls one after the other, in the order they took the lock
    by_key = {H[0, 0]: (H, t) for calls in work.values() for H, t in calls}
    replay = FactoredOutputLayer.from_weights(W0)
    for key in order:
        H, t = by_key[key]
        replay.step(H, t, 0.02, mode=mode)
    np.testing.assert_array_equal(layer.weights(), replay.weights())
    np.testing.assert_array_equal(layer._st.M, replay._st.M)


def test_layers_in_parallel_threads_equal_sequential_runs():
    W0 = np.random.default_rng(1).standard_normal((300, 8))
    layers = [FactoredOutputLayer.from_weights(W0) for _ in range(2)]
    data = [_data(10), _data(11)]

    def worker(i):
        def run():
            for H, t in data[i]:
                layers[i].step(H, t, 0.02, mode="online")
        return run

    _run_threads([worker(0), worker(1)])
    for i in range(2):
        alone = FactoredOutputLayer.from_weights(W0)
        for H, t in data[i]:
            alone.step(H, t, 0.02, mode="online")
        np.testing.assert_array_equal(layers[i].weights(), alone.weights())


def _blas_threads():
    return {info["filepath"]: info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas"}


def test_blas_is_single_threaded_inside_factored_calls_only():
    before = _blas_threads()
    seen = {}
    for cls in (FactoredOutputLayer, NaiveOutputLayer):
        layer = cls(100, 4, seed=0)
        real_step = layer._step

        def spying_step(*args, _real=real_step, _cls=cls):
            seen[_cls] = _blas_threads()
            return _real(*args)

        layer._step = spying_step
        layer.step(np.ones((2, 4)), np.array([1, 2]), 0.01)
        # restored once calls have stopped for IDLE_RESTORE seconds
        deadline = time.monotonic() + 10
        while _blas_threads() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _blas_threads() == before
    assert all(n == 1 for n in seen[FactoredOutputLayer].values())
    assert seen[NaiveOutputLayer] == before         # dense work keeps its threads


def test_single_thread_blas_false_keeps_the_configured_threads():
    from fastsparse import _threads
    deadline = time.monotonic() + 10      # earlier calls' limit lifted
    while _threads._restore is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    before = _blas_threads()
    layer = FactoredOutputLayer(100, 4, seed=0)
    layer.single_thread_blas = False
    seen = []
    real_step = layer._step

    def spying_step(*args):
        seen.append(_blas_threads())
        return real_step(*args)

    layer._step = spying_step
    layer.step(np.ones((2, 4)), np.array([1, 2]), 0.01)
    assert seen == [before]


def test_oversubscription_warns_once(monkeypatch):
    monkeypatch.setattr(_threads, "_n_cores", lambda: 1)
    monkeypatch.setattr(_threads, "_warned", False)
    barrier = threading.Barrier(2, timeout=30)
    layers = [FactoredOutputLayer(100, 4, seed=i) for i in range(2)]
    for layer in layers:
        real_step = layer._step

        def meeting_step(*args, _real=real_step):
            barrier.wait()        # both calls are inside at the same time
            return _real(*args)

        layer._step = meeting_step

    def worker(layer):
        return lambda: layer.step(np.ones((2, 4)), np.array([1, 2]), 0.01)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run_threads([worker(layers[0]), worker(layers[1])])
        barrier.reset()
        _run_threads([worker(layers[0]), worker(layers[1])])
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "time-share the cores" in msgs[0]
