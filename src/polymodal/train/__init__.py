"""Training: the run config, the one training loop, checkpoints and resume."""

from .config import DataConfig, FusionConfig, ModelConfig, OptimConfig, TrainConfig, TuningConfig, load_config, save_config
from .loop import NonFiniteLossError, build_classifier, train

__all__ = ["DataConfig", "FusionConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "TrainConfig",
           "TuningConfig", "build_classifier", "load_config", "save_config", "train"]
