"""Off-policy evaluation of J(pi) from a tabular dataset: one entry point, six estimators.

    "dualdice"  J_hat = 1/(1 - gamma) E_D[w(s,a) r],  w from `dualdice_tabular`
    "model"     J of the empirical MDP (`empirical_mdp`): the certainty-equivalent estimate
    "is", "pdis", "wis", "wpdis"   importance sampling (`pgjax.offline.importance`)

All are on the scale of `pgjax.tabular.expected_return` (expected discounted return, not the
per-step value (1 - gamma) J). On the empirical distribution, tabular DualDICE and the model
estimate coincide exactly: E_D[w r] = sum_{s,a} d_hat^pi(s,a) R_hat(s,a). They differ once w comes
from anywhere else (function approximation, a prior, or another data distribution).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.offline.dataset import Dataset, float_dtype
from pgjax.offline.dualdice import ratio_from_occupancy
from pgjax.offline.empirical import (
    EmpiricalModel,
    check_concrete_discount,
    check_discount,
    check_on_uncovered,
    coverage,
    pair_totals,
    policy_dtype,
    report_coverage,
    report_importance_coverage,
    solve_empirical,
    tabular_model,
)
from pgjax.offline.importance import IS_METHODS, check_importance_data, importance_value, nonfinite_error
from pgjax.trajectory import safe_log

Array = jax.Array

METHODS = ("dualdice", "model") + IS_METHODS


def ratio_weighted_value(dataset: Dataset, ratio: Array, discount, normalised: bool = False) -> Array:
    """1/(1 - gamma) E_D[w(s,a) r] over the valid transitions, with w [S, A]; or, `normalised`,
    1/(1 - gamma) E_D[w r] / E_D[w] (self-normalised weights). A scalar:

        J_hat = 1/(1 - gamma) sum_{n,t} m_nt w(s_nt, a_nt) r_nt / sum_{n,t} m_nt        (plain)
        J_hat = 1/(1 - gamma) sum_{n,t} m_nt w(s_nt, a_nt) r_nt / sum_{n,t} m_nt w(s_nt, a_nt)   (normalised)

    over the tabular dataset's [N, T] steps, m = `mask`.

    Self-normalising assumes E_D[w] = 1, which holds for w = d^pi / d^D only when d^pi lies on the data:
    without terminal states and with pi covered. When pi reaches terminal states, d^pi puts mass
    gamma f / (1 - gamma) on the absorbing state (f = the d^pi-probability of terminating), and pairs
    the data never show carry d^pi while w = 0 there; either way E_D[w] < 1, and the normalised
    value is inflated by 1 / E_D[w] (it is then not the "model" estimate, the plain one is).

    Unvalidated (jit/vmap-able): a state or action outside the ratio's [S, A] is not caught here
    (`policy_value` and `empirical_model` check the data's indices).
    """
    check_concrete_discount(discount)
    dtype = jnp.promote_types(ratio.dtype, float_dtype(dataset.rewards.dtype))
    # Summed per pair first (exact counts, pairwise reward sums): one float32 sum over millions of transitions drifted
    # by ~1e-6 relative. Pairs the data never show take no part (a ratio there may be anything, even inf).
    counts, reward_sums = pair_totals(dataset, ratio.shape, dtype)
    seen = counts > 0
    w = jnp.where(seen, ratio, 0).astype(dtype)
    total = jnp.sum(jnp.where(seen, w * reward_sums, 0))
    denominator = jnp.sum(w * counts.astype(dtype)) if normalised else jnp.sum(counts).astype(dtype)
    return total / denominator / (1.0 - discount)


def model_value(model: EmpiricalModel, target_pi: Array, discount, unseen_value=0.0) -> Array:
    """J_hat(pi) = mu0_hat . V_hat^pi in the empirical MDP `empirical_mdp(model, discount, unseen_value)`; a scalar.

        V_hat^pi = (I - gamma P_hat^pi)^{-1} R_hat^pi   over the S + 1 states (the last one the zero-reward sink),

    where unseen pairs pay `unseen_value` once (Q_hat = unseen_value there) and, like terminal transitions,
    lead to the sink. On the scale of `pgjax.tabular.expected_return`.

    Args:
      model: the `EmpiricalModel` of the dataset (counts [S, A]).
      target_pi: pi [S, A].
      discount: gamma in (0, 1).
      unseen_value: u, a scalar (0, or `pessimistic_value(model, discount)`).

    jit/vmap-able, with no coverage check (`policy_value(method="model")` is the validated entry point).
    """
    return solve_empirical(model, target_pi, discount, unseen_value).value


def tabular_importance_value(dataset: Dataset, target_pi: Array, discount, method: str = "pdis") -> Array:
    """`importance_value` with target log-probabilities log pi(a_t|s_t) read from a table pi [S, A]; a scalar.

    Over the dataset's [N, T] steps, log rho_t = log pi(a_t|s_t) - log mu(a_t|s_t) (log 0 = -inf: ratio 0),
    e.g. for "pdis" J_hat = 1/N sum_i sum_t gamma^t rho^i_{0:t} r^i_t, an estimate of the T-step return J_T
    (all four methods: `pgjax.offline.importance`). Unvalidated (jit/vmap-able): a NaN behaviour
    log-probability on a valid step makes the estimate NaN; `policy_value` checks the data first.
    """
    target_log_probs = safe_log(target_pi)[dataset.observations, dataset.actions]
    return importance_value(dataset.rewards, dataset.mask, target_log_probs, dataset.behaviour_log_probs, discount,
                            method)


def policy_value(
    dataset: Dataset, target_pi: Array, discount, method: str = "dualdice", on_uncovered: str = "warn"
) -> Array:
    """Estimate J(pi) = E[sum_t gamma^t r_t] of the target policy pi [S, A] from a tabular dataset.

    Args:
      dataset: a tabular `Dataset`.
      target_pi: pi [S, A].
      discount: gamma in (0, 1).
      method: "dualdice", "model", "is", "pdis", "wis" or "wpdis" (see the module docstring).
      on_uncovered: "warn", "raise" or "ignore" when pi reaches pairs the data never show (for the IS
        methods too: where the behaviour policy never takes pi's actions, the weights miss that mass).

    Returns:
      A scalar on the scale of `pgjax.tabular.expected_return`. The IS estimators target the
      T-step return J_T (T the dataset's horizon), within gamma^T max|r| / (1 - gamma) of J.
    """
    if method not in METHODS:
        raise ValueError(f"policy_value: method must be one of {METHODS}; got {method!r}.")
    check_on_uncovered(on_uncovered, "policy_value: ")  # for every method, before any work
    check_discount(discount)
    model = tabular_model(dataset, target_pi)
    target_pi = jnp.asarray(target_pi, policy_dtype(model))
    if method in IS_METHODS:
        check_importance_data(dataset, f"policy_value(method={method!r})")
        # Unseen pairs bias IS as well when the behaviour policy never takes those actions (weight 0 for their mass;
        # a behaviour policy with zero probability of uniform's actions gave PDIS 0.081 for J_4 = 0.356, silently).
        report_importance_coverage(model, target_pi, discount, on_uncovered, f"policy_value({method!r})")
        value = tabular_importance_value(dataset, target_pi, discount, method)
        if not np.isfinite(float(value)):
            target_log_probs = safe_log(target_pi)[dataset.observations, dataset.actions]
            raise nonfinite_error(f"policy_value(method={method!r})", target_log_probs, dataset.behaviour_log_probs,
                                  dataset.mask, dataset.rewards)
        return value
    solution = solve_empirical(model, target_pi, discount)
    report = coverage(model, target_pi, discount, solution.occupancy)
    report_coverage(report, on_uncovered, context=f"policy_value({method!r}): ")
    if method == "model":
        return solution.value
    return ratio_weighted_value(dataset, ratio_from_occupancy(model, solution.occupancy), discount)
