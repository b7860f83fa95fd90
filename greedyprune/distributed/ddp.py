"""Data-parallel training on ``torch.distributed``: the pieces :func:`greedyprune.training.loop.pretrain`
uses when ``distributed=True``.

Every process computes the same global batch indices (a pure function of the seed and the step), takes
its contiguous share (:func:`greedyprune.distributed.split_range`), and ``DistributedDataParallel`` sums
the gradients; each share's loss is weighted by its size so that the summed gradient is the gradient of
the mean loss over the whole batch, as in one process.

BatchNorm would otherwise normalise each share by its own statistics. :func:`cross_rank_batchnorm`
makes every BatchNorm layer use the statistics of the whole batch for the duration of training, on any
backend (torch's ``SyncBatchNorm`` refuses CPU tensors, so gloo runs could not use it): the per-channel
sums are all-reduced with a differentiable all-reduce, in float64. A P-process run then takes the steps of
a one-process run up to floating-point rounding (tested with 2 gloo processes on CPU; the NCCL path is the
same code on CUDA tensors and has not been run here).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNormMixin", "cross_rank_batchnorm"]


class GlobalBatchNormMixin:
    """Training-mode BatchNorm over the batch of all processes (the union of the shares)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - replaces BatchNorm's forward
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        count = torch.tensor([x.numel() / max(c, 1)], dtype=torch.float64, device=x.device)
        # sums in float64, so that E[x^2] - E[x]^2 loses nothing a one-process BatchNorm keeps
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64), count])
        total = all_reduce(local)  # differentiable: its backward sums the gradients of every process
        n = total[2 * c]
        mean64 = total[:c] / n
        var = (total[c:2 * c] / n - mean64 * mean64).clamp_min(0).to(x.dtype)
        mean = mean64.to(x.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


_SWAPPED: dict[type, type] = {}


def _global_class(cls: type) -> type:
    if cls not in _SWAPPED:
        _SWAPPED[cls] = type(f"Global{cls.__name__}", (GlobalBatchNormMixin, cls), {"__module__": __name__})
    return _SWAPPED[cls]


@contextlib.contextmanager
def cross_rank_batchnorm(model: nn.Module) -> Iterator[int]:
    """Within the block, every BatchNorm layer of ``model`` normalises training batches with the statistics
    of the whole batch over all processes; the layers (same objects, parameters and buffers) get their
    own classes back afterwards. Yields the number of layers changed."""
    changed = []
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNormMixin, nn.SyncBatchNorm)):
            changed.append((module, type(module)))
            module.__class__ = _global_class(type(module))
    try:
        yield len(changed)
    finally:
        for module, cls in changed:
            module.__class__ = cls
