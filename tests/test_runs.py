"""pgjax.runs utilities around training runs: progress bars, seed keys and replays, divergence reports."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import compare as compare_cli
import evaluate as evaluate_cli
import train as train_cli

from pgjax import algos, checkpoints, envs, parallel, runs, score_stats, tables
from pgjax.algos import common, evaluation, presets


def test_progress_bar_import_is_quiet_in_jupyter_without_ipywidgets():
    # tqdm.auto warns at import in a Jupyter kernel that lacks ipywidgets; pgjax imports it quietly.
    code = """
import sys, types, warnings
import IPython
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")  # what tqdm checks for a kernel
sys.modules["ipywidgets"] = None  # absent, as on a bare Jupyter install
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import tqdm.autonotebook  # the unguarded import warns here
unguarded = [str(w.message) for w in caught if "IProgress" in str(w.message)]
sys.modules.pop("tqdm.autonotebook"); sys.modules.pop("tqdm.auto", None)  # import them afresh
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pgjax.runs
guarded = [str(w.message) for w in caught if "IProgress" in str(w.message)]
print(len(unguarded), len(guarded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0"], out.stdout + out.stderr


def test_seed_keys_and_replay_validate_their_arguments():
    with pytest.raises(ValueError, match="seed indices"):
        runs.seed_keys(0, [1, -2])
    with pytest.raises(ValueError, match="batch"):
        runs.replay_seeds(lambda key: key, runs.seed_keys(0, [1]), batch=0)
    for indices in (["1", "1"], ["8"]):  # repeated; beyond the sweep's --num-seeds 8
        with pytest.raises(SystemExit):
            train_cli.parse_args(["--algo", "ppo", "--seed-indices", *indices])


def test_non_finite_seeds_names_the_first_bad_update():
    from types import SimpleNamespace

    metrics = {
        "env_steps": np.ones((3, 5)),
        "episode_return": np.full((3, 5), np.nan),  # no episode finished: NaN by definition, not a divergence
        "explained_variance": np.full((3, 5), np.nan),
        "loss": np.array([[1.0] * 5, [1.0, 1.0, np.inf, np.nan, np.nan], [1.0] * 5]),
        "kl": np.array([[0.0] * 5, [0.0, 0.0, 0.0, np.nan, np.nan], [0.0] * 5]),
    }
    # Seeds 5 and 6 are non-finite in one leaf only: every leaf must be finite.
    params = {"w": np.array([[1.0, 2.0], [np.nan, 2.0], [1.0, np.inf]]), "b": np.ones((3, 1))}
    output = algos.common.TrainOutput(SimpleNamespace(params=params), None, metrics)
    assert runs.non_finite_seeds(output, seed_indices=[4, 5, 6]) == [
        "seed 5: loss non-finite from update 2; final parameters NOT finite",
        "seed 6: metrics finite; final parameters NOT finite",
    ]
    np.testing.assert_array_equal(runs.diverged_updates(metrics), [-1, 2, -1])  # from the metrics alone
    finite_metrics = {**metrics, "loss": np.ones((3, 5)), "kl": np.zeros((3, 5))}
    np.testing.assert_array_equal(runs.diverged_updates(finite_metrics), [-1, -1, -1])
    np.testing.assert_array_equal(runs.diverged_updates({"env_steps": np.ones((2, 3))}), [-1, -1])  # no losses
    finite = algos.common.TrainOutput(SimpleNamespace(params={"w": np.ones((3, 2))}), None, finite_metrics)
    assert runs.non_finite_seeds(finite) == []


def test_diverged_training_exits_with_an_error(tmp_path, capsys):
    argv = ["--algo", "a2c", "--env", "Pendulum-v1", "--total-timesteps", "2048", "--num-seeds", "2", "--no-progress",
            "--learning-rate", "1000", "--max-grad-norm", "1e9", "--reward-scale", "1e6",
            "--out", str(tmp_path / "run")]
    assert train_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "diverged (NaN or inf)" in err and "non-finite from update" in err and "fix:" in err
    # compare.py reads the same divergence back from metrics.csv alone: each seed and its first bad update, as
    # train.py named them from the run in memory, and a `diverged` column (their returns were counted as a failed
    # seed's, silently).
    reported = dict(re.findall(r"seed (\d+): [\w, ]+ non-finite from update (\d+)", err))
    assert reported, err
    out = str(tmp_path / "cmp")
    assert compare_cli.main([str(tmp_path / "run"), "--out", out]) == 0
    warning = capsys.readouterr().err
    assert dict(re.findall(r"(\d+) \(from update (\d+)\)", warning)) == reported, warning
    assert "a NaN policy's, counted as they are" in warning
    assert tables.read_csv(os.path.join(out, "comparison.csv"))[0]["diverged"] == str(len(reported))


def test_diverged_grid_cell_is_named(tmp_path, capsys):
    # A grid where only the lr = 1000 cell diverges: the report names that cell and its seeds, not the stable one.
    # Trained in two segments of 16 updates (--checkpoint-every, a grid's hyperparameters passed to each segment):
    # the divergence is reported after the first segment already, and the stable cell still trains.
    argv = ["--algo", "a2c", "--env", "Pendulum-v1", "--total-timesteps", "2048", "--num-seeds", "2", "--no-progress",
            "--grid", "learning_rate=1000,1e-5", "--max-grad-norm", "1e9", "--reward-scale", "1e6",
            "--checkpoint-every", "16", "--out", str(tmp_path / "grid")]
    assert train_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "warning: after update 16, 2 of 4 runs have diverged (NaN or inf); training goes on" in err, err
    assert "after update 32" not in err, err
    assert "of 4 seeds diverged (NaN or inf)" in err and "cell 0 (learning_rate=1000), seed " in err, err
    assert "cell 1" not in err, err
    rows = [r for r in runs.read_metrics_csv(str(tmp_path / "grid" / "metrics.csv")) if r["cell"] == "1"]
    assert len(rows) == 2 * 32 and all(np.isfinite(float(r["loss"])) for r in rows)


def test_read_metrics_inverts_the_written_csv(tmp_path):
    rng = np.random.default_rng(0)
    metrics = {"env_steps": np.tile(np.arange(1, 6) * 512.0, (3, 1)), "episode_return": rng.normal(size=(3, 5)),
               "loss": rng.normal(size=(3, 5)).astype(np.float32)}
    metrics["loss"][0, 0] = 0.1
    metrics["episode_return"][1, 2] = np.nan  # no episode finished in that update: an empty cell
    wall_time = np.array([0.5, 1.0, np.nan, 2.0, 2.5])
    path = str(tmp_path / "metrics.csv")
    runs.write_metrics_csv(path, runs.metrics_columns(metrics, wall_time, seed_indices=[4, 0, 9]))
    seeds, read, read_wall = runs.read_metrics(str(tmp_path))  # a run directory, or the file itself
    assert seeds == [4, 0, 9] and sorted(read) == sorted(metrics)
    for name, values in metrics.items():  # exact in each metric's dtype: the CSV holds the shortest round-trip text
        np.testing.assert_array_equal(read[name].astype(values.dtype), values)
    np.testing.assert_array_equal(read_wall, wall_time)

    with open(path) as f:
        lines = f.readlines()
    # float32 values as their own shortest text; float64 ones as theirs (the 7-digit float32 text would lose them)
    assert lines[1].split(",")[3:5] == [repr(float(metrics["episode_return"][0, 0])), "0.1"], lines[1]
    # The NaN of seed 1's update 2 (row 1 + 5 + 2) is an empty cell, as the docstring says, not the text "nan"
    header = lines[0].rstrip("\n").split(",")
    assert lines[1 + 5 + 2].rstrip("\n").split(",")[header.index("episode_return")] == ""
    (tmp_path / "cut.csv").write_text("".join(lines[:-1]))  # the last row of the last seed missing
    with pytest.raises(ValueError, match="its 14 rows are not the same updates 0..U-1 of each of its 3 seeds"):
        runs.read_metrics(str(tmp_path / "cut.csv"))
    (tmp_path / "grid.csv").write_text("cell," + lines[0] + "".join("0," + line for line in lines[1:]))
    with pytest.raises(ValueError, match="hyperparameter grid"):
        runs.read_metrics(str(tmp_path / "grid.csv"))
    with pytest.raises(ValueError, match="no metrics.csv"):
        runs.read_metrics(str(tmp_path / "missing"))


def test_mean_and_interval_is_a_student_t_interval_per_column():
    from scipy import stats

    mean, half = runs.mean_and_interval(np.array([[1.0], [3.0]]))  # s = sqrt(2), n = 2: t_{0.975, 1} s / sqrt(2)
    assert mean[0] == 2.0 and half[0] == pytest.approx(12.706204736, rel=1e-9)  # (1.96 normal: 1.96)
    values = np.random.default_rng(0).normal(size=(8, 3))
    values[3:, 1] = np.nan  # column 1 has 3 seeds with a value: 2 degrees of freedom
    values[1:, 2] = np.nan  # column 2 has one: no interval
    mean, half = runs.mean_and_interval(values)
    for column, n in ((0, 8), (1, 3)):
        finite = values[:n, column]
        low, high = stats.t.interval(0.95, n - 1, loc=finite.mean(), scale=stats.sem(finite))
        assert mean[column] == pytest.approx(finite.mean()) and half[column] == pytest.approx((high - low) / 2)
    assert mean[2] == values[0, 2] and np.isnan(half[2])
    assert np.isnan(runs.mean_and_interval(np.array([[5.0]]))[1][0])  # one seed: no interval (was 0)
    np.testing.assert_allclose(runs.t_quantile([1, 7, 1e9]), [stats.t.ppf(0.975, 1), stats.t.ppf(0.975, 7), 1.959964],
                               rtol=1e-6)


def test_summarize_final_returns_pairs_or_combines_independent_intervals():
    from scipy import stats

    a, b = np.array([1.0, 2.0, 4.0, np.nan]), np.array([3.0, 3.5, 7.0, 2.0])
    paired, independent = (runs.summarize_final_returns([a, b], [None, None], p) for p in (True, False))
    assert paired[1]["vs_best"] == independent[1]["vs_best_ci95"] == 0.0  # b has the higher mean: the best
    diff = (a - b)[:3]  # the pairs where both seeds finished an episode
    assert paired[0]["vs_best"] == pytest.approx(diff.mean())
    # Paired: the t interval of the 3 differences (2 degrees of freedom), as scipy's paired t-test gives it.
    low, high = stats.ttest_rel(a[:3], b[:3]).confidence_interval()
    assert paired[0]["vs_best_ci95"] == pytest.approx((high - low) / 2)
    assert independent[0]["vs_best"] == pytest.approx(a[:3].mean() - b.mean())
    # Independent: Welch's interval (unequal variances, Welch-Satterthwaite degrees of freedom), as scipy's.
    low, high = stats.ttest_ind(a[:3], b, equal_var=False).confidence_interval()
    assert independent[0]["vs_best_ci95"] == pytest.approx((high - low) / 2)
    se2 = a[:3].var(ddof=1) / 3 + b.var(ddof=1) / 4
    dof = se2 ** 2 / ((a[:3].var(ddof=1) / 3) ** 2 / 2 + (b.var(ddof=1) / 4) ** 2 / 3)
    assert independent[0]["vs_best_ci95"] == pytest.approx(stats.t.ppf(0.975, dof) * np.sqrt(se2))
    assert paired[0]["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(a[:3]))
    assert paired[0]["finished"] == 3 and paired[0]["seeds"] == 4 and paired[0]["worst"] == 1.0
    assert (paired[0]["median"], paired[0]["best"], paired[1]["median"]) == (2.0, 4.0, 3.25)
    # The robust columns use the finished seeds only: a's 3 (no cut at n = 3) against b's 4 (one cut each end).
    assert paired[0]["iqm"] == pytest.approx(7 / 3) and paired[1]["iqm"] == pytest.approx((3.0 + 3.5) / 2)
    pairs = [1.0 if x > y else 0.5 if x == y else 0.0 for x in a[:3] for y in b]
    assert paired[0]["p_improve_vs_best"] == independent[0]["p_improve_vs_best"] == np.mean(pairs)  # 4 / 12
    assert paired[1]["p_improve_vs_best"] == 0.5
    assert paired[0]["iqm_low"] <= paired[0]["iqm"] <= paired[0]["iqm_high"]
    # Welch's interval from 2 seeds a group (the fewest that have one), and from two constant groups: no spread.
    two = runs.summarize_final_returns([np.array([1.0, 3.0]), np.array([4.0, 8.0])], [None, None], False)
    low, high = stats.ttest_ind([1.0, 3.0], [4.0, 8.0], equal_var=False).confidence_interval()
    assert two[0]["vs_best_ci95"] == pytest.approx((high - low) / 2)
    constant = runs.summarize_final_returns([np.array([2.0, 2.0]), np.array([5.0, 5.0])], [None, None], False)
    assert (constant[0]["vs_best"], constant[0]["vs_best_ci95"]) == (-3.0, 0.0)
    # An infinite return (a diverged run's) is warned about, and its group is not the best while a finite one is left.
    diverged = [np.array([1.0, np.inf, 3.0]), np.array([1.0, 2.0, 3.0]), np.array([-np.inf, 0.0, 0.0])]
    with pytest.warns(RuntimeWarning, match=r"infinite final returns in groups \[0, 2\] \(at seeds \{0: \[1\], "
                                            r"2: \[0\]\} of each group\)"):
        rows = runs.summarize_final_returns(diverged, [None] * 3, True)
    assert rows[1]["vs_best"] == rows[1]["vs_best_ci95"] == 0.0 and rows[0]["mean"] == rows[0]["vs_best"] == np.inf
    assert np.isnan(rows[0]["ci95"]) and rows[2]["vs_best"] == -np.inf


def test_area_under_curve_and_steps_to_threshold():
    nan = np.nan
    metrics = {"env_steps": np.tile(np.arange(1.0, 7.0) * 100, (3, 1)),
               "episode_return": np.array([[nan, 10.0, nan, 30.0, 30.0, 50.0],   # 10 carried over update 2
                                           [40.0, 0.0, 60.0, 60.0, 60.0, 60.0],
                                           [nan, nan, nan, nan, nan, nan]])}
    auc = runs.area_under_curve(metrics)
    np.testing.assert_allclose(auc[:2], [(10 + 10 + 30 + 30 + 50) / 5, (40 + 0 + 60 * 4) / 6])
    assert np.isnan(auc[2])
    # window 1: the first update at >= 40; window 2: the first whose last two finished updates average >= 40. Seed
    # 1's first update alone (40) counted as reached with a window of 2 before the window was required to be full.
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 40.0, window=1), [600.0, 100.0, nan])
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 40.0, window=2), [600.0, 400.0, nan])
    # A run shorter than the window is judged over all its updates, at its last one (seed 1: 280 / 6 = 46.7).
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 40.0, window=50), [nan, 600.0, nan])
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 47.0, window=50), [nan, nan, nan])
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 45.0, window=2), [nan, 400.0, nan])
    # seed 1 first reaches 50 at update 2 (60), but its 3-update mean reaches 50 only at update 4 (0, 60, 60 is 40)
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 50.0, window=1), [600.0, 300.0, nan])
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 50.0, window=3), [nan, 500.0, nan])
    # Seed 0's update 3 ([nan, 30]: 30 from one finished update) is not 30.5: the NaN adds nothing to the sum.
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, 30.5, window=2), [600.0, 400.0, nan])
    # A threshold below 0 (Pendulum's returns) is not reached by windows without a finished episode.
    np.testing.assert_array_equal(runs.steps_to_threshold(metrics, -1.0, window=1), [200.0, 100.0, nan])
    with pytest.raises(ValueError, match="window must be a positive int"):
        runs.steps_to_threshold(metrics, 1.0, window=0)


