"""The slow, obvious way to run greedy forward selection: for every candidate, form the subnetwork's
averaged output and evaluate its loss, one candidate at a time.

It exists to check the engine (tests compare selections against it) and to measure how much faster the
engine is (``bench/selection.py``). It shares nothing with the engine but the candidate-subset draw,
which is part of the algorithm's definition rather than of its computation.
"""
from __future__ import annotations

import math

import torch

from greedyprune.selection import draw_candidates as _draw_candidates, loss_value


def brute_force_selection(outputs, target, k, loss="squared", replacement=True, candidates=None, seed=0,
                          max_steps=None):
    """Algorithm 1 by direct evaluation. Returns ``(indices, losses)`` as Python lists.

    ``max_steps`` stops early (for timing the reference on a few steps).
    """
    n = outputs.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    losses: list[float] = []
    u = torch.zeros(outputs.shape[1:], dtype=outputs.dtype, device=outputs.device)
    taken = torch.zeros(n, dtype=torch.bool)
    steps = k if max_steps is None else min(k, max_steps)
    for step in range(steps):
        pool = torch.arange(n) if replacement else torch.nonzero(~taken).flatten()
        rows = _draw_candidates(generator, pool, candidates).tolist()
        best, best_loss = -1, math.inf
        for i in rows:  # ascending, so a strict '<' keeps the lowest index on ties
            candidate_output = (step * u + outputs[i]) / (step + 1)
            value = loss_value(candidate_output, target, loss)
            if value < best_loss:
                best, best_loss = i, value
        chosen.append(best)
        taken[best] = True
        u = (step * u + outputs[best]) / (step + 1)
        losses.append(loss_value(u, target, loss))
    return chosen, losses
