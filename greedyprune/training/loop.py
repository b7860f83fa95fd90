"""Pre-training loop for the networks that get pruned: mini-batch SGD or full-batch gradient descent.

The batch at iteration t is a pure function of (seed, t) - each epoch is a fresh permutation drawn from
``seed`` and the epoch number - and so is the learning rate (constant, or the cosine schedule of
:func:`learning_rate`), so a run resumed from a checkpoint takes exactly the steps an uninterrupted run
would. Checkpoints are written atomically (to a temporary file, then renamed). The same loop trains the
two-layer networks (X of shape (m, d)) and the CNNs (images of shape (m, C, H, W), see
:meth:`greedyprune.data.Dataset.images`).
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_finite, non_finite_weights
from ..errors import InvalidOptionError
from ..fileio import load_torch, payload_digest, save_torch
from .augment import AUGMENTATIONS, CropFlip, augment_generator

__all__ = ["TRAIN_LOSSES", "SCHEDULES", "CHECKPOINT_FORMAT", "TrainConfig", "learning_rate", "training_loss",
           "accuracy", "evaluate", "save_checkpoint", "load_checkpoint", "data_digest", "train_step", "param_groups",
           "pretrain"]

TRAIN_LOSSES = ("logistic", "squared", "cross_entropy")
SCHEDULES = ("constant", "cosine")
CHECKPOINT_FORMAT = "greedyprune-train-v1"


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`pretrain`. ``batch_size=None`` is full-batch gradient descent (the theory).

    ``schedule`` is the learning-rate schedule: ``"constant"`` (``lr`` at every step, the default) or
    ``"cosine"`` (``lr * 0.5 * (1 + cos(pi * t / iterations))`` at step t, the CNN recipe of the paper's
    Appendix E); see :func:`learning_rate`.

    ``augment`` is the training-batch augmentation: ``"none"`` (default) or ``"crop-flip"``, the standard
    CIFAR recipe (4-pixel padded random crop and horizontal flip, :mod:`greedyprune.training.augment`),
    drawn from ``(seed, step)`` so that runs stay deterministic and resumable.
    """

    iterations: int = 1000
    lr: float = 0.1
    batch_size: int | None = 128
    loss: str = "logistic"
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    schedule: str = "constant"
    augment: str = "none"

    def validate(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise InvalidOptionError(f"iterations must be an int >= 0, got {self.iterations!r}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise InvalidOptionError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise InvalidOptionError(
                f"batch_size must be a positive int, or None for full-batch GD; got {self.batch_size!r}")
        if self.loss not in TRAIN_LOSSES:
            raise InvalidOptionError(f"unknown loss {self.loss!r}; expected one of {TRAIN_LOSSES}")
        if not 0 <= self.momentum < 1:
            raise InvalidOptionError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise InvalidOptionError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise InvalidOptionError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.augment not in AUGMENTATIONS:
            raise InvalidOptionError(f"unknown augment {self.augment!r}; expected one of {AUGMENTATIONS}")


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The learning rate of step ``iteration`` (0-based) under ``config``'s schedule.

    Args:
        config: Its ``lr``, ``schedule`` and ``iterations`` are used.
        iteration: The step, ``0 <= iteration < config.iterations``.

    Returns:
        ``config.lr`` for ``"constant"``; ``config.lr * 0.5 * (1 + cos(pi * iteration / config.iterations))``
            for ``"cosine"`` (``lr`` at step 0, decaying to nearly 0 at the last step). A pure function of the
            step, so a resumed run uses the same rates as an uninterrupted one.
    """
    if config.schedule == "constant" or config.iterations == 0:
        return float(config.lr)
    if config.schedule == "cosine":
        return float(config.lr) * 0.5 * (1.0 + math.cos(math.pi * iteration / config.iterations))
    raise InvalidOptionError(f"unknown schedule {config.schedule!r}; expected one of {SCHEDULES}")


def _stored_config(stored: dict) -> dict:
    """A checkpoint's config with fields added to :class:`TrainConfig` since it was written set to their
    defaults, so old checkpoints (e.g. without ``schedule``) still resume."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return {**defaults, **stored}


def training_loss(output: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss of a batch: binary cross-entropy on logits, squared error, or softmax cross-entropy."""
    if loss == "logistic":
        return F.binary_cross_entropy_with_logits(output, y.to(output.dtype))
    if loss == "squared":
        return ((output - y.to(output.dtype)) ** 2).reshape(output.shape[0], -1).sum(dim=1).mean()
    if loss == "cross_entropy":
        return F.cross_entropy(output, y)
    raise InvalidOptionError(f"unknown loss {loss!r}; expected one of {TRAIN_LOSSES}")


def accuracy(output: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    """Fraction correct: logit > 0 for "logistic", output > 0.5 against {0,1} labels for "squared",
    argmax for "cross_entropy". NaN for "squared" with targets that are not binary labels."""
    if loss == "logistic":
        return float(((output > 0).to(y.dtype) == y).double().mean())
    if loss == "squared":
        if not bool(((y == 0) | (y == 1)).all()):
            return float("nan")
        return float(((output > 0.5).to(y.dtype) == y).double().mean())
    return float((output.argmax(dim=-1) == y).double().mean())


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: str,
             batch_size: int = 8192) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on (X, y), computed in batches without gradients.

    The model is put in eval mode for the evaluation (BatchNorm uses its running statistics, dropout is
    off) and then returned to the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        outputs = [model(X[a:a + batch_size]) for a in range(0, X.shape[0], batch_size)]
    finally:
        model.train(was_training)
    out = torch.cat(outputs)
    return float(training_loss(out.double(), y, loss)), accuracy(out, y, loss)


def _batch_indices(n: int, batch_size: int | None, seed: int, iteration: int, cache: dict) -> torch.Tensor | None:
    if batch_size is None or batch_size >= n:
        return None  # full batch
    per_epoch = n // batch_size
    epoch, pos = divmod(iteration, per_epoch)
    if cache.get("epoch") != epoch:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        cache["epoch"], cache["perm"] = epoch, torch.randperm(n, generator=gen)
    return cache["perm"][pos * batch_size:(pos + 1) * batch_size]


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """``torch.save`` to ``path`` atomically and with a checksum (see :func:`greedyprune.fileio.save_torch`)."""
    save_torch(path, payload)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`pretrain`, verifying its checksum, with a clear error for anything else."""
    payload = load_torch(path, what="greedyprune training checkpoint", require_checksum=True,
                         map_location=map_location, offer_trust=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InvalidOptionError(
            f"{path} is not a greedyprune training checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return payload


def data_digest(X: torch.Tensor, y: torch.Tensor) -> str:
    """A digest of the training data, stored in training checkpoints so a resume on other data is refused."""
    return payload_digest({"X": X, "y": y})


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, loss: str,
               lr: float | None = None, where: str = "", loss_scale: float = 1.0) -> float:
    """One SGD step on a batch (the only training step in the package); returns the batch loss.

    ``lr``, if given, is set on every parameter group first, times the group's ``"lr_scale"`` (1 unless
    the model asked for others, see :func:`param_groups`). A non-finite loss raises FloatingPointError
    (``where`` says which run and iteration, for the message). ``loss_scale`` multiplies the loss before
    the backward pass (a data-parallel share's weight); the returned loss is unscaled.
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    batch_loss = training_loss(model(x), y, loss)
    if not bool(torch.isfinite(batch_loss)):
        rate = optimizer.param_groups[0]["lr"]
        raise FloatingPointError(f"training diverged{where}: the {loss} loss is {float(batch_loss.detach())}; "
                                 f"lower the learning rate (lr={rate})")
    (batch_loss * loss_scale if loss_scale != 1.0 else batch_loss).backward()
    optimizer.step()
    return float(batch_loss.detach())


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """The optimizer's parameter groups: one, or those of ``model.greedyprune_lr_scales()`` (a list of
    ``(parameters, multiplier)``; the mean-field two-layer net asks for ``lr * N`` on its neurons), each
    with its ``"lr_scale"``."""
    scales = getattr(model, "greedyprune_lr_scales", None)
    if not callable(scales):
        return [{"params": list(model.parameters()), "lr": lr, "lr_scale": 1.0}]
    return [{"params": list(params), "lr": lr * float(mult), "lr_scale": float(mult)}
            for params, mult in scales() if len(list(params))]


def _rng_state(device: torch.device) -> dict:
    """The global RNG state(s) a training step can draw from (dropout): CPU, and the model's CUDA device."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict | None, device: torch.device) -> None:
    if not state:
        return  # a checkpoint written before RNG states were stored
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def pretrain(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
    callback_every: int | None = None,
    progress: bool = False,
    distributed: bool = False,
) -> nn.Module:
    """Train ``model`` in place on (X, y) for ``config.iterations`` steps of SGD / GD; returns the model.

    Args:
        model: any module mapping X to outputs ((m,) logits for "logistic", etc.). Trained on its device;
            X and y are moved there. A model with a ``greedyprune_lr_scales()`` method gets one parameter
            group per multiplier (:func:`param_groups`).
        config: a :class:`TrainConfig`.
        checkpoint_path: if given, a checkpoint (model, optimizer, iteration, config, global RNG state) is
            written there every ``checkpoint_every`` iterations and at the end; if the file exists when
            called, training resumes from it (its config must match, else ValueError; fields a checkpoint
            predates, like ``schedule``, count as their defaults). Resuming restores the global RNG state
            saved with the checkpoint, so models that draw random numbers while training (dropout) also
            continue exactly as an uninterrupted run.
        callback: ``callback(iteration, model)`` at iteration 0 (before any step), every
            ``callback_every`` iterations, and at the last iteration. It runs before the checkpoint at
            the same iteration is written, and after a resume it is called again at the resumed
            iteration, so it must be idempotent (the studies skip work already recorded).
        progress: show a progress bar.
        distributed: data-parallel over the initialised ``torch.distributed`` process group (torchrun, or
            :func:`greedyprune.distributed.launch`): every process takes its share of each batch, gradients
            are summed by ``DistributedDataParallel``, BatchNorm uses the whole batch's statistics
            (:mod:`greedyprune.distributed.ddp`), so the steps are those of one process up to float rounding.
            Every process must call it with the same arguments; only rank 0 writes the checkpoint and
            runs the callback, and all processes wait for it at the end.

    The model is put in training mode (``model.train()``) before the first step and left in it.
    The learning rate of step t is :func:`learning_rate` ``(config, t)``, set on the optimizer every step.
    """
    config.validate()
    for name, every in (("checkpoint_every", checkpoint_every), ("callback_every", callback_every)):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidOptionError(f"{name} must be a positive int or None, got {every!r}")
    _check_data(X, y, config)
    digest = data_digest(X, y)
    device = next(model.parameters()).device
    X, y = X.to(device), y.to(device)
    optimizer = torch.optim.SGD(param_groups(model, config.lr), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    start, rng = 0, None
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        start, rng = _resume(checkpoint_path, model, optimizer, config, digest, device)
    main = True
    if distributed:
        from ..distributed import parallel

        if not parallel.is_initialised():
            raise InvalidOptionError("distributed=True needs an initialised torch.distributed process group; "
                                     "start the program with torchrun, or call "
                                     "greedyprune.distributed.init_process_group() first")
        main = parallel.is_main()

    def checkpoint(t: int) -> None:
        if checkpoint_path is not None and main:
            save_checkpoint(checkpoint_path, {"format": CHECKPOINT_FORMAT, "iteration": t, "config": asdict(config),
                                              "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                              "rng": _rng_state(device), "data": digest})

    def at(t: int, every: int | None) -> bool:
        return t == config.iterations or (every is not None and t % every == 0)

    def finite(t: int) -> None:  # before anything is recorded or written from the weights of iteration t
        bad = non_finite_weights(model)
        if bad:
            kept = (f"; the last good state is kept in {checkpoint_path}" if checkpoint_path is not None
                    and Path(checkpoint_path).exists() else "")
            raise FloatingPointError(f"training diverged at iteration {t}: the weights became NaN or infinite in "
                                     f"{bad} (the loss was finite, the step was not); lower the learning rate "
                                     f"(lr={config.lr}){kept}")

    if callback is not None and main and (start == 0 or at(start, callback_every)):
        callback(start, model)
    if start > 0:
        # after the repeated callback: the stored state was taken after the callback at that iteration
        _set_rng_state(rng, device)
    steps = range(start, config.iterations)
    if progress and main:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="pre-training", unit="it", initial=start, total=config.iterations, leave=False)
    with _data_parallel(model, distributed) as (net, share):
        model.train()
        cache: dict = {}
        for t in steps:
            xb, yb, weight = _batch(X, y, config, t, cache, share)
            train_step(net, optimizer, xb, yb, config.loss, learning_rate(config, t), f" at iteration {t}", weight)
            done = t + 1
            if (callback is not None and main and at(done, callback_every)) or at(done, checkpoint_every):
                finite(done)
            if callback is not None and main and at(done, callback_every):
                callback(done, model)
            if at(done, checkpoint_every):
                checkpoint(done)
        if checkpoint_path is not None and start == config.iterations == 0:
            checkpoint(0)
    return model


def _check_data(X: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> None:
    if not isinstance(X, torch.Tensor) or X.dim() < 2 or X.shape[0] == 0:
        raise InvalidOptionError(f"X must be a non-empty tensor of shape (m, ...), got {getattr(X, 'shape', type(X))}")
    if not isinstance(y, torch.Tensor) or y.shape[0] != X.shape[0]:
        raise InvalidOptionError(
            f"y must be a tensor with {X.shape[0]} rows (one per example), got {getattr(y, 'shape', type(y))}")
    check_finite("X", X)
    if config.loss in ("logistic", "cross_entropy") and y.numel() and bool((y == y.reshape(-1)[0]).all()):
        raise InvalidOptionError(
            f"every label is {y.reshape(-1)[0].item()!r}: a classifier needs at least two classes in "
            f"its training data (check the labels or the sub-dataset size)")
    if config.augment != "none" and X.dim() != 4:
        raise InvalidOptionError(
            f"augment={config.augment!r} needs images of shape (m, C, H, W), got {tuple(X.shape)}; "
            f"use augment='none' for flat inputs")


def _resume(path, model, optimizer, config, digest, device) -> tuple[int, dict | None]:
    """Load a checkpoint into the model and optimizer after checking that it belongs to this run."""
    state = load_checkpoint(path, map_location=device)
    stored = _stored_config(state["config"])
    if stored != asdict(config):
        diff = {k: (stored.get(k), v) for k, v in asdict(config).items() if stored.get(k) != v}
        raise InvalidOptionError(f"checkpoint {path} was made with another configuration "
                                 f"(stored, requested): {diff}; use another checkpoint path or the same configuration")
    if "data" not in state:
        warnings.warn(f"checkpoint {path} predates data digests: resuming without checking that it was "
                      f"made on the same training data", stacklevel=3)
    elif state["data"] != digest:
        raise InvalidOptionError(f"checkpoint {path} was made on other training data (its data digest "
                                 f"differs); resuming would mix two runs. Use another checkpoint path, or delete it to "
                                 f"start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # checkpoints written before lr scales existed
        group.setdefault("lr_scale", 1.0)
    return int(state["iteration"]), state.get("rng")


def _batch(X, y, config: TrainConfig, t: int, cache: dict, share):
    """This process's part of the batch of step t, augmented, and its weight in the batch's mean loss."""
    idx = _batch_indices(X.shape[0], config.batch_size, config.seed, t, cache)
    size = X.shape[0] if idx is None else idx.numel()
    lo, length, world = share(size)
    if length == 0:
        raise InvalidOptionError(
            f"a batch of {size} examples leaves this process no share among {world}; use a batch size "
            f"of at least the number of processes")
    if idx is None and length == size:
        xb, yb = X, y
    else:
        rows = (torch.arange(lo, lo + length) if idx is None else idx[lo:lo + length]).to(X.device)
        xb, yb = X[rows], y[rows]
    if config.augment == "crop-flip":
        xb = CropFlip(size, augment_generator(config.seed, t)).apply(xb, lo)
    return xb, yb, length * world / size


@contextlib.contextmanager
def _data_parallel(model: nn.Module, distributed: bool):
    """``(module to step, share function)``: the model itself and the whole batch, or - distributed - a
    ``DistributedDataParallel`` wrapper with cross-process BatchNorm and this rank's contiguous share."""
    if not distributed:
        yield model, lambda size: (0, size, 1)
        return
    from torch.nn.parallel import DistributedDataParallel

    from ..distributed.parallel import rank, split_range, world_size
    from ..distributed.ddp import cross_rank_batchnorm

    world, r = world_size(), rank()
    device = next(model.parameters()).device
    with cross_rank_batchnorm(model):
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
        yield net, lambda size: (*split_range(size, world, r), world)
        import torch.distributed as dist

        dist.barrier()  # rank 0's last checkpoint is on disk before anyone goes on
