"""Offline policy evaluation and offline policy gradients from logged data."""

from pgjax.offline.dataset import (
    SCHEMA,
    Dataset,
    DatasetError,
    collect,
    concatenate,
    load_dataset,
    save_dataset,
    subset,
    validate_dataset,
    validate_tabular_dataset,
)
