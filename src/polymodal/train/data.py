"""Splits, label maps and batches for training: cached frozen features, or raw inputs prepared per step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.manifest import SPLIT_NAMES, Example, Manifest
from ..errors import ConfigError, ManifestError
from ..features import encode, load_input
from ..fusion import ModalityFeatures
from ..models import Encoder, EncoderConfig
from .config import DataConfig


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    labels: list[str]  # class index -> label, from the training split

    def targets(self, examples: list[Example]) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([index[e.label] for e in examples])


def make_splits(manifest: Manifest, cfg: DataConfig, labelled: bool = True) -> Splits:
    """Use the manifest's ``split`` column where it has one; make stratified seeded splits where it does not.

    Args:
        labelled: the rows must have labels (classification); without, splits are random and ``labels`` is empty.
    """
    if labelled and "label" not in manifest.columns:
        raise ConfigError(f"data.manifest: {manifest.path} has no 'label' column to train on")
    examples = manifest.examples
    if "split" in manifest.columns:
        named = {name: [e for e in examples if SPLIT_NAMES.get(e.split or "") == name] for name in ("train", "val", "test")}
        train, val, test = named["train"], named["val"], named["test"]
        unknown = sorted({str(e.split or "") for e in examples if e.split not in SPLIT_NAMES})
        if unknown:
            raise ManifestError(f"{manifest.path}: split values {unknown} are not train, val or test; "
                                f"`polymodal data check {manifest.path}` names each row")
    else:
        y = [e.label for e in examples] if labelled else None
        train, test = _split(examples, cfg.test_fraction, y, cfg.seed, manifest.path, "data.test_fraction") \
            if cfg.test_fraction > 0 else (list(examples), [])
        val = []
    if not train:
        raise ManifestError(f"{manifest.path}: no rows in the train split")
    if not val and cfg.val_fraction > 0:
        y = [e.label for e in train] if labelled else None
        train, val = _split(train, cfg.val_fraction, y, cfg.seed, manifest.path, "data.val_fraction")
    if not labelled:
        return Splits(list(train), list(val), list(test), [])
    labels = sorted({e.label for e in train}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return Splits(list(train), list(val), list(test), labels)


def _split(rows: list[Example], fraction: float, labels: list[str] | None, seed: int, path, field: str):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(rows, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as e:  # too few rows (per class) for a stratified share
        raise ManifestError(f"{path}: cannot split {len(rows)} rows by {field}={fraction} with every class on both sides "
                            f"({e}); add rows, give a 'split' column (train/val/test), or change {field}") from e


def batch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Index batches for one epoch: a permutation fixed by (seed, epoch), so a resumed run sees the same order.

    Under DDP each rank takes every ``world``-th example of the same permutation (padded by wrapping so all
    ranks run the same number of steps).
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    if world > 1:
        per_rank = -(-n // world)
        order = torch.cat([order, order[: per_rank * world - n]])[rank::world]
    return list(order.split(batch_size))


class FeatureTable:
    """Frozen features of every example of a split, per modality, read from the feature cache."""

    def __init__(self, examples: list[Example], encoders: dict[str, EncoderConfig], sequence: bool, progress: bool = True):
        self.features = {m: encode(cfg, examples, m, sequence=sequence, progress=progress) for m, cfg in encoders.items()}

    def dims(self) -> dict[str, int]:
        """Per-modality feature size the head sees: sequence width when sequences are used, else pooled."""
        return {m: (f.sequence if f.sequence is not None else f.pooled).shape[-1] for m, f in self.features.items()}

    def batch(self, idx: torch.Tensor) -> dict[str, ModalityFeatures]:
        out = {}
        for m, f in self.features.items():
            out[m] = ModalityFeatures(
                pooled=f.pooled[idx], present=f.present[idx],
                sequence=None if f.sequence is None else f.sequence[idx],
                mask=None if f.mask is None else f.mask[idx],
            )
        return out


@dataclass
class RawBatch:
    """Prepared encoder inputs per modality, for the examples of a batch that have that modality."""

    inputs: dict[str, dict[str, torch.Tensor]]  # modality -> encoder.prepare(...) output for present examples
    present: dict[str, torch.Tensor]  # modality -> (batch,) bool
    size: int


def raw_batch(examples: list[Example], encoders: dict[str, Encoder], train: bool, rng: np.random.Generator) -> RawBatch:
    """Decode and prepare a batch for encoders that run every step (full fine-tuning, LoRA)."""
    inputs, present = {}, {}
    for m, enc in encoders.items():
        mask = torch.tensor([e.get(m) is not None and (m != "text" or e.text != "") for e in examples])
        present[m] = mask
        items = [load_input(m, e, getattr(enc, "sample_rate", None)) for e, p in zip(examples, mask) if p]
        inputs[m] = enc.prepare(items, train=train, rng=rng) if items else {}
    return RawBatch(inputs, present, len(examples))
