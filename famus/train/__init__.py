"""Training: config, data pipeline, the loop, checkpoints and metrics."""

from famus.train.config import TrainConfig, from_dict, load_config
from famus.train.errors import TrainingError
from famus.train.evaluation import evaluate
from famus.train.loop import train

__all__ = ["TrainConfig", "TrainingError", "evaluate", "from_dict", "load_config", "train"]
