"""The training CLI end to end: files written, CSV schema, reload and evaluation, bad flags."""

import json
import os
import re

import jax
import numpy as np
import pytest

import compare as compare_cli
import evaluate as evaluate_cli
import train as train_cli

from pgjax import algos, parallel, runs, tables
from pgjax.algos import presets

# Half-widths of 95% Student-t intervals at 2 seeds: t_{0.975, 1} for one mean (or a paired difference), t_{0.975, 2}
# for Welch's difference of two means of equal spread (Welch-Satterthwaite: (2 se^2)^2 / (2 se^4 / 1) = 2).
T_1, T_2 = 12.706204736174694, 4.302652729749462


RUN_FLAGS = ["--algo", "ppo", "--env", "CartPole-v1", "--num-seeds", "2", "--total-timesteps", "4096",
             "--num-steps", "64", "--eval-every", "6", "--eval-episodes", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "ppo")
    assert train_cli.main(RUN_FLAGS + ["--out", out]) == 0
    return out


def test_files_and_schema(run_dir):
    for name in ("config.json", "metrics.csv", "learning_curve.png", "params.msgpack"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    meta = json.load(open(os.path.join(run_dir, "config.json")))
    assert meta["algo"] == "ppo" and meta["num_seeds"] == 2 and meta["config"]["num_steps"] == 64
    # The per-backend default, resolved: 1 on a CPU, ACCELERATOR_UNROLL elsewhere.
    expected_unroll = 1 if jax.default_backend() == "cpu" else algos.common.ACCELERATOR_UNROLL
    assert meta["config"]["unroll"] == 0 and meta["scan_unroll"] == expected_unroll
    rows = tables.read_csv(os.path.join(run_dir, "metrics.csv"))
    num_updates = 4096 // (4 * 64)
    assert len(rows) == 2 * num_updates
    for column in ("seed", "update", "env_steps", "episode_return", "loss", "entropy", "approx_kl",
                   "clip_fraction", "explained_variance", "wall_time"):
        assert column in rows[0], column
    assert [int(r["env_steps"]) for r in rows[:3]] == [256, 512, 768]
    assert {r["seed"] for r in rows} == {"0", "1"}
    wall = [float(r["wall_time"]) for r in rows[:num_updates]]
    assert all(b >= a for a, b in zip(wall, wall[1:]))
    # --eval-every 6 of 16 updates: evaluated after updates 5, 11 and the last, 15; empty cells between
    evaluated = [int(r["update"]) for r in rows if r["seed"] == "1" and r["eval_return"] not in ("", "nan")]
    assert evaluated == [5, 11, 15] and all(float(r["eval_return"]) >= 1 for r in rows if r["update"] in ("5", "15"))


def test_reload_and_evaluate(run_dir, capsys, tmp_path):
    algo, config, params, stats = runs.load_run(run_dir)
    assert algo == "ppo" and config.num_steps == 64 and stats is None
    path = str(tmp_path / "eval.csv")
    assert evaluate_cli.main([run_dir, "--episodes", "2", "--csv", path]) == 0
    printed = capsys.readouterr().out
    assert "median over seeds" in printed
    rows = tables.read_csv(path)
    assert [(r["seed"], r["episode"], r["actions"]) for r in rows] == [
        (str(s), str(e), "deterministic") for s in range(2) for e in range(2)
    ]
    # Seed i is evaluated with key(--seed + i): the file holds exactly those episodes, and the printed means are theirs.
    for seed in range(2):
        seed_params = jax.tree_util.tree_map(lambda x: x[seed], params)
        direct = np.asarray(runs.evaluate(jax.random.key(123 + seed), config, seed_params, None, 2))
        logged = [float(r["episode_return"]) for r in rows if r["seed"] == str(seed)]
        np.testing.assert_allclose(logged, direct, rtol=1e-6)
        assert f"seed {seed}: mean return {direct.mean():.1f}" in printed


@pytest.mark.exact_compiler
def test_the_last_in_run_evaluation_reruns_from_the_final_parameters(run_dir):
    """The run's last in-run evaluation (update 15) again, from its seed's key: evaluation_key(seed_keys(...), 15).
    Bit for bit only between programs compiled alike: under make test's first-phase emitters, at key offset 86, the
    in-run evaluation's CartPole episodes of seed 1 drifted apart from the separate one's (211 against 195)."""
    _, config, params, _ = runs.load_run(run_dir)
    meta = json.load(open(os.path.join(run_dir, "config.json")))
    in_run = [float(r["eval_return"]) for r in tables.read_csv(os.path.join(run_dir, "metrics.csv"))
              if r["update"] == "15"]
    for seed in range(2):
        eval_key = algos.common.evaluation_key(runs.seed_keys(meta["seed"], [seed])[0], 15)
        again = runs.evaluate(eval_key, config, jax.tree_util.tree_map(lambda x: x[seed], params), None,
                              config.eval_episodes)
        np.testing.assert_allclose(float(np.mean(again)), in_run[seed], rtol=1e-6)


def test_evaluate_refuses_a_config_that_does_not_match_its_params(run_dir, tmp_path, capsys):
    """evaluate.py labels each seed of params.msgpack by config.json's seed_indices: one index per seed, or an error
    (not the first few seeds evaluated silently); a config.json that is JSON but not an object is an error too."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "params.msgpack"):
        (run / name).write_bytes(open(os.path.join(run_dir, name), "rb").read())
    meta = json.loads((run / "config.json").read_text())
    for text, message in ((json.dumps({**meta, "seed_indices": [0]}), "seed_indices [0] does not give one seed "
                           "index per seed of"), ("[1, 2]", "a JSON object expected; got a list")):
        (run / "config.json").write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            evaluate_cli.main([str(run), "--episodes", "1", "--csv", str(tmp_path / "eval.csv")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, text
    assert not (tmp_path / "eval.csv").exists()


def test_evaluate_skips_a_diverged_seed_and_says_so(run_dir, tmp_path, capsys):
    """A diverged seed's final parameters are NaN, and its policy still ran: CartPole's picked action 0 at every
    step and returned 8-10, a mean return like a poor policy's. Now runs.evaluate refuses NaN parameters, and
    evaluate.py names the seed on stderr, writes no rows for it and summarises the other seed (the same numbers as
    before); with no finite seed left it fails."""
    from flax import serialization

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(open(os.path.join(run_dir, "config.json"), "rb").read())
    state = serialization.msgpack_restore(open(os.path.join(run_dir, "params.msgpack"), "rb").read())
    leaves, treedef = jax.tree_util.tree_flatten(state["params"])
    leaves = [np.array(x) for x in leaves]  # writable copies
    leaves[0][1].flat[-1] = np.nan  # one entry of seed 1's first layer
    state["params"] = jax.tree_util.tree_unflatten(treedef, leaves)
    (run / "params.msgpack").write_bytes(serialization.msgpack_serialize(state))
    _, config, params, _ = runs.load_run(str(run))
    np.testing.assert_array_equal(runs.finite_seeds(params), [True, False])
    with pytest.raises(ValueError, match=r"evaluate: \['params'\].* is not finite \(NaN or inf\): the seed's "
                                         r"training diverged"):
        runs.evaluate(jax.random.key(0), config, jax.tree_util.tree_map(lambda x: x[1], params), None, 2)
    path = str(tmp_path / "eval.csv")
    assert evaluate_cli.main([str(run), "--episodes", "2", "--csv", path]) == 0
    out, err = capsys.readouterr()
    assert "seeds [1] have non-finite final parameters" in err
    assert "seed 1: not evaluated (final parameters not finite" in out
    rows = tables.read_csv(path)
    assert {r["seed"] for r in rows} == {"0"}
    seed0 = np.asarray(runs.evaluate(jax.random.key(123), config, jax.tree_util.tree_map(lambda x: x[0], params),
                                     None, 2))
    np.testing.assert_allclose([float(r["episode_return"]) for r in rows], seed0, rtol=1e-6)
    assert f"median over the 1 of 2 seeds with a value {np.mean(seed0):.1f}" in out
    leaves[-1][0].flat[0] = np.inf  # and one of seed 0's last layer
    state["params"] = jax.tree_util.tree_unflatten(treedef, leaves)
    (run / "params.msgpack").write_bytes(serialization.msgpack_serialize(state))
    assert evaluate_cli.main([str(run), "--episodes", "2", "--csv", path]) == 1
    assert "no seed has finite final parameters" in capsys.readouterr().err


def test_evaluate_is_consistent_with_trained_policy(run_dir):
    """Deterministic evaluation of the same parameters twice gives the same returns; all episodes finish."""
    import jax

    _, config, params, stats = runs.load_run(run_dir)
    p0 = jax.tree_util.tree_map(lambda x: x[0], params)
    a = np.asarray(runs.evaluate(jax.random.key(0), config, p0, None, 3))
    b = np.asarray(runs.evaluate(jax.random.key(0), config, p0, None, 3))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a)) and np.all(a >= 1)
    # One compiled program serves every seed's parameters (they are its argument, not constants baked in):
    # seed 1 through the program compiled for seed 0 = seed 1 through a program compiled afresh.
    p1 = jax.tree_util.tree_map(lambda x: x[1], params)
    shared = np.asarray(runs.evaluate(jax.random.key(0), config, p1, None, 3))
    runs._evaluation_program.cache_clear()
    fresh = np.asarray(runs.evaluate(jax.random.key(0), config, p1, None, 3))
    np.testing.assert_array_equal(shared, fresh)
    assert not np.array_equal(shared, a)


def test_bad_flags_fail_clearly(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--algo", "ppo", "--num-minibatches", "3", "--no-progress"])
    assert "num_minibatches (3) must divide" in capsys.readouterr().err
    bad_grids = {
        "num_envs=4,8": "only the vmappable hyperparameters",
        "learning_rate=1e-3,-1": "learning_rate",
        "clip_eps=0.1,abc": "with numbers",
        "ent_coef=0,0": "repeated",
    }
    for spec, message in bad_grids.items():
        with pytest.raises(SystemExit):
            train_cli.parse_args(["--algo", "ppo", "--grid", spec])
        assert message in capsys.readouterr().err, spec
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--algo", "ppo", "--learning-rate", "1e-3", "--grid", "learning_rate=1e-4,1e-3"])
    assert "set twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["--algo", "nope"])


def test_run_flags_fail_clearly_before_anything_is_built(capsys):
    """train.py's own flags (not config fields) are checked when parsed, each refusal naming the flag."""
    indices = "--seed-indices must be distinct ints in [0, --num-seeds=4)"
    bad = {
        ("--num-seeds", "0"): "--num-seeds must be >= 1; got 0",
        ("--num-seeds", "4", "--seed-indices", "-1"): indices,
        ("--num-seeds", "4", "--seed-indices", "4"): indices,
        ("--num-seeds", "4", "--seed-indices", "1", "1"): indices,
        ("--checkpoint-every", "-1"): "--checkpoint-every must be >= 0 (0: no checkpoints); got -1",
        ("--checkpoint-every", "2", "--num-seeds", "4", "--seed-indices", "0"): "does not combine with --seed-indices",
        ("--cpu-devices", "0"): "--cpu-devices must be 'auto' or a positive int; got '0'",
        ("--cpu-devices", "two"): "--cpu-devices must be 'auto' or a positive int; got 'two'",
    }
    for flags, message in bad.items():
        with pytest.raises(SystemExit) as exit_info:
            train_cli.parse_args(["--algo", "ppo", *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, flags
    args, _ = train_cli.parse_args(["--num-seeds", "4", "--seed-indices", "3", "0", "--checkpoint-every", "0"])
    assert args.seed_indices == [3, 0] and args.checkpoint_every == 0


def test_the_preset_is_the_chosen_environments_and_flags_override_it():
    """Settings = the documented preset for (--algo, --env), then the flags given: Acrobot's preset for --env
    Acrobot-v1 (not the config's default environment's), one flag replacing one of its values."""
    for algo, env_id in (("ppo", "Acrobot-v1"), ("a2c", "Pendulum-v1"), ("ppo", None)):
        config_cls, _ = algos.get(algo)
        _, config = train_cli.parse_args(["--algo", algo] + (["--env", env_id] if env_id else []))
        env_id = env_id or config_cls.env_id
        preset = presets.preset(algo, env_id)
        assert preset and config == config_cls(env_id=env_id, **preset), (algo, env_id)
    _, config = train_cli.parse_args(["--algo", "ppo", "--env", "Acrobot-v1", "--learning-rate", "5e-4"])
    assert config == algos.PPOConfig(**{**presets.preset("ppo", "Acrobot-v1"), "env_id": "Acrobot-v1",
                                        "learning_rate": 5e-4})


def test_final_returns_print_which_seeds_finished_no_episode():
    """A seed that finished no episode in the last 10% of updates (NaN) is counted in a warning and left out of the
    median and worst, which say over how many seeds they are; with none finished, there is no median to print."""
    lines = train_cli.final_return_lines(np.array([np.nan, 10.0, 30.0, 20.0]), [4, 5, 6, 7])
    assert lines == ["warning: 1 seed(s) finished no episode in the last 10% of updates",
                     "final mean episode return (last 10% of updates) per seed: [nan, 10.0, 30.0, 20.0]",
                     "median 20.0, worst 10.0 (of the 3 of 4 seeds that finished an episode in the last 10% of "
                     "updates)"]
    assert train_cli.final_return_lines(np.array([2.0, 1.0]), [0, 1]) == [
        "final mean episode return (last 10% of updates) per seed: [2.0, 1.0]", "median 1.5, worst 1.0"]
    assert train_cli.final_return_lines(np.full(2, np.nan), [0, 1]) == [
        "warning: 2 seed(s) finished no episode in the last 10% of updates",
        "final mean episode return (last 10% of updates) per seed: [nan, nan]"]
    summary = [dict(cell=0, finished=2, seeds=2), dict(cell=1, finished=0, seeds=2), dict(cell=2, finished=1, seeds=2)]
    assert train_cli.unfinished_cells_note(summary[:1]) is None
    assert train_cli.unfinished_cells_note(summary).startswith(
        "note: cell 1: 0 of 2 seeds; cell 2: 1 of 2 seeds finished an episode in the last 10% of updates")


def test_every_config_field_is_documented_and_the_help_shows_the_preset(capsys):
    """`common.field_docs` finds a description for every field of every algorithm's config (and none for a field
    that does not exist), and `train.py --help` shows it with the default and the environment's preset value."""
    import dataclasses

    for name in sorted(algos.ALGORITHMS):
        config_cls, _ = algos.get(name)
        docs = algos.common.field_docs(config_cls)
        fields = {f.name for f in dataclasses.fields(config_cls)}
        assert {f for f in fields if not docs.get(f)} == set(), name
        assert set(docs) <= fields, (name, set(docs) - fields)
    trpo_docs = algos.common.field_docs(algos.TRPOConfig)  # "a, b: text" documents both fields
    both = "value-function fitting passes and minibatches per pass."
    assert trpo_docs["vf_epochs"] == trpo_docs["vf_minibatches"] == both
    assert trpo_docs["normalize_advantages"] == "standardise advantages over the batch."
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--algo", "ppo", "--env", "Pendulum-v1", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--target-kl TARGET_KL early stopping:" in text
    assert "(default 0.0; Pendulum-v1 preset: 0.02)" in text and "(default 4; Pendulum-v1 preset: 16)" in text
    assert "parallel environments per seed" in text


def test_a_grid_field_named_like_a_metric_is_refused(tmp_path):
    """metrics.csv holds a grid's cell values and the run's metrics side by side: a shared name would lose one."""
    fake = algos.common.TrainOutput(None, None, {"env_steps": np.zeros((2, 3)), "lr": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"grid fields \['lr'\] are also metric names"):
        runs.save_grid(str(tmp_path / "grid"), "ppo", algos.PPOConfig(), [{"lr": 1.0}, {"lr": 2.0}], fake, 0)
    assert not (tmp_path / "grid").exists()


def test_an_environment_that_cannot_be_built_fails_clearly(gymnax_offline, tmp_path, capsys):
    # MNISTBandit-bsuite downloads MNIST inside gymnax.make: offline, train.py says so instead of a traceback.
    with pytest.raises(SystemExit):
        train_cli.main(["--env", "MNISTBandit-bsuite", "--no-progress", "--out", str(tmp_path / "run")])
    assert re.search(r"error: make\('MNISTBandit-bsuite'\).*network access", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_an_out_directory_holding_a_run_is_refused_unless_overwritten(run_dir, tmp_path):
    """A run written over another kept the other's leftovers: a grid over a plain run kept its params.msgpack,
    which load_run paired with the grid's config; a finished run kept a stale checkpoint that --resume then
    resumed over it. train.py refuses such an --out (before compiling); --overwrite removes pgjax's files first."""
    out = tmp_path / "old"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match="interrupted run's checkpoint: continue it with .* or add --overwrite"):
        train_cli.main(RUN_FLAGS + ["--out", str(out)])  # without --checkpoint-every too
    (out / "checkpoint.npz").unlink()
    for name in ("metrics.csv", "params.msgpack", "evaluation.csv", "notes.txt"):
        (out / name).write_text("x")
    (out / "cell-0").mkdir()
    with pytest.raises(SystemExit, match=r"already holds a run \(cell-0, evaluation.csv, metrics.csv, "
                                         r"params.msgpack\); choose another --out, or add --overwrite"):
        train_cli.main(RUN_FLAGS + ["--out", str(out)])
    # --overwrite with a command that fails its checks (here when the training program is built: episodic
    # REINFORCE's rollouts shorter than the step limit) leaves the old run in place: it was removed first.
    with pytest.raises(SystemExit, match=r"num_steps \(64\) must be at least CartPole-v1's step limit"):
        train_cli.main(["--algo", "reinforce", "--env", "CartPole-v1", "--num-seeds", "1", "--total-timesteps", "4096",
                        "--num-steps", "64", "--episodic", "true", "--no-progress", "--out", str(out), "--overwrite"])
    assert (out / "metrics.csv").exists()
    assert runs.clear_run(str(out)) == ["cell-0", "evaluation.csv", "metrics.csv", "params.msgpack"]
    assert os.listdir(out) == ["notes.txt"]  # what pgjax did not write stays

    # A grid directory (its config.json lists cells) is refused by load_run even with a stray params.msgpack.
    grid = tmp_path / "grid"
    grid.mkdir()
    with open(os.path.join(run_dir, "config.json")) as f:
        meta = json.load(f)
    (grid / "config.json").write_text(json.dumps({**meta, "grid": {"learning_rate": [1e-3]}}))
    (grid / "params.msgpack").write_bytes(open(os.path.join(run_dir, "params.msgpack"), "rb").read())
    with pytest.raises(ValueError, match="is a hyperparameter grid: load one of its cells"):
        runs.load_run(str(grid))


def test_output_paths_that_cannot_be_written_are_refused_before_anything_runs(run_dir, tmp_path, capsys,
                                                                             monkeypatch):
    """train.py --out naming a file trained the whole run, then lost it in a FileExistsError at save_run; the other
    scripts failed the same way at their last line (quality.py after every pair had trained). Each now refuses
    such a path with its flags (`tables.output_path_problem`), and compare.py a threshold that is not a number."""
    a_file, a_dir = tmp_path / "a_file", tmp_path / "a_dir"
    a_file.write_text("x")
    a_dir.mkdir()
    assert tables.output_path_problem(str(a_file), "file") is None  # replaced
    assert tables.output_path_problem(str(a_dir), "dir") is None  # reused
    assert tables.output_path_problem(str(a_dir / "new" / "deeper"), "dir") is None  # created
    assert "is a file, not a directory" in tables.output_path_problem(str(a_file), "dir")
    assert "is a directory" in tables.output_path_problem(str(a_dir), "file")
    assert f"{a_file} is a file, so" in tables.output_path_problem(str(a_file / "x.csv"), "file")
    with pytest.raises(ValueError, match="kind must be 'dir' or 'file'"):
        tables.output_path_problem(str(a_dir), "folder")
    with pytest.raises(SystemExit, match=r"--out: .*a_file is a file, not a directory"):
        train_cli.main(RUN_FLAGS + ["--out", str(a_file)])
    for argv in ([run_dir, "--out", str(a_file)], [run_dir, "--threshold", "nan"]):
        with pytest.raises(SystemExit):
            compare_cli.main(argv)
    with pytest.raises(SystemExit):
        evaluate_cli.main([run_dir, "--csv", str(a_dir)])
    errors = capsys.readouterr().err
    assert "--out: " in errors and "--threshold must be a finite return; got nan" in errors
    assert f"--csv: {a_dir} is a directory" in errors
    assert not os.listdir(a_dir) and a_file.read_text() == "x"
    with pytest.raises(SystemExit):
        evaluate_cli.main([run_dir, "--episodes", "0"])
    assert "--episodes must be >= 1; got 0" in capsys.readouterr().err
    # Folders the user may not write to (chmod cannot show it when the tests run as root, who may write anywhere).
    monkeypatch.setattr(tables.os, "access", lambda path, mode: False)
    assert tables.output_path_problem(str(a_dir), "dir") == f"{a_dir} is not writable"
    assert tables.output_path_problem(str(a_dir / "new.csv"), "file") == (
        f"{a_dir} is not writable, so {a_dir / 'new.csv'} cannot be created")


def test_load_run_rejects_incomplete_dir(tmp_path):
    with pytest.raises(ValueError, match="params.msgpack is missing|config.json is missing"):
        runs.load_run(str(tmp_path))


def test_replayed_seed_reproduces_its_row_of_the_sweep(run_dir, tmp_path, capsys):
    # A seed run alone compiles differently and drifts from its row of a sweep (here from the first updates);
    # replayed as a lane of the sweep's program (train.py --seed-indices, runs.replay_seeds) it reproduces the row.
    replay = str(tmp_path / "replay")
    capsys.readouterr()
    assert train_cli.main(RUN_FLAGS + ["--seed-indices", "1", "--out", replay]) == 0  # run_dir's flags
    # Its wall times start after compiling, as a sweep's: the last update's is within the printed run time.
    compile_s, run_s = map(float, re.search(r"compile ([\d.]+) s, run ([\d.]+) s", capsys.readouterr().out).groups())
    wall = runs.read_metrics(replay)[2]
    assert 0 <= wall[0] <= wall[-1] <= run_s + 0.06 and wall[-1] < compile_s, (wall, compile_s, run_s)

    rows = _rows_without_wall_time
    assert len(rows(run_dir, "1")) == 16 and rows(replay, "1") == rows(run_dir, "1")
    (_, _, sweep_params, _), (_, _, replay_params, _) = runs.load_run(run_dir), runs.load_run(replay)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[1], b[0]), sweep_params, replay_params)
    with open(os.path.join(replay, "config.json")) as f:
        meta = json.load(f)
    assert meta["seed_indices"] == [1]
    # What the replay assumed of its sweep, to check against the sweep's config.json (bit for bit needs both equal).
    with open(os.path.join(run_dir, "config.json")) as f:
        sweep = json.load(f)
    devices = len(parallel.devices_for(2))
    assert meta["replay"] == {"sweep_num_seeds": 2, "sweep_lanes": 2, "sweep_devices": devices,
                              "lanes_per_device": 2 // devices}
    assert (sweep["num_seeds"], len(sweep["devices"])) == (2, devices) and "replay" not in sweep
    # evaluate.py evaluates seed i under key(--seed + i) wherever it ran: the replay's seed 1 as the sweep's seed 1.
    assert evaluate_cli.main([replay, "--episodes", "2", "--csv", str(tmp_path / "eval.csv")]) == 0
    _, config, _, _ = runs.load_run(run_dir)
    sweep_seed_1 = jax.tree_util.tree_map(lambda x: x[1], sweep_params)
    assert [float(r["episode_return"]) for r in tables.read_csv(str(tmp_path / "eval.csv"))] == list(
        np.asarray(runs.evaluate(jax.random.key(123 + 1), config, sweep_seed_1, None, 2), np.float64))


def _rows_without_wall_time(run, seed=None):
    table = runs.read_metrics_csv(os.path.join(run, "metrics.csv"))
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in table if seed is None or r["seed"] == seed]


@pytest.mark.exact_compiler
def test_interrupted_run_resumes_from_its_checkpoint_bit_for_bit(run_dir, tmp_path, monkeypatch, capsys):
    """--checkpoint-every 8 of 16 updates: two segments. Interrupted after its first checkpoint and resumed with
    --resume, the run writes run_dir's files (one compiled call) bit for bit: metrics (the in-run evaluations after
    updates 5, 11 and 15 included), parameters. (Unequal segments: checked by hand, README.)"""
    out = str(tmp_path / "long")
    saved, saved_wall = [], []

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        saved.append(args[3])  # next_update
        saved_wall.append(np.array(args[4], dtype=float))  # wall_time [next_update]
        if len(saved) == 1:
            raise KeyboardInterrupt

    real_save = train_cli.checkpoints.save
    monkeypatch.setattr(train_cli.checkpoints, "save", save_then_stop)
    monkeypatch.chdir(tmp_path)  # started with a relative --out ...
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(RUN_FLAGS + ["--checkpoint-every", "8", "--out", "long"])
    assert saved == [8] and os.listdir(out) == ["checkpoint.npz"]
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")  # ... and resumed from another directory: it continues in `out`
    monkeypatch.setattr(train_cli.checkpoints, "save", real_save)
    with pytest.raises(SystemExit, match="holds an interrupted run's checkpoint: continue it with"):
        train_cli.main(RUN_FLAGS + ["--checkpoint-every", "8", "--out", out])  # the same command again
    capsys.readouterr()

    assert train_cli.main(["--resume", out]) == 0
    assert "resumed at update 8 of 16" in capsys.readouterr().out
    assert "checkpoint.npz" not in os.listdir(out)  # the run's files are written: nothing left to resume
    assert _rows_without_wall_time(out) == _rows_without_wall_time(run_dir)
    with open(os.path.join(out, "params.msgpack"), "rb") as a, open(os.path.join(run_dir, "params.msgpack"), "rb") as b:
        assert a.read() == b.read()
    wall = [float(r["wall_time"]) for r in runs.read_metrics_csv(os.path.join(out, "metrics.csv")) if r["seed"] == "0"]
    assert all(b >= a for a, b in zip(wall, wall[1:])), wall  # the resumed clock goes on from the checkpoint's
    measured = ~np.isnan(saved_wall[0])  # the checkpoint's times of the first 8 updates are the run's (a resumed
    assert measured.any()  # clock restarting at 0 interpolated over them, and passed the ordering check above)
    np.testing.assert_allclose(np.array(wall[:8])[measured], saved_wall[0][measured], rtol=0, atol=1e-4)  # 4 digits
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["config"] == json.load(open(os.path.join(run_dir, "config.json")))["config"]

    with pytest.raises(SystemExit, match="the run finished"):
        train_cli.main(["--resume", out])
    with pytest.raises(SystemExit, match="takes no other flags"):
        train_cli.main(["--resume", out, "--num-seeds", "3"])
    with pytest.raises(SystemExit, match="only with --checkpoint-every"):
        train_cli.main(["--resume", str(tmp_path)])
    for flags, message in [
        (["--checkpoint-every", "-1"], "must be >= 0"),
        (["--checkpoint-every", "4", "--seed-indices", "0"], "does not combine with --seed-indices"),
    ]:
        with pytest.raises(SystemExit):
            train_cli.parse_args(RUN_FLAGS + flags)
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------
# --grid: a seeds x hyperparameters grid in one compiled call.
# ---------------------------------------------------------------------------

# Episodes of at most 100 steps: every environment ends one in the last 2 updates (2 x 64 steps), so every seed has a
# final return (at key offset 51 a seed at lr 1e-3 ran one episode of >= 128 steps through them).
GRID_FLAGS = ["--algo", "ppo", "--env", "CartPole-v1", "--num-seeds", "2", "--total-timesteps", "4096",
              "--num-steps", "64", "--eval-every", "8", "--eval-episodes", "2", "--no-progress",
              "--grid", "learning_rate=1e-3,2.5e-4", "--env-kwarg", "max_steps_in_episode=100"]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grid") / "ppo")
    assert train_cli.main([*GRID_FLAGS, "--out", out]) == 0
    return out


def test_grid_summary_and_metrics_agree_and_cells_share_their_seeds(grid_dir):
    with open(os.path.join(grid_dir, "config.json")) as f:  # what --seed-indices replays of it are checked against
        assert len(json.load(f)["devices"]) == len(parallel.devices_for(4))
    metrics = tables.read_csv(os.path.join(grid_dir, "metrics.csv"))
    assert [k for k in metrics[0]][:4] == ["cell", "learning_rate", "seed", "update"]
    assert len(metrics) == 2 * 2 * 16
    returns = {}  # (cell, seed) -> episode_return per update
    for r in metrics:
        assert float(r["learning_rate"]) == [1e-3, 2.5e-4][int(r["cell"])]
        returns.setdefault((int(r["cell"]), int(r["seed"])), []).append(float(r["episode_return"] or "nan"))
    last_eval = {(int(r["cell"]), int(r["seed"])): float(r["eval_return"]) for r in metrics if r["update"] == "15"}
    # Every cell runs the same seed keys: the first rollout (before any update) is the same in both cells.
    assert returns[0, 0][0] == returns[1, 0][0] and returns[0, 1][0] == returns[1, 1][0]
    assert returns[0, 0][0] != returns[0, 1][0]
    assert returns[0, 0] != returns[1, 0]  # the learning rate changed what was learned
    summary = tables.read_csv(os.path.join(grid_dir, "summary.csv"))
    assert [float(r["learning_rate"]) for r in summary] == [1e-3, 2.5e-4]
    finals = np.array([[np.nanmean(returns[cell, seed][-2:]) for seed in range(2)] for cell in range(2)])
    # The references below are for seeds that all finished an episode in the last 2 updates (summarize_final_returns
    # ranks the others apart): a training change that leaves one unfinished must say so, not mismatch a median.
    assert np.all(np.isfinite(finals)), finals
    best = finals[np.argmax(finals.mean(axis=1))]
    for row in summary:  # final return = mean over the last 10% of updates (2 of 16), per seed
        values = finals[int(row["cell"])]
        difference = values - best  # paired by seed
        # metrics.csv holds float32 returns: a difference of close values carries their rounding, relative to them
        np.testing.assert_allclose(
            [float(row[k]) for k in ("median", "mean", "worst", "best", "vs_best", "vs_best_ci95")],
            [np.median(values), values.mean(), values.min(), values.max(), difference.mean(),
             T_1 * difference.std(ddof=1) / np.sqrt(2)], rtol=1e-6, atol=1e-6 * np.abs(finals).max())
        evals = [last_eval[int(row["cell"]), seed] for seed in range(2)]  # the evaluation after the last update
        np.testing.assert_allclose([float(row[k]) for k in ("eval_median", "eval_mean", "eval_worst")],
                                   [np.median(evals), np.mean(evals), np.min(evals)], rtol=1e-6)
    with open(os.path.join(grid_dir, "config.json")) as f:
        assert json.load(f)["grid"] == {"learning_rate": [1e-3, 2.5e-4]}
    with pytest.raises(ValueError, match="hyperparameter grid"):
        runs.load_run(grid_dir)


def test_grid_cell_is_a_run_directory_and_its_seeds_replay_bit_for_bit(grid_dir, tmp_path):
    cell = os.path.join(grid_dir, "cell-1")
    algo, config, params, _ = runs.load_run(cell)
    assert algo == "ppo" and config.learning_rate == 2.5e-4 and jax.tree_util.tree_leaves(params)[0].shape[0] == 2

    def rows(run, seed=None):
        return [{k: v for k, v in r.items() if k != "wall_time"}
                for r in tables.read_csv(os.path.join(run, "metrics.csv"))
                if seed is None or r["seed"] == seed]

    assert rows(cell) == [{k: v for k, v in r.items() if k not in ("cell", "learning_rate")}
                          for r in rows(grid_dir) if r["cell"] == "1"]
    # Seed 1 of every cell again, as lanes of the grid's per-device program (each lane with its cell's hparams).
    replay = str(tmp_path / "replay")
    assert train_cli.main([*GRID_FLAGS, "--seed-indices", "1", "--out", replay]) == 0
    assert len(rows(replay)) == 2 * 16 and rows(replay) == rows(grid_dir, "1")
    with open(os.path.join(replay, "config.json")) as f:  # the grid's program: 2 cells x 2 seeds
        assumed = json.load(f)["replay"]
    assert (assumed["sweep_num_seeds"], assumed["sweep_lanes"]) == (2, 4)
    assert [r["seeds"] for r in tables.read_csv(os.path.join(replay, "summary.csv"))] == ["1", "1"]


def test_evaluate_a_grid_evaluates_every_cell_with_one_compile(grid_dir, tmp_path, capsys):
    runs._evaluation_program.cache_clear()
    path = str(tmp_path / "eval.csv")
    assert evaluate_cli.main([grid_dir, "--episodes", "2", "--csv", path]) == 0
    # The cells differ only in HYPERPARAMS (training-only numbers): one compiled evaluation program serves them all.
    assert runs._evaluation_program.cache_info().currsize == 1
    rows = tables.read_csv(path)
    assert [(r["cell"], r["learning_rate"], r["seed"], r["episode"]) for r in rows] == [
        (str(c), str(lr), str(s), str(e)) for c, lr in enumerate([1e-3, 2.5e-4]) for s in range(2) for e in range(2)]
    printed = capsys.readouterr().out
    for cell in range(2):  # each cell's episodes are its own seeds' policies under key(--seed + seed)
        _, config, params, _ = runs.load_run(os.path.join(grid_dir, f"cell-{cell}"))
        for seed in range(2):
            seed_params = jax.tree_util.tree_map(lambda x: x[seed], params)
            direct = np.asarray(runs.evaluate(jax.random.key(123 + seed), config, seed_params, None, 2))
            logged = [float(r["episode_return"]) for r in rows if r["cell"] == str(cell) and r["seed"] == str(seed)]
            np.testing.assert_array_equal(logged, direct)
        assert f"cell {cell} (learning_rate=" in printed
    summary = tables.read_csv(str(tmp_path / "eval_summary.csv"))
    for row in summary:  # each cell's row summarises its seeds' mean returns in evaluation.csv
        means = [np.mean([float(r["episode_return"]) for r in rows if r["cell"] == row["cell"] and r["seed"] == s])
                 for s in ("0", "1")]
        assert float(row["median"]) == pytest.approx(np.median(means)) and float(row["worst"]) == pytest.approx(
            min(means)) and float(row["best"]) == pytest.approx(max(means)) and row["seeds"] == "2"
        assert float(row["iqm"]) == pytest.approx(np.mean(means))  # 2 seeds: nothing cut
    best = max(summary, key=lambda r: float(r["mean"]))
    assert float(best["vs_best"]) == 0.0 and float(best["p_improve_vs_best"]) == 0.5
    assert [(r["cell"], r["learning_rate"]) for r in summary] == [("0", "0.001"), ("1", "0.00025")]


def test_a_grids_evaluation_summary_pairs_the_cells_seed_by_seed():
    """Every cell of a grid (and every value of --env-sweep: `evaluate.paired_summary` serves both) is evaluated on
    the same seeds under the same keys: the difference from the best cell is paired seed by seed (made-up means
    whose cells differ by about 1 on every seed, with seeds far apart: the data of an end-to-end run often cannot
    tell, e.g. when the best cell scores the step limit on every seed)."""
    cells = [{"learning_rate": 1e-3}, {"learning_rate": 2.5e-4}]
    means = [np.array([1.0, 5.0, 9.0]), np.array([2.0, 6.0, 10.5])]
    summary = evaluate_cli.cell_summary(cells, means)
    assert [(row["cell"], row["learning_rate"]) for row in summary] == [(0, 1e-3), (1, 2.5e-4)]
    difference = means[0] - means[1]
    assert summary[0]["vs_best"] == pytest.approx(difference.mean()) and summary[1]["vs_best"] == 0.0
    t_2 = 4.302652729749462  # t_{0.975, 2}: 3 seeds' paired differences
    assert summary[0]["vs_best_ci95"] == pytest.approx(t_2 * difference.std(ddof=1) / np.sqrt(3))  # 0.72, not ~10


def _returns_from_csv(run):
    """{seed: [episode_return per update]} from a run's metrics.csv (NaN where no episode finished)."""
    returns = {}
    for r in tables.read_csv(os.path.join(run, "metrics.csv")):
        returns.setdefault(r["seed"], []).append(float(r["episode_return"] or "nan"))
    return returns


def _final_returns_from_csv(run):
    """Each seed's mean episode return over the last 10% of updates (2 of 16): {seed: value}."""
    return {seed: np.nanmean(values[-2:]) for seed, values in _returns_from_csv(run).items()}


def _auc_and_steps_from_csv(run, threshold, window=10):
    """Per seed: the mean over updates of the return carried forward, and the env steps (256 per update) at the
    first update whose last `window` updates' finished episodes average >= threshold (None if never); the window
    must be full (from update `window` on)."""
    out = {}
    for seed, values in _returns_from_csv(run).items():
        carried, last = [], float("nan")
        for v in values:
            last = last if np.isnan(v) else v
            carried.append(last)
        steps = None
        for u in range(window - 1, len(values)):
            recent = [v for v in values[max(0, u - window + 1):u + 1] if not np.isnan(v)]
            if recent and np.mean(recent) >= threshold:
                steps = 256 * (u + 1)
                break
        out[seed] = (np.nanmean(carried), steps)
    return out


def test_compare_runs_and_grid_cells(run_dir, grid_dir, tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert compare_cli.main([run_dir, grid_dir, "--labels", "single", "grid", "--out", out, "--threshold", "30"]) == 0
    rows = tables.read_csv(os.path.join(out, "comparison.csv"))
    for name in ("learning_curves.png", "score_profiles.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert [r["label"] for r in rows] == ["single", "grid: learning_rate=0.001", "grid: learning_rate=0.00025"]
    assert all(r["paired"] == "True" for r in rows)  # the same --seed and seeds 0, 1 in every run
    assert all(r["diverged"] == "0" for r in rows)  # (test_runs: a diverged run's are counted and named)
    run_dirs = (run_dir, *(os.path.join(grid_dir, f"cell-{k}") for k in (0, 1)))
    values = np.array([[f["0"], f["1"]] for f in map(_final_returns_from_csv, run_dirs)])
    best = values[np.argmax(values.mean(axis=1))]
    for row, own, run in zip(rows, values, run_dirs):
        per_seed = _auc_and_steps_from_csv(run, 30.0)
        aucs = np.array([per_seed[s][0] for s in ("0", "1")])
        steps = [per_seed[s][1] for s in ("0", "1") if per_seed[s][1] is not None]
        assert float(row["auc"]) == pytest.approx(aucs.mean(), rel=1e-9)
        assert float(row["auc_ci95"]) == pytest.approx(T_1 * aucs.std(ddof=1) / np.sqrt(2), rel=1e-9)
        assert int(row["reached"]) == len(steps) and float(row["threshold"]) == 30.0
        assert int(row["env_steps"]) == 16 * 256  # each run's, after its last update
        if steps:
            assert float(row["steps_to_threshold_median"]) == np.median(steps)
        # 2 seeds: the IQM cuts none (n // 4 = 0); P(> best) counts the 4 seed pairs, ties half.
        pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in own for b in best]
        assert float(row["iqm"]) == pytest.approx(own.mean(), rel=1e-9)
        assert float(row["p_improve_vs_best"]) == np.mean(pairs)
        assert own.min() <= float(row["iqm_low"]) <= float(row["iqm"]) <= float(row["iqm_high"]) <= own.max()
        difference = own - best
        np.testing.assert_allclose(
            [float(row[k]) for k in ("median", "mean", "worst", "best", "vs_best", "vs_best_ci95")],
            [np.median(own), own.mean(), own.min(), own.max(), difference.mean(),
             T_1 * difference.std(ddof=1) / np.sqrt(2)], rtol=1e-6, atol=1e-9)
    assert any(int(row["reached"]) > 0 for row in rows)  # (the step counts above were compared, not all NaN)
    # Every run has in-run evaluations: the last one's median over seeds, as in the grid's own summary.
    summary = tables.read_csv(os.path.join(grid_dir, "summary.csv"))
    for row, cell in zip(rows[1:], summary):
        for k in ("median", "mean", "worst", "eval_median", "eval_worst"):
            assert float(row[k]) == pytest.approx(float(cell[k]), rel=1e-6), k
    printed = capsys.readouterr()
    assert "vs best: paired by seed" in printed.out and "diverged" not in printed.err + printed.out


def test_compare_names_a_seed_that_diverged(run_dir, tmp_path, capsys):
    """A seed whose loss went NaN (here at update 0, written by hand into a copy of the run) is named on stderr
    with its first bad update and counted in the `diverged` column; the finite seed is not."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(open(os.path.join(run_dir, "config.json")).read())
    lines = open(os.path.join(run_dir, "metrics.csv")).read().splitlines()
    header = lines[0].split(",")
    seed1_first = next(i for i, line in enumerate(lines) if line.startswith("1,0,"))
    cells = lines[seed1_first].split(",")
    cells[header.index("loss")] = "nan"
    lines[seed1_first] = ",".join(cells)
    (other / "metrics.csv").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "cmp")
    assert compare_cli.main([str(other), "--out", out]) == 0
    printed = capsys.readouterr()
    assert "warning: other: seeds 1 (from update 0) diverged" in printed.err, printed.err
    assert "(1 diverged)" in printed.out
    assert tables.read_csv(os.path.join(out, "comparison.csv"))[0]["diverged"] == "1"


def test_compare_unpaired_runs_and_bad_inputs(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("metrics.csv", "config.json"):
        (other / name).write_text(open(os.path.join(run_dir, name)).read())
    meta = json.loads((other / "config.json").read_text())
    meta["seed"] = 7  # another base seed: its seeds are not the run's, so no pairing
    (other / "config.json").write_text(json.dumps(meta))
    out = str(tmp_path / "cmp")
    assert compare_cli.main([run_dir, str(other), "--out", out, "--resamples", "1"]) == 0
    rows = tables.read_csv(os.path.join(out, "comparison.csv"))
    assert [r["paired"] for r in rows] == ["False", "False"]
    # One bootstrap resample (--resamples 1): the IQM interval is that resample's IQM, both ends.
    assert all(r["iqm_low"] == r["iqm_high"] for r in rows)
    # The same numbers under another seed label: equal means, and Welch's interval of two independent means.
    own = np.array(list(_final_returns_from_csv(run_dir).values()))
    se = own.std(ddof=1) / np.sqrt(2)
    assert float(rows[1]["vs_best"]) == 0.0 and float(rows[1]["vs_best_ci95"]) == pytest.approx(T_2 * np.hypot(se, se))
    assert float(rows[0]["ci95"]) == pytest.approx(T_1 * se)
    assert "independent" in capsys.readouterr().out

    # Another variant of the environment (it was reported as a plain comparison): named in a column and a note.
    meta["config"]["env_kwargs"] = {"gravity": 12.0}
    (other / "config.json").write_text(json.dumps(meta))
    assert compare_cli.main([run_dir, str(other), "--out", out]) == 0
    rows = tables.read_csv(os.path.join(out, "comparison.csv"))
    assert [r["env_variant"] for r in rows] == ["", "gravity=12.0"]
    assert rows[0]["iqm_low"] < rows[0]["iqm_high"]  # 2000 resamples by default
    assert ("note: the runs trained on different variants of CartPole-v1 (column env_variant): ppo: default; "
            "other: gravity=12.0") in capsys.readouterr().out
    meta["config"]["env_randomize"] = {"length": [0.25, 2.0]}  # drawn per episode: a variant too
    (other / "config.json").write_text(json.dumps(meta))
    assert compare_cli.main([run_dir, str(other), "--out", out]) == 0
    assert tables.read_csv(os.path.join(out, "comparison.csv"))[1]["env_variant"] == (
        "gravity=12.0 randomize length=[0.25, 2.0]")
    capsys.readouterr()

    meta["config"]["env_id"] = "Acrobot-v1"
    (other / "config.json").write_text(json.dumps(meta))
    for argv, message in (([run_dir, str(other)], "different environments"),
                          ([run_dir, run_dir], "share a label"),
                          ([run_dir, "--labels", "a", "b"], "one label per RUN"),
                          ([str(tmp_path)], "config.json is missing"),
                          ([run_dir, "--resamples", "0"], "--resamples must be >= 1")):
        with pytest.raises(SystemExit) as exit_info:
            compare_cli.main([*argv, "--out", out])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    # A metrics.csv whose last row lost its last two cells, or holds text: an error naming the file, row and column.
    meta["config"]["env_id"] = "CartPole-v1"
    (other / "config.json").write_text(json.dumps(meta))
    lines = open(os.path.join(run_dir, "metrics.csv")).read().splitlines()
    path = os.path.join(str(other), "metrics.csv")
    header = lines[0].split(",")
    for edited, message in ((lines[:-1] + [lines[-1].rsplit(",", 2)[0]], f"row 32 has {len(header) - 2} cells"),
                            ([*lines[:3], lines[3].replace(",", ",x", 1), *lines[4:]], "row 3, column update")):
        (other / "metrics.csv").write_text("\n".join(edited) + "\n")
        with pytest.raises(SystemExit) as exit_info:
            compare_cli.main([run_dir, str(other), "--out", out])
        assert exit_info.value.code == 2 and f"{path}: {message}" in capsys.readouterr().err, message


def test_comparison_rows_count_the_seeds_that_reach_a_threshold_and_when():
    """compare.comparison_rows on made-up metrics (nothing trained): four seeds' returns climb by 20, 10, 5 and 0 per
    update (100 env steps each); the mean of the last 10 updates first reaches 60 at update 9 (the first full
    window), 11 and 17 (a (k - 4.5) >= 60), and never: env steps 1000, 1200, 1800. A run without in-run
    evaluations next to one with them."""
    ramp = np.arange(20.0)
    metrics = {"episode_return": np.stack([20 * ramp, 10 * ramp, 5 * ramp, 0 * ramp]),
               "env_steps": np.tile(100.0 * (ramp + 1), (4, 1))}
    evaluated = {**metrics, "eval_return": np.full((4, 20), np.nan)}
    evaluated["eval_return"][:, -1] = [1.0, 2.0, 3.0, 4.0]
    entries = [dict(label=label, algo="ppo", env_variant="", seed=0, seeds=[0, 1, 2, 3], metrics=m,
                    final=runs.final_returns(m), diverged_at=runs.diverged_updates(m))
               for label, m in (("plain", metrics), ("evaluated", evaluated))]
    rows, paired = compare_cli.comparison_rows(entries, threshold=60.0, resamples=10)
    assert paired and list(rows[0]) == list(rows[1])  # the same columns: empty evaluation cells for "plain"
    assert rows[0]["eval_median"] == "" and rows[1]["eval_median"] == 2.5
    for row in rows:  # the median of the steps taken (1200), not their mean (1333.3)
        assert (row["reached"], row["steps_to_threshold_median"], row["env_steps"]) == (3, 1200.0, 2000)


def test_many_seeds_print_their_lowest_and_quartiles_not_every_value():
    values = np.arange(40, dtype=float) * 10.0
    values[[7, 30]] = [-5.0, np.nan]
    assert train_cli.per_seed(values[:3], [4, 5, 6]) == "[0.0, 10.0, 20.0]"
    text = train_cli.per_seed(values, list(range(100, 140)))
    q25, q75 = np.nanpercentile(values, [25, 75])
    assert text == (f"lowest seed 130: nan, seed 107: -5.0, seed 100: 0.0, seed 101: 10.0, seed 102: 20.0; "
                    f"quartiles {q25:.1f} / {q75:.1f} over 40 seeds (each seed's in metrics.csv)")
