"""Recovery after pruning without labels: distil the dense network's outputs into the pruned one.

A user who has only unlabelled calibration inputs can still recover much of what pruning cost: train the
pruned network (the *student*) for a few steps to match the dense network's (the *teacher's*) output
distribution on those inputs, minimising ``KL(softmax(teacher / T) || softmax(student / T)) * T^2``.

Choices: Adam (robust to the scale of a pretrained network's weights, no learning-rate search needed) at a
small learning rate; batch norms kept in eval mode (their statistics are the recalibrated ones; a few small
batches would only add noise), so only the weights move; the teacher is never changed. Inputs come from a
tensor (mini-batches drawn with a seeded generator) or a callable ``inputs(step, generator) -> batch`` (fresh
random crops per step, say). Deterministic for a seed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int, check_number
from ..errors import InvalidOptionError, InvalidTypeError

__all__ = ["distill"]


def distill(student: nn.Module, teacher: nn.Module, inputs: torch.Tensor | Callable, *, steps: int = 50,
            lr: float = 1e-4, batch_size: int = 16, temperature: float = 1.0, seed: int = 0,
            progress: bool = False) -> list[float]:
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
        progress: show a progress bar.

    Returns:
        The loss of every step.
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
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    teacher.eval()
    student.eval()
    losses = []
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
                raise FloatingPointError(f"distillation loss became {float(loss)} at step {step}; lower lr (now {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses
