"""Algorithm updates against independent computations: the exact gradient on a tabular MDP, unrolled loops
against rolled ones, the split actor-critic optimiser against two optax optimisers.

(Split from test_algos.py so that pytest-xdist's per-file workers share the compile-heavy tests.)
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import algos
from pgjax import tabular as T
from pgjax.envs import make as make_env


def _small_config(name, **changes):
    config_cls, _ = algos.get(name)
    small = dict(total_timesteps=512, num_envs=4, num_steps=64, unroll=1)
    small.update(dict(num_minibatches=2, num_epochs=2) if name == "ppo" else dict(vf_minibatches=2, vf_epochs=2))
    return config_cls(**{**small, **changes})


@pytest.fixture(scope="module")
def rolled_run():
    """rolled_run(name): the small config's run at unroll 1 in float32, key 5 (compiled once per module)."""
    runs_ = {}

    def get(name):
        if name not in runs_:
            runs_[name] = jax.jit(algos.get(name)[1](_small_config(name)))(jax.random.key(5))
        return runs_[name]

    return get


@pytest.mark.parametrize("name", ["ppo", "trpo"])
def test_unroll_changes_speed_not_results(name, rolled_run):
    # The rollout, GAE and minibatch scans unrolled (4: the 2 minibatches whole, so the 2 epochs unrolled too)
    # compute the same run as unroll 1, up to float32 rounding of differently fused kernels. (4 minibatches at
    # unroll 8 cover the same paths and took 16.4 / 20.0 s to compile against 10.9 / 15.6 s: PPO / TRPO.)
    runs_ = [rolled_run(name), jax.jit(algos.get(name)[1](_small_config(name, unroll=4)))(jax.random.key(5))]
    np.testing.assert_allclose(
        np.asarray(runs_[0].metrics["loss" if name == "ppo" else "value_loss"]),
        np.asarray(runs_[1].metrics["loss" if name == "ppo" else "value_loss"]), rtol=1e-4, atol=1e-6,
    )
    # TRPO rescales each step to the KL radius through a conjugate-gradient solve and a line search, which carry
    # rounding further: at audit key offset 28 a parameter of 0.0082 differed by 1.5e-5 (0.18%), at 86 one of
    # 0.00036 by 1.9e-5 (the other 127 of its layer within 1%). A changed run (a step lost or repeated by the unrolled
    # loops) moves parameters by whole updates, far beyond 1% and 5e-5.
    rtol, atol = (1e-2, 5e-5) if name == "trpo" else (1e-7, 1e-5)
    for x, y in zip(jax.tree_util.tree_leaves(runs_[0].agent.params), jax.tree_util.tree_leaves(runs_[1].agent.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_bfloat16_networks_follow_the_float32_run(rolled_run):
    """compute_dtype="bfloat16" (hidden layers only) keeps float32 parameters and follows the float32 run to
    bfloat16 rounding: same episodes, losses within 1e-3, parameters within 1e-3, but not equal."""
    f32 = rolled_run("ppo")
    bf16 = jax.jit(algos.get("ppo")[1](_small_config("ppo", compute_dtype="bfloat16")))(jax.random.key(5))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(bf16.agent.params))
    for metric in ("loss", "value_loss", "entropy"):
        np.testing.assert_allclose(np.asarray(bf16.metrics[metric]), np.asarray(f32.metrics[metric]), rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(bf16.metrics["episode_return"]), np.asarray(f32.metrics["episode_return"]))
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree_util.tree_leaves(bf16.agent.params), jax.tree_util.tree_leaves(f32.agent.params))]
    assert 1e-7 < max(diffs) < 1e-3


def _ppo_minibatch_problem(config, old_log_prob=None):
    """(spec, network, hp, agent, keys, data): a fresh PPO agent and a 64-transition batch of random (obs, action,
    old log-prob, old value, advantage, target); `old_log_prob="policy"` takes the agent's own log-probabilities."""
    spec = algos.common.make_env(config)
    network = algos.common.actor_critic(config, spec)
    hp = config.hyperparams()
    agent = algos.ppo.make_algorithm(config, network).init(jax.random.key(0), spec, hp)
    k = jax.random.split(jax.random.key(1), 7)
    obs, action = jax.random.normal(k[0], (64, 4)), jax.random.bernoulli(k[1], 0.5, (64,)).astype(jnp.int32)
    if old_log_prob == "policy":  # as if these parameters had collected the batch
        old_log_prob = network.apply(agent.params, obs, method="policy").log_prob(action)
    else:
        old_log_prob = -0.7 + 0.1 * jax.random.normal(k[2], (64,))
    data = (obs, action, old_log_prob, jax.random.normal(k[3], (64,)), jax.random.normal(k[4], (64,)),
            jax.random.normal(k[5], (64,)))
    return spec, network, hp, agent, k, data


