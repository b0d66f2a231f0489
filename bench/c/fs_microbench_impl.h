/* Template of the standalone microbenchmark (see fs_microbench.c): the
 * kernels, their set-up and the timing loop for one element type.  Included
 * by fs_microbench.c with T (float or double), S (s or d) and TNAME
 * ("float32" or "float64") defined. */
#define MB_CAT_(a, b) a##_##b
#define MB_CAT(a, b) MB_CAT_(a, b)
#define F(name) MB_CAT(name, S)
/* the BLAS / LAPACK routine of this type: B(gemm) -> scipy_sgemm_ */
#define B(name) MB_PASTE(FS_BLAS_PREFIX, S, name##_)

/* Fortran-ABI prototypes (no hidden string lengths: all character
 * arguments have length 1, which every BLAS written in C ignores). */
void B(gemm)(const char *, const char *, const int *, const int *,
             const int *, const T *, const T *, const int *, const T *,
             const int *, const T *, T *, const int *);
void B(gemv)(const char *, const int *, const int *, const T *, const T *,
             const int *, const T *, const int *, const T *, T *,
             const int *);
void B(symm)(const char *, const char *, const int *, const int *,
             const T *, const T *, const int *, const T *, const int *,
             const T *, T *, const int *);
void B(syr2k)(const char *, const char *, const int *, const int *,
              const T *, const T *, const int *, const T *, const int *,
              const T *, T *, const int *);
void B(syrk)(const char *, const char *, const int *, const int *,
             const T *, const T *, const int *, const T *, T *,
             const int *);
void B(symv)(const char *, const int *, const T *, const T *, const int *,
             const T *, const int *, const T *, T *, const int *);
void B(ger)(const int *, const int *, const T *, const T *, const int *,
            const T *, const int *, T *, const int *);
void B(syr2)(const char *, const int *, const T *, const T *, const int *,
             const T *, const int *, T *, const int *);
T B(nrm2)(const int *, const T *, const int *);
void B(axpy)(const int *, const T *, const T *, const int *, T *,
             const int *);
void B(scal)(const int *, const T *, T *, const int *);
void B(getrf)(const int *, const int *, T *, const int *, int *, int *);
void B(getrs)(const char *, const int *, const int *, const T *,
              const int *, const int *, T *, const int *, int *);

/* ---- row-major helpers over the Fortran symbols (same operand swaps as
 * fastsparse/_blas.pyx; every call below names the column-major call it
 * makes) */
static void F(rgemm)(int ta, int tb, int m, int n, int k, T alpha,
                     const T *A, int lda, const T *Bm, int ldb, T beta,
                     T *C, int ldc)
{
    const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    B(gemm)(&cb, &ca, &n, &m, &k, &alpha, Bm, &ldb, A, &lda, &beta, C, &ldc);
}

static void F(rgemv)(int ta, int m, int n, T alpha, const T *A, int lda,
                     const T *x, T beta, T *y)
{
    const char t = ta ? 'N' : 'T';
    const int one = 1;
    B(gemv)(&t, &n, &m, &alpha, A, &lda, x, &one, &beta, y, &one);
}

/* y = alpha M x, M's upper (row-major) triangle = column-major lower */
static void F(rsymv_upper)(int n, T alpha, const T *A, const T *x, T beta,
                           T *y)
{
    const char u = 'L';
    const int one = 1;
    B(symv)(&u, &n, &alpha, A, &n, x, &one, &beta, y, &one);
}

/* A (m x n) += alpha x y^T */
static void F(rger)(int m, int n, T alpha, const T *x, const T *y, T *A)
{
    const int one = 1;
    B(ger)(&n, &m, &alpha, y, &one, x, &one, A, &n);
}

static void F(rsyr2_upper)(int n, T alpha, const T *x, const T *y, T *A)
{
    const char u = 'L';
    const int one = 1;
    B(syr2)(&u, &n, &alpha, x, &one, y, &one, A, &n);
}

/* C (m x n) = alpha B A, A n x n symmetric (upper) */
static void F(rsymm_right_upper)(int m, int n, T alpha, const T *A,
                                 const T *Bm, T beta, T *C)
{
    const char side = 'L', uplo = 'L';
    B(symm)(&side, &uplo, &n, &m, &alpha, A, &n, Bm, &n, &beta, C, &n);
}

