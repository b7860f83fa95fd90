"""The selection engine against an exact reference at realistic sizes.

The bounded search of the logistic and cross-entropy scorers decides anything only when more candidates
can win than its first batch of 32 holds, and its anchor is refreshed only after ``max(32, N // 16)``
exact evaluations in a step: so these problems have N in the hundreds to thousands and enough steps for
several refreshes (counted, so a test that stops exercising them fails). Every engine choice is replayed
against the log-space float64 reference of ``reference.py`` (near-ties between distinct rows may go
either way; everything else must be the reference's argmin). The reference itself is checked against
closed forms first.
"""
import math

import numpy as np
import pytest
import torch
from reference import brute_force_selection, candidate_losses, check_selection, reference_loss

from greedyprune import greedy_forward_selection, loss_value
from greedyprune.selection import SelectionResult, scorers

torch.set_num_threads(1)
F64 = torch.float64


def _softplus_series(t: float) -> float:
    """log(1 + e^t) from its closed forms: t + log(1 + e^-t) for t > 0, and the series of log(1 + x) in
    x = e^t (exact to double precision for t <= -30, where x^2 / 2 < 1e-26 x)."""
    if t > 30:
        return t + math.exp(-t)
    if t < -30:
        x = math.exp(t)
        return x - x * x / 2
    return math.log(1 + math.exp(t))


# ------------------------------------------------------------------------------------------ the reference
def test_reference_logistic_loss_matches_closed_forms_for_saturated_logits():
    z = [100.0, -100.0, 36.5, -36.5, 0.0, 1e-3, 700.0, -700.0, 60.0]
    for label in (0.0, 1.0):
        for value in z:
            got = reference_loss(torch.tensor([value], dtype=F64), torch.tensor([label], dtype=F64), "logistic")
            t = value if label == 0 else -value  # the loss is softplus(z) for label 0, softplus(-z) for label 1
            assert got == pytest.approx(_softplus_series(t), rel=1e-14, abs=0), (label, value)
    # the mean of confident examples (the textbook form rounds log(1 + exp(-100)) to 0); the library's
    # reported loss is exact there too
    u = torch.tensor([100.0, 101.0, 103.0], dtype=F64)
    expected = (math.exp(-100) + math.exp(-101) + math.exp(-103)) / 3
    for value in (reference_loss, loss_value):
        assert value(u, torch.ones(3, dtype=F64), "logistic") == pytest.approx(expected, rel=1e-14)
        assert value(-u, torch.zeros(3, dtype=F64), "logistic") == pytest.approx(expected, rel=1e-14)


def test_reference_cross_entropy_matches_closed_forms_for_saturated_logits():
    cases = [  # (logits, label, closed form of log(sum_c exp(z_c - z_y)))
        ([100.0, 0.0, 0.0], 0, 2 * math.exp(-100)),
        ([0.0, 100.0, 0.0], 0, 100 + 2 * math.exp(-100)),
        ([100.0, 100.0, 0.0], 0, math.log(2) + math.exp(-100) / 2),
        ([-100.0, 0.0, 0.0], 0, 100 + math.log(2) + math.exp(-100) / 2),
        ([1.0, 2.0, 3.0], 2, math.log(1 + math.exp(-1) + math.exp(-2))),
        ([300.0, 0.0, 260.0], 0, math.exp(-300) + math.exp(-40)),
        ([5.0], 0, 0.0),  # one class: nothing to lose
    ]
    for logits, label, expected in cases:
        got = reference_loss(torch.tensor([logits], dtype=F64), torch.tensor([label]), "cross_entropy")
        assert got == pytest.approx(expected, rel=1e-14, abs=0), (logits, label)
    # and the library's reported loss is exact there too (it used to return 0 for the first case)
    for logits, label, expected in cases:
        got = loss_value(torch.tensor([logits], dtype=F64), torch.tensor([label]), "cross_entropy")
        assert got == pytest.approx(expected, rel=1e-14, abs=0), (logits, label)


def test_reference_equals_the_textbook_losses_on_moderate_logits():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(40, generator=g, dtype=F64) * 3, torch.randint(0, 2, (40,), generator=g).double()
    textbook = float(torch.mean(torch.log(1 + torch.exp(z)) - y * z))
    assert reference_loss(z, y, "logistic") == pytest.approx(textbook, rel=1e-13)
    logits, labels = torch.randn(40, 5, generator=g, dtype=F64) * 3, torch.randint(0, 5, (40,), generator=g)
    textbook = float(torch.mean(torch.log(torch.exp(logits).sum(1)) - logits[torch.arange(40), labels]))
    assert reference_loss(logits, labels, "cross_entropy") == pytest.approx(textbook, rel=1e-13)
    u, t = torch.randn(40, 3, generator=g, dtype=F64), torch.randn(40, 3, generator=g, dtype=F64)
    assert reference_loss(u, t, "squared") == pytest.approx(float(((u - t) ** 2).sum()) / 40, rel=1e-14)


