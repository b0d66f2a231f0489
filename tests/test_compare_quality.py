"""bench/compare_quality.py on a tiny generated corpus (a few seconds)."""
import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "bench", "compare_quality.py")


@pytest.fixture(scope="module")
def cq():
    spec = importlib.util.spec_from_file_location("compare_quality", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_corpus(path, n_words=300, n_paragraphs=400, seed=0):
    """Paragraphs of a Zipf vocabulary with a first-order Markov structure."""
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["w" + letters[i // 676 % 26] + letters[i // 26 % 26] + letters[i % 26]
             for i in range(n_words)]
    p = 1.0 / np.arange(1, n_words + 1)
    p /= p.sum()
    nxt = rng.integers(0, n_words, (n_words, 3))
    paras = []
    for _ in range(n_paragraphs):
        w = rng.choice(n_words, p=p)
        words = []
        for _ in range(rng.integers(5, 30)):
            words.append(vocab[w])
            w = nxt[w, rng.integers(0, 3)] if rng.random() < 0.8 else rng.choice(n_words, p=p)
        paras.append(" ".join(words) + ".")
    path.write_text("\n\n".join(paras))
    return path


def test_compare_quality_tiny(cq, tmp_path, capsys):
    corpus = tiny_corpus(tmp_path / "tiny.txt")
    out = tmp_path / "res.json"
    variants = ["dense:d=16", "adaptive:d=16,cutoffs=20/80",
                "fs-spherical:d=16,bias_init=unigram,mode=online,check_every=1024", "fs-zloss:d=16",
                "fs-squared:d=16,lr=0.01,schedule=linear"]
    rc = cq.main(["--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"),
                  "--lrs", str(tmp_path / "lrs.json"), "--json", str(out),
                  "--test-tokens", "500", "--valid-tokens", "300",
                  "--budgets", "0.1", "0.2", "--plot-points", "0.05",
                  "--tune", "--lr-grid", "0.1", "1", "--tune-budget", "0.05",
                  "--seeds", "2", "--seed-variants", "fs-zloss:d=16",
                  "--variants", *variants])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tiny.txt" in text and "| fs-zloss:d=16 | 0.2 s |" in text
    res = json.loads(out.read_text())
    assert res["environment"]["D"] > 100
    assert set(res["results"]) == set(variants)
    assert len(res["results"]["fs-zloss:d=16"]) == 2          # two seeds
    for label, runs in res["results"].items():
        cps = runs[0]["checkpoints"]
        assert [c["budget"] for c in cps if c["budget"] is not None] == [0.1, 0.2], label
        for c in cps:
            assert c["cpu"] >= (c["budget"] or 0.05)
            assert 0 <= c["top1"] <= c["top10"] <= 100
            assert (c["ppl"] is None) == label.startswith(("fs-zloss", "fs-squared"))
    assert json.loads((tmp_path / "lrs.json").read_text())     # tuned lrs kept
    # a second call reuses the cache and the tuned rates
    assert cq.main(["--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"),
                    "--lrs", str(tmp_path / "lrs.json"), "--test-tokens", "500",
                    "--valid-tokens", "300", "--budgets", "0.1", "--plot-points",
                    "--variants", "fs-spherical:d=16,bias_init=unigram"]) == 0


def test_missing_corpus_says_how_to_fetch(cq, tmp_path, capsys):
    assert cq.main(["--corpus", str(tmp_path / "nope.dict.dz"), "--budgets", "1"]) == 2
    err = capsys.readouterr().err
    assert "dict-gcide" in err and "apt-get" in err and "nope.dict.dz" in err


def test_variant_labels(cq):
    cfg = cq.parse_variant("fs-spherical:eps=0.3,d=256,schedule=linear")
    assert (cfg["eps"], cfg["d"], cfg["schedule"], cfg["kind"]) == (0.3, 256, "linear",
                                                                   "factored")
    with pytest.raises(ValueError):
        cq.parse_variant("fs-spherical:nope=1")
    with pytest.raises(ValueError):
        cq.parse_variant("softmax")