def test_smoothed_returns_carries_the_last_value_forward():
    nan = np.nan
    returns = np.array([[nan, 1.0, nan, nan, 4.0, nan],
                        [2.0, nan, 3.0, nan, nan, nan],
                        [nan, nan, nan, nan, nan, nan]])
    expected = np.array([[nan, 1.0, 1.0, 1.0, 4.0, 4.0],
                         [2.0, 2.0, 3.0, 3.0, 3.0, 3.0],
                         [nan, nan, nan, nan, nan, nan]])
    np.testing.assert_array_equal(runs.smoothed_returns(returns), expected)
    np.testing.assert_array_equal(returns[0, :2], [nan, 1.0])  # the input is left as it was


def test_best_group_is_not_one_whose_missing_seeds_left_only_its_lucky_ones():
    # Group 0's mean over its finished seed is 500, but its other seed never finished an episode: the best is the
    # highest mean among the groups whose seeds all finished (group 1); group 0's vs_best is then positive.
    returns = [np.array([500.0, np.nan]), np.array([200.0, 300.0]), np.array([100.0, 150.0])]
    for paired, ahead in ((True, 500.0 - 200.0), (False, 500.0 - 250.0)):  # paired: seed 0's difference alone
        rows = runs.summarize_final_returns(returns, [None] * 3, paired)
        assert [r["vs_best"] for r in rows] == [ahead, 0.0, -125.0], paired
        assert rows[0]["finished"] == 1 and rows[0]["seeds"] == 2 and rows[0]["p_improve_vs_best"] == 1.0
    # No group has all its seeds: the highest mean among all of them.
    rows = runs.summarize_final_returns([np.array([1.0, np.nan]), np.array([np.nan, 3.0])], [None] * 2, False)
    assert [r["vs_best"] for r in rows] == [-2.0, 0.0]


