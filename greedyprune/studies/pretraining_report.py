"""Tables of the pre-training study (Figure 1 of the paper) and the analysis behind its figures.

Input everywhere is the list of row dicts of :meth:`greedyprune.studies.store.ResultsStore.rows`
(any iterable of mappings with at least ``width``, ``size``, ``trial``, ``iteration``,
``pruned_accuracy`` and ``dense_accuracy``; ``k``, ``prune_to``, ``parameterization``, ``distinct``,
``reached`` and the ``direct_*`` columns are used when present; a pandas DataFrame works too).

The red line follows the paper's definition (Section 5): the reference is the best mean pruned accuracy
reached on the full data set - the largest size of the study, which ``reference="full"`` makes the whole
data set - and each size's threshold is the first checkpoint whose mean pruned accuracy reaches it.
Per-trial thresholds (each trial's curve against the same reference) show how much of the line is noise.
The analysis behind the tables and figures (summaries, the red line, the pruned-vs-direct comparison,
Lemma 1's gaps) is in :mod:`greedyprune.studies.pretraining_summary`, re-exported here; the figures are in
:mod:`greedyprune.studies.pretraining_figures`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .._text import format_table
from .pretraining_summary import (CONFIDENCE, THRESHOLD_RTOL, WidthSummary, as_records, confidence_halfwidth,
                                  direct_comparison, k_label, lemma1_gaps, summarize, threshold_iterations)

__all__ = [
    "WidthSummary",
    "summarize",
    "threshold_iterations",
    "confidence_halfwidth",
    "direct_comparison",
    "direct_table",
    "summary_table",
    "lemma1_gaps",
    "plot_figure1",
    "plot_accuracy_curves",
    "plot_lemma1",
    "plot_direct",
    "plot_study",
    "report",
    "THRESHOLD_RTOL",
    "CONFIDENCE",
    "as_records",
    "k_label",
]


# ------------------------------------------------------------------- table
def _pm(mean: float, spread: float, fmt: str = ".4f") -> str:
    if not np.isfinite(mean):
        return "n/a"
    plain = fmt.lstrip("+")
    return f"{mean:{fmt}}" + (f" ± {spread:{plain}}" if np.isfinite(spread) else "")


def summary_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Plain-text table per width: size | threshold iteration (mean curve) | per-trial thresholds |
    pruned acc at iteration 0 | best pruned acc (at iteration) | final dense acc | distinct neurons kept,
    preceded by a line giving the reference accuracy and what k counts. ``±`` is the 95% t-interval over
    trials."""
    summaries = summarize(rows)
    blocks = []
    for s in summaries:
        largest = int(np.argmax(s.sizes))
        ref_row = s.pruned_mean[largest]
        if np.isfinite(s.reference):
            ref_it = s.iterations[int(np.nanargmax(ref_row))]
            ref_line = (f"reference accuracy {s.reference:.4f} (best mean pruned accuracy "
                        f"on size {s.sizes[largest]} - the full data set of the study - at iteration {ref_it})")
        else:
            ref_line = "reference accuracy: n/a (no results on the largest size)"
        head = f"width {s.width} ({k_label([s])}): {ref_line}"
        if s.unreached:
            head += (f"\n  note: {s.unreached} row(s) stopped at the step cap with fewer than k distinct neurons "
                     f"(column 'distinct')")
        header = ["size", "threshold", "per trial", "dense reaches it", "pruned acc @ 0", "best pruned acc (iter)",
                  "final dense acc", "distinct @ 0 / last"]
        body = []
        j0 = s.iterations.index(0) if 0 in s.iterations else None
        for i, size in enumerate(s.sizes):
            t = s.thresholds[i]
            at0 = _pm(s.pruned_mean[i, j0], s.pruned_ci[i, j0]) if j0 is not None else "n/a"
            m = s.pruned_mean[i]
            best = "n/a"
            if np.any(np.isfinite(m)):
                jb = int(np.nanargmax(m))
                best = f"{m[jb]:.4f} ({s.iterations[jb]})"
            fin = np.flatnonzero(np.isfinite(s.dense_mean[i]))
            final = _pm(s.dense_mean[i, fin[-1]], s.dense_ci[i, fin[-1]]) if fin.size else "n/a"
            trial_txt = "/".join("never" if x is None else str(x) for x in s.trial_thresholds[i])
            nd = s.distinct_mean[i]
            distinct = (f"{nd[j0 if j0 is not None else 0]:.0f} / {nd[-1]:.0f}" if np.isfinite(nd).any() else "n/a")
            dt = s.dense_thresholds[i]
            body.append([str(size), "never" if t is None else str(t), trial_txt, "never" if dt is None else str(dt),
                         at0, best, final, distinct])
        blocks.append(head + "\n" + format_table(header, body))
    text = "\n\n".join(blocks) + "\n"
    text += ("(± : 95% t-interval over trials; threshold: first checkpoint whose mean pruned accuracy reaches the "
             "reference; per trial: the same rule on each trial's curve; dense reaches it: the same rule on the dense "
             "net's mean accuracy)\n")
    return text


