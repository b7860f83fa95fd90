"""Deprecated: the readers of data files on disk moved to :mod:`greedyprune.data.files`.

Re-exported here for one release (with a ``DeprecationWarning``); import them from ``greedyprune.data``.
"""
from __future__ import annotations

import warnings

from .data.files import load_cifar10, load_mnist_idx

__all__ = ["load_cifar10", "load_mnist_idx"]

warnings.warn("greedyprune.datafiles is deprecated; import load_mnist_idx / load_cifar10 from greedyprune.data",
              DeprecationWarning, stacklevel=2)
