"""Your own environment through `pgjax.envs.register` (experiments/custom_env.py's Corridor-v0): the id works
wherever a gymnax id does (configs, in-run evaluation, runs.evaluate, save/load, train.py), PPO finds the
corridor's known optimum, and environments that do not follow gymnax 1.x are refused with a message naming what
is wrong, before anything compiles."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import algos, envs, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "experiments", "custom_env.py")
envs.import_env_module(MODULE)  # registers Corridor-v0
import custom_env  # noqa: E402  (import_env_module loaded it under its file's name)


def test_registered_id_builds_like_a_gymnax_id():
    assert "Corridor-v0" in envs.env_ids()
    env, params = envs.make("Corridor-v0", length=7, step_cost=0.25)  # a constructor keyword, a params field
    assert env.length == 7 and params.step_cost == 0.25 and params.max_steps_in_episode == 50
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, np.eye(7)[0])
    _, _, reward, terminated, truncated, _ = env.step(jax.random.key(1), state, 0, params)  # left: a wall
    assert float(reward) == -0.25 and not bool(terminated) and not bool(truncated)
    with pytest.raises(ValueError, match=r"make\('Corridor-v0'\): bad keyword arguments \['width'\]"):
        envs.make("Corridor-v0", width=3)
    with pytest.raises(ValueError, match=r"'Corridor-v0' is registered already .* overwrite=True"):
        envs.register("Corridor-v0", lambda: custom_env.Corridor())
    with pytest.raises(ValueError, match=r"not a gymnax id"):
        envs.register("CartPole-v1", custom_env.Corridor)
    with pytest.raises(ValueError, match=r"make_fn must be callable"):
        envs.register("Another-v0", custom_env.Corridor())
    with pytest.raises(ValueError, match=r"pgjax.envs.register adds your own"):
        envs.make("Coridor-v0")
    assert envs.registered_source("Corridor-v0") == MODULE
    assert envs.registered_source("CartPole-v1") is None
    for length in (1, 3.0):
        with pytest.raises(ValueError, match=rf"Corridor: length must be an int >= 2; got {length!r}"):
            custom_env.Corridor(length)


def test_walking_into_the_wall_is_cut_at_the_step_limit():
    """Steps 1-49 against the wall run on; step 50 (max_steps_in_episode) is truncated, not terminated, and the
    environment starts again in cell 0."""
    env, params = envs.make("Corridor-v0", length=4)

    def left(state, key):
        _, state, reward, terminated, truncated, _ = env.step(key, state, 0, params)
        return state, (reward, terminated, truncated)

    _, state = env.reset(jax.random.key(0), params)
    _, (reward, terminated, truncated) = jax.lax.scan(left, state, jax.random.split(jax.random.key(1), 51))
    np.testing.assert_allclose(reward, -0.1)
    assert not np.asarray(terminated).any()
    assert np.flatnonzero(np.asarray(truncated)).tolist() == [49]  # the 50th step; the 51st is a new episode's first


@pytest.fixture(scope="module")
def trained():
    """PPO on a 5-cell corridor, 2 seeds, 64 updates, evaluated (greedy, 4 episodes) after the last."""
    config = algos.PPOConfig(env_id="Corridor-v0", env_kwargs={"length": 5}, total_timesteps=8192, num_envs=4,
                             num_steps=32, eval_every=64, eval_episodes=4)
    return config, jax.jit(jax.vmap(algos.ppo.make_train(config)))(jax.random.split(jax.random.key(0), 2))


def test_ppo_learns_the_corridor_and_evaluates_on_it(trained, tmp_path):
    """The optimum is 1 - 3 x 0.1 = 0.7 (four steps right, the last pays 1); CartPole, which the in-run
    evaluation built when a custom environment was passed behind a registered id, returns >= 8."""
    config, out = trained
    returns = np.asarray(out.metrics["episode_return"])
    assert np.nanmean(returns[:, :4]) < 0.3  # random walking costs
    np.testing.assert_allclose(np.asarray(out.metrics["eval_return"])[:, -1], 0.7, rtol=1e-5)
    params = jax.tree_util.tree_map(lambda x: x[0], out.agent.params)
    key = jax.random.key(5)
    np.testing.assert_allclose(runs.evaluate(key, config, params, None, 4), 0.7, rtol=1e-5)

    runs.save_run(str(tmp_path), "ppo", config, out, seed=0)
    with open(tmp_path / "config.json") as f:
        meta = json.load(f)
    assert meta["env_source"] == MODULE and meta["config"]["env_id"] == "Corridor-v0"
    algo, loaded, loaded_params, _ = runs.load_run(str(tmp_path))
    assert loaded == config
    # A reader without the registration is told which module to import.
    meta["config"]["env_id"] = "Unregistered-v0"
    with open(tmp_path / "config.json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match=r"registered by .*custom_env.py: import that module first"):
        runs.load_run(str(tmp_path))


class _FiveValues(custom_env.Corridor):
    def step(self, key, state, action, params=None):  # gymnax 0.0.x's (obs, state, reward, done, info)
        obs, state, reward, terminated, _, info = super().step(key, state, action, params)
        return obs, state, reward, terminated, info


class _WrongSpace(custom_env.Corridor):
    def observation_space(self, params):
        return custom_env.spaces.Box(0.0, 1.0, (3,), jnp.float32)


class _VectorReward(custom_env.Corridor):
    def step_env(self, key, state, action, params):
        obs, state, reward, done, info = super().step_env(key, state, action, params)
        return obs, state, reward[None], done, info


class _NaNObservation(custom_env.Corridor):
    def get_obs(self, state, params=None, key=None):
        return super().get_obs(state) / (state.position > 0)  # 0 / 0 at the start


@pytest.mark.parametrize("cls, message", [
    (_FiveValues, r"step must return gymnax 1.x's \(obs, state, reward, terminated, truncated, info\); got a 5-tuple"),
    (_WrongSpace, r"reset's observation has shape \(5,\), but observation_space says \(3,\)"),
    (_VectorReward, r"step's reward must be a scalar \(shape \(\)\); got shape \(1,\)"),
    (_NaNObservation, r"the environment's reset gives a non-finite observation or reward"),
    (lambda: (custom_env.Corridor(), {"step_cost": 0.1}), r"its params must be a dataclass"),
])
def test_environments_off_the_interface_are_refused(cls, message):
    env_id = f"Bad{hash(message) % 10_000}-v0"
    envs.register(env_id, cls)
    with pytest.raises(ValueError, match=message):
        envs.make(env_id)
    with pytest.raises(ValueError, match=message):  # and so before a config's program compiles
        algos.common.make_env(algos.PPOConfig(env_id=env_id))


def test_train_cli_imports_the_module(monkeypatch):
    """train.py --env-module registers the id before --env is checked (parsing only: nothing compiles)."""
    import sys

    monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))
    import train

    args, config = train.parse_args(["--env-module", MODULE, "--env", "Corridor-v0", "--env-kwarg", "length=6",
                                     "--total-timesteps", "4096"])
    assert config.env_id == "Corridor-v0" and dict(config.env_kwargs) == {"length": 6}
    assert args.env_module == [MODULE]
    with pytest.raises(SystemExit, match=r"--env-module 'no_such_module_pgjax' could not be imported"):
        train.parse_args(["--env-module", "no_such_module_pgjax", "--env", "Corridor-v0"])
    del sys.modules["train"]


def test_evaluation_follows_an_id_registered_again(trained):
    """runs.evaluate caches one compiled program per config: registering the id again (overwrite=True) must build
    the new environment, not replay the old one's program (without the registration counter in the cache key,
    that passed every test). A corridor at step cost 0.2 has optimum 1 - 3 x 0.2 = 0.4; the original's is 0.7."""
    config, out = trained
    params = jax.tree_util.tree_map(lambda x: x[0], out.agent.params)
    key = jax.random.key(5)
    np.testing.assert_allclose(runs.evaluate(key, config, params, None, 4), 0.7, rtol=1e-5)

    def costly(length=5):
        env = custom_env.Corridor(length)
        return env, env.default_params.replace(step_cost=0.2)

    try:
        envs.register("Corridor-v0", costly, overwrite=True)
        np.testing.assert_allclose(runs.evaluate(key, config, params, None, 4), 0.4, rtol=1e-5)
    finally:
        envs.register("Corridor-v0", custom_env.Corridor, overwrite=True)
    np.testing.assert_allclose(runs.evaluate(key, config, params, None, 4), 0.7, rtol=1e-5)


