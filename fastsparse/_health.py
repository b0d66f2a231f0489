"""Numerical health of the factored layer (docs/algorithm.md, §4 to §6).

In exact arithmetic ``W = V U`` equals the dense weights forever; in
floating point the rounding of every later write to V is amplified by the
condition number of U, and the running inverse and M = V^T V accumulate
rounding.  The kernels keep rigorous upper bounds of sigma_max(U)^2 and
||U^-1||^2 up to date at every update (§5) and stop an online call when
their product exceeds ``max_cond^2``; this module then checks the state
with O(d^2 k) estimates and corrects it:

* the conditioning of U: warm-started subspace iteration on
  ``Uinv^T Uinv`` finds U's weak left singular directions L; when
  ``sigma_max / sigma_min > max_cond`` they are lifted by
  ``U <- C U, V <- V C^{-1}``, ``C = I + L diag(alpha) L^T`` (W unchanged;
  one pass over V, O(D d k)); a full re-factorisation ``V <- V U, U <- I``
  (O(D d^2)) only as a last resort;
* the running inverse of U: a probe ``||U Uinv x - x||``; recomputed from U
  by LU when it exceeds ``inverse_tol`` (O(d^3));
* the scale of U (over/underflow): rescaled by an exact power of two.

Every correction is an exact reparametrisation: W, M = V^T V and the
column sums are transformed with V.  The control works on a
:class:`fastsparse._state.FactoredState` (the layer's arrays), which the
corrections transform in place; it does not know the layer.
"""
import time
import warnings

import numpy as np

from . import _core
from ._validation import check_bool, check_int, check_real

_ACTIONS = ("inverse_refreshes", "renormalizations", "rescales",
            "refactorizations", "near_singular_updates")

#: upper limit of the entries of the state (the kernels refuse an update
#: whose bounds exceed it): far from overflow, so that products stay finite
NORM_LIMIT = {np.dtype(np.float32): 2.0 ** 60, np.dtype(np.float64): 2.0 ** 500}

#: safety factor on the estimated bounds (the estimates are lower bounds)
_MARGIN = 1.1

#: the tracked weak directions a check on schedule probes the inverse on,
#: when the bounds need nothing else (StabilityControl.check)
_PROBE_VECTORS = 4


class StabilityControl:
    """The knobs and state of the automatic numerical-health control.

    Parameters
    ----------
    enabled : bool, default True
        Whether checks and corrections run automatically.  The kernels'
        near-singular handling (``min_abs_r``) stays on either way.
    max_cond : float, optional
        Bound on the condition number of U; default 8 in float32, 4 in
        float64.  The rounding of every write to
        V is amplified by up to this factor; corrections that keep it cost a
        pass over V each (O(D d k)), more often the lower the bound, on data
        whose contexts repeat (README, "Numerical health").
    min_abs_r : float, default 0.5
        An update that scales U by a factor r with |r| < min_abs_r along some
        direction (online: r = 1 - 2 lr dL/dq ||h||^2; minibatch: an
        eigenvalue of I - 2 lr H^T diag(dL/dq) H) applies that factor to V
        directly, in one pass over V, instead of making U ill-conditioned.
        0 < min_abs_r < 1.
    check_every : int, default 256
        Largest number of updates of U between two checks, whatever the
        bounds say (a check costs a few d x d x k products): examples in
        online mode, calls in minibatch mode (one update each).  The bounds
        follow every update; this schedule watches the running inverse's
        drift, which grows with the number of updates (when the bounds
        prove ``cond(U) <= max_cond / 2``, such a check measures only that
        drift, on U's 4 weakest tracked directions).
    inverse_tol : float, optional
        Bound on the relative error ``||U Uinv x - x|| / ||x||`` of the
        running inverse; default ``32 * eps`` in float32 and 1e-12 in
        float64.
    inverse_every : int, default 100000
        Recompute the inverse at least this often (updates of U, counted as
        for ``check_every``); 0: never on schedule.
    scale_exp : int, default 16
        U is rescaled (by a power of two, exactly) to a largest singular
        value near 1 when a bound says that value, or ``1 / sigma_min``, may
        have left ``[2^-scale_exp, 2^scale_exp]`` (weight decay shrinks U at
        every update).  8 <= scale_exp <= 120.
    max_renorms : int, default 2
        Renormalisations tried in one check before falling back to a full
        re-factorisation.
    max_lift : int, default 16
        Most directions lifted by one renormalisation (all those below
        ``sigma_max / sqrt(max_cond)`` among the tracked ones, at least the
        weakest).
    """

    _KNOBS = ("enabled", "max_cond", "min_abs_r", "check_every", "inverse_tol",
              "inverse_every", "scale_exp", "max_renorms", "max_lift")

    def __init__(self, dtype, *, enabled=True, max_cond=None, min_abs_r=0.5,
                 check_every=256, inverse_tol=None, inverse_every=100_000,
                 scale_exp=16, max_renorms=2, max_lift=16):
        dtype = np.dtype(dtype)
        eps = float(np.finfo(dtype).eps)
        self.dtype = dtype
        self.enabled = check_bool(enabled, "enabled")
        # float64 has no wider type for the d x d work: a tighter bound
        # (measured: minibatch weight errors 3.5x the dense layer's at 4,
        # up to 21x at 8)
        self.max_cond = check_real(max_cond if max_cond is not None
                                   else (8.0 if dtype == np.float32 else 4.0),
                                   "max_cond", 1, open_low=True)
        self.min_abs_r = check_real(min_abs_r, "min_abs_r", 0, 1, open_low=True,
                                    open_high=True)
        self.check_every = check_int(check_every, "check_every", 1)
        self.inverse_tol = check_real(inverse_tol if inverse_tol is not None
                                      else (32 * eps if dtype == np.float32 else 1e-12),
                                      "inverse_tol", 0, open_low=True)
        self.inverse_every = check_int(inverse_every, "inverse_every", 0)
        self.scale_exp = check_int(scale_exp, "scale_exp", 8, 120)
        self.max_renorms = check_int(max_renorms, "max_renorms", 0)
        self.max_lift = check_int(max_lift, "max_lift", 1, 64)
        self.steps = 0
        self.steps_since_renormalization = 0
        self._since_check = 0
        self._since_inverse = 0
        self.counts = dict.fromkeys(("checks",) + _ACTIONS, 0)
        self.seconds = 0.0
        self.min_factor = 1.0
        self.estimates = {"sigma_max": 1.0, "sigma_min": 1.0, "cond": 1.0,
                          "inverse_error": 0.0}
        self._x_max = None      # warm vector of sigma_max (left, float64)
        self._X = None          # warm basis of the weak left directions
        self.ctl = None         # the kernels' control record (_core.Control)

    # ------------------------------------------------------------- set-up
    def start(self, st):
        """Bounds of a fresh state (U = I up to scale) or a restored one."""
        U = st.U
        smax = float(np.linalg.norm(U.astype(np.float64), 2)) if U.size else 1.0
        self.ctl = _core.Control(self.min_abs_r, 0.0, NORM_LIMIT[self.dtype],
                                 smax * smax * _MARGIN,
                                 _inverse_norm2(st) * _MARGIN,
                                 _sym_norm(st))

    def control(self, lr, wd):
        """The kernels' control record for a call with these rates."""
        ctl = self.ctl
        if self.enabled and lr > 0:
            ctl.configure(lr, wd, self.min_abs_r, self.max_cond,
                          2.0 ** self.scale_exp)
        else:
            ctl.configure(lr, wd, self.min_abs_r, 0.0, 0.0)
        return ctl

    # ------------------------------------------------------------ schedule
    def after_examples(self, st, n, ctl, updates=None):
        """Count n applied examples in ``updates`` updates of U (default n:
        online; a minibatch step is one); run a check when one is due."""
        if n <= 0:
            return
        updates = n if updates is None else updates
        self.steps += n
        self.steps_since_renormalization += n
        self._since_check += updates
        self._since_inverse += updates
        n_split, min_factor = ctl.n_split, ctl.min_factor
        if n_split:
            self.counts["near_singular_updates"] += n_split
        if min_factor < self.min_factor:
            self.min_factor = min_factor
        # (ctl's limits are this control's own, set by control(): enabled)
        if self.enabled:
            if ctl.due():
                self.check(st)
            elif self._since_check >= self.check_every:
                self.check(st, scheduled=True)

    # --------------------------------------------------------------- check
    @property
    def _lift_from(self):
        """The cond(U) above which a check renormalises (hysteresis: the
        bounds then restart with room below max_cond instead of stopping
        the kernels again a few examples later)."""
        return self.max_cond / 2

    @property
    def _inner(self):
        """A check keeps sigma_max(U) in [1 / inner, inner], well inside the
        range whose bounds stop the kernels (2^scale_exp), so that they do
        not stop again at once."""
        return 2.0 ** (self.scale_exp - 4)

    def _bounds_clear(self):
        """Whether the bounds alone prove that a check would neither
        renormalise nor rescale: cond(U) <= _lift_from, and sigma_max
        inside [1 / _inner, _inner] (sigma_max >= sigma_min)."""
        ctl = self.ctl
        inner2 = self._inner ** 2
        return (ctl.smax2 * ctl.sinv2 <= self._lift_from ** 2
                and ctl.smax2 <= inner2 and ctl.sinv2 <= inner2)

    def check(self, st, scheduled=False):
        """Estimate the health of the state and correct it when needed.

        A ``scheduled`` check (not asked for by the bounds) whose bounds
        prove that the conditioning and the scale need nothing only
        measures the running inverse's error, on the weakest tracked
        directions (``_PROBE_VECTORS`` of them, no iteration), and keeps
        the bounds."""
        t0 = time.perf_counter()
        try:
            self._since_check = 0
            self.counts["checks"] += 1
            st.check_finite()
            if scheduled and self._X is not None and self._bounds_clear():
                est = self._estimate(st, iterations=0, store=False,
                                     vectors=_PROBE_VECTORS)
                if (est["inverse_error"] > self.inverse_tol
                        or (self.inverse_every
                            and self._since_inverse >= self.inverse_every)):
                    self.refresh_inverse(st)
                self.ctl.mnorm = _sym_norm(st)     # exact, as a full check
                return
            est = self._estimate(st, iterations=2, store=True)
            # renormalise from _lift_from on; re-factorise only if the
            # bound itself is still exceeded after max_renorms attempts
            renorms = 0
            while est["cond"] > self._lift_from:
                if renorms == self.max_renorms:
                    if est["cond"] > self.max_cond and self.refactorize(st):
                        est = self._estimate(st, iterations=2, store=True)
                    break
                if not self._renormalize(st, est):
                    break
                renorms += 1
                est = self._estimate(st, iterations=2, store=True)
            # after a renormalisation too: its update of Uinv cancels large
            # entries, and the rounding of the V rows' updates follows
            # ||Uinv U - I||, which is up to cond(U) times the probe's error
            if (renorms or est["inverse_error"] > self.inverse_tol
                    or (self.inverse_every and self._since_inverse >= self.inverse_every)):
                self.refresh_inverse(st)
            # back to sigma_max ~ 1 when it leaves the inner range
            inner = self._inner
            if not 1.0 / inner <= est["sigma_max"] <= inner:
                self._rescale(st, est)
            self._set_bounds(st, est)
        finally:
            self.seconds += time.perf_counter() - t0

    def _set_bounds(self, st, est):
        ctl = self.ctl
        ctl.smax2 = est["sigma_max"] ** 2 * _MARGIN
        ctl.sinv2 = est["sigma_min"] ** -2 * _MARGIN
        ctl.mnorm = _sym_norm(st)

    def _estimate(self, st, iterations, store, vectors=None):
        """sigma_max(U) by power iteration (warm), U's weak left singular
        directions and values by subspace iteration on Uinv^T Uinv (warm),
        and the inverse error on those vectors; all in float64, compiled
        (``_core.Arrays.estimate``; :func:`estimate_numpy` is the same in
        NumPy).  ``vectors``: only the first (weakest) of the tracked
        directions (with ``store`` false).  Returns the estimates;
        ``store``: keep them and the warm vectors (a pure read otherwise)."""
        d = st.U.shape[0]
        kw = min(d, self.max_lift + 2)
        x, X = self._x_max, self._X
        if x is None or X is None or X.shape != (d, kw):
            rng = np.random.default_rng(0)
            x = _unit(rng.standard_normal(d))
            X = np.linalg.qr(rng.standard_normal((d, kw)))[0]
        if vectors is not None and vectors < kw:
            kw, X = vectors, X[:, :vectors]
        # copies, updated in place (the warm vectors stay as they are
        # until ``store``)
        x1 = np.array(x, dtype=np.float64, order="C")
        X1 = np.array(X, dtype=np.float64, order="C")
        theta = np.empty(kw)
        got = st.kernel.estimate(iterations, x1, X1, theta)
        if got is None:     # out of memory or a LAPACK failure in C
            smax, inv_err, theta, x, X = estimate_numpy(st.U, st.Uinv, x, X,
                                                        iterations)
        else:
            (smax, inv_err), x, X = got, x1, X1
        smin = 1.0 / np.sqrt(theta[0]) if theta[0] > 0 else 0.0
        est = {"sigma_max": smax, "sigma_min": float(smin),
               "cond": smax / smin if smin > 0 else np.inf,
               "inverse_error": inv_err,
               "_theta": theta, "_X": X}
        if store:
            self._x_max, self._X = x, X
            self.estimates.update({k: v for k, v in est.items()
                                   if not k.startswith("_")})
        return est

    # ------------------------------------------------------------- actions
    def refresh_inverse(self, st):
        """Uinv <- U^{-1} by LU in float64 (O(d^3))."""
        A = st.U.astype(np.float64)
        inv = np.empty_like(A)
        if _core.invert(A, inv) != 0:
            raise FloatingPointError("U is singular: the factored state is broken; "
                                     "rebuild the layer from its weights")
        if not self._in_range(inv):
            return _skipped("the refresh of U's inverse")
        st.Uinv[...] = inv
        self._since_inverse = 0
        self.counts["inverse_refreshes"] += 1

    def _renormalize(self, st, est):
        """Lift U's weak left singular directions L_k up to sigma_max (§5):
        U <- C U, Uinv <- Uinv C^{-1}, V <- V C^{-1}, M <- C^{-T} M C^{-1},
        sv <- C^{-T} sv with C = I + L_k diag(alpha) L_k^T."""
        theta, X = est["_theta"], est["_X"]
        smax = est["sigma_max"]
        if not (0.0 < smax < np.inf and np.all(np.isfinite(theta))):
            return _skipped("a renormalisation")
        sig = 1.0 / np.sqrt(np.maximum(theta, 1e-300))
        k = int(np.clip(np.count_nonzero(sig < smax / np.sqrt(self.max_cond)),
                        1, self.max_lift))
        dt = st.dtype
        # the directions as V's pass will see them (rounded to the layer's
        # dtype), so that U's and V's transformations are exact inverses
        L = X[:, :k].astype(dt).astype(np.float64)
        alpha = smax / sig[:k] - 1.0                 # C = I + L diag(alpha) L^T
        B = np.linalg.inv(np.diag(1.0 / alpha) + L.T @ L)
        # C^{-1} = I - L B L^T (Woodbury; B = diag(alpha/(1+alpha)) when L is
        # orthonormal)
        U = st.U.astype(np.float64)
        Ui = st.Uinv.astype(np.float64)
        Cinv = np.eye(L.shape[0]) - L @ B @ L.T
        with np.errstate(all="ignore"):
            U1 = U + (L * alpha) @ (L.T @ U)
            Ui1 = Ui - (Ui @ L) @ B @ L.T
            M1 = Cinv.T @ st.full_M() @ Cinv
            sv1 = (Cinv.T @ st.sv.astype(np.float64) if st.sv.size
                   else st.sv.astype(np.float64))
        # V C^{-1} shrinks V along L (||C^{-1}|| <= 1): V needs no bound
        if not self._in_range(U1, Ui1, M1, sv1, Cinv):
            return _skipped("a renormalisation")
        st.U[...] = U1
        st.Uinv[...] = Ui1
        st.M[...] = M1
        st.sv[...] = sv1
        P = np.ascontiguousarray(L.T, dtype=dt)
        Q = np.ascontiguousarray(B @ L.T, dtype=dt)
        if _core.lowrank_rows(st.V, P, Q, np.full(k, -1.0, dtype=dt)) != 0:
            raise MemoryError("fastsparse: could not allocate the workspace "
                              "of a renormalisation")
        self.counts["renormalizations"] += 1
        self.steps_since_renormalization = 0
        return True

    def refactorize(self, st):
        """Last resort: V <- V U, U <- I, Uinv <- I (O(D d^2)).  Skipped
        (returns False) when the results would leave the state's range."""
        V, U = st.V, st.U
        U64 = U.astype(np.float64)
        with np.errstate(all="ignore"):
            M1 = U64.T @ st.full_M() @ U64
            sv1 = (U64.T @ st.sv.astype(np.float64) if st.sv.size
                   else st.sv.astype(np.float64))
            # |(V U)_jc| <= ||V_j|| ||U_:c||
            vu = self._v_row_bound(st) * float(np.sqrt((U64 ** 2).sum(axis=0)).max())
        if not (self._in_range(M1, sv1) and vu <= NORM_LIMIT[self.dtype]):
            return _skipped("a re-factorisation")
        chunk = 1 << 14
        for start in range(0, V.shape[0], chunk):
            V[start:start + chunk] = V[start:start + chunk] @ U
        st.M[...] = M1
        st.sv[...] = sv1
        d = U.shape[0]
        st.U[...] = np.eye(d, dtype=st.dtype)
        st.Uinv[...] = np.eye(d, dtype=st.dtype)
        self._since_inverse = 0
        self.counts["refactorizations"] += 1
        self.steps_since_renormalization = 0
        self._x_max = self._X = None
        return True

    def _rescale(self, st, est):
        """U <- 2^-e U, Uinv <- 2^e Uinv, V <- 2^e V: exact in floating point.
        Skipped when the results would leave the state's range."""
        smax = est["sigma_max"]
        if not 0.0 < smax < np.inf:
            return _skipped("a rescale")
        e = int(np.round(np.log2(smax)))
        if abs(e) > 400:
            return _skipped("a rescale")
        f1 = 2.0 ** e
        lim = NORM_LIMIT[self.dtype]
        if not (self._v_row_bound(st) * f1 <= lim
                and float(np.abs(st.M).max(initial=0)) * f1 * f1 <= lim
                and float(np.abs(st.sv).max(initial=0)) * f1 <= lim
                and float(np.abs(st.Uinv).max(initial=0)) * f1 <= lim):
            return _skipped("a rescale")
        f = st.dtype.type(f1)
        st.U *= st.dtype.type(2.0 ** -e)
        st.Uinv *= f
        st.V *= f
        st.M *= f * f
        st.sv *= f
        self.counts["rescales"] += 1
        est["sigma_max"] *= 2.0 ** -e
        est["sigma_min"] *= 2.0 ** -e
        for key in ("sigma_max", "sigma_min"):
            self.estimates[key] = est[key]
        return True

    def _in_range(self, *arrays):
        """Whether every entry is finite and within the state's range (what
        a correction may write; the kernels refuse updates beyond it)."""
        lim = NORM_LIMIT[self.dtype]
        return all(bool(np.all(np.abs(a) <= lim)) for a in arrays)

    @staticmethod
    def _v_row_bound(st):
        """An upper bound of every row norm of V: ||V_j||^2 <= tr(V^T V)
        = tr(M) (twice that: M is V^T V up to rounding)."""
        return 2.0 * float(np.sqrt(max(float(np.trace(st.M.astype(np.float64))), 0.0)))

    # ------------------------------------------------------ state, report
    def state(self):
        """Knobs, counters, bounds and warm vectors, JSON-serialisable
        (checkpoints)."""
        vec = (lambda x: None if x is None else np.asarray(x).tolist())
        ctl = self.ctl
        return {"knobs": {k: getattr(self, k) for k in self._KNOBS},
                "counters": {"steps": self.steps,
                             "steps_since_renormalization": self.steps_since_renormalization,
                             "since_check": self._since_check,
                             "since_inverse": self._since_inverse,
                             "seconds": self.seconds, "min_factor": self.min_factor,
                             "counts": dict(self.counts)},
                "bounds": {"smax2": ctl.smax2, "sinv2": ctl.sinv2,
                           "mnorm": ctl.mnorm},
                "estimates": dict(self.estimates),
                "vectors": {"x_max": vec(self._x_max), "X": vec(self._X)}}

    @classmethod
    def from_state(cls, dtype, state, st):
        knobs = {k: v for k, v in state.get("knobs", {}).items() if k in cls._KNOBS}
        self = cls(dtype, **knobs)
        c = state.get("counters", {})
        self.steps = int(c.get("steps", 0))
        self.steps_since_renormalization = int(c.get("steps_since_renormalization", 0))
        self._since_check = int(c.get("since_check", 0))
        self._since_inverse = int(c.get("since_inverse", 0))
        self.seconds = float(c.get("seconds", 0.0))
        self.min_factor = float(c.get("min_factor", 1.0))
        self.counts.update({k: int(v) for k, v in c.get("counts", {}).items()
                            if k in self.counts})
        self.estimates.update({k: float(v) for k, v in state.get("estimates", {}).items()
                               if k in self.estimates})
        vecs = state.get("vectors", {})
        if vecs.get("x_max") is not None and vecs.get("X") is not None:
            self._x_max = np.array(vecs["x_max"], dtype=np.float64)
            self._X = np.array(vecs["X"], dtype=np.float64)
        self.start(st)
        b = state.get("bounds")
        if b is not None:
            self.ctl.smax2 = float(b["smax2"])
            self.ctl.sinv2 = float(b["sinv2"])
            self.ctl.mnorm = float(b["mnorm"])
        return self

    def report(self, st):
        """Fresh estimates and the counts, without changing anything."""
        st.check_finite()
        est = self._estimate(st, iterations=8, store=False)
        out = {k: v for k, v in est.items() if not k.startswith("_")}
        out.update(steps=self.steps,
                   steps_since_renormalization=self.steps_since_renormalization,
                   min_abs_factor=self.min_factor,
                   control_seconds=self.seconds,
                   **{f"n_{k}": v for k, v in self.counts.items()})
        return out


