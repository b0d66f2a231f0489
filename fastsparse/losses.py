"""Losses of the spherical family: functions of the outputs o only through
``a = o[targets]``, ``q = ||o||^2`` and ``s = sum(o)``.

The factored layer is exact for every such loss (docs/algorithm.md §2 and
§7).  Built-in losses are evaluated inside the compiled core
(so online mode stays one call without the GIL); the NumPy implementations
here serve the naive layer, user callables and the tests.

Per example, with target values ``y_k`` at indices ``j_k`` and
``Y = sum_k y_k``:

* ``"squared"``: ``L = ||o - y||^2``.
* ``"spherical_softmax"`` (eps > 0): ``p_j = (o_j^2 + eps) / (q + D eps)``,
  ``L = -sum_k y_k log(a_k^2 + eps) + Y log(q + D eps)``.
* ``"taylor_softmax"``: ``f(o) = 1 + o + o^2/2``, ``p_j = f(o_j) / (D + s + q/2)``,
  ``L = -sum_k y_k log f(a_k) + Y log(D + s + q/2)``.
* ``"z_loss"`` (alpha, beta > 0; exactly one target per example):
  ``mu = s/D``, ``sigma^2 = q/D - mu^2``, ``z = (a - mu)/sigma``,
  ``L = y softplus(alpha (beta - z)) / alpha``.
"""
import numpy as np

from ._core import fs_loss_kind as _kind
from ._validation import check_distribution, check_real

__all__ = ["Loss", "SquaredError", "SphericalSoftmax", "TaylorSoftmax",
           "ZLoss", "CallableLoss", "get_loss"]

# the compiled implementations' ids (src_c/fs_loss.h)
_SQUARED, _SPHERICAL, _TAYLOR, _ZLOSS = (
    int(_kind.FS_LOSS_SQUARED), int(_kind.FS_LOSS_SPHERICAL),
    int(_kind.FS_LOSS_TAYLOR), int(_kind.FS_LOSS_ZLOSS))


def _ns(x):
    """The array library of ``x``: numpy, or torch for a tensor."""
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    return np


class Loss:
    """A loss of the spherical family (base class).

    Attributes
    ----------
    name : str
    uses_s : bool
        Whether the loss depends on s = sum(o); the factored layer then
        keeps the shift omega and the column sums wbar.
    online : bool
        Whether it can be used in online mode.
    has_proba : bool
        Whether it defines output probabilities (``proba``).
    """

    name = None
    kind = None          # id of the compiled implementation, None if none
    uses_s = False
    online = True
    has_proba = False

    @property
    def params(self):
        """Parameters passed to the compiled core, float64 (eps, alpha, beta)."""
        return np.zeros(3)

    def check_targets(self, targets):
        """Refuse targets the loss is not defined for (before any change)."""

    def gq_bound(self, ysum, n_outputs):
        """Upper bound of dL/dq per example, from the target sums alone,
        or None when there is none.  Used to prove that no online step can
        make U singular before running it."""
        return None

    def evaluate(self, a, y, q, s, n_outputs):
        """(L, dL/da, dL/dq, dL/ds) of one example (NumPy, float64)."""
        raise NotImplementedError

    def values(self, a, q, s, y, n_outputs):
        """Per-example losses (m,) from the statistics of a minibatch: ``a``
        and ``y`` (m, K) (``y`` the target values, duplicates merged),
        ``q`` and ``s`` (m,).  Written once for every array library with
        NumPy's function names (NumPy arrays or torch tensors; with torch
        it is differentiable); :meth:`evaluate` and the compiled losses are
        tested against it."""
        raise NotImplementedError

    def proba(self, o, q, s, n_outputs):
        """Probabilities of outputs ``o`` (m, n) given q, s (m,)."""
        raise NotImplementedError

    def prior_bias(self, p, uniform=0.05):
        """An output bias that starts the layer at the distribution ``p``.

        With W = 0 every output is the bias, whatever the input: this bias
        makes that model ``p`` mixed with a little of the uniform
        distribution, ``(1 - uniform) p + uniform / D``, for the losses that
        define probabilities (spherical and Taylor softmax), and ``p``
        itself for the squared error (its minimiser).  For the z-loss, which
        only ranks the outputs, it orders them by ``p`` (the standardised
        ``log p``).  Starting from the unigram distribution of the targets
        is what a language model learns first; measured on text
        (``bench/compare_quality.py``), it is the spherical softmax's
        largest lever (README, "When to use fastsparse").

        Parameters
        ----------
        p : array_like of shape (n_outputs,)
            Nonnegative weights (e.g. target counts), normalised here.
        uniform : float in (0, 1), default 0.05
            Weight of the uniform distribution in the mixture (every output
            keeps a nonzero probability).

        Returns
        -------
        ndarray of float64, shape (n_outputs,)
            Pass it as ``bias=`` to the layer's constructor or
            ``from_weights``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastsparse.losses import SphericalSoftmax
        >>> loss = SphericalSoftmax(eps=0.1)
        >>> b = loss.prior_bias([6, 3, 1])
        >>> q = (b * b).sum()
        >>> np.round(loss.proba(b[None], np.array([q]), None, 3), 4)
        array([[0.5867, 0.3017, 0.1117]])
        """
        p = check_distribution(p)
        uniform = check_real(uniform, "uniform", 0, 1, open_low=True, open_high=True)
        return self._prior_bias(p, (1 - uniform) * p + uniform / p.size, uniform)

    def _prior_bias(self, p, mixed, uniform):
        raise NotImplementedError(f"{type(self).__name__} defines no prior bias")

    def __repr__(self):
        return f"{type(self).__name__}()"


