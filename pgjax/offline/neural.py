"""Off-policy evaluation and offline policy gradients with function approximation.

From valid transitions (s, a, r, s', terminal) ~ d^D of a behaviour policy mu, initial
observations s0 ~ mu0, a target policy pi and discount gamma:

DualDICE (Nachum, Chow, Dai & Li, NeurIPS 2019) estimates the density ratio
w(s,a) = d^pi(s,a) / d^D(s,a), d^pi the normalised discounted occupancy, as the saddle
point zeta* = w of the Fenchel-dual objective (f(x) = x^2 / 2)

    L(nu, zeta) = E_D[(nu(s,a) - gamma (1 - terminal) E_{a'~pi(.|s')} nu(s',a')) zeta(s,a) - zeta(s,a)^2 / 2]
                  - (1 - gamma) E_{s0~mu0, a0~pi}[nu(s0,a0)],

minimised over nu and maximised over zeta. Then J(pi) = E_D[w r] / (1 - gamma), or the
self-normalised E_D[w r] / E_D[w] / (1 - gamma).

Fitted Q evaluation (FQE; Le, Voloshin & Yue, ICML 2019) regresses Q on the bootstrapped target

    y = r + gamma (1 - terminal) sum_a' pi(a'|s') Q_target(s',a'),   J(pi) = E_{s0}[sum_a pi(a|s0) Q(s0,a)],

with Q_target a copy of Q refreshed every `target_update_period` steps.

The offline policy gradient reweights the score function by both estimates:

    grad J(pi_theta) = 1/(1 - gamma) E_{(s,a)~d^D}[w(s,a) grad log pi_theta(a|s) Q^pi(s,a)].

`on_policy_gradient_loss` is its on-policy reference from episodes of pi itself, the same
theorem with d^pi sampled by discounted time, sum_t gamma^t grad log pi(a_t|s_t) G_t.

Networks are `pgjax.nets.MLP`s from observation features [..., obs_dim] to one value per
discrete action [..., A]. `target_probs_fn(observations [..., obs_dim]) -> pi(.|s) [..., A]`
is a pure function; it is a static argument of the compiled training loop, so reuse the
same function object to reuse the compiled loop. Tabular datasets (int states) run through
the same code after `one_hot_observations`, with `tabular_probs_fn(pi)`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from pgjax.nets import ACTIVATIONS, MLP
from pgjax.offline.dataset import Dataset, Transitions, valid_transitions, validate_dataset
from pgjax.offline.empirical import check_concrete_discount, check_discount
from pgjax.validation import check_discount_kept, check_int, check_positive, is_finite_real, is_int

Array = jax.Array
ProbsFn = Callable[[Array], Array]

__all__ = [
    "DualDICEParams",
    "FQEConfig",
    "FQEParams",
    "NeuralDualDICEConfig",
    "SADDLE_GAP_WARNING",
    "TrainingDivergedError",
    "Transitions",
    "discounted_reward_to_go",
    "dualdice_loss",
    "fitted_q_evaluation",
    "fqe_loss",
    "fqe_q_values",
    "fqe_value",
    "neural_dualdice",
    "neural_dualdice_ratio",
    "neural_dualdice_value",
    "offline_policy_gradient_loss",
    "on_policy_gradient_loss",
    "one_hot_observations",
    "tabular_probs_fn",
    "valid_transitions",
]


# `neural_dualdice` warns above this saddle_gap. On random CartPole (gamma 0.99, 2 datasets x 4 keys, batch 256):
# 30k steps: gaps <= 0.037, value errors -1% to -8%; 10k (the default): <= 0.107; 100k at the same step sizes:
# nu drifted in 5 of 8 runs (gaps 0.21-1.65, value errors down to -67%); a constant nu step size of 1e-2 blew
# both networks up (gaps 271-3792, values in the thousands).
SADDLE_GAP_WARNING = 0.2


class TrainingDivergedError(FloatingPointError):
    """Training produced NaN or inf (parameters or losses); usually a learning rate that is too large."""


# ---------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------


def _check_bool(cls: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{cls}.{field} must be True or False; got {value!r}.")


def _check_network(cls: str, hidden_sizes: Any, activation: Any) -> tuple[int, ...]:
    try:
        sizes = tuple(hidden_sizes)
    except TypeError:
        raise ValueError(f"{cls}.hidden_sizes must be a tuple of positive ints; got {hidden_sizes!r}.") from None
    if any(not is_int(h) or h < 1 for h in sizes):
        raise ValueError(f"{cls}.hidden_sizes must be a tuple of positive ints; got {hidden_sizes!r}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{cls}.activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}.")
    return tuple(int(h) for h in sizes)


@dataclasses.dataclass(frozen=True)
class NeuralDualDICEConfig:
    """Settings of `neural_dualdice` (frozen and hashable: a static argument of the compiled loop).

    Attributes:
      discount: gamma in (0, 1) of the occupancy d^pi whose ratio is estimated.
      hidden_sizes: hidden widths of both MLPs nu and zeta (may be empty: linear in the features).
      activation: "relu" or "tanh".
      nu_learning_rate: Adam step size of the descent on nu.
      zeta_learning_rate: Adam step size of the ascent on zeta. The objective is strongly concave
        in zeta, so a zeta faster than nu tracks its best response nu - gamma P^pi nu and damps
        the rotation around the saddle that simultaneous descent-ascent otherwise shows.
      num_steps: gradient steps (each one minibatch of transitions and one of initial observations).
      batch_size: minibatch size; at most the number of valid transitions.
      anneal_lr: decay both step sizes to 0 along a cosine, so the minibatch iterates settle on the saddle.
      adam_b1: Adam's first-moment decay in [0, 1). 0 (no momentum) by default: with momentum
        (0.9) descent-ascent overshoots around the saddle and, in our tests, diverges.
    """

    discount: float = 0.99
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    nu_learning_rate: float = 1e-3
    zeta_learning_rate: float = 1e-2
    num_steps: int = 10_000
    batch_size: int = 256
    anneal_lr: bool = True
    adam_b1: float = 0.0

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "hidden_sizes", _check_network(name, self.hidden_sizes, self.activation))
        if not is_finite_real(self.discount) or not 0.0 < self.discount < 1.0:
            raise ValueError(f"{name}.discount must lie in (0, 1); got {self.discount!r}.")
        check_positive(f"{name}.nu_learning_rate", self.nu_learning_rate)
        check_positive(f"{name}.zeta_learning_rate", self.zeta_learning_rate)
        check_int(f"{name}.num_steps", self.num_steps)
        check_int(f"{name}.batch_size", self.batch_size)
        _check_bool(name, "anneal_lr", self.anneal_lr)
        if not is_finite_real(self.adam_b1) or not 0.0 <= self.adam_b1 < 1.0:
            raise ValueError(f"{name}.adam_b1 must lie in [0, 1); got {self.adam_b1!r}.")


@dataclasses.dataclass(frozen=True)
class FQEConfig:
    """Settings of `fitted_q_evaluation` (frozen and hashable).

    Attributes:
      hidden_sizes: hidden widths of the Q network.
      activation: "relu" or "tanh".
      learning_rate: Adam step size.
      num_steps: gradient steps.
      batch_size: minibatch size; at most the number of valid transitions.
      target_update_period: steps between copies of Q into Q_target (1: no target network).
        Each copy is one fitted-Q iteration, whose error contracts by gamma: num_steps /
        target_update_period must be large against 1 / (1 - gamma).
      anneal_lr: decay the step size to 0 along a cosine.
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    learning_rate: float = 1e-3
    num_steps: int = 10_000
    batch_size: int = 256
    target_update_period: int = 20
    anneal_lr: bool = True

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "hidden_sizes", _check_network(name, self.hidden_sizes, self.activation))
        check_positive(f"{name}.learning_rate", self.learning_rate)
        check_int(f"{name}.num_steps", self.num_steps)
        check_int(f"{name}.batch_size", self.batch_size)
        check_int(f"{name}.target_update_period", self.target_update_period)
        _check_bool(name, "anneal_lr", self.anneal_lr)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def one_hot_observations(dataset: Dataset, num_states: int, dtype=jnp.float32) -> Dataset:
    """A tabular dataset (int32 states [N, T], initial states [M]) with one-hot float features instead.

    observations [N, T] -> [N, T, S], next_observations likewise, initial_observations [M] -> [M, S]. States
    outside [0, S) on valid steps or among the initial states raise `ValueError` (when concrete).
    """
    check_int("one_hot_observations: num_states", num_states)
    for name in ("observations", "next_observations", "initial_observations"):
        x = getattr(dataset, name)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"one_hot_observations: Dataset.{name} must hold int state indices; got {x.dtype}.")
        concrete = not isinstance(x, jax.core.Tracer) and not isinstance(dataset.mask, jax.core.Tracer)
        if concrete:  # jax.nn.one_hot maps a state outside [0, S) to all zeros, a state of no MDP
            states = np.asarray(x) if name == "initial_observations" else np.asarray(x)[np.asarray(dataset.mask, bool)]
            if states.size and (states.min() < 0 or states.max() >= num_states):
                raise ValueError(f"one_hot_observations: Dataset.{name} holds states outside [0, {num_states}) "
                                 f"(min {states.min()}, max {states.max()}); pass the MDP's num_states.")
    encode = functools.partial(jax.nn.one_hot, num_classes=num_states, dtype=dtype)
    return dataset._replace(
        observations=encode(dataset.observations),
        next_observations=encode(dataset.next_observations),
        initial_observations=encode(dataset.initial_observations),
    )