def direct_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Pruned vs directly trained nets at the last checkpoint (see :func:`direct_comparison`) as text: mean
    training loss and accuracy, and the paired difference pruned - direct with its 95% interval."""
    entries = direct_comparison(rows)
    if not entries:
        return "no directly trained nets in these rows (run the study with --direct)\n"
    header = ["width", "size", "n (B its)", "pruned loss", "direct loss", "direct-B loss", "Δ loss vs direct",
              "Δ loss vs B", "pruned wins", "pruned acc", "direct acc", "direct-B acc"]
    body = []
    for e in entries:
        def mean(key):
            return f"{np.nanmean(e[key]):.4f}"

        body.append([str(e["width"]), str(e["size"]), f"{e['direct_width']} ({e['b_iterations']})",
                     mean("pruned_loss"), mean("direct_e_loss"), mean("direct_b_loss"),
                     _pm(*e["diff_e_loss"], fmt="+.4f"), _pm(*e["diff_b_loss"], fmt="+.4f"),
                     f"{e['pruned_wins_e']}/{e['trials']}, {e['pruned_wins_b']}/{e['trials']}",
                     mean("pruned_accuracy"), mean("direct_e_accuracy"), mean("direct_b_accuracy")])
    its = sorted({e["iteration"] for e in entries})
    return (f"pruned (no fine-tuning) vs a net of the pruned width n trained directly, at iteration "
            f"{'/'.join(map(str, its))}: training loss and accuracy on the sub-dataset\n"
            + format_table(header, body)
            + "\n(direct: same iterations as the dense net; direct-B: same multiply-adds (B its); Δ = pruned - "
              "direct, mean over trials ± 95% t-interval, paired by trial (negative: pruned lower); pruned wins: "
              "trials with the lower loss, vs direct and vs direct-B)\n")


def plot_figure1(rows, path) -> None:
    """See :func:`greedyprune.studies.pretraining_figures.plot_figure1`."""
    from .pretraining_figures import plot_figure1 as plot

    plot(rows, path)


def plot_accuracy_curves(rows, path) -> None:
    """See :func:`greedyprune.studies.pretraining_figures.plot_accuracy_curves`."""
    from .pretraining_figures import plot_accuracy_curves as plot

    plot(rows, path)


def plot_lemma1(rows, path) -> None:
    """See :func:`greedyprune.studies.pretraining_figures.plot_lemma1`."""
    from .pretraining_figures import plot_lemma1 as plot

    plot(rows, path)


def plot_direct(rows, path) -> None:
    """See :func:`greedyprune.studies.pretraining_figures.plot_direct`."""
    from .pretraining_figures import plot_direct as plot

    plot(rows, path)


def plot_study(rows: Iterable[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``figure1.png``, ``accuracy_curves.png``, ``lemma1_gap.png`` and (with directly trained nets)
    ``direct_vs_pruned.png`` into ``out_dir`` (created if absent) and return their paths."""
    from .pretraining_figures import plot_study as plot

    return plot(as_records(rows), out_dir)


def report(rows: Iterable[Mapping[str, Any]], out_dir: str | Path, draw: bool = True) -> str:
    """The study's summary table and the pruned-vs-direct table; with ``draw`` its figures are (re)written
    into ``out_dir`` too."""
    records = as_records(rows)
    text = summary_table(records)
    if any(r.get("direct_width") not in (None,) and not (isinstance(r.get("direct_width"), float)
                                                        and math.isnan(r["direct_width"])) for r in records):
        text += "\n" + direct_table(records)
    if draw:
        text += "".join(f"\nwrote {p}" for p in plot_study(records, out_dir))
    return text
