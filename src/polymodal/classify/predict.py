"""Predictions of a ``classify`` / ``align`` model on a split: class probabilities, joint embeddings, scores.

``Inputs`` makes a split's batches from cached features (frozen encoders) or from raw examples (live encoders);
training, validation, the test split, ``Run.predict``, the service and ``polymodal compress`` all batch through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..eval.retrieval import retrieval_metrics
from ..train.config import TrainConfig
from ..train.data import FeatureTable, batch_order, raw_batch
from ..train.loop import autocast
from ..tuning.contrastive import clip_loss
from .model import MultimodalClassifier


@dataclass
class Inputs:
    """How batches are made for a split: from cached features (linear probe) or raw inputs (full, LoRA)."""

    examples: list
    targets: torch.Tensor
    table: FeatureTable | None

    def batch(self, idx: torch.Tensor, model: MultimodalClassifier, train: bool, rng: np.random.Generator):
        if self.table is not None:
            return self.table.batch(idx)
        return raw_batch([self.examples[i] for i in idx.tolist()], dict(model.encoders), train, rng)


@torch.no_grad()
def predict_split(model: MultimodalClassifier, inputs: Inputs, batch_size: int, device: torch.device,
                  cfg: TrainConfig, drop: str | None = None, gates: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Class probabilities (n, classes) for a split, optionally with one modality dropped (its presence False).

    Args:
        gates: if given, receives the gated head's per-example modality weights of every batch.
    """
    model.eval()
    probs = []
    rng = np.random.default_rng(0)
    for idx in batch_order(len(inputs.examples), batch_size, 0, 0, shuffle=False):
        batch = inputs.batch(idx, model, train=False, rng=rng)
        batch = drop_modality(batch, drop)
        with autocast(cfg, device):
            logits = model(to_device(batch, device))
        probs.append(logits.float().softmax(-1).cpu())
        if gates is not None and getattr(model.head, "last_gates", None) is not None:
            gates.append(model.head.last_gates.cpu())
    return torch.cat(probs) if probs else torch.zeros(0)


@torch.no_grad()
def embed_split(model: MultimodalClassifier, inputs: Inputs, batch_size: int, device: torch.device,
                cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-space embeddings (n, dim) of both modalities of a split, by an alignment model."""
    model.eval()
    a, b = [], []
    rng = np.random.default_rng(0)
    for idx in batch_order(len(inputs.examples), batch_size, 0, 0, shuffle=False):
        with autocast(cfg, device):
            ea, eb, _ = model(to_device(inputs.batch(idx, model, train=False, rng=rng), device))
        a.append(ea.float().cpu())
        b.append(eb.float().cpu())
    return torch.cat(a), torch.cat(b)


def alignment_scores(model: MultimodalClassifier, inputs: Inputs, batch_size: int, device: torch.device,
                     cfg: TrainConfig) -> dict[str, float]:
    """Recall@1/5/10 both ways, MRR, and the contrastive loss over the whole split (every other pair a negative)."""
    a, b = embed_split(model, inputs, batch_size, device, cfg)
    out = retrieval_metrics(a, b, names=tuple(cfg.model.encoders))
    out["loss"] = float(clip_loss(a, b, float(model.head.logit_scale().detach())))
    return out


def drop_modality(batch, drop: str | None):
    if drop is None:
        return batch
    if isinstance(batch, dict):
        f = batch[drop]
        batch = dict(batch)
        batch[drop] = type(f)(pooled=torch.zeros_like(f.pooled), present=torch.zeros_like(f.present),
                              sequence=f.sequence, mask=None if f.mask is None else torch.zeros_like(f.mask))
        return batch
    batch.present = {**batch.present, drop: torch.zeros_like(batch.present[drop])}
    batch.inputs = {**batch.inputs, drop: {}}
    return batch


def to_device(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, dict):
        return {m: type(f)(**{k: (None if v is None else v.to(device)) for k, v in vars(f).items()}) for m, f in batch.items()}
    return batch


def scores(targets: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = probs.argmax(-1).numpy()
    y = targets.numpy()
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0))}
