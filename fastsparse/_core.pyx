# cython: language_level=3
"""Python entry points of the compiled kernels of src_c/ (the only place
they are called from), and the BLAS/LAPACK table they use.

The kernels (src_c/fs_kernels.h, docs/algorithm.md) trust their inputs:
the Python layer validates everything once before calling them (for
step()'s common call, ``StepLane`` here does, with the same compiled
checks).  Every entry point releases the GIL for the whole computation.  Status codes and
loss ids are the C enums, exported here as Python enums (defined once, in
src_c/fs_loss.h).
"""
from libc.stdint cimport int32_t, int64_t
from libc.limits cimport INT_MAX
from libc.math cimport isfinite
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from scipy.linalg cimport cython_blas as cb
from scipy.linalg cimport cython_lapack as cl
cimport numpy as cnp

import numpy as _np

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from "fs_loss.h" nogil:
    cpdef enum fs_status:
        FS_OK
        FS_LOSS
        FS_NONFINITE
        FS_OVERFLOW
        FS_SINGULAR
        FS_NOMEM
        FS_CHECK
    cpdef enum fs_loss_kind:
        FS_LOSS_SQUARED
        FS_LOSS_SPHERICAL
        FS_LOSS_TAYLOR
        FS_LOSS_ZLOSS
    ctypedef struct fs_loss_spec:
        int kind
        double n_outputs
        double eps
        double alpha
        double beta
    int fs_eval_loss_s(const fs_loss_spec*, ptrdiff_t, const float*,
                       const float*, double, double, double*, float*,
                       double*, double*)
    int fs_eval_loss_d(const fs_loss_spec*, ptrdiff_t, const double*,
                       const double*, double, double, double*, double*,
                       double*, double*)

cdef extern from "fs_sparse.h" nogil:
    void fs_gather_dots_s(const float*, ptrdiff_t, const int64_t*, ptrdiff_t,
                          const float*, ptrdiff_t, float*)
    void fs_gather_dots_d(const double*, ptrdiff_t, const int64_t*, ptrdiff_t,
                          const double*, ptrdiff_t, double*)
    void fs_gather_combine_s(const float*, ptrdiff_t, const int64_t*,
                             const float*, ptrdiff_t, ptrdiff_t, float*)
    void fs_gather_combine_d(const double*, ptrdiff_t, const int64_t*,
                             const double*, ptrdiff_t, ptrdiff_t, double*)
    void fs_scatter_axpy_s(float*, ptrdiff_t, const int64_t*, const float*,
                           ptrdiff_t, ptrdiff_t, const float*, ptrdiff_t)
    void fs_scatter_axpy_d(double*, ptrdiff_t, const int64_t*, const double*,
                           ptrdiff_t, ptrdiff_t, const double*, ptrdiff_t)
    void fs_csr_gram_add_s(ptrdiff_t, const int64_t*, const int64_t*,
                           const float*, float*, int64_t*)
    void fs_csr_gram_add_d(ptrdiff_t, const int64_t*, const int64_t*,
                           const double*, double*, int64_t*)
    ptrdiff_t FS_GRAM_WORK(ptrdiff_t)

cdef extern from "fs_kernels.h" nogil:
    ctypedef struct fs_blas_table:
        void* sgemm
        void* dgemm
        void* sgemv
        void* dgemv
        void* sger
        void* dger
        void* ssymm
        void* dsymm
        void* ssymv
        void* dsymv
        void* ssyr2k
        void* dsyr2k
        void* ssyrk
        void* dsyrk
        void* sgetrf
        void* dgetrf
        void* sgetrs
        void* dgetrs
        void* dsyev
        void* dgeqrf
        void* dorgqr
        void* dpotrf
        void* dpotri
        int avx2
        int small_gemm
        int avx512
    fs_blas_table fs_blas
    int fs_blas_detect()
    int fs_sg_route(int, int, int, int, int)
    enum: FS_ONLINE_DEFAULT_BLOCK
    ctypedef struct fs_control:
        double lr, wd, split, cond_limit, scale_limit, norm_limit
        double smax2, sinv2, mnorm
        ptrdiff_t done, bad, n_split
        double min_factor
    int fs_online_s(ptrdiff_t, int, float*, float*, float*, float*, float*,
                    float*, ptrdiff_t, const float*, const int64_t*,
                    const int64_t*, const float*, const fs_loss_spec*,
                    ptrdiff_t, fs_control*, float*, float*)
    int fs_online_d(ptrdiff_t, int, double*, double*, double*, double*,
                    double*, double*, ptrdiff_t, const double*,
                    const int64_t*, const int64_t*, const double*,
                    const fs_loss_spec*, ptrdiff_t, fs_control*, double*,
                    double*)
    int fs_batch_s(ptrdiff_t, int, float*, float*, float*, float*, float*,
                   float*, int, const float*, const int64_t*, const int64_t*,
                   const float*, const fs_loss_spec*, const float*,
                   const double*, const double*, fs_control*, float*, float*)
    int fs_batch_d(ptrdiff_t, int, double*, double*, double*, double*,
                   double*, double*, int, const double*, const int64_t*,
                   const int64_t*, const double*, const fs_loss_spec*,
                   const double*, const double*, const double*, fs_control*,
                   double*, double*)
    int fs_forward_s(ptrdiff_t, int, const float*, const float*, const float*,
                     const float*, const float*, int, const float*,
                     const int64_t*, const int64_t*, float*, double*, double*)
    int fs_forward_d(ptrdiff_t, int, const double*, const double*,
                     const double*, const double*, const double*, int,
                     const double*, const int64_t*, const int64_t*, double*,
                     double*, double*)
    int fs_lowrank_rows_s(float*, ptrdiff_t, int, int, const float*,
                          const float*, const float*)
    int fs_lowrank_rows_d(double*, ptrdiff_t, int, int, const double*,
                          const double*, const double*)
    int fs_all_finite_s(ptrdiff_t, const float*)
    int fs_all_finite_d(ptrdiff_t, const double*)
    int fs_estimate_s(int, const float*, const float*, int, int, double*,
                      double*, double*, double*)
    int fs_estimate_d(int, const double*, const double*, int, int, double*,
                      double*, double*, double*)
    double fs_sym_fnorm_s(int, const float*)
    double fs_sym_fnorm_d(int, const double*)
    # the row-major wrappers of fs_blas.h (tested through the shims below)
    void fs_gemm_s(int, int, int, int, int, float, const float*, int,
                   const float*, int, float, float*, int)
    void fs_gemm_d(int, int, int, int, int, double, const double*, int,
                   const double*, int, double, double*, int)
    void fs_gemv_s(int, int, int, float, const float*, int, const float*, int,
                   float, float*, int)
    void fs_gemv_d(int, int, int, double, const double*, int, const double*,
                   int, double, double*, int)
    void fs_symm_right_upper_s(int, int, float, const float*, int,
                               const float*, int, float, float*, int)
    void fs_symm_right_upper_d(int, int, double, const double*, int,
                               const double*, int, double, double*, int)
    void fs_syr2k_upper_trans_s(int, int, float, const float*, int,
                                const float*, int, float, float*, int)
    void fs_syr2k_upper_trans_d(int, int, double, const double*, int,
                                const double*, int, double, double*, int)
    void fs_transpose_s(int, int, const float*, int, float*, int)
    void fs_transpose_d(int, int, const double*, int, double*, int)
    void fs_gram_rows_s(int, int, const float*, int, float*, int)
    void fs_gram_rows_d(int, int, const double*, int, double*, int)
    int fs_getrf_s(int, float*, int, int*)
    int fs_getrf_d(int, double*, int, int*)
    int fs_getrs_s(int, int, const float*, int, const int*, float*, int)
    int fs_getrs_d(int, int, const double*, int, const int*, double*, int)
    int fs_inverse_d(int, double*, int*, double*)

