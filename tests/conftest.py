"""Shared by every test folder: one torch thread, and the fixtures several files need.

The data sets are loaded once per session (mnist5k takes seconds to load); tests read them and never change
them. ``checkpoint`` gives each test its own copy of a tiny saved resnet8, built once per session.
"""
import shutil

import pytest
import torch

# 2-core machines: one torch thread per test process keeps the suite from oversubscribing.
torch.set_num_threads(1)

# the tiny resnet8 of the checkpoint tests: one input channel, 10 classes, width 4
TINY_RESNET8 = {"in_channels": 1, "num_classes": 10, "width": 4}


@pytest.fixture(scope="session")
def mnist5k_unit():
    """mnist5k with unit-norm rows (``load_mnist5k()``'s default)."""
    from greedyprune.data import load_mnist5k

    return load_mnist5k()


@pytest.fixture(scope="session")
def mnist5k_pixel():
    """mnist5k scaled to [0, 1] (``load_dataset("mnist5k", normalize="pixel")``, what ``greedyprune train``
    loads)."""
    from greedyprune.data import load_dataset

    return load_dataset("mnist5k", normalize="pixel")


@pytest.fixture(scope="session")
def digits_unit():
    """scikit-learn's digits with unit-norm rows (``load_dataset("digits")``, what the studies load)."""
    from greedyprune.data import load_dataset

    return load_dataset("digits", normalize="unit", seed=0)


@pytest.fixture(scope="session")
def _resnet8_checkpoint_file(tmp_path_factory):
    from greedyprune.models import get_model
    from greedyprune.training.checkpoints import save_model

    path = tmp_path_factory.mktemp("resnet8") / "resnet8.pt"
    save_model(path, get_model("resnet8", seed=0, **TINY_RESNET8), name="resnet8", model_kwargs=TINY_RESNET8)
    return path


@pytest.fixture()
def checkpoint(tmp_path, _resnet8_checkpoint_file):
    """``tmp_path / "resnet8.pt"``: a tiny resnet8 (seed 0, ``TINY_RESNET8``) saved with ``save_model``; the
    test's own copy, free to damage."""
    path = tmp_path / "resnet8.pt"
    shutil.copyfile(_resnet8_checkpoint_file, path)
    return path
