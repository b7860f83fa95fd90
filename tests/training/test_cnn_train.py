"""CNN training: cosine schedule, images, BatchNorm modes, model checkpoints, Rethinking retraining modes."""
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from greedyprune.data import Dataset, as_images
from greedyprune.training.checkpoints import (
    MODEL_CHECKPOINT_FORMAT,
    list_checkpoints,
    load_model,
    save_model,
    state_dict_mismatches,
    train_with_checkpoints,
)
from greedyprune.training.loop import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    evaluate,
    learning_rate,
    load_checkpoint,
    pretrain,
    save_checkpoint,
)
from greedyprune.training.retrain import finetune, reinitialize, retrain, scratch_iterations

torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """conv-BN-ReLU, global pool, linear: the smallest net with every layer kind of the real models."""

    def __init__(self, in_channels=1, num_classes=3, width=6):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def image_problem(m=96, classes=3, seed=0):
    """Noisy 8x8 images whose class is their brightness: easy for a CNN with global pooling."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(m) % classes
    X = 0.5 * torch.randn(m, 1, 8, 8, generator=g) + labels.float().view(m, 1, 1, 1)
    return X, labels


# ------------------------------------------------------------------------------------------ schedule


def test_cosine_schedule_is_the_closed_form():
    config = TrainConfig(iterations=100, lr=0.1, schedule="cosine")
    for t in (0, 1, 37, 50, 99):
        assert learning_rate(config, t) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * t / 100)))
    assert learning_rate(config, 0) == pytest.approx(0.1) and learning_rate(config, 50) == pytest.approx(0.05)
    assert learning_rate(TrainConfig(iterations=100, lr=0.1), 99) == 0.1  # constant is the default


def test_schedule_is_validated():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        TrainConfig(schedule="step").validate()


def test_pretrain_sets_the_scheduled_rate_every_step(monkeypatch):
    X, y = image_problem(m=24)
    config = TrainConfig(iterations=7, lr=0.2, batch_size=8, loss="cross_entropy", schedule="cosine")
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    pretrain(TinyCNN(), X, y, config)
    assert seen == pytest.approx([learning_rate(config, t) for t in range(7)])


def test_cosine_run_resumes_exactly_and_old_checkpoints_still_resume(tmp_path):
    X, y = image_problem()
    config = TrainConfig(iterations=30, lr=0.1, batch_size=16, loss="cross_entropy", momentum=0.9,
                         weight_decay=5e-4, schedule="cosine", seed=3)
    torch.manual_seed(0)
    reference = pretrain(TinyCNN(), X, y, config)

    def stop_at_20(t, model):
        if t == 20:
            raise KeyboardInterrupt

    ckpt = tmp_path / "state.pt"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        pretrain(TinyCNN(), X, y, config, checkpoint_path=ckpt, checkpoint_every=10, callback=stop_at_20,
                 callback_every=10)
    assert load_checkpoint(ckpt)["iteration"] == 10
    resumed = pretrain(TinyCNN(), X, y, config, checkpoint_path=ckpt, checkpoint_every=10)
    for (k, p), q in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k  # BatchNorm running statistics included

    # a checkpoint written before `schedule` existed: no such key, counts as "constant"
    old = TrainConfig(iterations=10, lr=0.1, batch_size=16, loss="cross_entropy", seed=1)
    legacy = pretrain(TinyCNN(), X, y, TrainConfig(**{**asdict(old), "iterations": 5}))
    stored = {k: v for k, v in asdict(old).items() if k != "schedule"}
    optimizer = torch.optim.SGD(legacy.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "legacy.pt", {"format": CHECKPOINT_FORMAT, "iteration": 5, "config": stored,
                                             "model": legacy.state_dict(), "optimizer": optimizer.state_dict()})
    pretrain(TinyCNN(), X, y, old, checkpoint_path=tmp_path / "legacy.pt")
    assert load_checkpoint(tmp_path / "legacy.pt")["iteration"] == 10
    with pytest.raises(ValueError, match="schedule"):
        pretrain(TinyCNN(), X, y, TrainConfig(**{**asdict(old), "schedule": "cosine"}),
                 checkpoint_path=tmp_path / "legacy.pt")


def test_resume_restores_the_rng_so_dropout_runs_continue_exactly(tmp_path):
    X, y = image_problem(m=48)
    def net():
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3))

    config = TrainConfig(iterations=12, lr=0.1, batch_size=8, loss="cross_entropy", seed=2)
    torch.manual_seed(5)
    reference = pretrain(net(), X, y, config)

    def stop(t, model):
        if t == 8:
            raise KeyboardInterrupt

    torch.manual_seed(5)
    with pytest.raises(KeyboardInterrupt):
        pretrain(net(), X, y, config, checkpoint_path=tmp_path / "s.pt", checkpoint_every=4, callback=stop,
                 callback_every=4)
    torch.manual_seed(123)  # whatever the global RNG is now, the resumed run continues from the stored state
    resumed = pretrain(net(), X, y, config, checkpoint_path=tmp_path / "s.pt", checkpoint_every=4)
    for p, q in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------- images, BN modes


def test_dataset_images_view_and_flat_data_error():
    ds = Dataset(X=torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12), labels=torch.tensor([0, 1]),
                 name="toy", num_classes=2, image_shape=(3, 2, 2))
    images = ds.images()
    assert images.shape == (2, 3, 2, 2) and images.data_ptr() == ds.X.data_ptr()
    assert torch.equal(as_images(ds), images)
    flat = Dataset(X=torch.zeros(2, 5), labels=torch.tensor([0, 1]), name="flat", num_classes=2, image_shape=(5,))
    with pytest.raises(ValueError, match="'flat' is not image data"):
        flat.images()


def test_evaluate_uses_eval_mode_and_restores_the_mode():
    X, y = image_problem(m=20)
    model = TinyCNN()
    for training in (True, False):
        model.train(training)
        before = model.bn.running_mean.clone()
        evaluate(model, X, y, "cross_entropy")
        assert model.training is training
        assert torch.equal(model.bn.running_mean, before)  # eval mode: running statistics untouched
    model.train()
    pretrain(model, X, y, TrainConfig(iterations=2, batch_size=10, loss="cross_entropy"))
    assert model.training and model.bn.num_batches_tracked.item() == 2


# ----------------------------------------------------------------------------------- checkpoints


def test_save_and_load_model_round_trip(tmp_path):
    from greedyprune.models import get_model

    kwargs = {"num_classes": 4, "in_channels": 1, "shortcut": "A"}
    model = get_model("resnet20", seed=1, **kwargs)
    model.bn1.running_mean.fill_(0.5)
    path = save_model(tmp_path / "m.pt", model, name="ResNet20", model_kwargs=kwargs,
                      extra={"iteration": 7, "data": "mnist5k", "acc": 0.5})
    assert not list(tmp_path.glob("*.tmp"))
    raw = torch.load(path, weights_only=True)  # plain data only: safe to read
    assert raw["format"] == MODEL_CHECKPOINT_FORMAT and raw["name"] == "resnet20" and raw["module"] is None
    loaded, info = load_model(path, name="resnet20")
    assert info["name"] == "resnet20" and info["model_kwargs"] == kwargs and info["extra"]["iteration"] == 7
    assert not info["full_module"] and loaded.training
    for (k, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), k


def test_load_model_errors_say_what_the_file_is(tmp_path):
    from greedyprune.models import get_model

    model = get_model("resnet20", in_channels=1, seed=0)
    save_model(tmp_path / "r20.pt", model, name="resnet20", model_kwargs={"in_channels": 1})
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"holds a resnet20 but you asked for resnet56.*pass --model resnet20"):
        load_model(tmp_path / "r20.pt", name="resnet56")
    with pytest.raises(ValueError, match="built with"):
        load_model(tmp_path / "r20.pt", model_kwargs={"in_channels": 3})

    X, y = image_problem(m=16)
    pretrain(TinyCNN(), X, y, TrainConfig(iterations=1, loss="cross_entropy"), checkpoint_path=tmp_path / "st.pt")
    with pytest.raises(ValueError, match="training-state checkpoint"):
        load_model(tmp_path / "st.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a readable"):
        load_model(tmp_path / "junk.pt")
    torch.save(TinyCNN(), tmp_path / "module.pt")
    with pytest.raises(ValueError, match="pickled Python objects.*TinyCNN"):
        load_model(tmp_path / "module.pt")

    # a plain state_dict: needs a name, then loads if the shapes fit
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain state_dict.*pass name="):
        load_model(tmp_path / "plain.pt")
    loaded, info = load_model(tmp_path / "plain.pt", name="resnet20", model_kwargs={"in_channels": 1})
    assert info["format"] == "state_dict" and torch.equal(loaded.conv1.weight, model.conv1.weight)
    with pytest.raises(ValueError, match=r"conv1.weight: file \(16, 1, 3, 3\), model \(16, 3, 3, 3\)"):
        load_model(tmp_path / "plain.pt", name="resnet20")
    with pytest.raises(ValueError, match="missing from the file"):
        load_model(tmp_path / "plain.pt", name="resnet32", model_kwargs={"in_channels": 1})


def test_pruned_models_need_full_module(tmp_path):
    from greedyprune.models import get_model

    model = get_model("resnet20", num_classes=3, seed=0)
    model.fc = nn.Linear(64, 2)  # the architecture no longer equals get_model's
    with pytest.raises(ValueError, match=r"fc.weight: file \(2, 64\), model \(3, 64\).*full_module=True"):
        save_model(tmp_path / "p.pt", model, name="resnet20", model_kwargs={"num_classes": 3})
    save_model(tmp_path / "p.pt", model, name="resnet20", model_kwargs={"num_classes": 3}, full_module=True)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_model(tmp_path / "p.pt", name="resnet20")  # unpickling runs code: only on request
    loaded, info = load_model(tmp_path / "p.pt", name="resnet20", trust_pickle=True)
    assert info["full_module"] and loaded.fc.out_features == 2
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match="extra"):
        save_model(tmp_path / "q.pt", model, name="resnet20", extra={"x": object()}, full_module=True)
    with pytest.raises(ValueError, match="unknown model"):
        save_model(tmp_path / "q.pt", model, name="resnet21")


def test_state_dict_mismatches_lists_each_kind():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    b = {"w": torch.zeros(3, 3), "c": torch.zeros(1)}
    assert state_dict_mismatches(a, b) == ["w: file (3, 3), model (2, 3)", "b: missing from the file",
                                           "c: in the file but not in the model"]


def test_train_with_checkpoints_writes_models_at_the_period(tmp_path):
    from greedyprune.models import get_model

    X, y = image_problem(m=32, classes=4)
    model = get_model("resnet20", num_classes=4, in_channels=1, seed=0)
    config = TrainConfig(iterations=5, lr=0.05, batch_size=8, loss="cross_entropy", momentum=0.9, schedule="cosine")
    written = []
    found = train_with_checkpoints(model, X, y, config, tmp_path, name="resnet20",
                                   model_kwargs={"num_classes": 4, "in_channels": 1}, checkpoint_every=2,
                                   eval_sets={"train": (X[:8], y[:8])}, extra={"data": "toy"},
                                   on_checkpoint=lambda t, p, info: written.append(t))
    assert [t for t, _ in found] == written == [0, 2, 4, 5]
    assert found == list_checkpoints(tmp_path)
    last, info = load_model(found[-1][1])
    assert info["extra"]["iteration"] == 5 and info["extra"]["data"] == "toy"
    assert 0 <= info["extra"]["train_accuracy"] <= 1 and info["extra"]["train_loss"] > 0
    assert torch.equal(last.fc.weight, model.fc.weight)


# ---------------------------------------------------------------------------------- retraining


def test_reinitialize_is_deterministic_by_seed_and_keeps_the_architecture():
    X, y = image_problem(m=24)
    model = TinyCNN()
    pretrain(model, X, y, TrainConfig(iterations=3, batch_size=8, loss="cross_entropy"))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = torch.get_rng_state()
    a, b, c = reinitialize(model, 1), reinitialize(model, 1), reinitialize(model, 2)
    assert torch.equal(torch.get_rng_state(), state_before)  # the global RNG is left alone
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])  # the input model is unchanged
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in trained.items()]
    for k in ("conv.weight", "fc.weight", "fc.bias"):
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])
        assert not torch.equal(a.state_dict()[k], c.state_dict()[k])
        assert not torch.equal(a.state_dict()[k], trained[k])
    assert torch.equal(a.bn.running_mean, torch.zeros(6)) and a.bn.num_batches_tracked.item() == 0
    std = a.conv.weight.std().item()  # kaiming_normal_(fan_out): std sqrt(2 / (6 * 9))
    assert 0.5 * math.sqrt(2 / 54) < std < 1.5 * math.sqrt(2 / 54)

    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match="no reset_parameters"):
        reinitialize(nn.Sequential(nn.Linear(2, 3), Frozen()), 0)
    kept = reinitialize(nn.Sequential(nn.Linear(2, 3), Frozen()), 0, strict=False)
    assert torch.equal(kept[1].scale, torch.ones(3))


def test_scratch_iterations_closed_form():
    assert scratch_iterations(1000, 4e8, 1e8, "E") == 1000
    assert scratch_iterations(1000, 4e8, 1e8, "B") == 4000
    assert scratch_iterations(1000, 300, 200, "scratch-b") == 1500
    assert scratch_iterations(3, 10, 4, "b") == 8  # 7.5 rounds half up
    assert scratch_iterations(7, 3, 2, "B") == 11  # 10.5 -> 11
    assert scratch_iterations(1000, 4e8, 1e8, "B", max_factor=2) == 2000
    for args, match in [((1000, 1e8, 4e8, "B"), "swapped"), ((0, 1, 1, "E"), "dense_iterations"),
                        ((10, 0, 1, "B"), "dense_macs"), ((10, 1, 1, "C"), "unknown scratch mode"),
                        ((10, 1, float("nan"), "B"), "pruned_macs")]:
        with pytest.raises(ValueError, match=match):
            scratch_iterations(*args)


def test_finetune_lowers_the_training_loss():
    X, y = image_problem()
    torch.manual_seed(0)
    model = TinyCNN()
    before, _ = evaluate(model, X, y, "cross_entropy")
    finetune(model, X, y, iterations=60, lr=0.05, batch_size=16)
    after, acc = evaluate(model, X, y, "cross_entropy")
    assert after < 0.6 * before and acc > 0.8


def test_retrain_modes():
    X, y = image_problem(m=48)
    torch.manual_seed(0)
    pruned = TinyCNN()
    original = {k: v.clone() for k, v in pruned.state_dict().items()}
    ft = retrain(pruned, "finetune", X, y, iterations=4, batch_size=16)
    assert ft.config.iterations == 4 and ft.config.lr == 0.01 and ft.config.schedule == "constant"
    e = retrain(pruned, "scratch-e", X, y, iterations=4, batch_size=16, seed=3)
    assert e.config.iterations == 4 and e.config.lr == 0.1 and e.config.schedule == "cosine"
    b = retrain(pruned, "scratch-b", X, y, iterations=4, batch_size=16, dense_macs=300, pruned_macs=100)
    assert b.config.iterations == 12
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, original[k])  # every mode works on a copy
    assert ft.model is not pruned and e.model is not pruned
    with pytest.raises(ValueError, match="needs dense_macs"):
        retrain(pruned, "scratch-b", X, y, iterations=4)
    with pytest.raises(ValueError, match="unknown retraining mode"):
        retrain(pruned, "lottery", X, y, iterations=4)


def test_scratch_modes_reinitialise_and_finetune_keeps_the_weights(monkeypatch):
    import copy

    from greedyprune.training import retrain as retrain_module

    X, y = image_problem(m=48)
    torch.manual_seed(0)
    pruned = TinyCNN()
    pretrain(pruned, X, y, TrainConfig(iterations=5, batch_size=16, loss="cross_entropy"))  # "trained" weights
    started = []  # the model each retraining starts from
    real = retrain_module.pretrain

    def recording(model, *args, **kwargs):
        started.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(retrain_module, "pretrain", recording)
    weights = ("conv.weight", "fc.weight", "fc.bias", "bn.weight", "bn.running_var")
    for mode, seed in (("scratch-e", 3), ("scratch-b", 4), ("finetune", 5)):
        started.clear()
        result = retrain(pruned, mode, X, y, iterations=3, batch_size=16, seed=seed, dense_macs=200, pruned_macs=100)
        (start,) = started
        # from scratch: exactly reinitialize(model, seed)'s weights, none of the trained ones; fine-tuning: the
        # trained weights themselves
        origin = reinitialize(pruned, seed) if mode != "finetune" else pruned
        assert all(torch.equal(start[k], v) for k, v in origin.state_dict().items()), mode
        assert all(torch.equal(start[k], pruned.state_dict()[k]) == (mode == "finetune") for k in weights), mode
        # and the result is that start trained with the mode's recipe, step for step
        expected = real(copy.deepcopy(origin), X, y, result.config)
        assert all(torch.equal(result.model.state_dict()[k], v) for k, v in expected.state_dict().items()), mode
        assert result.config.iterations == (6 if mode == "scratch-b" else 3)
