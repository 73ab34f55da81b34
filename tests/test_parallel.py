"""pgjax.parallel: seeds split over several CPU devices give the same runs as one device (to float32 rounding).

The CPU device count is fixed when JAX's backend starts, so the two-device checks run in a fresh
interpreter; the rest runs here.
"""

import textwrap

import jax
import numpy as np
import pytest

from pgjax import parallel
from subprocess_env import run_cpu_python


def _runs_ok(script):
    """Run `script` in a fresh interpreter (its own CPU device count) and check it ends by printing OK."""
    done = run_cpu_python(script)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout[-2000:] + done.stderr[-4000:]


TWO_DEVICES = textwrap.dedent(
    """
    import jax
    from pgjax import parallel
    assert parallel.use_cpu_devices(2) == 2
    assert parallel.use_cpu_devices(2) == 2  # same count again: fine
    import numpy as np
    from pgjax.algos import ppo

    config = ppo.PPOConfig(total_timesteps=1024, num_steps=32, num_epochs=2, num_minibatches=2)
    train = ppo.make_train(config)
    keys = jax.random.split(jax.random.key(0), 4)
    run = parallel.vmap_sharded(train)
    sharded = run(keys)
    plain = jax.jit(jax.vmap(train))(keys)
    assert len(sharded.metrics["loss"].sharding.device_set) == 2, sharded.metrics["loss"].sharding
    assert len(plain.metrics["loss"].sharding.device_set) == 1
    # Each seed's program is unchanged; XLA may pick other kernels for 2 seeds per device than for 4 on one,
    # so values agree to float32 rounding (bit-for-bit on this machine so far; not promised).
    for a, b in zip(jax.tree_util.tree_leaves(sharded.agent.params), jax.tree_util.tree_leaves(plain.agent.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    for name in plain.metrics:
        np.testing.assert_allclose(np.asarray(sharded.metrics[name]), np.asarray(plain.metrics[name]),
                                   rtol=1e-4, atol=1e-5)
    # Same devices, same seed: the same bits (the same compiled program: a new wrapper would compile it again, ~8 s).
    again = run(keys)
    np.testing.assert_array_equal(np.asarray(again.metrics["loss"]), np.asarray(sharded.metrics["loss"]))
    # In segments (train.py --checkpoint-every: train.start, then train.advance with the update index replicated),
    # split over the devices the same way: the same bits as the one-call run.
    import functools
    state = parallel.vmap_sharded(train.start)(keys)
    advance = parallel.vmap_sharded(functools.partial(train.advance, count=config.num_updates // 2), in_axes=(0, None))
    parts = []
    for first in (0, config.num_updates // 2):
        state, part = advance(state, np.int32(first))
        parts.append(part)
    assert len(jax.tree_util.tree_leaves(state.agent.params)[0].sharding.device_set) == 2
    for name in sharded.metrics:
        np.testing.assert_array_equal(np.concatenate([np.asarray(p[name]) for p in parts], axis=1),
                                      np.asarray(sharded.metrics[name]), err_msg=name)
    for a, b in zip(jax.tree_util.tree_leaves(state.agent), jax.tree_util.tree_leaves(sharded.agent)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # One wrapper given batches that split over 2, 1 and 2 devices: each runs on its own devices (the wrapper
    # caches a program per device set; one cached by in_axes alone would get a 3-row batch on a 2-device mesh).
    double = parallel.vmap_sharded(lambda x: x * 2.0)
    for n, count in ((4, 2), (3, 1), (2, 2)):
        out = double(np.arange(n, dtype=np.float32))
        assert len(out.sharding.device_set) == count, (n, out.sharding)
        np.testing.assert_array_equal(np.asarray(out), 2.0 * np.arange(n))

    # A hyperparameter sweep: the mapped dict is split, the shared key replicated. Point 0 has the config's own
    # values and keys[0], so it is plain's seed 0; point 1 a larger learning rate. One run per device compiles to
    # unbatched kernels, which round differently (~1e-7) from batched ones; compare early updates before chaotic
    # amplification, as for seeds run one at a time.
    hp = {k: np.stack([v, v]) for k, v in config.hyperparams().items()}
    hp["learning_rate"] = np.array([config.learning_rate, 1e-2], np.float32)
    swept = parallel.vmap_sharded(train, in_axes=(None, 0))(keys[0], hp)
    assert len(swept.metrics["loss"].sharding.device_set) == 2
    np.testing.assert_allclose(np.asarray(swept.metrics["loss"][0, :3]), np.asarray(plain.metrics["loss"][0, :3]),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(swept.metrics["loss"][1, 1:]), np.asarray(swept.metrics["loss"][0, 1:]))

    # one_part_per_device: each device computes its own part only (a device-dependent value shows it), all get all.
    from jax.sharding import Mesh, PartitionSpec
    mesh = Mesh(np.array(jax.devices()[:2]), ("parts",))

    def body(x):
        here = jax.lax.axis_index("parts").astype(np.float32)
        parts = (lambda: {"a": x * 2.0 + here}, lambda: (x[:2] + 10.0 * here, np.float32(7.0) * here))
        return parallel.one_part_per_device(parts, "parts")

    x = np.arange(3, dtype=np.float32)
    first, second = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False)
    )(x)
    np.testing.assert_array_equal(first["a"], x * 2.0)  # computed on device 0
    np.testing.assert_array_equal(second[0], x[:2] + 10.0)  # computed on device 1
    assert float(second[1]) == 7.0

    # One seed, its update split between the devices: the actor's epochs on one, the critic's on the other.
    # target_kl small enough to stop the actor's steps in the first update (its KLs are ~5e-6): the stop, too, runs
    # on the actor's device alone.
    split = ppo.PPOConfig(total_timesteps=1024, num_steps=32, num_epochs=2, num_minibatches=2, split_actor_critic=True,
                          target_kl=1e-5)
    seen = []
    sharded_run = parallel.actor_critic_sharded(ppo.make_train(split, progress=lambda i, m: seen.append(int(i))))
    one = sharded_run(jax.random.key(7))
    jax.block_until_ready(one)
    ref = jax.jit(ppo.make_train(split))(jax.random.key(7))
    assert len(one.metrics["loss"].sharding.device_set) == 2
    assert seen == list(range(split.num_updates)), seen  # reported by one device only, once per update
    assert float(ref.metrics["steps_taken"][0]) < 1.0 and int(ref.agent.opt_state.actor.count) < int(
        ref.agent.opt_state.critic.count), ref.metrics["steps_taken"]
    for a, b in zip(jax.tree_util.tree_leaves(one.agent), jax.tree_util.tree_leaves(ref.agent)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for name in ref.metrics:
        np.testing.assert_allclose(np.asarray(one.metrics[name]), np.asarray(ref.metrics[name]), rtol=1e-5, atol=1e-6)
    # Several seeds vmapped inside work the same way: seed 0 is key(7) again, so it is ref's run (batched vs
    # unbatched kernels: early updates); seed 1 is another run.
    keys2 = jax.numpy.stack([jax.random.key(7), jax.random.key(8)])
    both = parallel.actor_critic_sharded(jax.vmap(ppo.make_train(split)))(keys2)
    np.testing.assert_allclose(np.asarray(both.metrics["loss"][0, :3]), np.asarray(ref.metrics["loss"][:3]),
                               rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(both.metrics["loss"])))
    assert not np.allclose(np.asarray(both.metrics["loss"][1]), np.asarray(both.metrics["loss"][0]))
    # Replaying seed 1 of that sweep (train.py --seed-indices 1 runs runs.replay_seeds: the seeds as lanes of a
    # one-device program of the sweep's batch) gives its row bit for bit, although the sweep split each update over
    # two devices: XLA:CPU computes the split and the joint update alike (also measured for the PPO CartPole preset,
    # 3 seeds, 100 updates). Should a backend ever differ, the replay must run the split program itself.
    from pgjax import runs
    replayed = runs.replay_seeds(ppo.make_train(split), keys2[1:], 2)
    for a, b in zip(jax.tree_util.tree_leaves(replayed), jax.tree_util.tree_leaves(both)):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[1])
    try:
        parallel.use_cpu_devices(1)
    except RuntimeError as err:
        assert "right after `import jax`" in str(err)
    else:
        raise AssertionError("changing the device count after start-up must raise")
    print("OK")
    """
)


