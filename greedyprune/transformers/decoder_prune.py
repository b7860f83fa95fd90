"""The decoder path of ``prune_transformer``: MLP neurons and attention heads (GQA) of a Llama-family model.

Each decoder layer is pruned in order against the inputs that the already-pruned layers below it produce,
as for encoders: the model runs once up to its first layer (a hook captures the causal mask, the rotary
``position_embeddings`` and the other arguments the installed ``transformers`` passes its layers), then
each layer is called directly. In a layer, the heads go first (statistics of ``o_proj``'s inputs, the
attention context), then the MLP neurons on the outputs of the pruned attention (statistics of
``down_proj``'s inputs ``act(gate_proj n) * up_proj n``, ``n = post_attention_layernorm(h)`` with h the
residual after attention - captured there, so the layer's output ``h + mlp(n)`` needs no second attention
pass; for neuron i, the scalar activation ``a_i`` whose
``down_proj`` column ``w_i`` gives its contribution ``P_i = w_i a_i``, exactly an encoder FFN neuron).
Every criterion registered in :mod:`~greedyprune.transformers.criteria` applies unchanged, with those for
decoders only: ``"taylor"`` (LLM-Pruner, :mod:`~greedyprune.transformers.taylor`).
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
from .decoder import decoder_layer_shape, decoder_of, shrink_kv_groups, shrink_mlp, shrink_query_heads
from .options import TransformerPruneOptions
from .stats import LayerInput, capture_layer_inputs, module_inputs, run_layer
from .support import check_tokenizer, prepare_calibration
from .widths import SCALES, WIDTH_RULES, allocate_widths, flap_allocation, layer_steps, measure_dense_mlps

__all__ = ["DECODER_METHODS", "HEAD_UNITS", "decoder_calibration", "decoder_widths", "prune_decoder"]

DECODER_METHODS = criteria.criterion_names(decoder=True)
"""The built-in criteria's names for decoders (the live list: ``criteria.criterion_names(decoder=True)``)."""
HEAD_UNITS = ("kv", "query")


def decoder_calibration(calibration, base, *, tokenizer=None, window: int = 256, batch_size: int = 8,
                        min_tokens: int = 128):
    """Calibration windows for a decoder: a text (str, or a list of str joined by newlines) is tokenised and
    cut into windows of ``window`` tokens (:func:`~greedyprune.transformers.llm.token_windows`); a (B, L)
    tensor or a dict with ``input_ids`` is used as given. Checked against the model like an encoder's."""
    from .llm import token_windows

    if isinstance(calibration, torch.Tensor):
        calibration = {"input_ids": calibration}
    if isinstance(calibration, (list, tuple)) and all(isinstance(s, str) for s in calibration):
        calibration = "\n".join(calibration)
    if isinstance(calibration, str):
        if tokenizer is None:
            raise InvalidOptionError("calibration is text, so a tokenizer is needed: pass tokenizer= (the model's own)")
        check_tokenizer(tokenizer, base)
        calibration = {"input_ids": token_windows(tokenizer, calibration, window=window)}
    return prepare_calibration(calibration, base, batch_size=batch_size, min_tokens=min_tokens)


