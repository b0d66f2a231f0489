# cython: language_level=3
"""Private row-major BLAS/LAPACK wrappers (see _blas.pxd for the conventions).

The ``_py_*`` functions at the end expose each wrapper to Python so that the
test-suite can compare it with NumPy; they are not part of the public API.
"""
from scipy.linalg.cython_blas cimport (
    sdot, ddot, saxpy, daxpy, sscal, dscal, scopy, dcopy, snrm2, dnrm2,
    sgemv, dgemv, sger, dger, ssymv, dsymv, ssyr2, dsyr2,
    sgemm, dgemm, ssymm, dsymm, ssyr2k, dsyr2k)
from scipy.linalg.cython_lapack cimport sgetrf, dgetrf, sgetrs, dgetrs


cdef inline char _flip_trans(BLAS_Trans t) noexcept nogil:
    return b't' if t == NoTrans else b'n'


cdef inline char _flip_uplo(BLAS_Uplo u) noexcept nogil:
    # The upper triangle of a row-major matrix is the lower triangle of its
    # column-major view.
    return b'l' if u == Upper else b'u'


# ----------------------------------------------------------------- level 1
cdef floating xdot(int n, const floating* x, int incx,
                   const floating* y, int incy) noexcept nogil:
    if floating is float:
        return sdot(&n, <float*>x, &incx, <float*>y, &incy)
    else:
        return ddot(&n, <double*>x, &incx, <double*>y, &incy)


cdef void xaxpy(int n, floating alpha, const floating* x, int incx,
                floating* y, int incy) noexcept nogil:
    if floating is float:
        saxpy(&n, &alpha, <float*>x, &incx, y, &incy)
    else:
        daxpy(&n, &alpha, <double*>x, &incx, y, &incy)


cdef void xscal(int n, floating alpha, floating* x, int incx) noexcept nogil:
    if floating is float:
        sscal(&n, &alpha, x, &incx)
    else:
        dscal(&n, &alpha, x, &incx)


cdef void xcopy(int n, const floating* x, int incx,
                floating* y, int incy) noexcept nogil:
    if floating is float:
        scopy(&n, <float*>x, &incx, y, &incy)
    else:
        dcopy(&n, <double*>x, &incx, y, &incy)


cdef floating xnrm2(int n, const floating* x, int incx) noexcept nogil:
    if floating is float:
        return snrm2(&n, <float*>x, &incx)
    else:
        return dnrm2(&n, <double*>x, &incx)


# ----------------------------------------------------------------- level 2
cdef void xgemv(BLAS_Trans ta, int m, int n, floating alpha,
                const floating* A, int lda, const floating* x, int incx,
                floating beta, floating* y, int incy) noexcept nogil:
    # Row-major A (m x n) is the column-major n x m matrix A^T.
    cdef char t = _flip_trans(ta)
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*>A, &lda, <float*>x, &incx,
              &beta, y, &incy)
    else:
        dgemv(&t, &n, &m, &alpha, <double*>A, &lda, <double*>x, &incx,
              &beta, y, &incy)


cdef void xger(int m, int n, floating alpha, const floating* x, int incx,
               const floating* y, int incy, floating* A, int lda) noexcept nogil:
    # A += alpha x y^T  <=>  A^T += alpha y x^T on the column-major view.
    if floating is float:
        sger(&n, &m, &alpha, <float*>y, &incy, <float*>x, &incx, A, &lda)
    else:
        dger(&n, &m, &alpha, <double*>y, &incy, <double*>x, &incx, A, &lda)


cdef void xsymv(BLAS_Uplo uplo, int n, floating alpha, const floating* A,
                int lda, const floating* x, int incx, floating beta,
                floating* y, int incy) noexcept nogil:
    cdef char u = _flip_uplo(uplo)
    if floating is float:
        ssymv(&u, &n, &alpha, <float*>A, &lda, <float*>x, &incx, &beta,
              y, &incy)
    else:
        dsymv(&u, &n, &alpha, <double*>A, &lda, <double*>x, &incx, &beta,
              y, &incy)