def estimate_numpy(U, Uinv, x, X, iterations):
    """The estimates of a check in NumPy (the reference of the compiled
    ``_core.Arrays.estimate``, which the tests compare with it): returns
    (sigma_max, inverse error, theta, x, X) from the warm vector x and
    basis X (d x kw), after ``iterations`` rounds; theta holds 1 / sigma^2
    of U's weak directions (descending), X's columns those directions."""
    U = U.astype(np.float64)
    Ui = Uinv.astype(np.float64)
    for _ in range(iterations):
        y = U.T @ x
        x = _unit(U @ y)
        X = np.linalg.qr(Ui.T @ (Ui @ X))[0]
    smax = float(np.linalg.norm(U.T @ x))
    Y = Ui @ X
    theta, R = np.linalg.eigh(Y.T @ Y)           # ascending: 1 / sigma^2
    X = X @ R[:, ::-1]                            # weakest first
    probe = U @ Y @ R[:, ::-1] - X
    inv_err = float(np.sqrt((probe * probe).sum(0).max()))
    return smax, inv_err, theta[::-1].copy(), x, X


def _sym_norm(st):
    """||M||_F (>= ||M||_2)."""
    return st.kernel.m_norm()


def _inverse_norm2(st):
    """||Uinv||_2^2 (exact, by SVD: used at set-up only)."""
    Ui = st.Uinv.astype(np.float64)
    return float(np.linalg.norm(Ui, 2)) ** 2 if Ui.size else 1.0


def _unit(x):
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def _skipped(action):
    """Warn that a correction of the state was skipped because its results
    would leave the representable range (the state stays exact; its
    conditioning is what degrades); returns False."""
    warnings.warn(f"fastsparse: {action} of the factored state was skipped: "
                  "its results would leave the range of the layer's dtype "
                  "(the weights' scale is extreme; precision degrades)",
                  RuntimeWarning, stacklevel=3)
    return False
