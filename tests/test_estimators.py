"""Monte Carlo policy-gradient estimators against the exact gradient (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import estimators as E
from pgjax import tabular as T
from pgjax.trajectory import Trajectory, sample_trajectories

pytestmark = pytest.mark.usefixtures("x64")

S, A, DISCOUNT = 4, 2, 0.8
NUM_ESTIMATES = 3000
TRUNCATION = 1  # at 3 the bias was below detection for some MDPs (max |z| 2.96 and 2.23 at key offsets 14, 27)


@pytest.fixture(scope="module")
def problem(x64):
    mdp = T.random_mdp(jax.random.key(0), S, A, discount=DISCOUNT)
    features = T.tabular_features(S, A)
    theta = 0.5 * jax.random.normal(jax.random.key(1), (S * A,))
    return E.GradientProblem(mdp, theta, features)


@pytest.fixture(scope="module")
def horizon():
    return E.effective_horizon(DISCOUNT, 1e-9)


@pytest.fixture(scope="module")
def results(problem, horizon):
    out = {}
    for i, (name, est) in enumerate(E.ESTIMATORS.items()):
        # The two theorem forms share a key (same trajectories and time draws): a paired comparison.
        key = jax.random.key(200) if name.startswith("theorem") else jax.random.key(100 + i)
        out[name] = E.run_estimator(key, problem, est, NUM_ESTIMATES, 1, horizon)
    trunc = E.truncated(E.reinforce_rewards_to_go, TRUNCATION)
    out["truncated"] = E.run_estimator(jax.random.key(99), problem, trunc, NUM_ESTIMATES, 1, horizon)
    return out


@pytest.mark.parametrize("name", list(E.ESTIMATORS))
def test_unbiased_estimators_contain_the_exact_gradient(results, name):
    _, stats = results[name]
    E.check_finite(stats, name)
    # Bonferroni over D = 8 coordinates: |z| < 4.5 fails a correct estimator with probability < 1e-4.
    assert float(jnp.max(jnp.abs(stats.bias_z))) < 4.5, (name, stats.bias_z)


def test_truncated_estimator_is_measurably_biased_towards_the_truncated_objective(results, problem):
    _, stats = results["truncated"]
    # Rejected as an estimator of grad J at the level the unbiased ones pass (their |z| < 4.5 bound). Max |z|
    # over the MDPs of PGJAX_TEST_KEY_OFFSET 0-29: 9.9 to 443 (truncated after 1 step; after 3: 2.2 to 30).
    assert float(jnp.max(jnp.abs(stats.bias_z))) > 4.5
    # Its mean is the gradient of J_H = E[sum_{t<H} gamma^t r_t], computed exactly by autodiff.
    grad_jh = jax.grad(
        lambda th: T.finite_horizon_return(problem.mdp, T.softmax_policy(th, problem.features), TRUNCATION)
    )(problem.theta)
    estimates, _ = results["truncated"]
    vs_truncated = E.estimator_stats(estimates, grad_jh)
    assert float(jnp.max(jnp.abs(vs_truncated.bias_z))) < 4.5


def test_variance_reduction_ordering(results):
    var = {name: float(results[name][1].total_variance) for name in results}
    # (total return vs rewards-to-go is not ordered in general: it depends on the reward structure). The ratios over
    # the MDPs of key offsets 0-29: total return 380-14478x, rewards-to-go 13.5-438x the baseline's variance.
    assert var["reinforce"] > 10 * var["value_baseline"]
    assert var["rewards_to_go"] > 10 * var["value_baseline"]


def test_rollout_q_adds_zero_mean_uncorrelated_noise_to_exact_q(results):
    """Rao-Blackwell: E[G_t | s_t, a_t] = Q(s_t, a_t), so on the same draws (the two forms share a key) the
    rollout form is the exact-Q form plus noise N of mean zero, uncorrelated with it: tr Var[rollout] =
    tr Var[exact] + tr Var[N], larger. The sample variances themselves are not reliably ordered: N adds only
    0.2-4.0% here (key offsets 0-29), less than their sampling noise, and at offset 14 the rollout's came out lower."""
    rollout, exact = (np.asarray(results[name][0]) for name in ("theorem_rollout_q", "theorem_exact_q"))
    noise = rollout - exact
    k = len(noise)
    assert noise.var(0).sum() > 1e-3 * exact.var(0).sum()  # the rollout does add noise (0.2-4.0%)
    z_mean = noise.mean(0) / (noise.std(0, ddof=1) / np.sqrt(k))
    assert np.max(np.abs(z_mean)) < 4.5, z_mean  # max |z| 0.6-2.7 over key offsets 0-29
    cross = ((exact - exact.mean(0)) * (noise - noise.mean(0))).sum(1)  # per draw; its mean is tr Cov(exact, N)
    assert abs(cross.mean()) < 4.5 * cross.std(ddof=1) / np.sqrt(k)  # |z| 0-2.7 over key offsets 0-29


