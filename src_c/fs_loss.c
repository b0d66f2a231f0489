/* See fs_loss.h. */
#include <math.h>
#include "fs_loss.h"

#define FS_DEFINE_LOSS(T, S)                                                  \
int fs_eval_loss_##S(const fs_loss_spec *spec, ptrdiff_t K, const T *a,       \
                     const T *y, double q, double s, double *L, T *ga,        \
                     double *gq, double *gs)                                  \
{                                                                             \
    const double D = spec->n_outputs;                                         \
    double Y = 0.0;                                                           \
    ptrdiff_t k;                                                              \
    for (k = 0; k < K; ++k)                                                   \
        Y += y[k];                                                            \
    switch (spec->kind) {                                                     \
    case FS_LOSS_SQUARED: {   /* L = ||o - y||^2 = q - 2 y.a + ||y||^2 */     \
        double ya = 0.0, yy = 0.0;                                            \
        for (k = 0; k < K; ++k) {                                             \
            ya += (double)y[k] * a[k];                                        \
            yy += (double)y[k] * y[k];                                        \
            ga[k] = -2 * y[k];                                                \
        }                                                                     \
        *L = q - 2.0 * ya + yy;                                               \
        *gq = 1.0;                                                            \
        *gs = 0.0;                                                            \
        break;                                                                \
    }                                                                         \
    case FS_LOSS_SPHERICAL: { /* -sum y log(a^2 + eps) + Y log(q + D eps) */  \
        const double Z = q + D * spec->eps;                                   \
        *L = Y * log(Z);                                                      \
        for (k = 0; k < K; ++k) {                                             \
            const double f = (double)a[k] * a[k] + spec->eps;                 \
            *L -= y[k] * log(f);                                              \
            ga[k] = (T)(-2.0 * y[k] * a[k] / f);                              \
        }                                                                     \
        *gq = Y / Z;                                                          \
        *gs = 0.0;                                                            \
        break;                                                                \
    }                                                                         \
    case FS_LOSS_TAYLOR: {    /* -sum y log f(a) + Y log(D + s + q/2) */      \
        const double Z = D + s + 0.5 * q;                                     \
        *L = Y * log(Z);                                                      \
        for (k = 0; k < K; ++k) {                                             \
            const double f = 1.0 + a[k] + 0.5 * (double)a[k] * a[k];          \
            *L -= y[k] * log(f);                                              \
            ga[k] = (T)(-y[k] * (1.0 + a[k]) / f);                            \
        }                                                                     \
        *gq = Y / (2.0 * Z);                                                  \
        *gs = Y / Z;                                                          \
        break;                                                                \
    }                                                                         \
    case FS_LOSS_ZLOSS: {     /* z = (a - s/D)/sigma, y softplus(al(be-z))/al */\
        double mu, var, sigma, z, x, dz;                                      \
        if (K != 1)                                                           \
            return FS_LOSS;                                                   \
        mu = s / D;                                                           \
        var = q / D - mu * mu;                                                \
        if (!(var > 0))                                                       \
            return FS_LOSS;                                                   \
        sigma = sqrt(var);                                                    \
        z = (a[0] - mu) / sigma;                                              \
        x = spec->alpha * (spec->beta - z);                                   \
        if (x > 0) {  /* softplus(x) and sigmoid(x), without overflow */      \
            *L = y[0] * (x + log1p(exp(-x))) / spec->alpha;                   \
            dz = -y[0] / (1.0 + exp(-x));                                     \
        } else {                                                              \
            *L = y[0] * log1p(exp(x)) / spec->alpha;                          \
            dz = -y[0] * exp(x) / (1.0 + exp(x));                             \
        }                                                                     \
        ga[0] = (T)(dz / sigma);                                              \
        *gq = -dz * z / (2.0 * D * var);                                      \
        *gs = dz * (z * mu / sigma - 1.0) / (D * sigma);                      \
        break;                                                                \
    }                                                                         \
    default:                                                                  \
        return FS_LOSS;                                                       \
    }                                                                         \
    if (!(isfinite(*L) && isfinite(*gq) && isfinite(*gs)))                    \
        return FS_LOSS;                                                       \
    for (k = 0; k < K; ++k)                                                   \
        if (!isfinite(ga[k]))                                                 \
            return FS_LOSS;                                                   \
    return FS_OK;                                                             \
}

FS_DEFINE_LOSS(float, s)
FS_DEFINE_LOSS(double, d)
