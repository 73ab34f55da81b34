"""Offline evaluation and policy gradients on tabular MDPs, checked against the exact answers."""

import collections
import dataclasses
import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compile_count
import pgjax.offline as off
import pgjax.tabular as tab

pytestmark = pytest.mark.usefixtures("x64")

S, A, GAMMA, T = 5, 3, 0.9, 40


@pytest.fixture(scope="module")
def problem(x64):
    mdp = tab.random_mdp(jax.random.key(0), S, A, discount=GAMMA)
    features = tab.tabular_features(S, A)
    theta_mu = 0.5 * jax.random.normal(jax.random.key(1), (S * A,))
    theta_pi = 1.5 * jax.random.normal(jax.random.key(2), (S * A,))
    mu = tab.softmax_policy(theta_mu, features)
    pi = tab.softmax_policy(theta_pi, features)
    d_data = off.logged_distribution(mdp, mu, T)
    return dict(mdp=mdp, features=features, mu=mu, pi=pi, theta_pi=theta_pi, theta_mu=theta_mu, d_data=d_data)


@pytest.fixture(scope="module")
def big_dataset(problem):
    return off.collect(jax.random.key(3), problem["mdp"], problem["mu"], 4000, T)


def _exact_model(mdp, d_data, scale=1e9):
    """An EmpiricalModel whose counts are the population quantities (the infinite-data limit)."""
    counts = d_data * scale
    return off.EmpiricalModel(
        counts=counts,
        transition_counts=counts[..., None] * mdp.transition,
        terminal_counts=jnp.zeros_like(counts),
        reward_sums=counts * mdp.reward,
        initial_counts=mdp.initial * scale,
    )


# --- data -------------------------------------------------------------------------------------


def test_collect_fields_and_reproducibility(problem):
    d1 = off.collect(jax.random.key(7), problem["mdp"], problem["mu"], 8, 6)
    d2 = off.collect(jax.random.key(7), problem["mdp"], problem["mu"], 8, 6)
    for a, b in zip(d1, d2):
        np.testing.assert_array_equal(a, b)
    assert d1.observations.shape == (8, 6) and d1.initial_observations.shape == (8,)
    np.testing.assert_array_equal(d1.next_observations[:, :-1], d1.observations[:, 1:])
    np.testing.assert_allclose(d1.behaviour_log_probs, np.log(problem["mu"][d1.observations, d1.actions]))
    np.testing.assert_allclose(d1.rewards, problem["mdp"].reward[d1.observations, d1.actions])
    off.validate_tabular_dataset(d1, S, A)


def test_logged_frequencies_match_the_data_distribution(problem, big_dataset):
    model = off.empirical_model(big_dataset, S, A)
    freq = np.asarray(off.data_distribution(model))
    d = np.asarray(problem["d_data"])
    # Episodes are independent: the per-episode frequency has variance <= d(1-d)/T; n = 4000 episodes.
    se = np.sqrt(d * (1 - d) / 4000)
    assert np.max(np.abs(freq - d) / se) < 5.0


def test_save_load_round_trip(tmp_path, problem):
    data = off.collect(jax.random.key(8), problem["mdp"], problem["mu"], 5, 7)
    path = tmp_path / "data.npz"
    off.save_dataset(path, data, behaviour="mu", seed=8)
    loaded = off.load_dataset(path)
    for name in off.Dataset._fields:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name))
    assert off.read_dataset_metadata(path) == {"behaviour": "mu", "seed": "8"}
    # Without the extension: np.savez wrote "data2.npz", and load_dataset("data2") was a FileNotFoundError.
    written = off.save_dataset(tmp_path / "data2", data)
    assert written == str(tmp_path / "data2.npz")
    np.testing.assert_array_equal(off.load_dataset(tmp_path / "data2").rewards, data.rewards)
    assert off.read_dataset_metadata(tmp_path / "data2") == {}
    with pytest.raises(FileNotFoundError, match=r"no file at .*missing'.*missing.npz"):
        off.load_dataset(tmp_path / "missing")
    # Into a folder not yet made (made, as tables.write_csv does); a directory's path is refused by name.
    nested = off.save_dataset(tmp_path / "logs" / "mu" / "data", data)
    np.testing.assert_array_equal(off.load_dataset(nested).actions, data.actions)
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(off.DatasetError, match=r"save_dataset: .*folder\.npz is a directory; give the path of a file"):
        off.save_dataset(tmp_path / "folder.npz", data)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_load_rejects_bad_files(tmp_path, problem):
    data = off.collect(jax.random.key(9), problem["mdp"], problem["mu"], 4, 5)
    good = tmp_path / "good.npz"
    off.save_dataset(good, data)
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(off.DatasetError, match="truncated or corrupt"):
        off.load_dataset(truncated)
    # Not a zip archive at all: an .npy gave a TypeError (np.load returns its one array, not the archive), and
    # an empty file (or text, below) NumPy's "contains pickled (object) data ... allow_pickle" advice.
    np.save(tmp_path / "one-array.npy", np.zeros(3))
    with pytest.raises(off.DatasetError, match=r"one-array\.npy: is a single-array \.npy file, not an \.npz archive"):
        off.load_dataset(tmp_path / "one-array.npy")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(off.DatasetError, match=r"empty\.npz: is not an \.npz archive \(the file is empty"):
        off.load_dataset(tmp_path / "empty.npz")
    fields = {f: np.asarray(getattr(data, f)) for f in off.Dataset._fields}
    with pytest.raises(off.DatasetError, match="no 'schema'"):
        off.load_dataset(_write(tmp_path / "noschema.npz", **fields))
    with pytest.raises(off.DatasetError, match="schema"):
        off.load_dataset(_write(tmp_path / "v0.npz", schema=np.asarray("other/v0"), **fields))
    partial = {k: v for k, v in fields.items() if k != "rewards"}
    with pytest.raises(off.DatasetError, match="missing fields"):
        off.load_dataset(_write(tmp_path / "partial.npz", schema=np.asarray(off.SCHEMA), **partial))
    bad_shape = dict(fields, actions=fields["actions"][:, :-1])
    with pytest.raises(off.DatasetError, match="actions"):
        off.load_dataset(_write(tmp_path / "shape.npz", schema=np.asarray(off.SCHEMA), **bad_shape))
    bad_mask = dict(fields, mask=fields["mask"].astype(np.float32))
    with pytest.raises(off.DatasetError, match="mask must be bool"):
        off.load_dataset(_write(tmp_path / "mask.npz", schema=np.asarray(off.SCHEMA), **bad_mask))
    gap = fields["mask"].copy()
    gap[0, 2] = False
    with pytest.raises(off.DatasetError, match="prefix"):
        off.load_dataset(_write(tmp_path / "gap.npz", schema=np.asarray(off.SCHEMA), **dict(fields, mask=gap)))
    probs = dict(fields, behaviour_log_probs=np.exp(fields["behaviour_log_probs"]) + 0.5)
    with pytest.raises(off.DatasetError, match="log-probabilities"):
        off.load_dataset(_write(tmp_path / "probs.npz", schema=np.asarray(off.SCHEMA), **probs))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(off.DatasetError, match=r"text\.npz: is not an \.npz archive \(the file starts with b'not a '"):
        off.load_dataset(tmp_path / "text.npz")
    with pytest.raises(off.DatasetError, match=r"text\.npz: is not an \.npz archive"):
        off.read_dataset_metadata(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        off.load_dataset(tmp_path / "missing.npz")
    # A tabular estimator rejects indices outside the policy's table.
    with pytest.raises(off.DatasetError, match="outside"):
        off.dualdice_tabular(data, jnp.full((2, A), 1.0 / A), GAMMA)


def test_collect_and_estimators_validate_arguments(problem):
    mdp, mu, pi = problem["mdp"], problem["mu"], problem["pi"]
    with pytest.raises(ValueError, match="num_trajectories"):
        off.collect(jax.random.key(0), mdp, mu, 0, 5)
    with pytest.raises(ValueError, match="horizon must be a positive int; got True"):
        off.collect(jax.random.key(0), mdp, mu, 3, True)
    with pytest.raises(ValueError, match="behaviour_pi must have shape"):
        off.collect(jax.random.key(0), mdp, mu[:, :2], 3, 5)
    with pytest.raises(ValueError, match="sum to 1"):
        off.collect(jax.random.key(0), mdp, mu * 2.0, 3, 5)
    data = off.collect(jax.random.key(0), mdp, mu, 3, 5)
    with pytest.raises(ValueError, match="discount"):
        off.policy_value(data, pi, 1.0)
    with pytest.raises(ValueError, match="method"):
        off.policy_value(data, pi, GAMMA, method="fqe")
    unknown = data._replace(behaviour_log_probs=jnp.full_like(data.rewards, jnp.nan))
    with pytest.raises(off.DatasetError, match="unknown"):
        off.policy_value(unknown, pi, GAMMA, method="pdis")
    one_unknown = data._replace(behaviour_log_probs=data.behaviour_log_probs.at[1, 0].set(jnp.nan))  # a first step
    with pytest.raises(off.DatasetError, match="unknown"):
        off.policy_value(one_unknown, pi, GAMMA, method="pdis")
    off.policy_value(unknown, pi, GAMMA, method="dualdice", on_uncovered="ignore")  # needs no mu


def test_integer_rewards_are_rejected_and_never_round_pi_or_gamma(problem):
    """Integer rewards once made pi and gamma integers (pi cast to the counts' dtype, gamma to the rewards'): every
    estimate silently 0 or wrong. Datasets must hold floating rewards; the array functions compute in floating point."""
    data = off.collect(jax.random.key(0), problem["mdp"], problem["mu"], 20, 6)
    ints = data._replace(rewards=jnp.round(10 * data.rewards).astype(jnp.int32))
    floats = ints._replace(rewards=ints.rewards.astype(jnp.float64))
    message = r"rewards must be floating \(got int32\); cast with \.astype\(jnp\.float32\)"
    with pytest.raises(off.DatasetError, match=message):
        off.validate_dataset(ints)
    for method in off.METHODS:
        with pytest.raises(ValueError, match=message):
            off.policy_value(ints, problem["pi"], GAMMA, method)
    with pytest.raises(ValueError, match=message):
        off.dualdice_tabular(ints, problem["pi"], GAMMA)
    # The unvalidated (jit-able) functions give the float answers.
    target_log_probs = off.safe_log(problem["pi"])[ints.observations, ints.actions]
    for method in off.IS_METHODS:
        args = (ints.mask, target_log_probs, ints.behaviour_log_probs, GAMMA, method)
        np.testing.assert_allclose(off.importance_value(ints.rewards, *args),
                                   off.importance_value(floats.rewards, *args), rtol=1e-12)
    model = off.empirical_model(ints, S, A)
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in model)
    np.testing.assert_allclose(off.model_value(model, problem["pi"], GAMMA),
                               off.model_value(off.empirical_model(floats, S, A), problem["pi"], GAMMA), rtol=1e-12)


