"""Stopping rules stop at the right step, and ``flops_target`` keeps the largest uniform fraction that fits.

The tolerance rules are also checked end to end against a loop computing them from its own per-step losses
in ``test_deep_reference.py``; here each rule is checked against a direct computation from per-step
numbers, and the multiply-add budget against a brute force over every distinct keep fraction, with the
multiply-adds of really pruned models.
"""
import math

import pytest
import torch

from greedyprune.baselines import prune_like
from greedyprune.channels import AccuracyTolerance, KeepRatio, LossGap, Step, find_groups, prune_model
from greedyprune.channels.budget import CostModel as MacModel
from greedyprune.channels.budget import uniform_keep_counts
from greedyprune.channels.rules import FlopsTarget, PlanContext
from greedyprune.metrics import count_macs
from greedyprune.models import MobileNetV2, get_model

torch.set_num_threads(1)


def _trajectory(seed, n=30):
    """Per-step (loss, unpruned loss, accuracy, unpruned accuracy) of a made-up search: the loss falls
    towards the unpruned loss with noise, the accuracy rises."""
    g = torch.Generator().manual_seed(seed)
    unpruned = 0.5 + torch.rand(n, generator=g)
    gap = 3.0 * torch.exp(-torch.arange(n) / 6.0) + 0.1 * torch.randn(n, generator=g)
    full_acc = 0.6 + 0.3 * torch.rand(n, generator=g)
    acc = full_acc * (1 - 0.8 * torch.exp(-torch.arange(n) / 5.0)) + 0.05 * torch.randn(n, generator=g)
    return [(float(unpruned[t] + gap[t]), float(unpruned[t]), float(acc[t]), float(full_acc[t])) for t in range(n)]


def _first_stop(rule, trajectory, D=30):
    for t, (loss, full, acc, full_acc) in enumerate(trajectory):
        if rule.stop(Step("g", D, t + 1, t + 1, loss, acc, full, full_acc)):
            return t + 1
    return None


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.2, 1.0, 3.0])
def test_loss_gap_stops_at_the_first_step_within_epsilon(epsilon):
    stops = set()
    for seed in range(20):
        traj = _trajectory(seed)
        expected = next((t + 1 for t, (loss, full, _, _) in enumerate(traj) if (loss - full) / full <= epsilon), None)
        assert _first_stop(LossGap(epsilon), traj) == expected, (seed, epsilon)
        stops.add(expected)
    assert len(stops) >= 3  # the trajectories do exercise different stopping steps


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.1, 0.5])
def test_accuracy_tolerance_stops_at_the_first_step_within_tolerance(tolerance):
    stops = set()
    for seed in range(20):
        traj = _trajectory(seed)
        expected = next((t + 1 for t, (_, _, acc, full) in enumerate(traj) if acc / full >= 1 - tolerance), None)
        assert _first_stop(AccuracyTolerance(tolerance), traj) == expected, (seed, tolerance)
        stops.add(expected)
    assert len(stops) >= 3  # the trajectories do exercise different stopping steps


def test_the_tolerance_rules_stop_on_their_boundary_and_read_the_size_of_the_unpruned_loss():
    # exactly on the boundary ("within epsilon", "at least (1 - tolerance) x"): stop. These numbers are exact in
    # binary, and the case is not rare: a group searched to its full width has the unpruned loss and accuracy.
    assert LossGap(0.0).stop(Step("g", 8, 8, 8, 0.75, 0.5, 0.75, 0.5))
    assert LossGap(0.25).stop(Step("g", 8, 3, 3, 2.5, 0.5, 2.0, 0.5))
    assert not LossGap(0.25).stop(Step("g", 8, 3, 3, 2.5 + 2 ** -40, 0.5, 2.0, 0.5))
    assert AccuracyTolerance(0.0).stop(Step("g", 8, 8, 8, 1.0, 0.75, 1.0, 0.75))
    assert AccuracyTolerance(0.5).stop(Step("g", 8, 3, 3, 1.0, 0.25, 1.0, 0.5))
    assert not AccuracyTolerance(0.5).stop(Step("g", 8, 3, 3, 1.0, 0.25 - 2 ** -40, 1.0, 0.5))
    # a negative unpruned loss (a user's objective): the allowed gap is epsilon x its size
    assert LossGap(0.25).stop(Step("g", 8, 3, 3, -1.5, 0.5, -2.0, 0.5))
    assert not LossGap(0.25).stop(Step("g", 8, 3, 3, -1.25, 0.5, -2.0, 0.5))


