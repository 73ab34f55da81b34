"""Throughput of pgjax's exact tabular computations against plain NumPy, side by side.

Measured, in calls per second, in one run:

  * ``policy_gradient``  the exact policy gradient `pgjax.tabular.policy_gradient` (two linear
    solves: V^pi and d^pi, then Q^pi and the score), S in {10, 100, 1000}, A = 4;
  * ``occupancy solve``  `occupancy(mdp, pi, method="solve")`, same sizes;
  * ``occupancy fixed_point``  `occupancy_fixed_point(mdp, pi)` (a `lax.while_loop` to the default
    tolerance), same sizes;
  * the three of them ``jax.vmap``-ed over a batch of 1024 random MDPs with S = 20, A = 4
    (reported also as MDPs per second).

The gradient uses random dense features phi [S, A, D] with D = 16: one-hot tabular features
have D = S*A, so phi would be [1000, 4, 4000] at S = 1000, which is mostly zeros and too big.

The NumPy baseline does the same arithmetic: `np.linalg.solve` for V, Q and d, a Python
`while` loop for the fixed point and, for the batch, both a Python loop over the MDPs and a
batched (stacked) `np.linalg.solve` / vectorised-loop variant. Before timing, every pgjax
result is checked against its NumPy twin (and the fixed point against the solve), so the two
columns always measure the same computation.

Method: each pgjax function is jitted once; the first call (trace + compile + run) is timed
on its own ("compile s"); then calls are repeated, each followed by `.block_until_ready()`,
until at least `--min-time` seconds (default 0.5) have passed. We report calls/s
(= calls / total time) and the median per-call time. NumPy is timed the same way after one
warm-up call. "ratio" is pgjax calls/s over NumPy calls/s and "median ratio" NumPy median time over
pgjax median time: above 1 pgjax is faster.

Usage:
  python benchmarks/tabular_bench.py            # float32, full run (a few minutes on 2 CPU cores)
  python benchmarks/tabular_bench.py --x64      # float64
  python benchmarks/tabular_bench.py --quick    # smoke test, a few seconds
  python benchmarks/tabular_bench.py --threads 1 # one BLAS thread: steadier on a small or shared machine
  python benchmarks/tabular_bench.py --out my.csv

On CPU with jaxlib < 0.11 the vmapped gradient runs in a child process with a timeout, because
jaxlib 0.10 can deadlock there (see the note above `vmap_gradient_may_deadlock`); its row then
reads HUNG instead of stalling the whole run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import faulthandler
import functools
import multiprocessing
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import pgjax
from pgjax import tables, tabular

NUM_ACTIONS = 4
NUM_FEATURES = 16
DISCOUNT = 0.9
# A section (one S, or the batch) that takes longer than this is stuck: dump every thread's stack and exit.
WATCHDOG_S = 600


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    calls: int
    total_s: float
    median_s: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.total_s


def measure(fn: Callable[[], Any], min_time: float, min_calls: int) -> Timing:
    """Call fn() until min_time seconds have elapsed (and at least min_calls calls); fn must block."""
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 - start >= min_time and len(times) >= min_calls:
            break
    return Timing(len(times), sum(times), statistics.median(times))


def blocking(fn: Callable, *args) -> Callable[[], Any]:
    """A thunk that runs a jitted fn and waits for every output leaf."""

    def run():
        return jax.block_until_ready(fn(*args))

    return run


def first_call(fn: Callable, *args) -> tuple[Any, float]:
    """Run a jitted function once (trace + compile + execute) and time it."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- NumPy twins
# The same arithmetic as pgjax.tabular, written once for one MDP and once for a stack of them.