/* upper C (n x n) += alpha (A^T Bm + Bm^T A), A and Bm k x n */
static void F(rsyr2k_upper_trans)(int n, int k, T alpha, const T *A,
                                  const T *Bm, T beta, T *C)
{
    const char uplo = 'L', t = 'N';
    B(syr2k)(&uplo, &t, &n, &k, &alpha, A, &n, Bm, &n, &beta, C, &n);
}

/* ---- the state and buffers of one run */
typedef struct {
    ptrdiff_t D;
    int d, K, m, k;
    double lr;
    T *V, *U, *Uinv, *M;          /* the state (whole steps change it) */
    T *Uw, *Uinvw, *Mw;           /* scratch copies for the updates */
    T *h, *u, *x, *z, *t, *w, *Mu;/* d */
    T *Hk, *Bu, *Xk, *Tw, *Yk, *Zk, *Gk, *ek, *pk;   /* block panels */
    T *Hm, *HU, *HUM, *Pm, *Rm, *Zt, *HHt, *Kmat0, *Kmat, *YY, *YYw;
    int64_t *bat_indptr, *bat_idx;    /* the minibatch's targets (CSR) */
    T *bat_val;
    int *ipiv;
    int64_t *idx;                 /* n_sets x K random rows */
    ptrdiff_t n_sets;
    T *coef, *aK;
    /* whole steps */
    T *Hs, *step_val, *loss, *grad;
    int64_t *step_idx, *step_indptr;
    ptrdiff_t n_calls;
    int block, status;
    fs_loss_spec spec;
} F(ctx);

/* the untimed set-up of kernels that destroy their input */
static void F(prep)(F(ctx) *c, int kid)
{
    if (kid == KB_GETRF)
        memcpy(c->Kmat, c->Kmat0, (size_t)c->m * c->m * sizeof(T));
}

