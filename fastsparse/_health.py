"""Numerical health of the factored layer (ALGORITHM.md, "Numerical health").

In exact arithmetic ``W = V U`` equals the dense weights forever; in floating
point three things drift.  This module watches them with O(d^2) estimates on
a schedule and corrects them, as rarely as possible:

* the running inverse of U (Sherman-Morrison/Woodbury rounding): a probe
  ``||U (Uinv x) - x||``; recomputed from U by LU when it exceeds
  ``inverse_tol`` or every ``inverse_every`` examples (O(d^3));
* the conditioning of U (each update scales it by r along h, V grows to
  compensate and digits are lost in V U): warm-started power iterations
  estimate its extreme singular values; when ``sigma_max / sigma_min``
  exceeds ``max_cond``, an SVD of U (O(d^3), small next to what follows)
  gives its weak left singular directions L_k, lifted to sigma_max by
  ``U <- C U, V <- V C^{-1}``, ``C = I + L_k diag(alpha) L_k^T`` (W
  unchanged; one fused pass over V, O(D d k)), which also yields an exact
  inverse; a full re-factorisation ``V <- V U, U <- I`` (O(D d^2)) only as a
  last resort, when that does not bring the condition number back;
* the scale of U (which only matters for over/underflow): rescaled by an
  exact power of two when sigma_max leaves ``[2^-scale_exp, 2^scale_exp]``.

M = V^T V (from which W^T W follows) is kept in V's coordinates, where its
rounding stays relative (see fastsparse/_core.pyx); every correction here
transforms it exactly along with V, and ``layer.refresh()`` recomputes it
from V on demand.
"""
import time

import numpy as np

from . import _core

_ACTIONS = ("inverse_refreshes", "renormalizations", "rescales",
            "refactorizations")


