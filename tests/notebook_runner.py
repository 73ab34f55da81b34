"""Headless execution of notebooks/ for the tests, at the small sizes selected by PGJAX_NOTEBOOK_QUICK=1.

The kernel is pinned to the interpreter running pytest (normally .venv/bin/python): a `python3`
kernel spec pointing at sys.executable is written to a temporary directory placed first on
JUPYTER_PATH, so a user-level or system `python3` spec for another interpreter cannot be picked up.
The notebooks are executed by two test files (test_notebooks.py: the even-numbered positions,
test_notebooks_2.py: the odd ones) so that the two test workers run them side by side.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600
# Notebooks that assert bit-for-bit equality of separately compiled programs (03: training in segments against the
# one-call run): marked exact_compiler (tests/conftest.py).
EXACT_COMPILER = {"03_online_policy_gradient.ipynb"}


def notebook_params(paths: list[Path]) -> list:
    """pytest params for `paths`, with their ids and the exact_compiler mark where `EXACT_COMPILER` names them."""
    return [pytest.param(p, id=p.name, marks=[pytest.mark.exact_compiler] if p.name in EXACT_COMPILER else [])
            for p in paths]


@contextlib.contextmanager
def kernel_environment(data_dir: Path):
    """A `python3` kernel spec for this interpreter first on JUPYTER_PATH, and the quick-mode switch (the
    `kernel_env` fixture of conftest.py)."""
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
