"""The analysis of the pre-training study (Figure 1 of the paper): per-width summaries over trials, the red
line, the pruned-vs-direct comparison and Lemma 1's gaps - what both the tables
(:mod:`~greedyprune.studies.pretraining_report`) and the figures (:mod:`~greedyprune.studies.pretraining_figures`)
are drawn from.

Input everywhere is the list of row dicts of :meth:`greedyprune.studies.store.ResultsStore.rows`
(any iterable of mappings with at least ``width``, ``size``, ``trial``, ``iteration``,
``pruned_accuracy`` and ``dense_accuracy``; ``k``, ``prune_to``, ``parameterization``, ``distinct``,
``reached`` and the ``direct_*`` columns are used when present; a pandas DataFrame works too).

The red line follows the paper's definition (Section 5): the reference is the best mean pruned accuracy
reached on the full data set - the largest size of the study, which ``reference="full"`` makes the whole
data set - and each size's threshold is the first checkpoint whose mean pruned accuracy reaches it.
Per-trial thresholds (each trial's curve against the same reference) show how much of the line is noise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import InvalidOptionError

__all__ = ["CONFIDENCE", "THRESHOLD_RTOL", "WidthSummary", "as_records", "confidence_halfwidth", "direct_comparison",
           "k_label", "lemma1_gaps", "summarize", "threshold_iterations"]

#: Slack in the ``>= reference`` comparison of the red-line rule, so that a mean
#: equal to the reference up to float rounding still counts as reaching it.
THRESHOLD_RTOL = 1e-9
#: Confidence level of the bands and intervals over trials (Student's t).
CONFIDENCE = 0.95

_REQUIRED = ("width", "size", "trial", "iteration", "pruned_accuracy", "dense_accuracy")


@dataclass
class WidthSummary:
    """Per-width aggregate over trials of the study's rows."""

    width: int
    sizes: list[int]  # ascending
    iterations: list[int]  # ascending
    pruned_mean: np.ndarray  # (len(sizes), len(iterations)), NaN where missing
    pruned_std: np.ndarray  # population std (ddof=0) over trials
    dense_mean: np.ndarray
    trials: np.ndarray  # number of rows (trials) per cell
    reference: float  # best mean pruned accuracy on the largest size (the full data set)
    thresholds: list[int | None]  # per size: first iteration reaching reference
    dense_std: np.ndarray | None = None  # population std of dense accuracy
    k_values: list[int] = field(default_factory=list)  # distinct k of the rows
    pruned_ci: np.ndarray | None = None  # half width of the 95% t-interval of the mean over trials
    dense_ci: np.ndarray | None = None
    trial_thresholds: list[list[int | None]] = field(default_factory=list)  # per size, per trial
    prune_to: str | None = None  # "distinct" / "steps" (None for rows that predate the column)
    parameterization: str | None = None
    distinct_mean: np.ndarray | None = None  # mean distinct neurons kept per cell
    unreached: int = 0  # rows of prune_to="distinct" that stopped at the step cap below k distinct
    dense_thresholds: list[int | None] = field(default_factory=list)  # the same rule on the dense mean


# ---------------------------------------------------------------- analysis
def threshold_iterations(
    sizes: Sequence[int], iterations: Sequence[int], pruned_mean: Any, reference: float | None = None
) -> tuple[float, list[int | None]]:
    """The red-line rule of Figure 1.

    ``reference`` (unless given) is the best (NaN-ignoring) value of ``pruned_mean`` in the
    row of the largest size; for each size (in the order of ``sizes``) the
    threshold is the smallest iteration whose value is ``>= reference`` (up to
    :data:`THRESHOLD_RTOL` relative slack), or ``None`` if no iteration
    reaches it.  NaN cells never reach it.  If the largest size has no value at
    all, ``reference`` is NaN and every threshold is ``None``.
    """
    pm = np.asarray(pruned_mean, dtype=float)
    sizes = list(sizes)
    iterations = list(iterations)
    if pm.shape != (len(sizes), len(iterations)):
        raise InvalidOptionError(
            f"pruned_mean has shape {pm.shape}, expected "
            f"(len(sizes), len(iterations)) = ({len(sizes)}, {len(iterations)})"
        )
    if not sizes:
        raise InvalidOptionError("no dataset sizes")
    if reference is None:
        ref_row = pm[int(np.argmax(np.asarray(sizes)))]
        if len(iterations) == 0 or np.all(np.isnan(ref_row)):
            return math.nan, [None] * len(sizes)
        reference = float(np.nanmax(ref_row))
    if math.isnan(reference):
        return math.nan, [None] * len(sizes)
    cutoff = reference - THRESHOLD_RTOL * max(1.0, abs(reference))
    order = sorted(range(len(iterations)), key=lambda j: iterations[j])
    thresholds: list[int | None] = []
    for i in range(len(sizes)):
        hit = None
        for j in order:
            v = pm[i, j]
            if not np.isnan(v) and v >= cutoff:
                hit = _py(iterations[j])
                break
        thresholds.append(hit)
    return reference, thresholds


