"""Layer-wise greedy forward selection of channels: :func:`prune_model`.

The method of "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection", as used in
Appendix E of "How much pre-training is enough to discover a good subnetwork?". Groups are pruned one
at a time, from input to output. For a group with D channels a multiset S of channels grows greedily;
while searching, channel j is seen by the layers that read the group scaled by ``D * count_j / |S|``
(0 when not chosen), and each step adds the candidate channel that gives the lowest cross-entropy of
the *whole* network on a mini-batch, all other layers fixed, until the stopping rule holds. The group is
then folded and physically removed (``masks.py``), checked against the masked network, its batch-norm
statistics re-estimated, and the network optionally fine-tuned briefly, before the next group.

Batch norms. By default (``bn="batch"``) every candidate is scored with the batch norms normalising by
the statistics of what they see - as if the network had been recalibrated for that candidate - and the
running statistics are re-estimated on a fixed calibration subset after every group and at the end
(``recalibrate``). Scoring against the dense network's stale statistics instead (``bn="running"``, no
recalibration, the public implementation's way) makes the search optimise a network that is not the one
returned: on an MNIST ResNet-20 at half its multiply-adds, recalibrating such a result afterwards
*lowered* its accuracy (0.871 -> 0.754).

Stopping rules that compare with the unpruned group (``epsilon``, ``accuracy_tolerance``) and the loss
curves of adaptive budgets are measured on a fixed held-out subset of the training data (``holdout``
examples), not on the step's noisy batch.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import replace
from typing import Iterable

import torch
from torch import nn

from ..errors import InvalidOptionError, InvalidTypeError
from ..checks import as_device, non_finite_weights
from ..metrics import measure_model, model_device_dtype
from ..options import with_overrides
from ..result import LayerRecord, PruneReport, PruneResult
from ..selection.engine import run_selection
from ..selection.scorers import ScorerBase
from .batches import Batches, finetune, split_data
from .bn import exact_math, has_batch_norm, recalibrate_bn
from .evaluators import (CPU_STACK_ELEMENTS, GPU_STACK_ELEMENTS, FastEvaluator, ReferenceEvaluator, checked,
                         step_rows, trace)
from .groups import ChannelGroup, UnsupportedLayerError, find_groups, refresh_group
from .layout import channels_last_for_run, restore_layout, to_layout
from .masks import apply_masks, fold_and_remove, group_scales
from .options import BN_MODES, EVALUATORS, OBJECTIVES, PruneOptions
from .budget import per_channel
from .local import local_curves, local_group
from .objectives import (calibration_size, dense_targets, prefix_inputs, recalibrate_if_closer, reconstruct_step,
                         reconstructable, resolve_objective)
from .prefix import PrefixInputs
from .cost import AUTO_STEPS, MAX_SEARCH_BATCH, SearchPlan, plan_search
from .reconstruct import DenseTargets, reconstruction_curves
from .sensitivity import budget_sensitivity, log_probs
from .preflight import check_model_accepts, check_train_mode, preflight
from .rules import PlanContext, Step, StoppingRule, rule_from_options

__all__ = ["BN_MODES", "EVALUATORS", "OBJECTIVES", "NetworkScorer", "PruneOptions", "SearchOptions",
           "prune_model"]

RECALIBRATE_EACH_GROUP = False
DEFAULT_RECALIBRATE = 512
"""Examples the batch-norm statistics are re-estimated on by default (objectives other than "local")."""
PROBE_EXAMPLES = 64
"""Calibration examples on which ``recalibrate=None`` re-estimates the statistics and compares the outputs with
and without them: evenly spaced through the calibration set (which may list the crops of one image together).
Four forwards over them (before: the first 256; on EfficientNet-Lite0 with 160 calibration crops both give the
same choice and the same pruned network at 50% and 70% of the multiply-adds; there the comparison took 16 s of
a 162 s run with 160 examples)."""
SearchOptions = PruneOptions
"""The former name of :class:`PruneOptions` (the search reads the resolved copy, ``options.resolved(...)``)."""


class _Search:
    """Everything one pruning run shares: the model, its graph, the data subsets, the options."""

    def __init__(self, model, DG, graph, batches: Batches, options: PruneOptions, split, device,
                 calibration: torch.Tensor | None, holdout: tuple | None, check_x: torch.Tensor):
        self.model, self.DG, self.graph, self.batches = model, DG, graph, batches
        self.options, self.split, self.device = options, split, device
        self.calibration, self.holdout, self.check_x = calibration, holdout, check_x
        self.local_inputs: torch.Tensor | None = None
        self.dense: DenseTargets | None = None
        self.prefix: PrefixInputs | None = None
        self.plan = SearchPlan(None, AUTO_STEPS, 0.0, 0.0)  # the network objective's, set once groups are known

    def evaluator(self, group: ChannelGroup):
        opts = self.options
        if self.graph is not None:
            try:
                return FastEvaluator(self.model, self.graph, group, opts.stack_elements, bn=opts.bn)
            except RuntimeError as exc:
                if opts.evaluator == "fast":
                    raise
                warnings.warn(f"group {group.name!r}: fast search unavailable ({exc}); using the reference search",
                              stacklevel=3)
        return ReferenceEvaluator(self.model, group, bn=opts.bn)

    def recalibrate(self) -> None:
        if self.calibration is not None:
            recalibrate_bn(self.model, self.calibration, self.batches.batch_size)


def prune_model(
    model: nn.Module,
    data,
    *,
    options: PruneOptions | None = None,
    rule: StoppingRule | None = None,
    device: str | torch.device | None = None,
    skip: Iterable | None = None,
    extra_skip: Iterable = (),
    inplace: bool = False,
    progress: bool = False,
    distributed: bool = False,
    process_group=None,
    **overrides,
) -> PruneResult:
    """Prune the channels of a deep network by layer-wise greedy forward selection.

    ``prune_model(model, data, options=PruneOptions(keep_ratio=0.5, seed=1))``, or the same options as keywords,
    ``prune_model(model, data, keep_ratio=0.5, seed=1)``; keywords given with ``options`` replace its fields.

    Args:
        model: the network (not changed unless ``inplace``). Anything Torch-Pruning can trace; the
            fast search needs ``torch.fx``-traceable models and falls back to the reference search.
        data: a DataLoader (or any iterable of ``(inputs, labels)`` batches, cycled) or an ``(X, y)``
            pair of tensors (X already shaped as the model's input, y integer labels). Inputs must be finite.
        options: a :class:`~greedyprune.channels.options.PruneOptions` (default: its defaults): the stopping
            rule's keyword shortcut (``epsilon``, ``accuracy_tolerance`` - the default rule, 0.02 -,
            ``keep_ratio``, ``flops_target``, ``params_target``, ``uniform``) and how groups are searched
            (``candidates``, ``objective``, ``bn``, ``recalibrate``, ``step``, ...); ``help(PruneOptions)``
            describes each.
        **overrides: any field of :class:`PruneOptions` as a keyword (an unknown name raises ``TypeError``).
        rule: a stopping rule object (:mod:`greedyprune.channels.rules`) instead of a keyword shortcut.
        device: where to search (default: the model's device).
        skip: layers whose groups stay whole; None = the classifier, the input layer when its outputs
            are a group of their own (a stem that writes a residual stream is pruned with the stream),
            and ``model.greedyprune_skip_layers()``. ``extra_skip`` adds to it.
        inplace: prune ``model`` itself instead of a deep copy.
        progress: show a progress bar over groups.
        distributed: split each step's candidates across the ranks of the initialised
            ``torch.distributed`` process group (``process_group``, default the world). Every rank must
            call with the same model, data and options; every rank returns the same pruned model as a
            single process would.

    Returns:
        A :class:`~greedyprune.result.PruneResult`: the physically smaller ``model``, ``kept`` and
        ``counts`` per group, one record per group in ``layers``, a before/after ``report`` (a
        :class:`~greedyprune.result.PruneReport`: parameters, multiply-adds, loss and accuracy on
        ``eval_examples``, evaluated in eval mode, after recalibration when ``recalibrate``; the rule, ``bn``,
        ``recalibrated``, ``holdout`` and ``step_batch`` in its ``extra``) and the replayable pruning ``history``.
    """
    options = with_overrides(PruneOptions, options, overrides, "prune_model")
    stop = rule_from_options(rule, uniform=options.uniform, epsilon=options.epsilon,
                             accuracy_tolerance=options.accuracy_tolerance, keep_ratio=options.keep_ratio,
                             flops_target=options.flops_target, params_target=options.params_target)
    options = options.validate()
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    start_time = time.perf_counter()
    split = None
    if distributed:
        from ..distributed.parallel import CandidateSplit

        split = CandidateSplit(process_group)
    if not inplace:
        model = copy.deepcopy(model)
    device = model_device_dtype(model)[0] if device is None else as_device(device)
    model.to(device).eval()
    bad = non_finite_weights(model)
    if bad:
        raise InvalidOptionError(
            f"the model's weights hold NaN or infinite values ({bad}), so no subnetwork of it computes "
            f"anything; it probably comes from a training run that diverged: prune a checkpoint from "
            f"before that (or train again with a lower learning rate)")
    objective = resolve_objective(options.objective, stop)
    auto_recalibrate = options.recalibrate is None and objective == "local"
    options = options.resolved(  # the block reconstruction keeps the dense statistics right: no recalibration
        objective=objective,
        bn=("batch" if has_batch_norm(model) else "running") if options.bn == "auto" else options.bn,
        recalibrate=(0 if objective == "local" else DEFAULT_RECALIBRATE) if options.recalibrate is None
        else options.recalibrate,
        stack_elements=options.stack_elements or (GPU_STACK_ELEMENTS if device.type == "cuda"
                                                  else CPU_STACK_ELEMENTS))
    local = options.objective in ("local", "local-gfs")
    unsupported = options.unsupported
    needs_holdout = stop.needs_unpruned or (stop.needs_curves and not local
                                            and options.budget_curves == "network")
    batches, holdout_set = split_data(data, options.holdout if needs_holdout else 0,
                                      options.batch_size or MAX_SEARCH_BATCH, options.seed, device)
    eval_x, eval_y = batches.fixed(options.eval_examples)
    check_model_accepts(model, eval_x, eval_y)
    example = eval_x[:1]
    converted, restore = channels_last_for_run(model, eval_x[:2], options.memory_format, device)
    try:
        check_train_mode(model, eval_x[:2])
        DG, groups = find_groups(model, example, skip, extra_skip=extra_skip, unsupported=unsupported)
        if options.check:
            groups = preflight(model, groups, example, skip, extra_skip, unsupported)
        if options.objective == "local":
            groups = reconstructable(model, groups, unsupported)
        if not groups:
            raise InvalidOptionError(
                "no prunable channel group: every group holds a skipped layer; pass skip=[] or fewer layers")
        before = _measure(model, example, eval_x, eval_y)
        calibration = None
        if options.recalibrate and has_batch_norm(model):
            calibration = batches.fixed(options.recalibrate)[0]
        search = _Search(model, DG, None if local else _trace_for(model, options.evaluator), batches, options, split,
                         device, calibration, holdout_set, eval_x[:8])
        if local or (stop.needs_curves and options.budget_curves in ("local", "sensitivity")):
            search.local_inputs = batches.fixed(calibration_size(options.calibration, before["macs"]))[0]
        if options.objective == "local":
            search.dense = dense_targets(model, groups, search.local_inputs)
        auto_recalibrate = auto_recalibrate and has_batch_norm(model)
        if auto_recalibrate:
            n = search.local_inputs.shape[0]
            probe = search.local_inputs[torch.linspace(0, n - 1, min(n, PROBE_EXAMPLES)).round().long()]
            dense_probe = log_probs(model, probe)
        stop.plan(PlanContext(model, groups, example, DG, curves=lambda: loss_curves(search, groups)))
        if options.objective == "network":
            search.plan = plan = plan_search(model, groups, example, stop.targets, options.step, options.candidates,
                                             options.batch_size, batches.size)
            if plan.macs > plan.budget:
                warnings.warn(f"the network objective's search is estimated at {plan.macs / 1e12:.1f}e12 multiply-adds "
                              f"(the default budget: {plan.budget / 1e12:.1f}e12), {plan.batch or options.batch_size} "
                              f"examples a step: at ~1e10 a second on a CPU core, ~{plan.macs / 6e11:.0f} min. Fewer "
                              f"candidates or a larger step= shorten it; objective='local' takes no candidate forwards",
                              stacklevel=2)

        if options.objective == "local":
            search.prefix = prefix_inputs(model, groups, search.local_inputs)
        kept, counts_out, records = {}, {}, []
        bar = groups
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(groups, desc="pruning groups", unit="group", leave=False)
        for gi, group in enumerate(bar):
            t0 = time.perf_counter()
            group = refresh_group(DG, model, group)
            if options.objective == "local":
                counts, record, (weights, biases) = reconstruct_step(search, group, stop)
                kept[group.name] = fold_and_remove(DG, model, group, counts, reader_weights=weights,
                                                   reader_biases=biases)
                if search.dense is not None:
                    search.dense.removed(group, kept[group.name], model)
            else:
                if options.objective == "local-gfs":
                    counts, record = local_group(search, group, stop)
                else:
                    counts, record = search_group(search, group, gi, stop)
                kept[group.name] = _fold_checked(search, group, counts)
            if converted:  # the removal wrote the group's layers anew, in the default layout
                to_layout(model, torch.channels_last)
            counts_out[group.name] = counts.tolist()
            if options.objective != "local" or RECALIBRATE_EACH_GROUP:  # else recalibrated at the end
                search.recalibrate()
            if options.finetune_steps:  # see layout.py: backward passes in the default layout, whoever chose
                restore_layout(model)
            finetune(model, batches, options.finetune_steps, options.finetune_lr, options.finetune_weight_decay)
            if converted and options.finetune_steps:
                to_layout(model, torch.channels_last)
            record.update(kept=len(kept[group.name]), seconds=time.perf_counter() - t0)
            records.append(record)
            if progress:
                bar.set_postfix(group=group.name, kept=f"{len(kept[group.name])}/{group.channels}")
        search.recalibrate()
        recalibrated = calibration is not None
        if auto_recalibrate:
            recalibrated = recalibrate_if_closer(model, probe, dense_probe, batches.batch_size)
        after = _measure(model, example, eval_x, eval_y)
        report = PruneReport.from_measures(before, after, eval_examples=int(eval_x.shape[0]),
                                           input_shape=list(example.shape[1:]), rule=stop.name, value=stop.value,
                                           bn=options.bn, recalibrated=recalibrated,
                                           holdout=0 if holdout_set is None else int(holdout_set[0].shape[0]),
                                           step_batch=search.plan.batch or options.batch_size,
                                           seconds=time.perf_counter() - start_time)
        return PruneResult(model=model, kept=kept, counts=counts_out, report=report, layers=records,
                           history=[list(h) for h in DG.pruning_history()], method="gfs")
    finally:
        if restore:  # the pruned model in the layout it came in
            restore_layout(model)


def search_group(search: _Search, group: ChannelGroup, index: int, stop: StoppingRule | None,
                 curve: list | None = None, opts: PruneOptions | None = None) -> tuple[torch.Tensor, LayerRecord]:
    """Grow one group's multiset until ``stop`` says so (``None``: to its full width). Returns
    ``(per-channel counts, record)``. With ``curve`` (a list), ``(channels kept, held-out loss, unpruned
    held-out loss)`` is appended after every step. Channels tied in units (:attr:`ChannelGroup.units`) are
    selected a unit at a time. ``opts``: the run's resolved options unless given (a loss curve's).

    Algorithm 1's loop is the engine's (:func:`~greedyprune.selection.engine.run_selection`); what is
    particular to a deep network - candidates scored by network forwards on a fresh batch, several units
    a step, the rule's per-step measurements - is :class:`NetworkScorer`'s."""
    opts = search.options if opts is None else opts
    scorer = NetworkScorer(search, group, stop, curve, opts)
    U = group.num_units
    rule = None if stop is None else lambda steps, distinct, loss: stop.stop(scorer.last)
    with torch.inference_mode():
        run_selection(scorer, U, opts.max_steps if opts.max_steps is not None else (2 * U if opts.replacement else U),
                      replacement=opts.replacement, candidates=opts.candidates, seed=opts.seed * 1_000_003 + index,
                      duplicates={}, stop=rule)
    last = scorer.last
    return group.channel_counts(scorer.counts), LayerRecord(
        name=group.name, units=group.channels, unit="channels", steps=last.step,
        rule=stop.name if stop is not None else "curve", loss=last.loss, accuracy=last.accuracy,
        evaluator="fast" if isinstance(scorer.evaluator, FastEvaluator) else "reference")


class NetworkScorer(ScorerBase):
    """The deep search's scorer for the engine: the rows are a group's units, a candidate's score is the
    cross-entropy of the whole network on the step's batch with the group's readers seeing channel j scaled
    by ``D * n'_j / |S'|`` (``n'`` the counts with the candidate added, ``|S'| = |S| + 1``), and a step adds
    the ``step`` best candidates (one by default). After each step :attr:`last` holds what the stopping rule
    reads (:class:`~greedyprune.channels.rules.Step`), measured on the held-out subset when there is one."""

    def __init__(self, search: _Search, group: ChannelGroup, stop: StoppingRule | None, curve: list | None,
                 opts: PruneOptions):
        self.search, self.group, self.rule, self.curve, self.opts = search, group, stop, curve, opts
        self.device = search.device
        self.units = None if group.units is None else group.units.to(search.device)
        self.counts = torch.zeros(group.num_units, dtype=torch.long)
        self.evaluator = search.evaluator(group)
        self.held = None
        if search.holdout is not None and (curve is not None or (stop is not None and stop.needs_unpruned)):
            self.held = search.evaluator(group)
            self.held.prepare(search.holdout[0])
        self.unpruned = torch.ones(1, group.channels, device=search.device)
        self.held_unpruned = None
        self.last = Step(group.name, group.channels, 0, 0, float("nan"), float("nan"))
        self.y = self.best_loss = self.best_accuracy = None

    def _widen(self, rows: torch.Tensor) -> torch.Tensor:  # (K, U) unit scales -> (K, D) channel scales
        return rows if self.units is None else rows[:, self.units]

    def pick(self, k: int, available: torch.Tensor | None, rows: torch.Tensor | None) -> list[int]:
        search, group, opts = self.search, self.group, self.opts
        cand = rows if rows is not None else (torch.arange(group.num_units) if available is None
                                              else torch.nonzero(available).flatten())
        x, y = search.batches.next()
        x, y = x[:search.plan.batch], y[:search.plan.batch]
        delta = group.num_units / (int(self.counts.sum()) + 1)
        base = (self.counts.to(torch.float32) * delta).to(self.device)
        if k == 0 and isinstance(self.evaluator, FastEvaluator):
            self.evaluator = checked(self.evaluator, search.model, group, x, y,
                                     self._widen(step_rows(base, cand[:2], delta)), strict=opts.evaluator == "fast")
            if self.held is not None and not isinstance(self.evaluator, FastEvaluator):
                self.held = ReferenceEvaluator(search.model, group, bn=opts.bn)
                self.held.prepare(search.holdout[0])
        self.evaluator.prepare(x)
        self.y = y

        def score(share: torch.Tensor) -> torch.Tensor:
            return torch.stack(self.evaluator.evaluate(self._widen(step_rows(base, share, delta)), y))

        scores = score(cand) if search.split is None else search.split.evaluate(score, cand, 2, self.device)
        losses, accs = scores[0].cpu(), scores[1].cpu()
        j = int(torch.argmin(losses))
        self.best_loss, self.best_accuracy = float(losses[j]), float(accs[j])
        take = _step_size(opts.step, group, self.counts, self.rule, len(cand), search.plan.auto_steps)
        return [int(cand[i]) for i in torch.argsort(losses, stable=True)[:take].tolist()]  # the best, then the next

    def row(self, i: int) -> int:
        return i

    def add(self, row: int, i: int) -> None:
        self.counts[i] += 1

    def loss(self, steps: int) -> float:
        """Called once a step's units are added: measures :attr:`last` (and extends the curve)."""
        group, search = self.group, self.search
        kept = int((group.channel_counts(self.counts) > 0).sum())
        last = self.last = Step(group.name, group.channels, steps, kept, self.best_loss, self.best_accuracy)
        if self.held is not None:
            hy = search.holdout[1]
            if self.held_unpruned is None:
                self.held_unpruned = [float(v[0]) for v in self.held.evaluate(self.unpruned, hy)]
            loss, acc = self.held.evaluate(self._widen(group_scales(self.counts).to(self.device).reshape(1, -1)), hy)
            last.loss, last.accuracy = float(loss[0]), float(acc[0])
            last.unpruned_loss, last.unpruned_accuracy = self.held_unpruned
        elif self.rule is not None and self.rule.needs_unpruned:
            full_loss, full_acc = self.evaluator.evaluate(self.unpruned, self.y)
            last.unpruned_loss, last.unpruned_accuracy = float(full_loss[0]), float(full_acc[0])
        if self.curve is not None:
            self.curve.append((last.kept, last.loss, self.held_unpruned[0] if self.held_unpruned else float("nan")))
        return last.loss


