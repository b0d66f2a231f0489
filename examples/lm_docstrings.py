"""A neural language model on the Python standard library's own prose.

An end-to-end example of :mod:`fastsparse.torch`: a small n-gram neural
language model (Bengio et al. 2003) -- embeddings of the previous n words,
concatenated, one or two tanh hidden layers, then an output layer over the
whole vocabulary -- is trained on real English text that is on every machine
with Python: the docstrings and comments of the standard library (or any
text file, ``--text``).

Two copies of the model start from the same initial weights and take the
same SGD steps on the same minibatches:

* **dense**: the output layer is a ``torch.nn.Linear(d, D)`` and the loss is
  written on all D outputs in torch (what one would write without
  fastsparse); every step costs O(D d) in that layer;
* **factored**: the output layer is a :class:`fastsparse.FactoredOutputLayer`
  built from the dense copy's initial weights and bias, used through
  :class:`fastsparse.torch.FactoredOutput`; a step costs O(d^2) per example.

Both are trained with the squared error and with the spherical softmax (a
loss of the spherical family that defines probabilities,
``p_j = (o_j^2 + eps) / (||o||^2 + D eps)``).  The script reports both
copies' training-loss curves (which must coincide: the method is exact), the
held-out loss, the wall-clock time of each copy for the whole training step
and for the output layer alone, and the nearest neighbours of a few frequent
words among the learned output embeddings (rows of W).  A PNG plot of the
curves is written when matplotlib is installed.

The corpus (reading, vocabulary, examples, unigram model) is in
``lm_data.py`` and the report (tables, nearest neighbours, plot) in
``lm_report.py``, beside this script.  Run ``python
examples/lm_docstrings.py --help`` for the options.  The report
goes to stdout, progress bars to stderr.

Notes
-----
Each training step is split at the hidden layer ``h`` (``h.detach()``) so
that the output layer's forward, backward and update can be timed apart from
the rest; backpropagating ``h.grad`` into the body afterwards gives the same
gradients as one ``loss.backward()`` through the whole model.

Modelling choices (the same for both copies): the output bias starts at the
unigram model of the training targets and W at small random values
(``--init-scale``), so that the loss starts at the unigram model's and every
output starts away from 0, where ``-log(o^2 + eps)`` is unstable; the
spherical softmax uses ``eps = 0.1`` (with 0.01 the training becomes so
sensitive that two float32 runs of the same dense model part within a few
hundred steps).  The losses are the mean over the minibatch.

In float32 the two copies agree to rounding (~1e-7) at first, but training
amplifies rounding differences: with the default spherical softmax run the
per-step losses differ by ~1e-5 after 3000 steps and ~2e-4 after 4000, and
another float32 rounding of the dense model (``--naive-reference``) drifts
at a similar rate from a smaller start.  In float64 the same run ends with
per-step losses within 5e-14 and W within 7e-13: the method is exact.
"""
import argparse
import copy
import json
import math
import sys
import sysconfig
import time

import numpy as np

from fastsparse.utils import ProgressBar, format_table, format_time, max_rel_diff, status

# the corpus and the report, in the files beside this script
from lm_data import (build_dataset, read_stdlib, read_text, stdlib_files,  # isort: skip
                     unigram_baselines, unigram_bias)
from lm_report import (cosine_neighbours, default_probe_words,  # isort: skip
                       environment, jsonable, plot_curves, report_loss)

#: the two losses trained by default
LOSSES = ("squared", "spherical_softmax")
#: default learning rates (lower layers, output layer) per loss, for the mean
#: loss of a minibatch of tanh hidden units
DEFAULT_LR = {"squared": (0.5, 0.05), "spherical_softmax": (1.0, 1.0)}


# =============================================================== the model
def full_loss(loss, o, y, eps):
    """Per-example losses written on all D outputs (the dense reference).

    Parameters
    ----------
    loss : {"squared", "spherical_softmax"}
    o : torch.Tensor of shape (m, D)
    y : torch.Tensor of int64, shape (m,)
    eps : float
        The spherical softmax's eps.

    Returns
    -------
    torch.Tensor of shape (m,)
        ``||o - onehot(y)||^2``, or ``-log p_y`` with
        ``p_j = (o_j^2 + eps) / sum_k (o_k^2 + eps)``.
    """
    import torch

    rows = torch.arange(o.shape[0])
    if loss == "squared":
        t = torch.zeros_like(o)
        t[rows, y] = 1
        return ((o - t) ** 2).sum(1)
    e = o * o + eps
    return torch.log(e.sum(1)) - torch.log(e[rows, y])


