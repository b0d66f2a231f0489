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


def test_demo_small(tmp_path):
    res = _run(["-m", "fastsparse", "demo", "--n-outputs", "3000", "--n-hidden",
                "16", "--steps", "30", "--dtype", "float64"], tmp_path)
    out = res.stdout
    assert "speed-up naive/factored" in out
    diffs = [float(x) for x in re.findall(r"max rel\. diff of [^\n]*?([0-9.]+e[-+][0-9]+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-9, out


def test_demo_help(tmp_path):
    assert "--n-outputs" in _run(["-m", "fastsparse", "demo", "--help"], tmp_path).stdout


@pytest.mark.skipif(not (ROOT / "bench" / "bench_step.py").exists(),
                    reason="not running from a source checkout")
def test_bench_script_small(tmp_path):
    res = _run([str(ROOT / "bench" / "bench_step.py"), "--n-outputs", "2000",
                "--n-hidden", "16", "--repeats", "2"], tmp_path)
    assert "factored" in res.stdout and "online" in res.stdout