def test_reference_gives_exact_duplicates_equal_losses():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(6, 33, 4, generator=g, dtype=F64)
    rows[4] = rows[1]
    rows[5] = rows[1]
    values = candidate_losses(rows, torch.randint(0, 4, (33,), generator=g), "cross_entropy")
    assert values[1] == values[4] == values[5] and len(set(values.tolist())) == 4


# ------------------------------------------------------------------------------------------ problems
def problem(seed, loss, n, m, c=5, scale=None):
    g = torch.Generator().manual_seed(seed)
    if loss == "cross_entropy":
        return torch.randn(n, m, c, generator=g, dtype=F64) * (scale or 2), torch.randint(0, c, (m,), generator=g)
    if loss == "logistic":
        return torch.randn(n, m, generator=g, dtype=F64) * (scale or 3), torch.randint(0, 2, (m,), generator=g).double()
    return torch.randn(n, m, generator=g, dtype=F64), torch.randn(m, generator=g, dtype=F64)


@pytest.fixture
def anchors(monkeypatch):
    """Counts the bounded search's anchor (re)linearisations."""
    calls = []
    real = scorers.LogisticScorer.set_anchor

    def counting(self, k):
        calls.append(k)
        return real(self, k)

    monkeypatch.setattr(scorers.LogisticScorer, "set_anchor", counting)
    return calls


def check_engine(phi, y, k, loss, replacement=True, candidates=None, seed=0):
    """Run the engine and replay it against the reference; the reported losses must be the reference's."""
    result = greedy_forward_selection(phi, y, k, loss=loss, replacement=replacement, candidates=candidates, seed=seed)
    info = check_selection(result.indices, phi, y, loss, replacement, candidates, seed)
    picked = phi[result.indices].cumsum(dim=0) / torch.arange(1, k + 1, dtype=F64).view(-1, *[1] * (phi.dim() - 1))
    expected = torch.tensor([reference_loss(picked[t], y, loss) for t in range(k)], dtype=F64)
    torch.testing.assert_close(result.losses, expected, rtol=1e-9, atol=0)
    assert result.counts.tolist() == torch.bincount(result.indices, minlength=phi.shape[0]).tolist()
    return result, info


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
@pytest.mark.parametrize("replacement", [True, False])
def test_bounded_search_with_refreshes_matches_the_reference(loss, replacement, anchors):
    for seed, (n, m, k) in enumerate([(600, 30, 150), (2000, 12, 60)]):
        anchors.clear()
        phi, y = problem(seed, loss, n, m)
        _, info = check_engine(phi, y, k, loss, replacement)
        assert len(anchors) >= 4, f"only {len(anchors)} anchors: the refresh path is not exercised"
        assert info["near_ties"] == 0  # random problems: no near-ties


@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
def test_candidate_subsets_at_realistic_sizes_match_the_reference(loss):
    phi, y = problem(3, loss, 700, 16)
    for replacement, candidates, seed in ((True, 64, 1), (False, 300, 2), (True, 500, 3)):
        check_engine(phi, y, 80, loss, replacement, candidates, seed)


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
def test_saturated_logits_match_the_reference(loss, anchors):
    """|z| around 100: per-example losses ~exp(-100). The choice is decided by margins the textbook losses
    round away; the engine (and the reference, in log space) must still see them."""
    g = torch.Generator().manual_seed(5)
    n, m = 600, 24
    if loss == "logistic":
        y = torch.randint(0, 2, (m,), generator=g).double()
        phi = (2 * y - 1) * (100 + 4 * torch.randn(n, m, generator=g, dtype=F64))
        phi[:40, :3] *= -1  # some neurons confidently wrong on a few examples
    else:
        y = torch.randint(0, 4, (m,), generator=g)
        phi = torch.randn(n, m, 4, generator=g, dtype=F64)
        phi += torch.nn.functional.one_hot(y, 4) * (100 + 4 * torch.randn(n, m, 1, generator=g, dtype=F64))
    result, info = check_engine(phi, y, 60, loss, replacement=False)
    assert float(result.losses[0]) < 1e-30  # the regime where only a log-space loss is exact
    assert len(set(result.indices.tolist())) == 60 and len(anchors) >= 3
    # the reference's own selection agrees (it is not fooled into ties by rounding either)
    indices, _ = brute_force_selection(phi, y, 60, loss=loss, replacement=False)
    assert result.indices.tolist() == indices