# The kernels call BLAS and LAPACK through this table: SciPy's.
fs_blas.sgemm = <void*>cb.sgemm
fs_blas.dgemm = <void*>cb.dgemm
fs_blas.sgemv = <void*>cb.sgemv
fs_blas.dgemv = <void*>cb.dgemv
fs_blas.sger = <void*>cb.sger
fs_blas.dger = <void*>cb.dger
fs_blas.ssymm = <void*>cb.ssymm
fs_blas.dsymm = <void*>cb.dsymm
fs_blas.ssymv = <void*>cb.ssymv
fs_blas.dsymv = <void*>cb.dsymv
fs_blas.ssyr2k = <void*>cb.ssyr2k
fs_blas.dsyr2k = <void*>cb.dsyr2k
fs_blas.ssyrk = <void*>cb.ssyrk
fs_blas.dsyrk = <void*>cb.dsyrk
fs_blas.sgetrf = <void*>cl.sgetrf
fs_blas.dgetrf = <void*>cl.dgetrf
fs_blas.sgetrs = <void*>cl.sgetrs
fs_blas.dgetrs = <void*>cl.dgetrs
fs_blas.dsyev = <void*>cl.dsyev
fs_blas.dgeqrf = <void*>cl.dgeqrf
fs_blas.dorgqr = <void*>cl.dorgqr
fs_blas.dpotrf = <void*>cl.dpotrf
fs_blas.dpotri = <void*>cl.dpotri
fs_blas_detect()


def _own_avx2(flag=None):
    """Whether the kernels use the AVX2 + FMA loops of src_c/fs_blas.h
    (on by default when the CPU has them).  With ``flag``: switch them off
    (False) or back on (True, only where the CPU has them), for the tests
    that compare both paths; returns the previous setting.  Not thread-safe:
    no kernel may run meanwhile."""
    cdef int old = fs_blas.avx2, small = fs_blas.small_gemm
    if flag is not None:
        fs_blas.avx2 = fs_blas_detect() if flag else 0
        fs_blas.small_gemm = small
    return bool(old)


def _small_gemm(flag=None):
    """Whether float32 products use the AVX2 + FMA loop of src_c/fs_blas.h
    (fs_sg_product: the shapes fs_sg_route gives it; on by default when the
    CPU has AVX2 and FMA) instead of BLAS.  With ``flag``: switch them off (False)
    or back on (True, only where the CPU has them); returns the previous
    setting.  Not thread-safe: no kernel may run meanwhile."""
    cdef int old = fs_blas.small_gemm, avx2 = fs_blas.avx2
    if flag is not None:
        fs_blas.small_gemm = 0
        if flag:
            fs_blas_detect()
            fs_blas.small_gemm = fs_blas.avx2
            fs_blas.avx2 = avx2
    return bool(old)


def _small_gemm_route(bint ta, int form, int m, int n, int k):
    """How fs_blas.h's float32 loop would compute C (m x n) = alpha op(A)
    op(B) + beta C now (form of op(B): 0 B, 1 B^T, 2 symmetric from its
    upper triangle): 0 it would not (BLAS), 1 with B read in place, 2 with
    op(B)'s strips packed (fs_sg_route; for the tests)."""
    return fs_sg_route(ta, form, m, n, k)


def _cpu_avx512():
    """Whether the CPU has AVX-512F (fs_blas_detect): the float32 loop's
    packed route is off there (BLAS's kernels are twice as wide)."""
    return bool(fs_blas.avx512)


# ------------------------------------------------------- call bookkeeping
# Layer calls in progress and calls finished, for fastsparse._threads.
# Each function runs under the GIL without calling back into Python, so
# each update is atomic with respect to other Python threads (no lock).
cdef Py_ssize_t _calls_active = 0, _calls_done = 0


def calls_enter():
    """Count a layer call in; returns the number of calls now in progress."""
    global _calls_active
    _calls_active += 1
    return _calls_active


cdef inline void _count_exit() noexcept:
    global _calls_active, _calls_done
    _calls_active -= 1
    _calls_done += 1


def calls_exit():
    """Count a layer call out."""
    _count_exit()


def calls_state():
    """(calls in progress, calls finished so far)."""
    return _calls_active, _calls_done


#: Examples per block of the online kernel (src_c/fs_kernels.h).
ONLINE_BLOCK = FS_ONLINE_DEFAULT_BLOCK


