"""Microbenchmarks: the compiled kernels without Python, and the per-call
overhead of the Python API.

1. ``bench/c/fs_microbench`` (built here by ``bench/c/build.sh`` against the
   scipy-openblas32 wheel; skipped, with the reason, without that wheel or
   a C compiler) calls the library's own kernel entry points
   (src_c/fs_kernels.h) and BLAS wrappers (src_c/fs_blas.h): the whole
   online step (per example, in blocks), the minibatch step, a pass over V
   (rank 1 and 16, what near-singular updates and renormalisations cost)
   and the BLAS-3 calls of an online block, with GFLOP/s.
2. The fixed cost of one call through the Python API: a step of one
   example on a tiny layer (D = 1000, d = 8), with int targets and with
   (indices, values) tuples, online and minibatch.

    python bench/microbench.py                 # d = 512 and 128, D = 793 471
    python bench/microbench.py --quick         # small sizes, seconds
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import fastsparse

HERE = Path(__file__).resolve().parent


def build():
    """Path of the built C program, or None with the reason printed."""
    try:
        out = subprocess.run(["sh", str(HERE / "c" / "build.sh")], check=True,
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = getattr(exc, "stderr", "") or str(exc)
        print(f"# C microbenchmark skipped: {reason.strip()}")
        return None
    return out.stdout.strip().splitlines()[-1]


def per_call_overhead(repeats=2000, rounds=7):
    """Seconds per step of one example on a tiny layer (D = 1000, d = 8).

    Every call gets fresh data (unit-norm random h, Zipf targets, drawn
    beforehand).  Times are per call over ``repeats`` calls in a row,
    median and minimum over ``rounds`` rounds.  With lr = 0 a call is its
    fixed cost (checks, lock, thread bookkeeping) and the forward kernel;
    with lr = 0.01 the update and the numerical-health control's periodic
    checks fall inside it too, as in training.
    """
    from fastsparse.datasets import ZipfTargets, random_hidden

    rng = np.random.default_rng(0)
    Hs = [h[None, :] for h in random_hidden(rng, repeats, 8, np.float32)]
    y = ZipfTargets(1000).sample(rng, repeats)
    targets = {"int targets": [y[i:i + 1].copy() for i in range(repeats)],
               "(indices, values) tuple": [(y[i:i + 1, None].copy(),
                                            np.ones((1, 1), np.float32))
                                           for i in range(repeats)]}
    rows = []
    for lr in (0.0, 0.01):
        for mode in ("online", "batch"):
            for name, ts in targets.items():
                layer = fastsparse.FactoredOutputLayer(1000, 8, seed=0)
                per = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    for h, t in zip(Hs, ts):
                        layer.step(h, t, lr, mode=mode)
                    per.append((time.perf_counter() - t0) / repeats)
                rows.append((f"lr {lr:g}, {mode}, {name}",
                             float(np.median(per)), float(np.min(per))))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    print(f"# fastsparse {fastsparse.__version__}, one BLAS thread")
    with threadpool_limits(1):
        print("\n## One example per call through the Python API (D = 1000, d = 8)\n")
        print(f"{'call':<52} {'median us':>10} {'min us':>10}")
        for name, med, mn in per_call_overhead(200 if args.quick else 2000,
                                               3 if args.quick else 7):
            print(f"{name:<52} {1e6 * med:10.1f} {1e6 * mn:10.1f}")
        exe = build()
        if exe is None:
            return 0
        sizes = ([(20_000, 64, 1, 64, 64)] if args.quick else
                 [(793_471, 512, 1, 128, 64), (793_471, 128, 1, 128, 64)])
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        for D, d, K, m, block in sizes:
            print(f"\n## Kernels, no Python: D = {D}, d = {d}, K = {K}, m = {m}\n")
            sys.stdout.flush()
            subprocess.run([exe, str(D), str(d), str(K), str(m), str(block),
                            str(3 if args.quick else args.repeats), args.dtype],
                           check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
