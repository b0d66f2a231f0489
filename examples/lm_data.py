"""The corpus of examples/lm_docstrings.py: prose of the standard library.

Reads the docstrings and comments of the Python standard library (or a
text file), builds the vocabulary and the (context, next word) examples,
and the unigram model that the output bias starts from.
"""
import ast
import inspect
import io
import os
import re
import sysconfig
import tokenize
from collections import Counter

import numpy as np

from fastsparse.datasets import context_windows
from fastsparse.losses import SphericalSoftmax, get_loss
from fastsparse.utils import ProgressBar

#: special tokens, at the first indices of the vocabulary
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
#: directories of the standard library that are not prose: generated codec
#: tables (their comments are lists of character names), installed packages
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "encodings"}
TEST_DIRS = {"test", "tests", "idle_test"}
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")


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
    ``</s>`` (:func:`fastsparse.datasets.context_windows`); the contexts
    never cross documents.

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
    docs = (vocab.encode(doc) for unit in units for doc in unit)
    return context_windows(docs, n_context, vocab.index[BOS], vocab.index[EOS])


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

    The loss's :meth:`~fastsparse.losses.Loss.prior_bias` of the add-one
    smoothed unigram probabilities ``p``: ``b = p`` for the squared error
    (its minimiser), and for the spherical softmax ``b = c sqrt(p)`` with
    ``c^2 = (1 - uniform) / uniform * D eps``, so that with ``W = 0`` the
    model gives ``(1 - uniform) p + uniform / D``.  Either way every output
    starts positive, away from the unstable point 0 of ``-log(a^2 + eps)``.

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
    """
    fn = SphericalSoftmax(eps=eps) if loss == "spherical_softmax" else get_loss(loss)
    return fn.prior_bias(unigram_probabilities(counts), uniform)


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