def test_one_unbatched_run_is_refused_before_anything_is_written(tmp_path):
    """save_run and non_finite_seeds read metrics [seeds, updates]: one run's [updates] was read as that many seeds
    (config.json written with num_seeds = updates, then a bare unpacking error); evaluate refuses params with a
    seeds axis (a flax shape error before)."""
    from types import SimpleNamespace

    metrics = {"env_steps": np.arange(1, 6) * 512, "episode_return": np.ones(5), "loss": np.ones(5)}
    one_run = algos.common.TrainOutput(SimpleNamespace(params={"w": np.ones((3, 2))}), None, metrics)
    with pytest.raises(ValueError, match=r"save_run: expected a vmapped run's output .* shape \(5,\)"):
        runs.save_run(str(tmp_path / "run"), "ppo", algos.PPOConfig(), one_run, seed=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"non_finite_seeds: expected a vmapped run's output"):
        runs.non_finite_seeds(one_run)
    seeds_axis = {"params": {"actor": {"Dense_0": {"kernel": np.ones((2, 4, 64)), "bias": np.ones((2, 64))}}}}
    with pytest.raises(ValueError, match=r"evaluate: params hold a leading seeds axis"):
        runs.evaluate(jax.random.key(0), algos.PPOConfig(), seeds_axis)


def test_progress_bar_counts_each_update_once_and_fills_the_wall_times_between_reports(capsys):
    """Progress (the host side of training's callback), fed as vmapped seeds feed it: each update's report arrives
    once per seed, and only every k-th update reports. The bar counts env steps per seed, each update once, shows
    the first seed's return, and `close` interpolates the wall times of the updates that did not report."""
    progress = runs.Progress(5, 8)  # shown by default
    assert progress.bar is None and progress.total == 40 and progress.done == 0
    progress(0, {"episode_return": np.float32(3.0)})
    progress(0, {"episode_return": np.float32(9.0)})  # update 0 again, from the second seed
    assert progress.bar.n == 8 and progress.bar.total == 40 and not progress.bar.disable
    assert progress.bar.postfix == "episode_return=3.0"
    progress(3, {"episode_return": np.float32(np.nan)})  # updates 1 and 2 did not report
    assert progress.bar.n == 32 and progress.done == 4 and progress.bar.postfix == "episode_return=3.0"
    reported = progress.wall_time[[0, 3]]
    assert 0 <= reported[0] <= reported[1] < 60  # seconds since the Progress was made
    progress.close()
    np.testing.assert_allclose(progress.wall_time, reported[0] + np.diff(reported) * np.array([0, 1, 2, 3, 3]) / 3)
    assert "env steps per seed" in capsys.readouterr().err
    silent = runs.Progress(3, 8)  # closed before any update reported (a run that failed to compile)
    silent.close()
    assert silent.bar is None and np.isnan(silent.wall_time).all()
    resumed = runs.Progress(5, 8)
    resumed.resume_at(3, np.array([100.0, 150.0, 200.0]))  # a resumed run: 3 updates done, the third at 200 s
    resumed(3, {"episode_return": np.float32(1.0)})
    assert resumed.bar.n == 32 and resumed.done == 4 and 200.0 <= resumed.wall_time[3] < 260.0
    resumed.mark_done(5)  # the end of a segment that no callback reported
    assert resumed.wall_time[3] <= resumed.wall_time[4] < 260.0
    unmeasured = runs.Progress(4, 8, show=False)
    unmeasured.resume_at(2, np.array([np.nan, np.nan]))  # a checkpoint without wall times: the clock starts now
    unmeasured(2, {"episode_return": np.float32(1.0)})
    assert 0.0 <= unmeasured.wall_time[2] < 0.9
    hidden = runs.Progress(2, 8, show=False)
    hidden(0, {"episode_return": np.float32(1.0)})
    assert hidden.bar.disable


def test_metrics_files_plots_and_grid_folders_in_small(tmp_path, monkeypatch):
    """Pieces of writing and reading runs that no run exercised at their edges: metrics.csv into folders not made
    yet (or the current one), the learning curve's label counting the seeds, losses at updates that learned from no
    step not counted as diverged, a grid's folder told apart by its summary.csv alone, a metrics.csv of one row
    (read, or refused as a grid's) and seeds or updates that are not ints, and the names `clear_run` removes."""
    monkeypatch.chdir(tmp_path)
    columns = {"seed": [0], "update": [0], "env_steps": [512], "episode_return": [""]}
    for path in (tmp_path / "new" / "deeper" / "metrics.csv", "metrics.csv"):
        runs.write_metrics_csv(str(path), columns)
        assert runs.read_metrics_csv(str(path)) == [{"seed": "0", "update": "0", "env_steps": "512",
                                                     "episode_return": ""}]
    drawn = {}
    monkeypatch.setattr(runs, "plot_learning_curves", lambda path, curves, title: drawn.update(curves))
    runs.plot_learning_curve("curve.png", {"env_steps": np.zeros((3, 5))}, "PPO")
    assert list(drawn) == ["mean over 3 seeds (95% interval)"]
    nan = np.nan
    metrics = {"valid_fraction": np.array([[0.0, 0.5]]), "loss": np.array([[nan, nan]]),
               "episode_return": np.array([[nan, nan]])}
    diverged = runs.diverged_entries(metrics)
    assert sorted(diverged) == ["loss", "valid_fraction"] and diverged["loss"].tolist() == [[False, True]]
    without = runs.diverged_entries({"loss": np.array([[nan, 1.0]])})  # no valid_fraction: every update learned
    assert without["loss"].tolist() == [[True, False]]
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "summary.csv").write_text("cell,learning_rate\n0,0.001\n")
    with pytest.raises(ValueError, match=r"is a hyperparameter grid: load one of its cells"):
        runs.load_run(str(tmp_path / "grid"))  # its config.json lost: still a grid, not an incomplete run
    (tmp_path / "one_row.csv").write_text("cell,seed,update,env_steps,episode_return\n0,0,0,512,1.0\n")
    with pytest.raises(ValueError, match="hyperparameter grid"):
        runs.read_metrics(str(tmp_path / "one_row.csv"))
    (tmp_path / "one_row.csv").write_text("seed,update,env_steps,episode_return\n3,0,512,1.0\n")
    seeds, metrics, _ = runs.read_metrics(str(tmp_path / "one_row.csv"))  # one seed, one update
    assert seeds == [3] and type(seeds[0]) is int and metrics == {"env_steps": [[512.0]], "episode_return": [[1.0]]}
    for column, row in (("seed", "0.5,0"), ("update", "0,0.5")):
        (tmp_path / "half.csv").write_text(f"seed,update,env_steps,episode_return\n{row},512,1.0\n")
        with pytest.raises(ValueError, match=rf"row 1, column {column}: '0.5' is not an int"):
            runs.read_metrics(str(tmp_path / "half.csv"))
    # What clear_run removes: pgjax's files and cell-K folders, never a folder or file of the user's.
    for name in ("cell-0", "cell-12", "plots", "cell-x"):
        (tmp_path / "grid" / name).mkdir()
    (tmp_path / "grid" / "cell-3").write_text("a file, not a cell")
    assert runs.run_files(str(tmp_path / "grid")) == ["cell-0", "cell-12", "summary.csv"]


