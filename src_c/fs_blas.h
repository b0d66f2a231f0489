/* BLAS and LAPACK for the C kernels of src_c/, through one table of
 * Fortran-ABI function pointers that the host fills once before any kernel
 * runs: fastsparse._core fills it at import with the routines of
 * scipy.linalg.cython_blas / cython_lapack (nothing links against a BLAS
 * library).
 *
 * The static inline wrappers below take ROW-MAJOR matrices and handle the
 * storage order by swapping operands / flipping flags, never by copying (a
 * row-major matrix is the column-major view of its transpose).  They are
 * the only BLAS binding of the package: every kernel calls BLAS through
 * them.  Calls with a single row go to the BLAS-2 routine (a one-row GEMM
 * costs a packing pass of its other operand).  Tiny products (at most
 * FS_SMALL multiply-adds: d <= 16) are computed by the loops below, in
 * double: the Fortran BLAS interface (argument checks, dispatch) costs more
 * than such a product.  No validation here. */
#ifndef FS_BLAS_H
#define FS_BLAS_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#define FS_BLAS_TYPES(T, S)                                                   \
typedef void fs_##S##gemm_t(const char *ta, const char *tb, const int *m,      \
    const int *n, const int *k, const T *alpha, const T *A, const int *lda,    \
    const T *B, const int *ldb, const T *beta, T *C, const int *ldc);          \
typedef void fs_##S##gemv_t(const char *t, const int *m, const int *n,         \
    const T *alpha, const T *A, const int *lda, const T *x, const int *incx,   \
    const T *beta, T *y, const int *incy);                                     \
typedef void fs_##S##ger_t(const int *m, const int *n, const T *alpha,         \
    const T *x, const int *incx, const T *y, const int *incy, T *A,            \
    const int *lda);                                                           \
typedef void fs_##S##symm_t(const char *side, const char *uplo, const int *m,  \
    const int *n, const T *alpha, const T *A, const int *lda, const T *B,      \
    const int *ldb, const T *beta, T *C, const int *ldc);                      \
typedef void fs_##S##symv_t(const char *uplo, const int *n, const T *alpha,    \
    const T *A, const int *lda, const T *x, const int *incx, const T *beta,    \
    T *y, const int *incy);                                                    \
typedef void fs_##S##syr2k_t(const char *uplo, const char *t, const int *n,    \
    const int *k, const T *alpha, const T *A, const int *lda, const T *B,      \
    const int *ldb, const T *beta, T *C, const int *ldc);                      \
typedef void fs_##S##syrk_t(const char *uplo, const char *t, const int *n,     \
    const int *k, const T *alpha, const T *A, const int *lda, const T *beta,   \
    T *C, const int *ldc);                                                     \
typedef void fs_##S##getrf_t(const int *m, const int *n, T *A, const int *lda, \
    int *ipiv, int *info);                                                     \
typedef void fs_##S##getrs_t(const char *t, const int *n, const int *nrhs,     \
    const T *A, const int *lda, const int *ipiv, T *B, const int *ldb,         \
    int *info);

FS_BLAS_TYPES(float, s)
FS_BLAS_TYPES(double, d)
#undef FS_BLAS_TYPES

/* double-precision LAPACK used by the spectrum of a minibatch update */
typedef void fs_dsyev_t(const char *jobz, const char *uplo, const int *n,
    double *A, const int *lda, double *w, double *work, const int *lwork,
    int *info);
typedef void fs_dgeqrf_t(const int *m, const int *n, double *A, const int *lda,
    double *tau, double *work, const int *lwork, int *info);
typedef void fs_dorgqr_t(const int *m, const int *n, const int *k, double *A,
    const int *lda, const double *tau, double *work, const int *lwork,
    int *info);
typedef void fs_dpotrf_t(const char *uplo, const int *n, double *A,
    const int *lda, int *info);
typedef void fs_dpotri_t(const char *uplo, const int *n, double *A,
    const int *lda, int *info);

typedef struct {
    fs_sgemm_t *sgemm;   fs_dgemm_t *dgemm;
    fs_sgemv_t *sgemv;   fs_dgemv_t *dgemv;
    fs_sger_t *sger;     fs_dger_t *dger;
    fs_ssymm_t *ssymm;   fs_dsymm_t *dsymm;
    fs_ssymv_t *ssymv;   fs_dsymv_t *dsymv;
    fs_ssyr2k_t *ssyr2k; fs_dsyr2k_t *dsyr2k;
    fs_ssyrk_t *ssyrk;   fs_dsyrk_t *dsyrk;
    fs_sgetrf_t *sgetrf; fs_dgetrf_t *dgetrf;
    fs_sgetrs_t *sgetrs; fs_dgetrs_t *dgetrs;
    fs_dsyev_t *dsyev;   fs_dgeqrf_t *dgeqrf; fs_dorgqr_t *dorgqr;
    fs_dpotrf_t *dpotrf; fs_dpotri_t *dpotri;
    int avx2;   /* use the AVX2 + FMA loops below (set by fs_blas_detect) */
    int small_gemm;  /* use fs_gemm_small_s below (set by fs_blas_detect) */
    int avx512;  /* the CPU has AVX-512F (set by fs_blas_detect) */
} fs_blas_table;

/* The table the kernels use (defined in fs_kernels.c, filled by the host). */
extern fs_blas_table fs_blas;

/* the largest product (multiply-adds) computed by the loops, not BLAS */
#define FS_SMALL 256

