""":class:`TransformerPruneOptions`: every tuning option of :func:`~greedyprune.transformers.prune_transformer`.

A frozen, keyword-only dataclass whose fields carry their help (``help(TransformerPruneOptions)``);
``prune_transformer(model, calibration, options=TransformerPruneOptions(ffn_keep=0.5), **overrides)``. The values
are checked where they are used (some depend on the model: ``layers``, ``widths``, ``heads_keep`` with grouped
heads), as before.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..options import document_fields, option
from ..selection.block import DEFAULT_RIDGE
from .support import MIN_CALIBRATION_TOKENS

__all__ = ["DEFAULT_METHOD", "DEFAULT_REFIT", "DEFAULT_RIDGE", "TransformerPruneOptions"]

DEFAULT_METHOD = "gfs-ls"
"""Forward selection with least-squares weights: on all-MiniLM-L6-v2 with the refit it kept the sentence
embeddings closest to the dense model's at 75, 50 and 25% of the FFN neurons (README table)."""

DEFAULT_REFIT = "lstsq"
"""Re-solve the kept output columns by default: see the README's measurements (the GFS count scale
alone moves the embeddings far from the dense model's once fewer than ~3/4 of the neurons are kept)."""

# DEFAULT_RIDGE (0.5): the one default of both refits, greedyprune.selection.block.DEFAULT_RIDGE, chosen from
# held-out block errors on MiniLM at 874 to 15,870 calibration tokens (bench/transformer.py --ridge-sweep; README)


@document_fields
@dataclass(frozen=True, kw_only=True)
class TransformerPruneOptions:
    """How :func:`~greedyprune.transformers.prune_transformer` prunes an encoder's or a decoder's layers
    (at least one of ``ffn_keep`` and ``heads_keep``)."""

    ffn_keep: float | None = option(None, """fraction in (0, 1] of each layer's FFN neurons to keep
        (``round(f * N)``, at least 1); None leaves the FFNs alone.""")
    heads_keep: float | None = option(None, """fraction in (0, 1] of each layer's attention heads to keep; None
        leaves them alone.""")
    method: str = option(DEFAULT_METHOD, """a greedy forward selection on the block's local objective - "gfs"
        (Algorithm 1: the average of ``N * P_i`` with replacement, kept units scaled by their counts), "gfs-sum"
        (the sum of the kept units' own contributions, bias compensated), "gfs-ls" (forward selection with
        least-squares weights, for the refit) - or a baseline: "magnitude", "wanda" (Wanda-sp), "flap" (FLAP's
        fluctuation metric with bias compensation), "random" (decoders also "taylor") - or any other criterion
        registered with :func:`~greedyprune.transformers.criteria.register_criterion`.""")
    refit: str | None = option(DEFAULT_REFIT, """"lstsq" (default) re-solves the kept output-projection columns
        and bias by ridge regression on the calibration tokens (towards the kept units' pretrained columns);
        None keeps the method's own weights (GFS: scaled by ``N * count / k``; FLAP: bias compensated).""")
    ridge: float = option(DEFAULT_RIDGE, """the refit's ridge: ``lam = ridge * mean(diag A_KK) * |K| / T``
        (:func:`greedyprune.selection.block.ridge_lambda`, the formula the CNN refits use too) on the kept channels
        K and the T calibration tokens, with A their centred Gram since the bias is re-solved too: ``lam = ridge *
        |K| * the kept channels' mean per-token variance``. Default 0.5, the CNNs' too
        (``selection.block.DEFAULT_RIDGE``, chosen from held-out block errors on MiniLM).""")
    replacement: bool = option(True, """GFS with replacement (Algorithm 1); a keep fraction is then a number of
        *distinct* units, and the selection runs until that many are chosen.""")
    max_steps: int | None = option(None, "GFS step limit per block (default 50 * N).")
    layers: tuple | list | None = option(None, "indices of the layers to prune (default all).")
    batch_size: int | None = option(None, """calibration sentences per forward pass (default 32; decoders: 8
        windows).""")
    max_length: int | None = option(None, "tokens per sentence (default 128; decoders: windows of 256 tokens).")
    min_tokens: int = option(MIN_CALIBRATION_TOKENS, "fewest calibration tokens accepted (padding not counted).")
    seed: int = option(0, 'seeds the "random" baseline.')
    heads_unit: str = option("kv", """decoders with grouped-query attention: "kv" removes whole key/value groups
        (with their query heads), "query" the same number of query heads in every group; ``heads_keep`` is then
        a fraction of the query heads that must be met exactly (else a ValueError lists the ones that can).""")
    widths: str | list | None = option(None, """decoders: MLP widths per layer - "uniform" (the default:
        ``ffn_keep`` of every layer), "gfs" (a global budget of ``ffn_keep`` split by the marginal rule on
        measured error curves), "flap" (FLAP's adaptive structure), or a list of kept widths, one per layer
        (e.g. from :func:`~greedyprune.transformers.decoder_prune.decoder_widths`).""")
