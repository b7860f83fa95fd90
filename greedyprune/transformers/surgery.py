"""Physically smaller encoder layers: FFN neurons and attention heads removed by slicing Linear layers.

The heads are removed by slicing the query, key, value and output projections here rather than by the
model's own ``prune_heads``: ``transformers`` 5 no longer has it, and slicing lets the kept heads' output
columns carry new weights (GFS scales, a refit). The attention module's ``num_attention_heads`` and
``all_head_size`` are updated (transformers 4.x reshapes with them; 5.x infers the head count), and so is
its ``pruned_heads`` record where the installed version keeps one.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["head_size", "layer_shape", "new_linear", "shrink_ffn", "shrink_heads"]


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def head_size(layer: nn.Module) -> int:
    """Channels per attention head of an encoder layer."""
    return int(layer.attention.self.attention_head_size)


def layer_shape(layer: nn.Module) -> dict:
    """``{"intermediate": FFN width, "heads": number of heads}`` of an encoder layer."""
    return {"intermediate": int(layer.intermediate.dense.out_features),
            "heads": int(layer.attention.self.query.out_features // head_size(layer))}


def shrink_ffn(layer: nn.Module, keep: torch.Tensor, out_weight: torch.Tensor | None = None,
               out_bias: torch.Tensor | None = None) -> None:
    """Keep only the FFN neurons ``keep`` (ascending indices) of an encoder layer, in place.

    Args:
        layer: a BertLayer.
        keep: the kept neurons.
        out_weight: the output projection's new kept columns (d, len(keep)); default its current ones.
        out_bias: its new bias; default the current one.
    """
    inter, out = layer.intermediate.dense, layer.output.dense
    keep = keep.to(inter.weight.device)
    with torch.no_grad():
        w1 = inter.weight[keep]
        b1 = inter.bias[keep] if inter.bias is not None else None
        w2 = out.weight[:, keep] if out_weight is None else out_weight
        b2 = out.bias if out_bias is None or out.bias is None else out_bias
        layer.intermediate.dense = new_linear(w1, b1, inter)
        layer.output.dense = new_linear(w2, b2, out)


def shrink_heads(layer: nn.Module, keep: torch.Tensor, out_weight: torch.Tensor | None = None,
                 out_bias: torch.Tensor | None = None) -> None:
    """Keep only the attention heads ``keep`` (ascending indices among the current heads), in place.

    Args:
        layer: a BertLayer.
        keep: the kept heads.
        out_weight: the attention output projection's new kept columns (d, len(keep) * head size);
            default its current ones.
        out_bias: its new bias; default the current one.
    """
    attn = layer.attention.self
    size = head_size(layer)
    heads_before = attn.query.out_features // size
    channels = (keep.reshape(-1, 1) * size + torch.arange(size).reshape(1, -1)).reshape(-1)
    channels = channels.to(attn.query.weight.device)
    dense = layer.attention.output.dense
    with torch.no_grad():
        for name in ("query", "key", "value"):
            lin = getattr(attn, name)
            setattr(attn, name, new_linear(lin.weight[channels], lin.bias[channels] if lin.bias is not None else None,
                                        lin))
        w = dense.weight[:, channels] if out_weight is None else out_weight
        b = dense.bias if out_bias is None or dense.bias is None else out_bias
        layer.attention.output.dense = new_linear(w, b, dense)
    attn.num_attention_heads = int(keep.numel())
    attn.all_head_size = int(keep.numel()) * size
    pruned = getattr(layer.attention, "pruned_heads", None)
    if isinstance(pruned, set) and not pruned and keep.numel() < heads_before:
        layer.attention.pruned_heads = set(range(heads_before)) - set(keep.tolist())
