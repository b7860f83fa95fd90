"""MobileNetV3-Small: the published size at 224x224 (torchvision's 2,542,856 parameters; Howard et al.'s
56M multiply-adds), a by-hand multiply-add count for 32x32 and 28x28 inputs, and traceability."""
import math

import pytest
import torch

from greedyprune.metrics import count_macs
from greedyprune.models import get_model

torch.set_num_threads(1)

# Howard et al. 2019, Table 2 (MobileNetV3-Small): kernel, expanded, out, SE, stride - copied here so that the
# count below does not read the model's own table.
TABLE2 = [(3, 16, 16, 1, 2), (3, 72, 24, 0, 2), (3, 88, 24, 0, 1), (5, 96, 40, 1, 2), (5, 240, 40, 1, 1),
          (5, 240, 40, 1, 1), (5, 120, 48, 1, 1), (5, 144, 48, 1, 1), (5, 288, 96, 1, 2), (5, 576, 96, 1, 1),
          (5, 576, 96, 1, 1)]


def squeeze(c):
    v = max(8, int(c / 4 + 4) // 8 * 8)
    return v + 8 if v < 0.9 * c / 4 else v


def by_hand(size, in_ch, classes, small_inputs):
    """Multiply-adds of convolutions and Linear layers, layer by layer: k*k*cin/groups*cout*H*W."""
    out = lambda h, s: (h + s - 1) // s  # padding k//2: ceil(h / s)  # noqa: E731
    stride = 1 if small_inputs else 2
    h = out(size, stride)
    macs = 9 * in_ch * 16 * h * h
    cin = 16
    for i, (k, exp, cout, se, s) in enumerate(TABLE2):
        if small_inputs and i == 0:
            s = 1
        if exp != cin:
            macs += cin * exp * h * h
        h = out(h, s)
        macs += k * k * exp * h * h  # depthwise
        if se:
            macs += 2 * exp * squeeze(exp)
        macs += exp * cout * h * h
        cin = cout
    macs += cin * 576 * h * h
    return macs + 576 * 1024 + 1024 * classes


def test_published_size_at_224():
    model = get_model("mobilenetv3_small", num_classes=1000, small_inputs=False).eval()
    assert sum(p.numel() for p in model.parameters()) == 2_542_856  # torchvision's mobilenet_v3_small
    macs = count_macs(model, torch.randn(1, 3, 224, 224))
    assert macs == by_hand(224, 3, 1000, small_inputs=False)
    assert math.isclose(macs, 56e6, rel_tol=0.02)  # "56M MAdds", Howard et al. Table 3


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_small_inputs_count_by_hand_and_trace(shape):
    model = get_model("mobilenetv3_small", num_classes=10, in_channels=shape[0], seed=0).eval()
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 10)
    assert count_macs(model, x[:1]) == by_hand(shape[1], shape[0], 10, small_inputs=True)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))


def test_seeded_and_unknown_options():
    a, b = get_model("mobilenetv3_small", seed=1), get_model("mobilenetv3_small", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_model("mobilenetv3_small", width=8)
