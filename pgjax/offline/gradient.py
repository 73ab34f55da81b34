"""Offline policy gradients for tabular softmax policies pi_theta(a|s) = softmax(phi(s,a)^T theta).

The policy gradient theorem under the target's occupancy, moved onto the data distribution
by the ratio w = d^pi / d^D (lecture, offline case):

    grad J(theta) = 1/(1 - gamma) E_{(s,a) ~ d^pi}[grad log pi(a|s) Q^pi(s,a)]
                  = 1/(1 - gamma) E_{(s,a) ~ d^D}[w(s,a) grad log pi(a|s) Q^pi(s,a)].

`offline_policy_gradient` is the sample average of the second line over logged transitions
for given w and Q_hat; `dualdice_policy_gradient` plugs in tabular DualDICE and fitted Q
evaluation on the empirical model; `importance_policy_gradient` differentiates the
trajectory-level IS estimate instead; `offline_policy_improvement` runs optax steps on any
of them, re-estimating w and Q_hat as pi moves, in one compiled `lax.scan`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from pgjax.offline.dataset import Dataset, validate_tabular_dataset
from pgjax.offline.dualdice import ratio_from_occupancy
from pgjax.offline.empirical import (
    EmpiricalModel,
    check_concrete_discount,
    check_discount,
    check_on_uncovered,
    coverage,
    pessimistic_value,
    policy_dtype,
    report_coverage,
    report_importance_coverage,
    solve_empirical,
    tabular_model,
)
from pgjax.offline.importance import IS_METHODS, check_importance_data, importance_value, nonfinite_error
from pgjax.tabular.policy import check_theta_features, grad_log_policy, log_policy, softmax_policy
from pgjax.validation import check_int

Array = jax.Array

GRADIENT_METHODS = ("dualdice",) + IS_METHODS


def tabular_fqe(model: EmpiricalModel, target_pi: Array, discount, unseen_value=0.0) -> Array:
    """Fitted Q evaluation on a tabular dataset: Q_hat^pi [S, A] of the empirical MDP, by one linear solve.

    This is the fixed point of Q <- R_hat + gamma P_hat pi Q that iterated FQE converges to,

        Q_hat(s,a) = R_hat(s,a) + gamma sum_{s'} P_hat(s'|s,a) sum_{a'} pi(a'|s') Q_hat(s',a')

    (terminal transitions are worth 0 after their reward, unseen pairs `unseen_value`). target_pi: pi [S, A].
    """
    return solve_empirical(model, target_pi, discount, unseen_value).q_values


def offline_policy_gradient(
    dataset: Dataset, theta: Array, features: Array, discount, ratio: Array, q_values: Array
) -> Array:
    """1/(1 - gamma) (1/n) sum_i w(s_i,a_i) grad log pi_theta(a_i|s_i) Q_hat(s_i,a_i) over valid transitions.

    Args:
      dataset: a tabular `Dataset`.
      theta: [D]; features: phi [S, A, D].
      discount: gamma.
      ratio: w [S, A]; q_values: Q_hat [S, A] (held fixed, not differentiated).

    Returns:
      The gradient estimate [D].

    Validates the dataset, the shapes and the discount (0 < gamma < 1) when the arguments are concrete (a state or
    action outside [0, S) x [0, A) was dropped from the counts, or wrapped around when negative); under `jit`/`vmap`
    validate first.
    """
    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((dataset, theta, features, ratio, q_values))):
        _check_offline_gradient_inputs(dataset, theta, features, ratio, q_values)
    return _offline_policy_gradient(dataset, theta, features, discount, ratio, q_values)


def _offline_policy_gradient(dataset: Dataset, theta: Array, features: Array, discount, ratio: Array,
                             q_values: Array) -> Array:
    """The unvalidated core of `offline_policy_gradient` (for callers whose data are validated already)."""
    # Count per pair first, so the cost is O(S A D) however many transitions there are; int32 counts are exact.
    counts = jnp.zeros(q_values.shape, jnp.int32).at[dataset.observations, dataset.actions].add(
        dataset.mask.astype(jnp.int32)
    )
    distribution = counts.astype(q_values.dtype) / jnp.sum(counts).astype(q_values.dtype)
    ratio = jnp.where(counts > 0, ratio, 0)  # pairs the data never show take no part (a ratio there may be inf)
    return expected_offline_gradient(distribution, ratio, theta, features, q_values, discount)


def _check_offline_gradient_inputs(dataset: Dataset, theta, features, ratio, q_values) -> None:
    """ValueError / DatasetError naming the argument whose shape or indices do not fit phi's [S, A, D]."""
    check_theta_features(theta, features)
    num_states, num_actions, _ = np.shape(features)
    for name, x, shapes in (("q_values", q_values, ((num_states, num_actions),)),
                            ("ratio", ratio, ((num_states, num_actions), ()))):
        if np.shape(x) not in shapes:
            raise ValueError(f"offline_policy_gradient: {name} must have shape {' or '.join(map(str, shapes))} "
                             f"(features are [S, A, D] = {np.shape(features)}); got {np.shape(x)}.")
    validate_tabular_dataset(dataset, num_states, num_actions)


def expected_offline_gradient(
    data_distribution: Array, ratio: Array, theta: Array, features: Array, q_values: Array, discount
) -> Array:
    """The population version 1/(1 - gamma) sum_{s,a} d^D(s,a) w(s,a) grad log pi(a|s) Q(s,a) [D].

    data_distribution d^D, ratio w and q_values Q are [S, A] (w may be a scalar that broadcasts), theta [D],
    features phi [S, A, D], with grad log pi(a|s) = phi(s,a) - sum_a' pi(a'|s) phi(s,a') (`grad_log_policy`).
    With the exact ratio and Q^pi it equals `pgjax.tabular.policy_gradient` (the theorem). A concrete discount must
    lie in (0, 1) (`check_discount`); a traced one is the caller's to check.
    """
    check_concrete_discount(discount)
    score = grad_log_policy(theta, features)
    return jnp.einsum("sa,sad->d", data_distribution * ratio * q_values, score) / (1.0 - discount)


def model_policy_gradient(
    model: EmpiricalModel, dataset: Dataset, theta: Array, features: Array, discount, baseline: bool = False,
    unseen_value=0.0
) -> Array:
    """The DualDICE-weighted offline gradient with tabular FQE: jit/vmap-able core of `dualdice_policy_gradient`.

    Returns [D] for theta [D] and features phi [S, A, D] (pi_theta [S, A] the softmax policy).
    `model` must be the `empirical_model` of `dataset`. Without `baseline` it is the exact gradient of
    J_hat = `model_value(model, pi_theta, discount, unseen_value)`, the empirical MDP's value, for any
    `unseen_value` u:

        grad J_hat = 1/(1 - gamma) [E_D[w grad log pi Q_hat] + sum_{n(s,a) = 0} d_hat(s,a) grad log pi(a|s) u],

    the data term over the pairs the data show (w = d_hat / d^D) and the unseen pairs' term from the
    model's occupancy d_hat (w is 0 there, yet Q_hat = u; the term vanishes for u = 0).

    With `baseline`, Q_hat(s,a) - V_hat(s) replaces Q_hat, V_hat(s) = sum_a pi(a|s) Q_hat(s,a) over all
    actions, unseen ones included, and only the data term is kept:

        grad J_hat - 1/(1 - gamma) sum_{n(s,a) = 0} d_hat(s,a) grad log pi(a|s) (u - V_hat(s)),

    the same gradient when the data cover pi, and otherwise a pull towards the actions the data show
    whenever they beat the value of the unseen ones (used by `offline_policy_improvement`).
    """
    pi = softmax_policy(theta, features)
    solution = solve_empirical(model, pi, discount, unseen_value)  # one LU for both w and Q_hat
    ratio = ratio_from_occupancy(model, solution.occupancy)
    q_values = solution.q_values
    if baseline:
        q_values = q_values - jnp.sum(pi * q_values, axis=-1, keepdims=True)
        return _offline_policy_gradient(dataset, theta, features, discount, ratio, q_values)
    gradient = _offline_policy_gradient(dataset, theta, features, discount, ratio, q_values)
    # The data never show unseen pairs (w = 0), but J_hat counts them at Q_hat = u: add their share.
    unseen_occupancy = jnp.where(model.counts > 0, 0.0, solution.occupancy)
    return gradient + expected_offline_gradient(unseen_occupancy, 1.0, theta, features, q_values, discount)


def dualdice_policy_gradient(
    dataset: Dataset, theta: Array, features: Array, discount, on_uncovered: str = "warn"
) -> Array:
    """grad J(theta) estimated from logged data with w from tabular DualDICE and Q_hat from tabular FQE; [D].

        grad J_hat = 1/(1 - gamma) (1/n) sum_i w(s_i,a_i) grad log pi_theta(a_i|s_i) Q_hat(s_i,a_i),

    over the n valid transitions, w = `dualdice_ratio` and Q_hat = `tabular_fqe` at pi_theta (unseen pairs worth 0),
    for theta [D] and features phi [S, A, D]. Validates the data and warns (or raises, `on_uncovered`) when
    pi_theta leaves the data's support.

    On the empirical distribution this equals the exact gradient of J in the empirical MDP
    (E_D[w f] = sum d_hat^pi f), the offline analogue of the policy gradient theorem.
    """
    check_discount(discount)
    pi = softmax_policy(theta, features)
    model = tabular_model(dataset, pi)
    report_coverage(coverage(model, pi, discount), on_uncovered, context="dualdice_policy_gradient: ")
    return model_policy_gradient(model, dataset, theta, features, discount)


def importance_policy_gradient(dataset: Dataset, theta: Array, features: Array, discount, method: str = "pdis",
                               on_uncovered: str = "warn") -> Array:
    """The gradient of an IS estimate of J_T(pi_theta) with respect to theta [D] ("is", "pdis", "wis", "wpdis").

    theta [D], features phi [S, A, D]; the gradient of `importance_value` over the dataset's [N, T] steps with
    log pi_theta(a_t|s_t) from `log_policy`.

    "is" gives 1/N sum_i rho_i (sum_t grad log pi(a_t|s_t)) G_i and "pdis" its per-decision form;
    both are unbiased for grad J_T when mu covers pi.

    Validates the dataset, the discount and the behaviour log-probabilities (as `policy_value` does)
    when they are concrete, and reports pairs pi_theta reaches that the data never show (`on_uncovered`: "warn",
    "raise" or "ignore"; where the behaviour policy never takes those actions the weights miss their mass); under
    `jit`/`vmap` (traced) the checks are skipped: validate first.
    """
    if method not in IS_METHODS:
        raise ValueError(f"importance_policy_gradient: method must be one of {IS_METHODS}; got {method!r}.")
    check_on_uncovered(on_uncovered, "importance_policy_gradient: ")
    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((dataset, theta, features, discount))):
        check_discount(discount)
        pi = softmax_policy(theta, features)
        model = tabular_model(dataset, pi)
        check_importance_data(dataset, f"importance_policy_gradient(method={method!r})")
        report_importance_coverage(model, pi, discount, on_uncovered, f"importance_policy_gradient({method!r})")
        gradient = _importance_gradient(dataset, theta, features, discount, method)
        if not np.all(np.isfinite(np.asarray(gradient))):
            raise nonfinite_error(f"importance_policy_gradient(method={method!r})",
                                  *_log_probs(dataset, theta, features), dataset.rewards,
                                  _score_norms(dataset, theta, features))
        return gradient
    return _importance_gradient(dataset, theta, features, discount, method)


