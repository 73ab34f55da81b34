"""Tests for pgjax.envs: the tabular environment, wrappers, vectorisation and `make`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs
from pgjax.envs import (
    ENV_AXIS,
    ClipAction,
    EpisodeStatistics,
    FlattenObservation,
    NormalizeObservation,
    NormalizeReward,
    PredrawnResets,
    ResetDraw,
    RunningStatistics,
    TabularEnv,
    TabularEnvParams,
    VecEnv,
)
from pgjax.tabular import chain_mdp, expected_return, random_mdp


def _actions(env, params, key, num_envs, scale):
    """Uniform discrete actions, or N(0, scale^2) continuous ones (deliberately out of bounds)."""
    space = env.action_space(env.default_params if params is None else params)
    if envs.is_discrete(env, params):
        return jax.vmap(space.sample)(jax.random.split(key, num_envs))
    return scale * jax.random.normal(key, (num_envs, *space.shape))


@functools.partial(jax.jit, static_argnames=("env", "num_steps"))
def rollout(env, params, key, num_steps, action_scale=1.0):
    """Random actions in a `VecEnv` for `num_steps`; returns (obs_0, state_0, per-step outputs [T, N, ...])."""
    key_reset, key_steps = jax.random.split(key)
    obs0, state0 = env.reset(key_reset, params)

    def body(carry, key_t):
        _, state = carry
        key_a, key_s = jax.random.split(key_t)
        action = _actions(env, params, key_a, env.num_envs, action_scale)
        obs, state, reward, terminated, truncated, info = env.step(key_s, state, action, params)
        out = dict(obs=obs, state=state, action=action, reward=reward, terminated=terminated, truncated=truncated)
        return (obs, state), {**out, "info": info}

    _, traj = jax.lax.scan(body, (obs0, state0), jax.random.split(key_steps, num_steps))
    return obs0, state0, traj


# ---------------------------------------------------------------------------
# Tabular environment.
# ---------------------------------------------------------------------------


def test_tabular_discounted_return_matches_exact_value_over_a_batch_of_mdps():
    # random_mdp's Dirichlet sampler is slow to compile: build with one shape (that of make's
    # "tabular:random") eagerly, so every call after the first is cached, and stack.
    num_states, num_actions, discount, num_mdps, num_episodes = 10, 3, 0.9, 3, 1000
    horizon = envs.default_horizon(discount)
    assert horizon == 100
    keys = jax.random.split(jax.random.PRNGKey(0), num_mdps)
    single_mdps = [random_mdp(k, num_states, num_actions, discount=discount) for k in keys]
    mdps = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *single_mdps)
    logits = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (num_mdps, num_states, num_actions))
    policies = jax.nn.softmax(logits, axis=-1)
    env = TabularEnv(single_mdps[0])
    params = TabularEnvParams(mdp=mdps, max_steps_in_episode=jnp.full((num_mdps,), horizon))

    def episode(key, params, pi):
        key_reset, key = jax.random.split(key)
        obs, state = env.reset(key_reset, params)

        def body(carry, key_t):
            obs, state = carry
            key_a, key_s = jax.random.split(key_t)
            action = jax.random.categorical(key_a, jnp.log(pi[jnp.argmax(obs)]))
            obs, state, reward, terminated, truncated, _ = env.step(key_s, state, action, params)
            return (obs, state), (reward, terminated, truncated)

        _, (rewards, terminated, truncated) = jax.lax.scan(body, (obs, state), jax.random.split(key, horizon))
        discounted = jnp.sum(params.mdp.discount ** jnp.arange(horizon) * rewards)
        return discounted, terminated, truncated

    episodes = jax.vmap(episode, in_axes=(0, None, None))
    returns, terminated, truncated = jax.jit(jax.vmap(episodes, in_axes=(0, 0, 0)))(
        jax.random.split(jax.random.PRNGKey(2), num_mdps * num_episodes).reshape(num_mdps, num_episodes, -1),
        params,
        policies,
    )
    returns = np.asarray(returns)
    exact = np.asarray(jax.vmap(expected_return)(mdps, policies))
    bias = np.asarray(envs.truncation_bias_bound(mdps, horizon))
    mean = returns.mean(axis=1)
    stderr = returns.std(axis=1, ddof=1) / np.sqrt(num_episodes)
    assert np.all(stderr < 0.05 * np.abs(exact)), "test too weak to detect errors"
    np.testing.assert_array_less(np.abs(mean - exact), 4 * stderr + bias)
    # The time limit truncates exactly at step H; the continuing MDP never terminates.
    assert not np.any(terminated)
    assert np.all(truncated[..., -1]) and not np.any(truncated[..., :-1])


def test_tabular_time_limit_truncates_and_final_observation_is_pre_reset():
    # Deterministic chain: always "right" from state 0 visits 1, 2, 2 (reward 1 at the end), then resets.
    env, params = envs.make("tabular:chain", num_states=3, slip=0.0, right_reward=1.0, max_steps_in_episode=3)
    assert params.max_steps_in_episode == 3
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    obs, state = reset(jax.random.PRNGKey(0), params)
    np.testing.assert_array_equal(obs, [1.0, 0.0, 0.0])
    records = []
    for t in range(6):
        obs, state, reward, terminated, truncated, info = step(jax.random.PRNGKey(t), state, 1, params)
        records.append(
            (int(jnp.argmax(obs)), int(jnp.argmax(info["final_observation"])), float(reward), bool(terminated),
             bool(truncated), int(state.time), float(info["discount"]))
        )
        assert obs.dtype == jnp.float32 and float(obs.sum()) == 1.0
    states, finals, rewards, terminated, truncated, times, discounts = map(list, zip(*records))
    assert states == [1, 2, 0, 1, 2, 0]
    assert finals == [1, 2, 2, 1, 2, 2]
    assert rewards == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert truncated == [False, False, True, False, False, True]
    assert terminated == [False] * 6
    assert times == [1, 2, 0, 1, 2, 0]
    assert discounts == [1.0] * 6


def test_tabular_env_rejects_bad_arguments():
    with pytest.raises(ValueError, match="single MDP"):
        TabularEnv(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), chain_mdp(), chain_mdp()))
    with pytest.raises(ValueError, match="max_steps_in_episode"):
        TabularEnv(chain_mdp(), max_steps_in_episode=0)
    # Params carrying an MDP of another size: the larger MDP's extra states read as all-zero observations.
    env, params = envs.make("tabular:chain", num_states=4)
    larger = envs.make("tabular:chain", num_states=8)[1]
    with pytest.raises(ValueError, match=r"transition shape \(8, 2, 8\), this environment \(4, 2, 4\)"):
        env.reset(jax.random.key(0), larger)
    _, state = env.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match="same size"):
        env.step(jax.random.key(1), state, 0, larger)
    # The step limit is checked as for a gymnax id (True ran as 1), and a float32 gamma's default horizon is its
    # decimal's (float32 0.99 gave 1001).
    for bad, message in [(True, "must be a number"), (12.5, "whole number"), (0, ">= 1")]:
        with pytest.raises(ValueError, match=message):
            envs.make("tabular:chain", max_steps_in_episode=bad)
    assert envs.make("tabular:chain", max_steps_in_episode=200.0)[1].max_steps_in_episode == 200
    assert [envs.make("tabular:chain", discount=d)[1].max_steps_in_episode for d in (0.99, 0.995, 0.999)] == [
        1000, 2000, 10000]


# ---------------------------------------------------------------------------
# Wrappers.
# ---------------------------------------------------------------------------


NUM_ENVS, NUM_STEPS, MAX_STEPS = 4, 120, 25


@pytest.fixture(scope="module")
def cartpole_raw():
    """CartPole with random actions through EpisodeStatistics: the reference for the other wrappers."""
    base, params = envs.make("CartPole-v1", max_steps_in_episode=MAX_STEPS)
    env = VecEnv(EpisodeStatistics(FlattenObservation(base)), NUM_ENVS)
    obs0, _, traj = rollout(env, params, jax.random.PRNGKey(3), NUM_STEPS)
    return base, params, np.asarray(obs0), jax.tree_util.tree_map(np.asarray, traj)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "tabular:random"])
def test_episode_statistics_match_manual_accumulation(env_id, cartpole_raw):
    num_envs, num_steps, max_steps = NUM_ENVS, NUM_STEPS, MAX_STEPS
    if env_id == "CartPole-v1":
        traj = cartpole_raw[-1]
    else:
        max_steps = 7
        base, params = envs.make(env_id, seed=1, max_steps_in_episode=max_steps)
        env = VecEnv(EpisodeStatistics(FlattenObservation(base)), num_envs)
        traj = jax.tree_util.tree_map(np.asarray, rollout(env, params, jax.random.PRNGKey(3), num_steps)[-1])
    info = traj["info"]
    done = traj["terminated"] | traj["truncated"]
    np.testing.assert_array_equal(info["returned_episode"], done)

    running_return, running_length = np.zeros(num_envs), np.zeros(num_envs, int)
    finished = []
    for t in range(num_steps):
        running_return += traj["reward"][t]
        running_length += 1
        for i in range(num_envs):
            if done[t, i]:
                np.testing.assert_allclose(info["episode_return"][t, i], running_return[i], rtol=1e-6)
                assert info["episode_length"][t, i] == running_length[i]
                finished.append(running_return[i])
                running_return[i], running_length[i] = 0.0, 0
            else:
                assert info["episode_return"][t, i] == 0 and info["episode_length"][t, i] == 0
    assert len(finished) >= 10
    assert np.all(info["episode_length"][traj["truncated"]] == max_steps)
    if env_id == "CartPole-v1":
        assert traj["terminated"].any() and traj["truncated"].any()
        # At termination the final observation is the terminal (pre-reset) one, obs a fresh reset.
        final = info["final_observation"][traj["terminated"]]
        assert np.all((np.abs(final[:, 0]) > 2.4) | (np.abs(final[:, 2]) > 12 * 2 * np.pi / 360))
        assert np.all(np.abs(traj["obs"][done]) <= 0.05)
    np.testing.assert_allclose(envs.finished_episode_mean(info), np.mean(finished), rtol=1e-5)
    # Without an episode end nothing is reported.
    assert np.isnan(envs.finished_episode_mean(jax.tree_util.tree_map(lambda x: x[:0], info)))
    # One episode end: its return (the first step at which an episode ended, alone).
    t, i = np.argwhere(done)[0]
    alone = {name: info[name][t:t + 1, i:i + 1] for name in ("returned_episode", "episode_return")}
    assert float(envs.finished_episode_mean(alone)) == pytest.approx(float(info["episode_return"][t, i]))
    # Where no reset happened the final observation is the observation itself.
    np.testing.assert_array_equal(info["final_observation"][~done], traj["obs"][~done])
    assert np.any(info["final_observation"][done] != traj["obs"][done])


def _normalise_np(x, stats, epsilon=1e-8):
    return (x - stats.mean) / np.sqrt(stats.var + epsilon)


def test_normalize_observation_shared_statistics_equal_numpy(cartpole_raw):
    base, params, raw_obs0, raw = cartpole_raw
    env = VecEnv(NormalizeObservation(FlattenObservation(base), axis_name=ENV_AXIS, clip=None), NUM_ENVS)
    obs0, state0, traj = rollout(env, params, jax.random.PRNGKey(3), NUM_STEPS)
    assert raw["truncated"].any() and raw["terminated"].any()
    stats = jax.tree_util.tree_map(np.asarray, traj["state"].statistics)  # [T, N, ...]
    seen = np.concatenate([raw_obs0[None], raw["obs"]])  # [T+1, N, D]
    # Every environment of the batch holds the same statistics: those of everything seen so far.
    for t in [0, 9, NUM_STEPS - 1]:
        flat = seen[: t + 2].reshape(-1, 4)
        for i in range(NUM_ENVS):
            np.testing.assert_allclose(stats.mean[t, i], flat.mean(0), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(stats.var[t, i], flat.var(0), rtol=1e-4, atol=1e-7)
            assert stats.count[t, i] == flat.shape[0]
    # Observations and final observations are normalised with the statistics after the step.
    step_stats = RunningStatistics(stats.mean, stats.var, stats.count)
    np.testing.assert_allclose(traj["obs"], _normalise_np(raw["obs"], step_stats), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        traj["info"]["final_observation"],
        _normalise_np(raw["info"]["final_observation"], step_stats),
        rtol=1e-4,
        atol=1e-4,
    )
    reset_stats = jax.tree_util.tree_map(np.asarray, state0.statistics)
    np.testing.assert_allclose(obs0, _normalise_np(raw_obs0, reset_stats), rtol=1e-4, atol=1e-4)


def test_normalize_observation_per_env_and_frozen_statistics(cartpole_raw):
    base, params, raw_obs0, raw = cartpole_raw
    seen = np.concatenate([raw_obs0[None], raw["obs"]])  # [T+1, N, D]

    env = VecEnv(NormalizeObservation(FlattenObservation(base), clip=None), NUM_ENVS)
    _, _, traj = rollout(env, params, jax.random.PRNGKey(3), NUM_STEPS)
    final = jax.tree_util.tree_map(lambda x: np.asarray(x[-1]), traj["state"].statistics)
    np.testing.assert_allclose(final.mean, seen.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(final.var, seen.var(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(final.count, [NUM_STEPS + 1] * NUM_ENVS)

    frozen = RunningStatistics(jnp.array([0.1, -0.2, 0.0, 0.3]), jnp.array([0.5, 2.0, 0.01, 4.0]), jnp.array(7))
    frozen_env = NormalizeObservation(FlattenObservation(base), update=False, initial_statistics=frozen, clip=1.0)
    env = VecEnv(frozen_env, NUM_ENVS)
    obs0, _, traj = rollout(env, params, jax.random.PRNGKey(3), NUM_STEPS)
    frozen_np = jax.tree_util.tree_map(np.asarray, frozen)
    np.testing.assert_array_equal(traj["state"].statistics.count, 7)
    np.testing.assert_allclose(obs0, np.clip(_normalise_np(raw_obs0, frozen_np), -1, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj["obs"], np.clip(_normalise_np(raw["obs"], frozen_np), -1, 1), rtol=1e-5, atol=1e-6)
    assert np.abs(traj["obs"]).max() == 1.0


def test_shared_normalisation_outside_vmap_raises_a_clear_error():
    env, params = envs.make("tabular:chain")
    with pytest.raises(ValueError, match="axis_name=None"):
        jax.eval_shape(NormalizeObservation(env, axis_name=ENV_AXIS).reset, jax.random.PRNGKey(0), params)


def _normalised_rewards_np(reward, done, discount, shared, clip=10.0, epsilon=1e-8):
    """The reference for NormalizeReward: G_t = r_t + gamma G_{t-1}, restarted after every episode end; each step
    divides r_t by the standard deviation of every G seen so far (the batch's, or each environment's own)."""
    returns = np.zeros_like(reward)
    g = np.zeros(reward.shape[1])
    for t in range(reward.shape[0]):
        g = reward[t] + discount * g
        returns[t] = g
        g = np.where(done[t], 0.0, g)
    if shared:
        var = np.array([returns[: t + 1].var() for t in range(len(returns))])[:, None]
    else:
        var = np.stack([returns[: t + 1].var(axis=0) for t in range(len(returns))])
    return np.clip(reward / np.sqrt(var + epsilon), -clip, clip), returns


@pytest.mark.parametrize("env_id", ["CartPole-v1", "tabular:random"])
def test_normalize_reward_equals_numpy_and_keeps_raw_episode_returns(env_id, cartpole_raw):
    discount = 0.9
    if env_id == "CartPole-v1":
        base, params, _, raw = cartpole_raw
    else:  # random rewards in (0, 1), every episode truncated after 7 steps
        base, params = envs.make(env_id, seed=1, max_steps_in_episode=7)
        env = VecEnv(EpisodeStatistics(FlattenObservation(base)), NUM_ENVS)
        raw = jax.tree_util.tree_map(np.asarray, rollout(env, params, jax.random.PRNGKey(3), NUM_STEPS)[-1])
    done = raw["terminated"] | raw["truncated"]
    assert done.sum() >= 10
    for shared in (True, False):
        axis = ENV_AXIS if shared else None
        env = VecEnv(NormalizeReward(EpisodeStatistics(FlattenObservation(base)), discount, axis_name=axis), NUM_ENVS)
        _, _, traj = rollout(env, params, jax.random.PRNGKey(3), NUM_STEPS)
        traj = jax.tree_util.tree_map(np.asarray, traj)
        expected, returns = _normalised_rewards_np(raw["reward"].astype(np.float64), done, discount, shared)
        np.testing.assert_allclose(traj["reward"], expected, rtol=2e-4, atol=1e-5)
        stats = traj["state"].return_statistics
        np.testing.assert_allclose(stats.var[-1], returns.var() if shared else returns.var(axis=0), rtol=1e-4)
        np.testing.assert_array_equal(stats.count[-1], NUM_STEPS * (NUM_ENVS if shared else 1))
        # The same episodes, and EpisodeStatistics below the wrapper still reports their raw returns.
        np.testing.assert_array_equal(traj["obs"], raw["obs"])
        np.testing.assert_allclose(traj["info"]["episode_return"], raw["info"]["episode_return"], rtol=1e-6)
    if env_id == "CartPole-v1":
        # r = 1 on every step: the first step's returns are all 1, Var[G] = 0, and the clip bounds the reward.
        np.testing.assert_array_equal(traj["reward"][0], 10.0)
        assert 0.1 < traj["reward"][-1].min() < 1.0  # returns of ~10 steps: std ~2-3 later on
    else:
        # Rewards in (0, 1): a rescaling keeps them positive where a centring normaliser would not.
        assert (raw["reward"] > 0).all() and (traj["reward"] > 0).all()


def test_normalize_reward_frozen_statistics_and_bad_arguments():
    base, params = envs.make("tabular:random", seed=1, max_steps_in_episode=7)
    frozen = RunningStatistics(jnp.array(3.0), jnp.array(4.0), jnp.array(11))
    env = VecEnv(NormalizeReward(EpisodeStatistics(base), 0.99, update=False, initial_statistics=frozen), NUM_ENVS)
    _, _, traj = rollout(env, params, jax.random.PRNGKey(5), 20)
    inner = VecEnv(EpisodeStatistics(base), NUM_ENVS)
    _, _, raw = rollout(inner, params, jax.random.PRNGKey(5), 20)
    np.testing.assert_allclose(traj["reward"], np.asarray(raw["reward"]) / 2.0, rtol=1e-6)  # sqrt(4) = 2
    np.testing.assert_array_equal(traj["state"].return_statistics.count, 11)
    for bad, match in [(dict(discount=0.0), "discount"), (dict(discount=1.5), "discount"),
                       (dict(discount=0.9, clip=0.0), "clip"), (dict(discount=0.9, epsilon=-1.0), "epsilon"),
                       (dict(discount=0.9, epsilon=0.0), "epsilon must be > 0")]:  # 0 / 0 for a constant return
        with pytest.raises(ValueError, match=f"NormalizeReward: {match}"):
            NormalizeReward(base, **bad)
    assert NormalizeReward(base, 1.0).discount == 1.0  # (0, 1]: an undiscounted return may be normalised too
    for clip in (0.0, float("nan")):  # the check both normalisers share; NaN clipped every observation to NaN
        with pytest.raises(ValueError, match="NormalizeObservation: clip must be > 0"):
            NormalizeObservation(base, clip=clip)
    with pytest.raises(ValueError, match="NormalizeObservation: epsilon must be > 0"):
        NormalizeObservation(base, epsilon=float("nan"))
    with pytest.raises(ValueError, match="VecEnv: num_envs must be a positive int; got True"):  # was 1 environment
        VecEnv(base, True)
    unbound = NormalizeReward(base, 0.9, axis_name=ENV_AXIS)  # the statistics merge at the first step, not at reset
    _, state = unbound.reset(jax.random.PRNGKey(0), params)
    with pytest.raises(ValueError, match="NormalizeReward\\(axis_name='envs'\\).*axis_name=None"):
        jax.eval_shape(unbound.step, jax.random.PRNGKey(0), state, 0, params)


def test_merge_statistics_is_exact_for_any_split():
    x = np.random.default_rng(0).normal(size=(23, 3)) * [1.0, 10.0, 0.1] + [5.0, -2.0, 0.0]
    merged = envs.init_statistics(x[0])
    for chunk in np.split(x, [1, 5, 6, 17]):
        merged = envs.merge_statistics(merged, envs.batch_statistics(chunk))
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(merged.var, x.var(0), rtol=1e-4)
    assert int(merged.count) == 23


def test_merge_statistics_count_saturates_instead_of_wrapping():
    """Past int32's largest count the count stops there; the merged mean is still the weighted mean (float64)."""
    n_a, n_b = 2**31 - 10, 100
    a = envs.RunningStatistics(jnp.zeros(2), jnp.ones(2), jnp.asarray(n_a, jnp.int32))
    b = envs.RunningStatistics(jnp.full(2, 1e6), jnp.ones(2), jnp.asarray(n_b, jnp.int32))
    merged = envs.merge_statistics(a, b)
    assert int(merged.count) == 2**31 - 1  # wrapped: -2147483558, and the next merge's weight n_b / n negative
    np.testing.assert_allclose(merged.mean, 1e6 * n_b / (n_a + n_b), rtol=1e-5)
    again = envs.merge_statistics(merged, b)
    assert int(again.count) == 2**31 - 1 and np.all(np.asarray(again.mean) > np.asarray(merged.mean))


