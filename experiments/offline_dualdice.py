"""Off-policy evaluation and offline gradients vs dataset size: DualDICE, importance sampling, model-based.

    python experiments/offline_dualdice.py [--mdp taxi --alphas 0.7 0.3 --sizes 10 30 100 300 1000 --seeds 16]

The shape of the tabular experiment of DualDICE (Nachum et al., 2019): on the continuing Taxi
MDP (500 states, 6 actions), a near-optimal target policy pi = softmax(Q*/temperature) is
evaluated from episodes logged by the behaviour policy mu = alpha pi + (1 - alpha) uniform.
For each alpha (the mismatch) and each number of logged trajectories, `--seeds` independent
datasets are drawn and estimated in one vmapped, compiled call. Every alpha draws its datasets of
one size from the same keys (common random numbers: a difference between alphas is the mismatch's,
not the draws'). Reported against the exact answers of `pgjax.tabular`:

  * log RMSE of the normalised value (1 - gamma) J(pi) for DualDICE, self-normalised DualDICE,
    the model-based estimate, and trajectory-wise / per-decision IS (plain and weighted; these estimate the
    --horizon-step return, scored against J like the others: a warning says when gamma^H > 1e-3);
  * the DualDICE ratio error sqrt(sum_{s,a} d^D (w_hat - w)^2), with d^D the logged distribution;
  * the offline gradient error (cosine and relative error) of the DualDICE + FQE gradient and
    of the per-decision IS gradient against the exact policy gradient at pi.

Finally, offline policy improvement: from one dataset of --improve-size trajectories per alpha,
--improve-steps Adam steps of the DualDICE + FQE gradient (with the V_hat baseline and pessimistic
values for unseen pairs), starting from the behaviour policy; the true J of each iterate is
computed exactly.

Writes `values.csv` (one row per alpha, size, seed and method), `summary.csv`, `log_rmse.png`,
`ratio_gradient_error.png`, `improvement.csv` and `improvement.png` to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import pgjax.offline as off
from pgjax import tables
import pgjax.tabular as tab

VALUE_METHODS = ("dualdice", "dualdice_sn", "model", "is", "pdis", "wis", "wpdis")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mdp", choices=("taxi", "random"), default="taxi")
    p.add_argument("--discount", type=float, default=0.95)
    p.add_argument("--horizon", type=int, default=200, help="steps per logged trajectory")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.7, 0.3],
                   help="behaviour = alpha pi + (1-alpha) uniform")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300, 1000], help="trajectories per dataset")
    p.add_argument("--seeds", type=int, default=16, help="independent datasets per point (vmapped)")
    p.add_argument("--temperature", type=float, default=0.5, help="target pi = softmax(Q* / temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--improve-steps", type=int, default=150, help="offline improvement steps (0 to skip)")
    p.add_argument("--improve-size", type=int, default=300, help="trajectories in the improvement dataset")
    p.add_argument("--improve-lr", type=float, default=0.5, help="Adam learning rate of the improvement")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    p.add_argument("--out", default="runs/offline-dualdice")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.improve_steps < 0 or args.improve_size < 1 or not 0 < args.improve_lr < math.inf:  # NaN fails too
        p.error("--improve-steps must be >= 0, --improve-size >= 1 and --improve-lr a finite number > 0")
    tables.check_output_path(p.error, "--out", args.out, "dir")
    for name in ("horizon", "seeds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if any(n < 1 for n in args.sizes):
        p.error(f"--sizes must all be >= 1; got {args.sizes}")
    if any(not 0.0 <= a <= 1.0 for a in args.alphas):
        p.error(f"--alphas must lie in [0, 1]; got {args.alphas}")
    if not 0.0 < args.discount < 1.0:
        p.error(f"--discount must lie in (0, 1); got {args.discount}")
    if not args.x64 and np.float32(args.discount) == 1.0:  # the MDP holds it in float32
        p.error(f"--discount {args.discount} rounds to 1.0 in float32; use a smaller one or --x64")
    if not 0 < args.temperature < math.inf:
        p.error(f"--temperature must be a finite number > 0; got {args.temperature}")
    return args


def optimal_q(mdp: tab.MDP) -> np.ndarray:
    """Q* [S, A] by exact policy iteration, in float64 whatever the run's precision."""
    with jax.enable_x64(True):
        mdp64 = tab.MDP(*(np.asarray(x, np.float64) for x in (mdp.transition, mdp.reward, mdp.initial, mdp.discount)))
        return np.asarray(tab.policy_iteration(mdp64).action_values)


