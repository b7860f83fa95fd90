"""The loss registry (``greedyprune/selection/losses.py``): every loss is a registered ``Loss`` class, and
adding one is one subclass and one decorator - shown with a toy loss run through the engine and compared with a
brute-force loop written here."""
import pytest
import torch

from greedyprune import LOSSES, greedy_forward_selection, loss_value, prune_two_layer
from greedyprune.errors import InvalidOptionError, InvalidTypeError
from greedyprune.selection import Loss, draw_candidates, get_loss, register_loss
from greedyprune.selection.scorers import BruteForceScorer, LogisticScorer
from toy_loss import AbsoluteLoss, registered

F64 = torch.float64


def test_the_built_in_losses_are_registered_in_order():
    assert LOSSES == ("squared", "logistic", "cross_entropy")
    assert repr(LOSSES) == "('squared', 'logistic', 'cross_entropy')" and tuple(LOSSES) == tuple(LOSSES)
    assert "squared" in LOSSES and "hinge" not in LOSSES and ["squared"] not in LOSSES
    assert [get_loss(name).name for name in LOSSES] == list(LOSSES)
    assert [name for name in LOSSES if get_loss(name).gram] == ["squared"]


@pytest.mark.parametrize("name", ["hinge", None, ["squared"]])
def test_an_unknown_loss_is_refused_naming_the_choices(name):
    with pytest.raises(InvalidOptionError, match=r"unknown loss .*; expected one of \('squared', 'logistic'"):
        get_loss(name)
    with pytest.raises(InvalidOptionError, match="unknown loss"):
        loss_value(torch.zeros(3), torch.zeros(3), name)


def test_register_loss_refuses_a_taken_name_a_missing_name_and_a_non_loss():
    class Again(Loss):
        name = "squared"

    class Nameless(Loss):
        pass

    with pytest.raises(InvalidOptionError, match="'squared' is already registered"):
        register_loss(Again)
    with pytest.raises(InvalidOptionError, match="needs a name"):
        register_loss(Nameless)
    with pytest.raises(InvalidTypeError, match="takes a Loss subclass"):
        register_loss(dict)
    assert LOSSES == ("squared", "logistic", "cross_entropy")


def test_a_scorer_built_without_its_loss_says_so():
    phi, y = torch.randn(5, 8, dtype=F64), (torch.rand(8) > 0.5).to(F64)
    scorer = LogisticScorer(phi, y, chunk_elements=1 << 16)
    scorer.add(phi[0], 0)
    with pytest.raises(InvalidOptionError, match="built without its loss"):
        scorer.loss(1)
    scorer = get_loss("logistic").make_scorer(phi, y, 1 << 16)
    scorer.add(phi[0], 0)
    assert scorer.loss(1) == loss_value(phi[0], y, "logistic")


# ------------------------------------------------------------------------------------------ a toy loss
@pytest.fixture
def absolute():
    assert "absolute" not in LOSSES
    with registered(AbsoluteLoss):
        yield get_loss("absolute")
    assert "absolute" not in LOSSES


def brute_force(phi, y, k, replacement=True, candidates=None, seed=0):
    """Algorithm 1 written out: at each step every candidate's averaged output and its mean absolute error."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(phi.shape[0])
    available = torch.ones(phi.shape[0], dtype=torch.bool)
    total = torch.zeros(phi.shape[1:], dtype=phi.dtype)
    chosen, losses = [], []
    for step in range(k):
        pool = rows if replacement else rows[available]
        pool = draw_candidates(generator, pool, candidates)
        errors = [float(((total + phi[i]) / (step + 1) - y).abs().sum() / phi.shape[1]) for i in pool.tolist()]
        best = int(pool[min(range(len(errors)), key=lambda j: (errors[j], j))])
        chosen.append(best)
        available[best] = False
        total = total + phi[best]
        losses.append(float((total / (step + 1) - y).abs().sum() / phi.shape[1]))
    return chosen, losses


@pytest.mark.parametrize("shape, replacement, candidates", [((40, 30), True, None), ((40, 30), False, None),
                                                            ((25, 12, 3), True, None), ((40, 30), True, 7)])
def test_a_registered_toy_loss_runs_in_the_engine_as_a_brute_force_loop(absolute, shape, replacement, candidates):
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(shape, generator=g, dtype=F64)
    y = torch.randn(shape[1:], generator=g, dtype=F64)
    assert "absolute" in LOSSES and LOSSES[-1] == "absolute"
    result = greedy_forward_selection(phi, y, 15, loss="absolute", replacement=replacement, candidates=candidates,
                                      seed=4)
    chosen, losses = brute_force(phi, y, 15, replacement, candidates, seed=4)
    assert result.indices.tolist() == chosen
    assert torch.allclose(result.losses, torch.tensor(losses, dtype=F64), rtol=1e-12, atol=0)
    assert result.loss == "absolute" and loss_value(result.output, y, "absolute") == pytest.approx(losses[-1])
    assert isinstance(absolute.make_scorer(phi, y, 1 << 16), BruteForceScorer)


def test_a_toy_loss_gets_the_default_target_checks_and_no_gram_form(absolute):
    phi = torch.randn(6, 4, dtype=F64)
    with pytest.raises(InvalidTypeError, match="loss='absolute' needs a floating-point target"):
        greedy_forward_selection(phi, torch.zeros(4, dtype=torch.int64), 2, loss="absolute")
    with pytest.raises(InvalidOptionError, match=r"target must have shape \(4,\)"):
        greedy_forward_selection(phi, torch.zeros(5, dtype=F64), 2, loss="absolute")
    with pytest.raises(InvalidOptionError, match="the Gram form computes the squared loss; got loss='absolute'"):
        greedy_forward_selection(None, None, 2, loss="absolute", gram=phi @ phi.T, cross=phi.sum(1))


def test_a_toy_loss_prunes_a_two_layer_net(absolute):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2))
    X, y = torch.randn(50, 5), torch.randn(50, 2)
    result = prune_two_layer(model, X, y, 6, loss="absolute")
    phi = result.selection.output  # the pruned net's output on X is the selection's averaged output
    assert torch.allclose(result.model(X), phi, atol=1e-5)
    assert result.selection.indices.numel() == 6
