"""Reload a run written by experiments/train.py and evaluate each seed's final policy.

    python experiments/evaluate.py runs/ppo-CartPole-v1-... [--episodes 10] [--stochastic] [--csv PATH]

Prints each seed's mean return and writes every episode's return to RUN_DIR/evaluation.csv (or --csv):
columns seed, episode, episode_return, actions ("deterministic" or "stochastic").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from pgjax import runs, tables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=10, help="episodes per seed")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--csv", default=None, help="where to write the episodes' returns (default RUN_DIR/evaluation.csv)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1; got {args.episodes}")
    try:
        algo, config, params, stats = runs.load_run(args.run_dir)
    except ValueError as err:
        p.error(str(err))
    num_seeds = jax.tree_util.tree_leaves(params)[0].shape[0]
    with open(os.path.join(args.run_dir, "config.json")) as f:  # a replay (train.py --seed-indices) saves its seeds'
        labels = json.load(f).get("seed_indices", list(range(num_seeds)))
    print(f"{algo.upper()} on {config.env_id}, {num_seeds} seeds, {args.episodes} episodes each "
          f"({'stochastic' if args.stochastic else 'deterministic'} actions)")
    means, rows = [], []
    actions = "stochastic" if args.stochastic else "deterministic"
    for row, seed in enumerate(labels):  # seed i of the sweep is evaluated with key(--seed + i), wherever it ran
        seed_params = jax.tree_util.tree_map(lambda x: x[row], params)
        seed_stats = None if stats is None else jax.tree_util.tree_map(lambda x: x[row], stats)
        returns = np.asarray(runs.evaluate(jax.random.key(args.seed + seed), config, seed_params, seed_stats,
                                           args.episodes, deterministic=not args.stochastic))
        means.append(np.nanmean(returns))
        rows += [dict(seed=seed, episode=i, episode_return=float(r), actions=actions) for i, r in enumerate(returns)]
        print(f"  seed {seed}: mean return {means[-1]:.1f} (min {np.nanmin(returns):.1f}, max {np.nanmax(returns):.1f})")
    print(f"median over seeds {np.median(means):.1f}, worst {np.min(means):.1f}")
    path = args.csv or os.path.join(args.run_dir, "evaluation.csv")
    tables.write_csv(path, rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
