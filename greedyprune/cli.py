"""The ``greedyprune`` command line.

    greedyprune study pretraining [--preset quick|paper] [--data SPEC] [--out DIR] [overrides]
    greedyprune study appendix-c [--preset quick|paper]
    greedyprune theory threshold STUDY_DIR
    greedyprune advise [--data SPEC ...] | greedyprune advise --compare STUDY_DIR
    greedyprune plot DIR
    greedyprune export DIR [--csv FILE]
    greedyprune train --model NAME [--data SPEC --size N --iterations T --checkpoint-every K --out DIR ...]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__


class UsageError(Exception):
    """A bad option: printed as ``greedyprune: error: ...`` with exit status 2."""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 250,1000; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _batch_size(text: str):
    if text in ("full", "none", "gd"):
        return "full"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full' (full-batch GD), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1, got {value}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an int, a float, true/false, or else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as shortcut=A, got {text!r}")
    raw = raw.strip()
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                pass
    return key, value


def build_parser() -> argparse.ArgumentParser:
    from .studies.pretraining import PRESETS, STUDY_LOSSES
    from .twolayer import ACTIVATIONS
    from .data import NORMALIZATIONS

    parser = argparse.ArgumentParser(prog="greedyprune", description="Structured pruning by greedy forward selection.")
    parser.add_argument("--version", action="version", version=f"greedyprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    study = sub.add_parser("study", help="run a study from the papers")
    studies = study.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True
    pt = studies.add_parser(
        "pretraining",
        help="how much pre-training before GFS finds a good subnetwork (Figure 1)",
        description="For each hidden width, dataset size and trial: pre-train a two-layer net and every "
                    "--eval-every iterations prune it to --k hidden nodes with greedy forward selection. "
                    "Results go to OUT/results.sqlite as they are computed; re-running resumes.",
    )
    pt.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                    help="quick (default, a few minutes on a laptop CPU) or paper (the paper's protocol)")
    pt.add_argument("--data", help="mnist5k (default, built in), digits, synthetic, mnist:DIR or cifar10:DIR")
    pt.add_argument("--out", type=Path, help="output directory (default runs/pretraining-PRESET-DATA)")
    pt.add_argument("--widths", type=_int_list, help="hidden widths, e.g. 250,1000")
    pt.add_argument("--sizes", type=_int_list, help="dataset sizes, e.g. 1000,3000,5000 (default: evenly spaced)")
    pt.add_argument("--size-steps", type=_positive_int, help="number of evenly spaced sizes when --sizes is not given")
    pt.add_argument("--trials", type=_positive_int)
    pt.add_argument("--iterations", type=_nonnegative_int, help="pre-training iterations")
    pt.add_argument("--eval-every", type=_positive_int, help="prune every this many iterations")
    pt.add_argument("--k", type=_positive_int, help="greedy selection steps (hidden nodes kept, at most)")
    pt.add_argument("--lr", type=_positive_float, help="learning rate")
    pt.add_argument("--batch-size", type=_batch_size, help="mini-batch size, or 'full' for full-batch GD")
    pt.add_argument("--loss", choices=STUDY_LOSSES, help="training and pruning loss")
    pt.add_argument("--activation", choices=sorted(ACTIVATIONS))
    pt.add_argument("--normalize", choices=NORMALIZATIONS, help="input normalisation (default unit: ||x|| = 1)")
    pt.add_argument("--no-replacement", action="store_true", help="never select a neuron twice")
    pt.add_argument("--candidates", type=_positive_int, help="evaluate a random subset of this many neurons per step")
    pt.add_argument("--seed", type=_nonnegative_int)
    pt.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    pt.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")
    pt.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")

    ac = studies.add_parser(
        "appendix-c",
        help="Appendix C: smallest singular value of hidden features ~ sqrt(width); condition numbers vs rows",
        description="Reproduces Appendix C: (a) the smallest singular value of the hidden-feature matrix at "
                    "initialisation against the width N, with the sqrt(N) fit (figure2.png); (b) the condition "
                    "number of Gaussian random matrices against the number of rows (figure3.png). CSVs too.",
    )
    ac.add_argument("--preset", default="quick", choices=["quick", "paper"], help="quick (default, < 2 min) or paper")
    ac.add_argument("--out", type=Path, help="output directory (default runs/appendix-c-PRESET)")
    ac.add_argument("--repeats", type=_positive_int, help="random matrices per setting")
    ac.add_argument("--activation", choices=["tanh", "sigmoid", "erf"], help="bounded smooth activation")
    ac.add_argument("--seed", type=_nonnegative_int)
    ac.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    ac.add_argument("--no-progress", action="store_true")

    from .studies.cnn import BASELINES, PRESETS as CNN_PRESETS, RETHINKING_PRESETS

    cnn = studies.add_parser(
        "cnn",
        help="Appendix E / Table 1: GFS on CNN checkpoints of class-balanced sub-datasets, vs the dense net",
        description="For each sub-dataset size and trial: pre-train a CNN with a checkpoint every --checkpoint-every "
                    "iterations; prune every checkpoint with greedy forward selection, fine-tune briefly and record "
                    "test accuracy next to the dense net's; baselines (L1, BN scale, Taylor, random) are pruned to "
                    "the same channels per group. Rows go to OUT/results.sqlite as they finish; re-running resumes. "
                    "Prints a table like the paper's Table 1 and the baseline comparison; draws OUT/cnn_study.png.",
    )
    cnn.add_argument("--preset", default="quick", choices=sorted(CNN_PRESETS),
                     help="quick (default: built-in MNIST-5k, small ResNet, a few minutes on a CPU) or paper "
                          "(CIFAR-10 protocol of Appendix E; pass --data cifar10:DIR, GPU advised)")
    cnn.add_argument("--data", help="mnist5k, digits, mnist:DIR or cifar10:DIR")
    cnn.add_argument("--model", help="a model name (see greedyprune train --help)")
    cnn.add_argument("--sizes", type=_int_list, help="sub-dataset sizes, e.g. 10000,30000,50000")
    cnn.add_argument("--trials", type=_positive_int)
    cnn.add_argument("--iterations", type=_positive_int, help="pre-training iterations")
    cnn.add_argument("--checkpoint-every", type=_positive_int, help="prune every this many iterations")
    cnn.add_argument("--flops-target", type=_fraction, help="keep this fraction of the dense multiply-adds")
    cnn.add_argument("--accuracy-tolerance", type=_fraction, help="stop a group within this relative top-1 gap")
    cnn.add_argument("--candidates", type=_positive_int, help="channels evaluated per greedy step")
    cnn.add_argument("--finetune-iterations", type=_nonnegative_int)
    cnn.add_argument("--baselines", type=lambda t: [x for x in t.split(",") if x],
                     help=f"comma-separated subset of {','.join(BASELINES)}, or '' for none")
    cnn.add_argument("--seed", type=_nonnegative_int)
    cnn.add_argument("--out", type=Path, help="output directory (default runs/cnn-PRESET)")
    cnn.add_argument("--device", default="cpu")
    cnn.add_argument("--threads", type=_positive_int)
    cnn.add_argument("--no-progress", action="store_true")

    rt = studies.add_parser(
        "rethinking",
        help="one pruned architecture: fine-tuned vs Scratch-E vs Scratch-B (Rethinking the Value of Network Pruning)",
        description="Trains the dense net, prunes it once with GFS to --flops-target, then retrains the pruned "
                    "architecture per seed: fine-tuned, from scratch for the dense net's iterations (Scratch-E) and "
                    "for the same compute (Scratch-B). Prints mean and std of test accuracy; resumable.",
    )
    rt.add_argument("--preset", default="quick", choices=sorted(RETHINKING_PRESETS))
    rt.add_argument("--data")
    rt.add_argument("--model")
    rt.add_argument("--size", type=_positive_int)
    rt.add_argument("--iterations", type=_positive_int, help="dense (and Scratch-E) training iterations")
    rt.add_argument("--flops-target", type=_fraction)
    rt.add_argument("--finetune-iterations", type=_positive_int)
    rt.add_argument("--seeds", type=_int_list, help="e.g. 0,1,2")
    rt.add_argument("--out", type=Path, help="output directory (default runs/rethinking-PRESET)")
    rt.add_argument("--device", default="cpu")
    rt.add_argument("--threads", type=_positive_int)
    rt.add_argument("--no-progress", action="store_true")

    pr = sub.add_parser(
        "prune",
        help="prune a trained CNN checkpoint with greedy forward selection; writes the smaller model",
        description="Loads a model checkpoint (from greedyprune train, or a state_dict with --model), prunes it "
                    "layer by layer with greedy forward selection on the data set, and writes the physically "
                    "smaller model. Prints parameters, multiply-adds, accuracy and CPU latency, dense vs pruned.",
    )
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("--model", help="architecture of the checkpoint; checked against the one stored in it")
    pr.add_argument("--model-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE")
    pr.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, mnist:DIR or cifar10:DIR")
    pr.add_argument("--normalize", choices=NORMALIZATIONS, default="pixel")
    pr.add_argument("--size", type=_positive_int, help="search on a class-balanced subset of this many examples")
    rule = pr.add_mutually_exclusive_group()
    rule.add_argument("--epsilon", type=_nonnegative_float, help="relative loss gap per group")
    rule.add_argument("--accuracy-tolerance", type=_fraction, help="relative top-1 gap per group (default 0.02)")
    rule.add_argument("--keep-ratio", type=_fraction, help="fraction of channels kept per group")
    rule.add_argument("--flops-target", type=float, help="fraction (0, 1) of the dense multiply-adds to keep")
    pr.add_argument("--candidates", type=_positive_int, default=50, help="channels evaluated per step (default 50)")
    pr.add_argument("--all-candidates", action="store_true", help="evaluate every channel at every step")
    pr.add_argument("--replacement", action="store_true", help="allow a channel to be chosen more than once")
    pr.add_argument("--batch-size", type=_positive_int, default=128)
    pr.add_argument("--finetune-steps", type=_nonnegative_int, default=0, help="SGD steps after each group")
    pr.add_argument("--method", choices=["auto", "fast", "reference"], default="auto")
    pr.add_argument("--seed", type=_nonnegative_int, default=0)
    pr.add_argument("--workers", type=_positive_int, default=1,
                    help="split each step's candidates over this many local processes (torch.distributed, gloo "
                         "on CPU / nccl on CUDA); under torchrun the launched ranks are used instead")
    pr.add_argument("--timeout", type=_positive_float, default=300.0,
                    help="seconds a rank waits for the others before failing (distributed runs; default 300)")
    pr.add_argument("--out", type=Path, help="pruned model file (default: CHECKPOINT with suffix .pruned.pt)")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--threads", type=_positive_int)
    pr.add_argument("--no-progress", action="store_true")

    theory = sub.add_parser("theory", help="the paper's theory, measured on your data")
    theories = theory.add_subparsers(dest="theory", metavar="WHAT")
    theories.required = True
    th = theories.add_parser(
        "threshold",
        help="Theorem 3: Definition 1's lambda_0 and kappa, predicted threshold ~ kappa log m vs the red line",
        description="For each width and dataset size of a finished `study pretraining` directory, rebuilds the "
                    "initial network and sub-dataset, computes lambda_0 and kappa of the first-layer output matrix, "
                    "and plots the predicted threshold order kappa*log(m) (one fitted constant per width) next to "
                    "the observed red-line thresholds. Writes thresholds.csv and thresholds.png.",
    )
    th.add_argument("dir", type=Path, help="a finished study pretraining directory")
    th.add_argument("--out", type=Path, help="where to write (default: the study directory)")
    th.add_argument("--max-trials", type=_positive_int, help="use at most this many trials per size")
    th.add_argument("--no-progress", action="store_true")

    adv = sub.add_parser(
        "advise",
        help="train a two-layer net with the pre-training advisor and stop when pre-training is enough",
        description="Trains a two-layer net on a data set, pruning it with greedy forward selection every "
                    "--check-every steps; stops when the pruned accuracy and the selection have both stopped "
                    "improving (see greedyprune.PretrainingAdvisor), and saves the pruned model. With --compare "
                    "DIR it instead replays a finished `study pretraining` with the advisor and compares its stop "
                    "steps with the study's red-line thresholds.",
    )
    adv.add_argument("--compare", type=Path, metavar="STUDY_DIR", help="replay this study with the advisor")
    adv.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, synthetic, mnist:DIR, cifar10:DIR")
    adv.add_argument("--size", type=_positive_int, help="class-balanced subset of this many examples")
    adv.add_argument("--width", type=_positive_int, default=1000)
    adv.add_argument("--iterations", type=_positive_int, help="training steps at most (default 4000; with "
                     "--compare: twice the study's)")
    adv.add_argument("--check-every", type=_positive_int, default=250)
    adv.add_argument("--k", type=_positive_int, default=50)
    adv.add_argument("--lr", type=_positive_float, default=1.0)
    adv.add_argument("--batch-size", type=_batch_size, default=64)
    adv.add_argument("--check-examples", type=_positive_int, default=1024,
                     help="size of the fixed batch the advisor checks on (default 1024)")
    adv.add_argument("--patience", type=_positive_int, default=2)
    adv.add_argument("--tolerance", type=_positive_float, default=0.005)
    adv.add_argument("--distance-tolerance", type=_positive_float, default=0.05)
    adv.add_argument("--keep-training", action="store_true", help="train to the end even after the advisor fires")
    adv.add_argument("--seed", type=_nonnegative_int, default=0)
    adv.add_argument("--out", type=Path, help="output directory (default runs/advise-DATA, or the study directory)")
    adv.add_argument("--device", default="cpu")
    adv.add_argument("--threads", type=_positive_int)
    adv.add_argument("--no-progress", action="store_true")

    plot = sub.add_parser("plot", help="redraw a study's figures and summary from its database")
    plot.add_argument("dir", type=Path, help="the study's output directory")

    export = sub.add_parser("export", help="write a study's results as CSV")
    export.add_argument("dir", type=Path, help="the study's output directory")
    export.add_argument("--csv", type=Path, help="output file (default DIR/results.csv)")

    from .train import SCHEDULES

    tr = sub.add_parser(
        "train",
        help="train a CNN (SGD, momentum, cosine lr, weight decay), saving a model checkpoint every K iterations",
        description="Pre-trains a CNN of greedyprune.models on an image data set with softmax cross-entropy, the "
                    "recipe of the paper's Appendix E (SGD, momentum 0.9, cosine lr from 0.1, batch 128, weight "
                    "decay 5e-4). Writes OUT/train_config.json, a model checkpoint OUT/checkpoints/iter_XXXXXXX.pt "
                    "at iteration 0, every --checkpoint-every iterations and at the end (with the accuracy on "
                    "fixed evaluation subsets), and the resume state OUT/train_state.pt. Running the same command "
                    "again resumes exactly where it stopped; checkpoints already written are kept.",
    )
    tr.add_argument("--model", required=True,
                    help="a name of greedyprune.models.MODEL_NAMES: resnet20, resnet56, resnet34, vgg16, ...")
    tr.add_argument("--model-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="a model option, repeatable, e.g. --model-arg shortcut=A")
    tr.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, mnist:DIR or cifar10:DIR")
    tr.add_argument("--normalize", choices=NORMALIZATIONS, default="pixel",
                    help="input normalisation (default pixel: values in [0, 1])")
    tr.add_argument("--size", type=_positive_int, help="train on a class-balanced subset of this many examples "
                                                       "(drawn with --seed)")
    tr.add_argument("--iterations", type=_positive_int, required=True, help="training steps")
    tr.add_argument("--checkpoint-every", type=_positive_int, default=1000,
                    help="model checkpoint period in iterations (default 1000)")
    tr.add_argument("--state-every", type=_positive_int,
                    help="resume-state period in iterations (default: min(checkpoint-every, 100))")
    tr.add_argument("--lr", type=_positive_float, default=0.1, help="(initial) learning rate, default 0.1")
    tr.add_argument("--momentum", type=_fraction, default=0.9, help="SGD momentum, default 0.9")
    tr.add_argument("--weight-decay", type=_nonnegative_float, default=5e-4, help="default 5e-4")
    tr.add_argument("--batch-size", type=_positive_int, default=128, help="default 128")
    tr.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule, default cosine")
    tr.add_argument("--seed", type=_nonnegative_int, default=0,
                    help="seed of the initialisation, the batch order and the subsets (default 0)")
    tr.add_argument("--eval-examples", type=_positive_int, default=1000,
                    help="size of the fixed class-balanced train (and test) subsets evaluated at each checkpoint")
    tr.add_argument("--out", type=Path, help="output directory (default runs/train-MODEL-DATA[-nSIZE]-sSEED)")
    tr.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    tr.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show a progress bar (default: --progress)")
    return parser


def _open_store(directory: Path):
    from .storage import ResultsStore
    from .studies.pretraining import DB_NAME

    db = directory / DB_NAME
    if not directory.is_dir():
        raise UsageError(f"no such directory: {directory}")
    if not db.is_file():
        raise UsageError(f"{directory} holds no study results ({DB_NAME} not found); run a study with --out {directory}")
    return ResultsStore(db, kind="pretraining")


def _report(rows, out_dir: Path, draw: bool) -> None:
    from .plotting import plot_study, summary_table

    if not rows:
        raise UsageError(f"{out_dir} holds no result rows yet")
    print(summary_table(rows))
    if draw:
        for path in plot_study(rows, out_dir):
            print(f"wrote {path}")


def cmd_study_pretraining(args) -> int:
    import torch

    from .studies.pretraining import config_with, get_preset, run_pretraining_study

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(
        data=args.data, widths=args.widths, sizes=args.sizes, size_steps=args.size_steps, trials=args.trials,
        iterations=args.iterations, eval_every=args.eval_every, k=args.k, lr=args.lr, batch_size=args.batch_size,
        loss=args.loss, activation=args.activation, normalize=args.normalize, candidates=args.candidates,
        seed=args.seed, replacement=False if args.no_replacement else None,
    )
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if overrides.get("batch_size") == "full":
        overrides["batch_size"] = None  # full-batch gradient descent
    config = config_with(get_preset(args.preset), **overrides)
    out = args.out or Path("runs") / f"pretraining-{args.preset}-{_slug(config.data)}"
    print(f"study pretraining -> {out}")
    try:
        run = run_pretraining_study(config, out, device=args.device, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; every finished row is saved in {out}. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    print(f"{run.computed} rows computed, {run.skipped} already done; results in {out}/results.sqlite "
          f"and {out}/results.csv")
    _report(run.rows, out, draw=not args.no_plot)
    return 0


def cmd_study_appendix_c(args) -> int:
    import torch

    from .studies.appendix_c import config_with, get_preset, run_appendix_c, summary_text

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in dict(repeats=args.repeats, activation=args.activation, seed=args.seed).items()
                 if v is not None}
    config = config_with(get_preset(args.preset), **overrides)
    out = args.out or Path("runs") / f"appendix-c-{args.preset}"
    print(f"study appendix-c -> {out}")
    result = run_appendix_c(config, out, progress=not args.no_progress)
    print(summary_text(result))
    return 0


def cmd_theory_threshold(args) -> int:
    from .theory import run_threshold

    run_threshold(args.dir, args.out, progress=not args.no_progress)
    return 0


def cmd_advise(args) -> int:
    import torch

    from .studies.advisor import advise, compare_with_study

    if args.threads:
        torch.set_num_threads(args.threads)
    rules = dict(check_examples=args.check_examples, patience=args.patience, tolerance=args.tolerance,
                 distance_tolerance=args.distance_tolerance, device=args.device, progress=not args.no_progress)
    if args.compare is not None:
        compare_with_study(args.compare, args.out, iterations=args.iterations, **rules)
        return 0
    batch = None if args.batch_size == "full" else args.batch_size
    out = args.out or Path("runs") / f"advise-{_slug(args.data)}"
    advise(data=args.data, size=args.size, width=args.width, iterations=args.iterations or 4000,
                 check_every=args.check_every, k=args.k, lr=args.lr, batch_size=batch, seed=args.seed, out_dir=out,
                 stop_when_fired=not args.keep_training, **rules)
    return 0  # not firing is an answer too ("pre-train longer"), not an error


def _slug(data: str) -> str:
    """A directory-name form of a data spec: mnist5k -> mnist5k, mnist:/data/MNIST -> mnist-MNIST."""
    kind, _, directory = data.partition(":")
    text = kind + ("-" + os.path.basename(directory.rstrip("/\\")) if directory else "")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def cmd_plot(args) -> int:
    with _open_store(args.dir) as store:
        rows = store.rows()
    _report(rows, args.dir, draw=True)
    return 0


def cmd_export(args) -> int:
    target = args.csv or args.dir / "results.csv"
    with _open_store(args.dir) as store:
        store.export_csv(target)
        n = len(store.rows())
    print(f"wrote {n} rows to {target}")
    return 0


TRAIN_RUN_FORMAT = "greedyprune-train-run-v1"
TRAIN_RUN_CONFIG = "train_config.json"


def _fixed_subset(dataset, size: int, seed: int):
    """The whole data set, or a class-balanced subset of ``size`` examples drawn with ``seed``."""
    from .data import balanced_subsample

    if size >= len(dataset):
        return dataset
    return dataset.subset(balanced_subsample(dataset.labels, size, seed))


def _flatten(d: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_run_config(path: Path, run: dict) -> None:
    """Refuse to resume a run directory made with another configuration; write the config if new."""
    import json

    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path} ({exc}); use another --out or delete the file") from None
        if stored != run:
            old, new = _flatten(stored), _flatten(run)
            keys = sorted(set(old) | set(new))
            diff = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
            raise UsageError(f"{path.parent} holds a training run with another configuration ({'; '.join(diff)}); "
                             f"use another --out, or the same options to resume it")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def cmd_train(args) -> int:
    import dataclasses
    import json

    import torch

    from .checkpoints import TRAIN_STATE, train_with_checkpoints
    from .data import BUILTIN_DATASETS, load_dataset
    from .models import MODEL_NAMES, get_model
    from .train import TrainConfig

    name = args.model.lower()
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; expected one of {', '.join(MODEL_NAMES)}")
    model_args = dict(args.model_arg)
    reserved = sorted(set(model_args) & {"num_classes", "in_channels", "seed"})
    if reserved:
        raise UsageError(f"--model-arg {', '.join(reserved)} is set by the command (from the data and --seed); "
                         f"leave it out")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {args.device!r} ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} asked for, but CUDA is not available here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data == "synthetic":
        raise UsageError("--data synthetic is not image data; use mnist5k, digits, mnist:DIR or cifar10:DIR")
    try:
        with torch.device("meta"):  # check the model options before loading any data
            get_model(name, **model_args)
    except TypeError as exc:
        raise UsageError(str(exc)) from None

    train = load_dataset(args.data, normalize=args.normalize)
    if len(train.image_shape) != 3:
        raise UsageError(f"--data {args.data} is not image data (examples of shape {train.image_shape}); "
                         f"use mnist5k, digits, mnist:DIR or cifar10:DIR")
    test = None
    if args.data not in BUILTIN_DATASETS:
        try:
            test = load_dataset(args.data, normalize=args.normalize, split="test")
        except FileNotFoundError as exc:
            print(f"note: no test split ({exc}); test accuracy is not recorded", file=sys.stderr)
    if args.size is not None:
        if args.size > len(train):
            raise UsageError(f"--size {args.size} exceeds the {len(train)} training examples of {args.data}")
        train = _fixed_subset(train, args.size, args.seed)
    model_kwargs = {"num_classes": train.num_classes, "in_channels": train.image_shape[0], **model_args}
    try:
        model = get_model(name, seed=args.seed, **model_kwargs)
    except TypeError as exc:
        raise UsageError(str(exc)) from None

    config = TrainConfig(iterations=args.iterations, lr=args.lr, batch_size=args.batch_size, loss="cross_entropy",
                         momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                         schedule=args.schedule)
    config.validate()
    run = {"format": TRAIN_RUN_FORMAT, "model": name, "model_kwargs": model_kwargs, "data": args.data,
           "normalize": args.normalize, "size": args.size, "train_examples": len(train),
           "eval_examples": args.eval_examples, "checkpoint_every": args.checkpoint_every,
           "train": dataclasses.asdict(config)}
    run = json.loads(json.dumps(run))  # as it reads back from the file
    size_part = f"-n{args.size}" if args.size else ""
    out = args.out or Path("runs") / f"train-{name}-{_slug(args.data)}{size_part}-s{args.seed}"
    _check_run_config(out / TRAIN_RUN_CONFIG, run)

    eval_sets = {"train": _fixed_subset(train, args.eval_examples, args.seed)}
    if test is not None:
        eval_sets["test"] = _fixed_subset(test, args.eval_examples, args.seed)
    extra = {"data": args.data, "normalize": args.normalize, "size": args.size, "seed": args.seed,
             "eval_examples": {k: len(d) for k, d in eval_sets.items()}, "train": dataclasses.asdict(config)}

    def report(t: int, path: Path, info: dict) -> None:
        parts = [f"iteration {t}: train loss {info['train_loss']:.4f} accuracy {info['train_accuracy']:.4f}"]
        if "test_accuracy" in info:
            parts.append(f"test accuracy {info['test_accuracy']:.4f}")
        print(", ".join(parts) + f" -> {path}", flush=True)

    resumed = (out / TRAIN_STATE).is_file()
    print(f"train {name} on {args.data} ({len(train)} examples, {config.iterations} iterations) -> {out}"
          + (" (resuming)" if resumed else ""), flush=True)
    model.to(device)
    try:
        checkpoints = train_with_checkpoints(
            model, train.images(), train.labels, config, out, name=name, model_kwargs=model_kwargs,
            checkpoint_every=args.checkpoint_every, state_every=args.state_every,
            eval_sets={k: (d.images(), d.labels) for k, d in eval_sets.items()}, extra=extra,
            on_checkpoint=report, progress=args.progress,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; the checkpoints written so far are in {out}. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    print(f"done: {len(checkpoints)} model checkpoints in {out / 'checkpoints'}; final model {checkpoints[-1][1]}")
    return 0


def cmd_study_cnn(args) -> int:
    import torch

    from .studies.cnn import baseline_table, config_with, get_preset, plot_cnn_study, run_cnn_study, table1

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in dict(data=args.data, model=args.model, sizes=args.sizes, trials=args.trials,
                                       iterations=args.iterations, checkpoint_every=args.checkpoint_every,
                                       candidates=args.candidates, finetune_iterations=args.finetune_iterations,
                                       baselines=args.baselines, seed=args.seed).items() if v is not None}
    if args.model is not None:
        overrides["model_kwargs"] = {}
    if args.flops_target is not None:
        overrides.update(flops_target=args.flops_target, accuracy_tolerance=None)
    if args.accuracy_tolerance is not None:
        overrides.update(accuracy_tolerance=args.accuracy_tolerance, flops_target=None)
    config = config_with(get_preset(args.preset), **overrides)
    out = args.out or Path("runs") / f"cnn-{args.preset}"
    print(f"study cnn -> {out}")
    try:
        rows = run_cnn_study(config, out, device=_device(args.device), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; finished rows are in {out}; run the same command again to resume", file=sys.stderr)
        return 130
    print("\nfine-tuned test accuracy of the GFS-pruned net (columns: pre-training iterations)")
    print(table1(rows))
    if any(r["method"] != "gfs" for r in rows):
        print("\nat the same channels per group (same multiply-adds):")
        print(baseline_table(rows))
    print(f"wrote {plot_cnn_study(rows, Path(out) / 'cnn_study.png')}")
    return 0


def cmd_study_rethinking(args) -> int:
    import torch

    from .studies.cnn import RETHINKING_PRESETS, rethinking_table, run_rethinking
    from .studies._config import override, pick_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in dict(data=args.data, model=args.model, size=args.size, iterations=args.iterations,
                                       flops_target=args.flops_target, finetune_iterations=args.finetune_iterations,
                                       seeds=args.seeds).items() if v is not None}
    if args.model is not None:
        overrides["model_kwargs"] = {}
    config = override(pick_preset(RETHINKING_PRESETS, args.preset), "rethinking study", **overrides)
    out = args.out or Path("runs") / f"rethinking-{args.preset}"
    print(f"study rethinking -> {out}")
    try:
        rows = run_rethinking(config, out, device=_device(args.device), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; finished rows are in {out}; run the same command again to resume", file=sys.stderr)
        return 130
    print(rethinking_table(rows))
    return 0


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {text!r} ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text} asked for, but CUDA is not available here; use --device cpu")
    return text


def cmd_prune(args) -> int:
    import torch

    from .checkpoints import load_model
    from .data import load_dataset
    from .deep import prune_model, save_pruned
    from .metrics import measure_latency

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    name = args.model.lower() if args.model else None
    model, info = load_model(args.checkpoint, name=name, model_kwargs=dict(args.model_arg) or None,
                             map_location=device)
    ds = load_dataset(args.data, normalize=args.normalize)
    if ds.image_shape is None or len(ds.image_shape) != 3:
        raise UsageError(f"--data {args.data} is not image data; use mnist5k, digits, mnist:DIR or cifar10:DIR")
    if args.size is not None:
        ds = _fixed_subset(ds, args.size, args.seed)
    images, labels = ds.images(), ds.labels
    rule = {k: v for k, v in dict(epsilon=args.epsilon, accuracy_tolerance=args.accuracy_tolerance,
                                  keep_ratio=args.keep_ratio, flops_target=args.flops_target).items()
            if v is not None}
    options = dict(candidates=None if args.all_candidates else args.candidates, replacement=args.replacement,
                   batch_size=args.batch_size, seed=args.seed, device=device, finetune_steps=args.finetune_steps,
                   method=args.method, **rule)
    from . import distributed as dd

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        dd.init_process_group(timeout_s=args.timeout)
        result = prune_model(model, (images, labels), distributed=True, progress=not args.no_progress and dd.is_main(),
                             **options)
        if not dd.is_main():
            return 0  # only rank 0 writes and reports
    elif args.workers > 1:
        print(f"pruning with {args.workers} worker processes")
        result = dd.launch(_prune_worker, args.workers, model, images, labels, options, timeout_s=args.timeout,
                           backend="nccl" if str(device).startswith("cuda") else "gloo")
    else:
        result = prune_model(model, (images, labels), progress=not args.no_progress, **options)
    out = args.out or args.checkpoint.with_suffix(".pruned.pt")
    stored_name = info.get("name") if isinstance(info, dict) else None
    save_pruned(out, result, name=stored_name, model_kwargs=info.get("model_kwargs") if stored_name else None,
                extra={"input_shape": list(images.shape[1:]), "source": str(args.checkpoint), "data": args.data})
    print(result.summary())
    shape = (1, *images.shape[1:])
    dense_lat = measure_latency(model, shape, threads=1)["median"]
    pruned_lat = measure_latency(result.model, shape, threads=1)["median"]
    r = result.report
    print(f"latency     {dense_lat * 1e3:.2f} ms -> {pruned_lat * 1e3:.2f} ms ({pruned_lat / dense_lat:.3f}x; "
          f"multiply-adds {r['macs_after'] / r['macs_before']:.3f}x; batch 1, 1 thread, CPU median)")
    print(f"wrote {out}")
    return 0


def _prune_worker(model, images, labels, options):
    """One rank of ``greedyprune prune --workers P``: every rank searches; rank 0 returns the result."""
    from .deep import prune_model
    from .distributed import is_main

    result = prune_model(model, (images, labels), distributed=True, **options)
    return result if is_main() else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "study":
        handler = {"pretraining": cmd_study_pretraining, "appendix-c": cmd_study_appendix_c, "cnn": cmd_study_cnn,
                   "rethinking": cmd_study_rethinking}[args.study]
    else:
        handler = {"plot": cmd_plot, "export": cmd_export, "theory": cmd_theory_threshold,
                   "advise": cmd_advise, "train": cmd_train, "prune": cmd_prune}[args.command]
    from .distributed import DistributedSelectionError, WorkerError

    try:
        return handler(args)
    except (UsageError, ValueError, OSError, FloatingPointError, WorkerError, DistributedSelectionError) as exc:
        parser.exit(2, f"greedyprune: error: {exc}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
