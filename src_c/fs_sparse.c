/* See fs_sparse.h. */
#include "fs_sparse.h"

/* a hint to load a row of V (d entries of `x`) into the cache */
#if defined(__GNUC__)
#define FS_PREFETCH_ROW(x, d)                                                 \
    do {                                                                      \
        const char *p_ = (const char *)(x);                                   \
        const ptrdiff_t n_ = (ptrdiff_t)(d) * (ptrdiff_t)sizeof(*(x));        \
        for (ptrdiff_t o_ = 0; o_ < n_; o_ += 64)                             \
            __builtin_prefetch(p_ + o_);                                      \
    } while (0)
#else
#define FS_PREFETCH_ROW(x, d) ((void)0)
#endif

#define FS_DEFINE(T, S)                                                       \
void fs_prefetch_rows_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,      \
                          ptrdiff_t n, ptrdiff_t d)                           \
{                                                                             \
    const ptrdiff_t most = FS_PREFETCH_BYTES / (d * (ptrdiff_t)sizeof(T) + 1); \
    if (n > most)                                                             \
        n = most;                                                             \
    for (ptrdiff_t k = 0; k < n; ++k)                                         \
        FS_PREFETCH_ROW(V + (ptrdiff_t)idx[k] * ldv, d);                      \
}                                                                             \
                                                                              \
void fs_touch_rows_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,         \
                       ptrdiff_t n, ptrdiff_t d)                              \
{                                                                             \
    const ptrdiff_t most = FS_PREFETCH_BYTES / (d * (ptrdiff_t)sizeof(T) + 1), \
                    line = 64 / (ptrdiff_t)sizeof(T);                         \
    unsigned char acc = 0;                                                    \
    volatile unsigned char sink;  /* (so that the loads are kept) */          \
    if (n > most)                                                             \
        n = most;                                                             \
    for (ptrdiff_t k = 0; k < n; ++k) {                                       \
        const unsigned char *row = (const unsigned char *)(V + idx[k] * ldv); \
        for (ptrdiff_t c = 0; c < d; c += line)                               \
            acc ^= row[c * (ptrdiff_t)sizeof(T)];                             \
    }                                                                         \
    sink = acc;                                                               \
    (void)sink;                                                               \
}                                                                             \
                                                                              \
static inline double fs_row_dot_##S(ptrdiff_t n, const T *restrict x,        \
                                    const T *restrict y) { FS_DOT_BODY }      \
                                                                              \
void fs_gather_dots_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,        \
                        ptrdiff_t n, const T *u, ptrdiff_t d, T *out)         \
{                                                                             \
    for (ptrdiff_t k = 0; k < n; ++k) {                                       \
        if (k + 1 < n)  /* the next row is a cache miss: start loading it */  \
            FS_PREFETCH_ROW(V + (ptrdiff_t)idx[k + 1] * ldv, d);              \
        out[k] = (T)fs_row_dot_##S(d, V + (ptrdiff_t)idx[k] * ldv, u);        \
    }                                                                         \
}                                                                             \
                                                                              \
void fs_gather_combine_##S(const T *V, ptrdiff_t ldv, const int64_t *idx,     \
                           const T *coef, ptrdiff_t n, ptrdiff_t d, T *out)   \
{                                                                             \
    for (ptrdiff_t c = 0; c < d; ++c)                                         \
        out[c] = 0;                                                           \
    for (ptrdiff_t k = 0; k < n; ++k) {                                       \
        const T *row = V + (ptrdiff_t)idx[k] * ldv;                           \
        const T a = coef[k];                                                  \
        for (ptrdiff_t c = 0; c < d; ++c)                                     \
            out[c] += a * row[c];                                             \
    }                                                                         \
}                                                                             \
                                                                              \
