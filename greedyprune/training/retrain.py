"""Retraining a pruned network: fine-tuning, or training its architecture from scratch.

Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019), hold every pruning result against
training the pruned architecture from a fresh random initialisation:

``finetune``
    keep the pruned weights and train briefly at a small learning rate (the paper's Appendix E:
    2,500 iterations at lr 0.01);
``scratch-e``
    re-initialise the pruned architecture and train it for as many iterations as the dense model
    was trained ("same epochs");
``scratch-b``
    the same, for ``iterations * MACs(dense) / MACs(pruned)`` iterations, so the pruned net gets the
    dense net's compute budget (:func:`scratch_iterations`).

All training goes through :func:`greedyprune.training.loop.pretrain` (SGD with momentum 0.9 and weight decay
5e-4, softmax cross-entropy), so the runs are deterministic given the seed and resume from a
checkpoint exactly.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from ..checks import check_int
from ..errors import InvalidOptionError
from ..models.zoo import init_weights
from .loop import SCHEDULES, TrainConfig, pretrain

__all__ = [
    "INITS",
    "RETRAIN_MODES",
    "RetrainResult",
    "finetune",
    "kaiming_init",
    "reinitialize",
    "retrain",
    "scratch_iterations",
]

RETRAIN_MODES = ("finetune", "scratch-e", "scratch-b")
INITS = ("kaiming", "default")


def kaiming_init(model: nn.Module) -> None:
    """Initialise in place as :func:`greedyprune.models.get_model` does (:func:`greedyprune.models.init_weights`):
    the He initialisation the Rethinking paper trains its scratch models with."""
    init_weights(model)


def reinitialize(
    model: nn.Module,
    seed: int,
    *,
    init: str | Callable[[nn.Module], None] = "kaiming",
    strict: bool = True,
) -> nn.Module:
    """A copy of ``model`` with freshly drawn random weights: same architecture, new initialisation.

    Every submodule's ``reset_parameters()`` is called (in ``model.modules()`` order) under
    ``torch.random.fork_rng`` with the CPU generator seeded by ``seed``; BatchNorm layers thereby also reset
    their running statistics. The work is done on a CPU copy, so the result does not depend on the device,
    and the global RNG state is left as it was.

    Args:
        model: The (pruned) model; left unchanged.
        seed: Seed of the new initialisation: the same seed gives the same weights.
        init: After ``reset_parameters``: ``"kaiming"`` (default) applies :func:`kaiming_init`, the
            initialisation of :func:`greedyprune.models.get_model`; ``"default"`` keeps PyTorch's per-layer
            defaults; a callable ``init(model)`` is applied under the same seeded RNG.
        strict: Raise if a submodule holds parameters of its own but has no ``reset_parameters`` (its weights
            would keep their trained values). With ``strict=False`` such parameters are left as they are.

    Returns:
        The re-initialised deep copy, on the device of ``model`` and in its training mode.

    Raises:
        ValueError: Bad ``seed`` or ``init``, or (``strict``) modules that cannot be reset, named in the message.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidOptionError(f"seed must be a non-negative int, got {seed!r}")
    if not callable(init) and init not in INITS:
        raise InvalidOptionError(f"unknown init {init!r}; expected one of {INITS} or a callable init(model)")
    if not isinstance(model, nn.Module):
        raise InvalidOptionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    stuck = [name or type(m).__name__ for name, m in model.named_modules()
             if next(m.parameters(recurse=False), None) is not None
             and not callable(getattr(m, "reset_parameters", None))]
    if stuck and strict:
        raise InvalidOptionError(
            f"cannot re-initialise {', '.join(stuck[:5])}{' ...' if len(stuck) > 5 else ''}: these modules hold "
            f"parameters but have no reset_parameters(); give them one, or pass strict=False to keep their values"
        )
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    fresh = copy.deepcopy(model).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only; CUDA RNGs stay untouched
        with torch.no_grad():
            for module in fresh.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
            if init == "kaiming":
                kaiming_init(fresh)
            elif callable(init):
                init(fresh)
    return fresh.to(device)


def _check_macs(name: str, value) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidOptionError(f"{name} must be a positive finite number (multiply-accumulates), got {value!r}")
    return Fraction(value)


