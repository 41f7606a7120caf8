"""Fusion heads: combine per-modality features into class logits, masking modalities an example lacks.

All heads take ``dict[modality, ModalityFeatures]`` and return logits (batch, num_classes). An example whose cell
for a modality is empty has ``present=False`` there: the head ignores that modality for that example instead of
failing (early fusion sees zeros plus a presence flag; the others mask it out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModalityFeatures:
    """One modality's encoder output for a batch.

    Attributes:
        pooled: (batch, dim).
        present: (batch,) bool, False where the example has no input of this modality.
        sequence: (batch, time, seq_dim) or None; ``mask``: (batch, time) bool, True at real positions.
    """

    pooled: torch.Tensor
    present: torch.Tensor
    sequence: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def _check_inputs(inputs: dict[str, ModalityFeatures], modalities: tuple[str, ...]) -> None:
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise KeyError(f"fusion head expects modalities {modalities}, got no features for {missing}")


class EarlyFusion(nn.Module):
    """Concatenate pooled features (zeros for absent modalities) and presence flags, then an MLP."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.modalities = tuple(dims)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d) for m, d in dims.items()})
        width = sum(dims.values()) + len(dims)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, inputs: dict[str, ModalityFeatures]) -> torch.Tensor:
        _check_inputs(inputs, self.modalities)
        parts, flags = [], []
        for m in self.modalities:
            f = inputs[m]
            present = f.present.to(f.pooled.dtype).unsqueeze(-1)
            parts.append(self.norms[m](f.pooled) * present)
            flags.append(present)
        return self.mlp(torch.cat(parts + flags, dim=-1))


class GatedFusion(nn.Module):
    """Project each modality to ``hidden``; a learned gate weighs them per example (softmax over present ones).

    ``last_gates`` holds the gate weights (batch, modalities) of the last forward pass, for reporting.
    """

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 256, dropout: float = 0.1,
                 gate_balance: float = 0.0):
        super().__init__()
        self.modalities = tuple(dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU()) for m, d in dims.items()})
        self.gate = nn.Linear(hidden * len(dims), len(dims))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.gate_balance = gate_balance
        self.last_gates: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None  # training: gate_balance x KL(uniform || batch-mean gate)

    def forward(self, inputs: dict[str, ModalityFeatures]) -> torch.Tensor:
        _check_inputs(inputs, self.modalities)
        present = torch.stack([inputs[m].present for m in self.modalities], dim=1)  # (batch, M)
        h = torch.stack([self.proj[m](inputs[m].pooled) * inputs[m].present.unsqueeze(-1) for m in self.modalities], 1)
        scores = self.gate(h.flatten(1)).masked_fill(~present, float("-inf"))
        gates = torch.nan_to_num(scores.softmax(-1))  # an example with no modality at all gets zero weights
        self.last_gates = gates.detach()
        if self.training and self.gate_balance > 0:
            # As mixture-of-experts load balancing: the batch's mean gate is pulled towards uniform, so the head
            # cannot put all its weight on one modality, while single examples may still lean on one.
            # KL(uniform || mean) rather than the reverse: its gradient stays large when a gate is saturated.
            mean = gates.mean(0).clamp_min(1e-8)
            self.aux_loss = -self.gate_balance * (mean * len(self.modalities)).log().mean()
        return self.classifier((gates.unsqueeze(-1) * h).sum(1))


class CrossAttentionFusion(nn.Module):
    """A small transformer over all modalities' sequence tokens plus a [CLS] token, which is classified.

    Each modality's tokens are projected to ``d_model`` and tagged with a learned modality embedding; padding
    and absent modalities are masked from attention. A modality without sequence features is one token (pooled).
    """

    def __init__(self, dims: dict[str, int], num_classes: int, d_model: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1, max_tokens_per_modality: int = 64):
        super().__init__()
        self.modalities = tuple(dims)
        self.max_tokens = max_tokens_per_modality
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d_model)) for m, d in dims.items()})
        self.modality_embed = nn.Parameter(torch.zeros(len(dims), d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.normal_(self.modality_embed, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, num_classes)

    def _tokens(self, f: ModalityFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if f.sequence is None:
            return f.pooled.unsqueeze(1), f.present.unsqueeze(1)
        seq, mask = f.sequence, f.mask if f.mask is not None else torch.ones(f.sequence.shape[:2], dtype=torch.bool, device=f.sequence.device)
        if seq.shape[1] > self.max_tokens:  # average-pool long sequences (e.g. 1500 Whisper frames) to a budget
            seq, mask = _pool_tokens(seq, mask, self.max_tokens)
        return seq, mask & f.present.unsqueeze(1)

    def forward(self, inputs: dict[str, ModalityFeatures]) -> torch.Tensor:
        _check_inputs(inputs, self.modalities)
        tokens, masks = [], []
        for i, m in enumerate(self.modalities):
            seq, mask = self._tokens(inputs[m])
            tokens.append(self.proj[m](seq) + self.modality_embed[i])
            masks.append(mask)
        batch = tokens[0].shape[0]
        x = torch.cat([self.cls.expand(batch, -1, -1), *tokens], dim=1)
        keep = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=x.device), *masks], dim=1)
        x = self.encoder(x, src_key_padding_mask=~keep)
        return self.classifier(self.norm(x[:, 0]))


