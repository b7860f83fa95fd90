"""Saving and loading pruned encoders without pickle: safetensors weights plus JSON.

A pruned-encoder directory (format ``"greedyprune-transformer-v1"``) holds:

* ``model.safetensors`` - the pruned ``state_dict`` (tensors only; loading runs no code);
* ``config.json`` - the Hugging Face config of the dense model (its ``intermediate_size`` and
  ``num_attention_heads`` are the dense ones);
* ``greedyprune.json`` - the format, the model class, each layer's kept FFN width and head count, and
  what was kept and measured;
* the tokenizer's files, when one is passed to :func:`save_pruned_transformer`.

``greedyprune.json`` also holds a BLAKE2b digest of every other file written (weights, config, tokenizer)
and a checksum of itself. :func:`load_pruned_transformer` checks them all first - a file damaged on disk or
edited (a zeroed block of weights, another ``hidden_act`` in the config) is an :class:`IntegrityError`
naming it - then builds the class from the config, shrinks each layer to its stored shape and loads the
weights strictly. Only classes of ``transformers.models.bert`` are built.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..fileio import IntegrityError, atomic_write, atomic_write_text
from ..result import PruneResult
from .support import encoder_of, require_transformers
from .surgery import layer_shape, shrink_ffn, shrink_heads

__all__ = ["FORMAT", "load_pruned_transformer", "save_pruned_transformer"]

FORMAT = "greedyprune-transformer-v1"
WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "greedyprune.json"
CHECKSUM = "checksum"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != CHECKSUM}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=20).hexdigest()


def _write_meta(directory: Path, meta: dict) -> None:
    """``greedyprune.json`` with its own checksum (written last: it vouches for the other files)."""
    atomic_write_text(directory / META, json.dumps({**meta, CHECKSUM: _meta_digest(meta)}, indent=1))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def save_pruned_transformer(path: str | os.PathLike, result, *, tokenizer=None) -> Path:
    """Write a pruned encoder (or any supported encoder) to the directory ``path``.

    Args:
        path: the directory (created if missing; files in it with the same names are replaced).
        result: a :class:`~greedyprune.result.PruneResult` from ``prune_transformer``, or the model itself.
        tokenizer: also save this tokenizer's files, so the directory is self-contained.

    Returns:
        The directory.
    """
    from safetensors.torch import save

    require_transformers()
    model = result.model if isinstance(result, PruneResult) else result
    base = encoder_of(model)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_write(directory / WEIGHTS) as f:
        f.write(save(tensors, metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG, model.config.to_json_string())
    written = [WEIGHTS, CONFIG]
    if tokenizer is not None:
        for name in tokenizer.save_pretrained(str(directory)):
            if Path(name).is_file() and Path(name).parent.resolve() == directory.resolve():
                written.append(Path(name).name)
    meta = {"format": FORMAT, "architecture": type(model).__name__, "pooler": base.pooler is not None,
            "layers": [layer_shape(layer) for layer in base.encoder.layer],
            "files": {name: _file_digest(directory / name) for name in dict.fromkeys(written)}}
    if isinstance(result, PruneResult):
        meta.update(method=result.method, kept=_plain(result.kept),
                    report={k: _plain(v) for k, v in result.report.items()})
    _write_meta(directory, meta)
    return directory


def _check_digests(directory: Path, meta: dict) -> None:
    """Every file ``greedyprune.json`` lists has the digest stored there, and the list covers the model."""
    fix = "prune the model again, or restore a copy of the directory"
    if not isinstance(meta.get(CHECKSUM), str) or not isinstance(meta.get("files"), dict):
        raise IntegrityError(f"{directory / META} carries no digests of the model's files, so it was written by an "
                             f"older greedyprune or edited; {fix}")
    if meta[CHECKSUM] != _meta_digest(meta):
        raise IntegrityError(f"{directory / META} is damaged or was edited since greedyprune wrote it (its checksum "
                             f"does not match its contents); {fix}")
    files = meta["files"]
    missing = [name for name in (WEIGHTS, CONFIG) if name not in files]
    if missing:
        raise IntegrityError(f"{directory / META} lists no digest for {', '.join(missing)}; {fix}")
    for name, digest in files.items():
        path = directory / str(name)
        if Path(str(name)).name != name or not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {fix}")
        if _file_digest(path) != digest:
            raise IntegrityError(f"{path} is damaged or was edited since greedyprune wrote it (its digest differs "
                                 f"from the one in {META}), so it would load as another model; {fix}")


def load_pruned_transformer(path: str | os.PathLike):
    """Load what :func:`save_pruned_transformer` wrote; returns the model in eval mode.

    The tokenizer, if it was saved, loads with ``transformers.AutoTokenizer.from_pretrained(path)``.

    Raises:
        FileNotFoundError: a file is missing. IntegrityError: a file differs from the digest stored when it
        was written (damaged or edited), or the directory carries no digests. ValueError: not a
        pruned-encoder directory, an unknown class, or weights that do not match the stored shapes.
    """
    transformers = require_transformers()
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path)
    for name in (WEIGHTS, CONFIG, META):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing; is {directory} a directory written by "
                                    f"save_pruned_transformer / greedyprune prune-transformer?")
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / META} is damaged: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{directory / META} is not a {FORMAT} file (format "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r})")
    _check_digests(directory, meta)
    from transformers.models import bert

    cls = getattr(bert, str(meta.get("architecture")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"unknown model class {meta.get('architecture')!r} in {directory / META}; only "
                         f"transformers.models.bert classes are loaded")
    config = transformers.BertConfig.from_json_file(str(directory / CONFIG))
    model = cls(config, add_pooling_layer=bool(meta.get("pooler", True))) if cls is transformers.BertModel \
        else cls(config)
    base = encoder_of(model)
    shapes = meta.get("layers", [])
    if len(shapes) != len(base.encoder.layer):
        raise ValueError(f"{directory / META} describes {len(shapes)} layers, the config {len(base.encoder.layer)}")
    for layer, shape in zip(base.encoder.layer, shapes):
        if shape["heads"] < layer_shape(layer)["heads"]:
            shrink_heads(layer, torch.arange(shape["heads"]))
        if shape["intermediate"] < layer_shape(layer)["intermediate"]:
            shrink_ffn(layer, torch.arange(shape["intermediate"]))
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{directory / WEIGHTS} is not a readable safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights in {directory / WEIGHTS} do not match the stored layer shapes: "
                         f"{str(exc).splitlines()[0]}") from None
    return model.eval()
