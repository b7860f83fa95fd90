"""What every pruner returns: :class:`PruneResult`, with one :class:`LayerRecord` per pruned layer or group and
one :class:`PruneReport` of whole-network numbers.

``prune_two_layer``, ``prune_model``, the baselines (``greedyprune.baselines.prune_like``) and
``prune_transformer`` all return one; code that compares methods reads the same fields from each.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Iterator

import torch
from torch import nn

from .errors import InvalidOptionError
from .selection.result import SelectionResult

__all__ = ["LayerRecord", "PruneReport", "PruneResult"]

_UNIT_KEYS = ("channels", "units")


class _Record(Mapping):
    """Typed dataclass fields plus an ``extra`` dict, read and written as one dict (what a pruner's records were
    before they were typed): ``record[key]`` is a field or an ``extra`` entry; iteration lists every field (set or
    None), then ``extra``; ``record[key] = value`` and :meth:`update` set a field or an ``extra`` entry."""

    extra: dict

    def _common(self) -> tuple[str, ...]:
        """The fields read as entries (every field but ``extra`` and the record's own settings)."""
        return tuple(f.name for f in fields(self) if f.name not in ("unit", "extra"))

    def _field(self, key: str) -> str | None:
        """The field an entry ``key`` reads, or None for an ``extra`` entry."""
        return key if key in self._common() else None

    def _key(self, name: str) -> str:
        """The entry a field is listed under."""
        return name

    def __getitem__(self, key: str):
        name = self._field(key)
        return self.extra[key] if name is None else getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        for name in self._common():
            yield self._key(name)
        yield from self.extra

    def __len__(self) -> int:
        return len(self._common()) + len(self.extra)

    def __setitem__(self, key: str, value) -> None:
        name = self._field(key)
        if name is None:
            self.extra[key] = value
        else:
            setattr(self, name, value)

    def update(self, entries: Mapping = (), /, **more) -> None:
        """Set fields (or ``extra`` entries) by name, as ``dict.update``."""
        for key, value in {**dict(entries), **more}.items():
            self[key] = value


@dataclass(eq=False)
class LayerRecord(_Record):
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

    def _field(self, key: str) -> str | None:
        return "units" if key in _UNIT_KEYS else super()._field(key)

    def _key(self, name: str) -> str:
        return self.unit if name == "units" else name


#: What :func:`greedyprune.metrics.measure_model` measures; a report lists each as ``<name>_before`` and
#: ``<name>_after``.
MEASURES = ("params", "macs", "loss", "accuracy")


@dataclass(eq=False)
class PruneReport(_Record):
    """Whole-network numbers of one pruning run: a typed record that still reads as the dict it was.

    Every pruner fills the same fields, None where it does not measure one (the baselines measure no loss or
    accuracy, a transformer no multiply-adds); the "before" and "after" numbers come from one helper,
    :func:`greedyprune.metrics.measure_model`, built into a report by :meth:`from_measures`. Anything
    pruner-specific is in ``extra``: the deep search's ``rule``, ``value``, ``bn``, ``recalibrated``,
    ``holdout``, ``step_batch``; a transformer's ``method``, ``refit``, ``ridge``, ``mlp_widths``, ...

    The report is also a mapping over the same entries, as before: ``report["macs_after"]``,
    ``report.get("rule")``, ``"bn" in report``, ``dict(report)``; ``report.update(...)`` and
    ``report[key] = value`` set a field, or an entry of ``extra``. As in :class:`LayerRecord`, every common
    field is listed whether or not it was measured: ``"macs_after" in report`` is always true, and
    ``report["macs_after"]`` is None where multiply-adds were not counted - ask :meth:`measured` (or
    ``report.get("macs_after") is not None``). A report equals any mapping of the same entries, its None
    fields included (``report == dict(report)``). :meth:`to_dict` is the plain, JSON-ready form that
    savers write; :meth:`from_dict` reads it back, and reads a report saved before the fields were typed
    (without its None entries).

    Attributes:
        params_before, params_after: parameters of the network before and after pruning.
        macs_before, macs_after: multiply-adds of one forward pass on one example
            (:func:`~greedyprune.metrics.count_macs`).
        loss_before, loss_after: the network's loss on the evaluation examples (two-layer nets: the selection's
            loss).
        accuracy_before, accuracy_after: its accuracy on them.
        eval_examples: how many examples the loss and accuracy were measured on.
        input_shape: one example's shape (what multiply-adds were counted on).
        seconds: the time the whole pruning took.
        extra: pruner-specific entries.
    """

    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    eval_examples: int | None = None
    input_shape: list[int] | None = None
    seconds: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entries: Mapping | None) -> PruneReport:
        """A report from a plain dict of the former kind (the common entries, the rest going to ``extra``), such
        as a saved one; a report is returned as it is, None gives an empty one."""
        if isinstance(entries, PruneReport):
            return entries
        report = cls()
        report.update(entries or {})
        return report

    @classmethod
    def from_measures(cls, before: Mapping, after: Mapping, /, **entries) -> PruneReport:
        """The report of two :func:`~greedyprune.metrics.measure_model` results (``before["params"]`` becomes
        ``params_before``, ...) and further ``entries`` (common fields or ``extra``), which take precedence."""
        report = cls()
        for when, measures in (("before", before), ("after", after)):
            report.update({f"{key}_{when}": value for key, value in measures.items() if key in MEASURES})
        report.update(entries)
        return report

    def copy(self) -> PruneReport:
        """A shallow copy (its own ``extra``), as ``dict.copy``."""
        return replace(self, extra=dict(self.extra))

    def measured(self, key: str) -> bool:
        """Whether ``key`` (``"params"``, ``"macs"``, ``"loss"``, ``"accuracy"``) was measured before and after."""
        return self.get(f"{key}_before") is not None and self.get(f"{key}_after") is not None

    def to_dict(self) -> dict:
        """The entries as a plain dict of plain values (tuples as lists; numpy and 0-d torch scalars as Python
        numbers), None fields included: what a JSON or weights-only file stores."""
        return {key: _plain(value) for key, value in self.items()}


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


