"""PyTorch integration: a fastsparse layer as the last layer of a torch model.

Importing this module needs PyTorch; ``import fastsparse`` never imports it.

The output layer's weights live in the fastsparse layer (factored, so that
a step costs O(d^2) instead of O(D d)); they are **not** ``nn.Parameter``
objects and no torch optimiser sees them.  The layer updates itself, by
exact SGD, *inside* ``loss.backward()``: autograd hands the layer the
gradient of the scalar being differentiated with respect to the layer's
statistics (a, q, s), the layer computes dL/dh for the lower layers and
applies one SGD step with the summed (minibatch) gradient.  The lower
layers are trained by any torch optimiser as usual::

    import numpy as np, torch, fastsparse
    from fastsparse.torch import FactoredOutput

    layer = fastsparse.FactoredOutputLayer(D, d, loss="spherical_softmax",
                                           bias=True, dtype=np.float32)
    out = FactoredOutput(layer, lr=0.05)             # the layer's SGD lr
    body = torch.nn.Sequential(torch.nn.Embedding(V, e),
                               torch.nn.Linear(e, d), torch.nn.Tanh())
    opt = torch.optim.SGD(body.parameters(), lr=0.05)

    for x, y in batches:                             # y: int64 (m,)
        opt.zero_grad()
        loss = out(body(x), y)                       # summed over the minibatch
        loss.backward()                              # also updates `layer`
        opt.step()

With the same learning rate (and weight decay) this is exactly, to
floating-point rounding, ``torch.optim.SGD`` over a dense
``nn.Linear(d, D)`` output layer trained on the same loss written on all D
outputs (the project's tests check it).

Public names: :class:`FactoredOutput` (an ``nn.Module`` computing a
built-in loss) and :func:`spherical_stats` (the differentiable statistics
``(a, q, s)``, for writing another loss of the spherical family in torch).
"""
import weakref

import numpy as np

try:
    import torch
except ImportError as _exc:
    raise ModuleNotFoundError(
        "fastsparse.torch needs PyTorch, which could not be imported "
        f"({_exc}). Install it with the torch extra: "
        'pip install "fastsparse[torch]"', name="torch") from _exc

from ._base import OutputLayerBase
from ._validation import check_index_matrix, check_lr, check_weight_decay
from .losses import CallableLoss

__all__ = ["FactoredOutput", "spherical_stats"]

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64}

# Number of updates applied through this module to each layer.  A forward
# records it; its backward refuses to run if the layer was updated in
# between (its dL/dh would be computed at other weights than its outputs).
# Updates made by calling the layer's own methods directly are not counted.
_UPDATES = weakref.WeakKeyDictionary()


# --------------------------------------------------------------- checks
def _check_layer(layer):
    if not isinstance(layer, OutputLayerBase):
        raise TypeError("layer must be a fastsparse layer (FactoredOutputLayer "
                        f"or NaiveOutputLayer), got {type(layer).__name__}")
    return layer


def _check_real(value, name, *, lr=None):
    """lr (finite, >= 0), or the weight decay when ``lr`` is given (also
    lr * value < 1); a one-element tensor is read as its value."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return check_lr(value) if lr is None else check_weight_decay(value, lr)


def _check_cpu(t, name):
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (the fastsparse layer lives "
                         f"in host memory), got a tensor on device {t.device}; "
                         f"move it with .cpu()")


def _check_hidden(h, layer):
    """Validate the hidden activations h (not their contiguity)."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    _check_cpu(h, "h")
    expected = _TORCH_DTYPES[layer.dtype]
    if h.dtype != expected:
        if h.dtype in (torch.float32, torch.float64):
            hint = (f"convert it with h.to({expected}) or build the layer with "
                    f"dtype=np.{np.dtype(_np_dtype(h.dtype)).name}")
        else:
            hint = "fastsparse computes in float32 or float64"
        raise TypeError(f"h must have the layer's dtype {expected}, got "
                        f"{h.dtype}; {hint}")
    if h.dim() != 2 or h.shape[1] != layer.n_hidden:
        raise ValueError(f"h must have shape (m, n_hidden) = (m, "
                         f"{layer.n_hidden}), got {tuple(h.shape)}")
    return h


