"""The CNN pre-training study (Appendix E of "How much pre-training is enough to discover a good
subnetwork?", Table 1) and the Rethinking comparison ("Rethinking the Value of Network Pruning").

CNN study. For each class-balanced sub-dataset size and trial: pre-train a CNN (SGD, momentum,
cosine lr, weight decay) with a model checkpoint every ``checkpoint_every`` iterations; at every
checkpoint prune it with greedy forward selection, fine-tune briefly, and record test accuracy
next to the dense network's. Baseline criteria (L1, BN scale, Taylor, random) are pruned to the
same channels per group, and so to the same multiply-adds, and fine-tuned the same way.

It writes one SQLite row per finished unit of work (``results.sqlite``) and skip rows already
there, and pre-training resumes from its own state file, so an interrupted study loses nothing
finished: run the same command again.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..baselines import CRITERIA
from ..checks import as_device
from ..data import balanced_subsample, load_dataset
from ..fileio import atomic_write_text, run_directory
from ..training.loop import TrainConfig, evaluate
from .common import override, pick_preset
from .store import ResultsStore, Schema

DB_NAME = "results.sqlite"
BASELINES = CRITERIA

#: One row per (size, trial, checkpoint iteration, method): test accuracy before and after fine-tuning.
SCHEMA = Schema(
    kind="cnn",
    columns=(("size", "INTEGER"), ("trial", "INTEGER"), ("iteration", "INTEGER"), ("method", "TEXT"),
             ("dense_accuracy", "REAL"), ("dense_train_accuracy", "REAL"), ("pruned_accuracy", "REAL"),
             ("finetuned_accuracy", "REAL"), ("params", "INTEGER"), ("macs", "INTEGER"), ("dense_params", "INTEGER"),
             ("dense_macs", "INTEGER"), ("prune_seconds", "REAL"), ("kept", "TEXT")),
    key=("size", "trial", "iteration", "method"),
    json_columns=("kept",),
)


@dataclass
class CNNStudyConfig:
    """Settings of the CNN study. ``quick`` runs on the built-in MNIST-5k; ``paper`` is Appendix E's
    CIFAR-10 protocol (pass ``data="cifar10:DIR"``)."""

    model: str = "resnet8"
    model_kwargs: dict = field(default_factory=lambda: {"width": 8})
    data: str = "mnist5k"
    normalize: str = "pixel"
    test_size: int = 1000  # held out from the training pool when the data has no test split
    sizes: list = field(default_factory=lambda: [1000, 4000])
    trials: int = 1
    iterations: int = 500
    checkpoint_every: int = 125
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    # pruning: one stopping rule. Baselines always keep GFS's channels per group (the same cost).
    flops_target: float | None = None
    accuracy_tolerance: float | None = 0.02
    candidates: int | None = 8
    prune_batch_size: int = 128
    finetune_iterations: int = 100
    finetune_lr: float = 0.01
    baselines: list = field(default_factory=lambda: ["l1", "bn", "taylor", "random"])
    baselines_at: str = "last"  # "last" checkpoint of each run, or "all"
    seed: int = 0

    def validate(self) -> None:
        for name in ("test_size", "trials", "iterations", "checkpoint_every", "batch_size", "prune_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.finetune_iterations, bool) or not isinstance(self.finetune_iterations, int) \
                or self.finetune_iterations < 0:
            raise ValueError(f"finetune_iterations must be an int >= 0, got {self.finetune_iterations!r}")
        if not self.sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 10 for s in self.sizes):
            raise ValueError(f"sizes must be a non-empty list of ints >= 10, got {self.sizes!r}")
        if (self.flops_target is None) == (self.accuracy_tolerance is None):
            raise ValueError("give exactly one of flops_target and accuracy_tolerance")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; expected some of {BASELINES}")
        if self.baselines_at not in ("last", "all"):
            raise ValueError(f"baselines_at must be 'last' or 'all', got {self.baselines_at!r}")

    def checkpoints(self) -> list[int]:
        points = list(range(0, self.iterations, self.checkpoint_every))
        return points + [self.iterations]

    def prune_options(self) -> dict:
        rule = ({"flops_target": self.flops_target} if self.flops_target is not None
                else {"accuracy_tolerance": self.accuracy_tolerance})
        return dict(rule, candidates=self.candidates, batch_size=self.prune_batch_size, seed=self.seed)


#: Command-line help of each field (``greedyprune study cnn --FIELD``).
OPTION_HELP = {
    "model": "a model name (see greedyprune train --help)",
    "data": "mnist5k, digits, mnist:DIR or cifar10:DIR",
    "normalize": "input normalisation: pixel, standard, unit or none",
    "test_size": "held-out test examples when the data has no test split",
    "sizes": "sub-dataset sizes, e.g. 10000,30000,50000",
    "trials": "trials per size",
    "iterations": "pre-training iterations",
    "checkpoint_every": "prune every this many iterations",
    "lr": "initial learning rate of pre-training",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "batch_size": "pre-training batch size",
    "flops_target": "keep this fraction of the dense multiply-adds",
    "accuracy_tolerance": "stop a group within this relative top-1 gap",
    "candidates": "channels evaluated per greedy step",
    "prune_batch_size": "examples per greedy step",
    "finetune_iterations": "fine-tuning iterations after pruning",
    "finetune_lr": "fine-tuning learning rate",
    "baselines": f"comma-separated subset of {','.join(BASELINES)}, or '' for none",
    "baselines_at": "run the baselines at the 'last' checkpoint or at 'all'",
    "seed": "seed of the sub-datasets, initialisations and batches",
}

PRESETS: dict[str, CNNStudyConfig] = {
    # about 5-8 minutes on 2 CPU cores
    "quick": CNNStudyConfig(),
    # Appendix E: CIFAR-10 sub-datasets of 10K/30K/50K, ResNet-34-style net, SGD + cosine from 0.1,
    # batch 128, prune every 20K iterations, fine-tune 2,500 iterations at lr 0.01 (GPU advised)
    "paper": CNNStudyConfig(model="resnet34", model_kwargs={}, data="cifar10:./cifar10", normalize="standard",
                            test_size=10000, sizes=[10000, 30000, 50000], trials=1, iterations=80000,
                            checkpoint_every=20000, flops_target=None, accuracy_tolerance=0.02, candidates=50,
                            finetune_iterations=2500, baselines=list(BASELINES), baselines_at="last"),
}


def get_preset(name: str) -> CNNStudyConfig:
    return pick_preset(PRESETS, name)


def config_with(base: CNNStudyConfig, **overrides) -> CNNStudyConfig:
    return override(base, "CNN study", **overrides)


def load_data(config: CNNStudyConfig):
    """(training pool, test set) as image tensors. Built-in data sets have no test split: a class-balanced
    ``test_size`` is held out of them (seeded), the rest is the pool the sub-datasets are drawn from."""
    train = load_dataset(config.data, normalize=config.normalize, seed=config.seed)
    if train.image_shape is None or len(train.image_shape) != 3:
        raise ValueError(f"data {config.data!r} is not image data; use mnist5k, digits, mnist:DIR or cifar10:DIR")
    try:
        test = load_dataset(config.data, normalize=config.normalize, split="test", seed=config.seed)
        test = test.subset(balanced_subsample(test.labels, min(config.test_size, len(test)), config.seed))
    except (ValueError, FileNotFoundError):
        if config.test_size >= len(train):
            raise ValueError(f"test_size={config.test_size} leaves no training data out of {len(train)} examples")
        held = balanced_subsample(train.labels, config.test_size, config.seed + 7919)
        mask = torch.ones(len(train), dtype=torch.bool)
        mask[held] = False
        test, train = train.subset(held), train.subset(torch.nonzero(mask).flatten())
    too_big = [s for s in config.sizes if s > len(train)]
    if too_big:
        raise ValueError(f"sizes {too_big} exceed the {len(train)} training examples available in {config.data}")
    return train, test


def accuracy(model, images, labels, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a labelled set."""
    return evaluate(model, images, labels, "cross_entropy", batch_size=batch)[1]


