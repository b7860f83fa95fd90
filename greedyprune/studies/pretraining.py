"""The pre-training study (Section 5 and Figure 1 of "How much pre-training is enough to discover a
good subnetwork?").

For every hidden width, dataset size and trial: pre-train a two-layer net on a class-balanced
sub-dataset with binarised labels, and every ``eval_every`` iterations (iteration 0, the random
network, included) prune it to ``k`` hidden neurons with greedy forward selection; record the pruned and
the dense net's loss and accuracy on that training set (no fine-tuning). One row per
(width, size, trial, iteration) goes into ``OUT/results.sqlite`` as soon as it is computed; running the
same configuration on the same directory resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from ..checks import as_device, check_int
from ..data import NORMALIZATIONS, balanced_subsample, load_dataset
from ..fileio import atomic_write_text, run_directory
from ..training.loop import TrainConfig, evaluate, pretrain
from ..twolayer import ACTIVATIONS, TwoLayerNet, prune_two_layer
from .common import override, pick_preset
from .store import ResultsStore, Schema

STUDY_LOSSES = ("logistic", "squared")
DB_NAME = "results.sqlite"

#: One row per (width, size, trial, iteration): the pruned and dense net's loss and accuracy on the training set.
SCHEMA = Schema(
    kind="pretraining",
    columns=(("width", "INTEGER"), ("size", "INTEGER"), ("trial", "INTEGER"), ("iteration", "INTEGER"),
             ("pruned_accuracy", "REAL"), ("pruned_loss", "REAL"), ("dense_accuracy", "REAL"), ("dense_loss", "REAL"),
             ("distinct", "INTEGER"), ("k", "INTEGER"), ("prune_seconds", "REAL"), ("losses", "TEXT")),
    key=("width", "size", "trial", "iteration"),
    json_columns=("losses",),
)


@dataclass(frozen=True)
class PretrainingStudyConfig:
    """Everything that defines the study's results. Two runs with equal configs give equal rows."""

    data: str = "mnist5k"
    normalize: str = "unit"
    widths: tuple[int, ...] = (250, 1000)
    sizes: tuple[int, ...] | None = None  # None: `size_steps` evenly spaced sizes up to the whole data set
    size_steps: int = 5
    trials: int = 3
    iterations: int = 2000
    eval_every: int = 250
    k: int = 50
    lr: float = 1.0
    batch_size: int | None = 64
    loss: str = "logistic"
    activation: str = "relu"
    replacement: bool = True
    candidates: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {self.normalize!r}; expected one of {NORMALIZATIONS}")
        if not self.widths:
            raise ValueError("widths must name at least one hidden width")
        for w in self.widths:
            check_int("each width", w, 1)
        if self.sizes is not None:
            if not self.sizes:
                raise ValueError("sizes must name at least one dataset size (or leave it unset)")
            for s in self.sizes:
                check_int("each dataset size", s, 2)
        check_int("size_steps", self.size_steps, 1)
        check_int("trials", self.trials, 1)
        check_int("iterations", self.iterations, 0)
        check_int("eval_every", self.eval_every, 1)
        check_int("k", self.k, 1)
        check_int("seed", self.seed, 0)
        if self.candidates is not None:
            check_int("candidates", self.candidates, 1)
        if self.loss not in STUDY_LOSSES:
            raise ValueError(f"unknown study loss {self.loss!r}; expected one of {STUDY_LOSSES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {tuple(ACTIVATIONS)}")
        if not self.replacement and self.k > min(self.widths):
            raise ValueError(f"k={self.k} > width {min(self.widths)}: without replacement k must not exceed any width")
        TrainConfig(iterations=self.iterations, lr=self.lr, batch_size=self.batch_size, loss=self.loss).validate()

    def checkpoints(self) -> list[int]:
        """The pre-training iterations at which the net is pruned: 0, eval_every, ..., and the last."""
        points = list(range(0, self.iterations + 1, self.eval_every))
        if points[-1] != self.iterations:
            points.append(self.iterations)
        return points


