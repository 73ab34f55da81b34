"""Reload a run written by experiments/train.py and evaluate each seed's final policy.

    python experiments/evaluate.py runs/ppo-CartPole-v1-... [--episodes 10] [--stochastic] [--csv PATH]

Prints each seed's mean return and writes every episode's return to RUN_DIR/evaluation.csv (or --csv):
columns seed, episode, episode_return, actions ("deterministic" or "stochastic"). A seed whose final parameters are
not finite (its training diverged; train.py reported it) is not evaluated: it is named on stderr, has no rows, and
counts as a seed without a value (NaN) in the summaries.

RUN_DIR may also be a hyperparameter grid (train.py --grid): every cell's seeds are evaluated, one compile for
all of them, with the cell's number and values as the first columns, and a summary per cell of its seeds' mean
returns (`runs.summarize_final_returns`'s columns: median, mean with its 95% t interval, worst, best, the paired
difference from the best cell, the interquartile mean with its bootstrap interval, P(> best)) is printed and
written next to it (evaluation_summary.csv).

Policies can be evaluated on another variant of their environment (a transfer or robustness test): each
`--env-kwarg KEY=VALUE` (repeatable) replaces one of the environment's keywords, e.g.

    python experiments/evaluate.py runs/ppo-CartPole-v1-... --env-kwarg length=1.0 --env-kwarg gravity=12

(the default CSV is then RUN_DIR/evaluation_length=1.0_gravity=12.csv, so the training variant's stays).
`--env-sweep KEY=V1,V2,...` evaluates on each value of one keyword in turn, a robustness curve:

    python experiments/evaluate.py runs/ppo-CartPole-v1-... --env-sweep length=0.25,0.5,1,2,4

writes RUN_DIR/evaluation_sweep_length.csv (every episode, with the value as a column), robustness_length.csv (per
value, and per cell of a grid: `runs.summarize_final_returns` over the seeds' mean returns, paired across values)
and robustness_length.png (median and worst seed against the value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from pgjax import envs, runs, score_stats, tables


def evaluate_seeds(run, labels: list[int], args, quiet: bool = False) -> tuple[list[float], list[dict]]:
    """Every seed of one loaded run (`runs.load_run`'s tuple; labels: its seeds' indices in the sweep):
    (mean return per seed, NaN for a seed whose parameters are not finite, which is not evaluated; one row per
    episode); prints a line per seed unless `quiet`."""
    _, config, params, stats = run
    actions = "stochastic" if args.stochastic else "deterministic"
    means, rows = [], []
    finite = runs.finite_seeds(params)
    for row, seed in enumerate(labels):  # seed i of the sweep is evaluated with key(--seed + i), wherever it ran
        if not finite[row]:  # runs.evaluate refuses a diverged seed's parameters
            means.append(float("nan"))
            if not quiet:
                print(f"  seed {seed}: not evaluated (final parameters not finite: its training diverged)")
            continue
        seed_params = jax.tree_util.tree_map(lambda x: x[row], params)
        seed_stats = None if stats is None else jax.tree_util.tree_map(lambda x: x[row], stats)
        returns = np.asarray(runs.evaluate(jax.random.key(args.seed + seed), config, seed_params, seed_stats,
                                           args.episodes, deterministic=not args.stochastic), np.float64)
        means.append(float(np.nanmean(returns)))
        rows += [dict(seed=seed, episode=i, episode_return=float(r), actions=actions) for i, r in enumerate(returns)]
        if not quiet:
            print(f"  seed {seed}: mean return {means[-1]:.1f} (min {np.nanmin(returns):.1f}, "
                  f"max {np.nanmax(returns):.1f})")
    return means, rows


def paired_summary(means: list[np.ndarray]) -> list[dict]:
    """`runs.summarize_final_returns` of groups of the same seeds' mean returns ([seeds] per group: a grid's cells,
    or one run at each value of --env-sweep), each seed evaluated with the same key in every group: the
    differences from the best group are paired seed by seed, like the training summary's."""
    return runs.summarize_final_returns(means, [None] * len(means), paired=True)


def cell_summary(cells: list[dict], cell_means: list[np.ndarray]) -> list[dict]:
    """Per grid cell (`cells`: its values), `paired_summary` of its seeds' mean returns (`cell_means`: [seeds] per
    cell), the cell's number and values first."""
    return [{"cell": index, **cell, **row} for index, (cell, row) in enumerate(zip(cells, paired_summary(cell_means)))]


