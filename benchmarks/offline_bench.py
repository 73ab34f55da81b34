"""Throughput of pgjax's offline pipeline on Taxi (500 states, 6 actions) against plain NumPy, side by side.

Rows, each timed for pgjax (jitted once) and for a vectorised NumPy twin of the same arithmetic:

  * ``collect``  logging N = 1000 episodes of T = 200 steps of a behaviour policy (200k transitions):
    pgjax `pgjax.offline.collect` (a `lax.scan`, inverse-CDF sampling) vs NumPy stepping all N episodes
    at once per time step (inverse-CDF sampling with `argmax(cdf > u)`); transitions per second.
  * ``dualdice``  the tabular DualDICE ratio from that dataset (count n(s,a), n(s,a,s'), mu0_hat; one
    500x500 solve for d_hat^pi; w = d_hat^pi / d^D): `empirical_model` + `dualdice_ratio` vs `np.add.at`
    + `np.linalg.solve`; calls per second. The two results are checked against each other first.
  * ``pdis``  the per-decision IS estimate on the same dataset; calls per second.
  * ``sweep``  16 datasets of 100 episodes, each logged, DualDICE-evaluated and PDIS-evaluated: one
    `jit(vmap(...))` call vs a NumPy loop over the 16; datasets per second.

Method: first call timed on its own (compile), then repeated calls until --min-time seconds.

Usage:
  python benchmarks/offline_bench.py [--min-time 1.0] [--out runs/bench/offline.csv]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import pgjax.offline as off
from pgjax import tables
import pgjax.tabular as tab

GAMMA = 0.95


def timed(fn, min_time):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    calls, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn())
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 3:
            return out, first, elapsed / calls


def np_collect(rng, P, mu0, pi, n, horizon):
    p_cdf, pi_cdf, mu_cdf = np.cumsum(P, -1), np.cumsum(pi, -1), np.cumsum(mu0)
    s = (mu_cdf[None] > rng.random((n, 1)) * mu_cdf[-1]).argmax(1)
    states, actions, next_states = (np.empty((n, horizon), np.int32) for _ in range(3))
    for t in range(horizon):
        a = (pi_cdf[s] > rng.random((n, 1))).argmax(1)
        s_next = (p_cdf[s, a] > rng.random((n, 1))).argmax(1)
        states[:, t], actions[:, t], next_states[:, t] = s, a, s_next
        s = s_next
    return states, actions, next_states


def np_dualdice(states, actions, next_states, initial, pi, num_states, num_actions, gamma):
    counts = np.zeros((num_states, num_actions))
    np.add.at(counts, (states, actions), 1.0)
    trans = np.zeros((num_states, num_actions, num_states))
    np.add.at(trans, (states, actions, next_states), 1.0)
    seen = counts > 0
    p_hat = trans / np.where(seen, counts, 1.0)[..., None]
    mu0 = np.bincount(initial, minlength=num_states) / len(initial)
    p_pi = np.einsum("sa,sat->st", pi, p_hat)  # unseen pairs leak to the sink: rows sum below 1
    d_state = np.linalg.solve((np.eye(num_states) - gamma * p_pi).T, (1 - gamma) * mu0)
    return np.where(seen, d_state[:, None] * pi / np.where(seen, counts / counts.sum(), 1.0), 0.0)


def np_pdis(rewards, target_p, behaviour_p, gamma):
    w = np.cumprod(target_p / behaviour_p, axis=1)
    return np.mean(np.sum(w * gamma ** np.arange(rewards.shape[1]) * rewards, axis=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--sweep", type=int, default=16, help="datasets in the sweep row")
    p.add_argument("--out", default="runs/bench/offline.csv")
    args = p.parse_args(argv)
    for flag in ("episodes", "horizon", "sweep"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1; got {getattr(args, flag)}")
    if not args.min_time > 0:
        p.error(f"--min-time must be > 0; got {args.min_time}")
    tables.check_output_path(p.error, "--out", args.out, "file")

    mdp = tab.taxi_mdp(GAMMA)
    S, A = mdp.reward.shape
    q = np.asarray(mdp.reward, np.float64)
    for _ in range(300):
        q = np.asarray(mdp.reward) + GAMMA * np.asarray(mdp.transition) @ q.max(1)
    pi = jax.nn.softmax(jnp.asarray(q / 0.5, jnp.float32), -1)
    mu = 0.3 * pi + 0.7 / A
    P, R, mu0 = (np.asarray(x, np.float64) for x in (mdp.transition, mdp.reward, mdp.initial))
    pi_np, mu_np = np.asarray(pi, np.float64), np.asarray(mu, np.float64)
    N, T = args.episodes, args.horizon
    print(f"jax {jax.__version__} on {jax.devices()[0]}; Taxi S={S} A={A}, N={N} episodes x T={T} steps")

    rows = []

    def row(name, unit, work, pg_first, pg_call, np_call):
        rows.append(dict(row=name, unit=unit, pgjax_compile_s=round(pg_first - pg_call, 2),
                         pgjax_per_s=work / pg_call, numpy_per_s=work / np_call, ratio=np_call / pg_call))

    collect = jax.jit(lambda k: off.sample_dataset(k, mdp, mu, N, T))
    data, first, per = timed(lambda: collect(jax.random.key(0)), args.min_time)
    rng = np.random.default_rng(0)
    _, _, np_per = timed(lambda: np_collect(rng, P, mu0, mu_np, N, T), args.min_time)
    row("collect", "transitions/s", N * T, first, per, np_per)

    dice = jax.jit(lambda d: off.dualdice_ratio(off.empirical_model(d, S, A), pi, GAMMA))
    w, first, per = timed(lambda: dice(data), args.min_time)
    arrays = [np.asarray(x)
              for x in (data.observations, data.actions, data.next_observations, data.initial_observations)]
    w_np, _, np_per = timed(lambda: np_dualdice(*arrays, pi_np, S, A, GAMMA), args.min_time)
    err = float(np.max(np.abs(np.asarray(w) - w_np)) / np.max(np.abs(w_np)))
    assert err < 1e-3, f"dualdice: pgjax and NumPy disagree (max rel diff {err:.2e})"
    row("dualdice", "calls/s", 1, first, per, np_per)

    pdis = jax.jit(lambda d: off.tabular_importance_value(d, pi, GAMMA, "pdis"))
    v, first, per = timed(lambda: pdis(data), args.min_time)
    s, a = arrays[0], arrays[1]
    rewards = np.asarray(data.rewards, np.float64)
    v_np, _, np_per = timed(lambda: np_pdis(rewards, pi_np[s, a], mu_np[s, a], GAMMA), args.min_time)
    row("pdis", "calls/s", 1, first, per, np_per)

    n_small = 100

    def one(key):
        d = off.sample_dataset(key, mdp, mu, n_small, T)
        w = off.dualdice_ratio(off.empirical_model(d, S, A), pi, GAMMA)
        return off.ratio_weighted_value(d, w, GAMMA), off.tabular_importance_value(d, pi, GAMMA, "pdis")

    sweep = jax.jit(jax.vmap(one))
    keys = jax.random.split(jax.random.key(1), args.sweep)
    _, first, per = timed(lambda: sweep(keys), args.min_time)

    def np_sweep():
        out = []
        for _ in range(args.sweep):
            st, ac, nx = np_collect(rng, P, mu0, mu_np, n_small, T)
            w = np_dualdice(st, ac, nx, st[:, 0], pi_np, S, A, GAMMA)
            r = R[st, ac]
            out.append((np.mean(w[st, ac] * r) / (1 - GAMMA), np_pdis(r, pi_np[st, ac], mu_np[st, ac], GAMMA)))
        return out

    _, _, np_per = timed(np_sweep, args.min_time)
    row("sweep", "datasets/s", args.sweep, first, per, np_per)

    print(f"\ndualdice check: max rel diff pgjax vs NumPy {err:.1e}; PDIS {float(v):.4f} (pgjax) vs {v_np:.4f} (NumPy)")
    print(f"\n{'row':<10} {'unit':<15} {'compile s':>9} {'pgjax':>14} {'numpy':>14} {'pgjax/numpy':>11}")
    for r in rows:
        print(f"{r['row']:<10} {r['unit']:<15} {r['pgjax_compile_s']:>9.2f} {r['pgjax_per_s']:>14,.1f} "
              f"{r['numpy_per_s']:>14,.1f} {r['ratio']:>11.2f}")
    tables.write_csv(args.out, rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