def test_clip_action_clips_to_box_bounds():
    base, params = envs.make("MountainCarContinuous-v0")
    env = ClipAction(base)
    low, high = envs.action_bounds(env, params)
    np.testing.assert_array_equal(low, [-1.0])
    np.testing.assert_array_equal(high, [1.0])
    np.testing.assert_array_equal(envs.action_bounds(*envs.make("Pendulum-v1"))[1], [2.0])

    @jax.jit
    def steps(action):
        _, state = base.reset(jax.random.PRNGKey(0), params)
        key = jax.random.PRNGKey(1)
        clipped = env.step(key, state, action, params)
        reference = base.step(key, state, jnp.clip(action, -1.0, 1.0), params)
        return clipped, reference, base.step(key, state, action, params)

    for value in [5.0, -7.0, 0.3]:
        clipped, reference, unclipped = steps(jnp.array([value]))
        for a, b in zip(jax.tree_util.tree_leaves(clipped), jax.tree_util.tree_leaves(reference)):
            np.testing.assert_array_equal(a, b)
        # MountainCarContinuous charges the unclipped action^2, so clipping is visible in the reward.
        if abs(value) > 1:
            assert float(unclipped[2]) < float(clipped[2]) - 1.0
    with pytest.raises(ValueError, match="Box"):
        ClipAction(envs.make("CartPole-v1")[0])
    with pytest.raises(ValueError, match="Box"):
        envs.action_bounds(*envs.make("CartPole-v1"))


