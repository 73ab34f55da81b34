"""Logged data for offline policy evaluation and offline policy gradients.

A `Dataset` holds N logged episodes of at most T steps from a behaviour policy mu,
laid out [N, T, ...] so that both transition-level estimators (DualDICE, fitted Q
evaluation) and trajectory-level ones (importance sampling) read the same arrays:

    (s_t, a_t, r_t, s_{t+1}, terminal_t, mask_t, log mu(a_t|s_t))   for t < T,
    plus samples s_0 ~ mu0 of the initial-state distribution.

`mask` is False on the padding after an episode ended (termination or time limit);
`terminal` marks a true absorbing next state (no bootstrapping from s_{t+1}).

Files: `save_dataset` writes a `.npz` with a schema tag; `load_dataset` checks the tag,
the field names, ranks, dtypes and shapes against each other and the values
(probabilities, masks), and raises `DatasetError` naming the problem otherwise.
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.tables import make_folder_of, npz_problem, output_path_problem
from pgjax.tabular.evaluation import check_policy_table
from pgjax.tabular.mdp import MDP
from pgjax.trajectory import float_dtype, safe_log, sample_trajectories
from pgjax.validation import check_int, is_int

Array = jax.Array

SCHEMA = "pgjax.offline.Dataset/v1"


class DatasetError(ValueError):
    """A dataset (in memory or in a file) that does not satisfy the `Dataset` schema."""


class Dataset(NamedTuple):
    """Logged episodes of a behaviour policy (a pytree; every field is an array).

    Attributes:
      observations: s_t [N, T, *obs_shape]; for tabular data int32 state indices [N, T].
      actions: a_t [N, T, *action_shape]; for discrete actions int32 [N, T].
      rewards: r_t [N, T].
      next_observations: s_{t+1} [N, T, *obs_shape].
      terminals: [N, T] bool, s_{t+1} is absorbing (its value is 0).
      mask: [N, T] bool, step t is part of episode n (False on padding after its end).
      behaviour_log_probs: log mu(a_t|s_t) [N, T]; NaN where the behaviour policy is unknown.
      initial_observations: s_0 ~ mu0 [M, *obs_shape] (by default the episodes' first states).
    """

    observations: Array
    actions: Array
    rewards: Array
    next_observations: Array
    terminals: Array
    mask: Array
    behaviour_log_probs: Array
    initial_observations: Array

    @property
    def num_episodes(self) -> int:
        """N, from rewards [N, T]."""
        return self.rewards.shape[0]

    @property
    def horizon(self) -> int:
        """T, from rewards [N, T]."""
        return self.rewards.shape[1]

    @property
    def num_transitions(self) -> int:
        """The number of valid (unmasked) transitions; needs concrete values."""
        return int(np.sum(np.asarray(self.mask)))


def validate_dataset(dataset: Dataset) -> None:
    """Raise `DatasetError` naming the field unless the arrays form a consistent `Dataset`.

    Checks ranks and shapes against each other, dtypes (floating rewards, bool terminals and
    mask), finiteness of rewards, that behaviour log-probabilities are <= 0 and not -inf on
    valid steps (or NaN for unknown), that masks are a prefix (valid steps first, then padding)
    with at least one valid step per episode, and that no valid step follows a terminal one.
    """
    fields = {name: np.asarray(getattr(dataset, name)) for name in Dataset._fields}
    rewards = fields["rewards"]
    if rewards.ndim != 2:
        raise DatasetError(f"Dataset.rewards must have shape [N, T]; got {rewards.shape}.")
    n, t = rewards.shape
    if n < 1 or t < 1:
        raise DatasetError(f"Dataset needs at least one episode of one step; rewards have shape {rewards.shape}.")
    for name in ("observations", "actions", "next_observations"):
        if fields[name].shape[:2] != (n, t):
            raise DatasetError(f"Dataset.{name} must start with [N, T] = {(n, t)}; got {fields[name].shape}.")
    for name in ("terminals", "mask", "behaviour_log_probs"):
        if fields[name].shape != (n, t):
            raise DatasetError(f"Dataset.{name} must have shape [N, T] = {(n, t)}; got {fields[name].shape}.")
    obs_shape = fields["observations"].shape[2:]
    if fields["next_observations"].shape[2:] != obs_shape:
        raise DatasetError(
            f"Dataset.next_observations has observation shape {fields['next_observations'].shape[2:]}, "
            f"observations have {obs_shape}; they must match."
        )
    init = fields["initial_observations"]
    if init.ndim < 1 or init.shape[0] < 1 or init.shape[1:] != obs_shape:
        raise DatasetError(
            f"Dataset.initial_observations must have shape [M >= 1, *{obs_shape}]; got {init.shape}."
        )
    for name in ("terminals", "mask"):
        if fields[name].dtype != np.bool_:
            raise DatasetError(f"Dataset.{name} must be bool; got {fields[name].dtype}.")
    # Integer rewards once made the estimators compute in an integer dtype, rounding pi and gamma to 0 or 1.
    if not np.issubdtype(rewards.dtype, np.floating):
        raise DatasetError(
            f"Dataset.rewards must be floating (got {rewards.dtype}); cast with .astype(jnp.float32)."
        )
    if not np.all(np.isfinite(rewards)):
        raise DatasetError("Dataset.rewards contains NaN or inf; drop or fix those transitions before estimating.")
    log_mu = fields["behaviour_log_probs"]
    if np.any(log_mu[~np.isnan(log_mu)] > 1e-6):
        raise DatasetError("Dataset.behaviour_log_probs must be log-probabilities (<= 0); store log mu(a|s), not mu.")
    mask = fields["mask"]
    if not np.all(mask[:, 0]):
        raise DatasetError("Dataset.mask: every episode needs a valid first step (mask[:, 0] must be True).")
    if np.any(mask[:, 1:] & ~mask[:, :-1]):
        raise DatasetError("Dataset.mask must be a prefix per episode (valid steps, then padding); found a gap.")
    impossible = np.argwhere(mask & (log_mu == -np.inf))
    if impossible.size:
        i, j = impossible[0]
        raise DatasetError(
            f"Dataset.behaviour_log_probs is -inf on {len(impossible)} valid step(s) (first: episode {i}, step {j}): "
            "the behaviour policy could not have taken the logged action there. Log log mu(a_t|s_t) of the policy "
            "that acted, or NaN where it is unknown."
        )
    # An episode ends at its terminal step: steps after it would be counted by the transition-level
    # estimators as more data while the trajectory-level ones read them as the same episode going on.
    after_terminal = mask[:, 1:] & (np.cumsum(fields["terminals"] & mask, axis=1)[:, :-1] > 0)
    if np.any(after_terminal):
        i, j = np.argwhere(after_terminal)[0]
        raise DatasetError(
            f"Dataset.mask is True after a terminal step (first: episode {i}, step {j + 1}): an episode ends at its "
            "terminal transition. Set mask False on the steps after it (padding), or start a new episode (row)."
        )


def validate_tabular_dataset(dataset: Dataset, num_states: int, num_actions: int) -> None:
    """`validate_dataset` plus integer states in [0, S) and actions in [0, A) on valid steps."""
    validate_dataset(dataset)
    check_tabular_indices(dataset, num_states, num_actions)


def check_tabular_indices(dataset: Dataset, num_states: int, num_actions: int) -> None:
    """Raise `DatasetError` naming the field unless states [N, T] (and next states) are integers in [0, S), actions
    in [0, A) on valid steps, and initial_observations [M] in [0, S): as indices, -1 would wrap around to the last
    state or action and S would be dropped, silently (host-side; the part of `validate_tabular_dataset` that
    `empirical_model` runs on concrete data)."""
    for name, bound in (("observations", num_states), ("next_observations", num_states), ("actions", num_actions)):
        x = np.asarray(getattr(dataset, name))
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
            raise DatasetError(f"Dataset.{name} must be integer indices [N, T] for tabular data; "
                               f"got {x.dtype} {x.shape}.")
        valid = x[np.asarray(dataset.mask)]
        if valid.size and (valid.min() < 0 or valid.max() >= bound):
            raise DatasetError(f"Dataset.{name} has indices outside [0, {bound}); "
                               "does the policy shape match the data?")
    init = np.asarray(dataset.initial_observations)
    if init.ndim != 1 or not np.issubdtype(init.dtype, np.integer) or init.min() < 0 or init.max() >= num_states:
        raise DatasetError(f"Dataset.initial_observations must be state indices in [0, {num_states}) of shape [M].")


def collect(key: Array, mdp: MDP, behaviour_pi: Array, num_trajectories: int, horizon: int) -> Dataset:
    """Roll out the behaviour policy mu [S, A] on a tabular MDP: N episodes of T steps, one compiled call.

    Tabular MDPs have no terminal states, so `terminals` is all False and `mask` all True;
    `behaviour_log_probs` holds log mu(a_t|s_t) and `initial_observations` the N first states.

    Args:
      key: PRNG key.
      mdp: an unbatched `pgjax.tabular.MDP`.
      behaviour_pi: mu [S, A], rows summing to 1.
      num_trajectories: N >= 1 (static).
      horizon: T >= 1 (static).

    Returns:
      A `Dataset` with fields [N, T] (int32 states and actions) and initial_observations [N].
    """
    behaviour_pi = jnp.asarray(behaviour_pi)
    if not isinstance(behaviour_pi, jax.core.Tracer):
        check_tabular_policy(behaviour_pi, "behaviour_pi", mdp.reward.shape)
    num_trajectories = check_int("collect: num_trajectories", num_trajectories)
    horizon = check_int("collect: horizon", horizon)
    return sample_dataset(key, mdp, behaviour_pi, num_trajectories, horizon)


@functools.partial(jax.jit, static_argnums=(3, 4))
def sample_dataset(key: Array, mdp: MDP, behaviour_pi: Array, num_trajectories: int, horizon: int) -> Dataset:
    """The unvalidated core of `collect`, for use under `jit`/`vmap` (e.g. many datasets in one call).

    Same arguments and result as `collect`; `num_trajectories` and `horizon` are static.
    """
    traj = sample_trajectories(key, mdp, behaviour_pi, horizon, num_trajectories)
    shape = traj.rewards.shape
    return Dataset(
        observations=traj.states,
        actions=traj.actions,
        rewards=traj.rewards,
        next_observations=traj.next_states,
        terminals=jnp.zeros(shape, bool),
        mask=jnp.ones(shape, bool),
        behaviour_log_probs=safe_log(behaviour_pi)[traj.states, traj.actions],
        initial_observations=traj.states[:, 0],
    )


def check_tabular_policy(pi: Array, name: str, shape=None) -> None:
    """Raise `ValueError` naming `name` unless pi is a finite table [S, A] (of `shape`, if given) of distributions
    (`pgjax.tabular.check_policy_table`)."""
    check_policy_table(pi, name, shape)


def concatenate(datasets: list[Dataset]) -> Dataset:
    """Stack the episodes (and initial samples) of datasets with equal horizons T along axis 0.

    Fields [N_k, T, ...] -> [sum_k N_k, T, ...]; initial_observations [M_k, ...] -> [sum_k M_k, ...].
    """
    if not datasets:
        raise ValueError("concatenate: need at least one dataset.")
    horizons = {d.horizon for d in datasets}
    if len(horizons) != 1:
        raise DatasetError(f"concatenate: datasets must share a horizon T; got {sorted(horizons)}.")
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *datasets)


def subset(dataset: Dataset, num_episodes: int) -> Dataset:
    """The first `num_episodes` episodes, with the matching initial samples when there is one per episode.

    Fields [N, T, ...] -> [num_episodes, T, ...]; initial_observations [M, ...] -> [num_episodes, ...] when
    M == N, else kept whole.
    """
    if not is_int(num_episodes) or not (
            1 <= num_episodes <= dataset.num_episodes):  # a slice would take -1 as "all but the last", 10**9 as all
        raise ValueError(f"subset: num_episodes must be an int in [1, {dataset.num_episodes}] (the dataset's "
                         f"episodes); got {num_episodes!r}.")
    init = dataset.initial_observations
    if init.shape[0] == dataset.num_episodes:
        init = init[:num_episodes]
    return dataset._replace(**{f: getattr(dataset, f)[:num_episodes] for f in Dataset._fields[:-1]},
                            initial_observations=init)


def save_dataset(path: str | os.PathLike, dataset: Dataset, **metadata) -> str:
    """Write the dataset to a `.npz` file with the schema tag (and `metadata` as strings, `read_dataset_metadata`);
    returns the path written: `path`, with ".npz" appended when it lacks it (as `np.savez` does). Makes the file's
    folder if it is missing."""
    validate_dataset(dataset)
    path = os.fspath(path)
    path = path if path.endswith(".npz") else path + ".npz"
    problem = output_path_problem(path, "file")
    if problem:
        raise DatasetError(f"save_dataset: {problem}.")
    make_folder_of(path)
    arrays = {name: np.asarray(getattr(dataset, name)) for name in Dataset._fields}
    extra = {f"{_META}{k}": np.asarray(str(v)) for k, v in metadata.items()}
    np.savez(path, schema=np.asarray(SCHEMA), **arrays, **extra)
    return path


_META = "meta_"  # the prefix of save_dataset's metadata entries


def _dataset_path(path: str | os.PathLike, owner: str) -> str:
    """`path`, or `path` + ".npz" when only that exists (what save_dataset wrote for a path without it)."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        return path + ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{owner}: no file at {path!r} (nor {path + '.npz'!r}).")
    return path


