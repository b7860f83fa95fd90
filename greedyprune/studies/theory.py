"""Theorem 3's pre-training threshold, compared with the study's observed red line.

Theorem 3 of "How much pre-training is enough to discover a good subnetwork?" says that greedy forward
selection on a two-layer net pre-trained with T gradient-descent iterations finds a good subnetwork once
T exceeds a threshold T*.  The threshold is stated through Definition 1's quantities of the first-layer
output matrix at initialisation

    H  (m x N),  row i = act(W x_i + beta)  (the hidden features of example i),

namely ``lambda_0`` (its smallest singular value) and ``kappa = s_max / lambda_0`` (its condition
number).  Up to an unknown constant, ``T* ~ kappa * log(m)``: larger data sets need more pre-training.
This module computes that predicted order for every (width, dataset size) of a finished pre-training
study (:mod:`greedyprune.studies.pretraining`), fits the unknown constant per width by least squares
against the study's observed thresholds (the red line of Figure 1, :func:`greedyprune.plotting.summarize`),
and tabulates and plots the two side by side.

What is and is not the theory's setting (read before quoting numbers):

* The study's nets use the activation of its config (ReLU by default) and PyTorch's default ``nn.Linear``
  initialisation with biases -- not the theory's Gaussian initialisation and smooth activation.
  Definition 1 is computed here for the network the study *actually* used: the same seeds, the same
  initial weights and the same class-balanced sub-data set of every (width, size, trial), rebuilt exactly
  as :func:`greedyprune.studies.pretraining.run_pretraining_study` built them.
* The theory assumes ``N >= m`` (at least as many hidden neurons as examples) and ``lambda_0 > 0``.
  When ``m > N``, H has rank at most N and m - N of its m singular values are structurally zero, so
  :func:`definition1` only looks at the ``min(m, N)`` singular values and sets ``rank_deficient``;
  numbers for such rows are outside the theorem and are only a heuristic extrapolation of it.
* Even within the ``min(m, N)`` values, the H of the study's nets is exactly singular: with ReLU and
  PyTorch's default init on (non-negative, unit-norm) image data some neurons are dead on every example
  of the sub-data set (zero columns of H), and neurons active on only one and the same example give
  parallel columns.  On the example MNIST study 1-15 of the 250 or 1000 columns are lost this way.
  The strict ``lambda_0`` is then 0 and ``kappa`` infinite.  :func:`definition1` therefore takes
  ``lambda_0`` over the *nonzero* spectrum: the smallest singular value above numpy's ``matrix_rank``
  tolerance ``s_max * max(m, N) * eps`` (float64), i.e. ``kappa`` is the condition number of H on its
  range; it reports the numerical ``rank`` and the strict smallest value ``s_min`` alongside.  For an H
  of full rank ``min(m, N)`` (the theory's case) this is exactly the smallest singular value.
* The predicted order ``kappa * log(m)`` has no known constant; the fitted constant per width
  (:func:`fit_constant`) only says how well the *shape* of the prediction across dataset sizes matches
  the observed thresholds, which are themselves quantised to the study's ``eval_every`` checkpoints.
"""
from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .._text import format_table
from ..errors import InvalidOptionError

__all__ = [
    "Definition1",
    "definition1",
    "predicted_order",
    "fit_constant",
    "ThresholdRow",
    "threshold_table",
    "plot_thresholds",
    "threshold_text",
    "run_threshold",
    "CSV_NAME",
    "PNG_NAME",
]

CSV_NAME = "thresholds.csv"
_NEVER_Y = 0.955  # axes fraction of the 'never' markers at the top edge of the threshold panel
PNG_NAME = "thresholds.png"

_RUN_FIRST = "run `greedyprune study pretraining --out {dir}` first"
_CONFIG_KEYS = ("data", "normalize", "widths", "sizes", "trials", "seed", "activation")


