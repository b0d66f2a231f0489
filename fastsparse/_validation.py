"""Validation of user input, done once at the Python boundary.

Every function here either returns arrays that the compiled kernels can
trust (right dtype, C-contiguous, shapes consistent, indices in range,
values finite) or raises before anything is modified.
"""
import numbers
import operator

import numpy as np
import scipy.sparse as sp

from . import _core

__all__ = ["check_bias", "check_bool", "check_dtype", "check_hidden", "check_int",
           "check_lr", "check_mode", "check_real", "check_rows", "check_size",
           "check_step_args", "check_weight_decay", "parse_targets", "Targets"]

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


def check_int(value, name, low=None, high=None, reason=""):
    """An integer (not a bool) in [low, high], as a Python int.

    ``reason`` is appended to the message of a value above ``high``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if low is not None and n < low:
        raise ValueError(f"{name} must be >= {low}, got {n}")
    if high is not None and n > high:
        raise ValueError(f"{name} must be <= {high}{reason}, got {n}")
    return n


def check_size(value, name):
    """A positive integer that BLAS (32-bit int dimensions) can index."""
    return check_int(value, name, 1, _INT32_MAX,
                     reason=" (BLAS uses 32-bit dimensions)")


def check_bool(value, name):
    """A bool (Python or NumPy), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_real(value, name, low=None, high=None, *, open_low=False,
               open_high=False):
    """A finite real number (not a bool) in the given range, as a float.

    ``low``/``high`` are inclusive bounds unless ``open_low``/``open_high``.
    A 0-d real array is accepted.  TypeError for anything that is not a
    real number, ValueError for a non-finite or out-of-range value.
    """
    if type(value) is float and low == 0 and high is None and not open_low \
            and value >= 0 and value != float("inf"):
        return value            # the common case of lr and weight_decay
    if isinstance(value, np.ndarray) and value.ndim == 0 and \
            value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        v = float("inf") if value > 0 else float("-inf")
    if low is not None and high is not None:
        what = (f"in {'(' if open_low else '['}{low:g}, {high:g}"
                f"{')' if open_high else ']'}")
    elif low is not None:
        what = f"{'>' if open_low else '>='} {low:g}"
    elif high is not None:
        what = f"{'<' if open_high else '<='} {high:g}"
    else:
        what = ""
    ok = np.isfinite(v)
    if ok and low is not None:
        ok = v > low if open_low else v >= low
    if ok and high is not None:
        ok = v < high if open_high else v <= high
    if not ok:
        raise ValueError(f"{name} must be finite{' and ' + what if what else ''}, "
                         f"got {v!r}")
    return v


def check_bias(bias, n_outputs, dtype):
    """An initial output bias: None (None or False: no bias), zeros (True),
    or a fresh finite (n_outputs,) array of ``dtype`` from real values."""
    if bias is None or isinstance(bias, (bool, np.bool_)):
        return np.zeros(n_outputs, dtype=dtype) if bias else None
    if isinstance(bias, (str, bytes)):
        raise TypeError(f"bias must be a bool or an array of shape (n_outputs,), "
                        f"got {type(bias).__name__} {bias!r}")
    arr = np.asarray(bias)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"bias must be a bool or a real array of shape "
                        f"(n_outputs,), got dtype {arr.dtype}")
    if arr.shape != (n_outputs,):
        raise ValueError(f"bias must have shape (n_outputs,) = ({n_outputs},), "
                         f"got {arr.shape}")
    with np.errstate(over="ignore"):
        b = np.array(arr, dtype=dtype, copy=True)
    if not np.isfinite(b).all():
        raise ValueError("bias contains non-finite values (NaN or Inf, possibly "
                         f"from overflow when cast to {np.dtype(dtype).name})")
    return b


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
    if type(H) is np.ndarray and _core.finite2d(H, n_hidden, dtype.num):
        return H            # the common case, checked in one compiled pass
    arr = _as_float_array(H, "H", dtype)
    if arr.ndim != 2 or arr.shape[1] != n_hidden:
        hint = " (for one example use H[None, :])" if arr.ndim == 1 else ""
        raise ValueError(f"H must have shape (m, n_hidden) = (m, {n_hidden}), "
                         f"got shape {arr.shape}{hint}")
    _check_finite(arr, "H")
    return arr


def check_lr(lr):
    """lr as a finite float >= 0."""
    return check_real(lr, "lr", 0)


def check_weight_decay(wd, lr):
    """Weight decay as a finite float >= 0 with lr * wd < 1."""
    wd = check_real(wd, "weight_decay", 0)
    if lr * wd >= 1:
        raise ValueError(f"lr * weight_decay must be < 1 (it scales W by "
                         f"1 - lr * weight_decay), got {lr * wd:g}")
    return wd