/* The rank-one and rank-two updates of a one-example step (a d x d matrix
 * each, in cache up to d of a few hundred) are loops of our own, not BLAS:
 *
 * - the upper triangle of C += alpha (a b^T + b a^T): measured, OpenBLAS's
 *   ssyr2 took about twice as long at n = 128 and as long at n = 512;
 * - on CPUs with AVX2 and FMA (x86-64; fs_blas.avx2, set once by
 *   fs_blas_detect() in fs_kernels.c), also A += alpha x y^T, and the fused
 *   out = A^T z, A <- scale A + alpha x y^T (one pass over A instead of a
 *   gemv and a ger): compiled for AVX2 + FMA whatever the build's flags (a
 *   portable build is SSE2 only, where these loops lost to OpenBLAS, which
 *   picks its kernels at run time).  Measured at d = 128, float32, one
 *   AMD EPYC: ger 1.5 us against OpenBLAS's 1.9, syr2 2.0 against 3.8 for
 *   the same loop in SSE2.
 *
 * Functions of their own (not inlined), with restrict and ptrdiff_t
 * indices, so that the compiler vectorises them: inlined into the kernels,
 * or with int indices under Python's -fwrapv, GCC 12 left them scalar.
 * (`unused`: units that include this header without calling them.) */
#if defined(__GNUC__)
#define FS_NOINLINE __attribute__((noinline, unused))
#else
#define FS_NOINLINE
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FS_HAVE_AVX2 1
#define FS_AVX2_FN __attribute__((target("avx2,fma"), noinline, unused))
/* AVX2 without FMA: nothing can be contracted, so a loop compiled with it
 * rounds exactly as its portable copy does */
#define FS_AVX2_EXACT_FN __attribute__((target("avx2"), noinline, unused))
#else
#define FS_HAVE_AVX2 0
#define FS_AVX2_FN FS_NOINLINE
#define FS_AVX2_EXACT_FN FS_NOINLINE
#endif
/* whether to call the AVX2 loops now (compiled here, and the CPU has them) */
#define FS_USE_AVX2 (FS_HAVE_AVX2 && fs_blas.avx2)
/* the upper triangle of C += alpha (a b^T + b a^T), as function NAME */
#define FS_SYR2(T, NAME, ATTR)                                                \
static ATTR void NAME(int n, T alpha, const T *restrict a,                    \
                      const T *restrict b, T *restrict C, int ldc)            \
{                                                                             \
    for (ptrdiff_t i = 0; i < n; ++i) {                                       \
        const T ai = alpha * a[i], bi = alpha * b[i];                         \
        T *restrict c = C + i * ldc;                                          \
        for (ptrdiff_t j = i; j < n; ++j)                                     \
            c[j] += ai * b[j] + bi * a[j];                                    \
    }                                                                         \
}
#define FS_LEVEL2(T, S)                                                       \
FS_SYR2(T, fs_syr2_upper_##S, FS_NOINLINE)                                    \
FS_SYR2(T, fs_syr2_upper_avx2_##S, FS_AVX2_FN)                                \
/* A (m x n, row-major) += alpha x y^T, y contiguous */                       \
static FS_AVX2_FN void fs_ger_avx2_##S(int m, int n, T alpha,                 \
                                       const T *restrict x, int incx,         \
                                       const T *restrict y, T *restrict A,    \
                                       int lda)                               \
{                                                                             \
    for (ptrdiff_t i = 0; i < m; ++i) {                                       \
        const T s = alpha * x[i * incx];                                      \
        T *restrict r = A + i * lda;                                          \
        for (ptrdiff_t j = 0; j < n; ++j)                                     \
            r[j] += s * y[j];                                                 \
    }                                                                         \
}                                                                             \
/* out (n) = A^T z (A m x n, row-major), then A <- scale A + alpha x y^T,    \
 * in one pass over A (two rows at a time) */                                 \
static FS_AVX2_FN void fs_gemv_t_ger_avx2_##S(int m, int n,                   \
                                              const T *restrict z,            \
                                              T *restrict A, int lda,         \
                                              T scale, T alpha,               \
                                              const T *restrict x,            \
                                              const T *restrict y,            \
                                              T *restrict out)                \
{                                                                             \
    ptrdiff_t i = 0;                                                          \
    for (ptrdiff_t j = 0; j < n; ++j)                                         \
        out[j] = 0;                                                           \
    for (; i + 2 <= m; i += 2) {                                              \
        const T z0 = z[i], z1 = z[i + 1];                                     \
        const T s0 = alpha * x[i], s1 = alpha * x[i + 1];                     \
        T *restrict r0 = A + i * lda, *restrict r1 = r0 + lda;                \
        for (ptrdiff_t j = 0; j < n; ++j) {                                   \
            const T v0 = r0[j], v1 = r1[j];                                   \
            out[j] += z0 * v0 + z1 * v1;                                      \
            r0[j] = scale * v0 + s0 * y[j];                                   \
            r1[j] = scale * v1 + s1 * y[j];                                   \
        }                                                                     \
    }                                                                         \
    for (; i < m; ++i) {                                                      \
        const T zi = z[i], si = alpha * x[i];                                 \
        T *restrict r = A + i * lda;                                          \
        for (ptrdiff_t j = 0; j < n; ++j) {                                   \
            const T v = r[j];                                                 \
            out[j] += zi * v;                                                 \
            r[j] = scale * v + si * y[j];                                     \
        }                                                                     \
    }                                                                         \
}
FS_LEVEL2(float, s)
FS_LEVEL2(double, d)
#undef FS_LEVEL2
#undef FS_SYR2

