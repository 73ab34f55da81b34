"""experiments/policy_gradient_theorem.py (`make theorem`) at a small size: the theorem check passes, fails when the
theorem's gradient is wrong by 1%, the estimator lab's table shows what it is there to show, and the script's
float64 stays inside it (importing it or running `main` leaves the caller's JAX in float32).
"""

import contextlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import policy_gradient_theorem as lab

from pgjax import estimators, tables
from pgjax import tabular as T

NUM_ESTIMATES = 128
ARGV = ["--num-mdps", "8", "--num-states", "4", "--num-actions", "2", "--num-estimates", str(NUM_ESTIMATES),
        "--max-trajectories", "4", "--truncation", "2", "--no-progress"]
BAD_FLAGS = (["--num-estimates", "1"], ["--max-trajectories", "3"], ["--discount", "1"], ["--num-actions", "1"],
             ["--num-mdps", "0"], ["--discount", "0.999999"])


def refusal(flags) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        lab.parse_args(flags)
    return err.getvalue()


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("estimator-lab"))
    x64_before = jax.config.jax_enable_x64  # the import above turned nothing on
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = lab.main([*ARGV, "--out", out])
    result = {"status": status, "printed": printed.getvalue(), "x64": (x64_before, jax.config.jax_enable_x64),
              "refused": {" ".join(flags): refusal(flags) for flags in BAD_FLAGS}}
    exact = lab.T.policy_gradient
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lab.T, "policy_gradient", lambda *a, **k: 0.99 * exact(*a, **k))  # the theorem's gradient 1% off
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                lab.verify_theorem(lab.parse_args([*ARGV, "--out", out]))
            result["wrong_theorem"] = "passed"
        except SystemExit as stop:
            result["wrong_theorem"] = str(stop)
    return result, out


def test_the_theorem_check_holds_and_can_fail(lab_run):
    result, _ = lab_run
    assert result["status"] == 0
    line = next(x for x in result["printed"].splitlines() if "theorem vs jax.grad(J)" in x)
    assert float(line.split()[-1]) < 1e-8  # float64: the two gradients agree to rounding
    assert result["wrong_theorem"] == "theorem check FAILED"


def test_the_float64_stays_inside_the_script(lab_run):
    assert lab_run[0]["x64"] == (False, False)


def test_the_estimator_lab_shows_the_variance_and_the_truncation_bias(lab_run):
    _, out = lab_run
    rows = tables.read_csv(os.path.join(out, "estimator_lab.csv"))
    names = [*estimators.ESTIMATORS, "truncated_2"]
    assert [(r["estimator"], int(r["trajectories"])) for r in rows] == [(n, m) for n in names for m in (1, 2, 4)]
    assert os.path.getsize(os.path.join(out, "estimator_lab.png")) > 0
    table = {(r["estimator"], int(r["trajectories"])): r for r in rows}
    for name in ("rewards_to_go", "value_baseline"):  # unbiased: MSE ~ 1/N, so the error halves from N = 1 to 4
        ratio = float(table[name, 4]["relative_error"]) / float(table[name, 1]["relative_error"])
        assert 0.35 < ratio < 0.7, (name, ratio)  # measured 0.49 and 0.51
        assert float(table[name, 4]["max_abs_bias_z"]) < 4, name
    # The 2-step truncation is biased: it estimates grad J_2, the gradient of the 2-step return, not grad J. Its
    # measured bias ||mean - grad J|| must be the exact ||grad J_2 - grad J|| (from tabular.finite_horizon_return
    # and jax.grad, not the estimator code) up to the sampling noise of the mean, whose expected squared norm is
    # total_variance / K: within 4 of those standard errors at every N (measured 0.2-0.9 at key offsets 0 and 78).
    # This replaces "its per-coordinate bias z exceeds 4 at N = 4": how far the bias stands above the noise is the
    # random MDP's, and at key offset 78 (||grad J|| 0.096, truncation bias 0.077) z was 3.1, 3.3, 3.6 for N = 1, 2,
    # 4 (measured 9.3, 13.0, 20.2 at the suite's keys).
    with jax.enable_x64(True):
        problem, _ = lab.lab_problem(lab.parse_args(ARGV))
        mdp, theta, features = problem

        def two_step_return(th):
            return T.finite_horizon_return(mdp, T.softmax_policy(th, features), 2)

        exact_bias = jax.grad(two_step_return)(theta) - T.policy_gradient(mdp, theta, features)
        truncation_bias = float(jnp.linalg.norm(exact_bias))
    assert truncation_bias > 1e-3, truncation_bias  # 0.48 at the suite's keys, 0.077 at key offset 78
    for m in (1, 2, 4):
        row = table["truncated_2", m]
        standard_error = np.sqrt(float(row["total_variance"]) / NUM_ESTIMATES)
        assert abs(float(row["bias_norm"]) - truncation_bias) < 4 * standard_error, (m, row, truncation_bias)
    # That bound is loose where the noise is large; the row is the truncated estimator's (not a full-length one,
    # whose noise would hide any bias) by its variance: 2 steps of scores and rewards instead of ~130, at most 1.4%
    # of rewards-to-go's at N = 4 over 17 key offsets (0-9, 57, 66, 68, 75, 76, 78, 79).
    variances = [float(table[name, 4]["total_variance"]) for name in ("truncated_2", "rewards_to_go")]
    assert variances[0] < 0.1 * variances[1], variances
    assert float(table["truncated_2", 4]["relative_error"]) > float(table["value_baseline", 4]["relative_error"])


def test_bad_flags_are_refused_with_their_names(lab_run):
    refused = lab_run[0]["refused"]
    assert "--num-estimates must be >= 2; got 1" in refused["--num-estimates 1"]
    assert "--max-trajectories must be a power of 2" in refused["--max-trajectories 3"]
    assert "--discount must lie in (0, 1); got 1.0" in refused["--discount 1"]
    assert "--num-actions must be >= 2" in refused["--num-actions 1"]
    assert "--num-mdps must be >= 1; got 0" in refused["--num-mdps 0"]
    # 2.8e7 fixed-point iterations: about 4 minutes with no progress shown (1 - 1e-11 needed 2.8e12)
    assert "--discount must be <= 0.99999" in refused["--discount 0.999999"]
    assert "2.76e+07 at 0.999999" in refused["--discount 0.999999"]
    assert lab.parse_args([*ARGV, "--discount", "0.99999"]).discount == 0.99999  # the largest accepted
