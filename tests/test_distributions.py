"""Categorical and diagonal-Gaussian distributions against closed forms, NumPy and Monte Carlo (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax.distributions import Categorical, DiagGaussian, diag_gaussian, sampling_noise

pytestmark = pytest.mark.usefixtures("x64")

MC = 200_000


def expand(dist, m):
    """The distribution broadcast to a leading axis of m independent copies."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (m, *x.shape)), dist)


def draw(dist, key, m):
    """m independent samples [m, ...] in one call."""
    return expand(dist, m).sample(key)


def assert_mean_within_z(samples, expected, z=5.0):
    """The Monte Carlo mean of `samples` [M, ...] equals `expected` [...] within z standard errors per entry
    (z = 5: a correct estimator fails with probability < 1e-6 per entry, whatever the key)."""
    samples = np.asarray(samples, dtype=np.float64)
    se = samples.std(0) / np.sqrt(samples.shape[0])
    error = np.abs(samples.mean(0) - np.asarray(expected))
    assert np.all(error <= z * se + 1e-12), (error / np.maximum(se, 1e-300)).max()


def frequencies_match(samples, probs):
    """Empirical action frequencies of integer `samples` [M, B] against `probs` [B, K], as a mean of one-hots."""
    assert_mean_within_z(jax.nn.one_hot(samples, probs.shape[-1]), probs)


@pytest.fixture(scope="module")
def categoricals(x64):
    rng = np.random.default_rng(0)
    return Categorical(jnp.asarray(rng.normal(size=(3, 4)))), Categorical(jnp.asarray(rng.normal(size=(3, 4))))


@pytest.fixture(scope="module")
def gaussians(x64):
    rng = np.random.default_rng(1)
    p = diag_gaussian(jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(0, 0.3, 2)))
    q = diag_gaussian(jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(0, 0.3, (3, 2))))
    return p, q


def test_categorical_log_prob_entropy_mode(categoricals):
    p, _ = categoricals
    logits = np.asarray(p.logits)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    actions = jnp.array([0, 3, 2])
    np.testing.assert_allclose(p.log_prob(actions), np.log(probs[np.arange(3), actions]), rtol=1e-12)
    np.testing.assert_allclose(p.entropy(), -np.sum(probs * np.log(probs), -1), rtol=1e-12)
    np.testing.assert_array_equal(p.mode(), np.argmax(logits, -1))
    assert float(Categorical(jnp.zeros(5)).entropy()) == pytest.approx(math.log(5))
    # A masked (-inf) action has probability 0, and the entropy stays finite.
    masked = Categorical(jnp.array([0.0, -jnp.inf, 0.0]))
    assert float(masked.entropy()) == pytest.approx(math.log(2))
    # Actions outside [0, K) have no log-probability: NaN, not the last action's (-1) or a clamped one's.
    out_of_range = np.asarray(p.log_prob(jnp.array([-1, 4, 2])))
    assert np.isnan(out_of_range[:2]).all()
    assert out_of_range[2] == pytest.approx(math.log(probs[2, 2]), rel=1e-12)


def test_masked_actions_leave_entropy_and_kl_gradients_finite(x64):
    """A -inf logit (a masked action): the gradients of H and of KL equal those of the same quantities written over
    the support only, and are 0 for the masked logit (0 log 0 must not send NaN back)."""
    logits_p = jnp.array([0.3, 1.0, -jnp.inf])
    logits_q = jnp.array([0.5, -1.0, 2.0])

    def entropy_on_support(lp):
        log_p = jax.nn.log_softmax(lp[:2])
        return -jnp.sum(jnp.exp(log_p) * log_p)

    def kl_on_support(lp, lq):
        log_p = jax.nn.log_softmax(lp[:2])
        return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(lq)[:2]))

    grad_h = jax.grad(lambda lp: Categorical(lp).entropy())(logits_p)
    np.testing.assert_allclose(grad_h[:2], jax.grad(entropy_on_support)(logits_p)[:2], rtol=1e-12)
    assert float(grad_h[2]) == 0.0
    grad_p, grad_q = jax.grad(lambda lp, lq: Categorical(lp).kl(Categorical(lq)), (0, 1))(logits_p, logits_q)
    ref_p, ref_q = jax.grad(kl_on_support, (0, 1))(logits_p, logits_q)
    np.testing.assert_allclose(grad_p[:2], ref_p[:2], rtol=1e-12)
    np.testing.assert_allclose(grad_q, ref_q, rtol=1e-12)
    assert float(grad_p[2]) == 0.0
    np.testing.assert_allclose(Categorical(logits_p).kl(Categorical(logits_q)), kl_on_support(logits_p, logits_q),
                               rtol=1e-12)


