"""Saving and loading pruned networks without running code from the file.

A pruned-model file (format ``"greedyprune-pruned-v2"``) holds only tensors and plain values, read with
``weights_only=True`` and checked against a stored checksum:

* the pruned ``state_dict``;
* the pruning ``history`` (Torch-Pruning's record of which channels were removed from which group);
* how to build the dense architecture: a :func:`~greedyprune.models.get_model` ``name`` and
  ``model_kwargs``, and the ``input_shape`` the groups were traced on;
* ``kept``, the ``report`` (:meth:`~greedyprune.result.PruneReport.to_dict`; :func:`load_pruned` gives it back
  as a :class:`~greedyprune.result.PruneReport`) and free-form ``extra`` metadata.

:func:`load_pruned` rebuilds the model by building the dense architecture (from ``name``, or from a dense
model you pass, for your own classes), replaying the history on it and loading the weights. Only a file
saved with ``full_module=True`` also carries the pickled module, as bytes that are never unpickled
unless the caller passes ``trust_pickle=True``.
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidOptionError, InvalidTypeError
from ..fileio import UnsafeFileError, load_torch, save_torch, torch_bytes
from ..result import PruneReport, PruneResult

__all__ = ["PRUNED_FORMAT", "load_pruned", "save_pruned"]

PRUNED_FORMAT = "greedyprune-pruned-v2"


def _plain(value):
    """``value`` with numpy / torch scalars turned into Python numbers (so the file loads weights-only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


def save_pruned(path: str | os.PathLike, result: PruneResult, *, name: str | None = None,
                model_kwargs: dict | None = None, input_shape=None, extra: dict | None = None,
                full_module: bool = False) -> Path:
    """Save a pruned network (atomically, with a checksum).

    Args:
        path: the file to write.
        result: what :func:`~greedyprune.channels.prune_model` returned.
        name, model_kwargs: the :func:`~greedyprune.models.get_model` name and options of the dense model,
            so :func:`load_pruned` can rebuild it by itself. Without them, load with ``model=`` a dense
            instance of your own class.
        input_shape: one example's shape, e.g. ``(3, 32, 32)``; default the one the search traced.
        extra: further metadata (plain values).
        full_module: also store the pickled module (for architectures that cannot be rebuilt). Loading
            that part needs ``trust_pickle=True``.
    """
    if not isinstance(result, PruneResult):
        raise InvalidTypeError(f"result must be a PruneResult (what prune_model returns), got {type(result).__name__}")
    report = PruneReport.from_dict(result.report)
    shape = input_shape if input_shape is not None else report.get("input_shape")
    if shape is None:
        raise InvalidOptionError("input_shape is unknown: pass input_shape=(C, H, W), the shape of one example")
    payload = {
        "format": PRUNED_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "history": _plain(result.history),
        "name": name,
        "model_kwargs": _plain(dict(model_kwargs or {})),
        "input_shape": [int(d) for d in shape],
        "kept": _plain(result.kept),
        "report": report.to_dict(),
        "extra": _plain(dict(extra or {})),
        "module": torch_bytes(result.model) if full_module else None,
    }
    return save_torch(path, payload)


def load_pruned(path: str | os.PathLike, *, model: nn.Module | None = None, trust_pickle: bool = False,
                map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a network saved by :func:`save_pruned`; returns ``(model, info)``.

    The model is rebuilt without unpickling anything: the dense architecture (``model``, a dense instance
    of your class, or ``get_model(name, **model_kwargs)`` from the file, built on the meta device) gets the
    pruning history replayed and, once its shapes match the stored weights, the weights loaded - a file
    that claims a huge dense width allocates nothing.

    Args:
        model: a dense model of the architecture that was pruned (not changed; a copy is pruned). Needed
            for your own classes when the file has no ``name``.
        trust_pickle: for a file saved with ``full_module=True`` and without a way to rebuild it, unpickle
            the stored module. Unpickling runs whatever code the file's author put in it: only for files
            you made yourself.

    Raises:
        IntegrityError: the file is damaged (checksum mismatch).
        UnsafeFileError: the file can only be loaded by unpickling and ``trust_pickle`` is False.
        ValueError: not a pruned-model file, or the weights do not fit the rebuilt architecture.
    """
    path = Path(path)
    payload = load_torch(path, what="pruned model", require_checksum=True, offer_trust=False)
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        raise InvalidOptionError(
            f"{path} is not a pruned model saved by this version of greedyprune (no {PRUNED_FORMAT!r} "
            f"marker)")
    info = {k: v for k, v in payload.items() if k not in ("module", "state_dict")}
    if isinstance(info.get("report"), dict):  # a saved report, old (without its None fields) or new
        info["report"] = PruneReport.from_dict(info["report"])
    info["full_module"] = payload.get("module") is not None
    if model is None and payload.get("name"):
        from ..training.checkpoints import build_model

        # the dense architecture on the meta device: nothing is allocated before the weights are known to fit
        dense = build_model(str(payload["name"]), dict(payload.get("model_kwargs") or {}), meta=True)
        rebuilt = _replay(dense, payload, path)
        return rebuilt.to(map_location), info
    if model is not None:
        rebuilt = _replay(copy.deepcopy(model), payload, path)
        return rebuilt.to(map_location), info
    if payload.get("module") is None:
        raise InvalidOptionError(
            f"{path} was saved without a model name: pass model= a dense instance of the architecture "
            f"that was pruned, and the pruning history is replayed on it")
    if not trust_pickle:
        raise UnsafeFileError(f"{path} can only be loaded by unpickling its stored module, which can run arbitrary "
                              f"code. Pass model= a dense instance of the pruned architecture (safe), or "
                              f"trust_pickle=True if you made this file yourself")
    module = torch.load(io.BytesIO(payload["module"]), map_location=map_location, weights_only=False)
    if not isinstance(module, nn.Module):
        raise InvalidOptionError(f"{path} stores a {type(module).__name__}, not an nn.Module")
    return module, info


def _add_biases(model: nn.Module, state_dict: dict) -> None:
    """Give back the biases pruning added to bias-free convolutions and linear layers (the reconstruction's
    bias compensation, :func:`~greedyprune.channels.masks.set_bias`) so that the stored weights fit."""
    named = dict(model.named_modules())
    for key, value in state_dict.items():
        name, _, leaf = key.rpartition(".")
        module = named.get(name)
        if (leaf == "bias" and isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is None
                and isinstance(value, torch.Tensor) and value.dim() == 1):
            module.bias = nn.Parameter(torch.zeros(value.shape, dtype=module.weight.dtype,
                                                   device=module.weight.device))


def _replay(model: nn.Module, payload: dict, path: Path) -> nn.Module:
    import torch_pruning as tp

    from ..training.checkpoints import materialise, state_dict_mismatches

    example = torch.zeros(1, *payload["input_shape"], device=next(model.parameters()).device)
    flags = [(m, m.training) for m in model.modules()]
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for m, flag in flags:
        m.training = flag
    try:
        DG.load_pruning_history(payload["history"])
    except Exception as exc:  # noqa: BLE001 - the history belongs to another architecture
        raise InvalidOptionError(f"{path}: the pruning history does not fit this dense model ({type(exc).__name__}: "
                                 f"{exc}); pass the model that was pruned") from exc
    _add_biases(model, payload["state_dict"])
    what = f"{path}: the weights do not fit the rebuilt model; pass the dense model that was pruned"
    if next(model.parameters()).device.type == "meta":
        return materialise(model, payload["state_dict"], what).eval()
    lines = state_dict_mismatches(model.state_dict(), payload["state_dict"])
    if lines:
        raise InvalidOptionError(
            f"{path}: the weights do not fit the rebuilt model ({'; '.join(lines[:5])}); pass the dense "
            f"model that was pruned")
    model.load_state_dict(payload["state_dict"])
    return model.eval()
