"""What a finished ``classify`` / ``align`` run writes about its test split: metrics.json (scores, per-modality
ablation, gate and late-fusion weights) and predictions.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from .._paths import atomic_write_text
from ..train import checkpoint as ckpt
from ..train.config import TrainConfig
from ..train.data import Splits
from ..train.loop import parameter_counts
from .predict import Inputs, alignment_scores, predict_split, scores

# A mean gate above this on one modality: the gated head has all but stopped looking at the others.
GATE_COLLAPSE = 0.95


def write_results(run_dir: Path, cfg: TrainConfig, model, splits: Splits, test_in: Inputs, device, seconds: float) -> None:
    counts = parameter_counts(model)
    result = {"parameters": counts, "train_seconds": round(seconds, 2), "labels": splits.labels,
              "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test)}
    if cfg.task == "align":
        if test_in.examples:
            result["test"] = alignment_scores(model, test_in, cfg.optim.batch_size, device, cfg)
            a, b = cfg.model.encoders
            print(f"test: recall@1 {a}->{b} {result['test'][f'{a}_to_{b}_r@1']:.4f}, {b}->{a} "
                  f"{result['test'][f'{b}_to_{a}_r@1']:.4f} ({len(splits.test)} pairs)")
        result["logit_scale"] = float(model.head.logit_scale().detach())
        ckpt.write_json(run_dir / "metrics.json", result)
        return
    gates: list[torch.Tensor] = []
    if test_in.examples:
        probs = predict_split(model, test_in, cfg.optim.batch_size, device, cfg, gates=gates)
        result["test"] = scores(test_in.targets, probs)
        write_predictions(run_dir / "predictions.csv", test_in, probs, splits.labels)
        if len(cfg.model.encoders) > 1:
            result["ablation"] = {m: scores(test_in.targets, predict_split(model, test_in, cfg.optim.batch_size, device, cfg, drop=m))
                                  for m in cfg.model.encoders}
        print(f"test: accuracy {result['test']['accuracy']:.4f}, macro-F1 {result['test']['macro_f1']:.4f} "
              f"({len(splits.test)} examples)")
    if gates:  # mean gate weight per modality over the test set (gated fusion)
        result["gates"] = dict(zip(model.head.modalities, torch.cat(gates).mean(0).tolist()))
        warning = gate_collapse_warning(result["gates"], result.get("ablation"))
        if warning:
            result["warnings"] = [warning]
            print(f"warning: {warning}")
    if hasattr(model.head, "modality_weights"):
        result["late_weights"] = model.head.modality_weights()
    ckpt.write_json(run_dir / "metrics.json", result)


def gate_collapse_warning(gates: dict[str, float], ablation: dict[str, dict] | None = None) -> str | None:
    """A sentence when the gated head put (nearly) all its weight on one modality, else None."""
    top, weight = max(gates.items(), key=lambda kv: kv[1])
    if weight <= GATE_COLLAPSE:
        return None
    others = ", ".join(m for m in gates if m != top)
    detail = ""
    if ablation and all(m in ablation for m in gates):
        # ablation[m]: the score with m dropped, i.e. the other modalities alone
        detail = " (test accuracy without it: " + ", ".join(
            f"{ablation[m]['accuracy']:.3f} without {m}" for m in gates) + ")"
    return (f"gated fusion collapsed onto {top} (mean gate {weight:.4f}): it all but ignores {others}{detail}; "
            "compare with single-modality runs, and retrain with model.fusion.gate_balance=0.1 or "
            "model.fusion.modality_dropout=0.3")


def write_predictions(path: Path, inputs: Inputs, probs: torch.Tensor, labels: list[str]) -> None:
    """predictions.csv: per test row its number, true label, prediction, input (the text, the image/audio file) and
    every class probability at full precision (top-k is recoverable)."""
    modalities = [m for m in ("text", "image", "audio") if any(e.get(m) is not None for e in inputs.examples)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "label", "prediction", *[f"p_{label}" for label in labels], *modalities])
    pred = probs.argmax(-1).tolist()
    for ex, p, row in zip(inputs.examples, pred, probs.double().tolist()):
        w.writerow([ex.row, ex.label, labels[p], *[repr(x) for x in row],
                    *["" if ex.get(m) is None else str(ex.get(m)) for m in modalities]])
    atomic_write_text(path, buf.getvalue())
