"""Greedy forward selection (Algorithm 1) and its distributed form (Algorithm 2).

* :func:`greedy_forward_selection` - the engine (``engine.py``), from output vectors or a Gram matrix;
* :class:`SelectionResult` - what it returns (``result.py``);
* losses (``losses.py``) - one registered :class:`Loss` class per loss (its value, its target's checks, its
  scorer); a new loss is one subclass decorated with :func:`register_loss`;
* scorers (``scorers.py``) - the losses' fast scorers behind a small protocol, and a brute-force one;
* :mod:`greedyprune.selection.sharded` - Algorithm 2 on ``torch.distributed``, wrapping a scorer per process.
"""
from .engine import MAX_STEPS, greedy_forward_selection
from .losses import LOSSES, Loss, get_loss, loss_value, register_loss
from .result import SelectionResult
from .scorers import Scorer, draw_candidates

__all__ = ["LOSSES", "MAX_STEPS", "Loss", "Scorer", "SelectionResult", "draw_candidates", "get_loss",
           "greedy_forward_selection", "loss_value", "register_loss"]
