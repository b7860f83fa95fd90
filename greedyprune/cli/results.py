"""``greedyprune plot | export`` (any study's results), ``theory threshold`` and ``advise``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_run_options, batch_size, device, positive_float, positive_int, seed, set_threads, slug

__all__ = ["register", "cmd_plot", "cmd_merge", "cmd_export", "cmd_theory_threshold", "cmd_advise"]


def register(sub) -> None:
    plot = sub.add_parser("plot", help="redraw a study's figures and summary from its database (any study)")
    plot.add_argument("dir", type=Path, help="the study's output directory")
    plot.set_defaults(handler=cmd_plot)

    merge = sub.add_parser(
        "merge", help="join the results databases of a study's shards (--shard i/P runs) into one directory",
        description="Joins DIR/results.sqlite of every SHARD_DIR into OUT/results.sqlite (created, or added to). "
                    "All must hold the same study and configuration; a row present in two shards must be the "
                    "same in both. Then writes OUT/results.csv and the study's report and figures.")
    merge.add_argument("out", type=Path, help="directory of the merged study")
    merge.add_argument("shards", type=Path, nargs="+", metavar="SHARD_DIR", help="the shards' output directories")
    merge.add_argument("--no-plot", action="store_true", help="do not draw the figures")
    merge.set_defaults(handler=cmd_merge)

    export = sub.add_parser("export", help="write a study's results as CSV (any study)")
    export.add_argument("dir", type=Path, help="the study's output directory")
    export.add_argument("--csv", type=Path, help="output file (default DIR/results.csv)")
    export.set_defaults(handler=cmd_export)

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
    th.add_argument("--max-trials", type=positive_int, help="use at most this many trials per size")
    th.add_argument("--no-progress", action="store_true")
    th.set_defaults(handler=cmd_theory_threshold)

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
    adv.add_argument("--size", type=positive_int, help="class-balanced subset of this many examples")
    adv.add_argument("--width", type=positive_int, default=1000)
    adv.add_argument("--iterations", type=positive_int, help="training steps at most (default 4000; with "
                     "--compare: twice the study's)")
    adv.add_argument("--check-every", type=positive_int, default=250)
    adv.add_argument("--k", type=positive_int, default=50)
    adv.add_argument("--lr", type=positive_float, default=1.0)
    adv.add_argument("--batch-size", type=batch_size, default=64)
    adv.add_argument("--check-examples", type=positive_int, default=1024,
                     help="size of the fixed batch the advisor checks on (default 1024)")
    adv.add_argument("--patience", type=positive_int, default=2)
    adv.add_argument("--tolerance", type=positive_float, default=0.005)
    adv.add_argument("--distance-tolerance", type=positive_float, default=0.05)
    adv.add_argument("--keep-training", action="store_true", help="train to the end even after the advisor fires")
    adv.add_argument("--seed", type=seed, default=0)
    adv.add_argument("--out", type=Path, help="output directory (default runs/advise-DATA, or the study directory)")
    add_run_options(adv)
    adv.set_defaults(handler=cmd_advise)


def cmd_plot(args: argparse.Namespace) -> int:
    from ..studies import report
    from ..studies.store import open_results

    with open_results(args.dir) as store:
        kind, rows = store.kind, store.rows()
    print(report(kind, rows, args.dir, draw=True))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..fileio import run_directory
    from ..studies import report
    from ..studies.store import merge_results
    from ..studies.store import open_results

    sources = []
    for shard in args.shards:
        with open_results(shard) as store:  # a clear error for a directory without results
            sources.append(store.path)
    with run_directory(args.out):
        added, kept = merge_results(args.out / "results.sqlite", sources)
        for name in ("config.json",):
            first = args.shards[0] / name
            if first.is_file() and not (args.out / name).exists():
                (args.out / name).write_text(first.read_text())
        with open_results(args.out) as store:
            store.export_csv(args.out / "results.csv")
            kind, rows = store.kind, store.rows()
    print(f"merged {len(sources)} database(s) into {args.out / 'results.sqlite'}: {added} rows added, "
          f"{kept} already there")
    print(report(kind, rows, args.out, draw=not args.no_plot))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..studies.store import open_results

    target = args.csv or args.dir / "results.csv"
    with open_results(args.dir) as store:
        store.export_csv(target)
        n = len(store)
    print(f"wrote {n} rows to {target}")
    return 0


def cmd_theory_threshold(args: argparse.Namespace) -> int:
    from ..studies.theory import run_threshold

    run_threshold(args.dir, args.out, progress=not args.no_progress)
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from ..studies.advisor import advise, compare_with_study

    set_threads(args)
    rules = dict(check_examples=args.check_examples, patience=args.patience, tolerance=args.tolerance,
                 distance_tolerance=args.distance_tolerance, device=device(args.device),
                 progress=not args.no_progress)
    if args.compare is not None:
        compare_with_study(args.compare, args.out, iterations=args.iterations, **rules)
        return 0
    batch = None if args.batch_size == "full" else args.batch_size
    out = args.out or Path("runs") / f"advise-{slug(args.data)}"
    advise(data=args.data, size=args.size, width=args.width, iterations=args.iterations or 4000,
           check_every=args.check_every, k=args.k, lr=args.lr, batch_size=batch, seed=args.seed, out_dir=out,
           stop_when_fired=not args.keep_training, **rules)
    return 0  # not firing is an answer too ("pre-train longer"), not an error
