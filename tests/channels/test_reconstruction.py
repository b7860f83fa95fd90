"""The block-reconstruction engine (greedyprune.selection.block) and the local objective built on it
(greedyprune.channels.reconstruct): selections against brute-force least squares on explicit matrices, the
refit against its closed form, pruned == the refitted dense network for plain, grouped and depthwise-fed
readers, exact channel counts, MACs of layers with children, and the caller's timers."""
import copy
import signal
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedyprune import prune_model
from greedyprune.channels import find_groups, fold_and_remove
from greedyprune.channels.reconstruct import DenseTargets, reader_problem, reconstruct_group, sub_readers
from greedyprune.metrics import count_macs, layer_macs
from greedyprune.selection.block import ReaderProblem, ridge_refit, select_units

torch.set_num_threads(1)


def _explicit_problem(P, Y, unit_columns, fixed, weight=None):
    P, Y = P.double(), Y.double()
    return ReaderProblem(gram=P @ P.T, cross=P @ Y.T, target_sq=(Y * Y).sum(1), unit_columns=unit_columns,
                         fixed=fixed, tokens=P.shape[1], out_weight=weight)


def _residual(P, Y, columns, weight):
    """Weighted squared residual of the least-squares fit of Y on the rows ``columns`` of P (explicit)."""
    P, Y = P.double(), Y.double()
    if columns.numel() == 0:
        fit = torch.zeros_like(Y)
    else:
        pk = P[columns]
        coef = torch.linalg.lstsq(pk.T, Y.T).solution  # (|K|, d)
        fit = (pk.T @ coef).T
    return float((((Y - fit) ** 2).sum(1) * weight).sum())


@pytest.mark.parametrize("group", [1, 2])  # one column a unit (a 1x1 reader) has a path of its own
def test_select_units_equals_brute_force_least_squares(group):
    g = torch.Generator().manual_seed(0)
    U, T = 7, 60
    readers = []
    for C_extra, d in ((3, 4), (0, 5)):  # one reader with fixed columns, one without
        C = U * group + C_extra
        P = torch.randn(C, T, generator=g)
        Y = torch.randn(d, C, generator=g) @ P + 0.3 * torch.randn(d, T, generator=g)
        perm = torch.randperm(C, generator=g)
        unit_columns, fixed = perm[:U * group].reshape(U, group), perm[U * group:]
        weight = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
        readers.append((P, Y, unit_columns, fixed, weight))
    problems = [_explicit_problem(*r) for r in readers]
    chosen = select_units(problems, 5)
    # brute force: each step try every free unit, refit everything from scratch, keep the lowest residual
    order = []
    total = sum(float(((Y.double() ** 2).sum(1) * w).sum()) for _, Y, _, _, w in readers)
    for step in range(5):
        best = None
        for u in range(U):
            if u in order:
                continue
            err = sum(_residual(P, Y, torch.cat([fx, uc[order + [u]].reshape(-1)]), w)
                      for P, Y, uc, fx, w in readers)
            if best is None or err < best[0] - 1e-9:
                best = (err, u)
        order.append(best[1])
        assert chosen.errors[step] == pytest.approx(best[0] / total, rel=1e-6, abs=1e-9)
    assert chosen.order.tolist() == order


def test_ridge_refit_is_its_closed_form():
    g = torch.Generator().manual_seed(1)
    P, Y = torch.randn(6, 40, generator=g, dtype=torch.float64), torch.randn(3, 40, generator=g, dtype=torch.float64)
    keep, prior = torch.tensor([0, 2, 5]), torch.randn(3, 3, generator=g, dtype=torch.float64)
    v = ridge_refit(P @ P.T, P @ Y.T, keep, prior, 40, ridge=0.7)
    pk = P[keep]
    lam = 0.7 * float(torch.diagonal(pk @ pk.T).mean()) * 3 / 40
    closed = torch.linalg.solve(pk @ pk.T + lam * torch.eye(3, dtype=torch.float64), pk @ Y.T + lam * prior.T).T
    assert torch.allclose(v, closed, atol=1e-10)
    plain = ridge_refit(P @ P.T, P @ Y.T, keep, prior, 40, ridge=0.0)
    assert torch.allclose(plain, torch.linalg.lstsq(pk.T, Y.T).solution.T, atol=1e-8)


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = self.b(F.relu(self.bn(self.a(x))))
        return self.fc(F.relu(x).mean((2, 3)))


