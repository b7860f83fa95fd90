"""Llama-family decoders: which models are supported, and physically smaller decoder layers.

A supported decoder layer (Llama, Mistral, Qwen2 share the module names) is

    h = x + o_proj(attention(q_proj, k_proj, v_proj)(norm1(x)))
    y = h + down_proj(act(gate_proj(n)) * up_proj(n)),   n = norm2(h)

with grouped-query attention: ``H`` query heads of ``head_dim`` channels share ``KV`` key/value heads, query
head ``q`` reading key/value head ``q // (H / KV)``. The prunable units are

* MLP neurons: neuron i is row i of ``gate_proj`` and ``up_proj`` and column i of ``down_proj``;
* whole key/value groups (``heads_unit="kv"``): a key/value head with the ``H / KV`` query heads that read
  it - rows of ``q_proj``, ``k_proj``, ``v_proj`` and the matching ``o_proj`` columns;
* query heads (``heads_unit="query"``): the same number of query heads kept in every group (so that
  ``repeat_kv`` still maps query head ``q`` to group ``q // r``); keys and values stay whole.

The attention module's ``num_key_value_groups`` (queries per key/value head) is updated when query heads
go; the head count is inferred from the projections' widths by ``transformers`` 5. Llama has no bias on
``down_proj`` / ``o_proj``; a method that compensates a bias (FLAP, ``gfs-ls``, the refit) gets one: the
Linear is replaced by one with a bias (saved in the state dict as ``...down_proj.bias`` and recreated on
load from the per-layer record, see :mod:`~greedyprune.transformers.decoder_io`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import GreedyPruneError, InvalidOptionError
from .support import UnsupportedModelError, require_transformers
from .surgery import new_linear

__all__ = ["DECODER_SUPPORTED", "HalfPrecisionError", "add_bias", "decoder_layer_shape", "decoder_of", "is_decoder",
           "kv_channels", "shrink_kv_groups", "shrink_mlp", "shrink_query_heads"]

DECODER_SUPPORTED = ("a Llama-family decoder - transformers.LlamaForCausalLM / LlamaModel, or Mistral / Qwen2 "
                     "models with the same modules (layers[i].self_attn.{q,k,v,o}_proj, "
                     "layers[i].mlp.{gate,up,down}_proj, all nn.Linear)")

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


class HalfPrecisionError(GreedyPruneError, ValueError):
    """The model is in half precision; pruning measures float64 statistics on a float32 model."""


def _base(model):
    """The module holding ``layers`` (the model itself or its ``.model``), or None."""
    for candidate in (model, getattr(model, "model", None)):
        if isinstance(candidate, nn.Module) and isinstance(getattr(candidate, "layers", None), nn.ModuleList) \
                and hasattr(candidate, "embed_tokens"):
            return candidate
    return None


def is_decoder(model) -> bool:
    """Whether ``model`` looks like a decoder (a ``layers`` list under ``model`` or ``model.model``, with
    ``embed_tokens``): such a model goes to the decoder path of ``prune_transformer``."""
    return _base(model) is not None


def decoder_of(model) -> nn.Module:
    """The inner decoder (``LlamaModel``-like: ``embed_tokens``, ``layers``, ``norm``) of ``model``.

    Raises:
        UnsupportedModelError: a decoder whose layers lack the modules above (the message names the first
            missing one and what is supported).
        HalfPrecisionError: float16 / bfloat16 weights - refused, not upcast silently: call ``model.float()``
            first (the pruned model is then float32; ``.half()`` it afterwards if wanted).
    """
    require_transformers()
    base = _base(model)
    if base is None:
        raise UnsupportedModelError(f"not a decoder: {type(model).__name__}; supported: {DECODER_SUPPORTED}")
    if len(base.layers) == 0:
        raise UnsupportedModelError("the decoder has no layers")
    for i, layer in enumerate(base.layers):
        for path in [f"self_attn.{n}" for n in _ATTN] + [f"mlp.{n}" for n in _MLP]:
            try:
                module = layer.get_submodule(path)
            except AttributeError:
                module = None
            if not isinstance(module, nn.Linear):
                raise UnsupportedModelError(f"decoder layer {i} ({type(layer).__name__}) has no nn.Linear {path}; "
                                            f"prune_transformer supports {DECODER_SUPPORTED}")
        for name, owner in (("head_dim", layer.self_attn), ("num_key_value_groups", layer.self_attn),
                            ("act_fn", layer.mlp)):
            if not hasattr(owner, name):
                raise UnsupportedModelError(f"decoder layer {i}: {type(owner).__name__} has no {name}; supported: "
                                            f"{DECODER_SUPPORTED}")
    dtypes = {p.dtype for p in model.parameters()}
    half = dtypes & {torch.float16, torch.bfloat16}
    if half:
        raise HalfPrecisionError(f"the model is in {sorted(map(str, half))[0]}; pruning is refused in half "
                                 f"precision (its statistics would be measured on rounded activations): call "
                                 f"model.float() first")
    return base


def decoder_layer_shape(layer: nn.Module) -> dict:
    """``{"intermediate", "heads", "kv_heads", "down_bias", "o_bias"}`` of a decoder layer."""
    attn, mlp = layer.self_attn, layer.mlp
    hd = int(attn.head_dim)
    return {"intermediate": int(mlp.down_proj.in_features), "heads": int(attn.q_proj.out_features // hd),
            "kv_heads": int(attn.k_proj.out_features // hd), "down_bias": mlp.down_proj.bias is not None,
            "o_bias": attn.o_proj.bias is not None}


def _out(like: nn.Linear, weight: torch.Tensor | None, bias: torch.Tensor | None, cols: torch.Tensor) -> nn.Linear:
    """An output projection with the kept input columns ``cols`` (or the new ``weight``) and ``bias`` (a new one
    is added when the old Linear had none)."""
    w = like.weight[:, cols] if weight is None else weight
    b = like.bias if bias is None else bias
    return new_linear(w, b, like)


def shrink_mlp(layer: nn.Module, keep: torch.Tensor, out_weight: torch.Tensor | None = None,
               out_bias: torch.Tensor | None = None) -> None:
    """Keep the MLP neurons ``keep`` (ascending) of a decoder layer, in place: rows of gate/up, columns of
    down (``out_weight`` (d, len(keep)) replaces them; ``out_bias`` sets down_proj's bias, adding one)."""
    mlp = layer.mlp
    keep = keep.to(mlp.gate_proj.weight.device)
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            lin = getattr(mlp, name)
            setattr(mlp, name, new_linear(lin.weight[keep], None if lin.bias is None else lin.bias[keep], lin))
        mlp.down_proj = _out(mlp.down_proj, out_weight, out_bias, keep)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())


