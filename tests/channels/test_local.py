"""The CNN local objective: its Gram form against the explicit per-unit reader outputs, and its selection
against Algorithm 1 run on those explicit outputs."""
import torch
from torch import nn

from greedyprune import get_model, greedy_forward_selection, prune_model
from greedyprune.channels import apply_masks, find_groups
from greedyprune.channels.local import local_problem, local_selection


def _explicit(model, group, x):
    """phi_u (U, positions * outputs) and the target, by masking one unit at a time and reading the readers."""
    named = dict(model.named_modules())
    outs = {}
    hooks = [named[name].register_forward_hook(lambda m, a, o, name=name: outs.__setitem__(name, o))
             for name, _, _ in group.readers]

    def reader_outputs(scale):
        with torch.no_grad(), apply_masks(model, {group: scale}):
            model(x)
        parts = []
        for name, _, _ in group.readers:
            o = outs[name]
            bias = named[name].bias
            if bias is not None:  # the group's part only: the bias is the same for every selection
                o = o - bias.view(1, -1, *([1] * (o.dim() - 2)))
            parts.append(o.double().reshape(-1))
        return torch.cat(parts)

    try:
        D = group.channels
        zero = reader_outputs(torch.zeros(D))  # what the other inputs of the readers contribute
        target = reader_outputs(torch.ones(D)) - zero
        phi = torch.stack([D * (reader_outputs(torch.eye(D)[u]) - zero) for u in range(D)])
    finally:
        for h in hooks:
            h.remove()
    return phi, target


def test_gram_form_equals_the_explicit_reconstruction_problem():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    _, groups = find_groups(model, x[:1])
    # groups whose readers' inputs do not depend on the group's own mask (a block's inner channels); for a
    # residual stream the local objective takes every reader's input from the unmasked network
    inner = [g for g in groups if len(g.writers) == 1]
    assert len(inner) == 3
    for group in inner:
        gram, cross, norm, _ = local_problem(model, group, x)
        phi, target = _explicit(model, group, x)
        torch.testing.assert_close(gram, phi @ phi.T, rtol=1e-6, atol=1e-6 * float(gram.abs().max()))
        torch.testing.assert_close(cross, phi @ target, rtol=1e-6, atol=1e-6 * float(cross.abs().max()))
        assert abs(norm - float(target @ target)) <= 1e-6 * float(target @ target)
        # Algorithm 1 on the Gram form selects what it selects on the explicit outputs
        k = group.channels
        explicit = greedy_forward_selection(phi.reshape(k, -1), target.reshape(-1), k, loss="squared")
        implicit = greedy_forward_selection(None, None, k, gram=gram, cross=cross, target_norm=norm,
                                            examples=target.numel())
        assert explicit.indices.tolist() == implicit.indices.tolist()
        torch.testing.assert_close(implicit.losses * target.numel(), explicit.losses * target.numel(),
                                   rtol=1e-6, atol=1e-6 * norm)


def test_local_selection_stops_at_the_distinct_count_and_prunes_to_it():
    model = get_model("resnet8", in_channels=1, width=8, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    _, groups = find_groups(model, X[:1])
    gram, cross, norm, n = local_problem(model, groups[0], X[:16])
    for distinct in (1, 3, groups[0].channels):
        counts = local_selection(gram, cross, norm, n, distinct)
        assert int((counts > 0).sum()) == distinct
    result = prune_model(model, (X, y), keep_ratio=0.5, objective="local-gfs", recalibrate=64)
    assert all(len(k) == max(1, round(0.5 * d)) for k, d in
               zip(result.kept.values(), [g.channels for g in groups]))
    assert all(r["evaluator"] == "local" for r in result.layers)


def test_local_objective_needs_a_width_rule():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 24 * 24, 10))
    X, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    import pytest

    with pytest.raises(ValueError, match="objective='local' needs a rule that fixes each group's width"):
        prune_model(model, (X, y), accuracy_tolerance=0.02, objective="local", holdout=8)


def _doubling_reference(gram, cross, norm, positions, distinct):
    """The former way: re-run Algorithm 1 from scratch with 2d, 4d, ... steps until ``distinct`` units are
    in (or 64 U steps are passed), keeping the steps before the one that chose a unit too many."""
    U = gram.shape[0]
    k = 2 * distinct
    while True:
        result = greedy_forward_selection(None, None, k, replacement=True, gram=gram, cross=cross, target_norm=norm,
                                          examples=positions)
        seen, counts = set(), torch.zeros(U, dtype=torch.long)
        for i in result.indices.tolist():
            if i not in seen and len(seen) == distinct:
                return counts
            seen.add(i)
            counts[i] += 1
        if len(seen) >= distinct or k >= 64 * U:
            return counts
        k *= 2


def test_local_selection_is_one_run_equal_to_the_doubling_re_runs():
    torch.manual_seed(0)
    reweighted = 0
    for t in range(12):
        U = int(torch.randint(2, 10, (1,)))
        a = torch.randn(U, U + 3, dtype=torch.float64)
        gram = a @ a.T
        if t % 3 == 0:  # two nearly silent units: the selection re-weights the others for many steps
            gram[:, :2] *= 0.01
            gram[:2, :] *= 0.01
        cross = torch.randn(U, dtype=torch.float64) * float(torch.rand(1) * 5)
        for distinct in range(1, U + 1):
            counts = local_selection(gram, cross, float(cross.abs().sum() + 10), 7, distinct)
            assert counts.tolist() == _doubling_reference(gram, cross, float(cross.abs().sum() + 10), 7,
                                                          distinct).tolist()
            reweighted += int(counts.sum()) > 2 * distinct
    assert reweighted > 8  # the re-run path (more steps than 2d) is exercised
