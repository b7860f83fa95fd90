"""The ``greedyprune`` command line: one module per group of commands.

    greedyprune study pretraining | appendix-c | cnn | rethinking      (study.py)
    greedyprune train | prune                                          (deep.py)
    greedyprune plot | export | theory threshold | advise              (results.py)
    greedyprune prune-transformer                                      (transformer.py)
    greedyprune prune-llm                                              (llm.py)

A user's mistake (a bad option, a missing file, a damaged file, a locked output) is printed as
``greedyprune: error: ...`` with exit status 2: any :class:`greedyprune.errors.GreedyPruneError` (an
``InvalidOptionError``, a ``UsageError``, ...), an ``OSError`` or a ``FloatingPointError``. An internal failure
keeps its traceback (exit 1): greedyprune raises no plain ``ValueError`` or ``TypeError`` of its own (its checks
raise ``InvalidOptionError`` / ``InvalidTypeError``, subclasses of both), so one of those comes from torch,
numpy, Python itself or a bug.
``GREEDYPRUNE_DEBUG=1`` shows the traceback of every error.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import GreedyPruneError
from .common import UsageError

__all__ = ["UsageError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Option errors on one line, as every other error (``greedyprune: error: train: argument --lr: ...``),
    pointing to --help instead of printing the whole usage; the sub-commands' parsers are of this class too."""

    def error(self, message: str):
        command = self.prog.removeprefix("greedyprune").strip()
        self.exit(2, f"greedyprune: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import deep, llm, results, study, transformer

    parser = _Parser(prog="greedyprune", description="Structured pruning by greedy forward selection.")
    parser.add_argument("--version", action="version", version=f"greedyprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    study.register(sub)
    deep.register(sub)
    results.register(sub)
    transformer.register(sub)
    llm.register(sub)
    return parser


def _user_error(exc: BaseException) -> bool:
    return isinstance(exc, (GreedyPruneError, OSError, FloatingPointError))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as exc:  # noqa: BLE001 - user errors get a clean message; internal ones their traceback
        if os.environ.get("GREEDYPRUNE_DEBUG") or not _user_error(exc):
            raise
        parser.exit(2, f"greedyprune: error: {exc}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