def _log_probs(dataset: Dataset, theta: Array, features: Array) -> tuple[Array, Array, Array]:
    """(log pi_theta(a_t|s_t), log mu(a_t|s_t), mask), each [N, T], of the dataset's steps."""
    return log_policy(theta, features)[dataset.observations, dataset.actions], dataset.behaviour_log_probs, dataset.mask


def _score_norms(dataset: Dataset, theta: Array, features: Array) -> np.ndarray:
    """|grad_theta log pi_theta(a_t|s_t)|_inf = |phi(s_t,a_t) - E_pi phi(s_t,.)|_inf [N, T] (host-side, float64)."""
    score = np.asarray(grad_log_policy(theta, features), np.float64)
    return np.max(np.abs(score[np.asarray(dataset.observations), np.asarray(dataset.actions)]), axis=-1)


def _importance_gradient(dataset: Dataset, theta: Array, features: Array, discount, method: str) -> Array:
    """The unvalidated core of `importance_policy_gradient` (jit/vmap-able)."""

    def value(th):
        target_log_probs, behaviour_log_probs, mask = _log_probs(dataset, th, features)
        return importance_value(dataset.rewards, mask, target_log_probs, behaviour_log_probs, discount, method)

    return jax.grad(value)(theta)


class ImprovementResult(NamedTuple):
    """The trajectory of an offline policy-improvement run (K optimiser steps).

    Attributes:
      thetas: [K + 1, D], theta_0 ... theta_K.
      estimated_values: [K + 1], J_hat(pi_theta_k) in the empirical model (what the data say).
      uncovered_mass: [K + 1], the target's occupancy on pairs the data never show.
      gradient_norms: [K], |grad_hat| at each step.
    """

    thetas: Array
    estimated_values: Array
    uncovered_mass: Array
    gradient_norms: Array


