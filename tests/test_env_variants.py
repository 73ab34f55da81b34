"""Environment variants: params fields overridden per run (`env_kwargs`, `--env-kwarg`) and per lane of a vmapped run
("env.<field>" hyperparameters, `--grid env.FIELD=...`), so many variants of an environment train in one compile."""

import functools
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evaluate as evaluate_cli
import train as train_cli

from pgjax import algos, envs, runs, tables
from pgjax.algos import common


def _cartpole_step(state, action, p):
    """One Euler step of the classic cart-pole equations (Barto, Sutton & Anderson 1983, as in gym), in NumPy,
    from the masses and the pole's half-length alone: the reference for overridden params."""
    x, x_dot, theta, theta_dot = state
    force = p["force_mag"] if action == 1 else -p["force_mag"]
    total_mass = p["masscart"] + p["masspole"]
    polemass_length = p["masspole"] * p["length"]
    cos, sin = np.cos(theta), np.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
    theta_acc = (p["gravity"] * sin - cos * temp) / (p["length"] * (4.0 / 3.0 - p["masspole"] * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    tau = p["tau"]
    return np.array([x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot, theta_dot + tau * theta_acc])


def test_overriding_cartpole_masses_and_length_changes_its_dynamics_consistently():
    """gymnax's CartPole reads total_mass and polemass_length, fields of their own: overriding masspole or length
    must update them, or the dynamics stay those of the default pole."""
    changes = {"masscart": 2.0, "masspole": 0.5, "length": 1.0}
    env, params = envs.make("CartPole-v1", **changes)
    assert params.total_mass == pytest.approx(2.5) and params.polemass_length == pytest.approx(0.5)
    _, default = envs.make("CartPole-v1")
    reference = {f: getattr(default, f) for f in ("force_mag", "gravity", "tau")} | changes
    start = np.array([0.01, -0.2, 0.05, 0.3], np.float32)
    state = env.reset_env(jax.random.key(0), params)[1].replace(
        x=start[0], x_dot=start[1], theta=start[2], theta_dot=start[3])
    obs = np.asarray(env.step_env(jax.random.key(1), state, 1, params)[0], np.float64)
    np.testing.assert_allclose(obs, _cartpole_step(start.astype(np.float64), 1, reference), rtol=1e-5, atol=1e-7)
    default_obs = np.asarray(env.step_env(jax.random.key(1), state, 1, default)[0])
    assert np.abs(default_obs - obs).max() > 1e-3  # the override is felt
    # A derived field given explicitly is kept; a name that is not a field fails, listing the fields.
    assert envs.make("CartPole-v1", masspole=0.5, polemass_length=3.0)[1].polemass_length == 3.0
    with pytest.raises(ValueError, match="'lenght'.*the fields are .*length"):
        envs.override_params("CartPole-v1", params, {"lenght": 1.0})


def test_lane_env_params_checks_names_and_shapes_before_compiling():
    _, params = envs.make("CartPole-v1")
    lane = common.lane_env_params("CartPole-v1", params, {"learning_rate": 1.0, "env.max_steps_in_episode": 20.0,
                                                         "env.masspole": 0.3})
    assert lane.max_steps_in_episode.dtype == jnp.int32 and int(lane.max_steps_in_episode) == 20
    assert float(lane.total_mass) == pytest.approx(1.3) and float(lane.polemass_length) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="no field 'lenght'"):
        common.lane_env_params("CartPole-v1", params, {"env.lenght": 1.0})
    with pytest.raises(ValueError, match="leaf shapes"):
        common.lane_env_params("CartPole-v1", params, {"env.length": jnp.ones(3)})
    _, tabular = envs.make("tabular:random", num_states=4, num_actions=2)
    _, other = envs.make("tabular:random", num_states=5, num_actions=2)
    with pytest.raises(ValueError, match="'env.mdp'.*leaf shapes"):
        common.lane_env_params("tabular:random", tabular, {"env.mdp": other.mdp})
    # Inside train: the error comes while tracing, before anything compiles.
    config = algos.A2CConfig(total_timesteps=512, num_envs=4, num_steps=64)
    with pytest.raises(ValueError, match="no field 'lenght'"):
        jax.eval_shape(algos.a2c.make_train(config), jax.random.key(0), {**config.hyperparams(), "env.lenght": 1.0})
    with pytest.raises(ValueError, match="neither vmappable hyperparameters.*env.length"):
        runs.grid_lanes(config, [{"env.lenght": 1.0}], jax.random.split(jax.random.key(0), 2))
    # A cell's values pass the config's validation: a floor for a rate that is not annealed would be ignored.
    with pytest.raises(ValueError, match="cell final_lr_fraction=0.1: .*only applies with anneal_lr=True"):
        runs.grid_lanes(config.replace(anneal_lr=False), [{"final_lr_fraction": 0.0}, {"final_lr_fraction": 0.1}],
                        jax.random.split(jax.random.key(0), 2))


def _metrics(output, lanes):
    return {k: np.asarray(v)[lanes] for k, v in output.metrics.items()}


def test_each_grid_cell_trains_on_its_own_variant():
    """Two pole lengths and a 15-step limit as env.* grid cells, one compile: each cell's lanes equal a run whose
    config holds that variant in env_kwargs (the cell's run-directory config), and the step limit holds in training
    and in the in-run evaluation."""
    config = algos.A2CConfig(total_timesteps=3 * 4 * 32, num_envs=4, num_steps=32, eval_every=3, eval_episodes=2)
    cells = runs.grid_cells({"env.length": (0.25, 1.0), "env.max_steps_in_episode": (15,)})
    keys = jax.random.split(jax.random.key(0), 2)
    lane_keys, hparams = runs.grid_lanes(config, cells, keys)
    grid = jax.jit(jax.vmap(algos.a2c.make_train(config)))(lane_keys, hparams)
    for index, cell in enumerate(cells):
        variant = runs.grid_cell_config(config, cell)
        assert dict(variant.env_kwargs) == {"length": cell["env.length"], "max_steps_in_episode": 15}
        alone = jax.jit(jax.vmap(algos.a2c.make_train(variant)))(jnp.concatenate([keys, keys]))  # as many lanes
        got, want = _metrics(grid, slice(2 * index, 2 * index + 2)), _metrics(alone, slice(0, 2))
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6, err_msg=name)
        lengths = got["episode_length"][~np.isnan(got["episode_length"])]
        assert lengths.size and lengths.max() <= 15.0
        assert np.all(got["eval_return"][:, -1] <= 15.0)
    assert not np.allclose(grid.metrics["loss"][:2], grid.metrics["loss"][2:])  # the pole length mattered


