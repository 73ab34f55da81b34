"""The online algorithms' update maths against independent NumPy computations on a hand-built rollout.

A batch of 2 environments x 6 steps (an episode of env 0 terminates at step 2, the next is truncated by a time limit
at step 4; env 1 terminates at step 3), a tiny actor-critic with random parameters (so log-probabilities, entropies
and values differ from state to state), and NumPy reimplementations of the formulas the docstrings give: GAE,
n-step and bootstrapped returns, the masked REINFORCE loss, PPO's clipped losses, A2C's loss, explained variance,
advantage standardisation and the annealed Adam step size.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from pgjax import algos, optim
from pgjax.algos import a2c, common, ppo, reinforce, trpo
from pgjax.nets import ActorCritic

T, N, OBS, K = 6, 2, 4, 3  # steps, environments, observation size, actions
SPEC = SimpleNamespace(observation_size=OBS)  # what the algorithms' init reads of an EnvSpec
SMALL = dict(num_envs=N, num_steps=T, hidden_sizes=(8,), discount=0.9)


def _network():
    return ActorCritic(K, True, (8,))


def _random_params(params, key=jax.random.key(7), scale=0.5):
    """The init's parameter structure with N(0, scale^2) entries: logits and values that vary across states (the
    init's 0.01-gain policy head gives almost uniform policies, under which masked and unmasked means agree)."""
    flat, unravel = ravel_pytree(params)
    return unravel(scale * jax.random.normal(key, flat.shape, flat.dtype))


def _agent(module, config, network):
    """(algorithm, its initial agent with `_random_params`) of an algorithm module for `config` on `network`."""
    algorithm = module.make_algorithm(config, network)
    agent = algorithm.init(jax.random.key(0), SPEC, config.hyperparams())
    return algorithm, agent.replace(params=_random_params(agent.params))


def _batch(rewards=None):
    """A [T=6, N=2] rollout: env 0 terminates at step 2 and is truncated at step 4 (step 5 starts an episode that does
    not end), env 1 terminates at step 3 (steps 4-5 do not end). next_value is value[t + 1] inside episodes, the
    final observation's value at episode ends (at a termination a value the estimators must ignore)."""
    rng = np.random.default_rng(3)
    obs = (2.0 * rng.normal(size=(T, N, OBS))).astype(np.float32)
    action = rng.integers(0, K, size=(T, N)).astype(np.int32)
    reward = (rng.normal(size=(T, N)) + 0.5).astype(np.float32)
    reward = reward if rewards is None else rewards
    value = rng.normal(size=(T, N)).astype(np.float32)
    next_value = np.concatenate([value[1:], rng.normal(size=(1, N))]).astype(np.float32)
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[2, 0] = terminated[3, 1] = True
    truncated[4, 0] = True
    next_value[2, 0], next_value[3, 1] = 5.0, -4.0  # terminal: never read
    next_value[4, 0] = 1.7  # V(final observation) at the truncation
    log_prob = (-1.1 + 0.3 * rng.normal(size=(T, N))).astype(np.float32)
    zeros = np.zeros((T, N), np.float32)
    return common.Transition(
        obs=jnp.asarray(obs), action=jnp.asarray(action), reward=jnp.asarray(reward),
        terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated), log_prob=jnp.asarray(log_prob),
        value=jnp.asarray(value), next_obs=jnp.asarray(obs), next_value=jnp.asarray(next_value),
        returned_episode=jnp.asarray(terminated | truncated), episode_return=jnp.asarray(zeros),
        episode_length=jnp.asarray(zeros),
    )


def _np(batch):
    return {name: np.asarray(x, np.float64) for name, x in batch._asdict().items()}


