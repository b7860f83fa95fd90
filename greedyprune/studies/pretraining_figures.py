"""Figures of the pre-training study: Figure 1 (pruned and dense accuracy heat maps with the red line),
accuracy curves with confidence bands, the Lemma-1 gap, and pruned vs directly trained nets.

The figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot, so no window is ever opened and no global pyplot state is touched. The numbers come from
:mod:`greedyprune.studies.pretraining_report`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .pretraining_summary import (CONFIDENCE, WidthSummary, as_records, direct_comparison, k_label, lemma1_gaps,
                                  summarize)
from ..errors import InvalidOptionError

__all__ = ["plot_accuracy_curves", "plot_direct", "plot_figure1", "plot_lemma1", "plot_study"]

_DPI = 130


def _new_figure(n_cols: int, panel_w: float, panel_h: float, n_rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_w * n_cols + 1.2, panel_h * n_rows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return path


def _fmt_size(s: int) -> str:
    return f"{s:,}"


def _trials_text(s: WidthSummary) -> str:
    ntr = s.trials[s.trials > 0]
    if not ntr.size:
        return ""
    lo, hi = int(ntr.min()), int(ntr.max())
    return f", {lo} trial{'s' if lo != 1 else ''}" if lo == hi else f", {lo}-{hi} trials"


def _heatmap(ax, s: WidthSummary, values: np.ndarray, cmap, norm, title: str):
    """One heat map (size x iteration) with its cells annotated; returns the image."""
    from matplotlib.patheffects import withStroke

    ns, ni = len(s.sizes), len(s.iterations)
    image = ax.imshow(np.ma.masked_invalid(values), origin="lower", aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    labels = [str(i) for i in s.iterations]
    rotate = ni * max(len(t) for t in labels) > 40
    ax.set_xticks(range(ni))
    ax.set_xticklabels(labels, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                       rotation_mode="anchor" if rotate else "default", fontsize=8)
    ax.set_yticks(range(ns))
    ax.set_yticklabels([_fmt_size(x) for x in s.sizes], fontsize=8)
    ax.set_xlabel("pre-training iteration")
    ax.set_ylabel("dataset size")
    ax.set_title(title, fontsize=10)
    if ni <= 14 and ns <= 14:
        fs = 7 if ni > 9 else 8
        for i in range(ns):
            for j in range(ni):
                v = values[i, j]
                if not np.isfinite(v):
                    continue
                rgba = cmap(norm(v))
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs,
                        color="black" if lum > 0.5 else "white", zorder=4,
                        path_effects=[withStroke(linewidth=2.5, foreground=rgba)])
    ax.set_xlim(-0.5, ni - 0.5)
    ax.set_ylim(-0.5, ns - 0.5)
    return image


def _red_line(ax, s: WidthSummary) -> bool:
    """The red line through each size's threshold cell (a size that never reaches the reference breaks
    the line, marked at the right edge). Returns whether some size never reaches it."""
    from matplotlib.patches import Rectangle

    ns, ni = len(s.sizes), len(s.iterations)
    col = {it: j for j, it in enumerate(s.iterations)}
    xs = [col[t] if t is not None else np.nan for t in s.thresholds]
    ax.plot(xs, range(ns), color="red", linewidth=2, solid_capstyle="round", zorder=3)
    for i, x in enumerate(xs):
        if np.isfinite(x):
            ax.add_patch(Rectangle((x - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5, zorder=3))
    never = [i for i, t in enumerate(s.thresholds) if t is None]
    if never:
        ax.plot([ni - 0.5] * len(never), never, linestyle="none", marker="<", color="red", markersize=9,
                markeredgecolor="darkred", clip_on=False, zorder=5)
    return bool(never)


def plot_figure1(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Figure 1: per width (one row of panels each), a heat map of mean pruned accuracy over dataset size
    (y, smallest at the bottom) x pre-training iteration (x) with the red line through the first iteration
    at which each size reaches the reference (the best mean pruned accuracy on the full data set, the
    largest size), and beside it the dense net's mean accuracy on the same colour scale - so a reader can
    tell a pruning effect from a fitting effect."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    summaries = summarize(rows)
    n_it = max(len(s.iterations) for s in summaries)
    n_sz = max(len(s.sizes) for s in summaries)
    panel_w = min(max(0.48 * n_it + 1.6, 3.6), 7.5)
    panel_h = min(max(0.36 * n_sz + 2.4, 3.4), 6.5)
    fig, axes = _new_figure(2, panel_w, panel_h, n_rows=len(summaries))
    both = [m[np.isfinite(m)] for s in summaries for m in (s.pruned_mean, s.dense_mean)]
    finite = np.concatenate(both) if both else np.array([])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    norm = Normalize(vmin=vmin, vmax=vmax)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    any_never, image = False, None
    for row, s in enumerate(summaries):
        image = _heatmap(axes[row][0], s, s.pruned_mean, cmap, norm, f"pruned, width {s.width}{_trials_text(s)}")
        any_never |= _red_line(axes[row][0], s)
        _heatmap(axes[row][1], s, s.dense_mean, cmap, norm, f"dense, width {s.width}{_trials_text(s)}")
    cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, pad=0.02)
    cbar.set_label("mean accuracy on the training set")
    fig.suptitle(f"Pruned (left) and dense (right) accuracy ({k_label(summaries)})", fontsize=10)
    handles = [Line2D([], [], color="red", linewidth=2, marker="s", markersize=8, markerfacecolor="none",
                      label="first iteration reaching the best pruned accuracy on the full data set (largest size)")]
    if any_never:
        handles.append(Line2D([], [], color="red", linestyle="none", marker="<", markersize=8,
                              markeredgecolor="darkred", label="never reaches it (marker at the right edge)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    _save(fig, path)


def _use_symlog(iterations: Sequence[int]) -> bool:
    its = sorted(set(iterations))
    pos = [i for i in its if i > 0]
    if len(pos) < 3 or pos[-1] / pos[0] < 50:
        return False
    gaps = np.diff(its)
    return gaps.max() > 10 * max(gaps.min(), 1)


def plot_accuracy_curves(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Pruned accuracy (solid, mean with its 95% confidence band over trials) and dense accuracy (dashed,
    same colour) vs pre-training iteration, one curve per dataset size, one panel per width. A dotted grey
    line marks the reference (best mean pruned accuracy of the largest size)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    summaries = summarize(rows)
    fig, axes = _new_figure(len(summaries), 5.0, 4.2)
    axes = list(axes[0])
    all_sizes = sorted({x for s in summaries for x in s.sizes})
    cmap = colormaps["plasma"]
    colours = {x: cmap(0.05 + 0.8 * (i / max(len(all_sizes) - 1, 1))) for i, x in enumerate(all_sizes)}
    for n, (ax, s) in enumerate(zip(axes, summaries)):
        x = np.asarray(s.iterations, dtype=float)
        for i, size in enumerate(s.sizes):
            c = colours[size]
            m, ci, d = s.pruned_mean[i], s.pruned_ci[i], s.dense_mean[i]
            ok = np.isfinite(m)
            ax.plot(x[ok], m[ok], color=c, linewidth=1.8, marker="o", markersize=3)
            band = ok & np.isfinite(ci)
            ax.fill_between(x[band], (m - ci)[band], (m + ci)[band], color=c, alpha=0.18, linewidth=0)
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
        ax.set_title(f"width {s.width}{_trials_text(s)}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    size_handles = [Line2D([], [], color=colours[x], linewidth=1.8, marker="o", markersize=3, label=_fmt_size(x))
                    for x in all_sizes]
    fig.legend(handles=size_handles, title="dataset size", fontsize=8, title_fontsize=8,
               loc="outside right upper", frameon=False)
    style = [Line2D([], [], color="0.2", linewidth=1.8, label=f"pruned (mean,\n{CONFIDENCE:.0%} CI\nover trials)"),
             Line2D([], [], color="0.2", linewidth=1.2, linestyle="--", label="dense (mean)"),
             Line2D([], [], color="0.35", linewidth=1, linestyle=":", label="reference\n(best pruned,\nlargest size)")]
    fig.legend(handles=style, fontsize=8, loc="outside right lower", frameon=False)
    fig.suptitle(f"Accuracy vs pre-training iteration ({k_label(summaries)})", fontsize=10)
    _save(fig, path)


def plot_lemma1(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Gap ``l(u_k) - l(dense)`` against k on log-log axes, one curve per pre-training checkpoint, one
    panel per width (largest dataset size); a 1/K guide shows Lemma 1's rate. Steps where greedy
    selection beats the dense network (negative gap) are not drawn."""
    import matplotlib

    curves = lemma1_gaps(rows)
    if not curves:
        raise InvalidOptionError("no per-step selection losses in these rows (they are stored by study pretraining)")
    widths = sorted({c["width"] for c in curves})
    fig, axes = _new_figure(len(widths), 5.0, 3.9)
    cmap = matplotlib.colormaps["viridis"]
    for ax, width in zip(axes[0], widths):
        mine = [c for c in curves if c["width"] == width]
        for j, c in enumerate(mine):
            ks = np.arange(1, c["gaps"].size + 1)
            gaps = np.where(c["gaps"] > 0, c["gaps"], np.nan)
            rate = "" if math.isnan(c["rate"]) else f", K^{c['rate']:.2f}"
            ax.plot(ks, gaps, color=cmap(j / max(len(mine) - 1, 1)), lw=1.5, label=f"iter {c['iteration']}{rate}")
        ref = [c for c in mine if c["positive_steps"] > 0]
        if ref:
            g0 = np.nanmax([c["gaps"][0] for c in ref])
            ks = np.arange(1, max(c["gaps"].size for c in mine) + 1)
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


