"""The divergence the sensitivity curves and the local objective's recalibration read
(greedyprune.channels.sensitivity): the mean over examples of KL(dense || other), by hand, from the models'
log-softmax outputs (the sensitivity curves themselves are checked in ``test_reconstruction.py``)."""
import math

import pytest
import torch
from torch import nn

from greedyprune.channels.sensitivity import log_probs, mean_kl

torch.set_num_threads(1)


def test_mean_kl_is_the_mean_over_examples_of_kl_dense_to_other():
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(5, 4, generator=g, dtype=torch.float64) * 2, 1)
    q = torch.log_softmax(torch.randn(5, 4, generator=g, dtype=torch.float64) * 2, 1)
    by_hand = sum(sum(math.exp(float(p[i, c])) * float(p[i, c] - q[i, c]) for c in range(4)) for i in range(5)) / 5
    assert mean_kl(p, q) == pytest.approx(by_hand, rel=1e-12)
    assert mean_kl(p, q) != pytest.approx(mean_kl(q, p), rel=1e-3)  # the case tells the direction
    assert mean_kl(p, p) == 0.0


def test_log_probs_are_the_log_softmax_of_the_flattened_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Dropout(0.5), nn.Unflatten(1, (2, 3))).eval()  # its callers' mode
    x = torch.randn(70, 3)  # two batches of 64
    got = log_probs(net, x)
    with torch.no_grad():
        z = (net[0](x)).double()  # the dropout off
    assert got.shape == (70, 6)
    torch.testing.assert_close(got, z - torch.logsumexp(z, 1, keepdim=True), rtol=1e-6, atol=1e-6)
