"""Build script: cythonizes the extension (metadata lives in pyproject.toml).

BLAS and LAPACK are taken at run time from ``scipy.linalg.cython_blas`` and
``scipy.linalg.cython_lapack``: nothing is linked against a BLAS library.
Set ``FASTSPARSE_NATIVE=1`` to compile for the building machine's CPU
(``-march=native``); the default build is portable.
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """build_ext without the build machine's library paths: some Pythons
    (pyenv, conda) put an rpath to their own lib directory into LDSHARED,
    which would end up in the wheel's extension."""

    def build_extensions(self):
        for attr in ("linker_so", "linker_so_cxx"):
            cmd = getattr(self.compiler, attr, None)
            if cmd:
                setattr(self.compiler, attr,
                        [a for a in cmd if not a.startswith(("-Wl,-rpath", "-Wl,-R"))])
        super().build_extensions()


compile_args, link_args = [], []
if not sys.platform.startswith("win"):
    # no debug information in the wheel (it tripled its size)
    compile_args = ["-O3", "-g0"]
    if os.environ.get("FASTSPARSE_NATIVE", "0") not in ("", "0"):
        compile_args.append("-march=native")
if sys.platform.startswith("linux"):
    link_args = ["-Wl,--strip-all"]

extensions = [
    Extension("fastsparse._core", ["fastsparse/_core.pyx", "src_c/fs_sparse.c",
                                    "src_c/fs_loss.c", "src_c/fs_kernels.c"],
              include_dirs=["src_c", numpy.get_include()],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
              extra_compile_args=compile_args, extra_link_args=link_args),
]

setup(
    cmdclass={"build_ext": BuildExt},
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
