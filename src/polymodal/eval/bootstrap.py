"""Paired bootstrap: is model B really better than model A on this test set, or is the gap noise?

Both models were scored on the same items, so each resample draws one set of item indices (with replacement)
and scores A and B on it; the spread of ``B - A`` over the resamples gives a percentile confidence interval
(Efron & Tibshirani 1993, ch. 13; Koehn 2004 "Statistical significance tests for machine translation
evaluation" for the paired form). Pairing removes the item-difficulty variance that two independent intervals
would double count.

Three entry points, from specific to general:

* ``paired_bootstrap``: classification predictions, metric ``"accuracy"`` or ``"macro_f1"``.
* ``paired_bootstrap_per_item``: any metric that is a mean of per-item scores (accuracy, Recall@K hits).
* ``paired_bootstrap_statistic``: any metric computable on a batch of resamples (a ``PairedStatistic``), such
  as macro F1 or corpus-level WER (a ratio of sums, not a mean of per-item ratios).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import as_class_indices, check_same_length

BOOTSTRAP_METRICS = ("accuracy", "macro_f1")
"""Metric names that ``paired_bootstrap`` accepts."""

# Index cells (resamples x items) drawn per chunk: bounds memory at ~32 MiB of int64 whatever the test-set size.
_MAX_INDEX_CELLS = 1 << 22
# Confusion-matrix cells (resamples x labels x labels) counted per bincount call in the macro-F1 statistic.
_MAX_CONFUSION_CELLS = 1 << 22


class PairedStatistic(Protocol):
    """Scores two systems on many resamples of the same test items at once."""

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score A and B on each row of ``indices``.

        Args:
            indices: (n_resamples, n_items) int item indices, one resample per row.

        Returns:
            ``(score_a, score_b, diff)``, each (n_resamples,), with ``diff = score_b - score_a``. ``diff`` is
            returned rather than derived so that a count-based statistic can give it exactly.
        """
        ...


@dataclass(frozen=True)
class BootstrapResult:
    """Scores of A and B on the full test set, and the bootstrap interval on their difference.

    Attributes:
        metric: name of the metric, e.g. ``"accuracy"``.
        a: metric of A on the full test set.
        b: metric of B on the full test set.
        diff: ``b - a`` on the full test set.
        low: lower end of the percentile interval on ``diff``.
        high: upper end of the percentile interval on ``diff``.
        p_value_like: fraction of resamples in which B is not better than A (``diff <= 0``, or ``>= 0`` when
            lower is better); a one-sided bootstrap p-value estimate, small when B is reliably better.
        confidence: the interval's nominal coverage, e.g. 0.95.
        n_resamples: number of bootstrap resamples.
        n_items: number of test items.
        higher_is_better: False for error rates such as WER, so that ``winner`` reads the sign the right way.
    """

    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    p_value_like: float
    confidence: float
    n_resamples: int
    n_items: int
    higher_is_better: bool = True

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0: the difference is unlikely to be noise."""
        return self.low > 0 or self.high < 0

    @property
    def winner(self) -> str | None:
        """``"a"`` or ``"b"`` where the interval excludes 0, else None (no clear difference)."""
        if not self.excludes_zero:
            return None
        b_higher = self.low > 0
        return "b" if b_higher == self.higher_is_better else "a"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        return asdict(self)


def paired_bootstrap(
    y_true: ArrayLike,
    pred_a: ArrayLike,
    pred_b: ArrayLike,
    metric: str = "accuracy",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    *,
    n_labels: int | None = None,
) -> BootstrapResult:
    """Compare two classifiers' predictions on the same test items.

    Args:
        y_true: (n_items,) int true class indices.
        pred_a: (n_items,) int class indices predicted by A.
        pred_b: (n_items,) int class indices predicted by B, for the same items in the same order.
        metric: one of ``BOOTSTRAP_METRICS``.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling; the same seed gives the same result.
        confidence: coverage of the interval, in (0, 1).
        n_labels: number of classes for ``"macro_f1"``; pass ``len(labels)`` so that a class absent from both
            truth and predictions counts as in ``classification_metrics``. Default: largest index seen + 1.

    Raises:
        ValueError: unknown metric, arrays of different lengths or not class indices, bad parameters.
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"unknown bootstrap metric {metric!r}; choose one of {', '.join(BOOTSTRAP_METRICS)}")
    true = as_class_indices(y_true, "y_true", n_labels)
    a = as_class_indices(pred_a, "pred_a", n_labels)
    b = as_class_indices(pred_b, "pred_b", n_labels)
    check_same_length(y_true=true, pred_a=a, pred_b=b)
    common = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    if metric == "accuracy":
        return paired_bootstrap_per_item(a == true, b == true, metric="accuracy", **common)
    n = n_labels if n_labels is not None else int(max(true.max(), a.max(), b.max())) + 1
    statistic = _MacroF1Statistic(true, a, b, n)
    return paired_bootstrap_statistic(statistic, len(true), metric="macro_f1", **common)


