"""CSV tables of results: a list of dict rows written with a header (the first row's keys), and read back; and
the checks of the paths pgjax writes to (`output_path_problem`) and of the `.npz` files it reads (`npz_problem`).

Light on purpose (no JAX), so experiments and benchmarks of every part of pgjax can share it.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Callable, Sequence


def make_folder_of(path: str) -> None:
    """Create the folder a file at `path` goes into, if it is missing (every writer of pgjax's files does)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` to `path` (its folder is created); the columns are the first row's keys, in order."""
    make_folder_of(path)
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


def npz_problem(path: str) -> str | None:
    """None if the file at `path` starts as an `.npz` (a zip archive) does, else what it is instead, for the
    caller's error. np.load reads anything else as an `.npy` (one array back, not the archive: a TypeError at
    `with`) or as a pickle, whose refusal advises allow_pickle; neither is a file pgjax wrote."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as err:
        return f"cannot be opened ({err.strerror})"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return None
    if head.startswith(b"\x93NUMPY"):
        return "is a single-array .npy file, not an .npz archive"
    start = "is empty" if not head else f"starts with {head!r}"
    return f"is not an .npz archive (the file {start}, where an .npz starts as a zip archive does)"
