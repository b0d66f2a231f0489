"""The API shared by the factored and the naive output layer.

Both layers validate their input here, once, before any state changes; the
subclasses implement the computations on trusted input:

* ``_step(H, targets, lr, mode, weight_decay)`` -> (loss, grad_H)
* ``_forward(H, indptr, indices)`` -> (a in CSR order, q, s)
* ``_backward(H, targets_of_grad_a, grad_q, grad_s, lr, weight_decay)``
  -> grad_H
* ``_outputs(H, rows)``, ``weights()``, ``bias()``
"""
from __future__ import annotations

import inspect
import os
import threading
import types

import numpy as np
from numpy.typing import ArrayLike

from . import _checkpoint
# rows processed at once by the chunked dense computations (weights(),
# outputs() over all rows, M = V^T V): bounds their temporary memory
from ._state import CHUNK_ROWS as _CHUNK_ROWS
from ._threads import compute, compute_named, locked
from .losses import CallableLoss, get_loss
from ._validation import (check_bias, check_dtype, check_hidden,
                          check_index_matrix, check_lr, check_real, check_rows,
                          check_size, check_step_args, check_vector,
                          check_weight_decay, parse_targets, regular_indptr)


_COMMON_PARAMS_DOC = """
    loss : str, Loss or callable, default "squared"
        ``"squared"``, ``"spherical_softmax"``, ``"taylor_softmax"``,
        ``"z_loss"`` (default parameters), an instance of a class of
        :mod:`fastsparse.losses` (e.g. ``SphericalSoftmax(eps=0.1)``), or a
        callable ``f(a, q, s, values) -> (loss, grad_a, grad_q, grad_s)``
        vectorised over the minibatch (minibatch mode only), see
        :class:`fastsparse.losses.CallableLoss`.
    bias : bool or array_like of shape (n_outputs,), default False
        Add an output bias: ``o = W h + b`` (b starts at 0, or at the
        given real values).
    track_sum : bool, optional
        Keep what s = sum(o) needs (the shift omega and the column sums of
        W, d numbers each).  Default: only when the loss uses s (taylor,
        z-loss, callables); :meth:`forward` returns ``s=None`` otherwise.
"""


def random_weights(n_outputs, n_hidden, dtype, seed, init_scale):
    """The initial weights both layers draw for the same arguments."""
    init_scale = (1.0 / np.sqrt(n_hidden) if init_scale is None
                  else check_real(init_scale, "init_scale", 0))
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_outputs, n_hidden), dtype=dtype)
    with np.errstate(over="ignore"):
        W *= dtype.type(init_scale)
    return W


def check_weights(W, b, what="W", hint=""):
    """Refuse weights (and bias) that are not finite or whose Gram matrix
    ``W^T W`` (kept by the factored layer as ``M = V^T V``, and behind
    ``q = ||W h||^2``) overflows their dtype.  O(D d), in chunks of rows."""
    big = np.finfo(W.dtype).max
    sq = np.zeros(W.shape[1])
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, W.shape[0], _CHUNK_ROWS):   # no D x d temporary
            Wc = W[start:start + _CHUNK_ROWS]
            if not np.isfinite(Wc).all():
                raise ValueError(f"{what} contains non-finite values (NaN or Inf)"
                                 f"{hint}")
            sq += np.einsum("ij,ij->j", Wc, Wc, dtype=np.float64)
        if b is not None:
            sq = np.append(sq, np.dot(b.astype(np.float64), b))
    worst = sq.max() if sq.size else 0.0
    if not worst <= big:
        raise ValueError(
            f"{what} is too large for {W.dtype.name}: the Gram matrix W^T W "
            f"overflows the dtype (largest diagonal entry {worst:.3g} > "
            f"{big:.3g}); scale the weights down (or use float64){hint}")