def _plain_problem(model, x):
    """b's input patches, its own output (no dense targets) and the outputs' inverse-variance weights."""
    h = F.relu(model.bn(model.a(x))).detach()
    P = F.unfold(h, 3, padding=1).transpose(0, 1).reshape(54, -1).double()
    W = model.b.weight.detach().reshape(5, -1).double()
    Y = W @ P
    var = (Y * Y).mean(1) - Y.mean(1) ** 2
    weight = 1.0 / (P.shape[1] * var.clamp_min(1e-3 * float(var.mean())))
    return P, Y, weight


@pytest.mark.parametrize("compensate", ["none", "mean"])
def test_conv_reader_selection_equals_brute_force_on_explicit_patches(compensate):
    """"none": least squares on the raw patches; with a re-solved bias ("mean", "mean-var" select alike): least
    squares with a constant row (the fit about the means)."""
    torch.manual_seed(0)
    model = _Plain().eval()
    x = torch.randn(6, 3, 8, 8)
    DG, groups = find_groups(model, x[:1], skip=["fc"])
    group = next(gr for gr in groups if gr.name == "a")
    counts, _, _, _, _ = reconstruct_group(model, group, 3, x, None, ridge=0.0, compensate=compensate)
    P, Y, weight = _plain_problem(model, x)
    if compensate != "none":
        P, Y = P - P.mean(1, keepdim=True), Y - Y.mean(1, keepdim=True)
    unit_cols = torch.arange(54).reshape(6, 9)
    order = []
    for _ in range(3):
        errs = {u: _residual(P, Y, unit_cols[order + [u]].reshape(-1), weight) for u in range(6) if u not in order}
        order.append(min(errs, key=lambda u: (errs[u], u)))
    assert sorted(order) == torch.nonzero(counts).flatten().tolist()


@pytest.mark.parametrize("compensate", ["none", "mean", "mean-var"])
def test_compensated_refit_is_least_squares_with_a_constant_column(compensate):
    """The refit (ridge 0) against an explicit least-squares fit of b's output on its kept patch rows plus a
    row of ones: "mean" is that fit, weight and bias; "mean-var" scales each output's fit up to the target's
    variance (never down) and re-solves the bias for it; "none" is the fit without the ones, the bias kept."""
    torch.manual_seed(0)
    model = _Plain().eval()
    x = torch.randn(6, 3, 8, 8)
    DG, groups = find_groups(model, x[:1], skip=["fc"])
    group = next(gr for gr in groups if gr.name == "a")
    bias = model.b.bias.detach().double().clone()
    counts, weights, _, _, biases = reconstruct_group(model, group, 3, x, None, ridge=0.0, compensate=compensate)
    P, Y, _ = _plain_problem(model, x)
    keep = torch.nonzero(counts.repeat_interleave(9)).flatten()
    if compensate == "none":
        coef = torch.linalg.lstsq(P[keep].T, Y.T).solution.T
        assert "b" not in biases
        assert torch.allclose(weights["b"].reshape(5, -1)[:, keep].double(), coef, atol=1e-4)
        return
    design = torch.cat([P[keep], torch.ones(1, P.shape[1], dtype=torch.float64)])
    solution = torch.linalg.lstsq(design.T, Y.T).solution.T
    coef, shift = solution[:, :-1], solution[:, -1]
    if compensate == "mean-var":
        fit = coef @ P[keep]
        ratio = (Y.var(1, correction=0) / fit.var(1, correction=0)).sqrt().clamp(1.0, 4.0)
        assert bool((ratio > 1.0001).any())  # the case is not vacuous: some output is scaled
        coef = coef * ratio.unsqueeze(1)
        shift = Y.mean(1) - coef @ P[keep].mean(1)
        refitted = weights["b"].reshape(5, -1)[:, keep].double() @ P[keep]
        scaled = ratio < 3.999
        assert torch.allclose(refitted.var(1, correction=0)[scaled], Y.var(1, correction=0)[scaled], rtol=1e-3)
    assert torch.allclose(weights["b"].reshape(5, -1)[:, keep].double(), coef, atol=1e-4)
    assert torch.allclose(biases["b"].double(), bias + shift, atol=1e-4)
    assert torch.count_nonzero(weights["b"].reshape(5, -1)[:, torch.nonzero(counts.repeat_interleave(9) == 0)
                                                            .flatten()]) == 0


