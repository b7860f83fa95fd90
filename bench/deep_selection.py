"""Benchmark of the deep search: ours vs the reference way, and the cases users hit.

    python bench/deep_selection.py                 # all rows (~10 minutes on 2 CPU cores)
    python bench/deep_selection.py --rows main     # only the ResNet-20 comparison
    python bench/deep_selection.py --device cuda

Rows:

* ``main`` - a ResNet-20 on 3x32x32, 50 candidates per step, batch 64, half of every group kept. The
  reference is the public implementation's way: one full forward of the masked network per candidate.
  Ours (``evaluator="fast"``) runs the layers upstream of the group once per batch, stacks the candidates
  along the batch dimension, and folds batch norms (``bn="running"`` for both: the scoring the two share).
  Both runs see the same batches and candidates; the script checks that they keep the same channels.
  A third run adds the best 2 candidates of each step (``step=2``): half the steps; its held-out loss
  after pruning is printed next to the one-at-a-time search's, as its quality.
* ``local`` - the local (reconstruction) objective (``objective="local"``) against the whole-network
  search on the same ResNet-20 and widths: search seconds and the held-out loss of the pruned net.
* ``resnet18`` - a torchvision-style ResNet-18 (32x32) at 50 candidates and batch 128: seconds per greedy
  step in each group (a few steps per group; ``--resnet18-steps``), so a full search can be estimated.
* ``mobilenetv2`` - the in-tree MobileNetV2 (3x32x32) at ``flops_target=0.6`` with 8 candidates on 256
  images, adaptive widths (each group's loss curve measured first), end to end, with the local objective
  (``--mobilenet-objective network`` for the whole-network search, ``--mobilenet-step`` channels per step);
  the held-out loss of the pruned net is printed as its quality.

* ``engine`` - the deep search through the engine's one loop against the same search before it moved there
  (``--old``, a git revision; its ``greedyprune/`` is extracted to a temporary folder): ResNet-20, keep 0.5,
  8 candidates per step, batch 16, one thread, each run a fresh process, old and new alternating ``--repeats``
  times. Both must keep the same channels; prints the median search seconds of each and ``new/old: X.XXx``.
  Not in the default rows (it needs the repository's git history).

The ``main`` row ends with ``speedup vs reference: X.Xx`` (one channel per step; ``step=2`` in brackets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from greedyprune.channels import prune_model
from greedyprune.models import get_model
from greedyprune.training.loop import evaluate


def _pretrained_like(model: nn.Module, seed: int) -> nn.Module:
    """Batch-norm statistics and scales away from their initial values, as in a trained network."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _data(n: int, seed: int, shape=(3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def main_row(args) -> None:
    model = _pretrained_like(get_model("resnet20", seed=args.seed), args.seed)
    X, y = _data(2048, args.seed)
    hold = _data(512, args.seed + 1)
    opts = dict(keep_ratio=0.5, candidates=args.candidates, batch_size=args.batch_size, seed=args.seed,
                device=args.device, eval_examples=256, bn="running", recalibrate=0, check=False)
    print(f"resnet20, 3x32x32, batch {args.batch_size}, {args.candidates} candidates per step, keep 0.5, "
          f"{torch.get_num_threads()} threads, {args.device}")
    results, seconds = {}, {}
    for key, extra in (("fast", {"evaluator": "fast"}), ("reference", {"evaluator": "reference"}),
                       ("fast, step 2", {"evaluator": "fast", "step": 2})):
        start = time.perf_counter()
        results[key] = prune_model(model, (X, y), **opts, **extra)
        seconds[key] = time.perf_counter() - start
    fast, ref = results["fast"], results["reference"]
    print(f"{'group':>16} {'channels':>8} {'cands':>6} {'ours s':>8} {'ref s':>8} {'ratio':>6}")
    for a, b in zip(fast.layers, ref.layers):
        print(f"{a['name']:>16} {a['channels']:>8} {min(args.candidates, a['channels']):>6} "
              f"{a['seconds']:>8.2f} {b['seconds']:>8.2f} {b['seconds'] / a['seconds']:>6.1f}")
    same = fast.kept == ref.kept
    differing = sum(fast.kept[k] != ref.kept.get(k) for k in fast.kept)
    search = {k: sum(r["seconds"] for r in results[k].layers) for k in results}
    quality = {k: evaluate(r.model, hold[0].to(args.device), hold[1].to(args.device), "cross_entropy")[0]
               for k, r in results.items()}
    print(f"same channels chosen: {same} ({differing} of {len(fast.kept)} groups differ)")
    print(f"search time: ours {search['fast']:.1f} s, reference {search['reference']:.1f} s, ours with step=2 "
          f"{search['fast, step 2']:.1f} s")
    print(f"held-out loss of the pruned net: one channel per step {quality['fast']:.4f}, step=2 "
          f"{quality['fast, step 2']:.4f} (dense {evaluate(model, hold[0], hold[1], 'cross_entropy')[0]:.4f})")
    if not same and args.device == "cpu":
        raise SystemExit("the two evaluators chose different channels")
    print(f"speedup vs reference: {search['reference'] / search['fast']:.1f}x "
          f"({search['reference'] / search['fast, step 2']:.1f}x with step=2)")