cdef class Control:
    """What a step needs besides its data, and what it reports: the fields
    of ``fs_control`` (src_c/fs_kernels.h).  The bounds ``smax2``,
    ``sinv2`` and ``mnorm`` are read and updated by every step."""
    cdef fs_control c

    def __init__(self, double split, double cond_limit, double norm_limit,
                 double smax2, double sinv2, double mnorm):
        self.c.lr = self.c.wd = 0.0
        self.c.split = split
        self.c.cond_limit = cond_limit
        self.c.scale_limit = 0.0
        self.c.norm_limit = norm_limit
        self.c.smax2 = smax2
        self.c.sinv2 = sinv2
        self.c.mnorm = mnorm
        self.c.done = 0
        self.c.bad = -1
        self.c.n_split = 0
        self.c.min_factor = 1.0

    def set_rates(self, double lr, double wd):
        self.c.lr = lr
        self.c.wd = wd

    def configure(self, double lr, double wd, double split, double cond_limit,
                  double scale_limit):
        """Set the rates and limits of a call at once."""
        self.c.lr = lr
        self.c.wd = wd
        self.c.split = split
        self.c.cond_limit = cond_limit
        self.c.scale_limit = scale_limit

    def due(self):
        """Whether the bounds ask for a check: the condition bound above
        ``cond_limit`` or the scale bounds above ``scale_limit``."""
        cdef double lim2 = self.c.scale_limit * self.c.scale_limit
        return (self.c.smax2 * self.c.sinv2 > self.c.cond_limit * self.c.cond_limit
                or self.c.smax2 > lim2 or self.c.sinv2 > lim2)

    property split:
        def __get__(self): return self.c.split
        def __set__(self, double v): self.c.split = v
    property cond_limit:
        def __get__(self): return self.c.cond_limit
        def __set__(self, double v): self.c.cond_limit = v
    property scale_limit:
        def __get__(self): return self.c.scale_limit
        def __set__(self, double v): self.c.scale_limit = v
    property norm_limit:
        def __get__(self): return self.c.norm_limit
    property smax2:
        def __get__(self): return self.c.smax2
        def __set__(self, double v): self.c.smax2 = v
    property sinv2:
        def __get__(self): return self.c.sinv2
        def __set__(self, double v): self.c.sinv2 = v
    property mnorm:
        def __get__(self): return self.c.mnorm
        def __set__(self, double v): self.c.mnorm = v
    property done:
        def __get__(self): return self.c.done
    property bad:
        def __get__(self): return self.c.bad
    property n_split:
        def __get__(self): return self.c.n_split
    property min_factor:
        def __get__(self): return self.c.min_factor


cdef inline floating* _ptr(floating[::1] x) noexcept nogil:
    return &x[0] if x.shape[0] > 0 else NULL


cdef inline const floating* _cptr(const floating[::1] x) noexcept nogil:
    return &x[0] if x.shape[0] > 0 else NULL


cdef inline const int64_t* _iptr(const int64_t[::1] x) noexcept nogil:
    return &x[0] if x.shape[0] > 0 else NULL


# ------------------------------------------------------------ raw arrays
# The entry points below take arrays through ``_buf``: a type, dimension
# and contiguity check and a pointer, not a buffer acquisition (acquiring
# the 16 typed memoryviews of a step cost more than the kernel of a small
# step).

