"""experiments/offline_dualdice.py (`make offline`) at a small size: its tables against NumPy's exact answers.

The script scores every estimator against (1 - gamma) J(pi) of a target pi = softmax(Q* / temperature); here Q*,
the target and J are computed again in NumPy (value iteration, a linear solve), independently of pgjax.tabular.
"""

import math
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import offline_dualdice as script

from pgjax import tables
from tabular_reference import numpy_reference, value_iteration_q

FLAGS = ["--mdp", "random", "--sizes", "20", "200", "--seeds", "8", "--alphas", "0.7", "--horizon", "60",
         "--improve-steps", "3", "--improve-size", "20", "--no-progress"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("offline-dualdice"))
    script.main([*FLAGS, "--out", out])
    return out


@pytest.fixture(scope="module")
def exact(out):
    """Float64 NumPy answers for alpha 0.7 (`tabular_reference`: Q* by value iteration, V, d^pi and J by matrix
    inversion): the script's args, J(pi) and J(behaviour), the H-step returns J_H(pi) and J_H(behaviour) that
    importance sampling estimates, and the distance sqrt(sum_{s,a} d^D (1 - w)^2) of the true ratio
    w = d^pi / d^D from 1, d^D the logged data's distribution."""
    args = script.parse_args([*FLAGS, "--out", out])
    mdp = script.make_problem(args)[0]
    P, R, mu0 = (np.asarray(x, np.float64) for x in (mdp.transition, mdp.reward, mdp.initial))
    gamma = float(args.discount)
    logits = value_iteration_q(mdp) / args.temperature
    target = np.exp(logits - logits.max(axis=1, keepdims=True))
    target /= target.sum(axis=1, keepdims=True)

    def value(pi):
        return float(numpy_reference(P, R, mu0, gamma, pi)[3])

    def state_distributions(pi):  # mu0 (P^pi)^t for t < H
        p_pi, out = np.einsum("sa,sat->st", pi, P), [mu0]
        for _ in range(args.horizon - 1):
            out.append(out[-1] @ p_pi)
        return np.array(out)

    def horizon_value(pi):
        return float(sum(gamma**t * d @ (pi * R).sum(axis=1) for t, d in enumerate(state_distributions(pi))))

    behaviour = 0.7 * target + 0.3 / R.shape[1]
    d_data = state_distributions(behaviour).mean(axis=0)[:, None] * behaviour
    d_target = numpy_reference(P, R, mu0, gamma, target)[2][:, None] * target
    return SimpleNamespace(args=args, j_target=value(target), j_behaviour=value(behaviour),
                           jh_target=horizon_value(target), jh_behaviour=horizon_value(behaviour),
                           w_distance=math.sqrt(np.sum(d_data * (1 - d_target / d_data) ** 2)))


def test_values_are_scored_against_the_exact_normalised_return(out, exact):
    args = exact.args
    rows = tables.read_csv(os.path.join(out, "values.csv"))
    assert len(rows) == 1 * 2 * 8 * len(script.VALUE_METHODS)  # alphas x sizes x seeds x methods
    truth = (1 - args.discount) * exact.j_target
    for row in rows:
        assert float(row["truth"]) == pytest.approx(truth, rel=1e-5)
        error = float(row["normalised_value"]) - float(row["truth"])
        assert float(row["squared_error"]) == pytest.approx(error**2, rel=1e-6, abs=1e-14)
    summary = tables.read_csv(os.path.join(out, "summary.csv"))
    assert [(r["alpha"], r["num_trajectories"]) for r in summary] == [("0.7", "20"), ("0.7", "200")]
    for point in summary:
        for method in script.VALUE_METHODS:
            errors = [float(r["squared_error"]) for r in rows if r["method"] == method
                      and r["num_trajectories"] == point["num_trajectories"]]
            assert float(point[f"log_rmse_{method}"]) == pytest.approx(0.5 * math.log(np.mean(errors)), abs=1e-9)
    small, large = summary
    # Ten times the data: the model-based and DualDICE values and the ratio come closer to the truth (measured:
    # log RMSE -5.08 -> -6.14, ratio error 0.33 -> 0.07), and the DualDICE + FQE gradient stays aligned.
    for column in ("log_rmse_model", "log_rmse_dualdice"):
        assert float(large[column]) < float(small[column]) - 0.3, column
    assert float(large["ratio_error"]) < 0.5 * float(small["ratio_error"])
    assert float(large["ratio_error"]) < float(large["ratio_error_of_w_equal_1"])
    for point in summary:  # the data are the behaviour policy's, logged over --horizon steps
        assert float(point["ratio_error_of_w_equal_1"]) == pytest.approx(exact.w_distance, rel=1e-4)
    # Weighted IS estimates the target's 60-step return, not the behaviour's: normalised 0.5335 and 0.4997; the
    # means of 8 datasets of 200 trajectories were 0.5390 (WIS) and 0.5365 (weighted PDIS), +- 0.002.
    scale = 1 - args.discount
    for method in ("wis", "wpdis"):
        mean = np.mean([float(r["normalised_value"]) for r in rows if r["method"] == method
                        and r["num_trajectories"] == "200"])
        assert abs(mean - scale * exact.jh_target) < abs(mean - scale * exact.jh_behaviour) / 3, method
    assert float(large["grad_cosine_dualdice"]) > 0.95


def test_offline_improvement_starts_at_the_behaviour_policy_and_improves_it(out, exact):
    rows = tables.read_csv(os.path.join(out, "improvement.csv"))
    assert [int(r["step"]) for r in rows] == list(range(len(rows))) and len(rows) >= 3
    values = [float(r["true_value"]) for r in rows]
    assert values[0] == pytest.approx(exact.j_behaviour, rel=1e-5)  # theta_0 = log mu
    assert values[-1] > exact.j_target > values[0]  # measured: 10.5 -> 14.2, past the target's 11.2
    for name in ("log_rmse.png", "ratio_gradient_error.png", "improvement.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


def test_bad_flags_are_refused_before_anything_runs(tmp_path, capsys):
    bad = {("--alphas", "1.5"): "--alphas must lie in [0, 1]", ("--sizes", "10", "0"): "--sizes must all be >= 1",
           ("--discount", "1"): "--discount must lie in (0, 1)", ("--temperature", "0"): "--temperature must be",
           ("--improve-lr", "nan"): "--improve-lr a finite number > 0", ("--seeds", "0"): "--seeds must be >= 1",
           ("--out", __file__): "--out: ",
           ("--discount", "0.99999999999"): ("--discount 0.99999999999 rounds to 1.0 in float32; use a smaller one "
                                             "or --x64")}
    for flags, message in bad.items():
        with pytest.raises(SystemExit) as exit_info:
            script.parse_args(list(flags))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, flags
    assert script.parse_args(["--discount", "0.99999999999", "--x64"]).discount == 0.99999999999  # float64 holds it


def test_x64_holds_for_the_run_only(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(script, "run", lambda args: seen.append(jax.numpy.zeros(()).dtype))
    for flags in (["--x64"], []):
        assert script.main([*FLAGS, *flags, "--out", str(tmp_path)]) == 0
        assert not jax.config.jax_enable_x64  # the caller's JAX is float32 again
    assert seen == [np.float64, np.float32]