def tabular_probs_fn(pi: Array) -> ProbsFn:
    """pi [S, A] as a `target_probs_fn` on one-hot features: x [..., S] -> x @ pi [..., A]."""
    pi = jnp.asarray(pi)
    return lambda observations: observations @ pi.astype(observations.dtype)


def _prepare(name: str, dataset: Dataset, batch_size: int, target_probs_fn: ProbsFn
             ) -> tuple[Transitions, Array, Array, Array, int]:
    """(transitions, pi(.|s') [.., A] at their next observations, number of valid ones, initial observations,
    number of actions), after checking the inputs.

    The valid transitions come first, padded to the dataset's capacity N * T with copies of the first one, so
    every dataset of one [N, T] shape (e.g. each log of `collect_env`) reuses one compiled training loop;
    minibatches are drawn from the valid ones only. pi(.|s') is evaluated on the valid transitions before the
    padding: XLA's matmuls round differently for another number of rows, and the min-max amplifies that.
    """
    validate_dataset(dataset)
    obs = np.asarray(dataset.observations)
    if obs.ndim != 3 or not np.issubdtype(obs.dtype, np.floating):
        tabular = np.issubdtype(obs.dtype, np.integer)
        hint = " Tabular data: use one_hot_observations(dataset, num_states)." if tabular else ""
        raise ValueError(
            f"{name}: observations must be float features [N, T, obs_dim]; got {obs.dtype} {obs.shape}.{hint}"
        )
    actions = np.asarray(dataset.actions)
    if not np.issubdtype(actions.dtype, np.integer) or actions.ndim != 2:
        raise ValueError(f"{name}: actions must be int discrete actions [N, T]; got {actions.dtype} {actions.shape}.")
    data = valid_transitions(dataset)
    num = data.rewards.shape[0]
    if batch_size > num:
        raise ValueError(
            f"{name}: batch_size ({batch_size}) is larger than the number of valid transitions ({num}); "
            "lower batch_size or collect more data."
        )
    probs = jax.eval_shape(target_probs_fn, jax.ShapeDtypeStruct(obs.shape[2:], obs.dtype))
    if len(probs.shape) != 1:
        raise ValueError(f"{name}: target_probs_fn must map [obs_dim] to probabilities [A]; got shape {probs.shape}.")
    num_actions = probs.shape[-1]
    if int(np.max(np.asarray(data.actions))) >= num_actions or int(np.min(np.asarray(data.actions))) < 0:
        raise ValueError(f"{name}: dataset actions fall outside [0, {num_actions}), the target policy's action count.")
    next_probs = jax.jit(target_probs_fn)(data.next_observations)
    padding = actions.size - num
    data, next_probs = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], padding, axis=0)]),
                                              (data, next_probs))
    return data, next_probs, jnp.asarray(num, jnp.int32), jnp.asarray(dataset.initial_observations), num_actions


