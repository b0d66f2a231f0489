/* Template of the kernels declared in fs_kernels.h; included by
 * fs_kernels.c with T (the element type) and S (the suffix) defined, and
 * TU, TU_ABS, TU_INF: the unsigned integer of T's size, the mask that
 * clears its sign bit and the bit pattern of +Inf.
 * Section numbers (§) refer to docs/algorithm.md. */
#define FS_CAT_(a, b) a##_##b
#define FS_CAT(a, b) FS_CAT_(a, b)
#define F(name) FS_CAT(name, S)

/* ------------------------------------------------------------- helpers */
/* The reductions below run over O(m d) and O(D d) data on every step:
 * independent partial sums (their order is fixed, so results stay
 * deterministic) instead of one dependency chain.  Each body is compiled
 * twice: portable (SSE2 in a portable build) and for AVX2 without FMA
 * (FS_AVX2_EXACT_FN: the same operations in the same order, so the same
 * bits; the portable build's integer maximum and double conversions were
 * several times slower), called when the CPU has AVX2 (FS_USE_AVX2). */

/* (x . y in double: FS_DOT_BODY, fs_sparse.h, shared with the gathers) */

/* max |x[c]|; NaN if x holds a NaN.  On the bit patterns with the sign
 * cleared: as unsigned integers they order like |x|, with every NaN above
 * Inf; an integer maximum, unlike a floating-point one, the compiler
 * vectorises without -ffast-math. */
#define FS_AMAX_BODY                                                          \
    TU m = 0, b;                                                              \
    T r;                                                                      \
    for (ptrdiff_t c = 0; c < n; ++c) {                                       \
        memcpy(&b, x + c, sizeof b);                                          \
        b &= TU_ABS;                                                          \
        m = b > m ? b : m;                                                    \
    }                                                                         \
    if (m > TU_INF)                                                           \
        return NAN;                                                           \
    memcpy(&r, &m, sizeof r);                                                 \
    return r;

/* whether x holds no NaN/Inf: no exponent field all ones */
#define FS_FINITE_BODY                                                        \
    TU bad = 0, b;                                                            \
    for (ptrdiff_t c = 0; c < n; ++c) {                                       \
        memcpy(&b, x + c, sizeof b);                                          \
        bad |= (TU)((b & TU_INF) == TU_INF);                                  \
    }                                                                         \
    return bad == 0;

/* NAME_port and, where it can be compiled, NAME_avx2 from one BODY (a
 * macro: the bodies hold commas); FS_PICK(NAME) is the one to call */
