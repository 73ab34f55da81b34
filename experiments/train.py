"""Train an online policy-gradient algorithm on a gymnax (or tabular) environment, many seeds in one compiled call.

    python experiments/train.py --algo ppo --env CartPole-v1 --num-seeds 8 --total-timesteps 500000
    python experiments/train.py --algo trpo --env Pendulum-v1 --max-kl 0.02 --out runs/my-run

Every field of the algorithm's config is a flag (`--algo ppo --env Pendulum-v1 --help` describes them, with the
preset's values). Writes DIR/config.json, DIR/metrics.csv (one row per update per seed: returns, losses, entropy,
KL, PPO's clip fraction and `steps_taken`, explained variance, the pre-clip gradient norm `grad_norm`, the update's
learning rate `lr`, wall time; with --eval-every K, `eval_return`: the policy's mode evaluated inside the run after
every K-th update and the last), DIR/learning_curve.png and DIR/params.msgpack; `python experiments/evaluate.py DIR`
reloads and evaluates the policies.

A seeds x hyperparameters grid in the same one compiled call (`--grid`, repeatable; vmappable fields, and the
environment's numeric params fields as env.FIELD, e.g. --grid env.length=0.25,0.5,1 for CartPole's pole):

    python experiments/train.py --algo ppo --env CartPole-v1 --num-seeds 8 \\
        --grid learning_rate=1e-4,2.5e-4,1e-3 --grid ent_coef=0,0.01

trains every combination (a cell) on the same --num-seeds seeds (paired comparisons) and writes DIR/summary.csv
(per cell: median, mean with its 95% t interval, worst and best final return over seeds, and the paired difference
from the best cell, seed by seed, with its 95% t interval (the best: the highest mean among the cells whose seeds
all finished an episode in the last 10% of updates); the interquartile mean with its bootstrap interval and
the probability of improvement over the best cell: pgjax.score_stats), DIR/metrics.csv (one row
per cell, seed and update, the cell's values first), DIR/learning_curves.png (one curve per cell) and DIR/cell-K/,
a run directory per cell for evaluate.py (`pgjax.runs.save_grid`). The same flags with --seed-indices replay
those seeds in every cell, bit for bit.

A replay (--seed-indices) runs its seeds as lanes of the sweep's per-device program, --num-seeds (times the grid's
cells) over the --cpu-devices devices: it reproduces the sweep bit for bit only with the sweep's own --num-seeds and
--cpu-devices (another split changes the program, which then agrees to float32 rounding only). Its config.json
records what it assumed ("replay": the sweep's num_seeds per cell, its lanes, devices and lanes per device), to
check against the sweep's config.json (num_seeds, devices).

Environment keywords (`--env-kwarg KEY=VALUE`, repeatable: a params field such as gravity=12, or a constructor
keyword such as num_states=20 for tabular:random) set the variant every seed trains on; `--env-randomize
FIELD=LOW:HIGH` (repeatable) draws a params field from U[LOW, HIGH] at every episode's reset instead (domain
randomisation; `FIELD=LOW:HIGH:log` log-uniformly; evaluations stay on the nominal environment); with
`--env-randomize-observe true` the policy also observes each episode's draws, scaled to [-1, 1] over their ranges
(a context-conditioned policy).

Long runs in segments, with a checkpoint after each (`--checkpoint-every K` updates; DIR/checkpoint.npz):

    python experiments/train.py --algo ppo --env Acrobot-v1 --num-seeds 64 --checkpoint-every 100 --out runs/long
    python experiments/train.py --resume runs/long      # after an interruption: continues where it stopped

Each segment is one compiled call (segments of equal length share one compile); the segments compute the same
updates as the one-call run, bit for bit on the same machine, and so does a resumed run. The checkpoint is removed
once the run's files are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
import warnings

import jax
import numpy as np

from pgjax import checkpoints, parallel  # jax and NumPy only: JAX's backend has not started


def _cpu_devices_arg(argv: list[str]) -> str:
    """The value of --cpu-devices in argv ("auto" when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--cpu-devices" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--cpu-devices="):
            return arg.split("=", 1)[1]
    return "auto"


