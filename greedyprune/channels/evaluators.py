"""Scoring a step's candidate channels: the network's loss and accuracy with each candidate added.

An evaluator answers, for a group being searched, "what are the cross-entropy and top-1 accuracy of the
whole network on this batch when the group's channels are scaled by ``rows[c]``", one row per candidate:

* :class:`ReferenceEvaluator` - one full forward of the masked network per candidate (the public
  implementation's way). Slow and obviously right; the fallback for networks ``torch.fx`` cannot trace.
* :class:`FastEvaluator` - the network traced with ``torch.fx``; the nodes that do not depend on the
  group are run once per batch, and only the part downstream of the group's readers per candidate, with
  batch norms folded into the convolutions before them (``torch.nn.utils.fusion``), channels-last
  activations on CPU, and many candidates stacked along the batch dimension (memory-capped).

:func:`checked` compares the two on a group's first step and falls back to the reference on a mismatch.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Protocol

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .bn import BATCH_NORMS, batch_statistics, exact_math, per_candidate_batch_norm
from .groups import ChannelGroup
from .masks import apply_masks, channel_view, reader_scale, reads_last_dim, scale_input

__all__ = ["Evaluator", "FastEvaluator", "ReferenceEvaluator", "attribute", "checked", "run_node", "step_rows", "trace"]

CPU_STACK_ELEMENTS = 1 << 19  # ~2 MB activations: on CPU, stacks that stay in cache beat bigger ones
GPU_STACK_ELEMENTS = 1 << 28


def step_rows(base: torch.Tensor, cand: torch.Tensor, delta: float) -> torch.Tensor:
    """(K, D) scale rows ``base + delta * e_c``: the group's scales with each candidate c added once."""
    rows = base.unsqueeze(0).repeat(cand.numel(), 1)
    rows[torch.arange(cand.numel()), cand.to(rows.device)] += delta
    return rows


def per_candidate(logits: torch.Tensor, y: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy per candidate from (K*B, classes) logits."""
    B = y.shape[0]
    logits = logits.reshape(K, B, -1).float()
    ce = F.cross_entropy(logits.reshape(K * B, -1), y.repeat(K), reduction="none").reshape(K, B).mean(1)
    acc = (logits.argmax(-1) == y.unsqueeze(0)).float().mean(1)
    return ce, acc


class Evaluator(Protocol):
    """``prepare(x)`` once per batch, then ``evaluate(rows, y)`` -> (losses, accuracies), one per row."""

    def prepare(self, x: torch.Tensor) -> None:
        ...

    def evaluate(self, rows: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...


class ReferenceEvaluator:
    """One full forward of the masked network per candidate (the public implementation's way).

    ``bn="batch"`` normalises every batch norm with the statistics of the batch (see
    :class:`~greedyprune.channels.bn.batch_statistics`); ``"running"`` uses the stored statistics.
    """

    def __init__(self, model: nn.Module, group: ChannelGroup, bn: str = "running"):
        self.model, self.group, self.bn = model, group, bn

    def prepare(self, x: torch.Tensor) -> None:
        self.x = x

    def evaluate(self, rows: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        for s in rows:
            with apply_masks(self.model, {self.group: s}), _bn_mode(self.model, self.bn):
                ce, acc = per_candidate(self.model(self.x), y, 1)
            losses.append(ce)
            accs.append(acc)
        return torch.cat(losses), torch.cat(accs)


def _bn_mode(model: nn.Module, bn: str):
    return batch_statistics(model) if bn == "batch" else contextlib.nullcontext()


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, with every convolution and linear layer a leaf, subclasses included (a ``Conv2d``
    that pads through a child module, as EfficientNet's, would otherwise be traced into, and its reader
    would not be called as a module)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LAYERS) or super().is_leaf_module(m, module_qualified_name)


LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def attribute(model: nn.Module, target: str):
    """``model``'s attribute at the dotted path ``target`` (an fx ``get_attr`` node's), as it is now."""
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def run_node(model: nn.Module, named: dict, n: fx.Node, args, kwargs) -> object:
    """Traced node ``n`` applied to its argument values, with ``model``'s current layers (``named``: its
    named modules)."""
    if n.op == "call_module":
        return named[n.target](*args, **kwargs)
    if n.op == "call_function":
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, n.target)(*rest, **kwargs)
    if n.op == "get_attr":
        return attribute(model, n.target)
    raise RuntimeError(f"unexpected node {n.op}")


def trace(model: nn.Module) -> fx.Graph:
    """The model's ``torch.fx`` graph (leaf modules, and every conv / linear layer, kept as calls)."""
    return _LayerTracer().trace(model)


