"""Layer-wise greedy forward selection of channels: :func:`prune_model`.

The method of "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection", as used in
Appendix E of "How much pre-training is enough to discover a good subnetwork?". Groups are pruned one
at a time, from input to output. For a group with D channels a multiset S of channels grows greedily;
while searching, channel j is seen by the layers that read the group scaled by ``D * count_j / |S|``
(0 when not chosen), and each step adds the candidate channel that gives the lowest cross-entropy of
the *whole* network on a mini-batch, all other layers fixed, until the stopping rule holds. The group is
then folded and physically removed (``masks.py``), and the network optionally fine-tuned briefly,
before the next group.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..checks import as_device, check_choice, check_int, check_number
from ..metrics import count_macs
from ..result import PruneResult
from ..selection import draw_candidates
from ..training.loop import evaluate, train_step
from .batches import Batches
from .evaluators import (CPU_STACK_ELEMENTS, GPU_STACK_ELEMENTS, FastEvaluator, ReferenceEvaluator, checked,
                         step_rows, trace)
from .groups import ChannelGroup, find_groups, refresh_group
from .masks import fold_and_remove
from .rules import PlanContext, Step, StoppingRule, rule_from_options

__all__ = ["METHODS", "SearchOptions", "prune_model"]

METHODS = ("auto", "fast", "reference")


@dataclass
class SearchOptions:
    """How each group is searched (see :func:`prune_model` for the meaning of each field)."""

    candidates: int | None = 50
    replacement: bool = False
    batch_size: int = 128
    max_steps: int | None = None
    seed: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    method: str = "auto"
    eval_examples: int = 1024
    stack_elements: int | None = None

    def validate(self) -> None:
        self.candidates = check_int("candidates", self.candidates, 1, allow_none=True)
        if not isinstance(self.replacement, bool):
            raise TypeError(f"replacement must be True or False, got {self.replacement!r}")
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        self.max_steps = check_int("max_steps", self.max_steps, 1, allow_none=True)
        self.seed = check_int("seed", self.seed, 0)
        self.finetune_steps = check_int("finetune_steps", self.finetune_steps, 0)
        self.finetune_lr = check_number("finetune_lr", self.finetune_lr, low=0, low_open=True)
        check_choice("method", self.method, METHODS)
        self.eval_examples = check_int("eval_examples", self.eval_examples, 1)
        self.stack_elements = check_int("stack_elements", self.stack_elements, 1, allow_none=True)


def prune_model(
    model: nn.Module,
    data,
    *,
    rule: StoppingRule | None = None,
    epsilon: float | None = None,
    accuracy_tolerance: float | None = None,
    keep_ratio: float | None = None,
    flops_target: float | None = None,
    candidates: int | None = 50,
    replacement: bool = False,
    batch_size: int = 128,
    max_steps: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    skip: Iterable | None = None,
    extra_skip: Iterable = (),
    finetune_steps: int = 0,
    finetune_lr: float = 0.01,
    method: str = "auto",
    eval_examples: int = 1024,
    stack_elements: int | None = None,
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
        epsilon: stop a group when its pruned loss is within this relative gap of the loss with the
            group unpruned, on the same batch: ``(loss_S - loss_full) <= epsilon * loss_full``.
        accuracy_tolerance: stop when top-1 accuracy is at least ``(1 - tolerance)`` x the unpruned
            accuracy on the batch (the public implementation uses 0.02). The default rule when none
            is given.
        keep_ratio: keep this fraction of each group's channels (at least one).
        flops_target: keep this fraction (0, 1) of the dense network's multiply-adds: the same
            keep fraction in every pruned group, the largest that meets the target.
        candidates: channels evaluated per step (a seeded random subset), or None for all.
        replacement: allow a channel to be chosen more than once (its scale grows).
        batch_size: examples per step (when ``data`` is an (X, y) pair).
        max_steps: cap on steps per group (default: D without replacement, 2 D with).
        seed: seeds the candidate subsets and the batches.
        device: where to search (default: the model's device).
        skip: layers whose groups stay whole; None = first conv, classifier and
            ``model.greedyprune_skip_layers()``. ``extra_skip`` adds to it.
        finetune_steps, finetune_lr: SGD steps (momentum 0.9) after each group; 0 = none.
        method: "fast" (stacked downstream-only evaluation), "reference" (full masked forward per
            candidate), or "auto" (fast, falling back to reference with a warning).
        eval_examples: size of the fixed set the report's before/after loss and accuracy use.
        stack_elements: memory cap of the stacked forward: elements of its largest activation.
        inplace: prune ``model`` itself instead of a deep copy.
        progress: show a progress bar over groups.
        distributed: split each step's candidates across the ranks of the initialised
            ``torch.distributed`` process group (``process_group``, default the world). Every rank must
            call with the same model, data and options; every rank returns the same pruned model as a
            single process would.

    Returns:
        A :class:`~greedyprune.result.PruneResult`: the physically smaller ``model``, ``kept`` and
        ``counts`` per group, one record per group in ``layers``, a before/after ``report`` and the
        replayable pruning ``history``.
    """
    stop = rule_from_options(rule, epsilon=epsilon, accuracy_tolerance=accuracy_tolerance, keep_ratio=keep_ratio,
                             flops_target=flops_target)
    options = SearchOptions(candidates, replacement, batch_size, max_steps, seed, finetune_steps, finetune_lr,
                            method, eval_examples, stack_elements)
    options.validate()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    start_time = time.perf_counter()
    split = None
    if distributed:
        from ..parallel import CandidateSplit

        split = CandidateSplit(process_group)
    if not inplace:
        model = copy.deepcopy(model)
    device = _model_device(model) if device is None else as_device(device)
    model.to(device).eval()
    batches = Batches(data, options.batch_size, options.seed, device)
    eval_x, eval_y = batches.fixed(options.eval_examples)
    _check_model_accepts(model, eval_x, eval_y)
    example = eval_x[:1]
    DG, groups = find_groups(model, example, skip, extra_skip=extra_skip)
    if not groups:
        raise ValueError("no prunable channel group: every group holds a skipped layer; pass skip=[] or fewer layers")
    before = _measure(model, example, eval_x, eval_y)
    stop.plan(PlanContext(model, groups, example, DG))
    graph = _trace_for(model, options.method)
    if options.stack_elements is None:
        options.stack_elements = GPU_STACK_ELEMENTS if device.type == "cuda" else CPU_STACK_ELEMENTS

    kept, counts_out, records = {}, {}, []
    bar = groups
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(groups, desc="pruning groups", unit="group", leave=False)
    for gi, group in enumerate(bar):
        t0 = time.perf_counter()
        group = refresh_group(DG, model, group)
        counts, record = search_group(model, group, batches, stop, options, graph, split, gi, device)
        kept[group.name] = fold_and_remove(DG, model, group, counts)
        counts_out[group.name] = counts.tolist()
        finetune(model, batches, options.finetune_steps, options.finetune_lr)
        record.update(kept=len(kept[group.name]), seconds=time.perf_counter() - t0)
        records.append(record)
        if progress:
            bar.set_postfix(group=group.name, kept=f"{len(kept[group.name])}/{group.channels}")
    after = _measure(model, example, eval_x, eval_y)
    report = {f"{key}_{when}": value for when, m in (("before", before), ("after", after)) for key, value in m.items()}
    report.update(eval_examples=int(eval_x.shape[0]), input_shape=list(example.shape[1:]), rule=stop.name, value=getattr(stop, "value", None),
                  seconds=time.perf_counter() - start_time)
    return PruneResult(model=model, kept=kept, counts=counts_out, report=report, layers=records,
                       history=[list(h) for h in DG.pruning_history()], method="gfs")


