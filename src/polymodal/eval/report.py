"""Evaluation reports: one run (``write_report``) or two runs side by side (``write_comparison``).

Each writes a Markdown file that links PNG plots saved next to it, and a self-contained HTML file with the
same content and the plots embedded, to share as one file. Scores are fractions in [0, 1] written with four
decimals; differences carry a sign.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._paths import atomic_write_text
from ._document import Block, Heading, Image, Paragraph, Table, table, to_html, to_markdown
from .ablation import ALL_MODALITIES, ablation_rows
from .bootstrap import BootstrapResult
from .metrics import ClassificationMetrics
from .plots import plot_confusion, plot_modality_ablation, plot_per_class_f1, plot_training_curves

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
COMPARISON_MD = "comparison.md"
COMPARISON_HTML = "comparison.html"
CONFUSION_PNG = "confusion.png"
PER_CLASS_F1_PNG = "per_class_f1.png"
TRAINING_CURVES_PNG = "training_curves.png"
ABLATION_PNG = "modality_ablation.png"
# Beyond this many classes a confusion table is unreadable in Markdown; the plot still shows it.
_MAX_CONFUSION_TABLE_LABELS = 20
_HEADLINE = (
    ("accuracy", "accuracy"),
    ("macro precision", "macro_precision"),
    ("macro recall", "macro_recall"),
    ("macro F1", "macro_f1"),
    ("weighted F1", "weighted_f1"),
)
# A bootstrap a/b that differs from the metrics by more than this was computed on other predictions.
_CONSISTENCY_TOLERANCE = 1e-9


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    metrics: ClassificationMetrics,
    *,
    training_log: Sequence[Mapping[str, Any]] | None = None,
    ablation: dict[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    ablation_metric: str = "accuracy",
    mistakes: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plus the PNGs the Markdown links) for one run's test set.

    Args:
        out_dir: folder to write into; created if absent. Files of an earlier report there are replaced.
        title: report title, e.g. the run name.
        metrics: the run's test-set scores.
        training_log: rows of the training log (e.g. from ``csv.DictReader``); adds training curves.
        ablation: ``{"all": score, modality: score with it dropped, ...}`` (see ``polymodal.eval.ablation``);
            adds the per-modality contribution table and plot.
        extra: other facts to list, e.g. ``{"trainable parameters": 1_234_567, "training time (s)": 81.2}``.
        ablation_metric: name of the metric in ``ablation``.
        mistakes: the most confident wrong predictions, each ``{"row", "input", "label", "prediction",
            "confidence"}`` (``input``: the text, or the image/audio file).

    Returns:
        ``(markdown_path, html_path)``.
    """
    if ablation is not None:
        full, rows = ablation_rows(ablation)  # checked before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [
        Paragraph(f"{metrics.n_items} test items, {len(metrics.labels)} classes."),
        Heading("Summary"),
        table(("metric", "value"), _summary_rows(metrics)),
    ]
    if extra:
        blocks += [Heading("Run details"), table(("item", "value"), [(k, _fmt_value(v)) for k, v in extra.items()])]

    blocks += [Heading("Per-class scores"), _per_class_table(metrics)]
    plot_per_class_f1(metrics, out / PER_CLASS_F1_PNG)
    blocks.append(Image(PER_CLASS_F1_PNG, "per-class F1"))

    blocks += [Heading("Confusion matrix"), Paragraph("Rows are true classes, columns predicted classes.")]
    plot_confusion(metrics, out / CONFUSION_PNG)
    blocks.append(Image(CONFUSION_PNG, "confusion matrix"))
    if len(metrics.labels) <= _MAX_CONFUSION_TABLE_LABELS:
        blocks.append(_confusion_table(metrics))

    if mistakes:
        blocks += [
            Heading("Most confident mistakes"),
            Paragraph("Wrong predictions the model was surest of: often a mislabelled row, or a pattern it "
                      "learned wrongly. The input is the row's text, or its image/audio file."),
            table(("row", "input", "true", "predicted", "confidence"),
                  [(m["row"], _clip(str(m["input"])), m["label"], m["prediction"], _fmt(m["confidence"]))
                   for m in mistakes], numeric_from=4),
        ]

    if training_log:
        plot_training_curves(training_log, out / TRAINING_CURVES_PNG)
        blocks += [Heading("Training curves"), Image(TRAINING_CURVES_PNG, "training curves")]

    if ablation is not None:
        plot_modality_ablation(ablation, out / ABLATION_PNG, metric_name=ablation_metric)
        blocks += [
            Heading("Per-modality contribution"),
            Paragraph(
                f"Each modality dropped at test time; a large drop in {ablation_metric} means the model relies "
                "on that modality."
            ),
            table(
                ("modality dropped", ablation_metric, "change vs all modalities"),
                [(f"none ({ALL_MODALITIES} modalities)", _fmt(full), "")]
                + [(r.modality, _fmt(r.score), _signed(-r.drop)) for r in rows],
            ),
            Image(ABLATION_PNG, "modality ablation"),
        ]
    return _write_pair(out, REPORT_MD, REPORT_HTML, title, blocks)


