"""Environments: gymnax ids and tabular MDPs behind `make`, and pure-function wrappers.

    env, params = make("CartPole-v1")             # any gymnax id
    env, params = make("tabular:chain", slip=0.2)  # a pgjax.tabular MDP as an environment
    env = VecEnv(EpisodeStatistics(FlattenObservation(env)), num_envs=4)
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Your own gymnax-style environment joins them under an id: `register("Corridor-v0", Corridor)`.

`terminated` means a true terminal state (do not bootstrap); `truncated` means a time
limit (bootstrap from V(info["final_observation"]), the observation before auto-reset).
"""

from pgjax.envs.randomization import ObserveParams, RandomizedParams, RandomizedParamsState
from pgjax.envs.registry import (
    TABULAR_PREFIX,
    check_interface,
    check_param_value,
    env_ids,
    import_env_module,
    make,
    numeric_fields,
    override_params,
    register,
    registered_source,
    registrations,
)
from pgjax.envs.spaces import action_bounds, action_dim, is_discrete, observation_size
from pgjax.envs.tabular_env import (
    TabularEnv,
    TabularEnvParams,
    TabularEnvState,
    default_horizon,
    truncation_bias_bound,
)
from pgjax.envs.wrappers import (
    ENV_AXIS,
    ClipAction,
    EpisodeStatistics,
    EpisodeStatisticsState,
    FlattenObservation,
    NormalizeObservation,
    NormalizeObservationState,
    NormalizeReward,
    NormalizeRewardState,
    PredrawnResets,
    ResetDraw,
    RunningStatistics,
    VecEnv,
    Wrapper,
    batch_reset,
    batch_statistics,
    batch_step,
    finished_episode_mean,
    init_statistics,
    merge_statistics,
    normalize,
    observe,
    with_reward_discount,
    running_statistics,
    with_running_statistics,
)

__all__ = [
    "ENV_AXIS",
    "TABULAR_PREFIX",
    "ClipAction",
    "EpisodeStatistics",
    "EpisodeStatisticsState",
    "FlattenObservation",
    "NormalizeObservation",
    "NormalizeObservationState",
    "NormalizeReward",
    "NormalizeRewardState",
    "ObserveParams",
    "PredrawnResets",
    "RandomizedParams",
    "RandomizedParamsState",
    "ResetDraw",
    "RunningStatistics",
    "TabularEnv",
    "TabularEnvParams",
    "TabularEnvState",
    "VecEnv",
    "Wrapper",
    "action_bounds",
    "action_dim",
    "batch_reset",
    "batch_statistics",
    "batch_step",
    "check_interface",
    "check_param_value",
    "default_horizon",
    "env_ids",
    "import_env_module",
    "finished_episode_mean",
    "init_statistics",
    "is_discrete",
    "make",
    "merge_statistics",
    "normalize",
    "numeric_fields",
    "observe",
    "observation_size",
    "override_params",
    "register",
    "registered_source",
    "registrations",
    "truncation_bias_bound",
    "with_reward_discount",
    "running_statistics",
    "with_running_statistics",
]
