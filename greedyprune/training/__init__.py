"""Training: the one SGD loop (``loop.py``), retraining modes (``retrain.py``), model checkpoints and
resumable training runs (``checkpoints.py``)."""
from .loop import TrainConfig, evaluate, pretrain, train_step

__all__ = ["TrainConfig", "evaluate", "pretrain", "train_step"]
