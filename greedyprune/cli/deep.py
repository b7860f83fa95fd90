"""``greedyprune train`` and ``greedyprune prune``: CNNs from training to a pruned file."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .option_flags import deprecated_alias
from .prune_options import add_prune_model_options, prune_model_overrides
from .common import (UsageError, add_run_options, device, fraction, interrupted, key_value, nonnegative_float,
                     nonnegative_int, number, positive_float, positive_int, seed, set_threads, slug, workers)

__all__ = ["TRAIN_RUN_FORMAT", "TRAIN_RUN_CONFIG", "TRUST_HELP", "register", "fixed_subset", "cmd_train", "cmd_prune"]

TRAIN_RUN_FORMAT = "greedyprune-train-run-v1"
TRAIN_RUN_CONFIG = "train_config.json"

TRUST_HELP = ("WARNING: unpickling runs whatever code the file's author put in it. Allow checkpoints that store a "
              "whole pickled module (saved with full_module=True); only for files you made yourself")


def register(sub) -> None:
    _register_prune(sub)
    _register_train(sub)


def _register_prune(sub) -> None:
    from ..data import NORMALIZATIONS

    pr = sub.add_parser(
        "prune",
        help="prune a trained CNN checkpoint with greedy forward selection; writes the smaller model",
        description="Loads a model checkpoint (from greedyprune train, or a state_dict with --model), prunes it "
                    "layer by layer with greedy forward selection on the data set, and writes the physically "
                    "smaller model. Prints parameters, multiply-adds, accuracy and CPU latency, dense vs pruned.",
    )
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("--model", help="architecture of the checkpoint; checked against the one stored in it")
    pr.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    pr.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, mnist:DIR or cifar10:DIR")
    pr.add_argument("--normalize", choices=NORMALIZATIONS, default="pixel")
    pr.add_argument("--size", type=positive_int, help="search on a class-balanced subset of this many examples")
    rule = pr.add_mutually_exclusive_group()
    rule.add_argument("--epsilon", type=nonnegative_float, help="relative loss gap per group")
    rule.add_argument("--accuracy-tolerance", type=fraction, help="relative top-1 gap per group (default 0.02)")
    rule.add_argument("--keep-ratio", type=number(0, 1, low_open=True), help="fraction of channels kept per group")
    rule.add_argument("--flops-target", type=number(0, 1, low_open=True, high_open=True),
                      help="fraction (0, 1) of the dense multiply-adds to keep")
    rule.add_argument("--params-target", type=number(0, 1, low_open=True, high_open=True),
                      help="fraction (0, 1) of the dense parameters to keep")
    pr.add_argument("--candidates", type=positive_int, default=50, help="channels evaluated per step (default 50)")
    pr.add_argument("--all-candidates", action="store_true", help="evaluate every channel at every step")
    pr.add_argument("--replacement", action="store_true", help="allow a channel to be chosen more than once")
    pr.add_argument("--batch-size", type=positive_int, default=128)
    pr.add_argument("--finetune-steps", type=nonnegative_int, default=0, help="SGD steps after each group")
    pr.add_argument("--method", choices=["auto", "fast", "reference"], dest="evaluator", default=argparse.SUPPRESS,
                    action=deprecated_alias("--evaluator"), help="deprecated: the former name of --evaluator")
    pr.add_argument("--objective", choices=["auto", "local", "network", "local-gfs"], default="auto",
                    help="auto (default): block reconstruction for --keep-ratio / --flops-target, the network "
                         "objective for --epsilon / --accuracy-tolerance")
    pr.add_argument("--calibration", type=positive_int,
                    help="examples the block reconstruction's statistics use (default: about 150 G multiply-adds "
                         "of one dense pass, 32-4096)")
    pr.add_argument("--uniform", action="store_true", help="with --flops-target: one keep fraction in every group")
    pr.add_argument("--seed", type=seed, default=0)
    pr.add_argument("--workers", type=workers, default=1,
                    help="split each step's candidates over this many local processes (torch.distributed, gloo "
                         "on CPU / nccl on CUDA); under torchrun the launched ranks are used instead")
    pr.add_argument("--timeout", type=positive_float, default=300.0,
                    help="seconds a rank waits for the others before failing (distributed runs; default 300)")
    pr.add_argument("--out", type=Path, help="pruned model file (default: CHECKPOINT with suffix .pruned.pt); never "
                                             "the checkpoint itself, and an existing file only if it is a pruned "
                                             "model (or with --force)")
    pr.add_argument("--force", action="store_true", help="allow --out to replace an existing file that is not a "
                                                         "pruned model")
    pr.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    add_run_options(pr)
    add_prune_model_options(pr)
    pr.set_defaults(handler=cmd_prune)



def _register_train(sub) -> None:
    from ..data import NORMALIZATIONS
    from ..training.augment import AUGMENTATIONS
    from ..training.loop import SCHEDULES

    tr = sub.add_parser(
        "train",
        help="train a CNN (SGD, momentum, cosine lr, weight decay), saving a model checkpoint every K iterations",
        description="Pre-trains a CNN of greedyprune.models on an image data set with softmax cross-entropy, the "
                    "recipe of the paper's Appendix E (SGD, momentum 0.9, cosine lr from 0.1, batch 128, weight "
                    "decay 5e-4, the standard augmentation on CIFAR-10). Under torchrun (torchrun --nproc-per-node P "
                    "-m greedyprune train ...) it trains data-parallel: each process takes its share of every "
                    "batch, BatchNorm uses the whole batch, rank 0 writes. Writes OUT/train_config.json, a model "
                    "checkpoint OUT/checkpoints/iter_XXXXXXX.pt "
                    "at iteration 0, every --checkpoint-every iterations and at the end (with the accuracy on "
                    "fixed evaluation subsets), and the resume state OUT/train_state.pt. Running the same command "
                    "again resumes exactly where it stopped; checkpoints already written are kept.",
    )
    tr.add_argument("--model", required=True,
                    help="a name of greedyprune.models.MODEL_NAMES: resnet20, resnet56, resnet34, vgg16, ...")
    tr.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="a model option, repeatable, e.g. --model-arg shortcut=A")
    tr.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, mnist:DIR or cifar10:DIR")
    tr.add_argument("--normalize", choices=NORMALIZATIONS, default="pixel",
                    help="input normalisation (default pixel: values in [0, 1])")
    tr.add_argument("--size", type=positive_int, help="train on a class-balanced subset of this many examples "
                                                      "(drawn with --seed)")
    tr.add_argument("--iterations", type=positive_int, required=True, help="training steps")
    tr.add_argument("--checkpoint-every", type=positive_int, default=1000,
                    help="model checkpoint period in iterations (default 1000)")
    tr.add_argument("--state-every", type=positive_int,
                    help="resume-state period in iterations (default: min(checkpoint-every, 100))")
    tr.add_argument("--lr", type=positive_float, default=0.1, help="(initial) learning rate, default 0.1")
    tr.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum, default 0.9")
    tr.add_argument("--weight-decay", type=nonnegative_float, default=5e-4, help="default 5e-4")
    tr.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    tr.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule, default cosine")
    tr.add_argument("--augment", choices=("auto",) + AUGMENTATIONS, default="auto",
                    help="training augmentation: auto (default: 4-pixel padded random crop and horizontal flip on "
                         "CIFAR-10, none on digits), crop-flip or none")
    tr.add_argument("--seed", type=seed, default=0,
                    help="seed of the initialisation, the batch order and the subsets (default 0)")
    tr.add_argument("--eval-examples", type=positive_int, default=1000,
                    help="size of the fixed class-balanced train (and test) subsets evaluated at each checkpoint")
    tr.add_argument("--out", type=Path, help="output directory (default runs/train-MODEL-DATA[-nSIZE]-sSEED)")
    tr.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    tr.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show a progress bar (default: --progress)")
    tr.set_defaults(handler=cmd_train)


def fixed_subset(dataset, size: int, seed: int):
    """The whole data set, or a class-balanced subset of ``size`` examples drawn with ``seed``."""
    from ..data import balanced_subsample

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


def _check_run_config(path: Path, run: dict) -> bool:
    """Refuse to resume a run directory made with another configuration. Returns whether the file exists."""
    if not path.is_file():
        return False
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
    return True


def _check_resumable(state_path: Path, model) -> None:
    """A resume state left in the directory must fit the model about to be trained (checked before any write)."""
    from ..training.checkpoints import state_dict_mismatches
    from ..training.loop import load_checkpoint

    if not state_path.is_file():
        return
    state = load_checkpoint(state_path)
    lines = state_dict_mismatches(model.state_dict(), state["model"])
    if lines:
        raise UsageError(f"{state_path} holds the resume state of another model ({'; '.join(lines[:3])}); use "
                         f"another --out, or the options that run was started with")


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses

    from ..distributed import parallel
    from ..fileio import atomic_write_text, run_directory
    from ..models import get_model
    from ..training.checkpoints import TRAIN_STATE, train_with_checkpoints
    from ..training.loop import TrainConfig
    from .common import launched_by_torchrun, parallel_device

    name, model_args = _model_choice(args)
    size_part = f"-n{args.size}" if args.size else ""
    out = args.out or Path("runs") / f"train-{name}-{slug(args.data)}{size_part}-s{args.seed}"
    _check_train_out(out)  # before the data is loaded
    distributed = launched_by_torchrun()
    main = not distributed or parallel.is_main()
    dev = device(parallel_device(args.device) if distributed else args.device)
    set_threads(args)
    train, test = _train_and_test(args)
    if args.size is not None:
        if args.size > len(train):
            raise UsageError(f"--size {args.size} exceeds the {len(train)} training examples of {args.data}")
        train = fixed_subset(train, args.size, args.seed)
    model_kwargs = {"num_classes": train.num_classes, "in_channels": train.image_shape[0], **model_args}
    try:
        model = get_model(name, seed=args.seed, **model_kwargs)
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    augment = args.augment if args.augment != "auto" else ("crop-flip" if args.data.startswith("cifar10") else "none")
    config = TrainConfig(iterations=args.iterations, lr=args.lr, batch_size=args.batch_size, loss="cross_entropy",
                         momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                         schedule=args.schedule, augment=augment)
    config.validate()
    run = {"format": TRAIN_RUN_FORMAT, "model": name, "model_kwargs": model_kwargs, "data": args.data,
           "normalize": args.normalize, "size": args.size, "train_examples": len(train),
           "eval_examples": args.eval_examples, "checkpoint_every": args.checkpoint_every,
           "train": dataclasses.asdict(config)}
    run = json.loads(json.dumps(run))  # as it reads back from the file
    # everything that can refuse the run is checked before anything is written into the directory
    known = _check_run_config(out / TRAIN_RUN_CONFIG, run)
    _check_resumable(out / TRAIN_STATE, model)

    eval_sets = {"train": fixed_subset(train, args.eval_examples, args.seed)}
    if test is not None:
        eval_sets["test"] = fixed_subset(test, args.eval_examples, args.seed)
    extra = {"data": args.data, "normalize": args.normalize, "size": args.size, "seed": args.seed,
             "eval_examples": {k: len(d) for k, d in eval_sets.items()}, "train": dataclasses.asdict(config)}

    def report(t: int, path: Path, info: dict) -> None:
        parts = [f"iteration {t}: train loss {info['train_loss']:.4f} accuracy {info['train_accuracy']:.4f}"]
        if "test_accuracy" in info:
            parts.append(f"test accuracy {info['test_accuracy']:.4f}")
        print(", ".join(parts) + f" -> {path}", flush=True)

    resumed = (out / TRAIN_STATE).is_file()
    if main:
        print(f"train {name} on {args.data} ({len(train)} examples, {config.iterations} iterations) -> {out}"
              + (" (resuming)" if resumed else "")
              + (f" on {parallel.world_size()} processes, data-parallel" if distributed else ""), flush=True)
    model.to(dev)
    with run_directory(out) if main else contextlib.nullcontext():
        if not known and main:
            atomic_write_text(out / TRAIN_RUN_CONFIG, json.dumps(run, indent=2, sort_keys=True) + "\n")
        try:
            checkpoints = train_with_checkpoints(
                model, train.images(), train.labels, config, out, name=name, model_kwargs=model_kwargs,
                checkpoint_every=args.checkpoint_every, state_every=args.state_every,
                eval_sets={k: (d.images(), d.labels) for k, d in eval_sets.items()}, extra=extra,
                on_checkpoint=report, progress=args.progress and main, distributed=distributed,
            )
        except KeyboardInterrupt:
            return interrupted(out)
    if main:
        print(f"done: {len(checkpoints)} model checkpoints in {out / 'checkpoints'}; final model {checkpoints[-1][1]}")
    return 0


def _model_choice(args) -> tuple[str, dict]:
    """``--model`` and ``--model-arg``, checked before any data is loaded."""
    import torch

    from ..checks import check_model_size
    from ..models import MODEL_NAMES, get_model

    name = args.model.lower()
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; expected one of {', '.join(MODEL_NAMES)}")
    model_args = dict(args.model_arg)
    reserved = sorted(set(model_args) & {"num_classes", "in_channels", "seed"})
    if reserved:
        raise UsageError(f"--model-arg {', '.join(reserved)} is set by the command (from the data and --seed); "
                         f"leave it out")
    if args.data == "synthetic":
        raise UsageError("--data synthetic is not image data; use mnist5k, digits, mnist:DIR or cifar10:DIR")
    try:
        with torch.device("meta"):
            meta = get_model(name, **model_args)
        given = ", ".join(f"{k}={v}" for k, v in model_args.items()) or "its defaults"
        check_model_size(meta, f"--model {name} with {given}", "use a smaller --model-arg width=...")
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    except RuntimeError as exc:  # a tensor size that overflows 64 bits
        raise UsageError(f"--model-arg {model_args} describes tensors too large to exist ({str(exc).splitlines()[0]}); "
                         f"use a smaller --model-arg width=...") from None
    return name, model_args


def _train_and_test(args):
    """The training split and the test split (None for built-in data, or without one), both standardised
    with the training split's statistics when ``--normalize standard``."""
    from ..data import BUILTIN_DATASETS, load_dataset, standardize_with_training_stats

    norm = "none" if args.normalize == "standard" else args.normalize
    train = load_dataset(args.data, normalize=norm)
    if len(train.image_shape) != 3:
        raise UsageError(f"--data {args.data} is not image data (examples of shape {train.image_shape}); "
                         f"use mnist5k, digits, mnist:DIR or cifar10:DIR")
    test = None
    if args.data not in BUILTIN_DATASETS:
        try:
            test = load_dataset(args.data, normalize=norm, split="test")
        except FileNotFoundError as exc:
            print(f"note: no test split ({exc}); test accuracy is not recorded", file=sys.stderr)
    if args.normalize == "standard":
        train, *rest = standardize_with_training_stats(train, *([test] if test is not None else []))
        test = rest[0] if rest else None
    return train, test


