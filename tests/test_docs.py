"""The README's Python code blocks run as pasted and print something, and
the Examples sections of the public docstrings hold (doctest).  A block
whose fence says more than ``python`` (e.g. a sketch for torchrun) is a
sketch of a program tested elsewhere."""
import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    if not README.exists():
        return []
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("i", range(len(_blocks())))
def test_readme_code_block_runs(i, tmp_path):
    code = _blocks()[i]
    if "import torch" in code:
        pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"block {i}:\n{code}\n--- stderr\n{proc.stderr}"
    assert proc.stdout.strip(), f"block {i} prints nothing:\n{code}"


def test_readme_has_code_blocks():
    if not README.exists():
        pytest.skip("not running from a source checkout")
    assert len(_blocks()) >= 3


@pytest.mark.parametrize("module", ["fastsparse._factored", "fastsparse._naive",
                                    "fastsparse._base", "fastsparse.losses",
                                    "fastsparse.datasets"])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    failures, tried = doctest.testmod(mod, optionflags=doctest.ELLIPSIS
                                      | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    assert tried > 0, f"{module} has no Examples"


def test_torch_docstring_examples():
    pytest.importorskip("torch")
    mod = importlib.import_module("fastsparse.torch")
    failures, tried = doctest.testmod(mod, optionflags=doctest.ELLIPSIS
                                      | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0 and tried > 0
