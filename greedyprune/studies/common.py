"""Presets and overrides shared by the studies' configuration dataclasses."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import TypeVar

C = TypeVar("C")


def pick_preset(presets: dict[str, C], name: str) -> C:
    """``presets[name]``, with an error that lists the known presets."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; expected one of {tuple(presets)}")
    return presets[name]


def override(base: C, what: str, **overrides) -> C:
    """``base`` (a dataclass) with the given fields replaced; unknown names are refused."""
    names = {f.name for f in fields(base)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(names)}")
    return replace(base, **overrides)
