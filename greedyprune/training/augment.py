"""Training-time data augmentation: the standard CIFAR recipe (a random crop of the image padded by 4
pixels on every side, and a horizontal flip with probability 1/2).

Everything random is drawn from a generator seeded by ``(seed, iteration)`` alone, so the augmented batch
of a step is a pure function of the run's seed and the step: a resumed run, or a data-parallel run that
splits the batch over processes, sees exactly the batches of one uninterrupted process. Only training
batches are augmented; evaluation never is.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from ..errors import InvalidOptionError

__all__ = ["AUGMENTATIONS", "CropFlip", "augment_generator", "crop_flip"]

AUGMENTATIONS = ("none", "crop-flip")
PAD = 4


def augment_generator(seed: int, iteration: int) -> torch.Generator:
    """A CPU generator seeded by a hash of ``(seed, iteration)`` (independent of the batch-order stream)."""
    digest = hashlib.sha256(f"greedyprune-augment:{int(seed)}:{int(iteration)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class CropFlip:
    """The random choices of one batch: crop offsets ``dy, dx`` in ``[0, 2 * pad]`` and flip flags.

    Drawn for the whole (global) batch; :meth:`apply` takes the rows ``lo:hi`` of it, so a process that
    holds only part of the batch applies exactly the choices a single process would.
    """

    def __init__(self, batch: int, generator: torch.Generator, pad: int = PAD):
        self.pad = pad
        self.dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        self.dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        self.flip = torch.rand(batch, generator=generator) < 0.5

    def apply(self, x: torch.Tensor, lo: int = 0) -> torch.Tensor:
        """Rows ``lo .. lo + len(x)`` of the batch, cropped and flipped: a new tensor, ``x`` is unchanged."""
        if x.dim() != 4:
            raise InvalidOptionError(
                f"crop-and-flip augmentation needs images (B, C, H, W), got shape {tuple(x.shape)}; "
                f"use augment='none' for flat inputs")
        b, c, h, w = x.shape
        dev = x.device
        dy, dx, flip = (t[lo:lo + b].to(dev) for t in (self.dy, self.dx, self.flip))
        padded = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
        rows = dy[:, None] + torch.arange(h, device=dev)
        cols = dx[:, None] + torch.arange(w, device=dev)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        return padded[torch.arange(b, device=dev)[:, None, None, None],
                      torch.arange(c, device=dev)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def crop_flip(x: torch.Tensor, seed: int, iteration: int, *, batch: int | None = None, lo: int = 0) -> torch.Tensor:
    """The augmented batch of step ``iteration`` of a run seeded by ``seed``.

    Args:
        x: images ``(b, C, H, W)``: the whole batch, or rows ``lo .. lo + b`` of a batch of ``batch`` rows.
        seed, iteration: the run's seed and the step (the choices depend on these alone).
        batch: size of the whole batch (default ``len(x)``).
        lo: the first row of the whole batch that ``x`` holds.

    Returns:
        A new tensor: each image padded by 4 zero pixels per side (zero in the normalised space the
        data is in), cropped back to ``H x W`` at a random offset and flipped left-right with
        probability 1/2.
    """
    choices = CropFlip(len(x) if batch is None else batch, augment_generator(seed, iteration))
    return choices.apply(x, lo)
