"""Data-parallel training of a fastsparse output layer with torch.distributed.

Importing this module needs PyTorch (with ``torch.distributed``); ``import
fastsparse`` never imports it.

Every rank holds a full replica of the output layer (V, U, its inverse,
M, ...).  Instead of all-reducing a D x d gradient, the ranks exchange what
the layer's update is made of -- each example's hidden state, its target
indices and the gradients dL/da, dL/dq, dL/ds of the loss, about
``m (d + 2K + 2)`` numbers per rank and step -- and every replica applies
the *same* update of the global minibatch (all ranks' examples in rank
order) locally.  The replicas stay bit for bit identical (the layer is
deterministic given identical inputs), and each rank gets back the exact
gradient of its own examples for the layers below, which DDP (or anything
else) trains as usual::

    import datetime, numpy as np, torch, torch.distributed as dist
    import fastsparse
    from fastsparse.distributed import DistributedFactoredOutput

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    layer = fastsparse.FactoredOutputLayer(D, d, loss="spherical_softmax",
                                           seed=0)          # same seed everywhere
    out = DistributedFactoredOutput(layer, lr=0.05, reduction="mean")
    body = torch.nn.parallel.DistributedDataParallel(make_body())
    opt = torch.optim.SGD(body.parameters(), lr=0.05)
    for x, y in my_shard_of_batches:                        # y: int64 (m,)
        opt.zero_grad()
        loss = out(body(x), y)           # collective: every rank, same order
        loss.backward()                  # exchange + global update + dL/dh
        opt.step()

Semantics (``mode="batch"``, the default): with DDP averaging the lower
layers' gradients over the ranks, the output layer is trained on the
gradient of the *mean over ranks* of each rank's loss (``average=True``):
with ``reduction="mean"`` the whole model is exactly one process training
on the concatenated minibatch with ``reduction="mean"``.  ``mode="online"``
applies one exact SGD step of learning rate ``lr`` per example of the
concatenated minibatch, in rank order (``layer.step(mode="online")`` on the
concatenation; built-in losses only).

Public names: :class:`DistributedFactoredOutput`, :func:`fingerprint`, and
the exceptions :class:`DistributedError`, :class:`PeerInputError` and
:class:`ReplicaDivergenceError`.  See the README, "Data-parallel training".
"""
import datetime
import hashlib
import struct
import time

import numpy as np

from . import torch as _fstorch          # the friendly error without torch
from .torch import (FactoredOutput, _UPDATES, _as_array, _check_hidden,
                    _check_indices, _check_layer, _loss_from_stats,
                    _stats_tensors)
from .torch import spherical_stats as _fs_spherical_stats
from ._base import OutputLayerBase
from ._validation import (check_bool, check_hidden, check_int, check_real,
                          parse_targets)

import torch

if not torch.distributed.is_available():     # pragma: no cover - build-dependent
    raise ModuleNotFoundError(
        "fastsparse.distributed needs a PyTorch build with torch.distributed "
        "(the CPU wheels from PyPI have it)", name="torch.distributed")
import torch.distributed as dist  # noqa: E402

__all__ = ["DistributedFactoredOutput", "fingerprint", "DistributedError",
           "PeerInputError", "ReplicaDivergenceError"]

del _fstorch


# ------------------------------------------------------------- exceptions
class DistributedError(RuntimeError):
    """An exchange between the ranks failed or timed out: a rank died,
    raised, or stopped making the same collective calls.

    The process group is unusable afterwards (every later collective call
    of the module raises this again at once).  The replica of the rank that
    raises is at the state of its last completed step; restart every rank
    from the last checkpoint.

    Attributes
    ----------
    operation : str
        What was being exchanged (``"header"``, ``"minibatch"``, ...).
    rank, world_size : int
    """

    def __init__(self, message, *, operation=None, rank=None, world_size=None):
        super().__init__(message)
        self.operation = operation
        self.rank = rank
        self.world_size = world_size


class PeerInputError(ValueError):
    """A training call refused on this rank because another rank's call
    was refused (invalid input there), or because the ranks' calls
    disagree (different lr, mode, layer configuration, number of targets
    per example, ...).  No replica was changed.

    The rank whose own input was invalid raises its own exception instead
    (TypeError, ValueError, IndexError, as the layer does).

    Attributes
    ----------
    ranks : list of int
        The ranks whose input was refused, or that disagree with rank 0.
    errors : dict
        rank -> message of its refusal (invalid input only).
    """

    def __init__(self, message, *, ranks=(), errors=None):
        super().__init__(message)
        self.ranks = list(ranks)
        self.errors = dict(errors or {})


class ReplicaDivergenceError(RuntimeError):
    """The replicas of the output layer are not identical any more (their
    fingerprints differ, or they have applied different numbers of steps).

    Attributes
    ----------
    groups : dict
        Fingerprint (hex) or step count -> list of the ranks that have it.
    ranks : list of int
        The ranks outside the group of rank 0.
    step : int
        The module's step count when it was found.
    """

    def __init__(self, message, *, groups=None, ranks=(), step=None):
        super().__init__(message)
        self.groups = dict(groups or {})
        self.ranks = list(ranks)
        self.step = step


