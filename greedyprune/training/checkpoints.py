"""Model checkpoints that know their architecture.

A model checkpoint (format ``"greedyprune-model-v1"``) is a ``torch.save`` dictionary with

``format``
    the marker ``"greedyprune-model-v1"``;
``name``, ``model_kwargs``
    how to rebuild the architecture: ``get_model(name, **model_kwargs)`` from :mod:`greedyprune.models`
    (``model_kwargs`` holds ``num_classes``, ``in_channels`` and options such as ``shortcut``);
``state_dict``
    the weights and buffers (BatchNorm running statistics), on the CPU;
``module``
    ``None``, or - for ``full_module=True`` - the whole pickled module as bytes (see below);
``extra``
    free-form metadata of plain Python values, e.g. the training iteration, the data spec, accuracies;
``torch_version``
    the torch version that wrote the file.

Two ways to store a model
-------------------------
By default only the ``state_dict`` is stored and :func:`load_model` rebuilds the architecture with
``get_model``. The file then holds nothing but tensors and plain values, is read with
``torch.load(..., weights_only=True)`` (safe on untrusted files), and stays loadable when the model
classes' code changes, as long as the parameter names and shapes stay the same.

A pruned model no longer has the architecture ``get_model`` builds (its layers are narrower). For such
models ``save_model(..., full_module=True)`` pickles the module itself. Loading it needs the same
classes importable under the same module paths, and unpickling can run arbitrary code: :func:`load_model`
reads the file with ``weights_only=True`` and unpickles the embedded module only when the caller passes
``trust_pickle=True`` - do this only for files you made yourself. (Pruned models are better saved with
:func:`greedyprune.channels.save_pruned`, which needs no pickle.) The
``name`` and ``model_kwargs`` stored with it describe the dense architecture the model came from.

Training runs
-------------
:func:`train_with_checkpoints` trains a model with :func:`greedyprune.train.pretrain` and writes a model
checkpoint ``OUT/checkpoints/iter_XXXXXXX.pt`` every K iterations (with the loss and accuracy on fixed
evaluation sets in ``extra``), keeping the resume state in ``OUT/train_state.pt``; it is what
``greedyprune train`` runs. :func:`list_checkpoints` lists a run's checkpoints by iteration, e.g. to prune
every one of them.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidOptionError
from ..fileio import UnsafeFileError, load_torch, save_torch, torch_bytes
from .loop import CHECKPOINT_FORMAT as TRAIN_CHECKPOINT_FORMAT
from .loop import TrainConfig

MODEL_CHECKPOINT_FORMAT = "greedyprune-model-v1"

__all__ = [
    "MODEL_CHECKPOINT_FORMAT",
    "checkpoint_path",
    "list_checkpoints",
    "build_model",
    "load_model",
    "materialise",
    "save_model",
    "state_dict_mismatches",
    "train_with_checkpoints",
]

_SHOWN = 5  # mismatching keys listed in an error message


def _check_plain(value: Any, where: str) -> None:
    """Raise ValueError unless ``value`` is made of types ``torch.load(weights_only=True)`` can read."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise InvalidOptionError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise InvalidOptionError(
        f"{where} is a {type(value).__name__} ({value!r:.80}); checkpoints store only None, bool, int, float, str, "
        f"bytes, tensors and lists / tuples / dicts of them (convert numpy values with float() or int())"
    )


def state_dict_mismatches(expected: dict, found: dict) -> list[str]:
    """Differences between two state dicts, as readable lines.

    Args:
        expected: The state dict of the model the weights should go into.
        found: The state dict read from a file.

    Returns:
        One line per key whose shapes differ (``"key: file (16, 3, 3, 3), model (16, 1, 3, 3)"``), then one
            per key missing from the file and one per key the model does not have; empty when they match.
    """
    lines = []
    for key, tensor in expected.items():
        if key in found and tuple(found[key].shape) != tuple(tensor.shape):
            lines.append(f"{key}: file {tuple(found[key].shape)}, model {tuple(tensor.shape)}")
    lines += [f"{key}: missing from the file" for key in expected if key not in found]
    lines += [f"{key}: in the file but not in the model" for key in found if key not in expected]
    return lines


