# cython: language_level=3
"""Compiled kernels of the factored output layer.

State (row-major):  W = V U + 1_D omega^T,  Uinv = U^{-1},  M = V^T V (only
its upper triangle is read and kept up to date) and, when sums are tracked,
omega and sv = V^T 1_D (callers pass zero-length arrays otherwise).

ALGORITHM.md keeps Q = W^T W; we keep M = V^T V instead, which gives the
same quantities at the same cost (Q = U^T M U + U^T sv omega^T
+ omega sv^T U + D omega omega^T, so q = h^T Q h = u^T M u + ... with
u = U h, which the step computes anyway, and Q h only ever appears inside
grad_h = U^T (...), which shares its U^T pass with U^T V^T ydot), but whose
rounding stays relative: M is updated in V's coordinates, where nothing
shrinks as W decays, whereas the rounding added to Q by the target terms
does not shrink with W^T W (measured: Q's relative error grew to 1e-3 in
float32 over 16 000 steps while the dense float32 layer stayed at 1e-6).
The V rows change by rows proportional to w = Uinv'^T h (online) or
P = H Uinv' (minibatch), so M' = M + dV^T V + V^T dV + dV^T dV is one
symmetric rank-2 (rank-2m) update built from V^T ydot, which the gradient
needs anyway.

The kernels trust their inputs (the Python layer validates once) and run
without the GIL for their whole duration.  Targets arrive in CSR form:
``indptr`` (m + 1), ``indices`` (nnz, int64, sorted and distinct within a
row) and ``values`` (nnz).

Status codes returned to Python: 0 success; STATUS_SMALL_R: the update of
example ``bad`` has |r| < r_tol (state untouched in batch mode; in online
mode the examples before ``bad`` were applied); STATUS_SINGULAR: the
minibatch Woodbury system is singular (state untouched); STATUS_LOSS: a
loss value or gradient is not finite (example ``bad``); STATUS_NONFINITE:
a product of the state with h is not finite, i.e. the state itself holds
NaN/Inf (example ``bad``, detected before it is applied); STATUS_NOMEM.

Weight decay ``wd`` (SGD on L + wd/2 ||W||^2): each update is applied with
lr / rho and followed by W <- rho W, rho = 1 - lr wd, which is exact and
O(d^2): U and omega are scaled (and Uinv inversely); V, M, sv are not.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.math cimport fabs, isfinite
from libc.stdint cimport int64_t
from scipy.linalg cimport cython_blas

from fastsparse._blas cimport (
    floating, xdot, xaxpy, xscal, xcopy, xgemv, xger, xsymv, xsyr2, xgemm,
    xsymm, xsyr2k, xgetrf, xgetrs, NoTrans, Trans, Upper, Right)

from fastsparse._ckernels cimport (
    gather_dots, gather_combine, scatter_axpy, csr_gram_add, rankk_rows,
    eval_loss, FS_MAX_RANK, fs_loss_spec, FS_ONLINE_DEFAULT_BLOCK,
    FS_ONLINE_MIN_EXAMPLES, fs_blas_set, online_blocked)

# The C kernels of src_c/ call BLAS through a table: give them SciPy's.
fs_blas_set(<void*>cython_blas.sgemm, <void*>cython_blas.dgemm,
            <void*>cython_blas.sgemv, <void*>cython_blas.dgemv,
            <void*>cython_blas.ssymm, <void*>cython_blas.dsymm,
            <void*>cython_blas.ssyr2k, <void*>cython_blas.dsyr2k)

#: Examples per block of the blocked online kernel (src_c/fs_online.h).
ONLINE_BLOCK = FS_ONLINE_DEFAULT_BLOCK

# Values of fs_status in src_c/fs_loss.h.
cpdef enum Status:
    STATUS_OK = 0
    STATUS_SMALL_R = 1
    STATUS_SINGULAR = 2
    STATUS_LOSS = 3
    STATUS_NOMEM = 4
    STATUS_NONFINITE = 5

cpdef enum LossKind:
    # ids shared with fastsparse/losses.py and fs_loss_kind (src_c/fs_loss.h)
    LOSS_SQUARED = 0
    LOSS_SPHERICAL = 1
    LOSS_TAYLOR = 2
    LOSS_ZLOSS = 3

ctypedef fs_loss_spec LossSpec


cdef inline bint all_finite(int n, const floating* x) noexcept nogil:
    """Whether x holds no NaN/Inf (a NaN or Inf makes the sum non-finite)."""
    cdef double acc = 0.0
    cdef int i
    for i in range(n):
        acc += x[i]
    return isfinite(acc)


cdef void decay_state(int d, double rho, floating* U, floating* Uinv,
                      floating* omega) noexcept nogil:
    """W <- rho W without touching V (nor M = V^T V, nor sv = V^T 1)."""
    xscal(d * d, <floating>rho, U, 1)
    xscal(d * d, <floating>(1.0 / rho), Uinv, 1)
    if omega != NULL:
        xscal(d, <floating>rho, omega, 1)


cdef Py_ssize_t max_row_nnz(Py_ssize_t m, const int64_t* indptr) noexcept nogil:
    cdef Py_ssize_t i, kmax = 1
    for i in range(m):
        if indptr[i + 1] - indptr[i] > kmax:
            kmax = indptr[i + 1] - indptr[i]
    return kmax


# ------------------------------------------------------------ online mode
cdef int online_kernel(Py_ssize_t D, int d, floating* V, floating* U,
                       floating* Uinv, floating* M, floating* omega,
                       floating* sv, int m, const floating* H,
                       const int64_t* indptr, const int64_t* indices,
                       const floating* values, double lr, double wd,
                       const LossSpec* spec, double r_tol,
                       floating* loss_out, floating* grad_out,
                       Py_ssize_t* bad, double* bad_r) noexcept nogil:
    """One exact rank-one update per example, in order (ALGORITHM.md,
    "Online update", with M = V^T V in place of Q)."""
    cdef double rho = 1.0 - lr * wd
    if rho != 1.0:
        lr = lr / rho
    cdef bint keep_s = omega != NULL
    cdef Py_ssize_t kmax = max_row_nnz(m, indptr)
    cdef floating* work = <floating*>malloc((5 * d + 3 * kmax) * sizeof(floating))
    if work == NULL:
        return STATUS_NOMEM
    cdef floating* u = work          # U h
    cdef floating* Mu = work + d     # M u
    cdef floating* t = work + 2 * d  # Uinv^T h
    cdef floating* z = work + 3 * d  # grad_h = U^T z + (...) omega
    cdef floating* g = work + 4 * d  # grad_h
    cdef floating* a = work + 5 * d
    cdef floating* ga = a + kmax
    cdef floating* coef = ga + kmax
    cdef const floating* h
    cdef const int64_t* idx
    cdef Py_ssize_t i, k, K
    cdef double q, s, oh, svu, hh, L, gq, gs, c, r, sga, ga2
    cdef int status

    for i in range(m):
        h = H + i * d
        K = indptr[i + 1] - indptr[i]
        idx = indices + indptr[i]
        # forward at the current state: q = u^T M u (+ omega terms), s
        xgemv(NoTrans, d, d, 1, U, d, h, 1, 0, u, 1)
        xsymv(Upper, d, 1, M, d, u, 1, 0, Mu, 1)
        q = xdot(d, u, 1, Mu, 1)
        hh = xdot(d, h, 1, h, 1)
        oh = 0.0
        svu = 0.0
        if keep_s:
            oh = xdot(d, omega, 1, h, 1)
            svu = xdot(d, sv, 1, u, 1)
            q += 2.0 * svu * oh + spec.n_outputs * oh * oh
        s = svu + spec.n_outputs * oh
        gather_dots(V, d, idx, K, u, d, a)
        for k in range(K):
            a[k] += <floating>oh
        status = eval_loss(spec, K, a, values + indptr[i], q, s, &L, ga,
                           &gq, &gs)
        if status != STATUS_OK:
            bad[0] = i
            free(work)
            return status
        c = 2.0 * lr * gq
        r = 1.0 - c * hh
        if lr > 0 and fabs(r) < r_tol:
            bad[0] = i
            bad_r[0] = r
            free(work)
            return STATUS_SMALL_R
        loss_out[i] = <floating>L
        # z = V^T ydot + 2 gq (M u + oh sv) + gs sv  (V's coordinates)
        # grad_h = U^T z + (2 gq s + D gs + sum(ga)) omega
        gather_combine(V, d, idx, ga, K, d, z)
        sga = 0.0
        ga2 = 0.0
        for k in range(K):
            sga += ga[k]
            ga2 += <double>ga[k] * ga[k]
        xcopy(d, z, 1, t, 1)             # t <- V^T ydot, kept for M' below
        xaxpy(d, <floating>(2.0 * gq), Mu, 1, z, 1)
        if keep_s:
            xaxpy(d, <floating>(2.0 * gq * oh + gs), sv, 1, z, 1)
        xgemv(Trans, d, d, 1, U, d, z, 1, 0, g, 1)
        if keep_s:
            xaxpy(d, <floating>(2.0 * gq * s + spec.n_outputs * gs + sga),
                  omega, 1, g, 1)
        xcopy(d, g, 1, grad_out + i * d, 1)
        if lr == 0:
            continue
        # z <- V^T ydot (old rows); t <- Uinv^T h
        xcopy(d, t, 1, z, 1)
        xgemv(Trans, d, d, 1, Uinv, d, h, 1, 0, t, 1)
        if not (all_finite(d, g) and all_finite(d, t) and all_finite(d, u)):
            bad[0] = i
            free(work)
            return STATUS_NONFINITE
        # U' = U - c (U h) h^T ; Uinv' = Uinv + (c / r) h (Uinv^T h)^T
        xger(d, d, <floating>(-c), u, 1, h, 1, U, d)
        xger(d, d, <floating>(c / r), h, 1, t, 1, Uinv, d)
        # V'[j_k] = V[j_k] - lr ga_k w,  w = Uinv'^T h = t / r
        xscal(d, <floating>(1.0 / r), t, 1)
        for k in range(K):
            coef[k] = <floating>(-lr * ga[k])
        scatter_axpy(V, d, idx, coef, K, d, t, 1)
        # M' = M - lr (w y^T + y w^T),  y = V^T ydot - lr/2 ||ga||^2 w
        xaxpy(d, <floating>(-0.5 * lr * ga2), t, 1, z, 1)
        xsyr2(Upper, d, <floating>(-lr), t, 1, z, 1, M, d)
        if keep_s:
            xaxpy(d, <floating>(-lr * sga), t, 1, sv, 1)
            xaxpy(d, <floating>(-lr * (2.0 * gq * oh + gs)), h, 1, omega, 1)
        if rho != 1.0:
            decay_state(d, rho, U, Uinv, omega)
    free(work)
    return STATUS_OK


# ------------------------------------------------------------ batch mode
cdef void batch_forward(Py_ssize_t D, int d, const floating* V,
                        const floating* U, const floating* M,
                        const floating* omega, const floating* sv, int m,
                        const floating* H, const int64_t* indptr,
                        const int64_t* indices, floating* HU, floating* HUM,
                        floating* a, double* q, double* s, double* Ho,
                        double* svu) noexcept nogil:
    """Outputs at the targets (a), q = ||o||^2, s = sum(o), omega.h (Ho),
    sv.(U h) (svu), and the products H U^T, H U^T M that backward reuses."""
    cdef Py_ssize_t i, p
    xgemm(NoTrans, Trans, m, d, d, 1, H, d, U, d, 0, HU, d)
    xsymm(Right, Upper, m, d, 1, M, d, HU, d, 0, HUM, d)
    for i in range(m):
        q[i] = xdot(d, HU + i * d, 1, HUM + i * d, 1)
        Ho[i] = 0.0
        svu[i] = 0.0
        if omega != NULL:
            Ho[i] = xdot(d, H + i * d, 1, omega, 1)
            svu[i] = xdot(d, HU + i * d, 1, sv, 1)
            q[i] += 2.0 * svu[i] * Ho[i] + D * Ho[i] * Ho[i]
        s[i] = svu[i] + D * Ho[i]
        gather_dots(V, d, indices + indptr[i], indptr[i + 1] - indptr[i],
                    HU + i * d, d, a + indptr[i])
        for p in range(indptr[i], indptr[i + 1]):
            a[p] += <floating>Ho[i]


cdef int batch_backward(Py_ssize_t D, int d, floating* V, floating* U,
                        floating* Uinv, floating* M, floating* omega,
                        floating* sv, int m, const floating* H,
                        const int64_t* indptr, const int64_t* indices,
                        const floating* ga, const double* gq,
                        const double* gs, const double* s, const double* Ho,
                        const double* svu, const floating* HU,
                        const floating* HUM, double lr, double wd,
                        double r_tol, floating* grad_out, Py_ssize_t* bad,
                        double* bad_r) noexcept nogil:
    """grad_H for the given (ga, gq, gs), then one exact update with the
    summed gradient (ALGORITHM.md, "Minibatch update", with M = V^T V in
    place of Q).  Every check comes before the first write to the state."""
    cdef double rho = 1.0 - lr * wd
    if rho != 1.0:
        lr = lr / rho
    cdef bint keep_s = omega != NULL
    cdef Py_ssize_t md = <Py_ssize_t>m * d, mm = <Py_ssize_t>m * m
    cdef Py_ssize_t i, j, c, p, nnz
    cdef double r, hh, Dn = <double>D
    # workspace: R, Z, P, Hg (m x d); Zt (d x m); HHt, Kmat, YY (m x m);
    # fvec (m)
    cdef floating* work = <floating*>malloc((5 * md + 3 * mm + m) * sizeof(floating))
    cdef double* ysum = <double*>malloc(m * sizeof(double))
    cdef int* ipiv = <int*>malloc(m * sizeof(int))
    if work == NULL or ysum == NULL or ipiv == NULL:
        free(work); free(ysum); free(ipiv)
        return STATUS_NOMEM
    cdef floating* R = work
    cdef floating* Z = R + md
    cdef floating* P = Z + md
    cdef floating* Hg = P + md
    cdef floating* Zt = Hg + md
    cdef floating* HHt = Zt + md
    cdef floating* Kmat = HHt + mm
    cdef floating* YY = Kmat + mm
    cdef floating* fvec = YY + mm

    # R = Ydot V ; Z = R + 2 diag(gq) (H U^T M + Ho sv^T) + gs sv^T
    # grad_H = Z U + (2 gq s + D gs + ysum) omega^T
    for i in range(m):
        gather_combine(V, d, indices + indptr[i], ga + indptr[i],
                       indptr[i + 1] - indptr[i], d, R + i * d)
        ysum[i] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            ysum[i] += ga[p]
    memcpy(Z, R, md * sizeof(floating))
    for i in range(m):
        xaxpy(d, <floating>(2.0 * gq[i]), HUM + i * d, 1, Z + i * d, 1)
        if keep_s:
            xaxpy(d, <floating>(2.0 * gq[i] * Ho[i] + gs[i]), sv, 1,
                  Z + i * d, 1)
    xgemm(NoTrans, NoTrans, m, d, d, 1, Z, d, U, d, 0, grad_out, d)
    if keep_s:
        for i in range(m):
            xaxpy(d, <floating>(2.0 * gq[i] * s[i] + Dn * gs[i] + ysum[i]),
                  omega, 1, grad_out + i * d, 1)
    if lr == 0:
        free(work); free(ysum); free(ipiv)
        return STATUS_OK

    # ---- checks: per-example r, then the m x m Woodbury system
    for i in range(m):
        hh = xdot(d, H + i * d, 1, H + i * d, 1)
        r = 1.0 - 2.0 * lr * gq[i] * hh
        if fabs(r) < r_tol:
            bad[0] = i
            bad_r[0] = r
            free(work); free(ysum); free(ipiv)
            return STATUS_SMALL_R
    # HHt = H H^T ; Kmat = I - diag(2 lr gq) H H^T
    xgemm(NoTrans, Trans, m, m, d, 1, H, d, H, d, 0, HHt, m)
    for i in range(m):
        for j in range(m):
            Kmat[i * m + j] = <floating>(-2.0 * lr * gq[i] * HHt[i * m + j])
        Kmat[i * m + i] += 1
    if xgetrf(m, Kmat, m, ipiv) != 0:
        free(work); free(ysum); free(ipiv)
        return STATUS_SINGULAR
    for i in range(m):
        if fabs(Kmat[i * m + i]) < r_tol:
            free(work); free(ysum); free(ipiv)
            return STATUS_SINGULAR

    # ---- everything the update needs, still without writing the state
    # P = H Uinv ; Zt = (Kmat^{-1} diag(2 lr gq) H Uinv)^T
    xgemm(NoTrans, NoTrans, m, d, d, 1, H, d, Uinv, d, 0, P, d)
    for c in range(d):
        for i in range(m):
            Zt[c * m + i] = <floating>(2.0 * lr * gq[i]) * P[i * d + c]
    xgetrs(NoTrans, m, d, Kmat, m, ipiv, Zt, m)
    if not (all_finite(<int>md, grad_out) and all_finite(<int>md, Zt)
            and all_finite(<int>md, P) and all_finite(<int>md, HU)):
        free(work); free(ysum); free(ipiv)
        return STATUS_NONFINITE
    # P <- H Uinv' = H Uinv + (H H^T) Z
    xgemm(NoTrans, Trans, m, d, m, 1, HHt, m, Zt, m, 1, P, d)
    # R <- R - lr/2 (Ydot Ydot^T) P, so that M' = M - lr (P^T R + R^T P)
    for i in range(mm):
        YY[i] = 0
    csr_gram_add(m, indptr, indices, ga, YY)
    nnz = 0
    for i in range(mm):
        nnz += YY[i] != 0
    if 8 * nnz < mm:    # usually: examples rarely share targets
        for i in range(m):
            for j in range(m):
                if YY[i * m + j] != 0:
                    xaxpy(d, <floating>(-0.5 * lr) * YY[i * m + j],
                          P + j * d, 1, R + i * d, 1)
    else:
        xgemm(NoTrans, NoTrans, m, d, m, <floating>(-0.5 * lr), YY, m, P, d,
              1, R, d)
    # Hg = diag(2 gq) H
    for i in range(m):
        for c in range(d):
            Hg[i * d + c] = <floating>(2.0 * gq[i]) * H[i * d + c]

    # ---- the update
    # U' = U - lr (U H^T) (diag(2 gq) H)
    xgemm(Trans, NoTrans, d, d, m, <floating>(-lr), HU, d, Hg, d, 1, U, d)
    # Uinv' = Uinv + H^T Z   (Woodbury)
    xgemm(Trans, Trans, d, d, m, 1, H, d, Zt, m, 1, Uinv, d)
    # V' = V - lr Ydot^T P: rows shared by examples get both terms
    for i in range(m):
        for p in range(indptr[i], indptr[i + 1]):
            fvec[0] = <floating>(-lr * ga[p])
            scatter_axpy(V, d, indices + p, fvec, 1, d, P + i * d, 1)
    # M' = M + dV^T V + V^T dV + dV^T dV,  dV = -lr Ydot^T P
    xsyr2k(Upper, Trans, d, m, <floating>(-lr), P, d, R, d, 1, M, d)
    if keep_s:
        # sv' = sv - lr P^T ysum ; omega' = omega - lr H^T (2 gq Ho + gs)
        for i in range(m):
            fvec[i] = <floating>ysum[i]
        xgemv(Trans, m, d, <floating>(-lr), P, d, fvec, 1, 1, sv, 1)
        for i in range(m):
            fvec[i] = <floating>(2.0 * gq[i] * Ho[i] + gs[i])
        xgemv(Trans, m, d, <floating>(-lr), H, d, fvec, 1, 1, omega, 1)
    if rho != 1.0:
        decay_state(d, rho, U, Uinv, omega)
    free(work); free(ysum); free(ipiv)
    return STATUS_OK


# ------------------------------------------------------ Python entry points
cdef inline floating* _opt_ptr(floating[::1] x) noexcept nogil:
    return &x[0] if x.shape[0] > 0 else NULL


cdef inline const int64_t* _opt_idx(const int64_t[::1] x) noexcept nogil:
    return &x[0] if x.shape[0] > 0 else NULL


cdef inline const floating* _opt_val(const floating[::1] x) noexcept nogil:
    return &x[0] if x.shape[0] > 0 else NULL


cdef LossSpec _make_spec(int kind, Py_ssize_t D, const double[::1] params):
    cdef LossSpec spec
    spec.kind = kind
    spec.n_outputs = <double>D
    spec.eps = params[0] if params.shape[0] > 0 else 0.0
    spec.alpha = params[1] if params.shape[0] > 1 else 0.0
    spec.beta = params[2] if params.shape[0] > 2 else 0.0
    return spec


def online_step(floating[:, ::1] V, floating[:, ::1] U, floating[:, ::1] Uinv,
                floating[:, ::1] M, floating[::1] omega, floating[::1] sv,
                const floating[:, ::1] H, const int64_t[::1] indptr,
                const int64_t[::1] indices, const floating[::1] values,
                double lr, double wd, int loss_kind,
                const double[::1] loss_params, double r_tol,
                floating[::1] loss_out, floating[:, ::1] grad_out,
                int block=FS_ONLINE_DEFAULT_BLOCK):
    """Online mode over the m rows of H. Returns (status, bad, bad_r).

    ``block`` > 0: the blocked kernel of src_c/fs_online.c with at most
    that many examples per block, for calls of at least
    FS_ONLINE_MIN_EXAMPLES examples (fewer go to the sequential kernel,
    which is faster for them); 0: always the sequential BLAS-2 kernel
    (online_kernel, the reference the blocked one is tested against)."""
    cdef LossSpec spec = _make_spec(loss_kind, V.shape[0], loss_params)
    cdef Py_ssize_t bad = -1
    cdef double bad_r = 0.0
    cdef int status
    cdef int m = <int>H.shape[0], d = <int>U.shape[0]
    if m == 0:
        return STATUS_OK, bad, bad_r
    with nogil:
        if block <= 0 or m < FS_ONLINE_MIN_EXAMPLES:
            status = online_kernel(V.shape[0], d, &V[0, 0], &U[0, 0],
                                   &Uinv[0, 0], &M[0, 0], _opt_ptr(omega),
                                   _opt_ptr(sv), m, &H[0, 0], &indptr[0],
                                   _opt_idx(indices), _opt_val(values),
                                   lr, wd, &spec, r_tol, &loss_out[0],
                                   &grad_out[0, 0], &bad, &bad_r)
        else:
            status = online_blocked(
                V.shape[0], d, &V[0, 0], &U[0, 0], &Uinv[0, 0], &M[0, 0],
                _opt_ptr(omega), _opt_ptr(sv), m, &H[0, 0], &indptr[0],
                _opt_idx(indices), _opt_val(values), lr, wd, &spec, r_tol,
                block, &loss_out[0], &grad_out[0, 0], &bad, &bad_r)
    return status, bad, bad_r


cdef int batch_run(Py_ssize_t D, int d, floating* V, floating* U,
                   floating* Uinv, floating* M, floating* omega,
                   floating* sv, int m, const floating* H,
                   const int64_t* indptr, const int64_t* indices,
                   const floating* values, const LossSpec* spec,
                   const floating* ga_in, const double* gq_in,
                   const double* gs_in, double lr, double wd, double r_tol,
                   floating* loss_out, floating* grad_out, Py_ssize_t* bad,
                   double* bad_r) noexcept nogil:
    """Minibatch mode: forward, then either the built-in loss of ``spec``
    (ga_in == NULL) or the given gradients, then backward with one update."""
    cdef Py_ssize_t nnz = indptr[m], md = <Py_ssize_t>m * d, i
    cdef double L
    cdef int status = STATUS_OK
    cdef floating* fwork = <floating*>malloc((2 * md + 2 * nnz + 1) * sizeof(floating))
    cdef double* dwork = <double*>malloc(6 * m * sizeof(double))
    if fwork == NULL or dwork == NULL:
        free(fwork); free(dwork)
        return STATUS_NOMEM
    cdef floating* HU = fwork
    cdef floating* HUM = HU + md
    cdef floating* a = HUM + md
    cdef floating* ga = a + nnz
    cdef double* q = dwork
    cdef double* s = q + m
    cdef double* Ho = s + m
    cdef double* gq = Ho + m
    cdef double* gs = gq + m
    cdef double* svu = gs + m
    batch_forward(D, d, V, U, M, omega, sv, m, H, indptr, indices, HU, HUM,
                  a, q, s, Ho, svu)
    if ga_in == NULL:
        for i in range(m):
            status = eval_loss(spec, indptr[i + 1] - indptr[i], a + indptr[i],
                               values + indptr[i], q[i], s[i], &L,
                               ga + indptr[i], gq + i, gs + i)
            if status != STATUS_OK:
                bad[0] = i
                break
            loss_out[i] = <floating>L
    else:
        memcpy(ga, ga_in, nnz * sizeof(floating))
        memcpy(gq, gq_in, m * sizeof(double))
        memcpy(gs, gs_in, m * sizeof(double))
    if status == STATUS_OK:
        status = batch_backward(D, d, V, U, Uinv, M, omega, sv, m, H,
                                indptr, indices, ga, gq, gs, s, Ho, svu, HU,
                                HUM, lr, wd, r_tol, grad_out, bad, bad_r)
    free(fwork); free(dwork)
    return status


def batch_step(floating[:, ::1] V, floating[:, ::1] U, floating[:, ::1] Uinv,
               floating[:, ::1] M, floating[::1] omega, floating[::1] sv,
               const floating[:, ::1] H, const int64_t[::1] indptr,
               const int64_t[::1] indices, const floating[::1] values,
               double lr, double wd, int loss_kind,
               const double[::1] loss_params, double r_tol,
               floating[::1] loss_out, floating[:, ::1] grad_out):
    """Minibatch mode with a built-in loss.  Returns (status, bad, bad_r);
    the state is untouched unless status is 0."""
    cdef LossSpec spec = _make_spec(loss_kind, V.shape[0], loss_params)
    cdef Py_ssize_t bad = -1
    cdef double bad_r = 0.0
    cdef int status
    cdef int m = <int>H.shape[0]
    if m == 0:
        return STATUS_OK, bad, bad_r
    with nogil:
        status = batch_run(V.shape[0], <int>U.shape[0], &V[0, 0], &U[0, 0],
                           &Uinv[0, 0], &M[0, 0], _opt_ptr(omega),
                           _opt_ptr(sv), m, &H[0, 0], &indptr[0],
                           _opt_idx(indices), _opt_val(values), &spec,
                           NULL, NULL, NULL, lr, wd, r_tol, &loss_out[0],
                           &grad_out[0, 0], &bad, &bad_r)
    return status, bad, bad_r


def backward(floating[:, ::1] V, floating[:, ::1] U, floating[:, ::1] Uinv,
             floating[:, ::1] M, floating[::1] omega, floating[::1] sv,
             const floating[:, ::1] H, const int64_t[::1] indptr,
             const int64_t[::1] indices, const floating[::1] grad_a,
             const double[::1] grad_q, const double[::1] grad_s, double lr,
             double wd, double r_tol, floating[:, ::1] grad_out):
    """grad_H for given (dL/da, dL/dq, dL/ds) and, if lr > 0, one exact
    minibatch update.  Returns (status, bad, bad_r) like batch_step."""
    cdef LossSpec spec = _make_spec(0, V.shape[0], grad_q[:0])
    cdef Py_ssize_t bad = -1
    cdef double bad_r = 0.0
    cdef int status
    cdef int m = <int>H.shape[0]
    if m == 0:
        return STATUS_OK, bad, bad_r
    cdef floating dummy = 0
    with nogil:
        status = batch_run(V.shape[0], <int>U.shape[0], &V[0, 0], &U[0, 0],
                           &Uinv[0, 0], &M[0, 0], _opt_ptr(omega),
                           _opt_ptr(sv), m, &H[0, 0], &indptr[0],
                           _opt_idx(indices), NULL, &spec,
                           _opt_val(grad_a) if grad_a.shape[0] else &dummy,
                           &grad_q[0], &grad_s[0], lr, wd, r_tol, NULL,
                           &grad_out[0, 0], &bad, &bad_r)
    return status, bad, bad_r


def forward(floating[:, ::1] V, floating[:, ::1] U, floating[:, ::1] M,
            floating[::1] omega, floating[::1] sv, const floating[:, ::1] H,
            const int64_t[::1] indptr, const int64_t[::1] indices,
            floating[::1] a_out, double[::1] q_out, double[::1] s_out):
    """a (outputs at ``indices``, CSR order), q and s (s = 0 when omega and
    sv are not kept) at the current state."""
    cdef int m = <int>H.shape[0], d = <int>U.shape[0]
    if m == 0:
        return
    cdef Py_ssize_t md = <Py_ssize_t>m * d
    cdef floating* work = <floating*>malloc((2 * md + indices.shape[0] + 1) * sizeof(floating))
    cdef double* dwork = <double*>malloc(2 * m * sizeof(double))
    if work == NULL or dwork == NULL:
        free(work); free(dwork)
        raise MemoryError()
    with nogil:
        batch_forward(V.shape[0], d, &V[0, 0], &U[0, 0], &M[0, 0],
                      _opt_ptr(omega), _opt_ptr(sv), m, &H[0, 0], &indptr[0],
                      _opt_idx(indices), work, work + md, work + 2 * md,
                      &q_out[0], &s_out[0], dwork, dwork + m)
    if a_out.shape[0]:
        memcpy(&a_out[0], work + 2 * md, a_out.shape[0] * sizeof(floating))
    free(work); free(dwork)


def invert(double[:, ::1] A, double[:, ::1] out):
    """out <- A^{-1} by LU (LAPACK getrf/getrs); A is overwritten by its
    factors.  Returns LAPACK's info (> 0: A is singular)."""
    cdef int n = <int>A.shape[0], i, info
    cdef int* ipiv = <int*>malloc(n * sizeof(int))
    if ipiv == NULL:
        raise MemoryError()
    with nogil:
        info = xgetrf(n, &A[0, 0], n, ipiv)
        if info == 0:
            for i in range(n * n):
                (&out[0, 0])[i] = 0.0
            for i in range(n):
                out[i, i] = 1.0
            # rows of out: solutions of A^T x = e_i, i.e. the rows of A^{-1}
            info = xgetrs(Trans, n, n, &A[0, 0], n, ipiv, &out[0, 0], n)
    free(ipiv)
    return info


