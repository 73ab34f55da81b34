"""Independent NumPy answers for tabular MDPs (float64, no pgjax), shared by the tests that check against them."""

import numpy as np


def numpy_reference(P, R, mu0, gamma, pi):
    """Independent NumPy computation of V, Q, d and J by explicit matrix inversion."""
    p_pi = np.einsum("sa,sat->st", pi, P)
    r_pi = (pi * R).sum(1)
    inv = np.linalg.inv(np.eye(len(mu0)) - gamma * p_pi)
    v = inv @ r_pi
    q = R + gamma * P @ v
    d = (1 - gamma) * mu0 @ inv
    return v, q, d, mu0 @ v


def value_iteration_q(mdp, iterations=2000):
    """Q* [S, A] of a `pgjax.tabular.MDP` by value iteration in float64 NumPy: independent of the library
    (converges at rate gamma^k)."""
    P, R, g = np.asarray(mdp.transition, np.float64), np.asarray(mdp.reward, np.float64), float(mdp.discount)
    v = np.zeros(P.shape[0])
    for _ in range(iterations):
        q = R + g * P @ v
        v = q.max(1)
    return q
