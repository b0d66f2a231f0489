"""The factored output layer: exact SGD in O(d^2 + K d) per example."""
from __future__ import annotations


import numpy as np
from numpy.typing import ArrayLike

from . import _core
from ._base import _CHUNK_ROWS, _COMMON_PARAMS_DOC, OutputLayerBase
from ._errors import CheckpointError, StepRefusedError
from ._health import StabilityControl
from ._state import FactoredState
from .losses import Loss
from ._threads import _enter, compute, locked
from ._validation import check_bool, check_int, check_real

_S = _core.fs_status
_OK, _CHECK = int(_S.FS_OK), int(_S.FS_CHECK)     # plain ints: cheap tests
_EMPTY = np.zeros(0)

#: largest accepted ``online_block`` (examples per block of the online kernel)
MAX_ONLINE_BLOCK = 65536


class FactoredOutputLayer(OutputLayerBase):
    __doc__ = """Output layer ``o = W h`` with very large D, trained exactly in O(d^2).

    Implements Vincent, de Brebisson and Bouthillier (NIPS 2015): the
    weights are kept factored as ``W = V U + 1 omega^T`` with ``V`` (D x d)
    and ``U`` (d x d), together with ``U^{-1}`` and ``M = V^T V`` (from
    which ``W^T W`` follows in O(d^2)).  An SGD step with a K-sparse target
    then costs O(d^2 + K d) instead of O(D d): it updates U and its inverse
    by a rank-one (online) or rank-m (minibatch, Woodbury) correction, M by
    a symmetric rank-two (rank-2m) update and only the K target rows of V.
    Every loss of the spherical family (a function of the target outputs,
    ||o||^2 and sum(o)) is exact.  The losses, gradients and weights are
    those of the naive dense layer (:class:`fastsparse.NaiveOutputLayer`)
    to floating-point rounding.

    Parameters
    ----------
    n_outputs : int
        D, the number of outputs.
    n_hidden : int
        d, the number of hidden units (inputs of the layer).
    dtype : {np.float32, np.float64}, default np.float32
        Dtype of the state and of every result.
    seed : int or None
        Seed of the random initial weights (i.i.d. normal); the naive layer
        built with the same arguments starts from the same weights.
    init_scale : float, optional
        Standard deviation of the initial weights, default 1/sqrt(n_hidden).
    """ + _COMMON_PARAMS_DOC + """    stability : None, bool or dict
        The automatic numerical-health control (on by default): ``False``
        disables its checks and corrections, a dict sets its knobs:
        ``max_cond`` (default 8 in float32, 4 in float64: the bound on the
        condition number of U, which amplifies the rounding of every later
        write to V),
        ``min_abs_r`` (default 0.5, see below), ``check_every``,
        ``inverse_tol``, ``inverse_every``, ``scale_exp``, ``max_renorms``,
        ``max_lift``.  See :meth:`health` and :meth:`refresh`.

    Attributes
    ----------
    n_outputs, n_hidden : int
    dtype : numpy.dtype
    loss : fastsparse.losses.Loss
    has_bias, track_sum : bool
    min_abs_r : float
        An update scales U by a factor r along some direction (online:
        ``r = 1 - 2 lr dL/dq ||h||^2`` along h; minibatch: each eigenvalue
        of ``I - 2 lr H^T diag(dL/dq) H``).  When ``|r| < min_abs_r`` that
        factor is applied to V directly, in one pass over V (O(D d)),
        instead of making U (nearly) singular; no step is refused for a
        small r, r = 0 included, as the dense layer refuses none.
        A finite float with ``0 < min_abs_r < 1`` (validated on
        assignment); default 0.5.
    online_block : int
        Examples per block of the online kernel (default 64), an integer
        with ``0 <= online_block <= 65536`` (validated on assignment).  The online
        mode applies the exact per-example updates in order; within a block
        it computes them with delayed updates, so that the d x d state is
        rewritten once per block with BLAS-3 calls instead of once per
        example with BLAS-2 calls.  ``0`` selects
        the sequential BLAS-2 kernel (the reference it is tested against).
        Same results to rounding; only the speed differs.
    single_thread_blas : bool
        Whether the layer's calls run BLAS on one thread (default ``True``:
        the safe choice when several threads train layers at once, and for
        small d, where BLAS threads do not pay).  ``False`` lets a step use
        the BLAS threads configured (e.g. with ``threadpoolctl``): its
        BLAS-3 calls (blocked online kernel, minibatch) then run on all of
        them, which pays for a single training thread at d >= 256 (README,
        "Threads").

    Examples
    --------
    >>> import numpy as np, fastsparse
    >>> layer = fastsparse.FactoredOutputLayer(10_000, 32, seed=0)
    >>> H = np.full((4, 32), 0.1, dtype=np.float32)
    >>> loss, grad_H = layer.step(H, np.array([1, 2, 3, 4]), lr=0.01)
    >>> loss.shape, grad_H.shape
    ((4,), (4, 32))

    It computes what the dense layer computes:

    >>> naive = fastsparse.NaiveOutputLayer(10_000, 32, seed=0)
    >>> loss_n, _ = naive.step(H, np.array([1, 2, 3, 4]), lr=0.01)
    >>> bool(np.allclose(loss, loss_n, rtol=1e-5))
    True

    Notes
    -----
    Building the layer costs one O(D d^2) pass (M = V^T V); so do
    :meth:`weights` and :meth:`outputs` over all rows.  A step never does.
    A bias is handled as one more input fixed to 1 (one more column of W).
    """

    _online_block = _core.ONLINE_BLOCK
    _single_thread_blas = True      # read by fastsparse._threads.compute
    _bias_in_V = True
    _OPTIONS = ("stability",)

    def __init__(self, n_outputs: int, n_hidden: int, *, dtype=np.float32,
                 seed: int | None = None, init_scale: float | None = None,
                 loss="squared", bias=False, track_sum: bool | None = None,
                 stability: bool | dict | None = None, **options) -> None:
        # (**options: an unknown keyword is refused with the list of the
        # valid ones, by the shared constructor)
        super().__init__(n_outputs, n_hidden, dtype=dtype, seed=seed,
                         init_scale=init_scale, loss=loss, bias=bias,
                         track_sum=track_sum, stability=stability, **options)

    @classmethod
    def from_weights(cls, W: ArrayLike, dtype=None, *, bias=None, loss="squared",
                     track_sum: bool | None = None, copy: bool = True,
                     stability: bool | dict | None = None, **options
                     ) -> FactoredOutputLayer:
        """A layer whose weights are a copy of ``W`` (or ``W`` itself, with
        ``copy=False``); the arguments are those of
        :meth:`OutputLayerBase.from_weights` and of the constructor
        (``stability``)."""
        return super().from_weights.__func__(
            cls, W, dtype, bias=bias, loss=loss, track_sum=track_sum,
            copy=copy, stability=stability, **options)

    @property
    def online_block(self):
        return self._online_block

    @online_block.setter
    def online_block(self, value):
        try:
            self._online_block = check_int(value, "online_block", 0,
                                           MAX_ONLINE_BLOCK)
        except TypeError as exc:     # a ValueError for any bad value, as always
            raise ValueError(str(exc)) from None

    @property
    def single_thread_blas(self):
        return self._single_thread_blas

    @single_thread_blas.setter
    def single_thread_blas(self, value):
        self._single_thread_blas = check_bool(value, "single_thread_blas")

    @property
    def min_abs_r(self):
        return self._health.min_abs_r

    @min_abs_r.setter
    def min_abs_r(self, value):
        self._health.min_abs_r = check_real(value, "min_abs_r", 0, 1,
                                            open_low=True, open_high=True)

    def _setup(self, W, b, loss, track_sum, stability=None):
        super()._setup(W, b, loss, track_sum)
        if stability is None or stability is True:
            stability = {}
        elif stability is False:
            stability = {"enabled": False}
        elif not isinstance(stability, dict):
            raise TypeError("stability must be None, a bool or a dict of knobs, "
                            f"got {type(stability).__name__}")
        self._health = StabilityControl(W.dtype, **stability)
        V = W if b is None else np.ascontiguousarray(np.column_stack([W, b]))
        # omega and sv (the column sums of V) only when s is tracked
        self._st = FactoredState.from_weights(V, track_sum)
        self._params = self.loss.params
        self._health.start(self._st)
        self._set_lane()

    def _set_lane(self):
        """The compiled path of step()'s common calls
        (fastsparse._core.StepLane), for the current state and health
        control: layers without bias, with a built-in loss that puts no rule
        on the targets (the z-loss's one target per example is checked by
        the checked path only)."""
        loss = self.loss
        ok = (not self.has_bias and loss.kind is not None and loss.online
              and type(loss).check_targets is Loss.check_targets)
        self._lane = (_core.StepLane(self._st, self._health, loss.kind,
                                     self._params, _enter) if ok else None)

    # -------------------------------------------------------------- state
    def _weight_rows(self, rows):
        """Rows of W (without the bias column): V[rows] U (+ omega)."""
        W = self._st.V[rows] @ self._st.U
        if self._st.omega.size:
            W += self._st.omega
        return W[:, :self.n_hidden] if self.has_bias else W

    @locked
    def weights(self) -> np.ndarray:
        """The dense weights ``W = V U``, shape (n_outputs, n_hidden).

        Costs O(D d^2) (computed in chunks of rows); meant for checks and
        export, not for the training loop.
        """
        W = np.empty((self.n_outputs, self.n_hidden), dtype=self.dtype)
        for start in range(0, self.n_outputs, _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            W[sl] = self._weight_rows(sl)
        return W

    @locked
    def bias(self) -> np.ndarray | None:
        """The output bias b, shape (n_outputs,), or None without bias.

        Costs O(D d).
        """
        if not self.has_bias:
            return None
        b = self._st.V @ self._st.U[:, -1]
        if self._st.omega.size:
            b += self._st.omega[-1]
        return b

    def _augment(self, H):
        """H with the constant input of the bias appended."""
        if not self.has_bias:
            return H
        return np.ascontiguousarray(
            np.column_stack([H, np.ones(H.shape[0], dtype=self.dtype)]))

    def _outputs(self, H, rows):
        H = self._augment(H)
        HU = H @ self._st.U.T                       # rows of (U h)^T
        shift = (H @ self._st.omega)[:, None] if self._st.omega.size else 0
        if rows is not None:
            return HU @ self._st.V[rows].T + shift
        out = np.empty((H.shape[0], self.n_outputs), dtype=self.dtype)
        for start in range(0, self.n_outputs, _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            np.matmul(HU, self._st.V[sl].T, out=out[:, sl])
        out += shift
        return out

    # ------------------------------------------------------------ compute

    def _forward(self, H, indptr, indices):
        Ha = self._augment(H)
        m = Ha.shape[0]
        a = np.empty(indices.shape[0], dtype=self.dtype)
        q = np.empty(m)
        s = np.empty(m)
        if m:
            st = self._st
            _core.forward(st.V, st.U, st.M, st.omega, st.sv,
                          Ha, indptr, indices, a, q, s)
        return a, q, s

    def _step(self, H, tg, lr, mode, wd):
        m = H.shape[0]
        Ha = self._augment(H)
        loss, grad = _core.empty_outputs(m, Ha.shape[1], self.dtype.num)
        if self.loss.kind is None:           # a callable: minibatch only
            a, q, s = self._forward(H, tg.indptr, tg.indices)
            K = tg.indices.shape[0] // m
            L, ga, gq, gs = self.loss(a.reshape(m, K).astype(np.float64), q, s,
                                      tg.values.reshape(m, K).astype(np.float64))
            self._batch(Ha, tg, lr, wd, None, grad,
                        (ga.ravel().astype(self.dtype), gq, gs))
            return L.astype(self.dtype), self._strip(grad)
        if mode == "batch" and m > 1:
            self._batch(Ha, tg, lr, wd, loss, grad)
            return loss, self._strip(grad)
        # online (a minibatch of one example is one online update, and the
        # online kernel is the cheaper of the two): the kernel stops early
        # when the condition bound asks for a check (docs/algorithm.md §5)
        ctl = self._health.control(lr, wd)
        start = 0
        while start < m:
            part = tg.slice(start, m) if start else tg
            status = _core.online_step(self._st.kernel, Ha[start:], part.indptr,
                                       part.indices, part.values, self.loss.kind,
                                       self._params, self._online_block, ctl,
                                       loss[start:], grad[start:])
            done = ctl.done
            if lr > 0:
                self._health.after_examples(self._st, done, ctl)
            if status != _OK and status != _CHECK:
                self._raise_status(status, start + ctl.bad, start + done)
            start += done
        return loss, self._strip(grad)

    def _batch(self, Ha, tg, lr, wd, loss, grad, given=None):
        """One minibatch update: the built-in loss (losses into ``loss``),
        or the given (dL/da, dL/dq, dL/ds)."""
        ctl = self._health.control(lr, wd)
        if given is None:
            ga, gq, gs = np.zeros(0, dtype=self.dtype), _EMPTY, _EMPTY
            kind, values, out = self.loss.kind, tg.values, loss
        else:
            (ga, gq, gs), kind, values = given, 0, tg.values
            out = np.zeros(0, dtype=self.dtype)
        status = _core.batch_step(self._st.kernel, Ha, tg.indptr, tg.indices,
                                  values, kind, self._params, ga, gq, gs, ctl,
                                  out, grad)
        if status != _OK:
            self._raise_status(status, ctl.bad, 0)
        if lr > 0:
            self._health.after_examples(self._st, Ha.shape[0], ctl, updates=1)

    def _backward(self, H, tg, gq, gs, lr, wd):
        Ha = self._augment(H)
        grad = np.empty(Ha.shape, dtype=self.dtype)
        self._batch(Ha, tg, lr, wd, None, grad, (tg.values, gq, gs))
        return self._strip(grad)

    def _strip(self, grad):
        """dL/dH without the bias' constant input."""
        return np.ascontiguousarray(grad[:, :self.n_hidden]) if self.has_bias else grad

    def _raise_status(self, status, bad, applied):
        """Map a kernel's refusal to an exception.  ``bad``: the refused
        example (-1: the whole minibatch), ``applied``: examples of the
        call applied before it (online mode)."""
        where = f" at example {bad}" if bad >= 0 else ""
        tail = (f" Examples 0..{applied - 1} of this call were applied before "
                f"it (the layer is exactly in the state they left)."
                if applied > 0 else " Nothing was changed.")
        if status == _S.FS_NOMEM:
            raise MemoryError("fastsparse: could not allocate the step's workspace")
        self._st.check_finite()     # a broken state says so first
        if status == _S.FS_NONFINITE:
            msg = (f"step refused{where}: the outputs or the gradient are not "
                   f"finite in {self.dtype.name} (activations, targets or "
                   f"learning rate too large for the layer's state).")
        elif status == _S.FS_LOSS:
            msg = (f"step refused{where}: the {self.loss.name!r} loss or its "
                   f"gradient is not finite there.")
        elif status == _S.FS_OVERFLOW:
            msg = (f"step refused{where}: the update would push the layer's "
                   f"state (U, its inverse or M = V^T V) out of the range of "
                   f"{self.dtype.name}. Lower lr or scale the activations or "
                   f"targets down.")
        elif status == _S.FS_SINGULAR:
            msg = ("minibatch step refused: the Woodbury system of the update "
                   "could not be factored. Use mode='online' or smaller "
                   "minibatches.")
        else:
            raise RuntimeError(f"fastsparse: unexpected kernel status {status}")
        raise StepRefusedError(msg + tail, example=bad if bad >= 0 else None,
                               applied=applied)

    # -------------------------------------------------------- checkpoints
    def _checkpoint_meta(self):
        return {"online_block": self.online_block,
                "single_thread_blas": self.single_thread_blas,
                "stability": self._health.state()}

    def _checkpoint_arrays(self):
        st = self._st
        return {"V": st.V, "U": st.U, "Uinv": st.Uinv, "M": st.M,
                "omega": st.omega, "sv": st.sv}

    @classmethod
    def _checkpoint_shapes(cls, n_outputs, n_hidden, has_bias, track_sum):
        d = n_hidden + has_bias
        ds = d if track_sum else 0
        return {"V": (n_outputs, d), "U": (d, d), "Uinv": (d, d), "M": (d, d),
                "omega": (ds,), "sv": (ds,)}

    def _restore_checkpoint(self, path, meta, arrays):
        _check_consistency(path, arrays, self.dtype)
        if "min_abs_r" in meta:      # files of the first release
            try:
                check_real(meta["min_abs_r"], "min_abs_r", 0, 1, open_low=True,
                           open_high=True)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: invalid metadata 'min_abs_r': "
                                      f"{exc}") from None
        self._st = FactoredState(*(np.ascontiguousarray(arrays[name]) for name in
                                   ("V", "U", "Uinv", "M", "omega", "sv")))
        self._params = self.loss.params
        self._health = _health_from_state(path, self.dtype, meta.get("stability"),
                                          self._st)
        self._set_lane()
        for name, value in (  # absent from files written before they were saved
                ("online_block", meta.get("online_block", _core.ONLINE_BLOCK)),
                ("single_thread_blas", meta.get("single_thread_blas", True))):
            try:
                setattr(self, name, value)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: invalid metadata {name!r}: "
                                      f"{exc}") from None

    # ------------------------------------------------------------- health
    @compute
    def health(self) -> dict:
        """Fresh estimates of the numerical health of the state, and counts.

        A pure read: it changes nothing (a run that calls it after every step
        is bit for bit the one that never does).  Costs a few d x d x k
        matrix products.

        Returns
        -------
        dict
            ``sigma_max``, ``sigma_min``: estimates of U's extreme singular
            values; ``cond``: their ratio; ``inverse_error``: estimate of
            ``||U Uinv x - x||`` on unit vectors; ``steps``: examples
            trained; ``steps_since_renormalization``; ``min_abs_factor``: the
            smallest |r| met (see ``min_abs_r``; for a minibatch step whose
            factors are all provably far from 0, a lower bound of its
            smallest one); ``n_checks``,
            ``n_inverse_refreshes``, ``n_renormalizations``, ``n_rescales``,
            ``n_refactorizations``: counts of the automatic control's checks
            and corrective actions; ``n_near_singular_updates``: updates
            whose small factors were applied to V directly (each a pass over
            V); ``control_seconds``: time the checks and corrections took.
        """
        return self._health.report(self._st)

    @compute
    def refresh(self, exact: bool = True) -> None:
        """Recompute derived state from the factors.

        Parameters
        ----------
        exact : bool, default True
            True: recompute ``M = V^T V`` and the column sums of V exactly
            (O(D d^2), accumulated in float64) and the inverse of U
            (O(d^3)).  False: only the inverse.
        """
        self._health.refresh_inverse(self._st)
        if exact:
            self._st.refresh_derived()
        self._health.start(self._st)