def search_group(model: nn.Module, group: ChannelGroup, batches: Batches, stop: StoppingRule,
                 options: SearchOptions, graph, split, index: int, device: torch.device) -> tuple[torch.Tensor, dict]:
    """Grow one group's multiset until ``stop`` says so. Returns ``(counts, record)``."""
    D = group.channels
    evaluator = _evaluator_for(model, graph, group, options)
    counts = torch.zeros(D, dtype=torch.long)
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + index)
    steps_cap = options.max_steps if options.max_steps is not None else (2 * D if options.replacement else D)
    unpruned = torch.ones(1, D, device=device)
    last = Step(group.name, D, 0, 0, float("nan"), float("nan"))
    with torch.inference_mode():
        for step in range(steps_cap):
            pool = torch.arange(D) if options.replacement else torch.nonzero(counts == 0).flatten()
            if pool.numel() == 0:
                break
            x, y = batches.next()
            cand = draw_candidates(generator, pool, options.candidates)
            delta = D / (step + 1)
            base = (counts.to(torch.float32) * delta).to(device)
            if step == 0 and isinstance(evaluator, FastEvaluator):
                evaluator = checked(evaluator, model, group, x, y, step_rows(base, cand[:2], delta),
                                    strict=options.method == "fast")
            evaluator.prepare(x)

            def score(share: torch.Tensor) -> torch.Tensor:
                return torch.stack(evaluator.evaluate(step_rows(base, share, delta), y))

            scores = score(cand) if split is None else split.evaluate(score, cand, 2, device)
            losses, accs = scores[0].cpu(), scores[1].cpu()
            j = int(torch.argmin(losses))
            counts[int(cand[j])] += 1
            last = Step(group.name, D, step + 1, int((counts > 0).sum()), float(losses[j]), float(accs[j]))
            if stop.needs_unpruned:
                full_loss, full_acc = evaluator.evaluate(unpruned, y)
                last.unpruned_loss, last.unpruned_accuracy = float(full_loss[0]), float(full_acc[0])
            if stop.stop(last):
                break
    return counts, {"name": group.name, "channels": D, "steps": last.step, "rule": stop.name, "loss": last.loss,
                    "accuracy": last.accuracy, "evaluator": "fast" if isinstance(evaluator, FastEvaluator)
                    else "reference"}


