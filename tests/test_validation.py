"""The boundary checks every config and entry point shares (`pgjax.validation`), and entry points that used to
let a bool through as a count or refused a NumPy int."""

import numpy as np
import pytest

from pgjax import parallel, runs, validation


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1), np.uint8(2)])
def test_check_int_accepts_ints_numpy_ints_included(value):
    validation.check_int("Config.size", value)


@pytest.mark.parametrize("value", [0, -2, True, np.bool_(True), 2.0, np.float32(2.0), "2", None, np.array([2])])
def test_check_int_refuses_with_the_label_and_the_value(value):
    with pytest.raises(ValueError, match=r"^Config\.size must be a positive int; got ") as err:
        validation.check_int("Config.size", value)
    assert repr(value) in str(err.value)


def test_check_int_minimum_and_note():
    validation.check_int("f: horizon", 0, minimum=0)
    with pytest.raises(ValueError, match=r"^f: horizon must be an int >= 0 \(steps\); got -1\.$"):
        validation.check_int("f: horizon", -1, minimum=0, note=" (steps)")
    with pytest.raises(ValueError, match=r"must be an int >= 3; got 2\."):
        validation.check_int("f: n", 2, minimum=3)


@pytest.mark.parametrize("check, zero_ok", [(validation.check_positive, False), (validation.check_non_negative, True)])
def test_number_checks(check, zero_ok):
    for good in (1e-8, 3, np.float32(0.5), np.int64(2)):
        check("C.lr", good)
    if zero_ok:
        check("C.lr", 0.0)
    bad = [-1.0, float("nan"), float("inf"), True, "0.1", None] + ([] if zero_ok else [0.0, 0])
    for value in bad:
        with pytest.raises(ValueError, match=r"^C\.lr must be a (positive|non-negative) number; got "):
            check("C.lr", value)


def test_predicates():
    assert validation.is_int(np.int16(4)) and not validation.is_int(True) and not validation.is_int(np.bool_(False))
    assert validation.is_real(np.float32(1)) and validation.is_real(3) and not validation.is_real(True)
    assert validation.is_real(float("nan")) and not validation.is_finite_real(float("nan"))
    assert not validation.is_finite_real(float("-inf")) and validation.is_finite_real(np.float64(-2.5))


def test_entry_points_refuse_bools_and_take_numpy_ints():
    metrics = {"env_steps": np.array([[100, 200, 300]]), "episode_return": np.array([[10.0, 50.0, 50.0]])}
    # window=True used to pass as a window of 1; devices_for(True) as a batch of 1
    with pytest.raises(ValueError, match="steps_to_threshold: window must be a positive int; got True"):
        runs.steps_to_threshold(metrics, 40.0, window=True)
    with pytest.raises(ValueError, match="devices_for: batch_size must be a positive int; got True"):
        parallel.devices_for(True)
    # NumPy ints (a sweep's grid) were refused by both
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 40.0, window=np.int64(2)), [300.0])
    assert parallel.devices_for(np.int64(2)) == parallel.devices_for(2)