def test_keep_counts_stop_at_the_count_and_keep_unnamed_groups_whole():
    from greedyprune.channels.rules import KeepCounts

    model, x = _resnet(), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    rule = KeepCounts({groups[0].name: 3})
    rule.plan(PlanContext(model, groups, x, DG))
    assert rule.targets == {g.name: 3 if g is groups[0] else g.channels for g in groups}
    g = groups[0]
    stops = [rule.stop(Step(g.name, g.channels, k, k, 1.0, 0.5)) for k in range(1, 6)]
    assert stops == [False, False, True, True, True]


def _resnet(width=4, **kw):
    return get_model("resnet8", in_channels=1, width=width, seed=0, **kw).eval()


@pytest.mark.parametrize("ratio", [pytest.param(0.3, marks=pytest.mark.slow), 0.5, 0.7, 0.05])
def test_keep_ratio_keeps_the_nearest_count_and_stops_there(ratio):
    model, x = _resnet(), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    rule = KeepRatio(ratio)
    rule.plan(PlanContext(model, groups, x, DG))
    for g in groups:
        target = max(1, min(g.channels, math.floor(ratio * g.channels + 0.5)))  # nearest, halves up (no halves here)
        assert rule.targets[g.name] == target, (g.name, g.channels)
        kept_after = [rule.stop(Step(g.name, g.channels, k, k, 1.0, 0.5)) for k in range(1, g.channels + 1)]
        assert kept_after.index(True) + 1 == target
    if ratio == 0.3:  # end to end
        X = torch.randn(48, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(1))
        result = prune_model(model, (X, y), keep_ratio=ratio, candidates=2, batch_size=16)
        assert {n: len(k) for n, k in result.kept.items()} == rule.targets
        assert all(r["steps"] == rule.targets[r["name"]] for r in result.layers)


# ------------------------------------------------------------------------------------------ budgets
BUDGET_MODELS = {
    "resnet8": lambda: _resnet(width=8),
    "mobilenetv2": lambda: MobileNetV2(10, 1, cfg=[(1, 8, 1, 1), (3, 8, 2, 2), (2, 12, 1, 1)], last_channels=16).eval(),
}


def _distinct_uniform_counts(cost: MacModel, groups) -> list[tuple[float, dict]]:
    """Every distinct uniform keep vector, as (a fraction giving it, counts), by increasing fraction: the
    counts change only where some ``r * D`` crosses a half-integer, so one fraction per gap suffices."""
    cuts = sorted({(j + 0.5) / g.channels for g in groups for j in range(g.channels)} | {0.0, 1.0})
    mids = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [1.0]
    out = []
    for r in mids:
        counts = cost.uniform(r)
        if not out or counts != out[-1][1]:
            out.append((r, counts))
    return out


def _real_macs(model, counts, x):
    return count_macs(prune_like(model, counts, "l1", example_inputs=x).model, x)


@pytest.mark.parametrize("arch", list(BUDGET_MODELS))
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_flops_target_keeps_the_largest_uniform_fraction_that_fits(arch, target):
    model, x = BUDGET_MODELS[arch](), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    cost = MacModel(model, groups, x, DG)
    dense = count_macs(model, x)
    options = _distinct_uniform_counts(cost, groups)
    fits = [i for i, (_, counts) in enumerate(options) if cost.cost(counts) <= target * dense]
    if not fits:  # the skipped layers alone cost more
        with pytest.raises(ValueError, match="not reachable"):
            uniform_keep_counts(model, groups, x, target, DG)
        assert arch == "mobilenetv2" and target == 0.3
        return
    assert fits == list(range(len(fits)))  # the multiply-adds grow with the fraction
    best = options[fits[-1]][1]
    assert uniform_keep_counts(model, groups, x, target, DG) == best
    rule = FlopsTarget(target, uniform=True)
    rule.plan(PlanContext(model, groups, x, DG))
    assert rule.targets == best
    # with really pruned models: the chosen counts fit, the next larger uniform fraction does not
    macs = _real_macs(model, best, x)
    assert macs == pytest.approx(cost.cost(best), rel=1e-9)
    assert macs <= target * dense
    if fits[-1] + 1 < len(options):
        bigger = options[fits[-1] + 1][1]
        assert _real_macs(model, bigger, x) > target * dense


