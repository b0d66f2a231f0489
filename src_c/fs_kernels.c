/* See fs_kernels.h.  The kernels are written once in fs_kernels_impl.h and
 * instantiated here for float (_s) and double (_d). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fs_kernels.h"
#include "fs_sparse.h"

fs_blas_table fs_blas;

/* Workspaces carved from one allocation: FS_WS(n, type) is the room n
 * elements take (rounded up to 8 bytes, so that every piece stays aligned
 * for double), FS_CARVE takes them from *cur and advances it. */
#define FS_WS(n, type) ((((size_t)(n) * sizeof(type)) + 7) & ~(size_t)7)
#define FS_CARVE(cur, n, type) ((type *)fs_carve((cur), FS_WS(n, type)))
static void *fs_carve(char **cur, size_t bytes)
{
    void *p = *cur;
    *cur += bytes;
    return p;
}

#define T float
#define S s
#define TU uint32_t
#define TU_ABS 0x7fffffffu
#define TU_INF 0x7f800000u
#include "fs_kernels_impl.h"
#undef T
#undef S
#undef TU
#undef TU_ABS
#undef TU_INF

#define T double
#define S d
#define TU uint64_t
#define TU_ABS 0x7fffffffffffffffull
#define TU_INF 0x7ff0000000000000ull
#include "fs_kernels_impl.h"
#undef T
#undef S
#undef TU
#undef TU_ABS
#undef TU_INF