/* one call of kernel kid; `it` numbers the calls (fresh rows, signs) */
static void F(call)(F(ctx) *c, int kid, long it)
{
    const int d = c->d, k = c->k, m = c->m, K = c->K;
    const T tiny = (T)((it & 1) ? 1e-6 : -1e-6);
    const int64_t *idx = c->idx + (it % c->n_sets) * K;
    int i, info;
    switch (kid) {
    /* sequential online step (fastsparse/_core.pyx, online_kernel) */
    case KS_GEMV_UH:    F(rgemv)(0, d, d, 1, c->U, d, c->h, 0, c->u); break;
    case KS_SYMV_MU:    F(rsymv_upper)(d, 1, c->M, c->u, 0, c->x); break;
    case KS_GEMV_UTZ:   F(rgemv)(1, d, d, 1, c->U, d, c->z, 0, c->w); break;
    case KS_GEMV_UINVTH:F(rgemv)(1, d, d, 1, c->Uinv, d, c->h, 0, c->t); break;
    case KS_GER_U:      F(rger)(d, d, tiny, c->u, c->h, c->Uw); break;
    case KS_GER_UINV:   F(rger)(d, d, tiny, c->h, c->t, c->Uinvw); break;
    case KS_SYR2_M:     F(rsyr2_upper)(d, tiny, c->t, c->z, c->Mw); break;
    /* blocked online step (src_c/fs_online_impl.h), one block of k */
    case KB_GEMM_HUT:
        F(rgemm)(0, 1, k, d, d, 1, c->Hk, d, c->U, d, 0, c->Bu, d); break;
    case KB_SYMM:
        F(rsymm_right_upper)(k, d, 1, c->M, c->Bu, 0, c->Xk); break;
    case KB_GEMM_HUINV:
        F(rgemm)(0, 0, k, d, d, 1, c->Hk, d, c->Uinv, d, 0, c->Tw, d); break;
    case KB_GEMM_HHT:
        F(rgemm)(0, 1, k, k, d, 1, c->Hk, d, c->Hk, d, 0, c->Gk, k); break;
    case KB_CORR:
        for (i = 1; i < k; ++i) {
            F(rgemv)(1, i, d, -tiny, c->Bu, d, c->ek, 1, c->u);
            F(rgemv)(1, i, d, -tiny, c->Xk, d, c->ek, 1, c->x);
            F(rgemv)(1, i, d, tiny, c->Tw, d, c->ek, 1, c->t);
            F(rgemv)(0, i, d, 1, c->Yk, d, c->u, 0, c->pk);
            F(rgemv)(1, i, d, -tiny, c->Tw, d, c->pk, 1, c->Mu);
            F(rgemv)(0, i, d, 1, c->Tw, d, c->u, 0, c->pk);
            F(rgemv)(1, i, d, -tiny, c->Yk, d, c->pk, 1, c->Mu);
        }
        break;
    case KB_GEMM_ZU:
        F(rgemm)(0, 0, k, d, d, 1, c->Zk, d, c->U, d, 0, c->Xk, d); break;
    case KB_GEMM_ZBUT:
        F(rgemm)(0, 1, k, k, d, 1, c->Zk, d, c->Bu, d, 0, c->Gk, k); break;
    case KB_GEMM_GH:
        F(rgemm)(0, 0, k, d, k, tiny, c->Gk, k, c->Hk, d, 1, c->Xk, d); break;
    case KB_SYR2K:
        F(rsyr2k_upper_trans)(d, k, tiny, c->Tw, c->Yk, 1, c->Mw); break;
    case KB_GEMM_UUPD:
        F(rgemm)(1, 0, d, d, k, tiny, c->Bu, d, c->Hk, d, 1, c->Uw, d); break;
    case KB_GEMM_UINVUPD:
        F(rgemm)(1, 0, d, d, k, tiny, c->Hk, d, c->Tw, d, 1, c->Uinvw, d);
        break;
    /* sparse V rows (src_c/fs_sparse.c) */
    case KP_GATHER_DOTS:
        F(fs_gather_dots)(c->V, d, idx, K, c->u, d, c->aK); break;
    case KP_GATHER_COMBINE:
        F(fs_gather_combine)(c->V, d, idx, c->coef, K, d, c->z); break;
    case KP_SCATTER_AXPY:
        for (i = 0; i < K; ++i)
            c->aK[i] = tiny * c->coef[i];
        F(fs_scatter_axpy)(c->V, d, idx, c->aK, K, d, c->t, 1);
        break;
    case KP_EXAMPLE:
        F(fs_gather_dots)(c->V, d, idx, K, c->u, d, c->aK);
        F(fs_gather_combine)(c->V, d, idx, c->coef, K, d, c->z);
        for (i = 0; i < K; ++i)
            c->aK[i] = tiny * c->coef[i];
        F(fs_scatter_axpy)(c->V, d, idx, c->aK, K, d, c->t, 1);
        break;
    /* minibatch step (fastsparse/_core.pyx, batch_forward/backward) */
    case KB_M_GEMM_HUT:
        F(rgemm)(0, 1, m, d, d, 1, c->Hm, d, c->U, d, 0, c->HU, d); break;
    case KB_M_SYMM:
        F(rsymm_right_upper)(m, d, 1, c->M, c->HU, 0, c->HUM); break;
    case KB_M_GEMM_ZU:
        F(rgemm)(0, 0, m, d, d, 1, c->Rm, d, c->U, d, 0, c->HUM, d); break;
    case KB_M_GEMM_HHT:
        F(rgemm)(0, 1, m, m, d, 1, c->Hm, d, c->Hm, d, 0, c->HHt, m); break;
    case KB_GETRF:
        B(getrf)(&m, &m, c->Kmat, &m, c->ipiv, &info); break;
    case KB_M_GEMM_HUINV:
        F(rgemm)(0, 0, m, d, d, 1, c->Hm, d, c->Uinv, d, 0, c->Pm, d); break;
    case KB_GETRS: {
        const char t = 'T';   /* factors of the column-major view, i.e. K^T */
        B(getrs)(&t, &m, &d, c->Kmat, &m, c->ipiv, c->Zt, &m, &info);
        break;
    }
    case KB_M_GEMM_HHTZ:
        F(rgemm)(0, 1, m, d, m, tiny, c->HHt, m, c->Zt, m, 1, c->Pm, d); break;
    case KB_M_CSR_GRAM:
        memset(c->YYw, 0, (size_t)m * m * sizeof(T));
        F(fs_csr_gram_add)(m, c->bat_indptr, c->bat_idx, c->bat_val, c->YYw);
        break;
    case KB_M_AXPY_YYP: {
        /* the sparse path (fewer than 1/8 non-zeros in Ydot Ydot^T) */
        const int one = 1;
        for (i = 0; i < m; ++i)
            for (int j = 0; j < m; ++j)
                if (c->YY[i * m + j] != 0) {
                    const T a = tiny * c->YY[i * m + j];
                    B(axpy)(&d, &a, c->Pm + (size_t)j * d, &one,
                            c->Rm + (size_t)i * d, &one);
                }
        break;
    }
    case KB_M_GEMM_YYP:
        F(rgemm)(0, 0, m, d, m, tiny, c->YY, m, c->Pm, d, 1, c->Rm, d); break;
    case KB_M_GEMM_UUPD:
        F(rgemm)(1, 0, d, d, m, tiny, c->HU, d, c->Hm, d, 1, c->Uw, d); break;
    case KB_M_GEMM_UINVUPD:
        F(rgemm)(1, 1, d, d, m, tiny, c->Hm, d, c->Zt, m, 1, c->Uinvw, d);
        break;
    case KB_M_SYR2K:
        F(rsyr2k_upper_trans)(d, m, tiny, c->Pm, c->Rm, 1, c->Mw); break;
    /* stability monitor core (fastsparse/_health.py, _estimate) */
    case KM_POWER: {
        const int one = 1;
        T nrm;
        F(rgemv)(0, d, d, 1, c->U, d, c->h, 0, c->u);
        F(rgemv)(1, d, d, 1, c->U, d, c->u, 0, c->w);
        nrm = (T)1 / B(nrm2)(&d, c->w, &one);
        B(scal)(&d, &nrm, c->w, &one);
        F(rgemv)(0, d, d, 1, c->Uinv, d, c->x, 0, c->t);
        F(rgemv)(1, d, d, 1, c->Uinv, d, c->t, 0, c->z);
        nrm = (T)1 / B(nrm2)(&d, c->z, &one);
        B(scal)(&d, &nrm, c->z, &one);
        break;
    }
    /* the whole blocked online step (src_c/fs_online.c) */
    case KW_BLOCKED: {
        const ptrdiff_t b = it % c->n_calls;
        ptrdiff_t bad = -1;
        double bad_r = 0.0;
        c->status = F(fs_online_blocked)(
            c->D, d, c->V, c->U, c->Uinv, c->M, NULL, NULL, m,
            c->Hs + b * m * d, c->step_indptr, c->step_idx + b * m * K,
            c->step_val + b * m * K, c->lr, 0.0, &c->spec, 1e-3, c->block,
            c->loss, c->grad, &bad, &bad_r);
        break;
    }
    default:
        break;
    }
}