def _outputs(network, params, obs):
    """(log-probabilities of every action [..., K], entropies [...], values [...]) as float64 NumPy arrays."""
    dist, value = jax.jit(network.apply)(params, obs)
    logits = np.asarray(dist.logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    entropy = -(np.exp(log_probs) * log_probs).sum(-1)
    return log_probs, entropy, np.asarray(value, np.float64)


def _taken(log_probs, action):
    return np.take_along_axis(log_probs, np.asarray(action)[..., None], -1)[..., 0]


# --- NumPy references, written from the docstrings -------------------------------------------------------------


def _np_gae(b, gamma, lam):
    """delta_t = r_t + gamma (1 - term_t) V(s_{t+1}) - V(s_t); A_t = delta_t + gamma lam (1 - done_t) A_{t+1}."""
    done = np.logical_or(b["terminated"], b["truncated"])
    adv = np.zeros_like(b["reward"])
    after = np.zeros(b["reward"].shape[1])
    for t in reversed(range(b["reward"].shape[0])):
        delta = b["reward"][t] + gamma * (1 - b["terminated"][t]) * b["next_value"][t] - b["value"][t]
        after = delta + gamma * lam * (1 - done[t]) * after
        adv[t] = after
    return adv, adv + b["value"]


def _np_n_step_returns(b, gamma, n):
    """sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - term_{t+m-1}) V(s_{t+m}), m <= n up to an episode end or the
    rollout's end."""
    steps, envs = b["reward"].shape
    done = np.logical_or(b["terminated"], b["truncated"])
    out = np.zeros((steps, envs))
    for i in range(envs):
        for t in range(steps):
            g, k = 0.0, 0
            while True:
                g += gamma**k * b["reward"][t + k, i]
                if k + 1 == n or done[t + k, i] or t + k == steps - 1:
                    break
                k += 1
            out[t, i] = g + gamma ** (k + 1) * (1 - b["terminated"][t + k, i]) * b["next_value"][t + k, i]
    return out


def _np_returns(b, gamma, bootstrap):
    """Rewards-to-go within each episode; at a truncation (and at the rollout's end) + gamma V(s_{t+1}) when
    `bootstrap`, else cut there."""
    steps, envs = b["reward"].shape
    out = np.zeros((steps, envs))
    for i in range(envs):
        g = b["next_value"][-1, i] if bootstrap else 0.0
        for t in reversed(range(steps)):
            if b["terminated"][t, i]:
                g = b["reward"][t, i]
            elif b["truncated"][t, i]:
                g = b["reward"][t, i] + gamma * (b["next_value"][t, i] if bootstrap else 0.0)
            else:
                g = b["reward"][t, i] + gamma * g
            out[t, i] = g
    return out


def _np_normalize(x):
    return (x - x.mean()) / (x.std() + 1e-8)


def _np_explained_variance(values, targets, mask=None):
    mask = np.ones_like(targets) if mask is None else mask
    mean = lambda x: np.sum(x * mask) / np.sum(mask)  # noqa: E731
    var = lambda x: mean((x - mean(x)) ** 2)  # noqa: E731
    return 1.0 - var(targets - values) / var(targets)


def _np_adam_step(g, mu, nu, count, lr, max_grad_norm, eps, b1=0.9, b2=0.999):
    """(update, mu, nu) of one clipped Adam step (optim's docstring: clip, moments, bias-corrected step)."""
    norm = np.sqrt(np.sum(g**2))
    if norm >= max_grad_norm:
        g = g * max_grad_norm / norm
    mu, nu, t = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g**2, count + 1
    return -lr * (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps), mu, nu


# --- REINFORCE ----------------------------------------------------------------------------------------------------


def test_completed_episode_mask_is_a_reverse_cumulative_or():
    """valid[t, i] = 1 iff env i's episode ends at some step k >= t: a reverse cumulative OR over time."""
    rng = np.random.default_rng(0)
    terminated = rng.random((9, 5)) < 0.15
    truncated = rng.random((9, 5)) < 0.1
    terminated[:, 4] = truncated[:, 4] = False  # an environment whose episode never ends
    terminated[0, 3], truncated[8, 2] = True, True
    done = terminated | truncated
    expected = np.flip(np.logical_or.accumulate(np.flip(done, 0), axis=0), 0).astype(np.float32)
    assert 0 < expected.sum() < expected.size and not np.array_equal(expected, np.logical_or.accumulate(done, 0))
    np.testing.assert_array_equal(
        np.asarray(reinforce.completed_episode_mask(jnp.asarray(terminated), jnp.asarray(truncated))), expected)


def test_reinforce_masked_mean_of_one_valid_step_is_that_step_and_of_none_is_zero():
    x = jnp.arange(6.0).reshape(3, 2)
    assert float(reinforce.masked_mean(x, jnp.zeros((3, 2)).at[2, 1].set(1.0))) == 5.0
    assert float(reinforce.masked_mean(x, jnp.zeros((3, 2)))) == 0.0  # no valid step: 0, not 0 / 0
    assert float(reinforce.masked_mean(x, jnp.ones((3, 2)).at[0, 0].set(0.0))) == 3.0  # (1 + 2 + 3 + 4 + 5) / 5


REINFORCE_MASK = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0], [0, 0]], np.float32)  # _batch's completed steps


