"""The pre-training study (Section 5 and Figure 1 of "How much pre-training is enough to discover a
good subnetwork?").

For every hidden width, dataset size and trial: pre-train a two-layer net on a class-balanced
sub-dataset with binarised labels, and every ``eval_every`` iterations (iteration 0, the random
network, included) prune it to ``k`` hidden neurons with greedy forward selection; record the pruned and
the dense net's loss and accuracy on that training set (no fine-tuning). Beside each pruned net, the row
holds a net of the pruned width trained directly on the same data (Ye et al.'s comparison): for as many
iterations as the dense net had (``direct_*``), and for as many multiply-adds (``direct_b_*``, Scratch-B:
the iterations times dense width / pruned width). One row per (width, size, trial, iteration) goes into
``OUT/results.sqlite`` as soon as it is computed; running the same configuration on the same directory
resumes where it stopped. ``shard=(i, P)`` runs every P-th (width, size, trial) cell from the i-th, into its
own directory; ``greedyprune merge`` joins the shards' databases.

:data:`PAPER_FIGURE1` is the protocol of the paper's Section 5 in one table; the ``paper`` preset is
built from it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from ..checks import as_device, check_int
from ..data import NORMALIZATIONS, balanced_subsample, load_dataset
from ..errors import InvalidOptionError
from ..fileio import atomic_write_text, run_directory
from ..training.loop import TrainConfig, evaluate, pretrain
from ..twolayer import ACTIVATIONS, PARAMETERIZATIONS, PRUNE_TO, TwoLayerNet, check_two_layer_size, prune_two_layer
from .common import override, pick_preset
from .store import ResultsStore, Schema

__all__ = ["STUDY_LOSSES", "REFERENCES", "DB_NAME", "PAPER_FIGURE1", "SCHEMA", "PretrainingStudyConfig", "OPTION_HELP",
           "PRESETS", "get_preset", "config_with", "resolve_sizes", "cells", "check_shard", "StudyRun",
           "run_pretraining_study", "setup_run", "direct_schedule", "train_direct", "load_study_config"]

STUDY_LOSSES = ("logistic", "squared")
REFERENCES = ("full", "largest")
DB_NAME = "results.sqlite"

#: Wolfe et al., "How much pre-training is enough to discover a good subnetwork?", Section 5 (Empirical
#: validation), the two-layer MNIST study of Figure 1: "sub-datasets of sizes 1K to 50K (i.e., in
#: increments of 5K)", "pre-trained for 8K iterations in total and pruned every 1K iterations to a size of
#: 200 hidden nodes", "averaged across three trials". We read the sizes as 1K, 5K, 10K, ..., 50K. The
#: hidden widths, learning rate and batch size did not survive in the text we have (the paper's widths
#: are "several"); the paper preset's are our choice.
PAPER_FIGURE1 = {
    "sizes": (1000,) + tuple(range(5000, 50001, 5000)),
    "iterations": 8000,
    "eval_every": 1000,
    "k": 200,
    "trials": 3,
}

#: One row per (width, size, trial, iteration): the pruned, dense and directly trained nets' loss and accuracy
#: on the training set.
SCHEMA = Schema(
    kind="pretraining",
    columns=(("width", "INTEGER"), ("size", "INTEGER"), ("trial", "INTEGER"), ("iteration", "INTEGER"),
             ("pruned_accuracy", "REAL"), ("pruned_loss", "REAL"), ("dense_accuracy", "REAL"), ("dense_loss", "REAL"),
             ("distinct", "INTEGER"), ("k", "INTEGER"), ("prune_to", "TEXT"), ("steps", "INTEGER"),
             ("reached", "INTEGER"), ("parameterization", "TEXT"), ("prune_seconds", "REAL"), ("losses", "TEXT"),
             ("direct_width", "INTEGER"), ("direct_accuracy", "REAL"), ("direct_loss", "REAL"),
             ("direct_b_iterations", "INTEGER"), ("direct_b_accuracy", "REAL"), ("direct_b_loss", "REAL")),
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
    # the defaults of the fields below are what studies written before they existed did
    parameterization: str = "standard"
    prune_to: str = "steps"
    replacement: bool = True
    candidates: int | None = None
    reference: str = "largest"
    scale_sizes: bool = False
    direct: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise InvalidOptionError(f"unknown normalize {self.normalize!r}; expected one of {NORMALIZATIONS}")
        if not self.widths:
            raise InvalidOptionError("widths must name at least one hidden width")
        for w in self.widths:
            check_int("each width", w, 1)
        if self.sizes is not None:
            if not self.sizes:
                raise InvalidOptionError("sizes must name at least one dataset size (or leave it unset)")
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
            raise InvalidOptionError(f"unknown study loss {self.loss!r}; expected one of {STUDY_LOSSES}")
        if self.activation not in ACTIVATIONS:
            raise InvalidOptionError(f"unknown activation {self.activation!r}; expected one of {tuple(ACTIVATIONS)}")
        if not self.replacement and self.k > min(self.widths):
            raise InvalidOptionError(
                f"k={self.k} > width {min(self.widths)}: without replacement k must not exceed any width")
        if self.parameterization not in PARAMETERIZATIONS:
            raise InvalidOptionError(f"unknown parameterization {self.parameterization!r}; expected one of "
                                     f"{PARAMETERIZATIONS}")
        if self.prune_to not in PRUNE_TO:
            raise InvalidOptionError(f"unknown prune_to {self.prune_to!r}; expected 'distinct' (k distinct neurons) or "
                                     f"'steps' (k selection steps)")
        if self.prune_to == "distinct" and self.k > min(self.widths):
            raise InvalidOptionError(
                f"--prune-to distinct with k={self.k}: the width {min(self.widths)} has fewer neurons "
                f"than that; lower --k to at most {min(self.widths)}, drop the narrow width, or use "
                f"--prune-to steps")
        if self.reference not in REFERENCES:
            raise InvalidOptionError(
                f"unknown reference {self.reference!r}; expected 'full' (a run on the whole data set) "
                f"or 'largest' (the largest size given)")
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
    "parameterization": "mean-field (the paper's f = (1/N) sum b_i act(a_i.x), Gaussian init, lr x N per neuron) "
                        "or standard (PyTorch's Linear layers and init)",
    "prune_to": "what --k counts: distinct (select until k distinct neurons) or steps (k selection steps)",
    "replacement": "allow a neuron to be selected more than once (the paper's multiset)",
    "candidates": "evaluate a random subset of this many neurons per step",
    "reference": "red-line reference: full (best pruned accuracy on the whole data set; a run on it is added) or "
                 "largest (the largest size given)",
    "scale_sizes": "scale the sizes down in proportion when the data set is smaller than the largest size (the "
                   "paper preset on built-in data: a reduced grid)",
    "direct": "also train nets of the pruned width directly (same iterations, and same compute: Scratch-B)",
    "seed": "seed of the sub-datasets, initialisations and batches",
}

PRESETS: dict[str, PretrainingStudyConfig] = {
    # the built-in 5,000 MNIST images, the paper's form (mean-field, k distinct neurons, reference on the full data
    # set); a few minutes on a laptop. --direct adds the nets trained directly at the pruned width (Ye et al.'s
    # comparison; their compute-matched runs are most of the time then)
    "quick": PretrainingStudyConfig(parameterization="mean-field", prune_to="distinct", reference="full"),
    # the paper's protocol (PAPER_FIGURE1), in its mean-field form with the theory's Gaussian init; 200 hidden
    # nodes are 200 distinct neurons. With --data mnist:DIR the grid is the paper's; on a smaller data set the
    # sizes are scaled down in proportion (a reduced grid, said so when it runs). The widths are our choice.
    "paper": PretrainingStudyConfig(widths=(500, 1000, 2000), sizes=PAPER_FIGURE1["sizes"],
                                    trials=PAPER_FIGURE1["trials"], iterations=PAPER_FIGURE1["iterations"],
                                    eval_every=PAPER_FIGURE1["eval_every"], k=PAPER_FIGURE1["k"],
                                    parameterization="mean-field", prune_to="distinct", reference="full",
                                    scale_sizes=True, direct=True),
}


def get_preset(name: str) -> PretrainingStudyConfig:
    return pick_preset(PRESETS, name)


def config_with(base: PretrainingStudyConfig, **overrides) -> PretrainingStudyConfig:
    """``base`` with the given fields replaced, e.g. ``config_with(get_preset("quick"), trials=1)``."""
    return override(base, "study", **overrides)


def resolve_sizes(config: PretrainingStudyConfig, n_available: int,
                  log: Callable[[str], None] | None = None) -> list[int]:
    """The dataset sizes: the given ones, or ``size_steps`` evenly spaced up to ``n_available``; with
    ``scale_sizes`` a grid larger than the data is scaled down in proportion (and ``log`` says so); with
    ``reference="full"`` the whole data set is added as the red line's reference row."""
    if config.sizes is None:
        sizes = sorted({round(n_available * i / config.size_steps) for i in range(1, config.size_steps + 1)})
    else:
        sizes = sorted(set(config.sizes))
    if config.scale_sizes and sizes[-1] > n_available:
        factor = n_available / sizes[-1]
        scaled = sorted({max(2, round(s * factor)) for s in sizes})
        if log is not None:
            log(f"REDUCED GRID: data set {config.data!r} has {n_available:,} examples, fewer than the largest size "
                f"{sizes[-1]:,}; every size is scaled by {factor:.4g}: {', '.join(f'{s:,}' for s in sizes)} -> "
                f"{', '.join(f'{s:,}' for s in scaled)}. For the paper's grid use --data mnist:DIR (full MNIST).")
        sizes = scaled
    too_big = [s for s in sizes if s > n_available]
    if too_big:
        raise InvalidOptionError(
            f"dataset sizes {too_big} exceed the {n_available} examples of data set {config.data!r}")
    if config.reference == "full" and sizes[-1] != n_available:
        if log is not None:
            log(f"reference: the red line compares every size with the best pruned accuracy on the full data set; "
                f"a run on all {n_available:,} examples is added to the sizes")
        sizes.append(n_available)
    return sizes


