"""The prefix cache of the local objective (greedyprune.channels.prefix): each group's readers' inputs on the
network as pruned so far, resumed from the values kept before the previous group's first writer, equal a plain
forward's; a change upstream of the cut restarts from the input; the pruned network is the same bit for bit."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import greedyprune
import greedyprune.channels.search as search_module
from greedyprune.channels.objectives import prefix_inputs
from greedyprune.channels.prefix import PrefixInputs
from tests.patterns import DenseConcat, GroupedBlock, SEBlock

torch.set_num_threads(1)


class _Chain(nn.Module):
    """stem -> a -> (b, in-place ReLU) + residual -> c -> fc: groups one after the other, an in-place ReLU right
    after a cut, a residual that keeps a value across a block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(12, 8, 1)
        self.c = nn.Conv2d(8, 10, 3, padding=1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        n = x.shape[0]  # a size, not a tensor, that lives across every cut
        x = F.relu(self.stem(x))
        x = x.add_(self.b(self.act(self.bn(self.a(x)))))  # in place into a value kept at the cut before a
        return self.fc(F.relu(self.c(x)).mean((2, 3)).reshape(n, -1))


def _plain_inputs(model, x, readers):
    captured = {}
    named = dict(model.named_modules())
    hooks = [named[r].register_forward_pre_hook(lambda m, a, r=r: captured.setdefault(r, a[0].clone()))
             for r in readers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return captured


def test_resumed_inputs_equal_a_plain_forward_and_skip_the_prefix():
    torch.manual_seed(0)
    model = _Chain().eval()
    batches = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    feed = PrefixInputs(model, batches, {"a", "b", "c", "fc"})
    # a group written by a and read by b: the cut is kept before a (after stem)
    assert feed.begin(["b"], ["a"])
    for b, x in enumerate(batches):
        assert torch.equal(feed.inputs(b)["b"], _plain_inputs(model, x, ["b"])["b"])
    assert feed.cut > 0
    with torch.no_grad():  # "prune" it: its writer and reader change (both after the cut)
        model.a.weight.mul_(0.5)
        model.b.weight.mul_(-1.0)
    calls = []
    hooks = [m.register_forward_hook(lambda m, a, y, n=n: calls.append(n)) for n, m in model.named_modules() if n]
    assert feed.begin(["c"], ["b"])
    got = [feed.inputs(b)["c"] for b in range(3)]
    for h in hooks:
        h.remove()
    assert "stem" not in calls and calls.count("a") == 3 and "c" not in calls  # resumed before a, stopped at c
    for x, g in zip(batches, got):
        assert torch.equal(g, _plain_inputs(model, x, ["c"])["c"])
    # the next group resumes before b: the residual's in-place add ran after that cut in the last pass
    with torch.no_grad():
        model.b.weight.mul_(0.5)
        model.c.weight.mul_(0.5)
    for _ in range(2):  # twice from the same cut (no writer given: it stays), and the kept values stay intact
        assert feed.begin(["c", "fc"], [])
        for b, x in enumerate(batches):
            got, plain = feed.inputs(b), _plain_inputs(model, x, ["c", "fc"])
            assert torch.equal(got["c"], plain["c"]) and torch.equal(got["fc"], plain["fc"])


def test_a_change_upstream_of_the_cut_restarts_from_the_input():
    torch.manual_seed(0)
    model = _Chain().eval()
    batches = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    feed = PrefixInputs(model, batches, {"a", "b", "c"})
    assert feed.begin(["b"], ["a"])
    [feed.inputs(b) for b in range(2)]
    assert feed.cut > 0
    with torch.no_grad():
        model.stem.weight.add_(0.3)  # before the cut: the kept values are stale
    assert feed.begin(["c"], ["b"])
    assert feed.start == 0
    for b, x in enumerate(batches):
        assert torch.equal(feed.inputs(b)["c"], _plain_inputs(model, x, ["c"])["c"])


def test_a_reader_before_the_cut_is_read_from_the_input():
    torch.manual_seed(0)
    model = _Chain().eval()
    batches = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    feed = PrefixInputs(model, batches, {"a", "b", "c", "fc"})
    assert feed.begin(["c"], ["b"])
    [feed.inputs(b) for b in range(2)]
    assert feed.cut > 0
    assert feed.begin(["a"], ["stem"])  # a group out of execution order: its reader lies before the cut
    assert feed.start == 0
    for b, x in enumerate(batches):
        assert torch.equal(feed.inputs(b)["a"], _plain_inputs(model, x, ["a"])["a"])


def test_a_network_fx_cannot_trace_keeps_plain_forwards():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            if x.sum() > 0:
                x = x * 2
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(Exception):
        PrefixInputs(Untraceable(), [torch.randn(3, 4)], {"b"})
    assert prefix_inputs(Untraceable(), [], torch.randn(8, 4)) is None
    assert prefix_inputs(_Chain(), [], torch.randn(8, 1, 8, 8)) is not None


def _prune(make, monkeypatch, cache):
    used = []

    def spy(*args):
        feed = prefix_inputs(*args) if cache else None
        used.append(feed)
        return feed

    monkeypatch.setattr(search_module, "prefix_inputs", spy)
    torch.manual_seed(0)
    model = make().eval()
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 5, (48,))
    result = greedyprune.prune_model(model, (x, y), keep_ratio=0.5, objective="local", eval_examples=16)
    return result.model.state_dict(), used


@pytest.mark.parametrize("make", [_Chain, SEBlock, DenseConcat, GroupedBlock])
def test_pruned_network_is_the_same_with_and_without_the_cache(make, monkeypatch):
    cached, used = _prune(make, monkeypatch, True)
    assert used and used[0] is not None and used[0].cut > 0  # the cache ran and kept a cut
    plain, _ = _prune(make, monkeypatch, False)
    assert cached.keys() == plain.keys()
    for k in cached:
        assert torch.equal(cached[k], plain[k]), k


def test_a_failing_cache_warns_and_the_plain_forwards_finish_the_run(monkeypatch):
    plain, _ = _prune(_Chain, monkeypatch, False)
    monkeypatch.undo()
    calls = []
    real = PrefixInputs.inputs

    def flaky(self, b):
        calls.append(b)
        if len(calls) > 3:  # the second group's first batch
            raise RuntimeError("boom")
        return real(self, b)

    monkeypatch.setattr(PrefixInputs, "inputs", flaky)
    with pytest.warns(UserWarning, match="prefix cache failed.*RuntimeError: boom"):
        cached, used = _prune(_Chain, monkeypatch, True)
    assert used[0].broken and len(calls) == 4  # not asked again after the failure
    for k in plain:
        assert torch.equal(cached[k], plain[k]), k
