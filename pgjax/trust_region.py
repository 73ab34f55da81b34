"""TRPO's pieces (Schulman et al., 2015): conjugate gradient, Fisher-vector products, natural step, line search.

TRPO solves, around the current parameters theta_old with surrogate gradient g and Fisher F,

    max_s  g^T s   subject to   1/2 s^T F s <= delta,

whose solution is s = sqrt(2 delta / (x^T F x)) x with x = F^{-1} g. x comes from conjugate
gradient using only products F v (never forming F), and a backtracking line search on the exact
surrogate and KL then guards against the quadratic model's errors.

Everything here works on pytrees (e.g. flax parameter dicts) as well as flat vectors, is pure and
jit-able, and loops with `lax` (so it also runs under `vmap`). Sign convention: the surrogate is an
objective to MAXIMISE (e.g. mean_i rho_i A_i); pass -grad for a loss.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from pgjax.validation import check_int, check_known

Array = jax.Array
PyTree = Any


def tree_vdot(a: PyTree, b: PyTree) -> Array:
    """sum over leaves of <a_leaf, b_leaf>, a scalar."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves, jnp.zeros((), jnp.result_type(*leaves)))


def _axpy(alpha: Array, x: PyTree, y: PyTree) -> PyTree:
    """alpha x + y, leafwise."""
    return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def conjugate_gradient(
    matvec: Callable[[PyTree], PyTree], b: PyTree, num_iterations: int = 10, residual_tol: float = 1e-10
) -> PyTree:
    """Approximately solve A x = b for symmetric positive-definite A, given only v -> A v.

    Standard CG from x_0 = 0 (Nocedal & Wright, Alg. 5.2):

        r_0 = p_0 = b
        alpha_k = r_k^T r_k / p_k^T A p_k;  x_{k+1} = x_k + alpha_k p_k;  r_{k+1} = r_k - alpha_k A p_k
        beta_k = r_{k+1}^T r_{k+1} / r_k^T r_k;  p_{k+1} = r_{k+1} + beta_k p_k

    stopping after `num_iterations` steps, once r^T r <= residual_tol, or at a breakdown, p^T A p <= 0 or not
    finite (A singular or indefinite along p: the iterate so far is returned, never a NaN) (a `lax.while_loop`).
    Exact after n iterations for an n x n system (in exact arithmetic). The tolerance is absolute: for
    |b|^2 <= residual_tol no iteration runs and x = 0 (a natural-gradient step of 0 for |g| < 1e-5 at the default).
    It stays absolute on purpose: relative to |b|^2 (as scipy's), CG ran more of TRPO's 10 iterations on CartPole,
    and the `max_kl=0.005` preset, tuned with the absolute one, left a seed of 8 at 462.2 (all 500.0 before).

    Args:
      matvec: v -> A v on pytrees shaped like b (e.g. a Fisher-vector product).
      b: the right-hand side, a pytree (a flat [n] vector included).
      num_iterations: maximum number of CG iterations (static).
      residual_tol: tolerance on the squared residual norm r^T r.

    Returns:
      x, shaped like b.
    """
    check_int("conjugate_gradient: num_iterations", num_iterations)
    check_known("conjugate_gradient: residual_tol", residual_tol, lambda v: v >= 0, "a finite number >= 0")
    x0 = jax.tree.map(jnp.zeros_like, b)
    rdotr0 = tree_vdot(b, b)

    def cond(carry):
        i, _, _, _, rdotr, curved = carry
        return (i < num_iterations) & (rdotr > residual_tol) & curved

    def body(carry):
        i, x, r, p, rdotr, _ = carry
        ap = matvec(p)
        pap = tree_vdot(p, ap)
        curved = jnp.isfinite(pap) & (pap > 0)
        alpha = rdotr / pap
        # At a breakdown keep the iterate (the loop then stops); otherwise the plain CG step, rounding included.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(curved, n, o), new, old)  # noqa: E731
        x = keep(_axpy(alpha, p, x), x)
        r = keep(_axpy(-alpha, ap, r), r)
        new_rdotr = jnp.where(curved, tree_vdot(r, r), rdotr)
        p = _axpy(new_rdotr / rdotr, p, r)
        return i + 1, x, r, p, new_rdotr, curved

    init = (jnp.zeros((), jnp.int32), x0, b, b, rdotr0, jnp.ones((), bool))
    _, x, _, _, _, _ = lax.while_loop(cond, body, init)
    return x