# ------------------------------------------------------------- fingerprint
def _state_arrays(layer):
    # Read-only use of the layer's checkpoint view of its state (the same
    # arrays save() writes); nothing here modifies them.
    arrays = layer._checkpoint_arrays()
    big = "V" if "V" in arrays else "W"
    return arrays, big


def fingerprint(layer, rows=None):
    """A digest (32 bytes, hex) of the exact state of a fastsparse layer.

    Two layers have the same fingerprint when their state arrays (for the
    factored layer V, U, U^-1, M and the sums; for the naive one W and b)
    are bitwise identical, up to the choice of rows below.

    Parameters
    ----------
    layer : FactoredOutputLayer or NaiveOutputLayer
    rows : int array, optional
        Hash only these rows of the D x d array (V or W) and all of the
        small arrays: O(d^2 + len(rows) d), the cheap check done on a
        schedule.  Default: every array entirely, O(D d) (SHA-256, about
        0.7-1.5 GB/s).

    Returns
    -------
    str
    """
    _check_layer(layer)
    arrays, big = _state_arrays(layer)
    h = hashlib.sha256()       # SHA-NI: the fastest of hashlib's here
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        if name == big and rows is not None:
            h.update(np.ascontiguousarray(a[np.asarray(rows, dtype=np.int64)]))
        else:
            h.update(np.ascontiguousarray(a))
    return h.hexdigest()


# ------------------------------------------------------------- the header
# One fixed-size record per rank and training call, exchanged before
# anything is applied: whether the rank's input is valid (and why not),
# its minibatch size and number of targets, the settings that must agree
# on every rank, the step counts, and on schedule a fingerprint.
_FIELDS = (("magic", "8s"), ("status", "q"), ("m", "q"), ("K", "q"),
           ("steps", "q"), ("updates", "q"), ("mode", "q"),
           ("reduction", "q"), ("average", "q"), ("lr", "d"),
           ("weight_decay", "d"), ("n_outputs", "q"), ("n_hidden", "q"),
           ("dtype", "8s"), ("has_bias", "q"), ("track_sum", "q"),
           ("loss", "16s"), ("online_block", "q"), ("single_thread_blas", "q"),
           ("layer_class", "24s"), ("check", "q"), ("digest", "32s"),
           ("error", "400s"))
_HEADER = struct.Struct("<" + "".join(f for _, f in _FIELDS))
_NAMES = tuple(n for n, _ in _FIELDS)
_MAGIC = b"FSDIST01"
# the fields every rank's call must agree on
_AGREE = ("mode", "reduction", "average", "lr", "weight_decay", "n_outputs",
          "n_hidden", "dtype", "has_bias", "track_sum", "loss", "online_block",
          "single_thread_blas", "layer_class")
_MODES = ("batch", "online")
_REDUCTIONS = ("sum", "mean", "none")
# status records (checkpoints, set-up): ok flag + message
_STATUS = struct.Struct("<q400s")


def _loss_signature(loss):
    text = f"{type(loss).__name__}:{loss.name}:{np.asarray(loss.params).tobytes().hex()}"
    func = getattr(loss, "func", None)
    if func is not None:
        text += ":" + getattr(func, "__module__", "") + "." + \
            getattr(func, "__qualname__", type(func).__name__)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _encode(text, size=400):
    return text.encode("utf-8")[:size]


def _decode(raw):
    return raw.rstrip(b"\0").decode("utf-8", errors="ignore")


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"


def _seconds(timeout):
    """A timeout (seconds or a timedelta) as a positive number of seconds."""
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    return check_real(timeout, "timeout", 0, open_low=True)


# ------------------------------------------------------- autograd functions
class _BatchStats(torch.autograd.Function):
    """(a, q, s) computed locally (before the header exchange, as part of
    the validation); the backward exchanges the minibatch and applies the
    global update."""

    @staticmethod
    def forward(ctx, h, anchor, stats, module, call):
        ctx.save_for_backward(h)
        ctx.module, ctx.call = module, call
        return _stats_tensors(*stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a, grad_q, grad_s):
        (h,) = ctx.saved_tensors
        grad_h = ctx.module._batch_backward(
            ctx.call, _as_array(h), _as_array(grad_a), _as_array(grad_q),
            None if grad_s is None else _as_array(grad_s))
        grad_h = torch.from_numpy(grad_h) if ctx.needs_input_grad[0] else None
        return grad_h, None, None, None, None


class _OnlineLoss(torch.autograd.Function):
    """Per-example losses of an online step already applied; the backward
    hands back each example's dL/dh (computed at the weights it saw)."""

    @staticmethod
    def forward(ctx, h, anchor, L, G):
        ctx.G = torch.from_numpy(G)
        return torch.from_numpy(L)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return grad_loss.to(ctx.G.dtype)[:, None] * ctx.G, None, None, None


