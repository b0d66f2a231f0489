/* Template of the blocked online kernel (see fs_online.h); included by
 * fs_online.c with T (the element type) and S (the suffix) defined. */
#define FS_CAT_(a, b) a##_##b
#define FS_CAT(a, b) FS_CAT_(a, b)
#define F(name) FS_CAT(name, S)

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

/* dot product in double */
static inline double F(fs_dot)(int n, const T *x, const T *y)
{
    double acc = 0.0;
    for (int c = 0; c < n; ++c)
        acc += (double)x[c] * y[c];
    return acc;
}

static inline int F(fs_finite)(int n, const T *x)
{
    double acc = 0.0;
    for (int c = 0; c < n; ++c)
        acc += x[c];
    return isfinite(acc);
}

/* Apply the first n examples of the block: finish their gradients, then
 * U, Uinv and M.  H is the block's first row; s_n = sig_n (rho^n). */
static void F(fs_flush)(F(fs_block) *b, int n, int update, double lr,
                        double s_n, const T *H, T *U, T *Uinv, T *M,
                        T *grad)
{
    const int d = b->d;
    if (n == 0)
        return;
    /* dL/dh_i += s_i (U0^T z_i - sum_{j<i} alpha_j (u_j . z_i) h_j) */
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
    for (int j = 0; j < n; ++j) {
        T *u = b->Bu + (ptrdiff_t)j * d;
        const T a = (T)b->alpha[j];
        for (int c = 0; c < d; ++c)
            u[c] *= a;
    }
    F(fs_gemm)(1, 0, d, d, n, (T)(-s_n), b->Bu, d, H, d, (T)s_n, U, d);
    /* Uinv = (Uinv0 + sum_j s_j c_j h_j w_j^T) / s_n */
    for (int j = 0; j < n; ++j) {
        T *w = b->Tw + (ptrdiff_t)j * d;
        const T a = (T)b->sc[j];
        for (int c = 0; c < d; ++c)
            w[c] *= a;
    }
    F(fs_gemm)(1, 0, d, d, n, (T)(1.0 / s_n), H, d, b->Tw, d,
               (T)(1.0 / s_n), Uinv, d);
}