def _shuffled_minibatches(key, data, num_epochs, num_minibatches):
    """The minibatches `common.minibatch_epochs` takes, in order (its shuffles)."""
    batch = data[0].shape[0]
    size = batch // num_minibatches
    minibatches = []
    for epoch_key in jax.random.split(key, num_epochs):
        perm = algos.common.random_permutation(epoch_key, batch)
        minibatches += [tuple(x[perm][i * size:(i + 1) * size] for x in data) for i in range(num_minibatches)]
    return minibatches


def test_split_actor_critic_is_two_separately_clipped_adams():
    """split_actor_critic: each network takes optax's clip_by_global_norm + adam on its own part of the loss,
    over the same shuffled minibatches; without clipping it is the joint optimiser's run."""
    import optax

    from pgjax.algos import ppo

    config = ppo.PPOConfig(
        total_timesteps=512, num_envs=4, num_steps=16, num_epochs=2, num_minibatches=2, max_grad_norm=0.05,
        anneal_lr=False, learning_rate=1e-2, split_actor_critic=True,
    )
    spec, network, hp, agent, k, data = _ppo_minibatch_problem(config)
    params, opt_state, metrics = jax.jit(
        lambda p, o: ppo._split_descent(config, network, k[6], hp, p, o, data, 0)
    )(agent.params, agent.opt_state)

    # Reference: the same minibatches (minibatch_epochs' shuffles), one optax optimiser per network.
    minibatches = _shuffled_minibatches(k[6], data, config.num_epochs, config.num_minibatches)
    parts = {"actor": ppo.ppo_policy_loss, "critic": ppo.ppo_value_loss}
    for name, part_loss in parts.items():
        tower = agent.params["params"][name]
        tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                         optax.adam(config.learning_rate, eps=config.adam_eps))
        state = tx.init(tower)

        @jax.jit  # one compile per network instead of op-by-op dispatch (7 s -> ~2 s)
        def reference_step(tower, state, mb, name=name, part_loss=part_loss, tx=tx):
            grads = jax.grad(lambda t: part_loss({"params": {name: t}}, network, mb, hp, config)[0])(tower)
            updates, state = tx.update(grads, state)
            return optax.apply_updates(tower, updates), state

        for mb in minibatches:
            tower, state = reference_step(tower, state, mb)
        for a, b in zip(jax.tree_util.tree_leaves(params["params"][name]), jax.tree_util.tree_leaves(tower)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert int(opt_state.actor.count) == int(opt_state.critic.count) == 4
    assert set(metrics) >= {"loss", "policy_loss", "value_loss", "entropy", "steps_taken"}

    # Without clipping the two optimisers are one Adam: split and joint runs agree.
    unclipped = config.replace(max_grad_norm=1e6, total_timesteps=256)
    runs_ = [jax.jit(ppo.make_train(unclipped.replace(split_actor_critic=s)))(jax.random.key(2)) for s in (True, False)]
    split_adam, joint_adam = runs_[0].agent.opt_state, runs_[1].agent.opt_state
    split_moments = [jnp.concatenate([split_adam.actor.mu, split_adam.critic.mu]),  # ravel order: actor, critic
                     jnp.concatenate([split_adam.actor.nu, split_adam.critic.nu])]
    for a, b in zip(jax.tree_util.tree_leaves((runs_[0].agent.params, split_moments)),
                    jax.tree_util.tree_leaves((runs_[1].agent.params, [joint_adam.mu, joint_adam.nu]))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert int(split_adam.actor.count) == int(split_adam.critic.count) == int(joint_adam.count)
    # each optimiser reports its own pre-clip norm (the joint one reports one norm of both)
    assert set(runs_[0].metrics) - set(runs_[1].metrics) == {"actor_grad_norm", "critic_grad_norm"}
    assert set(runs_[1].metrics) - set(runs_[0].metrics) == {"grad_norm"}
    joint_norm = np.hypot(np.asarray(runs_[0].metrics["actor_grad_norm"]),
                          np.asarray(runs_[0].metrics["critic_grad_norm"]))
    # mean_t ||(a_t, c_t)|| >= ||(mean a, mean c)|| (the triangle inequality), equality only if the steps align
    np.testing.assert_array_less(joint_norm * (1 - 1e-4), np.asarray(runs_[1].metrics["grad_norm"]))
    for name in set(runs_[1].metrics) & set(runs_[0].metrics):
        np.testing.assert_allclose(np.asarray(runs_[0].metrics[name]), np.asarray(runs_[1].metrics[name]),
                                   rtol=1e-4, atol=1e-6)


def _target_kl_stopping_at(kls):
    """(stop, target): for the KLs a run's minibatch steps saw before moving, a step past the first few whose KL
    exceeds every earlier one's by the widest margin, and a target between the two, which stops there."""
    assert kls[0] < 1e-6 and max(kls) > 1e-3, kls  # the first step starts at the rollout's policy; later ones move
    stop = max(range(3, len(kls)), key=lambda i: kls[i] / max(kls[:i]))
    assert kls[stop] > 1.1 * max(kls[:stop]), kls
    return stop, (kls[stop] + max(kls[:stop])) / 2


@pytest.mark.exact_compiler
def test_target_kl_stops_the_update_at_the_first_minibatch_over_it():
    """PPO's early stopping against the same steps taken one by one: the KL each minibatch step sees before it
    moves, the first step over target_kl and every later one skipped (parameters and Adam state as they were)."""
    from pgjax import optim
    from pgjax.algos import common, ppo

    config = ppo.PPOConfig(total_timesteps=512, num_envs=4, num_steps=16, num_epochs=4, num_minibatches=2,
                           learning_rate=3e-3)
    spec, network, hp, agent, k, data = _ppo_minibatch_problem(config, old_log_prob="policy")
    tx = ppo._optimizer(config, hp)
    loss_fn = lambda params, mb, hp=hp: ppo.ppo_loss(params, network, mb, hp, config)  # noqa: E731

    @jax.jit
    def descend(target_kl):
        return common.minibatch_descent(k[6], tx, loss_fn, agent.params, agent.opt_state, data, config.num_epochs,
                                        config.num_minibatches, target_kl=target_kl)

    # Reference: the same minibatches (minibatch_epochs' shuffles), every step taken, each one's KL recorded.
    flat, unravel = optim.ravel_params(agent.params)
    step = jax.jit(optim.flat_gradient_step(tx, loss_fn, unravel))
    states, kls = [(flat, agent.opt_state)], []
    for minibatch in _shuffled_minibatches(k[6], data, config.num_epochs, config.num_minibatches):
        state, aux = step(states[-1], minibatch)
        states.append(state)
        kls.append(float(aux["approx_kl"]))
    stop, target = _target_kl_stopping_at(kls)

    params, opt_state, metrics = descend(jnp.float32(target))
    expected_flat, expected_opt = states[stop]
    np.testing.assert_allclose(optim.ravel_params(params)[0], expected_flat, rtol=1e-5, atol=1e-7)
    assert int(opt_state.count) == stop  # skipped steps leave Adam's count where it was (the anneal: below)
    for a, b in zip(jax.tree_util.tree_leaves(opt_state), jax.tree_util.tree_leaves(expected_opt)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert float(metrics["steps_taken"]) == stop / len(kls)
    # The metrics are those of the minibatches seen: the stop steps taken and the one over the target.
    np.testing.assert_allclose(float(metrics["approx_kl"]), np.mean(kls[:stop + 1]), rtol=1e-4)

    # 0 never stops: the same steps as without early stopping, bit for bit, and all of them taken.
    plain = jax.jit(lambda: common.minibatch_descent(k[6], tx, loss_fn, agent.params, agent.opt_state, data,
                                                     config.num_epochs, config.num_minibatches))()
    off = descend(jnp.float32(0.0))
    for a, b in zip(jax.tree_util.tree_leaves(off[:2]), jax.tree_util.tree_leaves(plain[:2])):
        np.testing.assert_array_equal(a, b)
    assert float(off[2]["steps_taken"]) == 1.0 and "steps_taken" not in plain[2]
    # vmapped targets: each lane is its own run. Batched kernels round differently from unbatched ones: under
    # jax 0.11.2 one parameter of 6.3e-4 differed by 1.1e-7, hence atol 1e-6; a step lost or taken twice moves
    # parameters by about the learning rate, 3e-3.
    lanes = jax.vmap(descend)(jnp.array([0.0, target], jnp.float32))
    np.testing.assert_array_equal(lanes[2]["steps_taken"], [1.0, stop / len(kls)])
    np.testing.assert_allclose(optim.ravel_params(jax.tree_util.tree_map(lambda x: x[1], lanes[0]))[0], expected_flat,
                               rtol=1e-5, atol=1e-6)

    # The annealed rate follows the update index, not the steps taken: an agent that took no steps, updated at
    # the run's last update index + 1, where the schedule has reached 0, keeps its parameters (16 steps counted).
    algorithm = ppo.make_algorithm(config, network)
    obs0, env_state = spec.env.reset(k[2], spec.params)
    batch = common.rollout(k[3], spec, agent, algorithm.act, algorithm.value, env_state, obs0, config.num_steps)[2]
    past_end = jax.jit(algorithm.update)(agent, batch, k[4], hp, jnp.int32(config.num_updates))[0]
    np.testing.assert_array_equal(optim.ravel_params(past_end.params)[0], flat)
    assert int(past_end.opt_state.count) == config.num_epochs * config.num_minibatches

    with pytest.raises(ValueError, match="target_kl"):
        config.replace(target_kl=-0.01)


def test_kl_early_stopping_on_scripted_kls_and_means_over_the_minibatches_seen():
    """kl_early_stopping on scripted KLs (exact numbers, so no exact-compiler mark): once stopped, an update stays
    stopped, even where a later minibatch's KL is back under the target; a KL equal to the target does not stop.
    minibatch_descent's metrics are means over the minibatches seen, steps_taken over all of them."""
    from pgjax import optim
    from pgjax.algos import common

    def counting(target_kl):  # a step that counts the steps taken and reports the scripted KL
        return common.kl_early_stopping(lambda n, kl: (n + 1, {"approx_kl": kl}), jnp.float32(target_kl))

    scripted = counting(1.0)
    (count, stopped), taken = jax.lax.scan(scripted, (0, jnp.array(False)), jnp.array([0.0, 1.0, 2.0, 0.1, 0.3]))
    assert int(count) == 2 and bool(stopped)
    np.testing.assert_array_equal(taken["steps_taken"], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(taken[common.STEPS_SEEN], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(taken["approx_kl"], [0.0, 1.0, 2.0, 0.0, 0.0])
    # An unseen minibatch's inf metric is left out, not multiplied by 0 (NaN, which made the update's mean NaN).
    (_, _), taken = jax.lax.scan(scripted, (0, jnp.array(False)), jnp.array([2.0, jnp.inf]))
    np.testing.assert_array_equal(taken["approx_kl"], [2.0, 0.0])
    never = counting(0.0)  # 0: never stops
    (count, stopped), _ = jax.lax.scan(never, (0, jnp.array(False)), jnp.array([0.0, 1.0, 2.0]))
    assert int(count) == 3 and not bool(stopped)
    # Every minibatch's KL 2.0 over a target of 1.0: the first of 4 steps stops the update before it moves.
    data = {"x": jnp.arange(8.0), "kl": jnp.full(8, 2.0)}
    loss_fn = lambda w, mb: (jnp.sum((w - mb["x"]) ** 2), {"approx_kl": jnp.mean(mb["kl"])})  # noqa: E731
    tx = optim.clipped_adam(0.1, 1.0)
    w0 = jnp.zeros(2)
    w, _, metrics = common.minibatch_descent(jax.random.key(0), tx, loss_fn, w0, tx.init(w0), data, 1, 4,
                                             target_kl=jnp.float32(1.0))
    np.testing.assert_array_equal(w, w0)
    assert float(metrics["steps_taken"]) == 0.0 and float(metrics["approx_kl"]) == 2.0  # not 2.0 x 1/4 seen
    assert float(metrics["grad_norm"]) > 0  # the one minibatch seen, as seen
    # Without a target every step is taken, and the metrics are means over the 2 epochs x 4 minibatches.
    w, _, metrics = common.minibatch_descent(jax.random.key(0), tx, loss_fn, w0, tx.init(w0), data, 2, 4)
    assert float(metrics["approx_kl"]) == 2.0 and not np.array_equal(w, w0)


def test_first_episode_ends_keep_each_environments_first_and_its_metrics():
    """first_episode_ends [T, N]: each environment's first episode end only; episode_metrics(first_only=True)
    averages those episodes, False all of them."""
    from pgjax.algos import common

    ended = jnp.array([[True, False, False], [True, True, False], [False, True, False]])
    np.testing.assert_array_equal(common.first_episode_ends(ended),
                                  [[True, False, False], [False, True, False], [False, False, False]])
    returns = jnp.array([[1.0, 0.0, 0.0], [5.0, 3.0, 0.0], [0.0, 8.0, 0.0]])
    batch = common.Transition(*([None] * len(common.Transition._fields)))._replace(
        returned_episode=ended, episode_return=returns, episode_length=returns * 2)
    first, every = common.episode_metrics(batch, first_only=True), common.episode_metrics(batch)
    assert (float(first["episode_return"]), float(first["episode_length"]), int(first["episodes_finished"])) == (
        2.0, 4.0, 2)
    assert (float(every["episode_return"]), int(every["episodes_finished"])) == (17.0 / 4, 4)


@pytest.mark.exact_compiler
def test_split_target_kl_stops_the_actor_and_lets_the_critic_fit():
    """split_actor_critic with target_kl: the actor stops at its first minibatch over the target (parameters and
    Adam state those of its steps taken one by one), the critic takes every step, and each network's count
    counts its own steps while its annealed rate follows the update index."""
    from pgjax import optim
    from pgjax.algos import ppo

    config = ppo.PPOConfig(total_timesteps=512, num_envs=4, num_steps=16, num_epochs=4, num_minibatches=2,
                           learning_rate=3e-3, split_actor_critic=True, target_kl=0.01)
    spec, network, hp, agent, k, data = _ppo_minibatch_problem(config, old_log_prob="policy")

    @jax.jit
    def descend(target_kl, opt_state, update_idx):
        hp_ = {**hp, "target_kl": target_kl}
        return ppo._split_descent(config, network, k[6], hp_, agent.params, opt_state, data, update_idx)

    # Reference: the actor's steps one by one on the same minibatches, each one's KL recorded.
    def actor_loss(tower, minibatch):
        return ppo.ppo_policy_loss({"params": {"actor": tower}}, network, minibatch, hp, config)

    flat, unravel = optim.ravel_params(agent.params["params"]["actor"])
    step = jax.jit(optim.flat_gradient_step(ppo._optimizer(config, hp), actor_loss, unravel))
    states, kls = [(flat, agent.opt_state.actor)], []
    for minibatch in _shuffled_minibatches(k[6], data, config.num_epochs, config.num_minibatches):
        state, aux = step(states[-1], minibatch)
        states.append(state)
        kls.append(float(aux["approx_kl"]))
    stop, target = _target_kl_stopping_at(kls)

    params, opt_state, metrics = descend(jnp.float32(target), agent.opt_state, 0)
    full_params, full_opt, _ = descend(jnp.float32(0.0), agent.opt_state, 0)
    for (got_params, got_adam), (expected_flat, expected_adam) in zip(
        [(params, opt_state.actor), (full_params, full_opt.actor)], [states[stop], states[-1]]
    ):
        np.testing.assert_allclose(optim.ravel_params(got_params["params"]["actor"])[0], expected_flat, rtol=1e-5,
                                   atol=1e-7)
        for a, b in zip(jax.tree_util.tree_leaves(got_adam), jax.tree_util.tree_leaves(expected_adam)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert int(opt_state.actor.count) == stop and int(opt_state.critic.count) == len(kls)
    assert float(metrics["steps_taken"]) == stop / len(kls)
    # The critic fits as without early stopping, bit for bit.
    for a, b in zip(jax.tree_util.tree_leaves((params["params"]["critic"], opt_state.critic)),
                    jax.tree_util.tree_leaves((full_params["params"]["critic"], full_opt.critic))):
        np.testing.assert_array_equal(a, b)

    # Past the run's last update, where the schedule has reached 0, neither network moves, although the actor has
    # counted fewer steps than the critic (its rate follows the update index, not its count).
    past_end = descend(jnp.float32(0.0), opt_state, config.num_updates)[0]
    for a, b in zip(jax.tree_util.tree_leaves(past_end), jax.tree_util.tree_leaves(agent.params)):
        np.testing.assert_array_equal(a, b)


def _exact_objective(network, mdp):
    """J(params) for the network's policy on one-hot observations: exact, by a linear solve."""
    obs = jnp.eye(mdp.num_states, dtype=jnp.float32)

    def objective(params):
        dist, _ = network.apply(params, obs)
        return T.expected_return(mdp, jax.nn.softmax(dist.logits, axis=-1))

    return objective


@pytest.mark.parametrize("name", ["reinforce", "a2c", "ppo", "trpo"])
def test_first_update_ascends_the_exact_gradient(name):
    """On a tabular MDP, the first update's change of the policy parameters has a positive inner
    product with the exact gradient of J (computed by autodiff through the exact solve)."""
    env_kwargs = dict(num_states=5, num_actions=3, seed=1, max_steps_in_episode=60)
    config_cls, make_train = algos.get(name)
    extra = {"ppo": dict(num_minibatches=1, num_epochs=1), "trpo": dict(vf_minibatches=1)}.get(name, {})
    config = config_cls(
        env_id="tabular:random", env_kwargs=env_kwargs, discount=0.9, gae_lambda=1.0, num_envs=32, num_steps=60,
        total_timesteps=32 * 60, learning_rate=1e-2, **extra,
    )
    env, env_params = make_env("tabular:random", **env_kwargs)
    mdp = env_params.mdp.replace(discount=jnp.asarray(0.9, jnp.float32))
    spec = algos.common.make_env(config)
    network = algos.common.actor_critic(config, spec)
    algorithm = {"reinforce": algos.reinforce, "a2c": algos.a2c, "ppo": algos.ppo, "trpo": algos.trpo}[name]
    key = jax.random.key(0)
    # Same init as train(key): train splits key into (init, reset, loop).
    init_params = algorithm.make_algorithm(config, network).init(
        jax.random.split(key, 3)[0], spec, config.hyperparams()
    ).params
    output = jax.jit(make_train(config))(key)
    grad = jax.grad(_exact_objective(network, mdp))(init_params)["params"]["actor"]
    delta = jax.tree_util.tree_map(lambda a, b: a - b, output.agent.params["params"]["actor"],
                                   init_params["params"]["actor"])
    inner = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(delta)))
    assert float(inner) > 0, (name, float(inner))


def _episode_gradients(config, key):
    """Per-episode policy gradient estimates -grad L_pg [N, P] of one episodic REINFORCE rollout of config.num_envs
    fresh episodes, their full-batch estimate [P] (all N in one loss), and the exact grad J [P] (actor parameters)."""
    spec = algos.common.make_env(config)
    network = algos.common.actor_critic(config, spec)
    hp = config.hyperparams()
    algorithm = algos.reinforce.make_algorithm(config, network)

    @jax.jit  # one program: op by op, the vmapped gradients compiled ~130 small ones
    def estimates(key):
        return _episode_estimates(config, spec, network, hp, algorithm, key)

    return tuple(np.asarray(x, np.float64) for x in estimates(key))


def _episode_estimates(config, spec, network, hp, algorithm, key):
    key_init, key_reset, key_rollout = jax.random.split(key, 3)
    agent = algorithm.init(key_init, spec, hp)
    # A critic far from its near-zero initial output, so that the baseline b(s) differs between states.
    params = flax.core.unfreeze(agent.params)
    critic = params["params"]["critic"]
    leaves, structure = jax.tree_util.tree_flatten(critic)
    noise = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    params["params"]["critic"] = jax.tree_util.tree_unflatten(
        structure, [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, noise)])
    agent = agent.replace(params=params)
    obs, env_state = spec.env.reset(key_reset, spec.params)
    _, _, batch = algos.common.rollout(key_rollout, spec, agent, algorithm.act, algorithm.value, env_state, obs,
                                       config.num_steps)
    returns, mask, weight = algos.reinforce.learning_targets(config, batch, hp)
    loss_fn = algos.reinforce.make_loss(config, network)

    def actor_gradient(columns):
        grad = jax.grad(lambda p: -loss_fn(p, *columns, hp)[1]["policy_loss"])(agent.params)
        return jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grad["params"]["actor"])])

    columns = (batch, returns, mask, weight)
    one_column = lambda i: jax.tree_util.tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1), columns)
    per_episode = jax.vmap(lambda i: actor_gradient(one_column(i)))(jnp.arange(config.num_envs))
    exact = jax.grad(_exact_objective(network, spec.params.mdp))(agent.params)["params"]["actor"]
    exact = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(exact)])
    return per_episode, actor_gradient(columns), exact