/* Row-major float products C (m x n) = alpha op(A) op(B) + beta C by AVX2
 * + FMA: strips of 16 columns of op(B) times blocks of 6, 4 and 1 rows of
 * op(A), each entry summing its k products in order.  Element (r, l) of
 * op(A) is A[r * ars + l * acs].  SciPy's OpenBLAS (0.3.30, Haswell
 * kernels) copies its first column-major operand -- our B -- into panels
 * one element at a time (measured on AMD Zen 3: 17 % of H Uinv at m = 128,
 * d = 512; about 4 % in Debian's 0.3.21 with its Zen kernels); this loop:
 * - reads B in place ("direct") while B is not transposed, has at most
 *   FS_SG_BMAX entries (in L2) and op(A) at most FS_SG_AMAX (in L1), or,
 *   A not transposed, B at most FS_SG_NFEW columns (A read once per strip):
 *   H Uinv at m = 32, d = 128 in 12 against 20.8 us;
 * - otherwise, op(A) not transposed and of at most FS_SG_MMAX rows, copies
 *   each strip of op(B) (k x 16: B's rows, B^T's, or a symmetric matrix's
 *   from its upper triangle) into a buffer first ("packed"): 0.52 to 0.94
 *   of BLAS's time from m = 16 to 256 rows at d = 512 (H Uinv at m = 128,
 *   d = 512: 815 against 909 us), 0.93 at 300, equal at 512.
 * op(A) transposed and larger (the rank-m updates of d x d matrices):
 * BLAS, as fast (the loop: 1.09 to 1.15 of its time).  The limits were
 * measured on this one CPU and SciPy build; CPUs with AVX-512 keep BLAS for
 * the packed shapes (fs_blas_detect; its kernels are twice as wide). */
#define FS_SG_AMAX 4096
#define FS_SG_BMAX 65536
#define FS_SG_NFEW 48
#define FS_SG_MMAX 320
#define FS_SG_PACK 4
#if FS_HAVE_AVX2
#include <immintrin.h>
#define FS_SG_ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define FS_SG_ROWS4(X) X(0) X(1) X(2) X(3)
#define FS_SG_ROWS1(X) X(0)
#define FS_SG_DECL(r)                                                         \
    const float *a##r = A + r * ars;                                          \
    __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();
#define FS_SG_FMA(r)                                                          \
    {                                                                         \
        const __m256 a = _mm256_broadcast_ss(a##r + l * acs);                 \
        c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                            \
        c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);                            \
    }
#define FS_SG_STORE(r)                                                        \
    {                                                                         \
        float *cr = C + r * ldc;                                              \
        __m256 x0 = _mm256_mul_ps(va, c##r##0), x1 = _mm256_mul_ps(va, c##r##1); \
        if (beta != 0.0f) {     /* (C is not read when beta = 0) */           \
            x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), x0);                \
            x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), x1);            \
        }                                                                     \
        _mm256_storeu_ps(cr, x0);                                             \
        _mm256_storeu_ps(cr + 8, x1);                                         \
    }
#define FS_SG_KERNEL(NAME, ROWS)                                              \
static FS_AVX2_FN void NAME(ptrdiff_t k, float alpha, const float *A,         \
                            ptrdiff_t ars, ptrdiff_t acs, const float *B,     \
                            ptrdiff_t ldb, float beta, float *C,              \
                            ptrdiff_t ldc)                                    \
{                                                                             \
    ROWS(FS_SG_DECL)                                                          \
    for (ptrdiff_t l = 0; l < k; ++l) {                                       \
        const __m256 b0 = _mm256_loadu_ps(B + l * ldb),                       \
                     b1 = _mm256_loadu_ps(B + l * ldb + 8);                   \
        ROWS(FS_SG_FMA)                                                       \
    }                                                                         \
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);       \
    ROWS(FS_SG_STORE)                                                         \
}
/* B = A^T for one 8 x 8 block (rows of A lda apart, of B ldb apart) */
static FS_AVX2_FN void fs_tr8x8_s(const float *A, ptrdiff_t lda, float *B,
                                  ptrdiff_t ldb)
{
    __m256 r0 = _mm256_loadu_ps(A), r1 = _mm256_loadu_ps(A + lda),
           r2 = _mm256_loadu_ps(A + 2 * lda), r3 = _mm256_loadu_ps(A + 3 * lda),
           r4 = _mm256_loadu_ps(A + 4 * lda), r5 = _mm256_loadu_ps(A + 5 * lda),
           r6 = _mm256_loadu_ps(A + 6 * lda), r7 = _mm256_loadu_ps(A + 7 * lda);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r0 = _mm256_permute2f128_ps(s0, s4, 0x20);
    r1 = _mm256_permute2f128_ps(s1, s5, 0x20);
    r2 = _mm256_permute2f128_ps(s2, s6, 0x20);
    r3 = _mm256_permute2f128_ps(s3, s7, 0x20);
    r4 = _mm256_permute2f128_ps(s0, s4, 0x31);
    r5 = _mm256_permute2f128_ps(s1, s5, 0x31);
    r6 = _mm256_permute2f128_ps(s2, s6, 0x31);
    r7 = _mm256_permute2f128_ps(s3, s7, 0x31);
    _mm256_storeu_ps(B, r0);
    _mm256_storeu_ps(B + ldb, r1);
    _mm256_storeu_ps(B + 2 * ldb, r2);
    _mm256_storeu_ps(B + 3 * ldb, r3);
    _mm256_storeu_ps(B + 4 * ldb, r4);
    _mm256_storeu_ps(B + 5 * ldb, r5);
    _mm256_storeu_ps(B + 6 * ldb, r6);
    _mm256_storeu_ps(B + 7 * ldb, r7);
}
FS_SG_KERNEL(fs_sg_kernel6, FS_SG_ROWS6)
FS_SG_KERNEL(fs_sg_kernel4, FS_SG_ROWS4)
FS_SG_KERNEL(fs_sg_kernel1, FS_SG_ROWS1)
#undef FS_SG_KERNEL
#undef FS_SG_STORE
#undef FS_SG_FMA
#undef FS_SG_DECL
#undef FS_SG_ROWS1
#undef FS_SG_ROWS4
#undef FS_SG_ROWS6
#endif

/* B (c x r, rows ldb apart) = A^T, A r x c (rows lda apart): in 8 x 8
 * blocks with AVX2 where the CPU has it (float), in 16 x 16 tiles
 * otherwise (a copy: the same values either way) */
