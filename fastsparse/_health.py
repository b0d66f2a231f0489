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
  exceeds ``max_cond``, the weakest direction l is lifted by
  ``U <- C U, V <- V C^{-1}``, ``C = I + alpha l l^T`` (W unchanged; one
  fused pass over V, O(D d)); a full re-factorisation ``V <- V U, U <- I``
  (O(D d^2)) only when rank-one corrections do not bring it back;
* the scale of U (which only matters for over/underflow): rescaled by an
  exact power of two when sigma_max leaves ``[2^-scale_exp, 2^scale_exp]``.

Q = W^T W is refreshed exactly only on demand (``layer.refresh()``).
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
    check_every : int, default 64
        Examples between two checks (a check costs about six d x d
        matrix-vector products).  Long online calls are split at this
        granularity so that a check also runs inside them.
    max_cond : float, optional
        Bound on the condition number of U; default 30 in float32 (digits
        are scarce) and 1e4 in float64.
    inverse_tol : float, optional
        Bound on the relative error ``||U Uinv x - x|| / ||x||`` of the
        running inverse; default ``1000 * eps`` of the dtype.
    inverse_every : int, default 100000
        Recompute the inverse at least this often (examples); 0: never
        on schedule.
    scale_exp : int, default 32
        U is rescaled (by a power of two, exactly) when its largest
        singular value leaves ``[2^-scale_exp, 2^scale_exp]``.
    max_renorms : int, default 3
        Rank-one corrections tried in one check before falling back to a
        full re-factorisation.
    """

    def __init__(self, dtype, *, enabled=True, check_every=64, max_cond=None,
                 inverse_tol=None, inverse_every=100_000, scale_exp=32,
                 max_renorms=3):
        eps = float(np.finfo(dtype).eps)
        self.enabled = bool(enabled)
        self.check_every = _positive_int(check_every, "check_every")
        self.max_cond = float(max_cond if max_cond is not None
                              else (30.0 if dtype == np.float32 else 1e4))
        self.inverse_tol = float(inverse_tol if inverse_tol is not None else 1000 * eps)
        self.inverse_every = _positive_int(inverse_every, "inverse_every", allow_zero=True)
        self.scale_exp = _positive_int(scale_exp, "scale_exp")
        self.max_renorms = _positive_int(max_renorms, "max_renorms", allow_zero=True)
        if not self.max_cond > 1:
            raise ValueError(f"max_cond must be > 1, got {self.max_cond}")
        if not self.inverse_tol > 0:
            raise ValueError(f"inverse_tol must be > 0, got {self.inverse_tol}")
        self._since_check = 0
        self._since_inverse = 0
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
        if self.enabled and self._since_check >= self.check_every:
            self.check(layer)

    def examples_to_next_check(self):
        return max(1, self.check_every - self._since_check)

    # --------------------------------------------------------------- check
    def check(self, layer, correct=True):
        """Estimate the health of the state; correct it when needed."""
        t0 = time.perf_counter()
        try:
            self._since_check = 0
            self.counts["checks"] += 1
            _check_finite(layer)
            self._estimate(layer, iterations=2)
            if not correct:
                return
            if (self.estimates["inverse_error"] > self.inverse_tol
                    or (self.inverse_every and self._since_inverse >= self.inverse_every)):
                self.refresh_inverse(layer)
            renorms = 0
            while self.estimates["cond"] > self.max_cond:
                if renorms == self.max_renorms:
                    self.refactorize(layer)
                    break
                # converge the weakest direction before acting on it
                self._estimate(layer, iterations=8)
                if self.estimates["cond"] <= self.max_cond:
                    break
                self._renormalize(layer)
                renorms += 1
                self._estimate(layer, iterations=4)
            smax = self.estimates["sigma_max"]
            if not 2.0 ** -self.scale_exp <= smax <= 2.0 ** self.scale_exp:
                self._rescale(layer)
        finally:
            self.seconds += time.perf_counter() - t0

    def _estimate(self, layer, iterations):
        U, Uinv = layer._U.astype(np.float64), layer._Uinv.astype(np.float64)
        d = U.shape[0]
        if self._x_max is None:
            rng = np.random.default_rng(0)
            self._x_max, self._x_min, self._probe = (
                _unit(rng.standard_normal(d)) for _ in range(3))
        for _ in range(iterations):
            y = U.T @ (U @ self._x_max)
            lam_max = np.linalg.norm(y)
            self._x_max = _unit(y)
            z = Uinv.T @ (Uinv @ self._x_min)   # left singular vectors of U
            lam_min = np.linalg.norm(z)
            self._x_min = _unit(z)
        smax = np.sqrt(lam_max)
        smin = 1.0 / np.sqrt(lam_min)
        err = np.linalg.norm(U @ (Uinv @ self._probe) - self._probe)
        self.estimates.update(sigma_max=float(smax), sigma_min=float(smin),
                              cond=float(smax / smin), inverse_error=float(err))

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
        """Lift U's weakest left singular direction l up to sigma_max:
        U <- C U, Uinv <- Uinv C^{-1}, V <- V C^{-1}, C = I + alpha l l^T."""
        l = self._x_min
        alpha = self.estimates["sigma_max"] / self.estimates["sigma_min"] - 1.0
        beta = alpha / (1.0 + alpha)             # C^{-1} = I - beta l l^T
        dt = layer.dtype.type
        U, Uinv = layer._U, layer._Uinv
        U += dt(alpha) * np.outer(l, l @ U).astype(layer.dtype)
        Uinv -= dt(beta) * np.outer(Uinv @ l, l).astype(layer.dtype)
        _core.rank1_rows_update(layer._V, l.astype(layer.dtype), beta)
        self.counts["renormalizations"] += 1
        self.steps_since_renormalization = 0

    def refactorize(self, layer):
        """Last resort: V <- V U, U <- I, Uinv <- I (O(D d^2))."""
        V, U = layer._V, layer._U
        chunk = 1 << 14
        for start in range(0, V.shape[0], chunk):
            V[start:start + chunk] = V[start:start + chunk] @ U
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
        self.counts["rescales"] += 1
        for key in ("sigma_max", "sigma_min"):
            self.estimates[key] *= 2.0 ** -e

    def report(self):
        out = dict(self.estimates)
        out.update(steps=self.steps,
                   steps_since_renormalization=self.steps_since_renormalization,
                   control_seconds=self.seconds,
                   **{f"n_{k}": v for k, v in self.counts.items()})
        return out


def _unit(x):
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def _positive_int(value, name, allow_zero=False):
    v = int(value)
    if v != value or v < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return v


def _check_finite(layer):
    for name in ("_U", "_Uinv", "_Q", "_omega", "_wbar"):
        arr = getattr(layer, name)
        if not np.isfinite(arr).all():
            raise FloatingPointError(
                f"the factored state holds non-finite values ({name[1:]}): the "
                "layer is broken (a too large learning rate?); rebuild it from "
                "saved weights")