def cmd_prune(args: argparse.Namespace) -> int:
    from ..distributed import parallel
    from ..channels import prune_model, save_pruned
    from ..data import load_dataset
    from ..fileio import RunLock, check_writable_file
    from ..metrics import measure_latency
    from ..training.checkpoints import load_model

    set_threads(args)
    dev = device(args.device)
    out = args.out or args.checkpoint.with_suffix(".pruned.pt")
    check_writable_file(out, "--out")  # before the search, not after it
    _check_prune_out(out, args.checkpoint, args.force)
    name = args.model.lower() if args.model else None
    model, info = load_model(args.checkpoint, name=name, model_kwargs=dict(args.model_arg) or None,
                             map_location=dev, trust_pickle=args.trust_pickle)
    ds = load_dataset(args.data, normalize=args.normalize)
    if ds.image_shape is None or len(ds.image_shape) != 3:
        raise UsageError(f"--data {args.data} is not image data; use mnist5k, digits, mnist:DIR or cifar10:DIR")
    if args.size is not None:
        if args.size > len(ds):
            raise UsageError(f"--size {args.size} exceeds the {len(ds)} examples of {args.data}; use at most "
                             f"{len(ds)}, or leave --size out to search on all of them")
        ds = fixed_subset(ds, args.size, args.seed)
    images, labels = ds.images(), ds.labels
    rule = {k: v for k, v in dict(epsilon=args.epsilon, accuracy_tolerance=args.accuracy_tolerance,
                                  keep_ratio=args.keep_ratio, flops_target=args.flops_target,
                                  params_target=args.params_target).items()
            if v is not None}
    options = dict(candidates=None if args.all_candidates else args.candidates, replacement=args.replacement,
                   batch_size=args.batch_size, seed=args.seed, device=dev, finetune_steps=args.finetune_steps,
                   objective=args.objective, calibration=args.calibration, **rule,
                   **prune_model_overrides(args))
    if args.uniform:
        if args.flops_target is None:
            raise UsageError("--uniform applies to --flops-target; add --flops-target F or drop --uniform")
        options["uniform"] = True
    with RunLock.for_file(out):
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
            parallel.init_process_group(timeout_s=args.timeout)
            result = prune_model(model, (images, labels), distributed=True,
                                 progress=not args.no_progress and parallel.is_main(), **options)
            if not parallel.is_main():
                return 0  # only rank 0 writes and reports
        elif args.workers > 1:
            print(f"pruning with {args.workers} worker processes")
            result = parallel.launch(_prune_worker, args.workers, model, images, labels, options,
                                     timeout_s=args.timeout, backend="nccl" if str(dev).startswith("cuda") else "gloo")
        else:
            result = prune_model(model, (images, labels), progress=not args.no_progress, **options)
        stored_name = info.get("name") if not info.get("full_module") else None
        save_pruned(out, result, name=stored_name, model_kwargs=info.get("model_kwargs") if stored_name else None,
                    extra={"source": str(args.checkpoint), "data": args.data}, full_module=stored_name is None)
    print(result.summary())
    shape = (1, *images.shape[1:])
    dense_lat = measure_latency(model.cpu(), shape, threads=1)["median"]
    pruned_lat = measure_latency(result.model.cpu(), shape, threads=1)["median"]
    print(f"latency     {dense_lat * 1e3:.2f} ms -> {pruned_lat * 1e3:.2f} ms ({pruned_lat / dense_lat:.3f}x; "
          f"multiply-adds {result.ratio('macs'):.3f}x; batch 1, 1 thread, CPU median)")
    print(f"wrote {out}")
    return 0


