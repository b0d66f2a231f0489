"""The main job (``fastsparse demo``) and the benchmark script run end to end
at a small size and report agreement of the two layers."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True,
                          text=True, check=True, timeout=300)


@pytest.mark.parametrize("mode", ["batch", "online"])
def test_demo_small(tmp_path, mode):
    res = _run(["-m", "fastsparse", "demo", "--n-outputs", "3000", "--n-hidden",
                "16", "--steps", "10", "--batch-size", "8", "--mode", mode,
                "--dtype", "float64"], tmp_path)
    out = res.stdout
    assert re.search(r"speed-up of the factored layer over the dense one: [0-9,]+x", out)
    assert "agrees with the dense layer to float64 rounding: yes" in out, out
    diffs = [float(x) for x in re.findall(r"max rel\. diff of [^\n]*?([0-9.]+e[-+][0-9]+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-9, out
    # the same loss prints with the same digits in both columns
    first = re.search(r"summed loss, first step\s+(\S+)\s+(\S+)", out)
    assert len(first.group(1).split(".")[1]) == len(first.group(2).split(".")[1])
    # no progress-bar redraws when stderr is not a terminal
    assert "\r" not in res.stderr


def test_demo_help(tmp_path):
    assert "--n-outputs" in _run(["-m", "fastsparse", "demo", "--help"], tmp_path).stdout


@pytest.mark.skipif(not (ROOT / "bench" / "bench_step.py").exists(),
                    reason="not running from a source checkout")
def test_bench_script_small(tmp_path):
    res = _run([str(ROOT / "bench" / "bench_step.py"), "--n-outputs", "2000",
                "--n-hidden", "16", "--repeats", "2"], tmp_path)
    assert "factored" in res.stdout and "online" in res.stdout