def setup_cpu_devices(requested: str) -> None:
    """One CPU device per core (or the requested count), if JAX has not started yet; otherwise keep what it has."""
    if requested != "auto" and not requested.isdigit():
        return  # parse_args reports the bad value
    count = None if requested == "auto" else int(requested)
    try:
        parallel.use_cpu_devices(count)
    except (RuntimeError, ValueError):
        if requested != "auto":
            print(f"note: JAX already started with {len(jax.devices('cpu'))} CPU device(s); --cpu-devices ignored")


CHECKPOINT = "checkpoint.npz"


def expand_resume(argv: list[str]) -> list[str]:
    """argv itself, or for `--resume DIR [--no-progress]` the flags DIR's run was started with (from its
    checkpoint), so that the resumed run rebuilds the same programs."""
    if "--resume" not in argv and not any(a.startswith("--resume=") for a in argv):
        return argv
    rest = [a for a in argv if a != "--no-progress"]
    if len(rest) == 2 and rest[0] == "--resume":
        run_dir = rest[1]
    elif len(rest) == 1 and rest[0].startswith("--resume="):
        run_dir = rest[0].split("=", 1)[1]
    else:
        raise SystemExit("error: --resume DIR takes no other flags (but --no-progress): the run continues with the "
                         f"flags it was started with; got {argv}")
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):
        done = os.path.exists(os.path.join(run_dir, "metrics.csv"))
        raise SystemExit(f"error: no {CHECKPOINT} in {run_dir!r}: "
                         + ("the run finished (its files are there)." if done else
                            "a run saves one only with --checkpoint-every K, after its first segment."))
    try:
        meta = checkpoints.read_meta(path)
        saved = meta["argv"]
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {path}: {err}") from None
    if meta.get("versions", {}).get("jax") != jax.__version__:
        print(f"note: the run started under jax {meta.get('versions', {}).get('jax')}, this is jax {jax.__version__}: "
              "the resumed updates may round differently from an uninterrupted run")
    # The run continues in DIR itself: a relative --out among the saved flags may name another directory from here.
    return saved + ["--resume-from", path, "--out", run_dir] + (["--no-progress"] if "--no-progress" in argv else [])


if __name__ == "__main__":
    # JAX fixes its CPU device count when it starts, and importing gymnax (below) starts it.
    setup_cpu_devices(_cpu_devices_arg(expand_resume(sys.argv[1:])))

