"""Convolutional networks for the deep-network pruning experiments.

Every model is built by :func:`get_model` from a name in :data:`MODEL_NAMES`:

* ``resnet20``, ``resnet32``, ``resnet56`` -- the CIFAR ResNets of He et al. (2016): 3x3 stem conv
  with 16 channels, three stages of n = (depth - 2) / 6 BasicBlocks with 16/32/64 channels and
  strides 1/2/2, global average pool, one Linear ``model.fc``. Option ``shortcut="A"|"B"``.
* ``resnet18``, ``resnet34`` -- BasicBlocks [2, 2, 2, 2] / [3, 4, 6, 3] with widths 64/128/256/512, 3x3
  stride-1 stem without max-pool (the usual 32x32 adaptation of torchvision's), projection shortcuts,
  classifier ``model.fc``.
* ``mobilenetv2`` -- MobileNetV2 (Sandler et al. 2018) with CIFAR strides, classifier
  ``model.classifier``.
* ``mobilenetv3_small`` -- MobileNetV3-Small (:mod:`greedyprune.models.mobilenetv3`), stride 1 in the stem and
  first block for 32x32 / 28x28 inputs (``small_inputs=False``: the ImageNet strides), classifier
  ``model.classifier``.
* ``vgg16`` -- VGG-16 with BatchNorm (configuration D), the pruning papers' CIFAR variant,
  final Linear ``model.classifier``. Option ``head="mlp"|"linear"``.

Design choices
--------------
* **Inputs.** All models take ``(B, in_channels, H, W)`` images and are checked on 1x28x28 and
  3x32x32. They end in a global average pool (adaptive, so any size that survives the strides works)
  and a final ``nn.Linear``, ``model.fc`` or ``model.classifier`` (:func:`classifier_layer` finds
  it); the stem convolution is the first ``nn.Conv2d`` in ``model.modules()`` order
  (:func:`stem_conv`).
* **Traceability.** Every ``forward`` has static control flow only (Python branches depend on
  attributes fixed at construction, never on tensor values), so ``torch.fx.symbolic_trace`` and
  Torch-Pruning's autograd-based ``DependencyGraph`` both work. Note that
  ``DependencyGraph.build_dependency`` calls ``model.eval()`` and does not restore training mode.
* **ResNet shortcuts.** ``shortcut="B"`` (default) uses a projection (1x1 conv with the block's
  stride + BatchNorm) only where the shape changes and the identity elsewhere.
  ``shortcut="A"`` is the original parameter-free CIFAR shortcut of He et al., the one whose
  counts the L1-norm filter pruning (Li et al. 2017) and "Rethinking the value of network
  pruning" (Liu et al. 2019) papers report: ``x[:, :, ::2, ::2]`` followed by zero-padding the
  channels with ``F.pad``, half of the new channels before the old ones and half after (as in
  the widely used PyTorch reproduction of He et al.'s CIFAR ResNets). The Li et al. /
  "Rethinking" code uses a 2x2 average pool and appends the zeros after the old channels
  instead; neither has parameters or counted multiply-adds, so the counts are the same. A
  zero-padded stream cannot be pruned consistently (the padded channels of the new stream have
  no producer), so these models list every module that writes into a residual stream in
  :meth:`ResNet.greedyprune_skip_layers`: the stem conv and its BN and every block's second conv
  and its BN. Pruners should pass those as ignored layers and prune only the blocks' inner
  channels (conv1 outputs), as those papers do. All ResNets define the method; projection
  ResNets return ``[]``.
* **VGG-16.** The published CIFAR VGG-16 count (Li et al. 2017, Table 2: 3.13e8 FLOPs, i.e.
  313,463,808 multiply-adds) is that of the network in their code (and in the "Rethinking" code):
  13 conv-BN-ReLU layers with four max-pools, a 2x2 average pool in place of the fifth max-pool,
  then Linear(512, 512) -> BatchNorm1d -> ReLU -> Linear(512, classes). That is the default
  (``head="mlp"``; the hidden layer is ``model.pre_classifier``). ``head="linear"`` gives the
  single-Linear variant (313,201,664 multiply-adds: 512 x 512 fewer). The average pool is an
  ``AdaptiveAvgPool2d(1)``, so 28x28 inputs work too (28 -> 14 -> 7 -> 3 -> 1 after the four
  max-pools; five max-pools would have reached 0 and failed).
* **MobileNetV2 for 32x32.** Stem 3x3 conv with stride 1; the configuration is the ImageNet one
  with its first two stride-2 stages set to stride 1. Expansion blocks follow torchvision (no 1x1
  expansion conv when t = 1, linear bottleneck, residual add only when stride 1 and in == out).
  ReLU6 throughout; no dropout, so the classifier is a bare ``nn.Linear``.
* **Initialisation.** Convs ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, BatchNorm
  weight 1 / bias 0, Linear layers PyTorch's default. ``get_model(..., seed=s)`` draws the
  initialisation under ``torch.random.fork_rng`` from ``s``, leaving the global RNG untouched.
* **Counts** (multiply-adds as counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions
  and the Linear layers' matmuls, not BN / ReLU / pooling / additions; 3x32x32 input, 10 classes):
  ResNet-56 "A" 125,485,696 MACs / 853,018 parameters, ResNet-56 "B" 125,747,840 / 855,770,
  VGG-16 313,463,808 MACs / 14,987,722 parameters; see :mod:`greedyprune.metrics`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidOptionError, InvalidTypeError

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "BasicBlock",
    "InvertedResidual",
    "MobileNetV2",
    "PadShortcut",
    "ResNet",
    "classifier_layer",
    "get_model",
    "skip_layers",
    "stem_conv",
]

SHORTCUTS = ("A", "B")
# configuration D without its fifth max-pool: VGG puts a global average pool there (see VGG).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# (expansion t, output channels c, repeats n, first stride s); the ImageNet table with the strides of
# its 2nd and 3rd rows (the first two stride-2 stages) set to 1 for 32x32 inputs.
MOBILENETV2_CIFAR_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_shortcut(shortcut) -> str:
    if shortcut not in SHORTCUTS:
        raise InvalidOptionError(f"shortcut must be 'A' (zero-pad) or 'B' (projection), got {shortcut!r}")
    return shortcut


def init_weights(model: nn.Module) -> None:
    """He initialisation in place: convs ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` with zero
    biases, BatchNorm / GroupNorm weight 1 and bias 0; Linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------- ResNets
class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels from ``in_ch`` to ``out_ch``.

    Args:
        in_ch, out_ch: Channels of the block's input and output stream (``out_ch >= in_ch``).
        stride: Spatial subsampling (``x[:, :, ::stride, ::stride]``), matching the block's strided conv.

    Notes:
        The new channels are split as in the reference CIFAR code: ``(out_ch - in_ch) // 2`` zeros
        before the old channels and the rest after (``planes // 4`` on each side for a doubling).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if out_ch < in_ch:
            raise InvalidOptionError(f"PadShortcut cannot reduce channels ({in_ch} -> {out_ch})")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.pad_front = (out_ch - in_ch) // 2
        self.pad_back = out_ch - in_ch - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"{self.in_ch}, {self.out_ch}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_ch, out_ch: Input and output channels.
        stride: Stride of ``conv1`` (and of the shortcut).
        shortcut: Used only when the shape changes: "A" is :class:`PadShortcut`, "B" a 1x1 conv + BN
            projection. Otherwise the shortcut is ``nn.Identity``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        _check_shortcut(shortcut)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of :class:`BasicBlock` stages with a 3x3 stride-1 stem and no max-pool.

    Stage ``i`` (``model.layer1``, ``model.layer2``, ...) has ``blocks[i]`` blocks of ``widths[i]``
    channels; its first block has stride 1 for the first stage and 2 for the others. The stem conv
    (``model.conv1``, ``model.bn1``) has ``widths[0]`` channels; the classifier is ``model.fc``.

    Args:
        blocks: Blocks per stage, e.g. ``(9, 9, 9)`` for ResNet-56, ``(3, 4, 6, 3)`` for ResNet-34.
        widths: Channels per stage, same length as ``blocks``.
        num_classes, in_channels: Output classes and input image channels.
        shortcut: Shortcut where the shape changes (see :class:`BasicBlock`); default "B" (projection).
    """

    def __init__(self, blocks, widths, num_classes: int = 10, in_channels: int = 3, shortcut: str = "B"):
        super().__init__()
        blocks, widths = tuple(blocks), tuple(widths)
        if not blocks or len(blocks) != len(widths):
            raise InvalidOptionError(
                f"blocks and widths must be non-empty and of equal length, got {blocks} and {widths}")
        for b in blocks:
            _check_positive_int("blocks per stage", b)
        for w in widths:
            _check_positive_int("stage width", w)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        self.shortcut_type = _check_shortcut(shortcut)
        self.blocks_per_stage, self.widths = blocks, widths
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(in_ch, w, stride, shortcut))
                in_ch = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The stages ``[layer1, layer2, ...]``."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.blocks_per_stage))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)

    def greedyprune_skip_layers(self) -> list[nn.Module]:
        """Modules whose output channels must not be pruned.

        Returns:
            For ``shortcut="A"``: every module writing into a residual stream (``conv1``, ``bn1``
                and each block's ``conv2`` and ``bn2``), since a zero-padded shortcut ties stream
                channels to padding that has no producer. For projection ResNets: ``[]``.
        """
        if self.shortcut_type != "A":
            return []
        layers: list[nn.Module] = [self.conv1, self.bn1]
        for stage in self.stages:
            for block in stage:
                layers += [block.conv2, block.bn2]
        return layers


# ------------------------------------------------------------------------------------- MobileNetV2
def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand -> ReLU6] -> 3x3 depthwise (stride) -> ReLU6 -> 1x1 linear project.

    Args:
        in_ch, out_ch: Input and output channels.
        stride: Stride of the depthwise conv.
        expand_ratio: Hidden width is ``in_ch * expand_ratio``; with 1 there is no expansion conv.

    Notes:
        ``use_res`` (stride 1 and ``in_ch == out_ch``) is fixed at construction, so ``forward`` is
        fx-traceable.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_ch, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for small (32x32) images.

    ``features`` = stem (3x3 conv, 32 ch, stride ``stem_stride``) -> inverted residual blocks of
    ``cfg`` -> 1x1 conv to ``last_channels``; then global average pool and ``classifier``
    (an ``nn.Linear``).

    Args:
        num_classes, in_channels: Output classes and input image channels.
        cfg: Expansion, output channels, repeats, first stride per stage; default
            :data:`MOBILENETV2_CIFAR_CFG`.
        stem_stride: Stride of the stem conv (1 for CIFAR, 2 for ImageNet).
        last_channels: Width of the final 1x1 conv (1280).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, cfg=MOBILENETV2_CIFAR_CFG,
                 stem_stride: int = 1, last_channels: int = 1280):
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, 32, 3, stride=stem_stride)]
        in_ch = 32
        for t, c, n, s in cfg:
            for j in range(n):
                layers.append(InvertedResidual(in_ch, c, s if j == 0 else 1, t))
                in_ch = c
        layers.append(_conv_bn_relu6(in_ch, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------- VGG
class VGG(nn.Module):
    """VGG with BatchNorm for small images: conv3x3(pad 1)-BN-ReLU ``features``, global pool, head.

    Args:
        cfg: Conv widths, "M" for a 2x2 max-pool. :data:`VGG16_CFG` is configuration D with its fifth
            max-pool replaced by the global average pool after ``features``.
        num_classes, in_channels: Output classes and input image channels.
        head: ``"mlp"`` (default): ``pre_classifier`` = Linear(512, 512) -> BatchNorm1d -> ReLU, then
            ``classifier`` = Linear(512, num_classes) -- the VGG-16 of Li et al. (2017) and of the
            "Rethinking" code, whose 3.13e8 FLOPs (313,463,808 multiply-adds on 32x32) include the
            512x512 layer. ``"linear"``: ``pre_classifier`` is ``nn.Identity`` and ``classifier`` the
            only Linear (313,201,664 multiply-adds on 32x32).

    Notes:
        ``model.classifier`` is always the final ``nn.Linear``. The global average pool plays the
        part of the fifth max-pool: on 32x32 it averages the last 2x2 map (as the reference code's
        ``AvgPool2d(2)`` does), on 28x28 the four max-pools give 28 -> 14 -> 7 -> 3 -> 1 and it is the
        identity, so the head sees 512 features on both. With ``head="mlp"`` a training-mode forward
        needs a batch of at least 2 (BatchNorm1d); evaluation mode works on batch 1.
    """

    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, in_channels: int = 3, head: str = "mlp"):
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        if head not in ("mlp", "linear"):
            raise InvalidOptionError(f"head must be 'mlp' or 'linear', got {head!r}")
        self.head = head
        layers: list[nn.Module] = []
        ch = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                _check_positive_int("VGG conv width", v)
                layers += [nn.Conv2d(ch, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                ch = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if head == "mlp":
            self.pre_classifier = nn.Sequential(nn.Linear(ch, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True))
            ch = 512
        else:
            self.pre_classifier = nn.Identity()
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.pre_classifier(x))


# ------------------------------------------------------------------------------------------ factory
def _cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int, shortcut: str = "B", width: int = 16) -> nn.Module:
        _check_positive_int("width", width)
        return ResNet((n, n, n), (width, 2 * width, 4 * width), num_classes, in_channels, shortcut)

    return build


def _resnet34(num_classes: int, in_channels: int, shortcut: str = "B") -> nn.Module:
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels, shortcut)


def _resnet18(num_classes: int, in_channels: int, shortcut: str = "B") -> nn.Module:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, shortcut)


def _mobilenetv2(num_classes: int, in_channels: int) -> nn.Module:
    return MobileNetV2(num_classes, in_channels)


def _vgg16(num_classes: int, in_channels: int, head: str = "mlp") -> nn.Module:
    return VGG(VGG16_CFG, num_classes, in_channels, head)


def _mobilenetv3_small(num_classes: int, in_channels: int, small_inputs: bool = True) -> nn.Module:
    from .mobilenetv3 import MobileNetV3Small

    return MobileNetV3Small(num_classes, in_channels, small_inputs)


# name -> (builder, accepted keyword arguments beyond num_classes / in_channels / seed)
_BUILDERS: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "resnet8": (_cifar_resnet(8), ("shortcut", "width")),
    "resnet20": (_cifar_resnet(20), ("shortcut", "width")),
    "resnet32": (_cifar_resnet(32), ("shortcut", "width")),
    "resnet56": (_cifar_resnet(56), ("shortcut", "width")),
    "resnet18": (_resnet18, ("shortcut",)),
    "resnet34": (_resnet34, ("shortcut",)),
    "mobilenetv2": (_mobilenetv2, ()),
    "mobilenetv3_small": (_mobilenetv3_small, ("small_inputs",)),
    "vgg16": (_vgg16, ("head",)),
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def get_model(name: str, num_classes: int = 10, in_channels: int = 3, *, seed: int | None = None,
              **kw) -> nn.Module:
    """Build a model by name.

    Args:
        name: One of :data:`MODEL_NAMES` (case-insensitive): ``resnet20``, ``resnet32``, ``resnet56``,
            ``resnet34``, ``mobilenetv2``, ``vgg16``.
        num_classes: Outputs of the classifier Linear.
        in_channels: Input image channels (1 for MNIST-like 28x28, 3 for CIFAR 32x32).
        seed: If given, the weights are initialised from this seed inside ``torch.random.fork_rng``
            (the global RNG state is left as it was); the same seed gives an identical ``state_dict``.
        **kw: Model-specific options: ``shortcut="A"|"B"`` for the ResNets (default "B"), ``width`` for the CIFAR
            ResNets (channels of the first stage, default 16; stages have width, 2 width, 4 width), ``head="mlp"|
            "linear"`` for VGG-16 (default "mlp"), ``small_inputs`` for MobileNetV3-Small (default True).
            Anything else raises ``TypeError``.

    Returns:
        The model in training mode. The classifier is ``model.fc`` (ResNets) or
            ``model.classifier`` (MobileNetV2, VGG-16); see :func:`classifier_layer`.

    Raises:
        ValueError: Unknown name, or a bad value for ``num_classes``, ``in_channels``, ``seed`` or ``shortcut``.
        TypeError: A keyword argument the model does not accept.
    """
    if not isinstance(name, str) or name.lower() not in _BUILDERS:
        raise InvalidOptionError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    key = name.lower()
    builder, accepted = _BUILDERS[key]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        allowed = ", ".join(("num_classes", "in_channels", "seed") + accepted)
        raise InvalidTypeError(f"get_model({key!r}) got unexpected keyword argument(s) {unknown}; accepted: {allowed}")
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    if torch.empty(0).device.type != "meta":
        _check_size(key, builder, num_classes, in_channels, kw)
    if seed is None:
        model = builder(num_classes, in_channels, **kw)
        init_weights(model)
        return model
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidOptionError(f"seed must be a non-negative int or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(num_classes, in_channels, **kw)
        init_weights(model)
    return model


def _check_size(key: str, builder, num_classes: int, in_channels: int, kw: dict) -> None:
    """Options that can make a model huge (a width, many classes or channels) are checked on the meta device
    first: parameters that would not fit in memory are a clear ValueError, not an allocator's failure."""
    big = [v for v in (num_classes, in_channels, kw.get("width")) if isinstance(v, int) and v > 1024]
    if not big:
        return
    options = ", ".join(f"{k}={v}" for k, v in {"num_classes": num_classes, "in_channels": in_channels, **kw}.items())
    fix = "use a smaller width (--model-arg width=...) or fewer classes / channels"
    try:
        with torch.device("meta"):
            model = builder(num_classes, in_channels, **kw)
    except RuntimeError as exc:  # a tensor size that overflows 64 bits
        raise InvalidOptionError(f"get_model({key!r}, {options}) describes tensors too large to exist "
                                 f"({str(exc).splitlines()[0]}); {fix}") from None
    from ..checks import check_model_size

    check_model_size(model, f"get_model({key!r}, {options})", fix)


# ------------------------------------------------------------------------------------------ helpers
def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a model: ``model.fc`` or ``model.classifier``.

    Args:
        model: A model from :func:`get_model` (or any model with such an attribute).

    Returns:
        nn.Linear

    Raises:
        AttributeError: If neither attribute is an ``nn.Linear``.
    """
    for attr in ("fc", "classifier"):
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise AttributeError(f"{type(model).__name__} has no nn.Linear attribute 'fc' or 'classifier'")


def stem_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` in ``model.modules()`` order (the stem convolution)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise InvalidOptionError(f"{type(model).__name__} has no nn.Conv2d")


def skip_layers(model: nn.Module) -> list[nn.Module]:
    """``model.greedyprune_skip_layers()`` if the model defines it, else ``[]``.

    Args:
        model: nn.Module

    Returns:
        Layers whose output channels a pruner must leave alone (pass them as ignored layers).
    """
    fn = getattr(model, "greedyprune_skip_layers", None)
    return list(fn()) if callable(fn) else []
