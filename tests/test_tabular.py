"""The exact tabular core against closed forms, autodiff and independent NumPy computations (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compile_count
from pgjax import tabular as T
from tabular_reference import numpy_reference, value_iteration_q

pytestmark = pytest.mark.usefixtures("x64")

S, A = 6, 3


@pytest.fixture(scope="module")
def problem(x64):
    mdp = T.random_mdp(jax.random.key(0), S, A, discount=0.9)
    features = T.tabular_features(S, A)
    theta = jax.random.normal(jax.random.key(1), (S * A,))
    return mdp, theta, features


@pytest.fixture(scope="module")
def batch(x64):
    """32 random MDPs with random discounts and random dense features (D = 5)."""
    n = 32
    keys = jax.random.split(jax.random.key(2), n)
    discounts = jnp.linspace(0.5, 0.98, n)
    mdps = jax.vmap(lambda k, g: T.random_mdp(k, S, A, discount=g))(keys, discounts)
    features = jax.random.normal(jax.random.key(3), (n, S, A, 5))
    thetas = jax.random.normal(jax.random.key(4), (n, 5))
    return mdps, thetas, features


# --- theorem vs autodiff -----------------------------------------------------------------------


def test_theorem_gradient_equals_autodiff_on_many_mdps(batch):
    mdps, thetas, features = batch
    theorem = jax.jit(jax.vmap(T.policy_gradient))(mdps, thetas, features)
    autodiff = jax.jit(jax.vmap(jax.grad(T.objective, argnums=1)))(mdps, thetas, features)
    rel = jnp.linalg.norm(theorem - autodiff, axis=-1) / jnp.linalg.norm(autodiff, axis=-1)
    assert theorem.dtype == jnp.float64
    assert float(rel.max()) < 1e-8


def test_advantage_form_equals_q_form(batch):
    mdps, thetas, features = batch
    g_q = jax.vmap(T.policy_gradient)(mdps, thetas, features)
    g_adv = jax.vmap(T.advantage_policy_gradient)(mdps, thetas, features)
    np.testing.assert_allclose(g_adv, g_q, rtol=1e-9, atol=1e-12)


def test_tabular_features_gradient_matches_autodiff(problem):
    mdp, theta, features = problem
    g = T.policy_gradient(mdp, theta, features)
    g_auto = jax.grad(T.objective, argnums=1)(mdp, theta, features)
    np.testing.assert_allclose(g, g_auto, rtol=1e-9, atol=1e-12)


def test_finite_difference_agrees(problem):
    mdp, theta, features = problem
    g = T.policy_gradient(mdp, theta, features)
    direction = jax.random.normal(jax.random.key(9), theta.shape)
    eps = 1e-6
    fd = (T.objective(mdp, theta + eps * direction, features) - T.objective(mdp, theta - eps * direction, features)) / (
        2 * eps
    )
    # The difference quotient's error is absolute (rounding ~ J 1e-16 / eps, truncation ~ eps^2), so bound it against
    # the scale |g| |direction|: the projection itself can be near 0 (-4.9e-4 for PGJAX_TEST_KEY_OFFSET=5).
    scale = float(jnp.linalg.norm(g) * jnp.linalg.norm(direction))
    np.testing.assert_allclose(fd, g @ direction, rtol=1e-6, atol=1e-8 * scale)


# --- evaluation and occupancy vs NumPy and identities --------------------------------------------


def test_evaluation_and_occupancy_match_numpy(problem):
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    v, q = T.policy_evaluation(mdp, pi)
    d = T.occupancy(mdp, pi)
    v_np, q_np, d_np, j_np = numpy_reference(*(np.asarray(x) for x in (mdp.transition, mdp.reward, mdp.initial)),
                                             float(mdp.discount), np.asarray(pi))
    np.testing.assert_allclose(v, v_np, rtol=1e-10)
    np.testing.assert_allclose(q, q_np, rtol=1e-10)
    np.testing.assert_allclose(d, d_np, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(T.expected_return(mdp, pi), j_np, rtol=1e-10)
    # V = sum_a pi Q (lecture)
    np.testing.assert_allclose(v, (pi * q).sum(1), rtol=1e-10)


def test_occupancy_is_distribution_and_satisfies_bellman_flow(batch):
    mdps, thetas, features = batch
    pis = jax.vmap(T.softmax_policy)(thetas, features)
    d = jax.vmap(T.occupancy)(mdps, pis)
    np.testing.assert_allclose(d.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert float(d.min()) >= 0
    p_pi = jax.vmap(T.policy_transition)(mdps, pis)
    flow = (1 - mdps.discount)[:, None] * mdps.initial + mdps.discount[:, None] * jnp.einsum("bs,bst->bt", d, p_pi)
    np.testing.assert_allclose(flow, d, rtol=0, atol=1e-12)
    dsa = jax.vmap(T.state_action_occupancy)(mdps, pis)
    np.testing.assert_allclose(dsa.sum((-1, -2)), 1.0, rtol=0, atol=1e-12)
    # state-action Bellman flow: d(s,a) = (1-g) mu0(s) pi(a|s) + g sum_{s',a'} d(s',a') P(s|s',a') pi(a|s)
    inflow = jnp.einsum("bxy,bxys->bs", dsa, mdps.transition)
    rhs = ((1 - mdps.discount)[:, None] * mdps.initial + mdps.discount[:, None] * inflow)[..., None] * pis
    np.testing.assert_allclose(rhs, dsa, rtol=0, atol=1e-12)


def test_return_equals_occupancy_weighted_reward(batch):
    mdps, thetas, features = batch
    pis = jax.vmap(T.softmax_policy)(thetas, features)
    j = jax.vmap(T.expected_return)(mdps, pis)
    dsa = jax.vmap(T.state_action_occupancy)(mdps, pis)
    j_occ = (dsa * mdps.reward).sum((-1, -2)) / (1 - mdps.discount)
    np.testing.assert_allclose(j, j_occ, rtol=1e-10)


def test_occupancy_equals_discounted_sum_of_state_distributions(problem):
    """d^pi = (1-g) sum_t g^t mu0 (P^pi)^t, summed explicitly to convergence."""
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    p_pi = np.asarray(T.policy_transition(mdp, pi))
    mu, total, g = np.asarray(mdp.initial), np.zeros(S), float(mdp.discount)
    for t in range(400):
        total += (1 - g) * g**t * mu
        mu = mu @ p_pi
    np.testing.assert_allclose(T.occupancy(mdp, pi), total, rtol=0, atol=1e-12)


def test_fixed_point_equals_closed_form(batch):
    mdps, thetas, features = batch
    pis = jax.vmap(T.softmax_policy)(thetas, features)
    d_solve = jax.vmap(T.occupancy)(mdps, pis)
    d_fp, info = jax.jit(jax.vmap(T.occupancy_fixed_point))(mdps, pis)
    assert bool(info.converged.all())
    assert float(info.residual.max()) <= 1e-12
    np.testing.assert_allclose(d_fp, d_solve, rtol=0, atol=1e-10)
    # more iterations for larger discounts: the contraction rate is gamma
    assert int(info.iterations[-1]) > int(info.iterations[0])
    d_method = jax.vmap(lambda m, p: T.occupancy(m, p, method="fixed_point"))(mdps, pis)
    np.testing.assert_allclose(d_method, d_fp)


def test_fixed_point_iterations_follow_numpy(batch):
    """The same iteration in NumPy, d_0 = (1 - gamma) mu0 and the max-norm change as the stop: the same count and
    residual per MDP (a count from 1, a min-norm stop or another start change the count)."""
    mdps, thetas, features = batch
    pis = jax.vmap(T.softmax_policy)(thetas, features)
    d_fp, info = jax.jit(jax.vmap(T.occupancy_fixed_point))(mdps, pis)
    for i in range(len(mdps.discount)):
        p_pi = np.einsum("sa,sat->st", np.asarray(pis[i]), np.asarray(mdps.transition[i]))
        g, mu = float(mdps.discount[i]), np.asarray(mdps.initial[i])
        d, k, residual = (1 - g) * mu, 0, np.inf
        while residual > 1e-12:
            d_next = (1 - g) * mu + g * d @ p_pi
            d, k, residual = d_next, k + 1, np.abs(d_next - d).max()
        assert int(info.iterations[i]) == k
        assert float(info.residual[i]) == pytest.approx(residual, rel=1e-3)
        np.testing.assert_allclose(d_fp[i], d, rtol=0, atol=1e-14)


def test_fixed_point_reports_non_convergence(problem):
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    _, info = T.occupancy_fixed_point(mdp, pi, max_iterations=5)
    assert int(info.iterations) == 5 and not bool(info.converged)


def test_occupancy_iterates_contract_at_rate_gamma(problem):
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    iterates = T.occupancy_iterates(mdp, pi, 50)
    err = jnp.abs(iterates - T.occupancy(mdp, pi)).sum(-1)
    # d_k misses exactly the mass gamma^(k+1) of the later steps (an off-by-one would show here).
    np.testing.assert_allclose(err, mdp.discount ** jnp.arange(2, 52), rtol=1e-9, atol=1e-14)
    # From below: the mass is 1 - gamma^(k+1), every state's share grows (a start above d^pi has the same l1 errors).
    np.testing.assert_allclose(iterates.sum(-1), 1.0 - mdp.discount ** jnp.arange(2, 52), rtol=1e-12)
    assert np.all(np.diff(np.asarray(iterates), axis=0) >= 0.0)


def test_lecture_value_gradient_recursion(problem):
    """The lecture's Eq. (2): grad V(s) = sum_a pi(a|s) grad log pi(a|s) Q(s,a) + gamma sum_s' P^pi(s'|s) grad V(s'),
    and grad Q(s,a) = gamma sum_s' P(s'|s,a) grad V(s'), for the Jacobians of the exact V and Q (autodiff)."""
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    values = lambda th: T.policy_evaluation(mdp, T.softmax_policy(th, features))  # noqa: E731
    grad_v, grad_q = jax.jacobian(values)(theta)  # [S, D], [S, A, D]
    _, q = values(theta)
    score = T.grad_log_policy(theta, features)  # [S, A, D]
    recursion = jnp.einsum("sa,sad,sa->sd", pi, score, q) + mdp.discount * T.policy_transition(mdp, pi) @ grad_v
    np.testing.assert_allclose(grad_v, recursion, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_q, mdp.discount * jnp.einsum("sat,td->sad", mdp.transition, grad_v),
                               rtol=1e-10, atol=1e-12)


def test_unknown_occupancy_method(problem):
    mdp, theta, features = problem
    with pytest.raises(ValueError, match="method"):
        T.occupancy(mdp, T.softmax_policy(theta, features), method="magic")


# --- policies -------------------------------------------------------------------------------------


def test_score_matches_autodiff(batch):
    _, thetas, features = batch
    score = T.grad_log_policy(thetas[0], features[0])
    jac = jax.jacobian(T.log_policy)(thetas[0], features[0])
    np.testing.assert_allclose(score, jac, rtol=0, atol=1e-12)
    # E_pi[score] = 0 in every state
    pi = T.softmax_policy(thetas[0], features[0])
    np.testing.assert_allclose(jnp.einsum("sa,sad->sd", pi, score), 0.0, rtol=0, atol=1e-12)


def test_logistic_policy_is_softmax_special_case():
    x = jax.random.normal(jax.random.key(5), (7, 3))
    theta = jax.random.normal(jax.random.key(6), (3,))
    np.testing.assert_allclose(T.logistic_policy(theta, x), T.softmax_policy(theta, T.logistic_features(x)),
                               rtol=0, atol=1e-12)


def test_tabular_features_make_theta_the_logit_table():
    theta = jax.random.normal(jax.random.key(7), (S * A,))
    pi = T.softmax_policy(theta, T.tabular_features(S, A))
    np.testing.assert_allclose(pi, jax.nn.softmax(theta.reshape(S, A), -1), rtol=0, atol=1e-12)


# --- classic examples ------------------------------------------------------------------------------


def test_chain_rewards_the_far_sighted_policy():
    mdp = T.chain_mdp(num_states=5, discount=0.95)
    always_right = jnp.tile(jnp.array([0.0, 1.0]), (5, 1))
    always_left = jnp.tile(jnp.array([1.0, 0.0]), (5, 1))
    assert float(T.expected_return(mdp, always_right)) > float(T.expected_return(mdp, always_left)) > 0


def test_gradient_ascent_improves_gridworld():
    mdp = T.gridworld_mdp(3, 3, slip=0.1)
    features = T.tabular_features(9, 4)
    theta = jnp.zeros(36)
    step = jax.jit(lambda th: th + 5.0 * T.policy_gradient(mdp, th, features))
    j0 = float(T.objective(mdp, theta, features))
    for _ in range(200):
        theta = step(theta)
    j1 = float(T.objective(mdp, theta, features))
    optimum = _optimal_return(mdp)
    assert j0 < j1 <= optimum + 1e-9
    assert j1 > j0 + 0.8 * (optimum - j0)


def _optimal_return(mdp):
    """J* = mu0 . max_a Q*: an independent upper bound on J."""
    return float(np.asarray(mdp.initial) @ value_iteration_q(mdp).max(1))


# --- optimal control ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def solved(x64):
    """Policy iteration over 16 random MDPs (S = 6, A = 3, discounts 0.5-0.98) in one vmapped call."""
    keys = jax.random.split(jax.random.key(21), 16)
    discounts = jnp.linspace(0.5, 0.98, 16)
    mdps = jax.vmap(lambda k, g: T.random_mdp(k, S, A, discount=g, concentration=0.3))(keys, discounts)
    return mdps, jax.jit(jax.vmap(T.policy_iteration))(mdps)


def _mdp_at(mdps, i):
    return jax.tree_util.tree_map(lambda x: x[i], mdps)


def test_policy_iteration_matches_numpy_value_iteration(solved):
    mdps, sol = solved
    assert bool(jnp.all(sol.converged)) and int(jnp.max(sol.iterations)) < 20
    for i in range(16):
        q_ref = value_iteration_q(_mdp_at(mdps, i))
        np.testing.assert_allclose(sol.action_values[i], q_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(sol.values[i], q_ref.max(1), rtol=1e-9, atol=1e-9)


def test_optimal_values_satisfy_bellman_optimality_and_bound_every_policy(solved):
    mdps, sol = solved
    # V* = max_a Q*, and the greedy one-hot policy attains it (V^{pi*} = V*, J(pi*) = J*).
    np.testing.assert_allclose(sol.values, sol.action_values.max(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(sol.policy * sol.action_values, -1), sol.values, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(sol.policy.sum(-1), 1.0)
    j_star = jax.vmap(T.optimal_return)(mdps)
    np.testing.assert_allclose(j_star, jax.vmap(T.expected_return)(mdps, sol.policy), rtol=1e-12)
    # J* >= J(pi) for 256 random softmax policies per MDP, with near-greedy ones among them.
    logits = jax.random.normal(jax.random.key(22), (256, S, A)) * jnp.linspace(0.1, 30.0, 256)[:, None, None]
    policies = jax.nn.softmax(logits, -1)
    j = jax.vmap(lambda m: jax.vmap(lambda p: T.expected_return(m, p))(policies))(mdps)
    assert bool(jnp.all(j <= j_star[:, None] + 1e-10))


def test_policy_iteration_closed_forms(solved):
    # One state (a bandit): V* = max_a R / (1 - gamma).
    bandit = T.MDP(jnp.ones((1, 3, 1)), jnp.array([[0.2, 0.7, 0.5]]), jnp.ones(1), 0.9)
    sol = T.policy_iteration(bandit)
    np.testing.assert_allclose(sol.values, [7.0], rtol=1e-12)
    np.testing.assert_array_equal(sol.policy, [[0.0, 1.0, 0.0]])
    # Chain: "right" pays 1 at the last state, "left" 0.005 at the first; swimming right is optimal everywhere,
    # although the start (greedy in the reward) goes left in the first 7 states: 7 improvements and a check.
    chain = T.chain_mdp(num_states=8, discount=0.95)
    sol = T.policy_iteration(chain)
    np.testing.assert_array_equal(np.argmax(np.asarray(sol.policy), -1), np.ones(8))
    assert int(sol.iterations) == 8 and bool(sol.converged)
    np.testing.assert_allclose(T.optimal_return(chain), _optimal_return(chain), rtol=1e-9)
    grid = T.gridworld_mdp(4, 4, slip=0.1)
    np.testing.assert_allclose(T.policy_iteration(grid).action_values, value_iteration_q(grid), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="max_iterations must be a positive int"):
        T.policy_iteration(chain, max_iterations=0)
    with pytest.raises(ValueError, match="use jax.vmap"):
        T.policy_iteration(solved[0])
    capped = T.policy_iteration(chain, max_iterations=1)
    assert int(capped.iterations) == 1 and not bool(capped.converged)


# --- jit / vmap -------------------------------------------------------------------------------------


def test_vmap_equals_python_loop(batch):
    mdps, thetas, features = batch
    batched = jax.jit(jax.vmap(T.policy_gradient))(mdps, thetas, features)
    for i in range(4):
        mdp_i = jax.tree_util.tree_map(lambda x: x[i], mdps)
        np.testing.assert_allclose(batched[i], T.policy_gradient(mdp_i, thetas[i], features[i]), rtol=1e-10, atol=1e-13)


def test_random_mdp_jit_and_vmap_are_reproducible():
    make = jax.jit(T.random_mdp, static_argnums=(1, 2))
    a = make(jax.random.key(11), 4, 2)
    b = T.random_mdp(jax.random.key(11), 4, 2)
    np.testing.assert_allclose(a.transition, b.transition)
    keys = jax.random.split(jax.random.key(12), 3)
    batched = jax.vmap(T.random_mdp, in_axes=(0, None, None))(keys, 4, 2)
    assert batched.transition.shape == (3, 4, 2, 4) and batched.batch_shape == (3,)
    single = T.random_mdp(keys[1], 4, 2)
    np.testing.assert_allclose(batched.transition[1], single.transition)


def test_batched_mdp_from_concrete_arrays_validates():
    mdps = jax.vmap(T.random_mdp, in_axes=(0, None, None))(jax.random.split(jax.random.key(0), 2), 3, 2)
    T.MDP(mdps.transition, mdps.reward, mdps.initial, mdps.discount)  # valid batch passes
    with pytest.raises(ValueError, match="MDP.discount"):
        T.MDP(mdps.transition, mdps.reward, mdps.initial, jnp.array([0.9, 1.0]))


# --- validation ---------------------------------------------------------------------------------------


def _valid_arrays():
    P = np.full((2, 2, 2), 0.5)
    R = np.zeros((2, 2))
    mu0 = np.array([1.0, 0.0])
    return P, R, mu0, 0.9


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda P, R, mu, g: (P[:, :, :1], R, mu, g), r"MDP.transition must have shape \[S, A, S\] with the same S"),
        (lambda P, R, mu, g: (P[0], R, mu, g), r"MDP.transition must have shape"),
        (lambda P, R, mu, g: (P, R[:, :1], mu, g), r"MDP.reward must have shape \(2, 2\)"),
        (lambda P, R, mu, g: (P, R, np.ones(3) / 3, g), r"MDP.initial must have shape \(2,\)"),
        (lambda P, R, mu, g: (P * 0.9, R, mu, g), r"MDP.transition rows must sum to 1"),
        (lambda P, R, mu, g: (P, R, np.array([0.7, 0.2]), g), r"MDP.initial must sum to 1"),
        (lambda P, R, mu, g: (np.stack([P[0], np.array([[1.5, -0.5], [0.5, 0.5]])]), R, mu, g),
         r"MDP.transition has negative"),
        (lambda P, R, mu, g: (P, R, np.array([1.5, -0.5]), g), r"MDP.initial has negative"),
        (lambda P, R, mu, g: (P, R, mu, 1.0), r"MDP.discount must lie strictly in \(0, 1\)"),
        (lambda P, R, mu, g: (P, R, mu, 0.0), r"MDP.discount must lie strictly in \(0, 1\)"),
        (lambda P, R, mu, g: (P, np.array([[0.0, np.nan], [0.0, 0.0]]), mu, g), r"MDP.reward contains NaN or inf"),
        (lambda P, R, mu, g: (P, R, mu, np.inf), r"MDP.discount contains NaN or inf"),
        (lambda P, R, mu, g: (P, R, mu, [0.9, 0.9]), r"MDP.discount must have shape \(\)"),
        (lambda P, R, mu, g: (P, R, mu, "0.9"), r"MDP.discount"),
    ],
)
def test_validation_errors_name_the_field(mutate, match):
    with pytest.raises(ValueError, match=match):
        T.MDP(*mutate(*_valid_arrays()))


def test_a_discount_that_rounds_to_one_in_float32_says_so():
    """1 - 1e-11 is valid in float64 and 1.0 in float32: the refusal says it was rounded, instead of a bare "got 1.0"
    for a value that was not given; a discount given as 1.0 gets the plain message."""
    P, R, mu, _ = _valid_arrays()
    assert float(T.MDP(P, R, mu, 1 - 1e-11).discount) == 1 - 1e-11
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"^MDP.discount 0.99999999999 rounds to 1.0 in float32: use a smaller"):
            T.MDP(P, R, mu, 1 - 1e-11)
        with pytest.raises(ValueError, match=r"^MDP.discount 0.99999999999 rounds to 1.0 in float32"):
            T.random_mdp(jax.random.key(0), 3, 2, discount=1 - 1e-11)
        with pytest.raises(ValueError, match=r"^MDP.discount must lie strictly in \(0, 1\); got 1.0.$"):
            T.MDP(P, R, mu, 1.0)
        batch = [np.stack([x, x]) for x in (P, R, mu)]  # one of two discounts rounded is enough
        with pytest.raises(ValueError, match=r"^MDP.discount \[0.99999999999\] \(at flat index \[1\] of 2\) rounds to "
                                             r"1.0 in float32"):
            T.MDP(*batch, np.array([0.9, 1 - 1e-11]))


