"""PruneOptions.memory_format (greedyprune.channels.layout): on a CPU the convolutions run channels-last while
pruning and the model comes back in its own layout; a model that does not compute the same in that layout (a
.view() of a convolution's output) is left as it is under "auto" and refused under "channels_last"."""
import pytest
import torch
from torch import nn

from greedyprune.channels import prune_model
from greedyprune.channels.layout import channels_last_for_run, restore_layout
from greedyprune.errors import InvalidOptionError
from greedyprune.models import get_model

torch.set_num_threads(1)


class _Viewing(nn.Module):
    """A conv net whose head calls .view() on a 4x4 feature map (fails on channels-last tensors)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.view(x.shape[0], -1))


def _data(shape=(1, 12, 12)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, *shape, generator=g), torch.randint(0, 10, (48,), generator=g)


def _layouts_seen(model):
    """Record, at every forward of a conv, whether its weight is channels-last (convs whose weights have one
    layout only: a 1x1 kernel, or one input channel, is contiguous in both)."""
    seen = _Seen()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.in_channels > 1:
            m.register_forward_pre_hook(lambda m, a: seen.append(
                m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()))
            seen.convs += 1
    return seen


class _Seen(list):
    convs = 0


def _weights_contiguous(model):
    return all(p.is_contiguous() for p in model.parameters())


def test_auto_prunes_channels_last_on_a_cpu_and_returns_the_layout_it_was_given():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    seen = _layouts_seen(model)
    data = _data()
    auto = prune_model(model, data, keep_ratio=0.5, eval_examples=16, check=False)
    first = 2 * seen.convs  # check_model_accepts and the trial's reference forward, in the model's own layout
    assert seen.convs >= 4 and seen[:first] == [False] * first
    assert seen[first:] and all(seen[first:])  # then every forward, after each group's removal too, channels-last
    assert _weights_contiguous(auto.model) and _weights_contiguous(model)
    seen.clear()
    kept = prune_model(model, data, keep_ratio=0.5, eval_examples=16, check=False, memory_format="keep")
    assert seen and not any(seen)
    assert auto.kept == kept.kept  # the same selections; the numbers to float32 rounding
    x = data[0][:8]
    torch.testing.assert_close(auto.model(x), kept.model(x), rtol=1e-4, atol=1e-4)


def test_a_model_that_views_a_conv_output_is_left_alone_by_auto_and_refused_by_channels_last():
    torch.manual_seed(0)
    model = _Viewing().eval()
    data = _data((1, 8, 8))
    with pytest.raises(RuntimeError, match="view"):
        model.to(memory_format=torch.channels_last)(data[0][:2])  # the premise: it fails channels-last
    model.to(memory_format=torch.contiguous_format)
    seen = _layouts_seen(model)
    result = prune_model(model, data, keep_ratio=0.5, eval_examples=16)
    assert seen[-1] is False and sum(seen) <= 2 and _weights_contiguous(result.model)  # only the trial forward
    with pytest.raises(InvalidOptionError, match=r"does not compute the same with channels-last.*\.view\(\).*"
                                                 r"memory_format='keep'"):
        prune_model(model, data, keep_ratio=0.5, eval_examples=16, memory_format="channels_last", inplace=True)
    assert _weights_contiguous(model)  # put back before the error


def test_auto_keeps_a_callers_channels_last_model_and_other_devices_and_layerless_models():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval().to(memory_format=torch.channels_last)
    x = _data()[0][:2]
    assert channels_last_for_run(model, x, "auto", torch.device("cpu")) == (False, False)
    plain = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    assert channels_last_for_run(plain, x, "auto", torch.device("meta")) == (False, False)
    assert _weights_contiguous(plain)
    assert channels_last_for_run(plain, x, "keep", torch.device("cpu")) == (False, False)
    assert _weights_contiguous(plain)
    assert channels_last_for_run(plain, x, "auto", torch.device("cpu")) == (True, True)
    assert not _weights_contiguous(plain)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert channels_last_for_run(mlp, torch.randn(2, 4), "auto", torch.device("cpu")) == (False, False)
    with pytest.raises(InvalidOptionError, match="needs a model with 2-d convolutions"):
        channels_last_for_run(mlp, torch.randn(2, 4), "channels_last", torch.device("cpu"))


def test_the_layout_is_restored_when_the_run_fails_after_converting():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    everything = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with pytest.raises(InvalidOptionError, match="no prunable channel group"):
        prune_model(model, _data(), keep_ratio=0.5, eval_examples=16, skip=everything, inplace=True)
    assert _weights_contiguous(model)


def test_a_bad_memory_format_is_refused_by_name():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    with pytest.raises(InvalidOptionError, match="memory_format"):
        prune_model(model, _data(), keep_ratio=0.5, memory_format="nhwc")


@pytest.mark.parametrize("caller_channels_last", [False, True])
def test_the_fine_tune_between_groups_trains_in_the_default_layout(caller_channels_last):
    """torch 2.13's CPU backward of a channels-last 1x1 stride-2 conv corrupts memory (layout.py): the
    fine-tune's forwards (the only ones in train mode with gradients on) must see the default layout, the rest
    channels-last."""
    model = get_model("resnet8", in_channels=1, width=8, seed=0).eval()
    if caller_channels_last:  # "auto" leaves the caller's layout, except around the fine-tune
        model = model.to(memory_format=torch.channels_last)
    training, evaluating = [], []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.in_channels > 1:
            m.register_forward_pre_hook(lambda m, a: (training if m.training and torch.is_grad_enabled()
                                                      else evaluating).append(
                m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()))
    result = prune_model(model, _data((1, 28, 28)), objective="network", keep_ratio=0.5, candidates=3,
                         finetune_steps=2, eval_examples=16, inplace=True)
    assert training and not any(training)
    assert any(evaluating[-20:]) != caller_channels_last and _weights_contiguous(result.model)


class _Asserting(nn.Module):
    """A conv net whose forward insists on contiguous activations (a layer written for that layout)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        if not x.is_contiguous():
            raise ValueError("expects contiguous activations")
        return self.fc(x.mean((2, 3)))