def plot_direct(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Ye et al.'s comparison at the last checkpoint: per width (columns), training loss (top) and accuracy
    (bottom) against dataset size for the pruned net, a net of the pruned width trained directly for the
    same iterations and for the same multiply-adds (Scratch-B), and the dense net; mean over trials with
    95% confidence intervals."""
    from .pretraining_summary import confidence_halfwidth

    entries = direct_comparison(rows)
    if not entries:
        raise InvalidOptionError("no directly trained nets in these rows (run the study with --direct)")
    widths = sorted({e["width"] for e in entries})
    fig, axes = _new_figure(len(widths), 4.6, 3.3, n_rows=2)
    series = (("pruned", "pruned (GFS, no fine-tuning)", "C3", "o"), ("direct_e", "direct, same iterations", "C0", "s"),
              ("direct_b", "direct, same multiply-adds", "C2", "^"), ("dense", "dense", "0.4", "x"))
    for col, width in enumerate(widths):
        mine = [e for e in entries if e["width"] == width]
        sizes = [e["size"] for e in mine]
        for row, what in enumerate(("loss", "accuracy")):
            ax = axes[row][col]
            for j, (key, label, colour, marker) in enumerate(series):
                values = [e[f"{key}_{what}"] for e in mine]
                means = [float(np.nanmean(v)) for v in values]
                errs = [confidence_halfwidth(v) for v in values]
                xs = np.arange(len(sizes)) + (j - 1.5) * 0.08
                ax.errorbar(xs, means, yerr=[0 if math.isnan(e) else e for e in errs], color=colour, marker=marker,
                            ms=4, lw=1.2, capsize=2, label=label)
            ax.set_xticks(range(len(sizes)))
            ax.set_xticklabels([_fmt_size(x) for x in sizes], fontsize=8)
            ax.set_xlabel("dataset size")
            ax.set_ylabel(f"training {what}")
            if what == "loss":
                ax.set_yscale("log")
            n = mine[0]["direct_width"]
            ax.set_title(f"width {width} pruned to n={n} (iteration {mine[0]['iteration']}, "
                         f"{mine[0]['trials']} trials)", fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    fig.suptitle(f"Pruned vs trained directly at the pruned width (mean, {CONFIDENCE:.0%} CI over trials)",
                 fontsize=10)
    _save(fig, path)


def plot_study(rows: Iterable[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``figure1.png``, ``accuracy_curves.png``, ``lemma1_gap.png`` (when the rows hold per-step
    losses) and ``direct_vs_pruned.png`` (when they hold directly trained nets) into ``out_dir``."""
    records = as_records(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "figure1.png", out / "accuracy_curves.png"]
    plot_figure1(records, paths[0])
    plot_accuracy_curves(records, paths[1])
    if any(r.get("losses") for r in records):
        paths.append(out / "lemma1_gap.png")
        plot_lemma1(records, paths[-1])
    if direct_comparison(records):
        paths.append(out / "direct_vs_pruned.png")
        plot_direct(records, paths[-1])
    return paths
