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


def _fresh_run(steps, X, **kw):
    student = _net(1)
    distill(student, _net(0), X, steps=steps, **kw)
    return student


@pytest.mark.parametrize("lr, eval_every", [(3e-3, 4), (0.2, 2)])
def test_a_held_out_set_keeps_the_weights_of_its_best_measurement(lr, eval_every):
    """The student ends as a run of ``best_step`` steps without ``holdout`` (the measurements draw no random
    numbers), its KL on the held-out inputs is the record's lowest, the record's steps are 0, every
    ``eval_every`` and the last, and each value is the KL computed by hand at that many steps."""
    X = torch.randn(20, 6, generator=torch.Generator().manual_seed(4))
    H = 3 * torch.randn(9, 6, generator=torch.Generator().manual_seed(5)) + 2  # not where the steps draw from
    kw = dict(lr=lr, batch_size=5, temperature=2.0, seed=9)
    student = _net(1)
    losses = distill(student, _net(0), X, steps=10, holdout=H, eval_every=eval_every, **kw)
    assert len(losses) == 10
    assert [s for s, _ in losses.holdout] == sorted({0, *range(eval_every, 10, eval_every), 10})
    for s, kl in losses.holdout:
        assert kl == pytest.approx(_kl_by_hand(_net(0).eval(), _fresh_run(s, X, **kw).eval(), H, 2.0), rel=1e-6)
    assert losses.best_step == min(losses.holdout, key=lambda p: p[1])[0]
    assert 0 < losses.best_step < 10 if lr == 0.2 else losses.best_step == 10  # a middle one is restored
    want = _fresh_run(losses.best_step, X, **kw)
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in student.state_dict().items())
    assert not student.training


def test_steps_that_only_hurt_the_held_out_set_leave_the_pruned_weights():
    """A linear student equal to the teacher on the held-out inputs (they live on the last three coordinates, the
    student's error on the first three): every step moves the bias, so every measurement after the first is
    worse, and the student must end with its own weights."""
    torch.manual_seed(0)
    teacher = nn.Linear(6, 5)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.weight[:, :3] += torch.randn(5, 3)
    start = copy.deepcopy(student.state_dict())
    X, H = torch.randn(20, 6), torch.randn(9, 6)
    X[:, 3:], H[:, :3] = 0, 0
    losses = distill(student, teacher, X, steps=6, lr=0.1, batch_size=5, seed=9, holdout=H, eval_every=2)
    assert losses.holdout[0] == (0, pytest.approx(0.0, abs=1e-12))
    assert losses.best_step == 0 and all(kl > 1e-6 for _, kl in losses.holdout[1:])
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())


@pytest.mark.parametrize("holdout, message", [([[0.0] * 6], "holdout must be a tensor"),
                                              (torch.zeros(0, 6), "holdout is empty")])
def test_a_bad_holdout_is_refused_by_name(holdout, message):
    from greedyprune.errors import InvalidOptionError, InvalidTypeError
    with pytest.raises((InvalidOptionError, InvalidTypeError), match=message):
        distill(_net(1), _net(0), torch.randn(4, 6), steps=2, holdout=holdout)


def test_a_diverging_step_leaves_the_best_held_out_weights_and_says_which():
    X = torch.randn(20, 6, generator=torch.Generator().manual_seed(4))
    H = 3 * torch.randn(9, 6, generator=torch.Generator().manual_seed(5)) + 2

    def inputs(step, generator):  # the batches of a tensor run, then a NaN batch at step 4
        x = X[torch.randint(20, (5,), generator=generator)]
        return x * float("nan") if step == 4 else x

    student = _net(1)
    with pytest.raises(FloatingPointError, match=r"at step 4.*holds the weights of step (\d+)") as caught:
        distill(student, _net(0), inputs, steps=10, lr=0.2, seed=9, holdout=H, eval_every=1)
    best = int(__import__("re").search(r"weights of step (\d+)", str(caught.value)).group(1))
    want = _fresh_run(best, X, lr=0.2, batch_size=5, seed=9)
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in student.state_dict().items())
