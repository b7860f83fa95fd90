"""``prune_transformer``: FFN neurons and attention heads of a BERT-family encoder, layer by layer.

Each encoder layer is pruned in order against the inputs that the already-pruned layers below it
produce (sequential pruning): its heads first (if ``heads_keep`` is given), then its FFN neurons on the
outputs of the pruned attention, and the calibration batches are carried through the pruned layer to
the next one. Within a layer a block is pruned from the statistics of its output projection's inputs
(:mod:`~greedyprune.transformers.stats`) by one of the methods of :mod:`~greedyprune.transformers.criteria`;
its target is the dense block's output *on those same inputs*.
"""
from __future__ import annotations

import copy
import time

import torch

from ..checks import check_choice, check_int, check_number
from ..errors import InvalidOptionError, InvalidTypeError
from ..options import with_overrides
from ..metrics import measure_model
from ..result import PruneReport, PruneResult
from . import criteria
from .blocks import REFITS, Block, prune_block
from .stats import capture_layer_inputs, finish_ffn, module_inputs, run_layer
from .options import DEFAULT_METHOD, DEFAULT_REFIT, DEFAULT_RIDGE, TransformerPruneOptions
from .support import encoder_of, prepare_calibration, require_transformers
from .surgery import head_size, shrink_ffn, shrink_heads

__all__ = ["DEFAULT_METHOD", "DEFAULT_REFIT", "DEFAULT_RIDGE", "prune_block", "prune_transformer", "REFITS",
           "TransformerPruneOptions"]

def _check_args(ffn_keep, heads_keep, method, refit, ridge, layers, n_layers):
    ffn_keep = check_number("ffn_keep", ffn_keep, low=0, high=1, low_open=True, allow_none=True)
    heads_keep = check_number("heads_keep", heads_keep, low=0, high=1, low_open=True, allow_none=True)
    if ffn_keep is None and heads_keep is None:
        raise InvalidOptionError(
            "nothing to prune: give ffn_keep and/or heads_keep, fractions in (0, 1] of the FFN neurons "
            "and attention heads to keep in each layer")
    criteria.get_criterion(method)
    check_choice("refit", refit, REFITS)
    ridge = check_number("ridge", ridge, low=0)
    if layers is None:
        layers = range(n_layers)
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise InvalidTypeError(f"layers must be a list of layer indices or None, got {type(layers).__name__}")
    layers = {check_int("layers[]", i, 0, maximum=n_layers - 1) for i in layers}
    return ffn_keep, heads_keep, ridge, layers