def np_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def np_policy_transition(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    return np.einsum("sa,sat->st", pi, P)


def np_policy_gradient(P, R, mu, gamma, theta, phi) -> np.ndarray:
    """grad J = 1/(1-gamma) sum_{s,a} d(s) pi(a|s) [phi(s,a) - E_pi phi(s,.)] Q(s,a)."""
    S = R.shape[0]
    pi = np_softmax(phi @ theta)
    lhs = np.eye(S, dtype=P.dtype) - gamma * np_policy_transition(P, pi)
    v = np.linalg.solve(lhs, (pi * R).sum(-1))
    q = R + gamma * (P.reshape(-1, S) @ v).reshape(R.shape)
    d = np.linalg.solve(lhs.T, (1 - gamma) * mu)
    score = phi - np.einsum("sa,sad->sd", pi, phi)[:, None, :]
    return np.einsum("sa,sad->d", d[:, None] * pi * q, score) / (1 - gamma)


def np_occupancy_solve(P, mu, gamma, pi) -> np.ndarray:
    S = mu.shape[0]
    lhs = np.eye(S, dtype=P.dtype) - gamma * np_policy_transition(P, pi)
    return np.linalg.solve(lhs.T, (1 - gamma) * mu)


def np_occupancy_fixed_point(P, mu, gamma, pi, tol, max_iterations=10_000) -> tuple[np.ndarray, int]:
    """d <- (1-gamma) mu + gamma d P^pi until max|d_k - d_{k-1}| <= tol (as pgjax)."""
    p_pi = np_policy_transition(P, pi)
    base = (1 - gamma) * mu
    d, k, residual = base, 0, np.inf
    while k < max_iterations and residual > tol:
        d_next = base + gamma * (d @ p_pi)
        residual = np.max(np.abs(d_next - d))
        d, k = d_next, k + 1
    return d, k


def np_batched_policy_gradient(P, R, mu, gamma, theta, phi) -> np.ndarray:
    """Stacked version: P [B,S,A,S], R [B,S,A], mu [B,S], gamma [B], theta [B,D], phi [S,A,D] shared."""
    B, S, _ = R.shape
    g = gamma[:, None, None]
    pi = np_softmax(np.einsum("sad,bd->bsa", phi, theta))
    lhs = np.eye(S, dtype=P.dtype) - g * np.einsum("bsa,bsat->bst", pi, P)
    v = np.linalg.solve(lhs, (pi * R).sum(-1)[..., None])[..., 0]
    q = R + g * np.einsum("bsat,bt->bsa", P, v)
    d = np.linalg.solve(lhs.transpose(0, 2, 1), ((1 - gamma)[:, None] * mu)[..., None])[..., 0]
    score = phi[None] - np.einsum("bsa,sad->bsd", pi, phi)[:, :, None, :]
    return np.einsum("bsa,bsad->bd", d[:, :, None] * pi * q, score) / (1 - gamma)[:, None]


def np_batched_occupancy_solve(P, mu, gamma, pi) -> np.ndarray:
    S = mu.shape[-1]
    lhs = np.eye(S, dtype=P.dtype) - gamma[:, None, None] * np.einsum("bsa,bsat->bst", pi, P)
    return np.linalg.solve(lhs.transpose(0, 2, 1), ((1 - gamma)[:, None] * mu)[..., None])[..., 0]


def np_batched_occupancy_fixed_point(P, mu, gamma, pi, tol, max_iterations=10_000) -> tuple[np.ndarray, np.ndarray]:
    """One vectorised while loop over the batch; converged MDPs stop updating (the semantics of vmap)."""
    p_pi = np.einsum("bsa,bsat->bst", pi, P)
    g = gamma[:, None]
    base = (1 - g) * mu
    d = base
    k = np.zeros(mu.shape[0], dtype=np.int64)
    active = np.ones(mu.shape[0], dtype=bool)
    while active.any():
        d_next = base + g * np.einsum("bs,bst->bt", d, p_pi)
        residual = np.max(np.abs(d_next - d), axis=-1)
        d = np.where(active[:, None], d_next, d)
        k += active
        active &= (k < max_iterations) & (residual > tol)
    return d, k


# ----------------------------------------------------------------------------- checks


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (a scale-free error for vectors whose entries can be tiny)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def check(name: str, got, want, tol: float) -> float:
    err = rel_err(got, want)
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"{name}: pgjax and NumPy disagree: max|diff|/max|ref| = {err:.3g} > {tol:.1g}")
    print(f"    ok  {name}: max|diff|/max|ref| = {err:.2g}", flush=True)
    return err


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Row:
    computation: str
    num_states: int
    batch: int
    numpy_variant: str
    jax_t: Timing | None  # None: the pgjax call hung (see vmap_gradient_isolated)
    np_t: Timing
    compile_s: float
    jax_iterations: str = ""
    numpy_iterations: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.jax_t.calls_per_s / self.np_t.calls_per_s if self.jax_t else float("nan")

    @property
    def median_ratio(self) -> float:
        return self.np_t.median_s / self.jax_t.median_s if self.jax_t else float("nan")


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


