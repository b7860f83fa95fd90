"""Decoder pruning on SmolLM2-135M-Instruct: GFS against magnitude, Wanda-sp, FLAP, LLM-Pruner and random.

Calibration on one Shakespeare play, held-out perplexity on another (fixed, non-overlapping windows of 256
tokens from each play's start; the dense model is scored on the same windows). Per row: perplexity,
parameters, pruning time (calibration forward passes, gradients and width measurement included); ``--speed``
measures tokens/s of greedy ``generate()`` (batch 1, 32 new tokens, 2 threads) once per pruned shape (it does
not depend on the method), alternating with the dense model. Results are appended to
``bench/results/llm.json`` as they come (a rerun skips rows already there with the same settings), and the
table is printed at the end.

    python bench/llm.py            # every method at 50% MLP; GFS, FLAP and the best baseline on 3 splits
    python bench/llm.py --full     # + heads (KV groups / query heads), adaptive widths, combined ~30%
                                   #   parameters, MLP 75 / 25%: GFS against FLAP
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greedyprune.transformers import (count_parameters, decoder_widths, generation_speed, load_smollm2,  # noqa: E402
                                      perplexity, prune_transformer, read_play, token_windows)

SPLITS = [("hamlet", "macbeth"), ("othello", "tempest"), ("lear", "twelfth_night")]
"""(calibration play, evaluation play) for each split; the first is the main table's."""

GFS = [("gfs-ls", "lstsq"), ("gfs", None)]
BASELINES = [("magnitude", None), ("wanda", None), ("flap", None), ("taylor", None), ("random", None)]
PAIR = [("gfs-ls", "lstsq"), ("flap", None)]


def configs(full: bool):
    """(row name, prune_transformer options, widths rule, methods), in the order they are run: with --full the
    further rows compare GFS with FLAP (the strongest baseline at 50% MLP), most informative first."""
    rows = [("MLP 50%", dict(ffn_keep=0.5), None, GFS + BASELINES)]
    if full:
        rows += [("MLP 50%", dict(ffn_keep=0.5), None, [("flap", "lstsq")]),  # ablation: FLAP's choice, our refit
                 ("heads 2/3 (KV groups)", dict(heads_keep=2 / 3, heads_unit="kv"), None, PAIR),
                 ("heads 2/3 (query heads)", dict(heads_keep=2 / 3, heads_unit="query"), None, PAIR),
                 ("MLP 50% adaptive (gfs widths)", dict(ffn_keep=0.5), "gfs", PAIR),
                 ("MLP 50% adaptive (gfs widths, residual scale)", dict(ffn_keep=0.5), "gfs-residual", PAIR),
                 ("combined ~30% params", dict(ffn_keep=0.6, heads_keep=2 / 3, heads_unit="kv"), None, PAIR),
                 ("MLP 50% adaptive (flap widths)", dict(ffn_keep=0.5), "flap", PAIR),
                 ("MLP 75%", dict(ffn_keep=0.75), None, PAIR),
                 ("MLP 25%", dict(ffn_keep=0.25), None, PAIR)]
    return rows


def _name(method, refit):
    return method + ("+" + refit if refit else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="all rows (default: 50%% MLP and the splits)")
    parser.add_argument("--calibration", type=int, default=16, help="calibration windows (default 16)")
    parser.add_argument("--held-out", type=int, default=8, help="held-out windows (default 8)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for pruning and perplexity (default 2; "
                        "on a machine shared with other jobs 1 is several times faster)")
    parser.add_argument("--speed-threads", type=int, default=2, help="torch threads for the generate() speed")
    parser.add_argument("--speed", action="store_true", help="only measure generate() tokens/s per pruned shape, "
                        "alternating with the dense model (a shape's speed does not depend on the method)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_smollm2()
    settings = dict(calibration=args.calibration, held_out=args.held_out, window=args.window)
    store = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if store.get("settings") != settings:
        store = {"settings": settings, "rows": {}}
    texts = {}
    width_cache = {}

    def data(split):
        if split not in texts:
            cal, ev = SPLITS[split]
            texts[split] = (token_windows(tok, read_play(cal), window=args.window, count=args.calibration),
                            token_windows(tok, read_play(ev), window=args.window, count=args.held_out))
        return texts[split]

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(store, indent=1))

    def run(key, split, options, rule, method, refit):
        if key in store["rows"]:
            return store["rows"][key]
        calib, held = data(split)
        if method == "dense":
            row = {"ppl": perplexity(model, held), "params": count_parameters(model), "seconds": 0.0}
        else:
            start = time.perf_counter()
            widths = None
            if rule is not None:  # "gfs", "gfs-residual" (the curves' scale) or "flap"; measured once per run
                if (rule, split) not in width_cache:
                    kind, _, scale = rule.partition("-")
                    width_cache[rule, split] = decoder_widths(model, calib, options["ffn_keep"], rule=kind,
                                                              max_length=args.window, scale=scale or "block")
                widths = width_cache[rule, split]
            result = prune_transformer(model, calib, method=method, refit=refit, widths=widths, **options)
            seconds = time.perf_counter() - start
            row = {"ppl": perplexity(result.model, held), "params": count_parameters(result.model),
                   "seconds": seconds, "widths": result.report["mlp_widths"]}
        with open("/proc/loadavg") as f:
            row["load"] = f.read().split()[0]
        store["rows"][key] = row
        save()
        print(f"{key}: perplexity {row['ppl']:.2f}, {row['params'] / 1e6:.2f}M, {row['seconds']:.0f} s "
              f"(load {row['load']})", flush=True)
        return row

    if args.speed:
        paired_speeds(model, data(0)[0], store, args)
        save()
        report(store)
        return 0
    for split in range(len(SPLITS)):
        run(f"dense|{split}", split, {}, None, "dense", None)
    plan = configs(args.full)
    name, options, rule, methods = plan[0]
    ppl = {_name(m, r): run(f"{name}|{_name(m, r)}|0", 0, options, rule, m, r)["ppl"] for m, r in methods}
    best = min((m for m, r in BASELINES), key=ppl.get)  # the splits: GFS, FLAP and the best baseline of split 0
    for split in (1, 2):
        for method, refit in dict.fromkeys(GFS[:1] + PAIR[1:] + [(best, None)]):
            run(f"MLP 50%|{_name(method, refit)}|{split}", split, dict(ffn_keep=0.5), None, method, refit)
    for name, options, rule, methods in plan[1:]:
        for method, refit in methods:
            run(f"{name}|{_name(method, refit)}|0", 0, options, rule, method, refit)
    report(store)
    return 0


