"""Learning quality with the documented presets: 8 seeds per (algorithm, environment), one compiled call each.

    python benchmarks/quality.py                 # the online-algorithms issue's targets, then all 16 algo x env pairs
    python benchmarks/quality.py --only ppo:CartPole-v1 trpo:CartPole-v1 --seeds 8
    python benchmarks/quality.py --only a2c:MountainCarContinuous-v0   # any algo:env pair, with its preset

Reports, per run, the median and the worst seed's final mean episode return (the mean over the last 10% of
updates of each update's mean return of the episodes finished in it, `runs.final_returns`; stochastic policy, raw
rewards), against the
target (met only if every seed finished an episode in that window: `finished` counts them, and a seed that did
not makes the worst NaN); the interquartile mean over seeds with its 95% percentile-bootstrap interval
(`pgjax.score_stats`); compile and run time and env-steps/second; then the median and worst seed of an
evaluation of the final policy's mode (`--eval-episodes` episodes per seed, inside the same
compiled run: `eval_every` = the run's updates, which leaves training unchanged bit for bit).
Writes runs/bench/quality.csv.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from pgjax import parallel, score_stats, tables

if __name__ == "__main__":
    parallel.use_cpu_devices()  # seeds over every core; before importing gymnax, which starts JAX

from pgjax import algos, runs  # noqa: E402
from pgjax.algos import presets  # noqa: E402

# (algo, env, total env steps per seed, target on the median and the worst seed)
TARGETS = [
    ("ppo", "CartPole-v1", 500_000, 475.0),
    ("ppo", "Acrobot-v1", 500_000, -100.0),
    ("ppo", "Pendulum-v1", 1_000_000, -300.0),
    ("trpo", "CartPole-v1", 1_000_000, 475.0),
    ("a2c", "CartPole-v1", 1_000_000, 475.0),
    ("reinforce", "CartPole-v1", 1_000_000, 400.0),
    # beyond the targets: every algorithm on every environment, no target
    ("trpo", "Acrobot-v1", 500_000, None),
    ("a2c", "Acrobot-v1", 500_000, None),
    ("reinforce", "Acrobot-v1", 500_000, None),
    ("trpo", "Pendulum-v1", 1_000_000, None),
    ("a2c", "Pendulum-v1", 1_000_000, None),
    ("reinforce", "Pendulum-v1", 1_000_000, None),
    ("ppo", "MountainCarContinuous-v0", 1_000_000, None),
    ("trpo", "MountainCarContinuous-v0", 1_000_000, None),
    ("a2c", "MountainCarContinuous-v0", 1_000_000, None),
    ("reinforce", "MountainCarContinuous-v0", 1_000_000, None),
]


def run_one(algo: str, env_id: str, steps: int, seeds: int, seed: int, eval_episodes: int = 10) -> dict:
    config_cls, make_train = algos.get(algo)
    config = config_cls(**{**presets.preset(algo, env_id), "env_id": env_id, "total_timesteps": steps})
    config = config.replace(eval_every=config.num_updates, eval_episodes=eval_episodes)  # one, after the last update
    train = parallel.vmap_sharded(make_train(config))  # seeds split over the devices
    keys = train.place(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(np.arange(seeds)))[0]
    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - t0
    final = runs.final_returns(out.metrics)
    evaluation = runs.last_evaluation(out.metrics)
    # No seed finished an episode in the window: no IQM (score_stats raises), the row still written.
    finished = bool(np.isfinite(final).any())
    iqm, (iqm_low, iqm_high) = ((score_stats.iqm(final), score_stats.bootstrap_interval(final)) if finished
                                else (float("nan"), (float("nan"), float("nan"))))
    return dict(
        algo=algo, env=env_id, seeds=seeds, env_steps=config.num_updates * config.batch_size,
        **final_stats(final), iqm=iqm, iqm_low=iqm_low, iqm_high=iqm_high,
        # NaN when a seed's evaluation is (an episode that never ended), as the training columns' worst.
        eval_median=float(np.median(evaluation)), eval_worst=float(np.min(evaluation)),
        compile_s=round(compile_s, 1), run_s=round(run_s, 1),
        steps_per_s=round(seeds * config.num_updates * config.batch_size / run_s),
        per_seed=" ".join(f"{x:.1f}" for x in final),
    )


def final_stats(final: np.ndarray) -> dict:
    """median, worst, best over the seeds' final returns (final: [seeds], NaN for a seed that finished no episode
    in the last 10% of updates) and finished, the seeds with a value. The median and best are over the finished
    seeds; the worst is NaN if any seed did not finish: that seed has no return to pass a target with."""
    final = np.asarray(final, dtype=float)
    finished = int(np.sum(~np.isnan(final)))
    over = (lambda f: float(f(final[~np.isnan(final)]))) if finished else (lambda f: float("nan"))
    return dict(median=over(np.median), worst=float(np.min(final)), best=over(np.max), finished=finished)


def target_met(row: dict, target: float | None) -> bool | str:
    """Whether the median and the worst seed reach `target` ("" without one): False when a seed finished no episode
    in the last 10% of updates (its worst is NaN), whatever the others reached."""
    if target is None:
        return ""
    return bool(row["median"] >= target and row["worst"] >= target)  # a NaN worst compares False


def plan(only: list[str] | None) -> list[tuple]:
    """The (algo, env, steps, target) runs for `--only` pairs: TARGETS' entries, else the preset's run length."""
    if only is None:
        return list(TARGETS)
    listed = {f"{a}:{e}": (a, e, steps, target) for a, e, steps, target in TARGETS}
    todo = []
    for pair in only:
        if pair in listed:
            todo.append(listed[pair])
            continue
        algo, sep, env_id = pair.partition(":")
        if not sep or algo not in algos.ALGORITHMS:
            raise ValueError(f"--only {pair!r}: expected algo:env with algo one of {sorted(algos.ALGORITHMS)}, "
                             f"e.g. {', '.join(listed)}")
        config_cls, _ = algos.get(algo)
        steps = presets.preset(algo, env_id).get("total_timesteps", config_cls.total_timesteps)
        # Built now: a bad pair fails before the others have run (the CSV is written at the end).
        config_cls(**{**presets.preset(algo, env_id), "env_id": env_id})
        todo.append((algo, env_id, steps, None))
    if not todo:
        raise ValueError(f"--only matched nothing; choose algo:env pairs such as {', '.join(listed)}")
    return todo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None,
                   help="algo:env pairs to run (default: all targets); a pair without a target runs its preset's "
                        "total_timesteps (or the config default) and reports no target")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=10,
                   help="episodes per seed of the final policy's mode (reported as eval median / eval worst)")
    p.add_argument("--out", default="runs/bench/quality.csv")
    args = p.parse_args(argv)
    if args.eval_episodes < 1 or args.seeds < 1:
        p.error(f"--seeds and --eval-episodes must be >= 1; got {args.seeds} and {args.eval_episodes}")
    tables.check_output_path(p.error, "--out", args.out, "file")
    try:
        todo = plan(args.only)
    except ValueError as err:
        p.error(str(err))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{len(jax.devices())} x {jax.devices()[0].device_kind} (seeds split over them)")
    header = (f"{'algo':<10}{'env':<26}{'steps':>9}{'median':>9}{'worst':>9}{'done':>6}{'target':>8}{'met':>5}"
              f"{'IQM [95% bootstrap]':>27}{'compile s':>10}{'run s':>8}{'steps/s':>11}{'eval median':>12}"
              f"{'eval worst':>11}")
    print(header)
    rows = []
    for algo, env_id, steps, target in todo:
        row = run_one(algo, env_id, steps, args.seeds, args.seed, args.eval_episodes)
        row["target"] = "" if target is None else target
        row["met"] = target_met(row, target)
        rows.append(row)
        print(f"{algo:<10}{env_id:<26}{row['env_steps']:>9}{row['median']:>9.1f}{row['worst']:>9.1f}"
              f"{row['finished']:>3}/{row['seeds']:<2}"
              f"{str(row['target']):>8}{str(row['met']):>5}"
              f"{row['iqm']:>9.1f} [{row['iqm_low']:7.1f}, {row['iqm_high']:7.1f}]"
              f"{row['compile_s']:>10}{row['run_s']:>8}"
              f"{row['steps_per_s']:>11,}"
              f"{row['eval_median']:>12.1f}{row['eval_worst']:>11.1f}", flush=True)
    tables.write_csv(args.out, rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