def _mismatch_message(lines: list[str]) -> str:
    shown = "; ".join(lines[:_SHOWN])
    more = f"; ... and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return f"{len(lines)} mismatching entr{'y' if len(lines) == 1 else 'ies'}: {shown}{more}"


def build_model(name: str, model_kwargs: dict, meta: bool = False) -> nn.Module:
    """``get_model(name, **model_kwargs)``, on the meta device with ``meta`` (no memory); ValueError otherwise."""
    from ..models import get_model

    try:
        if meta:  # architecture only: no memory, no initialisation cost
            with torch.device("meta"):
                return get_model(name, **model_kwargs)
        return get_model(name, **model_kwargs)
    except (TypeError, RuntimeError) as exc:  # RuntimeError: a tensor size that overflows 64 bits
        raise InvalidOptionError(
            f"cannot build model {name!r} with {model_kwargs}: {str(exc).splitlines()[0]}") from exc


def materialise(model: nn.Module, state: dict, what: str) -> nn.Module:
    """``model``, built on the meta device, with the weights ``state`` on the CPU: the shapes are compared first
    (a mismatch is a ValueError starting with ``what``), so nothing is allocated for an architecture the
    weights do not fit - a file cannot make the loader build a model larger than the file itself."""
    if not _is_state_dict(state):
        raise InvalidOptionError(f"{what}: its weights are {_describe(state)}, not a dict of named tensors")
    lines = state_dict_mismatches(model.state_dict(), state)
    if lines:
        raise InvalidOptionError(f"{what} ({_mismatch_message(lines)})")
    persistent = set(model.state_dict())
    if any(name not in persistent for name, _ in model.named_buffers()):
        raise InvalidOptionError(
            f"{what}: the model has buffers that are not stored (persistent=False), so it cannot be "
            f"rebuilt from the file's weights alone")
    model = model.to_empty(device="cpu")
    model.load_state_dict(state)
    return model


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    name: str,
    model_kwargs: dict | None = None,
    extra: dict | None = None,
    full_module: bool = False,
) -> Path:
    """Write ``model`` with its architecture record to ``path``, atomically.

    Args:
        path: Target file; parent directories are created. Written to ``path + ".tmp"``, flushed, then renamed,
            so an interrupted save never leaves a half-written checkpoint under ``path``.
        model: The model to store.
        name: A name from :data:`greedyprune.models.MODEL_NAMES` (case-insensitive).
        model_kwargs: Keyword arguments of ``get_model(name, **model_kwargs)`` that rebuild the architecture, e.g.
            ``{"num_classes": 10, "in_channels": 1, "shortcut": "A"}``. Not ``seed``: the weights are stored.
        extra: Metadata of plain values (None, bool, int, float, str, tensors, lists / dicts of them), e.g.
            ``{"iteration": 500, "data": "mnist5k", "test_accuracy": 0.97}``.
        full_module: Also pickle the whole module, for models whose architecture ``get_model`` cannot rebuild (pruned
            models). Such files can only be loaded where the model classes are importable, and loading them
            unpickles code: load only trusted files. See the module docstring.

    Returns:
        The path written.

    Raises:
        ValueError: Unknown ``name``, bad ``model_kwargs``, ``extra`` holding other types, or (without
            ``full_module``) a model whose parameter names or shapes differ from ``get_model(name,
            **model_kwargs)``'s - the message lists the first differences and suggests ``full_module=True``.
    """
    if not isinstance(model, nn.Module):
        raise InvalidOptionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"name must be a model name (str), got {name!r}")
    from ..models import MODEL_NAMES

    if name.lower() not in MODEL_NAMES:
        raise InvalidOptionError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    name = name.lower()
    model_kwargs = dict(model_kwargs or {})
    if "seed" in model_kwargs:
        raise InvalidOptionError("model_kwargs must not hold 'seed': the checkpoint stores the weights themselves")
    extra = dict(extra or {})
    _check_plain(model_kwargs, "model_kwargs")
    _check_plain(extra, "extra")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    module_bytes = None
    if full_module:
        module_bytes = torch_bytes(model)
    else:
        reference = build_model(name, model_kwargs, meta=True).state_dict()
        lines = state_dict_mismatches(reference, state)
        if lines:
            raise InvalidOptionError(
                f"the model does not have the architecture of get_model({name!r}, **{model_kwargs}) "
                f"({_mismatch_message(lines)}); pass the model_kwargs it was built with, or full_module=True "
                f"for a model whose architecture changed (a pruned model)"
            )
    payload = {
        "format": MODEL_CHECKPOINT_FORMAT,
        "name": name,
        "model_kwargs": model_kwargs,
        "state_dict": None if full_module else state,
        "module": module_bytes,
        "extra": extra,
        "torch_version": str(torch.__version__),
    }
    return save_torch(path, payload)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe(payload: Any) -> str:
    """What a loaded torch file holds, in words, for error messages."""
    if isinstance(payload, dict):
        fmt = payload.get("format")
        if fmt == TRAIN_CHECKPOINT_FORMAT:
            return (f"a training-state checkpoint (format {fmt!r}: the resume file of pretrain, like "
                    f"train_state.pt of `greedyprune train`, at iteration {payload.get('iteration')}); "
                    f"load a model checkpoint instead, e.g. OUT/checkpoints/iter_*.pt")
        if isinstance(fmt, str):
            return f"a file of format {fmt!r}"
        if _is_state_dict(payload):
            return f"a plain state_dict ({len(payload)} tensors) without an architecture record"
        if _is_state_dict(payload.get("state_dict")):
            return (f"another program's checkpoint holding a state_dict under 'state_dict' "
                    f"(keys: {', '.join(map(str, list(payload)[:8]))})")
        return f"a dict with keys {', '.join(map(repr, list(payload)[:8]))}"
    return f"a {type(payload).__name__}"


