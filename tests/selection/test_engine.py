"""The selection engine against a brute-force loop, its invariants, Lemma 1, and its input checks."""
import math

import numpy as np
import pytest
import torch

from greedyprune import TrainConfig, TwoLayerNet, greedy_forward_selection, loss_value, neuron_outputs, pretrain
from reference import brute_force_selection
from greedyprune.data import make_synthetic

torch.set_num_threads(1)


def random_problem(seed, loss, n=None, m=None, c=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = n or int(torch.randint(2, 25, (1,), generator=g))
    m = m or int(torch.randint(1, 30, (1,), generator=g))
    c = c or int(torch.randint(2, 5, (1,), generator=g))
    if loss == "cross_entropy":
        return torch.randn(n, m, c, generator=g, dtype=dtype) * 2, torch.randint(0, c, (m,), generator=g)
    if loss == "logistic":
        return torch.randn(n, m, generator=g, dtype=dtype) * 3, torch.randint(0, 2, (m,), generator=g).to(dtype)
    return torch.randn(n, m, generator=g, dtype=dtype), torch.randn(m, generator=g, dtype=dtype)


@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("candidates", [None, 1, 3, 7])
def test_same_indices_as_brute_force(loss, replacement, candidates):
    for seed in range(25):
        phi, y = random_problem(seed, loss)
        n = phi.shape[0]
        k = 2 * n if replacement else n
        result = greedy_forward_selection(phi, y, k, loss=loss, replacement=replacement, candidates=candidates,
                                          seed=seed)
        indices, losses = brute_force_selection(phi, y, k, loss=loss, replacement=replacement,
                                                candidates=candidates, seed=seed)
        assert result.indices.tolist() == indices, f"seed {seed}"
        torch.testing.assert_close(result.losses, torch.tensor(losses, dtype=torch.float64))


def test_squared_with_several_outputs_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(12, 9, 3, generator=g, dtype=torch.float64)
    y = torch.randn(9, 3, generator=g, dtype=torch.float64)
    result = greedy_forward_selection(phi, y, 20, loss="squared")
    indices, _ = brute_force_selection(phi, y, 20, loss="squared")
    assert result.indices.tolist() == indices


@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
def test_ties_go_to_the_lowest_index(loss):
    # integer-valued outputs make every computation exact, so duplicated neurons tie exactly
    g = torch.Generator().manual_seed(0)
    if loss == "cross_entropy":
        base = torch.randint(-3, 4, (4, 6, 3), generator=g).double()
        y = torch.randint(0, 3, (6,), generator=g)
    else:
        base = torch.randint(-3, 4, (4, 6), generator=g).double()
        y = torch.randint(0, 2, (6,), generator=g).double()
    phi = torch.cat([base, base, base])  # neurons i, i+4, i+8 identical
    for replacement in (True, False):
        result = greedy_forward_selection(phi, y, 8, loss=loss, replacement=replacement)
        indices, _ = brute_force_selection(phi, y, 8, loss=loss, replacement=replacement)
        assert result.indices.tolist() == indices
        assert int(result.indices[0]) < 4  # the first copy wins


def test_result_invariants():
    phi, y = random_problem(1, "squared", n=30, m=40)
    result = greedy_forward_selection(phi, y, 50)
    assert result.k == 50 and result.num_neurons == 30
    assert result.counts.tolist() == torch.bincount(result.indices, minlength=30).tolist()
    assert int(result.counts.sum()) == 50
    torch.testing.assert_close(result.output, phi[result.indices].mean(dim=0))
    assert math.isclose(float(result.losses[-1]), loss_value(result.output, y, "squared"), rel_tol=1e-12)
    assert result.selected.tolist() == sorted(set(result.indices.tolist()))
    torch.testing.assert_close(result.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(result.gap(0.5), result.losses - 0.5)
    assert "SelectionResult(k=50" in repr(result)


def test_greedy_step_is_never_worse_than_any_single_neuron():
    # step 1 picks the best single neuron: check against every neuron's own loss
    phi, y = random_problem(2, "logistic", n=40, m=25)
    result = greedy_forward_selection(phi, y, 1, loss="logistic")
    singles = [loss_value(phi[i], y, "logistic") for i in range(40)]
    assert int(result.indices[0]) == int(np.argmin(singles))


def test_without_replacement_is_a_permutation_when_k_equals_n():
    phi, y = random_problem(4, "cross_entropy", n=15, m=10)
    result = greedy_forward_selection(phi, y, 15, loss="cross_entropy", replacement=False)
    assert sorted(result.indices.tolist()) == list(range(15))
    assert result.counts.tolist() == [1] * 15


def test_candidate_subsets_are_seeded():
    phi, y = random_problem(5, "squared", n=200, m=20)
    a = greedy_forward_selection(phi, y, 30, candidates=5, seed=1)
    b = greedy_forward_selection(phi, y, 30, candidates=5, seed=1)
    c = greedy_forward_selection(phi, y, 30, candidates=5, seed=2)
    assert a.indices.tolist() == b.indices.tolist()
    assert a.indices.tolist() != c.indices.tolist()


def test_chunk_size_does_not_change_the_selection():
    for loss in ("logistic", "cross_entropy"):
        phi, y = random_problem(6, loss, n=50, m=30)
        ref = greedy_forward_selection(phi, y, 40, loss=loss)
        for chunk in (1, 31, 10_000):
            assert greedy_forward_selection(phi, y, 40, loss=loss, chunk_elements=chunk).indices.tolist() == \
                ref.indices.tolist()


def test_float32_gives_the_float64_selection_on_a_well_separated_problem():
    phi, y = random_problem(7, "logistic", n=60, m=200)
    a = greedy_forward_selection(phi, y, 20, loss="logistic")
    b = greedy_forward_selection(phi.float(), y.float(), 20, loss="logistic")
    assert a.indices.tolist() == b.indices.tolist()
    assert b.output.dtype == torch.float32


def test_subset_squared_path_matches_brute_force_on_large_n():
    # candidates < N/2 takes the gather-and-multiply path for the squared loss
    phi, y = random_problem(8, "squared", n=300, m=15)
    result = greedy_forward_selection(phi, y, 25, candidates=20, seed=3)
    indices, _ = brute_force_selection(phi, y, 25, candidates=20, seed=3)
    assert result.indices.tolist() == indices


def test_lemma1_gap_shrinks_like_one_over_k():
    """Lemma 1: on a pre-trained net, l(u_K) - l(dense) decays like O(1/K)."""
    torch.manual_seed(0)
    ds = make_synthetic(n=400, d=10, seed=0)
    net = TwoLayerNet(10, 300, activation="tanh", seed=0)
    pretrain(net, ds.X, ds.targets, TrainConfig(iterations=300, lr=0.05, batch_size=None, loss="squared"))
    phi = neuron_outputs(net, ds.X)
    dense = loss_value(phi.mean(dim=0), ds.targets, "squared")
    result = greedy_forward_selection(phi, ds.targets, 320, loss="squared")
    ks = np.array([10, 20, 40, 80, 160, 320])
    gaps = result.gap(dense).numpy()[ks - 1]
    assert (gaps > 0).all(), gaps
    assert gaps[-1] < gaps[0] / 8  # 1/K would give /32
    slope = np.polyfit(np.log(ks), np.log(gaps), 1)[0]
    assert slope < -0.7, f"fitted rate K^{slope:.2f}"
    # the losses of Algorithm 1 never increase much: the bound is on the trend; check monotone in the large
    assert result.losses[-1] < result.losses[9]


def test_progress_bar_runs():
    phi, y = random_problem(9, "squared", n=10, m=5)
    assert greedy_forward_selection(phi, y, 3, progress=True).k == 3


@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
@pytest.mark.parametrize("candidates", [None, 3])
def test_early_stops_end_a_run_after_the_step_that_meets_them(loss, candidates):
    """``distinct=`` and ``stop=`` end the engine's loop after the first step that meets them: the result is
    that prefix of a k-step run (itself the brute-force loop's selection), and ``stop`` sees every step."""
    for seed in range(4):
        phi, y = random_problem(seed, loss, n=12, m=8)
        k = 30
        full = greedy_forward_selection(phi, y, k, loss=loss, candidates=candidates, seed=seed)
        indices, _ = brute_force_selection(phi, y, k, loss=loss, candidates=candidates, seed=seed)
        assert full.indices.tolist() == indices
        chosen = [len(set(full.indices[:t].tolist())) for t in range(1, k + 1)]
        losses = full.losses.tolist()
        threshold = sorted(losses)[k // 3]
        calls = []

        def stop(steps, distinct, loss_so_far):
            calls.append((steps, distinct, loss_so_far))
            return loss_so_far <= threshold

        cuts = {"stop": (dict(stop=stop), next(t for t in range(1, k + 1) if losses[t - 1] <= threshold)),
                "distinct": (dict(distinct=chosen[-1]), chosen.index(chosen[-1]) + 1),
                "never": (dict(stop=lambda *_: False, distinct=phi.shape[0] + 1), k)}
        for name, (option, t) in cuts.items():
            cut = greedy_forward_selection(phi, y, k, loss=loss, candidates=candidates, seed=seed, **option)
            assert cut.k == t and cut.indices.tolist() == indices[:t], (seed, name)
            assert cut.losses.tolist() == losses[:t], (seed, name)
            assert cut.counts.tolist() == torch.bincount(full.indices[:t], minlength=phi.shape[0]).tolist()
            torch.testing.assert_close(cut.output, phi[cut.indices].mean(dim=0))
        assert calls == [(t, chosen[t - 1], losses[t - 1]) for t in range(1, cuts["stop"][1] + 1)], seed


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(5), torch.randn(5), 2, {}), "shape \\(N, m\\)"),
        (lambda: (torch.randn(2, 3, 4, 5), torch.randn(3), 2, {}), "shape \\(N, m\\)"),
        (lambda: (torch.randn(4, 3), torch.randn(4), 2, {}), "target must have shape"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 0, {}), "k must be >= 1"),
        (lambda: (torch.randn(4, 3), torch.randn(3), -3, {}), "k must be >= 1"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 5, {"replacement": False}), "exceeds the number of neurons"),
        (lambda: (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2), 1, {}), "NaN or inf"),
        (lambda: (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), torch.randn(2), 1, {}), "NaN or inf"),
        (lambda: (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0]), 1, {"loss": "logistic"}), "labels in \\{0, 1\\}"),
        (lambda: (torch.randn(4, 3), torch.tensor([0.0, 0.5, 1.0]), 1, {"loss": "logistic"}), "target\\[1\\]"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 1, {"loss": "hinge"}), "unknown loss"),
        (lambda: (torch.randn(4, 3), torch.zeros(3, dtype=torch.long), 1, {"loss": "cross_entropy"}), "\\(N, m, C\\)"),
        (lambda: (torch.randn(4, 3, 2), torch.tensor([0, 1, 2]), 1, {"loss": "cross_entropy"}), "lie in \\[0, 1\\]"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 1, {"candidates": 0}), "candidates must be >= 1"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 1, {"seed": -1}), "seed must be >= 0"),
        (lambda: (torch.empty(0, 3), torch.randn(3), 1, {}), "non-empty"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 1, {"stop": 0.01}), "stop must be a function"),
    ],
)
def test_bad_input_value_errors(make, match):
    outputs, target, k, kw = make()
    with pytest.raises(ValueError, match=match):
        greedy_forward_selection(outputs, target, k, **kw)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.ones(4, 3, dtype=torch.long), torch.randn(3), 1, {}), "floating-point"),
        (lambda: (np.ones((4, 3)), torch.randn(3), 1, {}), "torch.Tensor"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 2.0, {}), "k must be an int"),
        (lambda: (torch.randn(4, 3), torch.randn(3), True, {}), "k must be an int"),
        (lambda: (torch.randn(4, 3), torch.ones(3, dtype=torch.long), 1, {}), "floating-point target"),
        (lambda: (torch.randn(4, 3, 2), torch.zeros(3), 1, {"loss": "cross_entropy"}), "integer class indices"),
        (lambda: (torch.randn(4, 3), torch.randn(3), 1, {"replacement": 1}), "True or False"),
    ],
)
def test_bad_input_type_errors(make, match):
    outputs, target, k, kw = make()
    with pytest.raises(TypeError, match=match):
        greedy_forward_selection(outputs, target, k, **kw)


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
def test_lower_bounds_hold_for_fresh_and_stale_anchors(loss):
    from greedyprune.selection.scorers import CrossEntropyScorer as _CrossEntropyScorer
    from greedyprune.selection.scorers import LogisticScorer as _LogisticScorer

    cls = _LogisticScorer if loss == "logistic" else _CrossEntropyScorer
    for seed in range(5):
        phi, y = random_problem(seed, loss, n=40, m=30)
        scorer = cls(phi, y, chunk_elements=1 << 16)
        for k in range(15):
            if k % 5 == 0:
                scorer.set_anchor(k)  # the anchor is then kept (stale) for four steps
            lower, margin = scorer.lower_bounds(k)
            exact = scorer.scores(None, k)
            assert (lower - margin <= exact).all(), (seed, k)
            if k % 5 == 0:  # fresh anchor: the gap is at most the curvature term (softplus'' <= 1/4, lse'' <= 1/2)
                curvature = 0.25 if loss == "logistic" else 0.5
                sq = (phi.reshape(40, -1) ** 2).sum(dim=1)
                assert (exact - lower <= curvature / 2 * sq / (k + 1) + 1e-9).all(), (seed, k)
            i = int(torch.argmin(exact))
            scorer.add(scorer.phi[i], i)