MAX_RANK = FS_MAX_RANK


def low_rank_rows_update(floating[:, ::1] V, const floating[:, ::1] L,
                         const floating[::1] beta):
    """V <- V (I - L^T diag(beta) L) for the k orthonormal rows of L
    (k <= MAX_RANK), in one pass over V without the GIL."""
    if V.shape[0] == 0 or L.shape[0] == 0:
        return
    if L.shape[0] > FS_MAX_RANK:
        raise ValueError(f"at most {FS_MAX_RANK} directions at once")
    with nogil:
        rankk_rows(&V[0, 0], V.shape[1], V.shape[0], V.shape[1], &L[0, 0],
                   &beta[0], L.shape[0])


# ------------------------------------------------- Python shims for tests
def _py_eval_loss(int kind, Py_ssize_t n_outputs, const double[::1] params,
                  const floating[::1] a, const floating[::1] y, double q,
                  double s, floating[::1] ga):
    """The compiled loss of one example: returns (status, L, gq, gs) and
    writes dL/da into ``ga``."""
    cdef LossSpec spec = _make_spec(kind, n_outputs, params)
    cdef double L = 0.0, gq = 0.0, gs = 0.0
    cdef int status = eval_loss(&spec, a.shape[0], _opt_val(a), _opt_val(y),
                                q, s, &L, _opt_ptr(ga), &gq, &gs)
    return status, L, gq, gs


def _py_gather_dots(const floating[:, ::1] V, const int64_t[::1] idx,
                    const floating[::1] u, floating[::1] out):
    gather_dots(&V[0, 0], V.shape[1], &idx[0], idx.shape[0], &u[0],
                V.shape[1], &out[0])


def _py_gather_combine(const floating[:, ::1] V, const int64_t[::1] idx,
                       const floating[::1] coef, floating[::1] out):
    gather_combine(&V[0, 0], V.shape[1], &idx[0], &coef[0], idx.shape[0],
                   V.shape[1], &out[0])


def _py_scatter_axpy(floating[:, ::1] V, const int64_t[::1] idx,
                     const floating[::1] coef, const floating[::1] w,
                     Py_ssize_t incw):
    scatter_axpy(&V[0, 0], V.shape[1], &idx[0], &coef[0], idx.shape[0],
                 V.shape[1], &w[0], incw)


def _py_csr_gram_add(const int64_t[::1] indptr, const int64_t[::1] indices,
                     const floating[::1] values, floating[:, ::1] G):
    csr_gram_add(G.shape[0], &indptr[0], &indices[0], &values[0], &G[0, 0])