def check_mode(mode):
    if not isinstance(mode, str) or mode not in ("batch", "online"):
        raise ValueError(f"mode must be 'batch' or 'online', got {mode!r}")
    return mode


_INF = float("inf")


def check_step_args(lr, wd, mode):
    """(lr, weight_decay, mode) of a step, checked as by :func:`check_lr`,
    :func:`check_weight_decay` and :func:`check_mode`."""
    if type(lr) is float and type(wd) is float and 0.0 <= lr < _INF \
            and wd == 0.0 and type(mode) is str and mode in ("batch", "online"):
        return lr, 0.0, mode        # the common case, in a few comparisons
    lr = check_lr(lr)
    return lr, check_weight_decay(wd, lr), check_mode(mode)


def _check_indices(idx, n_outputs, name):
    if idx.size and (idx.min() < 0 or idx.max() >= n_outputs):
        bad = idx[(idx < 0) | (idx >= n_outputs)].flat[0]
        raise IndexError(f"{name}: index {int(bad)} is out of range "
                         f"[0, {n_outputs})")


def _as_index_array(x, name):
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
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


def check_distribution(p):
    """p as a float64 probability vector (nonnegative, finite, normalised)."""
    arr = np.asarray(p)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"p must be an array of real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"p must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or not arr.sum() > 0:
        raise ValueError("p must be finite and nonnegative, with a positive sum")
    return arr / arr.sum()


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


def regular_indptr(m, K):
    """The CSR row pointers of m rows of K entries each (K >= 0)."""
    if K == 0:
        return np.zeros(m + 1, dtype=np.int64)
    return np.arange(0, m * K + 1, K, dtype=np.int64)


def _fast_targets(targets, m, n_outputs, dtype):
    """The common target forms, checked and copied in compiled passes
    (fastsparse._core.common_targets, which fastsparse._core.StepLane
    shares): an int64/int32 index array of shape (m,), or a tuple of
    C-contiguous (m, K) int64/int32 indices, sorted and distinct in each
    row, and values (``dtype`` or None).  None for anything else, or
    anything wrong: the general path then examines it (and says what is
    wrong)."""
    parts = _core.common_targets(targets, m, n_outputs, dtype.num)
    return None if parts is None else Targets(*parts)


def parse_targets(targets, m, n_outputs, dtype, names=("targets indices",
                                                       "targets values")):
    """Convert any accepted target format to :class:`Targets`.

    Accepted: an integer array of shape (m,) (one target of value 1 per
    example); a tuple ``(indices, values)`` of arrays of shape (m, K)
    (``values=None`` means ones); a scipy.sparse matrix or array of shape
    (m, n_outputs), in any format (csr, csc, coo, bsr, lil, dok, dia).
    Duplicate indices inside one example are summed.  ``names`` are the
    argument names used in the errors of the tuple form.

    Every index of every format is checked here, from the raw arrays of a
    sparse matrix (scipy trusts them: an out-of-range column index of a CSR
    matrix is not caught by its conversions), and the canonical form (sorted,
    duplicates summed) is built with NumPy, without converting untrusted
    input with scipy.  The int and tuple forms make no scipy call.
    """
    fast = _fast_targets(targets, m, n_outputs, dtype)
    if fast is not None:
        return fast
    iname, vname = names
    if sp.issparse(targets):
        rows, cols, data = _sparse_triplets(targets, m, n_outputs)
        with np.errstate(over="ignore", invalid="ignore"):
            values = data.astype(dtype)
        return _canonical_from_triplets(rows, cols, values, m, n_outputs,
                                        "targets values")
    if isinstance(targets, tuple):
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
        return _canonical_from_matrix(idx, val, vname)
    if isinstance(targets, (np.ndarray, list, range)):
        idx = _as_index_array(targets, "targets")
        if idx.shape != (m,):
            raise ValueError(f"targets: an index array must have shape (m,) = "
                             f"({m},), got {idx.shape}; use (indices, values) "
                             f"for several targets per example")
        _check_indices(idx, n_outputs, "targets")
        # one target per example: already in canonical CSR form
        return Targets(regular_indptr(m, 1),
                       idx.astype(np.int64), np.ones(m, dtype=dtype))
    raise TypeError("targets must be an int array of shape (m,), a tuple "
                    "(indices, values) or a scipy.sparse matrix, got "
                    f"{type(targets).__name__}")