def test_flatten_observation_flattens_obs_final_observation_and_space():
    base, params = envs.make("Breakout-MinAtar")
    env = FlattenObservation(base)
    assert env.observation_space(params).shape == (400,) and envs.observation_size(env, params) == 400
    # Shapes and dtypes only: eval_shape traces without compiling MinAtar.
    obs, state = jax.eval_shape(env.reset, jax.random.PRNGKey(0), params)
    obs, state, *_, info = jax.eval_shape(env.step, jax.random.PRNGKey(1), state, 1, params)
    assert obs.shape == (400,) and obs.dtype == jnp.float32
    assert info["final_observation"].shape == (400,) and info["final_observation"].dtype == jnp.float32


def test_space_sizes_are_products_over_every_axis():
    """action_dim of a Box action and observation_size are the flat sizes prod(shape), not the first axis: a (2, 3)
    action is a 6-wide policy head, a (10, 10, 4) observation (MinAtar's, unflattened) 400 inputs; also through a
    VecEnv (one environment's answers) and with explicit params."""
    from gymnax.environments import spaces

    class Stub:  # only what the space questions ask for
        name = "Stub"
        default_params = None

        def action_space(self, params):
            return spaces.Box(-1.0, 1.0, (2, 3))

        def observation_space(self, params):
            return spaces.Box(0.0, 1.0, (10, 10, 4))

    stub = Stub()
    assert envs.action_dim(stub) == 6 == int(np.prod((2, 3)))
    assert envs.observation_size(stub) == 400 == int(np.prod((10, 10, 4)))
    assert envs.action_dim(stub, params={}) == 6 and envs.observation_size(stub, params={}) == 400
    assert envs.action_dim(VecEnv(stub, 2)) == 6 and envs.observation_size(VecEnv(stub, 2)) == 400
    assert not envs.is_discrete(stub)
    np.testing.assert_array_equal(envs.action_bounds(stub)[0], -np.ones((2, 3), np.float32))


