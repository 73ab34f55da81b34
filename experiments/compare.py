"""Compare saved training runs: learning curves on one plot and a table of final returns.

    python experiments/compare.py runs/ppo-CartPole-v1-... runs/trpo-CartPole-v1-... [--labels PPO TRPO]
    python experiments/compare.py runs/ppo-grid runs/a2c-run --out runs/compare-cartpole

Each RUN is a run directory of experiments/train.py, or a grid's (train.py --grid), which adds one entry per
cell. All runs must be on the same environment id; variants of it (env_kwargs, env_randomize, a grid's env.<field>
cells) are named in the env_variant column and in a note. Reads each run's metrics.csv and config.json (nothing is
recomputed) and writes to --out (default runs/compare-<time>):

    comparison.csv       one row per run (or cell): label, algo, env_variant, env steps, seeds, then the final
                         return over seeds (each seed's mean episode return over the last 10% of updates): median, mean,
                         ci95 (half-width of a 95% Student-t interval of the mean), worst, best, finished
                         (seeds with a final return: an episode ended in the last 10% of updates), and vs_best /
                         vs_best_ci95, the difference of means from the best run (the highest mean among the
                         runs whose seeds all finished; among all runs if none did) and its 95% t interval:
                         paired seed by seed when all runs share the base --seed and seed indices (the `paired`
                         column), Welch's for independent means otherwise; with in-run evaluations (--eval-every),
                         eval_median, eval_mean and eval_worst of the last one; auc / auc_ci95, the mean over
                         seeds of each seed's mean return over all updates (the area under its learning curve per
                         env step: how fast as well as how far), with its 95% t interval; iqm, iqm_low,
                         iqm_high, the interquartile mean of the final returns (the middle 50% of seeds) and its
                         95% bootstrap interval;
                         p_improve_vs_best, the probability that a seed of this run ends above a seed of the best
                         run (0.5: indistinguishable; `pgjax.score_stats`); diverged, the seeds whose losses, KL or
                         gradient norms went NaN or infinite (train.py reported them; their later returns are a NaN
                         policy's, counted as they are, and named on stderr); with --threshold X, reached (seeds
                         whose mean return over 10 updates reached X) and steps_to_threshold_median (their median
                         env steps to get there)
    learning_curves.png  mean episode return over seeds against env steps, one curve per run, 95% t intervals
    score_profiles.png   the fraction of each run's seeds whose final return is >= tau, against tau: the seeds left
                         behind are its left tail

Runs of different algorithms started from the same --seed share their seeds' keys but use them differently, so
pairing there gains little precision; the interval is valid either way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from pgjax import runs, score_stats, tables


def load_entries(run_dir: str, name: str | None = None) -> list[dict]:
    """The run (or each cell of a grid) in `run_dir`: label (`name`, default the directory's name; a cell's adds
    its values), algo, env, base seed, seed labels, metrics, final returns and each seed's first diverged update
    (-1: none)."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{run_dir!r} is not a pgjax run directory: config.json is missing.")
    try:
        with open(config_path) as f:
            meta = json.load(f)
        algo, env_id, seed = meta["algo"], meta["config"]["env_id"], meta["seed"]
    except (ValueError, KeyError, TypeError) as err:  # (TypeError: JSON that is not an object of objects)
        raise ValueError(f"{config_path}: not a run config written by experiments/train.py ({err}).") from None
    name = name or os.path.basename(os.path.normpath(run_dir))
    cells = meta.get("cells")
    parts = ([(os.path.join(run_dir, f"cell-{k}"), f"{name}: {runs.cell_label(cell)}") for k, cell in enumerate(cells)]
             if cells else [(run_dir, name)])
    entries = []
    for directory, label in parts:
        seeds, metrics, _ = runs.read_metrics(directory)  # ValueError naming the file, row and column if malformed
        entries.append(dict(label=label, algo=algo, env_id=env_id, env_variant=env_variant(directory), seed=seed,
                            seeds=seeds, metrics=metrics, final=runs.final_returns(metrics),
                            diverged_at=runs.diverged_updates(metrics)))
    return entries