def _entry_points():
    """(label, fn of the count) for the public functions that take a count: before this check each let a bool
    through as 1 or 0, a float through as a shape error deep in jax, or 0 / -1 through as an empty or wrong
    result (0 conjugate-gradient iterations: a zero step; a negative horizon: an MLIR error)."""
    import jax
    import jax.numpy as jnp

    from pgjax import envs, estimators, offline, score_stats, tabular, trajectory, trust_region
    from pgjax.algos import evaluation

    key = jax.random.key(0)
    mdp = tabular.chain_mdp(4)
    pi = tabular.uniform_policy(4, 2)
    data = offline.collect(key, mdp, pi, 2, 3)
    problem = estimators.GradientProblem(mdp, jnp.zeros(8), tabular.tabular_features(4, 2))
    env, params = envs.make("CartPole-v1")
    line_fn = lambda p: (-jnp.sum(p**2), jnp.sum(p**2))  # noqa: E731
    return [
        ("random_mdp: num_states", lambda n: tabular.random_mdp(key, n, 2)),
        ("random_mdp: num_actions", lambda n: tabular.random_mdp(key, 3, n)),
        ("chain_mdp: num_states", lambda n: tabular.chain_mdp(n)),
        ("tabular_features: num_states", lambda n: tabular.tabular_features(n, 2)),
        ("uniform_policy: num_actions", lambda n: tabular.uniform_policy(3, n)),
        ("sample_trajectory: horizon", lambda n: trajectory.sample_trajectory(key, mdp, pi, n)),
        ("sample_trajectories: num_trajectories", lambda n: trajectory.sample_trajectories(key, mdp, pi, 3, n)),
        ("sample_trajectories: horizon", lambda n: trajectory.sample_trajectories(key, mdp, pi, n, 2)),
        ("error_curve: batch sizes", lambda n: estimators.error_curve(
            key, problem, estimators.reinforce_rewards_to_go, (1, n), 4, 3)),
        ("conjugate_gradient: num_iterations", lambda n: trust_region.conjugate_gradient(lambda v: v, jnp.ones(2), n)),
        ("backtracking_line_search: num_backtracks", lambda n: trust_region.backtracking_line_search(
            line_fn, jnp.ones(2), -0.1 * jnp.ones(2), jnp.asarray(0.1), jnp.asarray(0.1), n)),
        ("batch_reset: num_envs", lambda n: envs.batch_reset(env, key, n, params)),
        ("bootstrap_interval: num_resamples", lambda n: score_stats.bootstrap_interval(
            np.arange(5.0), np.mean, num_resamples=n)),
        ("empirical_model: num_states", lambda n: offline.empirical_model(data, n, 2)),
        ("logged_distribution: horizon", lambda n: offline.logged_distribution(mdp, pi, n)),
        ("one_hot_observations: num_states", lambda n: offline.one_hot_observations(data, n)),
        ("make_episode_returns: num_episodes", lambda n: evaluation.make_episode_returns("CartPole-v1", (), None, n)),
    ]


def test_entry_points_refuse_bad_counts_by_name():
    minimum = {"chain_mdp: num_states": 2}
    for label, fn in _entry_points():
        for bad in (0, -1, True, 2.5):
            with pytest.raises(ValueError, match=f"^{label.split(' (')[0]}.* must be "):
                fn(bad)
        if label in minimum:
            with pytest.raises(ValueError, match="must be an int >= 2"):
                fn(1)


def test_check_discount_kept_refuses_only_discounts_the_dtype_rounds_to_one():
    import jax
    import jax.numpy as jnp

    kept = validation.check_discount_kept
    for fine, dtype in ((1 - 1e-11, np.float64), (1 - 1e-7, np.float32), (0.99, jnp.bfloat16), (1.0, np.float32),
                        (1, np.float32), (np.array([0.5, 0.9]), np.float32)):
        kept("g", fine, dtype)  # 1.0 itself and int discounts are the range check's to refuse
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"^g 0.99999999999 rounds to 1.0 in float32: use a smaller one, or "
                                             r"float64 \(jax.enable_x64\).$"):
            kept("g", 1 - 1e-11, np.float32)
        with pytest.raises(ValueError, match=r"^g 0.999 rounds to 1.0 in bfloat16"):
            kept("g", 0.999, jnp.bfloat16)
        # The rounded entries of a batch, wherever they are: the first five, as given (NumPy would print "1.").
        batch = np.array([0.5, 0.9, 0.6, 0.7, 0.8, 0.3, 0.2, 1 - 1e-11, 1 - 1e-10, 0.4, 1 - 1e-9, *[1 - 1e-12] * 3])
        shown = (r"^g \[0.99999999999, 0.9999999999, 0.999999999, 0.999999999999, 0.999999999999\] "
                 r"\(at flat index \[7, 8, 10, 11, 12\]{} of {}\) rounds to 1.0 in float32")
        with pytest.raises(ValueError, match=shown.format(r" \.\.\.", 14)):  # 6 rounded: 5 shown
            kept("g", batch, np.float32)
        with pytest.raises(ValueError, match=shown.format("", 13)):  # exactly 5: all shown
            kept("g", batch[:-1], np.float32)
        with pytest.raises(ValueError, match=r"^g \[0.9999999999\] \(at flat index \[3\] of 4\) rounds"):
            kept("g", np.array([[0.5, 0.9], [0.6, 1 - 1e-10]]), np.float32)
    with jax.enable_x64(True), pytest.raises(ValueError, match=r"float32: use a smaller one, or float64 data.$"):
        kept("g", 1 - 1e-11, np.float32)