@pytest.mark.parametrize("use_baseline", [True, False])
def test_reinforce_learning_targets_bootstrap_truncations_with_a_baseline(use_baseline):
    """G_t bootstraps with V(final observation) at a truncation when a baseline is learned and is cut there without;
    the mask keeps the steps whose episode ends inside the rollout."""
    config = algos.REINFORCEConfig(**SMALL, total_timesteps=T * N, use_baseline=use_baseline)
    batch = _batch()
    returns, mask, weight = reinforce.learning_targets(config, batch, config.hyperparams())
    expected = _np_returns(_np(batch), 0.9, bootstrap=use_baseline)
    np.testing.assert_array_equal(np.asarray(mask), REINFORCE_MASK)
    np.testing.assert_array_equal(np.asarray(weight), REINFORCE_MASK)
    # the valid steps, where the loss reads G (the others only feed masked-out terms)
    np.testing.assert_allclose(np.asarray(returns)[REINFORCE_MASK > 0], expected[REINFORCE_MASK > 0], rtol=1e-6)
    if use_baseline:  # the truncated episode's steps 3-4 of env 0 carry gamma^k V = 1.7 gamma^k
        np.testing.assert_allclose(np.asarray(returns), expected, rtol=1e-6)
        assert abs(expected[4, 0] - _np_returns(_np(batch), 0.9, bootstrap=False)[4, 0]) > 1.0


def _reinforce_reference(network, params, batch, hp, normalize):
    """(loss, policy_loss, value_loss, entropy, returns, mask) of make_loss's docstring in NumPy."""
    b = _np(batch)
    mask = REINFORCE_MASK.astype(np.float64)
    returns = _np_returns(b, float(hp["discount"]), bootstrap=True)
    log_probs, entropy, value = _outputs(network, params, batch.obs)
    mean = lambda x: np.sum(x * mask) / np.sum(mask)  # noqa: E731
    advantage = returns - value
    if normalize:
        m = mean(advantage)
        advantage = (advantage - m) / (np.sqrt(mean((advantage - m) ** 2)) + 1e-8)
    pg = -mean(_taken(log_probs, batch.action) * advantage)
    v = 0.5 * mean((value - returns) ** 2)
    h = mean(entropy)
    loss = pg + float(hp["vf_coef"]) * v - float(hp["ent_coef"]) * h
    return dict(policy_loss=pg, value_loss=v, entropy=h, loss=loss), returns, mask


@pytest.mark.parametrize("normalize", [True, False])
def test_reinforce_loss_is_the_masked_mean_over_completed_steps(normalize):
    """make_loss: policy, value and entropy terms are means over the valid steps, the advantages standardised by the
    valid steps' mean and std."""
    config = algos.REINFORCEConfig(**SMALL, total_timesteps=T * N, ent_coef=0.05, normalize_advantages=normalize)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    params = _random_params(reinforce.make_algorithm(config, network).init(jax.random.key(0), SPEC, hp).params)
    returns, mask, weight = reinforce.learning_targets(config, batch, hp)
    loss, metrics = jax.jit(reinforce.make_loss(config, network))(params, batch, returns, mask, weight, hp)
    expected, _, _ = _reinforce_reference(network, params, batch, hp, normalize)
    for name, want in expected.items():
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(loss), expected["loss"], rtol=2e-5, atol=1e-6)


def test_reinforce_update_metrics_are_masked():
    """The update's losses, entropy and explained variance are over the valid steps (explained variance of the
    rollout's values against the bootstrapped returns there)."""
    config = algos.REINFORCEConfig(**SMALL, total_timesteps=T * N, ent_coef=0.05)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm, agent = _agent(reinforce, config, network)
    _, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), hp, jnp.int32(0))
    expected, returns, mask = _reinforce_reference(network, agent.params, batch, hp, normalize=True)
    for name, want in expected.items():
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(metrics["explained_variance"]),
                               _np_explained_variance(_np(batch)["value"], returns, mask), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["valid_fraction"]), mask.mean(), rtol=1e-6)