HEADERS = [
    "computation",
    "S",
    "batch",
    "numpy variant",
    "pgjax calls/s",
    "pgjax median",
    "numpy calls/s",
    "numpy median",
    "ratio",
    "median ratio",
    "pgjax MDPs/s",
    "numpy MDPs/s",
    "compile s",
]


def table_cells(row: Row) -> list[str]:
    jt = row.jax_t
    na = "HUNG" if jt is None else ""
    return [
        row.computation,
        str(row.num_states),
        str(row.batch),
        row.numpy_variant,
        fmt_rate(jt.calls_per_s) if jt else na,
        fmt_time(jt.median_s) if jt else na,
        fmt_rate(row.np_t.calls_per_s),
        fmt_time(row.np_t.median_s),
        f"{row.ratio:.2f}" if jt else "-",
        f"{row.median_ratio:.2f}" if jt else "-",
        fmt_rate(jt.calls_per_s * row.batch) if jt else na,
        fmt_rate(row.np_t.calls_per_s * row.batch),
        f"{row.compile_s:.2f}" if jt else "-",
    ]


def _g(x: float | None, fmt: str) -> str:
    return "" if x is None or x != x else format(x, fmt)


def format_table(rows: list[Row]) -> str:
    cells = [HEADERS] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    left = {0, 3}  # text columns

    def line(c):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells[1:]]
    return "\n".join(out)


def write_csv(path: str, rows: list[Row], meta: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields = [
        "computation", "num_states", "num_actions", "num_features", "batch", "numpy_variant", "dtype",
        "backend", "device", "jax_version", "numpy_version",
        "pgjax_calls_per_s", "pgjax_median_s", "pgjax_calls", "numpy_calls_per_s", "numpy_median_s", "numpy_calls",
        "ratio", "median_ratio", "pgjax_mdps_per_s", "numpy_mdps_per_s", "compile_s",
        "pgjax_iterations", "numpy_iterations", "note",
    ]  # fmt: skip
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    "computation": r.computation,
                    "num_states": r.num_states,
                    "num_actions": NUM_ACTIONS,
                    "num_features": NUM_FEATURES if "policy_gradient" in r.computation else "",
                    "batch": r.batch,
                    "numpy_variant": r.numpy_variant,
                    **meta,
                    "pgjax_calls_per_s": _g(r.jax_t and r.jax_t.calls_per_s, ".6g"),
                    "pgjax_median_s": _g(r.jax_t and r.jax_t.median_s, ".6g"),
                    "pgjax_calls": r.jax_t.calls if r.jax_t else "",
                    "numpy_calls_per_s": f"{r.np_t.calls_per_s:.6g}",
                    "numpy_median_s": f"{r.np_t.median_s:.6g}",
                    "numpy_calls": r.np_t.calls,
                    "ratio": _g(r.ratio, ".4g"),
                    "median_ratio": _g(r.median_ratio, ".4g"),
                    "pgjax_mdps_per_s": _g(r.jax_t and r.jax_t.calls_per_s * r.batch, ".6g"),
                    "numpy_mdps_per_s": f"{r.np_t.calls_per_s * r.batch:.6g}",
                    "compile_s": _g(r.compile_s, ".4g"),
                    "pgjax_iterations": r.jax_iterations,
                    "numpy_iterations": r.numpy_iterations,
                    "note": r.note,
                }
            )


# ----------------------------------------------------------------------------- benchmark


def np_mdp(mdp: tabular.MDP) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(x) for x in (mdp.transition, mdp.reward, mdp.initial, mdp.discount))