def test_full_stack_under_jit_and_vmap_over_seeds():
    base, params = envs.make("Pendulum-v1", max_steps_in_episode=20)
    env = FlattenObservation(base)
    env = EpisodeStatistics(env)
    env = NormalizeObservation(env, axis_name=ENV_AXIS)
    env = ClipAction(env)
    env = VecEnv(env, 3)
    assert env.unwrapped is base
    assert envs.observation_size(env, params) == 3 and envs.action_dim(env, params) == 1
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    run = jax.jit(jax.vmap(lambda k: rollout(env, params, k, 50, 3.0)))
    _, _, traj = run(keys)
    traj = jax.tree_util.tree_map(np.asarray, traj)
    info = traj["info"]
    assert traj["obs"].shape == (2, 50, 3, 3) and info["final_observation"].shape == (2, 50, 3, 3)
    assert sorted(info) == sorted(
        ["discount", "terminated", "truncated", "final_observation", "returned_episode", "episode_return",
         "episode_length"]
    )
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(traj) if x.dtype.kind == "f")
    done = traj["terminated"] | traj["truncated"]
    assert done.sum() == 2 * 2 * 3 and not traj["terminated"].any()
    np.testing.assert_array_equal(info["episode_length"][done], 20)
    np.testing.assert_array_equal(info["final_observation"][~done], traj["obs"][~done])
    # Statistics are shared within a seed's batch and separate across seeds.
    stats = traj["state"].statistics
    np.testing.assert_array_equal(stats.mean[:, :, 0], stats.mean[:, :, 2])
    assert np.all(stats.count[:, -1] == 51 * 3) and np.any(stats.mean[0, -1, 0] != stats.mean[1, -1, 0])


