"""Tasks ``classify`` and ``align`` for the one training loop (``polymodal.train.task.Task``): a head over encoders,
on cached frozen features or encoders tuned live; a run trained on transcripts (``data.transcribe``) reads the
recognised speech of each row's audio as its text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import load_manifest, require_clean
from ..errors import ConfigError, PolymodalError
from ..models import encoder_modality
from ..train import checkpoint as ckpt
from ..train.config import CACHED_MODES, TrainConfig
from ..train.data import FeatureTable, Splits, make_splits
from ..tuning import freeze_norm_statistics
from ..tuning.contrastive import clip_loss
from .model import MultimodalClassifier, build_classifier
from .predict import Inputs, alignment_scores, predict_split, scores, to_device
from .results import write_results


def check_config_against_manifest(cfg: TrainConfig, columns: tuple[str, ...]) -> None:
    """Fail before any work when the config asks for something the manifest or this machine cannot give."""
    for modality, enc in cfg.model.encoders.items():
        try:
            found = encoder_modality(enc)
        except PolymodalError as e:
            raise ConfigError(f"model.encoders.{modality}: {e}") from e
        if found != modality:
            raise ConfigError(f"model.encoders.{modality}: {enc.model!r} encodes {found}, not {modality}")
    for modality in cfg.model.encoders:
        if modality not in columns:
            raise ConfigError(f"model.encoders.{modality}: the manifest {cfg.data.manifest} has no {modality!r} column "
                              f"(columns: {', '.join(columns)})")
    if "label" not in columns and cfg.task == "classify":
        raise ConfigError(f"data.manifest: {cfg.data.manifest} has no 'label' column to train on")


def set_encoders_trainable(model: MultimodalClassifier, mode: str, trainable: bool, locked: tuple[str, ...] = ()) -> None:
    if mode != "full":
        return
    for m, enc in model.encoders.items():
        enc.requires_grad_(trainable and m not in locked)


def _complete_pairs(manifest, modalities: tuple[str, ...]):
    keep = [e for e in manifest.examples if all(e.get(m) not in (None, "") for m in modalities)]
    if len(keep) < len(manifest.examples):
        print(f"align: {len(manifest.examples) - len(keep)} rows lack {' or '.join(modalities)} and are left out")
    return dataclasses.replace(manifest, examples=keep)


class HeadTask:
    """Tasks ``classify`` and ``align``: a head over encoders, on cached frozen features or encoders tuned live."""

    higher_is_better = True

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        self.cfg = cfg
        manifest = load_manifest(cfg.data.manifest)
        if cfg.data.transcribe:  # recognised speech as the text modality (the voice-assistant case)
            from ..speech.derive import transcribe_manifest

            manifest = transcribe_manifest(require_clean(manifest, skip_bad=cfg.data.skip_bad, limits=cfg.data.limits(), progress=progress),
                                           cfg.data.transcribe, progress)
        check_config_against_manifest(cfg, manifest.columns)
        manifest = require_clean(manifest, skip_bad=cfg.data.skip_bad, limits=cfg.data.limits(), progress=progress)
        self.align = cfg.task == "align"
        if self.align:  # a pair needs both sides: rows lacking one modality cannot teach the alignment
            manifest = _complete_pairs(manifest, tuple(cfg.model.encoders))
        splits = make_splits(manifest, cfg.data, labelled=not self.align)
        sequence = cfg.model.fusion.kind == "cross_attention" and not self.align
        probe = cfg.tuning.mode in CACHED_MODES
        if cfg.tuning.mode == "zeroshot":  # nothing is trained: every row with a label is evaluated
            splits = Splits([], [], splits.train + splits.val + splits.test if not splits.test else splits.test, splits.labels)

        def inputs(examples: list) -> Inputs:
            table = FeatureTable(examples, cfg.model.encoders, sequence, progress=progress) if probe and examples else None
            targets = torch.zeros(len(examples), dtype=torch.long) if self.align else splits.targets(examples)
            return Inputs(examples, targets, table)

        self.splits = splits
        self.train_in, self.val_in, self.test_in = inputs(splits.train), inputs(splits.val), inputs(splits.test)
        dims = self.train_in.table.dims() if probe and self.train_in.table else None
        self.model, _ = build_classifier(cfg, len(splits.labels), dims, labels=splits.labels)
        self.n_train = len(splits.train)
        self.metric = "mean_r@1" if self.align else cfg.optim.metric
        self.locked = cfg.model.align.locked if self.align else ()
        self.ddp_find_unused = bool(self.model.encoders)  # a batch lacking a modality leaves its encoder unused
        self.trains = cfg.tuning.mode != "zeroshot"  # zero-shot: keep the prompt weights and score the test split
        self.log_fields = ("loss", "mean_r@1") if self.align else ("loss", "accuracy", "macro_f1")
        self.summary = cfg.tuning.mode
        self.class_weight = None
        if cfg.optim.class_weighting and not self.align and self.n_train:
            counts = torch.bincount(self.train_in.targets, minlength=len(splits.labels)).float()
            self.class_weight = counts.sum() / (len(splits.labels) * counts.clamp_min(1))

    def param_groups(self) -> list[dict]:
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        enc = [p for p in self.model.encoders.parameters() if p.requires_grad]
        return [{"params": head, "lr": self.cfg.optim.lr}] + ([{"params": enc, "lr": self.cfg.encoder_lr()}] if enc else [])

    def on_epoch_start(self, epoch: int) -> None:
        t = self.cfg.tuning
        set_encoders_trainable(self.model, t.mode, epoch >= t.unfreeze_after_epochs, self.locked)
        if t.mode == "lora" or epoch < t.unfreeze_after_epochs:
            freeze_norm_statistics(self.model.encoders)  # frozen weights keep their BatchNorm statistics too
        for m in self.locked:
            freeze_norm_statistics(self.model.encoders[m])

    def loss(self, forward: nn.Module, idx: torch.Tensor, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
        out = forward(to_device(self.train_in.batch(idx, self.model, train=True, rng=rng), device))
        if self.align:
            return clip_loss(*out)
        weight = None if self.class_weight is None else self.class_weight.to(device)
        loss = nn.functional.cross_entropy(out.float(), self.train_in.targets[idx].to(device), weight=weight)
        aux = getattr(self.model.head, "aux_loss", None)  # the gated head's gate_balance term of this batch
        return loss if aux is None else loss + aux

    def validate(self, device: torch.device) -> dict[str, float]:
        inputs = self.val_in if self.val_in.examples else self.train_in
        if self.align:
            return alignment_scores(self.model, inputs, self.cfg.optim.batch_size, device, self.cfg)
        probs = predict_split(self.model, inputs, self.cfg.optim.batch_size, device, self.cfg)
        val = scores(inputs.targets, probs)
        val["loss"] = float(nn.functional.nll_loss(probs.clamp_min(1e-12).log(), inputs.targets))
        return val

    def weights(self) -> dict[str, torch.Tensor]:
        return ckpt.weights_to_save(self.model, self.cfg.tuning.mode)

    def load_weights(self, path: Path) -> None:
        ckpt.load_weights(self.model, path)

    def start(self, run_dir: Path) -> None:
        ckpt.write_json(run_dir / "labels.json", self.splits.labels)

    def finish(self, run_dir: Path, device: torch.device, seconds: float) -> None:
        write_results(run_dir, self.cfg, self.model, self.splits, self.test_in, device, seconds)


def build(cfg: TrainConfig, *, progress: bool = True) -> HeadTask:
    return HeadTask(cfg, progress=progress)
