"""Off-policy evaluation on a gymnax environment: neural DualDICE, neural FQE, PDIS and WIS against Monte Carlo.

    python experiments/offline_gymnax.py [--env CartPole-v1 --epsilon 0.3 --num-episodes 100 --out runs/offline-gymnax]

1. Train a target policy pi with pgjax PPO (a short run: --ppo-steps).
2. Log --num-episodes episodes of the behaviour policy mu = (1 - epsilon) pi + epsilon uniform
   with `pgjax.offline.collect_env` (each at most --horizon steps).
3. Estimate the discounted value J(pi) = E_pi[sum_t gamma^t r_t] from the logged data only:
   neural DualDICE (plain and self-normalised), neural fitted Q evaluation, and per-decision /
   weighted importance sampling with log pi(a_t|s_t) from the policy network.
4. Compare with an on-policy Monte Carlo estimate from --mc-episodes fresh episodes of pi, and
   with the naive average discounted return of the logged (behaviour) episodes.

DualDICE and FQE bootstrap past the horizon (time limits are truncations), the IS estimators and
Monte Carlo stop there: the two targets differ by at most gamma^horizon r_max / (1 - gamma)
(0.66 on CartPole with the defaults). On CartPole r = 1 on every step, so the value is carried
by when episodes terminate: the self-normalised DualDICE estimate is 1 / (1 - gamma) whatever
the ratio, and the plain one is (mean ratio) / (1 - gamma).
Prints a table and writes results.csv (one row per estimator) and config.json to --out.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from pgjax import algos, envs
from pgjax.algos import common
from pgjax.offline import importance
from pgjax.offline import neural
from pgjax.offline.collect_env import collect_env


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", help="a gymnax environment with discrete actions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppo-steps", type=int, default=100_000, help="environment steps of the PPO run giving pi")
    p.add_argument("--ppo-learning-rate", type=float, default=2.5e-4,
                   help="the default gives a good but imperfect CartPole policy (~180 of 500) in 1e5 steps")
    p.add_argument("--epsilon", type=float, default=0.3, help="behaviour mu = (1 - epsilon) pi + epsilon uniform")
    p.add_argument("--discount", type=float, default=0.99)
    p.add_argument("--num-episodes", type=int, default=100, help="logged behaviour episodes")
    p.add_argument("--horizon", type=int, default=500, help="maximum steps per logged episode")
    p.add_argument("--mc-episodes", type=int, default=1000, help="on-policy episodes for the Monte Carlo reference")
    p.add_argument("--dualdice-steps", type=int, default=20_000,
                   help="DualDICE's min-max converges slowly at gamma = 0.99: more steps and larger batches than FQE")
    p.add_argument("--dualdice-batch-size", type=int, default=1024)
    p.add_argument("--fqe-steps", type=int, default=10_000)
    p.add_argument("--out", default=os.path.join("runs", "offline-gymnax"))
    args = p.parse_args(argv)
    if not 0.0 <= args.epsilon <= 1.0:
        p.error(f"--epsilon must lie in [0, 1]; got {args.epsilon}")
    if not 0.0 < args.discount < 1.0:
        p.error(f"--discount must lie in (0, 1); got {args.discount}")
    for name in ("ppo_steps", "num_episodes", "horizon", "mc_episodes", "dualdice_steps", "dualdice_batch_size",
                 "fqe_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def train_target(key, env_id: str, total_timesteps: int, learning_rate: float):
    """PPO on env_id; returns (network, params, mean training return of the last 5 updates).

    PPO's defaults otherwise, without observation normalisation, so the policy network reads the
    raw observations that `collect_env` logs.
    """
    config_cls, make_train = algos.get("ppo")
    config = config_cls(env_id=env_id, total_timesteps=total_timesteps, learning_rate=learning_rate,
                        normalize_observations=False)
    spec = common.make_env(config)
    if not spec.discrete:
        raise SystemExit(f"{env_id} has continuous actions; this demo needs discrete ones.")
    output = jax.jit(make_train(config))(key)
    returns = np.asarray(output.metrics["episode_return"])
    return common.actor_critic(config, spec), output.agent.params, float(np.nanmean(returns[-5:]))


def discounted_returns(data, discount: float) -> np.ndarray:
    powers = discount ** np.arange(data.horizon)
    return np.sum(np.asarray(data.rewards) * np.asarray(data.mask) * powers, axis=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    key_ppo, key_data, key_mc, key_dice, key_fqe = jax.random.split(jax.random.key(args.seed), 5)
    timings = {}

    start = time.perf_counter()
    network, params, ppo_return = train_target(key_ppo, args.env, args.ppo_steps, args.ppo_learning_rate)
    timings["ppo"] = time.perf_counter() - start
    print(f"PPO target policy after {args.ppo_steps:,} steps: mean undiscounted return {ppo_return:.1f} "
          f"({timings['ppo']:.1f}s)")

    env, env_params = envs.make(args.env)
    env = envs.FlattenObservation(env)
    num_actions = envs.action_dim(env, env_params)
    eps = args.epsilon

    def target_probs(obs):
        return network.apply(params, obs)[0].probs

    def target_log_probs(obs, actions):
        return network.apply(params, obs)[0].log_prob(actions)

    def sample_from(probs_fn):
        def policy(key, obs):
            probs = probs_fn(obs)
            action = jax.random.categorical(key, jnp.log(probs)).astype(jnp.int32)
            return action, jnp.log(probs[action])

        return policy

    behaviour = sample_from(lambda obs: (1.0 - eps) * target_probs(obs) + eps / num_actions)
    target = sample_from(target_probs)

    start = time.perf_counter()
    data = collect_env(key_data, env, env_params, behaviour, args.num_episodes, args.horizon)
    on_policy = collect_env(key_mc, env, env_params, target, args.mc_episodes, args.horizon)
    timings["collect"] = time.perf_counter() - start
    mc = discounted_returns(on_policy, args.discount)
    truth, truth_se = float(mc.mean()), float(mc.std(ddof=1) / np.sqrt(len(mc)))
    logged = discounted_returns(data, args.discount)
    print(f"Logged {data.num_transitions:,} transitions in {args.num_episodes} episodes of mu "
          f"(epsilon {eps}); mean length {np.asarray(data.mask).sum(1).mean():.1f} vs "
          f"{np.asarray(on_policy.mask).sum(1).mean():.1f} under pi")

    rows = []

    def record(method, estimate, seconds, note=""):
        estimate = float(estimate)
        rows.append(dict(method=method, estimate=estimate, error=estimate - truth,
                         relative_error=(estimate - truth) / abs(truth), seconds=round(seconds, 2), note=note))

    record("on-policy Monte Carlo (reference)", truth, timings["collect"], f"+- {truth_se:.2f} (1 s.e.)")
    record("behaviour average (naive)", logged.mean(), 0.0, "mean discounted return of the logged episodes")

    start = time.perf_counter()
    config = neural.NeuralDualDICEConfig(discount=args.discount, num_steps=args.dualdice_steps,
                                         batch_size=args.dualdice_batch_size)
    dice_params, dice_info = neural.neural_dualdice(key_dice, data, target_probs, config)
    seconds = time.perf_counter() - start
    record("neural DualDICE", dice_info["value"], seconds, f"mean ratio {float(dice_info['mean_ratio']):.3f}")
    record("neural DualDICE (normalised)", dice_info["value_normalised"], seconds,
           "biased when pi terminates (E_D[w] < 1); constant 1/(1-gamma) when r = 1 on every step")

    start = time.perf_counter()
    fqe_config = neural.FQEConfig(num_steps=args.fqe_steps)
    _, _, fqe_info = neural.fitted_q_evaluation(key_fqe, data, target_probs, args.discount, fqe_config)
    record("neural FQE", fqe_info["value"], time.perf_counter() - start)

    start = time.perf_counter()
    target_lp = jax.jit(target_log_probs)(data.observations, data.actions)
    ess = importance.effective_sample_size(
        importance.importance_weights(target_lp, data.behaviour_log_probs, data.mask)
    )
    for method in ("pdis", "wis"):
        value = importance.importance_value(data.rewards, data.mask, target_lp, data.behaviour_log_probs,
                                            args.discount, method)
        record(method.upper(), value, time.perf_counter() - start,
               f"trajectory-weight ESS {float(ess):.1f} of {args.num_episodes}" if method == "wis" else "")

    print()
    print(f"{'method':36s} {'estimate':>9s} {'error':>9s} {'rel. err':>9s} {'time (s)':>9s}  note")
    for r in rows:
        print(f"{r['method']:36s} {r['estimate']:9.2f} {r['error']:9.2f} {r['relative_error']:9.1%} "
              f"{r['seconds']:9.1f}  {r['note']}")

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({**vars(args), "ppo_return": ppo_return, "dualdice": dataclasses.asdict(config),
                   "fqe": dataclasses.asdict(fqe_config), "jax": jax.__version__}, f, indent=2, default=str)
    print(f"\nwrote {os.path.join(args.out, 'results.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
