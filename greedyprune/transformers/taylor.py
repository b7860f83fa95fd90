"""LLM-Pruner's first-order (Taylor) group importance for a decoder's MLP neurons and attention heads.

Ma, Fang and Wang (2023), "LLM-Pruner": the importance of a weight is the first-order estimate of the
change of the language-model loss when it is zeroed, ``|w * dL/dw|`` (its "param_first" salience), and a
group's importance is the sum over the weights that are removed together ("sum" aggregation):

* MLP neuron i: row i of ``gate_proj`` and ``up_proj`` and column i of ``down_proj``;
* query head q: its ``head_dim`` rows of ``q_proj`` and columns of ``o_proj``;
* key/value group g: the rows and columns of its query heads, plus its rows of ``k_proj`` and ``v_proj``.

The gradients are those of the mean next-token cross-entropy over the calibration windows, accumulated
batch by batch on the dense model, once, before any layer is pruned (LLM-Pruner scores the dense model).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["taylor_scores"]


def _salience(linear: nn.Linear) -> torch.Tensor:
    w = linear.weight
    return (w.detach() * w.grad).abs().to(torch.float64)


def taylor_scores(model: nn.Module, base: nn.Module, batches: list[dict]) -> list[dict]:
    """Per layer: ``{"mlp": (N,), "query": (H,), "kv": (KV,)}`` group importances (float64).

    Args:
        model: the causal LM (its forward takes ``labels``); its parameters' ``.grad`` are cleared after.
        base: its decoder (``model.model``), whose ``layers`` are scored.
        batches: calibration batches with ``input_ids`` and ``attention_mask``.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    tokens = sum(int(b["attention_mask"][:, 1:].sum()) for b in batches)
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for batch in batches:
                labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            use_cache=False)
                count = int(batch["attention_mask"][:, 1:].sum())
                (out.loss * (count / tokens)).backward()  # the mean over all calibration tokens
        scores = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            hd, r = int(attn.head_dim), int(attn.num_key_value_groups)
            neuron = (_salience(mlp.gate_proj).sum(1) + _salience(mlp.up_proj).sum(1)
                      + _salience(mlp.down_proj).sum(0))
            query = _salience(attn.q_proj).sum(1).reshape(-1, hd).sum(1) \
                + _salience(attn.o_proj).sum(0).reshape(-1, hd).sum(1)
            kv = _salience(attn.k_proj).sum(1).reshape(-1, hd).sum(1) \
                + _salience(attn.v_proj).sum(1).reshape(-1, hd).sum(1)
            scores.append({"mlp": neuron, "query": query, "kv": kv + query.reshape(-1, r).sum(1)})
    finally:
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
    return scores
