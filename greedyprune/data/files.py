"""Data sets read from disk: the full MNIST in its IDX format and CIFAR-10's "python version" batches.

Nothing is downloaded: put the files in a directory and name it (``load_dataset("mnist:DIR")``,
``load_dataset("cifar10:DIR")``). The IDX headers are checked against the file size before anything is
reshaped, and the CIFAR-10 batches - pickles - are read by a restricted unpickler that admits only the
expected dict of numpy arrays, lists and strings: a batch file cannot run code.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import InvalidOptionError
from ..fileio import UnsafeFileError, load_pickle_restricted
from .core import Dataset, check_normalize, check_split, describe_value, finish_dataset

__all__ = ["load_cifar10", "load_mnist_idx"]

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_SUBDIR = "cifar-10-batches-py"


# ----------------------------------------------------------------------------- MNIST (IDX files)


def _check_directory(directory: str | os.PathLike, what: str, fix: str) -> Path:
    path = Path(directory).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} directory {str(path)!r} does not exist; {fix}")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} path {str(path)!r} is not a directory; {fix}")
    return path


def _find_idx_file(directory: Path, base: str) -> Path:
    for name in (base, base + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file not found in {str(directory)!r}: looked for {base!r} and {base + '.gz'!r}; "
        f"put the MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte, plain or .gz) in that directory"
    )


def _read_file_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidOptionError(
                f"could not decompress {str(path)!r} as gzip ({exc}); the file is corrupt or truncated, "
                f"download it again"
            ) from exc
    return path.read_bytes()


def _read_idx(path: Path, magic_expected: int, ndim: int) -> tuple[tuple[int, ...], np.ndarray]:
    """Parse an unsigned-byte IDX file; return its dimensions and the flat uint8 payload."""
    data = _read_file_bytes(path)
    kind = "images" if magic_expected == _IDX_IMAGES_MAGIC else "labels"
    header_len = 4 + 4 * ndim
    if len(data) < 4:
        raise InvalidOptionError(
            f"IDX {kind} file {str(path)!r} is truncated: {len(data)} bytes, too short to hold the magic number; "
            f"download it again"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != magic_expected:
        hint = ""
        if data[:2] == b"\x1f\x8b":
            hint = " It looks gzip-compressed: give it a .gz suffix."
        elif magic in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
            other = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
            hint = f" That is the magic number of an IDX {other} file: are the files swapped?"
        raise InvalidOptionError(
            f"IDX {kind} file {str(path)!r} has wrong magic number {magic}; expected {magic_expected} "
            f"(unsigned-byte {ndim}-D IDX).{hint}"
        )
    if len(data) < header_len:
        raise InvalidOptionError(
            f"IDX {kind} file {str(path)!r} is truncated: {len(data)} bytes, shorter than the {header_len}-byte "
            f"header; download it again"
        )
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)  # a Python int: dimensions whose product overflows 64 bits are caught below
    payload = len(data) - header_len
    if payload < expected:
        raise InvalidOptionError(
            f"IDX {kind} file {str(path)!r} is truncated: its header says dimensions {dims} "
            f"({expected} bytes of data) but only {payload} bytes follow; download it again"
        )
    if payload > expected:
        raise InvalidOptionError(
            f"IDX {kind} file {str(path)!r} has {payload - expected} unexpected trailing bytes after the "
            f"{expected} bytes its header {dims} describes; the file is corrupt, download it again"
        )
    return dims, np.frombuffer(data, dtype=np.uint8, count=expected, offset=header_len)


def load_mnist_idx(directory: str | os.PathLike, split: str = "train", normalize: str = "unit") -> Dataset:
    """Load MNIST (or any 10-class uint8 IDX dataset such as Fashion-MNIST) from the original IDX files.

    ``directory`` must hold ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` for ``split="train"``,
    or ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` for ``split="test"``, each plain or gzipped
    with a ``.gz`` suffix (the plain file wins if both exist).  Images may be any size ``rows x cols``.
    """
    check_split(split)
    check_normalize(normalize)
    folder = _check_directory(
        directory, "MNIST", "pass the directory that holds the MNIST IDX files, as load_dataset('mnist:DIR')"
    )
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx_file(folder, f"{prefix}-labels-idx1-ubyte")

    (n_images, rows, cols), pixels = _read_idx(images_path, _IDX_IMAGES_MAGIC, 3)
    (n_labels,), labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1)
    if rows == 0 or cols == 0:
        raise InvalidOptionError(f"IDX images file {str(images_path)!r} declares empty images of {rows}x{cols} pixels")
    if n_images != n_labels:
        raise InvalidOptionError(
            f"count mismatch: images file {str(images_path)!r} has {n_images} images but labels file "
            f"{str(labels_path)!r} has {n_labels} labels; use files from the same split and release"
        )
    if n_labels > 0 and int(labels.max()) > 9:
        raise InvalidOptionError(
            f"IDX labels file {str(labels_path)!r} contains label {int(labels.max())}; expected digits 0..9"
        )
    return finish_dataset(
        pixels.reshape(n_images, rows * cols),
        labels,
        name=f"mnist:{directory}",
        num_classes=10,
        image_shape=(1, rows, cols),
        normalize=normalize,
        max_value=255.0,
    )


# ----------------------------------------------------------------------------- CIFAR-10 (python pickles)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch; return (uint8 data (n, 3072), int64 labels (n,))."""
    try:  # only dicts, lists, bytes and numpy arrays of numbers: nothing in the file can run code
        batch = load_pickle_restricted(path, what="CIFAR-10 batch")
    except UnsafeFileError:
        raise
    except ValueError as exc:
        raise InvalidOptionError(f"{exc}; extract cifar-10-python.tar.gz again") from exc.__cause__
    if not isinstance(batch, dict):
        raise InvalidOptionError(f"CIFAR-10 batch {str(path)!r} holds a {type(batch).__name__}, expected a dict")
    fields = {}
    for key in ("data", "labels"):
        if key.encode() in batch:
            fields[key] = batch[key.encode()]
        elif key in batch:
            fields[key] = batch[key]
        else:
            raise InvalidOptionError(
                f"CIFAR-10 batch {str(path)!r} has no {key.encode()!r} entry (keys: {sorted(map(repr, batch))}); "
                f"expected the CIFAR-10 python version"
            )
    data = fields["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise InvalidOptionError(
            f"CIFAR-10 batch {str(path)!r}: b'data' must be a uint8 array of shape (n, 3072), "
            f"got {describe_value(data)}"
        )
    labels = np.asarray(fields["labels"])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size > 0 and labels.dtype.kind not in "iu"):
        raise InvalidOptionError(
            f"CIFAR-10 batch {str(path)!r}: b'labels' must be {data.shape[0]} integers (one per row of b'data'), "
            f"got {describe_value(labels)}"
        )
    labels = labels.astype(np.int64)
    if labels.size > 0 and (labels.min() < 0 or labels.max() > 9):
        raise InvalidOptionError(
            f"CIFAR-10 batch {str(path)!r}: labels must be in 0..9, got values in {labels.min()}..{labels.max()}"
        )
    return data, labels