class _Exchange:
    """Fixed-size records gathered from every rank of a process group, with
    bounded waiting and clear errors."""

    def __init__(self, group, timeout):
        self.group = group
        self.timeout = timeout
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.step = 0
        self.stats = {"exchanges": 0, "bytes_sent": 0, "bytes_received": 0,
                      "seconds": 0.0}
        self.broken = None

    def all_gather(self, record, size, operation):
        """Every rank's ``record`` (bytes or uint8 array, padded to ``size``
        bytes), as a (world_size, size) uint8 array, in rank order."""
        if self.broken is not None:
            raise DistributedError(
                f"fastsparse.distributed: the process group failed earlier "
                f"({self.broken}); restart every rank from the last checkpoint",
                operation=operation, rank=self.rank, world_size=self.world_size)
        buf = torch.zeros(size, dtype=torch.uint8)
        n = len(record)
        if n:
            buf[:n] = (torch.frombuffer(bytearray(record), dtype=torch.uint8)
                       if isinstance(record, (bytes, bytearray))
                       else torch.from_numpy(record))
        out = torch.empty(self.world_size * size, dtype=torch.uint8)
        start = time.perf_counter()
        try:
            _all_gather_single(out, buf, group=self.group)
        except Exception as exc:     # gloo: RuntimeError / DistBackendError
            elapsed = time.perf_counter() - start
            self.broken = f"{operation} exchange at step {self.step}: {exc}"
            raise DistributedError(
                f"fastsparse.distributed: the {operation} exchange of step "
                f"{self.step} failed on rank {self.rank} of {self.world_size} "
                f"after {elapsed:.1f} s (timeout {self.timeout:g} s): another "
                f"rank died, raised, or stopped making the same training "
                f"calls. This replica is in the state its last completed step "
                f"left (the failed step changed nothing here); restart every "
                f"rank from the last checkpoint. Cause: {exc}",
                operation=operation, rank=self.rank,
                world_size=self.world_size) from exc
        self.stats["exchanges"] += 1
        self.stats["bytes_sent"] += size
        self.stats["bytes_received"] += (self.world_size - 1) * size
        self.stats["seconds"] += time.perf_counter() - start
        return out.numpy().reshape(self.world_size, size)

    def agree_status(self, error, operation):
        """Exchange an ok/error status; raise on every rank if any failed
        (this rank's own exception where it failed)."""
        rec = _STATUS.pack(0 if error is None else 1,
                           b"" if error is None else _encode(_describe(error)))
        rows = self.all_gather(rec, _STATUS.size, operation)
        failed = {}
        for r in range(self.world_size):
            bad, msg = _STATUS.unpack(rows[r].tobytes())
            if bad:
                failed[r] = _decode(msg)
        if failed:
            if error is not None:
                raise error
            raise PeerInputError(
                f"fastsparse.distributed: {operation} failed on rank(s) "
                f"{sorted(failed)}: " + "; ".join(f"rank {r}: {m}" for r, m in
                                                  sorted(failed.items())),
                ranks=sorted(failed), errors=failed)


