"""Budgets over channel groups: what a network costs when each group keeps some channels, and how many
channels each group keeps to meet a multiply-add or parameter budget.

* :class:`CostModel` - multiply-adds or parameters as a function of the channels kept per group. A
  layer's cost scales with the kept fraction of the group its outputs belong to and of the group its
  inputs belong to (a depthwise convolution with its one group only).
* :func:`uniform_keep_counts` - the same keep fraction in every group, the largest that fits.
* :func:`allocate` - adaptive widths: starting from the dense network, repeatedly take a channel from
  the group where it costs the least loss per unit of cost saved, read off each group's own loss curve
  (the held-out loss against the number of channels kept, measured by greedy selection), until the
  budget is met. Each group's width then follows its own loss curve, as in "Good Subnetworks Provably
  Exist", instead of one fraction for all.
"""
from __future__ import annotations

import heapq
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidOptionError
from ..metrics import count_macs, count_parameters, layer_macs
from .groups import ChannelGroup, is_depthwise

__all__ = ["CostModel", "allocate", "monotone_gaps", "per_channel", "uniform_keep_counts"]


class CostModel:
    """Multiply-adds (``kind="macs"``) or parameters (``kind="params"``) as a function of the channels
    kept per group: ``cost(kept) = fixed + sum_layers (cost_layer * f_out * f_in + bias_layer * f_out)`` with
    ``f`` the kept fraction of the layer's output / input group (1 for layers outside every group) and
    ``bias_layer`` the parameters of a layer's bias (0 for multiply-adds): a bias has one entry per output
    channel, however many inputs are kept."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor, DG, kind: str = "macs"):
        if kind not in ("macs", "params"):
            raise InvalidOptionError(f"unknown cost {kind!r}; expected 'macs' or 'params'")
        self.kind, self.groups = kind, groups
        names = {m: n for n, m in model.named_modules()}
        self.out_group: dict[str, ChannelGroup] = {}
        self.in_group: dict[str, ChannelGroup] = {}
        for g in groups:
            for item in DG.get_pruning_group(g.root, g.root_fn, list(range(g.channels))):
                module = item.dep.target.module
                if not isinstance(module, nn.Module) or module not in names:
                    continue
                name = names[module]
                if DG.is_out_channel_pruning_fn(item.dep.handler):
                    self.out_group[name] = g
                elif DG.is_in_channel_pruning_fn(item.dep.handler) and not is_depthwise(module):
                    self.in_group[name] = g
        self.out_only: dict[str, int] = {}  # parameters that scale with the output channels alone (a bias)
        if kind == "macs":
            self.per_layer = {n: c for n, c in layer_macs(model, example).items()}
            self.total = count_macs(model, example)
        else:
            self.per_layer = {}
            for n, m in model.named_modules():
                own = dict(m.named_parameters(recurse=False))
                if not n or not own:
                    continue
                bias = own.get("bias") if "weight" in own else None
                self.per_layer[n] = sum(p.numel() for p in own.values()) - (0 if bias is None else bias.numel())
                if bias is not None:
                    self.out_only[n] = bias.numel()
            self.total = count_parameters(model)
        layers = set(self.out_group) | set(self.in_group)
        self.fixed = self.total - sum(self.per_layer.get(n, 0) + self.out_only.get(n, 0) for n in layers)
        self.layers = sorted(layers)

    def cost(self, kept: dict[str, int]) -> float:
        """The cost with ``kept[group.name]`` channels in each group (groups not named stay whole)."""
        def fraction(g: ChannelGroup | None) -> float:
            return 1.0 if g is None else kept.get(g.name, g.channels) / g.channels

        total = float(self.fixed)
        for name in self.layers:
            f_out = fraction(self.out_group.get(name))
            total += self.per_layer.get(name, 0) * f_out * fraction(self.in_group.get(name))
            total += self.out_only.get(name, 0) * f_out  # a bias: one per output channel, whatever the inputs
        return total

    def uniform(self, r: float) -> dict[str, int]:
        """The same keep fraction r in every group (at least one channel)."""
        return {g.name: max(1, min(g.channels, round(r * g.channels))) for g in self.groups}


def uniform_keep_counts(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor, target: float, DG,
                        kind: str = "macs") -> dict[str, int]:
    """Channels to keep per group, the same fraction r in every group, with r the largest for which the
    pruned network's cost is at most ``target`` x the dense network's."""
    model_cost = CostModel(model, groups, example, DG, kind)
    budget = target * model_cost.total
    floor = model_cost.cost(model_cost.uniform(0.0))
    if floor > budget:
        raise InvalidOptionError(
            f"{_name(kind)}={target} is not reachable: keeping one channel in every prunable group "
            f"still costs {floor / model_cost.total:.3f} of the dense network's {_what(kind)} (the "
            f"skipped layers alone); raise the target or skip fewer layers")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if model_cost.cost(model_cost.uniform(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return model_cost.uniform(lo)


def monotone_gaps(losses: Sequence[float], unpruned: float) -> list[float]:
    """``gap[k-1]`` for k = 1..D channels kept: the held-out loss with k channels minus the unpruned loss,
    made non-increasing in k (a running minimum) so that noise never makes a wider group look worse."""
    out, best = [], float("inf")
    for value in losses:
        best = min(best, float(value) - unpruned)
        out.append(best)
    return out


def allocate(model_cost: CostModel, gaps: dict[str, list[float]], target: float) -> dict[str, int]:
    """Channels per group for a cost of at most ``target`` x the dense network's, by greedy marginal
    analysis: remove, one channel at a time, the channel whose removal raises its group's loss gap the
    least per unit of cost it saves. ``gaps[group]`` as from :func:`monotone_gaps` (length D).

    Raises ValueError naming the closest reachable fraction when one channel per group is still too much.
    """
    budget = target * model_cost.total
    groups = {g.name: g for g in model_cost.groups}
    kept = {name: g.channels for name, g in groups.items()}
    for name, curve in gaps.items():
        if len(curve) != groups[name].channels:
            raise InvalidOptionError(
                f"loss curve of group {name!r} has {len(curve)} points for {groups[name].channels} "
                f"channels")
    floor = model_cost.cost({name: 1 for name in groups})
    if floor > budget:
        raise InvalidOptionError(
            f"a budget of {target} is not reachable: keeping one channel in every prunable group still "
            f"costs {floor / model_cost.total:.3f} of the dense network (closest reachable); raise the "
            f"target or skip fewer layers")
    cost = model_cost.cost(kept)

    def price(name: str) -> tuple[float, float]:
        k = kept[name]
        curve = gaps.get(name)
        trial = dict(kept)
        trial[name] = k - 1
        saved = cost - model_cost.cost(trial)
        rise = max(curve[k - 2] - curve[k - 1], 0.0) if curve is not None else 0.0
        return (rise / saved if saved > 0 else float("inf")), saved

    heap = [(price(n)[0], n) for n in groups if kept[n] > 1]
    heapq.heapify(heap)
    while cost > budget and heap:
        value, name = heapq.heappop(heap)
        fresh, saved = price(name)  # the other groups' widths may have changed this channel's cost
        if heap and fresh > heap[0][0] + 1e-15:
            heapq.heappush(heap, (fresh, name))
            continue
        kept[name] -= 1
        cost -= saved
        if kept[name] > 1:
            heapq.heappush(heap, (price(name)[0], name))
    return _refill(model_cost, gaps, kept, budget)


def _refill(model_cost: CostModel, gaps: dict[str, list[float]], kept: dict[str, int], budget: float) -> dict[str, int]:
    """The last removal may have overshot the budget by a wide group's channel: give channels back, the one
    that lowers its group's loss gap most per unit of cost first, while they still fit."""
    groups = {g.name: g for g in model_cost.groups}
    cost = model_cost.cost(kept)
    while True:
        best = None
        for name, k in kept.items():
            if k >= groups[name].channels:
                continue
            trial = dict(kept)
            trial[name] = k + 1
            added = model_cost.cost(trial) - cost
            if cost + added > budget:
                continue
            curve = gaps.get(name)
            drop = max(curve[k - 1] - curve[k], 0.0) if curve is not None else 0.0
            value = drop / added if added > 0 else float("inf")
            if best is None or value > best[0]:
                best = (value, name, added)
        if best is None:
            return kept
        kept[best[1]] += 1
        cost += best[2]


def _name(kind: str) -> str:
    return "flops_target" if kind == "macs" else "params_target"


def _what(kind: str) -> str:
    return "multiply-adds" if kind == "macs" else "parameters"


def per_channel(group: ChannelGroup, curve: list) -> list[float]:
    """Per channel count k = 1..D: the loss with the fewest units that keep at least k channels."""
    losses, points = [], iter(curve)
    kept, loss, _ = next(points)
    for k in range(1, group.channels + 1):
        while kept < k:
            kept, loss, _ = next(points)
        losses.append(loss)
    return losses
