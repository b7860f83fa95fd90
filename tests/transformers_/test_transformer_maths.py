"""The transformer maths that needs only torch (it runs without the ``transformers`` extra): the Gram form of
greedy forward selection against the explicit form and brute force, the sum and least-squares forms, the
refit, the reconstruction error, the baselines' definitions, and the calibration text."""
from __future__ import annotations

import math

import pytest
import torch

from greedyprune.selection import greedy_forward_selection
from greedyprune.transformers import criteria
from greedyprune.transformers.stats import input_stats
from greedyprune.transformers.text import default_sentences, read_sentences, split_sentences
from greedyprune.transformers.widths import allocate_widths, flap_allocation
from reference import brute_force_selection

torch.set_num_threads(1)

SENTENCES = [
    "The value of the name is returned when the function is called.",
    "A class can have methods that are called with an object as the first value.",
    "Each module has its own list of names.",
    "This statement is used for the new objects of a class.",
    "When the expression is a string it returns the number of values.",
    "All other objects can be used as a value for the function.",
    "The default value is used when no value is given.",
    "A list of names is returned by the method.",
    "Two objects with the same value are not the same object.",
    "It is not called when the module is imported.",
    "The first statement of the function is a string.",
    "Names in a module can be used by other modules.",
    "Functions and methods return a value or the default value.",
    "A number can be used as the name of a value.",
    "The class of an object is returned by this function.",
    "Each statement is an expression or a list of expressions.",
]


def _stats_from(x):
    return input_stats([x.unsqueeze(0)], [torch.ones(1, x.shape[0], dtype=torch.bool)], full=True)


