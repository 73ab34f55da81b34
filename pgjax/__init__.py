"""pgjax: policy-gradient reinforcement learning in JAX."""

from pgjax import estimators, tabular, trajectory

__version__ = "0.1.0"
__all__ = ["estimators", "tabular", "trajectory", "__version__"]