from pgjax import algos, envs, runs, tables  # noqa: E402
from pgjax.algos import common, presets  # noqa: E402


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _show(value) -> str:
    """A field value as the command line writes it (lists space-separated)."""
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def build_parser(algo: str, env_id: str | None = None) -> argparse.ArgumentParser:
    """The CLI for `algo`; each config field's help is its documentation (`common.field_docs`), its default and,
    when `env_id`'s preset sets it, the preset's value."""
    config_cls, _ = algos.get(algo)
    docs = common.field_docs(config_cls)
    env_id = env_id or config_cls.env_id
    preset = presets.preset(algo, env_id)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default="ppo", choices=sorted(algos.ALGORITHMS))
    p.add_argument("--env", dest="env_id", default=None, help="environment id (config field env_id)")
    p.add_argument("--env-module", action="append", default=[], metavar="MODULE",
                   help="import this module (dotted name or .py path) first: it registers your own environments "
                        "with pgjax.envs.register (repeatable; e.g. experiments/custom_env.py for Corridor-v0)")
    p.add_argument("--num-seeds", type=int, default=8, help="seeds trained at once with jax.vmap")
    p.add_argument("--seed", type=int, default=0, help="base seed; seed i uses jax.random.fold_in(key(seed), i)")
    p.add_argument("--seed-indices", type=int, nargs="+", default=None, metavar="I",
                   help="rerun only these seeds of a sweep run with the same flags (--num-seeds: the sweep's "
                        "count, and the sweep's --cpu-devices): they run as lanes of the sweep's per-device program "
                        "(pgjax.runs.replay_seeds), so their rows reproduce the sweep's bit for bit on the same "
                        "machine (with --grid: those seeds in every cell of the grid); config.json records the "
                        "sweep's seeds and devices assumed")
    p.add_argument("--grid", action="append", default=None, metavar="FIELD=V1,V2,...",
                   help=f"train every combination of these values (a cell), --num-seeds seeds each, in one compiled "
                        f"call; repeat for more fields. Only vmappable hyperparameters "
                        f"({', '.join(config_cls.HYPERPARAMS)}) and the environment's numeric params fields as "
                        f"env.FIELD (e.g. env.length=0.25,0.5,1 for CartPole's pole, env.max_steps_in_episode)")
    p.add_argument("--env-kwarg", action="append", default=None, metavar="KEY=VALUE",
                   help="a keyword for the environment (config field env_kwargs; repeatable): a field of its params "
                        "(e.g. gravity=12, max_steps_in_episode=200) or of its constructor (e.g. num_states=20 for "
                        "tabular:random); the value is read as JSON (numbers, true/false, lists), else as text")
    p.add_argument("--env-randomize", action="append", default=None, metavar="FIELD=LOW:HIGH[:log]",
                   help="domain randomisation (config field env_randomize; repeatable): every episode draws this "
                        "numeric params field from U[LOW, HIGH] (e.g. length=0.25:2 for CartPole's pole), or "
                        "log-uniformly with :log (e.g. masspole=0.02:0.5:log); "
                        "evaluations use the nominal environment; --env-randomize-observe true lets the policy see "
                        "each episode's draws")
    p.add_argument("--out", default=None, help="run directory (default runs/<algo>-<env>-<time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="write over a run already in --out: its files (and grid cells, evaluations) are removed first; "
                        "without it such an --out is refused")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="train in segments of K updates, each one compiled call, saving DIR/checkpoint.npz after "
                        "each (0: the whole run in one call); the same updates bit for bit. Not with --seed-indices")
    p.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted --checkpoint-every run from DIR/checkpoint.npz, with the flags it "
                        "was started with (give no others but --no-progress)")
    p.add_argument("--resume-from", default=None, help=argparse.SUPPRESS)  # set by expand_resume
    p.add_argument("--cpu-devices", default="auto",
                   help="CPU devices to split the seeds over: 'auto' (one per core), or a count (1: one device). "
                        "Results are bit for bit the same for any count that leaves each device as many seeds "
                        "(otherwise the same to float32 rounding); more devices run independent seeds in parallel. "
                        "No effect on GPU.")
    group = p.add_argument_group(f"{config_cls.__name__} fields")
    for field in dataclasses.fields(config_cls):
        if field.name == "env_id":
            continue
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        note = f"default {_show(default)}"
        if field.name in preset:
            note += f"; {env_id} preset: {_show(preset[field.name])}"
        help_text = f"{docs.get(field.name, '')} ({note})".strip()
        if isinstance(default, bool):
            group.add_argument(flag, type=_parse_bool, default=None, help=help_text)
        elif isinstance(default, tuple) and field.name == "hidden_sizes":
            group.add_argument(flag, type=int, nargs="+", default=None, help=help_text)
        elif isinstance(default, (int, float, str)):
            group.add_argument(flag, type=type(default), default=None, help=help_text)
    return p


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="ppo")
    pre.add_argument("--env", default=None)
    pre.add_argument("--env-module", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    for module in known.env_module:  # registers its environments before --env is checked
        try:
            envs.import_env_module(module)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    if known.algo not in algos.ALGORITHMS:
        raise SystemExit(f"--algo must be one of {sorted(algos.ALGORITHMS)}; got {known.algo!r}")
    parser = build_parser(known.algo, known.env)
    args = parser.parse_args(argv)
    if args.num_seeds < 1:
        parser.error(f"--num-seeds must be >= 1; got {args.num_seeds}")
    if args.seed_indices is not None:
        if min(args.seed_indices) < 0 or max(args.seed_indices) >= args.num_seeds or \
                len(set(args.seed_indices)) != len(args.seed_indices):
            parser.error(f"--seed-indices must be distinct ints in [0, --num-seeds={args.num_seeds}) (pass the "
                         f"sweep's --num-seeds); got {args.seed_indices}")
    if args.resume is not None:
        parser.error("--resume DIR takes no other flags (but --no-progress)")
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0 (0: no checkpoints); got {args.checkpoint_every}")
    if args.checkpoint_every and args.seed_indices is not None:
        parser.error("--checkpoint-every does not combine with --seed-indices (a replay reruns a few seeds of a "
                     "sweep; run it in one call)")
    if args.cpu_devices != "auto" and not (args.cpu_devices.isdigit() and int(args.cpu_devices) >= 1):
        parser.error(f"--cpu-devices must be 'auto' or a positive int; got {args.cpu_devices!r}")
    config_cls, _ = algos.get(args.algo)
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if getattr(args, f.name, None) is not None
    }
    # The documented preset for (algo, env) first, then the flags given.
    settings = {**presets.preset(args.algo, overrides.get("env_id", config_cls.env_id)), **overrides}
    try:
        if args.env_kwarg:
            settings["env_kwargs"] = {**dict(settings.get("env_kwargs", ())), **runs.parse_env_kwargs(args.env_kwarg)}
        if args.env_randomize:
            settings["env_randomize"] = runs.parse_env_ranges(args.env_randomize)
        config = config_cls(**settings)
        common.make_env(config)  # unknown environment keywords and randomised fields fail here, before compiling
    except ValueError as err:
        parser.error(str(err))
    args.grid = parse_grid(parser, config, args.grid or [], overrides)
    return args, config





