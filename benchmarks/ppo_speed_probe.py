"""Where pgjax PPO's time goes, and which speed settings pay, on the machine at hand.

For the comparison's PPO settings (benchmarks/_bench_common.HPARAMS) at `--seeds` vmapped seeds and a
short run, one process times:

  * the whole training run for each `--unroll` factor (`PPOConfig.unroll`: the scan unroll of the
    rollout, GAE and minibatch loops; results are the same, only speed changes);
  * with `--shuffle-sort`, the whole run with minibatch shuffles by `jax.random.permutation` (a key-value
    sort) instead of pgjax's packed one-operand sort (`common.random_permutation`), at the first unroll factor;
  * with `--phases`, the two halves of an update on their own at the first unroll factor: only the
    rollouts (policy + environment, the agent fixed) and only the updates (GAE + minibatch epochs on
    one fixed batch), each a `lax.scan` over the same number of updates;
  * with `--trace FILE`, a `jax.profiler` trace of a run of `--trace-updates` updates (first unroll
    factor; compiled before tracing), written as a Perfetto JSON (`.json.gz`) for kernel-level reading.

`--dense-columns on|off` forces how 2-3-wide layers (the 2-action policy head) are computed
(`pgjax.nets.COLUMN_BACKENDS`; pgjax uses columns on a CPU only), to time both on a GPU.

Every figure is the best of `--repeats` timed calls after a compile-and-run call. XLA flags (command
buffers, ...) are process-wide: run this script again under `XLA_FLAGS=...` with a `--label`.

    python benchmarks/ppo_speed_probe.py --seeds 2048 --total-timesteps 50000 --unroll 1 2 4 8 \\
        --shuffle-sort --phases --json runs/bench/probe.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _bench_common as bc  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=32, help="seeds vmapped (default 32)")
    p.add_argument("--total-timesteps", type=int, default=50_000, help="env steps per seed (default 5e4)")
    p.add_argument("--unroll", type=int, nargs="+", default=None,
                   help="PPOConfig.unroll factors to time (default: 1 4 on a CPU, 1 2 4 8 elsewhere)")
    p.add_argument("--shuffle-sort", action="store_true", help="also time shuffles by jax.random.permutation")
    p.add_argument("--phases", action="store_true", help="also time rollouts alone and updates alone")
    p.add_argument("--trace", default=None, help="write a Perfetto trace (.json.gz) of one run here")
    p.add_argument("--trace-updates", type=int, default=8, help="updates in the traced run (default 8)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per variant; the fastest counts")
    p.add_argument("--dense-columns", choices=("auto", "on", "off"), default="auto",
                   help="2-3-wide layers (the policy head) by columns: 'auto' = pgjax's choice (on a CPU only), "
                        "'on' / 'off' force it on any backend (pgjax.nets.COLUMN_BACKENDS)")
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="PPOConfig.compute_dtype: the networks' hidden-layer dtype (bfloat16: mixed precision)")
    p.add_argument("--label", default="", help="a name for this process's settings (e.g. the XLA_FLAGS used)")
    p.add_argument("--json", default=None, help="write the records here")
    a = p.parse_args()
    if a.seeds < 1 or a.repeats < 1 or any(u < 1 for u in a.unroll or ()):
        p.error("--seeds, --repeats and every --unroll must be positive")
    if a.total_timesteps < bc.BATCH:
        p.error(f"--total-timesteps must be at least {bc.BATCH}")
    tables = bc.tables()
    for flag, path in (("--json", a.json), ("--trace", a.trace)):
        tables.check_output_path(p.error, flag, path, "file")
    return a


def config_for(total_timesteps: int, unroll: int, compute_dtype: str = "float32"):
    return bc.pgjax_ppo_config(total_timesteps, unroll=unroll, compute_dtype=compute_dtype)


def timed(fn, arg, repeats: int) -> dict:
    """Compile-and-run once, then the fastest of `repeats` runs (each waited for on the device)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        runs.append(time.perf_counter() - t0)
    return {"first_call_s": first, "run_s": min(runs), "runs_s": runs}


def whole_run(config, seeds: int):
    import jax

    from pgjax.algos import ppo

    train = ppo.make_train(config)
    fn = jax.jit(jax.vmap(train)) if seeds > 1 else jax.jit(train)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    return fn, (keys if seeds > 1 else keys[0])


def phase_runs(config, seeds: int):
    """(rollouts-only fn, updates-only fn, their argument): the two halves of `num_updates` updates."""
    import jax
    from jax import lax

    from pgjax.algos import common, ppo

    spec = common.make_env(config)
    algo = ppo.make_algorithm(config, common.actor_critic(config, spec))
    hp = config.hyperparams()
    n = config.num_updates

    def start(key):
        k_init, k_reset, k_roll = jax.random.split(key, 3)
        agent = algo.init(k_init, spec, hp)
        obs, env_state = spec.env.reset(k_reset, spec.params)
        return agent, env_state, obs, k_roll

    def rollouts(key):
        agent, env_state, obs, key = start(key)

        def body(carry, k):
            env_state, obs = carry
            env_state, obs, batch = common.rollout(
                k, spec, agent, algo.act, algo.value, env_state, obs, config.num_steps, config.scan_unroll
            )
            return (env_state, obs), batch.reward.sum()

        return lax.scan(body, (env_state, obs), jax.random.split(key, n))[1]

    def updates(key):
        agent, env_state, obs, key = start(key)
        _, _, batch = common.rollout(key, spec, agent, algo.act, algo.value, env_state, obs, config.num_steps,
                                     config.scan_unroll)

        def body(agent, inputs):
            k, i = inputs
            agent, metrics = algo.update(agent, batch, k, hp, i)
            return agent, metrics["loss"]

        return lax.scan(body, agent, (jax.random.split(key, n), jax.numpy.arange(n)))[1]

    wrap = (lambda f: jax.jit(jax.vmap(f))) if seeds > 1 else jax.jit
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    return wrap(rollouts), wrap(updates), (keys if seeds > 1 else keys[0])


