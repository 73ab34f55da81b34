"""Editing `.npz` files in place, for tests of what loading refuses (files `save` would never write)."""

import numpy as np


def replace_array(path, name, value):
    """Rewrite the `.npz` file at `path` with its array `name` set to `value` (added when it has none)."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[name] = value
    with open(path, "wb") as f:
        np.savez(f, **arrays)