class FastEvaluator:
    """Upstream of the group's readers once per batch; downstream per candidate, candidates stacked.

    With ``bn="batch"`` batch norms use batch statistics: upstream ones the batch's, downstream ones each
    candidate's own (:func:`~greedyprune.channels.bn.per_candidate_batch_norm`); nothing is folded then.
    """

    def __init__(self, model: nn.Module, graph: fx.Graph, group: ChannelGroup, stack_elements: int,
                 bn: str = "running"):
        self.model, self.group, self.stack_elements, self.bn = model, group, stack_elements, bn
        self.named = dict(model.named_modules())
        self.readers = {name: (idx, root) for name, idx, root in group.readers}
        self.nodes = list(graph.nodes)
        missing = set(self.readers) - {n.target for n in self.nodes if n.op == "call_module"}
        if missing:
            raise RuntimeError(f"readers {sorted(missing)} are not called as modules in the traced graph")
        # batched: depends on the input; dependent: depends on the group's scales (downstream of a reader)
        self.dependent, self.batched = set(), set()
        for n in self.nodes:
            ins = n.all_input_nodes
            if n.op == "placeholder" or any(i in self.batched for i in ins):
                self.batched.add(n)
            if (n.op == "call_module" and n.target in self.readers) or any(i in self.dependent for i in ins):
                self.dependent.add(n)
        # the independent values the downstream part reads
        self.needed = {i for n in self.nodes if n in self.dependent for i in n.all_input_nodes
                       if i not in self.dependent}
        self.fused, self.passthrough = self._fuse_batch_norms() if bn == "running" else ({}, set())
        self.batch_norms = {n for n in self.dependent if n.op == "call_module" and bn == "batch"
                            and isinstance(self.named[n.target], BATCH_NORMS)
                            and self.named[n.target].track_running_stats and len(n.args) == 1 and not n.kwargs}
        self.per_sample = None

    def _fuse_batch_norms(self) -> tuple[dict, set]:
        """conv -> batch norm pairs downstream of the group, folded for the search (eval-mode BN)."""
        fused, passthrough = {}, set()
        for n in self.nodes:
            if n not in self.dependent or n.op != "call_module" or not isinstance(self.named[n.target],
                                                                                  nn.BatchNorm2d):
                continue
            bn, src = self.named[n.target], (n.args[0] if n.args else None)
            if (len(n.args) == 1 and not n.kwargs and getattr(src, "op", None) == "call_module"
                    and src in self.dependent and type(self.named[src.target]) is nn.Conv2d
                    and len(src.users) == 1 and bn.track_running_stats and bn.running_var is not None):
                conv = self.named[src.target]
                w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
                fused[src] = (w.detach(), b.detach())
                passthrough.add(n)
        return fused, passthrough

    def _run(self, n: fx.Node, args, kwargs):
        return run_node(self.model, self.named, n, args, kwargs)

    def _call_layer(self, n: fx.Node, x: torch.Tensor) -> torch.Tensor:
        """A conv / linear node on input x, with its batch norm folded in when there is one."""
        module = self.named[n.target]
        if n not in self.fused:
            return module(x)
        w, b = self.fused[n]
        return F.conv2d(x, w, b, module.stride, module.padding, module.dilation, module.groups)

    def prepare(self, x: torch.Tensor) -> None:
        """Evaluate every node that does not depend on the group's scales (once per batch)."""
        env: dict = {}
        last_use = {a: i for i, n in enumerate(self.nodes) for a in n.all_input_nodes}
        self.B = x.shape[0]
        if x.dim() == 4 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions; values unchanged
        keep = {}
        with _bn_mode(self.model, self.bn):
            for i, n in enumerate(self.nodes):
                if n in self.dependent or n.op == "output":
                    continue
                if n.op == "placeholder":
                    env[n] = x
                else:
                    env[n] = self._run(n, fx.node.map_arg(n.args, lambda a: env[a]),
                                       fx.node.map_arg(n.kwargs, lambda a: env[a]))
                if n in self.needed:
                    keep[n] = env[n]
                for a in n.all_input_nodes:
                    if last_use.get(a) == i and a not in self.needed:
                        env.pop(a, None)
        self.cache = keep

    def _forward(self, rows: torch.Tensor, record: bool = False) -> torch.Tensor:
        """The downstream part for K stacked candidates: (K*B, classes) logits."""
        K, B = rows.shape[0], self.B
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

        largest, out = 0, None
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
                env[n] = self._reader(n, rows, value)
            elif n in self.fused:
                env[n] = self._call_layer(n, value(n.args[0]))
            elif n in self.batch_norms:
                env[n] = per_candidate_batch_norm(value(n.args[0]), self.named[n.target], K)
            else:
                env[n] = self._run(n, fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value))
            if record and isinstance(env[n], torch.Tensor):
                largest = max(largest, env[n].numel() // max(K * B, 1))
        if record:
            self.per_sample = max(largest, 1)
        if not isinstance(out, torch.Tensor):
            raise RuntimeError("the fast evaluator supports models that return one tensor of logits")
        return out

    def _reader(self, n: fx.Node, rows: torch.Tensor, value) -> torch.Tensor:
        """A reader of the group, its input scaled by each candidate's row."""
        K, B = rows.shape[0], self.B
        module = self.named[n.target]
        x_node = n.args[0]
        x = value(x_node) if x_node in self.dependent else self.cache[x_node]
        idx, root = self.readers[n.target]
        s = reader_scale(module, idx, root, rows).to(x.dtype)
        last = reads_last_dim(module)
        if x_node not in self.dependent and K > 1:
            x = (x.unsqueeze(0) * s.reshape(channel_view(K, s.shape[1], x.dim(), last))).reshape(K * B, *x.shape[1:])
        else:
            x = scale_input(x, s, K, last)
        if len(n.args) == 1 and not n.kwargs:
            return self._call_layer(n, x)
        return module(x, *fx.node.map_arg(n.args[1:], value), **fx.node.map_arg(n.kwargs, value))

    def _chunk(self) -> int:
        if self.per_sample is None:
            return 1
        return max(1, self.stack_elements // (self.B * self.per_sample))

    def evaluate(self, rows: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses, accs = [], []
        start = 0
        while start < rows.shape[0]:
            part = rows[start:start + self._chunk()]
            ce, acc = per_candidate(self._forward(part, record=self.per_sample is None), y, part.shape[0])
            losses.append(ce)
            accs.append(acc)
            start += part.shape[0]
        return torch.cat(losses), torch.cat(accs)


def checked(evaluator: FastEvaluator, model: nn.Module, group: ChannelGroup, x: torch.Tensor, y: torch.Tensor,
            rows: torch.Tensor, strict: bool):
    """``evaluator`` if it agrees with full masked forwards on ``rows`` (and the unpruned group), else a
    :class:`ReferenceEvaluator` with a warning - or, with ``strict``, an error."""
    with exact_math():
        return _checked(evaluator, model, group, x, y, rows, strict)


def _checked(evaluator, model, group, x, y, rows, strict):
    ref = ReferenceEvaluator(model, group, evaluator.bn)
    ref.prepare(x)
    probe = torch.cat([rows, torch.ones(1, rows.shape[1], device=rows.device)])
    try:
        evaluator.prepare(x)
        fast = evaluator.evaluate(probe, y)[0]
    except Exception as exc:  # noqa: BLE001
        if strict:
            raise
        warnings.warn(f"group {group.name!r}: the fast search failed on this model ({type(exc).__name__}: {exc}); "
                      f"using the reference search", stacklevel=3)
        return ref
    slow = ref.evaluate(probe, y)[0]
    if not torch.allclose(fast.cpu(), slow.cpu(), rtol=1e-3, atol=1e-4):
        if strict:
            raise RuntimeError(f"group {group.name!r}: the fast search disagrees with a full forward "
                               f"({fast.tolist()} vs {slow.tolist()}); use evaluator='reference'")
        warnings.warn(f"group {group.name!r}: the fast search disagrees with a full forward; using the reference "
                      f"search", stacklevel=3)
        return ref
    return evaluator
