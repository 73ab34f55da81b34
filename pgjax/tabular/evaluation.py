"""Exact policy evaluation on tabular MDPs.

    V^pi = (I - gamma P^pi)^{-1} r^pi,   Q^pi(s,a) = R(s,a) + gamma sum_s' P(s'|s,a) V^pi(s'),
    J(pi) = mu0 . V^pi.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.tabular.mdp import MDP, _sum_tolerance
from pgjax.validation import check_int

Array = jax.Array


def check_policy_table(pi: Array, name: str = "pi", shape: tuple[int, ...] | None = None) -> None:
    """ValueError naming `name` unless `pi` is a policy table [S, A] (of `shape`, if given), and, when its values are
    known (not traced), finite, non-negative rows that sum to 1."""
    if shape is not None and tuple(jnp.shape(pi)) != tuple(shape):
        raise ValueError(f"{name} must have shape [S, A] = {tuple(shape)} (the MDP's reward shape); got shape "
                         f"{tuple(jnp.shape(pi))}. Batched policies or MDPs: jax.vmap over the batch axis.")
    if jnp.ndim(pi) != 2:
        raise ValueError(f"{name} must be a policy table [S, A]; got shape {tuple(jnp.shape(pi))}.")
    if isinstance(pi, jax.core.Tracer):
        return
    table = np.asarray(pi, np.float64)
    if not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError(f"{name} must be finite and non-negative (probabilities; for logits use "
                         "pgjax.tabular.softmax_policy or jax.nn.softmax).")
    worst = np.abs(table.sum(-1) - 1.0).max()
    if worst > max(1e-5, _sum_tolerance(np.asarray(pi).dtype, table.shape[1])):
        raise ValueError(f"{name}'s rows must sum to 1 over the actions (a distribution per state); one is off by "
                         f"{worst:.3g}. Normalise it, e.g. pi / pi.sum(-1, keepdims=True).")


def check_policy(mdp: MDP, pi: Array) -> None:
    """`check_policy_table` against the MDP's [S, A]. Every exact evaluation goes through `policy_transition` and
    `policy_reward`, which call it: logits or unnormalised weights passed as pi would otherwise give values,
    occupancies and returns of no policy at all."""
    if mdp.batch_shape:  # the exact functions take one MDP: a batch reached einsum and failed there, unexplained
        raise ValueError(f"the exact tabular functions take one MDP; got a batch of shape {mdp.batch_shape}: "
                         "jax.vmap over the batch axis, e.g. jax.vmap(expected_return)(mdps, pis).")
    check_policy_table(pi, "pi", mdp.reward.shape[-2:])


def working_dtype(mdp: MDP, pi: Array):
    """The dtype the exact computations on (mdp, pi) run in: the widest of the MDP's arrays, its discount and pi.

    Loop carries and triangular solves need one dtype: under `jax_enable_x64` a float32 MDP with a float64 policy
    (or discount) computes in float64, as the same arithmetic outside a loop would.
    """
    return jnp.result_type(mdp.transition, mdp.reward, mdp.initial, mdp.discount, pi)


def policy_transition(mdp: MDP, pi: Array) -> Array:
    """The state-to-state kernel under pi: P^pi(s'|s) = sum_a pi(a|s) P(s'|s,a), shape [S, S]."""
    check_policy(mdp, pi)
    return jnp.einsum("sa,sat->st", jnp.asarray(pi), mdp.transition)


def policy_reward(mdp: MDP, pi: Array) -> Array:
    """The expected one-step reward under pi: r^pi(s) = sum_a pi(a|s) R(s,a), shape [S]."""
    check_policy(mdp, pi)
    return jnp.sum(jnp.asarray(pi) * mdp.reward, axis=-1)


def bellman_matrix(mdp: MDP, pi: Array) -> Array:
    """M = I - gamma P^pi [S, S]: M V^pi = r^pi and M^T d^pi = (1 - gamma) mu0."""
    dtype = working_dtype(mdp, pi)
    return jnp.eye(mdp.num_states, dtype=dtype) - (mdp.discount * policy_transition(mdp, pi)).astype(dtype)


def state_values(mdp: MDP, pi: Array) -> Array:
    """V^pi [S], the solution of the Bellman equation (I - gamma P^pi) V = r^pi."""
    return jnp.linalg.solve(bellman_matrix(mdp, pi), policy_reward(mdp, pi))


def action_values(mdp: MDP, values: Array) -> Array:
    """Q(s,a) = R(s,a) + gamma sum_s' P(s'|s,a) V(s'), shape [S, A], from V [S]."""
    return mdp.reward + mdp.discount * jnp.einsum("sat,t->sa", mdp.transition, values)


def policy_evaluation(mdp: MDP, pi: Array) -> tuple[Array, Array]:
    """Exact V^pi and Q^pi by a linear solve.

    Args:
      mdp: an `MDP` with S states and A actions.
      pi: policy [S, A].

    Returns:
      (v [S], q [S, A]).
    """
    v = state_values(mdp, pi)
    return v, action_values(mdp, v)


def expected_return(mdp: MDP, pi: Array) -> Array:
    """J(pi) = E_{s0 ~ mu0}[V^pi(s0)] = E[sum_t gamma^t r(s_t, a_t)], a scalar."""
    return jnp.dot(mdp.initial, state_values(mdp, pi))


def finite_horizon_return(mdp: MDP, pi: Array, horizon: int) -> Array:
    """J_H(pi) = E[sum_{t=0}^{H-1} gamma^t r(s_t, a_t)] = sum_{t<H} gamma^t mu0 (P^pi)^t r^pi, a scalar.

    The objective a rollout truncated at H actually estimates; grad J - grad J_H is the
    truncation bias of the estimator lab's rollout estimators (not of its exact-Q theorem form: `truncated`).
    """
    horizon = check_int("finite_horizon_return: horizon", horizon, minimum=0, note=" (steps)")
    check_policy(mdp, pi)  # here, on concrete arrays: inside the compiled program pi is abstract
    return _finite_horizon_return(mdp, pi, horizon)


# One compiled program per shape and horizon: the MDP and pi are arguments (a scan run op by op closes over them and
# compiled again for every new MDP or policy).
@functools.partial(jax.jit, static_argnums=2)
def _finite_horizon_return(mdp: MDP, pi: Array, horizon: int) -> Array:
    p_pi = policy_transition(mdp, pi)
    r_pi = policy_reward(mdp, pi)

    def step(carry, _):
        mu, total, scale = carry
        return (mu @ p_pi, total + scale * jnp.dot(mu, r_pi), scale * mdp.discount), None

    dtype = working_dtype(mdp, pi)
    init = (mdp.initial.astype(dtype), jnp.zeros((), dtype), jnp.ones((), dtype))
    (_, total, _), _ = jax.lax.scan(step, init, None, length=horizon)
    return total