cdef inline char* _buf(object a, int typenum, int nd, bint write) except? NULL:
    """The data of ``a``: an ndarray of this type and number of dimensions,
    C-contiguous, in native byte order (and writable if ``write``);
    TypeError otherwise."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        raise TypeError(f"fastsparse._core: an ndarray is needed, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != nd
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or not cnp.PyArray_ISNOTSWAPPED(arr)
            or (write and not cnp.PyArray_ISWRITEABLE(arr))):
        raise TypeError(f"fastsparse._core: a C-contiguous{' writable' if write else ''} "
                        f"{nd}-D array of type {typenum} is needed, got {a.dtype} "
                        f"with shape {a.shape}")
    return <char*>cnp.PyArray_DATA(arr)


# ------------------------------------------------------------ input checks
# Compiled fast paths of fastsparse._validation, which owns the checks and
# their messages: each answers in one pass over the data and says "no"
# (False, None) for anything unusual, which the NumPy path there then
# examines and reports.  None of them is a kernel.

ctypedef fused index_t:
    int32_t
    int64_t


cdef bint _copy_in_range(const index_t* s, int64_t* out, Py_ssize_t n,
                         int64_t high) noexcept nogil:
    """out[i] = s[i]; whether every entry is in [0, high)."""
    cdef Py_ssize_t i
    cdef int64_t v
    cdef int bad = 0
    for i in range(n):
        v = s[i]
        bad |= (v < 0) | (v >= high)
        out[i] = v
    return bad == 0


cdef inline bint _plain(object a, int nd) noexcept:
    """An ndarray with nd dimensions, C-contiguous, in native byte order."""
    return (cnp.PyArray_Check(a) and cnp.PyArray_NDIM(<cnp.ndarray>a) == nd
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef bint _finite2d(object a, Py_ssize_t n_cols, int typenum):
    # (finite2d below)
    cdef cnp.ndarray arr
    cdef Py_ssize_t n
    cdef bint ok
    if not _plain(a, 2):
        return False
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_DIM(arr, 1) != n_cols:
        return False
    n = cnp.PyArray_SIZE(arr)
    if typenum == cnp.NPY_FLOAT:        # the kernels' own check
        with nogil:
            ok = fs_all_finite_s(n, <const float*>cnp.PyArray_DATA(arr))
        return ok
    if typenum == cnp.NPY_DOUBLE:
        with nogil:
            ok = fs_all_finite_d(n, <const double*>cnp.PyArray_DATA(arr))
        return ok
    return False


def finite2d(a, Py_ssize_t n_cols, int typenum):
    """Whether ``a`` is a C-contiguous 2-D ndarray of type ``typenum``
    (float32 or float64) with ``n_cols`` columns, all of its entries finite."""
    return _finite2d(a, n_cols, typenum)


def empty_outputs(Py_ssize_t m, Py_ssize_t n_cols, int typenum):
    """(loss, grad): new C-contiguous arrays of shapes (m,) and
    (m, n_cols) of type ``typenum`` (what np.empty gives, without its
    argument parsing: a step allocates them at every call)."""
    cdef cnp.npy_intp dims[2]
    dims[0] = m
    dims[1] = n_cols
    return (cnp.PyArray_EMPTY(1, dims, typenum, 0),
            cnp.PyArray_EMPTY(2, dims, typenum, 0))


cdef tuple _common_form(object targets, Py_ssize_t m, int typenum):
    """The shape of targets in one of the common forms of
    fastsparse._validation.parse_targets: an int32/int64 ndarray of shape
    (m,) (K = 1, values None), or a tuple of a C-contiguous (m, K)
    int32/int64 ndarray, K >= 1, and None or a C-contiguous (m, K) ndarray
    of type ``typenum``.  (indices, values or None, K); None for anything
    else.  The values are checked by :func:`_common_copy`."""
    cdef object idx, val = None
    cdef Py_ssize_t K = 1
    if type(targets) is cnp.ndarray:
        idx = targets
        if not _plain(idx, 1) or cnp.PyArray_DIM(<cnp.ndarray>idx, 0) != m:
            return None
    elif type(targets) is tuple and len(<tuple>targets) == 2:
        idx, val = (<tuple>targets)[0], (<tuple>targets)[1]
        if (type(idx) is not cnp.ndarray or not _plain(idx, 2)
                or cnp.PyArray_DIM(<cnp.ndarray>idx, 0) != m):
            return None
        K = cnp.PyArray_DIM(<cnp.ndarray>idx, 1)
        if K < 1:
            return None
        if val is not None and (
                type(val) is not cnp.ndarray or not _plain(val, 2)
                or cnp.PyArray_TYPE(<cnp.ndarray>val) != typenum
                or cnp.PyArray_DIM(<cnp.ndarray>val, 0) != m
                or cnp.PyArray_DIM(<cnp.ndarray>val, 1) != K):
            return None
    else:
        return None
    if not (cnp.PyArray_ISINTEGER(<cnp.ndarray>idx)
            and cnp.PyArray_ISSIGNED(<cnp.ndarray>idx)
            and cnp.PyArray_ITEMSIZE(<cnp.ndarray>idx) in (4, 8)):
        return None
    return idx, val, K


cdef bint _common_copy(cnp.ndarray idx, object val, Py_ssize_t m, Py_ssize_t K,
                       int64_t n_outputs, int typenum, int64_t* indptr,
                       int64_t* indices, char* values):
    """Targets of :func:`_common_form` as the kernels take them (CSR: m + 1
    row pointers, m K indices and values, copied: the kernels read the
    copies without the GIL); whether they are valid: every index in
    [0, n_outputs), each row strictly increasing (sorted, no duplicate:
    the canonical form), every value finite (None: ones)."""
    cdef Py_ssize_t i, nnz = m * K
    cdef const void* src = cnp.PyArray_DATA(idx)
    cdef bint wide = cnp.PyArray_ITEMSIZE(idx) == 8, f32 = typenum == cnp.NPY_FLOAT
    cdef const void* vsrc = NULL if val is None else cnp.PyArray_DATA(<cnp.ndarray>val)
    cdef size_t item = sizeof(float) if f32 else sizeof(double)
    cdef bint ok
    with nogil:
        if wide:
            ok = _copy_in_range(<const int64_t*>src, indices, nnz, n_outputs)
        else:
            ok = _copy_in_range(<const int32_t*>src, indices, nnz, n_outputs)
        if K > 1:
            for i in range(1, nnz):
                ok &= (i % K == 0) | (indices[i - 1] < indices[i])
        for i in range(m + 1):
            indptr[i] = i * K
        if vsrc == NULL:
            for i in range(nnz):
                if f32:
                    (<float*>values)[i] = 1.0
                else:
                    (<double*>values)[i] = 1.0
        else:
            memcpy(values, vsrc, nnz * item)
            if f32:
                ok &= fs_all_finite_s(nnz, <const float*>values)
            else:
                ok &= fs_all_finite_d(nnz, <const double*>values)
    return ok


def common_targets(targets, Py_ssize_t m, int64_t n_outputs, int typenum):
    """(indptr, indices, values) of targets in a common form (see
    ``_common_form``), checked and copied by ``_common_copy``: new int64,
    int64 and ``typenum`` arrays.  None for any other form, or anything
    wrong."""
    cdef cnp.npy_intp n
    form = _common_form(targets, m, typenum)
    if form is None:
        return None
    idx, val, K = form
    n = m + 1
    indptr = cnp.PyArray_EMPTY(1, &n, cnp.NPY_INT64, 0)
    n = m * <Py_ssize_t>K
    indices = cnp.PyArray_EMPTY(1, &n, cnp.NPY_INT64, 0)
    values = cnp.PyArray_EMPTY(1, &n, typenum, 0)
    if not _common_copy(idx, val, m, K, n_outputs, typenum,
                        <int64_t*>cnp.PyArray_DATA(indptr),
                        <int64_t*>cnp.PyArray_DATA(indices),
                        <char*>cnp.PyArray_DATA(values)):
        return None
    return indptr, indices, values


# --------------------------------------------------------------- the steps
# The step entry points take the state as one ``Arrays`` object (checked
# once, when the layer's state is made) and the call's arrays by ``_buf``.

cdef class Arrays:
    """A factored state (V, U, Uinv, M, omega, sv) as the step kernels take
    it: checked once (one float dtype, C-contiguous, writable, consistent
    shapes) and kept with its data pointers.  The arrays must be updated in
    place, never reallocated, while this object is in use."""
    cdef readonly tuple arrays
    cdef char* V
    cdef char* U
    cdef char* Uinv
    cdef char* M
    cdef char* omega
    cdef char* sv
    cdef readonly Py_ssize_t D
    cdef readonly int d
    cdef int typenum

    def __init__(self, V, U, Uinv, M, omega, sv):
        if not cnp.PyArray_Check(V) or V.dtype.char not in "fd":
            raise TypeError("fastsparse._core.Arrays: V must be a float32 or float64 array")
        self.typenum = cnp.NPY_FLOAT if V.dtype.char == "f" else cnp.NPY_DOUBLE
        self.V = _buf(V, self.typenum, 2, True)
        self.U = _buf(U, self.typenum, 2, True)
        self.Uinv = _buf(Uinv, self.typenum, 2, True)
        self.M = _buf(M, self.typenum, 2, True)
        self.omega = _buf(omega, self.typenum, 1, True)
        self.sv = _buf(sv, self.typenum, 1, True)
        self.D, d = V.shape
        self.d = d
        if (U.shape != (d, d) or Uinv.shape != (d, d) or M.shape != (d, d)
                or omega.shape != sv.shape or omega.shape[0] not in (0, d)):
            raise ValueError("fastsparse._core.Arrays: inconsistent shapes "
                             f"{[x.shape for x in (V, U, Uinv, M, omega, sv)]}")
        if omega.shape[0] == 0:
            self.omega = self.sv = NULL
        self.arrays = (V, U, Uinv, M, omega, sv)

    # the health check's compiled pieces (fastsparse._health, §5)
    def nonfinite(self):
        """The name of the first of U, Uinv, M, omega, sv holding a NaN or
        an Inf; None if they are all finite."""
        cdef Py_ssize_t dd = <Py_ssize_t>self.d * self.d
        cdef Py_ssize_t n = self.d if self.omega != NULL else 0
        cdef char* ptrs[5]
        cdef Py_ssize_t sizes[5]
        cdef int i, ok
        ptrs[:] = [self.U, self.Uinv, self.M, self.omega, self.sv]
        sizes[:] = [dd, dd, dd, n, n]
        for i in range(5):
            if sizes[i] == 0:
                continue
            if self.typenum == cnp.NPY_FLOAT:
                ok = fs_all_finite_s(sizes[i], <const float*>ptrs[i])
            else:
                ok = fs_all_finite_d(sizes[i], <const double*>ptrs[i])
            if not ok:
                return ("U", "Uinv", "M", "omega", "sv")[i]
        return None

    def m_norm(self):
        """||M||_F (>= ||M||_2) from M's upper triangle."""
        if self.typenum == cnp.NPY_FLOAT:
            return fs_sym_fnorm_s(self.d, <const float*>self.M)
        return fs_sym_fnorm_d(self.d, <const double*>self.M)

    def estimate(self, int iterations, double[::1] x, double[:, ::1] X,
                 double[::1] theta):
        """A health check's estimates (src_c/fs_kernels.h, fs_estimate):
        updates x (d) and X (d x kw) in place, theta (kw) out; returns
        (sigma_max, inverse error), or None when it could not run (memory,
        LAPACK), for the NumPy computation to take over."""
        cdef int d = self.d, kw = <int>X.shape[1], status
        cdef double est[2]
        if (x.shape[0] != d or X.shape[0] != d or theta.shape[0] != kw
                or kw < 1 or kw > d or iterations < 0):
            raise ValueError("fastsparse._core.Arrays.estimate: inconsistent shapes")
        with nogil:
            if self.typenum == cnp.NPY_FLOAT:
                status = fs_estimate_s(d, <const float*>self.U,
                                       <const float*>self.Uinv, iterations,
                                       kw, &x[0], &X[0, 0], &theta[0], est)
            else:
                status = fs_estimate_d(d, <const double*>self.U,
                                       <const double*>self.Uinv, iterations,
                                       kw, &x[0], &X[0, 0], &theta[0], est)
        if status != 0:
            return None
        return est[0], est[1]


