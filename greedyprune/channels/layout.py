"""The convolutions' memory layout while :func:`~greedyprune.channels.prune_model` runs
(:attr:`~greedyprune.channels.PruneOptions.memory_format`).

PyTorch's CPU convolutions run faster on channels-last tensors (oneDNN's native layout): one EfficientNet-Lite0
forward of 27 ImageNet crops on 2 CPU cores took 1.74 s with the weights as loaded and 1.03-1.11 s with them
channels-last, whatever the input's layout (a convolution with a channels-last weight returns channels-last
outputs). The pruning's time is mostly such forwards, so ``"auto"`` converts the weights on a CPU for the run and
gives the model back in the layout it came in. It leaves the model alone when it holds no 4-d weight, runs on
another device, already has a channels-last weight (the caller's choice), or does not compute the same in the new
layout (a ``.view()`` of a convolution's output fails on a channels-last tensor): one forward of two examples each
way decides, so the choice depends on the model and the device only, never on a timing.

Forward passes only. The fine-tune between groups (``finetune_steps``) runs in the default layout: torch
2.13's CPU backward of a channels-last 1x1 stride-2 convolution (4 -> 8 channels on 28x28 inputs, weight or
input channels-last) corrupts memory and kills the process, while its forward gives the right outputs (checked
on 8 such shapes, 20 draws each, under ``no_grad``, ``inference_mode`` and with gradients on).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidOptionError

__all__ = ["MEMORY_FORMATS", "channels_last_for_run", "restore_layout"]

from .options import MEMORY_FORMATS  # noqa: F401 - the option's values, named here too

TOLERANCE = 1e-4
"""Largest difference of the outputs in the two layouts, relative to their largest magnitude (at least 1)."""


def _four_d(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4]


def _is_channels_last(p: torch.Tensor) -> bool:
    return not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)


def channels_last_for_run(model: nn.Module, example: torch.Tensor, choice: str, device: torch.device) -> bool:
    """Convert ``model``'s 4-d parameters and buffers to channels-last for the run when ``choice`` asks for it
    (``"auto"``: on a CPU, see the module's text); returns whether it did (then :func:`restore_layout` at the
    end). ``"channels_last"`` on a model that does not compute the same in that layout raises
    :class:`~greedyprune.errors.InvalidOptionError`."""
    if choice == "keep":
        return False
    weights = _four_d(model)
    if choice == "auto" and (device.type != "cpu" or not weights or any(_is_channels_last(p) for p in weights)):
        return False
    if not weights:
        raise InvalidOptionError("memory_format='channels_last' needs a model with 2-d convolutions (4-d weights); "
                                 "this one has none: leave memory_format at 'auto' or 'keep'")
    with torch.no_grad():
        want = model(example)
    model.to(memory_format=torch.channels_last)
    why = ""
    try:
        with torch.no_grad():
            got = model(example)
        if got.shape != want.shape:
            why = f"outputs of shape {tuple(got.shape)} instead of {tuple(want.shape)}"
        else:
            diff, scale = float((got - want).abs().max()), max(1.0, float(want.abs().max()))
            if not diff <= TOLERANCE * scale:
                why = f"outputs differ by {diff:.3g}"
    except RuntimeError as exc:  # a .view() of a channels-last tensor, a custom kernel's layout assumption
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    if not why:
        return True
    restore_layout(model)
    if choice == "channels_last":
        raise InvalidOptionError(f"the model does not compute the same with channels-last weights ({why}); a "
                                 f"layer probably calls .view() on a convolution's output (use .reshape() or "
                                 f".flatten()), or pass memory_format='keep'")
    return False


def restore_layout(model: nn.Module) -> None:
    """The 4-d parameters and buffers back in the default (contiguous) layout."""
    model.to(memory_format=torch.contiguous_format)
