"""Weights and checkpoints in a run folder (its layout: ``polymodal.run_folder``). Every write is atomic: a crash
leaves the previous checkpoint intact."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from .._paths import atomic_dir, atomic_write_bytes, atomic_write_text

from ..run_folder import CHECKPOINT_DIR, WEIGHTS  # noqa: F401 - the names a run's weights and checkpoint go by


def weights_to_save(model: torch.nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """What a run keeps: the head always; all encoder weights (and buffers) for full tuning; only the LoRA
    adapters for LoRA; nothing of the frozen encoders for a linear probe (they are rebuilt from the config); only the
    learned context for CoOp (nothing for zero-shot)."""
    state = model.state_dict()
    if mode == "full":
        keep = state
    elif mode in ("zeroshot", "coop"):  # the learned prompt only; the towers are rebuilt from the config
        keep = {k: v for k, v in state.items() if k.startswith("head.prompt.")}
    elif mode == "lora":
        keep = {k: v for k, v in state.items() if k.startswith("head.") or "lora_" in k}
    else:
        keep = {k: v for k, v in state.items() if k.startswith("head.")}
    return {k: v.detach().cpu().contiguous() for k, v in keep.items()}


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # safetensors refuses tensors that share memory; clone makes each one its own.
    atomic_write_bytes(path, save({k: v.clone() for k, v in tensors.items()}, metadata=metadata))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a run's weights into a model rebuilt from its config; every saved tensor must find its place."""
    tensors = load_file(path)
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{path}: weights {result.unexpected_keys[:5]} do not fit the model built from the config")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, weights: dict[str, torch.Tensor], optimizer, scheduler, position: dict[str, Any]) -> None:
    """The resumable state, written into a temporary folder and renamed over the previous checkpoint.

    Args:
        weights: what the run keeps of its model (``weights_to_save``, or a task's own choice).
    """
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}, buf)
    with atomic_dir(run_dir / CHECKPOINT_DIR) as tmp:
        (tmp / WEIGHTS).write_bytes(save({k: v.clone() for k, v in weights.items()}))
        (tmp / "state.pt").write_bytes(buf.getvalue())
        (tmp / "position.json").write_text(json.dumps(position, indent=1))


def load_checkpoint(run_dir: Path, load_weights_from: Callable[[Path], None], optimizer, scheduler) -> dict[str, Any] | None:
    """Restore the latest checkpoint (weights through ``load_weights_from(path)``, optimiser, scheduler, RNG);
    returns its position, or None."""
    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / "position.json").exists():
        return None
    load_weights_from(ckpt / WEIGHTS)
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((ckpt / "position.json").read_text())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))
