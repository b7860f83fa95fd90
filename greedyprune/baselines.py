"""Baseline channel-pruning criteria at the same channels kept per group as a GFS result.

Each criterion scores every channel of a group and keeps the top ones; the scores come from
Torch-Pruning's importance criteria (an ``Importance`` is a callable: group -> one score per
channel):

* ``"l1"`` -- L1 norm of the group's first layer's filter (``MagnitudeImportance(p=1,
  group_reduction="first")``), the criterion of "Pruning Filters for Efficient ConvNets";
* ``"bn"`` -- absolute batch-norm scale (``BNScaleImportance``), as in network slimming;
* ``"taylor"`` -- first-order Taylor estimate |w * dL/dw| (``TaylorImportance``), with gradients of
  the cross-entropy on a few batches;
* ``"random"`` -- uniform random scores, seeded.

Unlike GFS no weight is rescaled: the unselected channels are simply removed.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .deep import _Batches, _refresh, _total_macs, find_groups

CRITERIA = ("l1", "bn", "taylor", "random")

__all__ = ["CRITERIA", "prune_like"]


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "l1":
        # the filter-magnitude criterion: L1 norm of the first (root) layer's filters only
        return tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    if criterion == "bn":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.TaylorImportance()
    if criterion == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")


def prune_like(model: nn.Module, keep: Mapping[str, int], criterion: str, *, data=None, example_inputs=None,
               skip=None, extra_skip=(), seed: int = 0, taylor_batches: int = 4, batch_size: int = 128) -> nn.Module:
    """A copy of ``model`` with ``keep[group]`` channels kept in each named group, chosen by ``criterion``.

    Args:
        model: the dense network (not changed).
        keep: group name (as in :attr:`DeepPruneResult.kept`) -> number of channels to keep; groups
            not named stay whole. Pass ``{name: len(idx) for name, idx in result.kept.items()}`` to
            match a GFS result channel for channel (and so FLOP for FLOP).
        criterion: one of :data:`CRITERIA`.
        data: a DataLoader or (X, y) pair; needed for "taylor", and for the example input when
            ``example_inputs`` is not given.
        skip, extra_skip: as in :func:`greedyprune.prune_model` (use the same values as the GFS run).
        seed: seeds "random" and the Taylor batches.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    if criterion == "taylor" and data is None:
        raise ValueError("criterion 'taylor' needs data=(X, y) or a DataLoader to compute gradients")
    if example_inputs is None and data is None:
        raise ValueError("pass example_inputs (a batch the model accepts) or data")
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    batches = _Batches(data, batch_size, seed, device) if data is not None else None
    if example_inputs is None:
        example_inputs = batches.fixed(1)[0]
    DG, groups = find_groups(model, example_inputs, skip, extra_skip=extra_skip)
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        raise ValueError(f"keep names groups the model does not have: {unknown}; its groups are {sorted(by_name)}")
    for name, n in keep.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= by_name[name].channels:
            raise ValueError(f"keep[{name!r}] must be an int in [1, {by_name[name].channels}], got {n!r}")
    if criterion == "taylor":
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for _ in range(taylor_batches):
                x, y = batches.next()
                F.cross_entropy(model(x), y).backward()
    importance = _importance(criterion)
    scores = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in keep:
            g = by_name[name]
            tp_group = DG.get_pruning_group(g.root, g.root_fn, list(range(g.channels)))
            scores[name] = importance(tp_group).detach().float().cpu()
    model.zero_grad(set_to_none=True)
    for name, n in keep.items():
        g = _refresh(DG, model, by_name[name])
        order = torch.argsort(-scores[name], stable=True)
        remove = sorted(order[n:].tolist())
        if remove:
            DG.get_pruning_group(g.root, g.root_fn, remove).prune()
    return model.eval()


def macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-adds of one forward (FlopCounterMode FLOPs / 2)."""
    return _total_macs(model, example_inputs)
