"""Is my network pre-trained enough to prune? A callback that prunes periodically and says when.

:class:`PretrainingAdvisor` is called every few training steps with the model and a data batch (use the
same batch every time, so that checks are comparable). Each check prunes the network with greedy forward
selection, records the pruned network's loss and accuracy on the batch and how much the selected set of
neurons changed since the previous check, and fires when both have settled:

* **quality plateau** - over the last ``patience`` checks the best pruned accuracy improved by less than
  ``tolerance`` (absolute) on the best accuracy before them;
* **selection plateau** - over the same checks the selection distance did not reach a new low by more than
  ``distance_tolerance``: the set of kept neurons has stopped settling further. The distance is the
  Jaccard distance ``1 - |A & B| / |A | B|`` between the distinct neurons kept at consecutive checks (like
  the mask distance of early-bird tickets, restricted to what is kept). With replacement, greedy forward
  selection has many near-interchangeable neurons to choose from, so consecutive selections of a
  well-trained net still differ (0.4-0.7 on MNIST, more for wider nets); an absolute bound would depend on
  the width, so the rule asks only that the distance has stopped falling. ``max_distance`` adds an
  absolute bound if you want one.

When it fires it keeps the pruned model (and saves it if ``save_path`` is given) and reports the step.
Defaults: ``patience=2``, ``tolerance=0.005``, ``distance_tolerance=0.05``, no ``max_distance``.

Two-layer networks (``TwoLayerNet`` or ``nn.Sequential(Linear, act, Linear)``) are pruned with
:func:`greedyprune.prune_two_layer`; other networks need a ``pruner`` callable
``pruner(model, X, y) -> PruneResult`` (what every pruner of the package returns).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checks import check_choice, check_int
from .errors import InvalidOptionError, InvalidTypeError
from .result import PruneResult
from .selection import LOSSES
from .training.loop import TRAIN_LOSSES, evaluate
from .twolayer import is_two_layer, prune_two_layer, save_two_layer

__all__ = ["AdvisorCheck", "jaccard_distance", "PretrainingAdvisor", "deep_pruner"]


@dataclass
class AdvisorCheck:
    """One check: the step, the pruned and dense network's loss / accuracy on the batch, the selection."""

    step: int
    pruned_loss: float
    pruned_accuracy: float
    dense_loss: float
    dense_accuracy: float
    distinct: int
    distance: float | None  # Jaccard distance to the previous check's selection (None at the first check)
    seconds: float  # time the check took


def jaccard_distance(a, b) -> float:
    """``1 - |a & b| / |a | b|`` of two sets of unit ids (0 for two empty sets)."""
    a, b = set(a), set(b)
    union = a | b
    return 0.0 if not union else 1.0 - len(a & b) / len(union)


