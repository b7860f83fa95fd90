"""Benchmark of the selection engine (Algorithm 1) against the slow reference way and the floor.

    python bench/selection.py                 # N=4000 neurons, m=5000 examples, k=200 steps
    python bench/selection.py --reference-steps 200   # time the reference on every step (slow)

The outputs are real: the neuron output vectors of a randomly initialised 784-N two-layer net on the
5,000 built-in MNIST images (one output for squared / logistic, 10 for cross-entropy), in float32.

* engine: ``greedy_forward_selection``.
* reference: for every candidate, form the averaged subnetwork output and evaluate its loss, one
  candidate at a time (``tests/reference.py``). Its cost per step is the same at
  every step, so it is timed on ``--reference-steps`` steps and scaled to k (say 200 to time all of them);
  its choices on those steps are checked against the engine's.
* floor: k passes of the cheapest possible per-step work over the same (N, m[, C]) matrix: a
  matrix-vector product (squared), an elementwise softplus (logistic), a log-sum-exp over classes
  (cross-entropy; timed on 10 passes and scaled, as torch's log-sum-exp over a short axis is slow).

The last line is ``speedup vs reference: X.Xx, squared vs floor: Y.Yx`` (the smallest speedup over the
three losses; engine time / floor time for the squared loss, lower is better).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from greedyprune import TwoLayerNet, greedy_forward_selection, neuron_outputs
from greedyprune.data import load_mnist5k

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import brute_force_selection  # noqa: E402 - the brute-force reference lives with the tests


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def repeated(fn, times):
    """Time ``times`` calls of fn, dropping each result (as a per-step loop would)."""
    start = time.perf_counter()
    for _ in range(times):
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="neurons N")
    parser.add_argument("--m", type=int, default=5000, help="examples m (at most 5000)")
    parser.add_argument("--k", type=int, default=200, help="selection steps")
    parser.add_argument("--reference-steps", type=int, default=10, help="steps the reference is timed on")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--losses", default="squared,logistic,cross_entropy")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ref_steps = min(args.reference_steps, args.k)

    data = load_mnist5k()
    X = data.X[: args.m]
    labels = data.labels[: args.m]
    y_binary = data.binary_labels()[: args.m]
    print(f"N={args.n} neurons, m={X.shape[0]} examples, k={args.k} steps, float32, "
          f"{torch.get_num_threads()} threads; reference timed on {ref_steps} steps and scaled to {args.k}")

    speedups, floor_ratios = {}, {}
    for loss in args.losses.split(","):
        out = 10 if loss == "cross_entropy" else 1
        net = TwoLayerNet(X.shape[1], args.n, out_features=out, seed=0)
        phi = neuron_outputs(net, X)
        if loss == "cross_entropy":
            target = labels
        elif loss == "logistic":
            target = y_binary
        else:
            target = y_binary * 2 - 1  # regression onto +-1
        greedy_forward_selection(phi[:50, :50], target[:50], 2, loss=loss)  # warm-up

        engine_s, result = timed(lambda: greedy_forward_selection(phi, target, args.k, loss=loss))
        ref_s, (ref_indices, _) = timed(lambda: brute_force_selection(phi, target, args.k, loss=loss,
                                                                      max_steps=ref_steps, one_at_a_time=True))
        ref_total = ref_s * args.k / ref_steps
        same = result.indices[:ref_steps].tolist() == ref_indices
        v = torch.randn(phi.reshape(args.n, -1).shape[1])
        flat = phi.reshape(args.n, -1)
        if loss == "squared":
            floor_s = repeated(lambda: flat @ v, args.k)
            floor_name = "k matrix-vector products"
        elif loss == "logistic":
            floor_s = repeated(lambda: F.softplus(phi), args.k)
            floor_name = "k softplus passes"
        else:
            passes = min(args.k, 10)  # torch's log-sum-exp over C=10 is slow: time 10 passes and scale
            floor_s = repeated(lambda: torch.logsumexp(phi, dim=2), passes) * args.k / passes
            floor_name = f"k log-sum-exp passes, timed on {passes}"
        speedups[loss] = ref_total / engine_s
        floor_ratios[loss] = engine_s / floor_s
        print(f"{loss:>13}: engine {engine_s:8.2f} s | reference {ref_total:9.1f} s ({ref_s:.1f} s for {ref_steps} "
              f"steps) | floor {floor_s:7.2f} s ({floor_name}) | speedup {speedups[loss]:7.1f}x | "
              f"engine/floor {floor_ratios[loss]:.2f}x | same choices as reference: {same} | "
              f"distinct kept {int(result.selected.numel())}")
        if not same:
            raise SystemExit(f"{loss}: the engine and the reference chose differently")
        phi = flat = None  # free the (N, m[, C]) matrix before the next loss

    squared = floor_ratios.get("squared", float("nan"))
    print(f"speedup vs reference: {min(speedups.values()):.1f}x, squared vs floor: {squared:.1f}x")


if __name__ == "__main__":
    main()
