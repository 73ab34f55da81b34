"""Flax actor and critic networks for discrete (categorical) and continuous (diagonal Gaussian) actions.

Every module maps observations [..., obs_dim] (a single [obs_dim] included) to outputs with the same
leading axes: a distribution over actions (`pgjax.distributions`) and/or a value [...].

Mixed precision: `dtype` (None or e.g. `jnp.bfloat16`) is the dtype the hidden layers compute and
store their activations in; parameters stay float32 (the optimiser updates float32 weights), and the
output layers (policy head, value head) compute in float32 from the cast-up features, so logits,
log-probabilities and values keep float32 precision. None (default) computes everything in the
parameters' dtype, as `nn.Dense` does.

Initialisation follows the PPO implementation details (Huang et al., 2022): orthogonal weights with
gain sqrt(2) in hidden layers, 0.01 for the policy head (an almost uniform / zero-mean initial
policy), 1.0 for the value head; zero biases; a state-independent log-std initialised to 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pgjax.distributions import Categorical, DiagGaussian, diag_gaussian
from pgjax.validation import check_int

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": nn.relu}

HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The activation called `name` ("tanh" or "relu"); a ValueError names the field otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {name!r}.")
    return ACTIVATIONS[name]


# Output widths `Dense` computes one matrix-vector product per column, on these backends (see `dense_as_columns`).
COLUMN_FEATURES = (2, 3)
COLUMN_BACKENDS = ("cpu",)


def check_width(owner: str, name: str, value: Any) -> None:
    """ValueError naming `owner.name` unless `value` is a positive int (a layer's width, a number of actions): a
    zero-width layer would train nothing and output its bias alone, a zero-action head a NaN distribution."""
    check_int(f"{owner}.{name}", value)


def dense_as_columns(features: int, backend: str | None = None) -> bool:
    """Whether `Dense` computes a layer of `features` outputs column by column: widths 2-3 on a CPU backend.

    XLA:CPU runs a matmul whose output (or, in the backward pass, whose contraction) is 2-3 wide
    through its general kernel, slowly: a 2-action policy head's forward and backward on a [128, 64]
    minibatch take 16.7 us as one dot and 2.7 us as two matrix-vector products, and 408 us against
    99 us vmapped over 32 seeds (as fast again as the 64x64 layer). Width 1 is already a matrix-vector
    product; from 4 up the dot wins. On other backends the dot stays (one pass over the input);
    `COLUMN_BACKENDS` lists where columns are used (a benchmark may set it to time either).
    """
    backend = jax.default_backend() if backend is None else backend
    return backend in COLUMN_BACKENDS and features in COLUMN_FEATURES


class Dense(nn.Module):
    """y = x W + b: x [..., in] -> y [..., features], with `nn.Dense`'s parameters (kernel [in, features],
    bias [features]).

    The same layer as `nn.Dense` (same parameter names and shapes, so checkpoints and parameter
    paths such as `["head"]["Dense_0"]` are unchanged); only how the product is computed differs
    where `dense_as_columns` says so: y_j = x W[:, j] + b_j for each output j, stacked, equal to the
    dot to float rounding, and so are its gradients. `dtype` (as `nn.Dense`'s): x, W and b are cast to
    it and y is computed and returned in it; None promotes them to the widest of their dtypes.
    `param_dtype` (as `nn.Dense`'s, float32): W and b are stored in it, under `jax_enable_x64` too (initialisers
    left to the default float would draw other float64 weights there).
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)  # as nn.Dense
        if dense_as_columns(self.features):
            y = jnp.stack([x @ kernel[:, j] for j in range(self.features)], axis=-1)
        else:
            y = x @ kernel
        return y + bias


def _dense(features: int, gain: float, name: str | None = None, dtype: Any = None) -> Dense:
    return Dense(features, nn.initializers.orthogonal(gain), nn.initializers.zeros, dtype, name=name)


