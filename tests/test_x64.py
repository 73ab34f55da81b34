"""pgjax under `jax_enable_x64`, as researchers run exactness work: mixed float32 / float64 inputs compute in the
wider type (no scan-carry or solve dtype clash), and the online algorithms keep float32 networks initialised from
the same draws as without x64 (an audit found float64 networks from other draws, and in-run evaluation failing)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgjax.offline as off
import pgjax.tabular as T
from pgjax.algos import ppo

S, A, GAMMA = 3, 2, 0.9


def _arrays():
    rng = np.random.default_rng(0)  # fixed numbers: jax's random draws depend on the dtype, so x64 would draw others
    transition, reward = rng.dirichlet(np.ones(S), size=(S, A)), rng.uniform(size=(S, A))
    return transition, reward, np.array([0.5, 0.3, 0.2]), rng.normal(size=S * A)


def _tabular_values(mdp, theta):
    features = T.tabular_features(S, A).astype(theta.dtype)
    pi = T.softmax_policy(theta, features)
    return {
        "gradient": T.policy_gradient(mdp, theta, features),
        "advantage_gradient": T.advantage_policy_gradient(mdp, theta, features),
        "finite_horizon": T.finite_horizon_return(mdp, pi, 30),
        "fixed_point": T.occupancy_fixed_point(mdp, pi)[0],
        "iterates": T.occupancy_iterates(mdp, pi, 5),
        "occupancy": T.occupancy(mdp, pi),
        "J": T.expected_return(mdp, pi),
    }


def test_float32_mdp_with_a_float64_policy_computes_in_float64():
    """A float32 MDP (or a float64 discount on float32 arrays) with a float64 theta: each function gives the
    all-float64 answer to float32 rounding of the MDP (before: scan/while carries and LU solves of mixed dtypes
    raised TypeErrors)."""
    P, R, mu0, theta = _arrays()
    with jax.enable_x64(True):
        theta64 = jnp.asarray(theta, jnp.float64)
        mdp32 = T.MDP(*(jnp.asarray(x, jnp.float32) for x in (P, R, mu0)), jnp.asarray(GAMMA, jnp.float32))
        # the float32 MDP's own numbers in float64: the reference differs only in the arithmetic's precision
        exact = _tabular_values(jax.tree.map(lambda x: x.astype(jnp.float64), mdp32), theta64)
        mixed_discount = T.MDP(mdp32.transition, mdp32.reward, mdp32.initial, np.float64(GAMMA))
        for mdp in (mdp32, mixed_discount):
            got = _tabular_values(mdp, theta64)
            for name, value in exact.items():
                assert got[name].dtype == jnp.float64, name
                np.testing.assert_allclose(got[name], value, rtol=2e-6, atol=1e-6, err_msg=name)


def test_a_float32_dataset_with_a_float64_theta():
    """A dataset saved without x64 and loaded with it, used with float64 parameters: the offline gradients and the
    coverage report run and agree with float32 parameters (before: a triangular_solve dtype error)."""
    P, R, mu0, theta = _arrays()
    mdp = T.MDP(P.astype(np.float32), R.astype(np.float32), mu0.astype(np.float32), np.float32(GAMMA))
    data = off.collect(jax.random.key(2), mdp, T.uniform_policy(S, A), num_trajectories=20, horizon=15)
    features = T.tabular_features(S, A)
    theta32 = jnp.asarray(theta, jnp.float32)
    reference = {
        "dualdice": off.dualdice_policy_gradient(data, theta32, features, GAMMA, on_uncovered="ignore"),
        "pdis": off.importance_policy_gradient(data, theta32, features, GAMMA, method="pdis", on_uncovered="ignore"),
    }
    with jax.enable_x64(True):
        theta64, features64 = jnp.asarray(theta, jnp.float64), jnp.asarray(features, jnp.float64)
        got = {
            "dualdice": off.dualdice_policy_gradient(data, theta64, features64, GAMMA, on_uncovered="ignore"),
            "pdis": off.importance_policy_gradient(data, theta64, features64, GAMMA, method="pdis",
                                                   on_uncovered="ignore"),
        }
        model = off.empirical_model(data, S, A)
        report = off.coverage(model, T.softmax_policy(theta64, features64), GAMMA)
        run = off.offline_policy_improvement(data, theta64, features64, GAMMA, optax.sgd(0.1), 2, on_uncovered="ignore")
        assert np.all(np.isfinite(np.asarray(run.thetas)))
    for name, value in reference.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    assert 0.0 <= float(report.mass) <= 1.0


def test_online_runs_keep_float32_networks_and_evaluate_under_x64():
    """PPO on Pendulum-v1 with in-run evaluation under x64. It runs (before: in-run evaluation's cond branches
    float64 / float32, and gymnax's auto-reset mixing float64 reset states with float32 stepped ones: TypeErrors);
    its parameters start from the same float32 draws as without x64 (before: float64 networks from other draws) and
    stay float32. The episodes differ from the first reset: gymnax draws its start states in the default float."""
    config = ppo.PPOConfig(env_id="Pendulum-v1", total_timesteps=256, num_envs=2, num_steps=32, num_minibatches=2,
                           num_epochs=1, eval_every=2, eval_episodes=2)
    start = ppo.make_train(config).start(jax.random.key(0))
    with jax.enable_x64(True):
        train = ppo.make_train(config)
        wide_start = train.start(jax.random.key(0))
        wide = jax.jit(train)(jax.random.key(0))
    for a, b in zip(jax.tree_util.tree_leaves(start.agent.params), jax.tree_util.tree_leaves(wide_start.agent.params)):
        np.testing.assert_array_equal(a, b)
    for leaf in jax.tree_util.tree_leaves((wide.agent.params, wide.agent.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    evaluated = np.asarray(wide.metrics["eval_return"])
    assert np.isfinite(evaluated[1::2]).all() and np.isnan(evaluated[0::2]).all(), evaluated
    assert np.isfinite(np.asarray(wide.metrics["loss"])).all()


def test_a_checkpoint_resumed_with_the_other_x64_setting_says_so(tmp_path):
    from pgjax import checkpoints

    path = str(tmp_path / "checkpoint.npz")
    state = {"w": np.zeros((2, 3), np.float32)}
    checkpoints.save(path, state, {}, 1, np.zeros(1))
    wide = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float64)}
    with pytest.raises(ValueError, match=r"float32\[2, 3\]; this run needs float64\[2, 3\] \(a session with the "
                                         r"other jax_enable_x64 setting wrote it\)"):
        checkpoints.load(path, wide)
    with pytest.raises(ValueError, match="another config, seed count or grid wrote it"):
        checkpoints.load(path, {"w": jax.ShapeDtypeStruct((2, 4), jnp.float64)})


def test_replay_takes_legacy_keys_and_hparams_lists_are_named():
    from pgjax import runs

    draw = lambda key: jax.random.uniform(key, (2,))  # noqa: E731
    legacy = jax.random.split(jax.random.PRNGKey(3), 4)  # uint32 [4, 2]: was "keys must be a 1-D batch of keys"
    np.testing.assert_array_equal(runs.replay_seeds(draw, legacy[1:3], 4),
                                  runs.replay_seeds(draw, jax.random.wrap_key_data(legacy)[1:3], 4))
    config = ppo.PPOConfig(total_timesteps=256, num_envs=2, num_steps=32, num_minibatches=2, num_epochs=1)
    hparams = {**config.hyperparams(), "learning_rate": [2.5e-4]}  # was a TracerArrayConversionError inside jax
    with pytest.raises(ValueError, match=r"\['learning_rate'\] are Python lists"):
        jax.eval_shape(ppo.make_train(config), jax.random.key(0), hparams)