def _canonical_from_matrix(idx, val, vname):
    """Targets from (m, K) indices (checked) and values: each row sorted,
    duplicates summed (in the order they appear)."""
    m, K = idx.shape
    if K == 0:  # no target in any example
        return Targets(regular_indptr(m, 0),
                       np.zeros(0, dtype=np.int64), np.zeros(0, dtype=val.dtype))
    if K == 1:
        indices, values = idx.ravel().copy(), val.ravel().copy()
        indptr = regular_indptr(m, 1)
    else:
        order = np.argsort(idx, axis=1, kind="stable")
        sidx = np.take_along_axis(idx, order, axis=1)
        sval = np.take_along_axis(val, order, axis=1)
        new = np.ones((m, K), dtype=bool)
        new[:, 1:] = sidx[:, 1:] != sidx[:, :-1]
        if new.all():
            indptr = regular_indptr(m, K)
            indices, values = sidx.ravel(), sval.ravel()
        else:
            starts = np.flatnonzero(new.ravel())
            indices = sidx.ravel()[starts]
            values = np.add.reduceat(sval.ravel(), starts)
            indptr = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(new.sum(axis=1), out=indptr[1:])
    _check_finite(values, vname)
    return Targets(indptr, np.ascontiguousarray(indices),
                   np.ascontiguousarray(values))


def _canonical_from_triplets(rows, cols, values, m, n_outputs, vname):
    """Targets from checked (row, column, value) triplets in any order."""
    key = rows * np.int64(n_outputs) + cols       # < 2^62: no overflow
    order = np.argsort(key, kind="stable")
    key, values = key[order], values[order]
    if key.size > 1:
        new = np.ones(key.size, dtype=bool)
        new[1:] = key[1:] != key[:-1]
        if not new.all():
            starts = np.flatnonzero(new)
            key, values = key[starts], np.add.reduceat(values, starts)
    _check_finite(values, vname)
    rows, cols = np.divmod(key, np.int64(n_outputs))
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    return Targets(indptr, np.ascontiguousarray(cols, dtype=np.int64),
                   np.ascontiguousarray(values))


def _raw_index(x, name):
    """A 1-D integer array from a sparse matrix' internals."""
    arr = _as_index_array(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _raw_data(x, name, ndim=1):
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: sparse values must be real numbers, "
                        f"got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _in_range(idx, n, name):
    """Check 0 <= idx < n, then return idx as int64."""
    _check_indices(idx, n, name)
    return idx.astype(np.int64)


def _check_indptr(indptr, n_major, n_indices, n_data, fmt):
    """indptr as int64 (checked: starts at 0, non-decreasing, within the
    index and value arrays) and the number of entries it points to."""
    if indptr.shape[0] != n_major + 1:
        raise ValueError(f"targets: malformed {fmt} matrix: indptr has length "
                         f"{indptr.shape[0]}, expected {n_major + 1}")
    if indptr.dtype.kind == "u" and indptr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"targets: malformed {fmt} matrix: indptr out of range")
    indptr = indptr.astype(np.int64)
    if indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise ValueError(f"targets: malformed {fmt} matrix: indptr does not "
                         "start at 0 or is not non-decreasing")
    nnz = int(indptr[-1])
    if nnz > n_indices or nnz > n_data:
        raise ValueError(f"targets: malformed {fmt} matrix: indptr points to "
                         f"{nnz} entries, but there are {n_indices} indices "
                         f"and {n_data} values")
    return indptr, nnz