def offline_policy_improvement(
    dataset: Dataset,
    theta: Array,
    features: Array,
    discount,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    method: str = "dualdice",
    baseline: bool = True,
    pessimistic: bool = True,
    on_uncovered: str = "warn",
) -> ImprovementResult:
    """Improve a softmax policy from logged data only: K optimiser steps of gradient ascent on J_hat.

    Each step re-estimates the gradient at the current policy: with "dualdice", w and Q_hat
    are re-solved on the empirical model (one compiled `lax.scan` for the whole run); with an
    IS method, the importance weights are recomputed for the current pi.

    Left alone, ascent on the empirical model drifts onto pairs the data never show, whose
    outcome the model cannot know (on Taxi, where rewards are mostly negative, an unseen pair
    worth 0 looks better than anything seen). `pessimistic` values unseen pairs at the worst
    return the data show, min R_hat / (1 - gamma), and `baseline` uses Q_hat - V_hat so that the
    gradient at seen actions also pushes probability off the unseen ones (without `baseline` the
    step is the exact gradient of the pessimistic model value; see `model_policy_gradient`). On Taxi with 300
    logged episodes of a 30%-target/70%-uniform mixture, both together reach J* from the behaviour
    policy in 200 Adam steps; without them, the final policy is no better than the behaviour.

    Args:
      dataset: a tabular `Dataset`.
      theta: theta_0 [D]; features: phi [S, A, D].
      discount: gamma in (0, 1).
      optimizer: an optax transformation (e.g. `optax.adam(0.1)`); gradients are negated for ascent. The run is
        compiled once per optimizer object, num_steps, method, baseline and array shapes: to reuse it across
        datasets, seeds or thetas, create the optimizer once and pass the same object.
      num_steps: K >= 1.
      method: "dualdice" or one of the IS methods.
      baseline, pessimistic: see above. `baseline` acts on "dualdice" only; `pessimistic` moves the "dualdice"
        gradient and, for every method, the unseen-pair value of `estimated_values`.
      on_uncovered: for the IS methods, "warn" (`CoverageWarning`), "raise" (`CoverageError`, after the run) or
        "ignore" when a policy along the run reaches pairs the data never show: the IS gradient misses their mass
        where the behaviour policy never takes those actions, and a softmax policy that moves there keeps climbing
        an estimate that cannot see it. Reported once, at the step of the largest `uncovered_mass`. "dualdice"
        values those pairs explicitly (`pessimistic`) and reports nothing.

    Returns:
      An `ImprovementResult`; `estimated_values` are computed with the same unseen-pair values.
    """
    if method not in GRADIENT_METHODS:
        raise ValueError(f"offline_policy_improvement: method must be one of {GRADIENT_METHODS}; got {method!r}.")
    num_steps = check_int("offline_policy_improvement: num_steps", num_steps)  # static in the compiled scan
    check_on_uncovered(on_uncovered, "offline_policy_improvement: ")
    check_discount(discount)
    model = tabular_model(dataset, softmax_policy(theta, features))
    check_discount(discount, policy_dtype(model))  # float32 data under x64: the compiled run below sees it traced
    if method in IS_METHODS:
        check_importance_data(dataset, f"offline_policy_improvement(method={method!r})")
    unseen_value = pessimistic_value(model, discount) if pessimistic else 0.0
    # A static argument must hash: its init and update as optax's NamedTuple hash as functions (bound methods by
    # their object's identity), so a duck-typed optimizer whose dataclass __eq__ makes it unhashable runs too.
    static_optimizer = optax.GradientTransformation(optimizer.init, optimizer.update)
    result = _improve(dataset, model, theta, features, discount, unseen_value, optimizer=static_optimizer,
                      num_steps=num_steps, method=method, baseline=baseline)
    finite = np.isfinite(np.asarray(result.gradient_norms))
    if not np.all(finite):
        k = int(np.argmin(finite))
        context = f"offline_policy_improvement(method={method!r}): the gradient at step {k}"
        if method in IS_METHODS:
            raise nonfinite_error(context, *_log_probs(dataset, result.thetas[k], features), dataset.rewards,
                                  _score_norms(dataset, result.thetas[k], features))
        raise FloatingPointError(f"{context} is not finite; check the dataset's rewards and the optimiser's step size.")
    if method in IS_METHODS:
        k = int(np.argmax(np.asarray(result.uncovered_mass)))  # the mass can grow as pi moves: report the worst
        owner = f"offline_policy_improvement({method!r}) at step {k} of {num_steps} (its largest uncovered mass)"
        report_importance_coverage(model, softmax_policy(result.thetas[k], features), discount, on_uncovered, owner)
    return result