def _plain_weights(payload: Any) -> dict | None:
    """The state_dict of a plain state_dict file or of a ``{"state_dict": ...}`` checkpoint, else None."""
    if isinstance(payload, dict) and "format" not in payload:
        if _is_state_dict(payload):
            return payload
        if _is_state_dict(payload.get("state_dict")):
            return payload["state_dict"]
    return None


def load_model(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    model_kwargs: dict | None = None,
    map_location: str | torch.device = "cpu",
    trust_pickle: bool = False,
) -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint written by :func:`save_model`.

    Args:
        path: A model checkpoint, or a plain ``state_dict`` file (``torch.save(model.state_dict(), path)``, also
            ``{"state_dict": ...}`` dictionaries of other programs) when ``name`` is given.
        name: The model you expect (``--model`` on the command line). For a greedyprune checkpoint it must match
            the stored name; for a plain state_dict it says which architecture to load the weights into.
        model_kwargs: For a greedyprune checkpoint: if given, must equal the stored ones. For a plain state_dict: the
            ``get_model`` keyword arguments (``num_classes``, ``in_channels``, ``shortcut``); default none.
        map_location: Device the model is placed on.
        trust_pickle: Needed for a checkpoint saved with ``full_module=True``: unpickling its module can run arbitrary
            code, so only pass True for files you made yourself.

    The architecture is built on the meta device and compared with the stored weights before anything is
    allocated, so a file that claims a huge width is refused without building it.

    Returns:
        model (nn.Module): The model, in training mode (as ``get_model`` returns it).
        info (dict): ``path``, ``format`` (``"greedyprune-model-v1"`` or ``"state_dict"``), ``name``,
            ``model_kwargs``, ``extra`` (``{}`` for plain state dicts), ``full_module`` and ``torch_version``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is not a torch file; it is not a model checkpoint (the message says what it is: a
            training-state checkpoint, a plain state_dict without ``name``, pickled objects that cannot be
            read safely, ...); ``name`` or ``model_kwargs`` differ from the stored ones (both are named); or
            the weights do not fit the architecture (the first mismatching keys and shapes are listed).
    """
    path = Path(path)
    try:
        payload = load_torch(path, what="model checkpoint", require_checksum=MODEL_CHECKPOINT_FORMAT)
    except UnsafeFileError as exc:
        raise UnsafeFileError(
            f"{path} is not a greedyprune model checkpoint: {str(exc).split(': ', 1)[-1]} Save models with "
            f"greedyprune.training.checkpoints.save_model, or save model.state_dict() and load it with name=..."
        ) from exc

    wanted = name.lower() if isinstance(name, str) else name
    if isinstance(payload, dict) and payload.get("format") == MODEL_CHECKPOINT_FORMAT:
        stored, stored_kwargs = payload["name"], dict(payload.get("model_kwargs") or {})
        if wanted is not None and wanted != stored:
            raise InvalidOptionError(
                f"checkpoint {path} holds a {stored} but you asked for {name} (--model {name}); "
                f"pass --model {stored} (name={stored!r}) or use another checkpoint"
            )
        if model_kwargs is not None and dict(model_kwargs) != stored_kwargs:
            raise InvalidOptionError(
                f"checkpoint {path} holds a {stored} built with {stored_kwargs} but you asked for "
                f"{dict(model_kwargs)}; "
                f"leave model_kwargs out to use the stored ones, or use another checkpoint"
            )
        full = payload.get("module") is not None
        if full:
            if not trust_pickle:
                raise UnsafeFileError(
                    f"checkpoint {path} stores a whole pickled module (saved with full_module=True); unpickling it "
                    f"can run arbitrary code. If you made this file yourself, load it with trust_pickle=True "
                    f"(--trust-pickle on the command line)")
            model = torch.load(io.BytesIO(payload["module"]), map_location="cpu", weights_only=False)
            if not isinstance(model, nn.Module):
                raise InvalidOptionError(f"checkpoint {path} embeds a {type(model).__name__}, not a torch.nn.Module")
        else:
            model = materialise(build_model(stored, stored_kwargs, meta=True), payload["state_dict"],
                                f"checkpoint {path} does not fit get_model({stored!r}, **{stored_kwargs}); the file "
                                f"is damaged or was written by other model code")
        info = {"path": str(path), "format": MODEL_CHECKPOINT_FORMAT, "name": stored, "model_kwargs": stored_kwargs,
                "extra": dict(payload.get("extra") or {}), "full_module": full,
                "torch_version": payload.get("torch_version")}
    else:
        weights = _plain_weights(payload)
        if weights is None or name is None:
            hint = ("; it has weights but no architecture record: pass name=... (--model NAME) and model_kwargs "
                    "to load them into get_model(NAME)") if weights is not None else ""
            raise InvalidOptionError(f"{path} is not a greedyprune model checkpoint: it is {_describe(payload)}{hint}")
        kwargs = dict(model_kwargs or {})
        model = materialise(build_model(wanted, kwargs, meta=True), weights,
                            f"the state_dict in {path} does not fit get_model({wanted!r}, **{kwargs}): it was saved "
                            f"from another architecture or with other options (num_classes, in_channels, shortcut)")
        info = {"path": str(path), "format": "state_dict", "name": wanted, "model_kwargs": kwargs, "extra": {},
                "full_module": False, "torch_version": None}
    model.to(map_location)
    model.train()
    return model, info


# ------------------------------------------------------------------------------ training with model checkpoints

CHECKPOINT_DIR = "checkpoints"
TRAIN_STATE = "train_state.pt"


def checkpoint_path(out_dir: str | os.PathLike, iteration: int) -> Path:
    """``OUT/checkpoints/iter_0000500.pt``: where :func:`train_with_checkpoints` puts iteration 500's model."""
    return Path(out_dir) / CHECKPOINT_DIR / f"iter_{iteration:07d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The model checkpoints of a training directory, as ``(iteration, path)`` sorted by iteration.

    Args:
        out_dir: A directory written by :func:`train_with_checkpoints` (or ``greedyprune train --out``).

    Returns:
        Empty if there are none yet. Temporary files of an interrupted save are not listed.
    """
    found = []
    for path in (Path(out_dir) / CHECKPOINT_DIR).glob("iter_*.pt"):
        digits = path.stem.removeprefix("iter_")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def train_with_checkpoints(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    name: str,
    model_kwargs: dict,
    checkpoint_every: int,
    state_every: int | None = None,
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    extra: dict | None = None,
    eval_batch_size: int = 500,
    on_checkpoint: Callable[[int, Path, dict], None] | None = None,
    progress: bool = False,
    distributed: bool = False,
) -> list[tuple[int, Path]]:
    """Train with :func:`greedyprune.train.pretrain`, saving a model checkpoint every ``checkpoint_every`` steps.

    Writes ``OUT/checkpoints/iter_XXXXXXX.pt`` (:func:`save_model` files) at iteration 0, every
    ``checkpoint_every`` iterations and at the last one, and keeps the rolling resume state in
    ``OUT/train_state.pt``. Calling it again with the same arguments resumes from that state and takes
    exactly the steps of an uninterrupted run; model checkpoints already on disk are neither recomputed
    nor rewritten.

    Args:
        model: The freshly built model (``get_model(name, **model_kwargs, seed=...)``); trained in place.
        images, labels: Training inputs ``(m, C, H, W)`` and ``(m,)`` labels.
        config: The training configuration (its ``loss`` is also used for the evaluations).
        out_dir: Output directory (created).
        name, model_kwargs: The architecture record for :func:`save_model`.
        checkpoint_every: Model checkpoint period, >= 1.
        state_every: Period of ``train_state.pt`` writes (default ``min(checkpoint_every, 100)``): how many
            iterations an interruption can cost.
        eval_sets: ``{"train": (X, y), "test": (X, y)}``: fixed sets evaluated at every checkpoint; their loss and
            accuracy go into the checkpoint's ``extra`` as ``train_loss``, ``train_accuracy``, ...
        extra: Further metadata stored in every checkpoint (plain values).
        eval_batch_size: Batch size of the evaluations.
        on_checkpoint: ``on_checkpoint(iteration, path, extra)`` after each checkpoint written now (not for ones
            skipped).
        progress: Show a progress bar.
        distributed: Data-parallel training over the initialised process group (see
            :func:`greedyprune.training.loop.pretrain`): every process calls this with the same arguments, rank 0
            writes the files, and all return once they are on disk (``OUT`` must be on a file system they share).

    Returns:
        All model checkpoints in ``OUT/checkpoints``, sorted by iteration.
    """
    from .loop import evaluate, pretrain

    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise InvalidOptionError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    state_every = min(checkpoint_every, 100) if state_every is None else state_every
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    sets = {key: (X.to(device), y.to(device)) for key, (X, y) in (eval_sets or {}).items()}
    base = dict(extra or {})
    _check_plain(base, "extra")

    def save(t: int, m: nn.Module) -> None:
        path = checkpoint_path(out_dir, t)
        if path.exists():
            return  # written before an interruption: identical weights, keep the file as it is
        info = {"iteration": t, **base}
        for key, (X, y) in sets.items():
            loss, acc = evaluate(m, X, y, config.loss, batch_size=eval_batch_size)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged by iteration {t}: the {config.loss} loss on the fixed "
                                         f"{key} set is {loss}, so no checkpoint is written for it; lower the "
                                         f"learning rate (lr={config.lr}). The checkpoints written before are kept")
            info[f"{key}_loss"], info[f"{key}_accuracy"] = loss, acc
        save_model(path, m, name=name, model_kwargs=model_kwargs, extra=info)
        if on_checkpoint is not None:
            on_checkpoint(t, path, info)

    _check_earlier_checkpoints(out_dir, config.iterations, checkpoint_every)
    pretrain(model, images, labels, config, checkpoint_path=out_dir / TRAIN_STATE, checkpoint_every=state_every,
             callback=save, callback_every=checkpoint_every, progress=progress, distributed=distributed)
    return list_checkpoints(out_dir)


def _check_earlier_checkpoints(out_dir: Path, iterations: int, every: int) -> None:
    """A resumed run cannot write the checkpoints of iterations before its resume state again: refuse to resume
    past a missing one (deleted because it was damaged, say) instead of finishing without it."""
    from .loop import load_checkpoint

    state = out_dir / TRAIN_STATE
    if not state.is_file():
        return
    start = int(load_checkpoint(state)["iteration"])
    expected = set(range(0, start + 1, every)) | ({start} if start == iterations else set())
    missing = sorted(t for t in expected if not checkpoint_path(out_dir, t).is_file())
    if missing:
        raise InvalidOptionError(
            f"{out_dir} lacks the model checkpoints of iteration(s) {missing}, but its resume state "
            f"{state.name} is at iteration {start}, so resuming would not write them again. Delete "
            f"{state} to train again from the start: training is deterministic, so the checkpoints "
            f"still there are kept and the missing ones are written with the same weights")
