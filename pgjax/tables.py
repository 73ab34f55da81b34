"""CSV tables of results: a list of dict rows written with a header (the first row's keys), and read back.

Light on purpose (no JAX), so experiments and benchmarks of every part of pgjax can share it.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Sequence


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
