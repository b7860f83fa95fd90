"""``greedyprune study NAME``: one sub-command per registered study (:mod:`greedyprune.studies.registry`;
the built-in ones: pretraining | appendix-c | cnn | rethinking, in :mod:`greedyprune.studies.catalog`)."""
from __future__ import annotations

from . import common

__all__ = ["register"]


def register(sub) -> None:
    from ..studies import STUDIES

    study = sub.add_parser("study", help="run a study from the papers")
    studies = study.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True
    for entry in STUDIES.values():
        parser = studies.add_parser(entry.name, help=entry.help or None, description=entry.description or None)
        entry.add_arguments(parser, common)
        parser.set_defaults(handler=lambda args, entry=entry: entry.main(args, common))
