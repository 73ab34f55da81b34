"""pgjax: policy-gradient reinforcement learning in JAX."""

# The tabular core imports only jax; `pgjax.envs`, `pgjax.algos` (gymnax, flax, optax) load on demand.
from pgjax import estimators, tabular, trajectory

__version__ = "0.1.0"
__all__ = ["estimators", "tabular", "trajectory", "__version__"]
