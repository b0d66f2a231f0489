"""Helpers shared by the tests (imported as ``from _helpers import ...``)."""
import numpy as np


def rel_err(a, b):
    """Relative error ||a - b|| / ||b|| (Frobenius); 0 when both are 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb else np.linalg.norm(a - b)


def state_bytes(layer):
    """Every array a checkpoint of ``layer`` holds, as bytes: equal before
    and after a call that must change nothing."""
    return {k: v.tobytes() for k, v in layer._checkpoint_arrays().items()}


def run_isolated(code, cwd, timeout=120, env=None):
    """Run ``code`` in a fresh Python process (so that a crash of the code
    under test, e.g. a segmentation fault, fails the test instead of killing
    the run), from ``cwd`` (outside the source tree: from the checkout root
    ``import fastsparse`` would find the uncompiled sources).  Returns the
    CompletedProcess; a crash shows as a negative return code, with the
    faulthandler traceback in stderr."""
    import os
    import subprocess
    import sys
    import textwrap
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c",
                           textwrap.dedent(code)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_ran(proc):
    """The isolated process exited normally (no crash, no failed assert)."""
    assert proc.returncode == 0, (
        f"isolated process exited with {proc.returncode}"
        f"{' (killed by signal %d)' % -proc.returncode if proc.returncode < 0 else ''}"
        f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