def _check_discount_kept_by_networks(label: str, discount: Any, data: Transitions) -> None:
    """`check_discount_kept` in the dtype the networks compute in: the features' and rewards' (flax's parameters are
    float32), where gamma multiplies nu(s') and Q(s'). Under x64, float32 features still round 1 - 1e-11 to 1."""
    check_discount_kept(label, discount, jnp.result_type(data.observations.dtype, data.rewards.dtype, jnp.float32))


def _sample(key: Array, tree: Any, batch_size: int, size: Array | int | None = None) -> Any:
    """A minibatch drawn uniformly with replacement from the first `size` (default all) entries along axis 0
    of every leaf."""
    size = jax.tree_util.tree_leaves(tree)[0].shape[0] if size is None else size
    idx = jax.random.randint(key, (batch_size,), 0, size)
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def _take(values: Array, actions: Array) -> Array:
    """values[..., a] for int actions [...]: [..., A] -> [...]."""
    return jnp.take_along_axis(values, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _adam(learning_rate: float, num_steps: int, anneal: bool, b1: float = 0.9) -> optax.GradientTransformation:
    # Adam's steps keep a size ~ learning rate near the optimum; decaying the rate to 0 lets the
    # noisy minibatch (min-max) iterates settle instead of hovering around the solution.
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps) if anneal else learning_rate
    return optax.adam(schedule, b1=b1)


def _check_finite(what: str, tree: Any, lr_fields: str) -> None:
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    if not all(np.all(np.isfinite(x)) for x in leaves):
        raise TrainingDivergedError(
            f"{what} became NaN or inf during training: the min-max/regression diverged. "
            f"Try a smaller learning rate ({lr_fields}) or fewer steps, and check rewards and features are finite."
        )


# ---------------------------------------------------------------------------
# DualDICE.
# ---------------------------------------------------------------------------


@struct.dataclass
class DualDICEParams:
    """Parameters of nu and zeta (flax param dicts), the architecture to apply them and the discount they were
    trained for (static; None when unknown).

    `zeta` is the ratio network (w_hat = zeta); the `nu` network outputs (1 - gamma) nu.
    """

    nu: Any
    zeta: Any
    hidden_sizes: tuple[int, ...] = struct.field(pytree_node=False, default=(64, 64))
    activation: str = struct.field(pytree_node=False, default="relu")
    num_actions: int = struct.field(pytree_node=False, default=0)
    discount: float | None = struct.field(pytree_node=False, default=None)