def cells(config: PretrainingStudyConfig, sizes: list[int], shard: tuple[int, int] | None = None) -> list[tuple]:
    """The study's (width, size, trial) cells in order, or the shard ``(i, P)``'s share: every P-th from the i-th."""
    everything = [(w, s, t) for w in config.widths for s in sizes for t in range(config.trials)]
    if shard is None:
        return everything
    i, p = check_shard(shard)
    return everything[i::p]


def check_shard(shard) -> tuple[int, int]:
    """``(i, P)`` with ``0 <= i < P``, or ValueError naming the fix."""
    if (not isinstance(shard, tuple) or len(shard) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in shard)):
        raise InvalidOptionError(f"shard must be a pair (i, P) of ints, got {shard!r}")
    i, p = shard
    if p < 1 or not 0 <= i < p:
        raise InvalidOptionError(f"shard {i}/{p}: expected i/P with P >= 1 and 0 <= i < P, e.g. 0/2 and 1/2")
    return i, p


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
                          progress: bool = True, log: Callable[[str], None] = print,
                          shard: tuple[int, int] | None = None, workers: int | None = 1) -> StudyRun:
    """Run (or resume) the study into ``out_dir``; returns what was done. Figures are drawn by the caller
    (:func:`greedyprune.studies.pretraining_report.plot_study`). ``shard=(i, P)`` runs only that shard's
    cells (:func:`cells`); its rows are exactly those of the same cells in a whole run.

    Every (width, size, trial) cell is computed on one torch thread, so the rows do not depend on the
    machine's thread count; ``workers`` processes compute cells side by side (None: one per CPU, see
    :func:`greedyprune.studies.cells.default_workers`), with the same rows as one.
    """
    from .cells import default_workers, run_cells

    config.validate()
    dev = as_device(device)
    if workers is not None:
        check_int("workers", workers, 1)
    out = Path(out_dir)
    ds = load_dataset(config.data, normalize=config.normalize, seed=config.seed)
    sizes = resolve_sizes(config, len(ds), log)
    for width in config.widths:  # before anything is written
        check_two_layer_size(ds.in_features, width, 1, max(sizes))
    points = config.checkpoints()
    mine = cells(config, sizes, shard)

    with run_directory(out), ResultsStore(out / DB_NAME, SCHEMA) as store:
        store.bind_config(_study_identity(config, sizes))
        if shard is not None:
            store.bind_shard(shard)
        atomic_write_text(out / "config.json", json.dumps(_study_identity(config, sizes), indent=2) + "\n")
        done = store.done_keys()
        run = StudyRun(out, config, sizes)
        total = len(mine) * len(points)
        run.skipped = sum(1 for key in done if key[:3] in set(mine))
        if run.skipped:
            log(f"resuming: {run.skipped} of {total} rows already in {out / DB_NAME}")
        todo = [cell for cell in mine if not all((*cell, t) in done for t in points)]
        n_workers = default_workers(len(todo), dev.type) if workers is None else workers
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=run.skipped, desc="pre-training study", unit="row")

        def one_cell(cell, emit) -> int:
            return _run_one(config, ds, *cell, dev, out, emit, done)

        def store_row(row: dict) -> None:
            store.add(row)
            done.add(tuple(row[c] for c in SCHEMA.key))
            run.computed += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(width=row["width"], size=row["size"], trial=row["trial"],
                                pruned_acc=f"{row['pruned_accuracy']:.3f}")

        try:
            run_cells(one_cell, todo, n_workers, on_row=store_row)
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
    model = TwoLayerNet(ds.in_features, width, activation=config.activation, seed=run_seed,
                        parameterization=config.parameterization).to(device)
    train_config = TrainConfig(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size,
                               loss=config.loss, seed=run_seed)
    return X, y, model, train_config