@dataclass
class PruneResult:
    """A pruned network and how it was obtained.

    Attributes:
        model: the pruned network, a plain ``nn.Module``, physically smaller than the original.
        kept: layer or group name -> kept unit / channel indices (in the original numbering), ascending.
        counts: layer or group name -> how many times each original unit was selected (all zeros but the
            kept ones; above 1 where a unit was chosen again with replacement). Empty for criteria that
            select no multiset (magnitude baselines).
        report: a :class:`PruneReport` of whole-network numbers, the same fields from every pruner:
            ``params_before`` / ``params_after``, ``macs_*``, ``loss_*``, ``accuracy_*`` (None where the pruner
            does not measure them), ``eval_examples``, ``input_shape``, ``seconds``, and the pruner's own entries
            in ``extra``; a plain dict given here is turned into one.
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
    report: PruneReport = field(default_factory=PruneReport)
    selection: SelectionResult | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    history: list = field(default_factory=list, repr=False)
    method: str = "gfs"

    def __post_init__(self):
        self.layers = [LayerRecord.from_dict(record) for record in self.layers]
        self.report = PruneReport.from_dict(self.report)

    def __iter__(self) -> Iterator:
        """``model, selection = result``: unpacking gives the pruned model and the selection."""
        return iter((self.model, self.selection))

    def ratio(self, key: str) -> float:
        """``report[key + "_after"] / report[key + "_before"]``, e.g. ``ratio("macs")``.

        Raises:
            InvalidOptionError: the pruner did not measure ``key`` (the report holds None).
        """
        report = PruneReport.from_dict(self.report)
        if not report.measured(key):
            raise InvalidOptionError(f"the report has no {key} before and after: this pruner does not measure {key} "
                                     f"({key}_before={report.get(f'{key}_before')!r})")
        return report[f"{key}_after"] / report[f"{key}_before"]

    def summary(self) -> str:
        """A per-layer table and the before -> after numbers, as text."""
        from ._text import format_table

        lines = []
        if self.layers:
            header = ["layer", "units", "kept", "steps", "loss", "acc"]
            rows = [[str(g.name), _fmt(g.units, ""), _fmt(g.kept, ""), _fmt(g.steps, ""), _fmt(g.loss, ".4f"),
                     _fmt(g.accuracy, ".3f")] for g in map(LayerRecord.from_dict, self.layers)]
            lines += [format_table(header, rows), ""]
        r = PruneReport.from_dict(self.report)
        for key, label in (("params", "params"), ("macs", "mult-adds")):
            if r.measured(key):
                lines.append(f"{label:<11} {r[f'{key}_before']:,} -> {r[f'{key}_after']:,} ({self.ratio(key):.3f}x)")
        for key in ("loss", "accuracy"):
            if r.measured(key):
                lines.append(f"{key:<11} {r[f'{key}_before']:.4f} -> {r[f'{key}_after']:.4f}")
        if r.seconds is not None:
            lines.append(f"{'time':<11} {r['seconds']:.1f} s")
        return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
