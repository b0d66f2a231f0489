"""The arrays of a factored layer (docs/algorithm.md §1), in one object.

The layer owns one :class:`FactoredState`; the step kernels get its arrays
through ``FactoredState.kernel``; the numerical-health control
(fastsparse._health) reads and transforms it in place, without knowing the
layer.  Everything here needs the arrays alone.
"""
import numpy as np

from . import _core
from ._threads import single_thread

#: rows of V (or W) processed at once by the O(D d^2) passes and the
#: layers' chunked dense computations (bounded memory)
CHUNK_ROWS = 1 << 16


class FactoredState:
    """``W = V U + 1 omega^T`` with ``Uinv = U^{-1}``, ``M = V^T V`` (its
    upper triangle) and ``sv = V^T 1`` (omega and sv empty when the sums
    are not tracked).  The arrays are updated in place, never replaced:
    ``kernel`` (the step kernels' view of them) keeps their addresses."""

    __slots__ = ("V", "U", "Uinv", "M", "omega", "sv", "kernel")

    def __init__(self, V, U, Uinv, M, omega, sv):
        self.V, self.U, self.Uinv, self.M = V, U, Uinv, M
        self.omega, self.sv = omega, sv
        self.kernel = _core.Arrays(V, U, Uinv, M, omega, sv)

    @classmethod
    def from_weights(cls, V, track_sum):
        """The state of weights V (taken as they are): U = Uinv = I."""
        d, dt = V.shape[1], V.dtype
        return cls(V, np.eye(d, dtype=dt), np.eye(d, dtype=dt), gram(V),
                   np.zeros(d if track_sum else 0, dtype=dt),
                   column_sums(V) if track_sum else np.zeros(0, dtype=dt))

    @property
    def dtype(self):
        return self.V.dtype

    def full_M(self):
        """M as a full symmetric float64 matrix."""
        upper = np.triu(self.M.astype(np.float64))
        return upper + np.triu(upper, 1).T

    def refresh_derived(self):
        """Recompute M and sv from V exactly (O(D d^2))."""
        self.M[...] = gram(self.V)
        if self.sv.size:
            self.sv[...] = column_sums(self.V)

    def check_finite(self):
        """Raise FloatingPointError if the d x d state holds NaN or Inf."""
        name = self.kernel.nonfinite()
        if name is not None:
            raise FloatingPointError(
                f"the factored state holds non-finite values ({name}): the "
                "layer is broken; rebuild it from saved weights")


def gram(V):
    """V^T V, accumulated over chunks of rows in float64 (then cast), on one
    BLAS thread: the same bits whatever the process's thread settings."""
    d = V.shape[1]
    Q = np.zeros((d, d), dtype=np.float64)
    with single_thread():
        for start in range(0, V.shape[0], CHUNK_ROWS):
            Vc = V[start:start + CHUNK_ROWS].astype(np.float64)
            Q += Vc.T @ Vc
    return Q.astype(V.dtype)


def column_sums(V):
    """1^T V accumulated in float64 (then cast)."""
    return V.sum(axis=0, dtype=np.float64).astype(V.dtype)