def scratch_iterations(
    dense_iterations: int,
    dense_macs: float,
    pruned_macs: float,
    mode: str,
    *,
    max_factor: float | None = None,
) -> int:
    """Training iterations for a pruned architecture trained from scratch (Rethinking, Liu et al.).

    Args:
        dense_iterations: Iterations the dense (unpruned) model was trained for, >= 1.
        dense_macs, pruned_macs: Multiply-accumulates of one forward pass of the dense and of the pruned model (> 0,
            ``pruned_macs <= dense_macs``).
        mode: ``"E"`` (Scratch-E, same epochs): ``dense_iterations``. ``"B"`` (Scratch-B, same compute):
            ``dense_iterations * dense_macs / pruned_macs``, rounded to the nearest integer (halves up).
            ``"scratch-e"`` / ``"scratch-b"`` and lower case are accepted too.
        max_factor: Cap on the Scratch-B factor ``dense_macs / pruned_macs``. The paper caps it at 2 on ImageNet
            ("if the pruned model saves more than 2x FLOPs, we just double the number of epochs").

    Returns:
        The number of iterations (>= 1).

    Raises:
        ValueError: Unknown mode, non-positive counts, or ``pruned_macs > dense_macs`` (probably swapped).

    Examples:
        >>> scratch_iterations(1000, 4e8, 1e8, "B")
        4000
        >>> scratch_iterations(1000, 4e8, 1e8, "E")
        1000
    """
    key = mode.upper().removeprefix("SCRATCH-") if isinstance(mode, str) else mode
    if key not in ("E", "B"):
        raise InvalidOptionError(f"unknown scratch mode {mode!r}; expected 'E' (same iterations) or 'B' (same compute)")
    dense_iterations = check_int("dense_iterations", dense_iterations, 1)
    dense, pruned = _check_macs("dense_macs", dense_macs), _check_macs("pruned_macs", pruned_macs)
    if pruned > dense:
        raise InvalidOptionError(
            f"pruned_macs ({pruned_macs}) exceeds dense_macs ({dense_macs}); are the arguments swapped?")
    if max_factor is not None and (isinstance(max_factor, bool) or not isinstance(max_factor, (int, float))
                                   or not max_factor >= 1):
        raise InvalidOptionError(f"max_factor must be a number >= 1 or None, got {max_factor!r}")
    if key == "E":
        return dense_iterations
    factor = dense / pruned
    if max_factor is not None:
        factor = min(factor, Fraction(max_factor))
    return max(1, math.floor(dense_iterations * factor + Fraction(1, 2)))


def finetune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    iterations: int,
    lr: float = 0.01,
    *,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int | None = 128,
    schedule: str = "constant",
    seed: int = 0,
    augment: str = "none",
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
    callback_every: int | None = None,
    progress: bool = False,
    distributed: bool = False,
) -> nn.Module:
    """Fine-tune ``model`` in place with SGD on softmax cross-entropy; returns it.

    A thin wrapper over :func:`greedyprune.training.loop.pretrain` with
    ``TrainConfig(loss="cross_entropy", momentum=0.9, weight_decay=5e-4, schedule="constant")``.

    Args:
        model: Trained in place, on its device.
        images: ``(m, C, H, W)`` inputs (any ``(m, ...)`` the model accepts).
        labels: ``(m,)`` int64 class labels.
        iterations: SGD steps (the paper fine-tunes 2,500 iterations).
        lr: (Initial) learning rate (0.01, as the paper's Appendix E).
        momentum, weight_decay, batch_size, schedule, seed, augment: As in
        :class:`greedyprune.training.loop.TrainConfig`; ``seed`` fixes the batch order;
            ``schedule="cosine"`` decays the rate from ``lr`` (the CNN study's fine-tuning).
        checkpoint_path, checkpoint_every, callback, callback_every, progress, distributed: Passed to
        :func:`greedyprune.training.loop.pretrain` (resumable checkpoints, periodic callbacks,
            data-parallel training).

    Returns:
        ``model``, trained, in training mode.
    """
    config = TrainConfig(iterations=iterations, lr=lr, batch_size=batch_size, loss="cross_entropy",
                         momentum=momentum, weight_decay=weight_decay, seed=seed, schedule=schedule, augment=augment)
    return pretrain(model, images, labels, config, checkpoint_path=checkpoint_path,
                    checkpoint_every=checkpoint_every, callback=callback, callback_every=callback_every,
                    progress=progress, distributed=distributed)


