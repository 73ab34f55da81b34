"""CSV tables of results: a list of dict rows written with a header (the first row's keys), and read back.

Light on purpose (no JAX), so experiments and benchmarks of every part of pgjax can share it.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Callable, Sequence


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` to `path` (its folder is created); the columns are the first row's keys, in order."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a CSV with a header, as dicts of text (the inverse of `write_csv`, up to the values' types)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def output_path_problem(path: str, kind: str) -> str | None:
    """Why `path` cannot take a script's output, or None when it can: checked when the flags are parsed, so that a
    long run never ends in a traceback at its last line, with its results lost.

    kind "dir": a directory to create or reuse; "file": a file to create or replace. The path, or the nearest part
    of it that exists, must be of the right kind (a folder to create it in) and writable.
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"output_path_problem: kind must be 'dir' or 'file'; got {kind!r}.")
    path = os.path.abspath(path)
    if os.path.exists(path):
        if kind == "dir" and not os.path.isdir(path):
            return f"{path} is a file, not a directory; choose a directory to write into"
        if kind == "file" and os.path.isdir(path):
            return f"{path} is a directory; give the path of a file to write (in it, or elsewhere)"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, so {path} cannot be created under it"
    return None if os.access(existing, os.W_OK) else f"{existing} is not writable, so {path} cannot be created"


def check_output_path(error: Callable[[str], Any], flag: str, path: str | None, kind: str) -> None:
    """Call `error(f"{flag}: <why>")` (an argparse parser's `error`, say) when `output_path_problem(path, kind)`
    finds a problem; no path (a default chosen later): nothing to check."""
    problem = path and output_path_problem(path, kind)
    if problem:
        error(f"{flag}: {problem}")
