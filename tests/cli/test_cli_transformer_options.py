"""``greedyprune prune-transformer`` and ``prune-llm`` offer every TransformerPruneOptions field: their option flags
are generated from the dataclass (the generator of ``greedyprune prune``), and the old flags keep their names and
defaults."""
import argparse
from dataclasses import fields

import pytest

from greedyprune.cli import build_parser
from greedyprune.cli.llm import HAND_WRITTEN as LLM_HAND_WRITTEN
from greedyprune.cli.transformer import ENCODER_ONLY_SKIPPED, generated_flags, transformer_options
from greedyprune.transformers.options import DEFAULT_METHOD, DEFAULT_REFIT, DEFAULT_RIDGE, TransformerPruneOptions

FIELDS = {f.name for f in fields(TransformerPruneOptions)}


def _parser(command):
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise AssertionError("no sub-commands")


def _check_flags_are_the_fields(command, generated, skipped, spelled=None):
    assert set(generated) == FIELDS - set(skipped)
    by_dest = {a.dest: a for a in _parser(command)._actions}
    for name in FIELDS - set(skipped):  # the flag's help is the field's (markup removed), then its default
        flag = by_dest[name]
        assert flag.option_strings[0] == "--" + name.replace("_", "-")
        text = TransformerPruneOptions.__dataclass_fields__[name].metadata["help"]
        assert text and flag.help.startswith(text.replace("``", "")[:20]), name
        assert flag.default is argparse.SUPPRESS  # absent: the dataclass's default applies
    for name, dest in (spelled or {}).items():
        assert dest in by_dest and name not in by_dest


def test_prune_transformer_flags_are_the_option_fields():
    generated = [name for name, _, _ in generated_flags()]
    _check_flags_are_the_fields("prune-transformer", generated, ENCODER_ONLY_SKIPPED)
    assert set(ENCODER_ONLY_SKIPPED) == {"heads_unit", "widths"}  # decoders only


def test_prune_llm_flags_are_the_option_fields():
    generated = [name for name, _, _ in generated_flags(decoder=True, hand_written=LLM_HAND_WRITTEN)]
    _check_flags_are_the_fields("prune-llm", generated, LLM_HAND_WRITTEN, spelled=LLM_HAND_WRITTEN)


def test_a_field_without_a_flag_type_fails_when_the_parser_is_built(monkeypatch):
    from greedyprune.cli import transformer

    real = transformer.transformer_flag_types
    monkeypatch.setattr(transformer, "transformer_flag_types",
                        lambda **kw: {k: v for k, v in real(**kw).items() if k != "ridge"})
    with pytest.raises(RuntimeError, match=r"TransformerPruneOptions fields without a CLI flag: \['ridge'\]"):
        build_parser()


def test_the_old_flags_keep_their_names_and_defaults():
    for command in ("prune-transformer", "prune-llm"):
        args = build_parser().parse_args([command])
        options = transformer_options(args)
        assert options == TransformerPruneOptions(ffn_keep=0.5)  # the old default keep fraction
        assert (options.method, options.refit, options.ridge, options.seed) == (DEFAULT_METHOD, DEFAULT_REFIT,
                                                                                DEFAULT_RIDGE, 0)
    args = build_parser().parse_args(["prune-transformer", "--heads-keep", "0.5", "--refit", "none", "--method", "gfs",
                                      "--ridge", "2", "--max-length", "64", "--batch-size", "4", "--seed", "3"])
    assert transformer_options(args) == TransformerPruneOptions(heads_keep=0.5, refit=None, method="gfs", ridge=2.0,
                                                                max_length=64, batch_size=4, seed=3)
    args = build_parser().parse_args(["prune-llm", "--heads-keep", "0.6667", "--heads-unit", "query", "--widths", "gfs",
                                      "--window", "32", "--layers", "0,2", "--no-replacement", "--method", "taylor"])
    assert args.window == 32 and not hasattr(args, "max_length")
    assert transformer_options(args) == TransformerPruneOptions(heads_keep=0.6667, heads_unit="query", widths="gfs",
                                                                layers=(0, 2), replacement=False, method="taylor")
    assert transformer_options(build_parser().parse_args(["prune-llm", "--widths", "3,4"])).widths == (3, 4)
    for bad in (["--layers", "-1"], ["--widths", "0,3"], ["--widths", "wide"], ["--refit", "qr"],
                ["--heads-unit", "both"], ["--method", "taylor2"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["prune-llm", *bad])
    with pytest.raises(SystemExit):  # decoders only
        build_parser().parse_args(["prune-transformer", "--heads-unit", "query"])