# ------------------------------------------------------------------------------------ Definition 1
@dataclass
class Definition1:
    """Definition 1's quantities of the hidden-feature matrix H (m x width) of a net on m examples.

    ``lambda_0`` is the smallest *nonzero* singular value of H (above the rank tolerance
    ``s_max * max(m, width) * eps``; for H of full rank ``min(m, width)`` simply the smallest of its
    ``min(m, width)`` singular values), ``s_max`` the largest, ``kappa = s_max / lambda_0`` (``inf`` if H
    is 0).  ``rank_deficient`` is ``m > width``: then H cannot have full row rank and the theory (which
    assumes ``width >= m``) does not apply.  ``rank`` is H's numerical rank and ``s_min`` the smallest of
    its ``min(m, width)`` singular values (0 up to rounding when ``rank < min(m, width)``).
    """

    m: int
    width: int
    lambda_0: float
    s_max: float
    kappa: float
    rank_deficient: bool
    rank: int | None = None
    s_min: float | None = None


def definition1(model: torch.nn.Module, X: torch.Tensor) -> Definition1:
    """Definition 1 for ``model`` (a :class:`~greedyprune.twolayer.TwoLayerNet` or an
    ``nn.Sequential(Linear, activation, Linear)``) on the inputs ``X`` (m, d).

    H is :func:`~greedyprune.twolayer.hidden_features` computed in float64 (on a float64 copy of the
    model, so ``model`` is untouched) and its singular values with ``torch.linalg.svdvals`` in float64.
    Only the ``min(m, width)`` singular values are considered (for ``m > width`` the m - width
    structurally zero ones are not), and of those ``lambda_0`` is the smallest above the rank tolerance
    (see the module docstring for why the strict smallest is 0 for the study's ReLU nets).
    """
    from ..twolayer import hidden_features

    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise InvalidOptionError(f"X must be a 2-D tensor (m, d), got {type(X).__name__}"
                                 + (f" of shape {tuple(X.shape)}" if isinstance(X, torch.Tensor) else ""))
    if X.shape[0] < 1:
        raise InvalidOptionError("X has no examples (m = 0)")
    model64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    H = hidden_features(model64, X.detach().to(device="cpu", dtype=torch.float64))
    m, width = int(H.shape[0]), int(H.shape[1])
    s = torch.linalg.svdvals(H)  # descending, min(m, width) values
    s_max = float(s[0])
    tol = s_max * max(m, width) * torch.finfo(torch.float64).eps  # numpy.linalg.matrix_rank's default
    nonzero = s[s > tol]
    rank = int(nonzero.numel())
    lambda_0 = float(nonzero[-1]) if rank else 0.0
    kappa = s_max / lambda_0 if lambda_0 > 0 else math.inf
    return Definition1(m=m, width=width, lambda_0=lambda_0, s_max=s_max, kappa=kappa, rank_deficient=m > width,
                       rank=rank, s_min=float(s[-1]))