@pytest.mark.exact_compiler
def test_two_cpu_devices_match_one_device():
    _runs_ok(TWO_DEVICES)


TWO_DEVICE_REPLAY = textwrap.dedent(
    """
    import jax
    from pgjax import parallel
    assert parallel.use_cpu_devices(2) == 2
    import numpy as np
    from pgjax import runs
    from pgjax.algos import ppo, presets

    config = ppo.PPOConfig(**{**presets.preset("ppo", "Acrobot-v1"), "env_id": "Acrobot-v1", "total_timesteps": 2048})
    train = ppo.make_train(config)
    sweep = parallel.vmap_sharded(train)(runs.seed_keys(0, list(range(8))))  # 4 seeds on each device
    replay = runs.replay_seeds(train, runs.seed_keys(0, [3, 6]), 4, num_devices=2)
    for name, value in sweep.metrics.items():
        np.testing.assert_array_equal(np.asarray(replay.metrics[name]), np.asarray(value)[[3, 6]], err_msg=name)
    print("OK")
    """
)


def test_replay_of_a_two_device_sweep_is_bit_for_bit():
    """Seeds of a sweep split over two devices, replayed as lanes of the same two-device program, reproduce their
    rows bit for bit; as lanes of a one-device program of 4 (the sweep's lanes per device) they did not (PPO on
    Acrobot-v1: losses 3.8e-6 apart from the first update)."""
    _runs_ok(TWO_DEVICE_REPLAY)