def _check_consistency(path, arrays, dtype):
    """Refuse a saved factored state that does not hold together: U times
    its saved inverse must be I, M must be V^T V (checked on a few random
    probes x, ``x^T M x`` against ``||V x||^2``, O(D d)) and sv the column
    sums of V, each within a tolerance derived from the dtype that
    legitimate rounding drift stays far below."""
    V, U, Uinv, M, sv = (arrays[k] for k in ("V", "U", "Uinv", "M", "sv"))
    d = U.shape[0]
    eps = float(np.finfo(dtype).eps)
    err = np.abs(U.astype(np.float64) @ Uinv.astype(np.float64) - np.eye(d)).max()
    tol = 1e-2 if dtype == np.float32 else 1e-6
    if not err < tol:
        raise CheckpointError(f"{path}: inconsistent state: U times its saved "
                              f"inverse is {err:.3g} away from the identity")
    tol = 8 * np.sqrt(eps)
    # M: only its upper triangle is kept (fastsparse/_core.pyx)
    upper = np.triu(M.astype(np.float64))
    Mf = upper + np.triu(upper, 1).T
    X = np.random.default_rng().standard_normal((d, 4))
    VX2 = np.zeros(X.shape[1])
    colsum = np.zeros(d)
    abssum = np.zeros(d)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, V.shape[0], _CHUNK_ROWS):
            Vc = V[start:start + _CHUNK_ROWS].astype(np.float64)
            VX2 += ((Vc @ X) ** 2).sum(axis=0)
            if sv.size:
                colsum += Vc.sum(axis=0)
                abssum += np.abs(Vc).sum(axis=0)
        XMX = np.einsum("ik,ij,jk->k", X, Mf, X)
        scale = VX2 + np.abs(np.trace(Mf)) * (X * X).sum(axis=0) / d
        err = (np.abs(XMX - VX2) / np.where(scale > 0, scale, 1.0)).max()
    if not err <= tol:
        raise CheckpointError(f"{path}: inconsistent state: M is not V^T V "
                              f"(relative difference {err:.3g} on random probes, "
                              f"tolerance {tol:.3g})")
    if sv.size:
        err = (np.abs(sv - colsum) / np.where(abssum > 0, abssum, 1.0)).max()
        if not err <= tol:
            raise CheckpointError(f"{path}: inconsistent state: sv is not the "
                                  f"column sums of V (relative difference "
                                  f"{err:.3g})")


