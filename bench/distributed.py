"""Distributed greedy forward selection (Algorithm 2) against one process: time to select, by workers.

    python bench/distributed.py                          # the default cases, 1 and 2 workers
    python bench/distributed.py --cases wide-logistic --workers 1,2 --out /tmp/d.png

In the spirit of the paper's Figure 4 (pruning time of ResNet34 layers with 1, 2 and 4 GPUs): no gain
on a narrow layer, a large one on a wide layer. Each case selects k of the N hidden neurons of a wide,
randomly initialised 784-N two-layer net from their output vectors over m of the 5,000 built-in MNIST
images (one logit for the logistic loss, 10 for cross-entropy), in float32.

* engine: the single-process engine (Algorithm 1) in one worker process.
* P workers: ``greedyprune.distributed.greedy_forward_selection`` in P processes (gloo, localhost),
  each holding its contiguous slice of the N candidates.

Every worker runs with one torch thread, so P workers use P cores: the comparison is fair on a
2-core machine. Each worker builds its own rows outside the timing (in fixed blocks of neurons, so
every layout holds bitwise the same rows); the time is from a barrier after that to the end of the
selection, the slowest rank's. The selections of all runs of a case must agree (or the script fails).

Cases are ``Case`` entries in ``CASES``; ``Case.make(offset, length)`` returns a rank's rows and the
target, so other layers (e.g. a ResNet's channel groups) can be added as new entries.

Prints a table, saves a plot of time against workers to ``--out`` (default ``bench/distributed.png``),
and ends with ``speedup with 2 workers on the widest case: X.Xx`` (engine time / 2-worker time).

What limits the speedup: every step ends with a synchronising collective (plus, after steps where a
rank needed many exact evaluations, a second one), each costing ~0.2-0.3 ms on an idle machine and up to
milliseconds when other processes delay a wake-up; the per-step work that does not shrink
with the slice (the loss of the new average, the running-sum update, Python overhead); and the
step-by-step imbalance between ranks (each step waits for the slowest). The logistic search evaluates
only a few dozen candidates per step, so a step is ~3 ms of work and these costs eat the gain; the
cross-entropy passes cost ~10x more per candidate, so their steps are long enough to gain.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from greedyprune import distributed as D
from greedyprune import greedy_forward_selection
from greedyprune._text import format_table

NEURON_BLOCK = 256  # rows are built in blocks of this many neurons, the same blocks for every layout


@dataclass
class Case:
    """One selection problem.

    Attributes
    ----------
    name : str
        Short name used by ``--cases``.
    loss : str
        "squared", "logistic" or "cross_entropy".
    n : int
        Number of candidate neurons N (the layer's width).
    k : int
        Selection steps.
    make : callable
        ``make(offset, length) -> (rows, target)``: neurons ``offset .. offset+length-1``'s outputs and
        the target; must be picklable (a module-level function or a ``functools.partial`` of one) and
        deterministic, so that every worker builds the same rows.
    replacement : bool
        Selection with replacement (the paper's multiset).
    note : str
        Shown in the table.
    """

    name: str
    loss: str
    n: int
    k: int
    make: Callable = field(repr=False)
    replacement: bool = True
    note: str = ""


@functools.lru_cache(maxsize=1)
def _mnist(m: int):
    from greedyprune.data import load_mnist5k

    data = load_mnist5k()
    return data.X[:m].float(), data.labels[:m], data.binary_labels()[:m].float()


def two_layer_rows(offset: int, length: int, *, n: int, m: int, classes: int, seed: int):
    """Rows ``offset .. offset+length-1`` of a random 784-n-``classes`` ReLU net's neuron outputs
    ``n * V[:, i] * relu(w_i . x + beta_i) + c`` on the first m MNIST images, and the target (binary
    labels for one output, class labels otherwise)."""
    X, labels, binary = _mnist(m)
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, X.shape[1], generator=gen) / X.shape[1] ** 0.5
    beta = torch.randn(n, generator=gen) * 0.1
    V = torch.randn(classes, n, generator=gen) / n
    c = torch.randn(classes, generator=gen) * 0.1
    shape = (length, m) if classes == 1 else (length, m, classes)
    rows = torch.empty(shape)
    first = offset // NEURON_BLOCK * NEURON_BLOCK
    for lo in range(first, offset + length, NEURON_BLOCK):
        hi = min(lo + NEURON_BLOCK, n)
        h = torch.relu(W[lo:hi] @ X.t() + beta[lo:hi, None])  # (block, m)
        v = V[:, lo:hi] * n  # (classes, block)
        block = h * v[0][:, None] + c[0] if classes == 1 else h[:, :, None] * v.t()[:, None, :] + c
        a, b = max(lo, offset), min(hi, offset + length)
        rows[a - offset:b - offset] = block[a - lo:b - lo]
    return rows, (binary if classes == 1 else labels)


def _two_layer_case(name, loss, n, m, k, classes=1, note=""):
    make = functools.partial(two_layer_rows, n=n, m=m, classes=classes, seed=0)
    return Case(name, loss, n, k, make, note=note or f"m={m}" + (f", C={classes}" if classes > 1 else ""))


CASES = [
    _two_layer_case("narrow-logistic", "logistic", 512, 4000, 200),
    _two_layer_case("wide-logistic", "logistic", 8192, 4000, 200),
    _two_layer_case("wide-cross-entropy", "cross_entropy", 8192, 2000, 100, classes=10),
    _two_layer_case("widest-cross-entropy", "cross_entropy", 16384, 2000, 100, classes=10),
]


def run_case(case: Case, engine: bool):
    """Runs in every worker: build this rank's rows, select; returns ``(seconds, cpu_seconds, indices,
    losses)`` - the slowest rank's wall and CPU time - on rank 0."""
    world, me = D.world_size(), D.rank()
    if engine and world != 1:
        raise ValueError("the engine runs in one worker")
    offset, length = D.split_range(case.n, world, me)
    rows, target = case.make(offset, length)
    # warm up the kernels on a small problem outside the timing
    greedy_forward_selection(rows[:64, :64].contiguous(), target[:64], 3, loss=case.loss)
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    if engine:
        result = greedy_forward_selection(rows, target, case.k, loss=case.loss, replacement=case.replacement)
    else:
        result = D.greedy_forward_selection(rows, target, case.k, offset=offset, loss=case.loss,
                                            replacement=case.replacement)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    times = [None] * world
    dist.all_gather_object(times, (seconds, cpu))
    return max(t for t, _ in times), max(c for _, c in times), result.indices, result.losses


# ----------------------------------------------------------------------------------------- deep networks
@dataclass
class DeepCase:
    """One channel group of a CNN, pruned by ``prune_model`` for ``steps`` greedy steps."""

    name: str
    model: str
    model_kwargs: dict
    group: str
    steps: int = 3
    candidates: int = 50
    batch: int = 64


DEEP_CASES = [
    DeepCase("resnet20 layer1.0.conv1", "resnet20", {}, "layer1.0.conv1"),
    DeepCase("resnet20 layer2.0.conv1", "resnet20", {}, "layer2.0.conv1"),
    DeepCase("resnet20 layer3.0.conv1", "resnet20", {}, "layer3.0.conv1"),
    DeepCase("resnet20-w32 layer3.0.conv1", "resnet20", {"width": 32}, "layer3.0.conv1"),
]


def run_deep_case(case: DeepCase, distributed: bool):
    """Runs in every worker: prune one group of the ResNet (same batches on every rank); returns the
    group's search seconds (slowest rank) and the kept channels, on rank 0."""
    from greedyprune.channels import find_groups, prune_model
    from greedyprune.models import get_model

    world = D.world_size()
    model = get_model(case.model, seed=0, **case.model_kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # batch-norm statistics away from their initial values
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    X, y = torch.randn(512, 3, 32, 32, generator=gen), torch.randint(0, 10, (512,), generator=gen)
    _, groups = find_groups(model, X[:1])
    others = [w for g in groups if g.name != case.group for w in g.writers]
    dist.barrier()
    result = prune_model(model, (X, y), keep_ratio=1.0, max_steps=case.steps, candidates=case.candidates,
                         batch_size=case.batch, extra_skip=others, distributed=distributed and world > 1,
                         evaluator="fast", eval_examples=64)
    seconds = result.layers[0]["seconds"]
    times = [None] * world
    dist.all_gather_object(times, seconds)
    return max(times), result.kept


def bench_deep(cases, workers, repeats) -> list:
    body, plotted = [], []
    for case in cases:
        def best(p, distributed):
            runs = [D.launch(run_deep_case, p, case, distributed, threads=1) for _ in range(repeats)]
            return min(runs, key=lambda r: r[0])

        one_s, ref_kept = best(1, False)
        by_workers, same = {}, True
        for p in workers:
            by_workers[p], kept = best(p, True)
            same &= kept == ref_kept
        channels = get_channels(case)
        body.append([case.name, str(channels), str(min(case.candidates, channels)), str(case.steps), f"{one_s:.2f}"]
                    + [f"{by_workers[p]:.2f}" for p in workers] + [f"{one_s / by_workers[p]:.2f}x" for p in workers
                                                                   if p > 1] + ["yes" if same else "NO"])
        plotted.append((case.name, one_s, by_workers))
        print(f"  {case.name}: one process {one_s:.2f} s, " +
              ", ".join(f"{p} worker(s) {by_workers[p]:.2f} s" for p in workers) + f", same channels: {same}",
              flush=True)
        if not same:
            raise SystemExit(f"{case.name}: the distributed search kept other channels")
    header = ["group", "channels", "candidates", "steps", "1 process s"] + [f"{p} worker(s) s" for p in workers]
    header += [f"speedup {p}" for p in workers if p > 1] + ["same"]
    print(format_table(header, body))
    return plotted


def get_channels(case: DeepCase) -> int:
    from greedyprune.models import get_model

    model = get_model(case.model, **case.model_kwargs)
    return dict(model.named_modules())[case.group].out_channels


def plot(rows, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    for name, engine_s, by_workers in rows:
        workers = sorted(by_workers)
        line = ax.plot(workers, [by_workers[p] for p in workers], marker="o", label=name)[0]
        ax.plot([1], [engine_s], marker="*", markersize=12, color=line.get_color(), linestyle="none")
        ax.plot(workers, [engine_s / p for p in workers], color=line.get_color(), linestyle=":", alpha=0.6)
    ax.plot([], [], marker="*", color="gray", linestyle="none", markersize=12, label="single-process engine")
    ax.plot([], [], color="gray", linestyle=":", label="engine time / workers (ideal)")
    ax.set_xlabel("workers (processes, 1 torch thread each)")
    ax.set_ylabel("time to select (s)")
    ax.set_yscale("log")
    ax.set_xticks(sorted({p for _, _, by in rows for p in by}))
    ax.set_title("Distributed greedy forward selection (Algorithm 2)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help=f"comma-separated case names, from: {', '.join(c.name for c in CASES)}")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the fastest is kept")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed.png"))
    parser.add_argument("--deep", default=",".join(c.name for c in DEEP_CASES),
                        help="ResNet group cases to run ('' for none), from: "
                             + ", ".join(c.name for c in DEEP_CASES))
    args = parser.parse_args()
    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.cases.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(by_name)}")
    cases = [by_name[n] for n in args.cases.split(",")]
    workers = sorted({int(p) for p in args.workers.split(",")})
    print(f"{os.cpu_count()} CPUs; 1 torch thread per worker; gloo on localhost; float32; "
          f"time = slowest rank, from a barrier after building the rows to the end of the selection")

    def best_of(workers_, case_, engine):
        runs = [D.launch(run_case, workers_, case_, engine, threads=1) for _ in range(args.repeats)]
        return min(runs, key=lambda run: run[0])

    body, plotted = [], []
    for case in cases:
        engine_s, engine_cpu, ref_indices, ref_losses = best_of(1, case, True)
        by_workers, cpu_by_workers, same = {}, {}, True
        for p in workers:
            seconds, cpu, indices, losses = best_of(p, case, False)
            by_workers[p], cpu_by_workers[p] = seconds, cpu
            same &= indices.tolist() == ref_indices.tolist()
            same &= torch.allclose(losses, ref_losses, rtol=1e-9, atol=0)
        cells = [case.name, case.loss, str(case.n), case.note, str(case.k), f"{engine_s:.2f} ({engine_cpu:.2f})"]
        cells += [f"{by_workers[p]:.2f} ({cpu_by_workers[p]:.2f})" for p in workers]
        cells += [f"{engine_s / by_workers[p]:.2f}x" for p in workers if p > 1]
        cells.append("yes" if same else "NO")
        body.append(cells)
        plotted.append((case.name, engine_s, by_workers))
        print(f"  {case.name}: engine {engine_s:.2f} s, " +
              ", ".join(f"{p} worker(s) {by_workers[p]:.2f} s" for p in workers) + f", same selection: {same}",
              flush=True)
        if not same:
            raise SystemExit(f"{case.name}: the distributed selection differs from the engine's")
    header = ["case", "loss", "N", "data", "k", "engine s (cpu)"] + [f"{p} worker(s) s (cpu)" for p in workers]
    header += [f"speedup {p}" for p in workers if p > 1] + ["same"]
    print(format_table(header, body))
    print("s: wall-clock seconds to select (slowest rank); (cpu): that rank's CPU seconds - much lower than "
          "the wall time when other processes compete for the cores")
    deep_by_name = {c.name: c for c in DEEP_CASES}
    deep = [deep_by_name[n] for n in args.deep.split(",") if n]
    if deep:
        print("\nResNet channel groups (prune_model, 50 candidates per step, batch 64; 1 process = no collectives):")
        plotted += bench_deep(deep, workers, args.repeats)
    plot(plotted, args.out)
    print(f"plot saved to {args.out}")
    if 2 in workers:
        two_layer = [row for row in plotted if row[0] in by_name]
        widest = max(two_layer, key=lambda row: (by_name[row[0]].n, _row_size(by_name[row[0]])))
        print(f"speedup with 2 workers on the widest case: {widest[1] / widest[2][2]:.1f}x")


def _row_size(case: Case) -> int:
    """Elements per neuron row (breaks ties between cases of the same width N)."""
    make = getattr(case.make, "keywords", {})
    return make.get("m", 1) * make.get("classes", 1)


if __name__ == "__main__":
    main()
