"""Recovery after pruning without labels: distil the dense network's outputs into the pruned one.

A user who has only unlabelled calibration inputs can still recover much of what pruning cost: train the
pruned network (the *student*) for a few steps to match the dense network's (the *teacher's*) output
distribution on those inputs, minimising ``KL(softmax(teacher / T) || softmax(student / T)) * T^2``.

Choices: Adam (robust to the scale of a pretrained network's weights, no learning-rate search needed) at a
small learning rate; batch norms kept in eval mode (their statistics are the recalibrated ones; a few small
batches would only add noise), so only the weights move; the teacher is never changed. Inputs come from a
tensor (mini-batches drawn with a seeded generator) or a callable ``inputs(step, generator) -> batch`` (fresh
random crops per step, say). Deterministic for a seed.

A few calibration inputs can be fitted rather than learnt from: on ten ImageNet images, 20 steps lowered the
pruned network's agreement with the dense one on other images (``bench/pretrained.py``). Pass ``holdout=``
(inputs the steps never see, e.g. a few of the user's images kept aside): the KL on them is measured before the
first step and every ``eval_every`` steps, and the student ends with the weights of the best measurement, its
own pruned weights if no step helped. The held-out measurements use no random numbers, so the steps are those of
a run without ``holdout``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int, check_number
from ..errors import InvalidOptionError, InvalidTypeError
from ..metrics import log_probs, mean_kl

__all__ = ["distill", "DistillLosses"]


class DistillLosses(list):
    """The loss of every step (a list, as before ``holdout=``), with the held-out record: ``holdout``, the
    ``(steps taken, KL on the held-out inputs)`` pairs measured, and ``best_step``, the number of steps whose
    weights the student kept (``steps`` when there was no held-out set)."""

    def __init__(self, losses=(), holdout=(), best_step=0):
        super().__init__(losses)
        self.holdout = list(holdout)
        self.best_step = best_step


def distill(student: nn.Module, teacher: nn.Module, inputs: torch.Tensor | Callable, *, steps: int = 50,
            lr: float = 1e-4, batch_size: int = 16, temperature: float = 1.0, seed: int = 0,
            holdout: torch.Tensor | None = None, eval_every: int | None = None,
            progress: bool = False) -> DistillLosses:
    """Fine-tune ``student`` in place to match ``teacher``'s outputs on unlabelled ``inputs``.

    Args:
        student: the pruned network (changed in place; left in eval mode).
        teacher: the dense network (not changed).
        inputs: an (N, ...) tensor of inputs, or a callable ``(step, generator) -> batch``.
        steps: Adam steps.
        lr: Adam's learning rate.
        batch_size: examples per step (drawn from a tensor ``inputs``).
        temperature: softmax temperature T of the KL divergence (scaled by T^2).
        seed: seeds the batches.
        holdout: optional (M, ...) tensor of inputs the steps never draw: the student keeps the weights with the
            lowest KL to the teacher on them, measured before the first step, every ``eval_every`` steps and
            after the last (its own weights if no step lowered it).
        eval_every: steps between held-out measurements (default: a tenth of ``steps``, at least 1); read only
            with ``holdout``.
        progress: show a progress bar.

    Returns:
        The loss of every step (:class:`DistillLosses`, a list), with the held-out record.
    """
    steps = check_int("steps", steps, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_number("lr", lr, low=0, low_open=True)
    temperature = check_number("temperature", temperature, low=0, low_open=True)
    if not callable(inputs) and not isinstance(inputs, torch.Tensor):
        raise InvalidTypeError(f"inputs must be a tensor of inputs or a callable (step, generator) -> batch, got "
                               f"{type(inputs).__name__}")
    if isinstance(inputs, torch.Tensor) and (inputs.dim() == 0 or inputs.shape[0] == 0):
        raise InvalidOptionError("inputs is empty: pass at least one calibration input")
    if holdout is not None:
        if not isinstance(holdout, torch.Tensor):
            raise InvalidTypeError(f"holdout must be a tensor of inputs kept out of the steps, got "
                                   f"{type(holdout).__name__}")
        if holdout.dim() == 0 or holdout.shape[0] == 0:
            raise InvalidOptionError("holdout is empty: pass at least one held-out input, or holdout=None")
    eval_every = max(1, steps // 10) if eval_every is None else check_int("eval_every", eval_every, 1)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    teacher.eval()
    student.eval()
    losses = DistillLosses(best_step=steps)
    if holdout is not None:
        held = log_probs(teacher, holdout, temperature)

        def held_out_kl() -> float:  # T^2 KL(teacher_T || student_T) on the held-out inputs
            return mean_kl(held, log_probs(student, holdout, temperature)) * temperature ** 2

        best = held_out_kl()
        losses.holdout.append((0, best))
        losses.best_step, best_state = 0, {k: v.clone() for k, v in student.state_dict().items()}
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="distilling", unit="step", leave=False)
    for step in iterator:
        if isinstance(inputs, torch.Tensor):
            x = inputs[torch.randint(inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=generator)]
        else:
            x = inputs(step, generator)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, dim=-1)
        with torch.enable_grad():
            log_student = F.log_softmax(student(x) / temperature, dim=-1)
            loss = F.kl_div(log_student, target, log_target=True, reduction="batchmean") * temperature ** 2
            if not torch.isfinite(loss):
                kept = ""
                if holdout is not None:  # the best weights measured so far, not the diverging ones
                    student.load_state_dict(best_state)
                    kept = f"; the student holds the weights of step {losses.best_step}, the best held-out KL"
                raise FloatingPointError(f"distillation loss became {float(loss.detach())} at step {step}; lower lr "
                                         f"(now {lr}){kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
        if holdout is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            kl = held_out_kl()
            losses.holdout.append((step + 1, kl))
            if kl < best:
                best, losses.best_step = kl, step + 1
                best_state = {k: v.clone() for k, v in student.state_dict().items()}
    if holdout is not None and losses.best_step != steps:
        student.load_state_dict(best_state)
    student.eval()
    return losses
