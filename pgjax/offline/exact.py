"""Exact counterparts of the offline quantities on a known tabular MDP (the truth to test against).

`collect` logs N episodes of T steps, so its transitions are drawn (as N grows) from the
time-averaged state-action distribution of the behaviour policy mu:

    d^D(s,a) = (1/T) sum_{t<T} (mu0 (P^mu)^t)(s) mu(a|s)

and the DualDICE ratio converges to w(s,a) = d^pi(s,a) / d^D(s,a), with d^pi the normalised
discounted occupancy of the target policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pgjax.tabular.evaluation import policy_transition, working_dtype
from pgjax.tabular.mdp import MDP
from pgjax.tabular.occupancies import state_action_occupancy
from pgjax.validation import check_int

Array = jax.Array


def logged_distribution(mdp: MDP, behaviour_pi: Array, horizon: int) -> Array:
    """d^D(s,a) [S, A] of data logged by `collect(..., horizon)`: the time-average over t < T,

        d^D(s,a) = (1/T) sum_{t<T} (mu0 (P^mu)^t)(s) mu(a|s),   summing to 1.

    Args:
      mdp: an unbatched `MDP` (mu0 [S], P [S, A, S]).
      behaviour_pi: mu [S, A].
      horizon: T >= 1, a static Python int (the scan length).
    """
    check_int("logged_distribution: horizon", horizon)
    p_mu = policy_transition(mdp, behaviour_pi)

    def step(state_dist, _):
        return state_dist @ p_mu, state_dist

    _, dists = lax.scan(step, mdp.initial.astype(working_dtype(mdp, behaviour_pi)), None, length=horizon)
    return jnp.mean(dists, axis=0)[:, None] * behaviour_pi


def exact_ratio(mdp: MDP, target_pi: Array, data_distribution: Array) -> Array:
    """w(s,a) = d^pi(s,a) / d^D(s,a) [S, A]; 0 where d^D = 0 (not identifiable there).

    d^pi(s,a) = d^pi(s) pi(a|s) is the exact normalised discounted occupancy of target_pi [S, A]
    (`state_action_occupancy`); data_distribution is d^D [S, A], e.g. `logged_distribution`.
    """
    d_pi = state_action_occupancy(mdp, target_pi)
    positive = data_distribution > 0
    return jnp.where(positive, d_pi / jnp.where(positive, data_distribution, 1.0), 0.0)