def direct_schedule(config: PretrainingStudyConfig, width: int) -> tuple[int, dict[int, int]]:
    """The directly trained net's width n and, per checkpoint t, its compute-matched iteration count
    (Scratch-B): ``round(t * width / n)`` - a two-layer net's multiply-adds are proportional to its width."""
    n = config.k
    return n, {t: round(t * width / n) for t in config.checkpoints()}


def train_direct(config: PretrainingStudyConfig, ds, width: int, size: int, trial: int, device="cpu") -> dict:
    """Train a net of the pruned width directly on the run's sub-dataset (a new initialisation of the same
    kind, the same training settings) and return ``{iteration: (loss, accuracy)}`` on that training set at
    every checkpoint and every compute-matched iteration of :func:`direct_schedule`. With a constant learning
    rate one long run gives, at step T, exactly a T-step run."""
    X, y, _, train_config = setup_run(config, ds, width, size, trial, device)
    n, matched = direct_schedule(config, width)
    seed = train_config.seed + 500_009
    model = TwoLayerNet(ds.in_features, n, activation=config.activation, seed=seed,
                        parameterization=config.parameterization).to(device)
    wanted = set(config.checkpoints()) | set(matched.values())
    long_config = TrainConfig(iterations=max(wanted), lr=config.lr, batch_size=config.batch_size, loss=config.loss,
                              seed=seed)
    found: dict[int, tuple[float, float]] = {}

    def record(t: int, net) -> None:
        if t in wanted:
            found[t] = evaluate(net, X, y, config.loss)

    pretrain(model, X, y, long_config, callback=record, callback_every=1)
    return found


