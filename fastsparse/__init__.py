"""fastsparse: exact training of output layers with very large sparse targets.

Implements Vincent, de Brebisson and Bouthillier, "Efficient Exact Gradient
Update for training Deep Networks with Very Large Sparse Targets" (NIPS
2015): an SGD step of a D x d output layer with K-sparse targets in
O(d^2 + K d) instead of O(D d), with exactly the naive layer's results.
"""
try:
    from . import _core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on how it is run
    raise ImportError(
        "fastsparse's compiled extensions could not be imported. If you are "
        "running from the source checkout, build them first ('pip install -e .') "
        "or run from another directory after 'pip install .'."
    ) from exc

from . import losses
from ._errors import CheckpointError, StepRefusedError
from ._factored import FactoredOutputLayer
from ._naive import NaiveOutputLayer
from ._version import __version__

__all__ = ["FactoredOutputLayer", "NaiveOutputLayer", "CheckpointError",
           "StepRefusedError", "losses", "__version__"]
