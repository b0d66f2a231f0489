"""The naive dense output layer: the reference and the baseline."""
import numpy as np
from scipy.linalg import blas

from ._base import (OutputLayerBase, _CHUNK_ROWS, check_initial_weights,
                    random_weights)
from ._validation import check_dtype, check_size


class NaiveOutputLayer(OutputLayerBase):
    """Dense output layer ``o = W h`` trained by plain SGD in O(D d).

    Same API and meaning as :class:`fastsparse.FactoredOutputLayer`, but it
    stores W and computes all D outputs, with BLAS through NumPy/SciPy (a
    gemv/gemm for the outputs, another for the gradient and a rank-one or
    rank-m update of W in place).  It is the reference in the tests and the
    baseline in the benchmarks.  Loss: squared error ``||W h - y||^2``.

    Parameters
    ----------
    n_outputs, n_hidden : int
        D and d.
    dtype : {np.float32, np.float64}
    seed : int or None
        Seed of the initial weights; a factored layer built with the same
        arguments starts from the very same weights.
    init_scale : float, optional
        Standard deviation of the initial weights (default 1/sqrt(n_hidden)).
    """

    def __init__(self, n_outputs, n_hidden, *, dtype=np.float32, seed=None,
                 init_scale=None):
        dtype = check_dtype(dtype)
        n_outputs = check_size(n_outputs, "n_outputs")
        n_hidden = check_size(n_hidden, "n_hidden")
        self._init(random_weights(n_outputs, n_hidden, dtype, seed, init_scale))

    @classmethod
    def from_weights(cls, W, dtype=None):
        """A layer whose weights are a copy of ``W`` (n_outputs, n_hidden)."""
        W, _ = check_initial_weights(W, dtype)
        self = cls.__new__(cls)
        self._init(W)
        return self

    def _init(self, W):
        self._W = W
        self.n_outputs, self.n_hidden = W.shape
        self.dtype = W.dtype
        p = "s" if self.dtype == np.float32 else "d"
        self._gemv = getattr(blas, p + "gemv")
        self._ger = getattr(blas, p + "ger")
        self._gemm = getattr(blas, p + "gemm")

    def weights(self):
        """A copy of the dense weights W, shape (n_outputs, n_hidden)."""
        return self._W.copy()

    def _outputs(self, H, rows):
        if rows is not None:
            return H @ self._W[rows].T
        return H @ self._W.T

    def _step(self, H, tg, lr, mode):
        m = H.shape[0]
        loss, grad = self._empty_result(m)
        if m == 0:
            return loss, grad
        if mode == "online":
            for i in range(m):
                loss[i], grad[i] = self._online_one(H[i], tg.row(i), lr)
            return loss, grad
        # batch: all examples at the current W, one summed update
        O = self._outputs(H, None)                 # (m, D), gemm
        G = O
        G *= 2
        for i in range(m):
            idx, y = tg.row(i)
            G[i, idx] -= 2 * y
        loss[:] = 0.25 * np.einsum("ij,ij->i", G, G)
        grad[:] = G @ self._W                      # gemm
        if lr > 0:
            # W += -lr G^T H, in place on the Fortran view W^T (d x D):
            # W^T += -lr H^T G   (operands passed as transposed views, no copy)
            self._gemm(-lr, H.T, G.T, beta=1.0, c=self._W.T, trans_b=True,
                       overwrite_c=True)
        return loss, grad

    def _online_one(self, h, target, lr):
        idx, y = target
        W = self._W
        # W is C-ordered: hand f2py its Fortran view W^T (no copy) and let
        # the trans flag pick the product.
        g = self._gemv(1.0, W.T, h, trans=True)    # o = W h
        g *= 2
        g[idx] -= 2 * y                            # G = dL/do = 2 (o - y)
        loss = 0.25 * np.dot(g, g)
        grad = self._gemv(1.0, W.T, g)             # W^T G
        if lr > 0:
            # W += -lr G h^T, in place on the Fortran view W^T: W^T += -lr h G^T
            self._ger(-lr, h, g, a=W.T, overwrite_a=True)
        return loss, grad
