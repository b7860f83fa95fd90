"""The CNN pre-training study (Appendix E of "How much pre-training is enough to discover a good
subnetwork?", Table 1) and the Rethinking comparison ("Rethinking the Value of Network Pruning").

CNN study. For each class-balanced sub-dataset size and trial: pre-train a CNN (SGD, momentum,
cosine lr, weight decay) with a model checkpoint every ``checkpoint_every`` iterations; at every
checkpoint prune it with greedy forward selection, fine-tune briefly, and record test accuracy
next to the dense network's. Baseline criteria (L1, BN scale, Taylor, random) are pruned to the
same channels per group, and so to the same multiply-adds, and fine-tuned the same way.

Rethinking study. One pruned architecture (GFS on the fully trained dense network), retrained three
ways over several seeds: fine-tuned, Scratch-E (new initialisation, the dense net's iterations) and
Scratch-B (iterations scaled by dense / pruned multiply-adds).

Both write one SQLite row per finished unit of work (``results.sqlite``) and skip rows already
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

from ._config import override, pick_preset
from ..data import balanced_subsample, load_dataset
from ..storage import ResultsStore
from ..train import TrainConfig

DB_NAME = "results.sqlite"
BASELINES = ("l1", "bn", "taylor", "random")


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
    baselines: list = field(default_factory=lambda: list(BASELINES))
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


def _accuracy(model, images, labels, batch: int = 500) -> float:
    from ..deep import _evaluate

    return _evaluate(model, images, labels, batch)[1]


def run_cnn_study(config: CNNStudyConfig, out_dir: str | Path, *, device: str = "cpu", progress: bool = True,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the CNN study into ``out_dir``; returns all rows."""
    from ..baselines import prune_like
    from ..checkpoints import load_model, train_with_checkpoints
    from ..deep import prune_model
    from ..models import get_model
    from ..retrain import finetune

    config.validate()
    dev = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data(config)
    test_x, test_y = test.images().to(dev), test.labels.to(dev)
    ident = asdict(config)
    with ResultsStore(out / DB_NAME, kind="cnn") as store:
        store.bind_config(ident)
        (out / "config.json").write_text(json.dumps(ident, indent=2) + "\n")
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
                    dense_acc = _accuracy(dense, test_x, test_y)
                    dense_train_acc = _accuracy(dense, images, labels)
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
                                                batch_size=config.prune_batch_size)
                            seconds = time.perf_counter() - start
                        pruned_acc = _accuracy(pruned, test_x, test_y)
                        tuned = finetune(pruned, images, labels, config.finetune_iterations, config.finetune_lr,
                                         batch_size=config.batch_size, seed=seed) \
                            if config.finetune_iterations else pruned
                        row = {"size": size, "trial": trial, "iteration": t, "method": method,
                               "dense_accuracy": dense_acc, "dense_train_accuracy": dense_train_acc,
                               "pruned_accuracy": pruned_acc, "finetuned_accuracy": _accuracy(tuned, test_x, test_y),
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


# ------------------------------------------------------------------------------------------ Rethinking


@dataclass
class RethinkingConfig:
    """Settings of the Rethinking comparison for one pruned architecture."""

    model: str = "resnet8"
    model_kwargs: dict = field(default_factory=lambda: {"width": 8})
    data: str = "mnist5k"
    normalize: str = "pixel"
    test_size: int = 1000
    size: int = 4000
    iterations: int = 400  # the dense net's training, and Scratch-E's
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    flops_target: float = 0.5
    candidates: int | None = 8
    prune_batch_size: int = 128
    finetune_iterations: int = 100
    finetune_lr: float = 0.01
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    seed: int = 0

    def validate(self) -> None:
        for name in ("test_size", "size", "iterations", "batch_size", "prune_batch_size", "finetune_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")

    # the study's data split follows the CNN study's
    @property
    def sizes(self) -> list[int]:
        return [self.size]


RETHINKING_PRESETS = {
    "quick": RethinkingConfig(),
    "paper": RethinkingConfig(model="resnet56", model_kwargs={"shortcut": "A"}, data="cifar10:./cifar10",
                              normalize="standard", test_size=10000, size=50000, iterations=64000,
                              flops_target=0.5, candidates=50, finetune_iterations=6400, seeds=[0, 1, 2, 3, 4]),
}
MODES = ("dense", "finetune", "scratch-e", "scratch-b")


def run_rethinking(config: RethinkingConfig, out_dir: str | Path, *, device: str = "cpu", progress: bool = True,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Train the dense net (resumable), prune it once with GFS, retrain the pruned architecture three
    ways for every seed; one row per (mode, seed)."""
    from ..checkpoints import load_model, train_with_checkpoints
    from ..deep import load_pruned, prune_model, save_pruned
    from ..models import get_model
    from ..retrain import retrain

    config.validate()
    dev = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data(config)
    test_x, test_y = test.images().to(dev), test.labels.to(dev)
    sub = train.subset(balanced_subsample(train.labels, config.size, config.seed))
    images, labels = sub.images().to(dev), sub.labels.to(dev)
    model_kwargs = {"num_classes": train.num_classes, "in_channels": train.image_shape[0], **config.model_kwargs}
    ident = asdict(config)
    with ResultsStore(out / DB_NAME, kind="rethinking") as store:
        store.bind_config(ident)
        (out / "config.json").write_text(json.dumps(ident, indent=2) + "\n")
        done = store.done_keys()
        tc = TrainConfig(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size,
                         loss="cross_entropy", momentum=config.momentum, weight_decay=config.weight_decay,
                         seed=config.seed, schedule="cosine")
        log(f"dense {config.model}: {config.iterations} iterations on {config.size} examples")
        ckpts = train_with_checkpoints(get_model(config.model, seed=config.seed, **model_kwargs).to(dev), images,
                                       labels, tc, out / "dense", name=config.model, model_kwargs=model_kwargs,
                                       checkpoint_every=config.iterations, progress=progress)
        dense, _ = load_model(ckpts[-1][1], map_location=dev)
        dense.eval()
        dense_macs = _macs(dense, images[:1])
        if ("dense", config.seed) not in done:
            store.add({"mode": "dense", "seed": config.seed, "accuracy": _accuracy(dense, test_x, test_y),
                       "train_accuracy": _accuracy(dense, images, labels), "iterations": config.iterations,
                       "params": sum(p.numel() for p in dense.parameters()), "macs": dense_macs, "seconds": 0.0})
        pruned_path = out / "pruned.pt"
        if pruned_path.exists():
            pruned, _ = load_pruned(pruned_path)
            pruned.to(dev)
        else:
            result = prune_model(dense, (images, labels), flops_target=config.flops_target,
                                 candidates=config.candidates, batch_size=config.prune_batch_size, seed=config.seed,
                                 device=dev, progress=progress)
            save_pruned(pruned_path, result, name=config.model, model_kwargs=model_kwargs,
                        extra={"input_shape": list(images.shape[1:])})
            pruned = result.model
            log(result.summary())
        pruned_macs = _macs(pruned, images[:1])
        for seed in config.seeds:
            for mode in MODES[1:]:
                if (mode, seed) in done:
                    continue
                iterations = config.finetune_iterations if mode == "finetune" else config.iterations
                start = time.perf_counter()
                res = retrain(pruned, mode, images, labels, iterations=iterations,
                              lr=config.finetune_lr if mode == "finetune" else config.lr,
                              batch_size=config.batch_size, seed=seed, dense_macs=dense_macs,
                              pruned_macs=pruned_macs, progress=progress)
                row = {"mode": mode, "seed": seed, "accuracy": _accuracy(res.model, test_x, test_y),
                       "train_accuracy": _accuracy(res.model, images, labels), "iterations": res.config.iterations,
                       "params": sum(p.numel() for p in res.model.parameters()), "macs": pruned_macs,
                       "seconds": time.perf_counter() - start}
                store.add(row)
                log(f"  seed {seed} {mode:>9}: test accuracy {row['accuracy']:.4f} ({row['iterations']} iterations)")
        rows = store.rows()
        store.export_csv(out / "results.csv")
    return rows


def _macs(model, example) -> int:
    from ..deep import _total_macs

    return _total_macs(model, example)


def rethinking_table(rows: list[dict]) -> str:
    """Mean and standard deviation of test accuracy per retraining mode."""
    from .._text import format_table

    body = []
    for mode in MODES:
        acc = [r["accuracy"] for r in rows if r["mode"] == mode]
        if not acc:
            continue
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        its = sorted({r["iterations"] for r in rows if r["mode"] == mode})
        macs = sorted({r["macs"] for r in rows if r["mode"] == mode})
        body.append([mode, str(len(acc)), f"{statistics.fmean(acc):.4f}", f"{sd:.4f}",
                     "/".join(map(str, its)), f"{macs[0]:,}"])
    return format_table(["mode", "seeds", "mean acc", "std", "iterations", "MACs"], body)
