"""Channel groups: the sets of channels that must be removed together.

Torch-Pruning's ``DependencyGraph`` finds them: the output channels of a layer with everything coupled
to them (its batch norm, the next layers' input channels, depthwise convolutions; a residual stream is
one group, as every layer writing into it must keep the same channels). This module turns its groups
into :class:`ChannelGroup` records - who writes the channels, who *reads* them (mixes them into other
channels: where the search's mask acts) - and refuses layers whose channels cannot be masked and
removed exactly.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import GreedyPruneError, InvalidOptionError, InvalidTypeError

__all__ = ["ChannelGroup", "GroupDiscoveryTimeout", "UnsupportedLayerError", "execution_order", "find_groups",
           "refresh_group"]

_SUPPORTED_PARAM_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
                          nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)


class UnsupportedLayerError(GreedyPruneError, ValueError):
    """A layer in a channel group that greedy forward selection cannot mask or Torch-Pruning cannot prune."""


@dataclass(eq=False)
class ChannelGroup:
    """One prunable set of coupled channels.

    Attributes:
        name: the qualified name of the group's first writer in forward order. (Torch-Pruning's root layer,
            :attr:`root`, may be another writer: a residual stream's projection shortcut, for instance.)
        channels: number of channels D when the group was found.
        writers: names of the conv / linear layers whose output channels are the group's channels.
        readers: ``(layer name, reader channel indices, group channel indices)``: the layers that mix
            the group's channels (non-depthwise conv, linear), and which of their input channels hold
            which group channel (a flatten before a linear maps one channel to several inputs).
        order: position of the first writer in forward execution order.
        units: None (each channel is selected on its own) or a (channels,) tensor of unit ids: the channels
            of a unit are selected and removed together (grouped convolutions, see :func:`_units`).
        root, root_fn: the module and pruning function Torch-Pruning's dependency graph is entered by for this
            group (the layer the ``"l1"`` and ``"fpgm"`` baselines read).
    """

    name: str
    channels: int
    writers: list[str]
    readers: list[tuple[str, torch.Tensor, torch.Tensor]]
    order: int
    root: nn.Module = field(repr=False, default=None)
    root_fn: Any = field(repr=False, default=None)
    units: torch.Tensor | None = field(repr=False, default=None)

    @property
    def num_units(self) -> int:
        """How many selection units the group has (its channels, unless they are tied in units)."""
        return self.channels if self.units is None else int(self.units.max()) + 1

    def channel_counts(self, unit_counts: torch.Tensor) -> torch.Tensor:
        """Per-channel counts from per-unit counts."""
        return unit_counts if self.units is None else unit_counts[self.units]


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
    """The classifier (last linear / conv in forward order) and whatever the model asks to leave whole
    (``model.greedyprune_skip_layers()``, e.g. residual streams with the parameter-free "A" shortcut).
    The input layer is protected by :func:`find_groups` only when its outputs form a group of their own."""
    layers = sorted((m for m in order if isinstance(m, (nn.Conv2d, nn.Linear))), key=order.get)
    skip = [layers[-1]] if layers else []
    extra = getattr(model, "greedyprune_skip_layers", None)
    if callable(extra):
        skip += list(extra())
    return skip


def _input_layer(order: dict[nn.Module, int]) -> nn.Module | None:
    layers = sorted((m for m in order if isinstance(m, (nn.Conv2d, nn.Linear))), key=order.get)
    return layers[0] if layers else None


def _resolve_layers(model: nn.Module, layers: Iterable, what: str) -> list[nn.Module]:
    named = dict(model.named_modules())
    out = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in named:
                raise InvalidOptionError(f"{what}: the model has no layer named {layer!r}; names look like "
                                         f"{[n for n in list(named)[1:4]]}")
            out.append(named[layer])
        elif isinstance(layer, nn.Module):
            out.append(layer)
        else:
            raise InvalidTypeError(f"{what}: expected layer names or modules, got {type(layer).__name__}")
    return out


class GroupDiscoveryTimeout(UnsupportedLayerError):
    """Torch-Pruning's group discovery did not finish within the time limit."""