class SquaredError(Loss):
    """``L = ||o - y||^2`` (the paper's case; dL/dq = 1)."""

    name = "squared"
    kind = _SQUARED

    def gq_bound(self, ysum, n_outputs):
        return np.ones_like(ysum)

    def evaluate(self, a, y, q, s, n_outputs):
        return q - 2 * (y @ a) + y @ y, -2 * y, 1.0, 0.0

    def values(self, a, q, s, y, n_outputs):         # ||o - y||^2
        return q - 2 * (y * a).sum(1) + (y * y).sum(1)

    def _prior_bias(self, p, mixed, uniform):
        return p                    # E[onehot(y)] = p minimises E||o - y||^2


class SphericalSoftmax(Loss):
    """Spherical softmax, ``p_j = (o_j^2 + eps) / (q + D eps)``.

    Parameters
    ----------
    eps : float > 0, default 1e-2
    """

    name = "spherical_softmax"
    kind = _SPHERICAL
    has_proba = True

    def __init__(self, eps=1e-2):
        self.eps = check_real(eps, "eps", 0, open_low=True)

    @property
    def params(self):
        return np.array([self.eps, 0.0, 0.0])

    def gq_bound(self, ysum, n_outputs):
        # dL/dq = Y / (q + D eps) <= |Y| / (D eps)
        return np.abs(ysum) / (n_outputs * self.eps)

    def evaluate(self, a, y, q, s, n_outputs):
        Z = q + n_outputs * self.eps
        L = -(y @ np.log(a * a + self.eps)) + y.sum() * np.log(Z)
        return L, -2 * y * a / (a * a + self.eps), y.sum() / Z, 0.0

    def values(self, a, q, s, y, n_outputs):
        xp = _ns(a)
        return (-(y * xp.log(a * a + self.eps)).sum(1)
                + y.sum(1) * xp.log(q + n_outputs * self.eps))

    def proba(self, o, q, s, n_outputs):
        return (o * o + self.eps) / (q + n_outputs * self.eps)[:, None]

    def _prior_bias(self, p, mixed, uniform):
        # b_j^2 = c^2 p_j with c^2 = (1 - u) / u * D eps: then
        # (b_j^2 + eps) / (||b||^2 + D eps) = (1 - u) p_j + u / D
        return np.sqrt((1 - uniform) / uniform * p.size * self.eps * p)

    def __repr__(self):
        return f"SphericalSoftmax(eps={self.eps!r})"