def fisher_vector_product(kl_fn: Callable[[PyTree], Array], params: PyTree, vector: PyTree, damping: Array) -> PyTree:
    """(F + damping I) v with F = Hessian of the mean KL at params, by forward-over-reverse autodiff:

        F v = d/de grad_theta KL(pi_old || pi_theta) |_{theta = params + e v}   (jax.jvp of jax.grad)

    At theta = theta_old the Hessian of KL(pi_old || pi_theta) is the Fisher information
    E_s E_{a~pi}[grad log pi grad log pi^T], so this costs about two gradient evaluations and never
    forms F. Build `kl_fn` so that pi_old is a constant, either

        kl_fn = lambda p: mean_kl(stop_gradient(dist_fn(params_old)), dist_fn(p))   or
        kl_fn = lambda p: mean_kl(stop_gradient(dist_fn(p)), dist_fn(p))           (old == current)

    (`policy_kl_fn` builds the first); both give the same F at params = params_old.

    Args:
      kl_fn: params -> scalar mean KL(pi_old || pi_params).
      params: the point theta (normally theta_old), a pytree.
      vector: v, a pytree shaped like params.
      damping: lambda >= 0, added as lambda v (keeps CG well conditioned).

    Returns:
      (F + damping I) v, shaped like params.
    """
    _, fv = jax.jvp(jax.grad(kl_fn), (params,), (vector,))
    return _axpy(damping, vector, fv)


def policy_kl_fn(dist_fn: Callable[[PyTree], Any], old_params: PyTree) -> Callable[[PyTree], Array]:
    """params -> mean KL(pi_old || pi_params), with pi_old = dist_fn(old_params) held constant.

    Args:
      dist_fn: params -> a distribution from `pgjax.distributions` over the batch of states
        (e.g. `lambda p: actor.apply(p, obs)`).
      old_params: theta_old.
    """
    old_dist = jax.lax.stop_gradient(dist_fn(old_params))
    return lambda params: jnp.mean(old_dist.kl(dist_fn(params)))


def natural_gradient_step(
    grad: PyTree,
    fvp: Callable[[PyTree], PyTree],
    max_kl: Array,
    num_iterations: int = 10,
    residual_tol: float = 1e-10,
) -> tuple[PyTree, Array]:
    """The full TRPO step on the KL radius delta = max_kl:

        x = F^{-1} g (conjugate gradient),   s = sqrt(2 delta / x^T F x) x,   so   1/2 s^T F s = delta

    Args:
      grad: g, the gradient of the surrogate objective (to maximise), a pytree.
      fvp: v -> F v (usually `fisher_vector_product` with damping; the scaling uses this same F).
      max_kl: delta > 0 (may be traced).
      num_iterations, residual_tol: passed to `conjugate_gradient`.

    Returns:
      (step s shaped like grad, expected improvement g^T s, a scalar). A zero gradient, or no positive
      finite curvature x^T F x, gives a zero step and zero expected improvement.
    """
    check_known("natural_gradient_step: max_kl", max_kl, lambda v: v > 0, "a positive number (the KL radius)")
    x = conjugate_gradient(fvp, grad, num_iterations, residual_tol)
    xfx = tree_vdot(x, fvp(x))
    usable = jnp.isfinite(xfx) & (xfx > 0)  # else a zero step (no curvature along x), never a NaN one
    scale = jnp.where(usable, jnp.sqrt(2.0 * max_kl / jnp.where(usable, xfx, 1.0)), 0.0)
    step = jax.tree.map(lambda xi: scale * xi, x)
    return step, tree_vdot(grad, step)


