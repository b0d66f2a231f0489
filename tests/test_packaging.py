"""The sdist carries every source file, and a wheel built from it works.

Builds the sdist of this checkout, builds a wheel from that sdist (in an
isolated build environment, as pip does for users), installs it into a
fresh virtual environment and runs a step there, from a directory outside
the source tree.
"""
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build")
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not running from a source checkout")
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir",
                    str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("fastsparse-*.tar.gz")
    return path


def test_sdist_contents(sdist):
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for required in ["pyproject.toml", "setup.py", "README.md", "MANIFEST.in",
                     "fastsparse/__init__.py", "fastsparse/_blas.pyx",
                     "fastsparse/_blas.pxd", "fastsparse/_core.pyx",
                     "fastsparse/_bench.pyx", "src_c/fs_sparse.c",
                     "src_c/fs_sparse.h", "src_c/fs_online.c",
                     "src_c/fs_online.h", "src_c/fs_online_impl.h",
                     "src_c/fs_loss.c", "src_c/fs_loss.h", "src_c/fs_blas.h",
                     "bench/c/fs_microbench.c", "bench/c/build.sh"]:
        assert required in names, required
    assert not [n for n in names if n.endswith((".so", ".pyd"))]


def test_wheel_from_sdist_installs_and_runs(sdist, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                    str(wheels), str(sdist)], check=True, capture_output=True)
    (wheel,) = wheels.glob("fastsparse-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True)
    script = textwrap.dedent("""
        import numpy as np, fastsparse
        assert "site-packages" in fastsparse.__file__, fastsparse.__file__
        W = np.random.default_rng(0).standard_normal((300, 8))
        f = fastsparse.FactoredOutputLayer.from_weights(W)
        n = fastsparse.NaiveOutputLayer.from_weights(W)
        H = 0.3 * np.random.default_rng(1).standard_normal((5, 8))
        for mode in ("online", "batch"):
            lf, gf = f.step(H, np.arange(5), 0.05, mode=mode)
            ln, gn = n.step(H, np.arange(5), 0.05, mode=mode)
            np.testing.assert_allclose(lf, ln, rtol=1e-10)
        np.testing.assert_allclose(f.weights(), n.weights(), rtol=1e-10, atol=1e-12)
        print("ok")
    """)
    res = subprocess.run([str(py), "-c", script], cwd=tmp_path, check=True,
                         capture_output=True, text=True)
    assert res.stdout.strip() == "ok"
