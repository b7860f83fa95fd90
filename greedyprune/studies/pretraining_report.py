"""Figures and tables of the pre-training study (Figure 1 of the paper).

Input everywhere is the list of row dicts of :meth:`greedyprune.storage.ResultsStore.rows`
(any iterable of mappings with at least ``width``, ``size``, ``trial``,
``iteration``, ``pruned_accuracy`` and ``dense_accuracy``; ``k`` is used for
titles when present; a pandas DataFrame works too).

The figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg
canvas, never through pyplot, so no window is ever opened and no global
pyplot state is touched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .._text import format_table

__all__ = [
    "WidthSummary",
    "summarize",
    "threshold_iterations",
    "plot_figure1",
    "plot_accuracy_curves",
    "summary_table",
    "plot_study",
    "THRESHOLD_RTOL",
]

#: Slack in the ``>= reference`` comparison of the red-line rule, so that a mean
#: equal to the reference up to float rounding still counts as reaching it.
THRESHOLD_RTOL = 1e-9

_REQUIRED = ("width", "size", "trial", "iteration", "pruned_accuracy", "dense_accuracy")
_DPI = 130


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
    reference: float  # best mean pruned accuracy on the largest size
    thresholds: list[int | None]  # per size: first iteration reaching reference
    dense_std: np.ndarray | None = None  # population std of dense accuracy
    k_values: list[int] = field(default_factory=list)  # distinct k of the rows


# ---------------------------------------------------------------- analysis
def threshold_iterations(
    sizes: Sequence[int], iterations: Sequence[int], pruned_mean: Any
) -> tuple[float, list[int | None]]:
    """The red-line rule of Figure 1.

    ``reference`` is the best (NaN-ignoring) value of ``pruned_mean`` in the
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
        raise ValueError(
            f"pruned_mean has shape {pm.shape}, expected "
            f"(len(sizes), len(iterations)) = ({len(sizes)}, {len(iterations)})"
        )
    if not sizes:
        raise ValueError("no dataset sizes")
    largest = int(np.argmax(np.asarray(sizes)))
    ref_row = pm[largest]
    if len(iterations) == 0 or np.all(np.isnan(ref_row)):
        return math.nan, [None] * len(sizes)
    reference = float(np.nanmax(ref_row))
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


def _py(x: Any) -> Any:
    """numpy scalar -> python scalar."""
    return x.item() if hasattr(x, "item") else x


def _as_records(rows: Any) -> list[Mapping[str, Any]]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        rows = rows.to_dict("records")
    records = list(rows)
    if not records:
        raise ValueError("no results to summarize (empty list of rows)")
    for i, r in enumerate(records):
        missing = [c for c in _REQUIRED if c not in r]
        if missing:
            raise ValueError(f"result row {i} lacks the columns {missing}")
    return records


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[WidthSummary]:
    """Aggregate the rows over trials: one :class:`WidthSummary` per width, ascending.

    Means and (population, ``ddof=0``) standard deviations ignore NaN values;
    ``trials`` counts the rows of each cell.  Cells without rows are NaN (and 0
    trials).
    """
    records = _as_records(rows)
    by_width: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_width[int(r["width"])].append(r)
    out = []
    for width in sorted(by_width):
        wrows = by_width[width]
        sizes = sorted({int(r["size"]) for r in wrows})
        iterations = sorted({int(r["iteration"]) for r in wrows})
        si = {s: i for i, s in enumerate(sizes)}
        ij = {it: j for j, it in enumerate(iterations)}
        pruned: dict[tuple[int, int], list[float]] = defaultdict(list)
        dense: dict[tuple[int, int], list[float]] = defaultdict(list)
        for r in wrows:
            cell = (si[int(r["size"])], ij[int(r["iteration"])])
            pruned[cell].append(_num(r["pruned_accuracy"]))
            dense[cell].append(_num(r["dense_accuracy"]))
        shape = (len(sizes), len(iterations))
        pm, ps, dm, ds = (np.full(shape, np.nan) for _ in range(4))
        trials = np.zeros(shape, dtype=int)
        for cell, vals in pruned.items():
            trials[cell] = len(vals)
            pm[cell], ps[cell] = _mean_std(vals)
            dm[cell], ds[cell] = _mean_std(dense[cell])
        reference, thresholds = threshold_iterations(sizes, iterations, pm)
        ks = sorted({int(r["k"]) for r in wrows if r.get("k") is not None
                     and not (isinstance(r.get("k"), float) and math.isnan(r["k"]))})
        out.append(
            WidthSummary(
                width=width, sizes=sizes, iterations=iterations,
                pruned_mean=pm, pruned_std=ps, dense_mean=dm, trials=trials,
                reference=reference, thresholds=thresholds,
                dense_std=ds, k_values=ks,
            )
        )
    return out


