"""The deep search against an independent loop (``deep_reference.py``) that builds every candidate's masked
network explicitly, at every step of every group, on ResNet (shortcuts A and B), MobileNetV2, VGG and a
flatten-into-linear pattern at tiny widths; and end to end: the pruned model equals the dense one masked
with the search's counts."""
import warnings

import pytest
import torch
from deep_reference import masked_dense_output, reference_prune
from torch import nn

from greedyprune.channels import AccuracyTolerance, KeepRatio, LossGap, prune_model
from greedyprune.models import VGG, MobileNetV2, get_model

torch.set_num_threads(1)
SIDE = 12


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Batch norms with non-trivial statistics and affine parameters (the fast search folds them)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


class FlattenNet(nn.Module):
    """conv -> conv+BN -> pool -> flatten -> linear -> linear: a channel is read by several linear inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(6)
        self.fc1 = nn.Linear(8 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn2(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _seeded(build, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


MODELS = {
    "resnet8-B": lambda: get_model("resnet8", in_channels=1, width=4, seed=0),
    "resnet8-A": lambda: get_model("resnet8", in_channels=1, width=4, shortcut="A", seed=1),
    "mobilenetv2": lambda: _seeded(lambda: MobileNetV2(10, 1, cfg=[(1, 8, 1, 1), (3, 8, 2, 2), (2, 12, 1, 1)],
                                                       last_channels=16), 2),
    "vgg": lambda: _seeded(lambda: VGG([8, "M", 12, 12, "M", 16], 10, 1, head="linear"), 3),
    "flatten": lambda: _seeded(FlattenNet, 4),
}


def data(seed, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, SIDE, SIDE, generator=g), torch.randint(0, 10, (n,), generator=g)


class Recorder:
    """A stopping rule that records what ``prune_model`` saw at every step and defers to ``inner``."""

    def __init__(self, inner):
        self.inner, self.name, self.needs_unpruned = inner, inner.name, inner.needs_unpruned
        self.value = getattr(inner, "value", None)
        self.steps: dict[str, list] = {}

    def plan(self, context):
        self.inner.plan(context)

    @property
    def targets(self):  # a keep-count rule's widths: a step of several channels takes no more than still missing
        return self.inner.targets

    def stop(self, step):
        self.steps.setdefault(step.group, []).append(step)
        return self.inner.stop(step)


def compare(result, recorder, ref, model, X):
    assert list(result.counts) == list(ref.counts)  # the same groups, in the same order
    for name, counts in ref.counts.items():
        assert result.counts[name] == counts, name
        assert result.kept[name] == [i for i, c in enumerate(counts) if c > 0], name
        seen, expected = recorder.steps[name], ref.steps[name]
        assert [s.step for s in seen] == [r["step"] for r in expected], name
        assert [s.kept for s in seen] == [r["kept"] for r in expected], name
        torch.testing.assert_close(torch.tensor([s.loss for s in seen]), torch.tensor([r["loss"] for r in expected]),
                                   rtol=1e-4, atol=1e-5, msg=name)
    x = X[:16]
    with torch.no_grad():
        pruned = result.model.eval()(x)
        torch.testing.assert_close(pruned, ref.model(x), rtol=1e-4, atol=1e-4)
    # end to end: the physically smaller model computes what the dense one does with every group masked
    torch.testing.assert_close(pruned, masked_dense_output(model, result.counts, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, candidates, replacement, seed, bn", [
    ("resnet8-B", None, False, 0, "running"),
    ("resnet8-B", None, False, 0, "batch"),
    ("resnet8-A", 3, False, 1, "running"),
    ("mobilenetv2", 5, False, 2, "batch"),
    ("vgg", None, True, 3, "running"),
    ("flatten", 4, False, 4, "batch"),
])
def test_fast_and_reference_search_choose_what_the_explicit_loop_chooses(arch, candidates, replacement, seed, bn):
    model = randomize_bn(MODELS[arch](), seed)
    X, y = data(seed)
    opts = dict(candidates=candidates, replacement=replacement, batch_size=16, seed=seed, bn=bn)
    ref = reference_prune(model, X, y, rule="keep_ratio", value=0.5, **opts)
    assert len(ref.counts) >= 2 and all(len(s) >= 2 for s in ref.steps.values())  # several steps in every group
    if replacement:
        assert any(max(c) >= 2 for c in ref.counts.values())  # a channel chosen twice: its scale grows
    if arch == "flatten":  # a conv group read through a flatten, and a linear layer's group
        assert list(ref.counts) == ["conv2", "fc1"]
    evaluators = ["fast", "reference"] if arch in ("resnet8-A", "mobilenetv2") else ["fast"]
    for evaluator in evaluators:
        recorder = Recorder(KeepRatio(0.5))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no silent fallback from the fast search
            result = prune_model(model, (X, y), objective="network", rule=recorder, evaluator=evaluator,
                                 recalibrate=0, **opts)
        assert all(r["evaluator"] == evaluator for r in result.layers)
        compare(result, recorder, ref, model, X)


@pytest.mark.parametrize("arch, step, replacement", [("resnet8-B", 2, False), ("resnet8-A", 3, True)])
def test_steps_of_several_channels_take_the_best_candidates_in_order(arch, step, replacement):
    model = randomize_bn(MODELS[arch](), 8)
    X, y = data(8)
    opts = dict(candidates=5, replacement=replacement, batch_size=16, seed=8, bn="running")
    ref = reference_prune(model, X, y, rule="keep_ratio", value=0.5, step=step, **opts)
    assert any(sum(c) - len(s) >= 2 for c, s in zip(ref.counts.values(), ref.steps.values()))  # several a step
    recorder = Recorder(KeepRatio(0.5))
    result = prune_model(model, (X, y), objective="network", rule=recorder, recalibrate=0, step=step, **opts)
    compare(result, recorder, ref, model, X)


@pytest.mark.parametrize("rule, value", [("epsilon", 0.02), ("accuracy_tolerance", 0.1)])
def test_tolerance_rules_stop_where_the_loop_computing_them_stops(rule, value):
    model = randomize_bn(MODELS["resnet8-B"](), 5)
    X, y = data(5, n=96)
    opts = dict(candidates=4, batch_size=32, seed=6, bn="running")
    ref = reference_prune(model, X, y, rule=rule, value=value, **opts)
    inner = LossGap(value) if rule == "epsilon" else AccuracyTolerance(value)
    recorder = Recorder(inner)
    result = prune_model(model, (X, y), objective="network", rule=recorder, recalibrate=0, holdout=0, **opts)
    compare(result, recorder, ref, model, X)
    steps = {name: len(s) for name, s in ref.steps.items()}
    assert [r["steps"] for r in result.layers] == list(steps.values())
    # the rule holds where the search stopped and nowhere before (or the group ran to the end)
    for name, records in ref.steps.items():
        for r in records[:-1]:
            if rule == "epsilon":
                assert r["loss"] - r["unpruned_loss"] > value * abs(r["unpruned_loss"])
            else:
                assert r["accuracy"] < (1 - value) * r["unpruned_accuracy"]
    # not a trivial rule here: some group stops after more than one step and before running out of channels
    channels = {name: len(c) for name, c in ref.counts.items()}
    assert any(1 < n < channels[name] for name, n in steps.items()), steps


def test_recalibration_between_groups_is_what_the_loop_does():
    model = randomize_bn(MODELS["resnet8-B"](), 7)
    X, y = data(7)
    opts = dict(candidates=3, batch_size=16, seed=7, bn="batch")
    ref = reference_prune(model, X, y, rule="keep_ratio", value=0.5, recalibrate=32, **opts)
    result = prune_model(model, (X, y), objective="network", keep_ratio=0.5, recalibrate=32, **opts)
    assert result.counts == ref.counts
    with torch.no_grad():  # the last recalibration (after the last group) is the loop's too
        torch.testing.assert_close(result.model.eval()(X[:8]), ref.model(X[:8]), rtol=1e-4, atol=1e-4)