def test_reinforce_anneals_with_the_update_index_after_skipped_updates():
    """A REINFORCE update whose rollout finished no episode is skipped (Adam's count stays behind the update index);
    the next step's rate follows the index: at update u after one skip, lr_0 (1 - u / num_updates). The same Adam
    state at update 3 steps a third as far as at update 1 (1/4 against 3/4 of lr_0) in the same direction; a schedule
    on Adam's count (both at count 1) passed every test before."""
    config = algos.REINFORCEConfig(**SMALL, total_timesteps=4 * T * N, learning_rate=1e-2)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm, agent = _agent(reinforce, config, network)
    agent = agent.replace(opt_state=agent.opt_state._replace(count=jnp.int32(1)))
    update = jax.jit(algorithm.update)
    step = {u: ravel_pytree(update(agent, batch, jax.random.key(1), hp, jnp.int32(u))[0].params)[0]
            - ravel_pytree(agent.params)[0] for u in (1, 3)}
    assert float(jnp.abs(step[1]).max()) > 1e-4
    np.testing.assert_allclose(np.asarray(step[3]), np.asarray(step[1]) / 3, rtol=1e-4, atol=1e-9)


# --- PPO ------------------------------------------------------------------------------------------------------------


def _ppo_minibatch(network, params, batch):
    """(obs, action, old log-prob, old value, advantage, target) [12, ...]: old log-probs 0.4 nats around the
    current ones (ratios on both sides of the clip), old values 1 away from the current ones (value clip binding),
    advantages of mean 1 and std 2 (standardisation visible)."""
    rng = np.random.default_rng(5)
    obs, action = common.flatten_batch((batch.obs, batch.action))
    log_probs, _, value = _outputs(network, params, obs)
    old_log_prob = _taken(log_probs, action) + 0.4 * rng.normal(size=T * N)
    old_value = value + rng.normal(size=T * N)
    advantage = 1.0 + 2.0 * rng.normal(size=T * N)
    target = value + rng.normal(size=T * N)
    return (obs, action) + tuple(jnp.asarray(x, jnp.float32) for x in (old_log_prob, old_value, advantage, target))


def _ppo_reference_loss(logp, entropy, value, minibatch, hp, clip_value, normalize, xp=np):
    """PPO's loss (ppo.py, losses.py docstrings) from the network's outputs; `xp` = np or jnp (for autodiff)."""
    _, _, old_log_prob, old_value, advantage, target = (xp.asarray(x) if i > 1 else x for i, x in enumerate(minibatch))
    eps, vf, ent = (float(hp[k]) for k in ("clip_eps", "vf_coef", "ent_coef"))
    if normalize:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    ratio = xp.exp(logp - old_log_prob)
    pg = -xp.mean(xp.minimum(ratio * advantage, xp.clip(ratio, 1 - eps, 1 + eps) * advantage))
    squared = (value - target) ** 2
    if clip_value:
        clipped = old_value + xp.clip(value - old_value, -eps, eps)
        squared = xp.maximum(squared, (clipped - target) ** 2)
    v = 0.5 * xp.mean(squared)
    h = xp.mean(entropy)
    return pg - ent * h + vf * v, dict(policy_loss=pg, value_loss=v, entropy=h)


@pytest.mark.parametrize("clip_value", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_ppo_loss_matches_numpy(clip_value, normalize):
    config = algos.PPOConfig(**SMALL, total_timesteps=T * N, num_minibatches=1, clip_value=clip_value,
                             normalize_advantages=normalize)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    params = _random_params(ppo.make_algorithm(config, network).init(jax.random.key(0), SPEC, hp).params)
    minibatch = _ppo_minibatch(network, params, batch)
    loss, metrics = jax.jit(lambda p, mb: ppo.ppo_loss(p, network, mb, hp, config))(params, minibatch)
    log_probs, entropy, value = _outputs(network, params, minibatch[0])
    expected, parts = _ppo_reference_loss(_taken(log_probs, minibatch[1]), entropy, value,
                                          [np.asarray(x, np.float64) for x in minibatch], hp, clip_value, normalize)
    for name, want in parts.items():
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=1e-6)
    # the clips bind on this minibatch: without them the reference differs
    unclipped = _ppo_reference_loss(_taken(log_probs, minibatch[1]), entropy, value,
                                    [np.asarray(x, np.float64) for x in minibatch], {**hp, "clip_eps": 1e6},
                                    clip_value, normalize)[1]
    assert abs(unclipped["policy_loss"] - parts["policy_loss"]) > 1e-3
    if clip_value:
        assert abs(unclipped["value_loss"] - parts["value_loss"]) > 1e-2


