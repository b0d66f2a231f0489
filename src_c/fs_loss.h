/* Losses of the spherical family, shared by the Cython kernels and the C
 * online kernel (fs_online.c): each is a function of the outputs at the
 * targets a (K values), q = ||o||^2 and s = sum(o) (ALGORITHM.md, "Losses to
 * provide").  Also the status codes every kernel returns (the Cython enum
 * fastsparse._core.Status has the same values). */
#ifndef FS_LOSS_H
#define FS_LOSS_H

#include <stddef.h>

enum fs_status {
    FS_OK = 0,
    FS_SMALL_R = 1,     /* |r| < r_tol: U would become (nearly) singular */
    FS_SINGULAR = 2,    /* the minibatch Woodbury system is singular */
    FS_LOSS = 3,        /* a loss value or gradient is not finite */
    FS_NOMEM = 4,
    FS_NONFINITE = 5    /* a product of the state with h is not finite */
};

enum fs_loss_kind {     /* ids shared with fastsparse/losses.py */
    FS_LOSS_SQUARED = 0,
    FS_LOSS_SPHERICAL = 1,
    FS_LOSS_TAYLOR = 2,
    FS_LOSS_ZLOSS = 3
};

typedef struct {
    int kind;
    double n_outputs;   /* D */
    double eps;         /* spherical_softmax */
    double alpha, beta; /* z_loss */
} fs_loss_spec;

/* (L, dL/da, dL/dq, dL/ds) of one example with K targets (values y);
 * returns FS_OK, or FS_LOSS when the result is not finite (or the loss is
 * undefined there). */
int fs_eval_loss_s(const fs_loss_spec *spec, ptrdiff_t K, const float *a,
                   const float *y, double q, double s, double *L, float *ga,
                   double *gq, double *gs);
int fs_eval_loss_d(const fs_loss_spec *spec, ptrdiff_t K, const double *a,
                   const double *y, double q, double s, double *L, double *ga,
                   double *gq, double *gs);

#endif
