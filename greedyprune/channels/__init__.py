"""Layer-wise greedy forward selection of channels in deep networks.

* ``groups.py`` - which channels must be removed together (Torch-Pruning's dependency graph);
* ``masks.py`` - mask while searching (:class:`apply_masks`), fold and remove when done;
* ``evaluators.py`` - scoring a step's candidates (full masked forwards, or the fast downstream-only way);
* ``rules.py`` - when a group stops (a new rule is one small class);
* ``budget.py`` - multiply-add budgets over groups;
* ``reconstruct.py`` - the block-reconstruction objective (the default for width rules), ``objectives.py`` -
  how the driver runs it; ``local.py`` - the paper's local objective (``local-gfs``);
* ``options.py`` - :class:`PruneOptions`, every tuning option of :func:`prune_model` (fields with their help);
* ``layout.py`` - the convolutions channels-last while pruning on a CPU (``memory_format``);
* ``search.py`` - :func:`prune_model`, the driver;
* ``io.py`` - :func:`save_pruned` / :func:`load_pruned` without unpickling.
"""
from .batches import Batches
from .groups import ChannelGroup, UnsupportedLayerError, find_groups, refresh_group
from .io import PRUNED_FORMAT, load_pruned, save_pruned
from .masks import apply_masks, fold_and_remove, group_scales
from .rules import AccuracyTolerance, FlopsTarget, KeepCounts, KeepRatio, LossGap, Step, StoppingRule
from . import options as _options
from .options import PruneOptions
from .search import EVALUATORS, SearchOptions, prune_model

__all__ = [
    "EVALUATORS", "PRUNED_FORMAT", "AccuracyTolerance", "Batches", "ChannelGroup", "FlopsTarget",
    "KeepCounts",
    "KeepRatio", "LossGap", "PruneOptions", "SearchOptions", "Step", "StoppingRule", "UnsupportedLayerError",
    "apply_masks", "find_groups", "fold_and_remove", "group_scales", "load_pruned", "prune_model", "refresh_group",
    "save_pruned",
]


def __getattr__(name: str):
    if name == "METHODS":  # the former name of EVALUATORS: warns (channels/options.py)
        return _options.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