def predicted_order(kappa: float, m: int) -> float:
    """Theorem 3's order of the pre-training threshold, ``kappa * log(m)`` (natural log; no constant)."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise InvalidOptionError(f"m must be a positive int, got {m!r}")
    kappa = float(kappa)
    if math.isnan(kappa) or kappa < 0:
        raise InvalidOptionError(f"kappa must be a non-negative number, got {kappa!r}")
    return kappa * math.log(int(m))


def fit_constant(predicted: Sequence[float], observed: Sequence[float | None]) -> float:
    """Least-squares ``c`` for ``observed ~ c * predicted``: ``c = sum(p*o) / sum(p*p)``.

    Pairs whose ``observed`` is ``None`` (the size never reached the reference) or whose ``predicted`` is
    not finite are skipped.  Raises ValueError if the lengths differ, if no pair is left, or if every
    remaining ``predicted`` is 0.
    """
    predicted, observed = list(predicted), list(observed)
    if len(predicted) != len(observed):
        raise InvalidOptionError(
            f"predicted has {len(predicted)} values but observed has {len(observed)}; they must pair up")
    pairs = [(float(p), float(o)) for p, o in zip(predicted, observed)
             if o is not None and math.isfinite(float(p)) and not math.isnan(float(o))]
    if not pairs:
        raise InvalidOptionError("no size has an observed threshold (all None) with a finite prediction; "
                                 "cannot fit the constant")
    den = sum(p * p for p, _ in pairs)
    if den == 0:
        raise InvalidOptionError("every predicted value is 0; cannot fit the constant")
    return sum(p * o for p, o in pairs) / den


# ---------------------------------------------------------------------------------- the study table
@dataclass
class ThresholdRow:
    """One (width, dataset size) of a study: Definition 1 at initialisation (means over ``trials``
    trials), the predicted order, the observed red-line threshold and the fitted prediction.

    ``observed`` is the first pre-training iteration whose mean pruned accuracy reaches the best mean
    pruned accuracy of the largest size (None: never).  ``fitted = c * predicted`` with the width's fitted
    constant (None if the width has no constant).  ``rank_deficient``: ``size > width``, outside the
    theory (see the module docstring).
    """

    width: int
    size: int
    trials: int
    lambda_0: float
    kappa: float
    predicted: float
    observed: int | None
    fitted: float | None
    rank_deficient: bool = False
    rank: int | None = None


def _read_study(study_dir: Path) -> tuple[dict, list[dict]]:
    """The study's config and rows, with every check of :func:`threshold_table`."""
    from .pretraining import DB_NAME, SCHEMA
    from .store import ResultsStore

    run_first = _RUN_FIRST.format(dir=study_dir)
    if not study_dir.exists():
        raise FileNotFoundError(f"{study_dir}: no such directory; {run_first}")
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: not a directory; give the output directory of a pre-training study")
    db = study_dir / DB_NAME
    if not db.is_file():
        raise FileNotFoundError(f"{study_dir}: no {DB_NAME} in this directory, so no study results; {run_first}")
    if db.stat().st_size == 0:  # ResultsStore would create its tables in an empty file; do not write there
        raise InvalidOptionError(f"{db}: empty database file with no study results; {run_first}")
    with ResultsStore(db, SCHEMA) as store:
        kind = store.stored_kind()
        config = store.config()
        rows = store.rows()
    if kind is not None and kind != "pretraining":
        raise InvalidOptionError(f"{db}: holds results of a {kind!r} study, not of a 'pretraining' study; "
                                 "give the output directory of `greedyprune study pretraining`")
    if config is None:
        raise InvalidOptionError(f"{db}: the database has no pre-training study config bound to it"
                                 + ("" if rows else f" and no rows; {run_first}")
                                 + ("; it was not written by `greedyprune study pretraining`" if rows else ""))
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise InvalidOptionError(f"{db}: the bound config lacks {missing}; it is not a pre-training study config "
                                 "(or was written by an incompatible version of greedyprune)")
    if not rows:
        raise InvalidOptionError(f"{db}: the database has no result rows yet; {run_first}")
    widths = {int(w) for w in config["widths"]}
    sizes = {int(s) for s in config["sizes"]}
    trials = int(config["trials"])
    bad = sorted({(int(r["width"]), int(r["size"])) for r in rows
                  if int(r["width"]) not in widths or int(r["size"]) not in sizes})
    bad_trials = sorted({int(r["trial"]) for r in rows if not 0 <= int(r["trial"]) < trials})
    if bad or bad_trials:
        what = []
        if bad:
            what.append(f"(width, size) pairs {bad} not among the config's widths {sorted(widths)} "
                        f"x sizes {sorted(sizes)}")
        if bad_trials:
            what.append(f"trials {bad_trials} outside the config's {trials} trials")
        raise InvalidOptionError(f"{db}: mismatched database: its rows have " + " and ".join(what)
                                 + "; re-run the study into a fresh directory with "
                                 "`greedyprune study pretraining --out NEW_DIR`")
    return config, rows