def test_error_shrinks_like_one_over_sqrt_n(problem, horizon):
    curve = E.error_curve(jax.random.key(7), problem, E.reinforce_value_baseline, (1, 4, 16), 400, horizon)
    rel = np.array([float(s.relative_error) for s in curve])
    assert rel[0] > rel[1] > rel[2]
    np.testing.assert_allclose(rel[0] / rel[2], 4.0, rtol=0.25)


def test_estimator_stats_match_numpy():
    rng = np.random.default_rng(0)
    est = rng.normal(size=(50, 3)) + np.array([1.0, -2.0, 0.5])
    exact = np.array([1.0, -2.0, 0.0])
    s = E.estimator_stats(jnp.asarray(est), jnp.asarray(exact))
    mean = est.mean(0)
    np.testing.assert_allclose(s.bias, mean - exact, rtol=1e-12)
    np.testing.assert_allclose(s.total_variance, est.var(0).sum(), rtol=1e-12)
    np.testing.assert_allclose(s.mse, ((est - exact) ** 2).sum(1).mean(), rtol=1e-12)
    np.testing.assert_allclose(s.relative_error, np.sqrt(((est - exact) ** 2).sum(1).mean()) / np.linalg.norm(exact))
    cos = (est @ exact) / np.linalg.norm(est, axis=1) / np.linalg.norm(exact)
    np.testing.assert_allclose(s.cosine, cos.mean(), rtol=1e-12)
    np.testing.assert_allclose(s.bias_z, (mean - exact) / (est.std(0, ddof=1) / np.sqrt(50)), rtol=1e-12)


def test_run_is_reproducible_and_batched_equals_single(problem, horizon):
    a, _ = E.run_estimator(jax.random.key(3), problem, E.reinforce_rewards_to_go, 8, 2, horizon)
    b, _ = E.run_estimator(jax.random.key(3), problem, E.reinforce_rewards_to_go, 8, 2, horizon)
    np.testing.assert_array_equal(a, b)
    two, _ = E.run_estimator(jax.random.key(3), problem, E.reinforce_rewards_to_go, 2, 2, horizon)  # the fewest
    assert two.shape == a[:2].shape and np.isfinite(np.asarray(two)).all()
    samples = E.per_trajectory_estimates(jax.random.key(3), problem, E.reinforce_rewards_to_go, 16, horizon)
    np.testing.assert_allclose(a, samples.reshape(8, 2, -1).mean(1), rtol=1e-12)


def test_trajectories_are_estimated_in_chunks_that_change_nothing(problem, horizon, monkeypatch):
    """per_trajectory_estimates samples and estimates trajectories in chunks (at most 2^25 elements of [T, D] at
    once: one vmapped batch of the estimator lab's 32,000 trajectories took 15 GB at gamma = 0.99). Trajectory i
    comes from the i-th key of one half of the key and its estimate from the other half's, whatever the chunks: 10
    trajectories in one chunk, and in 4 chunks of 3 (the last padded with 2 repeats), equal one vmapped batch."""
    n, dim = 10, S * A
    key_traj, key_est = jax.random.split(jax.random.key(4))
    trajs = sample_trajectories(key_traj, problem.mdp, T.softmax_policy(problem.theta, problem.features), horizon, n)
    assert E.trajectory_chunk(n, horizon, dim) == n
    for name in ("rewards_to_go", "theorem_rollout_q"):  # the second draws its time step from its key
        direct = jax.vmap(E.ESTIMATORS[name], in_axes=(0, 0, None))(jax.random.split(key_est, n), trajs, problem)
        np.testing.assert_array_equal(E.per_trajectory_estimates(jax.random.key(4), problem, E.ESTIMATORS[name], n,
                                                                 horizon), direct)
        with monkeypatch.context() as patch:
            patch.setattr(E, "_CHUNK_ELEMENTS", 3 * horizon * dim + 1)
            assert E.trajectory_chunk(n, horizon, dim) == 3 and E.trajectory_chunk(n, 4 * horizon, dim) == 1
            chunked = E.per_trajectory_estimates(jax.random.key(4), problem, E.ESTIMATORS[name], n, horizon)
            program = jax.make_jaxpr(E.per_trajectory_estimates, static_argnums=(2, 3, 4))(
                jax.random.key(4), problem, E.ESTIMATORS[name], n, horizon)
        np.testing.assert_array_equal(chunked, direct)
        # the chunks are of [T, D] (D = S A from the features), not of some other size: one loop over 4 chunks
        assert [eqn.params["length"] for eqn in program.jaxpr.eqns if eqn.primitive.name == "scan"] == [4]
    # The lab's largest call at gamma = 0.99 stays within the budget: 2^25 elements, 256 MiB in float64.
    chunk = E.trajectory_chunk(32_000, 1375, 40)
    assert 2**24 < chunk * 1375 * 40 <= 2**25, chunk  # 604 trajectories a chunk, 53 chunks