def make_problem(args):
    if args.mdp == "taxi":
        mdp = tab.taxi_mdp(args.discount)
    else:
        mdp = tab.random_mdp(jax.random.key(args.seed), 20, 4, discount=args.discount)
    num_states, num_actions = mdp.reward.shape
    features = tab.tabular_features(num_states, num_actions)
    q_star = optimal_q(mdp)
    theta = jnp.asarray(q_star / args.temperature, mdp.reward.dtype).reshape(-1)
    return mdp, features, theta, q_star


def make_estimator(mdp, features, theta, num_trajectories, horizon):
    """A jitted function of (keys [K], behaviour [S, A]): every estimate for one dataset size.

    The behaviour policy is an argument, so all mismatches of a size share one compilation.
    """
    num_states, num_actions = mdp.reward.shape
    gamma = mdp.discount
    target = tab.softmax_policy(theta, features)

    def one(key, behaviour):
        data = off.sample_dataset(key, mdp, behaviour, num_trajectories, horizon)
        model = off.empirical_model(data, num_states, num_actions)
        solution = off.solve_empirical(model, target, gamma)  # d_hat, Q_hat and J_hat from one LU
        w = off.ratio_from_occupancy(model, solution.occupancy)
        values = {
            "dualdice": off.ratio_weighted_value(data, w, gamma),
            "dualdice_sn": off.ratio_weighted_value(data, w, gamma, normalised=True),
            "model": solution.value,
        }
        for method in off.IS_METHODS:
            values[method] = off.tabular_importance_value(data, target, gamma, method)
        gradients = {
            "dualdice": off.offline_policy_gradient(data, theta, features, gamma, w, solution.q_values),
            "pdis": off.importance_policy_gradient(data, theta, features, gamma, "pdis"),
        }
        return values, w, gradients, off.coverage(model, target, gamma, solution.occupancy).mass

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def cosine(a, b):
    return float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30), -1.0, 1.0))  # rounding can pass 1