def paired_bootstrap_per_item(
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    *,
    metric: str = "mean",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: bool = True,
) -> BootstrapResult:
    """Compare two systems on a metric that is the mean of per-item scores.

    Integer (or bool) per-item scores give an exact difference: ``k`` more correct items out of ``n`` gives
    ``diff == k / n``.

    Args:
        scores_a: (n_items,) per-item score of A, e.g. 1 where correct.
        scores_b: (n_items,) per-item score of B on the same items in the same order.
        metric: name recorded in the result.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling.
        confidence: coverage of the interval, in (0, 1).
        higher_is_better: False for per-item error scores.
    """
    sa, sb = np.asarray(scores_a), np.asarray(scores_b)
    if sa.ndim != 1 or sb.ndim != 1 or sa.size == 0:
        raise ValueError(f"per-item scores must be non-empty 1-D arrays, got shapes {sa.shape} and {sb.shape}")
    check_same_length(scores_a=sa, scores_b=sb)
    if sa.dtype.kind in "biu" and sb.dtype.kind in "biu":
        sa, sb = sa.astype(np.int64), sb.astype(np.int64)
    else:
        sa, sb = sa.astype(np.float64), sb.astype(np.float64)
    delta = sb - sa

    def statistic(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = indices.shape[1]
        return sa[indices].sum(axis=1) / n, sb[indices].sum(axis=1) / n, delta[indices].sum(axis=1) / n

    return paired_bootstrap_statistic(
        statistic, len(sa), metric=metric, n_resamples=n_resamples, seed=seed, confidence=confidence,
        higher_is_better=higher_is_better,
    )


def paired_bootstrap_statistic(
    statistic: PairedStatistic,
    n_items: int,
    *,
    metric: str,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: bool = True,
) -> BootstrapResult:
    """The general paired bootstrap: resample item indices, score both systems with ``statistic``.

    Args:
        statistic: scores A and B on a batch of resamples; called once on the full test set, then on chunks
            of resamples.
        n_items: number of test items.
        metric: name recorded in the result.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling.
        confidence: coverage of the interval, in (0, 1).
        higher_is_better: False for error rates.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")

    a, b, diff = (float(x[0]) for x in statistic(np.arange(n_items)[None, :]))
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_INDEX_CELLS // n_items)
    diffs = []
    for start in range(0, n_resamples, rows):
        indices = rng.integers(0, n_items, size=(min(rows, n_resamples - start), n_items))
        diffs.append(np.asarray(statistic(indices)[2], dtype=np.float64))
    resampled = np.concatenate(diffs)

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    not_better = resampled <= 0 if higher_is_better else resampled >= 0
    return BootstrapResult(
        metric=metric, a=a, b=b, diff=diff, low=float(low), high=float(high),
        p_value_like=float(not_better.mean()), confidence=confidence, n_resamples=n_resamples,
        n_items=n_items, higher_is_better=higher_is_better,
    )


class _MacroF1Statistic:
    """Macro F1 of A and B per resample, from confusion counts built with one ``bincount`` per chunk.

    Per class, ``F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (n_true + n_pred)``, and 0 where a class is neither
    true nor predicted in the resample, as scikit-learn's ``f1_score(..., zero_division=0)`` over all labels.
    """

    def __init__(self, y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_labels: int):
        self.n_labels = n_labels
        self.codes_a = y_true * n_labels + pred_a  # (n_items,) flat confusion-cell index
        self.codes_b = y_true * n_labels + pred_b

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = self._macro_f1(self.codes_a, indices)
        b = self._macro_f1(self.codes_b, indices)
        return a, b, b - a

    def _macro_f1(self, codes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        cells = self.n_labels * self.n_labels
        step = max(1, _MAX_CONFUSION_CELLS // cells)
        out = []
        for start in range(0, indices.shape[0], step):
            chunk = indices[start : start + step]
            r = chunk.shape[0]
            flat = (codes[chunk] + (np.arange(r) * cells)[:, None]).ravel()
            confusion = np.bincount(flat, minlength=r * cells).reshape(r, self.n_labels, self.n_labels)
            tp = np.diagonal(confusion, axis1=1, axis2=2)
            denom = confusion.sum(axis=2) + confusion.sum(axis=1)
            f1 = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
            out.append(f1.mean(axis=1))
        return np.concatenate(out)