@pytest.mark.parametrize("group", [1, 3])
def test_gram_selection_equals_explicit_and_brute_force(group):
    g = torch.Generator().manual_seed(group)
    m, d_in, d, n = 40, 6, 5, 8
    x = torch.randn(m, d_in, generator=g, dtype=torch.float64)
    w1 = torch.randn(n * group, d_in, generator=g, dtype=torch.float64)
    acts = torch.nn.functional.gelu(x @ w1.T)  # (m, D): an FFN's hidden activations (or a head's context)
    w2 = torch.randn(d, n * group, generator=g, dtype=torch.float64)
    # explicit (N, m, C): phi_i = N * (unit i's contribution to the block output); target = dense output - bias
    contrib = torch.stack([acts[:, i * group:(i + 1) * group] @ w2[:, i * group:(i + 1) * group].T for i in range(n)])
    phi, y = n * contrib, acts @ w2.T
    k = 20  # more steps than units: with replacement
    explicit = greedy_forward_selection(phi, y, k)
    brute, brute_losses = brute_force_selection(phi, y, k)
    gram, cross, target_norm = criteria.unit_gram(w2, _stats_from(acts), group)
    gram_form = greedy_forward_selection(None, None, k, gram=gram, cross=cross, target_norm=target_norm, examples=m)
    assert gram_form.indices.tolist() == explicit.indices.tolist() == brute
    # the Gram form's losses are the squared loss itself (target_norm and examples given)
    torch.testing.assert_close(gram_form.losses, torch.tensor(brute_losses, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_gfs_select_stops_at_the_distinct_count_and_repeats_the_long_run():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(50, 30, generator=g, dtype=torch.float64).relu()
    w2 = torch.randn(4, 30, generator=g, dtype=torch.float64)
    gram, cross, tn = criteria.unit_gram(w2, _stats_from(acts), 1)
    for n_keep in (1, 7, 15, 30):
        sel = criteria.gfs_select(gram, cross, tn, 50, n_keep)
        assert int(sel.selected.numel()) == n_keep and int(sel.counts.sum()) == sel.k
        assert sel.indices[-1] not in sel.indices[:-1]  # the last step chose the n_keep-th new unit
        long = greedy_forward_selection(None, None, sel.k + 40, gram=gram, cross=cross, target_norm=tn, examples=50)
        assert sel.indices.tolist() == long.indices[:sel.k].tolist()
    no_repl = criteria.gfs_select(gram, cross, tn, 50, 7, replacement=False)
    assert no_repl.k == 7 and int(no_repl.selected.numel()) == 7


def _explicit_sum_and_ls(acts, w2, b2, group, n_keep):
    """Brute-force greedy: each step tries every free unit and forms the whole error explicitly."""
    n = w2.shape[1] // group
    y = acts @ w2.T + b2
    chans = lambda units: [c for u in units for c in range(u * group, (u + 1) * group)]  # noqa: E731
    out = {}
    for form in ("gfs-sum", "gfs-ls"):
        chosen = []
        for _ in range(n_keep):
            best, best_err = None, None
            for u in (u for u in range(n) if u not in chosen):
                ch = chans(chosen + [u])
                xk = acts[:, ch]
                if form == "gfs-sum":  # kept weights unchanged, the bias takes the removed units' mean
                    pred = xk @ w2[:, ch].T + b2 + (y - xk @ w2[:, ch].T - b2).mean(dim=0)
                else:  # least-squares weights and bias
                    design = torch.cat([xk, torch.ones(len(xk), 1, dtype=xk.dtype)], dim=1)
                    pred = design @ torch.linalg.lstsq(design, y).solution
                err = float(((pred - y) ** 2).sum())
                if best_err is None or err < best_err - 1e-9:
                    best, best_err = u, err
            chosen.append(best)
        out[form] = chosen
    return out


@pytest.mark.parametrize("group", [1, 3])
def test_sum_and_least_squares_forms_equal_brute_force(group):
    g = torch.Generator().manual_seed(10 + group)
    m, d_in, d, n = 80, 5, 4, 7
    x = torch.randn(m, d_in, generator=g, dtype=torch.float64)
    acts = torch.nn.functional.gelu(x @ torch.randn(d_in, n * group, generator=g, dtype=torch.float64) + 0.3)
    w2 = torch.randn(d, n * group, generator=g, dtype=torch.float64)
    b2 = torch.randn(d, generator=g, dtype=torch.float64)
    stats = _stats_from(acts)
    brute = _explicit_sum_and_ls(acts, w2, b2, group, 5)
    assert criteria.sum_select(w2, stats, group, 5).tolist() == brute["gfs-sum"]
    assert criteria.ls_select(w2, stats, group, 5).tolist() == brute["gfs-ls"]
    # plan_block keeps them ascending, with weight 1 and the removed units' mean in the bias
    for method in ("gfs-sum", "gfs-ls"):
        plan = criteria.plan_block(method, w2, stats, group, 5)
        assert plan.keep.tolist() == sorted(brute[method])
        removed = [c for u in range(n) if u not in brute[method] for c in range(u * group, (u + 1) * group)]
        torch.testing.assert_close(plan.bias_delta, w2[:, removed] @ acts[:, removed].mean(dim=0))


def _block(seed, m=60, big=6, n=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64) + torch.linspace(-1, 1, n, dtype=torch.float64)
    w = torch.randn(big, n, generator=g, dtype=torch.float64)
    b = torch.randn(big, generator=g, dtype=torch.float64)
    return x, w, b


def test_refit_is_least_squares_and_large_ridge_keeps_the_start():
    x, w, b = _block(0)
    stats = _stats_from(x)
    keep = torch.tensor([0, 2, 3, 7])
    y = x @ w.T + b
    v, c = criteria.refit_lstsq(w, b, stats, keep, ridge=0.0)
    design = torch.cat([x[:, keep], torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(design, y).solution  # independent: the explicit least-squares problem
    torch.testing.assert_close(v, sol[:-1].T)
    torch.testing.assert_close(c, sol[-1])
    v_big, _ = criteria.refit_lstsq(w, b, stats, keep, ridge=1e9, start=w[:, keep] * 2)
    torch.testing.assert_close(v_big, w[:, keep] * 2, rtol=1e-4, atol=1e-6)
    v_prior, _ = criteria.refit_lstsq(w, b, stats, keep, ridge=1e9)  # default prior: the kept columns
    torch.testing.assert_close(v_prior, w[:, keep], rtol=1e-4, atol=1e-6)
    # a ridge in between: the explicit penalised problem, lam = ridge * |K| * mean per-token variance
    lam = 0.3 * len(keep) * float(x[:, keep].var(0, unbiased=False).mean())
    xc, yc = x[:, keep] - x[:, keep].mean(0), y - y.mean(0)
    a = torch.cat([xc, lam ** 0.5 * torch.eye(len(keep), dtype=torch.float64)])
    t = torch.cat([yc, lam ** 0.5 * w[:, keep].T])
    v_mid, _ = criteria.refit_lstsq(w, b, stats, keep, ridge=0.3)
    torch.testing.assert_close(v_mid, torch.linalg.lstsq(a, t).solution.T)


def test_reconstruction_error_matches_the_explicit_error():
    x, w, b = _block(1)
    stats = _stats_from(x)
    new_w = w * torch.rand(w.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    new_w[:, 3] = 0
    db = torch.randn(w.shape[0], dtype=torch.float64)
    want = float(((x @ new_w.T + db - x @ w.T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert criteria.reconstruction_error(w, stats, new_w, db) == pytest.approx(want, rel=1e-10)


def test_baselines_follow_their_definitions():
    x, w, b = _block(2)
    stats = _stats_from(x)
    w_in = torch.randn(w.shape[1], 3, dtype=torch.float64)
    mag = criteria.unit_scores("magnitude", w, stats, 1, w_in)
    torch.testing.assert_close(mag, w_in.norm(dim=1) * w.norm(dim=0))
    wanda = criteria.unit_scores("wanda", w, stats, 1)
    torch.testing.assert_close(wanda, x.pow(2).mean(0).sqrt() * w.abs().mean(0))
    flap = criteria.unit_scores("flap", w, stats, 1)
    torch.testing.assert_close(flap, x.var(0, unbiased=False) * w.pow(2).sum(0))
    plan = criteria.plan_block("flap", w, stats, 1, 4)
    assert plan.keep.tolist() == sorted(torch.topk(flap, 4).indices.tolist())
    # bias compensation keeps the block's mean output over the calibration tokens
    kept = w * plan.scale.reshape(1, -1)
    torch.testing.assert_close((x @ kept.T + b + plan.bias_delta).mean(0), (x @ w.T + b).mean(0))
    r1 = criteria.plan_block("random", w, stats, 1, 4, generator=torch.Generator().manual_seed(5))
    r2 = criteria.plan_block("random", w, stats, 1, 4, generator=torch.Generator().manual_seed(5))
    assert r1.keep.tolist() == r2.keep.tolist() and r1.keep.numel() == 4


def test_keep_count():
    assert [criteria.keep_count(f, 1536) for f in (0.75, 0.5, 0.25)] == [1152, 768, 384]
    assert criteria.keep_count(0.01, 12) == 1 and criteria.keep_count(1.0, 12) == 12
    assert criteria.keep_count(0.66, 12) == 8 and criteria.keep_count(0.625, 4) == 3  # nearest, halves up


def test_default_sentences_are_prose_and_disjoint():
    calib, held = default_sentences(64, 32)
    assert len(calib) == 64 and len(held) == 32 and not set(calib) & set(held)
    assert default_sentences(64, 32) == (calib, held)
    assert default_sentences(128, 32)[1] == held  # the held-out set does not move with the calibration size
    assert all(s[0].isupper() and s[-1] in ".!?" and "::=" not in s for s in calib + held)
    text = "Title\n*****\n\nFirst sentence is here. Second one\nwraps a line.\n\n   code = 1\n   more = 2\n"
    assert split_sentences(text, min_words=2) == ["First sentence is here.", "Second one wraps a line."]
    with pytest.raises(ValueError, match="corpus has"):
        default_sentences(100000, 10)


def test_read_sentences(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    calib, held = read_sentences(path, held_out_fraction=0.25)
    assert len(held) == 4 and len(calib) == 12 and sorted(calib + held) == sorted(SENTENCES)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no sentence"):
        read_sentences(tmp_path / "empty.txt")


# ----------------------------------------------------------------------------------- the criteria registry


def test_the_builtin_criteria_are_registered_and_the_old_names_derive_from_the_registry():
    from greedyprune.transformers.decoder_prune import DECODER_METHODS

    assert criteria.METHODS == criteria.criterion_names() == (
        "gfs", "gfs-sum", "gfs-ls", "magnitude", "wanda", "flap", "random")
    assert DECODER_METHODS == criteria.criterion_names(decoder=True) == criteria.METHODS + ("taylor",)
    assert criteria.GREEDY == ("gfs", "gfs-sum", "gfs-ls")
    assert criteria.NEEDS_FULL_STATS == {"gfs": True, "gfs-sum": True, "gfs-ls": True, "magnitude": False,
                                         "wanda": False, "flap": False, "random": False}
    assert set(criteria.BIAS_COMPENSATED) == {"flap", "gfs-sum", "gfs-ls"}
    assert all(isinstance(c, criteria.Criterion) and c.name == n for n, c in criteria.CRITERIA.items())


def test_an_unknown_criterion_is_refused_naming_the_choices():
    from greedyprune.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match=r"unknown method 'nope'; expected one of \('gfs', 'gfs-sum'"):
        criteria.get_criterion("nope")
    with pytest.raises(InvalidOptionError, match=r"unknown method 'taylor'.*'random'\)$"):
        criteria.get_criterion("taylor")  # decoders only
    assert criteria.get_criterion("taylor", decoder=True).name == "taylor"
    x, w, _ = _block(0)
    with pytest.raises(InvalidOptionError, match="unknown method 'nope'"):
        criteria.plan_block("nope", w, _stats_from(x), 1, 3)
    with pytest.raises(InvalidOptionError, match="no score for method 'gfs'"):
        criteria.unit_scores("gfs", w, _stats_from(x), 1)


class _LastUnits(criteria.ScoreCriterion):
    """A toy baseline: keeps the units with the highest indices, bias compensated."""

    name = "toy-last"
    needs_stats = bias_compensated = True

    def score(self, weight, stats, group, weight_in=None):
        return torch.arange(weight.shape[1] // group, dtype=torch.float64)


@pytest.fixture()
def toy_criterion():
    criteria.register_criterion(_LastUnits)
    yield criteria.CRITERIA["toy-last"]
    del criteria.CRITERIA["toy-last"]


def test_a_registered_criterion_plans_blocks_through_the_registry(toy_criterion):
    from greedyprune.errors import InvalidOptionError

    assert criteria.criterion_names()[-1] == "toy-last" and "toy-last" not in criteria.METHODS  # METHODS: built-ins
    x, w, b = _block(1)
    stats = _stats_from(x)
    plan = criteria.plan_block("toy-last", w, stats, 2, 3)
    n = w.shape[1] // 2
    assert plan.keep.tolist() == list(range(n - 3, n))
    kept = w * plan.scale.repeat_interleave(2).reshape(1, -1)
    torch.testing.assert_close((x @ kept.T + b + plan.bias_delta).mean(0), (x @ w.T + b).mean(0))
    assert criteria.unit_scores("toy-last", w, stats, 2).tolist() == list(range(n))
    with pytest.raises(InvalidOptionError, match="'toy-last' is already registered"):
        criteria.register_criterion(_LastUnits)


def test_register_criterion_refuses_what_is_not_a_named_criterion():
    from greedyprune.errors import InvalidOptionError

    with pytest.raises(TypeError, match="Criterion subclass"):
        criteria.register_criterion(object)
    with pytest.raises(InvalidOptionError, match="needs a name"):
        criteria.register_criterion(type("Nameless", (criteria.Criterion,), {}))
    assert "" not in criteria.CRITERIA


# ------------------------------------------------------------------- issue 20: each rule against its own loop
def _masked_batches(seed, D=6):
    """Two (B, L, D) batches with padding (False in the mask) and a shift, so that means matter."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(2, 5, D, generator=g) * 2 + 1, torch.randn(3, 4, D, generator=g) - 0.5]
    masks = [torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool(), torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0],
                                                                                   [1, 1, 0, 0]]).bool()]
    return xs, masks


def test_input_stats_are_sums_over_the_real_tokens_and_their_moments_the_population_ones():
    xs, masks = _masked_batches(0)
    real = torch.cat([x[m] for x, m in zip(xs, masks)]).double()  # (T, D): padding dropped
    close = dict(rtol=1e-5, atol=1e-5)  # the Gram's products are formed in float32
    for full in (False, True):  # the full Gram last: its covariance below
        stats = input_stats(xs, masks, full=full)
        assert stats.tokens == real.shape[0] == 14
        torch.testing.assert_close(stats.total, real.sum(0), **close)
        torch.testing.assert_close(stats.sq, (real * real).sum(0), **close)
        torch.testing.assert_close(stats.mean, real.mean(0), **close)
        torch.testing.assert_close(stats.variance, real.var(0, unbiased=False), **close)
    centred = real - real.mean(0)
    torch.testing.assert_close(stats.covariance, centred.T @ centred, **close)


@pytest.mark.parametrize("group", [1, 3])
def test_the_one_score_baselines_of_units_are_their_formulas_summed_over_each_units_channels(group):
    g = torch.Generator().manual_seed(20 + group)
    n, d = 5, 4
    x = torch.randn(50, n * group, generator=g, dtype=torch.float64) * torch.rand(n * group, generator=g,
                                                                                  dtype=torch.float64) + 0.3
    w = torch.randn(d, n * group, generator=g, dtype=torch.float64)
    w_in = torch.randn(n * group, 7, generator=g, dtype=torch.float64)
    stats = _stats_from(x)
    want = {name: torch.zeros(n, dtype=torch.float64) for name in ("magnitude", "wanda", "flap")}
    for u in range(n):
        for c in range(u * group, (u + 1) * group):
            col = w[:, c]
            want["magnitude"][u] += torch.sqrt((w_in[c] ** 2).sum()) * torch.sqrt((col ** 2).sum())
            want["wanda"][u] += torch.sqrt((x[:, c] ** 2).sum() / len(x)) * col.abs().sum() / d
            fluctuation = ((x[:, c] - x[:, c].mean()) ** 2).sum() / len(x) * (col ** 2).sum()
            want["flap"][u] += fluctuation ** 2 if group > 1 else fluctuation  # FLAP squares a head's metric
    for name, scores in want.items():
        torch.testing.assert_close(criteria.unit_scores(name, w, stats, group, w_in), scores, msg=name)
        plan = criteria.plan_block(name, w, stats, group, 2, weight_in=w_in)
        assert plan.keep.tolist() == sorted(torch.argsort(scores, descending=True)[:2].tolist()), name
        assert plan.scale.tolist() == [1.0 if u in plan.keep.tolist() else 0.0 for u in range(n)]


def test_gfs_plan_weights_each_kept_unit_by_n_times_its_count_over_the_steps():
    g = torch.Generator().manual_seed(7)
    m, n = 30, 6
    x = torch.randn(m, 2, generator=g, dtype=torch.float64)  # correlated units: some are chosen twice early
    acts = torch.nn.functional.gelu(x @ torch.randn(2, n, generator=g, dtype=torch.float64))
    w2 = torch.randn(3, n, generator=g, dtype=torch.float64)
    contrib = torch.stack([acts[:, [i]] @ w2[:, [i]].T for i in range(n)])
    brute, losses = brute_force_selection(n * contrib, acts @ w2.T, 40)  # with replacement, long enough
    for n_keep in (2, 3, 4):
        steps = next(t + 1 for t in range(len(brute)) if len(set(brute[:t + 1])) == n_keep)
        assert steps > n_keep  # repeats: the steps are not the distinct units
        counts = torch.bincount(torch.tensor(brute[:steps]), minlength=n).double()
        plan = criteria.plan_block("gfs", w2, _stats_from(acts), 1, n_keep)
        assert plan.keep.tolist() == sorted(set(brute[:steps]))
        torch.testing.assert_close(plan.scale, n * counts / steps)
        torch.testing.assert_close(plan.selection.losses, torch.tensor(losses[:steps], dtype=torch.float64))
        assert plan.bias_delta is None


def test_allocate_widths_is_the_marginal_rule_run_one_neuron_at_a_time():
    """Naively: every step, over the layers above ``min_keep``, take a neuron from the one whose (running
    minimum) error curve rises least when it loses one (ties: the lower layer)."""
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        sizes = [6, 4, 8]
        curves = []
        for size in sizes:  # decreasing with noise: the running minimum matters
            base = torch.flip(torch.cumsum(torch.rand(size, generator=g, dtype=torch.float64), 0), [0])
            noisy = torch.cat([base, torch.zeros(1, dtype=torch.float64)]) + 2.0 * torch.rand(size + 1, generator=g)
            curves.append(noisy)
        for total, min_keep in ((6, 1), (9, 2), (15, 1)):
            best = [[min(float(v) for v in c[:k + 1]) for k in range(len(c))] for c in curves]
            widths = list(sizes)
            for _ in range(sum(sizes) - total):
                rises = {i: best[i][w - 1] - best[i][w] for i, w in enumerate(widths) if w > min_keep}
                widths[min(rises, key=lambda i: (rises[i], i))] -= 1
            assert allocate_widths(curves, total, min_keep) == widths, (seed, total, min_keep)
            assert min(widths) >= min_keep


def test_flap_allocation_keeps_the_highest_standardised_scores_over_all_layers():
    """FLAP's rule by hand: each layer's scores minus their mean over their standard deviation (n - 1, as
    torch.std), ``min_keep`` per layer from its best, the rest the highest over all layers."""
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        scores = [torch.rand(size, generator=g, dtype=torch.float64) * (1 + 9 * torch.rand(1, generator=g,
                  dtype=torch.float64)) for size in (3, 9, 5)]
        for total, min_keep in ((5, 1), (9, 2), (14, 1)):
            z = []
            for s in scores:
                mean = sum(float(v) for v in s) / len(s)
                std = (sum((float(v) - mean) ** 2 for v in s) / (len(s) - 1)) ** 0.5
                z.append(sorted(((float(v) - mean) / std for v in s), reverse=True))
            rest = sorted(((v, i) for i, zi in enumerate(z) for v in zi[min_keep:]), reverse=True)
            widths = [min_keep] * len(z)
            for _, i in rest[:total - min_keep * len(z)]:
                widths[i] += 1
            assert flap_allocation(scores, total, min_keep) == widths, (seed, total, min_keep)


def test_compare_embeddings_is_the_mean_cosine_and_the_nearest_neighbour_agreement():
    from greedyprune.transformers.evaluate import compare_embeddings

    g = torch.Generator().manual_seed(8)
    dense = torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=1)
    pruned = torch.nn.functional.normalize(dense + 0.3 * torch.randn(7, 5, generator=g), dim=1)
    cos = [float((dense[i] * pruned[i]).sum()) for i in range(7)]

    def nearest(e, i):
        return max((j for j in range(7) if j != i), key=lambda j: float((e[i] * e[j]).sum()))

    same = [nearest(dense, i) == nearest(pruned, i) for i in range(7)]
    out = compare_embeddings(dense, pruned)
    assert out["cosine"] == pytest.approx(sum(cos) / 7, rel=1e-6)
    assert out["cosine_min"] == pytest.approx(min(cos), rel=1e-6)
    assert out["nn_agreement"] == pytest.approx(sum(same) / 7)
    assert 0 < sum(same) < 7  # the case tells a right agreement from a constant
    assert compare_embeddings(dense, dense)["nn_agreement"] == 1.0


class _BigramLM(torch.nn.Module):
    """A causal LM stand-in: the logits at position t depend on the tokens at t and t - 1 only."""

    def __init__(self, vocab=11):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.now = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.before = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, use_cache=False):
        from types import SimpleNamespace

        previous = torch.nn.functional.pad(input_ids[:, :-1], (1, 0))
        return SimpleNamespace(logits=self.now[input_ids] + 0.5 * self.before[previous])


def test_perplexity_is_exp_of_the_mean_next_token_cross_entropy():
    from greedyprune.transformers.perplexity import perplexity

    model = _BigramLM().train()
    ids = torch.randint(0, 11, (5, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(ids).logits
    nll = [-float(torch.log_softmax(logits[i, t], 0)[ids[i, t + 1]]) for i in range(5) for t in range(6)]
    want = math.exp(sum(nll) / len(nll))
    assert perplexity(model, ids, batch_size=2) == pytest.approx(want, rel=1e-6)  # batches of 2, 2 and 1
    assert model.training
