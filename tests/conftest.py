import jax
import pytest

# The float32 tests compare against references computed at full float32 precision. On GPUs JAX's default
# float32 matmul rounds its inputs to TF32 (a 10-bit mantissa), ~1e-3 relative error; ask for full float32
# everywhere (a no-op on CPU). Set here, without touching the backend: test_parallel must choose the CPU
# device count before any backend starts.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def x64():
    """Run a module's tests in float64 (request it with `pytestmark = pytest.mark.usefixtures("x64")`)."""
    with jax.enable_x64(True):
        yield
