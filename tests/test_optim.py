"""pgjax.optim (fused clip + Adam + annealing on a flat parameter vector) against optax's own chain,
and the rollout pieces the algorithms share: the top_k permutation, policy-alone and value-alone calls,
and the batched critic pass after a rollout."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgjax import optim
from pgjax.algos import common, ppo
from pgjax.nets import ActorCritic


def _optax_reference(learning_rate, max_grad_norm, anneal_steps, eps=1e-5):
    schedule = optax.linear_schedule(learning_rate, 0.0, anneal_steps) if anneal_steps else learning_rate
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(schedule, eps=eps))


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w": jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,)), "s": jax.random.normal(k3, ())}


@pytest.mark.parametrize("anneal_steps", [None, 7])
@pytest.mark.parametrize("max_grad_norm", [0.3, 100.0])  # clipping active / never active
def test_clipped_adam_equals_the_optax_chain(anneal_steps, max_grad_norm):
    """Ten steps on a pytree and on its flat vector follow optax.chain(clip_by_global_norm, adam(schedule))."""
    params = _params(jax.random.key(0))
    grads = [_params(k) for k in jax.random.split(jax.random.key(1), 10)]
    grads[3] = jax.tree_util.tree_map(jnp.zeros_like, grads[3])  # a zero gradient must not give NaN
    ours, ref = (optim.clipped_adam(1e-2, max_grad_norm, anneal_steps),
                 _optax_reference(1e-2, max_grad_norm, anneal_steps))
    flat, unravel = optim.ravel_params(params)
    p_ours, s_ours, p_ref, s_ref, p_flat, s_flat = (params, ours.init(params), params, ref.init(params), flat,
                                                    ours.init(flat))
    for g in grads:
        u, s_ours = jax.jit(ours.update)(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s_flat = jax.jit(ours.update)(optim.ravel_params(g)[0], s_flat, p_flat)
        p_flat = p_flat + u
        for a, b in zip(jax.tree_util.tree_leaves(p_ours), jax.tree_util.tree_leaves(p_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(p_flat, optim.ravel_params(p_ref)[0], rtol=1e-5, atol=1e-7)
    assert int(s_ours.count) == 10
    # Moved at all (and, with annealing over 7 steps, not after step 7).
    assert not np.allclose(optim.ravel_params(p_ours)[0], flat)


def test_annealed_rate_reaches_zero():
    tx = optim.clipped_adam(0.1, 1.0, anneal_steps=3)
    p = jnp.ones(2)
    state = tx.init(p)
    steps = []
    for _ in range(5):
        u, state = tx.update(jnp.ones(2), state, p)
        steps.append(float(u[0]))
    assert steps[0] < steps[1] < steps[2] < 0 and steps[3] == steps[4] == 0.0  # rates 0.1, 2/30, 1/30, 0, 0
    assert float(optim.linear_anneal(0.1, 1.0)) == 0.0  # to zero by default
    assert float(optim.linear_anneal(0.1, 0.25)) == pytest.approx(0.075)
    # anneal_steps 0, like None, keeps the rate: the same steps as without a schedule.
    for anneal_steps in (0, None):
        tx = optim.clipped_adam(0.1, 1.0, anneal_steps=anneal_steps)
        state = tx.init(p)
        constant = []
        for _ in range(3):
            u, state = tx.update(jnp.ones(2), state, p)
            constant.append(float(u[0]))
        np.testing.assert_allclose(constant, -0.1, rtol=1e-4)  # Adam on a constant gradient: -lr (eps aside)


def test_schedule_offset_shifts_the_rate_not_the_bias_correction():
    """schedule_offset o: step k uses the annealed rate of step k + o, with Adam's bias correction still at step k
    (optax: adam over the schedule shifted by o steps)."""
    params = _params(jax.random.key(2))
    grads = [_params(k) for k in jax.random.split(jax.random.key(3), 6)]
    shifted = lambda k: optax.linear_schedule(1e-2, 0.0, 10)(k + 3)  # noqa: E731
    ref = optax.chain(optax.clip_by_global_norm(0.3), optax.adam(shifted, eps=1e-5))
    ours = optim.clipped_adam(1e-2, 0.3, 10, schedule_offset=jnp.int32(3))
    p_ref, s_ref, p_ours, s_ours = params, ref.init(params), params, ours.init(params)
    for g in grads:
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
    for a, b in zip(jax.tree_util.tree_leaves(p_ours), jax.tree_util.tree_leaves(p_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(s_ours.count) == 6
    unshifted = optim.clipped_adam(1e-2, 0.3, 10)
    u0 = unshifted.update(grads[0], unshifted.init(params), params)[0]
    u0_shifted = ours.update(grads[0], ours.init(params))[0]
    assert not np.allclose(optim.ravel_params(u0)[0], optim.ravel_params(u0_shifted)[0])  # the offset matters


def test_anneal_to_a_floor_equals_optax_linear_schedule():
    """final_fraction f: the rate goes from lr to f * lr over anneal_steps, as optax.linear_schedule(lr, f * lr, n),
    then stays there; vmapped over f, each entry equals its own run."""
    params = _params(jax.random.key(4))
    grads = [_params(k) for k in jax.random.split(jax.random.key(5), 9)]

    def run(tx, p):
        state = tx.init(p)
        for g in grads:
            u, state = tx.update(g, state, p)
            p = optax.apply_updates(p, u)
        return p

    for f in (0.25, 1.0):
        ref = optax.chain(optax.clip_by_global_norm(0.3),
                          optax.adam(optax.linear_schedule(1e-2, f * 1e-2, 6), eps=1e-5))
        ours = run(optim.clipped_adam(1e-2, 0.3, 6, final_fraction=f), params)
        chex.assert_trees_all_close(ours, run(ref, params), rtol=1e-5, atol=1e-7)
    # f = 1 is no annealing at all; f = 0 is the anneal to zero.
    const = run(optim.clipped_adam(1e-2, 0.3, None), params)
    chex.assert_trees_all_close(run(optim.clipped_adam(1e-2, 0.3, 6, final_fraction=1.0), params), const, rtol=1e-6)
    # The step after the schedule ends has rate f * lr: Adam's first step moves each coordinate by ~rate.
    g = jnp.array([3.0, -4.0])

    def last_step(f):
        tx = optim.clipped_adam(0.1, 100.0, 2, final_fraction=f)
        state = tx.init(g)._replace(count=jnp.array(5, jnp.int32))
        return tx.update(g, state, g)[0]

    fs = jnp.array([0.0, 0.1, 0.5])
    batched = jax.vmap(last_step)(fs)
    for i in range(3):
        np.testing.assert_allclose(batched[i], last_step(fs[i]), rtol=1e-6)
    assert np.all(np.asarray(batched[0]) == 0.0)
    np.testing.assert_allclose(batched[2], 5 * batched[1], rtol=1e-5)


def test_traced_hyperparameters_vmap():
    """learning_rate, max_grad_norm and eps may be vmapped: each batch entry equals its own unbatched run and
    optax's chain with the same numbers (a gradient of 1e-6 per entry, so that eps 1e-8 and 1e-5 differ 11-fold)."""
    g = jnp.array([3.0, -4.0]) * 2e-7  # norm 1e-6

    def one(lr, clip, eps):
        tx = optim.clipped_adam(lr, clip, 10, eps=eps)
        return tx.update(g, tx.init(g), g)[0]

    lrs, clips, epss = jnp.array([1e-2, 1e-3, 1e-2]), jnp.array([1.0, 10.0, 1.0]), jnp.array([1e-5, 1e-5, 1e-8])
    batched = jax.vmap(one)(lrs, clips, epss)
    for i in range(3):
        np.testing.assert_allclose(batched[i], one(lrs[i], clips[i], epss[i]), rtol=1e-6)
        ref = _optax_reference(float(lrs[i]), float(clips[i]), 10, eps=float(epss[i]))
        np.testing.assert_allclose(batched[i], ref.update(g, ref.init(g))[0], rtol=1e-5)
    assert float(jnp.abs(batched[2] / batched[0]).min()) > 10.0  # eps reached the step


