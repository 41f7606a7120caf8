"""The model calls the service batches: class probabilities, and pooled embeddings per modality.

Inputs arrive decoded (text, PIL image, mono waveform at the encoder's rate); each encoder prepares its
modality's items of the batch at once, and the fusion head masks the modalities an example lacks, exactly as
in training and ``Run.predict``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..train.data import RawBatch
from ..train.run import Run


def prepare_batch(run: Run, items: list[dict[str, Any]]) -> RawBatch:
    """Decoded inputs (one dict modality -> input per example) -> the model's ``RawBatch``."""
    inputs, present = {}, {}
    for m, enc in run.model.encoders.items():
        present[m] = torch.tensor([m in it for it in items], dtype=torch.bool)
        given = [it[m] for it in items if m in it]
        inputs[m] = enc.prepare(given, train=False) if given else {}
    return RawBatch(inputs, present, len(items))


@torch.inference_mode()
def predict_batch(run: Run, items: list[dict[str, Any]]) -> list[list[float]]:
    """Class probabilities, one list (classes,) per example, in ``run.labels`` order.

    Raises:
        FloatingPointError: the model produced a non-finite probability.
    """
    probs = run.model(prepare_batch(run, items)).float().softmax(-1)
    if not torch.isfinite(probs).all():
        raise FloatingPointError("the model produced non-finite probabilities")
    return probs.tolist()


@torch.inference_mode()
def embed_batch(run: Run, items: list[dict[str, Any]]) -> list[dict[str, list[float]]]:
    """Pooled encoder outputs: per example, modality -> (dim,) for the modalities it gave."""
    out: list[dict[str, list[float]]] = [{} for _ in items]
    for m, enc in run.model.encoders.items():
        idx = [i for i, it in enumerate(items) if m in it]
        if not idx:
            continue
        pooled = enc(enc.prepare([items[i][m] for i in idx], train=False)).pooled.float()
        if not torch.isfinite(pooled).all():
            raise FloatingPointError(f"the {m} encoder produced non-finite embeddings")
        for i, row in zip(idx, pooled.tolist()):
            out[i][m] = row
    return out


def sample_rates(run: Run) -> dict[str, int | None]:
    """Modality -> the rate its encoder wants waveforms at (None for text and images)."""
    return {m: getattr(enc, "sample_rate", None) for m, enc in run.model.encoders.items()}
