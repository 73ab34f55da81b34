"""Normalised discounted occupancy measures.

    d^pi = (1 - gamma) mu0 (I - gamma P^pi)^{-1}            (closed form)
    d^pi = (1 - gamma) mu0 + gamma d^pi P^pi                (Bellman-flow fixed point)
    d^pi(s, a) = d^pi(s) pi(a|s)

d^pi is a probability distribution over states: it sums to 1.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pgjax.tabular.evaluation import bellman_matrix, check_policy, policy_transition, working_dtype
from pgjax.tabular.mdp import MDP
from pgjax.validation import check_int, check_known

Array = jax.Array

METHODS = ("solve", "fixed_point")


class FixedPointInfo(NamedTuple):
    """Diagnostics of the fixed-point iteration.

    Attributes:
      iterations: number of updates d <- (1-gamma) mu0 + gamma d P^pi performed.
      residual: max_s |d_k(s) - d_{k-1}(s)| at the last iteration.
      converged: residual <= tol.
    """

    iterations: Array
    residual: Array
    converged: Array


def default_tolerance(dtype) -> float:
    """Fixed-point tolerance on the max-norm residual: 1e-12 in float64, 1e-6 in float32."""
    return 1e-12 if jnp.finfo(dtype).bits >= 64 else 1e-6


def occupancy_solve(mdp: MDP, pi: Array) -> Array:
    """d^pi [S] by the closed form: solve (I - gamma P^pi)^T x = (1 - gamma) mu0."""
    return jnp.linalg.solve(bellman_matrix(mdp, pi).T, (1.0 - mdp.discount) * mdp.initial)


def _flow_start(mdp: MDP, pi: Array) -> Array:
    """d_0 = (1 - gamma) mu0 [S], in the dtype the iteration runs in (`working_dtype`)."""
    return ((1.0 - mdp.discount) * mdp.initial).astype(working_dtype(mdp, pi))


def _flow_step(mdp: MDP, p_pi: Array, d: Array) -> Array:
    return (1.0 - mdp.discount) * mdp.initial + mdp.discount * (d @ p_pi)


def occupancy_fixed_point(
    mdp: MDP, pi: Array, tol: float | None = None, max_iterations: int = 10_000
) -> tuple[Array, FixedPointInfo]:
    """d^pi [S] by iterating the Bellman-flow equation d <- (1-gamma) mu0 + gamma d P^pi.

    The map is a gamma-contraction in the l1 norm and d_0 = (1 - gamma) mu0 is within gamma of d^pi, so the
    l1 error of the k-th iterate is at most gamma^(k+1) (`occupancy_iterates`). Iteration stops when the
    max-norm change ||d_k - d_{k-1}||_inf is <= tol (default: `default_tolerance` of `working_dtype(mdp, pi)`, the
    dtype it iterates in) or after `max_iterations`, whichever comes first (a
    `lax.while_loop`, so it jits and vmaps).
    The stopping rule bounds the change, not the error: the l1 error can be up to
    S * tol * gamma / (1 - gamma) (e.g. ~10x tol at gamma = 0.9 in a small MDP).

    Returns:
      (d [S], FixedPointInfo).
    """
    check_int("occupancy_fixed_point: max_iterations", max_iterations)
    check_policy(mdp, pi)  # here, on concrete arrays: inside the compiled program pi is abstract
    tol = default_tolerance(working_dtype(mdp, pi)) if tol is None else tol  # the dtype it iterates in
    # NaN stopped the loop at once, a negative tol ran it to the cap
    check_known("occupancy_fixed_point: tol", tol, lambda v: v >= 0,
                "a finite number >= 0 (the max-norm change at which it stops)")
    return _occupancy_fixed_point(mdp, pi, tol, max_iterations)


# One compiled program per shape: the MDP, pi, tol and the cap are arguments. A while_loop run op by op closes over
# their arrays, so each new MDP or policy compiled the loop again.
@jax.jit
def _occupancy_fixed_point(mdp: MDP, pi: Array, tol, max_iterations) -> tuple[Array, FixedPointInfo]:
    p_pi = policy_transition(mdp, pi)
    d0 = _flow_start(mdp, pi)
    inf = jnp.asarray(jnp.inf, d0.dtype)

    def cond(carry):
        _, k, residual = carry
        return (k < max_iterations) & (residual > tol)

    def body(carry):
        d, k, _ = carry
        d_next = _flow_step(mdp, p_pi, d)
        return d_next, k + 1, jnp.max(jnp.abs(d_next - d))

    d, k, residual = lax.while_loop(cond, body, (d0, jnp.asarray(0), inf))
    return d, FixedPointInfo(k, residual, residual <= tol)


def occupancy_iterates(mdp: MDP, pi: Array, num_iterations: int) -> Array:
    """The fixed-point iterates d_1, ..., d_K from d_0 = (1-gamma) mu0, shape [K, S] (for convergence plots).

    Row k-1 holds d_k = (1-gamma) sum_{t<=k} gamma^t mu0 (P^pi)^t, which grows monotonically to d^pi,
    so its l1 error is exactly the missing mass gamma^(k+1).
    """
    num_iterations = check_int("occupancy_iterates: num_iterations", num_iterations, minimum=0)
    check_policy(mdp, pi)
    return _occupancy_iterates(mdp, pi, num_iterations)


@functools.partial(jax.jit, static_argnums=2)  # as _occupancy_fixed_point: the MDP and pi are arguments
def _occupancy_iterates(mdp: MDP, pi: Array, num_iterations: int) -> Array:
    p_pi = policy_transition(mdp, pi)

    def step(d, _):
        d_next = _flow_step(mdp, p_pi, d)
        return d_next, d_next

    _, iterates = lax.scan(step, _flow_start(mdp, pi), None, length=num_iterations)
    return iterates


def occupancy(mdp: MDP, pi: Array, method: str = "solve", **kwargs) -> Array:
    """The normalised discounted state occupancy d^pi(s) = (1-gamma) sum_t gamma^t P(s_t = s).

    Args:
      mdp: an `MDP` with S states.
      pi: policy [S, A].
      method: "solve" (closed form, a linear solve) or "fixed_point" (iterate the
        Bellman-flow equation; kwargs `tol`, `max_iterations`; use
        `occupancy_fixed_point` to also get iterations and residual).

    Returns:
      d [S], summing to 1.
    """
    if method == "solve":
        if kwargs:  # they are the fixed point's: silently ignored, a tol would seem to apply
            raise ValueError(f"occupancy: {sorted(kwargs)} apply to method='fixed_point' only; the solve is exact.")
        return occupancy_solve(mdp, pi)
    if method == "fixed_point":
        return occupancy_fixed_point(mdp, pi, **kwargs)[0]
    raise ValueError(f"occupancy: method must be one of {METHODS}; got {method!r}.")


def state_action_occupancy(mdp: MDP, pi: Array, method: str = "solve", **kwargs) -> Array:
    """d^pi(s, a) = d^pi(s) pi(a|s), shape [S, A], summing to 1."""
    return occupancy(mdp, pi, method, **kwargs)[:, None] * pi