def test_categorical_samples_follow_probs(categoricals):
    p, _ = categoricals
    samples = draw(p, jax.random.key(0), MC)  # [M, 3]
    assert samples.dtype == jnp.int32 and samples.shape == (MC, 3)
    frequencies_match(samples, p.probs)


def test_categorical_kl_equals_expected_log_ratio(categoricals):
    p, q = categoricals
    all_actions = jnp.arange(4)[:, None] * jnp.ones((1, 3), jnp.int32)  # [K, 3]
    log_ratio = jax.vmap(lambda a: p.log_prob(a) - q.log_prob(a))(all_actions)  # [K, 3]
    np.testing.assert_allclose(p.kl(q), jnp.sum(p.probs.T * log_ratio, 0), rtol=1e-12)
    np.testing.assert_allclose(p.kl(p), 0.0, atol=1e-15)
    assert np.all(np.asarray(p.kl(q)) > 0)


def test_gaussian_log_prob_matches_multivariate_normal(gaussians):
    p, _ = gaussians
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2)))
    got = p.log_prob(x)
    for i in range(3):
        cov = np.diag(np.exp(2 * np.asarray(p.log_std[i])))
        d = np.asarray(x[i] - p.mean[i])
        expected = -0.5 * (d @ np.linalg.inv(cov) @ d + np.log(np.linalg.det(2 * np.pi * cov)))
        assert float(got[i]) == pytest.approx(expected, rel=1e-12)
    assert got.shape == (3,)


def test_gaussian_entropy_closed_form(gaussians):
    p, _ = gaussians
    for i in range(3):
        cov = np.diag(np.exp(2 * np.asarray(p.log_std[i])))
        expected = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
        assert float(p.entropy()[i]) == pytest.approx(expected, rel=1e-12)
    # Entropy = -E[log p(x)], by Monte Carlo.
    x = draw(p, jax.random.key(3), MC)
    assert_mean_within_z(-expand(p, MC).log_prob(x), p.entropy())


def test_gaussian_samples_mode_and_broadcast_log_std(gaussians):
    p, _ = gaussians
    assert p.log_std.shape == p.mean.shape  # diag_gaussian broadcasts the state-independent [A]
    x = jax.jit(draw, static_argnums=2)(p, jax.random.key(4), MC)
    assert_mean_within_z(x, p.mean)
    assert_mean_within_z((x - p.mean) ** 2, jnp.exp(2 * p.log_std))  # variance about the known mean
    np.testing.assert_array_equal(p.mode(), p.mean)
    # An unbroadcast log_std gives the same results.
    raw = DiagGaussian(p.mean, p.log_std[0])
    np.testing.assert_allclose(raw.entropy(), p.entropy(), rtol=1e-12)
    np.testing.assert_allclose(raw.log_prob(x[0]), p.log_prob(x[0]), rtol=1e-12)


def test_gaussian_sample_is_mean_plus_std_times_the_keys_normal_draw(gaussians):
    """The reparameterised sample itself, not only its moments: mean - sigma eps has the same law, and
    mean + sigma / eps heavy tails that a Monte Carlo mean and variance within their (huge) standard errors let pass."""
    p, _ = gaussians
    key = jax.random.key(8)
    expected = p.mean + jnp.exp(p.log_std) * jax.random.normal(key, p.mean.shape, p.mean.dtype)
    np.testing.assert_allclose(p.sample(key), expected, rtol=1e-12)


