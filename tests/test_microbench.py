"""The C microbenchmark (bench/c): it builds from the library's sources
against the scipy-openblas32 wheel (skipped without it or a C compiler),
times the library's own kernels, and its --check run of one online call
agrees with fastsparse._core on the same inputs (so the program measures
what the package computes)."""
import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fastsparse import _core

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "bench" / "c" / "build.sh"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not BUILD.exists() or importlib.util.find_spec("scipy_openblas32") is None,
    reason="needs the source checkout and the scipy-openblas32 wheel")]


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    out = tmp_path_factory.mktemp("mb") / "fs_microbench"
    try:
        subprocess.run(["sh", str(BUILD), "-o", str(out)], check=True,
                       capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot build: {exc.stderr}")
    return out


def test_timing_run_prints_every_kernel(exe):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([str(exe), "3000", "16", "2", "20", "8", "2", "float32"],
                         check=True, capture_output=True, text=True, env=env,
                         timeout=120).stdout
    for name in ("online step", "minibatch step", "pass over V, rank 1",
                 "pass over V, rank 16", "gemm", "symm", "syr2k"):
        assert name in out, out


@pytest.mark.parametrize("block", [1, 8])
def test_check_run_agrees_with_the_package(exe, tmp_path, block):
    D, d, K, m = 500, 12, 2, 20
    path = tmp_path / "check.bin"
    subprocess.run([str(exe), "--check", str(D), str(d), str(K), str(m),
                    str(block), "float64", str(path)], check=True, timeout=60)
    raw = np.fromfile(path, dtype=np.uint8)
    off = 0

    def take(dtype, shape):
        nonlocal off
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        out = raw[off:off + n].view(dtype).reshape(shape)
        off += n
        return out.copy()

    V, U, M = take(np.float64, (D, d)), take(np.float64, (d, d)), take(np.float64, (d, d))
    H, idx = take(np.float64, (m, d)), take(np.int64, (m * K,))
    res = [take(np.float64, s) for s in ((D, d), (d, d), (d, d), (d, d), (m,), (m, d))]
    assert off == raw.size
    state = [V, U, np.eye(d), M]
    empty = np.zeros(0)
    loss, grad = np.empty(m), np.empty((m, d))
    ctl = _core.Control(0.5, 0.0, 1e30, 1.0, 1.0, 1e6)
    ctl.set_rates(0.01, 0.0)
    st = _core.online_step(_core.Arrays(*state, empty, empty), H, np.arange(0, m * K + 1, K),
                           idx, np.ones(m * K), 0, np.zeros(3), block, ctl, loss, grad)
    assert st == 0
    for mine, theirs in zip(state + [loss, grad], res):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-14)
