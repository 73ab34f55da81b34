"""TRPO pieces: CG against np.linalg.solve, Fisher-vector products against an explicit Fisher, the
natural step's KL scaling, and the line search's KL and improvement checks (float64)."""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pgjax import trust_region as tr
from pgjax.distributions import Categorical, DiagGaussian
from pgjax.nets import Actor

pytestmark = pytest.mark.usefixtures("x64")

N_OBS, OBS_DIM, K = 6, 2, 3


def random_spd(rng, n):
    m = rng.normal(size=(n, n))
    return m @ m.T + n * np.eye(n)


# ---------------------------------------------------------------------------
# Conjugate gradient.
# ---------------------------------------------------------------------------


def test_cg_solves_random_spd_systems_jit_and_vmap(x64):
    rng = np.random.default_rng(0)
    n = 6
    mats = np.stack([random_spd(rng, n) for _ in range(4)])
    rhs = rng.normal(size=(4, n))
    solve = jax.jit(jax.vmap(lambda a, b: tr.conjugate_gradient(lambda v: a @ v, b, num_iterations=n)))
    x = solve(mats, rhs)
    for i in range(4):
        np.testing.assert_allclose(x[i], np.linalg.solve(mats[i], rhs[i]), rtol=1e-8, atol=1e-10)


def test_cg_on_pytrees_and_iteration_count(x64):
    """A dict right-hand side gives the flat solution; one iteration is the steepest-descent step."""
    rng = np.random.default_rng(1)
    a = random_spd(rng, 6)
    b = rng.normal(size=6)
    tree_b = {"w": jnp.asarray(b[:4].reshape(2, 2)), "c": jnp.asarray(b[4:])}
    _, unravel = ravel_pytree(tree_b)
    flat_b = ravel_pytree(tree_b)[0]
    matvec = lambda t: unravel(jnp.asarray(a) @ ravel_pytree(t)[0])
    x = tr.conjugate_gradient(matvec, tree_b, num_iterations=6)
    np.testing.assert_allclose(ravel_pytree(x)[0], np.linalg.solve(a, flat_b), rtol=1e-8)
    one = tr.conjugate_gradient(lambda v: a @ v, b, num_iterations=1)
    np.testing.assert_allclose(one, (b @ b) / (b @ a @ b) * b, rtol=1e-12)
    assert not np.allclose(one, np.linalg.solve(a, b), rtol=1e-3)


def test_cg_stops_on_residual(x64):
    x = tr.conjugate_gradient(lambda v: 2.0 * v, jnp.zeros(3))
    np.testing.assert_array_equal(x, 0.0)  # no 0/0
    x = tr.conjugate_gradient(lambda v: 2.0 * v, jnp.ones(3), num_iterations=50)
    np.testing.assert_allclose(x, 0.5, rtol=1e-12)  # converged after one step, then stopped


def test_cg_never_returns_nan(x64):
    """A breakdown (p^T A p = 0 or < 0: a singular or indefinite F, e.g. cg_damping = 0) stops CG with the iterate so
    far, and natural_gradient_step then takes a zero step (both were NaN); an exact solve with residual_tol = 0 stops
    instead of dividing 0 by 0. With a healthy F the step is CG's own (the guard changes no rounding: TRPO runs are
    unchanged bit for bit) and scale-free down to the absolute tolerance's |g|^2 > 1e-10."""
    identity = lambda v: v  # noqa: E731
    np.testing.assert_array_equal(tr.conjugate_gradient(identity, jnp.ones(2), residual_tol=0.0), 1.0)
    np.testing.assert_array_equal(tr.conjugate_gradient(identity, jnp.zeros(2), residual_tol=0.0), 0.0)
    for matrix in (jnp.diag(jnp.array([1.0, -1.0])), jnp.diag(jnp.array([0.0, 0.0]))):
        fvp = lambda v, m=matrix: m @ v  # noqa: E731
        x = tr.conjugate_gradient(fvp, jnp.array([0.0, 1.0]))
        assert np.all(np.isfinite(np.asarray(x)))
        step, improve = tr.natural_gradient_step(jnp.array([0.0, 1.0]), fvp, 0.01)
        np.testing.assert_array_equal(step, 0.0)
        assert float(improve) == 0.0
    a = jax.random.normal(jax.random.key(4), (3, 3))
    fisher = a @ a.T + 0.1 * jnp.eye(3)
    g = jnp.array([0.3, -0.7, 0.5])
    exact = jnp.linalg.solve(fisher, g)
    exact = exact * jnp.sqrt(2 * 0.01 / (exact @ fisher @ exact))
    # At 1e-3 the absolute tolerance may end CG an iteration early (r^T r < 1e-10 after 2 of 3 at key offset 76,
    # a step 1.6% off): the scale-freeness is checked with it at 0, CG's 3 iterations exact.
    for scale, tol in ((1.0, 1e-10), (1e-3, 0.0)):
        step, _ = tr.natural_gradient_step(g * scale, lambda v: fisher @ v, 0.01, num_iterations=3, residual_tol=tol)
        np.testing.assert_allclose(step, exact, rtol=1e-6)
    step, _ = tr.natural_gradient_step(g * 1e-6, lambda v: fisher @ v, 0.01)  # |g|^2 < residual_tol: documented 0
    np.testing.assert_array_equal(step, 0.0)