def test_a_batch_of_tabular_mdps_trains_in_one_call():
    """hparams["env.mdp"]: a batch of random MDPs, one per lane, equals each MDP's own run."""
    config = algos.REINFORCEConfig(env_id="tabular:random", env_kwargs={"num_states": 4, "num_actions": 2},
                                   total_timesteps=3 * 2 * 16, num_envs=2, num_steps=16, discount=0.9)
    variants = [config.replace(env_kwargs={**dict(config.env_kwargs), "seed": seed}) for seed in (1, 2, 3)]
    mdps = [envs.make(v.env_id, **dict(v.env_kwargs))[1].mdp for v in variants]
    hparams = {k: jnp.stack([v] * 3) for k, v in config.hyperparams().items()}
    hparams["env.mdp"] = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *mdps)
    keys = jnp.stack([jax.random.key(7)] * 3)
    batch = jax.jit(jax.vmap(algos.reinforce.make_train(config)))(keys, hparams)
    for lane, variant in enumerate(variants):
        alone = jax.jit(jax.vmap(algos.reinforce.make_train(variant)))(keys)
        for name, value in _metrics(alone, 0).items():
            np.testing.assert_allclose(_metrics(batch, lane)[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
    returns = np.asarray(batch.metrics["episode_return"])
    assert not np.allclose(returns[0], returns[1])  # other MDPs, other returns
    # A pytree per lane passes through a replay's lane selection and a checkpoint's record of the run.
    train = algos.reinforce.make_train(config)
    lanes = jnp.array([2, 0])
    replay = runs.replay_seeds(train, keys[lanes], 3, jax.tree_util.tree_map(lambda x: x[lanes], hparams))
    for name, value in replay.metrics.items():
        np.testing.assert_allclose(np.asarray(value), np.asarray(batch.metrics[name])[np.asarray(lanes)],
                                   rtol=2e-5, atol=1e-6, err_msg=name)
    identity = runs._run_identity(train, keys, hparams)
    assert len(identity["hparams"]["env.mdp"]) == 4  # transition, reward, initial, discount: [3, ...] each
    assert identity["hparams"]["learning_rate"] == [pytest.approx(config.learning_rate)] * 3


GRID_FLAGS = ["--algo", "a2c", "--env", "CartPole-v1", "--num-seeds", "2", "--total-timesteps", "1024",
              "--num-steps", "32", "--eval-every", "4", "--eval-episodes", "2", "--no-progress",
              "--grid", "env.max_steps_in_episode=12,500", "--env-kwarg", "gravity=12"]


@pytest.fixture(scope="module")
def env_grid_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("env-grid") / "a2c")
    assert train_cli.main([*GRID_FLAGS, "--out", out]) == 0
    return out


def test_cli_env_grid_writes_each_cell_with_its_variant(env_grid_dir, capsys):
    rows = tables.read_csv(os.path.join(env_grid_dir, "metrics.csv"))
    assert list(rows[0])[:2] == ["cell", "env.max_steps_in_episode"]
    short = [float(r["episode_length"]) for r in rows if r["cell"] == "0" and r["episode_length"] not in ("", "nan")]
    assert short and max(short) <= 12.0
    long = [float(r["episode_length"]) for r in rows if r["cell"] == "1" and r["episode_length"] not in ("", "nan")]
    assert max(long) > 12.0
    with open(os.path.join(env_grid_dir, "cell-0", "config.json")) as f:
        env_kwargs = json.load(f)["config"]["env_kwargs"]
    assert env_kwargs == {"gravity": 12, "max_steps_in_episode": 12}
    # An int field's grid values stay ints (JSON's 12.0 == 12 in Python: the type and the CSV's text tell them apart).
    assert type(env_kwargs["max_steps_in_episode"]) is int
    assert {r["env.max_steps_in_episode"] for r in rows} == {"12", "500"}
    _, config, _, _ = runs.load_run(os.path.join(env_grid_dir, "cell-1"))
    assert dict(config.env_kwargs) == {"gravity": 12, "max_steps_in_episode": 500}

    assert evaluate_cli.main([env_grid_dir, "--episodes", "2"]) == 0
    evaluated = tables.read_csv(os.path.join(env_grid_dir, "evaluation.csv"))
    assert all(float(r["episode_return"]) <= 12 for r in evaluated if r["cell"] == "0")
    # Another variant of a cell's environment: the variant's episodes, in a CSV of its own.
    assert evaluate_cli.main([os.path.join(env_grid_dir, "cell-1"), "--episodes", "2",
                              "--env-kwarg", "max_steps_in_episode=7"]) == 0
    assert "(max_steps_in_episode=7)" in capsys.readouterr().out
    variant = tables.read_csv(os.path.join(env_grid_dir, "cell-1", "evaluation_max_steps_in_episode=7.csv"))
    assert [float(r["episode_return"]) for r in variant] == [7.0] * 4  # 2 seeds x 2 episodes, all cut at 7


def test_cli_env_sweep_evaluates_every_value_of_a_keyword(env_grid_dir, capsys):
    """evaluate.py --env-sweep on a 2-cell grid: every cell at every step limit, the per-value summary equal to the
    episodes' CSV (differences from the best value paired by seed: the same policies and keys at every value), and
    a plot."""
    assert evaluate_cli.main([env_grid_dir, "--episodes", "2", "--env-sweep", "max_steps_in_episode=5,9,200"]) == 0
    episodes = tables.read_csv(os.path.join(env_grid_dir, "evaluation_sweep_max_steps_in_episode.csv"))
    assert len(episodes) == 3 * 2 * 2 * 2  # values x cells x seeds x episodes
    assert [float(r["episode_return"]) for r in episodes if r["max_steps_in_episode"] == "5"] == [5.0] * 8
    assert all(float(r["episode_return"]) <= int(r["max_steps_in_episode"]) for r in episodes)
    summary = tables.read_csv(os.path.join(env_grid_dir, "robustness_max_steps_in_episode.csv"))
    assert [(r["cell"], r["max_steps_in_episode"]) for r in summary] == [
        (cell, value) for cell in ("0", "1") for value in ("5", "9", "200")]
    means = {(row["cell"], row["max_steps_in_episode"]): np.array(
        [np.mean([float(r["episode_return"]) for r in episodes if r["cell"] == row["cell"]
                  and r["max_steps_in_episode"] == row["max_steps_in_episode"] and r["seed"] == seed])
         for seed in ("0", "1")]) for row in summary}
    for row in summary:
        own = means[row["cell"], row["max_steps_in_episode"]]
        assert float(row["median"]) == pytest.approx(np.median(own))
        assert float(row["worst"]) == pytest.approx(own.min())
        best = max((m for (cell, _), m in means.items() if cell == row["cell"]), key=np.mean)
        half = float(runs.t_quantile(1)) * (own - best).std(ddof=1) / np.sqrt(2)
        assert float(row["vs_best_ci95"]) == pytest.approx(half, abs=1e-9)  # (test_cli.py: where pairing matters)
    assert os.path.getsize(os.path.join(env_grid_dir, "robustness_max_steps_in_episode.png")) > 0
    assert "cell 1 (env.max_steps_in_episode=500): max_steps_in_episode=5: median 5.0" in capsys.readouterr().out
    # Seed 1 of both cells again, as lanes of the grid's per-device program: its rows, bit for bit.
    replay = os.path.join(env_grid_dir, "..", "replay")
    assert train_cli.main([*GRID_FLAGS, "--seed-indices", "1", "--out", replay]) == 0

    def rows(run, seed=None):
        return [{k: v for k, v in r.items() if k != "wall_time"}
                for r in tables.read_csv(os.path.join(run, "metrics.csv"))
                if seed is None or r["seed"] == seed]

    assert rows(replay) and rows(replay) == rows(env_grid_dir, "1")
    bad = {("--env-sweep", "length"): "expected KEY=V1,V2", ("--env-sweep", "length=1,1.0"): "repeated",
           ("--env-sweep", "lenght=1,2"): "bad keyword arguments",
           ("--env-sweep", "length=1,2", "--env-kwarg", "length=3"): "give it once"}
    for flags, message in bad.items():
        with pytest.raises(SystemExit):
            evaluate_cli.main([env_grid_dir, *flags])
        assert message in capsys.readouterr().err, flags


def test_cli_env_flags_fail_clearly(capsys):
    bad = {
        ("--grid", "env.lenght=1,2"): "environment's numeric params fields",
        ("--grid", "env.max_steps_in_episode=10.5"): "int field",
        ("--grid", "env.max_steps_in_episode=0,10"): "must be >= 1",
        ("--grid", "env.length=nan"): "finite",
        ("--env-kwarg", "lenght=1"): "bad keyword arguments",
        ("--env-kwarg", "length"): "expected KEY=VALUE",
        ("--env-kwarg", "length=1", "--grid", "env.length=1,2"): "set twice",
        ("--env-randomize", "length=0.5:2", "--grid", "env.length=1,2"): "set twice",
        ("--env-randomize", "length=0.5"): "expected FIELD=LOW:HIGH",
        ("--env-randomize", "lenght=0.5:2"): "cannot randomise 'lenght'",
        ("--env-randomize", "length=2:0.5"): "low 2.0 > high 0.5",
    }
    for flags, message in bad.items():
        with pytest.raises(SystemExit):
            train_cli.parse_args(["--algo", "ppo", *flags])
        assert message in capsys.readouterr().err, flags
    args, config = train_cli.parse_args(["--env-kwarg", "gravity=12", "--env-kwarg", "length=0.25",
                                         "--env-randomize", "masspole=0.05:0.5"])
    assert dict(config.env_kwargs) == {"gravity": 12, "length": 0.25}
    assert config.env_randomize == (("masspole", 0.05, 0.5),)


# ---------------------------------------------------------------------------
# Domain randomisation: params drawn at every reset.
# ---------------------------------------------------------------------------


def test_randomized_params_draw_each_episode_from_its_range():
    """64 CartPoles under random actions for 300 steps, pole half-length ~ U[0.25, 2] and step limit ~ U{20..39}:
    the params hold within an episode and are redrawn at its reset, the draws are uniform (Kolmogorov-Smirnov),
    the derived fields follow, truncation uses the episode's own limit, and drawing the resets ahead
    (`PredrawnResets`) gives the same numbers as gymnax's step."""
    from scipy import stats

    base, params = envs.make("CartPole-v1")
    env = envs.RandomizedParams(base, "CartPole-v1", {"length": (0.25, 2.0), "max_steps_in_episode": (20, 40)})
    num_envs, num_steps = 64, 300
    keys = jax.random.split(jax.random.key(0), (num_steps, num_envs))
    actions = jax.random.bernoulli(jax.random.key(1), 0.5, (num_steps, num_envs)).astype(jnp.int32)
    _, start = jax.vmap(env.reset, (0, None))(jax.random.split(jax.random.key(2), num_envs), params)

    @functools.partial(jax.jit, static_argnums=0)
    def run(step, step_randomness):
        def body(state, inputs):
            randomness, action = inputs
            _, state, _, terminated, truncated, _ = jax.vmap(step, (0, 0, 0, None))(randomness, state, action, params)
            return state, (state.params, state.env_state.time, terminated, truncated)

        return jax.lax.scan(body, start, (step_randomness, actions))[1]

    predrawn = envs.PredrawnResets(env)
    plain = run(env.step, keys)
    ahead = run(predrawn.step, predrawn.draw_resets(keys, params))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(ahead)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    episode_params, time, terminated, truncated = plain
    length = np.asarray(episode_params.length)
    limit = np.asarray(episode_params.max_steps_in_episode)
    done = np.asarray(terminated) | np.asarray(truncated)
    # Within an episode the params hold; after each end (the state returned is the new episode's), new ones.
    same = (length[1:] == length[:-1]) & (limit[1:] == limit[:-1])
    assert np.all(same[~done[1:]])
    assert np.mean(same[done[1:]]) < 0.01
    starts = length[1:][done[1:]]  # one draw per new episode
    assert starts.size > 500 and starts.min() >= 0.25 and starts.max() < 2.0
    assert stats.kstest(starts, stats.uniform(0.25, 1.75).cdf).pvalue > 1e-3
    assert set(np.unique(limit[1:][done[1:]])) == set(range(20, 40))
    np.testing.assert_allclose(np.asarray(episode_params.polemass_length), 0.1 * length, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(episode_params.total_mass), 1.1, rtol=1e-6)
    # A truncated episode ran exactly its own limit (time counts its steps; the returned state is the next one's).
    ended_at = np.concatenate([np.zeros((1, num_envs), int), np.asarray(time)[:-1]])  # time before each step
    t = np.asarray(truncated) & ~np.asarray(terminated)
    assert t.sum() > 100
    np.testing.assert_array_equal((ended_at + 1)[t], np.concatenate([limit[:1], limit[:-1]])[t])


RANDOMISED_A2C = algos.A2CConfig(total_timesteps=2 * 4 * 32, num_envs=4, num_steps=32, eval_every=2, eval_episodes=2,
                                 env_randomize=(("length", 0.5, 3.0),))


def _nominal_evaluation(out, config=RANDOMISED_A2C) -> np.ndarray:
    """runs.evaluate's 2 episodes of a RANDOMISED_A2C run's trained policy under `config`, with the run's last
    evaluation key (key 0's)."""
    eval_key = common.evaluation_key(jax.random.key(0), 1)
    return np.asarray(runs.evaluate(eval_key, config, out.agent.params, None, num_episodes=2))


def test_domain_randomised_training_and_its_errors():
    """env_randomize in a run: every environment of the run has its own draw, evaluation stays nominal; bad ranges
    and fields fail before compiling, and so does a field both gridded per lane and randomised."""
    config = RANDOMISED_A2C
    out = jax.jit(algos.a2c.make_train(config))(jax.random.key(0))
    found = []
    jax.tree_util.tree_map(lambda x: found.append(x) if isinstance(x, envs.RandomizedParamsState) else None,
                           out.env_state, is_leaf=lambda x: isinstance(x, envs.RandomizedParamsState))
    lengths = np.asarray(found[0].params.length)
    assert lengths.shape == (4,) and len(set(lengths.tolist())) == 4 and np.all((lengths >= 0.5) & (lengths < 3))
    runs._evaluation_program.cache_clear()
    nominal = _nominal_evaluation(out)
    # The same episodes, and the same compiled program, as the config without randomisation.
    np.testing.assert_array_equal(_nominal_evaluation(out, config.replace(env_randomize=())), nominal)
    assert runs._evaluation_program.cache_info().currsize == 1
    # The config round-trips through config.json's form.
    assert config.to_dict()["env_randomize"] == {"length": [0.5, 3.0]}
    assert algos.A2CConfig(**config.to_dict()) == config

    for bad, message in [({"length": (3.0, 0.5)}, "low 3.0 > high 0.5"), ((("length", 1.0),), "triples"),
                         ({"length": (0.5, float("inf"))}, "finite numbers")]:
        with pytest.raises(ValueError, match=message):
            algos.A2CConfig(env_randomize=bad)
    with pytest.raises(ValueError, match="cannot randomise 'lenght'"):
        algos.a2c.make_train(config.replace(env_randomize={"lenght": (0.5, 1.0)}))
    train = algos.a2c.make_train(config)
    with pytest.raises(ValueError, match="also in env_randomize"):
        jax.eval_shape(train, jax.random.key(0), {**config.hyperparams(), "env.length": 1.0})


@pytest.mark.exact_compiler
def test_domain_randomised_run_evaluates_on_the_nominal_environment():
    """The in-run evaluation of a randomised run ran on the nominal environment: runs.evaluate's episodes with the
    run's evaluation key. Two separately compiled programs compared to rtol 1e-6, so under the default emitters only
    (the older ones ended one CartPole episode a step apart at key offset 72: 152.5 against 153.0)."""
    out = jax.jit(algos.a2c.make_train(RANDOMISED_A2C))(jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out.metrics["eval_return"])[-1], _nominal_evaluation(out).mean(), rtol=1e-6)


