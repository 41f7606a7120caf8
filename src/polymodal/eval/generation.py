"""Scoring generated answers: exact match after normalisation, per-task accuracy, reports and paired comparisons.

Normalisation follows SQuAD's official script (Rajpurkar et al. 2016): lowercase, drop punctuation and the
articles a / an / the, collapse whitespace; digits are also spelled out ("7" -> "seven"), so "7" answers "seven".

*Exact match* needs the whole normalised answer to equal the reference. *Correct* (per-task accuracy) is more
lenient where a task has a closed set of one-word answers (its labels): the first label word that appears in the
answer is its prediction, so "This review is positive." counts as "positive", as a classifier's arg-max would.
Open answers are correct only on an exact match.

A generation run writes ``predictions.csv`` with columns ``row, task, label, prediction, answer, correct,
exact_match``: ``label`` the reference, ``answer`` the generated text, ``prediction`` the label word read from it
(or its normalised text).
"""

from __future__ import annotations

import csv
import io
import re
import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bootstrap import BootstrapResult, paired_bootstrap_per_item

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DIGITS = dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")))
PREDICTION_FIELDS = ("row", "task", "label", "prediction", "answer", "correct", "exact_match")


def normalize_answer(text: str) -> str:
    """Lowercase, spell out single digits, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = re.sub(r"\b(\d)\b", lambda m: _DIGITS[int(m.group(1))], text)
    text = "".join(" " if c in string.punctuation else c for c in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def read_label(answer: str, labels: Sequence[str]) -> str:
    """The label word an answer names: the first (by position) of ``labels`` occurring as a whole word in the
    normalised answer, or the normalised answer itself when none does."""
    norm = normalize_answer(answer)
    words = norm.split()
    wanted = {normalize_answer(label): label for label in labels}
    for w in words:
        if w in wanted:
            return normalize_answer(wanted[w])
    for label in sorted(wanted, key=len, reverse=True):  # multi-word labels
        if " " in label and re.search(rf"\b{re.escape(label)}\b", norm):
            return label
    return norm


@dataclass(frozen=True)
class ScoredAnswer:
    row: int
    task: str
    label: str  # the reference answer
    prediction: str  # the label word read from the answer (closed tasks) or the normalised answer
    answer: str  # the generated text
    correct: bool
    exact_match: bool


def closed_label_sets(tasks: Sequence[str], references: Sequence[str], max_labels: int = 20) -> dict[str, list[str]]:
    """Tasks whose references are few one-word answers (labels), each with its label words."""
    by_task: dict[str, set[str]] = defaultdict(set)
    for t, r in zip(tasks, references):
        by_task[t].add(normalize_answer(r))
    return {t: sorted(v) for t, v in by_task.items() if len(v) <= max_labels and all(len(x.split()) == 1 for x in v)}


def score_answers(rows: Sequence[int], tasks: Sequence[str], references: Sequence[str], answers: Sequence[str],
                  label_sets: dict[str, list[str]] | None = None) -> list[ScoredAnswer]:
    """Score generated answers against references.

    Args:
        label_sets: task -> its closed label set; default: ``closed_label_sets`` of the references.
    """
    label_sets = closed_label_sets(tasks, references) if label_sets is None else label_sets
    out = []
    for row, task, ref, ans in zip(rows, tasks, references, answers):
        exact = normalize_answer(ans) == normalize_answer(ref)
        if task in label_sets:
            pred = read_label(ans, label_sets[task])
            correct = pred == normalize_answer(ref)
        else:
            pred, correct = normalize_answer(ans), exact
        out.append(ScoredAnswer(row, task, ref, pred, ans, correct, exact))
    return out


def summarise(scored: Sequence[ScoredAnswer]) -> dict:
    """{"accuracy", "exact_match", "n", "per_task": {task: {"accuracy", "exact_match", "n"}}}."""

    def block(items: Sequence[ScoredAnswer]) -> dict:
        n = len(items)
        return {"accuracy": sum(s.correct for s in items) / max(1, n), "exact_match": sum(s.exact_match for s in items) / max(1, n), "n": n}

    tasks = sorted({s.task for s in scored})
    return {**block(scored), "per_task": {t: block([s for s in scored if s.task == t]) for t in tasks}}


def write_predictions(path: str | Path, scored: Sequence[ScoredAnswer]) -> None:
    from .._paths import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)  # answers may hold any character, "\r" included
    w.writerow(PREDICTION_FIELDS)
    for s in scored:
        w.writerow([s.row, s.task, s.label, s.prediction, s.answer, int(s.correct), int(s.exact_match)])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: str | Path) -> list[ScoredAnswer]:
    with open(path, newline="") as f:
        return [ScoredAnswer(int(r["row"]), r["task"], r["label"], r["prediction"], r["answer"], r["correct"] == "1",
                             r["exact_match"] == "1") for r in csv.DictReader(f)]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_generation_run(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``report.md`` / ``report.html``: accuracy and exact match overall and per task, and wrong answers."""
    from ._document import Heading, Paragraph, table
    from .report import _write_pair

    run_dir = Path(run_dir)
    scored = read_predictions(run_dir / "predictions.csv")
    s = summarise(scored)
    blocks = [
        Paragraph(f"{s['n']} test items, answers generated and scored (see polymodal.eval.generation)."),
        Heading("Scores"),
        table(("task", "items", "accuracy %", "exact match %"),
              [(t, v["n"], _pct(v["accuracy"]), _pct(v["exact_match"])) for t, v in s["per_task"].items()]
              + [("all", s["n"], _pct(s["accuracy"]), _pct(s["exact_match"]))]),
        Heading("Wrong answers (first 20)"),
        table(("row", "task", "reference", "answer"),
              [(x.row, x.task, x.label, x.answer[:80]) for x in scored if not x.correct][:20], numeric_from=9),
    ]
    return _write_pair(Path(out_dir or run_dir / "report"), "report.md", "report.html", run_dir.name, blocks)