# ---------------------------------------------------------------------------
# Fisher-vector products on a tiny network.
# ---------------------------------------------------------------------------


class Policy(NamedTuple):
    discrete: bool
    dist_fn: Callable  # params -> distribution over the N_OBS fixed observations
    params: dict
    flat: jax.Array
    unravel: Callable
    hessian: jax.Array  # [D, D] Hessian of the mean KL at params, formed explicitly (what FVPs avoid)


@functools.cache
def make_policy(discrete):
    actor = Actor(action_dim=K if discrete else 2, discrete=discrete, hidden_sizes=(4,))
    obs = jax.random.normal(jax.random.key(0), (N_OBS, OBS_DIM))
    params = actor.init(jax.random.key(1), obs)
    # Larger-than-default head weights and a non-zero log-std: a non-trivial Fisher.
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) + 0.3, params)
    flat, unravel = ravel_pytree(params)
    dist_fn = lambda p: actor.apply(p, obs)
    kl_fn = tr.policy_kl_fn(dist_fn, params)
    hessian = jax.jit(jax.hessian(lambda f: kl_fn(unravel(f))))(flat)
    return Policy(discrete, dist_fn, params, flat, unravel, hessian)


@pytest.fixture(scope="module", params=["categorical", "gaussian"])
def policy(request, x64):
    return make_policy(request.param == "categorical")


@pytest.fixture(scope="module")
def categorical_policy(x64):
    return make_policy(True)