# One compiled program per (optimizer, num_steps, method, baseline) and array shapes: the data are arguments, so a
# loop over datasets or seeds with one optimizer object reuses it (a closure over the data compiled on every call).
@functools.partial(jax.jit, static_argnames=("optimizer", "num_steps", "method", "baseline"))
def _improve(dataset, model, theta, features, discount, unseen_value, *, optimizer, num_steps, method, baseline):
    def gradient(th):
        if method == "dualdice":
            return model_policy_gradient(model, dataset, th, features, discount, baseline, unseen_value)
        return _importance_gradient(dataset, th, features, discount, method)

    def diagnostics(th):
        pi = softmax_policy(th, features)
        solution = solve_empirical(model, pi, discount, unseen_value)
        return solution.value, coverage(model, pi, discount, solution.occupancy).mass

    def step(carry, _):
        th, opt_state = carry
        g = gradient(th)
        updates, opt_state = optimizer.update(-g, opt_state, th)
        th = optax.apply_updates(th, updates)
        return (th, opt_state), (th, jnp.linalg.norm(g))

    (_, _), (thetas, norms) = lax.scan(step, (theta, optimizer.init(theta)), None, length=num_steps)
    thetas = jnp.concatenate([theta[None], thetas])
    values, mass = jax.vmap(diagnostics)(thetas)
    return ImprovementResult(thetas, values, mass, norms)