@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
def test_near_ties_duplicates_and_dead_neurons(loss, anchors):
    """Rows repeated exactly (copied channels), zero rows (dead ReLU units, which tie exactly), and rows
    within 1e-12 of each other (near-ties that either order may win)."""
    g = torch.Generator().manual_seed(7)
    base, y = problem(7, loss, 200, 20)
    twins = base[:150] * (1 + 1e-12 * torch.randn(base[:150].shape, generator=g, dtype=F64))
    phi = torch.cat([base, torch.zeros_like(base[:40]), base[50:150], twins, torch.zeros_like(base[:10])])
    phi = phi[torch.randperm(phi.shape[0], generator=g)]
    for replacement, candidates in ((True, None), (False, None), (True, 90)):
        result, info = check_engine(phi, y, 120, loss, replacement, candidates, seed=4)
        # an exact copy never wins over its lower-index twin: the first copy of any chosen row is chosen
        first_copy = {}
        for i in range(phi.shape[0]):
            key = phi[i].numpy().tobytes()
            first_copy.setdefault(key, i)
        if candidates is None and replacement:
            assert all(first_copy[phi[i].numpy().tobytes()] == i for i in result.indices.tolist())


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
def test_bounded_search_is_exact_for_any_first_batch(loss):
    """``best`` against the argmin of the scorer's own exact scores of every candidate, with first batches
    from 1 (Algorithm 2 shares 32 out between the ranks) up: every later batch must be evaluated whole."""
    phi, y = problem(13, loss, 300, 12)
    cls = scorers.LogisticScorer if loss == "logistic" else scorers.CrossEntropyScorer
    for first_batch in (1, 2, 3, 7, 32):
        scorer = cls(phi, y, chunk_elements=1 << 16)
        available = torch.ones(300, dtype=torch.bool)
        for k in range(40):
            replacement = first_batch % 2 == 1
            score, i = scorer.best(k, None if replacement else available, first_batch=first_batch)
            exact = scorer.scores(None, k)
            if not replacement:
                exact = exact.masked_fill(~available, math.inf)
            assert i == int(torch.argmin(exact)) and score == pytest.approx(float(exact[i]), rel=1e-13), \
                (first_batch, k)
            available[i] = False
            scorer.add(scorer.phi[i], i)


def test_wide_logits_match_the_reference():
    """Averaged logits wrong by several units (softplus far from both of its asymptotes' switch-over)."""
    phi, y = problem(14, "logistic", 600, 30, scale=12)
    check_engine(phi, y, 60, "logistic", replacement=False)


@pytest.mark.parametrize("mean", [0.5, 2.0, 4.5, 10.0, 25.0])
def test_equal_mean_logits_prefer_the_less_spread_neuron(mean):
    """Softplus is strictly convex: of two neurons whose logits have the same mean on wrongly predicted
    examples, the one with the less spread logits has the lower loss - by ``exp(-mean)``-sized amounts that a
    softplus cut over to its asymptote too early (or a textbook form) loses. The spread one comes first, so
    a tie would pick it."""
    spread = torch.tensor([[-(mean - 1), -(mean + 1)] * 3, [-mean] * 6], dtype=F64)
    ones = torch.ones(6, dtype=F64)
    expected = [_softplus_series(mean - 1) + _softplus_series(mean + 1), 2 * _softplus_series(mean)]
    assert expected[1] < expected[0]
    assert greedy_forward_selection(spread, ones, 1, loss="logistic").indices.tolist() == [1]
    assert brute_force_selection(spread, ones, 1, loss="logistic")[0] == [1]


def test_the_first_batch_is_not_the_whole_search(anchors):
    """A regression guard for the bound-and-prune loop: steps evaluate more than the first batch."""
    phi, y = problem(11, "logistic", 600, 30)
    scorer = scorers.LogisticScorer(phi, y, chunk_elements=1 << 16)
    beyond = 0
    for k in range(40):
        before = scorer.evaluated
        _, i = scorer.best(k, None)
        beyond += scorer.evaluated - before > scorers.FIRST_BATCH
        scorer.add(scorer.phi[i], i)
    assert beyond >= 5


