/* Standalone microbenchmark of the kernels of fastsparse's steps.
 *
 * Built from the C sources of src_c/ and this file against a BLAS/LAPACK library (by
 * default the one the scipy-openblas32 wheel ships, whose symbols carry the
 * prefix "scipy_"; see build.sh), without Python.  It times, in tight loops
 * clocked with clock_gettime(CLOCK_MONOTONIC):
 *
 *   - each BLAS call of the sequential (BLAS-2) online step at its size,
 *   - each BLAS call of the blocked online step at block size k, and the
 *     in-block corrections,
 *   - the sparse V-row kernels of src_c/fs_sparse.h on random rows of V,
 *   - each BLAS/LAPACK call of the minibatch step at (m, d),
 *   - the core of the stability monitor (power-iteration matvecs),
 *   - the whole blocked online step (fs_online_blocked_s/_d of
 *     src_c/fs_online.c) on a real state,
 *
 * reporting the time per call (min and median over the samples), GFLOP/s
 * and GB/s (from the median; the flop and byte models are printed) and, for
 * the whole step, the number of passes over d x d matrices per example.
 *
 * Usage: fs_microbench [options] [D d K m block repeats dtype]
 * (fs_microbench --help for the options).  --check PATH writes a small
 * deterministic float64 problem and the blocked step's results to PATH for
 * tests/test_microbench.py, which compares them with the package. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs_blas.h"
#include "fs_loss.h"
#include "fs_online.h"
#include "fs_sparse.h"

/* The prefix of the library's symbols: scipy_sgemm_, scipy_openblas_... */
#ifndef FS_BLAS_PREFIX
#define FS_BLAS_PREFIX scipy_
#endif
#define MB_PASTE_(a, b, c) a##b##c
#define MB_PASTE(a, b, c) MB_PASTE_(a, b, c)

/* OpenBLAS's thread control (define MB_NO_OPENBLAS for another BLAS) */
#ifndef MB_NO_OPENBLAS
void MB_PASTE(FS_BLAS_PREFIX, openblas_set_num_threads, )(int);
int MB_PASTE(FS_BLAS_PREFIX, openblas_get_num_threads, )(void);
char *MB_PASTE(FS_BLAS_PREFIX, openblas_get_config, )(void);
#endif

/* double-precision LU, used by both instantiations to invert U */
void MB_PASTE(FS_BLAS_PREFIX, d, getrf_)(const int *, const int *, double *,
                                         const int *, int *, int *);
void MB_PASTE(FS_BLAS_PREFIX, d, getrs_)(const char *, const int *,
                                         const int *, const double *,
                                         const int *, const int *, double *,
                                         const int *, int *);

#define MB_CHECK_MAGIC 0x424d5346LL    /* "FSMB" */
#define MB_MAX_SPECS 24
#define MB_MAX_BLOCKS 8

/* ------------------------------------------------------------- kernels */
enum {
    /* sequential online step, per example */
    KS_GEMV_UH, KS_SYMV_MU, KS_GEMV_UTZ, KS_GEMV_UINVTH, KS_GER_U,
    KS_GER_UINV, KS_SYR2_M,
    /* blocked online step, per block */
    KB_GEMM_HUT, KB_SYMM, KB_GEMM_HUINV, KB_GEMM_HHT, KB_CORR, KB_GEMM_ZU,
    KB_GEMM_ZBUT, KB_GEMM_GH, KB_SYR2K, KB_GEMM_UUPD, KB_GEMM_UINVUPD,
    /* sparse V rows, per example */
    KP_GATHER_DOTS, KP_GATHER_COMBINE, KP_SCATTER_AXPY, KP_EXAMPLE,
    /* minibatch step */
    KB_M_GEMM_HUT, KB_M_SYMM, KB_M_GEMM_ZU, KB_M_GEMM_HHT, KB_GETRF,
    KB_M_GEMM_HUINV, KB_GETRS, KB_M_GEMM_HHTZ, KB_M_CSR_GRAM, KB_M_AXPY_YYP,
    KB_M_GEMM_YYP,
    KB_M_GEMM_UUPD, KB_M_GEMM_UINVUPD, KB_M_SYR2K,
    /* stability monitor */
    KM_POWER,
    /* whole steps */
    KW_BLOCKED
};

