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
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..errors import InvalidOptionError
from ..checks import as_device, check_choice, check_int, check_number, non_finite_weights
from ..metrics import count_macs, model_device_dtype
from ..result import PruneResult
from ..selection import draw_candidates
from ..training.loop import evaluate
from .batches import Batches, finetune, split_data
from .bn import exact_math, has_batch_norm, recalibrate_bn
from .evaluators import (CPU_STACK_ELEMENTS, GPU_STACK_ELEMENTS, FastEvaluator, ReferenceEvaluator, checked,
                         step_rows, trace)
from .groups import ChannelGroup, UnsupportedLayerError, find_groups, refresh_group
from .masks import apply_masks, fold_and_remove, group_scales
from .budget import per_channel
from .local import local_curves, local_group
from .objectives import (calibration_size, dense_targets, recalibrate_if_closer, reconstruct_step, reconstructable,
                         resolve_objective)
from .cost import AUTO_STEPS, MAX_SEARCH_BATCH, SearchPlan, plan_search
from .reconstruct import DenseTargets, reconstruction_curves
from .sensitivity import budget_sensitivity, log_probs
from .preflight import check_model_accepts, check_train_mode, preflight
from .rules import PlanContext, Step, StoppingRule, rule_from_options

__all__ = ["BN_MODES", "METHODS", "OBJECTIVES", "SearchOptions", "prune_model"]

METHODS = ("auto", "fast", "reference")
OBJECTIVES = ("auto", "network", "local", "local-gfs")
RECALIBRATE_EACH_GROUP = False
DEFAULT_RECALIBRATE = 512
"""Examples the batch-norm statistics are re-estimated on by default (objectives other than "local")."""
PROBE_EXAMPLES = 256
"""Calibration examples on which ``recalibrate=None`` compares the outputs with and without re-estimated statistics."""
BN_MODES = ("auto", "batch", "running")


@dataclass
class SearchOptions:
    """How each group is searched (see :func:`prune_model` for the meaning of each field)."""

    candidates: int | None = 50
    replacement: bool = False
    batch_size: int | None = None
    max_steps: int | None = None
    seed: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    finetune_weight_decay: float = 5e-4
    method: str = "auto"
    eval_examples: int = 1024
    stack_elements: int | None = None
    bn: str = "auto"
    recalibrate: int | None = None
    holdout: int | None = None
    check: bool = True
    step: int | str = "auto"
    curve_points: int = 32
    refit: str | None = None
    refit_ridge: float | None = None
    objective: str = "auto"
    calibration: int | None = None
    budget_curves: str = "sensitivity"

    def validate(self) -> None:
        self.candidates = check_int("candidates", self.candidates, 1, allow_none=True)
        if not isinstance(self.replacement, bool):
            raise TypeError(f"replacement must be True or False, got {self.replacement!r}")
        self.batch_size = check_int("batch_size", self.batch_size, 1, allow_none=True)
        self.max_steps = check_int("max_steps", self.max_steps, 1, allow_none=True)
        self.seed = check_int("seed", self.seed, 0)
        self.finetune_steps = check_int("finetune_steps", self.finetune_steps, 0)
        self.finetune_lr = check_number("finetune_lr", self.finetune_lr, low=0, low_open=True)
        self.finetune_weight_decay = check_number("finetune_weight_decay", self.finetune_weight_decay, low=0)
        check_choice("method", self.method, METHODS)
        check_choice("bn", self.bn, BN_MODES)
        self.eval_examples = check_int("eval_examples", self.eval_examples, 1)
        self.stack_elements = check_int("stack_elements", self.stack_elements, 1, allow_none=True)
        self.recalibrate = check_int("recalibrate", self.recalibrate, 0, allow_none=True)
        self.holdout = check_int("holdout", self.holdout, 0, allow_none=True)
        if self.step != "auto":
            self.step = check_int("step", self.step, 1)
        check_choice("budget_curves", self.budget_curves, ("local", "network", "sensitivity"))
        self.curve_points = check_int("curve_points", self.curve_points, 2)
        if self.refit is not None:
            check_choice("refit", self.refit, ("lstsq",))
        if self.refit_ridge is not None:
            self.refit_ridge = check_number("refit_ridge", self.refit_ridge, low=0)
        check_choice("objective", self.objective, OBJECTIVES)
        self.calibration = check_int("calibration", self.calibration, 1, allow_none=True)
        if not isinstance(self.check, bool):
            raise TypeError(f"check must be True or False, got {self.check!r}")