def check_trained_discount(params: DualDICEParams, discount: Any, owner: str) -> None:
    """ValueError when a concrete `discount` differs from the one `params` were trained for: the ratio estimates
    d^pi / d^D of that discount's occupancy, so another gamma gives a value of neither (0.456 for 1.11 at 0.5 / 0.8)."""
    if params.discount is None or isinstance(discount, jax.core.Tracer) or np.ndim(discount) != 0:
        return
    if not np.isclose(float(discount), params.discount, rtol=1e-6):
        raise ValueError(f"{owner}: discount {float(discount):g} differs from the {params.discount:g} the DualDICE "
                         "ratio was trained for (NeuralDualDICEConfig.discount); use that one, or train again.")


def _mlp(hidden_sizes, activation, num_actions: int) -> MLP:
    return MLP(tuple(hidden_sizes), activation, output_dim=num_actions, output_gain=1.0)


def _apply(hidden_sizes, activation, num_actions: int, params: Any, observations: Array) -> Array:
    return _mlp(hidden_sizes, activation, num_actions).apply(params, observations)


def _bellman_residual(nu_sa: Array, nu_next: Array, terminals: Array, discount) -> Array:
    """nu(s,a) - gamma (1 - terminal) E_{a'~pi} nu(s',a'): [B] each -> [B] (zeta's maximiser, pointwise)."""
    return nu_sa - discount * (1.0 - terminals.astype(nu_sa.dtype)) * nu_next


def _relative_gap(a: Array, b: Array) -> Array:
    """|a - b| / max(|a|, |b|) for scalars, 0 where both are 0 (they agree; a plain division would give NaN)."""
    scale = jnp.maximum(jnp.abs(a), jnp.abs(b))
    return jnp.where(scale > 0, jnp.abs(a - b) / jnp.where(scale > 0, scale, 1.0), 0.0)


def dualdice_loss(
    nu_sa: Array, nu_next: Array, zeta_sa: Array, terminals: Array, nu_initial: Array, discount
) -> Array:
    """The DualDICE min-max objective on a minibatch (f(x) = x^2/2):

        L = mean_i[(nu(s_i,a_i) - gamma (1 - term_i) E_{a'~pi} nu(s'_i,a')) zeta(s_i,a_i) - zeta(s_i,a_i)^2/2]
            - (1 - gamma) mean_j[E_{a~pi} nu(s0_j, a)]

    Args:
      nu_sa: nu(s_i, a_i) [B].
      nu_next: sum_a' pi(a'|s'_i) nu(s'_i, a') [B].
      zeta_sa: zeta(s_i, a_i) [B].
      terminals: [B] bool, s'_i absorbing.
      nu_initial: sum_a pi(a|s0_j) nu(s0_j, a) [B0].
      discount: gamma.

    Returns:
      A scalar; minimise over nu, maximise over zeta (the zeta maximiser is nu - gamma P^pi nu).
    """
    chex.assert_equal_shape([nu_sa, nu_next, zeta_sa, terminals])
    residual = _bellman_residual(nu_sa, nu_next, terminals, discount)
    return jnp.mean(residual * zeta_sa - 0.5 * jnp.square(zeta_sa)) - (1.0 - discount) * jnp.mean(nu_initial)


def neural_dualdice_ratio(params: DualDICEParams, observations: Array, actions: Array) -> Array:
    """w_hat(s,a) = zeta(s,a): observations [..., obs_dim], int actions [...] -> [...]."""
    return _take(_apply(params.hidden_sizes, params.activation, params.num_actions, params.zeta, observations), actions)


def neural_dualdice_value(params: DualDICEParams, dataset: Dataset, discount, normalised: bool = False) -> Array:
    """J_hat(pi) = mean_D[w_hat r] / (1 - gamma), or mean_D[w_hat r] / mean_D[w_hat] / (1 - gamma) (normalised).

    dataset: float observation features [N, T, obs_dim], int actions [N, T]. Means run over the dataset's
    valid steps (`mask`); jit-friendly. A scalar. Self-normalising
    assumes E_D[w] = 1, true without terminal states. When pi reaches terminal states, d^pi puts
    mass gamma f / (1 - gamma) on the absorbing state (f = the d^pi-probability of terminating),
    so E_D[w] = 1 - gamma f / (1 - gamma) < 1 and only the plain estimate is consistent (with
    rewards constant on non-terminal steps, as in CartPole, the normalised one is constant too).
    """
    check_concrete_discount(discount)
    check_trained_discount(params, discount, "neural_dualdice_value")
    w = neural_dualdice_ratio(params, dataset.observations, dataset.actions)
    mask = dataset.mask.astype(w.dtype)
    weighted = jnp.sum(mask * w * dataset.rewards) / jnp.sum(mask)
    if normalised:
        weighted = weighted / (jnp.sum(mask * w) / jnp.sum(mask))
    return weighted / (1.0 - discount)


