"""Benchmark: the network objective's per-candidate batch norm, one fused call per candidate against the
broadcast arithmetic it replaced (the same statistics), on stacked candidates' activations.

    python bench/per_candidate_bn.py            # 1 thread; prints one ratio per shape, alternating runs

Each shape is K candidates x B examples of (C, H, W) activations, channels-last as the fast evaluator keeps
them on a CPU. The two results are checked equal (max difference printed) before timing.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from greedyprune.channels.bn import per_candidate_batch_norm


def broadcast(x: torch.Tensor, bn: nn.Module, K: int) -> torch.Tensor:
    """The former implementation: statistics by broadcasting tensor operations."""
    B, C = x.shape[0] // K, x.shape[1]
    xv = x.reshape(K, B, C, -1)
    mean = xv.mean(dim=(1, 3), keepdim=True)
    var = xv.var(dim=(1, 3), unbiased=False, keepdim=True)
    y = (xv - mean) * torch.rsqrt(var + bn.eps)
    y = y * bn.weight.reshape(1, 1, C, 1) + bn.bias.reshape(1, 1, C, 1)
    return y.reshape(x.shape)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load at start: {os.getloadavg()[0]:.2f}, {args.threads} thread(s)")
    for K, B, C, H in ((8, 32, 64, 16), (8, 16, 256, 8), (50, 16, 32, 32)):
        torch.manual_seed(0)
        bn = nn.BatchNorm2d(C)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
        x = torch.randn(K * B, C, H, H).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            diff = float((broadcast(x, bn, K) - per_candidate_batch_norm(x, bn, K)).abs().max())
            old = new = float("inf")
            for _ in range(3):  # alternate, keep the best of each
                old = min(old, best_of(lambda: broadcast(x, bn, K), args.repeats))
                new = min(new, best_of(lambda: per_candidate_batch_norm(x, bn, K), args.repeats))
        print(f"K={K:>2} B={B:>2} C={C:>3} {H}x{H}: broadcast {1000 * old:6.2f} ms, fused per candidate "
              f"{1000 * new:6.2f} ms, {old / new:.1f}x (max difference {diff:.1e})")
    print(f"load at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
