"""Losses for the online policy-gradient algorithms, each to be minimised and averaged over samples.

Inputs are per-sample arrays of any common shape (e.g. a flattened minibatch [N] or a rollout
[T, B]); outputs are scalars. Advantages and targets are treated as constants (stop_gradient),
so the gradient of a loss is exactly the estimator it names.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from pgjax.advantages import mean_rounding
from pgjax.distributions import Categorical, DiagGaussian, categorical_kl, diag_gaussian_kl
from pgjax.validation import check_known

Array = jax.Array

__all__ = [
    "policy_gradient_loss",
    "clipped_surrogate_loss",
    "value_loss",
    "entropy_loss",
    "mean_kl",
    "categorical_kl",
    "diag_gaussian_kl",
    "explained_variance",
]


def policy_gradient_loss(log_prob: Array, advantages: Array) -> Array:
    """The score-function (REINFORCE / actor-critic) loss:

        L(theta) = -mean_i[ log pi_theta(a_i|s_i) sg(A_i) ],   grad L = -mean_i[ grad log pi(a_i|s_i) A_i ]

    Args:
      log_prob: log pi_theta(a_i|s_i) [...].
      advantages: A_i [...] (returns, returns - baseline, GAE, ...).

    Returns:
      A scalar.
    """
    chex.assert_equal_shape([log_prob, advantages])
    return -jnp.mean(log_prob * jax.lax.stop_gradient(advantages))


def clipped_surrogate_loss(
    log_prob: Array, old_log_prob: Array, advantages: Array, clip_eps: Array
) -> tuple[Array, Array, Array]:
    """PPO's clipped surrogate (Schulman et al., 2017), with rho = pi_theta(a|s) / pi_old(a|s):

        L(theta) = -mean_i[ min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i) ]

    Args:
      log_prob: log pi_theta(a_i|s_i) [...].
      old_log_prob: log pi_old(a_i|s_i) [...] (from the rollout; treated as a constant).
      advantages: A_i [...] (treated as a constant).
      clip_eps: eps > 0, a scalar (may be traced).

    Returns:
      (loss, clip_fraction, approx_kl), all scalars. clip_fraction = mean(|rho - 1| > eps);
      approx_kl = mean((rho - 1) - log rho), the non-negative, unbiased estimator of
      KL(pi_old || pi_theta) from samples of pi_old. Both are diagnostics (no gradient).
    """
    chex.assert_equal_shape([log_prob, old_log_prob, advantages])
    check_known("clipped_surrogate_loss: clip_eps", clip_eps, lambda v: v > 0, "a positive number")
    advantages = jax.lax.stop_gradient(advantages)
    log_ratio = log_prob - jax.lax.stop_gradient(old_log_prob)
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -jnp.mean(jnp.minimum(unclipped, clipped))
    log_ratio, ratio = jax.lax.stop_gradient((log_ratio, ratio))
    clip_fraction = jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(ratio.dtype))
    approx_kl = jnp.mean((ratio - 1.0) - log_ratio)
    return loss, clip_fraction, approx_kl


def value_loss(
    values: Array, targets: Array, old_values: Array | None = None, clip_eps: Array | None = None
) -> Array:
    """Squared-error value loss, optionally clipped around the rollout's values (PPO2):

        unclipped:  L = 1/2 mean_i (V(s_i) - y_i)^2
        clipped:    L = 1/2 mean_i max( (V(s_i) - y_i)^2, (clip(V(s_i), V_old(s_i) - eps, V_old(s_i) + eps) - y_i)^2 )

    Args:
      values: V(s_i) [...].
      targets: y_i [...] (treated as a constant).
      old_values: V_old(s_i) [...] from the rollout, or None.
      clip_eps: eps, or None. Give both `old_values` and `clip_eps` for the clipped loss, or neither.

    Returns:
      A scalar.
    """
    if (old_values is None) != (clip_eps is None):
        raise ValueError("value_loss: give both old_values and clip_eps (clipped loss) or neither.")
    chex.assert_equal_shape([values, targets])
    targets = jax.lax.stop_gradient(targets)
    squared = jnp.square(values - targets)
    if old_values is None:
        return 0.5 * jnp.mean(squared)
    chex.assert_equal_shape([values, old_values])
    check_known("value_loss: clip_eps", clip_eps, lambda v: v > 0, "a positive number")
    old_values = jax.lax.stop_gradient(old_values)
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.mean(jnp.maximum(squared, jnp.square(clipped_values - targets)))


def entropy_loss(dist: Categorical | DiagGaussian) -> Array:
    """-mean_i H(pi(.|s_i)), a scalar over the distribution's batch [...]: add `entropy_coef * entropy_loss(dist)`
    to a loss to reward exploration."""
    return -jnp.mean(dist.entropy())


def mean_kl(p: Categorical | DiagGaussian, q: Categorical | DiagGaussian) -> Array:
    """mean_i KL(p(.|s_i) || q(.|s_i)), a scalar over the distributions' batch [...] (closed form per state)."""
    return jnp.mean(p.kl(q))


def explained_variance(values: Array, targets: Array, mask: Array | None = None) -> Array:
    """1 - Var[y - V] / Var[y] over all elements, or over those where `mask` (same shape, 0/1) is 1: 1 is a perfect
    fit, 0 no better than a constant. Masked variances are taken about their masked means (two passes: E[y^2] -
    E[y]^2 cancelled to NaN for float32 returns of ~1000 +- 0.1).

    Returns NaN when the targets are constant, where the ratio is undefined: Var[y] <= (4 sqrt(n) eps_f)^2 E[y^2]
    (`advantages.mean_rounding`), what the rounding of the mean leaves of a constant's variance (float32 constants
    0.1 gave Var[y] ~ 1e-17 and a finite ratio of rounding errors).
    """
    chex.assert_equal_shape([values, targets])
    if mask is None:
        var_targets, var_residual = jnp.var(targets), jnp.var(targets - values)
        size, mean_square = targets.size, jnp.mean(jnp.square(targets))
    else:
        mean = lambda x: jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)  # noqa: E731
        variance = lambda x: mean(jnp.square(x - mean(x)))  # noqa: E731
        var_targets, var_residual = variance(targets), variance(targets - values)
        size, mean_square = jnp.sum(mask), mean(jnp.square(targets))
    defined = var_targets > jnp.square(mean_rounding(size, var_targets.dtype)) * mean_square
    return jnp.where(defined, 1.0 - var_residual / jnp.where(defined, var_targets, 1.0), jnp.nan)