#define FS_TRANSPOSE_TILES(T)                                                 \
    for (ptrdiff_t i0 = 0; i0 < r; i0 += 16)                                  \
        for (ptrdiff_t j0 = 0; j0 < c; j0 += 16)                              \
            for (ptrdiff_t j = j0; j < j0 + 16 && j < c; ++j)                 \
                for (ptrdiff_t i = i0; i < i0 + 16 && i < r; ++i)             \
                    B[j * ldb + i] = A[i * lda + j];
static inline void fs_transpose_s(int r, int c, const float *A, int lda,
                                  float *B, int ldb)
{
#if FS_HAVE_AVX2
    if (FS_USE_AVX2) {
        const ptrdiff_t r8 = r - r % 8, c8 = c - c % 8;
        for (ptrdiff_t i = 0; i < r8; i += 8)
            for (ptrdiff_t j = 0; j < c8; j += 8)
                fs_tr8x8_s(A + i * lda + j, lda, B + j * ldb + i, ldb);
        for (ptrdiff_t i = 0; i < r; ++i)       /* the edges */
            for (ptrdiff_t j = i < r8 ? c8 : 0; j < c; ++j)
                B[j * ldb + i] = A[i * lda + j];
        return;
    }
#endif
    FS_TRANSPOSE_TILES(float)
}
static inline void fs_transpose_d(int r, int c, const double *A, int lda,
                                  double *B, int ldb)
{
    FS_TRANSPOSE_TILES(double)
}
#undef FS_TRANSPOSE_TILES

/* the forms of op(B) the loop reads: B, B^T, or the symmetric matrix whose
 * upper triangle B holds */
enum { FS_SG_B = 0, FS_SG_BT = 1, FS_SG_SYM = 2 };
#if FS_HAVE_AVX2

/* how fs_sg_product computes C (m x n) = alpha op(A) op(B) + beta C (op(B)
 * of that form, k x n) on this CPU, now: 0 it does not (BLAS), 1 with B
 * read in place, 2 with op(B)'s strips packed */
static inline int fs_sg_route(int ta, int form, int m, int n, int k)
{
    if (!fs_blas.small_gemm || n % 16 != 0 || m < 1 || n < 1 || k < 1)
        return 0;
    if (form == FS_SG_B && (ptrdiff_t)k * n <= FS_SG_BMAX
        && ((ptrdiff_t)m * k <= FS_SG_AMAX || (!ta && n <= FS_SG_NFEW)))
        return 1;
    return !ta && m <= FS_SG_MMAX && !fs_blas.avx512 ? 2 : 0;
}

/* P (ns blocks of k x 16, k * 16 apart) <- columns j .. j + 16 ns - 1 of
 * op(B) (k x n): B's rows as they are (row by row across the ns strips;
 * one strip at a time, its k rows 4 ldb bytes apart, packing a 512 x 512 B
 * took 49 against 35 us); B^T's from B's rows j .. j + 15 in 8 x 8
 * transposes; S's as they are above each strip's diagonal block,
 * transposed below it (S's upper triangle, by symmetry), element by
 * element within it */
static FS_AVX2_FN void fs_sg_pack(int form, ptrdiff_t k, const float *B,
                                  ptrdiff_t ldb, ptrdiff_t j, ptrdiff_t ns,
                                  float *P)
{
    if (form == FS_SG_B) {
        for (ptrdiff_t i = 0; i < k; ++i)
            for (ptrdiff_t t = 0; t < ns; ++t) {
                const float *b = B + i * ldb + j + 16 * t;
                float *p = P + t * k * 16 + i * 16;
                _mm256_storeu_ps(p, _mm256_loadu_ps(b));
                _mm256_storeu_ps(p + 8, _mm256_loadu_ps(b + 8));
            }
        return;
    }
    for (ptrdiff_t t = 0; t < ns; ++t, j += 16, P += k * 16) {
        ptrdiff_t l = form == FS_SG_SYM ? j : 0;
        for (ptrdiff_t i = 0; i < l; ++i) {
            const float *b = B + i * ldb + j;
            _mm256_storeu_ps(P + i * 16, _mm256_loadu_ps(b));
            _mm256_storeu_ps(P + i * 16 + 8, _mm256_loadu_ps(b + 8));
        }
        if (form == FS_SG_SYM) {
            for (ptrdiff_t r = 0; r < 16; ++r)
                for (ptrdiff_t c = 0; c < 16; ++c)
                    P[(j + r) * 16 + c] = r <= c ? B[(j + r) * ldb + j + c]
                                                 : B[(j + c) * ldb + j + r];
            l = j + 16;
        }
        for (; l + 8 <= k; l += 8) {
            fs_tr8x8_s(B + j * ldb + l, ldb, P + l * 16, 16);
            fs_tr8x8_s(B + (j + 8) * ldb + l, ldb, P + l * 16 + 8, 16);
        }
        for (; l < k; ++l)
            for (ptrdiff_t r = 0; r < 16; ++r)
                P[l * 16 + r] = B[(j + r) * ldb + l];
    }
}

/* one strip: C (m x 16) = alpha op(A) B + beta C, B k x 16 (rows lb
 * apart), in blocks of 6 rows (12 accumulators), then of 4, then single
 * rows; as many of 6 as leave a multiple of 4 */