def write_trace(fn, arg, path: str) -> str:
    """One profiled run of `fn(arg)`; the Perfetto trace is copied to `path`."""
    import jax

    jax.block_until_ready(fn(arg))  # compile outside the trace
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # device kernels and runtime only, no Python frames
    tmp = tempfile.mkdtemp(prefix="pgjax-trace-")
    try:
        with jax.profiler.trace(tmp, create_perfetto_trace=True, profiler_options=options):
            jax.block_until_ready(fn(arg))
        found = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
        if not found:
            return ("no perfetto_trace.json.gz written: "
                    + ", ".join(glob.glob(os.path.join(tmp, "**"), recursive=True)[:5]))
        shutil.copyfile(found[0], path)
        return f"trace written to {path} ({os.path.getsize(path) / 1e6:.1f} MB)"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    args = parse_args()
    import jax

    from pgjax.algos import common

    if args.unroll is None:
        # XLA:CPU compiles unrolled loops slowly and runs them slower still: 1 seed, unroll 8 compiled in 11 s
        # and ran 4.8x slower than unroll 1; unroll 16 was still compiling after 15 minutes.
        args.unroll = [1, 4] if jax.default_backend() == "cpu" else [1, 2, 4, 8]
    if args.dense_columns != "auto":
        from pgjax import nets

        nets.COLUMN_BACKENDS = (jax.default_backend(),) if args.dense_columns == "on" else ()
    info = bc.system_info(("jax", "jaxlib", "flax", "optax", "gymnax"))
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    info["dense_columns"] = args.dense_columns
    info["compute_dtype"] = args.compute_dtype
    n_updates = bc.num_updates(args.total_timesteps)
    env_steps = args.seeds * n_updates * bc.BATCH
    bc.log(f"[probe{':' + args.label if args.label else ''}] {info['device']}, jax {info['jax']}, {args.seeds} seeds x "
           f"{n_updates} updates, {args.compute_dtype}; XLA_FLAGS={info['xla_flags']!r}")
    records = []

    def record(name: str, unroll: int, shuffle: str, t: dict) -> None:
        rec = {"variant": name, "label": args.label, "unroll": unroll, "shuffle": shuffle, "seeds": args.seeds,
               "updates": n_updates, "env_steps": env_steps, **t,
               "ms_per_update": 1e3 * t["run_s"] / n_updates, "env_steps_per_s": env_steps / t["run_s"]}
        records.append(rec)
        # "updates only" steps no environment: its rate is of the data it learns from (a rollout's steps per update)
        unit = "data steps/s" if name.startswith("updates only") else "env-steps/s"
        bc.log(f"  {name:<26} first call {t['first_call_s']:6.1f} s  run {t['run_s']:7.3f} s  "
               f"{rec['ms_per_update']:7.2f} ms/update  {rec['env_steps_per_s']:14,.0f} {unit}")

    def guarded(what, thunk):
        # One variant failing (out of memory, a compiler error) must not lose the others' figures.
        try:
            thunk()
        except Exception as e:  # noqa: BLE001 - reported and recorded, the probe goes on
            bc.log(f"  {what} FAILED: {type(e).__name__}: {str(e)[:300]}")
            records.append({"variant": what, "label": args.label, "error": f"{type(e).__name__}: {str(e)[:300]}"})

    for unroll in args.unroll:
        config = config_for(args.total_timesteps, unroll, args.compute_dtype)
        guarded(f"whole unroll={unroll}", lambda: record(f"whole unroll={unroll}", unroll, "packed",
                                                         timed(*whole_run(config, args.seeds), args.repeats)))

    first = config_for(args.total_timesteps, args.unroll[0], args.compute_dtype)
    if args.shuffle_sort:
        def sorted_shuffle():
            packed = common.random_permutation
            common.random_permutation = lambda key, n: jax.random.permutation(key, n)
            try:
                record(f"whole unroll={first.unroll} sort", first.unroll, "sort",
                       timed(*whole_run(first, args.seeds), args.repeats))
            finally:
                common.random_permutation = packed

        guarded("shuffle sort", sorted_shuffle)

    if args.phases:
        def phases():
            roll, upd, arg = phase_runs(first, args.seeds)
            record(f"rollouts only unroll={first.unroll}", first.unroll, "-", timed(roll, arg, args.repeats))
            record(f"updates only unroll={first.unroll}", first.unroll, "packed", timed(upd, arg, args.repeats))

        guarded("phases", phases)

    if args.trace:
        short = config_for(args.trace_updates * bc.BATCH, first.unroll, args.compute_dtype)
        guarded("trace", lambda: bc.log("  " + write_trace(*whole_run(short, args.seeds), args.trace)))

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"info": info, "args": vars(args), "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
