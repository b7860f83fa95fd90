"""Benchmark: eleven common architecture patterns pruned by greedyprune and by Torch-Pruning.

Each pattern is a small plain-torch network built here (2-4 blocks of the pattern plus a stem and a
classifier ``fc``; random seeded weights; input 3x32x32, 10 classes): ResNet-50 bottleneck, ResNeXt,
MobileNetV2 inverted residual, MBConv + squeeze-excite, DenseNet, RegNetY, Inception, SqueezeNet fire,
ConvNeXt, ViT (nn.MultiheadAttention) and a VGG stack with a flatten -> Linear classifier. Data: 64 random
images with random labels. Methods, each under a wall-clock limit (SIGALRM), on a copy of the dense model:

* default: ``greedyprune.prune_model(model, (X, y), keep_ratio=0.5, candidates=8, eval_examples=32)``
  (``objective="auto"``, i.e. the block-reconstruction "local" objective);
* network: the same with ``objective="network"``;
* local_skip: ``objective="local", unsupported="skip"``, run only where the default did not prune;
* tp: Torch-Pruning's ``MagnitudePruner`` (L1 magnitude, ``pruning_ratio=0.5``, classifier ignored,
  ``num_heads`` for attention) then ``pruner.step()``.

Per row: status (pruned / refused: greedyprune's UnsupportedLayerError or ValueError, first line / timeout
/ error), seconds (perf_counter around the call, model copy excluded), MACs and params kept (vs the dense
model), whether the pruned model runs an eval-mode forward, greedyprune's ``report``, the warnings raised and
the 1-minute load average. Rows are appended to ``--out`` as they finish; a rerun skips finished rows.

    python bench/zoo.py                                  # all 11 patterns, all methods, 1 thread
    python bench/zoo.py --patterns vit,convnext --methods default,tp --limit 60 --fresh

Last line: ``default objective: N of 11 pruned; each within Kx of Torch-Pruning's time``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import time
import traceback
import warnings

import torch
from torch import nn
import torch.nn.functional as F


def cbr(cin, cout, k=1, s=1, g=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), act())


class SE(nn.Module):
    def __init__(self, c, r, act=nn.ReLU):
        super().__init__()
        self.reduce, self.act, self.expand = nn.Conv2d(c, r, 1), act(), nn.Conv2d(r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class Bottleneck(nn.Module):
    """1x1 - 3x3 (grouped for ResNeXt / RegNetY, optional SE) - 1x1, projection shortcut when shapes change."""

    def __init__(self, cin, width, cout, stride=1, groups=1, se=0):
        super().__init__()
        self.a, self.b = cbr(cin, width), cbr(width, width, 3, stride, groups)
        self.se = SE(width, se) if se else nn.Identity()
        self.c = nn.Sequential(nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if cin == cout and stride == 1 else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.c(self.se(self.b(self.a(x)))) + self.short(x))


class Net(nn.Module):
    """stem -> blocks -> global average pool -> fc."""

    def __init__(self, stem, blocks, width, head=()):
        super().__init__()
        self.stem, self.blocks, self.head, self.fc = stem, nn.Sequential(*blocks), nn.Sequential(*head), nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.head(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)))


class InvertedResidual(nn.Module):
    """MobileNetV2 (ReLU6) or, with ``se``, EfficientNet's MBConv (SiLU, squeeze-excite)."""

    def __init__(self, cin, cout, t, stride=1, se=False):
        super().__init__()
        act, h = (nn.SiLU if se else nn.ReLU6), cin * t
        self.expand = cbr(cin, h, act=act) if t != 1 else nn.Identity()
        self.dw = cbr(h, h, 3, stride, h, act=act)
        self.se = SE(h, max(1, cin // 4), nn.SiLU) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.res = cin == cout and stride == 1

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.res else y


class DenseLayer(nn.Module):
    def __init__(self, cin, k):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * k, 1, bias=False),
                               nn.BatchNorm2d(4 * k), nn.ReLU(), nn.Conv2d(4 * k, k, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


def dense_block(cin, k, n):
    return [DenseLayer(cin + i * k, k) for i in range(n)]


def transition(cin, cout):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class Inception(nn.Module):
    def __init__(self, cin, c1, r3, c3, r5, c5, cp):
        super().__init__()
        self.b1 = cbr(cin, c1)
        self.b3 = nn.Sequential(cbr(cin, r3), cbr(r3, c3, 3))
        self.b5 = nn.Sequential(cbr(cin, r5), cbr(r5, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, cp))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class Fire(nn.Module):
    def __init__(self, cin, s, e):
        super().__init__()
        self.squeeze, self.e1, self.e3 = nn.Conv2d(cin, s, 1), nn.Conv2d(s, e, 1), nn.Conv2d(s, e, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 layout (no batch norm); the classifier is a 1x1 conv then global pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1), nn.ReLU(), Fire(64, 16, 64), Fire(128, 16, 64),
                                      nn.MaxPool2d(2), Fire(128, 32, 128), Fire(256, 32, 128))
        self.fc = nn.Conv2d(256, 10, 1)

    def forward(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.fc(self.features(x))), 1).flatten(1)


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm (stem and downsampling layers)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.dw, self.norm = nn.Conv2d(d, d, 7, padding=3, groups=d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.full((d,), 0.1))  # layer scale (1e-6 at init in training)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + (self.gamma * self.fc2(F.gelu(self.fc1(y)))).permute(0, 3, 1, 2)


