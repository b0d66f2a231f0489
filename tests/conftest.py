"""pytest configuration: run against the installed package, fixtures, and
one clear line about what a run without PyTorch skipped."""
import os
import sys

import numpy as np
import pytest

# From the checkout, ``python -m pytest`` puts the checkout first on
# sys.path, where fastsparse/ holds the uncompiled sources: use the
# installed package instead, unless the sources were built in place
# (``pip install -e .``).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SRC = os.path.join(_ROOT, "fastsparse")
if os.path.isdir(_SRC) and not any(f.startswith("_core.") and f.endswith((".so", ".pyd"))
                                   for f in os.listdir(_SRC)):
    sys.path[:] = [p for p in sys.path
                   if os.path.abspath(p or os.curdir) != _ROOT]
    sys.modules.pop("fastsparse", None)


def pytest_configure(config):
    # also when the tests run without the checkout's pyproject.toml (.ci/run
    # runs a copy of them against the installed wheel, with -m "not slow")
    config.addinivalue_line(
        "markers", "slow: long-running tests (run by .ci/run: pytest -m slow)")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_terminal_summary(terminalreporter):
    try:
        import torch  # noqa: F401
    except ImportError:
        skipped = [r for r in terminalreporter.stats.get("skipped", [])
                   if "torch" in str(getattr(r, "longrepr", ""))]
        if skipped:
            terminalreporter.write_line(
                f"{len(skipped)} tests of the PyTorch integration were skipped: "
                "PyTorch is not installed (pip install \".[torch]\" to run them).")
