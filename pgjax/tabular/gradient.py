"""The exact policy gradient on tabular MDPs.

Policy gradient theorem (lecture):

    grad_theta J(theta) = 1/(1-gamma) E_{(s,a) ~ d^pi_theta}[ grad_theta log pi_theta(a|s) Q^pi_theta(s,a) ]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax.scipy.linalg import lu_factor, lu_solve

from pgjax.tabular.evaluation import action_values, bellman_matrix, expected_return, policy_reward
from pgjax.tabular.mdp import MDP
from pgjax.tabular.policy import grad_log_policy, softmax_policy

Array = jax.Array


def objective(mdp: MDP, theta: Array, features: Array) -> Array:
    """J(theta) = mu0 . V^{pi_theta}, a scalar, for the softmax policy of theta [D] and features phi [S, A, D];
    differentiate it with `jax.grad` (grad [D])."""
    return expected_return(mdp, softmax_policy(theta, features))


def values_and_occupancy(mdp: MDP, pi: Array) -> tuple[Array, Array, Array]:
    """(V^pi [S], Q^pi [S, A], d^pi [S]) from one LU factorisation of M = I - gamma P^pi:

        M V = r^pi,   M^T d = (1 - gamma) mu0.

    One factorisation instead of two halves the O(S^3) work, and avoids two concurrent batched
    LU calls, which can deadlock XLA's CPU runtime (jaxlib 0.10) on 2-core machines under vmap.
    """
    lu = lu_factor(bellman_matrix(mdp, pi))
    dtype = lu[0].dtype  # the triangular solves need the right-hand sides in the factors' dtype
    v = lu_solve(lu, policy_reward(mdp, pi).astype(dtype))
    d = lu_solve(lu, ((1.0 - mdp.discount) * mdp.initial).astype(dtype), trans=1)
    return v, action_values(mdp, v), d


def policy_gradient(mdp: MDP, theta: Array, features: Array) -> Array:
    """The exact policy gradient by the policy gradient theorem.

        grad J = 1/(1-gamma) sum_{s,a} d^pi(s) pi(a|s) [phi(s,a) - E_pi phi(s,.)] Q^pi(s,a)

    Args:
      mdp: an `MDP` with S states and A actions.
      theta: parameters [D].
      features: phi [S, A, D].

    Returns:
      grad J [D].
    """
    pi = softmax_policy(theta, features)
    _, q, d = values_and_occupancy(mdp, pi)
    d_sa = d[:, None] * pi
    score = grad_log_policy(theta, features)
    return jnp.einsum("sa,sad->d", d_sa * q, score) / (1.0 - mdp.discount)


def advantage_policy_gradient(mdp: MDP, theta: Array, features: Array) -> Array:
    """The same gradient with the advantage A = Q - V in place of Q (the baseline drops out).

        grad J = 1/(1-gamma) E_{d^pi}[ grad log pi(a|s) (Q^pi(s,a) - V^pi(s)) ]

    Args:
      mdp: an `MDP` with S states and A actions.
      theta: parameters [D].
      features: phi [S, A, D].

    Returns:
      grad J [D].
    """
    pi = softmax_policy(theta, features)
    v, q, d = values_and_occupancy(mdp, pi)
    d_sa = d[:, None] * pi
    score = grad_log_policy(theta, features)
    return jnp.einsum("sa,sad->d", d_sa * (q - v[:, None]), score) / (1.0 - mdp.discount)