def iter_summary(k) -> str:
    k = np.asarray(k)
    return str(int(k)) if k.ndim == 0 else f"{int(k.min())}-{int(k.max())}"


def bench_single(S: int, dtype, key, min_time: float, min_calls: int, tol_check: float) -> list[Row]:
    k_mdp, k_phi, k_theta = jax.random.split(key, 3)
    mdp = numpy_random_mdp(np.random.default_rng(np.asarray(jax.random.key_data(k_mdp), np.uint32)), S, dtype)
    phi = jax.random.normal(k_phi, (S, NUM_ACTIONS, NUM_FEATURES), dtype)
    theta = 0.5 * jax.random.normal(k_theta, (NUM_FEATURES,), dtype)
    pi = jax.block_until_ready(tabular.softmax_policy(theta, phi))
    P, R, mu, gamma = np_mdp(mdp)
    phi_np, theta_np, pi_np = np.asarray(phi), np.asarray(theta), np.asarray(pi)
    fp_tol = _fixed_point_tolerance(dtype)
    rows = []

    # policy gradient
    jf = jax.jit(tabular.policy_gradient)
    out, compile_s = first_call(jf, mdp, theta, phi)
    ref = np_policy_gradient(P, R, mu, gamma, theta_np, phi_np)
    check(f"policy_gradient S={S}", out, ref, tol_check)
    jt = measure(blocking(jf, mdp, theta, phi), min_time, min_calls)
    nt = measure(lambda: np_policy_gradient(P, R, mu, gamma, theta_np, phi_np), min_time, min_calls)
    rows.append(Row("policy_gradient", S, 1, "single", jt, nt, compile_s))

    # occupancy by solve
    jf = jax.jit(functools.partial(tabular.occupancy, method="solve"))
    d_solve, compile_s = first_call(jf, mdp, pi)
    ref_solve = np_occupancy_solve(P, mu, gamma, pi_np)
    check(f"occupancy solve S={S}", d_solve, ref_solve, tol_check)
    jt = measure(blocking(jf, mdp, pi), min_time, min_calls)
    nt = measure(lambda: np_occupancy_solve(P, mu, gamma, pi_np), min_time, min_calls)
    rows.append(Row("occupancy solve", S, 1, "single", jt, nt, compile_s))

    # occupancy by fixed point
    jf = jax.jit(tabular.occupancy_fixed_point)
    (d_fp, info), compile_s = first_call(jf, mdp, pi)
    ref_fp, k_np = np_occupancy_fixed_point(P, mu, gamma, pi_np, fp_tol)
    assert bool(info.converged), f"occupancy_fixed_point S={S} did not converge: {info}"
    check(f"occupancy fixed_point S={S}", d_fp, ref_fp, tol_check)
    check(f"fixed_point vs solve S={S}", d_fp, ref_solve, _fp_vs_solve_tol(fp_tol, ref_solve))
    _check_iterations(f"occupancy fixed_point S={S}", info.iterations, k_np)
    jt = measure(blocking(jf, mdp, pi), min_time, min_calls)
    nt = measure(lambda: np_occupancy_fixed_point(P, mu, gamma, pi_np, fp_tol), min_time, min_calls)
    rows.append(
        Row("occupancy fixed_point", S, 1, "single", jt, nt, compile_s, iter_summary(info.iterations), str(k_np))
    )
    return rows


