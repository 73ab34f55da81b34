"""How many seeds does PPO leave behind? The comparison's PPO settings (benchmarks/_bench_common.HPARAMS,
5e5 steps) over many seeds, in chunks, seeds split over the CPU devices (pgjax.parallel).

Each seed's final policy is evaluated on `--eval-episodes` episodes of the stochastic policy (as in
ppo_vs_rejax.py); the script prints the running count of seeds at >= 475 and the lowest returns after
every chunk, and saves per-seed final returns and per-update curves (episode return, entropy, approx KL)
to `--out` (.npz), so the stragglers' learning curves can be read afterwards.

    python benchmarks/ppo_seed_sweep.py --seeds 1024           # 15-29 min on 2 CPU cores
    python benchmarks/ppo_seed_sweep.py --seeds 1024 --override '{"ent_coef": 0.0}'   # an experiment
    python benchmarks/ppo_seed_sweep.py --report runs/bench/ppo_seed_sweep.npz        # the stragglers, again
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

SOLVED = 475.0
TAIL_UPDATES = 60  # "end of training": the last 60 updates (~31k env steps of 5e5)


def report(path: str, lowest: int = 6) -> None:
    """Print the lowest seeds of a saved sweep next to how they learned: the first update whose training return
    reached 475, and their mean training return and policy entropy over the last TAIL_UPDATES updates, with the
    entropy's rank among all seeds (0 = the most stochastic policy)."""
    import numpy as np

    d = np.load(path)
    finals, curves, entropy = d["finals"], d["curves"], d["entropy"]
    tail_entropy = np.nanmean(entropy[:, -TAIL_UPDATES:], axis=1)
    tail_return = np.nanmean(curves[:, -TAIL_UPDATES:], axis=1)
    override = str(d["override"]) if "override" in d else "{}"
    print(f"{path}: {finals.size} seeds, overrides {override}; {np.sum(finals >= SOLVED)} >= {SOLVED:.0f}; "
          f"entropy over the last {TAIL_UPDATES} updates: median {np.median(tail_entropy):.3f}, "
          f"99th percentile {np.percentile(tail_entropy, 99):.3f}")
    print("seed  final eval  first update >= 475  tail train return  tail entropy  entropy rank")
    for i in np.argsort(np.nan_to_num(finals, nan=-np.inf))[:lowest]:  # a NaN evaluation is the lowest, not the last
        reached = np.flatnonzero(np.nan_to_num(curves[i]) >= SOLVED)
        first = str(reached[0]) if reached.size else "never"
        rank = int(np.sum(tail_entropy > tail_entropy[i]))
        print(f"{i:4d}  {finals[i]:10.1f}  {first:>19}  {tail_return[i]:17.1f}  {tail_entropy[i]:12.3f}  {rank:12d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=256, help="seeds in all (default 256)")
    p.add_argument("--chunk", type=int, default=128, help="seeds per compiled call (default 128)")
    p.add_argument("--total-timesteps", type=int, default=500_000)
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--cpu-devices", default="auto", help="'auto' (one per core) or a count")
    p.add_argument("--split-actor-critic", action="store_true",
                   help="PPOConfig(split_actor_critic=True): one clipped Adam per network")
    p.add_argument("--override", default="{}",
                   help="JSON object of PPOConfig fields that replace the comparison's settings, "
                        "e.g. '{\"ent_coef\": 0.0}' "
                        "(an experiment: the result is no longer the comparison's configuration)")
    p.add_argument("--out", default="runs/bench/ppo_seed_sweep.npz")
    p.add_argument("--report", metavar="NPZ",
                   help="print the lowest seeds of a saved sweep and how they learned; train nothing")
    a = p.parse_args()
    if a.report:
        if not os.path.isfile(a.report):
            p.error(f"--report: no such file {a.report!r} (a sweep's --out)")
        return report(a.report)
    if a.seeds < 1 or a.chunk < 1 or a.eval_episodes < 1:
        p.error("--seeds, --chunk and --eval-episodes must be positive")
    if os.path.isdir(a.out):
        p.error(f"--out {a.out!r} is a directory; give the .npz file to write, e.g. {os.path.join(a.out, 'sweep.npz')}")
    if not a.out.endswith(".npz"):
        a.out += ".npz"  # what np.savez writes, so that the report at the end reads the same file
    from pgjax.tables import check_output_path  # checked with the flags, before anything compiles

    check_output_path(p.error, "--out", a.out, "file")
    try:
        override = json.loads(a.override)
    except ValueError as e:
        p.error(f"--override must be a JSON object such as '{{\"ent_coef\": 0.0}}': {e}")
    if not isinstance(override, dict):
        p.error(f"--override must be a JSON object of PPOConfig fields, got {a.override!r}")

    import jax

    from pgjax import parallel

    if a.cpu_devices != "auto" and not (a.cpu_devices.isdigit() and int(a.cpu_devices) >= 1):
        p.error(f"--cpu-devices must be 'auto' or a positive int; got {a.cpu_devices!r}")
    parallel.use_cpu_devices(None if a.cpu_devices == "auto" else int(a.cpu_devices))
    import numpy as np

    import _bench_common as bc
    from pgjax import runs
    from pgjax.algos import ppo

    config = bc.pgjax_ppo_config(a.total_timesteps, split_actor_critic=a.split_actor_critic)
    unknown = set(override) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        p.error(f"--override: {sorted(unknown)} are not PPOConfig fields")
    config = dataclasses.replace(config, **override)  # validated again by PPOConfig
    if override:
        print(f"overrides of the comparison's settings: {override}", flush=True)
    train = parallel.vmap_sharded(ppo.make_train(config))
    # With normalize_observations (an override) each seed is evaluated with its trained statistics.
    evaluate = jax.jit(jax.vmap(lambda k, p, s: runs.evaluate(k, config, p, s, num_episodes=a.eval_episodes,
                                                              deterministic=False)))
    keys = jax.random.split(jax.random.PRNGKey(0), a.seeds)
    eval_keys = jax.random.split(jax.random.PRNGKey(1), a.seeds)
    parts: dict[str, list] = {"curves": [], "entropy": [], "approx_kl": [], "finals": []}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    t0 = time.time()
    for i in range(0, a.seeds, a.chunk):
        out = train(train.place(keys[i:i + a.chunk])[0])
        parts["curves"].append(np.asarray(out.metrics["episode_return"]))
        parts["entropy"].append(np.asarray(out.metrics["entropy"]))
        parts["approx_kl"].append(np.asarray(out.metrics["approx_kl"]))
        stats = runs.observation_statistics(out.env_state)  # [seeds, num_envs, ...], the same in every env
        stats = None if stats is None else jax.tree_util.tree_map(lambda x: x[:, 0], jax.device_get(stats))
        returns = np.asarray(evaluate(eval_keys[i:i + a.chunk], jax.device_get(out.agent.params), stats))
        parts["finals"].append(np.nanmean(returns, axis=1))
        finals = np.concatenate(parts["finals"])
        print(f"{finals.size} seeds, {time.time() - t0:.0f} s: "
              f"{np.sum(finals >= SOLVED)}/{finals.size} >= {SOLVED:.0f}, "
              f"lowest {[round(float(x), 1) for x in np.sort(np.nan_to_num(finals, nan=-np.inf))[:4]]}", flush=True)
        np.savez(a.out, override=np.array(json.dumps(override)), **{k: np.concatenate(v) for k, v in parts.items()})
    print(f"saved {a.out}")
    report(a.out)


if __name__ == "__main__":
    main()
