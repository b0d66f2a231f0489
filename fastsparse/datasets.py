"""Synthetic and text-derived data for the output layers.

:class:`ZipfTargets` and :func:`random_hidden` give the synthetic
minibatches of the demo and the benchmarks (targets distributed as word
frequencies, unit-norm hidden vectors) and :func:`default_lr` a learning
rate that is stable on them; :func:`context_windows` turns encoded
documents into the (context, next word) examples of an n-gram language
model, as the examples and ``bench/compare_quality.py`` train.
"""
import math

import numpy as np

from ._validation import check_int, check_real

__all__ = ["ZipfTargets", "context_windows", "default_lr", "random_hidden"]

#: Default learning rate for ||h|| = 1 in online mode: every example scales W
#: along h by r = 1 - 2 lr ||h||^2 = 0.8, far from the near-singular steps.
DEFAULT_LR = 0.02


def default_lr(batch_size, n_hidden, mode):
    """A learning rate that keeps training stable for unit-norm ``h``.

    Online, every example scales W along its h by ``r = 1 - 2 lr``.  A
    minibatch step (sum of the gradients) scales W by ``I - 2 lr H^T H``;
    the largest eigenvalue of ``H H^T`` is about ``(1 + sqrt(m / d))**2`` for
    random unit rows, so lr is lowered to keep ``2 lr lambda_max <= 0.1``
    (a step of SGD on the mean loss of the order of 0.1 / m per example).

    Parameters
    ----------
    batch_size : int
    n_hidden : int
    mode : {"online", "batch"}

    Returns
    -------
    float
    """
    batch_size = check_int(batch_size, "batch_size", low=1)
    n_hidden = check_int(n_hidden, "n_hidden", low=1)
    if mode not in ("online", "batch"):
        raise ValueError(f"mode must be 'online' or 'batch', got {mode!r}")
    if mode == "online" or batch_size == 1:
        return DEFAULT_LR
    lam_max = (1.0 + math.sqrt(batch_size / n_hidden)) ** 2
    return min(DEFAULT_LR, 0.05 / lam_max)


def random_hidden(rng, m, n_hidden, dtype):
    """Random hidden vectors of unit norm, uniformly distributed in direction.

    Parameters
    ----------
    rng : numpy.random.Generator
    m, n_hidden : int
    dtype : numpy dtype

    Returns
    -------
    ndarray of shape (m, n_hidden)
        Normal vectors scaled to ``||h|| = 1``, so that an SGD step with
        learning rate ``lr`` has ``r = 1 - 2 lr`` exactly.
    """
    m = check_int(m, "m", low=0)
    n_hidden = check_int(n_hidden, "n_hidden", low=1)
    H = rng.standard_normal((m, n_hidden))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    return H.astype(dtype)


class ZipfTargets:
    """Zipf-distributed target indices, as word frequencies in a vocabulary.

    Index ``i`` (0-based rank) is drawn with probability proportional to
    ``1 / (i + 1)**exponent``.

    Parameters
    ----------
    n_outputs : int
        D, the number of possible targets.
    exponent : float, default 1.0
    """

    def __init__(self, n_outputs, exponent=1.0):
        self.n_outputs = check_int(n_outputs, "n_outputs", low=1)
        self.exponent = check_real(exponent, "exponent", low=0)
        weights = np.arange(1, self.n_outputs + 1, dtype=np.float64) ** -self.exponent
        self._cdf = np.cumsum(weights)

    def sample(self, rng, m, k=1):
        """Draw targets in a format that the layers' ``step`` accepts.

        Parameters
        ----------
        rng : numpy.random.Generator
        m : int
            Number of examples.
        k : int, default 1
            Targets per example (drawn independently; a repeated index in
            one example is summed by the layers).

        Returns
        -------
        ndarray of shape (m,) or tuple
            An int64 index array when ``k == 1``, else ``(indices, None)``
            with indices of shape (m, k) (``None``: all target values 1).
        """
        m = check_int(m, "m", low=0)
        k = check_int(k, "k", low=1)
        u = rng.random((m, k)) * self._cdf[-1]
        idx = np.searchsorted(self._cdf, u, side="right")
        np.minimum(idx, self.n_outputs - 1, out=idx)
        return idx[:, 0].copy() if k == 1 else (idx, None)


def context_windows(documents, n_context, bos, eos, dtype=np.int64):
    """(context, next token) pairs of every position of every document.

    Each document is preceded by ``n_context`` copies of ``bos`` and
    followed by ``eos``, so that the first tokens have a full context and
    the end of a document is a target too; contexts never cross documents.

    Parameters
    ----------
    documents : iterable of sequence of int
        Token indices, one sequence per document.
    n_context : int
        Number of previous tokens in a context (at least 1).
    bos, eos : int
        Indices of the padding before a document and of its end.
    dtype : numpy dtype, default int64
        Integer type of the contexts (int32 halves their memory).

    Returns
    -------
    X : ndarray of shape (N, n_context)
        Indices of the previous tokens, oldest first.
    Y : ndarray of int64, shape (N,)
        Index of the next token.  ``N`` is the number of tokens plus the
        number of documents.

    Examples
    --------
    >>> X, Y = context_windows([[5, 6]], 2, bos=1, eos=2)
    >>> X.tolist(), Y.tolist()
    ([[1, 1], [1, 5], [5, 6]], [5, 6, 2])
    """
    n_context = check_int(n_context, "n_context", low=1)
    stream, positions = [], []
    for doc in documents:
        start = len(stream) + n_context
        stream.extend([bos] * n_context)
        stream.extend(doc)
        stream.append(eos)
        positions.append(np.arange(start, len(stream)))
    if not positions:
        return np.zeros((0, n_context), dtype), np.zeros(0, np.int64)
    stream = np.array(stream, dtype=dtype)
    pos = np.concatenate(positions)
    X = np.stack([stream[pos - n_context + j] for j in range(n_context)], axis=1)
    return X, stream[pos].astype(np.int64)
