"""The inputs of each group's readers on the network as it is pruned, without re-running its unchanged prefix.

The block-reconstruction objective prunes the groups one after the other, from input to output, and each group
reads its readers' inputs on the calibration set from the network with every earlier group already pruned. A
forward up to those readers for every group costs about half a dense pass per group. But pruning a group only
changes its own layers (its writers, what lies between them and its readers, and the readers), so everything
computed before its first writer is still right for the next group. :class:`PrefixInputs` traces the network once
(:func:`~greedyprune.channels.evaluators.trace`), and for each group keeps, per calibration batch, the values that
the rest of the network reads at the *cut* before the group's first writer; the next group resumes from there.

Nothing is trusted blindly: before resuming, every layer and attribute the kept values were computed with is
compared with a copy taken when they were kept (bit for bit, and its shape); if any changed, the pass starts from
the input again. A network ``torch.fx`` cannot trace, or whose traced readers' inputs differ from its own forward's
on the first batch, keeps the plain forwards (the caller's fallback).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from .downstream import call_node
from .evaluators import attribute, trace

__all__ = ["PrefixInputs"]


class PrefixInputs:
    """``PrefixInputs(model, batches, readers)``: the readers' inputs per calibration batch, group after group.

    ``batches``: the calibration batches, in the order the caller reads them. ``readers``: every layer whose
    input may be asked for (the constructor checks that the traced graph calls each exactly once, as a module,
    with its input as the first argument, and that these inputs equal the model's own on the first batch;
    otherwise it raises ``RuntimeError`` and the caller runs plain forwards).

    Use: ``begin(reader_names, writer_names)``, then ``inputs(b)`` for each batch ``b`` in order (a dict reader
    name -> input tensor), then the caller prunes the group and calls ``begin`` for the next one.
    """

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], readers: set[str]):
        graph = trace(model)
        self.model, self.batches, self.training = model, batches, model.training
        self.named = dict(model.named_modules())
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise RuntimeError(f"the traced network takes {len(placeholders)} inputs; the prefix cache feeds one")
        self.input = placeholders[0]
        self.position = {n: i for i, n in enumerate(self.nodes)}
        self.calls: dict[str, fx.Node] = {}
        for n in self.nodes:
            if n.op == "call_module":
                if n.target in self.calls:
                    self.calls[n.target] = None  # called twice: no single position
                else:
                    self.calls[n.target] = n
        bad = sorted(r for r in readers if self.calls.get(r) is None or not self.calls[r].args
                     or not isinstance(self.calls[r].args[0], fx.Node))
        if bad:
            raise RuntimeError(f"layers {bad} are not called once as modules on one input in the traced graph")
        self.last_use = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                self.last_use[a] = i
        self.broken = False  # set by a caller whose pass failed: plain forwards from then on
        self.cut = 0  # values of nodes before the cut that nodes from the cut on read, per batch
        self.kept: list[dict] = [{} for _ in batches]
        self.guards: list[tuple[str, list[torch.Tensor]]] = []  # what the kept values were computed with
        self._check(readers)

    # -- the public steps -------------------------------------------------------------------------------
    def begin(self, readers: list[str], writers: list[str]) -> bool:
        """Start a group: its ``readers``' inputs will be asked for; its ``writers`` are the first layers its
        pruning changes (the next cut is before the first of them). False (read them by a plain forward
        instead) when a reader is not called once as a module, the model's mode changed since the trace, or
        a pass failed (:attr:`broken`)."""
        self.named = dict(self.model.named_modules())
        if self.broken or self.model.training != self.training or any(self.calls.get(r) is None for r in readers):
            return False
        if self.cut and not self._unchanged():
            self.cut, self.kept, self.guards = 0, [{} for _ in self.batches], []
        self.wanted = [self.calls[r] for r in readers]
        # a reader before the cut (a group out of execution order) has an input the kept values do not hold
        self.start = self.cut if min(self.position[n] for n in self.wanted) >= self.cut else 0
        self.end = max(self.position[n] for n in self.wanted)  # run up to, not including, the last reader
        positions = [self.position[self.calls[w]] for w in writers if self.calls.get(w) is not None]
        next_cut = min(positions) if len(positions) == len(writers) and positions else self.start
        self.next_cut = next_cut if self.start <= next_cut <= self.end else self.start
        self.new_kept: list[dict] = [{} for _ in self.batches]
        return True

    @torch.no_grad()
    def inputs(self, b: int) -> dict[str, torch.Tensor]:
        """The inputs of the group's readers on calibration batch ``b`` with the network's current layers."""
        env = {self.input: self.batches[b]} if self.start == 0 else {n: _copy(v) for n, v in self.kept[b].items()}
        wanted = {n: r for r, n in zip([w.target for w in self.wanted], self.wanted)}
        out: dict[str, torch.Tensor] = {}
        for i in range(self.start, self.end + 1):
            if i == self.next_cut and self.next_cut != self.start:
                self.new_kept[b] = {n: _copy(v) for n, v in env.items() if self.last_use.get(n, -1) >= i}
            n = self.nodes[i]
            if n in wanted:
                out[wanted[n]] = env[n.args[0]].clone()  # a later node may change it in place
            if i == self.end:
                break
            if n.op not in ("placeholder", "output"):
                env[n] = call_node(self.model, self.named, n, env)
            for a in n.all_input_nodes:  # free what nothing later reads (the inputs asked for are in `out`)
                if self.last_use.get(a) == i:
                    env.pop(a, None)
        if b == len(self.batches) - 1:
            self._commit()
        return out

    # -- internals ----------------------------------------------------------------------------------------
    def _commit(self) -> None:
        if self.next_cut == self.start:
            return  # the cut stays where it was (the kept values are unchanged)
        self.cut, self.kept = self.next_cut, self.new_kept
        self.guards = self._guards(self.cut)

    def _guards(self, cut: int) -> list[tuple[str, list[torch.Tensor]]]:
        """A copy of every layer's parameters and buffers, and every attribute, that nodes before ``cut`` use."""
        return [(target, [t.clone() for t in tensors]) for target, tensors in self._used(cut)]

    def _unchanged(self) -> bool:
        """Every layer and attribute before the cut holds what it held when the kept values were computed."""
        now = list(self._used(self.cut))
        if len(now) != len(self.guards):
            return False
        for (target, current), (old_target, old) in zip(now, self.guards):
            if target != old_target or len(old) != len(current) or any(
                    a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b) for a, b in zip(old, current)):
                return False
        return True

    def _used(self, cut: int):
        """``(target, tensors)`` of each module call and attribute read before ``cut`` (a module gone: None)."""
        for n in self.nodes[:cut]:
            if n.op == "call_module":
                module = self.named.get(n.target)
                tensors = None if module is None else [*module.parameters(), *module.buffers()]
                yield n.target, [torch.full((1,), float("nan"))] if tensors is None else [t.detach() for t in tensors]
            elif n.op == "get_attr":
                value = attribute(self.model, n.target)
                yield n.target, [value.detach()] if isinstance(value, torch.Tensor) else []

    @torch.no_grad()
    def _check(self, readers: set[str]) -> None:
        """The traced readers' inputs on the first batch equal the model's own (else ``RuntimeError``)."""
        if not readers or not self.batches:
            return
        captured: dict[str, torch.Tensor] = {}
        hooks = [self.named[r].register_forward_pre_hook(lambda m, a, r=r: captured.setdefault(r, a[0].clone()))
                 for r in readers]
        try:
            self.model(self.batches[0])
        finally:
            for h in hooks:
                h.remove()
        self.begin(sorted(readers), [])
        traced = self.inputs(0)
        self.cut, self.kept, self.guards = 0, [{} for _ in self.batches], []
        for r in readers:
            if r not in captured or not torch.equal(captured[r], traced[r]):
                raise RuntimeError(f"the traced network's input to {r!r} differs from its own forward's")


def _copy(value):
    """A copy of a kept value: tensors cloned (a later node may change them in place), containers copied
    through, anything else (sizes, shapes) as it is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value
