"""Integrity of a saved transformer directory: ``greedyprune.json`` records a BLAKE2b digest of every file that
defines the model (weights, config, tokenizer files) and a checksum of itself; a load checks them first, so a
damaged or edited file is an error that names it instead of loading silently as another model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..fileio import IntegrityError, atomic_write_text

__all__ = ["CHECKSUM", "check_digests", "file_digest", "write_checked_meta"]

CHECKSUM = "checksum"
_FIX = "prune the model again, or restore a copy of the directory"


def file_digest(path: Path) -> str:
    """BLAKE2b (160-bit) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != CHECKSUM}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=20).hexdigest()


def write_checked_meta(directory: Path, meta_name: str, meta: dict, files: list[str]) -> None:
    """Write ``meta`` as ``directory/meta_name`` with the digests of ``files`` (names in ``directory``) and its
    own checksum; written last, since it vouches for the other files."""
    meta = {**meta, "files": {name: file_digest(directory / name) for name in dict.fromkeys(files)}}
    atomic_write_text(directory / meta_name, json.dumps({**meta, CHECKSUM: _meta_digest(meta)}, indent=1))


def check_digests(directory: Path, meta_name: str, meta: dict, required: tuple[str, ...]) -> None:
    """Every file the metadata lists has the digest stored there, the list covers ``required``, and the
    metadata itself is unchanged.

    Raises:
        IntegrityError: a digest or the checksum differs, or the directory carries no digests.
        FileNotFoundError: a listed file is missing.
    """
    where = directory / meta_name
    if not isinstance(meta.get(CHECKSUM), str) or not isinstance(meta.get("files"), dict):
        raise IntegrityError(f"{where} carries no digests of the model's files, so it was written by an older "
                             f"greedyprune or edited; {_FIX}")
    if meta[CHECKSUM] != _meta_digest(meta):
        raise IntegrityError(f"{where} is damaged or was edited since greedyprune wrote it (its checksum does not "
                             f"match its contents); {_FIX}")
    files = meta["files"]
    missing = [name for name in required if name not in files]
    if missing:
        raise IntegrityError(f"{where} lists no digest for {', '.join(missing)}; {_FIX}")
    for name, digest in files.items():
        path = directory / str(name)
        if Path(str(name)).name != name or not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {_FIX}")
        if file_digest(path) != digest:
            raise IntegrityError(f"{path} is damaged or was edited since greedyprune wrote it (its digest differs "
                                 f"from the one in {meta_name}), so it would load as another model; {_FIX}")
