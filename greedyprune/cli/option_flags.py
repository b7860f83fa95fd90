"""Command-line flags generated from an option dataclass (:mod:`greedyprune.options`): one ``--field-name`` per
field, its help the field's own (markup removed) followed by its default, its parsing from a table of argparse
keywords per name (``type=``, ``choices=``, ``action=``, ...). A field with no entry in that table, and no
hand-written flag, fails when the parser is built, so a command cannot fall behind its options class.

Absent flags are left out of the namespace (``default=argparse.SUPPRESS``): :func:`given_options` returns the
ones given, and the dataclass's own defaults apply to the rest. :func:`deprecated_alias` keeps an old flag's
spelling working with a warning.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..options import plain_help

__all__ = ["add_option_flags", "deprecated_alias", "given_options", "option_flags"]


def option_flags(cls, types: dict[str, dict], *, hand_written=(), where: str) -> list[tuple[str, str, object]]:
    """``(name, help, default)`` of a flag per field of ``cls`` not in ``hand_written``, in field order.

    Raises:
        RuntimeError: a field has neither an entry in ``types`` nor a hand-written flag (the message says to
            add it in ``where``, the module that builds the command's flags).
    """
    out = [(f.name, plain_help(f.metadata.get("help", "")), f.default) for f in fields(cls)
           if f.name not in hand_written]
    missing = [name for name, _, _ in out if name not in types]
    if missing:
        raise RuntimeError(f"{cls.__name__} fields without a CLI flag: {missing}; add each to the flag types (or "
                           f"to the hand-written flags) in {where}")
    return out


def add_option_flags(parser, flags, types: dict[str, dict], *, notes: dict[str, str] | None = None) -> None:
    """Add one ``--name`` per ``(name, help, default)`` of ``flags`` to ``parser`` (or an argument group), with
    the argparse keywords ``types[name]``; the help shows the default, then ``notes[name]`` (what the command
    does differently). Absent flags stay out of the namespace."""
    for name, text, default in flags:
        shown = "" if default is None else f" (default: {default})"
        note = (notes or {}).get(name, "")
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                            help=(text + shown + note).replace("%", "%%"), **types[name])


def given_options(args: argparse.Namespace, names) -> dict:
    """The options among ``names`` given on the command line, as keywords."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def deprecated_alias(new: str) -> type[argparse.Action]:
    """An argparse action for an old spelling of the flag ``new``: stores the value under the new flag's
    destination (give ``dest=``) and prints ``greedyprune: warning: ...`` naming the new spelling on stderr."""

    class DeprecatedAlias(argparse._StoreAction):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"greedyprune: warning: {option_string} is deprecated and will be removed; use {new} (the same "
                  f"values)", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return DeprecatedAlias