def write_comparison(
    out_dir: str | os.PathLike,
    name_a: str,
    metrics_a: ClassificationMetrics,
    name_b: str,
    metrics_b: ClassificationMetrics,
    bootstrap_results: Mapping[str, BootstrapResult],
    *,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.html``: two runs on the same test set, side by side.

    Args:
        out_dir: folder to write into; created if absent.
        name_a: name of run A (the baseline, e.g. the linear probe).
        metrics_a: A's test-set scores.
        name_b: name of run B (the candidate, e.g. the fine-tuned model).
        metrics_b: B's test-set scores, on the same test items.
        bootstrap_results: metric name -> paired bootstrap of A against B (``paired_bootstrap``), e.g. for
            ``"accuracy"`` and ``"macro_f1"``; each gets a confidence interval and a verdict.
        title: report title; default ``"<name_a> vs <name_b>"``.

    Returns:
        ``(markdown_path, html_path)``.

    Raises:
        ValueError: the runs have different labels or test-set sizes, or a bootstrap result does not match the
            metrics (computed on other predictions, or with A and B swapped).
    """
    if metrics_a.labels != metrics_b.labels:
        raise ValueError(
            f"runs to compare must share labels, got {list(metrics_a.labels)} and {list(metrics_b.labels)}"
        )
    if metrics_a.n_items != metrics_b.n_items:
        raise ValueError(
            "runs to compare must be scored on the same test set, "
            f"got {metrics_a.n_items} and {metrics_b.n_items} items"
        )
    for name, result in bootstrap_results.items():
        _check_consistent(name, result, metrics_a, metrics_b)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [
        Paragraph(f"A = {name_a}, B = {name_b}; {metrics_a.n_items} test items, {len(metrics_a.labels)} classes."),
        Heading("Side by side"),
        table(
            ("metric", name_a, name_b, "B − A"),
            [
                (label, _fmt(getattr(metrics_a, attr)), _fmt(getattr(metrics_b, attr)),
                 _signed(getattr(metrics_b, attr) - getattr(metrics_a, attr)))
                for label, attr in _HEADLINE
            ],
        ),
    ]
    if bootstrap_results:
        results = list(bootstrap_results.values())
        resamples = sorted({r.n_resamples for r in results})
        levels = {r.confidence for r in results}
        interval_header = f"{_pct(levels.pop())} interval" if len(levels) == 1 else "interval"
        blocks += [
            Heading("Is the difference real?"),
            Paragraph(
                f"Paired bootstrap on the test set: {' / '.join(map(str, resamples))} resamples of the "
                f"{metrics_a.n_items} items, each scoring both runs on the same items. The interval is a "
                "percentile interval on B − A; 'B not better' is the fraction of resamples where B does not beat A."
            ),
            table(
                ("metric", name_a, name_b, "B − A", interval_header, "B not better"),
                [
                    (_display(name), _fmt(r.a), _fmt(r.b), _signed(r.diff), _interval(r), f"{r.p_value_like:.3f}")
                    for name, r in bootstrap_results.items()
                ],
            ),
        ]
        blocks += [Paragraph(f"{_display(n)}: {verdict(r, name_a, name_b)}.") for n, r in bootstrap_results.items()]

    blocks += [
        Heading("Per-class F1"),
        table(
            ("class", name_a, name_b, "B − A", "support"),
            [
                (label, _fmt(sa.f1), _fmt(sb.f1), _signed(sb.f1 - sa.f1), str(sa.support))
                for (label, sa), sb in zip(metrics_a.per_class.items(), metrics_b.per_class.values())
            ],
        ),
        Heading("Confusion matrices"),
        Paragraph("Rows are true classes, columns predicted classes."),
    ]
    for tag, name, m in (("a", name_a, metrics_a), ("b", name_b, metrics_b)):
        file_name = f"confusion_{tag}.png"
        plot_confusion(m, out / file_name)
        blocks += [Heading(f"{tag.upper()}: {name}", level=3), Image(file_name, f"confusion matrix of {name}")]
    return _write_pair(out, COMPARISON_MD, COMPARISON_HTML, title or f"{name_a} vs {name_b}", blocks)


def verdict(result: BootstrapResult, name_a: str = "A", name_b: str = "B") -> str:
    """Plain-words reading of a bootstrap result.

    E.g. ``"B is better: the 95% interval [+0.1200, +0.2800] excludes 0"`` or
    ``"no clear difference: the 95% interval [-0.0100, +0.0300] includes 0"``.
    """
    if result.winner is None:
        return f"no clear difference: the {_pct(result.confidence)} interval {_interval(result)} includes 0"
    better = name_b if result.winner == "b" else name_a
    return f"{better} is better: the {_pct(result.confidence)} interval {_interval(result)} excludes 0"


def _display(metric: str) -> str:
    return next((label for label, attr in _HEADLINE if attr == metric), metric)


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary_rows(m: ClassificationMetrics) -> list[tuple[str, str]]:
    rows = [(label, _fmt(getattr(m, attr))) for label, attr in _HEADLINE]
    rows += [
        ("test items", str(m.n_items)),
        ("chance level (1 / classes)", _fmt(m.chance_level)),
        (f"majority-class rate (always {m.majority_label})", _fmt(m.majority_rate)),
    ]
    return rows


def _per_class_table(m: ClassificationMetrics) -> Table:
    return table(
        ("class", "precision", "recall", "F1", "support"),
        [(label, _fmt(s.precision), _fmt(s.recall), _fmt(s.f1), str(s.support)) for label, s in m.per_class.items()],
    )


def _confusion_table(m: ClassificationMetrics) -> Table:
    header = ("true \\ predicted", *m.labels)
    return table(header, [(label, *map(str, row)) for label, row in zip(m.labels, m.confusion.tolist())])


def _check_consistent(name: str, r: BootstrapResult, a: ClassificationMetrics, b: ClassificationMetrics) -> None:
    if r.n_items != a.n_items:
        raise ValueError(f"bootstrap result {name!r} covers {r.n_items} items, the metrics {a.n_items}")
    value_a, value_b = getattr(a, name, None), getattr(b, name, None)
    if not isinstance(value_a, float) or not isinstance(value_b, float):
        return  # a metric ClassificationMetrics does not hold: nothing to check against
    if abs(r.a - value_a) > _CONSISTENCY_TOLERANCE or abs(r.b - value_b) > _CONSISTENCY_TOLERANCE:
        raise ValueError(
            f"bootstrap result {name!r} has A = {r.a:.6f}, B = {r.b:.6f} but the metrics give "
            f"A = {value_a:.6f}, B = {value_b:.6f}: it was computed on other predictions, with A and B swapped, "
            "or (macro F1) without n_labels=len(labels)"
        )


def write_retrieval_report(out_dir: str | Path, title: str, metrics: dict[str, float], modalities: tuple[str, str],
                           n_pairs: int, extra: dict[str, object] | None = None) -> tuple[Path, Path]:
    """``report.md`` / ``report.html`` of an alignment run: Recall@K both ways and MRR on its test pairs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a, b = modalities
    ks = sorted({int(k.split("@")[1]) for k in metrics if k.startswith("mean_r@")})
    rows = [(f"{x} -> {y}", *[f"{100 * metrics[f'{x}_to_{y}_r@{k}']:.1f}%" for k in ks], f"{metrics[f'{x}_to_{y}_mrr']:.3f}")
            for x, y in ((a, b), (b, a))]
    blocks: list[Block] = [
        Paragraph(f"Retrieval among the {n_pairs} test pairs: for each query, is its own partner among the K most "
                  "similar items of the other modality (ties count against it)?"),
        table(("direction", *[f"Recall@{k}" for k in ks], "MRR"), rows),
    ]
    if extra:
        blocks += [Heading("Run"), table(("", "value"), list(extra.items()))]
    return _write_pair(out, REPORT_MD, REPORT_HTML, title, blocks)


def _write_pair(out: Path, md_name: str, html_name: str, title: str, blocks: list[Block]) -> tuple[Path, Path]:
    md_path, html_path = out / md_name, out / html_name
    atomic_write_text(md_path, to_markdown(title, blocks))
    atomic_write_text(html_path, to_html(title, blocks, out))
    return md_path, html_path


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _interval(r: BootstrapResult) -> str:
    return f"[{_signed(r.low)}, {_signed(r.high)}]"


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _fmt_value(value: Any) -> str:
    """Extra values: counts with thousands separators, floats to 4 significant digits, the rest as text."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return f"{float(value):.4g}"
    return str(value)
