"""The text corpus of ``bench/compare_quality.py``: find it, tokenise it,
split it, encode it (with an on-disk cache).

The default corpus is the GNU Collaborative International Dictionary of
English (GCIDE: Webster's 1913 plus later additions; definitions,
etymologies and about 100 000 literary quotations), as shipped by the
Debian package ``dict-gcide`` 0.48.5+nmu2 (file
``/usr/share/dictd/gcide.dict.dz``, 13.5 MB dictzip, 40 MB of text).
With this module's tokeniser it has 5 404 238 word tokens and 219 009
types, of which 74 020 occur at least 3 times in the whole text.  Nothing
is fetched at run time; see :data:`FETCH_HELP` for how to install it.
Any other UTF-8 text (plain, ``.gz`` or ``.dz``) can be used instead.
"""
import gzip
import hashlib
import json
import os
import re
from collections import Counter

import numpy as np

from fastsparse.datasets import context_windows

#: where ``apt-get install dict-gcide`` puts the default corpus
DEFAULT_CORPUS = "/usr/share/dictd/gcide.dict.dz"
#: the default corpus's origin, as reported
DEFAULT_SOURCE = ("GCIDE, Debian package dict-gcide 0.48.5+nmu2 "
                  "(/usr/share/dictd/gcide.dict.dz)")
FETCH_HELP = """\
The corpus file {path!r} does not exist.  The default corpus is GCIDE from
the Debian package dict-gcide (0.48.5+nmu2).  Either install it system-wide:

    apt-get install dict-gcide          # also installs the dictd server

or only unpack it, without installing anything:

    apt-get download dict-gcide && dpkg-deb -x dict-gcide_*.deb ./gcide
    python bench/compare_quality.py --corpus ./gcide/usr/share/dictd/gcide.dict.dz

(--corpus also takes any UTF-8 text file, plain, .gz or .dz.)"""

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")


class CorpusMissing(FileNotFoundError):
    """The corpus file is not there; the message says how to get it."""


def read_paragraphs(path):
    """Paragraphs (blank-line separated) of a text file, each a list of
    lower-cased word tokens; empty paragraphs are dropped."""
    if not os.path.isfile(path):
        raise CorpusMissing(FETCH_HELP.format(path=path))
    opener = gzip.open if path.endswith((".gz", ".dz")) else open
    with opener(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    paras = (WORD_RE.findall(p.lower()) for p in re.split(r"\n\s*\n", text))
    return [p for p in paras if p]


def _take(paras, order, start, n_tokens):
    """Paragraphs order[start:stop] holding at least n_tokens words."""
    total, stop = 0, start
    while stop < len(order) and total < n_tokens:
        total += len(paras[order[stop]]) + 1
        stop += 1
    return [paras[i] for i in order[start:stop]], stop


def load_corpus(path, *, n_context=3, min_count=3, n_test=50_000,
                n_valid=20_000, seed=0, cache_dir=None, log=print):
    """The corpus as (context, next word) examples, split three ways.

    Paragraphs are shuffled (``seed``); the first ones hold the test slice
    (at least ``n_test`` tokens), the next the validation slice used to
    tune learning rates (``n_valid``), the rest is the training set.  The
    vocabulary is the training words seen at least ``min_count`` times,
    by decreasing count (index 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``): the
    order that ``AdaptiveLogSoftmaxWithLoss`` needs.

    Returns a dict: ``X_train, Y_train, X_valid, Y_valid, X_test, Y_test``
    (contexts int32, targets int64), ``counts`` (training target counts
    per index), ``n_words`` (word tokens), ``n_types`` (distinct words),
    ``source``.  A cache (``.npz``, keyed by the file's path, size, mtime
    and the arguments) makes later loads take a second.
    """
    if not os.path.isfile(path):
        raise CorpusMissing(FETCH_HELP.format(path=path))
    st = os.stat(path)
    key = json.dumps([os.path.abspath(path), st.st_size, int(st.st_mtime),
                      n_context, min_count, n_test, n_valid, seed, 1])
    cache_dir = cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "fastsparse-bench")
    cache = os.path.join(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:16]
                         + ".npz")
    source = DEFAULT_SOURCE if os.path.abspath(path).endswith(
        "gcide.dict.dz") else path
    if os.path.isfile(cache):
        with np.load(cache) as z:
            data = {k: z[k] for k in z.files}
        data["n_words"], data["n_types"] = int(data["n_words"]), int(data["n_types"])
        data["source"] = source
        return data
    log(f"reading and tokenising {path} (cached afterwards in {cache})")
    paras = read_paragraphs(path)
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(
        len(paras))
    test, stop = _take(paras, order, 0, n_test)
    valid, stop = _take(paras, order, stop, n_valid)
    train = [paras[i] for i in order[stop:]]
    counts = Counter(w for p in train for w in p)
    kept = sorted((w for w, c in counts.items() if c >= min_count),
                  key=lambda w: (-counts[w], w))
    words = [UNK, BOS, EOS] + kept
    index = {w: i for i, w in enumerate(words)}
    data = {"n_words": sum(len(p) for p in paras),
            "n_types": len(set(w for p in paras for w in p))}
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        get = index.get
        docs = ([get(w, 0) for w in p] for p in part)
        data["X_" + name], data["Y_" + name] = context_windows(
            docs, n_context, index[BOS], index[EOS], dtype=np.int32)
    data["counts"] = np.bincount(data["Y_train"], minlength=len(words))
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, **data)
        os.replace(tmp, cache)
    except OSError as exc:
        log(f"(could not write the cache {cache}: {exc})")
    data["source"] = source
    return data
