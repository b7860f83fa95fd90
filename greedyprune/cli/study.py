"""``greedyprune study pretraining | appendix-c | cnn | rethinking``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_config_options, add_run_options, add_shard_option, batch_size, config_overrides, device,
                     interrupted, launched_by_torchrun, name_list, parallel_device, positive_int, set_threads,
                     seed, shard_suffix, slug, workers)

__all__ = ["register", "cmd_pretraining", "cmd_appendix_c", "cmd_cnn", "cmd_rethinking"]


def register(sub) -> None:
    from ..studies import cnn, pretraining, rethinking

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
    pt.add_argument("--preset", default="quick", choices=sorted(pretraining.PRESETS),
                    help="quick (default, a few minutes on a laptop CPU) or paper (the paper's protocol)")
    pt.add_argument("--out", type=Path, help="output directory (default runs/pretraining-PRESET-DATA)")
    add_config_options(pt, pretraining.PretrainingStudyConfig, pretraining.OPTION_HELP,
                       types={"batch_size": batch_size}, defaults=pretraining.PRESETS["quick"])
    add_run_options(pt)
    pt.add_argument("--workers", type=workers,
                    help="processes computing (width, size, trial) cells side by side, each on one torch thread, "
                         "so the numbers do not depend on --threads or on this count (default: one per CPU)")
    add_shard_option(pt)
    pt.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    pt.set_defaults(handler=cmd_pretraining)

    ac = studies.add_parser(
        "appendix-c",
        help="Appendix C: smallest singular value of hidden features ~ sqrt(width); condition numbers vs rows",
        description="Reproduces Appendix C: (a) the smallest singular value of the hidden-feature matrix at "
                    "initialisation against the width N, with the sqrt(N) fit (figure2.png); (b) the condition "
                    "number of Gaussian random matrices against the number of rows (figure3.png). CSVs too.",
    )
    ac.add_argument("--preset", default="quick", choices=["quick", "paper"], help="quick (default, < 2 min) or paper")
    ac.add_argument("--out", type=Path, help="output directory (default runs/appendix-c-PRESET)")
    ac.add_argument("--repeats", type=positive_int, help="random matrices per setting")
    ac.add_argument("--activation", choices=["tanh", "sigmoid", "erf"], help="bounded smooth activation")
    ac.add_argument("--seed", type=seed)
    add_run_options(ac, device=False)
    ac.set_defaults(handler=cmd_appendix_c)

    cn = studies.add_parser(
        "cnn",
        help="Appendix E / Table 1: GFS on CNN checkpoints of class-balanced sub-datasets, vs the dense net",
        description="For each model, sub-dataset size and trial: pre-train a CNN with a checkpoint every "
                    "--checkpoint-every iterations; prune every checkpoint with greedy forward selection, fine-tune "
                    "(cosine from --finetune-lr) and record test accuracy next to the dense net's; baselines are "
                    "pruned to the same channels per group. Stopping rule: --epsilon, --epsilon-grid (epsilon "
                    "picked on held-out data for --flops-reduction fewer multiply-adds, the default), "
                    "--flops-target or --accuracy-tolerance. Rows go to OUT/results.sqlite as they finish; "
                    "re-running resumes. Under torchrun the training is data-parallel and each step's candidates "
                    "are split over the processes. Prints a table like the paper's Table 1 per model and the "
                    "baseline comparison; draws OUT/cnn_study.png.",
    )
    cn.add_argument("--preset", default="quick", choices=sorted(cnn.PRESETS),
                    help="quick (default: built-in MNIST-5k, small ResNet, a few minutes on a CPU) or paper "
                         "(CIFAR-10 protocol of Appendix E with ResNet-34 and MobileNetV2; pass --data cifar10:DIR, "
                         "GPU advised)")
    cn.add_argument("--out", type=Path, help="output directory (default runs/cnn-PRESET)")
    add_config_options(cn, cnn.CNNStudyConfig, cnn.OPTION_HELP, skip=("model_kwargs",), types={"baselines": name_list},
                       defaults=cnn.PRESETS["quick"])
    add_run_options(cn)
    add_shard_option(cn)
    cn.set_defaults(handler=cmd_cnn)

    rt = studies.add_parser(
        "rethinking",
        help="one pruned architecture: fine-tuned vs Scratch-E vs Scratch-B (Rethinking the Value of Network Pruning)",
        description="Trains the dense net, prunes it once with GFS to --flops-target, then retrains the pruned "
                    "architecture per seed: fine-tuned, from scratch for the dense net's iterations (Scratch-E) and "
                    "for the same compute (Scratch-B). Prints mean and std of test accuracy; resumable.",
    )
    rt.add_argument("--preset", default="quick", choices=sorted(rethinking.PRESETS))
    rt.add_argument("--out", type=Path, help="output directory (default runs/rethinking-PRESET)")
    add_config_options(rt, rethinking.RethinkingConfig, rethinking.OPTION_HELP, skip=("model_kwargs",))
    add_run_options(rt)
    rt.set_defaults(handler=cmd_rethinking)


def _model_override(overrides: dict) -> dict:
    """A model named on the command line comes without the preset's model options."""
    if "model" in overrides:
        overrides.setdefault("model_kwargs", {})
    return overrides