class _GroupedBlock(nn.Module):
    """ResNeXt-style: 1x1 -> grouped 3x3 -> 1x1, and a depthwise-fed expansion (MobileNet-style)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c1 = nn.Conv2d(8, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.c2 = nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.c3 = nn.Conv2d(12, 8, 1, bias=False)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.c3(F.relu(self.bn2(self.c2(F.relu(self.bn1(self.c1(x)))))))
        x = x + self.project(F.relu(self.bn3(self.dw(self.expand(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("name", ["c1", "c2", "expand"])
def test_pruned_equals_the_refitted_dense_network(name):
    torch.manual_seed(0)
    model = _GroupedBlock().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(8, 3, 8, 8)
    DG, groups = find_groups(model, x[:1])
    group = next(g for g in groups if g.name == name)
    dense = DenseTargets(model, {r for r, _, _ in group.readers}, x)
    counts, weights, _, _, _ = reconstruct_group(model, group, group.num_units // 2, x, dense, ridge=0.1)
    masked = copy.deepcopy(model)
    named = dict(masked.named_modules())
    with torch.no_grad():
        for reader, w in weights.items():
            named[reader].weight.copy_(w)  # removed channels' columns are zero in the refitted weight
        expected = masked(x)
    fold_and_remove(DG, model, group, counts, reader_weights=weights)
    with torch.no_grad():
        pruned = model(x)
    assert int((counts > 0).sum()) < group.channels
    assert torch.allclose(pruned, expected, atol=1e-4)
    model.train()
    model(x)  # runs in train mode too


def test_grouped_reader_is_read_per_conv_group():
    model = _GroupedBlock().eval()
    DG, groups = find_groups(model, torch.randn(1, 3, 8, 8))
    subs = sub_readers(model, next(g for g in groups if g.name == "c1"))
    assert [s.name for s in subs] == ["c2"] * 3
    assert all(s.unit_columns.shape == (4, 9) and s.fixed.numel() == 0 for s in subs)


def test_prune_model_local_keeps_the_asked_channels_exactly():
    torch.manual_seed(0)
    model = _GroupedBlock().eval()
    X, y = torch.randn(48, 3, 8, 8), torch.randint(0, 5, (48,))
    result = prune_model(model, (X, y), keep_ratio=0.5, eval_examples=16, recalibrate=32)
    assert result.report["bn"] in ("batch", "running")
    for record in result.layers:
        assert record["evaluator"] == "reconstruction"
        assert record["kept"] == max(1, round(0.5 * record["channels"])) or record["name"] == "c1"
    # c1's group is tied in units by the grouped c2 (3 conv groups of 4): 6 of 12 asked, 6 kept (2 units x 3)
    assert len(result.kept["c1"]) == 6


class _Padded(nn.Conv2d):
    """A convolution that holds its padding as a child module (as Conv2dStaticSamePadding does)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def test_macs_of_a_conv_holding_a_child_module_equal_a_hand_count():
    model = nn.Sequential(_Padded(3, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    macs = layer_macs(model, (1, 3, 16, 16))
    # padded to 17x17, kernel 2, stride 2 -> 8x8 outputs; 8 * 3 * 2 * 2 per output position
    assert macs["0"] == 8 * 3 * 4 * 8 * 8
    assert macs["2"] == 4 * 8 * 8 * 8
    assert sum(macs.values()) == count_macs(model, (1, 3, 16, 16))


def test_local_objective_reconstructs_through_a_padding_child():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _Padded(8, 6, 2, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    X, y = torch.randn(32, 3, 12, 12), torch.randint(0, 3, (32,))
    result = prune_model(model, (X, y), flops_target=0.6, uniform=True, skip=["6"], eval_examples=8)
    assert result.report["macs_after"] <= 0.6 * result.report["macs_before"] * 1.02
    assert len(result.kept["0"]) < 8


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_network_objective_searches_fast_through_a_padding_child(bn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                          _Padded(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 3)).eval()  # the padding conv reads group "2"
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    X, y = torch.randn(32, 3, 12, 12), torch.randint(0, 3, (32,))
    opts = dict(objective="network", keep_ratio=0.5, candidates=4, batch_size=16, bn=bn, eval_examples=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast evaluator, no fallback to the reference
        fast = prune_model(model, (X, y), evaluator="fast", **opts)
    ref = prune_model(model, (X, y), evaluator="reference", **opts)
    assert {r["evaluator"] for r in fast.layers} == {"fast"} and fast.kept == ref.kept and "2" in fast.kept
    torch.testing.assert_close(torch.tensor([r["loss"] for r in fast.layers]),
                               torch.tensor([r["loss"] for r in ref.layers]), rtol=1e-4, atol=1e-5)


def test_a_callers_alarm_survives_prune_model():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 1000.0)
        model = _GroupedBlock().eval()
        prune_model(model, (torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))), keep_ratio=0.5, eval_examples=8)
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 900.0 < remaining <= 1000.0  # still running, not reset
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_coarse_curve_steps_end_where_the_exact_selection_ends():
    g = torch.Generator().manual_seed(3)
    P = torch.randn(12, 80, generator=g)
    Y = torch.randn(4, 12, generator=g) @ P + 0.1 * torch.randn(4, 80, generator=g)
    problem = _explicit_problem(P, Y, torch.arange(12).reshape(12, 1), torch.empty(0, dtype=torch.long))
    exact, coarse = select_units([problem], 12), select_units([problem], 12, step=5)
    assert sorted(coarse.order.tolist()) == list(range(12))
    assert torch.all(coarse.errors[1:] <= coarse.errors[:-1] + 1e-12)  # non-increasing
    assert coarse.errors[4] == coarse.errors[0]  # one value per block of 5
    assert float(coarse.errors[-1]) == pytest.approx(float(exact.errors[-1]), abs=1e-9)
    assert coarse.order[:5].tolist() == torch.sort(-_gains_of_first_step(problem), stable=True).indices[:5].tolist()


def _gains_of_first_step(problem):
    gram, cross = problem.gram, problem.cross
    return (cross ** 2).sum(1) / torch.diagonal(gram)


def test_cross_validated_ridge_prefers_the_prior_on_noise_and_the_fit_on_signal():
    from greedyprune.selection.block import RIDGE_GRID, cross_validated_ridge

    g = torch.Generator().manual_seed(5)
    keep = torch.arange(20)

    def folds(make_y):
        out = []
        for _ in range(2):
            P = torch.randn(20, 30, generator=g, dtype=torch.float64)
            Y = make_y(P)
            out.append((P @ P.T, P @ Y.T, (Y * Y).sum(1), 30))
        return out

    true = torch.randn(3, 20, generator=g, dtype=torch.float64)
    # targets the prior explains, plus noise of one half that the other half does not share: keep the prior
    noisy = folds(lambda P: true @ P + 3.0 * torch.randn(3, 30, generator=g, dtype=torch.float64))
    assert cross_validated_ridge(noisy, keep, true) == max(RIDGE_GRID)
    # a noiseless map the prior (zero) knows nothing of: fit it
    exact = folds(lambda P: true @ P)
    assert cross_validated_ridge(exact, keep, torch.zeros(3, 20, dtype=torch.float64)) == min(RIDGE_GRID)


def test_budget_curves_do_not_trust_a_fit_with_fewer_positions_than_columns():
    from greedyprune.channels.reconstruct import reconstruction_curves

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10)).eval()
    x = torch.randn(12, 3, 8, 8)  # 12 positions for the classifier's 64 columns
    _, groups = find_groups(wide, x[:1], skip=["4"])
    curve = reconstruction_curves(wide, groups, x)["0"][0]
    assert len(curve) == 64 and curve[-1] == pytest.approx(0.0, abs=1e-9)
    # an in-sample fit explains everything with 12 columns; the honest curve still charges for cutting to 12
    assert curve[11] > 0.3