def parse_grid(parser, config, specs: list[str], overrides: dict) -> dict[str, tuple[float, ...]]:
    """{field: values} from --grid FIELD=V1,V2,... flags, each value checked by the config's own validation."""
    grid = {}
    env_fields = common.env_grid_fields(config)
    for spec in specs:
        name, _, text = spec.partition("=")
        name = name.strip().lstrip("-")
        env_field = name.startswith(common.ENV_PARAM_PREFIX)
        if not env_field:
            name = name.replace("-", "_")
        if name not in type(config).HYPERPARAMS and name not in env_fields:
            parser.error(f"--grid {spec!r}: only the vmappable hyperparameters ({', '.join(type(config).HYPERPARAMS)}) "
                         f"and the environment's numeric params fields ({', '.join(env_fields)}) can be gridded; the "
                         "other fields fix array shapes or code paths, so each of their values needs its own run")
        if env_field:  # a field set for every lane already (--env-kwarg) or drawn per episode (--env-randomize)
            field = name[len(common.ENV_PARAM_PREFIX):]
            given = field in dict(config.env_kwargs) or field in config.randomize_ranges
        else:
            given = name in overrides
        if name in grid or given:
            parser.error(f"--grid {spec!r}: {name} is set twice (another --grid, its own flag, --env-kwarg or "
                         "--env-randomize); give it once")
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            parser.error(f"--grid {spec!r}: expected {name}=V1,V2,... with numbers")
        if len(set(values)) != len(values):
            parser.error(f"--grid {spec!r}: a value is repeated")
        for value in values:
            try:
                if env_field:
                    envs.check_param_value(config.env_id, name[len(common.ENV_PARAM_PREFIX):], env_fields[name], value)
                else:
                    config.replace(**{name: value})
            except ValueError as err:
                parser.error(f"--grid {spec!r}: {err}")
        if env_field and isinstance(env_fields[name], int):
            values = tuple(int(v) for v in values)
        grid[name] = values
    return grid


