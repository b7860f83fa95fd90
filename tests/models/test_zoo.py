"""Tests of greedyprune.models: published counts, shapes, traceability, Torch-Pruning, shortcut A, seeds."""
import pytest
import torch
import torch.fx
import torch_pruning as tp
from torch import nn

from greedyprune.metrics import count_macs, count_parameters
from greedyprune.models import (
    MODEL_NAMES,
    BasicBlock,
    InvertedResidual,
    PadShortcut,
    ResNet,
    classifier_layer,
    get_model,
    skip_layers,
    stem_conv,
)

INPUTS = {"cifar": (3, 32), "mnist": (1, 28)}  # (in_channels, side)


@pytest.fixture(scope="module")
def models():
    """One model per (name, input kind), built once for the module (5 classes, fixed seed)."""
    return {(name, kind): get_model(name, num_classes=5, in_channels=c, seed=0)
            for name in MODEL_NAMES for kind, (c, _) in INPUTS.items()}


def _example(kind, batch=1):
    c, side = INPUTS[kind]
    return torch.randn(batch, c, side, side, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- published counts (3x32x32, 10 classes)
@pytest.mark.parametrize("shortcut, macs, params", [
    ("A", 125_485_696, 853_018),   # ResNet-56 with the parameter-free zero-pad shortcut
    ("B", 125_747_840, 855_770),   # ResNet-56 with 1x1 projections where the shape changes
])
def test_resnet56_published_counts(shortcut, macs, params):
    model = get_model("resnet56", shortcut=shortcut)
    assert count_macs(model, (1, 3, 32, 32)) == macs
    assert count_parameters(model) == params


def test_vgg16_published_macs():
    assert count_macs(get_model("vgg16"), (1, 3, 32, 32)) == 313_463_808


def test_vgg16_linear_head_drops_exactly_the_hidden_layer():
    mlp, linear = get_model("vgg16", seed=0), get_model("vgg16", head="linear", seed=0)
    assert isinstance(linear.pre_classifier, nn.Identity)
    assert count_macs(mlp) - count_macs(linear) == 512 * 512
    assert count_parameters(mlp) - count_parameters(linear) == 512 * 512 + 512 + 2 * 512  # Linear + BN1d


# ---------------------------------------------------------------- shapes and counts from first principles
def _closed_form_params(model):
    """Parameters from layer hyper-parameters alone (no .parameters() / numel of weights)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += (m.out_channels * (m.in_channels // m.groups) * kh * kw
                      + (m.out_channels if m.bias is not None else 0))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            total += 2 * m.num_features if m.affine else 0
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        elif not list(m.children()):
            assert not list(m.parameters(recurse=False)), f"uncounted leaf with parameters: {m}"
    return total


def _hook_macs(model, x):
    """Multiply-adds from forward hooks: Cout*Cin/g*kh*kw*Hout*Wout per conv, in*out per Linear row."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw
        else:
            total[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_counts(models, name, kind):
    model = models[name, kind]
    x = _example(kind, batch=2)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    state = model.state_dict()
    buffers = {n for n, _ in model.named_buffers()}
    assert count_parameters(model) == _closed_form_params(model) == sum(
        v.numel() for k, v in state.items() if k not in buffers)
    assert count_macs(model, x[:1]) == _hook_macs(model, x[:1])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_mode_forward_and_backward(name):
    model = get_model(name, num_classes=3, in_channels=1, seed=0)
    out = model(torch.randn(2, 1, 28, 28))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_classifier_and_stem(models, name):
    for kind, (c, _) in INPUTS.items():
        model = models[name, kind]
        head = classifier_layer(model)
        assert isinstance(head, nn.Linear) and head.out_features == 5
        assert head is (model.fc if name.startswith("resnet") else model.classifier)
        assert stem_conv(model).in_channels == c
        assert stem_conv(model) is next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_architecture_details():
    r56 = get_model("resnet56")
    blocks = [m for m in r56.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27 and [s[0].conv2.out_channels for s in r56.stages] == [16, 32, 64]
    assert sum(isinstance(b.shortcut, nn.Sequential) for b in blocks) == 2  # projections only at 2 transitions
    r34 = get_model("resnet34")
    assert [len(s) for s in r34.stages] == [3, 4, 6, 3] and r34.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in r34.modules())
    mb = get_model("mobilenetv2")
    ir = [m for m in mb.modules() if isinstance(m, InvertedResidual)]
    assert len(ir) == 17 and sum(b.use_res for b in ir) == 10
    assert any(isinstance(m, nn.ReLU6) for m in mb.modules()) and not any(type(m) is nn.ReLU for m in mb.modules())
    assert stem_conv(mb).stride == (1, 1) and stem_conv(mb).out_channels == 32
    vgg = get_model("vgg16")
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 4


# ---------------------------------------------------------------- fx and Torch-Pruning
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fx_trace_and_dependency_graph(models, name, kind):
    model = models[name, kind]
    gm = torch.fx.symbolic_trace(model)
    x = _example(kind, batch=2)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    assert len(list(graph.get_all_groups())) > 0


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_shortcut_options_fx_and_tp(shortcut):
    model = get_model("resnet20", in_channels=1, shortcut=shortcut, seed=0).eval()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))  # the traced graph computes the same
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    names = {m: n for n, m in model.named_modules()}
    block = model.layer2[0]  # the transition block: stride 2, 16 -> 32 channels
    coupled = {names.get(dep.target.module) for dep, _ in
               graph.get_pruning_group(block.conv2, tp.prune_conv_out_channels, idxs=[0])}
    if shortcut == "A":
        # a parameter-free zero-pad shortcut: Torch-Pruning couples the streams of all stages through the pad
        assert isinstance(block.shortcut, PadShortcut) and not list(block.shortcut.parameters())
        assert {"conv1", "layer1.0.conv2", "layer3.0.conv2", "fc"} <= coupled
        assert not any(name.startswith("layer2.0.shortcut") for name in coupled if name)
    else:
        # a 1x1 projection: stage 2's stream (shortcut conv + every block's conv2) is its own group
        assert isinstance(block.shortcut, nn.Sequential) and isinstance(block.shortcut[0], nn.Conv2d)
        assert block.shortcut[0].stride == (2, 2) and block.shortcut[0].out_channels == 32
        assert {"layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"} <= coupled
        assert not {"conv1", "layer1.0.conv2", "layer3.0.conv2", "fc"} & coupled


