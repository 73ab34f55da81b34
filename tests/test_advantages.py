"""Return and advantage estimators against hand-written NumPy loops, closed forms and each other (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import advantages as adv

pytestmark = pytest.mark.usefixtures("x64")

T, B = 13, 4
TRANSFORMS = {"plain": lambda f: f, "jit": jax.jit}


# ---------------------------------------------------------------------------
# Independent NumPy references (explicit loops, written from the definitions).
# ---------------------------------------------------------------------------


def np_discounted_returns(r, nv, term, trunc, gamma):
    """Forward sums: G_t = sum_k gamma^k r_{t+k} until an episode end or the rollout end, then bootstrap."""
    n_t = r.shape[0]
    out = np.zeros_like(r)
    for b in range(r.shape[1]):
        for t in range(n_t):
            g, power = 0.0, 1.0
            for k in range(t, n_t):
                g += power * r[k, b]
                power *= gamma
                if term[k, b]:
                    break
                if trunc[k, b] or k == n_t - 1:
                    g += power * nv[k, b]
                    break
            out[t, b] = g
    return out


def np_gae(r, v, nv, term, trunc, gamma, lam):
    """A_t = sum_k (gamma lambda)^k delta_{t+k} within the episode, written as a forward sum."""
    n_t = r.shape[0]
    delta = r + gamma * (1.0 - term) * nv - v
    out = np.zeros_like(r)
    for b in range(r.shape[1]):
        for t in range(n_t):
            a, weight = 0.0, 1.0
            for k in range(t, n_t):
                a += weight * delta[k, b]
                if term[k, b] or trunc[k, b]:
                    break
                weight *= gamma * lam
            out[t, b] = a
    return out


def np_n_step(r, nv, term, trunc, gamma, n):
    n_t = r.shape[0]
    out = np.zeros_like(r)
    for b in range(r.shape[1]):
        for t in range(n_t):
            g, power = 0.0, 1.0
            for k in range(t, min(t + n, n_t)):
                g += power * r[k, b]
                power *= gamma
                if term[k, b]:
                    break
                if trunc[k, b] or k == n_t - 1 or k == t + n - 1:
                    g += power * nv[k, b]
                    break
            out[t, b] = g
    return out


@pytest.fixture(scope="module")
def rollout(x64):
    """Random rewards/values with frequent terminations and truncations (some steps both)."""
    rng = np.random.default_rng(0)
    r = rng.normal(size=(T, B))
    v = rng.normal(size=(T, B))
    nv = rng.normal(size=(T, B))
    term = rng.random((T, B)) < 0.15
    trunc = rng.random((T, B)) < 0.15
    term[-1, 0], trunc[-1, 1] = True, True  # both kinds of ending on the last step
    assert term.any() and trunc.any() and (term & trunc).sum() >= 0
    return r, v, nv, term, trunc


@pytest.fixture(scope="module")
def consistent_rollout(x64):
    """next_values[t] == values[t+1] except where an episode ended (there: V of the final observation)."""
    rng = np.random.default_rng(1)
    v_all = rng.normal(size=(T + 1, B))
    term = rng.random((T, B)) < 0.15
    trunc = rng.random((T, B)) < 0.15
    nv = v_all[1:].copy()
    ended = term | trunc
    nv[ended] = rng.normal(size=ended.sum())  # final obs value != reset obs value
    return rng.normal(size=(T, B)), v_all[:-1], nv, term, trunc


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_discounted_returns_matches_numpy(rollout, transform):
    r, _, nv, term, trunc = rollout
    got = TRANSFORMS[transform](adv.discounted_returns)(r, nv, term, trunc, 0.9)
    np.testing.assert_allclose(got, np_discounted_returns(r, nv, term, trunc, 0.9), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.8, 0.5), (1.0, 1.0)])
def test_gae_matches_numpy(rollout, transform, gamma, lam):
    r, v, nv, term, trunc = rollout
    a, targets = TRANSFORMS[transform](adv.gae)(r, v, nv, term, trunc, gamma, lam)
    expected = np_gae(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(targets, expected + v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unroll", [3, 64])
def test_unrolled_scans_match_numpy(rollout, unroll):
    # unroll is a speed knob: any factor (one that does not divide T, one past T) gives the same values.
    r, v, nv, term, trunc = rollout
    a, _ = jax.jit(adv.gae, static_argnames="unroll")(r, v, nv, term, trunc, 0.95, 0.9, unroll=unroll)
    np.testing.assert_allclose(a, np_gae(r, v, nv, term, trunc, 0.95, 0.9), rtol=1e-12, atol=1e-12)
    g = jax.jit(adv.discounted_returns, static_argnames="unroll")(r, nv, term, trunc, 0.9, unroll=unroll)
    np.testing.assert_allclose(g, np_discounted_returns(r, nv, term, trunc, 0.9), rtol=1e-12, atol=1e-12)


def test_float_flags_equal_bool_flags(rollout):
    r, v, nv, term, trunc = rollout
    a_bool, _ = adv.gae(r, v, nv, term, trunc, 0.9, 0.8)
    a_float, _ = adv.gae(r, v, nv, term.astype(np.float64), trunc.astype(np.float32), 0.9, 0.8)
    np.testing.assert_allclose(a_bool, a_float, rtol=1e-12)


def test_gae_vmapped_over_hyperparameters(rollout):
    """discount and lambda are traced: a grid of them is one vmap, equal to the loop over the grid."""
    r, v, nv, term, trunc = rollout
    gammas = jnp.array([0.9, 0.99, 0.5])
    lams = jnp.array([0.0, 0.95, 1.0])
    grid = jax.jit(jax.vmap(adv.gae, in_axes=(None, None, None, None, None, 0, 0)))
    a, _ = grid(r, v, nv, term, trunc, gammas, lams)
    for i in range(3):
        expected = np_gae(r, v, nv, term, trunc, float(gammas[i]), float(lams[i]))
        np.testing.assert_allclose(a[i], expected, rtol=1e-12, atol=1e-12)


def test_vmap_over_environments_equals_batch(rollout):
    """[T] inputs work; vmapping over the env axis equals the [T, B] call."""
    r, v, nv, term, trunc = rollout
    per_env = jax.vmap(adv.gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)(r, v, nv, term, trunc, 0.9, 0.9)
    batched = adv.gae(r, v, nv, term, trunc, 0.9, 0.9)
    np.testing.assert_allclose(per_env[0], batched[0], rtol=1e-12)
    single = adv.discounted_returns(r[:, 2], nv[:, 2], term[:, 2], trunc[:, 2], 0.9)
    np.testing.assert_allclose(single, adv.discounted_returns(r, nv, term, trunc, 0.9)[:, 2], rtol=1e-12)


def test_gae_lambda_one_is_returns_minus_values(consistent_rollout):
    r, v, nv, term, trunc = consistent_rollout
    a, targets = adv.gae(r, v, nv, term, trunc, 0.95, 1.0)
    returns = adv.discounted_returns(r, nv, term, trunc, 0.95)
    np.testing.assert_allclose(a, returns - v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(targets, returns, rtol=1e-10, atol=1e-10)


def test_gae_lambda_zero_is_td_error(rollout):
    r, v, nv, term, trunc = rollout
    a, _ = adv.gae(r, v, nv, term, trunc, 0.9, 0.0)
    np.testing.assert_allclose(a, r + 0.9 * (1 - term) * nv - v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(adv.td_errors(r, v, nv, term, 0.9), a, rtol=1e-12)


def test_gae_never_crosses_episode_boundary(rollout):
    """Changing anything after an episode end leaves the advantages before it unchanged."""
    r, v, nv, term, trunc = rollout
    r, v, nv, term, trunc = (x[:, :1].copy() for x in (r, v, nv, term, trunc))
    term[:], trunc[:] = False, False
    trunc[5] = True
    a, _ = adv.gae(r, v, nv, term, trunc, 0.9, 0.9)
    r2, v2 = r.copy(), v.copy()
    r2[6:] += 100.0
    v2[6:] -= 50.0
    a2, _ = adv.gae(r2, v2, nv, term, trunc, 0.9, 0.9)
    np.testing.assert_allclose(a[:6], a2[:6], rtol=1e-12)
    assert not np.allclose(a[6:], a2[6:])


# ---------------------------------------------------------------------------
# Truncation versus termination: the bug most implementations have.
# ---------------------------------------------------------------------------


def test_truncation_bootstraps_from_final_observation(x64):
    """Episode cut by a time limit at t = 1, auto-reset before t = 2 (one environment, T = 3).

    The target at the cut is r + gamma V(final obs); using V(reset obs) (values[t+1]) or treating the
    cut as a termination both give a different number.
    """
    gamma, lam = 0.9, 0.95
    r = jnp.array([1.0, 1.0, 1.0])
    v_final, v_reset = 7.0, -3.0
    values = jnp.array([5.0, 6.0, v_reset])
    next_values = jnp.array([6.0, v_final, 4.0])  # true next obs: index 1 is the pre-reset final obs
    term = jnp.array([False, False, False])
    trunc = jnp.array([False, True, False])

    _, targets = adv.gae(r, values, next_values, term, trunc, gamma, lam)
    returns = adv.discounted_returns(r, next_values, term, trunc, gamma)
    n_step = adv.n_step_returns(r, next_values, term, trunc, gamma, 3)
    for estimate in (targets, returns, n_step):
        assert float(estimate[1]) == pytest.approx(1.0 + gamma * v_final, abs=1e-12)

    _, as_termination = adv.gae(r, values, next_values, term | trunc, trunc, gamma, lam)
    assert float(as_termination[1]) == pytest.approx(1.0, abs=1e-12)
    assert abs(float(targets[1] - as_termination[1])) > 6.0
    # Before the cut: G_0 = r_0 + gamma (r_1 + gamma V(final)); leaking across the reset would differ.
    assert float(returns[0]) == pytest.approx(1.0 + gamma * (1.0 + gamma * v_final), abs=1e-12)
    assert float(adv.discounted_returns(r, next_values, term, jnp.zeros(3, bool), gamma)[0]) != pytest.approx(
        float(returns[0])
    )


def test_true_value_is_a_fixed_point_only_with_truncation_bootstrap(x64):
    """Constant reward 1 with time limits: V = 1/(1 - gamma) everywhere is the true (time-unaware) value.

    With correct truncation handling every GAE target equals V; treating time limits as terminations
    drags the targets down (by gamma V right at each cut).
    """
    gamma, lam = 0.99, 0.95
    shape = (16, 3)
    v_true = 1.0 / (1.0 - gamma)
    r = jnp.ones(shape)
    values = jnp.full(shape, v_true)
    trunc = jnp.zeros(shape, bool).at[4, 0].set(True).at[9, 1].set(True).at[15, 2].set(True)
    term = jnp.zeros(shape, bool)
    _, targets = adv.gae(r, values, values, term, trunc, gamma, lam)
    np.testing.assert_allclose(targets, v_true, rtol=1e-12)
    np.testing.assert_allclose(adv.discounted_returns(r, values, term, trunc, gamma), v_true, rtol=1e-12)

    _, wrong = adv.gae(r, values, values, trunc, trunc, gamma, lam)
    assert float(jnp.max(jnp.abs(wrong - v_true))) == pytest.approx(gamma * v_true)


def test_dtype_follows_rewards(rollout):
    """float32 rollouts stay float32 even with float64 (or traced float64) hyperparameters under x64."""
    r, v, nv, term, trunc = (np.asarray(x, np.float32) for x in rollout)
    gamma, lam = jnp.float64(0.9), jnp.float64(0.8)
    outputs = [
        *adv.gae(r, v, nv, term, trunc, gamma, lam),
        *jax.jit(adv.gae)(r, v, nv, term, trunc, gamma, lam),
        adv.discounted_returns(r, nv, term, trunc, gamma),
        adv.n_step_returns(r, nv, term, trunc, gamma, 2),
    ]
    assert all(x.dtype == jnp.float32 for x in outputs)
    np.testing.assert_allclose(outputs[0], np_gae(*rollout, 0.9, 0.8), rtol=1e-4, atol=1e-5)


def test_integer_and_bfloat16_rewards_keep_their_discount(rollout):
    """Integer rewards cast gamma and lambda to integers (0: every estimate r - V), bfloat16 ones rounded 0.999 to 1:
    the estimators compute in at least float32."""
    r, v, nv, term, trunc = rollout
    ints = np.round(4 * np.asarray(r)).astype(np.int32)
    as_float = ints.astype(np.float64)
    np.testing.assert_allclose(adv.gae(ints, v, nv, term, trunc, 0.9, 0.8)[0], np_gae(as_float, v, nv, term, trunc,
                                                                                      0.9, 0.8), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv.discounted_returns(ints, nv, term, trunc, 0.9),
                               adv.discounted_returns(as_float, nv, term, trunc, 0.9), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv.n_step_returns(ints, nv, term, trunc, 0.9, 3),
                               adv.n_step_returns(as_float, nv, term, trunc, 0.9, 3), rtol=1e-5, atol=1e-5)
    ones = jnp.ones((200, 1), jnp.bfloat16)
    zeros = jnp.zeros((200, 1))
    g0 = adv.discounted_returns(ones, zeros, zeros, zeros, 0.999)[0, 0]
    assert g0.dtype == jnp.float32
    np.testing.assert_allclose(float(g0), (1 - 0.999**200) / 0.001, rtol=1e-5)  # 181.35, not 200


def test_a_non_finite_value_where_nothing_bootstraps_stays_out(x64):
    """V(s_{t+1}) at a terminated step (a diverged terminal state: inf) is never read, and a later episode's NaN
    stays in its episode: every estimator multiplied it by a 0 flag, 0 * inf = NaN, and the scans carried it back."""
    r = jnp.ones((3, 1))
    nv = jnp.array([[0.0], [0.0], [jnp.inf]])
    term = jnp.array([[False], [False], [True]])
    trunc = jnp.zeros((3, 1), bool)
    expected = [[2.71], [1.9], [1.0]]
    np.testing.assert_allclose(adv.discounted_returns(r, nv, term, trunc, 0.9), expected, rtol=1e-12)
    np.testing.assert_allclose(adv.n_step_returns(r, nv, term, trunc, 0.9, 3), expected, rtol=1e-12)
    np.testing.assert_allclose(adv.gae(r, jnp.zeros((3, 1)), nv, term, trunc, 0.9, 1.0)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(adv.td_errors(r, jnp.zeros((3, 1)), nv, term, 0.9), [[1.0], [1.0], [1.0]])
    # A NaN in a later episode (its own step 2) does not reach the first episode (steps 0-1, terminated at 1).
    later = jnp.array([[0.0], [jnp.nan], [jnp.nan]])
    term = jnp.array([[False], [True], [False]])
    values = jnp.array([[0.0], [0.0], [jnp.nan]])
    advantages, _ = adv.gae(r, values, jnp.array([[0.0], [0.0], [jnp.nan]]), term, trunc, 0.9, 0.95)
    np.testing.assert_allclose(np.asarray(advantages)[:2, 0], [1 + 0.9 * 0.95, 1.0], rtol=1e-12)
    assert np.isnan(np.asarray(adv.discounted_returns(r, later, term, trunc, 0.9))[2, 0])


def test_termination_and_truncation_on_same_step_is_termination(x64):
    r = jnp.array([1.0, 2.0])
    nv = jnp.array([10.0, 10.0])
    both = jnp.array([False, True])
    np.testing.assert_allclose(adv.discounted_returns(r, nv, both, both, 0.5), [1.0 + 0.5 * 2.0, 2.0])


# ---------------------------------------------------------------------------
# n-step returns.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_n_step_matches_numpy(rollout, n, transform):
    r, _, nv, term, trunc = rollout
    fn = TRANSFORMS[transform](adv.n_step_returns, static_argnums=5) if transform == "jit" else adv.n_step_returns
    got = fn(r, nv, term, trunc, 0.9, n)
    np.testing.assert_allclose(got, np_n_step(r, nv, term, trunc, 0.9, n), rtol=1e-12, atol=1e-12)


def test_n_step_limits(rollout):
    r, v, nv, term, trunc = rollout
    one = adv.n_step_returns(r, nv, term, trunc, 0.9, 1)
    np.testing.assert_allclose(one, r + 0.9 * (1 - term) * nv, rtol=1e-12)
    np.testing.assert_allclose(one - v, adv.gae(r, v, nv, term, trunc, 0.9, 0.0)[0], rtol=1e-12, atol=1e-12)
    full = adv.n_step_returns(r, nv, term, trunc, 0.9, T)
    np.testing.assert_allclose(full, adv.discounted_returns(r, nv, term, trunc, 0.9), rtol=1e-12)
    a, targets = adv.n_step_advantages(r, v, nv, term, trunc, 0.9, 3)
    np.testing.assert_allclose(targets, adv.n_step_returns(r, nv, term, trunc, 0.9, 3), rtol=1e-12)
    np.testing.assert_allclose(a, targets - v, rtol=1e-12)


def test_n_step_vmapped_over_discount(rollout):
    r, _, nv, term, trunc = rollout
    gammas = jnp.array([0.5, 0.99])
    got = jax.vmap(lambda g: adv.n_step_returns(r, nv, term, trunc, g, 4))(gammas)
    for i in range(2):
        np.testing.assert_allclose(got[i], np_n_step(r, nv, term, trunc, float(gammas[i]), 4), rtol=1e-12)


@pytest.mark.parametrize("n", [0, -1, 2.0])
def test_n_step_rejects_bad_n(rollout, n):
    r, _, nv, term, trunc = rollout
    with pytest.raises(ValueError, match="n must be"):
        adv.n_step_returns(r, nv, term, trunc, 0.9, n)


def test_shape_mismatch_is_an_error(rollout):
    r, v, nv, term, trunc = rollout
    with pytest.raises(AssertionError):
        adv.gae(r, v[:-1], nv, term, trunc, 0.9, 0.9)
    with pytest.raises(AssertionError):
        adv.discounted_returns(r[..., None], nv[..., None], term[..., None], trunc[..., None], 0.9)


def test_normalize(x64):
    x = jnp.asarray(np.random.default_rng(3).normal(2.0, 5.0, size=(T, B)))
    z = jax.jit(adv.normalize)(x)
    np.testing.assert_allclose(z, (x - np.mean(x)) / (np.std(x) + 1e-8), rtol=1e-12)
    assert float(jnp.mean(z)) == pytest.approx(0.0, abs=1e-12)
    assert float(jnp.std(z)) == pytest.approx(1.0, abs=1e-8)
    assert np.all(np.isfinite(adv.normalize(jnp.ones(5))))
    # Constant advantages normalise to 0, not to the rounding noise of their mean scaled up (float32 0.1 gave -0.427
    # everywhere); tiny but varied ones are still scaled to unit spread.
    for constant in (0.1, 0.3, 1234.567):
        np.testing.assert_array_equal(adv.normalize(jnp.full(64, constant, jnp.float32)), 0.0)
    tiny = jnp.asarray(np.random.default_rng(4).normal(0.0, 1e-7, 64), jnp.float32)
    np.testing.assert_allclose(float(jnp.std(adv.normalize(tiny))), 1.0, rtol=0.2)


def test_normalize_noise_threshold_is_four_sqrt_n_eps_of_the_mean(x64):
    """float32, n = 1024 values around 1000: a relative spread ~7x the documented 4 sqrt(n) eps_f = 1.5e-5 is data
    (unit std, as NumPy scales it), one ~15x below it is the mean's rounding (zeros); a 100x threshold zeroes both."""
    noise = np.random.default_rng(5).normal(size=1024)
    varied = (1000.0 + 0.107 * noise).astype(np.float32)  # std / mean ~ 1.07e-4
    z = adv.normalize(jnp.asarray(varied))
    assert z.dtype == jnp.float32
    x = varied.astype(np.float64)
    np.testing.assert_allclose(z, (x - x.mean()) / (x.std() + 1e-8), atol=2e-3)
    assert float(jnp.std(z)) == pytest.approx(1.0, rel=1e-3)
    flat = (1000.0 + 0.001 * noise).astype(np.float32)  # std / mean ~ 1e-6
    np.testing.assert_array_equal(adv.normalize(jnp.asarray(flat)), 0.0)
    # Close to the threshold (1.5x data, 0.6x rounding), so that a factor of 8 or of 2 instead of 4 fails one of them.
    threshold = 4.0 * np.sqrt(1024) * np.finfo(np.float32).eps * 1000.0
    unit = noise / noise.std()
    above = jnp.asarray((1000.0 + 1.5 * threshold * unit).astype(np.float32))
    below = jnp.asarray((1000.0 + 0.6 * threshold * unit).astype(np.float32))
    assert 1.3 * threshold < float(jnp.std(above)) < 1.7 * threshold  # the float32 data keep their spread
    assert float(jnp.std(adv.normalize(above))) == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_array_equal(adv.normalize(below), 0.0)