def test_concrete_scalar_reads_known_values_and_leaves_traced_ones():
    import jax
    import jax.numpy as jnp

    assert validation.concrete_scalar(0.5) == 0.5 and validation.concrete_scalar(np.float32(2.0)) == 2.0
    assert validation.concrete_scalar(jnp.asarray(0.25)) == 0.25
    assert validation.concrete_scalar(True) is None and validation.concrete_scalar(jnp.ones(2)) is None
    assert validation.concrete_scalar(np.ones(1)) is None  # one entry, but not a scalar
    # A 0-d array of ints is read too (a discount of jnp.asarray(2) passed unchecked); one of bools is not a number.
    assert validation.concrete_scalar(jnp.asarray(2)) == 2.0 and validation.concrete_scalar(np.asarray(-1)) == -1.0
    assert validation.concrete_scalar(jnp.asarray(True)) is None
    with pytest.raises(ValueError, match=r"owner: discount must be a number in \[0, 1\]; got Array\(2"):
        validation.check_known_discount("owner", jnp.asarray(2))
    seen = []
    jax.jit(lambda x: seen.append(validation.concrete_scalar(x)) or x)(jnp.asarray(0.1))
    assert seen == [None]


def test_check_known_checks_known_values_only():
    import jax
    import jax.numpy as jnp

    positive = dict(ok=lambda v: v > 0, need="a positive number")
    validation.check_known("f: x", 0.5, **positive)
    for bad in (0.0, -1.0, float("nan"), float("inf"), jnp.asarray(-2.0), np.float32(0.0)):
        with pytest.raises(ValueError, match=r"^f: x must be a positive number; got "):
            validation.check_known("f: x", bad, **positive)
    jax.jit(lambda v: validation.check_known("f: x", v, **positive) or v)(jnp.asarray(-1.0))  # traced: unchecked


def test_entry_points_refuse_bad_numbers_where_known():
    """Numbers that were taken silently: a negative KL radius gave a NaN step, a backtracking factor of 1.5 grew the
    step, a NaN tolerance stopped the fixed point at once (and a negative one ran it to the cap), a NaN Dirichlet
    concentration drew uniform transitions (its NaN rows fell back to uniform), a discount of 1.5 weighted IS
    returns upwards. Traced values (inside jit/vmap) are not checked and still run."""
    import jax
    import jax.numpy as jnp

    from pgjax import offline, tabular, trust_region

    mdp, pi = tabular.chain_mdp(4), tabular.uniform_policy(4, 2)
    line_fn = lambda p: (-jnp.sum(p**2), jnp.sum(p**2))  # noqa: E731

    def line(**kw):
        args = dict(max_kl=jnp.asarray(0.1))
        args.update(kw)
        return trust_region.backtracking_line_search(line_fn, jnp.ones(2), -0.1 * jnp.ones(2), jnp.asarray(0.1),
                                                     **args)

    ones, mask = jnp.ones((2, 3)), jnp.ones((2, 3), bool)
    nan = float("nan")
    cases = [
        ("natural_gradient_step: max_kl", lambda v: trust_region.natural_gradient_step(jnp.ones(2), lambda u: u, v),
         [0.0, -0.01, nan, jnp.asarray(-0.01)]),
        ("backtracking_line_search: max_kl", lambda v: line(max_kl=v), [0.0, -1.0]),
        ("backtracking_line_search: backtrack_coef", lambda v: line(backtrack_coef=v), [0.0, 1.0, 1.5, -0.5, nan]),
        ("backtracking_line_search: accept_ratio", lambda v: line(accept_ratio=v), [-1.0, nan]),
        ("backtracking_line_search: kl_tolerance", lambda v: line(kl_tolerance=v), [0.0, -1.0, nan]),
        ("conjugate_gradient: residual_tol", lambda v: trust_region.conjugate_gradient(lambda u: u, jnp.ones(2), 5, v),
         [-1.0, nan]),
        ("occupancy_fixed_point: tol", lambda v: tabular.occupancy_fixed_point(mdp, pi, tol=v), [-1.0, nan]),
        ("random_mdp: concentration", lambda v: tabular.random_mdp(jax.random.key(0), 3, 2, concentration=v),
         [0.0, nan, float("inf")]),
        ("importance_value: discount", lambda v: offline.importance_value(ones, mask, 0 * ones, 0 * ones, v, "pdis"),
         [0.0, 1.5, nan]),
    ]
    for label, fn, bads in cases:
        for bad in bads:
            with pytest.raises(ValueError, match=f"^{label} must "):
                fn(bad)
    # Traced, the same functions run (values are checked only where they are known).
    step, _ = jax.jit(lambda v: trust_region.natural_gradient_step(jnp.ones(2), lambda u: u, v))(jnp.asarray(0.02))
    np.testing.assert_allclose(np.asarray(step), np.full(2, np.sqrt(0.02)), rtol=1e-5)  # x = g, x^T F x = 2
    assert float(offline.importance_value(ones, mask, 0 * ones, 0 * ones, 1.0, "pdis")) == 3.0  # gamma = 1 allowed


