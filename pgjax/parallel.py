"""Run a vmapped batch (seeds, hyperparameters, datasets) split across every local device.

`jax.jit(jax.vmap(train))(keys)` is one program on one device. On a CPU that program uses the
other cores only inside large ops, and an RL run's ops are small (64-unit layers, 4 environments
per seed), so a 2-core machine runs a 32-seed PPO sweep at one core's speed. Seeds are
independent, so splitting the batch axis over devices needs no communication at all:

    parallel.use_cpu_devices()              # once, right after `import jax`: one CPU device per core
    run = parallel.vmap_sharded(train)      # vmap(train), compiled, its batch split over the devices
    out = run(keys)                         # = jax.jit(jax.vmap(train))(keys), computed on every core

The same code spreads seeds over several GPUs. Each seed's computation is unchanged; XLA may pick
other kernels for a smaller per-device batch, so results agree with one device to float32 rounding
(as vmapped seeds agree with seeds run one at a time), and bit for bit for the same device count.

One seed has no independent runs to split. `actor_critic_sharded` splits one run's update instead:
with `PPOConfig(split_actor_critic=True)` the actor's and the critic's minibatch epochs are
independent, so one device takes each, and the two exchange their new parameters once per update:

    run = parallel.actor_critic_sharded(ppo.make_train(PPOConfig(split_actor_critic=True)))
    out = run(key)                          # = jax.jit(train)(key), the update on two cores
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pgjax.validation import check_int

BATCH_AXIS = "batch"
ACTOR_CRITIC_AXIS = "actor_critic"
"""The mesh axis of `actor_critic_sharded`: device 0 updates the actor, device 1 the critic."""


def use_cpu_devices(count: int | None = None) -> int:
    """Expose `count` CPU devices (default: the CPU cores this process may use) to JAX.

    Must run before JAX executes anything (it sets `jax_num_cpu_devices`, which JAX reads when its
    CPU backend starts). Calling it again with the count already in effect is fine.

    Returns:
      The number of CPU devices in effect.

    Raises:
      ValueError: `count` is not a positive int.
      RuntimeError: JAX's backends already started with another count; call this right after
        `import jax`, before any array is created.
    """
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = check_int("use_cpu_devices: count", count)  # jax's config takes Python ints
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as err:
        have = len(jax.devices("cpu"))
        if have != count:
            raise RuntimeError(
                f"use_cpu_devices({count}): JAX already started with {have} CPU device(s). Call "
                "pgjax.parallel.use_cpu_devices() right after `import jax`, before any JAX computation."
            ) from err
    return count


def devices_for(batch_size: int, devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
    """The first gcd(batch_size, len(devices)) devices: as many as split `batch_size` evenly.

    `devices` defaults to `jax.devices()` (the default backend's devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    check_int("devices_for: batch_size", batch_size)
    if not devices:
        raise ValueError("devices_for: no devices given.")
    return devices[: math.gcd(batch_size, len(devices))]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _leading_size(tree: Any, what: str) -> int:
    sizes = {(_shape(x) or (None,))[0] for x in jax.tree_util.tree_leaves(tree)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{what}: every leaf needs the same leading batch axis; "
                         f"got leading sizes {sorted(map(str, sizes))}.")
    return sizes.pop()


def _batch_mesh(batch_size: int, devices: Sequence[jax.Device] | None) -> Mesh:
    """A one-axis mesh over `devices_for(batch_size, devices)`."""
    return Mesh(np.array(devices_for(batch_size, devices)), (BATCH_AXIS,))


def shard_batch(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """Place every leaf of `tree` (leading batch axis B, the same on all leaves) split along that axis
    over `devices_for(B, devices)`."""
    if not jax.tree_util.tree_leaves(tree):
        raise ValueError("shard_batch: the tree has no arrays.")
    mesh = _batch_mesh(_leading_size(tree, "shard_batch"), devices)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def vmap_sharded(
    fn: Callable[..., Any], in_axes: Any = 0, devices: Sequence[jax.Device] | None = None
) -> Callable[..., Any]:
    """`jax.vmap(fn, in_axes)`, compiled with its batch split over the devices, each device running its share.

    Arguments mapped by `in_axes` (axis 0 or None per argument, as for `jax.vmap`) are split along their
    leading axis over `devices_for(B, devices)`; unmapped ones are replicated. Every device runs
    `jax.vmap(fn)` on its own share (`jax.shard_map`), with no communication: loops with data-dependent
    exits (TRPO's conjugate gradient and line search) stop per device, not when the slowest seed of the
    whole batch does. With one device this is `jax.jit(jax.vmap(fn, in_axes))`.

    Every output gets a leading batch axis, split the same way. The returned callable also has
    `.place(*args)` (the arguments placed on their devices) and `.lower(*args)` (ahead-of-time
    compilation: `run.lower(*run.place(*args)).compile()(*run.place(*args))`).
    """
    compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def plan(args):
        """(in_axes per argument, the mesh their batch splits over)."""
        axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
        if len(axes) != len(args):
            raise ValueError(f"vmap_sharded: in_axes has {len(axes)} entries for {len(args)} arguments.")
        if any(a not in (0, None) for a in axes):
            raise ValueError(f"vmap_sharded: in_axes entries must be 0 or None; got {in_axes!r}.")
        if all(a is None for a in axes):
            raise ValueError("vmap_sharded: at least one argument must be mapped (in_axes 0).")
        size = _leading_size([x for x, a in zip(args, axes) if a == 0], "vmap_sharded")
        return axes, _batch_mesh(size, devices)

    def specs(axes):
        return tuple(PartitionSpec(BATCH_AXIS) if a == 0 else PartitionSpec() for a in axes)

    def placed(args, axes, mesh):
        return tuple(jax.device_put(x, NamedSharding(mesh, spec)) for x, spec in zip(args, specs(axes)))

    def program(axes, mesh):
        key = (axes, tuple(d.id for d in mesh.devices.flat))
        if key not in compiled:  # one trace and compile per (in_axes, devices)
            per_device = jax.vmap(fn, in_axes=axes)
            compiled[key] = jax.jit(
                jax.shard_map(per_device, mesh=mesh, in_specs=specs(axes), out_specs=PartitionSpec(BATCH_AXIS),
                              check_vma=False)
            )
        return compiled[key]

    def place(*args):
        return placed(args, *plan(args))

    def run(*args):
        axes, mesh = plan(args)
        return program(axes, mesh)(*placed(args, axes, mesh))

    def lower(*args):
        axes, mesh = plan(args)
        return program(axes, mesh).lower(*placed(args, axes, mesh))

    run.place = place  # type: ignore[attr-defined]
    run.lower = lower  # type: ignore[attr-defined]
    return run


def axis_index_or_none(axis_name: str) -> jax.Array | None:
    """`lax.axis_index(axis_name)` where that axis is bound (inside `shard_map` / `vmap` over it), else None.

    Read at trace time: code that may run split over an axis or not (PPO's update under
    `actor_critic_sharded`, or plainly) picks its program with it.
    """
    try:
        return lax.axis_index(axis_name)
    except NameError:
        return None


def one_part_per_device(parts: Sequence[Callable[[], Any]], axis_name: str) -> list[Any]:
    """Run `parts[i]()` on device i of the mesh axis `axis_name` alone; every device gets every part's result.

    For code running under `shard_map` over that axis (as many devices as parts). Each part's result
    (a pytree of float32 arrays) is packed into one vector; device i computes its part and zeros the
    others' slots (`lax.cond` on the device index, so it never runs them), and one `lax.psum` hands all
    results round: one exchange, the cost that counts between CPU devices (~40-60 us each).
    """
    templates = [jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(part)) for part in parts]
    # Each leaf, not the packed vector: packing promotes an int32 leaf to float32 (2^24 + 1 came back as 2^24).
    if any(leaf.dtype != jnp.float32 for leaf in jax.tree_util.tree_leaves(templates)):
        raise ValueError("one_part_per_device: every part must return float32 arrays only.")
    flats, unpackers = zip(*(ravel_pytree(template) for template in templates))
    side = lax.axis_index(axis_name)
    slots = [
        lax.cond(side == i, lambda part=part: ravel_pytree(part())[0], lambda flat=flat: jnp.zeros_like(flat))
        for i, (part, flat) in enumerate(zip(parts, flats))
    ]
    total = lax.psum(jnp.concatenate(slots), axis_name)
    bounds = np.cumsum([0] + [flat.size for flat in flats])
    return [unpack(total[lo:hi]) for unpack, lo, hi in zip(unpackers, bounds[:-1], bounds[1:])]


def actor_critic_sharded(fn: Callable[..., Any], devices: Sequence[jax.Device] | None = None) -> Callable[..., Any]:
    """`jax.jit(fn)` run on two devices at once, which split its actor-critic updates between them.

    Every argument is replicated on the first two of `devices` (default `jax.devices()`), and both
    devices run `fn` under the mesh axis `ACTOR_CRITIC_AXIS`. An algorithm that can split its update
    (`PPOConfig(split_actor_critic=True)`) gives the actor's minibatch epochs to device 0 and the
    critic's to device 1 and exchanges the results (`lax.psum`) once per update; everything else
    (rollouts, GAE) runs on both from the same keys, so both hold the same state throughout and every
    output is replicated. The results are those of `jax.jit(fn)` to float32 rounding. With fewer than
    two devices this is `jax.jit(fn)`. Like a jitted function, the result has `.lower(*args)`.

    Worth it where the update's minibatch steps are many and small (one seed on a CPU: each core then
    does half the matmuls); seeds, when there are several, split better (`vmap_sharded`, no exchange).
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2:
        return jax.jit(fn)
    mesh = Mesh(np.array(devices[:2]), (ACTOR_CRITIC_AXIS,))
    compiled: dict[int, Callable[..., Any]] = {}

    def program(num_args: int) -> Callable[..., Any]:
        if num_args not in compiled:  # one trace and compile per argument count
            specs = (PartitionSpec(),) * num_args
            compiled[num_args] = jax.jit(
                jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(), check_vma=False)
            )
        return compiled[num_args]

    def run(*args):
        return program(len(args))(*args)

    run.lower = lambda *args: program(len(args)).lower(*args)  # type: ignore[attr-defined]
    return run
