"""Checkpoints of a training run in progress: the loop's state between segments, and the metrics so far.

A run trained in segments (`train.start`, `train.advance`; `experiments/train.py --checkpoint-every K`) saves its
`RunState` (agent, environments, observations, keys) after each segment. Resuming from the file continues the run
exactly: the segments compute the same updates as the one-call run, bit for bit on the same machine.

One `.npz` file holds the state's leaves in `jax.tree_util` order (PRNG keys as their raw key data), the metrics
so far ([lanes, updates done] each), the per-update wall times and a JSON `meta` dict. Loading needs the state's
structure (`jax.eval_shape` of the start function gives it without running anything) and checks every leaf's
shape and dtype against it, so a checkpoint of another config fails with a message, not with wrong numbers.
It is written to a temporary file first and renamed, so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np

FORMAT = 1


class Checkpoint(NamedTuple):
    """What `load` returns.

    Attributes:
      state: the loop's state, the structure of `target` with NumPy leaves (typed PRNG keys as keys).
      metrics: {name: [lanes, next_update]} the metrics of the updates done.
      next_update: index of the first update still to run.
      wall_time: [next_update] seconds from the run's start to each update (NaN where not measured).
      meta: the dict given to `save`.
    """

    state: Any
    metrics: dict[str, np.ndarray]
    next_update: int
    wall_time: np.ndarray
    meta: dict[str, Any]


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(path: str, state: Any, metrics: dict[str, Any], next_update: int, wall_time: Any,
         meta: dict[str, Any] | None = None) -> None:
    """Write the checkpoint of a run after its first `next_update` updates (state: any pytree, e.g. a vmapped
    `RunState`; metrics {name: [lanes, next_update]}; wall_time [next_update]); atomic (temporary file, rename)."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"state/{i:05d}": np.asarray(jax.random.key_data(x) if _is_key(x) else x) for i, x in enumerate(leaves)}
    arrays.update({f"metrics/{name}": np.asarray(value) for name, value in metrics.items()})
    arrays["wall_time"] = np.asarray(wall_time, np.float64)
    header = {"format": FORMAT, "next_update": int(next_update), "meta": meta or {}}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_meta(path: str) -> dict[str, Any]:
    """The `meta` dict of a checkpoint file (without loading its state)."""
    with np.load(path) as data:
        return _header(path, data)["meta"]


def _header(path: str, data: Any) -> dict[str, Any]:
    try:
        header = json.loads(bytes(data["header"]).decode())
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a pgjax checkpoint ({err}).") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {header.get('format')!r}; this pgjax reads format {FORMAT}.")
    return header


def load(path: str, target: Any) -> Checkpoint:
    """Read a checkpoint written by `save` for a state shaped like `target` (a pytree of arrays or
    `jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape(start, keys)`). ValueError naming the first leaf whose shape or
    dtype differs (another config, seed count or grid wrote it)."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path!r}.")
    with np.load(path) as data:
        header = _header(path, data)
        target_leaves, treedef = jax.tree_util.tree_flatten(target)
        names = sorted(k for k in data.files if k.startswith("state/"))
        if len(names) != len(target_leaves):
            raise ValueError(f"{path}: the checkpoint holds {len(names)} state arrays, this run's state has "
                             f"{len(target_leaves)}: it was written by another algorithm or config.")
        leaves = []
        for i, (name, want) in enumerate(zip(names, target_leaves)):
            value = data[name]
            if _is_key(want):
                key = jax.random.wrap_key_data(value)
                if key.shape != want.shape or key.dtype != want.dtype:
                    raise ValueError(f"{path}: state leaf {i} is a key array {key.dtype}{list(key.shape)}; this run "
                                     f"needs {want.dtype}{list(want.shape)} (another seed count or grid wrote it).")
                leaves.append(key)
                continue
            if value.shape != tuple(want.shape) or value.dtype != np.dtype(want.dtype):
                raise ValueError(f"{path}: state leaf {i} is {value.dtype}{list(value.shape)}; this run needs "
                                 f"{np.dtype(want.dtype)}{list(want.shape)} (another config, seed count or grid "
                                 "wrote it).")
            leaves.append(value)
        metrics = {k[len("metrics/"):]: data[k] for k in data.files if k.startswith("metrics/")}
        wall_time = data["wall_time"]
    return Checkpoint(jax.tree_util.tree_unflatten(treedef, leaves), metrics, header["next_update"], wall_time,
                      header["meta"])
