/* See fs_kernels.h.  The kernels are written once in fs_kernels_impl.h and
 * instantiated here for float (_s) and double (_d). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fs_kernels.h"
#include "fs_sparse.h"

fs_blas_table fs_blas;

#define T float
#define S s
#include "fs_kernels_impl.h"
#undef T
#undef S

#define T double
#define S d
#include "fs_kernels_impl.h"
#undef T
#undef S