def test_vec_env_step_takes_one_key_or_one_key_per_env():
    """N keys split ahead give the same step as one key split N ways inside; a wrong count is an error."""
    base, params = envs.make("CartPole-v1")
    env = VecEnv(EpisodeStatistics(FlattenObservation(base)), 3)
    obs, state = env.reset(jax.random.key(0), params)
    action = jnp.array([0, 1, 1])
    for key in (jax.random.key(1), jax.random.PRNGKey(1)):  # typed and raw keys
        one = env.step(key, state, action, params)
        many = env.step(jax.random.split(key, 3), state, action, params)
        for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(many)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="2 keys for 3 environments"):
        env.step(jax.random.split(jax.random.key(1), 2), state, action, params)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "tabular:chain"])
def test_predrawn_resets_step_like_gymnax_step(env_id):
    """Steps given resets drawn ahead of time equal gymnax's own auto-resetting steps over a run long enough to
    reset many times (typed and raw keys). Flags and resets agree exactly; floats to
    rounding (XLA may fuse the same arithmetic differently in the two programs)."""
    base, params = envs.make(env_id, max_steps_in_episode=7)
    plain = VecEnv(EpisodeStatistics(FlattenObservation(base)), 3)
    drawn = VecEnv(EpisodeStatistics(FlattenObservation(PredrawnResets(base))), 3)
    num_steps = 30

    @functools.partial(jax.jit, static_argnames=("env", "predraw"))
    def run(env, key, predraw):
        obs, state = env.reset(jax.random.fold_in(key, 1), params)
        keys = jax.random.split(key, (num_steps, 3))
        actions = _actions(env, params, jax.random.fold_in(key, 2), num_steps * 3, 1.0)
        actions = actions.reshape((num_steps, 3) + actions.shape[1:])
        step_inputs = env.draw_resets(keys, params) if predraw else keys

        def body(state, inputs):
            k, a = inputs
            obs, state, reward, terminated, truncated, info = env.step(k, state, a, params)
            return state, (obs, reward, terminated, truncated, info)

        return jax.lax.scan(body, state, (step_inputs, actions))

    key = jax.random.PRNGKey(3) if env_id == "CartPole-v1" else jax.random.key(3)  # raw and typed keys
    reference = run(plain, key, False)
    out = run(drawn, key, True)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(reference)):
        if np.asarray(a).dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)
    done = np.asarray(reference[1][2] | reference[1][3])
    assert done.sum() >= 3 * 4  # every environment reset several times


