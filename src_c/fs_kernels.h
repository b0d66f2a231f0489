/* The compiled kernels of a factored output layer: one step in online mode,
 * one minibatch step, the forward statistics, and the low-rank pass over
 * the rows of V that near-singular updates and renormalisations make.
 * The equations, and why each piece is there, are in docs/algorithm.md;
 * the section numbers below refer to it.
 *
 * State (row-major): W = V U + 1_D omega^T, Uinv = U^{-1}, M = V^T V (only
 * its upper triangle is read and kept up to date) and, when s = sum(o) is
 * tracked, omega and sv = V^T 1_D (NULL otherwise).  Targets in CSR form:
 * indptr (m + 1), indices (sorted and distinct within a row), values.
 * The kernels trust their inputs (the Python layer validates them once)
 * and take no lock: they run without the GIL.
 *
 * Written once in fs_kernels_impl.h and instantiated for float (_s) and
 * double (_d) in fs_kernels.c.  BLAS and LAPACK through fs_blas.h. */
#ifndef FS_KERNELS_H
#define FS_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "fs_blas.h"
#include "fs_loss.h"

#define FS_ONLINE_DEFAULT_BLOCK 64

/* What a step needs besides its data, and what it reports (§5, §6). */
typedef struct {
    /* in */
    double lr, wd;          /* learning rate, L2 weight decay */
    double split;           /* an update that scales U by a factor r with
                               |r| < split along some direction applies that
                               factor to V directly instead (§4) */
    double cond_limit;      /* online: stop with FS_CHECK once the bound on
                               cond(U) exceeds it (0: never) */
    double scale_limit;     /* online: ... or once the bound on sigma_max(U)
                               or on ||Uinv|| exceeds it (0: never) */
    double norm_limit;      /* refuse with FS_OVERFLOW an update after which
                               a bound on the state's entries exceeds it */
    /* in/out: upper bounds that every update keeps valid (§5) */
    double smax2;           /* >= sigma_max(U)^2 */
    double sinv2;           /* >= ||Uinv||_2^2 = sigma_min(U)^-2 */
    double mnorm;           /* >= ||M||_2 */
    /* out */
    ptrdiff_t done;         /* examples applied (online) */
    ptrdiff_t bad;          /* the refused example, -1 if none */
    ptrdiff_t n_split;      /* passes over V made for near-singular updates */
    double min_factor;      /* smallest |r| met (online) or |eigenvalue| of
                               the minibatch update, before any split */
} fs_control;

#define FS_DECLARE_KERNELS(T, S)                                              \
/* Online mode: examples one after the other, each seeing the state left by  \
 * the previous ones, computed in blocks of at most `block` examples (§3).   \
 * Stops at the first refused example (its index in ctl->bad; the examples   \
 * before it applied) or, with FS_CHECK, after ctl->done examples when the   \
 * cond bound exceeds ctl->cond_limit. */                                     \
int fs_online_##S(ptrdiff_t D, int d, T *V, T *U, T *Uinv, T *M, T *omega,    \
                  T *sv, ptrdiff_t m, const T *H, const int64_t *indptr,      \
                  const int64_t *indices, const T *values,                    \
                  const fs_loss_spec *spec, ptrdiff_t block, fs_control *ctl, \
                  T *loss_out, T *grad_out);                                  \
/* Minibatch mode: one update with the summed gradient (§2).  With          \
 * ga_in == NULL the built-in loss of spec gives (dL/da, dL/dq, dL/ds) and   \
 * the losses go to loss_out; otherwise they are given (gq_in, gs_in double, \
 * per example) and loss_out is not used.  Every check comes before the     \
 * first write: unless it returns FS_OK, nothing changed. */                  \
int fs_batch_##S(ptrdiff_t D, int d, T *V, T *U, T *Uinv, T *M, T *omega,     \
                 T *sv, int m, const T *H, const int64_t *indptr,             \
                 const int64_t *indices, const T *values,                     \
                 const fs_loss_spec *spec, const T *ga_in,                    \
                 const double *gq_in, const double *gs_in, fs_control *ctl,   \
                 T *loss_out, T *grad_out);                                   \
/* a (outputs at the targets, CSR order), q = ||o||^2 and s = sum(o). */      \
int fs_forward_##S(ptrdiff_t D, int d, const T *V, const T *U, const T *M,    \
                   const T *omega, const T *sv, int m, const T *H,            \
                   const int64_t *indptr, const int64_t *indices, T *a_out,   \
                   double *q_out, double *s_out);                             \
/* V <- V (I + P^T diag(gamma) Q) for the n_rows rows of V (d columns): P    \
 * and Q are k x d row-major.  One pass over V, in chunks of rows (§4, §5). */\
int fs_lowrank_rows_##S(T *V, ptrdiff_t n_rows, int d, int k, const T *P,     \
                        const T *Q, const T *gamma);                          \
/* Whether x holds no NaN or Inf (the kernels' own check). */                \
int fs_all_finite_##S(ptrdiff_t n, const T *x);                               \
/* A health check's estimates (§5): sigma_max(U) by power iteration from x,  \
 * U's weak directions by subspace iteration on Uinv^T Uinv from the kw      \
 * columns of X (d x kw), their Ritz values theta (1 / sigma^2, descending)  \
 * and the inverse's error on them; est = {sigma_max, error}.  In double.    \
 * x and X are updated in place (warm starts).  0, or -1 (memory, LAPACK). */\
int fs_estimate_##S(int d, const T *U, const T *Uinv, int iterations, int kw, \
                    double *x, double *X, double *theta, double *est);        \
/* ||M||_F of a symmetric M from its upper triangle. */                      \
double fs_sym_fnorm_##S(int d, const T *M);

/* Whether this CPU runs the AVX2 + FMA loops of fs_blas.h: sets and
 * returns fs_blas.avx2 (the host calls it once, with the table). */
int fs_blas_detect(void);

FS_DECLARE_KERNELS(float, s)
FS_DECLARE_KERNELS(double, d)
#undef FS_DECLARE_KERNELS

#endif