def test_grid_cells_configs_lanes_and_summary_in_small():
    """A cell's config holds its hyperparameters and its "env.<field>" values as env_kwargs; only an algorithm that
    restarts episodes at each update needs its rollouts to cover a cell's step limit (PPO's need not); a grid's
    summary compares the cells paired, seed by seed (every cell runs the same seeds)."""
    cell = {"learning_rate": 1e-3, "env.length": 0.25}
    config = runs.grid_cell_config(algos.PPOConfig(env_kwargs={"gravity": 12.0}), cell)
    assert config.learning_rate == 1e-3 and dict(config.env_kwargs) == {"gravity": 12.0, "length": 0.25}
    keys = runs.seed_keys(0, [0, 1])
    _, hparams = runs.grid_lanes(algos.PPOConfig(num_steps=16), [{"env.max_steps_in_episode": 1000.0}], keys)
    assert hparams["env.max_steps_in_episode"].tolist() == [1000.0, 1000.0]
    returns = np.array([[1.0, 4.0], [2.0, 9.0], [0.0, 5.0], [1.0, 6.0], [2.0, 8.0], [0.0, 7.0]])  # 2 cells x 3 seeds
    cells = [{"ent_coef": 0.0}, {"ent_coef": 0.01}]
    finals = [returns[:3, -1], returns[3:, -1]]  # final_returns: the last update of 2
    rows = runs.grid_summary(cells, {"episode_return": returns})
    assert [row.pop("cell") for row in rows] == [0, 1] and [row.pop("ent_coef") for row in rows] == [0.0, 0.01]
    np.testing.assert_equal(rows, runs.summarize_final_returns(finals, [None, None], paired=True))
    unpaired = runs.summarize_final_returns(finals, [None, None], paired=False)
    assert rows[0]["vs_best_ci95"] != unpaired[0]["vs_best_ci95"]  # these data tell the two apart
    evaluated = runs.grid_summary(cells, {"episode_return": returns, "eval_return": returns[:, ::-1]})
    assert [row["eval_median"] for row in evaluated] == [1.0, 1.0] and evaluated[1]["eval_worst"] == 0.0


def test_a_one_cell_grid_saves_what_it_holds_and_nothing_else(tmp_path):
    """save_grid and save_run's config.json for 2 seeds x 3 updates of one cell: the seed count (not the
    updates'), the grid's values, and no "replay" or "env_source" entry for a run that is neither a replay nor
    on a registered environment."""
    from collections import namedtuple

    metrics = {"env_steps": np.tile([512.0, 1024.0, 1536.0], (2, 1)), "episode_return": np.arange(6.0).reshape(2, 3)}
    agent = namedtuple("Agent", "params")({"w": np.ones((2, 3))})  # a pytree, as the agent state is
    output = algos.common.TrainOutput(agent, None, metrics)
    rows = runs.save_grid(str(tmp_path), "ppo", algos.PPOConfig(), [{"learning_rate": 1e-3}], output, seed=0)
    assert [row["seeds"] for row in rows] == [2]
    for folder in (tmp_path, tmp_path / "cell-0"):
        with open(folder / "config.json") as f:
            meta = json.load(f)
        assert meta["num_seeds"] == 2 and meta["seed_indices"] == [0, 1]
        assert not {"replay", "env_source"} & set(meta), sorted(meta)
    assert meta["config"]["learning_rate"] == 1e-3
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["grid"] == {"learning_rate": [1e-3]}


def test_learning_curves_draw_each_mean_with_its_interval(tmp_path, monkeypatch):
    """The plot's band is the 95% t interval of the mean (`mean_and_interval` of `smoothed_returns`), from the
    mean minus to the mean plus its half-width; one seed's curve (no interval) is drawn too; the in-run evaluations
    are points at every evaluated update, one where a seed's evaluation finished no episode (NaN) included."""
    import matplotlib.axes

    def record(name: str) -> list:
        """The positional arguments of every call of Axes.<name>, which still draws."""
        calls, draw = [], getattr(matplotlib.axes.Axes, name)

        def recording(self, *args, **kwargs):
            calls.append(args)
            return draw(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, recording)
        return calls

    bands, points = record("fill_between"), record("errorbar")
    returns = np.array([[1.0, np.nan, 3.0], [2.0, 4.0, 5.0], [0.0, 1.0, 2.0]])
    steps = np.tile([100, 200, 300], (3, 1))
    # Evaluated after updates 0 and 2; one seed's evaluation at update 0 finished no episode (NaN).
    evals = np.array([[np.nan, np.nan, 7.0], [5.0, np.nan, 9.0], [3.0, np.nan, 8.0]])
    path = str(tmp_path / "curves.png")
    runs.plot_learning_curves(path, {"three seeds": {"env_steps": steps, "episode_return": returns,
                                                     "eval_return": evals},
                                     "one seed": {"env_steps": steps[:1], "episode_return": returns[:1]}}, "PPO")
    assert os.path.getsize(path) > 0 and len(bands) == 2
    mean, half = runs.mean_and_interval(runs.smoothed_returns(returns))
    x, low, high = bands[0]
    np.testing.assert_array_equal(x, [100, 200, 300])
    np.testing.assert_allclose(low, mean - half)
    np.testing.assert_allclose(high, mean + half)
    assert np.isnan(bands[1][1]).all() and np.isnan(bands[1][2]).all()
    (x, y), = points
    np.testing.assert_array_equal(x, [100, 300])
    np.testing.assert_allclose(y, [4.0, 8.0])


def test_summaries_and_columns_reject_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"paired groups need equal numbers of seeds .*\[1, 4\]"):
        runs.summarize_final_returns([np.array([5.0]), np.array([1.0, 2.0, 3.0, 10.0])], [None, None], paired=True)
    with pytest.raises(ValueError, match="7 lanes do not split into 3 cells"):
        runs.grid_cell_outputs({"x": np.arange(7)}, 3)
    assert [c["x"].tolist() for c in runs.grid_cell_outputs({"x": np.arange(6)}, 3)] == [[0, 1], [2, 3], [4, 5]]
    metrics = {"env_steps": np.array([[512, 1024], [512, 1024]]), "episode_return": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"wall_time must be \[updates\] = \[2\]"):
        runs.metrics_columns(metrics, wall_time=np.array([0.5]))  # was written as 2 rows, not 4
    with pytest.raises(ValueError, match=r"seed_indices must be \[seeds\] = \[2\]"):
        runs.metrics_columns(metrics, seed_indices=[7])  # was written as seed 7's rows only
    with pytest.raises(ValueError, match="every metric must be"):
        runs.metrics_columns({**metrics, "loss": np.ones((2, 3))})
    with pytest.raises(ValueError, match="unequal lengths"):
        runs.write_metrics_csv(str(tmp_path / "metrics.csv"), {"seed": [0, 0], "update": [0]})


