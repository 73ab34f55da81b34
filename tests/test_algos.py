"""Online algorithms: config validation, learning on CartPole, reproducibility, vmap over seeds and
hyperparameters, TRPO's radius and entropy bonus, continuous actions, progress callbacks (the exact-gradient,
unroll and split-optimiser checks are in test_algo_updates.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

from pgjax import algos, envs, nets, runs

# Short CartPole runs that clearly improve (random policy: ~22).
SHORT = {
    "ppo": dict(total_timesteps=40_960, num_envs=4, num_steps=128, learning_rate=2.5e-3),
    "a2c": dict(total_timesteps=40_960, num_envs=8, num_steps=16, learning_rate=3e-3),
    "trpo": dict(total_timesteps=40_960, num_envs=8, num_steps=128, max_kl=0.02),
    "reinforce": dict(total_timesteps=60_000, num_envs=4, num_steps=500, learning_rate=1e-2),
}


class _CartPoleRuns(dict):
    """name -> (config, jitted vmapped train, its run on 2 seeds), each run on first use (a test that needs PPO alone
    compiles PPO alone)."""

    def __missing__(self, name):
        config_cls, make_train = algos.get(name)
        config = config_cls(env_id="CartPole-v1", **SHORT[name])
        train = jax.jit(jax.vmap(make_train(config)))
        self[name] = (config, train, train(jax.random.split(jax.random.key(0), 2)))
        return self[name]


@pytest.fixture(scope="module")
def cartpole_runs():
    return _CartPoleRuns()


@pytest.mark.parametrize("name", list(SHORT))
def test_each_algorithm_improves_cartpole(cartpole_runs, name):
    _, _, output = cartpole_runs[name]
    returns = runs.smoothed_returns(np.asarray(output.metrics["episode_return"]))
    first, last = np.nanmean(returns[:, :3]), np.nanmean(returns[:, -3:])
    assert first < 40
    assert last > 2.5 * first, (name, first, last)
    for key, value in output.metrics.items():
        if key not in runs.MAY_BE_NAN:
            assert np.all(np.isfinite(np.asarray(value))), (name, key)


def test_gradient_norm_metrics(cartpole_runs):
    """Every algorithm reports its pre-clip gradient norm (TRPO: the value fit's); early in a CartPole run the
    critic's large errors make it exceed max_grad_norm (0.5), so the clip binds."""
    for name, norm_key in [("ppo", "grad_norm"), ("a2c", "grad_norm"), ("reinforce", "grad_norm"),
                           ("trpo", "value_grad_norm")]:
        norms = np.asarray(cartpole_runs[name][2].metrics[norm_key])
        assert norms.shape == np.asarray(cartpole_runs[name][2].metrics["env_steps"]).shape, name
        assert np.all(np.isfinite(norms)) and np.all(norms > 0), name
        assert norms[:, :3].mean() > 0.5, (name, norms[:, :3].mean())


def test_lr_metric_is_the_annealed_schedule(cartpole_runs):
    """Every algorithm reports the step size of each update's first gradient step: lr_0 (1 - u / num_updates)."""
    for name in SHORT:  # by name: iterating the fixture's dict covered only the runs earlier tests had made
        config, _, output = cartpole_runs[name]
        u = np.arange(config.num_updates)
        expected = config.learning_rate * (1.0 - u / config.num_updates)
        np.testing.assert_allclose(np.asarray(output.metrics["lr"]), np.stack([expected] * 2), rtol=1e-6,
                                   atol=1e-6 * config.learning_rate, err_msg=name)  # float32: 1 - u/U near U
    hp = algos.PPOConfig().hyperparams()
    floor = algos.common.update_learning_rate(algos.PPOConfig(final_lr_fraction=0.1), hp | {"final_lr_fraction": 0.1},
                                              jnp.int32(976))
    assert abs(float(floor) - 2.5e-5) < 1e-10  # the last of 976 updates + 1: the floor, 10% of 2.5e-4
    constant = algos.PPOConfig(anneal_lr=False)
    assert float(algos.common.update_learning_rate(constant, hp, jnp.int32(500))) == np.float32(2.5e-4)


def test_same_seed_same_result_and_vmap_equals_single(cartpole_runs):
    config, train, output = cartpole_runs["ppo"]
    again = train(jax.random.split(jax.random.key(0), 2))
    np.testing.assert_array_equal(np.asarray(again.metrics["loss"]), np.asarray(output.metrics["loss"]))
    # One seed alone computes the same run up to float32 rounding of batched vs unbatched kernels
    # (~1e-6 per update); over many updates chaotic amplification lets the runs drift apart, so
    # compare the first updates.
    single = jax.jit(algos.ppo.make_train(config))(jax.random.split(jax.random.key(0), 2)[1])
    early = slice(0, 5)
    np.testing.assert_array_equal(
        np.asarray(single.metrics["episode_return"][early]), np.asarray(output.metrics["episode_return"][1, early])
    )
    np.testing.assert_allclose(
        np.asarray(single.metrics["loss"][early]), np.asarray(output.metrics["loss"][1, early]), rtol=1e-4, atol=1e-5
    )


def test_hyperparameter_vmap_equals_separate_configs():
    config = algos.PPOConfig(total_timesteps=2_048, num_envs=4, num_steps=64, num_minibatches=2, num_epochs=2)
    train = algos.ppo.make_train(config)
    rates = jnp.array([1e-3, 1e-2])
    hp = {k: jnp.stack([v, v]) for k, v in config.hyperparams().items()}
    hp["learning_rate"] = rates
    sweep = jax.jit(jax.vmap(train, in_axes=(None, 0)))
    swept = sweep(jax.random.key(3), hp)
    alone_train = jax.jit(train)  # one compile for both rates: hyperparameters are arguments
    for i, lr in enumerate([1e-3, 1e-2]):
        alone_hp = config.replace(learning_rate=lr).hyperparams()  # what a config with this rate runs
        np.testing.assert_array_equal(np.asarray(alone_hp["learning_rate"]), np.asarray(hp["learning_rate"][i]))
        # At the same batch shape a lane does not depend on the other lanes: that config in both lanes, bit for bit.
        both = sweep(jax.random.key(3), {k: jnp.stack([v, v]) for k, v in alone_hp.items()})
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b[0])),
                     (swept.agent.params, swept.metrics), (both.agent.params, both.metrics))
        # Unbatched, it runs the same up to float32 rounding of batched kernels, which chaotic amplification grows
        # over the updates (1% by the 8th at one key offset of 50): compare the first five, as for seeds.
        alone = alone_train(jax.random.key(3), alone_hp)
        np.testing.assert_allclose(np.asarray(swept.metrics["loss"][i, :5]), np.asarray(alone.metrics["loss"][:5]),
                                   rtol=1e-3, atol=1e-4)
    assert not np.allclose(np.asarray(swept.metrics["loss"][0]), np.asarray(swept.metrics["loss"][1]))


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (algos.PPOConfig, dict(num_minibatches=3), r"PPOConfig.num_minibatches \(3\) must divide"),
        (algos.PPOConfig, dict(num_envs=0), r"PPOConfig.num_envs must be a positive int"),
        (algos.PPOConfig, dict(num_steps=-5), r"PPOConfig.num_steps"),
        (algos.PPOConfig, dict(discount=1.5), r"PPOConfig.discount must lie in \(0, 1\]"),
        (algos.PPOConfig, dict(discount=0.0), r"PPOConfig.discount"),
        (algos.PPOConfig, dict(env_id="CartPole-v9"), r"PPOConfig.env_id 'CartPole-v9' is not a known environment"),
        (algos.PPOConfig, dict(total_timesteps=100), r"PPOConfig.total_timesteps \(100\) must be at least"),
        (algos.PPOConfig, dict(learning_rate=-1.0), r"PPOConfig.learning_rate must be a positive number"),
        (algos.PPOConfig, dict(activation="gelu"), r"PPOConfig.activation"),
        (algos.TRPOConfig, dict(compute_dtype="float16"), r"TRPOConfig.compute_dtype must be one of"),
        (algos.PPOConfig, dict(clip_eps=0.0), r"PPOConfig.clip_eps"),
        (algos.A2CConfig, dict(advantage_method="td"), r"A2CConfig.advantage_method"),
        (algos.A2CConfig, dict(advantage_method="nstep", n_steps_return=100, num_steps=16),
         r"A2CConfig.n_steps_return"),
        (algos.TRPOConfig, dict(max_kl=0.0), r"TRPOConfig.max_kl"),
        (algos.TRPOConfig, dict(ent_coef=-0.1), r"TRPOConfig.ent_coef"),
        (algos.TRPOConfig, dict(vf_minibatches=7), r"TRPOConfig.vf_minibatches \(7\) must divide"),
        (algos.REINFORCEConfig, dict(gae_lambda=2.0), r"REINFORCEConfig.gae_lambda"),
        (algos.REINFORCEConfig, dict(discount_weighting=True), r"REINFORCEConfig.discount_weighting .* episodic=True"),
        (algos.PPOConfig, dict(hidden_sizes="64"), r"PPOConfig.hidden_sizes must be a tuple of ints"),  # was (6, 4)
        (algos.PPOConfig, dict(hidden_sizes=(64.7,)), r"PPOConfig.hidden_sizes must be a tuple of ints"),
        (algos.PPOConfig, dict(anneal_lr="False"), r"PPOConfig.anneal_lr must be True or False; got 'False'"),
        (algos.A2CConfig, dict(learning_rate=True), r"A2CConfig.learning_rate must be a number; got True"),
        (algos.TRPOConfig, dict(discount="0.9"), r"TRPOConfig.discount must be a number"),  # was a TypeError
        (algos.PPOConfig, dict(env_kwargs="x"), r"PPOConfig.env_kwargs must be a dict"),
        (algos.PPOConfig, dict(env_kwargs=(("max_steps_in_episode",),)), r"PPOConfig.env_kwargs must be a dict"),
        (algos.A2CConfig, dict(env_randomize_observe=True), r"A2CConfig.env_randomize_observe"),
        (algos.PPOConfig, dict(env_id="tabular:nothing"), r"PPOConfig.env_id 'tabular:nothing' is not a known"),
        (algos.PPOConfig, dict(num_envs=2, num_steps=4, num_minibatches=8),
         r"PPOConfig.normalize_advantages standardises advantages over minibatches .* hold 1 sample"),
        (algos.A2CConfig, dict(num_envs=1, num_steps=1, total_timesteps=8), r"A2CConfig.normalize_advantages"),
        (algos.PPOConfig, dict(unroll=-1), r"PPOConfig.unroll must be an int >= 1, or 0"),
        (algos.A2CConfig, dict(unroll=2.5), r"A2CConfig.unroll"),
        (algos.PPOConfig, dict(final_lr_fraction=1.5), r"PPOConfig.final_lr_fraction must lie in \[0, 1\]"),
        (algos.TRPOConfig, dict(final_lr_fraction=-0.1), r"TRPOConfig.final_lr_fraction must lie in \[0, 1\]"),
        (algos.PPOConfig, dict(final_lr_fraction=0.1, anneal_lr=False), r"only applies with anneal_lr=True"),
        (algos.A2CConfig, dict(reward_scale=0.0), r"A2CConfig.reward_scale must be a positive number"),
        (algos.PPOConfig, dict(eval_every=-1), r"PPOConfig.eval_every must be an int >= 0"),
        (algos.A2CConfig, dict(eval_episodes=0), r"A2CConfig.eval_episodes must be a positive int"),
        (algos.PPOConfig, dict(total_timesteps=2**31), r"PPOConfig.total_timesteps \(2,147,483,648\) runs more than"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_configs_at_their_bounds_are_accepted():
    """The edges the checks above must let through: an n-step return as long as the rollout (the n-step check only
    for advantage_method="nstep"), Fisher states from every num_steps-th step, discount 1, 2**31 - 1 env steps,
    advantages standardised over a batch of 2, a final learning-rate fraction of 1, a layer of 1 unit, 0-d arrays
    as numbers."""
    assert algos.A2CConfig(advantage_method="nstep", n_steps_return=16, num_steps=16).n_steps_return == 16
    assert algos.A2CConfig(advantage_method="gae", n_steps_return=100, num_steps=16).n_steps_return == 100
    assert algos.TRPOConfig(fisher_subsample=16, num_steps=16).fisher_subsample == 16
    assert algos.PPOConfig(discount=1.0).discount == 1.0
    # 2**31 - 1 env steps (a prime: one env, one step per update) is the most the int32 step count holds.
    most = algos.A2CConfig(num_envs=1, num_steps=1, normalize_advantages=False, total_timesteps=2**31 - 1)
    assert most.num_updates * most.batch_size == 2**31 - 1
    assert algos.A2CConfig(num_envs=1, num_steps=2, total_timesteps=2).normalize_advantages  # 2 samples standardise
    assert algos.PPOConfig(final_lr_fraction=1.0).final_lr_fraction == 1.0  # no annealing, by another name
    assert algos.PPOConfig(hidden_sizes=(1,)).hidden_sizes == (1,)
    log_range = (("length", 0.5, 2.0, "log"),)  # (field, low, high, "log") entries as well as triples
    assert algos.A2CConfig(env_randomize=log_range).env_randomize == log_range
    zero_d = algos.PPOConfig(num_envs=jnp.array(4), anneal_lr=np.array(False), learning_rate=np.array(1e-3))
    assert (zero_d.num_envs, zero_d.anneal_lr, zero_d.learning_rate) == (4, False, 1e-3)  # 0-d arrays: their numbers
    assert (type(zero_d.num_envs), type(zero_d.anneal_lr)) == (int, bool)


@pytest.mark.exact_compiler
def test_in_run_evaluation_evaluates_the_updated_policy_and_leaves_training_unchanged():
    """eval_every: after every eval_every-th update and the last, eval_return is the mean return of eval_episodes
    episodes of the parameters just updated, observation statistics frozen at their training values (the same
    episodes as `runs.evaluate` with the run's evaluation key); NaN between; the training run is unchanged."""
    config = algos.PPOConfig(total_timesteps=2560, num_steps=64, normalize_observations=True, eval_every=4,
                             eval_episodes=3)  # 10 updates: evaluations after updates 3, 7 and 9
    key = jax.random.key(3)
    with_eval = jax.jit(algos.ppo.make_train(config))(key)
    without = jax.jit(algos.ppo.make_train(config.replace(eval_every=0)))(key)
    trained = {k: v for k, v in with_eval.metrics.items() if k != "eval_return"}
    assert set(trained) == set(without.metrics)
    for a, b in zip(jax.tree_util.tree_leaves((with_eval.agent, with_eval.env_state, trained)),
                    jax.tree_util.tree_leaves((without.agent, without.env_state, without.metrics))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    evals = np.asarray(with_eval.metrics["eval_return"])
    np.testing.assert_array_equal(np.flatnonzero(~np.isnan(evals)), [3, 7, 9])
    stats = jax.tree_util.tree_map(lambda x: x[0], runs.observation_statistics(with_eval.env_state))
    assert float(stats.count) > config.total_timesteps / config.num_envs  # trained statistics, not the initial ones
    eval_key = algos.common.evaluation_key(key, 9)
    direct = np.asarray(runs.evaluate(eval_key, config, with_eval.agent.params, stats, num_episodes=3))
    np.testing.assert_allclose(evals[9], direct.mean(), rtol=1e-6)
    assert evals[9] != evals[3]  # later parameters: other episodes


def test_evaluation_takes_the_mode_or_samples(monkeypatch):
    """A CartPole policy that ignores the state, pi(left) = 0.52: its mode pushes left every step and the pole falls
    in ~9-10 steps, while its samples move almost like a random policy (~22 steps on average). eval_stochastic
    reaches the in-run evaluation as deterministic=False."""
    config = algos.PPOConfig()
    spec = algos.common.make_env(config)
    network = algos.common.actor_critic(config, spec)
    params = network.init(jax.random.key(0), jnp.zeros((spec.observation_size,)))
    head = {"kernel": jnp.zeros((64, 2)), "bias": jnp.array([0.08, 0.0])}  # logits (0.08, 0) in every state
    params = {"params": {**params["params"], "actor": {**params["params"]["actor"], "head": {"Dense_0": head}}}}
    mode = np.asarray(runs.evaluate(jax.random.key(1), config, params, num_episodes=64, deterministic=True))
    sampled = np.asarray(runs.evaluate(jax.random.key(1), config, params, num_episodes=64, deterministic=False))
    assert mode.mean() < 12 and sampled.mean() > 16, (mode.mean(), sampled.mean())

    seen = []
    build = algos.evaluation.make_episode_returns
    monkeypatch.setattr(algos.evaluation, "make_episode_returns",
                        lambda *args, **kwargs: seen.append(kwargs["deterministic"]) or build(*args, **kwargs))
    for stochastic in (False, True):
        algos.ppo.make_train(config.replace(eval_every=5, eval_stochastic=stochastic))  # builds, compiles nothing
    assert seen == [True, False]


def test_unroll_default_picks_per_backend(monkeypatch):
    config = algos.PPOConfig()
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert config.unroll == 0 and config.scan_unroll == 1
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert config.scan_unroll == algos.common.ACCELERATOR_UNROLL == 8
    assert config.replace(unroll=3).scan_unroll == 3  # an explicit factor wins on any backend


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="Unknown algorithm"):
        algos.get("sac")


def test_reward_scale_scales_what_the_update_learns_from_not_the_reported_returns():
    """reward_scale c (a vmappable hyperparameter) hands the update c * r_t; episode returns stay raw."""
    config = algos.A2CConfig(total_timesteps=2 * 256, num_envs=4, num_steps=64)
    spec = algos.common.make_env(config)
    a2c = algos.a2c.make_algorithm(config, algos.common.actor_critic(config, spec))

    def update(agent, batch, key, hp, update_idx):
        agent, metrics = a2c.update(agent, batch, key, hp, update_idx)
        return agent, {**metrics, "reward_sum": jnp.sum(batch.reward)}

    train = algos.common.make_on_policy_train(config, a2c._replace(update=update), spec)
    hp = {k: jnp.stack([v, v]) for k, v in config.hyperparams().items()}
    hp["reward_scale"] = jnp.array([1.0, 0.25])
    out = jax.jit(jax.vmap(train, in_axes=(None, 0)))(jax.random.key(0), hp)
    first = {k: np.asarray(v[:, 0]) for k, v in out.metrics.items()}  # the same rollout in both runs
    np.testing.assert_allclose(first["reward_sum"], [256.0, 64.0])  # CartPole: reward 1 per step
    np.testing.assert_array_equal(first["episode_return"][0], first["episode_return"][1])
    assert first["episodes_finished"][0] > 0 and first["episode_return"][0] > 1


def test_trpo_updates_respect_the_kl_radius(cartpole_runs):
    config, _, output = cartpole_runs["trpo"]
    kl = np.asarray(output.metrics["kl"])
    accepted = np.asarray(output.metrics["step_accepted"])
    assert np.all(kl <= config.max_kl * (1 + 1e-4))
    assert accepted.mean() > 0.5  # the line search mostly finds an improving step
    assert np.all(np.asarray(output.metrics["surrogate_improvement"])[accepted > 0] > 0)


def test_trpo_entropy_bonus_widens_the_policy_within_the_radius():
    """With zero advantages the surrogate's only gradient is c_H grad H: with ent_coef > 0 the step raises the
    Gaussian's entropy (its log-std) and stays inside the KL radius; with ent_coef = 0 there is nothing to gain
    and the line search keeps the old parameters."""
    config = algos.TRPOConfig(env_id="Pendulum-v1", total_timesteps=2 * 64, num_envs=2, num_steps=64, vf_minibatches=2)
    spec = algos.common.make_env(config)
    network = algos.common.actor_critic(config, spec)
    trpo = algos.trpo.make_algorithm(config, network)
    agent = trpo.init(jax.random.key(0), spec, config.hyperparams())
    k_obs, k_act = jax.random.split(jax.random.key(1))
    obs = jax.random.normal(k_obs, (64, 2, 3))
    dist, _ = network.apply(agent.params, obs)
    action = dist.sample(k_act)
    zeros = jnp.zeros((64, 2))
    no = jnp.zeros((64, 2), bool)
    batch = algos.common.Transition(obs, action, zeros, no, no, dist.log_prob(action), zeros, obs, zeros, no, zeros,
                                    zeros)

    @jax.jit
    def step(ent_coef):
        hp = {**config.hyperparams(), "ent_coef": ent_coef}
        new, metrics = trpo.update(agent, batch, jax.random.key(2), hp, 0)
        return new.params, metrics

    def entropy(params):
        return float(jnp.mean(network.apply(params, obs[0])[0].entropy()))

    widened, metrics = step(jnp.float32(0.05))
    assert float(metrics["step_accepted"]) == 1.0
    assert 0.0 < float(metrics["kl"]) <= config.max_kl * (1 + 1e-4)
    assert entropy(widened) > entropy(agent.params) + 0.05  # a full natural step: KL 0.01 ~ 0.14 nats of log-std
    same, metrics = step(jnp.float32(0.0))
    assert float(metrics["step_accepted"]) == 0.0
    actor = lambda p: p["params"]["actor"]  # noqa: E731 (the critic is fitted either way)
    for a, b in zip(jax.tree_util.tree_leaves(actor(same)), jax.tree_util.tree_leaves(actor(agent.params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["trpo", "a2c"])
def test_continuous_actions_on_pendulum(name):
    """Diagonal-Gaussian policies with observation normalisation and action clipping run and stay finite."""
    config_cls, make_train = algos.get(name)
    config = config_cls(env_id="Pendulum-v1", total_timesteps=4_096, num_envs=4, num_steps=64,
                        normalize_observations=True)
    output = jax.jit(make_train(config))(jax.random.key(0))
    returns = np.asarray(output.metrics["episode_return"])
    finished = returns[~np.isnan(returns)]
    assert finished.size > 0 and np.all(finished < 0) and np.all(finished > -16.3 * 200)  # Pendulum's reward range
    assert np.all(np.isfinite(np.asarray(output.metrics["entropy"])))
    assert np.asarray(output.metrics["env_steps"])[-1] == 4_096


@pytest.mark.exact_compiler
def test_normalized_rewards_change_what_is_learned_not_what_is_reported():
    """normalize_rewards puts NormalizeReward in the stack: the first rollout (same key, same initial policy) reports
    the same raw episode returns, the losses differ, and the statistics cover every step of the run."""
    from pgjax import runs

    base = algos.A2CConfig(env_id="Pendulum-v1", total_timesteps=3200, num_envs=4, num_steps=200,
                           normalize_observations=True)  # one 200-step episode per environment and update
    plain, scaled = (jax.jit(algos.a2c.make_train(base.replace(normalize_rewards=flag)))(jax.random.key(0))
                     for flag in (False, True))
    first = np.asarray(plain.metrics["episode_return"])[0]
    assert first < -500  # Pendulum's raw returns: hundreds to thousands below zero
    np.testing.assert_array_equal(np.asarray(scaled.metrics["episode_return"])[0], first)
    assert not np.allclose(np.asarray(scaled.metrics["loss"]), np.asarray(plain.metrics["loss"]))
    stats = scaled.env_state.return_statistics
    np.testing.assert_array_equal(stats.count, [3200] * 4)  # every step of every environment, shared
    assert np.all(np.asarray(stats.var) > 1.0)
    # The observation statistics are still found below the reward normaliser (saved with the run).
    assert int(runs.observation_statistics(scaled.env_state).count[0]) == 4 + 3200
    # Under an outer vmap each seed keeps its own statistics (pmean runs over a seed's environments only): seed 0
    # of two is the run above (to float32 rounding of batched kernels), seed 1 another.
    train = algos.a2c.make_train(base.replace(normalize_rewards=True))
    both = jax.jit(jax.vmap(train))(jax.numpy.stack([jax.random.key(0), jax.random.key(1)])).env_state.return_statistics
    np.testing.assert_allclose(np.asarray(both.var[0]), np.asarray(stats.var), rtol=1e-4)
    assert abs(float(both.var[1, 0]) / float(both.var[0, 0]) - 1.0) > 1e-3


def test_progress_callback_every_kth_update_and_the_last(monkeypatch):
    """The loop reports to the host every num_updates // PROGRESS_CALLS updates and after the last one (each
    update when there are fewer); env_steps counts the steps after each update; evaluations come after every
    eval_every-th update and the last."""
    monkeypatch.setattr(algos.common, "PROGRESS_CALLS", 4)
    config = algos.A2CConfig(total_timesteps=14 * 64, num_envs=4, num_steps=16)  # 14 updates -> every 3rd
    seen = []
    train = algos.a2c.make_train(config, progress=lambda i, m: seen.append((int(i), float(m["loss"]))))
    out = jax.block_until_ready(jax.jit(train)(jax.random.key(0)))
    assert [i for i, _ in seen] == [0, 3, 6, 9, 12, 13]
    np.testing.assert_allclose([loss for _, loss in seen], np.asarray(out.metrics["loss"])[[0, 3, 6, 9, 12, 13]],
                               rtol=1e-6)
    np.testing.assert_array_equal(out.metrics["env_steps"], np.arange(1, 15) * 64)  # after each update
    seen.clear()  # fewer updates than PROGRESS_CALLS: every one reported
    short = config.replace(total_timesteps=4 * 64, eval_every=3, eval_episodes=1)
    out = jax.jit(algos.a2c.make_train(short, progress=lambda i, m: seen.append((int(i), 0))))(jax.random.key(0))
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    # Evaluated after every eval_every-th update and after the last one.
    np.testing.assert_array_equal(np.isnan(out.metrics["eval_return"]), [True, True, False, False])


@pytest.mark.exact_compiler
def test_train_in_segments_equals_the_one_call_run_and_resumes(cartpole_runs, tmp_path):
    """runs.train_in_segments: two segments of 40 updates give the one-call run's metrics and agent bit for bit;
    resume=True with no file starts afresh, with a finished run's file returns it as saved; a checkpoint of
    another run (other seeds, config or hyperparameters, arrays of the same shapes) and bad arguments raise."""
    config, _, output = cartpole_runs["ppo"]
    train = algos.ppo.make_train(config)
    keys = jax.random.split(jax.random.key(0), 2)
    path = str(tmp_path / "drive" / "ppo.npz")  # a folder not yet made (save makes it)
    done = runs.train_in_segments(train, keys, 40, path, resume=True)
    assert done.first_update == 0 and config.num_updates == 80
    for name, value in output.metrics.items():
        np.testing.assert_array_equal(done.output.metrics[name], np.asarray(value), err_msg=name)
    for a, b in zip(jax.tree_util.tree_leaves(done.output.agent), jax.tree_util.tree_leaves(output.agent)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = runs.train_in_segments(train, keys, 40, path, resume=True)  # the checkpoint after the last update
    assert again.first_update == 80
    np.testing.assert_array_equal(again.output.metrics["loss"], done.output.metrics["loss"])
    # Another run's checkpoint is refused, even where every array has the same shape.
    with pytest.raises(ValueError, match="other seeds"):
        runs.train_in_segments(train, jax.random.split(jax.random.key(1), 2), 40, path, resume=True)
    other = algos.ppo.make_train(config.replace(learning_rate=1e-3))
    with pytest.raises(ValueError, match=r"another config \(learning_rate 0.0025 there, 0.001 here\)"):
        runs.train_in_segments(other, keys, 40, path, resume=True)
    hp = {k: jnp.stack([v, v]) for k, v in config.hyperparams().items()}
    with pytest.raises(ValueError, match="other per-lane hyperparameters"):
        runs.train_in_segments(train, keys, 40, path, hp, resume=True)
    with pytest.raises(ValueError, match="every .* must be a positive int"):
        runs.train_in_segments(train, keys, 0, path)
    with pytest.raises(ValueError, match="must come from an algorithm's make_train"):
        runs.train_in_segments(lambda key: train(key), keys, 40, path)
    # A directory for the path: refused before compiling, where it was an IsADirectoryError at the first save.
    with pytest.raises(ValueError, match=r"train_in_segments: path: .*drive is a directory; give the path of a file"):
        runs.train_in_segments(train, keys, 40, os.path.dirname(path))


def test_evaluating_a_normalising_policy_needs_its_statistics():
    """Without the trained statistics an evaluation ran the policy on raw observations (empty statistics: mean 0,
    var 1) and reported other returns without a word."""
    config = algos.PPOConfig(normalize_observations=True)
    spec = algos.common.make_env(config)
    params = algos.common.init_params(algos.common.actor_critic(config, spec), spec, jax.random.key(0))
    with pytest.raises(ValueError, match="needs the trained observation statistics"):
        runs.evaluate(jax.random.key(0), config, params, None, 2)


def test_episodes_whose_dynamics_break_are_not_returns():
    """Params the dynamics cannot run with (CartPole at length 0, reached through a grid lane's or randomised
    params rather than envs.make, which checks) gave NaN observations, and each evaluation episode a plausible
    return (2.0, as the observation thresholds never fire): now NaN, as an episode that never ended."""
    from pgjax import envs
    config = algos.PPOConfig(hidden_sizes=(8,))
    spec = algos.common.make_env(config)
    network = algos.common.actor_critic(config, spec)
    params = algos.common.init_params(network, spec, jax.random.key(0))
    episode_returns = algos.evaluation.make_episode_returns("CartPole-v1", (), network, 3)
    healthy = episode_returns(jax.random.key(1), params)
    assert np.all(np.isfinite(np.asarray(healthy)))
    broken = envs.override_params("CartPole-v1", spec.params, {"length": 0.0})
    assert np.all(np.isnan(np.asarray(episode_returns(jax.random.key(1), params, None, broken))))
    # Episodes cut at the step limit are returns too: 5 steps from upright cannot tip the pole, so each returns 5.
    short = envs.override_params("CartPole-v1", spec.params, {"max_steps_in_episode": 5})
    np.testing.assert_array_equal(np.asarray(episode_returns(jax.random.key(1), params, None, short)), 5.0)


def test_normalized_rewards_use_each_lanes_discount():
    """A discount swept per lane with normalize_rewards: each lane's normaliser runs its return at the lane's gamma
    (it kept the config's, so lane 1 below learned from rewards scaled by a 0.99-return's spread), the same run as
    that discount's own config (to batched-kernel rounding)."""
    base = algos.A2CConfig(env_id="Pendulum-v1", total_timesteps=2 * 4 * 64, num_envs=4, num_steps=64,
                           normalize_rewards=True)
    hp = {k: jnp.stack([v, v]) for k, v in base.hyperparams().items()}
    hp["discount"] = jnp.array([0.99, 0.9], jnp.float32)
    keys = jnp.stack([jax.random.key(0)] * 2)
    swept = jax.jit(jax.vmap(algos.a2c.make_train(base)))(keys, hp)
    alone = jax.jit(jax.vmap(algos.a2c.make_train(base.replace(discount=0.9))))(keys[:1])

    def return_variance(out):
        found = []
        jax.tree_util.tree_map(lambda x: found.append(x) if isinstance(x, envs.NormalizeRewardState) else None,
                               out.env_state, is_leaf=lambda x: isinstance(x, envs.NormalizeRewardState))
        return np.asarray(found[0].return_statistics.var)[..., 0]  # [lanes], shared over the lane's environments

    np.testing.assert_allclose(return_variance(swept)[1], return_variance(alone)[0], rtol=1e-4)
    assert not np.isclose(return_variance(swept)[0], return_variance(swept)[1], rtol=0.1)
    np.testing.assert_allclose(np.asarray(swept.metrics["value_loss"])[1], np.asarray(alone.metrics["value_loss"])[0],
                               rtol=1e-4)


@struct.dataclass
class _TwoPhaseState(environment.EnvState):
    episode: jax.Array  # episodes ended so far: kept across the resets, which `step` below does itself
    length: jax.Array


@struct.dataclass
class _TwoPhaseParams(environment.EnvParams):
    max_steps_in_episode: int = 20
    nan_later: bool = False  # observations NaN from the second episode on
    nan_time_first: bool = False  # the time entry (only) NaN after the first step of the first episode


class _TwoPhase(environment.Environment):
    """Each environment's first episode lasts 1 or 3 steps (drawn from its reset key) and returns exactly 1 (paid on
    its last step); every later episode lasts 1 step and returns 10, its observation NaN with `nan_later`. The
    environments of a batch thus end at different steps, and one whose first episode was short plays more episodes
    while the others finish their first: the evaluation must keep each one's first return, 1."""

    @property
    def default_params(self):
        return _TwoPhaseParams()

    def reset_env(self, key, params):
        length = jnp.where(jax.random.bernoulli(key), 3, 1).astype(jnp.int32)
        state = _TwoPhaseState(time=jnp.int32(0), episode=jnp.int32(0), length=length)
        return self.get_obs(state, params), state

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        time = state.time + 1
        terminated = time >= state.length
        reward = jnp.where(state.episode == 0, jnp.where(terminated, 1.0, 0.0), 10.0).astype(jnp.float32)
        stepped = state.replace(time=time)
        after = _TwoPhaseState(time=jnp.where(terminated, 0, time), episode=state.episode + terminated,
                               length=jnp.where(terminated, 1, state.length))
        info = {"terminated": terminated, "truncated": jnp.bool_(False),
                "final_observation": self.get_obs(stepped, params)}
        return self.get_obs(after, params), after, reward, terminated, jnp.bool_(False), info

    def get_obs(self, state, params=None, key=None):
        obs = jnp.stack([state.time, state.episode]).astype(jnp.float32)
        nan = (params is not None) & params.nan_later & (state.episode > 0)
        nan_time = (params is not None) & params.nan_time_first & (state.episode == 0) & (state.time > 0)
        return jnp.where(nan, jnp.nan, obs).at[0].set(jnp.where(nan_time, jnp.nan, obs[0]))

    @property
    def name(self):
        return "TwoPhase-v0"

    @property
    def num_actions(self):
        return 2

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0.0, jnp.inf, (2,), jnp.float32)


def _two_phase_returns(nan_later, nan_time_first=False):
    """(the evaluation's per-episode returns on 16 _TwoPhase environments, each one's first-episode length)."""
    envs.register("TwoPhase-v0", _TwoPhase, overwrite=True)
    env, params = envs.make("TwoPhase-v0")
    params = params.replace(nan_later=nan_later, nan_time_first=nan_time_first)
    network = nets.ActorCritic(action_dim=2, discrete=True, hidden_sizes=(4,))
    net_params = network.init(jax.random.key(0), jnp.zeros(2))
    episode_returns = algos.evaluation.make_episode_returns("TwoPhase-v0", (), network, 16)
    key = jax.random.key(1)
    returns = jax.jit(episode_returns)(key, net_params, None, params)
    # The evaluation resets its VecEnv with the first half of its key: the first episodes' lengths.
    _, state = envs.VecEnv(env, 16).reset(jax.random.split(key)[0], params)
    return np.asarray(returns), np.asarray(state.length)


def test_evaluation_keeps_each_environments_first_episode():
    """make_episode_returns returns each environment's FIRST episode return (1 here, in closed form), also for an
    environment that ended a second episode (return 10) before the last one ended its first: without `& ~done` in
    its first-episode test the later return overwrote the first."""
    returns, first_lengths = _two_phase_returns(nan_later=False)
    assert set(first_lengths) == {1, 3}  # short first episodes go on to a second one while the long ones run
    np.testing.assert_array_equal(returns, np.ones(16, np.float32))


def test_evaluation_ignores_non_finite_observations_after_the_first_episode():
    """An observation that turns NaN only in an environment's second episode, played while others finish their
    first, does not make the finished first episode's return NaN: only steps before an environment's first end
    can break its episode (without `~done &` in the broken test every short first episode here became NaN)."""
    returns, first_lengths = _two_phase_returns(nan_later=True)
    assert set(first_lengths) == {1, 3}
    np.testing.assert_array_equal(returns, np.ones(16, np.float32))
    # One NaN entry of an observation before the first end breaks the episode, even with the other entry finite.
    returns, _ = _two_phase_returns(nan_later=False, nan_time_first=True)
    assert np.all(np.isnan(returns)), returns
