"""Your own environment in pgjax: a gymnax 1.x environment registered under an id.

    python experiments/train.py --env-module experiments/custom_env.py --env Corridor-v0 --env-kwarg length=8
    python experiments/evaluate.py runs/ppo-Corridor-v0-... --env-module experiments/custom_env.py

Importing this module registers "Corridor-v0" (`pgjax.envs.register`); from then on the id works wherever an id
does: `PPOConfig(env_id="Corridor-v0", env_kwargs={"length": 8})`, grids over its params fields
(`env.step_cost`), in-run evaluation, `runs.load_run` / `runs.evaluate`. Constructor keywords (`length`) go to
the class, keywords naming a params field (`step_cost`, `max_steps_in_episode`) override that field.

The environment: a corridor of `length` cells, the agent starts in cell 0 and moves left or right (actions 0, 1);
reaching the last cell pays 1 and ends the episode (terminated), every other step costs `step_cost`; episodes are
cut at `max_steps_in_episode` steps (truncated). The observation is the one-hot cell. The best return walks right
length - 1 times: 1 - (length - 2) step_cost, e.g. 0.4 for length 8 at the default 0.1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from pgjax import envs


@struct.dataclass
class CorridorState(environment.EnvState):
    position: jax.Array
    time: int


@struct.dataclass
class CorridorParams(environment.EnvParams):
    step_cost: float = 0.1
    max_steps_in_episode: int = 50


class Corridor(environment.Environment):
    """Walk from cell 0 to cell `length - 1`: gymnax's `Environment` supplies the auto-resetting `step`."""

    def __init__(self, length: int = 5):
        super().__init__()
        if not isinstance(length, int) or length < 2:
            raise ValueError(f"Corridor: length must be an int >= 2; got {length!r}.")
        self.length = length

    @property
    def default_params(self) -> CorridorParams:
        return CorridorParams()

    def step_env(self, key: jax.Array, state: CorridorState, action: Any, params: CorridorParams):
        position = jnp.clip(state.position + 2 * action - 1, 0, self.length - 1)
        at_goal = position == self.length - 1
        reward = jnp.where(at_goal, 1.0, -params.step_cost)
        state = CorridorState(position=position, time=state.time + 1)
        return self.get_obs(state), state, reward, at_goal, {}  # gymnax adds truncation at the step limit

    def reset_env(self, key: jax.Array, params: CorridorParams):
        state = CorridorState(position=jnp.int32(0), time=0)
        return self.get_obs(state), state

    def get_obs(self, state: CorridorState, params: Any = None, key: Any = None) -> jax.Array:
        return jax.nn.one_hot(state.position, self.length)

    @property
    def name(self) -> str:
        return "Corridor-v0"

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(2)

    def observation_space(self, params: Any) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.length,), jnp.float32)


envs.register("Corridor-v0", Corridor, overwrite=True)  # overwrite: importing this file twice is harmless