def test_the_trial_forward_falls_back_on_any_error_and_5d_tensors_are_left_alone():
    x = torch.randn(2, 2, 8, 8)
    asserting = _Asserting()
    assert channels_last_for_run(asserting, x, "auto", torch.device("cpu")) == (False, False)
    assert _weights_contiguous(asserting)
    with pytest.raises(InvalidOptionError, match="ValueError: expects contiguous"):
        channels_last_for_run(asserting, x, "channels_last", torch.device("cpu"))
    # a 5-d tensor (a Conv3d's weight) has no channels-last form: Module.to(memory_format=...) raises on it
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    model.volume = nn.Parameter(torch.randn(2, 3, 2, 2, 2))
    before = model.volume.detach().clone()
    with pytest.raises(RuntimeError, match="rank 4"):
        copy_of = get_model("resnet8", in_channels=1, width=4, seed=0)
        copy_of.volume = nn.Parameter(torch.randn(2, 3, 2, 2, 2))
        copy_of.to(memory_format=torch.channels_last)  # the premise
    assert channels_last_for_run(model, _data()[0][:2], "auto", torch.device("cpu")) == (True, True)
    assert model.volume.is_contiguous() and torch.equal(model.volume, before) and not _weights_contiguous(model)
    restore_layout(model)
    assert _weights_contiguous(model)


def test_channels_last_asked_for_a_channels_last_model_keeps_it_channels_last():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval().to(memory_format=torch.channels_last)
    assert channels_last_for_run(model, _data()[0][:2], "channels_last", torch.device("cpu")) == (True, False)
    result = prune_model(model, _data(), keep_ratio=0.5, eval_examples=16, memory_format="channels_last",
                         inplace=True)
    assert not _weights_contiguous(result.model)  # not put back to the default layout