def test_malformed_metrics_and_config_files_name_the_file_and_place(tmp_path, capsys):
    header = "seed,update,env_steps,episode_return,loss\n"
    cases = {"0,0,512,1.5,0.1\n0,1,1024,abc,0.2\n": "row 2, column episode_return: 'abc' is not a number",
             "0,0,512,1.5,0.1\n0,x,1024,2,0.2\n": "row 2, column update: 'x' is not an int",
             "0,0,512,1.5,0.1\n0,1,1024,2\n": "row 2 has 4 cells, the header 5",
             "0,0,512,1.5,0.1,9\n0,1,1024,2,0.2\n": "row 1 has 6 cells, the header 5"}
    path = str(tmp_path / "metrics.csv")
    for body, message in cases.items():
        with open(path, "w") as f:
            f.write(header + body)
        with pytest.raises(ValueError) as info:
            runs.read_metrics(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), (body, info.value)
    with open(path, "w") as f:
        f.write(header + "0,0,512,,0.1\n0,1,1024,2,0.2\n")
    seeds, metrics, wall_time = runs.read_metrics(path)  # an empty cell is NaN; no wall_time column: NaN
    assert seeds == [0] and np.isnan(metrics["episode_return"][0, 0]) and np.isnan(wall_time).all()
    with open(path, "wb") as f:  # a binary file: the codec's UnicodeDecodeError named no file
        f.write(b"\xa1\x00\xff" * 10)
    with pytest.raises(ValueError, match=f"^{path}: not a pgjax metrics.csv \\(not UTF-8 text: 'utf-8' codec"):
        runs.read_metrics(path)

    (tmp_path / "params.msgpack").write_bytes(b"")
    config_path = str(tmp_path / "config.json")
    bad_configs = (("{bad json", "not valid JSON"), ("[1, 2]", "a JSON object"), (b"\xff\xfe", "not valid JSON"))
    for text, message in bad_configs:
        with open(config_path, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        with pytest.raises(ValueError, match=f"^{config_path}: .*{message}"):
            runs.load_run(str(tmp_path))
    # evaluate.py reads config.json itself first (a grid's lists its cells): a binary one is named there too.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate_cli.main([str(tmp_path)])
    assert f"error: {config_path}: 'utf-8' codec can't decode" in capsys.readouterr().err


def _benchmark_module(filename):
    """A script of benchmarks/ loaded as a module (its main does not run)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", filename)
    spec = importlib.util.spec_from_file_location(filename[:-3].lstrip("_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_fails_a_target_when_a_seed_has_no_final_return():
    quality = _benchmark_module("quality.py")  # (its main, the 10-minute benchmark, does not run)
    row = {"seeds": 2, **quality.final_stats(np.array([500.0, np.nan]))}
    assert row["finished"] == 1 and row["median"] == 500.0 and np.isnan(row["worst"])
    assert quality.target_met(row, 475.0) is False and quality.target_met(row, None) == ""
    row = {"seeds": 2, **quality.final_stats(np.array([500.0, 480.0]))}
    assert row["worst"] == 480.0 and quality.target_met(row, 475.0) is True


def test_quality_benchmark_reports_the_preset_run_of_train_pys_seeds(tmp_path, monkeypatch, capsys):
    """quality.py's row for a pair (here A2C on CartPole-v1 at 30 updates, 3 seeds) is the preset's run of seeds 0..2
    as train.py draws them, evaluated after the last update; its statistics recomputed here in NumPy."""
    quality = _benchmark_module("quality.py")
    # 100 steps more than 30 updates of 256 (8 envs x 32 steps): the row reports the 7680 steps that ran.
    monkeypatch.setattr(quality, "TARGETS", [("a2c", "CartPole-v1", 30 * 256 + 100, 15.0)])
    out = tmp_path / "quality.csv"
    assert quality.main(["--seeds", "3", "--eval-episodes", "2", "--out", str(out)]) == 0
    (row,) = tables.read_csv(str(out))
    config = algos.A2CConfig(**{**presets.preset("a2c", "CartPole-v1"), "env_id": "CartPole-v1",
                                "total_timesteps": 30 * 256 + 100, "eval_every": 30, "eval_episodes": 2})
    # Split over the devices as quality.py does (one here): the same program, so the same bits on any backend.
    metrics = parallel.vmap_sharded(algos.a2c.make_train(config))(runs.seed_keys(0, [0, 1, 2])).metrics
    returns = np.asarray(metrics["episode_return"], np.float64)[:, -3:]  # the last 10% of 30 updates
    final = np.array([np.mean(r[~np.isnan(r)]) for r in returns])
    assert np.all(np.isfinite(final))
    assert row["per_seed"] == " ".join(f"{x:.1f}" for x in final)
    for name, value in (("median", np.median(final)), ("worst", final.min()), ("best", final.max())):
        assert float(row[name]) == pytest.approx(value, rel=1e-5), name
    assert float(row["iqm"]) == pytest.approx(final.mean(), rel=1e-5)  # 3 seeds: the interquartile mean cuts none
    low, high = score_stats.bootstrap_interval(final)  # the seeds' IQM resampled (score_stats' own tests check it)
    assert (float(row["iqm_low"]), float(row["iqm_high"])) == pytest.approx((low, high), rel=1e-5)
    evaluation = np.asarray(metrics["eval_return"], np.float64)[:, -1]
    assert float(row["eval_median"]) == pytest.approx(np.median(evaluation), rel=1e-5)
    assert float(row["eval_worst"]) == pytest.approx(evaluation.min(), rel=1e-5)
    assert (int(row["env_steps"]), int(row["seeds"]), int(row["finished"])) == (30 * 256, 3, 3)
    met = bool(np.median(final) >= 15.0 and final.min() >= 15.0)
    assert row["target"] == "15.0" and row["met"] == str(met)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {out}"
    assert printed[-2].split()[:8] == ["a2c", "CartPole-v1", "7680", f"{float(row['median']):.1f}",
                                       f"{float(row['worst']):.1f}", "3/3", "15.0", str(met)]


def test_rejax_comparison_accepts_only_the_fields_it_names_and_names_the_row_after_them():
    """ppo_vs_rejax.py --pgjax-config: speed fields keep the plain row name; bfloat16 and Adam's epsilon rename the
    row (the thirty-second session documented '{"adam_eps": 1e-8}', which the check then refused); other fields are
    refused, and the worker's config carries the fields."""
    bc = _benchmark_module("_bench_common.py")
    assert bc.impl_suffix(bc.parse_speed_config('{"unroll": 8}')) == ""
    assert bc.impl_suffix(bc.parse_speed_config('{"compute_dtype": "bfloat16"}')) == "-bfloat16"
    fields = bc.parse_speed_config('{"adam_eps": 1e-8, "compute_dtype": "bfloat16"}')
    assert bc.impl_suffix(fields) == "-bfloat16-eps1e-08"
    assert bc.pgjax_ppo_config(4096, **fields).adam_eps == 1e-8
    with pytest.raises(ValueError, match="may set only"):
        bc.parse_speed_config('{"learning_rate": 1e-3}')


def _worker_record(impl, seeds, run_s, round_index=0, backend="cpu", returns=None):
    """A worker's record as ppo_vs_rejax.py reads it back (made up: 1000 env steps per seed)."""
    return {"impl": impl, "seeds": seeds, "steps_per_seed": 1000, "env_steps": 1000 * seeds, "compile_s": 1.0,
            "run_s": run_s, "final_returns": returns, "round": round_index,
            "info": {"jax": "0", "backend": backend, "device": backend}}


def test_rejax_comparison_judges_each_target_as_the_issue_states_it():
    """ppo_vs_rejax.py's verdicts on made-up records: a speed target is judged on the median of the round-by-round
    ratios (here below 1.5x while the fastest rounds give 1.67x), on the row's own backend only; the GPU target of
    no seed of 2048 below 475 fails on one seed at 474.9; each row's share of the raw stepping rate."""
    bench = _benchmark_module("ppo_vs_rejax.py")
    gpu_returns = [500.0] * 2047
    records = [
        _worker_record("gymnax-ceiling", 1, 2.0), _worker_record("rejax", 1, 10.0), _worker_record("pgjax", 1, 6.0),
        _worker_record("gymnax-ceiling", 1, 2.5, 1), _worker_record("rejax", 1, 11.0, 1),
        _worker_record("pgjax", 1, 9.0, 1),
        _worker_record("rejax", 32, 20.0), _worker_record("pgjax", 32, 15.0), _worker_record("pgjax-2dev", 32, 16.0),
        _worker_record("rejax", 2048, 10.0, backend="gpu", returns=[500.0] * 2048),
        _worker_record("pgjax", 2048, 7.0, backend="gpu", returns=[*gpu_returns, 474.9]),
        _worker_record("pgjax-2dev", 2048, 7.0, backend="gpu", returns=[*gpu_returns, 475.0]),
        _worker_record("pgjax-split-2dev", 2048, 7.0, returns=[500.0] * 2048),  # a CPU row: no GPU verdict
    ]
    _, _, by, run_times = bench.compare(records)
    assert run_times["pgjax", 1] == [6.0, 9.0] and by["pgjax", 1]["run_s"] == 6.0
    assert by["pgjax", 1]["env_steps_per_s"] == pytest.approx(1000 / 6)
    assert by["pgjax", 1]["ratio_pgjax_rejax"] == pytest.approx(10 / 6) and by["rejax", 1]["ratio_pgjax_rejax"] == 1
    assert by["gymnax-ceiling", 1]["ratio_pgjax_rejax"] is None
    assert by["pgjax", 2048]["frac_ge_475"] == pytest.approx(2047 / 2048) and by["pgjax", 2048]["worst_return"] == 474.9
    lines = bench.verdicts(records, by, ("pgjax", "pgjax-2dev", "pgjax-split-2dev"))
    tail = "steps per seed; the issue's targets are for 5e5)"
    assert lines == [
        "target cpu 1 seed(s): pgjax >= 1.5x rejax -> 1.44x, NOT MET (fastest rounds 1.67x; per round 1.67, 1.22: "
        f"median 1.44x, judged on it; at 1000 {tail}",
        f"target cpu 32 seed(s): pgjax >= 1.3x rejax -> 1.33x, MET (fastest rounds 1.33x; at 1000 {tail}",
        f"target cpu 32 seed(s): pgjax-2dev >= 1.3x rejax -> 1.25x, NOT MET (fastest rounds 1.25x; at 1000 {tail}",
        f"target gpu 2048 seed(s): pgjax >= 1.3x rejax -> 1.43x, MET (fastest rounds 1.43x; at 1000 {tail}",
        f"target gpu 2048 seed(s): pgjax-2dev >= 1.3x rejax -> 1.43x, MET (fastest rounds 1.43x; at 1000 {tail}",
        "target gpu 2048 seed(s): pgjax, no seed below 475 -> worst seed 474.9, 99.95% of seeds >= 475, NOT MET",
        "target gpu 2048 seed(s): pgjax-2dev, no seed below 475 -> worst seed 475.0, 100.00% of seeds >= 475, MET",
        "pgjax at 1 seed(s) runs at 33.3% of the raw gymnax stepping rate",
    ]


def test_a_normalised_run_reloads_its_statistics_and_evaluates_as_trained(tmp_path):
    """save_run keeps each seed's observation statistics (env 0's copy) and load_run restores them: no test saved a
    normalised run, so saving seed 0's per-environment copies in their place, or reloading without them (a policy
    then evaluated on raw observations), passed every test. evaluate(deterministic=False) samples its actions: the
    flag was never checked either."""
    config = algos.PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, total_timesteps=64, num_minibatches=1,
                             hidden_sizes=(8,), normalize_observations=True)
    _, make_train = algos.get("ppo")
    output = jax.jit(jax.vmap(make_train(config)))(jax.random.split(jax.random.key(0), 2))
    runs.save_run(str(tmp_path), "ppo", config, output, seed=0)
    _, loaded_config, params, stats = runs.load_run(str(tmp_path))
    trained = evaluation.observation_statistics(output.env_state)  # leaves [seeds, envs, ...]
    assert stats is not None
    for got, want in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(trained)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want)[:, 0])
    means = [np.asarray(x) for x in jax.tree_util.tree_leaves(trained) if np.ndim(x) == 3]
    assert any(not np.array_equal(m[0, 0], m[1, 0]) for m in means)  # the seeds' statistics differ

    seed = lambda tree, *index: jax.tree_util.tree_map(lambda x: x[index], tree)  # noqa: E731
    key = jax.random.key(5)
    reloaded = runs.evaluate(key, loaded_config, seed(params, 1), seed(stats, 1), num_episodes=4)
    in_memory = runs.evaluate(key, config, seed(output.agent.params, 1), seed(trained, 1, 0), num_episodes=4)
    np.testing.assert_array_equal(np.asarray(reloaded), np.asarray(in_memory))
    # The evaluation reads the statistics and never updates them, so their count changes nothing (were they
    # updated, a count of 1 would let the first observations move them).
    recounted = seed(stats, 1).replace(count=jnp.ones((), jnp.int32))
    np.testing.assert_array_equal(np.asarray(runs.evaluate(key, loaded_config, seed(params, 1), recounted, 4)),
                                  np.asarray(reloaded))
    sampled = runs.evaluate(key, config, seed(params, 1), seed(stats, 1), num_episodes=4, deterministic=False)
    assert not np.array_equal(np.asarray(sampled), np.asarray(reloaded))
    # evaluate.py passes each seed its statistics (seed i under key(--seed + i): seed 1 under key(5) with --seed 4).
    csv = str(tmp_path / "evaluation.csv")
    assert evaluate_cli.main([str(tmp_path), "--episodes", "4", "--seed", "4", "--csv", csv]) == 0
    script = [float(r["episode_return"]) for r in tables.read_csv(csv) if r["seed"] == "1"]
    assert script == np.asarray(reloaded, np.float64).tolist()


