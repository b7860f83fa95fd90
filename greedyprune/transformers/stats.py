"""Running an encoder layer by layer on calibration data, and the statistics of a projection's inputs.

Sequential pruning needs each layer's inputs *as the already-pruned layers below it produce them*. The
model is run once, up to its first encoder layer, to capture the embeddings and the arguments the model
passes its layers (the attention mask in the form the installed ``transformers`` builds it); from there
each layer is called directly, so pruning layer l and moving on costs one pass through layer l.

Everything a pruning criterion needs about a projection ``y = W x + b`` (the FFN's output projection,
or the attention's output projection) is in three sums over the calibration tokens, padding excluded:
``X'X`` (D x D; only its diagonal when a criterion needs no more), ``sum_t x_t`` (D,) and the count T.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerInput", "InputStats", "capture_layer_inputs", "finish_ffn", "input_stats", "module_inputs",
           "run_layer"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once it has what it needs."""


@dataclass
class LayerInput:
    """One calibration batch at the input of an encoder layer."""

    hidden: torch.Tensor  # (B, L, hidden)
    args: tuple  # the layer's other positional arguments, as the model passed them
    kwargs: dict
    mask: torch.Tensor  # (B, L) bool: real tokens


@dataclass
class InputStats:
    """Sums over calibration tokens of a Linear layer's inputs x (D,): ``gram = sum x x'`` (or only its
    diagonal, ``full=False``), ``total = sum x``, ``tokens`` = T. float64."""

    gram: torch.Tensor | None
    sq: torch.Tensor  # diagonal of the Gram: sum_t x_c(t)^2
    total: torch.Tensor
    tokens: int

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.tokens

    @property
    def variance(self) -> torch.Tensor:
        """Per-channel variance over tokens (population form), clamped at 0."""
        return (self.sq / self.tokens - self.mean ** 2).clamp_min(0.0)

    @property
    def covariance(self) -> torch.Tensor:
        """``sum_t (x_t - mean)(x_t - mean)'`` (D, D) - the centred Gram."""
        return self.gram - torch.outer(self.total, self.total) / self.tokens


def capture_layer_inputs(base: nn.Module, batches: list[dict], *, first: nn.Module | None = None,
                         **call_kwargs) -> list[LayerInput]:
    """Each batch at the input of the first layer (one partial forward pass per batch).

    Args:
        base: the model whose forward builds the layers' arguments (a BertModel, a LlamaModel, ...).
        batches: dicts of (B, L) tensors with ``attention_mask``.
        first: its first layer (default ``base.encoder.layer[0]``, a BERT encoder's).
        call_kwargs: extra arguments for ``base`` (a decoder gets ``use_cache=False``, so that no key/value
            cache is built and handed to the layers).
    """
    first = base.encoder.layer[0] if first is None else first
    captured: list = []

    def hook(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    out = []
    try:
        for batch in batches:
            captured.clear()
            try:
                base(**batch, **call_kwargs)
            except _Stop:
                pass
            if not captured:
                raise RuntimeError("the model's first layer was never called; is this a supported model?")
            args, kwargs = captured[0]
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            out.append(LayerInput(hidden.detach(), rest, dict(kwargs), batch["attention_mask"].bool()))
    finally:
        handle.remove()
    return out


def run_layer(layer: nn.Module, inputs: list[LayerInput]) -> list[LayerInput]:
    """The layer's outputs, as the next layer's inputs."""
    out = []
    for item in inputs:
        y = layer(item.hidden, *item.args, **item.kwargs)
        if isinstance(y, (tuple, list)):  # transformers 4.x returns a tuple
            y = y[0]
        out.append(LayerInput(y.detach(), item.args, item.kwargs, item.mask))
    return out


def module_inputs(layer: nn.Module, module: nn.Module, inputs: list[LayerInput]) -> list[torch.Tensor]:
    """The first positional input of ``module`` (a submodule of ``layer``) for each batch, the pass through
    ``layer`` stopping there: e.g. the attention output that enters ``layer.intermediate``."""
    state = {}

    def hook(_module, args):
        state["x"] = args[0].detach()
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    out = []
    try:
        for item in inputs:
            try:
                layer(item.hidden, *item.args, **item.kwargs)
            except _Stop:
                pass
            out.append(state.pop("x"))
    finally:
        handle.remove()
    return out


def input_stats(xs: list[torch.Tensor], masks: list[torch.Tensor], *, full: bool, transform=None) -> InputStats:
    """Sums over the real tokens of the vectors ``transform(x)`` (or ``x``) for each batch ``x`` (B, L, D).

    ``full=False`` keeps only the Gram's diagonal. The products are formed in the activations' precision
    (float32) and summed in float64.
    """
    gram = sq = total = None
    tokens = 0
    for x, mask in zip(xs, masks):
        if transform is not None:
            x = transform(x)
        x = x[mask]  # (T_b, D) real tokens only
        if total is None:
            d = x.shape[1]
            gram = torch.zeros(d, d, dtype=torch.float64) if full else None
            sq = torch.zeros(d, dtype=torch.float64)
            total = torch.zeros(d, dtype=torch.float64)
        if full:
            gram += (x.T @ x).to(torch.float64)
        x64 = x.to(torch.float64)
        sq += (x64 * x64).sum(0)
        total += x64.sum(0)
        tokens += x.shape[0]
    if gram is not None:
        gram = (gram + gram.T) / 2  # exactly symmetric
        sq = torch.diagonal(gram).clone()
    return InputStats(gram=gram, sq=sq, total=total, tokens=tokens)


def finish_ffn(layer: nn.Module, attention_outputs: list[torch.Tensor], inputs: list[LayerInput]) -> list[LayerInput]:
    """The layer's outputs from its attention outputs (the FFN sub-block alone), as the next layer's inputs."""
    out = []
    for att, item in zip(attention_outputs, inputs):
        y = layer.output(layer.intermediate(att), att)
        out.append(LayerInput(y.detach(), item.args, item.kwargs, item.mask))
    return out
