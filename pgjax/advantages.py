"""Returns and advantages over a time-major rollout, with termination and truncation kept apart.

Conventions for a rollout of T steps from B parallel environments (arrays [T, B]; [T] also works):

  rewards[t]      r_t, the reward of the env step at t.
  values[t]       V(s_t).
  next_values[t]  V(s_{t+1}) where s_{t+1} is the TRUE next observation: for an episode that
                  ended at step t this is the final observation before the auto-reset, not the
                  reset observation. Without episode ends, next_values[t] == values[t+1].
  terminated[t]   the episode reached a terminal state at t: the future is worth 0, no bootstrap.
  truncated[t]    the episode was cut at t (time limit): the future is worth V(s_{t+1}), so
                  bootstrap from next_values[t].

An episode boundary (terminated OR truncated) always stops the recursion, and the end of the
rollout bootstraps from next_values[T-1] unless the last step terminated. Flags may be bool or
float. `discount` (gamma) and `gae_lambda` (lambda) may be traced scalars, so they can be vmapped;
they are cast to the rewards' dtype, so outputs keep it.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax import lax

from pgjax.trajectory import float_dtype
from pgjax.validation import check_int, check_known, check_known_discount

Array = jax.Array


def _check(rewards: Array, *others: Array) -> None:
    chex.assert_rank(rewards, {1, 2})
    chex.assert_equal_shape([rewards, *others])


def _float(rewards: Array) -> Array:
    """The rewards in the dtype the estimators compute in (`trajectory.float_dtype`: theirs if at least float32,
    float32 for bfloat16, the default float for integers). gamma and lambda are cast to it: integer rewards made them
    0, bfloat16 rounded gamma = 0.999 to 1."""
    rewards = jnp.asarray(rewards)
    return rewards.astype(float_dtype(rewards.dtype))


def _flags(terminated: Array, truncated: Array, dtype) -> tuple[Array, Array, Array, Array]:
    """(terminated, done) as bools and (1 - terminated, 1 - done) as floats, done = terminated OR truncated.

    Where a flag stops the bootstrap, the estimators also zero the value it multiplies (`_cut`), so a non-finite
    value there (the value of a diverged terminal state, a later episode's return) cannot leak in as 0 * inf = NaN;
    for finite values the arithmetic, and so every rounding, is the multiplication's as before."""
    terminated = jnp.asarray(terminated).astype(bool)
    done = terminated | jnp.asarray(truncated).astype(bool)
    return terminated, done, 1.0 - terminated.astype(dtype), 1.0 - done.astype(dtype)


def mean_rounding(size: Array, dtype) -> Array:
    """4 sqrt(n) eps_f (eps_f the float dtype's machine epsilon): a bound on the relative spread that the rounding of
    a mean over n values leaves in constant data, below which `normalize` and `losses.explained_variance` treat the
    data as constant."""
    return 4.0 * jnp.sqrt(jnp.asarray(size, dtype)) * jnp.finfo(dtype).eps


def _cut(stop: Array, x: Array) -> Array:
    """x with 0 where `stop`: what a 0 flag multiplies, so that 0 * x is 0 even for a non-finite x."""
    return jnp.where(stop, jnp.zeros((), x.dtype), x)


def discounted_returns(
    rewards: Array, next_values: Array, terminated: Array, truncated: Array, discount: Array, unroll: int = 1
) -> Array:
    """Bootstrapped rewards-to-go, by a reverse scan:

        G_t = r_t + gamma (1 - term_t) [ trunc_t ? V(s_{t+1}) : G_{t+1} ],   G_T := V(s_T) = next_values[T-1]

    i.e. the Monte Carlo return within each episode, completed by the value of the next state where
    the rollout or a time limit cuts it (REINFORCE's G_t; A2C's "rollout-length n-step" target).

    Args:
      rewards: r [T, B].
      next_values: V(s_{t+1}) [T, B]; only read at truncations and at t = T-1. Without a critic
        (plain REINFORCE) pass zeros: cuts are then treated as terminations, the best one can do.
      terminated: [T, B] bool or {0, 1}.
      truncated: [T, B] bool or {0, 1}.
      discount: gamma, a scalar (may be traced).
      unroll: `lax.scan` unroll factor (speed only: results agree to float rounding).

    Returns:
      G [T, B], in the rewards' dtype if at least float32, else float32.
    """
    _check(rewards, next_values, terminated, truncated)
    check_known_discount("discounted_returns", discount)
    rewards = _float(rewards)
    terminated, _, not_terminated, _ = _flags(terminated, truncated, rewards.dtype)
    truncated = jnp.asarray(truncated).astype(bool)
    discount = jnp.asarray(discount, rewards.dtype)

    def step(g_next, inputs):
        r, v_next, term, nonterminal, trunc = inputs
        g = r + discount * nonterminal * _cut(term, jnp.where(trunc, v_next, g_next))
        return g, g

    next_values = jnp.asarray(next_values).astype(rewards.dtype)  # the scan's carry keeps one dtype
    inputs = (rewards, next_values, terminated, not_terminated, truncated)
    _, returns = lax.scan(step, next_values[-1], inputs, reverse=True, unroll=unroll)
    return returns


def td_errors(
    rewards: Array, values: Array, next_values: Array, terminated: Array, discount: Array
) -> Array:
    """One-step TD errors delta_t = r_t + gamma (1 - term_t) V(s_{t+1}) - V(s_t), shape [T, B].

    Truncation needs no flag here: a truncated step bootstraps like a non-terminal one. A terminated step never
    reads V(s_{t+1}) (even a non-finite one). In the rewards' dtype if at least float32, else float32.
    """
    _check(rewards, values, next_values, terminated)
    check_known_discount("td_errors", discount)
    rewards = _float(rewards)
    terminated = jnp.asarray(terminated).astype(bool)
    discount = jnp.asarray(discount, rewards.dtype)
    not_terminated = 1.0 - terminated.astype(rewards.dtype)
    return rewards + discount * not_terminated * _cut(terminated, next_values) - values


def gae(
    rewards: Array,
    values: Array,
    next_values: Array,
    terminated: Array,
    truncated: Array,
    discount: Array,
    gae_lambda: Array,
    unroll: int = 1,
) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al., 2016), by a reverse scan:

        delta_t = r_t + gamma (1 - term_t) V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1},   A_T := 0,   done = term OR trunc
        target_t = A_t + V(s_t)

    lambda = 0 gives the TD error, lambda = 1 the bootstrapped return minus V(s_t)
    (`discounted_returns(...) - values`, when next_values[t] == values[t+1] within episodes).

    Args:
      rewards: r [T, B].
      values: V(s_t) [T, B].
      next_values: V(s_{t+1}) of the true next observation [T, B].
      terminated: [T, B] bool or {0, 1}.
      truncated: [T, B] bool or {0, 1}.
      discount: gamma, scalar (may be traced).
      gae_lambda: lambda, scalar (may be traced).
      unroll: `lax.scan` unroll factor (speed only: results agree to float rounding).

    Returns:
      (advantages [T, B], value targets [T, B]).
    """
    _check(rewards, values, next_values, terminated, truncated)
    check_known_discount("gae", discount)
    check_known("gae: gae_lambda", gae_lambda, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
    deltas = td_errors(rewards, values, next_values, terminated, discount)
    _, done, _, not_done = _flags(terminated, truncated, deltas.dtype)
    trace_decay = jnp.asarray(discount, deltas.dtype) * jnp.asarray(gae_lambda, deltas.dtype)

    def step(a_next, inputs):
        delta, episode_end, nonterminal = inputs
        a = delta + trace_decay * nonterminal * _cut(episode_end, a_next)
        return a, a

    inputs = (deltas, done, not_done)
    _, advantages = lax.scan(step, jnp.zeros_like(deltas[-1]), inputs, reverse=True, unroll=unroll)
    return advantages, advantages + values


def n_step_returns(
    rewards: Array, next_values: Array, terminated: Array, truncated: Array, discount: Array, n: int
) -> Array:
    """n-step bootstrapped returns, cut at episode boundaries and at the end of the rollout:

        G^(n)_t = sum_{k=0}^{m-1} gamma^k r_{t+k} + gamma^m (1 - term_{t+m-1}) V(s_{t+m})

    where m <= n is the number of steps until the first of: n steps, an episode end (term or trunc),
    the end of the rollout. Computed by n vectorised sweeps of the recursion

        G^(1)_t = r_t + gamma (1 - term_t) V(s_{t+1})
        G^(k)_t = r_t + gamma (1 - term_t) [ done_t or t = T-1 ? V(s_{t+1}) : G^(k-1)_{t+1} ]

    so n = 1 is the TD target and n >= T equals `discounted_returns`.

    Args:
      rewards, next_values, terminated, truncated: [T, B] as in `discounted_returns`.
      discount: gamma (may be traced).
      n: a static Python int >= 1.

    Returns:
      G^(n) [T, B].
    """
    check_int("n_step_returns: n", n, note=" (the number of sweeps)")
    _check(rewards, next_values, terminated, truncated)
    check_known_discount("n_step_returns", discount)
    rewards = _float(rewards)
    terminated, done, not_terminated, _ = _flags(terminated, truncated, rewards.dtype)
    discount = jnp.asarray(discount, rewards.dtype)
    # Where the sum stops: an episode end, or the last step of the rollout.
    stop = done.at[-1].set(True)
    bootstrap = rewards + discount * not_terminated * _cut(terminated, next_values)
    returns = bootstrap
    for _ in range(n - 1):
        shifted = jnp.concatenate([returns[1:], returns[-1:]], axis=0)
        returns = jnp.where(stop, bootstrap, rewards + discount * not_terminated * _cut(terminated, shifted))
    return returns


def n_step_advantages(
    rewards: Array,
    values: Array,
    next_values: Array,
    terminated: Array,
    truncated: Array,
    discount: Array,
    n: int,
) -> tuple[Array, Array]:
    """A_t = G^(n)_t - V(s_t): (advantages [T, B], targets G^(n) [T, B]); same call shape as `gae`."""
    _check(rewards, values)
    targets = n_step_returns(rewards, next_values, terminated, truncated, discount, n)
    return targets - values, targets


def normalize(x: Array, eps: float = 1e-8) -> Array:
    """(x - mean(x)) / (std(x) + eps) over all elements (advantage normalisation); same shape as x.

    Zeros where std(x) is within rounding of the mean, std <= 4 sqrt(n) eps_f |mean| (eps_f the dtype's machine
    epsilon): the advantages are then constant, and scaling the rounding noise of the mean up to unit size gave a
    policy gradient out of nothing (float32 constants 0.1 came out as -0.427 everywhere).
    """
    mean, std = jnp.mean(x), jnp.std(x)
    noise = mean_rounding(x.size, std.dtype) * jnp.abs(mean)
    return jnp.where(std > noise, (x - mean) / (std + eps), 0.0).astype(std.dtype)
