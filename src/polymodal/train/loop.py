"""The one training loop: every task, fusion head and tuning mode goes through ``train``; read it top to bottom.

``run_loop`` is the part every task (``task.py``) shares; ``HeadTask`` is classification and alignment.

AdamW with linear warm-up then cosine decay, gradient accumulation and clipping, mixed precision on CUDA,
class weighting, early stopping on a validation metric, atomic checkpoints with exact resume (weights, optimiser,
scheduler, RNG and the position in a seeded data order), CSV and TensorBoard logs, and DistributedDataParallel
under ``torchrun`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import io
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._paths import atomic_write_text
from ..data import load_manifest, require_clean
from ..errors import ConfigError, PolymodalError
from ..fusion import build_fusion
from ..models import build_encoder, encoder_modality
from ..eval.retrieval import retrieval_metrics
from ..tuning import apply_lora, freeze_norm_statistics
from ..tuning.contrastive import ContrastiveHead, clip_loss
from . import checkpoint as ckpt
from .config import PROMPT_MODES, TrainConfig, save_config
from .data import FeatureTable, Splits, batch_order, make_splits, raw_batch
from .model import MultimodalClassifier
from .prompt_head import build_prompt_head
from .task import TASK_BUILDERS, Task

CACHED_MODES = ("linear_probe", *PROMPT_MODES)  # frozen encoders: features are encoded once into the cache

log = logging.getLogger(__name__)
LOG_FIELDS = ("epoch", "step", "train_loss", "lr", "val_loss", "val_accuracy", "val_macro_f1", "val_mean_r@1", "val_wer",
              "val_cer", "val_exact_match", "seconds")


class NonFiniteLossError(PolymodalError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Inputs:
    """How batches are made for a split: from cached features (linear probe) or raw inputs (full, LoRA)."""

    examples: list
    targets: torch.Tensor
    table: FeatureTable | None

    def batch(self, idx: torch.Tensor, model: MultimodalClassifier, train: bool, rng: np.random.Generator):
        if self.table is not None:
            return self.table.batch(idx)
        return raw_batch([self.examples[i] for i in idx.tolist()], dict(model.encoders), train, rng)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _device(cfg: TrainConfig, rank: int) -> torch.device:
    want = cfg.optim.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def _autocast(cfg: TrainConfig, device: torch.device):
    amp = cfg.optim.amp
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


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


def build_classifier(cfg: TrainConfig, num_classes: int, dims: dict[str, int] | None = None,
                     live_encoders: bool | None = None, labels: list[str] | None = None) -> tuple[MultimodalClassifier, dict[str, int]]:
    """The model of a run, rebuilt from its config alone.

    Args:
        dims: feature sizes per modality, for a linear probe trained on cached features (no live encoders).
        live_encoders: attach the encoders (default: unless the mode uses cached features: linear_probe, zeroshot,
            coop). Prediction on new inputs attaches them to those too, frozen.
        labels: the class labels, in order (the prompt modes name the classes in their prompts).

    Returns:
        the classifier and its count of parameters: trainable, total.
    """
    mode = cfg.tuning.mode
    sequence = cfg.model.fusion.kind == "cross_attention" and cfg.task == "classify"
    encoders = None
    cached = mode in CACHED_MODES
    if live_encoders if live_encoders is not None else not cached:
        encoders = {m: build_encoder(e) for m, e in cfg.model.encoders.items()}
        dims = {m: (enc.seq_dim if sequence else enc.dim) for m, enc in encoders.items()}
        if cached:
            for enc in encoders.values():
                enc.requires_grad_(False)
    if cfg.task == "align":
        return _build_aligner(cfg, encoders, dims)
    if mode in PROMPT_MODES:
        if labels is None or len(labels) != num_classes:
            raise ValueError("build_classifier: the prompt modes need the class labels")
        model = MultimodalClassifier(build_prompt_head(cfg, labels), encoders)
        return model, _counts(model)
    if dims is None:
        raise ValueError("build_classifier: a linear probe without live encoders needs the feature sizes (dims)")
    f = cfg.model.fusion
    extra = {"layers": f.layers, "heads": f.heads} if f.kind == "cross_attention" else {}
    if f.kind == "late":
        head = build_fusion("late", dims, num_classes, combine=f.combine, dropout=f.dropout)
    elif f.kind == "cross_attention":
        head = build_fusion(f.kind, dims, num_classes, d_model=f.hidden, dropout=f.dropout, **extra)
    else:
        head = build_fusion(f.kind, dims, num_classes, hidden=f.hidden, dropout=f.dropout)
    model = MultimodalClassifier(head, encoders, sequence=sequence)
    if mode == "lora":
        for enc in model.encoders.values():
            t = cfg.tuning
            apply_lora(enc, r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout, targets=t.lora_targets)
    return model, _counts(model)


def _build_aligner(cfg: TrainConfig, encoders: dict | None, dims: dict[str, int] | None):
    a = cfg.model.align
    if dims is None:
        raise ValueError("build_classifier: an aligner on cached features needs their sizes (dims)")
    head = ContrastiveHead({m: dims[m] for m in cfg.model.encoders}, dim=a.dim, projection=a.projection,
                           init_temperature=a.init_temperature)
    model = MultimodalClassifier(head, encoders)
    t = cfg.tuning
    for m, enc in model.encoders.items():
        if m in a.locked or t.mode == "linear_probe":
            enc.requires_grad_(False)
        elif t.mode == "lora":
            apply_lora(enc, r=t.lora_r, alpha=t.lora_alpha, dropout=t.lora_dropout, targets=t.lora_targets)
    return model, _counts(model)


def _counts(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _set_encoders_trainable(model: MultimodalClassifier, mode: str, trainable: bool, locked: tuple[str, ...] = ()) -> None:
    if mode != "full":
        return
    for m, enc in model.encoders.items():
        enc.requires_grad_(trainable and m not in locked)


@torch.no_grad()
def predict_split(model: MultimodalClassifier, inputs: Inputs, batch_size: int, device: torch.device,
                  cfg: TrainConfig, drop: str | None = None, gates: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Class probabilities (n, classes) for a split, optionally with one modality dropped (its presence False).

    Args:
        gates: if given, receives the gated head's per-example modality weights of every batch.
    """
    model.eval()
    probs = []
    rng = np.random.default_rng(0)
    for idx in batch_order(len(inputs.examples), batch_size, 0, 0, shuffle=False):
        batch = inputs.batch(idx, model, train=False, rng=rng)
        batch = _drop_modality(batch, drop)
        with _autocast(cfg, device):
            logits = model(_to(batch, device))
        probs.append(logits.float().softmax(-1).cpu())
        if gates is not None and getattr(model.head, "last_gates", None) is not None:
            gates.append(model.head.last_gates.cpu())
    return torch.cat(probs) if probs else torch.zeros(0)


