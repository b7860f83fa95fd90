"""Deprecated: process groups, local worker launch and the candidate split moved to
:mod:`greedyprune.distributed.parallel`.

Re-exported here for one release (with a ``DeprecationWarning``); import them from ``greedyprune.distributed``
(or ``greedyprune.distributed.parallel``).
"""
from __future__ import annotations

import warnings

from .distributed.parallel import (DEFAULT_TIMEOUT_S, CandidateSplit, DistributedSelectionError, WorkerError,
                                   init_process_group, is_initialised, is_main, launch, rank, split_range,
                                   world_size)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CandidateSplit",
    "DistributedSelectionError",
    "WorkerError",
    "init_process_group",
    "is_initialised",
    "is_main",
    "launch",
    "rank",
    "split_range",
    "world_size",
]

warnings.warn("greedyprune.parallel is deprecated; import from greedyprune.distributed "
              "(or greedyprune.distributed.parallel)", DeprecationWarning, stacklevel=2)
