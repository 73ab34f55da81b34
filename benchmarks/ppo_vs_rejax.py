"""pgjax PPO vs rejax PPO on gymnax CartPole-v1, on this machine, one right after the other.

    .venv/bin/python benchmarks/ppo_vs_rejax.py                      # CPU: 1 and 32 seeds, 5e5 steps each
    .venv/bin/python benchmarks/ppo_vs_rejax.py --seeds 1 256 2048   # GPU
    .venv/bin/python benchmarks/ppo_vs_rejax.py --quick              # smoke test (~1.5 min on 2 CPU cores)

For each seed count, three programs run in turn, each in its own fresh process:
  1. gymnax-ceiling: raw gymnax 1.x CartPole-v1 stepping with random actions, 4 * seeds envs in
     one vmapped batch, a jitted lax.scan: the env-steps/s no PPO at that batch size can beat.
  2. rejax: rejax 0.1.3's PPO (gymnax 0.0.9) in its own virtualenv, benchmarks/.rejax-venv
     (built here once; rejax 0.1.3 needs gymnax 0.0.x's five-value step, so it can never share
     pgjax's environment). Its periodic evaluation is switched off (see _rejax_ppo.py).
  3. pgjax: pgjax.algos.ppo.make_train with the same hyperparameters; on a CPU with several cores also
     pgjax-Ndev (seeds > 1: the seeds split over the cores, pgjax.parallel.vmap_sharded) and
     pgjax-split-2dev (1 seed: PPOConfig(split_actor_critic=True), one clipped Adam per network as in
     rejax, the actor's epochs on one core and the critic's on the other, parallel.actor_critic_sharded).
Each PPO run is `jax.jit(train)` (1 seed) or `jax.jit(jax.vmap(train))` (more seeds):
compile = lower + compile, timed apart from the run of the compiled program;
env-steps/s = seeds * steps per seed / run seconds. The final policy of each seed is then
evaluated, untimed, on --eval-episodes episodes (stochastic policy, rejax.evaluate's protocol).
The report ends with the issue's targets judged (`verdicts`): pgjax's speed-up over rejax per TARGETS entry (the
median of the round-by-round ratios with --rounds > 1) and, for 2048 GPU seeds, whether no seed ended below 475
(the worst seed and the fraction >= 475), each MET or NOT MET.

Offline machines (e.g. a GPU box with Python 3.12 + a CUDA jax, no internet): pass
`--wheels DIR` (pip --no-index --find-links DIR) and usually `--rejax-system-site-packages`
(the rejax venv then reuses the machine's jax/CUDA and needs only the wheels pgjax lacks);
`--pgjax-python` picks the interpreter of the pgjax side, `--rejax-python` an existing
interpreter that already has rejax 0.1.3 + gymnax 0.0.9. See benchmarks/README.md.

This orchestrator imports nothing beyond the standard library; the workers import jax.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _bench_common as bc  # noqa: E402  (stdlib only at import: shared with both workers)

REJAX_REQUIREMENTS = ["rejax==0.1.3", "gymnax==0.0.9"]
STAMP = ".ppo_vs_rejax-installed"
SOLVED = 475.0
# Targets from issue 3, as (backend, seeds) -> minimum pgjax/rejax env-steps/s ratio.
TARGETS = {("cpu", 1): 1.5, ("cpu", 32): 1.3, ("gpu", 2048): 1.3}
# And (backend, seeds) where every seed's final return must reach SOLVED ("no seed of 2048 left behind").
SEED_TARGETS = (("gpu", 2048),)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seed counts to run (default: 1 32; --quick: 1 4)")
    p.add_argument("--total-timesteps", type=int, default=None,
                   help="env steps per seed (default 500000; --quick: 50000)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="evaluation episodes per seed, untimed (default 128; --quick: 16; 0: none)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs of each compiled program; the fastest counts (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every worker of a seed count this many times, interleaved "
                        "(ceiling, rejax, pgjax, ... then again); "
                        "each row reports its fastest round and the ratio line the spread of the per-round ratios "
                        "(default 1)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 5e4 steps, 1 and 4 seeds, 16 eval episodes")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "ppo_vs_rejax.csv"),
                   help="CSV output (a .json with the raw records goes next to it)")
    p.add_argument("--skip-rejax", action="store_true",
                   help="run only pgjax and the gymnax ceiling (machines without rejax wheels)")
    p.add_argument("--skip-ceiling", action="store_true", help="do not measure raw gymnax stepping")
    p.add_argument("--skip-pgjax", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pgjax-python", default=sys.executable,
                   help="interpreter for the pgjax side and the ceiling (default: this one); "
                        "needs jax, flax, optax, gymnax 1.x")
    g = p.add_argument_group("rejax environment")
    g.add_argument("--rejax-python", default=None,
                   help="use this interpreter for rejax instead of building a venv "
                        "(it must import rejax 0.1.3 and gymnax 0.0.9)")
    g.add_argument("--rejax-venv", default=str(HERE / ".rejax-venv"),
                   help="where to build rejax's venv (default benchmarks/.rejax-venv)")
    g.add_argument("--wheels", default=None, help="install offline: pip --no-index --find-links DIR")
    g.add_argument("--rejax-system-site-packages", action="store_true",
                   help="create the venv with --system-site-packages, reusing the base interpreter's jax "
                        "(e.g. a CUDA jax)")
    g.add_argument("--rejax-base-python", default=sys.executable,
                   help="interpreter that creates the venv (default: this one)")
    g.add_argument("--rejax-jax", default="auto",
                   help="jax pin for the rejax venv: 'auto' (the pgjax side's jax version; default), "
                        "a version, or 'none'")
    g.add_argument("--rebuild-rejax-venv", action="store_true", help="delete and rebuild the rejax venv")
    g = p.add_argument_group("robustness")
    g.add_argument("--worker-timeout", type=float, default=900,
                   help="seconds before a worker counts as hung (default 900)")
    g.add_argument("--retries", type=int, default=1, help="reruns of a worker that hung or failed (default 1)")
    g.add_argument(
        "--xla-flags",
        default=None,
        help="XLA_FLAGS for every worker, e.g. '--xla_cpu_multi_thread_eigen=false' (works around an intermittent "
        "XLA:CPU thread-pool hang seen with jax 0.10.2); default: leave XLA_FLAGS as it is",
    )
    p.add_argument("--pgjax-config", default="{}",
                   help="JSON object of pgjax PPOConfig speed fields (results unchanged), "
                        "e.g. '{\"unroll\": 8}' on a GPU, "
                        "compute_dtype ('{\"compute_dtype\": \"bfloat16\"}': mixed precision, rows named "
                        "pgjax-bfloat16) and adam_eps ('{\"adam_eps\": 1e-8}': rejax's epsilon, rows named "
                        "pgjax-eps1e-08)")
    p.add_argument("--cpu-devices", default="auto",
                   help="on a CPU backend, also run pgjax with its seeds split over this many CPU devices (seeds > 1; "
                        "row pgjax-Ndev) and, for 1 seed, its update split over 2 (row pgjax-split-2dev): 'auto' = one "
                        "per core, 1 = no such rows")
    a = p.parse_args()
    if a.cpu_devices == "auto":
        a.cpu_devices = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    elif a.cpu_devices.isdigit() and int(a.cpu_devices) >= 1:
        a.cpu_devices = int(a.cpu_devices)
    else:
        p.error(f"--cpu-devices must be 'auto' or a positive int; got {a.cpu_devices!r}")
    if a.seeds is None:
        a.seeds = [1, 4] if a.quick else [1, 32]
    if a.total_timesteps is None:
        a.total_timesteps = 50_000 if a.quick else 500_000
    if a.eval_episodes is None:
        a.eval_episodes = 16 if a.quick else 128
    if any(s < 1 for s in a.seeds):
        p.error("--seeds must be positive")
    if a.eval_episodes < 0:
        p.error(f"--eval-episodes must be >= 0 (0: no evaluation); got {a.eval_episodes}")
    if Path(a.out).suffix == ".json":  # the raw records go to the CSV's name with .json: they would replace it
        p.error(f"--out is the CSV ({a.out!r} ends in .json, the name of the raw records written next to it)")
    bc.tables().check_output_path(p.error, "--out", a.out, "file")
    if a.rounds < 1 or a.repeats < 1:
        p.error("--rounds and --repeats must be positive")
    try:
        # pgjax's row name: "pgjax", or "pgjax-bfloat16" where compute_dtype trades precision for speed
        a.pgjax_impl = "pgjax" + bc.impl_suffix(bc.parse_speed_config(a.pgjax_config))
    except ValueError as e:
        p.error(str(e))
    if a.total_timesteps < 512:
        p.error("--total-timesteps must be at least num_envs * num_steps = 512")
    return a


def say(msg: str = "") -> None:
    print(msg, flush=True)


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_cmd(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    say("$ " + " ".join(shlex.quote(str(c)) for c in cmd))
    return subprocess.run(cmd, **kw)


def python_jax_version(python: str) -> str | None:
    try:
        r = subprocess.run([python, "-c", "import jax; print(jax.__version__)"], capture_output=True, text=True)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


# ---------------------------------------------------------------------------
# rejax's virtual environment.
# ---------------------------------------------------------------------------


class RejaxUnavailable(RuntimeError):
    """rejax's interpreter could not be found or built."""