def _check_npz(path: str) -> None:
    problem = npz_problem(path)
    if problem:
        raise DatasetError(f"{path}: {problem}; write datasets with save_dataset (a truncated or corrupt copy?).")


def read_dataset_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata` keywords `save_dataset` stored with a dataset, {name: value as a string}."""
    path = _dataset_path(path, "read_dataset_metadata")
    _check_npz(path)
    with np.load(path, allow_pickle=False) as data:
        return {name[len(_META):]: str(data[name]) for name in data.files if name.startswith(_META)}


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a `.npz` written by `save_dataset` (".npz" may be left off, as for `save_dataset`), checking the schema;
    raises `DatasetError` on a bad file."""
    path = _dataset_path(path, "load_dataset")
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            if "schema" not in names:
                raise DatasetError(f"{path}: not a pgjax dataset (no 'schema' entry); write it with save_dataset.")
            schema = str(data["schema"])
            if schema != SCHEMA:
                raise DatasetError(f"{path}: schema {schema!r} is not {SCHEMA!r}; re-collect or convert the data.")
            missing = [f for f in Dataset._fields if f not in names]
            if missing:
                raise DatasetError(f"{path}: missing fields {missing}; the file is incomplete or from another tool.")
            arrays = {f: np.array(data[f]) for f in Dataset._fields}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read as .npz ({err}); the file is truncated or corrupt.") from err
    dataset = Dataset(**{k: jnp.asarray(v) for k, v in arrays.items()})
    validate_dataset(Dataset(**arrays))
    return dataset


class Transitions(NamedTuple):
    """The valid transitions of a `Dataset`, flattened: fields [M, ...] (M = number of valid steps)."""

    observations: Array
    actions: Array
    rewards: Array
    next_observations: Array
    terminals: Array


def valid_transitions(dataset: Dataset) -> Transitions:
    """Gather the unmasked steps of a `Dataset` into `Transitions` [M, ...] (host-side: M must be concrete)."""
    mask = np.asarray(dataset.mask)
    return Transitions(*(jnp.asarray(np.asarray(getattr(dataset, f))[mask]) for f in Transitions._fields))
