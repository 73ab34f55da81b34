"""The environment for tests that run Python in a fresh process: pgjax importable, on the CPU, with conftest's
XLA compile flags and no other XLA flag (the child chooses its own CPU device count)."""

import os
import subprocess
import sys

# The XLA flags conftest.py sets for the tests' compiles (kept; any other flag is dropped).
CONFTEST_FLAGS = ("--xla_backend_optimization_level", "--xla_cpu_use_fusion_emitters")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def cpu_subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    kept = [f for f in env.get("XLA_FLAGS", "").split() if f.startswith(CONFTEST_FLAGS)]
    env["XLA_FLAGS"] = " ".join(kept)
    env["JAX_PLATFORMS"] = "cpu"  # tests of CPU devices: on a GPU machine jax.devices() would be the one GPU
    return env


def run_cpu_python(script: str) -> subprocess.CompletedProcess:
    """`python -c script` in a fresh process with `cpu_subprocess_env()`; its output captured as text."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cpu_subprocess_env(),
                          timeout=600)
