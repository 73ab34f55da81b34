"""Importance sampling estimators of J(pi) and grad J(pi) from logged episodes of mu.

With per-step ratios rho_t = pi(a_t|s_t) / mu(a_t|s_t) and their products
rho_{0:t} = prod_{k<=t} rho_k, over N episodes of T steps:

    IS    J_hat = 1/N sum_i rho^i_{0:T-1} sum_t gamma^t r^i_t                       (trajectory-wise)
    PDIS  J_hat = 1/N sum_i sum_t gamma^t rho^i_{0:t} r^i_t                          (per-decision)
    WIS   J_hat = sum_i rho^i_{0:T-1} G^i / sum_i rho^i_{0:T-1}                      (self-normalised)
    WPDIS J_hat = sum_t gamma^t sum_i rho^i_{0:t} r^i_t / sum_i rho^i_{0:t}            (self-normalised)

An episode that ended before T (mask False on its padding) keeps its final weight on the
padding, rho^i_{0:t} = rho^i_{0:L_i-1} for t >= L_i, with r^i_t = 0 there: so WPDIS normalises
every step over all N episodes, and on-policy (all rho = 1) it is the sample mean of the
discounted returns, as IS, PDIS and WIS are. (Normalising step t over the episodes still
running would estimate sum_t gamma^t E[r_t | running at t] instead, too large whenever
episodes end with positive rewards left behind.)

IS and PDIS are unbiased for the T-step return J_T(pi) = E_pi[sum_{t<T} gamma^t r_t] whenever
mu covers pi; the weighted forms are biased (consistent) with lower variance. J_T differs
from J by at most gamma^T max|r| / (1 - gamma). Products are formed in log space.

The IS policy gradient is the gradient of the IS value with respect to the target
policy's parameters (the behaviour probabilities are constants):

    grad J_hat = 1/N sum_i rho^i_{0:T-1} (sum_t grad log pi(a_t|s_t)) G^i            (IS)
    grad J_hat = 1/N sum_i sum_t gamma^t r_t rho^i_{0:t} sum_{k<=t} grad log pi(a_k|s_k)   (PDIS)

so `jax.grad` of `importance_value` with target log-probabilities computed from theta gives it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.offline.dataset import Dataset, DatasetError, float_dtype
from pgjax.validation import check_known

Array = jax.Array

IS_METHODS = ("is", "pdis", "wis", "wpdis")


def log_ratios(target_log_probs: Array, behaviour_log_probs: Array, mask: Array) -> Array:
    """log rho_t = log pi(a_t|s_t) - log mu(a_t|s_t), 0 on padding; [N, T] -> [N, T].

    A step with pi(a_t|s_t) = 0 gives -inf (ratio 0), which is correct.
    """
    diff = target_log_probs - behaviour_log_probs
    return jnp.where(mask, diff, 0.0)


def cumulative_log_ratios(target_log_probs: Array, behaviour_log_probs: Array, mask: Array) -> Array:
    """log rho_{0:t} = sum_{k<=t} log rho_k: [N, T] -> [N, T] (cumulative over the time axis).

    log rho_k is 0 on padding (`log_ratios`), so an episode that ended keeps its final value there.
    """
    return jnp.cumsum(log_ratios(target_log_probs, behaviour_log_probs, mask), axis=-1)


def discounted_rewards(rewards: Array, mask: Array, discount) -> Array:
    """gamma^t r_t on valid steps, 0 on padding; [N, T] (floating, whatever the rewards' dtype)."""
    # Never an integer dtype: integer rewards would turn gamma into int(gamma) = 0.
    dtype = float_dtype(rewards.dtype)
    powers = jnp.asarray(discount, dtype) ** jnp.arange(rewards.shape[-1], dtype=dtype)
    return jnp.where(mask, powers * rewards, 0.0)


def importance_weights(target_log_probs: Array, behaviour_log_probs: Array, mask: Array) -> Array:
    """Trajectory weights rho^i_{0:T-1} = exp(sum_t m^i_t log rho^i_t) [N] from [N, T] inputs.

    The product of pi(a_t|s_t) / mu(a_t|s_t) over each episode's valid steps (m = mask); formed in log space.
    """
    return jnp.exp(jnp.sum(log_ratios(target_log_probs, behaviour_log_probs, mask), axis=-1))


def importance_value(
    rewards: Array,
    mask: Array,
    target_log_probs: Array,
    behaviour_log_probs: Array,
    discount,
    method: str = "pdis",
) -> Array:
    """An importance-sampling estimate of J_T(pi) on the `expected_return` scale; a scalar.

        "is"     1/N sum_i rho^i_{0:T-1} sum_t gamma^t r^i_t
        "pdis"   1/N sum_i sum_t gamma^t rho^i_{0:t} r^i_t
        "wis"    sum_i rho^i_{0:T-1} G^i / sum_i rho^i_{0:T-1},   G^i = sum_t gamma^t r^i_t
        "wpdis"  sum_t gamma^t sum_i rho^i_{0:t} r^i_t / sum_i rho^i_{0:t}

    with rho_t = pi(a_t|s_t) / mu(a_t|s_t), products over valid steps and r = 0 on padding (module docstring).
    Weighted estimates are NaN when every episode has zero probability under pi (its weight
    rho_{0:T-1} is 0): they are undefined there; `policy_value` reports it.

    Args:
      rewards, mask, target_log_probs, behaviour_log_probs: [N, T] (see `Dataset`).
      discount: gamma.
      method: "is", "pdis", "wis" or "wpdis" (equations in the module docstring).
    """
    if method not in IS_METHODS:
        raise ValueError(f"importance_value: method must be one of {IS_METHODS}; got {method!r}.")
    # gamma = 1: the undiscounted returns of finite episodes
    check_known("importance_value: discount", discount, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
    disc_r = discounted_rewards(rewards, mask, discount)
    if method in ("is", "wis"):
        log_w = jnp.sum(log_ratios(target_log_probs, behaviour_log_probs, mask), axis=-1)
        returns = jnp.sum(disc_r, axis=-1)
        if method == "is":
            return jnp.mean(jnp.exp(log_w) * returns)
        # Normalising in log space keeps WIS defined when every weight underflows (long horizons);
        # it is NaN only when every episode has zero probability under pi.
        return jnp.sum(jax.nn.softmax(log_w) * returns)
    log_w = cumulative_log_ratios(target_log_probs, behaviour_log_probs, mask)
    if method == "pdis":
        return jnp.mean(jnp.sum(jnp.exp(log_w) * disc_r, axis=-1))
    # Self-normalise each step over all episodes: the cumulative sum holds an ended episode's weight
    # fixed over its padding (log rho = 0 there), where its reward is 0. Over the running episodes
    # only, WPDIS would be sum_t gamma^t E[r_t | running at t], wrong even on-policy.
    weights = jax.nn.softmax(log_w, axis=0)
    return jnp.sum(weights * disc_r)


def check_importance_data(dataset: Dataset, context: str) -> None:
    """Raise `DatasetError` unless every valid step has a known behaviour log-probability (host-side).

    IS divides by mu(a_t|s_t): NaN (unknown mu) would make every estimate NaN. (-inf, a logged action
    mu could not take, is rejected by `validate_dataset`.)
    """
    log_mu = np.asarray(dataset.behaviour_log_probs)[np.asarray(dataset.mask)]
    if np.any(np.isnan(log_mu)):
        raise DatasetError(
            f"{context} needs the behaviour policy's log-probabilities, but Dataset.behaviour_log_probs has NaN "
            "(unknown) on valid steps; use method='dualdice' or 'model', which do not."
        )


def nonfinite_error(context: str, target_log_probs: Array, behaviour_log_probs: Array, mask: Array,
                    rewards: Array, score_norms: Array | None = None) -> Exception:
    """The error to raise for a non-finite importance-sampling estimate (host-side; [N, T] inputs, rewards finite):
    a `FloatingPointError` when a weight, or a weight times the largest episode's sum of |r_t|, overflows the data's
    float dtype (log rho_{0:t} + log max(1, sum |r|) > log(max float), 88.7 in float32), else a `ValueError`: the
    episodes that matter have probability 0 under pi (all weights 0: the self-normalised forms are 0/0).

    For a gradient, `score_norms` [N, T] holds |grad_theta log pi(a_t|s_t)|_inf: the gradient multiplies each
    weight and its returns by a sum of these, so log max(1, the largest episode's sum) joins the bound."""
    log_w = np.asarray(cumulative_log_ratios(target_log_probs, behaviour_log_probs, mask), np.float64)
    dtype = float_dtype(jnp.result_type(target_log_probs, behaviour_log_probs))
    limit = float(np.log(jnp.finfo(dtype).max))
    largest = float(np.max(log_w)) if log_w.size else -np.inf
    log_returns = np.log(max(1.0, _largest_episode_sum(rewards, mask)))
    log_score = 0.0 if score_norms is None else np.log(max(1.0, _largest_episode_sum(score_norms, mask)))
    if largest + log_returns + log_score > limit:  # what is not finite overflowed
        wider = "" if jnp.finfo(dtype).bits >= 64 else (
            ", or float64 data (jax.config.update('jax_enable_x64', True): log(max) = 709.8)")
        what = ("overflows" if largest > limit else "times the returns overflows" if largest + log_returns > limit
                else f"times the returns and the score |grad log pi| (log of its sum {log_score:.4g}) overflows")
        return FloatingPointError(
            f"{context} is not finite: an importance weight rho_0:t = pi/mu {what} {jnp.dtype(dtype).name} (the "
            f"largest log weight is {largest:.4g}, log(max) = {limit:.4g}: pi takes logged actions mu rarely "
            f"took). Use 'wis' / 'wpdis' (normalised in log space), 'dualdice' or 'model'{wider}."
        )
    return ValueError(
        f"{context} is undefined on this dataset: every logged episode has zero probability under the target policy "
        "(all importance weights are 0); use 'dualdice' or 'model'."
    )


def _largest_episode_sum(values: Array, mask: Array) -> float:
    """max over episodes of sum_t |values_t| over valid steps (host-side, float64; 0 for no episodes)."""
    valid = np.where(np.asarray(mask), np.abs(np.asarray(values, np.float64)), 0.0)
    return float(np.max(np.sum(valid, axis=-1), initial=0.0))


def effective_sample_size(weights: Array) -> Array:
    """Kish's effective sample size (sum w)^2 / sum w^2 of importance weights [N]; a scalar in [0, N]."""
    total = jnp.sum(weights)
    return jnp.where(total > 0, total**2 / jnp.sum(weights**2), 0.0)
