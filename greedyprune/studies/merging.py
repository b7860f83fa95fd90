"""Deprecated: joining shard databases (``merge_results``) lives in :mod:`greedyprune.studies.store`.

This module re-exports it for one release, so that ``from greedyprune.studies.merging import merge_results``
keeps working (with a ``DeprecationWarning``); the store no longer imports a module that imports the store.
"""
from __future__ import annotations

import warnings

from .store import VOLATILE_SUFFIXES, merge_results

__all__ = ["VOLATILE_SUFFIXES", "merge_results"]

warnings.warn("greedyprune.studies.merging is deprecated; import merge_results from greedyprune.studies.store",
              DeprecationWarning, stacklevel=2)