def _np_dtype(torch_dtype):
    return np.float32 if torch_dtype == torch.float32 else np.float64


def _as_array(t):
    """A NumPy view of a CPU tensor (no copy when it is contiguous)."""
    return t.detach().contiguous().numpy()


def _stats_tensors(a, q, s):
    """The layer's statistics (a, q, s) as tensors sharing their memory
    (``s`` may be None, and stays None)."""
    return (torch.from_numpy(a), torch.from_numpy(q),
            None if s is None else torch.from_numpy(s))


def _check_indices(indices, m, n_outputs, name):
    """``indices`` (tensor or array) as a fresh int64 array of shape (m, K)."""
    if isinstance(indices, torch.Tensor):
        _check_cpu(indices, name)
        if indices.dtype.is_floating_point or indices.dtype.is_complex or \
                indices.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {indices.dtype}")
        indices = indices.detach().numpy()
    return np.array(check_index_matrix(indices, m, n_outputs, name), copy=True)


# ------------------------------------------------------- autograd function
class _SphericalStats(torch.autograd.Function):
    """(a, q, s) = layer.forward(h, indices); backward = layer.backward.

    Inputs: h (contiguous, validated), an ``anchor`` tensor that requires
    grad (or None) so that backward runs even when h does not require grad,
    then non-tensor context: layer, indices (int64 (m, K)), lr and weight
    decay.  The forward also records the layer's update count, which its
    backward checks.
    """

    @staticmethod
    def forward(ctx, h, anchor, layer, indices, lr, weight_decay):
        a, q, s = layer.forward(_as_array(h), indices)
        ctx.save_for_backward(h)
        ctx.layer = layer
        ctx.indices = indices
        ctx.lr = lr
        ctx.weight_decay = weight_decay
        ctx.version = _UPDATES.get(layer, 0)
        return _stats_tensors(a, q, s)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a, grad_q, grad_s):
        (h,) = ctx.saved_tensors
        layer = ctx.layer
        if _UPDATES.get(layer, 0) != ctx.version:
            raise RuntimeError(
                "fastsparse: the output layer was updated (by a backward "
                "through fastsparse.torch) since this forward; its gradient "
                "would be computed at other weights. Call backward once per forward, "
                "before the next update (no gradient accumulation over several "
                "forwards, no second backward through the same graph).")
        if not ctx.needs_input_grad[0] and ctx.lr == 0:
            return None, None, None, None, None, None
        update = ctx.lr > 0
        indices, grad_a = ctx.indices, _as_array(grad_a)
        if indices.shape[1] == 0:
            # no targets: one dummy index with dL/da = 0 (the layers' target
            # parser cannot build (m, 0) targets)
            indices = np.zeros((indices.shape[0], 1), dtype=np.int64)
            grad_a = np.zeros(indices.shape, dtype=grad_a.dtype)
        try:
            grad_h = layer.backward(
                _as_array(h), indices, grad_a, _as_array(grad_q),
                None if grad_s is None else _as_array(grad_s), ctx.lr,
                weight_decay=ctx.weight_decay)
        finally:
            if update:
                _UPDATES[layer] = _UPDATES.get(layer, 0) + 1
        grad_h = torch.from_numpy(grad_h) if ctx.needs_input_grad[0] else None
        return grad_h, None, None, None, None, None