def _is_pruned_file(path: Path) -> bool:
    """Whether ``path`` looks like a file ``greedyprune prune`` wrote (a torch zip whose pickle names the pruned
    format); read without loading its tensors."""
    import zipfile

    from ..channels.io import PRUNED_FORMAT

    try:
        with zipfile.ZipFile(path) as z:
            pickles = [i for i in z.infolist() if i.filename.endswith("/data.pkl") and i.file_size < 2 ** 24]
            return len(pickles) == 1 and PRUNED_FORMAT.encode() in z.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _check_prune_out(out: Path, checkpoint: Path, force: bool) -> None:
    """``--out`` must not be the checkpoint being pruned, nor an existing file ``prune`` did not write."""
    if not out.exists():
        return
    if checkpoint.exists() and os.path.samefile(out, checkpoint):
        raise UsageError(f"--out {out} is the checkpoint being pruned; writing the pruned model there would "
                         f"replace the dense one. Choose another --out "
                         f"(default: {checkpoint.with_suffix('.pruned.pt')})")
    if not force and not _is_pruned_file(out):
        raise UsageError(f"--out {out} exists and is not a pruned model written by greedyprune prune (a checkpoint, a "
                         f"training state or another file); choose another --out, or pass --force to replace it")


def _check_train_out(out: Path) -> None:
    """``train --out`` must be new, empty, or a training run's directory (then it is resumed)."""
    from ..training.checkpoints import CHECKPOINT_DIR, TRAIN_STATE

    if not out.is_dir():
        return
    marks = [name for name in (TRAIN_RUN_CONFIG, TRAIN_STATE, CHECKPOINT_DIR) if (out / name).exists()]
    others = [p.name for p in out.iterdir() if p.name != ".lock"]
    if others and not marks:
        shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(f"--out {out} is a non-empty directory ({shown}) that is not a training run of greedyprune "
                         f"train (no {TRAIN_RUN_CONFIG}, {TRAIN_STATE} or {CHECKPOINT_DIR}/); choose a new or empty "
                         f"directory")


def _prune_worker(model, images, labels, options):
    """One rank of ``greedyprune prune --workers P``: every rank searches; rank 0 returns the result."""
    from ..channels import prune_model
    from ..distributed.parallel import is_main

    result = prune_model(model, (images, labels), distributed=True, **options)
    return result if is_main() else None
