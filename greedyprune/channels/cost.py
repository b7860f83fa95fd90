"""What the network objective's search costs, and the per-step batch that keeps it within a budget.

Each greedy step of the network objective scores ``candidates`` widths of one group by forwarding a batch
through everything downstream of the group's readers, once per candidate; a group searched to ``t`` units
``take`` at a time takes about ``t / take`` steps. Summed over the groups that is

    MACs ~= sum_g steps_g * batch * (candidates * downstream_g + total)

(``total``: one dense forward per example, the part upstream of the group that each step's batch runs once).
At 128 examples a step this is 10^13 multiply-adds on a ResNet-50-style stack of 32x32 images: hours on two
CPU cores. ``batch_size=None`` (the default) therefore uses the largest per-step batch, between
:data:`MIN_SEARCH_BATCH` and :data:`MAX_SEARCH_BATCH`, that keeps the estimate under :data:`SEARCH_MACS`
(on CUDA :data:`GPU_SEARCH_MACS`), and if even that is too much, with ``step="auto"``, fewer and larger
steps; a batch the user passes is used as given. Past the budget the search warns with its estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..metrics import layer_macs
from .groups import ChannelGroup, execution_order

__all__ = ["AUTO_STEPS", "GPU_SEARCH_MACS", "MAX_SEARCH_BATCH", "MIN_AUTO_STEPS", "MIN_SEARCH_BATCH", "SEARCH_MACS",
           "SearchPlan", "downstream_macs", "plan_search", "planned_steps", "search_macs"]

SEARCH_MACS = 1.5e12
"""Multiply-adds the network objective's candidate forwards may take on a CPU (about a minute or two on two
cores), with ``batch_size=None``."""
GPU_SEARCH_MACS = 1.5e14
"""The same on a CUDA device."""
MIN_SEARCH_BATCH = 16
"""The smallest per-step batch ``batch_size=None`` picks: below it a step's loss is too noisy to rank
candidates (the budget is exceeded instead, with a warning that says by how much)."""
MAX_SEARCH_BATCH = 128
"""The per-step batch ``batch_size=None`` uses when the budget allows it (the former default)."""
AUTO_STEPS = 16
"""``step="auto"``: a group searched to a fixed width takes about this many greedy steps..."""
MIN_AUTO_STEPS = 4
"""... or as few as this many when the budget is tight."""


def downstream_macs(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor) -> tuple[dict[str, int], int]:
    """Per example: the multiply-adds of every layer that runs at or after each group's first reader
    (``{group: MACs}``), and of the whole network. A layer on a parallel branch after the reader is
    counted too (an upper bound)."""
    macs = layer_macs(model, example[:1])
    order = execution_order(model, example[:1])
    modules = dict(model.named_modules())
    position = {name: order.get(modules[name], -1) for name in macs}
    out = {}
    for g in groups:
        first = min((order.get(modules[r], math.inf) for r, _, _ in g.readers if r in modules), default=0)
        out[g.name] = sum(m for name, m in macs.items() if position[name] >= first)
    return out, sum(macs.values())


def planned_steps(group: ChannelGroup, target: int | None, step: int | str, candidates: int | None,
                  auto_steps: int) -> int:
    """Greedy steps the network objective takes on ``group``: to a fixed width of ``target`` channels, its
    units ``take`` at a time (``step``, or with ``step="auto"`` about ``auto_steps`` steps, never more units
    a step than candidates scored); with no fixed width, half its units one at a time (an estimate: the
    stopping rule decides)."""
    units, per_unit = group.num_units, group.channels // group.num_units
    if target is None:
        return max(1, units // 2)
    need = -(-int(target) // per_unit)
    take = max(1, -(-int(target) // (per_unit * auto_steps))) if step == "auto" else int(step)
    take = min(take, candidates if candidates is not None else units)
    return max(1, -(-need // max(take, 1)))


def search_macs(steps: dict[str, int], downstream: dict[str, int], total: int, candidates: dict[str, int],
                batch: int) -> float:
    """The estimated multiply-adds of the search (module docstring)."""
    return float(sum(s * batch * (candidates[g] * downstream[g] + total) for g, s in steps.items()))


@dataclass(frozen=True)
class SearchPlan:
    """How the network objective searches within its budget: ``batch`` examples a step (None: each batch
    as drawn: the user's ``batch_size``), about ``auto_steps`` steps a group with ``step="auto"``, and the
    estimated multiply-adds ``macs`` of that (``budget``: what the device allows)."""

    batch: int | None
    auto_steps: int
    macs: float
    budget: float


def plan_search(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor, targets: dict | None,
                step: int | str, candidates: int | None, batch: int | None, available: int | None) -> SearchPlan:
    """The plan for the search's estimate to stay under the budget: the per-step batch (``batch``, or
    with None the largest from :data:`MAX_SEARCH_BATCH` down to :data:`MIN_SEARCH_BATCH`), then, with
    ``step="auto"``, fewer steps a group (:data:`AUTO_STEPS` down to :data:`MIN_AUTO_STEPS`: more units
    taken from each step's ranking). ``targets``: the stopping rule's fixed widths (``{group: channels}``),
    if any; ``available``: the examples an (X, y) pair holds (None for a loader)."""
    targets = targets or {}
    cands = {g.name: min(candidates, g.num_units) if candidates is not None else g.num_units for g in groups}
    downstream, total = downstream_macs(model, groups, example)
    budget = GPU_SEARCH_MACS if example.device.type == "cuda" else SEARCH_MACS
    plan = None
    for auto_steps in ((AUTO_STEPS, AUTO_STEPS // 2, MIN_AUTO_STEPS) if step == "auto" else (AUTO_STEPS,)):
        steps = {g.name: planned_steps(g, targets.get(g.name), step, candidates, auto_steps) for g in groups}
        per_example = search_macs(steps, downstream, total, cands, 1)
        size = batch or max(MIN_SEARCH_BATCH, min(MAX_SEARCH_BATCH, int(budget // max(per_example, 1.0))))
        size = min(size, available) if available is not None else size
        plan = SearchPlan(None if batch else size, auto_steps, per_example * size, budget)
        if batch is not None or plan.macs <= budget:
            break
    return plan
