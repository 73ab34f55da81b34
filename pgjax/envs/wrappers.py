"""Environment wrappers: pure functions over explicit state, with gymnax's interface.

Every wrapper keeps

    reset(key, params=None) -> (obs, state)
    step(key, state, action, params=None) -> (obs, state, reward, terminated, truncated, info)

where `state` is the inner environment's state wrapped in a `flax.struct` dataclass (or
passed through unchanged by stateless wrappers), and `info["final_observation"]` (the
observation before gymnax's auto-reset) is transformed exactly like `obs`. Nothing is
jitted here: wrap the whole rollout in `jax.jit` once.

A typical stack, inner to outer:

    env, params = pgjax.envs.make("Pendulum-v1")
    env = FlattenObservation(env)
    env = EpisodeStatistics(env)                       # raw returns, before any scaling
    env = NormalizeObservation(env, axis_name=ENV_AXIS)  # statistics shared by the batch
    env = NormalizeReward(env, discount=0.99, axis_name=ENV_AXIS)  # optional: r / std of the return
    env = ClipAction(env)
    env = VecEnv(env, num_envs=8)                      # vmaps with axis name ENV_AXIS

Info keys (from gymnax): "terminated", "truncated", "final_observation", and for the
classic-control and tabular environments "discount" (1 - terminated). `EpisodeStatistics`
adds "returned_episode", "episode_return" and "episode_length".
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from pgjax.envs.spaces import action_bounds
from pgjax.validation import check_int, is_finite_real, is_real

Array = jax.Array

ENV_AXIS = "envs"
"""The vmap axis name `VecEnv` binds; `NormalizeObservation(axis_name=ENV_AXIS)` shares statistics over it."""


class Wrapper:
    """Base wrapper: forwards `reset`/`step` and every other attribute to the inner environment."""

    def __init__(self, env: Any):
        self._env = env

    def __getattr__(self, name: str) -> Any:
        if name == "_env":  # Not yet set (e.g. during copy): avoid infinite recursion.
            raise AttributeError(name)
        return getattr(self._env, name)

    @property
    def unwrapped(self) -> Any:
        """The innermost (gymnax) environment."""
        env = self._env
        while isinstance(env, Wrapper):
            env = env._env
        return env

    def reset(self, key: Array, params: Any = None) -> tuple[Any, Any]:
        """(obs, state) of the inner environment."""
        return self._env.reset(key, params)

    def step(self, key: Array, state: Any, action: Any, params: Any = None) -> tuple:
        """(obs, state, reward, terminated, truncated, info) of the inner environment."""
        return self._env.step(key, state, action, params)


# ---------------------------------------------------------------------------
# Auto-reset with the reset states drawn ahead of time.
# ---------------------------------------------------------------------------


class ResetDraw(NamedTuple):
    """What `PredrawnResets.step` takes in place of a key: one step's randomness, drawn ahead.

    Attributes:
      step_key: the key for `step_env`.
      obs: the observation of a fresh episode, `reset_env(reset_key)`'s.
      state: that episode's first state.
    """

    step_key: Array
    obs: Any
    state: Any


def _key_batch_ndim(keys: Array) -> int:
    """Batch dimensions of a key array: all of them for typed keys, all but the last ([..., 2]) for raw ones."""
    return keys.ndim if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys.ndim - 1


class PredrawnResets(Wrapper):
    """gymnax's auto-resetting `step`, able to take its reset states drawn ahead of time.

    gymnax's `Environment.step(key, ...)` splits `key` into (step key, reset key) and draws a fresh
    episode with `reset_env` at every step, kept only where the episode ended. `draw_resets(keys)`
    makes those splits and draws for a whole batch of keys in one call (a rollout's [T, N] keys); `step`
    given a `ResetDraw` (passed down unchanged by the wrappers above, `VecEnv` included) then steps
    with `step_env` alone. Same keys, same numbers: a draw is the split and the `reset_env` call that
    `step` would have made. Given a plain key, `step` is gymnax's.

    On one CPU core this is most of the environment's cost per step (each threefry call is tens of
    tiny kernels however few numbers it makes): a CartPole vector step went from 4.8 us to 1.9 us.

    Needs an environment whose `step` is gymnax's `Environment.step` (built from `step_env`,
    `reset_env` and `is_truncated`); `wraps_step_of(env)` says whether it is.
    """

    def __init__(self, env: Any):
        super().__init__(env)
        if not self.wraps_step_of(env):
            raise ValueError(
                f"PredrawnResets: {type(env).__name__} has its own `step`; it needs gymnax's Environment.step "
                "(step_env + reset_env + is_truncated). Leave the wrapper out for this environment."
            )

    @staticmethod
    def wraps_step_of(env: Any) -> bool:
        """Whether `env`'s `step` is gymnax's `Environment.step`, which this wrapper reproduces."""
        return isinstance(env, environment.Environment) and type(env).step is environment.Environment.step

    def draw_resets(self, keys: Array, params: Any = None) -> ResetDraw:
        """The `ResetDraw` of every key in `keys` (any batch shape, e.g. [T, N]); leaves get the same batch axes."""
        params = self._env.default_params if params is None else params

        def one(key):
            step_key, reset_key = jax.random.split(key)
            obs, state = self._env.reset_env(reset_key, params)
            return ResetDraw(step_key, obs, state)

        for _ in range(_key_batch_ndim(keys)):
            one = jax.vmap(one)
        return one(keys)

    def step(self, key: Array | ResetDraw, state: Any, action: Any, params: Any = None) -> tuple:
        """gymnax's auto-resetting step: with a `ResetDraw`, `step_env` then the drawn reset where the episode ended
        (terminated or truncated); with a plain key, the inner `step`."""
        if not isinstance(key, ResetDraw):
            return self._env.step(key, state, action, params)
        params = self._env.default_params if params is None else params
        obs_step, state_step, reward, terminated, info = self._env.step_env(key.step_key, state, action, params)
        truncated = self._env.is_truncated(state_step, params)
        done = jnp.logical_or(terminated, truncated)
        select = lambda reset, stepped: jax.lax.select(done, reset, stepped)  # noqa: E731
        state = jax.tree_util.tree_map(select, key.state, state_step)
        obs = jax.tree_util.tree_map(select, key.obs, obs_step)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_step}
        return obs, state, reward, terminated, truncated, info


# ---------------------------------------------------------------------------
# Observations.
# ---------------------------------------------------------------------------


def _flatten(obs: Array) -> Array:
    return jnp.reshape(obs, (-1,)).astype(jnp.float32)


class FlattenObservation(Wrapper):
    """Observations (and `info["final_observation"]`) flattened to float32 [D]. Stateless."""

    def observation_space(self, params: Any = None) -> spaces.Box:
        """The inner space flattened: a float32 Box [D], D the product of the inner shape, bounds kept."""
        space = self._env.observation_space(self._env.default_params if params is None else params)
        size = 1
        for n in space.shape:
            size *= n
        low = jnp.reshape(jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape), (-1,))
        high = jnp.reshape(jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape), (-1,))
        return spaces.Box(low, high, (size,), jnp.float32)

    def reset(self, key: Array, params: Any = None) -> tuple[Array, Any]:
        """(obs float32 [D], state)."""
        obs, state = self._env.reset(key, params)
        return _flatten(obs), state

    def step(self, key: Array, state: Any, action: Any, params: Any = None) -> tuple:
        """The inner step with obs and info["final_observation"] flattened to float32 [D]."""
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info = {**info, "final_observation": _flatten(info["final_observation"])}
        return _flatten(obs), state, reward, terminated, truncated, info


# ---------------------------------------------------------------------------
# Episode statistics.
# ---------------------------------------------------------------------------


@struct.dataclass
class EpisodeStatisticsState:
    """State of `EpisodeStatistics`.

    Attributes:
      env_state: the inner environment's state.
      episode_return: sum of rewards so far in the current episode (float32 scalar).
      episode_length: steps so far in the current episode (int32 scalar).
    """

    env_state: Any
    episode_return: Array
    episode_length: Array


class EpisodeStatistics(Wrapper):
    """Tracks the undiscounted return and length of the running episode.

    On every step `info` gains
      "returned_episode": terminated or truncated (bool) -- an episode ended at this step;
      "episode_return": that episode's sum of rewards, or 0 when no episode ended;
      "episode_length": that episode's number of steps, or 0 when no episode ended.
    Average over the finished episodes of an update with `finished_episode_mean(info)`.
    """

    def reset(self, key: Array, params: Any = None) -> tuple[Any, EpisodeStatisticsState]:
        """(obs, state): the inner reset, with the running return and length at zero."""
        obs, env_state = self._env.reset(key, params)
        state = EpisodeStatisticsState(env_state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        return obs, state

    def step(self, key: Array, state: EpisodeStatisticsState, action: Any, params: Any = None) -> tuple:
        """The inner step, with G = sum_t r_t and the step count of the running episode in `info` where it ended."""
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + jnp.asarray(reward, jnp.float32)
        episode_length = state.episode_length + 1
        info = {
            **info,
            "returned_episode": done,
            "episode_return": jnp.where(done, episode_return, 0.0),
            "episode_length": jnp.where(done, episode_length, 0),
        }
        state = EpisodeStatisticsState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return obs, state, reward, terminated, truncated, info


def finished_episode_mean(info: dict[str, Array], name: str = "episode_return") -> Array:
    """Mean of `info[name]` over the steps where an episode finished (any shape, e.g. [T, N]).

    NaN when no episode finished: an honest "no data" for a metrics row.
    """
    finished = info["returned_episode"]
    count = jnp.sum(finished)
    total = jnp.sum(jnp.where(finished, info[name], 0).astype(jnp.float32))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


# ---------------------------------------------------------------------------
# Observation normalisation with running statistics.
# ---------------------------------------------------------------------------


@struct.dataclass
class RunningStatistics:
    """Mean and (population) variance of the `count` observations seen so far.

    Attributes:
      mean: [*obs_shape] float32.
      var: [*obs_shape] float32, (1/n) sum (x - mean)^2.
      count: n, int32 scalar; it stops at 2^31 - 1 (int32's largest): later samples still enter the mean and
        variance, with weights n_b / 2^31 that float32 rounds away unless they are far from the mean.
    """

    mean: Array
    var: Array
    count: Array


def init_statistics(like: Array) -> RunningStatistics:
    """Empty statistics for observations shaped like `like` (mean 0, var 1, count 0)."""
    shape = jnp.shape(like)
    return RunningStatistics(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.zeros((), jnp.int32))


def batch_statistics(x: Array) -> RunningStatistics:
    """Statistics of a batch x [N, *obs_shape] (mean and population variance over axis 0)."""
    x = jnp.asarray(x, jnp.float32)
    return RunningStatistics(jnp.mean(x, axis=0), jnp.var(x, axis=0), jnp.asarray(x.shape[0], jnp.int32))


def merge_statistics(a: RunningStatistics, b: RunningStatistics) -> RunningStatistics:
    """Statistics of the union of two samples (Chan, Golub and LeVeque's parallel update).

        n = n_a + n_b,  delta = mean_b - mean_a,
        mean = mean_a + delta n_b / n,
        var  = (n_a var_a + n_b var_b + delta^2 n_a n_b / n) / n.

    Exact for any split, so per-step batch updates give the statistics of all data seen.
    With n = 0 the result is `a`.
    """
    n_a = a.count.astype(jnp.float32)
    n_b = b.count.astype(jnp.float32)
    n = n_a + n_b
    weight_b = jnp.where(n > 0, n_b / jnp.where(n > 0, n, 1.0), 0.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * weight_b
    m2 = a.var * n_a + b.var * n_b + jnp.square(delta) * n_a * weight_b
    var = jnp.where(n > 0, m2 / jnp.where(n > 0, n, 1.0), a.var)
    # Saturating, not wrapping: past 2^31 - 1 samples a wrapped count went negative and the next merge's weights
    # with it (one seed of 2048 environments passes it at about 1.05e6 steps per environment).
    count = a.count + jnp.minimum(b.count, _MAX_COUNT - a.count)
    return RunningStatistics(mean, var, count)


_MAX_COUNT = jnp.iinfo(jnp.int32).max


def normalize(x: Array, statistics: RunningStatistics, epsilon: float = 1e-8, clip: float | None = None) -> Array:
    """(x - mean) / sqrt(var + epsilon), optionally clipped to [-clip, clip]; float32."""
    z = (jnp.asarray(x, jnp.float32) - statistics.mean) / jnp.sqrt(statistics.var + epsilon)
    return z if clip is None else jnp.clip(z, -clip, clip)


def observe(
    statistics: RunningStatistics, x: Array, axis_name: str | None, owner: str = "observe"
) -> RunningStatistics:
    """Merge one sample x [*shape] into `statistics`; with `axis_name`, the batch of samples of that vmap axis.

    With `axis_name=None` x counts as one sample. Under `jax.vmap(..., axis_name=axis_name)` every lane
    merges the mean and variance of the whole axis (`lax.pmean`), so all lanes hold identical statistics.
    `owner` names the wrapper in the error raised when the axis is not bound.
    """
    x = jnp.asarray(x, jnp.float32)
    if axis_name is None:
        return merge_statistics(statistics, RunningStatistics(x, jnp.zeros_like(x), jnp.ones((), jnp.int32)))
    try:
        mean = jax.lax.pmean(x, axis_name)
    except NameError:
        raise ValueError(
            f"{owner}(axis_name={axis_name!r}) must run under jax.vmap(..., axis_name={axis_name!r}) (VecEnv, "
            f"batch_reset and batch_step bind ENV_AXIS={ENV_AXIS!r}); use axis_name=None for a single environment."
        ) from None
    var = jax.lax.pmean(jnp.square(x - mean), axis_name)
    count = jax.lax.psum(jnp.ones((), jnp.int32), axis_name)
    return merge_statistics(statistics, RunningStatistics(mean, var, count))


class _RunningStatisticsWrapper(Wrapper):
    """What both normalisers share: the settings of their running statistics and how a sample is merged in."""

    def __init__(
        self,
        env: Any,
        *,
        update: bool = True,
        axis_name: str | None = None,
        epsilon: float = 1e-8,
        clip: float | None = 10.0,
        initial_statistics: RunningStatistics | None = None,
    ):
        super().__init__(env)
        owner = type(self).__name__
        if not is_finite_real(epsilon) or not epsilon > 0:  # 0 divides a zero variance: 0 / 0 = NaN
            raise ValueError(f"{owner}: epsilon must be > 0; got {epsilon}.")
        if clip is not None and (not is_real(clip) or not clip > 0):  # NaN clipped every value to NaN
            raise ValueError(f"{owner}: clip must be > 0 or None; got {clip}.")
        self.update = update
        self.axis_name = axis_name
        self.epsilon = epsilon
        self.clip = clip
        self.initial_statistics = initial_statistics

    def _initial(self, like: Array) -> RunningStatistics:
        return init_statistics(like) if self.initial_statistics is None else self.initial_statistics

    def _observe(self, statistics: RunningStatistics, x: Array) -> RunningStatistics:
        if not self.update:
            return statistics
        return observe(statistics, x, self.axis_name, type(self).__name__)


@struct.dataclass
class NormalizeObservationState:
    """State of `NormalizeObservation`: the inner state and the running statistics."""

    env_state: Any
    statistics: RunningStatistics


class NormalizeObservation(_RunningStatisticsWrapper):
    """Observations normalised by running statistics carried in the state.

    Each `reset`/`step` first merges the returned observation into the statistics
    (unless `update=False`), then returns `normalize(obs, statistics)`;
    `info["final_observation"]` is normalised with the same statistics, so V(obs) and the
    bootstrap V(final_observation) see the same scale. Final observations themselves are
    not counted (like gymnasium's wrapper).

    Sharing statistics over a batch: with `axis_name=ENV_AXIS` and the environment vmapped
    under that axis name (`VecEnv` or `batch_reset`/`batch_step` do this), every step merges
    the batch's mean and variance (`lax.pmean` over the axis) into the statistics, so all
    environments of a batch hold identical statistics, equal to those of every observation
    the batch has seen. Outer vmaps (over seeds or hyperparameters) keep separate
    statistics. With `axis_name=None` each environment keeps its own statistics (correct,
    but noisier with few steps). To merge statistics computed elsewhere, use
    `merge_statistics`/`batch_statistics`.

    Evaluation with frozen statistics: build `NormalizeObservation(env, update=False,
    initial_statistics=trained_state.statistics)` (inside `jit`/`vmap` if the statistics are
    traced); `reset` then starts from those statistics and they never change.

    Args:
      env: the inner environment.
      update: merge observations into the statistics (False freezes them).
      axis_name: a vmap axis name to share statistics over, or None for per-environment ones.
      epsilon: added to the variance.
      clip: normalised observations are clipped to [-clip, clip]; None for no clipping.
      initial_statistics: statistics `reset` starts from (default: empty).
    """

    def observation_space(self, params: Any = None) -> spaces.Box:
        """A float32 Box of the inner shape with bounds [-clip, clip] (unbounded when clip is None)."""
        inner = self._env.observation_space(self._env.default_params if params is None else params)
        bound = jnp.inf if self.clip is None else self.clip
        return spaces.Box(-bound, bound, inner.shape, jnp.float32)

    def _normalize(self, x: Array, statistics: RunningStatistics) -> Array:
        return normalize(x, statistics, self.epsilon, self.clip)

    def reset(self, key: Array, params: Any = None) -> tuple[Array, NormalizeObservationState]:
        """(normalised obs, state): the first observation joins the statistics (unless update=False) first."""
        obs, env_state = self._env.reset(key, params)
        statistics = self._observe(self._initial(obs), obs)
        return self._normalize(obs, statistics), NormalizeObservationState(env_state, statistics)

    def step(self, key: Array, state: NormalizeObservationState, action: Any, params: Any = None) -> tuple:
        """The inner step with obs (merged into the statistics first) and info["final_observation"] mapped to
        (x - mean) / sqrt(var + epsilon), float32, clipped to [-clip, clip] unless clip is None."""
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        statistics = self._observe(state.statistics, obs)
        info = {**info, "final_observation": self._normalize(info["final_observation"], statistics)}
        state = NormalizeObservationState(env_state, statistics)
        return self._normalize(obs, statistics), state, reward, terminated, truncated, info


# ---------------------------------------------------------------------------
# Reward normalisation by the running scale of the discounted return.
# ---------------------------------------------------------------------------


@struct.dataclass
class NormalizeRewardState:
    """State of `NormalizeReward`: the inner state, the running discounted return G of the current
    episode (a scalar per environment) and the running statistics of G."""

    env_state: Any
    discounted_return: Array
    return_statistics: RunningStatistics


class NormalizeReward(_RunningStatisticsWrapper):
    """Rewards divided by the running standard deviation of the discounted return (not centred):

        G_t = r_t + gamma G_{t-1}   (G = 0 before an episode's first reward),
        r_t -> clip(r_t / sqrt(Var[G] + epsilon), -clip, clip),

    Var[G] over every G_t seen so far (all environments of the batch with `axis_name`). The discounted
    return then has roughly unit scale whatever the environment's reward scale, which keeps value
    targets and advantages in the range Adam and gradient clipping are tuned for; it is the reward
    normaliser of gymnasium, Stable-Baselines3 (`VecNormalize`), CleanRL's continuous-action PPO and
    PureJaxRL. A rescaling, not a shift: the optimal policy and the sign of every advantage are kept.
    The scale changes as the statistics grow, so the critic chases a slowly moving target.

    G restarts at every episode boundary, terminated or truncated: it tracks the return of the episode
    under way (gymnasium 1.x restarts it on termination only). Place `EpisodeStatistics` below this
    wrapper so it reports raw returns. The wrapper is built with a Python float `discount`;
    `with_reward_discount` gives a copy another one, also a traced one (the training loop gives each lane its
    `discount` hyperparameter, so a discount sweep normalises each lane by its own return).

    Args:
      env: the inner environment.
      discount: gamma of the running return.
      update: merge returns into the statistics (False freezes them at `initial_statistics`).
      axis_name: a vmap axis name to share statistics over (`ENV_AXIS` under `VecEnv`), or None.
      epsilon: added to the variance.
      clip: normalised rewards are clipped to [-clip, clip]; None for no clipping.
      initial_statistics: statistics `reset` starts from (default: empty; then the first steps' Var[G]
        is small and their rewards large, up to the clip, as in the libraries above).
    """

    def __init__(self, env: Any, discount: float, **statistics_settings: Any):
        if isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0.0 < discount <= 1.0:
            raise ValueError(f"NormalizeReward: discount must be a number in (0, 1]; got {discount!r}.")
        super().__init__(env, **statistics_settings)
        self.discount = float(discount)

    def reset(self, key: Array, params: Any = None) -> tuple[Array, NormalizeRewardState]:
        """(obs, state): the inner reset, with the discounted return G at zero; observations pass unchanged."""
        obs, env_state = self._env.reset(key, params)
        return obs, NormalizeRewardState(env_state, jnp.zeros((), jnp.float32), self._initial(jnp.zeros(())))

    def step(self, key: Array, state: NormalizeRewardState, action: Any, params: Any = None) -> tuple:
        """The inner step with reward r_t -> r_t / sqrt(Var[G] + epsilon) (float32, clipped to [-clip, clip] unless
        clip is None), G_t = r_t + gamma G_{t-1} merged into the statistics first."""
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        reward = jnp.asarray(reward, jnp.float32)
        discounted_return = reward + self.discount * state.discounted_return
        statistics = self._observe(state.return_statistics, discounted_return)
        scaled = reward / jnp.sqrt(statistics.var + self.epsilon)
        if self.clip is not None:
            scaled = jnp.clip(scaled, -self.clip, self.clip)
        # The next reward belongs to a new episode (gymnax has already reset the inner state).
        discounted_return = jnp.where(terminated | truncated, 0.0, discounted_return)
        state = NormalizeRewardState(env_state, discounted_return, statistics)
        return obs, state, scaled, terminated, truncated, info


def with_reward_discount(env: Any, discount: Any) -> Any:
    """The wrapper stack `env` with every `NormalizeReward` in it running its return G_t = r_t + gamma G_{t-1} at
    gamma = `discount` (a float or a traced scalar, e.g. a lane's hyperparameter): copies of the wrappers down to
    the last NormalizeReward, `env` itself unchanged (returned as is without one). The state is the same pytree."""
    if not isinstance(env, Wrapper):
        return env
    inner = with_reward_discount(env._env, discount)
    if inner is env._env and not isinstance(env, NormalizeReward):
        return env
    out = copy.copy(env)
    out._env = inner
    if isinstance(env, NormalizeReward):
        out.discount = discount
    return out


def running_statistics(state: Any) -> dict[str, list[RunningStatistics]]:
    """The normalisers' statistics held in a (possibly batched) wrapper state, outer to inner as the wrappers nest:
    {"observation": [each NormalizeObservation's], "return": [each NormalizeReward's]}."""
    found: dict[str, list[RunningStatistics]] = {"observation": [], "return": []}

    def visit(node):
        if isinstance(node, NormalizeObservationState):
            found["observation"].append(node.statistics)
        elif isinstance(node, NormalizeRewardState):
            found["return"].append(node.return_statistics)
        if hasattr(node, "__dataclass_fields__"):
            for name in node.__dataclass_fields__:
                visit(getattr(node, name))

    visit(state)
    return found


def with_running_statistics(env: Any, state: Any) -> Any:
    """The wrapper stack `env` with each normaliser (`NormalizeObservation`, `NormalizeReward`) starting from the
    running statistics it holds in `state` (its state of `env`), so that `reset` carries them on instead of
    starting them afresh: a run that resets its environments between rollouts (REINFORCE's `episodic`) keeps
    normalising by everything seen so far. Under `VecEnv` the first environment's copy is taken: the training
    loop's normalisers share their statistics over the batch (`axis_name`), so every copy is the same. Copies of
    the wrappers; `env` unchanged. Works on traced states (inside the compiled run)."""
    nodes = running_statistics(state)
    found = {NormalizeObservation: iter(nodes["observation"]), NormalizeReward: iter(nodes["return"])}

    def rebuilt(env: Any, batched: bool) -> Any:
        if not isinstance(env, Wrapper):
            return env
        out = copy.copy(env)
        out._env = rebuilt(env._env, batched or isinstance(env, VecEnv))
        if isinstance(env, (NormalizeObservation, NormalizeReward)):
            statistics = next(found[NormalizeObservation if isinstance(env, NormalizeObservation) else NormalizeReward],
                              None)
            if statistics is None:
                raise ValueError(f"with_running_statistics: the state holds no statistics for {type(env).__name__}; "
                                 "pass the state of this wrapper stack.")
            out.initial_statistics = jax.tree_util.tree_map(lambda x: x[0], statistics) if batched else statistics
        return out

    return rebuilt(env, False)


# ---------------------------------------------------------------------------
# Actions.
# ---------------------------------------------------------------------------


class ClipAction(Wrapper):
    """Clips continuous actions to the `Box` bounds of the action space before stepping. Stateless.

    Bounds are read from `action_space(params)`, so they follow vmapped params. The
    policy's unclipped action is what the learner should score (log-density); the
    environment only ever sees the clipped one.
    """

    def __init__(self, env: Any):
        super().__init__(env)
        space = env.action_space(env.default_params)
        if not isinstance(space, spaces.Box):
            raise ValueError(f"ClipAction: {env.name} has action space {space!r}; ClipAction needs a Box.")

    def step(self, key: Array, state: Any, action: Any, params: Any = None) -> tuple:
        """The inner step with clip(action, low, high), the `Box` bounds of `action_space(params)`."""
        low, high = action_bounds(self._env, params)
        # In the default float, which gymnax's resets draw: under jax_enable_x64 a float32 action would step some state
        # fields (Pendulum's last_u) in float32 against float64 resets, and gymnax's auto-reset refuses to mix them.
        action = jnp.asarray(action, jnp.result_type(float))
        return self._env.step(key, state, jnp.clip(action, low, high), params)


# ---------------------------------------------------------------------------
# Batches of environments.
# ---------------------------------------------------------------------------


def batch_reset(
    env: Any,
    key: Array,
    num_envs: int,
    params: Any = None,
    *,
    axis_name: str = ENV_AXIS,
    params_axis: int | None = None,
) -> tuple[Any, Any]:
    """Reset `num_envs` environments with independent keys: obs [N, ...], state with leading axis N.

    Args:
      env: any environment or wrapper stack.
      key: one PRNG key, split N ways.
      num_envs: N >= 1 (static).
      params: shared params (`params_axis=None`) or a batch with axis `params_axis` of size N.
      axis_name: the vmap axis name (used by `NormalizeObservation(axis_name=...)`).
    """
    check_int("batch_reset: num_envs", num_envs)
    keys = jax.random.split(key, num_envs)
    return jax.vmap(env.reset, in_axes=(0, params_axis), axis_name=axis_name)(keys, params)


def batch_step(
    env: Any,
    key: Array,
    state: Any,
    action: Any,
    params: Any = None,
    *,
    axis_name: str = ENV_AXIS,
    params_axis: int | None = None,
) -> tuple:
    """Step a batch of N environments (N: the leading axis of `action`) with independent keys.

    `key` is one PRNG key, split N ways, or N keys already split (a key array with a leading axis N:
    a rollout splits the keys of all its steps in one call, cheaper than one split per step), or N
    `ResetDraw`s for a `PredrawnResets` at the bottom of the stack.

    Returns the batched 6-tuple: obs [N, ...], state, reward [N], terminated [N],
    truncated [N], info (every entry with leading axis N).
    """
    num_envs = jax.tree_util.tree_leaves(action)[0].shape[0]
    if isinstance(key, ResetDraw):  # N draws (PredrawnResets), one per environment
        keys, count = key, key.step_key.shape[0]
    else:
        keys = key if _is_key_batch(key) else jax.random.split(key, num_envs)
        count = keys.shape[0]
    if count != num_envs:
        raise ValueError(f"batch_step: {count} keys for {num_envs} environments.")
    return jax.vmap(env.step, in_axes=(0, 0, 0, params_axis), axis_name=axis_name)(keys, state, action, params)


def _is_key_batch(key: Array) -> bool:
    """A batch of keys: typed keys with a leading axis, or raw uint32 keys shaped [N, 2]."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


class VecEnv(Wrapper):
    """`num_envs` copies of an environment, vmapped, behind the same reset/step interface.

    `reset(key, params)` and `step(key, state, action [N, ...], params)` take one key (or, for
    `step`, N keys) and shared params and return batched outputs (leading axis N). Spaces and the space helpers
    (`action_dim`, `observation_size`, ...) describe one environment.
    """

    def __init__(self, env: Any, num_envs: int, *, axis_name: str = ENV_AXIS):
        super().__init__(env)
        self.num_envs = check_int("VecEnv: num_envs", num_envs)
        self.axis_name = axis_name

    def reset(self, key: Array, params: Any = None) -> tuple[Any, Any]:
        """`batch_reset`: (obs [N, ...], state with leading axis N)."""
        return batch_reset(self._env, key, self.num_envs, params, axis_name=self.axis_name)

    def step(self, key: Array, state: Any, action: Any, params: Any = None) -> tuple:
        """`batch_step`: obs [N, ...], state, reward [N], terminated [N], truncated [N], info (leading axis N)."""
        return batch_step(self._env, key, state, action, params, axis_name=self.axis_name)