@contextlib.contextmanager
def _time_limit(seconds: float | None, what: str):
    """Raise GroupDiscoveryTimeout if the block runs longer than ``seconds`` (main thread on Unix only;
    elsewhere the block runs without a limit). A timer the caller set (``signal.alarm``, ``setitimer``) is
    left alone: if one is running, the block runs under the caller's timer and no limit of ours, and the
    caller's handler and remaining time are untouched."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if usable and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        usable = False  # the caller's own timer is running: never reset or replace it
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise GroupDiscoveryTimeout(f"{what} did not finish within {seconds:g} s (some architectures make "
                                    f"Torch-Pruning's dependency search very slow). Raise the limit with "
                                    f"discovery_timeout=..., or leave the slow part whole with skip=[...]")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    inner = next((f for f in reversed(frames) if "torch_pruning" in f.filename), frames[-1] if frames else None)
    return f" in {inner.name} ({Path(inner.filename).name}:{inner.lineno})" if inner else ""


def _build_graph(model: nn.Module, example_inputs: torch.Tensor, timeout_s: float | None = None):
    import torch_pruning as tp

    try:
        with torch.enable_grad(), _time_limit(timeout_s, "Torch-Pruning's dependency graph"):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except GroupDiscoveryTimeout:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the real cause
        try:
            with torch.no_grad():
                model(example_inputs)
            runs = True
        except Exception:  # noqa: BLE001
            runs = False
        if not runs:
            raise UnsupportedLayerError(
                f"the model does not run on inputs of shape {tuple(example_inputs.shape)}, so Torch-Pruning cannot "
                f"trace it ({type(exc).__name__}: {exc}); pass inputs shaped as the model expects") from exc
        raise UnsupportedLayerError(
            f"Torch-Pruning's dependency tracer failed on this model ({type(exc).__name__}: {exc}{_where(exc)}). "
            f"The model itself runs on these inputs, so this is a limitation of the tracer for one of its layers, "
            f"not an input problem; leave the layers involved whole with skip=[...] (or extra_skip=[...])") from exc


def _elementwise_pruner(DG):
    import torch_pruning as tp

    return DG.REGISTERED_PRUNERS.get(tp.ops.OPTYPE.ELEMENTWISE)


def _group_info(DG, group, names: dict[nn.Module, str]) -> tuple[list[str], list, torch.Tensor | None]:
    """Writers, readers and selection units of a Torch-Pruning group; raises on layers that cannot be
    masked/pruned."""
    writers, readers, grouped = [], [], []
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if isinstance(module, nn.Parameter):
            if _pruned_as_channels(module, len(group[0].idxs)):
                continue  # a per-channel parameter (a layer scale): Torch-Pruning cuts the right dimension
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
        if isinstance(module, nn.MultiheadAttention):
            raise UnsupportedLayerError(
                f"layer {name!r} (MultiheadAttention) reads the channels of group "
                f"{names.get(group[0].dep.target.module, '?')!r}: pruning them would change its embedding and head "
                f"size, which greedy forward selection cannot mask exactly. Leave the group whole with skip=[...] "
                f"naming the layers that write these channels (prune transformers' feed-forward blocks and heads "
                f"with greedyprune.transformers instead)")
        if _mixes_channels(module):
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) normalises over the channels of group "
                f"{names.get(group[0].dep.target.module, '?')!r}: removing channels changes its statistics, which "
                f"masking cannot reproduce. Leave the group whole with skip=[...] naming the layers that write "
                f"these channels, or pass unsupported='skip' to leave every such group whole")
        own_params = list(module.parameters(recurse=False)) if isinstance(module, nn.Module) else []
        if own_params and not isinstance(module, _SUPPORTED_PARAM_TYPES) and DG.get_pruner_of_module(module) \
                is _elementwise_pruner(DG):
            raise UnsupportedLayerError(
                f"layer {name!r} ({type(module).__name__}) has parameters but Torch-Pruning has no pruner for "
                f"it, so removing channels would leave it inconsistent. Register one with "
                f"DependencyGraph.register_customized_layer (pass customized_pruners={{{type(module).__name__}: "
                f"pruner}}), or leave its channels whole with skip=[...] naming the layers that write them")
        is_grouped = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups > 1 \
            and not is_depthwise(module)
        if is_grouped:
            grouped.append((name, module, item, DG.is_out_channel_pruning_fn(dep.handler)))
        if DG.is_out_channel_pruning_fn(dep.handler):
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Conv1d)):
                writers.append(name)
            continue
        if not DG.is_in_channel_pruning_fn(dep.handler):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if is_depthwise(module):
                continue  # per-channel: the channel passes through to the next reader
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
    return writers, readers, _units(grouped, len(group[0].idxs))


def _units(grouped: list, channels: int) -> torch.Tensor | None:
    """Selection units of a group that a grouped convolution writes or reads: Torch-Pruning keeps a grouped
    convolution's groups and removes the same positions from every conv group, so channel c belongs to
    unit ``c mod (channels / groups)``. None when no grouped convolution is involved (one channel a unit)."""
    if not grouped:
        return None
    sizes = {module.groups for _, module, _, _ in grouped}
    for name, module, item, is_out in grouped:
        idx = [int(i) for i in item.idxs]
        root = [int(i) for i in item.root_idxs]
        width = module.out_channels if is_out else module.in_channels
        if len(sizes) != 1 or idx != root or len(idx) != channels or width != channels or channels % module.groups:
            raise UnsupportedLayerError(
                f"layer {name!r} is a grouped convolution (groups={module.groups}) whose channels do not line up "
                f"with the group's ({channels} channels); greedy forward selection can only prune a group read or "
                f"written one-to-one by grouped convolutions of one group count. Leave it whole with skip=[...]")
    return torch.arange(channels) % (channels // sizes.pop())


def _mixes_channels(module) -> bool:
    """A normalisation whose statistics are taken over several of a group's channels."""
    if isinstance(module, nn.LayerNorm):
        return True
    return isinstance(module, nn.GroupNorm) and module.num_groups != module.num_channels


