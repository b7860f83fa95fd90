"""Which channels the baseline criteria keep, against independent computations of their scores."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedyprune.baselines import CRITERIA, prune_like
from greedyprune.channels import find_groups
from greedyprune.metrics import count_macs
from greedyprune.models import get_model

torch.set_num_threads(1)
SHAPE = (1, 12, 12)


@pytest.fixture(scope="module")
def setup():
    model = get_model("resnet8", in_channels=1, width=8, seed=0)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # distinct BN scales (some negative) so that every criterion has a clear order
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    model.eval()
    X = torch.randn(80, *SHAPE, generator=g)
    y = torch.randint(0, 10, (80,), generator=g)
    _, groups = find_groups(copy.deepcopy(model), X[:1])
    keep = {gr.name: max(1, gr.channels // 3) for gr in groups}
    return model, X, y, groups, keep


def _top(scores: torch.Tensor, n: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True)[:n].tolist())


def _bn_of(conv_name: str) -> str:
    """resnet naming: convK -> bnK, shortcut.0 -> shortcut.1."""
    if conv_name.endswith("shortcut.0"):
        return conv_name[:-1] + "1"
    head, _, last = conv_name.rpartition(".")
    return (head + "." if head else "") + last.replace("conv", "bn")


def test_bn_keeps_the_largest_batch_norm_scales(setup):
    model, X, y, groups, keep = setup
    result = prune_like(model, keep, "bn", example_inputs=X[:1])
    named = dict(model.named_modules())
    for g in groups:
        # network slimming's |gamma|, summed over every batch norm of the group (a residual stream has several)
        scores = sum(named[_bn_of(w)].weight.detach().abs() for w in g.writers)
        assert result.kept[g.name] == _top(scores, keep[g.name]), g.name
    kept = result.kept["layer1.0.conv1"]
    pruned_bn = dict(result.model.named_modules())["layer1.0.bn1"]
    torch.testing.assert_close(pruned_bn.weight, named["layer1.0.bn1"].weight[kept])


def test_taylor_keeps_the_largest_weight_times_gradient(setup):
    model, X, y, groups, keep = setup
    batch_size, batches = 16, 4
    result = prune_like(model, keep, "taylor", data=(X, y), batch_size=batch_size, taylor_batches=batches, seed=5)
    # the gradient of the cross-entropy summed over the same batches (seeded random batches of the data)
    net = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(5)
    for _ in range(batches):
        idx = torch.randperm(X.shape[0], generator=generator)[:batch_size]
        F.cross_entropy(net(X[idx]), y[idx]).backward()
    named = dict(net.named_modules())
    for g in groups:
        # Torch-Pruning's TaylorImportance: sum of |w * dL/dw| over each writer's filter and each reader's input
        # slice of the channel (its batch-norm branch only matches group norms, so batch norms add nothing)
        scores = torch.zeros(g.channels)
        for w in g.writers:
            conv = named[w]
            scores += (conv.weight * conv.weight.grad).abs().flatten(1).sum(1).detach()
        for reader, idx, root in g.readers:
            layer = named[reader]
            contribution = (layer.weight * layer.weight.grad).abs().transpose(0, 1).flatten(1).sum(1).detach()
            scores.index_add_(0, root, contribution[idx])
        assert result.kept[g.name] == _top(scores, keep[g.name]), g.name


def test_random_is_seeded_and_differs_across_seeds(setup):
    model, X, y, groups, keep = setup
    torch.manual_seed(123)
    a = prune_like(model, keep, "random", example_inputs=X[:1], seed=1).kept
    torch.manual_seed(456)  # the global RNG does not matter
    b = prune_like(model, keep, "random", example_inputs=X[:1], seed=1).kept
    assert a == b
    others = [prune_like(model, keep, "random", example_inputs=X[:1], seed=s).kept for s in (2, 3, 4)]
    assert all(o != a for o in others)
    for kept in [a] + others:
        assert {n: len(k) for n, k in kept.items()} == keep


@pytest.mark.parametrize("criterion", ["fpgm", "lamp"])
def test_fpgm_and_lamp_keep_the_requested_counts_deterministically(setup, criterion):
    model, X, y, groups, keep = setup
    a = prune_like(model, keep, criterion, example_inputs=X[:1])
    b = prune_like(model, keep, criterion, example_inputs=X[:1])
    assert a.kept == b.kept and {n: len(k) for n, k in a.kept.items()} == keep
    assert all(k == sorted(set(k)) for k in a.kept.values())
    assert a.report["macs_after"] == count_macs(a.model, X[:1]) < a.report["macs_before"]
    assert a.model(X[:2]).shape == (2, 10)


def test_every_criterion_gives_the_same_architecture(setup):
    model, X, y, groups, keep = setup
    shapes = set()
    for criterion in CRITERIA:
        result = prune_like(model, keep, criterion, data=(X, y), batch_size=16)
        shapes.add(tuple((n, tuple(p.shape)) for n, p in result.model.named_parameters()))
    assert len(shapes) == 1


def _layer_vectors(named, g):
    """Per layer of the group (each writer's filters, each reader's input slices): a (channels, ...) tensor of
    the weights that belong to each group channel, in group-channel order."""
    out = []
    for w in g.writers:
        out.append(named[w].weight.detach().flatten(1))
    for reader, idx, root in g.readers:
        per_input = named[reader].weight.detach().transpose(0, 1).flatten(1)  # (inputs, ...)
        rows = torch.zeros(g.channels, per_input.shape[1])
        rows[root] = per_input[idx]
        out.append(rows)
    return out


def test_l1_keeps_the_largest_l1_norms_of_the_root_layers_filters(setup):
    model, X, y, groups, keep = setup
    result = prune_like(model, keep, "l1", example_inputs=X[:1])
    roots = {g.name: g.root for g in find_groups(model, X[:1])[1]}  # the fixture's groups are of a copy
    for g in groups:
        # "Pruning Filters for Efficient ConvNets": sum_i |w_ji| over the filters j of the group's root layer only
        # (Torch-Pruning's root: the projection shortcut where a block has one, which is the paper's choice: "the
        # feature maps to be pruned should be determined by the pruning results of the shortcut layer")
        scores = roots[g.name].weight.detach().abs().flatten(1).sum(1)
        assert result.kept[g.name] == _top(scores, keep[g.name]), g.name
    named = dict(model.named_modules())
    assert any(roots[g.name] is not named[g.name] for g in groups)  # the case is there


def test_fpgm_keeps_the_filters_farthest_from_the_others_as_in_the_paper(setup):
    model, X, y, groups, keep = setup
    result = prune_like(model, keep, "fpgm", example_inputs=X[:1])
    roots = {g.name: g.root for g in find_groups(model, X[:1])[1]}
    for g in groups:
        # FPGM on the group's root layer, as "l1" reads it: a filter near the geometric median (a small summed
        # distance to the other filters) is redundant and pruned first
        filters = roots[g.name].weight.detach().flatten(1)
        scores = torch.stack([sum(torch.linalg.vector_norm(filters[j] - filters[k]) for k in range(g.channels))
                              for j in range(g.channels)])
        assert result.kept[g.name] == _top(scores, keep[g.name]), g.name


def test_lamp_keeps_the_largest_lamp_scores_of_the_mean_squared_group_magnitude(setup):
    """Torch-Pruning's LAMPImportance: per channel the mean over the group's layers (writers' filters, batch-norm
    scales, readers' input slices) of the squared L2 norm, then LAMP's normalisation ``u_j / sum_{u_k >= u_j}
    u_k`` (within one group it keeps the order of u, so the kept channels are those of the largest u)."""
    model, X, y, groups, keep = setup
    result = prune_like(model, keep, "lamp", example_inputs=X[:1])
    named = dict(model.named_modules())
    for g in groups:
        layers = _layer_vectors(named, g) + [named[_bn_of(w)].weight.detach().reshape(-1, 1) for w in g.writers]
        u = sum((v ** 2).sum(1) for v in layers) / len(layers)
        lamp = torch.stack([u[j] / u[u >= u[j]].sum() for j in range(g.channels)])
        assert result.kept[g.name] == _top(lamp, keep[g.name]) == _top(u, keep[g.name]), g.name


class _DepthwiseFirst(nn.Module):
    """MobileNetV2's first block (expansion 1): stem -> depthwise -> project; Torch-Pruning may enter a group
    by the depthwise conv (EfficientNet-Lite0's first block does)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.project(self.dw(self.stem(x))).mean((2, 3)))


def test_fpgm_reads_a_depthwise_root_layers_filters():
    torch.manual_seed(0)
    model = _DepthwiseFirst().eval()
    x = torch.randn(1, *SHAPE)
    groups = find_groups(model, x)[1]
    keep = {g.name: max(1, g.channels // 3) for g in groups}
    result = prune_like(model, keep, "fpgm", example_inputs=x)
    depthwise = 0
    for g in groups:
        depthwise += getattr(g.root, "groups", 1) > 1
        filters = g.root.weight.detach().flatten(1)
        scores = torch.stack([sum(torch.linalg.vector_norm(filters[j] - filters[k]) for k in range(g.channels))
                              for j in range(g.channels)])
        assert result.kept[g.name] == _top(scores, keep[g.name]), g.name
    assert depthwise  # the case is there
