"""Batch-norm recalibration (greedyprune.channels.bn) against the textbook statistics computed by hand: the
running mean and variance that ``recalibrate_bn`` leaves are the average over its batches of each batch's mean
and unbiased variance, whatever the statistics and batch count were before; ``batch_statistics`` normalises
with the batch's own mean and biased variance and leaves the running statistics alone."""
import pytest
import torch
from torch import nn

from greedyprune.channels.bn import batch_statistics, recalibrate_bn

torch.set_num_threads(1)


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Dropout(0.5), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 1),
                        nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    for bn in (net[2], net[5]):  # stale statistics from "training", and a count that is not zero
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
        bn.running_mean.normal_(0, 3)
        bn.running_var.uniform_(4, 9)
        bn.num_batches_tracked.fill_(7)
        bn.momentum = 0.3
    return net.train()


def _batch_moments(h, batches):
    """Per batch: the mean and the unbiased variance over examples and positions, per channel."""
    dims = [0] + list(range(2, h.dim()))
    means = [b.mean(dims) for b in h.chunk(batches)]
    variances = [b.var(dims, unbiased=True) for b in h.chunk(batches)]
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def test_recalibrate_bn_leaves_the_average_of_the_batch_means_and_unbiased_variances():
    net = _net()
    x = torch.randn(24, 3, 7, 7, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert recalibrate_bn(net, x, batch_size=8) == 2
    # by hand, in float64: each batch norm's input with the dropout off and the first batch norm's new statistics
    with torch.no_grad():
        h1 = net[0](x).double()  # the dropout is off (the model is in eval mode but for its batch norms)
        mean1, var1 = _batch_moments(h1, 3)
        normalised = []
        for b in h1.chunk(3):  # in train mode each batch is normalised with its own statistics
            m, v = b.mean((0, 2, 3), keepdim=True), b.var((0, 2, 3), unbiased=False, keepdim=True)
            w, c = net[2].weight.double().view(1, -1, 1, 1), net[2].bias.double().view(1, -1, 1, 1)
            normalised.append((b - m) / torch.sqrt(v + net[2].eps) * w + c)
        h2 = net[4](torch.relu(torch.cat(normalised)).float()).double()
        mean2, var2 = _batch_moments(h2, 3)
    for bn, mean, var in ((net[2], mean1, var1), (net[5], mean2, var2)):
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-5)
        assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3  # the momentum is restored
    assert not any(m.training for m in net.modules())  # ends in eval mode
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # nothing else moved


def test_recalibrate_bn_of_a_network_without_batch_norms_does_nothing():
    net = nn.Sequential(nn.Linear(3, 2))
    assert recalibrate_bn(net, torch.randn(4, 3)) == 0


def test_batch_statistics_normalise_with_the_batch_and_keep_the_running_statistics():
    net = _net().eval()
    bn = net[2]
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(6, 5, 4, 4, generator=torch.Generator().manual_seed(2)) * 3 - 1
    with batch_statistics(net):
        assert not net[1].training  # the dropout stays off
        got = bn(x)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in saved.items() if "num_batches" not in k)
    assert not bn.training and bn.momentum == 0.3


@pytest.mark.parametrize("batch_size", [5, 24])
def test_recalibrate_bn_weighs_every_batch_the_same(batch_size):
    # a cumulative average of the batch statistics, however many batches (the last one may be short)
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(10.0)
    bn.num_batches_tracked.fill_(100)
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(4)) + torch.tensor([1.0, -2.0, 0.5])
    recalibrate_bn(nn.Sequential(bn), x, batch_size=batch_size)
    chunks = x.double().split(batch_size)
    want_mean = torch.stack([c.mean(0) for c in chunks]).mean(0)
    want_var = torch.stack([c.var(0, unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(bn.running_mean.double(), want_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), want_var, rtol=1e-6, atol=1e-6)
