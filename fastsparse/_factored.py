"""The factored output layer: exact SGD in O(d^2 + K d) per example."""

import numpy as np

from . import _core
from ._base import _CHUNK_ROWS, _COMMON_PARAMS_DOC, OutputLayerBase
from ._errors import CheckpointError
from ._health import StabilityControl
from ._threads import compute, locked
from ._validation import check_bool, check_int, check_real
from .losses import SquaredError

_S = _core.Status

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
        disables it, a dict sets its knobs (``check_every``, ``max_cond``,
        ``inverse_tol``, ``inverse_every``, ``scale_exp``, ``max_renorms``;
        see :class:`fastsparse._health.StabilityControl`).  See
        :meth:`health` and :meth:`refresh`.

    Attributes
    ----------
    n_outputs, n_hidden : int
    dtype : numpy.dtype
    loss : fastsparse.losses.Loss
    has_bias, track_sum : bool
    min_abs_r : float
        A step whose ``r = 1 - 2 lr dL/dq ||h||^2`` (the factor by which it
        scales U along h) has ``|r| < min_abs_r`` is refused: U would become
        (nearly) singular.  A finite float with ``0 < min_abs_r < 1``
        (validated on assignment); default 1e-3.
    online_block : int
        Examples per block of the online kernel (default 64), an integer
        with ``0 <= online_block <= 65536`` (validated on assignment).  The online
        mode applies the exact per-example updates in order; within a block
        it computes them with delayed updates, so that the d x d state is
        rewritten once per block with BLAS-3 calls instead of once per
        example with BLAS-2 calls (``src_c/fs_online.h``).  ``0`` selects
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

    Notes
    -----
    Building the layer costs one O(D d^2) pass (M = V^T V); so do
    :meth:`weights` and :meth:`outputs` over all rows.  A step never does.
    A bias is handled as one more input fixed to 1 (one more column of W).
    """

    _min_abs_r = 1e-3
    _online_block = _core.ONLINE_BLOCK
    _single_thread = True
    _bias_in_V = True
    _OPTIONS = ("stability",)

    @property
    def min_abs_r(self):
        return self._min_abs_r

    @min_abs_r.setter
    def min_abs_r(self, value):
        self._min_abs_r = check_real(value, "min_abs_r", 0, 1, open_low=True,
                                     open_high=True)

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
        return self._single_thread

    @single_thread_blas.setter
    def single_thread_blas(self, value):
        self._single_thread = check_bool(value, "single_thread_blas")

    @property
    def _single_thread_blas(self):          # read by _threads.compute
        return self._single_thread

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
        d = V.shape[1]
        self._V = V
        self._U = np.eye(d, dtype=self.dtype)
        self._Uinv = np.eye(d, dtype=self.dtype)
        self._M = _gram(V)
        # omega and sv (the column sums of V) only when s is tracked
        self._omega = np.zeros(d if track_sum else 0, dtype=self.dtype)
        self._sv = (_column_sums(V) if track_sum
                    else np.zeros(0, dtype=self.dtype))
        self._params = self.loss.params

    # -------------------------------------------------------------- state
    def _weight_rows(self, rows):
        """Rows of W (without the bias column): V[rows] U (+ omega)."""
        W = self._V[rows] @ self._U
        if self._omega.size:
            W += self._omega
        return W[:, :self.n_hidden] if self.has_bias else W

    @locked
    def weights(self):
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
    def bias(self):
        """The output bias b, shape (n_outputs,), or None without bias.

        Costs O(D d).
        """
        if not self.has_bias:
            return None
        b = self._V @ self._U[:, -1]
        if self._omega.size:
            b += self._omega[-1]
        return b

    def _augment(self, H):
        """H with the constant input of the bias appended."""
        if not self.has_bias:
            return H
        return np.ascontiguousarray(
            np.column_stack([H, np.ones(H.shape[0], dtype=self.dtype)]))

    def _outputs(self, H, rows):
        H = self._augment(H)
        HU = H @ self._U.T                       # rows of (U h)^T
        shift = (H @ self._omega)[:, None] if self._omega.size else 0
        if rows is not None:
            return HU @ self._V[rows].T + shift
        out = np.empty((H.shape[0], self.n_outputs), dtype=self.dtype)
        for start in range(0, self.n_outputs, _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            np.matmul(HU, self._V[sl].T, out=out[:, sl])
        out += shift
        return out

    # ------------------------------------------------------------ compute
    def _state(self):
        return (self._V, self._U, self._Uinv, self._M, self._omega, self._sv)

    def _forward(self, H, indptr, indices):
        Ha = self._augment(H)
        m = Ha.shape[0]
        a = np.empty(indices.shape[0], dtype=self.dtype)
        q = np.empty(m)
        s = np.empty(m)
        if m:
            _core.forward(self._V, self._U, self._M, self._omega, self._sv,
                          Ha, indptr, indices, a, q, s)
        return a, q, s

    def _step(self, H, tg, lr, mode, wd):
        m = H.shape[0]
        Ha = self._augment(H)
        grad = np.empty(Ha.shape, dtype=self.dtype)
        if self.loss.kind is None:           # a callable: minibatch only
            a, q, s = self._forward(H, tg.indptr, tg.indices)
            K = tg.indices.shape[0] // m
            L, ga, gq, gs = self.loss(a.reshape(m, K).astype(np.float64), q, s,
                                      tg.values.reshape(m, K).astype(np.float64))
            self._run(_core.backward, Ha, (tg.indptr, tg.indices,
                      ga.ravel().astype(self.dtype), gq, gs, lr, wd), (grad,))
            self._after(m, lr)
            return L.astype(self.dtype), self._strip(grad)
        loss = np.empty(m, dtype=self.dtype)
        if m == 1:
            # one example: the minibatch update is the online update, and
            # the online kernel is the cheaper of the two
            mode = "online"
        if mode == "batch":
            if lr > 0 and isinstance(self.loss, SquaredError):
                self._provably_safe(Ha, tg, lr)  # refuses a bad squared-error step
            self._run(_core.batch_step, Ha, (tg.indptr, tg.indices, tg.values,
                      lr, wd, self.loss.kind, self._params), (loss, grad))
            self._after(m, lr)
            return loss, self._strip(grad)
        # online: in pieces that end where a health check is due
        snapshot = None
        # (a kernel refuses an example before writing anything for it, so a
        # call of one example needs no snapshot)
        if lr > 0 and not self._provably_safe(Ha, tg, lr) and m > 1:
            # a later example could still be refused: keep what the call may
            # touch so that a refused call changes nothing (and check only
            # after the whole call, so the snapshot stays valid)
            snapshot = self._snapshot(tg)
        start = 0
        while start < m:
            n = m - start
            if snapshot is None and lr > 0 and self._health.enabled:
                n = min(n, self._health.examples_to_next_check())
            sub, part = slice(start, start + n), tg.slice(start, start + n)
            self._run(_core.online_step, Ha[sub], (part.indptr, part.indices,
                      part.values, lr, wd, self.loss.kind, self._params),
                      (loss[sub], grad[sub]), snapshot, offset=start,
                      block=self._online_block)
            self._after(n, lr)
            start += n
        return loss, self._strip(grad)

    def _backward(self, H, tg, gq, gs, lr, wd):
        Ha = self._augment(H)
        grad = np.empty(Ha.shape, dtype=self.dtype)
        self._run(_core.backward, Ha,
                  (tg.indptr, tg.indices, tg.values, gq, gs, lr, wd), (grad,))
        self._after(H.shape[0], lr)
        return self._strip(grad)

    def _after(self, n, lr):
        if lr > 0:
            self._health.after_examples(self, n)

    def _strip(self, grad):
        """dL/dH without the bias' constant input."""
        return np.ascontiguousarray(grad[:, :self.n_hidden]) if self.has_bias else grad

    def _run(self, kernel, Ha, inputs, outputs, snapshot=None, offset=0,
             **options):
        """Call a kernel on the state; map a failure to an exception, after
        restoring the snapshot, if any (the batch kernels check everything
        before their first write, so they need none).  ``offset``: index in
        the user's call of the first example passed."""
        status, bad, bad_r = kernel(*self._state(), Ha, *inputs,
                                    self.min_abs_r, *outputs, **options)
        if status != _S.STATUS_OK:
            if snapshot is not None:
                self._restore(snapshot)
            applied = 0
            if kernel is _core.online_step and snapshot is None:
                applied = offset + bad
            self._raise_status(status, offset + bad, bad_r, applied)

    # -------------------------------------------------------- checkpoints
    def _checkpoint_meta(self):
        return {"min_abs_r": self.min_abs_r, "online_block": self.online_block,
                "single_thread_blas": self.single_thread_blas,
                "stability": self._health.state()}

    def _checkpoint_arrays(self):
        return {"V": self._V, "U": self._U, "Uinv": self._Uinv, "M": self._M,
                "omega": self._omega, "sv": self._sv}

    @classmethod
    def _checkpoint_shapes(cls, n_outputs, n_hidden, has_bias, track_sum):
        d = n_hidden + has_bias
        ds = d if track_sum else 0
        return {"V": (n_outputs, d), "U": (d, d), "Uinv": (d, d), "M": (d, d),
                "omega": (ds,), "sv": (ds,)}

    def _restore_checkpoint(self, path, meta, arrays):
        d = self.n_hidden + self.has_bias
        _check_consistency(path, arrays, self.dtype)
        for name, value in (("min_abs_r", meta.get("min_abs_r")),
                            # absent from files written before they were saved
                            ("online_block", meta.get("online_block",
                                                      _core.ONLINE_BLOCK)),
                            ("single_thread_blas", meta.get("single_thread_blas",
                                                            True))):
            try:
                setattr(self, name, value)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: invalid metadata {name!r}: "
                                      f"{exc}") from None
        self._health = _health_from_state(path, self.dtype, meta.get("stability"), d)
        for name in ("V", "U", "Uinv", "M", "omega", "sv"):
            setattr(self, "_" + name, np.ascontiguousarray(arrays[name]))
        self._params = self.loss.params

    # ------------------------------------------------------------- health
    @compute
    def health(self):
        """Fresh estimates of the numerical health of the state, and counts.

        Costs a few d x d matrix-vector products (no correction is made).

        Returns
        -------
        dict
            ``sigma_max``, ``sigma_min``: estimates of U's extreme singular
            values; ``cond``: their ratio; ``inverse_error``: estimate of
            ``||U Uinv - I||`` (on a probe vector); ``steps``: examples
            trained; ``steps_since_renormalization``; ``n_checks``,
            ``n_inverse_refreshes``, ``n_renormalizations``, ``n_rescales``,
            ``n_refactorizations``: counts of the automatic control's checks
            and corrective actions; ``control_seconds``: time they took.
        """
        self._health.check(self, correct=False)
        return self._health.report()

    @locked
    def refresh(self, exact=True):
        """Recompute derived state from the factors.

        Parameters
        ----------
        exact : bool, default True
            True: recompute ``M = V^T V`` and the column sums of V exactly
            (O(D d^2), accumulated in float64) and the inverse of U
            (O(d^3)).  False: only the inverse.
        """
        self._health.refresh_inverse(self)
        if not exact:
            return
        self._M[...] = _gram(self._V)
        if self._sv.size:
            self._sv[...] = _column_sums(self._V)

    def _provably_safe(self, Ha, tg, lr):
        """Whether no example of the call can be refused.

        r = 1 - 2 lr dL/dq ||h||^2.  For squared error dL/dq = 1, so r is
        known now: a step with |r| < min_abs_r is refused here, before
        anything changes, in either mode.  For the other losses an upper
        bound of dL/dq (from the targets alone) may prove r >= min_abs_r;
        when it cannot, the online kernel checks each example.
        """
        squared = isinstance(self.loss, SquaredError)
        bound = None if squared else self.loss.gq_bound(_row_sums(tg),
                                                        self.n_outputs)
        if bound is None and not squared:
            return False
        hh = np.einsum("ij,ij->i", Ha, Ha, dtype=np.float64)
        if squared:
            r = 1.0 - 2.0 * lr * hh
            small = np.flatnonzero(np.abs(r) < self.min_abs_r)
            if small.size:
                i = int(small[0])
                raise ValueError(
                    f"step refused: example {i} has r = 1 - 2 lr ||h||^2 = "
                    f"{r[i]:.3g} (lr = {lr:g}, ||h||^2 = {hh[i]:.6g}), |r| < "
                    f"min_abs_r = {self.min_abs_r:g}: the update would make U "
                    f"(nearly) singular. Lower lr or rescale h. Nothing was "
                    f"changed.")
            return True
        return bool(np.all(1.0 - 2.0 * lr * bound * hh >= self.min_abs_r))

    def _snapshot(self, tg):
        rows = np.unique(tg.indices)
        return rows, self._V[rows], [x.copy() for x in self._state()[1:]]

    def _restore(self, snapshot):
        rows, vrows, arrays = snapshot
        self._V[rows] = vrows
        for dst, src in zip(self._state()[1:], arrays):
            dst[...] = src

    def _raise_status(self, status, bad, bad_r, applied):
        tail = (f" Examples 0..{applied - 1} of this call were applied before it."
                if applied > 0 else " Nothing was changed.")
        if status == _S.STATUS_SMALL_R:
            raise ValueError(
                f"step refused at example {bad}: r = 1 - 2 lr dL/dq ||h||^2 = "
                f"{bad_r:.3g}, |r| < min_abs_r = {self.min_abs_r:g}: U would "
                f"become (nearly) singular. Lower lr or rescale h.{tail}")
        if status == _S.STATUS_SINGULAR:
            raise ValueError(
                "minibatch step refused: the Woodbury system "
                "I - 2 lr diag(dL/dq) H H^T is (nearly) singular. Lower lr, "
                "use smaller minibatches or mode='online'. Nothing was changed.")
        if status == _S.STATUS_LOSS:
            raise FloatingPointError(
                f"the {self.loss.name!r} loss or its gradient is not finite at "
                f"example {bad}.{tail}")
        if status == _S.STATUS_NONFINITE:
            raise FloatingPointError(
                f"non-finite values in the layer's state showed at example "
                f"{bad} (a too large learning rate?); the step was refused "
                f"before applying it.{tail}")
        if status == _S.STATUS_NOMEM:
            raise MemoryError("fastsparse: could not allocate the step's workspace")
        raise RuntimeError(f"fastsparse: unexpected kernel status {status}")