class StabilityControl:
    """The knobs and state of the automatic numerical-health control.

    Parameters
    ----------
    enabled : bool, default True
        Whether checks and corrections run automatically after steps.
    check_every : int, default 256
        Largest number of examples between two checks (a check costs six
        d x d matrix-vector products, two of them in float64).  The interval
        starts at 16 and doubles after each calm check; it halves (down to 1)
        while the condition number or the inverse error grows by more than
        the square root of its bound between checks, and grows back when
        they are calm.  Long online calls are split at checks.
    max_cond : float, optional
        Bound on the condition number of U; default 30 in float32 (digits
        are scarce) and 1e4 in float64.
    inverse_tol : float, optional
        Bound on the relative error ``||U Uinv x - x|| / ||x||`` of the
        running inverse; default ``32 * eps`` in float32 (the inverse
        multiplies every update of the target rows of V: 1e-5 was measured
        to let their error grow to 1e-4, 2e-6 kept it at 3e-6) and 1e-12 in
        float64.
    inverse_every : int, default 100000
        Recompute the inverse at least this often (examples); 0: never
        on schedule.
    scale_exp : int, default 32
        U is rescaled (by a power of two, exactly) when its largest
        singular value leaves ``[2^-scale_exp, 2^scale_exp]``.
    max_renorms : int, default 2
        Renormalisations tried in one check before falling back to a full
        re-factorisation.
    max_lift : int, default 16
        Most directions lifted by one renormalisation: all those below
        ``sigma_max / sqrt(max_cond)`` (at least the weakest), so that the
        next one comes as late as possible.
    """

    def __init__(self, dtype, *, enabled=True, check_every=256, max_cond=None,
                 inverse_tol=None, inverse_every=100_000, scale_exp=32,
                 max_renorms=2, max_lift=16):
        eps = float(np.finfo(dtype).eps)
        self.enabled = bool(enabled)
        self.check_every = _positive_int(check_every, "check_every")
        self.max_cond = float(max_cond if max_cond is not None
                              else (30.0 if dtype == np.float32 else 1e4))
        self.inverse_tol = float(inverse_tol if inverse_tol is not None
                                 else (32 * eps if dtype == np.float32 else 1e-12))
        self.inverse_every = _positive_int(inverse_every, "inverse_every", allow_zero=True)
        self.scale_exp = _positive_int(scale_exp, "scale_exp")
        self.max_renorms = _positive_int(max_renorms, "max_renorms", allow_zero=True)
        self.max_lift = min(_positive_int(max_lift, "max_lift"), _core.MAX_RANK)
        if not self.max_cond > 1:
            raise ValueError(f"max_cond must be > 1, got {self.max_cond}")
        if not self.inverse_tol > 0:
            raise ValueError(f"inverse_tol must be > 0, got {self.inverse_tol}")
        self._since_check = 0
        self._since_inverse = 0
        # start short; calm checks double the interval up to check_every
        self._interval = min(16, self.check_every)
        self.steps = 0
        self.steps_since_renormalization = 0
        self.counts = dict.fromkeys(("checks",) + _ACTIONS, 0)
        self.seconds = 0.0
        self.estimates = {"sigma_max": 1.0, "sigma_min": 1.0, "cond": 1.0,
                          "inverse_error": 0.0}
        self._x_max = self._x_min = self._probe = None

    # ------------------------------------------------------------ schedule
    def after_examples(self, layer, n):
        """Count n applied examples; run a check when one is due."""
        self.steps += n
        self.steps_since_renormalization += n
        self._since_check += n
        self._since_inverse += n
        if self.enabled and self._since_check >= self._interval:
            self.check(layer)

    def examples_to_next_check(self):
        return max(1, self._interval - self._since_check)

    # --------------------------------------------------------------- check
    def check(self, layer, correct=True):
        """Estimate the health of the state; correct it when needed."""
        t0 = time.perf_counter()
        try:
            self._since_check = 0
            self.counts["checks"] += 1
            _check_finite(layer)
            before = (self.estimates["cond"], self.estimates["inverse_error"])
            self._estimate(layer, iterations=1)
            if not correct:
                return
            self._adapt_interval(*before)
            if (self.estimates["inverse_error"] > self.inverse_tol
                    or (self.inverse_every and self._since_inverse >= self.inverse_every)):
                self.refresh_inverse(layer)
            renorms = 0
            while self.estimates["cond"] > self.max_cond:
                if renorms == self.max_renorms:
                    self.refactorize(layer)
                    break
                self._renormalize(layer)
                renorms += 1
                self._estimate(layer, iterations=4)
            smax = self.estimates["sigma_max"]
            if not 2.0 ** -self.scale_exp <= smax <= 2.0 ** self.scale_exp:
                self._rescale(layer)
        finally:
            self.seconds += time.perf_counter() - t0

    def _adapt_interval(self, cond_before, inv_before):
        """Check more often while the state degrades fast, less when calm."""
        grow_cond = self.estimates["cond"] / max(cond_before, 1.0)
        grow_inv = (self.estimates["inverse_error"]
                    / max(inv_before, self.inverse_tol / self.max_cond))
        fast = (grow_cond > np.sqrt(self.max_cond)
                or self.estimates["inverse_error"] > self.inverse_tol
                and grow_inv > np.sqrt(self.max_cond))
        if fast:
            self._interval = max(1, self._interval // 2)
        elif grow_cond < self.max_cond ** 0.125 and self._interval < self.check_every:
            self._interval = min(self.check_every, 2 * self._interval)

    def _estimate(self, layer, iterations):
        """Warm-started power iterations for U's extreme singular values
        (in the layer's dtype: estimates), and the inverse-error probe (in
        float64: float32 rounding of the product would be of the order of
        the bound it is compared with)."""
        U, Uinv = layer._U, layer._Uinv
        dt = U.dtype
        if self._x_max is None:
            rng = np.random.default_rng(0)
            self._x_max, self._x_min, self._probe = (
                _unit(rng.standard_normal(U.shape[0])) for _ in range(3))
        x_max = self._x_max.astype(dt)
        x_min = self._x_min.astype(dt)
        for _ in range(iterations):
            y = U.T @ (U @ x_max)
            lam_max = float(np.linalg.norm(y.astype(np.float64)))
            x_max = _unit(y)
            z = Uinv.T @ (Uinv @ x_min)           # left singular vectors of U
            lam_min = float(np.linalg.norm(z.astype(np.float64)))
            x_min = _unit(z)
        self._x_max = x_max.astype(np.float64)
        self._x_min = x_min.astype(np.float64)
        smax = np.sqrt(lam_max)
        smin = 1.0 / np.sqrt(lam_min) if lam_min > 0 else 0.0
        err = np.linalg.norm(U @ (Uinv @ self._probe) - self._probe)
        self.estimates.update(sigma_max=float(smax), sigma_min=float(smin),
                              cond=float(smax / smin) if smin > 0 else np.inf,
                              inverse_error=float(err))

    # ------------------------------------------------------------- actions
    def refresh_inverse(self, layer):
        """Uinv <- U^{-1} by LU in float64 (O(d^3))."""
        A = layer._U.astype(np.float64)
        inv = np.empty_like(A)
        if _core.invert(A, inv) != 0:
            raise FloatingPointError("U is singular: the factored state is broken; "
                                     "rebuild the layer from its weights")
        layer._Uinv[...] = inv
        self._since_inverse = 0
        self.counts["inverse_refreshes"] += 1

    def _renormalize(self, layer):
        """Lift U's weak left singular directions L_k up to sigma_max:
        U <- C U, Uinv <- Uinv C^{-1}, V <- V C^{-1}, M <- C^{-T} M C^{-1},
        sv <- C^{-T} sv with C = I + L_k diag(alpha) L_k^T."""
        Lf, s, Rt = np.linalg.svd(layer._U.astype(np.float64))
        thresh = s[0] / np.sqrt(self.max_cond)
        k = int(np.clip(np.count_nonzero(s < thresh), 1, self.max_lift))
        Lk = Lf[:, -k:]
        beta = 1.0 - s[-k:] / s[0]           # C^{-1} = I - L_k diag(beta) L_k^T
        s_new = s.copy()
        s_new[-k:] = s[0]
        # U' = C U and its inverse, exactly from the SVD
        layer._U[...] = (Lf * s_new) @ Rt
        layer._Uinv[...] = (Rt.T / s_new) @ Lf.T
        Cinv = np.eye(s.size) - (Lk * beta) @ Lk.T
        layer._M[...] = Cinv @ _full(layer._M) @ Cinv
        if layer._sv.size:
            layer._sv[...] = Cinv @ layer._sv.astype(np.float64)
        _core.low_rank_rows_update(layer._V, np.ascontiguousarray(Lk.T, dtype=layer.dtype),
                                   beta.astype(layer.dtype))
        self._since_inverse = 0
        self.counts["renormalizations"] += 1
        self.steps_since_renormalization = 0
        self._x_min = Lf[:, max(0, s.size - k - 1)].copy()  # weakest left alone

    def refactorize(self, layer):
        """Last resort: V <- V U, U <- I, Uinv <- I (O(D d^2))."""
        V, U = layer._V, layer._U
        chunk = 1 << 14
        for start in range(0, V.shape[0], chunk):
            V[start:start + chunk] = V[start:start + chunk] @ U
        U64 = U.astype(np.float64)
        layer._M[...] = U64.T @ _full(layer._M) @ U64
        if layer._sv.size:
            layer._sv[...] = U64.T @ layer._sv.astype(np.float64)
        d = U.shape[0]
        layer._U[...] = np.eye(d, dtype=layer.dtype)
        layer._Uinv[...] = np.eye(d, dtype=layer.dtype)
        self._since_inverse = 0
        self.counts["refactorizations"] += 1
        self.steps_since_renormalization = 0
        self.estimates.update(sigma_max=1.0, sigma_min=1.0, cond=1.0, inverse_error=0.0)

    def _rescale(self, layer):
        """U <- 2^-e U, Uinv <- 2^e Uinv, V <- 2^e V: exact in floating point."""
        e = int(np.round(np.log2(self.estimates["sigma_max"])))
        f = layer.dtype.type(2.0 ** e)
        layer._U *= layer.dtype.type(2.0 ** -e)
        layer._Uinv *= f
        layer._V *= f
        layer._M *= f * f
        layer._sv *= f
        self.counts["rescales"] += 1
        for key in ("sigma_max", "sigma_min"):
            self.estimates[key] *= 2.0 ** -e

    _KNOBS = ("enabled", "check_every", "max_cond", "inverse_tol", "inverse_every",
              "scale_exp", "max_renorms", "max_lift")

    def state(self):
        """Knobs, counters and estimates, JSON-serialisable (checkpoints)."""
        vec = (lambda x: None if x is None else [float(v) for v in x])
        return {"knobs": {k: getattr(self, k) for k in self._KNOBS},
                "counters": {"steps": self.steps,
                             "steps_since_renormalization": self.steps_since_renormalization,
                             "since_check": self._since_check,
                             "since_inverse": self._since_inverse,
                             "interval": self._interval, "seconds": self.seconds,
                             "counts": dict(self.counts)},
                "estimates": dict(self.estimates),
                "vectors": {"x_max": vec(self._x_max), "x_min": vec(self._x_min),
                            "probe": vec(self._probe)}}

    @classmethod
    def from_state(cls, dtype, state):
        self = cls(dtype, **state["knobs"])
        c = state["counters"]
        self.steps = c["steps"]
        self.steps_since_renormalization = c["steps_since_renormalization"]
        self._since_check = c["since_check"]
        self._since_inverse = c["since_inverse"]
        self._interval = c["interval"]
        self.seconds = c["seconds"]
        self.counts.update(c["counts"])
        self.estimates.update(state["estimates"])
        vecs = state["vectors"]
        if vecs["x_max"] is not None:
            self._x_max, self._x_min, self._probe = (
                np.array(vecs[k]) for k in ("x_max", "x_min", "probe"))
        return self

    def report(self):
        out = dict(self.estimates)
        out.update(steps=self.steps,
                   steps_since_renormalization=self.steps_since_renormalization,
                   check_interval=self._interval,
                   control_seconds=self.seconds,
                   **{f"n_{k}": v for k, v in self.counts.items()})
        return out


def _full(S):
    """The symmetric matrix whose upper triangle S holds, in float64."""
    upper = np.triu(S.astype(np.float64))
    return upper + np.triu(upper, 1).T


def _unit(x):
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def _positive_int(value, name, allow_zero=False):
    v = int(value)
    if v != value or v < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return v


def _check_finite(layer):
    # a NaN or Inf anywhere makes the sum non-finite (no temporary array)
    for name in ("_U", "_Uinv", "_M", "_omega", "_sv"):
        arr = getattr(layer, name)
        if not np.isfinite(arr.sum(dtype=np.float64)):
            raise FloatingPointError(
                f"the factored state holds non-finite values ({name[1:]}): the "
                "layer is broken (a too large learning rate?); rebuild it from "
                "saved weights")