def test_ppo_loss_gradient_is_autodiff_of_the_formula():
    """grad ppo_loss = grad of the same formula written in jnp from the network's outputs (old log-probs, old values,
    advantages and targets constants)."""
    config = algos.PPOConfig(**SMALL, total_timesteps=T * N, num_minibatches=1)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    params = _random_params(ppo.make_algorithm(config, network).init(jax.random.key(0), SPEC, hp).params)
    minibatch = _ppo_minibatch(network, params, batch)

    def reference(p):
        dist, value = network.apply(p, minibatch[0])
        logp = jnp.take_along_axis(jax.nn.log_softmax(dist.logits), minibatch[1][:, None], -1)[:, 0]
        entropy = -jnp.sum(jax.nn.softmax(dist.logits) * jax.nn.log_softmax(dist.logits), -1)
        return _ppo_reference_loss(logp, entropy, value, minibatch, hp, True, True, xp=jnp)[0]

    got = jax.jit(jax.grad(lambda p: ppo.ppo_loss(p, network, minibatch, hp, config)[0]))(params)
    want = jax.jit(jax.grad(reference))(params)
    np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(want)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("skipped", [0, 3])
def test_ppo_update_optimizer_anneals_with_the_update_index(skipped):
    """Update u's optimiser, for an Adam that has taken u E M - skipped steps, steps at lr_0 (1 - u / num_updates)
    (`update_learning_rate`; optax.linear_schedule over num_updates E M steps), then at the next step of that
    schedule: the bias correction counts the steps taken, the rate the update index."""
    config = algos.PPOConfig(**SMALL, total_timesteps=4 * T * N, num_epochs=2, num_minibatches=2, learning_rate=1e-2)
    hp = config.hyperparams()
    per_update = config.num_epochs * config.num_minibatches
    schedule = optax.linear_schedule(config.learning_rate, 0.0, config.num_updates * per_update)
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=5) * s for s in (0.1, 2.0)]  # the second over max_grad_norm = 0.5: clipped
    for u in (1, 2, 3):
        count = u * per_update - skipped
        state = optim.ClippedAdamState(jnp.int32(count), jnp.zeros(5), jnp.zeros(5))
        tx = ppo._update_optimizer(config, hp, jnp.int32(u), state)
        lr = config.learning_rate * (1 - u / config.num_updates)
        np.testing.assert_allclose(float(common.update_learning_rate(config, hp, u)), lr, rtol=1e-6)
        mu = nu = np.zeros(5)
        for k, g in enumerate(grads):
            step_lr = float(schedule(u * per_update + k))
            if k == 0:
                np.testing.assert_allclose(step_lr, lr, rtol=1e-6)
            expected, mu, nu = _np_adam_step(g, mu, nu, count + k, step_lr, config.max_grad_norm, config.adam_eps)
            updates, state = tx.update(jnp.asarray(g, jnp.float32), state)
            np.testing.assert_allclose(np.asarray(updates), expected, rtol=2e-5, err_msg=f"update {u}, step {k}")
        assert int(state.count) == count + len(grads)


def test_ppo_update_explained_variance_is_against_the_gae_targets():
    config = algos.PPOConfig(**SMALL, total_timesteps=T * N, num_epochs=1, num_minibatches=2)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm = ppo.make_algorithm(config, network)
    agent = algorithm.init(jax.random.key(0), SPEC, hp)
    _, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), hp, jnp.int32(0))
    b = _np(batch)
    advantage, target = _np_gae(b, 0.9, config.gae_lambda)
    expected = _np_explained_variance(b["value"], target)
    assert abs(expected - _np_explained_variance(b["value"], advantage)) > 0.1
    np.testing.assert_allclose(float(metrics["explained_variance"]), expected, rtol=1e-5)