def test_units_spanned_by_the_chosen_ones_do_not_break_the_selection():
    # two-column units where unit 3 repeats unit 0's columns exactly: once 0 is chosen, 3's block is singular
    g = torch.Generator().manual_seed(7)
    P = torch.randn(8, 50, generator=g, dtype=torch.float64)
    P = torch.cat([P, P[0:2]])  # columns 8, 9 copy columns 0, 1
    Y = torch.randn(3, 10, generator=g, dtype=torch.float64) @ P
    cols = torch.tensor([[0, 1], [2, 3], [4, 5], [8, 9], [6, 7]])
    chosen = select_units([_explicit_problem(P, Y, cols, torch.empty(0, dtype=torch.long))], 5)
    assert sorted(chosen.order.tolist()) == [0, 1, 2, 3, 4]
    assert float(chosen.errors[3]) == pytest.approx(0.0, abs=1e-8)  # units 0/3 are one: 4 distinct span it all
    assert torch.isfinite(chosen.errors).all()


def test_sensitivity_curve_points_equal_the_kl_of_each_group_pruned_alone():
    """Each point of a sensitivity curve = KL(dense || the dense network with that group alone physically
    pruned to that width by reconstruct_group, own-output targets, the same ridge), computed independently."""
    from greedyprune.channels.sensitivity import sensitivity_curves

    torch.manual_seed(0)
    model = _GroupedBlock().eval()
    x = torch.randn(12, 3, 8, 8)
    DG, groups = find_groups(model, x[:1])
    groups = [g for g in groups if g.name in ("c1", "expand")]
    curves = sensitivity_curves(model, groups, x, x[:6], ridge=0.1, fractions=(0.25, 0.5, 0.75))
    with torch.no_grad():
        dense = F.log_softmax(model(x[:6]).double(), 1)
    for group in groups:
        points = curves[group.name]
        assert points[-1] == (group.num_units, 0.0) and len(points) > 2
        for units, kl in points[:-1]:
            copy_ = copy.deepcopy(model)
            DGc, gs = find_groups(copy_, x[:1])
            g = next(h for h in gs if h.name == group.name)
            counts, weights, _, _, biases = reconstruct_group(copy_, g, units, x, None, ridge=0.1)
            fold_and_remove(DGc, copy_, g, counts, reader_weights=weights, reader_biases=biases)
            with torch.no_grad():
                cut = F.log_softmax(copy_(x[:6]).double(), 1)
            expected = float((dense.exp() * (dense - cut)).sum(1).mean())
            assert kl == pytest.approx(expected, rel=1e-3, abs=1e-7)
            assert expected > 0


