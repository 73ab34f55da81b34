"""Questions a training loop asks about an environment's spaces.

Each takes `(env, params=None)`, with `params=None` meaning `env.default_params`, and
works on bare gymnax environments, `TabularEnv` and any stack of pgjax wrappers (for a
`VecEnv` the answers are those of one environment).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import spaces

Array = jax.Array


def _params(env: Any, params: Any) -> Any:
    return env.default_params if params is None else params


def is_discrete(env: Any, params: Any = None) -> bool:
    """True if the action space is `Discrete` (a categorical policy), False for `Box`."""
    space = env.action_space(_params(env, params))
    if isinstance(space, spaces.Discrete):
        return True
    if isinstance(space, spaces.Box):
        return False
    raise ValueError(f"{env.name}: unsupported action space {space!r}; need Discrete or Box.")


def action_dim(env: Any, params: Any = None) -> int:
    """The policy head's width: the number of actions for `Discrete`, the flat size of a `Box` action."""
    space = env.action_space(_params(env, params))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Box):
        return int(math.prod(space.shape))
    raise ValueError(f"{env.name}: unsupported action space {space!r}; need Discrete or Box.")


def observation_size(env: Any, params: Any = None) -> int:
    """The flattened observation size D = prod(observation shape)."""
    return int(math.prod(env.observation_space(_params(env, params)).shape))


def action_bounds(env: Any, params: Any = None) -> tuple[Array, Array]:
    """(low, high) of a `Box` action space, each float32 of the action's shape.

    Raises:
      ValueError: for a discrete action space.
    """
    space = env.action_space(_params(env, params))
    if not isinstance(space, spaces.Box):
        raise ValueError(f"{env.name}: action_bounds needs a Box action space; got {space!r}.")
    shape = tuple(space.shape)
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), shape)
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), shape)
    return low, high