def paired_speeds(model, calib, store, args, pairs: int = 3) -> None:
    """tokens/s of greedy generate() (batch 1, 32 new tokens after 16) for each uniform shape of the table,
    timed alternately with the dense model (dense, pruned, dense, ...) on ``--speed-threads`` threads: the best
    time of each, and the median over pairs of the speed ratio."""
    torch.set_num_threads(args.speed_threads)
    prompt = calib[0, :16]
    out = store.setdefault("speed_pairs", {})
    for name, options, rule, _ in configs(True):
        if rule is not None or name in out:
            continue
        pruned = prune_transformer(model, calib[:1], method="random", refit=None, **options).model  # the shape only
        times = {"dense": [], "pruned": []}
        for _ in range(pairs):
            for label, m in (("dense", model), ("pruned", pruned)):
                times[label].append(generation_speed(m, prompt, new_tokens=32, repeats=1))
        ratios = sorted(p / d for p, d in zip(times["pruned"], times["dense"]))
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        out[name] = {"dense": max(times["dense"]), "pruned": max(times["pruned"]), "speedup": ratios[len(ratios) // 2],
                     "params": count_parameters(pruned), "load": load}
        print(f"{name}: {out[name]['pruned']:.1f} tok/s vs dense {out[name]['dense']:.1f} "
              f"(x{out[name]['speedup']:.2f}, load {load})", flush=True)


def report(store) -> None:
    rows = store["rows"]
    s = store["settings"]
    print(f"\nSmolLM2-135M-Instruct; calibration {s['calibration']} x {s['window']} tokens of {SPLITS[0][0]}, "
          f"perplexity on {s['held_out']} x {s['window']} tokens of {SPLITS[0][1]}")
    print(f"{'row':46s} {'method':14s} {'perplexity':>10s} {'params':>8s} {'prune s':>8s} {'load':>5s}")
    dense = rows["dense|0"]
    print(f"{'dense':46s} {'':14s} {dense['ppl']:10.2f} {dense['params'] / 1e6:7.2f}M {'-':>8s} {dense['load']:>5s}")
    for key, row in rows.items():
        name, method, split = key.split("|") if key.count("|") == 2 else (None, None, None)
        if name is None or split != "0":
            continue
        print(f"{name:46s} {method:14s} {row['ppl']:10.2f} {row['params'] / 1e6:7.2f}M {row['seconds']:8.0f} "
              f"{row['load']:>5s}")
    if store.get("speed_pairs"):
        print("\ngenerate() tokens/s (batch 1, 32 new tokens, 2 threads), alternating with the dense model:")
        for name, sp in store["speed_pairs"].items():
            print(f"  {name:28s} {sp['params'] / 1e6:7.2f}M {sp['pruned']:6.1f} vs dense {sp['dense']:6.1f}  "
                  f"x{sp['speedup']:.2f}  (load {sp['load']})")
    print("\nMLP 50%, three calibration/evaluation splits " + ", ".join(f"{c}->{e}" for c, e in SPLITS) +
          " (perplexity / dense perplexity; mean +- spread = half the range):")
    means = {}
    for method in [_name(m, r) for m, r in GFS + BASELINES]:
        ratios = [rows[f"MLP 50%|{method}|{sp}"]["ppl"] / rows[f"dense|{sp}"]["ppl"] for sp in range(3)
                  if f"MLP 50%|{method}|{sp}" in rows]
        if len(ratios) == 3:
            means[method] = statistics.mean(ratios)
            print(f"  {method:14s} {means[method]:.3f} +- {(max(ratios) - min(ratios)) / 2:.3f}   "
                  + "  ".join(f"{rows[f'MLP 50%|{method}|{sp}']['ppl']:.2f}" for sp in range(3)))
    print("  dense perplexities: " + "  ".join(f"{rows[f'dense|{sp}']['ppl']:.2f}" for sp in range(3)))
    base = {k: v for k, v in rows.items() if k.startswith("MLP 50%|") and k.endswith("|0")}
    gfs = base.get("MLP 50%|gfs-ls+lstsq|0")
    others = {k.split("|")[1]: v["ppl"] for k, v in base.items()
              if not k.split("|")[1].startswith("gfs") and "+" not in k.split("|")[1]}  # the published methods
    if gfs and others:
        best = min(others, key=others.get)
        print(f"GFS vs best baseline at 50% MLP: perplexity {gfs['ppl']:.2f} vs {others[best]:.2f} ({best}) "
              f"(dense {dense['ppl']:.2f})")


if __name__ == "__main__":
    sys.exit(main())
