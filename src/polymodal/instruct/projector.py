"""Frozen encoder features -> soft tokens in the language model's embedding space, spliced in at placeholders.

LLaVA (Liu et al. 2023) maps each visual patch feature with a linear layer; LLaVA-1.5 with a two-layer MLP
(GELU). Here an attachment's sequence features (image cells, audio frames) are first average-pooled into
``soft_tokens`` contiguous groups, so an attachment costs a few tokens of context rather than dozens.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Maps features (..., in_dim) to (..., out_dim): ``linear`` or ``mlp`` (Linear, GELU, Linear)."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp"):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        else:
            raise ValueError(f"instruct.projector: {kind!r} is not linear or mlp")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def group_pool(sequence: torch.Tensor, mask: torch.Tensor | None, groups: int) -> torch.Tensor:
    """Average a sequence into ``groups`` contiguous groups of its valid positions.

    Args:
        sequence: (time, dim) features of one attachment.
        mask: (time,) bool, True at valid positions (None: all valid).

    Returns:
        (groups, dim). With fewer valid positions than groups, positions are repeated (nearest group).
    """
    valid = sequence if mask is None else sequence[mask]
    if valid.shape[0] == 0:
        return sequence.new_zeros(groups, sequence.shape[-1])
    n = valid.shape[0]
    bounds = torch.linspace(0, n, groups + 1)
    out = []
    for g in range(groups):
        a = int(bounds[g].floor())
        b = max(a + 1, int(bounds[g + 1].ceil()))
        out.append(valid[min(a, n - 1) : min(b, n)].mean(0))
    return torch.stack(out)


def splice(embeds: torch.Tensor, soft: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Write soft tokens into token embeddings at their slots.

    Args:
        embeds: (batch, seq, hidden) token embeddings.
        soft: (n_attachments, soft_tokens, hidden) projected features, one row per slot.
        rows: (n_attachments,) the batch row of each slot.
        starts: (n_attachments,) the first position of each slot in its row.

    Returns:
        (batch, seq, hidden): ``embeds`` with positions ``starts[i] .. starts[i] + soft_tokens - 1`` of row
        ``rows[i]`` replaced by ``soft[i]`` (out of place, so gradients reach the projector).

    Raises:
        ValueError: a slot runs past the end of its row, or the counts disagree.
    """
    if soft.shape[0] != rows.shape[0] or rows.shape != starts.shape:
        raise ValueError(f"splice: {soft.shape[0]} attachments' features for {rows.shape[0]} slots; every <image>/<audio> "
                         "placeholder needs exactly one attachment")
    if soft.shape[0] == 0:
        return embeds
    k = soft.shape[1]
    if int(starts.max()) + k > embeds.shape[1]:
        raise ValueError(f"splice: a slot at position {int(starts.max())} with {k} soft tokens runs past the sequence "
                         f"length {embeds.shape[1]}")
    positions = starts[:, None] + torch.arange(k, device=starts.device)[None, :]  # (n, k)
    out = embeds.clone()
    out[rows[:, None].expand_as(positions), positions] = soft.to(embeds.dtype)
    return out