@functools.partial(jax.jit, static_argnames=("target_probs_fn", "num_actions", "config"))
def _train_dualdice(key, data: Transitions, next_probs, num_valid, initial_observations, target_probs_fn, num_actions,
                    config):
    gamma = config.discount
    net = _mlp(config.hidden_sizes, config.activation, num_actions)
    key_nu, key_zeta, key_loop = jax.random.split(key, 3)
    params = DualDICEParams(
        nu=net.init(key_nu, data.observations[0]),
        zeta=net.init(key_zeta, data.observations[0]),
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        num_actions=num_actions,
        discount=float(config.discount),
    )
    tx_nu = _adam(config.nu_learning_rate, config.num_steps, config.anneal_lr, config.adam_b1)
    tx_zeta = _adam(config.zeta_learning_rate, config.num_steps, config.anneal_lr, config.adam_b1)
    # pi(.|s') (given) and pi(.|s0) never change: evaluate the target policy once, outside the loop.
    initial_probs = target_probs_fn(initial_observations)

    def nu_of(nu, observations):
        # The network outputs (1 - gamma) nu: nu itself grows like w / (1 - gamma), a distance
        # Adam's ~learning-rate-sized steps would take 1 / (1 - gamma) times longer to cover.
        return net.apply(nu, observations) / (1.0 - gamma)

    def nu_pair(nu, obs, actions, next_obs, probs_next):
        """(nu(s,a), E_{a'~pi} nu(s',a')) on transitions: [B] each."""
        return _take(nu_of(nu, obs), actions), jnp.sum(probs_next * nu_of(nu, next_obs), axis=-1)

    def loss_fn(nu, zeta, batch, initial):
        (obs, actions, _, next_obs, terminals, probs_next), (obs0, probs0) = batch, initial
        nu_sa, nu_next = nu_pair(nu, obs, actions, next_obs, probs_next)
        zeta_sa = _take(net.apply(zeta, obs), actions)
        nu_initial = jnp.sum(probs0 * nu_of(nu, obs0), axis=-1)
        return dualdice_loss(nu_sa, nu_next, zeta_sa, terminals, nu_initial, gamma)

    def step(carry, step_key):
        params, opt_nu, opt_zeta = carry
        key_batch, key_init = jax.random.split(step_key)
        batch = _sample(key_batch, (*data, next_probs), config.batch_size, num_valid)
        initial = _sample(key_init, (initial_observations, initial_probs), config.batch_size)
        loss, (g_nu, g_zeta) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params.nu, params.zeta, batch, initial)
        # Simultaneous steps: descent on nu, ascent on zeta (Adam on the negated gradient).
        up_nu, opt_nu = tx_nu.update(g_nu, opt_nu, params.nu)
        up_zeta, opt_zeta = tx_zeta.update(jax.tree_util.tree_map(jnp.negative, g_zeta), opt_zeta, params.zeta)
        params = params.replace(
            nu=optax.apply_updates(params.nu, up_nu), zeta=optax.apply_updates(params.zeta, up_zeta)
        )
        return (params, opt_nu, opt_zeta), loss

    carry = (params, tx_nu.init(params.nu), tx_zeta.init(params.zeta))
    (params, _, _), losses = lax.scan(step, carry, jax.random.split(key_loop, config.num_steps))
    w = neural_dualdice_ratio(params, data.observations, data.actions)
    valid = jnp.arange(w.shape[0]) < num_valid  # the padding copies are left out
    mean_over_data = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / num_valid  # noqa: E731
    mean_w = mean_over_data(w)
    mean_wr = mean_over_data(w * data.rewards)
    # Two conditions every saddle point meets, through the output biases of the two networks (summed over
    # actions): zeta's stationarity makes mean_D[zeta] = mean_D[nu - gamma (1 - term) P^pi nu], and nu's makes
    # mean_D[zeta (1 - gamma (1 - term))] = 1 - gamma (the flow of occupancy mass, which the true ratio obeys too).
    # They fail when training has not settled (nu drifting where zeta cannot follow, or both blown up).
    nu_sa, nu_next = nu_pair(params.nu, data.observations, data.actions, data.next_observations, next_probs)
    mean_residual = mean_over_data(_bellman_residual(nu_sa, nu_next, data.terminals, gamma))
    mass_flow = mean_over_data(w * (1.0 - gamma * (1.0 - data.terminals.astype(w.dtype)))) / (1.0 - gamma)
    dual_gap = _relative_gap(mean_w, mean_residual)
    info = {
        "loss": losses,
        "mean_ratio": mean_w,
        "mean_residual": mean_residual,
        "mass_flow": mass_flow,
        "saddle_gap": jnp.maximum(dual_gap, jnp.abs(mass_flow - 1.0)),
        "value": mean_wr / (1.0 - gamma),
        "value_normalised": mean_wr / mean_w / (1.0 - gamma),
    }
    return params, info


