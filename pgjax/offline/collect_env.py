"""Logging episodes of a behaviour policy on a gymnax environment into a `Dataset`.

Each of the N rows is one episode from its own reset, run for at most T steps:

    s_0 ~ reset,  a_t, log mu(a_t|s_t) = policy_fn(key_t, s_t),  (s_{t+1}, r_t, term_t, trunc_t) = step(s_t, a_t)

`mask_t` is True up to and including the first step with term_t or trunc_t and False after it
(gymnax resets automatically: those later steps belong to a new episode and are discarded).
`terminals_t` = term_t on valid steps: a true absorbing state, never a time limit. For every
valid step `next_observations_t` is s_{t+1} before the auto-reset (gymnax's
info["final_observation"]), so truncated episodes can be bootstrapped from it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from pgjax.offline.dataset import Dataset
from pgjax.validation import check_int

Array = jax.Array
PolicyFn = Callable[[Array, Array], tuple[Array, Array]]


def collect_env(
    key: Array, env: Any, env_params: Any, policy_fn: PolicyFn, num_trajectories: int, horizon: int
) -> Dataset:
    """Roll out `policy_fn` for N episodes of at most T steps on a gymnax environment, in one compiled call.

    Args:
      key: PRNG key.
      env: a gymnax environment (or a `pgjax.envs` wrapper of one), e.g. from `pgjax.envs.make(env_id)`.
      env_params: its params.
      policy_fn: mu: (key, observation [*obs_shape]) -> (action [*action_shape], log mu(action|obs) []),
        written for a single observation (it is vmapped over the N environments); pure and jittable.
        The compiled rollout is reused for the same function object. A policy whose parameters change (an
        improved policy each round) goes in as `jax.tree_util.Partial(fn, params)`, called fn(params, key, obs):
        its params are traced arrays, so new ones reuse the compiled rollout instead of compiling another.
      num_trajectories: N >= 1.
      horizon: T >= 1. Episodes still running after T steps are cut there (mask all True,
        terminals False on the last step: a truncation).

    Returns:
      A `Dataset` [N, T, ...]. On padding steps (mask False) rewards are 0 and terminals False;
      observations, actions and log-probabilities there come from the discarded continuation.
      `initial_observations` holds the N reset observations s_0.
    """
    num_trajectories = check_int("collect_env: num_trajectories", num_trajectories)
    horizon = check_int("collect_env: horizon", horizon)
    if not isinstance(policy_fn, jax.tree_util.Partial):  # a pytree: the function is its static part
        policy_fn = jax.tree_util.Partial(policy_fn)
    return _collect_env(key, env, env_params, policy_fn, num_trajectories, horizon)


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def _collect_env(key, env, env_params, policy_fn, num_trajectories, horizon):
    def episode(key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, env_params)

        def step(carry, step_key):
            obs, state, running = carry
            key_act, key_env = jax.random.split(step_key)
            action, log_prob = policy_fn(key_act, obs)
            next_obs, state, reward, terminated, truncated, info = env.step(key_env, state, action, env_params)
            done = jnp.asarray(terminated, bool) | jnp.asarray(truncated, bool)
            out = dict(
                observations=obs,
                actions=action,
                rewards=jnp.where(running, jnp.asarray(reward, jnp.float32), 0.0),
                next_observations=info["final_observation"],
                terminals=running & jnp.asarray(terminated, bool),
                mask=running,
                behaviour_log_probs=jnp.asarray(log_prob, jnp.float32),
            )
            return (next_obs, state, running & ~done), out

        _, steps = lax.scan(step, (obs, state, jnp.ones((), bool)), jax.random.split(key_steps, horizon))
        return Dataset(**steps, initial_observations=obs)

    return jax.vmap(episode)(jax.random.split(key, num_trajectories))
