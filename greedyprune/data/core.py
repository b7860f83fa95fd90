"""The in-memory data set (:class:`Dataset`), its checks and normalisation, and the last step every loader
shares (:func:`finish_dataset`). See :mod:`greedyprune.data` for the sources and the normalisations."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import InvalidOptionError

__all__ = ["NORMALIZATIONS", "SPLITS", "Dataset", "check_normalize", "check_split", "describe_value",
           "finish_dataset", "normalize_inputs"]

NORMALIZATIONS = ("unit", "pixel", "standard", "none")
SPLITS = ("train", "test")


@dataclass
class Dataset:
    """An in-memory dataset: normalised inputs plus integer class labels.

    Attributes:
        X: ``(n, d)`` float32 inputs, already normalised.
        labels: ``(n,)`` int64 class labels in ``0..num_classes-1``.
        name: where the data came from, e.g. ``"mnist5k"`` or ``"mnist:/path"``.
        num_classes: number of classes the labels range over.
        image_shape: shape of one example before flattening, e.g. ``(1, 28, 28)``;
            ``(d,)`` for non-image data.  Its product equals ``d``.
        targets: ``(n,)`` float32 regression targets (synthetic data only), else None.
    """

    X: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int
    image_shape: tuple[int, ...]
    targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.X, torch.Tensor) or self.X.dim() != 2 or self.X.dtype != torch.float32:
            raise InvalidOptionError(f"Dataset.X must be a 2-D float32 tensor (n, d), got {describe_value(self.X)}")
        n, d = self.X.shape
        if not isinstance(self.labels, torch.Tensor) or self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise InvalidOptionError(
                f"Dataset.labels must be a 1-D int64 tensor (n,), got {describe_value(self.labels)}")
        if self.labels.shape[0] != n:
            raise InvalidOptionError(
                f"Dataset.labels has {self.labels.shape[0]} entries but X has {n} rows; they must match")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise InvalidOptionError(f"Dataset.num_classes must be a positive int, got {self.num_classes!r}")
        if n > 0:
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise InvalidOptionError(
                    f"Dataset.labels must lie in 0..{self.num_classes - 1} (num_classes={self.num_classes}), "
                    f"got values in {lo}..{hi}"
                )
        self.image_shape = tuple(self.image_shape)
        if int(np.prod(self.image_shape, dtype=np.int64)) != d:
            raise InvalidOptionError(
                f"Dataset.image_shape {self.image_shape} has {int(np.prod(self.image_shape))} elements "
                f"but X has {d} features; they must match"
            )
        if self.targets is not None:
            t = self.targets
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.float32 or t.shape[0] != n:
                raise InvalidOptionError(
                    f"Dataset.targets must be None or a float32 tensor of shape ({n},), got {describe_value(t)}")

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def in_features(self) -> int:
        """Number of input features ``d``."""
        return self.X.shape[1]

    def binary_labels(self) -> torch.Tensor:
        """Float32 ``(n,)`` labels: 1.0 where ``labels >= num_classes // 2``, else 0.0.

        For MNIST this is the paper's binarisation: digit < 5 -> 0, digit >= 5 -> 1.
        For two-class data it is just the labels as floats.
        """
        return (self.labels >= self.num_classes // 2).to(torch.float32)

    def images(self) -> torch.Tensor:
        """The inputs as images: ``X`` viewed as ``(n, *image_shape)``, e.g. ``(n, 1, 28, 28)``.

        Returns:
            ``X`` reshaped to ``(n, C, H, W)``, the input of the CNNs of :mod:`greedyprune.models`;
                a view sharing ``X``'s memory (no copy) whenever ``X`` is contiguous, as loaded data is.

        Raises:
            ValueError: If the data set has no image shape (``image_shape`` is ``(d,)``: synthetic or other
                flat data), naming the data set.
        """
        if self.image_shape is None or len(self.image_shape) < 2:
            raise InvalidOptionError(
                f"dataset {self.name!r} is not image data (image_shape={self.image_shape}, {self.in_features} flat "
                f"features), so it cannot be fed to a CNN; use an image data set such as mnist5k, digits, "
                f"mnist:DIR or cifar10:DIR"
            )
        return self.X.reshape(len(self), *self.image_shape)

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> "Dataset":
        """A new Dataset with the rows at ``indices`` (integer indices or a boolean mask), same metadata."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise InvalidOptionError(
                    f"boolean mask for subset must have shape ({len(self)},), got {tuple(idx.shape)}")
        elif idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or idx.dim() != 1:
            raise InvalidOptionError(
                f"subset indices must be a 1-D sequence of integers or a boolean mask, got {describe_value(idx)}")
        else:
            idx = idx.to(torch.int64)
            if idx.numel() > 0 and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
                raise InvalidOptionError(
                    f"subset indices must lie in 0..{len(self) - 1} for dataset {self.name!r} of size {len(self)}, "
                    f"got values in {int(idx.min())}..{int(idx.max())}"
                )
        return Dataset(
            X=self.X[idx],
            labels=self.labels[idx],
            name=self.name,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            targets=None if self.targets is None else self.targets[idx],
        )


