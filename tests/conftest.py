import numpy as np
import pytest


def rel_err(a, b):
    """Relative error ||a - b|| / ||b|| (Frobenius); 0 when both are 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb else np.linalg.norm(a - b)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
