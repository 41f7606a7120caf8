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


# glibc's malloc serves a request above its mmap threshold with fresh pages from the kernel, and gives them back on
# free: every batch then page-faults its whole activations in again (kernel time above user time). The threshold
# adapts up to 32 MiB at most, so batches whose largest activation stays under it reuse the same memory. Measured on
# EfficientNet-Lite0 in torch at 224 px (4.9 MB per image at its widest, 2 threads): batches of 5 ran 1.28-2.09x
# batches of 32 model only over three runs of bench/results/encode.md section 0; in a sweep (3 repeats) batches of
# 4-6 ran 73-80 img/s with almost no page faults, 32 ran 41-46 img/s with 11,000-13,000 faults per image, 64 ran 37.
# 24 MiB leaves headroom under the threshold.
FAULT_FREE_BYTES = 24 * 2**20


@torch.inference_mode()
def largest_activation_bytes(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """The largest tensor any submodule outputs in one forward pass of ``inputs`` (forward hooks)."""
    largest = [0]

    def hook(_module, _args, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        module(inputs)
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def fault_free_batch_size(module: torch.nn.Module, one: dict[str, torch.Tensor], requested: int) -> int:
    """The batch size, at most ``requested``, whose largest activation fits ``FAULT_FREE_BYTES``, judged from a
    forward pass of one prepared input ``one`` (fixed-size inputs: images). At least 1."""
    per_item = largest_activation_bytes(module, one)
    return max(1, min(requested, FAULT_FREE_BYTES // max(1, per_item)))
