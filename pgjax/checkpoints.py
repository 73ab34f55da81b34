"""Checkpoints of a training run in progress: the loop's state between segments, and the metrics so far.

A run trained in segments (`train.start`, `train.advance`; `experiments/train.py --checkpoint-every K`) saves its
`RunState` (agent, environments, observations, keys) after each segment. Resuming from the file continues the run
exactly: the segments compute the same updates as the one-call run, bit for bit on the same machine.

One `.npz` file holds the state's leaves in `jax.tree_util` order (PRNG keys as their raw key data), the metrics
so far ([lanes, updates done] each), the per-update wall times and a JSON `meta` dict. Loading needs the state's
structure (`jax.eval_shape` of the start function gives it without running anything) and checks every leaf's
shape and dtype against it, so a checkpoint of another config fails with a message, not with wrong numbers.
It is written to a temporary file first, synced to disk and renamed, so an interrupted save leaves the previous
checkpoint intact; a truncated or corrupt file is reported as such (ValueError naming it), never read as numbers.
Leaves of NumPy-unknown dtypes (bfloat16) are stored as their bits and viewed back; the leaves' tree paths are
stored too, so a state of another structure with the same shapes is refused as well.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np

from pgjax.tables import make_folder_of, npz_problem, output_path_problem

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


def _leaf_paths(tree: Any) -> list[str]:
    """Each leaf's path in `tree` ("[0].agent.params['params']...", names only: the same in every process)."""
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _storable(value: np.ndarray) -> np.ndarray:
    """An array as NumPy saves it exactly: bfloat16 (unknown to NumPy) as its bits."""
    return value.view(f"u{value.dtype.itemsize}") if value.dtype.kind == "V" else value


def _restored(value: np.ndarray, stored: str | None) -> np.ndarray:
    """An array read back in the dtype the header recorded (`_storable` kept bfloat16 as its bits)."""
    return value.view(jax.numpy.dtype(stored)) if stored is not None and str(value.dtype) != stored else value


def save(path: str, state: Any, metrics: dict[str, Any], next_update: int, wall_time: Any,
         meta: dict[str, Any] | None = None) -> None:
    """Write the checkpoint of a run after its first `next_update` updates (state: any pytree, e.g. a vmapped
    `RunState`; metrics {name: [lanes, next_update]}; wall_time [next_update]); atomic (temporary file, synced,
    renamed). Makes the file's folder if it is missing."""
    # One host copy per leaf (keys as their key data); its dtype goes in the header, its bits in the file.
    leaves = [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree_util.tree_leaves(state)]
    arrays = {f"state/{i:05d}": _storable(x) for i, x in enumerate(leaves)}
    metrics = {name: np.asarray(value) for name, value in metrics.items()}
    wall_time = np.asarray(wall_time, np.float64)
    bad = {k: v.shape for k, v in metrics.items() if v.ndim != 2 or v.shape[1] != next_update}
    if wall_time.shape != (next_update,) or bad:  # load would call the file corrupt
        raise ValueError(f"checkpoints.save: metrics must be [lanes, next_update={next_update}] (not so: {bad}) and "
                         f"wall_time [{next_update}] (got {list(wall_time.shape)}).")
    arrays.update({f"metrics/{name}": _storable(value) for name, value in metrics.items()})
    arrays["wall_time"] = wall_time
    header = {"format": FORMAT, "next_update": int(next_update), "meta": meta or {}, "paths": _leaf_paths(state),
              "dtypes": [str(x.dtype) for x in leaves],
              "metric_dtypes": {name: str(value.dtype) for name, value in metrics.items()}}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    problem = output_path_problem(path, "file")
    if problem:
        raise ValueError(f"checkpoints.save: {problem}.")
    make_folder_of(path)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename replaces the previous checkpoint
    os.replace(tmp, path)