def local_row(args) -> None:
    """The local (reconstruction) objective against the whole-network search, same net and widths."""
    model = _pretrained_like(get_model("resnet20", seed=args.seed), args.seed)
    X, y = _data(2048, args.seed)
    hold = _data(512, args.seed + 1)
    print(f"\nresnet20, keep 0.5: local objective (Gram form on 512 calibration images) vs whole-network search "
          f"({args.candidates} candidates, batch {args.batch_size})")
    for objective in ("network", "local"):
        start = time.perf_counter()
        result = prune_model(model, (X, y), keep_ratio=0.5, candidates=args.candidates, batch_size=args.batch_size,
                             seed=args.seed, device=args.device, eval_examples=256, objective=objective, check=False)
        seconds = time.perf_counter() - start
        loss, acc = evaluate(result.model, hold[0].to(args.device), hold[1].to(args.device), "cross_entropy")
        search = sum(r["seconds"] for r in result.layers)
        print(f"{objective:>8}: search {search:.1f} s (whole call {seconds:.1f} s), held-out loss {loss:.4f}")


def resnet18_row(args) -> None:
    model = _pretrained_like(get_model("resnet18", seed=args.seed), args.seed)
    X, y = _data(1024, args.seed)
    start = time.perf_counter()
    result = prune_model(model, (X, y), keep_ratio=0.5, candidates=50, batch_size=128, seed=args.seed,
                         device=args.device, max_steps=args.resnet18_steps, eval_examples=128, recalibrate=0,
                         check=False)
    total = time.perf_counter() - start
    print(f"\nresnet18 (torchvision-style, 32x32), 50 candidates, batch 128, {args.resnet18_steps} steps per group, "
          f"{args.device}")
    print(f"{'group':>22} {'channels':>8} {'s/step':>8} {'est. s/group at keep 0.5':>26}")
    estimate = 0.0
    for r in result.layers:
        per_step = r["seconds"] / max(r["steps"], 1)
        estimate += per_step * r["channels"] / 2
        print(f"{r['name']:>22} {r['channels']:>8} {per_step:>8.3f} {per_step * r['channels'] / 2:>26.1f}")
    print(f"measured {total:.1f} s for {args.resnet18_steps} steps per group; a full keep-0.5 search: about "
          f"{estimate:.0f} s")


def mobilenet_row(args) -> None:
    model = _pretrained_like(get_model("mobilenetv2", seed=args.seed), args.seed)
    X, y = _data(256, args.seed)
    hold = _data(256, args.seed + 1)
    start = time.perf_counter()
    result = prune_model(model, (X, y), flops_target=0.6, candidates=8, seed=args.seed, device=args.device,
                         eval_examples=128, holdout=64, recalibrate=128, step=args.mobilenet_step,
                         objective=args.mobilenet_objective)
    seconds = time.perf_counter() - start
    loss = evaluate(result.model, hold[0].to(args.device), hold[1].to(args.device), "cross_entropy")[0]
    dense = evaluate(model, hold[0].to(args.device), hold[1].to(args.device), "cross_entropy")[0]
    print(f"\nmobilenetv2 (3x32x32), flops_target=0.6, 8 candidates, 256 images, adaptive widths, "
          f"objective={args.mobilenet_objective}, step={args.mobilenet_step}: {seconds:.1f} s, "
          f"MACs {result.ratio('macs'):.3f}x, params "
          f"{result.ratio('params'):.3f}x, {len(result.kept)} groups; held-out loss {loss:.4f} (dense {dense:.4f})")


