"""The readers' least-squares refit (greedyprune.channels.refit) against its closed form computed by hand: the
reader's input patches formed explicitly, the target its output with the group whole, the kept columns solved
by ridge regression towards the folded weights with ``lam = ridge * mean(diag A_KK) * |K| / positions``,
accumulated over several batches; for a convolution and for a linear reader."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from greedyprune.channels import find_groups
from greedyprune.channels.refit import refit_readers

torch.set_num_threads(1)


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(5, 4))
    model[1].running_mean.uniform_(-0.3, 0.3)
    model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def _closed_form(P, W, kept_columns, scale_columns, ridge):
    """The ridge refit by hand: P (columns, positions) the reader's inputs, W (outputs, columns) its weight."""
    target = W @ P
    pk = P[kept_columns]
    gram, cross = pk @ pk.T, pk @ target.T
    lam = ridge * float(torch.diagonal(gram).mean()) * len(kept_columns) / P.shape[1]
    prior = (W * scale_columns)[:, kept_columns]
    solved = torch.linalg.solve(gram + lam * torch.eye(len(kept_columns), dtype=torch.float64),
                                cross + lam * prior.T).T
    out = torch.zeros_like(W)
    out[:, kept_columns] = solved
    return out


@pytest.mark.parametrize("ridge", [0.0, 0.5, 5.0])
def test_conv_reader_refit_is_the_ridge_closed_form_over_all_batches(ridge):
    model = _model()
    x = torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    _, groups = find_groups(model, x[:1], skip=["7"])
    group = next(g for g in groups if g.name == "0")
    counts = torch.tensor([2, 0, 1, 0, 3, 1])
    scale = 6 * counts.double() / counts.sum()
    got = refit_readers(model, group, counts, scale, x, ridge=ridge, batch_size=4)  # batches of 4, 4 and 2
    assert set(got) == {"3"}
    with torch.no_grad():
        h = model[2](model[1](model[0](x))).double()
    P = F.unfold(h, 3, padding=1).transpose(0, 1).reshape(6 * 9, -1)  # (channel x kernel position, positions)
    W = model[3].weight.detach().double().reshape(5, -1)
    kept = torch.nonzero((counts > 0).repeat_interleave(9)).flatten()
    want = _closed_form(P, W, kept, scale.repeat_interleave(9), ridge)
    torch.testing.assert_close(got["3"].double().reshape(5, -1), want, rtol=1e-4, atol=1e-5)


def test_linear_reader_refit_is_the_ridge_closed_form():
    model = _model()
    x = torch.randn(12, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    _, groups = find_groups(model, x[:1], skip=["7"])
    group = next(g for g in groups if g.name == "3")
    counts = torch.tensor([0, 2, 2, 0, 1])
    scale = torch.tensor([0.0, 1.7, 2.1, 0.0, 0.6], dtype=torch.float64)
    got = refit_readers(model, group, counts, scale, x, ridge=0.8, batch_size=5)
    assert set(got) == {"7"}
    with torch.no_grad():
        P = model[:7](x).double().T  # (5 features, 12 examples)
    W = model[7].weight.detach().double()
    want = _closed_form(P, W, torch.tensor([1, 2, 4]), scale, 0.8)
    torch.testing.assert_close(got["7"].double(), want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got["7"][:, [0, 3]], torch.zeros(4, 2))
