"""Softmax (log-linear) policies over state-action features.

    pi_theta(a|s) = exp(phi(s,a)^T theta) / sum_a' exp(phi(s,a')^T theta)

Shapes: features phi [S, A, D], parameters theta [D], policies pi [S, A].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgjax.validation import check_int

Array = jax.Array


def check_theta_features(theta: Array, features: Array) -> None:
    """ValueError unless theta is [D] and features phi [S, A, D] (shapes only: works on tracers too)."""
    if jnp.ndim(features) != 3 or jnp.shape(theta) != jnp.shape(features)[-1:]:  # einsum's own error names no field
        raise ValueError(f"theta must have shape [D] and features phi [S, A, D] (one parameter per feature); got "
                         f"theta {tuple(jnp.shape(theta))} and features {tuple(jnp.shape(features))}. "
                         "A batch: jax.vmap.")


def policy_logits(theta: Array, features: Array) -> Array:
    """Logits phi(s,a)^T theta, shape [S, A], from theta [D] and features [S, A, D]."""
    check_theta_features(theta, features)
    return jnp.einsum("sad,d->sa", features, theta)


def softmax_policy(theta: Array, features: Array) -> Array:
    """pi_theta(a|s) = softmax_a(phi(s,a)^T theta).

    Args:
      theta: parameters [D].
      features: phi [S, A, D].

    Returns:
      pi [S, A], each row a distribution over actions.
    """
    return jax.nn.softmax(policy_logits(theta, features), axis=-1)


def log_policy(theta: Array, features: Array) -> Array:
    """log pi_theta(a|s) = phi(s,a)^T theta - log sum_a' exp(phi(s,a')^T theta) [S, A], from theta [D] and
    features [S, A, D]; computed stably with log-softmax."""
    return jax.nn.log_softmax(policy_logits(theta, features), axis=-1)


def grad_log_policy(theta: Array, features: Array) -> Array:
    """The score function of the softmax policy, in closed form.

        grad_theta log pi_theta(a|s) = phi(s,a) - sum_a' pi_theta(a'|s) phi(s,a')

    Args:
      theta: [D].
      features: [S, A, D].

    Returns:
      score [S, A, D].
    """
    pi = softmax_policy(theta, features)
    mean_feature = jnp.einsum("sa,sad->sd", pi, features)
    return features - mean_feature[:, None, :]


def tabular_features(num_states: int, num_actions: int, dtype=None) -> Array:
    """One-hot features phi(s,a) = e_{(s,a)}, shape [S, A, S*A]: the direct softmax parameterisation.

    With these, theta reshaped to [S, A] is the table of logits.
    """
    check_int("tabular_features: num_states", num_states)
    check_int("tabular_features: num_actions", num_actions)
    dtype = dtype or jnp.result_type(float)
    return jnp.eye(num_states * num_actions, dtype=dtype).reshape(num_states, num_actions, num_states * num_actions)


def logistic_features(state_features: Array) -> Array:
    """Features of the binary-action logistic policy, shape [S, 2, D].

    phi(s, 0) = 0 and phi(s, 1) = x_s, so the softmax policy reduces to logistic regression:
        pi_theta(1|s) = sigmoid(x_s^T theta).

    Args:
      state_features: x [S, D].
    """
    zeros = jnp.zeros_like(state_features)
    return jnp.stack([zeros, state_features], axis=1)


def logistic_policy(theta: Array, state_features: Array) -> Array:
    """pi [S, 2] with pi(1|s) = sigmoid(x_s^T theta), pi(0|s) = 1 - pi(1|s), from theta [D] and state features
    x [S, D] (the softmax policy of `logistic_features(x)`)."""
    p1 = jax.nn.sigmoid(state_features @ theta)
    return jnp.stack([1.0 - p1, p1], axis=-1)


def uniform_policy(num_states: int, num_actions: int, dtype=None) -> Array:
    """pi(a|s) = 1/A, shape [S, A] (dtype: jax's default float unless given)."""
    check_int("uniform_policy: num_states", num_states)
    check_int("uniform_policy: num_actions", num_actions)
    dtype = dtype or jnp.result_type(float)
    return jnp.full((num_states, num_actions), 1.0 / num_actions, dtype)
