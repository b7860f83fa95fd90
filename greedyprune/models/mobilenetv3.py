"""MobileNetV3-Small (Howard et al., "Searching for MobileNetV3", ICCV 2019, Table 2), one of the nets Ye et
al. prune with greedy forward selection.

The layers follow torchvision's ``mobilenet_v3_small`` (expansion omitted when it would not widen, squeeze
and excitation with ``make_divisible(expanded / 4, 8)`` channels, ReLU then Hardsigmoid, Hardswish in the
later blocks; a 1x1 conv to 576 channels, global pooling, Linear(576, 1024) with Hardswish, Linear to the
classes) without the dropout before the classifier, so that training is a deterministic function of the
seed. At 224x224 with 1,000 classes it has torchvision's 2,542,856 parameters and, counted as
:func:`greedyprune.metrics.count_macs` counts (convolutions and Linear layers), 56,510,400 multiply-adds
(the paper's Table 3 quotes 56M MAdds).

``small_inputs=True`` (the default of ``get_model("mobilenetv3_small")``) adapts it to 32x32 and 28x28
images the way the CIFAR MobileNetV2 is adapted: the stem and the first block keep stride 1, so a 32x32
image reaches the last blocks at 4x4 (28x28 at 4x4 too). ``forward`` has static control flow only, so
``torch.fx`` and Torch-Pruning can trace it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidOptionError

__all__ = ["MOBILENETV3_SMALL_CFG", "MobileNetV3Small", "SqueezeExcitation", "make_divisible"]

#: (kernel, expanded channels, out channels, squeeze-and-excitation, activation, stride) per block, Table 2
#: of Howard et al. for MobileNetV3-Small.
MOBILENETV3_SMALL_CFG = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` to ``value``, at least ``divisor`` and not below 90% of ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def _act(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Hardswish(inplace=True)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None):
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(out_ch)]
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """``x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))`` with 1x1 convs ``fc1`` (to ``squeeze`` channels) and ``fc2``."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class InvertedResidualV3(nn.Module):
    """[1x1 expand] -> kxk depthwise (stride) -> [squeeze-excitation] -> 1x1 linear projection, with a
    residual add when the stride is 1 and the channels do not change (fixed at construction)."""

    def __init__(self, in_ch: int, kernel: int, expanded: int, out_ch: int, se: bool, act: str, stride: int):
        super().__init__()
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(_conv_bn(in_ch, expanded, 1, act=act))
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
        layers.append(_conv_bn(expanded, out_ch, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            return x + self.block(x)
        return self.block(x)


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small: ``features`` (stem, 11 blocks, 1x1 conv to 576), global average pool,
    ``pre_classifier`` (Linear(576, 1024) -> Hardswish) and ``classifier`` (the final ``nn.Linear``).

    Args:
        num_classes, in_channels: output classes and input image channels.
        small_inputs: stride 1 in the stem and the first block (32x32 / 28x28 images); False gives the
            ImageNet network (stride 2 there).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, small_inputs: bool = True):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name} must be a positive int, got {value!r}")
        layers: list[nn.Module] = [_conv_bn(in_channels, 16, 3, 1 if small_inputs else 2, act="hardswish")]
        in_ch = 16
        for i, (kernel, expanded, out_ch, se, act, stride) in enumerate(MOBILENETV3_SMALL_CFG):
            if small_inputs and i == 0:
                stride = 1
            layers.append(InvertedResidualV3(in_ch, kernel, expanded, out_ch, se, act, stride))
            in_ch = out_ch
        layers.append(_conv_bn(in_ch, 576, 1, act="hardswish"))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.pre_classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(inplace=True))
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.pre_classifier(x))