def _z_scores(per_episode, exact, directions):
    """(mean estimate - exact) . u / its standard error, for each unit direction u ([K, P] -> [K])."""
    projections = per_episode @ directions.T  # [N, K]
    standard_error = projections.std(axis=0, ddof=1) / np.sqrt(len(per_episode))
    return (projections.mean(axis=0) - directions @ exact) / standard_error


def test_episodic_reinforce_estimates_the_exact_gradient_without_bias():
    """The theorem's REINFORCE (episodic, gamma^t weights, raw advantages, a learned baseline b(s) far from 0) on a
    tabular MDP: over 4096 fresh episodes the per-episode estimates average to the exact grad J (autodiff through
    the exact solve) within 4.5 standard errors along grad J and 8 random directions (the largest |z| was 2.6 over
    PGJAX_TEST_KEY_OFFSET 0-16, which draws other MDPs, networks and episodes; a step limit of 300 instead of 100
    moved no z by more than 0.01), and the full-batch loss's gradient is their mean (the 1/N per-episode
    normalisation). The deep-RL estimator, the same episodes without gamma^t, misses by more than 6 (7.3 to 35.5
    along grad J over those offsets), so the test tells a biased estimator apart."""
    env_kwargs = dict(num_states=5, num_actions=3, seed=1, discount=0.9, max_steps_in_episode=100)
    config = algos.reinforce.REINFORCEConfig(
        env_id="tabular:random", env_kwargs=env_kwargs, discount=0.9, num_envs=4096, num_steps=100,
        total_timesteps=4096 * 100, hidden_sizes=(16,), normalize_advantages=False, episodic=True,
        discount_weighting=True,
    )
    key = jax.random.key(3)
    per_episode, full_batch, exact = _episode_gradients(config, key)
    np.testing.assert_allclose(full_batch, per_episode.mean(axis=0), rtol=1e-3, atol=1e-4)  # float32 sums
    rng = np.random.default_rng(0)
    directions = np.concatenate([exact[None] / np.linalg.norm(exact), rng.normal(size=(8, exact.size))])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    z = _z_scores(per_episode, exact, directions)
    assert np.all(np.abs(z) < 4.5), z

    undiscounted, _, _ = _episode_gradients(config.replace(discount_weighting=False), key)
    assert np.max(np.abs(_z_scores(undiscounted, exact, directions))) > 6.0