int F(fs_online_blocked)(ptrdiff_t D, int d, T *V, T *U, T *Uinv, T *M,
                         T *omega, T *sv, int m, const T *H,
                         const int64_t *indptr, const int64_t *indices,
                         const T *values, double lr, double wd,
                         const fs_loss_spec *spec, double r_tol, int block,
                         T *loss_out, T *grad_out, ptrdiff_t *bad,
                         double *bad_r)
{
    const int update = lr != 0;
    const int keep_s = omega != NULL;
    const double rho = update ? 1.0 - lr * wd : 1.0;
    const double Dn = (double)D;
    int k = block < 1 ? 1 : block;
    ptrdiff_t kmax = 1;
    int status = FS_OK;
    if (m == 0)
        return FS_OK;
    {   /* blocks of (nearly) equal size, not a short last block (a GEMM of one or two
         * rows costs about as much as one of k rows) */
        const int nblocks = (m + k - 1) / k;
        k = (m + nblocks - 1) / nblocks;
    }
    if (rho != 1.0)
        lr = lr / rho;
    for (int i = 0; i < m; ++i)
        if (indptr[i + 1] - indptr[i] > kmax)
            kmax = indptr[i + 1] - indptr[i];

    const ptrdiff_t kd = (ptrdiff_t)k * d;
    T *work = malloc((5 * kd + (ptrdiff_t)k * k + 2 * k + 2 * (ptrdiff_t)d
                      + 2 * kmax) * sizeof(T));
    double *dwork = malloc(3 * (ptrdiff_t)(k + 1) * sizeof(double));
    if (work == NULL || dwork == NULL) {
        free(work);
        free(dwork);
        return FS_NOMEM;
    }
    F(fs_block) b;
    b.d = d;
    b.k = k;
    b.Bu = work;
    b.X = b.Bu + kd;
    b.Tw = b.X + kd;
    b.Y = b.Tw + kd;
    b.Z = b.Y + kd;
    b.G = b.Z + kd;
    b.e = b.G + (ptrdiff_t)k * k;
    b.p = b.e + k;
    T *Mu = b.p + k;        /* d: M_i u_i */
    T *vty = Mu + d;        /* d: V^T ydot (rows before the update) */
    T *a = vty + d;         /* kmax */
    T *ga = a + kmax;       /* kmax */
    b.alpha = dwork;
    b.sc = dwork + (k + 1);
    b.sig = dwork + 2 * (k + 1);

    for (int i0 = 0; i0 < m && status == FS_OK; i0 += k) {
        const int nb = m - i0 < k ? m - i0 : k;
        const T *Hb = H + (ptrdiff_t)i0 * d;
        int n = 0;          /* examples of the block processed */
        /* products with the block-start state */
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
            T *x = b.X + (ptrdiff_t)i * d;
            T *t = b.Tw + (ptrdiff_t)i * d;
            T *z = b.Z + (ptrdiff_t)i * d;
            const double s_i = b.sig[i];
            double q, s, oh = 0.0, svu = 0.0, L, gq, gs, c, r, sga = 0.0,
                   ga2 = 0.0;
            /* the state at example i: corrections for examples j < i */
            if (update && i > 0) {
                for (int j = 0; j < i; ++j)
                    b.e[j] = (T)(b.alpha[j] * b.G[j * nb + i]);
                F(fs_gemv)(1, i, d, -1, b.Bu, d, b.e, 1, u);
                F(fs_gemv)(1, i, d, -1, b.X, d, b.e, 1, x);
                for (int j = 0; j < i; ++j)
                    b.e[j] = (T)(b.sc[j] * b.G[j * nb + i]);
                F(fs_gemv)(1, i, d, 1, b.Tw, d, b.e, 1, t);
                if (s_i != 1.0) {
                    for (int c2 = 0; c2 < d; ++c2) {
                        u[c2] *= (T)s_i;
                        x[c2] *= (T)s_i;
                        t[c2] *= (T)(1.0 / s_i);
                    }
                }
                /* M_i u = M0 u - lr (W^T (Y u) + Y^T (W u)) */
                memcpy(Mu, x, d * sizeof(T));
                F(fs_gemv)(0, i, d, 1, b.Y, d, u, 0, b.p);
                F(fs_gemv)(1, i, d, (T)(-lr), b.Tw, d, b.p, 1, Mu);
                F(fs_gemv)(0, i, d, 1, b.Tw, d, u, 0, b.p);
                F(fs_gemv)(1, i, d, (T)(-lr), b.Y, d, b.p, 1, Mu);
            } else {
                memcpy(Mu, x, d * sizeof(T));
            }
            /* forward: q = ||o||^2, s = sum(o), outputs at the targets */
            q = F(fs_dot)(d, u, Mu);
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
                *bad = gi;
                break;
            }
            c = 2.0 * lr * gq;
            r = 1.0 - c * F(fs_dot)(d, h, h);
            if (lr > 0 && fabs(r) < r_tol) {
                *bad = gi;
                *bad_r = r;
                status = FS_SMALL_R;
                break;
            }
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
            if (update && !(F(fs_finite)(d, u) && F(fs_finite)(d, t)
                            && F(fs_finite)(d, z))) {
                *bad = gi;
                status = FS_NONFINITE;
                break;
            }
            loss_out[gi] = (T)L;
            n = i + 1;
            if (!update) {
                b.alpha[i] = b.sc[i] = 0.0;
                b.sig[i + 1] = 1.0;
                continue;
            }
            /* w = Uinv_{i+1}^T h = t / r ; V rows ; y ; sv ; omega */
            {
                const T inv_r = (T)(1.0 / r);
                T *y = b.Y + (ptrdiff_t)i * d;
                for (int cc = 0; cc < d; ++cc)
                    t[cc] *= inv_r;
                for (ptrdiff_t kk = 0; kk < K; ++kk)
                    a[kk] = (T)(-lr * ga[kk]);      /* a: scratch now */
                F(fs_scatter_axpy)(V, d, idx, a, K, d, t, 1);
                for (int cc = 0; cc < d; ++cc)
                    y[cc] = vty[cc] + (T)(-0.5 * lr * ga2) * t[cc];
                if (keep_s) {
                    const T cs = (T)(-lr * sga);
                    const T co = (T)(-lr * (2.0 * gq * oh + gs));
                    for (int cc = 0; cc < d; ++cc) {
                        sv[cc] += cs * t[cc];
                        omega[cc] += co * h[cc];
                    }
                    if (rho != 1.0)
                        for (int cc = 0; cc < d; ++cc)
                            omega[cc] *= (T)rho;
                }
            }
            b.alpha[i] = c / s_i;
            b.sc[i] = s_i * c;
            b.sig[i + 1] = rho * s_i;
        }
        F(fs_flush)(&b, n, update, lr, b.sig[n], Hb, U, Uinv, M,
                    grad_out + (ptrdiff_t)i0 * d);
    }
    free(work);
    free(dwork);
    return status;
}

#undef F
#undef FS_CAT
#undef FS_CAT_
