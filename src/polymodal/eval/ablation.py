"""Per-modality contribution: the test metric with every modality, and with each one dropped at test time.

An ablation is a plain ``dict[str, float]``: the key ``ALL_MODALITIES`` holds the metric with every modality
present, every other key names the modality that was dropped (``{"all": 0.91, "text": 0.62, "image": 0.88}``
reads "without text, accuracy falls to 0.62"). A large drop means the model leans on that modality.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

ALL_MODALITIES = "all"
"""Ablation key of the score with no modality dropped."""


class AblationRow(NamedTuple):
    """One dropped modality."""

    modality: str
    score: float
    """The metric with ``modality`` dropped."""
    drop: float
    """Full score minus ``score``: how much the metric loses without this modality (negative: it gains)."""


def ablation_rows(ablation: dict[str, float]) -> tuple[float, list[AblationRow]]:
    """The full score and one row per dropped modality, in the dict's order.

    Raises:
        ValueError: ``ALL_MODALITIES`` missing, no modality dropped, or a score that is not a finite number.
    """
    if ALL_MODALITIES not in ablation:
        raise ValueError(
            f"ablation needs the key {ALL_MODALITIES!r} with the score of the full model; got keys {sorted(ablation)}"
        )
    bad = {k: v for k, v in ablation.items() if not isinstance(v, numbers.Real) or not math.isfinite(v)}
    if bad:
        raise ValueError(f"ablation scores must be finite numbers, got {bad}")
    full = float(ablation[ALL_MODALITIES])
    rows = [AblationRow(str(m), float(v), full - float(v)) for m, v in ablation.items() if m != ALL_MODALITIES]
    if not rows:
        raise ValueError("ablation holds only the full score; add the score with each modality dropped")
    return full, rows
