"""Baseline channel-pruning criteria at the same channels kept per group as a GFS result.

Each criterion scores every channel of a group and keeps the top ones; the scores come from
Torch-Pruning's importance criteria (an ``Importance`` is a callable: group -> one score per channel):

* ``"l1"`` -- L1 norm of the group's first layer's filter (``MagnitudeImportance(p=1,
  group_reduction="first")``), the criterion of "Pruning Filters for Efficient ConvNets";
* ``"bn"`` -- absolute batch-norm scale (``BNScaleImportance``), as in network slimming;
* ``"taylor"`` -- first-order Taylor estimate |w * dL/dw| (``TaylorImportance``), with gradients of
  the cross-entropy on a few batches;
* ``"fpgm"`` -- "Filter Pruning via Geometric Median": a filter of the group's first layer whose summed
  Euclidean distance to that layer's other filters is small lies near their geometric median and is pruned
  first (in-tree: Torch-Pruning's ``FPGMImportance`` measures distances between the element-wise squared
  weights, averaged over the group's layers, which is not the paper's criterion);
* ``"lamp"`` -- layer-adaptive magnitude scores (``LAMPImportance``);
* ``"random"`` -- uniform random scores, seeded.

Unlike GFS no weight is rescaled: the unselected channels are simply removed. To add a criterion, add
an entry to :data:`IMPORTANCES` (a name and a function returning a Torch-Pruning ``Importance``).
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .channels.batches import Batches
from .channels.groups import find_groups, refresh_group
from .checks import check_int
from .errors import InvalidOptionError
from .metrics import measure_model
from .result import LayerRecord, PruneReport, PruneResult

__all__ = ["CRITERIA", "IMPORTANCES", "FilterGeometricMedian", "prune_like"]


def _tp():
    import torch_pruning as tp

    return tp


class FilterGeometricMedian:
    """FPGM's importance of each channel of a group: ``sum_k ||w_j - w_k||_2`` over the filters ``w`` of the
    group's first (root) layer, as ``"l1"`` reads that layer; the smallest are nearest the geometric median."""

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        tp = _tp()
        dep, idxs = group[0].dep, group[0].idxs
        layer = dep.target.module
        filter_handlers = (tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_linear_out_channels,
                           tp.pruner.function.prune_depthwise_conv_out_channels)  # a depthwise filter: (1, k, k)
        if dep.handler in filter_handlers:
            weight = layer.weight.detach()
            if getattr(layer, "transposed", False):
                weight = weight.transpose(0, 1)
            filters = weight[idxs].flatten(1).double()
            return torch.cdist(filters[None], filters[None])[0].sum(0).float()
        raise InvalidOptionError(
            f"criterion 'fpgm' reads the filters of a group's first layer, and this group starts at a "
            f"{type(layer).__name__}, whose output channels are not filters; use 'l1' or 'lamp' for it")


IMPORTANCES: dict[str, Callable] = {
    # the filter-magnitude criterion: L1 norm of the first (root) layer's filters only
    "l1": lambda: _tp().importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first"),
    "bn": lambda: _tp().importance.BNScaleImportance(),
    "taylor": lambda: _tp().importance.TaylorImportance(),
    "fpgm": FilterGeometricMedian,
    "lamp": lambda: _tp().importance.LAMPImportance(),
    "random": lambda: _tp().importance.RandomImportance(),
}
CRITERIA = tuple(IMPORTANCES)
NEEDS_GRADIENTS = ("taylor",)


def prune_like(model: nn.Module, keep: Mapping[str, int], criterion: str, *, data=None, example_inputs=None,
               skip=None, extra_skip=(), seed: int = 0, taylor_batches: int = 4, batch_size: int = 128) -> PruneResult:
    """A copy of ``model`` with ``keep[group]`` channels kept in each named group, chosen by ``criterion``.

    Args:
        model: the dense network (not changed).
        keep: group name (as in :attr:`PruneResult.kept` of a GFS result) -> number of channels to keep;
            groups not named stay whole. Pass ``{name: len(idx) for name, idx in result.kept.items()}`` to
            match a GFS result channel for channel (and so FLOP for FLOP).
        criterion: one of :data:`CRITERIA`.
        data: a DataLoader or (X, y) pair; needed for "taylor", and for the example input when
            ``example_inputs`` is not given.
        skip, extra_skip: as in :func:`greedyprune.prune_model` (use the same values as the GFS run).
        seed: seeds "random" and the Taylor batches.

    Returns:
        A :class:`~greedyprune.result.PruneResult` with ``method=criterion``, the kept channels per group
        and params / multiply-adds before and after.
    """
    if criterion not in IMPORTANCES:
        raise InvalidOptionError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    if criterion in NEEDS_GRADIENTS and data is None:
        raise InvalidOptionError(f"criterion {criterion!r} needs data=(X, y) or a DataLoader to compute gradients")
    if example_inputs is None and data is None:
        raise InvalidOptionError("pass example_inputs (a batch the model accepts) or data")
    start = time.perf_counter()
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    batches = Batches(data, batch_size, seed, device) if data is not None else None
    if example_inputs is None:
        example_inputs = batches.fixed(1)[0]
    example = example_inputs[:1]
    DG, groups = find_groups(model, example, skip, extra_skip=extra_skip)
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        raise InvalidOptionError(
            f"keep names groups the model does not have: {unknown}; its groups are {sorted(by_name)}")
    for name, n in keep.items():
        check_int(f"keep[{name!r}]", n, 1, maximum=by_name[name].channels)
    before = measure_model(model, example)
    if criterion in NEEDS_GRADIENTS:
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for _ in range(taylor_batches):
                x, y = batches.next()
                F.cross_entropy(model(x), y).backward()
    importance = IMPORTANCES[criterion]()
    scores = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in keep:
            g = by_name[name]
            tp_group = DG.get_pruning_group(g.root, g.root_fn, list(range(g.channels)))
            scores[name] = importance(tp_group).detach().float().cpu()
    model.zero_grad(set_to_none=True)
    kept = {}
    for name, n in keep.items():
        g = refresh_group(DG, model, by_name[name])
        order = torch.argsort(-scores[name], stable=True)
        kept[name] = sorted(order[:n].tolist())
        remove = sorted(order[n:].tolist())
        if remove:
            DG.get_pruning_group(g.root, g.root_fn, remove).prune()
    model.eval()
    report = PruneReport.from_measures(before, measure_model(model, example), input_shape=list(example.shape[1:]),
                                       seconds=time.perf_counter() - start)
    layers = [LayerRecord(name=name, units=by_name[name].channels, unit="channels", kept=n) for name, n in keep.items()]
    return PruneResult(model=model, kept=kept, report=report, layers=layers,
                       history=[list(h) for h in DG.pruning_history()], method=criterion)
