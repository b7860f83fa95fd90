"""Downstream re-runs (greedyprune.channels.downstream): only the part of the network that depends on some
layers is recomputed, and it equals a full forward with those layers' new weights."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedyprune.channels.downstream import Downstream
from greedyprune.channels.sensitivity import _downstream, log_probs

torch.set_num_threads(1)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.b(F.relu(self.a(x)))
        x = x + self.c(x) * 0.5
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("layers", [{"a"}, {"b"}, {"c"}, {"b", "fc"}, {"stem"}, {"fc"}])
def test_run_equals_a_full_forward_with_the_new_weights(layers):
    torch.manual_seed(0)
    model = _Residual().eval()
    x = torch.randn(6, 3, 8, 8)
    sets = [frozenset(s) for s in ({"a"}, {"b"}, {"c"}, {"b", "fc"}, {"stem"}, {"fc"})]
    runner = Downstream(model, x, sets)
    named = dict(model.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(runner.run(frozenset(layers)), model(x))  # unchanged: the dense output
        for name in layers:
            named[name].weight.mul_(-0.7).add_(0.1)
        torch.testing.assert_close(runner.run(frozenset(layers)), model(x))


def test_only_the_dependent_part_is_recomputed():
    model = _Residual().eval()
    x = torch.randn(4, 3, 8, 8)
    runner = Downstream(model, x, [frozenset({"fc"}), frozenset({"stem"})])
    calls = []
    hooks = [m.register_forward_hook(lambda m, a, y, n=n: calls.append(n)) for n, m in model.named_modules() if n]
    runner.run(frozenset({"fc"}))
    assert calls == ["fc"]
    calls.clear()
    runner.run(frozenset({"stem"}))
    assert set(calls) == {"stem", "bn", "a", "b", "c", "fc"}
    for h in hooks:
        h.remove()


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.b(torch.relu(self.a(x)))


def test_an_untraceable_network_falls_back_to_full_forwards():
    model = _Untraceable().eval()
    x = torch.randn(5, 4)
    with pytest.raises(Exception):
        Downstream(model, x, [frozenset({"b"})])
    assert _downstream(model, x, [frozenset({"b"})], log_probs(model, x)) is None
    traceable = _Residual().eval()
    y = torch.randn(3, 3, 8, 8)
    assert _downstream(traceable, y, [frozenset({"a"})], log_probs(traceable, y)) is not None


class _InPlace(nn.Module):
    """``x.add_(f(x))``: a node that depends on the changed layer adds into a value the pass keeps (``x += ...``
    traces as an out-of-place add)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.f = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        x = self.a(x)
        x = x.add_(self.f(x))
        return self.b(self.act(x))


def test_values_a_run_changes_in_place_are_copied_first():
    torch.manual_seed(0)
    model = _InPlace().eval()
    x = torch.randn(5, 4)
    runner = Downstream(model, x, [frozenset({"f"})])
    with torch.no_grad():
        want = model(x)
        for _ in range(3):  # the kept input of `+=` would grow with each run if it were not copied
            torch.testing.assert_close(runner.run(frozenset({"f"})), want)
        model.f.weight.mul_(0.5)
        torch.testing.assert_close(runner.run(frozenset({"f"})), model(x))


class _InPlaceUpstream(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        y = self.b(h)  # reads h before...
        h.mul_(2.0)  # ...a node that does not depend on b changes it in place
        return y + h[:, :3]


def test_a_value_changed_in_place_outside_the_part_is_refused():
    model = _InPlaceUpstream().eval()
    x = torch.randn(5, 4)
    with pytest.raises(RuntimeError, match="changed in place"):
        Downstream(model, x, [frozenset({"b"})])
    assert _downstream(model, x, [frozenset({"b"})], log_probs(model, x)) is None
