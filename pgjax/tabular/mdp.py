"""Tabular Markov decision processes.

An `MDP` holds the four objects of the lecture: the transition kernel
P(s'|s,a) as an array [S, A, S], the reward R(s,a) as [S, A], the initial
distribution mu0 as [S] and the discount gamma. It is a pytree, so batches of
MDPs (leading batch axes on every field) pass through `jit` and `vmap`.

Building an MDP from concrete arrays validates it; values that are tracers
(inside `jit`/`vmap`) are not checked, so construction never breaks tracing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.validation import check_discount_kept, check_int, check_known

Array = jax.Array

_FIELDS = ("transition", "reward", "initial", "discount")


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _batch_element(index: tuple) -> str:
    """"in batch element (i, ...) " for a batched MDP's index, "" for a single MDP's."""
    return f"in batch element {tuple(int(i) for i in index)} " if index else ""


def _sum_tolerance(dtype: Any, size: int) -> float:
    """Tolerance on a probability vector's sum: 1e-6, loosened for float32 rounding; 4 eps below float32 (entries
    rounded to a 16-bit float are off by at most eps / 2 of their sum, whatever their number: a sqrt(S) factor
    let bfloat16 rows summing to 1.4 through at S = 64)."""
    # jnp's dtype tests know bfloat16 (an ml_dtypes type, which np.issubdtype does not count as floating).
    eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0
    if eps > float(jnp.finfo(jnp.float32).eps):
        return 4.0 * eps
    return max(1e-6, 8.0 * np.sqrt(max(size, 1)) * eps)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class MDP:
    """A finite discounted MDP (optionally a batch of them).

    Attributes:
      transition: P [..., S, A, S], P[s, a, s'] = P(s' | s, a); rows sum to 1.
      reward: R [..., S, A], the expected reward r(s, a).
      initial: mu0 [..., S], the initial-state distribution; sums to 1.
      discount: gamma [...] in (0, 1).

    Leading axes `...` are batch axes (e.g. the output of `jax.vmap(random_mdp)`).
    """

    transition: Array
    reward: Array
    initial: Array
    discount: Array

    def __post_init__(self):
        values = {name: getattr(self, name) for name in _FIELDS}
        if not all(_is_concrete(v) for v in values.values()):
            return  # Traced: shapes were checked by whoever built the concrete value.
        converted = {}
        for name, value in values.items():
            try:
                arr = jnp.asarray(value)
            except TypeError as err:
                raise ValueError(f"MDP.{name}: cannot convert {type(value).__name__} to an array ({err}).") from None
            if jnp.issubdtype(arr.dtype, jnp.complexfloating):  # the cast below would drop the imaginary part
                raise ValueError(f"MDP.{name} must be real; got {arr.dtype}.")
            if not jnp.issubdtype(arr.dtype, jnp.floating):
                arr = arr.astype(jnp.result_type(float))
            converted[name] = arr
        check_discount_kept("MDP.discount", values["discount"], converted["discount"].dtype)
        validate_mdp_arrays(**{k: np.asarray(v) for k, v in converted.items()})
        for name, arr in converted.items():
            object.__setattr__(self, name, arr)

    @property
    def num_states(self) -> int:
        """S, from reward [..., S, A]."""
        return self.reward.shape[-2]

    @property
    def num_actions(self) -> int:
        """A, from reward [..., S, A]."""
        return self.reward.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading batch axes [...] of reward [..., S, A] (() for one MDP)."""
        return tuple(self.reward.shape[:-2])

    def replace(self, **changes) -> "MDP":
        """A copy with the named fields replaced (validated again when concrete)."""
        return dataclasses.replace(self, **changes)

    def tree_flatten(self):
        return tuple(getattr(self, name) for name in _FIELDS), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        # Bypass validation: unflattening happens inside transformations with
        # placeholders and batched leaves.
        obj = object.__new__(cls)
        for name, child in zip(_FIELDS, children):
            object.__setattr__(obj, name, child)
        return obj


