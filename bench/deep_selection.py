"""Benchmark: greedy forward selection of channels in a ResNet-20 on 32x32 inputs, ours vs the reference.

The reference is the public implementation's way: one full forward of the masked network per
candidate. Ours (``method="fast"``) runs the layers upstream of the group once per batch, stacks
the candidates along the batch dimension, folds batch norms, and computes the group's first readers
as a shared product plus one channel's contribution per candidate. Both runs see the same batches
and candidates; the script checks they keep the same channels.

    python bench/deep_selection.py            # ~5 minutes on 2 CPU cores
    python bench/deep_selection.py --steps 2  # quicker: at most 2 greedy steps per group

Last line: ``speedup vs reference: X.Xx``.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from greedyprune.deep import prune_model
from greedyprune.models import get_model


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep-ratio", type=float, default=0.5, help="channels kept per group (steps = kept channels)")
    p.add_argument("--steps", type=int, default=None, help="cap on greedy steps per group (default: no cap)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = _pretrained_like(get_model(args.model, seed=args.seed), args.seed)
    g = torch.Generator().manual_seed(args.seed)
    X = torch.randn(2048, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    opts = dict(keep_ratio=args.keep_ratio, candidates=args.candidates, batch_size=args.batch_size, max_steps=args.steps,
                seed=args.seed, device=args.device, eval_examples=256)
    print(f"{args.model}, 3x32x32, batch {args.batch_size}, {args.candidates} candidates per step, "
          f"keep ratio {args.keep_ratio}, {args.threads} threads, {args.device}")
    results, seconds = {}, {}
    for method in ("fast", "reference"):
        start = time.perf_counter()
        results[method] = prune_model(model, (X, y), method=method, **opts)
        seconds[method] = time.perf_counter() - start
    fast, ref = results["fast"], results["reference"]
    print(f"{'group':>16} {'channels':>8} {'cands':>6} {'ours s':>8} {'ref s':>8} {'ratio':>6}")
    for a, b in zip(fast.groups, ref.groups):
        print(f"{a['name']:>16} {a['channels']:>8} {min(args.candidates, a['channels']):>6} "
              f"{a['seconds']:>8.2f} {b['seconds']:>8.2f} {b['seconds'] / a['seconds']:>6.1f}")
    same = fast.kept == ref.kept
    search = {m: sum(r["seconds"] for r in results[m].groups) for m in results}
    print(f"same channels chosen: {same}")
    print(f"search time: ours {search['fast']:.1f} s, reference {search['reference']:.1f} s "
          f"(whole call: {seconds['fast']:.1f} s vs {seconds['reference']:.1f} s)")
    if not same:
        raise SystemExit("the two methods chose different channels")
    print(f"speedup vs reference: {search['reference'] / search['fast']:.1f}x")


if __name__ == "__main__":
    main()