def bench_batch(B: int, S: int, dtype, key, min_time: float, min_calls: int, tol_check: float):
    k_mdp, k_phi, k_theta = jax.random.split(key, 3)
    make = jax.jit(jax.vmap(functools.partial(random_mdp_s_a, S=S, dtype=dtype)))
    mdps = jax.block_until_ready(make(jax.random.split(k_mdp, B)))
    phi = jax.random.normal(k_phi, (S, NUM_ACTIONS, NUM_FEATURES), dtype)
    thetas = 0.5 * jax.random.normal(k_theta, (B, NUM_FEATURES), dtype)
    pis = jax.block_until_ready(jax.vmap(tabular.softmax_policy, in_axes=(0, None))(thetas, phi))
    P, R, mu, gamma = np_mdp(mdps)
    phi_np, thetas_np, pis_np = np.asarray(phi), np.asarray(thetas), np.asarray(pis)
    fp_tol = _fixed_point_tolerance(dtype)
    rows = []

    def np_loop(fn, *per_mdp_args, shared=()):
        def run():
            return [fn(*args, *shared) for args in zip(*per_mdp_args)]

        return run

    # policy gradient
    loop = np_loop(lambda p, r, m, g, th: np_policy_gradient(p, r, m, g, th, phi_np), P, R, mu, gamma, thetas_np)
    note = ""
    if vmap_gradient_may_deadlock():
        print("    (jaxlib < 0.11 on CPU: jit(vmap(policy_gradient)) can deadlock in the batched LU, see README;"
              f" timing it in a child process with a {ISOLATION_TIMEOUT_S} s timeout)", flush=True)  # fmt: skip
        result = vmap_gradient_isolated((P, R, mu, gamma), thetas_np, phi_np, min_time, min_calls)
        if result is None:
            out, compile_s, jt = None, float("nan"), None
            note = "pgjax side hung (jaxlib 0.10 CPU batched-LU deadlock); killed"
            print(f"    HUNG  vmap policy_gradient: no result in {ISOLATION_TIMEOUT_S} s (jaxlib deadlock)", flush=True)
        else:
            out, compile_s, jt = result
    else:
        jf = jax.jit(jax.vmap(tabular.policy_gradient, in_axes=(0, 0, None)))
        out, compile_s = first_call(jf, mdps, thetas, phi)
        jt = None
    if out is not None:
        check("vmap policy_gradient (loop)", out, np.stack(loop()), tol_check)
        check("vmap policy_gradient (batched)", out, np_batched_policy_gradient(P, R, mu, gamma, thetas_np, phi_np),
              tol_check)  # fmt: skip
        if jt is None:
            jt = measure(blocking(jf, mdps, thetas, phi), min_time, min_calls)
    nt_loop = measure(lambda: np.stack(loop()), min_time, min_calls)
    nt_bat = measure(lambda: np_batched_policy_gradient(P, R, mu, gamma, thetas_np, phi_np), min_time, min_calls)
    rows.append(Row("vmap policy_gradient", S, B, "loop", jt, nt_loop, compile_s, note=note))
    rows.append(Row("vmap policy_gradient", S, B, "batched", jt, nt_bat, compile_s, note=note))

    # occupancy by solve
    jf = jax.jit(jax.vmap(functools.partial(tabular.occupancy, method="solve")))
    d_solve, compile_s = first_call(jf, mdps, pis)
    loop = np_loop(lambda p, m, g, q: np_occupancy_solve(p, m, g, q), P, mu, gamma, pis_np)
    ref_solve = np_batched_occupancy_solve(P, mu, gamma, pis_np)
    check("vmap occupancy solve (loop)", d_solve, np.stack(loop()), tol_check)
    check("vmap occupancy solve (batched)", d_solve, ref_solve, tol_check)
    jt = measure(blocking(jf, mdps, pis), min_time, min_calls)
    nt_loop = measure(lambda: np.stack(loop()), min_time, min_calls)
    nt_bat = measure(lambda: np_batched_occupancy_solve(P, mu, gamma, pis_np), min_time, min_calls)
    rows.append(Row("vmap occupancy solve", S, B, "loop", jt, nt_loop, compile_s))
    rows.append(Row("vmap occupancy solve", S, B, "batched", jt, nt_bat, compile_s))

    # occupancy by fixed point
    jf = jax.jit(jax.vmap(tabular.occupancy_fixed_point))
    (d_fp, info), compile_s = first_call(jf, mdps, pis)
    assert bool(np.all(info.converged)), "vmap occupancy_fixed_point: some MDPs did not converge"
    loop = np_loop(lambda p, m, g, q: np_occupancy_fixed_point(p, m, g, q, fp_tol), P, mu, gamma, pis_np)
    loop_out = loop()
    d_loop, k_loop = np.stack([d for d, _ in loop_out]), np.array([k for _, k in loop_out])
    d_bat, k_bat = np_batched_occupancy_fixed_point(P, mu, gamma, pis_np, fp_tol)
    check("vmap occupancy fixed_point (loop)", d_fp, d_loop, tol_check)
    check("vmap occupancy fixed_point (batched)", d_fp, d_bat, tol_check)
    check("vmap fixed_point vs solve", d_fp, ref_solve, _fp_vs_solve_tol(fp_tol, ref_solve))
    _check_iterations("vmap occupancy fixed_point (loop)", info.iterations, k_loop)
    _check_iterations("vmap occupancy fixed_point (batched)", info.iterations, k_bat)
    jt = measure(blocking(jf, mdps, pis), min_time, min_calls)

    def loop_fp():
        return np.stack([d for d, _ in loop()])

    nt_loop = measure(loop_fp, min_time, min_calls)
    nt_bat = measure(lambda: np_batched_occupancy_fixed_point(P, mu, gamma, pis_np, fp_tol), min_time, min_calls)
    jit_iters = iter_summary(info.iterations)
    for variant, nt, k in (("loop", nt_loop, k_loop), ("batched", nt_bat, k_bat)):
        rows.append(Row("vmap occupancy fixed_point", S, B, variant, jt, nt, compile_s, jit_iters, iter_summary(k)))
    return rows


