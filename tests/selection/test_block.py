"""One ridge convention for both refits (``selection/block.py``): a CNN channel group's readers and a transformer
block's kept units are re-solved with ``lam = ridge * mean(diag A_KK) * |K| / T`` from sums over the T rows of
the regression - the raw patch sums for the channels, the centred token sums for the transformer (it re-solves its
bias, unpenalised) - each checked here against the closed form ``(P_K P_K' + lam I)^-1 (P_K Y' + lam V0')``; and
the cross-validated ridge against the ridge whose explicit refit on one half of the calibration set has the lowest
explicit squared error on the other half, summed over both directions (ties: the larger)."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedyprune.channels import PruneOptions, find_groups
from greedyprune.channels.reconstruct import reconstruct_group
from greedyprune.channels.refit import refit_readers
from greedyprune.selection.block import DEFAULT_RIDGE, RIDGE_GRID, cross_validated_ridge, ridge_lambda, ridge_refit
from greedyprune.transformers import criteria
from greedyprune.transformers.decoder_prune import prune_decoder
from greedyprune.transformers.options import TransformerPruneOptions
from greedyprune.transformers.stats import input_stats

torch.set_num_threads(1)
F64 = torch.float64


def closed_form(P_K, Y, prior, ridge):
    """The documented refit, written out: rows of P_K are the kept columns over T rows (positions / tokens)."""
    k, T = P_K.shape
    A = P_K @ P_K.T
    lam = ridge * float(torch.diagonal(A).mean()) * k / T
    assert lam == ridge_lambda(A, T, ridge)
    return torch.linalg.solve(A + lam * torch.eye(k, dtype=F64), P_K @ Y.T + lam * prior.T).T


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


def _channel_case():
    torch.manual_seed(0)
    model = _Plain().eval()
    x = torch.randn(6, 3, 8, 8)
    _, groups = find_groups(model, x[:1], skip=["fc"])
    group = next(g for g in groups if g.name == "a")
    h = F.relu(model.bn(model.a(x))).detach()
    P = F.unfold(h, 3, padding=1).transpose(0, 1).reshape(54, -1).double()  # (C_in * 9, positions): raw
    W = model.b.weight.detach().reshape(5, -1).double()
    return model, group, x, P, W


def test_the_channel_refits_are_the_closed_form_on_raw_patch_sums():
    model, group, x, P, W = _channel_case()
    # the local objective (reconstruct_group, own-output targets): prior = the kept columns' own weights;
    # compensate="none": the raw sums, the bias kept
    counts, weights, _, _, biases = reconstruct_group(model, group, 3, x, None, ridge=0.7, compensate="none")
    kept = torch.nonzero(counts).flatten()
    K = (kept.reshape(-1, 1) * 9 + torch.arange(9)).reshape(-1)
    got = weights["b"].reshape(5, -1).double()
    torch.testing.assert_close(got[:, K], closed_form(P[K], W @ P, W[:, K], 0.7), rtol=1e-4, atol=1e-6)
    assert not got[:, [c for c in range(54) if c not in K.tolist()]].any() and not biases
    # compensate="mean": the bias re-solved too, i.e. the same closed form on the centred sums (as transformers)
    bias = model.b.bias.detach().double().clone()
    counts, weights, _, _, biases = reconstruct_group(model, group, 3, x, None, ridge=0.7, compensate="mean")
    kept = torch.nonzero(counts).flatten()
    K = (kept.reshape(-1, 1) * 9 + torch.arange(9)).reshape(-1)
    Y = W @ P
    pc, yc = P[K] - P[K].mean(1, keepdim=True), Y - Y.mean(1, keepdim=True)
    want = closed_form(pc, yc, W[:, K], 0.7)
    torch.testing.assert_close(weights["b"].reshape(5, -1).double()[:, K], want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(biases["b"].double(), bias + Y.mean(1) - want @ P[K].mean(1), rtol=1e-4, atol=1e-5)
    # the network objective's refit (refit_readers): the dense reader's output, prior = the folded weights
    scale = torch.tensor([1.5, 0.0, 2.0, 0.0, 0.5, 1.0])
    out = refit_readers(model, group, (scale > 0).long(), scale, x, ridge=0.7)
    K = torch.tensor([c for c in range(54) if scale[c // 9] > 0])
    folded = W * scale.double().repeat_interleave(9)
    torch.testing.assert_close(out["b"].reshape(5, -1).double()[:, K], closed_form(P[K], W @ P, folded[:, K], 0.7),
                               rtol=1e-5, atol=1e-6)


def test_the_transformer_refit_is_the_closed_form_on_centred_token_sums():
    g = torch.Generator().manual_seed(2)
    T, D, d, group = 50, 18, 7, 3
    x = torch.randn(T, D, generator=g, dtype=F64) * 0.5 + torch.linspace(-2, 3, D, dtype=F64)  # far from centred
    w, b = torch.randn(d, D, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    stats = input_stats([x.unsqueeze(0)], [torch.ones(1, T, dtype=torch.bool)], full=True)
    units = torch.tensor([0, 2, 5])  # heads of 3 channels each
    K = criteria.channels_of(units, group)
    v, c = criteria.refit_lstsq(w, b, stats, K, ridge=0.7)
    y = x @ w.T + b
    xc, yc = (x[:, K] - x[:, K].mean(0)).T, (y - y.mean(0)).T  # eliminating the free bias centres the rows
    want = closed_form(xc, yc, w[:, K], 0.7)
    torch.testing.assert_close(v, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c, y.mean(0) - want @ x[:, K].mean(0), rtol=1e-10, atol=1e-12)
    # the documented reading of that lam: ridge * |K| * the kept channels' mean per-token variance
    lam = ridge_lambda(xc @ xc.T, T, 0.7)
    assert abs(lam - 0.7 * len(K) * float(x[:, K].var(0, unbiased=False).mean())) < 1e-12 * lam


def test_one_default_ridge_for_both_families():
    assert DEFAULT_RIDGE == 0.5 and DEFAULT_RIDGE in RIDGE_GRID
    assert TransformerPruneOptions().ridge == DEFAULT_RIDGE
    assert "ridge" not in inspect.signature(prune_decoder).parameters  # it reads TransformerPruneOptions' ridge
    assert inspect.signature(refit_readers).parameters["ridge"].default == DEFAULT_RIDGE
    assert PruneOptions().refit_ridge is None  # CNNs: cross-validated from RIDGE_GRID, else DEFAULT_RIDGE


# ------------------------------------------------------------------- the penalty and its cross-validated choice
GRID = (0.0, 0.05, 0.3, 1.0, 3.0, 10.0, 30.0)


def test_ridge_lambda_is_ridge_times_the_mean_kept_diagonal_times_columns_per_position():
    a = torch.diag(torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)) + 0.5
    assert ridge_lambda(a, 40, 0.7) == pytest.approx(0.7 * (1.5 + 2.5 + 6.5) / 3 * 3 / 40, rel=1e-12)
    assert ridge_lambda(a, 40, 0.0) == 0.0
    assert ridge_lambda(torch.zeros(0, 0, dtype=torch.float64), 40, 0.7) == 0.0


def _fold(P, Y):
    return P @ P.T, P @ Y.T, (Y * Y).sum(1), P.shape[1]


def _held_out_error(P_fit, Y_fit, P_out, Y_out, keep, prior, ridge, weight):
    """Refit on one half by the explicit ridge normal equations, then the weighted squared error on the other."""
    pk = P_fit[keep]
    lam = ridge * float(torch.diagonal(pk @ pk.T).mean()) * len(keep) / P_fit.shape[1]
    v = torch.linalg.solve(pk @ pk.T + lam * torch.eye(len(keep), dtype=torch.float64), pk @ Y_fit.T + lam * prior.T).T
    return float((((v @ P_out[keep] - Y_out) ** 2).sum(1) * weight).sum())


def _case(seed):
    """Two halves of a calibration set (few positions per column, so the prior matters and the best ridge lies
    inside the grid), the kept columns, a prior near the truth and output weights."""
    g = torch.Generator().manual_seed(seed)
    C, d, T = 9, 3, 14
    keep = torch.tensor([0, 1, 3, 4, 6, 8])
    true = torch.randn(d, C, generator=g, dtype=torch.float64)
    prior = true[:, keep] + 0.6 * torch.randn(d, len(keep), generator=g, dtype=torch.float64)
    halves = []
    for _ in range(2):
        P = torch.randn(C, T, generator=g, dtype=torch.float64)
        halves.append((P, true @ P + 1.5 * torch.randn(d, T, generator=g, dtype=torch.float64)))
    return halves, keep, prior, torch.rand(d, generator=g, dtype=torch.float64) + 0.2


def test_cross_validated_ridge_is_the_lowest_held_out_error_of_the_explicit_refits():
    picks = set()
    for seed in range(6):
        halves, keep, prior, weight = _case(seed)
        errors = [sum(_held_out_error(*halves[i], *halves[1 - i], keep, prior, r, weight) for i in (0, 1))
                  for r in GRID]
        best = min(errors)
        want = max(r for r, e in zip(GRID, errors) if e <= best + 1e-9 * abs(best))
        got = cross_validated_ridge([_fold(*h) for h in halves], keep, prior, out_weight=weight, grid=GRID)
        assert got == want, (seed, errors)
        picks.add(got)
    assert len(picks - {GRID[0], GRID[-1]}) >= 2, picks  # the cases do not all choose an end of the grid


def _wide_case(seed):
    """Fewer positions per half (12) than kept columns (48): the Grams are low rank, the low-rank path runs."""
    g = torch.Generator().manual_seed(seed)
    C, d, T = 70, 4, 12
    keep = torch.randperm(C, generator=g)[:48].sort().values
    true = torch.randn(d, C, generator=g, dtype=torch.float64) / 4
    prior = true[:, keep] + 0.05 * (seed + 1) * torch.randn(d, len(keep), generator=g, dtype=torch.float64)
    halves = []
    for _ in range(2):
        P = torch.randn(C, T, generator=g, dtype=torch.float64) + 0.3
        halves.append((P, true @ P + 0.5 * torch.randn(d, T, generator=g, dtype=torch.float64)))
    return halves, keep, prior, torch.rand(d, generator=g, dtype=torch.float64) + 0.2


def test_cross_validated_ridge_with_fewer_positions_than_columns_is_the_explicit_refits_choice():
    """The low-rank path (each half's Gram solved in its range) chooses what explicit refits on the halves
    choose, on centred and raw statistics, and its held-out errors are theirs: checked through the grid's
    order of errors, which the choice of every two-value sub-grid reveals."""
    from greedyprune.selection import block

    picks = set()
    for seed in range(6):
        halves, keep, prior, weight = _wide_case(seed)
        if seed % 2:  # centred statistics, as the refit with a free bias uses them
            halves = [(P - P.mean(1, keepdim=True), Y - Y.mean(1, keepdim=True)) for P, Y in halves]
        assert 2 * (halves[0][0].shape[1] + block._RANGE_MARGIN) <= len(keep)  # the low-rank branch
        errors = [sum(_held_out_error(*halves[i], *halves[1 - i], keep, prior, r, weight) for i in (0, 1))
                  for r in GRID]
        best = min(errors)
        want = max(r for r, e in zip(GRID, errors) if e <= best + 1e-9 * abs(best))
        folds = [_fold(*h) for h in halves]
        got = cross_validated_ridge(folds, keep, prior, out_weight=weight, grid=GRID)
        assert got == want, (seed, errors)
        for a in range(len(GRID)):
            for b in range(a + 1, len(GRID)):
                pair = (GRID[a], GRID[b])
                pair_want = GRID[b] if errors[b] <= errors[a] * (1 + 1e-9) else GRID[a]
                assert cross_validated_ridge(folds, keep, prior, out_weight=weight, grid=pair) == pair_want
        picks.add(got)
    assert len(picks) >= 2, picks


def test_equal_held_out_errors_choose_the_largest_ridge():
    g = torch.Generator().manual_seed(9)
    folds = [_fold(torch.randn(4, 10, generator=g, dtype=torch.float64), torch.randn(2, 10, generator=g,
                                                                                    dtype=torch.float64))
             for _ in range(2)]
    prior = torch.randn(2, 4, generator=g, dtype=torch.float64)
    # outputs of weight 0: every ridge predicts them equally well (not at all)
    assert cross_validated_ridge(folds, torch.arange(4), prior, out_weight=torch.zeros(2, dtype=torch.float64),
                                 grid=GRID) == max(GRID)


def test_ridge_refit_with_a_large_ridge_returns_the_prior():
    g = torch.Generator().manual_seed(3)
    P, Y = torch.randn(5, 30, generator=g, dtype=torch.float64), torch.randn(2, 30, generator=g, dtype=torch.float64)
    prior = torch.randn(2, 3, generator=g, dtype=torch.float64)
    keep = torch.tensor([4, 0, 2])
    torch.testing.assert_close(ridge_refit(P @ P.T, P @ Y.T, keep, prior, 30, ridge=1e10), prior, rtol=1e-6,
                               atol=1e-8)
