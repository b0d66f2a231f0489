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

Run ``python examples/lm_docstrings.py --help`` for the options.  The report
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
import ast
import copy
import inspect
import io
import json
import math
import os
import re
import sys
import sysconfig
import time
import tokenize
from collections import Counter

import numpy as np

#: special tokens, at the first indices of the vocabulary
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
#: the two losses trained by default
LOSSES = ("squared", "spherical_softmax")
#: default learning rates (lower layers, output layer) per loss, for the mean
#: loss of a minibatch of tanh hidden units
DEFAULT_LR = {"squared": (0.5, 0.05), "spherical_softmax": (1.0, 1.0)}
#: directories of the standard library that are not prose: generated codec
#: tables (their comments are lists of character names), installed packages
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "encodings"}
TEST_DIRS = {"test", "tests", "idle_test"}
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")


# ============================================================== the corpus
def tokenize_words(text):
    """Lower-cased word tokens of a text (letters, with inner apostrophes).

    Parameters
    ----------
    text : str

    Returns
    -------
    list of str

    Examples
    --------
    >>> tokenize_words("Return the file's name (see os.path).")
    ['return', 'the', "file's", 'name', 'see', 'os', 'path']
    """
    return WORD_RE.findall(text.lower())


def stdlib_files(root=None, include_tests=True):
    """The ``.py`` files of the standard library, in sorted order.

    Parameters
    ----------
    root : str, optional
        Default ``sysconfig.get_paths()["stdlib"]``.
    include_tests : bool, default True
        Whether to include the test packages (``test``, ``tests``,
        ``idle_test`` directories).

    Returns
    -------
    list of str
        Paths; ``site-packages`` and the generated codec tables of
        ``encodings`` are skipped.
    """
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    skip = SKIP_DIRS if include_tests else SKIP_DIRS | TEST_DIRS
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if f.endswith(".py"))
    return files


_IGNORED = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING}


def extract_prose(source):
    """Docstrings and comments of a Python source file.

    A docstring is any statement made of string literals only (module,
    class and function docstrings, and attribute docstrings); comments on
    consecutive lines are joined into one text.  The file need not be valid
    Python: it is only tokenised, and the texts found before a tokenisation
    error are kept.

    Parameters
    ----------
    source : bytes
        The file's content (its encoding declaration is honoured).

    Returns
    -------
    list of str
        The texts, docstrings first, then comment blocks, each in file order.
    """
    docs, comments, line = [], [], []
    try:
        for tok in tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments.append((tok.start[0], tok.string.lstrip("#").strip()))
            elif tok.type in _IGNORED:
                continue
            elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                if line and all(t.type == tokenize.STRING for t in line):
                    try:
                        value = "".join(ast.literal_eval(t.string) for t in line)
                    except (ValueError, SyntaxError, TypeError, MemoryError):
                        value = None      # f-strings, bytes mixed with str
                    if isinstance(value, str):
                        docs.append(inspect.cleandoc(value))
                line = []
            else:
                line.append(tok)
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, ValueError):
        pass        # keep what was found before the error
    blocks, last = [], None
    for lineno, text in comments:
        if blocks and lineno == last + 1:
            blocks[-1].append(text)
        else:
            blocks.append([text])
        last = lineno
    return docs + [" ".join(b) for b in blocks]


def read_stdlib(files, progress_stream=None):
    """Word tokens of the docstrings and comments of some Python files.

    Parameters
    ----------
    files : list of str
    progress_stream : file-like, optional
        Where the progress bar goes, default ``sys.stderr``.

    Returns
    -------
    list of list of list of str
        Per file, its documents (a docstring or comment block), each a list
        of words; documents without words are dropped.
    """
    from fastsparse._demo import ProgressBar

    units = []
    with ProgressBar(len(files), "reading the docstrings and comments",
                     unit="files", stream=progress_stream) as bar:
        for path in files:
            try:
                with open(path, "rb") as f:
                    source = f.read()
            except OSError:
                source = b""
            docs = [tokenize_words(t) for t in extract_prose(source)]
            units.append([d for d in docs if d])
            bar.update()
    return units