def with_env_kwargs(loaded: list, variant: dict) -> list:
    """The loaded runs with `variant`'s keywords over each run's own `env_kwargs`; ValueError for an unknown one."""
    out = [(algo, config.replace(env_kwargs={**dict(config.env_kwargs), **variant}), params, stats)
           for algo, config, params, stats in loaded]
    envs.make(out[0][1].env_id, **dict(out[0][1].env_kwargs))  # an unknown keyword fails here, before compiling
    return out


def parse_sweep(text: str) -> tuple[str, list]:
    """KEY, [V1, V2, ...] from --env-sweep KEY=V1,V2,... (each value read as JSON, else as text)."""
    key, sep, values = text.partition("=")
    if not sep or not values:
        raise ValueError(f"--env-sweep {text!r}: expected KEY=V1,V2,..., e.g. length=0.25,0.5,1")
    parsed = [runs.parse_env_kwargs([f"{key}={v}"])[key.strip()] for v in values.split(",")]
    # Compared as numbers where they are (1 and 1.0 name one variant: it was evaluated twice).
    seen = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v) for v in parsed]
    if len(set(seen)) != len(seen):
        raise ValueError(f"--env-sweep {text!r}: a value is repeated")
    return key.strip(), parsed


def sweep(loaded: list, cells: list | None, labels: list[int], args, key: str, values: list) -> int:
    """--env-sweep: every run (or grid cell) on every value of `key`; writes the episodes, the per-value summary
    and the robustness plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = cells or [{}]
    per_group_means = [[] for _ in groups]  # [group][value] -> seeds' mean returns
    rows = []
    for value in values:
        variant = with_env_kwargs(loaded, {key: value})
        for index, run in enumerate(variant):
            means, run_rows = evaluate_seeds(run, labels, args, quiet=True)
            cell = {"cell": index, **groups[index]} if cells else {}
            rows += [{**cell, key: value, **row} for row in run_rows]
            per_group_means[index].append(np.array(means))
    summary = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, means in enumerate(per_group_means):
        stats = paired_summary(means)  # the same policies and evaluation keys at every value
        cell = {"cell": index, **groups[index]} if cells else {}
        summary += [{**cell, key: value, **row} for value, row in zip(values, stats)]
        label = runs.cell_label(groups[index]) if cells else "median over seeds"
        line = ax.plot(values, [row["median"] for row in stats], "-o", label=label)[0]
        ax.plot(values, [row["worst"] for row in stats], ":", color=line.get_color())
        heading = f"cell {index} ({runs.cell_label(groups[index])})" if cells else "over seeds"
        print(f"{heading}: " + "; ".join(f"{key}={value}: median {row['median']:.1f}, worst {row['worst']:.1f}, "
                                         f"IQM {row['iqm']:.1f}" for value, row in zip(values, stats)))
    algo, config = loaded[0][0], loaded[0][1]
    ax.set(xlabel=key, ylabel=f"mean return over {args.episodes} episodes",
           title=f"{algo.upper()} on {config.env_id}: median (dotted: worst seed) over {len(labels)} seeds")
    if all(isinstance(v, (int, float)) for v in values) and min(values) > 0 and max(values) / min(values) >= 8:
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])  # the values themselves, not powers of ten
        ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [args.csv or os.path.join(args.run_dir, f"evaluation_sweep_{key}.csv"),
             os.path.join(args.run_dir, f"robustness_{key}.csv"), os.path.join(args.run_dir, f"robustness_{key}.png")]
    tables.write_csv(paths[0], rows)
    tables.write_csv(paths[1], summary)
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)
    print("wrote " + ", ".join(paths))
    return 0


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
    p.add_argument("--env-module", action="append", default=[], metavar="MODULE",
                   help="import this module (dotted name or .py path) first, for a run on an environment it "
                        "registers (pgjax.envs.register; config.json's env_source names it)")
    p.add_argument("--env-sweep", default=None, metavar="KEY=V1,V2,...",
                   help="evaluate on each value of this environment keyword in turn (a robustness curve): writes "
                        "evaluation_sweep_KEY.csv, robustness_KEY.csv and robustness_KEY.png")
    args = p.parse_args(argv)
    for module in args.env_module:  # a run on a registered environment: its module registers it again
        try:
            envs.import_env_module(module)
        except ValueError as err:
            p.error(str(err))
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1; got {args.episodes}")
    tables.check_output_path(p.error, "--csv", args.csv, "file")
    try:
        variant = runs.parse_env_kwargs(args.env_kwarg)
        swept = parse_sweep(args.env_sweep) if args.env_sweep else None
    except ValueError as err:
        p.error(str(err))
    if swept and swept[0] in variant:
        p.error(f"--env-sweep {args.env_sweep!r}: {swept[0]} is also given by --env-kwarg; give it once")
    config_path = os.path.join(args.run_dir, "config.json")
    try:  # (a malformed config.json is a ValueError too)
        meta = {}
        if os.path.exists(config_path):
            with open(config_path) as f:
                meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError(f"{config_path}: not a run config written by experiments/train.py (a JSON object "
                             f"expected; got a {type(meta).__name__}).")
        cells = meta.get("cells")  # a grid (train.py --grid): cell-K/ are its run directories
        dirs = [os.path.join(args.run_dir, f"cell-{k}") for k in range(len(cells))] if cells else [args.run_dir]
        loaded = [runs.load_run(d) for d in dirs]
        if variant:  # every run's own keywords, then the variant's
            loaded = with_env_kwargs(loaded, variant)
        if swept:
            for value in swept[1]:
                with_env_kwargs(loaded, {swept[0]: value})
    except ValueError as err:
        p.error(f"{config_path}: {err}" if isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)) else str(err))
    algo, config, params, _ = loaded[0]
    num_seeds = jax.tree_util.tree_leaves(params)[0].shape[0]
    labels = meta.get("seed_indices", list(range(num_seeds)))  # a replay's seeds
    # One label per seed of every run's params: otherwise seeds would be skipped (or their keys mislabelled) silently.
    for directory, (_, _, run_params, _) in zip(dirs, loaded):
        seeds = jax.tree_util.tree_leaves(run_params)[0].shape[0]
        if not isinstance(labels, list) or len(labels) != seeds:
            p.error(f"{config_path}: seed_indices {labels!r} does not give one seed index per seed of "
                    f"{os.path.join(directory, 'params.msgpack')} ({seeds} seeds): the run's files do not belong "
                    "together; fix seed_indices or rewrite the run with experiments/train.py.")
    for directory, (_, _, run_params, _) in zip(dirs, loaded):
        diverged = [seed for seed, ok in zip(labels, runs.finite_seeds(run_params)) if not ok]
        if diverged:
            print(f"warning: {directory}: seeds {diverged} have non-finite final parameters (their training diverged; "
                  "train.py reported it): they are not evaluated and count as seeds without a value",
                  file=sys.stderr)
    what = f"{len(cells)} cells x {num_seeds} seeds" if cells else f"{num_seeds} seeds"
    on = f" ({', '.join(f'{k}={v}' for k, v in variant.items())})" if variant else ""
    print(f"{algo.upper()} on {config.env_id}{on}, {what}, {args.episodes} episodes each "
          f"({'stochastic' if args.stochastic else 'deterministic'} actions)"
          + (f", at {swept[0]} = {', '.join(map(str, swept[1]))}" if swept else ""))
    if swept:
        return sweep(loaded, cells, labels, args, *swept)
    if not cells:
        means, rows = evaluate_seeds(loaded[0], labels, args)
        evaluated = [m for m in means if not np.isnan(m)]
        if not evaluated:
            print("error: no seed has finite final parameters: nothing to evaluate", file=sys.stderr)
            return 1
        over = "seeds" if len(evaluated) == len(means) else f"the {len(evaluated)} of {len(means)} seeds with a value"
        print(f"median over {over} {np.median(evaluated):.1f}, worst {np.min(evaluated):.1f}, "
              f"IQM {score_stats.iqm(evaluated):.1f}")
    else:
        rows, cell_means = [], []
        for index, (cell, run) in enumerate(zip(cells, loaded)):
            print(f"cell {index} ({runs.cell_label(cell)}):")
            means, cell_rows = evaluate_seeds(run, labels, args)
            rows += [{"cell": index, **cell, **row} for row in cell_rows]
            cell_means.append(np.array(means))
        summary = cell_summary(cells, cell_means)
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
