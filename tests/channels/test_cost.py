"""The network objective's cost model and budget (greedyprune.channels.cost) and its per-candidate batch norm."""
import warnings

import pytest
import torch
from torch import nn

from greedyprune.channels import cost, find_groups, prune_model
from greedyprune.channels.bn import per_candidate_batch_norm


def _stack(width=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.Conv2d(2 * width, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4)).eval()


def _data(n=48, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("shape, channels_last", [((6 * 5, 7, 4, 3), True), ((6 * 5, 7, 4, 3), False),
                                                  ((6 * 5, 7), False), ((6 * 5, 7, 9), False)])
def test_per_candidate_batch_norm_is_each_candidate_alone_in_train_mode(shape, channels_last):
    torch.manual_seed(0)
    bn = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](7)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    saved = bn.running_mean.clone()
    got = per_candidate_batch_norm(x, bn, 6)
    # independent: each candidate's 5 examples by the textbook formula, biased variance
    for k in range(6):
        xk = x[k * 5:(k + 1) * 5].double()
        dims = [0] + list(range(2, xk.dim()))
        mean, var = xk.mean(dims, keepdim=True), xk.var(dims, unbiased=False, keepdim=True)
        view = [1, 7] + [1] * (xk.dim() - 2)
        want = (xk - mean) / torch.sqrt(var + bn.eps) * bn.weight.double().view(view) + bn.bias.double().view(view)
        assert torch.allclose(got[k * 5:(k + 1) * 5].double(), want, atol=1e-5)
    assert torch.equal(bn.running_mean, saved)


def test_downstream_macs_are_the_layers_from_the_first_reader_on():
    model, (X, _) = _stack(), _data()
    _, groups = find_groups(model, X[:1], None)
    down, total = cost.downstream_macs(model, groups, X[:1])
    hw = 8 * 8
    conv0, conv3, conv6, fc = 3 * 8 * 9 * hw, 8 * 16 * 9 * hw, 16 * 8 * hw, 8 * 4
    assert total == conv0 + conv3 + conv6 + fc
    assert {g.writers[0]: down[g.name] for g in groups} == {"3": conv6 + fc, "6": fc}  # from the readers 6, 11


def test_planned_steps_equal_the_steps_the_search_takes():
    model, data = _stack(), _data()
    for step, candidates in (("auto", 50), ("auto", 2), (3, 50), (3, 2)):
        result = prune_model(model, data, keep_ratio=0.5, objective="network", candidates=candidates, step=step,
                             check=False, eval_examples=16)
        _, groups = find_groups(model, data[0][:1], None)
        for g in groups:
            record = next(r for r in result.layers if r["name"] == g.name)
            planned = cost.planned_steps(g, record["kept"], step, candidates, cost.AUTO_STEPS)
            assert planned == record["steps"], (step, candidates, g.name)


def test_search_macs_formula():
    steps, down, cands = {"a": 3, "b": 2}, {"a": 100, "b": 10}, {"a": 4, "b": 5}
    assert cost.search_macs(steps, down, 1000, cands, 7) == 7 * (3 * (4 * 100 + 1000) + 2 * (5 * 10 + 1000))


def test_budget_sets_the_batch_then_fewer_steps_and_warns_past_it(monkeypatch):
    model, data = _stack(), _data()
    _, groups = find_groups(model, data[0][:1], None)
    targets = {g.name: g.channels // 2 for g in groups}
    free = cost.plan_search(model, groups, data[0][:1], targets, "auto", 8, None, None)
    assert (free.batch, free.auto_steps) == (cost.MAX_SEARCH_BATCH, cost.AUTO_STEPS)
    per_example = free.macs / free.batch
    monkeypatch.setattr(cost, "SEARCH_MACS", per_example * 40.5)
    plan = cost.plan_search(model, groups, data[0][:1], targets, "auto", 8, None, None)
    assert (plan.batch, plan.auto_steps) == (40, cost.AUTO_STEPS) and plan.macs <= plan.budget
    assert cost.plan_search(model, groups, data[0][:1], targets, "auto", 8, None, 24).batch == 24
    given = cost.plan_search(model, groups, data[0][:1], targets, "auto", 8, 100, None)
    assert given.batch is None and given.macs == pytest.approx(per_example * 100)  # the user's batch is kept
    monkeypatch.setattr(cost, "SEARCH_MACS", 1.0)
    tight = cost.plan_search(model, groups, data[0][:1], targets, "auto", 8, None, None)
    assert (tight.batch, tight.auto_steps) == (cost.MIN_SEARCH_BATCH, cost.MIN_AUTO_STEPS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune_model(model, data, keep_ratio=0.5, objective="network", candidates=8, check=False,
                             eval_examples=16)
    assert any("estimated at" in str(w.message) for w in caught)
    assert result.report["step_batch"] == cost.MIN_SEARCH_BATCH


def test_planned_steps_closed_form():
    from types import SimpleNamespace

    group = SimpleNamespace(num_units=40, channels=40)
    # step="auto": ceil(target / auto_steps) units a step, then ceil(target / take) steps
    assert cost.planned_steps(group, 20, "auto", None, 16) == 10  # take ceil(20/16) = 2
    assert cost.planned_steps(group, 37, "auto", None, 8) == 8  # take 5, ceil(37/5) = 8
    assert cost.planned_steps(group, 37, "auto", 3, 8) == 13  # never more units a step than candidates
    assert cost.planned_steps(group, 20, 3, None, 16) == 7
    assert cost.planned_steps(group, None, "auto", None, 16) == 20  # no fixed width: half the units
    grouped = SimpleNamespace(num_units=10, channels=40)  # 4 channels a unit
    assert cost.planned_steps(grouped, 18, "auto", None, 2) == 2  # ceil(18/4) = 5 units, ceil(18/8) = 3 a step
