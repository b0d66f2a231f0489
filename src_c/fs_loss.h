/* Losses of the spherical family, evaluated inside the kernels of
 * fs_kernels.c: each is a function of the outputs at the
 * targets a (K values), q = ||o||^2 and s = sum(o) (docs/algorithm.md §7).
 * Also the status codes every kernel returns (exported to Python as the
 * enum fastsparse._core.fs_status). */
#ifndef FS_LOSS_H
#define FS_LOSS_H

#include <stddef.h>

enum fs_status {         /* fastsparse._core.Status has the same values */
    FS_OK = 0,
    FS_LOSS = 1,        /* a loss value or gradient is not finite */
    FS_NONFINITE = 2,   /* a product of the state with h is not finite */
    FS_OVERFLOW = 3,    /* the update would push the state out of range */
    FS_SINGULAR = 4,    /* the (well-conditioned) Woodbury system failed */
    FS_NOMEM = 5,
    FS_CHECK = 6        /* stopped early: a health check is due (online) */
};

enum fs_loss_kind {     /* exported as fastsparse._core.fs_loss_kind */
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