@torch.no_grad()
def embed_split(model: MultimodalClassifier, inputs: Inputs, batch_size: int, device: torch.device,
                cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-space embeddings (n, dim) of both modalities of a split, by an alignment model."""
    model.eval()
    a, b = [], []
    rng = np.random.default_rng(0)
    for idx in batch_order(len(inputs.examples), batch_size, 0, 0, shuffle=False):
        with _autocast(cfg, device):
            ea, eb, _ = model(_to(inputs.batch(idx, model, train=False, rng=rng), device))
        a.append(ea.float().cpu())
        b.append(eb.float().cpu())
    return torch.cat(a), torch.cat(b)


def alignment_scores(model: MultimodalClassifier, inputs: Inputs, batch_size: int, device: torch.device,
                     cfg: TrainConfig) -> dict[str, float]:
    """Recall@1/5/10 both ways, MRR, and the contrastive loss over the whole split (every other pair a negative)."""
    a, b = embed_split(model, inputs, batch_size, device, cfg)
    out = retrieval_metrics(a, b, names=tuple(cfg.model.encoders))
    out["loss"] = float(clip_loss(a, b, float(model.head.logit_scale().detach())))
    return out


def _start_run_folder(run_dir: Path, cfg: TrainConfig, task: Task) -> None:
    """What every new run folder holds first: the config that rebuilds its model, and the task's own files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(_portable(cfg), run_dir / "config.yaml")
    task.start(run_dir)


def _portable(cfg: TrainConfig) -> TrainConfig:
    """The config as a run saves it: a relative manifest path was relative to the working directory (or the
    original config's folder), which ``load_config`` of ``RUN/config.yaml`` would take as relative to RUN."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=str(Path(cfg.data.manifest).resolve())))


def _complete_pairs(manifest, modalities: tuple[str, ...]):
    keep = [e for e in manifest.examples if all(e.get(m) not in (None, "") for m in modalities)]
    if len(keep) < len(manifest.examples):
        print(f"align: {len(manifest.examples) - len(keep)} rows lack {' or '.join(modalities)} and are left out")
    return dataclasses.replace(manifest, examples=keep)


def _drop_modality(batch, drop: str | None):
    if drop is None:
        return batch
    if isinstance(batch, dict):
        f = batch[drop]
        batch = dict(batch)
        batch[drop] = type(f)(pooled=torch.zeros_like(f.pooled), present=torch.zeros_like(f.present),
                              sequence=f.sequence, mask=None if f.mask is None else torch.zeros_like(f.mask))
        return batch
    batch.present = {**batch.present, drop: torch.zeros_like(batch.present[drop])}
    batch.inputs = {**batch.inputs, drop: {}}
    return batch


def _to(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, dict):
        return {m: type(f)(**{k: (None if v is None else v.to(device)) for k, v in vars(f).items()}) for m, f in batch.items()}
    return batch


def scores(targets: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = probs.argmax(-1).numpy()
    y = targets.numpy()
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0))}


class HeadTask:
    """Tasks ``classify`` and ``align``: a head over encoders, on cached frozen features or encoders tuned live."""

    higher_is_better = True

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        self.cfg = cfg
        manifest = load_manifest(cfg.data.manifest)
        if cfg.data.transcribe:  # recognised speech as the text modality (the voice-assistant case)
            from ..speech.derive import transcribe_manifest

            manifest = transcribe_manifest(require_clean(manifest, skip_bad=cfg.data.skip_bad, progress=progress),
                                           cfg.data.transcribe, progress)
        check_config_against_manifest(cfg, manifest.columns)
        manifest = require_clean(manifest, skip_bad=cfg.data.skip_bad, progress=progress)
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
        self.class_weight = None
        if cfg.optim.class_weighting and not self.align and self.n_train:
            counts = torch.bincount(self.train_in.targets, minlength=len(splits.labels)).float()
            self.class_weight = counts.sum() / (len(splits.labels) * counts.clamp_min(1))

    def param_groups(self) -> list[dict]:
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        enc = [p for p in self.model.encoders.parameters() if p.requires_grad]
        return [{"params": head, "lr": self.cfg.optim.lr}] + ([{"params": enc, "lr": self.cfg.optim.encoder_lr}] if enc else [])

    def on_epoch_start(self, epoch: int) -> None:
        t = self.cfg.tuning
        _set_encoders_trainable(self.model, t.mode, epoch >= t.unfreeze_after_epochs, self.locked)
        if t.mode == "lora" or epoch < t.unfreeze_after_epochs:
            freeze_norm_statistics(self.model.encoders)  # frozen weights keep their BatchNorm statistics too
        for m in self.locked:
            freeze_norm_statistics(self.model.encoders[m])

    def loss(self, forward: nn.Module, idx: torch.Tensor, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
        out = forward(_to(self.train_in.batch(idx, self.model, train=True, rng=rng), device))
        if self.align:
            return clip_loss(*out)
        weight = None if self.class_weight is None else self.class_weight.to(device)
        return nn.functional.cross_entropy(out.float(), self.train_in.targets[idx].to(device), weight=weight)

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
        _finish(run_dir, self.cfg, self.model, self.splits, self.test_in, device, _counts(self.model), seconds)


def build_task(cfg: TrainConfig, *, progress: bool = True) -> Task:
    """The task a config describes; tasks outside train/ are imported only when asked for."""
    if cfg.task in TASK_BUILDERS:
        module, _, function = TASK_BUILDERS[cfg.task].partition(":")
        return getattr(importlib.import_module(module), function)(cfg, progress=progress)
    return HeadTask(cfg, progress=progress)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train a run described by ``cfg``; returns the run folder.

    Args:
        resume: continue from ``out_dir/checkpoint`` exactly where it stopped.
        on_step: called after every optimiser step with (global step, loss); may raise to stop the run.
    """
    rank, world = _distributed()
    device = _device(cfg, rank)
    main_process = rank == 0
    run_dir = Path(cfg.out_dir)
    if run_dir.exists() and (run_dir / ckpt.CHECKPOINT_DIR).exists() and not resume:
        raise PolymodalError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another out_dir")
    torch.manual_seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed)

    task = build_task(cfg, progress=progress and main_process)
    task.model.to(device)
    counts = _counts(task.model)
    if main_process:
        log.info("parameters: %s trainable of %s", f"{counts['trainable']:,}", f"{counts['total']:,}")
        what = {"asr": f"asr ({cfg.tuning.mode})", "instruct": f"instruct ({cfg.instruct.stage})"}.get(cfg.task, cfg.tuning.mode)
        print(f"{what}: {counts['trainable']:,} trainable parameters of {counts['total']:,} "
              f"({100 * counts['trainable'] / max(1, counts['total']):.2f} %)")
    if cfg.tuning.mode == "zeroshot":  # nothing to train: keep the (prompt) weights and score the test split
        if main_process:
            _start_run_folder(run_dir, cfg, task)
            ckpt.save_weights(run_dir / ckpt.WEIGHTS, task.weights())
            task.finish(run_dir, device, 0.0)
        return run_dir
    return run_loop(cfg, task, device, rank=rank, world=world, resume=resume, progress=progress, on_step=on_step)


