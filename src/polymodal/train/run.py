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
        """Class probabilities (n, classes) for examples holding any subset of the run's modalities (a run
        trained on transcripts, ``data.transcribe``, transcribes the examples' audio into their text first)."""
        if self.config.data.transcribe:
            from ..speech.derive import transcribe_examples

            examples = transcribe_examples(examples, self.config.data.transcribe, progress=False)
        self.model.eval()
        out = []
        rng = np.random.default_rng(0)
        for idx in batch_order(len(examples), batch_size, 0, 0, shuffle=False):
            batch = raw_batch([examples[i] for i in idx.tolist()], dict(self.model.encoders), train=False, rng=rng)
            out.append(self.model(batch).float().softmax(-1))
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))


    @torch.no_grad()
    def embed(self, examples: list[Example], batch_size: int = 32) -> dict[str, torch.Tensor]:
        """An ``align`` run's joint-space embeddings: modality -> (n, dim), L2-normalised, for the examples that
        have that modality (in order)."""
        if not hasattr(self.model.head, "embed"):
            raise PolymodalError(f"{self.path}: not an align run; embeddings come from runs with task: align")
        self.model.eval()
        out: dict[str, list[torch.Tensor]] = {m: [] for m in self.model.encoders}
        rng = np.random.default_rng(0)
        for idx in batch_order(len(examples), batch_size, 0, 0, shuffle=False):
            batch = raw_batch([examples[i] for i in idx.tolist()], dict(self.model.encoders), train=False, rng=rng)
            for m, f in self.model.encode(batch).items():
                out[m].append(self.model.head.embed(m, f.pooled[f.present]))
        return {m: torch.cat(v) if v else torch.zeros(0) for m, v in out.items()}


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
    try:
        labels = json.loads((path / "labels.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PolymodalError(f"{path / 'labels.json'}: not valid JSON ({e}); train the run again") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PolymodalError(f"{path / 'labels.json'}: expected a JSON list of label names; train the run again")
    model, _ = build_classifier(cfg, len(labels), live_encoders=True, labels=labels)
    if cfg.compression is not None:  # written by `polymodal compress`: INT8 layers and/or merged LoRA
        from ._compressed import load_compressed

        load_compressed(model, cfg, path / ckpt.WEIGHTS)
    else:
        ckpt.load_weights(model, path / ckpt.WEIGHTS)
    return Run(path, cfg, labels, model.eval())