def _row_sums(tg):
    """Sum of the target values of each example."""
    rows = np.repeat(np.arange(tg.n_examples), np.diff(tg.indptr))
    return np.bincount(rows, weights=tg.values, minlength=tg.n_examples)


def _gram(V):
    """V^T V, accumulated over chunks of rows in float64 (then cast)."""
    d = V.shape[1]
    Q = np.zeros((d, d), dtype=np.float64)
    for start in range(0, V.shape[0], _CHUNK_ROWS):
        Vc = V[start:start + _CHUNK_ROWS]
        Q += Vc.T @ Vc
    return Q.astype(V.dtype)


def _column_sums(V):
    """1^T V accumulated in float64 (then cast)."""
    return V.sum(axis=0, dtype=np.float64).astype(V.dtype)


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


def _health_from_state(path, dtype, state, d):
    """The numerical-health control saved in a checkpoint, its record
    checked (types, ranges, vector lengths) before it is used."""
    def bad(what):
        return CheckpointError(f"{path}: invalid metadata 'stability': {what}")

    def real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(state, dict) or not all(
            isinstance(state.get(k), dict)
            for k in ("knobs", "counters", "estimates", "vectors")):
        raise bad("expected a record with knobs, counters, estimates and vectors")
    knobs, counters = state["knobs"], state["counters"]
    if set(knobs) != set(StabilityControl._KNOBS) or not all(
            v is None or isinstance(v, bool) or (real(v) and np.isfinite(v)
                                                 and abs(v) < 2 ** 62)
            for v in knobs.values()):
        raise bad(f"knobs {knobs!r}")
    for key, v in counters.items():
        ok = (all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2 ** 62
                  for n in v.values()) if isinstance(v, dict)
              else real(v) and np.isfinite(v) and 0 <= v < 2 ** 62)
        if not ok:
            raise bad(f"counter {key!r} = {v!r}")
    if not (isinstance(counters.get("interval", 1), int)
            and counters.get("interval", 1) >= 1):
        raise bad(f"check interval {counters.get('interval')!r}")
    if not all(real(v) for v in state["estimates"].values()):
        raise bad(f"estimates {state['estimates']!r}")
    vecs = list(state["vectors"].values())
    if not (all(v is None for v in vecs) or all(
            isinstance(v, list) and len(v) == d
            and all(real(x) and np.isfinite(x) for x in v) for v in vecs)):
        raise bad(f"the power-iteration vectors must all be None or all be "
                  f"lists of {d} finite numbers")
    try:
        return StabilityControl.from_state(dtype, state)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
