"""Measurement helpers shared by the benchmark workers (`_pgjax_ppo.py`, `_rejax_ppo.py`).

Imported from both virtual environments (ours with gymnax 1.x, rejax's with gymnax 0.0.9),
so it depends on nothing but the standard library and jax.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Callable

# The shared PPO settings of the comparison (issue 3, "Speed that must be shown").
HPARAMS = dict(
    env_id="CartPole-v1",
    num_envs=4,
    num_steps=128,
    num_epochs=4,
    num_minibatches=4,
    learning_rate=2.5e-4,
    anneal_lr=True,
    hidden_sizes=(64, 64),
    activation="tanh",
    discount=0.99,
    gae_lambda=0.95,
    clip_eps=0.2,
    ent_coef=0.01,
    vf_coef=0.5,
    max_grad_norm=0.5,
)
BATCH = HPARAMS["num_envs"] * HPARAMS["num_steps"]

# pgjax config fields that change speed, never results, so the comparison may set them.
SPEED_FIELDS = ("unroll",)
# Fields that trade precision for speed: allowed too, and the row is named after them (`impl_suffix`).
PRECISION_FIELDS = ("compute_dtype",)
# Fields where pgjax's default differs from rejax's fixed choice (Adam's epsilon: pgjax 1e-5, rejax optax's 1e-8):
# allowed so that pgjax can run at rejax's value, and the row is named after them too.
MATCHING_FIELDS = ("adam_eps",)


def tables():
    """The module `pgjax.tables`, loaded from its file: the orchestrator and rejax's worker import no pgjax
    (that module needs only the standard library)."""
    import importlib.util

    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pgjax", "tables.py")
    spec = importlib.util.spec_from_file_location("_pgjax_tables", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def impl_suffix(fields: dict[str, Any]) -> str:
    """The row name's suffix: "-bfloat16" for `compute_dtype="bfloat16"`, "-eps1e-08" for `adam_eps=1e-8`, ""
    for neither (float32, epsilon 1e-5): a row that rounds or optimises differently says so."""
    dtype = fields.get("compute_dtype", "float32")
    suffix = "" if dtype == "float32" else f"-{dtype}"
    if "adam_eps" in fields:
        suffix += f"-eps{float(fields['adam_eps']):.0e}"
    return suffix


def parse_speed_config(text: str) -> dict[str, Any]:
    """The JSON object of `--pgjax-config`, checked to set only `SPEED_FIELDS`, `PRECISION_FIELDS` and
    `MATCHING_FIELDS`; ValueError otherwise."""
    try:
        fields = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--pgjax-config must be a JSON object such as '{{\"unroll\": 8}}': {e}") from None
    allowed = SPEED_FIELDS + PRECISION_FIELDS + MATCHING_FIELDS
    if not isinstance(fields, dict) or not set(fields) <= set(allowed):
        raise ValueError(
            f"--pgjax-config may set only {list(allowed)} (the comparison fixes every other field); got {text!r}"
        )
    return fields


def pgjax_ppo_config(total_timesteps: int, split_actor_critic: bool = False, **speed: Any):
    """pgjax's `PPOConfig` with the comparison's settings (HPARAMS), optional `SPEED_FIELDS`, and optionally
    one clipped Adam per network (`split_actor_critic`, the layout of rejax's PPO) (imports pgjax)."""
    from pgjax.algos import ppo

    return ppo.PPOConfig(total_timesteps=total_timesteps, split_actor_critic=split_actor_critic, **HPARAMS, **speed)


def num_updates(total_timesteps: int) -> int:
    """Updates both implementations run: total_timesteps // (num_envs * num_steps)."""
    return max(1, total_timesteps // BATCH)


def worker_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, required=True, help="seeds run at once (1: plain jit; >1: jit(vmap))")
    p.add_argument("--total-timesteps", type=int, default=500_000)
    p.add_argument("--eval-episodes", type=int, default=128,
                   help="episodes per seed to evaluate the final policy (untimed)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of the compiled program; the fastest counts")
    p.add_argument("--json-out", required=True)
    p.add_argument("--mode", default="ppo", choices=["ppo", "ceiling"], help="(pgjax worker only)")
    p.add_argument("--cpu-devices", type=int, default=1,
                   help="(pgjax worker only) split the seeds over this many CPU devices (pgjax.parallel)")
    p.add_argument("--pgjax-config", default="{}",
                   help="(pgjax worker only) JSON object of PPOConfig fields that change no hyperparameter, "
                        "e.g. '{\"unroll\": 8}'")
    p.add_argument("--split-actor-critic", action="store_true",
                   help="(pgjax worker only) PPOConfig(split_actor_critic=True); with 1 seed and --cpu-devices 2, "
                        "the update split over the two devices (pgjax.parallel.actor_critic_sharded)")
    return p.parse_args()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def system_info(packages: tuple[str, ...]) -> dict[str, Any]:
    import jax

    dev = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in packages},
    }


def time_compiled(fn: Callable, *args: Any, repeats: int = 1) -> tuple[Any, dict[str, Any]]:
    """jit `fn`, time lower + compile, then time `repeats` runs of the compiled executable.

    Compile time is `lower` (tracing to StableHLO) plus `compile` (XLA); run time is the
    compiled call until its outputs are ready. Returns (output of the last run, timings).
    """
    import jax

    t0 = time.perf_counter()
    lowered = fn.lower(*args) if hasattr(fn, "lower") else jax.jit(fn).lower(*args)  # jitted already, or not
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    runs = []
    out = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        runs.append(time.perf_counter() - t)
    return out, {"lower_s": t1 - t0, "compile_s": t2 - t0, "run_s": min(runs), "run_s_all": runs}


def write_json(path: str, record: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
