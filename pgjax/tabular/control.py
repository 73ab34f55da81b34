"""Exact optimal control on tabular MDPs: the target every policy-gradient method climbs towards.

Policy iteration (Howard, 1960) alternates exact evaluation and greedy improvement,

    V^{pi_k} = (I - gamma P^{pi_k})^{-1} r^{pi_k},     pi_{k+1}(s) = argmax_a Q^{pi_k}(s, a),

and stops when no state's action changes. Each step is a linear solve, so V* = V^{pi*} is exact to
the solver's rounding (value iteration only approaches it at rate gamma^k), and the number of
iterations is small in practice (finite in theory: J never decreases and there are finitely many
deterministic policies). V* satisfies the Bellman optimality equation V*(s) = max_a Q*(s, a), and
J* = mu0 . V* >= J(pi) for every policy pi, which is how the online algorithms' final policies are
judged on tabular MDPs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pgjax.tabular.evaluation import action_values, state_values
from pgjax.tabular.mdp import MDP
from pgjax.validation import check_int

Array = jax.Array


class OptimalSolution(NamedTuple):
    """The result of `policy_iteration`.

    Attributes:
      policy: pi*, a deterministic optimal policy as one-hot rows [S, A].
      values: V* [S].
      action_values: Q* [S, A].
      iterations: improvement steps taken (int32 scalar).
      converged: True when the last step changed no action (False only if max_iterations ran out).
    """

    policy: Array
    values: Array
    action_values: Array
    iterations: Array
    converged: Array


def _improvement_tolerance(mdp: MDP, q: Array) -> Array:
    # Switch an action only for a gain above rounding: with ties (or near-ties from the solve's rounding)
    # a strict argmax could flip between equally good actions forever.
    scale = jnp.max(jnp.abs(q)) + jnp.max(jnp.abs(mdp.reward))
    return 64 * jnp.finfo(q.dtype).eps * scale


def policy_iteration(mdp: MDP, max_iterations: int = 1000) -> OptimalSolution:
    """Optimal policy, V* and Q* of one MDP by exact policy iteration (jit- and vmap-able).

    Starts from the policy greedy in the immediate reward; each iteration solves for V^{pi_k} and
    moves every state whose greedy action beats its current one by more than rounding.

    Args:
      mdp: an unbatched `MDP` (vmap over a batch of MDPs with the same S and A).
      max_iterations: cap on improvement steps; `converged` reports whether the policy stopped changing.

    Returns:
      `OptimalSolution` (policy [S, A] one-hot, values [S], action_values [S, A], iterations, converged).
    """
    check_int("policy_iteration: max_iterations", max_iterations)
    if mdp.reward.ndim != 2:
        raise ValueError(
            f"policy_iteration: expects one MDP (reward [S, A]); got a batch of shape {mdp.batch_shape}: "
            "use jax.vmap(policy_iteration)(mdps)."
        )
    return _policy_iteration(mdp, max_iterations)


# One compiled program per shape: the MDP and the cap are arguments. A while_loop run op by op closes over the MDP's
# arrays, so each new MDP compiled the loop again.
@jax.jit
def _policy_iteration(mdp: MDP, max_iterations) -> OptimalSolution:
    num_actions = mdp.num_actions

    def evaluate(actions):
        v = state_values(mdp, jax.nn.one_hot(actions, num_actions, dtype=mdp.reward.dtype))
        return v, action_values(mdp, v)

    def improve(carry):
        actions, _, q, iteration, _ = carry
        current = jnp.take_along_axis(q, actions[:, None], axis=1)[:, 0]
        better = jnp.max(q, axis=1) > current + _improvement_tolerance(mdp, q)
        new_actions = jnp.where(better, jnp.argmax(q, axis=1), actions)
        v, q = evaluate(new_actions)
        return new_actions, v, q, iteration + 1, ~jnp.any(better)

    def keep_going(carry):
        *_, iteration, stable = carry
        return ~stable & (iteration < max_iterations)

    actions = jnp.argmax(mdp.reward, axis=1)
    v, q = evaluate(actions)
    actions, v, q, iterations, stable = lax.while_loop(
        keep_going, improve, (actions, v, q, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    )
    # The last step found nothing to improve, so it re-evaluated the same policy: iterations counts changes + 1.
    return OptimalSolution(jax.nn.one_hot(actions, num_actions, dtype=mdp.reward.dtype), v, q, iterations, stable)


def optimal_return(mdp: MDP, max_iterations: int = 1000) -> Array:
    """J* = mu0 . V*, the largest expected discounted return any policy reaches (a scalar)."""
    return jnp.dot(mdp.initial, policy_iteration(mdp, max_iterations).values)