def drop_modalities(inputs: dict[str, ModalityFeatures], p: float) -> dict[str, ModalityFeatures]:
    """Modality dropout (training): each present modality of each example is hidden with probability ``p``, never
    the last one an example has, so a head learns to use every modality instead of leaning on the easiest."""
    modalities = tuple(inputs)
    present = torch.stack([inputs[m].present for m in modalities], dim=1)  # (batch, M)
    keep = present & (torch.rand(present.shape, device=present.device) >= p)
    lost = present.any(1) & ~keep.any(1)
    if lost.any():  # every modality of an example dropped: give it back one of its own, drawn at random
        pick = torch.where(present[lost], torch.rand(present[lost].shape, device=present.device), -1.0).argmax(1)
        keep[lost.nonzero().squeeze(1), pick] = True
    out = {}
    for i, m in enumerate(modalities):
        f = inputs[m]
        k = keep[:, i]
        out[m] = ModalityFeatures(f.pooled * k.unsqueeze(-1).to(f.pooled.dtype), k, f.sequence,
                                  None if f.mask is None else f.mask & k.unsqueeze(-1))
    return out


def _pool_tokens(seq: torch.Tensor, mask: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average pooling of (batch, time, dim) down to ``budget`` time steps."""
    m = mask.to(seq.dtype).unsqueeze(1)  # (batch, 1, time)
    summed = nn.functional.adaptive_avg_pool1d((seq * m.transpose(1, 2)).transpose(1, 2), budget)
    weight = nn.functional.adaptive_avg_pool1d(m, budget)
    pooled = (summed / weight.clamp_min(1e-6)).transpose(1, 2)
    return pooled, weight.squeeze(1) > 0


class LateFusion(nn.Module):
    """Decision-level fusion: one linear head per modality; their log-probabilities are combined with learned
    weights (``combine="learned"``) or averaged (``"mean"``), over the modalities each example has."""

    def __init__(self, dims: dict[str, int], num_classes: int, combine: str = "learned", dropout: float = 0.1):
        super().__init__()
        if combine not in ("learned", "mean"):
            raise ValueError(f"fusion.combine: {combine!r} is not 'learned' or 'mean'")
        self.modalities = tuple(dims)
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Dropout(dropout), nn.Linear(d, num_classes)) for m, d in dims.items()})
        self.weights = nn.Parameter(torch.zeros(len(dims)), requires_grad=combine == "learned")

    def forward(self, inputs: dict[str, ModalityFeatures]) -> torch.Tensor:
        _check_inputs(inputs, self.modalities)
        present = torch.stack([inputs[m].present for m in self.modalities], dim=1)
        logp = torch.stack([self.heads[m](inputs[m].pooled).log_softmax(-1) for m in self.modalities], dim=1)  # (B, M, C)
        w = self.weights.expand_as(present).masked_fill(~present, float("-inf")).softmax(-1)
        w = torch.nan_to_num(w)
        return (w.unsqueeze(-1) * logp).sum(1)

    def modality_weights(self) -> dict[str, float]:
        return dict(zip(self.modalities, self.weights.softmax(-1).tolist()))


FUSIONS = {"early": EarlyFusion, "gated": GatedFusion, "cross_attention": CrossAttentionFusion, "late": LateFusion}


def build_fusion(kind: str, dims: dict[str, int], num_classes: int, **kwargs) -> nn.Module:
    """The fusion head named ``kind`` (early, gated, cross_attention, late) over modalities of ``dims``."""
    if kind not in FUSIONS:
        raise ValueError(f"fusion.kind: {kind!r} is not one of {', '.join(FUSIONS)}")
    return FUSIONS[kind](dims, num_classes, **kwargs)