def numpy_random_mdp(rng: np.random.Generator, S: int, dtype) -> tabular.MDP:
    """The distribution of `tabular.random_mdp` (P(.|s,a) ~ Dir(1), R ~ U[0,1], mu0 ~ Dir(1)), drawn by NumPy.

    `random_mdp` itself costs seconds of compilation per shape on a small CPU (jax's Dirichlet sampler),
    so the single-MDP sizes are drawn here and validated by the `MDP` constructor; the batch uses
    `jax.vmap(random_mdp)`.
    """
    P = rng.dirichlet(np.ones(S), size=(S, NUM_ACTIONS))
    R = rng.uniform(size=(S, NUM_ACTIONS))
    mu = rng.dirichlet(np.ones(S))
    return tabular.MDP(*(jnp.asarray(x, dtype) for x in (P, R, mu, np.asarray(DISCOUNT))))


# ----------------------------------------------------------------------------- jaxlib 0.10 deadlock guard
# jaxlib 0.10.x splits a batched LAPACK call (the LU inside jnp.linalg.solve) over XLA:CPU's intra-op
# thread pool and blocks a pool thread until the pieces finish. policy_gradient factors I - gamma P^pi
# twice (for V and for d), two independent LU calls that XLA runs concurrently: with a pool of two
# threads (a 2-core machine) both threads can end up waiting for work that no thread is left to run,
# and block_until_ready never returns. jaxlib 0.11 no longer parallelises that way. So on CPU with an
# older jaxlib the vmapped gradient is timed in a child process that is killed if it hangs.

ISOLATION_TIMEOUT_S = 120


def vmap_gradient_may_deadlock() -> bool:
    version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2] if p.isdigit())
    return jax.default_backend() == "cpu" and version < (0, 11)


def _vmap_gradient_child(conn, arrays, thetas, phi, x64: bool, precision: str, min_time: float, min_calls: int):
    if x64:
        jax.config.update("jax_enable_x64", True)
    if precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    mdps = tabular.MDP(*(jnp.asarray(a) for a in arrays))
    thetas, phi = jnp.asarray(thetas), jnp.asarray(phi)
    jf = jax.jit(jax.vmap(tabular.policy_gradient, in_axes=(0, 0, None)))
    out, compile_s = first_call(jf, mdps, thetas, phi)
    timing = measure(blocking(jf, mdps, thetas, phi), min_time, min_calls)
    conn.send((np.asarray(out), compile_s, timing))
    conn.close()


