"""Tables and the figure of the CNN study (:mod:`greedyprune.studies.cnn`): Table 1 per model (fine-tuned
test accuracy of the GFS-pruned net per sub-dataset size and checkpoint, with the dense net's), the
baselines at the same channels, and ``cnn_study.png``. Means are over trials; with two or more trials the
95% t-interval is given (``±``)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .._text import format_table

__all__ = ["baseline_table", "plot_cnn_study", "report", "table1"]


def _mean(values) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def _cell(values) -> str:
    from .pretraining_report import confidence_halfwidth

    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    half = confidence_halfwidth(values)
    return f"{statistics.fmean(values):.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}")


def _models(rows: list[dict]) -> list[str]:
    return sorted({r.get("model") or "?" for r in rows})


def table1(rows: list[dict], method: str = "gfs", model: str | None = None) -> str:
    """Like the paper's Table 1: fine-tuned test accuracy of the pruned net per sub-dataset size (rows)
    and pre-training checkpoint (columns), and the fully trained dense net's accuracy; trials per size."""
    rows = [r for r in rows if r["method"] == method and (model is None or (r.get("model") or "?") == model)]
    sizes = sorted({r["size"] for r in rows})
    its = sorted({r["iteration"] for r in rows})
    last = its[-1] if its else None
    body = []
    for s in sizes:
        cells = [_cell(r["finetuned_accuracy"] for r in rows if r["size"] == s and r["iteration"] == t) for t in its]
        final = [r for r in rows if r["size"] == s and r["iteration"] == last]
        body.append([str(s), str(len({r["trial"] for r in final}))] + cells
                    + [_cell(r["dense_accuracy"] for r in final)])
    return format_table(["size", "trials"] + [f"it {t}" for t in its] + ["dense (final)"], body)


def baseline_table(rows: list[dict]) -> str:
    """Every method at the checkpoints where baselines ran: test accuracy before / after fine-tuning,
    and the multiply-adds kept."""
    from ..baselines import CRITERIA as BASELINES  # the study's baselines (studies.cnn.BASELINES), in its order

    have = {(r.get("model") or "?", r["size"], r["iteration"]) for r in rows if r["method"] != "gfs"}
    body = []
    for model, size, t in sorted(have):
        for method in ["gfs"] + list(BASELINES):
            sel = [r for r in rows if (r.get("model") or "?") == model and r["size"] == size
                   and r["iteration"] == t and r["method"] == method]
            if not sel:
                continue
            body.append([model, str(size), str(t), method, _cell(r["pruned_accuracy"] for r in sel),
                         _cell(r["finetuned_accuracy"] for r in sel),
                         f"{_mean(r['macs'] / r['dense_macs'] for r in sel):.3f}",
                         _cell(r["dense_accuracy"] for r in sel)])
    return format_table(["model", "size", "iteration", "method", "pruned acc", "fine-tuned acc", "MACs kept",
                         "dense acc"], body)


def plot_cnn_study(rows: list[dict], path: str | Path) -> Path:
    """Fine-tuned accuracy of the GFS-pruned net against pre-training iterations, one panel per model, one
    line per size (mean with the 95% interval over trials when there are several), each size's fully
    trained dense accuracy dashed."""
    from matplotlib.figure import Figure

    from .pretraining_report import confidence_halfwidth

    rows = [r for r in rows if r["method"] == "gfs"]
    models = _models(rows)
    fig = Figure(figsize=(6 * len(models), 4), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        mine = [r for r in rows if (r.get("model") or "?") == model]
        for i, size in enumerate(sorted({r["size"] for r in mine})):
            its = sorted({r["iteration"] for r in mine if r["size"] == size})
            cells = [[r["finetuned_accuracy"] for r in mine if r["size"] == size and r["iteration"] == t] for t in its]
            acc = [_mean(c) for c in cells]
            err = [confidence_halfwidth(c) for c in cells]
            trials = len({r["trial"] for r in mine if r["size"] == size})
            color = f"C{i}"
            ax.errorbar(its, acc, yerr=[0 if math.isnan(e) else e for e in err], fmt="o-", color=color, capsize=2,
                        label=f"{size} examples: pruned + fine-tuned ({trials} trial{'s' if trials != 1 else ''})")
            dense = _mean(r["dense_accuracy"] for r in mine if r["size"] == size and r["iteration"] == its[-1])
            ax.axhline(dense, color=color, ls="--", lw=1, label=f"{size} examples: dense (final)")
        rule = sorted({r.get("rule") for r in mine if r.get("rule")})
        ax.set_xlabel("pre-training iterations before pruning")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"GFS-pruned {model}" + (f" ({'; '.join(rule)})" if rule else ""), fontsize=9)
        ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def report(rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
    """Table 1 per model, the baseline comparison and (with ``draw``) ``cnn_study.png``."""
    parts = []
    for model in _models([r for r in rows if r["method"] == "gfs"]):
        rules = sorted({r.get("rule") for r in rows if (r.get("model") or "?") == model and r.get("rule")})
        parts += [f"{model}: fine-tuned test accuracy of the GFS-pruned net (columns: pre-training iterations)"
                  + (f"; stopping rule {', '.join(rules)}" if rules else ""), table1(rows, model=model), ""]
    if any(r["method"] != "gfs" for r in rows):
        parts += ["at the same channels per group (same multiply-adds):", baseline_table(rows)]
    if draw:
        parts.append(f"wrote {plot_cnn_study(rows, Path(out_dir) / 'cnn_study.png')}")
    return "\n".join(parts)
