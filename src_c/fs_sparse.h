/* Small non-BLAS kernels of fastsparse: sparse gathers/scatters of the rows
 * of V, sparse dot products, and the fused low-rank pass over V used by the
 * renormalisation.  Row-major V (n_rows x d, leading dimension
 * ldv); row indices are int64 and are trusted (validated in Python).
 * Each kernel exists for float (_s) and double (_d). No validation here. */
#ifndef FS_SPARSE_H
#define FS_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#define FS_MAX_RANK 64
/* bytes of rows prefetched at most by fs_prefetch_rows (they stay in the
 * L2 cache next to the d x d state) */
#define FS_PREFETCH_BYTES 131072

/* A minibatch's targets grouped by column (row of V), as fs_csr_gram_add
 * leaves them in its workspace (FS_GRAM_WORK(nnz) int64): a hash table of
 * t slots, a power of two >= 2 nnz (key: the column, -1 for a free slot;
 * head, tail: its first and last entry) and, per entry e (its position
 * from indptr[0]), the next entry of its column in ascending order (-1 at
 * the end) and its row. */
typedef struct {
    ptrdiff_t t;
    int64_t *key, *head, *tail, *next, *row;
} fs_groups;

static inline ptrdiff_t fs_gram_table(ptrdiff_t nnz)
{
    ptrdiff_t t = 16;
    while (t < 2 * nnz)
        t *= 2;
    return t;
}
#define FS_GRAM_WORK(nnz) (3 * fs_gram_table(nnz) + 2 * (ptrdiff_t)(nnz))

static inline fs_groups fs_groups_in(int64_t *work, ptrdiff_t nnz)
{
    fs_groups g;
    g.t = fs_gram_table(nnz);
    g.key = work;
    g.head = g.key + g.t;
    g.tail = g.head + g.t;
    g.next = g.tail + g.t;
    g.row = g.next + nnz;
    return g;
}

/* The body of x . y over n entries, in double, in four partial sums (no
 * serial chain of n additions; their order is fixed, so results are
 * deterministic): the kernels' dot products (fs_kernels_impl.h) and the
 * gathers below, one order of summation for both. */
#define FS_DOT_BODY                                                           \
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;                            \
    ptrdiff_t c = 0;                                                          \
    for (; c + 4 <= n; c += 4) {                                              \
        a0 += (double)x[c] * y[c];                                            \
        a1 += (double)x[c + 1] * y[c + 1];                                    \
        a2 += (double)x[c + 2] * y[c + 2];                                    \
        a3 += (double)x[c + 3] * y[c + 3];                                    \
    }                                                                         \
    for (; c < n; ++c)                                                        \
        a0 += (double)x[c] * y[c];                                            \
    return (a0 + a1) + (a2 + a3);

#define FS_DECLARE(T, S)                                                      \
/* A hint to bring the rows V[idx[k]], k < n, into the cache (no effect on   \
 * results): issued before other work, their memory latency overlaps it.    \
 * Only the first FS_PREFETCH_BYTES of them. */                              \
void fs_prefetch_rows_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,      \
                          ptrdiff_t n, ptrdiff_t d);                          \
/* Loads one entry of each cache line of the rows V[idx[k]], k < n (no    \
 * effect on results): a burst of hundreds of prefetch hints is mostly       \
 * dropped by the CPU (measured on AMD Zen 3: a gather of 160 rows of 512    \
 * bytes took as long after them as without them), whereas loads wait for   \
 * a miss buffer and overlap each other.  Only the first FS_PREFETCH_BYTES. */ \
void fs_touch_rows_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,         \
                       ptrdiff_t n, ptrdiff_t d);                             \
/* out[k] = V[idx[k]] . u  for k < n */                                       \
void fs_gather_dots_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,        \
                        ptrdiff_t n, const T *u, ptrdiff_t d, T *out);        \
/* out = sum_k coef[k] V[idx[k]]   (out has length d, overwritten) */         \
void fs_gather_combine_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,     \
                           const T *coef, ptrdiff_t n, ptrdiff_t d, T *out);  \
/* V[idx[k]] += coef[k] * w  for k < n   (w read with stride incw) */         \
void fs_scatter_axpy_##S(T *V, ptrdiff_t ldv, const int64_t *idx,             \
                         const T *coef, ptrdiff_t n, ptrdiff_t d,             \
                         const T *w, ptrdiff_t incw);                         \
/* G[i, i'] += sum over shared columns of X[i, j] X[i', j] for a CSR matrix   \
 * X (m rows, column indices sorted within each row, no duplicates), in       \
 * O(nnz + the pairs of entries that share a column) through a hash table     \
 * of the column indices: the products of two rows are added in ascending     \
 * column order.  G is m x m row-major; work holds FS_GRAM_WORK(nnz) int64    \
 * and is left holding the entries grouped by column (fs_groups_in). */      \
void fs_csr_gram_add_##S(ptrdiff_t m, const int64_t *indptr,                  \
                         const int64_t *indices, const T *values, T *G,       \
                         int64_t *work);                                      \
/* V[j] -= sum_i beta[i] (V[j] . L[i]) L[i] for every row j < n_rows, in one \
 * pass over V (V <- V (I - L^T diag(beta) L)); L is k x d row-major,       \
 * k <= FS_MAX_RANK. */                                                       \
void fs_rankk_rows_##S(T *V, ptrdiff_t ldv, ptrdiff_t n_rows, ptrdiff_t d,   \
                       const T *L, const T *beta, ptrdiff_t k);

FS_DECLARE(float, s)
FS_DECLARE(double, d)

#undef FS_DECLARE

#endif
