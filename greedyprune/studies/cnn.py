"""The CNN pre-training study (Appendix E of "How much pre-training is enough to discover a good
subnetwork?", Table 1).

For each model, class-balanced sub-dataset size and trial: pre-train a CNN (SGD, momentum, cosine lr,
weight decay; the standard CIFAR augmentation on CIFAR-10) with a model checkpoint every
``checkpoint_every`` iterations; at every checkpoint prune it with greedy forward selection, fine-tune
(initial lr 0.01, cosine decay) and record test accuracy next to the dense network's. Baseline criteria
(L1, BN scale, Taylor, random) are pruned to the same channels per group, and so to the same
multiply-adds, and fine-tuned the same way.

The stopping rule is one of: the loss rule with a given ``epsilon``; the loss rule with epsilon picked from
``epsilon_grid`` on a held-out split so that the pruned net has ``flops_reduction`` fewer multiply-adds (the
paper's footnote 4; :func:`choose_epsilon`); a FLOPs target; or a top-1 tolerance. Test data is
standardised with the statistics of the training data.

It writes one SQLite row per finished unit of work (``results.sqlite``) and skips rows already there, and
pre-training resumes from its own state file, so an interrupted study loses nothing finished: run the
same command again. ``shard=(i, P)`` runs every P-th (model, size, trial) cell; ``distributed=True``
(under torchrun) trains data-parallel and splits each greedy step's candidates over the processes, rank 0
writing. Tables and the figure are in :mod:`greedyprune.studies.cnn_report`.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..baselines import CRITERIA
from ..checks import as_device
from ..data import balanced_subsample, load_dataset, standardize_with_training_stats
from ..errors import InvalidOptionError
from ..fileio import atomic_write_text, run_directory
from ..training.loop import TrainConfig, evaluate
from .common import override, pick_preset
from .store import ResultsStore, Schema

__all__ = ["DB_NAME", "EPSILON_FILE", "BASELINES", "RULES", "SCHEMA", "CNNStudyConfig", "OPTION_HELP", "PRESETS",
           "get_preset", "config_with", "load_data", "accuracy", "cells", "run_cnn_study", "choose_epsilon", "report"]

DB_NAME = "results.sqlite"
EPSILON_FILE = "epsilon.json"
BASELINES = CRITERIA
RULES = ("flops_target", "accuracy_tolerance", "epsilon", "epsilon_grid")

#: One row per (model, size, trial, checkpoint iteration, method): test accuracy before and after fine-tuning.
SCHEMA = Schema(
    kind="cnn",
    columns=(("model", "TEXT"), ("size", "INTEGER"), ("trial", "INTEGER"), ("iteration", "INTEGER"),
             ("method", "TEXT"), ("rule", "TEXT"), ("dense_accuracy", "REAL"), ("dense_train_accuracy", "REAL"),
             ("pruned_accuracy", "REAL"), ("finetuned_accuracy", "REAL"), ("params", "INTEGER"), ("macs", "INTEGER"),
             ("dense_params", "INTEGER"), ("dense_macs", "INTEGER"), ("prune_seconds", "REAL"), ("kept", "TEXT")),
    key=("model", "size", "trial", "iteration", "method"),
    json_columns=("kept",),
)


@dataclass
class CNNStudyConfig:
    """Settings of the CNN study. ``quick`` runs on the built-in MNIST-5k; ``paper`` is Appendix E's
    CIFAR-10 protocol (pass ``data="cifar10:DIR"``)."""

    models: list[str] = field(default_factory=lambda: ["resnet8"])
    model_kwargs: dict = field(default_factory=lambda: {"resnet8": {"width": 8}})  # per model name
    data: str = "mnist5k"
    normalize: str = "pixel"
    test_size: int = 1000  # held out from the training pool when the data has no test split
    sizes: list = field(default_factory=lambda: [1000, 4000])
    trials: int = 3
    iterations: int = 500
    checkpoint_every: int = 125
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: str = "auto"  # auto: crop-flip on CIFAR-10, none on digits
    # pruning: exactly one stopping rule. Baselines always keep GFS's channels per group (the same cost).
    # The quick preset's 8-wide ResNet-8 is too narrow for the paper's loss rule (measured on its size-1,000
    # run: epsilon 0.5 / 2 / 5 remove 1% / 5% / 14% of the multiply-adds, and epsilon 5 removed 52% at size
    # 4,000 and left the net at chance after fine-tuning), so it prunes to the paper's 40% reduction directly.
    flops_target: float | None = 0.6
    accuracy_tolerance: float | None = None
    epsilon: float | None = None
    epsilon_grid: list[float] | None = None
    flops_reduction: float = 0.4  # what the epsilon grid must reach
    val_size: int = 1000  # held-out examples the epsilon grid is judged on
    candidates: int | None = 8
    prune_batch_size: int = 128
    finetune_iterations: int = 100
    finetune_lr: float = 0.01
    finetune_schedule: str = "cosine"
    baselines: list = field(default_factory=lambda: ["l1", "bn", "taylor", "random"])
    baselines_at: str = "last"  # "last" checkpoint of each run, or "all"
    seed: int = 0

    def validate(self) -> None:
        from ..models import MODEL_NAMES
        from ..training.augment import AUGMENTATIONS
        from ..training.loop import SCHEDULES

        for name in ("test_size", "trials", "iterations", "checkpoint_every", "batch_size", "prune_batch_size",
                     "val_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.finetune_iterations, bool) or not isinstance(self.finetune_iterations, int) \
                or self.finetune_iterations < 0:
            raise InvalidOptionError(f"finetune_iterations must be an int >= 0, got {self.finetune_iterations!r}")
        if not self.sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 10 for s in self.sizes):
            raise InvalidOptionError(f"sizes must be a non-empty list of ints >= 10, got {self.sizes!r}")
        bad = [m for m in self.models if m.lower() not in MODEL_NAMES] if self.models else ["(none)"]
        if bad:
            raise InvalidOptionError(f"unknown models {bad}; expected some of {', '.join(MODEL_NAMES)}")
        self._validate_rule()
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise InvalidOptionError(f"unknown baselines {unknown}; expected some of {BASELINES}")
        if self.baselines_at not in ("last", "all"):
            raise InvalidOptionError(f"baselines_at must be 'last' or 'all', got {self.baselines_at!r}")
        if self.augment not in ("auto",) + AUGMENTATIONS:
            raise InvalidOptionError(f"unknown augment {self.augment!r}; expected auto, {' or '.join(AUGMENTATIONS)}")
        if self.finetune_schedule not in SCHEDULES:
            raise InvalidOptionError(
                f"unknown finetune_schedule {self.finetune_schedule!r}; expected one of {SCHEDULES}")
        from .common import check_sgd

        check_sgd(self)

    def _validate_rule(self) -> None:
        given = [r for r in RULES if getattr(self, r) is not None]
        if len(given) != 1:
            raise InvalidOptionError(f"give exactly one stopping rule of --epsilon, --epsilon-grid, --flops-target and "
                                     f"--accuracy-tolerance; got {', '.join(given) or 'none'}")
        if self.epsilon is not None and not (isinstance(self.epsilon, (int, float)) and 0 <= self.epsilon < math.inf):
            raise InvalidOptionError(
                f"epsilon must be a number >= 0 (the relative loss gap at which a group stops), got "
                f"{self.epsilon!r}")
        if self.epsilon_grid is not None:
            if not self.epsilon_grid or any(not isinstance(e, (int, float)) or not 0 <= e < math.inf
                                            for e in self.epsilon_grid):
                raise InvalidOptionError(
                    f"epsilon_grid must list numbers >= 0, e.g. 0.01,0.05,0.1; got {self.epsilon_grid!r}")
        if not 0 < self.flops_reduction < 1:
            raise InvalidOptionError(f"flops_reduction must be in (0, 1), e.g. 0.4 for 40% fewer multiply-adds; got "
                                     f"{self.flops_reduction!r}")
        if self.flops_target is not None and not 0 < self.flops_target < 1:
            raise InvalidOptionError(f"flops_target must be in (0, 1), got {self.flops_target!r}")
        if self.accuracy_tolerance is not None and not 0 <= self.accuracy_tolerance < 1:
            raise InvalidOptionError(f"accuracy_tolerance must be in [0, 1), got {self.accuracy_tolerance!r}")

    def checkpoints(self) -> list[int]:
        points = list(range(0, self.iterations, self.checkpoint_every))
        return points + [self.iterations]

    def resolved_augment(self) -> str:
        """``augment`` with "auto" resolved: the CIFAR recipe on CIFAR-10 data, none on digits."""
        if self.augment != "auto":
            return self.augment
        return "crop-flip" if self.data.startswith("cifar10") else "none"

    def prune_options(self, epsilon: float | None = None) -> dict:
        """The keywords of :func:`greedyprune.channels.prune_model` (``epsilon`` is the grid's choice)."""
        if epsilon is not None or self.epsilon is not None:
            rule = {"epsilon": self.epsilon if epsilon is None else epsilon}
        elif self.flops_target is not None:
            rule = {"flops_target": self.flops_target}
        else:
            rule = {"accuracy_tolerance": self.accuracy_tolerance}
        return dict(rule, candidates=self.candidates, batch_size=self.prune_batch_size, seed=self.seed)


#: Command-line help of each field (``greedyprune study cnn --FIELD``).
OPTION_HELP = {
    "models": "model names, e.g. resnet34,mobilenetv2 (see greedyprune train --help)",
    "data": "mnist5k, digits, mnist:DIR or cifar10:DIR",
    "normalize": "input normalisation: pixel, standard (with the training data's statistics), unit or none",
    "test_size": "held-out test examples when the data has no test split",
    "sizes": "sub-dataset sizes, e.g. 10000,30000,50000",
    "trials": "trials per size",
    "iterations": "pre-training iterations",
    "checkpoint_every": "prune every this many iterations",
    "lr": "initial learning rate of pre-training",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "batch_size": "pre-training batch size",
    "augment": "training augmentation: auto (crop-flip on CIFAR-10, none otherwise), crop-flip or none",
    "flops_target": "stopping rule: keep this fraction of the dense multiply-adds",
    "accuracy_tolerance": "stopping rule: stop a group within this relative top-1 gap",
    "epsilon": "stopping rule: stop a group within this relative loss gap (the paper's rule)",
    "epsilon_grid": "stopping rule: pick epsilon from these values on a held-out split (--val-size) so that "
                    "the pruned net has --flops-reduction fewer multiply-adds (the paper's footnote 4)",
    "flops_reduction": "multiply-add reduction the epsilon grid must reach, e.g. 0.4",
    "val_size": "held-out examples (not in the run's training data) the epsilon grid is judged on",
    "candidates": "channels evaluated per greedy step",
    "prune_batch_size": "examples per greedy step",
    "finetune_iterations": "fine-tuning iterations after pruning",
    "finetune_lr": "initial fine-tuning learning rate",
    "finetune_schedule": "fine-tuning learning-rate schedule: cosine (decayed from --finetune-lr) or constant",
    "baselines": f"comma-separated subset of {','.join(BASELINES)}, or '' for none",
    "baselines_at": "run the baselines at the 'last' checkpoint or at 'all'",
    "seed": "seed of the sub-datasets, initialisations and batches",
}

PRESETS: dict[str, CNNStudyConfig] = {
    # the built-in MNIST-5k, a ResNet-8 of width 8, 3 trials; about 15 minutes on 2 CPU cores
    "quick": CNNStudyConfig(),
    # Appendix E: CIFAR-10 sub-datasets of 10K/30K/50K, ResNet-34 and MobileNetV2, SGD + cosine from 0.1, batch
    # 128, standard augmentation, prune every 20K iterations with the loss rule, epsilon picked on held-out data
    # for 40% fewer FLOPs (footnote 4), fine-tune 2,500 iterations from lr 0.01 (GPU advised)
    "paper": CNNStudyConfig(models=["resnet34", "mobilenetv2"], model_kwargs={}, data="cifar10:./cifar10",
                            normalize="standard", test_size=10000, sizes=[10000, 30000, 50000], trials=1,
                            iterations=80000, checkpoint_every=20000, flops_target=None,
                            epsilon_grid=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
                            flops_reduction=0.4, val_size=5000, candidates=50, finetune_iterations=2500,
                            baselines=list(BASELINES), baselines_at="last"),
}


def get_preset(name: str) -> CNNStudyConfig:
    return pick_preset(PRESETS, name)


def config_with(base: CNNStudyConfig, **overrides) -> CNNStudyConfig:
    return override(base, "CNN study", **overrides)


def load_data(config):
    """(training pool, test set) as Datasets. Built-in data sets have no test split: a class-balanced
    ``test_size`` is held out of them (seeded), the rest is the pool the sub-datasets are drawn from. With
    ``normalize="standard"`` both are standardised with the statistics of the training pool."""
    norm = "none" if config.normalize == "standard" else config.normalize
    train = load_dataset(config.data, normalize=norm, seed=config.seed)
    if train.image_shape is None or len(train.image_shape) != 3:
        raise InvalidOptionError(
            f"data {config.data!r} is not image data; use mnist5k, digits, mnist:DIR or cifar10:DIR")
    try:
        test = load_dataset(config.data, normalize=norm, split="test", seed=config.seed)
        test = test.subset(balanced_subsample(test.labels, min(config.test_size, len(test)), config.seed))
    except (ValueError, FileNotFoundError):
        if config.test_size >= len(train):
            raise InvalidOptionError(
                f"test_size={config.test_size} leaves no training data out of {len(train)} examples")
        held = balanced_subsample(train.labels, config.test_size, config.seed + 7919)
        mask = torch.ones(len(train), dtype=torch.bool)
        mask[held] = False
        test, train = train.subset(held), train.subset(torch.nonzero(mask).flatten())
    if config.normalize == "standard":
        train, test = standardize_with_training_stats(train, test)
    too_big = [s for s in config.sizes if s > len(train)]
    if too_big:
        raise InvalidOptionError(
            f"sizes {too_big} exceed the {len(train)} training examples available in {config.data}")
    return train, test


def accuracy(model, images, labels, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a labelled set."""
    return evaluate(model, images, labels, "cross_entropy", batch_size=batch)[1]


def cells(config: CNNStudyConfig, shard: tuple[int, int] | None = None) -> list[tuple[str, int, int]]:
    """The (model, size, trial) cells in order, or shard ``(i, P)``'s share (every P-th from the i-th)."""
    from .pretraining import check_shard

    everything = [(m, s, t) for m in config.models for s in config.sizes for t in range(config.trials)]
    if shard is None:
        return everything
    i, p = check_shard(shard)
    return everything[i::p]


@dataclass
class _Run:
    """What the cells of one study call share."""

    config: CNNStudyConfig
    device: torch.device
    out: Path
    train: object
    test: tuple
    log: Callable[[str], None]
    progress: bool
    distributed: bool
    store: ResultsStore | None = None
    done: set = field(default_factory=set)

    @property
    def main(self) -> bool:
        from ..distributed import parallel

        return not self.distributed or parallel.is_main()


def run_cnn_study(config: CNNStudyConfig, out_dir: str | Path, *, device: str = "cpu", progress: bool = True,
                  log: Callable[[str], None] = print, shard: tuple[int, int] | None = None,
                  distributed: bool = False) -> list[dict]:
    """Run (or resume) the CNN study into ``out_dir``; returns all rows (on rank 0; ``[]`` on other ranks).

    ``shard=(i, P)``: only that shard's cells (its rows are exactly those of a whole run). ``distributed``:
    every process of the initialised group calls this with the same arguments; training is data-parallel,
    each greedy step's candidates are split over the processes, rank 0 writes the files.
    """
    config.validate()
    dev = as_device(device)
    out = Path(out_dir)
    train, test = load_data(config)
    run = _Run(config, dev, out, train, (test.images().to(dev), test.labels.to(dev)), log, progress, distributed)
    ident = asdict(config)
    with (run_directory(out) if run.main else contextlib.nullcontext()), \
            (ResultsStore(out / DB_NAME, SCHEMA) if run.main else contextlib.nullcontext()) as store:
        run.store = store
        if run.main:
            store.bind_config(ident)
            if shard is not None:
                store.bind_shard(shard)
            atomic_write_text(out / "config.json", json.dumps(ident, indent=2) + "\n")
        run.done = _shared(store.done_keys() if run.main else None, distributed)
        if run.done:
            log(f"resuming: {len(run.done)} rows already in {out / DB_NAME}")
        mine = cells(config, shard)
        for name in config.models:
            if not any(m == name for m, _, _ in mine):
                continue
            epsilon = choose_epsilon(run, name)["epsilon"] if config.epsilon_grid is not None else None
            for m, size, trial in mine:
                if m == name:
                    _run_cell(run, name, size, trial, epsilon)
        rows = store.rows() if run.main else []
        if run.main:
            store.export_csv(out / "results.csv")
    return rows


def _shared(value, distributed: bool):
    """Rank 0's ``value`` on every rank (itself when not distributed)."""
    if not distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _methods(config: CNNStudyConfig, t: int, last: int) -> list[str]:
    return ["gfs"] + (list(config.baselines) if config.baselines_at == "all" or t == last else [])


def _train_run(run: _Run, name: str, size: int, trial: int):
    """Pre-train (or resume) the run of one cell: ``(sub-dataset indices, images, labels, checkpoints,
    model_kwargs)``."""
    from ..models import get_model
    from ..training.checkpoints import train_with_checkpoints

    config, dev = run.config, run.device
    seed = config.seed + 1000 * trial
    idx = balanced_subsample(run.train.labels, size, seed)
    sub = run.train.subset(idx)
    images, labels = sub.images().to(dev), sub.labels.to(dev)
    model_kwargs = {"num_classes": run.train.num_classes, "in_channels": run.train.image_shape[0],
                    **config.model_kwargs.get(name, {})}
    tc = TrainConfig(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size, loss="cross_entropy",
                     momentum=config.momentum, weight_decay=config.weight_decay, seed=seed, schedule="cosine",
                     augment=config.resolved_augment())
    run.log(f"{name}, size {size}, trial {trial}: pre-training for {config.iterations} iterations")
    ckpts = train_with_checkpoints(get_model(name, seed=seed, **model_kwargs).to(dev), images, labels, tc,
                                   run.out / "runs" / f"{name}-size{size}-trial{trial}", name=name,
                                   model_kwargs=model_kwargs, checkpoint_every=config.checkpoint_every,
                                   progress=run.progress and run.main, distributed=run.distributed)
    return idx, images, labels, ckpts, model_kwargs


def _run_cell(run: _Run, name: str, size: int, trial: int, epsilon: float | None) -> None:
    """Pre-train one (model, size, trial) run and prune every checkpoint whose rows are missing."""
    points = run.config.checkpoints()
    if all((name, size, trial, t, m) in run.done for t in points for m in _methods(run.config, t, points[-1])):
        return
    _, images, labels, ckpts, _ = _train_run(run, name, size, trial)
    for t, path in ckpts:
        todo = [m for m in _methods(run.config, t, points[-1]) if (name, size, trial, t, m) not in run.done]
        if todo:
            _prune_checkpoint(run, name, size, trial, t, path, images, labels, todo, epsilon)


def _prune_checkpoint(run: _Run, name, size, trial, t, path, images, labels, todo, epsilon) -> None:
    """Prune one checkpoint with GFS (and the baselines at its channels), fine-tune, record the rows."""
    from ..baselines import prune_like
    from ..channels import prune_model
    from ..training.checkpoints import load_model
    from ..training.retrain import finetune

    config, dev = run.config, run.device
    test_x, test_y = run.test
    seed = config.seed + 1000 * trial
    dense, _ = load_model(path, map_location=dev)
    dense.eval()
    dense_acc, dense_train_acc = accuracy(dense, test_x, test_y), accuracy(dense, images, labels)
    options = config.prune_options(epsilon)
    rule = ", ".join(f"{k}={v}" for k, v in options.items() if k in ("epsilon", "flops_target", "accuracy_tolerance"))
    start = time.perf_counter()
    result = prune_model(dense, (images, labels), device=dev, progress=run.progress and run.main,
                         distributed=run.distributed, **options)
    gfs_seconds = time.perf_counter() - start
    keep = {group: len(idx) for group, idx in result.kept.items()}
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
                         batch_size=config.batch_size, seed=seed, schedule=config.finetune_schedule,
                         augment=config.resolved_augment(), distributed=run.distributed) \
            if config.finetune_iterations else pruned
        row = {"model": name, "size": size, "trial": trial, "iteration": t, "method": method, "rule": rule,
               "dense_accuracy": dense_acc, "dense_train_accuracy": dense_train_acc, "pruned_accuracy": pruned_acc,
               "finetuned_accuracy": accuracy(tuned, test_x, test_y),
               "params": sum(p.numel() for p in pruned.parameters()), "macs": result.report["macs_after"],
               "dense_params": sum(p.numel() for p in dense.parameters()),
               "dense_macs": result.report["macs_before"], "prune_seconds": seconds, "kept": keep}
        if run.main:
            run.store.add(row)
        run.done.add((name, size, trial, t, method))
        run.log(f"  {name} iteration {t:>6} {method:>6}: dense {dense_acc:.4f}, pruned {pruned_acc:.4f}, "
                f"fine-tuned {row['finetuned_accuracy']:.4f} ({seconds:.1f} s)")


def choose_epsilon(run: _Run, name: str) -> dict:
    """Footnote 4 of the paper: pick the loss rule's epsilon from ``epsilon_grid`` so that the pruned net has
    at least ``flops_reduction`` fewer multiply-adds, judged on held-out data.

    The fully pre-trained net of the smallest size (trial 0; the study's own run, trained here if it is not
    yet) is pruned with every value of the grid; the held-out split is ``val_size`` class-balanced examples of
    the pool that are not in that run's training data. Of the values that reach the reduction, the one with
    the best held-out accuracy (before fine-tuning) wins, the smaller epsilon on a tie. The choice and every
    value's numbers are kept in ``OUT/epsilon.json`` (a resumed study reads them back).

    Raises:
        ValueError: no value of the grid reaches the reduction; the message names the closest one.
    """
    from ..channels import prune_model
    from ..training.checkpoints import load_model

    config = run.config
    path = run.out / EPSILON_FILE
    stored = json.loads(path.read_text()) if run.main and path.is_file() else {}
    stored = _shared(stored, run.distributed)
    if name in stored:
        return stored[name]
    size = min(config.sizes)
    idx, images, labels, ckpts, _ = _train_run(run, name, size, 0)
    dense, _ = load_model(ckpts[-1][1], map_location=run.device)
    dense.eval()
    rest = torch.ones(len(run.train), dtype=torch.bool)
    rest[idx] = False
    pool = torch.nonzero(rest).flatten()
    if len(pool) < config.val_size:
        raise InvalidOptionError(f"val_size={config.val_size}: only {len(pool)} examples of the pool are outside the "
                                 f"size-{size} run's training data; lower --val-size")
    val = run.train.subset(pool[balanced_subsample(run.train.labels[pool], config.val_size, config.seed + 104729)])
    val_x, val_y = val.images().to(run.device), val.labels.to(run.device)
    tried = []
    for eps in sorted(config.epsilon_grid):
        result = prune_model(dense, (images, labels), device=run.device, distributed=run.distributed,
                             **config.prune_options(eps))
        tried.append({"epsilon": eps, "reduction": 1 - result.ratio("macs"),
                      "val_accuracy": accuracy(result.model, val_x, val_y)})
        run.log(f"  {name} epsilon {eps:g}: {tried[-1]['reduction']:.1%} fewer multiply-adds, held-out accuracy "
                f"{tried[-1]['val_accuracy']:.4f}")
    ok = [r for r in tried if r["reduction"] >= config.flops_reduction - 1e-9]
    if not ok:
        closest = max(tried, key=lambda r: r["reduction"])
        raise InvalidOptionError(
            f"no epsilon in the grid {','.join(f'{e:g}' for e in sorted(config.epsilon_grid))} reaches "
            f"a {config.flops_reduction:.0%} multiply-add reduction on {name}: the closest is "
            f"epsilon={closest['epsilon']:g} with {closest['reduction']:.1%} fewer; add larger values to "
            f"--epsilon-grid or lower --flops-reduction")
    best = max(ok, key=lambda r: (r["val_accuracy"], -r["epsilon"]))
    choice = {"epsilon": best["epsilon"], "size": size, "val_size": config.val_size, "tried": tried}
    run.log(f"{name}: epsilon={best['epsilon']:g} ({best['reduction']:.1%} fewer multiply-adds, held-out accuracy "
            f"{best['val_accuracy']:.4f})")
    if run.main:
        atomic_write_text(path, json.dumps({**stored, name: choice}, indent=2) + "\n")
    return choice


def report(rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
    """See :func:`greedyprune.studies.cnn_report.report`."""
    from .cnn_report import report as cnn_report

    return cnn_report(rows, out_dir, draw)
