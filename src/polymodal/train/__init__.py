"""Training: the run config, the one training loop (which knows no task), checkpoints and resume.

The tasks (``classify``/``align``, ``asr``, ``instruct``) live above this package and are composed in
``polymodal.tasks``, whose ``train(cfg)`` and ``load_run(path)`` are the entry points.
"""

from .config import DataConfig, FusionConfig, ModelConfig, OptimConfig, TrainConfig, TuningConfig, load_config, save_config
from .loop import NonFiniteLossError, run_loop
from .task import Task

__all__ = ["DataConfig", "FusionConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "Task", "TrainConfig",
           "TuningConfig", "load_config", "run_loop", "save_config"]
