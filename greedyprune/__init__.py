"""greedyprune: structured pruning by greedy forward selection (GFS), and the studies of
"How much pre-training is enough to discover a good subnetwork?".

The verbs::

    result = greedyprune.greedy_forward_selection(outputs, target, k, loss="squared")
    result = greedyprune.prune_two_layer(model, X, y, k=50, loss="logistic")     # -> PruneResult
    result = greedyprune.prune_model(cnn, (images, labels), flops_target=0.5)   # deep networks -> PruneResult
"""
from .advisor import PretrainingAdvisor
from .channels import PruneOptions, UnsupportedLayerError, load_pruned, prune_model, save_pruned
from .models import MODEL_NAMES, get_model
from .result import LayerRecord, PruneReport, PruneResult
from .selection import LOSSES, SelectionResult, greedy_forward_selection, loss_value
from .training.loop import TrainConfig, evaluate, pretrain
from .twolayer import TwoLayerNet, build_pruned, neuron_outputs, prune_two_layer

__version__ = "0.2.0"
__all__ = [
    "LOSSES",
    "LayerRecord",
    "MODEL_NAMES",
    "PruneOptions",
    "PruneReport",
    "PruneResult",
    "PretrainingAdvisor",
    "SelectionResult",
    "TrainConfig",
    "TwoLayerNet",
    "UnsupportedLayerError",
    "build_pruned",
    "evaluate",
    "get_model",
    "greedy_forward_selection",
    "load_pruned",
    "loss_value",
    "neuron_outputs",
    "pretrain",
    "prune_model",
    "prune_two_layer",
    "save_pruned",
    "__version__",
]
