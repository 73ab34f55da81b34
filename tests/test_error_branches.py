"""Boundary errors that no other test reached: the suite's line coverage (thirty-seventh session, 97% of pgjax's
lines in process) listed these `raise` lines as never run. Each input is refused with a message that names what is
wrong; an f-string that broke in one of them would raise something else, unnoticed until a user hit it. Nothing
here compiles a program (custom environments are traced abstractly)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import spaces
from gymnax.environments.classic_control.cartpole import CartPole

from npz_files import replace_array
from pgjax import algos, checkpoints, envs, estimators, runs, tabular, trajectory
from pgjax.envs import spaces as pgjax_spaces
from pgjax.envs.tabular_env import TabularEnv
from pgjax.offline import dataset as ds
from pgjax.offline import gradient, importance, neural


def _dataset(n: int = 2, t: int = 3, obs_dim: int = 2) -> ds.Dataset:
    """A valid float-feature dataset of n episodes of t steps, two actions."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, t, obs_dim)).astype(np.float32)
    return ds.Dataset(observations=obs, actions=np.zeros((n, t), np.int32), rewards=np.ones((n, t), np.float32),
                      next_observations=rng.normal(size=(n, t, obs_dim)).astype(np.float32),
                      terminals=np.zeros((n, t), bool), mask=np.ones((n, t), bool),
                      behaviour_log_probs=np.full((n, t), np.log(0.5), np.float32), initial_observations=obs[:, 0])


def _with(name, index, value):
    array = np.array(getattr(_dataset(), name))
    array[index] = value
    return {name: array}


@pytest.mark.parametrize("change, match", [
    (dict(rewards=np.ones(3, np.float32)), r"Dataset\.rewards must have shape \[N, T\]; got \(3,\)"),
    (dict(rewards=np.ones((2, 0), np.float32)), r"at least one episode of one step; rewards have shape \(2, 0\)"),
    (dict(terminals=np.zeros((2, 2), bool)), r"Dataset\.terminals must have shape \[N, T\] = \(2, 3\); got \(2, 2\)"),
    (dict(next_observations=np.zeros((2, 3, 5), np.float32)),
     r"next_observations has observation shape \(5,\), observations have \(2,\)"),
    (dict(initial_observations=np.zeros((0, 2), np.float32)),
     r"initial_observations must have shape \[M >= 1, \*\(2,\)\]; got \(0, 2\)"),
    (_with("rewards", (1, 2), np.nan), "Dataset.rewards contains NaN or inf"),
    (_with("rewards", (0, 0), -np.inf), "Dataset.rewards contains NaN or inf"),
    (_with("mask", (1, 0), False), r"every episode needs a valid first step \(mask\[:, 0\] must be True\)"),
])
def test_datasets_refused_by_field(change, match):
    ds.validate_dataset(_dataset())  # the unchanged one is valid
    with pytest.raises(ds.DatasetError, match=match):
        ds.validate_dataset(_dataset()._replace(**change))


def test_tabular_and_concatenated_datasets():
    with pytest.raises(ds.DatasetError, match=r"Dataset\.observations must be integer indices \[N, T\] for tabular"):
        ds.validate_tabular_dataset(_dataset(), 4, 2)
    with pytest.raises(ValueError, match="concatenate: need at least one dataset"):
        ds.concatenate([])
    with pytest.raises(ValueError, match="one_hot_observations: Dataset.observations must hold int state indices"):
        neural.one_hot_observations(_dataset(), 4)


