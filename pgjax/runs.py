"""Saving, loading and evaluating training runs: config.json, metrics.csv, learning_curve.png, params.msgpack.

A run directory holds:

    config.json         {"algo", "num_seeds", "seed", "config": {...}, "versions": {...}}
    metrics.csv         one row per (seed, update): seed, update, env_steps, episode_return, ..., wall_time
    learning_curve.png  mean episode return over seeds with a 95% Student-t interval of the mean
    params.msgpack      final parameters of every seed (and observation-normaliser statistics)

A seeds x hyperparameters grid (`grid_cells`, `grid_lanes`, `save_grid`; experiments/train.py --grid) writes
summary.csv, metrics.csv, learning_curves.png and config.json, and one such run directory per cell, cell-K/.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import functools
import itertools
import json
import os
import re
import shutil
import threading
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.std import TqdmWarning

with warnings.catch_warnings():
    # In Jupyter without ipywidgets tqdm.auto warns ("IProgress not found") and falls back to the text bar, which
    # is all a headless kernel needs; with ipywidgets (Colab) it gives the widget bar.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from pgjax import checkpoints, envs, parallel, score_stats, tables
from pgjax.algos import common, evaluation, get
from pgjax.algos.evaluation import observation_statistics
from pgjax.validation import check_int, is_finite_real

FIRST_COLUMNS = ("seed", "update", "env_steps", "episode_return")


def _seed_labels(num_seeds: int, seed_indices: Any) -> list[int]:
    """Which seeds of the base seed a run's rows are: `seed_indices` (a replay's), else 0..num_seeds-1."""
    return list(range(num_seeds)) if seed_indices is None else [int(i) for i in seed_indices]


def metrics_columns(metrics: dict[str, Any], wall_time: np.ndarray | None = None,
                    seed_indices: Any = None) -> dict[str, np.ndarray]:
    """Metrics of shape [seeds, updates] as metrics.csv's columns, one row per (seed, update), seed-major: seed,
    update, env_steps, episode_return, the other metrics by name, wall_time (`wall_time` [updates] seconds,
    optional; `seed_indices` [seeds] the `seed` column, default 0..seeds-1). Each column is an object array
    [seeds * updates]: Python ints, floats as the shortest text that rounds back to the same value in their own
    dtype ('0.1' for a float32 0.1, not its float64 expansion '0.10000000149011612'), None where NaN (an empty
    cell). ValueError when `wall_time` or `seed_indices` does not match the metrics' updates or seeds.
    """
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    num_seeds, num_updates = arrays["env_steps"].shape
    # The columns are zipped into rows: one of another length would silently cut or misalign them.
    shapes = {k: v.shape for k, v in arrays.items() if v.shape != (num_seeds, num_updates)}
    if shapes:
        raise ValueError(f"metrics_columns: every metric must be [seeds, updates] = {(num_seeds, num_updates)} "
                         f"like env_steps; got {shapes}.")
    if wall_time is not None and np.shape(wall_time) != (num_updates,):
        raise ValueError(f"metrics_columns: wall_time must be [updates] = [{num_updates}], one per update; got "
                         f"shape {np.shape(wall_time)}.")
    if seed_indices is not None and np.shape(seed_indices) != (num_seeds,):
        raise ValueError(f"metrics_columns: seed_indices must be [seeds] = [{num_seeds}], one label per seed; got "
                         f"{list(np.ravel(seed_indices))}.")
    names = list(FIRST_COLUMNS[2:]) + sorted(k for k in arrays if k not in FIRST_COLUMNS)
    wall = ([None] * num_updates if wall_time is None else
            [None if np.isnan(w) else round(float(w), 4) for w in wall_time])
    columns = {"seed": np.repeat(np.array(_seed_labels(num_seeds, seed_indices), dtype=object), num_updates),
               "update": np.tile(np.arange(num_updates, dtype=object), num_seeds)}
    for name in names:
        values = arrays[name].reshape(-1)
        if values.dtype.kind == "f":
            cells = values.astype(str).astype(object)  # NumPy's shortest round-trip text in the value's own dtype
            cells[np.isnan(values)] = None
        else:
            cells = values.astype(object)  # Python ints and bools: the csv module writes their repr
        columns[name] = cells
    columns["wall_time"] = np.tile(np.array(wall, dtype=object), num_seeds)
    return columns


def write_metrics_csv(path: str, columns: dict[str, np.ndarray]) -> None:
    """Write `metrics_columns` (or any equal-length columns) to `path`: a header, then one line per row.
    ValueError for columns of unequal lengths (zipped into rows, they would be cut to the shortest)."""
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"write_metrics_csv {path}: the columns have unequal lengths {lengths}.")
    tables.make_folder_of(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))


def read_metrics_csv(path: str) -> list[dict[str, str]]:
    """The rows of a metrics.csv as {column: text} dicts; ValueError unless it has pgjax's first
    columns (seed, update, env_steps, episode_return) and a row. `read_metrics` turns them into arrays."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except UnicodeDecodeError as err:  # a binary file: the codec's message names no file
        raise ValueError(f"{path}: not a pgjax metrics.csv (not UTF-8 text: {err}).") from None
    if any(c not in header for c in FIRST_COLUMNS):
        raise ValueError(f"{path}: not a pgjax metrics.csv (needs columns {FIRST_COLUMNS}).")
    if not rows:
        raise ValueError(f"{path}: has pgjax's header but no rows (a run that wrote no update, or a truncated file).")
    return rows


def read_metrics(path: str) -> tuple[list[int], dict[str, np.ndarray], np.ndarray]:
    """A run's metrics.csv (or its directory) back as arrays, the inverse of `metrics_columns`.

    Returns (seed labels [S] in the file's order, {column: [S, U] float64, NaN where empty}, wall_time [U] seconds,
    NaN where not measured); a float32 metric is exact once cast back to float32. ValueError, naming the file (and
    the row and column), for a grid's metrics.csv (read its cell-K/ directories), a row with more or fewer cells
    than the header, a cell that is not a number, and rows that do not form every seed's updates 0..U-1.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.csv")
    if not os.path.exists(path):
        raise ValueError(f"no metrics.csv at {path!r}: give a run directory of experiments/train.py.")
    rows = read_metrics_csv(path)
    if "cell" in rows[0]:
        raise ValueError(f"{path} is a hyperparameter grid's: read its cells' directories, cell-K/metrics.csv.")
    header = sum(k is not None for k in rows[0])
    for index, row in enumerate(rows, start=1):  # csv.DictReader keys extra cells None and fills missing ones None
        if None in row or None in row.values():
            cells = header + len(row.get(None, [])) - sum(v is None for v in row.values())
            raise ValueError(f"{path}: row {index} has {cells} cells, the header {header} (a truncated or edited "
                             "file?).")

    def number(row: int, column: str, integer: bool = False) -> int | float:
        """rows[row][column] as an int (seed, update) or a float (NaN where empty); ValueError naming the cell."""
        text = rows[row][column]
        try:
            return int(text) if integer else float(text) if text != "" else np.nan
        except ValueError:
            raise ValueError(f"{path}: row {row + 1}, column {column}: {text!r} is not "
                             f"{'an int' if integer else 'a number'} (an edited file?).") from None

    labels = [(number(i, "seed", True), number(i, "update", True)) for i in range(len(rows))]
    seeds = list(dict.fromkeys(seed for seed, _ in labels))
    num_updates = len(rows) // len(seeds)
    expected = [(seed, update) for seed in seeds for update in range(num_updates)]
    if labels != expected:
        raise ValueError(f"{path}: its {len(rows)} rows are not the same updates 0..U-1 of each of its {len(seeds)} "
                         "seeds in turn, as pgjax writes them (a truncated or edited file?).")
    columns = [c for c in rows[0] if c not in ("seed", "update", "wall_time")]
    metrics = {c: np.array([number(i, c) for i in range(len(rows))]).reshape(len(seeds), num_updates)
               for c in columns}
    wall_time = np.array([number(i, "wall_time") if "wall_time" in rows[0] else np.nan for i in range(num_updates)])
    return seeds, metrics, wall_time


def smoothed_returns(episode_return: np.ndarray) -> np.ndarray:
    """Carry the last finished episode's mean return forward over updates where none finished ([seeds, updates];
    NaN before a seed's first finished episode)."""
    out = np.array(episode_return, dtype=float)
    # For each update, the index of the latest update up to it with a value (0 before the first: NaN stays NaN).
    latest = np.where(np.isnan(out), 0, np.arange(out.shape[1]))
    np.maximum.accumulate(latest, axis=1, out=latest)
    return np.take_along_axis(out, latest, axis=1)