def test_config_adam_eps_reaches_the_optimiser():
    """OnPolicyConfig.adam_eps (a vmappable hyperparameter) is the Adam epsilon of every algorithm's optimiser."""
    g = {"w": jnp.full((3,), 1e-6)}
    for eps in (1e-5, 1e-8):
        config = ppo.PPOConfig(adam_eps=eps, anneal_lr=False)
        tx = common.optimizer(config, config.hyperparams())
        ref = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate, eps=eps))
        np.testing.assert_allclose(tx.update(g, tx.init(g))[0]["w"], ref.update(g, ref.init(g))[0]["w"], rtol=1e-5)
    with pytest.raises(ValueError, match=r"PPOConfig.adam_eps must be a positive number; got 0.0"):
        ppo.PPOConfig(adam_eps=0.0)


def test_flat_gradient_step_equals_a_pytree_step():
    params = _params(jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (5, 3))

    def loss_fn(p, x):
        out = jnp.tanh(x @ p["w"] + p["b"]) * p["s"]
        return jnp.sum(out**2), {"out": out}

    tx = optim.clipped_adam(1e-2, 0.5, None)
    flat, unravel = optim.ravel_params(params)
    (flat_new, state), aux = optim.flat_gradient_step(tx, loss_fn, unravel)((flat, tx.init(flat)), x)
    grads, aux_ref = jax.grad(loss_fn, has_aux=True)(params, x)
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree_util.tree_leaves(unravel(flat_new)), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(aux["out"], aux_ref["out"], rtol=1e-6)
    assert int(state.count) == 1
    # the pre-clip gradient norm, from the pytree gradient computed independently (above the 0.5 clip here)
    expected_norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree_util.tree_leaves(grads)))
    assert expected_norm > 0.5
    np.testing.assert_allclose(aux["grad_norm"], expected_norm, rtol=1e-5)
    _, no_norm = optim.flat_gradient_step(tx, loss_fn, unravel, norm_name=None)((flat, tx.init(flat)), x)
    assert set(no_norm) == {"out"}