def lanes_program(config, fn, num_lanes: int, in_axes):
    """(program, place, device count): `fn` vmapped over `num_lanes` lanes (in_axes: 0 or None per argument) as a
    sweep runs it: the lanes split over the devices, or, for a split-actor-critic config whose lanes cannot be split,
    each update split between two devices. `place(*args)` puts the arguments where the program wants them."""
    if getattr(config, "split_actor_critic", False) and len(parallel.devices_for(num_lanes)) < 2 <= len(jax.devices()):
        # The seeds cannot be split over the devices (one seed, or a count no device count divides): split each
        # update instead, the actor's minibatch epochs on one device and the critic's on another.
        return parallel.actor_critic_sharded(jax.vmap(fn, in_axes=in_axes)), (lambda *args: args), 2
    return runs.split_over_devices(fn, num_lanes, in_axes)  # seeds split over the devices


@dataclasses.dataclass(frozen=True)
class Segments:
    """--checkpoint-every: segments of `every` updates, a checkpoint at `path` after each (`meta`: what resuming
    needs), continuing from it with `resume`."""

    every: int
    path: str
    meta: dict
    resume: bool = False


def run_sweep(config, train, progress, keys, hparams=None, segments: Segments | None = None):
    """All lanes (keys [n], with hparams {name: [n]} for a grid) in one compiled call, split over the CPU devices
    (or in segments with checkpoints); prints compile and run times."""
    num_lanes = keys.shape[0]
    args = (keys,) if hparams is None else (keys, hparams)
    if segments is not None:
        return run_segments(config, train, progress, args, segments)
    program, place, num_devices = lanes_program(config, train, num_lanes, 0)
    args = place(*args)
    t0 = time.perf_counter()
    compiled = program.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    progress.start = time.perf_counter()
    output = jax.block_until_ready(compiled(*args))
    run_s = time.perf_counter() - progress.start
    progress.close()
    _print_speed(config, num_lanes * config.num_updates, compile_s, run_s, num_devices)
    return output


def _print_speed(config, lane_updates: int, compile_s: float, run_s: float, num_devices: int) -> None:
    print(f"compile {compile_s:.1f} s, run {run_s:.1f} s, {lane_updates * config.batch_size / run_s:,.0f} env steps/s "
          f"({num_devices} {jax.default_backend()} device{'s' if num_devices > 1 else ''})")


def run_segments(config, train, progress, args, segments: Segments):
    """The run of run_sweep in segments of `segments.every` updates with a checkpoint after each
    (`runs.train_in_segments`), continued from that checkpoint with `segments.resume`; prints compile and run
    times."""
    if segments.resume:
        print(f"resuming from {segments.path}")
    with warnings.catch_warnings():
        # Each segment's divergence warning as it comes, on one line.
        warnings.simplefilter("always", RuntimeWarning)
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        try:
            done = runs.train_in_segments(
                train, args[0], segments.every, segments.path, *args[1:], resume=segments.resume,
                progress=progress, meta=segments.meta, lanes_program=functools.partial(lanes_program, config))
        except ValueError as err:  # a checkpoint of another run
            raise SystemExit(f"error: {err}") from None
    if segments.resume:
        print(f"resumed at update {done.first_update} of {config.num_updates}")
    if config.num_updates > done.first_update:
        lane_updates = args[0].shape[0] * (config.num_updates - done.first_update)
        _print_speed(config, lane_updates, done.compile_s, done.run_s, done.num_devices)
    return done.output


