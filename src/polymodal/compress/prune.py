"""Magnitude pruning (``torch.nn.utils.prune``), made permanent: the smallest weights become zeros in place.

Each Linear and convolution weight the run owns loses the ``amount`` share of its entries with the smallest
absolute value (L1 unstructured, per layer rather than global, so that no small layer such as the classifier is
wiped out by a large encoder's scale). ``prune.remove`` then folds the mask into the weight: no ``weight_orig``
or ``weight_mask`` is left, and the run saves and loads as a plain dense model.

On CPU this brings no speed: PyTorch's dense kernels multiply the zeros like any other number, and a dense
safetensors file stores them too. It is a step towards sparse kernels or structured pruning, not a speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from ..classify._compressed import owned_modules

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class PruneResult:
    layers: int  # weight tensors pruned
    weights: int  # entries in them
    zeros: int  # entries that are zero after pruning

    @property
    def zero_fraction(self) -> float:
        return self.zeros / max(1, self.weights)


def prunable_weights(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The weights ``prune_magnitude`` prunes, by full parameter name."""
    out = {}
    for prefix, part in owned_modules(model, mode).items():
        for name, m in part.named_modules():
            if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor):
                out[f"{prefix}.{name}.weight" if name else f"{prefix}.weight"] = m.weight
    return out


def prune_magnitude(model: nn.Module, mode: str, amount: float) -> PruneResult:
    """Zero the ``amount`` share (0 < amount < 1) of smallest-magnitude entries of every Linear/conv weight of
    the parts of ``model`` a run of tuning ``mode`` owns, in place and permanently. A LoRA model must be merged
    first (``polymodal.tuning.merge_lora``)."""
    if not 0 < amount < 1:
        raise ValueError(f"prune amount must be in (0, 1), got {amount}")
    for part in owned_modules(model, mode).values():
        for m in part.modules():
            if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor):
                prune.l1_unstructured(m, "weight", amount=amount)
                prune.remove(m, "weight")
    weights = prunable_weights(model, mode)
    return PruneResult(layers=len(weights), weights=sum(w.numel() for w in weights.values()),
                       zeros=sum(int((w == 0).sum()) for w in weights.values()))
