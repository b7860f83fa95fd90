"""Greedy forward selection of channels in deep networks (layer-wise GFS).

The method of "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection", as used in
Appendix E of "How much pre-training is enough to discover a good subnetwork?". Channel groups are
found with Torch-Pruning's ``DependencyGraph``: a group is every set of channels that must be removed
together (a residual stream is one group: every layer writing into it keeps the same channels).
Groups are pruned one at a time, from input to output. For a group with D channels, a multiset S of
channels is grown greedily; while searching, channel j is seen by the layers that read the group
scaled by ``D * count_j / |S|`` (0 when not chosen), and each step adds the candidate channel that
gives the lowest cross-entropy of the *whole* network on a mini-batch, all other layers fixed.

"Mask while searching, fold when done": when a group stops, the scales are multiplied into the
weights of the layers that read it and the channels not chosen are physically removed by
Torch-Pruning, so the network gets really smaller. The masked and the pruned network compute the
same function (up to float rounding).

Where the mask acts. A channel's value is scaled where a *channel-mixing* layer reads it (a
non-depthwise convolution or a linear layer). Between the layers that write a channel and those
that read it there are only per-channel operations (batch norm, activations, depthwise
convolutions, residual additions, pooling), so scaling at the readers is exactly what removing a
channel (scale 0) and folding a scale into the readers' weights do.

Speed. Nothing that does not depend on the candidate is recomputed: the network is traced with
``torch.fx``, the nodes upstream of the readers of the group are evaluated once per batch, and only
the nodes downstream are run per candidate, with many candidates stacked along the batch dimension
in one forward (memory-capped), under ``torch.inference_mode``. The "reference" method of the
public implementation (one full forward of the masked network per candidate) is kept for checking
and benchmarks, and is the fallback for networks ``torch.fx`` cannot trace.
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ChannelGroup",
    "DeepPruneResult",
    "UnsupportedLayerError",
    "apply_masks",
    "find_groups",
    "fold_and_remove",
    "load_pruned",
    "prune_model",
    "save_pruned",
]

METHODS = ("auto", "fast", "reference")
PRUNED_FORMAT = "greedyprune-pruned-v1"
_CPU_STACK_ELEMENTS = 1 << 19  # ~2 MB activations: on CPU, stacks that stay in cache beat bigger ones
_GPU_STACK_ELEMENTS = 1 << 28
_SUPPORTED_PARAM_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
                          nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)


class UnsupportedLayerError(ValueError):
    """A layer in a channel group that greedy forward selection cannot mask or Torch-Pruning cannot prune."""


# ----------------------------------------------------------------------------------------------------
# Channel groups


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


def _execution_order(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, int]:
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


def _is_depthwise(module: nn.Module) -> bool:
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


def _group_info(DG, group, names: dict[nn.Module, str], skip_set: set) -> tuple[list[str], list]:
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
                is DG.REGISTERED_PRUNERS.get(_elementwise_type()):
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
            if _is_depthwise(module):
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


def _elementwise_type():
    import torch_pruning as tp

    return tp.ops.OPTYPE.ELEMENTWISE


def find_groups(model: nn.Module, example_inputs: torch.Tensor, skip: Iterable | None = None,
                *, extra_skip: Iterable = ()) -> tuple[Any, list[ChannelGroup]]:
    """The prunable channel groups of ``model``, in forward order, and Torch-Pruning's graph.

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
    model.eval()
    order = _execution_order(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    skip_layers = _default_skip(model, order) if skip is None else _resolve_layers(model, skip, "skip")
    skip_layers += _resolve_layers(model, extra_skip, "skip")
    DG = _build_graph(model, example_inputs)
    skip_set = set(skip_layers)
    groups = []
    for group in DG.get_all_groups(ignored_layers=list(skip_layers), root_module_types=(nn.Conv2d, nn.Linear)):
        root_module, root_fn = group[0].dep.target.module, group[0].dep.handler
        writers, readers = _group_info(DG, group, names, skip_set)
        if not readers:
            continue  # nothing reads the channels (e.g. the network output): nothing to select
        named = dict(model.named_modules())
        first = min(writers, key=lambda n: order.get(named[n], 1 << 30))
        channels = len(group[0].idxs)
        groups.append(ChannelGroup(name=first, channels=channels, writers=writers, readers=readers,
                                   order=order.get(named[first], 1 << 30), root=root_module, root_fn=root_fn))
    groups.sort(key=lambda g: g.order)
    return DG, groups


def _refresh(DG, model: nn.Module, group: ChannelGroup) -> ChannelGroup:
    """Re-read a group's readers after earlier groups were removed (their indices may have moved)."""
    names = {m: n for n, m in model.named_modules()}
    channels = DG.get_out_channels(group.root)
    tp_group = DG.get_pruning_group(group.root, group.root_fn, list(range(channels)))
    writers, readers = _group_info(DG, tp_group, names, set())
    return ChannelGroup(group.name, channels, writers, readers, group.order, group.root, group.root_fn)


# ----------------------------------------------------------------------------------------------------
# Masks


def _reader_scale(module: nn.Module, idx: torch.Tensor, root: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(K, C_in) scale of a reader's input channels from (K, D) group scales (1 where not in the group)."""
    c_in = module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features
    out = torch.ones(scale.shape[0], c_in, dtype=scale.dtype, device=scale.device)
    out[:, idx.to(scale.device)] = scale[:, root.to(scale.device)]
    return out


def _scale_input(x: torch.Tensor, s: torch.Tensor, K: int) -> torch.Tensor:
    """x: (K*B, C, ...) or (B, C, ...) with K == 1 broadcast; s: (K, C). Returns (K*B, C, ...)."""
    if x.shape[0] % K:
        raise RuntimeError("stacked batch is not a multiple of the number of candidates")
    B = x.shape[0] // K
    view = (K, 1, s.shape[1]) + (1,) * (x.dim() - 2)
    return (x.reshape(K, B, *x.shape[1:]) * s.reshape(view)).reshape(K * B, *x.shape[1:])


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
                part = _reader_scale(module, idx, root, scale.reshape(1, -1))
                s = part if s is None else s * part
            self.hooks.append(module.register_forward_pre_hook(
                lambda mod, args, s=s: (_scale_input(args[0], s.to(args[0].dtype), 1),) + tuple(args[1:])))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def _group_scales(counts: torch.Tensor) -> torch.Tensor:
    """The SPEC's mask: D * count_j / |S|."""
    total = counts.sum()
    return counts.to(torch.float32) * (counts.numel() / max(int(total), 1))


def fold_and_remove(DG, model: nn.Module, group: ChannelGroup, counts: torch.Tensor) -> list[int]:
    """Fold the scales ``D * count_j / |S|`` into the readers' weights and remove the channels with
    count 0 (Torch-Pruning). Returns the kept channel indices. The model changes in place."""
    group = _refresh(DG, model, group)
    counts = torch.as_tensor(counts)
    if counts.numel() != group.channels:
        raise ValueError(f"counts has {counts.numel()} entries but group {group.name!r} has {group.channels} channels")
    if int(counts.sum()) <= 0:
        raise ValueError(f"group {group.name!r}: no channel was selected; at least one must be kept")
    scale = _group_scales(counts).reshape(1, -1)
    named = dict(model.named_modules())
    with torch.no_grad():
        for name, idx, root in group.readers:
            module = named[name]
            s = _reader_scale(module, idx, root, scale)[0].to(module.weight.dtype)
            shape = (1, -1) + (1,) * (module.weight.dim() - 2)
            module.weight.mul_(s.to(module.weight.device).reshape(shape))
    remove = [i for i in range(group.channels) if int(counts[i]) == 0]
    if remove:
        DG.get_pruning_group(group.root, group.root_fn, remove).prune()
    return [i for i in range(group.channels) if int(counts[i]) > 0]


# ----------------------------------------------------------------------------------------------------
# Candidate evaluation


def _per_candidate(logits: torch.Tensor, y: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    B = y.shape[0]
    logits = logits.reshape(K, B, -1).float()
    ce = F.cross_entropy(logits.reshape(K * B, -1), y.repeat(K), reduction="none").reshape(K, B).mean(1)
    acc = (logits.argmax(-1) == y.unsqueeze(0)).float().mean(1)
    return ce, acc


class _Evaluator:
    """Losses and accuracies of the network with the group's channels scaled, one row per candidate."""

    def evaluate(self, scales: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def evaluate_step(self, base: torch.Tensor, cand: torch.Tensor, delta: float,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``base + delta * e_c`` for every candidate channel c."""
        rows = base.unsqueeze(0).repeat(cand.numel(), 1)
        rows[torch.arange(cand.numel()), cand.to(rows.device)] += delta
        return self.evaluate(rows, y)


class _ReferenceEvaluator(_Evaluator):
    """One full forward of the masked network per candidate (the public implementation's way)."""

    def __init__(self, model: nn.Module, group: ChannelGroup):
        self.model, self.group = model, group

    def prepare(self, x: torch.Tensor) -> None:
        self.x = x

    def evaluate(self, scales: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        for s in scales:
            with apply_masks(self.model, {self.group: s}):
                ce, acc = _per_candidate(self.model(self.x), y, 1)
            losses.append(ce)
            accs.append(acc)
        return torch.cat(losses), torch.cat(accs)


def _fused_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of conv followed by batch norm in eval mode, as one conv."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * factor.reshape(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * factor + shift


class _FastEvaluator(_Evaluator):
    """Runs the part of the network upstream of the group's readers once per batch, and only the part
    downstream per candidate, stacking candidates along the batch dimension.

    Batch norms that follow a convolution downstream are folded into it (eval mode), and on CPU the
    activations are kept channels-last. With ``linear_readers=True`` a reader whose input does not
    depend on the candidate computes its output as ``reader(x * s_base) + delta * reader_c(x_c)``:
    one shared product plus, per candidate, the contribution of that candidate's channel alone (a
    grouped convolution over the candidates), instead of a full reader per candidate.
    """

    def __init__(self, model: nn.Module, graph, group: ChannelGroup, stack_elements: int,
                 linear_readers: bool = False):
        self.model, self.group, self.stack_elements = model, group, stack_elements
        self.named = dict(model.named_modules())
        self.readers = {name: (idx, root) for name, idx, root in group.readers}
        self.nodes = list(graph.nodes)
        dependent, batched = set(), set()
        for n in self.nodes:
            ins = n.all_input_nodes
            if n.op == "placeholder" or any(i in batched for i in ins):
                batched.add(n)
            if (n.op == "call_module" and n.target in self.readers) or any(i in dependent for i in ins):
                dependent.add(n)
        missing = set(self.readers) - {n.target for n in self.nodes if n.op == "call_module"}
        if missing:
            raise RuntimeError(f"readers {sorted(missing)} are not called as modules in the traced graph")
        self.dependent, self.batched = dependent, batched
        needed = set()
        for n in self.nodes:
            if n in dependent:
                needed.update(i for i in n.all_input_nodes if i not in dependent)
        self.needed = needed  # independent values the downstream part reads
        self.per_sample = None
        self.linear: dict = {}
        # conv -> batch norm pairs downstream, folded for the search
        self.fused: dict = {}
        self.passthrough: set = set()
        for n in self.nodes:
            if n not in dependent or n.op != "call_module" or not isinstance(self.named[n.target], nn.BatchNorm2d):
                continue
            src = n.args[0] if n.args else None
            if (len(n.args) == 1 and not n.kwargs and getattr(src, "op", None) == "call_module"
                    and src in dependent and isinstance(self.named[src.target], nn.Conv2d)
                    and len(src.users) == 1 and self.named[n.target].track_running_stats
                    and self.named[n.target].running_var is not None):
                self.fused[src] = _fused_conv_bn(self.named[src.target], self.named[n.target])
                self.passthrough.add(n)
        # readers that read the group one-to-one from a candidate-independent input. Off by default:
        # on CPU the one-channel-per-group convolution it needs is slower than the reader it replaces.
        D = group.channels
        for n in self.nodes if linear_readers else ():
            if n.op != "call_module" or n.target not in self.readers or n.args[0] in dependent:
                continue
            module = self.named[n.target]
            idx, root = self.readers[n.target]
            if len(n.args) != 1 or n.kwargs or sorted(root.tolist()) != list(range(D)) or idx.numel() != D:
                continue
            if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
                pass
            elif isinstance(module, nn.Linear):
                pass
            else:
                continue
            to_input = torch.empty(D, dtype=torch.long)
            to_input[root] = idx
            self.linear[n] = to_input

    # -- fx node evaluation ----------------------------------------------------------------------
    def _fetch_attr(self, target: str):
        obj = self.model
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _run(self, n, args, kwargs):
        if n.op == "call_module":
            return self.named[n.target](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, n.target)(*rest, **kwargs)
        if n.op == "get_attr":
            return self._fetch_attr(n.target)
        raise RuntimeError(f"unexpected node {n.op}")

    def _call_layer(self, n, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """A reader / conv node on input x, with its batch norm folded in when there is one."""
        module = self.named[n.target]
        if n in self.fused or weight is not None:
            w, b = self.fused.get(n, (module.weight, module.bias))
            if weight is not None:
                w = weight
            if isinstance(module, nn.Conv2d):
                return F.conv2d(x, w, b, module.stride, module.padding, module.dilation, module.groups)
            return F.linear(x, w, b)
        return module(x)

    def prepare(self, x: torch.Tensor) -> None:
        """Evaluate every node that does not depend on the candidate (once per batch)."""
        import torch.fx as fx

        env: dict = {}
        last_use = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last_use[a] = i
        self.B = x.shape[0]
        if x.dim() == 4 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions; values unchanged
        keep = {}
        for i, n in enumerate(self.nodes):
            if n in self.dependent or n.op == "output":
                continue
            if n.op == "placeholder":
                env[n] = x
            else:
                args = fx.node.map_arg(n.args, lambda a: env[a])
                kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
                env[n] = self._run(n, args, kwargs)
            if n in self.needed:
                keep[n] = env[n]
            for a in n.all_input_nodes:
                if last_use.get(a) == i and a not in self.needed:
                    env.pop(a, None)
        self.cache = keep

    def _linear_reader(self, n, base: torch.Tensor, cand: torch.Tensor, delta: float) -> torch.Tensor:
        """(K*B, ...) output of a one-to-one reader of an independent input for rows base + delta e_c."""
        module = self.named[n.target]
        idx, root = self.readers[n.target]
        x = self.cache[n.args[0]]
        s = _reader_scale(module, idx, root, base.reshape(1, -1)).to(x.dtype)
        shared = self._call_layer(n, _scale_input(x, s, 1))  # (B, out, ...)
        w = self.fused[n][0] if n in self.fused else module.weight
        cols = self.linear[n][cand.cpu()].to(x.device)
        K, B = cand.numel(), x.shape[0]
        if isinstance(module, nn.Conv2d):
            wc = w[:, cols].transpose(0, 1).reshape(K * w.shape[0], 1, *w.shape[2:])
            part = F.conv2d(x[:, cols], wc, None, module.stride, module.padding, module.dilation, K)
            part = part.reshape(B, K, *shared.shape[1:]).transpose(0, 1)
        else:
            part = torch.einsum("bk,ok->kbo", x[:, cols], w[:, cols])
        return (shared.unsqueeze(0) + delta * part).reshape(K * B, *shared.shape[1:])

    def _forward(self, scales: torch.Tensor | None, record: bool = False, step: tuple | None = None) -> torch.Tensor:
        import torch.fx as fx

        K = scales.shape[0] if scales is not None else step[1].numel()
        B = self.B
        env: dict = {}
        expanded: dict = {}

        def value(a):
            if a in self.dependent:
                return env[a]
            v = self.cache[a]
            if a in self.batched and isinstance(v, torch.Tensor) and K > 1:
                if a not in expanded:
                    expanded[a] = torch.cat([v] * K)  # keeps the memory format (channels-last on CPU)
                return expanded[a]
            return v

        largest = 0
        out = None
        for n in self.nodes:
            if n.op == "output":
                out = fx.node.map_arg(n.args[0], value)
                break
            if n not in self.dependent:
                continue
            if n in self.passthrough:
                env[n] = env[n.args[0]]
                continue
            if n.op == "call_module" and n.target in self.readers:
                if step is not None and n in self.linear:
                    env[n] = self._linear_reader(n, *step)
                    continue
                module = self.named[n.target]
                x_node = n.args[0]
                x = env[x_node] if x_node in self.dependent else self.cache[x_node]
                idx, root = self.readers[n.target]
                rows = scales if scales is not None else self._rows(*step)
                s = _reader_scale(module, idx, root, rows).to(x.dtype)
                if x_node not in self.dependent and K > 1:
                    x = x.unsqueeze(0)
                    view = (1, s.shape[1]) + (1,) * (x.dim() - 3)
                    x = (x * s.reshape(K, *view)).reshape(K * B, *x.shape[2:])
                else:
                    x = _scale_input(x, s, K)
                if len(n.args) == 1 and not n.kwargs:
                    env[n] = self._call_layer(n, x)
                else:
                    args = (x,) + tuple(fx.node.map_arg(n.args[1:], value))
                    env[n] = module(*args, **fx.node.map_arg(n.kwargs, value))
            elif n in self.fused:
                env[n] = self._call_layer(n, value(n.args[0]))
            else:
                env[n] = self._run(n, fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value))
            if record and isinstance(env[n], torch.Tensor):
                largest = max(largest, env[n].numel() // max(K * B, 1))
        if record:
            self.per_sample = max(largest, 1)
        if not isinstance(out, torch.Tensor):
            raise RuntimeError("the fast evaluator supports models that return one tensor of logits")
        return out

    @staticmethod
    def _rows(base: torch.Tensor, cand: torch.Tensor, delta: float) -> torch.Tensor:
        rows = base.unsqueeze(0).repeat(cand.numel(), 1)
        rows[torch.arange(cand.numel()), cand.to(rows.device)] += delta
        return rows

    def _chunk(self) -> int:
        if self.per_sample is None:
            return 1
        return max(1, self.stack_elements // (self.B * self.per_sample))

    def evaluate(self, scales: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        start = 0
        while start < scales.shape[0]:
            part = scales[start:start + self._chunk()]
            record = self.per_sample is None
            ce, acc = _per_candidate(self._forward(part, record=record), y, part.shape[0])
            losses.append(ce)
            accs.append(acc)
            start += part.shape[0]
        return torch.cat(losses), torch.cat(accs)

    def evaluate_step(self, base: torch.Tensor, cand: torch.Tensor, delta: float,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        start = 0
        while start < cand.numel():
            part = cand[start:start + self._chunk()]
            record = self.per_sample is None
            ce, acc = _per_candidate(self._forward(None, record=record, step=(base, part, delta)), y, part.numel())
            losses.append(ce)
            accs.append(acc)
            start += part.numel()
        return torch.cat(losses), torch.cat(accs)


def _trace(model: nn.Module):
    import torch.fx as fx

    return fx.Tracer().trace(model)


# ----------------------------------------------------------------------------------------------------
# Data


class _Batches:
    """Mini-batches from an (X, y) pair (seeded random batches) or any iterable of (x, y) (cycled)."""

    def __init__(self, data, batch_size: int, seed: int, device: torch.device):
        self.device, self.batch_size = device, batch_size
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            X, y = data
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"data=(X, y): y must be a tensor of class labels, got {type(y).__name__}")
            if X.dim() < 2 or X.shape[0] == 0:
                raise ValueError(f"data=(X, y): X must be a non-empty batch of inputs (n, ...), got shape {tuple(X.shape)}")
            if y.dim() != 1 or y.shape[0] != X.shape[0]:
                raise ValueError(f"data=(X, y): y must have shape ({X.shape[0]},) (one class label per input), "
                                 f"got {tuple(y.shape)}")
            self.X, self.y, self.loader = X, y, None
            self.generator = torch.Generator().manual_seed(int(seed))
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor)):
            self.loader, self.X = data, None
            self.iterator = None
            first = self._from_loader()
            self.pending = [first]
        else:
            raise TypeError(f"data must be a DataLoader (an iterable of (inputs, labels) batches) or an (X, y) pair "
                            f"of tensors, got {type(data).__name__}")

    def _from_loader(self):
        for _ in range(2):
            if self.iterator is None:
                self.iterator = iter(self.loader)
            try:
                batch = next(self.iterator)
                break
            except StopIteration:
                self.iterator = None
        else:
            raise ValueError("the data loader is empty: it yielded no batches; pass a loader over a non-empty data "
                             "set (check the dataset length, batch_size and drop_last)")
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError("each batch of the data loader must be (inputs, labels), got "
                            f"{type(batch).__name__}")
        return batch[0], batch[1]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.X is not None:
            n = self.X.shape[0]
            if self.batch_size >= n:
                idx = torch.arange(n)
            else:
                idx = torch.randperm(n, generator=self.generator)[:self.batch_size]
            x, y = self.X[idx], self.y[idx]
        else:
            x, y = self.pending.pop() if self.pending else self._from_loader()
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
        return x.to(self.device), y.to(self.device, torch.long)

    def fixed(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed evaluation set of up to n examples (the first n of X, or the first batches)."""
        if self.X is not None:
            return self.X[:n].to(self.device), self.y[:n].to(self.device, torch.long)
        xs, ys, got = [], [], 0
        for x, y in self._loader_prefix():
            xs.append(x)
            ys.append(y)
            got += x.shape[0]
            if got >= n:
                break
        return torch.cat(xs)[:n].to(self.device), torch.cat(ys)[:n].to(self.device, torch.long)

    def _loader_prefix(self) -> Iterator:
        for batch in self.loader:
            yield batch[0], batch[1]


# ----------------------------------------------------------------------------------------------------
# Result and helpers


@dataclass
class DeepPruneResult:
    """What :func:`prune_model` returns.

    Attributes:
        model: the pruned network (a plain ``nn.Module``, physically smaller).
        kept: group name -> kept channel indices (in the group's original numbering).
        counts: group name -> selection count of every original channel (with replacement > 1).
        groups: per-group records (channels, kept, steps, stopping rule, loss/accuracy, seconds).
        report: whole-network numbers: params and multiply-adds before/after, loss and accuracy
            before/after on a fixed evaluation set, seconds.
        history: Torch-Pruning's pruning history (replayable on a fresh dense model).
    """

    model: nn.Module
    kept: dict[str, list[int]]
    counts: dict[str, list[int]]
    groups: list[dict]
    report: dict
    history: list = field(default_factory=list, repr=False)

    def summary(self) -> str:
        from ._text import format_table

        r = self.report
        rows = [[g["name"], str(g["channels"]), str(g["kept"]), str(g["steps"]), f"{g['loss']:.4f}", f"{g['accuracy']:.3f}"]
                for g in self.groups]
        head = format_table(["group", "channels", "kept", "steps", "loss", "acc"], rows)
        lines = [head, "",
                 f"params      {r['params_before']:,} -> {r['params_after']:,} ({r['params_after'] / r['params_before']:.3f}x)",
                 f"mult-adds   {r['macs_before']:,} -> {r['macs_after']:,} ({r['macs_after'] / r['macs_before']:.3f}x)",
                 f"loss        {r['loss_before']:.4f} -> {r['loss_after']:.4f}",
                 f"accuracy    {r['accuracy_before']:.4f} -> {r['accuracy_after']:.4f}",
                 f"time        {r['seconds']:.1f} s"]
        return "\n".join(lines)


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _check_fraction(name: str, value, low_open: bool = True, high: float = 1.0, high_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok_low = value > 0 if low_open else value >= 0
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        lo = "(0" if low_open else "[0"
        hi = f"{high})" if high_open else f"{high}]"
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")
    return float(value)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, float]:
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, x.shape[0], batch):
        out = model(x[i:i + batch]).float()
        total_loss += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + batch]).sum())
    return total_loss / x.shape[0], correct / x.shape[0]


def _module_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of every leaf layer (FlopCounterMode counts FLOPs = 2 x multiply-adds)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    leaf = {n for n, m in model.named_modules() if n and not list(m.children())}
    prefix = type(model).__name__ + "."  # FlopCounterMode names layers "<ModelClass>.<qualified name>"
    out = {}
    for key, ops in counter.get_flop_counts().items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name in leaf:
            out[name] = sum(ops.values()) // 2
    return out


def _total_macs(model: nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops() // 2


def _keep_counts_for_flops(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor,
                           target: float, DG) -> dict[str, int]:
    """Channels to keep per group, the same fraction r in every group, with r the largest for which
    the pruned network's multiply-adds are at most ``target`` x the dense network's."""
    per_module = _module_macs(model, example)
    dense = _total_macs(model, example)
    names = {m: n for n, m in model.named_modules()}
    # which groups scale each layer's cost: as writer (output channels) or reader (input channels)
    factors: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        tp_group = DG.get_pruning_group(g.root, g.root_fn, list(range(g.channels)))
        for item in tp_group:
            module = item.dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            name = names[module]
            is_out = DG.is_out_channel_pruning_fn(item.dep.handler)
            if not is_out and _is_depthwise(module):
                continue
            factors.setdefault(name, [])
            if g not in factors[name]:
                factors[name].append(g)

    def kept(r: float) -> dict[str, int]:
        return {g.name: max(1, min(g.channels, round(r * g.channels))) for g in groups}

    def macs(r: float) -> float:
        k = kept(r)
        total = dense - sum(per_module.get(n, 0) for n in factors)
        for n, gs in factors.items():
            f = 1.0
            for g in gs:
                f *= k[g.name] / g.channels
            total += per_module.get(n, 0) * f
        return total

    budget = target * dense
    if macs(0.0) > budget:
        raise ValueError(f"flops_target={target} is not reachable: keeping one channel in every prunable group still "
                         f"costs {macs(0.0) / dense:.3f} of the dense multiply-adds (the skipped layers alone); "
                         f"raise flops_target or skip fewer layers")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if macs(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return kept(lo)


def _finetune(model: nn.Module, batches: _Batches, steps: int, lr: float) -> None:
    if steps <= 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    with torch.enable_grad():
        _finetune_steps(model, opt, batches, steps, lr)
    model.eval()


def _finetune_steps(model: nn.Module, opt, batches: "_Batches", steps: int, lr: float) -> None:
    for _ in range(steps):
        x, y = batches.next()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning diverged (loss {float(loss)}); lower finetune_lr (now {lr})")
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------------------------------
# The verb


def prune_model(
    model: nn.Module,
    data,
    *,
    epsilon: float | None = None,
    accuracy_tolerance: float | None = None,
    keep_ratio: float | None = None,
    flops_target: float | None = None,
    candidates: int | None = 50,
    replacement: bool = False,
    batch_size: int = 128,
    max_steps: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    skip: Iterable | None = None,
    extra_skip: Iterable = (),
    finetune_steps: int = 0,
    finetune_lr: float = 0.01,
    method: str = "auto",
    eval_examples: int = 1024,
    stack_elements: int | None = None,
    inplace: bool = False,
    progress: bool = False,
    distributed: bool = False,
    group=None,
) -> DeepPruneResult:
    """Prune the channels of a deep network by layer-wise greedy forward selection.

    Groups are taken one at a time from input to output; in each, channels are added greedily by
    the cross-entropy of the whole network on a mini-batch (a fresh batch per step) until the
    stopping rule holds; the group is then folded and physically removed (and, if asked, the
    network fine-tuned briefly) before the next group.

    Args:
        model: the network (not changed unless ``inplace``). Anything Torch-Pruning can trace; the
            fast search needs ``torch.fx``-traceable models and falls back to the reference search.
        data: a DataLoader (or any iterable of ``(inputs, labels)`` batches, cycled) or an ``(X, y)``
            pair of tensors (X already shaped as the model's input, y integer labels).
        epsilon: stop a group when its pruned loss is within this relative gap of the loss with the
            group unpruned, on the same batch: ``(loss_S - loss_full) <= epsilon * loss_full``.
        accuracy_tolerance: stop when top-1 accuracy is at least ``(1 - tolerance)`` x the unpruned
            accuracy on the batch (the public implementation uses 0.02). The default rule when none
            is given.
        keep_ratio: keep this fraction of each group's channels (at least one).
        flops_target: keep this fraction (0, 1) of the dense network's multiply-adds: the same
            keep fraction in every pruned group, the largest that meets the target.
        candidates: channels evaluated per step (a seeded random subset), or None for all.
        replacement: allow a channel to be chosen more than once (its scale grows).
        batch_size: examples per step (when ``data`` is an (X, y) pair).
        max_steps: cap on steps per group (default: D without replacement, 2 D with).
        seed: seeds the candidate subsets and the batches.
        device: where to search (default: the model's device).
        skip: layers whose groups stay whole; None = first conv, classifier and
            ``model.greedyprune_skip_layers()``. ``extra_skip`` adds to it.
        finetune_steps, finetune_lr: SGD steps (momentum 0.9) after each group; 0 = none.
        method: "fast" (stacked downstream-only evaluation), "reference" (full masked forward per
            candidate), or "auto" (fast, falling back to reference with a warning).
        eval_examples: size of the fixed set the report's before/after loss and accuracy use.
        stack_elements: memory cap of the stacked forward: elements of its largest activation.
        inplace: prune ``model`` itself instead of a deep copy.
        progress: show a progress bar over groups.
        distributed: split each step's candidates across the ranks of the initialised
            ``torch.distributed`` process group (``group``, default the world). Every rank must call
            with the same model, data and options; each evaluates its contiguous share of the
            candidates, the losses are all-gathered, and every rank takes the same argmin (ties: the
            lowest channel), so every rank returns the same pruned model as a single process would.
    """
    rules = {k: v for k, v in dict(epsilon=epsilon, accuracy_tolerance=accuracy_tolerance, keep_ratio=keep_ratio,
                                   flops_target=flops_target).items() if v is not None}
    if len(rules) > 1:
        raise ValueError(f"give one stopping rule, got {sorted(rules)}; choose one of epsilon, accuracy_tolerance, "
                         f"keep_ratio, flops_target")
    if not rules:
        rules = {"accuracy_tolerance": 0.02}
    rule, value = next(iter(rules.items()))
    if rule == "epsilon":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"epsilon must be a number >= 0 (a relative loss gap), got {value!r}")
    elif rule == "accuracy_tolerance":
        _check_fraction("accuracy_tolerance", value, low_open=False)
    elif rule == "keep_ratio":
        _check_fraction("keep_ratio", value, high_open=False)
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
            raise ValueError(f"flops_target must be a fraction in (0, 1) of the dense network's multiply-adds; "
                             f"got {value!r}, which is not below the dense network (1.0)")
        _check_fraction("flops_target", value)
    _check_positive_int("candidates", candidates, allow_none=True)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("max_steps", max_steps, allow_none=True)
    _check_positive_int("eval_examples", eval_examples)
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise ValueError(f"finetune_steps must be an int >= 0, got {finetune_steps!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    start_time = time.perf_counter()
    split = _CandidateSplit(group) if distributed else None

    if not inplace:
        model = copy.deepcopy(model)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available; use device='cpu'")
    model.to(device).eval()
    batches = _Batches(data, batch_size, seed, device)
    eval_x, eval_y = batches.fixed(eval_examples)
    example = eval_x[:1]
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"the model does not accept the data's inputs of shape {tuple(example.shape[1:])} "
                         f"({type(exc).__name__}: {exc}); pass inputs shaped as the model expects, e.g. images "
                         f"(n, C, H, W) rather than flattened vectors") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(f"the model must return class logits of shape (batch, classes), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    if int(eval_y.max()) >= out.shape[1] or int(eval_y.min()) < 0:
        raise ValueError(f"labels must be in [0, {out.shape[1]}) for a model with {out.shape[1]} outputs; "
                         f"got labels in [{int(eval_y.min())}, {int(eval_y.max())}]")

    DG, groups = find_groups(model, example, skip, extra_skip=extra_skip)
    if not groups:
        raise ValueError("no prunable channel group: every group holds a skipped layer; pass skip=[] or fewer layers")
    params_before = sum(p.numel() for p in model.parameters())
    macs_before = _total_macs(model, example)
    loss_before, acc_before = _evaluate(model, eval_x, eval_y)
    targets = None
    if rule == "flops_target":
        targets = _keep_counts_for_flops(model, groups, example, value, DG)
    elif rule == "keep_ratio":
        targets = {g.name: max(1, min(g.channels, round(value * g.channels))) for g in groups}

    graph = None
    if method in ("auto", "fast"):
        try:
            graph = _trace(model)
        except Exception as exc:  # noqa: BLE001
            if method == "fast":
                raise ValueError(f"method='fast' needs a torch.fx-traceable model, and tracing failed "
                                 f"({type(exc).__name__}: {exc}); use method='reference'") from exc
            warnings.warn(f"torch.fx could not trace the model ({type(exc).__name__}); using the slower reference "
                          f"search (one full forward per candidate)", stacklevel=2)
    if stack_elements is None:
        stack_elements = _GPU_STACK_ELEMENTS if device.type == "cuda" else _CPU_STACK_ELEMENTS

    kept, counts_out, records = {}, {}, []
    bar = groups
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(groups, desc="pruning groups", unit="group", leave=False)
    for gi, group in enumerate(bar):
        group = _refresh(DG, model, group)
        t0 = time.perf_counter()
        D = group.channels
        evaluator = None
        if graph is not None:
            try:
                evaluator = _FastEvaluator(model, graph, group, stack_elements)
            except RuntimeError as exc:
                if method == "fast":
                    raise
                warnings.warn(f"group {group.name!r}: fast search unavailable ({exc}); using the reference search",
                              stacklevel=2)
        if evaluator is None:
            evaluator = _ReferenceEvaluator(model, group)
        counts = torch.zeros(D, dtype=torch.long)
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + gi)
        steps_cap = max_steps if max_steps is not None else (D if not replacement else 2 * D)
        need_full = rule in ("epsilon", "accuracy_tolerance")
        last_loss = last_acc = float("nan")
        steps = 0
        with torch.inference_mode():
            for step in range(steps_cap):
                x, y = batches.next()
                evaluator.prepare(x)
                pool = torch.arange(D) if replacement else torch.nonzero(counts == 0).flatten()
                if pool.numel() == 0:
                    break
                if candidates is None or candidates >= pool.numel():
                    cand = pool
                else:
                    cand = pool[torch.randperm(pool.numel(), generator=generator)[:candidates].sort().values]
                K = cand.numel()
                delta = D / (step + 1)
                base = (counts.to(torch.float32) * delta).to(device)
                if step == 0 and isinstance(evaluator, _FastEvaluator):
                    evaluator = _self_check(evaluator, model, group, x, y, base, cand[:2], delta, method)
                    evaluator.prepare(x)
                if split is None:
                    losses, accs = evaluator.evaluate_step(base, cand, delta, y)
                else:
                    losses, accs = split.evaluate(evaluator, base, cand, delta, y)
                if need_full:
                    full_loss, full_acc = evaluator.evaluate(torch.ones(1, D, device=device), y)
                    losses, accs = torch.cat([losses, full_loss]), torch.cat([accs, full_acc])
                losses, accs = losses.cpu(), accs.cpu()
                j = int(torch.argmin(losses[:K]))
                best = int(cand[j])
                counts[best] += 1
                steps = step + 1
                last_loss, last_acc = float(losses[j]), float(accs[j])
                if rule == "epsilon" and last_loss - float(losses[-1]) <= value * abs(float(losses[-1])):
                    break
                if rule == "accuracy_tolerance" and last_acc >= (1 - value) * float(accs[-1]):
                    break
                if targets is not None and int((counts > 0).sum()) >= targets[group.name]:
                    break
        kept[group.name] = fold_and_remove(DG, model, group, counts)
        counts_out[group.name] = counts.tolist()
        _finetune(model, batches, finetune_steps, finetune_lr)
        records.append({"name": group.name, "channels": D, "kept": len(kept[group.name]), "steps": steps,
                        "rule": rule, "loss": last_loss, "accuracy": last_acc,
                        "evaluator": "fast" if isinstance(evaluator, _FastEvaluator) else "reference",
                        "seconds": time.perf_counter() - t0})
        if progress:
            bar.set_postfix(group=group.name, kept=f"{len(kept[group.name])}/{D}")
    loss_after, acc_after = _evaluate(model, eval_x, eval_y)
    report = {
        "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
        "macs_before": macs_before, "macs_after": _total_macs(model, example),
        "loss_before": loss_before, "accuracy_before": acc_before,
        "loss_after": loss_after, "accuracy_after": acc_after,
        "eval_examples": int(eval_x.shape[0]), "rule": rule, "value": value,
        "seconds": time.perf_counter() - start_time,
    }
    return DeepPruneResult(model=model, kept=kept, counts=counts_out, groups=records, report=report,
                           history=[list(h) for h in DG.pruning_history()])


class _CandidateSplit:
    """Algorithm 2 for deep networks: each rank scores a contiguous share of a step's candidates."""

    def __init__(self, group=None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("distributed=True needs an initialised torch.distributed process group; start the "
                             "program with torchrun, or call greedyprune.distributed.init_process_group() first")
        self.dist, self.group = dist, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def evaluate(self, evaluator, base, cand, delta, y):
        K = cand.numel()
        lo, hi = K * self.rank // self.world, K * (self.rank + 1) // self.world
        width = -(-K // self.world)  # the largest share
        device = base.device if self.dist.get_backend(self.group) != "gloo" else torch.device("cpu")
        mine = torch.full((2, width), float("inf"), device=device)
        if hi > lo:
            loss, acc = evaluator.evaluate_step(base, cand[lo:hi], delta, y)
            mine[0, :hi - lo], mine[1, :hi - lo] = loss.to(device), acc.to(device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        self.dist.all_gather(parts, mine, group=self.group)
        sizes = [K * (r + 1) // self.world - K * r // self.world for r in range(self.world)]
        losses = torch.cat([p[0, :n] for p, n in zip(parts, sizes)])
        accs = torch.cat([p[1, :n] for p, n in zip(parts, sizes)])
        return losses.to(base.device), accs.to(base.device)


def _self_check(evaluator: _FastEvaluator, model, group, x, y, base, cand, delta, method) -> Any:
    """Compare the fast evaluator with full masked forwards on the first step of a group."""
    ref = _ReferenceEvaluator(model, group)
    ref.prepare(x)
    try:
        evaluator.prepare(x)
        fast = torch.cat([evaluator.evaluate_step(base, cand, delta, y)[0],
                          evaluator.evaluate(torch.ones(1, base.numel(), device=base.device), y)[0]])
    except Exception as exc:  # noqa: BLE001
        if method == "fast":
            raise
        warnings.warn(f"group {group.name!r}: the fast search failed on this model ({type(exc).__name__}: {exc}); "
                      f"using the reference search", stacklevel=3)
        return ref
    slow = torch.cat([ref.evaluate_step(base, cand, delta, y)[0],
                      ref.evaluate(torch.ones(1, base.numel(), device=base.device), y)[0]])
    if not torch.allclose(fast.cpu(), slow.cpu(), rtol=1e-3, atol=1e-4):
        if method == "fast":
            raise RuntimeError(f"group {group.name!r}: the fast search disagrees with a full forward "
                               f"({fast.tolist()} vs {slow.tolist()}); use method='reference'")
        warnings.warn(f"group {group.name!r}: the fast search disagrees with a full forward; using the reference "
                      f"search", stacklevel=3)
        return ref
    return evaluator


# ----------------------------------------------------------------------------------------------------
# Saving and loading


def save_pruned(path: str | os.PathLike, result: DeepPruneResult, *, name: str | None = None,
                model_kwargs: dict | None = None, extra: dict | None = None) -> None:
    """Save a pruned network.

    Always stores the whole module (``torch.save(model)``: loading needs greedyprune importable and
    ``weights_only=False``, so only load files you trust). With ``name`` (a :func:`get_model` name)
    it also stores the pruning history and the state dict, so :func:`load_pruned` can rebuild the
    network by replaying the history on a fresh ``get_model(name, **model_kwargs)`` and loading the
    weights (``weights_only=True`` safe path).
    """
    payload = {"format": PRUNED_FORMAT, "module": result.model, "state_dict": result.model.state_dict(),
               "history": result.history, "name": name, "model_kwargs": dict(model_kwargs or {}),
               "kept": result.kept, "report": result.report, "extra": dict(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_pruned(path: str | os.PathLike, *, replay: bool = False, map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a network saved by :func:`save_pruned`; returns (model, info).

    ``replay=True`` rebuilds it from ``get_model`` + the pruning history + the state dict instead of
    unpickling the stored module (the file must have been saved with ``name``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pruned model at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        raise ValueError(f"{path} is not a pruned model saved by greedyprune (no {PRUNED_FORMAT!r} marker)")
    info = {k: v for k, v in payload.items() if k not in ("module", "state_dict")}
    if not replay:
        return payload["module"], info
    if not payload.get("name"):
        raise ValueError(f"{path} was saved without a model name, so it cannot be replayed; load it with replay=False")
    import torch_pruning as tp

    from .models import get_model

    model = get_model(payload["name"], **payload["model_kwargs"])
    example = _example_for(model, payload)
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    DG.load_pruning_history(payload["history"])
    model.load_state_dict(payload["state_dict"])
    return model, info


def _example_for(model: nn.Module, payload: dict) -> torch.Tensor:
    shape = payload.get("extra", {}).get("input_shape")
    if shape is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        shape = (first.in_channels, 32, 32)
    return torch.randn(1, *shape)
