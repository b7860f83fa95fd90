"""Deprecated: the data-parallel training pieces moved to :mod:`greedyprune.distributed.ddp`.

Re-exported here for one release (with a ``DeprecationWarning``).
"""
from __future__ import annotations

import warnings

from ..distributed.ddp import GlobalBatchNormMixin, cross_rank_batchnorm

__all__ = ["GlobalBatchNormMixin", "cross_rank_batchnorm"]

warnings.warn("greedyprune.training.ddp is deprecated; import cross_rank_batchnorm from greedyprune.distributed.ddp",
              DeprecationWarning, stacklevel=2)