def vmap_gradient_isolated(arrays, thetas, phi, min_time, min_calls):
    """(output, compile s, Timing) of jit(vmap(policy_gradient)) measured in a fresh process, or None if it hung."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    x64 = bool(jax.config.jax_enable_x64)
    precision = str(jax.config.jax_default_matmul_precision or "default")
    proc = ctx.Process(
        target=_vmap_gradient_child, args=(child, arrays, thetas, phi, x64, precision, min_time, min_calls)
    )
    proc.start()
    child.close()
    try:
        if parent.poll(ISOLATION_TIMEOUT_S):
            return parent.recv()
        return None
    except EOFError:
        raise RuntimeError(f"the vmap policy_gradient child process failed (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def random_mdp_s_a(key, S: int, dtype) -> tabular.MDP:
    return tabular.random_mdp(key, S, NUM_ACTIONS, discount=DISCOUNT, dtype=dtype)


def _fixed_point_tolerance(dtype) -> float:
    # The documented default of occupancy_fixed_point (pgjax.tabular.occupancies.default_tolerance).
    from pgjax.tabular.occupancies import default_tolerance

    return default_tolerance(dtype)


def _fp_vs_solve_tol(fp_tol: float, ref: np.ndarray) -> float:
    # Stopping at max-change <= tol leaves an error of order tol * gamma / (1 - gamma) per entry (the rigorous
    # l1 bound, S * tol * gamma / (1 - gamma), is too loose to catch anything at S = 1000); relative to max|d|
    # like the other checks, with a 10x margin.
    return max(10 * fp_tol / (1 - DISCOUNT) / float(np.max(np.abs(ref))), 1e-6)


def _check_iterations(name: str, k_jax, k_np) -> None:
    # Same recurrence, same stopping rule: the counts can differ only where a residual sits at the
    # tolerance and rounding tips it (float32), by one step or so.
    diff = np.max(np.abs(np.asarray(k_jax, np.int64) - np.asarray(k_np, np.int64)))
    if diff > 2:
        raise AssertionError(f"{name}: pgjax and NumPy ran different numbers of iterations ({k_jax} vs {k_np})")


_THREADS_ENV = "PGJAX_BENCH_THREADS"


def _restart_with_threads(n: int) -> None:
    """Re-run this script with thread limits in the environment (they must be set before numpy/jax load)."""
    if n < 1:
        raise SystemExit("--threads must be >= 1")
    env = dict(os.environ)
    env[_THREADS_ENV] = str(n)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(n)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--x64", action="store_true", help="float64 (jax_enable_x64) instead of float32")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: small sizes, short timings")
    parser.add_argument(
        "--out", default=None, help="CSV path (default runs/bench/tabular.csv; runs/bench/tabular_x64.csv with --x64)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of states S (default 10 100 1000)")
    parser.add_argument("--batch", type=int, default=None, help="number of MDPs in the vmapped batch (default 1024)")
    parser.add_argument("--batch-states", type=int, default=20, help="S of each MDP in the batch (default 20)")
    parser.add_argument(
        "--min-time", type=float, default=None, help="seconds of repeated calls per timing (default 0.5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit the BLAS/LAPACK thread pools (NumPy's and the one jax's CPU LAPACK calls use) to this many "
        "threads; steadier figures on a small or shared machine (default: the libraries' own choice)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=["highest", "default"],
        default="highest",
        help="jax_default_matmul_precision for the pgjax side (default: highest, i.e. true float32 products; "
        "'default' lets GPUs use TF32 for float32 einsums, ~1e-2 relative error in the gradient)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Checked before anything runs (--batch 0 read as "unset" and ran 1024; negative sizes crashed in jax).
    for flag, value in (("--batch", args.batch), ("--batch-states", args.batch_states), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1; got {value}")
    if args.sizes is not None and min(args.sizes) < 2:
        parser.error(f"--sizes must all be >= 2 (states); got {args.sizes}")
    if args.min_time is not None and not args.min_time > 0:
        parser.error(f"--min-time must be > 0; got {args.min_time}")
    tables.check_output_path(parser.error, "--out", args.out or os.path.join(
        "runs", "bench", "tabular_x64.csv" if args.x64 else "tabular.csv"), "file")
    if args.threads is not None and os.environ.get(_THREADS_ENV) != str(args.threads):
        _restart_with_threads(args.threads)

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if args.matmul_precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    dtype = jnp.float64 if args.x64 else jnp.float32
    sizes = args.sizes or ([10, 30] if args.quick else [10, 100, 1000])
    batch = args.batch if args.batch is not None else (16 if args.quick else 1024)
    min_time = args.min_time if args.min_time is not None else (0.02 if args.quick else 0.5)
    min_calls = 1 if args.quick else 3
    out = args.out or os.path.join("runs", "bench", "tabular_x64.csv" if args.x64 else "tabular.csv")
    # Tolerance of the pgjax-vs-NumPy checks, relative to the largest entry of the reference.
    tol_check = 1e-9 if args.x64 else 2e-3
    if not args.x64 and args.matmul_precision == "default" and jax.default_backend() != "cpu":
        tol_check = 5e-2  # TF32 products (10-bit mantissa) on GPUs

    device = jax.devices()[0]
    meta = {
        "dtype": np.dtype(dtype).name,
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.device_kind}",
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
    }
    print("pgjax tabular benchmark: pgjax (jit) vs plain NumPy")
    print(f"  pgjax {pgjax.__version__}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, numpy {np.__version__}")
    print(f"  python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPU cores visible")
    print(f"  jax backend {jax.default_backend()}, devices {[f'{d.platform}:{d.device_kind}' for d in jax.devices()]}")
    print("  NumPy always runs on the host CPU.")
    thread_vars = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")
    print("  threads: " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in thread_vars))
    print(f"  dtype {meta['dtype']}, A = {NUM_ACTIONS}, gamma = {DISCOUNT}, S in {sizes}, batch {batch} MDPs of S = "
          f"{args.batch_states}")  # fmt: skip
    print(f"  policy_gradient uses random dense features phi [S, {NUM_ACTIONS}, {NUM_FEATURES}] (D = {NUM_FEATURES}),"
          f" not one-hot tabular ones (D = S*A)")  # fmt: skip
    print(f"  matmul precision: {args.matmul_precision} (jax_default_matmul_precision), check tolerance {tol_check:g}")
    print(f"  fixed point: default tolerance {_fixed_point_tolerance(dtype):g} (max-norm change), as pgjax")
    print(f"  timing: first call = compile s; then repeat until >= {min_time:g} s (and >= {min_calls} calls);")
    print("          calls/s = calls / total time, median = median per-call time; ratio = pgjax / numpy calls/s,")
    print("          median ratio = numpy median / pgjax median (less sensitive to a busy machine); > 1: pgjax faster")
    print(flush=True)

    key = jax.random.PRNGKey(args.seed)
    rows: list[Row] = []
    t_start = time.perf_counter()
    for i, S in enumerate(sizes):
        print(f"... S = {S}", flush=True)
        faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
        rows += bench_single(S, dtype, jax.random.fold_in(key, i), min_time, min_calls, tol_check)
    print(f"... batch of {batch} MDPs, S = {args.batch_states}", flush=True)
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    rows += bench_batch(batch, args.batch_states, dtype, jax.random.fold_in(key, 10_000), min_time, min_calls,
                        tol_check)  # fmt: skip
    # Group rows by computation (single sizes first, then the batch).
    order = ["policy_gradient", "occupancy solve", "occupancy fixed_point"]
    faulthandler.cancel_dump_traceback_later()
    rows.sort(key=lambda r: (r.computation.startswith("vmap"), order.index(r.computation.removeprefix("vmap "))))

    print()
    print(format_table(rows))
    print()
    print("fixed-point iterations (pgjax / numpy):")
    for r in rows:
        if r.jax_iterations:
            print(f"  {r.computation:<28} S={r.num_states:<5} batch={r.batch:<5} {r.numpy_variant:<8} "
                  f"{r.jax_iterations} / {r.numpy_iterations}")  # fmt: skip
    print("correctness: every pgjax result matched its NumPy twin (the 'ok' lines above).")
    for r in rows:
        if r.jax_t is None:
            print(f"  not checked, not timed: {r.computation} ({r.numpy_variant}): {r.note}")
    write_csv(out, rows, meta)
    print(f"\nwrote {out}  (total {time.perf_counter() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
