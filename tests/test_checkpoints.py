"""pgjax.checkpoints: a run's state and metrics written and read back exactly; a checkpoint that does not fit the
run, or is not one, is refused with a message (the bit-for-bit resume of a training run is in test_cli.py)."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npz_files import replace_array
from pgjax import checkpoints
from pgjax.algos import common


def _state(num_lanes=3):
    keys = jax.random.split(jax.random.key(5), num_lanes)
    return common.RunState(
        agent={"w": jnp.arange(num_lanes * 4, dtype=jnp.float32).reshape(num_lanes, 4),
               "count": jnp.ones(num_lanes, jnp.int32)},
        env_state=(jnp.zeros((num_lanes, 2), jnp.bool_),),
        obs=jnp.full((num_lanes, 2, 3), 0.5, jnp.float32),
        key=keys,
        eval_key=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
    )


def test_round_trip_is_exact(tmp_path):
    path = str(tmp_path / "checkpoint.npz")
    state = _state()
    metrics = {"loss": np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32),
               "env_steps": np.arange(21).reshape(3, 7)}
    wall = np.array([0.1, np.nan, 0.3, 0.4, np.nan, 0.6, 0.7])
    checkpoints.save(path, state, metrics, 7, wall, {"argv": ["--algo", "ppo"]})
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # the temporary file was renamed
    assert checkpoints.read_meta(path) == {"argv": ["--algo", "ppo"]}
    loaded = checkpoints.load(path, jax.eval_shape(lambda: state))
    assert loaded.next_update == 7 and loaded.meta == {"argv": ["--algo", "ppo"]}
    np.testing.assert_array_equal(loaded.wall_time, wall)
    for name, value in metrics.items():
        np.testing.assert_array_equal(loaded.metrics[name], value)
        assert loaded.metrics[name].dtype == value.dtype
    assert jax.tree_util.tree_structure(loaded.state) == jax.tree_util.tree_structure(state)
    for got, want in zip(jax.tree_util.tree_leaves(loaded.state), jax.tree_util.tree_leaves(state)):
        assert got.dtype == want.dtype and got.shape == want.shape
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # The keys work as keys: the same draws as the originals.
    np.testing.assert_array_equal(jax.vmap(jax.random.normal)(loaded.state.key), jax.vmap(jax.random.normal)(state.key))


def test_save_makes_its_folder_and_refuses_a_directory(tmp_path):
    """A checkpoint path in a folder not yet made (a new run's, a Drive folder) failed with FileNotFoundError, and
    a directory's with IsADirectoryError at the rename, after train_in_segments had trained a segment."""
    path = str(tmp_path / "drive" / "run" / "checkpoint.npz")
    checkpoints.save(path, _state(), {"loss": np.zeros((3, 2), np.float32)}, 2, np.zeros(2))
    assert checkpoints.load(path, jax.eval_shape(_state)).next_update == 2
    with pytest.raises(ValueError, match=r"checkpoints.save: .*run is a directory; give the path of a file"):
        checkpoints.save(os.path.dirname(path), _state(), {"loss": np.zeros((3, 2), np.float32)}, 2, np.zeros(2))


def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path):
    path = str(tmp_path / "checkpoint.npz")
    checkpoints.save(path, _state(3), {}, 2, np.zeros(2))
    with pytest.raises(ValueError, match=r"state leaf 0 is int32\[3\]; this run needs int32\[4\]"):
        checkpoints.load(path, jax.eval_shape(lambda: _state(4)))  # another seed count
    other_keys = jax.eval_shape(lambda: _state(3)._replace(key=jax.random.split(jax.random.key(0), 4)))
    with pytest.raises(ValueError, match=r"is a key array key<fry>\[3\]; this run needs key<fry>\[4\]"):
        checkpoints.load(path, other_keys)
    fewer = jax.eval_shape(lambda: _state(3)._replace(env_state=()))
    with pytest.raises(ValueError, match="holds 6 state arrays, this run's state has 5"):
        checkpoints.load(path, fewer)
    other_dtype = jax.eval_shape(lambda: _state(3)._replace(obs=jnp.zeros((3, 2, 3), jnp.int32)))
    with pytest.raises(ValueError, match="this run needs int32"):
        checkpoints.load(path, other_dtype)
    with pytest.raises(ValueError, match="no checkpoint at"):
        checkpoints.load(str(tmp_path / "missing.npz"), fewer)
    np.savez(str(tmp_path / "other.npz"), x=np.zeros(3))
    with pytest.raises(ValueError, match="not a pgjax checkpoint"):
        checkpoints.read_meta(str(tmp_path / "other.npz"))