cdef void xsyr2(BLAS_Uplo uplo, int n, floating alpha, const floating* x,
                int incx, const floating* y, int incy, floating* A,
                int lda) noexcept nogil:
    cdef char u = _flip_uplo(uplo)
    if floating is float:
        ssyr2(&u, &n, &alpha, <float*>x, &incx, <float*>y, &incy, A, &lda)
    else:
        dsyr2(&u, &n, &alpha, <double*>x, &incx, <double*>y, &incy, A, &lda)


# ----------------------------------------------------------------- level 3
cdef void xgemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb, floating beta, floating* C,
                int ldc) noexcept nogil:
    # C = op(A) op(B)  <=>  C^T = op(B)^T op(A)^T: same flags, operands
    # swapped, since each row-major operand is its own transpose in
    # column-major terms.
    cdef char ca = <char>ta, cb = <char>tb
    if floating is float:
        sgemm(&cb, &ca, &n, &m, &k, &alpha, <float*>B, &ldb, <float*>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&cb, &ca, &n, &m, &k, &alpha, <double*>B, &ldb, <double*>A,
              &lda, &beta, C, &ldc)


cdef void xsymm(BLAS_Side side, BLAS_Uplo uplo, int m, int n, floating alpha,
                const floating* A, int lda, const floating* B, int ldb,
                floating beta, floating* C, int ldc) noexcept nogil:
    # C = A B (A symmetric, side Left)  <=>  C^T = B^T A (side Right).
    cdef char s = b'r' if side == Left else b'l'
    cdef char u = _flip_uplo(uplo)
    if floating is float:
        ssymm(&s, &u, &n, &m, &alpha, <float*>A, &lda, <float*>B, &ldb,
              &beta, C, &ldc)
    else:
        dsymm(&s, &u, &n, &m, &alpha, <double*>A, &lda, <double*>B, &ldb,
              &beta, C, &ldc)


cdef void xsyr2k(BLAS_Uplo uplo, BLAS_Trans trans, int n, int k,
                 floating alpha, const floating* A, int lda,
                 const floating* B, int ldb, floating beta, floating* C,
                 int ldc) noexcept nogil:
    # NoTrans: C = alpha (A B^T + B A^T) + beta C with A, B n x k row-major,
    # which are the k x n column-major matrices A^T, B^T: flip the flag.
    cdef char u = _flip_uplo(uplo)
    cdef char t = _flip_trans(trans)
    if floating is float:
        ssyr2k(&u, &t, &n, &k, &alpha, <float*>A, &lda, <float*>B, &ldb,
               &beta, C, &ldc)
    else:
        dsyr2k(&u, &t, &n, &k, &alpha, <double*>A, &lda, <double*>B, &ldb,
               &beta, C, &ldc)


# ------------------------------------------------------------------ LAPACK
cdef int xgetrf(int n, floating* A, int lda, int* ipiv) noexcept nogil:
    # Factors the column-major view, i.e. A^T; xgetrs accounts for it.
    cdef int info = 0
    if floating is float:
        sgetrf(&n, &n, A, &lda, ipiv, &info)
    else:
        dgetrf(&n, &n, A, &lda, ipiv, &info)
    return info


cdef int xgetrs(BLAS_Trans ta, int n, int nrhs, const floating* A, int lda,
                const int* ipiv, floating* B, int ldb) noexcept nogil:
    # The factors are those of A^T, and the rows of the row-major B are the
    # columns of its column-major view: solve with the flag flipped.
    cdef char t = _flip_trans(ta)
    cdef int info = 0
    if floating is float:
        sgetrs(&t, &n, &nrhs, <float*>A, &lda, <int*>ipiv, B, &ldb, &info)
    else:
        dgetrs(&t, &n, &nrhs, <double*>A, &lda, <int*>ipiv, B, &ldb, &info)
    return info


# ------------------------------------------------- Python shims for tests
# Each takes C-contiguous arrays and calls the wrapper once; the tests
# compare the result with NumPy.

def _py_dot(const floating[::1] x, const floating[::1] y):
    return xdot(<int>x.shape[0], &x[0], 1, &y[0], 1)


