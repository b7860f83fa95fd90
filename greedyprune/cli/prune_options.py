"""``greedyprune prune``'s flags for the :func:`~greedyprune.channels.prune_model` options that have no hand-written
flag: one per field of :class:`~greedyprune.channels.PruneOptions` (the name, the default, the help from the
field's metadata) and one per explicit keyword in :data:`KEYWORD_FLAGS` (``skip``, ``extra_skip``: help from
``prune_model``'s docstring), with a parsing type per flag in :data:`OPTION_TYPES`. A new field without an entry
there (or in :data:`HAND_WRITTEN`) fails when the parser is built, so the CLI cannot fall behind the library (the
generator is :mod:`~greedyprune.cli.option_flags`, shared with ``prune-transformer`` and ``prune-llm``)."""
from __future__ import annotations

import argparse
import inspect
import re

from ..options import plain_help
from .option_flags import add_option_flags, given_options, option_flags
from .common import int_at_least, name_list, nonnegative_float, nonnegative_int, number, positive_int

__all__ = ["HAND_WRITTEN", "KEYWORD_FLAGS", "NOT_FLAGS", "OPTION_TYPES", "add_prune_model_options",
           "docstring_help", "generated_flags", "prune_model_overrides"]

HAND_WRITTEN = {"epsilon", "accuracy_tolerance", "keep_ratio", "flops_target", "params_target", "candidates",
                "replacement", "batch_size", "seed", "device", "finetune_steps", "objective", "calibration",
                "uniform", "distributed", "progress"}
"""Options with a flag written in ``cli/deep.py`` (rule flags are mutually exclusive there; ``--workers``
sets ``distributed``; ``--no-progress`` sets ``progress``). ``--method`` there is the deprecated spelling of the
generated ``--evaluator``."""
KEYWORD_FLAGS = ("skip", "extra_skip")
"""``prune_model``'s explicit keywords (not :class:`PruneOptions` fields) with a generated flag."""
NOT_FLAGS = {"model", "data", "options", "rule", "process_group", "inplace", "overrides"}
"""Arguments a command line cannot give: the model and data are loaded by the command, an options object, a rule
object and a process group are Python objects (the options' fields are flags), and the CLI never prunes the
loaded model in place."""


def _step(text: str):
    return text if text == "auto" else int_at_least(1)(text)


OPTION_TYPES: dict[str, dict] = {
    "max_steps": dict(type=positive_int),
    "skip": dict(type=name_list, metavar="LAYER[,LAYER...]"),
    "extra_skip": dict(type=name_list, metavar="LAYER[,LAYER...]"),
    "bn": dict(choices=("auto", "batch", "running")),
    "recalibrate": dict(type=nonnegative_int),
    "holdout": dict(type=nonnegative_int),
    "finetune_lr": dict(type=number(0, low_open=True)),
    "finetune_weight_decay": dict(type=nonnegative_float),
    "evaluator": dict(choices=("auto", "fast", "reference")),
    "eval_examples": dict(type=positive_int),
    "stack_elements": dict(type=positive_int),
    "check": dict(action=argparse.BooleanOptionalAction),
    "unsupported": dict(choices=("error", "skip")),
    "step": dict(type=_step, metavar="N|auto"),
    "curve_points": dict(type=positive_int),
    "refit": dict(choices=("lstsq",)),
    "refit_ridge": dict(type=number(0, low_open=True)),
    "budget_curves": dict(choices=("sensitivity", "local", "network")),
    "compensate": dict(choices=("mean-var", "mean", "none")),
    "memory_format": dict(choices=("auto", "channels_last", "keep")),
}


def docstring_help(function, name: str) -> str:
    """The text of ``name``'s entry in ``function``'s Google-style ``Args:`` section (entries may name several
    arguments, ``a, b: ...``), joined into one line."""
    doc = inspect.getdoc(function) or ""
    args = doc.split("Args:", 1)[-1].split("\nReturns:", 1)[0]
    entries = re.split(r"\n(?=    [a-z*][a-z_0-9*]*(?:, [a-z][a-z_0-9]*)*:)", "\n" + args.strip("\n"))
    for entry in entries:
        head, _, text = entry.strip().partition(":")
        if name in [h.strip() for h in head.split(",")]:
            return plain_help(text)
    return ""


def generated_flags() -> list[tuple[str, str, object]]:
    """``(name, help, default)`` of every generated flag: the explicit keywords of :data:`KEYWORD_FLAGS`, then
    the fields of :class:`PruneOptions` not in :data:`HAND_WRITTEN`, in their order."""
    from ..channels.options import PruneOptions
    from ..channels.search import prune_model  # the defining module: tests may stub the package's name

    params = inspect.signature(prune_model).parameters
    out = [(name, docstring_help(prune_model, name), params[name].default) for name in KEYWORD_FLAGS]
    return out + option_flags(PruneOptions, OPTION_TYPES, hand_written=HAND_WRITTEN,
                              where="greedyprune/cli/prune_options.py (OPTION_TYPES, HAND_WRITTEN)")


def add_prune_model_options(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`PruneOptions` field (and explicit keyword) not written by hand, in a group of its
    own; absent flags are left out of the call (``prune_model``'s own defaults apply)."""
    group = parser.add_argument_group("more prune_model options (generated; see help(greedyprune.PruneOptions))")
    add_option_flags(group, generated_flags(), OPTION_TYPES)


def prune_model_overrides(args: argparse.Namespace) -> dict:
    """The generated options given on the command line, as ``prune_model`` keywords."""
    return given_options(args, OPTION_TYPES)
