/* See fs_online.h.  The kernel is written once in fs_online_impl.h and
 * instantiated for float (_s) and double (_d). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fs_online.h"
#include "fs_sparse.h"

fs_blas_table fs_blas;

void fs_blas_set(void *sgemm, void *dgemm, void *sgemv, void *dgemv,
                 void *ssymm, void *dsymm, void *ssyr2k, void *dsyr2k)
{
    fs_blas.sgemm = (fs_sgemm_t *)sgemm;
    fs_blas.dgemm = (fs_dgemm_t *)dgemm;
    fs_blas.sgemv = (fs_sgemv_t *)sgemv;
    fs_blas.dgemv = (fs_dgemv_t *)dgemv;
    fs_blas.ssymm = (fs_ssymm_t *)ssymm;
    fs_blas.dsymm = (fs_dsymm_t *)dsymm;
    fs_blas.ssyr2k = (fs_ssyr2k_t *)ssyr2k;
    fs_blas.dsyr2k = (fs_dsyr2k_t *)dsyr2k;
}

#define T float
#define S s
#include "fs_online_impl.h"
#undef T
#undef S

#define T double
#define S d
#include "fs_online_impl.h"
#undef T
#undef S
