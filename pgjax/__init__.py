"""pgjax: policy-gradient reinforcement learning in JAX."""

from pgjax import envs, estimators, tabular, trajectory

__version__ = "0.1.0"
__all__ = ["envs", "estimators", "tabular", "trajectory", "__version__"]
