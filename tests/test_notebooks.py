"""Execute every notebook in notebooks/ headlessly, at the small sizes selected by PGJAX_NOTEBOOK_QUICK=1.

The kernel is pinned to the interpreter running pytest (normally .venv/bin/python): a `python3`
kernel spec pointing at sys.executable is written to a temporary directory placed first on
JUPYTER_PATH, so a user-level or system `python3` spec for another interpreter cannot be picked up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A `python3` kernel spec for this interpreter first on JUPYTER_PATH, and the quick-mode switch."""
    data_dir = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(data_dir / "kernels" / KERNEL_NAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(data_dir), os.environ.get("JUPYTER_PATH")])))
        mp.setenv("PGJAX_NOTEBOOK_QUICK", "1")
        yield


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # cwd of the kernel
    )
    return client.execute()  # raises CellExecutionError on the first failing cell


def test_kernel_runs_this_interpreter(kernel_env):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(sys.prefix)\nprint(os.getcwd())")]
    )
    lines = execute(nb).cells[0].outputs[0]["text"].splitlines()
    assert lines == [sys.executable, sys.prefix, str(NOTEBOOK_DIR)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: clear the outputs of code cells {dirty} before committing."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, kernel_env):
    execute(nbformat.read(path, as_version=4))