def build_body(n_words, n_context, n_embed, n_hidden, hidden_layers, dtype):
    """Embeddings of the previous words -> concat -> (Linear -> tanh) x L.

    The embedding has sparse gradients (a step touches only the rows of the
    words in the minibatch).

    Returns
    -------
    torch.nn.Sequential
        Input int64 (m, n_context), output (m, n_hidden).
    """
    import torch
    from torch import nn

    layers = [nn.Embedding(n_words, n_embed, sparse=True), nn.Flatten(),
              nn.Linear(n_context * n_embed, n_hidden), nn.Tanh()]
    for _ in range(hidden_layers - 1):
        layers += [nn.Linear(n_hidden, n_hidden), nn.Tanh()]
    return nn.Sequential(*layers).to({"float32": torch.float32,
                                      "float64": torch.float64}[dtype])


class DenseCopy:
    """The model with an ``nn.Linear`` output layer, trained by SGD.

    Parameters
    ----------
    body : torch.nn.Module
    out : torch.nn.Linear
    loss : str
    eps : float
    lr, lr_out : float
        Learning rates of the body and of the output layer.
    """

    name = "dense"

    def __init__(self, body, out, loss, eps, lr, lr_out):
        import torch

        self.body, self.out, self.loss, self.eps = body, out, loss, eps
        self.opt_body = torch.optim.SGD(body.parameters(), lr=lr)
        self.opt_out = torch.optim.SGD(out.parameters(), lr=lr_out)

    def head_train(self, h, y):
        """Mean loss; its backward computes the dense gradients of W, b."""
        return full_loss(self.loss, self.out(h), y, self.eps).mean()

    def head_update(self):
        self.opt_out.step()
        self.opt_out.zero_grad()

    def head_losses(self, h, y):
        return full_loss(self.loss, self.out(h), y, self.eps)

    def weights(self):
        return self.out.weight.detach().numpy().copy()

    def bias(self):
        return self.out.bias.detach().numpy().copy()


class FactoredCopy(DenseCopy):
    """The model with a :class:`fastsparse.FactoredOutputLayer`.

    The layer starts from the given dense weights and bias and is trained
    through :class:`fastsparse.torch.FactoredOutput` (its SGD step is taken
    inside ``backward()``).  ``layer_class=fastsparse.NaiveOutputLayer``
    gives the same model with fastsparse's dense reference layer (NumPy
    arithmetic on the full W: another float32 rounding of the dense model).
    """

    name = "factored"

    def __init__(self, body, W, b, loss, eps, lr, lr_out, layer_class=None):
        import torch

        import fastsparse
        from fastsparse.torch import FactoredOutput

        if layer_class is None:
            layer_class = fastsparse.FactoredOutputLayer
        lobj = (fastsparse.losses.SphericalSoftmax(eps=eps)
                if loss == "spherical_softmax" else loss)
        self.layer = layer_class.from_weights(W, bias=b, loss=lobj)
        self.body, self.loss, self.eps = body, loss, eps
        self.head = FactoredOutput(self.layer, lr_out, reduction="mean")
        # per-example losses without update, for the held-out loss
        self.eval_head = FactoredOutput(self.layer, 0.0, reduction="none")
        self.opt_body = torch.optim.SGD(body.parameters(), lr=lr)

    def head_train(self, h, y):
        return self.head(h, y)

    def head_update(self):
        pass        # done in backward()

    def head_losses(self, h, y):
        return self.eval_head(h, y)

    def weights(self):
        return self.layer.weights()

    def bias(self):
        return self.layer.bias()