def _step_size(step: int, group: ChannelGroup, counts: torch.Tensor, stop, candidates: int, auto_steps: int) -> int:
    """Units to add this step: ``step``, but no more than the candidates scored nor than a fixed target of
    channels (a keep-count rule) still allows."""
    target = (stop.targets or {}).get(group.name) if stop is not None else None
    if step == "auto":  # about auto_steps steps to a fixed width; one channel at a time otherwise
        per_unit = group.channels // group.num_units
        step = 1 if target is None else max(1, -(-target // (per_unit * auto_steps)))
    take = min(step, candidates)
    if target is not None and take > 1:
        per_unit = group.channels // group.num_units
        kept = int((group.channel_counts(counts) > 0).sum())
        take = max(1, min(take, -(-(target - kept) // per_unit)))
    return take


def loss_curves(search: _Search, groups: list[ChannelGroup]) -> dict[str, tuple[list[float], float]]:
    """Every group's loss curve on the dense network, one group at a time (the others unpruned):
    ``{group: (loss with k = 1..D channels, loss unpruned)}``.

    ``budget_curves="sensitivity"``: the network's output KL with the group cut by the block reconstruction
    (:func:`~greedyprune.channels.sensitivity.budget_sensitivity`); ``"local"`` (or the local objective with
    ``"network"``): the readers' relative reconstruction error; ``"network"`` with the network objective: the
    held-out cross-entropy of the group grown about ``curve_points`` units per point. ``local-gfs`` has its
    own curves. Where the reconstruction cannot read a group, the network objective falls back to its own.
    """
    options = search.options
    if options.objective == "local-gfs":
        return local_curves(search, groups)
    if options.objective == "network" and options.budget_curves == "network":
        return _network_curves(search, groups)
    try:
        if options.budget_curves == "sensitivity":
            return budget_sensitivity(search.model, groups, search.local_inputs, options.refit_ridge,
                                      options.compensate)
        curves = reconstruction_curves(search.model, groups, search.local_inputs, options.compensate)
    except UnsupportedLayerError as exc:
        if options.objective == "local" or search.holdout is None:
            raise
        warnings.warn(f"budget curves measured by the network objective: {exc}", stacklevel=3)
        return _network_curves(search, groups)
    out = {}
    for group in groups:
        per_unit = group.channels // group.num_units
        points = [((k + 1) * per_unit, err, 0.0) for k, err in enumerate(curves[group.name][0])]
        out[group.name] = (per_channel(group, points), 0.0)
    return out


def _network_curves(search: _Search, groups: list[ChannelGroup]) -> dict[str, tuple[list[float], float]]:
    if search.holdout is None:
        raise InvalidOptionError(
            "adaptive budgets measure each group's loss curve on a held-out subset: pass holdout > 0, "
            "or uniform=True")
    curves = {}
    for gi, group in enumerate(groups):
        curve: list = []
        grow = replace(search.options, replacement=False, max_steps=None,
                       step=max(1, -(-group.num_units // search.options.curve_points)))
        search_group(search, refresh_group(search.DG, search.model, group), gi, None, curve, grow)
        curves[group.name] = (per_channel(group, curve), curve[-1][2] if curve else float("nan"))
    return curves


def _fold_checked(search: _Search, group: ChannelGroup, counts: torch.Tensor) -> list[int]:
    """Fold and remove the group; with ``check``, the pruned network must compute what the masked one did."""
    model, x = search.model, search.check_x
    masked = weights = None
    if search.options.refit == "lstsq":
        from ..selection.block import DEFAULT_RIDGE
        from .refit import refit_readers

        inputs = search.calibration if search.calibration is not None else search.batches.fixed(256)[0]
        weights = refit_readers(model, group, counts, group_scales(counts).to(search.device), inputs,
                                DEFAULT_RIDGE if search.options.refit_ridge is None else search.options.refit_ridge)
    elif search.options.check:
        with torch.no_grad(), exact_math(), apply_masks(model, {group: group_scales(counts).to(search.device)}):
            masked = model(x)
    kept = fold_and_remove(search.DG, model, group, counts, reader_weights=weights)
    if masked is not None:
        with torch.no_grad(), exact_math():
            pruned = model(x)
        scale = float(masked.abs().max()) + 1e-6
        if pruned.shape != masked.shape or float((pruned - masked).abs().max()) > 1e-3 * scale + 1e-4:
            diff = "shapes differ" if pruned.shape != masked.shape else \
                f"max difference {float((pruned - masked).abs().max()):.3g}"
            raise UnsupportedLayerError(
                f"group {group.name!r}: the physically pruned network differs from the masked network the search "
                f"scored ({diff}); a layer in this group ({', '.join(group.writers + [r[0] for r in group.readers])}) "
                f"is not pruned exactly by Torch-Pruning. Leave the group whole with skip=[...] naming its writers")
    return kept


def _measure(model: nn.Module, example: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    measured = measure_model(model, example, x, y, "cross_entropy", batch_size=512)
    model.eval()
    return measured


def _trace_for(model: nn.Module, evaluator: str):
    if evaluator == "reference":
        return None
    try:
        return trace(model)
    except Exception as exc:  # noqa: BLE001
        if evaluator == "fast":
            raise InvalidOptionError(f"evaluator='fast' needs a torch.fx-traceable model, and tracing failed "
                                     f"({type(exc).__name__}: {exc}); use evaluator='reference'") from exc
        warnings.warn(f"torch.fx could not trace the model ({type(exc).__name__}); using the slower reference "
                      f"search (one full forward per candidate)", stacklevel=3)
        return None