def _sparse_triplets(Y, m, n_outputs):
    """(rows, columns, values) of a scipy.sparse matrix or array, every
    index checked against (m, n_outputs), straight from its raw arrays."""
    shape = getattr(Y, "shape", None)
    if not isinstance(shape, tuple) or shape != (m, n_outputs):
        raise ValueError(f"targets: sparse matrix must have shape (m, n_outputs) "
                         f"= ({m}, {n_outputs}), got {shape}")
    fmt = getattr(Y, "format", None)
    name = f"targets ({fmt})"
    if fmt in ("csr", "csc"):
        n_major, n_minor = (m, n_outputs) if fmt == "csr" else (n_outputs, m)
        indptr = _raw_index(Y.indptr, f"{name} indptr")
        indices = _raw_index(Y.indices, f"{name} indices")
        data = _raw_data(Y.data, name)
        indptr, nnz = _check_indptr(indptr, n_major, indices.shape[0],
                                    data.shape[0], fmt)
        minor = _in_range(indices[:nnz], n_minor, f"targets: {fmt} "
                          f"{'column' if fmt == 'csr' else 'row'} indices")
        major = np.repeat(np.arange(n_major, dtype=np.int64), np.diff(indptr))
        rows, cols = (major, minor) if fmt == "csr" else (minor, major)
        return rows, cols, data[:nnz]
    if fmt == "coo":
        coords = getattr(Y, "coords", None)
        if coords is None:
            coords = (Y.row, Y.col)
        if not isinstance(coords, tuple) or len(coords) != 2:
            raise ValueError("targets: malformed coo matrix: coords must be a "
                             "tuple (row, col)")
        row = _raw_index(coords[0], f"{name} row")
        col = _raw_index(coords[1], f"{name} col")
        data = _raw_data(Y.data, name)
        if not row.shape[0] == col.shape[0] == data.shape[0]:
            raise ValueError("targets: malformed coo matrix: row, col and data "
                             f"have lengths {row.shape[0]}, {col.shape[0]}, "
                             f"{data.shape[0]}")
        return (_in_range(row, m, "targets: coo row indices"),
                _in_range(col, n_outputs, "targets: coo column indices"), data)
    if fmt == "bsr":
        data = _raw_data(Y.data, name, ndim=3)
        R, C = data.shape[1:]
        if R < 1 or C < 1 or m % R or n_outputs % C:
            raise ValueError(f"targets: malformed bsr matrix: blocks of shape "
                             f"{(R, C)} do not tile shape {(m, n_outputs)}")
        indptr = _raw_index(Y.indptr, f"{name} indptr")
        indices = _raw_index(Y.indices, f"{name} indices")
        indptr, nnzb = _check_indptr(indptr, m // R, indices.shape[0],
                                     data.shape[0], fmt)
        bcol = _in_range(indices[:nnzb], n_outputs // C,
                         "targets: bsr block column indices")
        brow = np.repeat(np.arange(m // R, dtype=np.int64), np.diff(indptr))
        shape = (nnzb, R, C)
        rows = np.broadcast_to(brow[:, None, None] * R
                               + np.arange(R)[None, :, None], shape)
        cols = np.broadcast_to(bcol[:, None, None] * C
                               + np.arange(C)[None, None, :], shape)
        return rows.ravel(), cols.ravel(), data[:nnzb].ravel()
    if fmt == "lil":
        lrows, ldata = np.asarray(Y.rows, dtype=object), np.asarray(Y.data, dtype=object)
        if lrows.shape != (m,) or ldata.shape != (m,):
            raise ValueError("targets: malformed lil matrix: rows and data must "
                             f"have shape ({m},)")
        try:
            lengths = [len(r) for r in lrows]
            if lengths != [len(v) for v in ldata]:
                raise ValueError("targets: malformed lil matrix: rows and data "
                                 "have different lengths")
        except TypeError:
            raise TypeError("targets: malformed lil matrix: rows and data must "
                            "hold lists") from None
        n = sum(lengths)
        cols = [c for r in lrows for c in r]
        vals = [v for r in ldata for v in r]
        cols = _raw_index(np.asarray(cols) if n else np.zeros(0, np.int64),
                          f"{name} column indices")
        data = _raw_data(np.asarray(vals) if n else np.zeros(0), name)
        rows = np.repeat(np.arange(m, dtype=np.int64), lengths)
        return rows, _in_range(cols, n_outputs, "targets: lil column indices"), data
    if fmt == "dok":
        items = list(Y.items())
        keys = np.asarray([k for k, _ in items]) if items else \
            np.zeros((0, 2), dtype=np.int64)
        data = _raw_data(np.asarray([v for _, v in items]) if items
                         else np.zeros(0), name)
        keys = _as_index_array(keys, f"{name} keys")
        if keys.ndim != 2 or keys.shape[1] != 2:
            raise ValueError("targets: malformed dok matrix: keys must be "
                             "(row, column) pairs")
        return (_in_range(keys[:, 0], m, "targets: dok row indices"),
                _in_range(keys[:, 1], n_outputs, "targets: dok column indices"),
                data)
    if fmt == "dia":
        offsets = _raw_index(Y.offsets, f"{name} offsets")
        data = _raw_data(Y.data, name, ndim=2)
        if data.shape[0] != offsets.shape[0]:
            raise ValueError("targets: malformed dia matrix: data has "
                             f"{data.shape[0]} diagonals, offsets {offsets.shape[0]}")
        # entry (i, j) = data[k, j] with i = j - offsets[k]; diagonals that
        # miss the matrix contribute nothing (as in scipy), nor do zeros
        keep = (offsets > -m) & (offsets < n_outputs)
        off = offsets[keep].astype(np.int64)
        j = np.arange(min(data.shape[1], n_outputs), dtype=np.int64)
        vals = data[keep][:, :j.shape[0]]
        i = j[None, :] - off[:, None]
        mask = (i >= 0) & (i < m) & (vals != 0)
        return i[mask], np.broadcast_to(j, i.shape)[mask], vals[mask]
    raise TypeError(f"targets: unsupported scipy.sparse format {fmt!r}")