def test_batch_errors_name_the_failing_element():
    mdps = jax.vmap(T.random_mdp, in_axes=(0, None, None))(jax.random.split(jax.random.key(0), 3), 3, 2)
    initial = np.asarray(mdps.initial).copy()
    initial[1] *= 1.5
    with pytest.raises(ValueError, match=r"MDP.initial must sum to 1; in batch element \(1,\) it sums to 1.5"):
        T.MDP(mdps.transition, mdps.reward, initial, mdps.discount)
    transition = np.asarray(mdps.transition).copy()
    transition[2, 1, 0] *= 0.5
    with pytest.raises(ValueError, match=r"row \(s, a\) = \(1, 0\) in batch element \(2,\) sums to"):
        T.MDP(transition, mdps.reward, mdps.initial, mdps.discount)


def test_bfloat16_mdps_and_policies_are_accepted_at_their_precision():
    """Rows of bfloat16 probabilities sum to 1 only to bfloat16's precision (eps 2^-7): the tolerance scales with
    the dtype's eps (numpy's issubdtype does not count ml_dtypes' bfloat16 as floating, which left 1e-6)."""
    mdp = T.random_mdp(jax.random.key(0), 4, 3, 0.9, dtype=jnp.bfloat16)
    assert mdp.transition.dtype == jnp.bfloat16
    values, _ = T.policy_evaluation(T.random_mdp(jax.random.key(0), 4, 3, 0.9), jnp.full((4, 3), 1 / 3, jnp.bfloat16))
    assert np.all(np.isfinite(np.asarray(values, np.float32)))
    with pytest.raises(ValueError, match="rows must sum to 1"):  # still refused when off by more than rounding
        T.policy_evaluation(mdp, jnp.full((4, 3), 0.4, jnp.bfloat16))
    big = T.random_mdp(jax.random.key(1), 64, 2, 0.9)
    with pytest.raises(ValueError, match="MDP.transition rows must sum to 1"):  # rows of 1.4: let through at S = 64
        T.MDP(jnp.asarray(big.transition * 1.4, jnp.bfloat16), big.reward, big.initial, big.discount)