def read_text(path):
    """Word tokens of a plain-text file, one unit per paragraph.

    Parameters
    ----------
    path : str
        A UTF-8 text file (undecodable bytes are replaced).  Paragraphs are
        separated by blank lines.

    Returns
    -------
    list of list of list of str
        Per paragraph, one document (its words).
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    paragraphs = (tokenize_words(p) for p in re.split(r"\n\s*\n", text))
    return [[p] for p in paragraphs if p]


class Vocabulary:
    """Words seen at least ``min_count`` times, plus special tokens.

    Index 0 is ``<unk>`` (every other word), 1 is ``<s>`` (padding of the
    context before a document's start: never a target) and 2 is ``</s>``
    (end of a document); then the words by decreasing count (ties in
    alphabetical order).

    Parameters
    ----------
    counts : collections.Counter
        Word counts (of the training part of the corpus).
    min_count : int, default 2
    max_size : int, optional
        Keep at most this many words (the most frequent).

    Attributes
    ----------
    words : list of str
        All tokens by index, special tokens first.
    index : dict
        Token -> index.
    counts : ndarray of int64
        The word counts given (0 for the special tokens);
        :func:`build_dataset` replaces them by the counts of each index as a
        target of the training examples (``<unk>`` and ``</s>`` included).
    """

    def __init__(self, counts, min_count=2, max_size=None):
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[:max_size]
        self.words = [UNK, BOS, EOS] + kept
        self.index = {w: i for i, w in enumerate(self.words)}
        self.counts = np.array([0, 0, 0] + [counts[w] for w in kept], dtype=np.int64)

    def __len__(self):
        return len(self.words)

    def encode(self, words):
        """Indices of a list of words (unknown words: 0)."""
        get = self.index.get
        return [get(w, 0) for w in words]


def make_examples(units, vocab, n_context):
    """(context, next word) pairs of every position of every document.

    Each document is preceded by ``n_context`` ``<s>`` and followed by
    ``</s>``; the contexts never cross documents.

    Parameters
    ----------
    units : list of list of list of str
    vocab : Vocabulary
    n_context : int

    Returns
    -------
    X : ndarray of int64, shape (N, n_context)
        Indices of the previous words.
    Y : ndarray of int64, shape (N,)
        Index of the next word.
    """
    bos, eos = vocab.index[BOS], vocab.index[EOS]
    stream, targets = [], []
    for unit in units:
        for doc in unit:
            start = len(stream) + n_context
            stream.extend([bos] * n_context)
            stream.extend(vocab.encode(doc))
            stream.append(eos)
            targets.append(np.arange(start, len(stream)))
    stream = np.array(stream, dtype=np.int64)
    if not targets:
        return np.zeros((0, n_context), np.int64), np.zeros(0, np.int64)
    pos = np.concatenate(targets)
    X = np.stack([stream[pos - n_context + j] for j in range(n_context)], axis=1)
    return X, stream[pos]


def build_dataset(units, n_context, heldout_fraction, min_count, max_vocab, seed):
    """Split the units, build the vocabulary on the training part, encode.

    Parameters
    ----------
    units : list of list of list of str
        Files (or paragraphs), each a list of documents.
    n_context : int
    heldout_fraction : float
        Fraction of the units held out (at least one unit when there are
        two or more).
    min_count, max_vocab : int
        See :class:`Vocabulary`.
    seed : int

    Returns
    -------
    dict
        ``vocab`` (:class:`Vocabulary`, with the training target counts),
        ``X_train``, ``Y_train``, ``X_heldout``, ``Y_heldout`` (see
        :func:`make_examples`), ``n_units`` (training and held-out units) and
        ``n_words`` (word tokens in all units).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    n = len(units)
    n_held = int(round(heldout_fraction * n))
    if heldout_fraction > 0 and n >= 2:
        n_held = min(max(1, n_held), n - 1)
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[:n_held]] = True
    train_units = [u for u, h in zip(units, held) if not h]
    held_units = [u for u, h in zip(units, held) if h]
    counts = Counter(w for u in train_units for doc in u for w in doc)
    vocab = Vocabulary(counts, min_count, max_vocab)
    X, Y = make_examples(train_units, vocab, n_context)
    Xh, Yh = make_examples(held_units, vocab, n_context)
    vocab.counts = np.bincount(Y, minlength=len(vocab)).astype(np.int64)
    return {"vocab": vocab, "X_train": X, "Y_train": Y, "X_heldout": Xh,
            "Y_heldout": Yh, "n_units": (n - n_held, n_held),
            "n_words": sum(len(doc) for u in units for doc in u)}