@pytest.mark.parametrize("split", [False, True])
def test_ppo_update_feeds_the_rollout_into_its_loss(split):
    """One PPO update of one epoch and one minibatch (the whole batch) reports the loss of the parameters it started
    from, on the data the rollout gave it: old log-probs = batch.log_prob, old values (the value clip's centre) =
    batch.value, GAE advantages and targets. Old values from batch.next_value passed every test before."""
    config = algos.PPOConfig(**SMALL, total_timesteps=T * N, num_epochs=1, num_minibatches=1, clip_value=True,
                             gae_lambda=0.8, split_actor_critic=split)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm, agent = _agent(ppo, config, network)
    _, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), hp, jnp.int32(0))
    b = _np(batch)
    advantage, target = _np_gae(b, 0.9, 0.8)
    flat = lambda x: np.asarray(x, np.float64).reshape(T * N, *np.shape(x)[2:])  # noqa: E731 (time-major)
    obs, action = flat(b["obs"]), flat(batch.action).astype(np.int32)
    log_probs, entropy, value = _outputs(network, agent.params, jnp.asarray(obs, jnp.float32))

    def reference(old_value):
        minibatch = (obs, action, flat(b["log_prob"]), flat(old_value), flat(advantage), flat(target))
        return _ppo_reference_loss(_taken(log_probs, action), entropy, value, minibatch, hp, True, True)[1]

    parts = reference(b["value"])
    assert abs(reference(b["next_value"])["value_loss"] - parts["value_loss"]) > 1e-2  # the centre matters here
    for name, want in parts.items():
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, atol=1e-6, err_msg=name)


# --- A2C ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gae", "nstep"])
def test_a2c_update_losses_match_numpy(method):
    """A2C's one step: L = -mean log pi(a|s) norm(A) + vf_coef 1/2 mean (V - y)^2 - ent_coef mean H, with (A, y) from
    GAE(lambda = 0.8) or 3-step returns (cut at episode ends and the rollout's end)."""
    config = algos.A2CConfig(**SMALL, total_timesteps=T * N, gae_lambda=0.8, advantage_method=method, n_steps_return=3,
                             vf_coef=0.3, ent_coef=0.05)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm, agent = _agent(a2c, config, network)
    _, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), hp, jnp.int32(0))

    b = _np(batch)
    if method == "gae":
        advantage, target = _np_gae(b, 0.9, 0.8)
        other = _np_gae(b, 0.9, 1.0)[1]
    else:
        target = _np_n_step_returns(b, 0.9, 3)
        advantage = target - b["value"]
        other = _np_n_step_returns(b, 0.9, 2)
    assert np.abs(other - target).max() > 0.1  # lambda = 1 / n = 2 would give other targets here
    log_probs, entropy, value = _outputs(network, agent.params, batch.obs)
    pg = -np.mean(_taken(log_probs, batch.action) * _np_normalize(advantage))
    v = 0.5 * np.mean((value - target) ** 2)
    h = np.mean(entropy)
    expected = dict(policy_loss=pg, value_loss=v, entropy=h, loss=pg + 0.3 * v - 0.05 * h,
                    explained_variance=_np_explained_variance(b["value"], target))
    for name, want in expected.items():
        np.testing.assert_allclose(float(metrics[name]), want, rtol=2e-5, atol=1e-6, err_msg=name)


# --- TRPO -----------------------------------------------------------------------------------------------------------


