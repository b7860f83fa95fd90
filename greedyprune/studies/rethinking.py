"""The Rethinking comparison ("Rethinking the Value of Network Pruning"): one pruned architecture (GFS
on the fully trained dense network), retrained three ways over several seeds - fine-tuned, Scratch-E (new
initialisation, the dense net's iterations) and Scratch-B (iterations scaled by dense / pruned
multiply-adds). One SQLite row per (mode, seed); an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..checks import as_device
from ..data import balanced_subsample
from ..errors import InvalidOptionError
from ..fileio import atomic_write_text, run_directory
from ..metrics import count_macs
from ..training.loop import TrainConfig
from .cnn import DB_NAME, accuracy, load_data
from .store import ResultsStore, Schema

__all__ = ["SCHEMA", "RethinkingConfig", "OPTION_HELP", "PRESETS", "MODES", "run_rethinking", "rethinking_table",
           "report"]

#: One row per (retraining mode, seed).
SCHEMA = Schema(
    kind="rethinking",
    columns=(("mode", "TEXT"), ("seed", "INTEGER"), ("accuracy", "REAL"), ("train_accuracy", "REAL"),
             ("iterations", "INTEGER"), ("params", "INTEGER"), ("macs", "INTEGER"), ("seconds", "REAL")),
    key=("mode", "seed"),
)


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
                raise InvalidOptionError(f"{name} must be a positive int, got {value!r}")
        if not self.seeds:
            raise InvalidOptionError("seeds must list at least one seed")
        from ..models import MODEL_NAMES
        from .common import check_sgd

        if not isinstance(self.model, str) or self.model.lower() not in MODEL_NAMES:
            raise InvalidOptionError(f"unknown model {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if not (isinstance(self.flops_target, (int, float)) and 0 < self.flops_target < 1):
            raise InvalidOptionError(f"flops_target must be in (0, 1), got {self.flops_target!r}")
        check_sgd(self)

    # the study's data split follows the CNN study's
    @property
    def sizes(self) -> list[int]:
        return [self.size]


#: Command-line help of each field (``greedyprune study rethinking --FIELD``).
OPTION_HELP = {
    "model": "a model name (see greedyprune train --help)",
    "data": "mnist5k, digits, mnist:DIR or cifar10:DIR",
    "size": "training examples (class-balanced subset)",
    "iterations": "dense (and Scratch-E) training iterations",
    "flops_target": "prune to this fraction of the dense multiply-adds",
    "finetune_iterations": "fine-tuning iterations",
    "seeds": "retraining seeds, e.g. 0,1,2",
}

PRESETS = {
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
    from ..channels import load_pruned, prune_model, save_pruned
    from ..models import get_model
    from ..training.checkpoints import load_model, train_with_checkpoints
    from ..training.retrain import retrain

    config.validate()
    dev = as_device(device)
    out = Path(out_dir)
    train, test = load_data(config)
    test_x, test_y = test.images().to(dev), test.labels.to(dev)
    sub = train.subset(balanced_subsample(train.labels, config.size, config.seed))
    images, labels = sub.images().to(dev), sub.labels.to(dev)
    model_kwargs = {"num_classes": train.num_classes, "in_channels": train.image_shape[0], **config.model_kwargs}
    ident = asdict(config)
    with run_directory(out), ResultsStore(out / DB_NAME, SCHEMA) as store:
        store.bind_config(ident)
        atomic_write_text(out / "config.json", json.dumps(ident, indent=2) + "\n")
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
        dense_macs = count_macs(dense, images[:1])
        if ("dense", config.seed) not in done:
            store.add({"mode": "dense", "seed": config.seed, "accuracy": accuracy(dense, test_x, test_y),
                       "train_accuracy": accuracy(dense, images, labels), "iterations": config.iterations,
                       "params": sum(p.numel() for p in dense.parameters()), "macs": dense_macs, "seconds": 0.0})
        pruned_path = out / "pruned.pt"
        if pruned_path.exists():
            pruned, _ = load_pruned(pruned_path)
            pruned.to(dev)
        else:
            result = prune_model(dense, (images, labels), flops_target=config.flops_target,
                                 candidates=config.candidates, batch_size=config.prune_batch_size, seed=config.seed,
                                 device=dev, progress=progress)
            save_pruned(pruned_path, result, name=config.model, model_kwargs=model_kwargs)
            pruned = result.model
            log(result.summary())
        pruned_macs = count_macs(pruned, images[:1])
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
                row = {"mode": mode, "seed": seed, "accuracy": accuracy(res.model, test_x, test_y),
                       "train_accuracy": accuracy(res.model, images, labels), "iterations": res.config.iterations,
                       "params": sum(p.numel() for p in res.model.parameters()), "macs": pruned_macs,
                       "seconds": time.perf_counter() - start}
                store.add(row)
                log(f"  seed {seed} {mode:>9}: test accuracy {row['accuracy']:.4f} ({row['iterations']} iterations)")
        rows = store.rows()
        store.export_csv(out / "results.csv")
    return rows


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


def report(rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
    """Mean and spread of test accuracy per retraining mode (no figure)."""
    return rethinking_table(rows)
