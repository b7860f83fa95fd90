"""Files the package writes and reads: atomic writes, checksummed torch files, safe loading, run locks.

* :func:`atomic_write` - every file is written to ``NAME.tmp``, flushed and fsynced, renamed over
  ``NAME``, and the directory is fsynced, so an interruption leaves either the old file or the new one.
* :func:`save_torch` / :func:`load_torch` - ``torch.save`` dictionaries that carry a checksum of all
  their tensors and values. Torch's zip reader checks no CRCs, so a damaged file would otherwise load
  with garbage weights; here a mismatch is an :class:`IntegrityError` naming the file. Loading uses
  ``weights_only=True``: a file can never run code while it is read, unless the caller passes
  ``trust_pickle=True`` (for a full-module pickle it made itself).
* :func:`load_pickle_restricted` - read a plain pickle (a data set's file format) with an unpickler that
  admits only the globals the format needs and numpy arrays only through numpy's own reconstruction, sized
  by the file (:mod:`greedyprune.safepickle`); anything else is refused, naming it and the file.
* :class:`RunLock` - one process per run directory: a second run on the same directory fails at once
  with the other process's id, instead of both writing the same files.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from ._text import first_line
from .errors import GreedyPruneError, InvalidOptionError, InvalidTypeError, UnsafeFileError

__all__ = ["atomic_write", "atomic_write_text", "check_writable_dir", "check_writable_file", "CHECKSUM_KEY",
           "first_line", "IntegrityError", "load_pickle_restricted", "load_torch", "payload_digest",
           "remove_stale_tmp", "run_directory", "RunLock", "RunLockedError", "save_torch", "UnsafeFileError"]

CHECKSUM_KEY = "checksum"
TMP_SUFFIX = ".tmp"
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class IntegrityError(GreedyPruneError, ValueError):
    """A file's contents do not match the checksum stored in it (damaged on disk or edited)."""


class RunLockedError(GreedyPruneError, RuntimeError):
    """Another process holds the run directory's lock."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open ``path + ".tmp"`` for writing; on success fsync it, rename it over ``path`` and fsync the
    directory. On an exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:  # said once, with what to do
            raise OSError(exc.errno, f"cannot write {path} ({exc.strerror}); make {path.parent} writable (or free "
                                     f"disk space) and run the same command again - what was finished is kept") \
                from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp`` files an interrupted write left under ``directory`` (recursively); returns them."""
    removed = []
    for tmp in Path(directory).rglob("*" + TMP_SUFFIX):
        if tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