def test_predrawn_resets_shapes_and_errors():
    base, params = envs.make("CartPole-v1")
    draw = PredrawnResets(base).draw_resets(jax.random.split(jax.random.key(0), (5, 3)), params)
    assert isinstance(draw, ResetDraw) and draw.obs.shape == (5, 3, 4) and draw.state.x.shape == (5, 3)
    env = VecEnv(PredrawnResets(base), 3)
    _, state = env.reset(jax.random.key(1), params)
    with pytest.raises(ValueError, match="2 keys for 3 environments"):
        env.step(jax.tree_util.tree_map(lambda x: x[0, :2], draw), state, jnp.array([0, 1, 1]), params)

    class OwnStep(type(base)):
        def step(self, key, state, action, params=None):
            return super().step(key, state, action, params)

    assert PredrawnResets.wraps_step_of(base) and not PredrawnResets.wraps_step_of(OwnStep())
    with pytest.raises(ValueError, match="has its own `step`"):
        PredrawnResets(OwnStep())


def test_predrawn_resets_without_params_use_the_default_params():
    """`draw_resets(keys)` and `step(draw, ...)` with no params are the calls given `default_params`, and the
    params are read: a random MDP's resets draw from its own mu0, so another MDP's draws differ."""
    base, _ = envs.make("tabular:random", num_states=6, num_actions=2, seed=1)
    other, _ = envs.make("tabular:random", num_states=6, num_actions=2, seed=2)
    env = PredrawnResets(base)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)  # raw keys: the draws compare as arrays
    default = env.draw_resets(keys, base.default_params)
    for a, b in zip(jax.tree_util.tree_leaves(env.draw_resets(keys)), jax.tree_util.tree_leaves(default)):
        np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(env.draw_resets(keys, other.default_params).state.mdp_state)
                  != np.asarray(default.state.mdp_state))
    _, state = base.reset(jax.random.key(1), base.default_params)
    draw = jax.tree_util.tree_map(lambda x: x[0], default)
    implicit = env.step(draw, state, jnp.array(1))
    explicit = env.step(draw, state, jnp.array(1), base.default_params)
    for a, b in zip(jax.tree_util.tree_leaves(implicit), jax.tree_util.tree_leaves(explicit)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# make.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id, discrete, num_actions, obs_size",
    [
        ("CartPole-v1", True, 2, 4),
        ("Acrobot-v1", True, 3, 6),
        ("Pendulum-v1", False, 1, 3),
        ("MountainCarContinuous-v0", False, 1, 2),
        ("tabular:chain", True, 2, 6),
        ("tabular:gridworld", True, 4, 16),
        ("tabular:random", True, 3, 10),
    ],
)
def test_make_builds_steppable_environments(env_id, discrete, num_actions, obs_size):
    env, params = envs.make(env_id)
    assert envs.is_discrete(env, params) == discrete
    assert envs.action_dim(env, params) == num_actions
    assert envs.observation_size(env, params) == obs_size

    @jax.jit
    def reset_and_step(params):
        obs0, state = env.reset(jax.random.PRNGKey(0), params)
        action = env.action_space(params).sample(jax.random.PRNGKey(1))
        return obs0, env.step(jax.random.PRNGKey(2), state, action, params)

    obs0, (obs, state, reward, terminated, truncated, info) = reset_and_step(params)
    assert obs0.shape == (obs_size,) and obs.shape == (obs_size,) and reward.shape == ()
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    assert info["final_observation"].shape == obs.shape
    assert env_id in envs.env_ids()