#if FS_HAVE_AVX2
#define FS_TWO_COPIES(ret, name, params, body)                                \
    static FS_NOINLINE ret F(name##_port) params { body }                     \
    static FS_AVX2_EXACT_FN ret F(name##_avx2) params { body }
#define FS_PICK(name) (FS_USE_AVX2 ? F(name##_avx2) : F(name##_port))
#else
#define FS_TWO_COPIES(ret, name, params, body)                                \
    static FS_NOINLINE ret F(name##_port) params { body }
#define FS_PICK(name) F(name##_port)
#endif

FS_TWO_COPIES(double, fs_dot, (ptrdiff_t n, const T *restrict x,
                               const T *restrict y), FS_DOT_BODY)
FS_TWO_COPIES(double, fs_amax, (ptrdiff_t n, const T *restrict x), FS_AMAX_BODY)
FS_TWO_COPIES(int, fs_finite, (ptrdiff_t n, const T *restrict x), FS_FINITE_BODY)

/* With the health control on (cond_limit > 0), the largest cond(U) an
 * update may leave, by the kernels' bounds: 2^-8 / eps of T.  Beyond it U
 * is numerically singular in T (a factor of 1e34 from lr = 1e8 on
 * activations of 1e13 made the next check's LU fail); the control keeps
 * cond(U) below max_cond (8 or 4), and one update of a converging SGD
 * multiplies it by at most a few. */
#define FS_COND_HARD (sizeof(T) == sizeof(float) ? 0x1p15 : 0x1p44)
/* the largest entry of an output the kernels write (a gradient bound
 * beyond it refuses the example, as a non-finite one would be) */
#define FS_OUT_MAX (sizeof(T) == sizeof(float) ? 0x1p126 : 0x1p1022)

static inline double F(fs_dot)(ptrdiff_t n, const T *x, const T *y)
{
    return FS_PICK(fs_dot)(n, x, y);
}

static inline double F(fs_amax)(ptrdiff_t n, const T *x)
{
    return FS_PICK(fs_amax)(n, x);
}

static inline int F(fs_finite)(ptrdiff_t n, const T *x)
{
    return FS_PICK(fs_finite)(n, x);
}

/* the same check for the Python layer's validation (one implementation) */
int F(fs_all_finite)(ptrdiff_t n, const T *x)
{
    return F(fs_finite)(n, x);
}

/* ---------------------------------------------- the low-rank pass (§4) */
#define FS_LOWRANK_CHUNK 128   /* rows per chunk: the chunk stays in cache */

int F(fs_lowrank_rows)(T *V, ptrdiff_t n_rows, int d, int k, const T *P,
                       const T *Q, const T *gamma)
{
    if (n_rows <= 0 || k <= 0)
        return FS_OK;
    T *Tk = malloc((size_t)FS_LOWRANK_CHUNK * k * sizeof(T));
    if (Tk == NULL)
        return FS_NOMEM;
    for (ptrdiff_t r0 = 0; r0 < n_rows; r0 += FS_LOWRANK_CHUNK) {
        const int nr = (int)(n_rows - r0 < FS_LOWRANK_CHUNK
                             ? n_rows - r0 : FS_LOWRANK_CHUNK);
        T *Vc = V + r0 * d;
        if (k == 1) {       /* one fused pass: V_j += gamma (V_j . P) Q */
            const T g = gamma[0];
            for (int j = 0; j < nr; ++j) {
                T *row = Vc + (ptrdiff_t)j * d;
                const T a = (T)(g * F(fs_dot)(d, row, P));
                for (int c = 0; c < d; ++c)
                    row[c] += a * Q[c];
            }
            continue;
        }
        /* Tk = Vc P^T (nr x k), scaled by gamma, then Vc += Tk Q */
        F(fs_gemm)(0, 1, nr, k, d, 1, Vc, d, P, d, 0, Tk, k);
        for (int j = 0; j < nr; ++j)
            for (int i = 0; i < k; ++i)
                Tk[(ptrdiff_t)j * k + i] *= gamma[i];
        F(fs_gemm)(0, 0, nr, d, k, 1, Tk, k, Q, d, 1, Vc, d);
    }
    free(Tk);
    return FS_OK;
}

/* ----------------------------------------- the health check's estimates (§5) */
/* A check's estimates of the state, in double (fastsparse/_health.py holds
 * the same computation in NumPy, the reference the tests compare with):
 * `iterations` rounds of power iteration on U U^T from the warm vector x
 * (d) and of subspace iteration on Uinv^T Uinv from the warm basis X
 * (d x kw, row-major: its columns are the vectors), re-orthonormalised by
 * QR; then the Ritz pairs of Uinv on X.  Out: x and X in place (X's
 * columns the Ritz vectors, weakest direction of U first), theta (kw:
 * 1 / sigma^2 of those directions, descending), est[0] = sigma_max(U)
 * = ||U^T x||, est[1] = max_j ||U Uinv X_j - X_j|| (the inverse's error).
 * Returns 0, or -1 (out of memory, LAPACK failure). */
int F(fs_estimate)(int d, const T *U, const T *Uinv, int iterations, int kw,
                   double *x, double *X, double *theta, double *est)
{
    const ptrdiff_t dd = (ptrdiff_t)d * d, kd = (ptrdiff_t)kw * d;
    const int lwork = 66 * (d > kw ? d : kw) + 1;
    int info = 0, status = -1;
    double *U8 = malloc((size_t)(2 * dd + 4 * kd + 2 * (ptrdiff_t)kw * kw
                                 + 2 * kw + d + lwork) * sizeof(double));
    if (U8 == NULL || kw < 1 || kw > d)
        goto done;
    double *I8 = U8 + dd;       /* Uinv */
    double *Xr = I8 + dd;       /* kw x d: the basis vectors as rows */
    double *Yr = Xr + kd;       /* kw x d */
    double *Zr = Yr + kd;       /* kw x d */
    double *Pr = Zr + kd;       /* kw x d */
    double *G = Pr + kd;        /* kw x kw */
    double *E = G + (ptrdiff_t)kw * kw;   /* kw x kw */
    double *w = E + (ptrdiff_t)kw * kw;   /* kw */
    double *tau = w + kw;       /* kw */
    double *y = tau + kw;       /* d */
    double *wk = y + d;         /* lwork */
    const char jv = 'V', up = 'U';
    for (ptrdiff_t c = 0; c < dd; ++c) {
        U8[c] = U[c];
        I8[c] = Uinv[c];
    }
    for (int i = 0; i < d; ++i)
        for (int j = 0; j < kw; ++j)
            Xr[(ptrdiff_t)j * d + i] = X[(ptrdiff_t)i * kw + j];
    for (int it = 0; it < iterations; ++it) {
        double n2 = 0.0;
        fs_gemv_d(1, d, d, 1.0, U8, d, x, 1, 0.0, y, 1);       /* U^T x */
        fs_gemv_d(0, d, d, 1.0, U8, d, y, 1, 0.0, x, 1);       /* U y */
        for (int c = 0; c < d; ++c)
            n2 += x[c] * x[c];
        n2 = sqrt(n2);
        if (n2 > 0)
            for (int c = 0; c < d; ++c)
                x[c] /= n2;
        /* rows of Uinv^T Uinv X, then their orthonormal basis (the rows of
         * a row-major kw x d matrix are the columns of its column-major
         * d x kw view, the form LAPACK takes) */
        fs_gemm_d(0, 1, kw, d, d, 1.0, Xr, d, I8, d, 0.0, Yr, d);
        fs_gemm_d(0, 0, kw, d, d, 1.0, Yr, d, I8, d, 0.0, Xr, d);
        fs_blas.dgeqrf(&d, &kw, Xr, &d, tau, wk, &lwork, &info);
        if (info != 0)
            goto done;
        fs_blas.dorgqr(&d, &kw, &kw, Xr, &d, tau, wk, &lwork, &info);
        if (info != 0)
            goto done;
    }
    fs_gemv_d(1, d, d, 1.0, U8, d, x, 1, 0.0, y, 1);
    est[0] = 0.0;
    for (int c = 0; c < d; ++c)
        est[0] += y[c] * y[c];
    est[0] = sqrt(est[0]);
    /* Ritz pairs: eigenvectors of G = (Uinv X)^T (Uinv X), ascending */
    fs_gemm_d(0, 1, kw, d, d, 1.0, Xr, d, I8, d, 0.0, Yr, d);
    fs_gemm_d(0, 1, kw, kw, d, 1.0, Yr, d, Yr, d, 0.0, G, kw);
    fs_blas.dsyev(&jv, &up, &kw, G, &kw, w, wk, &lwork, &info);
    if (info != 0)
        goto done;
    /* in descending order: E's row j = eigenvector kw-1-j (a row of G's
     * column-major result) */
    for (int j = 0; j < kw; ++j) {
        theta[j] = w[kw - 1 - j];
        memcpy(E + (ptrdiff_t)j * kw, G + (ptrdiff_t)(kw - 1 - j) * kw,
               (size_t)kw * sizeof(double));
    }
    fs_gemm_d(0, 0, kw, d, kw, 1.0, E, kw, Xr, d, 0.0, Zr, d);   /* X R */
    fs_gemm_d(0, 0, kw, d, kw, 1.0, E, kw, Yr, d, 0.0, Pr, d);   /* Uinv X R */
    fs_gemm_d(0, 1, kw, d, d, 1.0, Pr, d, U8, d, 0.0, Yr, d);    /* U Uinv X R */
    est[1] = 0.0;
    for (int j = 0; j < kw; ++j) {
        double e2 = 0.0;
        for (int c = 0; c < d; ++c) {
            const double r = Yr[(ptrdiff_t)j * d + c] - Zr[(ptrdiff_t)j * d + c];
            e2 += r * r;
        }
        if (e2 > est[1] || e2 != e2)
            est[1] = e2;
    }
    est[1] = sqrt(est[1]);
    for (int i = 0; i < d; ++i)
        for (int j = 0; j < kw; ++j)
            X[(ptrdiff_t)i * kw + j] = Zr[(ptrdiff_t)j * d + i];
    status = 0;
done:
    free(U8);
    return status;
}

/* ||M||_F of the symmetric M from its upper triangle (>= ||M||_2) */
double F(fs_sym_fnorm)(int d, const T *M)
{
    double diag = 0.0, off = 0.0;
    for (int i = 0; i < d; ++i) {
        const T *r = M + (ptrdiff_t)i * d;
        diag += (double)r[i] * r[i];
        off += F(fs_dot)(d - i - 1, r + i + 1, r + i + 1);
    }
    return sqrt(diag + 2.0 * off);
}

/* M <- C^T M C for C = I + P^T diag(gamma) Q (P, Q k x d): the Gram matrix
 * of V C (§4).  Upper triangle.  work: 2 k d + k k of T. */
static void F(fs_gram_transform)(int d, int k, T *M, const T *P, const T *Q,
                                 const T *gamma, T *work)
{
    T *X = work;                        /* k x d: rows (M p_i)^T */
    T *Y = X + (ptrdiff_t)k * d;        /* k x d */
    T *G = Y + (ptrdiff_t)k * d;        /* k x k: P M P^T */
    F(fs_symm_right_upper)(k, d, 1, M, d, P, d, 0, X, d);
    F(fs_gemm)(0, 1, k, k, d, 1, X, d, P, d, 0, G, k);
    /* Y = diag(g) X + 1/2 diag(g) G diag(g) Q; M += Q^T Y + Y^T Q */
    for (int i = 0; i < k; ++i)
        for (int j = 0; j < k; ++j)
            G[i * k + j] *= (T)(0.5 * gamma[i] * gamma[j]);
    for (int i = 0; i < k; ++i)
        for (int c = 0; c < d; ++c)
            Y[(ptrdiff_t)i * d + c] = gamma[i] * X[(ptrdiff_t)i * d + c];
    F(fs_gemm)(0, 0, k, d, k, 1, G, k, Q, d, 1, Y, d);
    F(fs_syr2k_upper_trans)(d, k, 1, Q, d, Y, d, 1, M, d);
}

/* ------------------------------------------------ online mode (§3, §4.1) */
/* Everything of a block that waits for the block's end. */
typedef struct {
    int d, k;
    T *Bu;    /* k x d: U0 h_i, then (in place) u_i = U_i h_i */
    T *X;     /* k x d: M0 U0 h_i, then M0 u_i; at the end Z U0 */
    T *Tw;    /* k x d: Uinv0^T h_i, then t_i = Uinv_i^T h_i, then w_i */
    T *Y;     /* k x d: y_i (the M update is -lr (w y^T + y w^T)) */
    T *Z;     /* k x d: z_i, dL/dh_i = U_i^T z_i + (...) omega */
    T *G;     /* k x k: H H^T of the block; at the end (z_i . u_j) */
    T *e;     /* k: correction coefficients */
    T *p;     /* k */
    double *alpha, *sc, *sig;   /* k: c_j / s_j, s_j c_j, s_j */
} F(fs_block);

/* Apply the first n examples of the block: finish their gradients, then
 * U, Uinv and M.  H is the block's first row; s_n = sig_n (rho^n). */
static void F(fs_flush)(F(fs_block) *b, int n, int update, double lr,
                        double s_n, const T *H, T *U, T *Uinv, T *M,
                        T *grad)
{
    const int d = b->d;
    /* one example: U0^T z and U's update in one pass over U (fs_blas.h) */
    const int fused = FS_USE_AVX2 && n == 1 && update
                      && (ptrdiff_t)d * d > FS_SMALL;
    if (n == 0)
        return;
    /* dL/dh_i += s_i (U0^T z_i - sum_{j<i} alpha_j (u_j . z_i) h_j) */
    if (fused)
        F(fs_gemv_t_ger_avx2)(d, d, b->Z, U, d, (T)s_n,
                              (T)(-s_n * b->alpha[0]), b->Bu, H, b->X);
    else
        F(fs_gemm)(0, 0, n, d, d, 1, b->Z, d, U, d, 0, b->X, d);
    if (update && n > 1) {
        F(fs_gemm)(0, 1, n, n, d, 1, b->Z, d, b->Bu, d, 0, b->G, n);
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < n; ++j)
                b->G[i * n + j] = j < i ? (T)(b->alpha[j] * b->G[i * n + j]) : 0;
        F(fs_gemm)(0, 0, n, d, n, -1, b->G, n, H, d, 1, b->X, d);
    }
    for (int i = 0; i < n; ++i) {
        const T s = (T)b->sig[i];
        T *g = grad + (ptrdiff_t)i * d;
        const T *x = b->X + (ptrdiff_t)i * d;
        for (int c = 0; c < d; ++c)
            g[c] += s * x[c];
    }
    if (!update)
        return;
    /* M += -lr (W^T Y + Y^T W) */
    F(fs_syr2k_upper_trans)(d, n, (T)(-lr), b->Tw, d, b->Y, d, 1, M, d);
    /* U = s_n (U0 - sum_j alpha_j u_j h_j^T) */
    for (int j = 0; !fused && j < n; ++j) {
        T *u = b->Bu + (ptrdiff_t)j * d;
        const T a = (T)b->alpha[j];
        for (int c = 0; c < d; ++c)
            u[c] *= a;
    }
    if (!fused) {
        if (s_n != 1.0)
            for (ptrdiff_t c = 0; c < (ptrdiff_t)d * d; ++c)
                U[c] *= (T)s_n;
        F(fs_gemm)(1, 0, d, d, n, (T)(-s_n), b->Bu, d, H, d, 1, U, d);
    }
    /* Uinv = (Uinv0 + sum_j s_j c_j h_j w_j^T) / s_n */
    for (int j = 0; j < n; ++j) {
        T *w = b->Tw + (ptrdiff_t)j * d;
        const T a = (T)b->sc[j];
        for (int c = 0; c < d; ++c)
            w[c] *= a;
    }
    if (s_n != 1.0)
        for (ptrdiff_t c = 0; c < (ptrdiff_t)d * d; ++c)
            Uinv[c] *= (T)(1.0 / s_n);
    F(fs_gemm)(1, 0, d, d, n, (T)(1.0 / s_n), H, d, b->Tw, d, 1, Uinv, d);
}

int F(fs_online)(ptrdiff_t D, int d, T *V, T *U, T *Uinv, T *M, T *omega,
                 T *sv, ptrdiff_t m, const T *H, const int64_t *indptr,
                 const int64_t *indices, const T *values,
                 const fs_loss_spec *spec, ptrdiff_t block, fs_control *ctl,
                 T *loss_out, T *grad_out)
{
    const int update = ctl->lr != 0;
    const int keep_s = omega != NULL;
    const double rho = update ? 1.0 - ctl->lr * ctl->wd : 1.0;
    /* weight decay (§3.3): each update with lr / rho, then W <- rho W */
    const double lr = rho != 1.0 ? ctl->lr / rho : ctl->lr;
    const double Dn = (double)D, lim = ctl->norm_limit;
    const double cond2 = ctl->cond_limit * ctl->cond_limit;
    const double scale2 = ctl->scale_limit * ctl->scale_limit;
    ptrdiff_t k = block < 1 ? 1 : block, kmax = 1;
    int status = FS_OK;
    ctl->done = 0;
    ctl->bad = -1;
    ctl->n_split = 0;
    ctl->min_factor = INFINITY;
    if (m <= 0)
        return FS_OK;
    if (k > m)
        k = m;
    {   /* blocks of (nearly) equal size, not a short last block (a GEMM of
         * one or two rows costs about as much as one of k rows) */
        const ptrdiff_t nblocks = (m + k - 1) / k;
        k = (m + nblocks - 1) / nblocks;
    }
    for (ptrdiff_t i = 0; i < m; ++i)
        if (indptr[i + 1] - indptr[i] > kmax)
            kmax = indptr[i + 1] - indptr[i];

    const ptrdiff_t kd = k * d;
    T *work = malloc((size_t)(5 * kd + k * k + 2 * k + 2 * (ptrdiff_t)d
                              + 2 * kmax) * sizeof(T));
    double *dwork = malloc((size_t)(3 * (k + 1)) * sizeof(double));
    if (work == NULL || dwork == NULL) {
        free(work);
        free(dwork);
        return FS_NOMEM;
    }
    F(fs_block) b;
    b.d = d;
    b.k = (int)k;
    b.Bu = work;
    b.X = b.Bu + kd;
    b.Tw = b.X + kd;
    b.Y = b.Tw + kd;
    b.Z = b.Y + kd;
    b.G = b.Z + kd;
    b.e = b.G + k * k;
    b.p = b.e + k;
    T *Mu = b.p + k;        /* d: M_i u_i */
    T *vty = Mu + d;        /* d: V^T ydot (rows before the update) */
    T *a = vty + d;         /* kmax */
    T *ga = a + kmax;       /* kmax */
    b.alpha = dwork;
    b.sc = dwork + (k + 1);
    b.sig = dwork + 2 * (k + 1);
    double smax2 = ctl->smax2, sinv2 = ctl->sinv2, mnorm = ctl->mnorm;

    for (ptrdiff_t i0 = 0; i0 < m && status == FS_OK; i0 += k) {
        const int nb = (int)(m - i0 < k ? m - i0 : k);
        const T *Hb = H + i0 * d;
        int n = 0;          /* examples of the block processed */
        double trM = 0.0;   /* trace of M_i = ||V||_F^2 */
        for (int c = 0; c < d; ++c)
            trM += M[(ptrdiff_t)c * d + c];
        /* products with the block-start state (the block's target rows,
         * cache misses, load meanwhile) */
        F(fs_prefetch_rows)(V, d, indices + indptr[i0],
                            indptr[i0 + nb] - indptr[i0], d);
        F(fs_gemm)(0, 1, nb, d, d, 1, Hb, d, U, d, 0, b.Bu, d);
        F(fs_symm_right_upper)(nb, d, 1, M, d, b.Bu, d, 0, b.X, d);
        F(fs_gemm)(0, 0, nb, d, d, 1, Hb, d, Uinv, d, 0, b.Tw, d);
        if (update && nb > 1)
            F(fs_gemm)(0, 1, nb, nb, d, 1, Hb, d, Hb, d, 0, b.G, nb);
        b.sig[0] = 1.0;
        for (int i = 0; i < nb; ++i) {
            const ptrdiff_t gi = i0 + i;
            const T *h = Hb + (ptrdiff_t)i * d;
            const ptrdiff_t K = indptr[gi + 1] - indptr[gi];
            const int64_t *idx = indices + indptr[gi];
            T *u = b.Bu + (ptrdiff_t)i * d;
            /* the next example's target rows (those past the block-start
             * prefetch's budget are cache misses): load them meanwhile */
            if (gi + 1 < m)
                F(fs_prefetch_rows)(V, d, indices + indptr[gi + 1],
                                    indptr[gi + 2] - indptr[gi + 1], d);
            T *x = b.X + (ptrdiff_t)i * d;
            T *t = b.Tw + (ptrdiff_t)i * d;
            T *z = b.Z + (ptrdiff_t)i * d;
            T *y = b.Y + (ptrdiff_t)i * d;
            const double s_i = b.sig[i];
            double q, qu, s, oh = 0.0, svu = 0.0, L, gq, gs, c, r, hh,
                   sga = 0.0, ga2 = 0.0;
            int split;
            /* the state at example i: corrections for examples j < i */
            if (update && i > 0) {
                for (int j = 0; j < i; ++j)
                    b.e[j] = (T)(b.alpha[j] * b.G[j * nb + i]);
                F(fs_gemv)(1, i, d, -1, b.Bu, d, b.e, 1, 1, u, 1);
                F(fs_gemv)(1, i, d, -1, b.X, d, b.e, 1, 1, x, 1);
                for (int j = 0; j < i; ++j)
                    b.e[j] = (T)(b.sc[j] * b.G[j * nb + i]);
                F(fs_gemv)(1, i, d, 1, b.Tw, d, b.e, 1, 1, t, 1);
                if (s_i != 1.0) {
                    for (int c2 = 0; c2 < d; ++c2) {
                        u[c2] *= (T)s_i;
                        x[c2] *= (T)s_i;
                        t[c2] *= (T)(1.0 / s_i);
                    }
                }
                /* M_i u = M0 u - lr (W^T (Y u) + Y^T (W u)) */
                memcpy(Mu, x, d * sizeof(T));
                F(fs_gemv)(0, i, d, 1, b.Y, d, u, 1, 0, b.p, 1);
                F(fs_gemv)(1, i, d, (T)(-lr), b.Tw, d, b.p, 1, 1, Mu, 1);
                F(fs_gemv)(0, i, d, 1, b.Tw, d, u, 1, 0, b.p, 1);
                F(fs_gemv)(1, i, d, (T)(-lr), b.Y, d, b.p, 1, 1, Mu, 1);
            } else {
                memcpy(Mu, x, d * sizeof(T));
            }
            /* forward: q = ||o||^2, s = sum(o), outputs at the targets */
            qu = q = F(fs_dot)(d, u, Mu);
            if (keep_s) {
                oh = F(fs_dot)(d, omega, h);
                svu = F(fs_dot)(d, sv, u);
                q += 2.0 * svu * oh + Dn * oh * oh;
            }
            s = svu + Dn * oh;
            F(fs_gather_dots)(V, d, idx, K, u, d, a);
            for (ptrdiff_t kk = 0; kk < K; ++kk)
                a[kk] += (T)oh;
            status = F(fs_eval_loss)(spec, K, a, values + indptr[gi], q, s, &L,
                                     ga, &gq, &gs);
            if (status != FS_OK) {
                ctl->bad = gi;
                break;
            }
            hh = F(fs_dot)(d, h, h);
            c = 2.0 * lr * gq;
            r = 1.0 - c * hh;
            /* z = V^T ydot + 2 gq (M u + oh sv) + gs sv;
             * dL/dh = U^T z (at the flush) + (2 gq s + D gs + sum ga) omega */
            F(fs_gather_combine)(V, d, idx, ga, K, d, vty);
            for (ptrdiff_t kk = 0; kk < K; ++kk) {
                sga += ga[kk];
                ga2 += (double)ga[kk] * ga[kk];
            }
            {
                const T c1 = (T)(2.0 * gq);
                const T c2 = (T)(2.0 * gq * oh + gs);
                T *g = grad_out + gi * d;
                for (int cc = 0; cc < d; ++cc)
                    z[cc] = vty[cc] + c1 * Mu[cc];
                if (keep_s) {
                    const T cw = (T)(2.0 * gq * s + Dn * gs + sga);
                    for (int cc = 0; cc < d; ++cc) {
                        z[cc] += c2 * sv[cc];
                        g[cc] = cw * omega[cc];
                    }
                } else {
                    memset(g, 0, d * sizeof(T));
                }
            }
            /* dL/dh = U^T z + cw omega is written at the block's flush,
             * after the updates: its bound (||U|| <= sqrt(smax2)) refuses
             * here an example whose gradient could overflow T */
            if (!(F(fs_finite)(d, u) && F(fs_finite)(d, t) && F(fs_finite)(d, z)
                  && isfinite((T)L)
                  && sqrt(smax2 * F(fs_dot)(d, z, z))
                     + (keep_s ? fabs(2.0 * gq * s + Dn * gs + sga)
                                 * F(fs_amax)(d, omega) : 0.0) <= FS_OUT_MAX)) {
                ctl->bad = gi;
                status = FS_NONFINITE;
                break;
            }
            if (!update) {
                loss_out[gi] = (T)L;
                n = i + 1;
                b.alpha[i] = b.sc[i] = 0.0;
                b.sig[i + 1] = 1.0;
                continue;
            }
            if (fabs(r) < ctl->min_factor)
                ctl->min_factor = fabs(r);
            /* a factor r near 0 goes to V (§4.1): U and Uinv stay, V <- V C
             * with C = I - c u t^T, and V's targets move along w = t */
            split = fabs(r) < ctl->split;
            {
                /* the update's vectors and the bounds of the state after it,
                 * before anything is written (§5, §6) */
                const double tt = F(fs_dot)(d, t, t);
                const double uu = F(fs_dot)(d, u, u);
                double nsmax2 = smax2, nsinv2 = sinv2, wmax, ok;
                const T inv_r = split ? (T)1 : (T)(1.0 / r);
                double vc = 0.0;
                if (!split) {
                    if (fabs(r) <= 1.0)
                        nsinv2 += tt * c * (1.0 + r) / (r * r);
                    else
                        nsmax2 -= c * uu * (1.0 + r);
                } else {
                    vc = c * F(fs_dot)(d, u, vty);
                }
                nsmax2 *= rho * rho;
                nsinv2 /= rho * rho;
                /* w = t / r (t itself for a split), in place; y */
                for (int cc = 0; cc < d; ++cc)
                    t[cc] *= inv_r;
                for (int cc = 0; cc < d; ++cc) {
                    double yc = vty[cc] - vc * t[cc] - 0.5 * lr * ga2 * t[cc];
                    if (split)
                        yc += (c * Mu[cc] - 0.5 * c * c * qu * t[cc]) / lr;
                    y[cc] = (T)yc;
                }
                wmax = F(fs_amax)(d, t);
                {
                    const double wy = F(fs_dot)(d, t, y);
                    const double nm = mnorm + 2.0 * lr * sqrt(F(fs_dot)(d, t, t)
                                                              * F(fs_dot)(d, y, y));
                    ok = F(fs_finite)(d, y) && sqrt(nsmax2) <= lim
                         && sqrt(nsinv2) <= lim && nm <= lim
                         && (cond2 <= 0 || nsmax2 * nsinv2
                                           <= FS_COND_HARD * FS_COND_HARD);
                    trM -= 2.0 * lr * wy;
                    mnorm = nm;
                }
                for (ptrdiff_t kk = 0; ok && kk < K; ++kk) {
                    const T *row = V + idx[kk] * d;
                    double bound = F(fs_amax)(d, row) + fabs(lr * ga[kk]) * wmax;
                    if (split)
                        bound += fabs(c * F(fs_dot)(d, row, u)) * wmax;
                    ok = bound <= lim;
                }
                if (ok && split)
                    ok = sqrt(fabs(trM)) * (1.0 + fabs(c) * sqrt(uu * tt)) <= lim;
                if (ok && keep_s) {
                    const double bs = F(fs_amax)(d, sv)
                                      + (fabs(lr * sga) + fabs(c * svu)) * wmax;
                    const double bo = F(fs_amax)(d, omega)
                                      + fabs(lr * (2.0 * gq * oh + gs))
                                        * F(fs_amax)(d, h);
                    ok = bs <= lim && bo <= lim;
                }
                if (!ok) {
                    ctl->bad = gi;
                    status = FS_OVERFLOW;
                    break;
                }
                smax2 = nsmax2;
                sinv2 = nsinv2;
            }
            loss_out[gi] = (T)L;
            n = i + 1;
            if (split) {
                const T gam = (T)(-c);
                status = F(fs_lowrank_rows)(V, D, d, 1, u, t, &gam);
                if (status != FS_OK) {   /* nothing of it written */
                    ctl->bad = gi;
                    n = i;
                    break;
                }
                ctl->n_split += 1;
            }
            /* V rows, sv, omega */
            for (ptrdiff_t kk = 0; kk < K; ++kk)
                a[kk] = (T)(-lr * ga[kk]);      /* a: scratch now */
            F(fs_scatter_axpy)(V, d, idx, a, K, d, t, 1);
            if (keep_s) {
                const T cs = (T)(-lr * sga - (split ? c * svu : 0.0));
                const T co = (T)(-lr * (2.0 * gq * oh + gs));
                for (int cc = 0; cc < d; ++cc) {
                    sv[cc] += cs * t[cc];
                    omega[cc] += co * h[cc];
                }
                if (rho != 1.0)
                    for (int cc = 0; cc < d; ++cc)
                        omega[cc] *= (T)rho;
            }
            b.alpha[i] = split ? 0.0 : c / s_i;
            b.sc[i] = split ? 0.0 : s_i * c;
            b.sig[i + 1] = rho * s_i;
            if (gi + 1 < m && ((cond2 > 0 && smax2 * sinv2 > cond2)
                               || (scale2 > 0 && (smax2 > scale2 || sinv2 > scale2)))) {
                status = FS_CHECK;      /* stop after this example */
                break;
            }
        }
        F(fs_flush)(&b, n, update, lr, b.sig[n], Hb, U, Uinv, M,
                    grad_out + i0 * d);
        ctl->done = i0 + n;
    }
    ctl->smax2 = smax2;
    ctl->sinv2 = sinv2;
    ctl->mnorm = mnorm;
    free(work);
    free(dwork);
    return status;
}

/* ------------------------------------------------- minibatch mode (§2) */

/* the largest ||K^{-T} - I||_inf whose product with H Uinv is taken in T */
#define FS_SMALL_STEP 0.0625
/* the largest system K inverted by Gauss-Jordan (against SciPy's LAPACK
 * getrf + getrs: 5-7 against 13 us at 32, 14-21 against 27 at 48, equal
 * at 64) */
#define FS_GJ_MAX 48

/* H U^T, (H U^T) M, q, s, omega.h, sv.(U h) and the outputs a at the
 * targets (CSR order) for the m rows of H; vmax (unless NULL): max |V[j]|
 * of each target row j (CSR order), taken while the row is in cache. */
static void F(fs_forward_core)(ptrdiff_t D, int d, const T *V, const T *U,
                               const T *M, const T *omega, const T *sv, int m,
                               const T *H, const int64_t *indptr,
                               const int64_t *indices, T *HU, T *HUM, T *a,
                               double *q, double *s, double *Ho, double *svu,
                               double *vmax)
{
    /* the target rows are cache misses: loaded first, overlapping each
     * other (fs_touch_rows: hints for all of them were mostly dropped) */
    F(fs_touch_rows)(V, d, indices, indptr[m], d);
    /* HU = H U^T: by fs_gemm's AVX2 loop where it takes it (U's strips
     * transposed as it packs them); else as (U H^T)^T: OpenBLAS computes
     * U H^T (U not transposed, as the operand it packs second) faster
     * (measured at m = 32, d = 128: 15.8 against 22.0 us; m = 128, d = 512:
     * 0.76 against 0.84 ms), the d x m result through HUM's space.  (A few
     * rows: the BLAS-2 routines, through the wrapper.) */
    if (m >= 4 && !(sizeof(T) == sizeof(float)
                    && fs_gemm_small_takes(0, 1, m, d, d))) {
        F(fs_gemm)(0, 1, d, m, d, 1, U, d, H, d, 0, HUM, m);
        F(fs_transpose)(d, m, HUM, m, HU, d);
    } else {
        F(fs_gemm)(0, 1, m, d, d, 1, H, d, U, d, 0, HU, d);
    }
    F(fs_symm_right_upper)(m, d, 1, M, d, HU, d, 0, HUM, d);
    for (int i = 0; i < m; ++i) {
        const T *hu = HU + (ptrdiff_t)i * d;
        q[i] = F(fs_dot)(d, hu, HUM + (ptrdiff_t)i * d);
        Ho[i] = svu[i] = 0.0;
        if (omega != NULL) {
            Ho[i] = F(fs_dot)(d, H + (ptrdiff_t)i * d, omega);
            svu[i] = F(fs_dot)(d, hu, sv);
            q[i] += 2.0 * svu[i] * Ho[i] + (double)D * Ho[i] * Ho[i];
        }
        s[i] = svu[i] + (double)D * Ho[i];
        F(fs_gather_dots)(V, d, indices + indptr[i], indptr[i + 1] - indptr[i],
                           hu, d, a + indptr[i]);
        for (int64_t p = indptr[i]; p < indptr[i + 1]; ++p) {
            a[p] += (T)Ho[i];
            if (vmax != NULL)
                vmax[p] = F(fs_amax)(d, V + indices[p] * d);
        }
    }
}

int F(fs_forward)(ptrdiff_t D, int d, const T *V, const T *U, const T *M,
                  const T *omega, const T *sv, int m, const T *H,
                  const int64_t *indptr, const int64_t *indices, T *a_out,
                  double *q_out, double *s_out)
{
    if (m <= 0)
        return FS_OK;
    T *work = malloc((size_t)2 * m * d * sizeof(T));
    double *dwork = malloc((size_t)2 * m * sizeof(double));
    if (work == NULL || dwork == NULL) {
        free(work);
        free(dwork);
        return FS_NOMEM;
    }
    F(fs_forward_core)(D, d, V, U, M, omega, sv, m, H, indptr, indices, work,
                       work + (ptrdiff_t)m * d, a_out, q_out, s_out, dwork,
                       dwork + m, NULL);
    free(work);
    free(dwork);
    return FS_OK;
}

/* The spectrum of a minibatch update (§4.2): A = I - H^T diag(dv) H has
 * eigenvalues 1 on the orthogonal complement of span(H^T) and lam = 1 - mu
 * on it, mu the eigenvalues of a small symmetric matrix S:
 *   m <= d, dv >= 0:  S = diag(sqrt dv) H H^T diag(sqrt dv)  (m x m);
 *   m <= d, mixed:    S = R diag(dv) R^T with H^T = Q R        (m x m);
 *   m > d, or mixed and m >= 0.8 d:   S = H^T diag(dv) H      (d x d).
 * Returns the number k of eigenvalues with |lam| < split (0 excluded: 1 - 0
 * is no eigenvalue of S's null space), their unit eigenvectors as the rows
 * of N (k x d, double) and E = 1 - lam; lam_lo/lam_hi: the smallest and
 * largest |lam| of the others (1 included), *min_abs the smallest |lam| of
 * all.  When the Frobenius norm of S proves every |lam| >= split, they are
 * the bounds it gives (1 -/+ ||S||_F) and no eigenvalue is computed.
 * -1: out of memory or a LAPACK failure. */
static int F(fs_spectrum)(int m, int d, const T *H, const T *HHt,
                          const double *dv, double split, double *N,
                          double *E, double *lam_lo, double *lam_hi,
                          double *min_abs)
{
    int mode = 0, p, info = 0, k = 0;
    for (int i = 0; i < m; ++i)
        if (dv[i] < 0)
            mode = 1;
    {   /* every |mu| <= ||S||_2 <= ||S||_F, and ||S||_F^2 = sum_ij dv_i dv_j
         * (h_i . h_j)^2 whatever the signs: when that bound keeps every
         * 1 - mu away from the split, no eigenvalue is needed (the common
         * case of small steps); the bounds then stand for lam_lo/hi */
        double f2 = 0.0;
        for (int i = 0; i < m; ++i) {
            const T *gi = HHt + (ptrdiff_t)i * m;
            double acc = 0.0;
            for (int j = 0; j < m; ++j)
                acc += dv[j] * (double)gi[j] * (double)gi[j];
            f2 += dv[i] * acc;
        }
        /* (1 + 1e-3: room for the rounding of H H^T, as the eigenvalues
         * computed from it below have) */
        const double b = sqrt(fabs(f2)) * (1.0 + 1e-3);
        if (b < 1.0 - split) {
            *lam_lo = *min_abs = 1.0 - b;
            *lam_hi = mode == 1 ? 1.0 + b : 1.0;
            return 0;
        }
    }
    /* mixed signs need a QR of H^T (O(d m^2)) and an m x m product: from
     * m >= 0.8 d on, the d x d form is cheaper (one gemm) */
    if (m > d || (mode == 1 && 5 * m >= 4 * d))
        mode = 2;
    p = mode == 2 ? d : m;
    const int lwork = 66 * (m > d ? m : d) + 1;
    double *Sm = malloc((size_t)p * p * sizeof(double));
    double *S2 = malloc((size_t)p * p * sizeof(double));
    double *w = malloc((size_t)p * sizeof(double));
    double *wk = malloc((size_t)lwork * sizeof(double));
    double *A = NULL, *B = NULL, *tau = NULL;
    const char jn = 'N', jv = 'V', up = 'U';
    if (Sm == NULL || S2 == NULL || w == NULL || wk == NULL)
        goto fail;
    if (mode == 0) {
        for (int i = 0; i < m; ++i)
            for (int j = 0; j < m; ++j)
                Sm[(ptrdiff_t)i * m + j] = sqrt(dv[i]) * (double)HHt[(ptrdiff_t)i * m + j]
                                          * sqrt(dv[j]);
    } else {
        A = malloc((size_t)m * d * sizeof(double));
        B = malloc((size_t)m * d * sizeof(double));
        tau = malloc((size_t)m * sizeof(double));
        if (A == NULL || B == NULL || tau == NULL)
            goto fail;
        for (ptrdiff_t c = 0; c < (ptrdiff_t)m * d; ++c)
            A[c] = H[c];
        if (mode == 2) {    /* Sm = H^T diag(dv) H */
            for (int i = 0; i < m; ++i)
                for (int c = 0; c < d; ++c)
                    B[(ptrdiff_t)i * d + c] = dv[i] * A[(ptrdiff_t)i * d + c];
            fs_gemm_d(1, 0, d, d, m, 1.0, A, d, B, d, 0.0, Sm, d);
        } else {            /* H^T = Q R: H's row-major layout is H^T's
                             * column-major one (d x m, leading dim d) */
            fs_blas.dgeqrf(&d, &m, A, &d, tau, wk, &lwork, &info);
            if (info != 0)
                goto fail;
            /* B (m x m, row a = row a of R, then scaled) ; Sm = B diag R^T */
            for (int a1 = 0; a1 < m; ++a1)
                for (int i = 0; i < m; ++i)
                    B[(ptrdiff_t)a1 * m + i] = i >= a1 ? A[a1 + (ptrdiff_t)i * d] : 0.0;
            for (int a1 = 0; a1 < m; ++a1)
                for (int a2 = 0; a2 < m; ++a2) {
                    double acc = 0.0;
                    const double *r1 = B + (ptrdiff_t)a1 * m, *r2 = B + (ptrdiff_t)a2 * m;
                    for (int i = (a1 > a2 ? a1 : a2); i < m; ++i)
                        acc += dv[i] * r1[i] * r2[i];
                    Sm[(ptrdiff_t)a1 * m + a2] = acc;
                }
        }
    }
    memcpy(S2, Sm, (size_t)p * p * sizeof(double));
    fs_blas.dsyev(&jn, &up, &p, S2, &p, w, wk, &lwork, &info);
    if (info != 0)
        goto fail;
    *lam_lo = *lam_hi = *min_abs = 1.0;
    for (int j = 0; j < p; ++j) {
        const double lam = fabs(1.0 - w[j]);
        if (lam < *min_abs)
            *min_abs = lam;
        if (lam < split && w[j] != 0.0) {
            ++k;
        } else {
            if (lam < *lam_lo)
                *lam_lo = lam;
            if (lam > *lam_hi)
                *lam_hi = lam;
        }
    }
    if (k == 0)
        goto done;
    /* eigenvectors of the near-singular ones (rare) */
    fs_blas.dsyev(&jv, &up, &p, Sm, &p, w, wk, &lwork, &info);
    if (info != 0)
        goto fail;
    if (mode == 1) {    /* Q, d x m, in A */
        fs_blas.dorgqr(&d, &m, &m, A, &d, tau, wk, &lwork, &info);
        if (info != 0)
            goto fail;
    }
    k = 0;
    /* N and E hold min(m, d) rows: the rank of H^T diag(dv) H (the d x d
     * form with m < d has d - m zero eigenvalues, never near 1) */
    for (int j = 0; j < p && k < (m < d ? m : d); ++j) {
        const double lam = 1.0 - w[j];
        const double *zj = Sm + (ptrdiff_t)j * p;    /* eigenvector j */
        double *nj = N + (ptrdiff_t)k * d, nn = 0.0;
        if (!(fabs(lam) < split && w[j] != 0.0))
            continue;
        for (int c = 0; c < d; ++c) {
            double acc = 0.0;
            if (mode == 2)
                acc = zj[c];
            else if (mode == 1)
                for (int a1 = 0; a1 < m; ++a1)
                    acc += A[c + (ptrdiff_t)a1 * d] * zj[a1];
            else
                for (int i = 0; i < m; ++i)
                    acc += (double)H[(ptrdiff_t)i * d + c] * sqrt(dv[i]) * zj[i];
            nj[c] = acc;
        }
        /* orthonormalise against the previous ones (exactness does not
         * depend on it, the conditioning of the step does) */
        for (int l = 0; l < k; ++l) {
            const double *nl = N + (ptrdiff_t)l * d;
            double pr = 0.0;
            for (int c = 0; c < d; ++c)
                pr += nl[c] * nj[c];
            for (int c = 0; c < d; ++c)
                nj[c] -= pr * nl[c];
        }
        for (int c = 0; c < d; ++c)
            nn += nj[c] * nj[c];
        if (!(nn > 0))
            continue;
        nn = 1.0 / sqrt(nn);
        for (int c = 0; c < d; ++c)
            nj[c] *= nn;
        E[k] = 1.0 - lam;
        ++k;
    }
done:
    free(Sm); free(S2); free(w); free(wk); free(A); free(B); free(tau);
    return k;
fail:
    free(Sm); free(S2); free(w); free(wk); free(A); free(B); free(tau);
    return -1;
}

/* row = (T)(row + cf p), in double (functions of their own, with
 * restrict: vectorised; portable and AVX2 copies as for fs_dot) */
#define FS_ADD_ROW_BODY                                                       \
    for (ptrdiff_t c = 0; c < d; ++c)                                         \
        row[c] = (T)((double)row[c] + cf * p[c]);
FS_TWO_COPIES(void, fs_add_row, (ptrdiff_t d, double cf, const T *restrict p,
                                 T *restrict row), FS_ADD_ROW_BODY)
#undef FS_ADD_ROW_BODY

/* V[indices[p]] += coef ga[p] P[i] for every target p of every example i,
 * from the targets grouped by row of V (fs_csr_gram_add, fs_groups): the
 * terms of one row summed in double, in the examples' order, and rounded
 * into V once.  acc: d doubles. */
static void F(fs_add_rows)(T *V, int d, const fs_groups *g, const T *ga,
                           double coef, const T *P, double *acc)
{
    for (ptrdiff_t h = 0; h < g->t; ++h) {
        if (g->key[h] == -1)
            continue;
        int64_t e = g->head[h];
        T *row = V + g->key[h] * d;
        if (g->next[e] < 0) {
            /* a row of one example (the common case): the same sum and
             * rounding in one pass */
            FS_PICK(fs_add_row)(d, coef * ga[e], P + g->row[e] * d, row);
            continue;
        }
        for (int c = 0; c < d; ++c)
            acc[c] = row[c];
        for (; e >= 0; e = g->next[e]) {
            const double cf = coef * ga[e];
            const T *pi = P + g->row[e] * d;
            for (int c = 0; c < d; ++c)
                acc[c] += cf * pi[c];
        }
        for (int c = 0; c < d; ++c)
            row[c] = (T)acc[c];
    }
}

int F(fs_batch)(ptrdiff_t D, int d, T *V, T *U, T *Uinv, T *M, T *omega,
                T *sv, int m, const T *H, const int64_t *indptr,
                const int64_t *indices, const T *values,
                const fs_loss_spec *spec, const T *ga_in,
                const double *gq_in, const double *gs_in, fs_control *ctl,
                T *loss_out, T *grad_out)
{
    const int keep_s = omega != NULL;
    const int update = ctl->lr != 0;
    const double rho = update ? 1.0 - ctl->lr * ctl->wd : 1.0;
    const double lr = rho != 1.0 ? ctl->lr / rho : ctl->lr;
    const double Dn = (double)D, lim = ctl->norm_limit;
    const ptrdiff_t md = (ptrdiff_t)m * d, mm = (ptrdiff_t)m * m;
    const ptrdiff_t nnz = indptr[m];
    const int pmax = m < d ? m : d;     /* at most this many splits */
    const ptrdiff_t ed = (ptrdiff_t)(m + pmax) * d;
    int status = FS_OK, k = 0, me = m;
    ctl->done = 0;
    ctl->bad = -1;
    ctl->n_split = 0;
    ctl->min_factor = INFINITY;
    if (m <= 0)
        return FS_OK;
    /* the workspace in two blocks, one before the spectrum of the update
     * and one sized by it (many separate blocks made glibc give the memory
     * back to the system at every call, and fault it in again: measured
     * 17 % of a step at m = 128, d = 512 in a C program) */
    fs_ws wa = {NULL, 0}, wb = {NULL, 0};
    T *Hx = NULL, *HHe = NULL, *Pe = NULL, *Zt = NULL, *Pf = NULL, *X = NULL,
      *Hg = NULL, *YY = NULL, *kx = NULL, *T1 = NULL, *Rf = NULL,
      *HU, *HUM, *R, *Z, *av;
    double *N = NULL, *Km = NULL, *Ki = NULL, *Ped = NULL, *Pfd = NULL,
           *vmax = NULL, *dw;
    double *acc = NULL;
    int64_t *gw = NULL;     /* the targets grouped by row of V */
    int *ipiv = NULL;
    for (int pass = 0; pass < 2; ++pass) {  /* sizes, then the pieces */
        if (pass == 1 && fs_ws_alloc(&wa) != 0)
            return FS_NOMEM;
        dw = FS_TAKE(&wa, 8 * m + 2 * pmax, double);
        if (update) {
            N = FS_TAKE(&wa, (ptrdiff_t)pmax * d, double);
            HHe = FS_TAKE(&wa, (ptrdiff_t)(m + pmax) * (m + pmax), T);
            vmax = FS_TAKE(&wa, nnz + 1, double);
        }
        HU = FS_TAKE(&wa, ed, T);                       /* (m + k) x d */
        HUM = FS_TAKE(&wa, md, T);
        R = FS_TAKE(&wa, md, T);
        Z = FS_TAKE(&wa, md, T);
        av = FS_TAKE(&wa, 2 * nnz + 1, T);
    }
    T *a = av, *ga = av + nnz;
    double *q = dw, *s = q + m, *Ho = s + m, *svu = Ho + m, *gq = svu + m,
           *gs = gq + m, *ysum = gs + m, *dv = ysum + m, *E = dv + m + pmax;

    F(fs_forward_core)(D, d, V, U, M, omega, sv, m, H, indptr, indices, HU,
                       HUM, a, q, s, Ho, svu, vmax);
    if (ga_in == NULL) {
        for (int i = 0; i < m; ++i) {
            double L;
            status = F(fs_eval_loss)(spec, indptr[i + 1] - indptr[i],
                                     a + indptr[i], values + indptr[i], q[i],
                                     s[i], &L, ga + indptr[i], gq + i, gs + i);
            if (status == FS_OK && !isfinite((T)L))
                status = FS_NONFINITE;
            if (status != FS_OK) {
                ctl->bad = i;
                goto out;
            }
            loss_out[i] = (T)L;
        }
    } else {
        memcpy(ga, ga_in, (size_t)nnz * sizeof(T));
        memcpy(gq, gq_in, (size_t)m * sizeof(double));
        memcpy(gs, gs_in, (size_t)m * sizeof(double));
    }

    /* R = Ydot V ; Z = R + 2 diag(gq) (H U^T M + Ho sv^T) + gs sv^T
     * grad_H = Z U + (2 gq s + D gs + ysum) omega^T */
    for (int i = 0; i < m; ++i) {
        F(fs_gather_combine)(V, d, indices + indptr[i], ga + indptr[i],
                              indptr[i + 1] - indptr[i], d, R + (ptrdiff_t)i * d);
        ysum[i] = 0.0;
        for (int64_t p = indptr[i]; p < indptr[i + 1]; ++p)
            ysum[i] += ga[p];
    }
    memcpy(Z, R, (size_t)md * sizeof(T));
    for (int i = 0; i < m; ++i) {
        T *zi = Z + (ptrdiff_t)i * d;
        const T *hum = HUM + (ptrdiff_t)i * d;
        const T c1 = (T)(2.0 * gq[i]);
        for (int c = 0; c < d; ++c)
            zi[c] += c1 * hum[c];
        if (keep_s) {
            const T c2 = (T)(2.0 * gq[i] * Ho[i] + gs[i]);
            for (int c = 0; c < d; ++c)
                zi[c] += c2 * sv[c];
        }
    }
    F(fs_gemm)(0, 0, m, d, d, 1, Z, d, U, d, 0, grad_out, d);
    if (keep_s)
        for (int i = 0; i < m; ++i) {
            const T cw = (T)(2.0 * gq[i] * s[i] + Dn * gs[i] + ysum[i]);
            T *g = grad_out + (ptrdiff_t)i * d;
            for (int c = 0; c < d; ++c)
                g[c] += cw * omega[c];
        }
    if (!(F(fs_finite)(md, grad_out) && F(fs_finite)(md, HU))) {
        status = FS_NONFINITE;
        goto out;
    }
    if (!update)
        goto out;

    /* ---- the update A = I - H^T diag(dv) H, dv = 2 lr gq, and its
     * near-singular directions (§4.2) */
    for (int i = 0; i < m; ++i)
        dv[i] = 2.0 * lr * gq[i];
    F(fs_gram_rows)(m, d, H, d, HHe, m);
    if (!F(fs_finite)(mm, HHe)) {   /* H's rows are finite, H H^T overflowed */
        status = FS_OVERFLOW;
        goto out;
    }
    double lam_lo, lam_hi, min_abs, nsmax2 = 0.0, nsinv2 = 0.0;
    k = F(fs_spectrum)(m, d, H, HHe, dv, ctl->split, N, E, &lam_lo, &lam_hi,
                       &min_abs);
    if (k < 0) {
        status = FS_NOMEM;
        k = 0;
        goto out;
    }
    ctl->min_factor = min_abs;
    me = m + k;
    for (int pass = 0; pass < 2; ++pass) {  /* sizes, then the pieces */
        const ptrdiff_t med = (ptrdiff_t)me * d;
        if (pass == 1 && fs_ws_alloc(&wb) != 0) {
            status = FS_NOMEM;
            goto out;
        }
        Ki = FS_TAKE(&wb, (ptrdiff_t)me * me, double);
        /* the LU (or the inverse's workspace) */
        Km = FS_TAKE(&wb, me > FS_GJ_MAX ? (ptrdiff_t)me * me : me, double);
        X = FS_TAKE(&wb, (ptrdiff_t)me * me, T);
        if (sizeof(T) != sizeof(double)) {     /* large steps, below */
            Ped = FS_TAKE(&wb, med, double);
            Pfd = FS_TAKE(&wb, med, double);
        }
        ipiv = FS_TAKE(&wb, me, int);
        Pe = FS_TAKE(&wb, med, T);
        Zt = FS_TAKE(&wb, med, T);
        Pf = FS_TAKE(&wb, med, T);
        Hg = FS_TAKE(&wb, med, T);
        Hx = k > 0 ? FS_TAKE(&wb, med, T) : (T *)H;
        YY = FS_TAKE(&wb, mm, T);
        gw = FS_TAKE(&wb, FS_GRAM_WORK(nnz), int64_t);
        acc = FS_TAKE(&wb, d, double);
        kx = FS_TAKE(&wb, 3 * (ptrdiff_t)k * d + (ptrdiff_t)k * k
                          + (ptrdiff_t)k * m + k + 1, T);
        if (sizeof(T) == sizeof(double)) {     /* the refinement below */
            T1 = FS_TAKE(&wb, (ptrdiff_t)me * me, T);
            Rf = FS_TAKE(&wb, med, T);
        }
    }
    if (k > 0) {    /* Hext = [H; N], HU ext = [H U^T; N U^T], HHe */
        memcpy(Hx, H, (size_t)md * sizeof(T));
        for (ptrdiff_t c = 0; c < (ptrdiff_t)k * d; ++c)
            Hx[md + c] = (T)N[c];
        F(fs_gemm)(0, 1, k, d, d, 1, Hx + md, d, U, d, 0, HU + md, d);
        F(fs_gemm)(0, 1, me, me, d, 1, Hx, d, Hx, d, 0, HHe, me);
        for (int j = 0; j < k; ++j)
            dv[m + j] = -E[j];      /* A_mod = A + N^T diag(E) N */
    }
    /* K = I - diag(dv) HHe (§2) and the inverse of its transpose, in double
     * (its rounding in T costs the target rows' updates several ulps,
     * measured).  K^{-T} Pe is Hext Uinv' and diag(dv) K^{-T} = K^{-1}
     * diag(dv) (HHe is symmetric), so that
     *   Pf = K^{-T} Pe = Hext Uinv',   Zt = diag(dv) Pf,
     *   Uinv' = Uinv + Hext^T Zt:
     * one product with K^{-T} gives both (§2). */
    {
        /* small systems: Ki <- K^T and its inverse by Gauss-Jordan
         * (fs_inverse_d; LAPACK's LU and solve spend most of their time on
         * overhead there).  Larger ones, when every dv_j has one sign sg
         * (the squared loss: all equal): with a_j = sqrt|dv_j|,
         * diag(a) K^T diag(a)^-1 = I - sg diag(a) HHe diag(a) =: S is
         * symmetric, and positive definite unless sg > 0 and some
         * eigenvalue of the update's factor is negative; then
         * K^-T = diag(a)^-1 S^-1 diag(a) by Cholesky (fs_inverse_spd_d;
         * a third of the LU's work).  Otherwise the LU of Km = K, then row
         * i of Ki <- K^{-1} e_i */
        const int gj = me <= FS_GJ_MAX;
        int sg = 0;
        if (!gj) {
            sg = dv[0] > 0 ? 1 : dv[0] < 0 ? -1 : 0;
            for (int j = 1; j < me; ++j)
                if (!(dv[j] * sg > 0))
                    sg = 0;
        }
        if (sg != 0) {
            for (int i = 0; i < me; ++i)
                for (int j = 0; j < me; ++j)
                    Ki[(ptrdiff_t)i * me + j] =
                        (double)(i == j) - sg * sqrt(dv[i] * dv[j])
                                           * (double)HHe[(ptrdiff_t)i * me + j];
            if (fs_inverse_spd_d(me, Ki, me) == 0) {
                for (int i = 0; i < me; ++i)
                    for (int j = 0; j < me; ++j)
                        if (dv[i] != dv[j])
                            Ki[(ptrdiff_t)i * me + j] *= sqrt(dv[j] / dv[i]);
            } else {
                sg = 0;     /* indefinite: the LU */
            }
        }
        for (int i = 0; sg == 0 && i < me; ++i)
            for (int j = 0; j < me; ++j) {
                const double kji = (double)(i == j)
                                   - dv[j] * (double)HHe[(ptrdiff_t)j * me + i];
                if (gj) {
                    Ki[(ptrdiff_t)i * me + j] = kji;
                } else {
                    Km[(ptrdiff_t)j * me + i] = kji;
                    Ki[(ptrdiff_t)i * me + j] = (double)(i == j);
                }
            }
        if (sg == 0 && (gj ? fs_inverse_d(me, Ki, ipiv, Km) != 0
                           : fs_getrf_d(me, Km, me, ipiv) != 0)) {
            status = FS_SINGULAR;
            goto out;
        }
        if (sg == 0 && !gj)
            fs_getrs_d(me, me, Km, me, ipiv, Ki, me);
    }
    /* Pe = Hext Uinv ; Pf = K^{-T} Pe ; Zt = diag(dv) Pf.  With
     * X = K^{-T} - I, Pf = Pe + X Pe: the product in T adds at most about
     * me eps ||X||_inf |Pe| to Pf's own rounding; it is taken so when the
     * step is small (||X||_inf <= FS_SMALL_STEP, the common case), where
     * the updates Pf and Zt enter are small next to the state (§2).  A
     * larger step takes the product with K^{-T} in double (float32);
     * float64 always the split form, the more precise of the two. */
    F(fs_gemm)(0, 0, me, d, d, 1, Hx, d, Uinv, d, 0, Pe, d);
    {
        double xn = 0.0;
        for (int i = 0; i < me; ++i) {
            double r = 0.0;
            for (int j = 0; j < me; ++j)
                r += fabs(Ki[(ptrdiff_t)i * me + j] - (i == j));
            xn = r > xn ? r : xn;
        }
        if (sizeof(T) == sizeof(double) || xn <= FS_SMALL_STEP) {
            for (int i = 0; i < me; ++i)
                for (int j = 0; j < me; ++j)
                    X[(ptrdiff_t)i * me + j] = (T)(Ki[(ptrdiff_t)i * me + j] - (i == j));
            memcpy(Pf, Pe, (size_t)me * d * sizeof(T));
            F(fs_gemm)(0, 0, me, d, me, 1, X, me, Pe, d, 1, Pf, d);
            for (int i = 0; i < me; ++i)
                for (int c = 0; c < d; ++c)
                    Zt[(ptrdiff_t)i * d + c] = (T)(dv[i] * (double)Pf[(ptrdiff_t)i * d + c]);
        } else {
            for (ptrdiff_t c = 0; c < (ptrdiff_t)me * d; ++c)
                Ped[c] = Pe[c];
            fs_gemm_d(0, 0, me, d, me, 1.0, Ki, me, Ped, d, 0.0, Pfd, d);
            for (int i = 0; i < me; ++i)
                for (int c = 0; c < d; ++c) {
                    const double x = Pfd[(ptrdiff_t)i * d + c];
                    Pf[(ptrdiff_t)i * d + c] = (T)x;
                    Zt[(ptrdiff_t)i * d + c] = (T)(dv[i] * x);
                }
        }
    }
    /* Hg = diag(dv) Hext */
    for (int i = 0; i < me; ++i)
        for (int c = 0; c < d; ++c)
            Hg[(ptrdiff_t)i * d + c] = (T)dv[i] * Hx[(ptrdiff_t)i * d + c];
    T *P = Pf;      /* its first m rows: H Uinv' */
    if (sizeof(T) == sizeof(double)) {
        /* float64 has no wider type for the small system (float32 solves it
         * in double): one step of iterative refinement of Pf = Hext U'^{-1},
         * which the target rows' updates and the split's transformation
         * follow (measured: a step's error on a row that many examples of a
         * minibatch share, 6 -> 2 ulps).  Rf <- Hext - Pf U',
         * U' = U - HU^T Hg; Pf += Rf Uinv', Uinv' = Uinv + Hext^T Zt. */
        F(fs_gemm)(0, 0, me, d, d, 1, Pf, d, U, d, 0, Rf, d);
        F(fs_gemm)(0, 1, me, me, d, 1, Pf, d, HU, d, 0, T1, me);
        F(fs_gemm)(0, 0, me, d, me, -1, T1, me, Hg, d, 1, Rf, d);
        for (ptrdiff_t c = 0; c < (ptrdiff_t)me * d; ++c)
            Rf[c] = Hx[c] - Rf[c];
        F(fs_gemm)(0, 0, me, d, d, 1, Rf, d, Uinv, d, 1, Pf, d);
        F(fs_gemm)(0, 1, me, me, d, 1, Rf, d, Hx, d, 0, T1, me);
        F(fs_gemm)(0, 0, me, d, me, 1, T1, me, Zt, d, 1, Pf, d);
    }
    /* C = I + P1^T diag(gam) P2 with P1 = N U^T, P2 = N U'^{-1} (the last k
     * rows of Pf), gam = -E: V C U' = V U A exactly (§4.2) */
    T *P1 = kx, *P2 = Pf + md, *gam = P1 + (ptrdiff_t)k * d,
      *tmp = gam + k, *Bk = tmp + 2 * (ptrdiff_t)k * d + (ptrdiff_t)k * k;
    if (k > 0) {
        memcpy(P1, HU + md, (size_t)k * d * sizeof(T));
        for (int j = 0; j < k; ++j)
            gam[j] = (T)(-E[j]);
        /* R <- R C */
        F(fs_gemm)(0, 1, m, k, d, 1, R, d, P1, d, 0, Bk, k);
        for (int i = 0; i < m; ++i)
            for (int j = 0; j < k; ++j)
                Bk[(ptrdiff_t)i * k + j] *= gam[j];
        F(fs_gemm)(0, 0, m, d, k, 1, Bk, k, P2, d, 1, R, d);
    }
    /* R <- R - lr/2 (Ydot Ydot^T) P, so that M' = M - lr (P^T R + R^T P) */
    memset(YY, 0, (size_t)mm * sizeof(T));
    F(fs_csr_gram_add)(m, indptr, indices, ga, YY, gw);
    {
        ptrdiff_t nz = 0;
        for (ptrdiff_t i = 0; i < mm; ++i)
            nz += YY[i] != 0;
        if (8 * nz < mm) {      /* usually: examples rarely share targets */
            for (int i = 0; i < m; ++i)
                for (int j = 0; j < m; ++j) {
                    const T yij = YY[(ptrdiff_t)i * m + j];
                    if (yij != 0) {
                        const T cf = (T)(-0.5 * lr) * yij;
                        T *ri = R + (ptrdiff_t)i * d;
                        const T *pj = P + (ptrdiff_t)j * d;
                        for (int c = 0; c < d; ++c)
                            ri[c] += cf * pj[c];
                    }
                }
        } else {
            F(fs_gemm)(0, 0, m, d, m, (T)(-0.5 * lr), YY, m, P, d, 1, R, d);
        }
    }

    /* ---- checks: everything the update writes is finite and in range
     * (§6); nothing has been written yet.  The target rows, cache misses
     * since the forward pass, load meanwhile for their update. */
    F(fs_prefetch_rows)(V, d, indices, nnz, d);
    {
        double bu = sqrt(ctl->smax2), bi = sqrt(ctl->sinv2), cn = 1.0,
               pn = 0.0, rn = 0.0, pmx = 0.0;
        /* finite: a NaN or Inf in HU, Hext or Pf (their rows' norms in bu,
         * bi, pn) or R (rn) or P2 (cn) makes a bound below NaN or Inf, and
         * the comparison with lim false (a product of an Inf with a zero
         * norm is NaN).  The rows of Hg = diag(dv) Hext and Zt = diag(dv) Pf
         * have the norms |dv_i| ||Hext_i|| and |dv_i| ||Pf_i|| (to rounding):
         * each at most lim, and dv_i finite in T (Hg's factor), so that
         * their entries are finite */
        int ok = 1;
        double pf2 = 0.0;       /* sum of dv_i ||Pf_i||^2 = <Pf, Zt> */
        for (int i = 0; i < me; ++i) {
            const T *hu = HU + (ptrdiff_t)i * d, *hx = Hx + (ptrdiff_t)i * d,
                    *pf = Pf + (ptrdiff_t)i * d;
            const double hh = F(fs_dot)(d, hx, hx), pp = F(fs_dot)(d, pf, pf),
                         gn = fabs(dv[i]) * sqrt(hh),
                         zn = fabs(dv[i]) * sqrt(pp);
            bu += sqrt(F(fs_dot)(d, hu, hu)) * gn;
            bi += sqrt(hh) * zn;
            ok = ok && gn <= lim && zn <= lim && isfinite((T)dv[i]);
            pf2 += dv[i] * pp;
            if (i < m)
                pn += pp;
        }
        pn = sqrt(pn);
        for (int j = 0; j < k; ++j)
            cn += fabs((double)gam[j]) * sqrt(F(fs_dot)(d, P1 + (ptrdiff_t)j * d,
                                                        P1 + (ptrdiff_t)j * d)
                                              * F(fs_dot)(d, P2 + (ptrdiff_t)j * d,
                                                          P2 + (ptrdiff_t)j * d));
        rn = sqrt(F(fs_dot)(md, R, R));
        pmx = F(fs_amax)(md, P);
        {   /* the cond bound after the update (§5), assigned with it:
             * ||Uinv'|| <= ||Uinv|| / lam_lo, and, when every factor is at
             * most 1, the Frobenius growth of Uinv, <Pe + Pf, Zt>, bounds
             * the growth of its square: the smaller of the two */
            const double by_factor = ctl->sinv2 / (lam_lo * lam_lo);
            nsinv2 = by_factor;
            if (lam_hi <= 1.0) {
                double dF = F(fs_dot)((ptrdiff_t)me * d, Pe, Zt) + pf2;
                dF = ctl->sinv2 + (dF > 0 ? dF : 0.0);
                nsinv2 = dF < by_factor ? dF : by_factor;
            }
            nsmax2 = ctl->smax2 * (lam_hi * lam_hi);
            nsmax2 *= rho * rho;
            nsinv2 /= rho * rho;
        }
        {
            const double nm = ctl->mnorm * cn * cn + 2.0 * lr * pn * rn;
            double trM = 0.0;
            for (int c = 0; c < d; ++c)
                trM += M[(ptrdiff_t)c * d + c];
            ok = ok && bu <= lim && bi <= lim && nm <= lim
                 && sqrt(fabs(trM)) * cn <= lim
                 && (ctl->cond_limit <= 0
                     || nsmax2 * nsinv2 <= FS_COND_HARD * FS_COND_HARD);
            for (int i = 0; ok && i < m; ++i)
                for (int64_t p = indptr[i]; ok && p < indptr[i + 1]; ++p)
                    ok = vmax[p] * cn
                         + fabs(lr * ga[p]) * pmx <= lim;
            if (ok && keep_s) {
                double ys = 0.0, os = 0.0;
                for (int i = 0; i < m; ++i) {
                    ys += fabs(ysum[i]);
                    os += fabs(2.0 * gq[i] * Ho[i] + gs[i])
                          * F(fs_amax)(d, H + (ptrdiff_t)i * d);
                }
                ok = F(fs_amax)(d, sv) * cn + lr * ys * pmx <= lim
                     && F(fs_amax)(d, omega) + lr * os <= lim;
            }
            if (!ok) {
                status = FS_OVERFLOW;
                goto out;
            }
            ctl->mnorm = nm;
        }
    }

    /* ---- the update (nothing can fail from here on, but for memory) */
    if (k > 0) {
        /* V <- V C, M <- C^T M C, sv <- C^T sv */
        status = F(fs_lowrank_rows)(V, D, d, k, P1, P2, gam);
        if (status != FS_OK)
            goto out;
        ctl->n_split = 1;
        F(fs_gram_transform)(d, k, M, P1, P2, gam, tmp);
        if (keep_s)
            for (int j = 0; j < k; ++j) {
                const T f = (T)(gam[j] * F(fs_dot)(d, P1 + (ptrdiff_t)j * d, sv));
                for (int c = 0; c < d; ++c)
                    sv[c] += f * P2[(ptrdiff_t)j * d + c];
            }
    }
    /* V' = V - lr Ydot^T P (its rows prefetched by the checks): the terms
     * of the examples that share a row are summed in double and rounded
     * into V once, as a dense update would */
    {
        const fs_groups g = fs_groups_in(gw, nnz);
        F(fs_add_rows)(V, d, &g, ga, -lr, P, acc);
    }
    ctl->smax2 = nsmax2;    /* the bounds taken by the checks */
    ctl->sinv2 = nsinv2;
    /* U' = U - (U Hext^T) diag(dv) Hext ; Uinv' = Uinv + Hext^T Zt */
    F(fs_gemm)(1, 0, d, d, me, -1, HU, d, Hg, d, 1, U, d);
    F(fs_gemm)(1, 0, d, d, me, 1, Hx, d, Zt, d, 1, Uinv, d);
    /* M' = M + dV^T V + V^T dV + dV^T dV,  dV = -lr Ydot^T P */
    F(fs_syr2k_upper_trans)(d, m, (T)(-lr), P, d, R, d, 1, M, d);
    if (keep_s) {
        /* sv' = sv - lr P^T ysum ; omega' = omega - lr H^T (2 gq Ho + gs) */
        for (int i = 0; i < m; ++i) {
            const T fy = (T)(-lr * ysum[i]);
            const T fo = (T)(-lr * (2.0 * gq[i] * Ho[i] + gs[i]));
            const T *pi = P + (ptrdiff_t)i * d, *hi = H + (ptrdiff_t)i * d;
            for (int c = 0; c < d; ++c) {
                sv[c] += fy * pi[c];
                omega[c] += fo * hi[c];
            }
        }
    }
    if (rho != 1.0) {   /* W <- rho W without touching V, M, sv */
        for (ptrdiff_t c = 0; c < (ptrdiff_t)d * d; ++c) {
            U[c] *= (T)rho;
            Uinv[c] *= (T)(1.0 / rho);
        }
        if (keep_s)
            for (int c = 0; c < d; ++c)
                omega[c] *= (T)rho;
    }
    ctl->done = m;
out:
    free(wa.base);
    free(wb.base);
    return status;
}

#undef FS_PICK
#undef FS_TWO_COPIES
#undef FS_COND_HARD
#undef FS_OUT_MAX
#undef FS_AMAX_BODY
#undef FS_FINITE_BODY
#undef F
#undef FS_CAT
#undef FS_CAT_
