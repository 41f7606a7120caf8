"""Contrastive alignment of two modalities into one embedding space (CLIP; LiT when one tower is locked).

CLIP (Radford et al. 2021) trains two towers so that matching pairs have the highest cosine similarity in a
batch: the symmetric InfoNCE loss over the (batch, batch) similarity matrix, with a learned temperature. LiT (Zhai
et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") keeps a pretrained image tower locked and
tunes only the text side; here any tower can be locked, and the projection heads always train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned scale at 100 to keep training stable


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the a->b and b->a cross-entropies, pair i matching pair i.

    Args:
        a, b: (batch, dim) L2-normalised embeddings of the two modalities, row i of each a pair.
        logit_scale: the inverse temperature (not its log).
    """
    logits = logit_scale * a @ b.t()
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _projection(in_dim: int, dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, dim, bias=False)  # CLIP's projections have no bias
    return nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))


class ContrastiveHead(nn.Module):
    """Projects two modalities' pooled features into one space: forward -> (emb_a, emb_b, logit_scale).

    Args:
        dims: feature size per modality; exactly two, in a fixed order (the pair's order in metrics).
        dim: joint embedding size.
        projection: linear (as CLIP) | mlp (two layers).
        init_temperature: CLIP's initial 0.07, learned as log(1 / temperature).
    """

    def __init__(self, dims: dict[str, int], dim: int = 256, projection: str = "linear", init_temperature: float = 0.07):
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"contrastive alignment needs exactly two modalities, got {list(dims)}")
        self.modalities = tuple(dims)
        self.proj = nn.ModuleDict({m: _projection(d, dim, projection) for m, d in dims.items()})
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def embed(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, dim) L2-normalised joint-space embeddings of one modality's pooled features."""
        return F.normalize(self.proj[modality](pooled.float()), dim=-1)

    def forward(self, features: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = (self.embed(m, features[m].pooled) for m in self.modalities)
        return a, b, self.logit_scale()