def _health_from_state(path, dtype, state, st):
    """The numerical-health control saved in a checkpoint, its record
    checked (types, ranges, vector shapes) before it is used."""
    d = st.U.shape[0]

    def bad(what):
        return CheckpointError(f"{path}: invalid metadata 'stability': {what}")

    def real(v):
        return (isinstance(v, (int, float)) and not isinstance(v, bool)
                and np.isfinite(v) and abs(v) < 2.0 ** 1000)

    def vector(v, shape):
        try:
            arr = np.array(v, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return False
        return arr.shape == shape and bool(np.isfinite(arr).all())

    if not isinstance(state, dict) or not all(
            isinstance(state.get(k, {}), dict)
            for k in ("knobs", "counters", "estimates", "vectors", "bounds")):
        raise bad("expected a record of knobs, counters, estimates, bounds "
                  "and vectors")
    knobs = state.get("knobs", {})
    # every knob of format 1 is written; min_abs_r joined later (top-level
    # in older files, whose meaning then was a refusal threshold: the
    # default replaces it)
    required = set(StabilityControl._KNOBS) - {"min_abs_r"}
    if not required <= set(knobs) <= set(StabilityControl._KNOBS) or not all(
            isinstance(v, bool) or real(v) for v in knobs.values()):
        raise bad(f"knobs {knobs!r}")
    for key, v in state.get("counters", {}).items():
        ok = (all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2 ** 62
                  for n in v.values()) if isinstance(v, dict)
              else real(v) and v >= 0)
        if not ok:
            raise bad(f"counter {key!r} = {v!r}")
    interval = state.get("counters", {}).get("interval", 1)   # older files
    if not (isinstance(interval, int) and interval >= 1):
        raise bad(f"check interval {interval!r}")
    if not all(real(v) for v in state.get("estimates", {}).values()):
        raise bad(f"estimates {state['estimates']!r}")
    if not all(real(v) and v > 0 for v in state.get("bounds", {}).values()):
        raise bad(f"bounds {state['bounds']!r}")
    vecs = state.get("vectors", {})
    X = vecs.get("X")
    singles = [v for k, v in vecs.items() if k != "X"]
    kw = len(X[0]) if isinstance(X, list) and X and isinstance(X[0], list) else -1
    if not (all(v is None for v in vecs.values()) or (
            all(vector(v, (d,)) for v in singles)
            and (X is None and "X" not in vecs or vector(X, (d, kw))))):
        raise bad(f"the power-iteration vectors must all be None or all be "
                  f"lists of {d} finite numbers")
    try:
        return StabilityControl.from_state(dtype, state, st)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
