"""Monte Carlo policy-gradient estimators and the gradient estimator lab.

Every estimator below is an unbiased (or, for the truncated one, deliberately biased)
sample of the exact gradient of `pgjax.tabular.policy_gradient`:

    grad J = E_h[ (sum_t grad log pi(a_t|s_t)) G_0 ]                         REINFORCE, total return
           = E_h[ sum_t gamma^t grad log pi(a_t|s_t) G_t ]                   rewards-to-go
           = E_h[ sum_t gamma^t grad log pi(a_t|s_t) (G_t - b(s_t)) ]        with a state baseline
           = 1/(1-gamma) E_{(s,a) ~ d^pi}[ grad log pi(a|s) Q^pi(s,a) ]      theorem form

where G_t = sum_{k>=t} gamma^{k-t} r_k. A per-trajectory estimator has the signature
`estimator(key, traj, problem) -> [D]`; averaging it over N independent trajectories
gives the N-trajectory estimate. The lab runs many such estimates in one compiled call
and measures bias, variance, cosine similarity and relative error against the exact
gradient.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.tabular.evaluation import policy_evaluation
from pgjax.tabular.gradient import policy_gradient
from pgjax.tabular.mdp import MDP
from pgjax.tabular.policy import grad_log_policy, softmax_policy
from pgjax.trajectory import Trajectory, discount_powers, rewards_to_go, sample_trajectory
from pgjax.validation import check_int, is_int

Array = jax.Array


class GradientProblem(NamedTuple):
    """A tabular MDP and a softmax policy pi_theta with features phi [S, A, D]."""

    mdp: MDP
    theta: Array
    features: Array


Estimator = Callable[[Array, Trajectory, GradientProblem], Array]


# ---------------------------------------------------------------------------
# Array-level formulas (one trajectory; vmap for batches).
# ---------------------------------------------------------------------------


def trajectory_scores(traj: Trajectory, theta: Array, features: Array) -> Array:
    """grad_theta log pi(a_t|s_t) = phi(s_t,a_t) - E_pi phi(s_t,.) along a trajectory (fields [T]), theta [D],
    features [S, A, D]; shape [T, D]."""
    return grad_log_policy(theta, features)[traj.states, traj.actions]


def total_return_gradient(scores: Array, rewards: Array, discount: Array) -> Array:
    """REINFORCE with the total discounted return: (sum_t score_t) * sum_t gamma^t r_t.

    Args:
      scores: grad log pi(a_t|s_t) [T, D].
      rewards: r_t [T].
      discount: gamma.

    Returns:
      [D].
    """
    g0 = jnp.sum(discount_powers(rewards.shape[0], discount, rewards.dtype) * rewards)
    return jnp.sum(scores, axis=0) * g0


def rewards_to_go_gradient(scores: Array, rewards: Array, discount: Array, baseline: Array | None = None) -> Array:
    """sum_t gamma^t score_t (G_t - b_t): causality removes past rewards; b_t (e.g. V(s_t)) removes more variance.

    Args:
      scores: [T, D].
      rewards: [T].
      discount: gamma.
      baseline: b_t [T] or None (zero). Any function of s_t keeps the estimator unbiased.

    Returns:
      [D].
    """
    g = rewards_to_go(rewards, discount)
    if baseline is not None:
        g = g - baseline
    weights = discount_powers(rewards.shape[0], discount, rewards.dtype) * g
    return jnp.einsum("t,td->d", weights, scores)


def theorem_sample_gradient(score: Array, q_value: Array, discount: Array) -> Array:
    """One-sample theorem form: score(s,a) Q(s,a) / (1-gamma), for (s,a) ~ d^pi: score [D], Q a scalar -> [D]."""
    return score * q_value / (1.0 - discount)


def geometric_time(key: Array, discount: Array) -> Array:
    """t ~ Geometric: P(t = k) = (1-gamma) gamma^k, k = 0, 1, ...; then s_t ~ d^pi (the lecture's definition).

    By inversion, t = floor(log u / log gamma) with u ~ U(0, 1); an int32 scalar.
    """
    u = jax.random.uniform(key, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    return jnp.floor(jnp.log(u) / jnp.log(discount)).astype(jnp.int32)


# ---------------------------------------------------------------------------
# Per-trajectory estimators with the common signature (key, traj, problem) -> [D].
# ---------------------------------------------------------------------------


def reinforce_total_return(key: Array, traj: Trajectory, problem: GradientProblem) -> Array:
    """REINFORCE: (sum_t grad log pi(a_t|s_t)) G_0, G_0 = sum_t gamma^t r_t; unbiased for grad J up to the horizon's
    O(gamma^T) tail. traj: one trajectory of T steps; returns [D]."""
    del key
    scores = trajectory_scores(traj, problem.theta, problem.features)
    return total_return_gradient(scores, traj.rewards, problem.mdp.discount)


def reinforce_rewards_to_go(key: Array, traj: Trajectory, problem: GradientProblem) -> Array:
    """REINFORCE with rewards-to-go: sum_t gamma^t grad log pi(a_t|s_t) G_t, G_t = sum_{k>=t} gamma^(k-t) r_k (a
    score does not correlate with earlier rewards, so they drop out). traj: one trajectory of T steps; returns [D]."""
    del key
    scores = trajectory_scores(traj, problem.theta, problem.features)
    return rewards_to_go_gradient(scores, traj.rewards, problem.mdp.discount)


def reinforce_value_baseline(key: Array, traj: Trajectory, problem: GradientProblem) -> Array:
    """Rewards-to-go with the exact state-value baseline: sum_t gamma^t score_t (G_t - V^pi(s_t)).

    V^pi is the oracle baseline (from `policy_evaluation`); a learned baseline plugs into
    `rewards_to_go_gradient` the same way. traj: one trajectory of T steps; returns [D].
    """
    del key
    pi = softmax_policy(problem.theta, problem.features)
    v, _ = policy_evaluation(problem.mdp, pi)
    scores = trajectory_scores(traj, problem.theta, problem.features)
    # With a truncated horizon, G_t misses gamma^{T-t} V(s_T); subtracting the same tail from the
    # baseline would bias it, so the baseline is plain V(s_t).
    return rewards_to_go_gradient(scores, traj.rewards, problem.mdp.discount, baseline=v[traj.states])


def _theorem_form(key: Array, traj: Trajectory, problem: GradientProblem, exact_q: bool) -> Array:
    discount = problem.mdp.discount
    horizon = traj.states.shape[0]
    t = geometric_time(key, discount)
    inside = t < horizon  # a draw beyond the horizon contributes 0 (bias O(gamma^T))
    t_safe = jnp.minimum(t, horizon - 1)
    s, a = traj.states[t_safe], traj.actions[t_safe]
    score = grad_log_policy(problem.theta, problem.features)[s, a]
    if exact_q:
        _, q = policy_evaluation(problem.mdp, softmax_policy(problem.theta, problem.features))
        q_value = q[s, a]
    else:
        q_value = rewards_to_go(traj.rewards, discount)[t_safe]  # unbiased for Q(s_t, a_t) by the Markov property
    return jnp.where(inside, 1.0, 0.0) * theorem_sample_gradient(score, q_value, discount)


def theorem_form_rollout_q(key: Array, traj: Trajectory, problem: GradientProblem) -> Array:
    """Theorem form: grad log pi(a|s) Q(s,a) / (1-gamma) at (s,a) = (s_t, a_t), t ~ Geometric(1-gamma) drawn from
    `key` (so (s,a) ~ d^pi), Q estimated by the rollout's G_t. A draw t >= T (past the trajectory) gives 0: an
    O(gamma^T) bias. Returns [D]."""
    return _theorem_form(key, traj, problem, exact_q=False)


def theorem_form_exact_q(key: Array, traj: Trajectory, problem: GradientProblem) -> Array:
    """Theorem form with the exact Q^pi: grad log pi(a|s) Q^pi(s,a) / (1-gamma) at (s_t, a_t), t ~ Geometric(1-gamma)
    from `key` (0 for t >= T); isolates the variance of sampling (s,a) ~ d^pi. Returns [D]."""
    return _theorem_form(key, traj, problem, exact_q=True)


def truncated(estimator: Estimator, truncation: int) -> Estimator:
    """The estimator applied to the first `truncation` steps only: biased by the missing tail (O(gamma^H)).

    The rollout forms then estimate grad J_H, the gradient of the H-step return (`tabular.finite_horizon_return`);
    `theorem_form_exact_q` keeps the infinite-horizon Q^pi and drops the draws t >= H, so it estimates neither
    grad J nor grad J_H (in one 2e5-trajectory check at H = 2: 14 standard errors from grad J_H)."""
    check_int("truncated: truncation", truncation)

    def truncated_estimator(key, traj, problem):
        short = jax.tree_util.tree_map(lambda x: x[:truncation], traj)
        return estimator(key, short, problem)

    truncated_estimator.__name__ = f"{getattr(estimator, '__name__', 'estimator')}_truncated_{truncation}"
    return truncated_estimator


ESTIMATORS: dict[str, Estimator] = {
    "reinforce": reinforce_total_return,
    "rewards_to_go": reinforce_rewards_to_go,
    "value_baseline": reinforce_value_baseline,
    "theorem_rollout_q": theorem_form_rollout_q,
    "theorem_exact_q": theorem_form_exact_q,
}


def effective_horizon(discount: float, tail: float = 1e-8) -> int:
    """The smallest T with gamma^T <= tail, T = ceil(log(tail) / log(gamma)) (an int): rollouts this long make
    truncation bias negligible."""
    if not 0.0 < discount < 1.0:
        raise ValueError(f"effective_horizon: discount must lie in (0, 1); got {discount}.")
    if not 0.0 < tail < 1.0:  # tail >= 1 gave T <= 0
        raise ValueError(f"effective_horizon: tail must lie in (0, 1) (the discount weight gamma^T left); got {tail}.")
    return int(np.ceil(np.log(tail) / np.log(discount)))


# ---------------------------------------------------------------------------
# The lab: many independent estimates in one compiled call, compared with the truth.
# ---------------------------------------------------------------------------


# Elements of a [T, D] array (scores along a trajectory) held at once across a chunk of trajectories: 2^25 is
# 256 MiB in float64. Vmapping all N trajectories at once held N T D: at gamma = 0.99 (T = 1375) the estimator
# lab's 32,000 trajectories of a D = 40 policy took 15 GB. At 2^24 the lab's default (gamma = 0.9) ran 10% slower.
_CHUNK_ELEMENTS = 1 << 25


def trajectory_chunk(num_trajectories: int, horizon: int, dim: int) -> int:
    """Trajectories sampled and estimated together by `per_trajectory_estimates`: the fewest equal chunks with
    chunk * horizon * dim <= 2^25 elements (at least 1 trajectory a chunk, at most num_trajectories)."""
    largest = max(1, _CHUNK_ELEMENTS // max(1, horizon * dim))
    num_chunks = -(-num_trajectories // largest)
    return -(-num_trajectories // num_chunks)


def per_trajectory_estimates(
    key: Array, problem: GradientProblem, estimator: Estimator, num_trajectories: int, horizon: int
) -> Array:
    """Independent one-trajectory estimates, shape [N, D].

    Trajectory i is sampled from the i-th of N keys split from one half of `key` (as `sample_trajectories` does)
    and estimated with the i-th of N keys split from the other half. Trajectories are sampled and estimated in
    chunks of `trajectory_chunk(N, T, D)` (`lax.map` over vmapped chunks), so memory stays near 2^25 elements of
    [T, D] whatever N; the estimates do not depend on the chunking (tested).
    """
    check_int("per_trajectory_estimates: num_trajectories", num_trajectories)
    check_int("per_trajectory_estimates: horizon", horizon)
    key_traj, key_est = jax.random.split(key)
    pi = softmax_policy(problem.theta, problem.features)
    keys = (jax.random.split(key_traj, num_trajectories), jax.random.split(key_est, num_trajectories))

    def one(keys_i):
        traj = sample_trajectory(keys_i[0], problem.mdp, pi, horizon)
        return estimator(keys_i[1], traj, problem)

    chunk = trajectory_chunk(num_trajectories, horizon, problem.features.shape[-1])
    num_chunks = -(-num_trajectories // chunk)
    # Equal chunks, the last padded with repeats of the first keys (fewer than num_chunks, dropped after): one
    # chunk program to compile, where lax.map's remainder compiled a second (2 s a call on a 2-core CPU).
    pad = num_chunks * chunk - num_trajectories
    chunks = jax.tree_util.tree_map(lambda k: jnp.concatenate([k, k[:pad]]).reshape(num_chunks, chunk), keys)
    estimates = jax.lax.map(jax.vmap(one), chunks)
    return estimates.reshape(num_chunks * chunk, -1)[:num_trajectories]


def batch_means(samples: Array, batch_size: int) -> Array:
    """Average consecutive groups of `batch_size` one-trajectory estimates: [N, D] -> [N // batch_size, D]."""
    check_int("batch_means: batch_size", batch_size)
    num = (samples.shape[0] // batch_size) * batch_size
    if num == 0:
        raise ValueError(f"batch_means: batch_size {batch_size} exceeds the {samples.shape[0]} samples.")
    return samples[:num].reshape(-1, batch_size, samples.shape[-1]).mean(axis=1)


class EstimatorStats(NamedTuple):
    """Quality of K independent gradient estimates g_1..g_K against the exact gradient g.

    Attributes:
      mean: (1/K) sum_k g_k [D].
      bias: mean - g [D].
      bias_norm: ||mean - g||.
      bias_z: bias_d / (sd_d / sqrt(K)) [D], the per-coordinate z statistic of the bias.
      total_variance: trace of the covariance, (1/K) sum_k ||g_k - mean||^2.
      mse: (1/K) sum_k ||g_k - g||^2.
      relative_error: sqrt(mse) / ||g||.
      cosine: (1/K) sum_k <g_k, g> / (||g_k|| ||g||) (0 for a zero estimate).
    """

    mean: Array
    bias: Array
    bias_norm: Array
    bias_z: Array
    total_variance: Array
    mse: Array
    relative_error: Array
    cosine: Array


def estimator_stats(estimates: Array, exact: Array) -> EstimatorStats:
    """Summarise estimates [K, D] against the exact gradient [D] (the formulas in `EstimatorStats`; with K = 1 the
    standard error is undefined and bias_z is NaN)."""
    k = estimates.shape[0]
    mean = estimates.mean(axis=0)
    bias = mean - exact
    centred = estimates - mean
    var = jnp.mean(centred**2, axis=0)
    se = jnp.sqrt(var * k / jnp.maximum(k - 1, 1) / k)
    # A coordinate that never varies is either exactly right (z = 0) or certainly wrong (z = inf).
    bias_z = jnp.where(se > 0, bias / jnp.where(se > 0, se, 1.0), jnp.where(bias == 0, 0.0, jnp.inf * jnp.sign(bias)))
    if k < 2:  # one estimate has no spread to measure: 0 / 0, not "never varies" (z = inf read as certainly biased)
        bias_z = jnp.full_like(bias, jnp.nan)
    err = estimates - exact
    mse = jnp.mean(jnp.sum(err**2, axis=-1))
    exact_norm = jnp.linalg.norm(exact)
    norms = jnp.linalg.norm(estimates, axis=-1)
    cos = jnp.where(norms > 0, estimates @ exact / jnp.where(norms > 0, norms, 1.0) / exact_norm, 0.0)
    return EstimatorStats(
        mean=mean,
        bias=bias,
        bias_norm=jnp.linalg.norm(bias),
        bias_z=bias_z,
        total_variance=jnp.sum(var),
        mse=mse,
        relative_error=jnp.sqrt(mse) / exact_norm,
        cosine=jnp.mean(cos),
    )


@functools.partial(jax.jit, static_argnames=("estimator", "num_estimates", "trajectories_per_estimate", "horizon"))
def run_estimator(
    key: Array,
    problem: GradientProblem,
    estimator: Estimator,
    num_estimates: int,
    trajectories_per_estimate: int,
    horizon: int,
) -> tuple[Array, EstimatorStats]:
    """One compiled call: K = num_estimates independent estimates, each averaging M trajectories.

    Args:
      key: PRNG key.
      problem: the MDP and policy.
      estimator: a per-trajectory estimator (key, traj, problem) -> [D].
      num_estimates: K.
      trajectories_per_estimate: M.
      horizon: rollout length T.

    Returns:
      (estimates [K, D], EstimatorStats against `policy_gradient`).
    """
    _check_num_estimates("run_estimator", num_estimates)
    samples = per_trajectory_estimates(key, problem, estimator, num_estimates * trajectories_per_estimate, horizon)
    estimates = batch_means(samples, trajectories_per_estimate)
    exact = policy_gradient(problem.mdp, problem.theta, problem.features)
    return estimates, estimator_stats(estimates, exact)


def check_finite(stats: EstimatorStats, name: str = "estimator") -> None:
    """Raise `FloatingPointError` if any statistic is NaN (never report silent NaN)."""
    for field, value in stats._asdict().items():
        if np.any(np.isnan(np.asarray(value))):
            raise FloatingPointError(f"{name}: statistic {field!r} is NaN; check the MDP, theta and horizon.")


def error_curve(
    key: Array,
    problem: GradientProblem,
    estimator: Estimator,
    batch_sizes: tuple[int, ...],
    num_estimates: int,
    horizon: int,
) -> list[EstimatorStats]:
    """Stats of M-trajectory estimates for each M in `batch_sizes`, from one batch of
    num_estimates * max(M) trajectories (disjoint groups, so the estimates are independent).

    Each estimate is the mean of M per-trajectory estimates of `horizon` steps; returns one `EstimatorStats` per M
    (bias, variance, cosine and relative error sqrt(MSE) / ||grad J|| against the exact gradient), so the relative
    error should fall as 1/sqrt(M) once the bias is small."""
    for size in batch_sizes:
        check_int(f"error_curve: batch sizes {tuple(batch_sizes)}: each", size)
    _check_num_estimates("error_curve", num_estimates)
    samples = _per_trajectory_jit(key, problem, estimator, num_estimates * max(batch_sizes), horizon)
    exact = policy_gradient(problem.mdp, problem.theta, problem.features)
    stats = []
    for m in batch_sizes:
        stats.append(_stats_jit(batch_means(samples[: num_estimates * m], m), exact))
    return stats


def _check_num_estimates(owner: str, num_estimates: int) -> None:
    # the statistics compare estimates with each other: their spread needs two
    if not is_int(num_estimates) or num_estimates < 2:
        raise ValueError(f"{owner}: num_estimates must be >= 2 (the standard errors and z statistics need a spread); "
                         f"got {num_estimates}.")


_per_trajectory_jit = jax.jit(per_trajectory_estimates, static_argnames=("estimator", "num_trajectories", "horizon"))
_stats_jit = jax.jit(estimator_stats)
