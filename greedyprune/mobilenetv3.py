"""Deprecated: MobileNetV3-Small moved to :mod:`greedyprune.models.mobilenetv3`.

Re-exported here for one release (with a ``DeprecationWarning``), so that ``from greedyprune.mobilenetv3 import
MobileNetV3Small`` and modules pickled under this path (``save_checkpoint(..., full_module=True)``) keep loading.
"""
from __future__ import annotations

import warnings

from .models.mobilenetv3 import (MOBILENETV3_SMALL_CFG, InvertedResidualV3, MobileNetV3Small, SqueezeExcitation,
                                 make_divisible)

__all__ = ["MOBILENETV3_SMALL_CFG", "MobileNetV3Small", "SqueezeExcitation", "make_divisible"]
_PICKLED = (InvertedResidualV3,)  # every class of the old module, for modules pickled under its path

warnings.warn("greedyprune.mobilenetv3 is deprecated; import MobileNetV3Small from greedyprune.models "
              "(or greedyprune.models.mobilenetv3)", DeprecationWarning, stacklevel=2)
