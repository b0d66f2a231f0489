"""bench/bench_blas_loop.py runs and prints one row per product and shape,
with the route the loop takes; nothing here checks a timing's value."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_blas_loop.py"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(),
                                reason="not running from a source checkout")


def test_quick_table(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"],
                         cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    if "nothing to compare" in res.stdout:
        pytest.skip("this CPU has no AVX2 + FMA")
    rows = [r for r in res.stdout.splitlines()
            if r.startswith("| ") and r[2].isdigit()]
    assert len(rows) == 10
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[3].endswith(" us") and cells[4].endswith(" us")
        assert float(cells[5]) > 0
        assert cells[6] in ("BLAS", "in place", "packed")