def test_run_summaries_refuse_fractions_and_thresholds_that_mean_nothing():
    metrics = {"env_steps": np.array([[100, 200, 300, 400]]), "episode_return": np.array([[10.0, 50.0, 50.0, 60.0]])}
    np.testing.assert_allclose(runs.final_returns(metrics, 0.5), [55.0])
    np.testing.assert_allclose(runs.final_returns(metrics, 1.0), [42.5])
    for bad in (0.0, -0.1, 1.5, float("nan"), True):  # 0 and -0.1 averaged the last update, 1.5 and True all
        with pytest.raises(ValueError, match="final_returns: fraction must lie in"):
            runs.final_returns(metrics, bad)
    with pytest.raises(ValueError, match="steps_to_threshold: threshold must be a finite number"):
        runs.steps_to_threshold(metrics, float("nan"))
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, np.float32(40.0), window=1), [200.0])


def test_estimators_and_losses_refuse_known_discounts_and_clips_out_of_range():
    """A discount of 1.01 or NaN, a GAE lambda of 1.01, a clip of 0 or -0.2 were computed with, silently, when passed
    as numbers; traced (inside a training run) they are the config's, checked at construction."""
    import jax
    import jax.numpy as jnp

    from pgjax import advantages, losses, trajectory

    T, B = 4, 2
    r, v, term, trunc = jnp.ones((T, B)), jnp.zeros((T, B)), jnp.zeros((T, B), bool), jnp.zeros((T, B), bool)
    lp = jnp.zeros(3)
    cases = [
        ("discounted_returns: discount", lambda g: advantages.discounted_returns(r, v, term, trunc, g)),
        ("td_errors: discount", lambda g: advantages.td_errors(r, v, v, term, g)),
        ("gae: discount", lambda g: advantages.gae(r, v, v, term, trunc, g, 0.95)),
        ("gae: gae_lambda", lambda lam: advantages.gae(r, v, v, term, trunc, 0.99, lam)),
        ("n_step_returns: discount", lambda g: advantages.n_step_returns(r, v, term, trunc, g, 2)),
        ("discounted_return: discount", lambda g: trajectory.discounted_return(jnp.ones(3), g)),
        ("rewards_to_go: discount", lambda g: trajectory.rewards_to_go(jnp.ones(3), g)),
        ("clipped_surrogate_loss: clip_eps", lambda e: losses.clipped_surrogate_loss(lp, lp, lp, e)),
        ("value_loss: clip_eps", lambda e: losses.value_loss(lp, lp, lp, e)),
    ]
    for label, fn in cases:
        # 1.01, just above the bound: a bound loosened to 2 would let 1.5 through
        for bad in (-0.2, 1.01, float("nan")) if "clip" not in label else (0.0, -0.2, float("nan")):
            with pytest.raises(ValueError, match=f"^{label} must be "):
                fn(bad)
    with pytest.raises(ValueError, match="n_step_returns: n must be a positive int"):  # True was one sweep
        advantages.n_step_returns(r, v, term, trunc, 0.9, True)
    # Edge values that mean something still run: gamma = 1 (undiscounted), lambda = 0 (one-step TD), and traced.
    np.testing.assert_allclose(np.asarray(trajectory.discounted_return(jnp.ones(3), 1.0)), 3.0)
    adv, _ = advantages.gae(r, v, v, term, trunc, 1.0, 0.0)
    np.testing.assert_allclose(np.asarray(adv), 1.0)
    traced = jax.jit(lambda g: trajectory.rewards_to_go(jnp.ones(3), g))(jnp.asarray(0.5))
    np.testing.assert_allclose(np.asarray(traced), [1.75, 1.5, 1.0])


def test_check_known_discount_takes_the_closed_unit_interval():
    """A discount in [0, 1]: 0 (only the first reward) and 1 (undiscounted sums over finite steps) are allowed."""
    for discount in (0.0, 0, 0.5, 1.0, np.float32(0.99)):
        validation.check_known_discount("f", discount)
    for bad in (-0.01, 1.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^f: discount must be a number in \[0, 1\]; got"):
            validation.check_known_discount("f", bad)
