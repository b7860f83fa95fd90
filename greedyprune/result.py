"""What every pruner returns: :class:`PruneResult`, with one :class:`LayerRecord` per pruned layer or group.

``prune_two_layer``, ``prune_model``, the baselines (``greedyprune.baselines.prune_like``) and
``prune_transformer`` all return one; code that compares methods reads the same fields from each.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Iterator

from torch import nn

from .errors import InvalidOptionError
from .selection.result import SelectionResult

__all__ = ["LayerRecord", "PruneResult"]

_UNIT_KEYS = ("channels", "units")


@dataclass(eq=False)
class LayerRecord(Mapping):
    """What a pruner did to one layer or channel group: a typed record that still reads as the dict it was.

    The fields every pruner shares are attributes (``record.kept``); anything pruner-specific is in ``extra``
    (the block reconstruction's ``ridge``, a transformer block's ``kind``, ``loss_before_refit`` and GFS
    ``selection``). The record is also a read-only mapping over the same entries, as before:
    ``record["name"]``, ``record.get("loss")``, ``"ridge" in record``, ``dict(record)``; ``units`` reads as
    ``record["channels"]`` for a channel group (``unit="channels"``) and ``record["units"]`` otherwise (each
    name reads either way). ``record.update(...)`` and ``record[key] = value`` set a field, or an entry of
    ``extra``. Fields a pruner does not measure are None.

    Attributes:
        name: the layer or group (its key in ``PruneResult.kept``).
        units: its channels (a channel group) or units (neurons, heads) before pruning.
        kept: how many of them are kept.
        steps: greedy selection steps (None where nothing was selected greedily).
        rule: the stopping rule that ended the group's search.
        loss: its loss when it stopped (the network's held-out loss, or a block's relative reconstruction
            error).
        accuracy: the network's accuracy when it stopped (network objective only).
        seconds: time spent on it.
        evaluator: what scored the candidates: "fast" / "reference" (network objective), "reconstruction",
            "local".
        unit: "channels" or "units": what ``units`` counts, and the key it is listed under.
        extra: pruner-specific entries.
    """

    name: str
    units: int | None = None
    kept: int | None = None
    steps: int | None = None
    rule: str | None = None
    loss: float | None = None
    accuracy: float | None = None
    seconds: float | None = None
    evaluator: str | None = None
    unit: str = "units"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.unit not in _UNIT_KEYS:
            raise InvalidOptionError(f"LayerRecord unit must be one of {_UNIT_KEYS}, got {self.unit!r}")

    @classmethod
    def from_dict(cls, entries: Mapping) -> LayerRecord:
        """A record from a plain dict of the former kind (``"channels"`` or ``"units"``, the common entries, the
        rest going to ``extra``); a record is returned as it is."""
        if isinstance(entries, LayerRecord):
            return entries
        record = cls(name=entries["name"], unit="channels" if "channels" in entries else "units")
        record.update({k: v for k, v in entries.items() if k != "name"})
        return record

    def _common(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.name not in ("unit", "extra"))

    def __getitem__(self, key: str):
        if key in _UNIT_KEYS:
            return self.units
        if key in self._common():
            return getattr(self, key)
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        for key in self._common():
            yield self.unit if key == "units" else key
        yield from self.extra

    def __len__(self) -> int:
        return len(self._common()) + len(self.extra)

    def __setitem__(self, key: str, value) -> None:
        if key in _UNIT_KEYS:
            self.units = value
        elif key in self._common():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def update(self, entries: Mapping = (), /, **more) -> None:
        """Set fields (or ``extra`` entries) by name, as ``dict.update``."""
        for key, value in {**dict(entries), **more}.items():
            self[key] = value


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
        layers: one :class:`LayerRecord` per pruned layer / group (name, units before and kept, steps,
            stopping rule, loss and accuracy when it stopped, seconds, pruner-specific ``extra``); plain dicts
            given here are turned into records.
        history: Torch-Pruning's pruning history, replayable on a fresh dense model (deep networks).
        method: what selected the units: ``"gfs"``, ``"l1"``, ``"bn"``, ...

    For two-layer nets the old form still works: ``model, selection = prune_two_layer(...)``.
    """

    model: nn.Module
    kept: dict[str, list[int]]
    counts: dict[str, list[int]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    selection: SelectionResult | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    history: list = field(default_factory=list, repr=False)
    method: str = "gfs"

    def __post_init__(self):
        self.layers = [LayerRecord.from_dict(record) for record in self.layers]

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
            rows = [[str(g.name), _fmt(g.units, ""), _fmt(g.kept, ""), _fmt(g.steps, ""), _fmt(g.loss, ".4f"),
                     _fmt(g.accuracy, ".3f")] for g in map(LayerRecord.from_dict, self.layers)]
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
