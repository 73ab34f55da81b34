import os
import sys
from importlib.metadata import version

# Compile for the tests at LLVM -O0: XLA's graph optimisations (fusion, layout, algebraic simplification) all still
# run, only the machine-code optimisation of the fused kernels is off. The tests' programs are tiny and compiled
# once each, so compiling is most of the suite's time: -O0 compiled a PPO run in 3.7 s instead of 6.9 s (running it
# took 0.3 s instead of 0.1 s). Results agree to float rounding (LLVM keeps IEEE semantics at every level; every
# bit-for-bit check compares two programs compiled alike). `PGJAX_TEST_FULL_OPT=1` compiles at XLA's default level,
# as the demo and the benchmarks do; the suite passes both ways. Set before JAX's backend starts (it reads XLA_FLAGS
# once); subprocesses and notebook kernels inherit it.
#
# `PGJAX_TEST_FAST_COMPILE=1` (make test's first phase) adds `--xla_cpu_use_fusion_emitters=false` where jaxlib takes
# it (0.9; 0.11 removed it and aborts on it as unknown): XLA:CPU's older kernel emitters, which compile the tests'
# programs faster (a PPO run 2.7 s instead of 3.9-4.3 s, TRPO 3.2 s instead of 5.1-5.3 s; running as fast) and agree
# with the default ones to float rounding, but round some differently fused programs apart. The tests marked
# `exact_compiler` assert bit-for-bit equality between separately compiled programs (segments and one call, a resumed
# run, in-run and separate evaluation), or tolerances measured under the default emitters, which users compile with:
# make test runs them in a second phase without the flag.
LEGACY_EMITTERS = False
if os.environ.get("PGJAX_TEST_FULL_OPT", "0") != "1":
    _flags = [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]
    if os.environ.get("PGJAX_TEST_FAST_COMPILE", "0") == "1":
        LEGACY_EMITTERS = tuple(int(part) for part in version("jaxlib").split(".")[:2]) < (0, 10)
    if LEGACY_EMITTERS:
        _flags.append("--xla_cpu_use_fusion_emitters=false")
    os.environ["XLA_FLAGS"] = " ".join(filter(None, _flags))

import jax  # noqa: E402
import pytest  # noqa: E402

# The command-line scripts in experiments/ (train.py, evaluate.py, offline_gymnax.py) are imported by their tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments"))

# The float32 tests compare against references computed at full float32 precision. On GPUs JAX's default
# float32 matmul rounds its inputs to TF32 (a 10-bit mantissa), ~1e-3 relative error; ask for full float32
# everywhere (a no-op on CPU). Set here, without touching the backend: test_parallel must choose the CPU
# device count before any backend starts.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(config, items):
    exact = [item.nodeid for item in items if item.get_closest_marker("exact_compiler")]
    if LEGACY_EMITTERS and exact:
        raise pytest.UsageError(
            f"PGJAX_TEST_FAST_COMPILE=1 selects XLA's older CPU emitters, under which the {len(exact)} tests marked "
            f"exact_compiler (first: {exact[0]}) do not hold: add -m 'not exact_compiler' and run those without it "
            f"(make test runs both phases)."
        )


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Jupyter set up for executing notebooks/ in quick mode with this interpreter (tests/notebook_runner.py)."""
    from notebook_runner import kernel_environment

    with kernel_environment(tmp_path_factory.mktemp("jupyter")):
        yield


@pytest.fixture(scope="module")
def x64():
    """Run a module's tests in float64 (request it with `pytestmark = pytest.mark.usefixtures("x64")`)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def gymnax_offline(monkeypatch):
    """gymnax.make as it fails for an environment that downloads data (MNISTBandit-bsuite) on a machine offline."""
    from urllib.error import URLError

    from pgjax.envs import registry

    def offline_make(env_id, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(registry.gymnax, "make", offline_make)


# Audit of statistical tolerances: `PGJAX_TEST_KEY_OFFSET=k pytest ...` shifts every seed passed to
# `jax.random.key` / `jax.random.PRNGKey` (in tests and library alike) by k, so each statistical test draws other
# samples. A tolerance chosen for its one fixed key would fail for some k; a test whose expected value depends on
# the key (reproducibility checks compare two runs, which shift together) is unaffected. CI runs k = 0 (no shift).
_KEY_OFFSET = int(os.environ.get("PGJAX_TEST_KEY_OFFSET", "0"))
if _KEY_OFFSET:
    _original_key, _original_prng_key = jax.random.key, jax.random.PRNGKey

    def _shifted_key(seed, *args, **kwargs):
        return _original_key(seed + _KEY_OFFSET, *args, **kwargs)

    def _shifted_prng_key(seed, *args, **kwargs):
        return _original_prng_key(seed + _KEY_OFFSET, *args, **kwargs)

    jax.random.key, jax.random.PRNGKey = _shifted_key, _shifted_prng_key
