"""Joining the results databases of a study's shards (``greedyprune merge``): all or nothing.

Every source is read and checked first - the same study kind, key and configuration, and a row found in two
databases the same in both (timings aside) - and only then are the new rows written to the target, so a
refused merge leaves the target as it was (a new target is not created).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from .store import ConfigMismatchError, ResultsStore, config_differences
from ..errors import InvalidOptionError

__all__ = ["VOLATILE_SUFFIXES", "merge_results"]

#: Columns that may differ between two computations of the same row (timings, insert times).
VOLATILE_SUFFIXES = ("seconds", "created")


def merge_results(target: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> tuple[int, int]:
    """Join the databases of a study's shards (or of any runs of one configuration) into ``target``.

    Every source must be a results database of the same study kind, key and configuration (the target too,
    if it exists); otherwise ValueError / :class:`ConfigMismatchError` names the file and the difference. A
    key found in more than one database must hold the same values in each (timing columns aside), else
    ValueError names the key, the column and both files. Nothing is written unless every check passes.
    Returns ``(rows added, rows already there)``.
    """
    stores = []
    try:
        for src in sources:
            stores.append(ResultsStore(src))
        if not stores:
            raise InvalidOptionError("nothing to merge: name at least one results database")
        first = stores[0]
        config = first.config()
        for other in stores[1:]:
            if (other.kind, other.key_columns) != (first.kind, first.key_columns):
                raise ConfigMismatchError(f"{other.path} holds {other.kind!r} rows keyed by {list(other.key_columns)}, "
                                          f"{first.path} {first.kind!r} rows keyed by {list(first.key_columns)}")
            diffs = config_differences(config or {}, other.config() or {})
            if diffs:
                raise ConfigMismatchError(f"{other.path} and {first.path} hold results of different configurations:"
                                          "\n" + "\n".join(f"  {d}" for d in diffs))
        have: dict[tuple, tuple[dict, Path]] = {}
        existing = Path(target).is_file()
        if existing:
            with ResultsStore(target, first.schema) as out:
                if config is not None:
                    out.bind_config(config)  # refuses a target of another configuration before any write
                have = {tuple(r[c] for c in out.key_columns): (r, out.path) for r in out.rows()}
        new, kept = [], 0
        for store in stores:
            for row in store.rows():
                key = tuple(row[c] for c in first.key_columns)
                if key in have:
                    _check_same(have[key], (row, store.path), dict(zip(first.key_columns, key)))
                    kept += 1
                    continue
                have[key] = (row, store.path)
                new.append(row)
        with ResultsStore(target, first.schema) as out:
            if config is not None:
                out.bind_config(config)
            for row in new:
                out.add(row)
        return len(new), kept
    finally:
        for store in stores:
            store.close()


def _check_same(a: tuple[dict, Path], b: tuple[dict, Path], key: dict) -> None:
    (first, first_path), (second, second_path) = a, b
    for name in first:
        if name.endswith(VOLATILE_SUFFIXES):
            continue
        x, y = first[name], second.get(name)
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            row = ", ".join(f"{k}={v}" for k, v in key.items())
            raise InvalidOptionError(f"the row {row} differs between {first_path} and {second_path} in {name!r} ({x!r} vs "
                             f"{y!r}), so these databases do not come from one configuration; nothing was merged")
