# Declarations of the C kernels of src_c/ and inline float/double
# dispatchers over them (no module of its own).  Each extension that links src_c/*.c cimports them from here and,
# before calling a kernel that uses BLAS, fills its copy of the BLAS table
# with fs_blas_set (see src_c/fs_blas.h).
from libc.stdint cimport int64_t

from fastsparse._blas cimport floating

cdef extern from "fs_sparse.h" nogil:
    void fs_gather_dots_s(const float*, ptrdiff_t, const int64_t*, ptrdiff_t,
                          const float*, ptrdiff_t, float*)
    void fs_gather_dots_d(const double*, ptrdiff_t, const int64_t*, ptrdiff_t,
                          const double*, ptrdiff_t, double*)
    void fs_gather_combine_s(const float*, ptrdiff_t, const int64_t*,
                             const float*, ptrdiff_t, ptrdiff_t, float*)
    void fs_gather_combine_d(const double*, ptrdiff_t, const int64_t*,
                             const double*, ptrdiff_t, ptrdiff_t, double*)
    void fs_scatter_axpy_s(float*, ptrdiff_t, const int64_t*, const float*,
                           ptrdiff_t, ptrdiff_t, const float*, ptrdiff_t)
    void fs_scatter_axpy_d(double*, ptrdiff_t, const int64_t*, const double*,
                           ptrdiff_t, ptrdiff_t, const double*, ptrdiff_t)
    void fs_csr_gram_add_s(ptrdiff_t, const int64_t*, const int64_t*,
                           const float*, float*)
    void fs_csr_gram_add_d(ptrdiff_t, const int64_t*, const int64_t*,
                           const double*, double*)
    void fs_rankk_rows_s(float*, ptrdiff_t, ptrdiff_t, ptrdiff_t, const float*,
                         const float*, ptrdiff_t)
    void fs_rankk_rows_d(double*, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                         const double*, const double*, ptrdiff_t)
    enum: FS_MAX_RANK

cdef extern from "fs_loss.h" nogil:
    ctypedef struct fs_loss_spec:
        int kind
        double n_outputs
        double eps
        double alpha
        double beta
    int fs_eval_loss_s(const fs_loss_spec*, ptrdiff_t, const float*,
                       const float*, double, double, double*, float*,
                       double*, double*)
    int fs_eval_loss_d(const fs_loss_spec*, ptrdiff_t, const double*,
                       const double*, double, double, double*, double*,
                       double*, double*)

cdef extern from "fs_online.h" nogil:
    enum: FS_ONLINE_DEFAULT_BLOCK
    enum: FS_ONLINE_MIN_EXAMPLES
    void fs_blas_set(void*, void*, void*, void*, void*, void*, void*, void*)
    int fs_online_blocked_s(ptrdiff_t, int, float*, float*, float*, float*,
                            float*, float*, int, const float*, const int64_t*,
                            const int64_t*, const float*, double, double,
                            const fs_loss_spec*, double, int, float*, float*,
                            Py_ssize_t*, double*)
    int fs_online_blocked_d(ptrdiff_t, int, double*, double*, double*,
                            double*, double*, double*, int, const double*,
                            const int64_t*, const int64_t*, const double*,
                            double, double, const fs_loss_spec*, double, int,
                            double*, double*, Py_ssize_t*, double*)

cdef extern from "fs_blas.h" nogil:
    # the row-major wrappers the blocked online kernel calls
    void fs_gemm_s(int, int, int, int, int, float, const float*, int,
                   const float*, int, float, float*, int)
    void fs_gemm_d(int, int, int, int, int, double, const double*, int,
                   const double*, int, double, double*, int)
    void fs_gemv_s(int, int, int, float, const float*, int, const float*,
                   float, float*)
    void fs_gemv_d(int, int, int, double, const double*, int, const double*,
                   double, double*)
    void fs_symm_right_upper_s(int, int, float, const float*, int,
                               const float*, int, float, float*, int)
    void fs_symm_right_upper_d(int, int, double, const double*, int,
                               const double*, int, double, double*, int)
    void fs_syr2k_upper_trans_s(int, int, float, const float*, int,
                                const float*, int, float, float*, int)
    void fs_syr2k_upper_trans_d(int, int, double, const double*, int,
                                const double*, int, double, double*, int)


# --------------------------------------- fused float/double dispatchers
cdef inline void gather_dots(const floating* V, ptrdiff_t ldv,
                             const int64_t* idx, ptrdiff_t n,
                             const floating* u, ptrdiff_t d,
                             floating* out) noexcept nogil:
    if floating is float:
        fs_gather_dots_s(V, ldv, idx, n, u, d, out)
    else:
        fs_gather_dots_d(V, ldv, idx, n, u, d, out)


