"""Size, compute and speed of a model: parameters, multiply-adds, latency.

Choices
-------
* **Multiply-adds (MACs)** are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
  forward pass (eval mode, ``torch.no_grad``) and halved: PyTorch counts a convolution or matmul
  as 2 FLOPs per multiply-add, so ``FLOPs // 2`` is the multiply-add count that the pruning
  literature reports as "FLOPs". Only convolutions and matrix products are counted (their bias
  additions, BatchNorm, activations, pooling and residual additions are not), which is also the
  convention behind the published counts (ResNet-56 125.5M, VGG-16 313.5M on CIFAR). A Conv2d
  costs ``Cout * (Cin / groups) * kh * kw * Hout * Wout`` per image, a Linear ``in * out``.
  The count runs without importing ``torch._dynamo`` (which ``FlopCounterMode`` does on its first use:
  about 1.4 s of every fresh process's first count) while dynamo is not loaded already; the numbers are
  ``FlopCounterMode``'s (same registry, decompositions and module attribution).
* **Parameters** are ``sum(p.numel() for p in model.parameters())``: trainable or not, buffers
  (BatchNorm running statistics) excluded; shared parameters count once.
* **Latency** is wall-clock time of single forward passes (``time.perf_counter``) in eval mode
  under ``torch.inference_mode``, after ``warmup`` untimed passes, with a fixed number of torch
  threads (1 by default: comparable across machines and with other jobs running) that is
  restored afterwards; on CUDA each pass is bracketed by ``torch.cuda.synchronize``. The median is
  the summary to quote; p10 / p90 show the spread.

Every function leaves the model as it found it: the training flag of every submodule is restored,
and no weights or buffers change (BatchNorm statistics do not move in eval mode).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import InvalidOptionError, InvalidTypeError
from .training.loop import evaluate

__all__ = ["compare_models", "count_macs", "count_parameters", "layer_macs", "log_probs", "mean_kl",
           "measure_latency", "measure_model",
           "model_device_dtype", "model_report"]

DEFAULT_INPUT_SHAPE = (1, 3, 32, 32)


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_shape(input_shape) -> tuple[int, ...]:
    """A non-empty sequence of positive ints (e.g. ``(1, 3, 32, 32)`` or a ``torch.Size``)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, (Sequence, torch.Size)):
        raise InvalidTypeError(
            f"input_shape must be a sequence of positive ints such as (1, 3, 32, 32) or an example "
            f"input tensor, got {type(input_shape).__name__} {input_shape!r}"
        )
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        raise InvalidOptionError(f"input_shape must be a non-empty sequence of positive ints such as (1, 3, 32, 32), "
                                 f"got {input_shape!r}")
    return tuple(int(d) for d in shape)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter or buffer (CPU float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _example_input(model: nn.Module, input_shape, device=None) -> torch.Tensor:
    """A tensor on the model's device / dtype: ``input_shape`` itself if it is a tensor, else random normal."""
    model_device, dtype = model_device_dtype(model)
    device = model_device if device is None else torch.device(device)
    if isinstance(input_shape, torch.Tensor):
        x = input_shape
        if x.dim() == 0:
            raise InvalidOptionError(f"example input must have at least one dimension, got a 0-d tensor {x!r}")
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device=device)
    return torch.randn(_check_shape(input_shape), device=device, dtype=dtype)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weights and biases; buffers excluded, shared tensors counted once).

    Args:
        model: the model.

    Returns:
        The count, an int.
    """
    return sum(p.numel() for p in _check_model(model).parameters())


def _light_counter_class():
    """A ``FlopCounterMode`` whose dispatch mode runs without ``torch._dynamo``, or None if this torch's
    internals differ. ``TorchDispatchMode`` wraps every subclass's ``__torch_dispatch__`` in a lazy
    ``torch._disable_dynamo``, whose first call imports ``torch._dynamo`` (about 1.4 s on a 2-core CPU, once
    per process, more than the count itself on most networks). The wrapper only matters when something is
    compiled inside the counted forward, which needs dynamo already imported: :func:`_flop_counter` uses this
    class only while ``torch._dynamo`` is not in ``sys.modules``. Same registry, decompositions and module
    attribution as ``FlopCounterMode``."""
    try:
        from torch.utils.flop_counter import _FlopCounterMode
        raw = getattr(_FlopCounterMode.__dict__["__torch_dispatch__"], "__wrapped__", None)
    except (ImportError, KeyError):
        return None
    if raw is None:
        return None

    class _Mode(_FlopCounterMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return False

        __torch_dispatch__ = raw

    class _Counter(FlopCounterMode):
        def __enter__(self):
            self.flop_counts.clear()
            self.mod_tracker.__enter__()
            self.mode = _Mode(self)
            self.mode.__enter__()
            return self

    return _Counter


_LIGHT_COUNTER = _light_counter_class()


def _flop_counter() -> FlopCounterMode:
    if _LIGHT_COUNTER is None or "torch._dynamo" in sys.modules:
        return FlopCounterMode(display=False)
    return _LIGHT_COUNTER(display=False)


def _flop_counts(model: nn.Module, input_shape) -> FlopCounterMode:
    _check_model(model)
    x = _example_input(model, input_shape)
    counter = _flop_counter()
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return counter


def count_macs(model: nn.Module, input_shape=DEFAULT_INPUT_SHAPE) -> int:
    """Multiply-adds of one forward pass, as counted by ``FlopCounterMode`` (``FLOPs // 2``).

    Args:
        model: run once in eval mode under ``torch.no_grad``; its training flags are restored afterwards.
        input_shape: shape of a random input (batch included, e.g. ``(1, 3, 32, 32)``), or an example
            input tensor. Either way the input is put on the model's device and floating dtype.

    Returns:
        Multiply-adds of convolutions and matrix products for that whole batch (so per image with batch 1).

    Raises:
        TypeError, ValueError: ``model`` is not a module, or ``input_shape`` is neither a tensor nor
            positive ints.
    """
    return int(_flop_counts(model, input_shape).get_total_flops()) // 2


def layer_macs(model: nn.Module, input_shape=DEFAULT_INPUT_SHAPE) -> dict[str, int]:
    """Multiply-adds of every layer that does any (qualified name -> MACs), counted as :func:`count_macs`
    counts: a module's own operations, i.e. its total minus its children's. A layer that holds a child
    module - a ``Conv2d`` subclass with a padding module inside, say - is counted with the convolution it
    computes itself, not lost as a non-leaf."""
    counter = _flop_counts(model, input_shape)
    prefix = type(model).__name__ + "."  # FlopCounterMode names layers "<ModelClass>.<qualified name>"
    totals = {}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(prefix):
            totals[key[len(prefix):]] = sum(ops.values())
    out = {}
    for name, module in model.named_modules():
        if not name or name not in totals:
            continue
        own = totals[name] - sum(totals.get(f"{name}.{child}", 0) for child, _ in module.named_children())
        if own > 0:
            out[name] = own // 2
    return out


def measure_latency(model: nn.Module, input_shape=DEFAULT_INPUT_SHAPE, *, repeats: int = 50, warmup: int = 10,
                    threads: int | None = 1, device="cpu") -> dict:
    """Wall-clock time of one forward pass: median and spread over ``repeats`` timed passes.

    Args:
        model: Must already live on ``device`` (it is not moved). Run in eval mode under
            ``torch.inference_mode``; its training flags are restored afterwards.
        input_shape: Shape of a random input with batch dimension, or an example input tensor.
        repeats: Timed forward passes (>= 1).
        warmup: Untimed passes first (>= 0), for allocator and kernel caches.
        threads: ``torch.set_num_threads`` during the measurement (restored afterwards); ``None`` keeps the
            current setting.
        device: Where the input is created; ``"cuda"`` also synchronises around each pass.

    Returns:
        ``median``, ``p10``, ``p90``, ``mean``, ``std``, ``min`` and ``max`` in seconds, and
            ``repeats``, ``warmup``, ``threads`` (the count actually used), ``device`` (str) and
            ``input_shape`` (tuple).

    Raises:
        TypeError, ValueError: Bad ``input_shape``, ``repeats < 1``, ``warmup < 0``, ``threads < 1``, an
            unknown device, or a model whose parameters are on another device than ``device``.
    """
    _check_model(model)
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidOptionError(f"{name} must be an int >= {low}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidOptionError(f"threads must be a positive int or None, got {threads!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidOptionError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
    model_device, _ = model_device_dtype(model)
    if next(iter(model.parameters()), None) is not None and model_device.type != dev.type:
        raise InvalidOptionError(
            f"model is on {model_device} but device={str(dev)!r}; move it first with model.to({str(dev)!r})")
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise InvalidOptionError("device is 'cuda' but torch.cuda.is_available() is False")
    x = _example_input(model, input_shape, device=dev if model_device.type != dev.type else model_device)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    previous_threads = torch.get_num_threads()
    times = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        with _eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                model(x)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    t = np.asarray(times, dtype=np.float64)
    return {
        "median": float(np.median(t)),
        "p10": float(np.percentile(t, 10)),
        "p90": float(np.percentile(t, 90)),
        "mean": float(t.mean()),
        "std": float(t.std()),
        "min": float(t.min()),
        "max": float(t.max()),
        "repeats": repeats,
        "warmup": warmup,
        "threads": used_threads,
        "device": str(dev),
        "input_shape": tuple(x.shape),
    }


def model_report(model: nn.Module, input_shape=DEFAULT_INPUT_SHAPE) -> dict:
    """Parameters and multiply-adds of a model.

    Args:
        model: the model.
        input_shape: As in :func:`count_macs`.

    Returns:
        ``{"params": int, "macs": int, "input_shape": tuple}``.
    """
    _check_model(model)
    shape = tuple(input_shape.shape) if isinstance(input_shape, torch.Tensor) else _check_shape(input_shape)
    return {"params": count_parameters(model), "macs": count_macs(model, input_shape), "input_shape": shape}


def measure_model(model: nn.Module, example=None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                  loss: str = "cross_entropy", *, batch_size: int = 512) -> dict:
    """What a pruner measures of a network before and after pruning, the one way every pruner measures it
    (:meth:`greedyprune.result.PruneReport.from_measures` turns two of these into a report).

    Args:
        model: the network, evaluated in eval mode (its training flags are restored).
        example: an input tensor (one example, batch of 1) or shape to count multiply-adds on
            (:func:`count_macs`); None: not counted.
        x, y: examples and targets to measure the loss and accuracy on
            (:func:`greedyprune.training.evaluate`, in batches of ``batch_size``); None: not measured.
        loss: the loss ``evaluate`` computes ("cross_entropy", "logistic", "squared").

    Returns:
        ``{"params": int, "macs": int | None, "loss": float | None, "accuracy": float | None}``.
    """
    _check_model(model)
    if (x is None) != (y is None):
        raise InvalidOptionError("pass both x and y (examples and their targets) to measure the loss, or neither")
    measured = {"params": None, "macs": None, "loss": None, "accuracy": None}
    if x is not None:
        measured["loss"], measured["accuracy"] = evaluate(model, x, y, loss, batch_size=batch_size)
    measured["params"] = count_parameters(model)
    if example is not None:
        measured["macs"] = count_macs(model, example)
    return measured


def compare_models(original: nn.Module, pruned: nn.Module, input_shape=DEFAULT_INPUT_SHAPE) -> dict:
    """Reports of two models (e.g. before and after pruning) and their ratios.

    Args:
        original, pruned: the two models.
        input_shape: As in :func:`count_macs`; the same input is used for both.

    Returns:
        ``original`` and ``pruned`` (:func:`model_report` dicts), ``params_ratio`` and
            ``macs_ratio`` (pruned / original, ``nan`` if the original count is 0), and
            ``params_reduction`` / ``macs_reduction`` (``1 - ratio``, the fraction removed).
    """
    a, b = model_report(original, input_shape), model_report(pruned, input_shape)
    out = {"original": a, "pruned": b}
    for key in ("params", "macs"):
        ratio = b[key] / a[key] if a[key] else math.nan
        out[f"{key}_ratio"] = ratio
        out[f"{key}_reduction"] = 1.0 - ratio
    return out


@torch.no_grad()
def log_probs(model: nn.Module, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The model's log-softmax outputs at ``temperature`` (float64, flattened per example), in batches of 64,
    in the model's current mode."""
    out = [model(x[i:i + 64]) for i in range(0, x.shape[0], 64)]
    return torch.log_softmax(torch.cat(out).double().flatten(1) / temperature, dim=1)


def mean_kl(dense: torch.Tensor, other: torch.Tensor) -> float:
    """Mean ``KL(dense || other)`` over examples, from log-probabilities (rows)."""
    return float((dense.exp() * (dense - other)).sum(dim=1).mean())