def test_a_damaged_or_mismatched_run_directory_is_refused_naming_its_file(tmp_path):
    """load_run reads files a user may have copied, edited or paired by hand. A truncated params.msgpack stopped
    evaluate.py with msgpack's "Unpack failed: incomplete input" (no file named), a config.json whose hidden sizes
    or environment were edited with a flax shape error deep in the first evaluation, and a metrics.csv holding only
    its header was called "not a pgjax metrics.csv" though its columns are pgjax's. Each is now a ValueError that
    names the file and what is wrong, before anything compiles."""
    config = algos.PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, total_timesteps=32, num_minibatches=1,
                             hidden_sizes=(8,))
    output = jax.jit(jax.vmap(algos.get("ppo")[1](config)))(jax.random.split(jax.random.key(0), 2))
    runs.save_run(str(tmp_path / "run"), "ppo", config, output, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the intact run loads without a word, its 2 seeds on axis 0
        _, _, params, _ = runs.load_run(str(tmp_path / "run"))
    assert {np.shape(x)[0] for x in jax.tree_util.tree_leaves(params)} == {2}

    def damaged(name, edit_config=None, drop_config=(), params_bytes=None, csv_text=None):
        run = tmp_path / name
        shutil.copytree(tmp_path / "run", run)
        if edit_config or drop_config:
            meta = json.loads((run / "config.json").read_text())
            meta["config"].update(edit_config or {})
            for field in drop_config:
                del meta["config"][field]
            (run / "config.json").write_text(json.dumps(meta))
        if params_bytes is not None:
            (run / "params.msgpack").write_bytes(params_bytes)
        if csv_text is not None:
            (run / "metrics.csv").write_text(csv_text)
        return str(run)

    saved = (tmp_path / "run" / "params.msgpack").read_bytes()
    with pytest.raises(ValueError, match=r"params\.msgpack: not a parameters file that pgjax wrote \(Unpack failed"):
        runs.load_run(damaged("truncated", params_bytes=saved[:100]))
    with pytest.raises(ValueError, match=r"params\.msgpack: not a parameters file .*no 'params' mapping"):
        runs.load_run(damaged("a-list", params_bytes=serialization.msgpack_serialize([1, 2])))
    # Other widths: the first kernel is [seeds, 4, 8] where the config's network needs [seeds, 4, 16].
    with pytest.raises(ValueError, match=r"parameter \['params'\]\['actor'\].* has shape \(2, 8, 2\), but the "
                                         r"config's network \(\(16,\) hidden units on 4 inputs\) gives "
                                         r"\[seeds, \*\(16, 2\)\]; were config.json and params.msgpack written"):
        runs.load_run(damaged("wider", edit_config={"hidden_sizes": [16]}))
    with pytest.raises(ValueError, match=r"the parameters are not the config's network's \(missing \[.*Dense_1"):
        runs.load_run(damaged("deeper", edit_config={"hidden_sizes": [8, 8]}))
    with pytest.raises(ValueError, match=r"on 6 inputs"):  # Acrobot: 6 observations, 3 actions
        runs.load_run(damaged("acrobot", edit_config={"env_id": "Acrobot-v1"}))
    # One leaf without the seeds axis (seed 0's alone): every shape after the first axis could still match.
    state = serialization.msgpack_restore(saved)
    bias = state["params"]["params"]["critic"]["mlp"]["Dense_0"]
    bias["bias"] = bias["bias"][0]
    with pytest.raises(ValueError, match=r"do not share one leading seeds axis"):
        runs.load_run(damaged("one-seed-leaf", params_bytes=serialization.msgpack_serialize(state)))

    # A field config.json lacks (an older pgjax's run, or an edit) loads with its default, said in a warning.
    older = damaged("older", drop_config=("gae_lambda", "normalize_observations"))
    with pytest.warns(UserWarning, match=r"does not set \['gae_lambda', 'normalize_observations'\] .*defaults "
                                         r"\[0.95, False\]"):
        assert runs.load_run(older)[1].gae_lambda == 0.95

    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match=r"metrics\.csv: has pgjax's header but no rows"):
        runs.read_metrics_csv(os.path.join(damaged("header-only", csv_text=header + "\n"), "metrics.csv"))
    with pytest.raises(ValueError, match=r"metrics\.csv: not a pgjax metrics\.csv"):
        runs.read_metrics_csv(os.path.join(damaged("empty-csv", csv_text=""), "metrics.csv"))