def finetune(model: nn.Module, batches: Batches, steps: int, lr: float) -> None:
    """``steps`` SGD steps (momentum 0.9, weight decay 5e-4) on the next batches; the model ends in eval mode."""
    if steps <= 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    with torch.enable_grad():
        for _ in range(steps):
            x, y = batches.next()
            train_step(model, optimizer, x, y, "cross_entropy", where=" while fine-tuning between groups")
    model.eval()


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_model_accepts(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"the model does not accept the data's inputs of shape {tuple(x.shape[1:])} "
                         f"({type(exc).__name__}: {exc}); pass inputs shaped as the model expects, e.g. images "
                         f"(n, C, H, W) rather than flattened vectors") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(f"the model must return class logits of shape (batch, classes), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    if int(y.max()) >= out.shape[1] or int(y.min()) < 0:
        raise ValueError(f"labels must be in [0, {out.shape[1]}) for a model with {out.shape[1]} outputs; "
                         f"got labels in [{int(y.min())}, {int(y.max())}]")


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
            raise ValueError(f"method='fast' needs a torch.fx-traceable model, and tracing failed "
                             f"({type(exc).__name__}: {exc}); use method='reference'") from exc
        warnings.warn(f"torch.fx could not trace the model ({type(exc).__name__}); using the slower reference "
                      f"search (one full forward per candidate)", stacklevel=3)
        return None


def _evaluator_for(model: nn.Module, graph, group: ChannelGroup, options: SearchOptions):
    if graph is not None:
        try:
            return FastEvaluator(model, graph, group, options.stack_elements)
        except RuntimeError as exc:
            if options.method == "fast":
                raise
            warnings.warn(f"group {group.name!r}: fast search unavailable ({exc}); using the reference search",
                          stacklevel=3)
    return ReferenceEvaluator(model, group)