# ------------------------------------------------------------------------------------------ checksums


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"B%d" % len(obj))
        h.update(bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        h.update(f"{type(obj).__module__}.{type(obj).__qualname__};".encode())  # opaque objects: type only


def payload_digest(payload: Any) -> str:
    """A BLAKE2b digest of a nested structure of tensors, dicts, lists and plain values.

    Tensors contribute dtype, shape and bytes; dict keys are taken in sorted order, so the digest does not
    depend on insertion order. Used to detect damaged files: not a signature.
    """
    h = hashlib.blake2b(digest_size=20)
    _feed(h, payload)
    return h.hexdigest()


def save_torch(path: str | os.PathLike, payload: dict) -> Path:
    """``torch.save(payload)`` to ``path`` atomically, with ``payload["checksum"]`` added."""
    if not isinstance(payload, dict):
        raise InvalidTypeError(f"payload must be a dict, got {type(payload).__name__}")
    body = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
    body[CHECKSUM_KEY] = payload_digest(body)
    with atomic_write(path) as f:
        torch.save(body, f)
    return Path(path)


def load_torch(path: str | os.PathLike, *, what: str = "file", trust_pickle: bool = False,
               require_checksum: bool | str = False, map_location="cpu", offer_trust: bool = True) -> Any:
    """Read a torch file safely.

    Args:
        path: the file.
        what: how to name the file in messages ("model checkpoint", "training state", ...).
        trust_pickle: allow arbitrary pickled objects (``weights_only=False``). Unpickling can run any code
            the file's author chose: pass True only for files you made yourself.
        require_checksum: refuse a dict without a stored checksum (a string: only a dict whose ``format``
            entry is that string - files of other programs carry none).
        offer_trust: whether the message for a file holding pickled objects suggests ``trust_pickle=True``
            (False for the caller's formats that never hold any).

    Returns:
        The loaded object. A dict with a ``checksum`` entry is verified (and returned without it).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an empty or unreadable file.
        UnsafeFileError: the file holds pickled objects and ``trust_pickle`` is False.
        IntegrityError: the stored checksum does not match the contents.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    size = path.stat().st_size
    if size == 0:
        raise InvalidOptionError(
            f"{path} is empty (0 bytes), so it is not a {what}; an interrupted write or a full disk "
            f"may have left it - delete it and recompute")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found and not trust_pickle:
            fix = (" If you made this file yourself and trust it, load it with trust_pickle=True (--trust-pickle on "
                   "the command line)" if offer_trust else f" A {what} never holds them.")
            raise UnsafeFileError(
                f"{path} holds pickled Python objects ({found.group(1)}), which are not loaded because unpickling "
                f"can run arbitrary code.{fix}") from exc
        raise InvalidOptionError(f"{path} is not a readable {what}: it is damaged or not a torch file "
                                 f"({first_line(exc)}); delete it to recompute") from exc
    except Exception as exc:  # noqa: BLE001 - zip errors, truncation, bad magic: re-raised with the path
        raise InvalidOptionError(f"{path} is not a readable {what}: it is damaged or not a torch file "
                                 f"({type(exc).__name__}: {first_line(exc)}); delete it to recompute") from exc
    if isinstance(payload, dict) and CHECKSUM_KEY in payload:
        stored = payload.pop(CHECKSUM_KEY)
        if stored != payload_digest(payload):
            raise IntegrityError(f"{path} is damaged: its contents do not match the checksum stored in it, so its "
                                 f"weights cannot be trusted. Delete it to recompute it (or restore a copy)")
    elif require_checksum is True or (isinstance(require_checksum, str) and isinstance(payload, dict)
                                       and payload.get("format") == require_checksum):
        raise IntegrityError(f"{path} carries no checksum, so it was not written by this version of greedyprune "
                             f"or was altered; delete it to recompute")
    return payload


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` into bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ plain pickles


def load_pickle_restricted(path: str | os.PathLike, *, what: str, allowed: dict | None = None) -> Any:
    """Unpickle a data file without running code or exhausting memory: see
    :func:`greedyprune.safepickle.load_pickle_restricted`."""
    from .safepickle import load_pickle_restricted as load

    return load(path, what=what, allowed=allowed)


# ------------------------------------------------------------------------------------------ output paths


def check_writable_dir(directory: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``directory`` if needed and check that a file can be written in it (before long work)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidOptionError(f"{what} {directory} exists and is not a directory; choose another path")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".greedyprune-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InvalidOptionError(
            f"cannot write to {what} {directory} ({exc.strerror or exc}); choose a writable path") \
            from None
    return directory


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, before long work, that ``path`` can be written: not a directory, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise InvalidOptionError(f"{what} {path} is a directory; give a file name")
    check_writable_dir(path.parent, f"the folder of {what} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidOptionError(f"{what} {path} exists and is not writable; choose another path")
    return path


class RunLock:
    """An exclusive lock on a run directory, held for the life of a run (``with RunLock(out): ...``).

    The lock is an ``flock`` on ``DIR/.lock``, so it is released when the process ends for any reason
    (a crash or ``kill -9`` leaves no stale lock). A second process fails at once with
    :class:`RunLockedError` naming the holder's process id.
    """

    def __init__(self, directory: str | os.PathLike, lock_file: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.path = Path(lock_file) if lock_file is not None else self.directory / ".lock"
        self._file = None

    @classmethod
    def for_file(cls, path: str | os.PathLike) -> "RunLock":
        """A lock for a single output file: ``FILE.lock`` beside it."""
        path = Path(path)
        return cls(path.parent, path.with_name(path.name + ".lock"))

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - platforms without flock: no locking
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            what = self.directory if self.path.name == ".lock" else self.path.with_suffix("")
            raise RunLockedError(f"{what} is in use by another greedyprune process (pid {holder}); wait for it to "
                                 f"finish, or choose another output") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self.path.name != ".lock":  # a single file's lock is not left beside it
                with contextlib.suppress(OSError):
                    self.path.unlink()


@contextlib.contextmanager
def run_directory(directory: str | os.PathLike, what: str = "output directory") -> Iterator[Path]:
    """A run's output directory for the life of the run: checked writable first, locked against a second
    process (:class:`RunLock`), cleared of the ``*.tmp`` files an interrupted earlier run left; if the run
    fails and the directory was new and is still empty, it is removed again."""
    directory = Path(directory)
    existed = directory.exists()
    check_writable_dir(directory, what)
    try:
        with RunLock(directory):
            remove_stale_tmp(directory)
            yield directory
    except BaseException:
        if not existed:
            leftovers = [p for p in directory.iterdir() if p.name != ".lock"] if directory.is_dir() else []
            if not leftovers:
                with contextlib.suppress(OSError):
                    (directory / ".lock").unlink()
                    directory.rmdir()
        raise