cdef fs_loss_spec _spec_of(int kind, Py_ssize_t D, params) except *:
    cdef const double* p = <const double*>_buf(params, cnp.NPY_DOUBLE, 1, False)
    cdef Py_ssize_t n = params.shape[0]
    cdef fs_loss_spec spec
    spec.kind = kind
    spec.n_outputs = <double>D
    spec.eps = p[0] if n > 0 else 0.0
    spec.alpha = p[1] if n > 1 else 0.0
    spec.beta = p[2] if n > 2 else 0.0
    return spec


ctypedef struct _inputs:
    Py_ssize_t m
    const char* H
    const int64_t* indptr
    const int64_t* indices
    const char* values


cdef int _inputs_of(Arrays st, H, indptr, indices, values, _inputs* x) except -1:
    """The pointers of a call's hidden vectors and CSR targets, checked."""
    x.H = _buf(H, st.typenum, 2, False)
    x.indptr = <const int64_t*>_buf(indptr, cnp.NPY_INT64, 1, False)
    x.indices = <const int64_t*>_buf(indices, cnp.NPY_INT64, 1, False)
    x.values = _buf(values, st.typenum, 1, False)
    x.m = H.shape[0]
    if H.shape[1] != st.d or indptr.shape[0] != x.m + 1 \
            or values.shape[0] != indices.shape[0] \
            or x.indptr[0] != 0 or x.indptr[x.m] != indices.shape[0]:
        raise ValueError("fastsparse._core: inconsistent shapes of H, indptr, "
                         "indices and values")
    return 0


cdef int _online(Arrays st, Py_ssize_t m, const char* H,
                 const int64_t* indptr, const int64_t* indices,
                 const char* values, const fs_loss_spec* spec, Py_ssize_t block,
                 fs_control* c, char* lo, char* go) noexcept nogil:
    """fs_online in the state's dtype."""
    if st.typenum == cnp.NPY_FLOAT:
        return fs_online_s(st.D, st.d, <float*>st.V, <float*>st.U,
                           <float*>st.Uinv, <float*>st.M, <float*>st.omega,
                           <float*>st.sv, m, <const float*>H, indptr, indices,
                           <const float*>values, spec, block, c, <float*>lo,
                           <float*>go)
    return fs_online_d(st.D, st.d, <double*>st.V, <double*>st.U,
                       <double*>st.Uinv, <double*>st.M, <double*>st.omega,
                       <double*>st.sv, m, <const double*>H, indptr, indices,
                       <const double*>values, spec, block, c, <double*>lo,
                       <double*>go)


cdef int _batch(Arrays st, int m, const char* H, const int64_t* indptr,
                const int64_t* indices, const char* values,
                const fs_loss_spec* spec, const char* ga, const double* gq,
                const double* gs, fs_control* c, char* lo,
                char* go) noexcept nogil:
    """fs_batch in the state's dtype."""
    if st.typenum == cnp.NPY_FLOAT:
        return fs_batch_s(st.D, st.d, <float*>st.V, <float*>st.U,
                          <float*>st.Uinv, <float*>st.M, <float*>st.omega,
                          <float*>st.sv, m, <const float*>H, indptr, indices,
                          <const float*>values, spec, <const float*>ga, gq, gs,
                          c, <float*>lo, <float*>go)
    return fs_batch_d(st.D, st.d, <double*>st.V, <double*>st.U,
                      <double*>st.Uinv, <double*>st.M, <double*>st.omega,
                      <double*>st.sv, m, <const double*>H, indptr, indices,
                      <const double*>values, spec, <const double*>ga, gq, gs,
                      c, <double*>lo, <double*>go)


def online_step(Arrays st, H, indptr, indices, values, int loss_kind,
                loss_params, Py_ssize_t block, Control ctl, loss_out, grad_out):
    """Online mode over the rows of H (fs_online).  Returns the status;
    ``ctl`` reports how many examples were applied, the refused one, ..."""
    cdef fs_loss_spec spec = _spec_of(loss_kind, st.D, loss_params)
    cdef _inputs x
    _inputs_of(st, H, indptr, indices, values, &x)
    cdef Py_ssize_t m = x.m
    cdef char* lo = _buf(loss_out, st.typenum, 1, True)
    cdef char* go = _buf(grad_out, st.typenum, 2, True)
    cdef int status
    cdef fs_control* c = &ctl.c
    if loss_out.shape[0] < m or grad_out.shape[0] < m or grad_out.shape[1] != st.d:
        raise ValueError("fastsparse._core.online_step: outputs too small")
    if m == 0:
        c.done = 0
        return FS_OK
    with nogil:
        status = _online(st, m, x.H, x.indptr, x.indices, x.values, &spec, block,
                         c, lo, go)
    return status


