"""CPU latency of GFS-pruned networks against their dense versions, next to the multiply-add ratio.

    python bench/latency.py                        # ResNet-56 and ResNet-20 at half the multiply-adds
    python bench/latency.py --models resnet56 --flops-target 0.3

Each model is pruned by ``prune_model`` (a quick search: few candidates on random 32x32 data; the
architecture, not the accuracy, sets the latency), then both nets are timed with
``greedyprune.metrics.measure_latency``: median of repeated forwards after a warm-up, fixed threads.
"""
from __future__ import annotations

import argparse

import torch

from greedyprune.channels import prune_model
from greedyprune.metrics import count_macs, count_parameters, measure_latency
from greedyprune.models import get_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet56,resnet20")
    p.add_argument("--flops-target", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,64", help="batch sizes to time")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g)
    print(f"{'model':>10} {'batch':>5} {'params':>8} {'MACs':>7} {'latency':>8}   dense -> pruned median ms "
          f"({args.threads} thread(s))")
    for name in args.models.split(","):
        dense = get_model(name, seed=0).eval()
        pruned = prune_model(dense, (X, y), flops_target=args.flops_target, candidates=4, batch_size=32).model
        p_ratio = count_parameters(pruned) / count_parameters(dense)
        m_ratio = count_macs(pruned, (1, 3, 32, 32)) / count_macs(dense, (1, 3, 32, 32))
        for b in (int(v) for v in args.batches.split(",")):
            shape = (b, 3, 32, 32)
            t_dense = measure_latency(dense, shape, repeats=args.repeats, threads=args.threads)["median"]
            t_pruned = measure_latency(pruned, shape, repeats=args.repeats, threads=args.threads)["median"]
            print(f"{name:>10} {b:>5} {p_ratio:>8.3f} {m_ratio:>7.3f} {t_pruned / t_dense:>8.3f}   "
                  f"{t_dense * 1e3:.2f} -> {t_pruned * 1e3:.2f}")


if __name__ == "__main__":
    main()
