"""The other half of the notebooks (odd positions in notebooks/), executed headlessly in quick mode: a file of its
own so that the two test workers (one file each at a time) run notebooks side by side."""

from __future__ import annotations

import nbformat
import pytest
from notebook_runner import NOTEBOOKS, execute, notebook_params


@pytest.mark.parametrize("path", notebook_params(NOTEBOOKS[1::2]))
def test_notebook_executes(path, kernel_env):
    execute(nbformat.read(path, as_version=4))
