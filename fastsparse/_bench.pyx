# cython: language_level=3
"""Compiled microbenchmarks of the kernels of a step (issue 5, part 2).

Each kernel of the online and minibatch steps (every BLAS call at its size,
the sparse V-row kernels of src_c/fs_sparse.h, the Woodbury update, the core
of the stability monitor) and the whole steps are timed in tight loops
compiled here: the loop and the clock (``clock_gettime(CLOCK_MONOTONIC)``)
run without the GIL, so no Python runs between two calls.  Two exceptions,
marked ``via = "python"`` in the results: the sequential online step and the
minibatch step are ``cdef`` functions of fastsparse._core that it does not
export, so they are timed through their entry points ``_core.online_step``
(``block=0``) and ``_core.batch_step``, one Python call per call of m
examples (an overhead of a few microseconds per call, next to milliseconds
of work); and ``StabilityControl._estimate`` (NumPy) for comparison with
its compiled core.

The BLAS calls of the sequential online step and of the minibatch step go
through the row-major wrappers of fastsparse._blas, those of the blocked
online kernel through the inline wrappers of src_c/fs_blas.h, exactly as the
package makes them; all end in ``scipy.linalg.cython_blas`` /
``cython_lapack``.  The blocked online kernel (src_c/fs_online.c) and the
sparse kernels are compiled into this extension (their own copy, from the
same sources as fastsparse._core's) and called directly.

Use :func:`run`; ``bench/microbench.py`` prints the results as tables.
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from libc.stdint cimport int64_t
from libc.string cimport memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from scipy.linalg cimport cython_blas

from fastsparse._blas cimport (
    floating, xaxpy, xgemv, xger, xsymv, xsyr2, xgemm, xsymm, xsyr2k, xgetrf,
    xgetrs, xnrm2, xscal, NoTrans, Trans, Upper, Right)

from fastsparse._ckernels cimport (
    gather_dots, gather_combine, scatter_axpy, csr_gram_add, online_blocked,
    cgemm, cgemv, csymm_right_upper, csyr2k_upper_trans, fs_loss_spec,
    fs_blas_set)

# This extension's copy of the C kernels calls BLAS through its own table.
fs_blas_set(<void*>cython_blas.sgemm, <void*>cython_blas.dgemm,
            <void*>cython_blas.sgemv, <void*>cython_blas.dgemv,
            <void*>cython_blas.ssymm, <void*>cython_blas.dsymm,
            <void*>cython_blas.ssyr2k, <void*>cython_blas.dsyr2k)


# ---------------------------------------------------------------- kernels
cdef enum Kid:
    # sequential (BLAS-2) online step, per example
    K_GEMV_UH = 0
    K_SYMV_MU
    K_GEMV_UTZ
    K_GEMV_UINVTH
    K_GER_U
    K_GER_UINV
    K_SYR2_M
    # blocked online step, per block of k examples
    K_B_GEMM_HUT
    K_B_SYMM
    K_B_GEMM_HUINV
    K_B_GEMM_HHT
    K_B_CORR
    K_B_GEMM_ZU
    K_B_GEMM_ZBUT
    K_B_GEMM_GH
    K_B_SYR2K
    K_B_GEMM_UUPD
    K_B_GEMM_UINVUPD
    # sparse V rows, per example
    K_GATHER_DOTS
    K_GATHER_COMBINE
    K_SCATTER_AXPY
    K_SPARSE_EXAMPLE
    # minibatch step, per minibatch of m
    K_M_GEMM_HUT
    K_M_SYMM
    K_M_GEMM_ZU
    K_M_GEMM_HHT
    K_M_GETRF
    K_M_GEMM_HUINV
    K_M_GETRS
    K_M_GEMM_HHTZ
    K_M_CSR_GRAM
    K_M_AXPY_YYP
    K_M_GEMM_YYP
    K_M_GEMM_UUPD
    K_M_GEMM_UINVUPD
    K_M_SYR2K
    # stability monitor
    K_MON_POWER
    K_MON_PROBE
    # whole steps
    K_STEP_BLOCKED


ctypedef struct Ctx:
    Py_ssize_t D
    int d, K, m, k
    double lr
    # the state (the whole steps change it) and scratch copies (the
    # component kernels write only to those)
    void* V
    void* U
    void* Uinv
    void* M
    void* Uw
    void* Uinvw
    void* Mw
    # vectors of length d
    void* h
    void* u
    void* x
    void* z
    void* t
    void* w
    # block panels (k x d), k x k, k
    void* Hk
    void* Bu
    void* Xk
    void* Tw
    void* Yk
    void* Zk
    void* Gk
    void* ek
    void* pk
    void* Mu
    # minibatch (m x d, d x m, m x m)
    void* Hm
    void* HU
    void* HUM
    void* Pm
    void* Rm
    void* Zt
    void* HHt
    void* Kmat0
    void* Kmat
    void* YY
    void* YYw
    const int64_t* bat_indptr
    const int64_t* bat_idx
    void* bat_val
    int* ipiv
    # sparse: n_sets sets of K row indices, coefficients
    const int64_t* idx
    Py_ssize_t n_sets
    void* coef
    void* aK
    # monitor: float64 copies of U, Uinv (float32: converted at each call,
    # as the NumPy code of _health.py does), float64 vectors
    double* U64
    double* Uinv64
    double* probe
    double* tmp64
    double* out64
    # whole steps: n_calls calls of m examples
    void* Hs
    const int64_t* step_idx
    const int64_t* step_indptr
    void* step_val
    void* loss
    void* grad
    Py_ssize_t n_calls
    int block
    double r_tol
    int status
    fs_loss_spec spec


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + 1e-9 * <double>ts.tv_nsec


cdef void _prep(const floating* tag, int kid, Ctx* c) noexcept nogil:
    """Untimed work before a call (kernels that destroy their input)."""
    if kid == K_M_GETRF:
        memcpy(c.Kmat, c.Kmat0, <size_t>c.m * c.m * sizeof(floating))


cdef void _call(const floating* tag, int kid, Ctx* c, Py_ssize_t it) noexcept nogil:
    """One call of kernel ``kid``; ``it`` numbers the calls (fresh sparse
    rows and step data, alternating signs of the accumulating updates so
    that the scratch matrices do not drift)."""
    cdef int d = c.d, k = c.k, m = c.m, K = c.K, i
    cdef floating sg = 1 if (it & 1) else -1
    cdef floating tiny = sg * <floating>1e-6
    cdef floating* U = <floating*>c.U
    cdef floating* Uinv = <floating*>c.Uinv
    cdef floating* M = <floating*>c.M
    cdef floating* Uw = <floating*>c.Uw
    cdef floating* Uinvw = <floating*>c.Uinvw
    cdef floating* Mw = <floating*>c.Mw
    cdef floating* h = <floating*>c.h
    cdef floating* u = <floating*>c.u
    cdef floating* x = <floating*>c.x
    cdef floating* z = <floating*>c.z
    cdef floating* t = <floating*>c.t
    cdef floating* w = <floating*>c.w
    cdef floating* Hk = <floating*>c.Hk
    cdef floating* Bu = <floating*>c.Bu
    cdef floating* Xk = <floating*>c.Xk
    cdef floating* Tw = <floating*>c.Tw
    cdef floating* Yk = <floating*>c.Yk
    cdef floating* Zk = <floating*>c.Zk
    cdef floating* Gk = <floating*>c.Gk
    cdef floating* ek = <floating*>c.ek
    cdef floating* pk = <floating*>c.pk
    cdef floating* Mu = <floating*>c.Mu
    cdef floating* Hm = <floating*>c.Hm
    cdef floating* HU = <floating*>c.HU
    cdef floating* HUM = <floating*>c.HUM
    cdef floating* Pm = <floating*>c.Pm
    cdef floating* Rm = <floating*>c.Rm
    cdef floating* Zt = <floating*>c.Zt
    cdef floating* HHt = <floating*>c.HHt
    cdef floating* Kmat = <floating*>c.Kmat
    cdef floating* YY = <floating*>c.YY
    cdef floating* YYw = <floating*>c.YYw
    cdef floating* V = <floating*>c.V
    cdef floating* coef = <floating*>c.coef
    cdef floating* aK = <floating*>c.aK
    cdef const int64_t* idx = c.idx + (it % c.n_sets) * K
    cdef Py_ssize_t j, l, dd = <Py_ssize_t>d * d, b
    cdef Py_ssize_t bad = -1
    cdef double bad_r = 0.0, nrm
    cdef double done = 1.0, dzero = 0.0

    # ---- sequential online step (fastsparse/_core.pyx, online_kernel)
    if kid == K_GEMV_UH:
        xgemv(NoTrans, d, d, 1, U, d, h, 1, 0, u, 1)
    elif kid == K_SYMV_MU:
        xsymv(Upper, d, 1, M, d, u, 1, 0, x, 1)
    elif kid == K_GEMV_UTZ:
        xgemv(Trans, d, d, 1, U, d, z, 1, 0, w, 1)
    elif kid == K_GEMV_UINVTH:
        xgemv(Trans, d, d, 1, Uinv, d, h, 1, 0, t, 1)
    elif kid == K_GER_U:
        xger(d, d, tiny, u, 1, h, 1, Uw, d)
    elif kid == K_GER_UINV:
        xger(d, d, tiny, h, 1, t, 1, Uinvw, d)
    elif kid == K_SYR2_M:
        xsyr2(Upper, d, tiny, t, 1, z, 1, Mw, d)
    # ---- blocked online step (src_c/fs_online_impl.h), one block of k
    elif kid == K_B_GEMM_HUT:
        cgemm(0, 1, k, d, d, 1, Hk, d, U, d, 0, Bu, d)
    elif kid == K_B_SYMM:
        csymm_right_upper(k, d, 1, M, d, Bu, d, 0, Xk, d)
    elif kid == K_B_GEMM_HUINV:
        cgemm(0, 0, k, d, d, 1, Hk, d, Uinv, d, 0, Tw, d)
    elif kid == K_B_GEMM_HHT:
        cgemm(0, 1, k, k, d, 1, Hk, d, Hk, d, 0, Gk, k)
    elif kid == K_B_CORR:
        # the in-block corrections of examples 1..k-1: 7 gemv of i x d each
        for i in range(1, k):
            cgemv(1, i, d, -tiny, Bu, d, ek, 1, u)
            cgemv(1, i, d, -tiny, Xk, d, ek, 1, x)
            cgemv(1, i, d, tiny, Tw, d, ek, 1, t)
            cgemv(0, i, d, 1, Yk, d, u, 0, pk)
            cgemv(1, i, d, -tiny, Tw, d, pk, 1, Mu)
            cgemv(0, i, d, 1, Tw, d, u, 0, pk)
            cgemv(1, i, d, -tiny, Yk, d, pk, 1, Mu)
    elif kid == K_B_GEMM_ZU:
        cgemm(0, 0, k, d, d, 1, Zk, d, U, d, 0, Xk, d)
    elif kid == K_B_GEMM_ZBUT:
        cgemm(0, 1, k, k, d, 1, Zk, d, Bu, d, 0, Gk, k)
    elif kid == K_B_GEMM_GH:
        cgemm(0, 0, k, d, k, tiny, Gk, k, Hk, d, 1, Xk, d)
    elif kid == K_B_SYR2K:
        csyr2k_upper_trans(d, k, tiny, Tw, d, Yk, d, 1, Mw, d)
    elif kid == K_B_GEMM_UUPD:
        cgemm(1, 0, d, d, k, tiny, Bu, d, Hk, d, 1, Uw, d)
    elif kid == K_B_GEMM_UINVUPD:
        cgemm(1, 0, d, d, k, tiny, Hk, d, Tw, d, 1, Uinvw, d)
    # ---- sparse V rows (src_c/fs_sparse.c), fresh random rows per call
    elif kid == K_GATHER_DOTS:
        gather_dots(V, d, idx, K, u, d, aK)
    elif kid == K_GATHER_COMBINE:
        gather_combine(V, d, idx, coef, K, d, z)
    elif kid == K_SCATTER_AXPY:
        for j in range(K):
            aK[j] = tiny * coef[j]
        scatter_axpy(V, d, idx, aK, K, d, t, 1)
    elif kid == K_SPARSE_EXAMPLE:
        # what one example does to V: the three kernels on the same rows
        gather_dots(V, d, idx, K, u, d, aK)
        gather_combine(V, d, idx, coef, K, d, z)
        for j in range(K):
            aK[j] = tiny * coef[j]
        scatter_axpy(V, d, idx, aK, K, d, t, 1)
    # ---- minibatch step (fastsparse/_core.pyx, batch_forward/backward)
    elif kid == K_M_GEMM_HUT:
        xgemm(NoTrans, Trans, m, d, d, 1, Hm, d, U, d, 0, HU, d)
    elif kid == K_M_SYMM:
        xsymm(Right, Upper, m, d, 1, M, d, HU, d, 0, HUM, d)
    elif kid == K_M_GEMM_ZU:
        xgemm(NoTrans, NoTrans, m, d, d, 1, Rm, d, U, d, 0, HUM, d)
    elif kid == K_M_GEMM_HHT:
        xgemm(NoTrans, Trans, m, m, d, 1, Hm, d, Hm, d, 0, HHt, m)
    elif kid == K_M_GETRF:
        xgetrf(m, Kmat, m, c.ipiv)
    elif kid == K_M_GEMM_HUINV:
        xgemm(NoTrans, NoTrans, m, d, d, 1, Hm, d, Uinv, d, 0, Pm, d)
    elif kid == K_M_GETRS:
        # Kmat holds the factors left by the untimed set-up
        xgetrs(NoTrans, m, d, Kmat, m, c.ipiv, Zt, m)
    elif kid == K_M_GEMM_HHTZ:
        xgemm(NoTrans, Trans, m, d, m, tiny, HHt, m, Zt, m, 1, Pm, d)
    elif kid == K_M_CSR_GRAM:
        for j in range(<Py_ssize_t>m * m):
            YYw[j] = 0
        csr_gram_add(m, c.bat_indptr, c.bat_idx, <floating*>c.bat_val, YYw)
    elif kid == K_M_AXPY_YYP:
        # the sparse path of R -= lr/2 (Ydot Ydot^T) P (taken when fewer than
        # 1/8 of the entries are non-zero: examples rarely share targets)
        for j in range(m):
            for l in range(m):
                if YY[j * m + l] != 0:
                    xaxpy(d, tiny * YY[j * m + l], Pm + l * d, 1, Rm + j * d, 1)
    elif kid == K_M_GEMM_YYP:
        xgemm(NoTrans, NoTrans, m, d, m, tiny, YY, m, Pm, d, 1, Rm, d)
    elif kid == K_M_GEMM_UUPD:
        xgemm(Trans, NoTrans, d, d, m, tiny, HU, d, Hm, d, 1, Uw, d)
    elif kid == K_M_GEMM_UINVUPD:
        xgemm(Trans, Trans, d, d, m, tiny, Hm, d, Zt, m, 1, Uinvw, d)
    elif kid == K_M_SYR2K:
        xsyr2k(Upper, Trans, d, m, tiny, Pm, d, Rm, d, 1, Mw, d)
    # ---- stability monitor (fastsparse/_health.py, _estimate)
    elif kid == K_MON_POWER:
        # y = U^T (U x_max), z = Uinv^T (Uinv x_min), both normalised
        xgemv(NoTrans, d, d, 1, U, d, h, 1, 0, u, 1)
        xgemv(Trans, d, d, 1, U, d, u, 1, 0, w, 1)
        nrm = xnrm2(d, w, 1)
        xscal(d, <floating>(1.0 / nrm), w, 1)
        xgemv(NoTrans, d, d, 1, Uinv, d, x, 1, 0, t, 1)
        xgemv(Trans, d, d, 1, Uinv, d, t, 1, 0, z, 1)
        nrm = xnrm2(d, z, 1)
        xscal(d, <floating>(1.0 / nrm), z, 1)
    elif kid == K_MON_PROBE:
        # U (Uinv p) - p in float64; NumPy converts float32 U, Uinv to
        # float64 first (two d x d conversions per check)
        if floating is float:
            for j in range(dd):
                c.U64[j] = U[j]
            for j in range(dd):
                c.Uinv64[j] = Uinv[j]
            xgemv(NoTrans, d, d, done, c.Uinv64, d, c.probe, 1, dzero, c.tmp64, 1)
            xgemv(NoTrans, d, d, done, c.U64, d, c.tmp64, 1, dzero, c.out64, 1)
        else:
            xgemv(NoTrans, d, d, done, U, d, c.probe, 1, dzero, c.tmp64, 1)
            xgemv(NoTrans, d, d, done, Uinv, d, c.tmp64, 1, dzero, c.out64, 1)
    # ---- the whole blocked online step (src_c/fs_online.c)
    elif kid == K_STEP_BLOCKED:
        b = it % c.n_calls
        c.status = online_blocked(
            c.D, d, V, U, Uinv, M, NULL, NULL, m,
            <floating*>c.Hs + b * m * d, c.step_indptr, c.step_idx + b * m * K,
            <floating*>c.step_val + b * m * K, c.lr, 0.0, &c.spec, c.r_tol,
            c.block, <floating*>c.loss, <floating*>c.grad, &bad, &bad_r)


cdef void _time(const floating* tag, int kid, Ctx* c, bint reset, Py_ssize_t inner,
                int repeats, Py_ssize_t start, double* out) noexcept nogil:
    """``repeats`` samples of ``inner`` calls; out[r] = seconds per call.
    With ``reset`` each call is timed alone, after its untimed set-up."""
    cdef Py_ssize_t it = start, j
    cdef int r
    cdef double t0, acc
    for r in range(repeats):
        if reset:
            acc = 0.0
            for j in range(inner):
                _prep(tag, kid, c)
                t0 = _now()
                _call(tag, kid, c, it)
                acc += _now() - t0
                it += 1
        else:
            t0 = _now()
            for j in range(inner):
                _call(tag, kid, c, it)
                it += 1
            acc = _now() - t0
        out[r] = acc / inner


cdef tuple _time_kernel(int kid, Ctx* c, dtype, bint reset, int repeats,
                        double target, Py_ssize_t start):
    """Warm up, pick the calls per sample, time; returns (inner, times)."""
    cdef double[::1] out = np.empty(max(repeats, 3))
    cdef double t1
    cdef Py_ssize_t inner
    cdef float* ts = NULL
    cdef double* td = NULL
    cdef bint single = dtype == np.float32
    with nogil:
        # warm-up, then the time of single calls
        if single:
            _time(ts, kid, c, reset, 1, 3, start, &out[0])
        else:
            _time(td, kid, c, reset, 1, 3, start, &out[0])
    t1 = max(min(out[0], out[1], out[2]), 1e-9)
    inner = max(1, min(1_000_000, <Py_ssize_t>(target / t1 + 0.5)))
    with nogil:
        if single:
            _time(ts, kid, c, reset, inner, repeats, start + 3, &out[0])
        else:
            _time(td, kid, c, reset, inner, repeats, start + 3, &out[0])
    return inner, np.array(out[:repeats])


def _time_python(fn, calls, int warmup, int repeats):
    """Time ``fn(*args, **kw)`` over the prepared argument lists (one Python
    call per timed call); the statuses must be 0."""
    cdef double t0, t1
    cdef int i
    times = np.empty(repeats)
    for i in range(warmup + repeats):
        args, kw = calls[i % len(calls)]
        t0 = _now()
        res = fn(*args, **kw)
        t1 = _now()
        if res is not None and res[0] != 0:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} returned status "
                               f"{res[0]} (example {res[1]}): the state became "
                               "unhealthy; use a smaller lr")
        if i >= warmup:
            times[i - warmup] = t1 - t0
    return times


# -------------------------------------------------------- models and table
def _kernel_specs(int D, int d, int K, int m, int k, int s, nnz_yy=None):
    """(group, section, name, kid, shape, flops, bytes, reset) of every kernel
    timed by a compiled loop.  Flops: an FMA counts 2; a symmetric matrix
    counts as its triangle d(d+1)/2 where BLAS touches only that; bytes:
    every operand read once (s bytes per element), written outputs counted
    again (read + write of an updated matrix = 2 s per element).  nnz_yy:
    the non-zeros of Ydot Ydot^T (default m: no shared targets)."""
    if nnz_yy is None:
        nnz_yy = m
    dd = d * d
    tri = d * (d + 1) // 2
    kd = k * d
    md = m * d
    seq = [
        ("gemv U h", K_GEMV_UH, "d x d", 2 * dd, (dd + 2 * d) * s),
        ("symv M u", K_SYMV_MU, "d x d (upper)", 2 * dd, (tri + 2 * d) * s),
        ("gemv U^T z", K_GEMV_UTZ, "d x d", 2 * dd, (dd + 2 * d) * s),
        ("gemv Uinv^T h", K_GEMV_UINVTH, "d x d", 2 * dd, (dd + 2 * d) * s),
        ("ger U -= c u h^T", K_GER_U, "d x d", 2 * dd, (2 * dd + 2 * d) * s),
        ("ger Uinv += h t^T", K_GER_UINV, "d x d", 2 * dd, (2 * dd + 2 * d) * s),
        ("syr2 M -= lr (w y^T + y w^T)", K_SYR2_M, "d x d (upper)", 4 * tri,
         (2 * tri + 2 * d) * s),
    ]
    corr_f = 7 * k * (k - 1) * d           # sum over i < k of 7 gemv (i x d)
    corr_b = (7 * k * (k - 1) // 2 * d + 7 * (k - 1) * (2 * d)) * s
    blk = [
        ("gemm H U^T", K_B_GEMM_HUT, "k x d x d", 2 * k * dd, (dd + 2 * kd) * s),
        ("symm (H U^T) M", K_B_SYMM, "k x d, d x d (upper)", 2 * k * dd,
         (tri + 2 * kd) * s),
        ("gemm H Uinv", K_B_GEMM_HUINV, "k x d x d", 2 * k * dd, (dd + 2 * kd) * s),
        ("gemm H H^T", K_B_GEMM_HHT, "k x k x d", 2 * k * kd, (kd + k * k) * s),
        ("in-block corrections (7 gemv i x d, i < k)", K_B_CORR, "i x d",
         corr_f, corr_b),
        ("gemm Z U (flush)", K_B_GEMM_ZU, "k x d x d", 2 * k * dd, (dd + 2 * kd) * s),
        ("gemm Z Bu^T (flush)", K_B_GEMM_ZBUT, "k x k x d", 2 * k * kd,
         (2 * kd + k * k) * s),
        ("gemm G H (flush)", K_B_GEMM_GH, "k x d x k", 2 * k * kd,
         (k * k + 3 * kd) * s),
        ("syr2k M rank-2k update", K_B_SYR2K, "d x d (upper), k", 2 * k * d * (d + 1),
         (2 * tri + 2 * kd) * s),
        ("gemm U rank-k update", K_B_GEMM_UUPD, "d x d x k", 2 * k * dd,
         (2 * dd + 2 * kd) * s),
        ("gemm Uinv rank-k update", K_B_GEMM_UINVUPD, "d x d x k", 2 * k * dd,
         (2 * dd + 2 * kd) * s),
    ]
    sp = [
        ("gather_dots (a = V[j] . u)", K_GATHER_DOTS, "K rows of D x d",
         2 * K * d, (K * d + d) * s + 8 * K),
        ("gather_combine (V^T ydot)", K_GATHER_COMBINE, "K rows of D x d",
         2 * K * d, (K * d + d) * s + 8 * K),
        ("scatter_axpy (V[j] += c w)", K_SCATTER_AXPY, "K rows of D x d",
         2 * K * d, (2 * K * d + d) * s + 8 * K),
        ("all three on the same rows (one example)", K_SPARSE_EXAMPLE,
         "K rows of D x d", 6 * K * d, (4 * K * d + 3 * d) * s + 24 * K),
    ]
    mm = m * m
    bat = [
        ("gemm H U^T (forward)", K_M_GEMM_HUT, "m x d x d", 2 * m * dd,
         (dd + 2 * md) * s, False),
        ("symm (H U^T) M (forward)", K_M_SYMM, "m x d, d x d (upper)", 2 * m * dd,
         (tri + 2 * md) * s, False),
        ("gemm Z U (gradient)", K_M_GEMM_ZU, "m x d x d", 2 * m * dd,
         (dd + 2 * md) * s, False),
        ("gemm H H^T", K_M_GEMM_HHT, "m x m x d", 2 * mm * d, (md + mm) * s, False),
        ("getrf (I - 2 lr diag(gq) H H^T)", K_M_GETRF, "m x m", 2 * m ** 3 // 3,
         2 * mm * s, True),
        ("gemm H Uinv", K_M_GEMM_HUINV, "m x d x d", 2 * m * dd, (dd + 2 * md) * s,
         False),
        ("getrs (d right-hand sides)", K_M_GETRS, "m x m, d rhs", 2 * mm * d,
         (mm + 2 * md) * s, False),
        ("gemm (H H^T) Z", K_M_GEMM_HHTZ, "m x d x m", 2 * mm * d,
         (mm + 3 * md) * s, False),
        ("csr_gram_add: Ydot Ydot^T from the targets", K_M_CSR_GRAM,
         "m x m, K per row", None,
         mm * s + (m * (m + 1) // 2) * 2 * K * (8 + s), False),
        (f"axpy (Ydot Ydot^T) P: sparse path, {nnz_yy} non-zeros",
         K_M_AXPY_YYP, "nnz x d", 2 * nnz_yy * d,
         3 * nnz_yy * d * s + mm * s, False),
        ("gemm (Ydot Ydot^T) P: dense path (>= 1/8 non-zero)", K_M_GEMM_YYP,
         "m x d x m", 2 * mm * d, (mm + 3 * md) * s, False),
        ("gemm U rank-m update", K_M_GEMM_UUPD, "d x d x m", 2 * m * dd,
         (2 * dd + 2 * md) * s, False),
        ("gemm Uinv rank-m update (Woodbury)", K_M_GEMM_UINVUPD, "d x d x m",
         2 * m * dd, (2 * dd + 2 * md) * s, False),
        ("syr2k M rank-2m update", K_M_SYR2K, "d x d (upper), m", 2 * m * d * (d + 1),
         (2 * tri + 2 * md) * s, False),
    ]
    probe_b = (2 * dd * (s + 8) if s == 4 else 0) + 2 * dd * 8
    mon = [
        ("power iterations: U^T(U x), Uinv^T(Uinv x) (4 gemv)", K_MON_POWER,
         "d x d", 8 * dd + 6 * d, 4 * (dd + 2 * d) * s),
        ("inverse probe U (Uinv p) in float64 (2 dgemv"
         + (" + 2 conversions)" if s == 4 else ")"), K_MON_PROBE, "d x d",
         4 * dd, probe_b),
    ]
    out = []
    for group, section, lst in (
            ("sequential", "online sequential (per example)", seq),
            ("blocked", f"online blocked k={k} (per block)", blk),
            ("sparse", "sparse V rows (per example)", sp),
            ("batch", f"minibatch m={m} (per step)", bat),
            ("monitor", "stability monitor (per check)", mon)):
        for row in lst:
            reset = row[5] if len(row) > 5 else False
            out.append((group, section) + tuple(row[:5]) + (reset,))
    return out


def step_models(int D, int d, int K, int m, int k, int s, nnz_yy=None):
    """Flop, byte and pass models of the whole steps, per call of m examples.

    Returns
    -------
    dict
        ``"sequential"``, ``"blocked"``, ``"batch"``: (flops, bytes, passes
        per example), where passes counts the BLAS calls per example that
        traverse a d x d matrix (the whole matrix, or the upper triangle of
        the symmetric M): 7 per example for the sequential path, 7 per block
        of k for the blocked one (plus O(k d) corrections per example), 7 per
        minibatch.  Flops and bytes are those of the kernel models of
        :func:`run` (see ``flop_model``), summed; the blocked path includes
        its corrections (``3 * 2 k^2 d + 7 k (k - 1) d`` per block), the
        minibatch step the sparse path of (Ydot Ydot^T) P with ``nnz_yy``
        non-zeros (default m: no shared targets).
    """
    if nnz_yy is None:
        nnz_yy = m
    dd = d * d
    tri = d * (d + 1) // 2
    sparse_f = 6 * K * d
    sparse_b = (4 * K * d + 3 * d) * s + 24 * K
    # sequential: 6 x 2 d^2 (gemv, symv, ger) + syr2 (4 tri) per example
    seq_f = m * (12 * dd + 4 * tri + sparse_f)
    seq_b = m * ((4 * dd + 3 * dd + 3 * tri + 14 * d) * s + sparse_b)
    nblocks = -(-m // k)
    kd = k * d
    blk_f = nblocks * (12 * k * dd + 2 * k * d * (d + 1) + 3 * 2 * k * kd
                       + 7 * k * (k - 1) * d) + m * sparse_f
    blk_b = nblocks * ((4 * dd + 3 * dd + 3 * tri + 14 * kd + k * k * 3
                        + 7 * k * (k - 1) // 2 * d) * s) + m * sparse_b
    mm = m * m
    md = m * d
    bat_f = (12 * m * dd + 2 * m * d * (d + 1) + 6 * mm * d + 2 * nnz_yy * d
             + 2 * m ** 3 // 3 + m * sparse_f)
    bat_b = ((4 * dd + 3 * dd + 3 * tri + 11 * md + 3 * nnz_yy * d + 6 * mm) * s
             + m * sparse_b)
    return {"sequential": (seq_f, seq_b, 7.0),
            "blocked": (blk_f, blk_b, 7.0 / k),
            "batch": (bat_f, bat_b, 7.0 / m)}


FLOP_MODEL = ("an FMA counts 2 flops; BLAS-2/3 calls: 2 x (product of the "
              "dimensions), syr2/syr2k on the triangle, getrf 2/3 m^3, getrs "
              "2 m^2 d; sparse rows 2 K d per kernel; whole steps: the sum "
              "over their calls (the blocked step including its in-block "
              "corrections)")
BYTE_MODEL = ("each operand read once and each output written once, s bytes "
              "per element (4 float32, 8 float64): reading a d x d matrix "
              "moves s d^2 bytes, updating it 2 s d^2, a symmetric one only "
              "its triangle; sparse kernels add 8 bytes per row index")
PASS_MODEL = ("BLAS calls that traverse a d x d matrix (whole, or the upper "
              "triangle of M), per example: sequential 7 (gemv U, symv M, "
              "gemv U^T, gemv Uinv^T, ger U, ger Uinv, syr2 M), blocked 7/k "
              "(gemm H U^T, symm M, gemm H Uinv, gemm Z U, syr2k M, rank-k "
              "gemm on U and on Uinv, per block), minibatch 7/m")


cdef void* _ptr(object a) except? NULL:
    """The data pointer of a C-contiguous array (kept alive by the caller)."""
    if not a.flags.c_contiguous:
        raise ValueError("array is not C-contiguous")
    cdef size_t p = a.ctypes.data
    return <void*>p


def _unit_rows(rng, n, d, dtype):
    H = rng.standard_normal((n, d))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    return np.ascontiguousarray(H, dtype=dtype)


def _distinct_sorted_rows(rng, D, n, K):
    """n sets of K distinct row indices in [0, D), each sorted."""
    idx = np.sort(rng.integers(0, D, size=(n, K)), axis=1)
    while K > 1:
        dup = np.any(np.diff(idx, axis=1) == 0, axis=1)
        if not dup.any():
            break
        idx[dup] = np.sort(rng.integers(0, D, size=(int(dup.sum()), K)), axis=1)
    return np.ascontiguousarray(idx, dtype=np.int64)


def make_state(D, d, dtype, seed=0, status=None):
    """A realistic factored state: V random (D x d, entries N(0, 1/d)), U
    random and well conditioned (I + 0.1 G / sqrt(d), condition number about
    1.5), Uinv its inverse (computed in float64), M = V^T V (full).

    Parameters
    ----------
    D, d : int
    dtype : numpy dtype
    seed : int, default 0
    status : callable, optional
        ``status(message)`` is called before the slow parts.

    Returns
    -------
    dict of ndarray
        ``V``, ``U``, ``Uinv``, ``M``.
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if status:
        status(f"random V ({D} x {d}, {D * d * dtype.itemsize / 2**30:.2f} GiB)")
    V = np.empty((D, d), dtype=dtype)
    chunk = max(1, (1 << 22) // d)
    scale = dtype.type(1.0 / np.sqrt(d))
    for start in range(0, D, chunk):
        blk = V[start:start + chunk]
        rng.standard_normal(out=blk, dtype=dtype)
        blk *= scale
    U64 = np.eye(d) + 0.1 * rng.standard_normal((d, d)) / np.sqrt(d)
    U = np.ascontiguousarray(U64, dtype=dtype)
    Uinv = np.ascontiguousarray(np.linalg.inv(U.astype(np.float64)), dtype=dtype)
    if status:
        status("M = V^T V")
    M = np.ascontiguousarray(V.T @ V, dtype=dtype)
    return {"V": V, "U": U, "Uinv": Uinv, "M": M}


def run(D=793_471, d=512, K=1, m=128, dtype="float32", block=(32, 64),
        repeats=15, *, target_time=2e-3, lr=1e-4, seed=0, threads=1,
        steps=True, python_rows=True, state=None, status=None):
    """Time every kernel of a step, and the whole steps, in compiled loops.

    Parameters
    ----------
    D, d, K, m : int
        Outputs, hidden units, targets per example (rows of V touched),
        examples per call (minibatch size; also the examples per call of the
        whole online steps).
    dtype : {"float32", "float64"}
    block : int or sequence of int, default (32, 64)
        Block sizes k of the blocked online kernel.
    repeats : int, default 15
        Timed samples per kernel (min and median are reported).
    target_time : float, default 2e-3
        Seconds per sample: a fast kernel is called ``inner`` times in a row
        per sample (``inner`` chosen from the time of a single call), so
        that the clock's resolution does not matter.  Whole steps: one call
        per sample.
    lr : float, default 1e-4
        Learning rate of the whole steps (h has norm 1, squared error:
        each example scales U by r = 1 - 2 lr along h), small so that the
        state stays healthy over all repetitions.
    seed : int, default 0
    threads : int, default 1
        BLAS threads during the measurements (threadpoolctl; the set-up of
        the state uses the default).
    steps : bool, default True
        Also time the whole steps (they change the state).
    python_rows : bool, default True
        Also time the steps through ``_core`` (one Python call per m
        examples) and ``StabilityControl._estimate`` (NumPy).
    state : dict, optional
        ``V, U, Uinv, M`` from :func:`make_state` (reused across calls;
        changed by the whole steps).  Default: a fresh one.
    status : callable, optional
        ``status(message)`` for progress messages.

    Returns
    -------
    list of dict
        One row per kernel: ``section``, ``kernel``, ``shape``, ``via``
        (``"C loop"``: compiled nogil loop; ``"python"``: one Python call
        per timed call), ``dtype``, ``D``, ``d``, ``K``, ``m``, ``block``,
        ``inner`` (calls per sample), ``calls``, ``min_s``, ``median_s``
        (seconds per call), ``flops``, ``bytes`` (per call, by the models
        :data:`FLOP_MODEL`, :data:`BYTE_MODEL`; None when not modelled),
        ``gflops``, ``gbytes_per_s`` (from the median), and for the whole
        online steps ``examples`` (per call), ``median_per_example_s``,
        ``passes_per_example`` (:data:`PASS_MODEL`).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    blocks = [int(block)] if np.ndim(block) == 0 else [int(b) for b in block]
    if min(D, d, K, m, repeats) < 1 or min(blocks) < 1 or K > D:
        raise ValueError("D, d, K, m, repeats and blocks must be >= 1 (K <= D)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    if state is None:
        state = make_state(D, d, dtype, seed, status)
    V = state["V"]
    if V.shape != (D, d) or V.dtype != dtype:
        raise ValueError("state does not match D, d, dtype")
    with threadpool_limits(limits=threads, user_api="blas"):
        return _run(D, d, K, m, dtype, blocks, repeats, target_time, lr, rng,
                    steps, python_rows, state, status)


def _run(D, d, K, m, dtype, blocks, repeats, target_time, lr, rng, steps,
         python_rows, state, status):
    from fastsparse import _core
    from fastsparse._health import StabilityControl

    cdef Ctx c
    s = dtype.itemsize
    V, U, Uinv, M = state["V"], state["U"], state["Uinv"], state["M"]
    kmax = max(blocks)
    arrs = {}

    def A(name, arr):
        arrs[name] = np.ascontiguousarray(arr, dtype=dtype)
        return arrs[name]

    def vec(n):
        return rng.standard_normal(n) / np.sqrt(max(n, 1))

    A("Uw", U.copy()); A("Uinvw", Uinv.copy()); A("Mw", M.copy())
    for name in ("h", "u", "x", "z", "t", "w", "Mu"):
        A(name, vec(d))
    arrs["h"] /= np.linalg.norm(arrs["h"])
    for name in ("Hk", "Bu", "Xk", "Tw", "Yk", "Zk"):
        A(name, _unit_rows(rng, kmax, d, dtype))
    A("Gk", rng.standard_normal((kmax, kmax)) / np.sqrt(d))
    A("ek", 1e-3 * rng.standard_normal(kmax))
    A("pk", np.zeros(kmax))
    Hm = A("Hm", _unit_rows(rng, m, d, dtype))
    for name in ("HU", "HUM", "Pm", "Rm"):
        A(name, rng.standard_normal((m, d)) / np.sqrt(d))
    A("Zt", rng.standard_normal((d, m)) / np.sqrt(d))
    HHt = Hm.astype(np.float64) @ Hm.T.astype(np.float64)
    A("HHt", HHt)
    A("Kmat0", np.eye(m) - 2 * lr * HHt)
    A("Kmat", np.eye(m) - 2 * lr * HHt)
    bat_idx = _distinct_sorted_rows(rng, D, m, K).ravel()
    bat_indptr = np.ascontiguousarray(K * np.arange(m + 1), dtype=np.int64)
    bat_val = A("bat_val", 1.0 - 2.0 * np.ones(m * K))   # dL/da, squared error
    YY = A("YY", np.zeros((m, m)))
    _core._py_csr_gram_add(bat_indptr, bat_idx, bat_val, YY)
    A("YYw", np.zeros((m, m)))
    nnz_yy = int(np.count_nonzero(YY))
    ipiv = np.zeros(m, dtype=np.intc)
    n_sets = int(min(1 << 16, max(1, (1 << 20) // K)))
    idx = _distinct_sorted_rows(rng, D, n_sets, K)
    A("coef", rng.standard_normal(K))
    A("aK", np.zeros(K))
    mon64 = {n: np.zeros((d, d)) for n in ("U64", "Uinv64")}
    probe = rng.standard_normal(d)
    probe /= np.linalg.norm(probe)
    tmp64 = np.zeros(d)
    out64 = np.zeros(d)

    c.D = D; c.d = d; c.K = K; c.m = m; c.k = kmax; c.lr = lr
    c.V = _ptr(V); c.U = _ptr(U); c.Uinv = _ptr(Uinv); c.M = _ptr(M)
    c.Uw = _ptr(arrs["Uw"]); c.Uinvw = _ptr(arrs["Uinvw"]); c.Mw = _ptr(arrs["Mw"])
    c.h = _ptr(arrs["h"]); c.u = _ptr(arrs["u"]); c.x = _ptr(arrs["x"])
    c.z = _ptr(arrs["z"]); c.t = _ptr(arrs["t"]); c.w = _ptr(arrs["w"])
    c.Hk = _ptr(arrs["Hk"]); c.Bu = _ptr(arrs["Bu"]); c.Xk = _ptr(arrs["Xk"])
    c.Tw = _ptr(arrs["Tw"]); c.Yk = _ptr(arrs["Yk"]); c.Zk = _ptr(arrs["Zk"])
    c.Gk = _ptr(arrs["Gk"]); c.ek = _ptr(arrs["ek"]); c.pk = _ptr(arrs["pk"])
    c.Mu = _ptr(arrs["Mu"])
    c.Hm = _ptr(Hm); c.HU = _ptr(arrs["HU"]); c.HUM = _ptr(arrs["HUM"])
    c.Pm = _ptr(arrs["Pm"]); c.Rm = _ptr(arrs["Rm"]); c.Zt = _ptr(arrs["Zt"])
    c.HHt = _ptr(arrs["HHt"]); c.Kmat0 = _ptr(arrs["Kmat0"])
    c.Kmat = _ptr(arrs["Kmat"]); c.YY = _ptr(arrs["YY"]); c.YYw = _ptr(arrs["YYw"])
    c.bat_indptr = <const int64_t*>_ptr(bat_indptr)
    c.bat_idx = <const int64_t*>_ptr(bat_idx); c.bat_val = _ptr(bat_val)
    c.ipiv = <int*>_ptr(ipiv)
    c.idx = <const int64_t*>_ptr(idx); c.n_sets = n_sets
    c.coef = _ptr(arrs["coef"]); c.aK = _ptr(arrs["aK"])
    c.U64 = <double*>_ptr(mon64["U64"]); c.Uinv64 = <double*>_ptr(mon64["Uinv64"])
    c.probe = <double*>_ptr(probe); c.tmp64 = <double*>_ptr(tmp64)
    c.out64 = <double*>_ptr(out64)
    c.Hs = c.step_val = c.loss = c.grad = NULL
    c.step_idx = c.step_indptr = NULL
    c.n_calls = 1
    c.block = kmax
    c.r_tol = 1e-3
    c.status = 0
    c.spec.kind = 0          # squared error
    c.spec.n_outputs = D
    c.spec.eps = c.spec.alpha = c.spec.beta = 0.0
    # getrs needs factors: factor Kmat once (untimed)
    if dtype == np.float32:
        xgetrf(c.m, <float*>c.Kmat, c.m, c.ipiv)
    else:
        xgetrf(c.m, <double*>c.Kmat, c.m, c.ipiv)

    base = {"dtype": dtype.name, "D": D, "d": d, "K": K, "m": m}
    rows = []
    counter = 0

    def record(section, name, shape, via, blk, inner, times, flops, nbytes,
               extra=None):
        med = float(np.median(times))
        row = dict(base, section=section, kernel=name, shape=shape, via=via,
                   block=blk, inner=int(inner), calls=int(inner * len(times)),
                   min_s=float(np.min(times)), median_s=med, flops=flops,
                   bytes=nbytes,
                   gflops=flops / med / 1e9 if flops else None,
                   gbytes_per_s=nbytes / med / 1e9 if nbytes else None)
        if extra:
            row.update(extra)
        rows.append(row)

    # ---- the kernels, in the order of _kernel_specs; the blocked ones for
    # every block size
    for group in ("sequential", "blocked", "sparse", "batch", "monitor"):
        for k in (blocks if group == "blocked" else blocks[:1]):
            c.k = k
            for spec in _kernel_specs(D, d, K, m, k, s, nnz_yy):
                if spec[0] != group:
                    continue
                _, section, name, kid, shape, fl, by, reset = spec
                if status:
                    status(f"{section}: {name}")
                inner, times = _time_kernel(kid, &c, dtype, reset, repeats,
                                            target_time, counter)
                counter += inner * repeats + 3
                record(section, name, shape, "C loop",
                       k if group == "blocked" else None, inner, times, fl, by)
    if python_rows:
        if status:
            status("stability monitor via Python")
        ctl = StabilityControl(dtype)

        class _Layer:
            pass
        lay = _Layer()
        lay._U, lay._Uinv = U, Uinv
        ctl._estimate(lay, iterations=1)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ctl._estimate(lay, iterations=1)
            times.append(time.perf_counter() - t0)
        record("stability monitor (per check)",
               "StabilityControl._estimate(iterations=1) (NumPy)", "d x d",
               "python", None, 1, np.array(times), None, None)
    if not steps:
        return rows

    # ---- the whole steps on the real state, fresh data per call
    warmup = 2
    n_calls = repeats + 3        # the compiled loop warms up with 3 calls
    Hs = _unit_rows(rng, n_calls * m, d, dtype)
    step_idx = _distinct_sorted_rows(rng, D, n_calls * m, K).ravel()
    step_val = np.ones(n_calls * m * K, dtype=dtype)
    indptr = np.ascontiguousarray(K * np.arange(m + 1), dtype=np.int64)
    loss = np.zeros(m, dtype=dtype)
    grad = np.zeros((m, d), dtype=dtype)
    c.Hs = _ptr(Hs); c.step_idx = <const int64_t*>_ptr(step_idx)
    c.step_indptr = <const int64_t*>_ptr(indptr); c.step_val = _ptr(step_val)
    c.loss = _ptr(loss); c.grad = _ptr(grad); c.n_calls = n_calls
    empty = np.zeros(0, dtype=dtype)
    params = np.zeros(0)

    def step_calls(block_arg):
        out = []
        for i in range(n_calls):
            sl = slice(i * m, (i + 1) * m)
            args = (V, U, Uinv, M, empty, empty, Hs[sl], indptr,
                    step_idx[i * m * K:(i + 1) * m * K],
                    step_val[i * m * K:(i + 1) * m * K], lr, 0.0, 0, params,
                    1e-3, loss, grad)
            out.append((args, {} if block_arg is None else {"block": block_arg}))
        return out

    def step_row(label, via, blk, times, key, kk):
        fl, by, passes = step_models(D, d, K, m, kk, s)[key]
        extra = {"examples": m, "median_per_example_s": float(np.median(times)) / m}
        if key != "batch":
            extra["passes_per_example"] = passes
        record("whole steps (per call of m examples)", label,
               f"m={m} examples", via, blk, 1, times, fl, by, extra)

    if status:
        status("online step, sequential (block=0) via _core.online_step")
    times = _time_python(_core.online_step, step_calls(0), warmup, repeats)
    step_row("online sequential BLAS-2 (_core.online_step, block=0)", "python",
             0, times, "sequential", 1)
    for k in blocks:
        if status:
            status(f"online step, blocked k={k}")
        c.block = k
        inner, times = _time_kernel(K_STEP_BLOCKED, &c, dtype, False, repeats,
                                    0.0, 0)
        if c.status != 0:
            raise RuntimeError(f"fs_online_blocked returned status {c.status}: "
                               "the state became unhealthy; use a smaller lr")
        step_row(f"online blocked k={k} (fs_online_blocked_{'s' if s == 4 else 'd'})",
                 "C loop", k, times, "blocked", k)
        if python_rows:
            times = _time_python(_core.online_step, step_calls(k), warmup, repeats)
            step_row(f"online blocked k={k} (_core.online_step, block={k})",
                     "python", k, times, "blocked", k)
    if status:
        status("minibatch step via _core.batch_step")
    calls = step_calls(None)
    times = _time_python(_core.batch_step, calls, warmup, repeats)
    step_row(f"minibatch (_core.batch_step, m={m})", "python", None, times,
             "batch", kmax)
    return rows