def run_loop(cfg: TrainConfig, task: Task, device: torch.device, *, rank: int = 0, world: int = 1,
             resume: bool = False, progress: bool = True, on_step: Callable[[int, float], None] | None = None) -> Path:
    """Optimise ``task.model``: the part every task shares. Returns the run folder."""
    main_process = rank == 0
    run_dir = Path(cfg.out_dir)
    model = task.model
    groups = task.param_groups()
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(len(batch_order(task.n_train, cfg.optim.batch_size, 0, 0, False, rank, world)) / cfg.optim.grad_accum)
    total_steps = steps_per_epoch * cfg.optim.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, int(cfg.optim.warmup_ratio * total_steps)))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.optim.amp == "fp16" and device.type == "cuda")
    sign = 1.0 if task.higher_is_better else -1.0  # the best checkpoint maximises sign * metric

    # --- resume ----------------------------------------------------------------------------------------------------
    position = {"epoch": 0, "batch": 0, "global_step": 0, "best": None, "bad_epochs": 0}
    if resume:
        found = ckpt.load_checkpoint(run_dir, task.load_weights, optimizer, scheduler)
        if found is None:
            raise PolymodalError(f"{run_dir}: no checkpoint to resume from; start the run without --resume")
        position = found
        _truncate_log(run_dir / "log.csv", position["global_step"])
        print(f"resuming {run_dir} at epoch {position['epoch'] + 1}, step {position['global_step']}")
    elif main_process:
        _start_run_folder(run_dir, cfg, task)
        (run_dir / "log.csv").unlink(missing_ok=True)  # left by a run that died before its first checkpoint
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=getattr(task, "ddp_find_unused", False)) \
        if world > 1 else model
    writer = _tensorboard(run_dir) if main_process else None

    # --- the loop ----------------------------------------------------------------------------------------------------
    global_step = position["global_step"]
    start = time.perf_counter()
    for epoch in range(position["epoch"], cfg.optim.epochs):
        batches = batch_order(task.n_train, cfg.optim.batch_size, cfg.optim.seed, epoch, True, rank, world)
        steps = [batches[i : i + cfg.optim.grad_accum] for i in range(0, len(batches), cfg.optim.grad_accum)]
        first = position["batch"] if epoch == position["epoch"] else 0
        bar = tqdm(total=len(steps), initial=first, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="step",
                   disable=not (progress and main_process), leave=False)
        model.train()
        task.on_epoch_start(epoch)
        for step_in_epoch in range(first, len(steps)):
            optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for micro, idx in enumerate(steps[step_in_epoch]):
                rng = np.random.default_rng([cfg.optim.seed, epoch, step_in_epoch, micro, rank])
                sync = contextlib.nullcontext() if world == 1 or micro == len(steps[step_in_epoch]) - 1 else ddp.no_sync()
                with sync, _autocast(cfg, device):
                    loss = task.loss(ddp, idx, rng, device)
                    scaler.scale(loss / len(steps[step_in_epoch])).backward()
                total_loss += loss.item() / len(steps[step_in_epoch])
            if world > 1:  # log the global batch's loss, not this rank's share
                reduced = torch.tensor([total_loss], device=device)
                torch.distributed.all_reduce(reduced)
                total_loss = reduced.item() / world
            if not math.isfinite(total_loss):
                raise NonFiniteLossError(
                    f"the training loss became {total_loss} at step {global_step + 1} (epoch {epoch + 1}); the last good "
                    f"checkpoint in {run_dir / ckpt.CHECKPOINT_DIR} is kept. Lower optim.lr, enable optim.clip_norm, "
                    "or check the inputs for extreme values")
            if cfg.optim.clip_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            bar.set_postfix(loss=f"{total_loss:.4f}")
            bar.update(1)
            if main_process:
                _log(run_dir, writer, {"epoch": epoch + 1, "step": global_step, "train_loss": f"{total_loss:.6f}",
                                       "lr": f"{scheduler.get_last_lr()[0]:.3e}", "seconds": f"{time.perf_counter() - start:.2f}"})
            if cfg.optim.checkpoint_every and global_step % cfg.optim.checkpoint_every == 0 and main_process:
                ckpt.save_checkpoint(run_dir, task.weights(), optimizer, scheduler,
                                     {**position, "epoch": epoch, "batch": step_in_epoch + 1, "global_step": global_step})
            if on_step is not None:
                on_step(global_step, total_loss)
        bar.close()

        # --- validate, keep the best, maybe stop ---------------------------------------------------------------
        stop = False
        if main_process:
            val = task.validate(device)
            shown = {f"val_{k}": f"{v:.6f}" if k == "loss" else f"{v:.4f}"
                     for k, v in val.items() if f"val_{k}" in LOG_FIELDS}
            _log(run_dir, writer, {"epoch": epoch + 1, "step": global_step, **shown,
                                   "seconds": f"{time.perf_counter() - start:.2f}"})
            metric = val[task.metric]
            if position["best"] is None or sign * metric > sign * position["best"]:
                position["best"], position["bad_epochs"] = metric, 0
                ckpt.save_weights(run_dir / ckpt.WEIGHTS, task.weights(),
                                  {"epoch": str(epoch + 1), task.metric: f"{metric:.4f}"})
            else:
                position["bad_epochs"] += 1
            stop = bool(cfg.optim.early_stopping) and position["bad_epochs"] >= cfg.optim.early_stopping
            ckpt.save_checkpoint(run_dir, task.weights(), optimizer, scheduler,
                                 {**position, "epoch": epoch + 1, "batch": 0, "global_step": global_step})
            if stop:
                print(f"early stopping after epoch {epoch + 1}: no better val {task.metric} for "
                      f"{cfg.optim.early_stopping} epochs")
        if world > 1:
            flag = torch.tensor([int(stop)], device=device)
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        position.update(epoch=epoch + 1, batch=0, global_step=global_step)
        if stop:
            break

    if world > 1:
        _check_replicas(model, run_dir, world, main_process)

    # --- test with the best weights ----------------------------------------------------------------------------
    if main_process:
        task.load_weights(run_dir / ckpt.WEIGHTS)
        task.finish(run_dir, device, time.perf_counter() - start)
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    return run_dir


