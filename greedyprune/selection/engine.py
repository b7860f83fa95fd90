"""Greedy forward selection: Algorithm 1 of "How much pre-training is enough to discover a
good subnetwork?" (after "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection").

Given the output vectors ``phi_i`` of N neurons over m examples, build a multiset S of k neurons one
at a time, each step adding the neuron whose inclusion gives the lowest loss of the averaged output::

    S_0 = {}, u_0 = 0
    i_k     = argmin_i  l((k * u_k + phi_i) / (k + 1))
    u_{k+1} = (k * u_k + phi_{i_k}) / (k + 1)

The engine never loops over candidates in Python and never evaluates a candidate network; the
loss-specific work is a scorer's (``scorers.py``): for the squared loss one matrix-vector product per
newly chosen neuron (or, from a Gram matrix, O(N) per step); for the logistic and cross-entropy losses a
convexity bound that leaves most candidates without an exact evaluation.

Ties are broken by the lowest neuron index, as a brute-force loop with ``argmin`` would.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import InvalidOptionError
from .losses import LOSSES, get_loss, validate_gram, validate_inputs
from .result import SelectionResult
from .scorers import draw_candidates, duplicate_groups

__all__ = ["MAX_STEPS", "greedy_forward_selection", "prepare_outputs", "run_selection"]

MAX_STEPS = 1_000_000
"""Largest k accepted: a step costs at least O(N), and with replacement k beyond a few times N rarely
changes the selection."""


def prepare_outputs(outputs: torch.Tensor, target: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached, contiguous outputs (half precision computed in float32) and the target in the form the
    scorers read (``get_loss(loss).prepare_target``: class indices as int64, else the outputs' dtype)."""
    phi = outputs.detach()
    if phi.dtype in (torch.float16, torch.bfloat16):
        phi = phi.float()  # half precision cannot hold the running sums and scores: computed in float32
    phi = phi.contiguous()
    target = target.detach()
    target = get_loss(loss).prepare_target(target, phi.dtype)
    return phi, target


def run_selection(scorer, n: int, k: int, *, replacement: bool, candidates: int | None, seed: int,
                  duplicates: dict[int, list[int]], progress: str | None = None, distinct: int | None = None,
                  stop: Callable[[int, int, float], bool] | None = None):
    """Algorithm 1's loop - the only one - over any :class:`~greedyprune.selection.scorers.Scorer` of n
    candidates (Algorithm 2 is a scorer too: ``sharded.ShardedScorer``).

    Each step draws the candidates (all of them, or ``candidates`` of the available ones with a generator
    seeded with ``seed``: the same draws wherever this runs), asks ``scorer.pick`` for the choice, lets
    ``scorer.resolve_duplicate`` choose among its eligible exact copies (``duplicates`` maps a row to the
    rows exactly equal to it) and adds the chosen row with ``scorer.add``. A scorer whose steps add several
    rows at once (the deep search's ``step=``) returns them from ``pick`` as a list, best first; each is
    added in turn, and without replacement the loop ends early when no row is left.

    Returns ``(indices, counts, losses)``: the rows in the order added, each row's count, and the loss
    after each step. The loop runs k steps, or stops earlier after the step that chose the
    ``distinct``-th distinct row, or after the first step at which ``stop(steps, distinct, loss)`` - the
    steps taken, the distinct rows chosen and the loss so far - is true; the returned tensors then hold the
    steps taken: the first T steps of a longer run are exactly a T-step run.
    """
    generator = torch.Generator().manual_seed(seed)
    all_rows = torch.arange(n)
    available = torch.ones(n, dtype=torch.bool)
    picked: list[int] = []
    losses = torch.empty(k, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.int64)
    steps = range(k)
    chosen = 0
    left = n  # rows not yet chosen
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=progress, unit="step", leave=False)
    taken = k
    for step in steps:
        if not replacement and left == 0:
            taken = step
            break
        rows = None
        if candidates is not None:
            rows = draw_candidates(generator, all_rows if replacement else all_rows[available], candidates)
        best = scorer.pick(step, None if replacement else available, rows)
        for best in best if isinstance(best, (list, tuple)) else (best,):
            if best in duplicates:  # an exact copy with a lower index, if eligible, ties and wins
                eligible = set(rows.tolist()) if rows is not None else None
                best = scorer.resolve_duplicate(step, best, [j for j in duplicates[best] if (
                    replacement or available[j]) and (eligible is None or j in eligible)])
            picked.append(best)
            if counts[best] == 0:
                chosen += 1
                left -= 1
            counts[best] += 1
            available[best] = False
            scorer.add(scorer.row(best), best)
        losses[step] = scorer.loss(step + 1)
        if (distinct is not None and chosen >= distinct) or (stop is not None and stop(step + 1, chosen,
                                                                                            float(losses[step]))):
            taken = step + 1
            break
    return torch.tensor(picked, dtype=torch.int64), counts, losses[:taken].clone() if taken < k else losses


