"""The one small interface every encoder meets, whatever its modality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

MODALITIES = ("text", "image", "audio")


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    Attributes:
        pooled: (batch, dim), one vector per input.
        sequence: (batch, time, seq_dim): tokens, image patches or audio frames.
        mask: (batch, time) bool, True where ``sequence`` holds real content rather than padding.
    """

    pooled: torch.Tensor
    sequence: torch.Tensor
    mask: torch.Tensor


@runtime_checkable
class Encoder(Protocol):
    """A pretrained (or from-scratch) encoder of one modality.

    Attributes:
        modality: ``"text"``, ``"image"`` or ``"audio"``.
        dim: size of ``pooled``; ``seq_dim`` is the size of ``sequence``.
        sample_rate: audio encoders only: the rate in Hz that ``prepare`` expects waveforms at.
    """

    modality: str
    dim: int
    seq_dim: int

    def prepare(self, items: list[Any], train: bool = False, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Decoded inputs (str, PIL image or mono waveform) -> a batch of model inputs. ``train`` turns augmentation on."""
        ...

    def __call__(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput: ...


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x: (batch, time, dim) over the time steps where mask: (batch, time) is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