def kv_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channels of the given heads (ascending with them) in a (heads * head_dim) projection."""
    return (heads.reshape(-1, 1) * head_dim + torch.arange(head_dim).reshape(1, -1)).reshape(-1)


def _slice_rows(attn: nn.Module, name: str, channels: torch.Tensor) -> None:
    lin = getattr(attn, name)
    setattr(attn, name, new_linear(lin.weight[channels], None if lin.bias is None else lin.bias[channels], lin))


def shrink_kv_groups(layer: nn.Module, keep: torch.Tensor, out_weight: torch.Tensor | None = None,
                     out_bias: torch.Tensor | None = None) -> None:
    """Keep the key/value groups ``keep`` (ascending) - each key/value head with its query heads - in place."""
    attn = layer.self_attn
    hd, r = int(attn.head_dim), int(attn.num_key_value_groups)
    keep = keep.to(attn.q_proj.weight.device)
    queries = (keep.reshape(-1, 1) * r + torch.arange(r, device=keep.device).reshape(1, -1)).reshape(-1)
    q_ch, kv_ch = kv_channels(queries, hd), kv_channels(keep, hd)
    with torch.no_grad():
        _slice_rows(attn, "q_proj", q_ch)
        _slice_rows(attn, "k_proj", kv_ch)
        _slice_rows(attn, "v_proj", kv_ch)
        attn.o_proj = _out(attn.o_proj, out_weight, out_bias, q_ch)


def shrink_query_heads(layer: nn.Module, keep: torch.Tensor, out_weight: torch.Tensor | None = None,
                       out_bias: torch.Tensor | None = None) -> None:
    """Keep the query heads ``keep`` (ascending; the same number in every key/value group), in place.

    Raises:
        ValueError: the groups would keep different numbers of query heads (``repeat_kv`` needs equal ones).
    """
    attn = layer.self_attn
    hd, r = int(attn.head_dim), int(attn.num_key_value_groups)
    kv = attn.k_proj.out_features // hd
    per_group = torch.bincount(keep.cpu() // r, minlength=kv)
    if int(per_group.min()) != int(per_group.max()) or int(per_group.min()) == 0:
        raise InvalidOptionError(
            f"query heads {keep.tolist()} keep {per_group.tolist()} heads in the {kv} key/value groups; "
            f"every group must keep the same number (at least 1)")
    ch = kv_channels(keep.to(attn.q_proj.weight.device), hd)
    with torch.no_grad():
        _slice_rows(attn, "q_proj", ch)
        attn.o_proj = _out(attn.o_proj, out_weight, out_bias, ch)
    attn.num_key_value_groups = int(per_group[0])


def add_bias(linear_owner: nn.Module, name: str) -> None:
    """Give ``linear_owner.<name>`` (an nn.Linear without bias) a zero bias, in place (used on load)."""
    lin = getattr(linear_owner, name)
    if lin.bias is None:
        zeros = torch.zeros(lin.out_features, dtype=lin.weight.dtype)
        setattr(linear_owner, name, new_linear(lin.weight.detach(), zeros, lin))