THREE_DEVICES = textwrap.dedent(
    """
    import jax
    import numpy as np
    from pgjax import parallel
    assert parallel.use_cpu_devices(3) == 3
    devices = jax.devices()
    # Two parts, two devices, however many there are: the first two.
    out = parallel.actor_critic_sharded(lambda x: x * 2.0)(np.arange(3, dtype=np.float32))
    assert out.sharding.device_set == set(devices[:2]), out.sharding
    np.testing.assert_array_equal(np.asarray(out), 2.0 * np.arange(3))
    print("OK")
    """
)


def test_actor_critic_sharded_uses_the_first_two_of_three_devices():
    _runs_ok(THREE_DEVICES)


class _Dev:
    def __init__(self, i):
        self.id = i


@pytest.mark.parametrize("batch, count", [(1, 1), (2, 2), (3, 1), (4, 4), (6, 2), (32, 4), (30, 2)])
def test_devices_for_uses_gcd(batch, count):
    devices = [_Dev(i) for i in range(4)]
    chosen = parallel.devices_for(batch, devices)
    assert [d.id for d in chosen] == list(range(count))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        parallel.devices_for(0)
    with pytest.raises(ValueError, match="count must be a positive int"):
        parallel.use_cpu_devices(0)
    with pytest.raises(ValueError, match="same leading batch axis"):
        parallel.shard_batch({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="in_axes entries must be 0 or None"):
        parallel.vmap_sharded(lambda x: x, in_axes=1)(np.zeros((2, 2)))


def test_actor_critic_sharded_on_one_device_is_jit():
    f = lambda x: x * 2.0  # noqa: E731
    np.testing.assert_array_equal(np.asarray(parallel.actor_critic_sharded(f)(np.float32(3.0))), 6.0)


def test_one_device_is_plain_vmap():
    # This process has one CPU device: vmap_sharded is jit(vmap(fn)).
    f = lambda x, y: x * y + 1.0  # noqa: E731
    x = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    out = parallel.vmap_sharded(f, in_axes=(0, None))(x, np.float32(2.0))
    np.testing.assert_array_equal(np.asarray(out), x * 2.0 + 1.0)
    placed = parallel.shard_batch({"k": jax.random.split(jax.random.key(0), 3)})
    assert placed["k"].shape == (3,)
