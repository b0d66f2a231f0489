"""The end-to-end example examples/lm_docstrings.py, at a tiny size.

A small neural language model trained on some of the standard library's
docstrings and comments, with a dense torch ``nn.Linear`` output layer and
with the factored layer from the same initial weights on the same
minibatches: both copies' losses must agree to float32 rounding, the report
must be complete and finite, and the plot must be written.

The script is not part of the package: it is loaded from the checkout with
importlib (and run as a program, from another directory, for ``--help``).
"""
import importlib
import io
import json
import math
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "lm_docstrings.py"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(),
                                reason="not running from a source checkout")

# 40 random stdlib files (~15-40k examples), vocabulary capped at 1000
# words, d = 24, 60 steps of 16 examples, both losses, default learning
# rates; runs in about 4 s (plus importing torch).
TINY = ["--max-files", "40", "--max-vocab", "1000", "--embed", "16",
        "--hidden", "24", "--steps", "60", "--batch-size", "16",
        "--eval-every", "20", "--eval-examples", "200"]

# Tolerances, float32.  Measured on this configuration over seeds 0-7, max
# over the seeds, factored vs dense torch copy:
#   per-step training losses   squared 8.2e-7, spherical softmax 3.1e-7
#   final held-out losses      2.8e-7, 1.6e-7
#   final W / bias             1.5e-5 / 2.3e-6, 2.3e-6 / 3.7e-7
# The NaiveOutputLayer -- the same dense model computed by NumPy, another
# float32 rounding of it -- is at 2.4e-7 (losses) and 7.3e-7 (W).  The
# factored W = V U is less accurate under the squared error because every
# step contracts U along the h's (by I - 2 lr H^T H / m) and only the
# renormalisations of the numerical-health control bring U's condition
# number back below 30 (its float32 `max_cond`): the rows of W carry a
# relative error of about d * eps * cond(U).  In float64 the same runs agree
# to 2.2e-14 (test below): rounding, not an inexactness of the method.
# Hence LOSS_RTOL = 1e-5 (12x the largest measured loss difference, ~80
# float32 eps) and W_RTOL = 1e-4 (the RTOL32 of tests/test_torch.py, 6.5x
# the largest measured).  Real mistakes are far above: an output-layer
# learning rate off by 1% gives per-step loss differences of 2-3e-4 and W
# differences of 8e-3 to 1.3e-2; a lower-layer learning rate off by 1%,
# 5-6e-5 and 1.5e-3 to 1e-2; a bias left out, 2e-2 to 0.3.
LOSS_RTOL, W_RTOL = 1e-5, 1e-4
# float64 (30 steps): measured <= 2.2e-14 (losses, W and bias)
RTOL64 = 1e-10


