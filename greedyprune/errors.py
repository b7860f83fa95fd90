"""The package's exception hierarchy: every error greedyprune raises on purpose is a :class:`GreedyPruneError`.

::

    GreedyPruneError                                   the root: catch it to tell greedyprune's messages from bugs
    ├── InvalidOptionError (also a ValueError)         a bad argument, option, data set or file contents
    ├── InvalidTypeError (also a TypeError)            an argument of the wrong type
    ├── HalfPrecisionError, IntegrityError, UnsafeFileError, UnsupportedLayerError,
    │   ConfigMismatchError, DamagedDatabaseError    (also ValueErrors, as before)
    ├── UnsupportedModelError (also a TypeError)
    ├── RunLockedError, DistributedSelectionError, WorkerError (also RuntimeErrors)
    ├── ResultsNotWritableError (also an OSError)
    └── UsageError                                     a bad command-line option

Each subclass keeps the built-in base it had before this module existed, so ``except ValueError`` (or
``TypeError``, ``RuntimeError``, ``OSError``) still catches what it caught. The specific classes live beside
the code that raises them (``greedyprune.fileio``, ``greedyprune.studies.store``, ...); this module holds only
the root, the errors several modules raise, and imports nothing from the package.
"""
from __future__ import annotations

__all__ = ["GreedyPruneError", "InvalidOptionError", "InvalidTypeError", "UnsafeFileError"]


class GreedyPruneError(Exception):
    """Root of every error greedyprune raises on purpose (a user's mistake it can name, not a bug)."""


class InvalidOptionError(GreedyPruneError, ValueError):
    """A value of the right type that greedyprune cannot use: an option out of range, an unknown name, data or a
    file that does not fit. A ``ValueError``, so callers that catch ``ValueError`` are unaffected."""


class InvalidTypeError(GreedyPruneError, TypeError):
    """An argument of a type greedyprune cannot use (a model that is not a module, labels that are not a tensor of
    class indices, ...). A ``TypeError``, so callers that catch ``TypeError`` are unaffected."""


class UnsafeFileError(GreedyPruneError, ValueError):
    """A file holds pickled Python objects, which are not loaded unless the caller trusts the file (raised by
    :mod:`greedyprune.fileio` and :mod:`greedyprune.safepickle`; importable from either, as before)."""
