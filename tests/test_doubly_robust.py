"""The doubly robust value estimate against the empirical model of a tabular dataset with terminal transitions.

On tabular data the empirical MDP (`solve_empirical`) has value J_hat, Q-function Q_hat and occupancy
d_hat, and DualDICE's exact solution is w* = d_hat / d^D. Then, exactly (float64):
  * J_DR(w*, Q) = J_hat for every Q;
  * J_DR(w, Q_hat) = J_hat for every w;
  * J_DR(w, Q) - J_hat = 1/(1 - gamma) sum_{s,a} d^D(s,a) (w - w*)(s,a) (B Q - Q)(s,a), B the empirical
    Bellman operator: the product of the two estimates' errors (computed here in NumPy from the counts).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import tabular as T
from pgjax.offline import dataset as D
from pgjax.offline import doubly_robust as DR
from pgjax.offline import dualdice_tabular, empirical_model, solve_empirical

pytestmark = pytest.mark.usefixtures("x64")

S, A, GAMMA, EPISODES, HORIZON = 5, 2, 0.9, 150, 12
END_PROBABILITY = 0.08  # per step: about 63% of the episodes terminate within the horizon, the rest are cut


def _with_terminals(data, key):
    """Each episode ends (a terminal transition) at its first step where a coin with END_PROBABILITY comes up;
    steps after it become padding. The identities hold for any terminal pattern: the empirical model counts it."""
    ends = np.asarray(jax.random.bernoulli(key, END_PROBABILITY, (EPISODES, HORIZON)))
    first = np.where(ends.any(1), ends.argmax(1), HORIZON)  # HORIZON: never ended, cut by the time limit
    steps = np.arange(HORIZON)[None]
    return data._replace(terminals=jnp.asarray(steps == first[:, None]), mask=jnp.asarray(steps <= first[:, None]))


@pytest.fixture(scope="module")
def problem(x64):
    mdp = T.random_mdp(jax.random.key(0), S, A, discount=GAMMA)
    k_mu, k_pi, k_data, k_end, k_w, k_q = jax.random.split(jax.random.key(1), 6)
    behaviour = 0.2 + 0.6 * jax.nn.softmax(jax.random.normal(k_mu, (S, A)), -1)  # every action at least 0.2
    target = jax.nn.softmax(2.0 * jax.random.normal(k_pi, (S, A)), -1)
    data = _with_terminals(D.collect(k_data, mdp, behaviour, EPISODES, HORIZON), k_end)
    D.validate_tabular_dataset(data, S, A)
    model = empirical_model(data, S, A)
    solution = solve_empirical(model, target, GAMMA)
    return dict(
        data=data,
        target=np.asarray(target),
        model=model,
        solution=solution,
        w_star=np.asarray(dualdice_tabular(data, target, GAMMA, on_uncovered="raise")),
        w_other=np.asarray(jax.random.uniform(k_w, (S, A), minval=0.2, maxval=3.0)),
        q_other=np.asarray(10.0 * jax.random.normal(k_q, (S, A))),
    )


def _dr(problem, w, q):
    """J_DR with ratio table w [S, A] and Q table q [S, A], through the public array function."""
    data, pi = problem["data"], problem["target"]
    v = np.sum(pi * q, axis=-1)
    s, a, s_next = np.asarray(data.observations), np.asarray(data.actions), np.asarray(data.next_observations)
    next_values = np.where(np.asarray(data.terminals), np.nan, v[s_next])  # never read at terminal steps
    return float(DR.doubly_robust_value(w[s, a], data.rewards, q[s, a], next_values, data.terminals,
                                        v[np.asarray(data.initial_observations)], GAMMA, data.mask))


def test_the_problem_has_terminals_truncations_and_padding(problem):
    data = problem["data"]
    terminal_episodes = int(np.asarray(data.terminals).any(1).sum())
    assert 0.4 * EPISODES < terminal_episodes < 0.85 * EPISODES  # both kinds of episode end
    assert not np.asarray(data.mask).all()
    assert np.all(np.asarray(problem["model"].counts) > 0)  # every pair covered: w* is the full ratio


def test_exact_ratio_makes_any_q_exact(problem):
    j_hat = float(problem["solution"].value)
    for q in (problem["q_other"], np.zeros((S, A)), np.asarray(problem["solution"].q_values) + 5.0):
        np.testing.assert_allclose(_dr(problem, problem["w_star"], q), j_hat, rtol=1e-10)


def test_exact_q_makes_any_ratio_exact(problem):
    j_hat = float(problem["solution"].value)
    q_hat = np.asarray(problem["solution"].q_values)
    for w in (problem["w_other"], np.ones((S, A)), np.zeros((S, A))):
        np.testing.assert_allclose(_dr(problem, w, q_hat), j_hat, rtol=1e-10)


def test_error_is_the_product_of_the_two_errors(problem):
    model, pi = problem["model"], problem["target"]
    counts = np.asarray(model.counts)
    w, q = problem["w_other"], problem["q_other"]
    # The empirical Bellman backup of q: R_hat + gamma P_hat V (terminal transitions carry no V).
    backup = (np.asarray(model.reward_sums) + GAMMA * np.asarray(model.transition_counts) @ np.sum(pi * q, -1)) / counts
    predicted = np.sum(counts / counts.sum() * (w - problem["w_star"]) * (backup - q)) / (1.0 - GAMMA)
    error = _dr(problem, w, q) - float(problem["solution"].value)
    assert abs(error) > 0.1  # both estimates wrong: a real error ...
    np.testing.assert_allclose(error, predicted, rtol=1e-9)  # ... and exactly the product form


def test_padding_is_ignored_and_no_mask_means_all_steps(problem):
    data = problem["data"]
    w, q = problem["w_other"], problem["q_other"]
    base = _dr(problem, w, q)
    # Garbage on padding steps changes nothing.
    pad = ~np.asarray(data.mask)
    noisy = data._replace(rewards=jnp.where(pad, 1e6, data.rewards))
    assert _dr(dict(problem, data=noisy), w, q) == pytest.approx(base, rel=1e-12)
    # mask=None averages every step: equal to an all-True mask.
    ones = jnp.ones(4, bool)
    args = (jnp.arange(4.0), jnp.ones(4), jnp.zeros(4), jnp.ones(4), jnp.zeros(4, bool), jnp.array([2.0, 4.0]), 0.5)
    assert float(DR.doubly_robust_value(*args)) == float(DR.doubly_robust_value(*args, ones))
    # By hand: mean V0 = 3; corrections w (r + 0.5 V' - Q) = w * 1.5, mean 1.5 * 1.5 = 2.25; / (1 - 0.5) = 4.5.
    assert float(DR.doubly_robust_value(*args)) == pytest.approx(3.0 + 4.5)
    # One valid step: its own correction, w = 1 times 1.5, / 0.5 = 3; none valid: no correction (not 0 / 0).
    one = jnp.array([False, True, False, False])
    assert float(DR.doubly_robust_value(*args, one)) == pytest.approx(3.0 + 3.0, rel=1e-12)
    assert float(DR.doubly_robust_value(*args, jnp.zeros(4, bool))) == 3.0


def test_shapes_are_checked():
    with pytest.raises(AssertionError):
        DR.doubly_robust_value(jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(4), jnp.zeros(3, bool), jnp.ones(2), 0.9)
    with pytest.raises(AssertionError):
        DR.doubly_robust_value(jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.zeros(3, bool), jnp.ones(()),
                               0.9)
    ones = jnp.ones(3)
    with pytest.raises(ValueError, match=r"discount must be in \(0, 1\); got 1.0"):  # an inf estimate, 1 / (1 - 1)
        DR.doubly_robust_value(ones, ones, ones, ones, jnp.zeros(3, bool), ones, 1.0)
    # 1 - 1e-11 is 1.0 in float32 arrays (under x64 too), where gamma V_hat(s') is computed; kept in float64 ones.
    near_one, ones32 = 1 - 1e-11, jnp.ones(3, jnp.float32)
    with pytest.raises(ValueError, match=r"^discount 0.99999999999 rounds to 1.0 in float32: use a smaller one, or "
                                         r"float64 data.$"):
        DR.doubly_robust_value(ones32, ones32, ones32, ones32, jnp.zeros(3, bool), ones32, near_one)
    kept = DR.doubly_robust_value(ones, ones, ones, ones, jnp.zeros(3, bool), ones, near_one)
    assert float(kept) == pytest.approx(1.0 + near_one / (1 - near_one), rel=1e-4)  # V0 + (1 + gamma - 1) / (1 - gamma)