class TaylorSoftmax(Loss):
    """Second-order Taylor softmax, ``p_j = f(o_j) / sum_j f(o_j)`` with
    ``f(o) = 1 + o + o^2/2`` (so ``sum_j f(o_j) = D + s + q/2``)."""

    name = "taylor_softmax"
    kind = _TAYLOR
    uses_s = True
    has_proba = True

    def gq_bound(self, ysum, n_outputs):
        # f >= 1/2, so D + s + q/2 >= D/2 and dL/dq = Y / (2 (D + s + q/2)) <= |Y| / D
        return np.abs(ysum) / n_outputs

    def evaluate(self, a, y, q, s, n_outputs):
        f = 1 + a + 0.5 * a * a
        Z = n_outputs + s + 0.5 * q
        L = -(y @ np.log(f)) + y.sum() * np.log(Z)
        return L, -y * (1 + a) / f, y.sum() / (2 * Z), y.sum() / Z

    def values(self, a, q, s, y, n_outputs):
        xp = _ns(a)
        f = 1 + a + 0.5 * a * a
        return -(y * xp.log(f)).sum(1) + y.sum(1) * xp.log(n_outputs + s + 0.5 * q)

    def proba(self, o, q, s, n_outputs):
        return (1 + o + 0.5 * o * o) / (n_outputs + s + 0.5 * q)[:, None]

    def _prior_bias(self, p, mixed, uniform):
        # f(b_j) = C mixed_j with C = D / (2 u), so that every f >= 1/2
        # (f's minimum, at o = -1): b_j = -1 + sqrt(2 f(b_j) - 1)
        f = p.size / (2 * uniform) * mixed
        return -1.0 + np.sqrt(np.maximum(2 * f - 1, 0.0))


class ZLoss(Loss):
    """Z-loss (de Brebisson and Vincent, 2016): a softplus of the target
    output's z-score among all D outputs.  Exactly one target per example;
    its value weights the loss (1 for classification).

    Parameters
    ----------
    alpha, beta : float > 0, default 0.1 and 10
    """

    name = "z_loss"
    kind = _ZLOSS
    uses_s = True

    def __init__(self, alpha=0.1, beta=10.0):
        self.alpha = check_real(alpha, "alpha", 0, open_low=True)
        self.beta = check_real(beta, "beta", 0, open_low=True)

    @property
    def params(self):
        return np.array([0.0, self.alpha, self.beta])

    def check_targets(self, targets):
        K = np.diff(targets.indptr)
        if K.size and (K.min() != 1 or K.max() != 1):
            i = int(np.flatnonzero(K != 1)[0])
            raise ValueError(f"targets: the z_loss needs exactly one target per "
                             f"example; example {i} has {int(K[i])} (after "
                             f"merging duplicate indices)")

    def evaluate(self, a, y, q, s, n_outputs):
        D = n_outputs
        mu = s / D
        var = q / D - mu * mu
        sigma = np.sqrt(var)
        z = (a[0] - mu) / sigma
        x = self.alpha * (self.beta - z)
        L = y[0] * np.logaddexp(0.0, x) / self.alpha
        dz = -y[0] / (1 + np.exp(-x))           # dL/dz = -y sigmoid(x)
        return (L, np.array([dz / sigma]), -dz * z / (2 * D * var),
                dz * (z * mu / sigma - 1) / (D * sigma))

    def values(self, a, q, s, y, n_outputs):
        xp = _ns(a)
        mu = s / n_outputs
        sigma = xp.sqrt(q / n_outputs - mu * mu)
        z = (a - mu[:, None]) / sigma[:, None]
        x = self.alpha * (self.beta - z)
        return (y * xp.logaddexp(xp.zeros_like(x), x)).sum(1) / self.alpha

    def _prior_bias(self, p, mixed, uniform):
        # z-scores are invariant to shift and scale: the standardised log of
        # the mixture orders the outputs by p (all equal: zeros)
        lp = np.log(mixed)
        sd = lp.std()
        return (lp - lp.mean()) / sd if sd > 0 else np.zeros_like(lp)

    def __repr__(self):
        return f"ZLoss(alpha={self.alpha!r}, beta={self.beta!r})"