# ---------------------------------------------------------------- shortcut "A"
@pytest.mark.parametrize("name, n_blocks", [("resnet20", 9), ("resnet32", 15), ("resnet56", 27)])
def test_shortcut_a_skip_layers_are_exactly_the_stream_writers(name, n_blocks):
    model = get_model(name, shortcut="A")
    skip = model.greedyprune_skip_layers()
    assert skip_layers(model) == skip
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == n_blocks
    expected = {id(model.conv1), id(model.bn1)} | {id(m) for b in blocks for m in (b.conv2, b.bn2)}
    assert {id(m) for m in skip} == expected and len(skip) == len(expected)
    assert sum(isinstance(m, nn.Conv2d) for m in skip) == 1 + n_blocks
    assert sum(isinstance(m, nn.BatchNorm2d) for m in skip) == 1 + n_blocks
    # parameter-free shortcuts at the two transitions, identities elsewhere
    assert sum(isinstance(b.shortcut, PadShortcut) for b in blocks) == 2
    assert all(isinstance(b.shortcut, (PadShortcut, nn.Identity)) for b in blocks)


def test_projection_resnets_skip_nothing():
    for name in ("resnet20", "resnet56", "resnet34"):
        assert get_model(name).greedyprune_skip_layers() == []
    assert skip_layers(get_model("vgg16")) == [] and skip_layers(get_model("mobilenetv2")) == []


def test_pad_shortcut_pads_channels_symmetrically():
    x = torch.randn(2, 4, 6, 6)
    y = PadShortcut(4, 8, 2)(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert y[:, :2].abs().sum() == 0 and y[:, 6:].abs().sum() == 0


@pytest.mark.parametrize("kind", INPUTS)
def test_shortcut_a_prune_block_inner_channels(kind):
    c, _ = INPUTS[kind]
    model = get_model("resnet20", in_channels=c, shortcut="A", seed=0)
    x = _example(kind, batch=2)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    block = model.layer2[0]  # the transition block: stride 2 and a PadShortcut
    group = graph.get_pruning_group(block.conv1, tp.prune_conv_out_channels, idxs=[0, 3, 5])
    own = {id(m) for m in model.modules()}  # the group also lists tp's wrappers of functional ops
    pruned = {id(dep.target.module) for dep, _ in group} & own
    assert pruned == {id(block.conv1), id(block.bn1), id(block.conv2)}  # conv2 only on its input side
    group.prune()
    assert block.conv1.out_channels == 29 and block.bn1.num_features == 29 and block.conv2.in_channels == 29
    assert block.conv2.out_channels == 32  # the stream is untouched
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_shortcut_a_pruner_with_skip_layers_keeps_streams():
    model = get_model("resnet20", shortcut="A", seed=0)
    x = torch.randn(1, 3, 32, 32)
    stream = [m.out_channels for m in model.greedyprune_skip_layers() if isinstance(m, nn.Conv2d)]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=skip_layers(model) + [model.fc])
    pruner.step()
    assert [m.out_channels for m in model.greedyprune_skip_layers() if isinstance(m, nn.Conv2d)] == stream
    assert all(b.conv1.out_channels == b.conv2.out_channels // 2 for s in model.stages for b in s)
    assert count_macs(model) < count_macs(get_model("resnet20", shortcut="A"))
    with torch.no_grad():
        assert model(x).shape == (1, 10)


def test_tp_couples_streams_across_the_zero_pad():
    """Why the stream writers are skipped: Torch-Pruning treats F.pad as an element-wise op, so the
    stem's group runs through the pads into every stage (same indices, pad offset ignored)."""
    model = get_model("resnet20", shortcut="A", seed=0)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1])
    targets = {id(dep.target.module) for dep, _ in group}
    assert id(model.layer3[0].bn2) in targets and id(model.fc) in targets


# ---------------------------------------------------------------- seeds and errors
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_seed_determinism(name):
    rng = torch.get_rng_state()
    a, b, c = (get_model(name, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_get_model_errors():
    with pytest.raises(ValueError, match="resnet20.*vgg16"):
        get_model("resnet19")
    with pytest.raises(TypeError, match="width"):
        get_model("mobilenetv2", width=2)
    with pytest.raises(ValueError, match="width"):
        get_model("resnet20", width=0)
    with pytest.raises(TypeError, match="shortcut"):
        get_model("vgg16", shortcut="A")
    with pytest.raises(ValueError, match="'C'"):
        get_model("resnet56", shortcut="C")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("vgg16", num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        get_model("mobilenetv2", in_channels=2.0)
    with pytest.raises(ValueError, match="seed"):
        get_model("resnet20", seed=-1)
    with pytest.raises(ValueError, match="head"):
        get_model("vgg16", head="conv")
    with pytest.raises(ValueError, match="equal length"):
        ResNet((1, 1), (16,))
    assert isinstance(get_model("ResNet20"), ResNet)  # names are case-insensitive
