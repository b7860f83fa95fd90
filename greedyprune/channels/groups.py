"""Channel groups: the sets of channels that must be removed together.

Torch-Pruning's ``DependencyGraph`` finds them: the output channels of a layer with everything coupled
to them (its batch norm, the next layers' input channels, depthwise convolutions; a residual stream is
one group, as every layer writing into it must keep the same channels). This module turns its groups
into :class:`ChannelGroup` records - who writes the channels, who *reads* them (mixes them into other
channels: where the search's mask acts) - and refuses layers whose channels cannot be masked and
removed exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["ChannelGroup", "UnsupportedLayerError", "execution_order", "find_groups", "refresh_group"]

_SUPPORTED_PARAM_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
                          nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)


class UnsupportedLayerError(ValueError):
    """A layer in a channel group that greedy forward selection cannot mask or Torch-Pruning cannot prune."""


@dataclass(eq=False)
class ChannelGroup:
    """One prunable set of coupled channels.

    Attributes:
        name: the qualified name of the group's root layer (its first writer in forward order).
        channels: number of channels D when the group was found.
        writers: names of the conv / linear layers whose output channels are the group's channels.
        readers: ``(layer name, reader channel indices, group channel indices)``: the layers that mix
            the group's channels (non-depthwise conv, linear), and which of their input channels hold
            which group channel (a flatten before a linear maps one channel to several inputs).
        order: position of the first writer in forward execution order.
    """

    name: str
    channels: int
    writers: list[str]
    readers: list[tuple[str, torch.Tensor, torch.Tensor]]
    order: int
    root: nn.Module = field(repr=False, default=None)
    root_fn: Any = field(repr=False, default=None)


def execution_order(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, int]:
    """Every module that runs on ``example_inputs``, mapped to the position of its first call."""
    order: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple) -> None:
        order.setdefault(module, len(order))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


def is_depthwise(module: nn.Module) -> bool:
    """A convolution that maps each input channel to its own output channel(s) (groups == in_channels)."""
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels and module.groups > 1


def _default_skip(model: nn.Module, order: dict[nn.Module, int]) -> list[nn.Module]:
    """The first convolution, the classifier (last linear / conv in forward order) and whatever the
    model asks to leave whole (``model.greedyprune_skip_layers()``, e.g. residual streams with the
    parameter-free "A" shortcut)."""
    layers = sorted((m for m in order if isinstance(m, (nn.Conv2d, nn.Linear))), key=order.get)
    skip = [layers[0], layers[-1]] if layers else []
    extra = getattr(model, "greedyprune_skip_layers", None)
    if callable(extra):
        skip += list(extra())
    return skip


def _resolve_layers(model: nn.Module, layers: Iterable, what: str) -> list[nn.Module]:
    named = dict(model.named_modules())
    out = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in named:
                raise ValueError(f"{what}: the model has no layer named {layer!r}; names look like "
                                 f"{[n for n in list(named)[1:4]]}")
            out.append(named[layer])
        elif isinstance(layer, nn.Module):
            out.append(layer)
        else:
            raise TypeError(f"{what}: expected layer names or modules, got {type(layer).__name__}")
    return out


def _build_graph(model: nn.Module, example_inputs: torch.Tensor):
    import torch_pruning as tp

    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd, even if the caller is in no_grad
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised with what to do
        raise UnsupportedLayerError(
            f"Torch-Pruning could not trace the model ({type(exc).__name__}: {exc}); check that "
            f"model(example_inputs) runs on inputs of shape {tuple(example_inputs.shape)}") from exc


def _elementwise_pruner(DG):
    import torch_pruning as tp

    return DG.REGISTERED_PRUNERS.get(tp.ops.OPTYPE.ELEMENTWISE)


def _group_info(DG, group, names: dict[nn.Module, str]) -> tuple[list[str], list]:
    """Writers and readers of a Torch-Pruning group; raises on layers that cannot be masked/pruned."""
    writers, readers = [], []
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if isinstance(module, nn.Parameter):
            pname = getattr(DG, "_param_to_name", {}).get(module, "?")
            owner = pname.rsplit(".", 1)[0] if "." in pname else "(model)"
            owner_type = type(dict(DG.model.named_modules()).get(owner, DG.model)).__name__
            raise UnsupportedLayerError(
                f"layer {owner!r} ({owner_type}) uses its parameter {pname!r} directly in forward, on the channels "
                f"of group {names.get(group[0].dep.target.module, '?')!r}; Torch-Pruning has no pruner for this "
                f"layer and would have to guess which dimension to cut. Register a pruner for {owner_type} "
                f"(DependencyGraph.register_customized_layer), or leave these channels whole with skip=[...] "
                f"naming the layers that write them")
        name = names.get(module, type(module).__name__)
        own_params = list(module.parameters(recurse=False)) if isinstance(module, nn.Module) else []
        if own_params and not isinstance(module, _SUPPORTED_PARAM_TYPES) and DG.get_pruner_of_module(module) \
                is _elementwise_pruner(DG):
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) has parameters but Torch-Pruning has no pruner for "
                f"it, so removing channels would leave it inconsistent. Register one with "
                f"DependencyGraph.register_customized_layer (pass customized_pruners={{{type(module).__name__}: "
                f"pruner}}), or leave its channels whole with skip=[...] naming the layers that write them")
        if DG.is_out_channel_pruning_fn(dep.handler):
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Conv1d)):
                writers.append(name)
            continue
        if not DG.is_in_channel_pruning_fn(dep.handler):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if is_depthwise(module):
                continue  # per-channel: the channel passes through to the next reader
            if module.groups != 1:
                raise UnsupportedLayerError(
                    f"layer {name!r} is a grouped convolution (groups={module.groups}) reading a pruned group; "
                    f"greedy forward selection cannot mask grouped convolutions. Leave the group whole with "
                    f"skip=[...] naming the layers that write these channels")
        elif not isinstance(module, nn.Linear):
            if own_params and not isinstance(module, _SUPPORTED_PARAM_TYPES):
                raise UnsupportedLayerError(
                    f"layer {name!r} ({type(module).__name__}) mixes the channels of a pruned group and is not a "
                    f"conv or linear layer, so its channels cannot be masked. Leave the group whole with "
                    f"skip=[...] naming the layers that write these channels")
            continue
        idx = torch.as_tensor([int(i) for i in idxs], dtype=torch.long)
        root = torch.as_tensor([int(i) for i in item.root_idxs], dtype=torch.long)
        readers.append((name, idx, root))
    return writers, readers


def find_groups(model: nn.Module, example_inputs: torch.Tensor, skip: Iterable | None = None,
                *, extra_skip: Iterable = ()) -> tuple[Any, list[ChannelGroup]]:
    """The prunable channel groups of ``model``, in forward order, and Torch-Pruning's graph.

    The model is traced in eval mode; every submodule's training flag is restored afterwards.

    Args:
        model: the network.
        example_inputs: a batch the model accepts (one example is enough).
        skip: layers (modules or qualified names) whose groups are left whole. ``None`` (default) skips
            the first convolution, the classifier, and ``model.greedyprune_skip_layers()`` if defined.
        extra_skip: more layers to skip on top of ``skip``.

    Raises:
        UnsupportedLayerError: a layer in a group that cannot be masked or pruned; the message names
            the layer and what to do.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        order = execution_order(model, example_inputs)
        names = {m: n for n, m in model.named_modules()}
        skip_layers = _default_skip(model, order) if skip is None else _resolve_layers(model, skip, "skip")
        skip_layers += _resolve_layers(model, extra_skip, "skip")
        DG = _build_graph(model, example_inputs)
    finally:
        for m, flag in flags:
            m.training = flag
    named = dict(model.named_modules())
    groups = []
    for group in DG.get_all_groups(ignored_layers=list(skip_layers), root_module_types=(nn.Conv2d, nn.Linear)):
        root_module, root_fn = group[0].dep.target.module, group[0].dep.handler
        writers, readers = _group_info(DG, group, names)
        if not readers:
            continue  # nothing reads the channels (e.g. the network output): nothing to select
        first = min(writers, key=lambda n: order.get(named[n], 1 << 30))
        groups.append(ChannelGroup(name=first, channels=len(group[0].idxs), writers=writers, readers=readers,
                                   order=order.get(named[first], 1 << 30), root=root_module, root_fn=root_fn))
    groups.sort(key=lambda g: g.order)
    return DG, groups


def refresh_group(DG, model: nn.Module, group: ChannelGroup) -> ChannelGroup:
    """Re-read a group's readers after earlier groups were removed (their indices may have moved)."""
    names = {m: n for n, m in model.named_modules()}
    channels = DG.get_out_channels(group.root)
    tp_group = DG.get_pruning_group(group.root, group.root_fn, list(range(channels)))
    writers, readers = _group_info(DG, tp_group, names)
    return ChannelGroup(group.name, channels, writers, readers, group.order, group.root, group.root_fn)
