"""The block step shared by encoders and decoders: one prunable block (:class:`Block`) of a layer, and
:func:`prune_block`, which scores its units with a criterion (:mod:`~greedyprune.transformers.criteria`),
removes the unchosen ones and, with ``refit="lstsq"``, re-solves the kept output columns.
:mod:`~greedyprune.transformers.prune` (encoders) and :mod:`~greedyprune.transformers.decoder_prune`
(decoders) both build on it."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..result import LayerRecord
from . import criteria
from .stats import input_stats

__all__ = ["Block", "REFITS", "prune_block"]

REFITS = (None, "lstsq")

@dataclass
class Block:
    """One prunable block of a layer: its output projection ``out`` (whose inputs' statistics decide), the
    rows ``weight_in`` that feed each of its input channels (for the magnitude baseline), channels per unit,
    the ``transform`` from the captured module inputs to ``out``'s inputs (None: they are ``out``'s inputs),
    the in-place ``shrink(keep, kept_columns, new_bias)``, and whether ``out`` may gain a bias it lacks
    (a decoder's, see :mod:`~greedyprune.transformers.decoder`)."""

    out: torch.nn.Linear
    weight_in: torch.Tensor | None
    group: int
    transform: object
    shrink: object
    add_bias: bool = False


def prune_block(result, name, kind, block: Block, xs, masks, n_keep: int, *, method, refit, ridge, replacement,
                 max_steps, generator, plan=None, scores=None) -> None:
    """Select and remove the units of one block (``kind`` "ffn", "heads", ...), recording what was done.

    The criterion registered as ``method`` (:func:`criteria.get_criterion`) chooses the units
    (:meth:`~criteria.Criterion.plan`, given the block's ``scores`` from its ``model_scores`` if any), or
    ``plan(stats)`` when given (query heads kept equally in every key/value group)."""
    t0 = time.perf_counter()
    criterion = criteria.get_criterion(method, decoder=True)
    out, group = block.out, block.group
    weight = out.weight.detach()
    bias = out.bias.detach() if out.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    n = weight.shape[1] // group
    full = criterion.needs_full_stats or refit is not None
    needs_stats = full or criterion.needs_stats or criterion.bias_compensated
    stats = input_stats(xs, masks, full=full, transform=block.transform) if needs_stats else None
    if plan is None:
        plan = criterion.plan(weight, stats, group, n_keep, weight_in=block.weight_in, generator=generator,
                              replacement=replacement, max_steps=max_steps, scores=scores)
    else:
        plan = plan(stats)
    channels = criteria.channels_of(plan.keep, group)
    new_full = weight.to(torch.float64) * plan.scale.repeat_interleave(group).reshape(1, -1)
    bias_delta = plan.bias_delta
    error_before_refit = None
    if refit == "lstsq":
        error_before_refit = criteria.reconstruction_error(weight, stats, new_full, bias_delta)
        kept_cols, new_bias = criteria.refit_lstsq(weight, bias, stats, channels, ridge)
        new_full = torch.zeros_like(new_full)
        new_full[:, channels] = kept_cols
        bias_delta = new_bias - bias.to(torch.float64)
    error = criteria.reconstruction_error(weight, stats, new_full, bias_delta) if full else None
    keeps_bias = out.bias is not None or block.add_bias
    new_bias = None if bias_delta is None or not keeps_bias else bias.to(torch.float64) + bias_delta
    to = dict(dtype=weight.dtype, device=weight.device)
    cols = new_full[:, channels].to(**to)
    new_bias = None if new_bias is None else new_bias.to(**to)
    block.shrink(plan.keep, cols, new_bias)
    result.kept[name] = plan.keep.tolist()
    if plan.counts is not None:
        result.counts[name] = plan.counts.tolist()
    sel = plan.selection
    result.layers.append(LayerRecord(name=name, units=n, kept=int(plan.keep.numel()),
                                     steps=None if sel is None else sel.k, loss=error,
                                     seconds=time.perf_counter() - t0,
                                     extra={"kind": kind, "loss_before_refit": error_before_refit, "selection": sel}))