def validate_mdp_arrays(transition: np.ndarray, reward: np.ndarray, initial: np.ndarray, discount: np.ndarray) -> None:
    """Raise `ValueError` naming the field and the fix if the arrays are not a valid MDP."""
    if transition.ndim < 3:
        raise ValueError(
            f"MDP.transition must have shape [S, A, S] (plus optional leading batch axes); "
            f"got shape {transition.shape}."
        )
    batch = transition.shape[:-3]
    num_states, num_actions, next_states = transition.shape[-3:]
    if next_states != num_states:
        raise ValueError(
            f"MDP.transition must have shape [S, A, S] with the same S on axes -3 and -1; got {transition.shape}."
        )
    if num_states < 1 or num_actions < 1:
        raise ValueError(f"MDP.transition must have at least one state and one action; got shape {transition.shape}.")
    expected = {
        "reward": batch + (num_states, num_actions),
        "initial": batch + (num_states,),
        "discount": batch,
    }
    arrays = {"transition": transition, "reward": reward, "initial": initial, "discount": discount}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(
                f"MDP.{name} must have shape {shape} to match transition {transition.shape}; got {arrays[name].shape}."
            )
    for name, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"MDP.{name} contains NaN or inf; every entry must be finite.")
    if np.any(transition < 0):
        raise ValueError(f"MDP.transition has negative entries (min {transition.min():.3g}); "
                         "probabilities must be >= 0.")
    if np.any(initial < 0):
        raise ValueError(f"MDP.initial has negative entries (min {initial.min():.3g}); probabilities must be >= 0.")
    tol = _sum_tolerance(transition.dtype, num_states)
    row_sums = transition.astype(np.float64).sum(-1)
    worst = np.abs(row_sums - 1.0).max()
    if worst > tol:
        idx = np.unravel_index(np.abs(row_sums - 1.0).argmax(), row_sums.shape)
        raise ValueError(
            f"MDP.transition rows must sum to 1 over the next state (axis -1); "
            f"row (s, a) = {tuple(int(i) for i in idx[-2:])} "
            f"{_batch_element(idx[:-2])}sums to {row_sums[idx]:.8g} (tolerance {tol:.1g}). Normalise P[s, a, :]."
        )
    init_sums = initial.astype(np.float64).sum(-1)
    if np.abs(init_sums - 1.0).max() > tol:
        idx = np.unravel_index(np.abs(init_sums - 1.0).argmax(), init_sums.shape)
        raise ValueError(
            f"MDP.initial must sum to 1; {_batch_element(idx)}it sums to {init_sums[idx]:.8g} (tolerance {tol:.1g}). "
            "Normalise mu0."
        )
    if np.any(discount <= 0) or np.any(discount >= 1):
        raise ValueError(
            f"MDP.discount must lie strictly in (0, 1); got {discount if discount.ndim == 0 else discount.ravel()[:5]}."
        )


def discount_array(discount: Any, dtype: Any, label: str = "MDP.discount") -> Array:
    """`discount` as a `dtype` array, refused if that rounds a discount below 1 to 1.0 (the MDP constructors' cast);
    `label` names it in the error (the caller's argument)."""
    if _is_concrete(discount):  # a traced discount (vmapped over gammas) is checked where it was made
        check_discount_kept(label, discount, dtype)
    return jnp.asarray(discount, dtype)


def random_mdp(
    key: Array,
    num_states: int,
    num_actions: int,
    discount: float = 0.9,
    concentration: float = 1.0,
    reward_scale: float = 1.0,
    dtype: Any = None,
) -> MDP:
    """A random MDP: P(.|s,a) ~ Dirichlet(concentration), R(s,a) ~ U[0, reward_scale], mu0 ~ Dirichlet(1).

    Works under `jit` (with the sizes static) and under `vmap` over `key`.

    Args:
      key: PRNG key.
      num_states: S >= 1.
      num_actions: A >= 1.
      discount: gamma in (0, 1).
      concentration: Dirichlet concentration of each transition row; small values give
        sparse, near-deterministic dynamics.
      reward_scale: rewards are uniform on [0, reward_scale].
      dtype: float dtype (default: jax's default float).

    Returns:
      An `MDP` with transition [S, A, S], reward [S, A], initial [S].
    """
    check_int("random_mdp: num_states", num_states)
    check_int("random_mdp: num_actions", num_actions)
    if _is_concrete(discount) and not 0.0 < float(discount) < 1.0:
        raise ValueError(f"random_mdp: discount must lie in (0, 1); got {discount}.")
    # NaN rows of the Dirichlet draws fell back to uniform transitions
    check_known("random_mdp: concentration", concentration, lambda v: v > 0, "a positive, finite number")
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    unit = _is_concrete(concentration) and float(concentration) == 1.0
    transition, reward, initial = _sample_mdp_arrays(
        key, num_states, num_actions, concentration, reward_scale, dtype, unit
    )
    return MDP(transition, reward, initial, discount_array(discount, dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 5, 6))
