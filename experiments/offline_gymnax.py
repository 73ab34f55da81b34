"""Off-policy evaluation on gymnax: neural DualDICE, neural FQE, doubly robust, PDIS and WIS against Monte Carlo.

    python experiments/offline_gymnax.py [--env CartPole-v1 --epsilon 0.3 --num-episodes 100 --out runs/offline-gymnax]

1. Train a target policy pi with pgjax PPO (a short run: --ppo-steps).
2. Log --num-episodes episodes of the behaviour policy mu = (1 - epsilon) pi + epsilon uniform
   with `pgjax.offline.collect_env` (each at most --horizon steps).
3. Estimate the discounted value J(pi) = E_pi[sum_t gamma^t r_t] from the logged data only:
   neural DualDICE (plain and self-normalised), neural fitted Q evaluation, the doubly robust
   combination of both (`pgjax.offline.doubly_robust`), and per-decision / weighted importance
   sampling with log pi(a_t|s_t) from the policy network.
4. Compare with an on-policy Monte Carlo estimate from --mc-episodes fresh episodes of pi, and
   with the naive average discounted return of the logged (behaviour) episodes.
5. Offline policy gradient of J with respect to the actor's parameters, from the logged data only:
   g_off = 1/(1-gamma) E_D[w(s,a) grad log pi(a|s) Q_hat(s,a)] with w from the neural DualDICE
   and Q_hat from the neural FQE (`offline_policy_gradient_loss`); the same with the advantage
   Q_hat - V_hat (V_hat(s) = sum_a pi(a|s) Q_hat(s,a)) as the weight; the advantage form without
   the ratio (w = 1, a control); and the PDIS gradient (jax.grad of the PDIS value). Each is
   compared, by cosine and relative error, with a reference gradient from --reference-episodes
   fresh episodes of pi: the theorem form sum_t gamma^t grad log pi(a_t|s_t) (G_t - b(s_t))
   (`on_policy_gradient_loss`; G_t the discounted reward-to-go, b = PPO's critic, which leaves it
   unbiased), averaged over episodes. Its own noise is reported from --reference-chunks
   independent chunks of episodes: the cosine between the two halves and the relative standard error.
6. Offline improvement (--improve-steps > 0): Adam steps on the actor along the offline advantage
   gradient (w and Q_hat held fixed), then the on-policy Monte Carlo value of the new actor
   against the old, on the same random numbers (paired standard error). With --improve-control,
   also the same steps on the on-policy reference surrogate (fresh episodes of pi: not offline).
7. With --datasets K > 1: step 3 again on K - 1 more logged datasets of mu; each estimator's mean
   relative error over the K datasets and its standard error separate bias from one dataset's noise.

DualDICE and FQE bootstrap past the horizon (time limits are truncations), the IS estimators and
Monte Carlo stop there: the two targets differ by at most gamma^horizon r_max / (1 - gamma)
(0.66 on CartPole with the defaults). On CartPole r = 1 on every step, so the value is carried
by when episodes terminate: the self-normalised DualDICE estimate is 1 / (1 - gamma) whatever
the ratio, and the plain one is (mean ratio) / (1 - gamma).
The reference gradient stops at the horizon too (the gradient of the T-step return).
Prints two tables and writes results.csv (one row per estimator: quantity "value" or "gradient";
for a gradient, estimate is its norm, error the norm of its difference from the reference and
cosine the cosine with it), datasets.csv with --datasets (dataset, method, estimate, relative_error)
and config.json to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgjax import algos, envs, tables
from pgjax.algos import common
from pgjax.offline import importance
from pgjax.offline import neural
from pgjax.offline.collect_env import collect_env
from pgjax.offline.doubly_robust import neural_doubly_robust_value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", help="a gymnax environment with discrete actions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppo-steps", type=int, default=100_000, help="environment steps of the PPO run giving pi")
    p.add_argument("--ppo-learning-rate", type=float, default=2.5e-4,
                   help="the default gives a good but imperfect CartPole policy in 1e5 steps "
                        "(247.1 of 500 on a 2-core CPU, jax 0.9.2, 2026-12-05)")
    p.add_argument("--epsilon", type=float, default=0.3, help="behaviour mu = (1 - epsilon) pi + epsilon uniform")
    p.add_argument("--discount", type=float, default=0.99)
    p.add_argument("--num-episodes", type=int, default=100, help="logged behaviour episodes")
    p.add_argument("--horizon", type=int, default=500, help="maximum steps per logged episode")
    p.add_argument("--mc-episodes", type=int, default=1000, help="on-policy episodes for the Monte Carlo reference")
    p.add_argument("--dualdice-steps", type=int, default=20_000,
                   help="DualDICE's min-max converges slowly at gamma = 0.99: more steps and larger batches than FQE")
    p.add_argument("--dualdice-batch-size", type=int, default=1024)
    p.add_argument("--fqe-steps", type=int, default=10_000)
    p.add_argument("--fqe-batch-size", type=int, default=256)
    p.add_argument("--reference-episodes", type=int, default=10_000,
                   help="on-policy episodes of pi for the reference gradient")
    p.add_argument("--reference-chunks", type=int, default=10,
                   help="independent chunks of the reference episodes, for its half-split cosine and standard error")
    p.add_argument("--improve-steps", type=int, default=5,
                   help="Adam steps on the actor along the offline gradient (0: skip the improvement round)")
    p.add_argument("--improve-learning-rate", type=float, default=1e-3)
    p.add_argument("--improve-control", action="store_true",
                   help="also take the same Adam steps on the on-policy reference surrogate (~1 min more)")
    p.add_argument("--datasets", type=int, default=1,
                   help="K > 1: also log K - 1 more datasets of mu and rerun the value estimators on each, then report "
                        "every estimator's mean error over the K datasets with its standard error: bias, not one "
                        "dataset's noise (~28 s per dataset at the default sizes on 2 CPU cores; writes datasets.csv)")
    p.add_argument("--out", default=os.path.join("runs", "offline-gymnax"))
    args = p.parse_args(argv)
    if not 0.0 <= args.epsilon <= 1.0:
        p.error(f"--epsilon must lie in [0, 1]; got {args.epsilon}")
    if not 0.0 < args.discount < 1.0:
        p.error(f"--discount must lie in (0, 1); got {args.discount}")
    if np.float32(args.discount) == 1.0:  # caught here, not after minutes of PPO: the networks compute in float32
        p.error(f"--discount {args.discount} rounds to 1.0 in float32, which this script computes in; "
                "use a smaller one")
    for name in ("ppo_steps", "num_episodes", "horizon", "mc_episodes", "dualdice_steps", "dualdice_batch_size",
                 "fqe_steps", "fqe_batch_size", "reference_episodes", "datasets"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.mc_episodes < 2:  # the reference's standard error (and the improvement's paired one) needs a spread
        p.error(f"--mc-episodes must be >= 2 (the Monte Carlo reference reports its standard error); got "
                f"{args.mc_episodes}")
    for name in ("dualdice_batch_size", "fqe_batch_size"):  # caught here, before minutes of PPO and logging
        if getattr(args, name) > args.num_episodes * args.horizon:
            p.error(f"--{name.replace('_', '-')} ({getattr(args, name)}) is larger than the most transitions the "
                    f"logged episodes can hold (--num-episodes x --horizon = {args.num_episodes * args.horizon})")
    if args.reference_chunks < 2 or args.reference_chunks % 2 or args.reference_episodes % args.reference_chunks:
        p.error("--reference-chunks must be even, >= 2, and divide --reference-episodes")
    if args.improve_steps < 0 or not args.improve_learning_rate > 0:
        p.error("--improve-steps must be >= 0 and --improve-learning-rate > 0")
    tables.check_output_path(p.error, "--out", args.out, "dir")
    try:  # the PPO run's config, checked here rather than in a traceback once the script has started
        ppo_config(args.env, args.ppo_steps, args.ppo_learning_rate)
    except ValueError as err:
        p.error(f"--env / --ppo-steps / --ppo-learning-rate: {err}")
    return args


def ppo_config(env_id: str, total_timesteps: int, learning_rate: float):
    """PPO's defaults otherwise, without observation normalisation, so the policy network reads the raw
    observations that `collect_env` logs (validated: `ValueError` naming the field)."""
    config_cls, _ = algos.get("ppo")
    return config_cls(env_id=env_id, total_timesteps=total_timesteps, learning_rate=learning_rate,
                      normalize_observations=False)


def train_target(key, env_id: str, total_timesteps: int, learning_rate: float):
    """PPO (`ppo_config`) on env_id; returns (network, params, mean training return of the last 5 updates)."""
    config = ppo_config(env_id, total_timesteps, learning_rate)
    _, make_train = algos.get("ppo")
    spec = common.make_env(config)
    if not spec.discrete:
        raise SystemExit(f"{env_id} has continuous actions; this demo needs discrete ones.")
    output = jax.jit(make_train(config))(key)
    returns = np.asarray(output.metrics["episode_return"])
    return common.actor_critic(config, spec), output.agent.params, float(np.nanmean(returns[-5:]))


def discounted_returns(data, discount: float) -> np.ndarray:
    powers = discount ** np.arange(data.horizon)
    return np.sum(np.asarray(data.rewards) * np.asarray(data.mask) * powers, axis=1)


def flatten(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    # Clipped: a vector's cosine with itself can round to 1 + 2e-16 (the reference's own row did, at another seed).
    return float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))


def estimate_values(args, data, target_probs, target_log_probs, key_dice, key_fqe, config, fqe_config):
    """The off-policy value estimates of J(pi) from one logged dataset (target_log_probs: jitted log pi(a|s)).

    Returns ({method: (estimate, seconds, note)}, the DualDICE params, FQE's q_fn).
    """
    for flag, size in (("--dualdice-batch-size", config.batch_size), ("--fqe-batch-size", fqe_config.batch_size)):
        if size > data.num_transitions:  # episodes that end early log fewer: each dataset has its own count
            raise SystemExit(f"error: {flag} ({size}) is larger than a logged dataset's {data.num_transitions} "
                             "transitions: lower it, or log more with --num-episodes / --horizon")
    out = {}
    start = time.perf_counter()
    dice_params, dice_info = neural.neural_dualdice(key_dice, data, target_probs, config)
    seconds = time.perf_counter() - start
    settled = f"saddle gap {float(dice_info['saddle_gap']):.3f} (unsettled above {neural.SADDLE_GAP_WARNING})"
    out["neural DualDICE"] = (float(dice_info["value"]), seconds,
                              f"mean ratio {float(dice_info['mean_ratio']):.3f}, {settled}")
    out["neural DualDICE (normalised)"] = (
        float(dice_info["value_normalised"]), seconds,
        "biased when pi terminates (E_D[w] < 1); constant 1/(1-gamma) when r = 1 on every step")

    start = time.perf_counter()
    _, q_fn, fqe_info = neural.fitted_q_evaluation(key_fqe, data, target_probs, args.discount, fqe_config)
    out["neural FQE"] = (float(fqe_info["value"]), time.perf_counter() - start, "")

    start = time.perf_counter()
    dr = neural_doubly_robust_value(dice_params, q_fn, data, target_probs, args.discount)
    out["DualDICE w + FQE Q (doubly robust)"] = (
        float(dr), time.perf_counter() - start,
        "mean V_hat(s0) + E_D[w (r + gamma V_hat(s') - Q_hat)] / (1-gamma): exact if either w or Q_hat is")

    start = time.perf_counter()
    target_lp = target_log_probs(data.observations, data.actions)
    weights = importance.importance_weights(target_lp, data.behaviour_log_probs, data.mask)
    ess = importance.effective_sample_size(weights)
    for method in ("pdis", "wis"):
        if method == "wis":
            start = time.perf_counter()  # each its own seconds (WIS's included PDIS's)
        value = importance.importance_value(data.rewards, data.mask, target_lp, data.behaviour_log_probs,
                                            args.discount, method)
        note = f"trajectory-weight ESS {float(ess):.1f} of {data.rewards.shape[0]}" if method == "wis" else ""
        out[method.upper()] = (float(value), time.perf_counter() - start, note)
    return out, dice_params, q_fn


class Policies(NamedTuple):
    """The PPO target pi and the logging policy mu = (1 - epsilon) pi + epsilon / A, as functions of observations."""

    network: Any
    params: Any
    probs: Callable  # obs [..., d] -> pi(.|s) [..., A]
    log_probs: Callable  # jitted (obs [N, T, d], actions [N, T]) -> log pi(a_t|s_t) [N, T]
    target: Callable  # `collect_env` policy of pi: (key, obs) -> (action, log pi(action|obs))
    behaviour: Callable  # the same for mu

    def dist(self, actor, obs):
        """The network's action distribution at obs with its actor's parameters replaced by `actor`."""
        return self.network.apply({"params": {**self.params["params"], "actor": actor}}, obs)[0]


def sampler(probs_fn: Callable) -> Callable:
    """A `collect_env` policy drawing a ~ probs_fn(obs) and logging log probs_fn(obs)[a]."""
    def policy(key, obs):
        probs = probs_fn(obs)
        action = jax.random.categorical(key, jnp.log(probs)).astype(jnp.int32)
        return action, jnp.log(probs[action])

    return policy


def make_policies(network, params, num_actions: int, epsilon: float) -> Policies:
    """pi from the PPO network's actor head, mu = (1 - epsilon) pi + epsilon / num_actions."""
    def probs(obs):
        return network.apply(params, obs)[0].probs

    @jax.jit  # compiled once, for every logged dataset (they share their [N, T] shape)
    def log_probs(obs, actions):
        return network.apply(params, obs)[0].log_prob(actions)

    behaviour = sampler(lambda obs: (1.0 - epsilon) * probs(obs) + epsilon / num_actions)
    return Policies(network, params, probs, log_probs, sampler(probs), behaviour)


class Logger(NamedTuple):
    """Where and how episodes are logged: `env` for at most `horizon` steps, their values discounted by `discount`."""

    env: Any
    env_params: Any
    horizon: int
    discount: float

    def episodes(self, key, policy, num_episodes: int):
        """`num_episodes` episodes of `policy` (a `collect_env` policy), padded to `horizon` steps."""
        return collect_env(key, self.env, self.env_params, policy, num_episodes, self.horizon)

    def returns(self, data) -> np.ndarray:
        """Each episode's discounted return sum_t gamma^t r_t: [N]."""
        return discounted_returns(data, self.discount)


def value_row(method: str, estimate, truth: float, seconds: float, note: str = "") -> dict:
    """A results.csv row of a value estimate, its error scored against the Monte Carlo value `truth`."""
    estimate = float(estimate)
    return dict(quantity="value", method=method, estimate=estimate, error=estimate - truth,
                relative_error=(estimate - truth) / abs(truth), cosine="", seconds=round(seconds, 2), note=note)


def gradient_row(method: str, g, reference: np.ndarray, seconds: float, note: str = "") -> dict:
    """A results.csv row of a gradient (a pytree or flat): its norm, and its error and cosine against `reference`."""
    g = flatten(g) if not isinstance(g, np.ndarray) else g
    err = np.linalg.norm(g - reference)
    return dict(quantity="gradient", method=method, estimate=float(np.linalg.norm(g)), error=float(err),
                relative_error=float(err / np.linalg.norm(reference)), cosine=cosine(g, reference),
                seconds=round(seconds, 2), note=note)


def make_on_policy_gradients(policies: Policies, discount: float) -> Callable:
    """jitted (actor, chunks) -> (no-baseline, critic-baseline) gradients of J, each a pytree with one row per chunk.

    chunks: (observations [C, n, T, d], actions, rewards, mask [C, n, T]) of episodes of pi. Each chunk's gradient is
    the theorem form sum_t gamma^t grad log pi(a_t|s_t) (G_t - b(s_t)) averaged over its n episodes, with b = 0 and
    with b = PPO's critic V(s_t) (a state baseline: still unbiased).
    """
    @jax.jit
    def on_policy_gradients(actor, chunks):
        def one(chunk):
            obs, actions, rewards, mask = chunk
            baseline = policies.network.apply(policies.params, obs)[1]
            log_probs, vjp = jax.vjp(lambda a: policies.dist(a, obs).log_probs, actor)
            grads = []
            for b in (None, baseline):
                # -loss is linear in the log-probabilities: its gradient is one vector-Jacobian product.
                cotangent = jax.grad(
                    lambda lp: -neural.on_policy_gradient_loss(lp, actions, rewards, mask, discount, b)
                )(log_probs)
                grads.append(vjp(cotangent)[0])
            return tuple(grads)

        return jax.lax.map(one, chunks)

    return on_policy_gradients


def gradient_noise(per_chunk: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Of per-chunk gradients [C, P] (C even): their mean, the cosine between the means of the two halves, and the
    relative standard error of the mean sqrt(sum_p Var_p / C) / |mean|."""
    half = len(per_chunk) // 2
    mean = per_chunk.mean(0)
    se = np.sqrt(np.sum(per_chunk.var(0, ddof=1)) / len(per_chunk))
    return mean, cosine(per_chunk[:half].mean(0), per_chunk[half:].mean(0)), se / np.linalg.norm(mean)


def make_offline_gradient(policies: Policies, data, discount: float) -> Callable:
    """jitted (actor, w [N, T], weights [N, T]) -> g_off = 1/(1-gamma) E_D[w grad log pi(a|s) weight] (a pytree
    like actor; `offline_policy_gradient_loss` on the logged data)."""
    def offline_loss(actor, w, weights):
        log_probs = policies.dist(actor, data.observations).log_probs
        return neural.offline_policy_gradient_loss(log_probs, data.actions, w, weights, discount, data.mask)

    return jax.jit(lambda a, w, weights: jax.tree_util.tree_map(jnp.negative, jax.grad(offline_loss)(a, w, weights)))


def improve(actor, ascent_direction: Callable, steps: int, learning_rate: float):
    """`steps` Adam steps on the actor up ascent_direction(actor) (recomputed at each step)."""
    tx = optax.adam(learning_rate)
    opt = tx.init(actor)
    for _ in range(steps):
        updates, opt = tx.update(jax.tree_util.tree_map(jnp.negative, ascent_direction(actor)), opt, actor)
        actor = optax.apply_updates(actor, updates)
    return actor


def improvement_round(args, policies: Policies, logger: Logger, directions: dict, key_mc, mc: np.ndarray,
                      reference: np.ndarray):
    """For each named ascent direction: --improve-steps Adam steps on the actor, then the new policy's Monte Carlo
    value on the same key as the reference's episodes (common random numbers: a paired comparison with `mc`).

    Returns ({name: new value, change, paired s.e., step cosine with the reference gradient}, results.csv rows).
    """
    actor = policies.params["params"]["actor"]
    truth = float(mc.mean())
    improvement, rows = {}, []

    def sample_actor(actor, key, obs):  # one function for every new actor: its episodes compile once
        return sampler(lambda o: policies.dist(actor, o).probs)(key, obs)

    for name, direction in directions.items():
        start = time.perf_counter()
        new_actor = improve(actor, direction, args.improve_steps, args.improve_learning_rate)
        new_policy = jax.tree_util.Partial(sample_actor, new_actor)
        new_mc = logger.returns(logger.episodes(key_mc, new_policy, args.mc_episodes))
        diff = new_mc - mc
        result = dict(new=float(new_mc.mean()), difference=float(diff.mean()),
                      difference_se=float(diff.std(ddof=1) / np.sqrt(len(diff))),
                      step_cosine=cosine(flatten(new_actor) - flatten(actor), reference))
        improvement[name] = result
        rows.append(dict(quantity="value", method=f"pi + {args.improve_steps} Adam steps on {name}",
                         estimate=result["new"], error=result["difference"],
                         relative_error=result["difference"] / abs(truth), cosine="",
                         seconds=round(time.perf_counter() - start, 2),
                         note=f"on-policy Monte Carlo; error = change, paired s.e. {result['difference_se']:.2f}; "
                              f"step cosine with the reference gradient {result['step_cosine']:.3f}"))
    return improvement, rows


def print_tables(value_rows: list[dict], gradient_rows: list[dict], improvement: dict, args, truth: float):
    """The value table, the gradient table and, after an improvement round, each direction's change of J(pi)."""
    print()
    print(f"{'value of pi':52s} {'estimate':>9s} {'error':>9s} {'rel. err':>9s} {'time (s)':>9s}  note")
    for r in value_rows:
        print(f"{r['method']:52s} {r['estimate']:9.2f} {r['error']:9.2f} {r['relative_error']:9.1%} "
              f"{r['seconds']:9.1f}  {r['note']}")
    print()
    print(f"{'gradient of J w.r.t. the actor':52s} {'norm':>9s} {'cosine':>9s} {'rel. err':>9s} {'time (s)':>9s}  note")
    for r in gradient_rows:
        print(f"{r['method']:52s} {r['estimate']:9.2f} {r['cosine']:9.3f} {r['relative_error']:9.1%} "
              f"{r['seconds']:9.1f}  {r['note']}")
    if improvement:
        print()
    for name, result in improvement.items():
        print(f"{args.improve_steps} Adam steps (learning rate {args.improve_learning_rate}) on {name}: "
              f"J(pi) {truth:.2f} -> {result['new']:.2f} ({result['difference']:+.2f} +- "
              f"{result['difference_se']:.2f} paired s.e.)")


def dataset_values(logged_returns: np.ndarray, estimates: dict) -> dict:
    """{method: value} of one logged dataset: the naive average of its discounted returns, then `estimate_values`'."""
    return {"behaviour average (naive)": float(logged_returns.mean()), **{m: v for m, (v, _, _) in estimates.items()}}


def dataset_study(args, policies: Policies, logger: Logger, first_values: dict, keys: tuple, configs: tuple,
                  truth: float) -> list[dict]:
    """The value estimates on --datasets logs of mu (dataset 0: `first_values`, already estimated; the others fresh
    logs estimated with fresh keys, folded in from keys = (key_data, key_dice, key_fqe)). Returns datasets.csv's rows
    and prints each estimator's mean relative error over the datasets with its standard error."""
    key_data, key_dice, key_fqe = keys
    rows = []
    for k in range(args.datasets):
        if k:
            extra = logger.episodes(jax.random.fold_in(key_data, k), policies.behaviour, args.num_episodes)
            estimates, _, _ = estimate_values(args, extra, policies.probs, policies.log_probs,
                                              jax.random.fold_in(key_dice, k), jax.random.fold_in(key_fqe, k), *configs)
            values = dataset_values(logger.returns(extra), estimates)
        else:
            values = first_values
        rows += [dict(dataset=k, method=m, estimate=v, relative_error=(v - truth) / abs(truth))
                 for m, v in values.items()]
        print(f"dataset {k + 1} of {args.datasets} estimated", flush=True)
    print()
    print(f"{'value of pi over ' + str(args.datasets) + ' logged datasets':52s} {'mean err':>9s} {'s.e.':>9s} "
          f"{'min':>9s} {'max':>9s}   (relative errors against the Monte Carlo value {truth:.2f})")
    for method in dict.fromkeys(r["method"] for r in rows):
        e = np.array([r["relative_error"] for r in rows if r["method"] == method])
        print(f"{method:52s} {e.mean():9.1%} {e.std(ddof=1) / np.sqrt(len(e)):9.1%} {e.min():9.1%} {e.max():9.1%}")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    key_ppo, key_data, key_mc, key_dice, key_fqe = jax.random.split(jax.random.key(args.seed), 5)
    # The reference gradient's key, folded in so the evaluation above keeps its random numbers.
    key_ref, _ = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), 1))
    timings = {}

    # 1. The target policy pi, and the behaviour mu that logs the data.
    start = time.perf_counter()
    network, params, ppo_return = train_target(key_ppo, args.env, args.ppo_steps, args.ppo_learning_rate)
    timings["ppo"] = time.perf_counter() - start
    print(f"PPO target policy after {args.ppo_steps:,} steps: mean undiscounted return {ppo_return:.1f} "
          f"({timings['ppo']:.1f}s)")
    env, env_params = envs.make(args.env)
    env = envs.FlattenObservation(env)
    policies = make_policies(network, params, envs.action_dim(env, env_params), args.epsilon)
    logger = Logger(env, env_params, args.horizon, args.discount)

    # 2-4. The logged data, the Monte Carlo truth, and the value estimates from the data.
    start = time.perf_counter()
    data = logger.episodes(key_data, policies.behaviour, args.num_episodes)
    on_policy = logger.episodes(key_mc, policies.target, args.mc_episodes)
    timings["collect"] = time.perf_counter() - start
    mc = logger.returns(on_policy)
    truth, truth_se = float(mc.mean()), float(mc.std(ddof=1) / np.sqrt(len(mc)))
    logged = logger.returns(data)
    print(f"Logged {data.num_transitions:,} transitions in {args.num_episodes} episodes of mu "
          f"(epsilon {args.epsilon}); mean length {np.asarray(data.mask).sum(1).mean():.1f} vs "
          f"{np.asarray(on_policy.mask).sum(1).mean():.1f} under pi")
    rows = [value_row("on-policy Monte Carlo (reference)", truth, truth, timings["collect"],
                      f"+- {truth_se:.2f} (1 s.e.)"),
            value_row("behaviour average (naive)", logged.mean(), truth, 0.0,
                      "mean discounted return of the logged episodes")]
    configs = (neural.NeuralDualDICEConfig(discount=args.discount, num_steps=args.dualdice_steps,
                                           batch_size=args.dualdice_batch_size),
               neural.FQEConfig(num_steps=args.fqe_steps, batch_size=args.fqe_batch_size))
    estimates, dice_params, q_fn = estimate_values(args, data, policies.probs, policies.log_probs, key_dice, key_fqe,
                                                   *configs)
    rows += [value_row(method, value, truth, seconds, note) for method, (value, seconds, note) in estimates.items()]
    first_values = dataset_values(logged, estimates)

    # 5. Policy gradients with respect to the actor's parameters. The reference: the theorem form on fresh episodes
    # of pi, per chunk of episodes.
    actor = params["params"]["actor"]
    start = time.perf_counter()
    reference_data = logger.episodes(key_ref, policies.target, args.reference_episodes)
    chunks = jax.tree_util.tree_map(
        lambda x: x.reshape(args.reference_chunks, -1, *x.shape[1:]),
        (reference_data.observations, reference_data.actions, reference_data.rewards, reference_data.mask),
    )
    on_policy_gradients = make_on_policy_gradients(policies, args.discount)
    per_chunk = [np.stack([flatten(jax.tree_util.tree_map(lambda x: x[k], tree))
                           for k in range(args.reference_chunks)])
                 for tree in on_policy_gradients(actor, chunks)]
    timings["reference"] = time.perf_counter() - start
    plain, plain_halves, plain_rse = gradient_noise(per_chunk[0])
    reference, ref_halves, ref_rse = gradient_noise(per_chunk[1])
    print(f"Reference gradient from {args.reference_episodes} episodes of pi ({timings['reference']:.1f}s): "
          f"half-split cosine {ref_halves:.3f}, relative s.e. {ref_rse:.3f} (critic baseline); "
          f"without the baseline {plain_halves:.3f}, {plain_rse:.3f}")
    grad_rows = [
        gradient_row("on-policy, critic baseline (reference)", reference, reference, timings["reference"],
                     f"half-split cosine {ref_halves:.3f}, relative s.e. {ref_rse:.3f}; "
                     f"{args.reference_episodes} episodes"),
        gradient_row("on-policy, no baseline", plain, reference, timings["reference"],
                     f"half-split cosine {plain_halves:.3f}, relative s.e. {plain_rse:.3f}; "
                     "same episodes (shared noise)"),
    ]

    # Offline: w from DualDICE and Q_hat from FQE on the logged data, held fixed.
    start = time.perf_counter()
    ratios = neural.neural_dualdice_ratio(dice_params, data.observations, data.actions)
    q_all = q_fn(data.observations)
    q_sa = jnp.take_along_axis(q_all, data.actions[..., None], axis=-1)[..., 0]
    advantages = q_sa - jnp.sum(policies.probs(data.observations) * q_all, axis=-1)
    offline_grad = make_offline_gradient(policies, data, args.discount)
    grad_rows.append(gradient_row("offline DualDICE w x FQE Q", offline_grad(actor, ratios, q_sa), reference,
                                  time.perf_counter() - start, "g_off = 1/(1-gamma) E_D[w grad log pi Q_hat]"))
    for method, w, note in (
        ("offline DualDICE w x FQE advantage", ratios, "weight Q_hat - V_hat, V_hat = sum_a pi Q_hat"),
        ("offline w = 1 x FQE advantage (control)", jnp.ones_like(ratios),
         "no ratio correction: the behaviour's state distribution"),
    ):
        start = time.perf_counter()
        grad_rows.append(gradient_row(method, offline_grad(actor, w, advantages), reference,
                                      time.perf_counter() - start, note))
    start = time.perf_counter()
    pdis_grad = jax.jit(jax.grad(lambda a: importance.importance_value(
        data.rewards, data.mask, policies.dist(a, data.observations).log_prob(data.actions), data.behaviour_log_probs,
        args.discount, "pdis")))(actor)
    grad_rows.append(gradient_row("PDIS", pdis_grad, reference, time.perf_counter() - start,
                                  "jax.grad of the PDIS value"))

    # 6. One offline improvement round along the offline advantage gradient.
    improvement = {}
    if args.improve_steps:
        directions = {
            # The offline surrogate: w and Q_hat - V_hat fixed, log pi at the moving actor; logged data only.
            "offline g_off (w x advantage)": lambda a: offline_grad(a, ratios, advantages),
        }
        if args.improve_control:
            # Control: the same steps on the on-policy surrogate of the reference episodes (not offline).
            directions["on-policy reference (control)"] = lambda a: jax.tree_util.tree_map(
                lambda x: x.mean(0), on_policy_gradients(a, chunks)[1])
        improvement, improved_rows = improvement_round(args, policies, logger, directions, key_mc, mc, reference)
        rows += improved_rows
    print_tables(rows, grad_rows, improvement, args, truth)

    # 7. The value estimates on more logged datasets.
    dataset_rows = []
    if args.datasets > 1:
        dataset_rows = dataset_study(args, policies, logger, first_values, (key_data, key_dice, key_fqe), configs,
                                     truth)

    os.makedirs(args.out, exist_ok=True)
    tables.write_csv(os.path.join(args.out, "results.csv"), rows + grad_rows)
    if dataset_rows:
        tables.write_csv(os.path.join(args.out, "datasets.csv"), dataset_rows)
    dice_config, fqe_config = configs
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({**vars(args), "ppo_return": ppo_return, "dualdice": dataclasses.asdict(dice_config),
                   "fqe": dataclasses.asdict(fqe_config), "improvement": improvement, "jax": jax.__version__},
                  f, indent=2, default=str)
    print(f"\nwrote {os.path.join(args.out, 'results.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
