"""The API shared by the factored and the naive output layer.

Both layers validate their input here, once, before any state changes; the
subclasses implement ``_step`` (trusted input) and the state accessors.
"""
import numpy as np

from ._validation import (check_dtype, check_hidden, check_lr, check_mode,
                          check_rows, check_size, parse_targets)

# Rows of V (or W) processed at once by the chunked dense computations
# (weights(), outputs() over all rows): bounds their temporary memory.
_CHUNK_ROWS = 1 << 16


def random_weights(n_outputs, n_hidden, dtype, seed, init_scale):
    """The initial weights both layers draw for the same arguments."""
    rng = np.random.default_rng(seed)
    if init_scale is None:
        init_scale = 1.0 / np.sqrt(n_hidden)
    init_scale = float(init_scale)
    if not np.isfinite(init_scale) or init_scale < 0:
        raise ValueError(f"init_scale must be finite and >= 0, got {init_scale}")
    W = rng.standard_normal((n_outputs, n_hidden), dtype=dtype)
    W *= dtype.type(init_scale)
    return W


def check_initial_weights(W, dtype):
    """Validate user weights for ``from_weights``; returns (W, dtype)."""
    arr = np.asarray(W)
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else None
        if dtype is None:
            raise TypeError(f"W must be a float32 or float64 array (or pass "
                            f"dtype=), got dtype {arr.dtype}")
    dtype = check_dtype(dtype)
    if not (np.issubdtype(arr.dtype, np.floating)
            or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"W must be a real array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"W must have shape (n_outputs, n_hidden), got shape {arr.shape}")
    check_size(arr.shape[0], "n_outputs")
    check_size(arr.shape[1], "n_hidden")
    W = np.array(arr, dtype=dtype, order="C", copy=True)
    if not np.isfinite(W).all():
        raise ValueError("W contains non-finite values (NaN or Inf)")
    return W, dtype


class OutputLayerBase:
    """Shared, validated API; see :class:`fastsparse.FactoredOutputLayer`."""

    n_outputs: int
    n_hidden: int
    dtype: np.dtype

    # ------------------------------------------------------------------ API
    def step(self, H, targets, lr, *, mode="batch"):
        """Compute losses and gradients, then apply one SGD step.

        Parameters
        ----------
        H : array_like of shape (m, n_hidden)
            Hidden activations, one example per row.  float32 and float64
            are accepted; the other float dtype than the layer's is cast.
        targets : int array (m,), tuple (indices, values), or scipy.sparse
            The sparse targets: an int array gives one target of value 1
            per example (the language-model case); ``(indices, values)``
            are two (m, K) arrays (``values=None`` means ones); a sparse
            matrix of shape (m, n_outputs) allows a different number of
            targets per example.  Duplicate indices in one example are
            summed, as scipy.sparse does.
        lr : float
            Learning rate, finite and >= 0.  The minibatch objective is the
            *sum* of the per-example losses (not their mean): divide lr by m
            for mean semantics.
        mode : {"batch", "online"}, default "batch"
            ``"batch"``: every example sees the current weights and one
            update with the summed gradient is applied.  ``"online"``: one
            exact update per example, in order; example i sees the weights
            left by examples 0..i-1.

        Returns
        -------
        loss : ndarray of shape (m,)
            Per-example losses, each at the weights that example saw.
        grad_H : ndarray of shape (m, n_hidden)
            dL/dH, each row at the weights that example saw.

        Raises
        ------
        TypeError, ValueError, IndexError
            On invalid input, before anything is modified.
        """
        H, tg = self._check_inputs(H, targets)
        lr = check_lr(lr)
        mode = check_mode(mode)
        return self._step(H, tg, lr, mode)

    def loss_and_grad(self, H, targets):
        """Per-example losses and dL/dH at the current weights, no update.

        Same arguments and results as :meth:`step` without ``lr``/``mode``.
        """
        H, tg = self._check_inputs(H, targets)
        return self._step(H, tg, 0.0, "batch")

    def outputs(self, H, rows=None):
        """Outputs ``o = W h`` for the given output rows.

        Parameters
        ----------
        H : array_like of shape (m, n_hidden)
        rows : int array of shape (n_rows,), optional
            Output indices; all D outputs when omitted (computed in chunks
            of rows so that temporary memory stays bounded; the result
            itself is (m, D)).

        Returns
        -------
        ndarray of shape (m, n_rows) or (m, n_outputs)
        """
        H = check_hidden(H, self.n_hidden, self.dtype)
        if rows is not None:
            rows = check_rows(rows, self.n_outputs)
        return self._outputs(H, rows)

    # ------------------------------------------------------------- helpers
    def _check_inputs(self, H, targets):
        H = check_hidden(H, self.n_hidden, self.dtype)
        tg = parse_targets(targets, H.shape[0], self.n_outputs, self.dtype)
        return H, tg

    def _empty_result(self, m):
        return (np.zeros(m, dtype=self.dtype),
                np.zeros((m, self.n_hidden), dtype=self.dtype))

    def __repr__(self):
        return (f"{type(self).__name__}(n_outputs={self.n_outputs}, "
                f"n_hidden={self.n_hidden}, dtype={self.dtype.name})")
