"""Training: config, methods (supervised, glcon, mona), the generic loop, checkpoints, the two-stage pipeline."""

from .config import TrainConfig, load_config
from .loop import TrainResult, train
from .pipeline import run as run_stages

__all__ = ["TrainConfig", "load_config", "train", "run_stages", "TrainResult"]
