"""Saving and loading pruned encoders without pickle: safetensors weights plus JSON.

A pruned-encoder directory (format ``"greedyprune-transformer-v1"``) holds:

* ``model.safetensors`` - the pruned ``state_dict`` (tensors only; loading runs no code);
* ``config.json`` - the Hugging Face config of the dense model (its ``intermediate_size`` and
  ``num_attention_heads`` are the dense ones);
* ``greedyprune.json`` - the format, the model class, each layer's kept FFN width and head count, what
  was kept and measured, a digest of every other file and a checksum of itself
  (:mod:`greedyprune.transformers.integrity`: a damaged or edited file is refused, naming it);
* the tokenizer's files, when one is passed to :func:`save_pruned_transformer`.

:func:`load_pruned_transformer` builds the class from the config, shrinks each layer to its stored
shape and loads the weights strictly. Only classes of ``transformers.models.bert`` are built.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..fileio import atomic_write, atomic_write_text
from ..result import PruneResult
from .decoder import is_decoder
from .integrity import check_digests
from .decoder_io import (DECODER_FORMAT, load_pruned_decoder, load_weights, read_meta, save_pruned_decoder,
                         write_meta)
from .support import encoder_of, require_transformers
from .surgery import layer_shape, shrink_ffn, shrink_heads
from ..errors import InvalidOptionError

__all__ = ["FORMAT", "load_pruned_transformer", "save_pruned_transformer"]

FORMAT = "greedyprune-transformer-v1"
WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "greedyprune.json"


def save_pruned_transformer(path: str | os.PathLike, result, *, tokenizer=None) -> Path:
    """Write a pruned encoder (or any supported encoder) to the directory ``path``; a decoder goes to
    :func:`~greedyprune.transformers.decoder_io.save_pruned_decoder`.

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
    if is_decoder(model):
        return save_pruned_decoder(path, result, tokenizer=tokenizer)
    base = encoder_of(model)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_write(directory / WEIGHTS) as f:
        f.write(save(tensors, metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG, model.config.to_json_string())
    meta = {"format": FORMAT, "architecture": type(model).__name__, "pooler": base.pooler is not None,
            "layers": [layer_shape(layer) for layer in base.encoder.layer]}
    return write_meta(directory, meta, result, tokenizer)


def load_pruned_transformer(path: str | os.PathLike):
    """Load what :func:`save_pruned_transformer` wrote (an encoder, or a decoder through
    :func:`~greedyprune.transformers.decoder_io.load_pruned_decoder`); returns the model in eval mode.

    The tokenizer, if it was saved, loads with ``transformers.AutoTokenizer.from_pretrained(path)``.

    Raises:
        FileNotFoundError: a file is missing. ValueError: not a pruned-encoder directory, an unknown
        class, or weights that do not match the stored shapes.
    """
    transformers = require_transformers()
    directory = Path(path)
    meta = read_meta(directory)
    if isinstance(meta, dict) and meta.get("format") == DECODER_FORMAT:
        return load_pruned_decoder(directory, meta)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidOptionError(f"{directory / META} is not a {FORMAT} file (format {meta.get('format')!r})")
    check_digests(directory, META, meta, (WEIGHTS, CONFIG))
    from transformers.models import bert

    cls = getattr(bert, str(meta.get("architecture")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise InvalidOptionError(f"unknown model class {meta.get('architecture')!r} in {directory / META}; only "
                                 f"transformers.models.bert classes are loaded")
    config = transformers.BertConfig.from_json_file(str(directory / CONFIG))
    model = cls(config, add_pooling_layer=bool(meta.get("pooler", True))) if cls is transformers.BertModel \
        else cls(config)
    base = encoder_of(model)
    shapes = meta.get("layers", [])
    if len(shapes) != len(base.encoder.layer):
        raise InvalidOptionError(
            f"{directory / META} describes {len(shapes)} layers, the config {len(base.encoder.layer)}")
    for layer, shape in zip(base.encoder.layer, shapes):
        if shape["heads"] < layer_shape(layer)["heads"]:
            shrink_heads(layer, torch.arange(shape["heads"]))
        if shape["intermediate"] < layer_shape(layer)["intermediate"]:
            shrink_ffn(layer, torch.arange(shape["intermediate"]))
    return load_weights(model, (directory / WEIGHTS).read_bytes(), directory / WEIGHTS)
