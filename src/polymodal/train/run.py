"""A finished run, loaded back from its folder: the config rebuilds the model, the weights fill it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.manifest import Example
from ..errors import PolymodalError
from . import checkpoint as ckpt
from .config import TrainConfig, load_config
from .data import batch_order, raw_batch
from .loop import build_classifier
from .model import MultimodalClassifier


@dataclass
class Run:
    path: Path
    config: TrainConfig
    labels: list[str]
    model: MultimodalClassifier  # with live encoders, in eval mode

    @torch.no_grad()
    def predict(self, examples: list[Example], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (n, classes) for examples holding any subset of the run's modalities."""
        self.model.eval()
        out = []
        rng = np.random.default_rng(0)
        for idx in batch_order(len(examples), batch_size, 0, 0, shuffle=False):
            batch = raw_batch([examples[i] for i in idx.tolist()], dict(self.model.encoders), train=False, rng=rng)
            out.append(self.model(batch).float().softmax(-1))
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))


def load_run(path: str | Path) -> Run:
    """Load a run folder written by ``train``.

    Raises:
        PolymodalError: the folder is not a finished run.
    """
    path = Path(path)
    for name in ("config.yaml", "labels.json", ckpt.WEIGHTS):
        if not (path / name).exists():
            raise PolymodalError(f"{path}: not a finished run (no {name}); train it with `polymodal train CONFIG`")
    cfg = load_config(path / "config.yaml")
    labels = json.loads((path / "labels.json").read_text())
    model, _ = build_classifier(cfg, len(labels), live_encoders=True)
    ckpt.load_weights(model, path / ckpt.WEIGHTS)
    return Run(path, cfg, labels, model.eval())
