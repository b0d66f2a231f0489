"""Validation of user input, done once at the Python boundary.

Every function here either returns arrays that the compiled kernels can
trust (right dtype, C-contiguous, shapes consistent, indices in range,
values finite) or raises before anything is modified.
"""
import numbers
import operator

import numpy as np
import scipy.sparse as sp

__all__ = ["check_dtype", "check_hidden", "check_lr", "check_mode",
           "check_rows", "parse_targets", "Targets"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INT32_MAX = np.iinfo(np.int32).max


def check_dtype(dtype):
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_size(value, name):
    """A positive integer that BLAS (32-bit int dimensions) can index."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    if n > _INT32_MAX:
        raise ValueError(f"{name} must be <= {_INT32_MAX} (BLAS uses 32-bit "
                         f"dimensions), got {n}")
    return n


def _as_float_array(x, name, dtype):
    """``x`` as a C-contiguous array of ``dtype``.

    float32 and float64 inputs are accepted, the other one is cast
    (documented); anything else (integers, float16, complex, objects) is
    refused rather than silently converted.
    """
    arr = np.asarray(x)
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, "
                        f"got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_finite(arr, name):
    if not np.isfinite(arr).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} contains a non-finite value (NaN or Inf, "
                         f"possibly from overflow when cast to {arr.dtype}) "
                         f"at index {where if len(where) > 1 else where[0]}")


def check_hidden(H, n_hidden, dtype):
    """H as a C-contiguous (m, n_hidden) array of ``dtype``, all finite."""
    arr = _as_float_array(H, "H", dtype)
    if arr.ndim != 2 or arr.shape[1] != n_hidden:
        hint = " (for one example use H[None, :])" if arr.ndim == 1 else ""
        raise ValueError(f"H must have shape (m, n_hidden) = (m, {n_hidden}), "
                         f"got shape {arr.shape}{hint}")
    _check_finite(arr, "H")
    return arr


def check_lr(lr):
    """lr as a finite float >= 0."""
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real):
        if isinstance(lr, np.ndarray) and lr.ndim == 0 and \
                np.issubdtype(lr.dtype, np.number):
            lr = lr.item()
        else:
            raise TypeError(f"lr must be a real number, got {type(lr).__name__}")
    lr = float(lr)
    if not np.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return lr


def check_weight_decay(wd, lr):
    """Weight decay as a finite float >= 0 with lr * wd < 1."""
    try:
        wd = check_lr(wd)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("lr", "weight_decay", 1)) from None
    if lr * wd >= 1:
        raise ValueError(f"lr * weight_decay must be < 1 (it scales W by "
                         f"1 - lr * weight_decay), got {lr * wd:g}")
    return wd


def check_mode(mode):
    if mode not in ("batch", "online"):
        raise ValueError(f"mode must be 'batch' or 'online', got {mode!r}")
    return mode


def _check_indices(idx, n_outputs, name):
    if idx.size and (idx.min() < 0 or idx.max() >= n_outputs):
        bad = idx[(idx < 0) | (idx >= n_outputs)].flat[0]
        raise IndexError(f"{name}: index {int(bad)} is out of range "
                         f"[0, {n_outputs})")


def _as_index_array(x, name):
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def check_rows(rows, n_outputs):
    """Output rows as a 1-D int64 array in [0, n_outputs)."""
    arr = _as_index_array(rows, "rows")
    if arr.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {arr.shape}")
    _check_indices(arr, n_outputs, "rows")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_index_matrix(indices, m, n_outputs, name="indices"):
    """Indices of shape (m, K), integers in [0, n_outputs), as int64."""
    idx = _as_index_array(indices, name)
    if idx.ndim != 2 or idx.shape[0] != m:
        raise ValueError(f"{name} must have shape (m, K) = ({m}, K), "
                         f"got {idx.shape}")
    _check_indices(idx, n_outputs, name)
    return np.ascontiguousarray(idx, dtype=np.int64)


def check_vector(x, m, name):
    """A finite float64 vector of shape (m,)."""
    arr = _as_float_array(x, name, np.float64)
    if arr.shape != (m,):
        raise ValueError(f"{name} must have shape (m,) = ({m},), got {arr.shape}")
    _check_finite(arr, name)
    return arr


class Targets:
    """Sparse targets in CSR form, as the kernels take them.

    Attributes
    ----------
    indptr : ndarray of int64, shape (m + 1,)
    indices : ndarray of int64, shape (nnz,)
        Sorted and distinct within each example.
    values : ndarray of the layer's dtype, shape (nnz,)
    """

    __slots__ = ("indptr", "indices", "values")

    def __init__(self, indptr, indices, values):
        self.indptr = indptr
        self.indices = indices
        self.values = values

    @property
    def n_examples(self):
        return self.indptr.shape[0] - 1

    def slice(self, start, stop):
        """The targets of examples start..stop-1."""
        p0, p1 = self.indptr[start], self.indptr[stop]
        return Targets(self.indptr[start:stop + 1] - p0,
                       self.indices[p0:p1], self.values[p0:p1])

    def row(self, i):
        """(indices, values) of example ``i``."""
        sl = slice(self.indptr[i], self.indptr[i + 1])
        return self.indices[sl], self.values[sl]


def parse_targets(targets, m, n_outputs, dtype, names=("targets indices",
                                                       "targets values")):
    """Convert any accepted target format to :class:`Targets`.

    Accepted: an integer array of shape (m,) (one target of value 1 per
    example); a tuple ``(indices, values)`` of arrays of shape (m, K)
    (``values=None`` means ones); a scipy.sparse matrix or array of shape
    (m, n_outputs).  Duplicate indices inside one example are summed.
    ``names`` are the argument names used in the errors of the tuple form.
    """
    iname, vname = names
    if sp.issparse(targets):
        if targets.shape != (m, n_outputs):
            raise ValueError(f"targets: sparse matrix must have shape (m, n_outputs) "
                             f"= ({m}, {n_outputs}), got {targets.shape}")
        if not (np.issubdtype(targets.dtype, np.floating)
                or np.issubdtype(targets.dtype, np.integer)):
            raise TypeError(f"targets: sparse values must be real numbers, "
                            f"got dtype {targets.dtype}")
        csr = sp.csr_array(targets, dtype=dtype, copy=True)
    elif isinstance(targets, tuple):
        if len(targets) != 2:
            raise ValueError("targets: a tuple must be (indices, values), got "
                             f"a tuple of length {len(targets)}")
        idx = check_index_matrix(targets[0], m, n_outputs, iname)
        if targets[1] is None:
            val = np.ones(idx.shape, dtype=dtype)
        else:
            val = _as_float_array(targets[1], vname, dtype)
            if val.shape != idx.shape:
                raise ValueError(f"{vname} must have the shape of the "
                                 f"indices {idx.shape}, got {val.shape}")
        K = idx.shape[1]
        if K == 0:  # no target in any example
            return Targets(np.zeros(m + 1, dtype=np.int64),
                           np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype))
        # Copies: sum_duplicates sorts in place, never the caller's arrays.
        csr = sp.csr_array(
            (val.ravel().copy(), idx.astype(np.int64).ravel(),
             np.arange(0, m * K + 1, K, dtype=np.int64)),
            shape=(m, n_outputs))
    elif isinstance(targets, (np.ndarray, list, range)):
        idx = _as_index_array(targets, "targets")
        if idx.shape != (m,):
            raise ValueError(f"targets: an index array must have shape (m,) = "
                             f"({m},), got {idx.shape}; use (indices, values) "
                             f"for several targets per example")
        _check_indices(idx, n_outputs, "targets")
        # one target per example: already in canonical CSR form
        return Targets(np.arange(m + 1, dtype=np.int64),
                       idx.astype(np.int64), np.ones(m, dtype=dtype))
    else:
        raise TypeError("targets must be an int array of shape (m,), a tuple "
                        "(indices, values) or a scipy.sparse matrix, got "
                        f"{type(targets).__name__}")
    csr.sum_duplicates()  # sums duplicates and sorts indices, per row
    values = np.ascontiguousarray(csr.data, dtype=dtype)
    _check_finite(values, vname if isinstance(targets, tuple) else "targets values")
    return Targets(np.ascontiguousarray(csr.indptr, dtype=np.int64),
                   np.ascontiguousarray(csr.indices, dtype=np.int64),
                   values)
