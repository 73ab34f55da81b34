"""How many seeds does PPO leave behind? The comparison's PPO settings (benchmarks/_bench_common.HPARAMS,
5e5 steps) over many seeds, in chunks, seeds split over the CPU devices (pgjax.parallel).

Each seed's final policy is evaluated on `--eval-episodes` episodes of the stochastic policy (as in
ppo_vs_rejax.py); the script prints the running count of seeds at >= 475 and the lowest returns after
every chunk, and saves per-seed final returns and per-update curves (episode return, entropy, approx KL)
to `--out` (.npz), so the stragglers' learning curves can be read afterwards.

    python benchmarks/ppo_seed_sweep.py --seeds 1024           # ~29 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

SOLVED = 475.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=256, help="seeds in all (default 256)")
    p.add_argument("--chunk", type=int, default=128, help="seeds per compiled call (default 128)")
    p.add_argument("--total-timesteps", type=int, default=500_000)
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--cpu-devices", default="auto", help="'auto' (one per core) or a count")
    p.add_argument("--split-actor-critic", action="store_true", help="PPOConfig(split_actor_critic=True): one clipped Adam per network")
    p.add_argument("--out", default="runs/bench/ppo_seed_sweep.npz")
    a = p.parse_args()
    if a.seeds < 1 or a.chunk < 1 or a.eval_episodes < 1:
        p.error("--seeds, --chunk and --eval-episodes must be positive")

    import jax

    from pgjax import parallel

    parallel.use_cpu_devices(None if a.cpu_devices == "auto" else int(a.cpu_devices))
    import numpy as np

    import _bench_common as bc
    from pgjax import runs
    from pgjax.algos import ppo

    config = bc.pgjax_ppo_config(a.total_timesteps, split_actor_critic=a.split_actor_critic)
    train = parallel.vmap_sharded(ppo.make_train(config))
    evaluate = jax.jit(jax.vmap(lambda k, p: runs.evaluate(k, config, p, num_episodes=a.eval_episodes, deterministic=False)))
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
        returns = np.asarray(evaluate(eval_keys[i:i + a.chunk], jax.device_get(out.agent.params)))
        parts["finals"].append(np.nanmean(returns, axis=1))
        finals = np.concatenate(parts["finals"])
        print(f"{finals.size} seeds, {time.time() - t0:.0f} s: {np.sum(finals >= SOLVED)}/{finals.size} >= {SOLVED:.0f}, "
              f"lowest {[round(float(x), 1) for x in np.sort(finals)[:4]]}", flush=True)
        np.savez(a.out, **{k: np.concatenate(v) for k, v in parts.items()})
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