def test_sensitivity_interpolation_is_linear_between_points_and_steeper_below_them():
    from types import SimpleNamespace

    from greedyprune.channels.sensitivity import per_channel_sensitivity

    group = SimpleNamespace(channels=10, num_units=10)
    curve = per_channel_sensitivity(group, [(2, 0.8), (6, 0.4), (10, 0.0)])
    assert len(curve) == 10
    assert curve[1] == pytest.approx(0.8) and curve[5] == pytest.approx(0.4) and curve[9] == 0.0
    assert curve[3] == pytest.approx(0.6)  # k = 4: halfway between 0.8 and 0.4
    assert curve[0] == pytest.approx(0.8 + 4 * 0.1 + 1e-6)  # below the narrowest point: 4x the first slope
    # a noisy curve (wider looks worse) is made non-increasing
    noisy = per_channel_sensitivity(group, [(2, 0.5), (6, 0.7), (10, 0.0)])
    assert all(a >= b for a, b in zip(noisy, noisy[1:]))


def _bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 4)).eval()
    return net


def test_recalibrate_if_closer_keeps_the_dense_statistics_when_they_are_right():
    from greedyprune.channels.bn import recalibrate_bn
    from greedyprune.channels.objectives import recalibrate_if_closer
    from greedyprune.channels.sensitivity import log_probs

    net = _bn_net()
    x = torch.randn(64, 3, 8, 8) * 2 + 1
    recalibrate_bn(net, x, 64)  # the statistics the data has: the "dense" network
    dense = log_probs(net, x[:32])
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_if_closer(net, x[:32], dense, 8) is False  # re-estimated on 32 examples: no closer
    assert all(torch.equal(stats[k], v) for k, v in net.state_dict().items())