def _pruned_as_channels(param: torch.Tensor, channels: int) -> bool:
    """Whether Torch-Pruning's default for a bare parameter - cut its last non-singleton dimension - cuts
    the group's channels: that dimension has the group's size and no other dimension does."""
    sizes = [d for d in param.shape if d != 1]
    return bool(sizes) and sizes[-1] == channels and sizes.count(channels) == 1


def find_groups(model: nn.Module, example_inputs: torch.Tensor, skip: Iterable | None = None,
                *, extra_skip: Iterable = (), timeout_s: float | None = 300.0,
                unsupported: str = "error") -> tuple[Any, list[ChannelGroup]]:
    """The prunable channel groups of ``model``, in forward order, and Torch-Pruning's graph.

    The model is traced in eval mode; every submodule's training flag is restored afterwards.

    Args:
        model: the network.
        example_inputs: a batch the model accepts (one example is enough).
        skip: layers (modules or qualified names) whose groups are left whole. ``None`` (default) skips
            the classifier, ``model.greedyprune_skip_layers()`` if defined, and the input layer's outputs
            when they are a group of their own (an input layer that writes a residual stream is pruned
            with the stream, as Torch-Pruning does).
        extra_skip: more layers to skip on top of ``skip``.
        timeout_s: time limit on Torch-Pruning's group discovery (None: no limit).
        unsupported: "error" raises on a group that cannot be masked or pruned; "skip" leaves such a group
            whole with a warning that says why.

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
        DG = _build_graph(model, example_inputs, timeout_s)
        with _time_limit(timeout_s, "Torch-Pruning's group discovery"):
            tp_groups = list(DG.get_all_groups(ignored_layers=list(skip_layers),
                                               root_module_types=(nn.Conv2d, nn.Linear)))
    finally:
        for m, flag in flags:
            m.training = flag
    named = dict(model.named_modules())
    stem = _input_layer(order) if skip is None else None
    groups = []
    for group in tp_groups:
        root_module, root_fn = group[0].dep.target.module, group[0].dep.handler
        try:
            writers, readers, units = _group_info(DG, group, names)
        except UnsupportedLayerError as exc:
            if unsupported != "skip":
                raise
            warnings.warn(f"left whole: {exc}", stacklevel=2)
            continue
        if not readers:
            continue  # nothing reads the channels (e.g. the network output): nothing to select
        if stem is not None and writers == [names.get(stem)]:
            continue  # the input layer's own outputs (not a residual stream): left whole by default
        first = min(writers, key=lambda n: order.get(named[n], 1 << 30))
        groups.append(ChannelGroup(name=first, channels=len(group[0].idxs), writers=writers, readers=readers,
                                   order=order.get(named[first], 1 << 30), root=root_module, root_fn=root_fn,
                                   units=units))
    groups.sort(key=lambda g: g.order)
    return DG, groups


def refresh_group(DG, model: nn.Module, group: ChannelGroup) -> ChannelGroup:
    """Re-read a group's readers after earlier groups were removed (their indices may have moved)."""
    names = {m: n for n, m in model.named_modules()}
    channels = DG.get_out_channels(group.root)
    tp_group = DG.get_pruning_group(group.root, group.root_fn, list(range(channels)))
    writers, readers, units = _group_info(DG, tp_group, names)
    return ChannelGroup(group.name, channels, writers, readers, group.order, group.root, group.root_fn, units)
