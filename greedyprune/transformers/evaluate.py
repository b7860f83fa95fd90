"""How close a pruned encoder stays to the dense one: sentence embeddings, neighbours, size, latency.

Sentence embeddings are computed as sentence-transformers' all-MiniLM-L6-v2 does: the mean of the last
hidden states over a sentence's real tokens, normalised to unit length.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidOptionError

__all__ = ["compare_embeddings", "count_parameters", "embed", "latency", "paired_latency"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def _base(model):
    return getattr(model, "base_model", model)


@torch.no_grad()
def embed(model: nn.Module, tokenizer, sentences: Sequence[str], *, batch_size: int = 64,
          max_length: int = 128) -> torch.Tensor:
    """(len(sentences), hidden) unit-length mean-pooled sentence embeddings (float32, CPU)."""
    base = _base(model)
    was_training = base.training
    base.eval()
    sentences = list(sentences)
    # similar lengths batched together (less padding); the rows are put back in the given order
    lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(sentences)), key=lengths.__getitem__)
    out = []
    try:
        for start in range(0, len(order), batch_size):
            enc = tokenizer([sentences[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(next(base.parameters()).device) for k, v in enc.items()}
            hidden = base(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=1).cpu())
    finally:
        base.train(was_training)
    result = torch.empty(len(sentences), out[0].shape[1]) if out else torch.empty(0, base.config.hidden_size)
    if out:
        result[torch.tensor(order)] = torch.cat(out)
    return result


def compare_embeddings(dense: torch.Tensor, pruned: torch.Tensor) -> dict:
    """Agreement of two embeddings of the same sentences (rows unit length).

    Returns:
        ``cosine``: mean cosine similarity of each sentence's two embeddings; ``cosine_min``: the lowest;
        ``nn_agreement``: fraction of sentences whose nearest other sentence is the same under both.
    """
    if dense.shape != pruned.shape:
        raise InvalidOptionError(f"embeddings differ in shape: {tuple(dense.shape)} vs {tuple(pruned.shape)}")
    cos = (dense * pruned).sum(1)
    out = {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}
    if dense.shape[0] >= 2:
        def neighbours(e):
            sim = e @ e.T
            sim.fill_diagonal_(-float("inf"))
            return sim.argmax(1)

        out["nn_agreement"] = float((neighbours(dense) == neighbours(pruned)).float().mean())
    return out


@torch.no_grad()
def latency(model: nn.Module, tokenizer, sentences: Sequence[str], *, batch_size: int = 32, repeats: int = 5,
            warmup: int = 1) -> float:
    """Median seconds to encode one batch of ``batch_size`` sentences (CPU timing, eval mode)."""
    base = _base(model)
    base.eval()
    enc = tokenizer(list(sentences[:batch_size]), padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
    for _ in range(warmup):
        base(**enc)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        base(**enc)
        times.append(time.perf_counter() - t)
    return float(sorted(times)[len(times) // 2])


@torch.no_grad()
def paired_latency(dense: nn.Module, pruned: nn.Module, tokenizer, sentences: Sequence[str], *, batch_size: int = 16,
                   repeats: int = 15) -> dict:
    """CPU time to encode one batch under each model, timed alternately (dense, pruned, dense, ...).

    On a machine shared with other work, the two timings of a pair see about the same load, so the
    median over pairs of their ratio is a steadier speedup than a ratio of separate medians.

    Returns:
        ``{"dense": s, "pruned": s, "speedup": x}``: the fastest time of each model (the one least
        disturbed by other work) and the median over pairs of ``dense / pruned``.
    """
    enc = tokenizer(list(sentences[:batch_size]), padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
    bases = [_base(dense).eval(), _base(pruned).eval()]
    for base in bases:
        base(**enc)  # warm-up
    times = ([], [])
    for _ in range(repeats):
        for j, base in enumerate(bases):
            t = time.perf_counter()
            base(**enc)
            times[j].append(time.perf_counter() - t)
    ratios = sorted(d / p for d, p in zip(*times))
    return {"dense": float(min(times[0])), "pruned": float(min(times[1])), "speedup": float(ratios[len(ratios) // 2])}