def threshold_table(study_dir: str | os.PathLike, *, max_trials: int | None = None,
                    progress: bool = False) -> tuple[list[ThresholdRow], dict[int, float]]:
    """Predicted vs observed pre-training thresholds of the study in ``study_dir``.

    Reads the study's bound config and rows from ``study_dir/results.sqlite`` (read only).  For every
    (width, size) with results it rebuilds, for each trial present in the rows (the first ``max_trials``
    of them if given), the initial net and the sub-data set exactly as the study did and computes
    :func:`definition1`; ``lambda_0``, ``kappa`` and ``predicted = kappa * log(size)`` are means over
    those trials.  ``observed`` comes from :func:`greedyprune.plotting.summarize` over *all* rows.  One
    constant per width is fitted with :func:`fit_constant` (a width where no fit is possible gets no
    constant and ``fitted=None``).  ``rank`` is the smallest numerical rank of H over the trials.
    A partial study (some configured sizes without rows) gives rows only for the sizes with results,
    and its red line is relative to the largest size present.

    Returns the rows (by width, then size) and ``{width: constant}``.

    Raises FileNotFoundError (directory or database missing) or ValueError (empty database, no rows,
    database of another kind or without a pre-training config, data set that cannot be loaded,
    rows that do not match the config: "mismatched database"), each naming the directory and what to do.
    """
    from ..data import load_dataset
    from .pretraining import load_study_config, setup_run
    from .pretraining_report import summarize

    if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int)
                                   or max_trials < 1):
        raise InvalidOptionError(f"max_trials must be a positive int or None, got {max_trials!r}")
    study_dir = Path(study_dir)
    config, rows = _read_study(study_dir)
    db = study_dir / "results.sqlite"
    try:
        ds = load_dataset(config["data"], normalize=config["normalize"], seed=int(config["seed"]))
    except (ValueError, OSError) as exc:
        raise InvalidOptionError(f"{db}: cannot load the study's data set {config['data']!r} "
                                 f"(normalize={config['normalize']!r}): {exc}; make the data available at the same "
                                 "place as when the study ran") from exc

    trials_of: dict[tuple[int, int], set[int]] = {}
    for r in rows:
        trials_of.setdefault((int(r["width"]), int(r["size"])), set()).add(int(r["trial"]))
    summaries = {s.width: s for s in summarize(rows)}

    jobs = []
    for (width, size) in sorted(trials_of):
        trials = sorted(trials_of[(width, size)])
        if max_trials is not None:
            trials = trials[:max_trials]
        jobs.append((width, size, trials))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(t) for _, _, t in jobs), desc="Definition 1", unit="net")
    study_config = load_study_config(config)
    out: list[ThresholdRow] = []
    try:
        for width, size, trials in jobs:
            defs = []
            for trial in trials:
                try:  # the study's own sub-dataset and initial network for this run
                    X, _, model, _ = setup_run(study_config, ds, width, size, trial)
                except ValueError as exc:
                    raise InvalidOptionError(
                        f"{db}: mismatched database: size {size} cannot be drawn from the data set "
                        f"{config['data']!r} as loaded now ({exc})") from exc
                defs.append(definition1(model, X))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(width=width, size=size, trial=trial)
            s = summaries[width]
            observed = s.thresholds[s.sizes.index(size)]
            out.append(ThresholdRow(
                width=width, size=size, trials=len(defs),
                lambda_0=float(np.mean([d.lambda_0 for d in defs])),
                kappa=float(np.mean([d.kappa for d in defs])),
                predicted=float(np.mean([predicted_order(d.kappa, d.m) for d in defs])),
                observed=None if observed is None else int(observed),
                fitted=None, rank_deficient=size > width, rank=min(d.rank for d in defs),
            ))
    finally:
        if bar is not None:
            bar.close()

    constants: dict[int, float] = {}
    for width in sorted({r.width for r in out}):
        wrows = [r for r in out if r.width == width]
        try:
            c = fit_constant([r.predicted for r in wrows], [r.observed for r in wrows])
        except ValueError:
            continue
        constants[width] = c
        for r in wrows:
            r.fitted = c * r.predicted if math.isfinite(r.predicted) else None
    return out, constants


# --------------------------------------------------------------------------------- text, CSV, figure
def threshold_text(rows: Sequence[ThresholdRow], constants: dict[int, float]) -> str:
    """A plain-text table per width: size | trials | rank of H (of min(m, N)) | lambda_0 | kappa |
    kappa*log m | observed threshold ("never" if None) | fitted c*kappa*log m."""
    if not rows:
        return "no thresholds (no rows)\n"
    blocks = []
    for width in sorted({r.width for r in rows}):
        wrows = sorted((r for r in rows if r.width == width), key=lambda r: r.size)
        c = constants.get(width)
        c_txt = f"c = {c:.4g} iterations per unit of kappa*log(m)" if c is not None else "c: no fit possible"
        outside = [r.size for r in wrows if r.rank_deficient]
        note = f"; sizes {outside} exceed the width (m > N: outside the theory)" if outside else ""
        head = f"width {width}: fitted {c_txt}{note}"
        header = ["size m", "trials", "rank H", "lambda_0", "kappa", "kappa*log m", "observed", "c*kappa*log m"]
        body = [[str(r.size), str(r.trials), "?" if r.rank is None else f"{r.rank}/{min(r.size, r.width)}",
                 f"{r.lambda_0:.4g}", f"{r.kappa:.4g}", f"{r.predicted:.4g}",
                 "never" if r.observed is None else str(r.observed),
                 "n/a" if r.fitted is None else f"{r.fitted:.0f}"] for r in wrows]
        blocks.append(head + "\n" + format_table(header, body))
    return "\n\n".join(blocks) + "\n"