def _load(name):
    """A module of examples/ (where the script imports its helpers from)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def lm():
    return _load("lm_docstrings")


@pytest.fixture(scope="module")
def lm_data():
    return _load("lm_data")


@pytest.fixture(scope="module")
def lm_report():
    return _load("lm_report")


def _main(lm, argv):
    out, err = io.StringIO(), io.StringIO()
    report = lm.main(argv, stream=out, progress_stream=err)
    return report, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(lm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    report, out, err = _main(lm, TINY + [
        "--naive-reference", "--plot", str(tmp / "lm.png"),
        "--json", str(tmp / "lm.json")])
    return report, out, err, tmp


# ---- the two copies train the same model ----------------------------------
def test_both_copies_agree_to_float32_rounding(tiny):
    report = tiny[0]
    assert [r["loss"] for r in report["results"]] == ["squared", "spherical_softmax"]
    for r in report["results"]:
        assert len(r["loss_dense"]) == len(r["loss_factored"]) == 60
        assert r["loss_rel_diff"] < LOSS_RTOL, r["loss"]
        assert r["heldout_rel_diff"] < LOSS_RTOL, r["loss"]
        assert r["weights_rel_diff"] < W_RTOL, r["loss"]
        assert r["bias_rel_diff"] < W_RTOL, r["loss"]
        # the held-out losses at the evaluation points, too
        ev = np.asarray(r["eval_losses"])
        assert ev.shape == (4, 2)
        np.testing.assert_allclose(ev[:, 1], ev[:, 0], rtol=LOSS_RTOL)
        # the naive reference (the same dense model in NumPy) agrees as well
        assert r["naive_loss_rel_diff"] < LOSS_RTOL
        assert r["naive_weights_rel_diff"] < W_RTOL
        # the same nearest neighbours in both copies' W
        assert r["neighbours_same_in_dense"] == len(r["neighbours"]) > 0


def test_float64_copies_agree_to_float64_rounding(lm):
    report, _, _ = _main(lm, TINY + ["--dtype", "float64", "--steps", "30",
                                     "--eval-every", "0", "--plot", ""])
    for r in report["results"]:
        assert r["loss_dense"].dtype == np.float64
        assert max(r["loss_rel_diff"], r["heldout_rel_diff"], r["weights_rel_diff"],
                   r["bias_rel_diff"]) < RTOL64, r["loss"]


# ---- the report ------------------------------------------------------------
def _finite(x):
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


def test_reported_numbers_are_finite(tiny):
    report = tiny[0]
    data = report["data"]
    assert 100 < data["vocabulary"] <= 1003        # cap + <unk>, <s>, </s>
    assert data["n_train"] > 1000 and data["n_heldout"] > 0
    for r in report["results"]:
        for key in ("loss_dense", "loss_factored", "time_step_dense",
                    "time_step_factored", "time_output_dense",
                    "time_output_factored", "eval_losses"):
            assert _finite(r[key]), key
        for key in ("time_step_dense", "time_step_factored"):
            assert np.all(r[key] > 0)
        # the output layer is part of the step
        assert np.all(r["time_output_dense"] <= r["time_step_dense"])
        assert np.all(r["time_output_factored"] <= r["time_step_factored"])
        for key in ("heldout_dense", "heldout_factored", "heldout_unigram",
                    "loss_rel_diff", "weights_rel_diff"):
            assert math.isfinite(r[key]), key
        assert r["heldout_dense"] > 0
        for word, neighbours in r["neighbours"].items():
            assert len(neighbours) == 5
            assert all(-1 - 1e-9 <= c <= 1 + 1e-9 for _, c in neighbours)
            assert word not in [w for w, _ in neighbours]
            assert not {"<unk>", "<s>", "</s>"} & {w for w, _ in neighbours}


def test_report_text_and_json(tiny):
    report, out, err, tmp = tiny
    for text in ("loss: squared", "loss: spherical_softmax", "speed-up",
                 "of which the output layer", "held-out loss, final",
                 "max rel. diff of the per-step training losses",
                 "nearest neighbours", "naive reference vs dense"):
        assert text in out, text
    assert "training 3 copies, squared" in err          # progress bars
    assert "reading the docstrings and comments" in err
    saved = json.loads((tmp / "lm.json").read_text())
    assert saved["data"]["vocabulary"] == report["data"]["vocabulary"]
    for s, r in zip(saved["results"], report["results"]):
        np.testing.assert_array_equal(s["loss_factored"], r["loss_factored"])
        assert s["heldout_factored"] == r["heldout_factored"]


def test_plot_is_written(tiny):
    pytest.importorskip("matplotlib")
    report, out, _, tmp = tiny
    path = tmp / "lm.png"
    assert report["plot"] == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert f"plot: {path}" in out


def test_plot_without_matplotlib(lm, lm_report, tiny, monkeypatch, tmp_path):
    """Without matplotlib nothing is written and main() says why."""
    # importing any matplotlib module fails (those already imported too)
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert lm_report.plot_curves(tiny[0]["results"], str(tmp_path / "x.png")) is False
    assert not (tmp_path / "x.png").exists()
    report, out, _ = _main(lm, TINY + ["--steps", "2", "--eval-every", "0",
                                       "--loss", "squared",
                                       "--plot", str(tmp_path / "y.png")])
    assert report["plot"] is None and not (tmp_path / "y.png").exists()
    assert "matplotlib is not installed" in out


# ---- the corpus ------------------------------------------------------------
SOURCE = b'''"""Module docstring: the module."""
import os  # trailing comment
x = "# not a comment"
"""Attribute docstring of x."""

# first line of a block
# second line of the block


def f(a):
    """Return the
    answer."""
    s = f"{a} # no"
    return s  # done
'''


def test_extract_prose(lm_data):
    texts = lm_data.extract_prose(SOURCE)
    assert texts == ["Module docstring: the module.", "Attribute docstring of x.",
                     "Return the\nanswer.", "trailing comment",
                     "first line of a block second line of the block", "done"]


def test_extract_prose_keeps_what_precedes_an_error(lm_data):
    """Invalid files are not parsed, only tokenised: the texts before a
    tokenisation error are kept, and nothing raises."""
    broken = b'"""Doc of a Python 2 file."""\nprint "hi"  # py2 print\n"""unterminated'
    assert lm_data.extract_prose(broken) == ["Doc of a Python 2 file.", "py2 print"]
    assert lm_data.extract_prose(b"\xff\xfe\x00 garbage \x81") == []
    assert lm_data.extract_prose(b"") == []