# ---------------------------------------------------------------------------
# Shared rollout pieces.
# ---------------------------------------------------------------------------


def test_random_permutation_is_a_uniform_permutation():
    perm = jax.jit(common.random_permutation, static_argnums=1)
    for n in (1, 2, 7, 512):
        p = np.asarray(perm(jax.random.key(n), n))
        assert p.dtype == np.int32 and sorted(p.tolist()) == list(range(n))
    np.testing.assert_array_equal(perm(jax.random.key(0), 64), perm(jax.random.key(0), 64))  # deterministic
    # All 24 orders of 4 items, equally often: chi-square with 23 degrees of freedom.
    keys = jax.random.split(jax.random.key(1), 24_000)
    samples = np.asarray(jax.vmap(lambda k: common.random_permutation(k, 4))(keys))
    index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([index[tuple(s)] for s in samples], minlength=24)
    chi2 = np.sum((counts - 1000.0) ** 2 / 1000.0)
    assert chi2 < 49.7, counts  # the 0.999 quantile of chi-square(23)
    # Each position's marginal is uniform too: item 0 lands first a quarter of the time.
    assert abs(np.mean(samples[:, 0] == 0) - 0.25) < 0.015


def test_update_learning_rate_anneals_over_updates_or_stays_at_lr():
    """The step size of update u: lr (1 - (1 - f) u / num_updates) with anneal_lr, lr at every update without (the
    lr metric and TRPO's value fit read it)."""
    config = ppo.PPOConfig(total_timesteps=10 * 512, final_lr_fraction=0.2)  # 10 updates
    constant = config.replace(anneal_lr=False, final_lr_fraction=0.0)
    for u in (0, 4, 10):
        assert float(common.update_learning_rate(config, config.hyperparams(), jnp.int32(u))) == pytest.approx(
            2.5e-4 * (1 - 0.8 * u / 10), rel=1e-6)
        assert float(common.update_learning_rate(constant, constant.hyperparams(), jnp.int32(u))) == pytest.approx(
            2.5e-4, rel=1e-6)


