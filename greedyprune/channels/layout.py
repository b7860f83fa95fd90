"""The convolutions' memory layout while :func:`~greedyprune.channels.prune_model` runs
(:attr:`~greedyprune.channels.PruneOptions.memory_format`).

PyTorch's CPU convolutions run faster on channels-last tensors (oneDNN's native layout): one EfficientNet-Lite0
forward of 27 ImageNet crops on 2 CPU cores took 1.74 s with the weights as loaded and 1.03-1.11 s with them
channels-last, whatever the input's layout (a convolution with a channels-last weight returns channels-last
outputs). The pruning's time is mostly such forwards, so ``"auto"`` converts the weights on a CPU for the run and
gives its 4-d weights and buffers back in the default layout. It leaves the model alone when it holds no 4-d
weight, runs on another device, already has a channels-last weight (the caller's choice), or does not compute the
same in the new layout (a ``.view()`` of a convolution's output fails on a channels-last tensor): one forward of
the same two examples each way decides, so the choice depends on the model, those examples and the device,
never on a timing. Tensors of other ranks (a Conv3d's 5-d weight) are never touched.

Forward passes only. The fine-tune between groups (``finetune_steps``) runs in the default layout, whoever
chose the model's layout: torch 2.13's CPU backward of a channels-last 1x1 stride-2 convolution (4 -> 8 channels
on 28x28 inputs, weight or input channels-last) corrupts memory and kills the process, while its forward gives
the right outputs (checked on 8 such shapes, 20 draws each, under ``no_grad``, ``inference_mode`` and with
gradients on).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidOptionError
from .options import MEMORY_FORMATS  # noqa: F401 - the option's values, named here too

__all__ = ["MEMORY_FORMATS", "channels_last_for_run", "restore_layout", "to_layout"]

TOLERANCE = 1e-4
"""Largest difference of the outputs in the two layouts, relative to their largest magnitude (at least 1)."""


def _four_d(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4]


def _is_channels_last(p: torch.Tensor) -> bool:
    return not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)


def to_layout(model: nn.Module, memory_format: torch.memory_format) -> None:
    """Every 4-d parameter and buffer of ``model`` in ``memory_format``, in place (the same tensor objects, as
    ``Module.to`` keeps them; unlike it, tensors of other ranks are left alone: a 5-d one, a Conv3d's weight,
    has no channels-last form and would make ``Module.to(memory_format=torch.channels_last)`` raise)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=memory_format):
                t.data = t.data.contiguous(memory_format=memory_format)


def channels_last_for_run(model: nn.Module, example: torch.Tensor, choice: str,
                          device: torch.device) -> tuple[bool, bool]:
    """Convert ``model``'s 4-d parameters and buffers to channels-last for the run when ``choice`` asks for it
    (``"auto"``: on a CPU, see the module's text). Returns ``(converted, restore)``: whether the run is
    channels-last (then :func:`to_layout` again after each group's removal) and whether to put the model back in
    the default layout at the end (:func:`restore_layout`; not for a model that came with channels-last weights,
    which ``"channels_last"`` leaves channels-last). ``"channels_last"`` on a model that does not compute the
    same in that layout raises :class:`~greedyprune.errors.InvalidOptionError`; any other exception leaves the
    model as it came."""
    if choice == "keep":
        return False, False
    weights = _four_d(model)
    came_channels_last = any(_is_channels_last(p) for p in weights)
    if choice == "auto" and (device.type != "cpu" or not weights or came_channels_last):
        return False, False
    if not weights:
        raise InvalidOptionError("memory_format='channels_last' needs a model with 2-d convolutions (4-d weights); "
                                 "this one has none: leave memory_format at 'auto' or 'keep'")
    with torch.no_grad():
        want = model(example)
    to_layout(model, torch.channels_last)
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
    except Exception as exc:  # noqa: BLE001 - a .view() of a channels-last tensor, a layer that asserts its layout
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    except BaseException:  # Ctrl-C: the model as it came
        if not came_channels_last:
            restore_layout(model)
        raise
    if not why:
        return True, not came_channels_last
    if not came_channels_last:
        restore_layout(model)
    if choice == "channels_last":
        raise InvalidOptionError(f"the model does not compute the same with channels-last weights ({why}); a "
                                 f"layer probably calls .view() on a convolution's output (use .reshape() or "
                                 f".flatten()), or pass memory_format='keep'")
    return False, False


def restore_layout(model: nn.Module) -> None:
    """The 4-d parameters and buffers back in the default (contiguous) layout."""
    to_layout(model, torch.contiguous_format)
