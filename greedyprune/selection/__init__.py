"""Greedy forward selection (Algorithm 1) and its distributed form (Algorithm 2).

* :func:`greedy_forward_selection` - the engine (``engine.py``), from output vectors or a Gram matrix;
* :class:`SelectionResult` - what it returns (``result.py``);
* scorers (``scorers.py``) - one class per loss behind a small protocol; a new loss is one new class;
* :mod:`greedyprune.selection.sharded` - Algorithm 2 on ``torch.distributed``, wrapping a scorer per process.
"""
from .engine import MAX_STEPS, greedy_forward_selection
from .losses import LOSSES, loss_value
from .result import SelectionResult
from .scorers import Scorer, draw_candidates

__all__ = ["LOSSES", "MAX_STEPS", "Scorer", "SelectionResult", "draw_candidates", "greedy_forward_selection",
           "loss_value"]