def neural_dualdice(
    key: Array, dataset: Dataset, target_probs_fn: ProbsFn, config: NeuralDualDICEConfig
) -> tuple[DualDICEParams, dict[str, Array]]:
    """Train DualDICE's nu and zeta networks on a dataset of discrete-action transitions (one compiled `lax.scan`).

    Args:
      key: PRNG key (initialisation and minibatches).
      dataset: a `Dataset` with float observation features [N, T, obs_dim] and int actions [N, T]
        (tabular data: `one_hot_observations` first).
      target_probs_fn: pi(.|s): observations [..., obs_dim] -> probabilities [..., A] (pure, jittable). A static
        argument of the compiled training loop: pass the same function object across seeds or datasets (not a
        new `tabular_probs_fn(pi)` per call) to compile the loop once.
      config: `NeuralDualDICEConfig`.

    Returns:
      (params, info): `DualDICEParams` for `neural_dualdice_ratio` / `neural_dualdice_value`, and a
      dict with "loss" [num_steps] (the minibatch objective per step), "mean_ratio" (mean_D w_hat,
      ~1 without terminal states), "value" and "value_normalised" (J_hat over the valid transitions),
      and two conditions every saddle point meets: "mean_residual" (mean_D[nu - gamma (1 - terminal)
      E_pi nu(s', .)], equal to mean_ratio) and "mass_flow" (mean_D[w_hat (1 - gamma (1 - terminal))] /
      (1 - gamma), equal to 1, as for the true ratio); "saddle_gap" is the larger of
      |mean_ratio - mean_residual| / max(|mean_ratio|, |mean_residual|) and |mass_flow - 1|. A convergence
      check, not an accuracy bound: large when training has not settled (nu drifting under minibatch noise,
      or both networks blown up); `neural_dualdice` warns above SADDLE_GAP_WARNING.

    Raises:
      ValueError: bad data or batch_size larger than the number of valid transitions.
      TrainingDivergedError: NaN or inf in the trained networks or the losses.
    """
    if not isinstance(config, NeuralDualDICEConfig):
        raise ValueError(f"neural_dualdice: config must be a NeuralDualDICEConfig; got {type(config).__name__}.")
    data, next_probs, num_valid, initial, num_actions = _prepare("neural_dualdice", dataset, config.batch_size,
                                                                  target_probs_fn)
    # The config is built before the data's dtype is known: a 1 - gamma of 0 would leave nu unbounded (a value of
    # 1.8e11 for a true one near 1 under a saddle warning), so the check is here.
    _check_discount_kept_by_networks("NeuralDualDICEConfig.discount", config.discount, data)
    params, info = _train_dualdice(key, data, next_probs, num_valid, initial, target_probs_fn, num_actions, config)
    lrs = "NeuralDualDICEConfig.nu_learning_rate / zeta_learning_rate"
    _check_finite("The DualDICE nu network", params.nu, lrs)
    _check_finite("The DualDICE zeta network (the ratio estimate)", params.zeta, lrs)
    _check_finite("The DualDICE loss", info, lrs)
    gap = float(info["saddle_gap"])
    if gap > SADDLE_GAP_WARNING:
        warnings.warn(
            f"neural_dualdice did not settle on a saddle point (saddle_gap {gap:.3f} > {SADDLE_GAP_WARNING}): "
            f"mean_D[zeta] = {float(info['mean_ratio']):.4g} against nu's mean Bellman residual "
            f"{float(info['mean_residual']):.4g} (equal at a saddle), mass_flow {float(info['mass_flow']):.4g} "
            "(1 at a saddle); the ratio and value estimates are unreliable. Either training stopped before it "
            "settled (raise NeuralDualDICEConfig.num_steps) or nu drifted under minibatch noise while the step size "
            "was large (lower nu_learning_rate, keep anneal_lr, raise batch_size, or train fewer steps).",
            RuntimeWarning,
            stacklevel=2,
        )
    return params, info


# ---------------------------------------------------------------------------
# Fitted Q evaluation.
# ---------------------------------------------------------------------------


@struct.dataclass
class FQEParams:
    """Q-network parameters, the discount they were fitted for, and the architecture (static).

    The network outputs (1 - gamma) Q, on the scale of the rewards, which keeps the regression
    well conditioned for gamma near 1; `fqe_q_values` undoes the scaling.
    """

    q: Any
    discount: Array
    hidden_sizes: tuple[int, ...] = struct.field(pytree_node=False, default=(64, 64))
    activation: str = struct.field(pytree_node=False, default="relu")
    num_actions: int = struct.field(pytree_node=False, default=0)


def fqe_q_values(params: FQEParams, observations: Array) -> Array:
    """Q_hat(s, .) = net(s) / (1 - gamma), the network fitting (1 - gamma) Q: obs [..., obs_dim] -> [..., A]."""
    scaled = _apply(params.hidden_sizes, params.activation, params.num_actions, params.q, observations)
    return scaled / (1.0 - params.discount)


