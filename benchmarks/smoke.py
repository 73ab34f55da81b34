"""Every benchmark script, run once at a tiny size: that each still parses its flags, compiles, runs and writes the
files it documents, with positive, finite throughputs (the figures themselves mean nothing at these sizes).

    python benchmarks/smoke.py          # `make bench-smoke`; CI runs it after the tests (about 2.5 min on 2 cores)

The test suite (10 minutes on 2 cores) has no room for them, so a benchmark a change broke went unnoticed until
someone ran it by hand. Not smoked here: rejax (`ppo_vs_rejax.py` runs with --skip-rejax: building rejax's own
environment needs the network), `quality.py` (tests/test_runs.py runs its main on a stubbed training) and the GPU
session script (only `bash -n`). Outputs go to a temporary folder, never runs/bench/.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pgjax import tables

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Job:
    name: str
    argv: list[str]  # after the interpreter; "{out}" is the job's temporary folder
    check: Callable[[str, str], None]  # (folder, stdout) -> None; AssertionError names what is wrong


def _rows(path: str) -> list[dict[str, str]]:
    rows = tables.read_csv(path)
    assert rows, f"{os.path.basename(path)} has no rows"
    return rows


def _positive(values, what: str) -> None:
    values = [float(v) for v in values]
    assert values and all(math.isfinite(v) and v > 0 for v in values), f"{what}: not all positive and finite: {values}"


def _check_tabular(out: str, stdout: str) -> None:
    assert "every pgjax result matched its NumPy twin" in stdout, "a pgjax result differed from its NumPy twin"
    rows = _rows(os.path.join(out, "tabular.csv"))
    _positive([r["pgjax_calls_per_s"] for r in rows], "tabular pgjax_calls_per_s")
    _positive([r["numpy_calls_per_s"] for r in rows], "tabular numpy_calls_per_s")


def _check_offline(out: str, stdout: str) -> None:
    rows = _rows(os.path.join(out, "offline.csv"))
    assert {r["row"] for r in rows} >= {"collect", "dualdice", "pdis", "sweep"}, [r["row"] for r in rows]
    _positive([r["pgjax_per_s"] for r in rows], "offline pgjax_per_s")


def _check_probe(out: str, stdout: str) -> None:
    with open(os.path.join(out, "probe.json")) as f:
        records = json.load(f)["records"]
    assert records and all(r["env_steps"] == 2 * 2048 for r in records), records
    _positive([r["env_steps_per_s"] for r in records], "probe env_steps_per_s")


def _check_sweep(out: str, stdout: str) -> None:
    with np.load(os.path.join(out, "sweep.npz")) as sweep:
        finals, curves = sweep["finals"], sweep["curves"]
    assert finals.shape == (4,) and curves.shape[0] == 4, (finals.shape, curves.shape)
    assert np.isfinite(finals).all() and (finals >= 1).all(), finals  # a CartPole episode returns >= 1
    assert "4 seeds, overrides {}" in stdout, "the sweep's report did not print"


def _check_versus(out: str, stdout: str) -> None:
    rows = _rows(os.path.join(out, "versus.csv"))
    assert {(r["impl"], r["seeds"]) for r in rows} >= {("gymnax-ceiling", "1"), ("pgjax", "1"), ("pgjax", "2")}, rows
    _positive([r["env_steps_per_s"] for r in rows], "ppo_vs_rejax env_steps_per_s")
    _positive([r["median_return"] for r in rows if r["impl"].startswith("pgjax")], "ppo_vs_rejax median_return")
    assert os.path.isfile(os.path.join(out, "versus.json")), "versus.json was not written"


JOBS = [
    Job("tabular_bench", ["tabular_bench.py", "--quick", "--out", "{out}/tabular.csv"], _check_tabular),
    Job("offline_bench", ["offline_bench.py", "--min-time", "0.05", "--episodes", "20", "--horizon", "20",
                          "--sweep", "2", "--out", "{out}/offline.csv"], _check_offline),
    Job("ppo_speed_probe", ["ppo_speed_probe.py", "--seeds", "2", "--total-timesteps", "2048", "--unroll", "1",
                            "--repeats", "1", "--json", "{out}/probe.json"], _check_probe),
    Job("ppo_seed_sweep", ["ppo_seed_sweep.py", "--seeds", "4", "--chunk", "2", "--total-timesteps", "2048",
                           "--eval-episodes", "2", "--cpu-devices", "1", "--out", "{out}/sweep.npz"], _check_sweep),
    Job("ppo_vs_rejax", ["ppo_vs_rejax.py", "--seeds", "1", "2", "--total-timesteps", "4096", "--eval-episodes", "2",
                         "--skip-rejax", "--out", "{out}/versus.csv"], _check_versus),
]


def run_job(job: Job, root: str) -> tuple[bool, float, str]:
    """(passed, seconds, what went wrong) of one script run in its own folder under `root`."""
    out = os.path.join(root, job.name)
    os.makedirs(out)
    argv = [sys.executable, os.path.join(HERE, job.argv[0])] + [a.format(out=out) for a in job.argv[1:]]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=out)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return False, seconds, f"exit {done.returncode}:\n{done.stderr[-3000:] or done.stdout[-3000:]}"
    try:
        job.check(out, done.stdout)
    except (AssertionError, OSError, KeyError, ValueError) as err:
        return False, seconds, f"{type(err).__name__}: {err}\n--- stdout tail ---\n{done.stdout[-2000:]}"
    return True, seconds, ""


def main() -> int:
    failed = []
    syntax = subprocess.run(["bash", "-n", os.path.join(HERE, "gpu_session.sh")], capture_output=True, text=True)
    if syntax.returncode != 0:
        failed.append("gpu_session.sh")
        print(f"FAIL gpu_session.sh (bash -n): {syntax.stderr}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pgjax-bench-smoke-") as root:
        for job in JOBS:
            passed, seconds, problem = run_job(job, root)
            print(f"{'ok  ' if passed else 'FAIL'} {job.name:<16} {seconds:6.1f} s", flush=True)
            if not passed:
                failed.append(job.name)
                print(problem, flush=True)
    print(f"benchmark smoke: {len(JOBS) + 1 - len(failed)} of {len(JOBS) + 1} passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