def test_evaluate_refuses_parameters_of_another_network_before_compiling():
    """runs.evaluate takes parameters in memory as well as from load_run. Another config's (other hidden sizes,
    another environment) failed inside the traced program with flax's ScopeParamShapeError, and parameters without
    their outer 'params' key with "the collection is empty": now a ValueError naming the layer and the config's
    network, also under vmap (the tracers' shapes are checked). Observation statistics likewise. Parameters of a
    dtype pgjax never trains (integers, booleans, bfloat16) ran silently: now a ValueError too."""
    config = algos.PPOConfig(env_id="CartPole-v1", hidden_sizes=(8,))
    spec = common.make_env(config)
    params = common.init_params(common.actor_critic(config, spec), spec, jax.random.key(0))
    key = jax.random.key(1)
    with pytest.raises(ValueError, match=r"evaluate: parameter \['params'\]\['actor'\].* has shape \(8, 2\), but the "
                                         r"config's network \(\(16,\) hidden units on 4 inputs\) gives \(16, 2\); "
                                         r"were the parameters trained with this config"):
        runs.evaluate(key, config.replace(hidden_sizes=(16,)), params)
    with pytest.raises(ValueError, match=r"on 6 inputs"):  # Acrobot: 6 observations, 3 actions
        runs.evaluate(key, config.replace(env_id="Acrobot-v1"), params)
    with pytest.raises(ValueError, match=r"evaluate: the parameters are not the config's network's \(missing "
                                         r"\[\"\['params'\]\['actor'\].*unexpected \[\"\['actor'\]"):
        runs.evaluate(key, config, params["params"])
    def two_seeds(tree):  # a leading seeds axis of 2
        return jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), tree)

    with pytest.raises(ValueError, match=r"missing \[\"\['params'\]\['actor'\]\['torso'\]\['Dense_1'\]"):
        jax.vmap(lambda p: runs.evaluate(key, config.replace(hidden_sizes=(8, 8)), p))(two_seeds(params))
    # Parameters of another dtype ran: integer or boolean ones as a policy of truncated weights, bfloat16 ones with
    # the output layer at that precision. float64 ones (wider) still run, and give float32's returns.
    for dtype in (jnp.int32, jnp.bool_, jnp.bfloat16, jnp.float16):
        cast = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
        with pytest.raises(ValueError, match=rf"evaluate: parameter \['params'\].* has dtype {jnp.dtype(dtype)}, "
                                             r"but pgjax's networks keep float32 parameters"):
            runs.evaluate(key, config, cast)
    with pytest.raises(ValueError, match=r"has dtype bfloat16"):
        jax.vmap(lambda p: runs.evaluate(key, config, p))(two_seeds(jax.tree_util.tree_map(
            lambda x: x.astype(jnp.bfloat16), params)))
    as_float64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    np.testing.assert_array_equal(runs.evaluate(key, config, as_float64, num_episodes=2),
                                  runs.evaluate(key, config, params, num_episodes=2))
    # Observation statistics: a config rebuilt without the run's normalize_observations=True ignored them (the
    # policy ran on raw observations); another environment's failed inside the traced program.
    stats = envs.RunningStatistics(mean=jnp.zeros(4), var=jnp.ones(4), count=jnp.int32(10))
    with pytest.raises(ValueError, match=r"obs_statistics given, but config.normalize_observations is False"):
        runs.evaluate(key, config, params, stats)
    normalising = config.replace(normalize_observations=True)
    acrobot_stats = envs.RunningStatistics(mean=jnp.zeros(6), var=jnp.ones(6), count=jnp.int32(10))
    with pytest.raises(ValueError, match=r"shapes \(6,\) and \(6,\), but CartPole-v1's flat observations have 4"):
        runs.evaluate(key, normalising, params, acrobot_stats)
    with pytest.raises(ValueError, match=r"shapes \(2, 4\) and \(2, 4\).*a seeds axis left on"):
        runs.evaluate(key, normalising, params, two_seeds(stats))
    # A diverged seed's statistics (or parameters: test_cli) are NaN; the policy ran on NaN observations.
    with pytest.raises(ValueError, match=r"evaluate: obs_statistics.var is not finite \(NaN or inf\)"):
        runs.evaluate(key, normalising, params, stats.replace(var=stats.var.at[2].set(jnp.nan)))


def test_final_returns_skip_updates_without_a_finished_episode():
    """A seed's final return is the NaN-aware mean of its last 10% of updates: one update without a finished
    episode there (NaN) must not make it NaN (a plain mean passed every test)."""
    returns = np.concatenate([np.arange(1.0, 19.0), [np.nan, 10.0]])[None]
    np.testing.assert_array_equal(runs.final_returns({"episode_return": returns}), [10.0])
    np.testing.assert_array_equal(runs.final_returns({"episode_return": returns}, fraction=0.2),
                                  [(17.0 + 18.0 + 10.0) / 3])
    # A quarter of 4 updates is the last one; a tenth of them rounds to none, and the last one is kept.
    for fraction in (0.25, 0.1):
        np.testing.assert_array_equal(runs.final_returns({"episode_return": np.array([[1.0, 2.0, 3.0, 4.0]])},
                                                         fraction=fraction), [4.0])


class _ToyConfig(NamedTuple):
    num_updates: int = 7
    scale: int = 5
    a: int = 0  # fields the toy ignores: a checkpoint check names at most 4 of those that differ
    b: int = 0
    c: int = 0
    d: int = 0

    def to_dict(self):
        return self._asdict()