class CallableLoss(Loss):
    """A user loss ``f(a, q, s, values) -> (loss, grad_a, grad_q, grad_s)``.

    Vectorised over the minibatch: ``a`` and ``values`` have shape (m, K)
    (every example must have the same number K of distinct targets), ``q``
    and ``s`` shape (m,); it returns per-example losses (m,), dL/da (m, K),
    dL/dq (m,) and dL/ds (m,).  Minibatch mode only.

    What it returns is checked before the layer uses it: a tuple of four
    arrays of those shapes, of real numbers (not complex, object or bool),
    finite, and still finite once cast to the layer's dtype (``dtype``);
    a failed check raises a ValueError or TypeError that names the callable,
    and the layer is left unchanged.  It must not call its own layer (that
    raises RuntimeError).
    """

    name = "callable"
    uses_s = True
    online = False

    def __init__(self, func, dtype=np.float64):
        if not callable(func):
            raise TypeError(f"loss must be a name, a Loss or a callable, got "
                            f"{type(func).__name__}")
        self.func = func
        self.dtype = np.dtype(dtype)

    def for_dtype(self, dtype):
        """This loss, checking its results against a layer of ``dtype``."""
        dtype = np.dtype(dtype)
        return self if dtype == self.dtype else CallableLoss(self.func, dtype)

    def check_targets(self, targets):
        K = np.diff(targets.indptr)
        if K.size and K.min() != K.max():
            raise ValueError("targets: a callable loss needs the same number of "
                             "distinct targets in every example (got between "
                             f"{int(K.min())} and {int(K.max())})")

    def __call__(self, a, q, s, values):
        """Call the user function and validate what it returns."""
        m, K = a.shape
        out = self.func(a, q, s, values)
        if not (isinstance(out, tuple) and len(out) == 4):
            raise ValueError("the loss callable must return a tuple "
                             "(loss, grad_a, grad_q, grad_s), got "
                             f"{type(out).__name__}")
        res = []
        for name, val, shape in zip(("loss", "grad_a", "grad_q", "grad_s"), out,
                                    ((m,), (m, K), (m,), (m,))):
            arr = np.asarray(val)
            if arr.dtype.kind not in "iuf":
                raise TypeError(f"the loss callable returned {name} of dtype "
                                f"{arr.dtype}; it must return real numbers "
                                "(float or int arrays)")
            arr = arr.astype(np.float64)
            if arr.shape != shape:
                raise ValueError(f"the loss callable returned {name} of shape "
                                 f"{arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"the loss callable returned a non-finite "
                                 f"{name}")
            with np.errstate(over="ignore"):
                cast = arr.astype(self.dtype)
            if not np.isfinite(cast).all():
                raise ValueError(f"the loss callable returned {name} with values "
                                 f"that overflow the layer's dtype "
                                 f"{self.dtype.name} (largest magnitude "
                                 f"{np.abs(arr).max():.3g})")
            res.append(arr)
        return tuple(res)

    def evaluate(self, a, y, q, s, n_outputs):
        L, ga, gq, gs = self(a[None, :], np.array([q]), np.array([s]), y[None, :])
        return L[0], ga[0], gq[0], gs[0]

    def __repr__(self):
        return f"CallableLoss({self.func!r})"


_BY_NAME = {"squared": SquaredError, "spherical_softmax": SphericalSoftmax,
            "taylor_softmax": TaylorSoftmax, "z_loss": ZLoss}


def get_loss(loss):
    """A :class:`Loss` from a name, a Loss instance or a callable.

    Names: ``"squared"``, ``"spherical_softmax"``, ``"taylor_softmax"``,
    ``"z_loss"`` (default parameters; pass e.g. ``SphericalSoftmax(eps=...)``
    for others).

    Examples
    --------
    >>> from fastsparse.losses import get_loss, SphericalSoftmax
    >>> get_loss("spherical_softmax")
    SphericalSoftmax(eps=0.01)
    >>> get_loss(SphericalSoftmax(eps=0.1)).eps
    0.1
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in _BY_NAME:
            raise ValueError(f"unknown loss {loss!r}; expected one of "
                             f"{sorted(_BY_NAME)}, a Loss or a callable")
        return _BY_NAME[loss]()
    return CallableLoss(loss)
