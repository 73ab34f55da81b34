"""Losses against NumPy hand computations, and their gradients against the estimators they name (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import losses
from pgjax.distributions import Categorical, DiagGaussian

pytestmark = pytest.mark.usefixtures("x64")

N = 64
TRANSFORMS = {"plain": lambda f: f, "jit": jax.jit}


@pytest.fixture(scope="module")
def batch(x64):
    rng = np.random.default_rng(0)
    log_prob = np.log(rng.uniform(0.05, 1.0, N))
    old_log_prob = log_prob + rng.normal(0.0, 0.3, N)  # ratios well inside and outside [0.8, 1.2]
    advantages = rng.normal(size=N)
    return log_prob, old_log_prob, advantages


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_policy_gradient_loss(batch, transform):
    log_prob, _, advantages = batch
    fn = TRANSFORMS[transform](losses.policy_gradient_loss)
    assert float(fn(log_prob, advantages)) == pytest.approx(-np.mean(log_prob * advantages), rel=1e-12)
    g_logp, g_adv = jax.grad(fn, argnums=(0, 1))(jnp.asarray(log_prob), jnp.asarray(advantages))
    np.testing.assert_allclose(g_logp, -advantages / N, rtol=1e-12)
    np.testing.assert_array_equal(g_adv, 0.0)  # advantages are constants


def np_clipped_surrogate(log_prob, old_log_prob, advantages, eps):
    ratio = np.exp(log_prob - old_log_prob)
    loss = -np.mean(np.minimum(ratio * advantages, np.clip(ratio, 1 - eps, 1 + eps) * advantages))
    clip_fraction = np.mean(np.abs(ratio - 1) > eps)
    approx_kl = np.mean(ratio - 1 - np.log(ratio))
    return loss, clip_fraction, approx_kl


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_clipped_surrogate_matches_numpy(batch, transform):
    log_prob, old_log_prob, advantages = batch
    got = TRANSFORMS[transform](losses.clipped_surrogate_loss)(log_prob, old_log_prob, advantages, 0.2)
    expected = np_clipped_surrogate(log_prob, old_log_prob, advantages, 0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert 0.1 < float(got[1]) < 0.9  # the batch really exercises both branches


def test_clipped_surrogate_vmapped_over_clip_eps(batch):
    log_prob, old_log_prob, advantages = batch
    eps = jnp.array([0.1, 0.2, 0.3])
    sweep = jax.jit(jax.vmap(losses.clipped_surrogate_loss, in_axes=(None, None, None, 0)))
    got = sweep(log_prob, old_log_prob, advantages, eps)
    for i, e in enumerate([0.1, 0.2, 0.3]):
        expected = np_clipped_surrogate(log_prob, old_log_prob, advantages, e)
        np.testing.assert_allclose([x[i] for x in got], expected, rtol=1e-12)


def test_clipped_surrogate_gradient_vanishes_outside_clip_range(batch):
    """d loss / d log pi_i = -rho_i A_i / N, except 0 where the clip is active in the direction of A_i."""
    log_prob, old_log_prob, advantages = batch
    eps = 0.2
    grad = jax.grad(lambda lp: losses.clipped_surrogate_loss(lp, old_log_prob, advantages, eps)[0])(
        jnp.asarray(log_prob)
    )
    ratio = np.exp(log_prob - old_log_prob)
    clipped = ((advantages > 0) & (ratio > 1 + eps)) | ((advantages < 0) & (ratio < 1 - eps))
    assert clipped.sum() >= 5 and (~clipped).sum() >= 5
    np.testing.assert_array_equal(grad[clipped], 0.0)
    np.testing.assert_allclose(grad[~clipped], -ratio[~clipped] * advantages[~clipped] / N, rtol=1e-12)
    # Pessimism: outside the range in the *other* direction the gradient is NOT clipped.
    other = ((advantages > 0) & (ratio < 1 - eps)) | ((advantages < 0) & (ratio > 1 + eps))
    assert other.any() and np.all(grad[other] != 0.0)


def test_clipped_surrogate_at_old_policy_is_policy_gradient(batch):
    """At theta = theta_old (rho = 1) the surrogate's gradient is the policy gradient and KL estimate is 0."""
    log_prob, _, advantages = batch
    loss_fn = lambda lp: losses.clipped_surrogate_loss(lp, log_prob, advantages, 0.2)[0]
    g = jax.grad(loss_fn)(jnp.asarray(log_prob))
    np.testing.assert_allclose(g, jax.grad(losses.policy_gradient_loss)(jnp.asarray(log_prob), advantages))
    _, clip_fraction, approx_kl = losses.clipped_surrogate_loss(log_prob, log_prob, advantages, 0.2)
    assert float(clip_fraction) == 0.0 and float(approx_kl) == 0.0


