"""The built-in studies' registry entries: ``greedyprune study pretraining | appendix-c | cnn | rethinking``.

Each is a :class:`~greedyprune.studies.registry.Study` registered with
:func:`~greedyprune.studies.registry.register_study`: its options, how the command runs it and what it prints,
and where its report is. The study modules are imported when a command needs them.
"""
from __future__ import annotations

from pathlib import Path

from .registry import Study, register_study, report

__all__ = ["AppendixC", "CNN", "Pretraining", "Rethinking"]


def _shard_done(args) -> None:
    print(f"shard {args.shard[0]}/{args.shard[1]} done; when every shard is, join them with: greedyprune merge "
          f"OUT SHARD_DIR ...")


@register_study
class Pretraining(Study):
    """Figure 1: :mod:`~greedyprune.studies.pretraining`."""

    name = kind = "pretraining"
    report_module = "pretraining_report"
    help = "how much pre-training before GFS finds a good subnetwork (Figure 1)"
    description = ("For each hidden width, dataset size and trial: pre-train a two-layer net and every "
                   "--eval-every iterations prune it to --k hidden nodes with greedy forward selection. "
                   "Results go to OUT/results.sqlite as they are computed; re-running resumes.")

    def add_arguments(self, parser, cli):
        from . import pretraining

        parser.add_argument("--preset", default="quick", choices=sorted(pretraining.PRESETS),
                            help="quick (default, a few minutes on a laptop CPU) or paper (the paper's protocol)")
        parser.add_argument("--out", type=Path, help="output directory (default runs/pretraining-PRESET-DATA)")
        cli.add_config_options(parser, pretraining.PretrainingStudyConfig, pretraining.OPTION_HELP,
                               types={"batch_size": cli.batch_size}, defaults=pretraining.PRESETS["quick"])
        cli.add_run_options(parser)
        parser.add_argument("--workers", type=cli.workers,
                            help="processes computing (width, size, trial) cells side by side, each on one torch "
                                 "thread, so the numbers do not depend on --threads or on this count (default: one "
                                 "per CPU)")
        cli.add_shard_option(parser)
        parser.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")

    def main(self, args, cli):
        from .pretraining import PretrainingStudyConfig, config_with, get_preset, run_pretraining_study

        cli.set_threads(args)
        overrides = cli.config_overrides(args, PretrainingStudyConfig)
        if overrides.get("batch_size") == "full":
            overrides["batch_size"] = None  # full-batch gradient descent
        config = config_with(get_preset(args.preset), **overrides)
        config.validate()
        out = args.out or Path("runs") / f"pretraining-{args.preset}-{cli.slug(config.data)}" \
            f"{cli.shard_suffix(args.shard)}"
        print(f"study pretraining -> {out}")
        try:
            run = run_pretraining_study(config, out, device=cli.device(args.device), progress=not args.no_progress,
                                        shard=args.shard, workers=args.workers)
        except KeyboardInterrupt:
            return cli.interrupted(out)
        print(f"{run.computed} rows computed, {run.skipped} already done; results in {out}/results.sqlite "
              f"and {out}/results.csv")
        if args.shard is not None:
            _shard_done(args)
            return 0
        print(report(self.kind, run.rows, out, draw=not args.no_plot))
        return 0


@register_study
class AppendixC(Study):
    """Appendix C: :mod:`~greedyprune.studies.appendix_c` (no results database: CSVs and figures)."""

    name = "appendix-c"
    help = "Appendix C: smallest singular value of hidden features ~ sqrt(width); condition numbers vs rows"
    description = ("Reproduces Appendix C: (a) the smallest singular value of the hidden-feature matrix at "
                   "initialisation against the width N, with the sqrt(N) fit (figure2.png); (b) the condition "
                   "number of Gaussian random matrices against the number of rows (figure3.png). CSVs too.")

    def add_arguments(self, parser, cli):
        parser.add_argument("--preset", default="quick", choices=["quick", "paper"],
                            help="quick (default, < 2 min) or paper")
        parser.add_argument("--out", type=Path, help="output directory (default runs/appendix-c-PRESET)")
        parser.add_argument("--repeats", type=cli.positive_int, help="random matrices per setting")
        parser.add_argument("--activation", choices=["tanh", "sigmoid", "erf"], help="bounded smooth activation")
        parser.add_argument("--seed", type=cli.seed)
        cli.add_run_options(parser, device=False)

    def main(self, args, cli):
        from .appendix_c import config_with, get_preset, run_appendix_c, summary_text

        cli.set_threads(args)
        overrides = {k: v for k, v in dict(repeats=args.repeats, activation=args.activation, seed=args.seed).items()
                     if v is not None}
        config = config_with(get_preset(args.preset), **overrides)
        out = args.out or Path("runs") / f"appendix-c-{args.preset}"
        print(f"study appendix-c -> {out}")
        result = run_appendix_c(config, out, progress=not args.no_progress)
        print(summary_text(result))
        return 0


def _quiet(_text: str) -> None:
    """The log of the ranks other than 0."""