class _Search:
    """Everything one pruning run shares: the model, its graph, the data subsets, the options."""

    def __init__(self, model, DG, graph, batches: Batches, options: SearchOptions, split, device,
                 calibration: torch.Tensor | None, holdout: tuple | None, check_x: torch.Tensor):
        self.model, self.DG, self.graph, self.batches = model, DG, graph, batches
        self.options, self.split, self.device = options, split, device
        self.calibration, self.holdout, self.check_x = calibration, holdout, check_x
        self.local_inputs: torch.Tensor | None = None
        self.dense: DenseTargets | None = None
        self.plan = SearchPlan(None, AUTO_STEPS, 0.0, 0.0)  # the network objective's, set once groups are known

    def evaluator(self, group: ChannelGroup):
        opts = self.options
        if self.graph is not None:
            try:
                return FastEvaluator(self.model, self.graph, group, opts.stack_elements, bn=opts.bn)
            except RuntimeError as exc:
                if opts.method == "fast":
                    raise
                warnings.warn(f"group {group.name!r}: fast search unavailable ({exc}); using the reference search",
                              stacklevel=3)
        return ReferenceEvaluator(self.model, group, bn=opts.bn)

    def recalibrate(self) -> None:
        if self.calibration is not None:
            recalibrate_bn(self.model, self.calibration, self.options.batch_size or MAX_SEARCH_BATCH)