/* `repeats` samples of `inner` calls: out[r] = seconds per call */
static void F(time_loop)(F(ctx) *c, int kid, int reset, long inner,
                         int repeats, long start, double *out)
{
    long it = start;
    for (int r = 0; r < repeats; ++r) {
        double acc = 0.0;
        if (reset) {
            for (long j = 0; j < inner; ++j) {
                F(prep)(c, kid);
                const double t0 = mb_now();
                F(call)(c, kid, it++);
                acc += mb_now() - t0;
            }
        } else {
            const double t0 = mb_now();
            for (long j = 0; j < inner; ++j)
                F(call)(c, kid, it++);
            acc = mb_now() - t0;
        }
        out[r] = acc / (double)inner;
    }
}

/* warm up, choose the calls per sample, time; fills a result row */
static void F(time_kernel)(F(ctx) *c, const mb_spec *sp, int repeats,
                           double target, long *counter, mb_row *row)
{
    double w[3];
    double *out = malloc(sizeof(double) * (size_t)repeats);
    long inner;
    F(time_loop)(c, sp->kid, sp->reset, 1, 3, *counter, w);
    {
        double t1 = w[0] < w[1] ? w[0] : w[1];
        t1 = t1 < w[2] ? t1 : w[2];
        if (t1 < 1e-9)
            t1 = 1e-9;
        inner = (long)(target / t1 + 0.5);
        if (inner < 1) inner = 1;
        if (inner > 1000000) inner = 1000000;
    }
    F(time_loop)(c, sp->kid, sp->reset, inner, repeats, *counter + 3, out);
    *counter += 3 + inner * repeats;
    mb_fill_row(row, sp, out, repeats, inner);
    free(out);
}

