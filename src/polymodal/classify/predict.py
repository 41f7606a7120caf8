"""Predictions of a ``classify`` / ``align`` model on a split: class probabilities, joint embeddings, scores.

``Inputs`` makes a split's batches from cached features (frozen encoders) or from raw examples (live encoders);
training, validation, the test split, ``Run.predict``, the service and ``polymodal compress`` all batch through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..eval.retrieval import retrieval_metrics
from ..features.extract import image_batch_size as features_image_batch_size
from ..train.config import TrainConfig
from ..train.data import FeatureTable, batch_order, raw_batch
from ..train.loop import autocast
from ..tuning.contrastive import clip_loss
from .model import MultimodalClassifier


POOLED_EVAL_BATCH = 1024


def image_batch_size(model: MultimodalClassifier, examples: list, batch_size: int) -> int:
    """Examples per forward pass when ``model`` predicts raw ``examples``: ``batch_size``, cut to the page-fault-free
    batch of its image encoder (``features.extract.image_batch_size``) where it has one."""
    if "image" not in model.encoders:
        return batch_size
    return features_image_batch_size(model.encoders["image"], examples, batch_size)


@dataclass
class Inputs:
    """How batches are made for a split: from cached features (linear probe) or raw inputs (full, LoRA)."""

    examples: list
    targets: torch.Tensor
    table: FeatureTable | None
    _fault_free: dict[int, int] = field(default_factory=dict, repr=False)  # batch size -> raw image eval batch

    def eval_batch_size(self, batch_size: int, model: MultimodalClassifier) -> int:
        """Rows per forward pass when predicting: pooled cached features are a few KB a row, so a split of them goes
        through the head in batches of ``POOLED_EVAL_BATCH`` (one pass for most validation splits: a small head's
        validation in batches of 32 cost as much as 10 % of its training steps); raw images through a torch image
        encoder in batches whose largest activation stays under glibc's mmap threshold
        (``models.encoder.fault_free_batch_size``: EfficientNet-Lite0 at 224 px, 5 a batch ran 1.3-2.1x 32); anything
        else in ``batch_size``."""
        if self.table is not None:
            pooled = all(f.sequence is None for f in self.table.features.values())
            return max(batch_size, POOLED_EVAL_BATCH) if pooled else batch_size
        if batch_size not in self._fault_free:  # one forward of one image, once per split and batch size
            self._fault_free[batch_size] = image_batch_size(model, self.examples, batch_size)
        return self._fault_free[batch_size]

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
    for idx in batch_order(len(inputs.examples), inputs.eval_batch_size(batch_size, model), 0, 0, shuffle=False):
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
    for idx in batch_order(len(inputs.examples), inputs.eval_batch_size(batch_size, model), 0, 0, shuffle=False):
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
    """Accuracy and macro F1 (over the classes present in targets or predictions, as scikit-learn's ``f1_score``).

    Computed from one confusion matrix (``np.bincount``), not by scikit-learn: this runs after every epoch, where
    ``f1_score``'s input checks alone cost 1.3 ms, a third of a small head's validation pass. The test split's
    report is scikit-learn's (``eval.metrics``); tests/test_eval.py checks these two equal it."""
    y = targets.numpy().astype(np.int64)
    pred = probs.argmax(-1).numpy().astype(np.int64)
    if len(y) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    k = int(max(y.max(), pred.max())) + 1
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp, true, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    seen = (true + predicted) > 0
    f1 = np.divide(2 * tp, true + predicted, out=np.zeros(k), where=seen)  # 2TP / (2TP + FP + FN)
    return {"accuracy": float(tp.sum() / len(y)), "macro_f1": float(f1[seen].mean())}