def test_every_constructor_keyword_set_is_checked_on_its_first_make():
    """The finite-steps check runs once per id and constructor keywords: a make whose keywords give NaN rewards
    after one that passed must still be refused (a check cached by id alone let it through, and no test noticed)."""

    def corridor(length=5, broken=False):
        env = custom_env.Corridor(length)
        return env, env.default_params.replace(step_cost=float("nan") if broken else 0.1)

    envs.register("CheckedCorridor-v0", corridor)
    envs.make("CheckedCorridor-v0")
    with pytest.raises(ValueError, match="non-finite observation or reward"):
        envs.make("CheckedCorridor-v0", broken=True)


class _CorridorMaker:
    """A callable instance as make_fn: its source is its class's file."""

    def __call__(self, **kwargs):
        return custom_env.Corridor(**kwargs)


def test_registration_bookkeeping_sources_and_modules_imported_once(tmp_path):
    """What `register` and `import_env_module` keep: one count per registration, the defining file (a callable
    instance's class's; none for code typed into a notebook), each id's checks dropped when it is registered again,
    and a module file imported once by its name, while another file of the same name is imported too."""
    count = envs.registrations()
    envs.register("MadeByInstance-v0", _CorridorMaker())
    assert envs.registrations() == count + 1
    assert envs.registered_source("MadeByInstance-v0") == os.path.abspath(__file__)
    typed = {}
    exec(compile("def make(**kwargs):\n    return Corridor(**kwargs)\n", "<notebook cell>", "exec"),
         {"Corridor": custom_env.Corridor}, typed)
    envs.register("TypedInANotebook-v0", typed["make"])
    assert envs.registered_source("TypedInANotebook-v0") is None

    # Registered again, an id is checked again: its first-steps program and interface check were the old one's.
    envs.register("Replaced-v0", custom_env.Corridor)
    envs.make("Replaced-v0")
    envs.register("Replaced-v0", _NaNObservation, overwrite=True)
    with pytest.raises(ValueError, match=r"Replaced-v0: the environment's reset gives a non-finite observation"):
        envs.make("Replaced-v0")

    import sys

    paths = []
    for folder, env_id in (("one", "TwinOne-v0"), ("two", "TwinTwo-v0")):
        os.makedirs(tmp_path / folder)
        paths.append(str(tmp_path / folder / "pgjax_twin_envs.py"))
        with open(paths[-1], "w") as f:
            f.write(f"import custom_env\nfrom pgjax import envs\nenvs.register({env_id!r}, custom_env.Corridor)\n")
    try:
        envs.import_env_module(paths[0])
        count = envs.registrations()
        envs.import_env_module(paths[0])  # imported already: not run again
        assert envs.registrations() == count and sys.modules["pgjax_twin_envs"].__file__ == paths[0]
        envs.import_env_module(paths[1])  # the same name, another file: imported
        assert envs.registrations() == count + 1 and sys.modules["pgjax_twin_envs"].__file__ == paths[1]
        assert {"TwinOne-v0", "TwinTwo-v0"} <= set(envs.env_ids())
    finally:
        sys.modules.pop("pgjax_twin_envs", None)
