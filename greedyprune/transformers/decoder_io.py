"""Saving and loading pruned decoders without pickle: safetensors weights, JSON, and an integrity digest.

A pruned-decoder directory (format ``"greedyprune-decoder-v1"``) holds:

* ``model.safetensors`` - the pruned ``state_dict`` (tensors only; loading runs no code). Biases that
  pruning added to ``down_proj`` / ``o_proj`` (Llama has none) are ordinary entries
  (``model.layers.L.mlp.down_proj.bias``);
* ``config.json`` - the Hugging Face config of the *dense* model: a ``LlamaConfig`` has one
  ``intermediate_size`` and one head count, so it cannot describe per-layer widths;
* ``greedyprune.json`` - the format, the model class, per layer ``{"intermediate", "heads", "kv_heads",
  "down_bias", "o_bias"}``, the SHA-256 of ``model.safetensors``, and what was kept and measured;
* the tokenizer's files, when one is passed.

:func:`load_pruned_decoder` checks the digest, builds the class from the dense config, cuts every layer to
its recorded shape (whole key/value groups first, then query heads per group, then MLP neurons), adds the
recorded biases, and loads the weights strictly. Only classes of ``transformers.models.llama``,
``mistral`` and ``qwen2`` are built. ``save_pruned_transformer`` / ``load_pruned_transformer`` dispatch here
for decoders.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import InvalidOptionError
from ..fileio import IntegrityError, atomic_write, atomic_write_text
from ..result import PruneReport, PruneResult
from .decoder import add_bias, decoder_layer_shape, decoder_of, shrink_kv_groups, shrink_mlp, shrink_query_heads
from .integrity import check_digests, write_checked_meta
from .support import require_transformers

__all__ = ["DECODER_FORMAT", "IntegrityError", "load_pruned_decoder", "load_weights", "read_meta",
           "save_pruned_decoder", "write_meta"]

DECODER_FORMAT = "greedyprune-decoder-v1"
WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "greedyprune.json"
_MODULES = ("llama", "mistral", "qwen2")




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


def save_pruned_decoder(path: str | os.PathLike, result, *, tokenizer=None) -> Path:
    """Write a pruned decoder (a ``PruneResult`` or the model) to the directory ``path``; returns it."""
    from safetensors.torch import save

    require_transformers()
    model = result.model if isinstance(result, PruneResult) else result
    base = decoder_of(model)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": DECODER_FORMAT})
    with atomic_write(directory / WEIGHTS) as f:
        f.write(data)
    atomic_write_text(directory / CONFIG, model.config.to_json_string())
    meta = {"format": DECODER_FORMAT, "architecture": type(model).__name__,
            "module": type(model).__module__, "sha256": hashlib.sha256(data).hexdigest(),
            "layers": [decoder_layer_shape(layer) for layer in base.layers]}
    return write_meta(directory, meta, result, tokenizer)


def write_meta(directory: Path, meta: dict, result, tokenizer) -> Path:
    """Write ``greedyprune.json`` (``meta`` plus, for a PruneResult, what was kept and the report) and the
    tokenizer's files when one is given; returns the directory."""
    if isinstance(result, PruneResult):
        meta.update(method=result.method, kept=_plain(result.kept),
                    report=PruneReport.from_dict(result.report).to_dict())
    written = [WEIGHTS, CONFIG]
    if tokenizer is not None:
        for name in tokenizer.save_pretrained(str(directory)):
            if Path(name).is_file() and Path(name).parent.resolve() == directory.resolve():
                written.append(Path(name).name)
    write_checked_meta(directory, META, meta, written)
    return directory


