"""Training: config, losses, checkpoints and the supervised loop."""

from .config import TrainConfig, load_config
from .loop import TrainResult, train

__all__ = ["TrainConfig", "load_config", "train", "TrainResult"]