static inline void fs_sg_rows(ptrdiff_t m, ptrdiff_t k, float alpha,
                              const float *A, ptrdiff_t ars, ptrdiff_t acs,
                              const float *B, ptrdiff_t lb, float beta,
                              float *C, ptrdiff_t ldc)
{
    ptrdiff_t n6 = m / 6, i = 0;
    for (ptrdiff_t t = n6; t >= 0; --t)
        if ((m - 6 * t) % 4 == 0) {
            n6 = t;
            break;
        }
    for (; i < 6 * n6; i += 6)
        fs_sg_kernel6(k, alpha, A + i * ars, ars, acs, B, lb, beta,
                      C + i * ldc, ldc);
    for (; i + 4 <= m; i += 4)
        fs_sg_kernel4(k, alpha, A + i * ars, ars, acs, B, lb, beta,
                      C + i * ldc, ldc);
    for (; i < m; ++i)
        fs_sg_kernel1(k, alpha, A + i * ars, ars, acs, B, lb, beta,
                      C + i * ldc, ldc);
}

/* 1 if C = alpha op(A) op(B) + beta C (op(B) of that form) was computed
 * here, 0 if the caller is to compute it (also when the strip's buffer
 * cannot be allocated).  upper: only C's rows up to the diagonal block of
 * each strip (a Gram matrix's upper triangle; m = n) */
static inline int fs_sg_product(int ta, int form, int upper, int m, int n,
                                int k, float alpha, const float *A, int lda,
                                const float *B, int ldb, float beta,
                                float *C, int ldc)
{
    const int route = fs_sg_route(ta, form, m, n, k);
    float *P = NULL;
    if (route == 0 || (route == 2 && (P = malloc((size_t)k * FS_SG_PACK * 16
                                                 * sizeof(float))) == NULL))
        return 0;
    const ptrdiff_t ars = ta ? 1 : lda, acs = ta ? lda : 1;
    for (ptrdiff_t j = 0; j < n; j += 16) {
        const float *Bj = B + j;
        ptrdiff_t lb = ldb;
        if (P != NULL) {    /* FS_SG_PACK strips at a time */
            const ptrdiff_t t = j / 16 % FS_SG_PACK;
            if (t == 0)
                fs_sg_pack(form, k, B, ldb, j,
                           n - j < 16 * FS_SG_PACK ? (n - j) / 16 : FS_SG_PACK,
                           P);
            Bj = P + t * k * 16;
            lb = 16;
        }
        fs_sg_rows(upper && j + 16 < m ? j + 16 : m, k, alpha, A, ars, acs,
                   Bj, lb, beta, C + j, ldc);
    }
    free(P);
    return 1;
}
/* whether fs_gemm_small_s computes C (m x n) = alpha op(A) op(B) + beta C
 * with these transpositions and sizes (on this CPU, now) */
static inline int fs_gemm_small_takes(int ta, int tb, int m, int n, int k)
{
    return fs_sg_route(ta, tb ? FS_SG_BT : FS_SG_B, m, n, k) != 0;
}
static inline int fs_gemm_small_s(int ta, int tb, int m, int n, int k,
                                  float alpha, const float *A, int lda,
                                  const float *B, int ldb, float beta,
                                  float *C, int ldc)
{
    return fs_sg_product(ta, tb ? FS_SG_BT : FS_SG_B, 0, m, n, k, alpha, A,
                         lda, B, ldb, beta, C, ldc);
}
/* The upper triangle of C (n x n) = alpha (A^T B + B^T A) + beta C, A and
 * B k x n, by the loop with B (and A) read in place: per strip of 16
 * columns, the rows above its diagonal block as alpha A^T B + beta C, then
 * alpha B^T A added; the diagonal block's upper triangle from T = A^T B
 * there as alpha (T + T^T) + beta C (1 if computed here, 0 if the caller
 * is to).  At n = 128, k = 32 (the update of M in a minibatch step):
 * SciPy's OpenBLAS ssyr2k 20 us, a full T = A^T B in a scratch matrix and
 * its symmetrisation 15.6, this 12.6 (no scratch). */
static inline int fs_syr2k_small_s(int n, int k, float alpha, const float *A,
                                   int lda, const float *B, int ldb,
                                   float beta, float *C, int ldc)
{
    if (fs_sg_route(1, FS_SG_B, n, n, k) != 1)
        return 0;
    for (ptrdiff_t j = 0; j < n; j += 16) {
        float t[256];
        fs_sg_rows(j, k, alpha, A, 1, lda, B + j, ldb, beta, C + j, ldc);
        fs_sg_rows(j, k, alpha, B, 1, ldb, A + j, lda, 1.0f, C + j, ldc);
        fs_sg_rows(16, k, 1.0f, A + j, 1, lda, B + j, ldb, 0.0f, t, 16);
        for (ptrdiff_t r = 0; r < 16; ++r) {
            float *c = C + (j + r) * ldc + j;
            for (ptrdiff_t q = r; q < 16; ++q)
                c[q] = beta == 0.0f ? alpha * (t[r * 16 + q] + t[q * 16 + r])
                                    : beta * c[q]
                                      + alpha * (t[r * 16 + q] + t[q * 16 + r]);
        }
    }
    return 1;
}
/* C (m x n) = alpha B S + beta C with S (n x n) symmetric, its upper
 * triangle given, by the loop with S's strips packed from it (1 if
 * computed here, 0 if the caller is to).  SciPy's OpenBLAS ssymm took
 * 17.4 us at m = 32, n = 128. */
static inline int fs_symm_small_s(int m, int n, float alpha, const float *S,
                                  int lds, const float *B, int ldb,
                                  float beta, float *C, int ldc)
{
    return fs_sg_product(0, FS_SG_SYM, 0, m, n, n, alpha, B, ldb, S, lds,
                         beta, C, ldc);
}
/* the upper triangle of C (n x n) = A A^T, A n x k (and the entries below
 * it in the diagonal 16 x 16 blocks), by the loop with A^T's strips
 * packed, only C's blocks that meet the upper triangle (1 if computed
 * here, 0 if the caller is to).  With the mirror (fs_gram_rows), against
 * SciPy's ssyrk: 2.8 against 5.4 us at n = 32, k = 128; 119 against 160
 * at n = 128, k = 512 */
