"""What the one training loop needs from a kind of training.

``classify`` and ``align`` (heads over encoders), ``asr`` (Whisper, speech -> text) and ``instruct`` (a causal
language model that follows instructions) differ in their model, batches, loss and metric, and in nothing else:
the optimiser, schedule, gradient accumulation and clipping, mixed precision, checkpoints and exact resume, logs,
validation, keeping the best weights, early stopping and DDP are the loop's (``loop.run_loop``), written once.

A task module exposes ``build(cfg, *, progress) -> Task``; the loop is handed that builder by the layer that
composes the tasks (``polymodal.tasks``), so it names none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

class Task(Protocol):
    model: nn.Module  # what the optimiser trains; the loop moves it to the device and wraps it in DDP
    metric: str  # validation metric that picks the best weights, e.g. "accuracy", "wer", "exact_match"
    higher_is_better: bool
    n_train: int  # training examples; the loop draws seeded index batches from range(n_train)
    trains: bool  # False: nothing to optimise (zero-shot); the loop saves weights() and calls finish() at once
    log_fields: tuple[str, ...]  # validation scores (keys of validate()) that log.csv records as val_<name>
    ddp_find_unused: bool  # DDP: some parameters may get no gradient in a step (e.g. a modality absent from a batch)
    summary: str  # how the console names the run's kind of training, e.g. "lora", "asr (full)"

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups, each with its own "lr" (e.g. head at optim.lr, encoders at optim.encoder_lr)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called after ``model.train()`` at each epoch: unfreeze on schedule, keep frozen norm statistics."""

    def loss(self, forward: nn.Module, idx: torch.Tensor, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
        """Mean loss of training examples ``idx`` (a 1-D index tensor); call ``forward`` (the model or its DDP wrapper) for the pass;
        ``rng`` is seeded by (seed, epoch, step, micro-batch, rank) so augmentation repeats exactly on resume;
        the loop calls it under autocast and does the backward pass."""

    def validate(self, device: torch.device) -> dict[str, float]:
        """Scores on the validation split (the training split if there is none); holds ``metric``."""

    def weights(self) -> dict[str, torch.Tensor]:
        """What the run keeps, in model.safetensors and the checkpoint (e.g. only adapters for LoRA)."""

    def load_weights(self, path: Path) -> None:
        """Load weights saved by ``weights()`` into ``model``."""

    def start(self, run_dir: Path) -> None:
        """Write the run folder's own files besides config.yaml (labels.json, ...); called for a new run only."""

    def finish(self, run_dir: Path, device: torch.device, seconds: float) -> None:
        """With the best weights loaded: score the test split, write metrics.json (and predictions)."""
