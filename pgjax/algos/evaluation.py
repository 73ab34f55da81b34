"""Evaluating a policy: whole episodes on fresh environments, observation statistics frozen, actions by the
policy's mode (or sampled).

    returns = make_episode_returns(env_id, env_kwargs, network, num_episodes)(key, params, obs_statistics)

The same pure function runs after training (`pgjax.runs.evaluate`, `experiments/evaluate.py`) and inside the
compiled training run every `eval_every` updates (`OnPolicyConfig.eval_every`, the metric `eval_return`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from pgjax import envs
from pgjax.nets import ActorCritic
from pgjax.validation import check_int

Array = jax.Array


def observation_statistics(env_state: Any) -> Any:
    """The observation-normaliser statistics inside a (batched) env state, or None."""
    found = envs.running_statistics(env_state)["observation"]
    return found[0] if found else None


def make_episode_returns(
    env_id: str,
    env_kwargs: Any,
    network: ActorCritic,
    num_episodes: int,
    deterministic: bool = True,
    normalize_observations: bool = False,
    observed_ranges: dict[str, tuple[float, float]] | None = None,
) -> Callable[..., Array]:
    """`episode_returns(key, params, obs_statistics=None, env_params=None) -> [num_episodes]`: undiscounted returns
    of one policy.

    Runs `num_episodes` environments of `env_id` (one episode each, from fresh resets) until every one has ended,
    for at most the environment's step limit + 1 steps, and keeps each one's first episode: G = sum_t r_t, NaN for
    an episode that never ended or whose observations or rewards turned non-finite (dynamics that cannot run with
    the params: it would otherwise count as a plausible return).
    Actions are the policy's mode (`deterministic`) or samples. With `normalize_observations`, observations are
    normalised by `obs_statistics` (`envs.RunningStatistics`, e.g. `observation_statistics` of a training env
    state), frozen. `env_params` (default: those of `env_id` and `env_kwargs`) may be another variant of the
    environment, e.g. a grid lane's (`common.lane_env_params`). With `observed_ranges` (a policy trained with
    `env_randomize_observe`) the observations end with those fields of `env_params`, scaled as in training
    (`envs.ObserveParams`). Pure and jit/vmap-able; `params`, `obs_statistics` and `env_params` may be traced.
    """
    check_int("make_episode_returns: num_episodes", num_episodes)
    env, default_params = envs.make(env_id, **dict(env_kwargs))
    discrete = envs.is_discrete(env, default_params)
    if observed_ranges:
        env = envs.ObserveParams(env, observed_ranges)
    tracked = envs.EpisodeStatistics(envs.FlattenObservation(env))

    def episode_returns(key: Array, params: Any, obs_statistics: Any = None, env_params: Any = None) -> Array:
        env_params = default_params if env_params is None else env_params
        max_steps = env_params.max_steps_in_episode  # may be traced: the loop below stops on a traced bound
        env = tracked
        if normalize_observations:  # built here: the statistics are an argument
            if obs_statistics is None:  # empty statistics (mean 0, var 1) would run the policy on raw observations
                raise ValueError("episode_returns: normalize_observations needs the trained observation statistics "
                                 "(obs_statistics: `observation_statistics` of the training env state, or the "
                                 "checkpoint's); got None.")
            env = envs.NormalizeObservation(env, update=False, initial_statistics=obs_statistics)
        if not discrete:
            env = envs.ClipAction(env)
        env = envs.VecEnv(env, num_episodes)
        key_reset, key_loop = jax.random.split(key)
        obs, state = env.reset(key_reset, env_params)

        def step(carry):
            t, obs, state, returns, done, broken = carry
            key_act, key_env = jax.random.split(jax.random.fold_in(key_loop, t))
            dist, _ = network.apply(params, obs)
            action = dist.mode() if deterministic else dist.sample(key_act)
            obs, state, reward, _, _, info = env.step(key_env, state, action, env_params)
            finite = jnp.all(jnp.isfinite(info["final_observation"]), axis=-1) & jnp.isfinite(reward)
            broken = broken | (~done & ~finite)
            first_end = info["returned_episode"] & ~done
            returns = jnp.where(first_end, info["episode_return"], returns)
            return t + 1, obs, state, returns, done | info["returned_episode"], broken

        def running(carry):
            t, _, _, _, done, _ = carry
            return (t <= max_steps) & ~jnp.all(done)

        # Stops once every episode has ended (Acrobot's take ~80 steps of its 500): the returns are those of
        # max_steps + 1 steps, whose later steps only play the next episodes.
        init = (jnp.int32(0), obs, state, jnp.zeros(num_episodes), jnp.zeros(num_episodes, bool),
                jnp.zeros(num_episodes, bool))
        _, _, _, returns, done, broken = lax.while_loop(running, step, init)
        return jnp.where(done & ~broken, returns, jnp.nan)

    return episode_returns