def greedy_forward_selection(
    outputs: torch.Tensor | None,
    target: torch.Tensor | None,
    k: int,
    loss: str = "squared",
    replacement: bool = True,
    candidates: int | None = None,
    seed: int = 0,
    *,
    gram: torch.Tensor | None = None,
    cross: torch.Tensor | None = None,
    target_norm: float | None = None,
    examples: int = 1,
    chunk_elements: int | None = None,
    progress: bool = False,
    distinct: int | None = None,
    stop: Callable[[int, int, float], bool] | None = None,
) -> SelectionResult:
    """Select k neurons greedily (Algorithm 1) from their output vectors.

    Args:
        outputs: (N, m) - row i is neuron i's output over the m examples - or (N, m, C) for C outputs.
            For "logistic" and "cross_entropy" the outputs are logits. float32 or float64 (float16 and
            bfloat16 are computed in float32), magnitudes up to 1e15, CPU or CUDA; the work runs on this
            tensor's device. Inputs that require grad are detached. ``None`` with ``gram=``.
        target: "squared": floats shaped like ``outputs[0]``; "logistic": (m,) labels in {0, 1};
            "cross_entropy": (m,) integer class indices in [0, C). Same device as ``outputs``.
        k: number of selection steps (1 .. 1,000,000). With replacement the result has at most k distinct
            neurons.
        loss: "squared" (the theory), "logistic" or "cross_entropy" (the experiments), or the name of any
            loss registered with :func:`~greedyprune.selection.losses.register_loss` (``LOSSES``).
        replacement: True (the paper's multiset: a neuron may be chosen again, which re-weights it);
            False never picks a neuron twice (then k <= N).
        candidates: None evaluates every neuron at every step; an int c evaluates a random subset of c
            per step (drawn with ``seed``), as the public deep-network implementation does.
        seed: seeds the candidate subsets.
        gram, cross: the squared loss from inner products only - ``gram[i, j] = <phi_i, phi_j>`` (N, N)
            and ``cross[i] = <phi_i, y>`` (N,) - for problems whose outputs are too large to form (pass
            ``outputs=None, target=None``). The selections are those of the explicit form.
        target_norm, examples: with ``gram``, ``||y||^2`` and m, so that ``losses`` are the squared loss
            ``||u - y||^2 / m`` itself (default 0 and 1: the loss up to a constant and a scale).
        chunk_elements: advanced - elements per row chunk for the logistic / cross-entropy passes.
        progress: show a progress bar over the k steps.
        distinct: stop after the step that chose this many distinct neurons (k is then the most steps taken;
            ``result.k`` is the steps taken). The selections are those of the first steps of a k-step run.
        stop: a function ``stop(steps, distinct, loss)`` called after every step with the steps taken, the
            distinct neurons chosen and the loss so far; the selection ends after the first step at which it
            returns true (as with ``distinct``, k is then the most steps taken), e.g.
            ``stop=lambda steps, distinct, loss: loss <= 0.01``.

    Returns:
        A :class:`SelectionResult` with ``indices``, ``counts``, ``losses`` and ``output`` (None with
        ``gram``).

    The selected indices are exactly those of a brute-force loop that forms each candidate's averaged
    output and evaluates its loss, with ties broken by the lowest index (up to floating-point rounding
    of near-ties; the statistics are accumulated in float64).
    """
    if stop is not None and not callable(stop):
        raise InvalidOptionError(f"stop must be a function stop(steps, distinct, loss) -> bool, got "
                                 f"{type(stop).__name__}")
    if gram is not None or cross is not None:
        if outputs is not None or target is not None:
            raise InvalidOptionError("give either outputs and target, or gram and cross (the Gram form), not both")
        if gram is None or cross is None:
            raise InvalidOptionError("the Gram form needs both gram (N, N) and cross (N,)")
        if loss not in LOSSES or not get_loss(loss).gram:
            names = " or ".join(name for name in LOSSES if get_loss(name).gram)
            raise InvalidOptionError(f"the Gram form computes the {names} loss; got loss={loss!r}")
        k = validate_gram(gram, cross, k, replacement, candidates, seed, target_norm, examples)
        _check_steps(k)
        gram = gram.detach().to(torch.float64 if gram.dtype != torch.float64 else gram.dtype).contiguous()
        scorer = get_loss(loss).make_gram_scorer(gram, cross.detach(), 0.0 if target_norm is None else target_norm,
                                                 examples)
        keys = torch.cat([gram, scorer.py.reshape(-1, 1)], dim=1)
        n, output = gram.shape[0], None
    else:
        k = validate_inputs(outputs, target, k, loss, replacement, candidates, seed)
        _check_steps(k)
        phi, target = prepare_outputs(outputs, target, loss)
        objective = get_loss(loss)
        if chunk_elements is None:
            chunk_elements = objective.chunk_elements(phi.device)
        else:
            from ..checks import check_int

            check_int("chunk_elements", chunk_elements, 1)
        scorer = objective.make_scorer(phi, target, chunk_elements, candidates=candidates)
        keys, n = phi, phi.shape[0]
    if distinct is not None:
        from ..checks import check_int

        check_int("distinct", distinct, 1)
    indices, counts, losses = run_selection(
        scorer, n, k, replacement=replacement, candidates=candidates, seed=seed,
        duplicates=duplicate_groups(keys), progress=f"greedy selection ({loss})" if progress else None,
        distinct=distinct, stop=stop)
    if gram is None:
        output = scorer.s / int(indices.numel())
    return SelectionResult(indices=indices, counts=counts, losses=losses, output=output, loss=loss,
                           replacement=replacement, candidates=candidates, seed=seed)


def _check_steps(k: int) -> None:
    if k > MAX_STEPS:
        raise InvalidOptionError(
            f"k={k:,} selection steps is more than the {MAX_STEPS:,} supported (each step costs at "
            f"least O(N)); with replacement, more steps than a few times N rarely change the result")