def test_empirical_model_sums_are_accurate_in_float32():
    """Counts and reward sums of 2^19 float32 transitions match float64 NumPy sums. One float32 scatter-add per
    pair rounded every addition against a sum of up to 2^17 equal rewards, all the same way: relative errors of
    1.3e-3 here (1e-2 at 4M transitions), enough to break the documented identity DualDICE = model at 1e-3."""
    n, horizon, num_states = 2**17, 4, 2
    rng = np.random.default_rng(0)
    s = rng.integers(0, num_states, (n, horizon)).astype(np.int32)
    a = rng.integers(0, 2, (n, horizon)).astype(np.int32)
    s_next = np.concatenate([s[:, 1:], rng.integers(0, num_states, (n, 1)).astype(np.int32)], axis=1)
    reward_table = np.array([[0.1, 0.7], [0.3, 0.9]], np.float32)  # deterministic rewards: the worst case
    rewards = reward_table[s, a]
    data = off.Dataset(jnp.asarray(s), jnp.asarray(a), jnp.asarray(rewards), jnp.asarray(s_next),
                       jnp.zeros((n, horizon), bool), jnp.ones((n, horizon), bool),
                       jnp.full((n, horizon), np.log(0.5), jnp.float32), jnp.asarray(s[:, 0]))
    model = off.empirical_model(data, num_states, 2)
    assert model.reward_sums.dtype == jnp.float32
    pair = (s * 2 + a).ravel()
    counts = np.bincount(pair, minlength=4).reshape(2, 2)
    sums = np.bincount(pair, weights=rewards.ravel().astype(np.float64), minlength=4).reshape(2, 2)
    np.testing.assert_array_equal(model.counts, counts)
    np.testing.assert_array_equal(model.transition_counts.sum(-1), counts)
    np.testing.assert_allclose(model.reward_sums, sums, rtol=1e-6)
    pi = jnp.array([[0.2, 0.8], [0.6, 0.4]])
    np.testing.assert_allclose(off.policy_value(data, pi, GAMMA, "dualdice"),
                               off.policy_value(data, pi, GAMMA, "model"), rtol=1e-5)
    # The ratio-weighted value, plain and self-normalised, likewise (one float32 sum over the transitions: 3.1e-6
    # and 4.8e-7 relative error here); a ratio on a pair the data never show takes no part, even inf.
    ratio = np.array([[0.37, 1.3], [0.81, 2.1]], np.float32)
    expected = (ratio * sums).sum() / counts.sum() / (1 - GAMMA)
    np.testing.assert_allclose(off.ratio_weighted_value(data, jnp.asarray(ratio), GAMMA), expected, rtol=2e-7)
    normalised = (ratio * sums).sum() / (ratio * counts).sum() / (1 - GAMMA)
    np.testing.assert_allclose(off.ratio_weighted_value(data, jnp.asarray(ratio), GAMMA, True), normalised, rtol=2e-7)
    one_state = data._replace(observations=jnp.zeros_like(data.observations))
    with_inf = jnp.asarray(ratio).at[1].set(jnp.inf)
    assert np.isfinite(float(off.ratio_weighted_value(one_state, with_inf, GAMMA, True)))


def test_valid_steps_after_a_terminal_step_are_rejected(problem):
    """A valid step after a terminal one in the same episode: the transition-level estimators would count it as more
    data, the trajectory-level ones as the episode going on past its end (they disagreed silently)."""
    data = off.collect(jax.random.key(0), problem["mdp"], problem["mu"], 6, 5)
    terminal = data._replace(terminals=data.terminals.at[2, 1].set(True))
    with pytest.raises(off.DatasetError, match=r"mask is True after a terminal step \(first: episode 2, step 2\)"):
        off.validate_dataset(terminal)
    for method in ("model", "pdis"):
        with pytest.raises(off.DatasetError, match="after a terminal step"):
            off.policy_value(terminal, problem["pi"], GAMMA, method)
    off.validate_dataset(terminal._replace(mask=data.mask.at[2, 2:].set(False)))  # padding after it is fine


@pytest.mark.filterwarnings("ignore::pgjax.offline.CoverageWarning")  # the data miss pairs by design
def test_a_logged_action_the_behaviour_policy_cannot_take_is_reported_as_such(problem):
    """log mu = -inf on a valid step made the ratio infinite, and WIS reported a target policy giving every episode
    zero probability (PDIS returned nan or inf)."""
    data = off.collect(jax.random.key(0), problem["mdp"], problem["mu"], 6, 5)
    impossible = data._replace(behaviour_log_probs=data.behaviour_log_probs.at[1, 3].set(-jnp.inf))
    for method in ("wis", "pdis", "dualdice"):
        with pytest.raises(off.DatasetError, match="episode 1, step 3.*could not have taken the logged action"):
            off.policy_value(impossible, problem["pi"], GAMMA, method)
    padded = impossible._replace(mask=data.mask.at[1, 3:].set(False))
    assert np.isfinite(float(off.policy_value(padded, problem["pi"], GAMMA, "wis")))  # padding is never read


@pytest.mark.filterwarnings("ignore::pgjax.offline.CoverageWarning")  # the data miss pairs by design
def test_importance_gradient_checks_what_policy_value_checks(problem):
    """The discount, unknown behaviour log-probabilities (NaN gradients, and NaN thetas from the improvement loop)
    and the dataset itself."""
    mdp, mu, theta, features = problem["mdp"], problem["mu"], problem["theta_pi"], problem["features"]
    data = off.collect(jax.random.key(0), mdp, mu, 6, 5)
    with pytest.raises(ValueError, match="discount must be in"):
        off.importance_policy_gradient(data, theta, features, 1.5)
    unknown = data._replace(behaviour_log_probs=jnp.full_like(data.rewards, jnp.nan))
    with pytest.raises(off.DatasetError, match="importance_policy_gradient.*NaN \\(unknown\\)"):
        off.importance_policy_gradient(unknown, theta, features, GAMMA)
    with pytest.raises(off.DatasetError, match="offline_policy_improvement.*NaN \\(unknown\\)"):
        off.offline_policy_improvement(unknown, theta, features, GAMMA, optax.sgd(0.1), 2, method="pdis")
    with pytest.raises(off.DatasetError, match="outside"):
        off.importance_policy_gradient(data, theta, features[:2], GAMMA)
    # A NumPy int step count (collect and finite_horizon_return take them) was refused as "not a positive int".
    steps = off.offline_policy_improvement(data, theta, features, GAMMA, optax.sgd(0.01), np.int64(2), method="pdis")
    assert np.shape(steps.thetas)[0] == 3
    with pytest.raises(off.DatasetError, match="after a terminal step"):
        off.importance_policy_gradient(data._replace(terminals=data.terminals.at[2, 1].set(True)), theta, features,
                                       GAMMA)
    assert np.all(np.isfinite(np.asarray(off.importance_policy_gradient(data, theta, features, GAMMA))))


# --- DualDICE -----------------------------------------------------------------------------------


def test_dualdice_on_population_data_is_the_exact_ratio(problem):
    """On infinite data (population counts) the empirical solution equals d^pi / d^D exactly."""
    model = _exact_model(problem["mdp"], problem["d_data"])
    w = off.dualdice_ratio(model, problem["pi"], GAMMA)
    exact = off.exact_ratio(problem["mdp"], problem["pi"], problem["d_data"])
    np.testing.assert_allclose(w, exact, rtol=1e-9)
    # And the ratio reweights the data into the target's occupancy: d^D w = d^pi.
    np.testing.assert_allclose(problem["d_data"] * w, tab.state_action_occupancy(problem["mdp"], problem["pi"]),
                               atol=1e-12)


def test_dualdice_solution_is_the_saddle_point_of_its_objective(problem, big_dataset):
    """zeta* = w and nu* = B^{-1} w make both partial gradients of the empirical objective vanish."""
    data = off.subset(big_dataset, 200)
    model = off.empirical_model(data, S, A)
    pi = problem["pi"]
    w = off.dualdice_ratio(model, pi, GAMMA)
    assert np.all(np.asarray(model.counts) > 0)
    p_hat = model.transition_counts / model.counts[..., None]
    bellman = jnp.eye(S * A) - GAMMA * jnp.einsum("sat,tb->satb", p_hat, pi).reshape(S * A, S * A)
    nu = jnp.linalg.solve(bellman, w.reshape(-1)).reshape(S, A)
    g_nu, g_zeta = jax.grad(off.dualdice_objective, argnums=(0, 1))(nu, w, model, pi, GAMMA)
    assert np.max(np.abs(g_nu)) < 1e-12 and np.max(np.abs(g_zeta)) < 1e-12
    # A perturbed nu is a worse minimiser of max_zeta L (zeta = B nu in closed form).
    def outer(nu_):
        return off.dualdice_objective(nu_, (bellman @ nu_.reshape(-1)).reshape(S, A), model, pi, GAMMA)
    bump = 0.1 * jax.random.normal(jax.random.key(4), (S, A))
    assert outer(nu + bump) > outer(nu) + 1e-8


def test_dualdice_matches_an_independent_numpy_solution(problem, big_dataset):
    data = off.subset(big_dataset, 50)
    s, a, r, s2, _ = (np.asarray(x) for x in off.valid_transitions(data))
    counts = np.zeros((S, A))
    np.add.at(counts, (s, a), 1.0)
    trans = np.zeros((S, A, S))
    np.add.at(trans, (s, a, s2), 1.0)
    p_hat = trans / counts[..., None]
    pi = np.asarray(problem["pi"])
    p_pi = np.einsum("sa,sat->st", pi, p_hat)
    mu0 = np.bincount(np.asarray(data.initial_observations), minlength=S) / data.num_episodes
    d_state = (1 - GAMMA) * mu0 @ np.linalg.inv(np.eye(S) - GAMMA * p_pi)
    expected = d_state[:, None] * pi / (counts / counts.sum())
    np.testing.assert_allclose(off.dualdice_tabular(data, pi, GAMMA), expected, rtol=1e-8)


def _episode_block(data, k, n):
    """Episodes k n .. (k + 1) n - 1 of `data`: disjoint blocks for independent datasets of n episodes."""
    per_episode = data.initial_observations.shape[0] == data.num_episodes
    shifted = data._replace(**{f: getattr(data, f)[k * n:] for f in off.Dataset._fields[:-1]},
                            initial_observations=data.initial_observations[k * n:] if per_episode
                            else data.initial_observations)
    return off.subset(shifted, n)