def prune_model(
    model: nn.Module,
    data,
    *,
    rule: StoppingRule | None = None,
    epsilon: float | None = None,
    accuracy_tolerance: float | None = None,
    keep_ratio: float | None = None,
    flops_target: float | None = None,
    params_target: float | None = None,
    uniform: bool = False,
    candidates: int | None = 50,
    replacement: bool = False,
    batch_size: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    skip: Iterable | None = None,
    extra_skip: Iterable = (),
    bn: str = "auto",
    recalibrate: int | None = None,
    holdout: int | None = None,
    finetune_steps: int = 0,
    finetune_lr: float = 0.01,
    finetune_weight_decay: float = 5e-4,
    method: str = "auto",
    eval_examples: int = 1024,
    stack_elements: int | None = None,
    check: bool = True,
    unsupported: str = "error",
    step: int | str = "auto",
    curve_points: int = 32,
    refit: str | None = None,
    refit_ridge: float | None = None,
    objective: str = "auto",
    calibration: int | None = None,
    budget_curves: str = "sensitivity",
    inplace: bool = False,
    progress: bool = False,
    distributed: bool = False,
    process_group=None,
) -> PruneResult:
    """Prune the channels of a deep network by layer-wise greedy forward selection.

    Args:
        model: the network (not changed unless ``inplace``). Anything Torch-Pruning can trace; the
            fast search needs ``torch.fx``-traceable models and falls back to the reference search.
        data: a DataLoader (or any iterable of ``(inputs, labels)`` batches, cycled) or an ``(X, y)``
            pair of tensors (X already shaped as the model's input, y integer labels). Inputs must be finite.
        rule: a stopping rule object (:mod:`greedyprune.channels.rules`), or one keyword shortcut:
        epsilon: stop a group when its held-out loss is within this relative gap of the loss with the
            group unpruned: ``(loss_S - loss_full) <= epsilon * loss_full``.
        accuracy_tolerance: stop when held-out top-1 accuracy is at least ``(1 - tolerance)`` x the
            unpruned accuracy (the public implementation uses 0.02). The default rule when none is given.
        keep_ratio: keep this fraction of each group's channels (at least one).
        flops_target, params_target: keep this fraction (0, 1) of the dense network's multiply-adds or
            parameters. By default each group's width follows its own loss curve (see
            :class:`~greedyprune.channels.rules.Budget`); ``uniform=True`` keeps the same fraction in every
            group instead.
        candidates: channels evaluated per step (a seeded random subset), or None for all.
        replacement: allow a channel to be chosen more than once (its scale grows).
        batch_size: examples each greedy step of the network objective scores its candidates on. None
            (default): up to 128, fewer (not under 16) when the search's estimated multiply-adds would
            pass a budget (:mod:`~greedyprune.channels.cost`; ``report["step_batch"]`` says which).
        max_steps: cap on steps per group (default: D without replacement, 2 D with).
        seed: seeds the candidate subsets, the batches and the held-out / calibration subsets.
        device: where to search (default: the model's device).
        skip: layers whose groups stay whole; None = the classifier, the input layer when its outputs
            are a group of their own (a stem that writes a residual stream is pruned with the stream),
            and ``model.greedyprune_skip_layers()``. ``extra_skip`` adds to it.
        bn: "batch" (candidates scored with batch-statistics batch norms), "running" (with the stored
            statistics), or "auto" (batch when the model has batch norms).
        recalibrate: examples of the calibration subset the batch-norm statistics are re-estimated on
            after every group and at the end (the local objective: at the end only); 0 = never. None
            (default): 512 with the network objectives; with the local objective the dense statistics are
            kept (each reader reproduces its dense outputs, so they stay right), unless statistics
            re-estimated on the calibration examples bring the outputs there closer to the dense network's
            (:func:`~greedyprune.channels.objectives.recalibrate_if_closer`: a tight budget's large errors).
        holdout: examples of the fixed held-out subset on which the rules that compare with the unpruned
            group and the loss curves of adaptive budgets are measured; 0 = the step's batch; None (default)
            = 512, or a quarter of a smaller data set. From an (X, y) pair they are set aside (not used for
            the search); from a loader they are its first examples. Unused by the other rules.
        finetune_steps, finetune_lr, finetune_weight_decay: SGD steps (momentum 0.9) after each group; 0 =
            none. The public implementation uses about 0.1 epoch at lr 2.5e-3 and weight decay 4e-5.
        method: "fast" (stacked downstream-only evaluation), "reference" (full masked forward per
            candidate), or "auto" (fast, falling back to reference with a warning).
        eval_examples: size of the fixed set the report's before/after loss and accuracy use.
        stack_elements: memory cap of the stacked forward: elements of its largest activation.
        check: before the search, prune a copy group by group with random counts and compare it with the
            masked copy (:func:`~greedyprune.channels.preflight.preflight`); after each group, compare the
            physically pruned network with the masked one. A difference raises :class:`UnsupportedLayerError`.
        unsupported: "error" (default) refuses a model with a group that cannot be masked and removed
            exactly; "skip" leaves such groups whole, with a warning naming each and why.
        step: channels (units) added per greedy step of the network objective: the best ``step`` candidates
            of the step's scoring (1 = the paper's one at a time; larger is faster and less exact). "auto"
            (default): about 16 steps to a group's fixed width (one at a time for groups keeping up to 16
            units, and for the rules that compare losses).
        budget_curves: what adaptive budgets (flops_target, params_target) allocate widths by:
            "sensitivity" (default: each group alone cut to six widths by the block reconstruction on the
            dense network, refitted on the first half of the calibration examples, the curve the mean KL
            divergence of the network's outputs on examples of the second half,
            :mod:`greedyprune.channels.sensitivity`; a probe forward per group and width), "local" (each
            group's reconstruction-error curve, one calibration pass for all groups: cheaper, but blind to
            how much a layer's error matters downstream) or, with the network objective, "network" (each
            group grown on the dense network with the held-out loss measured about ``curve_points`` times:
            a network search per group, slow on a CPU).
        curve_points: points of each group's loss curve for adaptive budgets (the curve is measured with
            ``ceil(D / curve_points)`` channels added per step).
        refit: for the network objective: None (fold the scales ``D * count / |S|`` into the readers, the
            paper's way) or "lstsq": re-solve the readers' weights on the kept channels by ridge regression on
            the calibration subset (:mod:`greedyprune.channels.refit`). The local objective always refits.
        refit_ridge: the refit's ridge, ``lam = refit_ridge * mean(diag P_K P_K') * |K| / positions``
            (:func:`greedyprune.selection.block.ridge_refit`, the convention transformers use too). None
            (default): with the local objective, chosen per reader by two-fold cross-validation over the two
            halves of the calibration set (so few calibration images are not overfitted); 0.5 for the network
            objective's ``refit="lstsq"``.
        objective: "auto" (default): "local" when the rule fixes each group's width (keep_ratio, flops_target,
            params_target, KeepCounts), else "network". "local" (block reconstruction,
            :mod:`greedyprune.channels.reconstruct`): each group's readers reproduce their dense-network
            outputs from the kept channels, on inputs from the network as already pruned, by greedy forward
            selection with least-squares weights and a ridge refit (``refit_ridge``); no candidate forwards, one
            calibration forward per group; adaptive budgets allocate widths by each group's reconstruction-error
            curve. "network": each candidate scored by the whole network's loss (the paper's way; slower: a
            stacked forward per step). "local-gfs": the paper's Algorithm 1 with replacement on the readers'
            reconstruction, scales ``D * count / |S|`` folded, no refit.
        calibration: examples whose statistics the local objective uses (default: as many as one dense
            forward of about 150 G multiply-adds allows, between 32 and 4,096).
        inplace: prune ``model`` itself instead of a deep copy.
        progress: show a progress bar over groups.
        distributed: split each step's candidates across the ranks of the initialised
            ``torch.distributed`` process group (``process_group``, default the world). Every rank must
            call with the same model, data and options; every rank returns the same pruned model as a
            single process would.

    Returns:
        A :class:`~greedyprune.result.PruneResult`: the physically smaller ``model``, ``kept`` and
        ``counts`` per group, one record per group in ``layers``, a before/after ``report`` (evaluated in
        eval mode; after recalibration when ``recalibrate``) and the replayable pruning ``history``.
    """
    stop = rule_from_options(rule, uniform=uniform, epsilon=epsilon, accuracy_tolerance=accuracy_tolerance,
                             keep_ratio=keep_ratio, flops_target=flops_target, params_target=params_target)
    options = SearchOptions(candidates, replacement, batch_size, max_steps, seed, finetune_steps, finetune_lr,
                            finetune_weight_decay, method, eval_examples, stack_elements, bn, recalibrate, holdout,
                            check, step, curve_points, refit, refit_ridge, objective, calibration, budget_curves)
    options.validate()
    check_choice("unsupported", unsupported, ("error", "skip"))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    start_time = time.perf_counter()
    split = None
    if distributed:
        from ..parallel import CandidateSplit

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
    if options.bn == "auto":
        options.bn = "batch" if has_batch_norm(model) else "running"
    options.objective = resolve_objective(options.objective, stop)
    local = options.objective in ("local", "local-gfs")
    auto_recalibrate = options.recalibrate is None and options.objective == "local"
    if options.recalibrate is None:  # the block reconstruction keeps the dense statistics right
        options.recalibrate = 0 if options.objective == "local" else DEFAULT_RECALIBRATE
    needs_holdout = stop.needs_unpruned or (stop.needs_curves and not local
                                            and options.budget_curves == "network")
    batches, holdout_set = split_data(data, options.holdout if needs_holdout else 0,
                                      options.batch_size or MAX_SEARCH_BATCH, options.seed, device)
    eval_x, eval_y = batches.fixed(options.eval_examples)
    check_model_accepts(model, eval_x, eval_y)
    example = eval_x[:1]
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
    if options.stack_elements is None:
        options.stack_elements = GPU_STACK_ELEMENTS if device.type == "cuda" else CPU_STACK_ELEMENTS
    calibration = None
    if options.recalibrate and has_batch_norm(model):
        calibration = batches.fixed(options.recalibrate)[0]
    search = _Search(model, DG, None if local else _trace_for(model, options.method), batches, options, split,
                     device, calibration, holdout_set, eval_x[:8])
    if local or (stop.needs_curves and options.budget_curves in ("local", "sensitivity")):
        search.local_inputs = batches.fixed(calibration_size(options.calibration, before["macs"]))[0]
    if options.objective == "local":
        search.dense = dense_targets(model, groups, search.local_inputs)
    auto_recalibrate = auto_recalibrate and has_batch_norm(model)
    if auto_recalibrate:
        probe = search.local_inputs[:PROBE_EXAMPLES]
        dense_probe = log_probs(model, probe)
    stop.plan(PlanContext(model, groups, example, DG, curves=lambda: loss_curves(search, groups)))
    if options.objective == "network":
        search.plan = plan = plan_search(model, groups, example, stop.targets, options.step, options.candidates,
                                         options.batch_size, batches.size)
        if plan.macs > plan.budget:
            warnings.warn(f"the network objective's search is estimated at {plan.macs / 1e12:.1f}e12 multiply-adds "
                          f"(the default budget: {plan.budget / 1e12:.1f}e12), {plan.batch} examples a step: at "
                          f"~1e10 a second on a CPU core, ~{plan.macs / 6e11:.0f} min. Fewer candidates or a "
                          f"larger step= shorten it; objective='local' takes no candidate forwards", stacklevel=2)

    kept, counts_out, records = {}, {}, []
    bar = groups
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(groups, desc="pruning groups", unit="group", leave=False)
    for gi, group in enumerate(bar):
        t0 = time.perf_counter()
        group = refresh_group(DG, model, group)
        if options.objective == "local":
            counts, record, weights = reconstruct_step(search, group, stop)
            kept[group.name] = fold_and_remove(DG, model, group, counts, reader_weights=weights)
            if search.dense is not None:
                search.dense.removed(group, kept[group.name], model)
        else:
            if options.objective == "local-gfs":
                counts, record = local_group(search, group, stop)
            else:
                counts, record = search_group(search, group, gi, stop)
            kept[group.name] = _fold_checked(search, group, counts)
        counts_out[group.name] = counts.tolist()
        if options.objective != "local" or RECALIBRATE_EACH_GROUP:  # else recalibrated at the end
            search.recalibrate()
        finetune(model, batches, options.finetune_steps, options.finetune_lr, options.finetune_weight_decay)
        record.update(kept=len(kept[group.name]), seconds=time.perf_counter() - t0)
        records.append(record)
        if progress:
            bar.set_postfix(group=group.name, kept=f"{len(kept[group.name])}/{group.channels}")
    search.recalibrate()
    recalibrated = calibration is not None
    if auto_recalibrate:
        recalibrated = recalibrate_if_closer(model, probe, dense_probe, options.batch_size or MAX_SEARCH_BATCH)
    after = _measure(model, example, eval_x, eval_y)
    report = {f"{key}_{when}": value for when, m in (("before", before), ("after", after)) for key, value in m.items()}
    report.update(eval_examples=int(eval_x.shape[0]), input_shape=list(example.shape[1:]), rule=stop.name,
                  value=stop.value, bn=options.bn, recalibrated=recalibrated,
                  holdout=0 if holdout_set is None else int(holdout_set[0].shape[0]),
                  step_batch=search.plan.batch or options.batch_size,
                  seconds=time.perf_counter() - start_time)
    return PruneResult(model=model, kept=kept, counts=counts_out, report=report, layers=records,
                       history=[list(h) for h in DG.pruning_history()], method="gfs")