def _sample_mdp_arrays(key, num_states, num_actions, concentration, reward_scale, dtype, unit_concentration):
    # Jitted so eager callers pay one compile instead of one per Dirichlet sampling op.
    k_p, k_r, k_mu = jax.random.split(key, 3)
    if unit_concentration:
        # Dirichlet(1, ..., 1) is normalised Exp(1) draws: far cheaper to compile than the gamma sampler.
        transition = jax.random.exponential(k_p, (num_states, num_actions, num_states), dtype)
        transition = transition / transition.sum(-1, keepdims=True)
    else:
        alpha = jnp.full((num_states,), concentration, dtype)
        transition = jax.random.dirichlet(k_p, alpha, shape=(num_states, num_actions), dtype=dtype)
    # Dirichlet draws with tiny concentration can underflow to an all-zero row; renormalise safely.
    transition = _normalise_rows(transition)
    reward = reward_scale * jax.random.uniform(k_r, (num_states, num_actions), dtype)
    initial = jax.random.exponential(k_mu, (num_states,), dtype)
    initial = initial / initial.sum()
    return transition, reward, initial


def _normalise_rows(p: Array) -> Array:
    total = p.sum(-1, keepdims=True)
    uniform = jnp.full_like(p, 1.0 / p.shape[-1])
    return jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), uniform)


def chain_mdp(
    num_states: int = 6,
    slip: float = 0.1,
    left_reward: float = 0.005,
    right_reward: float = 1.0,
    discount: float = 0.9,
) -> MDP:
    """A RiverSwim-style chain: action 0 moves left (always succeeds), action 1 tries to move right.

    Moving right succeeds with probability 1 - slip, stays with probability slip / 2 and
    slides back with probability slip / 2. Taking "left" in state 0 pays `left_reward`;
    taking "right" in the last state pays `right_reward`. The start is state 0, so a
    myopic policy collects the small reward and a far-sighted one swims upstream:
    the classic hard-exploration example for policy gradients.

    Returns:
      An `MDP` with S = num_states, A = 2.
    """
    check_int("chain_mdp: num_states", num_states, minimum=2)
    if not 0.0 <= slip < 1.0:
        raise ValueError(f"chain_mdp: slip must lie in [0, 1); got {slip}.")
    n = num_states
    P = np.zeros((n, 2, n))
    R = np.zeros((n, 2))
    for s in range(n):
        P[s, 0, max(s - 1, 0)] = 1.0
        right, back = min(s + 1, n - 1), max(s - 1, 0)
        P[s, 1, right] += 1.0 - slip
        P[s, 1, s] += slip / 2
        P[s, 1, back] += slip / 2
    R[0, 0] = left_reward
    R[n - 1, 1] = right_reward
    mu0 = np.zeros(n)
    mu0[0] = 1.0
    dtype = jnp.result_type(float)
    return MDP(jnp.asarray(P, dtype), jnp.asarray(R, dtype), jnp.asarray(mu0, dtype), discount_array(discount, dtype))


GRID_ACTIONS = ("up", "right", "down", "left")


def gridworld_mdp(
    height: int = 4,
    width: int = 4,
    slip: float = 0.1,
    goal_reward: float = 1.0,
    step_reward: float = 0.0,
    discount: float = 0.9,
) -> MDP:
    """A gridworld: start in the top-left corner, reward for acting in the bottom-right goal.

    States are cells indexed s = row * width + col; actions are (up, right, down, left).
    With probability 1 - slip the agent moves as asked (walls keep it in place); with
    probability slip it moves in a uniformly random direction. Any action taken in the
    goal cell pays `goal_reward` and teleports the agent back to the start (a continuing
    task, so J is a proper infinite-horizon discounted return). Every other step pays
    `step_reward`.

    Returns:
      An `MDP` with S = height * width, A = 4.
    """
    if height < 1 or width < 1 or height * width < 2:
        raise ValueError(f"gridworld_mdp: need at least 2 cells; got height={height}, width={width}.")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"gridworld_mdp: slip must lie in [0, 1]; got {slip}.")
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    n = height * width
    start, goal = 0, n - 1

    def move(s: int, direction: int) -> int:
        r, c = divmod(s, width)
        dr, dc = moves[direction]
        r2, c2 = r + dr, c + dc
        return r2 * width + c2 if 0 <= r2 < height and 0 <= c2 < width else s

    P = np.zeros((n, 4, n))
    R = np.full((n, 4), step_reward)
    for s in range(n):
        for a in range(4):
            if s == goal:
                P[s, a, start] = 1.0
                R[s, a] = goal_reward
                continue
            P[s, a, move(s, a)] += 1.0 - slip
            for d in range(4):
                P[s, a, move(s, d)] += slip / 4
    mu0 = np.zeros(n)
    mu0[start] = 1.0
    dtype = jnp.result_type(float)
    return MDP(jnp.asarray(P, dtype), jnp.asarray(R, dtype), jnp.asarray(mu0, dtype), discount_array(discount, dtype))
