"""The studies' registry: one :class:`Study` subclass per study, registered by name with
:func:`register_study`; ``greedyprune study NAME`` and the report of a study's results (``greedyprune plot`` /
``merge``, :func:`greedyprune.studies.report`) are generated from it. The built-in studies are registered in
:mod:`~greedyprune.studies.catalog`.

A study never imports the command line: the CLI hands its shared option helpers (the module
:mod:`greedyprune.cli.common`) to :meth:`Study.add_arguments` and :meth:`Study.main` as ``cli``.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from ..checks import check_choice
from ..errors import InvalidOptionError, InvalidTypeError

__all__ = ["STUDIES", "Study", "get_study", "register_study", "report", "study_for_kind", "study_kinds",
           "study_names"]


class Study:
    """One study: subclass it, set :attr:`name`, :attr:`help` and :attr:`description` (and :attr:`kind` with
    :attr:`report_module`, or :meth:`report`, if it keeps a results database), implement
    :meth:`add_arguments` and :meth:`main`, and register it with :func:`register_study`;
    ``greedyprune study NAME`` then runs it."""

    name: ClassVar[str] = ""
    """The sub-command: ``greedyprune study NAME``."""
    help: ClassVar[str] = ""
    """One line in ``greedyprune study --help``."""
    description: ClassVar[str] = ""
    """The paragraph of ``greedyprune study NAME --help``."""
    kind: ClassVar[str | None] = None
    """The kind its results database is stored under (``ResultsStore``'s kind), by which ``greedyprune plot`` and
    ``merge`` find its report; None: it keeps no results database."""
    report_module: ClassVar[str | None] = None
    """The module of ``greedyprune.studies`` whose ``report(rows, out_dir, draw)`` reports its rows (see
    :meth:`report`)."""

    def add_arguments(self, parser: argparse.ArgumentParser, cli: ModuleType) -> None:
        """Add the sub-command's options to ``parser``; ``cli`` is :mod:`greedyprune.cli.common` (option types,
        options generated from a config dataclass, ``--device`` / ``--threads`` / ``--no-progress``)."""

    def main(self, args: argparse.Namespace, cli: ModuleType) -> int:
        """Run the study for the parsed ``args``, print what it found and return the exit status."""
        raise NotImplementedError(f"study {self.name!r} has no main")

    def report(self, rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
        """The text report (and, with ``draw``, the figures) of its result rows: by default
        ``greedyprune.studies.<report_module>.report``."""
        if self.report_module is None:
            raise InvalidOptionError(f"study {self.name!r} has no report")
        return importlib.import_module(f"{__package__}.{self.report_module}").report(rows, out_dir, draw)


STUDIES: dict[str, Study] = {}
"""The registered studies by name, in registration order (:func:`register_study`)."""


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: register a :class:`Study` subclass under its ``name`` (an instance is kept in
    :data:`STUDIES`). Refuses a name, or a results kind, already taken."""
    if not (isinstance(cls, type) and issubclass(cls, Study)):
        raise InvalidTypeError(f"register_study takes a Study subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"study class {cls.__name__} needs a name (a non-empty str)")
    if name in STUDIES:
        raise InvalidOptionError(f"study {name!r} is already registered ({type(STUDIES[name]).__name__}); "
                                 f"choose another name")
    if cls.kind is not None and cls.kind in study_kinds():
        raise InvalidOptionError(f"results kind {cls.kind!r} is already reported by study "
                                 f"{study_for_kind(cls.kind).name!r}")
    STUDIES[name] = cls()
    return cls


def study_names() -> tuple[str, ...]:
    """The registered studies' names, in registration order."""
    return tuple(STUDIES)


def study_kinds() -> tuple[str, ...]:
    """The results kinds the registered studies report."""
    return tuple(s.kind for s in STUDIES.values() if s.kind is not None)


def get_study(name: str) -> Study:
    """The study registered as ``name`` (an :class:`~greedyprune.errors.InvalidOptionError` naming the choices
    otherwise)."""
    return STUDIES[check_choice("study", name, study_names())]


def study_for_kind(kind: str) -> Study:
    """The study whose results database is of ``kind`` (an error naming the known kinds otherwise)."""
    for study in STUDIES.values():
        if study.kind is not None and study.kind == kind:
            return study
    raise InvalidOptionError(f"no report for study kind {kind!r}; known kinds: {sorted(study_kinds())}")


def report(kind: str, rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
    """The text report (and, with ``draw``, the figures) of a study's rows, for any registered results kind."""
    study = study_for_kind(kind)
    if not rows:
        raise InvalidOptionError(f"{out_dir} holds no result rows yet")
    return study.report(rows, out_dir, draw)
