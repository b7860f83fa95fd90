"""Mask while searching, fold when done.

While a group is searched, channel j is seen by the layers that read the group scaled by
``D * count_j / |S|`` (0 when not chosen) - :class:`apply_masks` puts those scales on the readers'
inputs with forward pre-hooks. When the group stops, :func:`fold_and_remove` multiplies the scales into
the readers' weights and has Torch-Pruning remove the channels with count 0, so the network gets really
smaller and computes what the masked network did.

Why at the readers: between the layers that write a channel and those that read it (mix it with other
channels: a non-depthwise convolution or a linear layer) there are only per-channel operations (batch
norm, activations, depthwise convolutions, residual additions, pooling), so scaling where the channel is
read is exactly what removing it (scale 0) and folding a scale into the readers' weights do.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidOptionError
from .groups import ChannelGroup, refresh_group

__all__ = ["apply_masks", "channel_view", "fold_and_remove", "group_scales", "reader_scale", "reads_last_dim",
           "scale_input"]


def reader_scale(module: nn.Module, idx: torch.Tensor, root: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(K, C_in) scale of a reader's input channels from (K, D) group scales (1 where not in the group)."""
    c_in = module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features
    out = torch.ones(scale.shape[0], c_in, dtype=scale.dtype, device=scale.device)
    out[:, idx.to(scale.device)] = scale[:, root.to(scale.device)]
    return out


def channel_view(K: int, C: int, dims: int, last: bool) -> tuple[int, ...]:
    """The shape that broadcasts (K, C) scales over a (K, B, ...) stack of inputs with ``dims`` dimensions
    per batch: channels in dimension 1 (convolutions), or in the last one (``last``: linear layers, which
    read the last dimension - (batch, tokens, features) inputs included)."""
    return (K, 1) + ((1,) * (dims - 2) + (C,) if last else (C,) + (1,) * (dims - 2))


def reads_last_dim(module: nn.Module) -> bool:
    """Whether a reader mixes its input's last dimension (linear layers) rather than dimension 1."""
    return isinstance(module, nn.Linear)


def scale_input(x: torch.Tensor, s: torch.Tensor, K: int, last: bool = False) -> torch.Tensor:
    """x: (K*B, C, ...) - or (K*B, ..., C) with ``last`` - or (B, ...) with K == 1; s: (K, C)."""
    if x.shape[0] % K:
        raise RuntimeError("stacked batch is not a multiple of the number of candidates")
    B = x.shape[0] // K
    view = channel_view(K, s.shape[1], x.dim(), last)
    return (x.reshape(K, B, *x.shape[1:]) * s.reshape(view)).reshape(K * B, *x.shape[1:])


def group_scales(counts: torch.Tensor) -> torch.Tensor:
    """The mask of "Good Subnetworks Provably Exist": ``D * count_j / |S|`` for the D channels."""
    total = counts.sum()
    return counts.to(torch.float32) * (counts.numel() / max(int(total), 1))


class apply_masks:
    """Context manager: every reader of each group sees channel j scaled by ``scales[group][j]``.

    ``scales`` maps a :class:`ChannelGroup` to a (D,) tensor; the hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, scales: dict[ChannelGroup, torch.Tensor]):
        self.model, self.scales, self.hooks = model, scales, []

    def __enter__(self) -> "apply_masks":
        named = dict(self.model.named_modules())
        per_reader: dict[str, list] = {}
        for group, scale in self.scales.items():
            for name, idx, root in group.readers:
                per_reader.setdefault(name, []).append((idx, root, scale))
        for name, parts in per_reader.items():
            module = named[name]
            s = None
            for idx, root, scale in parts:
                part = reader_scale(module, idx, root, scale.reshape(1, -1))
                s = part if s is None else s * part
            last = reads_last_dim(module)
            self.hooks.append(module.register_forward_pre_hook(
                lambda mod, args, s=s, last=last: (scale_input(args[0], s.to(args[0].dtype), 1, last),)
                + tuple(args[1:])))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def set_bias(module: nn.Module, bias: torch.Tensor) -> None:
    """Give ``module`` (a convolution or linear layer) the bias ``bias``, adding the parameter if it has none
    (:func:`~greedyprune.channels.io.load_pruned` adds it back the same way)."""
    bias = bias.detach().to(module.weight)
    if module.bias is None:
        module.bias = nn.Parameter(bias.clone(), requires_grad=module.weight.requires_grad)
    else:
        with torch.no_grad():
            module.bias.copy_(bias)


def fold_and_remove(DG, model: nn.Module, group: ChannelGroup, counts: torch.Tensor,
                    scale: torch.Tensor | None = None, reader_weights: dict | None = None,
                    reader_biases: dict | None = None) -> list[int]:
    """Fold the group's scales into the readers' weights and remove the channels with count 0.

    ``scale`` defaults to :func:`group_scales` of ``counts``. ``reader_weights`` (reader name -> weight in
    the reader's full layout) replaces folding for those readers (a least-squares refit); ``reader_biases``
    (reader name -> bias) replaces their biases (a reader without one gets one: :func:`set_bias`). Returns the kept
    channel indices; the model changes in place (Torch-Pruning removes the channels from writers, norms
    and readers alike).
    """
    group = refresh_group(DG, model, group)
    counts = torch.as_tensor(counts)
    if counts.numel() != group.channels:
        raise InvalidOptionError(
            f"counts has {counts.numel()} entries but group {group.name!r} has {group.channels} channels")
    if int(counts.sum()) <= 0:
        raise InvalidOptionError(f"group {group.name!r}: no channel was selected; at least one must be kept")
    scale = (group_scales(counts) if scale is None else scale.to(torch.float32)).reshape(1, -1)
    named = dict(model.named_modules())
    with torch.no_grad():
        for name, idx, root in group.readers:
            module = named[name]
            if reader_weights and name in reader_weights:
                module.weight.copy_(reader_weights[name])
                if reader_biases and name in reader_biases:
                    set_bias(module, reader_biases[name])
                continue
            s = reader_scale(module, idx, root, scale)[0].to(module.weight.dtype)
            groups = getattr(module, "groups", 1)
            if groups > 1:  # a grouped conv's weight holds in_channels / groups inputs, the same in every group
                per_group = s.reshape(groups, -1)
                if not torch.equal(per_group, per_group[:1].expand_as(per_group)):
                    raise InvalidOptionError(
                        f"group {group.name!r}: the scales of grouped convolution {name!r} differ between "
                        f"its conv groups; select its channels in units (ChannelGroup.units)")
                s = per_group[0]
            shape = (1, -1) + (1,) * (module.weight.dim() - 2)
            module.weight.mul_(s.to(module.weight.device).reshape(shape))
    remove = [i for i in range(group.channels) if int(counts[i]) == 0]
    if remove:
        DG.get_pruning_group(group.root, group.root_fn, remove).prune()
    return [i for i in range(group.channels) if int(counts[i]) > 0]