def test_make_overrides_params_and_rejects_unknown_ids():
    _, params = envs.make("CartPole-v1", max_steps_in_episode=30)
    assert params.max_steps_in_episode == 30
    env, params = envs.make("tabular:random", seed=3, discount=0.5)
    assert env.num_states == 10 and float(params.mdp.discount) == 0.5 and params.max_steps_in_episode == 20
    _, params = envs.make("tabular:random")  # the documented defaults: 10 states, 3 actions, seed 0
    np.testing.assert_array_equal(params.mdp.transition, random_mdp(jax.random.PRNGKey(0), 10, 3).transition)
    with pytest.raises(ValueError, match="CartPole-v1"):
        envs.make("CartPool-v1")
    with pytest.raises(ValueError, match="tabular:chain"):
        envs.make("tabular:nope")
    with pytest.raises(ValueError, match="bad keyword"):
        envs.make("tabular:chain", colour="red")
    with pytest.raises(ValueError, match="bad keyword"):
        envs.make("CartPole-v1", colour="red")
    # Values of params fields are checked too (from --env-kwarg's JSON: NaN, Infinity, text, a fractional limit).
    for kwargs, message in [({"gravity": float("nan")}, "gravity must be finite"),
                            ({"gravity": float("inf")}, "gravity must be finite"),
                            ({"gravity": "abc"}, "gravity must be a number"),
                            ({"gravity": True}, "gravity must be a number"),
                            ({"max_steps_in_episode": 12.5}, "max_steps_in_episode is an int field .* whole number"),
                            ({"max_steps_in_episode": 0},
                             "max_steps_in_episode .the episode.s step limit. must be >= 1")]:
        with pytest.raises(ValueError, match=f"CartPole-v1: {message}"):
            envs.make("CartPole-v1", **kwargs)
    _, params = envs.make("CartPole-v1", max_steps_in_episode=200.0)
    assert params.max_steps_in_episode == 200 and isinstance(params.max_steps_in_episode, int)


def test_make_reports_an_environment_that_cannot_fetch_its_data(gymnax_offline):
    # MNISTBandit-bsuite downloads MNIST inside gymnax.make; offline that was a bare URLError traceback.
    with pytest.raises(ValueError, match=r"'MNISTBandit-bsuite'.*URLError.*network access"):
        envs.make("MNISTBandit-bsuite")


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=0.0), r"with \{'length': 0.0\} the environment's step 1 gives a non-finite observation"),
    (dict(gravity=1e40), r"gravity = 1e\+40 overflows float32"),  # finite as a Python float, inf in the dynamics
    (dict(length=[1.0, 2.0]), r"length must be a number"),  # was a TypeError from the derived fields
    (dict(max_steps_in_episode=3_000_000_000), r"max_steps_in_episode is an int32 field; got 3e\+09"),
])
def test_environment_settings_the_dynamics_cannot_run_with_are_refused(kwargs, match):
    """They gave NaN observations (length 0) or overflowed, and evaluations reported plausible returns (2.0)."""
    with pytest.raises(ValueError, match=match):
        envs.make("CartPole-v1", **kwargs)