def spherical_stats(h, layer, indices, lr=0.0, *, weight_decay=0.0):
    """Differentiable statistics ``(a, q, s)`` of a fastsparse layer's outputs.

    ``o = W h (+ b)`` is never formed: ``a = o[indices]``, ``q = ||o||^2``
    and ``s = sum(o)`` cost O(d^2 + K d) per example.  Any loss written in
    torch as a function of (a, q, s) can be backpropagated through them:
    the backward pass computes dL/dh (in O(d^2 + K d)) **and applies one
    exact SGD step to the layer**, with learning rate ``lr`` and the
    gradient of whatever scalar ``backward()`` was called on, summed over
    the minibatch.

    Parameters
    ----------
    h : torch.Tensor of shape (m, n_hidden)
        Hidden activations on the CPU, of the layer's dtype (float32 or
        float64; no implicit cast).  A non-contiguous ``h`` is made
        contiguous (one copy, differentiable); a contiguous one is shared
        with the layer without copy.
    layer : FactoredOutputLayer or NaiveOutputLayer
    indices : int tensor or array of shape (m, K)
        Output indices per example (copied).  Duplicates in a row are
        allowed; their dL/da are summed.
    lr : float, default 0
        The layer's learning rate; 0 computes dL/dh without an update.
    weight_decay : float, default 0
        L2 decay, as in ``torch.optim.SGD(weight_decay=)``.

    Returns
    -------
    a : torch.Tensor of shape (m, K)
    q : torch.Tensor of shape (m,)
    s : torch.Tensor of shape (m,) or None
        None when the layer does not track sums (``track_sum=False``).

    Notes
    -----
    The update happens in ``backward()``, never in the forward: under
    ``torch.no_grad()`` nothing is recorded and the layer is not changed.
    Call ``backward()`` once per call of this function, before the layer
    is updated again: a backward whose layer was updated (through this
    module) since its forward raises ``RuntimeError``, as dL/dh would be
    computed at other weights.  When ``lr > 0`` and grad is enabled, the
    outputs require grad even if ``h`` does not, so that training the
    output layer alone on fixed features works.  Not twice differentiable.
    """
    layer = _check_layer(layer)
    h = _check_hidden(h, layer)
    lr = _check_real(lr, "lr")
    weight_decay = _check_real(weight_decay, "weight_decay", lr=lr)
    idx = _check_indices(indices, h.shape[0], layer.n_outputs, "indices")
    anchor = None
    if lr > 0 and torch.is_grad_enabled():
        anchor = torch.empty(0, dtype=h.dtype, requires_grad=True)
    return _SphericalStats.apply(h.contiguous(), anchor, layer, idx, lr,
                                 weight_decay)


class _CallableLossFunction(torch.autograd.Function):
    """Per-example losses of a :class:`fastsparse.losses.CallableLoss`
    (float64 inputs), with the gradients it returns."""

    @staticmethod
    def forward(ctx, a, q, s, values, loss):
        m = a.shape[0]
        s_np = np.zeros(m) if s is None else _as_array(s)
        L, ga, gq, gs = loss(_as_array(a), _as_array(q), s_np, _as_array(values))
        ctx.grads = (torch.from_numpy(ga), torch.from_numpy(gq),
                     torch.from_numpy(gs))
        return torch.from_numpy(L)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        ga, gq, gs = ctx.grads
        return (grad_loss[:, None] * ga, grad_loss * gq,
                grad_loss * gs if ctx.needs_input_grad[2] else None, None, None)


def _loss_from_stats(loss, a, q, s, y, n_outputs):
    """Per-example losses (m,) of the layer's loss from its statistics, in
    torch (the formulas of :meth:`fastsparse.losses.Loss.values`, defined
    once for NumPy and torch).

    ``y`` are the target values with duplicates merged (a later duplicate
    has value 0), so that every formula may treat the K entries as
    distinct.
    """
    if isinstance(loss, CallableLoss):
        return _CallableLossFunction.apply(a, q, s, y, loss)
    return loss.values(a, q, s, y, n_outputs)