def unigram_probabilities(counts):
    """Add-one smoothed unigram probabilities of the training targets."""
    return (counts + 1.0) / (counts.sum() + len(counts))


def unigram_bias(counts, loss, eps, uniform=0.05):
    """An output bias that makes the initial model the unigram model.

    Parameters
    ----------
    counts : ndarray
        Target counts in the training data.
    loss : {"squared", "spherical_softmax"}
    eps : float
        The spherical softmax's eps.
    uniform : float, default 0.05
        Spherical softmax: weight of the uniform distribution in the
        initial model (it needs ``eps > 0``).

    Returns
    -------
    ndarray of float64
        Squared error: ``b = p`` (the squared error is minimised by the
        probabilities).  Spherical softmax: ``b = c sqrt(p)`` with
        ``c^2 = (1 - uniform) / uniform * D eps``, so that with ``W = 0`` the
        model gives ``(1 - uniform) p + uniform / D``.  Either way every
        output starts positive, away from the unstable point 0 of
        ``-log(a^2 + eps)``.
    """
    p = unigram_probabilities(counts)
    if loss == "squared":
        return p
    c2 = (1 - uniform) / uniform * len(counts) * eps
    return np.sqrt(c2 * p)


def unigram_baselines(counts, Y, loss, eps):
    """Held-out loss of the unigram distribution of the training targets.

    Parameters
    ----------
    counts : ndarray
        Target counts in the training data.
    Y : ndarray
        Held-out targets.
    loss : {"squared", "spherical_softmax"}
    eps : float
        Unused for the squared error.

    Returns
    -------
    float
        Mean per-example loss of the (add-one smoothed) unigram
        probabilities ``p``: ``1 - 2 p_y + ||p||^2`` for the squared error
        (the outputs ``o = p``) and ``-log p_y`` for the spherical softmax
        (a model that puts exactly ``p`` on each word).
    """
    p = unigram_probabilities(counts)
    if loss == "squared":
        return float(np.mean(1 - 2 * p[Y] + p @ p))
    return float(np.mean(-np.log(p[Y])))


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


def cosine_neighbours(W, vocab, words, k=5, pool=None):
    """The k nearest rows of W to each word's row, by cosine similarity.

    Parameters
    ----------
    W : ndarray of shape (D, d)
        Output embeddings (row j: word j).
    vocab : Vocabulary
    words : list of str
        Words of the vocabulary (others are skipped).
    k : int
    pool : int, optional
        Candidates: only the ``pool`` most frequent words (the rows of rare
        words were updated too rarely to have moved far from their random
        initial values).  Default: every word.

    Returns
    -------
    dict
        word -> list of (neighbour, cosine), best first; the special tokens
        are never neighbours.
    """
    Wn = W.astype(np.float64)
    Wn /= np.maximum(np.linalg.norm(Wn, axis=1, keepdims=True), 1e-300)
    end = len(vocab) if pool is None else min(len(vocab), 3 + pool)
    result = {}
    for w in words:
        i = vocab.index.get(w)
        if i is None or i < 3:
            continue
        sim = Wn[:end] @ Wn[i]
        sim[:3] = -np.inf
        if i < end:
            sim[i] = -np.inf
        best = np.argsort(-sim, kind="stable")[:k]
        result[w] = [(vocab.words[j], float(sim[j])) for j in best]
    return result


def default_probe_words(vocab, n=8, min_len=4):
    """The n most frequent words of at least ``min_len`` letters."""
    return [w for w in vocab.words[3:] if len(w) >= min_len][:n]


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

    from fastsparse._demo import ProgressBar

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
    from fastsparse._demo import max_rel_diff

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


