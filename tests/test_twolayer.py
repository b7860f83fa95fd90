"""prune_two_layer builds a physically smaller net that reproduces the selection's output."""
import pytest
import torch
from torch import nn

from greedyprune import TwoLayerNet, build_pruned, neuron_outputs, prune_two_layer
from greedyprune.twolayer import ACTIVATIONS

torch.set_num_threads(1)


def data(m=60, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, d, generator=g)
    return X, (torch.rand(m, generator=g) > 0.5).float(), torch.randint(0, 4, (m,), generator=g)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_neuron_outputs_average_to_the_network_output(activation):
    X, _, _ = data()
    net = TwoLayerNet(7, 30, activation=activation, seed=1)
    phi = neuron_outputs(net, X)
    assert phi.shape == (30, 60)
    torch.testing.assert_close(phi.mean(dim=0), net(X), rtol=1e-5, atol=1e-5)
    multi = TwoLayerNet(7, 30, activation=activation, out_features=4, seed=1)
    phi = neuron_outputs(multi, X)
    assert phi.shape == (30, 60, 4)
    torch.testing.assert_close(phi.mean(dim=0), multi(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss, out", [("logistic", 1), ("squared", 1), ("cross_entropy", 4)])
@pytest.mark.parametrize("replacement", [True, False])
def test_pruned_model_reproduces_the_selection_output(loss, out, replacement):
    X, yb, yc = data()
    y = yc if loss == "cross_entropy" else yb
    net = TwoLayerNet(7, 40, out_features=out, seed=2).double()
    before = [p.clone() for p in net.parameters()]
    small, result = prune_two_layer(net, X.double(), y.double() if loss != "cross_entropy" else y, 25, loss=loss,
                                    replacement=replacement)
    assert isinstance(small, TwoLayerNet)
    assert small.hidden == int(result.selected.numel()) <= 25
    torch.testing.assert_close(small(X.double()), result.output, rtol=1e-10, atol=1e-10)
    for p, q in zip(before, net.parameters()):
        assert torch.equal(p, q), "the dense model must be left unchanged"
    assert result.dense_loss is not None and result.dense_loss >= 0
    with pytest.warns(DeprecationWarning, match="named fields"):
        assert result.extra["dense_loss"] == result.dense_loss  # the old dict, for one release


def test_plain_sequential_with_any_activation_is_accepted():
    X, y, _ = data()
    seq = nn.Sequential(nn.Linear(7, 20), nn.Tanh(), nn.Linear(20, 1))
    small, result = prune_two_layer(seq, X, y.unsqueeze(1), 12, loss="squared")
    assert type(small) is nn.Sequential and isinstance(small[1], nn.Tanh)
    assert small[0].out_features == int(result.selected.numel())
    torch.testing.assert_close(small(X).squeeze(1), result.output, rtol=1e-5, atol=1e-5)


def test_build_pruned_weights_by_hand():
    net = TwoLayerNet(2, 4, seed=0)
    counts = torch.tensor([0, 3, 0, 1])
    small = build_pruned(net, counts)
    # output weight of kept neuron j is N * v_j * count_j / k with N=4, k=4
    expected = net[2].weight[:, [1, 3]] * torch.tensor([3.0, 1.0])
    torch.testing.assert_close(small[2].weight, expected)
    torch.testing.assert_close(small[0].weight, net[0].weight[[1, 3]])
    torch.testing.assert_close(small[2].bias, net[2].bias)


def test_seeded_init_is_deterministic_and_gaussian_init_has_theory_scale():
    a, b, c = TwoLayerNet(5, 8, seed=3), TwoLayerNet(5, 8, seed=3), TwoLayerNet(5, 8, seed=4)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    g = TwoLayerNet(50, 2000, init="gaussian", seed=0)
    assert abs(float(g[0].weight.detach().std()) - 1.0) < 0.02
    assert abs(float(g[2].weight.detach().std()) * 2000 - 1.0) < 0.1


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: prune_two_layer(nn.Linear(3, 1), torch.randn(4, 3), torch.ones(4), 2), TypeError, "nn.Sequential"),
        (lambda: prune_two_layer(nn.Sequential(nn.Linear(3, 5), nn.ReLU()), torch.randn(4, 3), torch.ones(4), 2),
         TypeError, "with 2 modules"),
        (lambda: prune_two_layer(nn.Sequential(nn.Linear(3, 5), nn.PReLU(), nn.Linear(5, 1)), torch.randn(4, 3),
                                 torch.ones(4), 2), TypeError, "has parameters"),
        (lambda: prune_two_layer(TwoLayerNet(3, 5), torch.randn(4, 2), torch.ones(4), 2), ValueError,
         "shape \\(m, 3\\)"),
        (lambda: prune_two_layer(TwoLayerNet(3, 5, out_features=3), torch.randn(4, 3), torch.ones(4), 2), ValueError,
         "one output"),
        (lambda: TwoLayerNet(3, 0), ValueError, "hidden must be a positive int"),
        (lambda: TwoLayerNet(3, 4, activation="swish"), ValueError, "unknown activation"),
        (lambda: build_pruned(TwoLayerNet(3, 4), torch.zeros(4, dtype=torch.long)), ValueError, "no neuron"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