def test_bounds_skip_most_exact_evaluations_late_in_the_selection():
    from greedyprune.selection.scorers import LogisticScorer as _LogisticScorer

    phi, y = random_problem(11, "logistic", n=400, m=300)
    scorer = _LogisticScorer(phi, y, chunk_elements=1 << 16)
    for k in range(60):
        i = scorer.best(k, None)[1]
        scorer.add(scorer.phi[i], i)
    scorer.evaluated = 0
    for k in range(60, 80):
        i = scorer.best(k, None)[1]
        scorer.add(scorer.phi[i], i)
    assert scorer.evaluated < 20 * 400 / 4  # far fewer than a full pass per step


@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
def test_float32_duplicated_neurons_go_to_the_lowest_index(loss):
    # dead ReLU units all have the same output row: exact duplicates must tie like in a brute-force loop
    g = torch.Generator().manual_seed(0)
    for trial in range(10):
        m = int(torch.randint(3, 60, (1,), generator=g))
        if loss == "cross_entropy":
            base, y = torch.randn(5, m, 3, generator=g) * 3, torch.randint(0, 3, (m,), generator=g)
        else:
            base = torch.randn(5, m, generator=g) * 3
            y = torch.randn(m, generator=g) if loss == "squared" else (torch.rand(m, generator=g) > 0.5).float()
        phi = torch.cat([base] * 7)
        for replacement, cands in ((True, None), (False, None), (True, 11)):
            result = greedy_forward_selection(phi, y, 8, loss=loss, replacement=replacement, candidates=cands,
                                              seed=trial)
            expected, _ = brute_force_selection(phi, y, 8, loss=loss, replacement=replacement, candidates=cands,
                                                seed=trial)
            assert result.indices.tolist() == expected, (trial, replacement, cands)


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
def test_confident_logits_keep_float32_selections_exact(loss):
    # well-fitted data: per-example losses ~1e-7; scores must not lose them to cancellation
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        m = 200
        if loss == "logistic":
            y = torch.randint(0, 2, (m,), generator=g).float()
            phi = (2 * y - 1) * (15 + 3 * torch.rand(20, m, generator=g))
        else:
            y = torch.randint(0, 3, (m,), generator=g)
            phi = torch.randn(20, m, 3, generator=g)
            phi += 15 * torch.nn.functional.one_hot(y, 3) * (1 + torch.rand(20, m, 1, generator=g))
        result = greedy_forward_selection(phi, y, 10, loss=loss)
        expected, _ = brute_force_selection(phi.double(), y.double() if loss == "logistic" else y, 10, loss=loss)
        assert result.indices.tolist() == expected


