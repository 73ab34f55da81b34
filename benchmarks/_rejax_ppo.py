"""Worker: rejax 0.1.3's PPO on gymnax (0.0.9) CartPole-v1, timed. Run by `ppo_vs_rejax.py`
with the interpreter of rejax's own virtual environment (benchmarks/.rejax-venv); never
imported by pgjax.

What is set, and why (read from rejax 0.1.3's source: rejax/algos/ppo.py, mixins.py,
algorithm.py):
  * Same hyperparameters as pgjax's PPO (`_bench_common.HPARAMS`). rejax has no learning-rate
    annealing flag; its `learning_rate` goes straight into `optax.adam`, so we pass
    `optax.linear_schedule(2.5e-4 -> 0)` over num_updates * epochs * minibatches Adam steps,
    pgjax's schedule. rejax applies `max_grad_norm` as element-wise `optax.clip` (its own
    choice; pgjax clips the global norm), and keeps separate actor and critic optimisers.
  * Evaluation off: rejax's `train` runs `eval_callback` (128 episodes of the stochastic policy, up to
    500 steps, a `while_loop`) every `eval_freq` steps, 4096 by default. We set
    `skip_initial_evaluation=True`, `eval_freq = total_timesteps` (one outer iteration, exactly
    num_updates training iterations) and replace `eval_callback` by a no-op, so the timed
    program is training only. The final policy is then evaluated once, untimed, with rejax's
    own `rejax.evaluate.evaluate` (stochastic policy, `--eval-episodes` episodes per seed).
"""

from __future__ import annotations

import numpy as np

import _bench_common as bc


def main() -> None:
    args = bc.worker_args(__doc__.splitlines()[0])
    import jax
    import optax
    import rejax
    from rejax.evaluate import evaluate

    info = bc.system_info(("rejax", "gymnax", "flax", "optax", "distrax", "chex", "numpy"))
    bc.log(f"[rejax] jax {info['jax']} backend={info['backend']} device={info['device']} "
           f"rejax {info['packages']['rejax']} gymnax {info['packages']['gymnax']}")

    hp = bc.HPARAMS
    updates = bc.num_updates(args.total_timesteps)
    steps = updates * bc.BATCH  # env steps per seed, same as pgjax
    schedule = optax.linear_schedule(hp["learning_rate"], 0.0, updates * hp["num_epochs"] * hp["num_minibatches"])
    algo = rejax.PPO.create(
        env=hp["env_id"],
        num_envs=hp["num_envs"],
        num_steps=hp["num_steps"],
        num_epochs=hp["num_epochs"],
        num_minibatches=hp["num_minibatches"],
        learning_rate=schedule if hp["anneal_lr"] else hp["learning_rate"],
        max_grad_norm=hp["max_grad_norm"],
        gamma=hp["discount"],
        gae_lambda=hp["gae_lambda"],
        clip_eps=hp["clip_eps"],
        ent_coef=hp["ent_coef"],
        vf_coef=hp["vf_coef"],
        total_timesteps=steps,
        eval_freq=steps,
        skip_initial_evaluation=True,
        agent_kwargs={"activation": hp["activation"], "hidden_layer_sizes": hp["hidden_sizes"]},
    )
    algo = algo.replace(eval_callback=lambda algo, ts, rng: ())

    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    if args.seeds == 1:
        fn, arg = algo.train, keys[0]
    else:
        fn, arg = jax.vmap(algo.train), keys
    bc.log(f"[rejax] {args.seeds} seed(s) x {steps} steps: compiling ...")
    (ts, _), timing = bc.time_compiled(fn, arg, repeats=args.repeats)
    bc.log(f"[rejax] compile {timing['compile_s']:.1f} s, run {timing['run_s']:.2f} s")

    returns = None
    if args.eval_episodes > 0:
        max_steps = algo.env_params.max_steps_in_episode

        def evaluate_one(ts, rng):
            _, ret = evaluate(algo.make_act(ts), rng, algo.env, algo.env_params, args.eval_episodes, max_steps)
            return ret.mean()

        eval_keys = jax.random.split(jax.random.PRNGKey(1), args.seeds)
        if args.seeds == 1:
            returns = np.atleast_1d(np.asarray(jax.jit(evaluate_one)(ts, eval_keys[0])))
        else:
            returns = np.asarray(jax.jit(jax.vmap(evaluate_one))(ts, eval_keys))
        returns = [float(r) for r in returns]

    bc.write_json(
        args.json_out,
        {
            "impl": "rejax",
            "seeds": args.seeds,
            "steps_per_seed": steps,
            "env_steps": steps * args.seeds,
            **timing,
            "final_returns": returns,
            "eval_episodes": args.eval_episodes,
            "info": info,
            "notes": "rejax eval_callback replaced by a no-op, skip_initial_evaluation=True, "
            "eval_freq=total_timesteps; lr annealed via optax.linear_schedule passed as learning_rate; "
            "max_grad_norm is rejax's element-wise optax.clip",
        },
    )


if __name__ == "__main__":
    main()
