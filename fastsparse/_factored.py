"""The factored output layer: exact SGD in O(d^2 + K d) per example."""
import numpy as np

from . import _core
from ._base import (OutputLayerBase, _CHUNK_ROWS, check_initial_weights,
                    random_weights)
from ._validation import check_dtype, check_size

_S = _core.Status
_EMPTY_PARAMS = np.zeros(0, dtype=np.float64)


class FactoredOutputLayer(OutputLayerBase):
    """Output layer ``o = W h`` with very large D, trained exactly in O(d^2).

    Implements Vincent, de Brebisson and Bouthillier (NIPS 2015): the
    weights are kept factored as ``W = V U`` with ``V`` (D x d) and ``U``
    (d x d), together with ``U^{-1}`` and ``Q = W^T W``.  An SGD step with a
    K-sparse target then costs O(d^2 + K d) instead of O(D d): it updates U
    and its inverse by a rank-one (online) or rank-m (minibatch, Woodbury)
    correction, Q by a symmetric rank-two update and only the K target rows
    of V.  The losses, gradients and weights are those of the naive dense
    layer (:class:`fastsparse.NaiveOutputLayer`) to floating-point rounding.

    Loss: squared error ``L = ||W h - y||^2`` per example.

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

    Attributes
    ----------
    n_outputs, n_hidden : int
    dtype : numpy.dtype
    min_abs_r : float
        A step whose ``r = 1 - 2 lr ||h||^2`` (the factor by which it scales
        U along h) has ``|r| < min_abs_r`` is refused: U would become
        (nearly) singular.  Default 1e-3.

    Notes
    -----
    Building the layer costs one O(D d^2) pass (Q = W^T W); so do
    :meth:`weights` and :meth:`outputs` over all rows.  A step never does.
    """

    min_abs_r = 1e-3

    def __init__(self, n_outputs, n_hidden, *, dtype=np.float32, seed=None,
                 init_scale=None):
        dtype = check_dtype(dtype)
        n_outputs = check_size(n_outputs, "n_outputs")
        n_hidden = check_size(n_hidden, "n_hidden")
        self._init(random_weights(n_outputs, n_hidden, dtype, seed, init_scale))

    @classmethod
    def from_weights(cls, W, dtype=None):
        """A layer whose weights are a copy of ``W``.

        Parameters
        ----------
        W : array_like of shape (n_outputs, n_hidden)
        dtype : {None, np.float32, np.float64}
            Default: W's dtype (which must then be float32 or float64).

        Returns
        -------
        FactoredOutputLayer
            With ``V = W`` (copied), ``U = I``.
        """
        W, _ = check_initial_weights(W, dtype)
        self = cls.__new__(cls)
        self._init(W)
        return self

    def _init(self, V):
        self.n_outputs, self.n_hidden = V.shape
        self.dtype = V.dtype
        d = self.n_hidden
        self._V = V
        self._U = np.eye(d, dtype=self.dtype)
        self._Uinv = np.eye(d, dtype=self.dtype)
        self._Q = _gram(V)
        # omega and wbar are only kept by losses that use s = sum(o)
        self._omega = np.zeros(0, dtype=self.dtype)
        self._wbar = np.zeros(0, dtype=self.dtype)
        self._loss_kind = int(_core.LossKind.LOSS_SQUARED)

    # -------------------------------------------------------------- state
    def weights(self):
        """The dense weights ``W = V U``, shape (n_outputs, n_hidden).

        Costs O(D d^2) (computed in chunks of rows); meant for checks and
        export, not for the training loop.
        """
        W = np.empty_like(self._V)
        for start in range(0, self.n_outputs, _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            np.matmul(self._V[sl], self._U, out=W[sl])
        if self._omega.size:
            W += self._omega
        return W

    def _outputs(self, H, rows):
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

    # --------------------------------------------------------------- step
    def _step(self, H, tg, lr, mode):
        m = H.shape[0]
        loss, grad = self._empty_result(m)
        if m == 0:
            return loss, grad
        if lr > 0:
            self._check_r(H, lr)
        kernel = _core.online_step if mode == "online" else _core.batch_step
        status, bad, bad_r = kernel(
            self._V, self._U, self._Uinv, self._Q, self._omega, self._wbar,
            H, tg.indptr, tg.indices, tg.values, lr, self._loss_kind,
            _EMPTY_PARAMS, self.min_abs_r, loss, grad)
        if status != _S.STATUS_OK:
            self._raise_status(status, bad, bad_r, lr, mode)
        return loss, grad

    def _check_r(self, H, lr):
        # Squared error: dL/dq = 1, so r = 1 - 2 lr ||h||^2 is known before
        # the step and a refused step changes nothing, in either mode.
        hh = np.einsum("ij,ij->i", H, H, dtype=np.float64)
        r = 1.0 - 2.0 * lr * hh
        small = np.flatnonzero(np.abs(r) < self.min_abs_r)
        if small.size:
            i = int(small[0])
            raise ValueError(
                f"step refused: example {i} has r = 1 - 2 lr ||h||^2 = "
                f"{r[i]:.3g} (lr = {lr:g}, ||h||^2 = {hh[i]:.6g}), |r| < "
                f"min_abs_r = {self.min_abs_r:g}: the update would make U "
                f"(nearly) singular. Lower lr or rescale h. Nothing was changed.")

    def _raise_status(self, status, bad, bad_r, lr, mode):
        partial = (mode == "online" and bad > 0)
        tail = (f" Examples 0..{bad - 1} of this call were applied before it."
                if partial else " Nothing was changed.")
        if status == _S.STATUS_SMALL_R:
            raise ValueError(
                f"step refused at example {bad}: r = 1 - 2 lr dL/dq ||h||^2 = "
                f"{bad_r:.3g}, |r| < min_abs_r = {self.min_abs_r:g}: U would "
                f"become (nearly) singular. Lower lr or rescale h.{tail}")
        if status == _S.STATUS_SINGULAR:
            raise ValueError(
                "minibatch step refused: the Woodbury system "
                "I - 2 lr diag(dL/dq) H H^T is (nearly) singular "
                f"(lr = {lr:g}). Lower lr, use smaller minibatches or "
                "mode='online'. Nothing was changed.")
        if status == _S.STATUS_LOSS:
            raise FloatingPointError(
                f"the loss or its gradient is not finite at example {bad}.{tail}")
        if status == _S.STATUS_NOMEM:
            raise MemoryError("fastsparse: could not allocate the step's workspace")
        raise RuntimeError(f"fastsparse: unexpected kernel status {status}")


def _gram(V):
    """V^T V, accumulated over chunks of rows in float64 (then cast)."""
    d = V.shape[1]
    Q = np.zeros((d, d), dtype=np.float64)
    for start in range(0, V.shape[0], _CHUNK_ROWS):
        Vc = V[start:start + _CHUNK_ROWS]
        Q += Vc.T @ Vc
    return Q.astype(V.dtype)