enum {
    MB_GROUP_SEQUENTIAL, MB_GROUP_BLOCKED, MB_GROUP_SPARSE, MB_GROUP_BATCH,
    MB_GROUP_MONITOR, MB_N_GROUPS
};

typedef struct {
    int kid, reset;
    char section[64], name[80], shape[32];
    double flops, bytes, passes;    /* per call; passes < 0: not reported */
} mb_spec;

typedef struct {
    mb_spec spec;
    int block;
    long inner, calls;
    double min_s, median_s;
} mb_row;

typedef struct {
    ptrdiff_t D;
    int d, K, m, repeats, threads, setup_threads, tsv, verbose;
    int blocks[MB_MAX_BLOCKS], n_blocks;
    int dtype64;
    double target, lr;
    const char *check_path;
    int check_steps;
    double check_lr, check_wd;
} mb_config;

static int mb_verbose = 0, mb_tsv = 0;

static double mb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* 64-bit LCG (Knuth's MMIX constants), fixed seed: runs are repeatable */
static uint64_t mb_state = 0x2545F4914F6CDD1DULL;

static double mb_uniform(void)          /* [0, 1) */
{
    mb_state = mb_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(mb_state >> 11) * (1.0 / 9007199254740992.0);
}

static double mb_rand(void)             /* uniform, mean 0, variance 1 */
{
    return (mb_uniform() - 0.5) * 3.4641016151377544;
}

static void mb_set_threads(int n)
{
#ifndef MB_NO_OPENBLAS
    MB_PASTE(FS_BLAS_PREFIX, openblas_set_num_threads, )(n);
#else
    (void)n;
#endif
}

static void mb_info(const char *key, const char *value)
{
    if (strcmp(key, "status") == 0) {
        if (mb_verbose)
            fprintf(stderr, "  %s\n", value);
        return;
    }
    if (mb_tsv)
        printf("info\t%s\t%s\n", key, value);
    else
        printf("%-22s %s\n", key, value);
}

static void mb_spec_set(mb_spec *sp, int kid, const char *section,
                        const char *name, const char *shape, double flops,
                        double bytes, int reset)
{
    sp->kid = kid;
    sp->reset = reset;
    snprintf(sp->section, sizeof sp->section, "%s", section);
    snprintf(sp->name, sizeof sp->name, "%s", name);
    snprintf(sp->shape, sizeof sp->shape, "%s", shape);
    sp->flops = flops;
    sp->bytes = bytes;
    sp->passes = -1;
}

/* The kernels of one group with their flop and byte models (the same as
 * fastsparse/_bench.pyx: an FMA counts 2 flops; bytes = operands read once
 * + outputs written once, a symmetric matrix counting its triangle). */
static int mb_kernel_specs(mb_spec *sp, int group, ptrdiff_t D, int d_, int K_,
                           int m_, int k_, int s_, int nnz_yy)
{
    const double d = d_, K = K_, m = m_, k = k_, s = s_;
    const double dd = d * d, tri = d * (d + 1) / 2, kd = k * d, md = m * d,
                 mm = m * m;
    char sec[64];
    int n = 0;
    (void)D;
    switch (group) {
    case MB_GROUP_SEQUENTIAL:
        snprintf(sec, sizeof sec, "online sequential (per example)");
        mb_spec_set(&sp[n++], KS_GEMV_UH, sec, "gemv U h", "d x d", 2 * dd,
                    (dd + 2 * d) * s, 0);
        mb_spec_set(&sp[n++], KS_SYMV_MU, sec, "symv M u", "d x d (upper)",
                    2 * dd, (tri + 2 * d) * s, 0);
        mb_spec_set(&sp[n++], KS_GEMV_UTZ, sec, "gemv U^T z", "d x d", 2 * dd,
                    (dd + 2 * d) * s, 0);
        mb_spec_set(&sp[n++], KS_GEMV_UINVTH, sec, "gemv Uinv^T h", "d x d",
                    2 * dd, (dd + 2 * d) * s, 0);
        mb_spec_set(&sp[n++], KS_GER_U, sec, "ger U -= c u h^T", "d x d",
                    2 * dd, (2 * dd + 2 * d) * s, 0);
        mb_spec_set(&sp[n++], KS_GER_UINV, sec, "ger Uinv += h t^T", "d x d",
                    2 * dd, (2 * dd + 2 * d) * s, 0);
        mb_spec_set(&sp[n++], KS_SYR2_M, sec, "syr2 M -= lr (w y^T + y w^T)",
                    "d x d (upper)", 4 * tri, (2 * tri + 2 * d) * s, 0);
        break;
    case MB_GROUP_BLOCKED:
        snprintf(sec, sizeof sec, "online blocked k=%d (per block)", k_);
        mb_spec_set(&sp[n++], KB_GEMM_HUT, sec, "gemm H U^T", "k x d x d",
                    2 * k * dd, (dd + 2 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_SYMM, sec, "symm (H U^T) M",
                    "k x d, d x d (upper)", 2 * k * dd, (tri + 2 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_GEMM_HUINV, sec, "gemm H Uinv", "k x d x d",
                    2 * k * dd, (dd + 2 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_GEMM_HHT, sec, "gemm H H^T", "k x k x d",
                    2 * k * kd, (kd + k * k) * s, 0);
        mb_spec_set(&sp[n++], KB_CORR, sec,
                    "in-block corrections (7 gemv i x d, i < k)", "i x d",
                    7 * k * (k - 1) * d,
                    (7 * floor(k * (k - 1) / 2) * d + 7 * (k - 1) * 2 * d) * s,
                    0);
        mb_spec_set(&sp[n++], KB_GEMM_ZU, sec, "gemm Z U (flush)",
                    "k x d x d", 2 * k * dd, (dd + 2 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_GEMM_ZBUT, sec, "gemm Z Bu^T (flush)",
                    "k x k x d", 2 * k * kd, (2 * kd + k * k) * s, 0);
        mb_spec_set(&sp[n++], KB_GEMM_GH, sec, "gemm G H (flush)",
                    "k x d x k", 2 * k * kd, (k * k + 3 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_SYR2K, sec, "syr2k M rank-2k update",
                    "d x d (upper), k", 2 * k * d * (d + 1),
                    (2 * tri + 2 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_GEMM_UUPD, sec, "gemm U rank-k update",
                    "d x d x k", 2 * k * dd, (2 * dd + 2 * kd) * s, 0);
        mb_spec_set(&sp[n++], KB_GEMM_UINVUPD, sec, "gemm Uinv rank-k update",
                    "d x d x k", 2 * k * dd, (2 * dd + 2 * kd) * s, 0);
        break;
    case MB_GROUP_SPARSE:
        snprintf(sec, sizeof sec, "sparse V rows (per example)");
        mb_spec_set(&sp[n++], KP_GATHER_DOTS, sec, "gather_dots (a = V[j] . u)",
                    "K rows of D x d", 2 * K * d, (K * d + d) * s + 8 * K, 0);
        mb_spec_set(&sp[n++], KP_GATHER_COMBINE, sec,
                    "gather_combine (V^T ydot)", "K rows of D x d", 2 * K * d,
                    (K * d + d) * s + 8 * K, 0);
        mb_spec_set(&sp[n++], KP_SCATTER_AXPY, sec,
                    "scatter_axpy (V[j] += c w)", "K rows of D x d", 2 * K * d,
                    (2 * K * d + d) * s + 8 * K, 0);
        mb_spec_set(&sp[n++], KP_EXAMPLE, sec,
                    "all three on the same rows (one example)",
                    "K rows of D x d", 6 * K * d,
                    (4 * K * d + 3 * d) * s + 24 * K, 0);
        break;
    case MB_GROUP_BATCH:
        snprintf(sec, sizeof sec, "minibatch m=%d (per step)", m_);
        mb_spec_set(&sp[n++], KB_M_GEMM_HUT, sec, "gemm H U^T (forward)",
                    "m x d x d", 2 * m * dd, (dd + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_SYMM, sec, "symm (H U^T) M (forward)",
                    "m x d, d x d (upper)", 2 * m * dd, (tri + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_GEMM_ZU, sec, "gemm Z U (gradient)",
                    "m x d x d", 2 * m * dd, (dd + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_GEMM_HHT, sec, "gemm H H^T", "m x m x d",
                    2 * mm * d, (md + mm) * s, 0);
        mb_spec_set(&sp[n++], KB_GETRF, sec, "getrf (I - 2 lr diag(gq) H H^T)",
                    "m x m", floor(2 * m * m * m / 3), 2 * mm * s, 1);
        mb_spec_set(&sp[n++], KB_M_GEMM_HUINV, sec, "gemm H Uinv", "m x d x d",
                    2 * m * dd, (dd + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_GETRS, sec, "getrs (d right-hand sides)",
                    "m x m, d rhs", 2 * mm * d, (mm + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_GEMM_HHTZ, sec, "gemm (H H^T) Z",
                    "m x d x m", 2 * mm * d, (mm + 3 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_CSR_GRAM, sec,
                    "csr_gram_add: Ydot Ydot^T from the targets",
                    "m x m, K per row", 0,
                    mm * s + floor(m * (m + 1) / 2) * 2 * K * (8 + s), 0);
        {
            char name[80];
            snprintf(name, sizeof name, "axpy (Ydot Ydot^T) P: sparse path, "
                     "%d non-zeros", nnz_yy);
            mb_spec_set(&sp[n++], KB_M_AXPY_YYP, sec, name, "nnz x d",
                        2.0 * nnz_yy * d, 3.0 * nnz_yy * d * s + mm * s, 0);
        }
        mb_spec_set(&sp[n++], KB_M_GEMM_YYP, sec,
                    "gemm (Ydot Ydot^T) P: dense path (>= 1/8 non-zero)",
                    "m x d x m", 2 * mm * d, (mm + 3 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_GEMM_UUPD, sec, "gemm U rank-m update",
                    "d x d x m", 2 * m * dd, (2 * dd + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_GEMM_UINVUPD, sec,
                    "gemm Uinv rank-m update (Woodbury)", "d x d x m",
                    2 * m * dd, (2 * dd + 2 * md) * s, 0);
        mb_spec_set(&sp[n++], KB_M_SYR2K, sec, "syr2k M rank-2m update",
                    "d x d (upper), m", 2 * m * d * (d + 1),
                    (2 * tri + 2 * md) * s, 0);
        break;
    case MB_GROUP_MONITOR:
        snprintf(sec, sizeof sec, "stability monitor (per check)");
        mb_spec_set(&sp[n++], KM_POWER, sec,
                    "power iterations: U^T(U x), Uinv^T(Uinv x) (4 gemv)",
                    "d x d", 8 * dd + 6 * d, 4 * (dd + 2 * d) * s, 0);
        break;
    }
    return n;
}

/* The whole blocked online step, per call of m examples (the models of
 * step_models in fastsparse/_bench.pyx). */
static void mb_step_spec(mb_spec *sp, ptrdiff_t D, int d_, int K_, int m_,
                         int k_, int s_)
{
    const double d = d_, K = K_, m = m_, k = k_, s = s_;
    const double dd = d * d, tri = d * (d + 1) / 2, kd = k * d;
    const double nblocks = ceil(m / k);
    const double sparse_f = 6 * K * d, sparse_b = (4 * K * d + 3 * d) * s
                                                  + 24 * K;
    char name[80];
    (void)D;
    snprintf(name, sizeof name, "online blocked k=%d (fs_online_blocked_%c)",
             k_, s_ == 4 ? 's' : 'd');
    mb_spec_set(sp, KW_BLOCKED, "whole steps (per call of m examples)", name,
                "", nblocks * (12 * k * dd + 2 * k * d * (d + 1) + 6 * k * kd
                               + 7 * k * (k - 1) * d) + m * sparse_f,
                nblocks * ((7 * dd + 3 * tri + 14 * kd + 3 * k * k
                            + 7 * floor(k * (k - 1) / 2) * d) * s)
                + m * sparse_b, 0);
    snprintf(sp->shape, sizeof sp->shape, "m=%d examples", m_);
    sp->passes = 7.0 / k;
}

static int mb_cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void mb_fill_row(mb_row *row, const mb_spec *sp, double *t, int n,
                        long inner)
{
    qsort(t, (size_t)n, sizeof(double), mb_cmp);
    row->spec = *sp;
    row->inner = inner;
    row->calls = inner * n;
    row->min_s = t[0];
    row->median_s = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void mb_format_time(char *buf, size_t n, double sec)
{
    static const char *units[] = {"s", "ms", "us"};
    static const double scales[] = {1.0, 1e-3, 1e-6};
    for (int i = 0; i < 3; ++i)
        if (sec >= scales[i]) {
            snprintf(buf, n, "%.4g %s", sec / scales[i], units[i]);
            return;
        }
    snprintf(buf, n, "%.4g ns", sec * 1e9);
}

static void mb_print_row(const mb_config *cfg, const mb_row *r)
{
    static char last_section[64] = "";
    const double gf = r->spec.flops / r->median_s / 1e9;
    const double gb = r->spec.bytes / r->median_s / 1e9;
    (void)cfg;
    if (mb_tsv) {
        printf("row\t%s\t%s\t%s\t%d\t%ld\t%ld\t%.6e\t%.6e\t%.6e\t%.6e\t%.6g\n",
               r->spec.section, r->spec.name, r->spec.shape, r->block,
               r->inner, r->calls, r->min_s, r->median_s, r->spec.flops,
               r->spec.bytes, r->spec.passes);
        fflush(stdout);
        return;
    }
    if (strcmp(last_section, r->spec.section) != 0) {
        snprintf(last_section, sizeof last_section, "%s", r->spec.section);
        printf("\n%s\n%-52s %-22s %9s %11s %11s %8s %8s %9s\n",
               r->spec.section, "kernel", "shape", "calls", "min/call",
               "median/call", "GFLOP/s", "GB/s", "passes/ex");
    }
    char tmin[32], tmed[32], passes[32] = "";
    mb_format_time(tmin, sizeof tmin, r->min_s);
    mb_format_time(tmed, sizeof tmed, r->median_s);
    if (r->spec.passes >= 0)
        snprintf(passes, sizeof passes, "%.4g", r->spec.passes);
    char gfs[32] = "-";
    if (r->spec.flops > 0)
        snprintf(gfs, sizeof gfs, "%.3g", gf);
    printf("%-52s %-22s %9ld %11s %11s %8s %8.3g %9s\n", r->spec.name,
           r->spec.shape, r->calls, tmin, tmed, gfs, gb, passes);
    fflush(stdout);
}

/* ------------------------------------------------------ the two types */
#define T float
#define S s
#define MB_IS_DOUBLE 0
#include "fs_microbench_impl.h"
#undef T
#undef S
#undef MB_IS_DOUBLE

#define T double
#define S d
#define MB_IS_DOUBLE 1
#include "fs_microbench_impl.h"
#undef T
#undef S
#undef MB_IS_DOUBLE

/* ------------------------------------------------------------- main */
static void mb_usage(FILE *f)
{
    fprintf(f,
"usage: fs_microbench [options] [D d K m block repeats dtype]\n"
"\n"
"Time each kernel of fastsparse's online and minibatch steps (each BLAS\n"
"call, the sparse V-row kernels, the Woodbury update, the stability\n"
"monitor's matvecs) and the whole blocked online step, in tight compiled\n"
"loops, against the BLAS this program is linked with.\n"
"\n"
"positional arguments (defaults in brackets):\n"
"  D        outputs (rows of V) [793471]\n"
"  d        hidden units [512]\n"
"  K        targets per example (rows of V touched) [1]\n"
"  m        examples per call (minibatch size, online step call) [128]\n"
"  block    block size k of the blocked online step; a comma-separated\n"
"           list times several [32,64]\n"
"  repeats  timed samples per kernel (min and median reported) [15]\n"
"  dtype    float32 | float64 [float32]\n"
"\n"
"options:\n"
"  --threads N        BLAS threads during the measurements [1]\n"
"  --setup-threads N  BLAS threads to build the state (M = V^T V) [all]\n"
"  --target-ms X      milliseconds per sample of a fast kernel, which is\n"
"                     called repeatedly within a sample [2]\n"
"  --lr X             learning rate of the whole steps (||h|| = 1) [1e-4]\n"
"  --tsv              machine-readable output (info/row lines, tab-separated)\n"
"  -v, --verbose      progress on stderr\n"
"  --check PATH       instead of timing: run --steps calls of the blocked\n"
"                     online step (float64, squared error, sums tracked) on\n"
"                     a small deterministic problem (D d K m block from the\n"
"                     positional arguments, defaults 60 8 3 10 4) and write\n"
"                     its inputs and results to PATH as raw numbers\n"
"  --steps N          calls for --check [3]\n"
"  -h, --help         this help\n"
"\n"
"Flops: an FMA counts 2; bytes: operands read once, outputs written once\n"
"(a symmetric matrix: its triangle); GFLOP/s and GB/s from the median.\n"
"passes/ex: BLAS calls per example that traverse a d x d matrix.\n");
}

static int mb_parse_blocks(const char *arg, mb_config *cfg)
{
    char buf[256], *tok, *save = NULL;
    snprintf(buf, sizeof buf, "%s", arg);
    cfg->n_blocks = 0;
    for (tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        if (cfg->n_blocks == MB_MAX_BLOCKS || atoi(tok) < 1)
            return -1;
        cfg->blocks[cfg->n_blocks++] = atoi(tok);
    }
    return cfg->n_blocks > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    mb_config cfg;
    const char *pos[7];
    int npos = 0;
    memset(&cfg, 0, sizeof cfg);
    cfg.D = 793471; cfg.d = 512; cfg.K = 1; cfg.m = 128;
    cfg.blocks[0] = 32; cfg.blocks[1] = 64; cfg.n_blocks = 2;
    cfg.repeats = 15; cfg.threads = 1;
    cfg.setup_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    cfg.target = 2e-3; cfg.lr = 1e-4;
    cfg.check_steps = 3; cfg.check_lr = 0.05; cfg.check_wd = 0.01;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const int more = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            mb_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--threads") && more) {
            cfg.threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--setup-threads") && more) {
            cfg.setup_threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--target-ms") && more) {
            cfg.target = 1e-3 * atof(argv[++i]);
        } else if (!strcmp(a, "--lr") && more) {
            cfg.lr = atof(argv[++i]);
        } else if (!strcmp(a, "--tsv")) {
            cfg.tsv = 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            cfg.verbose = 1;
        } else if (!strcmp(a, "--check") && more) {
            cfg.check_path = argv[++i];
        } else if (!strcmp(a, "--steps") && more) {
            cfg.check_steps = atoi(argv[++i]);
        } else if (a[0] == '-' && a[1] != '\0' && !(a[1] >= '0' && a[1] <= '9')) {
            fprintf(stderr, "fs_microbench: unknown option or missing value: "
                    "%s\n", a);
            mb_usage(stderr);
            return 2;
        } else if (npos < 7) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "fs_microbench: too many arguments\n");
            return 2;
        }
    }
    if (cfg.check_path) {
        cfg.D = 60; cfg.d = 8; cfg.K = 3; cfg.m = 10;
        cfg.blocks[0] = 4; cfg.n_blocks = 1;
    }
    if (npos > 0) cfg.D = atol(pos[0]);
    if (npos > 1) cfg.d = atoi(pos[1]);
    if (npos > 2) cfg.K = atoi(pos[2]);
    if (npos > 3) cfg.m = atoi(pos[3]);
    if (npos > 4 && mb_parse_blocks(pos[4], &cfg) != 0) {
        fprintf(stderr, "fs_microbench: bad block list: %s\n", pos[4]);
        return 2;
    }
    if (npos > 5) cfg.repeats = atoi(pos[5]);
    if (npos > 6) {
        if (!strcmp(pos[6], "float32")) cfg.dtype64 = 0;
        else if (!strcmp(pos[6], "float64")) cfg.dtype64 = 1;
        else {
            fprintf(stderr, "fs_microbench: dtype must be float32 or "
                    "float64, got %s\n", pos[6]);
            return 2;
        }
    }
    if (cfg.D < 1 || cfg.d < 1 || cfg.K < 1 || cfg.K > cfg.D || cfg.m < 1
        || cfg.repeats < 1 || cfg.threads < 1 || cfg.setup_threads < 1
        || cfg.check_steps < 1 || !(cfg.target >= 0) || !(cfg.lr >= 0)
        || (double)cfg.D * cfg.d > 2147483647.0 * 16) {
        fprintf(stderr, "fs_microbench: arguments out of range (D, d, K, m, "
                "repeats, threads >= 1, K <= D)\n");
        return 2;
    }
    if (cfg.D > 2147483647) {
        fprintf(stderr, "fs_microbench: D must fit a 32-bit BLAS int\n");
        return 2;
    }
    mb_verbose = cfg.verbose;
    mb_tsv = cfg.tsv;

    /* the C kernels of src_c/ call BLAS through this table */
    fs_blas_set((void *)MB_PASTE(FS_BLAS_PREFIX, s, gemm_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, d, gemm_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, s, gemv_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, d, gemv_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, s, symm_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, d, symm_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, s, syr2k_),
                (void *)MB_PASTE(FS_BLAS_PREFIX, d, syr2k_));
    mb_set_threads(cfg.threads);

    if (cfg.check_path)
        return check_d(&cfg, cfg.check_path);

    {
        char buf[512];
        snprintf(buf, sizeof buf, "D=%td d=%d K=%d m=%d dtype=%s repeats=%d "
                 "target=%.3g ms lr=%g", cfg.D, cfg.d, cfg.K, cfg.m,
                 cfg.dtype64 ? "float64" : "float32", cfg.repeats,
                 1e3 * cfg.target, cfg.lr);
        mb_info("config", buf);
        buf[0] = '\0';
        for (int i = 0; i < cfg.n_blocks; ++i)
            snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%d",
                     i ? "," : "", cfg.blocks[i]);
        mb_info("blocks", buf);
#ifndef MB_NO_OPENBLAS
        mb_info("blas", MB_PASTE(FS_BLAS_PREFIX, openblas_get_config, )());
        snprintf(buf, sizeof buf, "%d (state set-up: %d)",
                 MB_PASTE(FS_BLAS_PREFIX, openblas_get_num_threads, )(),
                 cfg.setup_threads);
        mb_info("blas threads", buf);
#else
        mb_info("blas", "not OpenBLAS (MB_NO_OPENBLAS): threads not set");
#endif
        mb_info("targets", "K uniformly random rows of V per example "
                "(squared error, target values 1)");
        mb_info("state", "V N(0,1/d)-like (uniform), U = I + 0.1 G/sqrt(d), "
                "Uinv = U^-1, M = V^T V");
        mb_info("flop model", "FMA = 2 flops; gemm/gemv 2 x product of dims; "
                "syr2/syr2k on the triangle; getrf 2m^3/3; getrs 2m^2 d");
        mb_info("byte model", "operands read once + outputs written once "
                "(s = 4 or 8 bytes/element; symmetric: triangle)");
        mb_info("passes", "BLAS calls per example traversing a d x d matrix "
                "(sequential 7, blocked 7/k)");
    }
    return cfg.dtype64 ? bench_d(&cfg) : bench_s(&cfg);
}