def env_variant(run_dir: str) -> str:
    """The environment settings a run trained with beyond its id, from its config.json (a grid cell's holds the
    cell's "env.<field>" values): "length=2 randomize gravity=[9, 11]", or "" for the default environment."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    kwargs = config.get("env_kwargs") or {}
    randomize = config.get("env_randomize") or {}
    parts = [f"{k}={v}" for k, v in sorted(kwargs.items())]
    parts += [f"randomize {k}={v}" for k, v in sorted(randomize.items())]
    return " ".join(parts)


def comparison_rows(entries: list[dict], threshold: float | None = None,
                    resamples: int = 2000) -> tuple[list[dict], bool]:
    """`runs.summarize_final_returns` over the entries' final returns, paired when every entry has the same
    base seed and seed labels (its IQM intervals from `resamples` bootstrap resamples), plus the area under each
    learning curve (`runs.area_under_curve`: auc, auc_ci95 over seeds) and, with a threshold, how many seeds
    reached it and the median env steps they took (`runs.steps_to_threshold`); returns (rows, paired)."""
    paired = len({(e["seed"], tuple(e["seeds"])) for e in entries}) == 1
    returns = [e["final"] for e in entries]
    evals = [runs.last_evaluation(e["metrics"]) for e in entries]
    rows = runs.summarize_final_returns(returns, evals, paired, resamples)
    # Not every run has in-run evaluations: the evaluation columns are empty for those that have none.
    eval_columns = dict.fromkeys(c for row in rows for c in row if c.startswith("eval_"))
    table = []
    for e, row in zip(entries, rows):
        auc, auc_half = runs.mean_and_interval(runs.area_under_curve(e["metrics"])[:, None])
        diverged = int(np.sum(e["diverged_at"] >= 0))
        table.append({"label": e["label"], "algo": e["algo"], "env_variant": e["env_variant"], "paired": paired,
                      "env_steps": int(np.nanmax(e["metrics"]["env_steps"][:, -1])), **row,
                      **{c: "" for c in eval_columns if c not in row}, "auc": float(auc[0]),
                      "auc_ci95": float(auc_half[0]), "diverged": diverged})
        if threshold is not None:
            steps = runs.steps_to_threshold(e["metrics"], threshold)
            reached = steps[~np.isnan(steps)]
            table[-1].update(threshold=threshold, reached=int(reached.size),
                             steps_to_threshold_median=float(np.median(reached)) if reached.size else float("nan"))
    return table, paired


def plot_score_profiles(path: str, finals: dict[str, np.ndarray], title: str) -> None:
    """Per run ({label: final returns [seeds]}), the fraction of its seeds whose final return is >= tau
    (`score_stats.performance_profile`), over tau from the lowest to the highest final return of all runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.concatenate(list(finals.values()))
    values = values[~np.isnan(values)]
    low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)
    taus = np.linspace(low, high, 200) if high > low else np.array([low - 1.0, low, low + 1.0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, final in finals.items():
        ax.step(taus, score_stats.performance_profile(final, taus), where="post", label=label)
    ax.set_xlabel("final return tau")
    ax.set_ylabel("fraction of seeds with final return >= tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of train.py (a grid adds its cells)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one label per RUN (default: the directory names; a grid's cells add their values)")
    p.add_argument("--out", default=None, help="output directory (default runs/compare-<time>)")
    p.add_argument("--title", default=None, help="the plot's title (default: the environment)")
    p.add_argument("--threshold", type=float, default=None,
                   help="also report how many seeds reached this mean episode return (over 10 updates) and the "
                        "median env steps they took (e.g. 475 on CartPole-v1)")
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples of the seeds for the interquartile mean's interval (default 2000)")
    args = p.parse_args(argv)
    if args.resamples < 1:
        p.error(f"--resamples must be >= 1; got {args.resamples}")
    if args.labels is not None and len(args.labels) != len(args.runs):
        p.error(f"--labels needs one label per RUN: {len(args.runs)} runs, {len(args.labels)} labels")
    if args.threshold is not None and not math.isfinite(args.threshold):
        p.error(f"--threshold must be a finite return; got {args.threshold}")
    tables.check_output_path(p.error, "--out", args.out, "dir")
    entries = []
    try:
        for index, run_dir in enumerate(args.runs):
            entries += load_entries(run_dir, None if args.labels is None else args.labels[index])
    except ValueError as err:
        p.error(str(err))
    envs = dict.fromkeys(e["env_id"] for e in entries)
    if len(envs) > 1:
        p.error("the runs are on different environments ("
                + ", ".join(f"{e['label']}: {e['env_id']}" for e in entries) + "); compare runs of one environment")
    labels = [e["label"] for e in entries]
    if len(set(labels)) < len(labels):
        p.error(f"two runs share a label ({labels}): name them with --labels")

    for e in entries:  # a diverged seed's returns are a NaN policy's (CartPole: 8-10), counted as a failed seed's
        if np.any(e["diverged_at"] >= 0):
            print(f"warning: {e['label']}: seeds " + ", ".join(f"{seed} (from update {u})" for seed, u in
                                                              zip(e["seeds"], e["diverged_at"]) if u >= 0)
                  + " diverged (a loss, KL or gradient norm NaN or infinite); their later returns are a NaN "
                  "policy's, counted as they are", file=sys.stderr)
    rows, paired = comparison_rows(entries, args.threshold, args.resamples)
    env_id = next(iter(envs))
    print(f"{len(entries)} runs on {env_id}; final return = each seed's mean episode return over the last 10% of "
          f"updates; vs best: {'paired by seed' if paired else 'independent (the runs do not share their seeds)'}")
    if len({e["env_variant"] for e in entries}) > 1:  # e.g. a robustness study, or a grid over env.<field>
        print(f"note: the runs trained on different variants of {env_id} (column env_variant): "
              + "; ".join(f"{e['label']}: {e['env_variant'] or 'default'}" for e in entries))
    width = max(len(label) for label in labels)
    for row in rows:
        evaluation = (f", evaluation median {row['eval_median']:.1f} worst {row['eval_worst']:.1f}"
                      if row.get("eval_median", "") != "" else "")
        reached = (f", {row['reached']}/{row['seeds']} reached {args.threshold:g} (median "
                   f"{row['steps_to_threshold_median']:,.0f} steps)" if args.threshold is not None else "")
        unfinished = f" ({row['finished']} finished)" if row["finished"] < row["seeds"] else ""
        unfinished += f" ({row['diverged']} diverged)" if row["diverged"] else ""
        print(f"  {row['label']:<{width}}  {row['seeds']:>4} seeds{unfinished}  median {row['median']:8.1f}  mean "
              f"{row['mean']:8.1f} +- {row['ci95']:5.1f}  worst {row['worst']:8.1f}  vs best {row['vs_best']:+8.1f} "
              f"+- {row['vs_best_ci95']:5.1f}, IQM {row['iqm']:.1f} [{row['iqm_low']:.1f}, {row['iqm_high']:.1f}], "
              f"P(> best) {row['p_improve_vs_best']:.2f}, auc {row['auc']:.1f} +- {row['auc_ci95']:.1f}"
              f"{reached}{evaluation}")
    out = args.out or os.path.join("runs", f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)
    tables.write_csv(os.path.join(out, "comparison.csv"), rows)
    runs.plot_learning_curves(os.path.join(out, "learning_curves.png"), {e["label"]: e["metrics"] for e in entries},
                              args.title or env_id)
    plot_score_profiles(os.path.join(out, "score_profiles.png"), {e["label"]: e["final"] for e in entries},
                        args.title or env_id)
    print(f"wrote {out}/comparison.csv, learning_curves.png, score_profiles.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
