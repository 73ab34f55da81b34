"""Reload a run written by experiments/train.py and evaluate each seed's final policy.

    python experiments/evaluate.py runs/ppo-CartPole-v1-... [--episodes 10] [--stochastic] [--csv PATH]

Prints each seed's mean return and writes every episode's return to RUN_DIR/evaluation.csv (or --csv):
columns seed, episode, episode_return, actions ("deterministic" or "stochastic").

RUN_DIR may also be a hyperparameter grid (train.py --grid): every cell's seeds are evaluated, one compile for
all of them, with the cell's number and values as the first columns, and a summary per cell of its seeds' mean
returns (`runs.summarize_final_returns`'s columns: median, mean with its 95% interval, worst, best, the paired
difference from the best cell, the interquartile mean with its bootstrap interval, P(> best)) is printed and
written next to it (evaluation_summary.csv).

Policies can be evaluated on another variant of their environment (a transfer or robustness test): each
`--env-kwarg KEY=VALUE` (repeatable) replaces one of the environment's keywords, e.g.

    python experiments/evaluate.py runs/ppo-CartPole-v1-... --env-kwarg length=1.0 --env-kwarg gravity=12

(the default CSV is then RUN_DIR/evaluation_length=1.0_gravity=12.csv, so the training variant's stays).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from pgjax import envs, runs, score_stats, tables


def evaluate_seeds(run, labels: list[int], args) -> tuple[list[float], list[dict]]:
    """Every seed of one loaded run (`runs.load_run`'s tuple; labels: its seeds' indices in the sweep):
    (mean return per seed, one row per episode)."""
    _, config, params, stats = run
    actions = "stochastic" if args.stochastic else "deterministic"
    means, rows = [], []
    for row, seed in enumerate(labels):  # seed i of the sweep is evaluated with key(--seed + i), wherever it ran
        seed_params = jax.tree_util.tree_map(lambda x: x[row], params)
        seed_stats = None if stats is None else jax.tree_util.tree_map(lambda x: x[row], stats)
        returns = np.asarray(runs.evaluate(jax.random.key(args.seed + seed), config, seed_params, seed_stats,
                                           args.episodes, deterministic=not args.stochastic), np.float64)
        means.append(float(np.nanmean(returns)))
        rows += [dict(seed=seed, episode=i, episode_return=float(r), actions=actions) for i, r in enumerate(returns)]
        print(f"  seed {seed}: mean return {means[-1]:.1f} (min {np.nanmin(returns):.1f}, max {np.nanmax(returns):.1f})")
    return means, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory of train.py, or a grid's (train.py --grid)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per seed")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--csv", default=None, help="where to write the episodes' returns (default RUN_DIR/evaluation.csv)")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluate on a variant of the environment: this keyword replaces the run's (repeatable; e.g. "
                        "length=1.0 for CartPole's pole); the value is read as JSON, else as text")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1; got {args.episodes}")
    try:
        variant = runs.parse_env_kwargs(args.env_kwarg)
    except ValueError as err:
        p.error(str(err))
    config_path = os.path.join(args.run_dir, "config.json")
    try:  # (a malformed config.json is a ValueError too)
        meta = {}
        if os.path.exists(config_path):
            with open(config_path) as f:
                meta = json.load(f)
        cells = meta.get("cells")  # a grid (train.py --grid): cell-K/ are its run directories
        dirs = [os.path.join(args.run_dir, f"cell-{k}") for k in range(len(cells))] if cells else [args.run_dir]
        loaded = [runs.load_run(d) for d in dirs]
        if variant:  # every run's own keywords, then the variant's
            loaded = [(algo, config.replace(env_kwargs={**dict(config.env_kwargs), **variant}), params, stats)
                      for algo, config, params, stats in loaded]
            envs.make(loaded[0][1].env_id, **dict(loaded[0][1].env_kwargs))  # an unknown keyword fails here
    except ValueError as err:
        p.error(f"{config_path}: {err}" if isinstance(err, json.JSONDecodeError) else str(err))
    algo, config, params, _ = loaded[0]
    num_seeds = jax.tree_util.tree_leaves(params)[0].shape[0]
    labels = meta.get("seed_indices", list(range(num_seeds)))  # a replay's seeds
    what = f"{len(cells)} cells x {num_seeds} seeds" if cells else f"{num_seeds} seeds"
    on = f" ({', '.join(f'{k}={v}' for k, v in variant.items())})" if variant else ""
    print(f"{algo.upper()} on {config.env_id}{on}, {what}, {args.episodes} episodes each "
          f"({'stochastic' if args.stochastic else 'deterministic'} actions)")
    if not cells:
        means, rows = evaluate_seeds(loaded[0], labels, args)
        print(f"median over seeds {np.median(means):.1f}, worst {np.min(means):.1f}, IQM {score_stats.iqm(means):.1f}")
    else:
        rows, cell_means = [], []
        for index, (cell, run) in enumerate(zip(cells, loaded)):
            print(f"cell {index} ({runs.cell_label(cell)}):")
            means, cell_rows = evaluate_seeds(run, labels, args)
            rows += [{"cell": index, **cell, **row} for row in cell_rows]
            cell_means.append(np.array(means))
        # Every cell evaluates the same seeds with the same keys: paired, like the training summary.
        cell_stats = runs.summarize_final_returns(cell_means, [None] * len(cells), paired=True)
        summary = [{"cell": index, **cell, **row} for index, (cell, row) in enumerate(zip(cells, cell_stats))]
        print("over each cell's seeds' mean returns:")
        for row in summary:
            print(f"  cell {row['cell']} ({runs.cell_label(cells[row['cell']])}): median {row['median']:.1f}, "
                  f"mean {row['mean']:.1f}, worst {row['worst']:.1f}, best {row['best']:.1f}, IQM {row['iqm']:.1f}, "
                  f"vs best {row['vs_best']:+.1f} +- {row['vs_best_ci95']:.1f}")
    name = "evaluation" + "".join(f"_{k}={v}" for k, v in variant.items()) + ".csv"
    path = args.csv or os.path.join(args.run_dir, name)
    tables.write_csv(path, rows)
    print(f"wrote {path}")
    if cells:
        summary_path = os.path.splitext(path)[0] + "_summary.csv"
        tables.write_csv(summary_path, summary)
        print(f"wrote {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