def test_fvp_equals_explicit_fisher_times_vector(policy):
    _, dist_fn, params, flat, unravel, hessian = policy
    v = jax.random.normal(jax.random.key(2), flat.shape)
    damping = 0.1

    @jax.jit
    def products(p, vec):
        from_old = tr.fisher_vector_product(tr.policy_kl_fn(dist_fn, p), p, vec, damping)
        # The "self-KL" form kl(sg(pi_p) || pi_p) gives the same product.
        self_kl = lambda q: jnp.mean(jax.lax.stop_gradient(dist_fn(q)).kl(dist_fn(q)))
        return from_old, tr.fisher_vector_product(self_kl, p, vec, damping)

    from_old, from_self = products(params, unravel(v))
    np.testing.assert_allclose(ravel_pytree(from_old)[0], hessian @ v + damping * v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ravel_pytree(from_self)[0], hessian @ v + damping * v, rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(hessian @ v) > 1e-3  # the test is not vacuous


def test_kl_hessian_is_the_fisher_information(categorical_policy):
    """Hessian of KL(pi_old || pi_theta) at theta_old == mean_s sum_a pi(a|s) score score^T."""
    _, dist_fn, _, flat, unravel, hessian = categorical_policy

    @jax.jit
    def fisher(f):
        probs = dist_fn(unravel(f)).probs  # [N, K]
        scores = jax.jacobian(lambda g: dist_fn(unravel(g)).log_probs)(f)  # [N, K, D]
        return jnp.einsum("nk,nkd,nke->de", probs, scores, scores) / N_OBS

    np.testing.assert_allclose(hessian, fisher(flat), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# Natural gradient step and line search on a real policy.
# ---------------------------------------------------------------------------


def surrogate_problem(dist_fn, params):
    """Sampled actions and advantages; L(p) = mean rho A, kl(p) = mean KL(pi_old || pi_p)."""
    old = dist_fn(params)
    actions = old.sample(jax.random.key(3))
    advantages = jax.random.normal(jax.random.key(4), (N_OBS,))
    old_log_prob = old.log_prob(actions)
    kl_fn = tr.policy_kl_fn(dist_fn, params)

    def objective_and_kl(p):
        ratio = jnp.exp(dist_fn(p).log_prob(actions) - old_log_prob)
        return jnp.mean(ratio * advantages), kl_fn(p)

    return objective_and_kl, kl_fn


def test_natural_step_is_scaled_to_the_kl_radius(categorical_policy):
    """0.5 s^T F s = delta, s parallel to F^{-1} g (np.linalg.solve), and s ~ sqrt(delta) under vmap."""
    _, dist_fn, params, flat, _, hessian = categorical_policy
    objective_and_kl, kl_fn = surrogate_problem(dist_fn, params)
    damping = 0.05
    radii = jnp.array([0.001, 0.01, 0.04])

    @jax.jit
    def natural_steps(p, max_kl):
        grad = jax.grad(lambda q: objective_and_kl(q)[0])(p)
        fvp = functools.partial(tr.fisher_vector_product, kl_fn, p, damping=damping)
        step = functools.partial(tr.natural_gradient_step, grad, fvp, num_iterations=2 * flat.size, residual_tol=0.0)
        return grad, jax.vmap(step)(max_kl)

    grad, (steps, expected) = natural_steps(params, radii)
    g = ravel_pytree(grad)[0]
    damped_fisher = hessian + damping * jnp.eye(flat.size)
    direction = np.linalg.solve(damped_fisher, g)
    for i, max_kl in enumerate(np.asarray(radii)):
        s = ravel_pytree(jax.tree.map(lambda x: x[i], steps))[0]
        assert float(0.5 * s @ damped_fisher @ s) == pytest.approx(max_kl, rel=1e-8)
        scale = np.sqrt(2 * max_kl / (direction @ damped_fisher @ direction))
        np.testing.assert_allclose(s, scale * direction, rtol=1e-6)
        assert float(expected[i]) == pytest.approx(float(g @ s), rel=1e-12) and float(expected[i]) > 0


def test_trpo_step_respects_kl_radius_and_improves(policy):
    """One full TRPO update (jitted, vmapped over delta): KL(new) <= delta and the surrogate improves."""
    _, dist_fn, params, _, _, _ = policy
    objective_and_kl, kl_fn = surrogate_problem(dist_fn, params)

    def trpo_update(max_kl):
        grad = jax.grad(lambda p: objective_and_kl(p)[0])(params)
        fvp = functools.partial(tr.fisher_vector_product, kl_fn, params, damping=0.01)
        step, expected = tr.natural_gradient_step(grad, fvp, max_kl)
        new, accepted, fraction = tr.backtracking_line_search(objective_and_kl, params, step, expected, max_kl)
        return accepted, fraction, objective_and_kl(new), objective_and_kl(params)[0]

    radii = jnp.array([0.001, 0.01, 0.1])
    accepted, fraction, (objective, kl), objective_old = jax.jit(jax.vmap(trpo_update))(radii)
    assert np.all(np.asarray(accepted))
    assert np.all(np.asarray(kl) <= np.asarray(radii))
    assert np.all(np.asarray(kl) > 0.1 * np.asarray(radii) * np.asarray(fraction) ** 2)  # it did move
    assert np.all(np.asarray(objective) > np.asarray(objective_old))


# ---------------------------------------------------------------------------
# Line search on a quadratic model with known answers.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quadratic(x64):
    """theta_old = 0, L(theta) = g^T theta - 1/2 theta^T A theta (small A), KL(theta) = 1/2 theta^T F theta."""
    rng = np.random.default_rng(5)
    fisher = jnp.asarray(random_spd(rng, 3))
    curvature = 0.01 * jnp.asarray(random_spd(rng, 3))
    g = jnp.asarray(rng.normal(size=3))
    max_kl = 0.02

    def objective_and_kl(theta):
        return g @ theta - 0.5 * theta @ curvature @ theta, 0.5 * theta @ fisher @ theta

    step, expected = tr.natural_gradient_step(g, lambda v: fisher @ v, max_kl, num_iterations=3)
    return objective_and_kl, step, expected, max_kl


def test_natural_step_of_zero_gradient_is_zero(quadratic):
    fisher = jnp.eye(3) * 2.0
    step, expected = tr.natural_gradient_step(jnp.zeros(3), lambda v: fisher @ v, 0.01)
    np.testing.assert_array_equal(step, 0.0)
    assert float(expected) == 0.0


@pytest.mark.parametrize("transform", ["plain", "jit"])
def test_line_search_backtracks_into_the_kl_radius(quadratic, transform):
    objective_and_kl, step, expected, max_kl = quadratic
    search = functools.partial(tr.backtracking_line_search, objective_and_kl)
    if transform == "jit":
        search = jax.jit(search)
    theta0 = jnp.zeros(3)
    # KL of 2.2 s at fraction c^j is 2.2^2 c^2j delta: 4.84 delta, 1.21 delta, 0.3 delta.
    new, accepted, fraction = search(theta0, 2.2 * step, 2.2 * expected, max_kl)
    assert bool(accepted) and float(fraction) == 0.25
    np.testing.assert_allclose(new, 0.25 * 2.2 * step, rtol=1e-12)
    assert float(objective_and_kl(new)[1]) <= max_kl
    # Baselines' 1.5 delta tolerance accepts the 1.21 delta step.
    _, _, fraction = search(theta0, 2.2 * step, 2.2 * expected, max_kl, kl_tolerance=1.5)
    assert float(fraction) == 0.5
    # The natural step itself has KL = delta and is taken whole.
    new, accepted, fraction = search(theta0, step, expected, max_kl)
    assert bool(accepted) and float(fraction) == 1.0
    assert float(objective_and_kl(new)[1]) == pytest.approx(max_kl, rel=1e-9)
    # num_backtracks step sizes and no more: the 2.2 s step needs the third (c^2), so two tries keep theta.
    search = functools.partial(tr.backtracking_line_search, objective_and_kl)  # (num_backtracks is static)
    new, accepted, fraction = search(theta0, 2.2 * step, 2.2 * expected, max_kl, num_backtracks=2)
    assert not bool(accepted) and float(fraction) == 0.0
    np.testing.assert_array_equal(new, theta0)
    _, accepted, fraction = search(theta0, 2.2 * step, 2.2 * expected, max_kl, num_backtracks=3)
    assert bool(accepted) and float(fraction) == 0.25


def test_line_search_rejects_a_step_that_decreases_the_surrogate(quadratic):
    objective_and_kl, step, expected, max_kl = quadratic
    theta0 = jnp.array([0.0, 0.0, 0.0])
    new, accepted, fraction = jax.jit(tr.backtracking_line_search, static_argnums=0)(
        objective_and_kl, theta0, -step, expected, max_kl
    )
    assert not bool(accepted) and float(fraction) == 0.0
    np.testing.assert_array_equal(new, theta0)


def test_line_search_requires_improvement_ratio(quadratic):
    """An improvement far below the linear model's prediction is rejected unless accept_ratio allows it."""
    objective_and_kl, step, expected, max_kl = quadratic
    weak = lambda theta: (0.01 * objective_and_kl(theta)[0], objective_and_kl(theta)[1])
    theta0 = jnp.zeros(3)
    _, accepted, _ = tr.backtracking_line_search(weak, theta0, step, expected, max_kl)
    assert not bool(accepted)
    _, accepted, fraction = tr.backtracking_line_search(weak, theta0, step, expected, max_kl, accept_ratio=0.001)
    assert bool(accepted) and float(fraction) == 1.0
    _, accepted, fraction = tr.backtracking_line_search(weak, theta0, step, expected, max_kl, accept_ratio=0.0)
    assert bool(accepted) and float(fraction) == 1.0  # 0 allowed: any improvement


def test_policy_kl_fn_is_kl_from_the_old_policy(x64):
    """Far from theta_old, policy_kl_fn(theta) = mean_i KL(pi_old || pi_theta) in closed form (NumPy), not the reverse
    KL(pi_theta || pi_old) (equal to second order at theta_old only)."""
    rng = np.random.default_rng(6)
    old, new = rng.normal(size=(N_OBS, K)), 2.0 * rng.normal(size=(N_OBS, K))
    kl_fn = tr.policy_kl_fn(Categorical, jnp.asarray(old))
    log_p, log_q = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (old, new))
    assert float(kl_fn(jnp.asarray(new))) == pytest.approx(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1)),
                                                           rel=1e-12)
    # Gaussians with mean and log-std parameters: KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2 per dimension.
    gauss_fn = tr.policy_kl_fn(lambda p: DiagGaussian(p[0], p[1]), (jnp.zeros((N_OBS, 2)), jnp.zeros((N_OBS, 2))))
    got = gauss_fn((jnp.ones((N_OBS, 2)), jnp.full((N_OBS, 2), np.log(2.0))))
    assert float(got) == pytest.approx(2 * (np.log(2.0) + 2 / 8 - 0.5), rel=1e-12)


def test_line_search_rejects_a_worse_objective_even_when_the_model_predicted_worse(quadratic):
    """improvement > 0 is required on its own: for a step the linear model expects to lose (g^T s < 0), a loss smaller
    than predicted passes improvement > accept_ratio * expected but must still be rejected, keeping theta."""
    objective_and_kl, step, expected, max_kl = quadratic
    theta0 = jnp.zeros(3)
    # -s loses about g^T s; told to expect a loss 100 times that, every backtrack "beats" the prediction.
    new, accepted, fraction = tr.backtracking_line_search(objective_and_kl, theta0, -step, -100.0 * expected, max_kl)
    assert float(objective_and_kl(-0.5 * step)[0]) < float(objective_and_kl(theta0)[0])  # a worse objective
    assert not bool(accepted) and float(fraction) == 0.0
    np.testing.assert_array_equal(new, theta0)
    # An objective that does not move (improvement exactly 0) is not an improvement either.
    flat = lambda theta: (jnp.zeros(()), objective_and_kl(theta)[1])  # noqa: E731
    new, accepted, fraction = tr.backtracking_line_search(flat, theta0, step, -expected, max_kl)
    assert not bool(accepted) and float(fraction) == 0.0
    np.testing.assert_array_equal(new, theta0)