def test_make_with_a_traced_override_inside_jit():
    # Overrides may be traced (make called inside a compiled function): the compiled first-steps check, which needs
    # concrete params, is skipped for them rather than failing.
    @jax.jit
    def gravity_twice(g):
        return envs.make("CartPole-v1", gravity=g)[1].gravity * 2

    assert float(gravity_twice(9.8)) == pytest.approx(19.6)


def test_observation_spaces_read_the_params_passed_and_the_defaults_otherwise():
    """CartPole's bounds depend on its params (x_threshold): FlattenObservation keeps the inner bounds of the params
    it is given, the defaults' when given None; NormalizeObservation's bounds are [-clip, clip], unbounded without."""
    base, _ = envs.make("CartPole-v1")
    defaults = base.default_params
    narrow = defaults.replace(x_threshold=1.0)
    flat = FlattenObservation(base)
    for params in (None, narrow):
        want = base.observation_space(defaults if params is None else params)
        got = flat.observation_space(params)
        np.testing.assert_array_equal(got.high, np.reshape(want.high, -1))
        np.testing.assert_array_equal(got.low, np.reshape(want.low, -1))
    assert float(flat.observation_space(narrow).high[0]) == 2.0 != float(flat.observation_space(None).high[0])
    for clip, bound in ((5.0, 5.0), (None, np.inf)):
        space = NormalizeObservation(flat, clip=clip).observation_space(narrow)
        assert space.shape == (4,) and space.dtype == jnp.float32
        np.testing.assert_array_equal(np.broadcast_to(space.low, (4,)), -bound)
        np.testing.assert_array_equal(np.broadcast_to(space.high, (4,)), bound)


def test_with_running_statistics_carries_an_unbatched_stacks_statistics_over_reset():
    """Without VecEnv the state holds one copy of the statistics, taken whole (the first copy is taken only under
    VecEnv): after 5 steps the rebuilt stack's reset is the reset of a stack built with those statistics."""
    base, params = envs.make("CartPole-v1")
    env = NormalizeObservation(FlattenObservation(base))
    _, state = env.reset(jax.random.key(0), params)
    for key in jax.random.split(jax.random.key(1), 5):
        _, state, *_ = env.step(key, state, jnp.int32(1), params)
    seen = envs.running_statistics(state)["observation"][0]
    assert int(seen.count) > 1
    _, restarted = envs.with_running_statistics(env, state).reset(jax.random.key(2), params)
    _, built = NormalizeObservation(FlattenObservation(base), initial_statistics=seen).reset(jax.random.key(2), params)
    carried, expected = (envs.running_statistics(s)["observation"][0] for s in (restarted, built))
    assert int(carried.count) == int(seen.count) + 1  # the reset's observation merged in, as always
    for got, want in zip(jax.tree_util.tree_leaves(carried), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(got, want)


def test_tabular_env_edges_spaces_and_the_truncation_bound():
    # A limit of one step is valid; the MDP is continuing (never terminated); one-hot observations lie in [0, 1]; the
    # state space's time counts the default params' limit when no params are given.
    env = TabularEnv(chain_mdp(num_states=4), max_steps_in_episode=1)
    params = env.default_params
    assert params.max_steps_in_episode == 1
    _, state = env.reset(jax.random.key(0), params)
    assert not bool(env.is_terminated(state, params))
    space = env.observation_space(params)
    assert (float(space.low), float(space.high), space.shape) == (0.0, 1.0, (4,))
    assert env.state_space().spaces["time"].n == 1
    assert env.state_space(params.replace(max_steps_in_episode=7)).spaces["time"].n == 7
    # gamma^H max|R| / (1 - gamma) with rewards of both signs, for a batch of two MDPs.
    base = random_mdp(jax.random.key(3), 3, 2, discount=0.8)
    rewards = jnp.array([[0.5, -3.0], [1.0, 2.0], [0.0, -0.25]])
    mdps = jax.tree_util.tree_map(lambda *x: jnp.stack(x), base.replace(reward=rewards),
                                  base.replace(reward=0.5 * rewards))
    np.testing.assert_allclose(np.asarray(envs.truncation_bias_bound(mdps, 4)),
                               [0.8**4 * 3.0 / 0.2, 0.8**4 * 1.5 / 0.2], rtol=1e-6)


def test_space_queries_read_the_params_given_or_else_the_defaults():
    # Pendulum's action box is its params' max_torque: given params are read, not the defaults; without params the
    # defaults are (CartPole's observation space reads its thresholds from them).
    env, params = envs.make("Pendulum-v1")
    low, high = envs.action_bounds(env, params.replace(max_torque=0.5))
    np.testing.assert_array_equal(np.asarray(low), [-0.5])
    np.testing.assert_array_equal(np.asarray(high), [0.5])
    np.testing.assert_array_equal(np.asarray(envs.action_bounds(env)[1]), [2.0])
    assert envs.observation_size(envs.make("CartPole-v1")[0]) == 4 and envs.action_dim(env) == 1
