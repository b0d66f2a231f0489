/* Microbenchmarks of fastsparse's kernels with no Python in the way.
 *
 * It calls the library's own entry points (src_c/fs_kernels.h, compiled
 * from the same sources as fastsparse._core) and the same row-major BLAS
 * wrappers (src_c/fs_blas.h), with the table filled from a BLAS library
 * (by default the scipy-openblas32 wheel's): nothing here re-implements a
 * kernel, so it cannot drift from the package.
 *
 *   fs_microbench D d K m block repeats dtype        time, print a table
 *   fs_microbench --check D d K m block dtype FILE   run one online call and
 *       write its inputs and results (raw little-endian arrays) for
 *       tests/test_microbench.py to compare with fastsparse._core
 *
 * Built by bench/c/build.sh; run through bench/microbench.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fs_kernels.h"

#ifndef FS_BLAS_PREFIX
#define FS_BLAS_PREFIX scipy_
#endif
#define MB_CAT2(p, n) p##n##_
#define MB_CAT(p, n) MB_CAT2(p, n)
#define BLAS(n) MB_CAT(FS_BLAS_PREFIX, n)

#define MB_EXTERN(T, S)                                                        \
extern fs_##S##gemm_t BLAS(S##gemm);   extern fs_##S##gemv_t BLAS(S##gemv);    \
extern fs_##S##ger_t BLAS(S##ger);     extern fs_##S##symm_t BLAS(S##symm);    \
extern fs_##S##symv_t BLAS(S##symv);   extern fs_##S##syr2k_t BLAS(S##syr2k);  \
extern fs_##S##syrk_t BLAS(S##syrk);   extern fs_##S##getrf_t BLAS(S##getrf);  \
extern fs_##S##getrs_t BLAS(S##getrs);
MB_EXTERN(float, s)
MB_EXTERN(double, d)
extern fs_dsyev_t BLAS(dsyev);
extern fs_dgeqrf_t BLAS(dgeqrf);
extern fs_dorgqr_t BLAS(dorgqr);

static void fill_table(void)
{
#define MB_SET(S) fs_blas.S##gemm = BLAS(S##gemm); fs_blas.S##gemv = BLAS(S##gemv); \
    fs_blas.S##ger = BLAS(S##ger); fs_blas.S##symm = BLAS(S##symm);             \
    fs_blas.S##symv = BLAS(S##symv); fs_blas.S##syr2k = BLAS(S##syr2k);         \
    fs_blas.S##syrk = BLAS(S##syrk); fs_blas.S##getrf = BLAS(S##getrf);         \
    fs_blas.S##getrs = BLAS(S##getrs);
    MB_SET(s)
    MB_SET(d)
    fs_blas.dsyev = BLAS(dsyev);
    fs_blas.dgeqrf = BLAS(dgeqrf);
    fs_blas.dorgqr = BLAS(dorgqr);
    fs_blas_detect();   /* the AVX2 + FMA loops where the CPU has them */
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* a deterministic uniform(-1, 1) stream */
static unsigned long long mb_seed = 88172645463325252ULL;
static double urand(void)
{
    mb_seed ^= mb_seed << 13;
    mb_seed ^= mb_seed >> 7;
    mb_seed ^= mb_seed << 17;
    return (double)(mb_seed >> 11) / 4503599627370496.0 - 1.0;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median and minimum of n samples (sorted in place) */
static void stats(double *t, int n, double *med, double *min)
{
    qsort(t, n, sizeof(double), cmp_double);
    *min = t[0];
    *med = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void row(const char *name, double per, double med, double min,
                double flops, double nominal)
{
    printf("%-44s %12.2f %12.2f %9.1f", name, 1e6 * med / per, 1e6 * min / per,
           flops > 0 ? flops / med * 1e-9 : 0.0);
    if (nominal > 0)
        printf(" %8.2f", nominal);
    printf("\n");
}

#define MB_BENCH(T, S)                                                        \
static int bench_##S(ptrdiff_t D, int d, int K, int m, int block,             \
                     int repeats, const char *check_path)                     \
{                                                                             \
    const ptrdiff_t Dd = D * d;                                               \
    T *V = malloc(Dd * sizeof(T)), *U = malloc((size_t)d * d * sizeof(T));    \
    T *Ui = malloc((size_t)d * d * sizeof(T)), *M = malloc((size_t)d * d * sizeof(T)); \
    T *H = malloc((size_t)m * d * sizeof(T)), *val = malloc((size_t)m * K * sizeof(T)); \
    T *loss = malloc((size_t)m * sizeof(T)), *grad = malloc((size_t)m * d * sizeof(T)); \
    T *V0 = NULL, *U0 = NULL, *Ui0 = NULL, *M0 = NULL;                        \
    int64_t *indptr = malloc((size_t)(m + 1) * sizeof(int64_t));              \
    int64_t *idx = malloc((size_t)m * K * sizeof(int64_t));                   \
    double *t = malloc((size_t)repeats * sizeof(double)), med, min;           \
    fs_loss_spec spec = {FS_LOSS_SQUARED, (double)D, 0, 0, 0};                \
    fs_control ctl;                                                           \
    if (!V || !U || !Ui || !M || !H || !val || !loss || !grad || !indptr      \
        || !idx || !t)                                                        \
        return 1;                                                             \
    for (ptrdiff_t c = 0; c < Dd; ++c)                                        \
        V[c] = (T)(urand() / sqrt((double)d));                                \
    for (int c = 0; c < d * d; ++c)                                           \
        U[c] = Ui[c] = (T)(c % (d + 1) == 0);                                 \
    memset(M, 0, (size_t)d * d * sizeof(T));                                  \
    for (ptrdiff_t r0 = 0; r0 < D; r0 += 4096) {   /* M = V^T V */             \
        const int nr = (int)(D - r0 < 4096 ? D - r0 : 4096);                  \
        fs_syr2k_upper_trans_##S(d, nr, (T)0.5, V + r0 * d, d, V + r0 * d, d, \
                                 1, M, d);                                    \
    }                                                                         \
    for (int i = 0; i < m; ++i) {                                             \
        double n2 = 0;                                                        \
        for (int c = 0; c < d; ++c) {                                         \
            H[i * d + c] = (T)urand();                                        \
            n2 += (double)H[i * d + c] * H[i * d + c];                        \
        }                                                                     \
        for (int c = 0; c < d; ++c)                                           \
            H[i * d + c] /= (T)sqrt(n2);                                      \
        indptr[i] = (int64_t)i * K;                                           \
        for (int k = 0; k < K; ++k) {                                         \
            idx[i * K + k] = (int64_t)((0.5 + 0.5 * urand()) * (D - K)) + k;  \
            val[i * K + k] = 1;                                               \
        }                                                                     \
    }                                                                         \
    indptr[m] = (int64_t)m * K;                                               \
    memset(&ctl, 0, sizeof(ctl));                                             \
    ctl.lr = 0.01; ctl.split = 0.5; ctl.norm_limit = 1e30;                    \
    ctl.smax2 = ctl.sinv2 = 1; ctl.mnorm = 1e6;                               \
    if (check_path != NULL) {                                                 \
        FILE *f = fopen(check_path, "wb");                                    \
        int st;                                                               \
        if (f == NULL)                                                        \
            return 1;                                                         \
        fwrite(V, sizeof(T), Dd, f); fwrite(U, sizeof(T), (size_t)d * d, f);  \
        fwrite(M, sizeof(T), (size_t)d * d, f);                               \
        fwrite(H, sizeof(T), (size_t)m * d, f);                               \
        fwrite(idx, sizeof(int64_t), (size_t)m * K, f);                       \
        st = fs_online_##S(D, d, V, U, Ui, M, NULL, NULL, m, H, indptr, idx,  \
                           val, &spec, block, &ctl, loss, grad);              \
        fwrite(V, sizeof(T), Dd, f); fwrite(U, sizeof(T), (size_t)d * d, f);  \
        fwrite(Ui, sizeof(T), (size_t)d * d, f);                              \
        fwrite(M, sizeof(T), (size_t)d * d, f);                               \
        fwrite(loss, sizeof(T), m, f); fwrite(grad, sizeof(T), (size_t)m * d, f); \
        fclose(f);                                                            \
        return st;                                                            \
    }                                                                         \
    printf("%-44s %12s %12s %9s\n", "kernel", "median us", "min us", "GFLOP/s"); \
    /* the whole steps, through the library's entry points */                 \
    for (int r = -2; r < repeats; ++r) {                                      \
        const double t0 = now();                                              \
        fs_online_##S(D, d, V, U, Ui, M, NULL, NULL, m, H, indptr, idx, val,  \
                      &spec, block, &ctl, loss, grad);                        \
        if (r >= 0)                                                           \
            t[r] = now() - t0;                                                \
    }                                                                         \
    stats(t, repeats, &med, &min);                                            \
    {                                                                         \
        char name[64];                                                        \
        snprintf(name, sizeof name, "online step, per example (block %d)", block); \
        row(name, m, med, min, 14.0 * d * d * m, 0);                          \
    }                                                                         \
    for (int r = -2; r < repeats; ++r) {                                      \
        const double t0 = now();                                              \
        fs_batch_##S(D, d, V, U, Ui, M, NULL, NULL, m, H, indptr, idx, val,   \
                     &spec, NULL, NULL, NULL, &ctl, loss, grad);              \
        if (r >= 0)                                                           \
            t[r] = now() - t0;                                                \
    }                                                                         \
    stats(t, repeats, &med, &min);                                            \
    row("minibatch step, per minibatch", 1, med, min, 14.0 * d * d * m, 0);   \
    {   /* a pass over V (near-singular update k = 1, renormalisation k) */   \
        T *P = malloc((size_t)16 * d * sizeof(T)), g[16];                     \
        for (int c = 0; c < 16 * d; ++c)                                      \
            P[c] = (T)(urand() * 1e-3);                                       \
        for (int k = 0; k < 16; ++k)                                          \
            g[k] = (T)1e-3;                                                   \
        for (int kk = 1; kk <= 16; kk *= 16) {                                \
            char name[64];                                                    \
            const int reps = repeats < 5 ? repeats : 5;                       \
            for (int r = 0; r < reps; ++r) {                                  \
                const double t0 = now();                                      \
                fs_lowrank_rows_##S(V, D, d, kk, P, P, g);                    \
                t[r] = now() - t0;                                            \
            }                                                                 \
            stats(t, reps, &med, &min);                                       \
            snprintf(name, sizeof name, "pass over V, rank %d", kk);          \
            row(name, 1, med, min, 4.0 * Dd * kk, 0);                         \
        }                                                                     \
        free(P);                                                              \
    }                                                                         \
    {   /* the BLAS calls of an online block, as the kernel makes them */     \
        const int k = block < m ? block : m;                                  \
        T *A = malloc((size_t)k * d * sizeof(T)), *B = malloc((size_t)k * d * sizeof(T)); \
        for (int c = 0; c < k * d; ++c)                                       \
            A[c] = B[c] = (T)urand();                                         \
        for (int which = 0; which < 3; ++which) {                             \
            const char *names[3] = {"gemm k x d x d (H U^T)",                 \
                                    "symm k x d x d (Bu M)",                  \
                                    "syr2k d x d x k (M update)"};           \
            for (int r = -2; r < repeats; ++r) {                              \
                const double t0 = now();                                      \
                if (which == 0)                                               \
                    fs_gemm_##S(0, 1, k, d, d, 1, H, d, U, d, 0, A, d);       \
                else if (which == 1)                                          \
                    fs_symm_right_upper_##S(k, d, 1, M, d, B, d, 0, A, d);    \
                else                                                          \
                    fs_syr2k_upper_trans_##S(d, k, (T)1e-9, A, d, B, d, 1, M, d); \
                if (r >= 0)                                                   \
                    t[r] = now() - t0;                                        \
            }                                                                 \
            stats(t, repeats, &med, &min);                                    \
            row(names[which], 1, med, min, 2.0 * k * d * d, 0);               \
        }                                                                     \
        free(A); free(B);                                                     \
    }                                                                         \
    free(V); free(U); free(Ui); free(M); free(H); free(val); free(loss);      \
    free(grad); free(indptr); free(idx); free(t);                             \
    (void)V0; (void)U0; (void)Ui0; (void)M0;                                  \
    return 0;                                                                 \
}
MB_BENCH(float, s)
MB_BENCH(double, d)