def batch_step(Arrays st, H, indptr, indices, values, int loss_kind, loss_params,
               grad_a, grad_q, grad_s, Control ctl, loss_out, grad_out):
    """Minibatch mode (fs_batch): with ``grad_q`` empty the built-in loss
    ``loss_kind`` (losses in ``loss_out``), otherwise the given gradients
    dL/da (one per target, like ``values``), dL/dq and dL/ds (float64, one
    per example; ``values`` unused).  Returns the status; nothing changed
    unless 0."""
    cdef fs_loss_spec spec = _spec_of(loss_kind, st.D, loss_params)
    cdef _inputs x
    _inputs_of(st, H, indptr, indices, values, &x)
    cdef Py_ssize_t m = x.m
    cdef const char* ga = _buf(grad_a, st.typenum, 1, False)
    cdef const double* gq = <const double*>_buf(grad_q, cnp.NPY_DOUBLE, 1, False)
    cdef const double* gs = <const double*>_buf(grad_s, cnp.NPY_DOUBLE, 1, False)
    cdef char* lo = _buf(loss_out, st.typenum, 1, True)
    cdef char* go = _buf(grad_out, st.typenum, 2, True)
    cdef bint given = grad_q.shape[0] > 0
    cdef int status
    cdef fs_control* c = &ctl.c
    if grad_out.shape[0] != m or grad_out.shape[1] != st.d \
            or (not given and loss_out.shape[0] < m):
        raise ValueError("fastsparse._core.batch_step: outputs too small")
    if given and (grad_q.shape[0] != m or grad_s.shape[0] != m
                  or grad_a.shape[0] != indices.shape[0]):
        raise ValueError("fastsparse._core.batch_step: inconsistent gradients")
    if m == 0:
        return FS_OK
    if not given:
        ga = NULL
        gq = gs = NULL
    with nogil:
        status = _batch(st, <int>m, x.H, x.indptr, x.indices, x.values, &spec,
                        ga, gq, gs, c, lo if not given else NULL, go)
    return status


# ------------------------------------------------------- the common call
cdef class StepLane:
    """The compiled path of ``FactoredOutputLayer.step`` for its common
    call: the checked path's validation, lock, thread bookkeeping, kernel
    and numerical-health schedule without the interpreter between them (a
    call of one example at d = 128 spent nearly as long in Python as in its
    kernel).

    A layer has one (``_lane``) when it has no bias and a built-in loss
    that puts no condition on the targets' count.  ``step`` handles a call
    whose arguments are exactly: H a C-contiguous (m, d) ndarray of the
    layer's dtype, m >= 1; targets in a common form (``_common_form``: an
    int32/int64 ndarray of shape (m,), or a tuple of a C-contiguous (m, K)
    int32/int64 ndarray and None or a C-contiguous (m, K) ndarray of the
    layer's dtype); lr a float; weight_decay the float 0; mode "online" or
    "batch".  It checks the values with fastsparse._validation's compiled
    checks (finite H; ``_common_copy``: indices in range, rows strictly
    increasing, finite values, copied before the kernel reads them) and
    runs what the checked path runs, in the same order, with the same
    kernel calls (same results, bit for bit): the online kernel (a
    minibatch of one example included) or the minibatch kernel.  For
    anything else, and when a layer call is already running in this
    thread, it returns None before any change, and the checked path
    handles the call (and says what is wrong)."""
    cdef object state, health, enter
    cdef Arrays st
    cdef fs_loss_spec spec

    def __init__(self, state, health, int loss_kind, params, enter):
        self.state = state
        self.st = state.kernel
        self.health = health
        self.spec = _spec_of(loss_kind, self.st.D, params)
        self.enter = enter

    def step(self, layer, H, targets, lr, mode, weight_decay):
        """(loss, grad_H) of ``layer.step(H, targets, lr, mode=mode,
        weight_decay=weight_decay)``, or None (nothing done)."""
        cdef Arrays st = self.st
        cdef int tn = st.typenum
        cdef size_t item = sizeof(float) if tn == cnp.NPY_FLOAT else sizeof(double)
        cdef double rate
        cdef Py_ssize_t m, K, nnz
        cdef cnp.ndarray h
        cdef tuple form
        cdef char* buf
        cdef int64_t* indptr
        cdef int64_t* indices
        cdef char* values
        cdef bint single, batch
        # the arguments' types and shapes: nothing is read or allocated yet
        if (type(lr) is not float or type(weight_decay) is not float
                or <double>weight_decay != 0.0 or type(mode) is not str):
            return None
        rate = <double>lr
        if not (rate >= 0.0 and isfinite(rate)):
            return None
        if type(H) is not cnp.ndarray or not _plain(H, 2):
            return None
        h = <cnp.ndarray>H
        m = cnp.PyArray_DIM(h, 0)
        if m < 1 or m > INT_MAX or not (mode == "online" or mode == "batch"):
            return None
        # a minibatch of one example is one online update (the cheaper kernel)
        batch = m > 1 and mode == "batch"
        form = _common_form(targets, m, tn)
        # the values, with fastsparse._validation's compiled checks: H
        # (check_hidden), the targets copied (parse_targets)
        if form is None or not _finite2d(h, st.d, tn):
            return None
        K = form[2]
        nnz = m * K
        buf = <char*>malloc((m + 1 + nnz) * sizeof(int64_t) + nnz * item)
        if buf == NULL:
            return None
        try:
            indptr = <int64_t*>buf
            indices = indptr + m + 1
            values = <char*>(indices + nnz)
            if not _common_copy(form[0], form[1], m, K, st.D, tn, indptr,
                                indices, values):
                return None
            # the checked path's decorator (fastsparse._threads.compute)
            lock = layer._lock
            lock.acquire()
            try:
                if layer._in_call is not None:
                    return None
                layer._in_call = "step"
                try:
                    single = layer._single_thread_blas
                    if single:
                        self.enter()
                    try:
                        if batch:
                            return self._run_batch(layer, h, m, indptr,
                                                   indices, values, rate)
                        return self._run(layer, h, m, K, indptr, indices,
                                         values, rate)
                    finally:
                        if single:
                            _count_exit()
                finally:
                    layer._in_call = None
            finally:
                lock.release()
        finally:
            free(buf)

    cdef tuple _run_batch(self, layer, cnp.ndarray h, Py_ssize_t m,
                      const int64_t* indptr, const int64_t* indices,
                      const char* values, double rate):
        """FactoredOutputLayer._batch on checked input."""
        cdef Arrays st = self.st
        cdef Control ctl = <Control?>self.health.control(rate, 0.0)
        cdef cnp.npy_intp dims[2]
        cdef int status
        cdef const char* H = <const char*>cnp.PyArray_DATA(h)
        cdef char* lo
        cdef char* go
        dims[0] = m
        dims[1] = st.d
        loss = cnp.PyArray_EMPTY(1, dims, st.typenum, 0)
        grad = cnp.PyArray_EMPTY(2, dims, st.typenum, 0)
        lo = <char*>cnp.PyArray_DATA(<cnp.ndarray>loss)
        go = <char*>cnp.PyArray_DATA(<cnp.ndarray>grad)
        with nogil:
            status = _batch(st, <int>m, H, indptr, indices, values, &self.spec,
                            NULL, NULL, NULL, &ctl.c, lo, go)
        if status != FS_OK:
            layer._raise_status(status, ctl.c.bad, 0)
        if rate > 0:
            self.health.after_examples(self.state, m, ctl, 1)
        return loss, grad

    cdef tuple _run(self, layer, cnp.ndarray h, Py_ssize_t m, Py_ssize_t K,
                    const int64_t* indptr, const int64_t* indices,
                    const char* values, double rate):
        """FactoredOutputLayer._step's online loop on checked input."""
        cdef Arrays st = self.st
        cdef Control ctl = <Control?>self.health.control(rate, 0.0)
        cdef Py_ssize_t block = layer._online_block
        cdef Py_ssize_t start = 0, done, d = st.d
        cdef size_t item = sizeof(float) if st.typenum == cnp.NPY_FLOAT else sizeof(double)
        cdef cnp.npy_intp dims[2]
        cdef int status
        cdef const char* H = <const char*>cnp.PyArray_DATA(h)
        cdef char* lo
        cdef char* go
        dims[0] = m
        dims[1] = d
        loss = cnp.PyArray_EMPTY(1, dims, st.typenum, 0)
        grad = cnp.PyArray_EMPTY(2, dims, st.typenum, 0)
        lo = <char*>cnp.PyArray_DATA(<cnp.ndarray>loss)
        go = <char*>cnp.PyArray_DATA(<cnp.ndarray>grad)
        while start < m:
            with nogil:
                status = _online(st, m - start, H + start * d * item, indptr,
                                 indices + start * K, values + start * K * item,
                                 &self.spec, block, &ctl.c, lo + start * item,
                                 go + start * d * item)
            done = ctl.c.done
            if rate > 0:
                self.health.after_examples(self.state, done, ctl)
            if status != FS_OK and status != FS_CHECK:
                layer._raise_status(status, start + ctl.c.bad, start + done)
            start += done
        return loss, grad