def load_cifar10(directory: str | os.PathLike, split: str = "train", normalize: str = "unit") -> Dataset:
    """Load CIFAR-10 from the "python version" batches (3072 features in R, G, B planes; 10 classes).

    ``directory`` is either the extracted ``cifar-10-batches-py`` folder or its parent.  ``split="train"``
    reads ``data_batch_1`` .. ``data_batch_5``; ``split="test"`` reads ``test_batch``.
    The batches are pickles; they are read with a restricted unpickler that admits only dicts, lists, bytes
    and numpy arrays of numbers, so a crafted batch file cannot run code (it is refused, naming what it holds).
    """
    check_split(split)
    check_normalize(normalize)
    fix = "extract cifar-10-python.tar.gz and pass the extracted folder (or its parent), as load_dataset('cifar10:DIR')"
    root = _check_directory(directory, "CIFAR-10", fix)
    all_batches = _CIFAR_TRAIN_BATCHES + (_CIFAR_TEST_BATCH,)
    for folder in (root, root / _CIFAR_SUBDIR):
        if folder.is_dir() and any((folder / name).is_file() for name in all_batches):
            break
    else:
        raise FileNotFoundError(
            f"no CIFAR-10 batch files in {str(root)!r} or {str(root / _CIFAR_SUBDIR)!r}: expected "
            f"{', '.join(all_batches)}; {fix}"
        )
    wanted = _CIFAR_TRAIN_BATCHES if split == "train" else (_CIFAR_TEST_BATCH,)
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {split} split incomplete in {str(folder)!r}: missing {', '.join(missing)}; {fix}"
        )
    parts = [_read_cifar_batch(folder / name) for name in wanted]
    labels = np.concatenate([p[1] for p in parts])
    data = np.empty((len(labels), 3072), dtype=np.uint8)
    start = 0
    for i, (block, _) in enumerate(parts):  # each batch released once copied: one copy of the data at a time
        data[start:start + len(block)] = block
        start += len(block)
        parts[i] = None
    return finish_dataset(
        data,
        labels,
        name=f"cifar10:{directory}",
        num_classes=10,
        image_shape=(3, 32, 32),
        normalize=normalize,
        max_value=255.0,
    )


# ----------------------------------------------------------------------------- entry point and subsampling