static inline int fs_gram_small_s(int n, int k, const float *A, int lda,
                                  float *C, int ldc)
{
    return fs_sg_product(0, FS_SG_BT, 1, n, n, k, 1.0f, A, lda, A, lda, 0.0f,
                         C, ldc);
}
#else
#define fs_sg_route(...) 0
#define fs_gemm_small_takes(...) 0
#define fs_gemm_small_s(...) 0
#define fs_syr2k_small_s(...) 0
#define fs_symm_small_s(...) 0
#define fs_gram_small_s(...) 0
#endif
/* (float64 products all go to BLAS) */
#define fs_gemm_small_d(...) 0
#define fs_syr2k_small_d(...) 0
#define fs_symm_small_d(...) 0
#define fs_gram_small_d(...) 0

/* Row-major wrappers, suffix _s / _d; trans arguments are 0 (no) or 1.
 * As in BLAS, C (or y) is not read when beta = 0. */
#define FS_BLAS_WRAPPERS(T, S)                                                \
/* y = alpha op(A) x + beta y, A m x n */                                     \
static inline void fs_gemv_##S(int ta, int m, int n, T alpha, const T *A,     \
                               int lda, const T *x, int incx, T beta, T *y,   \
                               int incy)                                      \
{                                                                             \
    if ((ptrdiff_t)m * n <= FS_SMALL) {                                            \
        const int ny = ta ? n : m, nx = ta ? m : n;                           \
        for (int i = 0; i < ny; ++i) {                                        \
            double acc = 0.0;                                                 \
            for (int j = 0; j < nx; ++j)                                      \
                acc += (double)(ta ? A[(ptrdiff_t)j * lda + i]                     \
                                   : A[(ptrdiff_t)i * lda + j])                    \
                       * x[(ptrdiff_t)j * incx];                                   \
            T *yi = y + (ptrdiff_t)i * incy;                                       \
            *yi = (T)(alpha * acc + (beta == (T)0 ? 0.0 : (double)beta * *yi)); \
        }                                                                     \
        return;                                                               \
    }                                                                         \
    {                                                                         \
        const char t = ta ? 'N' : 'T';                                        \
        fs_blas.S##gemv(&t, &n, &m, &alpha, A, &lda, x, &incx, &beta, y,      \
                        &incy);                                               \
    }                                                                         \
}                                                                             \
/* A (m x n) += alpha x y^T */                                                \
static inline void fs_ger_##S(int m, int n, T alpha, const T *x, int incx,    \
                              const T *y, int incy, T *A, int lda)            \
{                                                                             \
    if ((ptrdiff_t)m * n <= FS_SMALL) {                                            \
        for (int i = 0; i < m; ++i) {                                         \
            const double ax = (double)alpha * x[(ptrdiff_t)i * incx];              \
            for (int j = 0; j < n; ++j)                                       \
                A[(ptrdiff_t)i * lda + j] += (T)(ax * y[(ptrdiff_t)j * incy]);          \
        }                                                                     \
        return;                                                               \
    }                                                                         \
    if (FS_USE_AVX2 && incy == 1) {                                           \
        fs_ger_avx2_##S(m, n, alpha, x, incx, y, A, lda);                     \
        return;                                                               \
    }                                                                         \
    fs_blas.S##ger(&n, &m, &alpha, y, &incy, x, &incx, A, &lda);              \
}                                                                             \
/* C (m x n) = alpha op(A) op(B) + beta C */                                  \
static inline void fs_gemm_##S(int ta, int tb, int m, int n, int k, T alpha,  \
                               const T *A, int lda, const T *B, int ldb,      \
                               T beta, T *C, int ldc)                         \
{                                                                             \
    if ((ptrdiff_t)m * n * k <= FS_SMALL) {                                        \
        for (int i = 0; i < m; ++i)                                           \
            for (int j = 0; j < n; ++j) {                                     \
                double acc = 0.0;                                             \
                for (int l = 0; l < k; ++l)                                   \
                    acc += (double)(ta ? A[(ptrdiff_t)l * lda + i]                 \
                                       : A[(ptrdiff_t)i * lda + l])                \
                           * (tb ? B[(ptrdiff_t)j * ldb + l] : B[(ptrdiff_t)l * ldb + j]); \
                T *c = C + (ptrdiff_t)i * ldc + j;                                 \
                *c = (T)(alpha * acc + (beta == (T)0 ? 0.0 : (double)beta * *c)); \
            }                                                                 \
        return;                                                               \
    }                                                                         \
    if (m == 1) {   /* one row: c = alpha op(B)^T a + beta c */               \
        fs_gemv_##S(!tb, tb ? n : k, tb ? k : n, alpha, B, ldb, A,            \
                    ta ? lda : 1, beta, C, 1);                                \
        return;                                                               \
    }                                                                         \
    if (k == 1 && beta == (T)1) {   /* rank one: C += alpha a b^T */          \
        fs_ger_##S(m, n, alpha, A, ta ? 1 : lda, B, tb ? ldb : 1, C, ldc);    \
        return;                                                               \
    }                                                                         \
    if (fs_gemm_small_##S(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C,    \
                          ldc))                                               \
        return;                                                               \
    {   /* row-major C is column-major C^T = op(B)^T op(A)^T */               \
        const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';                \
        fs_blas.S##gemm(&ctb, &cta, &n, &m, &k, &alpha, B, &ldb, A, &lda,     \
                        &beta, C, &ldc);                                      \
    }                                                                         \
}                                                                             \
/* C (m x n) = alpha B A + beta C, A n x n symmetric (upper triangle read) */ \
static inline void fs_symm_right_upper_##S(int m, int n, T alpha, const T *A, \
                                           int lda, const T *B, int ldb,      \
                                           T beta, T *C, int ldc)             \
{                                                                             \
    if ((ptrdiff_t)m * n * n <= FS_SMALL) {                                        \
        for (int i = 0; i < m; ++i)                                           \
            for (int j = 0; j < n; ++j) {                                     \
                double acc = 0.0;                                             \
                for (int l = 0; l < n; ++l)                                   \
                    acc += (double)B[(ptrdiff_t)i * ldb + l]                       \
                           * (l <= j ? A[(ptrdiff_t)l * lda + j] : A[(ptrdiff_t)j * lda + l]); \
                T *c = C + (ptrdiff_t)i * ldc + j;                                 \
                *c = (T)(alpha * acc + (beta == (T)0 ? 0.0 : (double)beta * *c)); \
            }                                                                 \
        return;                                                               \
    }                                                                         \
    if (m == 1) {                                                             \
        const char uplo = 'L';                                                \
        const int one = 1;                                                    \
        fs_blas.S##symv(&uplo, &n, &alpha, A, &lda, B, &one, &beta, C, &one); \
        return;                                                               \
    }                                                                         \
    if (fs_symm_small_##S(m, n, alpha, A, lda, B, ldb, beta, C, ldc))         \
        return;                                                               \
    {   /* column-major: C^T = alpha A B^T + beta C^T, A's lower triangle */  \
        const char side = 'L', uplo = 'L';                                    \
        fs_blas.S##symm(&side, &uplo, &n, &m, &alpha, A, &lda, B, &ldb,       \
                        &beta, C, &ldc);                                      \
    }                                                                         \
}                                                                             \
/* upper triangle of C (n x n) = alpha (A^T B + B^T A) + beta C, A and B     \
 * k x n */                                                                   \
