#!/bin/sh
# Build bench/c/fs_microbench from bench/c/fs_microbench.c and the library's
# kernels (src_c/*.c), linked against the BLAS/LAPACK of the
# scipy-openblas32 wheel (pip install scipy-openblas32), with an rpath so
# that it runs without LD_LIBRARY_PATH.
#
#   sh bench/c/build.sh [-o OUTPUT]
#
# Environment: PYTHON (interpreter with scipy_openblas32, default python3),
# CC (default cc), CFLAGS (default -O3; FASTSPARSE_NATIVE=1 adds
# -march=native, as for the package build).
# Default output: bench/c/build/fs_microbench.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$here/build/fs_microbench"
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
CC=${CC:-cc}
CFLAGS=${CFLAGS:--O3}
if [ "${FASTSPARSE_NATIVE:-0}" != "0" ] && [ -n "${FASTSPARSE_NATIVE:-}" ]; then
    CFLAGS="$CFLAGS -march=native"
fi
if ! info=$("$PYTHON" -c "import scipy_openblas32 as s; print(s.get_lib_dir()); print(s.get_library())" 2>/dev/null); then
    echo "build.sh: scipy_openblas32 is not importable with $PYTHON" \
         "(pip install scipy-openblas32)" >&2
    exit 3
fi
libdir=$(echo "$info" | sed -n 1p)
lib=$(echo "$info" | sed -n 2p)
mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086
"$CC" -std=c11 -D_POSIX_C_SOURCE=199309L $CFLAGS -Wall -Wextra \
    -DFS_BLAS_PREFIX=scipy_ -I"$root/src_c" \
    "$here/fs_microbench.c" "$root/src_c/fs_kernels.c" \
    "$root/src_c/fs_sparse.c" "$root/src_c/fs_loss.c" \
    -L"$libdir" -l"$lib" -Wl,-rpath,"$libdir" -lm -o "$out"
echo "$out"