def forward(const floating[:, ::1] V, const floating[:, ::1] U,
            const floating[:, ::1] M, const floating[::1] omega,
            const floating[::1] sv, const floating[:, ::1] H,
            const int64_t[::1] indptr, const int64_t[::1] indices,
            floating[::1] a_out, double[::1] q_out, double[::1] s_out):
    """a (outputs at ``indices``, CSR order), q and s at the current state
    (s = 0 when omega and sv are not kept).  Returns the status."""
    cdef int status = FS_OK
    if H.shape[0] == 0:
        return status
    with nogil:
        if floating is float:
            status = fs_forward_s(V.shape[0], <int>U.shape[0], &V[0, 0], &U[0, 0],
                                  &M[0, 0], _cptr(omega), _cptr(sv),
                                  <int>H.shape[0], &H[0, 0], &indptr[0],
                                  _iptr(indices), _ptr(a_out), &q_out[0],
                                  &s_out[0])
        else:
            status = fs_forward_d(V.shape[0], <int>U.shape[0], &V[0, 0], &U[0, 0],
                                  &M[0, 0], _cptr(omega), _cptr(sv),
                                  <int>H.shape[0], &H[0, 0], &indptr[0],
                                  _iptr(indices), _ptr(a_out), &q_out[0],
                                  &s_out[0])
    return status


def lowrank_rows(floating[:, ::1] V, const floating[:, ::1] P,
                 const floating[:, ::1] Q, const floating[::1] gamma):
    """V <- V (I + P^T diag(gamma) Q), P and Q k x d: one pass over V."""
    cdef int status = FS_OK
    if V.shape[0] == 0 or P.shape[0] == 0:
        return status
    with nogil:
        if floating is float:
            status = fs_lowrank_rows_s(&V[0, 0], V.shape[0], <int>V.shape[1],
                                       <int>P.shape[0], &P[0, 0], &Q[0, 0],
                                       &gamma[0])
        else:
            status = fs_lowrank_rows_d(&V[0, 0], V.shape[0], <int>V.shape[1],
                                       <int>P.shape[0], &P[0, 0], &Q[0, 0],
                                       &gamma[0])
    return status


def invert(double[:, ::1] A, double[:, ::1] out):
    """out <- A^{-1} by LU (LAPACK getrf/getrs); A is overwritten by its
    factors.  Returns LAPACK's info (> 0: A is singular)."""
    cdef int n = <int>A.shape[0], i, j, info
    cdef int* ipiv = <int*>malloc(n * sizeof(int))
    if ipiv == NULL:
        raise MemoryError()
    with nogil:
        info = fs_getrf_d(n, &A[0, 0], n, ipiv)
        if info == 0:
            for i in range(n * n):
                (&out[0, 0])[i] = 0.0
            for i in range(n):
                out[i, i] = 1.0
            # row i becomes A^{-1} e_i, column i of the inverse: transpose
            info = fs_getrs_d(n, n, &A[0, 0], n, ipiv, &out[0, 0], n)
            for i in range(n):
                for j in range(i + 1, n):
                    out[i, j], out[j, i] = out[j, i], out[i, j]
    free(ipiv)
    return info


# ------------------------------------------------- Python shims for tests
def _py_eval_loss(int kind, Py_ssize_t n_outputs, params,
                  const floating[::1] a, const floating[::1] y, double q,
                  double s, floating[::1] ga):
    """The compiled loss of one example: returns (status, L, gq, gs) and
    writes dL/da into ``ga``."""
    cdef fs_loss_spec spec = _spec_of(kind, n_outputs, params)
    cdef double L = 0.0, gq = 0.0, gs = 0.0
    cdef int status
    if floating is float:
        status = fs_eval_loss_s(&spec, a.shape[0], _cptr(a), _cptr(y), q, s,
                                &L, _ptr(ga), &gq, &gs)
    else:
        status = fs_eval_loss_d(&spec, a.shape[0], _cptr(a), _cptr(y), q, s,
                                &L, _ptr(ga), &gq, &gs)
    return status, L, gq, gs


def _py_gather_dots(const floating[:, ::1] V, const int64_t[::1] idx,
                    const floating[::1] u, floating[::1] out):
    if floating is float:
        fs_gather_dots_s(&V[0, 0], V.shape[1], &idx[0], idx.shape[0], &u[0],
                         V.shape[1], &out[0])
    else:
        fs_gather_dots_d(&V[0, 0], V.shape[1], &idx[0], idx.shape[0], &u[0],
                         V.shape[1], &out[0])


def _py_gather_combine(const floating[:, ::1] V, const int64_t[::1] idx,
                       const floating[::1] coef, floating[::1] out):
    if floating is float:
        fs_gather_combine_s(&V[0, 0], V.shape[1], &idx[0], &coef[0],
                            idx.shape[0], V.shape[1], &out[0])
    else:
        fs_gather_combine_d(&V[0, 0], V.shape[1], &idx[0], &coef[0],
                            idx.shape[0], V.shape[1], &out[0])