def _first_occurrence(idx):
    """For each entry of each row of ``idx`` (m, K), the column of the first
    entry of the row with the same index."""
    m, K = idx.shape
    order = np.argsort(idx, axis=1, kind="stable")
    srt = np.take_along_axis(idx, order, axis=1)
    new = np.ones((m, K), dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    start = np.maximum.accumulate(np.where(new, np.arange(K), 0), axis=1)
    first = np.empty_like(order)
    np.put_along_axis(first, order, np.take_along_axis(order, start, axis=1),
                      axis=1)
    return first


# ----------------------------------------------------------------- module
class FactoredOutput(torch.nn.Module):
    """A fastsparse layer and its loss as the output of a torch model.

    ``forward(h, targets)`` returns the layer's loss (``layer.loss``:
    squared error, spherical softmax, Taylor softmax, z-loss or a
    callable; see :mod:`fastsparse.losses`) written in torch as a function
    of the statistics ``(a, q, s)`` of :func:`spherical_stats`, summed over
    the minibatch.  ``backward()`` then gives the lower layers their exact
    gradients and **updates the fastsparse layer in place**, by one exact
    SGD step with learning rate :attr:`lr` on the gradient of the scalar
    being differentiated (so ``(loss / m).backward()`` trains the layer on
    the mean).  With the same learning rate and weight decay this equals
    ``torch.optim.SGD`` over a dense ``nn.Linear(n_hidden, n_outputs)``
    trained on the same loss of the full output, to rounding.

    Parameters
    ----------
    layer : FactoredOutputLayer or NaiveOutputLayer
        The output layer (not copied).  Its state is not a ``Parameter``:
        optimisers, ``.to()``, ``.double()`` and ``state_dict()`` do not
        see it (save it or its ``weights()`` separately).
    lr : float
        The layer's SGD learning rate, finite and >= 0 (0 freezes it).
    weight_decay : float, default 0
        L2 decay of the layer's weights and bias, as
        ``torch.optim.SGD(weight_decay=)``; ``lr * weight_decay < 1``.
    reduction : {"sum", "mean", "none"}, default "sum"
        How the per-example losses are combined.  ``"mean"`` divides the
        gradient, hence the layer's update, by m; ``"none"`` returns the
        (m,) losses.

    Attributes
    ----------
    layer : FactoredOutputLayer or NaiveOutputLayer
    lr, weight_decay : float
        Validated on assignment; may be changed between steps (schedules).

    Notes
    -----
    * No update happens in eval mode (``model.eval()``: a backward then
      only computes dL/dh) nor under ``torch.no_grad()`` (no graph).
    * One backward per forward, before the next update: see
      :func:`spherical_stats`.  Gradient clipping, gradient scaling or
      momentum of the torch optimiser do not apply to the layer, whose
      step is taken during ``backward()`` (plain SGD, optionally with
      weight decay).
    * ``h`` must be a CPU tensor of the layer's dtype (no implicit cast);
      a non-contiguous ``h`` is copied to a contiguous one.
    * Duplicate indices in one example are merged as the layers do (their
      values are summed); a callable loss refuses them, as it needs
      distinct targets.

    Examples
    --------
    >>> import torch, fastsparse
    >>> from fastsparse.torch import FactoredOutput
    >>> _ = torch.manual_seed(0)
    >>> out = FactoredOutput(fastsparse.FactoredOutputLayer(
    ...     1000, 8, loss="spherical_softmax", seed=0), lr=0.05)
    >>> h = torch.randn(4, 8, requires_grad=True)
    >>> loss = out(h, torch.tensor([1, 2, 3, 4]))
    >>> loss.backward()            # dL/dh for h, and the layer's SGD step
    >>> h.grad.shape
    torch.Size([4, 8])
    """

    def __init__(self, layer, lr, *, weight_decay=0.0, reduction="sum"):
        super().__init__()
        self.layer = _check_layer(layer)
        self.lr = lr
        self.weight_decay = weight_decay
        if reduction not in ("sum", "mean", "none"):
            raise ValueError("reduction must be 'sum', 'mean' or 'none', got "
                             f"{reduction!r}")
        self.reduction = reduction

    @property
    def lr(self):
        """The layer's learning rate."""
        return self._lr

    @lr.setter
    def lr(self, value):
        value = _check_real(value, "lr")
        if getattr(self, "_weight_decay", 0.0):
            _check_real(self._weight_decay, "weight_decay", lr=value)
        self._lr = value

    @property
    def weight_decay(self):
        """The layer's L2 weight decay."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay = _check_real(value, "weight_decay", lr=self._lr)

    def forward(self, h, targets):
        """The loss of the minibatch.

        Parameters
        ----------
        h : torch.Tensor of shape (m, n_hidden)
            Hidden activations: CPU, the layer's dtype.
        targets : int tensor/array of shape (m,), or tuple (indices, values)
            One target of value 1 per example, or ``indices`` (m, K) int
            with ``values`` (m, K) float tensor/array or None (ones).  A
            values tensor that requires grad receives its gradient
            (built-in losses only).

        Returns
        -------
        torch.Tensor
            0-dim (``reduction="sum"`` or ``"mean"``) or (m,), of h's dtype.
        """
        layer = self.layer
        h = _check_hidden(h, layer)
        m = h.shape[0]
        idx, values = self._targets(targets, m)
        train = self.training and torch.is_grad_enabled()
        a, q, s = spherical_stats(h, layer, idx, self._lr if train else 0.0,
                                  weight_decay=self._weight_decay if train else 0.0)
        f64 = torch.float64
        L = _loss_from_stats(layer.loss, a.to(f64), q.to(f64),
                             None if s is None else s.to(f64), values,
                             layer.n_outputs).to(h.dtype)
        if self.reduction == "sum":
            return L.sum()
        if self.reduction == "mean":
            return L.mean() if m else L.sum()
        return L

    def _targets(self, targets, m):
        """(indices (m, K) int64, merged values (m, K) float64 tensor)."""
        layer = self.layer
        if isinstance(targets, tuple):
            if len(targets) != 2:
                raise ValueError("targets: a tuple must be (indices, values), "
                                 f"got a tuple of length {len(targets)}")
            idx = _check_indices(targets[0], m, layer.n_outputs, "targets indices")
            values = targets[1]
        else:
            if isinstance(targets, (list, range)):
                targets = np.asarray(targets)
            if isinstance(targets, (torch.Tensor, np.ndarray)):
                shape = tuple(targets.shape)
            else:
                raise TypeError("targets must be an int tensor or array of shape "
                                "(m,) or a tuple (indices, values), got "
                                f"{type(targets).__name__}")
            if shape != (m,):
                raise ValueError(f"targets: an index tensor must have shape "
                                 f"(m,) = ({m},), got {shape}; use (indices, "
                                 f"values) for several targets per example")
            idx = _check_indices(targets.reshape(m, 1), m, layer.n_outputs,
                                 "targets")
            values = None
        values = self._values(values, idx.shape)
        K = idx.shape[1]
        if K > 1:
            first = _first_occurrence(idx)
            dup = first != np.arange(K)
            if isinstance(layer.loss, CallableLoss) and dup.any():
                raise ValueError("targets: a callable loss needs distinct indices "
                                 "in each example; merge the duplicates first")
            if layer.loss.name == "z_loss" and (first != 0).any():
                i = int(np.flatnonzero((first != 0).any(axis=1))[0])
                raise ValueError(f"targets: the z_loss needs exactly one target "
                                 f"per example; example {i} has "
                                 f"{len(np.unique(idx[i]))} distinct indices")
            if dup.any():     # sum the values of duplicates into the first one
                values = torch.zeros_like(values).scatter_add(
                    1, torch.from_numpy(first), values)
        elif K == 0 and layer.loss.name == "z_loss" and m:
            raise ValueError("targets: the z_loss needs exactly one target per "
                             "example; got none")
        return idx, values

    @staticmethod
    def _values(values, shape):
        if values is None:
            return torch.ones(shape, dtype=torch.float64)
        if isinstance(values, torch.Tensor):
            _check_cpu(values, "targets values")
            if values.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"targets values must be float32 or float64, "
                                f"got {values.dtype}")
        else:
            arr = np.asarray(values)
            if arr.dtype not in (np.float32, np.float64):
                raise TypeError(f"targets values must be a float32 or float64 "
                                f"array, got dtype {arr.dtype}")
            values = torch.from_numpy(np.array(arr, dtype=np.float64))
        if tuple(values.shape) != shape:
            raise ValueError(f"targets values must have the shape of the "
                             f"indices {shape}, got {tuple(values.shape)}")
        values = values.to(torch.float64)
        if not bool(torch.isfinite(values.detach()).all()):
            raise ValueError("targets values contain a non-finite value (NaN or Inf)")
        return values

    def extra_repr(self):
        wd = f", weight_decay={self._weight_decay:g}" if self._weight_decay else ""
        red = f", reduction={self.reduction!r}" if self.reduction != "sum" else ""
        return f"layer={self.layer!r}, lr={self._lr:g}{wd}{red}"