class ViT(nn.Module):
    def __init__(self, d=128, depth=3, heads=4, patch=4):
        super().__init__()
        self.embed = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(d, heads) for _ in range(depth)])
        self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.fc(self.norm(self.blocks(x))[:, 0])


class ViTBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        cfg, layers, cin = [64, 64, "M", 128, 128, "M", 256, 256, "M"], [], 3
        for c in cfg:
            layers.append(nn.MaxPool2d(2) if c == "M" else cbr(cin, c, 3))
            cin = c if c != "M" else cin
        self.features = nn.Sequential(*layers)
        self.hidden, self.fc = nn.Linear(256 * 4 * 4, 256), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(F.relu(self.hidden(self.features(x).flatten(1))))


PATTERNS = {
    "resnet50_bottleneck": lambda: Net(cbr(3, 64, 3), [Bottleneck(64, 32, 128), Bottleneck(128, 64, 256, 2),
                                                      Bottleneck(256, 64, 256)], 256),
    "resnext": lambda: Net(cbr(3, 64, 3), [Bottleneck(64, 64, 128, groups=8), Bottleneck(128, 128, 256, 2, 8),
                                          Bottleneck(256, 128, 256, groups=8)], 256),
    "mobilenetv2": lambda: Net(cbr(3, 32, 3, act=nn.ReLU6), [
        InvertedResidual(32, 16, 1), InvertedResidual(16, 24, 6, 2), InvertedResidual(24, 24, 6),
        InvertedResidual(24, 32, 6, 2), cbr(32, 128, act=nn.ReLU6)], 128),
    "mbconv_se": lambda: Net(cbr(3, 32, 3, act=nn.SiLU), [
        InvertedResidual(32, 16, 1, se=True), InvertedResidual(16, 24, 6, 2, True), InvertedResidual(24, 24, 6, se=True),
        InvertedResidual(24, 40, 6, 2, True), cbr(40, 160, act=nn.SiLU)], 160),
    "densenet": lambda: Net(nn.Conv2d(3, 32, 3, padding=1, bias=False),
                            [*dense_block(32, 16, 4), transition(96, 48), *dense_block(48, 16, 4),
                             nn.BatchNorm2d(112), nn.ReLU()], 112),
    "regnety": lambda: Net(cbr(3, 32, 3), [Bottleneck(32, 48, 48, 2, 3, 8), Bottleneck(48, 96, 96, 2, 6, 12),
                                          Bottleneck(96, 96, 96, 1, 6, 24), Bottleneck(96, 192, 192, 2, 12, 24)], 192),
    "inception": lambda: Net(cbr(3, 64, 3), [Inception(64, 32, 48, 64, 8, 16, 16), nn.MaxPool2d(2),
                                            Inception(128, 64, 64, 96, 16, 48, 32), Inception(240, 64, 64, 96, 16, 48, 32)], 240),
    "squeezenet": SqueezeNet,
    "convnext": lambda: Net(nn.Sequential(nn.Conv2d(3, 64, 4, 4), LayerNorm2d(64)),
                            [ConvNeXtBlock(64), ConvNeXtBlock(64), LayerNorm2d(64), nn.Conv2d(64, 128, 2, 2),
                             ConvNeXtBlock(128), ConvNeXtBlock(128)], 128, head=[nn.LayerNorm(128)]),
    "vit": ViT,
    "vgg": VGG,
}
METHODS = ("default", "network", "local_skip", "tp")


class Timeout(TimeoutError):
    pass


def _alarm(signum, frame):
    raise Timeout("wall-clock limit")


def params(model):
    return sum(p.numel() for p in model.parameters())


