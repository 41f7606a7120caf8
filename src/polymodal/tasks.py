"""The tasks, composed: the one place that maps a task name to the code that trains it and the code that loads a
finished run of it. Everything below (``train``, ``classify``, ``speech``, ``instruct``) is unaware of its
siblings; the command line, the service and the Python API reach the tasks through here.

| task | trains with | a finished run loads as |
| --- | --- | --- |
| ``classify``, ``align`` | ``classify.task.HeadTask`` | ``classify.Run`` (``predict``, ``predict_items``, ``embed``) |
| ``asr`` | ``speech.asr_task.AsrTask`` | ``speech.asr_run.AsrRun`` (``predict``, ``predict_items``: transcripts) |
| ``instruct`` | ``instruct.task.InstructTask`` | ``instruct.InstructRun`` (generation) |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .run_folder import run_task
from .train import loop
from .train.config import TrainConfig
from .train.task import Task


def task_builder(task: str) -> Callable[..., Task]:
    """``build(cfg, *, progress) -> Task`` of a task; the heavy modules of a task load only when it is asked for."""
    if task in ("classify", "align"):
        from .classify.task import build
    elif task == "asr":
        from .speech.asr_task import build
    elif task == "instruct":
        from .instruct.task import build
    else:
        raise ValueError(f"unknown task {task!r}")
    return build


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train the run ``cfg`` describes, in the one training loop; returns the run folder.

    Args:
        resume: continue from ``out_dir/checkpoint`` exactly where it stopped.
        on_step: called after every optimiser step with (global step, loss); may raise to stop the run.
    """
    return loop.train(cfg, task_builder(cfg.task), resume=resume, progress=progress, on_step=on_step)


def load_run(path: str | Path) -> Any:
    """A finished run of any task, ready for inference (see the table above); the task is read from the run folder.

    Raises:
        PolymodalError: not a finished run.
    """
    task = run_task(path)
    if task in ("classify", "align"):
        from .classify.run import load_run as load
    elif task == "asr":
        from .speech.asr_run import load_transcriber as load
    else:
        from .instruct.model import load_instruct as load
    return load(path)
