"""An independent reference for the deep search (``greedyprune.channels.prune_model``).

A plain loop that, for every step of every group, builds each candidate's masked network explicitly and
runs the *whole* network forward on the step's batch - no stacked candidates, no folded batch norms, no
rows shared with ``prune_model`` - and takes the candidate with the lowest cross-entropy. It is built
only on public pieces: :class:`~greedyprune.channels.Batches` (the batch sequence),
:func:`~greedyprune.selection.draw_candidates` (the candidate subsets), :func:`~greedyprune.channels.find_groups`
(re-run on the current model before each group, so it does not rely on ``refresh_group``),
:class:`~greedyprune.channels.apply_masks` (the mask on the readers' inputs) and
:func:`~greedyprune.channels.fold_and_remove`.

Which ``prune_model`` options it mirrors (update this file when the deep search changes):

* ``data=(X, y)`` tensors, ``batch_size``, ``seed``: the same :class:`Batches` stream - one batch per step,
  in group order, none consumed between groups (so: ``finetune_steps=0``).
* ``candidates`` (an int, or None for all) and ``replacement``: each step draws from the channels not yet
  chosen (all of them with replacement) with a generator seeded ``seed * 1_000_003 + group_index``.
* ``max_steps`` (default D without replacement, 2 D with).
* stopping rules, computed here from this loop's own per-step numbers: ``keep_ratio`` (stop when
  ``max(1, round(r D))`` distinct channels are kept), ``epsilon`` (stop when the chosen candidate's loss is
  within ``epsilon * |unpruned loss|`` of the group-unpruned network's loss on the same batch) and
  ``accuracy_tolerance`` (stop when its accuracy is at least ``(1 - t)`` x the unpruned accuracy).
* default ``skip`` (whatever :func:`find_groups` leaves out by default), ``skip=`` a list of names.
* ``bn="running"`` (candidates scored with the batch norms' stored statistics) or ``bn="batch"`` (each
  candidate's forward normalised with its own batch's statistics: here simply every forward in batch-norm
  train mode without updating the statistics), and ``recalibrate=n`` (after each group, the running
  statistics re-estimated on ``X[:n]`` in batches of ``batch_size``; 0 = never).
* ``step`` (an int): each step adds the ``step`` lowest-loss candidates (no more than the candidates
  drawn nor, with ``keep_ratio``, than the channels still missing), each scored with the counts before the step.
* ``holdout=0`` (the tolerance rules measured on the step's batch).
* no fine-tuning, no distributed split (the results must not depend on it), ``evaluator`` irrelevant (both
  evaluators must choose what this loop chooses).

A step: with counts n (the multiset S so far, |S| = step) and candidate c, the group's readers see channel
j scaled by ``D * n'_j / |S'|`` with ``n' = n + e_c`` and ``|S'| = step + 1`` (0 when not chosen); the
chosen candidate is the lowest loss, the lowest index among exact ties.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from greedyprune.channels import Batches, apply_masks, find_groups, fold_and_remove
from greedyprune.channels.bn import batch_statistics, recalibrate_bn
from greedyprune.selection import draw_candidates

__all__ = ["ReferenceRun", "reference_prune", "masked_dense_output"]


@dataclass
class ReferenceRun:
    """What the reference loop chose: the pruned model, counts per group, and one record per step."""

    model: nn.Module
    counts: dict[str, list[int]] = field(default_factory=dict)
    steps: dict[str, list[dict]] = field(default_factory=dict)  # group -> [{channel, loss, accuracy, ...}]


def _stop(rule: str, value: float, D: int, counts: torch.Tensor, record: dict) -> bool:
    if rule == "keep_ratio":
        return int((counts > 0).sum()) >= max(1, min(D, round(value * D)))
    if rule == "epsilon":
        return record["loss"] - record["unpruned_loss"] <= value * abs(record["unpruned_loss"])
    if rule == "accuracy_tolerance":
        return record["accuracy"] >= (1 - value) * record["unpruned_accuracy"]
    if rule == "never":
        return False
    raise ValueError(f"the reference does not mirror rule {rule!r}")


def _scoring(model: nn.Module, bn: str):
    return batch_statistics(model) if bn == "batch" else contextlib.nullcontext()


def _loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def reference_prune(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, rule: str, value: float = 0.0,
                    candidates: int | None = 50, replacement: bool = False, batch_size: int = 128,
                    max_steps: int | None = None, seed: int = 0, skip=None, bn: str = "running",
                    recalibrate: int = 0, step: int = 1) -> ReferenceRun:
    """The deep search by explicit masked networks; see the module docstring for what it mirrors."""
    per_step = step  # the loop below counts steps with ``step``
    model = copy.deepcopy(model).eval()
    batches = Batches((X, y), batch_size, seed, torch.device("cpu"))
    example = X[:1]
    _, groups = find_groups(model, example, skip)
    run = ReferenceRun(model=model)
    for index, name in enumerate([g.name for g in groups]):
        DG, current = find_groups(model, example, skip)
        group = next(g for g in current if g.name == name)
        D = group.channels
        counts = torch.zeros(D, dtype=torch.long)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        cap = max_steps if max_steps is not None else (2 * D if replacement else D)
        records = []
        for step in range(cap):
            pool = torch.arange(D) if replacement else torch.nonzero(counts == 0).flatten()
            if pool.numel() == 0:
                break
            x, yb = batches.next()
            cand = draw_candidates(generator, pool, candidates).tolist()
            results = []
            for c in cand:
                trial = counts.clone()
                trial[c] += 1
                scale = trial.to(torch.float32) * D / int(trial.sum())  # D * count_j / |S|
                with apply_masks(model, {group: scale}), _scoring(model, bn):
                    results.append(_loss_and_accuracy(model, x, yb))
            order = sorted(range(len(cand)), key=lambda i: (results[i][0], cand[i]))
            best = order[0]
            take = min(per_step, len(cand))
            if rule == "keep_ratio" and take > 1:  # no more than the width still missing
                take = max(1, min(take, max(1, min(D, round(value * D))) - int((counts > 0).sum())))
            for i in order[:take]:  # the best, then the next ones, each scored against the counts before the step
                counts[cand[i]] += 1
            record = {"step": step + 1, "channel": cand[best], "loss": results[best][0],
                      "accuracy": results[best][1], "kept": int((counts > 0).sum())}
            if rule in ("epsilon", "accuracy_tolerance"):
                with _scoring(model, bn):
                    record["unpruned_loss"], record["unpruned_accuracy"] = _loss_and_accuracy(model, x, yb)
            records.append(record)
            if _stop(rule, value, D, counts, record):
                break
        fold_and_remove(DG, model, group, counts)
        if recalibrate:
            recalibrate_bn(model, X[:recalibrate], batch_size)
        run.counts[name] = counts.tolist()
        run.steps[name] = records
    return run


def masked_dense_output(model: nn.Module, counts: dict[str, list[int]], x: torch.Tensor, skip=None) -> torch.Tensor:
    """The dense ``model``'s output with every group's readers seeing ``D * count_j / |S|`` (all groups at
    once) - what a pruned model with these counts must compute."""
    model = copy.deepcopy(model).eval()
    _, groups = find_groups(model, x[:1], skip)
    scales = {}
    for g in groups:
        if g.name in counts:
            n = torch.tensor(counts[g.name], dtype=torch.float32)
            assert n.numel() == g.channels, (g.name, n.numel(), g.channels)
            scales[g] = n * g.channels / n.sum()
    with torch.no_grad(), apply_masks(model, scales):
        return model(x)
