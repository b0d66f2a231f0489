"""The float32 products of a minibatch step through fs_blas.h's AVX2 + FMA
loop against SciPy's OpenBLAS (the library the kernels bind), shape by
shape, in one process: the numbers behind the loop's limits (fs_sg_route
in src_c/fs_blas.h), to re-measure on another CPU.

Each row times one product of the step at (m, d) through the package's own
row-major wrappers (``fastsparse._core._py_*``; a call adds about a
microsecond of Python), with the loop switched off (BLAS) and on, best of
seven repeats, the two interleaved:

* ``H Uinv``: C (m x d) = A B, B d x d (also Z U);
* ``H U^T``: C = A B^T (the forward's H U^T);
* ``HU M``: C = A S, S symmetric from its upper triangle;
* ``U -= HU^T Hg``: the rank-m update of a d x d matrix (op(A) transposed);
* ``H H^T``: the m x m Gram matrix.

    python bench/bench_blas_loop.py            # the five side-by-side shapes' (m, d)
    python bench/bench_blas_loop.py --quick    # two shapes, fewer repeats
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fastsparse import _core

SHAPES = [(32, 128), (64, 128), (64, 256), (128, 256), (32, 512), (128, 512),
          (256, 512)]


def _best(fn, reps, inner):
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def products(m, d, rng):
    """(name, callable, (ta, form, rows, columns, k)) for the step's
    products at (m, d): the last, the loop's view of the product (for its
    route and its flops)."""
    f = np.float32
    H = rng.standard_normal((m, d)).astype(f)
    B = rng.standard_normal((d, d)).astype(f)
    S = np.triu(B + B.T)
    C = np.zeros((m, d), f)
    U = B.copy()
    G = np.zeros((m, m), f)
    return [
        ("H Uinv", lambda: _core._py_gemm(False, False, 1.0, H, B, 0.0, C),
         (False, 0, m, d, d)),
        ("H U^T", lambda: _core._py_gemm(False, True, 1.0, H, B, 0.0, C),
         (False, 1, m, d, d)),
        ("HU M", lambda: _core._py_symm_right_upper(1.0, S, H, 0.0, C),
         (False, 2, m, d, d)),
        ("U -= HU^T Hg", lambda: _core._py_gemm(True, False, -1e-3, H, H,
                                                1.0, U),
         (True, 0, d, d, m)),
        ("H H^T", lambda: _core._py_gram_rows(H, G), (False, 1, m, m, d)),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    shapes = SHAPES[:2] if args.quick else SHAPES
    reps = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    old = _core._small_gemm()
    if not _core._small_gemm(True) and not old:
        print("# this CPU has no AVX2 + FMA: the loop is off, nothing to compare")
        return
    print("| m | d | product | BLAS | loop | loop/BLAS | route |")
    print("|---|---|---|---|---|---|---|")
    try:
        with threadpool_limits(1):
            for m, d in shapes:
                for name, fn, (ta, form, rows, cols, k) in products(m, d, rng):
                    inner = max(3, int(3e8 / (2.0 * rows * cols * k)))
                    t = {True: np.inf, False: np.inf}
                    for _ in range(reps):
                        for on in (False, True):
                            _core._small_gemm(on)
                            t[on] = min(t[on], _best(fn, 1, inner))
                    route = ("BLAS", "in place", "packed")[
                        _core._small_gemm_route(ta, form, rows, cols, k)]
                    print(f"| {m} | {d} | {name} | {t[False] * 1e6:.1f} us "
                          f"| {t[True] * 1e6:.1f} us | {t[True] / t[False]:.2f} "
                          f"| {route} |", flush=True)
    finally:
        _core._small_gemm(old)
    if _core._cpu_avx512():
        print("# AVX-512 CPU: the loop's packed route is off here (BLAS)")


if __name__ == "__main__":
    main()
