"""experiments/offline_gymnax.py end to end at tiny sizes: every estimator runs, the files agree with each other."""

import json
import os
import re

import numpy as np
import pytest

import offline_gymnax

from pgjax import tables

VALUE_METHODS = [
    "on-policy Monte Carlo (reference)", "behaviour average (naive)", "neural DualDICE",
    "neural DualDICE (normalised)", "neural FQE", "DualDICE w + FQE Q (doubly robust)", "PDIS", "WIS",
]
TINY = ["--ppo-steps", "2048", "--num-episodes", "8", "--horizon", "50", "--mc-episodes", "16",
        "--dualdice-steps", "20", "--dualdice-batch-size", "64", "--fqe-steps", "20", "--fqe-batch-size", "64",
        "--reference-episodes", "8", "--reference-chunks", "2", "--improve-steps", "1", "--datasets", "2"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("offline-gymnax"))
    # 20 DualDICE steps cannot settle on a saddle point: the run says so (and records each gap in its table).
    with pytest.warns(RuntimeWarning, match="neural_dualdice did not settle on a saddle point"):
        assert offline_gymnax.main([*TINY, "--out", out]) == 0
    return out


def test_every_estimate_is_written_finite_and_scored_against_monte_carlo(out):
    rows = tables.read_csv(os.path.join(out, "results.csv"))
    values = {r["method"]: r for r in rows if r["quantity"] == "value"}
    assert list(values)[: len(VALUE_METHODS)] == VALUE_METHODS
    assert any(m.startswith("pi + 1 Adam steps") for m in values)
    gradients = [r for r in rows if r["quantity"] == "gradient"]
    assert len(gradients) == 6 and gradients[0]["method"].startswith("on-policy, critic baseline")
    truth = float(values["on-policy Monte Carlo (reference)"]["estimate"])
    assert 10 < truth < 40  # a barely trained CartPole policy lasts ~20-30 steps
    for r in values.values():
        estimate = float(r["estimate"])
        assert np.isfinite(estimate), r
        np.testing.assert_allclose(float(r["relative_error"]), (estimate - truth) / truth, rtol=1e-9, atol=1e-12)
    for r in gradients:
        assert np.isfinite(float(r["estimate"])) and -1 <= float(r["cosine"]) <= 1, r
    assert re.fullmatch(r"mean ratio -?\d+\.\d{3}, saddle gap \d+\.\d{3} \(unsettled above 0\.2\)",
                        values["neural DualDICE"]["note"]), values["neural DualDICE"]["note"]
    # CartPole pays r = 1 on every step, so the self-normalised DualDICE value is 1 / (1 - gamma) whatever w is.
    np.testing.assert_allclose(float(values["neural DualDICE (normalised)"]["estimate"]), 100.0, rtol=1e-5)


def test_dataset_table_repeats_dataset_0_and_config_records_the_flags(out):
    rows = tables.read_csv(os.path.join(out, "datasets.csv"))
    methods = VALUE_METHODS[1:]  # all but the reference
    assert [(int(r["dataset"]), r["method"]) for r in rows] == [(k, m) for k in range(2) for m in methods]
    first = {r["method"]: float(r["estimate"]) for r in tables.read_csv(os.path.join(out, "results.csv"))
             if r["quantity"] == "value"}
    for r in rows[: len(methods)]:
        assert float(r["estimate"]) == pytest.approx(first[r["method"]], rel=1e-12)
    second = {r["method"]: float(r["estimate"]) for r in rows[len(methods):]}
    assert second["PDIS"] != first["PDIS"]  # a fresh log of mu, not dataset 0 again
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["fqe"]["batch_size"] == 64 and config["dualdice"]["batch_size"] == 64 and config["datasets"] == 2


@pytest.mark.parametrize("flag", ["--dualdice-batch-size", "--fqe-batch-size"])
def test_batch_larger_than_any_dataset_is_refused_before_training(flag, capsys):
    # 8 episodes x 50 steps hold at most 400 transitions: refused while parsing, before PPO trains for minutes.
    small = ["--num-episodes", "8", "--horizon", "50", "--dualdice-batch-size", "64", "--fqe-batch-size", "64"]
    with pytest.raises(SystemExit) as exc:
        offline_gymnax.parse_args([*small, flag, "401"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} (401) is larger than" in err and "--num-episodes x --horizon = 400" in err
    assert getattr(offline_gymnax.parse_args([*small, flag, "400"]), flag[2:].replace("-", "_")) == 400  # the bound


def test_one_monte_carlo_episode_is_refused(capsys):
    # One episode has no spread: the reference's standard error was printed as nan after minutes of training.
    with pytest.raises(SystemExit) as exc:
        offline_gymnax.parse_args(["--mc-episodes", "1"])
    assert exc.value.code == 2 and "--mc-episodes must be >= 2" in capsys.readouterr().err
    assert offline_gymnax.parse_args(["--mc-episodes", "2"]).mc_episodes == 2
