"""Quality benchmark: GFS against the baseline criteria at the same multiply-adds, right after pruning and
after fine-tuning.

    python bench/quality.py                      # ResNet-20 and ResNet-56 on the built-in MNIST-5k (GPU advised)
    python bench/quality.py --quick              # ResNet-20 only, budget 0.5, one seed: a few minutes on a CPU
    python bench/quality.py --device cuda --data cifar10:/data/cifar --in-size 32

Setup. The built-in MNIST-5k (pixel values in [0, 1], 1x28x28) is split class-balanced into 4,000 training
and 1,000 held-out test images. Each network is trained once (SGD, momentum 0.9, cosine lr from 0.1,
weight decay 5e-4, batch 128; the checkpoint is cached in ``--out``) and then, for every seed and every
multiply-add budget, pruned by

* ``gfs`` - :func:`greedyprune.prune_model` with ``flops_target`` and the default objective (block
  reconstruction, adaptive widths from each group's reconstruction-error curve); ``gfs-network`` the
  network objective (each candidate scored by the whole network's loss; widths from the same curves);
  ``gfs-refit`` the network objective with a least-squares refit of the readers; ``gfs-local-gfs`` the
  paper's Algorithm 1 on the readers' reconstruction (count scales, no refit); ``gfs-running`` the network
  objective scoring with the dense network's stored batch-norm statistics and no recalibration during the
  search (the public implementation's way). The variants run at the main budget only;
* each baseline criterion (L1, BN scale, Taylor, FPGM, LAMP, random: Torch-Pruning importances) with the
  same keep fraction in every group at the same budget (``uniform``, the usual way to run them) and, at
  the main budget (0.5), also at GFS's widths (``same``: the criterion alone differs);

every baseline's pruned network has its batch-norm statistics re-estimated on the same 512 training images
(GFS's are as ``prune_model`` leaves them: its defaults decide), and each is then fine-tuned with the same budget (SGD, momentum 0.9, cosine lr from 0.01). Test accuracy is recorded
right after pruning (and recalibration) and after fine-tuning; the table gives mean and standard deviation
over seeds. Results go to ``OUT/quality.json`` (rows appended as they finish; a rerun skips finished rows)
and the Pareto plot to ``OUT/quality_pareto.png``. The last line reads
``GFS vs best baseline at 50% MACs: before fine-tuning +X.X points, after +Y.Y points``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from greedyprune import get_model, prune_model
from greedyprune.baselines import prune_like
from greedyprune.channels import FlopsTarget, find_groups
from greedyprune.channels.bn import recalibrate_bn
from greedyprune.channels.budget import uniform_keep_counts
from greedyprune.data import balanced_subsample, load_dataset
from greedyprune.fileio import atomic_write_text
from greedyprune.metrics import count_macs
from greedyprune.training.checkpoints import load_model, save_model
from greedyprune.training.loop import TrainConfig, evaluate, pretrain
from greedyprune.training.retrain import finetune

BASELINES = ("l1", "bn", "taylor", "fpgm", "lamp", "random")
# GFS variants: the default, a least-squares refit of the readers, and scoring with the dense network's stale
# batch-norm statistics (the public implementation's way; recalibrated only at the end like every method)
GFS_VARIANTS = {"gfs": {}, "gfs-network": {"objective": "network"},
                "gfs-refit": {"objective": "network", "refit": "lstsq"}, "gfs-local-gfs": {"objective": "local-gfs"},
                "gfs-running": {"objective": "network", "bn": "running", "recalibrate": 0}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--budgets", default="0.3,0.5,0.7", help="fractions of the dense multiply-adds kept")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(GFS_VARIANTS) + "," + ",".join(BASELINES))
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--train-iterations", type=int, default=2000)
    p.add_argument("--finetune-iterations", type=int, default=300)
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128, help="training and fine-tuning batch")
    p.add_argument("--search-batch", type=int, default=None,
                   help="prune_model's batch_size (the network objective's examples a step; default: its budget)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    p.add_argument("--cache", type=Path, default=None, help="where dense checkpoints are cached (default OUT/cache)")
    p.add_argument("--main-budget", type=float, default=0.5,
                   help="the budget where the GFS variants and the same-width baselines also run")
    p.add_argument("--time-budget", type=float, default=None, help="start no new work after this many seconds")
    p.add_argument("--quick", action="store_true", help="resnet20, budget 0.5, seed 0, 1000 training iterations")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.budgets, args.seeds, args.train_iterations = "resnet20", "0.5", "0", 1000
        args.finetune_iterations = 200
    return args


def load_split(spec: str, test_size: int):
    ds = load_dataset(spec, normalize="pixel")
    try:
        test = load_dataset(spec, normalize="pixel", split="test")
        test = test.subset(balanced_subsample(test.labels, min(test_size, len(test)), 0))
        train = ds
    except (ValueError, FileNotFoundError):
        held = balanced_subsample(ds.labels, test_size, 7919)
        mask = torch.ones(len(ds), dtype=torch.bool)
        mask[held] = False
        test, train = ds.subset(held), ds.subset(torch.nonzero(mask).flatten())
    return (train.images(), train.labels), (test.images(), test.labels), train.num_classes


def dense_model(name, train, classes, args, device):
    path = (args.cache or args.out / "cache") / f"{name}-{args.data.replace(':', '-').replace('/', '_')}-it{args.train_iterations}.pt"
    kwargs = {"num_classes": classes, "in_channels": int(train[0].shape[1])}
    if path.is_file():
        model, _ = load_model(path, map_location=device)
        return model.eval()
    model = get_model(name, seed=0, **kwargs).to(device)
    config = TrainConfig(iterations=args.train_iterations, lr=0.1, batch_size=args.batch_size, loss="cross_entropy",
                         momentum=0.9, weight_decay=5e-4, seed=0, schedule="cosine")
    start = time.perf_counter()
    pretrain(model, train[0], train[1], config, progress=False)
    print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
    save_model(path, model, name=name, model_kwargs=kwargs)
    return model.eval()


def accuracy(model, data, device) -> float:
    return evaluate(model, data[0].to(device), data[1].to(device), "cross_entropy", batch_size=500)[1]


def finish(model, train, test, args, seed, device, calib, recalibrate=True):
    """Recalibrate (the baselines; GFS as prune_model left it), measure, fine-tune, measure: (accuracy after
    pruning, accuracy after fine-tuning)."""
    if recalibrate:
        recalibrate_bn(model, calib)
    before = accuracy(model, test, device)
    if args.finetune_iterations:
        finetune(model, train[0].to(device), train[1].to(device), args.finetune_iterations, 0.01,
                 batch_size=args.batch_size, schedule="cosine", seed=seed)
    return before, accuracy(model.eval(), test, device)


class _Clock:
    """``--time-budget``: no new unit of work starts after the budget is spent (finished rows are saved)."""

    def __init__(self, seconds: float | None):
        self.start, self.seconds = time.perf_counter(), seconds

    def out(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start > self.seconds


def run(args) -> list[dict]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "quality.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["model"], r["seed"], r["budget"], r["method"], r["widths"]) for r in rows}
    train, test, classes = load_split(args.data, args.test_size)
    methods = [m for m in args.methods.split(",") if m]
    calib = train[0][torch.randperm(train[0].shape[0], generator=torch.Generator().manual_seed(1))[:512]].to(device)
    example = test[0][:1].to(device)
    clock = _Clock(args.time_budget)

    def record(row):
        rows.append(row)
        done.add((row["model"], row["seed"], row["budget"], row["method"], row["widths"]))
        atomic_write_text(results_path, json.dumps(rows, indent=1))
        print(f"{row['model']:>9} seed {row['seed']} budget {row['budget']:.2f} {row['method']:>11} "
              f"({row['widths']:>7}): MACs {row['macs_ratio']:.3f}, after pruning {row['pruned']:.4f}, "
              f"fine-tuned {row['finetuned']:.4f} ({row['seconds']:.1f} s)", flush=True)

    dense = {}
    for name in args.models.split(","):
        model = dense_model(name, train, classes, args, device)
        dense[name] = (model, count_macs(model, example), accuracy(model, test, device))
        print(f"{name}: dense test accuracy {dense[name][2]:.4f}, {dense[name][1]:,} MACs", flush=True)
    budgets = sorted((float(b) for b in args.budgets.split(",")), key=lambda b: abs(b - args.main_budget))
    curves: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:  # seed-major: every model gets each seed early
        for name, (model, dense_macs, dense_acc) in dense.items():
            for budget in budgets:
                diagnostic = abs(budget - args.main_budget) < 1e-9  # variants and same-width baselines here
                base = {"model": name, "seed": seed, "budget": budget, "dense_accuracy": dense_acc}
                gfs_widths = None
                for variant, extra in GFS_VARIANTS.items():
                    wanted = variant in methods and (variant == "gfs" or diagnostic)
                    needed = variant == "gfs" and diagnostic and any(m in methods for m in BASELINES)
                    if clock.out() or not (wanted or needed):
                        continue
                    if (name, seed, budget, variant, "own") in done and not needed:
                        continue
                    start = time.perf_counter()
                    key = (name, seed, extra.get("bn", "batch"), extra.get("objective", "auto"))
                    rule = FlopsTarget(budget, curves=curves.get(key))
                    result = prune_model(model, (train[0], train[1]), rule=rule, candidates=args.candidates,
                                         batch_size=args.search_batch, seed=seed, device=device, **extra)
                    curves[key] = rule.curves
                    seconds = time.perf_counter() - start
                    if variant == "gfs":
                        gfs_widths = {k: len(v) for k, v in result.kept.items()}
                    if wanted and (name, seed, budget, variant, "own") not in done:
                        pruned, tuned = finish(result.model, train, test, args, seed, device, calib, recalibrate=False)
                        record({**base, "method": variant, "widths": "own", "pruned": pruned, "finetuned": tuned,
                                "macs_ratio": count_macs(result.model, example) / dense_macs, "seconds": seconds,
                                "kept": {k: len(v) for k, v in result.kept.items()}})
                for method in [m for m in methods if m in BASELINES]:
                    for widths in (("uniform", "same") if diagnostic else ("uniform",)):
                        if clock.out() or (name, seed, budget, method, widths) in done:
                            continue
                        if widths == "same" and gfs_widths is None:
                            continue
                        start = time.perf_counter()
                        if widths == "same":
                            keep = gfs_widths
                        else:
                            DG, groups = find_groups(model, example)
                            keep = uniform_keep_counts(model, groups, example, budget, DG)
                        res = prune_like(model, keep, method, data=(train[0].to(device), train[1].to(device)),
                                         seed=seed, batch_size=args.batch_size)
                        seconds = time.perf_counter() - start
                        pruned, tuned = finish(res.model, train, test, args, seed, device, calib)
                        record({**base, "method": method, "widths": widths, "pruned": pruned, "finetuned": tuned,
                                "macs_ratio": count_macs(res.model, example) / dense_macs, "seconds": seconds,
                                "kept": keep})
    if clock.out():
        print(f"time budget of {args.time_budget:.0f} s spent: the rows above are what was finished", flush=True)
    return rows


def summarize(rows: list[dict]) -> str:
    lines = []
    keys = sorted({(r["model"], r["budget"]) for r in rows})
    for model, budget in keys:
        lines.append(f"\n{model}, {budget:.0%} of the multiply-adds kept (test accuracy, mean +- sd over seeds)")
        lines.append(f"{'method':>8} {'widths':>8} {'MACs':>6} {'n':>2} {'after pruning':>16} {'fine-tuned':>16}")
        sel = [r for r in rows if r["model"] == model and r["budget"] == budget]
        for method, widths in sorted({(r["method"], r["widths"]) for r in sel}, key=lambda t: (t[0] != "gfs", t)):
            part = [r for r in sel if r["method"] == method and r["widths"] == widths]
            lines.append(f"{method:>8} {widths:>8} {statistics.fmean(r['macs_ratio'] for r in part):6.3f} "
                         f"{len(part):2d} {_ms([r['pruned'] for r in part]):>16} "
                         f"{_ms([r['finetuned'] for r in part]):>16}")
    return "\n".join(lines)


def _ms(values) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {sd:.4f}"


def headline(rows: list[dict], budget: float = 0.5) -> str:
    sel = [r for r in rows if abs(r["budget"] - budget) < 1e-9]
    gfs = [r for r in sel if r["method"] == "gfs"]
    if not gfs:
        return f"GFS vs best baseline at {budget:.0%} MACs: no GFS rows"
    out = []
    for stage in ("pruned", "finetuned"):
        g = statistics.fmean(r[stage] for r in gfs)
        best = max((statistics.fmean(r[stage] for r in sel if (r["method"], r["widths"]) == key)
                    for key in {(r["method"], r["widths"]) for r in sel if not r["method"].startswith("gfs")}),
                   default=float("nan"))
        out.append(100 * (g - best))
    return (f"GFS vs best baseline at {budget:.0%} MACs: before fine-tuning {out[0]:+.1f} points, "
            f"after {out[1]:+.1f} points")


COLORS = {"l1": "tab:olive", "bn": "tab:orange", "taylor": "tab:red", "fpgm": "tab:green", "lamp": "tab:blue",
          "random": "tab:gray", "gfs": "black", "gfs-refit": "tab:brown", "gfs-local": "tab:purple",
          "gfs-running": "tab:pink"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        for row_i, stage in enumerate(("pruned", "finetuned")):
            ax = axes[row_i][col]
            sel = [r for r in rows if r["model"] == model]
            for key in sorted({(r["method"], r["widths"]) for r in sel}, key=lambda t: (t[0] != "gfs", t)):
                pts = sorted({r["budget"] for r in sel if (r["method"], r["widths"]) == key})
                xs = [statistics.fmean(r["macs_ratio"] for r in sel if (r["method"], r["widths"]) == key
                                       and r["budget"] == b) for b in pts]
                ys = [statistics.fmean(r[stage] for r in sel if (r["method"], r["widths"]) == key and r["budget"] == b)
                      for b in pts]
                method, widths = key
                style = {"color": COLORS.get(method, None), "lw": 2.5 if method == "gfs" else 1,
                         "ls": "-" if widths != "uniform" else "--", "marker": "s" if widths == "same" else "o",
                         "ms": 4}
                label = method if widths == "own" else f"{method} ({widths} widths)"
                ax.plot(xs, ys, label=label, **style)
            dense = statistics.fmean(r["dense_accuracy"] for r in sel)
            ax.axhline(dense, color="grey", lw=0.8, ls=":", label="dense")
            ax.set_title(f"{model}: {'right after pruning' if stage == 'pruned' else 'after fine-tuning'} "
                         f"(BN recalibrated; mean over seeds)", fontsize=9)
            ax.set_xlabel("fraction of dense multiply-adds")
            ax.set_ylabel("test accuracy")
        axes[0][col].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print(summarize(rows))
    plot(rows, args.out / "quality_pareto.png")
    print(f"wrote {args.out / 'quality.json'} and {args.out / 'quality_pareto.png'}")
    print(headline(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