def test_approx_kl_estimates_true_kl(x64):
    """mean((rho - 1) - log rho) over a ~ pi_old is an unbiased estimate of KL(pi_old || pi)."""
    old = Categorical(jnp.array([0.5, -0.3, 1.0, 0.0]))
    new = Categorical(jnp.array([0.2, 0.1, 0.6, 0.3]))
    actions = jax.random.categorical(jax.random.key(0), old.logits, shape=(200_000,))
    _, _, approx_kl = losses.clipped_surrogate_loss(
        new.log_probs[actions], old.log_probs[actions], jnp.zeros(actions.shape), 0.2
    )
    assert float(approx_kl) == pytest.approx(float(old.kl(new)), rel=0.03)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_value_loss(batch, transform):
    rng = np.random.default_rng(1)
    values, targets = rng.normal(size=N), rng.normal(size=N)
    old_values = values + rng.normal(0, 0.5, N)
    eps = 0.2
    fn = TRANSFORMS[transform](losses.value_loss)
    assert float(fn(values, targets)) == pytest.approx(0.5 * np.mean((values - targets) ** 2), rel=1e-12)
    clipped_v = np.clip(values, old_values - eps, old_values + eps)
    expected = 0.5 * np.mean(np.maximum((values - targets) ** 2, (clipped_v - targets) ** 2))
    assert float(fn(values, targets, old_values, eps)) == pytest.approx(expected, rel=1e-12)
    assert expected > 0.5 * np.mean((values - targets) ** 2)  # the clip is active somewhere

    grad = jax.grad(losses.value_loss)(jnp.asarray(values), targets, old_values, eps)
    clip_wins = (clipped_v - targets) ** 2 > (values - targets) ** 2
    assert clip_wins.any()
    np.testing.assert_array_equal(grad[clip_wins], 0.0)
    np.testing.assert_allclose(grad[~clip_wins], (values - targets)[~clip_wins] / N, rtol=1e-12)
    g_targets = jax.grad(losses.value_loss, argnums=1)(jnp.asarray(values), jnp.asarray(targets))
    np.testing.assert_array_equal(g_targets, 0.0)


def test_value_loss_needs_both_clip_arguments():
    with pytest.raises(ValueError, match="both"):
        losses.value_loss(jnp.zeros(3), jnp.zeros(3), old_values=jnp.zeros(3))
    with pytest.raises(ValueError, match="both"):
        losses.value_loss(jnp.zeros(3), jnp.zeros(3), clip_eps=0.2)


def test_categorical_kl_matches_numpy(x64):
    rng = np.random.default_rng(2)
    lp, lq = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    p = np.exp(lp) / np.exp(lp).sum(-1, keepdims=True)
    q = np.exp(lq) / np.exp(lq).sum(-1, keepdims=True)
    np.testing.assert_allclose(losses.categorical_kl(lp, lq), np.sum(p * np.log(p / q), -1), rtol=1e-12)
    np.testing.assert_allclose(losses.categorical_kl(lp, lp), 0.0, atol=1e-15)
    # A zero-probability action in p contributes nothing.
    lp_masked = lp.copy()
    lp_masked[:, 0] = -np.inf
    pm = np.exp(lp_masked) / np.exp(lp_masked).sum(-1, keepdims=True)
    expected = np.sum(pm[:, 1:] * np.log(pm[:, 1:] / q[:, 1:]), -1)
    np.testing.assert_allclose(losses.categorical_kl(lp_masked, lq), expected, rtol=1e-12)