def test_shuffle_rounds_bound_the_tie_bias_by_one_over_n_and_the_sort_is_ours():
    """A round's ties are expected about 2^-(33 - 3b) times (b index bits): the fewest rounds whose product of
    those is at most 2^-b (~1/n), as the docstring states (n = 256: 1, n = 512: 2), and 0 (jax.random.permutation)
    once a round leaves no random bits to spare (n > 1024). Up to there the permutation is the sort of random
    high bits over the index in the low b bits, round after round, recomputed here in NumPy."""
    for n in range(1, 1100):
        b = max(1, (n - 1).bit_length())
        rounds, spare = common.shuffle_rounds(n), 33 - 3 * b
        if spare <= 0:
            assert rounds == 0, n
        else:
            assert rounds * spare >= b and (rounds == 1 or (rounds - 1) * spare < b), (n, rounds)
    assert [common.shuffle_rounds(n) for n in (2, 256, 257, 512, 1024, 1025)] == [1, 1, 2, 2, 4, 0]
    for n in (6, 512):
        key = jax.random.key(n)
        b = max(1, (n - 1).bit_length())
        bits = np.asarray(jax.random.bits(key, (common.shuffle_rounds(n), n), jnp.uint32))
        perm = None
        for round_bits in bits:
            order = np.sort(((round_bits >> b) << b) | np.arange(n, dtype=np.uint32)) & np.uint32((1 << b) - 1)
            perm = order if perm is None else perm[order]
        np.testing.assert_array_equal(common.random_permutation(key, n), perm)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("discrete", [True, False])
def test_policy_and_value_alone_equal_the_joint_call(shared, discrete):
    net = ActorCritic(2, discrete, (8, 8), shared=shared)
    obs = jax.random.normal(jax.random.key(4), (3, 5, 4))
    params = net.init(jax.random.key(5), obs[0, 0])
    dist, value = net.apply(params, obs)
    np.testing.assert_array_equal(net.apply(params, obs, method="value"), value)
    for a, b in zip(jax.tree_util.tree_leaves(net.apply(params, obs, method="policy")),
                    jax.tree_util.tree_leaves(dist)):
        np.testing.assert_array_equal(a, b)


def test_rollout_values_are_the_critic_on_obs_and_true_next_obs():
    """value / next_value from the batched pass after the rollout equal V(obs) and V(final observation)."""
    config = ppo.PPOConfig(num_envs=3, num_steps=40, total_timesteps=120)
    spec = common.make_env(config)
    network = common.actor_critic(config, spec)
    algorithm = ppo.make_algorithm(config, network)
    agent = algorithm.init(jax.random.key(6), spec, config.hyperparams())
    obs, env_state = spec.env.reset(jax.random.key(7), spec.params)
    _, _, batch = jax.jit(common.rollout, static_argnums=(1, 3, 4, 7))(
        jax.random.key(8), spec, agent, algorithm.act, algorithm.value, env_state, obs, config.num_steps
    )
    assert batch.value.shape == batch.next_value.shape == (40, 3)
    assert bool(jnp.any(batch.terminated))  # an episode ended: next_obs differs from the next row's obs there
    critic = lambda o: network.apply(agent.params, o)[1]  # noqa: E731
    np.testing.assert_allclose(batch.value, critic(batch.obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.next_value, critic(batch.next_obs), rtol=1e-5, atol=1e-6)
    # Within episodes the true next observation is the next step's observation.
    within = ~np.asarray(batch.terminated | batch.truncated)[:-1]
    np.testing.assert_array_equal(np.asarray(batch.next_obs)[:-1][within], np.asarray(batch.obs)[1:][within])


def test_schedule_arguments_are_checked():
    # anneal_steps=-5 gave a rate of 0; schedule_offset=-5 1.5 times the initial rate.
    with pytest.raises(ValueError, match="anneal_steps must be an int >= 0"):
        optim.clipped_adam(1e-3, 0.5, -5)
    with pytest.raises(ValueError, match="schedule_offset .* must be >= 0"):
        optim.clipped_adam(1e-3, 0.5, 10, schedule_offset=-5)