def search_group(search: _Search, group: ChannelGroup, index: int, stop: StoppingRule | None,
                 curve: list | None = None) -> tuple[torch.Tensor, dict]:
    """Grow one group's multiset until ``stop`` says so (``None``: to its full width). Returns
    ``(per-channel counts, record)``. With ``curve`` (a list), ``(channels kept, held-out loss, unpruned
    held-out loss)`` is appended after every step. Channels tied in units (:attr:`ChannelGroup.units`) are
    selected a unit at a time."""
    opts, device, D, U = search.options, search.device, group.channels, group.num_units
    units = None if group.units is None else group.units.to(device)

    def widen(rows: torch.Tensor) -> torch.Tensor:  # (K, U) unit scales -> (K, D) channel scales
        return rows if units is None else rows[:, units]

    evaluator = search.evaluator(group)
    held = None
    if search.holdout is not None and (curve is not None or (stop is not None and stop.needs_unpruned)):
        held = search.evaluator(group)
        held.prepare(search.holdout[0])
    counts = torch.zeros(U, dtype=torch.long)
    generator = torch.Generator().manual_seed(opts.seed * 1_000_003 + index)
    steps_cap = opts.max_steps if opts.max_steps is not None else (2 * U if opts.replacement else U)
    unpruned = torch.ones(1, D, device=device)
    last = Step(group.name, D, 0, 0, float("nan"), float("nan"))
    held_unpruned = None
    with torch.inference_mode():
        for step in range(steps_cap):
            pool = torch.arange(U) if opts.replacement else torch.nonzero(counts == 0).flatten()
            if pool.numel() == 0:
                break
            x, y = search.batches.next()
            x, y = x[:search.plan.batch], y[:search.plan.batch]
            cand = draw_candidates(generator, pool, opts.candidates)
            delta = U / (int(counts.sum()) + 1)
            base = (counts.to(torch.float32) * delta).to(device)
            if step == 0 and isinstance(evaluator, FastEvaluator):
                evaluator = checked(evaluator, search.model, group, x, y, widen(step_rows(base, cand[:2], delta)),
                                    strict=opts.method == "fast")
                if held is not None and not isinstance(evaluator, FastEvaluator):
                    held = ReferenceEvaluator(search.model, group, bn=opts.bn)
                    held.prepare(search.holdout[0])
            evaluator.prepare(x)

            def score(share: torch.Tensor) -> torch.Tensor:
                return torch.stack(evaluator.evaluate(widen(step_rows(base, share, delta)), y))

            scores = score(cand) if search.split is None else search.split.evaluate(score, cand, 2, device)
            losses, accs = scores[0].cpu(), scores[1].cpu()
            j = int(torch.argmin(losses))
            take = _step_size(opts.step, group, counts, stop, len(cand), search.plan.auto_steps)
            for i in torch.argsort(losses, stable=True)[:take].tolist():  # the best, then the next ones
                counts[int(cand[i])] += 1
            kept = int((group.channel_counts(counts) > 0).sum())
            last = Step(group.name, D, step + 1, kept, float(losses[j]), float(accs[j]))
            if held is not None:
                hy = search.holdout[1]
                if held_unpruned is None:
                    held_unpruned = [float(v[0]) for v in held.evaluate(unpruned, hy)]
                loss, acc = held.evaluate(widen(group_scales(counts).to(device).reshape(1, -1)), hy)
                last.loss, last.accuracy = float(loss[0]), float(acc[0])
                last.unpruned_loss, last.unpruned_accuracy = held_unpruned
            elif stop is not None and stop.needs_unpruned:
                full_loss, full_acc = evaluator.evaluate(unpruned, y)
                last.unpruned_loss, last.unpruned_accuracy = float(full_loss[0]), float(full_acc[0])
            if curve is not None:
                curve.append((last.kept, last.loss, held_unpruned[0] if held_unpruned else float("nan")))
            if stop is not None and stop.stop(last):
                break
    rule = stop.name if stop is not None else "curve"
    return group.channel_counts(counts), {
        "name": group.name, "channels": D, "steps": last.step, "rule": rule, "loss": last.loss,
        "accuracy": last.accuracy, "evaluator": "fast" if isinstance(evaluator, FastEvaluator) else "reference"}


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
            return budget_sensitivity(search.model, groups, search.local_inputs, options.refit_ridge)
        curves = reconstruction_curves(search.model, groups, search.local_inputs)
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
        without_replacement = copy.copy(search.options)
        without_replacement.replacement, without_replacement.max_steps = False, None
        without_replacement.step = max(1, -(-group.num_units // search.options.curve_points))
        search.options, saved = without_replacement, search.options
        try:
            search_group(search, refresh_group(search.DG, search.model, group), gi, None, curve)
        finally:
            search.options = saved
        curves[group.name] = (per_channel(group, curve), curve[-1][2] if curve else float("nan"))
    return curves


def _fold_checked(search: _Search, group: ChannelGroup, counts: torch.Tensor) -> list[int]:
    """Fold and remove the group; with ``check``, the pruned network must compute what the masked one did."""
    model, x = search.model, search.check_x
    masked = weights = None
    if search.options.refit == "lstsq":
        from .refit import refit_readers

        inputs = search.calibration if search.calibration is not None else search.batches.fixed(256)[0]
        weights = refit_readers(model, group, counts, group_scales(counts).to(search.device), inputs,
                                0.5 if search.options.refit_ridge is None else search.options.refit_ridge)
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
    loss, accuracy = evaluate(model, x, y, "cross_entropy", batch_size=512)
    model.eval()
    return {"params": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, example),
            "loss": loss, "accuracy": accuracy}


def _trace_for(model: nn.Module, method: str):
    if method == "reference":
        return None
    try:
        return trace(model)
    except Exception as exc:  # noqa: BLE001
        if method == "fast":
            raise InvalidOptionError(f"method='fast' needs a torch.fx-traceable model, and tracing failed "
                                     f"({type(exc).__name__}: {exc}); use method='reference'") from exc
        warnings.warn(f"torch.fx could not trace the model ({type(exc).__name__}); using the slower reference "
                      f"search (one full forward per candidate)", stacklevel=3)
        return None
