"""Checks on the class-index arrays that every metric takes, with messages that say what to fix."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def as_class_indices(values: ArrayLike, name: str, n_labels: int | None = None) -> np.ndarray:
    """``values`` as a 1-D int64 array of class indices, each in ``[0, n_labels)`` when ``n_labels`` is given.

    Raises:
        ValueError: not 1-D, empty, not integers, or an index out of range.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to evaluate")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or (n_labels is not None and high >= n_labels):
        bound = f"[0, {n_labels})" if n_labels is not None else ">= 0"
        raise ValueError(f"{name} holds class index {low if low < 0 else high}, outside {bound}")
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """The common length of ``arrays``; a mismatch means the runs were not scored on the same test items."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        listed = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(f"arrays must cover the same test items in the same order, got lengths {listed}")
    return next(iter(lengths.values()))
