"""Helpers of the benchmarks: the environment a measurement ran in.

Tables, progress bars and synthetic data come from the package's public
modules (:mod:`fastsparse.utils`, :mod:`fastsparse.datasets`); what is
here only describes the machine and the checkout, for the reports.
"""
import os
import platform
import subprocess

import numpy as np


def git_revision(path=None):
    """The git commit of the checkout holding ``path``, if there is one.

    Parameters
    ----------
    path : str, optional
        A directory inside the checkout; default: the one of this file.

    Returns
    -------
    str or None
        ``git rev-parse HEAD``, followed by ``" (with uncommitted changes)"``
        when the working tree differs from it; None outside a git checkout
        or without git.
    """
    path = os.path.dirname(os.path.abspath(__file__)) if path is None else path
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=path, check=True, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + (" (with uncommitted changes)" if dirty else "")


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one).

    Returns
    -------
    str
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_lines():
    """A description of the machine and the software, one item per line.

    Call it where the BLAS thread limits of the measurement are in effect,
    so that the thread counts shown are the ones used.

    Returns
    -------
    list of (str, str)
        (name, value) pairs: platform, CPUs, Python, NumPy, SciPy,
        fastsparse version, git revision and the BLAS libraries loaded
        (from ``threadpoolctl.threadpool_info()``).
    """
    import scipy
    from threadpoolctl import threadpool_info

    from fastsparse import __version__

    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = [
        ("platform", platform.platform()),
        ("CPU", f"{cpu}, {os.cpu_count()} logical CPUs ({usable} usable)"),
        ("Python", platform.python_version()),
        ("NumPy / SciPy", f"{np.__version__} / {scipy.__version__}"),
        ("fastsparse", __version__),
        ("git revision", git_revision() or "unknown (not a git checkout)"),
    ]
    for info in threadpool_info():
        lines.append((
            f"{info.get('user_api', '?')} library",
            f"{info.get('internal_api', '?')} {info.get('version', '?')} "
            f"({info.get('architecture', '?')}, {info.get('threading_layer', '?')}), "
            f"{info.get('num_threads', '?')} thread(s), "
            f"{os.path.basename(info.get('filepath', '?'))}"))
    return lines