ENGINE_REVISION = "88b7265"
"""The last revision whose deep search ran its own loop (``channels/search.search_group``)."""
ENGINE_CANDIDATES, ENGINE_BATCH = 8, 16


def engine_child(args) -> None:
    """One timed run for the ``engine`` row, in whatever ``greedyprune`` is first on the path."""
    import greedyprune

    model = _pretrained_like(get_model("resnet20", seed=args.seed), args.seed)
    X, y = _data(1024, args.seed)
    result = prune_model(model, (X, y), keep_ratio=0.5, candidates=args.candidates, batch_size=args.batch_size,
                         seed=args.seed, eval_examples=64, bn="running", recalibrate=0, check=False,
                         objective="network")
    print(json.dumps({"search": sum(r["seconds"] for r in result.layers), "kept": result.kept,
                      "package": os.path.dirname(greedyprune.__file__)}))


def engine_row(args) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", here, "archive", args.old, "greedyprune"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        trees = {"old": old, "new": here}
        runs: dict[str, list] = {"old": [], "new": []}
        print(f"\nengine row: resnet20 3x32x32, keep 0.5, {ENGINE_CANDIDATES} candidates, batch {ENGINE_BATCH}, "
              f"1 thread; old = {args.old}, new = this tree; alternating, {args.repeats} runs each")
        for r in range(args.repeats):
            for key in (("old", "new") if r % 2 == 0 else ("new", "old")):
                env = dict(os.environ, PYTHONPATH=trees[key], OMP_NUM_THREADS="1")
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rows", "engine-child",
                                      "--threads", "1", "--candidates", str(ENGINE_CANDIDATES),
                                      "--batch-size", str(ENGINE_BATCH), "--seed", str(args.seed)],
                                     env=env, check=True, capture_output=True, text=True, cwd=trees[key]).stdout
                run = json.loads(out.strip().splitlines()[-1])
                if not os.path.samefile(os.path.dirname(run["package"]), trees[key]):
                    raise SystemExit(f"the {key} run imported {run['package']}, not its own tree")
                runs[key].append(run)
                print(f"  {key}: search {run['search']:.2f} s", flush=True)
    same = all(run["kept"] == runs["old"][0]["kept"] for run in runs["old"] + runs["new"])
    old_s, new_s = (statistics.median(x["search"] for x in runs[k]) for k in ("old", "new"))
    print(f"same channels kept in every run: {same}")
    print(f"median search: old {old_s:.2f} s, new {new_s:.2f} s; new/old: {new_s / old_s:.3f}x")
    if not same:
        raise SystemExit("the engine's deep search kept other channels than the old loop")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="main,local,resnet18,mobilenetv2")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resnet18-steps", type=int, default=2)
    p.add_argument("--mobilenet-step", type=int, default=1,
                   help="channels added per greedy step in the mobilenetv2 row")
    p.add_argument("--mobilenet-objective", choices=["local", "network"], default="local",
                   help="objective of the mobilenetv2 row (default local: the whole-network search does not "
                        "finish in 10 minutes on 2 CPU cores, even with --mobilenet-step 8)")
    p.add_argument("--old", default=ENGINE_REVISION, help="engine row: the git revision to compare with")
    p.add_argument("--repeats", type=int, default=3, help="engine row: runs of each, alternating")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # full float32 on GPUs (no TF32), so that the two evaluators score candidates with the same arithmetic
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = {"main": main_row, "local": local_row, "resnet18": resnet18_row, "mobilenetv2": mobilenet_row,
            "engine": engine_row, "engine-child": engine_child}
    for name in args.rows.split(","):
        rows[name](args)


if __name__ == "__main__":
    main()
