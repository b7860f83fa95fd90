"""The budget rules of greedyprune.channels.budget against independent computations of the rules themselves:
the uniform keep counts by their closed form, the parameter cost model against really pruned networks, the
running minimum of the loss gaps by hand, the allocation against a plain loop that re-prices every group at
every removal (no heap) on a hand-written, non-separable cost, and the per-channel curve by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

from greedyprune.baselines import prune_like
from greedyprune.channels import find_groups
from greedyprune.channels.budget import CostModel, allocate, monotone_gaps, per_channel
from greedyprune.metrics import count_parameters
from greedyprune.models import get_model

torch.set_num_threads(1)


def _resnet():
    return get_model("resnet8", in_channels=1, width=8, seed=0).eval()


def test_uniform_counts_are_the_nearest_count_and_at_least_one():
    model, x = _resnet(), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    cost = CostModel(model, groups, x, DG)
    # fractions j / 97 never put r * D on a half (D is 8, 16 or 32), so "nearest" has one answer
    for r in [0.0] + [j / 97 for j in range(1, 97, 4)] + [1.0]:
        want = {g.name: max(1, min(g.channels, math.floor(r * g.channels + 0.5))) for g in groups}
        assert cost.uniform(r) == want, r


def _real_params(model, counts, x):
    return count_parameters(prune_like(model, counts, "l1", example_inputs=x).model)


def _random_counts(groups, seed):
    g = torch.Generator().manual_seed(seed)
    return {gr.name: int(torch.randint(1, gr.channels + 1, (1,), generator=g)) for gr in groups}


def test_parameter_cost_model_counts_really_pruned_networks_without_biased_readers():
    model, x = _resnet(), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    # every group but the one the classifier (the only layer with a bias here) reads
    groups = [g for g in groups if "fc" not in {r for r, _, _ in g.readers}]
    cost = CostModel(model, groups, x, DG, kind="params")
    assert cost.total == count_parameters(model) and cost.cost({}) == cost.total
    for seed in range(4):  # arbitrary, non-uniform keep counts
        counts = _random_counts(groups, seed)
        assert cost.cost(counts) == pytest.approx(_real_params(model, counts, x), rel=1e-12), counts


def test_parameter_cost_model_counts_the_bias_of_a_layer_reading_a_pruned_group():
    model, x = _resnet(), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    cost = CostModel(model, groups, x, DG, kind="params")
    counts = _random_counts(groups, 0)
    assert cost.cost(counts) == pytest.approx(_real_params(model, counts, x), rel=1e-12)


def test_monotone_gaps_are_the_running_minimum_of_the_loss_minus_the_unpruned_loss():
    assert monotone_gaps([5.0, 3.0, 4.0, 1.0, 2.0, 0.5], 1.0) == [4.0, 2.0, 2.0, 0.0, 0.0, -0.5]
    assert monotone_gaps([2.0], 2.5) == [-0.5]


# ------------------------------------------------------------------------------------ the allocation
class _ChainCost:
    """A hand-written cost with the cost model's interface: a chain of layers, each scaling with the kept
    fraction of the group it writes and of the group it reads (a group's channels are cheaper to remove once
    its neighbours are narrow), plus a fixed part."""

    def __init__(self, channels, layers, fixed):
        self.groups = [SimpleNamespace(name=n, channels=c) for n, c in channels.items()]
        self.layers, self.fixed = layers, fixed
        self.total = self.cost({})

    def cost(self, kept):
        by_name = {g.name: g for g in self.groups}

        def f(name):
            return 1.0 if name is None else kept.get(name, by_name[name].channels) / by_name[name].channels

        return self.fixed + sum(c * f(out) * f(into) for out, into, c in self.layers)


def _reference_allocation(cost, gaps, target):
    """The rule itself, naively: while over the budget, price every group (the rise of its loss gap when it
    loses a channel, over the cost that saves, both from scratch) and take a channel from the cheapest; then,
    while some channel fits back, give back the one that lowers its gap most per unit of cost."""
    budget = target * cost.total
    width = {g.name: g.channels for g in cost.groups}
    kept = dict(width)
    removals = 0
    while cost.cost(kept) > budget:
        prices = {}
        for n, k in kept.items():
            if k > 1:
                saved = cost.cost(kept) - cost.cost({**kept, n: k - 1})
                prices[n] = max(gaps[n][k - 2] - gaps[n][k - 1], 0.0) / saved
        if not prices:
            break
        kept[min(prices, key=prices.get)] -= 1
        removals += 1
    refills = 0
    while True:
        values = {}
        for n, k in kept.items():
            if k < width[n] and cost.cost({**kept, n: k + 1}) <= budget:
                added = cost.cost({**kept, n: k + 1}) - cost.cost(kept)
                values[n] = max(gaps[n][k - 1] - gaps[n][k], 0.0) / added
        if not values:
            return kept, removals, refills
        kept[max(values, key=values.get)] += 1
        refills += 1


def _instance(seed):
    g = torch.Generator().manual_seed(seed)
    channels = {"a": 5, "b": 4, "c": 6, "d": 3}
    costs = (30 + 70 * torch.rand(5, generator=g, dtype=torch.float64)).tolist()
    layers = [("a", None, costs[0]), ("b", "a", costs[1]), ("c", "b", costs[2]), ("d", "c", costs[3]),
              (None, "d", costs[4])]
    gaps = {}
    for name, d in channels.items():  # strictly decreasing, neither convex nor concave: distinct prices
        steps = torch.rand(d, generator=g, dtype=torch.float64) * (1 + 3 * torch.rand(1, generator=g))
        gaps[name] = monotone_gaps(torch.flip(torch.cumsum(steps, 0), [0]).tolist(), 0.0)
    return _ChainCost(channels, layers, fixed=25.0), gaps


def test_allocation_equals_the_rule_computed_naively():
    refilled = 0
    for seed in range(12):
        cost, gaps = _instance(seed)
        for target in (0.3, 0.5, 0.75):
            want, removals, refills = _reference_allocation(cost, gaps, target)
            got = allocate(cost, gaps, target)
            assert got == want, (seed, target)
            assert cost.cost(got) <= target * cost.total
            assert removals > 0
            refilled += refills > 0
    assert refilled >= 3  # the instances do exercise the refill after an overshooting removal


def test_allocation_keeps_the_widths_whose_loss_rises_most_per_unit_of_cost():
    # two independent groups of equal cost per channel: the loss of "steep" rises 10x faster, so the budget
    # is spent on it; with equal loss curves the group whose channels cost more loses them first
    cost = _ChainCost({"flat": 4, "steep": 4}, [("flat", None, 40.0), ("steep", None, 40.0)], fixed=20.0)
    curve = [3.0, 2.0, 1.0, 0.0]
    assert allocate(cost, {"flat": curve, "steep": [10 * v for v in curve]}, 0.6) == {"flat": 1, "steep": 3}
    cost = _ChainCost({"cheap": 4, "dear": 4}, [("cheap", None, 20.0), ("dear", None, 60.0)], fixed=20.0)
    assert allocate(cost, {"cheap": curve, "dear": curve}, 0.6) == {"cheap": 4, "dear": 1}


# ------------------------------------------------------------------------------------ per-channel curves
def test_per_channel_reads_the_loss_of_the_fewest_units_that_keep_k_channels():
    group = SimpleNamespace(channels=6)
    curve = [(2, 0.9, None), (3, 0.5, None), (6, 0.1, None)]  # (channels kept, loss, extra)
    assert per_channel(group, curve) == [0.9, 0.9, 0.5, 0.1, 0.1, 0.1]
    assert per_channel(SimpleNamespace(channels=3), [(1, 3.0, 0), (2, 2.0, 0), (3, 1.0, 0)]) == [3.0, 2.0, 1.0]
