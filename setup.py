"""Build script: cythonizes the extension (metadata lives in pyproject.toml).

BLAS and LAPACK are taken at run time from ``scipy.linalg.cython_blas`` and
``scipy.linalg.cython_lapack``: nothing is linked against a BLAS library.
Set ``FASTSPARSE_NATIVE=1`` to compile for the building machine's CPU
(``-march=native``); the default build is portable.
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = []
if not sys.platform.startswith("win"):
    compile_args = ["-O3"]
    if os.environ.get("FASTSPARSE_NATIVE", "0") not in ("", "0"):
        compile_args.append("-march=native")

extensions = [
    Extension("fastsparse._core", ["fastsparse/_core.pyx", "src_c/fs_sparse.c",
                                    "src_c/fs_loss.c", "src_c/fs_kernels.c"],
              include_dirs=["src_c"], extra_compile_args=compile_args),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