def test_observed_params_are_each_episodes_draw_scaled_to_its_range():
    """`ObserveParams` over randomised CartPoles: the observation is the inner one followed by (x - m) / h of the
    episode's own draws (the new episode's after an auto-reset, the old one's in final_observation); over a fixed
    environment, the given params' values (outside [-1, 1] beyond the range)."""
    base, params = envs.make("CartPole-v1")
    ranges = {"length": (0.25, 2.0), "max_steps_in_episode": (20, 40)}
    randomized = envs.RandomizedParams(base, "CartPole-v1", ranges)
    observed = envs.ObserveParams(randomized, ranges)
    assert observed.observation_space(params).shape == (6,) and envs.observation_size(observed, params) == 6
    num_envs, num_steps = 16, 120
    keys = jax.random.split(jax.random.key(0), (num_steps, num_envs))
    actions = jax.random.bernoulli(jax.random.key(1), 0.5, (num_steps, num_envs)).astype(jnp.int32)
    reset_keys = jax.random.split(jax.random.key(2), num_envs)

    @functools.partial(jax.jit, static_argnums=0)
    def run(env):
        obs, start = jax.vmap(env.reset, (0, None))(reset_keys, params)

        def body(state, inputs):
            key, action = inputs
            obs, state, _, terminated, truncated, info = jax.vmap(env.step, (0, 0, 0, None))(key, state, action, params)
            return state, (obs, info["final_observation"], state.params, terminated | truncated)

        return obs, start.params, jax.lax.scan(body, start, (keys, actions))[1]

    obs0, params0, (obs, final_obs, episode_params, done) = run(observed)
    plain_obs0, _, (plain_obs, plain_final, _, plain_done) = run(randomized)
    np.testing.assert_array_equal(np.asarray(obs0)[:, :4], np.asarray(plain_obs0))
    np.testing.assert_array_equal(np.asarray(obs)[..., :4], np.asarray(plain_obs))
    np.testing.assert_array_equal(np.asarray(final_obs)[..., :4], np.asarray(plain_final))
    np.testing.assert_array_equal(np.asarray(done), np.asarray(plain_done))

    def scaled(p):
        return np.stack([(np.asarray(p.length) - 1.125) / 0.875, (np.asarray(p.max_steps_in_episode) - 30) / 10], -1)

    np.testing.assert_allclose(np.asarray(obs0)[:, 4:], scaled(params0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(obs)[..., 4:], scaled(episode_params), rtol=1e-6, atol=1e-7)
    # final_observation carries the ended episode's params: those of the state before the step.
    previous = jax.tree_util.tree_map(
        lambda first, rest: np.concatenate([np.asarray(first)[None], np.asarray(rest)[:-1]]), params0, episode_params)
    np.testing.assert_allclose(np.asarray(final_obs)[..., 4:], scaled(previous), rtol=1e-6, atol=1e-7)
    assert np.asarray(done).sum() > 30 and np.all(np.abs(np.asarray(obs)[..., 4:]) <= 1)
    # Over the fixed environment: the params given.
    fixed = envs.ObserveParams(base, {"length": (0.25, 2.0)})
    obs, _ = fixed.reset(jax.random.key(3), params.replace(length=4.0))
    np.testing.assert_allclose(np.asarray(obs)[4], (4.0 - 1.125) / 0.875, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot randomise 'lenght'"):
        envs.ObserveParams(base, {"lenght": (0.25, 2.0)})
    # Both go below pgjax's wrappers, whose step_env / reset_env are the bare environment's (a wrapper given here was
    # skipped without a word); and the derived fields follow the environment's own id (another id left them stale).
    with pytest.raises(ValueError, match="goes below pgjax's wrappers"):
        envs.ObserveParams(envs.NormalizeObservation(base), {"length": (0.25, 2.0)})
    with pytest.raises(ValueError, match="goes below pgjax's wrappers"):
        envs.RandomizedParams(envs.FlattenObservation(base), "CartPole-v1", {"length": (0.25, 2.0)})
    with pytest.raises(ValueError, match="env_id 'cartpole' is not the environment's own id 'CartPole-v1'"):
        envs.RandomizedParams(base, "cartpole", {"masspole": (1.0, 2.0)})


def test_log_uniform_ranges_draw_log_uniformly_and_are_observed_in_log_space():
    """(low, high, "log"): log x ~ U[log low, log high] at each reset (Kolmogorov-Smirnov over 4096 resets), int
    fields floor the draw, ObserveParams scales log x to [-1, 1]; the config, its config.json form and the command
    line carry the "log", and a range that reaches 0 is refused."""
    from scipy import stats

    base, params = envs.make("CartPole-v1")
    ranges = {"length": (0.1, 10.0, "log"), "max_steps_in_episode": (10, 1000, "log")}
    env = envs.ObserveParams(envs.RandomizedParams(base, "CartPole-v1", ranges), ranges)
    obs, state = jax.jit(jax.vmap(env.reset, (0, None)))(jax.random.split(jax.random.key(0), 4096), params)
    length, limit = np.asarray(state.params.length), np.asarray(state.params.max_steps_in_episode)
    assert length.min() >= 0.1 and length.max() < 10.0 and limit.min() >= 10 and limit.max() < 1000
    assert stats.kstest(np.log(length), stats.uniform(np.log(0.1), np.log(100.0)).cdf).pvalue > 1e-3
    assert stats.kstest(length, stats.uniform(0.1, 9.9).cdf).pvalue < 1e-6  # not uniform on [0.1, 10]
    assert np.all(limit == np.floor(limit)) and 0.45 < np.mean(limit < 100) < 0.55  # half the draws below 10^2
    np.testing.assert_allclose(np.asarray(obs)[:, 4], np.log(length) / np.log(10.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(obs)[:, 5], (np.log(limit) - np.log(100.0)) / np.log(10.0), atol=1e-5)
    config = algos.PPOConfig(env_randomize={"length": (0.1, 10.0, "log")}, env_randomize_observe=True)
    assert config.env_randomize == (("length", 0.1, 10.0, "log"),)
    assert config.to_dict()["env_randomize"] == {"length": [0.1, 10.0, "log"]}
    assert algos.PPOConfig(**config.to_dict()) == config
    assert runs.parse_env_ranges(["length=0.1:10:log", "gravity=5:15"]) == {"length": (0.1, 10.0, "log"),
                                                                           "gravity": (5.0, 15.0)}
    for bad, message in [({"length": (0.0, 2.0, "log")}, "must have low > 0"), ({"length": (0.5, 2.0, "lg")}, "log")]:
        with pytest.raises(ValueError, match=message):
            algos.PPOConfig(env_randomize=bad)
    with pytest.raises(ValueError, match="FIELD=LOW:HIGH:log"):
        runs.parse_env_ranges(["length=0.1:10:lg"])


def test_training_and_evaluation_observe_the_randomised_fields():
    """env_randomize_observe: the networks read 4 + 1 inputs; the in-run evaluation equals runs.evaluate's; an
    evaluated variant (length 2) is shown as (2 - m) / h: the observing policy's returns equal those of a blind
    policy whose first-layer biases absorb that feature's weights. Observing without randomising fails."""
    config = algos.A2CConfig(total_timesteps=2 * 4 * 32, num_envs=4, num_steps=32, eval_every=2, eval_episodes=4,
                             env_randomize=(("length", 0.5, 3.0),), env_randomize_observe=True)
    out = jax.jit(algos.a2c.make_train(config))(jax.random.key(0))
    params = out.agent.params
    assert params["params"]["actor"]["torso"]["Dense_0"]["kernel"].shape == (5, 64)
    eval_key = common.evaluation_key(jax.random.key(0), 1)
    nominal = np.asarray(runs.evaluate(eval_key, config, params, None, num_episodes=4))
    np.testing.assert_allclose(np.asarray(out.metrics["eval_return"])[-1], nominal.mean(), rtol=1e-6)

    feature = (2.0 - 1.75) / 1.25
    layers = {"actor": ("torso", "Dense_0"), "critic": ("mlp", "Dense_0")}
    blind = jax.tree_util.tree_map(lambda x: x, params)
    for tower, (group, layer) in layers.items():
        dense = params["params"][tower][group][layer]
        blind["params"][tower][group][layer] = {"kernel": dense["kernel"][:4],
                                                "bias": dense["bias"] + feature * dense["kernel"][4]}
    variant = (("length", 2.0),)
    seen = runs.evaluate(eval_key, config.replace(env_kwargs=variant), params, None, num_episodes=4)
    unseen = runs.evaluate(eval_key, config.replace(env_kwargs=variant, env_randomize=(), env_randomize_observe=False),
                           blind, None, num_episodes=4)
    np.testing.assert_array_equal(np.asarray(seen), np.asarray(unseen))
    assert algos.A2CConfig(**config.to_dict()) == config
    with pytest.raises(ValueError, match="env_randomize is empty"):
        config.replace(env_randomize=())


@pytest.mark.parametrize("env_id, ranges, bound, union", [
    ("Pendulum-v1", {"max_torque": (3.0, 4.0)}, "max_torque", (-4.0, 4.0)),
    ("MountainCarContinuous-v0", {"max_action": (1.5, 2.0), "power": (0.001, 0.002)}, "max_action", (-1.0, 2.0)),
])
def test_randomised_action_bounds_clip_to_each_episodes_own_box(env_id, ranges, bound, union):
    """A randomised field that sets the action box: `ClipAction` clips to the union of the episodes' boxes and the
    episode clips to its own, so an action of 3 under a drawn max_torque of 3.3 steps as 3 (not as the nominal 2)
    and MountainCarContinuous's reward, which reads the action, sees the episode's clip."""
    base, params = envs.make(env_id)
    randomized = envs.RandomizedParams(base, env_id, ranges)
    env = envs.ClipAction(randomized)
    assert tuple(float(b[0]) for b in envs.action_bounds(env, params)) == union
    keys = jax.random.split(jax.random.key(0), 16)
    _, state = jax.vmap(env.reset, (0, None))(jax.random.split(jax.random.key(2), 16), params)
    # Half the actions uniform over [-6, 6], half between the nominal bound and the episode's drawn one, where the
    # old clip cut them short (uniform draws alone left none there at key offset 50: 16 draws miss MountainCar's
    # narrow gap 12% of the time).
    nominal, drawn = float(getattr(params, bound)), getattr(state.params, bound)
    uniform = jax.random.uniform(jax.random.key(1), (16,), minval=-6.0, maxval=6.0)
    gap = jnp.sign(uniform) * (nominal + (drawn - nominal) * jax.random.uniform(jax.random.key(3), (16,), minval=0.1,
                                                                                 maxval=0.9))
    actions = jnp.where(jnp.arange(16) % 2 == 0, uniform, gap)[:, None]
    _, _, reward, _, _, _ = jax.vmap(env.step, (0, 0, 0, None))(keys, state, actions, params)

    def reference(key, state, action):
        episode = state.params
        space = base.action_space(episode)
        step_key, _ = jax.random.split(key)  # gymnax's step: (step key, reset key)
        return base.step_env(step_key, state.env_state, jnp.clip(action, space.low, space.high), episode)[2]

    expected = jax.vmap(reference)(keys, state, actions)
    np.testing.assert_allclose(np.asarray(reward), np.asarray(expected), rtol=1e-6)
    beyond_nominal = np.abs(np.asarray(actions[:, 0])) > nominal
    assert np.sum(beyond_nominal & (np.abs(np.asarray(actions[:, 0])) < np.asarray(drawn))) >= 8  # the old clip's cuts


def test_a_tabular_learner_with_another_discount_than_its_mdp_is_warned():
    """The MDP's discount defines its exact J; a config with another one learns another objective: warned, with
    both values and both fixes, and silent when they agree."""
    with pytest.warns(UserWarning, match=r"MDP's discount is 0.9, .* PPOConfig.discount is 0.99"):
        common.make_env(algos.PPOConfig(env_id="tabular:chain"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        common.make_env(algos.PPOConfig(env_id="tabular:chain", discount=0.9))
        common.make_env(algos.PPOConfig(env_id="tabular:chain", env_kwargs={"discount": 0.99}))
        common.make_env(algos.PPOConfig(env_id="CartPole-v1", discount=0.5))


def test_integer_fields_are_drawn_inside_their_range():
    """floor(exp(float32(log 7))) is 6 (exp rounds to 6.9999995), and low + f (high - low) rounds to high at times:
    a log-uniform (7, 7) step limit drew 6 in every episode, a uniform (500, 501) one 501 in ~18 of 1e6 episodes."""
    base, params = envs.make("CartPole-v1")
    keys = jax.random.split(jax.random.key(0), 1_000_000)
    for bounds, allowed in (((7, 7, "log"), {7}), ((500, 501), {500}), ((20, 40), set(range(20, 40)))):
        env = envs.RandomizedParams(base, "CartPole-v1", {"max_steps_in_episode": bounds})
        drawn = jax.jit(jax.vmap(lambda k: env.draw_params(k, params).max_steps_in_episode))(keys)
        assert set(np.unique(np.asarray(drawn)).tolist()) == allowed, bounds


def test_episodic_rollouts_must_cover_the_largest_step_limit_a_range_draws():
    """episodic=True needs num_steps >= every episode's step limit: with the limit drawn per episode, the largest
    draw (20..39 from (20, 40), 30 from the zero-width (30, 30), 7 from a log-uniform (7, 7)), checked when train
    is built."""
    for bounds, largest in (((20, 40), 39), ((30, 30), 30), ((20.5, 40.5), 40), ((7, 7, "log"), 7)):
        config = algos.REINFORCEConfig(episodic=True, num_envs=2, num_steps=largest, total_timesteps=4 * largest,
                                       env_randomize={"max_steps_in_episode": bounds})
        algos.reinforce.make_train(config)  # fits
        with pytest.raises(ValueError, match=rf"num_steps \({largest - 1}\) must be at least CartPole-v1's step "
                                             rf"limit \(max_steps_in_episode={largest}\) with episodic=True"):
            algos.reinforce.make_train(config.replace(num_steps=largest - 1))


def test_range_edges_zero_width_features_and_widened_boxes():
    """The edges of the range checks (an empty or non-dict ranges, a step limit from 0 refused and from 1 allowed),
    a zero-width range's feature (x - low) / 1, the features' (-inf, inf) bounds, and the union of action boxes over
    a log-uniform range's corners, from the given params (or the defaults when none are given)."""
    base, params = envs.make("CartPole-v1")
    for bad in ({}, [("length", (0.25, 2.0))]):
        with pytest.raises(ValueError, match=r"must be a non-empty \{field: \(low, high\)\}"):
            envs.RandomizedParams(base, "CartPole-v1", bad)
    for low in (0, 0.5):
        with pytest.raises(ValueError, match="step limit's range must start at >= 1; got low"):
            envs.RandomizedParams(base, "CartPole-v1", {"max_steps_in_episode": (low, 5)})
    envs.RandomizedParams(base, "CartPole-v1", {"max_steps_in_episode": (1, 5)})

    fixed = envs.ObserveParams(base, {"length": (1.0, 1.0)})
    features = [float(fixed.features(params.replace(length=x))[0]) for x in (1.0, 3.0, 0.5)]
    assert features == [0.0, 2.0, -0.5]
    space = fixed.observation_space(params)
    assert float(space.low[-1]) == -np.inf and float(space.high[-1]) == np.inf

    pendulum, pendulum_params = envs.make("Pendulum-v1")
    randomized = envs.RandomizedParams(pendulum, "Pendulum-v1", {"max_torque": (1.0, 4.0, "log")})
    nominal, wide = randomized.action_space(), randomized.action_space(pendulum_params.replace(max_torque=5.0))
    assert (float(nominal.low), float(nominal.high), float(wide.low), float(wide.high)) == (-4.0, 4.0, -5.0, 5.0)