# =================================================================== plot
def plot_curves(results, path, smooth=None):
    """Write a PNG of both copies' loss curves, one panel per loss.

    Top: training loss per step (moving average over ``smooth`` steps) of
    both copies, and their held-out loss at the evaluation points; bottom:
    the relative difference of the two copies' per-step losses (and of the
    naive reference's, when it was trained).

    Parameters
    ----------
    results : list of dict
        As returned by :func:`train_pair`.
    path : str
    smooth : int, optional
        Width of the moving average; default 1/50 of the number of steps.

    Returns
    -------
    bool
        False (and nothing written) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    n = len(results)
    fig = Figure(figsize=(5.2 * n, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False, sharex="col",
                        gridspec_kw={"height_ratios": [2.2, 1]})
    for j, r in enumerate(results):
        r = {k: np.asarray(v, dtype=np.float64) if k.startswith("loss_") else v
             for k, v in r.items()}
        ax, ax2 = axes[0, j], axes[1, j]
        steps = np.arange(len(r["loss_dense"]))
        w = max(1, len(steps) // 50) if smooth is None else smooth
        w = max(1, min(w, len(steps)))
        kernel = np.ones(w) / w
        for key, style in (("loss_dense", dict(color="tab:blue", lw=4, alpha=0.45,
                                               label="dense nn.Linear")),
                           ("loss_factored", dict(color="black", lw=1, ls="--",
                                                  label="factored (fastsparse)"))):
            ys = np.convolve(r[key], kernel, mode="valid")
            ax.plot(steps[w - 1:], ys, **style)
        ev = np.asarray(r["eval_losses"])
        if ev.size:
            ax.plot(r["eval_steps"], ev[:, 0], "o", color="tab:orange", ms=8,
                    alpha=0.6, label="held-out, dense")
            ax.plot(r["eval_steps"], ev[:, 1], "x", color="black", ms=6,
                    label="held-out, factored")
        ax.axhline(r["heldout_unigram"], color="gray", lw=0.8, ls=":",
                   label="held-out, unigram model")
        lo = min(r["loss_dense"].min(), r["heldout_unigram"])
        if r["loss_dense"].max() > 20 * lo > 0:
            ax.set_yscale("log")
        title = r["loss"].replace("_", " ")
        if r["eps"] is not None:
            title += f" (eps = {r['eps']:g})"
        ax.set_title(title)
        ax.set_ylabel(f"mean loss per example (training: avg of {w} steps)")
        ax.legend(fontsize=8)
        pairs = [("loss_factored", "factored vs dense", "tab:red", 1.0)]
        if "loss_naive" in r:
            pairs.append(("loss_naive", "NaiveOutputLayer vs dense", "tab:green", 0.6))
        for key, label, color, alpha in pairs:
            rel = (np.abs(r[key] - r["loss_dense"])
                   / np.maximum(np.abs(r["loss_dense"]), np.finfo(float).tiny))
            nz = rel > 0          # a log scale cannot show the equal steps
            ax2.semilogy(steps[nz], rel[nz], ".", ms=2, color=color, alpha=alpha,
                         label=f"{label} ({np.count_nonzero(~nz)} of {len(rel)} "
                               f"steps equal)")
        ax2.axhline(np.finfo(np.float32).eps, color="gray", lw=0.8, ls=":",
                    label="float32 eps")
        ax2.legend(fontsize=7, markerscale=4, loc="upper left")
        ax2.set_ylabel("rel. difference of the\nper-step training loss")
        ax2.set_xlabel("SGD step")
    fig.savefig(path, dpi=80)
    return True


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


def _jsonable(x):
    """``x`` with arrays as lists and non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


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

    from fastsparse._demo import environment_lines, format_table, format_time, status

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
            env = environment_lines()
            env.insert(3, ("PyTorch", f"{torch.__version__}, "
                                      f"{torch.get_num_threads()} thread(s)"))
            emit(format_table(["environment", ""], env, "<<"))
            emit()
            results = [train_pair(loss, data, args, err) for loss in args.loss]
    finally:
        torch.set_num_threads(n_threads)

    for r in results:
        _report(r, args, emit, format_table, format_time)
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
            json.dump(_jsonable(report), f, indent=1)
        emit(f"results: {args.json}")
    return report