def _py_axpy(double alpha, const floating[::1] x, floating[::1] y):
    xaxpy(<int>x.shape[0], <floating>alpha, &x[0], 1, &y[0], 1)


def _py_scal(double alpha, floating[::1] x):
    xscal(<int>x.shape[0], <floating>alpha, &x[0], 1)


def _py_copy(const floating[::1] x, floating[::1] y):
    xcopy(<int>x.shape[0], &x[0], 1, &y[0], 1)


def _py_nrm2(const floating[::1] x):
    return xnrm2(<int>x.shape[0], &x[0], 1)


def _py_gemv(bint trans, double alpha, const floating[:, ::1] A,
             const floating[::1] x, double beta, floating[::1] y):
    xgemv(Trans if trans else NoTrans, <int>A.shape[0], <int>A.shape[1],
          <floating>alpha, &A[0, 0], <int>A.shape[1], &x[0], 1, <floating>beta, &y[0], 1)


def _py_ger(double alpha, const floating[::1] x, const floating[::1] y,
            floating[:, ::1] A):
    xger(<int>A.shape[0], <int>A.shape[1], <floating>alpha, &x[0], 1, &y[0], 1,
         &A[0, 0], <int>A.shape[1])


def _py_symv(bint upper, double alpha, const floating[:, ::1] A,
             const floating[::1] x, double beta, floating[::1] y):
    xsymv(Upper if upper else Lower, <int>A.shape[0], <floating>alpha, &A[0, 0],
          <int>A.shape[1], &x[0], 1, <floating>beta, &y[0], 1)


def _py_syr2(bint upper, double alpha, const floating[::1] x,
             const floating[::1] y, floating[:, ::1] A):
    xsyr2(Upper if upper else Lower, <int>A.shape[0], <floating>alpha, &x[0], 1,
          &y[0], 1, &A[0, 0], <int>A.shape[1])


def _py_gemm(bint ta, bint tb, double alpha, const floating[:, ::1] A,
             const floating[:, ::1] B, double beta, floating[:, ::1] C):
    cdef int k = <int>(A.shape[0] if ta else A.shape[1])
    xgemm(Trans if ta else NoTrans, Trans if tb else NoTrans,
          <int>C.shape[0], <int>C.shape[1], k, <floating>alpha, &A[0, 0],
          <int>A.shape[1], &B[0, 0], <int>B.shape[1], <floating>beta, &C[0, 0],
          <int>C.shape[1])


def _py_symm(bint left, bint upper, double alpha, const floating[:, ::1] A,
             const floating[:, ::1] B, double beta, floating[:, ::1] C):
    xsymm(Left if left else Right, Upper if upper else Lower,
          <int>C.shape[0], <int>C.shape[1], <floating>alpha, &A[0, 0], <int>A.shape[1],
          &B[0, 0], <int>B.shape[1], <floating>beta, &C[0, 0], <int>C.shape[1])


def _py_syr2k(bint upper, bint trans, double alpha, const floating[:, ::1] A,
              const floating[:, ::1] B, double beta, floating[:, ::1] C):
    cdef int k = <int>(A.shape[0] if trans else A.shape[1])
    xsyr2k(Upper if upper else Lower, Trans if trans else NoTrans,
           <int>C.shape[0], k, <floating>alpha, &A[0, 0], <int>A.shape[1], &B[0, 0],
           <int>B.shape[1], <floating>beta, &C[0, 0], <int>C.shape[1])


def _py_lu_solve(bint trans, floating[:, ::1] A, floating[:, ::1] B):
    """Solve op(A) x = b for each row b of B (overwritten); A is overwritten
    by its factors.  Returns LAPACK's info of the factorisation."""
    cdef int n = <int>A.shape[0]
    cdef int[::1] ipiv = _ipiv_buffer(n)
    cdef int info = xgetrf(n, &A[0, 0], n, &ipiv[0])
    if info == 0:
        info = xgetrs(Trans if trans else NoTrans, n, <int>B.shape[0],
                      &A[0, 0], n, &ipiv[0], &B[0, 0], <int>B.shape[1])
    return info


def _ipiv_buffer(int n):
    import numpy as np
    return np.empty(n, dtype=np.intc)
