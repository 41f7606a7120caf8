"""Weights and checkpoints in a run folder (its layout: ``polymodal.run_folder``). Every write is atomic: a crash
leaves the previous checkpoint intact.

With a ``BackgroundWriter`` the loop pays only for copying the state (tensor clones); serialising and writing happen
on the writer's thread, one write at a time and in order (as torch.distributed.checkpoint's async_save does). The
loop waits for the last write before it reads the weights back, and on any exit.
"""

from __future__ import annotations

import copy
import io
import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from .._paths import atomic_dir, atomic_write_bytes, atomic_write_text
from ..errors import PolymodalError

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


class BackgroundWriter:
    """Runs write jobs on a thread of its own, one at a time and in submission order; ``wait`` joins the last
    one and re-raises its error, if it failed."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()  # at most one write in flight: memory for one copy of the state, and writes stay in order
        self._thread = threading.Thread(target=self._run, args=(job,), name="polymodal-checkpoint", daemon=False)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001 -- raised again in the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 writer: BackgroundWriter | None = None) -> None:
    """``tensors`` as a safetensors file, atomically; with ``writer``, copied now and written on its thread."""
    # safetensors refuses tensors that share memory; clone makes each one its own (and a snapshot for the writer).
    snapshot = {k: v.clone() for k, v in tensors.items()}

    def write() -> None:
        atomic_write_bytes(path, save(snapshot, metadata=metadata))

    writer.submit(write) if writer is not None else write()


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or non-safetensors file (a pickle renamed
    ``model.safetensors``, say) is a one-line error naming it. safetensors never executes code from the file."""
    if not Path(path).is_file():
        raise PolymodalError(f"{path}: weights file missing; train the run again or point at the right run folder")
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError, or OSError/ValueError from a truncated header
        raise PolymodalError(f"{path}: not a valid safetensors weights file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); it was truncated or replaced: "
                             "train the run again or restore the file") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a run's weights into a model rebuilt from its config; every saved tensor must find its place."""
    tensors = read_weights(path)
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{path}: weights {result.unexpected_keys[:5]} do not fit the model built from the config")


def rng_state() -> dict[str, Any]:
    """The generators' states as tensors, tuples and numbers only, so that ``torch.load(weights_only=True)``
    reads them back (no pickled numpy arrays or other objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    if isinstance(npst, dict):
        np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                             npst["cached_gaussian"]))
    else:  # a checkpoint written before the numpy state was stored as a tensor: (name, uint32 array, ...)
        np.random.set_state(tuple(npst))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, weights: dict[str, torch.Tensor], optimizer, scheduler, position: dict[str, Any],
                    writer: BackgroundWriter | None = None) -> None:
    """The resumable state, written into a temporary folder and renamed over the previous checkpoint.

    Args:
        weights: what the run keeps of its model (``weights_to_save``, or a task's own choice).
        writer: copy the state now, write it on the writer's thread (training goes on meanwhile).
    """
    # A snapshot: training changes the weights and the optimiser's moments in place while the writer works.
    tensors = {k: v.clone() for k, v in weights.items()}
    state = {"optimizer": copy.deepcopy(optimizer.state_dict()), "scheduler": copy.deepcopy(scheduler.state_dict()),
             "rng": rng_state()}
    position = copy.deepcopy(position)

    def write() -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        with atomic_dir(run_dir / CHECKPOINT_DIR) as tmp:
            (tmp / WEIGHTS).write_bytes(save(tensors))
            (tmp / "state.pt").write_bytes(buf.getvalue())
            (tmp / "position.json").write_text(json.dumps(position, indent=1))

    writer.submit(write) if writer is not None else write()


def load_checkpoint(run_dir: Path, load_weights_from: Callable[[Path], None], optimizer, scheduler) -> dict[str, Any] | None:
    """Restore the latest checkpoint (weights through ``load_weights_from(path)``, optimiser, scheduler, RNG);
    returns its position, or None."""
    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / "position.json").exists():
        return None
    state = read_state(ckpt / "state.pt")
    load_weights_from(ckpt / WEIGHTS)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    try:
        position = json.loads((ckpt / "position.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PolymodalError(f"{ckpt / 'position.json'}: not valid JSON ({e}); delete {ckpt} and train again "
                             "without --resume") from None
    if not isinstance(position, dict):
        raise PolymodalError(f"{ckpt / 'position.json'}: expected a JSON object; delete {ckpt} and train again "
                             "without --resume")
    return position


def _numpy_array_globals() -> list:
    """The numpy constructors an ndarray pickles to: data types, not code. Allow-listed so that checkpoints written
    before the numpy RNG state became a tensor still resume under ``weights_only=True``."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_state(path: Path) -> dict[str, Any]:
    """The optimiser, scheduler and RNG state of a checkpoint, read with ``torch.load(weights_only=True)``: a
    tampered file whose pickle would call anything but tensor and container constructors is refused, and its code
    never runs."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PolymodalError(f"{path}: checkpoint state missing; delete {path.parent} and train again without "
                             "--resume") from None
    except Exception as e:  # pickle.UnpicklingError for a refused global, RuntimeError/EOFError for a damaged file
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        # torch's own first line suggests weights_only=False, exactly what must not be done with this file
        first = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln), lines[0])
        raise PolymodalError(f"{path}: refused to load the checkpoint state ({type(e).__name__}: {first[:200]}); "
                             "it is damaged, tampered with or not a polymodal checkpoint: delete "
                             f"{path.parent} and train again without --resume") from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "rng"} <= set(state):
        raise PolymodalError(f"{path}: not a polymodal checkpoint state (keys optimizer, scheduler, rng); delete "
                             f"{path.parent} and train again without --resume")
    return state


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))