def test_diag_gaussian_kl_matches_full_covariance_formula(x64):
    """Against KL(N0 || N1) = 1/2 [tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - k + ln det S1 / det S0]."""
    rng = np.random.default_rng(3)
    k = 3
    m0, m1 = rng.normal(size=(4, k)), rng.normal(size=(4, k))
    ls0, ls1 = rng.normal(0, 0.5, (4, k)), rng.normal(0, 0.5, k)  # ls1 state-independent, broadcast
    got = losses.diag_gaussian_kl(m0, ls0, m1, ls1)
    for i in range(4):
        s0, s1 = np.diag(np.exp(2 * ls0[i])), np.diag(np.exp(2 * ls1))
        s1_inv = np.linalg.inv(s1)
        d = m1[i] - m0[i]
        expected = 0.5 * (
            np.trace(s1_inv @ s0) + d @ s1_inv @ d - k + np.log(np.linalg.det(s1) / np.linalg.det(s0))
        )
        assert float(got[i]) == pytest.approx(expected, rel=1e-10)
    assert got.shape == (4,)


def test_entropy_loss_and_mean_kl(x64):
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(6, 3)))
    dist = Categorical(logits)
    assert float(losses.entropy_loss(dist)) == pytest.approx(-float(jnp.mean(dist.entropy())), rel=1e-12)
    gauss = DiagGaussian(jnp.zeros((6, 2)), jnp.full((6, 2), 0.5))
    assert float(losses.entropy_loss(gauss)) == pytest.approx(-2 * (0.5 + 0.5 * np.log(2 * np.pi * np.e)))
    other = Categorical(logits[::-1])
    assert float(losses.mean_kl(dist, other)) == pytest.approx(float(jnp.mean(dist.kl(other))), rel=1e-12)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_explained_variance(transform):
    fn = TRANSFORMS[transform](losses.explained_variance)
    rng = np.random.default_rng(5)
    values, targets = rng.normal(size=N), rng.normal(size=N)
    expected = 1 - np.var(targets - values) / np.var(targets)
    assert float(fn(values, targets)) == pytest.approx(expected, rel=1e-10)
    assert float(fn(targets, targets)) == pytest.approx(1.0)
    assert float(fn(np.full(N, np.mean(targets)), targets)) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(float(fn(values, np.ones(N))))
    # float32 constants leave a variance of ~1e-17 after the mean's rounding: still undefined (was 0.0, or -5e15).
    assert np.isnan(float(fn(np.asarray(values, np.float32), np.full(N, 0.1, np.float32))))


def test_explained_variance_is_undefined_below_the_rounding_of_the_mean():
    """float32 targets around 1000, n = 1024: a spread 1.5x the documented sqrt(Var) threshold 4 sqrt(n) eps_f
    sqrt(E[y^2]) is data (a finite ratio, NumPy's), one 0.6x it is rounding (NaN); with or without a mask. A threshold
    divided by E[y^2], or scaled by n, fails one of the two."""
    rng = np.random.default_rng(8)
    unit = rng.normal(size=1024)
    unit = (unit - unit.mean()) / unit.std()
    threshold = 4.0 * np.sqrt(1024) * np.finfo(np.float32).eps * 1000.0
    values = jnp.asarray(np.full(1024, 1000.0, np.float32))
    above = (1000.0 + 1.5 * threshold * unit).astype(np.float32)
    below = (1000.0 + 0.6 * threshold * unit).astype(np.float32)
    x = above.astype(np.float64)
    for mask in (None, jnp.ones(1024, jnp.float32)):
        got = float(losses.explained_variance(values, jnp.asarray(above), mask))
        assert got == pytest.approx(1.0 - np.var(x - 1000.0) / np.var(x), abs=1e-3)  # ~0: values are the mean
        assert np.isnan(float(losses.explained_variance(values, jnp.asarray(below), mask)))


def test_reinforce_masked_explained_variance():
    """REINFORCE's metric over the valid steps of its rollout: two-pass variances (E[y^2] - E[y]^2 cancelled to NaN
    for float32 returns of ~1000 +- 0.1), the masked steps ignored, NaN for constant targets."""
    masked_explained_variance = losses.explained_variance  # with a mask: REINFORCE's metric

    rng = np.random.default_rng(6)
    targets = 1000.0 + 0.1 * rng.normal(size=(16, 4))
    values = targets + 0.07 * rng.normal(size=(16, 4))
    mask = np.ones((16, 4))
    mask[10:, 1] = 0.0
    valid = mask.astype(bool)
    expected = 1 - np.var((targets - values)[valid]) / np.var(targets[valid])
    garbage = np.where(valid, values, -1e4)  # what masked steps hold does not matter
    got = masked_explained_variance(jnp.asarray(garbage, jnp.float32), jnp.asarray(targets, jnp.float32),
                                    jnp.asarray(mask, jnp.float32))
    np.testing.assert_allclose(float(got), expected, rtol=2e-3)
    constant = jnp.full((16, 4), 0.1, jnp.float32)
    assert np.isnan(float(masked_explained_variance(jnp.zeros((16, 4)), constant, jnp.asarray(mask, jnp.float32))))