# ------------------------------------------------------------------------------------------ the Gram form
def test_gram_form_equals_the_explicit_form_and_brute_force():
    g = torch.Generator().manual_seed(2)
    for n, m, c in ((300, 20, 1), (120, 15, 3)):
        phi = torch.randn(n, m, c, generator=g, dtype=F64).squeeze(-1)
        y = torch.randn(m, c, generator=g, dtype=F64).squeeze(-1)
        flat, ty = phi.reshape(n, -1), y.reshape(-1)
        gram, cross = flat @ flat.T, flat @ ty
        for replacement, candidates, k in ((True, None, 2 * n), (False, None, n // 2), (True, 40, 150),
                                           (False, 7, 60)):
            explicit = greedy_forward_selection(phi, y, k, replacement=replacement, candidates=candidates, seed=3)
            implicit = greedy_forward_selection(None, None, k, replacement=replacement, candidates=candidates, seed=3,
                                                gram=gram, cross=cross, target_norm=float(ty @ ty), examples=m)
            indices, losses = brute_force_selection(phi, y, k, replacement=replacement, candidates=candidates,
                                                    seed=3)
            label = (n, m, c, replacement, candidates)
            assert implicit.indices.tolist() == explicit.indices.tolist() == indices, label
            assert implicit.counts.tolist() == explicit.counts.tolist(), label
            torch.testing.assert_close(implicit.losses, torch.tensor(losses, dtype=F64), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(explicit.losses, torch.tensor(losses, dtype=F64), rtol=1e-9, atol=1e-12)
            assert implicit.output is None


# ------------------------------------------------------------------------------------------ gap_rate
def _result(losses):
    losses = torch.as_tensor(losses, dtype=F64)
    k = losses.numel()
    return SelectionResult(indices=torch.zeros(k, dtype=torch.long), counts=torch.tensor([k]), losses=losses,
                           output=None, loss="squared", replacement=True)


def test_gap_rate_recovers_a_synthetic_power_law():
    ks = np.arange(1, 201)
    dense = 0.37
    for rate, prefactor in ((-1.0, 2.0), (-1.7, 0.05), (-0.5, 10.0)):
        fit = _result(dense + prefactor * ks ** rate).gap_rate(dense)
        assert fit["rate"] == pytest.approx(rate, abs=1e-9) and fit["prefactor"] == pytest.approx(prefactor, rel=1e-9)
        assert fit["stderr"] == pytest.approx(0, abs=1e-9) and fit["steps_used"] == 200


def test_gap_rate_leaves_out_negative_gaps_and_early_steps_like_a_direct_fit():
    rng = np.random.default_rng(0)
    ks = np.arange(1, 301)
    gaps = 3.0 * ks ** -1.2 * np.exp(rng.normal(0, 0.2, ks.size))
    gaps[[4, 50, 51, 200]] *= -1  # greedy selection beat the dense net at these steps
    fit = _result(1.0 + gaps).gap_rate(1.0, k_min=10)
    keep = (ks >= 10) & (gaps > 0)
    slope, intercept = np.polyfit(np.log(ks[keep]), np.log(gaps[keep]), 1)
    assert fit["steps_used"] == int(keep.sum()) == 291 - 3
    assert fit["rate"] == pytest.approx(slope, rel=1e-9) and fit["prefactor"] == pytest.approx(math.exp(intercept),
                                                                                                rel=1e-9)
    resid = np.log(gaps[keep]) - (slope * np.log(ks[keep]) + intercept)
    lx = np.log(ks[keep])
    stderr = math.sqrt(resid @ resid / (keep.sum() - 2) / ((lx - lx.mean()) @ (lx - lx.mean())))
    assert fit["stderr"] == pytest.approx(stderr, rel=1e-9)
    assert -1.4 < fit["rate"] < -1.0
    few = _result([1.5, 0.5, 1.2, 0.9]).gap_rate(1.0)  # two positive gaps: no fit
    assert math.isnan(few["rate"]) and few["steps_used"] == 2


def test_the_vectorised_and_the_one_at_a_time_references_agree():
    for loss in ("squared", "logistic", "cross_entropy"):
        phi, y = problem(12, loss, 40, 9)
        phi = torch.cat([phi, phi[:6], torch.zeros_like(phi[:3])])  # with exact duplicates and dead rows
        for replacement, candidates in ((True, None), (False, 11)):
            fast = brute_force_selection(phi, y, 30, loss=loss, replacement=replacement, candidates=candidates, seed=2)
            slow = brute_force_selection(phi, y, 30, loss=loss, replacement=replacement, candidates=candidates, seed=2,
                                         one_at_a_time=True)
            assert fast[0] == slow[0] and fast[1] == pytest.approx(slow[1], rel=1e-12)
