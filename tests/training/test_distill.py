"""Distillation (greedyprune.training.distill) against its loss computed by hand: ``T^2 KL(teacher_T ||
student_T)`` averaged over the examples of a batch, on the batch a seeded generator draws; batch norms stay in
eval mode and the teacher does not move."""
import copy
import math

import pytest
import torch
from torch import nn

from greedyprune.training.distill import distill

torch.set_num_threads(1)


def _net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def _kl_by_hand(teacher, student, x, T):
    """``T^2 * mean_i sum_c p_ic (log p_ic - log q_ic)`` with p, q the softmaxes at temperature T."""
    with torch.no_grad():
        zt, zs = teacher(x).double() / T, student(x).double() / T
    total = 0.0
    for i in range(x.shape[0]):
        lp = [float(v) - math.log(sum(math.exp(float(u)) for u in zt[i])) for v in zt[i]]
        lq = [float(v) - math.log(sum(math.exp(float(u)) for u in zs[i])) for v in zs[i]]
        total += sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
    return T * T * total / x.shape[0]


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_the_loss_of_a_step_is_t_squared_times_the_mean_kl_of_its_batch(T):
    teacher, student = _net(0).eval(), _net(1).eval()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(3))
    want = _kl_by_hand(teacher, student, x, T)
    losses = distill(student, teacher, lambda step, generator: x, steps=1, lr=1e-3, temperature=T)
    assert losses[0] == pytest.approx(want, rel=1e-5)


def test_batches_come_from_the_seeded_generator_and_the_teacher_and_the_statistics_stay():
    teacher, student = _net(0), _net(1)
    before_teacher = copy.deepcopy(teacher.state_dict())
    stats = {k: v.clone() for k, v in student.state_dict().items() if "running" in k or "num_batches" in k}
    X = torch.randn(20, 6, generator=torch.Generator().manual_seed(4))
    first = X[torch.randint(20, (5,), generator=torch.Generator().manual_seed(9))]
    want = _kl_by_hand(teacher.eval(), copy.deepcopy(student).eval(), first, 2.0)
    losses = distill(student, teacher.train(), X, steps=25, lr=3e-3, batch_size=5, temperature=2.0, seed=9)
    assert losses[0] == pytest.approx(want, rel=1e-5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in stats.items())  # batch norms in eval mode
    assert not student.training
    assert _kl_by_hand(teacher, student, X, 2.0) < _kl_by_hand(teacher, _net(1).eval(), X, 2.0)  # it did distil