def run_replay(train, progress, keys, num_seeds, sweep_lanes, what, hparams=None):
    """Replays lanes (keys [n], hparams {name: [n]} for a grid) as lanes of the sweep's per-device program, so they
    equal their rows of the sweep of `sweep_lanes` lanes (`num_seeds` per cell) bit for bit; prints `what`, the
    compile and run times. Returns (output, replay): `replay` {"sweep_num_seeds", "sweep_lanes", "sweep_devices",
    "lanes_per_device"} is the sweep it assumed (bit for bit only if the sweep ran so), for the run's config.json.
    The wall times start after compiling, as a sweep's."""
    num_devices = len(parallel.devices_for(sweep_lanes))
    per_device = sweep_lanes // num_devices
    print(f"{what} as lanes of the sweep's program ({per_device} lanes on each of {num_devices} "
          f"device{'s' if num_devices > 1 else ''}; bit for bit with a sweep of the same --num-seeds and "
          "--cpu-devices)")
    t0 = time.perf_counter()
    output = jax.block_until_ready(runs.replay_seeds(train, keys, per_device, hparams, progress=progress,
                                                     num_devices=num_devices))
    run_s = time.perf_counter() - progress.start
    progress.close()
    print(f"compile {progress.start - t0:.1f} s, run {run_s:.1f} s")
    return output, {"sweep_num_seeds": num_seeds, "sweep_lanes": sweep_lanes, "sweep_devices": num_devices,
                    "lanes_per_device": per_device}


def main(argv=None) -> int:
    argv = expand_resume(list(sys.argv[1:] if argv is None else argv))
    args, config = parse_args(argv)
    setup_cpu_devices(args.cpu_devices)
    _, make_train = algos.get(args.algo)
    out = args.out or os.path.join("runs", f"{args.algo}-{config.env_id}-{time.strftime('%Y%m%d-%H%M%S')}")
    # before training: found only at save_run, a bad --out lost the whole run
    tables.check_output_path(lambda message: sys.exit(f"error: {message}"), "--out", out, "dir")
    if args.resume_from is None:  # a run written over another would mix the two (runs.clear_run)
        checkpoint = os.path.join(out, CHECKPOINT)
        if os.path.exists(checkpoint) and not args.overwrite:  # rerunning the command would lose it
            raise SystemExit(f"error: {checkpoint} holds an interrupted run's checkpoint: continue it with "
                             f"`train.py --resume {out}`, or add --overwrite (or choose another --out) to start afresh")
        found = runs.run_files(out)
        if found and not args.overwrite:
            raise SystemExit(f"error: {out} already holds a run ({', '.join(found)}); choose another --out, or add "
                             "--overwrite to replace it")
    segments = None
    if args.checkpoint_every:
        # What --resume needs: these flags (the run directory fixed, the progress bar left to the resumed command).
        flags = [a for a in argv if a != "--no-progress"]
        if args.resume_from is not None:
            flags = flags[:flags.index("--resume-from")]
        meta = {"argv": flags + ([] if args.out else ["--out", out]), "versions": {"jax": jax.__version__}}
        os.makedirs(out, exist_ok=True)
        resume = args.resume_from is not None
        segments = Segments(args.checkpoint_every, os.path.join(out, CHECKPOINT), meta, resume)
    progress = runs.Progress(config.num_updates, config.batch_size, show=not args.no_progress)
    seed_indices = args.seed_indices or list(range(args.num_seeds))
    keys = runs.seed_keys(args.seed, seed_indices)
    try:  # builds the environment: one whose data cannot be fetched fails here, before anything compiles
        train = make_train(config, progress=progress)
        if args.grid:  # every cell checked (grid_lanes) before --overwrite clears
            cells = runs.grid_cells(args.grid)
            grid = (cells, *runs.grid_lanes(config, cells, keys))
    except ValueError as err:
        progress.close()
        raise SystemExit(f"error: {err}") from None
    if args.overwrite and args.resume_from is None and runs.run_files(out):  # the new run is valid: replace the old
        print(f"--overwrite: removed {', '.join(runs.clear_run(out))} from {out}")
    if args.grid:
        status = run_grid(args, config, train, progress, keys, out, grid, segments)
        _remove_checkpoint(segments)
        return status
    replay = None
    if args.seed_indices is not None:
        output, replay = run_replay(train, progress, keys, args.num_seeds, args.num_seeds,
                                    f"{args.algo.upper()} on {config.env_id}: replaying seeds {seed_indices} of "
                                    f"{args.num_seeds}")
    else:
        print(f"{args.algo.upper()} on {config.env_id}: {args.num_seeds} seeds x {config.num_updates} updates x "
              f"{config.batch_size} steps = {args.num_seeds * config.num_updates * config.batch_size:,} env steps")
        output = run_sweep(config, train, progress, keys, segments=segments)
    print("\n".join(final_return_lines(runs.final_returns(output.metrics), seed_indices)))
    last_eval = runs.last_evaluation(output.metrics)  # --eval-every: the last evaluation is after the last update
    if last_eval is not None:
        print(f"evaluation after the last update ({config.eval_episodes} episodes, {_eval_actions(config)}) per seed: "
              f"{per_seed(last_eval, seed_indices)}")
        print(f"evaluation median {np.nanmedian(last_eval):.1f}, worst {np.nanmin(last_eval):.1f}")
    runs.save_run(out, args.algo, config, output, args.seed, progress.wall_time, seed_indices, replay)
    print(f"wrote {out}/config.json, metrics.csv, learning_curve.png, params.msgpack")
    _remove_checkpoint(segments)
    return report_divergence(runs.non_finite_seeds(output, seed_indices), len(seed_indices))


