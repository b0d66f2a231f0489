/* BLAS for the C kernels of src_c/, through a table of Fortran-ABI function
 * pointers that the host fills once before any kernel runs:
 *   - the Python package: fastsparse._core, at import, with the routines of
 *     scipy.linalg.cython_blas (so nothing links against a BLAS library);
 *   - bench/c/fs_microbench: with the symbols of a BLAS library (e.g. the
 *     scipy-openblas32 wheel's libscipy_openblas, prefix "scipy_").
 * The static inline wrappers below take row-major matrices and, like the
 * Cython wrappers of fastsparse/_blas.pyx, handle row-major storage by
 * swapping operands / flipping flags, never by copying. */
#ifndef FS_BLAS_H
#define FS_BLAS_H

#define FS_BLAS_TYPES(T, S)                                                   \
typedef void fs_##S##gemm_t(const char *ta, const char *tb, const int *m,      \
    const int *n, const int *k, const T *alpha, const T *A, const int *lda,    \
    const T *B, const int *ldb, const T *beta, T *C, const int *ldc);          \
typedef void fs_##S##gemv_t(const char *t, const int *m, const int *n,         \
    const T *alpha, const T *A, const int *lda, const T *x, const int *incx,   \
    const T *beta, T *y, const int *incy);                                     \
typedef void fs_##S##symm_t(const char *side, const char *uplo, const int *m,  \
    const int *n, const T *alpha, const T *A, const int *lda, const T *B,      \
    const int *ldb, const T *beta, T *C, const int *ldc);                      \
typedef void fs_##S##syr2k_t(const char *uplo, const char *t, const int *n,    \
    const int *k, const T *alpha, const T *A, const int *lda, const T *B,      \
    const int *ldb, const T *beta, T *C, const int *ldc);

FS_BLAS_TYPES(float, s)
FS_BLAS_TYPES(double, d)
#undef FS_BLAS_TYPES

typedef struct {
    fs_sgemm_t *sgemm;   fs_dgemm_t *dgemm;
    fs_sgemv_t *sgemv;   fs_dgemv_t *dgemv;
    fs_ssymm_t *ssymm;   fs_dsymm_t *dsymm;
    fs_ssyr2k_t *ssyr2k; fs_dsyr2k_t *dsyr2k;
} fs_blas_table;

/* The table the kernels use (defined in fs_online.c). */
extern fs_blas_table fs_blas;

/* Fill the table (hosts that only have untyped addresses, e.g. Cython's
 * view of scipy.linalg.cython_blas). */
void fs_blas_set(void *sgemm, void *dgemm, void *sgemv, void *dgemv,
                 void *ssymm, void *dsymm, void *ssyr2k, void *dsyr2k);

/* Row-major wrappers (suffix _s / _d).  trans arguments are 0 (no) or 1. */
#define FS_BLAS_WRAPPERS(T, S)                                                \
/* C (m x n) = alpha op(A) op(B) + beta C */                                  \
static inline void fs_gemm_##S(int ta, int tb, int m, int n, int k, T alpha,  \
                               const T *A, int lda, const T *B, int ldb,      \
                               T beta, T *C, int ldc)                         \
{   /* row-major C is column-major C^T = op(B)^T op(A)^T */                   \
    const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';                    \
    fs_blas.S##gemm(&ctb, &cta, &n, &m, &k, &alpha, B, &ldb, A, &lda, &beta,  \
                    C, &ldc);                                                 \
}                                                                             \
/* y = alpha op(A) x + beta y, A m x n */                                     \
static inline void fs_gemv_##S(int ta, int m, int n, T alpha, const T *A,     \
                               int lda, const T *x, T beta, T *y)             \
{                                                                             \
    const char t = ta ? 'N' : 'T';                                            \
    const int one = 1;                                                        \
    fs_blas.S##gemv(&t, &n, &m, &alpha, A, &lda, x, &one, &beta, y, &one);    \
}                                                                             \
/* C (m x n) = alpha B A + beta C, A n x n symmetric (upper triangle read) */ \
static inline void fs_symm_right_upper_##S(int m, int n, T alpha, const T *A, \
                                           int lda, const T *B, int ldb,      \
                                           T beta, T *C, int ldc)             \
{   /* column-major: C^T = alpha A B^T + beta C^T, A's lower triangle */      \
    const char side = 'L', uplo = 'L';                                        \
    fs_blas.S##symm(&side, &uplo, &n, &m, &alpha, A, &lda, B, &ldb, &beta,    \
                    C, &ldc);                                                 \
}                                                                             \
/* upper triangle of C (n x n) += alpha (A^T B + B^T A), A and B k x n */     \
static inline void fs_syr2k_upper_trans_##S(int n, int k, T alpha,            \
                                            const T *A, int lda, const T *B,  \
                                            int ldb, T beta, T *C, int ldc)   \
{   /* column-major: A^T is n x k, C^T's lower triangle */                    \
    const char uplo = 'L', t = 'N';                                           \
    fs_blas.S##syr2k(&uplo, &t, &n, &k, &alpha, A, &lda, B, &ldb, &beta, C,   \
                     &ldc);                                                   \
}

FS_BLAS_WRAPPERS(float, s)
FS_BLAS_WRAPPERS(double, d)
#undef FS_BLAS_WRAPPERS

#endif
