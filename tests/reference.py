"""The slow, obvious way to run greedy forward selection: for every candidate, form the subnetwork's
averaged output and evaluate its loss.

It exists to check the engine (tests compare selections against it) and to measure how much faster the
engine is (``bench/selection.py``). It shares nothing with the engine but the candidate-subset draw,
which is part of the algorithm's definition rather than of its computation: the losses are computed here,
in float64 and in log space, so that they stay exact for saturated logits (|z| ~ 100, where
``log(1 + exp(-z))`` underflows to 0 in the textbook form while the true loss is ``exp(-z)``).
"""
from __future__ import annotations

import math

import torch

from greedyprune.selection import draw_candidates as _draw_candidates


def _softplus(t: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(t))`` without overflow or cancellation: ``max(t, 0) + log1p(exp(-|t|))``."""
    return t.clamp_min(0) + torch.log1p(torch.exp(-t.abs()))


def per_example_losses(u: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example losses of outputs ``u`` (..., m) or (..., m, C) in float64, exact in log space.

    logistic: ``softplus(z)`` for label 0 and ``softplus(-z)`` for label 1. cross_entropy:
    ``log(sum_c exp(z_c - z_y)) = softplus(logsumexp_{c != y}(z_c - z_y))`` - the correct class's own
    term is the ``1`` inside the softplus, so a confident right answer costs ``~exp(-margin)`` and is not
    lost to ``logsumexp(z) - z_y`` cancelling.
    """
    u = u.double()
    if loss == "squared":
        square = (u - target.double()).pow(2)
        return square.sum(-1) if target.dim() == 2 else square  # (m, C) targets: summed over the C outputs
    if loss == "logistic":
        sign = 1.0 - 2.0 * target.double()  # +1 for label 0, -1 for label 1
        return _softplus(sign * u)
    if loss == "cross_entropy":
        labels = target.long()
        index = labels.view(*([1] * (u.dim() - 2)), -1, 1).expand(*u.shape[:-1], 1)
        d = u - u.gather(-1, index)  # z_c - z_y; 0 at the label
        others = d.scatter(-1, index, -math.inf)  # leave the label's own term out
        return _softplus(torch.logsumexp(others, dim=-1))
    raise ValueError(f"unknown loss {loss!r}")


def reference_loss(u: torch.Tensor, target: torch.Tensor, loss: str) -> float:
    """The loss of one output (m,) or (m, C) in float64: the mean over the m examples (squared: summed
    over the C outputs, then the mean over examples), exact in log space."""
    return float(per_example_losses(u, target, loss).mean())


def candidate_losses(outputs: torch.Tensor, target: torch.Tensor, loss: str,
                     copies: torch.Tensor | None = None) -> torch.Tensor:
    """(K,) float64 losses of K candidate outputs (K, m[, C]), each computed on its own.

    Rows that are exactly equal get exactly equal losses (the loss of their first copy), whatever the
    vectorised arithmetic would have rounded: equal subnetworks have equal losses. ``copies`` (K,) says
    which rows are equal (equal ids); by default it is computed from the rows.
    """
    values = per_example_losses(outputs, target, loss)
    values = values.reshape(values.shape[0], -1).mean(dim=1)
    if copies is None:
        copies = copy_ids(outputs)
    first = torch.full((int(copies.max()) + 1,), values.shape[0], dtype=torch.long)
    first = first.scatter_reduce(0, copies, torch.arange(values.shape[0]), reduce="amin")
    return values[first[copies]]


def copy_ids(rows: torch.Tensor) -> torch.Tensor:
    """(N,) ids, equal for rows that are exactly equal."""
    _, inverse = torch.unique(rows.reshape(rows.shape[0], -1), dim=0, return_inverse=True)
    return inverse


def brute_force_selection(outputs, target, k, loss="squared", replacement=True, candidates=None, seed=0,
                          max_steps=None, one_at_a_time=False):
    """Algorithm 1 by direct evaluation of every candidate's averaged output. Returns ``(indices, losses)``
    as Python lists. Ties go to the lowest index. Computed in float64.

    ``max_steps`` stops early (for timing the reference on a few steps). ``one_at_a_time`` evaluates the
    candidates in a Python loop, one loss per candidate (the public implementations' way, which
    ``bench/selection.py`` times), instead of all of a step's candidates in one vectorised pass.
    """
    n = outputs.shape[0]
    phi = outputs.detach().double()
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    losses: list[float] = []
    total = torch.zeros(phi.shape[1:], dtype=torch.float64)  # sum of the chosen outputs
    taken = torch.zeros(n, dtype=torch.bool)
    copies = copy_ids(phi)
    steps = k if max_steps is None else min(k, max_steps)
    for step in range(steps):
        pool = torch.arange(n) if replacement else torch.nonzero(~taken).flatten()
        rows = _draw_candidates(generator, pool, candidates)
        if one_at_a_time:
            values = torch.tensor([reference_loss((total + phi[i]) / (step + 1), target, loss) for i in rows.tolist()],
                                  dtype=torch.float64)
        else:
            values = candidate_losses((total + phi[rows]) / (step + 1), target, loss, copies[rows])
        best = int(rows[int(torch.argmin(values))])  # argmin returns the first minimum: the lowest index
        chosen.append(best)
        taken[best] = True
        total = total + phi[best]
        losses.append(reference_loss(total / (step + 1), target, loss))
    return chosen, losses


def check_selection(indices, outputs, target, loss, replacement=True, candidates=None, seed=0, rtol=1e-9,
                    atol=0.0) -> dict:
    """Replay a selection made by the engine against the reference, step by step.

    At every step the candidate set is drawn as the engine draws it (from the engine's own earlier
    choices), every candidate's loss is computed by :func:`candidate_losses`, and the engine's choice must
    be a candidate whose loss is the minimum - up to ``rtol`` relative (near-ties between distinct rows may
    be ordered either way by rounding). Returns ``{"steps", "near_ties", "worst"}``: the number of steps
    where the engine chose a near-tie other than the reference's argmin, and the largest relative excess.
    Raises AssertionError naming the step on a wrong choice.
    """
    n = outputs.shape[0]
    phi = outputs.detach().double()
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(phi.shape[1:], dtype=torch.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    copies = copy_ids(phi)
    near_ties, worst = 0, 0.0
    for step, pick in enumerate(int(i) for i in indices):
        pool = torch.arange(n) if replacement else torch.nonzero(~taken).flatten()
        rows = _draw_candidates(generator, pool, candidates)
        assert pick in set(rows.tolist()), f"step {step}: the engine chose {pick}, not among the candidates"
        values = candidate_losses((total + phi[rows]) / (step + 1), target, loss, copies[rows])
        best = int(torch.argmin(values))
        mine = float(values[rows == pick][0])
        lowest = float(values[best])
        excess = (mine - lowest) / max(abs(lowest), 1e-300)
        worst = max(worst, excess)
        assert mine <= lowest + rtol * abs(lowest) + atol, (
            f"step {step}: the engine chose {pick} (loss {mine!r}) but {int(rows[best])} has loss {lowest!r} "
            f"({excess:.3g} relative worse)")
        if pick != int(rows[best]):
            near_ties += 1
        taken[pick] = True
        total = total + phi[pick]
    return {"steps": len(indices), "near_ties": near_ties, "worst": worst}
