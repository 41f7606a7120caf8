"""The calls the service batches, each a thin adapter over a run's one inference path (``classify.Run.predict_items``,
``speech.asr_run.Transcriber.predict_items``), so the service predicts exactly what ``Run.predict``, ``polymodal
predict`` and ``polymodal compress`` measure.

Inputs arrive decoded (text, PIL image, mono waveform at the encoder's rate).
"""

from __future__ import annotations

from typing import Any

import torch

from ..classify.run import Run
from ..speech.asr_run import Transcriber, is_transcriber, load_transcriber  # noqa: F401 - what the app serves

__all__ = ["embed_batch", "is_transcriber", "load_transcriber", "predict_batch", "sample_rates", "transcribe_batch"]


def predict_batch(run: Run, items: list[dict[str, Any]], bucket_size: int = 0) -> list[list[float]]:
    """Class probabilities, one list (classes,) per example, in ``run.labels`` order (``bucket_size``: texts in
    length-sorted sub-batches of that many, see ``Run.predict_items``).

    Raises:
        FloatingPointError: the model produced a non-finite probability.
    """
    return run.predict_items(items, bucket_size=bucket_size).tolist()


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


def sample_rates(run: Run | Transcriber) -> dict[str, int | None]:
    """Modality -> the rate its encoder wants waveforms at (None for text and images)."""
    return run.sample_rates()


def transcribe_batch(transcriber: Transcriber, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transcripts of 16 kHz waveforms: text, duration and timed segments per item."""
    return transcriber.predict_items(items)
