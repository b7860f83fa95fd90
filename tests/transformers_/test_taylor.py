"""LLM-Pruner's first-order importance (greedyprune.transformers.taylor) against a loop over the weights: the
gradient of the mean next-token cross-entropy over every real token of every batch (padding excluded), each
weight's ``|w dL/dw|``, summed over the weights each MLP neuron, query head and key/value group removes."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason='needs pip install "greedyprune[transformers]"')

from greedyprune.transformers.taylor import taylor_scores  # noqa: E402

torch.set_num_threads(1)
VOCAB, HD, HEADS, KV = 40, 4, 6, 2


def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=36, intermediate_size=10,
                                      num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV,
                                      head_dim=HD, max_position_embeddings=32, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for rows, length, real in ((2, 9, [9, 5]), (3, 6, [6, 2, 4])):  # right padding, unequal token counts
        ids = torch.randint(0, VOCAB, (rows, length), generator=g)
        mask = (torch.arange(length) < torch.tensor(real).reshape(-1, 1)).long()
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_taylor_scores_are_the_summed_weight_times_gradient_of_each_removable_group():
    model, batches = _tiny_llama(), _batches()
    got = taylor_scores(model, model.model, batches)
    # by hand: the summed cross-entropy of every predicted real token, over their number
    total, count = 0.0, 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(2, b["input_ids"][:, 1:, None])[..., 0]  # token t+1
        real = b["attention_mask"][:, 1:].bool()
        total, count = total + nll[real].sum(), count + int(real.sum())
    (total / count).backward()
    r = HEADS // KV
    for layer, scores in zip(model.model.layers, got):
        attn, mlp = layer.self_attn, layer.mlp

        def sal(linear):
            return (linear.weight * linear.weight.grad).abs().double().detach()

        neuron = torch.tensor([float(sal(mlp.gate_proj)[i].sum() + sal(mlp.up_proj)[i].sum()
                                     + sal(mlp.down_proj)[:, i].sum()) for i in range(10)], dtype=torch.float64)
        query = torch.tensor([float(sal(attn.q_proj)[q * HD:(q + 1) * HD].sum()
                                    + sal(attn.o_proj)[:, q * HD:(q + 1) * HD].sum()) for q in range(HEADS)],
                             dtype=torch.float64)
        kv = torch.tensor([float(sal(attn.k_proj)[k * HD:(k + 1) * HD].sum() + sal(attn.v_proj)[k * HD:(k + 1) * HD]
                                 .sum() + query[k * r:(k + 1) * r].sum()) for k in range(KV)], dtype=torch.float64)
        torch.testing.assert_close(scores["mlp"], neuron, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(scores["query"], query, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(scores["kv"], kv, rtol=1e-4, atol=1e-9)


def test_taylor_scores_leave_no_gradient_and_the_requires_grad_flags_as_they_were():
    model = _tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    taylor_scores(model, model.model, _batches())
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.embed_tokens.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" not in n)
