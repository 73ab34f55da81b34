import jax
import pytest


@pytest.fixture(scope="module")
def x64():
    """Run a module's tests in float64 (request it with `pytestmark = pytest.mark.usefixtures("x64")`)."""
    with jax.enable_x64(True):
        yield