#: Command-line help of each field (``greedyprune study pretraining --FIELD``).
OPTION_HELP = {
    "data": "mnist5k (built in), digits, synthetic, mnist:DIR or cifar10:DIR",
    "normalize": "input normalisation: unit (||x|| = 1), pixel, standard or none",
    "widths": "hidden widths, e.g. 250,1000",
    "sizes": "dataset sizes, e.g. 1000,3000,5000 (default: evenly spaced up to the whole data set)",
    "size_steps": "number of evenly spaced sizes when --sizes is not given",
    "trials": "trials per (width, size)",
    "iterations": "pre-training iterations",
    "eval_every": "prune every this many iterations",
    "k": "greedy selection steps (hidden nodes kept, at most)",
    "lr": "learning rate",
    "batch_size": "mini-batch size, or 'full' for full-batch gradient descent",
    "loss": "training and pruning loss: logistic or squared",
    "activation": "relu, tanh, sigmoid, softplus or gelu",
    "replacement": "allow a neuron to be selected more than once (the paper's multiset)",
    "candidates": "evaluate a random subset of this many neurons per step",
    "seed": "seed of the sub-datasets, initialisations and batches",
}

PRESETS: dict[str, PretrainingStudyConfig] = {
    # about 2-3 minutes on a 2-core CPU; shows the effect on the built-in 5,000 MNIST images
    "quick": PretrainingStudyConfig(),
    # the paper's protocol: 8K iterations, prune every 1K to 200 hidden nodes, 3 trials, several widths,
    # dataset sizes in 10 steps up to the whole data set. (The paper's widths, learning rate and batch size
    # did not survive in the text we have; these are our choices.)
    "paper": PretrainingStudyConfig(widths=(500, 1000, 2000), size_steps=10, trials=3, iterations=8000,
                                    eval_every=1000, k=200),
}


def get_preset(name: str) -> PretrainingStudyConfig:
    return pick_preset(PRESETS, name)


def config_with(base: PretrainingStudyConfig, **overrides) -> PretrainingStudyConfig:
    """``base`` with the given fields replaced, e.g. ``config_with(get_preset("quick"), trials=1)``."""
    return override(base, "study", **overrides)


def resolve_sizes(config: PretrainingStudyConfig, n_available: int) -> list[int]:
    """The dataset sizes: the given ones, or ``size_steps`` evenly spaced up to ``n_available``."""
    if config.sizes is None:
        sizes = sorted({round(n_available * i / config.size_steps) for i in range(1, config.size_steps + 1)})
    else:
        sizes = sorted(set(config.sizes))
    too_big = [s for s in sizes if s > n_available]
    if too_big:
        raise ValueError(f"dataset sizes {too_big} exceed the {n_available} examples of data set {config.data!r}")
    return sizes


def _study_identity(config: PretrainingStudyConfig, sizes: list[int]) -> dict:
    ident = asdict(config)
    ident["sizes"] = list(sizes)
    ident["widths"] = list(config.widths)
    del ident["size_steps"]  # resolved into `sizes`
    return ident


@dataclass
class StudyRun:
    out_dir: Path
    config: PretrainingStudyConfig
    sizes: list[int]
    computed: int = 0  # rows computed by this call
    skipped: int = 0  # rows found already finished
    rows: list[dict] = field(default_factory=list)


