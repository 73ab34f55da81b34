"""Domain randomisation: every episode draws its own environment params.

    env = RandomizedParams(env, "CartPole-v1", {"length": (0.25, 2.0)})   # pole half-length ~ U[0.25, 2] per episode

At each reset, each named field of the params is drawn from its range, independently, from the reset's key:
uniformly from [low, high], or log-uniformly for a range (low, high, "log") (log x ~ U[log low, log high], for
scales such as masses and lengths, 0 < low); the episode then runs under those params, carried in the state
(`RandomizedParamsState.params`), and fields derived from them follow (`envs.override_params`: CartPole's
total_mass and polemass_length). The policy does not observe the draws. `RandomizedParams` is a gymnax
`Environment` built from `step_env`, `reset_env` and `is_truncated`, so gymnax's auto-resetting `step` draws a new
episode's params with its reset state, and `PredrawnResets` can draw them ahead of a rollout like any reset.

To let the policy see them, `ObserveParams` appends the episode's fields to the observation, each scaled to
[-1, 1] over its range (a log-uniform one in log space):

    env = ObserveParams(RandomizedParams(env, "CartPole-v1", ranges), ranges)   # obs [4] -> [5]

Over a nominal (not randomised) environment it appends the fields of the params it is given, so a policy trained
with observed draws can be evaluated on any fixed variant.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from pgjax.envs.registry import derived_fields, numeric_fields, override_params

Array = jax.Array

# The third element of a log-uniform range (low, high, LOG_UNIFORM); a range of two is uniform.
LOG_UNIFORM = "log"


@struct.dataclass
class RandomizedParamsState:
    """State of `RandomizedParams`.

    Attributes:
      env_state: the inner environment's state.
      params: the params of the current episode (drawn at its reset).
    """

    env_state: Any
    params: Any


class _InnerEnvironment(environment.Environment):
    """A gymnax `Environment` built over another one's `step_env` / `reset_env` / `is_truncated` (so gymnax's
    auto-resetting `step`, and `PredrawnResets`, work over it); forwards everything a subclass does not change."""

    def __init__(self, env: Any):
        from pgjax.envs.wrappers import Wrapper

        if isinstance(env, Wrapper):  # its step_env / reset_env are the bare environment's: it would be skipped
            raise ValueError(f"{type(self).__name__} goes below pgjax's wrappers: pass the bare gymnax environment "
                             f"(or a RandomizedParams), and wrap the result; got {type(env).__name__}.")
        super().__init__()
        self._env = env

    @property
    def default_params(self) -> Any:
        return self._env.default_params

    def reset_env(self, key: Array, params: Any) -> tuple[Any, Any]:
        return self._env.reset_env(key, params)

    def step_env(self, key: Array, state: Any, action: Any, params: Any) -> tuple:
        return self._env.step_env(key, state, action, params)

    def is_truncated(self, state: Any, params: Any) -> Array:
        return self._env.is_truncated(state, params)

    @property
    def name(self) -> str:
        return self._env.name

    @property
    def num_actions(self) -> int:
        return self._env.num_actions

    def action_space(self, params: Any = None):
        return self._env.action_space(params)

    def observation_space(self, params: Any = None):
        return self._env.observation_space(params)


class RandomizedParams(_InnerEnvironment):
    """`env` whose params are redrawn at every reset: field ~ U[low, high] for each entry of `ranges`.

    Args:
      env: a gymnax `Environment` (unwrapped: `step_env` / `reset_env` are used).
      env_id: its id, for the derived fields of `envs.override_params`.
      ranges: {field: (low, high)} or {field: (low, high, "log")}, numeric scalar fields of the params with finite
        low <= high (0 < low for "log"). Each episode draws u ~ U[low, high), or u = exp(v), v ~ U[log low, log high),
        for "log": float fields get u (float32 rounding can return high itself, as `jax.random.uniform` can),
        int fields (e.g. max_steps_in_episode) floor(u), so the integers from floor(low) to ceil(high) - 1 (high
        itself only when low == high).

    The params passed to `reset` / `step` give the other fields (e.g. a grid lane's `env.<field>` values).

    Raises:
      ValueError: a field that is not a numeric scalar field of the params, or a bad range.
    """

    def __init__(self, env: Any, env_id: str, ranges: dict[str, tuple[float, float]]):
        checked = check_ranges(env_id, env.default_params, ranges)
        if env_id != env.name and (derived_fields(env_id) or derived_fields(env.name)):
            raise ValueError(f"RandomizedParams: env_id {env_id!r} is not the environment's own id {env.name!r}, "
                             "which selects the params fields derived from the drawn ones; pass env.name.")
        super().__init__(env)
        self._env_id = env_id
        self._ranges = checked

    def draw_params(self, key: Array, params: Any) -> Any:
        """`params` with every randomised field drawn from its range (one episode's params)."""
        keys = jax.random.split(key, len(self._ranges))
        drawn = {}
        for k, (name, bounds) in zip(keys, self._ranges.items()):
            default = getattr(params, name)
            u = _draw(k, bounds)
            if _is_int(default):  # clipped: float32 rounding put exp(log 7) at 6.9999995, low + f (high - low) at high
                lowest = math.floor(bounds[0])
                u = jnp.clip(jnp.floor(u), lowest, max(lowest, math.ceil(bounds[1]) - 1))
                drawn[name] = u.astype(jnp.int32)
            else:
                drawn[name] = u
        return override_params(self._env_id, params, drawn)

    def reset_env(self, key: Array, params: Any) -> tuple[Any, RandomizedParamsState]:
        """Draw the episode's params (`draw_params`), then reset the inner environment under them."""
        key_params, key_reset = jax.random.split(key)
        episode_params = self.draw_params(key_params, params)
        obs, state = self._env.reset_env(key_reset, episode_params)
        return obs, RandomizedParamsState(state, episode_params)

    def step_env(self, key: Array, state: RandomizedParamsState, action: Any, params: Any) -> tuple:
        """The inner `step_env` under the episode's params (a `Box` action clipped to the episode's bounds)."""
        space = self._env.action_space(state.params)
        if isinstance(space, spaces.Box):  # the episode's own bounds (ClipAction above clips to their union)
            action = jnp.clip(action, space.low, space.high)
        obs, env_state, reward, terminated, info = self._env.step_env(key, state.env_state, action, state.params)
        return obs, state.replace(env_state=env_state), reward, terminated, info

    def is_truncated(self, state: RandomizedParamsState, params: Any) -> Array:
        """The inner time limit under the episode's params (a bool scalar)."""
        return self._env.is_truncated(state.env_state, state.params)

    def action_space(self, params: Any = None):
        """The inner action space; a `Box` widened to the union of the episodes' boxes when a randomised field sets
        its bounds (Pendulum's max_torque, MountainCarContinuous's min_action / max_action): the smallest low and
        the largest high over the ranges' corners (bounds monotone in each field). `ClipAction` above clips to
        it, and `step_env` clips again to the episode's own box."""
        params = self.default_params if params is None else params
        space = self._env.action_space(params)
        if not isinstance(space, spaces.Box):
            return space
        low, high = jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)
        for corner in itertools.product(*(bounds[:2] for bounds in self._ranges.values())):
            drawn = {name: int(value) if _is_int(getattr(params, name)) else value
                     for name, value in zip(self._ranges, corner)}
            box = self._env.action_space(override_params(self._env_id, params, drawn))
            low, high = jnp.minimum(low, box.low), jnp.maximum(high, box.high)
        return spaces.Box(low, high, space.shape, space.dtype)


class ObserveParams(_InnerEnvironment):
    """`env`'s observation, flattened to float32 [D], followed by one feature per entry of `ranges`: the episode's
    value x of that params field, scaled to (x - m) / h with m = (low + high) / 2, h = (high - low) / 2 (h = 1 for
    a zero-width range), so draws from the range lie in [-1, 1]; for a log-uniform range (low, high, "log") the same
    with log x, log low and log high (x <= 0 counts as the smallest positive float32). Observation
    [D + len(ranges)].

    The episode's params are `RandomizedParamsState.params` when `env` is a `RandomizedParams`, and otherwise the
    params passed to `reset` / `step` (a nominal environment, a grid lane's variant, an evaluation's variant; values
    outside the range give features outside [-1, 1]). Built from `step_env`, `reset_env` and `is_truncated` like
    `RandomizedParams`, so gymnax's auto-reset selects the new episode's features with its observation.

    Args:
      env: a gymnax `Environment`: unwrapped, or a `RandomizedParams`.
      ranges: {field: (low, high)} or {field: (low, high, "log")} over numeric scalar fields of the params, usually
        the randomised ranges.

    Raises:
      ValueError: a bad range (`check_range`) or a field that is not a numeric scalar field of the params.
    """

    def __init__(self, env: Any, ranges: dict[str, tuple[float, float]]):
        checked = check_ranges(env.name, env.default_params, ranges)
        super().__init__(env)
        self._fields = tuple(checked)
        self._log = tuple(len(checked[n]) == 3 for n in self._fields)
        lows, highs = (jnp.asarray([_scale(checked[n][i], log) for n, log in zip(self._fields, self._log)],
                                   jnp.float32) for i in (0, 1))
        self._center = (lows + highs) / 2
        self._half_width = jnp.where(highs > lows, (highs - lows) / 2, 1.0)

    def features(self, episode_params: Any) -> Array:
        """[len(ranges)] float32: the scaled fields of one episode's params."""
        values = jnp.stack([_scale(jnp.asarray(getattr(episode_params, n), jnp.float32), log)
                            for n, log in zip(self._fields, self._log)])
        return (values - self._center) / self._half_width

    def _observe(self, obs: Any, state: Any, params: Any) -> Array:
        episode_params = state.params if isinstance(state, RandomizedParamsState) else params
        return jnp.concatenate([jnp.reshape(obs, (-1,)).astype(jnp.float32), self.features(episode_params)])

    def reset_env(self, key: Array, params: Any) -> tuple[Array, Any]:
        """(concat(flat obs [D], `features` [len(ranges)]) float32, state)."""
        obs, state = self._env.reset_env(key, params)
        return self._observe(obs, state, params), state

    def step_env(self, key: Array, state: Any, action: Any, params: Any) -> tuple:
        """The inner `step_env` with obs -> concat(flat obs [D], `features` [len(ranges)]), float32."""
        obs, state, reward, terminated, info = self._env.step_env(key, state, action, params)
        return self._observe(obs, state, params), state, reward, terminated, info

    def observation_space(self, params: Any = None) -> spaces.Box:
        """Box of shape [D + len(ranges)]: the inner bounds, flattened, then (-inf, inf) for the features."""
        inner = self._env.observation_space(params)
        flat = lambda bound: jnp.reshape(  # noqa: E731
            jnp.broadcast_to(jnp.asarray(bound, jnp.float32), inner.shape), (-1,))
        extra = jnp.full((len(self._fields),), jnp.inf, jnp.float32)  # evaluated variants may lie outside [-1, 1]
        low = jnp.concatenate([flat(inner.low), -extra])
        high = jnp.concatenate([flat(inner.high), extra])
        return spaces.Box(low, high, (low.shape[0],), jnp.float32)


def _is_int(value: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(value), jnp.integer)


def _draw(key: Array, bounds: tuple) -> Array:
    """One float32 draw from a checked range: U[low, high), or exp(U[log low, log high)) for (low, high, "log")."""
    if len(bounds) == 3:
        return jnp.exp(jax.random.uniform(key, (), jnp.float32, math.log(bounds[0]), math.log(bounds[1])))
    return jax.random.uniform(key, (), jnp.float32, bounds[0], bounds[1])


def _scale(x: Any, log: bool) -> Any:
    """x, or log x for a log-uniform field (x <= 0 as the smallest positive float32, so the feature stays finite)."""
    if not log:
        return x
    if isinstance(x, float):
        return math.log(x)
    return jnp.log(jnp.maximum(x, jnp.finfo(jnp.float32).tiny))


def check_range(owner: str, name: Any, bounds: Any) -> tuple:
    """(low, high) as floats, or (low, high, "log") for a log-uniform range; ValueError naming `owner` and the field
    unless `name` is a string and `bounds` two finite numbers with low <= high, optionally followed by "log" (then
    0 < low)."""
    log = isinstance(bounds, (tuple, list)) and len(bounds) == 3 and bounds[2] == LOG_UNIFORM
    numbers = bounds[:2] if log else bounds
    if (not isinstance(name, str) or not isinstance(bounds, (tuple, list)) or len(numbers) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in numbers)):
        raise ValueError(f"{owner}: a randomised range must be (field, low, high) with finite numbers, e.g. "
                         f"('length', 0.25, 2.0), or (field, low, high, {LOG_UNIFORM!r}) for a log-uniform one; "
                         f"got {(name, bounds)!r}.")
    low, high = float(numbers[0]), float(numbers[1])
    if low > high:
        raise ValueError(f"{owner}: the range of {name} has low {low} > high {high}; swap them.")
    if log and low <= 0:
        raise ValueError(f"{owner}: the log-uniform range of {name} must have low > 0; got low {low} (a uniform "
                         f"range takes values down to 0 and below).")
    return (low, high, LOG_UNIFORM) if log else (low, high)


def check_ranges(env_id: str, params: Any, ranges: Any) -> dict[str, tuple]:
    """`ranges` with each range as `check_range` returns it; ValueError naming the entry and the fix unless `ranges`
    is {field: (low, high)} or {field: (low, high, "log")} over numeric scalar fields of `params` with finite
    low <= high (and low >= 1 for the step limit)."""
    numeric, checked = list(numeric_fields(params)), {}
    if not isinstance(ranges, dict) or not ranges:
        raise ValueError(f"{env_id}: the randomised ranges must be a non-empty {{field: (low, high)}}; got {ranges!r}.")
    for name, bounds in ranges.items():
        if name not in numeric:
            raise ValueError(f"{env_id}: cannot randomise {name!r}: only the numeric fields of its params can be "
                             f"({', '.join(numeric)}).")
        checked[name] = check_range(env_id, name, bounds)
        if name == "max_steps_in_episode" and checked[name][0] < 1:
            raise ValueError(f"{env_id}: the step limit's range must start at >= 1; got low {checked[name][0]}.")
    return checked
