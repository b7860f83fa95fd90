"""greedyprune: structured pruning by greedy forward selection (GFS), and the studies of
"How much pre-training is enough to discover a good subnetwork?".

The verbs::

    result = greedyprune.greedy_forward_selection(outputs, target, k, loss="squared")
    small, result = greedyprune.prune_two_layer(model, X, y, k=50, loss="logistic")
    result = greedyprune.prune_model(cnn, (images, labels), flops_target=0.5)   # deep networks
"""
from .advisor import PretrainingAdvisor
from .deep import DeepPruneResult, load_pruned, prune_model, save_pruned
from .models import MODEL_NAMES, get_model
from .selection import LOSSES, SelectionResult, greedy_forward_selection, loss_value
from .train import TrainConfig, evaluate, pretrain
from .twolayer import TwoLayerNet, build_pruned, neuron_outputs, prune_two_layer

__version__ = "0.1.0"
__all__ = [
    "LOSSES",
    "MODEL_NAMES",
    "DeepPruneResult",
    "get_model",
    "load_pruned",
    "prune_model",
    "save_pruned",
    "PretrainingAdvisor",
    "SelectionResult",
    "TrainConfig",
    "TwoLayerNet",
    "build_pruned",
    "evaluate",
    "greedy_forward_selection",
    "loss_value",
    "neuron_outputs",
    "pretrain",
    "prune_two_layer",
    "__version__",
]
