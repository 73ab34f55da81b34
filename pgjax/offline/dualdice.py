"""Tabular DualDICE (Nachum, Chow, Dai and Li, NeurIPS 2019): density ratios from logged transitions.

DualDICE estimates w(s,a) = d^pi(s,a) / d^D(s,a) without knowing mu or P by solving, with
f(x) = x^2 / 2 and its Fenchel dual, the min-max problem

    min_nu max_zeta  L(nu, zeta) = E_{(s,a,s') ~ D, a' ~ pi(s')}[(nu(s,a) - gamma nu(s',a')) zeta(s,a)
                                                                  - zeta(s,a)^2 / 2]
                                   - (1 - gamma) E_{s0 ~ mu0, a0 ~ pi}[nu(s0, a0)].

For fixed nu the inner maximiser is zeta = B nu, with the Bellman residual operator
(B nu)(s,a) = nu(s,a) - gamma E[nu(s',a') | s,a]. The outer problem becomes
min_nu 1/2 E_D[(B nu)^2] - (1 - gamma) E[nu(s0,a0)], whose stationarity condition is

    B^T diag(d^D) B nu* = (1 - gamma) mu0 pi     =>     d^D (B nu*) = (1 - gamma) (B^T)^{-1} (mu0 pi) = d^pi,

the occupancy flow equation of the lecture, so zeta* = B nu* = d^pi / d^D: the ratio.

On the empirical distribution of a tabular dataset (d^D, P_hat, mu0_hat counted from the data)
this is one linear solve: w = d_hat^pi / d^D, with d_hat^pi the target's occupancy in the
empirical MDP (`pgjax.offline.empirical`). It needs no double sampling and no knowledge of
mu. Where pi reaches pairs the data never show, no minimiser exists (the objective is
unbounded below); w is then returned on the seen pairs and the gap is reported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgjax.offline.dataset import Dataset
from pgjax.offline.empirical import (
    EmpiricalModel,
    check_discount,
    coverage,
    data_distribution,
    empirical_occupancy,
    policy_dtype,
    report_coverage,
    tabular_model,
)

Array = jax.Array


def ratio_from_occupancy(model: EmpiricalModel, occupancy: Array) -> Array:
    """w = d_hat^pi / d^D [S, A] (0 on unseen pairs) from the empirical occupancy d_hat^pi [S, A]."""
    seen = model.counts > 0
    return jnp.where(seen, occupancy / jnp.where(seen, data_distribution(model), 1.0), 0.0)


def dualdice_ratio(model: EmpiricalModel, target_pi: Array, discount) -> Array:
    """The DualDICE solution on the empirical distribution, w [S, A]:

        w(s,a) = d_hat^pi(s,a) / d^D(s,a)   where n(s,a) > 0,   0 on unseen pairs,

    with d^D(s,a) = n(s,a) / n (`data_distribution`) and d_hat^pi the target's normalised discounted occupancy
    in the empirical MDP (`empirical_occupancy`): the saddle point zeta* of `dualdice_objective` on seen pairs.

    Args:
      model: the `EmpiricalModel` of the dataset (counts [S, A]).
      target_pi: pi [S, A].
      discount: gamma in (0, 1).

    Pure and jit/vmap-able (for use inside training loops), with no validation or coverage check;
    `dualdice_tabular` is the validated entry point.
    """
    return ratio_from_occupancy(model, empirical_occupancy(model, target_pi, discount))


def dualdice_tabular(
    dataset: Dataset,
    target_pi: Array,
    discount,
    on_uncovered: str = "warn",
    return_coverage: bool = False,
):
    """DualDICE density ratio d^pi(s,a) / d^D(s,a) against the dataset's own state-action distribution.

    Args:
      dataset: a tabular `Dataset` (int states and actions).
      target_pi: pi [S, A].
      discount: gamma in (0, 1).
      on_uncovered: "warn" (`CoverageWarning`), "raise" (`CoverageError`) or "ignore" when pi puts
        occupancy on pairs the data never show.
      return_coverage: also return the `Coverage` report.

    Returns:
      w [S, A] (0 on unseen pairs), or (w, Coverage) with `return_coverage=True`.
    """
    check_discount(discount)
    model = tabular_model(dataset, target_pi)
    target_pi = jnp.asarray(target_pi, policy_dtype(model))
    d_hat = empirical_occupancy(model, target_pi, discount)
    w = ratio_from_occupancy(model, d_hat)
    report = coverage(model, target_pi, discount, d_hat)
    report_coverage(report, on_uncovered, context="dualdice_tabular: ")
    return (w, report) if return_coverage else w


def dualdice_objective(nu: Array, zeta: Array, model: EmpiricalModel, target_pi: Array, discount) -> Array:
    """The empirical Fenchel-dual DualDICE objective L(nu, zeta) for tables nu, zeta [S, A]; a scalar:

        L(nu, zeta) = sum_{s,a} d^D(s,a) [(B nu)(s,a) zeta(s,a) - zeta(s,a)^2 / 2]
                      - (1 - gamma) sum_{s,a} mu0_hat(s) pi(a|s) nu(s,a),
        (B nu)(s,a) = nu(s,a) - gamma sum_{s',a'} P_hat(s'|s,a) pi(a'|s') nu(s',a'),

    with d^D = n(s,a) / n, P_hat(s'|s,a) = n(s,a,s') / n(s,a) over non-terminal transitions and mu0_hat
    the initial counts, normalised (module docstring of `pgjax.offline.empirical`). Expectations over
    s' ~ P_hat and a' ~ pi are taken exactly; transitions to the sink (terminal, or from an unseen pair)
    contribute nu = 0, and unseen pairs (d^D = 0) leave zeta out. Minimise over nu, maximise over zeta:
    at the saddle point, which exists when pi stays on the seen pairs, zeta = `dualdice_ratio` on seen pairs.

    Args:
      nu, zeta: [S, A].
      model: the `EmpiricalModel` (counts [S, A]).
      target_pi: pi [S, A].
      discount: gamma.
    """
    n = jnp.where(model.counts > 0, model.counts, 1.0)
    p_hat = model.transition_counts / n[..., None]
    next_nu = jnp.einsum("sat,tb,tb->sa", p_hat, target_pi, nu)
    residual = nu - discount * next_nu
    data_term = jnp.sum(data_distribution(model) * (residual * zeta - 0.5 * zeta**2))
    mu0_hat = model.initial_counts / jnp.sum(model.initial_counts)
    initial_term = (1.0 - discount) * jnp.sum(mu0_hat[:, None] * target_pi * nu)
    return data_term - initial_term
