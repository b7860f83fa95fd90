"""The network's outputs on fixed inputs when only a few layers change: run the part that depends on them.

The budgets' sensitivity curves (:mod:`greedyprune.channels.sensitivity`) compare the network's outputs with
one group's readers refitted at several widths, on the same probe examples. Everything upstream of those
readers is the same in every such forward, so :class:`Downstream` traces the network once
(:func:`~greedyprune.channels.evaluators.trace`: every conv and linear layer a call), runs one full pass that
keeps, for each set of layers it will be asked about, the values that the part depending on them reads (its
*frontier*), and then answers :meth:`Downstream.run` by recomputing only the nodes that depend on those layers.
The layers' current weights are used, so a caller swaps weights in and calls :meth:`run`.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from .evaluators import run_node, trace

__all__ = ["Downstream", "call_node"]


class Downstream:
    """``Downstream(model, x, layer_sets)``: one pass over ``x`` keeps what each set's dependent part reads;
    ``run(layers)`` (one of ``layer_sets``) is then ``model(x)`` with the current weights, recomputing only
    the nodes that depend on ``layers``. Raises what ``torch.fx`` raises for a network it cannot trace
    (callers fall back to full forwards)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, layer_sets: list[frozenset[str]]):
        graph = trace(model)
        self.model = model
        self.named = dict(model.named_modules())
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise RuntimeError(f"the traced network takes {len(placeholders)} inputs; Downstream feeds one")
        self.parts: dict[frozenset[str], tuple[list[fx.Node], set[fx.Node], set[fx.Node]]] = {}
        keep: set[fx.Node] = set()
        copies: set[fx.Node] = set()
        for layers in layer_sets:
            dependent = self._dependent(layers)
            frontier = {a for n in dependent for a in n.all_input_nodes if a not in dependent}
            # a kept value that a dependent node changes in place (x.add_(f(x))) is kept as it was computed and
            # copied for each run; one that a node outside the part changes in place is refused (full forwards)
            mutated = {a for n in dependent if self._in_place(n) for a in n.all_input_nodes if a in frontier}
            if any(self._in_place(n) and n not in dependent and any(a in frontier for a in n.all_input_nodes)
                   for n in self.nodes):
                raise RuntimeError(f"a value the part depending on {sorted(layers)} reads is changed in place "
                                   f"upstream of it")
            self.parts[frozenset(layers)] = ([n for n in self.nodes if n in dependent], frontier, mutated)
            keep |= frontier
            copies |= mutated
        self.values = self._full_pass(x, keep, copies)

    def _dependent(self, layers: frozenset[str]) -> set[fx.Node]:
        out: set[fx.Node] = set()
        for n in self.nodes:
            own = (n.op == "call_module" and n.target in layers) or (
                n.op == "get_attr" and any(n.target.startswith(layer + ".") for layer in layers))
            if own or any(a in out for a in n.all_input_nodes):
                out.add(n)
        return out

    def _in_place(self, n: fx.Node) -> bool:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", "")
            return (name.startswith("i") and getattr(operator, name, None) is n.target) or name.endswith("_") or (
                bool(n.kwargs.get("inplace")))
        if n.op == "call_method":
            return n.target.endswith("_")
        if n.op == "call_module":
            return bool(getattr(self.named[n.target], "inplace", False))
        return False

    def _call(self, n: fx.Node, env: dict) -> object:
        return call_node(self.model, self.named, n, env)

    @torch.no_grad()
    def _full_pass(self, x: torch.Tensor, keep: set[fx.Node], copies: set[fx.Node]) -> dict:
        last_use = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last_use[a] = i
        env: dict = {}
        saved: dict = {}
        for i, n in enumerate(self.nodes):
            if n.op == "placeholder":
                env[n] = x
            elif n.op != "output":
                env[n] = self._call(n, env)
            if n in copies:  # as computed, before a later node changes it in place
                saved[n] = env[n].clone()
            for a in n.all_input_nodes:  # free what nothing later reads and no frontier keeps
                if last_use.get(a) == i and a not in keep:
                    env.pop(a, None)
        return {n: saved[n] if n in saved else env[n] for n in keep}

    @torch.no_grad()
    def run(self, layers: frozenset[str]):
        """The network's output on the pass's inputs with ``layers``' current weights."""
        dependent, frontier, mutated = self.parts[frozenset(layers)]
        env = {n: self.values[n].clone() if n in mutated else self.values[n] for n in frontier}
        for n in dependent:
            if n.op == "output":
                return fx.node.map_arg(n.args[0], lambda a: env[a])
            env[n] = self._call(n, env)
        raise RuntimeError(f"the network's output does not depend on {sorted(layers)}")


def call_node(model: nn.Module, named: dict, n: fx.Node, env: dict) -> object:
    """The value of traced node ``n`` from its inputs' values in ``env``, with ``model``'s current layers."""
    return run_node(model, named, n, fx.node.map_arg(n.args, lambda a: env[a]),
                    fx.node.map_arg(n.kwargs, lambda a: env[a]))
