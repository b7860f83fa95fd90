"""Tests of greedyprune.metrics: closed-form MACs, parameter counts, latency, reports, validation."""
import math

import pytest
import torch
from torch import nn

from greedyprune.metrics import (
    compare_models,
    count_macs,
    count_parameters,
    measure_latency,
    model_report,
)


def _small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("cin, cout, k, stride, padding, groups, side", [
    (3, 8, 3, 1, 1, 1, 32),
    (3, 8, 3, 2, 1, 1, 17),
    (8, 16, 3, 1, 0, 4, 10),     # grouped
    (16, 16, 3, 2, 1, 16, 9),    # depthwise
    (5, 7, 1, 1, 0, 1, 6),
    (4, 6, (3, 5), 1, (1, 2), 2, 11),
])
def test_conv_macs_closed_form(cin, cout, k, stride, padding, groups, side):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    hout = (side + 2 * ph - kh) // stride + 1
    wout = (side + 2 * pw - kw) // stride + 1
    assert count_macs(conv, (1, cin, side, side)) == cout * (cin // groups) * kh * kw * hout * wout
    assert count_macs(conv, (3, cin, side, side)) == 3 * cout * (cin // groups) * kh * kw * hout * wout


@pytest.mark.parametrize("bias", [True, False])
def test_linear_macs_closed_form(bias):
    lin = nn.Linear(20, 7, bias=bias)
    assert count_macs(lin, (1, 20)) == 20 * 7
    assert count_macs(lin, torch.randn(5, 20)) == 5 * 20 * 7


def test_only_convs_and_matmuls_count():
    assert count_macs(_small_net(), (1, 3, 16, 16)) == 8 * 3 * 9 * 16 * 16 + 8 * 4
    assert count_macs(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), (1, 3, 8, 8)) == 0


def test_count_parameters():
    net = _small_net()
    assert count_parameters(net) == (8 * 3 * 9 + 8) + 2 * 8 + (8 * 4 + 4)
    shared = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(shared, shared)) == 12  # shared weights count once
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert count_parameters(frozen) == 6
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters("net")


def test_count_macs_leaves_model_unchanged():
    net = _small_net()
    net.train()
    net[1].eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_macs(net, (2, 3, 8, 8))
    assert net.training and not net[1].training and all(m.training for i, m in enumerate(net) if i != 1)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics untouched


def test_count_macs_uses_model_dtype_and_tensor_input():
    net = _small_net().double()
    assert count_macs(net, (1, 3, 8, 8)) == count_macs(_small_net(), torch.randn(1, 3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("bad, exc, match", [
    ("1,3,32,32", TypeError, "1,3,32,32"),
    (32, TypeError, "int 32"),
    ((1, 0, 4, 4), ValueError, r"\(1, 0, 4, 4\)"),
    ((1, 3, 4.0, 4), ValueError, "positive ints"),
    ((), ValueError, "non-empty"),
    ((1, True, 4, 4), ValueError, "True"),
])
def test_count_macs_rejects_bad_shapes(bad, exc, match):
    with pytest.raises(exc, match=match):
        count_macs(_small_net(), bad)


def test_measure_latency():
    net = _small_net()
    net.train()
    torch.set_num_threads(1)
    res = measure_latency(net, (1, 3, 16, 16), repeats=7, warmup=1, threads=2)
    assert torch.get_num_threads() == 1 and net.training
    for key in ("median", "p10", "p90", "mean", "min", "max"):
        assert res[key] > 0 and math.isfinite(res[key])
    assert res["p10"] <= res["median"] <= res["p90"] and res["min"] <= res["max"]
    assert res["repeats"] == 7 and res["threads"] == 2 and res["device"] == "cpu"
    assert res["input_shape"] == (1, 3, 16, 16)
    measured = measure_latency(net, torch.randn(2, 3, 8, 8), repeats=1, warmup=0, threads=None)
    assert measured["input_shape"] == (2, 3, 8, 8)


def test_measure_latency_restores_threads_on_error():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    torch.set_num_threads(1)
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), (1, 3), repeats=1, warmup=0, threads=2)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("kw, match", [
    ({"repeats": 0}, "repeats must be an int >= 1, got 0"),
    ({"warmup": -1}, "warmup must be an int >= 0, got -1"),
    ({"threads": 0}, "threads must be a positive int or None, got 0"),
    ({"repeats": 2.5}, "got 2.5"),
    ({"device": "tpu-ish"}, "tpu-ish"),
    ({"device": "meta"}, "model is on cpu"),
])
def test_measure_latency_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        measure_latency(_small_net(), (1, 3, 8, 8), **kw)


