"""Budget curves measured on the network's outputs: how far the network's predictions move when one group
alone is cut to a width by the block-reconstruction objective (``prune_model(budget_curves="sensitivity")``).

A group's reconstruction error says how well its readers reproduce their dense outputs, not how much that
error matters downstream: a layer before the classifier and a layer in the stem with the same relative error
move the predictions by very different amounts. Here each group, alone on the dense network, is cut to a few
widths (fractions :data:`SENSITIVITY_FRACTIONS` of its units), the units chosen by the same greedy
selection as :func:`~greedyprune.channels.reconstruct.reconstruct_group` (one selection path per group, one
calibration pass for all groups) and its readers refitted on the first half of the calibration set; the
curve is the mean ``KL(dense || cut)`` of the network's softmax outputs on examples of the second half (a
refit judged on its own examples hides its overfitting: on EfficientNet-Lite0 calibrated on 10 images,
judging it held out took top-1 agreement at 70% of the multiply-adds from 0.66 to 0.81). The budget then spends its
multiply-adds where they buy the least KL, as it does with any loss curve (sensitivity analysis, as in
"Pruning Filters for Efficient ConvNets", with the refit in the loop). Cost: one probe forward per group and
fraction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import count_macs, log_probs, mean_kl  # the KL helpers live in metrics (distillation reads them)
from ..selection.block import select_units
from .downstream import Downstream
from .groups import ChannelGroup
from .reconstruct import CAPTURE_BATCH, accumulate, reader_problem, refit_kept, sub_readers

__all__ = ["SENSITIVITY_FRACTIONS", "SENSITIVITY_MACS", "budget_sensitivity", "log_probs", "mean_kl",
           "per_channel_sensitivity", "probe_size", "sensitivity_curves"]

SENSITIVITY_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)
"""The widths (fractions of a group's units) at which each group's sensitivity is measured."""
SENSITIVITY_MACS = 1.5e12
"""Multiply-adds the probe forwards of all groups may take together (sets the probe's size)."""


def probe_size(macs_per_example: float, groups: int, available: int) -> int:
    """Probe examples: as many as :data:`SENSITIVITY_MACS` allows over every group's and width's forward,
    between 8 and 256, and no more than ``available``."""
    forwards = max(1, groups * len(SENSITIVITY_FRACTIONS))
    n = int(SENSITIVITY_MACS // max(macs_per_example * forwards, 1.0))
    return max(1, min(available, 256, max(8, n)))


def sensitivity_curves(model: nn.Module, groups: list[ChannelGroup], inputs: torch.Tensor,
                       probe: torch.Tensor, ridge: float | None = None,
                       fractions: tuple = SENSITIVITY_FRACTIONS,
                       held_out: bool = True, compensate: str = "mean-var") -> dict[str, list[tuple[int, float]]]:
    """``{group: [(units kept, mean KL(dense || cut) on probe), ...]}``, one point per fraction and
    ``(U, 0.0)``; each group cut alone on the dense ``model`` (restored before returning).

    ``inputs``: the calibration examples of the selection and the refit (cross-validated ridge when
    ``ridge`` is None, as :func:`~greedyprune.channels.reconstruct.reconstruct_group`); ``probe``: the
    examples the outputs are compared on. ``held_out`` (default, when ``inputs`` spans more than one batch of
    16): each width's readers are refitted on the first half of ``inputs`` and the outputs compared on as
    many examples of the second half as ``probe`` holds - a refit measured on its own examples looks better
    than it is, most of all for a reader with few positions (a classifier on 80 pooled images would look
    free to cut)."""
    per_group = {g.name: sub_readers(model, g) for g in groups}
    subs = [s for group_subs in per_group.values() for s in group_subs]
    keys = {(s.name, s.channels.start, s.rows.start): s for s in subs}
    cv = ridge is None and inputs.shape[0] > CAPTURE_BATCH
    folds = inputs.shape[0] > CAPTURE_BATCH
    sums = dict(zip(keys, accumulate(model, list(keys.values()), inputs, None, folds=folds)))
    fold = None
    if folds and held_out:  # refit on the first half, compare the outputs on the second (see above)
        batches = -(-inputs.shape[0] // CAPTURE_BATCH)
        start = -(-batches // 2) * CAPTURE_BATCH
        probe, fold = inputs[start:start + probe.shape[0]], 0
    dense = log_probs(model, probe)
    runners = _downstream(model, probe, [frozenset(s.name for s in per_group[g.name]) for g in groups], dense)
    named = dict(model.named_modules())
    curves = {}
    for group in groups:
        subs = per_group[group.name]
        accs = [sums[(s.name, s.channels.start, s.rows.start)] for s in subs]
        problems = [reader_problem(s, acc, compensate != "none") for s, acc in zip(subs, accs)]
        widths = sorted({max(1, min(group.num_units - 1, round(f * group.num_units))) for f in fractions})
        widths = [w for w in widths if w < group.num_units]
        chosen = select_units(problems, widths[-1]) if widths else None
        points = []
        for units in widths:
            kept = torch.zeros(group.num_units, dtype=torch.bool)
            kept[chosen.order[:units]] = True
            weights, _, biases = refit_kept(model, subs, accs, problems, kept, ridge, cv, fold=fold,
                                            compensate=compensate)
            saved = {n: (named[n].weight.data.clone(), named[n].bias) for n in weights}
            try:
                for n, w in weights.items():
                    named[n].weight.data.copy_(w)
                    if n in biases:
                        named[n].bias = nn.Parameter(biases[n], requires_grad=False)
                layers = frozenset(s.name for s in subs)
                cut = log_probs(model, probe) if runners is None else _log_softmax(
                    [runner.run(layers) for runner in runners])
            finally:
                for n, (w, b) in saved.items():
                    named[n].weight.data.copy_(w)
                    named[n].bias = b
            points.append((units, mean_kl(dense, cut)))
        curves[group.name] = points + [(group.num_units, 0.0)]
    return curves


def _log_softmax(outputs: list[torch.Tensor]) -> torch.Tensor:
    return F.log_softmax(torch.cat(outputs).double().flatten(1), dim=1)


def _downstream(model: nn.Module, probe: torch.Tensor, layer_sets: list[frozenset[str]],
                dense: torch.Tensor) -> list[Downstream] | None:
    """One :class:`~greedyprune.channels.downstream.Downstream` per batch of 64 probe examples, so that each
    width's probe recomputes only what its group's readers change; None (full forwards) for a network
    ``torch.fx`` cannot trace or whose traced outputs differ from its own."""
    try:
        runners = [Downstream(model, probe[i:i + 64], layer_sets) for i in range(0, probe.shape[0], 64)]
        if layer_sets:
            same = _log_softmax([runner.run(layer_sets[0]) for runner in runners])
            if not torch.allclose(same, dense, rtol=1e-4, atol=1e-5):
                return None
        return runners
    except Exception:  # noqa: BLE001 - any tracing failure: the full forwards are always right
        return None


def per_channel_sensitivity(group: ChannelGroup, points: list[tuple[int, float]]) -> list[float]:
    """The loss for k = 1..D channels, linearly interpolated between the measured widths (a step curve
    would look free to cut between two points). Below the narrowest measured width the loss rises four times
    as steeply as over the first measured segment: widths that narrow were not measured, so they cost."""
    per_unit = group.channels // group.num_units
    xs = [units * per_unit for units, _ in points]
    ys = [max(loss, 0.0) for _, loss in points]
    ys = [max(ys[i:]) for i in range(len(ys))]  # non-increasing in the width
    if len(xs) > 1:
        slope = 4 * max((ys[0] - ys[1]) / max(xs[1] - xs[0], 1), 0.0)
    else:
        slope = 0.0
    out = []
    for k in range(1, group.channels + 1):
        if k <= xs[0]:
            out.append(ys[0] + slope * (xs[0] - k) + 1e-6 * (xs[0] - k))
            continue
        i = next(j for j in range(1, len(xs)) if xs[j] >= k)
        t = (k - xs[i - 1]) / (xs[i] - xs[i - 1])
        out.append(ys[i - 1] + t * (ys[i] - ys[i - 1]))
    return out


def budget_sensitivity(model: nn.Module, groups: list[ChannelGroup], inputs: torch.Tensor,
                       ridge: float | None, compensate: str = "mean-var") -> dict[str, tuple[list[float], float]]:
    """The budgets' curves ``{group: (loss with k = 1..D channels, 0.0)}`` from :func:`sensitivity_curves`
    on the calibration ``inputs``, with a probe of :func:`probe_size` examples."""
    probe = inputs[:probe_size(count_macs(model, inputs[:1]), len(groups), inputs.shape[0])]
    curves = sensitivity_curves(model, groups, inputs, probe, ridge, compensate=compensate)
    return {g.name: (per_channel_sensitivity(g, curves[g.name]), 0.0) for g in groups}
