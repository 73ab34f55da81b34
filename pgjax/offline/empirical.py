"""The empirical model of a tabular dataset: counts, the data distribution d^D and coverage.

From the valid transitions (s_i, a_i, r_i, s'_i) of a `Dataset`:

    n(s,a)       = #{i : (s_i, a_i) = (s,a)}
    d^D(s,a)     = n(s,a) / n                                   (the data distribution)
    P_hat(s'|s,a) = #{i : (s_i,a_i,s'_i) = (s,a,s')} / n(s,a)     where n(s,a) > 0
    R_hat(s,a)   = mean of r_i over the pairs (s,a)
    mu0_hat(s)   = fraction of initial samples equal to s

`empirical_mdp` turns these into a `pgjax.tabular.MDP` with one extra absorbing "sink"
state (index S, zero reward). Pairs the data never show, and transitions into terminal
states, lead to the sink: their consequences are unknown (or zero), so the empirical MDP
credits them nothing. The target policy's occupancy of unseen pairs is the coverage
gap; `coverage` reports it, since there the ratio d^pi/d^D is not identifiable.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.offline.dataset import (
    Dataset,
    check_tabular_indices,
    check_tabular_policy,
    float_dtype,
    validate_tabular_dataset,
)
from pgjax.tabular.gradient import values_and_occupancy
from pgjax.tabular.mdp import MDP, discount_array
from pgjax.validation import check_discount_kept, check_int

Array = jax.Array


class CoverageWarning(UserWarning):
    """The target policy reaches state-action pairs that the data never show."""


class CoverageError(ValueError):
    """Raised instead of `CoverageWarning` when coverage is required (`on_uncovered="raise"`)."""


class EmpiricalModel(NamedTuple):
    """Sufficient statistics of a tabular dataset (a pytree; batch axes allowed under vmap).

    Attributes:
      counts: n(s,a) [S, A].
      transition_counts: n(s,a,s') [S, A, S] over non-terminal transitions.
      terminal_counts: n(s,a, terminal) [S, A].
      reward_sums: sum of rewards observed at (s,a) [S, A].
      initial_counts: [S] counts of the initial samples.
    """

    counts: Array
    transition_counts: Array
    terminal_counts: Array
    reward_sums: Array
    initial_counts: Array

    @property
    def num_states(self) -> int:
        """S, from counts [..., S, A]."""
        return self.counts.shape[-2]

    @property
    def num_actions(self) -> int:
        """A, from counts [..., S, A]."""
        return self.counts.shape[-1]


class Coverage(NamedTuple):
    """Where the target policy leaves the data's support.

    Attributes:
      unseen: [S, A] bool, pairs with n(s,a) = 0 that pi can take (pi(a|s) > 0) in a state the data reach.
      mass: the fraction of the target's discounted occupancy at or after its first step onto an unseen
        pair, sum_t gamma^t P(first unseen pair at t) in [0, 1] (0 = covered): the part of d^pi the
        data say nothing about. It is sum_{unseen} d_hat^pi(s,a) / (1 - gamma) in the empirical MDP,
        whose unseen pairs lead to the sink.
      num_unseen: the number of such pairs.
    """

    unseen: Array
    mass: Array
    num_unseen: Array


# `_pair_sums`: transitions per chunk, and the most chunk-by-pair cells (memory) it may use.
_CHUNK = 32
_MAX_CELLS = 2**22


def _pair_sums(indices: tuple[Array, ...], values: Array, shape: tuple[int, ...]) -> Array:
    """jnp.zeros(shape).at[indices].add(values) for values [M] and index arrays [M], accurate to a few roundings.

    One scatter-add rounds each addition against the running sum: with a pair's sum
    n r, adding r again loses up to half an ulp of n r, and with equal rewards the losses all have
    one sign, so the relative error grows like n eps (2e-3 in float32 at 800k transitions).
    Instead the transitions are scattered into per-chunk partial sums [C, *shape] (chunks of about
    `_CHUNK` transitions, C a power of two with C prod(shape) <= `_MAX_CELLS`), which are then added
    pairwise, with an error growing like log2(C) eps. Static shapes: jit/vmap-able.
    """
    m, size = values.shape[0], math.prod(shape)
    chunks = 1
    while chunks * _CHUNK < m and 2 * chunks * size <= _MAX_CELLS:
        chunks *= 2
    per_chunk = -(-m // chunks)
    partial = jnp.zeros((chunks, *shape), values.dtype).at[(jnp.arange(m) // per_chunk, *indices)].add(values)
    while partial.shape[0] > 1:
        half = partial.shape[0] // 2
        partial = partial[:half] + partial[half:]
    return partial[0]


def pair_totals(dataset: Dataset, shape: tuple[int, int], dtype) -> tuple[Array, Array]:
    """Over the valid transitions: n(s,a), int32 and exact, and sum_{(s_i,a_i) = (s,a)} r_i in `dtype`, accurate to
    a few roundings (`_pair_sums`); both [S, A] = `shape`. jit/vmap-able (shape and dtype static)."""
    s, a = dataset.observations.reshape(-1), dataset.actions.reshape(-1)
    valid = dataset.mask.astype(bool).reshape(-1)
    counts = jnp.zeros(shape, jnp.int32).at[s, a].add(valid.astype(jnp.int32))
    rewards = jnp.where(valid, dataset.rewards.reshape(-1), 0).astype(dtype)
    return counts, _pair_sums((s, a), rewards, shape)


def empirical_model(dataset: Dataset, num_states: int, num_actions: int) -> EmpiricalModel:
    """Count the dataset's valid transitions into an `EmpiricalModel` (jit/vmap-able; S, A static).

    From int states and actions [N, T] (and initial states [M]), over the steps with mask True:
    n(s,a) = #{(s_i,a_i) = (s,a)} [S, A], n(s,a,s') over non-terminal steps [S, A, S],
    n(s,a, terminal) = n(s,a) - sum_s' n(s,a,s') [S, A], reward sums sum_{(s_i,a_i) = (s,a)} r_i [S, A],
    and the initial-state counts [S].

    The fields are floating (`float_dtype` of the rewards': their own dtype, at least float32, if floating).
    Counts are accumulated as int32, exactly; reward sums by `_pair_sums`, to a few float roundings.
    Concrete data are checked to hold indices in range (`check_tabular_indices`: a -1 action would count as the
    last one); under `jit`/`vmap` they are not. The other checks of `validate_tabular_dataset` are left to the
    estimators that call it (integer rewards, for one, are counted here in a floating dtype).
    """
    check_int("empirical_model: num_states", num_states)
    check_int("empirical_model: num_actions", num_actions)
    if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(dataset)):
        check_tabular_indices(dataset, num_states, num_actions)
    return _count_model(dataset, num_states, num_actions)


def _count_model(dataset: Dataset, num_states: int, num_actions: int) -> EmpiricalModel:
    """The unchecked core of `empirical_model`, for data validated already (`tabular_model`)."""
    s, a, s_next = dataset.observations, dataset.actions, dataset.next_observations
    # Never an integer dtype (integer rewards): pi cast to it would become 0 or 1.
    dtype = float_dtype(dataset.rewards.dtype)
    counts, reward_sums = pair_totals(dataset, (num_states, num_actions), dtype)
    live = dataset.mask.astype(bool) & ~dataset.terminals.astype(bool)
    transition_counts = jnp.zeros((num_states, num_actions, num_states), jnp.int32).at[s, a, s_next].add(
        live.astype(jnp.int32)
    )
    terminal_counts = counts - jnp.sum(transition_counts, axis=-1)
    initial_counts = jnp.zeros((num_states,), jnp.int32).at[dataset.initial_observations].add(1)
    return EmpiricalModel(
        counts.astype(dtype),
        transition_counts.astype(dtype),
        terminal_counts.astype(dtype),
        reward_sums,
        initial_counts.astype(dtype),
    )


def data_distribution(model: EmpiricalModel) -> Array:
    """d^D(s,a) = n(s,a) / n [S, A], n = sum_{s,a} n(s,a) the number of valid transitions; sums to 1."""
    return model.counts / jnp.sum(model.counts)


def empirical_mdp(model: EmpiricalModel, discount, unseen_value=0.0) -> MDP:
    """The maximum-likelihood MDP with S + 1 states (the last one an absorbing, zero-reward sink).

    transition [S + 1, A, S + 1], reward [S + 1, A], initial [S + 1], discount gamma; for a seen pair
    (n(s,a) > 0)

        P_hat(s'|s,a) = n(s,a,s') / n(s,a),   P_hat(sink|s,a) = n(s,a, terminal) / n(s,a),
        R_hat(s,a) = (sum of r_i at (s,a)) / n(s,a),   mu0_hat(s) = initial_counts(s) / sum initial_counts,

    and for an unseen pair P_hat(sink|s,a) = 1, R_hat(s,a) = `unseen_value`.

    Unseen pairs and terminal transitions move to the sink. An unseen pair pays `unseen_value`
    once, so that Q_hat(s,a) = unseen_value there: 0 credits unknown outcomes nothing, while
    min(r) / (1 - gamma) is the pessimistic choice for policy improvement. Use `extend_policy`
    to give a policy [S, A] its row for the sink.
    """
    seen = model.counts > 0
    n = jnp.where(seen, model.counts, 1.0)
    num_states, num_actions = model.counts.shape
    to_sink = jnp.where(seen, model.terminal_counts / n, 1.0)
    p_real = jnp.concatenate([model.transition_counts / n[..., None], to_sink[..., None]], axis=-1)
    sink_row = jnp.zeros((1, num_actions, num_states + 1), p_real.dtype).at[..., -1].set(1.0)
    transition = jnp.concatenate([p_real, sink_row], axis=0)
    reward = jnp.concatenate([jnp.where(seen, model.reward_sums / n, unseen_value),
                              jnp.zeros((1, num_actions), n.dtype)])
    initial = jnp.append(model.initial_counts / jnp.sum(model.initial_counts), 0.0)
    # Named as the callers' argument: under x64, float32 data round a discount that check_discount's default
    # dtype (float64) keeps, and this cast is where that shows.
    return MDP(transition, reward, initial, discount_array(discount, transition.dtype, "discount"))


def extend_policy(pi: Array) -> Array:
    """pi [S, A] -> [S + 1, A], with a uniform row for the sink (any row gives the same values)."""
    return jnp.concatenate([pi, jnp.full((1, pi.shape[-1]), 1.0 / pi.shape[-1], pi.dtype)], axis=0)


class EmpiricalSolution(NamedTuple):
    """The target policy evaluated in the empirical MDP (sink dropped).

    Attributes:
      value: J_hat(pi) = mu0_hat . V_hat, a scalar.
      q_values: Q_hat^pi [S, A] (what tabular fitted Q evaluation converges to).
      occupancy: d_hat^pi(s,a) [S, A], the normalised discounted occupancy.
    """

    value: Array
    q_values: Array
    occupancy: Array


def solve_empirical(model: EmpiricalModel, target_pi: Array, discount, unseen_value=0.0) -> EmpiricalSolution:
    """V_hat, Q_hat and d_hat of pi [S, A] in `empirical_mdp(model, discount, unseen_value)` from one LU factorisation.

    With M = I - gamma P_hat^pi over the S + 1 states (pi extended to the sink by `extend_policy`):
    M V_hat = R_hat^pi, Q_hat = R_hat + gamma P_hat V_hat, M^T d_hat = (1 - gamma) mu0_hat; returns
    `EmpiricalSolution(mu0_hat . V_hat, Q_hat [S, A], d_hat(s) pi(a|s) [S, A])` with the sink dropped.
    """
    mdp = empirical_mdp(model, discount, unseen_value)
    pi = extend_policy(target_pi)
    v, q, d = values_and_occupancy(mdp, pi)
    return EmpiricalSolution(mdp.initial @ v, q[:-1], (d[:, None] * pi)[:-1])


def empirical_occupancy(model: EmpiricalModel, target_pi: Array, discount) -> Array:
    """d_hat^pi(s,a) [S, A]: the target's normalised discounted occupancy in the empirical MDP (sink dropped).

        d_hat^pi(s,a) = d_hat(s) pi(a|s),   (I - gamma P_hat^pi)^T d_hat = (1 - gamma) mu0_hat   (over S + 1 states);

    it sums to 1 minus the occupancy of the sink, which terminal transitions and unseen pairs lead to.
    target_pi: pi [S, A]; discount: gamma in (0, 1).
    """
    return solve_empirical(model, target_pi, discount).occupancy


def coverage(model: EmpiricalModel, target_pi: Array, discount, occupancy: Array | None = None) -> Coverage:
    """The pairs the target policy can reach but the data never show, and its occupancy mass there.

        unseen(s,a) = [n(s,a) = 0] [pi(a|s) > 0] [s reached],   mass = sum_{n(s,a) = 0} d_hat^pi(s,a) / (1 - gamma),

    s reached when the data show it as a transition's state, a non-terminal next state or an initial state;
    d_hat^pi the occupancy in the empirical MDP, whose unseen pairs lead to the sink, so that mass in [0, 1]
    is sum_t gamma^t P(first step onto an unseen pair at t) (`Coverage`).

    Args:
      model: the `EmpiricalModel` (counts [S, A]).
      target_pi: pi [S, A].
      discount: gamma in (0, 1).
      occupancy: d_hat^pi [S, A] of the same pi and gamma when the caller already has it (from
        `solve_empirical`); computed otherwise.

    Returns:
      `Coverage(unseen [S, A] bool, mass (a scalar), num_unseen (an int scalar))`.
    """
    d_hat = empirical_occupancy(model, target_pi, discount) if occupancy is None else occupancy
    reached = ((jnp.sum(model.counts, -1) > 0) | (jnp.sum(model.transition_counts, (0, 1)) > 0)
               | (model.initial_counts > 0))
    unseen = (model.counts == 0) & (target_pi > 0) & reached[:, None]
    mass = jnp.sum(jnp.where(model.counts == 0, d_hat, 0.0)) / (1.0 - discount)
    return Coverage(unseen, mass, jnp.sum(unseen))


def check_on_uncovered(on_uncovered: str, owner: str = "") -> None:
    """ValueError unless `on_uncovered` is "warn", "raise" or "ignore" (`owner` prefixes the message)."""
    if on_uncovered not in ("warn", "raise", "ignore"):
        raise ValueError(f"{owner}on_uncovered must be 'warn', 'raise' or 'ignore'; got {on_uncovered!r}.")


def report_coverage(report: Coverage, on_uncovered: str, tolerance: float = 1e-6, context: str = "") -> None:
    """Warn (`CoverageWarning`), raise (`CoverageError`) or stay silent ("ignore") about a coverage gap.

    Host-side: needs a concrete `Coverage`. `tolerance` is the occupancy mass treated as covered.
    """
    check_on_uncovered(on_uncovered)
    mass = float(report.mass)
    if on_uncovered == "ignore" or mass <= tolerance:
        return
    pairs = np.argwhere(np.asarray(report.unseen))
    shown = ", ".join(f"({s},{a})" for s, a in pairs[:8]) + (" ..." if len(pairs) > 8 else "")
    message = (
        f"{context}a fraction {mass:.4g} of the target policy's occupancy mass lies at or after its first step onto "
        f"one of {len(pairs)} state-action pairs the data never show [{shown}]; the ratio d^pi/d^D is not "
        "identifiable there and the estimates credit that mass nothing "
        "(collect data covering those pairs, or keep the target policy on the data's support)."
    )
    if on_uncovered == "raise":
        raise CoverageError(message)
    warnings.warn(message, CoverageWarning, stacklevel=3)


def report_importance_coverage(model: EmpiricalModel, target_pi: Array, discount, on_uncovered: str,
                               owner: str) -> None:
    """`report_coverage` for an importance-sampling estimate: pairs the data never show bias it as well where the
    behaviour policy never takes those actions (their weights are 0, so their mass is missing)."""
    report_coverage(coverage(model, target_pi, discount), on_uncovered,
                    context=f"{owner}: if the behaviour policy never takes those actions, importance sampling misses "
                            "this mass as well; ")


def tabular_model(dataset: Dataset, target_pi: Array) -> EmpiricalModel:
    """Validate a tabular dataset against the policy's shape [S, A] and count it (host-side boundary)."""
    target_pi = np.asarray(target_pi)
    check_tabular_policy(target_pi, "target_pi")
    validate_tabular_dataset(dataset, *target_pi.shape)
    return _count_model(dataset, *target_pi.shape)


def policy_dtype(model: EmpiricalModel):
    """The dtype to evaluate a policy on the model in (the model's: the linear solves need one dtype).

    Floating even for a hand-made model with integer counts: pi cast to an integer dtype would become 0 or 1.
    """
    return float_dtype(model.counts.dtype)


def pessimistic_value(model: EmpiricalModel, discount) -> Array:
    """min_{seen (s,a)} R_hat(s,a) / (1 - gamma), a scalar: the worst return the data show, for unseen pairs.

    R_hat(s,a) = (sum of rewards at (s,a)) / n(s,a) over the pairs with n(s,a) > 0.
    """
    check_concrete_discount(discount)
    seen = model.counts > 0
    r_hat = model.reward_sums / jnp.where(seen, model.counts, 1.0)
    return jnp.min(jnp.where(seen, r_hat, jnp.inf)) / (1.0 - discount)


def check_discount(discount, dtype=None) -> None:
    """Raise `ValueError` unless 0 < gamma < 1, and gamma stays below 1 in `dtype`, the dtype it is computed in
    (default JAX's default float: 0.99999999999 is 1.0 in float32). Host-side: `discount` must be concrete, a
    number or a 0-d array."""
    if isinstance(discount, (str, bytes, bool, np.bool_)):
        raise ValueError(f"discount must be a number in (0, 1); got {discount!r}.")
    if np.size(discount) != 1:
        raise ValueError(f"discount must be one number in (0, 1); got an array of shape {np.shape(discount)}.")
    d = float(np.asarray(discount).reshape(()))
    if not 0.0 < d < 1.0:
        raise ValueError(f"discount must be in (0, 1); got {d}.")
    check_discount_kept("discount", discount, jnp.result_type(float) if dtype is None else dtype)


def check_concrete_discount(discount, dtype=None) -> None:
    """`check_discount` when `discount` is known on the host; a traced one (inside jit/vmap) passes, the caller's
    to check. For the jit-friendly formulas that divide by 1 - gamma: gamma = 1 gave inf, gamma > 1 a flipped sign."""
    if not isinstance(discount, jax.core.Tracer):
        check_discount(discount, dtype)
