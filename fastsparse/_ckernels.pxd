# Declarations of the C kernels of src_c/ (extern only: no module of its
# own).  Each extension that links src_c/*.c cimports them from here and,
# before calling a kernel that uses BLAS, fills its copy of the BLAS table
# with fs_blas_set (see src_c/fs_blas.h).
from libc.stdint cimport int64_t

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
                           const float*, float*)
    void fs_csr_gram_add_d(ptrdiff_t, const int64_t*, const int64_t*,
                           const double*, double*)
    void fs_rankk_rows_s(float*, ptrdiff_t, ptrdiff_t, ptrdiff_t, const float*,
                         const float*, ptrdiff_t)
    void fs_rankk_rows_d(double*, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                         const double*, const double*, ptrdiff_t)
    enum: FS_MAX_RANK

cdef extern from "fs_loss.h" nogil:
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

cdef extern from "fs_online.h" nogil:
    enum: FS_ONLINE_DEFAULT_BLOCK
    enum: FS_ONLINE_MIN_EXAMPLES
    void fs_blas_set(void*, void*, void*, void*, void*, void*, void*, void*)
    int fs_online_blocked_s(ptrdiff_t, int, float*, float*, float*, float*,
                            float*, float*, int, const float*, const int64_t*,
                            const int64_t*, const float*, double, double,
                            const fs_loss_spec*, double, int, float*, float*,
                            Py_ssize_t*, double*)
    int fs_online_blocked_d(ptrdiff_t, int, double*, double*, double*,
                            double*, double*, double*, int, const double*,
                            const int64_t*, const int64_t*, const double*,
                            double, double, const fs_loss_spec*, double, int,
                            double*, double*, Py_ssize_t*, double*)

cdef extern from "fs_blas.h" nogil:
    # the row-major wrappers the blocked online kernel calls
    void fs_gemm_s(int, int, int, int, int, float, const float*, int,
                   const float*, int, float, float*, int)
    void fs_gemm_d(int, int, int, int, int, double, const double*, int,
                   const double*, int, double, double*, int)
    void fs_gemv_s(int, int, int, float, const float*, int, const float*,
                   float, float*)
    void fs_gemv_d(int, int, int, double, const double*, int, const double*,
                   double, double*)
    void fs_symm_right_upper_s(int, int, float, const float*, int,
                               const float*, int, float, float*, int)
    void fs_symm_right_upper_d(int, int, double, const double*, int,
                               const double*, int, double, double*, int)
    void fs_syr2k_upper_trans_s(int, int, float, const float*, int,
                                const float*, int, float, float*, int)
    void fs_syr2k_upper_trans_d(int, int, double, const double*, int,
                                const double*, int, double, double*, int)