def rejax_works(python: str) -> bool:
    code = (
        "import importlib.metadata as m, rejax, gymnax; "
        "assert m.version('rejax') == '0.1.3', m.version('rejax'); "
        "assert m.version('gymnax').startswith('0.0.'), m.version('gymnax')"
    )
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    except OSError as e:
        say(f"  rejax check failed: {e}")
        return False
    if r.returncode != 0:
        say("  rejax check failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
    return r.returncode == 0


def ensure_rejax_python(args: argparse.Namespace) -> str:
    """The interpreter of rejax's venv, building the venv first if needed (idempotent: a stamp
    file records what was installed; a venv whose stamp matches and imports rejax is reused)."""
    if args.rejax_python:
        if not rejax_works(args.rejax_python):
            raise RejaxUnavailable(f"--rejax-python {args.rejax_python} cannot import rejax 0.1.3 with gymnax 0.0.x")
        return args.rejax_python

    venv = Path(args.rejax_venv)
    python = venv / "bin" / "python"
    requirements = list(REJAX_REQUIREMENTS)
    pin = args.rejax_jax
    if pin == "auto":
        pin = python_jax_version(args.pgjax_python)
        say(f"rejax venv: pinning jax to the pgjax side's version {pin} (--rejax-jax none to let pip choose)")
    if pin and pin != "none":
        requirements.append(f"jax=={pin}")
    spec = {
        "requirements": requirements,
        "wheels": str(Path(args.wheels).resolve()) if args.wheels else None,
        "system_site_packages": args.rejax_system_site_packages,
        "base_python": args.rejax_base_python,
    }
    stamp = venv / STAMP
    if not args.rebuild_rejax_venv and python.exists() and stamp.exists():
        try:
            same = json.loads(stamp.read_text()) == spec
        except (OSError, ValueError):
            same = False
        if same and rejax_works(str(python)):
            say(f"rejax venv: reusing {venv}")
            return str(python)
        say(f"rejax venv: {venv} is out of date; rebuilding")

    if venv.exists():
        import shutil

        shutil.rmtree(venv)
    base = [args.rejax_base_python, "-m", "venv"] + (
        ["--system-site-packages"] if args.rejax_system_site_packages else [])
    pip = [str(python), "-m", "pip"]
    if run_cmd(base + [str(venv)]).returncode != 0:
        # No ensurepip (Debian's python3-venv missing): a pip-less venv filled by the base pip.
        if venv.exists():
            import shutil

            shutil.rmtree(venv)
        if run_cmd(base + ["--without-pip", str(venv)]).returncode != 0:
            raise RejaxUnavailable("could not create the rejax venv")
        pip = [args.rejax_base_python, "-m", "pip", "--python", str(python)]
    install = pip + ["install", "--disable-pip-version-check", "--progress-bar", "off"]
    if args.wheels:
        install += ["--no-index", "--find-links", str(Path(args.wheels).resolve())]
    if run_cmd(install + requirements).returncode != 0:
        raise RejaxUnavailable(
            "pip could not install rejax's venv. Offline? Pass --wheels DIR with the wheels listed in "
            "benchmarks/README.md, or --skip-rejax."
        )
    if not rejax_works(str(python)):
        raise RejaxUnavailable(f"the new venv {venv} cannot import rejax 0.1.3 with gymnax 0.0.x")
    stamp.write_text(json.dumps(spec, indent=1))
    return str(python)


# ---------------------------------------------------------------------------
# Workers.
# ---------------------------------------------------------------------------


def run_worker(
    name: str, python: str, script: str, extra: list[str], args: argparse.Namespace, seeds: int
) -> dict | None:
    env = dict(os.environ)
    if args.xla_flags is not None:
        env["XLA_FLAGS"] = args.xla_flags
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for attempt in range(1 + args.retries):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            json_out = f.name
        cmd = [
            python, str(HERE / script), "--seeds", str(seeds), "--total-timesteps", str(args.total_timesteps),
            "--eval-episodes", str(args.eval_episodes), "--repeats", str(args.repeats), "--json-out", json_out,
        ] + extra
        load_before = load()
        say(f"\n== {name}, {seeds} seed(s) (load average {load_before})")
        try:
            r = run_cmd(cmd, cwd=str(ROOT), env=env, timeout=args.worker_timeout)
            ok = r.returncode == 0
            why = f"exit code {r.returncode}"
        except subprocess.TimeoutExpired:
            ok, why = False, f"no result after {args.worker_timeout:.0f} s (hung?)"
        if ok:
            record = json.loads(Path(json_out).read_text())
            os.unlink(json_out)
            record["load_before"] = load_before
            record["attempts"] = attempt + 1
            return record
        os.unlink(json_out)
        say(f"!! {name} with {seeds} seed(s) failed: {why}"
            + ("; retrying" if attempt < args.retries else "; giving up"))
    return None


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def summarise(record: dict) -> dict:
    returns = record.get("final_returns")
    row = {
        "impl": record["impl"],
        "seeds": record["seeds"],
        "steps_per_seed": record["steps_per_seed"],
        "compile_s": record["compile_s"],
        "run_s": record["run_s"],
        "env_steps_per_s": record["env_steps"] / record["run_s"],
        "ratio_pgjax_rejax": None,
        "median_return": statistics.median(returns) if returns else None,
        "worst_return": min(returns) if returns else None,
        "frac_ge_475": sum(r >= SOLVED for r in returns) / len(returns) if returns else None,
        "eval_episodes": record.get("eval_episodes"),
        "jax": record["info"]["jax"],
        "backend": record["info"]["backend"],
        "device": record["info"]["device"],
        "load_before": record.get("load_before"),
        "attempts": record.get("attempts"),
        "notes": record.get("notes", ""),
    }
    return row


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    cols = [
        ("impl", "impl", "s"),
        ("seeds", "seeds", "d"),
        ("compile_s", "compile s", ".1f"),
        ("run_s", "run s", ".2f"),
        ("env_steps_per_s", "env-steps/s", ",.0f"),
        ("ratio_pgjax_rejax", "pgjax/rejax", ".2f"),
        ("median_return", "median ret", ".1f"),
        ("worst_return", "worst seed", ".1f"),
        ("frac_ge_475", "frac>=475", ".2f"),
        ("load_before", "load (1/5/15m)", "s"),
    ]
    cells = [[h for _, h, _ in cols]] + [[fmt(r[k], f) for k, _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for j, line in enumerate(cells):
        say("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if j == 0:
            say("  ".join("-" * w for w in widths))


def run_round(args: argparse.Namespace, seeds: int, rejax_python: str | None, pgjax_backend: str) -> list[dict]:
    """Every worker for one seed count, one after the other: the ceiling, rejax, pgjax and its multi-core rows."""
    records = []

    def worker(name, python, extra):
        rec = run_worker(name, python, "_rejax_ppo.py" if name == "rejax" else "_pgjax_ppo.py", extra, args, seeds)
        records.extend([rec] if rec else [])

    if not args.skip_ceiling:
        worker("gymnax-ceiling", args.pgjax_python, ["--mode", "ceiling"])
    if rejax_python:
        worker("rejax", rejax_python, [])
    if not args.skip_pgjax:
        extra = ["--mode", "ppo", "--pgjax-config", args.pgjax_config]
        worker(args.pgjax_impl, args.pgjax_python, extra)
        if seeds > 1 and args.cpu_devices > 1 and pgjax_backend == "cpu":
            worker(f"{args.pgjax_impl}-{args.cpu_devices}dev", args.pgjax_python,
                   extra + ["--cpu-devices", str(args.cpu_devices)])
        if seeds == 1 and args.cpu_devices > 1 and pgjax_backend == "cpu":
            # One seed has no seeds to split: split its update (actor on one core, critic on the other).
            worker(f"{args.pgjax_impl}-split-2dev", args.pgjax_python,
                   extra + ["--cpu-devices", "2", "--split-actor-critic"])
    return records


def fastest_rounds(records: list[dict]) -> tuple[list[dict], dict[tuple[str, int], list[float]]]:
    """Per (impl, seeds), the record of its fastest round, and every round's run time (in round order)."""
    times: dict[tuple[str, int], list[float]] = {}
    best: dict[tuple[str, int], dict] = {}
    for rec in records:
        key = (rec["impl"], rec["seeds"])
        times.setdefault(key, []).append(rec["run_s"])
        if key not in best or rec["run_s"] < best[key]["run_s"]:
            best[key] = rec
    return list(best.values()), times


def round_ratios(records: list[dict], impl: str, seeds: int) -> list[float]:
    """rejax's run time over `impl`'s in each round where both ran (the speed-up, round by round)."""
    by_round = {(r["impl"], r.get("round", 0)): r["run_s"] for r in records if r["seeds"] == seeds}
    rounds = sorted({r.get("round", 0) for r in records})
    return [by_round[("rejax", k)] / by_round[(impl, k)]
            for k in rounds if ("rejax", k) in by_round and (impl, k) in by_round]


def compare(all_records: list[dict]) -> tuple[list[dict], list[dict], dict, dict]:
    """From every round's worker records: (per (impl, seeds) the record of its fastest round, their table rows
    (`summarise`), those rows by (impl, seeds), every round's run time by (impl, seeds)). A pgjax row's (and rejax's
    own) ratio_pgjax_rejax is its env steps/s over rejax's at the same number of seeds."""
    records, run_times = fastest_rounds(all_records)
    rows = [summarise(r) for r in records]
    by = {(r["impl"], r["seeds"]): r for r in rows}
    for r in rows:
        rejax = by.get(("rejax", r["seeds"]))
        if rejax and (r["impl"] == "rejax" or r["impl"].startswith("pgjax")):
            r["ratio_pgjax_rejax"] = r["env_steps_per_s"] / rejax["env_steps_per_s"]
    return records, rows, by, run_times


def verdicts(all_records: list[dict], by: dict, impls: tuple[str, ...]) -> list[str]:
    """The lines that judge the issue's targets, for the pgjax rows named `impls`: per TARGETS entry on the row's
    backend, the speed-up over rejax (the median of the round-by-round ratios when several rounds ran, else the
    fastest rounds' ratio), MET or NOT MET; per SEED_TARGETS entry, whether every seed's final return reached SOLVED
    (the worst seed and the fraction at or above); then each pgjax row's share of the raw gymnax stepping rate."""
    lines = []
    for (backend, seeds), target in TARGETS.items():
        for impl in impls:
            r = by.get((impl, seeds))
            if r and r["backend"] == backend and r["ratio_pgjax_rejax"] is not None:
                per_round = round_ratios(all_records, impl, seeds)
                judged = statistics.median(per_round) if len(per_round) > 1 else r["ratio_pgjax_rejax"]
                verdict = "MET" if judged >= target else "NOT MET"
                spread = (
                    f"; per round {', '.join(f'{x:.2f}' for x in per_round)}: median {judged:.2f}x, judged on it"
                    if len(per_round) > 1 else ""
                )
                lines.append(
                    f"target {backend} {seeds} seed(s): {impl} >= {target}x rejax -> {judged:.2f}x, {verdict}"
                    f" (fastest rounds {r['ratio_pgjax_rejax']:.2f}x{spread}; at {r['steps_per_seed']} steps per seed;"
                    " the issue's targets are for 5e5)"
                )
    for backend, seeds in SEED_TARGETS:
        for impl in impls:
            r = by.get((impl, seeds))
            if r and r["backend"] == backend and r["worst_return"] is not None:
                verdict = "MET" if r["worst_return"] >= SOLVED else "NOT MET"
                lines.append(
                    f"target {backend} {seeds} seed(s): {impl}, no seed below {SOLVED:g} -> worst seed "
                    f"{r['worst_return']:.1f}, {r['frac_ge_475']:.2%} of seeds >= {SOLVED:g}, {verdict}"
                )
    for r in by.values():
        if r["impl"].startswith("pgjax"):
            ceiling = by.get(("gymnax-ceiling", r["seeds"]))
            if ceiling:
                lines.append(f"{r['impl']} at {r['seeds']} seed(s) runs at "
                             f"{r['env_steps_per_s'] / ceiling['env_steps_per_s']:.1%} of the raw gymnax stepping rate")
    return lines


def main() -> None:
    args = parse_args()
    started = time.time()
    say(f"ppo_vs_rejax: seeds {args.seeds}, {args.total_timesteps} steps per seed, "
        f"{args.eval_episodes} eval episodes per seed")
    say(f"host: {os.cpu_count()} CPUs, load average at start {load()}")
    try:
        say("uptime: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    except OSError:
        pass

    if not (args.skip_pgjax and args.skip_ceiling):
        # Fail fast (before building anything) if the pgjax side cannot run.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        code = "import jax, gymnax, pgjax.algos.ppo; print(jax.__version__, jax.default_backend())"
        try:
            r = subprocess.run([args.pgjax_python, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT))
            problem = r.stderr.strip() if r.returncode != 0 else None
        except OSError as e:
            problem = str(e)
        if problem:
            sys.exit(f"--pgjax-python {args.pgjax_python} cannot import pgjax "
                     f"(needs jax, flax, optax, chex, gymnax 1.x):\n{problem}")
        say(f"pgjax side: {args.pgjax_python}: jax {r.stdout.strip()}")
        pgjax_backend = r.stdout.split()[-1] if r.stdout.split() else "?"
    else:
        pgjax_backend = "?"

    rejax_python, rejax_error = None, None
    if not args.skip_rejax:
        try:
            rejax_python = ensure_rejax_python(args)
        except RejaxUnavailable as e:
            # Go on with pgjax and the ceiling (device time is scarce); exit non-zero at the end.
            rejax_error = str(e)
            say(f"!! rejax side unavailable: {rejax_error}\n!! continuing without rejax")

    records: list[dict] = []
    for seeds in args.seeds:
        for round_idx in range(args.rounds):  # interleaved, so that a slow spell of the machine hits every side
            if args.rounds > 1:
                say(f"\n==== {seeds} seed(s), round {round_idx + 1} of {args.rounds}")
            for rec in run_round(args, seeds, rejax_python, pgjax_backend):
                rec["round"] = round_idx
                records.append(rec)

    all_records = records
    records, rows, by, run_times = compare(all_records)

    say("\n== Sides")
    seen = set()
    for rec in records:
        info = rec["info"]
        key = (rec["impl"], info["python_executable"])
        if key in seen:
            continue
        seen.add(key)
        pk = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
        say(f"{rec['impl']:>15}: python {info['python']} ({info['python_executable']}), "
            f"jax {info['jax']} (jaxlib {info['jaxlib']}), "
            f"backend {info['backend']}, device {info['device']}; {pk}")
    if any(r["impl"] == "rejax" for r in rows):
        say("rejax: periodic evaluation disabled (eval_callback -> no-op, skip_initial_evaluation=True, eval_freq = "
            "total steps); lr annealed by passing optax.linear_schedule as learning_rate; max_grad_norm=0.5 is rejax's "
            "element-wise clip")
    say(f"steps per seed: {rows[0]['steps_per_seed'] if rows else '?'} (= total_timesteps // 512 updates x 512); "
        f"final return: mean over {args.eval_episodes} evaluation episodes per seed (stochastic policy), untimed")
    if args.xla_flags is not None:
        say(f"XLA_FLAGS for every worker: {args.xla_flags!r}")

    say("\n== Results" + (f" (each row its fastest of {args.rounds} interleaved rounds)" if args.rounds > 1 else ""))
    print_table(rows)
    if args.rounds > 1:
        for (impl, seeds), times in run_times.items():
            say(f"{impl} x {seeds}: run s by round {', '.join(f'{t:.2f}' for t in times)}")
    impls = (args.pgjax_impl, f"{args.pgjax_impl}-{args.cpu_devices}dev", f"{args.pgjax_impl}-split-2dev")
    for line in verdicts(all_records, by, impls):
        say(line)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["impl"])
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "records": all_records}, indent=1))
    say(f"\nwrote {out} and {out.with_suffix('.json')}")
    say(f"load average at end {load()}; total wall time {time.time() - started:.0f} s")
    expected = (["rejax"] if rejax_python else []) + ([] if args.skip_pgjax else [args.pgjax_impl])
    missing = [(i, s) for s in args.seeds for i in expected if (i, s) not in by]
    if rejax_error:
        say(f"!! rejax did not run: {rejax_error}")
    if missing:
        say(f"!! missing results: {missing}")
    if missing or rejax_error:
        sys.exit(1)


if __name__ == "__main__":
    main()
