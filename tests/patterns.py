"""Small models with the layer patterns users bring (no torchvision needed): squeeze-excitation,
ConvNeXt-style blocks (depthwise conv, channels-last LayerNorm and Linear, layer scale), a ViT MLP block on
(batch, tokens, features), DenseNet concatenation, ShuffleNet channel shuffle, ResNeXt grouped
convolutions, auxiliary heads that run only in training, and multi-head attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    def __init__(self, c=8, reduction=2, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Linear(c, c // reduction)
        self.fc2 = nn.Linear(c // reduction, c)
        self.head = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        x = x * s[:, :, None, None]
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """depthwise 7x7 -> permute -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale -> permute + x."""

    def __init__(self, c=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 4, stride=4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + (self.gamma * y).permute(0, 3, 1, 2)
        return self.fc(x.mean((2, 3)))


class ViTMLP(nn.Module):
    """Patch embedding, then tokens (batch, tokens, features) through LayerNorm and an MLP block."""

    def __init__(self, c=8, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, c, 7, stride=7)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(F.gelu(self.fc1(self.norm(t))))
        return self.head(t.mean(1))


class DenseConcat(nn.Module):
    def __init__(self, c=6, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(2 * c)
        self.b = nn.Conv2d(2 * c, c, 3, padding=1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.a(x))], 1)
        return self.fc(F.relu(self.b(F.relu(self.bn(x)))).mean((2, 3)))


class ChannelShuffle(nn.Module):
    def __init__(self, c=8, groups=2, classes=10):
        super().__init__()
        self.groups = groups
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.conv(F.relu(self.stem(x))))
        b, c, h, w = x.shape
        x = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


class GroupedBlock(nn.Module):
    """ResNeXt: 1x1 -> grouped 3x3 (4 groups) -> 1x1."""

    def __init__(self, c=16, groups=4, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.reduce = nn.Conv2d(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.grouped = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(c)
        self.expand = nn.Conv2d(c, c, 1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.bn1(self.reduce(x)))
        y = F.relu(self.bn2(self.grouped(y)))
        return self.fc(F.relu(self.expand(y) + x).mean((2, 3)))


class AuxHead(nn.Module):
    """An auxiliary classifier that runs only in training (GoogLeNet / Inception style)."""

    def __init__(self, c=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.aux = nn.Conv2d(c, classes, 1)
        self.head = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.conv(F.relu(self.stem(x))))
        out = self.fc(F.relu(self.head(x)).mean((2, 3)))
        if self.training:
            return out + 0.3 * self.aux(x).mean((2, 3))
        return out


class Attention(nn.Module):
    def __init__(self, c=8, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, c, 7, stride=7)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


SUPPORTED = {"se": SEBlock, "convnext": ConvNeXtBlock, "vit_mlp": ViTMLP, "dense_concat": DenseConcat,
             "channel_shuffle": ChannelShuffle, "grouped": GroupedBlock}
REFUSED = {"aux_head": AuxHead, "attention": Attention}