def test_bfloat16_leaves_round_trip_and_other_structures_are_refused(tmp_path):
    """bfloat16 (unknown to NumPy's savez) comes back bit for bit; a state with the same shapes in another structure
    (swapped fields) is refused by its leaf paths, not loaded into the wrong places."""
    path = str(tmp_path / "checkpoint.npz")
    state = {"a": jnp.array([1.5, -2.25, 3e-3], jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    checkpoints.save(path, state, {}, 0, np.zeros(0))
    loaded = checkpoints.load(path, jax.eval_shape(lambda: state)).state
    assert loaded["a"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded["a"]).view(np.uint16), np.asarray(state["a"]).view(np.uint16))
    with pytest.raises(ValueError, match=r"state leaf 0 is \['a'\] in the checkpoint, \['x'\] in this run"):
        checkpoints.load(path, jax.eval_shape(lambda: {"x": state["a"], "y": state["b"]}))


def test_metrics_keys_and_shapes_like_the_state(tmp_path):
    """bfloat16 metrics came back as raw bytes (|V2); a non-default key implementation (rbg) could not be
    reloaded; metrics of the wrong shape were written and only --resume called the file corrupt."""
    path = str(tmp_path / "checkpoint.npz")
    state = {"key": jax.random.key(3, impl="rbg"), "x": jnp.arange(3.0)}
    metric = jnp.array([[1.5, -2.25], [3e-3, 7.0]], jnp.bfloat16)
    checkpoints.save(path, state, {"m": metric}, 2, np.zeros(2))
    loaded = checkpoints.load(path, jax.eval_shape(lambda: state))
    assert loaded.metrics["m"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded.metrics["m"]).view(np.uint16), np.asarray(metric).view(np.uint16))
    assert loaded.state["key"].dtype == state["key"].dtype
    np.testing.assert_array_equal(jax.random.key_data(loaded.state["key"]), jax.random.key_data(state["key"]))
    with pytest.raises(ValueError, match=r"metrics must be \[lanes, next_update=2\] \(not so: \{'m': \(2, 3\)\}\)"):
        checkpoints.save(path, state, {"m": jnp.zeros((2, 3))}, 2, np.zeros(2))


def test_a_truncated_or_corrupt_checkpoint_is_named_not_read(tmp_path):
    """Half a file, an empty file, flipped bytes, an .npy: each a ValueError naming the file (resuming reads the
    meta first), never a raw zipfile error and never numbers."""
    path = str(tmp_path / "checkpoint.npz")
    checkpoints.save(path, _state(), {"loss": np.zeros((3, 2), np.float32)}, 2, np.zeros(2))
    raw = open(path, "rb").read()
    target = jax.eval_shape(lambda: _state())
    flipped = bytearray(raw)
    flipped[raw.index(b"next_update")] ^= 0xFF  # inside an array's bytes (a zip header's date field goes unchecked)
    one_array = io.BytesIO()
    np.save(one_array, np.zeros(3))  # np.load returns its array, not an archive: a TypeError at `with` before
    for name, content in [("half.npz", raw[: len(raw) // 2]), ("empty.npz", b""), ("flipped.npz", bytes(flipped)),
                          ("one-array.npz", one_array.getvalue())]:
        bad = str(tmp_path / name)
        open(bad, "wb").write(content)
        for read in (lambda: checkpoints.read_meta(bad), lambda: checkpoints.load(bad, target)):
            with pytest.raises(ValueError, match=f"{name}: (unreadable or corrupt checkpoint|not a pgjax checkpoint)"):
                read()
    # Metrics that do not cover the updates the header counts: corrupt, not a shorter run.
    # (save refuses to write them: the file is edited here.)
    replace_array(path, "metrics/loss", np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match="do not cover its 2 updates"):
        checkpoints.load(path, target)


class _Tripwire:
    """Unpickling it creates the file at `path` (pickle calls `open(path, "w")`): code a stranger's file could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_pickled_objects_is_refused_never_unpickled(tmp_path):
    path = str(tmp_path / "checkpoint.npz")
    checkpoints.save(path, _state(), {"loss": np.zeros((3, 2), np.float32)}, 2, np.zeros(2))
    tripwire = str(tmp_path / "unpickled")
    replace_array(path, "metrics/loss", np.array([_Tripwire(tripwire)], dtype=object))
    for read in (lambda: checkpoints.read_meta(path), lambda: checkpoints.load(path, jax.eval_shape(_state))):
        with pytest.raises(ValueError, match=r"checkpoint\.npz: unreadable or corrupt checkpoint \(ValueError: Object"):
            read()
    assert not os.path.exists(tripwire)