def _py_scatter_axpy(floating[:, ::1] V, const int64_t[::1] idx,
                     const floating[::1] coef, const floating[::1] w,
                     Py_ssize_t incw):
    if floating is float:
        fs_scatter_axpy_s(&V[0, 0], V.shape[1], &idx[0], &coef[0],
                          idx.shape[0], V.shape[1], &w[0], incw)
    else:
        fs_scatter_axpy_d(&V[0, 0], V.shape[1], &idx[0], &coef[0],
                          idx.shape[0], V.shape[1], &w[0], incw)


def _py_csr_gram_add(const int64_t[::1] indptr, const int64_t[::1] indices,
                     const floating[::1] values, floating[:, ::1] G):
    cdef int64_t[::1] work = _np.empty(FS_GRAM_WORK(indices.shape[0]), _np.int64)
    if floating is float:
        fs_csr_gram_add_s(G.shape[0], &indptr[0], &indices[0], &values[0],
                          &G[0, 0], &work[0])
    else:
        fs_csr_gram_add_d(G.shape[0], &indptr[0], &indices[0], &values[0],
                          &G[0, 0], &work[0])


def _py_gemm(bint ta, bint tb, double alpha, const floating[:, ::1] A,
             const floating[:, ::1] B, double beta, floating[:, ::1] C):
    """C = alpha op(A) op(B) + beta C through fs_blas.h (row-major)."""
    cdef int m = <int>C.shape[0], n = <int>C.shape[1]
    cdef int k = <int>(A.shape[0] if ta else A.shape[1])
    if floating is float:
        fs_gemm_s(ta, tb, m, n, k, <float>alpha, &A[0, 0], <int>A.shape[1],
                  &B[0, 0], <int>B.shape[1], <float>beta, &C[0, 0], n)
    else:
        fs_gemm_d(ta, tb, m, n, k, alpha, &A[0, 0], <int>A.shape[1],
                  &B[0, 0], <int>B.shape[1], beta, &C[0, 0], n)


def _py_gemv(bint ta, double alpha, const floating[:, ::1] A,
             const floating[::1] x, double beta, floating[::1] y):
    """y = alpha op(A) x + beta y through fs_blas.h."""
    if floating is float:
        fs_gemv_s(ta, <int>A.shape[0], <int>A.shape[1], <float>alpha, &A[0, 0],
                  <int>A.shape[1], &x[0], 1, <float>beta, &y[0], 1)
    else:
        fs_gemv_d(ta, <int>A.shape[0], <int>A.shape[1], alpha, &A[0, 0],
                  <int>A.shape[1], &x[0], 1, beta, &y[0], 1)


def _py_transpose(const floating[:, ::1] A, floating[:, ::1] B):
    """B = A^T through fs_blas.h (B must be A.shape[::-1])."""
    cdef int r = <int>A.shape[0], c = <int>A.shape[1]
    if B.shape[0] != c or B.shape[1] != r:
        raise ValueError("B must have A's shape reversed")
    if r == 0 or c == 0:
        return
    if floating is float:
        fs_transpose_s(r, c, &A[0, 0], c, &B[0, 0], r)
    else:
        fs_transpose_d(r, c, &A[0, 0], c, &B[0, 0], r)


def _py_symm_right_upper(double alpha, const floating[:, ::1] A,
                         const floating[:, ::1] B, double beta,
                         floating[:, ::1] C):
    """C = alpha B A + beta C, A symmetric (upper triangle read)."""
    cdef int m = <int>B.shape[0], n = <int>B.shape[1]
    if floating is float:
        fs_symm_right_upper_s(m, n, <float>alpha, &A[0, 0], n, &B[0, 0], n,
                              <float>beta, &C[0, 0], n)
    else:
        fs_symm_right_upper_d(m, n, alpha, &A[0, 0], n, &B[0, 0], n, beta,
                              &C[0, 0], n)


def _py_syr2k_upper_trans(double alpha, const floating[:, ::1] A,
                          const floating[:, ::1] B, double beta,
                          floating[:, ::1] C):
    """Upper triangle of C = alpha (A^T B + B^T A) + beta C."""
    cdef int k = <int>A.shape[0], n = <int>A.shape[1]
    if floating is float:
        fs_syr2k_upper_trans_s(n, k, <float>alpha, &A[0, 0], n, &B[0, 0], n,
                               <float>beta, &C[0, 0], n)
    else:
        fs_syr2k_upper_trans_d(n, k, alpha, &A[0, 0], n, &B[0, 0], n, beta,
                               &C[0, 0], n)


def _py_gram_rows(const floating[:, ::1] A, floating[:, ::1] C):
    """C = A A^T (both triangles)."""
    cdef int n = <int>A.shape[0], k = <int>A.shape[1]
    if floating is float:
        fs_gram_rows_s(n, k, &A[0, 0], k, &C[0, 0], n)
    else:
        fs_gram_rows_d(n, k, &A[0, 0], k, &C[0, 0], n)


def _py_inverse(double[:, ::1] A):
    """A <- A^-1 in place by Gauss-Jordan (fs_inverse_d); returns 0, or
    k + 1 when column k has no finite nonzero pivot."""
    cdef int n = <int>A.shape[0], info
    if A.shape[1] != n:
        raise ValueError("A must be square")
    if n == 0:
        return 0
    cdef int* piv = <int*>malloc(n * sizeof(int))
    cdef double* w = <double*>malloc(n * sizeof(double))
    if piv == NULL or w == NULL:
        free(piv)
        free(w)
        raise MemoryError()
    info = fs_inverse_d(n, &A[0, 0], piv, w)
    free(piv)
    free(w)
    return info


def _py_lu_solve(floating[:, ::1] A, floating[:, ::1] B):
    """Solve A x = b for each row b of B (in place) by LU; returns info."""
    cdef int n = <int>A.shape[0], info
    cdef int* ipiv = <int*>malloc(n * sizeof(int))
    if ipiv == NULL:
        raise MemoryError()
    if floating is float:
        info = fs_getrf_s(n, &A[0, 0], n, ipiv)
        if info == 0:
            info = fs_getrs_s(n, <int>B.shape[0], &A[0, 0], n, ipiv, &B[0, 0], n)
    else:
        info = fs_getrf_d(n, &A[0, 0], n, ipiv)
        if info == 0:
            info = fs_getrs_d(n, <int>B.shape[0], &A[0, 0], n, ipiv, &B[0, 0], n)
    free(ipiv)
    return info