def _write_csv(rows: Sequence[ThresholdRow], constants: dict[int, float], path: Path) -> None:
    """One line per row; ``observed`` and ``fitted`` are empty where None; ``constant`` is the width's c."""
    names = [f.name for f in fields(ThresholdRow)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(names + ["constant"])
        for r in rows:
            d = asdict(r)
            c = constants.get(r.width)
            writer.writerow(["" if d[n] is None else d[n] for n in names] + ["" if c is None else c])
    os.replace(tmp, path)


def _style_axes(ax, axk, rows, sizes: list[int], any_never: bool) -> None:
    """Size ticks on both panels; the threshold panel's limits, with a 'never' strip at its top edge."""
    for a in (ax, axk):
        a.set_xticks(sizes)
        a.set_xticklabels([f"{s:,}" for s in sizes], fontsize=8,
                          rotation=45 if len(sizes) > 6 else 0, ha="right" if len(sizes) > 6 else "center")
        a.set_xlabel("dataset size m")
        a.grid(True, alpha=0.3)
        a.tick_params(axis="y", labelsize=8)
        if len(sizes) > 1:
            pad = 0.05 * (sizes[-1] - sizes[0])
            a.set_xlim(sizes[0] - pad, sizes[-1] + pad)
    values = [r.observed for r in rows if r.observed is not None] + [r.fitted for r in rows if r.fitted is not None]
    top = max(values) if values and max(values) > 0 else 1.0
    bottom = 0.0 if not values or min(values) >= 0 else min(values) * 1.1
    if any_never:  # a strip at the top edge, above every value, holds the 'never' markers
        ax.set_ylim(bottom, bottom + (top * 1.05 - bottom) / (1 - 2 * (1 - _NEVER_Y)))
        ax.fill_between([0, 1], 2 * _NEVER_Y - 1, 1, transform=ax.transAxes, color="0.92", linewidth=0, zorder=0)
        from matplotlib.ticker import MaxNLocator

        ticks = [t for t in MaxNLocator(nbins=8).tick_values(bottom, top * 1.05) if bottom <= t <= top * 1.05]
        ax.set_yticks(ticks)  # no numeric tick inside the strip; the strip is labelled like a tick instead
        ax.text(-0.012, _NEVER_Y, "never", transform=ax.transAxes, ha="right", va="center", fontsize=8)
    else:
        ax.set_ylim(bottom, top * 1.1)


def plot_thresholds(rows: Sequence[ThresholdRow], constants: dict[int, float], path: str | os.PathLike) -> None:
    """Two panels against dataset size m.

    Left: per width (one colour and marker each), the observed red-line thresholds (markers; a size
    that never reaches the reference is an open triangle in a grey "never" strip at the top edge) and
    the fitted prediction ``c * kappa * log m`` (line).  Right: ``kappa`` of H at initialisation (log
    scale) vs m, with the sizes where m > width (outside the theory) drawn hollow.  Markers of different
    widths at the same size are dodged sideways by about 1% of the size range so coinciding thresholds
    stay visible.  Drawn on a matplotlib ``Figure`` (no pyplot).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = list(rows)
    if not rows:
        raise InvalidOptionError("no threshold rows to plot")
    widths = sorted({r.width for r in rows})
    cmap = colormaps["tab10"]
    colours = {w: cmap(i % 10) for i, w in enumerate(widths)}
    shapes = {w: "oDvs^P*X"[i % 8] for i, w in enumerate(widths)}
    sizes = sorted({r.size for r in rows})
    # widths often share a threshold (it is quantised to the study's checkpoints): dodge their markers
    span = (sizes[-1] - sizes[0]) if len(sizes) > 1 else max(sizes[0], 1)
    dodge = {w: (i - (len(widths) - 1) / 2) * 0.012 * span for i, w in enumerate(widths)}
    fig = Figure(figsize=(11.0, 4.6), dpi=130, layout="constrained")
    ax, axk = fig.subplots(1, 2)
    any_never = any_outside = False
    for w in widths:
        wrows = sorted((r for r in rows if r.width == w), key=lambda r: r.size)
        c = colours[w]
        xs = np.array([r.size for r in wrows], dtype=float)
        obs = [(r.size + dodge[w], r.observed) for r in wrows if r.observed is not None]
        if obs:
            ax.plot([o[0] for o in obs], [o[1] for o in obs], linestyle="none", marker=shapes[w], markersize=7,
                    color=c, markeredgecolor="black", markeredgewidth=0.6, zorder=4)
        never = [r.size for r in wrows if r.observed is None]
        if never:
            any_never = True
            ax.plot([x + dodge[w] for x in never], [_NEVER_Y] * len(never), transform=ax.get_xaxis_transform(),
                    linestyle="none", marker="^",
                    markersize=9, markerfacecolor="none", markeredgecolor=c, markeredgewidth=1.8,
                    clip_on=False, zorder=5)
        fitted = np.array([np.nan if r.fitted is None else r.fitted for r in wrows], dtype=float)
        if np.isfinite(fitted).any():
            ax.plot(xs, fitted, color=c, linewidth=1.8, zorder=3)
        kap = np.array([r.kappa for r in wrows], dtype=float)
        inside = np.array([not r.rank_deficient for r in wrows])
        axk.plot(xs, kap, color=c, linewidth=1.2, zorder=2)
        if inside.any():
            axk.plot(xs[inside], kap[inside], linestyle="none", marker=shapes[w], markersize=6, color=c, zorder=3)
        if (~inside).any():
            any_outside = True
            axk.plot(xs[~inside], kap[~inside], linestyle="none", marker=shapes[w], markersize=6, color="white",
                     markeredgecolor=c, markeredgewidth=1.5, zorder=3)

    _style_axes(ax, axk, rows, sizes, any_never)
    ax.set_ylabel("pre-training iterations")
    ax.set_title("threshold: observed (markers) vs fitted c·κ·log m (lines)", fontsize=10)
    axk.set_yscale("log")
    axk.set_ylabel("κ = s_max / λ₀ of H at initialisation")
    axk.set_title("condition number of the hidden features at init", fontsize=10)

    handles = [Line2D([], [], color=colours[w], linewidth=1.8, marker=shapes[w], markeredgecolor="black",
                      markeredgewidth=0.6,
                      label=f"width {w}" + (f" (c = {constants[w]:.3g})" if w in constants else " (no fit)"))
               for w in widths]
    handles.append(Line2D([], [], color="0.3", linestyle="none", marker="o", label="observed red-line threshold"))
    handles.append(Line2D([], [], color="0.3", linewidth=1.8, label="fitted c·κ·log m"))
    if any_never:
        handles.append(Line2D([], [], linestyle="none", marker="^", markerfacecolor="none", markeredgecolor="0.3",
                              markeredgewidth=1.8, markersize=8, label="never reached (top edge)"))
    if any_outside:
        handles.append(Line2D([], [], linestyle="none", marker="o", color="white", markeredgecolor="0.3",
                              markeredgewidth=1.5, label="κ panel, hollow: m > width (outside the theory)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False)
    fig.suptitle("Theorem 3: predicted pre-training threshold T* ∝ κ·log m vs the study's red line", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, facecolor="white")


def run_threshold(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                  progress: bool = True, log: Callable[[str], None] = print) -> list[ThresholdRow]:
    """Compute :func:`threshold_table` for ``study_dir``, write ``thresholds.csv`` and ``thresholds.png``
    into ``out_dir`` (default: ``study_dir``; created if absent), log the text table and return the rows."""
    rows, constants = threshold_table(study_dir, progress=progress)
    out = Path(study_dir if out_dir is None else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / CSV_NAME, out / PNG_NAME
    _write_csv(rows, constants, csv_path)
    plot_thresholds(rows, constants, png_path)
    log(threshold_text(rows, constants).rstrip("\n"))
    notes = ["lambda_0 is the smallest nonzero singular value of H at initialisation (rank H counts them)"]
    if any(r.rank_deficient for r in rows):
        notes.append("rows with m > width are outside Theorem 3, which assumes width >= m")
    notes.append("the study's nets use its own activation and PyTorch's default init, not the theory's "
                 "Gaussian init and smooth activation")
    log("notes: " + "; ".join(notes) + ".")
    log(f"wrote {csv_path} and {png_path}")
    return rows
