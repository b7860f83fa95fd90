"""Small fits shared by the studies."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InvalidOptionError

__all__ = ["fit_power_law"]


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit of ``log y = a log x + b``: returns ``(a, stderr(a), exp(b))``.

    The standard error is the usual OLS one, ``sqrt(SSR / (n - 2) / Sxx)`` with ``Sxx`` the centred sum of
    squares of ``log x``; it is NaN for two points (no degrees of freedom left).
    """
    lx = np.log(np.asarray(x, dtype=float))
    ly_in = np.asarray(y, dtype=float)
    if lx.shape != ly_in.shape or lx.ndim != 1:
        raise InvalidOptionError(f"x and y must be 1-d of the same length, got shapes {lx.shape} and {ly_in.shape}")
    if lx.size < 2:
        raise InvalidOptionError(f"need at least two points to fit a power law, got {lx.size}")
    if not (np.all(np.isfinite(lx)) and np.all(ly_in > 0) and np.all(np.isfinite(ly_in))):
        raise InvalidOptionError("fit_power_law needs positive finite x and y")
    ly = np.log(ly_in)
    xc = lx - lx.mean()
    sxx = float(xc @ xc)
    if sxx == 0:
        raise InvalidOptionError("fit_power_law needs at least two distinct x values")
    a = float(xc @ (ly - ly.mean())) / sxx
    b = float(ly.mean() - a * lx.mean())
    n = lx.size
    if n > 2:
        resid = ly - (a * lx + b)
        stderr = math.sqrt(float(resid @ resid) / (n - 2) / sxx)
    else:
        stderr = math.nan
    return a, stderr, math.exp(b)