def final_return_lines(final: np.ndarray, labels: list[int]) -> list[str]:
    """What a run prints of its seeds' final returns (`runs.final_returns` [seeds], NaN for a seed that finished no
    episode in the last 10% of updates; `labels`: their seed indices): a warning counting the NaN seeds, every
    seed's value (`per_seed`), and the median and worst over the seeds that have a value."""
    unfinished = int(np.isnan(final).sum())
    lines = [f"warning: {unfinished} seed(s) finished no episode in the last 10% of updates"] if unfinished else []
    lines.append(f"final mean episode return (last 10% of updates) per seed: {per_seed(final, labels)}")
    if unfinished < len(final):  # a seed without a finished episode has no return to rank
        lines.append(f"median {np.nanmedian(final):.1f}, worst {np.nanmin(final):.1f}" + (
            f" (of the {len(final) - unfinished} of {len(final)} seeds that finished an episode in the last 10% of "
            "updates)" if unfinished else ""))
    return lines


def unfinished_cells_note(summary: list[dict]) -> str | None:
    """The note a grid prints when some cell's seeds finished no episode in the last 10% of updates (`summary`:
    `runs.save_grid`'s rows, with "cell", "finished" and "seeds"); None when every seed of every cell did."""
    unfinished = [row for row in summary if row["finished"] < row["seeds"]]
    if not unfinished:
        return None
    # Their means are over the finished seeds only: summarize_final_returns does not pick them best.
    return ("note: " + "; ".join(f"cell {row['cell']}: {row['finished']} of {row['seeds']} seeds" for row in unfinished)
            + " finished an episode in the last 10% of updates (the others have no final return); the best cell is "
            "chosen among the cells whose seeds all did")


def per_seed(values: np.ndarray, labels: list[int], most: int = 16) -> str:
    """Every seed's value (up to `most` seeds); for more, the five lowest with their seed numbers and the quartiles,
    so that a sweep of thousands of seeds prints a line, not thousands of numbers (each seed's are in metrics.csv)."""
    if len(values) <= most:
        return str(np.round(values, 1).tolist())
    lowest = np.argsort(np.nan_to_num(values, nan=-np.inf), kind="stable")[:5]  # seeds without a value first
    q25, q75 = np.nanpercentile(values, [25, 75]) if not np.isnan(values).all() else (np.nan, np.nan)
    return (f"lowest {', '.join(f'seed {labels[i]}: {values[i]:.1f}' for i in lowest)}; quartiles {q25:.1f} / "
            f"{q75:.1f} over {len(values)} seeds (each seed's in metrics.csv)")