def test_dataset_edges_accepted_and_refused(tmp_path):
    """The smallest valid shapes pass (one episode of one step, one initial sample, a subset of 1 or of all N), the
    properties count, concatenation stacks episodes (and refuses two horizons), tabular data must be int [N, T] with
    initial states >= 0, and metadata holding a pickled object is refused unread."""
    for n, t in ((1, 1), (1, 3), (2, 1)):
        data = _dataset(n, t)
        ds.validate_dataset(data)
        assert (data.num_episodes, data.horizon, data.num_transitions) == (n, t, n * t)
    data = _dataset()
    ds.validate_dataset(data._replace(initial_observations=data.initial_observations[:1]))
    masked = data._replace(mask=np.array([[True, True, False], [True, False, False]]))
    assert masked.num_transitions == 3
    assert ds.subset(data, 1).num_episodes == 1 and ds.subset(data, 2).num_episodes == 2

    more = _dataset(3, 3)
    both = ds.concatenate([data, more])
    assert (both.num_episodes, both.horizon, both.initial_observations.shape) == (5, 3, (5, 2))
    np.testing.assert_array_equal(np.asarray(both.observations[2:]), np.asarray(more.observations))
    with pytest.raises(ds.DatasetError, match=r"concatenate: datasets must share a horizon T; got \[3, 4\]"):
        ds.concatenate([data, _dataset(2, 4)])

    tabular_data = data._replace(observations=np.zeros((2, 3), np.int32), next_observations=np.zeros((2, 3), np.int32),
                                 initial_observations=np.zeros(2, np.int32))
    ds.validate_tabular_dataset(tabular_data, 4, 2)
    for change, match in ((dict(observations=np.zeros((2, 3), np.float32)), r"observations must be integer indices"),
                          (dict(initial_observations=np.array([-1, 0], np.int32)), r"state indices in \[0, 4\)")):
        with pytest.raises(ds.DatasetError, match=match):
            ds.validate_tabular_dataset(tabular_data._replace(**change), 4, 2)

    path = ds.save_dataset(tmp_path / "data", data)
    replace_array(path, "meta_note", np.array([{"pickled": True}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        ds.read_dataset_metadata(path)


def test_neural_estimators_refuse_inputs_before_training():
    key, probs = jax.random.key(0), lambda obs: jnp.full((2,), 0.5)
    small = neural.NeuralDualDICEConfig(batch_size=4)
    with pytest.raises(ValueError, match=r"neural_dualdice: config must be a NeuralDualDICEConfig; got FQEConfig"):
        neural.neural_dualdice(key, _dataset(), probs, neural.FQEConfig())
    with pytest.raises(ValueError, match=r"fitted_q_evaluation: config must be an FQEConfig; got NeuralDualDICE"):
        neural.fitted_q_evaluation(key, _dataset(), probs, 0.9, small)
    with pytest.raises(ValueError, match=r"actions must be int discrete actions \[N, T\]; got float32 \(2, 3\)"):
        neural.neural_dualdice(key, _dataset()._replace(actions=np.zeros((2, 3), np.float32)), probs, small)
    with pytest.raises(ValueError, match=r"target_probs_fn must map \[obs_dim\] to probabilities \[A\]; got shape"):
        neural.neural_dualdice(key, _dataset(), lambda obs: jnp.full((1, 2), 0.5), small)
    with pytest.raises(ValueError, match=r"dataset actions fall outside \[0, 2\), the target policy's action count"):
        neural.neural_dualdice(key, _dataset()._replace(**_with("actions", (1, 1), 2)), probs, small)


def test_config_and_command_line_refusals():
    with pytest.raises(ValueError, match=r"PPOConfig\.hidden_sizes must be a non-empty tuple of positive ints"):
        algos.PPOConfig(hidden_sizes=(64, 0))
    with pytest.raises(ValueError, match=r"PPOConfig\.env_randomize names a field twice"):
        algos.PPOConfig(env_randomize=(("length", 0.5, 2.0), ("length", 0.3, 1.0)))
    with pytest.raises(ValueError, match=r"--env-randomize 'length=1:3': length is given twice"):
        runs.parse_env_ranges(["length=0.5:2", "length=1:3"])
    with pytest.raises(ValueError, match=r"--env-randomize 'length=a:b': expected FIELD=LOW:HIGH"):
        runs.parse_env_ranges(["length=a:b"])
    with pytest.raises(ValueError, match=r"--env-kwarg 'gravity=2': gravity is given twice"):
        runs.parse_env_kwargs(["gravity=1", "gravity=2"])
    assert runs.parse_env_kwargs(["name=abc", "n=[1, 2]"]) == {"name": "abc", "n": [1, 2]}  # not JSON: kept as text
    with pytest.raises(ValueError, match="Environment id must be a string; got int"):
        envs.make(123)
    with pytest.raises(ValueError, match=r"CartPole-v1: gravity must be one number, a scalar \(default 9\.8"):
        envs.make("CartPole-v1", gravity=np.array([9.8, 9.8]))


@pytest.mark.parametrize("num_episodes", [0, True, 2.5])
def test_evaluate_refuses_episode_counts_that_are_not_positive_ints(num_episodes):
    # True ran 1 episode and 2.5 ran 2, silently.
    with pytest.raises(ValueError, match=r"evaluate: num_episodes must be a positive int"):
        runs.evaluate(jax.random.key(0), algos.PPOConfig(), {}, None, num_episodes=num_episodes)


def test_replay_seeds_refuses_bad_keys_batches_and_device_counts():
    # Key data with words above 2**31 (read as int32 they overflowed), whatever the suite's key offset: drawn keys
    # had none at offset 71 (all four words fall below 2**31 one time in 16).
    keys = jax.random.wrap_key_data(np.array([[5, 2**31 + 3], [2**32 - 7, 11]], np.uint32))
    with pytest.raises(ValueError, match=r"replay_seeds: keys must be a 1-D batch of keys \[n\]; got shape \(1, 2\)"):
        runs.replay_seeds(None, keys[None], 2)
    legacy = np.asarray(jax.random.key_data(keys))  # uint32 [n, 2], as jax.random.PRNGKey made them
    for batch in (0, True, 2.5):  # 2.5 replayed as 2 lanes, True as 1
        for given in (keys, list(keys), legacy):  # keys in a list, or legacy key data, are keys [n] too
            with pytest.raises(ValueError, match=r"replay_seeds: batch \(the sweep's seeds per device\) must be a "):
                runs.replay_seeds(None, given, batch)
    as_lists = legacy.tolist()  # as JSON gives them back: ints, two above 2**31
    assert legacy.max() >= 2**31
    draw = lambda key: jax.random.uniform(key, (2,))  # noqa: E731
    expected = runs.replay_seeds(draw, keys, 2)  # each replay compiles: the typed keys' once
    np.testing.assert_array_equal(runs.replay_seeds(draw, as_lists, 2), expected)
    np.testing.assert_array_equal(runs.replay_seeds(draw, legacy.astype(np.int64), 2), expected)
    edges = np.array([[0, 2**32 - 1]], np.uint32)  # uint32's own range is accepted
    np.testing.assert_array_equal(runs.replay_seeds(draw, edges.tolist(), 2), runs.replay_seeds(draw, edges, 2))
    for bad in ([[-1, 0]], [[2**32, 0]]):
        with pytest.raises(ValueError, match=r"legacy key data must be uint32 values in \[0, 2\*\*32\); got values in"):
            runs.replay_seeds(draw, bad, 2)
    for not_keys in ([1, 2], np.zeros(2, np.float32), jnp.zeros((2, 3), jnp.uint32)):  # seeds are not keys
        with pytest.raises(ValueError, match=r"keys must be jax.random keys \[n\] \(e.g. runs.seed_keys\(seed, "
                                             r"indices\)\) or legacy uint32 key data \[n, 2\]; got dtype"):
            runs.replay_seeds(draw, not_keys, 2)
    with pytest.raises(ValueError, match=r"replay_seeds: num_devices \(the sweep's\) must lie in \[1, "):
        runs.replay_seeds(None, keys, 2, num_devices=len(jax.devices()) + 1)
    with pytest.raises(ValueError, match=r"replay_seeds: num_devices \(the sweep's\) must be a positive int"):
        runs.replay_seeds(None, keys, 2, num_devices=0)


def test_run_files_that_are_not_pgjax_runs(tmp_path):
    other = tmp_path / "metrics.csv"
    other.write_text("step,reward\n1,2.0\n")
    with pytest.raises(ValueError, match=r"not a pgjax metrics\.csv \(needs columns"):
        runs.read_metrics_csv(str(other))


# --- custom environments: the interface check, one defect at a time ------------------------------------------


class _NoStep(CartPole):
    step = None


class _DictActions(CartPole):
    def action_space(self, params=None):
        return spaces.Dict({"push": spaces.Discrete(2)})


class _ResetFails(CartPole):
    def reset(self, key, params=None):
        raise RuntimeError("no start state")


class _ResetThree(CartPole):
    def reset(self, key, params=None):
        obs, state = super().reset(key, params)
        return obs, state, {}


class _StepFails(CartPole):
    def step(self, key, state, action, params=None):
        raise RuntimeError("no dynamics")


class _DictObservation(CartPole):
    def reset(self, key, params=None):
        obs, state = super().reset(key, params)
        return {"x": obs}, state


@pytest.mark.parametrize("cls, match", [
    (_NoStep, r"has no step method; subclass gymnax"),
    (_DictActions, r"action_space must be a gymnax Discrete or Box; got Dict"),
    (_ResetFails, r"reset\(key, params\) failed: RuntimeError: no start state"),
    (_ResetThree, r"reset\(key, params\) must return \(obs, state\); got "),
    (_StepFails, r"step\(key, state, action, params\) failed on a sampled action: RuntimeError: no dynamics"),
    (_DictObservation, r"reset's observation must be one numeric \(or boolean\) array; got "),
])
def test_custom_environments_refused_by_the_part_they_break(cls, match):
    envs.registry.check_interface("my-env", CartPole(), CartPole().default_params)  # the unbroken one passes
    with pytest.raises(ValueError, match=rf"environment 'my-env' \({cls.__name__}\): " + match):
        envs.registry.check_interface("my-env", cls(), cls().default_params)


class _BooleanObservation(CartPole):
    def reset(self, key, params=None):
        obs, state = super().reset(key, params)
        return obs > 0, state

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = super().step(key, state, action, params)
        return obs > 0, state, reward, terminated, truncated, info


def test_param_values_fields_and_observations_at_their_edges():
    """The edges the registry's checks draw (no test reached them, and `<` for `<=` at each passed): an int32
    field takes exactly [-2**31, 2**31 - 1], a float field up to its dtype's largest finite value, the step limit
    1 and not 0; a bool params field is not a numeric one; a boolean observation is an array the interface takes."""
    assert (envs.registry.INT32_MIN, envs.registry.INT32_MAX) == (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    check = envs.check_param_value
    for value in (np.iinfo(np.int32).min, np.iinfo(np.int32).max, 1):
        check("CartPole-v1", "max_steps_in_episode" if value == 1 else "seed", 500, value)
    for value in (np.iinfo(np.int32).min - 1, np.iinfo(np.int32).max + 1):
        with pytest.raises(ValueError, match=re.escape(f"CartPole-v1: seed is an int32 field; got {value:g}, beyond")):
            check("CartPole-v1", "seed", 500, value)
    with pytest.raises(ValueError, match=r"max_steps_in_episode \(the episode's step limit\) must be >= 1; got 0"):
        check("CartPole-v1", "max_steps_in_episode", 500, 0)
    largest = float(np.finfo(jnp.result_type(float)).max)
    check("CartPole-v1", "gravity", 9.8, -largest)
    check("CartPole-v1", "gravity", 9.8, largest)
    with pytest.raises(ValueError, match=r"gravity = 3.5e\+38 overflows float32"):
        check("CartPole-v1", "gravity", 9.8, 3.5e38)

    @struct.dataclass
    class Params:
        gravity: float = 9.8
        max_steps_in_episode: int = 200
        sparse: bool = True
        scale: jax.Array = struct.field(default_factory=lambda: np.ones(2))

    assert envs.numeric_fields(Params()) == {"gravity": 9.8, "max_steps_in_episode": 200}
    envs.registry.check_interface("my-env", _BooleanObservation(), CartPole().default_params)
    with pytest.raises(ValueError, match=r"make\('tabular:random'\): bad keyword arguments \['colour'\] .*"
                                         r"Accepted: max_steps_in_episode, num_states, num_actions, seed\.$"):
        envs.make("tabular:random", colour="red")
    with pytest.raises(ValueError, match=r"'MinAtar'\. Did you mean '[^']+', '[^']+', '[^']+'\? Valid"):
        envs.make("MinAtar")  # four ids end in -MinAtar: the three closest are named


# --- tabular pieces, estimators and files ----------------------------------------------------------------------


def test_tabular_constructors_and_estimators_refuse_by_name():
    with pytest.raises(ValueError, match=r"MDP\.transition must have at least one state and one action"):
        tabular.MDP(np.zeros((0, 2, 0)), np.zeros((0, 2)), np.zeros(0), 0.9)
    with pytest.raises(ValueError, match=r"chain_mdp: slip must lie in \[0, 1\); got 1\.0"):
        tabular.chain_mdp(4, slip=1.0)
    with pytest.raises(ValueError, match=r"gridworld_mdp: need at least 2 cells; got height=1, width=1"):
        tabular.gridworld_mdp(1, 1)
    with pytest.raises(ValueError, match=r"TabularEnv: mdp must be a pgjax\.tabular\.MDP; got str"):
        TabularEnv("chain")
    with pytest.raises(ValueError, match=r"pi must be a policy table \[S, A\]; got shape \(3,\)"):
        tabular.evaluation.check_policy_table(np.full(3, 1 / 3))
    with pytest.raises(ValueError, match=r"batch_means: batch_size 4 exceeds the 3 samples"):
        estimators.batch_means(np.zeros((3, 2)), 4)
    batched = trajectory.Trajectory(*(np.zeros((2, 5), np.int32) for _ in range(4)))
    with pytest.raises(ValueError, match=r"log_density: expects one trajectory with fields \[T\]; got \(2, 5\)"):
        trajectory.log_density(batched, tabular.chain_mdp(4), np.full((4, 2), 0.5))
    # A misspelt method is named with the ones there are, before anything else is looked at.
    with pytest.raises(ValueError, match=r"importance_value: method must be one of .*got 'pdsi'"):
        importance.importance_value(None, None, None, None, 0.9, method="pdsi")
    with pytest.raises(ValueError, match=r"importance_policy_gradient: method must be one of .*got 'pdsi'"):
        gradient.importance_policy_gradient(None, None, None, 0.9, method="pdsi")
    with pytest.raises(ValueError, match=r"offline_policy_improvement: method must be one of .*got 'pdsi'"):
        gradient.offline_policy_improvement(None, None, None, 0.9, None, 2, method="pdsi")


def test_unsupported_action_spaces_and_checkpoint_formats(tmp_path, monkeypatch):
    for query in (pgjax_spaces.is_discrete, pgjax_spaces.action_dim):
        with pytest.raises(ValueError, match=r"CartPole-v1: unsupported action space .*need Discrete or Box"):
            query(_DictActions())
    path = str(tmp_path / "run.ckpt")
    monkeypatch.setattr(checkpoints, "FORMAT", 99)  # a checkpoint a later pgjax wrote
    checkpoints.save(path, {"w": np.zeros(2)}, {}, 1, np.zeros(1))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"run\.ckpt: checkpoint format 99; this pgjax reads format 1"):
        checkpoints.read_meta(path)