def test_model_report_and_compare():
    big, small = _small_net(), nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                                              nn.Flatten(), nn.Linear(4, 4))
    rep = model_report(big, (1, 3, 8, 8))
    assert rep == {"params": count_parameters(big), "macs": count_macs(big, (1, 3, 8, 8)), "input_shape": (1, 3, 8, 8)}
    cmp = compare_models(big, small, (1, 3, 8, 8))
    assert cmp["macs_ratio"] == pytest.approx((4 * 27 * 64 + 16) / (8 * 27 * 64 + 32))
    assert cmp["params_ratio"] == pytest.approx(count_parameters(small) / count_parameters(big))
    assert cmp["macs_reduction"] == pytest.approx(1 - cmp["macs_ratio"])
    assert math.isnan(compare_models(nn.ReLU(), nn.ReLU(), (1, 3))["macs_ratio"])


def test_layer_macs_of_a_nested_model_are_each_layers_own_closed_form():
    from greedyprune.metrics import layer_macs

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, padding=1)
            self.inner = nn.Sequential(nn.Conv2d(6, 5, 1, stride=2), nn.ReLU())

        def forward(self, x):
            return self.inner(self.conv(x))

    net = nn.Sequential(nn.Conv2d(3, 4, 3), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 7))
    macs = layer_macs(net, (2, 3, 10, 10))
    # per layer, batch of 2: Cout * Cin * kh * kw * Hout * Wout; containers (1, 1.inner) do nothing of their own
    assert macs == {"0": 2 * 4 * 3 * 9 * 8 * 8, "1.conv": 2 * 6 * 4 * 9 * 8 * 8, "1.inner.0": 2 * 5 * 6 * 4 * 4,
                    "4": 2 * 5 * 7}
    assert sum(macs.values()) == count_macs(net, (2, 3, 10, 10))


_FRESH_PROCESS_COUNT = r"""
import json, sys, torch
from torch import nn
import torch.nn.functional as F
from greedyprune.metrics import _flop_counter, count_macs, layer_macs

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, groups=4)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        h = self.grouped(self.conv(x)).flatten(2).transpose(1, 2)          # (B, 36, 8)
        q = self.fc(h)                                                      # (B, 36, 6)
        a = F.scaled_dot_product_attention(q, q, q)                         # matmuls without a module
        return (a @ q.transpose(1, 2)).sum()

torch.manual_seed(0)
net = Net()
light = (count_macs(net, (2, 3, 8, 8)), layer_macs(net, (2, 3, 8, 8)))
light_is_torchs = type(_flop_counter()) is __import__("torch.utils.flop_counter").utils.flop_counter.FlopCounterMode
dynamo_after_light = "torch._dynamo" in sys.modules
import torch._dynamo  # noqa: F401,E402 - from here on the library uses torch's own FlopCounterMode
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
with FlopCounterMode(display=False) as c, torch.no_grad():
    net(torch.randn(2, 3, 8, 8))
print(json.dumps({"light": light, "dynamo_after_light": dynamo_after_light, "light_is_torchs": light_is_torchs,
                  "standard_is_torchs": type(_flop_counter()) is FlopCounterMode, "reference": c.get_total_flops() // 2,
                  "standard": (count_macs(net, (2, 3, 8, 8)), layer_macs(net, (2, 3, 8, 8)))}))
"""


def test_macs_counted_without_importing_dynamo_equal_flop_counter_modes():
    """In a fresh process the count runs without importing torch._dynamo (~1.4 s) and gives exactly what
    torch's FlopCounterMode gives, module attribution included; once dynamo is loaded the library uses
    FlopCounterMode itself, with the same numbers."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_COUNT], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dynamo_after_light"] is False
    assert got["light_is_torchs"] is False and got["standard_is_torchs"] is True
    total, per_layer = got["light"]
    assert total == got["reference"] > 0
    assert [total, per_layer] == got["standard"]
    # conv 2*8*27*64, grouped 2*8*18*36, fc 2*36*8*6; the attention's matmuls belong to no layer
    assert per_layer == {"conv": 2 * 8 * 27 * 64, "grouped": 2 * 8 * 18 * 36, "fc": 2 * 36 * 8 * 6}
    assert total > sum(per_layer.values())