def check_initial_weights(W, dtype, bias, copy=True):
    """Validate user weights for ``from_weights``.

    Returns (W, b): W a fresh C-contiguous array of the chosen dtype (or,
    with ``copy=False``, the caller's own array, which must already be one,
    e.g. a writable ``numpy.memmap``); b None without bias, zeros for
    ``bias=True``.
    """
    if not copy and not (type(W) is np.ndarray or isinstance(W, np.memmap)):
        raise TypeError(f"copy=False needs W to be a NumPy array (numpy.ndarray "
                        f"or numpy.memmap, not a subclass such as np.matrix), "
                        f"got {type(W).__name__}")
    arr = W if not copy else np.asarray(W)
    if dtype is None:
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"W must be a float32 or float64 array (or pass "
                            f"dtype=), got dtype {arr.dtype}")
        dtype = arr.dtype
    dtype = check_dtype(dtype)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"W must be a real array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"W must have shape (n_outputs, n_hidden), got shape {arr.shape}")
    check_size(arr.shape[0], "n_outputs")
    check_size(arr.shape[1], "n_hidden")
    if copy:
        with np.errstate(over="ignore"):
            W = np.array(arr, dtype=dtype, order="C", copy=True)
    else:
        if W.dtype != dtype:
            raise TypeError(f"copy=False needs W to be a NumPy array of dtype "
                            f"{dtype.name} (e.g. a numpy.memmap), got "
                            f"{type(W).__name__} of dtype {arr.dtype}")
        if not (W.flags.c_contiguous and W.flags.writeable and W.flags.aligned):
            raise ValueError("copy=False needs W to be C-contiguous and writable "
                             "(the layer trains it in place)")
    b = check_bias(bias, W.shape[0], dtype)
    check_weights(W, b)
    return W, b


