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
    rows, labels, y_true, y_pred, _ = _read_predictions_with_inputs(run_dir)
    return rows, labels, y_true, y_pred


def _read_predictions_with_inputs(run_dir: Path):
    """``_read_predictions`` plus each row's input reference (text, image, audio cells), or None for runs written
    before predictions.csv kept them."""
    path = run_dir / "predictions.csv"
    if not path.exists():
        raise PolymodalError(f"{run_dir}: no predictions.csv; the run has no test split or did not finish")
    labels = json.loads((run_dir / "labels.json").read_text())
    index = {label: i for i, label in enumerate(labels)}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    y_true = np.array([index[r["label"]] for r in rows])
    y_pred = np.array([index[r["prediction"]] for r in rows])
    modalities = [m for m in ("text", "image", "audio") if m in fields]
    inputs = [tuple(r[m] for m in modalities) for r in rows] if modalities else None
    return [r["row"] for r in rows], labels, y_true, y_pred, (modalities, inputs)


def _content_keys(modalities: list[str], inputs: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Each row's inputs by content: the text itself, a file by its bytes' hash."""
    from .._paths import file_sha256

    def key(m: str, v: str) -> str:
        if not v or m == "text":
            return v
        try:
            return file_sha256(v)
        except OSError:
            return f"missing:{v}"

    return [tuple(key(m, v) for m, v in zip(modalities, row)) for row in inputs]


def _align_by_content(run_a: Path, run_b: Path):
    """Both runs' (labels, y_true, pred_a, pred_b), with B's rows put in A's order by their inputs' content (two
    manifests holding the same test rows in other files or another order), or None when they cannot be matched."""
    _, labels_a, y_a, pred_a, (mod_a, in_a) = _read_predictions_with_inputs(run_a)
    _, labels_b, y_b, pred_b, (mod_b, in_b) = _read_predictions_with_inputs(run_b)
    if in_a is None or in_b is None or mod_a != mod_b or labels_a != labels_b or len(in_a) != len(in_b):
        return None
    keys_a = [(k, int(y)) for k, y in zip(_content_keys(mod_a, in_a), y_a)]
    keys_b = [(k, int(y)) for k, y in zip(_content_keys(mod_b, in_b), y_b)]
    where = {k: i for i, k in enumerate(keys_b)}
    if len(where) != len(keys_b) or len(set(keys_a)) != len(keys_a) or set(keys_a) != set(where):
        return None
    order = np.array([where[k] for k in keys_a])
    return labels_a, y_a, pred_a, pred_b[order]


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
    for i, warning in enumerate(info.get("warnings", []), start=1):
        extra[f"warning {i}"] = warning
    return write_report(out_dir or run_dir / "report", run_dir.name, metrics, training_log=log_rows,
                        ablation=ablation, extra=extra, mistakes=confident_mistakes(run_dir))


MISTAKES_SHOWN = 10


def confident_mistakes(run_dir: Path, n: int = MISTAKES_SHOWN) -> list[dict[str, object]]:
    """The ``n`` wrong test predictions with the highest predicted probability, with their input."""
    with open(run_dir / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != r["prediction"]]
    out = []
    for r in rows:
        confidence = float(r.get(f"p_{r['prediction']}") or "nan")
        shown = next((r[c] for c in ("text", "image", "audio") if r.get(c)), "")
        out.append({"row": r["row"], "input": shown, "label": r["label"], "prediction": r["prediction"],
                    "confidence": confidence})
    return sorted(out, key=lambda m: -m["confidence"])[:n]


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
        aligned = _align_by_content(run_a, run_b)  # the same test rows, from another manifest file or order
        if aligned is None:
            raise PolymodalError(f"{run_a} and {run_b} were not tested on the same rows and labels; a paired "
                                 "comparison needs the same test inputs (the same manifest and data.seed, or manifests "
                                 "whose test rows hold the same texts and files)")
        labels_a, y_a, pred_a, pred_b = aligned
        labels_b, y_b = labels_a, y_a
    boot = {m: paired_bootstrap(y_a, pred_a, pred_b, metric=m, n_resamples=n_resamples, seed=seed, n_labels=len(labels_a))
            for m in ("accuracy", "macro_f1")}
    return write_comparison(out_dir, run_a.name, classification_metrics(y_a, pred_a, labels_a), run_b.name,
                            classification_metrics(y_b, pred_b, labels_b), boot)