def test_dualdice_ratio_converges_to_the_exact_ratio(problem, big_dataset):
    """The d-weighted RMS error of the DualDICE ratio at 40, 400 and 4000 episodes, each size's error the RMS over
    disjoint blocks of the 4000 (10 of 40, 10 of 400, the one of 4000), falls like 1/sqrt(n). One block per size
    made the 40-to-4000 ratio a single noisy draw: 3.97 at PGJAX_TEST_KEY_OFFSET 11 (3.97-14.7 over 0-11);
    averaged, 5.7-14.7 over 0-11."""
    exact = np.asarray(off.exact_ratio(problem["mdp"], problem["pi"], problem["d_data"]))

    def error(data):
        w = np.asarray(off.dualdice_tabular(data, problem["pi"], GAMMA, on_uncovered="ignore"))
        return np.sum(problem["d_data"] * (w - exact) ** 2)

    errors = [np.sqrt(np.mean([error(_episode_block(big_dataset, k, n)) for k in range(min(10, 4000 // n))]))
              for n in (40, 400, 4000)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05 * np.sqrt(np.sum(problem["d_data"] * (exact - 1.0) ** 2))  # far below w = 1
    assert errors[0] / errors[2] > 4.0, errors  # close to the sqrt(100) = 10 of a 1/sqrt(n) rate


def test_dualdice_value_equals_the_model_based_value(problem, big_dataset):
    data = off.subset(big_dataset, 30)
    v_dice = off.policy_value(data, problem["pi"], GAMMA, "dualdice", on_uncovered="ignore")
    v_model = off.policy_value(data, problem["pi"], GAMMA, "model", on_uncovered="ignore")
    np.testing.assert_allclose(v_dice, v_model, rtol=1e-10)
    v_big = off.policy_value(big_dataset, problem["pi"], GAMMA, "dualdice")
    exact = tab.expected_return(problem["mdp"], problem["pi"])
    assert abs(v_big - exact) < 0.02 * abs(exact)


# --- importance sampling ------------------------------------------------------------------------


def _per_episode(data, pi, method):
    """Each episode's own IS estimate (the unbiased estimators are their means over episodes)."""
    one = jax.vmap(lambda d: off.tabular_importance_value(d, pi, GAMMA, method))
    batched = jax.tree.map(lambda x: x[:, None], data)
    return np.asarray(one(batched))


def _first_steps(data, horizon):
    """The dataset cut to its first `horizon` steps (IS weights over 40 steps are too heavy-tailed for a z-test)."""
    return data._replace(**{f: getattr(data, f)[:, :horizon] for f in off.Dataset._fields[:-1]})


@pytest.mark.parametrize("method", ["is", "pdis"])
def test_importance_sampling_is_unbiased(problem, big_dataset, method):
    # 4 steps: products of 8 ratios were heavy-tailed enough that the sample standard deviation misled the z-test
    # (|z| up to 4.5 for IS over the 8 problems of PGJAX_TEST_KEY_OFFSET 0-7; at 4 steps at most 1.8).
    data = _first_steps(big_dataset, 4)
    exact = float(tab.finite_horizon_return(problem["mdp"], problem["pi"], 4))
    x = _per_episode(data, problem["pi"], method)
    np.testing.assert_allclose(x.mean(), off.policy_value(data, problem["pi"], GAMMA, method), rtol=1e-10)
    z = (x.mean() - exact) / (x.std(ddof=1) / np.sqrt(len(x)))
    assert abs(z) < 4.0, (method, x.mean(), exact, z)


def test_weighted_importance_sampling_has_lower_variance(problem, big_dataset):
    """Over 1000 datasets of 4 episodes of 8 steps: WIS has a clearly smaller spread than IS (WIS/IS standard
    deviation 0.02-0.08 over PGJAX_TEST_KEY_OFFSET 0-7), WPDIS a smaller one than PDIS."""
    pi = problem["pi"]
    groups = jax.tree.map(lambda x: x.reshape(1000, 4, *x.shape[1:]), _first_steps(big_dataset, 8))
    est = {m: np.asarray(jax.vmap(lambda d: off.tabular_importance_value(d, pi, GAMMA, m))(groups))
           for m in ("is", "wis", "pdis", "wpdis")}
    assert est["wis"].std() < 0.5 * est["is"].std()
    assert est["wpdis"].std() < est["pdis"].std()


def _episode_outcomes(mdp, mu, pi, horizon):
    """Every logged episode of `horizon` steps, enumerated in NumPy: (probability under mu, trajectory weight
    prod_t pi/mu, discounted return), each [S (A S)^(horizon-1) A]."""
    transition, reward, initial = (np.asarray(x) for x in (mdp.transition, mdp.reward, mdp.initial))
    mu, pi = np.asarray(mu), np.asarray(pi)
    paths = [(initial[s], 1.0, 0.0, s) for s in range(S)]  # (probability, weight, return, current state)
    for t in range(horizon):
        steps = [(p * mu[s, a], w * pi[s, a] / mu[s, a], g + GAMMA**t * reward[s, a], s, a)
                 for p, w, g, s in paths for a in range(A)]
        if t == horizon - 1:
            paths = [(p, w, g, None) for p, w, g, _, _ in steps]
        else:
            paths = [(p * transition[s, a, s2], w, g, s2) for p, w, g, s, a in steps for s2 in range(S)]
    return tuple(np.array(x) for x in zip(*paths))[:3]


def test_weighted_importance_sampling_mean_is_its_exact_biased_expectation(problem, big_dataset):
    """E[WIS] over datasets of 2 episodes of 2 steps, exactly: the sum over all pairs of logged episodes of
    P(e1) P(e2) (w1 G1 + w2 G2) / (w1 + w2). Each of 2000 sampled datasets' WIS equals the formula computed by
    hand, their mean matches E[WIS] (|z| <= 1.7 over PGJAX_TEST_KEY_OFFSET 0-9) and E[WIS] differs from J_2(pi):
    WIS is biased (|bias| 0.007-0.17 over those offsets, 1-29 standard errors of the sampled mean; 0.0008 at offset
    75). Both are exact float64 sums, so the bias is asked to be far above their rounding (~1e-15), not of a size."""
    prob, weight, ret = _episode_outcomes(problem["mdp"], problem["mu"], problem["pi"], 2)
    exact_j = float(tab.finite_horizon_return(problem["mdp"], problem["pi"], 2))
    np.testing.assert_allclose(np.sum(prob), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.sum(prob * weight * ret), exact_j, rtol=1e-10)  # plain IS is unbiased
    pair_prob = prob[:, None] * prob[None, :]
    exact_wis = float(np.sum(pair_prob * (weight[:, None] * ret[:, None] + weight[None, :] * ret[None, :])
                             / (weight[:, None] + weight[None, :])))
    data = _first_steps(big_dataset, 2)
    groups = jax.tree.map(lambda x: x.reshape(2000, 2, *x.shape[1:]), data)
    est = np.asarray(jax.vmap(lambda d: off.tabular_importance_value(d, problem["pi"], GAMMA, "wis"))(groups))
    # Each dataset's WIS by hand: sum_i w_i G_i / sum_i w_i over its 2 episodes.
    mask = np.asarray(data.mask)
    ratio = np.asarray(problem["pi"])[data.observations, data.actions] / np.exp(np.asarray(data.behaviour_log_probs))
    w = np.prod(np.where(mask, ratio, 1.0), axis=1).reshape(2000, 2)
    g = np.sum(np.asarray(data.rewards) * mask * GAMMA ** np.arange(2), axis=1).reshape(2000, 2)
    np.testing.assert_allclose(est, np.sum(w * g, axis=1) / np.sum(w, axis=1), rtol=1e-10)
    z = (est.mean() - exact_wis) / (est.std(ddof=1) / np.sqrt(len(est)))
    assert abs(z) < 4.0, (est.mean(), exact_wis, z)
    assert abs(exact_wis - exact_j) > 1e-8, (exact_wis, exact_j)


def test_single_episode_wis_is_the_behaviour_return(problem, big_dataset):
    """With one episode the WIS weights cancel: E[WIS] = J_T(mu), not J_T(pi), the bias made exact."""
    x = _per_episode(big_dataset, problem["pi"], "wis")
    target = float(tab.finite_horizon_return(problem["mdp"], problem["mu"], T))
    z = (x.mean() - target) / (x.std(ddof=1) / np.sqrt(len(x)))
    assert abs(z) < 4.0


def _with_terminals(data, key, probability):
    """Each episode ends (a terminal transition) at its first step where a coin with `probability` comes up (steps
    after it become padding), independently of the actions: the data of the MDP `_sink_mdp(mdp, probability)`."""
    n, horizon = data.rewards.shape
    ends = np.asarray(jax.random.bernoulli(key, probability, (n, horizon)))
    first = np.where(ends.any(1), ends.argmax(1), horizon)  # horizon: never ended, cut by the time limit
    steps = np.arange(horizon)[None]
    return data._replace(terminals=jnp.asarray(steps == first[:, None]), mask=jnp.asarray(steps <= first[:, None]))


def _sink_mdp(mdp, probability):
    """The MDP with an absorbing zero-reward state S that every transition enters with `probability`."""
    p = np.zeros((S + 1, A, S + 1))
    p[:S, :, :S] = (1.0 - probability) * np.asarray(mdp.transition)
    p[:S, :, S] = probability
    p[S, :, S] = 1.0
    reward = np.concatenate([np.asarray(mdp.reward), np.zeros((1, A))])
    return tab.MDP(jnp.asarray(p), jnp.asarray(reward), jnp.append(mdp.initial, 0.0), GAMMA)


def test_wpdis_on_policy_with_episodes_of_different_lengths_is_the_mean_return(problem, big_dataset):
    """On-policy every weight is 1, so every IS estimate is the sample mean of the discounted returns, however long
    the episodes. WPDIS once normalised step t over the episodes still running, giving sum_t gamma^t E[r_t | running]:
    1.75 instead of 1.375 below."""
    r, mask, zero = jnp.ones((2, 3)), jnp.array([[1, 0, 0], [1, 1, 1]], bool), jnp.zeros((2, 3))
    for method in off.IS_METHODS:  # returns 1 and 1 + 0.5 + 0.25
        assert float(off.importance_value(r, mask, zero, zero, 0.5, method)) == pytest.approx(1.375, rel=1e-12)
    data = _with_terminals(_first_steps(off.subset(big_dataset, 300), 8), jax.random.key(16), 0.2)
    lengths = np.asarray(data.mask).sum(1)
    assert lengths.min() < 4 and np.mean(lengths == 8) > 0.1  # short, long and cut episodes
    mean_return = np.mean(np.sum(np.asarray(data.rewards) * np.asarray(data.mask) * GAMMA ** np.arange(8), axis=1))
    for method in off.IS_METHODS:
        np.testing.assert_allclose(off.policy_value(data, problem["mu"], GAMMA, method), mean_return, rtol=1e-12)


def test_wpdis_with_terminal_states_estimates_the_horizon_return(problem, big_dataset):
    """Off-policy with about 30% of the episodes ending at each step: WPDIS (consistent) is within 4 standard errors
    of J_T(pi) of the MDP with the absorbing state (z = 0.9; the old per-step normalisation over the running
    episodes gave 1.84 against 1.21, z = 58), and agrees with PDIS (unbiased) within their errors."""
    data = _with_terminals(_first_steps(big_dataset, 4), jax.random.key(16), 0.3)
    pi = problem["pi"]
    pi_sink = jnp.concatenate([pi, jnp.full((1, A), 1.0 / A)])  # any row for the absorbing state
    exact = float(tab.finite_horizon_return(_sink_mdp(problem["mdp"], 0.3), pi_sink, 4))
    wpdis = float(off.policy_value(data, pi, GAMMA, "wpdis"))
    # Standard error of the self-normalised estimate from 40 disjoint blocks of 100 episodes; PDIS's per episode.
    blocks = jax.tree.map(lambda x: x.reshape(40, 100, *x.shape[1:]), data)
    per_block = np.asarray(jax.vmap(lambda d: off.tabular_importance_value(d, pi, GAMMA, "wpdis"))(blocks))
    se = per_block.std(ddof=1) / np.sqrt(40)
    assert abs(wpdis - exact) < 4.0 * se, (wpdis, exact, se)
    per_episode = _per_episode(data, pi, "pdis")
    se_pdis = per_episode.std(ddof=1) / np.sqrt(len(per_episode))
    assert abs(wpdis - per_episode.mean()) < 4.0 * np.hypot(se, se_pdis)


# --- offline policy gradients -------------------------------------------------------------------


def test_offline_gradient_with_exact_ratio_and_q_is_the_policy_gradient(problem):
    mdp, theta, features = problem["mdp"], problem["theta_pi"], problem["features"]
    _, q = tab.policy_evaluation(mdp, problem["pi"])
    w = off.exact_ratio(mdp, problem["pi"], problem["d_data"])
    g = off.expected_offline_gradient(problem["d_data"], w, theta, features, q, GAMMA)
    np.testing.assert_allclose(g, tab.policy_gradient(mdp, theta, features), rtol=1e-9, atol=1e-12)


def test_sampled_offline_gradient_with_exact_ratio_is_unbiased(problem, big_dataset):
    mdp, theta, features = problem["mdp"], problem["theta_pi"], problem["features"]
    _, q = tab.policy_evaluation(mdp, problem["pi"])
    w = off.exact_ratio(mdp, problem["pi"], problem["d_data"])
    per_episode = jax.vmap(lambda d: off.offline_policy_gradient(d, theta, features, GAMMA, w, q))(
        jax.tree.map(lambda x: x[:, None], big_dataset)
    )
    mean, se = per_episode.mean(0), per_episode.std(0, ddof=1) / np.sqrt(per_episode.shape[0])
    exact = tab.policy_gradient(mdp, theta, features)
    np.testing.assert_allclose(mean, off.offline_policy_gradient(big_dataset, theta, features, GAMMA, w, q),
                               rtol=1e-9, atol=1e-12)
    assert np.max(np.abs((mean - exact) / se)) < 4.5


def test_empirical_model_refuses_indices_outside_the_tables(problem):
    """empirical_model, the counting users call directly (notebook 02, offline_dualdice.py), took a -1 action as the
    last action and dropped a state equal to S: a model of other data, with no error. On concrete data it now checks
    every index field; under jit it stays unchecked (and counts the valid data as before)."""
    data = off.collect(jax.random.key(5), problem["mdp"], problem["mu"], 4, 6)
    model = off.empirical_model(data, S, A)
    assert float(jnp.sum(model.counts)) == 24 and float(jnp.sum(model.initial_counts)) == 4
    bad = [
        ("actions", data.actions.at[1, 2].set(-1), A),
        ("actions", data.actions.at[1, 2].set(A), A),
        ("observations", data.observations.at[0, 3].set(S), S),
        ("next_observations", data.next_observations.at[2, 0].set(-1), S),
    ]
    for field, value, bound in bad:
        with pytest.raises(off.DatasetError, match=rf"Dataset.{field} has indices outside \[0, {bound}\)"):
            off.empirical_model(data._replace(**{field: value}), S, A)
    with pytest.raises(off.DatasetError, match=rf"initial_observations must be state indices in \[0, {S}\)"):
        off.empirical_model(data._replace(initial_observations=data.initial_observations.at[0].set(-1)), S, A)
    # Padding (mask False) may hold anything: it is not counted.
    padded = data._replace(actions=data.actions.at[1, 5].set(-1), mask=data.mask.at[1, 5].set(False))
    assert float(jnp.sum(off.empirical_model(padded, S, A).counts)) == 23
    jitted = jax.jit(off.empirical_model, static_argnums=(1, 2))(data, S, A)
    for got, want in zip(jitted, model):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_offline_gradient_rejects_indices_and_shapes_that_do_not_fit(problem):
    """States outside [0, S) were dropped from the pair counts (negative ones wrapped onto the last states): a
    gradient from part of the data, or 0 / 0 = NaN when none fitted. Now named before anything is computed."""
    theta, features = problem["theta_pi"], problem["features"]
    data = off.collect(jax.random.key(5), problem["mdp"], problem["mu"], 4, 6)
    w, q = jnp.ones((S, A)), jnp.ones((S, A))
    assert np.all(np.isfinite(np.asarray(off.offline_policy_gradient(data, theta, features, GAMMA, w, q))))
    # Up by S, and down until the lowest state seen is -1 (a plain -1 leaves every index in range when the data
    # never visit state 0, as at PGJAX_TEST_KEY_OFFSET=83).
    for shift in (S, -1 - int(np.min(data.observations))):
        with pytest.raises(off.DatasetError, match=rf"Dataset.observations has indices outside \[0, {S}\)"):
            off.offline_policy_gradient(data._replace(observations=data.observations + shift), theta, features,
                                        GAMMA, w, q)
    with pytest.raises(ValueError, match=rf"q_values must have shape \({S}, {A}\) .*got \({S - 1}, {A}\)"):
        off.offline_policy_gradient(data, theta, features, GAMMA, w, q[:-1])
    with pytest.raises(ValueError, match=r"ratio must have shape .* or \(\)"):
        off.offline_policy_gradient(data, theta, features, GAMMA, w[0], q)
    with pytest.raises(ValueError, match=r"theta must have shape"):
        off.offline_policy_gradient(data, theta[:-1], features, GAMMA, w, q)

    # Traced (jit / vmap): unchecked, the same numbers.
    np.testing.assert_allclose(jax.jit(off.offline_policy_gradient)(data, theta, features, GAMMA, w, q),
                               off.offline_policy_gradient(data, theta, features, GAMMA, w, q), rtol=1e-12)


def test_dualdice_gradient_is_the_gradient_of_the_empirical_model(problem, big_dataset):
    data = off.subset(big_dataset, 100)
    theta, features = problem["theta_pi"], problem["features"]
    g = off.dualdice_policy_gradient(data, theta, features, GAMMA)
    model = off.empirical_model(data, S, A)
    autodiff = jax.grad(lambda th: off.model_value(model, tab.softmax_policy(th, features), GAMMA))(theta)
    np.testing.assert_allclose(g, autodiff, rtol=1e-8, atol=1e-10)
    exact = tab.policy_gradient(problem["mdp"], theta, features)
    g_big = off.dualdice_policy_gradient(big_dataset, theta, features, GAMMA)
    cos = float(g_big @ exact / np.linalg.norm(g_big) / np.linalg.norm(exact))
    assert cos > 0.99 and np.linalg.norm(g_big - exact) < 0.1 * np.linalg.norm(exact)


def _data_missing_action_2(problem):
    """(mu [S, A], its dataset of 100 episodes of 10 steps, the dataset's empirical model) for a behaviour policy that
    never takes action 2 in states 0 and 1: pairs the data never show."""
    mu = np.array(problem["mu"])
    mu[:2, 2] = 0.0
    mu /= mu.sum(1, keepdims=True)
    data = off.collect(jax.random.key(17), problem["mdp"], jnp.asarray(mu), 100, 10)
    return mu, data, off.empirical_model(data, S, A)


def test_model_gradient_is_the_gradient_of_the_model_value_for_any_unseen_value(problem):
    """With unseen pairs worth u, the model value counts d_hat(s,a) u on the pairs the data never show, where the
    data term has w = 0: the unseen pairs' term d_hat grad log pi u must be added (it was dropped: errors up to
    |grad| itself). With the baseline only the data term is kept, which is the documented difference."""
    mdp, theta, features = problem["mdp"], problem["theta_pi"], problem["features"]
    mu, data, model = _data_missing_action_2(problem)
    unseen = np.asarray(model.counts) == 0
    assert unseen[:2, 2].all()
    score = np.asarray(tab.grad_log_policy(theta, features))
    for u in (0.0, -5.0, 3.0, float(off.pessimistic_value(model, GAMMA))):
        autodiff = jax.grad(lambda th: off.model_value(model, tab.softmax_policy(th, features), GAMMA, u))(theta)
        g = off.model_policy_gradient(model, data, theta, features, GAMMA, unseen_value=u)
        np.testing.assert_allclose(g, autodiff, rtol=1e-9, atol=1e-12)
        solution = off.solve_empirical(model, tab.softmax_policy(theta, features), GAMMA, u)
        v_hat = np.sum(np.asarray(tab.softmax_policy(theta, features)) * np.asarray(solution.q_values), -1)
        dropped = np.where(unseen, np.asarray(solution.occupancy) * (u - v_hat[:, None]), 0.0)
        expected = autodiff - np.einsum("sa,sad->d", dropped, score) / (1 - GAMMA)
        np.testing.assert_allclose(off.model_policy_gradient(model, data, theta, features, GAMMA, True, u), expected,
                                   rtol=1e-9, atol=1e-12)
        if u != 0.0:
            assert np.max(np.abs(np.asarray(autodiff) - expected)) > 1e-3  # the baseline differs where data are missing
    # Pairs seen once are seen: three short episodes usually hold some (the unseen-pair term leaves them out). The
    # first of keys 18, 19, ... whose data do is used: at key offset 81 key 18's 15 transitions saw no pair once.
    for seed in range(18, 38):
        few = off.collect(jax.random.key(seed), mdp, jnp.asarray(mu), 3, 5)
        few_model = off.empirical_model(few, S, A)
        if np.any(np.asarray(few_model.counts) == 1):
            break
    assert np.any(np.asarray(few_model.counts) == 1)
    autodiff = jax.grad(lambda th: off.model_value(few_model, tab.softmax_policy(th, features), GAMMA, 3.0))(theta)
    np.testing.assert_allclose(off.model_policy_gradient(few_model, few, theta, features, GAMMA, unseen_value=3.0),
                               autodiff, rtol=1e-9, atol=1e-12)
    # Unseen pairs are worth 0 unless said otherwise (the documented default), in the value, FQE and the gradient.
    pi = tab.softmax_policy(theta, features)
    assert float(off.model_value(model, pi, GAMMA)) == float(off.model_value(model, pi, GAMMA, 0.0))
    assert abs(float(off.model_value(model, pi, GAMMA, 1.0)) - float(off.model_value(model, pi, GAMMA))) > 1e-3
    np.testing.assert_array_equal(off.tabular_fqe(model, pi, GAMMA), off.tabular_fqe(model, pi, GAMMA, 0.0))
    assert np.max(np.abs(np.asarray(off.tabular_fqe(model, pi, GAMMA, 1.0) - off.tabular_fqe(model, pi, GAMMA)))) > 0.5
    np.testing.assert_array_equal(off.model_policy_gradient(model, data, theta, features, GAMMA),
                                  off.model_policy_gradient(model, data, theta, features, GAMMA, False, 0.0))


def test_offline_improvement_steps_along_the_model_gradient_with_baseline_and_pessimism_by_default(problem):
    """A step of plain gradient ascent (sgd) is theta + lr grad, grad the `model_policy_gradient` with the unseen
    pairs worth `pessimistic_value` (pessimistic) or 0, with or without the baseline; both are on by default (the
    Taxi result of the docstring needs both). The data miss pairs, so each setting moves the step."""
    theta, features = problem["theta_pi"], problem["features"]
    _, data, model = _data_missing_action_2(problem)
    sgd = optax.sgd(0.1)
    steps = {}
    for baseline, pessimistic in itertools.product((True, False), repeat=2):
        run = off.offline_policy_improvement(data, theta, features, GAMMA, sgd, 1, baseline=baseline,
                                             pessimistic=pessimistic)
        u = float(off.pessimistic_value(model, GAMMA)) if pessimistic else 0.0
        gradient = off.model_policy_gradient(model, data, theta, features, GAMMA, baseline, u)
        steps[baseline, pessimistic] = np.asarray(run.thetas[1] - run.thetas[0])
        np.testing.assert_allclose(steps[baseline, pessimistic], 0.1 * np.asarray(gradient), rtol=1e-9, atol=1e-12)
    # An optimiser whose updates turn NaN after the first: theta_2 is NaN, so the gradient at step 2 is the first
    # that is not finite. It is named (not step 0, not returned).
    nan_later = optax.chain(sgd, optax.scale_by_schedule(lambda count: jnp.where(count >= 1, jnp.nan, 1.0)))
    with pytest.raises(FloatingPointError, match=r"'dualdice'\): the gradient at step 2 is not finite"):
        off.offline_policy_improvement(data, theta, features, GAMMA, nan_later, 4)
    default = off.offline_policy_improvement(data, theta, features, GAMMA, sgd, 1)
    np.testing.assert_array_equal(default.thetas[1] - default.thetas[0], steps[True, True])
    for other in ((True, False), (False, True), (False, False)):
        # Each setting moves the step by far more than the checks above resolve (rtol 1e-9 on steps of ~1e-2; the
        # default compared exactly): 9.6e-5 at key offset 71, where a fixed 1e-4 failed.
        assert np.max(np.abs(steps[other] - steps[True, True])) > 1e-6, other


def test_importance_gradient_is_unbiased_for_the_horizon_gradient(problem, big_dataset):
    theta, features = problem["theta_pi"], problem["features"]
    # 2 steps: the weights' heavy tail misleads the sample standard deviation over longer products. At 8 steps
    # |z| = 7.4 at PGJAX_TEST_KEY_OFFSET=6; at 4 steps 4.98 (IS) and 4.95 (PDIS) at offset 22 (3.81 / 3.95 at 3
    # steps); at 2 steps the largest |z| over offsets 0-29 is 2.73, as 15 normal coordinates would give.
    exact = jax.grad(lambda th: tab.finite_horizon_return(problem["mdp"], tab.softmax_policy(th, features), 2))(theta)
    for method in ("is", "pdis"):
        per = jax.vmap(lambda d: off.importance_policy_gradient(d, theta, features, GAMMA, method))(
            jax.tree.map(lambda x: x[:, None], _first_steps(big_dataset, 2))
        )
        z = (per.mean(0) - exact) / (per.std(0, ddof=1) / np.sqrt(per.shape[0]))
        assert np.max(np.abs(z)) < 4.5, (method, np.max(np.abs(z)))


def test_offline_improvement_beats_the_behaviour_policy(problem):
    mdp, features = problem["mdp"], problem["features"]
    data = off.collect(jax.random.key(11), mdp, problem["mu"], 200, T)
    result = off.offline_policy_improvement(data, problem["theta_mu"], features, GAMMA, optax.adam(0.1), 100)
    true_values = jax.vmap(lambda th: tab.expected_return(mdp, tab.softmax_policy(th, features)))(result.thetas)
    optimum = float(tab.optimal_return(mdp))
    start, end = float(true_values[0]), float(true_values[-1])
    assert end > start + 0.5 * (optimum - start), (start, end, optimum)
    assert float(result.estimated_values[-1]) > float(result.estimated_values[0])
    assert np.all(np.isfinite(np.asarray(result.thetas)))


def test_offline_improvement_compiles_once_per_optimizer_and_shapes(problem):
    """The run's program takes the data as arguments: another dataset of the same shapes and another theta, with the
    same optimizer object, reuse it (a closure over the data compiled again on every call) and get their own run."""
    mdp, features, adam = problem["mdp"], problem["features"], optax.adam(0.1)
    first, second = (off.collect(jax.random.key(k), mdp, problem["mu"], 50, T) for k in (21, 22))
    theta = problem["theta_mu"]
    other_theta = theta + 0.1
    one = off.offline_policy_improvement(first, theta, features, GAMMA, adam, 5)
    with compile_count.compiles() as compiled:
        two = off.offline_policy_improvement(second, other_theta, features, GAMMA, adam, 5)
    assert compiled == [], f"{len(compiled)} programs compiled again"
    fresh = off.offline_policy_improvement(second, other_theta, features, GAMMA, optax.adam(0.1), 5)  # compiles anew
    for got, want in zip(two, fresh):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(two.thetas[0]), np.asarray(other_theta))
    assert not np.allclose(np.asarray(two.estimated_values), np.asarray(one.estimated_values))


def test_offline_improvement_takes_an_unhashable_optimizer(problem):
    """A duck-typed optimizer (init/update) whose dataclass __eq__ makes it unhashable runs as optax's own does
    (the compiled program's static arguments must hash: it was refused with "Non-hashable static arguments")."""

    @dataclasses.dataclass
    class PlainSGD:
        learning_rate: float

        def init(self, params):
            return ()

        def update(self, grads, state, params=None):
            return jax.tree_util.tree_map(lambda g: -self.learning_rate * g, grads), state

    data = off.collect(jax.random.key(21), problem["mdp"], problem["mu"], 50, T)
    args = (data, problem["theta_mu"], problem["features"], GAMMA)
    mine = off.offline_policy_improvement(*args, PlainSGD(0.1), 3)
    theirs = off.offline_policy_improvement(*args, optax.sgd(0.1), 3)
    for got, want in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-14)


# --- coverage -----------------------------------------------------------------------------------


def test_coverage_gaps_are_reported(problem):
    mdp = problem["mdp"]
    mu = np.array(problem["mu"])
    mu[:, 2] = 0.0  # the behaviour policy never takes action 2
    mu /= mu.sum(1, keepdims=True)
    data = off.collect(jax.random.key(12), mdp, jnp.asarray(mu), 100, T)
    pi = problem["pi"]
    with pytest.warns(off.CoverageWarning, match="occupancy mass"):
        w, report = off.dualdice_tabular(data, pi, GAMMA, return_coverage=True)
    np.testing.assert_array_equal(np.asarray(report.unseen)[:, 2], True)
    # The reported mass estimates the population one (the occupancy at or after the first action 2),
    # which is at least the target's occupancy of action 2 itself.
    population = off.coverage(_exact_model(mdp, off.logged_distribution(mdp, jnp.asarray(mu), T)), pi, GAMMA)
    action2_mass = float(tab.state_action_occupancy(mdp, pi)[:, 2].sum())
    assert action2_mass <= float(population.mass) <= 1.0
    assert abs(float(report.mass) - float(population.mass)) < 0.1 * float(population.mass)
    assert np.all(np.asarray(w)[:, 2] == 0.0)
    with pytest.raises(off.CoverageError, match="not identifiable"):
        off.policy_value(data, pi, GAMMA, "dualdice", on_uncovered="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off.policy_value(data, pi, GAMMA, "model", on_uncovered="ignore")
        full = off.collect(jax.random.key(13), mdp, problem["mu"], 100, T)
        off.dualdice_tabular(full, pi, GAMMA)  # covered: no warning


def test_empirical_model_counts_and_coverage_on_hand_made_data():
    """Two hand-made episodes (one padded) over 6 states: 2 is only a next state, 3 only an initial sample, 4 only a
    logged state (seen once), and 5 never appears. The counts and initial counts, the model's sizes, unseen pairs only
    where pi > 0 in reached states, the pessimistic value over pairs seen once too, `empirical_mdp`'s default unseen
    reward 0, the coverage message's list of pairs (" ..." beyond 8), and discounts 0 and 1 refused."""
    states = np.array([[0, 1], [4, 1]], np.int32)
    data = off.Dataset(observations=states, actions=np.array([[0, 1], [0, 0]], np.int32),
                       rewards=np.array([[1.0, -2.0], [3.0, 0.5]]),
                       next_observations=np.array([[1, 2], [1, 1]], np.int32), terminals=np.zeros((2, 2), bool),
                       mask=np.array([[True, True], [True, False]]), behaviour_log_probs=np.full((2, 2), np.log(0.5)),
                       initial_observations=np.array([0, 3], np.int32))
    model = off.empirical_model(data, 6, 2)
    assert (model.num_states, model.num_actions) == (6, 2)
    np.testing.assert_array_equal(np.asarray(model.counts), [[1, 0], [0, 1], [0, 0], [0, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(np.asarray(model.reward_sums),
                                  [[1.0, 0], [0, -2.0], [0, 0], [0, 0], [3.0, 0], [0, 0]])
    np.testing.assert_array_equal(np.asarray(model.initial_counts), [1, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(float(off.pessimistic_value(model, GAMMA)), -2.0 / (1 - GAMMA))  # the lowest, at (1, 1)
    np.testing.assert_array_equal(np.asarray(off.empirical_mdp(model, GAMMA).reward),
                                  [[1.0, 0], [0, -2.0], [0, 0], [0, 0], [3.0, 0], [0, 0], [0, 0]])
    pi = jnp.full((6, 2), 0.5).at[2].set(jnp.array([1.0, 0.0]))
    report = off.coverage(model, pi, GAMMA)
    np.testing.assert_array_equal(np.asarray(report.unseen), [[False, True], [True, False], [True, False], [True, True],
                                                              [False, True], [False, False]])
    assert int(report.num_unseen) == 6
    for num_pairs, listed in ((8, r"\(3,1\)\]"), (9, r"\(3,1\) \.\.\.\]")):
        many = off.Coverage(np.arange(10).reshape(5, 2) < num_pairs, jnp.asarray(0.5), jnp.asarray(num_pairs))
        with pytest.raises(off.CoverageError, match=rf"one of {num_pairs} state-action pairs .*{listed}"):
            off.report_coverage(many, "raise")
    for discount in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"discount must be in \(0, 1\); got {discount}"):
            off.policy_value(data, pi, discount, "model")


# --- vmap and the Taxi MDP ----------------------------------------------------------------------


def test_vmapped_seeds_equal_single_runs(problem):
    mdp, mu, pi = problem["mdp"], problem["mu"], problem["pi"]

    def estimate(key):
        data = off.collect(key, mdp, mu, 20, T)
        model = off.empirical_model(data, S, A)
        return off.ratio_weighted_value(data, off.dualdice_ratio(model, pi, GAMMA), GAMMA)

    keys = jax.random.split(jax.random.key(14), 4)
    batched = jax.vmap(estimate)(keys)
    single = jnp.stack([estimate(k) for k in keys])
    np.testing.assert_allclose(batched, single, rtol=1e-12)


def test_taxi_dynamics():
    mdp = tab.taxi_mdp(discount=0.95)
    P, R = np.asarray(mdp.transition), np.asarray(mdp.reward)
    enc = tab.taxi_encode
    assert P.shape == (500, 6, 500) and R.shape == (500, 6)
    s = enc(0, 1, 0, 1)  # wall east of (0, 1)
    assert P[s, 2, s] == 1.0 and R[s, 2] == -1.0
    assert P[s, 3, enc(0, 0, 0, 1)] == 1.0  # west is open
    at_r = enc(0, 0, 0, 1)
    assert P[at_r, 4, enc(0, 0, 4, 1)] == 1.0 and R[at_r, 4] == -1.0  # legal pickup at R
    assert R[enc(2, 2, 0, 1), 4] == -10.0  # illegal pickup
    at_g = enc(0, 4, 4, 1)
    assert R[at_g, 5] == 20.0 and np.allclose(P[at_g, 5], mdp.initial)  # delivery starts a new trip
    assert np.isclose(np.asarray(mdp.initial).sum(), 1.0) and np.count_nonzero(mdp.initial) == 300
    assert tab.taxi_decode(enc(3, 2, 4, 0)) == (3, 2, 4, 0)
    assert float(tab.optimal_return(mdp)) > 0 > float(tab.expected_return(mdp, tab.uniform_policy(500, 6)))


def test_taxi_every_transition_against_walls_read_off_the_map_by_eye():
    """Every (s, a) of the 500 x 6 table, against the rules and a wall list written by hand from the map (not parsed
    from it): walls east of (0,1) (1,1) (3,0) (3,2) (4,0) (4,2) and at the east and west edges; pickup at the
    passenger's stand, dropoff at the destination (+20 and a new trip from mu0) or at another stand (-1, the
    passenger waits there); every other pickup / dropoff -10."""
    mdp = tab.taxi_mdp(discount=0.5)
    P, R = np.asarray(mdp.transition), np.asarray(mdp.reward)
    mu0 = np.asarray(mdp.initial)
    stands = [(0, 0), (0, 4), (4, 0), (4, 3)]
    east_walls = {(0, 1), (1, 1), (3, 0), (3, 2), (4, 0), (4, 2)} | {(r, 4) for r in range(5)}
    west_walls = {(r, c + 1) for r, c in east_walls if c < 4} | {(r, 0) for r in range(5)}
    counts = collections.Counter()
    for row, col, passenger, destination in itertools.product(range(5), range(5), range(5), range(4)):
        s = tab.taxi_encode(row, col, passenger, destination)
        assert 0 <= s < 500 and tab.taxi_decode(s) == (row, col, passenger, destination)
        moves = {0: (min(row + 1, 4), col), 1: (max(row - 1, 0), col),
                 2: (row, col) if (row, col) in east_walls else (row, col + 1),
                 3: (row, col) if (row, col) in west_walls else (row, col - 1)}
        for a in range(6):
            reward, place, rider = -1.0, moves.get(a, (row, col)), passenger
            if a == 4:
                legal = passenger < 4 and (row, col) == stands[passenger]
                rider, reward = (4, -1.0) if legal else (passenger, -10.0)
            if a == 5:
                if passenger == 4 and (row, col) == stands[destination]:
                    np.testing.assert_array_equal(P[s, a], mu0)
                    assert R[s, a] == 20.0
                    counts[20.0] += 1
                    continue
                at_stand = passenger == 4 and (row, col) in stands
                rider, reward = (stands.index((row, col)), -1.0) if at_stand else (passenger, -10.0)
            expected = tab.taxi_encode(*place, rider, destination)
            assert P[s, a, expected] == 1.0 and R[s, a] == reward, (row, col, passenger, destination, a)
            counts[reward] += 1
    # Illegal pickups and dropoffs: 500 - 16 each; deliveries: one state per destination.
    assert counts == {-1.0: 2028, -10.0: 968, 20.0: 4}
    starts = [tab.taxi_decode(s) for s in np.flatnonzero(mu0)]
    assert len(starts) == 300 and all(p < 4 and p != d for _, _, p, d in starts)
    np.testing.assert_allclose(mu0[mu0 > 0], 1 / 300, rtol=1e-12)
    assert float(mdp.discount) == 0.5 and P.shape == (500, 6, 500)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="taxi_mdp: discount must be in \\(0, 1\\)"):
            tab.taxi_mdp(discount=bad)


def test_weighted_is_survives_underflow_and_reports_undefined_weights(problem):
    mdp, pi, mu = problem["mdp"], problem["pi"], problem["mu"]
    data = off.collect(jax.random.key(15), mdp, mu, 50, 6000)  # weights underflow to 0 in float64
    w = off.importance_weights(off.safe_log(pi)[data.observations, data.actions], data.behaviour_log_probs, data.mask)
    assert float(jnp.max(w)) == 0.0
    for method in ("wis", "wpdis"):
        value = off.policy_value(data, pi, GAMMA, method)
        assert np.isfinite(float(value)) and (
            float(jnp.min(mdp.reward)) / (1 - GAMMA) <= float(value) <= float(jnp.max(mdp.reward)) / (1 - GAMMA)
        )
    never = np.zeros((S, A))
    never[:, 0] = 1.0  # a target that never takes the logged actions 1 and 2
    with pytest.raises(ValueError, match="undefined"):
        off.policy_value(data, jnp.asarray(never), GAMMA, "wis")


def test_baseline_and_unseen_value_change_nothing_on_covered_data(problem, big_dataset):
    """With full coverage the V_hat baseline integrates to zero and no pair is unseen."""
    data = off.subset(big_dataset, 100)
    model = off.empirical_model(data, S, A)
    theta, features = problem["theta_pi"], problem["features"]
    plain = off.model_policy_gradient(model, data, theta, features, GAMMA)
    both = off.model_policy_gradient(model, data, theta, features, GAMMA, True, off.pessimistic_value(model, GAMMA))
    np.testing.assert_allclose(both, plain, rtol=1e-8, atol=1e-12)
    lowest = float(jnp.min(problem["mdp"].reward)) / (1 - GAMMA)
    # R_hat = reward sums / counts: the true minimum up to rounding (equal to it when rewards are deterministic).
    assert lowest - 1e-9 <= float(off.pessimistic_value(model, GAMMA)) <= lowest + 0.2 / (1 - GAMMA)


@pytest.mark.filterwarnings("ignore::pgjax.offline.CoverageWarning")  # the data miss pairs by design
def test_importance_weights_that_overflow_are_reported(problem):
    """A target policy that takes, at every step, an action mu logged with probability e^-100: the episode's log
    weight (~2000) overflows even float64, so IS / PDIS estimates and gradients are inf or NaN. Each entry point
    says so (instead of a NaN gradient, or an error blaming zero weights); WIS, normalised in log space, is finite."""
    dataset = off.collect(jax.random.key(5), problem["mdp"], problem["mu"], 4, 20)
    dataset = dataset._replace(actions=jnp.ones_like(dataset.actions),
                               behaviour_log_probs=jnp.full(dataset.rewards.shape, -100.0))
    theta = jnp.zeros((S, A)).at[:, 1].set(5.0).ravel()
    pi = tab.softmax_policy(theta, problem["features"])
    overflow = r"overflows float64 \(the largest log weight is 2000, log\(max\) = 709.8"
    with pytest.raises(FloatingPointError, match=overflow):
        off.importance_policy_gradient(dataset, theta, problem["features"], GAMMA, "is")
    with pytest.raises(FloatingPointError, match=overflow) as error:
        off.policy_value(dataset, pi, GAMMA, "pdis")
    assert "float64 data" not in str(error.value)  # float64 data already
    with pytest.raises(FloatingPointError, match="the gradient at step 0 .*" + overflow):
        off.offline_policy_improvement(dataset, theta, problem["features"], GAMMA, optax.sgd(0.01), 2, method="pdis")
    # Weights below the limit whose products with the returns overflow: it blamed zero weights too.
    near = dataset._replace(behaviour_log_probs=jnp.full(dataset.rewards.shape, -34.5), rewards=dataset.rewards * 1e10)
    with pytest.raises(FloatingPointError, match=r"times the returns overflows float64 \(the largest log weight is 68"):
        off.policy_value(near, pi, GAMMA, "pdis")
    assert np.isfinite(float(off.policy_value(dataset, pi, GAMMA, "wis")))
    assert np.all(np.isfinite(np.asarray(off.importance_policy_gradient(dataset, theta, problem["features"], GAMMA,
                                                                          "wis"))))


def test_importance_overflow_in_float32_suggests_float64_data():
    """In float32 the limit is log(max float32) = 88.72: log weights summing to 90 overflow it, and the message says
    float64 data would hold them (log(max) = 709.8). The same weights of float64 data are an error of zero weights."""
    mask, rewards = jnp.ones((1, 2), bool), jnp.ones((1, 2), jnp.float32)
    target, behaviour = jnp.zeros((1, 2), jnp.float32), jnp.full((1, 2), -45.0, jnp.float32)
    error = off.importance.nonfinite_error("pdis", target, behaviour, mask, rewards)
    assert isinstance(error, FloatingPointError)
    assert "overflows float32 (the largest log weight is 90, log(max) = 88.72" in str(error)
    assert "or float64 data (jax.config.update('jax_enable_x64', True): log(max) = 709.8)" in str(error)
    wide = off.importance.nonfinite_error("pdis", target.astype(jnp.float64), behaviour.astype(jnp.float64), mask,
                                          rewards)  # float64: the module's tests run with x64 on
    assert isinstance(wide, ValueError) and not isinstance(wide, FloatingPointError)
    # Weight times returns: log rho = 80 plus log of the largest episode's sum of |r| over valid steps only.
    behaviour = jnp.full((1, 3), -40.0, jnp.float32).at[0, 2].set(0.0)
    cut = jnp.array([[True, True, False]])

    def kind(rewards, mask=cut, behaviour=behaviour):
        return type(off.importance.nonfinite_error("pdis", jnp.zeros((1, 3), jnp.float32), behaviour, mask,
                                                   jnp.asarray(rewards, jnp.float32)))

    r = float(np.exp(8.2))  # 80 + log(2 r) = 88.89 overflows; 80 + log(r) = 88.2 (a mean, or one step) would not
    assert kind([[r, r, 0.0]]) is FloatingPointError and kind([[r, 0.0, 0.0]]) is ValueError
    assert kind([[-r, r, 0.0]]) is FloatingPointError  # |r|
    # A sum of |r| up to 1 adds nothing to the log weight 88.3 (log 2 more would overflow); padding counts for
    # nothing, whatever it holds.
    near = jnp.full((1, 3), -44.15, jnp.float32).at[0, 2].set(0.0)
    assert kind([[0.5, 0.5, 0.0]], behaviour=near) is ValueError
    assert kind([[0.1, 0.1, 0.0]], behaviour=near) is ValueError
    assert kind([[0.1, 0.1, 1e3]], behaviour=near) is ValueError
    assert kind([[0.1, 0.1, 1e3]], mask=jnp.ones((1, 3), bool), behaviour=near) is FloatingPointError

@pytest.mark.filterwarnings("ignore::pgjax.offline.CoverageWarning")  # one episode covers few pairs
def test_importance_gradient_overflow_of_weight_returns_and_score_is_not_blamed_on_zero_weights():
    """One float32 episode of 2 steps, log mu = -40 each and pi = 1/2: log rho = 80 - 2 log 2 = 78.61, and the returns
    (2 e^7) bring it to 86.0, under log(max float32) = 88.72, so the value is finite. The gradient multiplies by
    sum_t |grad log pi| = 2 * 500 (features 1e3 on the logged action, (1 - 1/2) 1e3 each step): log 1000 = 6.91
    more overflows. It said every episode had zero probability; features of 1 keep the gradient finite."""
    episode = dict(observations=jnp.array([[0, 1]], jnp.int32), actions=jnp.array([[1, 1]], jnp.int32),
                   rewards=jnp.full((1, 2), float(np.exp(7.0)), jnp.float32),
                   next_observations=jnp.array([[1, 0]], jnp.int32), terminals=jnp.zeros((1, 2), bool),
                   mask=jnp.ones((1, 2), bool), behaviour_log_probs=jnp.full((1, 2), -40.0, jnp.float32),
                   initial_observations=jnp.array([0], jnp.int32))
    dataset, theta = off.Dataset(**episode), jnp.zeros((1,), jnp.float32)
    features = jnp.zeros((2, 2, 1), jnp.float32).at[:, 1, 0].set(1e3)
    assert np.isfinite(float(off.policy_value(dataset, tab.softmax_policy(theta, features), 0.9, "is")))
    overflow = (r"times the returns and the score \|grad log pi\| \(log of its sum 6.908\) overflows float32 \(the "
                r"largest log weight is 78.61, log\(max\) = 88.72")
    for method in ("is", "pdis"):
        with pytest.raises(FloatingPointError, match=overflow):
            off.importance_policy_gradient(dataset, theta, features, 0.9, method)
    with pytest.raises(FloatingPointError, match="the gradient at step 0 .*" + overflow):
        off.offline_policy_improvement(dataset, theta, features, 0.9, optax.sgd(0.01), 1, method="pdis")
    assert np.all(np.isfinite(np.asarray(off.importance_policy_gradient(dataset, theta, features / 1e3, 0.9, "is"))))
    # The bound itself: scores summing to 1 or less add nothing, as returns do.
    log_probs = (jnp.full((1, 2), -0.6931, jnp.float32), dataset.behaviour_log_probs, dataset.mask)
    for norms, kind in ((np.full((1, 2), 500.0), FloatingPointError), (np.full((1, 2), 0.5), ValueError),
                        (None, ValueError), (np.array([[0.5, 1e3]]), FloatingPointError)):
        assert type(off.importance.nonfinite_error("is", *log_probs, dataset.rewards, norms)) is kind, norms
    masked = (log_probs[0], log_probs[1], jnp.array([[True, False]]))  # padding's score counts for nothing
    assert type(off.importance.nonfinite_error("is", *masked, dataset.rewards, np.array([[0.5, 1e3]]))) is ValueError



def test_discount_must_be_one_number(problem, big_dataset):
    assert np.isfinite(float(off.policy_value(big_dataset, problem["pi"], jnp.asarray(GAMMA), "model")))
    with pytest.raises(ValueError, match=r"discount must be one number in \(0, 1\); got an array of shape \(2,\)"):
        off.policy_value(big_dataset, problem["pi"], jnp.asarray([GAMMA, GAMMA]), "model")


NEAR_ONE = 1 - 1e-11  # below 1 in float64, 1.0 in float32


def test_a_discount_that_rounds_to_one_is_refused_as_such_by_every_tabular_entry_point(problem, big_dataset):
    """1 - 1e-11 computed in float32 is 1.0. The estimators said "MDP.discount must lie strictly in (0, 1); got 1.0",
    a value and a name never given, and offline_policy_improvement "the gradient at step 0 is not finite; check the
    dataset's rewards and the optimiser's step size". Now each names the discount given and the fix: float64 data
    under x64 (the model computes in the rewards' dtype), and x64 itself where JAX's default float is float32."""
    pi, theta, features = problem["pi"], problem["theta_pi"], problem["features"]
    calls = {f"policy_value({m!r})": functools.partial(lambda m, d, g: off.policy_value(d, pi, g, m), m)
             for m in off.METHODS}
    calls["dualdice_tabular"] = lambda d, g: off.dualdice_tabular(d, pi, g)
    calls["dualdice_policy_gradient"] = lambda d, g: off.dualdice_policy_gradient(d, theta, features, g)
    calls["importance_policy_gradient"] = lambda d, g: off.importance_policy_gradient(d, theta, features, g)
    for m in ("dualdice", "pdis"):
        calls[f"offline_policy_improvement({m!r})"] = functools.partial(
            lambda m, d, g: off.offline_policy_improvement(d, theta, features, g, optax.sgd(0.1), 2, method=m), m)
    float32 = big_dataset._replace(rewards=big_dataset.rewards.astype(jnp.float32))
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"^discount 0.99999999999 rounds to 1.0 in float32: use a smaller one, "
                                             r"or float64 data.$"):
            call(float32, NEAR_ONE)
        with jax.enable_x64(False), pytest.raises(ValueError, match=r"^discount 0.99999999999 rounds to 1.0 in "
                                                                     r"float32: use a smaller one, or float64 "
                                                                     r"\(jax.enable_x64\).$"):
            call(big_dataset, NEAR_ONE)
    # The bound is float32's: 1 - 1e-7 stays below 1 there (0.99999988) and gives a finite value.
    assert np.isfinite(float(off.policy_value(float32, pi, 1 - 1e-7, "model")))
    assert np.isfinite(float(off.policy_value(big_dataset, pi, NEAR_ONE, "model")))  # float64 data: kept


def test_formulas_that_divide_by_one_minus_gamma_refuse_a_known_discount_outside_the_unit_interval(problem):
    """Each returned a number: gamma = 1 an inf (a gradient of [inf, inf, -inf]), gamma = 1.5 one of flipped sign.
    A traced discount (a jitted sweep over gammas) is left to the caller, as documented."""
    theta, features, pi = problem["theta_pi"], problem["features"], problem["pi"]
    data = off.collect(jax.random.key(5), problem["mdp"], problem["mu"], 4, 6)
    w, q = jnp.ones((S, A)), jnp.ones((S, A))
    model = off.empirical_model(data, S, A)
    log_probs, ones = jnp.log(pi[data.observations]), jnp.ones(data.actions.shape)
    formulas = {
        "offline_policy_gradient": lambda g: off.offline_policy_gradient(data, theta, features, g, w, q),
        "expected_offline_gradient": lambda g: off.expected_offline_gradient(problem["d_data"], w, theta, features, q,
                                                                             g),
        "ratio_weighted_value": lambda g: off.ratio_weighted_value(data, w, g),
        "pessimistic_value": lambda g: off.pessimistic_value(model, g),
        "offline_policy_gradient_loss": lambda g: off.offline_policy_gradient_loss(log_probs, data.actions, ones,
                                                                                   ones, g),
    }
    for name, formula in formulas.items():
        assert np.all(np.isfinite(np.asarray(formula(GAMMA)))), name
        assert np.all(np.isfinite(np.asarray(jax.jit(formula)(GAMMA)))), name  # traced: unchecked, computed
        for discount in (1.0, 1.5):
            with pytest.raises(ValueError, match=rf"^discount must be in \(0, 1\); got {discount}.$"):
                formula(discount)


def test_effective_sample_size_is_kish(x64):
    """(sum w)^2 / sum w^2 by hand: 2 equal weights of 4 count 2, one counts 1, N equal ones N at any scale, all-zero
    weights 0 (documented range [0, N]); a plain sum w / sum w would give 1 throughout."""
    ess = lambda w: float(off.effective_sample_size(jnp.asarray(w, jnp.float64)))  # noqa: E731
    assert ess([1.0, 1.0, 0.0, 0.0]) == 2.0
    assert ess([1.0, 0.0, 0.0, 0.0]) == 1.0
    assert ess(np.full(5, 0.3)) == pytest.approx(5.0, rel=1e-12)
    assert ess([3.0, 1.0]) == pytest.approx(16.0 / 10.0, rel=1e-12)
    assert ess([0.0, 0.0, 0.0]) == 0.0


def test_importance_sampling_reports_target_actions_the_data_never_show():
    """A chain whose behaviour policy never moves right (action 1), evaluated for the uniform policy: IS weights
    are 0 on every trajectory that would move, so PDIS returns 0.1 * 0.5 (1 - 0.4^4) / 0.6 = 0.0812 for J_4 = 0.356;
    it was silent, and ignored on_uncovered="raise" (and a misspelt value). Now every method reports the gap."""
    transition = np.zeros((3, 2, 3))
    for s in range(3):
        transition[s, 0, s], transition[s, 1, min(s + 1, 2)] = 1.0, 1.0
    mdp = tab.MDP(transition, np.array([[0.1, 0.0], [0.1, 0.0], [0.1, 1.0]]), np.array([1.0, 0.0, 0.0]), 0.8)
    behaviour, target = jnp.array([[1.0, 0.0]] * 3), jnp.full((3, 2), 0.5)
    data = off.collect(jax.random.key(0), mdp, behaviour, 5, 4)
    assert float(tab.finite_horizon_return(mdp, target, 4)) == pytest.approx(0.35555, abs=1e-4)
    for method in off.IS_METHODS:
        with pytest.warns(off.CoverageWarning, match=rf"policy_value\('{method}'\): if the behaviour policy never"):
            value = off.policy_value(data, target, 0.8, method)
        if method == "pdis":
            assert float(value) == pytest.approx(0.1 * 0.5 * (1 - 0.4**4) / 0.6, rel=1e-6)
        with pytest.raises(off.CoverageError, match="the data never show"):
            off.policy_value(data, target, 0.8, method, on_uncovered="raise")
        with pytest.raises(ValueError, match=r"on_uncovered must be 'warn', 'raise' or 'ignore'; got 'rasie'"):
            off.policy_value(data, target, 0.8, method, on_uncovered="rasie")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # covered: silent
        off.policy_value(data, behaviour, 0.8, "pdis")


def test_importance_gradient_reports_target_actions_the_data_never_show():
    """The chain of the test above, the uniform policy as theta = 0: the IS gradient was silent about the target's
    mass on actions the behaviour policy never took; now it reports it as policy_value does."""
    transition = np.zeros((3, 2, 3))
    for s in range(3):
        transition[s, 0, s], transition[s, 1, min(s + 1, 2)] = 1.0, 1.0
    mdp = tab.MDP(transition, np.array([[0.1, 0.0], [0.1, 0.0], [0.1, 1.0]]), np.array([1.0, 0.0, 0.0]), 0.8)
    features = tab.tabular_features(3, 2)
    data = off.collect(jax.random.key(0), mdp, jnp.array([[1.0, 0.0]] * 3), 5, 4)
    with pytest.warns(off.CoverageWarning, match=r"importance_policy_gradient\('pdis'\): if the behaviour policy"):
        off.importance_policy_gradient(data, jnp.zeros(6), features, 0.8)
    with pytest.raises(off.CoverageError, match="the data never show"):
        off.importance_policy_gradient(data, jnp.zeros(6), features, 0.8, "wis", on_uncovered="raise")
    with pytest.raises(ValueError, match=r"importance_policy_gradient: on_uncovered must be"):
        off.importance_policy_gradient(data, jnp.zeros(6), features, 0.8, on_uncovered="rasie")
    covered = off.collect(jax.random.key(1), mdp, jnp.full((3, 2), 0.5), 200, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off.importance_policy_gradient(covered, jnp.zeros(6), features, 0.8)


def test_importance_improvement_reports_the_largest_coverage_gap_along_its_run(problem):
    """offline_policy_improvement with an IS method was silent where the policies along its run reach pairs the
    data never show (its uncovered_mass said so, nothing else did); now it reports the step with the most. The
    mass can grow as pi moves: weighted PDIS can climb onto action 2, which the data never show (its gradient on a
    logit of action 2 is -pi(2|s) Cov_w(G, visits to s), of either sign), unweighted PDIS cannot (-pi(2|s)
    E_w[G visits to s] <= 0 with rewards >= 0: its mass is largest at the start)."""
    mdp, features = problem["mdp"], problem["features"]
    mu = np.array(problem["mu"])
    mu[:, 2] = 0.0  # the behaviour policy never takes action 2: the IS weights miss the target's mass there
    mu /= mu.sum(1, keepdims=True)
    data = off.collect(jax.random.key(12), mdp, jnp.asarray(mu), 100, T)
    adam = optax.adam(0.3)

    def uncovered_mass(method, theta):
        run = off.offline_policy_improvement(data, theta, features, GAMMA, adam, 6, method, on_uncovered="ignore")
        return np.asarray(run.uncovered_mass), run

    # Which start climbs depends on the MDP: the first whose weighted run peaks after step 0, of +-theta_mu,
    # +-theta_pi and then 16 random starts, drawn lazily (the fixture's MDP: theta_mu, peak at step 6). Over key
    # offsets 0-79 the first four climbed at all but 19, 63, 66 and 76; the random starts, at those four (the 1st,
    # 1st, 1st and 10th of them).
    theta_mu, theta_pi = problem["theta_mu"], problem["theta_pi"]
    random_starts = (scale * jax.random.normal(jax.random.key(100 + i), theta_mu.shape)
                     for i, scale in enumerate([0.5, 1.5] * 8))
    starts = ((theta, uncovered_mass("wpdis", theta))
              for theta in itertools.chain((theta_mu, theta_pi, -theta_mu, -theta_pi), random_starts))
    climbing = next(((theta, run) for theta, run in starts if np.argmax(run[0]) > 0), None)
    assert climbing is not None, "no start whose weighted-PDIS run reaches more unseen pairs than it starts with"
    for method, theta, (mass, quiet) in (("wpdis", *climbing), ("pdis", theta_pi, uncovered_mass("pdis", theta_pi))):
        largest = int(np.argmax(mass))
        assert (largest > 0 if method == "wpdis" else largest == 0) and mass[largest] > 0.3, (method, mass)
        with pytest.warns(off.CoverageWarning, match=rf"offline_policy_improvement\('{method}'\) at step {largest} "
                                                     rf"of 6 .*a fraction {mass[largest]:.4g} of"):
            warned = off.offline_policy_improvement(data, theta, features, GAMMA, adam, 6, method)
        np.testing.assert_array_equal(warned.thetas, quiet.thetas)  # reporting changes nothing
        with pytest.raises(off.CoverageError, match=rf"at step {largest} of 6 .*the data never show"):
            off.offline_policy_improvement(data, theta, features, GAMMA, adam, 6, method, on_uncovered="raise")
    with pytest.raises(ValueError, match=r"offline_policy_improvement: on_uncovered must be"):
        off.offline_policy_improvement(data, theta, features, GAMMA, adam, 6, "pdis", on_uncovered="rasie")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # "dualdice" values unseen pairs explicitly (pessimistic) and reports nothing; covered data are silent.
        off.offline_policy_improvement(data, theta, features, GAMMA, adam, 2)
        full = off.collect(jax.random.key(13), mdp, problem["mu"], 100, T)
        off.offline_policy_improvement(full, theta, features, GAMMA, adam, 2, method="pdis")


# --- padded data and unseen pairs, against NumPy (mutation audit, thirty-fourth session) -------------------------


def _padded(problem):
    """10 episodes of 6 steps; the even ones end (terminal) at step 2 and are padded after it."""
    data = off.collect(jax.random.key(11), problem["mdp"], problem["mu"], 10, 6)
    mask = np.ones((10, 6), bool)
    mask[::2, 3:] = False
    terminals = np.zeros((10, 6), bool)
    terminals[::2, 2] = True
    return data._replace(mask=jnp.asarray(mask), terminals=jnp.asarray(terminals))


def test_offline_gradient_and_ratio_value_average_over_valid_steps_only(problem):
    """Both are means over the valid steps (padding out): a normaliser of N * T steps scaled them by 40/60."""
    data = _padded(problem)
    rng = np.random.default_rng(0)
    ratio, q = rng.uniform(0.5, 2.0, (S, A)), rng.normal(size=(S, A))
    features, theta = np.asarray(problem["features"]), np.asarray(problem["theta_pi"])
    pi = np.asarray(problem["pi"])
    score = features - np.einsum("sa,sad->sd", pi, features)[:, None]
    mask = np.asarray(data.mask)
    s, a, r = np.asarray(data.observations)[mask], np.asarray(data.actions)[mask], np.asarray(data.rewards)[mask]
    want = (ratio[s, a, None] * score[s, a] * q[s, a, None]).mean(0) / (1 - GAMMA)
    got = off.offline_policy_gradient(data, jnp.asarray(theta), problem["features"], GAMMA, jnp.asarray(ratio),
                                      jnp.asarray(q))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(off.ratio_weighted_value(data, jnp.asarray(ratio), GAMMA),
                               (ratio[s, a] * r).mean() / (1 - GAMMA), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coverage of the padded data is not the point
        # the module's claim: DualDICE's tabular ratio-weighted value is the empirical model's value
        np.testing.assert_allclose(off.policy_value(data, problem["pi"], GAMMA, "dualdice", "ignore"),
                                   off.policy_value(data, problem["pi"], GAMMA, "model", "ignore"), rtol=1e-10)


def test_an_infinite_ratio_on_a_pair_the_data_never_show_is_left_out(problem):
    """The documented `ratio` "may be inf" on unseen pairs: the gradient is that of the ratio set to 0 there."""
    mu = np.asarray(problem["mu"]).copy()
    mu[0, 1] = 0.0
    mu /= mu.sum(1, keepdims=True)
    data = off.collect(jax.random.key(12), problem["mdp"], jnp.asarray(mu), 20, 8)
    args = (data, problem["theta_pi"], problem["features"], GAMMA)
    ratio = np.ones((S, A))
    ratio[0, 1] = 0.0
    zero = off.offline_policy_gradient(*args, jnp.asarray(ratio), jnp.ones((S, A)))
    ratio[0, 1] = np.inf
    got = off.offline_policy_gradient(*args, jnp.asarray(ratio), jnp.ones((S, A)))
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_array_equal(got, zero)


def test_logged_distribution_and_exact_ratio_against_numpy(problem):
    mdp, mu = problem["mdp"], np.asarray(problem["mu"])
    p_mu = np.einsum("sa,sat->st", mu, np.asarray(mdp.transition))
    dist, total = np.asarray(mdp.initial), np.zeros(S)
    for _ in range(3):  # t = 0, 1, 2
        total, dist = total + dist, dist @ p_mu
    np.testing.assert_allclose(off.logged_distribution(mdp, problem["mu"], 3), (total / 3)[:, None] * mu, rtol=1e-12)
    np.testing.assert_allclose(off.logged_distribution(mdp, problem["mu"], 1), np.asarray(mdp.initial)[:, None] * mu,
                               rtol=1e-12)
    d_data = np.full((S, A), 1.0 / (S * A - 1))
    d_data[0, 1] = 0.0  # never in the data: the ratio is not identifiable there, documented 0
    ratio = np.asarray(off.exact_ratio(mdp, problem["pi"], jnp.asarray(d_data)))
    assert ratio[0, 1] == 0.0 and np.all(ratio[d_data > 0] > 0)


@pytest.mark.parametrize("field, index", [("observations", S), ("next_observations", S), ("actions", A),
                                          ("initial_observations", S)])
def test_an_index_equal_to_the_bound_is_refused(problem, field, index):
    """S (or A) itself is outside [0, S): a check written `> bound` let it through, and the gradient's scatter
    then dropped the step silently."""
    data = off.collect(jax.random.key(13), problem["mdp"], problem["mu"], 4, 5)
    value = getattr(data, field)
    bad = data._replace(**{field: value.at[(0, 1) if value.ndim == 2 else 0].set(index)})
    with pytest.raises(off.DatasetError, match=rf"\[0, {index}\)"):
        off.validate_tabular_dataset(bad, S, A)


def test_subset_sizes_outside_the_dataset_are_refused(big_dataset):
    """subset(-1) kept all but the last episode and subset(10**9) all of them, silently."""
    for bad in (0, -1, 4001, 2.5, True):
        with pytest.raises(ValueError, match=r"num_episodes must be an int in \[1, 4000\]"):
            off.subset(big_dataset, bad)
    assert off.subset(big_dataset, np.int64(3)).num_episodes == 3