class PretrainingAdvisor:
    """Prunes periodically during training and says when pre-training is enough (see the module docs).

    Args:
        k: greedy selection steps per check (the pruned net keeps at most k units).
        loss: "logistic" (one-logit nets, labels {0,1}), "squared" or "cross_entropy".
        patience: how many consecutive checks must show the plateau and the stable selection.
        tolerance: largest improvement of the best pruned accuracy over ``patience`` checks that still
            counts as a plateau.
        distance_tolerance: largest fall of the selection distance below its earlier minimum, over
            ``patience`` checks, that still counts as settled.
        max_distance: optional absolute bound on the selection distance of each of those checks.
        save_path: where to save the pruned model when the advisor fires (two-layer nets: read it back with
            :func:`greedyprune.twolayer.load_two_layer`).
        pruner: for networks that are not two-layer: ``pruner(model, X, y) -> PruneResult``.
        selection_options: passed to :func:`greedyprune.greedy_forward_selection` (``replacement``,
            ``candidates``, ``seed``).
        log: where messages go (``print`` by default; ``None`` for silence).

    Use::

        advisor = PretrainingAdvisor(k=50)
        for step in range(steps):
            train_step()
            if step % 250 == 0 and advisor.check(step, model, X_check, y_check):
                break                      # advisor.stop_step, advisor.pruned_model
    """

    def __init__(self, k: int, *, loss: str = "logistic", patience: int = 2, tolerance: float = 0.005,
                 distance_tolerance: float = 0.05, max_distance: float | None = None,
                 save_path: str | os.PathLike | None = None,
                 pruner: Callable | None = None, selection_options: dict | None = None,
                 log: Callable[[str], None] | None = print):
        check_int("k", k, 1)
        check_int("patience", patience, 1)
        # a loss both greedy selection (the registry) and the training loop's evaluate know
        check_choice("loss", loss, [name for name in LOSSES if name in TRAIN_LOSSES])
        if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
            raise InvalidOptionError(f"tolerance must be a number >= 0, got {tolerance!r}")
        if not (isinstance(distance_tolerance, (int, float)) and distance_tolerance >= 0):
            raise InvalidOptionError(f"distance_tolerance must be a number >= 0, got {distance_tolerance!r}")
        if max_distance is not None and not (isinstance(max_distance, (int, float)) and 0 <= max_distance <= 1):
            raise InvalidOptionError(f"max_distance must be None or in [0, 1], got {max_distance!r}")
        if pruner is not None and not callable(pruner):
            raise InvalidTypeError(f"pruner must be callable as pruner(model, X, y), got {type(pruner).__name__}")
        self.k, self.loss, self.patience = k, loss, patience
        self.tolerance, self.distance_tolerance = float(tolerance), float(distance_tolerance)
        self.max_distance = None if max_distance is None else float(max_distance)
        self.save_path = Path(save_path) if save_path is not None else None
        self.pruner = pruner
        self.selection_options = dict(selection_options or {})
        self.log = log
        self.history: list[AdvisorCheck] = []
        self.stop_step: int | None = None
        self.pruned_model: nn.Module | None = None
        self._previous: set | None = None

    @property
    def fired(self) -> bool:
        """Whether the advisor has said that pre-training is enough."""
        return self.stop_step is not None

    def _prune(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, set]:
        if self.pruner is not None:
            result = self.pruner(model, X, y)
            if not isinstance(result, PruneResult):
                raise InvalidTypeError(f"pruner must return a PruneResult (what prune_two_layer, prune_model and the "
                                       f"baselines return), got {type(result).__name__}")
        elif is_two_layer(model):
            result = prune_two_layer(model, X, y, self.k, loss=self.loss, **self.selection_options)
        elif any(isinstance(m, nn.Conv2d) for m in model.modules()):
            if self.loss != "cross_entropy":
                raise InvalidOptionError(
                    f"a CNN is pruned and evaluated with loss='cross_entropy' (class logits); this "
                    f"advisor has loss={self.loss!r}: pass PretrainingAdvisor(k, loss='cross_entropy')")
            result = deep_pruner(**self.selection_options)(model, X, y)
        else:
            raise InvalidTypeError(
                f"PretrainingAdvisor cannot prune a {type(model).__name__}: it prunes two-layer networks "
                "(greedyprune.TwoLayerNet or nn.Sequential(nn.Linear, activation, nn.Linear)) and CNNs "
                "(with greedyprune.prune_model) by itself; for other networks pass "
                "pruner=callable(model, X, y) -> PruneResult")
        return result.model, {(layer, i) for layer, ids in result.kept.items() for i in ids}

    def check(self, step: int, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> bool:
        """Prune ``model`` on the batch (X, y), record the check, and return True once the advisor fires.

        After firing, further calls record nothing and keep returning True.
        """
        if self.fired:
            return True
        check_int("step", step, 0)
        if self.history and step <= self.history[-1].step:
            raise InvalidOptionError(
                f"steps must increase from check to check: got {step} after {self.history[-1].step}")
        start = time.perf_counter()
        was_training = model.training
        with torch.no_grad():
            pruned, kept = self._prune(model, X, y)
            pruned_loss, pruned_accuracy = evaluate(pruned, X, y, self.loss)
            dense_loss, dense_accuracy = evaluate(model, X, y, self.loss)
        model.train(was_training)
        distance = None if self._previous is None else jaccard_distance(self._previous, kept)
        self._previous = kept
        self.history.append(AdvisorCheck(step, pruned_loss, pruned_accuracy, dense_loss, dense_accuracy, len(kept),
                                         distance, time.perf_counter() - start))
        if self._should_fire():
            self.stop_step = step
            self.pruned_model = pruned
            if self.save_path is not None:
                self._save(pruned)
            if self.log is not None:
                self.log(f"pre-training is enough at step {step}: pruned accuracy {pruned_accuracy:.4f} "
                         f"(dense {dense_accuracy:.4f}), {len(kept)} units kept, selection distance {distance:.3f}")
        return self.fired

    def _should_fire(self) -> bool:
        h = self.history
        # the window needs distances, and at least one distance before it to compare with
        if len(h) < self.patience + 2:
            return False
        window, before = h[-self.patience:], h[:-self.patience]
        improvement = max(c.pruned_accuracy for c in window) - max(c.pruned_accuracy for c in before)
        earlier = min(c.distance for c in before if c.distance is not None)
        settled = min(c.distance for c in window) > earlier - self.distance_tolerance
        if self.max_distance is not None:
            settled = settled and all(c.distance <= self.max_distance for c in window)
        return improvement < self.tolerance and settled

    def _save(self, pruned: nn.Module) -> None:
        """Two-layer nets as sizes and weights (:func:`greedyprune.twolayer.load_two_layer` reads them); other
        nets as a state dict (load it into the pruned architecture)."""
        if is_two_layer(pruned):
            save_two_layer(self.save_path, pruned)
        else:
            from .fileio import save_torch

            save_torch(self.save_path, {"format": "greedyprune-state-dict-v1", "state_dict": pruned.state_dict()})

    def overhead_seconds(self) -> float:
        """Total time spent in checks."""
        return sum(c.seconds for c in self.history)

    def report(self) -> dict:
        """The settings, the checks and the verdict, as plain data (JSON-ready)."""
        return {
            "k": self.k, "loss": self.loss, "patience": self.patience, "tolerance": self.tolerance,
            "distance_tolerance": self.distance_tolerance, "max_distance": self.max_distance,
            "stop_step": self.stop_step,
            "checks": [asdict(c) for c in self.history],
        }


def deep_pruner(**prune_options) -> Callable:
    """A ``pruner`` for deep networks: :func:`greedyprune.prune_model` with these options (default: its
    accuracy-tolerance rule). The advisor uses it by itself for CNNs, with its ``selection_options``."""
    from .channels import prune_model

    def prune(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> PruneResult:
        return prune_model(model, (X, y), **prune_options)

    return prune
