"""The one training loop, which knows no task: read it top to bottom.

``train`` sets up the process (distributed rank, device, seeds), builds the task it is given and hands it to
``run_loop``, the part every task shares: AdamW with linear warm-up then cosine decay, gradient accumulation and
clipping, mixed precision on CUDA, early stopping on the task's validation metric, atomic checkpoints with exact
resume (weights, optimiser, scheduler, RNG and the position in a seeded data order), CSV and TensorBoard logs, and
DistributedDataParallel under ``torchrun`` (gloo on CPU, NCCL on GPU). What differs between tasks (model, batches,
loss, metric, the run's own files) is the ``Task`` (``task.py``); which task a config names is decided above this
package (``polymodal.tasks``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import run_folder
from .._paths import atomic_write_text
from ..errors import PolymodalError
from . import checkpoint as ckpt
from .config import TrainConfig, save_config
from .data import batch_order
from .task import Task
from .trackers import flat, open_trackers

log = logging.getLogger(__name__)


def log_fields(task: Task) -> tuple[str, ...]:
    """The columns of a run's log.csv: the loop's own, and the task's validation scores."""
    return ("epoch", "step", "train_loss", "lr", *(f"val_{k}" for k in task.log_fields), "seconds")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}



class NonFiniteLossError(PolymodalError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def autocast(cfg: TrainConfig, device: torch.device):
    amp = cfg.optim.amp
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _start_run_folder(run_dir: Path, cfg: TrainConfig, task: Task) -> None:
    """What every new run folder holds first: the config that rebuilds its model, and the task's own files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(_portable(cfg), run_dir / run_folder.CONFIG)
    run_folder.write_meta(run_dir, cfg.task)
    task.start(run_dir)


def _portable(cfg: TrainConfig) -> TrainConfig:
    """The config as a run saves it: a relative manifest path was relative to the working directory (or the
    original config's folder), which ``load_config`` of ``RUN/config.yaml`` would take as relative to RUN."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=str(Path(cfg.data.manifest).resolve())))


def train(cfg: TrainConfig, build_task: Callable[..., Task], *, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train the run described by ``cfg`` with the task ``build_task(cfg, progress=...)`` makes; returns the run
    folder. (``polymodal.tasks.train`` picks the builder from ``cfg.task``.)

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
    counts = parameter_counts(task.model)
    if main_process:
        log.info("parameters: %s trainable of %s", f"{counts['trainable']:,}", f"{counts['total']:,}")
        print(f"{task.summary}: {counts['trainable']:,} trainable parameters of {counts['total']:,} "
              f"({100 * counts['trainable'] / max(1, counts['total']):.2f} %)")
    if not task.trains:  # nothing to optimise: keep the weights as built and score the test split
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
    fields = log_fields(task)
    sign = 1.0 if task.higher_is_better else -1.0  # the best checkpoint maximises sign * metric

    # --- resume ----------------------------------------------------------------------------------------------------
    position = {"epoch": 0, "batch": 0, "global_step": 0, "best": None, "bad_epochs": 0}
    if resume:
        found = ckpt.load_checkpoint(run_dir, task.load_weights, optimizer, scheduler)
        if found is None:
            raise PolymodalError(f"{run_dir}: no checkpoint to resume from; start the run without --resume")
        position = found
        _truncate_log(run_dir / run_folder.LOG, position["global_step"], fields)
        print(f"resuming {run_dir} at epoch {position['epoch'] + 1}, step {position['global_step']}")
    elif main_process:
        _start_run_folder(run_dir, cfg, task)
        (run_dir / run_folder.LOG).unlink(missing_ok=True)  # left by a run that died before its first checkpoint
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=task.ddp_find_unused) \
        if world > 1 else model
    logs = _Log(run_dir / run_folder.LOG, fields, open_trackers(cfg.logging, run_dir, flat(cfg.to_dict()))) \
        if main_process else None
    writer = ckpt.BackgroundWriter()  # checkpoints are copied in the loop and written beside it
    best = _BestWeights(run_dir / ckpt.WEIGHTS)

    # --- the loop ----------------------------------------------------------------------------------------------------
    try:
        global_step = position["global_step"]
        start = time.perf_counter()
        last_checkpoint = -math.inf  # the first epoch's end always checkpoints
        for epoch in range(position["epoch"], cfg.optim.epochs):
            batches = batch_order(task.n_train, cfg.optim.batch_size, cfg.optim.seed, epoch, True, rank, world)
            steps = [batches[i : i + cfg.optim.grad_accum] for i in range(0, len(batches), cfg.optim.grad_accum)]
            first = position["batch"] if epoch == position["epoch"] else 0
            bar = tqdm(total=len(steps), initial=first, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="step",
                       disable=None if progress and main_process else True, leave=False)
            model.train()
            task.on_epoch_start(epoch)
            epoch_loss, epoch_steps = 0.0, 0
            pending: list[float] = []  # losses of the steps since the last log row
            for step_in_epoch in range(first, len(steps)):
                optimizer.zero_grad(set_to_none=True)
                total_loss = 0.0
                n_micro = len(steps[step_in_epoch])
                for micro, idx in enumerate(steps[step_in_epoch]):
                    rng = StepRng((cfg.optim.seed, epoch, step_in_epoch, micro, rank))
                    sync = contextlib.nullcontext() if world == 1 or micro == n_micro - 1 else ddp.no_sync()
                    with sync, autocast(cfg, device):
                        loss = task.loss(ddp, idx, rng, device)
                        scaler.scale(loss if n_micro == 1 else loss / n_micro).backward()  # no graph node for "/ 1"
                    total_loss += loss.item() / n_micro
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
                epoch_loss, epoch_steps = epoch_loss + total_loss, epoch_steps + 1
                if not bar.disable:  # off the terminal the bar is disabled: skip formatting its postfix
                    bar.set_postfix(loss=f"{total_loss:.4f}")
                    bar.update(1)
                pending.append(total_loss)
                checkpoint_now = bool(cfg.optim.checkpoint_every) and global_step % cfg.optim.checkpoint_every == 0
                # A row every N steps (a file write and a tracker call cost ~0.4 ms, a tenth of a small head's step),
                # and always at a checkpoint and at the epoch's end, so a resumed run's log has no gap.
                if main_process and (len(pending) >= cfg.logging.every_n_steps or checkpoint_now
                                     or step_in_epoch == len(steps) - 1):
                    logs.row({"epoch": epoch + 1, "step": global_step, "train_loss": f"{sum(pending) / len(pending):.6f}",
                              "lr": f"{scheduler.get_last_lr()[0]:.3e}", "seconds": f"{time.perf_counter() - start:.2f}"})
                    pending.clear()
                if checkpoint_now and main_process:
                    last_checkpoint = time.perf_counter()
                    best.flush(writer)
                    ckpt.save_checkpoint(run_dir, task.weights(), optimizer, scheduler,
                                         {**position, "epoch": epoch, "batch": step_in_epoch + 1, "global_step": global_step},
                                         writer=writer)
                if on_step is not None:
                    on_step(global_step, total_loss)
            bar.close()

            # --- validate, keep the best, maybe stop ---------------------------------------------------------------
            stop = False
            if main_process:
                val = task.validate(device)
                shown = {f"val_{k}": f"{v:.6f}" if k == "loss" else f"{v:.4f}"
                         for k, v in val.items() if f"val_{k}" in fields}
                logs.row({"epoch": epoch + 1, "step": global_step, **shown, "seconds": f"{time.perf_counter() - start:.2f}"})
                metric = val[task.metric]
                if position["best"] is None or sign * metric > sign * position["best"]:
                    position["best"], position["bad_epochs"], position["best_epoch"] = metric, 0, epoch + 1
                    best.keep(task.weights(), {"epoch": str(epoch + 1), task.metric: f"{metric:.4f}"})
                else:
                    position["bad_epochs"] += 1
                stop = bool(cfg.optim.early_stopping) and position["bad_epochs"] >= cfg.optim.early_stopping
                print(_epoch_line(epoch + 1, cfg.optim.epochs, epoch_loss / max(1, epoch_steps), val, task, position),
                      flush=True)
                # An epoch of a small head takes a fraction of a second: checkpointing every one costs more than its
                # steps. Resume loses at most checkpoint_seconds of work; the last epoch always checkpoints.
                if (time.perf_counter() - last_checkpoint >= cfg.optim.checkpoint_seconds or stop
                        or epoch + 1 == cfg.optim.epochs):
                    best.flush(writer)
                    ckpt.save_checkpoint(run_dir, task.weights(), optimizer, scheduler,
                                         {**position, "epoch": epoch + 1, "batch": 0, "global_step": global_step},
                                         writer=writer)
                    last_checkpoint = time.perf_counter()
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
            best.flush(writer)
            writer.wait()  # the best weights are on disk
            task.load_weights(run_dir / ckpt.WEIGHTS)
            task.finish(run_dir, device, time.perf_counter() - start)
        if world > 1:
            torch.distributed.barrier()
        return run_dir
    finally:
        try:
            writer.wait()  # also when training stops on an error or Ctrl-C: the last checkpoint is on disk
        finally:
            if logs is not None:
                logs.close()


class StepRng:
    """The ``np.random.Generator`` of one step, seeded by ``key`` and made on first use: seeding one costs ~50 µs,
    a sixtieth of a small head's step, and a step on cached features never draws from it."""

    __slots__ = ("_key", "_rng")

    def __init__(self, key: tuple[int, ...]):
        self._key, self._rng = key, None

    def __getattr__(self, name: str):
        if self._rng is None:
            self._rng = np.random.default_rng(list(self._key))
        return getattr(self._rng, name)


class _BestWeights:
    """The best epoch's weights, held in memory and written beside each resumable checkpoint (and at the end), not
    at every improvement: a resumed run restarts from its checkpoint, whose best weights were written with it, so
    nothing is lost, and a small head no longer writes a file per epoch (3 ms, as long as its validation)."""

    def __init__(self, path: Path):
        self.path = path
        self._pending: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None

    def keep(self, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        self._pending = ({k: v.detach().clone() for k, v in weights.items()}, metadata)

    def flush(self, writer: ckpt.BackgroundWriter) -> None:
        if self._pending is not None:
            weights, metadata = self._pending
            self._pending = None
            ckpt.save_weights(self.path, weights, metadata, writer=writer)


def _epoch_line(epoch: int, epochs: int, train_loss: float, val: dict[str, float], task: Task,
                position: dict) -> str:
    """One console line per epoch: the training loss, every validation score, and the best so far."""
    scores = ", ".join(f"val_{k} {val[k]:.4f}" for k in task.log_fields if k in val)
    best = f"best val_{task.metric} {position['best']:.4f}"
    if position.get("best_epoch"):
        best += f" (epoch {position['best_epoch']})"
    return f"epoch {epoch}/{epochs}: train_loss {train_loss:.4f}, {scores}; {best}"


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


class _Log:
    """log.csv and the trackers (TensorBoard, ...). The file stays open for the run (opening it per row cost more
    than the row) and each row is flushed at once, so ``polymodal studio`` and ``tail -f`` see it as it is written."""

    def __init__(self, path: Path, fields: tuple[str, ...], trackers: list):
        new = not path.exists()
        self._file = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=fields)
        if new:
            self._csv.writeheader()
        self.trackers = trackers

    def row(self, row: dict[str, object]) -> None:
        self._csv.writerow(row)
        self._file.flush()
        numbers = {k: float(v) for k, v in row.items() if k not in ("epoch", "step") and v not in ("", None)}
        for tracker in self.trackers:
            tracker.log(numbers, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        for tracker in self.trackers:
            tracker.close()


def _truncate_log(path: Path, global_step: int, fields: tuple[str, ...]) -> None:
    """Drop log rows written after the checkpoint a run resumes from (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= global_step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
