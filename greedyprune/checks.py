"""Argument checks shared by the whole package, one exception type per kind of mistake.

* a value of the wrong *type* (a float where an int is needed, a string for a tensor) raises ``TypeError``;
* a value of the right type but outside its range (``k=0``, ``keep_ratio=1.5``, NaN) raises
  ``greedyprune.errors.InvalidOptionError``, a ``ValueError``.

Every message names the argument, what was expected and what was given. Integers may be Python ints,
numpy integers or 0-d integer tensors (anything with ``__index__``); ``bool`` is never an int here.
"""
from __future__ import annotations

import math
import numbers
import operator
import os

import torch

from .errors import InvalidOptionError, InvalidTypeError

__all__ = ["as_device", "check_choice", "check_int", "check_number", "check_finite", "check_fits_in_memory",
           "check_model_size", "memory_bytes", "non_finite_weights"]


def check_int(name: str, value, minimum: int | None = None, *, maximum: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as a Python int, checked against ``minimum`` / ``maximum``.

    Raises:
        TypeError: not an integer (bools and floats are refused, even ``2.0``).
        ValueError: below ``minimum`` or above ``maximum``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidTypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(value).__name__} "
                               f"({value!r})")
    try:
        out = operator.index(value)
    except TypeError:
        raise InvalidTypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {type(value).__name__} "
                               f"({value!r:.60})") from None
    if minimum is not None and out < minimum:
        raise InvalidOptionError(f"{name} must be >= {minimum}, got {out}")
    if maximum is not None and out > maximum:
        raise InvalidOptionError(f"{name} must be <= {maximum}, got {out}")
    return out


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a finite float in the interval given by ``low`` / ``high`` (closed unless ``*_open``).

    Raises:
        TypeError: not a real number (bools refused).
        ValueError: NaN, infinite, or outside the interval.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)) or (
            isinstance(value, torch.Tensor) and (value.numel() != 1 or value.is_complex())):
        raise InvalidTypeError(f"{name} must be a number, got {type(value).__name__} ({value!r:.60})")
    out = float(value)
    if not math.isfinite(out):
        raise InvalidOptionError(f"{name} must be a finite number, got {out!r}")
    below = low is not None and (out <= low if low_open else out < low)
    above = high is not None and (out >= high if high_open else out > high)
    if below or above:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (")" if high_open or high is None
                                                                                 else "]")
        raise InvalidOptionError(f"{name} must be in {interval}, got {out!r}")
    return out


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices`` (ValueError listing them otherwise)."""
    if value not in tuple(choices):
        raise InvalidOptionError(f"unknown {name} {value!r}; expected one of {tuple(choices)}")
    return value


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """ValueError naming how many entries of ``tensor`` are NaN or infinite, if any are."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            raise InvalidOptionError(f"{name} contains {int(bad.sum())} NaN or infinite value(s) (first at flat index "
                                     f"{int(torch.nonzero(bad.reshape(-1))[0])}); clean or drop those examples first")


def non_finite_weights(model: torch.nn.Module) -> str:
    """The parameters and buffers of ``model`` that hold NaN or infinite values, in words ("" if none do)."""
    bad = [(name, int((~torch.isfinite(t)).sum())) for name, t in model.state_dict().items()
           if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    shown = ", ".join(f"{name} ({n} value{'s' if n > 1 else ''})" for name, n in bad[:3])
    return shown + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_fits_in_memory(nbytes: int, what: str, fix: str) -> None:
    """ValueError if ``nbytes`` (what ``what`` would allocate) exceeds this machine's memory; checked before
    allocating, so a huge size is a clear message rather than an allocator's failure or the OOM killer."""
    total = memory_bytes()
    if total is not None and nbytes > total:
        raise InvalidOptionError(
            f"{what} needs about {nbytes / 2 ** 30:,.1f} GiB, more than the {total / 2 ** 30:,.1f} GiB "
            f"of memory this machine has; {fix}")


def check_model_size(model: torch.nn.Module, what: str, fix: str) -> None:
    """ValueError if training ``model`` (weights, gradients and momentum in float32) would not fit in this
    machine's memory; ``model`` may be on the meta device, so this runs before anything is allocated."""
    params = sum(p.numel() for p in model.parameters())
    check_fits_in_memory(12 * params, f"{what} has {params:,} parameters and training it", fix)


def as_device(device) -> torch.device:
    """A ``torch.device`` that exists here: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (ValueError otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidOptionError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type not in ("cpu", "cuda"):
        raise InvalidOptionError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(f"device {str(device)!r} was asked for but CUDA is not available here; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidOptionError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} "
                                 f"CUDA device(s)")
    return dev