static inline void fs_syr2k_upper_trans_##S(int n, int k, T alpha,            \
                                            const T *A, int lda, const T *B,  \
                                            int ldb, T beta, T *C, int ldc)   \
{                                                                             \
    const char uplo = 'L';                                                    \
    if ((ptrdiff_t)n * n * k <= 2 * FS_SMALL) {  /* (the upper half: n^2 k / 2) */ \
        for (int i = 0; i < n; ++i)                                           \
            for (int j = i; j < n; ++j) {                                     \
                double acc = 0.0;                                             \
                for (int l = 0; l < k; ++l)                                   \
                    acc += (double)A[(ptrdiff_t)l * lda + i] * B[(ptrdiff_t)l * ldb + j] \
                           + (double)B[(ptrdiff_t)l * ldb + i] * A[(ptrdiff_t)l * lda + j]; \
                T *c = C + (ptrdiff_t)i * ldc + j;                                 \
                *c = (T)(alpha * acc + (beta == (T)0 ? 0.0 : (double)beta * *c)); \
            }                                                                 \
        return;                                                               \
    }                                                                         \
    if (k == 1 && beta == (T)1) {   /* rank two */                            \
        if (FS_USE_AVX2)                                                      \
            fs_syr2_upper_avx2_##S(n, alpha, A, B, C, ldc);                   \
        else                                                                  \
            fs_syr2_upper_##S(n, alpha, A, B, C, ldc);                        \
        return;                                                               \
    }                                                                         \
    if (fs_syr2k_small_##S(n, k, alpha, A, lda, B, ldb, beta, C, ldc))       \
        return;                                                               \
    {   /* column-major: A^T is n x k, C^T's lower triangle */                \
        const char t = 'N';                                                   \
        fs_blas.S##syr2k(&uplo, &t, &n, &k, &alpha, A, &lda, B, &ldb, &beta,  \
                         C, &ldc);                                            \
    }                                                                         \
}                                                                             \
/* C (n x n, both triangles) = A A^T, A n x k: the Gram matrix of A's rows   \
 * (BLAS syrk computes one triangle, half a product's work; then mirrored) */ \
static inline void fs_gram_rows_##S(int n, int k, const T *A, int lda, T *C,  \
                                    int ldc)                                  \
{                                                                             \
    if ((ptrdiff_t)n * n * k <= FS_SMALL || n == 1) {                         \
        fs_gemm_##S(0, 1, n, n, k, (T)1, A, lda, A, lda, (T)0, C, ldc);       \
        return;                                                               \
    }                                                                         \
    if (!fs_gram_small_##S(n, k, A, lda, C, ldc)) {                           \
        /* column-major: A^T is k x n; C^T's lower triangle is C's upper */   \
        const char uplo = 'L', t = 'T';                                       \
        const T one = 1, zero = 0;                                            \
        fs_blas.S##syrk(&uplo, &t, &n, &k, &one, A, &lda, &zero, C, &ldc);    \
    }                                                                         \
    for (int i = 1; i < n; ++i)                                               \
        for (int j = 0; j < i; ++j)                                           \
            C[(ptrdiff_t)i * ldc + j] = C[(ptrdiff_t)j * ldc + i];            \
}                                                                             \
/* LU of the n x n row-major A in place (the factors of its column-major     \
 * view A^T); returns LAPACK's info */                                        \
static inline int fs_getrf_##S(int n, T *A, int lda, int *ipiv)               \
{                                                                             \
    int info = 0;                                                             \
    fs_blas.S##getrf(&n, &n, A, &lda, ipiv, &info);                           \
    return info;                                                              \
}                                                                             \
/* solve A x = b for each of the nrhs ROWS b of the row-major B (nrhs x n),   \
 * with A factored by fs_getrf */                                             \
static inline int fs_getrs_##S(int n, int nrhs, const T *A, int lda,          \
                               const int *ipiv, T *B, int ldb)                \
{                                                                             \
    const char t = 'T';                                                       \
    int info = 0;                                                             \
    fs_blas.S##getrs(&t, &n, &nrhs, A, &lda, ipiv, B, &ldb, &info);           \
    return info;                                                              \
}

