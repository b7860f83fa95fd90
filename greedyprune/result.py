"""What every pruner returns: :class:`PruneResult`.

``prune_two_layer``, ``prune_model``, the baselines (``greedyprune.baselines.prune_like``) and
``prune_transformer`` all return one; code that compares methods reads the same fields from each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from torch import nn

from .selection.result import SelectionResult

__all__ = ["PruneResult"]


@dataclass
class PruneResult:
    """A pruned network and how it was obtained.

    Attributes:
        model: the pruned network, a plain ``nn.Module``, physically smaller than the original.
        kept: layer or group name -> kept unit / channel indices (in the original numbering), ascending.
        counts: layer or group name -> how many times each original unit was selected (all zeros but the
            kept ones; above 1 where a unit was chosen again with replacement). Empty for criteria that
            select no multiset (magnitude baselines).
        report: whole-network numbers. Always ``params_before``, ``params_after``, ``seconds``; where the
            pruner measures them ``macs_before``, ``macs_after``, ``loss_before``, ``loss_after``,
            ``accuracy_before``, ``accuracy_after`` and ``eval_examples``; plus method-specific entries.
        selection: the :class:`SelectionResult` when the whole pruning is one selection (two-layer nets).
        layers: one record per pruned layer / group (name, units before and kept, steps, stopping rule,
            loss and accuracy when it stopped, seconds).
        history: Torch-Pruning's pruning history, replayable on a fresh dense model (deep networks).
        method: what selected the units: ``"gfs"``, ``"l1"``, ``"bn"``, ...

    For two-layer nets the old form still works: ``model, selection = prune_two_layer(...)``.
    """

    model: nn.Module
    kept: dict[str, list[int]]
    counts: dict[str, list[int]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    selection: SelectionResult | None = None
    layers: list[dict] = field(default_factory=list)
    history: list = field(default_factory=list, repr=False)
    method: str = "gfs"

    def __iter__(self) -> Iterator:
        """``model, selection = result``: unpacking gives the pruned model and the selection."""
        return iter((self.model, self.selection))

    def ratio(self, key: str) -> float:
        """``report[key + "_after"] / report[key + "_before"]``, e.g. ``ratio("macs")``."""
        return self.report[f"{key}_after"] / self.report[f"{key}_before"]

    def summary(self) -> str:
        """A per-layer table and the before -> after numbers, as text."""
        from ._text import format_table

        lines = []
        if self.layers:
            header = ["layer", "units", "kept", "steps", "loss", "acc"]
            rows = [[str(g.get("name")), str(g.get("channels", g.get("units", ""))), str(g.get("kept", "")),
                     str(g.get("steps", "")), _fmt(g.get("loss"), ".4f"), _fmt(g.get("accuracy"), ".3f")]
                    for g in self.layers]
            lines += [format_table(header, rows), ""]
        r = self.report
        for key, label in (("params", "params"), ("macs", "mult-adds")):
            if f"{key}_before" in r:
                lines.append(f"{label:<11} {r[f'{key}_before']:,} -> {r[f'{key}_after']:,} ({self.ratio(key):.3f}x)")
        for key in ("loss", "accuracy"):
            if f"{key}_before" in r:
                lines.append(f"{key:<11} {r[f'{key}_before']:.4f} -> {r[f'{key}_after']:.4f}")
        if "seconds" in r:
            lines.append(f"{'time':<11} {r['seconds']:.1f} s")
        return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