def load_study_config(ident: dict) -> PretrainingStudyConfig:
    """The config stored in a study database (its identity dict) back as a :class:`PretrainingStudyConfig`."""
    known = {f.name for f in fields(PretrainingStudyConfig)}
    values = {k: v for k, v in ident.items() if k in known}
    values["widths"] = tuple(values["widths"])
    values["sizes"] = tuple(values["sizes"]) if values.get("sizes") is not None else None
    return PretrainingStudyConfig(**values)


def _run_one(config, ds, width, size, trial, dev, out, emit, done) -> int:
    """Pre-train one (width, size, trial) net, pruning at each checkpoint not yet recorded; ``emit(row)`` stores
    each row (it returns once the row is on disk). Returns the rows computed."""
    X, y, model, train_config = setup_run(config, ds, width, size, trial, dev)
    ckpt = out / "checkpoints" / f"w{width}_n{size}_t{trial}.pt"
    n_direct, matched = direct_schedule(config, width)
    direct = train_direct(config, ds, width, size, trial, dev) if config.direct else {}
    nan = (float("nan"), float("nan"))
    computed = 0

    def prune_and_record(iteration: int, net) -> None:
        nonlocal computed
        if (width, size, trial, iteration) in done:
            return
        t0 = time.perf_counter()
        pruned, result = prune_two_layer(net, X, y, config.k, loss=config.loss, prune_to=config.prune_to,
                                         replacement=config.replacement, candidates=config.candidates,
                                         seed=config.seed + trial)
        seconds = time.perf_counter() - t0
        pruned_loss, pruned_acc = evaluate(pruned, X, y, config.loss)
        dense_loss, dense_acc = evaluate(net, X, y, config.loss)
        same, matched_b = direct.get(iteration, nan), direct.get(matched[iteration], nan)
        emit({
            "width": width, "size": size, "trial": trial, "iteration": iteration,
            "pruned_accuracy": pruned_acc, "pruned_loss": pruned_loss,
            "dense_accuracy": dense_acc, "dense_loss": dense_loss,
            "distinct": int(result.selected.numel()), "k": config.k, "prune_to": config.prune_to,
            "steps": result.k, "reached": bool(result.reached),
            "parameterization": config.parameterization, "prune_seconds": seconds,
            "losses": [float(v) for v in result.losses],
            "direct_width": n_direct if config.direct else None, "direct_loss": same[0], "direct_accuracy": same[1],
            "direct_b_iterations": matched[iteration] if config.direct else None,
            "direct_b_loss": matched_b[0], "direct_b_accuracy": matched_b[1],
        })
        computed += 1

    pretrain(model, X, y, train_config, checkpoint_path=ckpt, checkpoint_every=config.eval_every,
             callback=prune_and_record, callback_every=config.eval_every)
    ckpt.unlink(missing_ok=True)  # every row of this run is recorded; the checkpoint is no longer needed
    return computed