int main(int argc, char **argv)
{
    const int check = argc > 1 && strcmp(argv[1], "--check") == 0;
    char **a = argv + check;
    if (argc < 8 + check) {
        fprintf(stderr, "usage: %s D d K m block repeats dtype\n"
                        "       %s --check D d K m block dtype FILE\n",
                argv[0], argv[0]);
        return 2;
    }
    const ptrdiff_t D = atol(a[1]);
    const int d = atoi(a[2]), K = atoi(a[3]), m = atoi(a[4]), block = atoi(a[5]);
    const int repeats = check ? 1 : atoi(a[6]);
    const char *dtype = a[check ? 6 : 7];
    const char *path = check ? a[7] : NULL;
    if (D < K + 1 || d < 1 || K < 1 || m < 1 || block < 1 || repeats < 1) {
        fprintf(stderr, "fs_microbench: sizes must be positive (D > K)\n");
        return 2;
    }
    fill_table();
    if (!check)
        printf("# D=%td d=%d K=%d m=%d block=%d repeats=%d %s\n", D, d, K, m,
               block, repeats, dtype);
    if (strcmp(dtype, "float32") == 0)
        return bench_s(D, d, K, m, block, repeats, path);
    if (strcmp(dtype, "float64") == 0)
        return bench_d(D, d, K, m, block, repeats, path);
    fprintf(stderr, "fs_microbench: dtype must be float32 or float64\n");
    return 2;
}
