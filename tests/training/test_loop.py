"""The pre-training loop: learning, deterministic resume from atomic checkpoints, clear errors."""
import pytest
import torch

from greedyprune import TrainConfig, TwoLayerNet, evaluate, pretrain
from greedyprune.training.loop import load_checkpoint, save_checkpoint

torch.set_num_threads(1)


def problem(m=200, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, d, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).float()
    return X, y


@pytest.mark.parametrize("batch_size", [None, 32])
@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_training_lowers_the_loss(batch_size, loss):
    X, y = problem()
    net = TwoLayerNet(6, 32, seed=0)
    before, _ = evaluate(net, X, y, loss)
    pretrain(net, X, y, TrainConfig(iterations=150, lr=0.1, batch_size=batch_size, loss=loss))
    after, acc = evaluate(net, X, y, loss)
    assert after < 0.7 * before and acc > 0.85


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path):
    X, y = problem()
    config = TrainConfig(iterations=100, lr=0.1, batch_size=16, seed=5)
    reference = pretrain(TwoLayerNet(6, 16, seed=1), X, y, config)

    seen = []

    def crash_at_70(t, model):
        seen.append(t)
        if t == 70:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        pretrain(TwoLayerNet(6, 16, seed=1), X, y, config, checkpoint_path=ckpt, checkpoint_every=25,
                 callback=crash_at_70, callback_every=10)
    assert load_checkpoint(ckpt)["iteration"] == 50
    assert not list(tmp_path.glob("*.tmp"))
    calls = []
    resumed = pretrain(TwoLayerNet(6, 16, seed=99), X, y, config, checkpoint_path=ckpt, checkpoint_every=25,
                       callback=lambda t, m: calls.append(t), callback_every=10)
    assert calls == [50, 60, 70, 80, 90, 100]  # the resumed iteration is offered again (idempotent callbacks)
    for p, q in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_refuses_another_configuration(tmp_path):
    X, y = problem()
    ckpt = tmp_path / "run.pt"
    pretrain(TwoLayerNet(6, 8), X, y, TrainConfig(iterations=10), checkpoint_path=ckpt, checkpoint_every=5)
    with pytest.raises(ValueError, match="another configuration"):
        pretrain(TwoLayerNet(6, 8), X, y, TrainConfig(iterations=10, lr=0.5), checkpoint_path=ckpt)


def test_divergence_is_reported():
    X, y = problem()
    net = TwoLayerNet(6, 8, seed=0)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        pretrain(net, X * 1e3, y * 1e3, TrainConfig(iterations=50, lr=10.0, batch_size=None, loss="squared"))


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable greedyprune"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "other.pt", {"format": "something else"})
    with pytest.raises(ValueError, match="not a greedyprune training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "config, match",
    [
        (TrainConfig(iterations=-1), "iterations"),
        (TrainConfig(lr=0), "lr"),
        (TrainConfig(batch_size=0), "batch_size"),
        (TrainConfig(loss="hinge"), "unknown loss"),
        (TrainConfig(momentum=1.0), "momentum"),
    ],
)
def test_bad_config(config, match):
    X, y = problem()
    with pytest.raises(ValueError, match=match):
        pretrain(TwoLayerNet(6, 4), X, y, config)


def test_mismatched_rows_are_refused():
    X, y = problem()
    with pytest.raises(ValueError, match="one per example"):
        pretrain(TwoLayerNet(6, 4), X, y[:-1], TrainConfig(iterations=1))