def test_half_precision_is_computed_in_float32():
    phi = torch.tensor([[300.0, -300.0], [-300.0, 300.0], [1.0, -1.0]])
    y = torch.tensor([1.0, 0.0])
    result = greedy_forward_selection(phi.half(), y.half(), 2, loss="logistic")
    assert result.indices.tolist() == brute_force_selection(phi, y, 2, loss="logistic")[0] == [0, 0]
    assert result.output.dtype == torch.float32
    big = torch.full((3, 100), 1000.0)
    big[1] *= -1
    result = greedy_forward_selection(big.to(torch.bfloat16), torch.ones(100), 2, loss="logistic")
    assert result.indices.tolist() == [0, 0] and result.counts.tolist() == [2, 0, 0]


def test_other_integer_targets_and_grad_inputs_are_accepted():
    out = greedy_forward_selection(torch.randn(4, 5, 3), torch.tensor([0, 1, 2, 0, 1], dtype=torch.int32), 2,
                                   loss="cross_entropy")
    assert out.k == 2
    result = greedy_forward_selection(torch.randn(4, 5, requires_grad=True), torch.randint(0, 2, (5,)).float(), 2,
                                      loss="logistic")
    assert not result.output.requires_grad


def test_huge_outputs_get_a_clear_error():
    with pytest.raises(ValueError, match="not supported - rescale"):
        greedy_forward_selection(torch.tensor([[2e19, -2e19], [1.0, -1.0]]), torch.tensor([1.0, 0.0]), 1,
                                 loss="logistic")
