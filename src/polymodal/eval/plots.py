"""PNG plots for evaluation reports: confusion matrix, per-class F1, training curves, modality ablation.

Figures are drawn with matplotlib's object API on an Agg canvas, never through ``pyplot``: no display is
needed, and the caller's global backend and open figures are left alone. matplotlib loads on the first plot.
Each PNG is written atomically, so an interrupted run never leaves half an image.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._paths import atomic_write_bytes
from .ablation import ablation_rows
from .metrics import ClassificationMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
# Above this many classes the confusion-matrix cells are too small to hold a readable count.
_MAX_ANNOTATED_LABELS = 30
_X_COLUMNS = ("step", "epoch")
_LR_COLUMNS = ("lr", "learning_rate")
_METRIC_WORDS = ("acc", "f1", "precision", "recall", "wer", "cer", "auc")


def plot_confusion(metrics: ClassificationMetrics, path: str | os.PathLike) -> Path:
    """Confusion matrix: rows are true classes, columns predicted ones; cells show counts, shaded by row share.

    Shading by the fraction of each true class (its recall row) keeps rare classes readable next to common ones.

    Returns:
        ``path``.
    """
    labels = [_plain(label) for label in metrics.labels]
    n = len(labels)
    counts = metrics.confusion
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)

    side = min(16.0, max(4.5, 1.5 + 0.55 * n))
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({metrics.n_items} test items)")
    if n <= _MAX_ANNOTATED_LABELS:
        for i in range(n):
            for j in range(n):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=color, fontsize=9)
    return _save(fig, path)


def plot_per_class_f1(metrics: ClassificationMetrics, path: str | os.PathLike) -> Path:
    """Horizontal bars of each class's F1 (support in the tick label), with the macro F1 as a dashed line.

    Returns:
        ``path``.
    """
    names = [f"{_plain(label)} (n={s.support})" for label, s in metrics.per_class.items()]
    f1 = [s.f1 for s in metrics.per_class.values()]
    fig = _figure(7.0, min(16.0, max(2.5, 0.8 + 0.35 * len(names))))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, f1, color="#4878a8")
    ax.axvline(metrics.macro_f1, color="#c44e52", linestyle="--")
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # first label on top, as in the tables
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("F1")
    ax.set_title(f"Per-class F1 (dashed line: macro F1 {metrics.macro_f1:.3f})")
    return _save(fig, path)


def plot_training_curves(log_rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Training curves from a training log: losses on the left axis, metrics on the right, learning rate below.

    Columns are recognised by name: ``step`` (else ``epoch``, else the row number) is the x axis; any column
    containing ``loss`` is a loss; ``lr``/``learning_rate`` is the learning rate; columns naming a metric
    (``accuracy``, ``f1``, ``precision``, ``recall``, ``wer``, ...) are metrics. Others are ignored. Values may
    be strings (rows straight from ``csv.DictReader``); empty cells are gaps, e.g. validation rows logged only
    at epoch ends.

    Args:
        log_rows: one mapping per logged row.
        path: where to write the PNG.

    Returns:
        ``path``.

    Raises:
        ValueError: no rows, or no loss or metric column.
    """
    if not log_rows:
        raise ValueError("the training log has no rows to plot")
    columns = list(dict.fromkeys(key for row in log_rows for key in row))
    table = {c: np.array([_number(row.get(c)) for row in log_rows]) for c in columns}
    x_name = next((c for c in _X_COLUMNS if c in table and np.isfinite(table[c]).any()), None)
    x = table[x_name] if x_name else np.arange(1, len(log_rows) + 1, dtype=float)

    def plottable(c: str) -> bool:
        return c != x_name and np.isfinite(table[c]).any()

    losses = [c for c in columns if "loss" in c.lower() and plottable(c)]
    rates = [c for c in columns if c.lower() in _LR_COLUMNS and plottable(c)]
    scores = [
        c for c in columns
        if c not in losses and c not in rates and c.lower() not in _X_COLUMNS
        and any(w in c.lower() for w in _METRIC_WORDS) and plottable(c)
    ]
    if not losses and not scores:
        raise ValueError(f"the training log has no loss or metric column to plot; its columns are {columns}")

    fig = _figure(8.0, 6.5 if rates else 4.5)
    grid = fig.add_gridspec(2 if rates else 1, 1, height_ratios=[3, 1] if rates else [1])
    ax = fig.add_subplot(grid[0])
    handles = []
    for c in losses:
        handles += _line(ax, x, table[c], c, linestyle="-")
    ax.set_ylabel("loss")
    if scores:
        right = ax.twinx() if losses else ax
        for c in scores:
            handles += _line(right, x, table[c], c, linestyle="--")
        right.set_ylabel("metric")
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    if rates:
        lr_ax = fig.add_subplot(grid[1], sharex=ax)
        for c in rates:
            _line(lr_ax, x, table[c], c, linestyle="-", color="gray")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        lr_ax.grid(alpha=0.3)
        lr_ax.set_xlabel(x_name or "row")
    else:
        ax.set_xlabel(x_name or "row")
    return _save(fig, path)


def plot_modality_ablation(
    ablation: dict[str, float], path: str | os.PathLike, *, metric_name: str = "accuracy"
) -> Path:
    """Bars of the metric with all modalities, then with each modality dropped; the drop is written on each bar.

    Args:
        ablation: see ``polymodal.eval.ablation``: ``{"all": full score, modality: score without it, ...}``.
        path: where to write the PNG.
        metric_name: axis label.

    Returns:
        ``path``.
    """
    full, rows = ablation_rows(ablation)
    names = ["all modalities"] + [f"without {_plain(r.modality)}" for r in rows]
    values = [full] + [r.score for r in rows]
    fig = _figure(max(5.0, 1.2 + 1.3 * len(names)), 4.5)
    ax = fig.add_subplot()
    colors = ["#55a868"] + ["#4878a8"] * len(rows)
    bars = ax.bar(range(len(names)), values, color=colors)
    ax.axhline(full, color="#55a868", linestyle="--", linewidth=1)
    for bar, r in zip(bars[1:], rows):
        ax.annotate(f"{-r.drop:+.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", rotation_mode="anchor")
    top = max(values)
    ax.set_ylim(0.0, 1.0 if top <= 1.0 else top * 1.1)
    ax.set_ylabel(_plain(metric_name))
    ax.set_title(f"Modality ablation: {_plain(metric_name)} with each modality dropped at test time")
    return _save(fig, path)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _line(ax: Any, x: np.ndarray, y: np.ndarray, label: str, **style: Any) -> list[Any]:
    keep = np.isfinite(x) & np.isfinite(y)
    marker = "o" if keep.sum() <= 30 else None
    return ax.plot(x[keep], y[keep], label=_plain(label), marker=marker, markersize=3, **style)


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _plain(text: str) -> str:
    """``text`` shown literally: matplotlib would read ``$...$`` as mathtext."""
    return str(text).replace("$", r"\$")
