"""Presets, overrides and checks shared by the studies' configuration dataclasses."""
from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import TypeVar

from ..errors import InvalidOptionError

__all__ = ["pick_preset", "override", "check_sgd"]

C = TypeVar("C")


def pick_preset(presets: dict[str, C], name: str) -> C:
    """``presets[name]``, with an error that lists the known presets."""
    if name not in presets:
        raise InvalidOptionError(f"unknown preset {name!r}; expected one of {tuple(presets)}")
    return presets[name]


def override(base: C, what: str, **overrides) -> C:
    """``base`` (a dataclass) with the given fields replaced; unknown names are refused."""
    names = {f.name for f in fields(base)}
    unknown = set(overrides) - names
    if unknown:
        raise InvalidOptionError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(names)}")
    return replace(base, **overrides)


def check_sgd(config) -> None:
    """The SGD settings of a CNN study's config, checked before anything is written: ``lr`` and ``finetune_lr``
    positive and finite, ``momentum`` in [0, 1), ``weight_decay`` finite and >= 0, and the seeds in range."""
    from ..training.loop import TrainConfig

    TrainConfig(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay).validate()
    lr = getattr(config, "finetune_lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise InvalidOptionError(f"finetune_lr must be a positive finite number, got {lr!r}")
    for seed in [getattr(config, "seed", 0), *getattr(config, "seeds", [])]:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 23:
            raise InvalidOptionError(f"seeds must be ints in [0, {2 ** 23 - 1}], got {seed!r}")
