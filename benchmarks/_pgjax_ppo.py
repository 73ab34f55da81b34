"""Worker: pgjax's PPO (`--mode ppo`) or raw gymnax stepping (`--mode ceiling`) on CartPole-v1,
timed the same way as `_rejax_ppo.py`. Run by `ppo_vs_rejax.py` with pgjax's interpreter.

ceiling: `4 * seeds` gymnax (1.x) CartPole-v1 environments in one vmapped batch, stepped
with uniformly random actions (auto-reset included) in a jitted `lax.scan` of
num_updates * num_steps steps: the same env steps as a training run, with no network and no
learning, so no PPO at this batch size can step faster.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import _bench_common as bc

# Import pgjax from this checkout even when the interpreter has not installed it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_ppo(args, info):
    import jax
    import jax.numpy as jnp
    import gymnax
    from jax import lax

    from pgjax import parallel
    from pgjax.algos import common, ppo

    try:
        speed_fields = bc.parse_speed_config(args.pgjax_config)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    config = bc.pgjax_ppo_config(args.total_timesteps, split_actor_critic=args.split_actor_critic, **speed_fields)
    assert config.num_updates == bc.num_updates(args.total_timesteps)
    steps = config.num_updates * config.batch_size
    train = ppo.make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    fn, arg = (train, keys[0]) if args.seeds == 1 else (jax.vmap(train), keys)
    devices = 1
    if args.seeds > 1 and args.cpu_devices > 1:
        fn = parallel.vmap_sharded(train)  # seeds split over the CPU devices, each running its share
        arg = fn.place(keys)[0]
        devices = len(arg.sharding.device_set)
    elif args.seeds == 1 and args.cpu_devices > 1:
        if not args.split_actor_critic:
            raise SystemExit("one seed over several CPU devices needs --split-actor-critic")
        fn = parallel.actor_critic_sharded(train)  # the actor's epochs on one core, the critic's on the other
        devices = 2
    bc.log(f"[pgjax] {args.seeds} seed(s) x {steps} steps: compiling ...")
    out, timing = bc.time_compiled(fn, arg, repeats=args.repeats)
    bc.log(f"[pgjax] compile {timing['compile_s']:.1f} s, run {timing['run_s']:.2f} s")

    returns = None
    if args.eval_episodes > 0:
        # The same evaluation as rejax.evaluate: reset, sample from the stochastic policy,
        # sum rewards until the episode ends or max_steps_in_episode, per episode.
        network = common.actor_critic(config, common.make_env(config))
        env, env_params = gymnax.make(config.env_id)
        n = args.eval_episodes

        def evaluate_one(params, key):
            key_reset, key_loop = jax.random.split(key)
            obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, n), env_params)

            def step(carry, k):
                obs, state, done, ret = carry
                k_act, k_env = jax.random.split(k)
                dist, _ = network.apply(params, obs)
                action = dist.sample(k_act)
                obs, state, reward, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                    jax.random.split(k_env, n), state, action, env_params
                )
                ret = ret + reward * (1.0 - done)
                done = jnp.maximum(done, jnp.logical_or(term, trunc).astype(jnp.float32))
                return (obs, state, done, ret), None

            init = (obs, state, jnp.zeros(n), jnp.zeros(n))
            (_, _, _, ret), _ = lax.scan(step, init, jax.random.split(key_loop, env_params.max_steps_in_episode))
            return ret.mean()

        params = out.agent.params
        eval_keys = jax.random.split(jax.random.PRNGKey(1), args.seeds)
        if args.seeds == 1:
            returns = np.atleast_1d(np.asarray(jax.jit(evaluate_one)(params, eval_keys[0])))
        else:
            returns = np.asarray(jax.jit(jax.vmap(evaluate_one))(params, eval_keys))
        returns = [float(r) for r in returns]

    split = bc.impl_suffix(speed_fields) + ("-split" if args.split_actor_critic else "")
    return {
        "impl": f"pgjax{split}" if args.cpu_devices == 1 else f"pgjax{split}-{devices}dev",
        "steps_per_seed": steps,
        **timing,
        "final_returns": returns,
        "devices": devices,
        "notes": "pgjax.algos.ppo.make_train, jit (1 seed) or jit(vmap) (seeds > 1); metrics kept on device"
        + (f"; {args.pgjax_config}" if speed_fields else "")
        + (f"; seeds split over {devices} CPU devices (pgjax.parallel)"
           if args.cpu_devices > 1 and args.seeds > 1 else "")
        + ("; split_actor_critic=True: actor and critic each clipped by their own gradient norm, "
           "as rejax optimises them separately" if args.split_actor_critic else "")
        + ("; update split over 2 CPU devices (parallel.actor_critic_sharded)"
           if args.seeds == 1 and devices > 1 else ""),
    }


def run_ceiling(args, info):
    import jax
    import jax.numpy as jnp
    import gymnax
    from jax import lax

    env, env_params = gymnax.make(bc.HPARAMS["env_id"])
    b = bc.HPARAMS["num_envs"] * args.seeds
    t = bc.num_updates(args.total_timesteps) * bc.HPARAMS["num_steps"]
    num_actions = env.action_space(env_params).n

    def run(key):
        key_reset, key_loop = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, b), env_params)

        def step(carry, k):
            state, total = carry
            k_act, k_env = jax.random.split(k)
            action = jax.random.randint(k_act, (b,), 0, num_actions)
            _, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, b), state, action, env_params
            )
            return (state, total + reward.sum()), None

        (state, total), _ = lax.scan(step, (state, jnp.zeros(())), jax.random.split(key_loop, t))
        return total

    bc.log(f"[ceiling] {b} envs x {t} steps of random actions: compiling ...")
    _, timing = bc.time_compiled(run, jax.random.PRNGKey(0), repeats=args.repeats)
    bc.log(f"[ceiling] compile {timing['compile_s']:.1f} s, run {timing['run_s']:.2f} s")
    return {
        "impl": "gymnax-ceiling",
        "steps_per_seed": t * bc.HPARAMS["num_envs"],
        **timing,
        "final_returns": None,
        "notes": f"raw gymnax step, {b} envs vmapped, random actions, lax.scan of {t} steps",
    }


def main() -> None:
    args = bc.worker_args(__doc__.splitlines()[0])
    if args.cpu_devices > 1:
        from pgjax import parallel  # before JAX starts: the CPU device count is fixed then

        parallel.use_cpu_devices(args.cpu_devices)
    info = bc.system_info(("pgjax", "gymnax", "flax", "optax", "chex", "numpy"))
    tag = "pgjax" if args.mode == "ppo" else "ceiling"
    bc.log(f"[{tag}] jax {info['jax']} backend={info['backend']} device={info['device']} "
           f"gymnax {info['packages']['gymnax']}")
    record = run_ppo(args, info) if args.mode == "ppo" else run_ceiling(args, info)
    record.update(
        seeds=args.seeds,
        env_steps=record["steps_per_seed"] * args.seeds,
        eval_episodes=args.eval_episodes if args.mode == "ppo" else 0,
        info=info,
    )
    bc.write_json(args.json_out, record)


if __name__ == "__main__":
    main()