def _head_counts(heads_keep, unit, n_heads, n_kv):
    """Kept (key/value groups, query heads per group) for a fraction of the query heads."""
    r = n_heads // n_kv
    want = criteria.keep_count(heads_keep, n_heads)
    step = r if unit == "kv" else n_kv
    if want % step:
        options = ", ".join(f"{m * step} ({m * step / n_heads:.3f})" for m in range(1, n_heads // step + 1))
        what = f"whole key/value groups of {r} query heads" if unit == "kv" else \
            f"the same number of query heads in each of the {n_kv} key/value groups"
        raise InvalidOptionError(
            f"heads_keep={heads_keep} asks for {want} of {n_heads} query heads, which cannot be met by "
            f"keeping {what}; keep one of: {options} (heads_unit={unit!r})")
    return (want // r, r) if unit == "kv" else (n_kv, want // n_kv)


def _mlp_block(layer) -> Block:
    mlp = layer.mlp
    gate, up = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()
    # magnitude: ||gate_i|| ||up_i|| ||down_i||, as unit_scores' ||W_in[i]|| ||W[:, i]|| with a (N, 1) "W_in"
    weight_in = (gate.norm(dim=1) * up.norm(dim=1)).reshape(-1, 1)
    return Block(mlp.down_proj, weight_in, 1, lambda x: mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x),
                 lambda *a: shrink_mlp(layer, *a), add_bias=True)


def _head_block(layer, unit) -> Block:
    attn = layer.self_attn
    hd, r = int(attn.head_dim), int(attn.num_key_value_groups)
    v = attn.v_proj.weight.detach()
    weight_in = v.reshape(-1, hd, v.shape[1]).repeat_interleave(r, dim=0).reshape(-1, v.shape[1])  # per q channel
    shrink = shrink_kv_groups if unit == "kv" else shrink_query_heads
    return Block(attn.o_proj, weight_in, hd * r if unit == "kv" else hd, None, lambda *a: shrink(layer, *a),
                 add_bias=True)


def _quota_plan(criterion, block, n_groups, per_group, scores, generator):
    """A plan keeping ``per_group`` query heads in each key/value group: the criterion's ranking of all heads
    (a greedy selection's order, or the scores), filtered to the first ``per_group`` of each group."""
    weight = block.out.weight.detach()
    n = weight.shape[1] // block.group
    r = n // n_groups

    def plan(stats):
        order = criterion.rank(weight, stats, block.group, n, weight_in=block.weight_in, generator=generator,
                               scores=scores)
        taken = [0] * n_groups
        keep = []
        for u in order.tolist():
            if taken[u // r] < per_group:
                taken[u // r] += 1
                keep.append(u)
        return criterion.keep_plan(weight, stats, block.group, torch.tensor(keep, dtype=torch.long))

    return plan


def _check_widths(widths, ffn_keep, n_layers, layer_set, width):
    if widths is None or isinstance(widths, str):
        rule = check_choice("widths", widths or "uniform", WIDTH_RULES)
        if rule != "uniform" and ffn_keep is None:
            raise InvalidOptionError(f"widths={rule!r} allocates a global MLP budget: give ffn_keep too")
        return rule
    if isinstance(widths, dict):
        widths = [widths.get(i, width) for i in range(n_layers)]
    widths = list(widths)
    if len(widths) != n_layers:
        raise InvalidOptionError(
            f"widths has {len(widths)} entries for {n_layers} layers; give one kept MLP width per layer")
    return [check_int(f"widths[{i}]", w, 1, maximum=width) for i, w in enumerate(widths)]


def decoder_widths(model, calibration, ffn_keep: float, *, rule: str = "gfs", tokenizer=None, layers=None,
                   max_length: int = 256, batch_size: int = 8, min_tokens: int = 128, progress: bool = False,
                   scale: str = "block"):
    """Kept MLP neurons per layer for a global budget ``ffn_keep`` (a fraction of all pruned layers' neurons),
    by ``rule`` ``"gfs"`` (marginal rule on measured error curves, each divided by ``scale``: ``"block"`` its
    dense output energy, or ``"residual"`` the residual stream's) or ``"flap"`` (FLAP's standardised scores);
    see :mod:`~greedyprune.transformers.widths`. Pass the list to ``prune_transformer(widths=...)`` to give
    every method the same widths.

    Returns:
        A list with one width per layer (layers not pruned keep theirs).
    """
    base = decoder_of(model)
    ffn_keep = check_number("ffn_keep", ffn_keep, low=0, high=1, low_open=True)
    check_choice("rule", rule, ("gfs", "flap"))
    check_choice("scale", scale, SCALES)
    n_layers = len(base.layers)
    layer_set = _layer_set(layers, n_layers)
    calib = decoder_calibration(calibration, base, tokenizer=tokenizer, window=max_length, batch_size=batch_size,
                                min_tokens=min_tokens)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = capture_layer_inputs(base, calib.batches, first=base.layers[0], use_cache=False)
            measured = measure_dense_mlps(base, inputs, layer_set, rule, progress, scale)
    finally:
        model.train(was_training)
    dense = [decoder_layer_shape(layer)["intermediate"] for layer in base.layers]
    order = sorted(measured)
    total = criteria.keep_count(ffn_keep, sum(dense[i] for i in order))
    alloc = allocate_widths([measured[i] for i in order], total) if rule == "gfs" else \
        flap_allocation([measured[i] for i in order], total)
    out = list(dense)
    for i, w in zip(order, alloc):
        out[i] = int(w)
    return out


def _layer_set(layers, n_layers):
    if layers is None:
        return set(range(n_layers))
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise InvalidTypeError(f"layers must be a list of layer indices or None, got {type(layers).__name__}")
    return {check_int("layers[]", i, 0, maximum=n_layers - 1) for i in layers}


def prune_decoder(model, calibration, *, options: TransformerPruneOptions | None = None, tokenizer=None,
                  inplace: bool = False, progress: bool = False, **overrides) -> PruneResult:
    """``prune_transformer`` for a Llama-family decoder (see its docstring for the arguments): the options are
    the fields of :class:`~greedyprune.transformers.options.TransformerPruneOptions`, as an object and / or as
    keywords; ``batch_size`` and ``max_length`` left at None mean 8 windows of 256 tokens."""
    o = with_overrides(TransformerPruneOptions, options, overrides, "prune_decoder")
    ffn_keep, heads_keep, heads_unit, widths, method = o.ffn_keep, o.heads_keep, o.heads_unit, o.widths, o.method
    refit, ridge, replacement, max_steps, layers, seed = o.refit, o.ridge, o.replacement, o.max_steps, o.layers, o.seed
    batch_size = 8 if o.batch_size is None else o.batch_size
    max_length = 256 if o.max_length is None else o.max_length
    min_tokens = o.min_tokens
    base = decoder_of(model)
    n_layers = len(base.layers)
    ffn_keep = check_number("ffn_keep", ffn_keep, low=0, high=1, low_open=True, allow_none=True)
    heads_keep = check_number("heads_keep", heads_keep, low=0, high=1, low_open=True, allow_none=True)
    if ffn_keep is None and heads_keep is None and (widths is None or isinstance(widths, str)):
        raise InvalidOptionError(
            "nothing to prune: give ffn_keep (or widths) and/or heads_keep, fractions in (0, 1] of the "
            "MLP neurons and query heads to keep")
    criterion = criteria.get_criterion(method, decoder=True)
    check_choice("refit", refit, REFITS)
    check_choice("heads_unit", heads_unit, HEAD_UNITS)
    if not criterion.ranked and heads_keep is not None and heads_unit == "query":
        raise InvalidOptionError(
            f"method {method!r} ({criterion.summary}) cannot keep equal query heads "
            "per key/value group; use heads_unit='kv' or another method (gfs-ls)")
    ridge = check_number("ridge", ridge, low=0)
    layer_set = _layer_set(layers, n_layers)
    dense_shape = decoder_layer_shape(base.layers[0])
    rule = _check_widths(widths, ffn_keep, n_layers, layer_set, dense_shape["intermediate"])
    head_plan = None if heads_keep is None else _head_counts(heads_keep, heads_unit, dense_shape["heads"],
                                                             dense_shape["kv_heads"])
    start = time.perf_counter()
    if isinstance(rule, str) and rule != "uniform":
        rule = decoder_widths(model, calibration, ffn_keep, rule=rule, tokenizer=tokenizer, layers=layer_set,
                              max_length=max_length, batch_size=batch_size, min_tokens=min_tokens, progress=progress)
    calib = decoder_calibration(calibration, base, tokenizer=tokenizer, window=max_length, batch_size=batch_size,
                                min_tokens=min_tokens)
    before = measure_model(model)  # parameters (no multiply-adds: a token batch's count depends on its length)
    if not inplace:
        model = copy.deepcopy(model)
        base = decoder_of(model)
    was_training = model.training
    model.eval()
    scores = criterion.model_scores(model, base, calib.batches)
    generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
    options = dict(method=method, refit=refit, ridge=ridge, replacement=replacement,
                   max_steps=check_int("max_steps", max_steps, 1, allow_none=True), generator=generator)
    result = PruneResult(model=model, kept={}, method=method)
    widths_used = [None] * n_layers
    try:
        with torch.no_grad():
            inputs = capture_layer_inputs(base, calib.batches, first=base.layers[0], use_cache=False)
            masks = [item.mask for item in inputs]
            for li in layer_steps(n_layers, progress, f"pruning ({method})"):
                layer = base.layers[li]
                if li in layer_set and head_plan is not None:
                    _prune_heads(result, li, layer, inputs, masks, head_plan, heads_unit, scores, options)
                if li in layer_set and (ffn_keep is not None or isinstance(rule, list)):
                    n = layer.mlp.down_proj.in_features
                    n_keep = rule[li] if isinstance(rule, list) else criteria.keep_count(ffn_keep, n)
                    widths_used[li] = n_keep
                    if n_keep < n:
                        # the residual h after attention: the MLP reads norm(h), the layer returns h + mlp(norm(h))
                        mids = module_inputs(layer, layer.post_attention_layernorm, inputs)
                        xs = [layer.post_attention_layernorm(h) for h in mids]
                        block = _mlp_block(layer)
                        prune_block(result, f"model.layers.{li}.mlp", "mlp", block, xs, masks, n_keep,
                                     scores=None if scores is None else scores[li]["mlp"], **options)
                        if li < n_layers - 1:
                            inputs = [LayerInput(h + layer.mlp(x), item.args, item.kwargs, item.mask)
                                      for h, x, item in zip(mids, xs, inputs)]
                        del xs, mids
                        continue
                if li < n_layers - 1:
                    inputs = run_layer(layer, inputs)
    finally:
        model.train(was_training)
    result.report = PruneReport.from_measures(
        before, measure_model(model), seconds=time.perf_counter() - start, method=method, refit=refit, ridge=ridge,
        ffn_keep=ffn_keep, heads_keep=heads_keep, heads_unit=heads_unit,
        widths=rule if isinstance(rule, str) else "per-layer", mlp_widths=widths_used, replacement=replacement,
        calibration_sentences=calib.sentences, calibration_tokens=calib.tokens)
    return result


def _prune_heads(result, li, layer, inputs, masks, head_plan, unit, scores, options) -> None:
    n_groups, per_group = head_plan
    attn = layer.self_attn
    n_kv = attn.k_proj.out_features // int(attn.head_dim)
    r = int(attn.num_key_value_groups)
    if (unit == "kv" and n_groups == n_kv) or (unit == "query" and per_group == r):
        return
    context = module_inputs(layer, attn.o_proj, inputs)
    block = _head_block(layer, unit)
    criterion = criteria.get_criterion(options["method"], decoder=True)
    plan = None
    if unit == "query":
        plan = _quota_plan(criterion, block, n_kv, per_group, None if scores is None else scores[li]["query"],
                           options["generator"])
    n_keep = n_groups if unit == "kv" else n_kv * per_group
    prune_block(result, f"model.layers.{li}.self_attn", f"heads-{unit}", block, context, masks, n_keep, plan=plan,
                 scores=None if scores is None or unit == "query" else scores[li]["kv"], **options)
