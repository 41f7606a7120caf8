"""The model of a ``classify`` or ``align`` run: a head (fusion, prompts or contrastive projections) over encoders
that run live (full / LoRA tuning) or feed it cached features, rebuilt from the run's config alone."""

from __future__ import annotations

import torch
from torch import nn

from ..fusion import ModalityFeatures, build_fusion, drop_modalities
from ..models import Encoder, build_encoder
from ..train.config import CACHED_MODES, PROMPT_MODES, TrainConfig
from ..train.data import RawBatch
from ..train.loop import parameter_counts
from ..tuning import apply_lora
from ..tuning.contrastive import ContrastiveHead
from .prompt_head import build_prompt_head


class MultimodalClassifier(nn.Module):
    """Fusion head over per-modality features.

    With ``encoders`` (full fine-tuning or LoRA) it takes a ``RawBatch`` and runs the encoders every step;
    without (linear probe) it takes the cached features directly: ``dict[modality, ModalityFeatures]``.
    """

    def __init__(self, head: nn.Module, encoders: dict[str, Encoder] | None = None, sequence: bool = False,
                 modality_dropout: float = 0.0):
        super().__init__()
        self.head = head
        self.encoders = nn.ModuleDict(encoders or {})
        self.sequence = sequence
        self.modality_dropout = modality_dropout  # training only

    def forward(self, batch: RawBatch | dict[str, ModalityFeatures]) -> torch.Tensor:
        features = self.encode(batch) if isinstance(batch, RawBatch) else batch
        if self.training and self.modality_dropout > 0 and len(features) > 1:
            features = drop_modalities(features, self.modality_dropout)
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


def build_classifier(cfg: TrainConfig, num_classes: int, dims: dict[str, int] | None = None,
                     live_encoders: bool | None = None, labels: list[str] | None = None) -> tuple[MultimodalClassifier, dict[str, int]]:
    """The model of a run, rebuilt from its config alone.

    Args:
        dims: feature sizes per modality, for a linear probe trained on cached features (no live encoders).
        live_encoders: attach the encoders (default: unless the mode uses cached features: linear_probe, zeroshot,
            coop). Prediction on new inputs attaches them to those too, frozen.
        labels: the class labels, in order (the prompt modes name the classes in their prompts).

    Returns:
        the classifier and its count of parameters: trainable, total.
    """
    mode = cfg.tuning.mode
    sequence = cfg.model.fusion.kind == "cross_attention" and cfg.task == "classify"
    encoders = None
    cached = mode in CACHED_MODES
    if live_encoders if live_encoders is not None else not cached:
        encoders = {m: build_encoder(e) for m, e in cfg.model.encoders.items()}
        dims = {m: (enc.seq_dim if sequence else enc.dim) for m, enc in encoders.items()}
        if cached:
            for enc in encoders.values():
                enc.requires_grad_(False)
    if cfg.task == "align":
        return _build_aligner(cfg, encoders, dims)
    if mode in PROMPT_MODES:
        if labels is None or len(labels) != num_classes:
            raise ValueError("build_classifier: the prompt modes need the class labels")
        model = MultimodalClassifier(build_prompt_head(cfg, labels), encoders)
        return model, parameter_counts(model)
    if dims is None:
        raise ValueError("build_classifier: a linear probe without live encoders needs the feature sizes (dims)")
    f = cfg.model.fusion
    extra = {"layers": f.layers, "heads": f.heads} if f.kind == "cross_attention" else {}
    if f.kind == "late":
        head = build_fusion("late", dims, num_classes, combine=f.combine, dropout=f.dropout)
    elif f.kind == "cross_attention":
        head = build_fusion(f.kind, dims, num_classes, d_model=f.hidden, dropout=f.dropout, **extra)
    else:
        head = build_fusion(f.kind, dims, num_classes, hidden=f.hidden, dropout=f.dropout,
                            **({"gate_balance": f.gate_balance} if f.kind == "gated" else {}))
    model = MultimodalClassifier(head, encoders, sequence=sequence, modality_dropout=f.modality_dropout)
    if mode == "lora":
        for enc in model.encoders.values():
            t = cfg.tuning
            apply_lora(enc, **t.lora.kwargs(), where="tuning.lora")
    return model, parameter_counts(model)


def _build_aligner(cfg: TrainConfig, encoders: dict | None, dims: dict[str, int] | None):
    a = cfg.model.align
    if dims is None:
        raise ValueError("build_classifier: an aligner on cached features needs their sizes (dims)")
    head = ContrastiveHead({m: dims[m] for m in cfg.model.encoders}, dim=a.dim, projection=a.projection,
                           init_temperature=a.init_temperature)
    model = MultimodalClassifier(head, encoders)
    t = cfg.tuning
    for m, enc in model.encoders.items():
        if m in a.locked or t.mode == "linear_probe":
            enc.requires_grad_(False)
        elif t.mode == "lora":
            apply_lora(enc, **t.lora.kwargs(), where="tuning.lora")
    return model, parameter_counts(model)


def _counts(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}