def cmd_pretraining(args: argparse.Namespace) -> int:
    from ..studies import report
    from ..studies.pretraining import PretrainingStudyConfig, config_with, get_preset, run_pretraining_study

    set_threads(args)
    overrides = config_overrides(args, PretrainingStudyConfig)
    if overrides.get("batch_size") == "full":
        overrides["batch_size"] = None  # full-batch gradient descent
    config = config_with(get_preset(args.preset), **overrides)
    config.validate()
    out = args.out or Path("runs") / f"pretraining-{args.preset}-{slug(config.data)}{shard_suffix(args.shard)}"
    print(f"study pretraining -> {out}")
    try:
        run = run_pretraining_study(config, out, device=device(args.device), progress=not args.no_progress,
                                    shard=args.shard, workers=args.workers)
    except KeyboardInterrupt:
        return interrupted(out)
    print(f"{run.computed} rows computed, {run.skipped} already done; results in {out}/results.sqlite "
          f"and {out}/results.csv")
    if args.shard is not None:
        print(f"shard {args.shard[0]}/{args.shard[1]} done; when every shard is, join them with: greedyprune merge "
              f"OUT SHARD_DIR ...")
        return 0
    print(report("pretraining", run.rows, out, draw=not args.no_plot))
    return 0


def cmd_appendix_c(args: argparse.Namespace) -> int:
    from ..studies.appendix_c import config_with, get_preset, run_appendix_c, summary_text

    set_threads(args)
    overrides = {k: v for k, v in dict(repeats=args.repeats, activation=args.activation, seed=args.seed).items()
                 if v is not None}
    config = config_with(get_preset(args.preset), **overrides)
    out = args.out or Path("runs") / f"appendix-c-{args.preset}"
    print(f"study appendix-c -> {out}")
    result = run_appendix_c(config, out, progress=not args.no_progress)
    print(summary_text(result))
    return 0


def cmd_cnn(args: argparse.Namespace) -> int:
    from .. import parallel
    from ..studies import report
    from ..studies.cnn import RULES, CNNStudyConfig, config_with, get_preset, run_cnn_study

    set_threads(args)
    overrides = config_overrides(args, CNNStudyConfig, skip=("model_kwargs",))
    if "models" in overrides:  # models named on the command line come without the preset's model options
        overrides.setdefault("model_kwargs", {})
    if any(rule in overrides for rule in RULES):  # a rule given replaces the preset's
        for rule in RULES:
            overrides.setdefault(rule, None)
    config = config_with(get_preset(args.preset), **overrides)
    config.validate()
    out = args.out or Path("runs") / f"cnn-{args.preset}{shard_suffix(args.shard)}"
    distributed = launched_by_torchrun()
    dev = device(args.device)
    if distributed:
        dev = parallel_device(dev)
    if not distributed or parallel.is_main():
        print(f"study cnn -> {out}" + (f" ({parallel.world_size()} processes, data-parallel)" if distributed else ""))
    try:
        rows = run_cnn_study(config, out, device=dev, progress=not args.no_progress, shard=args.shard,
                             distributed=distributed, log=print if not distributed or parallel.is_main() else _quiet)
    except KeyboardInterrupt:
        return interrupted(out)
    if distributed and not parallel.is_main():
        return 0
    print()
    if args.shard is not None:
        print(f"shard {args.shard[0]}/{args.shard[1]} done; when every shard is, join them with: greedyprune merge "
              f"OUT SHARD_DIR ...")
        return 0
    print(report("cnn", rows, out))
    return 0


def _quiet(_text: str) -> None:
    """The log of the ranks other than 0."""


def cmd_rethinking(args: argparse.Namespace) -> int:
    from ..studies import report
    from ..studies.common import override, pick_preset
    from ..studies.rethinking import PRESETS, RethinkingConfig, run_rethinking

    set_threads(args)
    overrides = _model_override(config_overrides(args, RethinkingConfig, skip=("model_kwargs",)))
    config = override(pick_preset(PRESETS, args.preset), "rethinking study", **overrides)
    config.validate()
    out = args.out or Path("runs") / f"rethinking-{args.preset}"
    print(f"study rethinking -> {out}")
    try:
        rows = run_rethinking(config, out, device=device(args.device), progress=not args.no_progress)
    except KeyboardInterrupt:
        return interrupted(out)
    print(report("rethinking", rows, out))
    return 0
