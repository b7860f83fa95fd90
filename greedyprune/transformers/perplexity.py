"""How a pruned decoder does: perplexity on fixed token windows, and greedy generation speed.

Perplexity is ``exp`` of the mean next-token cross-entropy over every predicted token of the windows
(each window is scored on its own, from its first token; ``L - 1`` predictions per window of ``L``).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..errors import InvalidOptionError

__all__ = ["generation_speed", "perplexity"]


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 8) -> float:
    """``exp(mean cross-entropy)`` of a causal LM on (n, L) token windows (eval mode, restored after)."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise InvalidOptionError("windows must be an (n, L) integer tensor with L >= 2 (see token_windows)")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start:start + batch_size]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                               reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(total / count)


@torch.no_grad()
def generation_speed(model: nn.Module, prompt: torch.Tensor, *, new_tokens: int = 64, repeats: int = 3) -> float:
    """Tokens per second of greedy ``generate()`` (batch of one, key/value cache on): the best of ``repeats``
    runs of ``new_tokens`` tokens after ``prompt`` (1, P), after one warm-up run."""
    model.eval()
    prompt = prompt.reshape(1, -1)
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   attention_mask=torch.ones_like(prompt))
    pad = getattr(model.config, "eos_token_id", None)
    if getattr(model.generation_config, "pad_token_id", None) is None and pad is not None:
        options["pad_token_id"] = pad if isinstance(pad, int) else pad[0]
    model.generate(prompt, **{**options, "max_new_tokens": 4, "min_new_tokens": 4})
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        model.generate(prompt, **options)
        best = min(best, time.perf_counter() - t)
    return new_tokens / best