def run(args) -> list[dict]:
    mdp, features, theta, q_star = make_problem(args)
    gamma = float(args.discount)
    target = tab.softmax_policy(theta, features)
    num_states, num_actions = mdp.reward.shape
    uniform = tab.uniform_policy(num_states, num_actions, mdp.reward.dtype)
    exact_j = float(tab.expected_return(mdp, target))
    exact_grad = np.asarray(tab.policy_gradient(mdp, theta, features), np.float64)
    print(f"{args.mdp}: S={num_states} A={num_actions} gamma={gamma}; target J(pi)={exact_j:.4f} "
          f"(normalised {(1 - gamma) * exact_j:.4f}), J(uniform)={float(tab.expected_return(mdp, uniform)):.4f}")
    # The IS estimators estimate the --horizon-step return J_H, scored against J: the gap is theirs too.
    truncation = gamma**args.horizon * float(np.max(np.abs(np.asarray(mdp.reward)))) / (1 - gamma)
    if gamma**args.horizon > 1e-3:
        print(f"warning: the IS rows estimate the {args.horizon}-step return, up to {truncation:.3g} from J "
              f"(gamma^H = {gamma ** args.horizon:.3g}); raise --horizon to score the estimators, not the truncation")
    rows, summary = [], []
    points = [(a, n) for a in args.alphas for n in args.sizes]
    estimators = {}  # one compiled estimator per dataset size, shared by every behaviour policy
    bar = tqdm(points, desc="datasets", disable=args.no_progress)
    for alpha, n in bar:
        behaviour = alpha * target + (1.0 - alpha) * uniform
        d_data = off.logged_distribution(mdp, behaviour, args.horizon)
        true_w = np.asarray(off.exact_ratio(mdp, target, d_data), np.float64)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), n), args.seeds)
        start = time.perf_counter()
        compiles = n not in estimators  # the first behaviour policy of each size pays for compiling
        if compiles:
            estimators[n] = make_estimator(mdp, features, theta, n, args.horizon)
        values, w, grads, mass = jax.block_until_ready(estimators[n](keys, behaviour))
        seconds = time.perf_counter() - start
        truth = (1 - gamma) * exact_j
        point = {"alpha": alpha, "num_trajectories": n, "transitions": n * args.horizon, "seconds": round(seconds, 2),
                 "includes_compile": compiles}
        for method in VALUE_METHODS:
            est = (1 - gamma) * np.asarray(values[method], np.float64)
            for seed, e in enumerate(est):
                rows.append({"alpha": alpha, "num_trajectories": n, "seed": seed, "method": method,
                             "normalised_value": e, "truth": truth, "squared_error": (e - truth) ** 2})
            point[f"log_rmse_{method}"] = float(np.log(np.sqrt(np.mean((est - truth) ** 2))))
        d = np.asarray(d_data, np.float64)
        ratio_err = np.sqrt(np.sum(d * (np.asarray(w, np.float64) - true_w) ** 2, axis=(1, 2)))
        point["ratio_error"] = float(ratio_err.mean())
        point["ratio_error_of_w_equal_1"] = float(np.sqrt(np.sum(d * (1.0 - true_w) ** 2)))
        for name, g in grads.items():
            g = np.asarray(g, np.float64)
            point[f"grad_cosine_{name}"] = float(np.mean([cosine(gi, exact_grad) for gi in g]))
            point[f"grad_rel_error_{name}"] = float(
                np.mean(np.linalg.norm(g - exact_grad, axis=1) / np.linalg.norm(exact_grad)))
        point["uncovered_mass"] = float(np.mean(np.asarray(mass)))
        summary.append(point)
        bar.set_postfix(alpha=alpha, n=n, dualdice=f"{point['log_rmse_dualdice']:.2f}",
                        pdis=f"{point['log_rmse_pdis']:.2f}")
    write_outputs(args, rows, summary)
    if args.improve_steps > 0:
        improve(args, mdp, features, target, uniform, q_star)
    return summary