def compare_generation_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path, n_resamples: int = 1000,
                            seed: int = 0) -> tuple[Path, Path]:
    """``comparison.md`` / ``.html``: B against A on the same items, per task and overall, with paired bootstrap
    intervals on the accuracy difference.

    Raises:
        ValueError: the runs were not scored on the same items.
    """
    from ._document import Heading, Paragraph, table
    from .report import _write_pair, verdict

    run_a, run_b = Path(run_a), Path(run_b)
    a, b = read_predictions(run_a / "predictions.csv"), read_predictions(run_b / "predictions.csv")
    if [(x.row, x.label) for x in a] != [(x.row, x.label) for x in b]:
        raise ValueError(f"{run_a} and {run_b} were not scored on the same items; a paired comparison needs the same "
                         "test split")
    tasks = sorted({x.task for x in a})
    results: dict[str, BootstrapResult] = {}
    for name in [*tasks, "all"]:
        idx = [i for i, x in enumerate(a) if name == "all" or x.task == name]
        results[name] = paired_bootstrap_per_item(np.array([a[i].correct for i in idx], dtype=np.int64),
                                                  np.array([b[i].correct for i in idx], dtype=np.int64),
                                                  metric="accuracy", n_resamples=n_resamples, seed=seed)
    em = {n: (np.mean([x.exact_match for x in a if n == "all" or x.task == n]),
              np.mean([x.exact_match for x in b if n == "all" or x.task == n])) for n in results}
    blocks = [
        Paragraph(f"A = {run_a.name}, B = {run_b.name}; {len(a)} test items. Paired bootstrap ({n_resamples} "
                  "resamples of the items) on the accuracy difference B − A."),
        Heading("Per task"),
        table(("task", "items", "A accuracy %", "B accuracy %", "B − A", "95% interval", "A exact %", "B exact %"),
              [(n, r.n_items, _pct(r.a), _pct(r.b), f"{100 * r.diff:+.1f}", f"[{100 * r.low:+.1f}, {100 * r.high:+.1f}]",
                _pct(em[n][0]), _pct(em[n][1])) for n, r in results.items()]),
        Heading("Verdicts"),
        *[Paragraph(f"accuracy: {n}: {verdict(r, run_a.name, run_b.name)}.") for n, r in results.items()],
    ]
    return _write_pair(Path(out_dir), "comparison.md", "comparison.html", f"{run_a.name} vs {run_b.name}", blocks)