def describe_value(obj: object) -> str:
    """A short description of a value for error messages (type, and shape and dtype of arrays)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return f"{type(obj).__name__} {obj!r}"


def check_normalize(method: str) -> None:
    if method not in NORMALIZATIONS:
        raise InvalidOptionError(f"unknown normalize={method!r}; expected one of {', '.join(NORMALIZATIONS)}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidOptionError(f"unknown split={split!r}; expected 'train' or 'test'")


def normalize_inputs(X: torch.Tensor, method: str, max_value: float | None = None) -> torch.Tensor:
    """Return a normalised copy of the ``(n, d)`` floating-point tensor ``X``.

    Methods:
        ``"unit"``: each row scaled to L2 norm 1 (the theory's ``||x|| = 1``);
            an all-zero row raises ValueError naming its index.
        ``"pixel"``: divide by ``max_value`` (255 for MNIST/CIFAR, 16 for digits),
            giving values in [0, 1]; values outside ``[0, max_value]`` raise ValueError.
        ``"standard"``: per-feature zero mean and unit population std computed on X;
            constant features (std 0) are only centred.
        ``"none"``: an unchanged copy.

    The dtype of X is kept.  Non-finite values raise ValueError.
    """
    check_normalize(method)
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or not X.is_floating_point():
        raise InvalidOptionError(
            f"normalize_inputs expects a 2-D floating-point tensor (n, d), got {describe_value(X)}")
    if not bool(torch.isfinite(X).all()):
        bad = int(torch.nonzero(~torch.isfinite(X).all(dim=1))[0, 0])
        raise InvalidOptionError(
            f"X contains NaN or infinite values (first in row {bad}); clean the data before normalising")
    if method == "none":
        return X.clone()
    if method == "unit":
        norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        zero_rows = torch.nonzero(norms[:, 0] == 0).flatten()
        if zero_rows.numel() > 0:
            raise InvalidOptionError(
                f"cannot scale row {int(zero_rows[0])} to unit norm: it is all zeros "
                f"({zero_rows.numel()} all-zero row(s) in total); drop such rows or use another normalisation"
            )
        return X / norms
    if method == "pixel":
        if max_value is None:
            raise InvalidOptionError(
                "normalize='pixel' needs max_value, the largest possible pixel value "
                "(255 for MNIST/CIFAR-10, 16 for digits)"
            )
        if isinstance(max_value, bool) or not isinstance(max_value, (int, float)) or not max_value > 0:
            raise InvalidOptionError(f"max_value must be a positive number, got {max_value!r}")
        if X.numel() > 0:
            lo, hi = float(X.min()), float(X.max())
            if lo < 0 or hi > max_value:
                raise InvalidOptionError(
                    f"normalize='pixel' expects values in [0, {max_value}], got values in [{lo}, {hi}]; "
                    f"pass the correct max_value or use another normalisation"
                )
        return X / max_value
    # "standard"
    mean = X.mean(dim=0, keepdim=True)
    std = X.std(dim=0, correction=0, keepdim=True)
    centred = X - mean
    return torch.where(std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), centred)


_BLOCK_ELEMENTS = 1 << 20  # elements of the float64 block a large data set is normalised in (8 MB)


def finish_dataset(
    X: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    name: str,
    num_classes: int,
    image_shape: tuple[int, ...],
    normalize: str,
    max_value: float | None,
    targets: torch.Tensor | None = None,
) -> Dataset:
    """Normalise raw inputs in float64, store as float32, and wrap in a Dataset.

    Row-wise normalisations of a large array are computed a block of rows at a time (the same numbers), so
    loading takes about the float32 result beside the raw array, not an extra float64 copy of everything."""
    check_normalize(normalize)
    rows = max(1, _BLOCK_ELEMENTS // max(1, math.prod(X.shape[1:])))
    if normalize == "standard" or X.ndim != 2 or X.shape[0] <= rows:
        X64 = torch.as_tensor(np.asarray(X, dtype=np.float64) if isinstance(X, np.ndarray) else X,
                              dtype=torch.float64)
        X32 = normalize_inputs(X64, normalize, max_value).to(torch.float32)
    else:
        X32 = torch.empty(tuple(X.shape), dtype=torch.float32)
        for a in range(0, X.shape[0], rows):
            block = torch.as_tensor(np.asarray(X[a:a + rows], dtype=np.float64) if isinstance(X, np.ndarray)
                                    else X[a:a + rows], dtype=torch.float64)
            try:
                X32[a:a + rows] = normalize_inputs(block, normalize, max_value)
            except ValueError:  # its message names rows and ranges of the whole array: raised from that
                whole = torch.as_tensor(np.asarray(X, dtype=np.float64) if isinstance(X, np.ndarray) else X,
                                        dtype=torch.float64)
                normalize_inputs(whole, normalize, max_value)
                raise
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64) if isinstance(labels, np.ndarray) else labels,
                        dtype=torch.int64)
    return Dataset(X=X32, labels=y, name=name, num_classes=num_classes, image_shape=image_shape, targets=targets)
