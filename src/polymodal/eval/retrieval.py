"""Cross-modal retrieval metrics: Recall@K in both directions and mean reciprocal rank, pair i matching pair i."""

from __future__ import annotations

import torch


def ranks(similarity: torch.Tensor) -> torch.Tensor:
    """(queries,) 0-based rank of each query's own item (column i for row i) among all columns, ties pessimistic."""
    own = similarity.diagonal().unsqueeze(1)
    return (similarity > own).sum(1) + (similarity == own).sum(1) - 1


def recall_at_k(similarity: torch.Tensor, k: int) -> float:
    """Share of queries (rows) whose own item (the diagonal) is among their k most similar columns."""
    return float((ranks(similarity) < k).float().mean())


def retrieval_metrics(a: torch.Tensor, b: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      names: tuple[str, str] = ("a", "b")) -> dict[str, float]:
    """Recall@K for a->b and b->a, their mean at each K, and MRR, from (n, dim) L2-normalised paired embeddings."""
    sim = a.float() @ b.float().t()
    out: dict[str, float] = {}
    for direction, s in ((f"{names[0]}_to_{names[1]}", sim), (f"{names[1]}_to_{names[0]}", sim.t())):
        r = ranks(s)
        for k in ks:
            out[f"{direction}_r@{k}"] = float((r < k).float().mean())
        out[f"{direction}_mrr"] = float((1.0 / (r + 1).float()).mean())
    for k in ks:
        out[f"mean_r@{k}"] = (out[f"{names[0]}_to_{names[1]}_r@{k}"] + out[f"{names[1]}_to_{names[0]}_r@{k}"]) / 2
    return out