def test_trpo_standardises_advantages_and_anneals_the_value_fit_over_all_its_steps():
    """With gae_lambda = 0 the advantages are the TD errors delta. TRPO with normalize_advantages on a batch must take
    the natural-gradient step that TRPO without it takes on a batch whose rewards make delta' = (delta - mean) / std
    (NumPy), and not the step on the raw deltas. Its value function takes vf_epochs x vf_minibatches clipped Adam steps
    on 1/2 mean (V - y)^2 over the shuffled minibatches, at lr_0 (1 - k / (num_updates vf_epochs vf_minibatches))."""
    small = dict(SMALL, total_timesteps=2 * T * N, gae_lambda=0.0, vf_epochs=2, vf_minibatches=2, cg_iterations=5,
                 num_backtracks=5, learning_rate=1e-2)
    configs = {flag: algos.TRPOConfig(**small, normalize_advantages=flag) for flag in (True, False)}
    network, hp = _network(), configs[True].hyperparams()
    algorithm = {flag: trpo.make_algorithm(config, network) for flag, config in configs.items()}
    agent = algorithm[True].init(jax.random.key(0), SPEC, hp)
    agent = trpo.TRPOState(_random_params(agent.params), agent.vf_opt_state)
    batch, key = _batch(), jax.random.key(1)
    b = _np(batch)
    delta = b["reward"] + 0.9 * (1 - b["terminated"]) * b["next_value"] - b["value"]
    standard_rewards = _np_normalize(delta) - 0.9 * (1 - b["terminated"]) * b["next_value"] + b["value"]
    updates = {flag: jax.jit(algorithm[flag].update) for flag in (True, False)}
    normalized, metrics = updates[True](agent, batch, key, hp, jnp.int32(0))
    standardised_by_hand, _ = updates[False](agent, _batch(standard_rewards.astype(np.float32)), key, hp, jnp.int32(0))
    raw, _ = updates[False](agent, batch, key, hp, jnp.int32(0))
    assert float(metrics["step_accepted"]) == 1.0
    actor = lambda state: ravel_pytree(state.params["params"]["actor"])[0]  # noqa: E731
    moved = np.abs(actor(normalized) - actor(agent)).max()
    np.testing.assert_allclose(actor(normalized), actor(standardised_by_hand), rtol=0, atol=1e-3 * moved)
    assert np.abs(actor(raw) - actor(normalized)).max() > 0.1 * moved  # the test tells the two apart

    # The value fit: the same shuffles as common.minibatch_epochs, Adam in NumPy at the annealed rate.
    config = configs[True]
    steps = config.num_updates * config.vf_epochs * config.vf_minibatches
    obs, target = common.flatten_batch((batch.obs, jnp.asarray(_np_gae(b, 0.9, 0.0)[1], jnp.float32)))
    critic, unravel = ravel_pytree(agent.params["params"]["critic"])
    actor_params = agent.params["params"]["actor"]

    @jax.jit
    def value_grad(flat, idx):
        def loss(flat):
            params = {"params": {"actor": actor_params, "critic": unravel(flat)}}
            value = network.apply(params, obs[idx], method="value")
            return 0.5 * jnp.mean((value - target[idx]) ** 2)
        return jax.grad(loss)(flat)

    flat = np.asarray(critic, np.float64)
    mu = nu = np.zeros_like(flat)
    k = 0
    size = T * N // config.vf_minibatches
    for epoch_key in jax.random.split(key, config.vf_epochs):
        perm = np.asarray(common.random_permutation(epoch_key, T * N))
        for i in range(config.vf_minibatches):
            g = np.asarray(value_grad(jnp.asarray(flat, jnp.float32), perm[i * size:(i + 1) * size]), np.float64)
            lr = config.learning_rate * (1 - k / steps)
            if k == 0:
                np.testing.assert_allclose(float(common.update_learning_rate(config, hp, 0)), lr, rtol=1e-6)
            update, mu, nu = _np_adam_step(g, mu, nu, k, lr, config.max_grad_norm, config.adam_eps)
            flat, k = flat + update, k + 1
    got = ravel_pytree(normalized.params["params"]["critic"])[0]
    np.testing.assert_allclose(np.asarray(got), flat, rtol=1e-5, atol=1e-6)
    assert int(normalized.vf_opt_state.count) == steps // config.num_updates


# --- what the updates report about the policy's move ----------------------------------------------------------------


def _np_kl(log_p, log_q):
    """mean over states of KL(p || q) = sum_a p(a) (log p(a) - log q(a)), from log-probabilities [..., K]."""
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1)))


@pytest.mark.parametrize("name", ["a2c", "reinforce"])
def test_one_step_updates_report_the_kl_from_the_old_policy_to_the_new(name):
    """The `kl` metric of A2C and REINFORCE is mean_s KL(pi_old(.|s) || pi_new(.|s)) over the batch's states; KL
    the other way round, or of the old policy with itself (0), passed every test before."""
    config_cls, _ = algos.get(name)
    config = config_cls(**SMALL, total_timesteps=T * N, learning_rate=0.05)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm, agent = _agent({"a2c": a2c, "reinforce": reinforce}[name], config, network)
    new_agent, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), hp, jnp.int32(0))
    old, new = _outputs(network, agent.params, batch.obs)[0], _outputs(network, new_agent.params, batch.obs)[0]
    forward, backward = _np_kl(old, new), _np_kl(new, old)
    # The test tells the directions apart: they differ by 10 times its tolerance (0.75% at key offset 48, where a
    # 1% guard failed; the float32 metric is within 5e-7 of the float64 NumPy value at offsets 0 and 48).
    assert forward > 1e-4 and abs(forward - backward) > 1e-3 * forward
    np.testing.assert_allclose(float(metrics["kl"]), forward, rtol=1e-4)


