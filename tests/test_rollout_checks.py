"""Rollouts, TRPO's trust region and tabular building blocks against independent computations: hand re-stepping of
a deterministic chain, NumPy KLs, closed-form returns and hand-made datasets.

(Each test pins a behaviour that a mutation audit found unpinned: bootstrapping truncations from the pre-reset
observation, the line search's full-batch KL, the gridworld's goal reset, the MDP row-sum tolerance, DualDICE's 0 on
unseen pairs, the truncation-bias bound's 1 / (1 - gamma), and random_mdp's independent reward draw.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgjax.offline as off
from pgjax import tabular as tab
from pgjax.algos import common, ppo, trpo
from pgjax.envs import truncation_bias_bound


# ---------------------------------------------------------------------------
# common.rollout: next_obs is the observation before the auto-reset.
# ---------------------------------------------------------------------------


def _initial_rollout(config):
    """(network, agent, last observations, Transition [T, N]) of one `common.rollout` of config.num_steps steps by
    PPO's initial policy on config's environment (keys 0: init, 1: reset, 2: rollout)."""
    spec = common.make_env(config)
    network = common.actor_critic(config, spec)
    agent = ppo.make_algorithm(config, network).init(jax.random.key(0), spec, config.hyperparams())
    env_state, obs = spec.env.reset(jax.random.key(1), spec.params)[::-1]
    _, last_obs, batch = jax.jit(
        lambda k, s, o: common.rollout(k, spec, agent, common.sampling_act(network), common.critic_value(network),
                                       s, o, config.num_steps)
    )(jax.random.key(2), env_state, obs)
    return network, agent, last_obs, batch


def test_rollout_next_obs_is_the_pre_reset_observation_at_truncations():
    """On a deterministic chain (slip 0: action 0 moves left, action 1 right, every episode starts in state 0) with
    a time limit of 3, re-stepped by hand: next_obs[t] is the state the action led to, obs[t + 1] where the episode
    goes on, and at a truncation the state before the reset (not the new episode's start); next_value is the critic
    there, so a truncation bootstraps from the state the agent actually reached."""
    num_states, limit, num_envs, num_steps = 4, 3, 8, 8
    config = ppo.PPOConfig(env_id="tabular:chain", discount=0.9, num_envs=num_envs, num_steps=num_steps,
                           env_kwargs={"num_states": num_states, "slip": 0.0, "max_steps_in_episode": limit},
                           total_timesteps=num_envs * num_steps, num_minibatches=1, hidden_sizes=(8,))
    network, agent, last_obs, batch = _initial_rollout(config)

    eye = np.eye(num_states, dtype=np.float32)
    state = np.asarray(batch.obs).argmax(-1)  # [T, N]
    np.testing.assert_array_equal(np.asarray(batch.obs), eye[state])  # one-hot observations
    action = np.asarray(batch.action)
    reached = np.where(action == 1, np.minimum(state + 1, num_states - 1), np.maximum(state - 1, 0))
    truncated = (np.arange(num_steps) % limit == limit - 1)[:, None].repeat(num_envs, 1)
    np.testing.assert_array_equal(np.asarray(batch.truncated), truncated)
    assert not np.asarray(batch.terminated).any()
    # The hand re-stepping: every episode starts in state 0, then follows the actions.
    np.testing.assert_array_equal(state[0], 0)
    np.testing.assert_array_equal(state[1:], np.where(truncated[:-1], 0, reached[:-1]))
    np.testing.assert_array_equal(np.asarray(last_obs), eye[np.where(truncated[-1], 0, reached[-1])])
    # next_obs: the state reached, also at truncations (some of which are away from the start, so the post-reset
    # observation, state 0, would differ). A near-uniform policy ends 3/8 of its 3-step walks at 0: of 16
    # truncations fewer than 2 elsewhere has probability ~4e-6 (3 environments' 6 had 3%; one at key offset 44).
    assert (reached[truncated] != 0).sum() >= 2
    np.testing.assert_array_equal(np.asarray(batch.next_obs), eye[reached])
    np.testing.assert_array_equal(np.asarray(batch.next_obs)[:-1][~truncated[:-1]],
                                  np.asarray(batch.obs)[1:][~truncated[:-1]])
    # Values: the critic at obs and at the reached state.
    critic = lambda o: np.asarray(network.apply(agent.params, jnp.asarray(o), method="value"))  # noqa: E731
    np.testing.assert_allclose(np.asarray(batch.value), critic(eye[state]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(batch.next_value), critic(eye[reached]), rtol=1e-6, atol=1e-7)
    assert np.abs(critic(eye[reached]) - critic(eye[np.zeros_like(reached)]))[truncated & (reached != 0)].min() > 1e-4
    # Rewards: R(s, a) of the chain (left in state 0 pays 0.005, right in the last state pays 1).
    mdp = tab.chain_mdp(num_states, slip=0.0)
    np.testing.assert_allclose(np.asarray(batch.reward), np.asarray(mdp.reward)[state, action], rtol=1e-6)


# ---------------------------------------------------------------------------
# TRPO: the line search bounds the full batch's KL, whatever states the Fisher products use.
# ---------------------------------------------------------------------------


def _categorical_kl(old_logits, new_logits):
    """KL(softmax(old) || softmax(new)) per row, in float64 NumPy."""
    old_logits, new_logits = np.asarray(old_logits, np.float64), np.asarray(new_logits, np.float64)
    log_p = old_logits - np.log(np.exp(old_logits).sum(-1, keepdims=True))
    log_q = new_logits - np.log(np.exp(new_logits).sum(-1, keepdims=True))
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def test_rollout_draws_fresh_environment_randomness_at_every_step():
    """CartPole's dynamics are deterministic; only its resets draw (each state uniform in [-0.05, 0.05]). Every reset
    in a rollout must draw its own start: the same environment key at every step (each environment's resets all
    alike) passed every test before."""
    config = ppo.PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=300, total_timesteps=600, num_minibatches=1,
                           hidden_sizes=(8,))
    batch = _initial_rollout(config)[-1]
    done = np.asarray(batch.terminated | batch.truncated)[:-1]
    for env in range(config.num_envs):
        starts = np.asarray(batch.obs)[1:, env][done[:, env]]  # the first observation of every new episode
        assert len(starts) >= 5  # a near-uniform policy ends CartPole episodes every ~20 steps
        assert np.all(np.abs(starts) <= 0.05)
        assert len(np.unique(starts, axis=0)) == len(starts), f"environment {env} restarted from a repeated state"


def test_each_update_learns_with_a_key_its_rollout_did_not_use():
    """The training loop splits its key into a rollout key and an update key (PPO's minibatch shuffles). An act
    function that records the rollout's sampling noise in log_prob lets an update check that its key is not the
    one that noise came from (`rollout` draws it from split(key)[0]): reusing the rollout key passed every test."""
    config = ppo.PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=8, total_timesteps=48, num_minibatches=1,
                           hidden_sizes=(8,))
    spec = common.make_env(config)
    network = common.actor_critic(config, spec)
    base = ppo.make_algorithm(config, network)

    def act(agent, obs, noise):
        action, _ = base.act(agent, obs, noise)
        return action, noise[..., 0]  # the Gumbel noise of action 0, in place of the log-probability

    def update(agent, batch, key, hp, update_idx):
        redrawn = jax.random.gumbel(jax.random.split(key)[0], batch.log_prob.shape + (spec.action_dim,))[..., 0]
        return agent, {"noise_from_update_key": jnp.all(redrawn == batch.log_prob).astype(jnp.float32),
                       "noise_std": jnp.std(batch.log_prob)}

    algorithm = common.Algorithm(base.init, act, base.value, update)
    metrics = jax.jit(common.make_on_policy_train(config, algorithm, spec))(jax.random.key(3)).metrics
    assert np.all(np.asarray(metrics["noise_std"]) > 0.5)  # Gumbel noise (std 1.28) was recorded
    np.testing.assert_array_equal(np.asarray(metrics["noise_from_update_key"]), 0.0)


def test_trpo_accepted_step_keeps_the_full_batch_kl_in_the_trust_region():
    """With fisher_subsample = 2 the natural-gradient step is scaled on the even rollout steps' states (here small
    observations) while the odd steps' (large observations) move further: the line search must still check the KL
    on every state, so the accepted policy's full-batch mean KL(pi_old || pi_new), recomputed in NumPy from the
    parameters, is within max_kl (the full step, accepted on the subsample's KL alone, is not)."""
    T, N, D = 4, 4, 4
    config = trpo.TRPOConfig(env_id="CartPole-v1", num_envs=N, num_steps=T, total_timesteps=N * T, fisher_subsample=2,
                             hidden_sizes=(8,), vf_epochs=1, vf_minibatches=1, max_kl=0.01)
    spec = common.make_env(config)
    network = common.actor_critic(config, spec)
    algorithm = trpo.make_algorithm(config, network)
    hp = config.hyperparams()
    agent = algorithm.init(jax.random.key(0), spec, hp)
    k = jax.random.split(jax.random.key(1), 3)
    scale = jnp.where(jnp.arange(T) % 2 == 0, 0.05, 3.0)[:, None, None]
    obs = scale * jax.random.normal(k[0], (T, N, D))
    action = jax.random.bernoulli(k[1], 0.5, (T, N)).astype(jnp.int32)
    log_prob = network.apply(agent.params, obs, method="policy").log_prob(action)  # the agent collected the batch
    zeros = jnp.zeros((T, N))
    batch = common.Transition(
        obs=obs, action=action, reward=jax.random.normal(k[2], (T, N)), terminated=zeros.astype(bool),
        truncated=zeros.astype(bool), log_prob=log_prob, value=zeros, next_obs=obs, next_value=zeros,
        returned_episode=zeros.astype(bool), episode_return=zeros, episode_length=zeros,
    )
    new_agent, metrics = jax.jit(lambda a, b: algorithm.update(a, b, jax.random.key(2), hp, 0))(agent, batch)

    flat_obs = obs.reshape(-1, D)
    logits = lambda params: network.apply(params, flat_obs, method="policy").logits  # noqa: E731
    kl = _categorical_kl(logits(agent.params), logits(new_agent.params)).reshape(T, N)
    assert float(metrics["step_accepted"]) == 1.0
    assert kl.mean() > 0.1 * config.max_kl  # the policy moved
    assert kl.mean() <= config.max_kl * (1 + 1e-4), (kl.mean(), kl[::2].mean())
    np.testing.assert_allclose(float(metrics["kl"]), kl.mean(), rtol=1e-3)
    # The case in point: the Fisher subsample's KL understates the full batch's several times over.
    assert kl[::2].mean() < 0.25 * kl.mean()


# ---------------------------------------------------------------------------
# Tabular MDPs.
# ---------------------------------------------------------------------------


def test_gridworld_goal_teleports_to_the_start():
    """Any action in the goal (bottom-right) pays goal_reward and moves to the start (top-left) with probability 1;
    on a 1 x 2 grid with slip 0 and "always right", the return is gamma / (1 - gamma^2) (a goal reward every other
    step from t = 1), not gamma / (1 - gamma) (staying in the goal)."""
    mdp = tab.gridworld_mdp(height=3, width=3, slip=0.2, goal_reward=1.0, step_reward=-0.1)
    P, R = np.asarray(mdp.transition), np.asarray(mdp.reward)
    start, goal = 0, 8
    np.testing.assert_array_equal(P[goal, :, start], 1.0)
    np.testing.assert_array_equal(R[goal], 1.0)
    np.testing.assert_allclose(R[:goal], -0.1)

    gamma = 0.9
    line = tab.gridworld_mdp(height=1, width=2, slip=0.0, goal_reward=1.0, step_reward=0.0, discount=gamma)
    always_right = jnp.tile(jnp.array([0.0, 1.0, 0.0, 0.0]), (2, 1))
    np.testing.assert_allclose(float(tab.expected_return(line, always_right)), gamma / (1 - gamma**2), rtol=1e-5)


def test_mdp_rejects_transition_rows_summing_to_one_plus_1e_4():
    """Rows off by 1e-4 are no float32 rounding (a row of S = 2 float32 probabilities sums to 1 within ~1e-7):
    the MDP must refuse them; the same rows exactly normalised are accepted."""
    P = np.array([[[0.5, 0.5]], [[0.25, 0.75]]], np.float32)
    args = (jnp.zeros((2, 1)), jnp.array([1.0, 0.0]), jnp.asarray(0.9))
    tab.MDP(jnp.asarray(P), *args)
    off_by = P.copy()
    off_by[1, 0, 1] += 1e-4
    assert abs(off_by[1, 0].astype(np.float64).sum() - 1.0 - 1e-4) < 1e-6
    with pytest.raises(ValueError, match="rows must sum to 1"):
        tab.MDP(jnp.asarray(off_by), *args)


def test_truncation_bias_bound_is_exact_for_a_constant_reward():
    """With r = c everywhere, J - J_H = sum_{t >= H} gamma^t c = gamma^H c / (1 - gamma): the bound holds with
    equality (the exact J and J_H from `pgjax.tabular`, and the closed form)."""
    gamma, c, horizon = 0.9, 2.0, 5
    base = tab.random_mdp(jax.random.key(3), 3, 2, discount=gamma)
    mdp = tab.MDP(base.transition, jnp.full((3, 2), c), base.initial, base.discount)
    pi = tab.uniform_policy(3, 2)
    gap = float(tab.expected_return(mdp, pi)) - float(tab.finite_horizon_return(mdp, pi, horizon))
    closed_form = gamma**horizon * c / (1 - gamma)
    np.testing.assert_allclose(gap, closed_form, rtol=1e-4)
    np.testing.assert_allclose(float(truncation_bias_bound(mdp, horizon)), closed_form, rtol=1e-5)


def test_random_mdp_rewards_are_independent_of_the_transitions():
    """R ~ U[0, 1] and P ~ Dirichlet(1) are separate draws: over 4000 keys no reward entry correlates with any
    transition entry (|corr| ~ 1 / sqrt(4000) = 0.016 for independent draws); rewards drawn from the transitions'
    random numbers would correlate strongly."""
    keys = jax.random.split(jax.random.key(4), 4000)
    mdps = jax.vmap(lambda k: tab.random_mdp(k, 2, 2, concentration=1.0))(keys)
    reward = np.asarray(mdps.reward, np.float64).reshape(len(keys), -1)
    transition = np.asarray(mdps.transition, np.float64).reshape(len(keys), -1)
    assert 0.45 < reward.mean() < 0.55 and 0.07 < reward.var() < 0.1  # U[0, 1]: mean 1/2, variance 1/12
    corr = np.corrcoef(reward.T, transition.T)[: reward.shape[1], reward.shape[1]:]
    assert np.abs(corr).max() < 0.1, np.abs(corr).max()


# ---------------------------------------------------------------------------
# DualDICE: 0 on pairs the data never show.
# ---------------------------------------------------------------------------


def test_dualdice_ratio_is_zero_on_unseen_pairs():
    """A hand-made dataset of 2 episodes on S = 3, A = 2 never shows (1, 0) or (2, 1): the ratio is the documented 0
    there (the target's mass on them is reported by coverage, not given a weight), and positive on the seen pairs."""
    s = np.array([[0, 1, 2], [0, 2, 1]], np.int32)
    a = np.array([[0, 1, 0], [1, 0, 1]], np.int32)
    s_next = np.array([[1, 2, 0], [2, 1, 0]], np.int32)
    data = off.Dataset(jnp.asarray(s), jnp.asarray(a), jnp.ones((2, 3), jnp.float32), jnp.asarray(s_next),
                       jnp.zeros((2, 3), bool), jnp.ones((2, 3), bool), jnp.full((2, 3), np.log(0.5), jnp.float32),
                       jnp.asarray(s[:, 0]))
    counts = np.zeros((3, 2))
    np.add.at(counts, (s, a), 1)
    assert (counts == 0).sum() == 2
    w = np.asarray(off.dualdice_tabular(data, jnp.full((3, 2), 0.5), 0.9, on_uncovered="ignore"))
    np.testing.assert_array_equal(w[counts == 0], 0.0)
    assert np.all(np.isfinite(w)) and np.all(w[counts > 0] > 0)