@pytest.mark.slow
def test_prune_model_meets_a_uniform_flops_target_without_overshooting():
    model = _resnet(width=8)
    X = torch.randn(64, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    for target in (0.4, 0.7):
        result = prune_model(model, (X, y), flops_target=target, uniform=True, candidates=2, batch_size=16)
        ratio = result.report["macs_after"] / result.report["macs_before"]
        assert 0.8 * target < ratio <= target, ratio  # not 40% under it
        DG, groups = find_groups(model, X[:1])
        assert {n: len(k) for n, k in result.kept.items()} == uniform_keep_counts(model, groups, X[:1], target, DG)


def test_mac_model_counts_layers_reading_and_writing_pruned_groups():
    model, x = _resnet(width=8), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    cost = MacModel(model, groups, x, DG)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):  # arbitrary (non-uniform) keep counts
        counts = {gr.name: int(torch.randint(1, gr.channels + 1, (1,), generator=g)) for gr in groups}
        assert cost.cost(counts) == pytest.approx(_real_macs(model, counts, x), rel=1e-9)
    assert cost.cost({}) == count_macs(model, x)


def test_flops_target_below_the_skipped_layers_is_refused():
    model, x = _resnet(width=8), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    with pytest.raises(ValueError, match="not reachable"):
        uniform_keep_counts(model, groups, x, 0.01, DG)


def test_rules_reject_bad_values():
    bad_values = ((LossGap, -0.1), (AccuracyTolerance, 1.0), (KeepRatio, 0.0), (KeepRatio, 1.5), (FlopsTarget, 1.0))
    for make, bad in bad_values:
        with pytest.raises(ValueError):
            make(bad)


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_adaptive_budget_lands_within_two_percent_with_widths_from_the_loss_curves(kind):
    from greedyprune.metrics import count_parameters

    model = _resnet(width=8)
    X = torch.randn(160, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (160,), generator=torch.Generator().manual_seed(1))
    key = "flops_target" if kind == "macs" else "params_target"
    for target in (0.4, 0.6):
        result = prune_model(model, (X, y), candidates=3, batch_size=16, holdout=32, **{key: target})
        ratio = result.ratio("macs" if kind == "macs" else "params")
        assert abs(ratio - target) <= 0.02, (target, ratio)
        fractions = {round(len(k) / g["channels"], 3) for k, g in zip(result.kept.values(), result.layers)}
        assert len(fractions) > 1, "every group kept the same fraction"
    dense = count_macs(model, X[:1]) if kind == "macs" else count_parameters(model)
    assert dense > 0


def test_allocation_takes_channels_where_the_loss_curve_is_flat():
    from greedyprune.channels.budget import allocate, monotone_gaps

    model, x = _resnet(width=8), torch.randn(1, 1, 12, 12)
    DG, groups = find_groups(model, x)
    cost = MacModel(model, groups, x, DG)
    flat, steep = groups[0].name, groups[1].name
    gaps = {}
    for g in groups:  # every group's loss falls like 1/k; one is flat (costless to prune), one steep
        scale = 1e-6 if g.name == flat else (100.0 if g.name == steep else 1.0)
        gaps[g.name] = monotone_gaps([scale / k for k in range(1, g.channels + 1)], 0.0)
    kept = allocate(cost, gaps, 0.6)
    assert cost.cost(kept) <= 0.6 * cost.total
    assert kept[flat] == 1 and kept[steep] == groups[1].channels
    with pytest.raises(ValueError, match="not reachable.*closest reachable"):
        allocate(cost, gaps, 0.001)


def test_stopping_rule_is_declared_with_defaults_and_duck_typed_rules_get_them():
    import ast
    import pathlib

    from greedyprune.channels.objectives import resolve_objective
    from greedyprune.channels.rules import KeepRatio, StoppingRule, rule_from_options

    class Plain:  # a user's rule with only the four required members
        name, needs_unpruned = "plain", False

        def plan(self, context):
            pass

        def stop(self, step):
            return step.kept >= 2

    class Widths(Plain):  # a user's rule that fixes widths in its constructor
        def __init__(self):
            self.targets = {"conv1": 3}

    plain = rule_from_options(Plain())
    assert isinstance(plain, StoppingRule)
    assert (plain.name, plain.needs_unpruned, plain.needs_curves, plain.targets, plain.value) == \
        ("plain", False, False, None, None)
    assert resolve_objective("auto", plain) == "network"
    widths = rule_from_options(Widths())
    assert widths.targets == {"conv1": 3} and resolve_objective("auto", widths) == "local"
    ratio = KeepRatio(0.5)
    assert rule_from_options(ratio) is ratio and ratio.value == 0.5 and not ratio.needs_curves
    with pytest.raises(NotImplementedError):
        StoppingRule().stop(None)
    # the search reads a rule's members directly: no getattr/hasattr on it
    for path in pathlib.Path("greedyprune/channels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id
            if called in ("getattr", "hasattr"):
                first = node.args[0] if node.args else None
                assert not (isinstance(first, ast.Name) and first.id == "stop"), f"{path}:{node.lineno}"
