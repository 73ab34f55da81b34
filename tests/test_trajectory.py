"""Trajectory sampling, log-densities and returns (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import tabular as T
from pgjax import trajectory as tr

pytestmark = pytest.mark.usefixtures("x64")

S, A, H = 4, 3, 12


@pytest.fixture(scope="module")
def setup(x64):
    mdp = T.random_mdp(jax.random.key(0), S, A, discount=0.8, concentration=0.5)
    features = T.tabular_features(S, A)
    theta = jax.random.normal(jax.random.key(1), (S * A,))
    return mdp, theta, features


@pytest.fixture(scope="module")
def many(setup):
    mdp, theta, features = setup
    sample = jax.jit(tr.sample_trajectories, static_argnums=(3, 4))
    return sample(jax.random.key(2), mdp, T.softmax_policy(theta, features), 60, 20_000)


def test_shapes_and_consistency(setup):
    mdp, theta, features = setup
    traj = tr.sample_trajectory(jax.random.key(3), mdp, T.softmax_policy(theta, features), H)
    assert traj.states.shape == traj.actions.shape == traj.rewards.shape == (H,)
    np.testing.assert_array_equal(traj.states[1:], traj.next_states[:-1])
    np.testing.assert_allclose(traj.rewards, mdp.reward[traj.states, traj.actions])


def test_sampling_distribution_matches_model(setup, many):
    mdp, theta, features = setup
    pi = T.softmax_policy(theta, features)
    n = many.states.shape[0]
    freq0 = np.bincount(np.asarray(many.states[:, 0]), minlength=S) / n
    se = np.sqrt(np.asarray(mdp.initial) * (1 - np.asarray(mdp.initial)) / n)
    assert np.all(np.abs(freq0 - np.asarray(mdp.initial)) <= 5 * se + 1e-12)
    # state distribution at t = 3 is mu0 (P^pi)^3
    mu3 = np.asarray(mdp.initial) @ np.linalg.matrix_power(np.asarray(T.policy_transition(mdp, pi)), 3)
    freq3 = np.bincount(np.asarray(many.states[:, 3]), minlength=S) / n
    assert np.all(np.abs(freq3 - mu3) <= 5 * np.sqrt(mu3 * (1 - mu3) / n) + 1e-12)


def test_monte_carlo_return_matches_exact_j(setup, many):
    mdp, theta, features = setup
    returns = jax.vmap(tr.discounted_return, in_axes=(0, None))(many.rewards, mdp.discount)
    exact_h = T.finite_horizon_return(mdp, T.softmax_policy(theta, features), 60)
    exact = T.expected_return(mdp, T.softmax_policy(theta, features))
    se = float(returns.std()) / np.sqrt(returns.shape[0])
    assert abs(float(returns.mean()) - float(exact_h)) < 4 * se
    assert abs(float(exact_h) - float(exact)) < 0.8**60 * 1.0 / 0.2  # truncation tail bound (rewards in [0,1])


def test_finite_horizon_return_by_explicit_sum(setup):
    mdp, theta, features = setup
    pi = np.asarray(T.softmax_policy(theta, features))
    p_pi = np.asarray(T.policy_transition(mdp, pi))
    r_pi = (pi * np.asarray(mdp.reward)).sum(1)
    mu, total = np.asarray(mdp.initial), 0.0
    for t in range(7):
        total += 0.8**t * mu @ r_pi
        mu = mu @ p_pi
    np.testing.assert_allclose(T.finite_horizon_return(mdp, pi, 7), total, rtol=1e-12)


def test_log_density_matches_explicit_product(setup):
    mdp, theta, features = setup
    pi = T.softmax_policy(theta, features)
    traj = tr.sample_trajectory(jax.random.key(4), mdp, pi, H)
    s, a, s2 = (np.asarray(x) for x in (traj.states, traj.actions, traj.next_states))
    P, mu0, pi_np = np.asarray(mdp.transition), np.asarray(mdp.initial), np.asarray(pi)
    manual = np.log(mu0[s[0]]) + sum(np.log(pi_np[s[t], a[t]]) + np.log(P[s[t], a[t], s2[t]]) for t in range(H))
    np.testing.assert_allclose(tr.log_density(traj, mdp, pi), manual, rtol=1e-12)


def test_impossible_trajectory_has_zero_density():
    P = np.zeros((2, 1, 2))
    P[:, 0, 0] = 1.0  # always go to state 0
    mdp = T.MDP(P, np.zeros((2, 1)), np.array([1.0, 0.0]), 0.9)
    traj = tr.Trajectory(jnp.array([0, 1]), jnp.array([0, 0]), jnp.zeros(2), jnp.array([1, 0]))
    assert float(tr.log_density(traj, mdp, jnp.ones((2, 1)))) == -np.inf


def test_dynamics_drop_out_of_the_score(setup):
    """grad_theta log p_theta(h) = sum_t grad log pi(a_t|s_t): P and mu0 do not depend on theta."""
    mdp, theta, features = setup
    trajs = tr.sample_trajectories(jax.random.key(5), mdp, T.softmax_policy(theta, features), H, 8)

    def grad_log_density(traj):
        return jax.grad(lambda th: tr.log_density(traj, mdp, T.softmax_policy(th, features)))(theta)

    def score_sum(traj):
        return T.grad_log_policy(theta, features)[traj.states, traj.actions].sum(0)

    np.testing.assert_allclose(jax.vmap(grad_log_density)(trajs), jax.vmap(score_sum)(trajs), rtol=0, atol=1e-12)
    # ...while the density itself does depend on the dynamics
    other = mdp.replace(transition=T.random_mdp(jax.random.key(6), S, A).transition)
    traj0 = jax.tree_util.tree_map(lambda x: x[0], trajs)
    assert float(tr.log_density(traj0, mdp, T.softmax_policy(theta, features))) != float(
        tr.log_density(traj0, other, T.softmax_policy(theta, features))
    )


def test_rewards_to_go_and_return_match_numpy():
    rewards = jax.random.uniform(jax.random.key(7), (9,))
    g = 0.7
    expected = np.array([sum(g ** (k - t) * float(rewards[k]) for k in range(t, 9)) for t in range(9)])
    np.testing.assert_allclose(tr.rewards_to_go(rewards, g), expected, rtol=1e-12)
    np.testing.assert_allclose(tr.discounted_return(rewards, g), expected[0], rtol=1e-12)
    np.testing.assert_allclose(jax.jit(tr.rewards_to_go)(rewards, g), expected, rtol=1e-12)
    # Integer rewards give floating returns (the scan's carry was an integer zero: a type error).
    ints = jnp.array([1, 0, 2, 3])
    np.testing.assert_allclose(tr.rewards_to_go(ints, g), [1 + 0.7**2 * 2 + 0.7**3 * 3, 0.7 * 2 + 0.7**2 * 3,
                                                            2 + 0.7 * 3, 3], rtol=1e-12)


def test_vmapped_sampling_equals_one_at_a_time(setup):
    mdp, theta, features = setup
    pi = T.softmax_policy(theta, features)
    batch = tr.sample_trajectories(jax.random.key(8), mdp, pi, H, 3)
    keys = jax.random.split(jax.random.key(8), 3)
    for i in range(3):
        single = tr.sample_trajectory(keys[i], mdp, pi, H)
        np.testing.assert_array_equal(batch.states[i], single.states)
        np.testing.assert_array_equal(batch.actions[i], single.actions)


def test_bad_sizes_raise():
    mdp = T.chain_mdp()
    with pytest.raises(ValueError, match="horizon"):
        tr.sample_trajectory(jax.random.key(0), mdp, T.uniform_policy(6, 2), 0)
    with pytest.raises(ValueError, match="num_trajectories"):
        tr.sample_trajectories(jax.random.key(0), mdp, T.uniform_policy(6, 2), 5, 0)


def test_low_precision_rewards_are_summed_in_float32():
    # In bfloat16 gamma = 0.999 rounds to 1 and arange stops counting at 256: 300 rewards of 1 gave 300 and 256.
    rewards = jnp.ones(300, jnp.bfloat16)
    expected = (1 - 0.999**300) / (1 - 0.999)  # 259.293
    assert float(tr.discounted_return(rewards, 0.999)) == pytest.approx(expected, rel=1e-5)
    assert float(tr.rewards_to_go(rewards, 0.999)[0]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="dtype must be floating"):  # gamma^t would be 0 from t = 1
        tr.discount_powers(3, 0.9, jnp.int32)


def test_sample_index_draws_by_inversion_of_an_unnormalised_cdf():
    """p = [1, 0, 1, 2] / 4 as the cumulative sums [1, 1, 2, 4] (not divided by their total): frequencies within 5
    standard errors over 20,000 draws, and the zero-probability index never drawn."""
    cdf = jnp.asarray([1.0, 1.0, 2.0, 4.0])
    draws = np.asarray(jax.vmap(tr.sample_index, (0, None))(jax.random.split(jax.random.key(3), 20_000), cdf))
    assert draws.dtype == np.int32 and draws.min() >= 0 and draws.max() <= 3
    p = np.array([0.25, 0.0, 0.25, 0.5])
    frequencies = np.bincount(draws, minlength=4) / draws.size
    assert frequencies[1] == 0.0
    np.testing.assert_array_less(np.abs(frequencies - p), 5 * np.sqrt(p * (1 - p) / draws.size) + 1e-12)


def test_discount_powers_are_gamma_to_the_t():
    np.testing.assert_allclose(tr.discount_powers(5, 0.9), 0.9 ** np.arange(5), rtol=1e-15)
    assert tr.discount_powers(0, 0.9).shape == (0,)  # an empty horizon is allowed


def test_what_is_not_a_policy_is_refused():
    """Logits passed as pi sampled their largest entry every time, and log_density of 2 pi was off by T log 2."""
    mdp = T.chain_mdp()
    logits = jnp.tile(jnp.array([[0.3, 1.2]]), (6, 1))
    with pytest.raises(ValueError, match="rows must sum to 1"):
        tr.sample_trajectory(jax.random.key(0), mdp, logits, 5)
    traj = tr.sample_trajectory(jax.random.key(0), mdp, T.uniform_policy(6, 2), 5)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        tr.log_density(traj, mdp, 2 * T.uniform_policy(6, 2))
    with pytest.raises(ValueError, match=r"pi must have shape \[S, A\] = \(6, 2\)"):
        tr.log_density(traj, mdp, T.uniform_policy(5, 2))
    with pytest.raises(ValueError, match="rows must sum to 1"):
        tr.policy_log_likelihood(traj, logits)


def test_policy_log_likelihood_sums_over_time_for_batched_trajectories(setup):
    """Fields [N, T] (N = 3 != T = 5) -> [N]: each entry the one-trajectory sum of log pi(a_t|s_t) (NumPy), i.e. the sum
    runs over the last (time) axis, not the batch axis."""
    mdp, theta, features = setup
    pi = T.softmax_policy(theta, features)
    trajs = tr.sample_trajectories(jax.random.key(8), mdp, pi, 5, 3)
    got = tr.policy_log_likelihood(trajs, pi)
    pi_np, s, a = np.asarray(pi), np.asarray(trajs.states), np.asarray(trajs.actions)
    np.testing.assert_allclose(got, [np.log(pi_np[s[i], a[i]]).sum() for i in range(3)], rtol=1e-12)
    np.testing.assert_allclose(got, jax.vmap(tr.policy_log_likelihood, in_axes=(0, None))(trajs, pi), rtol=1e-12)


def test_safe_log_has_a_finite_gradient_at_zero():
    """log 0 = -inf with no NaN gradient: d/dp sum(where(p > 0, safe_log(p), 0)) at p = [0, 0.5] is [0, 2] (jnp.log
    gives 0 * inf = NaN at 0)."""
    p = jnp.array([0.0, 0.5])
    np.testing.assert_array_equal(tr.safe_log(p), [-np.inf, np.log(0.5)])
    grad = jax.grad(lambda q: jnp.sum(jnp.where(q > 0, tr.safe_log(q), 0.0)))(p)
    np.testing.assert_array_equal(grad, [0.0, 2.0])
