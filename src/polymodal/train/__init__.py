"""Training: the run config, the one training loop, checkpoints and resume."""

from .config import DataConfig, FusionConfig, ModelConfig, OptimConfig, TrainConfig, TuningConfig, load_config, save_config
from .loop import NonFiniteLossError, build_classifier, train
from .run import Run, load_run

__all__ = ["DataConfig", "FusionConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "Run", "TrainConfig",
           "TuningConfig", "build_classifier", "load_config", "load_run", "save_config", "train"]