class _ToyState(NamedTuple):
    agent: jax.Array  # int32: integer updates give the same bits in any program, so no exact-compiler mark
    env_state: jax.Array  # the lane's key


class _ToyTrain:
    """A stand-in for make_train's train (.start, .advance, .config): each update mixes in a draw keyed by its
    index; with hparams {"diverge_at": [n]} a lane's loss is inf from that update on."""

    def __init__(self, config=_ToyConfig()):
        self.config = config

    def start(self, key, hp=None):
        return _ToyState(jax.random.randint(key, (), 0, 1000), key)

    def advance(self, state, first, hp=None, *, count):
        def update(s, i):
            u = first + i
            x = (s.agent * self.config.scale + jax.random.randint(jax.random.fold_in(s.env_state, u), (), 0, 1000))
            x = x % 100003
            loss = x.astype(jnp.float32) if hp is None else jnp.where(u >= hp["diverge_at"], jnp.inf, x * 1.0)
            return s._replace(agent=x), {"loss": loss, "update": u, "episode_return": x * 1.0}
        return jax.lax.scan(update, state, jnp.arange(count))

    def __call__(self, key, hp=None):
        state, metrics = self.advance(self.start(key, hp), 0, hp, count=self.config.num_updates)
        return common.TrainOutput(state.agent, state.env_state, metrics)


def test_segments_resume_check_their_run_time_themselves_and_warn_as_lanes_diverge(tmp_path):
    """runs.train_in_segments on a toy train whose updates are exact: segments (3 + 3 + 1 updates) equal the
    one-call run; an interrupted run resumes where its checkpoint ends, and its progress keeps the saved wall
    times; another run's checkpoint is refused naming what differs; a warning each time more lanes diverge."""
    train, keys, path = _ToyTrain(), runs.seed_keys(0, [0, 1]), str(tmp_path / "toy.npz")
    whole = jax.vmap(train)(keys)
    t0 = time.perf_counter()
    done = runs.train_in_segments(train, keys, 3, path, meta={"note": "mine"})
    elapsed = time.perf_counter() - t0
    assert (done.first_update, done.num_devices) == (0, 1) and 0 < done.compile_s < elapsed and 0 < done.run_s < elapsed
    np.testing.assert_array_equal(done.output.agent, whole.agent)
    for name in ("loss", "update"):
        np.testing.assert_array_equal(done.output.metrics[name], whole.metrics[name])
    state_shapes = jax.eval_shape(jax.vmap(train.start), keys)  # what checkpoints.load reads the state as
    saved = checkpoints.load(path, state_shapes)
    assert saved.next_update == 7 and np.isnan(saved.wall_time).all()  # no progress: no wall times
    meta = checkpoints.read_meta(path)
    assert meta["note"] == "mine" and meta["run"]["config"] == _ToyConfig().to_dict()
    assert meta["run"]["keys"] == np.asarray(jax.random.key_data(keys)).tolist() and meta["run"]["hparams"] is None
    # Interrupted after its second segment (the checkpoint holds 3 updates), then resumed from update 3.
    class Interrupted(runs.Progress):
        def mark_done(self, num_done):
            if num_done == 6:
                raise KeyboardInterrupt
            super().mark_done(num_done)
    with pytest.raises(KeyboardInterrupt):
        runs.train_in_segments(train, keys, 3, path, progress=Interrupted(7, 1, show=False))
    first_wall_times = checkpoints.load(path, state_shapes).wall_time
    assert first_wall_times.shape == (3,) and np.isfinite(first_wall_times[-1])
    progress = runs.Progress(7, 1, show=False)
    resumed = runs.train_in_segments(train, keys, 3, path, resume=True, progress=progress)
    assert resumed.first_update == 3 and resumed.num_devices == 1
    np.testing.assert_array_equal(resumed.output.metrics["loss"], whole.metrics["loss"])
    np.testing.assert_array_equal(resumed.output.agent, whole.agent)
    # The saved time of update 2 is kept (close then fills the unmeasured updates in between).
    assert progress.wall_time[2] == first_wall_times[2] and np.isfinite(progress.wall_time).all()
    assert progress.wall_time[6] >= progress.wall_time[3] >= first_wall_times[-1]
    # A finished run's checkpoint is returned as saved: nothing left to compile or run, on no device.
    finished = runs.train_in_segments(train, keys, 3, path, resume=True)
    assert (finished.first_update, finished.num_devices) == (7, 0)
    np.testing.assert_array_equal(finished.output.metrics["loss"], whole.metrics["loss"])
    # resume=False starts afresh over a checkpoint; resume=True with no file starts afresh too.
    assert runs.train_in_segments(train, keys, 3, path).first_update == 0
    assert runs.train_in_segments(train, keys, 4, str(tmp_path / "new.npz"), resume=True).first_update == 0
    # Another run's checkpoint: the config fields that differ (at most 4 shown), other keys, other hparams, none.
    other = _ToyTrain(_ToyConfig(scale=3))
    with pytest.raises(ValueError, match=r"another config \(scale 5 there, 3 here\); pass resume=False"):
        runs.train_in_segments(other, keys, 3, path, resume=True)
    with pytest.raises(ValueError, match=r"another config \(a 0 there, 1 here, b 0 there, 1 here, c 0 there, 1 here, "
                                         r"d 0 there, 1 here\); pass") as refused:
        runs.train_in_segments(_ToyTrain(_ToyConfig(scale=3, a=1, b=1, c=1, d=1)), keys, 3, path, resume=True)
    assert "scale" not in str(refused.value)
    with pytest.raises(ValueError, match=r"other seeds \(keys\)"):
        runs.train_in_segments(train, runs.seed_keys(0, [0, 2]), 3, path, resume=True)
    hparams = {"diverge_at": np.array([2, 5])}
    with pytest.raises(ValueError, match="other per-lane hyperparameters"):
        runs.train_in_segments(train, keys, 3, path, hparams, resume=True)
    checkpoints.save(path, jax.vmap(train.start)(keys), {}, 0, [], {"note": "no run"})
    with pytest.raises(ValueError, match="the checkpoint does not say which run wrote it"):
        runs.train_in_segments(train, keys, 3, path, resume=True)
    # Lane 0 diverges at update 2, lane 1 at update 5: one warning after each segment that adds a diverged lane.
    with pytest.warns(RuntimeWarning) as caught:
        diverging = runs.train_in_segments(train, keys, 3, path, hparams)
    assert [str(w.message) for w in caught] == [
        "after update 3, 1 of 2 runs have diverged (NaN or inf); training goes on",
        "after update 6, 2 of 2 runs have diverged (NaN or inf); training goes on"]
    np.testing.assert_array_equal(diverging.output.metrics["loss"], jax.vmap(train)(keys, hparams).metrics["loss"])
    assert checkpoints.read_meta(path)["run"]["hparams"] == {"diverge_at": [2, 5]}


def test_write_csv_makes_its_folder_takes_the_first_rows_columns_and_reads_back(tmp_path, monkeypatch):
    # A bare file name writes to the working directory (its dirname is ""); an existing folder is written into; the
    # header is the first row's keys, in order (a row missing a key leaves it empty).
    monkeypatch.chdir(tmp_path)
    tables.write_csv("bare.csv", [{"b": 1, "a": 2.5}])
    assert tables.read_csv(str(tmp_path / "bare.csv")) == [{"b": "1", "a": "2.5"}]
    nested = str(tmp_path / "x" / "y" / "t.csv")
    tables.write_csv(nested, [{"seed": 0, "r": 1.0}, {"seed": 1}])
    tables.write_csv(str(tmp_path / "x" / "y" / "u.csv"), [{"seed": 3}])  # its folder exists now
    assert tables.read_csv(nested) == [{"seed": "0", "r": "1.0"}, {"seed": "1", "r": ""}]
    with open(nested) as f:
        assert f.readline().strip() == "seed,r"