def test_recalibrate_if_closer_keeps_re_estimated_statistics_when_they_help():
    from greedyprune.channels.bn import recalibrate_bn
    from greedyprune.channels.objectives import recalibrate_if_closer
    from greedyprune.channels.sensitivity import log_probs

    net = _bn_net()
    x = torch.randn(64, 3, 8, 8) * 2 + 1
    recalibrate_bn(net, x, 64)
    dense = log_probs(net, x)
    stale = copy.deepcopy(net)
    stale[1].running_mean += 3.0  # statistics that no longer describe what the layer sees
    stale[1].running_var *= 9.0
    expected = copy.deepcopy(stale)
    recalibrate_bn(expected, x, 16)
    assert recalibrate_if_closer(stale, x, dense, 16) is True
    assert torch.allclose(stale[1].running_mean, expected[1].running_mean)
    assert torch.allclose(stale[1].running_var, expected[1].running_var)
    assert not stale.training


def test_probe_size_spends_the_sensitivity_budget_within_its_bounds():
    from greedyprune.channels.sensitivity import SENSITIVITY_FRACTIONS, SENSITIVITY_MACS, probe_size

    forwards = 24 * len(SENSITIVITY_FRACTIONS)
    assert probe_size(385e6, 24, 80) == int(SENSITIVITY_MACS // (385e6 * forwards))  # EfficientNet-Lite0: 27
    assert probe_size(4e9, 50, 1000) == 8  # a large network: the floor
    assert probe_size(1e5, 10, 10_000) == 256  # a tiny one: the cap
    assert probe_size(1e5, 10, 40) == 40  # never more than the calibration examples


def test_held_out_sensitivity_refits_on_the_first_half_and_compares_on_the_second():
    """Independent computation: explicit hidden activations, the ridge normal equations on the first half's
    examples only (lam = ridge * mean diag A_KK * |K| / T), the KL measured on the second half."""
    from greedyprune.channels.reconstruct import accumulate
    from greedyprune.channels.sensitivity import sensitivity_curves

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    x = torch.randn(48, 10)  # three batches of 16: the first half is batches 0-1, the second batch 2
    DG, groups = find_groups(model, x[:1], skip=[])
    group = next(g for g in groups if g.name == "0")
    ridge = 0.1
    curves = sensitivity_curves(model, [group], x, x[:10], ridge=ridge, fractions=(0.25, 0.5), compensate="none")
    subs = sub_readers(model, group)
    order = select_units([reader_problem(subs[0], accumulate(model, subs, x, None)[0], intercept=False)], 6).order
    with torch.no_grad():
        h = torch.relu(model[0](x)).double()  # (48, 12): the reader's inputs
        W = model[2].weight.double()
        dense = F.log_softmax(model(x[32:42]).double(), 1)
    first = h[:32]
    for units, kl in curves[group.name][:-1]:
        keep = order[:units].sort().values
        A = first[:, keep].T @ first[:, keep]
        lam = ridge * float(torch.diagonal(A).mean()) * len(keep) / first.shape[0]
        rhs = first[:, keep].T @ (first @ W.T) + lam * W[:, keep].T
        V = torch.linalg.solve(A + lam * torch.eye(len(keep), dtype=torch.float64), rhs).T
        out = h[32:42, keep] @ V.T + model[2].bias.detach().double()
        expected = float((dense.exp() * (dense - F.log_softmax(out, 1))).sum(1).mean())
        assert kl == pytest.approx(expected, rel=1e-6, abs=1e-9)
    in_sample = sensitivity_curves(model, [group], x, x[:10], ridge=ridge, fractions=(0.25, 0.5), held_out=False,
                                   compensate="none")
    assert in_sample[group.name] != curves[group.name]


def test_reader_problem_weights_each_output_by_its_inverse_variance_with_a_floor():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(11)
    P = torch.randn(4, 50, generator=g, dtype=torch.float64)
    Y = torch.randn(3, 4, generator=g, dtype=torch.float64) @ P + torch.tensor([[2.0], [-1.0], [0.5]])
    Y[2] = 0.5 + 1e-4 * Y[2]  # an almost constant output: its weight stops at the floor
    acc = {"gram": P @ P.T, "cross": P @ Y.T, "sq": (Y * Y).sum(1), "total": Y.sum(1), "tokens": 50}
    sub = SimpleNamespace(unit_columns=torch.arange(4).reshape(4, 1), fixed=torch.empty(0, dtype=torch.long))
    problem = reader_problem(sub, acc, intercept=False)
    var = [float(((y - y.mean()) ** 2).mean()) for y in Y]  # population variance over the positions, by hand
    floor = 1e-3 * sum(var) / 3
    want = torch.tensor([1.0 / (50 * max(v, floor)) for v in var], dtype=torch.float64)
    assert var[2] < floor
    torch.testing.assert_close(problem.out_weight, want, rtol=1e-6, atol=0.0)
    assert problem.tokens == 50 and torch.equal(problem.gram, acc["gram"])
    # with a re-solved bias (the default): the same weights, the sums about the means
    centred = reader_problem(sub, {**acc, "ptotal": P.sum(1)})
    Pc, Yc = P - P.mean(1, keepdim=True), Y - Y.mean(1, keepdim=True)
    torch.testing.assert_close(centred.out_weight, want, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(centred.gram, Pc @ Pc.T)
    torch.testing.assert_close(centred.cross, Pc @ Yc.T)
    torch.testing.assert_close(centred.target_sq, (Yc * Yc).sum(1))


def test_compensation_biases_survive_save_and_load(tmp_path):
    """The local objective gives bias-free convolutions a bias (the compensated mean); a saved pruned network
    loads back (the biases re-created on the rebuilt dense architecture) and computes the same outputs."""
    from greedyprune.channels import load_pruned, save_pruned
    from greedyprune.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet8", in_channels=1, width=8, seed=0).eval()
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    X = torch.randn(48, 1, 28, 28)
    y = torch.randint(0, 10, (48,))
    result = prune_model(model, (X, y), keep_ratio=0.5, check=False)
    with_bias = [n for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert with_bias  # compensation added biases
    path = tmp_path / "pruned.pt"
    save_pruned(path, result, name="resnet8", model_kwargs={"in_channels": 1, "width": 8})
    for kwargs in ({}, {"model": get_model("resnet8", in_channels=1, width=8)}):
        loaded, _ = load_pruned(path, **kwargs)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(X[:8]), result.model.eval()(X[:8]))


def test_variance_rescale_never_shrinks_a_fit():
    """A refit held at its prior (a huge ridge) whose output varies three times as much as the target: the
    rescale leaves it as it is (it only scales fits up, towards the target's variance)."""
    from greedyprune.channels.reconstruct import SubReader, refit_kept

    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    true = torch.randn(2, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(3.0 * true)
    P = torch.randn(4, 200, generator=g, dtype=torch.float64) + 0.5
    Y = true @ P
    acc = {"gram": P @ P.T, "cross": P @ Y.T, "sq": (Y * Y).sum(1), "total": Y.sum(1), "ptotal": P.sum(1),
           "tokens": 200, "base": None}
    sub = SubReader("0", model[0], slice(None), slice(None), torch.arange(4).reshape(4, 1),
                    torch.empty(0, dtype=torch.long))
    problem = reader_problem(sub, acc)
    weights, _, biases = refit_kept(model, [sub], [acc], [problem], torch.ones(4, dtype=torch.bool), 1e9, False)
    torch.testing.assert_close(weights["0"].double(), 3.0 * true, rtol=1e-4, atol=1e-6)
    # the bias still re-solved for that fit: the outputs' means are the target's
    torch.testing.assert_close(weights["0"].double() @ P.mean(1) + biases["0"].double(), Y.mean(1), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(6, 5, 3, padding=1),
    lambda: nn.Conv2d(6, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    lambda: nn.Conv2d(6, 5, 4, padding="same"),        # even kernel: torch pads one more on the right
    lambda: nn.Conv2d(6, 5, 3, padding="valid", stride=2),
    lambda: nn.Conv2d(6, 5, 3, padding=2, padding_mode="reflect"),
    lambda: nn.Conv2d(6, 5, 3, padding=1, padding_mode="circular", stride=2),
    lambda: _Padded(6, 5, 2, stride=2),
    lambda: nn.Conv2d(6, 6, 3, padding=1, groups=3),
    lambda: nn.Conv2d(6, 5, 1, stride=2),
], ids=["plain", "strided-dilated", "same-even", "valid", "reflect", "circular", "padding-child", "grouped",
        "pointwise-strided"])
def test_patches_reproduce_the_conv_and_sampled_patches_are_its_columns(make):
    """A reader's patches times its 2-d weight are its own output (bias removed), whatever its padding;
    the positions gathered by ``keep`` are exactly those columns of the full patches."""
    from greedyprune.channels.reconstruct import outputs2d, patches, positions

    torch.manual_seed(0)
    conv = make().double()
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64)
    y = outputs2d(conv, conv(x))
    groups = conv.groups
    per_in, per_out = 6 // groups, conv.out_channels // groups
    full = []
    for g in range(groups):
        w = conv.weight[g * per_out:(g + 1) * per_out]
        p = patches(conv, x, slice(g * per_in, (g + 1) * per_in))
        torch.testing.assert_close(w.reshape(w.shape[0], -1) @ p, y[g * per_out:(g + 1) * per_out])
        full.append(p)
    assert positions(conv, x) == y.shape[1] == full[0].shape[1]
    keep = torch.randperm(y.shape[1], generator=torch.Generator().manual_seed(1))[:17].sort().values
    for g in range(groups):
        sampled = patches(conv, x, slice(g * per_in, (g + 1) * per_in), keep)
        assert torch.equal(sampled, full[g][:, keep])
    lin = nn.Linear(6, 4).double()
    z = torch.randn(2, 5, 6, dtype=torch.float64)
    assert positions(lin, z) == 10
    assert torch.equal(patches(lin, z, keep=keep[keep < 10]), patches(lin, z)[:, keep[keep < 10]])


def test_a_reader_too_wide_for_its_statistics_is_refused_before_any_work(monkeypatch):
    """A reader whose Gram sums would not fit (VGG-16's classifier reads 25,088 columns) is refused by the
    up-front check, naming the reader, the size and the way out; unsupported="skip" leaves its group whole."""
    from greedyprune.channels import reconstruct
    from greedyprune.channels.groups import UnsupportedLayerError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()
    X, y = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))
    # the Linear reads 384 columns: 3 * 8 * 384^2 bytes = 3.4 MiB; the conv reads 72 columns
    monkeypatch.setattr(reconstruct, "MAX_GRAM_BYTES", 3 * 8 * 300 ** 2)
    calls = []
    monkeypatch.setattr(reconstruct, "accumulate", lambda *a, **k: calls.append(1) or pytest.fail("computed"))
    with pytest.raises(UnsupportedLayerError, match=r"reader '7' of group '4' reads 384 columns .*skip=\['4'\]"):
        prune_model(copy.deepcopy(model), (X, y), keep_ratio=0.5, objective="local", eval_examples=8)
    monkeypatch.undo()
    monkeypatch.setattr(reconstruct, "MAX_GRAM_BYTES", 3 * 8 * 300 ** 2)
    with pytest.warns(UserWarning, match="left whole.*reads 384 columns"):
        result = prune_model(copy.deepcopy(model), (X, y), keep_ratio=0.5, objective="local", unsupported="skip",
                             eval_examples=8)
    assert result.model[4].out_channels == 6 and len(result.kept["2"]) == 4 == result.model[2].out_channels
    assert not calls
