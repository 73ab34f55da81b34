"""Every notebook in notebooks/: outputs stripped, the kernel pinned to this interpreter, and (half of them here,
the other half in test_notebooks_2.py) executed headlessly in quick mode."""

from __future__ import annotations

import sys

import nbformat
import pytest
from notebook_runner import NOTEBOOK_DIR, NOTEBOOKS, execute, notebook_params


def test_kernel_runs_this_interpreter(kernel_env):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(sys.prefix)\n"
                                         "print(os.getcwd())")]
    )
    lines = execute(nb).cells[0].outputs[0]["text"].splitlines()
    assert lines == [sys.executable, sys.prefix, str(NOTEBOOK_DIR)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: clear the outputs of code cells {dirty} before committing."


@pytest.mark.parametrize("path", notebook_params(NOTEBOOKS[0::2]))
def test_notebook_executes(path, kernel_env):
    execute(nbformat.read(path, as_version=4))