static T *F(alloc)(size_t n)
{
    T *p = malloc(n * sizeof(T) + 64);
    if (p == NULL) {
        fprintf(stderr, "fs_microbench: out of memory (%zu elements)\n", n);
        exit(2);
    }
    return p;
}

static void F(fill)(T *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; ++i)
        x[i] = (T)(scale * mb_rand());
}

static void F(unit_rows)(T *H, size_t n, int d)
{
    for (size_t i = 0; i < n; ++i) {
        double s = 0.0;
        T *h = H + i * d;
        for (int c = 0; c < d; ++c) {
            h[c] = (T)mb_rand();
            s += (double)h[c] * h[c];
        }
        s = 1.0 / sqrt(s);
        for (int c = 0; c < d; ++c)
            h[c] = (T)(h[c] * s);
    }
}

/* V random N(0, 1/d), U = I + 0.1 G / sqrt(d), Uinv (LU in double),
 * M = V^T V (syrk, all threads).  Returns 0 or -1 (U singular). */
static int F(make_state)(F(ctx) *c, int setup_threads, int threads)
{
    const ptrdiff_t D = c->D;
    const int d = c->d, dd = d * d;
    double *A = malloc(sizeof(double) * (size_t)dd * 2);
    int *piv = malloc(sizeof(int) * (size_t)d), info;
    c->V = F(alloc)((size_t)D * d);
    F(fill)(c->V, (size_t)D * d, 1.0 / sqrt((double)d));
    c->U = F(alloc)(dd);
    c->Uinv = F(alloc)(dd);
    c->M = F(alloc)(dd);
    for (int i = 0; i < dd; ++i) {
        A[i] = (i / d == i % d) + 0.1 * mb_rand() / sqrt((double)d);
        c->U[i] = (T)A[i];
        A[i] = (double)c->U[i];
    }
    /* column-major view of row-major U is U^T: solve U^T X = I, X (column
     * major) = U^-T, whose row-major reading is U^-1 */
    for (int i = 0; i < dd; ++i)
        A[dd + i] = (i / d == i % d);
    {
        const char t = 'N';
        MB_PASTE(FS_BLAS_PREFIX, d, getrf_)(&d, &d, A, &d, piv, &info);
        if (info != 0) {
            free(A); free(piv);
            return -1;
        }
        MB_PASTE(FS_BLAS_PREFIX, d, getrs_)(&t, &d, &d, A, &d, piv, A + dd,
                                            &d, &info);
    }
    for (int i = 0; i < dd; ++i)
        c->Uinv[i] = (T)A[dd + i];
    free(A);
    free(piv);
    mb_set_threads(setup_threads);
    {
        /* M^T (column-major) = V^T V: V row-major is the d x D column-major
         * V^T; fill the column-major lower = row-major upper, then mirror */
        const char uplo = 'L', t = 'N';
        const T one = 1, zero = 0;
        const int Dn = (int)D;
        B(syrk)(&uplo, &t, &d, &Dn, &one, c->V, &d, &zero, c->M, &d);
        for (int i = 0; i < d; ++i)
            for (int j = 0; j < i; ++j)
                c->M[i * d + j] = c->M[j * d + i];
    }
    mb_set_threads(threads);
    return 0;
}

/* sorted, distinct rows for K targets */
static void F(random_rows)(int64_t *idx, ptrdiff_t D, int K, int distinct)
{
    for (;;) {
        for (int j = 0; j < K; ++j)
            idx[j] = (int64_t)(mb_uniform() * (double)D) % D;
        if (!distinct)
            return;
        for (int j = 1; j < K; ++j)        /* insertion sort */
            for (int l = j; l > 0 && idx[l - 1] > idx[l]; --l) {
                int64_t tmp = idx[l];
                idx[l] = idx[l - 1];
                idx[l - 1] = tmp;
            }
        int dup = 0;
        for (int j = 1; j < K; ++j)
            dup |= idx[j] == idx[j - 1];
        if (!dup)
            return;
    }
}