def test_batch_dimensions_beyond_one_are_batch():
    """Distributions over a [2, 3] batch give what the same 6 rows give flattened: every reduction is over the
    last (action) axis, and only it."""
    rng = np.random.default_rng(9)
    for dist, other, action in (
        (Categorical(jnp.asarray(rng.normal(size=(2, 3, 4)))), Categorical(jnp.asarray(rng.normal(size=(2, 3, 4)))),
         jnp.asarray(rng.integers(0, 4, size=(2, 3)))),
        (diag_gaussian(jnp.asarray(rng.normal(size=(2, 3, 2))), jnp.asarray(rng.normal(0, 0.3, 2))),
         diag_gaussian(jnp.asarray(rng.normal(size=(2, 3, 2))), jnp.asarray(rng.normal(0, 0.3, 2))),
         jnp.asarray(rng.normal(size=(2, 3, 2)))),
    ):
        flat = jax.tree.map(lambda x: x.reshape(6, -1), dist)
        flat_other = jax.tree.map(lambda x: x.reshape(6, -1), other)
        flat_action = action.reshape(6, *action.shape[2:])
        for name, got, want in (
            ("log_prob", dist.log_prob(action), flat.log_prob(flat_action)),
            ("entropy", dist.entropy(), flat.entropy()),
            ("kl", dist.kl(other), flat.kl(flat_other)),
            ("mode", dist.mode(), flat.mode()),
        ):
            assert got.shape[:2] == (2, 3), name
            np.testing.assert_allclose(np.asarray(got).reshape(6, *got.shape[2:]), want, rtol=1e-12, err_msg=name)
        if isinstance(dist, Categorical):
            np.testing.assert_allclose(dist.probs.reshape(6, 4), flat.probs, rtol=1e-12)


def test_gaussian_kl_monte_carlo(gaussians):
    p, q = gaussians
    x = draw(p, jax.random.key(5), MC)
    assert_mean_within_z(expand(p, MC).log_prob(x) - expand(q, MC).log_prob(x), p.kl(q))
    np.testing.assert_allclose(p.kl(p), 0.0, atol=1e-14)


def test_distributions_are_pytrees(categoricals, gaussians):
    """They pass through jit, vmap, stop_gradient and tree maps like arrays."""
    p, q = categoricals
    kl = jax.jit(lambda a, b: a.kl(b))(p, q)
    np.testing.assert_allclose(kl, p.kl(q), rtol=1e-12)
    per_row = jax.vmap(lambda d, a: d.log_prob(a))(p, jnp.array([1, 2, 3]))
    np.testing.assert_allclose(per_row, p.log_prob(jnp.array([1, 2, 3])), rtol=1e-12)
    g, _ = gaussians
    first = jax.tree.map(lambda x: x[0], g)
    assert isinstance(first, DiagGaussian) and first.mean.shape == (2,)
    assert isinstance(jax.lax.stop_gradient(g), DiagGaussian)


def test_log_prob_gradients(x64):
    """d/dmu log N(x; mu, sigma) = (x - mu)/sigma^2; d/dlogits log pi(a) = onehot(a) - pi."""
    mean, log_std, x = jnp.array([0.3, -1.0]), jnp.array([0.1, -0.4]), jnp.array([1.0, 0.5])
    g = jax.grad(lambda m: DiagGaussian(m, log_std).log_prob(x))(mean)
    np.testing.assert_allclose(g, (x - mean) / jnp.exp(2 * log_std), rtol=1e-12)
    logits = jnp.array([0.2, -0.5, 1.0])
    g = jax.grad(lambda l: Categorical(l).log_prob(jnp.array(2)))(logits)
    np.testing.assert_allclose(g, jnp.array([0.0, 0.0, 1.0]) - jax.nn.softmax(logits), rtol=1e-12)


def test_sampling_from_pre_drawn_noise(categoricals, gaussians):
    """`sample_from_noise(sampling_noise(key, ...))` is the Gumbel-max / reparameterised sample: for a
    categorical it equals `jax.random.categorical` on the same key draw for draw; for the Gaussian it
    equals `sample(key)`; a whole batch of noise drawn at once gives the right frequencies."""
    p, _ = categoricals
    g, _ = gaussians
    key = jax.random.key(7)
    noise = sampling_noise(key, True, (MC, 3, 4), p.logits.dtype)
    samples = expand(p, MC).sample_from_noise(noise)
    np.testing.assert_array_equal(samples, draw(p, key, MC))
    frequencies_match(samples, p.probs)
    eps = sampling_noise(key, False, g.mean.shape, g.mean.dtype)
    np.testing.assert_allclose(g.sample_from_noise(eps), g.sample(key), rtol=1e-12)
    with pytest.raises(AssertionError):
        p.sample_from_noise(noise[0, :, :3])  # noise must match the logits' shape