@register_study
class CNN(Study):
    """Appendix E / Table 1: :mod:`~greedyprune.studies.cnn`."""

    name = kind = "cnn"
    report_module = "cnn_report"
    help = "Appendix E / Table 1: GFS on CNN checkpoints of class-balanced sub-datasets, vs the dense net"
    description = ("For each model, sub-dataset size and trial: pre-train a CNN with a checkpoint every "
                   "--checkpoint-every iterations; prune every checkpoint with greedy forward selection, fine-tune "
                   "(cosine from --finetune-lr) and record test accuracy next to the dense net's; baselines are "
                   "pruned to the same channels per group. Stopping rule: --epsilon, --epsilon-grid (epsilon "
                   "picked on held-out data for --flops-reduction fewer multiply-adds, the default), "
                   "--flops-target or --accuracy-tolerance. Rows go to OUT/results.sqlite as they finish; "
                   "re-running resumes. Under torchrun the training is data-parallel and each step's candidates "
                   "are split over the processes. Prints a table like the paper's Table 1 per model and the "
                   "baseline comparison; draws OUT/cnn_study.png.")

    def add_arguments(self, parser, cli):
        from . import cnn

        parser.add_argument("--preset", default="quick", choices=sorted(cnn.PRESETS),
                            help="quick (default: built-in MNIST-5k, small ResNet, a few minutes on a CPU) or paper "
                                 "(CIFAR-10 protocol of Appendix E with ResNet-34 and MobileNetV2; pass --data "
                                 "cifar10:DIR, GPU advised)")
        parser.add_argument("--out", type=Path, help="output directory (default runs/cnn-PRESET)")
        cli.add_config_options(parser, cnn.CNNStudyConfig, cnn.OPTION_HELP, skip=("model_kwargs",),
                               types={"baselines": cli.name_list}, defaults=cnn.PRESETS["quick"])
        cli.add_run_options(parser)
        cli.add_shard_option(parser)

    def main(self, args, cli):
        from ..distributed import parallel
        from .cnn import RULES, CNNStudyConfig, config_with, get_preset, run_cnn_study

        cli.set_threads(args)
        overrides = cli.config_overrides(args, CNNStudyConfig, skip=("model_kwargs",))
        if "models" in overrides:  # models named on the command line come without the preset's model options
            overrides.setdefault("model_kwargs", {})
        if any(rule in overrides for rule in RULES):  # a rule given replaces the preset's
            for rule in RULES:
                overrides.setdefault(rule, None)
        config = config_with(get_preset(args.preset), **overrides)
        config.validate()
        out = args.out or Path("runs") / f"cnn-{args.preset}{cli.shard_suffix(args.shard)}"
        distributed = cli.launched_by_torchrun()
        dev = cli.device(args.device)
        if distributed:
            dev = cli.parallel_device(dev)
        main_rank = not distributed or parallel.is_main()
        if main_rank:
            print(f"study cnn -> {out}" + (f" ({parallel.world_size()} processes, data-parallel)" if distributed
                                           else ""))
        try:
            rows = run_cnn_study(config, out, device=dev, progress=not args.no_progress, shard=args.shard,
                                 distributed=distributed, log=print if main_rank else _quiet)
        except KeyboardInterrupt:
            return cli.interrupted(out)
        if distributed and not parallel.is_main():
            return 0
        print()
        if args.shard is not None:
            _shard_done(args)
            return 0
        print(report(self.kind, rows, out))
        return 0


@register_study
class Rethinking(Study):
    """Fine-tuned vs Scratch-E vs Scratch-B: :mod:`~greedyprune.studies.rethinking`."""

    name = kind = report_module = "rethinking"
    help = "one pruned architecture: fine-tuned vs Scratch-E vs Scratch-B (Rethinking the Value of Network Pruning)"
    description = ("Trains the dense net, prunes it once with GFS to --flops-target, then retrains the pruned "
                   "architecture per seed: fine-tuned, from scratch for the dense net's iterations (Scratch-E) and "
                   "for the same compute (Scratch-B). Prints mean and std of test accuracy; resumable.")

    def add_arguments(self, parser, cli):
        from . import rethinking

        parser.add_argument("--preset", default="quick", choices=sorted(rethinking.PRESETS))
        parser.add_argument("--out", type=Path, help="output directory (default runs/rethinking-PRESET)")
        cli.add_config_options(parser, rethinking.RethinkingConfig, rethinking.OPTION_HELP, skip=("model_kwargs",))
        cli.add_run_options(parser)

    def main(self, args, cli):
        from .common import override, pick_preset
        from .rethinking import PRESETS, RethinkingConfig, run_rethinking

        cli.set_threads(args)
        overrides = cli.config_overrides(args, RethinkingConfig, skip=("model_kwargs",))
        if "model" in overrides:  # a model named on the command line comes without the preset's model options
            overrides.setdefault("model_kwargs", {})
        config = override(pick_preset(PRESETS, args.preset), "rethinking study", **overrides)
        config.validate()
        out = args.out or Path("runs") / f"rethinking-{args.preset}"
        print(f"study rethinking -> {out}")
        try:
            rows = run_rethinking(config, out, device=cli.device(args.device), progress=not args.no_progress)
        except KeyboardInterrupt:
            return cli.interrupted(out)
        print(report(self.kind, rows, out))
        return 0