def test_valid_mdp_and_tracing_are_not_blocked():
    T.MDP(*_valid_arrays())

    @jax.jit
    def build_and_use(P):  # P is a tracer: construction inside jit must not validate or fail
        mdp = T.MDP(P, jnp.zeros((2, 2)), jnp.array([1.0, 0.0]), 0.9)
        return T.expected_return(mdp, jnp.full((2, 2), 0.5))

    assert jnp.isfinite(build_and_use(jnp.full((2, 2, 2), 0.5)))


@pytest.mark.parametrize("pi, match", [
    (np.array([[0.3, 1.2], [0.0, 0.0]]), "rows must sum to 1"),        # logits-like weights
    (np.ones((2, 2)), "rows must sum to 1.*off by 1"),                  # unnormalised
    (np.array([[1.5, -0.5], [0.5, 0.5]]), "finite and non-negative"),   # sums to 1 but not a distribution
    (np.full((2, 2), np.nan), "finite and non-negative"),
    (np.array([[0.5, np.nan], [0.5, 0.5]]), "finite and non-negative"),  # one NaN: its row's sum is NaN too
    (np.full((1, 2), 0.5), r"pi must have shape \[S, A\] = \(2, 2\).*got shape \(1, 2\)"),  # would broadcast
])
def test_exact_evaluations_reject_what_is_not_a_policy(pi, match):
    """V, Q, J, d^pi and J_H of something that is not a policy would be numbers of no policy: every exact evaluation
    (they all go through policy_transition / policy_reward) raises instead."""
    mdp = T.MDP(*_valid_arrays())
    for evaluate in (T.policy_evaluation, T.expected_return, T.occupancy, lambda m, p: T.finite_horizon_return(m, p, 3),
                     T.values_and_occupancy, T.occupancy_fixed_point, lambda m, p: T.occupancy_iterates(m, p, 3)):
        with pytest.raises(ValueError, match=match):
            evaluate(mdp, jnp.asarray(pi))
    with pytest.raises(ValueError, match="horizon must be an int >= 0"):
        T.finite_horizon_return(mdp, jnp.full((2, 2), 0.5), -1)


