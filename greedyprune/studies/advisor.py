"""The pre-training advisor on the built-in trainer, and against the pre-training study's red line.

* :func:`advise` trains a two-layer net with a :class:`~greedyprune.PretrainingAdvisor` attached and stops
  when it fires (``greedyprune advise``).
* :func:`compare_with_study` replays every run of a finished ``study pretraining`` directory with the
  advisor attached (same sub-dataset, same initial net, same SGD steps) and puts the step at which it
  fires next to the study's red-line threshold for that dataset size (``greedyprune advise --compare``).
  It also measures the advisor's cost as a share of the training time.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..advisor import PretrainingAdvisor
from ..checks import as_device, check_int
from ..data import balanced_subsample, load_dataset
from ..errors import InvalidOptionError
from ..training.loop import TrainConfig, pretrain
from ..twolayer import TwoLayerNet
from .pretraining import DB_NAME, SCHEMA, load_study_config, setup_run
from .pretraining_report import summarize
from .store import ResultsStore

__all__ = ["check_subset", "AdvisedRun", "train_with_advisor", "advise", "ComparisonRow", "compare_with_study",
           "comparison_text", "plot_comparison", "plot_advisor_history"]


class _Fired(Exception):
    """Raised inside the training callback to end training once the advisor fires."""


def check_subset(X: torch.Tensor, y: torch.Tensor, examples: int | None, seed: int):
    """The fixed batch the advisor checks on: ``examples`` rows drawn once (all rows if None or more)."""
    if examples is None or examples >= X.shape[0]:
        return X, y
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(X.shape[0], generator=gen)[:examples].to(X.device)
    return X[idx], y[idx]


@dataclass
class AdvisedRun:
    advisor: PretrainingAdvisor
    train_seconds: float  # time in training steps, checks excluded
    check_seconds: float
    last_step: int  # the step training reached

    @property
    def overhead(self) -> float:
        """Check time as a fraction of training time."""
        return self.check_seconds / self.train_seconds if self.train_seconds > 0 else math.nan


def train_with_advisor(model, X, y, train_config: TrainConfig, advisor: PretrainingAdvisor, check_every: int,
                       Xc, yc, *, stop_when_fired: bool = True, progress: bool = False) -> AdvisedRun:
    """Pre-train with ``advisor.check`` on (Xc, yc) every ``check_every`` steps (and at step 0)."""
    last = [0]

    def callback(step, net):
        last[0] = step
        if advisor.check(step, net, Xc, yc) and stop_when_fired:
            raise _Fired

    start = time.perf_counter()
    try:
        pretrain(model, X, y, train_config, callback=callback, callback_every=check_every, progress=progress)
    except _Fired:
        pass
    total = time.perf_counter() - start
    checks = advisor.overhead_seconds()
    return AdvisedRun(advisor, total - checks, checks, last[0])


def advise(*, data: str = "mnist5k", size: int | None = None, width: int = 1000, iterations: int = 4000,
           check_every: int = 250, k: int = 50, lr: float = 1.0, batch_size: int | None = 64,
           check_examples: int | None = 1024, patience: int = 2, tolerance: float = 0.005,
           distance_tolerance: float = 0.05, seed: int = 0, device: str = "cpu", out_dir: str | Path | None = None,
           stop_when_fired: bool = True, progress: bool = True, log: Callable[[str], None] = print) -> AdvisedRun:
    """Train a two-layer net on a built-in or on-disk data set with the advisor; see ``greedyprune advise``."""
    check_int("check_every", check_every, 1)
    dev = as_device(device)
    ds = load_dataset(data, seed=seed)
    if size is not None:
        ds = ds.subset(balanced_subsample(ds.labels, size, seed=seed))
    X, y = ds.X.to(dev), ds.binary_labels().to(dev)
    model = TwoLayerNet(ds.in_features, width, seed=seed).to(dev)
    config = TrainConfig(iterations=iterations, lr=lr, batch_size=batch_size, loss="logistic", seed=seed)
    config.validate()
    out = Path(out_dir) if out_dir is not None else None
    advisor = PretrainingAdvisor(k, patience=patience, tolerance=tolerance, distance_tolerance=distance_tolerance,
                                 save_path=out / "pruned.pt" if out else None, log=log)
    Xc, yc = check_subset(X, y, check_examples, seed)
    run = train_with_advisor(model, X, y, config, advisor, check_every, Xc, yc, stop_when_fired=stop_when_fired,
                             progress=progress)
    if not advisor.fired:
        log(f"the advisor did not fire within {iterations} iterations: pre-train longer, or relax --tolerance / "
            f"--distance-tolerance")
    log(f"advisor overhead: {run.check_seconds:.1f} s of checks for {run.train_seconds:.1f} s of training "
        f"({100 * run.overhead:.1f}%)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report = advisor.report() | {"train_seconds": run.train_seconds, "check_seconds": run.check_seconds,
                                     "data": data, "size": len(ds), "width": width}
        (out / "advisor.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_advisor_history(advisor, out / "advisor.png")
        log(f"wrote {out / 'advisor.json'} and {out / 'advisor.png'}"
            + (f" and the pruned model {out / 'pruned.pt'}" if advisor.fired else ""))
    return run


@dataclass
class ComparisonRow:
    width: int
    size: int
    threshold: int | None  # the study's red-line iteration (None: never)
    stops: list  # the advisor's stop step per trial (None: did not fire)
    overhead: float  # check time / training time, over the trials

    @property
    def stop_median(self) -> float | None:
        fired = [s for s in self.stops if s is not None]
        return float(np.median(fired)) if fired else None


def compare_with_study(study_dir: str | Path, out_dir: str | Path | None = None, *, iterations: int | None = None,
                       check_examples: int | None = 1024,
                       patience: int = 2, tolerance: float = 0.005, distance_tolerance: float = 0.05,
                       device: str = "cpu", progress: bool = True,
                       log: Callable[[str], None] = print) -> list[ComparisonRow]:
    """Replay a finished pre-training study with the advisor and compare its stop steps with the red line.

    ``iterations`` lets the replay train longer than the study did (default: twice as long), so that the
    advisor can fire after the study's horizon; the SGD steps up to the study's horizon are the study's.
    """
    study = Path(study_dir)
    if not (study / DB_NAME).is_file():
        raise FileNotFoundError(f"{study} holds no pre-training study ({DB_NAME} not found); "
                                f"run greedyprune study pretraining --out {study} first")
    with ResultsStore(study / DB_NAME, SCHEMA) as store:
        ident, rows = store.config(), store.rows()
    if ident is None or not rows:
        raise InvalidOptionError(
            f"{study / DB_NAME} has no results yet; finish greedyprune study pretraining --out {study}")
    config = load_study_config(ident)
    horizon = 2 * config.iterations if iterations is None else iterations
    check_int("iterations", horizon, 1)
    summaries = {s.width: s for s in summarize(rows)}
    dev = as_device(device)
    ds = load_dataset(config.data, normalize=config.normalize, seed=config.seed)
    out = Path(out_dir) if out_dir is not None else study
    result: list[ComparisonRow] = []
    runs = [(w, s, t) for w in config.widths for s in summaries[w].sizes for t in range(config.trials)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="advisor replay", unit="run")
    stops: dict[tuple[int, int], list] = {}
    times: dict[tuple[int, int], list] = {}
    for width, size, trial in runs:
        X, y, model, train_config = setup_run(config, ds, width, size, trial, dev)
        train_config.iterations = horizon
        advisor = PretrainingAdvisor(config.k, loss=config.loss, patience=patience, tolerance=tolerance,
                                     distance_tolerance=distance_tolerance, log=None,
                                     selection_options={"replacement": config.replacement,
                                                        "candidates": config.candidates, "seed": config.seed + trial})
        Xc, yc = check_subset(X, y, check_examples, config.seed + trial)
        run = train_with_advisor(model, X, y, train_config, advisor, config.eval_every, Xc, yc)
        stops.setdefault((width, size), []).append(advisor.stop_step)
        times.setdefault((width, size), []).append((run.check_seconds, run.train_seconds))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for width in config.widths:
        summary = summaries[width]
        for size, threshold in zip(summary.sizes, summary.thresholds):
            check_s = sum(c for c, _ in times[(width, size)])
            train_s = sum(t for _, t in times[(width, size)])
            result.append(ComparisonRow(width, size, threshold, stops[(width, size)],
                                        check_s / train_s if train_s > 0 else math.nan))
    out.mkdir(parents=True, exist_ok=True)
    _write_comparison_csv(result, out / "advisor_vs_threshold.csv")
    plot_comparison(result, horizon, out / "advisor_vs_threshold.png", study_iterations=config.iterations)
    log(f"advisor replayed for {horizon} iterations (the study ran {config.iterations})")
    log(comparison_text(result, check_examples))
    log(f"wrote {out / 'advisor_vs_threshold.csv'} and {out / 'advisor_vs_threshold.png'}")
    return result


def _write_comparison_csv(rows: list[ComparisonRow], path: Path) -> None:
    lines = ["width,size,red_line_threshold,advisor_stop_median,advisor_stops,overhead_percent"]
    for r in rows:
        stops = ";".join("never" if s is None else str(s) for s in r.stops)
        median = "" if r.stop_median is None else f"{r.stop_median:g}"
        threshold = "" if r.threshold is None else str(r.threshold)
        lines.append(f"{r.width},{r.size},{threshold},{median},{stops},{100 * r.overhead:.2f}")
    path.write_text("\n".join(lines) + "\n")


def comparison_text(rows: list[ComparisonRow], check_examples: int | None = None) -> str:
    out = []
    for width in sorted({r.width for r in rows}):
        out.append(f"width {width}: advisor stop step (per trial; median) vs the study's red-line threshold"
                   + (f" (advisor checks on {check_examples} examples)" if check_examples else ""))
        out.append(f"{'size':>6} | {'red line':>8} | {'advisor median':>14} | {'per trial':<24} | overhead")
        for r in (r for r in rows if r.width == width):
            per = ", ".join("never" if s is None else str(s) for s in r.stops)
            median = "never" if r.stop_median is None else f"{r.stop_median:g}"
            red = "never" if r.threshold is None else str(r.threshold)
            out.append(f"{r.size:>6} | {red:>8} | {median:>14} | {per:<24} | {100 * r.overhead:5.1f}%")
        out.append("")
    return "\n".join(out)


def _figure(panels: int, width: float = 5.2, height: float = 3.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, height), dpi=130, layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def plot_comparison(rows: list[ComparisonRow], iterations: int, path: Path,
                    study_iterations: int | None = None) -> None:
    """Per width: red-line threshold and the advisor's stop steps (median and per trial) against size."""
    widths = sorted({r.width for r in rows})
    fig, axes = _figure(len(widths))
    never_y = iterations * 1.08
    for ax, width in zip(axes, widths):
        rs = [r for r in rows if r.width == width]
        sizes = [r.size for r in rs]
        red = [never_y if r.threshold is None else r.threshold for r in rs]
        ax.plot(sizes, red, "-o", color="red", lw=2, label="study red line (first iteration at the reference)")
        med = [np.nan if r.stop_median is None else r.stop_median for r in rs]
        ax.plot(sizes, med, "-s", color="tab:blue", lw=2, label="advisor stop step (median over trials)")
        for r in rs:
            ys = [never_y if s is None else s for s in r.stops]
            ax.scatter([r.size] * len(ys), ys, color="tab:blue", alpha=0.35, s=18)
        ax.axhline(iterations, color="grey", ls=":", lw=1)
        if study_iterations is not None and study_iterations < iterations:
            ax.axhline(study_iterations, color="red", ls=":", lw=1)
            ax.text(sizes[-1], study_iterations, "study horizon ", ha="right", va="bottom", fontsize=8,
                    color="red")
        ax.text(sizes[0], never_y, " never / did not fire", va="center", fontsize=8, color="grey")
        ax.set_ylim(-iterations * 0.04, iterations * 1.14)
        ax.set_xlabel("dataset size")
        ax.set_ylabel("pre-training iteration")
        ax.set_title(f"width {width}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("When is pre-training enough? Advisor vs the study's red line")
    fig.savefig(path)


def plot_advisor_history(advisor: PretrainingAdvisor, path: Path) -> None:
    """Pruned and dense accuracy, and the selection distance, against the training step."""
    h = advisor.history
    fig, (ax, bx) = _figure(2, 4.8, 3.4)
    steps = [c.step for c in h]
    ax.plot(steps, [c.pruned_accuracy for c in h], "-o", label=f"pruned (k={advisor.k})")
    ax.plot(steps, [c.dense_accuracy for c in h], "--", color="grey", label="dense")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy on the check batch")
    bx.plot(steps[1:], [c.distance for c in h[1:]], "-o", color="tab:purple")
    if advisor.max_distance is not None:
        bx.axhline(advisor.max_distance, color="tab:purple", ls=":", label=f"max_distance {advisor.max_distance}")
    bx.set_xlabel("training step")
    bx.set_ylabel("Jaccard distance to previous selection")
    bx.set_ylim(0, 1.05)
    for a in (ax, bx):
        if advisor.stop_step is not None:
            a.axvline(advisor.stop_step, color="red", lw=1.5, label=f"fired at {advisor.stop_step}")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[1]:
            a.legend(fontsize=8)
    fig.savefig(path)
