#!/bin/sh
# Build the standalone microbenchmark bench/c/fs_microbench from src_c/*.c
# and bench/c/fs_microbench.c, linked against the BLAS/LAPACK library of
# the scipy-openblas32 wheel (pip install scipy-openblas32), with an rpath
# so that it runs without LD_LIBRARY_PATH.
#
#   sh bench/c/build.sh [-o OUTPUT]
#
# Environment:
#   PYTHON             interpreter that has scipy_openblas32 (default python3)
#   CC                 C compiler (default cc)
#   CFLAGS             extra flags (default -O3; FASTSPARSE_NATIVE=1 adds
#                      -march=native, as for the package build)
#   BLAS_INCLUDE, BLAS_LIBDIR, BLAS_LIB, BLAS_PREFIX
#                      another BLAS: its header and library directories, its
#                      library name (for -l) and symbol prefix (e.g. empty
#                      for a plain "sgemm_"); with these, also pass
#                      CFLAGS=-DMB_NO_OPENBLAS if it is not OpenBLAS
# Default output: bench/c/build/fs_microbench.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$here/build/fs_microbench"
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-python3}
CC=${CC:-cc}
CFLAGS=${CFLAGS:--O3}
if [ "${FASTSPARSE_NATIVE:-0}" != "0" ] && [ -n "${FASTSPARSE_NATIVE:-}" ]; then
    CFLAGS="$CFLAGS -march=native"
fi

if [ -z "${BLAS_LIBDIR:-}" ]; then
    if ! info=$("$PYTHON" -c "import scipy_openblas32 as s; print(s.get_include_dir()); print(s.get_lib_dir()); print(s.get_library())" 2>/dev/null); then
        echo "build.sh: scipy_openblas32 is not importable with $PYTHON" \
             "(pip install scipy-openblas32, or set BLAS_LIBDIR etc.)" >&2
        exit 3
    fi
    BLAS_INCLUDE=$(echo "$info" | sed -n 1p)
    BLAS_LIBDIR=$(echo "$info" | sed -n 2p)
    BLAS_LIB=$(echo "$info" | sed -n 3p)
    BLAS_PREFIX=${BLAS_PREFIX-scipy_}
fi
BLAS_INCLUDE=${BLAS_INCLUDE:-$BLAS_LIBDIR}
BLAS_LIB=${BLAS_LIB:-openblas}
BLAS_PREFIX=${BLAS_PREFIX-}

mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086
"$CC" -std=c11 $CFLAGS -Wall -Wextra -Wno-unused-parameter \
    -DFS_BLAS_PREFIX="$BLAS_PREFIX" \
    -I"$root/src_c" -I"$BLAS_INCLUDE" \
    "$here/fs_microbench.c" "$root/src_c/fs_online.c" \
    "$root/src_c/fs_sparse.c" "$root/src_c/fs_loss.c" \
    -L"$BLAS_LIBDIR" -l"$BLAS_LIB" -Wl,-rpath,"$BLAS_LIBDIR" -lm \
    -o "$out"
echo "$out"