@dataclass
class RetrainResult:
    """What :func:`retrain` did.

    Attributes:
        model: The retrained model (a new object; the input model is unchanged).
        mode: ``"finetune"``, ``"scratch-e"`` or ``"scratch-b"``.
        config: The training configuration used (its ``iterations`` is the Scratch-B budget for that mode).
    """

    model: nn.Module
    mode: str
    config: TrainConfig


def retrain(
    model: nn.Module,
    mode: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    iterations: int,
    lr: float | None = None,
    schedule: str | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int | None = 128,
    seed: int = 0,
    dense_macs: float | None = None,
    pruned_macs: float | None = None,
    max_factor: float | None = None,
    init: str | Callable[[nn.Module], None] = "kaiming",
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Retrain a pruned model by one of the Rethinking paper's three protocols.

    Args:
        model: The pruned model; not modified (a copy is trained).
        mode: ``"finetune"``: keep the weights, train ``iterations`` steps at ``lr`` (default 0.01, constant).
            ``"scratch-e"``: :func:`reinitialize` with ``seed``, then train ``iterations`` steps - pass the dense
            model's training iterations - with the dense recipe (default lr 0.1, cosine schedule).
            ``"scratch-b"``: as scratch-e for :func:`scratch_iterations` ``(iterations, dense_macs,
            pruned_macs, "B", max_factor=max_factor)`` steps.
        images, labels: Training data, ``(m, C, H, W)`` and ``(m,)`` int64.
        iterations: Fine-tuning steps, or the dense model's training iterations for the scratch modes.
        lr, schedule: Default 0.01 / ``"constant"`` for fine-tuning, 0.1 / ``"cosine"`` from scratch.
        momentum, weight_decay, batch_size, seed: As in :class:`greedyprune.training.loop.TrainConfig`; ``seed``
        also seeds the re-initialisation.
        dense_macs, pruned_macs, max_factor: Required (the MACs) for ``"scratch-b"``; see :func:`scratch_iterations`.
        init, checkpoint_path, checkpoint_every, progress: See :func:`reinitialize` and
        :func:`greedyprune.training.loop.pretrain`. The checkpoint holds the
            retraining run; resuming a scratch run re-creates the same initialisation from ``seed`` first.

    Returns:
        RetrainResult: The retrained model, the mode and the :class:`~greedyprune.training.loop.TrainConfig` used.

    Raises:
        ValueError: Unknown mode, missing MACs for scratch-b, or a bad training setting.
    """
    if mode not in RETRAIN_MODES:
        raise InvalidOptionError(f"unknown retraining mode {mode!r}; expected one of {RETRAIN_MODES}")
    if schedule is not None and schedule not in SCHEDULES:
        raise InvalidOptionError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if mode == "finetune":
        steps = check_int("iterations", iterations, 0)
        trained = copy.deepcopy(model)
        lr = 0.01 if lr is None else lr
        schedule = schedule or "constant"
    else:
        if mode == "scratch-b":
            if dense_macs is None or pruned_macs is None:
                raise InvalidOptionError(
                    "mode 'scratch-b' needs dense_macs and pruned_macs (multiply-accumulates of one "
                    "forward pass of the dense and of the pruned model)")
            steps = scratch_iterations(iterations, dense_macs, pruned_macs, "B", max_factor=max_factor)
        else:
            steps = check_int("iterations", iterations, 1)
        trained = reinitialize(model, seed, init=init)
        lr = 0.1 if lr is None else lr
        schedule = schedule or "cosine"
    config = TrainConfig(iterations=steps, lr=lr, batch_size=batch_size, loss="cross_entropy", momentum=momentum,
                         weight_decay=weight_decay, seed=seed, schedule=schedule)
    pretrain(trained, images, labels, config, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
             progress=progress)
    return RetrainResult(model=trained, mode=mode, config=config)
