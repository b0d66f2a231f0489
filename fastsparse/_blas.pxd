# Private BLAS/LAPACK layer of fastsparse.
#
# Fused float/double wrappers around scipy.linalg.cython_blas and
# scipy.linalg.cython_lapack, callable without the GIL.  Every matrix argument
# is ROW-MAJOR (C order, as NumPy stores it): the wrappers translate to
# Fortran's column-major convention by swapping operands / flags (a row-major
# matrix is the column-major view of its transpose), never by copying.
# The wrappers do no validation: callers pass consistent sizes.

ctypedef fused floating:
    float
    double

cpdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')

cpdef enum BLAS_Uplo:
    Upper = 117    # ord('u'): the upper triangle of the row-major matrix
    Lower = 108    # ord('l')

cpdef enum BLAS_Side:
    Left = 108     # ord('l')
    Right = 114    # ord('r')

# Level 1
cdef floating xdot(int n, const floating* x, int incx,
                   const floating* y, int incy) noexcept nogil
cdef void xaxpy(int n, floating alpha, const floating* x, int incx,
                floating* y, int incy) noexcept nogil
cdef void xscal(int n, floating alpha, floating* x, int incx) noexcept nogil
cdef void xcopy(int n, const floating* x, int incx,
                floating* y, int incy) noexcept nogil
cdef floating xnrm2(int n, const floating* x, int incx) noexcept nogil

# Level 2 (A is m x n, row-major, leading dimension lda >= n)
cdef void xgemv(BLAS_Trans ta, int m, int n, floating alpha,
                const floating* A, int lda, const floating* x, int incx,
                floating beta, floating* y, int incy) noexcept nogil
cdef void xger(int m, int n, floating alpha, const floating* x, int incx,
               const floating* y, int incy, floating* A, int lda) noexcept nogil
cdef void xsymv(BLAS_Uplo uplo, int n, floating alpha, const floating* A,
                int lda, const floating* x, int incx, floating beta,
                floating* y, int incy) noexcept nogil
cdef void xsyr2(BLAS_Uplo uplo, int n, floating alpha, const floating* x,
                int incx, const floating* y, int incy, floating* A,
                int lda) noexcept nogil

# Level 3 (C is m x n, row-major)
cdef void xgemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb, floating beta, floating* C,
                int ldc) noexcept nogil
cdef void xsymm(BLAS_Side side, BLAS_Uplo uplo, int m, int n, floating alpha,
                const floating* A, int lda, const floating* B, int ldb,
                floating beta, floating* C, int ldc) noexcept nogil
cdef void xsyr2k(BLAS_Uplo uplo, BLAS_Trans trans, int n, int k,
                 floating alpha, const floating* A, int lda,
                 const floating* B, int ldb, floating beta, floating* C,
                 int ldc) noexcept nogil

# LAPACK LU, row-major semantics: xgetrf factors the n x n row-major A in
# place; xgetrs then solves op(A) x = b for each of the nrhs ROWS b of the
# row-major (nrhs x n) array B, overwriting them with the solutions.
cdef int xgetrf(int n, floating* A, int lda, int* ipiv) noexcept nogil
cdef int xgetrs(BLAS_Trans ta, int n, int nrhs, const floating* A, int lda,
                const int* ipiv, floating* B, int ldb) noexcept nogil