def _mean_std(vals: list[float]) -> tuple[float, float]:
    a = np.asarray(vals, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std())


# ----------------------------------------------------------------- figures
def _k_label(summaries: list[WidthSummary]) -> str:
    ks = sorted({k for s in summaries for k in s.k_values})
    if not ks:
        return "k=?"
    return "k=" + ",".join(str(k) for k in ks)


def _new_figure(n_panels: int, panel_w: float, panel_h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_w * n_panels + 1.2, panel_h), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return path


def _fmt_size(s: int) -> str:
    return f"{s:,}"


def plot_figure1(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Figure 1: per width, a heat map of mean pruned accuracy over
    dataset size (y, smallest at the bottom) x pre-training iteration (x), with
    the red line through the first iteration at which each size reaches the
    best mean pruned accuracy of the largest size.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    summaries = summarize(rows)
    n_it = max(len(s.iterations) for s in summaries)
    n_sz = max(len(s.sizes) for s in summaries)
    panel_w = min(max(0.48 * n_it + 1.6, 3.6), 7.5)
    panel_h = min(max(0.36 * n_sz + 2.4, 3.4), 6.5)
    fig, axes = _new_figure(len(summaries), panel_w, panel_h)

    finite = np.concatenate([s.pruned_mean[np.isfinite(s.pruned_mean)] for s in summaries])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    norm = Normalize(vmin=vmin, vmax=vmax)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")

    any_never = False
    image = None
    for ax, s in zip(axes, summaries):
        ns, ni = len(s.sizes), len(s.iterations)
        data = np.ma.masked_invalid(s.pruned_mean)
        image = ax.imshow(data, origin="lower", aspect="auto", cmap=cmap, norm=norm,
                          interpolation="nearest")
        ax.set_xticks(range(ni))
        labels = [str(i) for i in s.iterations]
        rotate = ni * max(len(t) for t in labels) > 40
        ax.set_xticklabels(labels, rotation=45 if rotate else 0,
                           ha="right" if rotate else "center",
                           rotation_mode="anchor" if rotate else "default", fontsize=8)
        ax.set_yticks(range(ns))
        ax.set_yticklabels([_fmt_size(x) for x in s.sizes], fontsize=8)
        ax.set_xlabel("pre-training iteration")
        ax.set_ylabel("dataset size")
        ntr = s.trials[s.trials > 0]
        trial_txt = ""
        if ntr.size:
            lo, hi = int(ntr.min()), int(ntr.max())
            trial_txt = f", {lo} trial{'s' if lo != 1 else ''}" if lo == hi else f", {lo}-{hi} trials"
        ax.set_title(f"width {s.width}{trial_txt}", fontsize=10)

        # red line through the threshold cells of consecutive sizes (a size that
        # never reaches the reference breaks the line), threshold cells outlined
        col = {it: j for j, it in enumerate(s.iterations)}
        xs = [col[t] if t is not None else np.nan for t in s.thresholds]
        ax.plot(xs, range(ns), color="red", linewidth=2, solid_capstyle="round", zorder=3)
        for i, x in enumerate(xs):
            if np.isfinite(x):
                ax.add_patch(Rectangle((x - 0.5, i - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=1.5, zorder=3))
        never = [i for i, t in enumerate(s.thresholds) if t is None]
        if never:
            any_never = True
            ax.plot([ni - 0.5] * len(never), never, linestyle="none", marker="<",
                    color="red", markersize=9, markeredgecolor="darkred",
                    clip_on=False, zorder=5)

        # cell annotations, drawn over the line with a halo of the cell colour
        if ni <= 14 and ns <= 14:
            fs = 7 if ni > 9 else 8
            for i in range(ns):
                for j in range(ni):
                    v = s.pruned_mean[i, j]
                    if not np.isfinite(v):
                        continue
                    rgba = cmap(norm(v))
                    lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs,
                            color="black" if lum > 0.5 else "white", zorder=4,
                            path_effects=[withStroke(linewidth=2.5, foreground=rgba)])

        ax.set_xlim(-0.5, ni - 0.5)
        ax.set_ylim(-0.5, ns - 0.5)

    cbar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.02)
    cbar.set_label("mean pruned accuracy")
    fig.suptitle(f"Pruned accuracy ({_k_label(summaries)})")

    handles = [Line2D([], [], color="red", linewidth=2, marker="s", markersize=8,
                      markerfacecolor="none", label="first iteration reaching the best pruned accuracy "
                            "of the largest size")]
    if any_never:
        handles.append(Line2D([], [], color="red", linestyle="none", marker="<",
                              markersize=8, markeredgecolor="darkred",
                              label="never reaches it (marker at the right edge)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
               fontsize=8, frameon=False)
    _save(fig, path)


def _use_symlog(iterations: Sequence[int]) -> bool:
    its = sorted(set(iterations))
    pos = [i for i in its if i > 0]
    if len(pos) < 3 or pos[-1] / pos[0] < 50:
        return False
    gaps = np.diff(its)
    return gaps.max() > 10 * max(gaps.min(), 1)


def plot_accuracy_curves(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Pruned accuracy (solid, mean with a +-std band) and dense accuracy
    (dashed, same colour) vs pre-training iteration, one curve per dataset
    size, one panel per width.  A dotted grey line marks the reference (best
    mean pruned accuracy of the largest size).
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    summaries = summarize(rows)
    fig, axes = _new_figure(len(summaries), 5.0, 4.2)
    all_sizes = sorted({x for s in summaries for x in s.sizes})
    cmap = colormaps["plasma"]
    colours = {x: cmap(0.05 + 0.8 * (i / max(len(all_sizes) - 1, 1)))
               for i, x in enumerate(all_sizes)}
    for n, (ax, s) in enumerate(zip(axes, summaries)):
        x = np.asarray(s.iterations, dtype=float)
        for i, size in enumerate(s.sizes):
            c = colours[size]
            m, sd, d = s.pruned_mean[i], s.pruned_std[i], s.dense_mean[i]
            ok = np.isfinite(m)
            ax.plot(x[ok], m[ok], color=c, linewidth=1.8, marker="o", markersize=3)
            band = ok & np.isfinite(sd)
            ax.fill_between(x[band], (m - sd)[band], (m + sd)[band], color=c,
                            alpha=0.18, linewidth=0)
            okd = np.isfinite(d)
            ax.plot(x[okd], d[okd], color=c, linewidth=1.2, linestyle="--", alpha=0.9)
        if np.isfinite(s.reference):
            ax.axhline(s.reference, color="0.35", linestyle=":", linewidth=1)
        lo, hi = float(min(s.iterations)), float(max(s.iterations))
        if _use_symlog(s.iterations):
            ax.set_xscale("symlog", linthresh=max(min(i for i in s.iterations if i > 0), 1))
            ax.set_xlim(lo, hi * 1.15)
        else:
            pad = 0.03 * (hi - lo) if hi > lo else 0.5
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("pre-training iteration")
        if n == 0:
            ax.set_ylabel("accuracy on the training set")
        ax.set_title(f"width {s.width}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    size_handles = [Line2D([], [], color=colours[x], linewidth=1.8, marker="o", markersize=3,
                           label=_fmt_size(x)) for x in all_sizes]
    fig.legend(handles=size_handles, title="dataset size", fontsize=8, title_fontsize=8,
               loc="outside right upper", frameon=False)
    style = [Line2D([], [], color="0.2", linewidth=1.8, label="pruned\n(mean ± std)"),
             Line2D([], [], color="0.2", linewidth=1.2, linestyle="--", label="dense"),
             Line2D([], [], color="0.35", linewidth=1, linestyle=":",
                    label="reference\n(best pruned,\nlargest size)")]
    fig.legend(handles=style, fontsize=8, loc="outside right lower", frameon=False)
    fig.suptitle(f"Accuracy vs pre-training iteration ({_k_label(summaries)})")
    _save(fig, path)


# ------------------------------------------------------------------- table
def summary_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Plain-text table per width: size | threshold iteration | pruned acc at
    iteration 0 | best pruned acc (at iteration) | final dense acc, preceded by
    a line giving the reference accuracy."""
    summaries = summarize(rows)
    blocks = []
    for s in summaries:
        largest = int(np.argmax(s.sizes))
        ref_row = s.pruned_mean[largest]
        if np.isfinite(s.reference):
            ref_it = s.iterations[int(np.nanargmax(ref_row))]
            ref_line = (f"reference accuracy {s.reference:.4f} (best mean pruned accuracy "
                        f"on size {s.sizes[largest]}, at iteration {ref_it})")
        else:
            ref_line = "reference accuracy: n/a (no results on the largest size)"
        ks = ",".join(str(k) for k in s.k_values) or "?"
        head = f"width {s.width} (k={ks}): {ref_line}"
        header = ["size", "threshold iteration", "pruned acc @ iter 0",
                  "best pruned acc (iter)", "final dense acc"]
        body = []
        j0 = s.iterations.index(0) if 0 in s.iterations else None
        for i, size in enumerate(s.sizes):
            t = s.thresholds[i]
            at0 = (f"{s.pruned_mean[i, j0]:.4f}"
                   if j0 is not None and np.isfinite(s.pruned_mean[i, j0]) else "n/a")
            m = s.pruned_mean[i]
            if np.any(np.isfinite(m)):
                jb = int(np.nanargmax(m))
                best = f"{m[jb]:.4f} ({s.iterations[jb]})"
            else:
                best = "n/a"
            d = s.dense_mean[i]
            fin = np.flatnonzero(np.isfinite(d))
            final = f"{d[fin[-1]]:.4f}" if fin.size else "n/a"
            body.append([str(size), "never" if t is None else str(t), at0, best, final])
        blocks.append(head + "\n" + format_table(header, body))
    return "\n\n".join(blocks) + "\n"


def lemma1_gaps(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Lemma 1 per (width, largest size, iteration): the mean over trials of the per-step gap
    ``l(u_k) - l(dense)`` and its fitted rate ``gap ~ K^rate`` over the steps with a positive mean gap."""
    from ..fitting import fit_power_law

    records = [r for r in _as_records(rows) if r.get("losses")]
    out = []
    for width in sorted({int(r["width"]) for r in records}):
        mine = [r for r in records if int(r["width"]) == width]
        size = max(int(r["size"]) for r in mine)
        for iteration in sorted({int(r["iteration"]) for r in mine}):
            cell = [r for r in mine if int(r["size"]) == size and int(r["iteration"]) == iteration]
            gaps = np.mean([np.asarray(r["losses"], dtype=float) - float(r["dense_loss"]) for r in cell], axis=0)
            ks = np.arange(1, gaps.size + 1)
            keep = gaps > 0
            rate = stderr = math.nan
            if keep.sum() >= 3:
                rate, stderr, _ = fit_power_law(ks[keep], gaps[keep])
            out.append({"width": width, "size": size, "iteration": iteration, "gaps": gaps, "rate": rate,
                        "stderr": stderr, "positive_steps": int(keep.sum())})
    return out


def plot_lemma1(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Gap ``l(u_k) - l(dense)`` against k on log-log axes, one curve per pre-training checkpoint, one
    panel per width (largest dataset size); a 1/K guide shows Lemma 1's rate. Steps where greedy
    selection beats the dense network (negative gap) are not drawn."""
    curves = lemma1_gaps(rows)
    if not curves:
        raise ValueError("no per-step selection losses in these rows (they are stored by study pretraining)")
    widths = sorted({c["width"] for c in curves})
    fig, axes = _new_figure(len(widths), 5.0, 3.9)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for ax, width in zip(axes, widths):
        mine = [c for c in curves if c["width"] == width]
        for j, c in enumerate(mine):
            ks = np.arange(1, c["gaps"].size + 1)
            gaps = np.where(c["gaps"] > 0, c["gaps"], np.nan)
            rate = "" if math.isnan(c["rate"]) else f", K^{c['rate']:.2f}"
            ax.plot(ks, gaps, color=cmap(j / max(len(mine) - 1, 1)), lw=1.5, label=f"iter {c['iteration']}{rate}")
        ref = [c for c in mine if c["positive_steps"] > 0]
        if ref:
            g0 = np.nanmax([c["gaps"][0] for c in ref])
            ks = np.arange(1, mine[0]["gaps"].size + 1)
            ax.plot(ks, g0 / ks, color="black", ls=":", lw=1, label="1/K")
        ax.set_xscale("log")
        if ref:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "the pruned net beats the dense one\nat every step (gap <= 0)", ha="center",
                    va="center", transform=ax.transAxes)
        ax.set_xlabel("selection step K")
        ax.set_ylabel("l(u_K) - l(dense)")
        ax.set_title(f"width {width}, dataset size {mine[0]['size']}")
        ax.grid(alpha=0.3, which="both")
        if ref:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Lemma 1: the pruned loss approaches the dense loss like O(1/K)")
    _save(fig, path)


def plot_study(rows: Iterable[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``figure1.png``, ``accuracy_curves.png`` and ``lemma1_gap.png`` into ``out_dir``
    (created if absent) and return their paths."""
    records = _as_records(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig1 = out / "figure1.png"
    curves = out / "accuracy_curves.png"
    lemma = out / "lemma1_gap.png"
    plot_figure1(records, fig1)
    plot_accuracy_curves(records, curves)
    paths = [fig1, curves]
    if any(r.get("losses") for r in records):
        plot_lemma1(records, lemma)
        paths.append(lemma)
    return paths


def report(rows: Iterable[Mapping[str, Any]], out_dir: str | Path, draw: bool = True) -> str:
    """The study's summary table; with ``draw`` its figures are (re)written into ``out_dir`` too."""
    text = summary_table(rows)
    if draw:
        text += "".join(f"\nwrote {p}" for p in plot_study(rows, out_dir))
    return text
