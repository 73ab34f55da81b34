"""Trajectories on tabular MDPs: sampling, log-densities and discounted returns.

A trajectory of horizon T is h = (s_0, a_0, s_1, ..., s_{T-1}, a_{T-1}, s_T) with rewards
r_t = R(s_t, a_t). Its density under pi (lecture):

    p_pi(h) = mu0(s_0) prod_{t=0}^{T-1} pi(a_t|s_t) P(s_{t+1}|s_t, a_t)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pgjax.tabular.evaluation import check_policy_table
from pgjax.tabular.mdp import MDP
from pgjax.validation import check_int, check_known_discount

Array = jax.Array


class Trajectory(NamedTuple):
    """A fixed-horizon trajectory (leading batch axes allowed).

    Attributes:
      states: s_t [..., T] (int32).
      actions: a_t [..., T] (int32).
      rewards: r_t = R(s_t, a_t) [..., T].
      next_states: s_{t+1} [..., T] (int32).
    """

    states: Array
    actions: Array
    rewards: Array
    next_states: Array


def safe_log(p: Array) -> Array:
    """log p elementwise (same shape as p), with log 0 = -inf and no NaN gradient at 0."""
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)


def sample_index(key: Array, cdf: Array) -> Array:
    """Draw i ~ p by inversion from the cumulative sums cdf [K] of p: the first i with u * cdf[-1] < cdf[i],
    u ~ U[0, 1); an int32 scalar in [0, K).

    O(log K) per draw (a binary search), against O(K) Gumbel draws for `jax.random.categorical`;
    indices with p_i = 0 are never returned.
    """
    u = jax.random.uniform(key, dtype=cdf.dtype) * cdf[-1]
    index = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(index, cdf.shape[-1] - 1).astype(jnp.int32)


def sample_trajectory(key: Array, mdp: MDP, pi: Array, horizon: int) -> Trajectory:
    """Roll out pi for `horizon` steps from s_0 ~ mu0 with `lax.scan`.

    Args:
      key: PRNG key.
      mdp: an unbatched `MDP`.
      pi: policy [S, A].
      horizon: T, a static Python int >= 1.

    Returns:
      A `Trajectory` with fields of shape [T].
    """
    check_int("sample_trajectory: horizon", horizon)
    check_policy_table(pi, "pi", mdp.reward.shape)  # logits passed as pi sampled their largest entry every time
    key_init, key_steps = jax.random.split(key)
    # The barrier stops XLA from constant-folding the cumsum of a closed-over MDP (slow to compile).
    initial, pi, transition = lax.optimization_barrier((mdp.initial, pi, mdp.transition))
    s0 = sample_index(key_init, jnp.cumsum(initial))
    pi_cdf = jnp.cumsum(pi, axis=-1)
    p_cdf = jnp.cumsum(transition, axis=-1)

    def step(state, step_key):
        key_a, key_s = jax.random.split(step_key)
        action = sample_index(key_a, pi_cdf[state])
        next_state = sample_index(key_s, p_cdf[state, action])
        out = (state, action, mdp.reward[state, action], next_state)
        return next_state, out

    _, (states, actions, rewards, next_states) = lax.scan(step, s0, jax.random.split(key_steps, horizon))
    return Trajectory(states.astype(jnp.int32), actions.astype(jnp.int32), rewards, next_states.astype(jnp.int32))


def sample_trajectories(key: Array, mdp: MDP, pi: Array, horizon: int, num_trajectories: int) -> Trajectory:
    """`num_trajectories` independent trajectories, fields of shape [N, T] (vmap over split keys)."""
    check_int("sample_trajectories: num_trajectories", num_trajectories)
    check_int("sample_trajectories: horizon", horizon)
    keys = jax.random.split(key, num_trajectories)
    return jax.vmap(sample_trajectory, in_axes=(0, None, None, None))(keys, mdp, pi, horizon)


def log_density(traj: Trajectory, mdp: MDP, pi: Array) -> Array:
    """log p_pi(h) = log mu0(s_0) + sum_t [log pi(a_t|s_t) + log P(s_{t+1}|s_t, a_t)].

    Args:
      traj: one `Trajectory` with fields [T] (vmap for a batch).
      mdp: the `MDP` it was sampled from.
      pi: policy [S, A].

    Returns:
      A scalar (-inf for a trajectory impossible under pi or the dynamics).
    """
    if traj.states.ndim != 1:
        raise ValueError(f"log_density: expects one trajectory with fields [T]; got {traj.states.shape}. Use jax.vmap.")
    check_policy_table(pi, "pi", mdp.reward.shape)
    s, a, s_next = traj.states, traj.actions, traj.next_states
    log_mu0 = safe_log(mdp.initial[s[0]])
    log_pi = jnp.sum(safe_log(pi[s, a]))
    log_dyn = jnp.sum(safe_log(mdp.transition[s, a, s_next]))
    return log_mu0 + log_pi + log_dyn


def policy_log_likelihood(traj: Trajectory, pi: Array) -> Array:
    """sum_t log pi(a_t|s_t) over the time axis: the only part of log p_pi(h) that depends on the policy.

    Fields [..., T] -> [...].
    """
    check_policy_table(pi, "pi")
    return jnp.sum(safe_log(pi[traj.states, traj.actions]), axis=-1)


def float_dtype(dtype) -> Any:
    """The dtype to estimate in for data of `dtype`: a floating dtype itself (at least float32: bfloat16 rounds
    gamma = 0.999 to 1 and counts only to 256), any other (integer, bool) JAX's default float. Never an integer: pi
    or gamma cast to it would become 0 or 1."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.promote_types(dtype, jnp.float32)
    return jnp.dtype(jnp.result_type(float))


def discounted_return(rewards: Array, discount: Array) -> Array:
    """G_0 = sum_{t=0}^{T-1} gamma^t r_t for rewards [T]; a scalar (rewards [..., T] -> [...]), at least float32."""
    check_known_discount("discounted_return", discount)
    dtype = float_dtype(rewards.dtype)
    powers = discount ** jnp.arange(rewards.shape[-1], dtype=dtype)
    return jnp.sum(powers * jnp.asarray(rewards, dtype), axis=-1)


def rewards_to_go(rewards: Array, discount: Array) -> Array:
    """G_t = sum_{k=t}^{T-1} gamma^{k-t} r_k for rewards [T], by a reverse scan: G_t = r_t + gamma G_{t+1}.

    Returns:
      G [T]; G[0] equals `discounted_return(rewards, discount)`.
    """

    check_known_discount("rewards_to_go", discount)

    def step(g_next, r):
        g = r + discount * g_next
        return g, g

    # Floating whatever the rewards' dtype (integer rewards: G is not an integer), and at least float32.
    dtype = float_dtype(jnp.result_type(rewards.dtype, discount))
    _, g = lax.scan(step, jnp.zeros((), dtype), jnp.asarray(rewards, dtype), reverse=True)
    return g


def discount_powers(horizon: int, discount: Array, dtype=None) -> Array:
    """gamma^t for t = 0..T-1, shape [T] (in `dtype`, default the discount's; an integer dtype is refused: gamma^t
    would be 0 from t = 1)."""
    check_int("discount_powers: horizon", horizon, minimum=0)
    dtype = dtype or jnp.result_type(discount)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"discount_powers: dtype must be floating; got {jnp.dtype(dtype).name}.")
    return jnp.asarray(discount, dtype) ** jnp.arange(horizon, dtype=dtype)