def _remove_checkpoint(segments: Segments | None) -> None:
    """The run's files are written: its checkpoint has nothing left to resume."""
    if segments is not None and os.path.exists(segments.path):
        os.remove(segments.path)


def _eval_actions(config) -> str:
    return "sampled actions" if config.eval_stochastic else "the policy's mode"


def run_grid(args, config, train, progress, keys, out, grid, segments: Segments | None = None) -> int:
    """Every cell of --grid on the same seeds, all lanes in one compiled call (or, with --seed-indices, those seeds
    of every cell replayed as lanes of the grid's per-device program); prints the per-cell summary. `grid`:
    (cells, lane keys, hparams) of `runs.grid_cells` / `runs.grid_lanes`."""
    cells, lane_keys, hparams = grid
    num_seeds = keys.shape[0]
    replay = None
    if args.seed_indices is not None:
        output, replay = run_replay(train, progress, lane_keys, args.num_seeds, len(cells) * args.num_seeds,
                                    f"{args.algo.upper()} on {config.env_id}: replaying seeds {args.seed_indices} of "
                                    f"{args.num_seeds} in each of {len(cells)} cells", hparams)
    else:
        steps = lane_keys.shape[0] * config.num_updates * config.batch_size
        print(f"{args.algo.upper()} on {config.env_id}: {len(cells)} cells x {num_seeds} seeds x "
              f"{config.num_updates} updates x {config.batch_size} steps = {steps:,} env steps")
        output = run_sweep(config, train, progress, lane_keys, hparams, segments)
    seed_indices = args.seed_indices or list(range(num_seeds))
    summary = runs.save_grid(out, args.algo, config, cells, output, args.seed, progress.wall_time, seed_indices,
                             replay)
    names = list(args.grid)
    widths = [max(16, len(n) + 2) for n in names]  # env.max_steps_in_episode is longer than 16
    print("final mean episode return (last 10% of updates) over seeds, per cell:")
    print("  cell  " + "".join(f"{n:>{w}s}" for n, w in zip(names, widths))
          + f"{'median':>9s}{'mean':>9s}{'+-95%':>8s}{'worst':>9s}{'best':>9s}{'vs best (paired)':>20s}")
    for row in summary:
        print(f"  {row['cell']:4d}  " + "".join(f"{row[n]:{w}g}" for n, w in zip(names, widths))
              + f"{row['median']:9.1f}{row['mean']:9.1f}{row['ci95']:8.1f}{row['worst']:9.1f}{row['best']:9.1f}"
              + f"{row['vs_best']:12.1f} +-{row['vs_best_ci95']:6.1f}")
    note = unfinished_cells_note(summary)
    if note:
        print(note)
    if "eval_median" in summary[0]:
        print(f"last in-run evaluation ({config.eval_episodes} episodes, {_eval_actions(config)}) "
              "over seeds, per cell: "
              + "; ".join(f"cell {row['cell']} median {row['eval_median']:.1f}, worst {row['eval_worst']:.1f}"
                          for row in summary))
    print(f"wrote {out}/summary.csv, metrics.csv, learning_curves.png, config.json, "
          f"cell-0 .. cell-{len(cells) - 1}/")
    diverged = [f"cell {index} ({runs.cell_label(cell)}), {line}"
                for index, (cell, part) in enumerate(zip(cells, runs.grid_cell_outputs(output, len(cells))))
                for line in runs.non_finite_seeds(part, seed_indices)]
    return report_divergence(diverged, len(cells) * num_seeds)


def report_divergence(lines: list[str], num_runs: int) -> int:
    """Exit status 1, with the diverged seeds and a fix on stderr, when any seed went NaN or infinite."""
    if not lines:
        return 0
    print(f"error: {len(lines)} of {num_runs} seeds diverged (NaN or inf); their returns after that update are "
          "meaningless (the files above are kept for inspection):", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    print("fix: a smaller --learning-rate or --max-grad-norm, or --reward-scale below 1 for large rewards",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
