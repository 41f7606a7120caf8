"""Experiment trackers beside log.csv: TensorBoard (default), MLflow and Weights & Biases, each through the library
itself and each optional (``pip install tensorboard`` / ``'polymodal[mlflow]'`` / ``'polymodal[wandb]'``).

A tracker gets the run's config once and every log row's numbers (training loss and learning rate per step,
validation scores per epoch), keyed by the optimiser step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from .config import LoggingConfig

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """An MLflow run per training run; by default a local file store in ``RUN/mlruns`` (``mlflow ui
    --backend-store-uri RUN/mlruns`` shows it)."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, params: dict[str, Any]):
        try:
            import mlflow
        except ImportError as e:
            raise ConfigError("logging.mlflow: needs MLflow: pip install 'polymodal[mlflow]'") from e
        self.mlflow = mlflow
        if cfg.mlflow_uri is None:
            # MLflow 3 keeps its file store working but refuses it unless asked: it needs no database server and
            # no SQLAlchemy (mlflow-skinny), which is what a run folder on a laptop wants.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(cfg.mlflow_uri or (run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(cfg.experiment)
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker:
    """A W&B run; ``offline`` by default (files in ``RUN/wandb``, ``wandb sync`` uploads them later)."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, params: dict[str, Any]):
        try:
            import wandb
        except ImportError as e:
            raise ConfigError("logging.wandb: needs wandb: pip install 'polymodal[wandb]'") from e
        self.run = wandb.init(project=cfg.experiment, name=run_dir.name, dir=str(run_dir), mode=cfg.wandb_mode,
                              config=params, reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(cfg: LoggingConfig, run_dir: Path, params: dict[str, Any]) -> list[Tracker]:
    """The trackers ``cfg`` turns on (TensorBoard only when it is installed)."""
    out: list[Tracker] = []
    if cfg.tensorboard:
        try:
            out.append(TensorBoardTracker(run_dir))
        except ImportError:
            log.info("tensorboard is not installed; logging to log.csv only (pip install tensorboard)")
    if cfg.mlflow:
        out.append(MlflowTracker(run_dir, cfg, params))
    if cfg.wandb:
        out.append(WandbTracker(run_dir, cfg, params))
    return out


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys (``optim.lr``), as trackers take parameters."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