def backtracking_line_search(
    objective_and_kl_fn: Callable[[PyTree], tuple[Array, Array]],
    params: PyTree,
    full_step: PyTree,
    expected_improve: Array,
    max_kl: Array,
    num_backtracks: int = 10,
    accept_ratio: float = 0.1,
    backtrack_coef: float = 0.5,
    kl_tolerance: float = 1.0,
) -> tuple[PyTree, Array, Array]:
    """Try theta + c^j s for j = 0, 1, ..., num_backtracks - 1 (c = backtrack_coef); keep the first with

        KL(pi_old || pi_new) <= kl_tolerance * delta,
        improvement = L(theta_new) - L(theta) > 0,   and   improvement > accept_ratio * c^j g^T s,

    else keep theta. The default kl_tolerance = 1 enforces the radius exactly (as in Spinning Up);
    OpenAI baselines accepts up to 1.5 delta. A `lax.while_loop`: evaluation stops at the first
    accepted candidate.

    Args:
      objective_and_kl_fn: params -> (surrogate L(params) to maximise, mean KL(pi_old || pi_params)).
      params: theta (= theta_old), a pytree.
      full_step: s, shaped like params (from `natural_gradient_step`).
      expected_improve: g^T s, the linear model's improvement for the full step.
      max_kl: delta (may be traced).
      num_backtracks: number of step sizes tried (static).
      accept_ratio: minimum ratio of actual to expected improvement (written as a product, so an
        expected improvement <= 0 never divides by zero).
      backtrack_coef: c in (0, 1).
      kl_tolerance: multiple of delta accepted as KL.

    Returns:
      (new params, accepted (bool scalar), step fraction c^j of the accepted step or 0.0).
    """
    check_int("backtracking_line_search: num_backtracks", num_backtracks)
    check_known("backtracking_line_search: max_kl", max_kl, lambda v: v > 0, "a positive number (the KL radius)")
    check_known("backtracking_line_search: backtrack_coef", backtrack_coef, lambda v: 0 < v < 1,
                 "a number in (0, 1) (each try shrinks the step by it)")
    check_known("backtracking_line_search: accept_ratio", accept_ratio, lambda v: v >= 0, "a finite number >= 0")
    check_known("backtracking_line_search: kl_tolerance", kl_tolerance, lambda v: v > 0,
                 "a positive number (the multiple of max_kl accepted)")
    objective_old, _ = objective_and_kl_fn(params)
    dtype = jnp.result_type(objective_old)

    def candidate(fraction):
        return jax.tree.map(lambda p, s: (p + fraction * s).astype(p.dtype), params, full_step)

    def acceptable(fraction):
        objective, kl = objective_and_kl_fn(candidate(fraction))
        improvement = objective - objective_old
        expected = fraction * expected_improve
        return (
            jnp.isfinite(objective)
            & jnp.isfinite(kl)
            & (kl <= kl_tolerance * max_kl)
            & (improvement > 0)
            & (improvement > accept_ratio * expected)
        )

    def cond(carry):
        j, accepted, _ = carry
        return (j < num_backtracks) & ~accepted

    def body(carry):
        j, _, _ = carry
        fraction = jnp.asarray(backtrack_coef, dtype) ** j
        return j + 1, acceptable(fraction), fraction

    init = (jnp.zeros((), jnp.int32), jnp.zeros((), bool), jnp.ones((), dtype))
    _, accepted, fraction = lax.while_loop(cond, body, init)
    new_params = jax.tree.map(lambda p, c: jnp.where(accepted, c, p), params, candidate(fraction))
    return new_params, accepted, jnp.where(accepted, fraction, jnp.zeros((), dtype))