def _report(r, args, emit, format_table, format_time):
    """Print the tables of one loss."""
    steps = len(r["loss_dense"])
    tenth = max(1, steps // 10)
    ts_d, ts_f = r["time_step_dense"].sum(), r["time_step_factored"].sum()
    to_d, to_f = r["time_output_dense"].sum(), r["time_output_factored"].sum()
    emit(f"== loss: {r['loss']}"
         + (f" (eps = {r['eps']:g})" if r["eps"] is not None else "")
         + f", lr {r['lr']:g} (lower layers), {r['lr_output']:g} (output layer)")
    emit()
    rows = [
        ["training time, whole steps", format_time(ts_d), format_time(ts_f),
         f"{ts_d / ts_f:.1f}x"],
        ["  of which the output layer", format_time(to_d), format_time(to_f),
         f"{to_d / to_f:.1f}x"],
        ["  of which the rest (body, sparse embeddings)", format_time(ts_d - to_d),
         format_time(ts_f - to_f), f"{(ts_d - to_d) / (ts_f - to_f):.2f}x"],
        ["time per step, median", format_time(np.median(r["time_step_dense"])),
         format_time(np.median(r["time_step_factored"])),
         f"{np.median(r['time_step_dense']) / np.median(r['time_step_factored']):.1f}x"],
        ["output layer per step, median", format_time(np.median(r["time_output_dense"])),
         format_time(np.median(r["time_output_factored"])),
         f"{np.median(r['time_output_dense']) / np.median(r['time_output_factored']):.1f}x"],
        [f"training loss, first {tenth} steps", f"{r['loss_dense'][:tenth].mean():.6g}",
         f"{r['loss_factored'][:tenth].mean():.6g}", ""],
        [f"training loss, last {tenth} steps", f"{r['loss_dense'][-tenth:].mean():.6g}",
         f"{r['loss_factored'][-tenth:].mean():.6g}", ""],
        ["held-out loss, initial (sample)"] + [
            f"{v:.6g}" if math.isfinite(v) else "n/a (--eval-every 0)"
            for v in r["heldout_initial"]] + [""],
        ["held-out loss, final (all)", f"{r['heldout_dense']:.6g}",
         f"{r['heldout_factored']:.6g}", ""],
        ["held-out loss of the unigram model", f"{r['heldout_unigram']:.6g}", "", ""],
    ]
    if r["loss"] == "spherical_softmax":
        rows.append(["held-out perplexity (exp loss)", f"{math.exp(r['heldout_dense']):.1f}",
                     f"{math.exp(r['heldout_factored']):.1f}",
                     f"unigram {math.exp(r['heldout_unigram']):.1f}"])
    emit(format_table(["", "dense", "factored", "speed-up"], rows))
    emit()
    checks = [
        ["max rel. diff of the per-step training losses", f"{r['loss_rel_diff']:.2e}"],
        ["rel. diff of the final held-out losses", f"{r['heldout_rel_diff']:.2e}"],
        ["max rel. diff of the final output weights W / bias",
         f"{r['weights_rel_diff']:.2e} / {r['bias_rel_diff']:.2e}"],
    ]
    if "loss_naive" in r:
        checks += [
            ["naive reference vs dense: per-step training losses",
             f"{r['naive_loss_rel_diff']:.2e}"],
            ["naive reference vs dense: final held-out losses",
             f"{r['naive_heldout_rel_diff']:.2e}"],
            ["naive reference vs dense: final W / bias",
             f"{r['naive_weights_rel_diff']:.2e} / {r['naive_bias_rel_diff']:.2e}"],
        ]
    emit(format_table(["factored vs dense", ""], checks))
    emit()
    nb = r["neighbours"]
    emit(f"nearest neighbours (cosine) among the rows of the factored copy's W "
         f"(the dense copy's W gives the same lists for "
         f"{r['neighbours_same_in_dense']} of {len(nb)} words):")
    for w, lst in nb.items():
        emit(f"  {w:>12}: " + ", ".join(f"{v} {c:.2f}" for v, c in lst))
    emit()


if __name__ == "__main__":
    main()