def test_mean_kl_is_kl_of_the_first_argument_from_the_second(x64):
    """mean_i sum_a p (log p - log q) against NumPy for independent logits (KL is not symmetric: KL(q || p) fails)."""
    rng = np.random.default_rng(7)
    lp, lq = rng.normal(size=(5, 4)), 2.0 * rng.normal(size=(5, 4))
    log_p = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    log_q = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
    expected = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
    assert float(losses.mean_kl(Categorical(jnp.asarray(lp)), Categorical(jnp.asarray(lq)))) == pytest.approx(
        expected, rel=1e-12)
    # Gaussians: KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2 per dimension.
    p = DiagGaussian(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    q = DiagGaussian(jnp.ones((3, 2)), jnp.full((3, 2), np.log(2)))
    assert float(losses.mean_kl(p, q)) == pytest.approx(2 * (np.log(2) + 2 / 8 - 0.5), rel=1e-12)


def test_clipped_surrogate_gradient_flows_only_through_the_new_log_prob(batch):
    """d/d lp of the loss at old = new = lp (both traced) is the policy gradient's -A / N: old_log_prob is a
    constant; without its stop_gradient the ratio exp(lp - lp) = 1 has gradient 0."""
    log_prob, _, advantages = batch
    g = jax.grad(lambda lp: losses.clipped_surrogate_loss(lp, lp, advantages, 0.2)[0])(jnp.asarray(log_prob))
    np.testing.assert_allclose(g, -advantages / N, rtol=1e-12)


def test_masked_explained_variance_threshold_counts_the_masked_steps():
    """Near-constant float32 targets: the constant threshold 4 sqrt(n) eps_f uses n = the 4 valid steps (defined, equal
    to NumPy's), not the 1024 elements (NaN), so a spread of ~3e-6 relative to 1000 is still a variance."""
    targets = np.full((8, 128), 5.0, np.float32)  # what masked steps hold does not matter
    values = np.zeros((8, 128), np.float32)
    mask = np.zeros((8, 128), np.float32)
    mask[0, :4] = 1.0
    # std 0.0032: above 4 sqrt(4) eps_f 1000 = 9.5e-4, below 4 sqrt(1024) eps_f 1000 = 0.015.
    targets[0, :4] = np.array([999.996, 999.998, 1000.002, 1000.004], np.float32)
    values[0, :4] = targets[0, :4] + np.array([0.001, -0.002, 0.0, 0.0005], np.float32)
    t, v = targets[0, :4].astype(np.float64), values[0, :4].astype(np.float64)
    expected = 1 - np.var(t - v) / np.var(t)
    got = losses.explained_variance(jnp.asarray(values), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-3)


def test_diag_gaussian_kl_is_finite_and_accurate_in_float32():
    """The variance form (sigma_p^2 + dm^2) / (2 sigma_q^2) overflowed to inf / inf = NaN at log sigma ~ 44, and
    cancelled the O(d^2) KL of nearby log-stds to float32 rounding of 1/2 (12% off at d = 1e-3; expm1 leaves the
    rounding of d itself, ~eps / d = 1e-4)."""
    for ls_p, ls_q, dm in ((60.0, 60.0, 1.0), (60.0, 59.0, 0.0), (1e-3, 0.0, 0.0), (0.3, 0.3 - 2e-3, 1e-3)):
        got = losses.diag_gaussian_kl(jnp.array([[dm]], jnp.float32), jnp.array([ls_p], jnp.float32),
                                      jnp.zeros((1, 1), jnp.float32), jnp.array([ls_q], jnp.float32))
        assert got.dtype == jnp.float32
        d = np.float64(np.float32(ls_p)) - np.float64(np.float32(ls_q))  # the float32 inputs, exactly
        z = np.float64(np.float32(dm)) * np.exp(-np.float64(np.float32(ls_q)))
        expected = 0.5 * np.expm1(2 * d) - d + 0.5 * z**2
        assert float(got[0]) == pytest.approx(expected, rel=3e-4, abs=1e-30)
