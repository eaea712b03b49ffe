"""Training: config, data pipeline, the loop, checkpoints and metrics."""

from famus.train.config import TrainConfig, from_dict, load_config
from famus.train.loop import TrainingError, evaluate, train

__all__ = ["TrainConfig", "TrainingError", "evaluate", "from_dict", "load_config", "train"]