FS_BLAS_WRAPPERS(float, s)
FS_BLAS_WRAPPERS(double, d)
#undef FS_BLAS_WRAPPERS

/* The inverse of the symmetric positive definite n x n A (double; its
 * upper triangle read, both set on return) in place, by LAPACK's Cholesky
 * factorisation (potrf, potri).  Returns LAPACK's info: > 0 when A is not
 * positive definite (A then holds garbage).  The minibatch step's large
 * systems when they are definite: 277 against 420 us for getrf + getrs at
 * n = 128 (one third of their multiply-adds). */
static inline int fs_inverse_spd_d(int n, double *A, int lda)
{
    const char uplo = 'L';      /* column-major lower = row-major upper */
    int info = 0;
    fs_blas.dpotrf(&uplo, &n, A, &lda, &info);
    if (info == 0)
        fs_blas.dpotri(&uplo, &n, A, &lda, &info);
    if (info == 0)
        for (ptrdiff_t i = 1; i < n; ++i)
            for (ptrdiff_t j = 0; j < i; ++j)
                A[i * lda + j] = A[j * lda + i];
    return info;
}

/* The inverse of the n x n row-major A (double) in place, by Gauss-Jordan
 * elimination with partial (row) pivoting; piv: n ints and w: n doubles of
 * workspace.  Returns 0, or k + 1 when column k has no finite nonzero
 * pivot.  For the minibatch step's small systems: SciPy's LAPACK getrf and
 * getrs took 13 us at n = 32 (for about 44 000 multiply-adds, mostly
 * overhead), this about 5 (its n^3 multiply-adds; two rows per pass over
 * the pivot row, which w holds: 7.7 us one row at a time).  Every
 * operation is elementwise along a row (no reduction), so the portable
 * copy and the AVX2 one (no FMA) give the same bits. */
#define FS_GJ_INVERSE(NAME, ATTR)                                             \
static ATTR int NAME(int n, double *restrict A, int *restrict piv,           \
                     double *restrict w)                                      \
{                                                                             \
    for (ptrdiff_t k = 0; k < n; ++k) {                                       \
        ptrdiff_t p = -1;                                                     \
        double best = 0.0;                                                    \
        for (ptrdiff_t i = k; i < n; ++i) {                                   \
            const double v = fabs(A[i * n + k]);                              \
            if (v > best) {     /* (a NaN is never chosen) */                 \
                best = v;                                                     \
                p = i;                                                        \
            }                                                                 \
        }                                                                     \
        if (p < 0 || !(best <= DBL_MAX))                                      \
            return (int)k + 1;                                                \
        piv[k] = (int)p;                                                      \
        double *rk = A + k * n;                                               \
        if (p != k) {                                                         \
            double *rp = A + p * n;                                           \
            for (ptrdiff_t c = 0; c < n; ++c) {                               \
                const double t = rk[c];                                       \
                rk[c] = rp[c];                                                \
                rp[c] = t;                                                    \
            }                                                                 \
        }                                                                     \
        /* column k of A becomes column k of the inverse (of the rows'        \
         * permutation, undone below): w = the scaled pivot row, entry k      \
         * 1 / pivot; every other row i -= A[i][k] w, its entry k then        \
         * -A[i][k] / pivot (stored after the row's loop: a scalar store      \
         * before its loads stalled each row) */                              \
        const double r = 1.0 / rk[k];                                         \
        for (ptrdiff_t c = 0; c < n; ++c)                                     \
            w[c] = rk[c] * r;                                                 \
        w[k] = r;                                                             \
        ptrdiff_t i = 0;                                                      \
        for (; i + 2 <= n; i += 2) {                                          \
            double *r0 = A + i * n, *r1 = r0 + n;                             \
            const double f0 = i == k ? 0.0 : r0[k],                           \
                         f1 = i + 1 == k ? 0.0 : r1[k];                       \
            for (ptrdiff_t c = 0; c < n; ++c) {                               \
                const double x = w[c];                                        \
                r0[c] -= f0 * x;                                              \
                r1[c] -= f1 * x;                                              \
            }                                                                 \
            r0[k] = -(f0 * r);                                                \
            r1[k] = -(f1 * r);                                                \
        }                                                                     \
        for (; i < n; ++i) {                                                  \
            double *ri = A + i * n;                                           \
            const double f = i == k ? 0.0 : ri[k];                            \
            for (ptrdiff_t c = 0; c < n; ++c)                                 \
                ri[c] -= f * w[c];                                            \
            ri[k] = -(f * r);                                                 \
        }                                                                     \
        for (ptrdiff_t c = 0; c < n; ++c)   /* (row k took 0 w above) */      \
            rk[c] = w[c];                                                     \
    }                                                                         \
    /* the row interchanges permuted the inverse's columns */                 \
    for (ptrdiff_t k = n - 1; k >= 0; --k)                                    \
        if (piv[k] != k)                                                      \
            for (ptrdiff_t i = 0; i < n; ++i) {                               \
                double *ri = A + i * n;                                       \
                const double t = ri[k];                                       \
                ri[k] = ri[piv[k]];                                           \
                ri[piv[k]] = t;                                               \
            }                                                                 \
    return 0;                                                                 \
}
FS_GJ_INVERSE(fs_inverse_port_d, FS_NOINLINE)
#if FS_HAVE_AVX2
FS_GJ_INVERSE(fs_inverse_avx2_d, FS_AVX2_EXACT_FN)
#endif
#undef FS_GJ_INVERSE

static inline int fs_inverse_d(int n, double *A, int *piv, double *w)
{
#if FS_HAVE_AVX2
    if (FS_USE_AVX2)
        return fs_inverse_avx2_d(n, A, piv, w);
#endif
    return fs_inverse_port_d(n, A, piv, w);
}

#endif