def test_constructor_argument_errors():
    with pytest.raises(ValueError, match="discount"):
        T.random_mdp(jax.random.key(0), 3, 2, discount=1.5)
    with pytest.raises(ValueError, match="num_states"):
        T.chain_mdp(num_states=1)
    with pytest.raises(ValueError, match="slip"):
        T.gridworld_mdp(slip=2.0)


# --- property-based ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _property_values(num_states, num_actions, dim, key, discount, concentration):
    k1, k2, k3 = jax.random.split(key, 3)
    mdp = T.random_mdp(k1, num_states, num_actions, discount=discount, concentration=concentration)
    features = jax.random.normal(k2, (num_states, num_actions, dim))
    theta = jax.random.normal(k3, (dim,))
    pi = T.softmax_policy(theta, features)
    v, _ = T.policy_evaluation(mdp, pi)
    g = T.policy_gradient(mdp, theta, features)
    g_auto = jax.grad(T.objective, argnums=1)(mdp, theta, features)
    return pi, T.occupancy(mdp, pi), v, g, g_auto


# Fixed draws (derandomize, no example database): deterministic. Each new shape compiles (~3 s).
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(
    num_states=st.sampled_from([1, 2, 5, 8]),
    num_actions=st.sampled_from([1, 2, 4]),
    dim=st.sampled_from([1, 3]),
    discount=st.floats(0.05, 0.97),
    concentration=st.sampled_from([0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_properties_over_random_shapes(num_states, num_actions, dim, discount, concentration, seed):
    with jax.enable_x64(True):
        pi, d, v, g, g_auto = _property_values(num_states, num_actions, dim, jax.random.key(seed), discount,
                                               concentration)
        np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(d.sum(), 1.0, rtol=0, atol=1e-10)
        assert float(d.min()) > -1e-12
        assert float(v.max()) <= 1.0 / (1.0 - discount) + 1e-8 and float(v.min()) >= -1e-10  # rewards in [0, 1]
        np.testing.assert_allclose(g, g_auto, rtol=1e-7, atol=1e-9)


def test_arguments_that_would_be_ignored_are_refused():
    mdp = T.MDP(*_valid_arrays())
    with pytest.raises(ValueError, match=r"\['tol'\] apply to method='fixed_point' only"):  # was ignored
        T.occupancy(mdp, jnp.full((2, 2), 0.5), "solve", tol=1.0)
    P, R, mu, g = _valid_arrays()
    with pytest.raises(ValueError, match="MDP.reward must be real; got complex"):  # lost its imaginary part
        T.MDP(P, R + 1j, mu, g)



def test_batched_mdps_and_mismatched_parameters_are_named():
    """A batch of MDPs passed without vmap, and theta of another length than the features, failed inside einsum
    ("Size of label 'd' ..."), naming no argument."""
    mdps = jax.vmap(lambda k: T.random_mdp(k, 3, 2))(jax.random.split(jax.random.key(0), 4))
    with pytest.raises(ValueError, match=r"take one MDP; got a batch of shape \(4,\): jax.vmap"):
        T.expected_return(mdps, jnp.full((3, 2), 0.5))
    np.testing.assert_allclose(jax.vmap(T.expected_return, (0, None))(mdps, jnp.full((3, 2), 0.5)),
                               [T.expected_return(jax.tree_util.tree_map(lambda x: x[i], mdps), jnp.full((3, 2), 0.5))
                                for i in range(4)], rtol=1e-6)
    features = T.tabular_features(3, 2)
    with pytest.raises(ValueError, match=r"theta must have shape \[D\] .*got theta \(5,\) and features \(3, 2, 6\)"):
        T.softmax_policy(jnp.zeros(5), features)


def _twin_action_mdp(seed):
    """Two copies of a random float32 3-state MDP; each action has a twin that jumps to the other copy, so the
    twins' Q values are equal in exact arithmetic and only float32 rounding tells them apart."""
    base = T.random_mdp(jax.random.key(seed), 3, 2, discount=0.99, dtype=jnp.float32)
    P, R = np.asarray(base.transition), np.asarray(base.reward)
    P2, R2 = np.zeros((6, 4, 6), np.float32), np.zeros((6, 4), np.float32)
    for c in range(2):
        here, there = slice(3 * c, 3 * c + 3), slice(3 * (1 - c), 3 * (1 - c) + 3)
        P2[here, :2, here], P2[here, 2:, there] = P, P
        R2[here, :2], R2[here, 2:] = R, R
    return T.MDP(jnp.asarray(P2), jnp.asarray(R2), jnp.full(6, 1 / 6, jnp.float32), jnp.float32(0.99))


def test_policy_iteration_converges_when_actions_tie_up_to_rounding():
    """Switching only on improvements beyond the rounding of Q: strict > alone cycled between twin actions. Which of
    these 200 MDPs cycle depends on the compiler's rounding (one at a time: seed 18 under XLA's defaults, seeds 52,
    62, 69, 130 and 166 under the suite's flags), but some did, vmapped or not, and ran their 50 iterations to
    converged=False."""
    with jax.enable_x64(False):  # float32 throughout, as the MDPs were drawn without x64
        mdps = jax.tree.map(lambda *x: jnp.stack(x), *[_twin_action_mdp(seed) for seed in range(200)])
        solutions = jax.jit(jax.vmap(lambda m: T.policy_iteration(m, max_iterations=50)))(mdps)
        np.testing.assert_array_equal(solutions.converged, True)
        assert int(solutions.iterations.max()) < 50


def test_fixed_point_with_tol_zero_converges_exactly(problem):
    """The stop is residual <= tol: with tol = 0 the float64 iteration reaches a residual of exactly 0 and says so."""
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    d, info = T.occupancy_fixed_point(mdp, pi, tol=0.0)
    assert float(info.residual) == 0.0 and bool(info.converged)
    np.testing.assert_allclose(d, T.occupancy(mdp, pi), rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype, offset, refused", [(np.float64, 5e-3, True), (np.float64, 5e-5, True),
                                                     (np.float32, 1e-7, False)])
def test_policy_rows_off_by_more_than_rounding_are_refused(problem, dtype, offset, refused):
    """A row summing to 1.005 (or 1.00005) is no policy: refused; float32 rounding (1e-7) is accepted."""
    mdp = problem[0]
    pi = np.full((S, A), 1.0 / A, dtype)
    pi[0, 1] += offset
    if refused:
        with pytest.raises(ValueError, match="rows must sum to 1"):
            T.expected_return(mdp, jnp.asarray(pi))
    else:
        assert np.isfinite(float(T.expected_return(mdp, jnp.asarray(pi))))


def test_policy_iteration_cap_must_be_a_positive_int(problem):
    with pytest.raises(ValueError, match="max_iterations must be a positive int"):
        T.policy_iteration(problem[0], max_iterations=True)  # was a cap of 1
    assert bool(T.policy_iteration(problem[0], max_iterations=np.int64(100)).converged)  # was refused
    pi = T.uniform_policy(S, A)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="occupancy_iterates: num_iterations must be an int >= 0"):
            T.occupancy_iterates(problem[0], pi, bad)
        with pytest.raises(ValueError, match="occupancy_fixed_point: max_iterations must be a positive int"):
            T.occupancy_fixed_point(problem[0], pi, max_iterations=bad)  # True was a cap of 1
    assert T.occupancy_iterates(problem[0], pi, np.int64(3)).shape == (3, S)


def test_iterative_solvers_compile_once_per_shape(problem):
    """Policy iteration, the occupancy fixed point and iterates and the finite-horizon return take the MDP (and pi,
    tol, the cap) as arguments: a new MDP of the same shapes reuses the program (their loops, run op by op, closed
    over the MDP and compiled each time) and gets its own answer, the closed form's."""
    mdp, theta, features = problem
    pi = T.softmax_policy(theta, features)
    T.optimal_return(mdp), T.occupancy_fixed_point(mdp, pi)
    T.occupancy_iterates(mdp, pi, 400), T.finite_horizon_return(mdp, pi, 400)
    other = T.random_mdp(jax.random.key(5), S, A, discount=0.8)
    other_pi = T.softmax_policy(-theta, features)
    with compile_count.compiles() as compiled:
        solution = T.policy_iteration(other, max_iterations=50)
        j_star = T.optimal_return(other)
        d, info = T.occupancy_fixed_point(other, other_pi, tol=1e-13, max_iterations=5000)
        iterates = T.occupancy_iterates(other, other_pi, 400)
        j_400 = T.finite_horizon_return(other, other_pi, 400)
    assert compiled == [], f"{len(compiled)} programs compiled again"
    np.testing.assert_allclose(np.asarray(iterates[-1]), np.asarray(d), rtol=0, atol=1e-11)  # 0.8^401: converged
    np.testing.assert_allclose(float(j_400), float(T.expected_return(other, other_pi)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(solution.values), np.asarray(T.state_values(other, solution.policy)),
                               rtol=1e-10)
    np.testing.assert_allclose(float(j_star), float(other.initial @ solution.values), rtol=1e-12)
    assert bool(info.converged)
    np.testing.assert_allclose(np.asarray(d), np.asarray(T.occupancy_solve(other, other_pi)), rtol=0, atol=1e-11)


def _one_row_mdp(row, dtype):
    """An MDP of S = len(row) states and one action, every transition row `row` (of `dtype`)."""
    s = len(row)
    transition = jnp.broadcast_to(jnp.asarray(row, dtype), (s, 1, s))
    initial = jnp.zeros(s, dtype).at[0].set(1)
    return T.MDP(transition, jnp.zeros((s, 1), dtype), initial, jnp.asarray(0.9, dtype))


def test_mdp_and_generator_edges_accepted_and_refused():
    """The sum tolerance per dtype: float32 max(1e-6, 8 sqrt(S) eps) (a row off by 7.2e-7 passes, and by 5e-6 at
    S = 100), float64 1e-6 (1.5e-6 refused), bfloat16 4 eps (a row of 1.039 refused), ints exactly (rows of 2
    refused); the smallest MDP (S = A = 1), a 2-state chain and a 1 x 2 grid; the generators' bounds."""
    _one_row_mdp([1.0 + 7.2e-7], jnp.float32)
    _one_row_mdp([1.0 + 5e-6] + [0.0] * 99, jnp.float32)
    _one_row_mdp([1.0 + 5e-7], jnp.float64)
    for row, dtype in (([1.0 + 1.5e-6], jnp.float64), ([0.52, 0.52], jnp.bfloat16), ([2, 0], jnp.int32),
                       ([1.0 + 1.2e-6], jnp.float32), ([1.0 + 1.5e-5] + [0.0] * 99, jnp.float32)):
        with pytest.raises(ValueError, match="rows must sum to 1"):
            _one_row_mdp(row, dtype)
    one = T.MDP(jnp.ones((1, 1, 1)), jnp.zeros((1, 1)), jnp.ones(1), jnp.asarray(0.5))
    assert (one.num_states, one.num_actions) == (1, 1)
    for shape in ((0, 2, 0), (2, 0, 2)):
        with pytest.raises(ValueError, match="at least one state and one action"):
            T.MDP(jnp.zeros(shape), jnp.zeros(shape[:2]), jnp.zeros(shape[0]), jnp.asarray(0.5))
    with pytest.raises(AttributeError):  # frozen: a field assigned in place would skip the validation
        one.discount = jnp.asarray(2.0)
    # Batched: num_actions from the last axis (S = 3, A = 2), and one bad discount of two is refused.
    batched = jax.tree_util.tree_map(lambda *x: jnp.stack(x), T.chain_mdp(3), T.chain_mdp(3))
    assert (batched.num_states, batched.num_actions, batched.batch_shape) == (3, 2, (2,))
    with pytest.raises(ValueError, match="discount"):
        T.MDP(batched.transition, batched.reward, batched.initial, jnp.array([0.9, 1.0]))
    # Generators: a 2-state chain starting at state 0, slip 0 and 1; a 1 x 2 grid; gridworld slip 0; bounds.
    chain = T.chain_mdp(num_states=2, slip=0.0)
    np.testing.assert_array_equal(np.asarray(chain.initial), [1.0, 0.0])
    assert T.gridworld_mdp(height=1, width=2, slip=0.0).num_states == 2
    assert T.gridworld_mdp(height=2, width=1, slip=1.0).num_states == 2
    # The errors name the row, and the batch element, farthest from summing to 1.
    rows = jnp.tile(jnp.eye(3)[:, None], (1, 2, 1)).at[1, 0].set(jnp.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"row \(s, a\) = \(1, 0\) sums to 1.5"):
        T.MDP(rows, jnp.zeros((3, 2)), jnp.ones(3) / 3, jnp.asarray(0.5))
    initials = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"MDP.initial must sum to 1; in batch element \(1,\) it sums to 0.5"):
        T.MDP(jnp.stack([jnp.eye(3)[:, None]] * 2), jnp.zeros((2, 3, 1)), initials, jnp.array([0.5, 0.5]))
    for build, match in ((lambda: T.chain_mdp(slip=1.0), "slip must lie in \\[0, 1\\)"),
                         (lambda: T.gridworld_mdp(height=0, width=5), "need at least 2 cells"),
                         (lambda: T.gridworld_mdp(height=1, width=1), "need at least 2 cells"),
                         (lambda: T.random_mdp(jax.random.key(0), 2, 2, discount=0.0), "random_mdp: discount"),
                         (lambda: T.random_mdp(jax.random.key(0), 2, 2, discount=1.0), "random_mdp: discount"),
                         (lambda: T.random_mdp(jax.random.key(0), 2, 2, concentration=0.0), "concentration")):
        with pytest.raises(ValueError, match=match):
            build()


def test_random_mdp_rows_are_dirichlet_of_their_concentration_and_zero_rows_become_uniform():
    # Var p_i = (S - 1) / (S^2 (S alpha + 1)) for Dirichlet(alpha, ..., alpha) over S = 4 states: 0.0375 at alpha 1,
    # 0.0208 at 2, over 4 x 500 rows (the standard error of the estimate is ~2%).
    for alpha in (1.0, 2.0):
        p = np.asarray(T.random_mdp(jax.random.key(0), 4, 500, concentration=alpha).transition)
        np.testing.assert_allclose(p.var(), 3 / (16 * (4 * alpha + 1)), rtol=0.08)
    # Rows are normalised; a row of zeros (a Dirichlet draw that underflowed) becomes uniform.
    rows = jnp.array([[1.0, 3.0, 0.0], [0.25, 0.25, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(T.mdp._normalise_rows(rows)),
                               [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(T.mdp._normalise_rows(jnp.zeros((1, 2, 3)))), 1 / 3, rtol=1e-12)  # 1/S


def test_chain_and_gridworld_transitions_written_out():
    """Every transition of a 3-state chain (slip 0.3) and a 2 x 3 grid (slip 0.2), written out by hand."""
    chain = T.chain_mdp(num_states=3, slip=0.3, left_reward=0.5, right_reward=2.0)
    left = [[1, 0, 0], [1, 0, 0], [0, 1, 0]]  # back one state, stopping at 0
    right = [[0.15 + 0.15, 0.7, 0], [0.15, 0.15, 0.7], [0, 0.15, 0.15 + 0.7]]  # 1 - slip on, slip / 2 stay, back
    np.testing.assert_allclose(np.asarray(chain.transition), np.stack([left, right], axis=1), atol=1e-12)
    np.testing.assert_array_equal(np.asarray(chain.reward), [[0.5, 0.0], [0.0, 0.0], [0.0, 2.0]])
    # Cells 0 1 2 / 3 4 5, actions (up, right, down, left), the goal 5 sends every action to the start 0.
    grid = T.gridworld_mdp(height=2, width=3, slip=0.2, goal_reward=3.0, step_reward=-0.5)
    targets = {0: (0, 1, 3, 0), 1: (1, 2, 4, 0), 2: (2, 2, 5, 1), 3: (0, 4, 3, 3), 4: (1, 5, 4, 3)}
    expected = np.zeros((6, 4, 6))
    for s, cells in targets.items():
        for a in range(4):
            expected[s, a, cells[a]] += 0.8
            for d in range(4):
                expected[s, a, cells[d]] += 0.05
    expected[5, :, 0] = 1.0
    np.testing.assert_allclose(np.asarray(grid.transition), expected, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(grid.reward), [[-0.5] * 4] * 5 + [[3.0] * 4])
    np.testing.assert_array_equal(np.asarray(grid.initial), [1, 0, 0, 0, 0, 0])