def test_geometric_time_has_the_right_distribution():
    ts = jax.vmap(E.geometric_time, in_axes=(0, None))(jax.random.split(jax.random.key(0), 20_000), 0.8)
    # P(t = 0) = 0.2, E[t] = gamma / (1 - gamma) = 4
    assert abs(float((ts == 0).mean()) - 0.2) < 0.015
    assert abs(float(ts.mean()) - 4.0) < 0.15


def test_nan_is_reported():
    stats = E.estimator_stats(jnp.array([[jnp.nan, 1.0]]), jnp.array([1.0, 1.0]))
    with pytest.raises(FloatingPointError, match="NaN"):
        E.check_finite(stats, "broken")


def test_bad_arguments():
    with pytest.raises(ValueError, match="truncation"):
        E.truncated(E.reinforce_rewards_to_go, 0)
    for discount in (0.0, 1.0):  # (0, 1), open at both ends
        with pytest.raises(ValueError, match="discount"):
            E.effective_horizon(discount)
    for tail in (2.0, 1.0, 0.0):  # 2 gave a horizon of -1; 1 and 0 are the open interval's ends
        with pytest.raises(ValueError, match=r"tail must lie in \(0, 1\)"):
            E.effective_horizon(0.5, tail=tail)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):  # a bare ZeroDivisionError
        E.batch_means(jnp.zeros((4, 2)), 0)
    with pytest.raises(ValueError, match="batch_size 3 exceeds the 2 samples"):
        E.batch_means(jnp.zeros((2, 2)), 3)
    np.testing.assert_array_equal(E.batch_means(jnp.ones((1, 2)), 1), [[1.0, 1.0]])  # one sample, one batch
    np.testing.assert_array_equal(E.batch_means(jnp.arange(10.0).reshape(5, 2), 2), [[1.0, 2.0], [5.0, 6.0]])
    with pytest.raises(ValueError, match="batch sizes"):
        E.error_curve(jax.random.key(0), None, E.reinforce_rewards_to_go, (0, 2), 4, 4)
    # One estimate has no spread: z was +-inf (read as "certainly biased") for an unbiased estimator.
    one = E.estimator_stats(jnp.array([[1.5, 0.5]]), jnp.array([1.0, 1.0]))
    assert np.isnan(np.asarray(one.bias_z)).all()
    # Two already have one: mean (2, 3), standard error sqrt(1 * 2 / 1) / sqrt(2) = 1.
    two = E.estimator_stats(jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.zeros(2))
    np.testing.assert_allclose(two.bias_z, [2.0, 3.0], rtol=1e-12)
    # Estimates that never vary: z = 0 where they are exact, +-inf where they are not.
    constant = E.estimator_stats(jnp.array([[1.0, 2.0, -1.0]] * 3), jnp.array([1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(constant.bias_z, [0.0, np.inf, -np.inf])
    with pytest.raises(ValueError, match=r"error_curve: num_estimates must be >= 2 .*got 1"):
        E.error_curve(jax.random.key(0), None, E.reinforce_rewards_to_go, (1, 2), 1, 4)
    with pytest.raises(ValueError, match=r"run_estimator: num_estimates must be >= 2"):
        E.run_estimator(jax.random.key(0), None, E.reinforce_rewards_to_go, 1, 2, 4)


def test_total_return_gradient_sums_every_score_times_the_discounted_return(problem):
    """(sum_t score_t) * sum_t gamma^t r_t against NumPy, formula and estimator; dropping a score (e.g. t = 0) fails."""
    rng = np.random.default_rng(8)
    scores, rewards = rng.normal(size=(5, 3)), rng.normal(size=5)
    g0 = np.sum(0.9 ** np.arange(5) * rewards)
    np.testing.assert_allclose(E.total_return_gradient(jnp.asarray(scores), jnp.asarray(rewards), 0.9),
                               scores.sum(0) * g0, rtol=1e-12)
    # A hand-built trajectory through the estimator: its scores are grad log pi at the visited (s, a).
    traj = Trajectory(jnp.array([0, 1, 3]), jnp.array([1, 0, 1]), jnp.array([0.5, -1.0, 2.0]), jnp.array([1, 3, 2]))
    table = np.asarray(T.grad_log_policy(problem.theta, problem.features))
    expected = sum(table[s, a] for s, a in [(0, 1), (1, 0), (3, 1)]) * (0.5 - DISCOUNT + 2.0 * DISCOUNT**2)
    np.testing.assert_allclose(E.reinforce_total_return(None, traj, problem), expected, rtol=1e-12)


def test_theorem_form_is_zero_for_a_time_draw_at_the_horizon(problem):
    """The theorem form is grad log pi(a_t|s_t) G_t / (1-gamma) for a draw t < T and exactly 0 for t >= T (documented),
    t = T included: keys found by scanning fixed seeds for t = T - 1 and t = T."""
    traj = Trajectory(jnp.array([0, 1, 3]), jnp.array([1, 0, 1]), jnp.array([1.0, 1.0, 1.0]), jnp.array([1, 3, 2]))
    horizon = 3
    keys = jax.random.split(jax.random.key(11), 200)
    ts = np.asarray(jax.vmap(E.geometric_time, in_axes=(0, None))(keys, DISCOUNT))
    at_last, at_horizon = keys[np.flatnonzero(ts == horizon - 1)[0]], keys[np.flatnonzero(ts == horizon)[0]]
    score = np.asarray(T.grad_log_policy(problem.theta, problem.features))[3, 1]
    np.testing.assert_allclose(E.theorem_form_rollout_q(at_last, traj, problem), score * 1.0 / (1 - DISCOUNT),
                               rtol=1e-12)
    np.testing.assert_array_equal(E.theorem_form_rollout_q(at_horizon, traj, problem), 0.0)
    np.testing.assert_array_equal(E.theorem_form_exact_q(at_horizon, traj, problem), 0.0)


def test_effective_horizon_is_the_smallest_sufficient_horizon():
    """gamma^T <= tail < gamma^(T-1) (T the smallest horizon leaving at most `tail`): a floor gives gamma^T > tail."""
    for discount, tail in [(0.8, 1e-9), (0.99, 1e-8), (0.5, 0.3), (0.9, 1e-3), (0.95, 0.05)]:
        horizon = E.effective_horizon(discount, tail)
        assert discount**horizon <= tail < discount ** (horizon - 1), (discount, tail, horizon)


def test_cosine_averages_signed_cosines():
    """The cosine of an anti-aligned estimate is -1, so estimates [1, 0] and [-1, 0] of [1, 0] average 0 (not 1)."""
    stats = E.estimator_stats(jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.array([1.0, 0.0]))
    assert float(stats.cosine) == 0.0
    stats = E.estimator_stats(jnp.array([[-2.0, 0.0], [0.0, 3.0]]), jnp.array([1.0, 0.0]))
    assert float(stats.cosine) == -0.5


def test_truncated_rollout_estimators_are_unbiased_for_the_truncated_objective():
    """Truncated at H = 2, the rollout estimators average to grad J_H (autodiff of the exact H-step return) within
    4.5 standard errors per coordinate, and are far (> 8) from grad J: the truncation bias the lab shows."""
    mdp = T.random_mdp(jax.random.key(0), 3, 2, discount=0.7)
    features = T.tabular_features(3, 2)
    theta = jax.random.normal(jax.random.key(1), (6,))
    problem = E.GradientProblem(mdp, theta, features)
    grad_jh = np.asarray(jax.grad(lambda th: T.finite_horizon_return(mdp, T.softmax_policy(th, features), 2))(theta))
    grad_j = np.asarray(T.policy_gradient(mdp, theta, features))
    for i, name in enumerate(("rewards_to_go", "theorem_rollout_q", "reinforce")):
        estimator = E.truncated(E.ESTIMATORS[name], 2)
        samples = np.asarray(E.per_trajectory_estimates(jax.random.key(9 + i), problem, estimator, 50_000, 8),
                             np.float64)
        se = samples.std(0, ddof=1) / np.sqrt(len(samples))
        z_jh, z_j = (samples.mean(0) - grad_jh) / se, (samples.mean(0) - grad_j) / se
        assert np.abs(z_jh).max() < 4.5, (name, z_jh)
        assert np.abs(z_j).max() > 8.0, (name, z_j)