def run_pretraining_study(config: PretrainingStudyConfig, out_dir: str | Path, *, device: str = "cpu",
                          progress: bool = True, log: Callable[[str], None] = print) -> StudyRun:
    """Run (or resume) the study into ``out_dir``; returns what was done. Figures are drawn by the caller
    (:func:`greedyprune.studies.pretraining_report.plot_study`)."""
    config.validate()
    dev = as_device(device)
    out = Path(out_dir)
    ds = load_dataset(config.data, normalize=config.normalize, seed=config.seed)
    sizes = resolve_sizes(config, len(ds))
    points = config.checkpoints()

    with run_directory(out), ResultsStore(out / DB_NAME, SCHEMA) as store:
        store.bind_config(_study_identity(config, sizes))
        atomic_write_text(out / "config.json", json.dumps(_study_identity(config, sizes), indent=2) + "\n")
        done = store.done_keys()
        run = StudyRun(out, config, sizes)
        total = len(config.widths) * len(sizes) * config.trials * len(points)
        run.skipped = sum(1 for key in done if key[0] in config.widths and key[1] in sizes)
        if run.skipped:
            log(f"resuming: {run.skipped} of {total} rows already in {out / DB_NAME}")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=run.skipped, desc="pre-training study", unit="row")
        try:
            for width in config.widths:
                for size in sizes:
                    for trial in range(config.trials):
                        keys = [(width, size, trial, t) for t in points]
                        if all(key in done for key in keys):
                            continue
                        _run_one(config, ds, width, size, trial, dev, out, store, done, run, bar)
        finally:
            if bar is not None:
                bar.close()
        run.rows = store.rows()
        store.export_csv(out / "results.csv")
    return run


def setup_run(config: PretrainingStudyConfig, ds, width: int, size: int, trial: int, device="cpu"):
    """The sub-dataset, initial network and training settings of one (width, size, trial) run:
    ``(X, y, model, train_config)``. Everything that replays a study run starts here."""
    run_seed = config.seed * 1_000_003 + trial
    idx = balanced_subsample(ds.labels, size, seed=run_seed)
    X = ds.X[idx].to(device)
    y = ds.binary_labels()[idx].to(device)
    model = TwoLayerNet(ds.in_features, width, activation=config.activation, seed=run_seed).to(device)
    train_config = TrainConfig(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size,
                               loss=config.loss, seed=run_seed)
    return X, y, model, train_config


def load_study_config(ident: dict) -> PretrainingStudyConfig:
    """The config stored in a study database (its identity dict) back as a :class:`PretrainingStudyConfig`."""
    known = {f.name for f in fields(PretrainingStudyConfig)}
    values = {k: v for k, v in ident.items() if k in known}
    values["widths"] = tuple(values["widths"])
    values["sizes"] = tuple(values["sizes"]) if values.get("sizes") is not None else None
    return PretrainingStudyConfig(**values)


def _run_one(config, ds, width, size, trial, dev, out, store, done, run, bar) -> None:
    """Pre-train one (width, size, trial) net, pruning at each checkpoint not yet recorded."""
    X, y, model, train_config = setup_run(config, ds, width, size, trial, dev)
    ckpt = out / "checkpoints" / f"w{width}_n{size}_t{trial}.pt"

    def prune_and_record(iteration: int, net) -> None:
        key = (width, size, trial, iteration)
        if key in done:
            return
        t0 = time.perf_counter()
        pruned, result = prune_two_layer(net, X, y, config.k, loss=config.loss, replacement=config.replacement,
                                         candidates=config.candidates, seed=config.seed + trial)
        seconds = time.perf_counter() - t0
        pruned_loss, pruned_acc = evaluate(pruned, X, y, config.loss)
        dense_loss, dense_acc = evaluate(net, X, y, config.loss)
        store.add({
            "width": width, "size": size, "trial": trial, "iteration": iteration,
            "pruned_accuracy": pruned_acc, "pruned_loss": pruned_loss,
            "dense_accuracy": dense_acc, "dense_loss": dense_loss,
            "distinct": int(result.selected.numel()), "k": config.k, "prune_seconds": seconds,
            "losses": [float(v) for v in result.losses],
        })
        done.add(key)
        run.computed += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(width=width, size=size, trial=trial, pruned_acc=f"{pruned_acc:.3f}")

    pretrain(model, X, y, train_config, checkpoint_path=ckpt, checkpoint_every=config.eval_every,
             callback=prune_and_record, callback_every=config.eval_every)
    ckpt.unlink(missing_ok=True)  # every row of this run is recorded; the checkpoint is no longer needed