def fqe_value(params: FQEParams, initial_observations: Array, target_probs_fn: ProbsFn) -> Array:
    """J_hat(pi) = mean_j sum_a pi(a|s0_j) Q_hat(s0_j, a) over initial observations [M, obs_dim]; a scalar."""
    q = fqe_q_values(params, initial_observations)
    return jnp.mean(jnp.sum(target_probs_fn(initial_observations) * q, axis=-1))


def fqe_loss(q_sa: Array, rewards: Array, terminals: Array, next_values: Array, discount) -> Array:
    """The FQE regression loss mean_i (Q(s_i,a_i) - y_i)^2 with the fixed target

        y_i = r_i + gamma (1 - term_i) sum_a' pi(a'|s'_i) Q_target(s'_i, a')   (stop_gradient)

    Args:
      q_sa: Q(s_i, a_i) [B].
      rewards: r_i [B].
      terminals: [B] bool.
      next_values: sum_a' pi(a'|s'_i) Q_target(s'_i, a') [B].
      discount: gamma.

    Returns:
      A scalar; only q_sa carries gradient.
    """
    chex.assert_equal_shape([q_sa, rewards, terminals, next_values])
    target = rewards + discount * (1.0 - terminals.astype(q_sa.dtype)) * next_values
    return jnp.mean(jnp.square(q_sa - lax.stop_gradient(target)))


@functools.partial(jax.jit, static_argnames=("target_probs_fn", "num_actions", "config"))
def _train_fqe(key, data: Transitions, next_probs, num_valid, initial_observations, discount, target_probs_fn,
               num_actions, config):
    net = _mlp(config.hidden_sizes, config.activation, num_actions)
    tx = _adam(config.learning_rate, config.num_steps, config.anneal_lr)
    key_init, key_loop = jax.random.split(key)
    q_params = net.init(key_init, data.observations[0])
    scale = 1.0 - discount

    def loss_fn(q, q_target, batch):
        obs, actions, rewards, next_obs, terminals, probs_next = batch
        # Scaled Bellman equation for (1 - gamma) Q: rewards enter as (1 - gamma) r.
        next_values = jnp.sum(probs_next * net.apply(q_target, next_obs), axis=-1)
        return fqe_loss(_take(net.apply(q, obs), actions), scale * rewards, terminals, next_values, discount)

    def step(carry, inputs):
        q, q_target, opt = carry
        step_idx, step_key = inputs
        batch = _sample(step_key, (*data, next_probs), config.batch_size, num_valid)
        loss, grads = jax.value_and_grad(loss_fn)(q, q_target, batch)
        updates, opt = tx.update(grads, opt, q)
        q = optax.apply_updates(q, updates)
        refresh = (step_idx + 1) % config.target_update_period == 0
        q_target = jax.tree_util.tree_map(lambda new, old: jnp.where(refresh, new, old), q, q_target)
        # Report the loss on the unscaled Q.
        return (q, q_target, opt), loss / scale**2

    inputs = (jnp.arange(config.num_steps), jax.random.split(key_loop, config.num_steps))
    (q_params, _, _), losses = lax.scan(step, (q_params, q_params, tx.init(q_params)), inputs)
    params = FQEParams(q_params, jnp.asarray(discount, jnp.result_type(float)), config.hidden_sizes, config.activation,
                       num_actions)
    return params, {"loss": losses, "value": fqe_value(params, initial_observations, target_probs_fn)}


def fitted_q_evaluation(
    key: Array, dataset: Dataset, target_probs_fn: ProbsFn, discount: float, config: FQEConfig
) -> tuple[FQEParams, Callable[[Array], Array], dict[str, Array]]:
    """Neural fitted Q evaluation of pi on a discrete-action dataset (one compiled `lax.scan`).

    Args:
      key: PRNG key.
      dataset: as for `neural_dualdice`.
      target_probs_fn: pi(.|s): observations [..., obs_dim] -> probabilities [..., A]; as in `neural_dualdice`, pass
        the same function object across calls to compile the loop once.
      discount: gamma in (0, 1).
      config: `FQEConfig`.

    Returns:
      (params, q_fn, info): `FQEParams`; q_fn(observations [..., obs_dim]) -> Q_hat [..., A]
      (= `fqe_q_values(params, .)`); info with "loss" [num_steps] (Bellman regression error
      on the unscaled Q) and "value" (J_hat over the dataset's initial observations).

    Raises:
      ValueError: bad data, discount outside (0, 1), batch_size too large.
      TrainingDivergedError: NaN or inf in the Q network or the losses.
    """
    if not isinstance(config, FQEConfig):
        raise ValueError(f"fitted_q_evaluation: config must be an FQEConfig; got {type(config).__name__}.")
    check_discount(discount)  # a number or a 0-d array, as the tabular estimators take
    data, next_probs, num_valid, initial, num_actions = _prepare("fitted_q_evaluation", dataset, config.batch_size,
                                                                  target_probs_fn)
    _check_discount_kept_by_networks("fitted_q_evaluation: discount", discount, data)  # float32 features, x64
    params, info = _train_fqe(key, data, next_probs, num_valid, initial, float(discount), target_probs_fn,
                              num_actions, config)
    _check_finite("The FQE Q network", params.q, "FQEConfig.learning_rate")
    _check_finite("The FQE loss", info, "FQEConfig.learning_rate")
    return params, functools.partial(fqe_q_values, params), info