/* Time everything at (D, d, K, m) for each block size; print the rows. */
static int F(bench)(const mb_config *cfg)
{
    F(ctx) c;
    const int d = cfg->d, K = cfg->K, m = cfg->m;
    const ptrdiff_t D = cfg->D;
    int kmax = 1;
    long counter = 0;
    const size_t s = sizeof(T);
    memset(&c, 0, sizeof(c));
    for (int i = 0; i < cfg->n_blocks; ++i)
        if (cfg->blocks[i] > kmax)
            kmax = cfg->blocks[i];
    c.D = D; c.d = d; c.K = K; c.m = m; c.k = kmax; c.lr = cfg->lr;
    mb_info("status", "building the state (random V, M = V^T V)");
    if (F(make_state)(&c, cfg->setup_threads, cfg->threads) != 0) {
        fprintf(stderr, "fs_microbench: random U is singular\n");
        return 1;
    }
    const size_t dd = (size_t)d * d, kd = (size_t)kmax * d, md = (size_t)m * d;
    c.Uw = F(alloc)(dd); memcpy(c.Uw, c.U, dd * s);
    c.Uinvw = F(alloc)(dd); memcpy(c.Uinvw, c.Uinv, dd * s);
    c.Mw = F(alloc)(dd); memcpy(c.Mw, c.M, dd * s);
    T **vecs[] = {&c.h, &c.u, &c.x, &c.z, &c.t, &c.w, &c.Mu};
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); ++i) {
        *vecs[i] = F(alloc)(d);
        F(fill)(*vecs[i], d, 1.0 / sqrt((double)d));
    }
    T **panels[] = {&c.Hk, &c.Bu, &c.Xk, &c.Tw, &c.Yk, &c.Zk};
    for (size_t i = 0; i < sizeof(panels) / sizeof(panels[0]); ++i) {
        *panels[i] = F(alloc)(kd);
        F(unit_rows)(*panels[i], kmax, d);
    }
    c.Gk = F(alloc)((size_t)kmax * kmax);
    F(fill)(c.Gk, (size_t)kmax * kmax, 1.0 / sqrt((double)d));
    c.ek = F(alloc)(kmax); F(fill)(c.ek, kmax, 1e-3);
    c.pk = F(alloc)(kmax); F(fill)(c.pk, kmax, 0.0);
    c.Hm = F(alloc)(md); F(unit_rows)(c.Hm, m, d);
    T **mpanels[] = {&c.HU, &c.HUM, &c.Pm, &c.Rm, &c.Zt};
    for (size_t i = 0; i < sizeof(mpanels) / sizeof(mpanels[0]); ++i) {
        *mpanels[i] = F(alloc)(md);
        F(fill)(*mpanels[i], md, 1.0 / sqrt((double)d));
    }
    c.HHt = F(alloc)((size_t)m * m);
    c.Kmat0 = F(alloc)((size_t)m * m);
    c.Kmat = F(alloc)((size_t)m * m);
    c.YY = F(alloc)((size_t)m * m);
    c.YYw = F(alloc)((size_t)m * m);
    F(rgemm)(0, 1, m, m, d, 1, c.Hm, d, c.Hm, d, 0, c.HHt, m);
    for (int i = 0; i < m * m; ++i)
        c.Kmat0[i] = (T)((i / m == i % m) - 2.0 * cfg->lr * c.HHt[i]);
    /* the minibatch's targets and Ydot Ydot^T (dL/da = -1 at each) */
    c.bat_indptr = malloc(sizeof(int64_t) * (size_t)(m + 1));
    c.bat_idx = malloc(sizeof(int64_t) * (size_t)m * K);
    c.bat_val = F(alloc)((size_t)m * K);
    for (int i = 0; i <= m; ++i)
        c.bat_indptr[i] = (int64_t)i * K;
    for (int i = 0; i < m; ++i)
        F(random_rows)(c.bat_idx + (size_t)i * K, D, K, 1);
    for (size_t i = 0; i < (size_t)m * K; ++i)
        c.bat_val[i] = -1;
    memset(c.YY, 0, (size_t)m * m * sizeof(T));
    F(fs_csr_gram_add)(m, c.bat_indptr, c.bat_idx, c.bat_val, c.YY);
    int nnz_yy = 0;
    for (int i = 0; i < m * m; ++i)
        nnz_yy += c.YY[i] != 0;
    memcpy(c.Kmat, c.Kmat0, (size_t)m * m * s);
    c.ipiv = malloc(sizeof(int) * (size_t)m);
    {
        int info;
        B(getrf)(&m, &m, c.Kmat, &m, c.ipiv, &info);  /* factors for getrs */
    }
    c.n_sets = (1 << 20) / K;
    if (c.n_sets > (1 << 16)) c.n_sets = 1 << 16;
    if (c.n_sets < 1) c.n_sets = 1;
    c.idx = malloc(sizeof(int64_t) * (size_t)c.n_sets * K);
    for (ptrdiff_t i = 0; i < c.n_sets; ++i)
        F(random_rows)(c.idx + i * K, D, K, 0);
    c.coef = F(alloc)(K); F(fill)(c.coef, K, 1.0);
    c.aK = F(alloc)(K);
    c.spec.kind = FS_LOSS_SQUARED;
    c.spec.n_outputs = (double)D;

    mb_spec specs[MB_MAX_SPECS];
    mb_row row;
    for (int g = 0; g < MB_N_GROUPS; ++g) {
        const int nk = g == MB_GROUP_BLOCKED ? cfg->n_blocks : 1;
        for (int bi = 0; bi < nk; ++bi) {
            c.k = cfg->blocks[bi];
            int n = mb_kernel_specs(specs, g, D, d, K, m, c.k, (int)s,
                                    nnz_yy);
            for (int i = 0; i < n; ++i) {
                mb_info("status", specs[i].name);
                F(time_kernel)(&c, &specs[i], cfg->repeats, cfg->target,
                               &counter, &row);
                row.block = g == MB_GROUP_BLOCKED ? c.k : 0;
                mb_print_row(cfg, &row);
            }
        }
    }

    /* whole blocked online step on the state, fresh data per call */
    c.n_calls = cfg->repeats + 3;
    c.Hs = F(alloc)((size_t)c.n_calls * md);
    F(unit_rows)(c.Hs, (size_t)c.n_calls * m, d);
    c.step_idx = malloc(sizeof(int64_t) * (size_t)c.n_calls * m * K);
    for (ptrdiff_t i = 0; i < c.n_calls * m; ++i)
        F(random_rows)(c.step_idx + i * K, D, K, 1);
    c.step_val = F(alloc)((size_t)c.n_calls * m * K);
    for (ptrdiff_t i = 0; i < c.n_calls * m * K; ++i)
        c.step_val[i] = 1;
    c.step_indptr = malloc(sizeof(int64_t) * (size_t)(m + 1));
    for (int i = 0; i <= m; ++i)
        c.step_indptr[i] = (int64_t)i * K;
    c.loss = F(alloc)(m);
    c.grad = F(alloc)(md);
    for (int bi = 0; bi < cfg->n_blocks; ++bi) {
        mb_spec sp;
        c.block = c.k = cfg->blocks[bi];
        mb_step_spec(&sp, D, d, K, m, c.k, (int)s);
        mb_info("status", sp.name);
        F(time_kernel)(&c, &sp, cfg->repeats, 0.0, &counter, &row);
        if (c.status != FS_OK) {
            fprintf(stderr, "fs_microbench: fs_online_blocked returned "
                    "status %d: the state became unhealthy (use a smaller "
                    "--lr)\n", c.status);
            return 1;
        }
        row.block = c.k;
        mb_print_row(cfg, &row);
    }
    /* the state is freed at exit */
    return 0;
}