def test_first_episode_mask_keeps_each_environment_first_whole_episode():
    done = np.zeros((6, 4), bool)
    done[2, 0] = done[4, 0] = True  # env 0: first episode ends at step 2
    done[0, 1] = True  # env 1: at step 0
    done[5, 3] = True  # env 2 never ends; env 3 at the last step
    terminated, truncated = jnp.asarray(done & (np.arange(4) % 2 == 0)), jnp.asarray(done & (np.arange(4) % 2 == 1))
    expected = np.zeros((6, 4), np.float32)
    expected[:3, 0] = expected[:1, 1] = expected[:, 3] = 1.0
    np.testing.assert_array_equal(np.asarray(algos.reinforce.first_episode_mask(terminated, truncated)), expected)


def test_episodic_reinforce_restarts_every_environment_at_each_update():
    """With a step limit H = 4 and rollouts of 10 steps, episodic training resets every environment before each
    rollout and learns from each one's first episode (valid_fraction 4/10); the episode metrics count those N
    first episodes alone (a second episode also ends, at step 7: counting it biases them to short episodes). Without
    resets the episodes drift across rollouts (2 or 3 ends per environment)."""
    common = dict(env_id="tabular:random", env_kwargs=dict(num_states=4, num_actions=2, max_steps_in_episode=4),
                  discount=0.9, num_envs=3, num_steps=10, total_timesteps=3 * 10 * 6, hidden_sizes=(8,))
    episodic = jax.jit(algos.reinforce.make_train(algos.REINFORCEConfig(**common, episodic=True)))(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(episodic.metrics["episodes_finished"]), np.full(6, 3))
    np.testing.assert_array_equal(np.asarray(episodic.metrics["episode_length"]), np.full(6, 4.0))
    np.testing.assert_allclose(np.asarray(episodic.metrics["valid_fraction"]), np.full(6, 4 / 10), rtol=1e-6)
    carried = jax.jit(algos.reinforce.make_train(algos.REINFORCEConfig(**common)))(jax.random.key(0))
    assert set(np.asarray(carried.metrics["episodes_finished"]).tolist()) == {6, 9}


