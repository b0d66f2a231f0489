"""The naive dense output layer: the reference and the baseline."""
import numpy as np
from scipy.linalg import blas

from ._base import _COMMON_PARAMS_DOC, OutputLayerBase, check_weights
from ._errors import CheckpointError
from ._threads import locked
from .losses import SquaredError


class NaiveOutputLayer(OutputLayerBase):
    __doc__ = """Dense output layer ``o = W h (+ b)`` trained by plain SGD in O(D d).

    Same API and meaning as :class:`fastsparse.FactoredOutputLayer`, but it
    stores W and computes all D outputs, with BLAS through NumPy/SciPy (a
    gemv/gemm for the outputs, another for the gradient and a rank-one or
    rank-m update of W in place).  It is the reference in the tests and the
    baseline in the benchmarks.  The losses are evaluated on the full output
    vector (squared error directly as ``||o - y||^2``).

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
    """ + _COMMON_PARAMS_DOC + """
    Examples
    --------
    >>> import numpy as np, fastsparse
    >>> naive = fastsparse.NaiveOutputLayer(1000, 8, seed=0)
    >>> loss, grad_H = naive.step(np.ones((2, 8)) / 8, np.array([0, 5]), lr=0.1)
    >>> naive.weights().shape
    (1000, 8)
    """

    def _setup(self, W, b, loss, track_sum):
        super()._setup(W, b, loss, track_sum)
        self._W = W
        self._b = b
        p = "s" if self.dtype == np.float32 else "d"
        self._gemv = getattr(blas, p + "gemv")
        self._ger = getattr(blas, p + "ger")
        self._gemm = getattr(blas, p + "gemm")

    def _checkpoint_meta(self):
        return {}

    def _checkpoint_arrays(self):
        out = {"W": self._W}
        if self._b is not None:
            out["b"] = self._b
        return out

    @classmethod
    def _checkpoint_shapes(cls, n_outputs, n_hidden, has_bias, track_sum):
        shapes = {"W": (n_outputs, n_hidden)}
        if has_bias:
            shapes["b"] = (n_outputs,)
        return shapes

    def _restore_checkpoint(self, path, meta, arrays):
        W, b = arrays["W"], arrays.get("b")
        try:
            check_weights(W, b)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        self._setup(W, b, self.loss, self.track_sum)

    @locked
    def weights(self):
        """A copy of the dense weights W, shape (n_outputs, n_hidden)."""
        return self._W.copy()

    def _weight_rows(self, rows):
        return self._W[rows]

    @locked
    def bias(self):
        """A copy of the output bias b (n_outputs,), or None without bias."""
        return None if self._b is None else self._b.copy()

    def _outputs(self, H, rows):
        if rows is not None:
            O = H @ self._W[rows].T
            return O + self._b[rows] if self._b is not None else O
        O = H @ self._W.T                           # gemm
        if self._b is not None:
            O += self._b
        return O

    # ------------------------------------------------------------ compute
    def _forward(self, H, indptr, indices):
        O = self._outputs(H, None).astype(np.float64)
        rows = np.repeat(np.arange(H.shape[0]), np.diff(indptr))
        return (O[rows, indices].astype(self.dtype), (O * O).sum(axis=1),
                O.sum(axis=1))

    def _loss_grad(self, o, idx, y):
        """Loss and dL/do of one example (o is overwritten by dL/do)."""
        if isinstance(self.loss, SquaredError):
            o[idx] -= y                              # o - y
            L = np.dot(o, o)
            o *= 2
            return L, o
        L, ga, gq, gs = self.loss.evaluate(
            o[idx].astype(np.float64), y.astype(np.float64),
            float(np.dot(o, o)), float(o.sum(dtype=np.float64)), self.n_outputs)
        a_grad = ga.astype(o.dtype)
        o *= o.dtype.type(2 * gq)
        o += o.dtype.type(gs)
        o[idx] += a_grad
        return L, o

    def _step(self, H, tg, lr, mode, wd):
        m = H.shape[0]
        loss = np.empty(m, dtype=self.dtype)
        grad = np.empty((m, self.n_hidden), dtype=self.dtype)
        if mode == "online":
            for i in range(m):
                idx, y = tg.row(i)
                o = self._outputs(H[i:i + 1], None)[0]
                loss[i], G = self._loss_grad(o, idx, y)
                grad[i] = self._gemv(1.0, self._W.T, G)      # W^T G
                if lr > 0:
                    self._update(H[i:i + 1], G[None, :], lr, wd)
            return loss, grad
        O = self._outputs(H, None)                   # (m, D): all outputs
        if self.loss.kind is None:                   # a callable, vectorised
            a, q, s = self._forward(H, tg.indptr, tg.indices)
            K = tg.indices.shape[0] // m
            L, ga, gq, gs = self.loss(a.reshape(m, K).astype(np.float64), q, s,
                                      tg.values.reshape(m, K).astype(np.float64))
            loss[:] = L
            G = self._dense_grad(O, tg, ga.ravel(), gq, gs)
        else:
            for i in range(m):
                idx, y = tg.row(i)
                loss[i], _ = self._loss_grad(O[i], idx, y)   # O[i] <- dL/do
            G = O
        return loss, self._apply(H, G, lr, wd)

    def _backward(self, H, tg, gq, gs, lr, wd):
        O = self._outputs(H, None)
        return self._apply(H, self._dense_grad(O, tg, tg.values, gq, gs), lr, wd)

    def _dense_grad(self, O, tg, ga, gq, gs):
        """G = 2 diag(gq) O + gs 1^T + Ydot, in place of O."""
        O *= (2 * gq).astype(self.dtype)[:, None]
        O += gs.astype(self.dtype)[:, None]
        rows = np.repeat(np.arange(O.shape[0]), np.diff(tg.indptr))
        np.add.at(O, (rows, tg.indices), np.asarray(ga, dtype=self.dtype))
        return O

    def _apply(self, H, G, lr, wd):
        grad = G @ self._W                           # gemm
        if lr > 0:
            self._update(H, G, lr, wd)
        return grad

    def _update(self, H, G, lr, wd):
        """W <- (1 - lr wd) W - lr G^T H (b likewise), in place."""
        if wd:
            rho = self.dtype.type(1.0 - lr * wd)
            self._W *= rho
            if self._b is not None:
                self._b *= rho
        # W is C-ordered: BLAS gets its Fortran view W^T (D x d -> d x D),
        # W^T += -lr H^T G, with the operands passed as transposed views.
        if H.shape[0] == 1:
            self._ger(-lr, H[0], G[0], a=self._W.T, overwrite_a=True)
        else:
            self._gemm(-lr, H.T, G.T, beta=1.0, c=self._W.T, trans_b=True,
                       overwrite_c=True)
        if self._b is not None:
            self._b -= self.dtype.type(lr) * G.sum(axis=0)