def train_step(model, x, y):
    """One SGD step of a copy on a minibatch.

    Returns
    -------
    loss : float
        Mean loss of the minibatch (before the step).
    t_step, t_out : float
        Wall-clock seconds of the whole step and of its output-layer part
        (forward, loss, backward down to h, update of the output layer).
    """
    t0 = time.perf_counter()
    model.opt_body.zero_grad()
    h = model.body(x)
    hd = h.detach().requires_grad_()
    t1 = time.perf_counter()
    L = model.head_train(hd, y)
    L.backward()
    model.head_update()
    t2 = time.perf_counter()
    h.backward(hd.grad)
    model.opt_body.step()
    t3 = time.perf_counter()
    return L.item(), t3 - t0, t2 - t1


def evaluate(model, X, Y, chunk=1024):
    """Mean per-example loss of a copy over examples (no update)."""
    import torch

    if len(Y) == 0:
        return float("nan")
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(Y), chunk):
            x = torch.from_numpy(X[s:s + chunk])
            y = torch.from_numpy(Y[s:s + chunk])
            total += float(model.head_losses(model.body(x), y).double().sum())
    return total / len(Y)

def max_rel_curve_diff(a, b):
    """max_t |a_t - b_t| / |b_t| of two loss curves."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(float).tiny)))


def train_pair(loss, data, args, progress_stream=None):
    """Train the dense and the factored copy side by side with one loss.

    Both copies (and the naive reference, with ``--naive-reference``) start
    from the same weights (``torch.manual_seed(args.seed)``) and take the
    same minibatches, in an order drawn from ``args.seed``.  The held-out
    loss is measured on a fixed sample every ``args.eval_every`` steps
    (outside the timed parts), and on all held-out examples at the end.

    Parameters
    ----------
    loss : {"squared", "spherical_softmax"}
    data : dict
        As returned by :func:`build_dataset`.
    args : argparse.Namespace
        As returned by :func:`parse_args`.
    progress_stream : file-like, optional
        Where the progress bar goes, default ``sys.stderr``.

    Returns
    -------
    dict
        ``loss_dense``, ``loss_factored`` (mean training loss per step),
        ``time_step_*`` and ``time_output_*`` (seconds per step, whole step
        and output layer alone), ``eval_steps``, ``eval_losses`` (held-out
        sample, (n_evals, 2)), ``heldout_dense``, ``heldout_factored``,
        ``heldout_initial``, ``heldout_unigram``, the relative differences
        ``loss_rel_diff``, ``heldout_rel_diff``, ``weights_rel_diff``,
        ``bias_rel_diff``, ``neighbours`` (of the factored copy's W),
        ``neighbours_same_in_dense``, ``health`` (the factored layer's), the
        learning rates, and ``*_naive`` entries with the naive reference.

    Raises
    ------
    FloatingPointError
        If a loss becomes non-finite (learning rates too large).
    """
    import torch


    vocab = data["vocab"]
    D = len(vocab)
    eps = args.eps
    lr, lr_out = DEFAULT_LR[loss]
    lr = args.lr if args.lr is not None else lr
    lr_out = args.lr_output if args.lr_output is not None else lr_out
    tdtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]

    torch.manual_seed(args.seed)
    body = build_body(D, args.context, args.embed, args.hidden,
                      args.hidden_layers, args.dtype)
    out = torch.nn.Linear(args.hidden, D).to(tdtype)
    with torch.no_grad():
        bound = args.init_scale / math.sqrt(args.hidden)
        out.weight.uniform_(-bound, bound)
        if args.bias_init == "unigram":
            out.bias.copy_(torch.from_numpy(unigram_bias(vocab.counts, loss, eps)))
        else:
            out.bias.zero_()
    W0 = out.weight.detach().numpy().copy()
    b0 = out.bias.detach().numpy().copy()
    dense = DenseCopy(body, out, loss, eps, lr, lr_out)
    factored = FactoredCopy(copy.deepcopy(body), W0, b0, loss, eps, lr, lr_out)
    copies = [dense, factored]
    if args.naive_reference:
        import fastsparse

        copies.append(FactoredCopy(copy.deepcopy(body), W0, b0, loss, eps, lr,
                                   lr_out, layer_class=fastsparse.NaiveOutputLayer))
    n = len(copies)

    X, Y = data["X_train"], data["Y_train"]
    Xh, Yh = data["X_heldout"], data["Y_heldout"]
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 3]))
    n_eval = min(len(Yh), args.eval_examples)
    ev = rng.permutation(len(Yh))[:n_eval]
    Xe, Ye = Xh[ev], Yh[ev]

    steps, m = args.steps, args.batch_size
    losses = np.zeros((n, steps))
    t_step = np.zeros((n, steps))
    t_out = np.zeros((n, steps))
    eval_steps, eval_losses = [], []

    def eval_now(step):
        eval_steps.append(step)
        eval_losses.append([evaluate(c, Xe, Ye) for c in copies])

    perm, pos = rng.permutation(len(Y)), 0
    with ProgressBar(steps, f"training {n} copies, {loss}",
                     stream=progress_stream) as bar:
        for s in range(steps):
            if args.eval_every and s % args.eval_every == 0:
                eval_now(s)
            if pos + m > len(perm):
                perm, pos = rng.permutation(len(Y)), 0
            batch = perm[pos:pos + m]
            pos += m
            x, y = torch.from_numpy(X[batch]), torch.from_numpy(Y[batch])
            # alternate which of the two timed copies goes first (both see
            # the caches the other left); the naive reference comes last
            order = ((0, 1) if s % 2 == 0 else (1, 0)) + tuple(range(2, n))
            for i in order:
                losses[i, s], t_step[i, s], t_out[i, s] = train_step(copies[i], x, y)
            if not np.all(np.isfinite(losses[:, s])):
                raise FloatingPointError(
                    f"{loss}: non-finite loss at step {s} ({losses[:, s]}); "
                    f"lower the learning rates")
            bar.update()
    if args.eval_every:
        eval_now(steps)

    heldout = [evaluate(c, Xh, Yh) for c in copies]
    W = [c.weights() for c in copies]
    b = [c.bias() for c in copies]

    probe = args.probe_words or default_probe_words(vocab)
    nb_fac = cosine_neighbours(W[1], vocab, probe, args.neighbours, args.neighbour_pool)
    nb_den = cosine_neighbours(W[0], vocab, probe, args.neighbours, args.neighbour_pool)
    same_nb = sum([w for w, _ in nb_fac[k]] == [w for w, _ in nb_den[k]]
                  for k in nb_fac)
    result = {
        "loss": loss, "lr": lr, "lr_output": lr_out,
        "eps": eps if loss == "spherical_softmax" else None,
        "loss_dense": losses[0], "loss_factored": losses[1],
        "time_step_dense": t_step[0], "time_step_factored": t_step[1],
        "time_output_dense": t_out[0], "time_output_factored": t_out[1],
        "eval_steps": eval_steps, "eval_losses": np.array(eval_losses).reshape(-1, n)[:, :2],
        "heldout_dense": heldout[0], "heldout_factored": heldout[1],
        "heldout_initial": (eval_losses[0] if eval_losses else [np.nan] * 2),
        "heldout_unigram": unigram_baselines(vocab.counts, Yh, loss, eps),
        "loss_rel_diff": max_rel_curve_diff(losses[1], losses[0]),
        "heldout_rel_diff": abs(heldout[1] - heldout[0]) / abs(heldout[0]),
        "weights_rel_diff": max_rel_diff(W[1], W[0]),
        "bias_rel_diff": max_rel_diff(b[1], b[0]),
        "neighbours": nb_fac, "neighbours_same_in_dense": same_nb,
        "health": factored.layer.health(),
    }
    if n == 3:
        result.update({
            "loss_naive": losses[2], "time_step_naive": t_step[2],
            "time_output_naive": t_out[2], "heldout_naive": heldout[2],
            "naive_loss_rel_diff": max_rel_curve_diff(losses[2], losses[0]),
            "naive_heldout_rel_diff": abs(heldout[2] - heldout[0]) / abs(heldout[0]),
            "naive_weights_rel_diff": max_rel_diff(W[2], W[0]),
            "naive_bias_rel_diff": max_rel_diff(b[2], b[0]),
        })
    return result

# ==================================================================== CLI
def parse_args(argv=None):
    """Parse the command line (default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(
        description="Train a small neural language model on the standard "
                    "library's docstrings and comments (or --text FILE) with a "
                    "dense nn.Linear output layer and with fastsparse's "
                    "factored layer, side by side, and compare them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--text", metavar="FILE",
                   help="train on this UTF-8 text file (paragraphs separated by "
                        "blank lines) instead of the standard library")
    g.add_argument("--no-tests", dest="tests", action="store_false",
                   help="skip the standard library's test packages")
    g.add_argument("--max-files", type=int, metavar="N",
                   help="read only N standard library files (a random sample)")
    g.add_argument("--min-count", type=int, default=2,
                   help="vocabulary: words seen at least this often in the "
                        "training part")
    g.add_argument("--max-vocab", type=int, metavar="N",
                   help="vocabulary: at most the N most frequent words")
    g.add_argument("--heldout", type=float, default=0.05, metavar="FRACTION",
                   help="fraction of the files (paragraphs) held out")
    g = p.add_argument_group("model and training")
    g.add_argument("--loss", action="append", choices=LOSSES,
                   help="loss to train with (repeat for several; default both)")
    g.add_argument("--context", type=int, default=3, metavar="N",
                   help="number of previous words seen by the model")
    g.add_argument("--embed", type=int, default=64, help="word embedding size")
    g.add_argument("--hidden", type=int, default=128, metavar="d",
                   help="hidden units (inputs of the output layer)")
    g.add_argument("--hidden-layers", type=int, default=1, choices=(1, 2))
    g.add_argument("--batch-size", type=int, default=64, metavar="M")
    g.add_argument("--steps", type=int, default=4000, help="SGD steps per loss")
    g.add_argument("--lr", type=float,
                   help="learning rate of the lower layers (default per loss: "
                        + ", ".join(f"{k} {v[0]:g}" for k, v in DEFAULT_LR.items())
                        + ")")
    g.add_argument("--lr-output", type=float,
                   help="learning rate of the output layer (default per loss: "
                        + ", ".join(f"{k} {v[1]:g}" for k, v in DEFAULT_LR.items())
                        + ")")
    g.add_argument("--init-scale", type=float, default=0.01,
                   help="initial output weights: uniform in +-(init-scale / "
                        "sqrt(d)) (nn.Linear's default is 1)")
    g.add_argument("--bias-init", choices=("unigram", "zero"), default="unigram",
                   help="initial output bias: the unigram model of the training "
                        "targets (see unigram_bias) or 0")
    g.add_argument("--eps", type=float, default=0.1,
                   help="eps of the spherical softmax")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the data split, initial weights and minibatches")
    g.add_argument("--threads", type=int, default=1,
                   help="threads of torch and of the BLAS (threadpoolctl)")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval-every", type=int, default=500, metavar="STEPS",
                   help="held-out loss on a sample every STEPS steps (0: never)")
    g.add_argument("--eval-examples", type=int, default=2000, metavar="N",
                   help="size of that held-out sample (the final held-out loss "
                        "uses all held-out examples)")
    g.add_argument("--probe-words", type=lambda s: [w for w in s.split(",") if w],
                   metavar="W1,W2,...",
                   help="words whose nearest neighbours are shown (default: the "
                        "8 most frequent words of 4+ letters)")
    g.add_argument("--neighbours", type=int, default=5, metavar="K",
                   help="number of neighbours shown per word")
    g.add_argument("--neighbour-pool", type=int, default=2000, metavar="N",
                   help="neighbours are drawn from the N most frequent words "
                        "(0: all)")
    g.add_argument("--naive-reference", action="store_true",
                   help="also train a third copy with fastsparse.NaiveOutputLayer "
                        "(dense NumPy arithmetic), to show how far another float32 "
                        "rounding of the dense model drifts from the torch copy")
    g.add_argument("--plot", default="lm_docstrings.png", metavar="PNG",
                   help="where to write the plot ('' for none; needs matplotlib)")
    g.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.loss = args.loss or list(LOSSES)
    args.neighbour_pool = args.neighbour_pool or None
    for name in ("context", "embed", "hidden", "batch_size", "steps", "threads",
                 "min_count"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.heldout < 1:
        p.error("--heldout must be in [0, 1)")
    return args


def main(argv=None, stream=None, progress_stream=None):
    """Run the example.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments, default ``sys.argv[1:]``.
    stream : file-like, optional
        Where the report goes, default ``sys.stdout``.
    progress_stream : file-like, optional
        Where progress bars and status lines go, default ``sys.stderr``.

    Returns
    -------
    dict
        ``config``, ``data`` (corpus statistics), ``results`` (one dict per
        loss, see :func:`train_pair`) and ``plot`` (the PNG path or None).
    """
    import torch
    from threadpoolctl import threadpool_limits


    args = parse_args(argv)
    out = sys.stdout if stream is None else stream
    err = sys.stderr if progress_stream is None else progress_stream

    def emit(text=""):
        out.write(text + "\n")
        out.flush()

    t_start = time.perf_counter()
    if args.text:
        source = args.text
        with status(f"reading {args.text}", err):
            units = read_text(args.text)
    else:
        files = stdlib_files(include_tests=args.tests)
        source = f"docstrings and comments of {sysconfig.get_paths()['stdlib']}"
        if args.max_files is not None and args.max_files < len(files):
            pick = np.random.default_rng(np.random.SeedSequence([args.seed, 1])).choice(
                len(files), args.max_files, replace=False)
            files = [files[i] for i in sorted(pick)]
            source += f" ({args.max_files} files drawn at random)"
        units = read_stdlib(files, err)
    with status("building the vocabulary and the examples", err):
        data = build_dataset(units, args.context, args.heldout, args.min_count,
                             args.max_vocab, args.seed)
    t_data = time.perf_counter() - t_start
    vocab = data["vocab"]
    D = len(vocab)
    if len(data["Y_train"]) == 0:
        raise SystemExit("no training example: the corpus is empty")

    n_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads):
            emit("fastsparse example: a neural language model on real text, "
                 "dense vs factored output layer")
            emit()
            config = [
                ("corpus", source),
                ("units (train / held out)", f"{data['n_units'][0]:,} / "
                                             f"{data['n_units'][1]:,} "
                                             f"{'paragraphs' if args.text else 'files'}"),
                ("words", f"{data['n_words']:,}"),
                ("vocabulary D", f"{D:,} (words seen >= {args.min_count} times"
                                 + (f", at most {args.max_vocab}" if args.max_vocab else "")
                                 + ", plus <unk>, <s>, </s>)"),
                ("examples (train / held out)", f"{len(data['Y_train']):,} / "
                                                f"{len(data['Y_heldout']):,}"),
                ("<unk> targets (train)", f"{vocab.counts[0] / max(1, vocab.counts.sum()):.1%}"),
                ("model", f"{args.context} previous words -> embeddings {args.embed} "
                          f"-> concat -> {args.hidden_layers} x (Linear {args.hidden}, "
                          f"tanh) -> output layer {args.hidden} -> {D:,} (with bias)"),
                ("training", f"{args.steps} SGD steps of {args.batch_size} examples "
                             f"per loss (mean loss), both copies on the same "
                             f"minibatches, {args.dtype}"),
                ("threads", f"{args.threads} (torch.set_num_threads and "
                            f"threadpoolctl; the factored layer runs its d x d "
                            f"BLAS calls on 1 thread by default)"),
                ("corpus preparation", format_time(t_data)),
            ]
            emit(format_table(["configuration", ""], config, "<<"))
            emit()
            emit(format_table(["environment", ""], environment(torch), "<<"))
            emit()
            results = [train_pair(loss, data, args, err) for loss in args.loss]
    finally:
        torch.set_num_threads(n_threads)

    for r in results:
        report_loss(r, args, emit)
    plot = None
    if args.plot:
        with status(f"writing the plot {args.plot}", err):
            written = plot_curves(results, args.plot)
        if written:
            plot = args.plot
            emit(f"plot: {args.plot}")
        else:
            emit("plot: not written -- matplotlib is not installed "
                 "(pip install matplotlib)")
    emit(f"total wall-clock time: {format_time(time.perf_counter() - t_start)}")
    report = {"config": vars(args),
              "data": {"vocabulary": D, "n_train": len(data["Y_train"]),
                       "n_heldout": len(data["Y_heldout"]),
                       "n_words": data["n_words"], "units": data["n_units"],
                       "prep_seconds": t_data},
              "results": results, "plot": plot}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(jsonable(report), f, indent=1)
        emit(f"results: {args.json}")
    return report


if __name__ == "__main__":
    main()
