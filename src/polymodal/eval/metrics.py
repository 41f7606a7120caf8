"""Classification metrics on a test set: accuracy, macro and per-class precision, recall and F1, confusion matrix.

The numbers come from scikit-learn (the reference implementation), computed over the full label list so that a
class the model never predicts, or that is absent from the test set, still counts in the macro average (as 0,
``zero_division=0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ._arrays import as_class_indices, check_same_length


class ClassScores(NamedTuple):
    """One class's scores; a plain ``(precision, recall, f1, support)`` tuple with names."""

    precision: float
    recall: float
    f1: float
    support: int
    """Number of test items whose true class is this one."""


@dataclass(frozen=True, eq=False)
class ClassificationMetrics:
    """Scores of one model's predictions on one test set.

    Attributes:
        accuracy: fraction of items predicted correctly.
        macro_precision: unweighted mean over ``labels`` of per-class precision.
        macro_recall: unweighted mean over ``labels`` of per-class recall.
        macro_f1: unweighted mean over ``labels`` of per-class F1.
        per_class: label -> ClassScores, in ``labels`` order.
        confusion: (n_labels, n_labels) int64 counts, rows = true class, columns = predicted class; read-only.
        labels: class names; index ``i`` names class index ``i``.
    """

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: np.ndarray
    labels: tuple[str, ...]

    @property
    def n_items(self) -> int:
        """Number of test items."""
        return int(self.confusion.sum())

    @property
    def chance_level(self) -> float:
        """Expected accuracy of guessing uniformly at random: ``1 / n_labels``."""
        return 1.0 / len(self.labels)

    @property
    def weighted_f1(self) -> float:
        """Mean of per-class F1 weighted by each class's support (scikit-learn's ``average="weighted"``)."""
        support = np.array([s.support for s in self.per_class.values()], dtype=np.float64)
        f1 = np.array([s.f1 for s in self.per_class.values()])
        return float((f1 * support).sum() / support.sum()) if support.sum() else 0.0

    @property
    def majority_label(self) -> str:
        """The most frequent true class (the first one on a tie)."""
        return self.labels[int(np.argmax(self.confusion.sum(axis=1)))]

    @property
    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent true class."""
        return float(self.confusion.sum(axis=1).max()) / self.n_items

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types; ``from_dict`` reads it back."""
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            "n_items": self.n_items,
            "chance_level": self.chance_level,
            "majority_rate": self.majority_rate,
            "labels": list(self.labels),
            "per_class": {label: s._asdict() for label, s in self.per_class.items()},
            "confusion": self.confusion.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassificationMetrics:
        """Rebuild from ``to_dict`` output (derived fields such as ``n_items`` are recomputed, not read)."""
        labels = tuple(data["labels"])
        confusion = np.asarray(data["confusion"], dtype=np.int64)
        confusion.setflags(write=False)
        return cls(
            accuracy=float(data["accuracy"]),
            macro_precision=float(data["macro_precision"]),
            macro_recall=float(data["macro_recall"]),
            macro_f1=float(data["macro_f1"]),
            per_class={label: ClassScores(**data["per_class"][label]) for label in labels},
            confusion=confusion,
            labels=labels,
        )


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike, labels: list[str]) -> ClassificationMetrics:
    """Score predictions against the truth.

    Args:
        y_true: (n_items,) int true class indices into ``labels``.
        y_pred: (n_items,) int predicted class indices into ``labels``.
        labels: class names, one per class index; at least two, no duplicates.

    Raises:
        ValueError: fewer than two or duplicate labels, arrays of different lengths, an index out of range.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = [str(label) for label in labels]
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least two labels, got {labels}")
    if len(set(labels)) != len(labels):
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"labels must be unique, got duplicates {dupes}")
    n_labels = len(labels)
    true = as_class_indices(y_true, "y_true", n_labels)
    pred = as_class_indices(y_pred, "y_pred", n_labels)
    check_same_length(y_true=true, y_pred=pred)

    index = list(range(n_labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=index, average=None, zero_division=0
    )
    confusion = confusion_matrix(true, pred, labels=index).astype(np.int64)
    confusion.setflags(write=False)
    per_class = {
        label: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, label in enumerate(labels)
    }
    return ClassificationMetrics(
        accuracy=float(accuracy_score(true, pred)),
        macro_precision=float(np.mean(precision)),
        macro_recall=float(np.mean(recall)),
        macro_f1=float(np.mean(f1)),
        per_class=per_class,
        confusion=confusion,
        labels=tuple(labels),
    )
