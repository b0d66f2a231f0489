/* See fs_kernels.h.  The kernels are written once in fs_kernels_impl.h and
 * instantiated here for float (_s) and double (_d). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fs_kernels.h"
#include "fs_sparse.h"

fs_blas_table fs_blas;

int fs_blas_detect(void)
{
#if FS_HAVE_AVX2
    __builtin_cpu_init();
    fs_blas.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    fs_blas.avx512 = __builtin_cpu_supports("avx512f");
#else
    fs_blas.avx2 = 0;
    fs_blas.avx512 = 0;
#endif
    fs_blas.small_gemm = fs_blas.avx2;
    return fs_blas.avx2;
}

/* A workspace in one allocation, laid out by one list of FS_TAKE run
 * twice: with no block yet it only adds up the sizes, then fs_ws_alloc
 * allocates them and the same list hands out the pieces.  Every piece is
 * rounded up to 8 bytes, so that each stays aligned for double. */
typedef struct {
    char *base;     /* NULL while sizing */
    size_t used;    /* bytes taken so far */
} fs_ws;

static void *fs_ws_take(fs_ws *w, size_t bytes)
{
    void *p = w->base != NULL ? w->base + w->used : NULL;
    w->used += (bytes + 7) & ~(size_t)7;
    return p;
}

/* allocate what the sizing pass added up; 0, or -1 (out of memory) */
static int fs_ws_alloc(fs_ws *w)
{
    w->base = malloc(w->used > 0 ? w->used : 1);
    w->used = 0;
    return w->base != NULL ? 0 : -1;
}

#define FS_TAKE(w, n, type) ((type *)fs_ws_take((w), (size_t)(n) * sizeof(type)))

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
