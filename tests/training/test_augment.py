"""Crop-and-flip augmentation: every augmented image is a 4-pixel padded crop of its source, flipped or
not (checked against plain slicing); crops and flips do change the training batches; evaluation and the
test data are never touched; runs are deterministic and resume exactly."""
import torch
from torch import nn

from greedyprune.training.augment import crop_flip
from greedyprune.training.loop import TrainConfig, evaluate, pretrain

torch.set_num_threads(1)


def cifar_like(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def by_slicing(img, dy, dx, flip):
    padded = torch.zeros(img.shape[0], 40, 40)
    padded[:, 4:36, 4:36] = img
    out = padded[:, dy:dy + 32, dx:dx + 32]
    return out.flip(-1) if flip else out


def explain(aug, img):
    """The (dy, dx, flip) that makes ``aug`` out of ``img`` by slicing, or None."""
    for dy in range(9):
        for dx in range(9):
            for flip in (False, True):
                if torch.equal(by_slicing(img, dy, dx, flip), aug):
                    return dy, dx, flip
    return None


class Recorder(nn.Module):
    """A small CNN that records the inputs it sees, in training and in evaluation mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 10))
        self.seen = {"train": [], "eval": []}

    def forward(self, x):
        self.seen["train" if self.training else "eval"].append(x.detach().clone())
        return self.net(x)


def test_each_augmented_image_is_a_padded_crop_maybe_flipped():
    X, _ = cifar_like(40)
    aug = crop_flip(X, seed=5, iteration=3)
    choices = [explain(a, x) for a, x in zip(aug, X)]
    assert all(c is not None for c in choices)
    assert any(c[2] for c in choices) and any(not c[2] for c in choices), "both flipped and unflipped images"
    assert len({c[:2] for c in choices}) > 5, "crops at many offsets"
    assert torch.equal(crop_flip(X, seed=5, iteration=3), aug), "a pure function of (seed, step)"
    assert not torch.equal(crop_flip(X, seed=5, iteration=4), aug)
    assert torch.equal(torch.cat([crop_flip(X[:15], 5, 3, batch=40), crop_flip(X[15:], 5, 3, batch=40, lo=15)]), aug)


def test_training_batches_change_and_test_data_is_untouched():
    X, y = cifar_like()
    Xt, yt = cifar_like(16, seed=1)
    Xt_before = Xt.clone()
    plain, augmented = Recorder(), Recorder()
    config = TrainConfig(iterations=4, lr=0.05, batch_size=8, loss="cross_entropy", seed=2)
    pretrain(plain, X, y, config)
    pretrain(augmented, X, y, TrainConfig(**{**config.__dict__, "augment": "crop-flip"}))
    changed = 0
    for raw, aug in zip(plain.seen["train"], augmented.seen["train"]):  # same batch order, same examples
        assert raw.shape == aug.shape
        for a, r in zip(aug, raw):
            how = explain(a, r)
            assert how is not None
            changed += how != (4, 4, False)
    assert changed >= 20, f"only {changed} of 32 training images were moved or flipped"
    assert all(any(torch.equal(b[i], X[j]) for j in range(len(X))) for b in plain.seen["train"] for i in range(8))
    evaluate(augmented, Xt, yt, "cross_entropy")
    assert torch.equal(Xt, Xt_before), "the test tensor is not modified"
    assert torch.equal(torch.cat(augmented.seen["eval"]), Xt), "evaluation sees the test images as they are"


def test_augmented_runs_resume_exactly(tmp_path):
    X, y = cifar_like()
    config = TrainConfig(iterations=6, lr=0.05, batch_size=8, loss="cross_entropy", momentum=0.9, seed=4,
                         augment="crop-flip")
    whole = pretrain(Recorder(), X, y, config).state_dict()
    ckpt = tmp_path / "state.pt"
    try:  # interrupted after step 4; the resume state was written at step 3
        pretrain(Recorder(), X, y, config, checkpoint_path=ckpt, checkpoint_every=3, callback=_stop_at_4,
                 callback_every=1)
    except KeyboardInterrupt:
        pass
    resumed = pretrain(Recorder(), X, y, config, checkpoint_path=ckpt, checkpoint_every=3).state_dict()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def _stop_at_4(t, model):
    if t == 4:
        raise KeyboardInterrupt
