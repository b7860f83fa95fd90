"""The error curves the decoder widths are allocated from (greedyprune.transformers.widths.measure_dense_mlps):
each layer's curve divided by its block's dense centred output energy (``scale="block"``) or by the energy of
the residual stream at the layer's output (``"residual"``), both energies computed here by hand from the dense
model's activations on the real tokens. The curve itself and the allocation rules are checked against brute
force in ``test_llm.py`` and ``test_transformer_maths.py``."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason='needs pip install "greedyprune[transformers]"')

from greedyprune.transformers.stats import capture_layer_inputs  # noqa: E402
from greedyprune.transformers.widths import measure_dense_mlps  # noqa: E402

torch.set_num_threads(1)
VOCAB = 40


def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=12, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=6,
                                      max_position_embeddings=32, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for rows, length, real in ((2, 9, [9, 6]), (2, 7, [7, 3])):
        ids = torch.randint(0, VOCAB, (rows, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": (torch.arange(length) < torch.tensor(real)[:, None]).long()})
    return out


def test_error_curves_are_divided_by_the_block_or_the_residual_energy():
    model, batches = _tiny_llama(), _batches()
    base = model.model
    layers = {0, 2}
    with torch.no_grad():
        inputs = capture_layer_inputs(base, batches, first=base.layers[0], use_cache=False)
        block = measure_dense_mlps(base, inputs, layers, "gfs", scale="block")
        inputs = capture_layer_inputs(base, batches, first=base.layers[0], use_cache=False)
        residual = measure_dense_mlps(base, inputs, layers, "gfs", scale="residual")
    # by hand: each layer's down-projection inputs and outputs on the real tokens of a full dense forward
    seen = {i: {"a": [], "h": []} for i in range(3)}
    hooks = []
    for i, layer in enumerate(base.layers):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: seen[i]["a"].append(a[0])))
        hooks.append(layer.register_forward_hook(
            lambda m, a, out, i=i: seen[i]["h"].append(out[0] if isinstance(out, (tuple, list)) else out)))
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    for h in hooks:
        h.remove()
    for li in layers:
        masks = [b["attention_mask"].bool() for b in batches]
        a = torch.cat([x[m] for x, m in zip(seen[li]["a"], masks)]).double()
        hidden = torch.cat([x[m] for x, m in zip(seen[li]["h"], masks)]).double()
        w = base.layers[li].mlp.down_proj.weight.detach().double()
        out = (a - a.mean(0)) @ w.T
        block_energy, residual_energy = float((out ** 2).sum()), float((hidden ** 2).sum())
        assert float(block[li][0]) == pytest.approx(1.0, rel=1e-9)
        assert float(block[li][-1]) == pytest.approx(0.0, abs=1e-6)
        torch.testing.assert_close(residual[li], block[li] * block_energy / residual_energy, rtol=1e-4, atol=1e-8)
        assert block_energy != pytest.approx(residual_energy, rel=0.1)  # the two scales differ here
    assert set(block) == set(residual) == layers