/* --check: a few calls of the blocked online step, float64 only, on a small
 * deterministic problem; inputs and results written as raw numbers. */
#if MB_IS_DOUBLE
static int F(check)(const mb_config *cfg, const char *path)
{
    const ptrdiff_t D = cfg->D;
    const int d = cfg->d, K = cfg->K, m = cfg->m, n_steps = cfg->check_steps;
    const size_t Dd = (size_t)D * d, dd = (size_t)d * d;
    const size_t nm = (size_t)n_steps * m;
    const double lr = cfg->check_lr, wd = cfg->check_wd;
    F(ctx) c;
    FILE *f;
    memset(&c, 0, sizeof(c));
    c.D = D; c.d = d;
    if (F(make_state)(&c, cfg->setup_threads, cfg->threads) != 0)
        return 1;
    T *omega = F(alloc)(d), *sv = F(alloc)(d);
    F(fill)(omega, d, 0.01);
    for (int j = 0; j < d; ++j) {
        double acc = 0.0;
        for (ptrdiff_t r = 0; r < D; ++r)
            acc += c.V[r * d + j];
        sv[j] = (T)acc;
    }
    T *H = F(alloc)(nm * d);
    F(fill)(H, nm * d, 0.3);
    int64_t *idx = malloc(sizeof(int64_t) * nm * K);
    T *val = F(alloc)(nm * K);
    for (size_t i = 0; i < nm; ++i)
        F(random_rows)(idx + i * K, D, K, 1);
    for (size_t i = 0; i < nm * K; ++i)
        val[i] = (T)(0.5 + mb_uniform());
    int64_t *indptr = malloc(sizeof(int64_t) * (size_t)(m + 1));
    for (int i = 0; i <= m; ++i)
        indptr[i] = (int64_t)i * K;
    T *loss = F(alloc)(nm), *grad = F(alloc)(nm * d);
    int64_t *status = malloc(sizeof(int64_t) * (size_t)n_steps);

    f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    const int64_t header[8] = {MB_CHECK_MAGIC, (int64_t)D, d, K, m, n_steps,
                               cfg->blocks[0], 1};
    const double params[2] = {lr, wd};
    fwrite(header, sizeof(int64_t), 8, f);
    fwrite(params, sizeof(double), 2, f);
    fwrite(c.V, sizeof(T), Dd, f);
    fwrite(c.U, sizeof(T), dd, f);
    fwrite(c.Uinv, sizeof(T), dd, f);
    fwrite(c.M, sizeof(T), dd, f);
    fwrite(omega, sizeof(T), d, f);
    fwrite(sv, sizeof(T), d, f);
    fwrite(H, sizeof(T), nm * d, f);
    fwrite(idx, sizeof(int64_t), nm * K, f);
    fwrite(val, sizeof(T), nm * K, f);
    fs_loss_spec spec = {FS_LOSS_SQUARED, (double)D, 0.0, 0.0, 0.0};
    for (int st = 0; st < n_steps; ++st) {
        ptrdiff_t bad = -1;
        double bad_r = 0.0;
        status[st] = F(fs_online_blocked)(
            D, d, c.V, c.U, c.Uinv, c.M, omega, sv, m,
            H + (size_t)st * m * d, indptr, idx + (size_t)st * m * K,
            val + (size_t)st * m * K, lr, wd, &spec, 1e-3, cfg->blocks[0],
            loss + (size_t)st * m, grad + (size_t)st * m * d, &bad, &bad_r);
    }
    fwrite(status, sizeof(int64_t), n_steps, f);
    fwrite(c.V, sizeof(T), Dd, f);
    fwrite(c.U, sizeof(T), dd, f);
    fwrite(c.Uinv, sizeof(T), dd, f);
    fwrite(c.M, sizeof(T), dd, f);
    fwrite(omega, sizeof(T), d, f);
    fwrite(sv, sizeof(T), d, f);
    fwrite(loss, sizeof(T), nm, f);
    fwrite(grad, sizeof(T), nm * d, f);
    if (fclose(f) != 0) {
        perror(path);
        return 1;
    }
    for (int st = 0; st < n_steps; ++st)
        if (status[st] != FS_OK) {
            fprintf(stderr, "fs_microbench --check: step %d returned status "
                    "%d\n", st, (int)status[st]);
            return 1;
        }
    printf("check: %d blocked online steps of %d examples (D=%td d=%d K=%d "
           "block=%d, float64) written to %s\n", n_steps, m, D, d, K,
           cfg->blocks[0], path);
    return 0;
}
#endif

#undef F
#undef B
#undef MB_CAT
#undef MB_CAT_