class MLP(nn.Module):
    """x -> act(W_1 x + b_1) -> ... -> act(W_L h + b_L) [-> W_out h + b_out]: x [..., in] -> [..., output_dim],
    or [..., hidden_sizes[-1]] without an output layer (x itself with neither).

    Attributes:
      hidden_sizes: widths of the hidden layers (may be empty).
      activation: "tanh" or "relu".
      output_dim: if given, a final linear layer of this width (orthogonal init with `output_gain`).
      output_gain: gain of the output layer.
      dtype: the hidden layers' computation dtype (None: the parameters'); the output layer computes in
        the parameters' dtype (float32) whatever `dtype` is.
    """

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    output_dim: int | None = None
    output_gain: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = activation_fn(self.activation)
        for i, width in enumerate(self.hidden_sizes):
            check_width("MLP", f"hidden_sizes[{i}]", width)
            x = act(_dense(width, HIDDEN_GAIN, dtype=self.dtype)(x))
        if self.output_dim is not None:
            check_width("MLP", "output_dim", self.output_dim)
            x = _dense(self.output_dim, self.output_gain)(x)
        return x


class PolicyHead(nn.Module):
    """Features [..., F] -> a `Categorical` over `action_dim` actions or a `DiagGaussian` in `action_dim` dims.

    The Gaussian's log-std is a learned parameter `log_std` [action_dim], independent of the state.
    """

    action_dim: int
    discrete: bool
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, features: Array) -> Categorical | DiagGaussian:
        check_width("PolicyHead", "action_dim", self.action_dim)
        if not math.isfinite(self.log_std_init):  # a NaN or inf std would make every log-probability NaN
            raise ValueError(f"PolicyHead.log_std_init must be a finite number; got {self.log_std_init!r}.")
        out = _dense(self.action_dim, POLICY_GAIN)(features)
        if self.discrete:
            return Categorical(out)
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,), jnp.float32)
        return diag_gaussian(out, log_std)


class Actor(nn.Module):
    """pi_theta(.|s): an MLP torso and a policy head. obs [..., obs_dim] -> distribution with batch shape [...]."""

    action_dim: int
    discrete: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    log_std_init: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, obs: Array) -> Categorical | DiagGaussian:
        features = MLP(self.hidden_sizes, self.activation, dtype=self.dtype, name="torso")(obs)
        return PolicyHead(self.action_dim, self.discrete, self.log_std_init, name="head")(features)


class Critic(nn.Module):
    """V_phi(s): obs [..., obs_dim] -> value [...]."""

    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    dtype: Any = None

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        mlp = MLP(self.hidden_sizes, self.activation, output_dim=1, output_gain=VALUE_GAIN, dtype=self.dtype,
                  name="mlp")
        return mlp(obs)[..., 0]


class ActorCritic(nn.Module):
    """obs [..., obs_dim] -> (pi(.|s) with batch shape [...], V(s) [...]).

    With `shared=False` (default) the actor and critic are separate towers, parameters
    {"actor": ..., "critic": ...}, so `params["actor"]` also works with `Actor` of the same
    settings. With `shared=True` one torso feeds both heads (parameters {"torso", "policy_head",
    "value_head"}). `dtype`: the hidden layers' computation dtype (module docstring: mixed precision).

    `apply(params, obs, method="policy")` and `method="value"` compute one output alone: a rollout
    needs only the policy at each step, and the values of all its observations in one batched pass.
    """

    action_dim: int
    discrete: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    shared: bool = False
    log_std_init: float = 0.0
    dtype: Any = None

    def setup(self):
        # Attribute names are the parameter names (flax), the same as the towers' compact names.
        if not self.shared:
            self.actor = Actor(
                self.action_dim, self.discrete, self.hidden_sizes, self.activation, self.log_std_init, self.dtype
            )
            self.critic = Critic(self.hidden_sizes, self.activation, self.dtype)
        else:
            self.torso = MLP(self.hidden_sizes, self.activation, dtype=self.dtype)
            self.policy_head = PolicyHead(self.action_dim, self.discrete, self.log_std_init)
            self.value_head = _dense(1, VALUE_GAIN)

    def policy(self, obs: Array) -> Categorical | DiagGaussian:
        """pi(.|s) alone, batch shape [...]."""
        return self.actor(obs) if not self.shared else self.policy_head(self.torso(obs))

    def value(self, obs: Array) -> Array:
        """V(s) alone, [...]."""
        return self.critic(obs) if not self.shared else self.value_head(self.torso(obs))[..., 0]

    def __call__(self, obs: Array) -> tuple[Categorical | DiagGaussian, Array]:
        if not self.shared:
            return self.actor(obs), self.critic(obs)
        features = self.torso(obs)
        return self.policy_head(features), self.value_head(features)[..., 0]
