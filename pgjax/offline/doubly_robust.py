"""The doubly robust value estimate: a density ratio w and a Q estimate, each correcting the other.

For any Q_hat with V_hat(s) = sum_a pi(a|s) Q_hat(s,a), the occupancy flow equation
E_{d^pi}[Q_hat(s,a) - gamma E_{s'} V_hat(s')] = (1 - gamma) E_{s0~mu0}[V_hat(s0)] gives

    J(pi) = E_{s0~mu0}[V_hat(s0)] + 1/(1 - gamma) E_{(s,a)~d^pi}[r + gamma (1 - terminal) V_hat(s') - Q_hat(s,a)],

and with d^pi = w d^D the second expectation runs over the data:

    J_DR = mean_j V_hat(s0_j) + 1/(1 - gamma) mean_D[w(s,a) (r + gamma (1 - terminal) V_hat(s') - Q_hat(s,a))].

J_DR is exact when w is (for every Q_hat), and when Q_hat = Q^pi (for every w: the bracket then has
mean 0 given (s,a)); its error is the data average of (w - w*) times Q_hat's Bellman error, a product
of the two estimates' errors (Kallus & Uehara 2020, double reinforcement learning; Tang et al. 2020).
On tabular data with the empirical model both identities hold exactly (tests/test_doubly_robust.py).
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from pgjax.offline.dataset import Dataset
from pgjax.offline.empirical import check_concrete_discount
from pgjax.offline.neural import DualDICEParams, _take, check_trained_discount, neural_dualdice_ratio

Array = jax.Array

__all__ = ["doubly_robust_value", "neural_doubly_robust_value"]


def doubly_robust_value(
    ratios: Array,
    rewards: Array,
    q_values: Array,
    next_values: Array,
    terminals: Array,
    initial_values: Array,
    discount,
    mask: Array | None = None,
) -> Array:
    """J_DR = mean_j V_hat(s0_j) + 1/(1-gamma) mean_i[w_i (r_i + gamma (1 - term_i) V_hat(s'_i) - Q_hat(s_i,a_i))].

    Args:
      ratios: w(s_i, a_i) [...], e.g. DualDICE's d^pi / d^D.
      rewards: r_i [...].
      q_values: Q_hat(s_i, a_i) [...] at the logged actions.
      next_values: V_hat(s'_i) = sum_a' pi(a'|s'_i) Q_hat(s'_i, a') [...] (any value where terminal).
      terminals: [...] bool, s'_i absorbing (no bootstrap).
      initial_values: V_hat(s0_j) [M] over initial states drawn from mu0.
      discount: gamma in (0, 1).
      mask: optional [...] bool, the valid transitions (the data mean runs over them).

    Returns:
      A scalar on the scale of the expected discounted return. Jittable and vmappable.
    """
    chex.assert_equal_shape([ratios, rewards, q_values, next_values, terminals])
    chex.assert_rank(initial_values, 1)
    # In the arrays' dtype, which gamma V_hat(s') is computed in (float32 arrays under x64 round 1 - 1e-11 to 1).
    check_concrete_discount(discount, jnp.result_type(ratios, rewards, q_values, next_values))
    # where(), not (1 - terminal) *: a NaN or inf V_hat(s') at a terminal step must not leak in.
    bootstrap = jnp.where(terminals, 0.0, discount * next_values)
    corrections = ratios * (rewards + bootstrap - q_values)
    if mask is None:
        mean = jnp.mean(corrections)
    else:
        chex.assert_equal_shape([mask, ratios])
        mean = jnp.sum(jnp.where(mask, corrections, 0.0)) / jnp.maximum(jnp.sum(mask.astype(corrections.dtype)), 1.0)
    return jnp.mean(initial_values) + mean / (1.0 - discount)


def neural_doubly_robust_value(
    dice_params: DualDICEParams,
    q_fn: Callable[[Array], Array],
    dataset: Dataset,
    target_probs_fn: Callable[[Array], Array],
    discount,
) -> Array:
    """`doubly_robust_value` with w from `neural_dualdice` and Q_hat from `fitted_q_evaluation`.

    Args:
      dice_params: trained `DualDICEParams` (w_hat = zeta).
      q_fn: observations [..., obs_dim] -> Q_hat [..., A] (the `q_fn` that `fitted_q_evaluation` returns).
      dataset: the `Dataset` [N, T, ...] both were fitted on (float observation features).
      target_probs_fn: pi(.|s): observations [..., obs_dim] -> probabilities [..., A].
      discount: gamma in (0, 1), the one both were fitted for.

    Returns:
      A scalar; the mean runs over the dataset's valid steps and its initial observations.
    """
    check_trained_discount(dice_params, discount, "neural_doubly_robust_value")
    obs, actions = dataset.observations, dataset.actions
    ratios = neural_dualdice_ratio(dice_params, obs, actions)
    q_sa = _take(q_fn(obs), actions)
    next_obs = dataset.next_observations
    next_values = jnp.sum(target_probs_fn(next_obs) * q_fn(next_obs), axis=-1)
    initial = dataset.initial_observations
    initial_values = jnp.sum(target_probs_fn(initial) * q_fn(initial), axis=-1)
    return doubly_robust_value(ratios, dataset.rewards, q_sa, next_values, dataset.terminals, initial_values,
                               discount, dataset.mask)