cdef inline void gather_combine(const floating* V, ptrdiff_t ldv,
                                const int64_t* idx, const floating* coef,
                                ptrdiff_t n, ptrdiff_t d,
                                floating* out) noexcept nogil:
    if floating is float:
        fs_gather_combine_s(V, ldv, idx, coef, n, d, out)
    else:
        fs_gather_combine_d(V, ldv, idx, coef, n, d, out)


cdef inline void scatter_axpy(floating* V, ptrdiff_t ldv, const int64_t* idx,
                              const floating* coef, ptrdiff_t n, ptrdiff_t d,
                              const floating* w, ptrdiff_t incw) noexcept nogil:
    if floating is float:
        fs_scatter_axpy_s(V, ldv, idx, coef, n, d, w, incw)
    else:
        fs_scatter_axpy_d(V, ldv, idx, coef, n, d, w, incw)


cdef inline void csr_gram_add(ptrdiff_t m, const int64_t* indptr,
                              const int64_t* indices, const floating* values,
                              floating* G) noexcept nogil:
    if floating is float:
        fs_csr_gram_add_s(m, indptr, indices, values, G)
    else:
        fs_csr_gram_add_d(m, indptr, indices, values, G)


cdef inline void rankk_rows(floating* V, ptrdiff_t ldv, ptrdiff_t n_rows,
                            ptrdiff_t d, const floating* L,
                            const floating* beta, ptrdiff_t k) noexcept nogil:
    if floating is float:
        fs_rankk_rows_s(V, ldv, n_rows, d, L, beta, k)
    else:
        fs_rankk_rows_d(V, ldv, n_rows, d, L, beta, k)


# ------------------------------------------------------------------ losses
cdef inline int eval_loss(const fs_loss_spec* spec, Py_ssize_t K,
                          const floating* a, const floating* y, double q,
                          double s, double* L, floating* ga, double* gq,
                          double* gs) noexcept nogil:
    """(L, dL/da, dL/dq, dL/ds) of one example (src_c/fs_loss.c); returns
    FS_LOSS when the result is not finite."""
    if floating is float:
        return fs_eval_loss_s(spec, K, a, y, q, s, L, ga, gq, gs)
    else:
        return fs_eval_loss_d(spec, K, a, y, q, s, L, ga, gq, gs)

# the row-major BLAS wrappers of fs_blas.h (through the extension's table)
cdef inline void cgemm(int ta, int tb, int m, int n, int k, floating alpha,
                       const floating* A, int lda, const floating* B, int ldb,
                       floating beta, floating* C, int ldc) noexcept nogil:
    if floating is float:
        fs_gemm_s(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        fs_gemm_d(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline void cgemv(int ta, int m, int n, floating alpha, const floating* A,
                       int lda, const floating* x, floating beta,
                       floating* y) noexcept nogil:
    if floating is float:
        fs_gemv_s(ta, m, n, alpha, A, lda, x, beta, y)
    else:
        fs_gemv_d(ta, m, n, alpha, A, lda, x, beta, y)


cdef inline void csymm_right_upper(int m, int n, floating alpha,
                                   const floating* A, int lda,
                                   const floating* B, int ldb, floating beta,
                                   floating* C, int ldc) noexcept nogil:
    if floating is float:
        fs_symm_right_upper_s(m, n, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        fs_symm_right_upper_d(m, n, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline void csyr2k_upper_trans(int n, int k, floating alpha,
                                    const floating* A, int lda,
                                    const floating* B, int ldb, floating beta,
                                    floating* C, int ldc) noexcept nogil:
    if floating is float:
        fs_syr2k_upper_trans_s(n, k, alpha, A, lda, B, ldb, beta, C, ldc)
    else:
        fs_syr2k_upper_trans_d(n, k, alpha, A, lda, B, ldb, beta, C, ldc)


cdef inline int online_blocked(ptrdiff_t D, int d, floating* V, floating* U,
                               floating* Uinv, floating* M, floating* omega,
                               floating* sv, int m, const floating* H,
                               const int64_t* indptr, const int64_t* indices,
                               const floating* values, double lr, double wd,
                               const fs_loss_spec* spec, double r_tol,
                               int block, floating* loss_out,
                               floating* grad_out, Py_ssize_t* bad,
                               double* bad_r) noexcept nogil:
    if floating is float:
        return fs_online_blocked_s(D, d, V, U, Uinv, M, omega, sv, m, H,
                                   indptr, indices, values, lr, wd, spec,
                                   r_tol, block, loss_out, grad_out, bad,
                                   bad_r)
    else:
        return fs_online_blocked_d(D, d, V, U, Uinv, M, omega, sv, m, H,
                                   indptr, indices, values, lr, wd, spec,
                                   r_tol, block, loss_out, grad_out, bad,
                                   bad_r)