def run_method(method, dense, X, y, limit):
    """Prune a copy of ``dense`` with ``method`` under a ``limit``-second timer; returns the pruned model (or
    None) and the row's fields."""
    import greedyprune

    model, row, pruned, report = copy.deepcopy(dense), {}, None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signal.setitimer(signal.ITIMER_REAL, limit)
        t0 = time.perf_counter()
        try:
            if method == "tp":
                import torch_pruning as tp

                heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
                pruner = tp.pruner.MagnitudePruner(model, X[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                                   pruning_ratio=0.5, ignored_layers=[model.fc], num_heads=heads)
                pruner.step()
                pruned = model
            else:
                kw = {"network": {"objective": "network"},
                      "local_skip": {"objective": "local", "unsupported": "skip"}}.get(method, {})
                result = greedyprune.prune_model(model, (X, y), keep_ratio=0.5, candidates=8, eval_examples=32,
                                                 inplace=True, **kw)
                pruned, report = result.model, result.report
            row["status"] = "pruned"
        except Timeout:
            row["status"] = "timeout"
        except Exception as exc:  # noqa: BLE001 - every failure is a result here
            refused = method != "tp" and isinstance(exc, ValueError)  # UnsupportedLayerError is a ValueError
            row.update(status="refused" if refused else "error", exception=type(exc).__name__,
                       message=(str(exc).splitlines() or [""])[0], traceback=traceback.format_exc().splitlines()[-12:])
        finally:
            row["seconds"] = time.perf_counter() - t0
            signal.setitimer(signal.ITIMER_REAL, 0)
    row["warnings"] = sorted({str(w.message).splitlines()[0][:300] for w in caught})
    if report is not None:
        row["report"] = report.to_dict()
    return pruned, row


def measure(pruned, dense, X, row):
    from greedyprune.metrics import count_macs

    row["macs_kept"] = count_macs(pruned, X[:1]) / count_macs(dense, X[:1])
    row["params_kept"] = params(pruned) / params(dense)
    try:
        with torch.no_grad():
            out = pruned.eval()(X[:4])
        row["forward_ok"] = tuple(out.shape) == (4, 10) and bool(torch.isfinite(out).all())
    except Exception as exc:  # noqa: BLE001
        row.update(forward_ok=False, forward_error=f"{type(exc).__name__}: {exc}".splitlines()[0])


def secs(s):
    return f"{s:.2f}s" if s < 10 else f"{s:.1f}s"


def cell(row):
    if row is None:
        return "-"
    if row["status"] == "skipped":
        return "n/a"
    if row["status"] != "pruned":
        return f"{row['status']} {secs(row['seconds'])}"
    bad = "" if row.get("forward_ok") else " (forward fails)"
    return f"pruned {secs(row['seconds'])} MACs {row['macs_kept']:.2f}x{bad}"


def table(rows, patterns):
    got = {(r["pattern"], r["method"]): r for r in rows}
    lines = ["| pattern | default objective | network objective | local+skip | Torch-Pruning | default/TP time |",
             "|---|---|---|---|---|---|"]
    ratios, pruned = [], 0
    for p in patterns:
        d, t = got.get((p, "default")), got.get((p, "tp"))
        ratio = "-"
        if d and t and d["status"] == "pruned" and t["status"] == "pruned":
            ratios.append(d["seconds"] / t["seconds"])
            ratio = f"{ratios[-1]:.1f}x"
        pruned += bool(d and d["status"] == "pruned")
        lines.append(f"| {p} | " + " | ".join(cell(got.get((p, m))) for m in METHODS) + f" | {ratio} |")
    k = f"{max(ratios):.1f}" if ratios else "n/a"
    lines.append(f"\ndefault objective: {pruned} of {len(patterns)} pruned; each within {k}x of Torch-Pruning's time")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--limit", type=float, default=120.0, help="seconds per (pattern, method)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/zoo_cpu.json")
    ap.add_argument("--fresh", action="store_true", help="rerun rows already in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    patterns, methods = args.patterns.split(","), args.methods.split(",")
    unknown = (set(patterns) - set(PATTERNS)) | (set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown patterns / methods: {sorted(unknown)}")
    rows = []
    if os.path.exists(args.out) and not args.fresh:
        with open(args.out) as f:
            rows = json.load(f)
    signal.signal(signal.SIGALRM, _alarm)
    torch.manual_seed(0)
    X, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    print(f"load at start: {os.getloadavg()[0]:.2f}", flush=True)
    for p in patterns:
        torch.manual_seed(0)
        dense = PATTERNS[p]().eval()
        for m in methods:
            if any(r["pattern"] == p and r["method"] == m for r in rows):
                continue
            default = next((r for r in rows if r["pattern"] == p and r["method"] == "default"), None)
            if m == "local_skip" and default is not None and default["status"] == "pruned":
                row = {"status": "skipped", "seconds": 0.0}
            else:
                pruned, row = run_method(m, dense, X, y, args.limit)
                if pruned is not None:
                    measure(pruned, dense, X, row)
            row = {"pattern": p, "method": m, **row, "load1": os.getloadavg()[0], "threads": args.threads}
            rows = [r for r in rows if (r["pattern"], r["method"]) != (p, m)] + [row]
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1, default=str)
            print(f"{p:20s} {m:10s} {cell(row):32s} load {row['load1']:.2f}  {row.get('message', '')[:120]}", flush=True)
    print(f"load at end: {os.getloadavg()[0]:.2f}\n")
    print(table(rows, patterns))


if __name__ == "__main__":
    main()