def _read(path: str) -> dict[str, np.ndarray]:
    """Every array of a checkpoint file; ValueError naming the file if it is missing, truncated or corrupt."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path!r}.")
    problem = npz_problem(path)
    if problem:
        raise ValueError(f"{path}: not a pgjax checkpoint: it {problem}; delete it to start the run over.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, NotImplementedError, ValueError) as err:
        raise ValueError(f"{path}: unreadable or corrupt checkpoint ({type(err).__name__}: {err}); delete it to "
                         "start the run over.") from None


def read_meta(path: str) -> dict[str, Any]:
    """The `meta` dict of a checkpoint file (without checking its state)."""
    return _header(path, _read(path))["meta"]  # every array read: a corrupt file fails here, not mid-resume


def _header(path: str, data: Any) -> dict[str, Any]:
    try:
        header = json.loads(bytes(data["header"]).decode())
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a pgjax checkpoint ({err}).") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {header.get('format')!r}; this pgjax reads format {FORMAT}.")
    return header


def load(path: str, target: Any) -> Checkpoint:
    """Read a checkpoint written by `save` for a state shaped like `target` (a pytree of arrays or
    `jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape(start, keys)`). ValueError naming the first leaf whose shape or
    dtype differs (another config, seed count or grid wrote it)."""
    data = _read(path)
    header = _header(path, data)
    target_leaves, treedef = jax.tree_util.tree_flatten(target)
    names = sorted(k for k in data if k.startswith("state/"))
    if len(names) != len(target_leaves):
        raise ValueError(f"{path}: the checkpoint holds {len(names)} state arrays, this run's state has "
                         f"{len(target_leaves)}: it was written by another algorithm or config.")
    paths = _leaf_paths(target)
    if "paths" in header and header["paths"] != paths:
        first = next(i for i, (a, b) in enumerate(zip(header["paths"], paths)) if a != b)
        raise ValueError(f"{path}: state leaf {first} is {header['paths'][first]} in the checkpoint, {paths[first]} "
                         "in this run: another algorithm or config wrote it.")
    leaves = []
    for i, (name, want) in enumerate(zip(names, target_leaves)):
        value = _restored(data[name], header.get("dtypes", [None] * len(names))[i])
        if _is_key(want):
            try:  # the target's key implementation (threefry by default; rbg's key data is 4 words)
                key = jax.random.wrap_key_data(value, impl=getattr(want.dtype, "_impl", None))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: state leaf {i} ({value.dtype}{list(value.shape)}) is not the key data "
                                 f"this run needs, {want.dtype}{list(want.shape)} ({err}).") from None
            if key.shape != want.shape or key.dtype != want.dtype:
                raise ValueError(f"{path}: state leaf {i} is a key array {key.dtype}{list(key.shape)}; this run "
                                 f"needs {want.dtype}{list(want.shape)} (another seed count or grid wrote it).")
            leaves.append(key)
            continue
        if value.shape != tuple(want.shape) or value.dtype != np.dtype(want.dtype):
            need = np.dtype(want.dtype)
            widened = value.shape == tuple(want.shape) and value.dtype.kind == need.kind and {
                value.dtype.itemsize, need.itemsize} == {4, 8}  # 32 against 64 bits: x64 on one side only
            cause = ("a session with the other jax_enable_x64 setting wrote it" if widened
                     else "another config, seed count or grid wrote it")
            raise ValueError(f"{path}: state leaf {i} is {value.dtype}{list(value.shape)}; this run needs "
                             f"{np.dtype(want.dtype)}{list(want.shape)} ({cause}).")
        leaves.append(value)
    metrics = {k[len("metrics/"):]: data[k] for k in data if k.startswith("metrics/")}
    metrics = {k: _restored(v, header.get("metric_dtypes", {}).get(k)) for k, v in metrics.items()}
    wall_time = data.get("wall_time")
    next_update = header["next_update"]
    bad = {k: v.shape for k, v in metrics.items() if v.ndim != 2 or v.shape[1] != next_update}
    if wall_time is None or wall_time.shape != (next_update,) or bad:
        raise ValueError(f"{path}: corrupt checkpoint: its metrics {bad or ''} and wall times "
                         f"{None if wall_time is None else wall_time.shape} do not cover its {next_update} updates; "
                         "delete it to start the run over.")
    return Checkpoint(jax.tree_util.tree_unflatten(treedef, leaves), metrics, next_update, wall_time, header["meta"])