def test_reinforce_learns_nothing_from_a_rollout_without_a_finished_episode():
    """Rollouts of 10 steps under a step limit of 35: only the fourth of five ends an episode. An update
    with nothing to learn from keeps the agent (Adam's momentum moved it by ~0.7 lr per step), reports NaN losses
    (they were 0: means over no steps), and leaves the annealed rate on the update index."""
    config = algos.REINFORCEConfig(
        env_id="tabular:random", env_kwargs=dict(num_states=4, num_actions=2, max_steps_in_episode=35), discount=0.9,
        num_envs=2, num_steps=10, total_timesteps=2 * 10 * 5, hidden_sizes=(8,), learning_rate=1e-2)
    key = jax.random.key(0)
    spec = algos.common.make_env(config)
    init = algos.reinforce.make_algorithm(config, algos.common.actor_critic(config, spec)).init(
        jax.random.split(key, 3)[0], spec, config.hyperparams())
    train = algos.reinforce.make_train(config)
    after_three = jax.jit(train.advance, static_argnames="count")(train.start(key), 0, count=3)
    for a, b in zip(jax.tree_util.tree_leaves(after_three[0].agent), jax.tree_util.tree_leaves(init)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = after_three[1]
    np.testing.assert_array_equal(np.asarray(metrics["valid_fraction"]), np.zeros(3))
    assert np.all(np.isnan(np.asarray(metrics["policy_loss"]))) and np.all(np.isnan(np.asarray(metrics["entropy"])))
    output = jax.jit(train)(key)
    assert int(output.agent.opt_state.count) == 1  # update 3 alone learned (steps 30-39 hold the end at 34)
    valid = np.asarray(output.metrics["valid_fraction"])
    assert valid[3] > 0 and np.all(valid[[0, 1, 2, 4]] == 0), valid
    # Those NaN losses are not a divergence (train.py exited 1, "2 of 2 seeds diverged").
    from pgjax import runs
    assert runs.non_finite_seeds(jax.tree_util.tree_map(lambda x: x[None], output)) == []


def test_hyperparameter_names_are_checked():
    config = algos.PPOConfig(total_timesteps=512)
    train = algos.ppo.make_train(config)
    hp = config.hyperparams()
    with pytest.raises(ValueError, match=r"hparams must hold PPOConfig's vmappable .*; unknown \['learning_rat'\]"):
        jax.jit(train)(jax.random.key(0), {**hp, "learning_rat": hp["learning_rate"]})  # was ignored
    # An unbatched vector of learning rates: a bare TypeError from the parameter update (a [1] discount ran).
    for name, value in (("learning_rate", jnp.array([1e-3, 2e-3])), ("discount", jnp.array([0.99]))):
        with pytest.raises(ValueError, match=rf"each value must be one number per run .*\{{'{name}': \(\d,\)\}}"):
            jax.jit(train)(jax.random.key(0), {**hp, name: value})
    del hp["clip_eps"]
    with pytest.raises(ValueError, match=r"; missing \['clip_eps'\]"):  # was a bare KeyError
        jax.jit(train)(jax.random.key(0), hp)


def test_episodic_reinforce_needs_rollouts_covering_the_step_limit():
    config = algos.REINFORCEConfig(env_id="CartPole-v1", num_steps=128, episodic=True)
    with pytest.raises(ValueError, match=r"REINFORCEConfig.num_steps \(128\) must be at least CartPole-v1's step "
                                         r"limit \(max_steps_in_episode=500\)"):
        algos.reinforce.make_train(config)


def test_trpo_fisher_subsample_keeps_every_environment():
    """fisher_subsample=k builds the Fisher from every k-th rollout step, all environments' states. On a rollout
    whose states do not change over time, k = num_steps must then give the update of k = 1 (the same states, each
    repeated). It took every k-th row of the time-major flat batch: with k = num_envs = 4 environment 0's alone."""
    base = algos.TRPOConfig(num_envs=4, num_steps=4, total_timesteps=16, vf_minibatches=2)
    spec = algos.common.make_env(base)
    network = algos.common.actor_critic(base, spec)
    rng = np.random.default_rng(0)
    shape = (4, 4)
    obs = jnp.asarray(np.broadcast_to(rng.normal(size=(1, 4, 4)), (4, 4, 4)), jnp.float32)  # [T, N, D], constant in t
    batch = algos.common.Transition(
        obs=obs, action=jnp.asarray(rng.integers(0, 2, shape), jnp.int32), reward=jnp.asarray(rng.normal(size=shape)),
        terminated=jnp.zeros(shape, bool), truncated=jnp.zeros(shape, bool), log_prob=jnp.full(shape, np.log(0.5)),
        value=jnp.zeros(shape), next_obs=obs, next_value=jnp.zeros(shape), returned_episode=jnp.zeros(shape, bool),
        episode_return=jnp.zeros(shape), episode_length=jnp.zeros(shape, jnp.int32),
    )
    actors = []
    for k in (1, 4):
        config = base.replace(fisher_subsample=k)
        algorithm = algos.trpo.make_algorithm(config, network)
        agent = algorithm.init(jax.random.key(0), spec, config.hyperparams())
        new_agent, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), config.hyperparams(), 0)
        assert float(metrics["step_accepted"]) == 1.0
        actors.append(jax.tree_util.tree_leaves(new_agent.params["params"]["actor"]))
    for a, b in zip(*actors):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_episodic_grid_cells_need_rollouts_covering_their_step_limits():
    # A cell's env.max_steps_in_episode beyond num_steps trained (its unfinished first episodes dropped: a bias).
    from pgjax import runs
    config = algos.REINFORCEConfig(env_id="tabular:random", env_kwargs=dict(max_steps_in_episode=20), num_steps=20,
                                   discount=0.9, total_timesteps=4 * 20, episodic=True)
    keys = runs.seed_keys(0, [0])
    runs.grid_lanes(config, [{"env.max_steps_in_episode": 20.0}], keys)
    with pytest.raises(ValueError, match=r"cell env.max_steps_in_episode=200.*num_steps \(20\) must be at least"):
        runs.grid_lanes(config, [{"env.max_steps_in_episode": 200.0}], keys)


def test_episodic_restarts_keep_the_normalisers_statistics():
    """Resetting the environments at each update restarted the running statistics of normalize_observations and
    normalize_rewards (episodic refused them); envs.with_running_statistics carries them over the reset: after 3
    updates of 4 environments x 25 steps the observation statistics count every observation (the first reset, then
    per update a reset and 25 steps: 4 + 3 x 104) and the return statistics every reward (3 x 100)."""
    from pgjax.algos.evaluation import observation_statistics
    config = algos.REINFORCEConfig(env_id="CartPole-v1", env_kwargs={"max_steps_in_episode": 20}, num_envs=4,
                                   num_steps=25, total_timesteps=4 * 25 * 3, episodic=True, normalize_observations=True,
                                   normalize_rewards=True, hidden_sizes=(8,))
    out = jax.jit(algos.reinforce.make_train(config))(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(observation_statistics(out.env_state).count), np.full(4, 4 + 3 * 104))
    np.testing.assert_array_equal(np.asarray(out.env_state.return_statistics.count), np.full(4, 300))