def improve(args, mdp, features, target, uniform, q_star):
    """Offline policy improvement from each behaviour policy's data; the true J of every iterate."""
    gamma = float(args.discount)
    j_star = float(np.asarray(mdp.initial) @ q_star.max(1))
    true_j = jax.jit(jax.vmap(lambda th: tab.expected_return(mdp, tab.softmax_policy(th, features))))
    curves, rows = {}, []
    print(f"\noffline improvement: {args.improve_steps} Adam steps (lr {args.improve_lr}) "
          f"on {args.improve_size} trajectories")
    print(f"{'alpha':>5} {'J(mu)':>10} {'J(final)':>10} {'J_hat(final)':>12} {'J(target)':>10} {'J*':>10} "
          f"{'uncovered':>9} {'seconds':>7}")
    for alpha in args.alphas:
        behaviour = alpha * target + (1.0 - alpha) * uniform
        data = off.collect(jax.random.fold_in(jax.random.key(args.seed), 10_000), mdp, behaviour, args.improve_size,
                           args.horizon)
        theta0 = jnp.log(behaviour).reshape(-1)
        start = time.perf_counter()
        result = off.offline_policy_improvement(
            data, theta0, features, gamma, optax.adam(args.improve_lr), args.improve_steps
        )
        values = np.asarray(true_j(result.thetas))
        seconds = time.perf_counter() - start
        curves[alpha] = values
        estimated = np.asarray(result.estimated_values)
        mass = np.asarray(result.uncovered_mass)
        for k in range(len(values)):
            rows.append({"alpha": alpha, "step": k, "true_value": values[k], "estimated_value": estimated[k],
                         "uncovered_mass": mass[k]})
        # g formats: near gamma = 1 the values reach 1e11 and fixed-width ones ran into the next column.
        print(f"{alpha:>5} {values[0]:>10.4g} {values[-1]:>10.4g} {estimated[-1]:>12.4g} "
              f"{float(tab.expected_return(mdp, target)):>10.4g} {j_star:>10.4g} {mass[-1]:>9.3f} {seconds:>7.1f}")
    tables.write_csv(os.path.join(args.out, "improvement.csv"), rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for alpha, values in curves.items():
        ax.plot(values, label=f"data from alpha={alpha}")
    ax.axhline(j_star, color="k", ls="--", label="J*")
    ax.set_xlabel("offline gradient step")
    ax.set_ylabel("true J(pi)")
    ax.set_title(f"offline policy improvement on {args.mdp}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "improvement.png"), dpi=120)
    plt.close(fig)


def write_outputs(args, rows, summary):
    os.makedirs(args.out, exist_ok=True)
    for name, table in (("values.csv", rows), ("summary.csv", summary)):
        tables.write_csv(os.path.join(args.out, name), table)
    header = (f"{'alpha':>5} {'N':>5} " + " ".join(f"{m:>11}" for m in VALUE_METHODS)
              + f" {'ratio err':>9} {'cos dice':>8} {'cos pdis':>8} {'uncov':>6}")
    print("\nlog RMSE of the normalised value (1-gamma) J, mean over seeds where noted")
    print(header)
    for p in summary:
        print(f"{p['alpha']:>5} {p['num_trajectories']:>5} "
              + " ".join(f"{p['log_rmse_' + m]:>11.3f}" for m in VALUE_METHODS)
              + f" {p['ratio_error']:>9.4f} {p['grad_cosine_dualdice']:>8.3f} {p['grad_cosine_pdis']:>8.3f} "
              f"{p['uncovered_mass']:>6.3f}")
    plot(args, summary)
    print(f"\nwrote {args.out}/values.csv, summary.csv, log_rmse.png, ratio_gradient_error.png")


def plot(args, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = list(dict.fromkeys(p["alpha"] for p in summary))
    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 4), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        pts = [p for p in summary if p["alpha"] == alpha]
        sizes = [p["num_trajectories"] for p in pts]
        for method in VALUE_METHODS:
            style = "--" if method == "model" else "-"
            ax.plot(sizes, [p[f"log_rmse_{method}"] for p in pts], style, marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("logged trajectories")
        ax.set_ylabel("log RMSE of (1-gamma) J")
        ax.set_title(f"{args.mdp}, behaviour alpha={alpha}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "log_rmse.png"), dpi=120)
    plt.close(fig)

    fig, (ax_w, ax_g) = plt.subplots(1, 2, figsize=(10, 4))
    for alpha in alphas:
        pts = [p for p in summary if p["alpha"] == alpha]
        sizes = [p["num_trajectories"] for p in pts]
        ax_w.plot(sizes, [p["ratio_error"] for p in pts], marker="o", label=f"alpha={alpha}")
        for name, style in (("dualdice", "-"), ("pdis", ":")):
            ax_g.plot(sizes, [p[f"grad_rel_error_{name}"] for p in pts], style, marker="o",
                      label=f"{name}, alpha={alpha}")
    for ax, title in ((ax_w, "DualDICE ratio error"), (ax_g, "relative gradient error")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("logged trajectories")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ratio_gradient_error.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    # --x64 for this run only: the caller's JAX keeps its precision when main returns.
    with jax.enable_x64(True) if args.x64 else contextlib.nullcontext():
        run(args)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
