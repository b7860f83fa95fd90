"""Multiply-add budgets over channel groups: what a network costs when each group keeps some channels."""
from __future__ import annotations

import torch
from torch import nn

from ..metrics import count_macs, layer_macs
from .groups import ChannelGroup, is_depthwise

__all__ = ["MacModel", "uniform_keep_counts"]


class MacModel:
    """The network's multiply-adds as a function of the channels kept per group.

    A conv / linear layer's cost scales with the kept fraction of every group it writes (output channels)
    or reads (input channels; depthwise convolutions scale only with their own channels), so
    ``macs(kept) = fixed + sum_layers macs_layer * prod_{groups g of the layer} kept_g / D_g``.
    """

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor, DG):
        self.per_layer = layer_macs(model, example)
        self.dense = count_macs(model, example)
        self.groups = groups
        names = {m: n for n, m in model.named_modules()}
        self.factors: dict[str, list[ChannelGroup]] = {}
        for g in groups:
            for item in DG.get_pruning_group(g.root, g.root_fn, list(range(g.channels))):
                module = item.dep.target.module
                if not isinstance(module, (nn.Conv2d, nn.Linear)):
                    continue
                if not DG.is_out_channel_pruning_fn(item.dep.handler) and is_depthwise(module):
                    continue
                layer = self.factors.setdefault(names[module], [])
                if g not in layer:
                    layer.append(g)
        self.fixed = self.dense - sum(self.per_layer.get(n, 0) for n in self.factors)

    def macs(self, kept: dict[str, int]) -> float:
        """Multiply-adds with ``kept[group.name]`` channels in each group (groups not named stay whole)."""
        total = float(self.fixed)
        for name, gs in self.factors.items():
            f = 1.0
            for g in gs:
                f *= kept.get(g.name, g.channels) / g.channels
            total += self.per_layer.get(name, 0) * f
        return total

    def uniform(self, r: float) -> dict[str, int]:
        """The same keep fraction r in every group (at least one channel)."""
        return {g.name: max(1, min(g.channels, round(r * g.channels))) for g in self.groups}


def uniform_keep_counts(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor, target: float,
                        DG) -> dict[str, int]:
    """Channels to keep per group, the same fraction r in every group, with r the largest for which the
    pruned network's multiply-adds are at most ``target`` x the dense network's."""
    cost = MacModel(model, groups, example, DG)
    budget = target * cost.dense
    if cost.macs(cost.uniform(0.0)) > budget:
        raise ValueError(f"flops_target={target} is not reachable: keeping one channel in every prunable group still "
                         f"costs {cost.macs(cost.uniform(0.0)) / cost.dense:.3f} of the dense multiply-adds (the "
                         f"skipped layers alone); raise flops_target or skip fewer layers")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.macs(cost.uniform(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return cost.uniform(lo)