def _public_copy(func, qualname):
    """A copy of ``func`` (undoing and redoing a fastsparse._threads
    decorator) whose qualified name, the one Python's argument errors show,
    is ``qualname``."""
    deco = getattr(func, "_fastsparse_decorator", None)
    if deco is not None:
        return deco(_public_copy(func.__wrapped__, qualname))
    code = func.__code__
    if hasattr(code, "co_qualname"):
        code = code.replace(co_qualname=qualname)
    new = types.FunctionType(code, func.__globals__, func.__name__,
                             func.__defaults__, func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__annotations__ = dict(func.__annotations__)
    new.__dict__.update(func.__dict__)
    new.__doc__, new.__module__ = func.__doc__, func.__module__
    new.__qualname__ = qualname
    return new


class OutputLayerBase:
    """Shared, validated API; see :class:`fastsparse.FactoredOutputLayer`."""

    n_outputs: int
    n_hidden: int
    dtype: np.dtype
    #: whether its compute calls run BLAS single-threaded (fastsparse._threads)
    _single_thread_blas = False
    #: whether the bias is stored as one more column of the weights array
    _bias_in_V = False
    #: keyword options of the constructor and from_weights passed to _setup
    _OPTIONS = ()
    #: name of the public method running on this layer (fastsparse._threads)
    _in_call = None
    #: the compiled path of step()'s common calls, if the layer has one
    #: (fastsparse._core.StepLane)
    _lane = None

    def __init_subclass__(cls, **kwargs):
        # The shared methods are defined here, in a private class: give each
        # public class its own copies named after it, so that Python's own
        # argument errors ("step() takes 4 positional arguments ...") name
        # the class the user called.
        super().__init_subclass__(**kwargs)
        for name, attr in vars(OutputLayerBase).items():
            if name in vars(cls) or (name.startswith("_") and name != "__init__"):
                continue
            if isinstance(attr, classmethod):
                setattr(cls, name, classmethod(
                    _public_copy(attr.__func__, f"{cls.__name__}.{name}")))
            elif isinstance(attr, types.FunctionType):
                setattr(cls, name, _public_copy(attr, f"{cls.__name__}.{name}"))

    # ------------------------------------------------------- construction
    def __init__(self, n_outputs: int, n_hidden: int, *, dtype=np.float32,
                 seed: int | None = None, init_scale: float | None = None,
                 loss="squared", bias=False, track_sum: bool | None = None,
                 **options) -> None:
        self._check_options(options, "__init__")
        dtype = check_dtype(dtype)
        n_outputs = check_size(n_outputs, "n_outputs")
        n_hidden = check_size(n_hidden, "n_hidden")
        loss, track_sum = self._check_config(loss, track_sum)
        b = check_bias(bias, n_outputs, dtype)
        W = random_weights(n_outputs, n_hidden, dtype, seed, init_scale)
        check_weights(W, b, "W", f" (init_scale = {init_scale!r} is too large)")
        self._setup(W, b, loss, track_sum, **options)

    @classmethod
    def from_weights(cls, W, dtype=None, *, bias=None, loss="squared",
                     track_sum=None, copy=True, **options):
        """A layer whose weights are a copy of ``W``.

        Parameters
        ----------
        W : array_like of shape (n_outputs, n_hidden)
        dtype : {None, np.float32, np.float64}
            Default: W's dtype (which must then be float32 or float64).
        bias : None, bool or array_like of shape (n_outputs,)
            An initial output bias (copied), ``True`` for zeros, or
            None/False for no bias.
        loss, track_sum, **options
            As in the constructor.
        copy : bool, default True
            False: train ``W`` itself in place instead of a copy (it becomes
            the factored layer's V, or the naive layer's W).  It must be a
            C-contiguous, writable array of the layer's dtype, typically a
            ``numpy.memmap`` of a file when D x d does not fit in memory: a
            step reads and writes only the target rows (building the layer
            and the rare renormalisations pass over all of it).  Not with a
            bias in the factored layer (it needs one more column).
        """
        cls._check_options(options, "from_weights")
        if not isinstance(copy, (bool, np.bool_)):
            raise TypeError(f"copy must be a bool, got {type(copy).__name__}")
        if not copy and cls._bias_in_V and not (
                bias is None or (isinstance(bias, (bool, np.bool_)) and not bias)):
            raise ValueError("copy=False cannot be combined with a bias in the "
                             "factored layer (the bias is one more column of V)")
        W, b = check_initial_weights(W, dtype, bias, copy)
        loss, track_sum = cls._check_config(loss, track_sum)
        self = cls.__new__(cls)
        self._setup(W, b, loss, track_sum, **options)
        return self

    @classmethod
    def _check_options(cls, options, method):
        """Refuse unknown keyword arguments, naming them and the valid ones."""
        unknown = [k for k in options if k not in cls._OPTIONS]
        if unknown:
            params = inspect.signature(getattr(OutputLayerBase, method)).parameters
            valid = [p.name for p in params.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.name not in ("self", "cls")] + list(cls._OPTIONS)
            where = cls.__name__ + ("" if method == "__init__" else "." + method)
            raise TypeError(f"{where}() got an unexpected keyword argument "
                            f"{unknown[0]!r}; valid keyword arguments: "
                            f"{', '.join(valid)}")

    @staticmethod
    def _check_config(loss, track_sum):
        loss = get_loss(loss)
        if track_sum is None:
            track_sum = loss.uses_s
        elif not isinstance(track_sum, (bool, np.bool_)):
            raise TypeError(f"track_sum must be a bool, got {type(track_sum).__name__}")
        elif loss.uses_s and not track_sum:
            raise ValueError(f"the {loss.name!r} loss uses s = sum(o): "
                             "track_sum cannot be False")
        return loss, bool(track_sum)

    def _setup(self, W, b, loss, track_sum):
        self._configure(W.shape[0], W.shape[1], W.dtype, loss, b is not None,
                        track_sum)

    def _configure(self, n_outputs, n_hidden, dtype, loss, has_bias, track_sum):
        self._lock = threading.RLock()   # see fastsparse._threads
        self.n_outputs, self.n_hidden = n_outputs, n_hidden
        self.dtype = np.dtype(dtype)
        if isinstance(loss, CallableLoss):   # checks its results for this dtype
            loss = loss.for_dtype(self.dtype)
        self.loss = loss
        self.has_bias = has_bias
        self.track_sum = track_sum

    # -------------------------------------------------------- checkpoints
    @locked
    def save(self, path: str | os.PathLike) -> None:
        """Save the exact state of the layer to ``path`` (atomically).

        The file (a NumPy ``.npz`` archive, no pickle) holds every state
        array, the configuration (loss and its parameters, bias, dtype) and,
        for the factored layer, its settings (``min_abs_r``,
        ``online_block``, ``single_thread_blas``) and the numerical-health
        control's knobs, counters and estimates, with a digest of every
        array.  It is written to a temporary file in the same directory,
        fsynced and renamed over ``path``, and the directory is fsynced: a
        crash, a kill or a full disk mid-save leaves a previous file at
        ``path`` intact (an error removes the temporary file; a later save
        removes those left by killed processes).  The file keeps the mode
        of the file it replaces (a new one gets the umask's).  A callable
        loss is not saved (pass it again to :meth:`load`).

        Parameters
        ----------
        path : str or os.PathLike
            A file name (a symbolic link: the file it points to is
            replaced).

        Raises
        ------
        ValueError
            An empty path, or one naming something else than a regular file
            (IsADirectoryError, an OSError, for a directory).
        OSError
            If writing fails (e.g. a full disk); ``path`` is then unchanged.
        """
        meta = {"dtype": self.dtype.name, "n_outputs": self.n_outputs,
                "n_hidden": self.n_hidden, "has_bias": self.has_bias,
                "track_sum": self.track_sum,
                "loss": _checkpoint.loss_to_dict(self.loss)}
        meta.update(self._checkpoint_meta())
        _checkpoint.save(self, path, meta, self._checkpoint_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike, *, loss=None):
        """A layer with the exact state saved by :meth:`save`.

        Nothing in the file is trusted: its structure, metadata, array
        headers, sizes, digests and the consistency of the state are checked
        before the layer is built, and the memory used is bounded by the
        sizes the metadata declares, checked against the file's own.

        Parameters
        ----------
        path : str or os.PathLike
        loss : callable, optional
            Only for a layer saved with a callable loss: the callable.

        Raises
        ------
        fastsparse.CheckpointError
            (a ValueError) If the file is not a regular file, not a
            checkpoint of this class, is truncated, corrupted (zip CRC or
            digest mismatch), or declares or holds an invalid or
            inconsistent state.
        FileNotFoundError, PermissionError
            If ``path`` does not exist or cannot be read.
        """
        meta, arrays = _checkpoint.load(cls, path)
        path = os.fspath(path)
        self = cls.__new__(cls)
        self._configure(meta["n_outputs"], meta["n_hidden"], meta["dtype"],
                        _checkpoint.loss_from_dict(path, meta.get("loss"), loss),
                        meta["has_bias"], meta["track_sum"])
        self._restore_checkpoint(path, meta, arrays)
        return self

    @classmethod
    def _checkpoint_shapes(cls, n_outputs, n_hidden, has_bias, track_sum):
        """Name -> shape of the arrays a checkpoint of this class holds."""
        raise NotImplementedError

    # ------------------------------------------------------------------ API
    def step(self, H: ArrayLike, targets, lr: float, *, mode: str = "batch",
             weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
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
            left by examples 0..i-1 (not available with a callable loss).
        weight_decay : float, default 0
            L2 penalty ``weight_decay / 2 ||W||^2`` (W and the bias alike, as
            ``torch.optim.SGD(weight_decay=)``): each update is
            ``W <- (1 - lr weight_decay) W - lr dL/dW``, per example in
            online mode.  Exact and O(d^2) in the factored layer.

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
        fastsparse.StepRefusedError
            When the step's result would not be finite (a loss or gradient
            not finite in the dtype, an update out of the state's range);
            nothing of the refused example is applied.

        Examples
        --------
        >>> import numpy as np, fastsparse
        >>> layer = fastsparse.FactoredOutputLayer(5000, 16, seed=0)
        >>> H = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32) / 4
        >>> loss, grad_H = layer.step(H, np.array([7, 7, 42]), lr=0.05, mode="online")
        >>> loss.dtype, grad_H.shape
        (dtype('float32'), (3, 16))

        Several targets per example, with values:

        >>> idx, val = np.array([[1, 2], [3, 4], [5, 6]]), np.ones((3, 2), np.float32)
        >>> loss, _ = layer.step(H, (idx, val), lr=0.05)
        >>> loss.shape
        (3,)
        """
        lane = self._lane
        if lane is not None:
            out = lane.step(self, H, targets, lr, mode, weight_decay)
            if out is not None:
                return out
        return self._checked_step(H, targets, lr, mode, weight_decay)

    @compute_named("step")
    def _checked_step(self, H, targets, lr, mode, weight_decay):
        """:meth:`step` on any input, validated here (the lane, when the
        layer has one, takes the common calls: fastsparse._core.StepLane)."""
        H, tg = self._check_inputs(H, targets)
        lr, wd, mode = check_step_args(lr, weight_decay, mode)
        if mode == "online" and not self.loss.online:
            raise ValueError(f"mode='online' is not available with the "
                             f"{self.loss.name!r} loss; use mode='batch'")
        if H.shape[0] == 0:
            return self._empty_result(0)
        return self._step(H, tg, lr, mode, wd)

    @compute
    def loss_and_grad(self, H: ArrayLike, targets) -> tuple[np.ndarray, np.ndarray]:
        """Per-example losses and dL/dH at the current weights, no update.

        Same arguments and results as :meth:`step` without ``lr``/``mode``.
        """
        H, tg = self._check_inputs(H, targets)
        if H.shape[0] == 0:
            return self._empty_result(0)
        return self._step(H, tg, 0.0, "batch", 0.0)

    @compute
    def forward(self, H: ArrayLike, indices: ArrayLike
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The statistics every loss of the spherical family is made of.

        Parameters
        ----------
        H : array_like of shape (m, n_hidden)
        indices : int array of shape (m, K)
            Output indices per example.

        Returns
        -------
        a : ndarray of shape (m, K)
            Outputs at ``indices``.
        q : ndarray of shape (m,)
            Squared norms ``||o||^2`` of the outputs.
        s : ndarray of shape (m,) or None
            Sums of the outputs; None when the layer does not track sums
            (``track_sum=False``).
        """
        H = check_hidden(H, self.n_hidden, self.dtype)
        idx = check_index_matrix(indices, H.shape[0], self.n_outputs)
        m, K = idx.shape
        indptr = regular_indptr(m, K)
        a, q, s = self._forward(H, indptr, idx.ravel())
        return (a.reshape(m, K), q.astype(self.dtype),
                s.astype(self.dtype) if self.track_sum else None)

    @compute
    def backward(self, H: ArrayLike, indices: ArrayLike, grad_a: ArrayLike,
                 grad_q: ArrayLike, grad_s: ArrayLike | None, lr: float, *,
                 weight_decay=0.0):
        """dL/dH for any loss of (a, q, s), and the exact minibatch update.

        With the gradients of a loss with respect to the statistics returned
        by :meth:`forward` (at the current weights), returns dL/dH and
        applies one SGD step with learning rate ``lr`` for the summed
        gradient, exactly as :meth:`step` in ``mode="batch"`` would for a
        built-in loss.  ``lr=0`` only computes dL/dH.

        Parameters
        ----------
        H : array_like of shape (m, n_hidden)
        indices : int array of shape (m, K)
        grad_a : array_like of shape (m, K)
            dL/da; entries of duplicate indices in one example are summed.
        grad_q : array_like of shape (m,)
        grad_s : array_like of shape (m,) or None
            None means zeros; non-zero values need ``track_sum``.
        lr : float
        weight_decay : float, default 0
            As in :meth:`step`.

        Returns
        -------
        grad_H : ndarray of shape (m, n_hidden)
        """
        H = check_hidden(H, self.n_hidden, self.dtype)
        m = H.shape[0]
        tg = parse_targets((indices, grad_a), m, self.n_outputs, self.dtype,
                           names=("indices", "grad_a"))
        gq = check_vector(grad_q, m, "grad_q")
        gs = np.zeros(m) if grad_s is None else check_vector(grad_s, m, "grad_s")
        if gs.any() and not self.track_sum:
            raise ValueError("grad_s is non-zero but the layer does not track "
                             "s = sum(o): build it with track_sum=True")
        lr = check_lr(lr)
        wd = check_weight_decay(weight_decay, lr)
        if m == 0:
            return self._empty_result(0)[1]
        return self._backward(H, tg, gq, gs, lr, wd)

    @compute
    def predict_proba(self, H: ArrayLike, rows: ArrayLike | None = None) -> np.ndarray:
        """Probabilities of the chosen outputs, for softmax-like losses.

        Normalised exactly by the O(d^2) denominators (``q + D eps`` for the
        spherical softmax, ``D + s + q/2`` for the Taylor softmax): only the
        requested rows are computed.

        Parameters
        ----------
        H : array_like of shape (m, n_hidden)
        rows : int array of shape (n_rows,), optional
            Output indices; all D when omitted (O(m D d)).

        Returns
        -------
        ndarray of shape (m, n_rows) or (m, n_outputs)
        """
        H, rows = self._check_rows_input(H, rows)
        if not self.loss.has_proba:
            raise TypeError(f"the {self.loss.name!r} loss defines no "
                            "probabilities; predict_proba needs "
                            "'spherical_softmax' or 'taylor_softmax'")
        empty = np.zeros(0, dtype=np.int64)
        _, q, s = self._forward(H, np.zeros(H.shape[0] + 1, dtype=np.int64), empty)
        o = self._outputs(H, rows).astype(np.float64)
        return self.loss.proba(o, q, s, self.n_outputs).astype(self.dtype)

    @locked
    def outputs(self, H: ArrayLike, rows: ArrayLike | None = None) -> np.ndarray:
        """Outputs ``o = W h (+ b)`` for the given output rows.

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
        H, rows = self._check_rows_input(H, rows)
        return self._outputs(H, rows)

    @locked
    def topk(self, H: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k highest-scoring outputs of each example, over all D outputs.

        Computed in chunks of output rows (BLAS-3 products), so memory stays
        bounded by m x (chunk + k) whatever D.

        Parameters
        ----------
        H : array_like of shape (m, n_hidden)
        k : int, 1 <= k <= n_outputs

        Returns
        -------
        indices : ndarray of int64, shape (m, k)
            Output indices, by decreasing score (ties: lower index first).
        scores : ndarray of shape (m, k)
            Their outputs ``o = W h (+ b)``.
        """
        H = check_hidden(H, self.n_hidden, self.dtype)
        k = check_size(k, "k")
        if k > self.n_outputs:
            raise ValueError(f"k must be <= n_outputs = {self.n_outputs}, got {k}")
        m = H.shape[0]
        best_s = np.empty((m, 0), dtype=self.dtype)
        best_i = np.empty((m, 0), dtype=np.int64)
        for start in range(0, self.n_outputs, _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, self.n_outputs)
            cand_s = np.concatenate([best_s, self._outputs(H, slice(start, stop))], 1)
            cand_i = np.concatenate(
                [best_i, np.broadcast_to(np.arange(start, stop), (m, stop - start))], 1)
            if cand_s.shape[1] > k:
                part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_s = np.take_along_axis(cand_s, part, 1)
                cand_i = np.take_along_axis(cand_i, part, 1)
            best_s, best_i = cand_s, cand_i
        order = np.lexsort((best_i, -best_s), axis=1)
        return (np.take_along_axis(best_i, order, 1),
                np.take_along_axis(best_s, order, 1))

    @locked
    def export_weights(self, path: str | os.PathLike) -> None:
        """Write the dense weights W (n_outputs, n_hidden) to a ``.npy`` file,
        in chunks of rows (memory stays bounded; read it back with
        ``numpy.load(path, mmap_mode="r")``).  The bias, if any, is
        :meth:`bias`.

        Written like :meth:`save`: ordinary writes to a temporary file in the
        same directory, fsync, rename.  A full disk raises OSError and leaves
        neither a partial nor a temporary file (and an existing ``path``
        unchanged).

        Parameters
        ----------
        path : str or os.PathLike
        """
        def chunks():
            for start in range(0, self.n_outputs, _CHUNK_ROWS):
                yield self._weight_rows(slice(start, min(start + _CHUNK_ROWS,
                                                         self.n_outputs)))
        _checkpoint.write_npy(path, self.dtype, (self.n_outputs, self.n_hidden),
                              chunks())

    # ------------------------------------------------------------- helpers
    def _check_rows_input(self, H, rows):
        H = check_hidden(H, self.n_hidden, self.dtype)
        return H, (None if rows is None else check_rows(rows, self.n_outputs))

    def _check_inputs(self, H, targets):
        H = check_hidden(H, self.n_hidden, self.dtype)
        tg = parse_targets(targets, H.shape[0], self.n_outputs, self.dtype)
        self.loss.check_targets(tg)
        return H, tg

    def _empty_result(self, m):
        return (np.zeros(m, dtype=self.dtype),
                np.zeros((m, self.n_hidden), dtype=self.dtype))

    def __repr__(self):
        extra = f", loss={self.loss!r}" if self.loss.name != "squared" else ""
        extra += ", bias=True" if self.has_bias else ""
        return (f"{type(self).__name__}(n_outputs={self.n_outputs}, "
                f"n_hidden={self.n_hidden}, dtype={self.dtype.name}{extra})")
