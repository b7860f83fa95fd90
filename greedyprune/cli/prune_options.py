"""``greedyprune prune``'s flags for the :func:`~greedyprune.channels.prune_model` options that have no hand-written
flag: generated from its signature (the name, the default) and its docstring (the help), with a parsing type
per option in :data:`OPTION_TYPES`. A new ``prune_model`` keyword without an entry there (or in
:data:`HAND_WRITTEN` / :data:`NOT_FLAGS`) fails at import, so the CLI cannot fall behind the library."""
from __future__ import annotations

import argparse
import inspect
import re

from .common import int_at_least, name_list, nonnegative_float, nonnegative_int, number, positive_int

__all__ = ["HAND_WRITTEN", "NOT_FLAGS", "OPTION_TYPES", "add_prune_model_options", "docstring_help",
           "prune_model_overrides"]

HAND_WRITTEN = {"epsilon", "accuracy_tolerance", "keep_ratio", "flops_target", "params_target", "candidates",
                "replacement", "batch_size", "seed", "device", "finetune_steps", "method", "objective", "calibration",
                "uniform", "distributed", "progress"}
"""Options with a flag written in ``cli/deep.py`` (rule flags are mutually exclusive there; ``--workers``
sets ``distributed``; ``--no-progress`` sets ``progress``)."""
NOT_FLAGS = {"model", "data", "rule", "process_group", "inplace"}
"""Arguments a command line cannot give: the model and data are loaded by the command, a rule object and a
process group are Python objects, and the CLI never prunes the loaded model in place."""


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
    "eval_examples": dict(type=positive_int),
    "stack_elements": dict(type=positive_int),
    "check": dict(action=argparse.BooleanOptionalAction),
    "unsupported": dict(choices=("error", "skip")),
    "step": dict(type=_step, metavar="N|auto"),
    "curve_points": dict(type=positive_int),
    "refit": dict(choices=("lstsq",)),
    "refit_ridge": dict(type=number(0, low_open=True)),
    "budget_curves": dict(choices=("sensitivity", "local", "network")),
}


def docstring_help(function, name: str) -> str:
    """The text of ``name``'s entry in ``function``'s Google-style ``Args:`` section (entries may name several
    arguments, ``a, b: ...``), joined into one line."""
    doc = inspect.getdoc(function) or ""
    args = doc.split("Args:", 1)[-1].split("\nReturns:", 1)[0]
    entries = re.split(r"\n(?=    [a-z][a-z_0-9]*(?:, [a-z][a-z_0-9]*)*:)", "\n" + args.strip("\n"))
    for entry in entries:
        head, _, text = entry.strip().partition(":")
        if name in [h.strip() for h in head.split(",")]:
            text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)  # Sphinx roles
            return " ".join(text.replace("``", "").split())
    return ""


def _generated(prune_model) -> list[inspect.Parameter]:
    params = [p for p in inspect.signature(prune_model).parameters.values()
              if p.name not in HAND_WRITTEN | NOT_FLAGS]
    missing = [p.name for p in params if p.name not in OPTION_TYPES]
    if missing:
        raise RuntimeError(f"prune_model options without a CLI flag: {missing}; add each to OPTION_TYPES (or to "
                           f"HAND_WRITTEN / NOT_FLAGS) in greedyprune/cli/prune_options.py")
    return params


def add_prune_model_options(parser: argparse.ArgumentParser) -> None:
    """One flag per :func:`prune_model` option not written by hand, in a group of its own; absent flags are
    left out of the call (``prune_model``'s own defaults apply)."""
    from ..channels.search import prune_model  # the defining module: tests may stub the package's name

    group = parser.add_argument_group("more prune_model options (generated; see help(greedyprune.prune_model))")
    for p in _generated(prune_model):
        default = "" if p.default is None else f" (default: {p.default})"
        text = (docstring_help(prune_model, p.name) + default).replace("%", "%%")
        group.add_argument("--" + p.name.replace("_", "-"), dest=p.name, default=argparse.SUPPRESS, help=text,
                           **OPTION_TYPES[p.name])


def prune_model_overrides(args: argparse.Namespace) -> dict:
    """The generated options given on the command line, as ``prune_model`` keywords."""
    return {name: getattr(args, name) for name in OPTION_TYPES if hasattr(args, name)}
