"""Threads: one lock per layer, and BLAS kept single-threaded in its calls.

* Every layer has a lock: calls on one layer are serialised (a waiting
  thread blocks without holding the GIL), so concurrent calls give the
  result of the same calls made one after the other, in some order.  The
  compiled kernels release the GIL for their whole duration, so calls on
  different layers run in parallel.
* The step's BLAS calls are small (d x d); on a multi-core machine a
  multi-threaded BLAS makes them several times slower (thread wake-ups for
  microsecond calls; measured 10x at d = 256 on 2 cores).  While layers
  compute, BLAS is therefore limited to one thread, through one
  threadpoolctl controller created once.  The setting is process-wide, and
  switching it back and forth between calls is ruinous (measured: two
  threads training one layer each fell from 16 000 to 85 examples/s, as
  re-enabled BLAS worker threads woke up between calls), so the previous
  limits come back only once no layer call has run for ``IDLE_RESTORE``
  seconds (a daemon thread watches, and exits once it has restored them).
  Dense O(D d^2) work (weights(), outputs(), the naive layer) keeps the
  configured threads.
* A warning is issued once when more layer calls run at once than there
  are cores: they would time-share the cores (oversubscription).
* A layer cannot be used from inside one of its own calls (a loss callable
  calling ``step()`` on its layer would interleave two updates): the lock
  is re-entrant, so such a call would not block; it raises RuntimeError.
  Other threads simply wait for the lock, as before.
"""
import functools
import os
import threading
import time
import warnings

from ._core import calls_enter, calls_exit, calls_state

#: seconds without any layer call after which BLAS limits are restored
IDLE_RESTORE = 0.05

# The calls in progress and finished are counted in fastsparse._core (each
# count atomic under the GIL: a call's bookkeeping takes no lock).  This
# lock guards the BLAS limits: taking them, and giving them back.
_state_lock = threading.Lock()
_controller = None
_restore = None          # the threadpoolctl limiter while BLAS is limited
_restoring = False       # the restorer is deciding (see _restorer)
_last_query = -1e9       # when the BLAS threads were last asked for
_warned = False


def _n_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _blas_controller():
    global _controller
    if _controller is None:
        # created once, after SciPy's BLAS is loaded (fastsparse._core
        # imports scipy.linalg.cython_blas)
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def _restorer():
    """Restore the BLAS limits once no layer call has run for a whole
    IDLE_RESTORE period (between one and two periods after the last)."""
    global _restore, _restoring
    seen = -1
    while True:
        time.sleep(IDLE_RESTORE)
        with _state_lock:
            if _restore is None:
                return
            # _restoring before the counts are read: a call counted in after
            # this read sees it set and waits for this lock (_enter), so no
            # call runs on the restored limits
            _restoring = True
            try:
                active, done = calls_state()
                if active == 0 and done == seen:
                    _restore.restore_original_limits()
                    _restore = None
                    return
                seen = done
            finally:
                _restoring = False


def _limit_blas():
    """Limit BLAS to one thread if it is not (asking the libraries for their
    threads costs microseconds: at most once per IDLE_RESTORE)."""
    global _restore, _last_query
    with _state_lock:
        now = time.monotonic()
        if _restore is None and now - _last_query >= IDLE_RESTORE:
            _last_query = now
            ctl = _blas_controller()
            if any(lib.num_threads > 1 for lib in ctl.lib_controllers):
                _restore = ctl.limit(limits=1)
                threading.Thread(target=_restorer, daemon=True,
                                 name="fastsparse-blas-restore").start()


def _enter():
    global _warned
    active = calls_enter()
    if _restoring or (_restore is None
                      and time.monotonic() - _last_query >= IDLE_RESTORE):
        _limit_blas()
    # (sched_getaffinity is a system call: only with concurrent calls)
    if active > 1 and not _warned and active > _n_cores():
        _warned = True
        warnings.warn(
            f"fastsparse: {active} layer calls run at once on "
            f"{_n_cores()} cores; they time-share the cores. Use at most "
            "one training thread per core.", RuntimeWarning, stacklevel=4)


_exit = calls_exit


def single_thread():
    """Context manager: BLAS on one thread inside it (computations of the
    state that must give the same bits whatever the thread settings)."""
    return _blas_controller().limit(limits=1)


def _reentry_error(layer, name):
    return RuntimeError(
        f"{type(layer).__name__}.{name}() was called from inside a call of "
        f"the same layer ({type(layer).__name__}.{layer._in_call}(), e.g. by "
        "its loss callable): a layer cannot be used from within its own "
        "call. Nothing was changed by this call.")


def compute(method, name=None):
    """Decorator of the layers' compute methods: the layer's lock and, for
    layers whose ``_single_thread_blas`` is true (small d x d calls),
    BLAS limited to one thread for the duration of the call.  A call made
    from inside a call of the same layer by the same thread (the lock is
    re-entrant), e.g. by a loss callable, raises RuntimeError naming the
    public method ``name`` (default: the method's own).
    fastsparse._core.StepLane does the same for step()'s common calls."""
    name = name or method.__name__

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            if self._in_call:
                raise _reentry_error(self, name)
            self._in_call = name
            try:
                if not self._single_thread_blas:
                    return method(self, *args, **kwargs)
                _enter()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    _exit()
            finally:
                self._in_call = None
    wrapper._fastsparse_decorator = compute
    return wrapper


def compute_named(name):
    """:func:`compute` for a private method that runs public ``name``."""
    return functools.partial(compute, name=name)


def locked(method):
    """Decorator of methods that read or write the state without the small
    BLAS calls (e.g. dense O(D d^2) products): the layer's lock only (and
    the same refusal of re-entrant calls as :func:`compute`)."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            if self._in_call:
                raise _reentry_error(self, name)
            self._in_call = name
            try:
                return method(self, *args, **kwargs)
            finally:
                self._in_call = None
    wrapper._fastsparse_decorator = locked
    return wrapper
