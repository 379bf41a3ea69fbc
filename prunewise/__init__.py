"""prunewise: hardware-aware pruning, sparsity and deployment of convolutional networks."""

from prunewise.errors import PrunewiseError

__version__ = "0.1.0"

__all__ = ["PrunewiseError", "__version__"]