# ---------------------------------------------------------------------------
# Offline policy gradient.
# ---------------------------------------------------------------------------


def offline_policy_gradient_loss(
    log_probs: Array, actions: Array, ratios: Array, q_values: Array, discount, mask: Array | None = None
) -> Array:
    """The offline (density-ratio weighted) policy-gradient loss, to be minimised:

        L(theta) = -1/(1 - gamma) mean_i[ sg(w_i) log pi_theta(a_i|s_i) sg(Q_i) ],
        -grad L  =  1/(1 - gamma) E_D[ w(s,a) grad log pi_theta(a|s) Q^pi(s,a) ],

    the policy gradient of J(pi_theta) from data of mu when w = d^pi / d^D and Q = Q^pi.
    The ratios and Q values are constants (stop_gradient): only the log-probabilities carry
    gradient, so `log_probs` may come from any (flax) policy network.

    Args:
      log_probs: log pi_theta(.|s_i) for every action [..., A].
      actions: a_i, int [...].
      ratios: w_hat(s_i, a_i) [...] (e.g. `neural_dualdice_ratio`).
      q_values: Q_hat(s_i, a_i) [...] (e.g. FQE's Q at the logged action).
      discount: gamma.
      mask: optional [...] bool, the valid steps (the mean runs over them).

    Returns:
      A scalar.
    """
    chex.assert_equal_shape([actions, ratios, q_values])
    chex.assert_equal_shape_prefix([log_probs, actions], actions.ndim)
    check_concrete_discount(discount)
    weights = lax.stop_gradient(ratios * q_values)
    terms = _take(log_probs, actions) * weights
    if mask is None:
        mean = jnp.mean(terms)
    else:
        m = mask.astype(terms.dtype)
        mean = jnp.sum(m * terms) / jnp.maximum(jnp.sum(m), 1.0)
    return -mean / (1.0 - discount)


def discounted_reward_to_go(rewards: Array, mask: Array, discount) -> Array:
    """G_t = sum_{k>=t} gamma^(k-t) r_k over each episode's valid steps, 0 on padding: [..., T] -> [..., T].

    Episodes are rows whose `mask` is True up to their last step and False after it (as from
    `collect` / `collect_env`); rewards on padding steps are ignored.
    """
    r = jnp.where(mask, rewards, 0.0)
    gamma = jnp.asarray(discount, r.dtype)

    def step(g, r_t):
        g = r_t + gamma * g
        return g, g

    _, returns = lax.scan(step, jnp.zeros(r.shape[:-1], r.dtype), jnp.moveaxis(r, -1, 0), reverse=True)
    return jnp.where(mask, jnp.moveaxis(returns, 0, -1), 0.0)


def on_policy_gradient_loss(
    log_probs: Array, actions: Array, rewards: Array, mask: Array, discount, baseline: Array | None = None
) -> Array:
    """The on-policy (REINFORCE, theorem-form) policy-gradient loss from episodes of pi_theta, to be minimised:

        L(theta) = -mean_i sum_t gamma^t log pi_theta(a^i_t|s^i_t) sg(G^i_t - b^i_t),
        -grad L  =  mean_i sum_t gamma^t grad log pi_theta(a^i_t|s^i_t) (G^i_t - b^i_t),

    with G_t the discounted reward-to-go (`discounted_reward_to_go`). Its expectation is
    1/(1 - gamma) E_{(s,a)~d^pi}[grad log pi(a|s) Q^pi(s,a)] = grad J(pi_theta) for episodes
    run to termination (cut at T steps: grad of the T-step return J_T). A baseline b_t that
    depends on s_t only (e.g. a critic's V(s_t)) leaves the expectation unchanged and can cut
    the variance; the weights G - b are constants (stop_gradient).

    Args:
      log_probs: log pi_theta(.|s_t) for every action [..., T, A] (the mean runs over the leading axes: episodes).
      actions: a_t, int [..., T].
      rewards: r_t [..., T].
      mask: [..., T] bool, the valid steps of each episode.
      discount: gamma.
      baseline: optional b(s_t) [..., T].

    Returns:
      A scalar.
    """
    chex.assert_equal_shape([actions, rewards, mask])
    chex.assert_equal_shape_prefix([log_probs, actions], actions.ndim)
    weights = discounted_reward_to_go(rewards, mask, discount)
    if baseline is not None:
        chex.assert_equal_shape([baseline, rewards])
        weights = weights - baseline
    powers = jnp.asarray(discount, weights.dtype) ** jnp.arange(weights.shape[-1], dtype=weights.dtype)
    weights = lax.stop_gradient(jnp.where(mask, powers * weights, 0.0))
    per_episode = jnp.sum(_take(log_probs, actions) * weights, axis=-1)
    return -jnp.mean(per_episode)
