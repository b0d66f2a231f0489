"""The benchmark suite (bench/bench_suite.py) runs end to end at a tiny size:
it prints its tables, writes a results file of the documented structure
with finite positive times, the plot when matplotlib is there and the torch
column when torch is.  Nothing here checks a timing's value."""
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_suite.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None

pytestmark = pytest.mark.skipif(not SCRIPT.exists(),
                                reason="not running from a source checkout")

TINY = ["--configs", "600,8,1,1", "500,8,2,4", "--repeats", "2", "--warmup", "1",
        "--slow-budget", "0", "--slow-min-repeats", "1", "--online-examples", "3",
        "--sweep", "200,400", "--sweep-hidden", "4", "--sweep-batch", "4"]
KEYS = [f"{layer}_{mode}" for layer in ("factored", "naive", "torch")
        for mode in ("online", "batch")]


def _run(args, cwd):
    # cwd outside the checkout: from its root, 'import fastsparse' would find
    # the uncompiled sources
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _check_measurement(meas, layer, mode):
    assert meas["layer"] == layer and meas["mode"] == mode
    assert meas["calls"] == len(meas["times"]) >= 1
    assert meas["examples_per_call"] >= 1
    for key in ("median_per_call", "min_per_call", "median_per_example",
                "min_per_example"):
        assert math.isfinite(meas[key]) and meas[key] > 0, (key, meas)
    assert all(math.isfinite(t) and t > 0 for t in meas["times"])
    assert meas["min_per_call"] <= meas["median_per_call"]
    assert meas["median_per_example"] == pytest.approx(
        meas["median_per_call"] / meas["examples_per_call"])
    assert isinstance(meas["few_repeats"], bool)


def _check_result(res, with_naive, with_torch):
    c = res["config"]
    assert set(c) == {"name", "D", "d", "K", "m"}
    assert res["speedup_theory"] == pytest.approx(c["D"] / (4 * c["d"]))
    assert set(res["measurements"]) == set(KEYS)
    for key in KEYS:
        layer, mode = key.split("_")
        meas = res["measurements"][key]
        wanted = (layer == "factored" or (layer == "naive" and with_naive)
                  or (layer == "torch" and with_torch))
        if not wanted:
            assert meas is None
            continue
        _check_measurement(meas, layer, mode)
    fac = res["measurements"]["factored_online"]
    assert fac["examples_per_call"] == (c["m"] if c["m"] > 1 else 3)
    assert res["measurements"]["factored_batch"]["examples_per_call"] == c["m"]
    for key, sp in res["speedups"].items():
        assert (sp is None) == (res["measurements"][key] is None)
        if sp is not None:
            assert math.isfinite(sp["median"]) and sp["median"] > 0


def test_suite_tiny(tmp_path):
    out_json = tmp_path / "res" / "suite.json"        # the directory is created
    out_png = tmp_path / "suite.png"
    res = _run([*TINY, "--json", str(out_json), "--plot", str(out_png)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for text in ("float32, 1 BLAS thread", "float64", "online, per example",
                 "batch, per minibatch", "naive/fact", "D/(4d)", "git revision",
                 "results written to"):
        assert text in out, text
    assert "torch/fact" in out
    assert re.search(r"^torch +(\d|not used)", out, re.M), out

    rec = json.loads(out_json.read_text())
    assert rec["schema"] == "fastsparse-bench-suite/1" and rec["complete"] is True
    env = rec["environment"]
    for key in ("platform", "cpu_model", "logical_cpus", "ram_bytes", "numpy",
                "scipy", "fastsparse", "git_commit", "threadpool_info"):
        assert key in env, key
    assert env["git_commit"] and isinstance(env["threadpool_info"], list)
    assert (env["torch"] is not None) == HAS_TORCH
    assert rec["elapsed_seconds"] > 0

    n_threads = len(rec["options"]["threads"])        # 1 and all cores
    assert len(rec["results"]) == 2 * 2 * n_threads
    assert {r["dtype"] for r in rec["results"]} == {"float32", "float64"}
    for r in rec["results"]:
        _check_result(r, with_naive=True, with_torch=HAS_TORCH)
    assert {b["layer"] for b in rec["builds"]} >= {"factored", "naive"}

    if HAS_MPL:
        sweep = rec["sweep"]
        assert [r["config"]["D"] for r in sweep["results"]] == [200, 400]
        for r in sweep["results"]:
            _check_result(r, with_naive=True, with_torch=HAS_TORCH)
        assert rec["plot"] == str(out_png)
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "D sweep" in out
    else:
        assert rec["sweep"] is None and not out_png.exists()
        assert "matplotlib is not installed" in res.stderr


def test_suite_factored_only(tmp_path):
    out_json = tmp_path / "suite.json"
    res = _run(["--configs", "300,4,1,2", "--dtypes", "float64", "--threads", "1",
                "--repeats", "2", "--warmup", "0", "--no-naive", "--no-torch",
                "--no-plot", "--json", str(out_json)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rec = json.loads(out_json.read_text())
    assert rec["sweep"] is None and rec["plot"] is None
    assert rec["options"]["threads"] == [1]
    (r,) = rec["results"]
    _check_result(r, with_naive=False, with_torch=False)
    assert all(v is None for v in r["speedups"].values())
    assert not list(tmp_path.glob("*.png"))


def test_suite_help_and_bad_config(tmp_path):
    res = _run(["--help"], tmp_path)
    assert res.returncode == 0 and "--quick" in res.stdout and "--configs" in res.stdout
    res = _run(["--configs", "9"], tmp_path)
    assert res.returncode == 2 and "no configuration 9" in res.stderr
    res = _run(["--configs", "10,20"], tmp_path)
    assert res.returncode == 2 and "D,d,K,m" in res.stderr


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_column_does_the_naive_layers_step():
    """The torch baseline (nn.Linear, summed squared error, SGD) with the
    suite's dense targets takes the same SGD steps as NaiveOutputLayer."""
    import numpy as np
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_suite
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from fastsparse import NaiveOutputLayer
    from fastsparse.datasets import ZipfTargets

    D, d, K, lr = 40, 6, 3, 0.05
    naive = NaiveOutputLayer(D, d, dtype=np.float64, seed=1)
    dense = bench_suite.TorchDense(torch, D, d, np.float64, 0, lr)
    with torch.no_grad():
        dense.linear.weight.copy_(torch.from_numpy(naive.weights()))
    zipf = ZipfTargets(D)       # small D, K = 3: repeated targets (summed)
    sparse = bench_suite.numpy_data(np.random.default_rng(5), zipf, d, K, np.float64)
    dense_data = bench_suite.torch_data(torch, np.random.default_rng(5), zipf, d, K,
                                        np.float64)
    for mode, m in [("online", 3), ("batch", 4), ("online", 3), ("batch", 4)]:
        H, targets = sparse(m)
        Ht, Y = dense_data(m)
        np.testing.assert_array_equal(Ht.numpy(), H)
        expect = np.zeros((m, D))
        np.add.at(expect, (np.repeat(np.arange(m), K), targets[0].ravel()), 1)
        np.testing.assert_array_equal(Y.numpy(), expect)
        naive.step(H, targets, lr, mode=mode)
        dense.step(Ht, Y, lr, mode=mode)
        np.testing.assert_allclose(dense.linear.weight.detach().numpy(),
                                   naive.weights(), rtol=1e-12, atol=1e-12)