def prune_transformer(model, calibration, *, options: TransformerPruneOptions | None = None, tokenizer=None,
                      inplace: bool = False, progress: bool = False, **overrides) -> PruneResult:
    """Prune the FFN (MLP) neurons and/or attention heads of every layer of an encoder or a decoder.

    Encoders: BERT-family (``BertModel`` and models built on one). Decoders: Llama-family
    (``LlamaForCausalLM`` / ``LlamaModel``, Mistral, Qwen2), pruned by
    :func:`~greedyprune.transformers.decoder_prune.prune_decoder` with the same methods plus ``"taylor"``
    (LLM-Pruner's first-order group importance), grouped-query heads and per-layer widths.

    Args:
        model: a ``transformers.BertModel`` or a model built on one (``BertFor...``; see
            :data:`~greedyprune.transformers.support.SUPPORTED`), or a Llama-family decoder (see
            :data:`~greedyprune.transformers.decoder.DECODER_SUPPORTED`).
        calibration: a list of sentences (with ``tokenizer``) or a tokenised dict with ``input_ids``
            (and ``attention_mask``). Decoders: a text (str; cut into windows of ``max_length`` tokens), or a
            (B, L) tensor / dict of token windows.
        tokenizer: the model's tokenizer (for sentences).
        options: a :class:`~greedyprune.transformers.options.TransformerPruneOptions` (default: its defaults):
            ``ffn_keep``, ``heads_keep``, ``method`` (default "gfs-ls"), ``refit`` (default "lstsq"), ``ridge``,
            ``replacement``, ``max_steps``, ``layers``, ``batch_size``, ``max_length``, ``min_tokens``, ``seed``,
            ``heads_unit``, ``widths``; ``help(TransformerPruneOptions)`` describes each.
        **overrides: any field of :class:`TransformerPruneOptions` as a keyword (an unknown name raises
            ``TypeError``); keywords given with ``options`` replace its fields.
        inplace: prune ``model`` itself instead of a copy.
        progress: a progress bar over the layers.

    Returns:
        A :class:`~greedyprune.result.PruneResult`: ``model`` (physically smaller; heads' and neurons'
        kept indices in ``kept`` under ``"encoder.layer.L.attention"`` / ``"encoder.layer.L.intermediate"``),
        ``counts`` (GFS), ``layers`` (per block: units, kept, steps, ``loss`` = the block's relative
        reconstruction error ``||y_pruned - y||^2 / ||y - b||^2`` on the calibration tokens where measured
        (GFS or a refit), ``loss_before_refit``, seconds, and the GFS ``selection``), ``report`` (a
        :class:`~greedyprune.result.PruneReport`: parameters before and after, seconds; the settings in ``extra``).

    Raises:
        ImportError: the optional extra is not installed (the message names the install command).
        UnsupportedModelError (a TypeError): not a supported encoder or decoder (the message names the first
            missing module and what is supported).
        HalfPrecisionError (a ValueError): a decoder in float16 / bfloat16 - refused, not upcast: call
            ``model.float()`` first.
        ValueError: keep fractions outside (0, 1], empty or too-short calibration (shorter than one window
            for a decoder), tokenizer/model mismatch, a ``heads_keep`` that whole key/value groups (or equal
            query heads per group) cannot meet.
    """
    o = with_overrides(TransformerPruneOptions, options, overrides, "prune_transformer")
    ffn_keep, heads_keep, method, refit, ridge = o.ffn_keep, o.heads_keep, o.method, o.refit, o.ridge
    replacement, max_steps, layers, seed = o.replacement, o.max_steps, o.layers, o.seed
    batch_size, max_length, min_tokens = o.batch_size, o.max_length, o.min_tokens
    heads_unit, widths = o.heads_unit, o.widths
    require_transformers()
    from .decoder import is_decoder

    if is_decoder(model):
        from .decoder_prune import prune_decoder

        return prune_decoder(model, calibration, options=o, tokenizer=tokenizer, inplace=inplace, progress=progress)
    if heads_unit != "kv" or widths not in (None, "uniform"):
        raise InvalidOptionError(
            "heads_unit and widths apply to decoders only; an encoder keeps ffn_keep / heads_keep of "
            "every layer")
    batch_size = 32 if batch_size is None else batch_size
    max_length = 128 if max_length is None else max_length
    base = encoder_of(model)
    n_layers = len(base.encoder.layer)
    ffn_keep, heads_keep, ridge, layer_set = _check_args(ffn_keep, heads_keep, method, refit, ridge, layers,
                                                         n_layers)
    max_steps = check_int("max_steps", max_steps, 1, allow_none=True)
    if not isinstance(replacement, bool):
        raise InvalidTypeError(f"replacement must be True or False, got {type(replacement).__name__}")
    start = time.perf_counter()
    calib = prepare_calibration(calibration, base, tokenizer=tokenizer, batch_size=batch_size,
                                max_length=max_length, min_tokens=min_tokens)
    before = measure_model(model)  # parameters (no multiply-adds: a token batch's count depends on its length)
    if not inplace:
        model = copy.deepcopy(model)
        base = encoder_of(model)
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
    block_options = dict(method=method, refit=refit, ridge=ridge, replacement=replacement, max_steps=max_steps,
                         generator=generator)
    result = PruneResult(model=model, kept={}, method=method)
    with torch.no_grad():
        _prune_layers(result, base, calib.batches, ffn_keep, heads_keep, layer_set, progress, block_options)
    model.train(was_training)
    result.report = PruneReport.from_measures(
        before, measure_model(model), seconds=time.perf_counter() - start, method=method, refit=refit, ridge=ridge,
        ffn_keep=ffn_keep, heads_keep=heads_keep, replacement=replacement, calibration_sentences=calib.sentences,
        calibration_tokens=calib.tokens)
    return result


def _prune_layers(result, base, batches, ffn_keep, heads_keep, layer_set, progress, options) -> None:
    """Prune the encoder's layers in order, each on the outputs of the already-pruned layers below it."""
    n_layers = len(base.encoder.layer)
    steps = range(n_layers)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"pruning ({options['method']})", unit="layer")
    inputs = capture_layer_inputs(base, batches)
    masks = [item.mask for item in inputs]
    for li in steps:
        layer = base.encoder.layer[li]
        last = li == n_layers - 1
        if li in layer_set and heads_keep is not None:
            context = module_inputs(layer, layer.attention.output.dense, inputs)
            block = _encoder_block(layer, "heads")
            prune_block(result, f"encoder.layer.{li}.attention", "heads", block, context, masks,
                         criteria.keep_count(heads_keep, block.out.weight.shape[1] // block.group), **options)
            del context
        if li in layer_set and ffn_keep is not None:
            attended = module_inputs(layer, layer.intermediate, inputs)
            block = _encoder_block(layer, "ffn")
            prune_block(result, f"encoder.layer.{li}.intermediate", "ffn", block, attended, masks,
                         criteria.keep_count(ffn_keep, block.out.weight.shape[1]), **options)
            if not last:
                inputs = finish_ffn(layer, attended, inputs)
            del attended
        elif not last:
            inputs = run_layer(layer, inputs)


def _encoder_block(layer, kind) -> Block:
    if kind == "ffn":
        return Block(layer.output.dense, layer.intermediate.dense.weight.detach(), 1, layer.intermediate,
                     lambda *a: shrink_ffn(layer, *a))
    return Block(layer.attention.output.dense, layer.attention.self.value.weight.detach(), head_size(layer), None,
                 lambda *a: shrink_heads(layer, *a))