def run_cnn_study(config: CNNStudyConfig, out_dir: str | Path, *, device: str = "cpu", progress: bool = True,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the CNN study into ``out_dir``; returns all rows."""
    from ..baselines import prune_like
    from ..channels import prune_model
    from ..models import get_model
    from ..training.checkpoints import load_model, train_with_checkpoints
    from ..training.retrain import finetune

    config.validate()
    dev = as_device(device)
    out = Path(out_dir)
    train, test = load_data(config)
    test_x, test_y = test.images().to(dev), test.labels.to(dev)
    ident = asdict(config)
    with run_directory(out), ResultsStore(out / DB_NAME, SCHEMA) as store:
        store.bind_config(ident)
        atomic_write_text(out / "config.json", json.dumps(ident, indent=2) + "\n")
        done = store.done_keys()
        if done:
            log(f"resuming: {len(done)} rows already in {out / DB_NAME}")
        points = config.checkpoints()
        for size in config.sizes:
            for trial in range(config.trials):
                seed = config.seed + 1000 * trial
                methods = lambda t: ["gfs"] + (list(config.baselines)  # noqa: E731
                                               if config.baselines_at == "all" or t == points[-1] else [])
                if all((size, trial, t, m) in done for t in points for m in methods(t)):
                    continue
                sub = train.subset(balanced_subsample(train.labels, size, seed))
                images, labels = sub.images().to(dev), sub.labels.to(dev)
                model_kwargs = {"num_classes": train.num_classes, "in_channels": train.image_shape[0],
                                **config.model_kwargs}
                run_dir = out / "runs" / f"size{size}-trial{trial}"
                tc = TrainConfig(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size,
                                 loss="cross_entropy", momentum=config.momentum, weight_decay=config.weight_decay,
                                 seed=seed, schedule="cosine")
                log(f"size {size}, trial {trial}: pre-training {config.model} for {config.iterations} iterations")
                ckpts = train_with_checkpoints(get_model(config.model, seed=seed, **model_kwargs).to(dev), images,
                                               labels, tc, run_dir, name=config.model, model_kwargs=model_kwargs,
                                               checkpoint_every=config.checkpoint_every, progress=progress)
                for t, path in ckpts:
                    todo = [m for m in methods(t) if (size, trial, t, m) not in done]
                    if not todo:
                        continue
                    dense, _ = load_model(path, map_location=dev)
                    dense.eval()
                    dense_acc = accuracy(dense, test_x, test_y)
                    dense_train_acc = accuracy(dense, images, labels)
                    dense_params = sum(p.numel() for p in dense.parameters())
                    start = time.perf_counter()
                    result = prune_model(dense, (images, labels), device=dev, progress=progress,
                                         **config.prune_options())
                    gfs_seconds = time.perf_counter() - start
                    keep = {name: len(idx) for name, idx in result.kept.items()}
                    for method in todo:
                        start = time.perf_counter()
                        if method == "gfs":
                            pruned, seconds = result.model, gfs_seconds
                        else:
                            pruned = prune_like(dense, keep, method, data=(images, labels), seed=seed,
                                                batch_size=config.prune_batch_size).model
                            seconds = time.perf_counter() - start
                        pruned_acc = accuracy(pruned, test_x, test_y)
                        tuned = finetune(pruned, images, labels, config.finetune_iterations, config.finetune_lr,
                                         batch_size=config.batch_size, seed=seed) \
                            if config.finetune_iterations else pruned
                        row = {"size": size, "trial": trial, "iteration": t, "method": method,
                               "dense_accuracy": dense_acc, "dense_train_accuracy": dense_train_acc,
                               "pruned_accuracy": pruned_acc, "finetuned_accuracy": accuracy(tuned, test_x, test_y),
                               "params": sum(p.numel() for p in pruned.parameters()),
                               "macs": result.report["macs_after"], "dense_params": dense_params,
                               "dense_macs": result.report["macs_before"], "prune_seconds": seconds, "kept": keep}
                        store.add(row)
                        done.add((size, trial, t, method))
                        log(f"  iteration {t:>6} {method:>6}: dense {dense_acc:.4f}, pruned {pruned_acc:.4f}, "
                            f"fine-tuned {row['finetuned_accuracy']:.4f} ({seconds:.1f} s)")
        rows = store.rows()
        store.export_csv(out / "results.csv")
    return rows


# ------------------------------------------------------------------------------------------ tables, plots


def _mean(values) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def table1(rows: list[dict], method: str = "gfs") -> str:
    """Like the paper's Table 1: fine-tuned test accuracy of the pruned net per sub-dataset size (rows)
    and pre-training checkpoint (columns), and the fully trained dense net's accuracy."""
    from .._text import format_table

    rows = [r for r in rows if r["method"] == method]
    sizes = sorted({r["size"] for r in rows})
    its = sorted({r["iteration"] for r in rows})
    last = its[-1] if its else None
    body = []
    for s in sizes:
        cells = [f"{_mean(r['finetuned_accuracy'] for r in rows if r['size'] == s and r['iteration'] == t):.4f}"
                 for t in its]
        dense = _mean(r["dense_accuracy"] for r in rows if r["size"] == s and r["iteration"] == last)
        body.append([str(s)] + cells + [f"{dense:.4f}"])
    return format_table(["size"] + [f"it {t}" for t in its] + ["dense (final)"], body)


def baseline_table(rows: list[dict]) -> str:
    """Every method at the checkpoints where baselines ran: test accuracy before / after fine-tuning,
    and the multiply-adds kept."""
    from .._text import format_table

    have = {(r["size"], r["iteration"]) for r in rows if r["method"] != "gfs"}
    body = []
    for size, t in sorted(have):
        for method in ["gfs"] + list(BASELINES):
            sel = [r for r in rows if r["size"] == size and r["iteration"] == t and r["method"] == method]
            if not sel:
                continue
            body.append([str(size), str(t), method, f"{_mean(r['pruned_accuracy'] for r in sel):.4f}",
                         f"{_mean(r['finetuned_accuracy'] for r in sel):.4f}",
                         f"{_mean(r['macs'] / r['dense_macs'] for r in sel):.3f}",
                         f"{_mean(r['dense_accuracy'] for r in sel):.4f}"])
    return format_table(["size", "iteration", "method", "pruned acc", "fine-tuned acc", "MACs kept", "dense acc"],
                        body)


def plot_cnn_study(rows: list[dict], path: str | Path) -> Path:
    """Fine-tuned accuracy of the GFS-pruned net against pre-training iterations, one line per size,
    with each size's fully trained dense accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["method"] == "gfs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, size in enumerate(sorted({r["size"] for r in rows})):
        its = sorted({r["iteration"] for r in rows if r["size"] == size})
        acc = [_mean(r["finetuned_accuracy"] for r in rows if r["size"] == size and r["iteration"] == t) for t in its]
        color = f"C{i}"
        ax.plot(its, acc, "o-", color=color, label=f"{size} examples: pruned + fine-tuned")
        dense = _mean(r["dense_accuracy"] for r in rows if r["size"] == size and r["iteration"] == its[-1])
        ax.axhline(dense, color=color, ls="--", lw=1, label=f"{size} examples: dense (final)")
    ax.set_xlabel("pre-training iterations before pruning")
    ax.set_ylabel("test accuracy")
    ax.set_title("GFS-pruned CNN vs. pre-training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
    """Table 1, the baseline comparison and (with ``draw``) ``cnn_study.png``."""
    parts = ["fine-tuned test accuracy of the GFS-pruned net (columns: pre-training iterations)", table1(rows)]
    if any(r["method"] != "gfs" for r in rows):
        parts += ["", "at the same channels per group (same multiply-adds):", baseline_table(rows)]
    if draw:
        parts.append(f"wrote {plot_cnn_study(rows, Path(out_dir) / 'cnn_study.png')}")
    return "\n".join(parts)