def _class(meta, transformers, where):
    module = str(meta.get("module", ""))
    family = module.split(".")[-2] if module.count(".") >= 2 else ""
    if module != f"transformers.models.{family}.modeling_{family}" or family not in _MODULES:
        raise InvalidOptionError(
            f"unknown model module {module!r} in {where}; only {', '.join(_MODULES)} decoders are built")
    cls = getattr(getattr(transformers.models, family), str(meta.get("architecture")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise InvalidOptionError(f"unknown model class {meta.get('architecture')!r} in {where}")
    return cls


def _reshape(layer, shape, where, index) -> None:
    now = decoder_layer_shape(layer)
    r = now["heads"] // now["kv_heads"]
    kv, heads = int(shape["kv_heads"]), int(shape["heads"])
    if not (0 < kv <= now["kv_heads"] and heads % kv == 0 and 0 < heads // kv <= r
            and 0 < int(shape["intermediate"]) <= now["intermediate"]):
        raise InvalidOptionError(f"{where}: layer {index} shape {shape} does not fit the dense layer {now}")
    if kv < now["kv_heads"]:
        shrink_kv_groups(layer, torch.arange(kv))
    if heads // kv < r:
        per = heads // kv
        shrink_query_heads(layer, (torch.arange(kv).reshape(-1, 1) * r + torch.arange(per).reshape(1, -1)).reshape(-1))
    if int(shape["intermediate"]) < now["intermediate"]:
        shrink_mlp(layer, torch.arange(int(shape["intermediate"])))
    if shape.get("down_bias"):
        add_bias(layer.mlp, "down_proj")
    if shape.get("o_bias"):
        add_bias(layer.self_attn, "o_proj")


def read_meta(directory: Path):
    """The parsed ``greedyprune.json`` of a saved model directory, after checking its three files are there.

    Raises:
        FileNotFoundError: a file is missing. ValueError: the JSON is damaged.
    """
    for name in (WEIGHTS, CONFIG, META):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing; is {directory} a directory written by "
                                    f"save_pruned_transformer / greedyprune prune-transformer / prune-llm?")
    try:
        return json.loads((directory / META).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidOptionError(f"{directory / META} is damaged: {exc}") from None


def load_pruned_decoder(path: str | os.PathLike, meta: dict | None = None):
    """Load what :func:`save_pruned_decoder` wrote; returns the model in eval mode (float32 as saved).

    Raises:
        FileNotFoundError: a file is missing. IntegrityError (a ValueError): the weights' SHA-256 differs
        from the recorded one (a damaged or altered file). ValueError: not a pruned-decoder directory, an
        unknown class, or weights that do not match the recorded shapes.
    """
    transformers = require_transformers()
    directory = Path(path)
    if meta is None:
        meta = read_meta(directory)
    if not isinstance(meta, dict) or meta.get("format") != DECODER_FORMAT:
        raise InvalidOptionError(f"{directory / META} is not a {DECODER_FORMAT} file (format {meta.get('format')!r})")
    check_digests(directory, META, meta, (WEIGHTS, CONFIG))
    data = (directory / WEIGHTS).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("sha256"):
        raise IntegrityError(f"{directory / WEIGHTS} has SHA-256 {digest[:16]}..., but {META} records "
                             f"{str(meta.get('sha256'))[:16]}...: the file is damaged or was changed; save the "
                             f"model again")
    cls = _class(meta, transformers, directory / META)
    config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    model = cls(config)
    base = decoder_of(model)
    shapes = meta.get("layers", [])
    if not isinstance(shapes, list) or len(shapes) != len(base.layers):
        raise InvalidOptionError(f"{directory / META} describes {len(shapes)} layers, the config {len(base.layers)}")
    for i, (layer, shape) in enumerate(zip(base.layers, shapes)):
        _reshape(layer, shape, directory / META, i)
    return load_weights(model, data, directory / WEIGHTS)


def load_weights(model, data: bytes, where: Path):
    """Load safetensors ``data`` (the bytes of ``where``) into ``model`` strictly; returns it in eval mode.

    Raises:
        ValueError: not a safetensors file, or tensors that do not match the model's recorded shapes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
    except (SafetensorError, OSError) as exc:
        raise InvalidOptionError(f"{where} is not a readable safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidOptionError(f"the weights in {where} do not match the recorded layer shapes: "
                                 f"{str(exc).splitlines()[0]}") from None
    return model.eval()
