/* The blocked online kernel: the exact online update (one rank-one update
 * per example, in order; ALGORITHM.md "Online update", with M = V^T V in
 * place of Q as in fastsparse/_core.pyx) computed with delayed updates.
 *
 * A call receives its m examples in advance, so the d x d state (U, Uinv,
 * M) does not have to be rewritten after every example.  For a block of k
 * examples with state U0, Uinv0, M0 at its start, example i of the block
 * sees
 *
 *   U_i    = s_i (U0 - sum_{j<i} alpha_j u_j h_j^T),   u_j = U_j h_j
 *   Uinv_i = (1/s_i) (Uinv0 + sum_{j<i} s_j c_j h_j w_j^T)
 *   M_i    = M0 - lr sum_{j<i} (w_j y_j^T + y_j w_j^T)
 *
 * (s_i = rho^i from weight decay, alpha_j = c_j / s_j, c_j = 2 lr dL/dq_j,
 * w_j = Uinv_{j+1}^T h_j the direction of the V-row update).  The products
 * the example needs (U_i h_i, M_i U_i h_i, Uinv_i^T h_i, and U_i^T z_i for
 * dL/dh_i) are the products with the block-start state, computed for the
 * whole block by BLAS-3 calls (H U0^T, (H U0^T) M0, H Uinv0, Z U0), plus
 * O(k d) corrections per example.  At the end of the block the state gets
 * the k updates at once (two rank-k GEMMs and one rank-2k SYR2K).  The
 * arithmetic per example is the same ~7 d^2 multiply-adds as the sequential
 * BLAS-2 path, but each d x d matrix is read or written ~6 times per block
 * instead of ~7 times per example: the step runs at GEMM speed instead of
 * memory bandwidth.  The sparse parts (gathers/scatters of V rows, omega,
 * wbar) are applied example by example, as in the sequential path.
 *
 * Arguments and results are those of the sequential kernel (_core.pyx,
 * online_kernel): row-major state, omega and sv NULL when sums are not
 * tracked, CSR targets, status codes of fs_loss.h; on FS_SMALL_R,
 * FS_LOSS or FS_NONFINITE at example *bad the examples before it are
 * applied (their losses and gradients written) and nothing of *bad.
 * block >= 1 is the largest number of examples per block (the m examples
 * are split into ceil(m / block) blocks of nearly equal size). */
#ifndef FS_ONLINE_H
#define FS_ONLINE_H

#include <stddef.h>
#include <stdint.h>
#include "fs_blas.h"
#include "fs_loss.h"

#define FS_ONLINE_DEFAULT_BLOCK 64

/* Calls of fewer examples are better served by the sequential BLAS-2
 * kernel: each BLAS-3 call of the blocked kernel packs its d x d operand,
 * which costs more than the BLAS-2 pass it replaces when the block has
 * only a few rows (measured crossover: 4 to 8 examples at d = 128 and
 * d = 512).  fastsparse._core.online_step dispatches accordingly. */
#define FS_ONLINE_MIN_EXAMPLES 8

#define FS_DECLARE_ONLINE(T, S)                                               \
int fs_online_blocked_##S(ptrdiff_t D, int d, T *V, T *U, T *Uinv, T *M,      \
                          T *omega, T *sv, int m, const T *H,                 \
                          const int64_t *indptr, const int64_t *indices,      \
                          const T *values, double lr, double wd,              \
                          const fs_loss_spec *spec, double r_tol, int block,  \
                          T *loss_out, T *grad_out, ptrdiff_t *bad,           \
                          double *bad_r);

FS_DECLARE_ONLINE(float, s)
FS_DECLARE_ONLINE(double, d)
#undef FS_DECLARE_ONLINE

#endif