def confidence_halfwidth(values: Sequence[float], level: float = CONFIDENCE) -> float:
    """Half width of the Student-t confidence interval of the mean of ``values`` (NaN ignored); NaN for
    fewer than two values."""
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if a.size < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))


def _py(x: Any) -> Any:
    """numpy scalar -> python scalar."""
    return x.item() if hasattr(x, "item") else x


def as_records(rows: Any) -> list[Mapping[str, Any]]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        rows = rows.to_dict("records")
    records = list(rows)
    if not records:
        raise InvalidOptionError("no results to summarize (empty list of rows)")
    for i, r in enumerate(records):
        missing = [c for c in _REQUIRED if c not in r]
        if missing:
            raise InvalidOptionError(f"result row {i} lacks the columns {missing}")
    return records


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _one(rows, column: str):
    """The single value of a text column over rows (None when absent, "mixed" when several)."""
    values = {r.get(column) for r in rows if r.get(column) is not None}
    return values.pop() if len(values) == 1 else ("mixed" if values else None)


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[WidthSummary]:
    """Aggregate the rows over trials: one :class:`WidthSummary` per width, ascending.

    Means and (population, ``ddof=0``) standard deviations ignore NaN values;
    ``trials`` counts the rows of each cell.  Cells without rows are NaN (and 0
    trials).  ``pruned_ci`` / ``dense_ci`` are 95% t-interval half widths over trials.
    """
    records = as_records(rows)
    by_width: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_width[int(r["width"])].append(r)
    return [_summarize_width(width, by_width[width]) for width in sorted(by_width)]


def _summarize_width(width: int, wrows: list[Mapping[str, Any]]) -> WidthSummary:
    sizes = sorted({int(r["size"]) for r in wrows})
    iterations = sorted({int(r["iteration"]) for r in wrows})
    si = {s: i for i, s in enumerate(sizes)}
    ij = {it: j for j, it in enumerate(iterations)}
    cells: dict[str, dict[tuple[int, int], list[float]]] = {c: defaultdict(list) for c in ("p", "d", "n")}
    per_trial: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
    for r in wrows:
        cell = (si[int(r["size"])], ij[int(r["iteration"])])
        cells["p"][cell].append(_num(r["pruned_accuracy"]))
        cells["d"][cell].append(_num(r["dense_accuracy"]))
        cells["n"][cell].append(_num(r.get("distinct")))
        per_trial[(si[int(r["size"])], int(r["trial"]))][ij[int(r["iteration"])]] = _num(r["pruned_accuracy"])
    shape = (len(sizes), len(iterations))
    pm, ps, dm, ds, pci, dci, nm = (np.full(shape, np.nan) for _ in range(7))
    trials = np.zeros(shape, dtype=int)
    for cell, vals in cells["p"].items():
        trials[cell] = len(vals)
        pm[cell], ps[cell] = _mean_std(vals)
        dm[cell], ds[cell] = _mean_std(cells["d"][cell])
        pci[cell], dci[cell] = confidence_halfwidth(vals), confidence_halfwidth(cells["d"][cell])
        nm[cell] = _mean_std(cells["n"][cell])[0]
    reference, thresholds = threshold_iterations(sizes, iterations, pm)
    dense_thresholds = threshold_iterations(sizes, iterations, dm, reference)[1]
    trial_thresholds = []
    for i in range(len(sizes)):
        found = []
        for (row, _trial), curve in sorted(per_trial.items()):
            if row == i:
                values = np.array([[curve.get(j, np.nan) for j in range(len(iterations))]])
                found.append(threshold_iterations([sizes[i]], iterations, values, reference)[1][0])
        trial_thresholds.append(found)
    ks = sorted({int(r["k"]) for r in wrows if r.get("k") is not None
                 and not (isinstance(r.get("k"), float) and math.isnan(r["k"]))})
    unreached = sum(1 for r in wrows if r.get("prune_to") == "distinct" and r.get("reached") in (0, False))
    return WidthSummary(width=width, sizes=sizes, iterations=iterations, pruned_mean=pm, pruned_std=ps,
                        dense_mean=dm, trials=trials, reference=reference, thresholds=thresholds, dense_std=ds,
                        k_values=ks, pruned_ci=pci, dense_ci=dci, trial_thresholds=trial_thresholds,
                        prune_to=_one(wrows, "prune_to"), parameterization=_one(wrows, "parameterization"),
                        distinct_mean=nm, unreached=unreached, dense_thresholds=dense_thresholds)


