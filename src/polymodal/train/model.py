"""The classifier a run trains: optional live encoders (full / LoRA tuning) and a fusion head."""

from __future__ import annotations

import torch
from torch import nn

from ..fusion import ModalityFeatures
from ..models import Encoder
from .data import RawBatch


class MultimodalClassifier(nn.Module):
    """Fusion head over per-modality features.

    With ``encoders`` (full fine-tuning or LoRA) it takes a ``RawBatch`` and runs the encoders every step;
    without (linear probe) it takes the cached features directly: ``dict[modality, ModalityFeatures]``.
    """

    def __init__(self, head: nn.Module, encoders: dict[str, Encoder] | None = None, sequence: bool = False):
        super().__init__()
        self.head = head
        self.encoders = nn.ModuleDict(encoders or {})
        self.sequence = sequence

    def forward(self, batch: RawBatch | dict[str, ModalityFeatures]) -> torch.Tensor:
        features = self.encode(batch) if isinstance(batch, RawBatch) else batch
        return self.head(features)

    def encode(self, batch: RawBatch) -> dict[str, ModalityFeatures]:
        device = next(self.head.parameters()).device
        out = {}
        for m, enc in self.encoders.items():
            present = batch.present[m].to(device)
            idx = present.nonzero().squeeze(1)
            pooled = torch.zeros(batch.size, enc.dim, device=device)
            seq = mask = None
            if len(idx):
                res = enc({k: v.to(device) for k, v in batch.inputs[m].items()})
                pooled = pooled.index_copy(0, idx, res.pooled.to(pooled.dtype))
                if self.sequence:
                    seq = torch.zeros(batch.size, *res.sequence.shape[1:], device=device, dtype=res.sequence.dtype)
                    seq = seq.index_copy(0, idx, res.sequence)
                    mask = torch.zeros(batch.size, res.mask.shape[1], dtype=torch.bool, device=device)
                    mask = mask.index_copy(0, idx, res.mask)
            elif self.sequence:
                seq = torch.zeros(batch.size, 1, enc.seq_dim, device=device)
                mask = torch.zeros(batch.size, 1, dtype=torch.bool, device=device)
            out[m] = ModalityFeatures(pooled=pooled, present=present, sequence=seq, mask=mask)
        return out