def test_trpo_reports_its_move_and_takes_the_damped_natural_step():
    """TRPO's metrics against NumPy on the hand-built batch: kl = mean KL(pi_old || pi_new), entropy = the old
    policy's mean entropy, surrogate_improvement = L(theta_new) - L(theta_old) with L = mean ratio * norm(A)
    + c_H mean H (c_H = 0.05: an entropy bonus summed instead of averaged over the 12 steps was 12 times as strong).
    expected_improvement = g^T s = sqrt(2 delta g^T (H + lambda I)^{-1} g) for the full step s, with H the Hessian of
    the mean KL in the actor's parameters (formed explicitly here, by autodiff) and lambda = cg_damping: a step damped
    by another lambda (max_kl's 0.02 passed every test before) is 20% away (19.8% at key offset 66), more than five
    times the check's 2% tolerance, which the test asks."""
    config = algos.TRPOConfig(**SMALL, total_timesteps=T * N, gae_lambda=0.9, max_kl=0.02, cg_damping=0.3,
                              cg_iterations=40, vf_minibatches=2, ent_coef=0.05)
    network, hp, batch = _network(), config.hyperparams(), _batch()
    algorithm, agent = _agent(trpo, config, network)
    new_agent, metrics = jax.jit(algorithm.update)(agent, batch, jax.random.key(1), hp, jnp.int32(0))
    assert float(metrics["step_accepted"]) == 1.0

    old_log, old_entropy, _ = _outputs(network, agent.params, batch.obs)
    new_log = _outputs(network, new_agent.params, batch.obs)[0]
    np.testing.assert_allclose(float(metrics["kl"]), _np_kl(old_log, new_log), rtol=1e-3)
    np.testing.assert_allclose(float(metrics["entropy"]), np.mean(old_entropy), rtol=1e-5)
    # The step moves the mean entropy by more than 10 times that tolerance, so the new policy's would fail the check
    # (3.8e-4 of 0.73 at key offset 62, where a fixed 1e-3 failed).
    new_entropy = _outputs(network, new_agent.params, batch.obs)[1].mean()
    assert abs(new_entropy - old_entropy.mean()) > 10 * 1e-5 * old_entropy.mean(), (new_entropy, old_entropy.mean())

    advantage = _np_normalize(_np_gae(_np(batch), 0.9, 0.9)[0])
    def surrogate(params):
        log, entropy, _ = _outputs(network, params, batch.obs)
        return np.mean(np.exp(_taken(log, batch.action) - _np(batch)["log_prob"]) * advantage) + 0.05 * entropy.mean()

    np.testing.assert_allclose(float(metrics["surrogate_improvement"]),
                               surrogate(new_agent.params) - surrogate(agent.params), rtol=1e-3, atol=1e-6)

    # The step's expected improvement from an explicit damped Fisher (float32 autodiff, solved in float64).
    actor_flat, unravel = ravel_pytree(agent.params["params"]["actor"])
    obs, action = common.flatten_batch((batch.obs, batch.action))
    old_logits = network.apply(agent.params, obs, method="policy").logits
    critic = agent.params["params"]["critic"]

    def dist(flat):
        return network.apply({"params": {"actor": unravel(flat), "critic": critic}}, obs, method="policy")

    def mean_kl(flat):
        log_p, log_q = jax.nn.log_softmax(old_logits), jax.nn.log_softmax(dist(flat).logits)
        return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1))

    def objective(flat):
        ratio = jnp.exp(dist(flat).log_prob(action) - batch.log_prob.reshape(-1))
        return jnp.mean(ratio * jnp.asarray(advantage.reshape(-1), jnp.float32)) + 0.05 * jnp.mean(dist(flat).entropy())

    hessian = np.asarray(jax.hessian(mean_kl)(actor_flat), np.float64)
    g = np.asarray(jax.grad(objective)(actor_flat), np.float64)
    expected = {lam: np.sqrt(2 * 0.02 * g @ np.linalg.solve(hessian + lam * np.eye(len(g)), g)) for lam in (0.3, 0.02)}
    assert abs(expected[0.02] / expected[0.3] - 1) > 5 * 0.02
    np.testing.assert_allclose(float(metrics["expected_improvement"]), expected[0.3], rtol=0.02)
