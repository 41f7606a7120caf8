"""Reports for training runs: read a run folder's test predictions, log and metrics, and write the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import PolymodalError
from ..run_folder import run_task
from .ablation import ALL_MODALITIES
from .asr_report import compare_asr_runs, report_asr_run
from .bootstrap import paired_bootstrap
from .generation import compare_generation_runs, report_generation_run
from .metrics import ClassificationMetrics, classification_metrics
from .report import write_comparison, write_report, write_retrieval_report


def _read_predictions(run_dir: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(rows, labels, y_true, y_pred) of a run's test set, from its predictions.csv."""
    path = run_dir / "predictions.csv"
    if not path.exists():
        raise PolymodalError(f"{run_dir}: no predictions.csv; the run has no test split or did not finish")
    labels = json.loads((run_dir / "labels.json").read_text())
    index = {label: i for i, label in enumerate(labels)}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    y_true = np.array([index[r["label"]] for r in rows])
    y_pred = np.array([index[r["prediction"]] for r in rows])
    return [r["row"] for r in rows], labels, y_true, y_pred


def run_metrics(run_dir: str | Path) -> ClassificationMetrics:
    _, labels, y_true, y_pred = _read_predictions(Path(run_dir))
    return classification_metrics(y_true, y_pred, labels)


def report_run(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` / ``report.html`` with plots for a finished run (default: into ``RUN/report``)."""
    run_dir = Path(run_dir)
    task = run_task(run_dir)
    if task == "instruct":  # generated answers, scored per task
        return report_generation_run(run_dir, out_dir)
    if task == "asr":  # speech recognition: WER before and after tuning
        return report_asr_run(run_dir, out_dir)
    info = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    if task == "align":  # retrieval, not classification
        import yaml

        modalities = tuple(yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["encoders"])
        extra = {k.replace("_", " "): info[k] for k in ("n_train", "n_val", "n_test", "train_seconds", "logit_scale") if k in info}
        return write_retrieval_report(out_dir or run_dir / "report", run_dir.name, info["test"], modalities,
                                      info.get("n_test", 0), extra)
    metrics = run_metrics(run_dir)
    log_rows = list(csv.DictReader(open(run_dir / "log.csv", newline=""))) if (run_dir / "log.csv").exists() else None
    ablation = None
    if "ablation" in info:
        ablation = {ALL_MODALITIES: metrics.accuracy, **{m: s["accuracy"] for m, s in info["ablation"].items()}}
    extra = {}
    if "parameters" in info:
        extra["trainable parameters"] = info["parameters"]["trainable"]
        extra["total parameters"] = info["parameters"]["total"]
    for key in ("train_seconds", "n_train", "n_val", "n_test"):
        if key in info:
            extra[key.replace("_", " ")] = info[key]
    for key, name in (("gates", "mean gate"), ("late_weights", "late-fusion weight")):
        for m, w in info.get(key, {}).items():
            extra[f"{name}: {m}"] = round(w, 4)
    return write_report(out_dir or run_dir / "report", run_dir.name, metrics, training_log=log_rows,
                        ablation=ablation, extra=extra)


def compare_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path, n_resamples: int = 1000,
                 seed: int = 0) -> tuple[Path, Path]:
    """Side-by-side report of two runs on the same test set, with paired bootstrap intervals of the differences.

    Raises:
        PolymodalError: the runs were not tested on the same rows or labels.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    task_a, task_b = run_task(run_a), run_task(run_b)
    if task_a != task_b:
        raise PolymodalError(f"{run_a} is a {task_a} run and {run_b} a {task_b} run; compare two runs of one task")
    if task_a == "instruct":
        return compare_generation_runs(run_a, run_b, out_dir, n_resamples=n_resamples, seed=seed)
    if task_a == "asr":
        return compare_asr_runs(run_a, run_b, out_dir, n_resamples=n_resamples, seed=seed)
    rows_a, labels_a, y_a, pred_a = _read_predictions(run_a)
    rows_b, labels_b, y_b, pred_b = _read_predictions(run_b)
    if labels_a != labels_b or rows_a != rows_b or not np.array_equal(y_a, y_b):
        raise PolymodalError(f"{run_a} and {run_b} were not tested on the same rows and labels; a paired comparison "
                             "needs the same test split (same manifest and data.seed)")
    boot = {m: paired_bootstrap(y_a, pred_a, pred_b, metric=m, n_resamples=n_resamples, seed=seed, n_labels=len(labels_a))
            for m in ("accuracy", "macro_f1")}
    return write_comparison(out_dir, run_a.name, classification_metrics(y_a, pred_a, labels_a), run_b.name,
                            classification_metrics(y_b, pred_b, labels_b), boot)