def _mean_std(vals: list[float]) -> tuple[float, float]:
    a = np.asarray(vals, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std())


def k_label(summaries: list[WidthSummary]) -> str:
    """``"k=50 distinct neurons"`` / ``"k=50 selection steps"`` / ``"k=50"`` (rows without the column)."""
    ks = sorted({k for s in summaries for k in s.k_values})
    text = "k=" + (",".join(str(k) for k in ks) if ks else "?")
    modes = {s.prune_to for s in summaries if s.prune_to}
    if modes == {"distinct"}:
        text += " distinct neurons"
    elif modes == {"steps"}:
        text += " selection steps (at most k distinct neurons)"
    forms = {s.parameterization for s in summaries if s.parameterization}
    if len(forms) == 1:
        text += f", {forms.pop()} parameterisation"
    return text


def direct_comparison(rows: Iterable[Mapping[str, Any]], iteration: int | None = None) -> list[dict]:
    """Ye et al.'s comparison at one checkpoint (default: the last): per (width, size), the pruned net's
    training loss and accuracy against a net of the pruned width trained directly for the same iterations
    (E) and for the same multiply-adds (B), paired by trial. Each entry holds the per-trial values, the
    mean paired difference ``pruned - direct`` with its 95% t-interval, and how many trials the pruned net
    has the lower loss."""
    records = [r for r in as_records(rows) if r.get("direct_width") is not None
               and not (isinstance(r.get("direct_width"), float) and math.isnan(r["direct_width"]))]
    out = []
    for width in sorted({int(r["width"]) for r in records}):
        mine = [r for r in records if int(r["width"]) == width]
        last = iteration if iteration is not None else max(int(r["iteration"]) for r in mine)
        for size in sorted({int(r["size"]) for r in mine}):
            cell = sorted((r for r in mine if int(r["size"]) == size and int(r["iteration"]) == last),
                          key=lambda r: int(r["trial"]))
            if not cell:
                continue
            entry = {"width": width, "size": size, "iteration": last, "trials": len(cell),
                     "direct_width": int(cell[0]["direct_width"]),
                     "distinct": float(np.mean([_num(r.get("distinct")) for r in cell])),
                     "b_iterations": int(cell[0]["direct_b_iterations"])}
            for what in ("loss", "accuracy"):
                pruned = [_num(r[f"pruned_{what}"]) for r in cell]
                entry[f"pruned_{what}"] = pruned
                entry[f"dense_{what}"] = [_num(r[f"dense_{what}"]) for r in cell]
                for tag, col in (("e", f"direct_{what}"), ("b", f"direct_b_{what}")):
                    direct = [_num(r.get(col)) for r in cell]
                    diff = [p - d for p, d in zip(pruned, direct)]
                    entry[f"direct_{tag}_{what}"] = direct
                    entry[f"diff_{tag}_{what}"] = (float(np.nanmean(diff)) if diff else math.nan,
                                                   confidence_halfwidth(diff))
            for tag in ("e", "b"):
                entry[f"pruned_wins_{tag}"] = sum(p < d for p, d in zip(entry["pruned_loss"],
                                                                        entry[f"direct_{tag}_loss"]))
            out.append(entry)
    return out


def lemma1_gaps(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Lemma 1 per (width, largest size, iteration): the mean over trials of the per-step gap
    ``l(u_k) - l(dense)`` and its fitted rate ``gap ~ K^rate`` over the steps with a positive mean gap.
    Trials that took different numbers of steps (``prune_to="distinct"``) are averaged over their common
    steps."""
    from ..fitting import fit_power_law

    records = [r for r in as_records(rows) if r.get("losses")]
    out = []
    for width in sorted({int(r["width"]) for r in records}):
        mine = [r for r in records if int(r["width"]) == width]
        size = max(int(r["size"]) for r in mine)
        for iteration in sorted({int(r["iteration"]) for r in mine}):
            cell = [r for r in mine if int(r["size"]) == size and int(r["iteration"]) == iteration]
            if not cell:
                continue
            steps = min(len(r["losses"]) for r in cell)
            gaps = np.mean([np.asarray(r["losses"][:steps], dtype=float) - float(r["dense_loss"]) for r in cell],
                           axis=0)
            ks = np.arange(1, gaps.size + 1)
            keep = gaps > 0
            rate = stderr = math.nan
            if keep.sum() >= 3:
                rate, stderr, _ = fit_power_law(ks[keep], gaps[keep])
            out.append({"width": width, "size": size, "iteration": iteration, "gaps": gaps, "rate": rate,
                        "stderr": stderr, "positive_steps": int(keep.sum())})
    return out
