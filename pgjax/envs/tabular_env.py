"""A tabular `MDP` as a gymnax environment.

`TabularEnv` has gymnax's interface exactly: `reset(key, params) -> (obs, state)` and
`step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)`
with auto-reset, `info["final_observation"]` the observation before the reset, and
`info["discount"]` (1 - terminated, as in gymnax's classic-control environments).

- Observation: the one-hot encoding of the current state s_t, float32 [S].
- Action: an integer a_t in {0, ..., A-1}.
- Reward: r_t = R(s_t, a_t); the next state is s_{t+1} ~ P(.|s_t, a_t); s_0 ~ mu0.
- The MDP is continuing, so `terminated` is always False; an episode ends only at the time
  limit `max_steps_in_episode` = H, with `truncated` True.

The MDP lives in `TabularEnvParams`, not in the environment, so a batch of MDPs (with the
same S and A) runs under `jax.vmap` over params like any other gymnax parameter batch.

Discount consistency. An episode is the first H steps of the continuing MDP, so

    E[sum_{t<H} gamma^t r_t] = J(pi) - gamma^H E[V^pi(s_H)],

and the truncated discounted return approximates J(pi) = mu0 . V^pi only when
H >> 1/(1 - gamma): the bias is at most gamma^H max|R| / (1 - gamma)
(`truncation_bias_bound`). The default horizon H = ceil(10 / (1 - gamma)) makes
gamma^H <= e^{-10}. Algorithms that bootstrap V(final_observation) at truncation target
J for any H; undiscounted episode returns (`EpisodeStatistics`) are those of the H-step
episode.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from pgjax.trajectory import safe_log
from pgjax.tabular.mdp import MDP

Array = jax.Array


@struct.dataclass
class TabularEnvState(environment.EnvState):
    """State of `TabularEnv`.

    Attributes:
      time: t, steps taken in the current episode (int32 scalar).
      mdp_state: s_t, the current MDP state (int32 scalar).
    """

    mdp_state: Array


@struct.dataclass
class TabularEnvParams:
    """Parameters of `TabularEnv`: the MDP itself and the time limit H.

    Attributes:
      mdp: an unbatched `MDP` (batch it by vmapping over params).
      max_steps_in_episode: H, the time limit (truncation).
    """

    mdp: MDP
    max_steps_in_episode: int = 100


def default_horizon(discount: float) -> int:
    """H = ceil(10 / (1 - gamma)), so that gamma^H <= e^{-10}.

    A float32 gamma counts as the decimal it was written as (float32 0.99 is 0.9900000095, which gave 1001).
    """
    discount = np.asarray(discount)
    gamma = float(str(discount[()])) if discount.dtype == np.float32 else float(discount)
    # Rounding first keeps 10 / (1 - 0.9) = 100.00000000000001 at 100.
    return int(math.ceil(round(10.0 / (1.0 - gamma), 6)))


def truncation_bias_bound(mdp: MDP, horizon: int) -> Array:
    """gamma^H max|R| / (1 - gamma): a bound on |J - E[sum_{t<H} gamma^t r_t]| (batched MDPs allowed)."""
    max_reward = jnp.max(jnp.abs(mdp.reward), axis=(-2, -1))
    return mdp.discount**horizon * max_reward / (1.0 - mdp.discount)


class TabularEnv(environment.Environment[TabularEnvState, TabularEnvParams]):
    """A finite MDP as a gymnax environment with one-hot observations (see the module docstring).

    Args:
      mdp: an unbatched `MDP`; it fixes S and A and is the MDP of `default_params`.
        Params passed to `reset`/`step` may carry any other MDP with the same S and A.
      max_steps_in_episode: H >= 1; default `default_horizon(mdp.discount)`.
      name: a label, reported as `env.name == "tabular:<name>"`.
    """

    def __init__(self, mdp: MDP, max_steps_in_episode: int | None = None, name: str = "mdp"):
        super().__init__()
        if not isinstance(mdp, MDP):
            raise ValueError(f"TabularEnv: mdp must be a pgjax.tabular.MDP; got {type(mdp).__name__}.")
        if mdp.batch_shape:
            raise ValueError(
                f"TabularEnv: the default mdp must be a single MDP; got batch shape {mdp.batch_shape}. "
                "Pass a batch of MDPs through params and jax.vmap instead."
            )
        if max_steps_in_episode is None:
            max_steps_in_episode = default_horizon(np.asarray(mdp.discount))
        if not isinstance(max_steps_in_episode, (int, np.integer)) or max_steps_in_episode < 1:
            raise ValueError(f"TabularEnv: max_steps_in_episode must be an int >= 1; got {max_steps_in_episode!r}.")
        self._mdp = mdp
        self._max_steps = int(max_steps_in_episode)
        self._num_states = mdp.num_states
        self._num_actions = mdp.num_actions
        self._label = name
        self.obs_shape = (self._num_states,)

    def _check_mdp(self, params: TabularEnvParams) -> MDP:
        """params.mdp, refused unless it has this environment's S and A (the one-hot observation has S entries: a
        larger MDP's extra states read as all-zero observations). Shapes are static: no cost under jit."""
        shape = params.mdp.transition.shape[-3:]
        if shape != (self._num_states, self._num_actions, self._num_states):
            raise ValueError(f"{self.name}: the params' MDP has transition shape {shape}, this environment "
                             f"{(self._num_states, self._num_actions, self._num_states)}; make the environment from "
                             "an MDP of the same size (S and A).")
        return params.mdp

    @property
    def default_params(self) -> TabularEnvParams:
        """The constructor's MDP and time limit H."""
        return TabularEnvParams(mdp=self._mdp, max_steps_in_episode=self._max_steps)

    def step_env(
        self, key: Array, state: TabularEnvState, action: Any, params: TabularEnvParams
    ) -> tuple[Array, TabularEnvState, Array, Array, dict[str, Any]]:
        """One transition: r = R(s, a), s' ~ P(.|s, a); never terminates.

        Returns (one-hot s' float32 [S], state, r (a scalar), terminated = False, {"discount": 1.0}).
        """
        mdp = self._check_mdp(params)
        s = state.mdp_state
        a = jnp.asarray(action, jnp.int32).reshape(())
        reward = mdp.reward[s, a]
        next_s = jax.random.categorical(key, safe_log(mdp.transition[s, a])).astype(jnp.int32)
        next_state = TabularEnvState(time=state.time + 1, mdp_state=next_s)
        terminated = jnp.array(False)
        return self.get_obs(next_state), next_state, reward, terminated, {"discount": jnp.array(1.0, jnp.float32)}

    def reset_env(self, key: Array, params: TabularEnvParams) -> tuple[Array, TabularEnvState]:
        """s_0 ~ mu0: (one-hot s_0 float32 [S], state at time 0)."""
        s0 = jax.random.categorical(key, safe_log(self._check_mdp(params).initial)).astype(jnp.int32)
        state = TabularEnvState(time=jnp.array(0, jnp.int32), mdp_state=s0)
        return self.get_obs(state), state

    def get_obs(self, state: TabularEnvState, params=None, key=None) -> Array:
        """One-hot s_t, float32 [S]."""
        return jax.nn.one_hot(state.mdp_state, self._num_states, dtype=jnp.float32)

    def is_terminated(self, state: TabularEnvState, params: TabularEnvParams) -> Array:
        """Always False: the MDP is continuing (episodes end only at the time limit)."""
        return jnp.array(False)

    @property
    def name(self) -> str:
        """"tabular:<name>"."""
        return f"tabular:{self._label}"

    @property
    def num_actions(self) -> int:
        """A."""
        return self._num_actions

    @property
    def num_states(self) -> int:
        """S."""
        return self._num_states

    def action_space(self, params: TabularEnvParams | None = None) -> spaces.Discrete:
        """Discrete(A)."""
        return spaces.Discrete(self._num_actions)

    def observation_space(self, params: TabularEnvParams | None = None) -> spaces.Box:
        """Box [0, 1] of shape [S] (one-hot states), float32."""
        return spaces.Box(0.0, 1.0, (self._num_states,), jnp.float32)

    def state_space(self, params: TabularEnvParams | None = None) -> spaces.Dict:
        """{"mdp_state": Discrete(S), "time": Discrete(H)}."""
        params = self.default_params if params is None else params
        return spaces.Dict(
            {
                "mdp_state": spaces.Discrete(self._num_states),
                "time": spaces.Discrete(params.max_steps_in_episode),
            }
        )