def test_examples_do_not_cross_documents(lm_data):
    from collections import Counter

    units = [[["a", "b", "c"], ["b", "a"]], [["c", "zz"]]]
    vocab = lm_data.Vocabulary(Counter(w for u in units for d in u for w in d),
                          min_count=1)
    X, Y = lm_data.make_examples(units, vocab, n_context=2)
    i = vocab.index
    s, e = i["<s>"], i["</s>"]
    words = [[vocab.words[k] for k in row] for row in X]
    assert [vocab.words[k] for k in Y] == ["a", "b", "c", "</s>", "b", "a", "</s>",
                                           "c", "zz", "</s>"]
    assert words[4] == ["<s>", "<s>"] and words[5] == ["<s>", "b"]
    assert X.dtype == Y.dtype == np.int64 and X.shape == (10, 2)
    assert s not in Y and e in Y
    # unknown words map to <unk> (index 0)
    vocab2 = lm_data.Vocabulary(Counter({"a": 3, "b": 1}), min_count=2)
    assert vocab2.encode(["a", "b", "q"]) == [vocab2.index["a"], 0, 0]


def test_build_dataset_holds_out_whole_units(lm_data):
    units = [[[f"w{u}", "common", f"w{u}"]] for u in range(20)]
    data = lm_data.build_dataset(units, 2, 0.25, 1, None, seed=0)
    assert data["n_units"] == (15, 5)
    assert len(data["Y_train"]) == 15 * 4 and len(data["Y_heldout"]) == 5 * 4
    # held-out files' own words are not in the vocabulary (built on training)
    vocab_words = set(data["vocab"].words)
    assert sum(f"w{u}" in vocab_words for u in range(20)) == 15
    again = lm_data.build_dataset(units, 2, 0.25, 1, None, seed=0)
    np.testing.assert_array_equal(again["X_heldout"], data["X_heldout"])


def test_unigram_bias_gives_the_unigram_model(lm_data):
    counts = np.array([0, 0, 5, 50, 20, 1], dtype=np.int64)
    p = lm_data.unigram_probabilities(counts)
    assert p.sum() == pytest.approx(1.0)
    assert lm_data.unigram_bias(counts, "squared", 0.1) == pytest.approx(p)
    b = lm_data.unigram_bias(counts, "spherical_softmax", 0.1, uniform=0.05)
    q = (b * b + 0.1) / (b @ b + len(b) * 0.1)     # the model with W = 0
    np.testing.assert_allclose(q, 0.95 * p + 0.05 / len(p), rtol=1e-12)


@pytest.mark.skipif(not (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").exists(),
                    reason="no LICENSE.txt in the standard library directory")
def test_text_file(lm):
    """--text FILE: paragraphs of any text file (here Python's licence)."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    report, out, _ = _main(lm, ["--text", str(path), "--steps", "10",
                                "--batch-size", "8", "--hidden", "8", "--embed", "4",
                                "--eval-every", "0", "--plot", "",
                                "--loss", "spherical_softmax"])
    (r,) = report["results"]
    assert report["data"]["units"][0] > 10 and "paragraphs" in out
    assert r["loss_rel_diff"] < LOSS_RTOL and r["weights_rel_diff"] < W_RTOL


def test_help_runs_outside_the_checkout(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    for option in ("--text", "--max-vocab", "--loss", "--naive-reference", "--json"):
        assert option in res.stdout
