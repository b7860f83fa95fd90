"""``greedyprune prune`` offers every prune_model option: the generated flags against the fields of
PruneOptions and prune_model's explicit keywords."""
import argparse
import inspect
from dataclasses import fields

import pytest

from greedyprune.channels import PruneOptions, prune_model
from greedyprune.cli import build_parser
from greedyprune.cli.prune_options import (HAND_WRITTEN, KEYWORD_FLAGS, NOT_FLAGS, docstring_help, generated_flags,
                                           prune_model_overrides)

# hand-written flags whose destination is not the option's own name
SPELLED = {"distributed": "workers", "progress": "no_progress"}


def _prune_parser():
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["prune"]
    raise AssertionError("no prune command")


def test_prune_help_lists_every_prune_model_option():
    dests = {a.dest for a in _prune_parser()._actions}
    options = ({f.name for f in fields(PruneOptions)} | set(inspect.signature(prune_model).parameters)) - NOT_FLAGS
    missing = {name for name in options if SPELLED.get(name, name) not in dests}
    assert not missing, f"prune_model options without a `greedyprune prune` flag: {sorted(missing)}"
    help_text = _prune_parser().format_help()
    for name in options - HAND_WRITTEN:
        assert "--" + name.replace("_", "-") in help_text


def test_generated_flags_reach_prune_model_and_absent_ones_stay_out():
    args = build_parser().parse_args(["prune", "ck.pt", "--refit-ridge", "2", "--no-check", "--skip", "a, b",
                                      "--step", "auto", "--budget-curves", "local", "--recalibrate", "0"])
    assert prune_model_overrides(args) == {"refit_ridge": 2.0, "check": False, "skip": ["a", "b"], "step": "auto",
                                           "budget_curves": "local", "recalibrate": 0}
    assert prune_model_overrides(build_parser().parse_args(["prune", "ck.pt"])) == {}
    assert build_parser().parse_args(["prune", "ck.pt", "--step", "3"]).step == 3
    for bad in (["--step", "0"], ["--refit-ridge", "-1"], ["--bn", "stale"], ["--recalibrate", "nan"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["prune", "ck.pt", *bad])


def test_help_comes_from_the_docstring_entry_even_when_it_names_several_options():
    def f(a, b, c):
        """Do.

        Args:
            a, b: the first two, on
                two lines with :func:`~pkg.mod.thing` and ``code``.
            c: the third.

        Returns:
            nothing.
        """

    assert docstring_help(f, "b") == "the first two, on two lines with thing and code."
    assert docstring_help(f, "c") == "the third."
    assert docstring_help(prune_model, "skip").startswith("layers whose groups stay whole")


def test_the_generated_flags_are_the_option_fields_without_a_hand_written_flag():
    option_fields = {f.name for f in fields(PruneOptions)}
    explicit = set(inspect.signature(prune_model).parameters) - NOT_FLAGS
    assert not option_fields & explicit, "an option is both a PruneOptions field and an explicit keyword"
    generated = [name for name, _, _ in generated_flags()]
    assert set(generated) == (option_fields - HAND_WRITTEN) | set(KEYWORD_FLAGS)
    assert HAND_WRITTEN <= option_fields | explicit
    assert set(KEYWORD_FLAGS) <= explicit
    by_dest = {a.dest: a for a in _prune_parser()._actions}
    for f in fields(PruneOptions):
        if f.name not in HAND_WRITTEN:  # the flag's help is the field's (markup removed), then its default
            flag = by_dest[f.name]
            assert flag.option_strings[0] == "--" + f.name.replace("_", "-")
            help_text = f.metadata["help"]
            assert help_text and flag.help.startswith(help_text.replace("``", "")[:20]), f.name
    assert by_dest["budget_curves"].help.startswith("what adaptive budgets")
    assert "(default: sensitivity)" in by_dest["budget_curves"].help
