"""Action distributions for policy networks: categorical (discrete) and diagonal Gaussian (continuous).

Both are `NamedTuple`s, hence pytrees: they pass through `jit`, `vmap`, `lax.scan` and
`lax.stop_gradient` like arrays. Every field carries the full batch shape (the Gaussian's
`log_std` is broadcast to the shape of `mean`), so slicing or stacking them is safe.

Shapes: batch axes [...], actions [..., A] for the Gaussian; logits [..., K] for the categorical.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def categorical_kl(logits_p: Array, logits_q: Array) -> Array:
    """KL(p || q) = sum_a p(a) (log p(a) - log q(a)) for categoricals given by logits.

    Terms with p(a) = 0 contribute 0 (also for logits of -inf), to the value and to its gradient.

    Args:
      logits_p: [..., K].
      logits_q: [..., K].

    Returns:
      KL [...] (sums over the last axis).
    """
    chex.assert_equal_shape([logits_p, logits_q])
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    p = jnp.exp(log_p)
    # Masking the logs, not the product, keeps the gradient finite too: 0 * log 0 would send 0 * inf = NaN back.
    support = p > 0
    return jnp.sum(p * (jnp.where(support, log_p, 0.0) - jnp.where(support, log_q, 0.0)), axis=-1)


def diag_gaussian_kl(mean_p: Array, log_std_p: Array, mean_q: Array, log_std_q: Array) -> Array:
    """KL(p || q) between diagonal Gaussians, summed over the action axis:

        KL = sum_i [ log sigma_q,i - log sigma_p,i + (sigma_p,i^2 + (mu_p,i - mu_q,i)^2) / (2 sigma_q,i^2) - 1/2 ]

    Args:
      mean_p, mean_q: [..., A].
      log_std_p, log_std_q: broadcastable to [..., A] (e.g. a state-independent [A]).

    Returns:
      KL [...].
    """
    # In differences of log-stds: sigma_p^2 / sigma_q^2 = exp(2 (log sigma_p - log sigma_q)) stays finite where both
    # variances overflow (log sigma ~ 44 in float32 gave inf / inf = NaN), and expm1 keeps the O(d^2) KL of nearby
    # policies accurate (1/2 (e^{2d} - 1) - d: the variance terms cancelled to float rounding of 1/2 before).
    log_ratio = log_std_p - log_std_q
    z = (mean_p - mean_q) * jnp.exp(-log_std_q)
    kl = 0.5 * jnp.expm1(2.0 * log_ratio) - log_ratio + 0.5 * jnp.square(z)
    shape = jnp.broadcast_shapes(mean_p.shape, mean_q.shape, jnp.shape(log_std_p), jnp.shape(log_std_q))
    return jnp.sum(jnp.broadcast_to(kl, shape), axis=-1)


class Categorical(NamedTuple):
    """pi(a) = softmax(logits)_a over K actions.

    Attributes:
      logits: unnormalised log-probabilities [..., K].
    """

    logits: Array

    @property
    def log_probs(self) -> Array:
        """log pi(a) for every action [..., K]."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    @property
    def probs(self) -> Array:
        """pi(a) for every action [..., K]."""
        return jax.nn.softmax(self.logits, axis=-1)

    def sample(self, key: Array) -> Array:
        """a ~ pi, int32 [...]."""
        return jax.random.categorical(key, self.logits, axis=-1).astype(jnp.int32)

    def sample_from_noise(self, noise: Array) -> Array:
        """a = argmax_a (logits_a + g_a) for standard Gumbel noise g [..., K] (`sampling_noise`): a ~ pi
        (the Gumbel-max trick, what `jax.random.categorical` does), int32 [...]."""
        chex.assert_equal_shape([noise, self.logits])
        return jnp.argmax(self.logits + noise, axis=-1).astype(jnp.int32)

    def log_prob(self, action: Array) -> Array:
        """log pi(a) for integer actions [...]; returns [...]; NaN for an action outside [0, K).

        (An index of -1, a common padding value, would otherwise wrap to the last action's log-probability.)
        """
        chex.assert_shape(action, self.logits.shape[:-1])
        action = action.astype(jnp.int32)
        log_p = jnp.take_along_axis(self.log_probs, jnp.expand_dims(action, -1), axis=-1)[..., 0]
        return jnp.where((action >= 0) & (action < self.logits.shape[-1]), log_p, jnp.nan)

    def entropy(self) -> Array:
        """H(pi) = -sum_a pi(a) log pi(a), shape [...]."""
        log_p = self.log_probs
        p = jnp.exp(log_p)
        return -jnp.sum(p * jnp.where(p > 0, log_p, 0.0), axis=-1)  # masked logs: finite gradients (categorical_kl)

    def kl(self, other: Categorical) -> Array:
        """KL(self || other), shape [...]."""
        return categorical_kl(self.logits, other.logits)

    def mode(self) -> Array:
        """argmax_a pi(a), int32 [...]."""
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)


class DiagGaussian(NamedTuple):
    """N(mean, diag(exp(log_std)^2)) over A-dimensional actions.

    Attributes:
      mean: mu [..., A].
      log_std: log sigma, broadcastable to [..., A]; `diag_gaussian` broadcasts it for you.
    """

    mean: Array
    log_std: Array

    def sample(self, key: Array) -> Array:
        """a = mu + sigma * eps, eps ~ N(0, I); shape [..., A]."""
        return self.sample_from_noise(jax.random.normal(key, self.mean.shape, self.mean.dtype))

    def sample_from_noise(self, noise: Array) -> Array:
        """a = mu + sigma * eps for standard normal noise eps [..., A] (`sampling_noise`); shape [..., A]."""
        chex.assert_equal_shape([noise, self.mean])
        return self.mean + jnp.exp(self.log_std) * noise

    def log_prob(self, action: Array) -> Array:
        """log pi(a) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi)/2 ], shape [...]."""
        chex.assert_shape(action, self.mean.shape)
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * jnp.square(z) - self.log_std - 0.5 * _LOG_2PI, axis=-1)

    def entropy(self) -> Array:
        """H = sum_i [ log sigma_i + (1 + log(2 pi)) / 2 ], shape [...]."""
        log_std = jnp.broadcast_to(self.log_std, self.mean.shape)
        return jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)

    def kl(self, other: DiagGaussian) -> Array:
        """KL(self || other), shape [...]."""
        return diag_gaussian_kl(self.mean, self.log_std, other.mean, other.log_std)

    def mode(self) -> Array:
        """The mean, [..., A]."""
        return self.mean


def sampling_noise(key: Array, discrete: bool, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """The noise `sample_from_noise` turns into actions: standard Gumbel (categorical, shape [..., K]) or
    standard normal (Gaussian, shape [..., A]).

    Drawing a whole rollout's noise [T, N, K] in one call and sampling each step from its slice gives the
    same distribution as `sample(key)` per step, with one random-number call instead of T.
    """
    return jax.random.gumbel(key, shape, dtype) if discrete else jax.random.normal(key, shape, dtype)


def diag_gaussian(mean: Array, log_std: Array) -> DiagGaussian:
    """A `DiagGaussian` with `log_std` broadcast to the shape of `mean` (so every field is batched alike)."""
    return DiagGaussian(mean, jnp.broadcast_to(log_std, mean.shape).astype(mean.dtype))


Distribution = Categorical | DiagGaussian
