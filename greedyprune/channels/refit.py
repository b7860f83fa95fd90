"""Least-squares refit of the layers that read a pruned group (reconstruction, as in channel pruning by
"Channel Pruning for Accelerating Very Deep Neural Networks" and ThiNet).

Greedy selection keeps channel j with the scale ``D * count_j / |S|`` folded into the readers' weights.
A refit instead re-solves each reader's weights on the kept input channels so that its output on
calibration inputs matches its output with the group unpruned, by ridge regression pulled towards the
folded weights::

    W* = argmin_W  ||W P_kept - W_full P_full||^2  +  lam * ||W - W_folded||^2

where P are the reader's input patches (``unfold`` for convolutions; the inputs themselves for linear
layers; one column per position), solved by the shared :func:`greedyprune.selection.block.ridge_refit` from the
raw sums over the T positions (the reader's bias is kept, so nothing is centred): ``lam = ridge * mean(diag
P_kept P_kept') * |kept| / T``, the one convention of channels and transformers alike (``selection/block.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..selection.block import DEFAULT_RIDGE, ridge_refit
from .groups import ChannelGroup
from .masks import reader_scale
from .reconstruct import patches

__all__ = ["refit_readers"]


def _weight2d(module: nn.Module) -> torch.Tensor:
    return module.weight.reshape(module.weight.shape[0], -1)


@torch.no_grad()
def refit_readers(model: nn.Module, group: ChannelGroup, counts: torch.Tensor, scale: torch.Tensor,
                  inputs: torch.Tensor, ridge: float = DEFAULT_RIDGE, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """New weights for the group's plain (ungrouped) conv and linear readers, in the readers' full input
    layout (the removed channels' columns are zero), to be used in place of folding ``scale``. ``ridge``: the
    refit's (:func:`~greedyprune.selection.block.ridge_lambda`; default ``DEFAULT_RIDGE``, 0.5).

    Returns ``{reader name: weight}``; readers it cannot refit (grouped convolutions) are left out.
    """
    named = dict(model.named_modules())
    readers = [(name, idx, root) for name, idx, root in group.readers
               if getattr(named[name], "groups", 1) == 1 and isinstance(named[name], (nn.Conv2d, nn.Linear))]
    captured: dict[str, list] = {name: [] for name, _, _ in readers}
    hooks = [named[name].register_forward_pre_hook(lambda m, a, name=name: captured[name].append(a[0]))
             for name, _, _ in readers]
    was_training = model.training
    model.eval()
    stats = {}
    try:
        for start in range(0, inputs.shape[0], batch_size):
            for name in captured:
                captured[name].clear()
            model(inputs[start:start + batch_size])
            for name, idx, root in readers:
                module = named[name]
                full = _weight2d(module)
                kernel = full.shape[1] // _in_width(module)
                for x in captured[name]:
                    p = patches(module, x).double()
                    target = full.double() @ p  # the reader's output with the group whole
                    keep = _kept_columns(module, idx, root, counts, kernel)
                    pk = p[keep]
                    g, c, n = stats.get(name, (0.0, 0.0, 0))
                    stats[name] = (g + pk @ pk.T, c + pk @ target.T, n + pk.shape[1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name, idx, root in readers:
        if name not in stats:
            continue
        module = named[name]
        kernel = _weight2d(module).shape[1] // _in_width(module)
        keep = _kept_columns(module, idx, root, counts, kernel)
        s = reader_scale(module, idx, root, scale.reshape(1, -1))[0].repeat_interleave(kernel)
        folded = (_weight2d(module) * s.to(module.weight)).double()[:, keep]
        gram, cross, positions = stats[name]
        every = torch.arange(gram.shape[0])
        solved = ridge_refit(gram, cross, every, folded, positions, ridge)
        weight = torch.zeros_like(_weight2d(module), dtype=torch.float64)
        weight[:, keep] = solved
        out[name] = weight.to(module.weight.dtype).reshape(module.weight.shape)
    return out


def _in_width(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _kept_columns(module: nn.Module, idx: torch.Tensor, root: torch.Tensor, counts: torch.Tensor,
                  kernel: int) -> torch.Tensor:
    """Columns of the reader's 2-d weight that survive: inputs not in the group, and the group's kept ones."""
    alive = torch.ones(_in_width(module), dtype=torch.bool)
    alive[idx] = counts[root] > 0
    return torch.nonzero(alive.repeat_interleave(kernel)).flatten().to(module.weight.device)