def _check_replicas(model: nn.Module, run_dir: Path, world: int, main_process: bool) -> None:
    """DDP keeps replicas identical by construction; verify it, and record the largest difference in ddp.json."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    torch.distributed.all_gather(gathered, flat)
    diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if main_process:
        ckpt.write_json(run_dir / "ddp.json", {"world_size": world, "max_abs_weight_difference_between_ranks": diff})
    if diff > 1e-6:
        raise PolymodalError(f"DDP replicas diverged: weights differ by up to {diff:g} between ranks")


def _finish(run_dir: Path, cfg: TrainConfig, model, splits: Splits, test_in: Inputs, device, counts, seconds: float) -> None:
    result = {"parameters": counts, "train_seconds": round(seconds, 2), "labels": splits.labels,
              "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test)}
    if cfg.task == "align":
        if test_in.examples:
            result["test"] = alignment_scores(model, test_in, cfg.optim.batch_size, device, cfg)
            a, b = cfg.model.encoders
            print(f"test: recall@1 {a}->{b} {result['test'][f'{a}_to_{b}_r@1']:.4f}, {b}->{a} "
                  f"{result['test'][f'{b}_to_{a}_r@1']:.4f} ({len(splits.test)} pairs)")
        result["logit_scale"] = float(model.head.logit_scale().detach())
        ckpt.write_json(run_dir / "metrics.json", result)
        return
    gates: list[torch.Tensor] = []
    if test_in.examples:
        probs = predict_split(model, test_in, cfg.optim.batch_size, device, cfg, gates=gates)
        result["test"] = scores(test_in.targets, probs)
        _write_predictions(run_dir / "predictions.csv", test_in, probs, splits.labels)
        if len(cfg.model.encoders) > 1:
            result["ablation"] = {m: scores(test_in.targets, predict_split(model, test_in, cfg.optim.batch_size, device, cfg, drop=m))
                                  for m in cfg.model.encoders}
        print(f"test: accuracy {result['test']['accuracy']:.4f}, macro-F1 {result['test']['macro_f1']:.4f} "
              f"({len(splits.test)} examples)")
    if gates:  # mean gate weight per modality over the test set (gated fusion)
        result["gates"] = dict(zip(model.head.modalities, torch.cat(gates).mean(0).tolist()))
    if hasattr(model.head, "modality_weights"):
        result["late_weights"] = model.head.modality_weights()
    ckpt.write_json(run_dir / "metrics.json", result)


def _write_predictions(path: Path, inputs: Inputs, probs: torch.Tensor, labels: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "label", "prediction", *[f"p_{label}" for label in labels]])
    pred = probs.argmax(-1).tolist()
    for ex, p, row in zip(inputs.examples, pred, probs.tolist()):
        w.writerow([ex.row, ex.label, labels[p], *[f"{x:.6f}" for x in row]])
    atomic_write_text(path, buf.getvalue())


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; logging to log.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log(run_dir: Path, writer, row: dict[str, object]) -> None:
    path = run_dir / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for k, v in row.items():
            if k not in ("epoch", "step") and v not in ("", None):
                writer.add_scalar(k, float(v), int(row["step"]))


def _truncate_log(path: Path, global_step: int) -> None:
    """Drop log rows written after the checkpoint a run resumes from (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= global_step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