void fs_scatter_axpy_##S(T *V, ptrdiff_t ldv, const int64_t *idx,             \
                         const T *coef, ptrdiff_t n, ptrdiff_t d,             \
                         const T *w, ptrdiff_t incw)                          \
{                                                                             \
    for (ptrdiff_t k = 0; k < n; ++k) {                                       \
        T *row = V + (ptrdiff_t)idx[k] * ldv;                                 \
        const T a = coef[k];                                                  \
        if (incw == 1) {                                                      \
            for (ptrdiff_t c = 0; c < d; ++c)                                 \
                row[c] += a * w[c];                                           \
        } else {                                                              \
            for (ptrdiff_t c = 0; c < d; ++c)                                 \
                row[c] += a * w[c * incw];                                    \
        }                                                                     \
    }                                                                         \
}                                                                             \
                                                                              \
void fs_csr_gram_add_##S(ptrdiff_t m, const int64_t *indptr,                  \
                         const int64_t *indices, const T *values, T *G,       \
                         int64_t *work)                                       \
{                                                                             \
    const ptrdiff_t nnz = indptr[m] - indptr[0];                              \
    const fs_groups g = fs_groups_in(work, nnz);                              \
    for (ptrdiff_t h = 0; h < g.t; ++h)                                       \
        g.key[h] = -1;                                                        \
    /* the entries in storage order (rows in turn, indices ascending in a     \
     * row): each one meets the earlier entries of its index through the      \
     * hash table (open addressing) and the chain of their positions, so the  \
     * products of a pair of rows are added in ascending index order */       \
    for (ptrdiff_t i = 0; i < m; ++i)                                         \
        for (int64_t p = indptr[i]; p < indptr[i + 1]; ++p) {                 \
            const int64_t c = indices[p], e = p - indptr[0];                  \
            const T v = values[p];                                            \
            ptrdiff_t h = (ptrdiff_t)(((uint64_t)c * 0x9E3779B97F4A7C15u)     \
                                      >> 32) & (g.t - 1);                     \
            while (g.key[h] != -1 && g.key[h] != c)                           \
                h = (h + 1) & (g.t - 1);                                      \
            G[i * m + i] += v * v;                                            \
            g.row[e] = i;                                                     \
            g.next[e] = -1;                                                   \
            if (g.key[h] == c) {                                              \
                for (int64_t q = g.head[h]; q >= 0; q = g.next[q]) {          \
                    const T w = values[q + indptr[0]] * v;                    \
                    G[g.row[q] * m + i] += w;                                 \
                    G[i * m + g.row[q]] += w;                                 \
                }                                                             \
                g.next[g.tail[h]] = e;                                        \
            } else {                                                          \
                g.key[h] = c;                                                 \
                g.head[h] = e;                                                \
            }                                                                 \
            g.tail[h] = e;                                                    \
        }                                                                     \
}                                                                             \
                                                                              \
void fs_rankk_rows_##S(T *V, ptrdiff_t ldv, ptrdiff_t n_rows, ptrdiff_t d,   \
                       const T *L, const T *beta, ptrdiff_t k)                \
{                                                                             \
    T t[FS_MAX_RANK];                                                         \
    for (ptrdiff_t j = 0; j < n_rows; ++j) {                                  \
        T *row = V + j * ldv;                                                 \
        for (ptrdiff_t i = 0; i < k; ++i) {                                   \
            const T *l = L + i * d;                                           \
            T acc = 0;                                                        \
            for (ptrdiff_t c = 0; c < d; ++c)                                 \
                acc += row[c] * l[c];                                         \
            t[i] = beta[i] * acc;                                             \
        }                                                                     \
        for (ptrdiff_t i = 0; i < k; ++i) {                                   \
            const T *l = L + i * d;                                           \
            for (ptrdiff_t c = 0; c < d; ++c)                                 \
                row[c] -= t[i] * l[c];                                        \
        }                                                                     \
    }                                                                         \
}

FS_DEFINE(float, s)
FS_DEFINE(double, d)