# ----------------------------------------------------------------- module
class DistributedFactoredOutput(FactoredOutput):
    """:class:`fastsparse.torch.FactoredOutput` trained data-parallel.

    Every rank of the process group holds an identical replica of the
    layer.  A training forward (``module.train()`` and grad enabled) is a
    *collective* call: every rank must make it, in the same order.  It
    validates the rank's input and exchanges a small header with every
    rank, so that an input refused on one rank (shape, dtype, index out of
    range, NaN...) is refused on every rank before any replica changes.
    The update is then applied, identically on every replica, to the
    concatenation of all ranks' minibatches in rank order:

    * ``mode="batch"``: the forward computes the rank's statistics
      (a, q, s) and the layer's loss (or write another loss of the family
      in torch on :meth:`spherical_stats`); ``backward()`` gathers every rank's
      hidden states, target indices and dL/da, dL/dq, dL/ds, applies one
      minibatch update of the global minibatch on every replica, and
      returns this rank's dL/dh.  With ``average=True`` (DDP's convention)
      the layer follows the gradient of the mean over ranks of their
      losses: ``lr / world_size`` on the summed gradient.
    * ``mode="online"``: the forward gathers the hidden states and targets
      and applies ``layer.step(H, targets, lr, mode="online")`` to the
      concatenation on every replica (one exact update per example, in rank
      order); it returns this rank's losses, each at the weights it saw,
      and ``backward()`` hands back their dL/dh.  The update happens in the
      forward (an online loss depends on the earlier examples' updates);
      built-in losses only; ``reduction`` and ``average`` only shape the
      returned loss and the lower layers' gradient.

    In eval mode or under ``torch.no_grad()`` the forward is local (no
    exchange, no update), so ranks may evaluate independently.

    Parameters
    ----------
    layer : FactoredOutputLayer or NaiveOutputLayer
        This rank's replica.  Every rank must start from the same state
        (the same constructor arguments and seed, or the same checkpoint):
        checked at construction (``check_initial``).
    lr, weight_decay, reduction
        As in :class:`~fastsparse.torch.FactoredOutput`; every rank must
        use the same values (checked at every step).
    mode : {"batch", "online"}, default "batch"
    average : bool, default True
        Batch mode: train the layer on the mean over ranks of the ranks'
        losses (as DDP averages the lower layers' gradients); ``False``:
        on their sum.
    group : ProcessGroup, optional
        The group to exchange on.  Default: a new gloo group over all the
        ranks, created here (so every rank must construct its module at the
        same point of the program), with ``timeout``; it is separate from
        DDP's, so the two never interleave their collectives.
    timeout : float or timedelta, default 60
        Seconds that an exchange waits for the other ranks before raising
        :class:`DistributedError` (only for the group created here; a
        given group keeps its own timeout).
    check_every : int, default 100
        Every ``check_every`` steps the header carries a fingerprint of
        the replica (its d x d matrices and the rows of V the last step
        touched: O(d^2 + m K d)) and the ranks compare them; 0 disables.
        :meth:`check_replicas` compares the whole state on demand.
    check_initial : bool, default True
        Compare the whole state of the replicas (a full fingerprint,
        O(D d)) at construction.

    Attributes
    ----------
    rank, world_size : int
    steps : int
        Training steps exchanged so far by this module.
    stats : dict
        Cumulative exchange statistics of this rank: ``exchanges``,
        ``bytes_sent`` (this rank's records, padded as sent), ``bytes_received``
        (the other ranks'), ``seconds`` (in collective calls).

    Raises
    ------
    DistributedError
        An exchange failed or timed out (a rank died, raised or stopped).
    PeerInputError
        This rank's call was refused because of another rank's (invalid
        input there, or calls that disagree); nothing was changed.
    ReplicaDivergenceError
        The replicas differ (fingerprints or step counts).
    """

    def __init__(self, layer, lr, *, weight_decay=0.0, reduction="sum",
                 mode="batch", average=True, group=None, timeout=60.0,
                 check_every=100, check_initial=True):
        super().__init__(layer, lr, weight_decay=weight_decay,
                         reduction=reduction)
        if mode not in _MODES:
            raise ValueError(f"mode must be 'batch' or 'online', got {mode!r}")
        if mode == "online" and not self.layer.loss.online:
            raise ValueError(f"mode='online' is not available with the "
                             f"{self.layer.loss.name!r} loss; use mode='batch'")
        self.mode = mode
        self.average = check_bool(average, "average")
        self.check_every = check_int(check_every, "check_every", 0)
        self.timeout = _seconds(timeout)
        self._x = _Exchange(_make_group(group, self.timeout), self.timeout)
        self.rank, self.world_size = self._x.rank, self._x.world_size
        self.steps = 0
        self._touched = np.zeros(0, dtype=np.int64)
        self._sample = np.unique(np.linspace(0, self.layer.n_outputs - 1, 16)
                                 .astype(np.int64))
        if check_initial:
            self.check_replicas(full=True)

    # ------------------------------------------------------------ exchange
    @property
    def group(self):
        """The process group the module exchanges on."""
        return self._x.group

    @property
    def stats(self):
        """Cumulative exchange statistics of this rank (a dict)."""
        return self._x.stats

    def _all_gather(self, record, size, operation):
        self._x.step = self.steps
        return self._x.all_gather(record, size, operation)

    def _agree_status(self, error, operation):
        self._x.step = self.steps
        return self._x.agree_status(error, operation)

    def _header(self, status, error, m, K, digest):
        layer = self.layer
        return _HEADER.pack(
            _MAGIC, status, m, K, self.steps, _UPDATES.get(layer, 0),
            _MODES.index(self.mode), _REDUCTIONS.index(self.reduction),
            int(self.average), self._lr, self._weight_decay, layer.n_outputs,
            layer.n_hidden, layer.dtype.str.encode(), int(layer.has_bias),
            int(layer.track_sum), _loss_signature(layer.loss),
            int(getattr(layer, "online_block", -1)),
            int(getattr(layer, "single_thread_blas", -1)),
            type(layer).__name__.encode()[:24], int(digest is not None),
            b"" if digest is None else bytes.fromhex(digest),
            _encode(error or ""))

    def _exchange_headers(self, local_exc, m, K):
        """The header exchange of a training call, and every check that
        must pass on all ranks before anything is applied.  Returns the
        headers (dicts, rank order).  Every decision here is taken from
        the gathered headers only, so every rank takes the same one."""
        check = (self.check_every > 0 and self.steps > 0
                 and self.steps % self.check_every == 0)
        digest = None
        if check and local_exc is None:
            digest = fingerprint(self.layer, self._check_rows())
        rec = self._header(int(local_exc is not None),
                           None if local_exc is None else _describe(local_exc),
                           m, K, digest)
        rows = self._all_gather(rec, _HEADER.size, "header")
        hdrs = [dict(zip(_NAMES, _HEADER.unpack(r.tobytes()))) for r in rows]
        if any(h["magic"] != _MAGIC for h in hdrs):
            bad = [r for r, h in enumerate(hdrs) if h["magic"] != _MAGIC]
            raise DistributedError(
                f"fastsparse.distributed: rank(s) {bad} sent something else "
                f"than a training header: the ranks are not making the same "
                f"collective calls", operation="header", rank=self.rank,
                world_size=self.world_size)
        # 1. invalid input somewhere: refused everywhere
        failed = {r: _decode(h["error"]) for r, h in enumerate(hdrs) if h["status"]}
        if failed:
            msg = (f"fastsparse.distributed: training call of step {self.steps} "
                   f"refused on every rank because the input of rank(s) "
                   f"{sorted(failed)} was refused (no replica changed): "
                   + "; ".join(f"rank {r}: {e}" for r, e in sorted(failed.items())))
            if local_exc is not None:
                if hasattr(local_exc, "add_note"):
                    local_exc.add_note(msg)
                raise local_exc
            raise PeerInputError(msg, ranks=sorted(failed), errors=failed)
        # 2. calls that disagree
        diff = [f for f in _AGREE if any(h[f] != hdrs[0][f] for h in hdrs)]
        if diff:
            ranks = sorted({r for r, h in enumerate(hdrs)
                            for f in diff if h[f] != hdrs[0][f]})
            detail = "; ".join(
                f"{f}: " + ", ".join(f"rank {r} {_show(f, h[f])}"
                                     for r, h in enumerate(hdrs)) for f in diff)
            raise PeerInputError(
                f"fastsparse.distributed: the ranks' training calls disagree "
                f"(every rank must use the same settings and an identical "
                f"layer configuration); nothing was changed. {detail}",
                ranks=ranks)
        # 3. replicas out of step
        for f in ("steps", "updates"):
            if any(h[f] != hdrs[0][f] for h in hdrs):
                groups = {}
                for r, h in enumerate(hdrs):
                    groups.setdefault(h[f], []).append(r)
                ranks = [r for r, h in enumerate(hdrs) if h[f] != hdrs[0][f]]
                raise ReplicaDivergenceError(
                    f"fastsparse.distributed: the replicas have applied "
                    f"different numbers of updates ({f}: "
                    + ", ".join(f"{v} on rank(s) {rs}" for v, rs in groups.items())
                    + f"); ranks {ranks} differ from rank 0. A rank trained "
                    f"its layer outside this module or missed a step.",
                    groups=groups, ranks=ranks, step=self.steps)
        # 4. fingerprints, on schedule
        if check:
            self._compare_digests([h["digest"].hex() for h in hdrs], "scheduled")
        # 5. one number of targets per example
        Ks = [h["K"] for h in hdrs if h["m"] > 0]
        if len(set(Ks)) > 1:
            raise PeerInputError(
                "fastsparse.distributed: every rank must give the same number "
                "of targets per example K (the global minibatch is one (M, K) "
                "index matrix); got " + ", ".join(
                    f"rank {r}: K = {h['K']}" for r, h in enumerate(hdrs)
                    if h["m"] > 0) + ". Nothing was changed.",
                ranks=[r for r, h in enumerate(hdrs)
                       if h["m"] > 0 and h["K"] != Ks[0]])
        return hdrs

    def _compare_digests(self, digests, what):
        groups = {}
        for r, dg in enumerate(digests):
            groups.setdefault(dg, []).append(r)
        if len(groups) > 1:
            ranks = [r for r, dg in enumerate(digests) if dg != digests[0]]
            raise ReplicaDivergenceError(
                f"fastsparse.distributed: the replicas of the output layer "
                f"diverged ({what} check at step {self.steps}): ranks {ranks} "
                f"differ from rank 0 (" + "; ".join(
                    f"ranks {rs}: {dg[:16]}" for dg, rs in groups.items())
                + "). Restart every rank from the last checkpoint; check that "
                  "every rank runs the same BLAS, thread settings and "
                  "fastsparse version.", groups=groups, ranks=ranks,
                step=self.steps)

    def _check_rows(self):
        return np.union1d(self._touched, self._sample)

    def check_replicas(self, full=True):
        """Compare the replicas' fingerprints (a collective call).

        Parameters
        ----------
        full : bool, default True
            True: the whole state (O(D d) hashing per rank, SHA-256 at
            about 0.7-1.5 GB/s);
            False: the cheap scheduled check (the d x d matrices, the rows
            of V touched by the last step and a fixed sample of rows).

        Returns
        -------
        str
            The common fingerprint (hex).

        Raises
        ------
        ReplicaDivergenceError
            On every rank, naming the ranks that differ from rank 0.
        """
        digest = fingerprint(self.layer, None if full else self._check_rows())
        rec = struct.pack("<q32s", self.steps, bytes.fromhex(digest))
        rows = self._all_gather(rec, 40, "fingerprint")
        vals = [struct.unpack("<q32s", r.tobytes()) for r in rows]
        self._compare_digests([f"{s}:{dg.hex()}" for s, dg in vals],
                              "full" if full else "cheap")
        return digest

    # ------------------------------------------------------------- forward
    def forward(self, h, targets):
        """The loss of this rank's minibatch (see the class docstring).

        A training forward is a collective call; in eval mode or under
        ``torch.no_grad()`` it is :class:`FactoredOutput`'s local forward.
        """
        if not self._training_call():
            return super().forward(h, targets)
        if self.mode == "online":
            L, m = self._online_forward(h, targets)
        else:
            parsed = {}

            def parse(m):
                idx, parsed["values"] = self._targets(targets, m)
                return idx
            (a, q, s), m = self._batch_stats(h, parse)
            f64 = torch.float64
            L = _loss_from_stats(self.layer.loss, a.to(f64), q.to(f64),
                                 None if s is None else s.to(f64),
                                 parsed["values"], self.layer.n_outputs).to(a.dtype)
        if self.reduction == "sum":
            return L.sum()
        if self.reduction == "mean":
            return L.mean() if m else L.sum()
        return L

    def spherical_stats(self, h, indices):
        """Differentiable statistics ``(a, q, s)`` of this rank's examples,
        to write any loss of the spherical family in torch (batch mode).

        The distributed counterpart of :func:`fastsparse.torch.spherical_stats`
        with the module's ``lr`` and ``weight_decay``: in training (a
        collective call, as :meth:`forward`), ``backward()`` of any scalar
        of them exchanges every rank's hidden states, indices and dL/da,
        dL/dq, dL/ds and applies the update of the global minibatch on every
        replica (``lr / world_size`` with ``average=True``).  In eval mode
        or under ``torch.no_grad()``: local, no update.

        Parameters
        ----------
        h : torch.Tensor of shape (m, n_hidden)
        indices : int tensor or array of shape (m, K)

        Returns
        -------
        a : torch.Tensor (m, K); q : (m,); s : (m,) or None
        """
        if self.mode != "batch":
            raise ValueError("spherical_stats() needs mode='batch': an online "
                             "update needs a loss the layer knows (the "
                             "module's forward)")
        if not self._training_call():
            return _fs_spherical_stats(h, self.layer, indices, 0.0)
        n = self.layer.n_outputs
        stats, _ = self._batch_stats(
            h, lambda m: _check_indices(indices, m, n, "indices"))
        return stats

    def _training_call(self):
        return self.training and torch.is_grad_enabled()

    def _batch_stats(self, h, parse):
        """The collective part of a batch-mode training call: validate this
        rank's input (``parse(m)`` -> indices), the header exchange, then
        the differentiable (a, q, s) whose backward exchanges and applies
        the global update.  Returns ((a, q, s), m)."""
        layer = self.layer
        local_exc = stats = None
        m = K = 0
        try:
            h = _check_hidden(h, layer)
            m = h.shape[0]
            idx = parse(m)
            K = idx.shape[1]
            stats = layer.forward(_as_array(h), idx)     # validates H (finite) too
        except Exception as exc:                  # refused everywhere below
            local_exc = exc
        hdrs = self._exchange_headers(local_exc, m, K)
        anchor = torch.empty(0, dtype=h.dtype, requires_grad=True)
        call = {"hdrs": hdrs, "idx": idx, "steps": self.steps,
                "lr": self._lr, "weight_decay": self._weight_decay}
        return _BatchStats.apply(h.contiguous(), anchor, stats, self, call), m

    def _online_forward(self, h, targets):
        """The collective online step; returns (this rank's losses, m)."""
        layer = self.layer
        local_exc = None
        m = K = 0
        try:
            h = _check_hidden(h, layer)
            m = h.shape[0]
            idx, raw = self._online_targets(targets, m)
            # what layer.step() will check on the concatenation, checked
            # here on this rank's part, so that it cannot fail there
            H = check_hidden(_as_array(h), layer.n_hidden, layer.dtype)
            if idx.shape[1]:
                layer.loss.check_targets(parse_targets(
                    (idx, raw), m, layer.n_outputs, layer.dtype))
            K = idx.shape[1]
        except Exception as exc:                  # refused everywhere below
            local_exc = exc
        hdrs = self._exchange_headers(local_exc, m, K)
        anchor = torch.empty(0, dtype=h.dtype, requires_grad=True)
        L, G = self._online_step(hdrs, H, idx, raw)
        return _OnlineLoss.apply(h.contiguous(), anchor, L, G), m

    def _online_targets(self, targets, m):
        """(indices, values (m, K) float64 array, duplicates not merged)."""
        idx, values = self._targets(targets, m)     # validates all of it
        if values.requires_grad:
            raise ValueError("targets values that require grad are not supported "
                             "in mode='online' (the update is applied in the "
                             "forward); use mode='batch'")
        if isinstance(targets, tuple) and targets[1] is not None:
            raw = self._values(targets[1], idx.shape).detach().numpy()
        else:
            raw = np.ones(idx.shape)
        return idx, np.ascontiguousarray(raw, dtype=np.float64)

    # ------------------------------------------------------------ payloads
    def _pack_rows(self, parts, m):
        """Concatenate per-row byte blocks of m rows: list of (m, k) arrays
        -> one (m, row_bytes) uint8 array."""
        cols = [np.ascontiguousarray(p).reshape(m, -1).view(np.uint8) for p in parts]
        return np.concatenate(cols, axis=1) if cols else np.zeros((m, 0), np.uint8)

    def _exchange_rows(self, hdrs, parts, specs, operation):
        """Gather per-row records of every rank.  ``parts``: this rank's
        arrays (m rows each); ``specs``: their (dtype, columns).  Returns
        the concatenations over the ranks, in rank order."""
        ms = [h["m"] for h in hdrs]
        m = ms[self.rank]
        widths = [np.dtype(dt).itemsize * c for dt, c in specs]
        row = sum(widths)
        size = max(ms) * row
        if size == 0:
            return [np.zeros((0, c), dtype=dt) for dt, c in specs]
        rec = self._pack_rows(parts, m).reshape(-1)
        rows = self._all_gather(rec, size, operation)
        blocks = [rows[r, :ms[r] * row].reshape(ms[r], row) for r in range(self.world_size)]
        allrows = np.concatenate(blocks, axis=0)
        out, col = [], 0
        for (dt, c), w in zip(specs, widths):
            out.append(np.ascontiguousarray(allrows[:, col:col + w]).view(dt)
                       .reshape(-1, c))
            col += w
        return out

    def _offset(self, hdrs):
        return sum(h["m"] for h in hdrs[:self.rank])

    def _note_touched(self, idx_all):
        self._touched = np.unique(idx_all) if idx_all.size else \
            np.zeros(0, dtype=np.int64)

    def _batch_backward(self, call, H, grad_a, grad_q, grad_s):
        """The backward of a batch-mode training call: exchange, global
        minibatch update on this replica, this rank's dL/dH."""
        layer = self.layer
        if self.steps != call["steps"]:
            raise RuntimeError(
                "fastsparse.distributed: the output layer was updated since "
                "this forward; its gradient would be computed at other "
                "weights. Call backward once per forward, before the next "
                "training forward (no gradient accumulation over several "
                "forwards, no second backward through the same graph).")
        hdrs, idx = call["hdrs"], call["idx"]
        lr, wd = call["lr"], call["weight_decay"]
        m = H.shape[0]
        K = max([h["K"] for h in hdrs if h["m"] > 0], default=idx.shape[1])
        if K == 0:     # no targets: one dummy index with dL/da = 0
            K, idx = 1, np.zeros((m, 1), dtype=np.int64)
            grad_a = np.zeros((m, 1), dtype=layer.dtype)
        if lr == 0:    # every rank agreed on lr: nothing to exchange or apply
            return layer.backward(H, idx, grad_a, grad_q, grad_s, 0.0)
        dt = layer.dtype
        track = layer.track_sum
        gs = grad_s if grad_s is not None else np.zeros(m, dtype=dt)
        parts = [H, idx.astype(np.int64), grad_a.astype(dt, copy=False),
                 grad_q.astype(dt, copy=False)] + ([gs.astype(dt, copy=False)]
                                                   if track else [])
        specs = [(dt, layer.n_hidden), (np.int64, K), (dt, K), (dt, 1)] + \
            ([(dt, 1)] if track else [])
        got = self._exchange_rows(hdrs, parts, specs, "minibatch")
        H_all, idx_all, ga_all, gq_all = got[:4]
        gs_all = got[4].ravel() if track else None
        if self.average and self.world_size > 1:
            # the gradient of the mean over ranks: lr / W on the summed
            # gradient, the decay's lr * wd unchanged
            lr, wd = lr / self.world_size, wd * self.world_size
        self._note_touched(idx_all)
        try:
            grad_all = layer.backward(H_all, idx_all, ga_all, gq_all.ravel(),
                                      gs_all, lr, weight_decay=wd)
        finally:
            self.steps += 1
            _UPDATES[layer] = _UPDATES.get(layer, 0) + 1
        off = self._offset(hdrs)
        return np.ascontiguousarray(grad_all[off:off + m])

    def _online_step(self, hdrs, H, idx, raw):
        """The forward of an online training call: exchange, the online
        steps of the concatenated minibatch on this replica; this rank's
        (losses, dL/dH)."""
        layer = self.layer
        dt = layer.dtype
        m = H.shape[0]
        K = max([hd["K"] for hd in hdrs if hd["m"] > 0], default=idx.shape[1])
        if K == 0:     # no targets: one dummy index of value 0
            K, idx, raw = 1, np.zeros((m, 1), np.int64), np.zeros((m, 1))
        specs = [(dt, layer.n_hidden), (np.int64, K), (np.float64, K)]
        H_all, idx_all, val_all = self._exchange_rows(
            hdrs, [H, idx.astype(np.int64), raw], specs, "minibatch")
        self._note_touched(idx_all)
        if H_all.shape[0] == 0:
            L_all = np.zeros(0, dtype=dt)
            G_all = np.zeros((0, layer.n_hidden), dtype=dt)
        elif self._lr == 0:
            L_all, G_all = layer.loss_and_grad(H_all, (idx_all, val_all))
        else:
            try:
                L_all, G_all = layer.step(H_all, (idx_all, val_all), self._lr,
                                          mode="online",
                                          weight_decay=self._weight_decay)
            finally:
                self.steps += 1
                _UPDATES[layer] = _UPDATES.get(layer, 0) + 1
        off = self._offset(hdrs)
        return (np.ascontiguousarray(L_all[off:off + m]),
                np.ascontiguousarray(G_all[off:off + m]))

    # --------------------------------------------------------- checkpoints
    def save(self, path, *, src=0, check=True):
        """Write the layer's checkpoint from one rank (a collective call).

        Every rank must call it at the same step.  The replicas are first
        compared (a full fingerprint, unless ``check=False``), then rank
        ``src`` writes ``path`` with ``layer.save`` (atomic and durable),
        and the ranks exchange the outcome: a failed write raises on every
        rank (the writer's own OSError there, :class:`PeerInputError`
        elsewhere).  Load it on every rank with :meth:`load` (the path must
        be visible to all of them, e.g. a shared file system).  The lower
        layers and their optimiser are saved as usual (e.g.
        ``torch.save`` on one rank).

        Returns
        -------
        str
            The fingerprint of the saved state (full check) or None.
        """
        if not isinstance(src, (int, np.integer)) or isinstance(src, bool) or \
                not 0 <= src < self.world_size:
            raise ValueError(f"src must be a rank in [0, {self.world_size}), got {src!r}")
        digest = self.check_replicas(full=True) if check else None
        error = None
        if self.rank == src:
            try:
                self.layer.save(path)
            except Exception as exc:
                error = exc
        self._agree_status(error, "checkpoint write")
        return digest

    @classmethod
    def load(cls, path, lr, *, layer_class=None, loss=None, group=None,
             timeout=60.0, **kwargs):
        """A module whose replica is loaded from ``path`` on every rank (a
        collective call).

        A rank that cannot read the file (missing, corrupted:
        ``fastsparse.CheckpointError``) makes every rank raise; the loaded
        replicas are then compared (full fingerprint).  A run restarted
        from the checkpoint of :meth:`save` (with the lower layers' state
        and the same data) continues bit for bit.

        Parameters
        ----------
        path : str or os.PathLike
        lr : float
        layer_class : class, default FactoredOutputLayer
        loss : callable, optional
            For a layer saved with a callable loss.
        group, timeout, **kwargs
            As in the constructor.
        """
        if layer_class is None:
            from ._factored import FactoredOutputLayer as layer_class
        if not (isinstance(layer_class, type) and
                issubclass(layer_class, OutputLayerBase)):
            raise TypeError("layer_class must be FactoredOutputLayer or "
                            "NaiveOutputLayer")
        timeout = _seconds(timeout)
        group = _make_group(group, timeout)
        error, layer = None, None
        try:
            layer = (layer_class.load(path) if loss is None
                     else layer_class.load(path, loss=loss))
        except Exception as exc:
            error = exc
        _Exchange(group, timeout).agree_status(error, "checkpoint load")
        return cls(layer, lr, group=group, timeout=timeout, **kwargs)

    def extra_repr(self):
        return (super().extra_repr() + f", mode={self.mode!r}, "
                f"average={self.average}, rank={self.rank}, "
                f"world_size={self.world_size}")


def _show(field, value):
    if field in ("mode",):
        return _MODES[value]
    if field == "reduction":
        return _REDUCTIONS[value]
    if isinstance(value, bytes):
        return value.rstrip(b"\0").decode(errors="replace") if field in (
            "dtype", "layer_class") else value.hex()[:8]
    return repr(value)


# torch 2.13 renamed all_gather_into_tensor (deprecated) to all_gather_single
_all_gather_single = getattr(dist, "all_gather_single", None) or \
    dist.all_gather_into_tensor


def _make_group(group, timeout):
    if not dist.is_initialized():
        raise RuntimeError(
            "fastsparse.distributed: torch.distributed is not initialised; call "
            "torch.distributed.init_process_group() first (or use "
            "fastsparse.torch.FactoredOutput in a single process)")
    if group is not None:
        return group
    return dist.new_group(backend="gloo",
                          timeout=datetime.timedelta(seconds=timeout))