def t_quantile(dof: Any) -> np.ndarray:
    """t_{0.975, dof}, the 97.5% quantile of Student's t with `dof` degrees of freedom (array-like; NaN where
    dof < 1): the half-width of a two-sided 95% interval in standard errors (12.71 at 1, 2.36 at 7, 1.96 as
    dof -> inf)."""
    from scipy import special  # (scipy comes with jax; special alone imports in a fraction of scipy.stats' time)

    dof = np.asarray(dof, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(dof >= 1, special.stdtrit(np.maximum(dof, 1), 0.975), np.nan)


def _mean_and_standard_error(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware (mean, standard error s / sqrt(n), n) over axis 0 of [seeds, ...] values, n the seeds with a
    value in each column (the error NaN where n < 2)."""
    values = np.asarray(values, dtype=float)
    count = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.full_like(mean, np.nan)
        return mean, np.where(count > 1, std / np.sqrt(np.maximum(count, 1)), np.nan), count


def mean_and_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean over seeds (axis 0) of [seeds, ...] values and the half-width t_{0.975, n-1} s / sqrt(n) of a
    95% Student-t interval of that mean, n the seeds with a value in each column (NaN where n < 2). The normal
    1.96 s / sqrt(n) covers only 91% at 8 seeds and 70% at 2; the t quantile is exact for normal values."""
    mean, error, count = _mean_and_standard_error(values)
    return mean, t_quantile(count - 1) * error


def plot_learning_curve(path: str, metrics: dict[str, Any], title: str) -> None:
    """Mean episode return over seeds against env steps, with a 95% Student-t interval of the mean."""
    seeds = np.asarray(metrics["env_steps"]).shape[0]
    plot_learning_curves(path, {f"mean over {seeds} seeds (95% interval)": metrics}, title)


def plot_learning_curves(path: str, curves: dict[str, dict[str, Any]], title: str) -> None:
    """One mean episode return over seeds per entry of `curves` ({label: metrics [seeds, updates]}) against env
    steps (each seed's last value carried over updates where none of its episodes finished: `smoothed_returns`),
    each with its 95% Student-t interval of the mean (`mean_and_interval`; none with one seed); where the
    metrics hold `eval_return` (in-run evaluations), its mean and interval at the evaluated updates as points with
    error bars in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, metrics in curves.items():
        steps = np.asarray(metrics["env_steps"])[0]
        mean, half = mean_and_interval(smoothed_returns(np.asarray(metrics["episode_return"])))
        (line,) = ax.plot(steps, mean, label=label)
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2, color=line.get_color())
        if "eval_return" in metrics:
            evaluated = ~np.all(np.isnan(np.asarray(metrics["eval_return"], dtype=float)), axis=0)
            eval_mean, eval_half = mean_and_interval(np.asarray(metrics["eval_return"])[:, evaluated])
            ax.errorbar(steps[evaluated], eval_mean, yerr=eval_half, fmt="o", ms=3, capsize=2,
                        color=line.get_color(), label=f"{label}: evaluation")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _quiet_nan_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def check_seeds_axis(output: common.TrainOutput, owner: str) -> None:
    """ValueError unless `output` is a vmapped run's (metrics [seeds, updates]): one run, `jax.jit(train)(key)`,
    has metrics [updates] and would be read as that many seeds."""
    shape = np.shape(output.metrics["env_steps"])
    if len(shape) != 2:
        raise ValueError(f"{owner}: expected a vmapped run's output (metrics [seeds, updates]); got env_steps of "
                         f"shape {shape}. For one run, add a seeds axis: jax.tree_util.tree_map(lambda x: x[None], "
                         "output), or run jax.vmap(train)(key[None]).")


def save_run(out_dir: str, algo: str, config: common.OnPolicyConfig, output: common.TrainOutput, seed: int,
             wall_time: np.ndarray | None = None, seed_indices: Any = None, replay: dict | None = None) -> None:
    """Write config.json, metrics.csv, learning_curve.png and params.msgpack for a vmapped-seeds run
    (`seed_indices`: which seeds of the base `seed` the rows are, default 0..seeds-1; `replay`: for a replay of
    some seeds of a sweep, what it assumed of that sweep, e.g. {"sweep_num_seeds", "sweep_devices"}, recorded
    in config.json so that it can be checked against the sweep's own)."""
    check_seeds_axis(output, "save_run")  # before anything is written
    os.makedirs(out_dir, exist_ok=True)
    num_seeds = int(np.asarray(output.metrics["env_steps"]).shape[0])
    source = envs.registered_source(config.env_id)
    meta = {
        "algo": algo,
        "num_seeds": num_seeds,
        "seed": seed,
        "seed_indices": _seed_labels(num_seeds, seed_indices),
        # Bit-for-bit reproduction needs the same seeds per device (other layouts agree to float32 rounding).
        "devices": _devices(output),
        "scan_unroll": config.scan_unroll,  # the unroll factor in use (config "unroll": 0 picks it per backend)
        **({} if replay is None else {"replay": replay}),
        # A registered environment's module: a reader must import it (evaluate.py --env-module) to rebuild the env.
        **({} if source is None else {"env_source": source}),
        "config": config.to_dict(),
        "versions": {"jax": jax.__version__, "pgjax": _pgjax_version()},
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(meta, f, indent=2, default=str)
    write_metrics_csv(os.path.join(out_dir, "metrics.csv"), metrics_columns(output.metrics, wall_time, seed_indices))
    plot_learning_curve(
        os.path.join(out_dir, "learning_curve.png"), output.metrics, f"{algo.upper()} on {config.env_id}"
    )
    stats = observation_statistics(output.env_state)
    if stats is not None:  # identical across the vectorised envs of a seed: keep env 0's copy
        stats = jax.tree_util.tree_map(lambda x: x[:, 0], stats)
    payload = {"params": output.agent.params, "obs_statistics": stats}
    with open(os.path.join(out_dir, "params.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize(
            jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(payload))))


# What pgjax writes into a run directory (train.py, save_run / save_grid, the checkpoint, evaluate.py), by pattern.
RUN_FILE_PATTERNS = ("config.json", "metrics.csv", "params.msgpack", "summary.csv", "checkpoint.npz",
                     "learning_curve.png", "learning_curves.png", "evaluation*.csv", "robustness_*.csv",
                     "robustness_*.png")


def run_files(run_dir: str) -> list[str]:
    """The names in `run_dir` that pgjax writes (`RUN_FILE_PATTERNS`, and grid cells' `cell-K` directories), sorted;
    empty for a missing or unrelated directory."""
    if not os.path.isdir(run_dir):
        return []
    names = [n for n in os.listdir(run_dir) if any(fnmatch.fnmatch(n, p) for p in RUN_FILE_PATTERNS)]
    cells = [n for n in os.listdir(run_dir) if re.fullmatch(r"cell-\d+", n) and os.path.isdir(os.path.join(run_dir, n))]
    return sorted(names + cells)


def clear_run(run_dir: str) -> list[str]:
    """Remove what pgjax wrote into `run_dir` (`run_files`: a former run's files, its cells), keeping anything
    else; returns the names removed. A run written over another would otherwise keep the old one's leftovers (a
    grid over a plain run: the old params.msgpack, which `load_run` would pair with the grid's config)."""
    removed = run_files(run_dir)
    for name in removed:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return removed


def _devices(output: Any) -> list[str]:
    """The devices that ran an output (a run in segments hands its metrics over as NumPy; its agent stays on them),
    for config.json: bit-for-bit reproduction needs the same seeds per device."""
    placed = [x for x in jax.tree_util.tree_leaves(output) if isinstance(x, jax.Array)]
    return sorted(str(d) for d in (placed[0].sharding.device_set if placed else ()))


def _pgjax_version() -> str:
    import pgjax

    return pgjax.__version__


def _is_grid(config_path: str) -> bool:
    """Whether config.json is a grid's (it lists the cells; a cell's own run directory holds its parameters)."""
    try:
        with open(config_path) as f:
            return "grid" in json.load(f)
    except (OSError, ValueError):
        return False  # missing or malformed: load_run reports it


def load_run(run_dir: str) -> tuple[str, common.OnPolicyConfig, dict, Any]:
    """(algo, config, params with a leading seeds axis, observation statistics or None) of a saved run."""
    config_path = os.path.join(run_dir, "config.json")
    params_path = os.path.join(run_dir, "params.msgpack")
    grid_without_params = os.path.exists(os.path.join(run_dir, "summary.csv")) and not os.path.exists(params_path)
    if grid_without_params or _is_grid(config_path):
        cell = os.path.join(run_dir, "cell-K")
        raise ValueError(f"{run_dir!r} is a hyperparameter grid: load one of its cells, {cell} "
                         "(summary.csv lists them).")
    for path in (config_path, params_path):
        if not os.path.exists(path):
            raise ValueError(f"{run_dir!r} is not a complete pgjax run directory: {os.path.basename(path)} is missing.")
    with open(config_path) as f:
        try:
            meta = json.load(f)
        except ValueError as err:  # json.JSONDecodeError names a line and column, not the file
            raise ValueError(f"{config_path}: not valid JSON ({err}).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{config_path}: malformed run config (a JSON object {{\"algo\", \"config\", ...}} "
                         f"expected; got a {type(meta).__name__}).")
    try:
        config_cls, _ = get(meta["algo"])
        env_id = meta["config"].get("env_id") if isinstance(meta["config"], dict) else None
        if "env_source" in meta and env_id not in envs.env_ids():
            raise ValueError(f"{config_path}: the run trained on {env_id!r}, an environment registered by "
                             f"{meta['env_source']}: import that module first (pgjax.envs.import_env_module, or "
                             f"evaluate.py --env-module {meta['env_source']}).")
        config = config_cls(**meta["config"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{config_path}: malformed run config ({err}).") from None
    # save_run writes every field: one missing was edited out or predates the field, and its default (which may not
    # be what the run trained with, e.g. normalize_observations) is used: said, not silent.
    missing = sorted({f.name for f in dataclasses.fields(config_cls)} - set(meta["config"]))
    if missing:
        warnings.warn(f"{config_path} does not set {missing} (written by an older pgjax, or edited): loading with "
                      f"their defaults {[getattr(config, name) for name in missing]}.", stacklevel=2)
    with open(params_path, "rb") as f:
        try:
            state = serialization.msgpack_restore(f.read())
        except ValueError as err:  # msgpack's errors ("Unpack failed: incomplete input") name neither file nor fix
            raise ValueError(f"{params_path}: not a parameters file that pgjax wrote ({err}); a truncated copy? "
                             "Copy the run directory again, or retrain.") from None
    if not isinstance(state, dict) or not isinstance(state.get("params"), dict):
        raise ValueError(f"{params_path}: not a parameters file that pgjax wrote (no 'params' mapping).")
    check_params_match_config(state["params"], config, f"{params_path} (with {config_path})")
    stats = state.get("obs_statistics")
    if stats is not None:
        stats = envs.RunningStatistics(**{k: jnp.asarray(v) for k, v in stats.items()})
    return meta["algo"], config, state["params"], stats


_PARAM_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})  # float64: a host copy


def check_params_match_config(params: dict, config: common.OnPolicyConfig, where: str,
                              seeds_axis: bool = True) -> None:
    """ValueError naming a layer whose shape is not the config's network's: a config.json edited (or paired with
    another run's parameters), or parameters passed with another config, would otherwise fail deep in flax
    (ScopeParamShapeError, or "the collection is empty" for parameters without their outer 'params' key).

    params: a run's parameters, each leaf [seeds, *layer shape] (seeds_axis) or one seed's [*layer shape]; checked
    against `common.init_params`'s shapes (abstractly: nothing is computed) for the config's environment and network,
    and for float32 (pgjax's parameters) or float64 (a host copy) values.
    """
    observation_size, want = _network_shapes(_evaluation_config(config), envs.registrations())  # cells share it
    leaves = {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(params)}
    got = {name: np.shape(x) for name, x in leaves.items()}
    fix = ("were config.json and params.msgpack written by the same run?" if seeds_axis
           else "were the parameters trained with this config (its env_id, hidden_sizes and env_randomize_observe)?")
    if got.keys() != want.keys():
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        raise ValueError(f"{where}: the parameters are not the config's network's (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); {fix}")
    if seeds_axis and len({shape[:1] for shape in got.values()}) != 1:
        raise ValueError(f"{where}: the parameters do not share one leading seeds axis ({got}); {fix}")
    for name, shape in want.items():
        if got[name][1 if seeds_axis else 0:] != shape:
            layout = "[seeds, *{}]".format(shape) if seeds_axis else str(shape)
            raise ValueError(f"{where}: parameter {name} has shape {got[name]}, but the config's network "
                             f"({config.hidden_sizes} hidden units on {observation_size} inputs) gives "
                             f"{layout}; {fix}")
    for name, x in leaves.items():
        # Integer or boolean parameters ran as a policy of truncated weights; bfloat16 or float16 ones ran the whole
        # network at that precision, output layer included, which no policy pgjax trains does.
        dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)  # jnp.result_type costs 17 us a leaf
        if dtype not in _PARAM_DTYPES:
            raise ValueError(f"{where}: parameter {name} has dtype {dtype}, but pgjax's networks keep float32 "
                             "parameters (with compute_dtype='bfloat16' too: only the hidden layers compute in it); "
                             "pass float32 ones, e.g. jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), "
                             "params) for a bfloat16 copy.")


@functools.lru_cache(maxsize=64)
def _network_shapes(config: common.OnPolicyConfig, registrations: int) -> tuple[int, dict[str, tuple]]:
    """(flat observation size, {key path: shape} of one seed's fresh parameters) of the config's network; cached,
    as evaluate checks every call's parameters against it."""
    del registrations  # only a cache key, as in _evaluation_program
    spec = common.make_env(config)
    expected = jax.eval_shape(functools.partial(common.init_params, common.actor_critic(config, spec), spec),
                              jax.random.key(0))
    shapes = {jax.tree_util.keystr(path): x.shape for path, x in jax.tree_util.tree_leaves_with_path(expected)}
    return spec.observation_size, shapes


def evaluate(
    key: jax.Array,
    config: common.OnPolicyConfig,
    params: dict,
    obs_statistics: Any = None,
    num_episodes: int = 10,
    deterministic: bool = True,
) -> jax.Array:
    """Undiscounted returns of `num_episodes` episodes (one per vectorised env) of one seed's policy.

    The episodes run on the config's environment (`config.env_id` with `config.env_kwargs`): to evaluate a policy
    on another variant (a longer pole, another step limit), pass a config with other `env_kwargs`.
    Observation statistics are frozen at their trained values. Returns [num_episodes] (NaN for an episode
    that did not end within the environment's step limit). The compiled program is shared by every call
    with the same (config, num_episodes, deterministic): params and statistics are its arguments, and the config's
    `HYPERPARAMS` (training-only numbers) and `env_randomize` (unless the policy observes its fields) are not part
    of the key, so the cells of a grid share it too. The environment's params stay constants of the program, as in
    training: XLA folds constants into the step's arithmetic, so passing them as arguments rounds differently, and
    CartPole's episodes under a trained policy are chaotic enough to end a step apart (195.3 against the in-run
    evaluation's 195.0 in one test). Each variant of the environment (a grid over env.<field>) therefore compiles
    its own program. Before compiling, params are checked against the config's network (shapes, and float32 or
    float64 values) and obs_statistics against its observations (shapes; under vmap, the tracers'): another
    config's are a ValueError naming the layer. Concrete params and statistics must be finite (a diverged seed's
    are not: `finite_seeds`).
    """
    num_episodes = check_int("evaluate: num_episodes", num_episodes)  # True ran 1 episode, 2.5 ran 2
    if max((np.ndim(x) for x in jax.tree_util.tree_leaves(params)), default=0) > 2:  # layers: at most [in, out]
        raise ValueError("evaluate: params hold a leading seeds axis (a kernel of more than 2 dimensions, as "
                         "load_run returns them): pass one seed's, jax.tree_util.tree_map(lambda x: x[s], params), "
                         "or jax.vmap(evaluate) over the seeds.")
    check_params_match_config(params, config, "evaluate", seeds_axis=False)
    _check_obs_statistics(obs_statistics, config)
    _check_finite_inputs(params, obs_statistics)
    program = _evaluation_program(_evaluation_config(config), num_episodes, bool(deterministic),
                                  envs.registrations())
    return program(key, params, obs_statistics)


def _check_obs_statistics(obs_statistics: Any, config: common.OnPolicyConfig) -> None:
    """Statistics only with normalize_observations, and of the config's observations: a config rebuilt by hand
    without the run's normalize_observations=True ignored the statistics passed with it (the policy then ran on
    raw observations), and another environment's statistics failed inside the traced program."""
    if obs_statistics is None:
        return  # make_episode_returns refuses None where the config normalises
    if not config.normalize_observations:
        raise ValueError("evaluate: obs_statistics given, but config.normalize_observations is False, so they would "
                         "be ignored: pass the config the run trained with (runs.load_run returns it), or no "
                         "statistics.")
    observation_size, _ = _network_shapes(_evaluation_config(config), envs.registrations())
    shapes = {name: np.shape(getattr(obs_statistics, name, None)) for name in ("mean", "var")}
    if any(shape != (observation_size,) for shape in shapes.values()):
        raise ValueError(f"evaluate: obs_statistics' mean and var have shapes {shapes['mean']} and {shapes['var']}, "
                         f"but {config.env_id}'s flat observations have {observation_size} entries: statistics of "
                         "another environment (or a seeds axis left on: pass one seed's)?")


def _check_finite_inputs(params: dict, obs_statistics: Any) -> None:
    """ValueError naming the first non-finite parameter or statistic (a diverged seed's): a policy of NaN weights
    still ran, CartPole's picking action 0 at every step (returns 8-10, read as a poor policy's) and Pendulum's
    returning NaN (read as episodes that never ended). Checked on the host where the inputs are concrete; under
    vmap or jit they are tracers and pass unchecked."""
    stats = {} if obs_statistics is None else {".mean": obs_statistics.mean, ".var": obs_statistics.var}
    values = [*jax.tree_util.tree_leaves(params), *stats.values()]
    if any(isinstance(x, jax.core.Tracer) for x in values):
        return
    if np.isfinite(np.concatenate([np.asarray(x).ravel() for x in values])).all():  # one check: evaluate's hot path
        return
    named = [*((jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_leaves_with_path(params)),
             *((f"obs_statistics{name}", x) for name, x in stats.items())]
    for name, x in named:
        if not np.isfinite(np.asarray(x)).all():
            raise ValueError(f"evaluate: {name} is not finite (NaN or inf): the seed's training diverged "
                             "(runs.non_finite_seeds(output) names the update), so its policy has no returns to "
                             "measure. Evaluate the other seeds (runs.finite_seeds(params) picks them out).")


@functools.lru_cache(maxsize=64)  # evaluate reads it three times a call; config.replace validates (~70 us)
def _evaluation_config(config: common.OnPolicyConfig) -> common.OnPolicyConfig:
    """`config` without what only training reads, never the policy's episodes: its HYPERPARAMS at their defaults
    and no `env_randomize` (evaluations run on the nominal environment) unless the policy observes its fields."""
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.name in type(config).HYPERPARAMS}
    observed = config.env_randomize if config.env_randomize_observe else ()
    return config.replace(**defaults, env_randomize=observed)


def parse_env_ranges(specs: list[str]) -> dict[str, tuple]:
    """{field: (low, high)} from command-line FIELD=LOW:HIGH texts (`--env-randomize`), (low, high, "log") from
    FIELD=LOW:HIGH:log (log-uniform draws). ValueError for a malformed or repeated one (the config checks the ranges,
    the environment the fields)."""
    ranges: dict[str, tuple] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        parts = text.split(":")
        log = len(parts) == 3 and parts[2].strip() == envs.randomization.LOG_UNIFORM
        try:
            bounds = (float(parts[0]), float(parts[1])) if len(parts) == 2 or log else None
        except ValueError:
            bounds = None
        if not sep or not name.isidentifier() or bounds is None:
            raise ValueError(f"--env-randomize {spec!r}: expected FIELD=LOW:HIGH, e.g. length=0.25:2, or "
                             f"FIELD=LOW:HIGH:log for log-uniform draws, e.g. length=0.25:2:log")
        if log:
            bounds = (*bounds, envs.randomization.LOG_UNIFORM)
        if name in ranges:
            raise ValueError(f"--env-randomize {spec!r}: {name} is given twice")
        ranges[name] = bounds
    return ranges


def parse_env_kwargs(specs: list[str]) -> dict[str, Any]:
    """{key: value} from command-line KEY=VALUE texts (`--env-kwarg`), each value read as JSON (numbers,
    true/false, lists) or else kept as text. ValueError for a malformed or repeated key."""
    kwargs: dict[str, Any] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--env-kwarg {spec!r}: expected KEY=VALUE, e.g. gravity=12")
        if key in kwargs:
            raise ValueError(f"--env-kwarg {spec!r}: {key} is given twice")
        try:
            kwargs[key] = json.loads(text)
        except ValueError:
            kwargs[key] = text
    return kwargs


@functools.lru_cache(maxsize=16)
def _evaluation_program(config: common.OnPolicyConfig, num_episodes: int, deterministic: bool, registrations: int):
    del registrations  # only a cache key: an id registered again (envs.register) compiles anew
    env, env_params = envs.make(config.env_id, **dict(config.env_kwargs))
    discrete, action_dim = envs.is_discrete(env, env_params), envs.action_dim(env, env_params)
    spec = common.EnvSpec(None, None, discrete, action_dim, 0)
    return jax.jit(evaluation.make_episode_returns(
        config.env_id, config.env_kwargs, common.actor_critic(config, spec), num_episodes, deterministic,
        config.normalize_observations, config.observed_ranges,
    ))


class Progress:
    """Host side of the training loop's progress callback: a throttled tqdm bar and per-update wall-clock times
    (measured at the reported updates, linearly interpolated between them by `close`).

        progress = Progress(config.num_updates, config.batch_size)
        out = jax.jit(jax.vmap(make_train(config, progress=progress)))(keys)
        progress.close()            # progress.wall_time: [num_updates] seconds since construction
    """

    def __init__(self, num_updates: int, env_steps_per_update: int, show: bool = True):
        self.start = time.perf_counter()
        self.wall_time = np.full(num_updates, np.nan)
        self.total = num_updates * env_steps_per_update
        self.show = show
        self.bar = None  # created at the first update, so compile time does not skew its rate
        self.steps_per_update = env_steps_per_update
        self.done = 0
        # With seeds split over several devices the callbacks arrive from several threads at once: without the
        # lock two bars were created and the count overshot the total.
        self.lock = threading.Lock()

    def __call__(self, update_idx, metrics):
        with self.lock:
            self._report(int(update_idx), metrics)

    def _report(self, i, metrics):
        if np.isnan(self.wall_time[i]):  # called once per seed under vmap: keep the first
            self.wall_time[i] = time.perf_counter() - self.start
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=self.done * self.steps_per_update, unit="step",
                            unit_scale=True, disable=not self.show, mininterval=0.5, desc="env steps per seed")
        if i + 1 > self.done:
            self.bar.update((i + 1 - self.done) * self.steps_per_update)
            self.done = i + 1
            ret = float(np.asarray(metrics["episode_return"]))
            if not np.isnan(ret):
                self.bar.set_postfix(episode_return=f"{ret:.1f}", refresh=False)

    def mark_done(self, num_done: int) -> None:
        """Record the wall time of update num_done - 1 (the end of a segment) if no callback reported it."""
        with self.lock:
            if np.isnan(self.wall_time[num_done - 1]):
                self.wall_time[num_done - 1] = time.perf_counter() - self.start

    def resume_at(self, first_update: int, wall_time: np.ndarray) -> None:
        """Continue a resumed run: its first `first_update` updates are done, at `wall_time` [first_update]
        (seconds since the run started; the last one measured); the clock goes on from there."""
        with self.lock:
            self.wall_time[:first_update] = wall_time
            self.done = first_update
            measured = np.asarray(wall_time)[~np.isnan(wall_time)]
            self.start = time.perf_counter() - (float(measured[-1]) if measured.size else 0.0)

    def close(self):
        """Close the bar and fill `wall_time` [num_updates] between the reported updates by linear interpolation."""
        if self.bar is not None:
            self.bar.close()
        # The loop reports every k-th update (pgjax.algos.common.PROGRESS_CALLS per run): interpolate the rest.
        seen = ~np.isnan(self.wall_time)
        if seen.any() and not seen.all():
            idx = np.arange(self.wall_time.size)
            self.wall_time = np.interp(idx, idx[seen], self.wall_time[seen])


def seed_keys(seed: int, indices: Any) -> jax.Array:
    """Keys [n] of seeds `indices` [n] of a sweep with base `seed`: fold_in(key(seed), i), as experiments/train.py
    draws them. Seed i's key does not depend on how many seeds the sweep had."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer) or np.any(indices < 0):
        raise ValueError(f"seed indices must be a non-empty list of non-negative ints; got {indices.tolist()!r}")
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(indices, jnp.uint32))


def _as_keys(keys: Any) -> jax.Array:
    """Typed keys from typed keys, a list of them, or legacy uint32 [n, 2] key data (a jax array, a NumPy array
    or nested lists of ints, e.g. read back from JSON)."""
    if not isinstance(keys, jax.Array) and not any(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(keys)):
        keys = np.asarray(keys)
        if keys.dtype.kind in "iu":  # ints as written out: uint32 values that jnp.asarray would read as int32
            if keys.size and (keys.min() < 0 or keys.max() > np.iinfo(np.uint32).max):
                raise ValueError(f"replay_seeds: legacy key data must be uint32 values in [0, 2**32); got values in "
                                 f"[{keys.min()}, {keys.max()}]")
            keys = keys.astype(np.uint32)
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if keys.ndim == 2 and keys.dtype == jnp.uint32 and keys.shape[1] == 2:  # legacy PRNGKey data, as train accepts
        keys = jax.random.wrap_key_data(keys)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"replay_seeds: keys must be jax.random keys [n] (e.g. runs.seed_keys(seed, indices)) or "
                         f"legacy uint32 key data [n, 2]; got dtype {keys.dtype}")
    return keys


def replay_seeds(train: Any, keys: jax.Array, batch: int, hparams: dict[str, Any] | None = None,
                 progress: Progress | None = None, num_devices: int = 1) -> Any:
    """Rerun some seeds of a vmapped sweep so that they reproduce the sweep's rows bit for bit.

    keys: [n] keys of the seeds (e.g. `seed_keys(seed, [5, 17])`; or legacy uint32 key data [n, 2]);
    batch: how many seeds each device ran in the sweep (its seeds / its devices); hparams: optional dict of [n]
    per-seed hyperparameters (a grid's rows); progress: the `Progress` train was built with, if any: its clock
    restarts once the program is compiled, so its wall times are the run's alone, as in a sweep (`progress.start`
    minus the call's start is the compile time); num_devices: the devices the sweep split its seeds over
    (`parallel.vmap_sharded`).
    Returns train's output with a leading [n] axis. The replay equals the sweep's rows only if `batch` and
    `num_devices` are the sweep's: the same --num-seeds (and grid) and the same device count.

    Why not `jax.jit(train)(key)`: XLA compiles a batch of seeds differently from one run (on a CPU, most likely its
    choice between its own code for small dots and a library kernel for larger ones; not verified), so they round
    float32 differently and over hundreds of updates drift apart chaotically. Measured on XLA:CPU:
    PPO on CartPole with 128-step rollouts gives every batch of >= 4 seeds the same bits, with 64-step rollouts
    only batches of >= 8. What always holds: in one program a seed's lane depends on its own inputs only. So the
    seeds run here as lanes of the sweep's per-device program (`batch` lanes on one device, spare lanes copies
    of the first seed, in chunks of `batch` when n > batch), which is the same computation. A sweep over several
    devices is replayed over as many, `batch` lanes on each: the same lanes round differently in a two-device
    program than in a one-device one (PPO on Acrobot-v1: losses 3.8e-6 apart from the first update).
    """
    keys = _as_keys(keys)
    if keys.ndim != 1:
        raise ValueError(f"replay_seeds: keys must be a 1-D batch of keys [n]; got shape {keys.shape}")
    batch = check_int("replay_seeds: batch (the sweep's seeds per device)", batch)  # 2.5 replayed as 2 lanes
    num_devices = check_int("replay_seeds: num_devices (the sweep's)", num_devices)
    if num_devices > len(jax.devices()):
        raise ValueError(f"replay_seeds: num_devices (the sweep's) must lie in [1, {len(jax.devices())}] (the devices "
                         f"here); got {num_devices}. Start the replay with the sweep's device count (--cpu-devices).")
    n = keys.shape[0]
    program = parallel.vmap_sharded(train, devices=jax.devices()[:num_devices])  # the sweep's program
    width = batch * num_devices  # the sweep's lanes: batch on each device
    batches = []
    for start in range(0, n, width):
        lanes = np.arange(start, min(start + width, n))
        lanes = np.concatenate([lanes, np.full(width - lanes.size, lanes[0])])
        lane_hparams = jax.tree_util.tree_map(lambda v: jnp.asarray(v)[lanes], hparams)  # "env.mdp" is a pytree
        batches.append([keys[lanes]] + ([] if hparams is None else [lane_hparams]))
    compiled = program.lower(*batches[0]).compile()  # every chunk has the same shapes: one compile
    if progress is not None:
        progress.start = time.perf_counter()  # wall times from here: the run, not its compile (as run_sweep does)
    chunks = [compiled(*program.place(*args)) for args in batches]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs)[:n], *chunks)


# Metrics that are NaN by definition at times: no episode finished in the update, or constant value targets.
MAY_BE_NAN = ("episode_return", "episode_length", "explained_variance", "eval_return")


def diverged_entries(metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    """{name: bool [lanes, updates]}: where a metric is NaN or infinite as a diverged run's are, i.e. not one of
    `MAY_BE_NAN` and not at an update that learned from no step (`valid_fraction` 0: REINFORCE's rollouts in which
    no episode ended, whose losses are NaN by definition)."""
    learned = np.asarray(metrics["valid_fraction"]) > 0 if "valid_fraction" in metrics else True
    return {k: ~np.isfinite(np.asarray(v)) & learned for k, v in metrics.items() if k not in MAY_BE_NAN}


def diverged_updates(metrics: dict[str, Any]) -> np.ndarray:
    """int [lanes]: the first update at which each lane's metrics went NaN or infinite (`diverged_entries`), -1 for
    a lane that stayed finite. From metrics alone (a metrics.csv read back: `read_metrics`), so `compare.py` can
    name the diverged seeds, whose later episode returns are a NaN policy's."""
    any_flag = np.any(np.stack(list(diverged_entries(metrics).values())), axis=0)  # [lanes, updates] (env_steps')
    return np.where(any_flag.any(axis=1), any_flag.argmax(axis=1), -1)


class SegmentedRun(NamedTuple):
    """What `train_in_segments` returns: the run's `output` ([lanes, ...] leaves; metrics as NumPy), the update it
    resumed at (`first_update`, 0 for a fresh run), the seconds spent compiling and running, and the device count
    (0 when the checkpoint held the finished run: nothing was left to run)."""

    output: common.TrainOutput
    first_update: int
    compile_s: float
    run_s: float
    num_devices: int


def _run_identity(train: Any, keys: jax.Array, hparams: dict[str, Any] | None) -> dict[str, Any]:
    """The config, the keys and the per-lane hyperparameters of a run, as JSON values (a checkpoint's meta)."""
    identity = {
        "config": train.config.to_dict(),
        "keys": np.asarray(jax.random.key_data(keys)).tolist(),
        "hparams": None if hparams is None else {k: _lane_values(v) for k, v in sorted(hparams.items())},
    }
    return json.loads(json.dumps(identity, default=str))


def _lane_values(value: Any) -> Any:
    """A per-lane hyperparameter as JSON lists: [n] values, or one list per leaf of a pytree such as "env.mdp"."""
    leaves = [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(value)]
    return leaves[0] if len(leaves) == 1 else leaves


def _check_same_run(path: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """ValueError naming what differs when a checkpoint was written by another run: arrays of the same shapes
    would otherwise resume silently under another config, other seeds or another grid."""
    fix = "; pass resume=False to start afresh (it overwrites the file), or another path"
    if not saved:
        raise ValueError(f"{path}: the checkpoint does not say which run wrote it{fix}.")
    fields = sorted(k for k in set(saved["config"]) | set(current["config"])
                    if saved["config"].get(k) != current["config"].get(k))
    if fields:
        shown = ", ".join(f"{k} {saved['config'].get(k)!r} there, {current['config'].get(k)!r} here"
                          for k in fields[:4])
        raise ValueError(f"{path}: the checkpoint was written by a run with another config ({shown}){fix}.")
    if saved["keys"] != current["keys"]:
        raise ValueError(f"{path}: the checkpoint was written by a run with other seeds (keys){fix}.")
    if saved["hparams"] != current["hparams"]:
        raise ValueError(f"{path}: the checkpoint was written by a run with other per-lane hyperparameters{fix}.")


def split_over_devices(fn: Any, num_lanes: int, in_axes: Any) -> tuple[Any, Any, int]:
    """(program, place, device count) for `fn` vmapped over `num_lanes` lanes, split over the local devices
    (`parallel.vmap_sharded`); the default of `train_in_segments`."""
    program = parallel.vmap_sharded(fn, in_axes=in_axes)
    return program, program.place, len(parallel.devices_for(num_lanes))


def train_in_segments(train: Any, keys: jax.Array, every: int, path: str, hparams: dict[str, Any] | None = None, *,
                      resume: bool = False, progress: Progress | None = None, meta: dict[str, Any] | None = None,
                      lanes_program: Any = split_over_devices) -> SegmentedRun:
    """`jax.vmap(train)(keys, hparams)` in segments of `every` updates, each one compiled call, with the loop's
    state saved to the checkpoint `path` after each (`pgjax.checkpoints`; `meta` goes into it).

    train: from an algorithm's `make_train(config)` (it has `.start`, `.advance` and `.config`); keys: [n];
    hparams: optional {name: [n]} per-lane hyperparameters (a grid). With `resume`, the run continues from the
    checkpoint at `path`, which must be this run's: the same config, keys and hyperparameters (the checkpoint
    records them) and state shapes; ValueError naming what differs otherwise. Without, a checkpoint there is
    overwritten. The segments compute the updates of the one-call run, so the output equals
    `jax.vmap(train)(keys)`'s bit for bit on the same machine and devices, resumed or not (tested). In Colab, a
    `path` on Google Drive lets a run outlive a disconnected runtime:

        out = runs.train_in_segments(train, keys, 100, "/content/drive/MyDrive/ppo.npz", resume=True).output

    (with `resume=True` and no file yet, the run starts afresh). `progress` (a `Progress` the train was built with)
    continues its bar and wall times across a resume; `lanes_program(fn, num_lanes, in_axes) -> (program, place,
    device count)` places the lanes (default `split_over_devices`). A segment in which more lanes diverge (a
    non-finite loss, KL or gradient norm) raises a RuntimeWarning right away; training goes on.
    """
    every = check_int("train_in_segments: every (updates per segment)", every)  # static in the segment programs
    problem = tables.output_path_problem(path, "file")  # found before compiling, not after a segment has trained
    if problem:
        raise ValueError(f"train_in_segments: path: {problem}.")
    if not all(hasattr(train, name) for name in ("start", "advance", "config")):
        raise ValueError("train_in_segments: train must come from an algorithm's make_train(config) (it needs "
                         "train.start, train.advance and train.config).")
    args = (keys,) if hparams is None else (keys, hparams)
    hp = args[1:]  # () or (hparams,), mapped like the keys
    num_lanes, num_updates = keys.shape[0], train.config.num_updates
    hp_axes = (0,) * len(hp)
    t0 = time.perf_counter()
    identity = _run_identity(train, keys, hparams)  # what a resumed run must share with the saved one
    meta = {**(meta or {}), "run": identity}
    if resume and os.path.exists(path):
        _check_same_run(path, checkpoints.read_meta(path).get("run", {}), identity)
        saved = checkpoints.load(path, jax.eval_shape(jax.vmap(train.start), *args))
        state, first, merged = saved.state, saved.next_update, saved.metrics
    else:
        start, place, _ = lanes_program(train.start, num_lanes, (0,) + hp_axes)
        state, first, merged, saved = start(*place(*args)), 0, None, None
    programs, num_devices = {}, 0  # segment length -> (compiled program, place)
    for count in sorted({min(every, num_updates - f) for f in range(first, num_updates, every)}):
        program, place, num_devices = lanes_program(
            functools.partial(train.advance, count=count), num_lanes, (0, None) + hp_axes)
        programs[count] = (program.lower(*place(state, np.int32(first), *hp)).compile(), place)
    compile_s = time.perf_counter() - t0
    if progress is not None:
        if saved is not None:
            progress.resume_at(first, saved.wall_time)
        else:
            progress.start = time.perf_counter()
    run_start, reported = time.perf_counter(), 0
    for f in range(first, num_updates, every):
        count = min(every, num_updates - f)
        compiled, place = programs[count]
        state, metrics = compiled(*place(state, np.int32(f), *hp))
        metrics = jax.device_get(metrics)
        merged = metrics if merged is None else {k: np.concatenate([merged[k], metrics[k]], axis=1) for k in merged}
        if progress is not None:
            progress.mark_done(f + count)
            wall_time = progress.wall_time[:f + count]
        else:
            wall_time = np.full(f + count, np.nan)
        checkpoints.save(path, state, merged, f + count, wall_time, meta)
        diverged = np.count_nonzero(np.any([v.any(axis=1) for v in diverged_entries(merged).values()], axis=0))
        if diverged > reported:  # say so now, not only when a long run ends
            reported = diverged
            warnings.warn(f"after update {f + count}, {diverged} of {num_lanes} runs have diverged (NaN or inf); "
                          "training goes on", RuntimeWarning, stacklevel=2)
    run_s = time.perf_counter() - run_start
    if progress is not None:
        progress.close()
    return SegmentedRun(common.TrainOutput(state.agent, state.env_state, merged), first, compile_s, run_s, num_devices)


def finite_seeds(params: Any) -> np.ndarray:
    """bool [seeds]: whether each seed's parameters ([seeds, ...] leaves, as `load_run` returns them) are all
    finite. A diverged seed's are not, and `evaluate` refuses them."""
    leaves = [np.asarray(x).reshape(np.shape(x)[0], -1) for x in jax.tree_util.tree_leaves(params)]
    return np.all(np.stack([np.isfinite(x).all(axis=1) for x in leaves]), axis=0)


def non_finite_seeds(output: common.TrainOutput, seed_indices: Any = None) -> list[str]:
    """One line per seed of a vmapped run ([seeds, ...] leaves) that went non-finite: the first update at which a
    metric other than `MAY_BE_NAN` (a loss, a gradient norm, a KL; `diverged_entries`) was NaN or infinite, and
    whether the final parameters are (`seed_indices` labels the rows, default 0..seeds-1). Empty when every seed
    stayed finite."""
    check_seeds_axis(output, "non_finite_seeds")
    flags = diverged_entries(output.metrics)
    finite_params = finite_seeds(output.agent.params)
    labels = _seed_labels(finite_params.size, seed_indices)
    lines = []
    for row, seed in enumerate(labels):
        bad = {k: np.flatnonzero(v[row]) for k, v in flags.items()}
        bad = {k: int(idx[0]) for k, idx in bad.items() if idx.size}
        if bad or not finite_params[row]:
            first = min(bad.values()) if bad else None
            names = sorted(k for k, u in bad.items() if u == first)
            where = f"{', '.join(names)} non-finite from update {first}" if bad else "metrics finite"
            lines.append(f"seed {seed}: {where}; final parameters {'finite' if finite_params[row] else 'NOT finite'}")
    return lines


# ---------------------------------------------------------------------------
# Seeds x hyperparameters grids.
# ---------------------------------------------------------------------------


def grid_cells(grid: dict[str, Any]) -> list[dict[str, float]]:
    """Every combination of a grid's values, the last field varying fastest: {"a": (1, 2), "b": (3,)} ->
    [{"a": 1, "b": 3}, {"a": 2, "b": 3}]."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def grid_lanes(config: common.OnPolicyConfig, cells: list[dict[str, float]], keys: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The (keys, hparams) batch of a seeds x hyperparameters grid, for `jax.vmap(train)(keys, hparams)`.

    keys: [S] seed keys; cells: C dicts of hyperparameter values (`grid_cells`), unnamed ones from `config`. A cell
    may also set the environment's numeric params fields as "env.<field>" (`common.env_grid_fields`, e.g.
    "env.length" for CartPole's pole): every cell then trains on its own variant of the environment.
    Lane c * S + s is seed s in cell c: every cell runs the same S keys (paired comparisons between cells).
    Returns keys [C * S] and hparams {name: float32 [C * S]} for every name in `config.HYPERPARAMS` and every
    "env.<field>" the cells set. ValueError for an unknown name or a cell the config's validation rejects (a
    negative learning rate, a final_lr_fraction without anneal_lr), before anything compiles.
    """
    env_fields = common.env_grid_fields(config)
    unknown = sorted({k for cell in cells for k in cell} - set(config.HYPERPARAMS) - set(env_fields))
    if unknown:
        raise ValueError(f"grid_lanes: {unknown} are neither vmappable hyperparameters of {type(config).__name__} "
                         f"({', '.join(config.HYPERPARAMS)}) nor numeric params fields of {config.env_id} "
                         f"({', '.join(env_fields)}).")
    for cell in cells:  # each cell's values pass the config's own checks (e.g. final_lr_fraction needs anneal_lr)
        try:
            cell_config = grid_cell_config(config, cell)
            if cell_config.restarts_episodes and "env.max_steps_in_episode" in cell:  # the cell's step limit
                common.check_episodes_fit(cell_config, common.make_env(cell_config))
        except ValueError as err:
            raise ValueError(f"grid_lanes: cell {cell_label(cell)}: {err}") from None
    num_seeds = keys.shape[0]
    values = {**config.hyperparams(), **{k: env_fields[k] for k in cells[0] if k in env_fields}}
    hparams = {k: jnp.repeat(jnp.asarray([cell.get(k, v) for cell in cells], jnp.float32), num_seeds)
               for k, v in values.items()}
    return jnp.concatenate([keys] * len(cells)), hparams


def grid_cell_config(config: common.OnPolicyConfig, cell: dict[str, float]) -> common.OnPolicyConfig:
    """The config of one grid cell: its hyperparameters set, and its "env.<field>" values in `env_kwargs`, so that
    the cell's run directory reloads (and `evaluate.py` evaluates on) the environment the cell trained on."""
    env_values = common.env_param_overrides(cell)
    changes = {k: v for k, v in cell.items() if not k.startswith(common.ENV_PARAM_PREFIX)}
    if env_values:
        changes["env_kwargs"] = {**dict(config.env_kwargs), **env_values}
    return config.replace(**changes)


def grid_cell_outputs(output: Any, num_cells: int) -> list[Any]:
    """A grid's output (leaves [C * S, ...], lanes as `grid_lanes` lays them out) split into its C cells' [S, ...].
    ValueError when the lanes are not a multiple of C (not this grid's output: its split would drop lanes)."""
    num_lanes = int(np.shape(jax.tree_util.tree_leaves(output)[0])[0])
    check_int("grid_cell_outputs: num_cells", num_cells)
    if num_lanes % num_cells:
        raise ValueError(f"grid_cell_outputs: {num_lanes} lanes do not split into {num_cells} cells of equal seeds; "
                         "pass the output of this grid's grid_lanes batch and its number of cells.")
    num_seeds = num_lanes // num_cells
    return [jax.tree_util.tree_map(lambda x: x[c * num_seeds:(c + 1) * num_seeds], output) for c in range(num_cells)]


def cell_label(cell: dict[str, float]) -> str:
    """"learning_rate=0.001, ent_coef=0": a grid cell's values, for legends and messages."""
    return ", ".join(f"{k}={v:g}" for k, v in cell.items())


def grid_summary(cells: list[dict[str, float]], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cell of a grid's final returns (`final_returns`, the last 10% of updates) over its seeds: the
    cell's number and values, then `summarize_final_returns`'s columns, paired (every cell runs the same seeds, so
    the pairs share their randomness and vs_best is usually far tighter than the two cells' own intervals).
    metrics: leaves [C * S, updates]."""
    returns = final_returns(metrics).reshape(len(cells), -1)
    last_eval = last_evaluation(metrics)
    evals = [None] * len(cells) if last_eval is None else list(last_eval.reshape(len(cells), -1))
    rows = summarize_final_returns(list(returns), evals, paired=True)
    return [{"cell": index, **cell, **row} for index, (cell, row) in enumerate(zip(cells, rows))]


def summarize_final_returns(returns: list[np.ndarray], last_evals: list[np.ndarray | None],
                            paired: bool, resamples: int = 2000) -> list[dict[str, Any]]:
    """One row per group of seeds' final returns (returns[i]: [S_i], NaN for a seed without a finished episode):
    median, mean, ci95 (half-width of a 95% Student-t interval of the mean, `mean_and_interval`), worst, best,
    finished (seeds with a value), seeds, and the comparison with the best group: vs_best = this mean - the best's,
    with vs_best_ci95 the half-width of its 95% t interval. The best group is the one of the highest mean among
    those whose seeds all have a finite value, or among all groups when none has (infinite returns, a diverged
    run's, are warned about): a mean over the finished seeds alone would let a group whose other seeds never
    finished an episode be best (its vs_best is then positive). `paired` (groups of equal size whose i-th seeds
    share their keys; ValueError for groups of unequal sizes) takes the mean of the per-seed differences with its
    t interval at n - 1 degrees of freedom (n pairs where both have a value); otherwise the two means' standard
    errors combine as independent, sqrt(se_a^2 + se_b^2), with Welch-Satterthwaite degrees of freedom (Welch's
    unequal-variances interval); iqm, the interquartile mean, with iqm_low / iqm_high its 95% percentile-bootstrap
    interval (`resamples` resamples of the seeds) and p_improve_vs_best, P(a seed of this group ends above one of
    the best's) (`score_stats`; NaN for a group without a value). With last_evals[i] ([S_i], the in-run evaluation
    after the last update) the row adds eval_median, eval_mean and eval_worst."""
    returns = [np.asarray(values, dtype=float) for values in returns]
    if paired and len({values.shape for values in returns}) > 1:
        raise ValueError(f"summarize_final_returns: paired groups need equal numbers of seeds (the i-th seeds share "
                         f"their keys); got {[values.size for values in returns]}. Pass paired=False.")
    with _quiet_nan_warnings():
        means = np.array([np.nanmean(values) if not np.isnan(values).all() else np.nan for values in returns])
    infinite = {i: np.flatnonzero(np.isinf(values)).tolist() for i, values in enumerate(returns)
                if np.isinf(values).any()}
    if infinite:  # a diverged run or environment: its group's mean is +-inf and its intervals NaN, so say which
        warnings.warn(f"summarize_final_returns: infinite final returns in groups {sorted(infinite)} (at seeds "
                      f"{infinite} of each group): their mean, intervals and comparisons are inf or NaN, and none "
                      f"of them is chosen as the best group while a group with all seeds finite remains.",
                      RuntimeWarning, stacklevel=2)
    complete = np.array([np.isfinite(values).all() for values in returns])
    candidates = np.where(complete, means, np.nan) if (complete & ~np.isnan(means)).any() else means
    best_index = None if np.isnan(candidates).all() else int(np.nanargmax(candidates))
    best = None if best_index is None else returns[best_index]
    rows = []
    for index, (values, evals) in enumerate(zip(returns, last_evals)):
        values = np.asarray(values, dtype=float)
        finished = values[~np.isnan(values)]
        mean, half = mean_and_interval(values[:, None])
        stat = (lambda f: float(f(finished))) if finished.size else (lambda f: float("nan"))
        row = {"median": stat(np.median), "mean": float(mean[0]),
               "ci95": float(half[0]), "worst": stat(np.min),
               "best": stat(np.max), "finished": int(finished.size), "seeds": int(values.size)}
        row["vs_best"], row["vs_best_ci95"] = _difference(values, best, paired, index == best_index)
        robust = ((score_stats.iqm(finished), *score_stats.bootstrap_interval(finished, num_resamples=resamples),
                   score_stats.probability_of_improvement(finished, best)) if finished.size else (float("nan"),) * 4)
        row.update(zip(("iqm", "iqm_low", "iqm_high", "p_improve_vs_best"), robust))
        if evals is not None:
            with _quiet_nan_warnings():
                row.update(eval_median=float(np.nanmedian(evals)), eval_mean=float(np.nanmean(evals)),
                           eval_worst=float(np.nanmin(evals)))
        rows.append(row)
    return rows


def _difference(values: np.ndarray, best: np.ndarray | None, paired: bool, is_best: bool) -> tuple[float, float]:
    """(mean difference from `best`, half-width of its 95% t interval), NaN where it cannot be formed. Paired: the
    differences' own interval, n - 1 degrees of freedom for n pairs. Independent: Welch's, the standard error
    sqrt(se_a^2 + se_b^2) with the Welch-Satterthwaite degrees of freedom
    (se_a^2 + se_b^2)^2 / (se_a^4 / (n_a - 1) + se_b^4 / (n_b - 1))."""
    if best is None:
        return float("nan"), float("nan")
    if paired:
        (diff_mean,), (diff_half,) = mean_and_interval((values - best)[:, None])
        return float(diff_mean), float(diff_half)
    if is_best:
        return 0.0, 0.0
    (mean_a,), (se_a,), (n_a,) = _mean_and_standard_error(values[:, None])
    (mean_b,), (se_b,), (n_b,) = _mean_and_standard_error(best[:, None])
    if n_a < 2 or n_b < 2:
        return float(mean_a - mean_b), float("nan")
    variance = se_a ** 2 + se_b ** 2
    if variance == 0:  # both groups constant: no spread, and the degrees of freedom are 0 / 0
        return float(mean_a - mean_b), 0.0
    dof = variance ** 2 / (se_a ** 4 / (n_a - 1) + se_b ** 4 / (n_b - 1))
    return float(mean_a - mean_b), float(t_quantile(dof) * np.sqrt(variance))


def save_grid(out_dir: str, algo: str, config: common.OnPolicyConfig, cells: list[dict[str, float]],
              output: common.TrainOutput, seed: int, wall_time: np.ndarray | None = None,
              seed_indices: Any = None, replay: dict | None = None) -> list[dict[str, Any]]:
    """Write a seeds x hyperparameters grid run (`output` leaves [C * S, ...], lanes as `grid_lanes` lays them out):

        config.json           {"algo", "num_seeds", "seed", "grid": {name: values}, "cells", "config", "versions"}
        summary.csv           `grid_summary`: one row per cell
        metrics.csv           one row per (cell, seed, update): cell, the cell's values, then a run's columns
        learning_curves.png   one mean curve (95% t interval) per cell
        cell-K/               a run directory per cell (`save_run`, its config holding the cell's values),
                              so `load_run` / experiments/evaluate.py reload it

    `seed_indices` labels each cell's seeds (a replay's), default 0..S-1; `replay` (a replay's assumptions about
    its sweep, as for `save_run`) goes into config.json and each cell's. Returns the summary rows.
    """
    cell_outputs = grid_cell_outputs(output, len(cells))
    num_seeds = int(np.asarray(cell_outputs[0].metrics["env_steps"]).shape[0])
    clash = sorted(set(cells[0]) & set(output.metrics))
    if clash:  # metrics.csv names its columns by cell field and by metric: one would overwrite the other
        raise ValueError(f"save_grid: grid fields {clash} are also metric names; rename the metric.")
    os.makedirs(out_dir, exist_ok=True)
    parts, curves = [], {}
    for index, (cell, cell_output) in enumerate(zip(cells, cell_outputs)):
        save_run(os.path.join(out_dir, f"cell-{index}"), algo, grid_cell_config(config, cell), cell_output, seed,
                 wall_time, seed_indices, replay)
        columns = metrics_columns(cell_output.metrics, wall_time, seed_indices)
        rows = len(columns["seed"])
        parts.append({"cell": np.full(rows, index, dtype=object),
                      **{k: np.full(rows, v, dtype=object) for k, v in cell.items()}, **columns})
        curves[cell_label(cell)] = cell_output.metrics
    write_metrics_csv(os.path.join(out_dir, "metrics.csv"),
                      {k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
    summary = grid_summary(cells, output.metrics)
    tables.write_csv(os.path.join(out_dir, "summary.csv"), summary)
    plot_learning_curves(os.path.join(out_dir, "learning_curves.png"), curves,
                         f"{algo.upper()} on {config.env_id}, {num_seeds} seeds per cell")
    grid = {k: list(dict.fromkeys(cell[k] for cell in cells)) for k in cells[0]}
    meta = {"algo": algo, "num_seeds": num_seeds, "seed": seed, "seed_indices": _seed_labels(num_seeds, seed_indices),
            "devices": _devices(output), **({} if replay is None else {"replay": replay}), "grid": grid, "cells": cells,
            "config": config.to_dict(), "versions": {"jax": jax.__version__, "pgjax": _pgjax_version()}}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(meta, f, indent=2, default=str)
    return summary


def last_evaluation(metrics: dict[str, Any]) -> np.ndarray | None:
    """Per seed, the in-run evaluation after the last update (`eval_return`, config.eval_every): [seeds]; None for
    a run without in-run evaluations."""
    if "eval_return" not in metrics:
        return None
    return np.asarray(metrics["eval_return"], dtype=float)[:, -1]


def final_returns(metrics: dict[str, Any], fraction: float = 0.1) -> np.ndarray:
    """Per seed, the mean of `episode_return` over the last `fraction` of updates (NaN-aware): [seeds]."""
    if not is_finite_real(fraction) or not 0.0 < fraction <= 1.0:  # 0 or less kept the last update, > 1 all
        raise ValueError(f"final_returns: fraction must lie in (0, 1] (of the updates); got {fraction!r}.")
    returns = np.asarray(metrics["episode_return"], dtype=float)
    tail = max(1, int(round(returns.shape[1] * fraction)))
    with _quiet_nan_warnings():
        return np.nanmean(returns[:, -tail:], axis=1)


def area_under_curve(metrics: dict[str, Any]) -> np.ndarray:
    """Per seed, the mean over updates of `smoothed_returns` (each update's mean episode return, the last one
    carried over updates where no episode finished): the area under the learning curve per env step, which ranks
    how fast a run learned as well as how far ([seeds]; updates before the first finished episode are left out)."""
    with _quiet_nan_warnings():
        return np.nanmean(smoothed_returns(np.asarray(metrics["episode_return"], dtype=float)), axis=1)


def steps_to_threshold(metrics: dict[str, Any], threshold: float, window: int = 10) -> np.ndarray:
    """Per seed, `env_steps` at the first update where the mean episode return over the last `window` updates
    (those of them with finished episodes) reached `threshold` ([seeds]; NaN for a seed that never did). The
    window keeps one lucky update from counting as learned, so it must be full: the earliest update that can
    count is the window-th (a run of fewer updates than `window` is judged over all of them, at its end)."""
    window = check_int("steps_to_threshold: window", window)
    if not is_finite_real(threshold):  # NaN was never reached, silently
        raise ValueError(f"steps_to_threshold: threshold must be a finite number (a return); got {threshold!r}.")
    returns = np.asarray(metrics["episode_return"], dtype=float)
    window = min(window, returns.shape[1])
    finished = ~np.isnan(returns)
    sums, counts = np.cumsum(np.where(finished, returns, 0.0), axis=1), np.cumsum(finished, axis=1)
    sums[:, window:] -= sums[:, :-window].copy()
    counts[:, window:] -= counts[:, :-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        reached = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf) >= threshold
    reached[:, : window - 1] = False  # a partial window at the start: one lucky first episode counted as learned
    first = np.argmax(reached, axis=1)
    steps = np.asarray(metrics["env_steps"], dtype=float)[np.arange(len(first)), first]
    return np.where(reached.any(axis=1), steps, np.nan)
